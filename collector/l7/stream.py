"""Cutting one direction of a TCP stream into messages, for the parsers of length-delimited
protocols, and the bounded reads over one message.

- ``Framer``: messages whose header (of any shape: ``frame_len``) gives their full length: DNS over
  TCP, TLS records and handshake messages, MQTT control packets. Follows TCP sequence numbers.
- ``HeadFramer``: messages that open with a fixed-size header ending in the body's length (a
  protocol's ``Framing``): Kafka (4-byte length prefix) and Dubbo (16-byte header).
- Both keep a bounded head of each message and skip what is beyond it, and what the capture did not
  keep, by length. Bytes the capture lost that hide where a message starts lose the framing;
  ``resync`` follows the stream again from a segment that starts a message.
- ``Reader``: big-endian reads bounded by a message's length (``Malformed``) and by what was
  captured of it (``Cut``).
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from typing import NamedTuple

from collector.l7.base import MASK32, GiveUp, L7Message


class Malformed(Exception):
    """Bytes that cannot be the protocol; the message is the GiveUp reason ("dns: …"; ``give_up``
    adds the protocol when it is missing)."""


class Cut(Exception):
    """A read ran into bytes the capture did not keep (snaplen): parse what came before."""


class Reader:
    """Bounds-checked big-endian reads over one message. Past ``limit`` (the protocol's own
    length) is malformed; past ``avail`` (what was captured) is a cut capture."""

    __slots__ = ("avail", "buf", "limit", "pos", "what")

    def __init__(self, buf: bytes, pos: int, limit: int, what: str) -> None:
        self.buf = buf
        self.pos = pos
        self.limit = limit
        self.avail = min(limit, len(buf))
        self.what = what

    def _need(self, n: int) -> int:
        p = self.pos
        q = p + n
        if q > self.avail:
            if q > self.limit:
                raise Malformed(f"{self.what} runs past its length")
            raise Cut
        self.pos = q
        return p

    def remaining(self) -> int:
        return self.limit - self.pos

    def u8(self) -> int:
        return self.buf[self._need(1)]

    def u16(self) -> int:
        p = self._need(2)
        return (self.buf[p] << 8) | self.buf[p + 1]

    def u24(self) -> int:
        p = self._need(3)
        return (self.buf[p] << 16) | (self.buf[p + 1] << 8) | self.buf[p + 2]

    def u32(self) -> int:
        p = self._need(4)
        return int.from_bytes(self.buf[p:p + 4], "big")

    def take(self, n: int) -> bytes:
        p = self._need(n)
        return self.buf[p:p + n]

    def skip(self, n: int) -> None:
        """Skip n bytes; uncaptured ones too, as long as they are inside the message."""
        q = self.pos + n
        if q > self.limit:
            raise Malformed(f"{self.what} runs past its length")
        self.pos = q

    def sub(self, n: int, what: str | None = None) -> Reader:
        """A reader over the next n bytes (a length-prefixed block); this one moves past them."""
        q = self.pos + n
        if q > self.limit:
            raise Malformed(f"{self.what} runs past its length")
        r = Reader(self.buf, self.pos, q, what or self.what)
        r.avail = min(q, self.avail)
        self.pos = q
        return r


Frame = tuple[bytes, int, int, int]      # (captured bytes, message length, ts of first byte, seq of first byte)


class Framer:
    """One direction of a TCP stream cut into length-delimited messages.

    ``frame_len(buf, off)`` reads a message header at ``off``: the message's full length, None if
    the header is not complete yet; it raises Malformed on garbage. At most ``keep`` bytes of a
    message are buffered or delivered: a longer one is delivered with its head only and the rest
    skipped by its length, as are bytes the capture did not keep: past ``len(data)`` up to
    ``length`` (snaplen), and before ``seq`` when it jumps past the expected one (a segment the
    capture missed; with ``track_seq``). A delivered message may thus be shorter than its length.
    When a message starts in bytes not seen, its header is lost with them: ``lost`` is set (the
    messages before the loss are still returned), later feeds return nothing until the parser,
    having found a segment that starts a message, calls ``reset``.
    """

    __slots__ = ("buf", "frame_len", "keep", "lost", "lost_segments", "next", "seq", "skip", "track_seq", "ts")

    def __init__(self, frame_len: Callable[[bytes | bytearray, int], int | None], keep: int,
                 track_seq: bool = True) -> None:
        self.frame_len = frame_len
        self.keep = max(keep, 64)
        self.track_seq = track_seq
        self.buf = bytearray()
        self.skip = 0                 # bytes of a message already delivered still to come
        self.lost = False
        self.lost_segments = 0        # segments skipped while lost (the parser's count)
        self.next: int | None = None  # seq expected next
        self.ts = 0                   # ts and seq of the first byte in buf
        self.seq = 0

    def reset(self) -> None:
        """Follow the stream again from the next feed, which starts a message."""
        self.buf.clear()
        self.skip = self.lost_segments = 0
        self.lost = False
        self.next = None

    def feed(self, data: bytes, length: int, ts: int, seq: int) -> list[Frame]:
        out: list[Frame] = []
        if self.lost:
            return out
        n = len(data)
        if length < n:
            length = n
        if self.track_seq:
            nxt = self.next
            if nxt is not None and seq != nxt:
                d = (seq - nxt) & MASK32
                if d < 0x80000000:                   # bytes the capture missed before this segment
                    self._gap(d, out)
                    if self.lost:
                        return out
                else:                                # overlaps what was seen: drop the old part
                    d = (nxt - seq) & MASK32
                    if d >= length:
                        return out
                    data = data[d:]
                    n = len(data)
                    length -= d
                    seq = nxt
            self.next = (seq + length) & MASK32
        pos = 0
        if self.skip:
            pos = min(self.skip, length)
            self.skip -= pos
            if pos == length:
                return out
        buf = self.buf
        if pos < n:
            if buf:
                buf += memoryview(data)[pos:n]
                src: bytes | bytearray = buf
                start = 0
            else:
                src = data
                start = pos
                self.ts, self.seq = ts, (seq + pos) & MASK32
            end = len(src)
            frame_len = self.frame_len
            while start < end:
                total = frame_len(src, start)
                if total is None:
                    if end - start > self.keep:
                        raise Malformed("message header longer than the buffer")
                    break
                avail = end - start
                if total <= avail:
                    out.append((bytes(src[start:start + min(total, self.keep)]), total, self.ts, self.seq))
                    start += total
                    self.ts, self.seq = ts, (self.seq + total) & MASK32
                    continue
                if avail >= self.keep:          # too long to buffer: its head, then skip the rest
                    out.append((bytes(src[start:start + self.keep]), total, self.ts, self.seq))
                    self.skip = total - avail
                    self.seq = (self.seq + total) & MASK32
                    start = end
                break
            if src is buf:
                del buf[:start]
            elif start < end:
                buf += memoryview(data)[start:end]
        gap = length - max(n, pos)
        if gap > 0:
            self._gap(gap, out)
        return out

    def _gap(self, gap: int, out: list[Frame]) -> None:
        """``gap`` bytes of the stream were not seen: skip them by the lengths known."""
        if self.skip:                            # inside a message being skipped
            k = min(self.skip, gap)
            self.skip -= k
            self.lost = k < gap
            return
        buf = self.buf
        total = self.frame_len(buf, 0) if buf else None
        if total is None:                        # the next message (or its header) is in the gap
            self.lost = True
            buf.clear()
            return
        out.append((bytes(buf[:self.keep]), total, self.ts, self.seq))
        need = total - len(buf)
        buf.clear()
        self.lost = gap > need
        self.skip = 0 if self.lost else need - gap


class Framing(NamedTuple):
    """How a protocol's messages open, for ``HeadFramer``: a ``head_len``-byte header that starts
    with ``magic`` (checked as its bytes come in) and ends in the body's length, a big-endian int32
    within [``low``, ``high``] (else the give-up "<proto>: implausible <length_name> <n>").
    ``judge(keep)``, when set, gives a verdict on a message still coming in once ``judge_at``
    bytes of its body are in (it may raise Malformed). ``proto`` prefixes the GiveUp reasons;
    ``lost_reason`` is the one given after ``LOST_SEGMENTS_MAX`` segments without a message start."""

    proto: str
    head_len: int
    low: int
    high: int
    length_name: str
    magic: bytes = b""
    judge_at: int = 0
    judge: Callable[[bytearray], None] | None = None
    lost_reason: str = "no message start found after lost bytes"


_I32 = struct.Struct(">i")


class HeadFramer:
    """One direction of a TCP stream of messages that open with a fixed-size header ending in
    their body's length (Kafka's 4-byte length prefix, Dubbo's 16-byte header), as ``framing``
    describes them.

    The header and at most ``cap`` bytes of each body are kept (``head``, ``keep``). At a
    message's end, ``finish(head, size, body, ts, seq, captured)`` makes its L7Message (or None; it
    may raise Malformed): ``ts`` and ``seq`` of its first byte, ``captured`` the bytes of it the
    capture kept. Bytes the capture did not keep (``length`` past the payload) are skipped by the
    body's length; when they hide where a message starts, the framing is lost (``lost``) until a
    segment for which ``starts(payload)`` is true (``resync``). Segments are taken as contiguous:
    ``seq`` only dates the messages.
    """

    __slots__ = ("cap", "captured", "framing", "head", "keep", "lost", "lost_segments", "need", "seq", "size", "ts")

    def __init__(self, framing: Framing, cap: int) -> None:
        self.framing = framing
        self.cap = cap
        self.head = b""                   # header bytes seen so far
        self.need = -1                    # body bytes still to come; -1: reading the header
        self.keep = bytearray()
        self.size = self.ts = self.seq = self.captured = 0
        self.lost = False
        self.lost_segments = 0

    def reset(self) -> None:
        """Follow the stream again from the next byte fed, which starts a message."""
        self.head = b""
        self.need = -1
        self.keep = bytearray()
        self.lost = False
        self.lost_segments = 0

    def feed(self, payload: bytes, length: int, ts: int, seq: int,
             finish: Callable[[bytes, int, bytes, int, int, int], L7Message | None],
             starts: Callable[[bytes], bool]) -> list[L7Message] | GiveUp:
        """What the parser's ``feed`` returns for this segment: the messages it completes
        (``finish``'s, in stream order), or the give-up."""
        proto, head_len, low, high, length_name, magic, judge_at, judge, lost_reason = self.framing
        if self.lost and (skipped := resync(self, starts(payload), proto, lost_reason)) is not None:
            return skipped
        out: list[L7Message] = []
        pos, n = 0, len(payload)
        end = length if length > n else n         # past n: bytes the capture did not keep
        try:
            while pos < end:
                need = self.need
                if need < 0:
                    if pos >= n:                  # a message starts in bytes not seen: framing lost
                        self.reset()
                        self.lost = True
                        self.lost_segments = 1    # this segment counts among those without a start
                        break
                    head = self.head
                    if not head:
                        self.ts, self.seq, self.captured = ts, (seq + pos) & MASK32, 0
                    take = head_len - len(head)
                    if take > n - pos:
                        take = n - pos
                    head = self.head = head + payload[pos:pos + take]
                    pos += take
                    self.captured += take
                    if magic and not magic.startswith(head[:len(magic)]):
                        raise Malformed(f"{proto}: bad magic {head[:len(magic)].hex()}")
                    if len(head) < head_len:
                        continue
                    need = _I32.unpack_from(head, head_len - 4)[0]
                    if not low <= need <= high:
                        raise Malformed(f"{proto}: implausible {length_name} {need}")
                    self.size = need
                if pos < n:
                    take = need if need < n - pos else n - pos
                    keep = self.keep
                    room = self.cap - len(keep)
                    if room > 0:
                        had = len(keep)
                        keep += payload[pos:pos + (take if take < room else room)]
                        if had < judge_at <= len(keep):
                            judge(keep)
                    self.captured += take
                else:                             # not captured: skipped by length
                    take = need if need < end - pos else end - pos
                pos += take
                self.need = need = need - take
                if need == 0:
                    msg = finish(self.head, self.size, bytes(self.keep), self.ts, self.seq, self.captured)
                    self.head = b""
                    self.need = -1
                    self.keep = bytearray()
                    if msg is not None:
                        out.append(msg)
        except Malformed as e:
            return give_up(e, proto)
        return out


def give_up(e: Malformed, proto: str) -> GiveUp:
    reason = str(e)
    return GiveUp(reason if reason.startswith(proto + ":") else f"{proto}: {reason}")


LOST_SEGMENTS_MAX = 256       # segments without a message start, after lost bytes, before giving up


def resync(framer: Framer | HeadFramer, starts_message: bool, proto: str,
           reason: str = "no message start found after lost bytes") -> list[L7Message] | GiveUp | None:
    """A lost framer and the next segment: None if the segment starts a message (the framer
    follows the stream again: feed it the segment); else what the parser's ``feed`` returns for
    the skipped segment: nothing, or the give-up after ``LOST_SEGMENTS_MAX`` such segments."""
    if starts_message:
        framer.reset()
        return None
    framer.lost_segments += 1
    if framer.lost_segments > LOST_SEGMENTS_MAX:
        return GiveUp(f"{proto}: {reason}")
    return []
