"""Insert throughput into the embedded store (chDB) and on-disk bytes per l4_flow_log row.

    .venv/bin/python bench/insert.py [--rows 500000] [--runs 3]

Rows are real l4_flow_log rows: the flow table's output for the fixture pcaps replayed with
shifted ports (bench/common.py), re-stamped into a synthetic cluster (distinct client/server
IPs across a /16, spread over an hour) so compression sees realistic variety. Measured in the
same run:
  * flowscope: insert_arrow of 100k-row Arrow batches (the figure), and separately the writer's
    RowBatch → Arrow conversion (omits all-default columns) and both together;
  * baseline: clickhouse-connect's row-oriented insert of the same rows and columns
    (what a straightforward writer does).
Bytes per row: after OPTIMIZE FINAL, system.parts bytes_on_disk / rows for the flowscope rows.
"""

from __future__ import annotations

import argparse
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import median, replayed_pcap, result


def collect_rows(path: Path) -> list[tuple]:
    from collector.capture.pcap import PcapSource
    from collector.flow.table import FlowTable, NicInfo

    rows: list[tuple] = []

    class Sink:
        def l4(self, r: list) -> None:
            rows.extend(r)

        def seconds(self, r: list) -> None:
            pass

    table = FlowTable(Sink())
    table.add_nic(0, NicInfo(name="eth0", capture_nic=0x1234ABCD))
    with PcapSource([str(path)]) as src:
        for batch in src.batches():
            table.process(batch)
    table.flush()
    return rows


def synthetic(rows: list[tuple], n: int, seed: int = 7) -> list[tuple]:
    """``n`` rows cycled from ``rows`` with fresh identities: 2,000 client and 300 server IPs in
    10.244.0.0/16, random ephemeral ports, flow ids and _ids numbered as the collector numbers them,
    times over one hour, sorted by time like a collector writes them."""
    from collector.flow.report import L4_COLUMNS

    ix = {c: i for i, c in enumerate(L4_COLUMNS)}
    rnd = random.Random(seed)
    clients = [0x0AF40000 + rnd.randrange(1, 65535) for _ in range(2000)]
    servers = [0x0AF40000 + rnd.randrange(1, 65535) for _ in range(300)]
    t0 = int(time.time()) - 3600          # inside the default 72 h TTL
    out = []
    for k in range(n):
        r = list(rows[k % len(rows)])
        if r[ix["is_ipv4"]]:
            r[ix["ip4_0"]] = rnd.choice(clients)
            r[ix["ip4_1"]] = servers[int(rnd.paretovariate(1.2)) % len(servers)]
        r[ix["client_port"]] = rnd.randrange(32768, 61000)
        end_s = t0 + k * 3600 // n
        dur = r[ix["end_time"]] - r[ix["start_time"]]
        r[ix["end_time"]] = end_s * 1_000_000 + rnd.randrange(1_000_000)
        r[ix["start_time"]] = r[ix["end_time"]] - dur
        r[ix["time"]] = end_s
        r[ix["_id"]] = end_s << 32 | (k & 0x3FFFFF)
        # as the flow table numbers flows: creation time (~1.07 s units) above a per-collector sequence
        r[ix["flow_id"]] = ((r[ix["start_time"]] * 1000) >> 30 & 0xFFFFFFFF) << 32 | (k & 0xFFFFFF)
        out.append(tuple(r))
    return out


