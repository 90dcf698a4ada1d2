"""The tracer's bulk ring-buffer reader, on a file laid out like the kernel's BPF ring buffer (no
root, no bcc): records come out as ``Event`` tuples in order; a discarded record is skipped; a
record still being written (busy) stops the read and comes out once committed; a record that
wraps past the end is read whole (the kernel maps the data pages twice); the consumer position is
written back for the kernel. Records the ring refused come through the spill (perf) buffer and
must still come out in their thread's order.
"""

from __future__ import annotations

import mmap
import os
import struct
import time
from collections import Counter

import pytest

from collector.ebpf.tracer import EGRESS, FLAG_TLS, HEADER, INGRESS, Event, RingReader, Tracer

PG = mmap.PAGESIZE
SIZE = 4 * PG                # the ring's data size (a power of two)
BUSY, DISCARD = 1 << 31, 1 << 30


class FakeRing:
    """A memfd with the kernel's layout: consumer page, producer page, data (twice: the kernel
    maps the same pages again right after, so the second copy is kept equal by hand)."""

    def __init__(self) -> None:
        self.fd = os.memfd_create("fake-ringbuf")
        os.ftruncate(self.fd, 2 * PG + 2 * SIZE)
        self.prod = 0

    def put(self, event: bytes, flags: int = 0) -> int:
        """Write one record at the producer position; returns where it starts."""
        at = self.prod
        rec = struct.pack("<II", len(event) | flags, 0) + event
        rec += bytes(-len(rec) % 8)
        for copy in (0, SIZE):           # both mappings of the data pages
            off = at % SIZE + copy
            first = rec[:2 * SIZE - off]
            os.pwrite(self.fd, first, 2 * PG + off)
        if at % SIZE + len(rec) > SIZE:  # the wrapped tail also lands at the start of the first copy
            os.pwrite(self.fd, rec[SIZE - at % SIZE:], 2 * PG)
        self.prod += len(rec)
        os.pwrite(self.fd, struct.pack("<Q", self.prod), PG)
        return at

    def set_flags(self, at: int, length: int, flags: int) -> None:
        for copy in (0, SIZE):
            os.pwrite(self.fd, struct.pack("<I", length | flags), 2 * PG + at % SIZE + copy)

    def consumer(self) -> int:
        return struct.unpack("<Q", os.pread(self.fd, 8, 0))[0]


def _event(ts: int, fd: int, d: int, data: bytes, flags: int = 0) -> bytes:
    return HEADER.pack(ts, 77, 78, fd, d, flags, len(data) + 100, len(data), b"curl\0\0junk") + data


@pytest.fixture
def ring():
    r = FakeRing()
    yield r
    os.close(r.fd)


def test_records_in_order_as_event_tuples(ring: FakeRing) -> None:
    ring.put(_event(1, 5, EGRESS, b"GET / HTTP/1.1\r\n"))
    ring.put(_event(2, 5, INGRESS, b"HTTP/1.1 200 OK\r\n", FLAG_TLS))
    reader = RingReader(ring.fd, SIZE)
    out: list[Event] = []
    used = reader.read(out)
    assert used == ring.prod == ring.consumer()
    assert [(e.ts, e.tgid, e.tid, e.fd, e.dir, e.tls, e.len, e.data) for e in out] == [
        (1, 77, 78, 5, EGRESS, 0, 116, b"GET / HTTP/1.1\r\n"),
        (2, 77, 78, 5, INGRESS, FLAG_TLS, 117, b"HTTP/1.1 200 OK\r\n")]
    assert out[0].comm == "curl" and isinstance(out[0], Event)
    assert reader.read(out) == 0 and len(out) == 2
    reader.close()


def test_discarded_skipped_busy_waits_for_commit(ring: FakeRing) -> None:
    ring.put(_event(1, 5, EGRESS, b"a" * 10), DISCARD)
    ev = _event(2, 5, EGRESS, b"b" * 20)
    busy_at = ring.put(ev, BUSY)
    ring.put(_event(3, 5, EGRESS, b"c" * 30))
    reader = RingReader(ring.fd, SIZE)
    out: list[Event] = []
    reader.read(out)
    assert out == [] and ring.consumer() == busy_at      # the discarded one is consumed, no further
    ring.set_flags(busy_at, len(ev), 0)                  # committed
    reader.read(out)
    assert [e.ts for e in out] == [2, 3] and ring.consumer() == ring.prod
    reader.close()


def test_a_record_wrapping_past_the_end_is_read_whole(ring: FakeRing) -> None:
    reader = RingReader(ring.fd, SIZE)
    out: list[Event] = []
    payload = bytes(range(256)) * 2
    n = 0
    while ring.prod % SIZE + 8 + HEADER.size + len(payload) <= SIZE:   # fill up to just before the end
        ring.put(_event(n, 5, EGRESS, payload))
        n += 1
        reader.read(out)
    out.clear()
    ring.put(_event(n, 5, EGRESS, payload))                # this one wraps
    reader.read(out)
    assert [(e.ts, e.data) for e in out] == [(n, payload)]
    assert ring.consumer() == ring.prod > SIZE
    reader.close()


