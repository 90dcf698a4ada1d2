"""HTTP/2 over cleartext TCP (h2c, l7_protocol 21) and gRPC on top of it (41): one request per
client HEADERS on a new stream, one response per final server HEADERS, paired by stream id.

The frame layer (RFC 9113 §4) is parsed here; header blocks are decoded with ``hpack``, one
decoder per direction. Every header block is decoded, even one no message is made from, so the
dynamic table stays in step with the endpoints'.

Decisions where the protocol or the brief leaves the observer a choice:

- ``ts`` / ``tcp_seq`` of a message are those of the first byte of its HEADERS frame (the
  sequence number of that byte, i.e. the segment's ``seq`` plus the frame's offset in it, as
  ``L7Message.tcp_seq`` is defined).
- A request is emitted at its END_STREAM so that ``length`` is its body (the DATA payload bytes,
  padding excluded), or earlier when its response starts first (``length``: the body so far, or
  Content-Length when sent). A GET's HEADERS carry END_STREAM: it is emitted at once, length 0.
- An HTTP/2 response is emitted at its first final HEADERS (1xx are skipped): ``length`` is
  Content-Length, 0 when the HEADERS end the stream, else None.
- gRPC (request or response content-type ``application/grpc…``): the response is held until
  its trailers, whose grpc-status gives ``response_code`` (else the HTTP status); its ``ts`` stays
  that of the first response HEADERS, DeepFlow's end_time, so the latency is time to first byte.
  ``length`` is the response's DATA bytes (gRPC's 5-byte message prefixes included);
  ``response_exception`` grpc-message (percent-decoded), else the status code's name.
- RST_STREAM on a stream still waiting for its response yields a response with the error code's
  name in ``response_exception``: SERVER_ERROR when the server reset it, CLIENT_ERROR when the
  client did (it gave up or cancelled). A server GOAWAY does the same for the client streams above
  its last-stream-id (never processed, RFC 9113 §6.8).
- Server push is not reported: the PUSH_PROMISE block is decoded (HPACK) and the promised stream's
  frames are followed and ignored, since no client request caused them.
- Bytes the capture did not keep (snaplen, or a gap in the sequence numbers) are skipped by the
  frame lengths. A lost DATA payload only makes ``length`` unknown. A lost header block may
  have changed the dynamic table: the direction's decoder restarts empty, which stays exact
  for every later block that refers only to entries added after the loss (static entries and
  literals are self-contained); a block that refers to an older entry makes the decoder fail
  and the flow is given up, so a wrong header is never emitted. The lost block's message is
  still reported, with only what the frame header tells (stream id, timing): a request without
  method and path, or a response with ``response_status`` PARSE_FAILED. A lost frame header
  loses the framing: the direction is skipped until a segment starts with a plausible chain of
  frame headers, then continues as after a lost header block.
- Memory: at most ``max_buffer`` bytes buffered per direction (a larger header block is treated
  as lost), at most ``MAX_STREAMS`` streams tracked; the oldest is dropped first (counted in
  ``dropped_streams``), its held messages emitted (a held gRPC response as UNKNOWN).

h2c upgrade (RFC 7540 §3.2): the HTTP/1 parser owns a flow that starts with an HTTP/1.1 request
carrying ``Upgrade: h2c`` and answered ``101 Switching Protocols``; it then hands the flow over
with ``upgrade_parser`` (see there).
"""

from __future__ import annotations

import base64
import struct
from collections import deque
from collections.abc import Iterable, Mapping
from http import HTTPStatus
from urllib.parse import unquote

import hpack

from collector.l7.base import (
    CLIENT_ERROR,
    GRPC,
    HTTP2,
    OK,
    PARSE_FAILED,
    REQUEST,
    RESPONSE,
    SERVER_ERROR,
    UNKNOWN,
    GiveUp,
    L7Config,
    L7Message,
    Spec,
)
from collector.l7.common import clip, http_endpoint, trace_context, trace_names

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
MASK32 = 0xFFFFFFFF
MAX_STREAMS = 4096            # streams tracked per connection (the oldest is dropped beyond)
DEFAULT_MAX_FRAME = 16384     # SETTINGS_MAX_FRAME_SIZE until the peer announces more
_MAX_FRAME_LIMIT = (1 << 24) - 1

DATA, HEADERS, PRIORITY, RST_STREAM, SETTINGS, PUSH_PROMISE, PING, GOAWAY, WINDOW_UPDATE, CONTINUATION = range(10)
END_STREAM, ACK, END_HEADERS, PADDED, PRIORITY_FLAG = 0x1, 0x1, 0x4, 0x8, 0x20

# Per frame type (RFC 9113 §6): stream id must be non-zero (True), zero (False) or either (None);
# the fixed payload length, if any; the flags the type defines.
_RULES: dict[int, tuple[bool | None, int | None, int]] = {
    DATA: (True, None, END_STREAM | PADDED),
    HEADERS: (True, None, END_STREAM | END_HEADERS | PADDED | PRIORITY_FLAG),
    PRIORITY: (True, 5, 0),
    RST_STREAM: (True, 4, 0),
    SETTINGS: (False, None, ACK),
    PUSH_PROMISE: (True, None, END_HEADERS | PADDED),
    PING: (False, 8, ACK),
    GOAWAY: (False, None, 0),
    WINDOW_UPDATE: (None, 4, 0),
    CONTINUATION: (True, None, END_HEADERS),
}
_FRAME_NAMES = ("DATA", "HEADERS", "PRIORITY", "RST_STREAM", "SETTINGS", "PUSH_PROMISE", "PING", "GOAWAY",
                "WINDOW_UPDATE", "CONTINUATION")
