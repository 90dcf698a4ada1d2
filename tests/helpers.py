"""Helpers shared by the tests (importable as tests.helpers)."""

from __future__ import annotations

import json
import os
from pathlib import Path

DATA = Path(__file__).parent / "data"


def is_root() -> bool:
    return os.geteuid() == 0


class MemoryWriter:
    """Stands in for collector.writer.Writer in flow tests: keeps what would be inserted."""

    def __init__(self) -> None:
        from collector.writer import WriterStats

        self.batches: dict[str, list] = {}
        self.stats = WriterStats()
        self.registry = None

    def put(self, table: str, batch) -> None:
        self.batches.setdefault(table, []).append(batch)

    def flush(self) -> None:
        pass

    def close(self) -> None:
        pass

    def l4_rows(self) -> list[dict]:
        """l4_flow_log rows as dicts, with the columns the writer derives (status, fin_count)."""
        from collector.flow.report import L4_COLUMNS
        from flowscope.enums import CLOSE_TYPE_STATUS

        rows = [dict(zip(L4_COLUMNS, r, strict=True)) for b in self.batches.get("flow_log.l4_flow_log", [])
                for r in b.rows]
        for r in rows:
            r["status"] = CLOSE_TYPE_STATUS[r["close_type"]][0]
            r["fin_count"] = r["~fin_tx"] + r["~fin_rx"]
        return rows

    def metrics(self, table: str):
        import pyarrow as pa

        parts = self.batches.get(table, [])
        return pa.concat_tables(parts, promote_options="default") if parts else None


def replay(*names: str, cfg=None, tagger=None):
    """Run the collector (no ClickHouse) over tests/data/<name>.pcap files (or <name> when it
    has an extension); returns the MemoryWriter with everything it produced, and the Collector."""
    from collector.capture.pcap import PcapSource
    from collector.pipeline import Collector
    from flowscope.config import Config

    writer = MemoryWriter()
    col = Collector(cfg or Config(), writer, tagger=tagger)
    writer.registry = col.tagger.registry
    src = PcapSource([str(DATA / (n if "." in n else f"{n}.pcap")) for n in names])
    col.run(src)
    src.close()
    return writer, col


def truth(name: str) -> dict:
    return json.loads((DATA / "truth" / f"{name}.json").read_text())