def python_rows(t, cols) -> list[list]:
    """The Python values clickhouse-connect's row insert wants (IP objects, datetimes)."""
    import ipaddress

    fix = {}
    for name in t.column_names:
        base = cols[name].ch_type
        if base == "IPv4":
            fix[name] = ipaddress.IPv4Address
        elif base == "IPv6":
            fix[name] = ipaddress.IPv6Address
    out = []
    for r in t.to_pylist():
        out.append([fix[c](v) if c in fix else v for c, v in r.items()])
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=500_000)
    ap.add_argument("--runs", type=int, default=3)
    args = ap.parse_args()
    from collector.flow.report import L4_COLUMNS
    from collector.tagging import TagRegistry
    from collector.writer import Converter, RowBatch, load_columns
    from flowscope import migrate
    from flowscope.storage import connect

    path, npk = replayed_pcap(300_000)
    base_rows = collect_rows(path)
    rows = synthetic(base_rows, args.rows)
    print(f"{len(rows):,} l4_flow_log rows ({len(base_rows):,} distinct flows from {npk:,} packets)")
    tmp = Path(tempfile.mkdtemp(prefix="fs-bench-insert-"))
    client = connect(f"chdb://{tmp}")
    try:
        migrate.apply(client)
        cols = load_columns(client, "flow_log.l4_flow_log")
        conv = Converter(cols, TagRegistry())
        batch_size = 100_000
        ours, base = [], []
        # The baseline inserts the same stored columns, row-oriented, as clickhouse-connect takes them.
        sample = conv.convert(RowBatch(L4_COLUMNS, rows[:1000]))
        names = sample.column_names
        batches = [rows[i:i + batch_size] for i in range(0, len(rows), batch_size)]
        convert_rates, e2e = [], []
        for run in range(args.runs):
            client.command("TRUNCATE TABLE flow_log.l4_flow_log")
            t0 = time.perf_counter()
            tables = [conv.convert(RowBatch(L4_COLUMNS, b)) for b in batches]
            t1 = time.perf_counter()
            for t in tables:
                client.insert_arrow("flow_log.l4_flow_log", t)
            t2 = time.perf_counter()
            convert_rates.append(len(rows) / (t1 - t0))
            ours.append(len(rows) / (t2 - t1))
            e2e.append(len(rows) / (t2 - t0))
            client.command("TRUNCATE TABLE flow_log.l4_flow_log")
            n_base = min(len(rows), 100_000)
            py_rows = python_rows(conv.convert(RowBatch(L4_COLUMNS, rows[:n_base])).select(names), cols)
            t0 = time.perf_counter()
            for i in range(0, n_base, 50_000):
                client.insert("flow_log.l4_flow_log", py_rows[i:i + 50_000], column_names=names)
            dt_b = time.perf_counter() - t0
            base.append(n_base / dt_b)
            print(f"run {run + 1}: Arrow insert {ours[-1]:,.0f} rows/s | tuples→Arrow conversion "
                  f"{convert_rates[-1]:,.0f} rows/s | both {e2e[-1]:,.0f} rows/s | row-oriented insert "
                  f"{base[-1]:,.0f} rows/s")
        client.command("TRUNCATE TABLE flow_log.l4_flow_log")
        for i in range(0, len(rows), batch_size):
            client.insert_arrow("flow_log.l4_flow_log", conv.convert(RowBatch(L4_COLUMNS, rows[i:i + batch_size])))
        client.command("OPTIMIZE TABLE flow_log.l4_flow_log FINAL")
        n_stored, disk, data = client.query(
            "SELECT sum(rows), sum(bytes_on_disk), sum(data_compressed_bytes) FROM system.parts "
            "WHERE database = 'flow_log' AND table = 'l4_flow_log' AND active").result_rows[0]
        print(f"on disk: {disk / n_stored:.1f} B/row ({data / n_stored:.1f} B/row compressed column data), "
              f"{n_stored:,} rows, {len(names)} of {len(cols)} columns sent (the rest are defaults)")
        f, b = median(ours), median(base)
        print(f"median: Arrow insert {f:,.0f} rows/s, with conversion {median(e2e):,.0f} rows/s, "
              f"row-oriented {b:,.0f} rows/s")
        result("insert_l4", f, "rows/s", "clickhouse-connect row-oriented insert", b,
               f"{len(rows)} l4_flow_log rows into chDB", bytes_per_row=round(disk / n_stored, 1),
               deepflow_bytes_per_row=150, with_conversion=round(median(e2e)),
               conversion_only=round(median(convert_rates)))
    finally:
        client.close()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
