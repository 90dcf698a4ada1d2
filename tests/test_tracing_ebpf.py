"""eBPF system spans in traces, on real traffic: one ``flowscope collect --iface … --ebpf`` process
captures a veth pair between two network namespaces (AF_PACKET) and traces the sockets of a real
Python HTTP client, a front server and its backend (syscall tracepoints) into one chDB store. The
client (namespace a) calls the front (namespace b), whose handler thread calls the backend
(namespace a) before answering, so every request crosses the veth pair twice.

The tracing API must attach each process's system span to the network spans of the same request on
the same connection, as DeepFlow nests them: client c-p → c (veth-a) → s (veth-b) → front s-p →
the front's c-p of the backend call (same thread, same syscall trace id) → c (veth-b) → s (veth-a)
→ backend s-p; exactly those eight spans per request, none of the client's other requests (its
thread's next request carries the previous answer's syscall trace id).

Root-only; skipped with the reason when not root, without iproute2, or when eBPF is refused.
"""

from __future__ import annotations

import itertools
import os
import random
import shutil
import signal
import string
import subprocess
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from datasource import tracing
from datasource.tracing import EBPF, PACKET, TraceConfig
from tests.netns import NetPair, make_netpair
from tests.test_ebpf import _ebpf_reason

with warnings.catch_warnings():     # starlette nudges towards httpx2, which this environment lacks
    warnings.simplefilter("ignore", UserWarning)
    from starlette.testclient import TestClient

FLOWSCOPE = Path(sys.executable).with_name("flowscope")
ENV = {k: v for k, v in os.environ.items() if not k.startswith("FLOWSCOPE_")}
L7 = "flow_log.l7_flow_log"
# One connection each (urllib), a quarter second apart: the tracer resolves a socket's local end from
# /proc/PID/fd when it handles the event, so a lagging tracer reads the fd number the process already
# reused for its next connection and writes that connection's client port (a collector issue).
PATHS = ["/a", "/b/missing", "/c?x=1"]
KEPT_ALIVE = ["/k/1", "/k/2"]       # back to back on one connection (and the front's to the backend)
CLIENTS = {**dict.fromkeys(PATHS, "cli"), **dict.fromkeys(KEPT_ALIVE, "ka")}

pytestmark = [
    pytest.mark.live,
    pytest.mark.skipif(os.geteuid() != 0, reason="eBPF and live capture need root"),
    pytest.mark.skipif(shutil.which("ip") is None, reason="needs iproute2's ip"),
    pytest.mark.skipif(_ebpf_reason() is not None, reason=str(_ebpf_reason())),
]

SERVER = r'''
import ctypes, http.client, sys, threading
ctypes.CDLL(None).prctl(15, sys.argv[1].encode(), 0, 0, 0)      # PR_SET_NAME: the comm traced
from http.server import ThreadingHTTPServer, BaseHTTPRequestHandler
backend = threading.local()       # HOST:PORT of a backend: each handler thread keeps one connection to it
class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def do_GET(self):
        status, payload = (404 if "missing" in self.path else 200), self.path.encode()
        if len(sys.argv) > 3:                                      # call the backend first, then answer
            if not hasattr(backend, "conn"):
                backend.conn = http.client.HTTPConnection(*sys.argv[3].split(":"), timeout=10)
            backend.conn.request("GET", "/backend" + self.path)
            payload = backend.conn.getresponse().read()
        reason = self.responses[status][0].encode()                # the whole answer in one write
        self.wfile.write(b"HTTP/1.1 %d %s\r\nContent-Length: %d\r\n\r\n%s" % (status, reason, len(payload), payload))
    def log_message(self, *a):
        pass
server = ThreadingHTTPServer((sys.argv[2], 0), Handler)
print(server.server_address[1], flush=True)
server.serve_forever()
'''

CLIENT = r'''
import ctypes, http.client, sys, time, urllib.request, urllib.error
ctypes.CDLL(None).prctl(15, sys.argv[1].encode(), 0, 0, 0)
kept = http.client.HTTPConnection(*sys.argv[2].split(":"), timeout=10) if sys.argv[3] == "keep-alive" else None
for p in sys.argv[4:]:
    if kept is not None:                # back to back
        kept.request("GET", p)
        kept.getresponse().read()
        continue
    time.sleep(0.25)
    try:
        urllib.request.urlopen(f"http://{sys.argv[2]}{p}", timeout=10).read()
    except urllib.error.HTTPError as e:
        e.read()
print("done", flush=True)
'''


