"""Live capture spread over several processes with PACKET_FANOUT (``collect --iface … --workers N``).

Each worker opens the same interfaces in one fanout group (the kernel's symmetric flow hash sends
both directions of a flow to the same worker), runs its own flow table and metrics, converts its
rows to Arrow with the parent's view of the schema and sends them over a queue; the parent owns the
only ClickHouse client (an embedded chDB store belongs to one process) and writes everything.
Metric rows of different workers with the same key are separate rows; queries sum them.
"""

from __future__ import annotations

import logging
import multiprocessing as mp
import os
import queue
import random
import signal
import threading

import pyarrow as pa
import pyarrow.ipc as ipc

from collector.writer import Column, Converter, RowBatch, WriterStats
from flowscope.config import Config

log = logging.getLogger("flowscope.workers")


class QueueWriter:
    """The Writer interface inside a worker: convert here, ship Arrow IPC bytes to the parent."""

    def __init__(self, q, columns: dict[str, dict[str, Column]]) -> None:
        self.q = q
        self.columns = columns
        self.registry = None
        self.stats = WriterStats()
        self._conv: dict[str, Converter] = {}

    def put(self, table: str, batch: RowBatch | pa.Table) -> None:
        conv = self._conv.get(table)
        if conv is None:
            conv = self._conv[table] = Converter(self.columns[table], self.registry)
        t = conv.convert(batch) if isinstance(batch, RowBatch) else conv.table(batch)
        if not t.num_rows:
            return
        sink = pa.BufferOutputStream()
        with ipc.new_stream(sink, t.schema) as w:
            w.write_table(t)
        self.q.put(("rows", table, sink.getvalue().to_pybytes()))

    def flush(self) -> None:
        pass

    def close(self) -> None:
        pass


def _worker(index: int, cfg: Config, patterns: list[str], group: int, q, stop, columns) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)      # the parent decides when to stop
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    from collector.capture.afpacket import PACKET_FANOUT_HASH, AfPacketSource
    from collector.pipeline import Collector, tune_gc

    c = cfg.capture
    try:
        src = AfPacketSource(patterns, snaplen=c.snaplen, block_size=c.ring_block_kb << 10,
                             block_count=c.ring_blocks, rescan_s=c.rescan_s, fanout=(group, PACKET_FANOUT_HASH))
    except Exception as e:
        q.put(("error", index, str(e)))
        return
    writer = QueueWriter(q, columns)
    md = None
    tagger = None
    if cfg.metadata.active:             # the parent runs the sources; a worker reads the store
        from collector.tagging import InventoryTagger
        from flowscope.metadata.runtime import Metadata

        tagger = InventoryTagger(own_cluster=cfg.metadata.cluster)
        md = Metadata(cfg.metadata, tagger)
        md.open(sources=False)
        md.start()
    col = Collector(cfg, writer, live=True, worker=index, tagger=tagger)
    writer.registry = col.tagger.registry
    tune_gc()
    q.put(("ready", index, None))
    try:
        col.run(src, stop, now_us=src.now_us)
    except Exception as e:       # reported by the parent (exit 1), not a silent empty capture
        log.exception("worker %d failed", index)
        q.put(("error", index, f"worker {index}: {type(e).__name__}: {e}"))
    finally:
        src.close()
        if md is not None:
            md.close()
    q.put(("done", index, col.snapshot()))


def run(cfg: Config, patterns: list[str], workers: int, writer, stop: threading.Event,
        on_ready=None) -> list[dict]:
    """Start ``workers`` capture processes, write what they send until ``stop``; their final
    snapshots (for the summary) are returned."""
    from collector.pipeline import WRITTEN_TABLES

    columns = {t: writer.columns(t) for t in WRITTEN_TABLES}
    ctx = mp.get_context("spawn")     # fresh interpreters: no threads or chDB state inherited
    q = ctx.Queue(maxsize=1024)
    mstop = ctx.Event()
    group = random.randrange(1, 0xFFFF) ^ (os.getpid() & 0xFFFF)
    procs = [ctx.Process(target=_worker, args=(i, cfg, patterns, group, q, mstop, columns), daemon=True,
                         name=f"flowscope-worker-{i}") for i in range(workers)]
    for p in procs:
        p.start()
    ready: set[int] = set()
    done: dict[int, dict] = {}
    errors: list[str] = []
    while len(done) < workers:
        if stop.is_set() and not mstop.is_set():
            mstop.set()
        try:
            kind, a, b = q.get(timeout=0.2)
        except queue.Empty:
            if not any(p.is_alive() for p in procs):
                break
            continue
        if kind == "rows":
            writer.put(a, ipc.open_stream(b).read_all())
        elif kind == "ready":
            ready.add(a)
            if len(ready) == workers and on_ready is not None:
                on_ready()
        elif kind == "done":
            done[a] = b
        elif kind == "error":
            errors.append(b)
            mstop.set()
        if len(done) == workers:
            break
    for p in procs:
        p.join(timeout=10)
    writer.flush()
    if errors:
        raise RuntimeError(errors[0])
    return [done[i] for i in sorted(done)]
