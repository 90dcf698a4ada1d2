"""HTTP/1.0 and 1.1 (l7_protocol 20): the requests and responses of one TCP connection, in order.

Each direction is a byte stream framed by RFC 9112 §6: a header block up to the empty line, then
a body delimited by Content-Length, by chunked transfer coding, or by the end of the connection.
Requests and responses pair in order (``session_id`` None), so the parser remembers the methods
of the requests not yet answered: a HEAD's response has no body, a CONNECT's 2xx starts a tunnel.

Decisions where HTTP leaves the observer a choice:

- A message is emitted when its header block is complete (its ``ts`` and ``tcp_seq`` are those
  of its first byte), except a chunked one, emitted at its last chunk so that ``length`` is the
  body's total. A chunked body still open ``_CHUNK_HOLD_US`` after its headers (server-sent
  events, long downloads) is emitted then with ``length`` None, and a chunked request is emitted
  at the latest just before its response, so a request never follows its response.
- Interim 1xx responses (100 Continue, 102, 103) are not emitted: the final response answers the
  request. 101 and a CONNECT's 2xx end HTTP on the flow (``ends_flow``).
- A body that runs to the end of the connection (a response without Content-Length or chunked)
  is not parsed: its ``length`` is None and the direction is ignored from there on.
- Bytes the capture did not keep (snaplen, gaps in the sequence numbers) are skipped by count
  inside bodies and chunks. When they hide a header block's end or a chunk's framing, the message
  is emitted with the fields parsed so far (a cut status line: ``response_status`` PARSE_FAILED)
  and the direction resynchronises on the next segment that begins with a request or status
  line, as DeepFlow's per-packet parser does; until then its segments are skipped.
- Bytes that prove the flow is not HTTP (a bad start line, a header line without ':', a bad chunk
  size, conflicting Content-Lengths, a header block over ``max_buffer``) give the flow up.
"""

from __future__ import annotations

from collections import deque
from functools import lru_cache
from http import HTTPStatus

from collector.l7.base import (
    CLIENT_ERROR,
    HTTP1,
    MASK32,
    PARSE_FAILED,
    REQUEST,
    RESPONSE,
    SERVER_ERROR,
    GiveUp,
    L7Config,
    L7Message,
    Spec,
)
from collector.l7.common import clip, http_endpoint, trace_context, trace_names, w3c_context

METHODS = frozenset((b"GET", b"HEAD", b"POST", b"PUT", b"DELETE", b"CONNECT", b"OPTIONS", b"TRACE", b"PATCH"))
_METHOD_STR = {m: m.decode() for m in METHODS}
_VERSIONS = {b"HTTP/1.1": "1.1", b"HTTP/1.0": "1.0"}
# The usual status lines' first 13 bytes ("HTTP/1.1 200 ", or all of "HTTP/1.1 204") → (code,
# version): one lookup instead of the checks of _is_status_line; other lines take those checks.
_STATUS_LINES = {b"HTTP/1.%d %d%s" % (minor, code, sp): (code, f"1.{minor}")
                 for minor in (0, 1) for code in range(100, 600) for sp in (b"", b" ")}
_TOKEN_UPPER = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ-_"    # other methods (WebDAV, SSDP) are upper-case tokens
_HEX = b"0123456789abcdefABCDEF"
_CHUNK_LINE_MAX = 4096        # a chunk-size line with its extensions; longer is not HTTP
_CHUNK_HOLD_US = 5_000_000    # emit a chunked message still open this long after its headers
_PENDING_MAX = 256            # methods remembered for responses (pipelining depth)
_BLANK_MAX = 64               # CR/LF bytes tolerated between two messages

# What a direction is reading.
HEADERS, BODY, CHUNK_LINE, CHUNK_DATA, TRAILER, TO_CLOSE, RESYNC = range(7)

# Headers the parser reads (lower-case name → key); the rest are skipped undecoded.
_BASE_HEADERS = {
    b"host": "host", b"content-length": "content-length", b"transfer-encoding": "transfer-encoding",
    b"x-request-id": "x-request-id", b"x-forwarded-for": "x-forwarded-for", b"user-agent": "user-agent",
    b"referer": "referer", b"expect": "expect", b"upgrade": "upgrade", b"http2-settings": "http2-settings",
}


