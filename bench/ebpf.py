"""eBPF socket tracer cost: a local HTTP/1 keep-alive load generator against a Python HTTP server,
with the tracer off, on, and loaded with a consumer that only drains the buffer, in the same run
(``--rounds`` rounds, medians).

Figures:
- requests traced per second of tracer CPU (one core) and the tracer's CPU per 1k requests, at the
  default CPU policy and at SCHED_IDLE (``ebpf.cpu_policy: idle``), in steady state (the collector
  is warmed up first: imports, caches); the tracer's CPU is its thread's, from before the load to
  its last flush (rows to a sink that drops them: storage is bench/insert.py's figure);
- the added client latency with the tracer on, and with only the kernel side on (the consumer
  drains and drops the records: the programs' cost on the traced syscalls, without userspace
  competing for the cores); the load's CPU (client + server, the programs run in their syscalls);
- the same off/on pair with the load pinned to CPU 0 and the tracer to CPU 1 (machines with 2+
  CPUs): the added latency when the tracer does not compete with the load for a core;
- the tracer's userspace alone: one run's events replayed through fresh sessions with nothing else
  running (the code's own cost, apart from what sharing the machine with the load adds);
- the service's latency at a fixed request rate (``--rate``, open loop: each request is due at its
  slot and timed from it), tracer off, on, and on at SCHED_IDLE (``ebpf.cpu_policy: idle``) in
  interleaved rounds, p50/p90/p99: what a service that does not keep the machine busy sees. The
  back-to-back load alone keeps ~1.3 of the 2 vCPUs busy, so there the tracer's own CPU competes
  with the service.

Root + bcc only (python3-bpfcc), except ``--replay``.

    .venv/bin/python bench/ebpf.py [--requests 4000] [--rounds 3] [--rate 1000] [--save-events FILE]
    .venv/bin/python bench/ebpf.py --replay FILE [--reps N]      # the userspace alone, no root
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import resource
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from collector.ebpf import EbpfCollector
from collector.ebpf.tracer import EbpfUnavailable, Tracer

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

# The same requests at a fixed rate (open loop): each request is due at start + i / rate, and its
# latency runs from when it was due (a late start counts against the request, as wrk2 counts it).
RATED_CLIENT = r'''
import ctypes, json, sys, time, http.client
ctypes.CDLL(None).prctl(15, sys.argv[1].encode(), 0, 0, 0)
port, n, rate = int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
c = http.client.HTTPConnection("127.0.0.1", port)
c.connect()
c.sock.setsockopt(6, 1, 1)     # TCP_NODELAY
lat = []
clock, sleep = time.perf_counter, time.sleep
t0 = clock()
for i in range(n):
    due = t0 + i / rate
    wait = due - clock()
    if wait > 0:
        sleep(wait)
    c.request("GET", f"/item/{i}")
    c.getresponse().read()
    lat.append(clock() - due)
print(clock() - t0, flush=True)
print(json.dumps(lat), flush=True)
'''

LOAD_CPU, TRACER_CPU = 0, 1          # the pinned figures: the load on CPU 0, the tracer on CPU 1


def children_cpu() -> float:
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


def self_cpu() -> float:
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


def run(prefix: str, n: int, pin: bool = False, rate: float = 0.0,
        latencies: list | None = None) -> tuple[float, float]:
    """(client wall seconds, client + server CPU seconds) for n keep-alive requests, back to back
    or (``rate``) at a fixed rate, each request's latency appended to ``latencies``."""
    pre = (lambda: os.sched_setaffinity(0, {LOAD_CPU})) if pin else None
    cpu0 = children_cpu()
    srv = subprocess.Popen([sys.executable, "-c", SERVER, f"{prefix}-srv"], stdout=subprocess.PIPE, text=True,
                           preexec_fn=pre)
    try:
        port = srv.stdout.readline().strip()
        args = [RATED_CLIENT, f"{prefix}-cli", port, str(n), str(rate)] if rate else \
            [CLIENT, f"{prefix}-cli", port, str(n)]
        out = subprocess.run([sys.executable, "-c", *args], capture_output=True, text=True, check=True,
                             preexec_fn=pre)
    finally:
        srv.kill()
        srv.wait()
    wall, *rest = out.stdout.splitlines()
    if latencies is not None and rest:
        latencies += json.loads(rest[0])
    return float(wall), children_cpu() - cpu0


class Null:
    rows = 0

    def put(self, table, batch) -> None:
        if table == "flow_log.l7_flow_log":      # not the application metrics tables
            self.rows += len(batch.rows)


