"""datasource.worker: the HTTP handlers' blocking work runs on its threads and comes back to the
awaiting task — results, exceptions, many at once, and a task cancelled while its work runs."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from datasource.worker import Workers, WorkersBusy


def test_results_and_exceptions_come_back_to_the_task():
    workers = Workers(threads=2)

    def fails():
        raise KeyError("no such column")

    async def main():
        here = threading.get_ident()
        ran_on = await workers.run(threading.get_ident)
        total = await workers.run(sum, [1, 2, 3], start=10)
        with pytest.raises(KeyError, match="no such column"):
            await workers.run(fails)
        return here, ran_on, total

    here, ran_on, total = asyncio.run(main())
    assert ran_on != here and total == 16


def test_many_concurrent_calls_each_get_their_own_answer():
    workers = Workers(threads=3)

    def square(x: int) -> int:
        time.sleep(0.001)
        return x * x

    async def main():
        return await asyncio.gather(*(workers.run(square, i) for i in range(200)))

    assert asyncio.run(main()) == [i * i for i in range(200)]


def test_a_cancelled_task_leaves_the_workers_serving():
    """A client that hangs up cancels its handler; the work still finishes on its thread, its answer
    is dropped, and the next request is served."""
    workers = Workers(threads=1)
    release = threading.Event()

    async def main():
        slow = asyncio.ensure_future(workers.run(release.wait, 5))
        await asyncio.sleep(0.05)
        slow.cancel()
        release.set()
        with pytest.raises(asyncio.CancelledError):
            await slow
        return await workers.run(str.upper, "next")

    assert asyncio.run(main()) == "NEXT"


def test_past_max_pending_run_refuses_at_once_and_recovers():
    """A flood of requests is refused (WorkersBusy, HTTP 503 in the API) instead of queued without
    bound; a cancelled request keeps its place until its thread is done with it."""
    workers = Workers(threads=1, max_pending=2)
    release = threading.Event()

    async def main():
        first = asyncio.ensure_future(workers.run(release.wait, 5))
        second = asyncio.ensure_future(workers.run(str.upper, "queued"))
        await asyncio.sleep(0.05)
        with pytest.raises(WorkersBusy, match=r"too many requests in progress \(2, the limit\)"):
            await workers.run(str.upper, "refused")
        first.cancel()
        with pytest.raises(WorkersBusy):                 # the cancelled job still holds its thread
            await workers.run(str.upper, "still refused")
        release.set()
        assert await second == "QUEUED"
        return await workers.run(str.upper, "served"), workers.pending

    assert asyncio.run(main()) == ("SERVED", 0)


def test_back_to_back_jobs_run_on_the_thread_that_finished_last():
    """Sequential requests (a dashboard refreshing panel after panel) keep one warm thread: the pool
    starts no second thread while one is idle, and the last idle thread takes the next job."""
    workers = Workers(threads=4)

    async def main():
        return [await workers.run(threading.get_ident) for _ in range(20)]

    assert len(set(asyncio.run(main()))) == 1


def test_concurrent_jobs_get_their_own_threads_up_to_the_limit_then_wait_in_order():
    workers = Workers(threads=3)
    barrier = threading.Barrier(3, timeout=5)     # only passes if three jobs run at the same time
    done: list[int] = []

    def meet(i: int) -> int:
        barrier.wait()
        return threading.get_ident()

    def record(i: int) -> int:
        done.append(i)
        return i

    async def main():
        idents = await asyncio.gather(*(workers.run(meet, i) for i in range(3)))
        gate = threading.Event()
        blockers = [asyncio.ensure_future(workers.run(gate.wait, 5)) for _ in range(3)]
        await asyncio.sleep(0.05)
        queued = [asyncio.ensure_future(workers.run(record, i)) for i in range(10)]
        await asyncio.sleep(0.05)
        assert done == []                        # every thread is busy: the jobs wait
        gate.set()
        await asyncio.gather(*blockers)
        return idents, await asyncio.gather(*queued)

    idents, results = asyncio.run(main())
    assert len(set(idents)) == 3 and results == list(range(10))
    assert sorted(done) == list(range(10)) and workers.pending == 0
