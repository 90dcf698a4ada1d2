"""HTTP/1 requests parsed, paired and written per second on one core, next to the L4-only rate of
the same pcap in the same run.

    .venv/bin/python bench/collector_l7.py [--requests 100000] [--runs 3]

Input: the HTTP/1 fixtures (tests/data/http1.pcap: nginx and python http.server, keep-alive,
chunked, 64 KiB bodies) replayed with shifted ports until there are at least ``--requests``
requests. Both runs go through the whole collector (flow table, metrics, writer) into a fresh
embedded store; the L7 run also parses HTTP, pairs requests and responses and writes
flow_log.l7_flow_log and the application metrics. CPU time of this process; medians.
Also reported: on-disk bytes per l7_flow_log row.
"""

from __future__ import annotations

import argparse
import shutil
import struct
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import DATA, OUT, median, result


def http_pcap(min_requests: int) -> tuple[Path, int, int]:
    """http1.pcap back to back with shifted client ports; (path, packets, requests)."""
    import dpkt

    from collector.decode.packet import DPORT, L4_OFF, PROTO, SPORT, Decoder

    per_copy = sum(1 for _ in _requests(DATA / "http1.pcap"))
    copies = -(-min_requests // per_copy)
    path = OUT / f"http-{copies}.pcap"
    with (DATA / "http1.pcap").open("rb") as f:
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
    return path, len(packets) * copies, per_copy * copies


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


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--requests", type=int, default=100_000)
    ap.add_argument("--runs", type=int, default=3)
    args = ap.parse_args()
    path, packets, requests = http_pcap(args.requests)
    print(f"input: {path.name}: {packets:,} packets, {requests:,} HTTP requests")
    l7_rates, l4_rates, bpr = [], [], []
    for i in range(args.runs):
        dt7, s7 = run(path, True)
        dt4, _ = run(path, False)
        l7_rates.append(requests / dt7)
        l4_rates.append(requests / dt4)
        bpr.append(s7["l7_bytes_per_row"])
        print(f"run {i + 1}: with L7 {requests / dt7:,.0f} requests/s ({packets / dt7:,.0f} pkt/s, "
              f"{s7['rows'].get('flow_log.l7_flow_log', 0):,} l7 rows) | L4 only {requests / dt4:,.0f} "
              f"requests/s ({packets / dt4:,.0f} pkt/s) | {s7['l7_bytes_per_row']:.1f} B per l7 row")
    f, b = median(l7_rates), median(l4_rates)
    print(f"median: {f:,.0f} HTTP requests/s with L7 vs {b:,.0f}/s L4 only; {median(bpr):.1f} B per l7_flow_log row")
    result("collector_l7", f, "requests/s", "same pcap, L4 only", b, f"tests/data/http1.pcap x{requests // 57}",
           l7_bytes_per_row=round(median(bpr), 1), deepflow_bytes_per_row=70)


if __name__ == "__main__":
    main()