def traced(prefix: str, n: int, pin: bool = False, record: list | None = None, rate: float = 0.0,
           latencies: list | None = None, settings=None) -> dict:
    """One run with the whole collector on, its default flush interval: wall, load CPU, the tracer
    thread's CPU (ring reads, parsing, flushes, the final one included), rows, events, losses.
    ``record``: gets the run's events, as plain tuples (``Event`` fields)."""
    sink = Null()
    col = EbpfCollector(sink, comm=prefix, settings=settings)
    if not col.start():
        raise EbpfUnavailable(col.error)
    try:
        if record is not None:
            handle, keep = col.sessions.handle, record.append

            def recording(e) -> None:
                keep(tuple(e))
                handle(e)

            col.tracer.callback = recording
        time.sleep(0.05)
        cpu0 = col.cpu_s
        wall, load = run(prefix, n, pin, rate, latencies)
        deadline = time.monotonic() + 30
        while sink.rows + len(col.sessions.rows) < 2 * n and time.monotonic() < deadline:
            time.sleep(0.05)
        snap = col.snapshot()
    finally:
        col.stop()
    cpu = col.cpu_s - cpu0
    lost = snap.get("events lost (perf buffer full)", 0) + snap.get("kernel submit failed", 0)
    print(f"  spilled to the perf buffer: {snap.get('events spilled (ring refused)', 0)}", file=sys.stderr) \
        if snap.get("events spilled (ring refused)") else None
    return {"wall": wall, "load": load, "cpu": cpu, "rows": sink.rows, "events": snap.get("events", 0),
            "lost": lost, "shed": snap.get("events shed (over budget)", 0),
            "gave_up": sum(v for k, v in snap.items() if k.startswith("gave up"))}


def replayed(events: list[tuple], n: int, reps: int = 7) -> tuple[float, int]:
    """The tracer's userspace alone: recorded events handed to fresh sessions (parse, pair, rows,
    application metrics) again and again with nothing else running. CPU µs per request (median)
    and rows made: the code's own cost, without the load competing for the cores and caches (on
    this 2-vCPU VM that competition alone makes the same code ~1.3–1.6× slower). Deterministic
    enough for callgrind: ``--replay FILE --reps 1`` against ``--reps 3``."""
    from collector.ebpf.sessions import EbpfSessions
    from collector.ebpf.tracer import Event
    from collector.metrics import MetricsAggregator
    from collector.tagging import TagRegistry

    events = [tuple.__new__(Event, e) for e in events]
    times, rows = [], 0
    for _ in range(reps):
        sessions = EbpfSessions(lambda tgid, fd: None)     # every socket of the run was opened while traced
        metrics = MetricsAggregator(TagRegistry(), family="application")
        t0 = time.thread_time()
        handle = sessions.handle
        for e in events:
            handle(e)
        sessions.close_all()
        rows = len(sessions.take_rows())
        metrics.add_seconds(sessions.take_app_rows())
        metrics.flush(int(time.time()), final=True)
        times.append(time.thread_time() - t0)
    return med(times) * 1e6 / n, rows


def kernel_only(prefix: str, n: int) -> dict:
    """One run with the programs attached and a consumer that drains the ring and drops every
    record: the kernel side's cost on the traced syscalls."""
    tracer = Tracer(lambda e: None, comm=prefix)
    stop = threading.Event()

    def drain() -> None:
        while not stop.is_set():
            tracer.poll(100)

    th = threading.Thread(target=drain, daemon=True)
    th.start()
    try:
        cpu0 = self_cpu()
        wall, load = run(prefix, n)
        cpu = self_cpu() - cpu0
    finally:
        stop.set()
        th.join()
        tracer.close()
    return {"wall": wall, "load": load, "cpu": cpu}


