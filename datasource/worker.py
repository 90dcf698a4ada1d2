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


class Workers:
    """``await workers.run(fn, *args, **kwargs)`` runs ``fn`` on one of ``threads`` daemon threads
    (started on first use) and returns its result or raises its exception in the awaiting task."""

    def __init__(self, threads: int = THREADS, name: str = "flowscope-worker") -> None:
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._threads = threads
        self._name = name
        self._started = False
        self._lock = threading.Lock()

    async def run(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> T:
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        if not self._started:
            self._start()
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