ERROR_CODES = ("NO_ERROR", "PROTOCOL_ERROR", "INTERNAL_ERROR", "FLOW_CONTROL_ERROR", "SETTINGS_TIMEOUT",
               "STREAM_CLOSED", "FRAME_SIZE_ERROR", "REFUSED_STREAM", "CANCEL", "COMPRESSION_ERROR",
               "CONNECT_ERROR", "ENHANCE_YOUR_CALM", "INADEQUATE_SECURITY", "HTTP_1_1_REQUIRED")
GRPC_CODES = ("OK", "CANCELLED", "UNKNOWN", "INVALID_ARGUMENT", "DEADLINE_EXCEEDED", "NOT_FOUND", "ALREADY_EXISTS",
              "PERMISSION_DENIED", "RESOURCE_EXHAUSTED", "FAILED_PRECONDITION", "ABORTED", "OUT_OF_RANGE",
              "UNIMPLEMENTED", "INTERNAL", "UNAVAILABLE", "DATA_LOSS", "UNAUTHENTICATED")
# gRPC status codes the caller caused (grpc/doc/statuscodes.md); all others count as server errors.
GRPC_CLIENT_CODES = frozenset({3, 5, 6, 7, 9, 11, 16})

_HDR = struct.Struct(">HBBBI")    # 24-bit length as 16 + 8 bits, type, flags, R + stream id
_U32 = struct.Struct(">I")
_GRPC_CT = b"application/grpc"
_MEMO_MAX = 64                # decoded header blocks remembered per direction


def error_name(code: int) -> str:
    """RFC 9113 §7 name of an error code (hex for unknown codes)."""
    return ERROR_CODES[code] if code < len(ERROR_CODES) else f"0x{code:x}"


def _frame_error(ftype: int, flags: int, sid: int, flen: int, max_frame: int) -> str | None:
    """Why this frame header cannot be HTTP/2, or None. Undefined flags and unknown frame types
    are allowed (RFC 9113 §4.1, §5.5)."""
    if flen > max_frame:
        return f"{_FRAME_NAMES[ftype] if ftype < 10 else f'type {ftype}'} frame of {flen} bytes exceeds " \
               f"SETTINGS_MAX_FRAME_SIZE {max_frame}"
    rule = _RULES.get(ftype)
    if rule is None:
        return None
    on_stream, fixed, _ = rule
    name = _FRAME_NAMES[ftype]
    if on_stream is not None and bool(sid) != on_stream:
        return f"{name} on stream {sid}"
    if fixed is not None and flen != fixed:
        return f"{name} of {flen} bytes"
    if ftype == SETTINGS and (flen % 6 or (flags & ACK and flen)):
        return f"SETTINGS of {flen} bytes"
    if ftype == GOAWAY and flen < 8:
        return f"GOAWAY of {flen} bytes"
    return None


def _plausible_frames(data: bytes, n: int, length: int, max_frame: int) -> bool:
    """Does this segment (``n`` of ``length`` bytes captured) start with a chain of frame
    headers that only uses known types and defined flags? Used to resynchronise after lost
    framing and by ``check``: random bytes almost never pass."""
    pos = 0
    first = True
    block = False                   # a header block is open: only CONTINUATION may follow
    while pos + 9 <= n:
        hi, lo, ftype, flags, sid = _HDR.unpack_from(data, pos)
        flen = hi << 8 | lo
        sid &= 0x7FFFFFFF
        rule = _RULES.get(ftype)
        if rule is None or flags & ~rule[2] or _frame_error(ftype, flags, sid, flen, max_frame):
            return False
        if (ftype == CONTINUATION) != block:
            return False            # a block's middle without its start, or a block left open
        block = ftype in (HEADERS, PUSH_PROMISE, CONTINUATION) and not flags & END_HEADERS
        first = False
        pos += 9 + flen
    return not first and (pos >= length or pos + 9 > n)


def check(payload: bytes, from_client: bool) -> bool:
    """The client's connection preface (RFC 9113 §3.4), followed by SETTINGS when there is more;
    or, from the server, a whole non-ACK SETTINGS frame on stream 0 with valid parameters at the
    start, then only plausible frame headers (servers such as grpc-go and grpcio send their
    SETTINGS before the client's preface arrives)."""
    if from_client:
        return payload[:24] == PREFACE and (len(payload) < 33 or payload[27] == SETTINGS)
    n = len(payload)
    if n < 9 or payload[3] != SETTINGS or payload[4] or payload[5:9] != b"\0\0\0\0":
        return False
    flen = int.from_bytes(payload[:3], "big")
    if flen % 6 or flen > DEFAULT_MAX_FRAME or n < 9 + flen:
        return False
    for off in range(9, 9 + flen, 6):
        ident = payload[off] << 8 | payload[off + 1]
        value = _U32.unpack_from(payload, off + 2)[0]
        if (ident == 2 and value > 1) or (ident == 4 and value > 0x7FFFFFFF) \
                or (ident == 5 and not DEFAULT_MAX_FRAME <= value <= _MAX_FRAME_LIMIT):
            return False
    return 9 + flen == n or _plausible_frames(payload[9 + flen:], n - 9 - flen, n - 9 - flen, _MAX_FRAME_LIMIT)