def fixed_rate(prefix: str, rate: float, n: int, rounds: int) -> dict:
    """The traced service's latency at a fixed request rate, tracer off, on (its default CPU policy)
    and on at SCHED_IDLE (``ebpf.cpu_policy: idle``), rounds interleaved: what a service that does
    not saturate the machine sees (the back-to-back figure keeps both vCPUs busy with the load
    alone, so there the tracer's CPU competes with it)."""
    from flowscope.config import EbpfSettings

    lats: dict[str, list[list[float]]] = {"off": [], "normal": [], "idle": []}
    cpu = []
    for _ in range(rounds):
        for policy, runs in lats.items():
            lat: list[float] = []
            if policy == "off":
                run(prefix, n, rate=rate, latencies=lat)
            else:
                r = traced(prefix, n, rate=rate, latencies=lat, settings=EbpfSettings(cpu_policy=policy))
                if policy == "normal":
                    cpu.append(r["cpu"])
            runs.append(lat)

    def q(xs: list[float], p: float) -> float:
        return statistics.quantiles(xs, n=100, method="inclusive")[round(p * 100) - 1]

    out = {}
    offs = lats["off"]
    for p in (0.5, 0.9, 0.99):
        line = []
        for policy in ("normal", "idle"):
            added = med([pct(q(on, p), q(off, p)) for on, off in zip(lats[policy], offs, strict=True)])
            on_all = [x for r in lats[policy] for x in r]
            line.append(f"on ({policy}) {q(on_all, p) * 1e6:,.0f} µs, {added:+.1f}%")
            out[f"rated_p{p * 100:g}_added_pct" + ("" if policy == "normal" else "_idle")] = round(added, 1)
        off_all = [x for r in offs for x in r]
        print(f"fixed rate {rate:,.0f} req/s, p{p * 100:g}: off {q(off_all, p) * 1e6:,.0f} µs; " + "; ".join(line)
              + f" (added: median of {rounds} interleaved rounds)")
    share = med(cpu) / (n / rate) * 100
    print(f"fixed rate {rate:,.0f} req/s: tracer CPU {share:.1f}% of a core")
    out |= {"rate": rate, "rated_tracer_cpu_pct": round(share, 1)}
    return out


def med(xs: list[float]) -> float:
    return statistics.median(xs)