def _is_request_line(p: bytes) -> bool:
    """``METHOD SP target SP HTTP/1.x`` with a known method. A line cut by the end of the payload
    is accepted when what is visible can only be that: a known method and an origin-form,
    absolute http(s) or asterisk target (CONNECT: an authority)."""
    sp = p.find(b" ", 0, 8)
    if sp < 3 or p[:sp] not in METHODS:
        return False
    eol = p.find(b"\n", sp)
    line = p[sp + 1:eol] if eol >= 0 else p[sp + 1:]
    if eol >= 0 and line[-1:] == b"\r":
        line = line[:-1]
    target, space, ver = line.partition(b" ")
    if not target or b"\r" in target or b"\t" in target:
        return False
    if eol < 0 and not space:      # cut inside the target
        return target[:1] in (b"/", b"*") or target[:7] == b"http://" or target[:8] == b"https://" \
            or (p[:sp] == b"CONNECT" and target[:1].isalnum())
    if eol < 0:                    # cut inside the version
        return bool(ver) and b"HTTP/1."[:len(ver)] == ver[:7] and (len(ver) < 8 or (len(ver) == 8 and ver[7:].isdigit()))
    return len(ver) == 8 and ver[:7] == b"HTTP/1." and 48 <= ver[7] <= 57


def _is_status_line(p: bytes) -> bool:
    """``HTTP/1.x NNN`` followed by a space, a line end or the end of the payload."""
    return len(p) >= 12 and p[:7] == b"HTTP/1." and 48 <= p[7] <= 57 and p[8] == 32 \
        and p[9:12].isdigit() and (len(p) == 12 or p[12] in (32, 13, 10))


def _plausible_start(p: bytes | bytearray, is_req: bool) -> bool:
    """Can this incomplete header block still be an HTTP message? Catches garbage before it
    fills the buffer. A complete first line must be a start line; a cut one a prefix of it."""
    eol = p.find(b"\n", 0, 8192)
    if eol >= 0:
        line = bytes(p[:eol]).rstrip(b"\r")
        if not is_req:
            return _is_status_line(line)
        parts = line.split(b" ")
        return len(parts) == 3 and _method_ok(parts[0]) and _version(parts[2]) is not None
    head = bytes(p[:16])
    if not is_req:
        return head[:7] == b"HTTP/1."[:len(head)]
    method = head.partition(b" ")[0]
    return bool(method) and not method.translate(None, _TOKEN_UPPER)


def _method_ok(method: bytes) -> bool:
    return method in METHODS or (0 < len(method) <= 24 and not method.translate(None, _TOKEN_UPPER))


def _version(ver: bytes) -> str | None:
    v = _VERSIONS.get(ver)
    if v is None and len(ver) == 8 and ver[:7] == b"HTTP/1." and 48 <= ver[7] <= 57:
        v = ver[5:].decode()
    return v


def _length_value(value: bytes) -> int | None:
    """Content-Length as a number; a list of equal values counts as one (RFC 9110 §8.6)."""
    if b"," in value:
        values = {v.strip() for v in value.split(b",")}
        if len(values) != 1:
            return None
        value = values.pop()
    if not value.isdigit() or len(value) > 18:
        return None
    return int(value)


def _is_chunked(te: bytes) -> bool:
    """Is chunked the final transfer coding (RFC 9112 §6.3)?"""
    return te.rpartition(b",")[2].strip().lower() == b"chunked"


def _endpoint(target: str, depth: int, strip_ids: bool) -> str:
    """Endpoint of a request target; absolute-form targets (to proxies) use their path."""
    if target[:1] != "/" and "://" in target:
        target = "/" + target.partition("://")[2].partition("/")[2]
    return http_endpoint(target, depth=depth, strip_ids=strip_ids)


# -- what the flows of a process share -----------------------------------------------------------
# The same request targets and header lines come again and again (one client library, one server,
# this second's Date), so what a parser works out from them is kept per configuration, bounded
# (a cache starts over when full), for every flow. Only single dict operations touch these (the
# capture and eBPF threads may both parse HTTP).

_TARGETS_MAX = 8192          # request targets remembered
_LINES_MAX = 4096            # header lines remembered (a message may add its own before the check)
_LINE_KEEP = 256             # longest header line remembered (cookies and tokens rarely repeat)
_IGNORED = ()                # a remembered header line whose field is not read here (falsy)
_ONE_OF = frozenset(("content-length", "x-forwarded-for"))   # fields that must not simply overwrite


