"""eBPF socket tracer against real programs: vectored I/O (readv/writev, sendmsg/recvmsg),
redis-cli ↔ redis-server, HTTPS through OpenSSL uprobes (curl and Python's ssl), and a server
thread's inbound request linked to its outbound call by ``syscall_trace_id``.

Root-only (skipped with the reason when not root, when eBPF is refused, or when a program is
missing); one tracer for the module, filtered on a comm prefix unique to this run.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from tests.test_ebpf import _SERVERS, CLIENT, SERVER, _wait, needs_ebpf, tracing
from tests.test_ebpf import _stop_servers as _stop_servers  # the autouse fixture: kills what _start started

pytestmark = needs_ebpf


@pytest.fixture(scope="module")
def traced():
    yield from tracing()


def _start(args: list[str], **kw) -> subprocess.Popen:
    p = subprocess.Popen(args, stdout=subprocess.PIPE, text=True, **kw)
    _SERVERS.append(p)
    return p


def _rows_of(writer, pids: set[int]) -> list[dict]:
    return [r for r in writer.rows() if r["process_id_0"] in pids or r["process_id_1"] in pids]


def _await_rows(writer, col, pids: set[int], wanted: set[tuple], keep=None) -> dict:
    """Wait for the rows of these processes (those ``keep`` keeps) at every (observation point,
    request_resource) in ``wanted``; asserts exactly one row each: (observation point, resource) → row."""
    def complete():
        rows = [r for r in _rows_of(writer, pids) if keep is None or keep(r)]
        return rows if wanted <= _sides(rows).keys() else None

    rows = _wait(complete)
    assert rows, f"missing: {sorted(wanted - _sides(_rows_of(writer, pids)).keys())}; stats {col.snapshot()}"
    got = _sides(rows)
    assert len(rows) == len(wanted) and all(len(v) == 1 for v in got.values()), sorted(got)
    return {k: v[0] for k, v in got.items()}


def _sides(rows: list[dict], key: str = "request_resource") -> dict:
    """(observation point, key) → the rows with it."""
    out: dict = {}
    for r in rows:
        out.setdefault((r["observation_point"], r[key]), []).append(r)
    return out


# ---------------------------------------------------------------------------------------------------
# readv/writev and sendmsg/recvmsg: the payload prefix gathered from several iovecs

VEC_SERVER = r'''
import ctypes, os, socket, sys
ctypes.CDLL(None).prctl(15, sys.argv[1].encode(), 0, 0, 0)
ls = socket.socket()
ls.bind(("127.0.0.1", 0))
ls.listen(8)
print(ls.getsockname()[1], flush=True)
while True:
    c, _ = ls.accept()
    while True:
        buf = bytearray(4096)
        n = os.readv(c.fileno(), [buf])                    # readv
        if not n:
            break
        path = bytes(buf[:n]).split(b" ")[1]
        body = b"vec " + path
        code = 404 if b"missing" in path else 200
        head = b"HTTP/1.1 %d X\r\nContent-Length: %d\r\n\r\n" % (code, len(body))
        os.writev(c.fileno(), [head[:9], head[9:], body])  # writev: the status code in the 2nd iovec
    c.close()
'''

VEC_CLIENT = r'''
import ctypes, socket, sys
ctypes.CDLL(None).prctl(15, sys.argv[1].encode(), 0, 0, 0)
s = socket.create_connection(("127.0.0.1", int(sys.argv[2])))
for p in sys.argv[3:]:
    # sendmsg: the request line split over three iovecs
    s.sendmsg([b"GET " + p.encode(), b" HTTP/1.1\r\nHost: x\r\n", b"\r\n"])
    if "into" in p:
        s.recvmsg_into([bytearray(5), bytearray(4096)])    # recvmsg into two buffers
    else:
        s.recvmsg(4096)
s.close()
print("done", flush=True)
'''


def test_vectored_io_requests_appear_once_per_side(traced) -> None:
    prefix, writer, col = traced
    srv = _start([sys.executable, "-c", VEC_SERVER, f"{prefix}-vsrv"])
    port = int(srv.stdout.readline())
    paths = ["/v/a", "/v/missing", "/v/into/c"]
    cli = _start([sys.executable, "-c", VEC_CLIENT, f"{prefix}-vcli", str(port), *paths])
    assert cli.stdout.readline().strip() == "done"

    got = _await_rows(writer, col, {cli.pid, srv.pid}, {(o, p) for o in ("c-p", "s-p") for p in paths})
    for p in paths:
        c, s = got[("c-p", p)], got[("s-p", p)]
        for r in (c, s):
            assert (r["request_type"], r["response_code"], r["type"]) == ("GET", 404 if "missing" in p else 200, 2)
            assert r["server_port"] == port
        assert (c["process_id_0"], c["process_kname_0"]) == (cli.pid, f"{prefix}-vcli")
        assert (s["process_id_1"], s["process_kname_1"]) == (srv.pid, f"{prefix}-vsrv")
        assert c["client_port"] == s["client_port"] != 0


# ---------------------------------------------------------------------------------------------------
# HTTPS: plaintext from OpenSSL's SSL_read/SSL_write uprobes (curl: SSL_read/SSL_write or *_ex;
# Python's ssl module: SSL_read_ex/SSL_write_ex), the ciphertext syscalls under them suppressed

def _need(*programs: str) -> None:
    for p in programs:
        if not shutil.which(p):
            pytest.skip(f"{p} is not installed (`make test` installs it)")


def test_https_plaintext_from_openssl_uprobes(traced, tmp_path: Path) -> None:
    prefix, writer, col = traced
    _need("curl", "openssl")
    if not col.tracer.tls_attached:
        pytest.skip(f"no OpenSSL library to attach uprobes to ({col.snapshot()})")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", tmp_path / "key.pem",
                    "-out", tmp_path / "cert.pem", "-days", "1", "-subj", "/CN=localhost"],
                   check=True, capture_output=True, timeout=60)
    curl = tmp_path / f"{prefix}-curl"          # the comm the tracer filters on: curl under another name
    shutil.copy(shutil.which("curl"), curl)
    srv = _start([sys.executable, "-c", SERVER, f"{prefix}-tsrv", "--tls", f"{tmp_path}/cert.pem:{tmp_path}/key.pem"])
    port = int(srv.stdout.readline())
    paths = ["/tls/a", "/tls/missing", "/tls/c?q=1"]
    cli = subprocess.Popen([str(curl), "-sk", *(f"https://127.0.0.1:{port}{p}" for p in paths)],
                           stdout=subprocess.PIPE)
    out, _ = cli.communicate(timeout=60)
    assert cli.returncode == 0 and out == b"".join(b"hello " + p.encode() for p in paths), out

    got = _await_rows(writer, col, {cli.pid, srv.pid}, {(o, p) for o in ("c-p", "s-p") for p in paths},
                      lambda r: r["l7_protocol"] == 20)       # not the TLS handshake's rows
    for p in paths:
        c, s = got[("c-p", p)], got[("s-p", p)]
        for x in (c, s):
            assert x["is_tls"] == 1 and x["type"] == 2
            assert (x["request_type"], x["response_code"]) == ("GET", 404 if "missing" in p else 200)
            assert x["server_port"] == port and x["response_duration"] > 0
        assert (c["process_id_0"], c["process_kname_0"]) == (cli.pid, f"{prefix}-curl")
        assert (s["process_id_1"], s["process_kname_1"]) == (srv.pid, f"{prefix}-tsrv")
        assert c["client_port"] == s["client_port"] != 0
    # the ciphertext under SSL_read/SSL_write never reached the HTTP parser as HTTP
    assert col.snapshot().get("kernel TLS data without a known fd", 0) == 0


# ---------------------------------------------------------------------------------------------------
# redis-cli ↔ redis-server: one redis-cli per command (a short-lived client: its socket is often gone
# from /proc before its events are handled; its end comes from the server's accept)

REDIS_COMMANDS = [  # (command line, request_type, response_status, response_result / exception)
    ("SET fs:k1 v1", "SET", 0, "OK"),
    ("GET fs:k1", "GET", 0, "v1"),
    ("RPUSH fs:l a b c", "RPUSH", 0, "3"),
    ("LRANGE fs:l 0 -1", "LRANGE", 0, "a b c"),
    ("INCR fs:k1", "INCR", 3, "ERR value is not an integer or out of range"),
    ("GET fs:nokey", "GET", 0, "(nil)"),
]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_redis_commands_once_per_process_side(traced, tmp_path: Path) -> None:
    prefix, writer, col = traced
    _need("redis-server", "redis-cli")
    server, cli = tmp_path / f"{prefix}-rsrv", tmp_path / f"{prefix}-rcli"     # comm = the link's name
    server.symlink_to(shutil.which("redis-server"))
    cli.symlink_to(shutil.which("redis-cli"))
    port = _free_port()
    srv = _start([str(server), "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                  "--dir", str(tmp_path)], stderr=subprocess.DEVNULL)
    up = _wait(lambda: subprocess.run(["redis-cli", "-p", str(port), "PING"], capture_output=True,
                                      text=True).stdout.strip() == "PONG", 20)
    assert up, "redis-server did not start"
    pids = {}
    for line, *_ in REDIS_COMMANDS:
        p = subprocess.Popen([str(cli), "-p", str(port), *line.split()], stdout=subprocess.PIPE, text=True)
        out, _ = p.communicate(timeout=30)
        assert p.returncode == 0, out
        pids[line] = p.pid
    resources = {line for line, *_ in REDIS_COMMANDS}

    got = _await_rows(writer, col, {srv.pid, *pids.values()}, {(o, x) for o in ("c-p", "s-p") for x in resources},
                      lambda r: r["request_resource"] != "PING")    # the readiness check's
    for line, rtype, status, result in REDIS_COMMANDS:
        c, s = got[("c-p", line)], got[("s-p", line)]
        for x in (c, s):
            assert (x["l7_protocol"], x["type"], x["request_type"], x["response_status"]) == (80, 2, rtype, status)
            assert (x["response_exception"] if status else x["response_result"]) == result
            assert x["server_port"] == port
        assert (s["process_id_1"], s["process_kname_1"]) == (srv.pid, f"{prefix}-rsrv")
        assert (c["process_id_0"], c["process_kname_0"]) == (pids[line], f"{prefix}-rcli")
        assert c["client_port"] == s["client_port"] != 0              # the same connection on both rows


# ---------------------------------------------------------------------------------------------------
# syscall_trace_id: a server thread's inbound request and the outbound call it makes next share it

def test_syscall_trace_id_links_inbound_request_to_outbound_call(traced) -> None:
    prefix, writer, col = traced
    backend = _start([sys.executable, "-c", SERVER, f"{prefix}-back"])
    bport = int(backend.stdout.readline())
    front = _start([sys.executable, "-c", SERVER, f"{prefix}-front", "--backend", str(bport)])
    fport = int(front.stdout.readline())
    paths = ["/t/one", "/t/two", "/t/missing"]
    cli = _start([sys.executable, "-c", CLIENT, f"{prefix}-tcli", str(fport), *paths])
    assert cli.stdout.readline().strip() == "done"

    # the front's rows: inbound requests (s-p) and the calls its handler threads made (c-p)
    got = _await_rows(writer, col, {front.pid}, {("s-p", p) for p in paths} | {("c-p", "/backend" + p) for p in paths})
    ids = set()
    for p in paths:
        inbound, outbound = got[("s-p", p)], got[("c-p", "/backend" + p)]
        assert inbound["process_id_1"] == outbound["process_id_0"] == front.pid
        assert inbound["server_port"] == fport and outbound["server_port"] == bport
        assert inbound["response_code"] == outbound["response_code"] == (404 if "missing" in p else 200)
        # the same thread: read the request, called the backend, wrote the response
        assert inbound["syscall_thread_1"] == outbound["syscall_thread_0"] != front.pid
        assert inbound["syscall_trace_id_request"] == outbound["syscall_trace_id_request"] != 0
        assert inbound["syscall_trace_id_response"] == outbound["syscall_trace_id_response"] != 0
        ids.add(inbound["syscall_trace_id_request"])
    assert len(ids) == len(paths)                             # one trace id per inbound request


# ---------------------------------------------------------------------------------------------------
# application metrics: the eBPF rows' counts in flow_metrics.application[_map] 1s and 1m

def _metric_sums(writer, table: str, by: str, where=None) -> dict:
    """Summed meters of ``table`` per value of column ``by``."""
    out: dict = {}
    for name, t in writer.batches:
        if name != table:
            continue
        for r in t.to_pylist():
            if where is None or where(r):
                acc = out.setdefault(r[by], {})
                for m in ("request", "response", "client_error", "server_error", "timeout", "rrt_count"):
                    acc[m] = acc.get(m, 0) + r[m]
    return out


def test_application_metrics_from_ebpf_rows() -> None:
    gen = tracing()             # its own tracer: stopping it flushes the open minute
    prefix, writer, col = next(gen)
    try:
        srv = _start([sys.executable, "-c", SERVER, f"{prefix}-msrv"])
        port = int(srv.stdout.readline())
        paths = ["/m/a", "/m/missing", "/m/c", "/m/d"]
        cli = _start([sys.executable, "-c", CLIENT, f"{prefix}-mcli", str(port), *paths])
        assert cli.stdout.readline().strip() == "done"
        assert _wait(lambda: len([r for r in writer.rows() if r["server_port"] == port]) >= 2 * len(paths)), \
            col.snapshot()
    finally:
        gen.close()
    want = {"request": 4, "response": 4, "client_error": 1, "server_error": 0, "timeout": 0, "rrt_count": 4}
    mine = lambda r: r["server_port"] == port and r["l7_protocol"] == 20   # noqa: E731
    for grain in ("1s", "1m"):
        by_obs = _metric_sums(writer, f"flow_metrics.application_map.{grain}", "observation_point", mine)
        assert by_obs == {"c-p": want, "s-p": want}, (grain, by_obs)
        # single-side rows: the client process's end (role 0) and the server's (role 1, with its port)
        by_role = _metric_sums(writer, f"flow_metrics.application.{grain}", "role",
                               lambda r: r["l7_protocol"] == 20 and r["server_port"] in (0, port))
        assert by_role == {0: want, 1: want}, (grain, by_role)
