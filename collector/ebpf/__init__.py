"""eBPF socket tracing beside (or instead of) packet capture: ``EbpfCollector`` runs the tracer
on its own thread and writes its ``l7_flow_log`` rows through the collector's writer.

Degrade, don't die: when bcc, root or the kernel say no, ``start`` logs one line, counts it in
``stats`` and returns False; packet capture is not affected.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from collections import Counter

import pyarrow as pa

log = logging.getLogger("flowscope.ebpf")

L7_TABLE = "flow_log.l7_flow_log"


class EbpfCollector:
    def __init__(self, writer, *, pids: list[int] | None = None, comm: str | None = None, agent_id: int = 0,
                 tagger=None, detector=None, flush_interval_s: float = 5.0, metrics: bool = True,
                 settings=None) -> None:
        from flowscope.config import EbpfSettings

        self.writer = writer
        self.settings = settings or EbpfSettings()     # CPU and memory caps, payload size, TLS
        self.metrics = metrics          # application / application_map (1s, 1m) from the rows
        self.pids, self.comm = pids, comm
        self.agent_id, self.tagger, self.detector = agent_id, tagger, detector
        self.flush_interval_s = flush_interval_s
        self.stats: Counter[str] = Counter()
        self.tracer = self.sessions = self.app_metrics = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.cpu_s = 0.0                # the tracer thread's CPU time (read, parse, flush), kept current
        self.error = ""

    def start(self) -> bool:
        """Load and attach; False (logged, counted) when eBPF is unavailable."""
        from collector.ebpf.sessions import EbpfSessions
        from collector.ebpf.tracer import EbpfUnavailable, Tracer
        from collector.writer import RowBatch  # noqa: F401 - imported now, not in the first flush: the
        # ring is not drained while the tracer thread imports (~0.3 s here)

        try:
            cfg = self.settings
            self.tracer = Tracer(None, pids=self.pids, comm=self.comm,      # callback: the sessions', below
                                 payload=cfg.payload_bytes, pages=cfg.perf_pages,
                                 tls_libs=cfg.tls_libraries if cfg.tls else [])
        except EbpfUnavailable as e:
            self.error = str(e)
            self.stats["ebpf unavailable"] += 1
            log.warning("eBPF tracing disabled: %s (packet capture continues)", e)
            return False
        except Exception as e:  # anything else from bcc: same degradation
            self.error = f"{type(e).__name__}: {e}"
            self.stats["ebpf unavailable"] += 1
            log.warning("eBPF tracing disabled: %s (packet capture continues)", self.error)
            return False
        sessions = self.sessions = EbpfSessions(self.tracer.classify, detector=self.detector,
                                                agent_id=self.agent_id, tagger=self.tagger, metrics=self.metrics,
                                                max_events_per_s=cfg.max_events_per_s, max_sockets=cfg.max_sockets,
                                                max_pending=cfg.max_pending)
        self.tracer.callback = sessions.handle          # bound directly: no extra frame per event
        if self.metrics:
            from collector.metrics import MetricsAggregator
            from collector.tagging import TagRegistry

            registry = self.tagger.registry if self.tagger is not None else TagRegistry()
            self.app_metrics = MetricsAggregator(registry, agent_id=self.agent_id, family="application")
        self._thread = threading.Thread(target=self._run, name="flowscope-ebpf", daemon=True)
        self._thread.start()
        log.info("eBPF socket tracer attached%s", self._filter_text())
        return True

    def _filter_text(self) -> str:
        parts = ([f"pid {','.join(map(str, self.pids))}"] if self.pids else []) + (
            [f"comm {self.comm}"] if self.comm else [])
        return f" ({'; '.join(parts)})" if parts else " (all processes)"

    def _run(self) -> None:
        self._set_cpu_policy()
        last_flush = last_expire = time.monotonic()
        while not self._stop.is_set():
            try:
                self.tracer.poll(100)
            except Exception as e:  # a failed read of the buffers must not end tracing (events: see poll)
                self.stats["poll errors"] += 1
                log.debug("eBPF poll: %s", e, exc_info=True)
            now = time.monotonic()
            try:
                if now - last_expire >= 5:
                    last_expire = now
                    self.sessions.expire()
                if now - last_flush >= self.flush_interval_s:
                    last_flush = now
                    self.flush()
            except Exception as e:  # nor one bad batch of rows: the ring would fill up unread
                self.stats["flush errors"] += 1
                log.warning("eBPF rows not written: %s", e, exc_info=True)
            self.cpu_s = time.thread_time()
        # drain what the kernel queued, then every pending request
        self.tracer.drain()
        self.sessions.close_all()
        self.flush(final=True)
        self.cpu_s = time.thread_time()

    def _set_cpu_policy(self) -> None:
        """On the tracer thread: SCHED_IDLE when ``ebpf.cpu_policy`` is idle (see EbpfSettings)."""
        if self.settings.cpu_policy != "idle":
            return
        try:
            os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))     # 0: this thread
            self.stats["cpu policy idle"] = 1
        except (AttributeError, OSError) as e:     # not Linux, or refused: run at normal priority
            log.info("eBPF tracer thread stays at normal CPU priority: %s", e)

    def flush(self, final: bool = False) -> None:
        """Rows to l7_flow_log; their counts to application[_map] 1s, and 1m once a minute is
        over (``final``: every minute still open)."""
        from collector.ebpf.sessions import COLUMNS
        from collector.writer import RowBatch

        if self.sessions is None:
            return
        rows = self.sessions.take_rows()
        if rows:
            self.writer.put(L7_TABLE, RowBatch(COLUMNS, rows))
            self.stats["rows"] += len(rows)
        if self.app_metrics is not None:
            self.app_metrics.add_seconds(self.sessions.take_app_rows())
            for table, parts in self.app_metrics.flush(int(time.time()), final=final).items():
                parts = [t for t in parts if t.num_rows]
                if parts:
                    self.writer.put(table, parts[0] if len(parts) == 1 else pa.concat_tables(parts))

    def stop(self) -> None:
        """Detach after writing everything pending (the caller flushes/closes the writer)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10)
            self._thread = None
        if self.tracer is not None:
            self.tracer.close()
            self.tracer = None

    def snapshot(self) -> dict:
        out = dict(self.stats)
        out["tracer CPU ms"] = round(self.cpu_s * 1000)
        if self.sessions is not None:
            out.update(self.sessions.stats)
            out["sockets tracked"] = len(self.sessions.socks)
        if self.tracer is not None:
            out.update(self.tracer.stats)
            with contextlib.suppress(Exception):
                out.update(self.tracer.kernel_counters())
        if self.error:
            out["error"] = self.error
        return out