class _Vocabulary:
    """The header names one trace-header setting reads, and the header lines seen."""

    __slots__ = ("lines", "trace", "wanted")

    def __init__(self, trace_headers: tuple[str, ...]) -> None:
        wanted = dict(_BASE_HEADERS)
        trace = trace_names(trace_headers)
        for h in trace:
            wanted[h.encode()] = h
        self.wanted = wanted                      # lower-case name → key
        self.trace = frozenset(trace)
        self.lines: dict[bytes, tuple] = {}   # see HttpParser._message


_vocabularies: dict[tuple[str, ...], _Vocabulary] = {}
_target_caches: dict[tuple[int, bool], dict[bytes, tuple[str, str]]] = {}


def _vocabulary(trace_headers: tuple[str, ...]) -> _Vocabulary:
    key = tuple(trace_headers)
    v = _vocabularies.get(key)
    if v is None:
        v = _vocabularies[key] = _Vocabulary(key)
    return v


def _target_cache(depth: int, strip_ids: bool) -> dict[bytes, tuple[str, str]]:
    """Request target → (its text, its endpoint) for one endpoint setting: one lookup instead
    of the decoding and the endpoint rules (see HttpParser._new_target)."""
    return _target_caches.setdefault((depth, strip_ids), {})


def _text(value: bytes | bytearray) -> str:
    """Header text as sent; bytes that are not UTF-8 must not cost the message."""
    return value.decode("utf-8", "replace")


class _Side:
    """One direction's reading state."""

    __slots__ = ("after_data", "body", "buf", "buf_seq", "buf_ts", "captured", "expect_100", "is_req", "left",
                 "mode", "msg", "next_seq", "other")

    def __init__(self, is_req: bool) -> None:
        self.is_req = is_req          # sends requests (else responses)
        self.mode = HEADERS
        self.buf = bytearray()        # an incomplete header block or chunk line, at most max_buffer
        self.buf_ts = 0               # ts and seq of the buffered message's first byte
        self.buf_seq = 0
        self.left = 0                 # body or chunk bytes still to skip
        self.msg: L7Message | None = None   # chunked message waiting for its last chunk
        self.body = 0                 # chunked body bytes so far
        self.captured = 0             # captured bytes of the chunked message so far
        self.after_data = False       # a chunk's data ended: its CRLF comes next
        self.expect_100 = False       # headers of an Expect: 100-continue request, no body yet
        self.next_seq: int | None = None
        self.other: _Side = self


