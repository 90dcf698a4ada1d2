"""The stream framing the parsers of length-delimited protocols share (collector/l7/stream.py):
``Framer`` (DNS over TCP, TLS, MQTT), ``HeadFramer`` (Kafka, Dubbo) and ``resync``. The parsers'
own tests cover them on real traffic; these pin the framing rules down on crafted bytes."""

from __future__ import annotations

import struct

import pytest

from collector.l7.base import GiveUp
from collector.l7.stream import LOST_SEGMENTS_MAX, Framer, Framing, HeadFramer, Malformed, resync


# -- Framer ------------------------------------------------------------------------------------------
def two_byte_len(buf, off):
    if len(buf) - off < 2:
        return None
    n = (buf[off] << 8) | buf[off + 1]
    if n == 0xFFFF:
        raise Malformed("test: bad length")
    return n + 2


def test_framer_keeps_head_of_long_messages_and_skips_rest():
    f = Framer(two_byte_len, 100)
    long_msg = struct.pack("!H", 1000) + bytes(range(256)) * 4
    wire = long_msg[:1002] + b"\x00\x03abc"
    out = []
    for i in range(0, len(wire), 300):
        out += f.feed(wire[i:i + 300], len(wire[i:i + 300]), i, 10 + i)
        assert len(f.buf) <= 100 + 300
    assert [(len(d), t, seq) for d, t, _, seq in out] == [(100, 1002, 10), (5, 5, 1012)]
    assert out[1][0] == b"\x00\x03abc"


def test_framer_gaps():
    f = Framer(two_byte_len, 1000)
    # a gap inside a message: delivered cut, the rest skipped
    assert f.feed(b"\x00\x0aabc", 12, 1, 0) == [(b"\x00\x0aabc", 12, 1, 0)]
    assert f.feed(b"\x00\x01z", 3, 2, 12) == [(b"\x00\x01z", 3, 2, 12)]
    # the uncaptured part of a segment continues into the next segment
    assert f.feed(b"\x00\x10", 10, 3, 15) == [(b"\x00\x10", 18, 3, 15)]
    assert f.feed(b"ignored!", 8, 4, 25) == []
    assert f.feed(b"\x00\x00", 2, 5, 33) == [(b"\x00\x00", 2, 5, 33)]
    # a gap past the end of the cut message: the next header is lost, until reset
    assert f.feed(b"\x00\x01", 10, 6, 35) == [(b"\x00\x01", 3, 6, 35)] and f.lost
    assert f.feed(b"\x00\x00", 2, 7, 45) == []
    f.reset()
    assert f.feed(b"\x00\x00", 2, 8, 47) == [(b"\x00\x00", 2, 8, 47)]
    with pytest.raises(Malformed):
        Framer(two_byte_len, 100).feed(b"\xff\xff", 2, 1, 0)


# -- HeadFramer --------------------------------------------------------------------------------------
def judge_body(body):
    if body[:2] == b"no":
        raise Malformed("test: judged")


# A 5-byte header: the magic byte 'M', then the body length as a big-endian int32 in [0, 1000].
FRAMING = Framing("test", 5, 0, 1000, "body length", b"M", judge_at=2, judge=judge_body)


def frame(body: bytes) -> bytes:
    return b"M" + struct.pack("!i", len(body)) + body


def finish(head, size, body, ts, seq, captured):
    return (head, size, body, ts, seq, captured)


def starts(payload):
    return payload[:1] == b"M"


def test_head_framer_messages_across_segments_and_bounded():
    f = HeadFramer(FRAMING, 4)
    wire = frame(b"abcdefgh") + frame(b"") + frame(b"xy")
    out = []
    for i in range(len(wire)):                              # one byte a segment
        out += f.feed(wire[i:i + 1], 1, 100 + i, 7 + i, finish, starts)
        assert len(f.keep) <= 4 and len(f.head) <= 5
    assert out == [(frame(b"")[:1] + struct.pack("!i", 8), 8, b"abcd", 100, 7, 13),
                   (frame(b""), 0, b"", 113, 20, 5),
                   (frame(b"xy")[:5], 2, b"xy", 118, 25, 7)]
    assert HeadFramer(FRAMING, 4).feed(wire, len(wire), 1, 0, finish, starts) == [
        (m[0], m[1], m[2], 1, s, m[5]) for m, s in zip(out, (0, 13, 18), strict=True)]


