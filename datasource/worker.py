"""Blocking work of the HTTP handlers (ClickHouse queries, translation, JSON encoding) off the event
loop, on a few threads waiting on one queue.

``asyncio.to_thread`` goes through the default ThreadPoolExecutor (a work item, its locks and idle
semaphore, a concurrent future chained to an asyncio one): on this 2-core VM a request pays ~0.45 ms
of hand-offs, a twentieth of a small dashboard query. A ``SimpleQueue`` on the way in and one
``call_soon_threadsafe`` on the way out cost ~0.2 ms, most of it the two wake-ups no design avoids.
"""

from __future__ import annotations

import asyncio
import contextlib
import queue
import threading
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")
THREADS = 6     # as many as asyncio's default executor has on 2 cores: queries serialize on the engine
                # lock, the rest (OTLP decoding, trace assembly) may run beside them
MAX_PENDING = 256   # jobs queued or running; each holds at most one request body (≤ ~200 KB)


class WorkersBusy(RuntimeError):
    """More jobs are waiting than the pool accepts: the request is refused (HTTP 503), not queued."""


class Workers:
    """``await workers.run(fn, *args, **kwargs)`` runs ``fn`` on one of ``threads`` daemon threads
    (started on first use) and returns its result or raises its exception in the awaiting task.
    At most ``max_pending`` jobs wait or run at once (bounded memory under a flood of requests):
    past that, ``run`` raises WorkersBusy at once. A job whose task was cancelled (the client hung
    up) still counts until its thread is done with it."""

    def __init__(self, threads: int = THREADS, name: str = "flowscope-worker", max_pending: int = MAX_PENDING) -> None:
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._threads = threads
        self._name = name
        self._started = False
        self._lock = threading.Lock()
        self.max_pending = max_pending
        self.pending = 0                    # under _lock: loops on several threads may share a pool

    async def run(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> T:
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        if not self._started:
            self._start()
        with self._lock:
            if self.pending >= self.max_pending:
                raise WorkersBusy(f"too many requests in progress ({self.pending}, the limit); retry shortly")
            self.pending += 1
        self._queue.put((loop, future, fn, args, kwargs))
        return await future

    def _start(self) -> None:
        with self._lock:
            if self._started:
                return
            for i in range(self._threads):
                threading.Thread(target=self._serve, name=f"{self._name}-{i}", daemon=True).start()
            self._started = True

    def _serve(self) -> None:
        while True:
            loop, future, fn, args, kwargs = self._queue.get()
            try:
                outcome = (fn(*args, **kwargs), None)
            except BaseException as e:      # handed to the awaiting task, which decides
                outcome = (None, e)
            with self._lock:
                self.pending -= 1
            with contextlib.suppress(RuntimeError):     # a closed loop: nobody waits for this any more
                loop.call_soon_threadsafe(_settle, future, *outcome)
            del loop, future, fn, args, kwargs, outcome


def _settle(future: asyncio.Future, result: Any, error: BaseException | None) -> None:
    if future.done():           # the awaiting task was cancelled (client gone)
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result)


WORKERS = Workers()