class SpillingTracer:
    """A ``Tracer`` on a fake ring (no bcc): ``spill`` events come out of the spill buffer at the
    next consume, and ``during_consume`` runs inside it (a producer committing meanwhile)."""

    def __init__(self, ring: FakeRing) -> None:
        self.tracer = t = Tracer.__new__(Tracer)
        t.ring, t.bpf, t.stats = RingReader(ring.fd, SIZE), self, Counter()
        t._batch, t._held, t._cut, t._ring_busy = [], [], None, SIZE
        self.got: list[int] = []
        t.callback = lambda e: self.got.append(e.ts)
        self.spill: list[Event] = []
        self.during_consume = lambda: None

    def perf_buffer_consume(self) -> None:
        self.during_consume()
        self.tracer._batch += self.spill
        self.spill = []


def _spilled(ts: int) -> Event:
    raw = _event(ts, 5, INGRESS, b"x")
    return Event(*HEADER.unpack_from(raw), raw[HEADER.size:])


def test_a_spilled_record_takes_its_place_among_the_ring_records(ring: FakeRing) -> None:
    st = SpillingTracer(ring)
    ring.put(_event(1, 5, EGRESS, b"a"))
    ring.put(_event(3, 5, EGRESS, b"c"))
    st.spill = [_spilled(2)]
    # the spilling thread's next record reaches the ring while the spill buffer is read
    st.during_consume = lambda: ring.put(_event(4, 5, EGRESS, b"d"))
    st.tracer.poll(0)
    assert st.got == [1, 2, 3, 4]
    assert st.tracer.stats["events spilled (ring refused)"] == 1 and st.tracer.stats["events"] == 4


def test_a_spilled_record_waits_for_the_records_reserved_before_it(ring: FakeRing) -> None:
    """A record reserved before the spilled one but not committed yet (another CPU still writing
    it) stops the ring read: the spilled record and everything after it wait for the next poll."""
    st = SpillingTracer(ring)
    ring.put(_event(1, 5, EGRESS, b"a"))
    ev = _event(3, 5, EGRESS, b"b")
    busy_at = ring.put(ev, BUSY)
    ring.put(_event(4, 5, EGRESS, b"c"))
    st.spill = [_spilled(5)]
    st.tracer.poll(0)
    assert st.got == [1]
    ring.set_flags(busy_at, len(ev), 0)             # committed
    ring.put(_event(6, 5, EGRESS, b"d"))
    st.tracer.poll(0)
    assert st.got == [1, 3, 4, 5, 6] and st.tracer._held == []


def test_drain_hands_over_what_was_kept_back(ring: FakeRing) -> None:
    st = SpillingTracer(ring)
    ring.put(_event(1, 5, EGRESS, b"a"), BUSY)      # never committed
    st.spill = [_spilled(2)]
    st.tracer.drain()
    assert st.got == [2]


def test_an_event_that_raises_costs_only_itself(ring: FakeRing) -> None:
    st = SpillingTracer(ring)
    for ts in (1, 2, 3):
        ring.put(_event(ts, 5, EGRESS, b"a"))

    def handle(e: Event) -> None:
        if e.ts == 2:
            raise ValueError("a parser bug")
        st.got.append(e.ts)

    st.tracer.callback = handle
    st.tracer.poll(0)
    assert st.got == [1, 3] and st.tracer.stats["event errors"] == 1


class PerfTracer:
    """A ``Tracer`` on per-CPU perf buffers (no ring, no bcc): ``arrive`` lands at the next read."""

    def __init__(self) -> None:
        self.tracer = t = Tracer.__new__(Tracer)
        t.ring, t.bpf, t.stats = None, self, Counter()
        t._batch, t._held, t._cut = [], [], None
        self.got: list[int] = []
        t.callback = lambda e: self.got.append(e.ts)
        self.arrive: list[Event] = []

    def perf_buffer_consume(self) -> None:
        self.tracer._batch += self.arrive
        self.arrive = []


def test_per_cpu_buffers_hold_young_records_for_their_predecessors() -> None:
    """A thread's record on one CPU can land after the buffers were read while its next one, on
    another CPU, was read already: records younger than the hold wait, and come out in order."""
    pt = PerfTracer()
    now = time.monotonic_ns()
    old = now - 10 * pt.tracer.PERF_HOLD_NS
    pt.arrive = [_spilled(old + 2), _spilled(old + 1), _spilled(now - 2_000)]
    pt.tracer.poll(0)
    assert pt.got == [old + 1, old + 2]                  # old enough: out at once, sorted
    pt.arrive = [_spilled(now - 3_000)]                  # the young one's predecessor, read a poll later
    pt.tracer.poll(0)
    assert pt.got == [old + 1, old + 2]
    pt.tracer.drain()
    assert pt.got == [old + 1, old + 2, now - 3_000, now - 2_000]