def _text(v: bytes) -> str:
    return v.decode("utf-8", "replace")


def _int(v: bytes | None) -> int | None:
    if v is None or not v.isdigit() or len(v) > 18:
        return None
    return int(v)


def _http_status(code: int) -> int:
    return SERVER_ERROR if code >= 500 else CLIENT_ERROR if code >= 400 else OK


def _grpc_status(code: int) -> int:
    return OK if code == 0 else CLIENT_ERROR if code in GRPC_CLIENT_CODES else SERVER_ERROR


def _phrase(code: int) -> str:
    try:
        return HTTPStatus(code).phrase
    except ValueError:
        return ""


def _decode(side: _Side, block: bytes | bytearray) -> dict[bytes, bytes]:
    """The headers of a block, as a dict, with the decoder's table updated. A block's result
    depends only on its bytes and on the dynamic table it meets, so a block seen before with
    the same table (a client repeating a call, a server repeating its headers) takes the
    remembered headers and resulting table instead of hpack's pure-Python decoding."""
    table = side.decoder.header_table
    before = tuple(table.dynamic_entries)
    maxsize = table.maxsize
    key = (bytes(block), maxsize, before)
    memo = side.memo
    hit = memo.get(key)
    if hit is not None:
        h, state = hit
        if state is not None:
            table.maxsize, after, table._current_size = state
            table.dynamic_entries = deque(after)
        return h
    h = dict(side.decoder.decode(block, raw=True))
    after = tuple(table.dynamic_entries)
    if len(memo) >= _MEMO_MAX:
        memo.clear()
    changed = after != before or table.maxsize != maxsize
    memo[key] = (h, (table.maxsize, after, table._current_size) if changed else None)
    return h


class _Stream:
    """What one stream still owes: a request held for its END_STREAM, a gRPC response held for
    its trailers."""

    __slots__ = ("req", "req_len", "req_cl", "req_cap", "grpc", "resp", "resp_len", "resp_cap", "gap",
                 "pushed")

    def __init__(self) -> None:
        self.req: L7Message | None = None
        self.req_len = 0
        self.req_cl: int | None = None
        self.req_cap = 0
        self.grpc = False
        self.resp: L7Message | None = None
        self.resp_len = 0
        self.resp_cap = 0
        self.gap = 0                 # bytes of this stream were lost (1: client's, 2: server's)
        self.pushed = False


class _Side:
    """One direction's framing state: the frame being read, the header block being collected,
    its HPACK decoder."""

    __slots__ = ("client", "decoder", "buf", "state", "need", "skip", "avail", "ftype", "flags", "sid", "flen", "fts",
                 "fseq", "max_frame", "preface", "lost", "tainted", "next_seq", "block", "block_sid",
                 "block_kind", "block_end", "block_ts", "block_seq", "block_cap", "block_lost",
                 "block_promised", "cap_st", "memo")

    def __init__(self, client: bool, header_list_max: int) -> None:
        self.client = client
        self.decoder = hpack.Decoder(max_header_list_size=header_list_max)
        self.buf = bytearray()          # a frame header, or the needed part of a frame's payload
        self.state = 0                  # 0: reading a frame header; 1: reading ``need`` payload bytes
        self.need = 0
        self.skip = 0                   # payload bytes of the current frame still to pass over
        self.avail = 0                  # captured bytes left in the segment after what was read
        self.ftype = self.flags = self.sid = self.flen = 0
        self.fts = self.fseq = 0        # ts and seq of the current frame's first byte
        self.max_frame = DEFAULT_MAX_FRAME
        self.preface = 0 if client else 24   # preface bytes matched so far (24: none expected)
        self.lost = False               # framing lost: waiting for a segment that starts with frames
        self.tainted = False            # the decoder restarted after a lost header block
        self.next_seq: int | None = None
        self.block: bytearray | None = None  # header block awaiting CONTINUATION
        self.block_sid = self.block_kind = self.block_ts = self.block_seq = self.block_cap = 0
        self.block_promised = 0
        self.block_end = False          # the HEADERS carried END_STREAM
        self.block_lost = False
        self.cap_st: _Stream | None = None   # the stream whose DATA payload is being passed over
        self.memo: dict = {}            # decoded blocks (see ``_decode``)


