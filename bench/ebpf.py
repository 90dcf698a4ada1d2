"""eBPF socket tracer cost: a local HTTP/1 keep-alive load generator against a Python HTTP server,
with the tracer off, then on, in the same run.

Figures: requests traced per second of tracer CPU (one core), the tracer's CPU per 1k requests,
and the added client latency with the tracer on. Root + bcc only (python3-bpfcc).

    .venv/bin/python bench/ebpf.py [--requests 4000]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from collector.ebpf import EbpfCollector

SERVER = r'''
import ctypes, sys
ctypes.CDLL(None).prctl(15, sys.argv[1].encode(), 0, 0, 0)
from http.server import HTTPServer, BaseHTTPRequestHandler
class H(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True
    def do_GET(self):
        body = b"ok"
        self.send_response(200)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *a):
        pass
s = HTTPServer(("127.0.0.1", 0), H)
print(s.server_address[1], flush=True)
s.serve_forever()
'''

CLIENT = r'''
import ctypes, sys, time, http.client
ctypes.CDLL(None).prctl(15, sys.argv[1].encode(), 0, 0, 0)
port, n = int(sys.argv[2]), int(sys.argv[3])
c = http.client.HTTPConnection("127.0.0.1", port)
c.connect()
c.sock.setsockopt(6, 1, 1)     # TCP_NODELAY
t0 = time.perf_counter()
for i in range(n):
    c.request("GET", f"/item/{i}")
    c.getresponse().read()
print(time.perf_counter() - t0, flush=True)
'''


def cpu_of(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as fh:
        parts = fh.read().rsplit(")", 1)[1].split()
    return (int(parts[11]) + int(parts[12])) / os.sysconf("SC_CLK_TCK")


def run(prefix: str, n: int) -> tuple[float, float]:
    """(client wall seconds, server CPU seconds) for n keep-alive requests."""
    srv = subprocess.Popen([sys.executable, "-c", SERVER, f"{prefix}-srv"], stdout=subprocess.PIPE, text=True)
    try:
        port = srv.stdout.readline().strip()
        cpu0 = cpu_of(srv.pid)
        out = subprocess.run([sys.executable, "-c", CLIENT, f"{prefix}-cli", port, str(n)], capture_output=True,
                             text=True, check=True)
        return float(out.stdout), cpu_of(srv.pid) - cpu0
    finally:
        srv.kill()
        srv.wait()


class Null:
    rows = 0

    def put(self, table, batch) -> None:
        if table == "flow_log.l7_flow_log":      # not the application metrics tables
            self.rows += len(batch.rows)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--requests", type=int, default=4000)
    a = ap.parse_args()
    n = a.requests
    prefix = f"fsB{os.getpid() % 10000}"
    run(prefix, 200)                                   # warm up
    off_wall, off_srv = run(prefix, n)
    print(f"tracer off: {n} requests in {off_wall:.2f} s ({n / off_wall:,.0f} req/s), "
          f"server CPU {off_srv * 1000 / n * 1000:.0f} ms/1k")
    sink = Null()
    col = EbpfCollector(sink, comm=prefix, flush_interval_s=0.5)
    if not col.start():
        print(f"eBPF unavailable: {col.error}")
        print(json.dumps({"bench": "ebpf", "figure": 0, "unit": "req/s per core", "error": col.error}))
        return
    ru0 = resource.getrusage(resource.RUSAGE_SELF)
    on_wall, on_srv = run(prefix, n)
    deadline = time.monotonic() + 30
    while sink.rows + len(col.sessions.rows) < 2 * n and time.monotonic() < deadline:
        time.sleep(0.05)
    ru1 = resource.getrusage(resource.RUSAGE_SELF)
    snap = col.snapshot()
    col.stop()
    tracer_cpu = (ru1.ru_utime - ru0.ru_utime) + (ru1.ru_stime - ru0.ru_stime)
    rows = sink.rows
    events = snap.get("events", 0)
    print(f"tracer on:  {n} requests in {on_wall:.2f} s ({n / on_wall:,.0f} req/s), "
          f"server CPU {on_srv * 1000 / n * 1000:.0f} ms/1k")
    print(f"tracer: {events} events, {rows} rows (both sides), CPU {tracer_cpu:.2f} s = "
          f"{tracer_cpu * 1000 / n * 1000:.0f} ms per 1k requests; lost {snap.get('events lost (perf buffer full)', 0)}")
    added = (on_wall - off_wall) / off_wall * 100
    print(f"added client latency: {added:+.1f}%")
    per_core = rows / 2 / tracer_cpu if tracer_cpu else 0
    print(json.dumps({"bench": "ebpf", "figure": round(per_core), "unit": "req/s per core traced (both sides)",
                      "baseline": "tracer off", "baseline_figure": round(n / off_wall),
                      "ratio": round(on_wall / off_wall, 3), "added_latency_pct": round(added, 1),
                      "tracer_cpu_ms_per_1k": round(tracer_cpu * 1e6 / n), "events_per_s_cpu":
                      round(events / tracer_cpu) if tracer_cpu else 0, "rows": rows,
                      "input": f"{n} HTTP/1 keep-alive requests, python http.server on loopback"}))


if __name__ == "__main__":
    main()
