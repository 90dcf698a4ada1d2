"""L4 flow building speed on one core: flowscope's pcap reader + decoder + flow table (TCP state,
latency, retransmissions, 60 s rows, flow-second deltas) against a naive dpkt loop (dpkt's pcap
reader, Ethernet→IP→TCP/UDP objects, a 5-tuple dict) over the same file, in the same run.

    .venv/bin/python bench/collector_l4.py [--packets 300000] [--runs 5]

Input: the committed fixture pcaps (real traffic: HTTP, DNS, Redis, MySQL, MQTT, gRPC, VXLAN,
Geneve, IPIP, VLAN, IPv6, retransmissions…) replayed with shifted ports until ≥ 300k packets.
CPU time of this process is measured (the machine is shared and noisy); medians are reported.
The per-packet modules run compiled when setup.py built them (``make``); ``FLOWSCOPE_PURE=1``
measures their ``.py`` form. The JSON line says which ran ("form").
"""

from __future__ import annotations

import argparse
import gc
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import median, replayed_pcap, result


def dpkt_loop(path: Path) -> int:
    """The baseline: what a first Python flow tool looks like."""
    import dpkt

    flows: dict[tuple, int] = {}
    with path.open("rb") as f:
        for _ts, buf in dpkt.pcap.Reader(f):
            eth = dpkt.ethernet.Ethernet(buf)
            ip = eth.data
            if not isinstance(ip, dpkt.ip.IP | dpkt.ip6.IP6):
                continue
            l4 = ip.data
            if isinstance(l4, dpkt.tcp.TCP | dpkt.udp.UDP):
                key = (ip.src, ip.dst, l4.sport, l4.dport, ip.p)
                flows[key] = flows.get(key, 0) + 1
    return len(flows)


class CountingSink:
    def __init__(self) -> None:
        self.l4_rows = 0
        self.fs_rows = 0

    def l4(self, rows: list) -> None:
        self.l4_rows += len(rows)

    def seconds(self, rows: list) -> None:
        self.fs_rows += len(rows)


def flowscope_loop(path: Path) -> tuple[int, int, int]:
    from collector.capture.pcap import PcapSource
    from collector.flow.table import FlowTable, NicInfo

    sink = CountingSink()
    table = FlowTable(sink)
    with PcapSource([str(path)]) as src:
        for batch in src.batches():
            if not table.nics:
                table.add_nic(0, NicInfo(name="eth0"))
            table.process(batch)
    table.flush()
    return table.stats["flows_created"], sink.l4_rows, sink.fs_rows


def timed(fn, *args) -> tuple[float, object]:
    gc.collect()
    t0 = time.process_time()
    out = fn(*args)
    return time.process_time() - t0, out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--packets", type=int, default=300_000)
    ap.add_argument("--runs", type=int, default=5)
    args = ap.parse_args()
    from collector.pipeline import tune_gc

    path, n = replayed_pcap(args.packets)
    print(f"input: {path.name}, {n:,} packets ({path.stat().st_size / 1e6:.0f} MB)")
    tune_gc()
    ours, base = [], []
    for i in range(args.runs):
        dt, nflows = timed(dpkt_loop, path)
        base.append(n / dt)
        dt2, (flows, l4_rows, fs_rows) = timed(flowscope_loop, path)
        ours.append(n / dt2)
        print(f"run {i + 1}: dpkt loop {n / dt:,.0f} pkt/s ({nflows:,} 5-tuples) | flowscope {n / dt2:,.0f} pkt/s "
              f"({flows:,} flows, {l4_rows:,} l4 rows, {fs_rows:,} flow-seconds)")
    from collector.compiled import forms

    f, b = median(ours), median(base)
    form = "/".join(sorted(set(forms().values()) - {"not loaded"}))
    print(f"median: flowscope {f:,.0f} pkt/s ({form}), dpkt loop {b:,.0f} pkt/s, ratio {f / b:.2f}")
    result("collector_l4", f, "pkt/s", "dpkt loop (reader + parse + 5-tuple dict)", b,
           f"tests/data/*.pcap replayed x{n // 6864} ({n} packets)", runs=args.runs,
           python=sys.version.split()[0], form=form)


if __name__ == "__main__":
    main()