class Http2Parser:
    """One HTTP/2 connection. ``feed`` never raises: bytes that cannot be HTTP/2 return a GiveUp.
    Counters: ``dropped_streams``, ``lost_blocks``, ``resyncs``, ``pushes``."""

    protocol = HTTP2
    name = "HTTP2"
    timeout_s = 120.0

    def __init__(self, config: L7Config) -> None:
        self._cfg = config
        self._max_buffer = config.max_buffer
        self._text_max = config.result_max
        self._resource_max = config.result_max * 4
        self._trace = tuple((h.encode(), h) for h in sorted(trace_names(config.trace_headers)))
        header_list_max = max(65536, 4 * config.max_buffer)
        self._c = _Side(True, header_list_max)
        self._s = _Side(False, header_list_max)
        self._streams: dict[int, _Stream] = {}
        self._max_client_sid = 0
        self._out: list[L7Message] = []
        self._pending: list[L7Message] = []   # messages made outside ``feed`` (the h2c upgrade)
        self._gave_up: str | None = None
        self.dropped_streams = 0
        self.lost_blocks = 0
        self.resyncs = 0
        self.pushes = 0

    # -- input -------------------------------------------------------------------------------

    def feed(self, payload: bytes, length: int, from_client: bool, ts: int, seq: int) -> list[L7Message] | GiveUp:
        """The next in-order payload of one direction; the messages it completes. A give-up met
        after some messages were completed in the same payload is returned by the next call."""
        if self._gave_up is not None:
            return GiveUp(self._gave_up)
        out = self._out = self._pending
        self._pending = []
        try:
            reason = self._feed(self._c if from_client else self._s, payload, length, ts, seq)
        except Exception as e:        # a bug must cost one flow, not the collector
            reason = f"http2: internal error {type(e).__name__}: {e}"
        if reason is None:
            return out
        self._gave_up = reason
        self._streams.clear()
        return out if out else GiveUp(reason)

    def flush(self, ts: int) -> list[L7Message]:
        """The connection ended: requests still waiting for END_STREAM go out with what is known
        of their length, gRPC responses still waiting for trailers as UNKNOWN."""
        out = self._out = self._pending
        self._pending = []
        streams, self._streams = self._streams, {}
        for st in streams.values():
            self._abandon(st)
        return out

    def _feed(self, side: _Side, payload: bytes, length: int, ts: int, seq: int) -> str | None:
        n = len(payload)
        if length < n:
            n = length
        nxt = side.next_seq
        if nxt is not None and seq != nxt:
            gap = (seq - nxt) & MASK32
            if gap & 0x80000000:              # overlaps bytes already seen: keep the new part
                over = (nxt - seq) & MASK32
                if over >= length:
                    return None
                payload, length, n, seq = payload[over:], length - over, max(0, n - over), nxt
            else:
                r = self._missing(side, gap)
                if r is not None:
                    return r
        side.next_seq = (seq + length) & MASK32
        if side.lost:
            if n < 9 or not _plausible_frames(payload, n, length, side.max_frame):
                return None
            self._resync(side)
        if n:
            r = self._consume(side, payload, n, ts, seq)
            if r is not None:
                return r
        if length > n:
            return self._missing(side, length - n)
        return None

    def _consume(self, side: _Side, data: bytes, n: int, ts: int, seq: int) -> str | None:
        """Walk the captured bytes of one segment."""
        pos = 0
        if side.preface < 24:
            p = side.preface
            k = min(24 - p, n)
            if data[:k] != PREFACE[p:p + k]:
                if p or data[0] == 0x50:      # "P": it began as the preface
                    return "http2: broken connection preface"
                side.preface = 24             # no preface (handed over mid-connection): frames
            else:
                side.preface = p + k
                pos = k
        buf = side.buf
        while pos < n:
            if side.skip:
                k = n - pos
                if k > side.skip:
                    k = side.skip
                if side.cap_st is not None:
                    if side.client:
                        side.cap_st.req_cap += k
                    else:
                        side.cap_st.resp_cap += k
                side.skip -= k
                pos += k
                continue
            if side.state == 0:
                if buf or pos + 9 > n:
                    if not buf:
                        side.fts, side.fseq = ts, (seq + pos) & MASK32
                    k = min(9 - len(buf), n - pos)
                    buf += data[pos:pos + k]
                    pos += k
                    if len(buf) < 9:
                        break
                    hi, lo, ftype, flags, sid = _HDR.unpack(buf)
                    buf.clear()
                else:
                    side.fts, side.fseq = ts, (seq + pos) & MASK32
                    hi, lo, ftype, flags, sid = _HDR.unpack_from(data, pos)
                    pos += 9
                side.avail = n - pos
                r = self._frame_header(side, ftype, flags, sid & 0x7FFFFFFF, hi << 8 | lo)
                if r is not None:
                    return r
                continue
            want = side.need - len(buf)
            if buf or pos + want > n:
                k = min(want, n - pos)
                buf += data[pos:pos + k]
                pos += k
                if len(buf) < side.need:
                    break
                body = bytes(buf)
                buf.clear()
            else:
                body = data[pos:pos + want]
                pos += want
            side.state = 0
            side.skip = side.flen - side.need
            side.avail = n - pos
            r = self._frame_body(side, body)
            if r is not None:
                return r
        return None

    def _missing(self, side: _Side, k: int) -> str | None:
        """``k`` bytes of this direction were not captured: pass over them by frame lengths."""
        while k > 0 and not side.lost:
            if side.skip:
                t = min(side.skip, k)
                side.skip -= t
                k -= t
                continue
            if side.preface < 24:
                t = min(24 - side.preface, k)
                side.preface += t
                k -= t
                continue
            if side.state == 0:              # a frame header: the framing is lost
                side.lost = True
                side.buf.clear()
                side.block = None
                side.cap_st = None
                bit = 1 if side.client else 2
                for st in self._streams.values():
                    st.gap |= bit
                return None
            r = self._body_lost(side)
            if r is not None:
                return r
        return None

    def _resync(self, side: _Side) -> None:
        """A segment starts with frames again after lost framing: a header block may have been
        among the lost bytes, so the decoder restarts as after a lost block."""
        side.lost = False
        side.state = side.skip = 0
        side.preface = 24
        self.resyncs += 1
        self._restart_decoder(side)

    def _restart_decoder(self, side: _Side) -> None:
        old = side.decoder
        dec = hpack.Decoder(max_header_list_size=old.max_header_list_size)
        dec.max_allowed_table_size = old.max_allowed_table_size
        dec.header_table_size = old.header_table_size
        side.decoder = dec
        side.tainted = True

    # -- frames ------------------------------------------------------------------------------

    def _frame_header(self, side: _Side, ftype: int, flags: int, sid: int, flen: int) -> str | None:
        """A frame header was read: check it, then decide which payload bytes are needed."""
        err = _frame_error(ftype, flags, sid, flen, side.max_frame)
        if err is not None:
            return f"http2: {err}"
        if side.block is not None and (ftype != CONTINUATION or sid != side.block_sid):
            return f"http2: {_FRAME_NAMES[ftype] if ftype < 10 else ftype} frame inside a header block"
        side.ftype, side.flags, side.sid, side.flen = ftype, flags, sid, flen
        side.cap_st = None
        if ftype == DATA:
            if flags & PADDED and flen:
                return self._need(side, 1)
            side.skip = flen
            return self._data(side, flen)
        if ftype in (HEADERS, PUSH_PROMISE, CONTINUATION):
            if ftype == CONTINUATION and side.block is None:
                return "http2: CONTINUATION without HEADERS"
            if flen > self._max_buffer:
                side.skip = flen
                return self._block_lost(side)
            if flen == 0:
                return self._frame_body(side, b"")
            return self._need(side, flen)
        if ftype in (SETTINGS, RST_STREAM, GOAWAY):
            need = 8 if ftype == GOAWAY else flen
            if need > self._max_buffer:
                return f"http2: SETTINGS of {flen} bytes"
            if need == 0:
                return self._frame_body(side, b"")
            return self._need(side, need)
        side.skip = flen                     # PRIORITY, PING, WINDOW_UPDATE, extensions
        return None

    @staticmethod
    def _need(side: _Side, need: int) -> None:
        side.state = 1
        side.need = need

    def _body_lost(self, side: _Side) -> str | None:
        """The payload bytes a frame was read for were not captured."""
        side.skip = side.flen - len(side.buf)
        side.buf.clear()
        side.state = 0
        side.avail = 0
        ftype = side.ftype
        if ftype == DATA:                    # only the pad length was wanted
            return self._data(side, side.flen - 1)
        if ftype in (HEADERS, PUSH_PROMISE, CONTINUATION):
            return self._block_lost(side)
        if ftype == SETTINGS:                # the peer may have allowed a larger HPACK table
            other = self._s if side.client else self._c
            other.decoder.max_allowed_table_size = 1 << 32
        return None

    def _frame_body(self, side: _Side, body: bytes) -> str | None:
        """The needed payload of the current frame is here."""
        ftype, flags = side.ftype, side.flags
        if ftype in (HEADERS, PUSH_PROMISE):
            off, end = 0, len(body)
            if flags & PADDED:
                if not body or body[0] >= end:
                    return f"http2: {_FRAME_NAMES[ftype]} padding longer than the frame"
                end -= body[0]
                off = 1
            if ftype == HEADERS:
                promised = 0
                if flags & PRIORITY_FLAG:
                    off += 5
            else:
                if end - off < 4:
                    return "http2: PUSH_PROMISE without a promised stream id"
                promised = _U32.unpack_from(body, off)[0] & 0x7FFFFFFF
                off += 4
            if off > end:
                return f"http2: {_FRAME_NAMES[ftype]} fields longer than the frame"
            fragment = body[off:end] if off or end != len(body) else body
            side.block_sid, side.block_kind, side.block_promised = side.sid, ftype, promised
            side.block_end = bool(flags & END_STREAM) and ftype == HEADERS
            side.block_ts, side.block_seq, side.block_cap = side.fts, side.fseq, 9 + side.flen
            side.block_lost = False
            if flags & END_HEADERS:
                return self._header_block(side, fragment)
            side.block = bytearray(fragment)
            return None
        if ftype == CONTINUATION:
            block = side.block
            side.block_cap += 9 + side.flen
            if not side.block_lost:
                if len(block) + len(body) > self._max_buffer:
                    return self._block_lost(side)
                block += body
            if flags & END_HEADERS:
                side.block = None
                return self._header_block(side, block)
            return None
        if ftype == DATA:
            pad = body[0]
            if pad >= side.flen:
                return "http2: DATA padding longer than the frame"
            return self._data(side, side.flen - 1 - pad)
        if ftype == SETTINGS:
            return self._settings(side, body)
        if ftype == RST_STREAM:
            self._reset(side, side.sid, _U32.unpack(body)[0], side.fts, side.fseq)
        elif ftype == GOAWAY and not side.client:      # a client's GOAWAY concerns pushes only
            last = _U32.unpack_from(body, 0)[0] & 0x7FFFFFFF
            self._goaway(last, _U32.unpack_from(body, 4)[0], side.fts, side.fseq)
        return None

    def _settings(self, side: _Side, body: bytes) -> None:
        """The limits an endpoint announces bind the other direction: its HPACK table size and
        frame size."""
        other = self._s if side.client else self._c
        for off in range(0, len(body), 6):
            ident = body[off] << 8 | body[off + 1]
            value = _U32.unpack_from(body, off + 2)[0]
            if ident == 1:
                dec = other.decoder
                if value > dec.max_allowed_table_size:
                    dec.max_allowed_table_size = value
            elif ident == 5 and DEFAULT_MAX_FRAME <= value <= _MAX_FRAME_LIMIT:
                other.max_frame = value
        return None

    def _block_lost(self, side: _Side) -> str | None:
        """A header block (or part of it) was not captured or is too large to keep. The message
        is reported from the frame header alone once the block ends."""
        if side.ftype != CONTINUATION or not side.block_lost:
            self.lost_blocks += 1
        if side.ftype != CONTINUATION:
            side.block_sid, side.block_kind, side.block_promised = side.sid, side.ftype, 0
            side.block_end = bool(side.flags & END_STREAM) and side.ftype == HEADERS
            side.block_ts, side.block_seq, side.block_cap = side.fts, side.fseq, 0
        side.block_lost = True
        self._restart_decoder(side)
        if side.flags & END_HEADERS:
            side.block = None
            self._lost_message(side)
        else:
            side.block = side.block or bytearray()
        return None

    def _lost_message(self, side: _Side) -> None:
        """What a lost header block still tells: a request began on a new stream (at this ts
        and seq), or the response of a pending stream came but cannot be read."""
        sid = side.block_sid
        if side.block_kind != HEADERS:
            return
        st = self._streams.get(sid)
        if side.client:
            if st is not None or sid <= self._max_client_sid or not sid & 1:
                if st is not None and st.req is not None and side.block_end:   # lost trailers
                    self._emit_request(st, True)
                return
            self._max_client_sid = sid
            msg = L7Message(REQUEST, side.block_ts, side.block_seq)
            msg.l7_protocol = HTTP2
            msg.version = "2"
            msg.session_id = msg.request_id = sid
            st = self._new_stream(sid)
            if side.block_end:
                self._out.append(msg)
            else:
                st.req = msg
                st.gap |= 1
            return
        if st is None or st.pushed:
            return
        del self._streams[sid]
        if st.req is not None:
            self._emit_request(st, False)
        self._fail(sid, st, "header block not captured", PARSE_FAILED, side.block_ts, side.block_seq)

    def _header_block(self, side: _Side, block: bytes | bytearray) -> str | None:
        """A whole header block: decode it (always, for HPACK), then act on it."""
        if side.block_lost:
            self._lost_message(side)
            return None
        try:
            h = _decode(side, block)
        except Exception as e:
            if side.tainted:
                return f"http2: a header block refers to HPACK state lost with uncaptured bytes ({e})"
            return f"http2: undecodable header block ({type(e).__name__}: {e})"
        if side.block_kind == PUSH_PROMISE:
            self.pushes += 1
            if side.block_promised and side.block_promised not in self._streams:
                self._new_stream(side.block_promised).pushed = True
            return None
        if side.client:
            self._client_headers(side.block_sid, h, side.block_end, side.block_ts, side.block_seq, side.block_cap)
        else:
            self._server_headers(side.block_sid, h, side.block_end, side.block_ts, side.block_seq, side.block_cap)
        return None

    def _data(self, side: _Side, size: int) -> None:
        """A DATA frame's payload size (padding excluded) counts towards its message's length."""
        st = self._streams.get(side.sid)
        if st is None:
            return None
        end = side.flags & END_STREAM
        if side.client:
            if st.req is None:
                return None
            st.req_len += size
            if end:                          # emitted now: count what this segment holds of it
                st.req_cap += 9 + min(side.skip, side.avail)
                self._emit_request(st, True)
            else:
                st.req_cap += 9
                side.cap_st = st
            return None
        if st.pushed:
            if end:
                del self._streams[side.sid]
            return None
        if st.resp is None:
            return None
        st.resp_len += size
        if end:                              # no trailers: not quite gRPC; the HTTP status stands
            st.resp_cap += 9 + min(side.skip, side.avail)
            del self._streams[side.sid]
            self._finish_response(st, None)
        else:
            st.resp_cap += 9
            side.cap_st = st
        return None

    # -- messages ----------------------------------------------------------------------------

    def _new_stream(self, sid: int) -> _Stream:
        streams = self._streams
        st = streams[sid] = _Stream()
        if len(streams) > MAX_STREAMS:
            old = next(iter(streams))
            self.dropped_streams += 1
            self._abandon(streams.pop(old))
        return st

    def _abandon(self, st: _Stream) -> None:
        """A stream whose end will not be seen: its request goes out with its length unknown, a
        response still waiting for trailers as UNKNOWN."""
        if st.req is not None:
            st.gap |= 1
            self._emit_request(st, False)
        if st.resp is not None:
            st.resp.response_status = UNKNOWN
            self._finish_response(st, None)

    def _common(self, msg: L7Message, h: dict) -> None:
        """Headers both directions may carry: X-Request-ID and the trace context."""
        v = h.get(b"x-request-id")
        if v is not None:
            msg.x_request_id = clip(_text(v), self._text_max)
        ctx = None
        for key, name in self._trace:
            v = h.get(key)
            if v is not None:
                if ctx is None:
                    ctx = {}
                ctx[name] = v.decode("latin-1")
        if ctx:
            msg.trace_id, msg.span_id, msg.parent_span_id = trace_context(ctx)

    def _client_headers(self, sid: int, h: dict, end: bool, ts: int, seq: int, cap: int) -> None:
        st = self._streams.get(sid)
        if st is not None:                   # trailers of a request
            if end and st.req is not None:
                st.req_cap += cap
                self._emit_request(st, True)
            return
        method = h.get(b":method")
        if method is None or sid <= self._max_client_sid or not sid & 1:
            return                           # trailers of a finished stream, or not a request
        self._max_client_sid = sid
        msg = self._request(sid, h, ts, seq)
        st = self._new_stream(sid)
        st.grpc = msg.l7_protocol == GRPC
        st.req_cl = _int(h.get(b"content-length"))
        st.req_cap = cap
        st.req = msg
        if end:
            self._emit_request(st, True)

    def _request(self, sid: int, h: dict, ts: int, seq: int) -> L7Message:
        cfg = self._cfg
        msg = L7Message(REQUEST, ts, seq)
        msg.version = "2"
        msg.session_id = msg.request_id = sid
        msg.request_type = _text(h.get(b":method", b""))
        authority = h.get(b":authority") or h.get(b"host")
        if authority:
            msg.request_domain = clip(_text(authority), self._text_max)
        path = _text(h.get(b":path", b""))
        if h.get(b"content-type", b"").startswith(_GRPC_CT):
            msg.l7_protocol = GRPC
            service = path[1:].rpartition("/")[0] if path.startswith("/") else ""
            msg.request_resource = clip(service or path, self._resource_max)
            msg.endpoint = clip(path, self._resource_max)
        else:
            msg.l7_protocol = HTTP2
            msg.request_resource = clip(path, self._resource_max)
            if path:
                msg.endpoint = http_endpoint(path, depth=cfg.http_endpoint_depth, strip_ids=cfg.endpoint_strip_ids)
        self._common(msg, h)
        v = h.get(b"x-forwarded-for")
        if v is not None:
            msg.http_proxy_client = clip(_text(v.partition(b",")[0].strip()), self._text_max)
        ua, ref = h.get(b"user-agent"), h.get(b"referer")
        if ua is not None or ref is not None:
            attrs = {}
            if ua is not None:
                attrs["user_agent"] = clip(_text(ua), self._resource_max)
            if ref is not None:
                attrs["referer"] = clip(_text(ref), self._resource_max)
            msg.attributes = attrs
        return msg

    def _emit_request(self, st: _Stream, complete: bool) -> None:
        """Emit a held request. Its length: the DATA bytes when the body is complete and none was
        lost, else Content-Length, else the bytes so far (unknown after a loss)."""
        msg = st.req
        st.req = None
        if complete and not st.gap & 1:
            msg.length = st.req_len
        elif st.req_cl is not None:
            msg.length = st.req_cl
        else:
            msg.length = None if st.gap & 1 else st.req_len
        msg.captured = st.req_cap
        self._out.append(msg)

    def _response(self, sid: int, code: int | None, ts: int, seq: int, grpc: bool) -> L7Message:
        msg = L7Message(RESPONSE, ts, seq)
        msg.version = "2"
        msg.session_id = msg.request_id = sid
        msg.l7_protocol = GRPC if grpc else HTTP2
        msg.response_code = code
        if code is not None and code >= 400:
            msg.response_status = _http_status(code)
            msg.response_exception = _phrase(code)
        return msg

    def _server_headers(self, sid: int, h: dict, end: bool, ts: int, seq: int, cap: int) -> None:
        streams = self._streams
        st = streams.get(sid)
        if st is not None and st.pushed:
            if end:
                del streams[sid]
            return
        if st is not None and st.resp is not None:   # gRPC trailers
            del streams[sid]
            st.resp_cap += cap
            self._finish_response(st, h)
            return
        code = _int(h.get(b":status"))
        if code is None or (100 <= code < 200):
            return                           # interim 1xx, trailers of a finished stream, or malformed
        if st is None:
            if not sid & 1:
                return                       # a pushed stream whose promise was not seen
            st = self._new_stream(sid)       # its request was not seen: an orphan response
        grpc = st.grpc or h.get(b"content-type", b"").startswith(_GRPC_CT)
        if st.req is not None:               # answered before the request ended
            if grpc:                         # a request known from its frame header only
                st.req.l7_protocol = GRPC
            self._emit_request(st, False)
        msg = self._response(sid, code, ts, seq, grpc)
        self._common(msg, h)
        if not grpc:
            del streams[sid]
            msg.length = 0 if end else _int(h.get(b"content-length"))
            msg.captured = cap
            self._out.append(msg)
            return
        st.resp = msg
        st.resp_cap = cap
        if end:                              # trailers-only: the status is in these headers
            del streams[sid]
            self._finish_response(st, h)

    def _finish_response(self, st: _Stream, trailers: dict | None) -> None:
        """A held gRPC response is complete: its status from the trailers when they came."""
        msg = st.resp
        st.resp = None
        if trailers is not None:
            code = _int(trailers.get(b"grpc-status"))
            if code is not None:
                msg.response_code = code
                msg.response_status = _grpc_status(code)
                text = trailers.get(b"grpc-message")
                if text:
                    msg.response_exception = clip(unquote(_text(text)), self._text_max)
                elif code:                   # no message: the code's name, as HTTP's reason phrase
                    msg.response_exception = GRPC_CODES[code] if code < len(GRPC_CODES) else str(code)
                else:
                    msg.response_exception = ""
            if not msg.x_request_id:
                self._common(msg, trailers)
        msg.length = None if st.gap & 2 else st.resp_len
        msg.captured = st.resp_cap
        self._out.append(msg)

    def _reset(self, side: _Side, sid: int, code: int, ts: int, seq: int) -> None:
        """RST_STREAM: a stream still waiting for (the end of) its response ends with an error."""
        st = self._streams.pop(sid, None)
        if st is None:
            return
        if st.req is not None:
            self._emit_request(st, False)
        if st.pushed:
            return
        self._fail(sid, st, error_name(code), SERVER_ERROR if not side.client else CLIENT_ERROR, ts, seq)

    def _goaway(self, last: int, code: int, ts: int, seq: int) -> None:
        """A server's GOAWAY: client streams above ``last`` were never processed."""
        for sid in [s for s in self._streams if s > last and s & 1]:
            st = self._streams.pop(sid)
            if st.req is not None:
                self._emit_request(st, False)
            self._fail(sid, st, f"GOAWAY {error_name(code)}", SERVER_ERROR, ts, seq)

    def _fail(self, sid: int, st: _Stream, text: str, status: int, ts: int, seq: int) -> None:
        if st.resp is not None:
            st.resp.response_status = status
            st.resp.response_exception = text
            self._finish_response(st, None)
            return
        msg = self._response(sid, None, ts, seq, st.grpc)
        msg.response_status = status
        msg.response_exception = text
        self._out.append(msg)