@dataclass
class Lab:
    client: object
    engine: object
    pair: NetPair
    comm: dict[str, str]             # role (cli, fe, be) → process name
    ports: dict[str, int]            # fe, be → listening port

    def rows(self, where: str = "1", **params) -> list[dict]:
        res = self.client.query(f"SELECT _id, observation_point, signal_source, server_port, request_resource, "
                                f"toString(process_kname_0) AS k0, toString(process_kname_1) AS k1 FROM {L7} "
                                f"WHERE {where}", parameters=params)
        return [dict(zip(res.column_names, r, strict=True)) for r in res.result_rows]

    def entry(self, path: str) -> int:
        """The client process's span (c-p) of one request."""
        [row] = self.rows("observation_point = 'c-p' AND request_resource = {p:String} AND process_kname_0 = {k:String}",
                          p=path, k=self.comm[CLIENTS[path]])
        return row["_id"]

    def expected(self, path: str) -> list[tuple]:
        """(observation point, server port, process name or '', request_resource) from the client
        process down to the backend process, each the parent of the next."""
        fe, be = self.ports["fe"], self.ports["be"]
        cli, front, back = self.comm[CLIENTS[path]], self.comm["fe"], self.comm["be"]
        return [("c-p", fe, cli, path), ("c", fe, "", path), ("s", fe, "", path), ("s-p", fe, front, path),
                ("c-p", be, front, "/backend" + path), ("c", be, "", "/backend" + path),
                ("s", be, "", "/backend" + path), ("s-p", be, back, "/backend" + path)]


def _start(args: list[str], procs: list) -> subprocess.Popen:
    p = subprocess.Popen(args, stdout=subprocess.PIPE, text=True)
    procs.append(p)
    return p


def _traffic(pair: NetPair, root: Path) -> tuple[dict, dict]:
    """Capture and trace while the client makes its requests; the store is written when this returns."""
    prefix = "fsX" + "".join(random.choices(string.ascii_lowercase, k=4))
    comm = {role: f"{prefix}-{role}" for role in ("cli", "ka", "fe", "be")}
    cfg = root / "flowscope.yaml"
    # Flushed every second as usual: packet and eBPF batches of l7_flow_log (different columns) meet
    # in the writer's queue, which must keep them apart.
    cfg.write_text(yaml.safe_dump({"capture": {"interfaces": [{"match": "veth-?", "role": "own"}]},
                                   "writer": {"spool_dir": str(root / "spool"), "flush_interval_s": 1}}))
    col = subprocess.Popen([str(FLOWSCOPE), "collect", "--iface", f"{pair.a}/veth-a", f"{pair.b}/veth-b", "--ebpf",
                            "--comm", prefix, "--clickhouse", f"chdb://{root / 'chdb'}", "--config", str(cfg)],
                           stderr=subprocess.PIPE, text=True, env=ENV)
    procs: list[subprocess.Popen] = []
    err = ""
    try:
        assert col.stderr is not None
        lines = []
        while not any("eBPF socket tracer attached" in x or "eBPF tracing disabled" in x for x in lines[-1:]):
            lines.append(col.stderr.readline())
            if not lines[-1] and col.poll() is not None:
                break
        if "eBPF tracing disabled" in lines[-1]:
            pytest.skip(f"eBPF refused here: {lines[-1].strip()}")
        assert "eBPF socket tracer attached" in lines[-1], "".join(lines)
        be = _start(["ip", "netns", "exec", pair.a, sys.executable, "-c", SERVER, comm["be"], pair.ip_a], procs)
        ports = {"be": int(be.stdout.readline())}
        fe = _start(["ip", "netns", "exec", pair.b, sys.executable, "-c", SERVER, comm["fe"], pair.ip_b,
                     f"{pair.ip_a}:{ports['be']}"], procs)
        ports["fe"] = int(fe.stdout.readline())
        for role, mode, paths in (("cli", "new", PATHS), ("ka", "keep-alive", KEPT_ALIVE)):
            done = subprocess.run(["ip", "netns", "exec", pair.a, sys.executable, "-c", CLIENT, comm[role],
                                   f"{pair.ip_b}:{ports['fe']}", mode, *paths], capture_output=True, text=True,
                                  timeout=60)
            assert done.stdout.strip() == "done", done.stderr
        time.sleep(1.0)       # the last FINs through the rings; the tracer drains its buffer when stopped
    finally:
        col.send_signal(signal.SIGTERM)
        try:
            _, err = col.communicate(timeout=90)
        except subprocess.TimeoutExpired:
            col.kill()
            _, err = col.communicate()
            err = f"did not stop within 90 s of SIGTERM: {err}"
        for p in procs:
            p.kill()
            p.wait()
    assert col.returncode == 0, err
    return comm, ports


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    from datasource.engine import QueryEngine
    from flowscope.storage import connect

    root = tmp_path_factory.mktemp("tracing-ebpf")
    pairs = make_netpair()
    pair = next(pairs)
    try:
        comm, ports = _traffic(pair, root)
    finally:
        pairs.close()
    client = connect(f"chdb://{root / 'chdb'}")
    try:
        yield Lab(client, QueryEngine(client), pair, comm, ports)
    finally:
        client.close()


def _key(s: tracing.Span) -> tuple:
    r = s.row
    name = r["process_kname_0"] if s.side == "c-p" else r["process_kname_1"] if s.side == "s-p" else ""
    return s.side, r["server_port"], name, r["request_resource"]


