"""What AutoTagging costs the L4 collector: the same pcap through the whole L4 pipeline (flow table,
network metrics, rows converted to Arrow for ClickHouse, no insert) untagged and tagged with an
inventory of 10k pods / 50k addresses, in the same run.

    .venv/bin/python bench/tagging.py [--packets 300000] [--runs 5]

Input: the untunnelled fixture pcaps replayed with, per copy, the client and server IPv4 addresses
rewritten to two of the inventory's pods (so flows spread over ~all pod addresses and the tag
cache misses as in a big cluster), plus shifted ports. Inventory: 10k pods (IPv4 + IPv6, 500
Deployments, 8 namespaces), 2k Services with selectors, 300 nodes, 27.4k hosts = 50k addresses.
CPU time of this process, medians. Also reported: the time to build the inventory index.
"""

from __future__ import annotations

import argparse
import gc
import ipaddress
import struct
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import DATA, OUT, median, result

PCAPS = ("http1", "dns", "redis", "mysql", "mqtt", "tcp_rst", "grpc", "http2", "syn_drop")
PODS, SERVICES, NODES, HOSTS = 10_000, 2_000, 300, 27_400


def inventory():
    from flowscope.metadata.model import Record, ServicePort, StoredRecord

    out = [StoredRecord(1, Record(kind="cluster", name="big", cluster="big"))]
    for i in range(8):
        out.append(StoredRecord(i + 1, Record(kind="namespace", name=f"ns-{i}", cluster="big"), cluster_id=1))
    for i in range(NODES):
        out.append(StoredRecord(i + 1, Record(kind="node", name=f"node-{i}", cluster="big",
                                              ips=(str(ipaddress.IPv4Address(0x0A630000 + i + 1)),)), cluster_id=1))
    for i in range(500):
        out.append(StoredRecord(i + 1, Record(kind="pod_group", name=f"app-{i}", cluster="big", namespace=f"ns-{i % 8}",
                                              group_kind="Deployment"), cluster_id=1, namespace_id=i % 8 + 1))
    for i in range(SERVICES):
        out.append(StoredRecord(i + 1, Record(
            kind="service", name=f"svc-{i}", cluster="big", namespace=f"ns-{i % 500 % 8}",
            ips=(str(ipaddress.IPv4Address(0x0A600000 + i + 1)),), selector={"app": f"app-{i % 500}"},
            ports=(ServicePort(80 + i // 500, "TCP", 8080 + i // 500),)), cluster_id=1, namespace_id=i % 500 % 8 + 1))
    for i in range(PODS):
        g = i % 500
        out.append(StoredRecord(i + 1, Record(
            kind="pod", name=f"app-{g}-{i}", cluster="big", namespace=f"ns-{g % 8}", uid=f"uid-{i}",
            ips=(pod_ip(i), f"fd00:10:16::{i + 1:x}"), node=f"node-{i % NODES}", labels={"app": f"app-{g}"},
            group_kind="Deployment", group_name=f"app-{g}", created=1.0),
            cluster_id=1, namespace_id=g % 8 + 1, node_id=i % NODES + 1, group_id=g + 1))
    for i in range(HOSTS):
        out.append(StoredRecord(i + 1, Record(kind="host", name=f"vm-{i}", ips=(str(ipaddress.IPv4Address(0xC0A80000 + i + 1)),))))
    return out


def pod_ip(i: int) -> str:
    return str(ipaddress.IPv4Address(0x0A100000 + i + 1))        # 10.16.0.1 …


def tagged_pcap(min_packets: int) -> tuple[Path, int, int]:
    """(path, packets, copies): the fixtures back to back, each copy between two other pods."""
    import dpkt

    from collector.decode.packet import DPORT, L4_OFF, PROTO, SPORT, Decoder

    OUT.mkdir(parents=True, exist_ok=True)
    packets = []
    for name in PCAPS:
        with (DATA / f"{name}.pcap").open("rb") as f:
            packets.extend((int(ts * 1_000_000), bytes(buf)) for ts, buf in dpkt.pcap.Reader(f))
    packets.sort(key=lambda x: x[0])
    copies = -(-min_packets // len(packets))
    path = OUT / f"tagging-{copies}.pcap"
    if path.exists():
        return path, copies * len(packets), copies
    span = packets[-1][0] - packets[0][0] + 1_000_000
    dec = Decoder()
    decoded = [dec.decode(buf, 1) for _, buf in packets]
    client, server = struct.unpack("!I", ipaddress.IPv4Address("10.99.0.2").packed)[0], \
        struct.unpack("!I", ipaddress.IPv4Address("10.99.0.1").packed)[0]
    with path.open("wb") as out:
        out.write(struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 262144, 1))
        for k in range(copies):
            c_ip = int(ipaddress.IPv4Address(pod_ip((2 * k) % PODS)))
            s_ip = int(ipaddress.IPv4Address(pod_ip((2 * k + 1 + 2 * (k // PODS)) % PODS)))
            for (ts, buf), p in zip(packets, decoded, strict=True):
                frame = bytearray(buf)
                if p is not None and len(frame) >= 34 and frame[12:14] == b"\x08\x00":
                    for off in (26, 30):                      # outer IPv4 source, destination
                        ip = struct.unpack_from("!I", frame, off)[0]
                        if ip in (client, server):
                            struct.pack_into("!I", frame, off, c_ip if ip == client else s_ip)
                    if p[PROTO] in (6, 17) and k:
                        sport, dport = p[SPORT], p[DPORT]
                        if sport >= 1024 and sport > dport:
                            struct.pack_into("!H", frame, p[L4_OFF], 1024 + (sport + 7 * k) % 64000)
                        elif dport >= 1024:
                            struct.pack_into("!H", frame, p[L4_OFF] + 2, 1024 + (dport + 7 * k) % 64000)
                t = ts + k * span
                out.write(struct.pack("<IIII", t // 1_000_000, t % 1_000_000, len(frame), len(frame)))
                out.write(frame)
    return path, copies * len(packets), copies


class ConvertingWriter:
    """The writer's conversion to Arrow (where tag ids expand into 38 columns), without inserts."""

    def __init__(self) -> None:
        from flowscope.storage import connect  # noqa: F401  (same import cost in both runs)

        self.registry = None
        self.rows = 0
        self._conv: dict = {}
        self.columns = _columns()

    def put(self, table: str, batch) -> None:
        from collector.writer import Converter, RowBatch

        conv = self._conv.get(table)
        if conv is None:
            conv = self._conv[table] = Converter(self.columns[table], self.registry)
        t = conv.convert(batch) if isinstance(batch, RowBatch) else conv.table(batch)
        self.rows += t.num_rows

    def flush(self) -> None:
        pass


_COLS: dict | None = None


def _columns() -> dict:
    """Column types of every written table, from the schema in a scratch embedded store."""
    global _COLS
    if _COLS is None:
        import shutil
        import tempfile

        from collector.pipeline import WRITTEN_TABLES
        from collector.writer import Writer
        from flowscope import migrate
        from flowscope.storage import connect

        tmp = tempfile.mkdtemp(prefix="fs-bench-tag-")
        client = connect(f"chdb://{tmp}")
        try:
            migrate.apply(client)
            w = Writer(client, block=True)
            _COLS = {t: w.columns(t) for t in WRITTEN_TABLES}
            w.close()
        finally:
            client.close()
            shutil.rmtree(tmp, ignore_errors=True)
    return _COLS


def run(path: Path, records) -> tuple[float, int, int]:
    from collector.capture.pcap import PcapSource
    from collector.pipeline import Collector
    from collector.tagging import InventoryTagger, Tagger
    from flowscope.config import Config

    cfg = Config()
    cfg.l7.enabled = False
    if records is None:
        tagger = Tagger()
    else:
        tagger = InventoryTagger()
        tagger.load(records)
        tagger.apply_pending()
    writer = ConvertingWriter()
    col = Collector(cfg, writer, tagger=tagger)
    writer.registry = tagger.registry
    gc.collect()
    t0 = time.process_time()
    with PcapSource([str(path)]) as src:
        col.run(src)
    dt = time.process_time() - t0
    return dt, col.table.stats["flows_created"], writer.rows


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--packets", type=int, default=300_000)
    ap.add_argument("--runs", type=int, default=5)
    args = ap.parse_args()
    from collector.pipeline import tune_gc
    from collector.tagging import TagRegistry, build_inventory

    path, n, copies = tagged_pcap(args.packets)
    records = inventory()
    addresses = sum(len(r.record.ips) for r in records)
    t0 = time.process_time()
    inv = build_inventory(records, TagRegistry())
    build_s = time.process_time() - t0
    print(f"input: {path.name}, {n:,} packets; inventory {len(records):,} resources, {addresses:,} addresses "
          f"({len(inv.single):,} indexed, built in {build_s * 1000:.0f} ms)")
    _columns()
    tune_gc()
    plain, tagged, per_flow = [], [], []
    for i in range(args.runs):
        dt0, flows, rows0 = run(path, None)
        dt1, _, rows1 = run(path, records)
        plain.append(dt0)
        tagged.append(dt1)
        per_flow.append((dt1 - dt0) / flows * 1e9)
        print(f"run {i + 1}: untagged {n / dt0:,.0f} pkt/s ({dt0:.2f} s, {flows:,} flows, {rows0:,} rows) | "
              f"tagged {n / dt1:,.0f} pkt/s ({dt1:.2f} s, {rows1:,} rows) | +{(dt1 / dt0 - 1) * 100:.1f}%")
    p, t = median(plain), median(tagged)
    print(f"median: untagged {n / p:,.0f} pkt/s, tagged {n / t:,.0f} pkt/s: tagging adds {(t / p - 1) * 100:.1f}% "
          f"({median(per_flow):,.0f} ns per flow; goal < 10%)")
    result("tagging", n / t, "pkt/s", "same pipeline untagged", n / p,
           f"fixtures x{copies} between 10k pods ({n} packets)", overhead_pct=round((t / p - 1) * 100, 1),
           ns_per_flow=round(median(per_flow)), inventory_build_ms=round(build_s * 1000), addresses=addresses)


if __name__ == "__main__":
    main()
