"""eBPF socket tracer (collector/ebpf): a real Python HTTP server and client on loopback, traced by
syscall tracepoints, give one l7_flow_log row per request per process side (c-p client, s-p
server) with the right pid, comm, method, path and status; without bcc/root the tracer degrades
(one log line, a counter) and the rest of the collector goes on.

Root-only for the tracing tests (skipped with the reason when not root or eBPF is refused here);
`make test` installs bcc (python3-bpfcc) and sets up tracefs and the kernel-headers path.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import random
import re
import signal
import string
import subprocess
import sys
import time
from pathlib import Path

import pytest

from collector.ebpf import EbpfCollector
from collector.ebpf import tracer as tracer_mod
from collector.ebpf.sessions import COLUMNS, SIGNAL_EBPF

ROOT = Path(__file__).resolve().parent.parent
FLOWSCOPE = Path(sys.executable).parent / "flowscope"

SERVER = r'''
import ctypes, http.client, ssl, sys
ctypes.CDLL(None).prctl(15, sys.argv[1].encode(), 0, 0, 0)      # PR_SET_NAME: the comm we filter on
from http.server import ThreadingHTTPServer, BaseHTTPRequestHandler
opts = dict(zip(sys.argv[2::2], sys.argv[3::2]))                  # --tls CERT:KEY, --backend PORT
class H(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def do_GET(self):
        code, body = 404 if "missing" in self.path else 200, b"hello " + self.path.encode()
        if "--backend" in opts:         # the handler's thread calls the backend, then answers
            c = http.client.HTTPConnection("127.0.0.1", int(opts["--backend"]), timeout=10)
            c.request("GET", "/backend" + self.path)
            r = c.getresponse()
            code, body = r.status, r.read()
            c.close()
        self.send_response(code)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *a):
        pass
s = ThreadingHTTPServer(("127.0.0.1", 0), H)
if "--tls" in opts:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(*opts["--tls"].split(":"))
    s.socket = ctx.wrap_socket(s.socket, server_side=True)
print(s.server_address[1], flush=True)
s.serve_forever()
'''

CLIENT = r'''
import ctypes, sys, urllib.request, urllib.error
ctypes.CDLL(None).prctl(15, sys.argv[1].encode(), 0, 0, 0)
port = int(sys.argv[2])
for p in sys.argv[3:]:
    try:
        urllib.request.urlopen(f"http://127.0.0.1:{port}{p}", timeout=10).read()
    except urllib.error.HTTPError as e:
        e.read()
print("done", flush=True)
'''

PATHS = ["/a", "/b/missing", "/c?x=1", "/d/1", "/e"]


def _ebpf_reason() -> str | None:
    if os.geteuid() != 0:
        return "eBPF tracing needs root"
    try:
        tracer_mod.import_bcc()
    except tracer_mod.EbpfUnavailable as e:
        return f"{e}; `make test` installs python3-bpfcc"
    return None


needs_ebpf = pytest.mark.skipif(_ebpf_reason() is not None, reason=str(_ebpf_reason()))


class ListWriter:
    def __init__(self) -> None:
        self.batches: list = []

    def put(self, table: str, batch) -> None:
        self.batches.append((table, batch))

    def rows(self) -> list[dict]:
        return [dict(zip(b.columns, r, strict=True))
                for t, b in self.batches if t == "flow_log.l7_flow_log" for r in b.rows]


def _prefix() -> str:
    return "fsE" + "".join(random.choices(string.ascii_lowercase, k=4))


def _wait(cond, timeout: float = 30.0, step: float = 0.1):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = cond()
        if got:
            return got
        time.sleep(step)
    return cond()


_SERVERS: list[subprocess.Popen] = []


@pytest.fixture(autouse=True)
def _stop_servers():
    yield
    while _SERVERS:
        p = _SERVERS.pop()
        p.kill()
        p.wait()


def tracing(**kw):
    """A started tracer filtered on a comm prefix unique to this run: yields (prefix, writer,
    collector); skips the test with the reason when eBPF is unavailable."""
    reason = _ebpf_reason()
    if reason:
        pytest.skip(reason)
    prefix = _prefix()
    writer = ListWriter()
    col = EbpfCollector(writer, comm=prefix, flush_interval_s=0.2, **kw)
    if not col.start():
        pytest.skip(f"eBPF refused here: {col.error}")
    try:
        yield prefix, writer, col
    finally:
        col.stop()


@pytest.fixture(scope="module")
def traced():
    """One tracer for the module."""
    yield from tracing()


@needs_ebpf
def test_http_each_request_once_per_process_side(traced) -> None:
    release = tuple(int(x) for x in re.findall(r"\d+", os.uname().release)[:2])
    if release >= (5, 11):
        assert traced[2].tracer.task_storage     # the threads' state in task storage, not a hash
    # by default the tracer thread competes for the CPU like any thread
    assert os.sched_getscheduler(traced[2]._thread.native_id) == os.SCHED_OTHER
    _check_http(*traced)


@needs_ebpf
def test_tracer_yields_the_cpu_when_configured() -> None:
    """``ebpf.cpu_policy: idle``: the tracer thread runs at SCHED_IDLE (a traced thread that wakes
    up takes the CPU from it at once), and traces the same requests."""
    from flowscope.config import EbpfSettings

    gen = tracing(settings=EbpfSettings(cpu_policy="idle"))
    prefix, writer, col = next(gen)
    try:
        assert _wait(lambda: os.sched_getscheduler(col._thread.native_id) == os.SCHED_IDLE, 5)
        assert col.stats["cpu policy idle"] == 1
        _check_http(prefix, writer, col)
    finally:
        gen.close()


@needs_ebpf
@pytest.mark.parametrize("refused", [("task storage",), ("task storage", "ring buffer")])
def test_http_on_older_kernels(monkeypatch, refused: tuple[str, ...]) -> None:
    """Kernels before 5.11 have no task storage: the programs keep each thread's syscall (and SSL
    call) in progress in hash maps; before 5.8 no ring buffer either: per-CPU perf buffers. The
    same rows either way."""
    real = tracer_mod.load_bpf
    marks = {"task storage": b"#if 1\nstruct task_t", "ring buffer": b"#if 1\nBPF_RINGBUF_OUTPUT"}

    def older_kernel(bcc, text: bytes):
        if any(marks[r] in text for r in refused):
            raise Exception(f"refused (simulated): {refused}")
        return real(bcc, text)

    monkeypatch.setattr(tracer_mod, "load_bpf", older_kernel)
    gen = tracing()
    prefix, writer, col = next(gen)
    try:
        assert col.tracer.task_storage is False
        assert (col.tracer.ring is None) == ("ring buffer" in refused)
        _check_http(prefix, writer, col)
    finally:
        gen.close()


def _check_http(prefix: str, writer: ListWriter, col: EbpfCollector) -> None:
    srv = subprocess.Popen([sys.executable, "-c", SERVER, f"{prefix}-srv"], stdout=subprocess.PIPE, text=True)
    _SERVERS.append(srv)
    port = int(srv.stdout.readline())
    cli = subprocess.Popen([sys.executable, "-c", CLIENT, f"{prefix}-cli", str(port), *PATHS],
                           stdout=subprocess.PIPE, text=True)
    assert cli.stdout.readline().strip() == "done"
    cli.wait(30)

    def mine() -> list[dict]:
        return [r for r in writer.rows() if r["process_id_0"] == cli.pid or r["process_id_1"] == srv.pid]

    def complete():
        rows = mine()
        sides = {(r["observation_point"], r["request_resource"]) for r in rows}
        return rows if all((o, p) in sides for o in ("c-p", "s-p") for p in PATHS) else None

    rows = _wait(complete, 30)
    assert rows, f"rows missing: got {[(r['observation_point'], r['request_resource']) for r in mine()]}, " \
                 f"stats {col.snapshot()}"
    for path in PATHS:
        code = 404 if "missing" in path else 200
        client = [r for r in rows if r["observation_point"] == "c-p" and r["request_resource"] == path]
        server = [r for r in rows if r["observation_point"] == "s-p" and r["request_resource"] == path]
        assert len(client) == 1 and len(server) == 1, (path, client, server)
        c, s = client[0], server[0]
        for r in (c, s):
            assert r["signal_source"] == SIGNAL_EBPF
            assert r["l7_protocol"] == 20 and r["type"] == 2            # HTTP/1, a paired session
            assert r["request_type"] == "GET" and r["response_code"] == code
            assert r["response_duration"] >= 0 and r["end_time"] >= r["start_time"] > 0
            assert r["server_port"] == port
            assert r["syscall_thread_0"] and r["syscall_thread_1"]
        assert (c["process_id_0"], c["process_kname_0"], c["process_id_1"]) == (cli.pid, f"{prefix}-cli", 0)
        assert (s["process_id_1"], s["process_kname_1"], s["process_id_0"]) == (srv.pid, f"{prefix}-srv", 0)
        # the server's thread reads the request then writes the response: one syscall trace id
        assert s["syscall_trace_id_request"] == s["syscall_trace_id_response"] != 0
        # the client writes, then reads: the read (ingress after egress) starts a new id
        assert c["syscall_trace_id_request"] != c["syscall_trace_id_response"]
        assert c["syscall_thread_0"] == cli.pid                   # single-threaded client: tid == pid
        # both ends traced: the same connection (5-tuple) on both rows
        assert (c["ip4_0"], c["client_port"], c["ip4_1"]) == (s["ip4_0"], s["client_port"], s["ip4_1"])
        assert c["client_port"] != 0
        assert len(c) == len(COLUMNS)
    snap = col.snapshot()
    assert snap.get("events lost (perf buffer full)", 0) == 0 or snap["rows"] > 0


REUSE_CLIENT = r'''
import ctypes, socket, sys
ctypes.CDLL(None).prctl(15, sys.argv[1].encode(), 0, 0, 0)
port = int(sys.argv[2])
def get(path):
    s = socket.create_connection(("127.0.0.1", port))
    s.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    data = b""
    while b"\r\n\r\n" not in data or not data.endswith(path.encode()):
        data += s.recv(4096)
    return s
first = get("/first")
fd, port1 = first.fileno(), first.getsockname()[1]
first.close()
second = get("/second")                   # the lowest free fd: the first connection's
print(fd, second.fileno(), port1, second.getsockname()[1], flush=True)
sys.stdin.readline()                      # the second connection stays open until the test is done
'''


@needs_ebpf
def test_a_reused_fd_does_not_give_a_connection_another_ones_ports() -> None:
    """A client closes a connection and opens the next one to the same server on the same fd before
    the tracer reads /proc (here: every event is handled after both). The connect event carries the
    socket's inode, read by the kernel in the syscall, so the first connection is never described
    by the second one's ports: each client row has the port the server saw for that request."""
    from collector.ebpf.sessions import EbpfSessions

    prefix = _prefix()
    events: list = []
    tracer = tracer_mod.Tracer(events.append, comm=prefix)
    try:
        srv = subprocess.Popen([sys.executable, "-c", SERVER, f"{prefix}-srv"], stdout=subprocess.PIPE, text=True)
        _SERVERS.append(srv)
        port = int(srv.stdout.readline())
        cli = subprocess.Popen([sys.executable, "-c", REUSE_CLIENT, f"{prefix}-cli", str(port)],
                               stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        _SERVERS.append(cli)
        fd1, fd2, port1, port2 = map(int, cli.stdout.readline().split())
        assert fd1 == fd2 and port1 != port2
        _wait(lambda: tracer.poll(0) or all(sum(e.dir <= 1 and e.tgid == p.pid for e in events) >= 4 for p in (cli, srv)),
              10)
        sessions = EbpfSessions(tracer.classify)
        for e in events:                  # now: /proc shows the second connection on that fd
            sessions.handle(e)
        rows = [dict(zip(COLUMNS, r, strict=True)) for r in sessions.take_rows()]
    finally:
        tracer.close()
    client = {r["request_resource"]: r["client_port"] for r in rows if r["observation_point"] == "c-p"}
    server = {r["request_resource"]: r["client_port"] for r in rows if r["observation_point"] == "s-p"}
    assert server == {"/first": port1, "/second": port2}
    assert client == server


def _bpf_fds() -> int:
    """This process's open BPF program, link and perf-event fds (attached tracepoints hold them)."""
    n = 0
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        n += target in ("anon_inode:bpf-prog", "anon_inode:bpf_link", "anon_inode:[perf_event]")
    return n


@needs_ebpf
def test_a_load_interrupted_by_a_signal_is_tried_again_and_leaves_nothing_behind(monkeypatch) -> None:
    """The verifier returns EAGAIN when a signal arrives while it runs; bcc gives up then, with the
    programs it had attached so far still attached. The tracer loads again (the ring buffer, not
    the perf-buffer fallback) and the failed attempt's programs are gone."""
    bcc = tracer_mod.import_bcc()
    real, calls = bcc.BPF.load_func, []

    def interrupted(self, func_name, prog_type, *a, **kw):
        calls.append(func_name)
        if len(calls) == 3:                     # the first attempt's third program
            raise Exception(f"Failed to load BPF program {func_name!r}: {os.strerror(errno.EAGAIN)}")
        return real(self, func_name, prog_type, *a, **kw)

    monkeypatch.setattr(bcc.BPF, "load_func", interrupted)
    before = _bpf_fds()
    tracer = tracer_mod.Tracer(lambda e: None, comm=_prefix())
    try:
        assert len(calls) > 3                   # loaded again after the interruption
        if tracer_mod.platform.machine() == "x86_64":
            assert tracer.ring is not None      # a signal is no reason to fall back to perf buffers
        assert _bpf_fds() > before
    finally:
        tracer.close()
    assert _bpf_fds() == before


def test_degrades_without_bcc(monkeypatch, caplog) -> None:
    def no_bcc():
        raise tracer_mod.EbpfUnavailable("bcc is not installed (simulated)")

    monkeypatch.setattr(tracer_mod, "import_bcc", no_bcc)
    monkeypatch.setattr(tracer_mod.os, "geteuid", lambda: 0)
    writer = ListWriter()
    col = EbpfCollector(writer)
    with caplog.at_level(logging.WARNING, logger="flowscope.ebpf"):
        assert col.start() is False
    assert col.stats["ebpf unavailable"] == 1
    assert "bcc is not installed (simulated)" in col.error
    msgs = [r.getMessage() for r in caplog.records if "eBPF tracing disabled" in r.getMessage()]
    assert len(msgs) == 1 and "packet capture continues" in msgs[0]
    col.stop()                                  # a no-op, never raises
    assert col.snapshot()["ebpf unavailable"] == 1 and writer.batches == []


def test_degrades_without_root(monkeypatch, caplog) -> None:
    monkeypatch.setattr(tracer_mod.os, "geteuid", lambda: 1000)
    col = EbpfCollector(ListWriter())
    with caplog.at_level(logging.WARNING, logger="flowscope.ebpf"):
        assert col.start() is False
    assert "needs root" in col.error and col.stats["ebpf unavailable"] == 1


def test_pcap_collect_goes_on_when_ebpf_is_refused(tmp_path: Path) -> None:
    """`collect --pcap … --ebpf` with eBPF refused (bcc hidden): one log line, the pcap's rows land."""
    shim = tmp_path / "shim"
    (shim / "bcc").mkdir(parents=True)
    (shim / "bcc" / "__init__.py").write_text("raise ImportError('bcc hidden by the test')\n")
    env = {**os.environ, "PYTHONPATH": f"{shim}:{ROOT}", "COLUMNS": "200"}
    dsn = f"chdb://{tmp_path / 'store'}"
    pcap = ROOT / "tests" / "data" / "http.pcap"
    if not pcap.exists():
        pcap = sorted((ROOT / "tests" / "data").glob("*.pcap"))[0]
    r = subprocess.run([str(FLOWSCOPE), "collect", "--pcap", str(pcap), "--ebpf", "--clickhouse", dsn],
                       cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stderr.count("eBPF tracing disabled") == 1, r.stderr
    written = re.search(r"rows → flow_log\.l4_flow_log\s+([\d,]+)", r.stderr)
    assert written and int(written.group(1).replace(",", "")) > 0, r.stderr


@needs_ebpf
def _exchange_once_attached(proc: subprocess.Popen, prefix: str, *paths: str) -> None:
    """Wait for a `flowscope … --ebpf` process to say its tracer is attached, then run the
    traced server and client (comm ``prefix-srv`` / ``prefix-cli``) for ``paths``."""
    line = ""
    deadline = time.monotonic() + 90
    while "eBPF socket tracer attached" not in line and time.monotonic() < deadline:
        line = proc.stderr.readline()
        if not line and proc.poll() is not None:
            break
    assert "eBPF socket tracer attached" in line, line
    srv = subprocess.Popen([sys.executable, "-c", SERVER, f"{prefix}-srv"], stdout=subprocess.PIPE, text=True)
    _SERVERS.append(srv)
    port = srv.stdout.readline().strip()
    subprocess.run([sys.executable, "-c", CLIENT, f"{prefix}-cli", port, *paths], check=True, capture_output=True,
                   timeout=30)


def test_cli_collect_ebpf_writes_rows(tmp_path: Path) -> None:
    """`flowscope collect --ebpf --comm PREFIX`: rows in the store, stopped by SIGINT."""
    prefix = _prefix()
    dsn = f"chdb://{tmp_path / 'store'}"
    proc = subprocess.Popen([str(FLOWSCOPE), "collect", "--ebpf", "--comm", prefix, "--clickhouse", dsn],
                            cwd=tmp_path, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)
    try:
        _exchange_once_attached(proc, prefix, "/cli/x", "/cli/missing")
        time.sleep(1.5)           # the client is done: the tracer reads what is left in its ring
    finally:
        proc.send_signal(signal.SIGINT)
        _, errs = proc.communicate(timeout=60)
    assert proc.returncode == 0, errs
    q = subprocess.run([str(FLOWSCOPE), "query", "--clickhouse", dsn, "--db", "flow_log",
                        "SELECT observation_point, request_resource, response_code, process_kname_0, process_kname_1 "
                        "FROM l7_flow_log WHERE signal_source = 3 ORDER BY observation_point, request_resource"],
                       cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert q.returncode == 0, q.stderr
    rows = [tuple(v) for v in json.loads(q.stdout)["result"]["values"]]
    for obs, who in (("c-p", (f"{prefix}-cli", "")), ("s-p", ("", f"{prefix}-srv"))):
        for path, code in (("/cli/missing", 404), ("/cli/x", 200)):
            assert rows.count((obs, path, code) + who) == 1, rows


@needs_ebpf
def test_up_ebpf_reports_the_tracer_on_metrics(tmp_path: Path) -> None:
    """`flowscope up --ebpf`: the tracer's counters (events, rows, losses, CPU) join the collector's
    Prometheus /metrics."""
    import socket

    import httpx

    prefix = _prefix()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([str(FLOWSCOPE), "up", "--ebpf", "--comm", prefix, "--listen", f"127.0.0.1:{port}",
                             "--clickhouse", f"chdb://{tmp_path / 'store'}"],
                            cwd=tmp_path, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)
    try:
        _exchange_once_attached(proc, prefix, "/m/a", "/m/b")

        def metrics() -> dict[str, float] | None:
            text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
            got = {k: float(v) for k, _, v in (ln.rpartition(" ") for ln in text.splitlines())
                   if k.startswith("flowscope_ebpf")}
            return got if got.get("flowscope_ebpf_rows_total", 0) >= 4 else None

        got = _wait(metrics, 30)
        assert got, "no eBPF rows on /metrics"
        assert got["flowscope_ebpf_up"] == 1.0
        assert got["flowscope_ebpf_rows_total"] == 4.0          # two requests, each seen by both processes
        assert got["flowscope_ebpf_events_total"] >= 8
        assert got['flowscope_ebpf_events_lost_total{reason="perf_buffer_full"}'] == 0.0
        assert got["flowscope_ebpf_cpu_seconds_total"] > 0
    finally:
        proc.send_signal(signal.SIGINT)
        proc.communicate(timeout=60)
    assert proc.returncode == 0