def upgrade_parser(config: L7Config, request_headers: Mapping[str, str] | Iterable[tuple[str, str]], *,
                   ts: int = 0, tcp_seq: int = 0, report_request: bool = True) -> Http2Parser:
    """The parser for a connection upgraded from HTTP/1.1 to h2c (RFC 7540 §3.2).

    For the HTTP/1 parser, once it has seen a request with ``Upgrade: h2c`` and
    ``HTTP2-Settings`` answered by ``101 Switching Protocols``:

    - ``request_headers``: that request's headers, names lower-case, with its request line as
      ``:method`` and ``:path`` (``host`` stands for ``:authority``). The upgraded request is
      stream 1, half-closed by the client: its response comes as HTTP/2 HEADERS on stream 1.
    - ``ts`` / ``tcp_seq``: those of the HTTP/1 request. With ``report_request`` the stream-1
      request is returned by the first ``feed`` call, so that its HTTP/2 response pairs with it
      (the HTTP/1 parser reports the upgrade exchange itself, the request and its 101).
    - Feed the bytes that follow the 101's header block on the server side (the server's
      SETTINGS), and those that follow the request on the client side (the client's
      connection preface), with ``seq`` advanced to them.

    HTTP2-Settings (the client's SETTINGS payload, base64url) sets the server-side limits.
    """
    parser = Http2Parser(config)
    items = request_headers.items() if isinstance(request_headers, Mapping) else request_headers
    h: dict[bytes, bytes] = {}
    for name, value in items:
        h.setdefault(name.lower().encode("latin-1", "replace"), value.encode("utf-8", "replace"))
    h.setdefault(b":method", b"GET")
    if b":authority" not in h and b"host" in h:
        h[b":authority"] = h[b"host"]
    settings = h.get(b"http2-settings")
    if settings:
        try:
            raw = base64.urlsafe_b64decode(settings.strip() + b"=" * (-len(settings.strip()) % 4))
            parser._settings(parser._c, raw[:len(raw) - len(raw) % 6])
        except ValueError:
            pass                             # the server answered 101 regardless: keep its defaults
    parser._max_client_sid = 1
    st = parser._new_stream(1)
    msg = parser._request(1, h, ts, tcp_seq)
    st.grpc = msg.l7_protocol == GRPC
    if report_request:
        msg.length = _int(h.get(b"content-length")) or 0
        parser._pending.append(msg)
    return parser


SPEC = Spec(HTTP2, "HTTP2", frozenset({8082, 50051, 80, 443}), frozenset({6}), check, Http2Parser)
