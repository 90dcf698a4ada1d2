"""HTTP/1 requests parsed, paired and written per second on one core, next to the L4-only rate of
the same pcap in the same run.

    .venv/bin/python bench/collector_l7.py [--requests 100000] [--runs 3]

Inputs, each replayed with shifted client ports until there are at least ``--requests`` requests:

1. (primary, the JSON figure) the HTTP/1 fixtures, tests/data/http1.pcap: nginx and python
   http.server, curl's keep-alive GETs with small JSON/HTML answers plus single requests, a
   64 KiB body and a chunked one (65 requests on 12 connections per copy). It stays the primary
   figure because it is committed, so every checkout measures the same bytes.
2. keep-alive API traffic (``api_*`` fields of the JSON line): 8 connections × 250 requests to the
   lab's nginx (10.99.0.1:80, /api/..., small JSON answers; one in ten a POST with a JSON body),
   each request with its own W3C traceparent and X-Request-ID as traced services send them.
   Captured once from the netlab namespaces (../shared/netlab: ``ip netns exec netlab-cli``,
   tcpdump on eth0) into bench/out/api-keepalive.pcap; without the lab (no namespaces, no root,
   no server answering) this input is skipped and the JSON line says so.

Both runs go through the whole collector (flow table, metrics, writer) into a fresh embedded
store; the L7 run also parses HTTP, pairs requests and responses and writes flow_log.l7_flow_log
and the application metrics. CPU time of this process (all threads, the embedded ClickHouse
included); medians. Also reported: on-disk bytes per l7_flow_log row.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import DATA, OUT, median, result

API_PCAP = OUT / "api-keepalive.pcap"
API_SERVER = "10.99.0.1"
API_CONNECTIONS, API_PER_CONNECTION = 8, 250
NETNS_CLIENT = "netlab-cli"

# Runs in the lab's client namespace: keep-alive connections, one traceparent and X-Request-ID per request.
API_CLIENT = r'''
import http.client, os, sys, uuid
host, conns, per = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
for c in range(conns):
    conn = http.client.HTTPConnection(host, 80, timeout=10)
    for i in range(per):
        headers = {"User-Agent": "bench-api-client/1.0", "Accept": "application/json",
                   "traceparent": f"00-{os.urandom(16).hex()}-{os.urandom(8).hex()}-01",
                   "X-Request-ID": str(uuid.uuid4())}
        if i % 10 == 9:
            headers["Content-Type"] = "application/json"
            conn.request("POST", "/api/create", body=b'{"name":"widget","qty":3}', headers=headers)
        else:
            conn.request("GET", f"/api/item/{c * per + i}", headers=headers)
        r = conn.getresponse()
        r.read()
        if r.status >= 300:
            sys.exit(f"unexpected status {r.status}")
    conn.close()
'''


def replayed(src: Path, name: str, min_requests: int) -> tuple[Path, int, int, int]:
    """``src`` back to back with shifted client ports; (path, packets, requests, copies)."""
    import dpkt

    from collector.decode.packet import DPORT, L4_OFF, PROTO, SPORT, Decoder

    per_copy = sum(1 for _ in _requests(src))
    copies = -(-min_requests // per_copy)
    path = OUT / f"{name}-{copies}.pcap"
    with src.open("rb") as f:
        packets = [(int(ts * 1_000_000), bytes(b)) for ts, b in dpkt.pcap.Reader(f)]
    if not path.exists():
        OUT.mkdir(parents=True, exist_ok=True)
        span = packets[-1][0] - packets[0][0] + 1_000_000
        dec = Decoder()
        with path.open("wb") as out:
            out.write(struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 262144, 1))
            for k in range(copies):
                for ts, buf in packets:
                    frame = bytearray(buf)
                    p = dec.decode(buf, 1)
                    if p is not None and p[PROTO] == 6 and k:
                        if p[SPORT] > p[DPORT]:
                            struct.pack_into("!H", frame, p[L4_OFF], 1024 + (p[SPORT] + 7 * k) % 64000)
                        else:
                            struct.pack_into("!H", frame, p[L4_OFF] + 2, 1024 + (p[DPORT] + 7 * k) % 64000)
                    t = ts + k * span
                    out.write(struct.pack("<IIII", t // 1_000_000, t % 1_000_000, len(frame), len(frame)))
                    out.write(frame)
    return path, len(packets) * copies, per_copy * copies, copies


def _requests(path: Path):
    """HTTP requests in a pcap, by their request line (for the count)."""
    import dpkt

    methods = (b"GET ", b"POST ", b"PUT ", b"DELETE ", b"HEAD ", b"OPTIONS ", b"PATCH ")
    with path.open("rb") as f:
        for _ts, buf in dpkt.pcap.Reader(f):
            eth = dpkt.ethernet.Ethernet(buf)
            tcp = getattr(eth.data, "data", None)
            if isinstance(tcp, dpkt.tcp.TCP) and bytes(tcp.data).startswith(methods):
                yield 1


def api_pcap() -> tuple[Path | None, str]:
    """The keep-alive API capture (made once, then cached), or None and why it is missing."""
    if API_PCAP.exists():
        return API_PCAP, ""
    if os.geteuid() != 0 or not shutil.which("tcpdump") or not Path(f"/run/netns/{NETNS_CLIENT}").exists():
        return None, "needs root, tcpdump and the netlab namespaces (../shared/netlab: lab.sh up)"
    probe = subprocess.run(["ip", "netns", "exec", NETNS_CLIENT, "curl", "-s", "-o", "/dev/null", "-m", "3",
                            "-w", "%{http_code}", f"http://{API_SERVER}/api/item/0"], capture_output=True, text=True)
    if probe.stdout != "200":
        return None, f"no API server answering at {API_SERVER}:80 in {NETNS_CLIENT} (lab.sh up starts nginx)"
    OUT.mkdir(parents=True, exist_ok=True)
    tmp = API_PCAP.with_suffix(".tmp")
    dump = subprocess.Popen(["ip", "netns", "exec", NETNS_CLIENT, "tcpdump", "-s", "0", "-U", "-i", "eth0",
                             "-w", str(tmp), f"host {API_SERVER} and tcp port 80"],
                            stderr=subprocess.PIPE, text=True)
    try:
        dump.stderr.readline()                  # "listening on eth0 …": the capture is running
        subprocess.run(["ip", "netns", "exec", NETNS_CLIENT, sys.executable, "-c", API_CLIENT, API_SERVER,
                        str(API_CONNECTIONS), str(API_PER_CONNECTION)], check=True, timeout=300)
        time.sleep(0.5)                         # the last FIN/ACKs
    finally:
        dump.send_signal(signal.SIGINT)
        dump.wait(10)
    tmp.rename(API_PCAP)
    return API_PCAP, ""


def run(path: Path, l7: bool) -> tuple[float, dict]:
    from collector.capture.pcap import PcapSource
    from collector.pipeline import Collector, tune_gc
    from collector.writer import Writer
    from flowscope import migrate
    from flowscope.config import Config
    from flowscope.storage import connect

    tmp = Path(tempfile.mkdtemp(prefix="fs-bench-l7-"))
    client = connect(f"chdb://{tmp}")
    try:
        migrate.apply(client)
        cfg = Config()
        cfg.l7.enabled = l7
        writer = Writer(client, block=True)
        col = Collector(cfg, writer)
        writer.registry = col.tagger.registry
        tune_gc()
        t0 = time.process_time()
        with PcapSource([str(path)]) as src:
            col.run(src)
        writer.close()
        dt = time.process_time() - t0
        stats = {"rows": dict(writer.stats.rows_written)}
        if l7:
            client.command("OPTIMIZE TABLE flow_log.l7_flow_log FINAL")
            n, disk = client.query("SELECT sum(rows), sum(bytes_on_disk) FROM system.parts WHERE "
                                   "database = 'flow_log' AND table = 'l7_flow_log' AND active").result_rows[0]
            stats["l7_bytes_per_row"] = disk / n if n else 0
        return dt, stats
    finally:
        client.close()
        shutil.rmtree(tmp, ignore_errors=True)


def measure(label: str, path: Path, packets: int, requests: int, runs: int) -> tuple[float, float, float]:
    """Median requests/s with L7 and L4 only, and bytes per l7_flow_log row, over ``runs``."""
    print(f"input {label}: {path.name}: {packets:,} packets, {requests:,} HTTP requests")
    l7_rates, l4_rates, bpr = [], [], []
    for i in range(runs):
        dt7, s7 = run(path, True)
        dt4, _ = run(path, False)
        l7_rates.append(requests / dt7)
        l4_rates.append(requests / dt4)
        bpr.append(s7["l7_bytes_per_row"])
        print(f"run {i + 1}: with L7 {requests / dt7:,.0f} requests/s ({packets / dt7:,.0f} pkt/s, "
              f"{s7['rows'].get('flow_log.l7_flow_log', 0):,} l7 rows) | L4 only {requests / dt4:,.0f} "
              f"requests/s ({packets / dt4:,.0f} pkt/s) | {s7['l7_bytes_per_row']:.1f} B per l7 row")
    f, b = median(l7_rates), median(l4_rates)
    print(f"median {label}: {f:,.0f} HTTP requests/s with L7 vs {b:,.0f}/s L4 only; "
          f"{median(bpr):.1f} B per l7_flow_log row")
    return f, b, median(bpr)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--requests", type=int, default=100_000)
    ap.add_argument("--runs", type=int, default=3)
    args = ap.parse_args()
    path, packets, requests, copies = replayed(DATA / "http1.pcap", "http", args.requests)
    f, b, bpr = measure("1 (http1.pcap)", path, packets, requests, args.runs)
    extra: dict = {"l7_bytes_per_row": round(bpr, 1), "deepflow_bytes_per_row": 70}
    api, why = api_pcap()
    if api is None:
        print(f"input 2 (keep-alive API traffic) skipped: {why}")
        extra["api_input"] = f"skipped: {why}"
    else:
        path, packets, n, api_copies = replayed(api, "api", args.requests)
        fa, ba, _ = measure("2 (keep-alive API)", path, packets, n, args.runs)
        extra.update(api_figure=round(fa, 2), api_baseline_figure=round(ba, 2),
                     api_input=f"bench/out/{api.name} x{api_copies} ({API_CONNECTIONS} keep-alive connections x "
                               f"{API_PER_CONNECTION} requests, traceparent + X-Request-ID each)")
    result("collector_l7", f, "requests/s", "same pcap, L4 only", b, f"tests/data/http1.pcap x{copies}", **extra)


if __name__ == "__main__":
    main()