def pct(on: float, off: float) -> float:
    return (on - off) / off * 100


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--requests", type=int, default=4000)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--save-events", metavar="FILE", help="keep the replayed run's events (pickle) for --replay")
    ap.add_argument("--replay", metavar="FILE", help="only replay saved events (no root needed) and print µs/request")
    ap.add_argument("--reps", type=int, default=7, help="replays of the recorded events")
    ap.add_argument("--rate", type=float, default=1000, help="requests/s of the fixed-rate latency figure (0: none)")
    ap.add_argument("--rated-requests", type=int, default=3000, help="requests per fixed-rate round")
    ap.add_argument("--rated-rounds", type=int, default=5)
    a = ap.parse_args()
    if a.replay:
        with open(a.replay, "rb") as f:
            n, events = pickle.load(f)
        us, rows = replayed(events, n, a.reps)
        print(f"{n} requests replayed {a.reps}×: {us:.1f} µs CPU per request, {rows} rows")
        return
    n, rounds = a.requests, a.rounds
    prefix = f"fsB{os.getpid() % 10000}"
    run(prefix, 200)                                   # warm up the load
    try:
        traced(prefix, 500)                            # warm up the collector (imports, caches)
    except EbpfUnavailable as e:
        print(f"eBPF unavailable: {e}")
        print(json.dumps({"bench": "ebpf", "figure": 0, "unit": "req/s per core", "error": str(e)}))
        return
    from flowscope.config import EbpfSettings

    offs, ons, idles, kerns, pinned_offs, pinned_ons = [], [], [], [], [], []
    pin = (os.cpu_count() or 1) >= 2
    for _ in range(rounds):
        wall, load = run(prefix, n)
        offs.append({"wall": wall, "load": load})
        ons.append(traced(prefix, n))
        idles.append(traced(prefix, n, settings=EbpfSettings(cpu_policy="idle")))
        kerns.append(kernel_only(prefix, n))
        if pin:
            mask = os.sched_getaffinity(0)
            os.sched_setaffinity(0, {TRACER_CPU})
            try:
                wall, load = run(prefix, n, pin=True)
                pinned_offs.append({"wall": wall, "load": load})
                pinned_ons.append(traced(prefix, n, pin=True))
            finally:
                os.sched_setaffinity(0, mask)

    def m(runs: list[dict], key: str) -> float:
        return med([r[key] for r in runs])

    def us_per_req(runs: list[dict], key: str) -> float:
        return m(runs, key) * 1e6 / n

    added = med([pct(on["wall"], off["wall"]) for on, off in zip(ons, offs, strict=True)])
    added_kernel = med([pct(k["wall"], off["wall"]) for k, off in zip(kerns, offs, strict=True)])
    per_core = med([r["rows"] / 2 / r["cpu"] for r in ons if r["cpu"]])
    events_per_s = med([r["events"] / r["cpu"] for r in ons if r["cpu"]])
    lost, shed, rows = sum(r["lost"] for r in ons), sum(r["shed"] for r in ons), [r["rows"] for r in ons]
    gave_up = sum(r["gave_up"] for r in ons)
    print(f"{rounds} rounds of {n} requests, medians")
    print(f"tracer off:  {n / m(offs, 'wall'):,.0f} req/s, load CPU (client + server) "
          f"{us_per_req(offs, 'load'):.0f} µs/request")
    print(f"tracer on:   {n / m(ons, 'wall'):,.0f} req/s, load CPU {us_per_req(ons, 'load'):.0f} µs/request; "
          f"added latency {added:+.1f}%")
    added_idle = med([pct(on["wall"], off["wall"]) for on, off in zip(idles, offs, strict=True)])
    per_core_idle = med([r["rows"] / 2 / r["cpu"] for r in idles if r["cpu"]])
    print(f"tracer on at SCHED_IDLE (ebpf.cpu_policy: idle): {n / m(idles, 'wall'):,.0f} req/s, added "
          f"latency {added_idle:+.1f}%; tracer {us_per_req(idles, 'cpu'):.0f} µs CPU per request = "
          f"{per_core_idle:,.0f} requests/s per core; lost {sum(r['lost'] for r in idles)}")
    print(f"kernel only: {n / m(kerns, 'wall'):,.0f} req/s, load CPU {us_per_req(kerns, 'load'):.0f} µs/request; "
          f"added latency {added_kernel:+.1f}% (consumer drains and drops: {us_per_req(kerns, 'cpu'):.0f} µs/request)")
    print(f"tracer: {us_per_req(ons, 'cpu'):.0f} µs CPU per request = {per_core:,.0f} requests/s per core, "
          f"{events_per_s:,.0f} events/s; rows {rows} (both sides), lost {lost}, shed {shed}, "
          f"sockets given up {gave_up}")
    events: list[tuple] = []
    traced(prefix, n, record=events)
    if a.save_events:
        with open(a.save_events, "wb") as f:
            pickle.dump((n, events), f)
    replay_us, replay_rows = replayed(events, n, a.reps)
    print(f"tracer userspace alone (one run's events replayed, no load running): {replay_us:.0f} µs CPU per "
          f"request = {1e6 / replay_us:,.0f} requests/s per core; rows {replay_rows}")
    extra = {"replay_figure": round(1e6 / replay_us), "replay_us_per_req": round(replay_us, 1),
             "idle_policy_figure": round(per_core_idle), "idle_policy_added_latency_pct": round(added_idle, 1)}
    if pinned_ons:
        added_pinned = med([pct(on["wall"], off["wall"]) for on, off in zip(pinned_ons, pinned_offs, strict=True)])
        per_core_pinned = med([r["rows"] / 2 / r["cpu"] for r in pinned_ons if r["cpu"]])
        print(f"pinned (load on CPU {LOAD_CPU}, tracer on CPU {TRACER_CPU}): off {n / m(pinned_offs, 'wall'):,.0f} "
              f"req/s, on {n / m(pinned_ons, 'wall'):,.0f} req/s; added latency {added_pinned:+.1f}%, "
              f"{per_core_pinned:,.0f} requests/s per tracer core")
        extra |= {"pinned_added_latency_pct": round(added_pinned, 1), "pinned_figure": round(per_core_pinned)}
    if a.rate:
        extra |= fixed_rate(prefix, a.rate, a.rated_requests, a.rated_rounds)
    print(json.dumps({"bench": "ebpf", "figure": round(per_core), "unit": "req/s per core traced (both sides)",
                      "baseline": "tracer off", "baseline_figure": round(n / m(offs, "wall")),
                      "ratio": round(m(ons, "wall") / m(offs, "wall"), 3), "added_latency_pct": round(added, 1),
                      "kernel_only_added_latency_pct": round(added_kernel, 1),
                      "load_cpu_us_per_req": {"off": round(us_per_req(offs, "load")),
                                              "on": round(us_per_req(ons, "load")),
                                              "kernel_only": round(us_per_req(kerns, "load"))},
                      "tracer_cpu_ms_per_1k": round(us_per_req(ons, "cpu")), "events_per_s_cpu": round(events_per_s),
                      "rows": min(rows), "lost": lost, "shed": shed, "gave_up": gave_up, **extra,
                      "input": f"{rounds}x{n} HTTP/1 keep-alive requests, python http.server on loopback"}))


if __name__ == "__main__":
    main()
