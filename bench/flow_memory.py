"""Collector memory with 100k concurrent flows: resident set size of a process holding 100,000 live
TCP connections (handshake plus a request and a response each) in its flow table.

    .venv/bin/python bench/flow_memory.py [--flows 100000]

Baseline, measured in the same process: its RSS with the collector loaded and an empty table.
Also printed: the bytes per flow, and what the bounded table does at max_flows (counted
evictions, RSS flat).
"""

from __future__ import annotations

import argparse
import gc
import struct
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import result

T0 = 1_700_000_000_000_000
SYN, ACK, PSH = 0x02, 0x10, 0x08


def rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def frame(src: int, dst: int, sport: int, dport: int, seq: int, ack: int, flags: int, payload: bytes = b"") -> bytes:
    ip = struct.pack("!BBHHHBBHII", 0x45, 0, 40 + len(payload), 0, 0x4000, 64, 6, 0, src, dst)
    tcp = struct.pack("!HHIIBBHHH", sport, dport, seq, ack, 0x50, flags, 65535, 0, 0)
    return b"\x02\x00\x00\x00\x00\x01\x02\x00\x00\x00\x00\x02\x08\x00" + ip + tcp + payload


def connections(n: int, first: int = 0):
    """Batches of packets opening ``n`` connections from 10.1.0.0/16 to 10.2.0.0/16:80."""
    batch = []
    ts = T0
    for i in range(first, first + n):
        c, s = 0x0A010000 + (i % 60000) + 1, 0x0A020000 + (i // 60000) % 250 + 1
        sport = 20000 + (i * 7) % 40000
        for fr in (frame(c, s, sport, 80, 1000, 0, SYN), frame(s, c, 80, sport, 5000, 1001, SYN | ACK),
                   frame(c, s, sport, 80, 1001, 5001, ACK),
                   frame(c, s, sport, 80, 1001, 5001, ACK | PSH, b"GET / HTTP/1.1\r\n\r\n"),
                   frame(s, c, 80, sport, 5001, 1019, ACK | PSH, b"HTTP/1.1 200 OK\r\n\r\n")):
            batch.append((ts, fr, len(fr), 0, 0))
            ts += 2          # 500k packets per second: 100k connections open within one second
        if len(batch) >= 2000:
            yield batch
            batch = []
    if batch:
        yield batch


class Sink:
    def __init__(self) -> None:
        self.rows = 0

    def l4(self, rows: list) -> None:
        self.rows += len(rows)

    def seconds(self, rows: list) -> None:
        pass


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--flows", type=int, default=100_000)
    args = ap.parse_args()
    from collector.flow.table import FlowConfig, FlowTable, NicInfo
    from collector.pipeline import tune_gc

    tune_gc()
    table = FlowTable(Sink())
    table.add_nic(0, NicInfo(name="eth0"))
    gc.collect()
    base = rss_mib()
    for batch in connections(args.flows):
        table.process(batch)
    gc.collect()
    full = rss_mib()
    nflows = table.nflows
    per_flow = (full - base) * 1048576 / nflows
    print(f"baseline (collector loaded, empty table): {base:.0f} MiB")
    print(f"{nflows:,} concurrent flows: {full:.0f} MiB RSS, {per_flow:,.0f} bytes per flow")

    # the bound: a table capped at half as many flows evicts (counted) instead of growing
    del table
    gc.collect()
    capped = FlowTable(Sink(), FlowConfig(max_flows=args.flows // 2))
    capped.add_nic(0, NicInfo(name="eth0"))
    for batch in connections(args.flows, first=args.flows):
        capped.process(batch)
    print(f"max_flows={args.flows // 2:,} (after freeing the first table): {capped.nflows:,} live, "
          f"{capped.stats['flows_evicted']:,} evicted (reported as ForcedReport rows), RSS {rss_mib():.0f} MiB "
          f"(freed memory stays with the process for reuse)")
    result("flow_memory", full, "MiB RSS", "same process, empty flow table", base,
           f"{nflows} concurrent TCP flows", bytes_per_flow=round(per_flow), goal_mib=300)


if __name__ == "__main__":
    main()