class HttpParser:
    """One HTTP/1 flow. ``feed`` never raises: bytes that cannot be HTTP return a GiveUp."""

    protocol = HTTP1
    name = "HTTP"
    timeout_s = 120.0

    def __init__(self, config: L7Config) -> None:
        self._cfg = config
        self._resource_max = config.result_max * 4
        self._text_max = config.result_max
        vocabulary = _vocabulary(config.trace_headers)
        self._wanted = vocabulary.wanted
        self._trace = vocabulary.trace
        self._lines = vocabulary.lines
        self._targets = _target_cache(config.http_endpoint_depth, config.endpoint_strip_ids)
        self._client = _Side(True)
        self._server = _Side(False)
        self._client.other, self._server.other = self._server, self._client
        self._oriented = False
        self._methods: deque[bytes] = deque(maxlen=_PENDING_MAX)
        self._done = False           # given up, or the flow left HTTP (101, CONNECT)
        self._h2c: tuple | None = None  # an h2c upgrade request: (headers, ts, seq)
        self.next_parser = None      # the HTTP/2 parser after an accepted h2c upgrade
        self._gave_up: GiveUp | None = None

    def feed(self, payload: bytes, length: int, from_client: bool, ts: int, seq: int) -> list[L7Message] | GiveUp:
        """The next in-order payload of one direction; the messages whose headers (or last chunk)
        it completes."""
        if self._done:
            return self._gave_up if self._gave_up is not None else []
        side = self._client if from_client else self._server
        n = len(payload)
        r = None
        try:
            # The usual segments are fully captured and in order; most of them are a body's
            # middle or end, or start with a header block that they complete. Same results as
            # the general ``_feed``, with less work.
            nxt = side.next_seq
            if (seq == nxt or nxt is None) and length == n and side.msg is None and not side.expect_100:
                if not self._oriented and n:
                    self._orient(payload, from_client)
                mode = side.mode
                if mode == BODY and n <= side.left:      # length arithmetic only
                    side.next_seq = (seq + n) & MASK32
                    side.left -= n
                    if not side.left:
                        side.mode = HEADERS
                    return []
                if mode == HEADERS and n and not side.buf:
                    r = self._head(side, payload, n, ts, seq)
            if r is None:
                r = self._feed(payload, length, from_client, ts, seq)
        except Exception as e:     # a bug must cost one flow, not the collector
            r = GiveUp(f"http1: internal error {type(e).__name__}: {e}")
        if r.__class__ is GiveUp:
            self._done = True
            self._gave_up = r
            self._client.buf = bytearray()      # what was buffered is no longer needed
            self._server.buf = bytearray()
        return r

    def flush(self, ts: int) -> list[L7Message]:
        """The flow ended: chunked messages still waiting for their last chunk go out (length
        unknown)."""
        out = []
        for side in (self._client, self._server):
            msg = side.msg
            if msg is not None:
                msg.length = None
                msg.captured = side.captured
                out.append(msg)
                side.msg = None
        return out

    def _feed(self, payload: bytes, length: int, from_client: bool, ts: int, seq: int) -> list[L7Message] | GiveUp:
        side = self._client if from_client else self._server
        n = len(payload)
        msg = side.msg
        if side.mode == CHUNK_DATA and seq == side.next_seq and length == n and n < side.left \
                and self._oriented and not side.expect_100 and (msg is None or ts - msg.ts <= _CHUNK_HOLD_US):
            side.next_seq = (seq + n) & MASK32    # a chunk's middle: length arithmetic only
            side.left -= n
            side.captured += n
            return []
        if length < n:
            length = n
        out: list[L7Message] = []
        nxt = side.next_seq
        if nxt is not None and seq != nxt:
            gap = (seq - nxt) & MASK32
            if gap & 0x80000000:              # starts inside bytes already seen: keep the new part
                over = (nxt - seq) & MASK32
                if over >= length:
                    return out
                payload, length, seq = payload[over:], length - over, nxt
                n = len(payload)
            else:                             # bytes never captured
                r = self._lost(side, gap, out)
                if r is not None:
                    return r
        side.next_seq = (seq + length) & MASK32
        msg = side.msg
        if msg is not None and ts - msg.ts > _CHUNK_HOLD_US:
            msg.captured = side.captured
            out.append(msg)
            side.msg = None
        if n:
            if not self._oriented:
                self._orient(payload, from_client)
            if side.mode == RESYNC:
                if not (_is_request_line(payload) if side.is_req else _is_status_line(payload)):
                    return out
                side.mode = HEADERS
            elif side.expect_100:
                # the server refused before the body (RFC 9110 §10.1.1): a new request, no body
                side.expect_100 = False
                if side.mode == BODY and _is_request_line(payload):
                    side.mode, side.left = HEADERS, 0
            r = self._consume(side, payload, ts, seq, out)
            if r is not None:
                return r
        if length > n:
            r = self._lost(side, length - n, out)
            if r is not None:
                return r
        return out

    def _head(self, side: _Side, payload: bytes, n: int, ts: int, seq: int) -> list[L7Message] | GiveUp | None:
        """A segment that begins with a complete CRLF header block (the common case): parse it
        without the general walk's bookkeeping, then hand any rest of the segment (a body's
        end, pipelined messages) to that walk. None: not this case, nothing done."""
        c = payload[0]
        if c == 13 or c == 10:
            return None
        end = payload.find(b"\r\n\r\n")
        if end < 0:
            return None
        head = payload[:end]
        if head.find(b"\n\n") >= 0:        # bare-LF line ends: the general walk (find, not ``in``:
            return None                     # bytes ``in`` formats a TypeError before it searches)
        side.next_seq = (seq + n) & MASK32
        out: list[L7Message] = []
        body_at = end + 4
        r = self._message(side, head.split(b"\r\n"), ts, seq, body_at, n - body_at, 0, out)
        if r is not None:
            return r
        rest = n - body_at
        if rest and not self._done:
            if side.mode == BODY and rest <= side.left:    # the body's start or all of it
                side.left -= rest
                if not side.left:
                    side.mode = HEADERS
                return out
            r = self._consume(side, payload, ts, seq, out, body_at)
            if r is not None:
                return r
        return out

    def _orient(self, payload: bytes, from_client: bool) -> None:
        """The flow table guesses who is the client; the first message says who sends requests."""
        self._oriented = True
        p = payload.lstrip(b"\r\n")
        if (from_client and _is_status_line(p)) or (not from_client and _is_request_line(p)):
            self._client.is_req, self._server.is_req = False, True

    def _consume(self, side: _Side, payload: bytes, ts: int, seq: int, out: list, pos: int = 0) -> GiveUp | None:
        """Walk the captured bytes of one segment (after what the direction had buffered), from
        ``pos`` (only when nothing is buffered)."""
        buf = side.buf
        if buf:
            off = len(buf)
            buf += payload
            data: bytes | bytearray = buf
            base, first_ts = side.buf_seq, side.buf_ts
        else:
            off, data, base, first_ts = 0, payload, seq, ts
        n = len(data)
        blank = 0
        while pos < n:
            mode = side.mode
            if mode == HEADERS:
                c = data[pos]
                if c == 13 or c == 10:       # empty lines between messages (RFC 9112 §2.2)
                    blank += 1
                    if blank > _BLANK_MAX:
                        return GiveUp("http1: empty lines instead of a message")
                    pos += 1
                    continue
                end = data.find(b"\r\n\r\n", pos)
                lf = data.find(b"\n\n", pos, end if end >= 0 else n)
                if lf >= 0:                  # bare-LF line ends, tolerated as RFC 9112 §2.2 allows
                    block = bytes(data[pos:lf]).replace(b"\r\n", b"\n").split(b"\n")
                    body_at = lf + 2
                elif end >= 0:
                    block = (bytes(data[pos:end]) if off else data[pos:end]).split(b"\r\n")
                    body_at = end + 4
                else:
                    if n - pos > self._cfg.max_buffer:
                        return GiveUp(f"http1: header block over max_buffer ({self._cfg.max_buffer} B) without its end")
                    if not _plausible_start(data[pos:pos + 8192], side.is_req):
                        return GiveUp(f"http1: not a {'request' if side.is_req else 'status'} line: "
                                      f"{bytes(data[pos:pos + 40])!r}")
                    self._keep(side, data, pos, (base + pos) & MASK32, ts if pos >= off else first_ts)
                    return None
                r = self._message(side, block, first_ts if pos < off else ts, (base + pos) & MASK32,
                                  body_at - pos, n - body_at, 0, out)
                if r is not None:
                    return r
                pos = body_at
                if self._done:
                    break
            elif mode == BODY:
                left = side.left
                if n - pos >= left:
                    pos += left
                    side.left = 0
                    side.mode = HEADERS
                else:
                    side.left = left - (n - pos)
                    pos = n
            elif mode == CHUNK_DATA:
                left = side.left
                if n - pos >= left:
                    side.captured += left
                    pos += left
                    side.left = 0
                    side.mode = CHUNK_LINE
                    side.after_data = True
                else:
                    side.captured += n - pos
                    side.left = left - (n - pos)
                    pos = n
            elif mode in (CHUNK_LINE, TRAILER):
                nl = data.find(b"\n", pos)
                if nl < 0:
                    limit = _CHUNK_LINE_MAX if mode == CHUNK_LINE else self._cfg.max_buffer
                    if n - pos > limit:
                        return GiveUp(f"http1: chunk line over {limit} B")
                    self._keep(side, data, pos, (base + pos) & MASK32, ts if pos >= off else first_ts)
                    return None
                line = bytes(data[pos:nl])
                if line[-1:] == b"\r":
                    line = line[:-1]
                side.captured += nl + 1 - pos
                pos = nl + 1
                r = self._chunk_line(side, line, out) if mode == CHUNK_LINE else self._trailer(side, line, out)
                if r is not None:
                    return r
            else:                            # TO_CLOSE: the rest of the connection is one body
                pos = n
        if buf:
            buf.clear()
        return None

    @staticmethod
    def _keep(side: _Side, data: bytes | bytearray, pos: int, seq: int, ts: int) -> None:
        """Buffer the incomplete tail of ``data`` (first byte: ``seq``, sent at ``ts``)."""
        side.buf_seq, side.buf_ts = seq, ts
        if data is side.buf:
            if pos:
                del data[:pos]
        else:
            side.buf = bytearray(memoryview(data)[pos:])

    def _chunk_line(self, side: _Side, line: bytes, out: list) -> GiveUp | None:
        """A chunk-size line (RFC 9112 §7.1), or the CRLF closing a chunk's data."""
        if side.after_data:
            if line:
                return GiveUp(f"http1: chunk data not followed by CRLF: {line[:24]!r}")
            side.after_data = False
            return None
        size = line.partition(b";")[0].strip()       # chunk extensions are ignored
        if not size or len(size) > 15 or size.translate(None, _HEX):
            return GiveUp(f"http1: bad chunk size {line[:24]!r}")
        n = int(size, 16)
        if n:
            side.mode, side.left = CHUNK_DATA, n
            side.body += n
        else:
            side.mode = TRAILER
        return None

    def _trailer(self, side: _Side, line: bytes, out: list) -> GiveUp | None:
        """A trailer field, or the empty line ending the chunked message."""
        if line:
            if b":" not in line:
                return GiveUp(f"http1: trailer line without ':': {line[:24]!r}")
            return None
        side.mode = HEADERS
        msg = side.msg
        if msg is not None:
            msg.length = side.body
            msg.captured = side.captured
            out.append(msg)
            side.msg = None
        return None

    def _lost(self, side: _Side, missing: int, out: list) -> GiveUp | None:
        """``missing`` bytes of this direction were not captured: skip them by count where the
        framing says what they are, else emit what is known and resynchronise."""
        mode = side.mode
        if mode == BODY and missing <= side.left:
            side.left -= missing
            if not side.left:
                side.mode = HEADERS
            return None
        if mode == CHUNK_DATA and missing <= side.left:
            side.left -= missing
            if not side.left:
                side.mode, side.after_data = CHUNK_LINE, True
            return None
        if mode in (TO_CLOSE, RESYNC):
            return None
        if mode == HEADERS and side.buf:
            r = self._partial(side, out)
            if r is not None:
                return r
            if self._done:
                return None
        msg = side.msg
        if msg is not None:          # the chunked body's end is lost with its framing
            msg.captured = side.captured
            out.append(msg)
            side.msg = None
        side.buf.clear()
        side.mode, side.left, side.after_data, side.expect_100 = RESYNC, 0, False, False
        return None

    def _partial(self, side: _Side, out: list) -> GiveUp | None:
        """A header block the capture cut: emit the message with its complete lines."""
        data = bytes(side.buf)
        lines = data.replace(b"\r\n", b"\n").split(b"\n")
        cut = 1
        if len(lines) > 1:
            lines.pop()              # the last line is incomplete
        else:
            cut = 2                  # even the start line is
        return self._message(side, lines, side.buf_ts, side.buf_seq, len(data), 0, cut, out)

    def _message(self, side: _Side, lines: list, ts: int, seq: int, hdr_len: int, avail: int, cut: int,
                 out: list) -> GiveUp | None:
        """One header block (``cut`` 1: its end was not captured, 2: nor its start line's end):
        emit the message, set the direction up for its body."""
        headers: dict[str, bytes] = {}
        clen: bytes | None = None
        # What each header line says, (key, stripped value) of a field read here or _IGNORED, is
        # remembered across messages and flows (see _Vocabulary).
        known = self._lines
        if len(known) >= _LINES_MAX:
            known.clear()
        get = known.get
        for line in lines[1:]:
            field = get(line)
            if field is None:
                name, colon, value = line.partition(b":")
                if not colon:
                    if line and line[0] in (32, 9):     # obs-fold: continues the previous field
                        continue
                    return GiveUp(f"http1: header line without ':': {bytes(line[:40])!r}")
                key = self._wanted.get(name.lower())
                field = _IGNORED if key is None else (key, value.strip())
                if len(line) <= _LINE_KEEP:
                    known[line] = field
            if not field:
                continue
            key, value = field
            if key not in _ONE_OF:
                headers[key] = value
            elif key == "content-length":
                if clen is not None and clen != value:
                    return GiveUp("http1: conflicting Content-Length headers")
                clen = value
            else:
                headers.setdefault(key, value)      # the first X-Forwarded-For names the original client
        first = lines[0]
        if side.is_req:
            return self._request(side, first, headers, clen, ts, seq, hdr_len, avail, cut, out)
        return self._response(side, first, headers, clen, ts, seq, hdr_len, avail, cut, out)

    def _request(self, side: _Side, first: bytes, headers: dict, clen: bytes | None, ts: int, seq: int,
                 hdr_len: int, avail: int, cut: int, out: list) -> GiveUp | None:
        parts = first.split(b" ")
        if len(parts) == 3:
            method, target, ver = parts
        elif cut == 2 and len(parts) < 3:
            method, target, ver = parts[0], parts[1] if len(parts) == 2 else b"", b""
        else:
            return GiveUp(f"http1: bad request line {bytes(first[:40])!r}")
        mstr = _METHOD_STR.get(method)
        if mstr is None:
            if cut == 2 and len(parts) == 1:
                mstr = ""                           # the method itself may be cut
            elif _method_ok(method):
                mstr = method.decode()
            else:
                return GiveUp(f"http1: bad method {bytes(method[:24])!r}")
        version = _VERSIONS.get(ver) or _version(ver)
        if version is None:
            if cut != 2:
                return GiveUp(f"http1: bad version {bytes(ver[:16])!r}")
            version = ""
        msg = L7Message(REQUEST, ts, seq)
        msg.l7_protocol = HTTP1
        msg.version = version
        msg.request_type = mstr
        known = self._targets.get(target)
        if known is None:
            known = self._new_target(target)
        path, msg.endpoint = known
        rmax = self._resource_max
        msg.request_resource = path if len(path) <= rmax else clip(path, rmax)
        rare = False
        if headers:
            host = headers.get("host")
            ua = headers.get("user-agent")
            # Host and User-Agent come with almost every request; the other fields read here are
            # rare, so they are looked up only when the block had some.
            rare = len(headers) > (host is not None) + (ua is not None)
            if host is not None:
                v = host.decode("utf-8", "replace")
                msg.request_domain = v if len(v) <= self._text_max else clip(v, self._text_max)
            ref = None
            if rare:
                self._common_headers(msg, headers)
                v = headers.get("x-forwarded-for")
                if v is not None:
                    msg.http_proxy_client = clip(_text(v.partition(b",")[0].strip()), self._text_max)
                ref = headers.get("referer")
            if ua is not None or ref is not None:
                attrs = {}
                if ua is not None:
                    v = ua.decode("utf-8", "replace")
                    attrs["user_agent"] = v if len(v) <= rmax else clip(v, rmax)
                if ref is not None:
                    attrs["referer"] = clip(_text(ref), rmax)
                msg.attributes = attrs
        if not msg.request_domain and path[:1] != "/":
            # no Host: an absolute-form target (to a proxy) or CONNECT's authority names the server
            host = path.partition("://")[2].partition("/")[0] if "://" in path else path if mstr == "CONNECT" else ""
            msg.request_domain = clip(host, self._text_max)
        self._methods.append(method)
        te = None
        if rare:
            up = headers.get("upgrade")
            if up is not None and b"h2c" in up.lower() and "http2-settings" in headers:
                # an h2c upgrade (RFC 7540 §3.2): if the server answers 101, HTTP/2 takes the flow over
                self._h2c = ({":method": mstr, ":path": path, **{k: _text(v) for k, v in headers.items()}}, ts, seq)
            te = headers.get("transfer-encoding")
        if te is not None:
            if not _is_chunked(te):
                return GiveUp("http1: request Transfer-Encoding without final chunked")
            return self._start_chunked(side, msg, hdr_len, cut, out)
        if clen is not None:
            body = int(clen) if clen.isdigit() and len(clen) < 19 else _length_value(clen)
            if body is None:
                return GiveUp(f"http1: bad Content-Length {bytes(clen[:24])!r}")
        else:
            body = None if cut else 0               # a cut block may have hidden it
        msg.length = body
        if cut:
            msg.captured = hdr_len
            out.append(msg)
            return None
        msg.captured = hdr_len + (avail if avail < body else body)
        out.append(msg)
        if body:
            side.mode, side.left = BODY, body
            if avail == 0 and rare and headers.get("expect", b"").lower() == b"100-continue":
                side.expect_100 = True
        return None

    def _response(self, side: _Side, first: bytes, headers: dict, clen: bytes | None, ts: int, seq: int,
                  hdr_len: int, avail: int, cut: int, out: list) -> GiveUp | None:
        known = _STATUS_LINES.get(first[:13])
        if known is not None:
            code, version = known
        elif _is_status_line(first):
            code, version = int(first[9:12]), _version(first[:8]) or ""
        elif cut == 2 and first[:7] == b"HTTP/1."[:len(first[:7])]:
            code, version = None, _version(first[:8]) or ""
        else:
            return GiveUp(f"http1: bad status line {bytes(first[:40])!r}")
        if code is not None and 100 <= code < 200 and code != 101:
            return None                             # interim: the final response answers the request
        method = self._methods.popleft() if self._methods else None
        other = side.other
        if other.msg is not None:                  # its chunked request is still open: it goes first
            other.msg.captured = other.captured
            out.append(other.msg)
            other.msg = None
        msg = L7Message(RESPONSE, ts, seq)
        msg.l7_protocol = HTTP1
        msg.version = version
        msg.response_code = code
        if code is None:
            msg.response_status = PARSE_FAILED
        elif code >= 400:
            msg.response_status = CLIENT_ERROR if code < 500 else SERVER_ERROR
            reason = first[13:].strip()
            text = _text(reason) if reason else _phrase(code)
            msg.response_exception = clip(text, self._text_max)
        if headers:
            self._common_headers(msg, headers)
        if code is not None and (code == 101 or (method == b"CONNECT" and 200 <= code < 300)):
            msg.length = 0                          # the connection now carries another protocol
            msg.ends_flow = True
            if code == 101 and self._h2c is not None:
                from collector.l7.http2 import upgrade_parser

                h, rts, rseq = self._h2c
                # the flow table switches to this parser: the upgraded request is HTTP/2 stream 1,
                # reported again there so its real (HTTP/2) response pairs with it
                self.next_parser = upgrade_parser(self._cfg, h, ts=rts, tcp_seq=rseq)
            msg.captured = hdr_len
            out.append(msg)
            self._done = True
            return None
        if method == b"HEAD" or code == 204 or code == 304:
            body: int | None = 0
        else:
            te = headers.get("transfer-encoding") if headers else None
            if te is not None:
                if _is_chunked(te):
                    return self._start_chunked(side, msg, hdr_len, cut, out)
                body = None                         # another coding: delimited by the close
            elif clen is not None:
                body = int(clen) if clen.isdigit() and len(clen) < 19 else _length_value(clen)
                if body is None:
                    return GiveUp(f"http1: bad Content-Length {bytes(clen[:24])!r}")
            else:
                body = None
            if body is None and not cut:
                side.mode = TO_CLOSE
        msg.length = body
        msg.captured = hdr_len if cut or not body else hdr_len + (avail if avail < body else body)
        out.append(msg)
        if body and not cut:
            side.mode, side.left = BODY, body
        return None

    def _new_target(self, target: bytes) -> tuple[str, str]:
        """(path text, endpoint) of a request target not seen before, remembered (the cache
        starts over when full: ids the endpoint rules do not catch would grow it forever)."""
        path = target.decode("utf-8", "replace")
        cfg = self._cfg
        known = (path, _endpoint(path, cfg.http_endpoint_depth, cfg.endpoint_strip_ids) if path else "")
        cache = self._targets
        if len(cache) >= _TARGETS_MAX:
            cache.clear()
        cache[target] = known
        return known

    def _common_headers(self, msg: L7Message, headers: dict) -> None:
        """Headers both requests and responses carry: X-Request-ID and the trace context."""
        v = headers.get("x-request-id")
        if v is not None:
            t = v.decode("utf-8", "replace")
            msg.x_request_id = t if len(t) <= self._text_max else clip(t, self._text_max)
        trace = self._trace
        if not trace.isdisjoint(headers):
            tp = headers.get("traceparent")
            if tp is not None:             # a valid traceparent decides alone (trace_context's first rule)
                ctx = w3c_context(tp.decode("latin-1"))
                if ctx is not None:
                    msg.trace_id, msg.span_id, msg.parent_span_id = ctx
                    return
            ctx = {k: v.decode("latin-1") for k, v in headers.items() if k in trace}
            msg.trace_id, msg.span_id, msg.parent_span_id = trace_context(ctx)

    def _start_chunked(self, side: _Side, msg: L7Message, hdr_len: int, cut: int, out: list) -> None:
        """A chunked body: the message waits for its last chunk to know its length."""
        if cut:                                     # no framing to follow: report it now
            msg.captured = hdr_len
            out.append(msg)
            return None
        side.mode = CHUNK_LINE
        side.after_data = False
        side.body = 0
        side.captured = hdr_len
        side.msg = msg
        return None


@lru_cache(maxsize=128)
def _phrase(code: int) -> str:
    """The standard reason phrase, for status lines that leave theirs empty."""
    try:
        return HTTPStatus(code).phrase
    except ValueError:
        return ""


def check(payload: bytes, from_client: bool) -> bool:
    """Detection by content: a request line from the client or a status line from the server.
    HTTP/2's preface (``PRI * HTTP/2.0``) has neither a known method nor version 1.x."""
    return _is_request_line(payload) if from_client else _is_status_line(payload)


SPEC = Spec(HTTP1, "HTTP", frozenset({80, 8080, 8000, 8081, 3000, 5000, 9000}), frozenset({6}), check, HttpParser)