def test_head_framer_skips_uncaptured_bytes_by_length():
    f = HeadFramer(FRAMING, 100)
    a, b = frame(b"a" * 10), frame(b"bb")
    # a's last 6 bytes not captured: skipped by its length, b read whole
    assert f.feed(a[:9], len(a), 1, 0, finish, starts) == [(a[:5], 10, b"aaaa", 1, 0, 9)]
    assert f.feed(b, len(b), 2, 15, finish, starts) == [(b[:5], 2, b"bb", 2, 15, 7)]
    # a message whose rest runs into the next segment's uncaptured bytes
    assert f.feed(a[:7], 7, 3, 22, finish, starts) == []
    assert f.feed(b"", 8, 4, 29, finish, starts) == [(a[:5], 10, b"aa", 3, 22, 7)] and not f.lost


def test_head_framer_loses_framing_and_resyncs():
    f = HeadFramer(FRAMING, 100)
    a, b = frame(b"a" * 10), frame(b"bb")
    # the uncaptured bytes end a and start b: a is reported, the framing is lost
    assert f.feed(a[:7], len(a) + 2, 1, 0, finish, starts) == [(a[:5], 10, b"aa", 1, 0, 7)]
    assert f.lost and f.lost_segments == 1                  # the segment that lost it counts
    assert f.feed(b[2:], 5, 2, 17, finish, starts) == [] and f.lost_segments == 2
    assert f.feed(b, len(b), 3, 22, finish, starts) == [(b[:5], 2, b"bb", 3, 22, 7)] and not f.lost
    assert f.feed(b"M", 9, 4, 0, finish, starts) == [] and f.lost_segments == 1   # a cut header: lost again
    for _ in range(LOST_SEGMENTS_MAX - 1):                  # LOST_SEGMENTS_MAX segments without a start
        assert f.feed(b"x", 1, 5, 0, finish, starts) == []
    r = f.feed(b"x", 1, 5, 0, finish, starts)
    assert isinstance(r, GiveUp) and r == "test: no message start found after lost bytes"


def test_head_framer_gives_up_on_bad_header_and_judged_body():
    assert HeadFramer(FRAMING, 100).feed(b"X", 1, 1, 0, finish, starts) == GiveUp("test: bad magic 58")
    too_long = b"M" + struct.pack("!i", 5000)
    assert HeadFramer(FRAMING, 100).feed(too_long, 5, 1, 0, finish, starts) == \
        GiveUp("test: implausible body length 5000")
    negative = b"M" + struct.pack("!i", -1)
    assert HeadFramer(FRAMING, 100).feed(negative, 5, 1, 0, finish, starts) == \
        GiveUp("test: implausible body length -1")
    f = HeadFramer(FRAMING, 100)
    wire = frame(b"ok") + b"M" + struct.pack("!i", 9) + b"n"   # the second body is not judged before 2 bytes
    assert f.feed(wire, len(wire), 1, 0, finish, starts) == [(frame(b"")[:1] + struct.pack("!i", 2), 2, b"ok", 1, 0, 7)]
    assert f.feed(b"o", 1, 2, 13, finish, starts) == GiveUp("test: judged")
    lost = FRAMING._replace(lost_reason="no M")
    f = HeadFramer(lost, 100)
    assert f.feed(b"", 5, 1, 0, finish, starts) == [] and f.lost
    for _ in range(LOST_SEGMENTS_MAX - 1):
        assert f.feed(b"x", 1, 1, 0, finish, starts) == []
    assert f.feed(b"x", 1, 1, 0, finish, starts) == GiveUp("test: no M")


def test_resync_follows_a_lost_framer_again():
    f = Framer(two_byte_len, 100)
    assert f.feed(b"\x00\x01", 10, 1, 0) == [(b"\x00\x01", 3, 1, 0)] and f.lost
    assert resync(f, False, "test") == [] and f.lost and f.lost_segments == 1
    assert resync(f, True, "test") is None and not f.lost and f.lost_segments == 0
    f.lost = True
    for _ in range(LOST_SEGMENTS_MAX):
        assert resync(f, False, "test") == []
    assert resync(f, False, "test", "gone") == GiveUp("test: gone")