def _chain(tr: tracing.Trace) -> list[tracing.Span]:
    """The spans from the root down, asserting each has exactly one child but the last."""
    [root] = [s for s in tr.spans if s.parent < 0]
    out = [root]
    while out[-1].children:
        assert len(out[-1].children) == 1, [_key(tr.spans[c]) for c in out[-1].children]
        out.append(tr.spans[out[-1].children[0]])
    return out


@pytest.fixture(scope="module")
def traces(lab) -> dict[str, tracing.Trace]:
    return {p: tracing.assemble(lab.engine, entry_id=lab.entry(p)) for p in CLIENTS}


def test_every_request_was_seen_by_both_sources(lab):
    """The ground truth: each request once per capture point and per traced process, nothing else."""
    rows = lab.rows()
    got = sorted((r["observation_point"], r["server_port"], r["k0"] or r["k1"], r["request_resource"]) for r in rows)
    assert got == sorted(k for p in CLIENTS for k in lab.expected(p))
    assert {r["signal_source"] for r in rows} == {PACKET, EBPF}


@pytest.mark.parametrize("path", list(CLIENTS))
def test_system_spans_nest_around_the_network_spans_of_their_request(lab, traces, path):
    tr = traces[path]
    chain = _chain(tr)
    assert [_key(s) for s in chain] == lab.expected(path)
    assert len(tr.spans) == len(chain) == 8              # nothing of the client's other requests
    # c-p → network spans → s-p of one connection: the connection rule; the backend call under the
    # front's server span: its thread's syscall trace id
    assert [s.link for s in chain[1:]] == ["network"] * 3 + ["syscall"] + ["network"] * 3
    assert chain[4].row["syscall_trace_id_request"] == chain[3].row["syscall_trace_id_request"] != 0
    code = 404 if "missing" in path else 200
    assert {s.row["response_code"] for s in chain} == {code}
    slack = TraceConfig().host_clock_offset_us      # syscall exits vs packet timestamps (tens of µs seen)
    for outer, inner in itertools.pairwise(chain):   # children inside their parents
        assert outer.start - slack <= inner.start and inner.end <= outer.end + slack, (_key(outer), _key(inner))
    c = tr.completeness
    assert (c["spans"], c["roots"], c["score"], c["conflicts"], c["truncated"]) == (8, 1, 1.0, [], False)
    assert c["by_signal_source"] == {"packet": 4, "ebpf": 4}
    assert c["found_by"].get("connection", 0) >= 2     # both connections' network spans, from their system spans
    assert sum(c["linked_by"].values()) == 7


def test_the_next_request_of_the_client_thread_is_refused(traces):
    """The client's second request carries the first answer's syscall trace id (and the third the
    second's): found, then refused with the reason, not followed."""
    c = traces[PATHS[1]].completeness
    assert c["rejected"] == {"syscall: a client thread's calls outside any server span": 2}


def test_exchanges_of_a_kept_alive_connection_stay_apart(traces):
    """Both requests on one client socket: each trace holds its own exchange's spans of it."""
    first, second = (traces[p] for p in KEPT_ALIVE)
    assert _chain(first)[0].row["client_port"] == _chain(second)[0].row["client_port"] != 0
    assert not {i for s in first.spans for i in s.ids} & {i for s in second.spans for i in s.ids}
    assert first.completeness["rejected"].get("tuple: another exchange on the same connection", 0) >= 1


def test_any_span_of_a_request_leads_to_its_trace(lab, traces):
    path = PATHS[0]
    want = sorted(i for s in traces[path].spans for i in s.ids)
    rows = lab.rows("request_resource IN ({p:String}, {b:String})", p=path, b="/backend" + path)
    many = tracing.assemble_many(lab.engine, [r["_id"] for r in rows])
    assert len(many) == 8
    for entry, tr in many.items():
        assert sorted(i for s in tr.spans for i in s.ids) == want, entry
        assert tr.completeness["roots"] == 1


def test_l7_flow_tracing_endpoint(lab):
    """DeepFlow's POST /v1/stats/querier/L7FlowTracing through the datasource app, from the client's c-p."""
    from datasource.app import create_app

    path = PATHS[2]
    app = create_app(lab.engine, routes=tracing.routes(tracing.Deps(engine=lab.engine)))
    with TestClient(app) as web:
        r = web.post("/v1/stats/querier/L7FlowTracing",
                     json={"DATABASE": "flow_log", "TABLE": "l7_flow_log", "_id": str(lab.entry(path))})
    assert r.status_code == 200, r.text
    items = r.json()["DATA"]["tracing"]
    assert [(t["tap_side"], t["request_resource"]) for t in items] == [(k[0], k[3]) for k in lab.expected(path)]
    assert [t["parent_id"] for t in items] == [-1] + [t["id"] for t in items[:-1]]
    assert [t["process_kname"] for t in items if t["signal_source"] == EBPF] == [
        lab.comm["cli"], lab.comm["fe"], lab.comm["fe"], lab.comm["be"]]
    assert "syscall" in items[4]["set_parent_info"]
    assert all(any("network" in rel for rel in t["related_ids"]) for t in items)
