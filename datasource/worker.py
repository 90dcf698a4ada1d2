"""Blocking work of the HTTP handlers (ClickHouse queries, translation, JSON encoding) off the event
loop, on a few threads.

``asyncio.to_thread`` goes through the default ThreadPoolExecutor (a work item, its locks and idle
semaphore, a concurrent future chained to an asyncio one): on this 2-core VM a request pays ~0.45 ms
of hand-offs, a twentieth of a small dashboard query. Here a job goes straight to one idle thread's
own queue and comes back with one ``call_soon_threadsafe``.

The idle threads form a stack: the thread that finished last takes the next job. One shared queue
woke its waiters in turn, so back-to-back dashboard queries each ran on a thread that had slept
through the last five (cold caches, chDB's per-thread state rebuilt). With the stack, the
datasource's overhead over the bare query went from 6.3 % to 5.4 % (5.7 % to 2.6 % for a repeated
statement; bench/datasource.py, medians of five interleaved runs each). Threads start when a job
finds none idle, up to ``threads``.
"""

from __future__ import annotations

import asyncio
import contextlib
import queue
import threading
from collections import deque
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")
THREADS = 6     # as many as asyncio's default executor has on 2 cores: queries serialize on the engine
                # lock, the rest (OTLP decoding, trace assembly) may run beside them
MAX_PENDING = 256   # jobs queued or running; each holds at most one request body (≤ ~200 KB)

_Job = tuple[asyncio.AbstractEventLoop, asyncio.Future, Callable[..., Any], tuple, dict]


class WorkersBusy(RuntimeError):
    """More jobs are waiting than the pool accepts: the request is refused (HTTP 503), not queued."""


class Workers:
    """``await workers.run(fn, *args, **kwargs)`` runs ``fn`` on one of at most ``threads`` daemon
    threads and returns its result or raises its exception in the awaiting task. At most
    ``max_pending`` jobs wait or run at once (bounded memory under a flood of requests): past that,
    ``run`` raises WorkersBusy at once. A job whose task was cancelled (the client hung up) still
    counts until its thread is done with it. Jobs that find every thread busy wait in order."""

    def __init__(self, threads: int = THREADS, name: str = "flowscope-worker", max_pending: int = MAX_PENDING) -> None:
        self._threads = threads
        self._name = name
        self._lock = threading.Lock()
        self._idle: list[queue.SimpleQueue] = []    # under _lock: idle threads' inboxes, last idle on top
        self._backlog: deque[_Job] = deque()        # under _lock: jobs waiting for a thread
        self._started = 0                           # under _lock
        self.max_pending = max_pending
        self.pending = 0                    # under _lock: loops on several threads may share a pool

    async def run(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> T:
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        job = (loop, future, fn, args, kwargs)
        inbox = None
        with self._lock:
            if self.pending >= self.max_pending:
                raise WorkersBusy(f"too many requests in progress ({self.pending}, the limit); retry shortly")
            self.pending += 1
            if self._idle:
                inbox = self._idle.pop()
            elif self._started < self._threads:
                self._started += 1
                threading.Thread(target=self._serve, args=(job,), name=f"{self._name}-{self._started - 1}",
                                 daemon=True).start()
            else:
                self._backlog.append(job)
        if inbox is not None:
            inbox.put(job)
        return await future

    def _serve(self, job: _Job | None) -> None:
        inbox: queue.SimpleQueue = queue.SimpleQueue()
        while True:
            if job is None:
                job = inbox.get()
            loop, future, fn, args, kwargs = job
            try:
                outcome = (fn(*args, **kwargs), None)
            except BaseException as e:      # handed to the awaiting task, which decides
                outcome = (None, e)
            with self._lock:
                self.pending -= 1
                if self._backlog:
                    job = self._backlog.popleft()
                else:
                    job = None
                    self._idle.append(inbox)
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
