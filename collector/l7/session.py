"""Request ↔ response pairing for one flow (datamodel §5.7 "Pairing", "Merging", "Timeouts").

Protocols without a session id pair strictly in order on the flow (HTTP/1, MySQL, Redis, TLS);
the others by id (HTTP/2 stream, DNS txid, Kafka correlation id, Dubbo request id, MQTT packet
id). A paired request and response make one SESSION record; a request nobody answered becomes a
REQUEST record with status TIMEOUT after the protocol's timeout (or UNKNOWN when the capture ends
first); an unmatched response is kept as an orphan RESPONSE. Pending requests are bounded.
"""

from __future__ import annotations

from collections import deque

from collector.l7.base import REQUEST, RESPONSE, SESSION, TIMEOUT, UNKNOWN, L7Message

MAX_PENDING = 1024          # per flow; beyond it the oldest request is reported as UNKNOWN

# A record: (type, request or None, response or None, status override or None)
Record = tuple[int, L7Message | None, L7Message | None, int | None]


class Sessions:
    """One flow's pending requests."""

    __slots__ = ("by_id", "fifo", "timeout_us")

    def __init__(self, timeout_s: float) -> None:
        self.fifo: deque[L7Message] = deque()
        self.by_id: dict = {}
        self.timeout_us = int(timeout_s * 1_000_000)

    def pending(self) -> int:
        return len(self.fifo) + len(self.by_id)

    def next_deadline(self) -> int | None:
        """µs at which the oldest pending request times out."""
        oldest = None
        if self.fifo:
            oldest = self.fifo[0].ts
        if self.by_id:
            t = min(m.ts for m in self.by_id.values())
            oldest = t if oldest is None else min(oldest, t)
        return None if oldest is None else oldest + self.timeout_us

    def add(self, m: L7Message, out: list[Record]) -> None:
        t = m.type
        if t == REQUEST:
            if m.session_id is None:
                self.fifo.append(m)
            else:
                old = self.by_id.pop(m.session_id, None)
                if old is not None:              # the id came back before an answer: the old one is lost
                    out.append((REQUEST, old, None, UNKNOWN))
                self.by_id[m.session_id] = m
            if len(self.fifo) + len(self.by_id) > MAX_PENDING:
                self._evict_oldest(out)
        elif t == RESPONSE:
            if m.session_id is None:
                req = self.fifo.popleft() if self.fifo else None
            else:
                req = self.by_id.pop(m.session_id, None)
            if req is None:
                out.append((RESPONSE, None, m, None))
            else:
                out.append((SESSION, req, m, None))
        elif t == SESSION:
            out.append((SESSION, m, m, None))

    def expire(self, now_us: int, out: list[Record]) -> None:
        """Requests older than the timeout: reported as TIMEOUT."""
        limit = now_us - self.timeout_us
        fifo = self.fifo
        while fifo and fifo[0].ts <= limit:
            out.append((REQUEST, fifo.popleft(), None, TIMEOUT))
        if self.by_id:
            for sid in [k for k, m in self.by_id.items() if m.ts <= limit]:
                out.append((REQUEST, self.by_id.pop(sid), None, TIMEOUT))

    def close(self, now_us: int, out: list[Record], timed_out: bool) -> None:
        """The flow ended: what is still pending times out, or is UNKNOWN if the capture ended
        before its timeout could pass."""
        for m in list(self.fifo) + list(self.by_id.values()):
            late = timed_out or now_us - m.ts >= self.timeout_us
            out.append((REQUEST, m, None, TIMEOUT if late else UNKNOWN))
        self.fifo.clear()
        self.by_id.clear()

    def _evict_oldest(self, out: list[Record]) -> None:
        candidates = []
        if self.fifo:
            candidates.append((self.fifo[0].ts, None))
        if self.by_id:
            sid, m = min(self.by_id.items(), key=lambda kv: kv[1].ts)
            candidates.append((m.ts, sid))
        _, sid = min(candidates, key=lambda c: c[0])
        m = self.fifo.popleft() if sid is None else self.by_id.pop(sid)
        out.append((REQUEST, m, None, UNKNOWN))
