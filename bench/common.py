"""Shared by the benchmarks: the replayed fixture pcap, medians, and the one JSON result line."""

from __future__ import annotations

import json
import statistics
import struct
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "tests" / "data"
OUT = ROOT / "bench" / "out"


def median(xs: list[float]) -> float:
    return statistics.median(xs)


def result(bench: str, figure: float, unit: str, baseline: str, baseline_figure: float, input_: str,
           **extra) -> None:
    """Print the one JSON line every bench ends with (design/STYLE.md)."""
    line = {"bench": bench, "figure": round(figure, 2), "unit": unit, "baseline": baseline,
            "baseline_figure": round(baseline_figure, 2),
            "ratio": round(figure / baseline_figure, 2) if baseline_figure else None, "input": input_}
    line.update(extra)
    print(json.dumps(line))


def replayed_pcap(min_packets: int = 300_000) -> tuple[Path, int]:
    """tests/data/*.pcap replayed back to back with shifted client ports until ``min_packets``.

    Each copy moves every packet's time forward by the span of the fixtures (+1 s) and shifts
    the innermost ephemeral port (found with flowscope's own decoder), so copies are new flows.
    Cached under bench/out/ (not committed)."""
    from collector.decode.packet import DPORT, L4_OFF, PROTO, SPORT, Decoder

    OUT.mkdir(parents=True, exist_ok=True)
    path = OUT / f"replay-{min_packets}.pcap"
    if path.exists():
        with path.open("rb") as f:
            f.seek(0, 2)
        return path, _count(path)
    import dpkt

    packets = []
    for p in sorted(DATA.glob("*.pcap")):
        with p.open("rb") as f:
            packets.extend((int(ts * 1_000_000), bytes(buf)) for ts, buf in dpkt.pcap.Reader(f))
    packets.sort(key=lambda x: x[0])
    t0, t1 = packets[0][0], packets[-1][0]
    span = t1 - t0 + 1_000_000
    dec = Decoder()
    n = 0
    with path.open("wb") as out:
        out.write(struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 262144, 1))
        k = 0
        while n < min_packets:
            for ts, buf in packets:
                frame = bytearray(buf)
                p = dec.decode(buf, 1)
                if p is not None and p[PROTO] in (6, 17) and k:
                    off = p[L4_OFF]
                    sport, dport = p[SPORT], p[DPORT]
                    if sport >= 1024 and sport > dport:
                        struct.pack_into("!H", frame, off, 1024 + (sport + 7 * k) % 64000)
                    elif dport >= 1024:
                        struct.pack_into("!H", frame, off + 2, 1024 + (dport + 7 * k) % 64000)
                t = ts + k * span
                out.write(struct.pack("<IIII", t // 1_000_000, t % 1_000_000, len(frame), len(frame)))
                out.write(frame)
                n += 1
            k += 1
    return path, n


def _count(path: Path) -> int:
    n = 0
    with path.open("rb") as f:
        f.seek(24)
        while hdr := f.read(16):
            if len(hdr) < 16:
                break
            caplen = struct.unpack("<IIII", hdr)[2]
            f.seek(caplen, 1)
            n += 1
    return n


def copy_rows(client, table: str, columns: list[str], replace: dict[str, str], copies: int, batch_rows: int,
              settings: dict, progress: bool = True) -> None:
    """Replace ``table``'s rows by ``copies`` copies of them, made inside ClickHouse by INSERT …
    SELECT: in copy ``n.number`` of seed row ``s`` the columns of ``replace`` get those expressions,
    the others the seed's values. The seed waits in a Memory table; about ``batch_rows`` rows go in
    per INSERT."""
    select = ", ".join(f"{replace[c]} AS `{c}`" if c in replace else f"s.`{c}`" for c in columns)
    names = ", ".join(f"`{c}`" for c in columns)
    seed_n = client.command(f"SELECT count() FROM {table}")
    client.command("DROP TABLE IF EXISTS default.seed")
    client.command(f"CREATE TABLE default.seed ENGINE = Memory AS SELECT * FROM {table}")
    client.command(f"TRUNCATE TABLE {table}")
    step = max(1, batch_rows // seed_n)
    for first in range(0, copies, step):
        last = min(copies, first + step)
        client.command(f"INSERT INTO {table} ({names}) SELECT {select} FROM default.seed AS s "
                       f"CROSS JOIN (SELECT number FROM numbers({first}, {last - first})) AS n", settings=settings)
        if progress:
            print(f"    {table}: {last * seed_n:,} / {copies * seed_n:,}", flush=True)
    client.command("DROP TABLE default.seed")
