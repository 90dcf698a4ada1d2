"""Redis (l7_protocol 80): RESP2 / RESP3 commands and replies, pipelined, paired in order.

Each direction is parsed as a stream of RESP values by a resumable state machine: a value may be
cut anywhere across segments, bulk strings are consumed without buffering (only a clipped prefix
is kept), so a 500 MB GET reply costs no memory, and a bulk string's length lets the parser step
over bytes the capture did not keep.

Decisions where the protocol or DeepFlow leave a choice (datamodel §2):

- ``request_type`` is the command name upper-case; for container commands (CLIENT, CONFIG, …, see
  ``CONTAINER_COMMANDS``) the subcommand is added ("CLIENT SETNAME"): Redis itself treats them as
  separate commands (ACL, COMMAND INFO), and "CONFIG GET" / "CONFIG SET" aggregate very differently.
- ``request_resource`` is the whole command line, as DeepFlow logs it ("SET user:1 name-1"): each
  argument clipped to ``config.redis_arg_max``, the line to ``config.sql_max``.
- ``endpoint`` is ``request_type``: DeepFlow leaves it empty, but a command is Redis's natural
  low-cardinality aggregation key; the key is left out (unbounded cardinality).
- Replies: errors (``-`` and RESP3 ``!``) → SERVER_ERROR, ``response_exception`` = the error text
  (DeepFlow: "-ERR → server error"); everything else OK, nil included. ``response_result`` renders
  the reply short: scalars as text, nil as "(nil)", aggregates as their elements space-joined
  (RESP3 maps as "k v k v", like RESP2's flat arrays), clipped to ``config.result_max``.
- Not responses, never paired: RESP3 push messages (``>``), pub/sub messages (RESP2 arrays
  "message"/"pmessage"/"smessage" once the client subscribed), and the extra confirmations of a
  SUBSCRIBE naming several channels (the first one answers the command).
- Empty inline lines (redis-cli ``--pipe`` sends one before its closing ECHO) and ``*0`` requests
  get no reply from Redis and produce no request.
- Truncated capture: when a hole swallows RESP framing (a header, not bulk content), the messages
  that began in that segment are reported as one — the first of them — and the side resumes at its
  next segment that starts like a message. Both sides collapse segment by segment the same way, so
  pipelined batches cut short still pair; a hole covering a whole segment stands for one message
  (a request with no type, a response with status PARSE_FAILED).
"""

from __future__ import annotations

from collections import deque
from typing import ClassVar

from collector.l7.base import (
    MASK32,
    PARSE_FAILED,
    REDIS,
    REQUEST,
    RESPONSE,
    SERVER_ERROR,
    GiveUp,
    L7Config,
    L7Message,
    Spec,
)
from collector.l7.common import captured_text, clip

# commands whose first argument names a subcommand (COMMAND DOCS / ACL treat "client|setname" as one)
CONTAINER_COMMANDS = frozenset({
    "ACL", "CLIENT", "CLUSTER", "COMMAND", "CONFIG", "FUNCTION", "LATENCY", "MEMORY", "MODULE", "OBJECT",
    "PUBSUB", "SCRIPT", "SLOWLOG", "XGROUP", "XINFO",
})
SUBSCRIBE_COMMANDS = frozenset({"SUBSCRIBE", "PSUBSCRIBE", "SSUBSCRIBE", "UNSUBSCRIBE", "PUNSUBSCRIBE",
                                "SUNSUBSCRIBE"})
PUBSUB_MESSAGES = frozenset({"message", "pmessage", "smessage"})

REPLY_TYPES = b"+-:$*%~_#,(!=>|"
_SIMPLE = frozenset(b"+-:,(")
_AGGREGATES = frozenset(b"*%~>|")
_BULKS = frozenset(b"$=!")
STAR, DOLLAR, PLUS, MINUS, BANG, GT, PIPE, PERCENT, EQUALS, NIL, BOOL = b"*$+-!>|%=_#"

MAX_BULK = 512 * 1024 * 1024       # Redis's proto-max-bulk-len
MAX_COUNT = 1 << 32
MAX_DEPTH = 64
MAX_PENDING = 65536
INLINE_MAX = 64 * 1024             # Redis refuses longer inline requests


_GRAPHIC = bytes(range(0x21, 0x7F))


def _graphic(b: bytes) -> bool:
    """Non-empty printable ASCII without spaces (command names, status words)."""
    return bool(b) and not b.translate(None, _GRAPHIC)


def _int(line: bytes) -> int | None:
    """The integer of a RESP header line after its type byte (digits with an optional minus)."""
    body = line[1:]
    if not body or len(body) > 20 or not (body.isdigit() or (body[:1] == b"-" and body[1:].isdigit())):
        return None
    return int(body)


def check(payload: bytes, from_client: bool) -> bool:
    """A command as a RESP array of bulk strings (``*N\\r\\n$L\\r\\nNAME\\r\\n``) from the client; a
    well-formed first reply line from the server (simple strings without spaces, to leave POP3's
    "+OK ready" alone)."""
    e = payload.find(b"\r\n", 0, 512)
    if e < 2:
        return payload[:3] == b"_\r\n" and not from_client
    line = payload[:e]
    t = line[0]
    if from_client:
        if t != STAR:
            return False
        n = _int(line)
        if n is None or not 0 < n <= 1 << 20:
            return False
        e2 = payload.find(b"\r\n", e + 2, e + 20)
        blen = _int(payload[e + 2:e2]) if e2 > 0 and payload[e + 2] == DOLLAR else None
        if blen is None or not 0 < blen <= 64:
            return False
        name = payload[e2 + 2:e2 + 2 + blen]
        tail = payload[e2 + 2 + blen:e2 + 4 + blen]
        return name.isalpha() and tail in (b"\r\n", b"\r", b"") and (len(name) == blen or not tail)
    rest = payload[e + 2:]
    if t == PLUS:
        return len(line) <= 65 and _graphic(line[1:])
    if t == MINUS:                     # "-CODE message": Redis always explains
        word, _, text = line[1:].partition(b" ")
        return len(word) >= 2 and word.isalpha() and word.isupper() and bool(text) and line.isascii()
    if t == ord(":"):
        return _int(line) is not None
    if t == ord("("):                  # big number: any count of digits
        return line[1:].removeprefix(b"-").isdigit()
    if t == ord(","):
        try:
            float(line[1:])
        except ValueError:
            return False
        return True
    if t == ord("#"):
        return line in (b"#t", b"#f")
    n = _int(line)
    if n is None:
        return False
    if t in _BULKS:
        if n < 0:
            return t == DOLLAR and n == -1 and not rest
        if len(rest) < n + 2:          # a big value continues in the next segment
            return n <= MAX_BULK and len(payload) >= 256
        return rest[n:n + 2] == b"\r\n"
    if t in _AGGREGATES:
        if n <= 0:
            return n >= -1 and not rest
        return not rest or rest[0] in REPLY_TYPES
    return False


class _Msg:
    """A request or reply being read."""

    __slots__ = ("abs", "argc", "end", "holes", "partial", "seq", "tlen", "tokens", "top", "ts")

    def __init__(self, abs_: int, ts: int, seq: int) -> None:
        self.abs = abs_            # stream offset of the first byte
        self.end = abs_            # stream offset after the last byte, once complete
        self.ts = ts
        self.seq = seq
        self.top = 0               # type byte of the top-level value (0: inline command)
        self.tokens: list[str] = []
        self.tlen = 0              # characters in tokens, to stop collecting past the clip limit
        self.argc = 0
        self.holes = 0             # uncaptured bytes inside
        self.partial = False       # framing lost inside: cut short


class _Side:
    """Parse state of one direction."""

    __slots__ = ("abs", "attr", "bulk_cap", "bulk_keep", "bulk_left", "bulk_len", "bulk_type", "line",
                 "line_ts", "msg", "skip", "stack")

    def __init__(self) -> None:
        self.abs = 0               # stream offset of the next byte (holes included)
        self.line = b""            # a line cut by the segment end
        self.line_ts = 0
        self.bulk_left = 0         # bytes of the current bulk string still to come, CRLF included
        self.bulk_len = 0
        self.bulk_type = 0
        self.bulk_keep = bytearray()
        self.bulk_cap = 0
        self.stack: list[list[int]] = []   # open aggregates: [values left, is attribute]
        self.attr = 0              # depth of attribute maps (metadata, not part of the reply)
        self.msg: _Msg | None = None
        self.skip = False          # framing lost: wait for a segment that starts a message

    def reset(self) -> None:
        self.line = b""
        self.bulk_left = 0
        self.bulk_keep = bytearray()
        self.stack = []
        self.attr = 0
        self.msg = None


class RedisParser:
    """One Redis connection: a request per command, a response per reply, paired in order."""

    protocol: ClassVar[int] = REDIS
    name: ClassVar[str] = "Redis"
    timeout_s: ClassVar[float] = 120.0

    def __init__(self, config: L7Config) -> None:
        self.config = config
        self.client = _Side()
        self.server = _Side()
        self.pending: deque[str] = deque()     # request types awaiting a reply
        self.pubsub = False                    # the client subscribed: RESP2 messages arrive unasked

    def feed(self, payload: bytes, length: int, from_client: bool, ts: int, seq: int) -> list[L7Message] | GiveUp:
        side = self.client if from_client else self.server
        try:
            done = self._parse(side, payload, max(length, len(payload)), from_client, ts, seq)
        except _Bad as e:
            return GiveUp(f"redis: {e}")
        except Exception as e:     # a bug must not stop the pipeline: report it as a reason
            return GiveUp(f"redis: parser error ({type(e).__name__})")
        out: list[L7Message] = []
        for m in done:
            msg = self._request(m) if from_client else self._response(m)
            if msg is not None:
                out.append(msg)
        return out

    def flush(self, ts: int) -> list[L7Message]:
        """The flow ended: a reply still being read is reported as far as it came."""
        side = self.server
        m = side.msg
        if m is None:
            return []
        if side.bulk_left and not side.attr:                     # the value being read, as far as it came
            keep = bytes(side.bulk_keep)
            self._token(m, captured_text(keep, len(keep) == side.bulk_len, side.bulk_cap))
        side.reset()
        m.partial = True
        m.end = self.server.abs
        msg = self._response(m)
        return [msg] if msg is not None else []

    # -- framing ---------------------------------------------------------------------------------

    def _parse(self, side: _Side, payload: bytes, length: int, from_client: bool, ts: int, seq: int) -> list[_Msg]:
        """RESP messages the segment completes, collapsed when a hole loses the framing."""
        seg_abs = side.abs
        side.abs += length
        hole = length - len(payload)
        if side.skip:
            if not self._starts_message(payload, from_client):
                return []
            side.skip = False
        done: list[_Msg] = []
        data = payload
        base = seg_abs
        if side.line:
            data = side.line + payload
            base -= len(side.line)
            side.line = b""
        n = len(data)
        pos = 0
        cap_arg = self.config.redis_arg_max if from_client else self.config.result_max
        while pos < n:
            if side.bulk_left:                                   # inside a bulk string
                left = side.bulk_left
                take = left if left < n - pos else n - pos
                room = side.bulk_cap - len(side.bulk_keep)
                content = left - 2                               # content bytes still to come
                if room > 0 and content > 0:
                    k = min(take, content, room)
                    side.bulk_keep += data[pos:pos + k]
                side.bulk_left = left - take
                pos += take
                if side.bulk_left:
                    break
                if self._value(side, side.bulk_type, bytes(side.bulk_keep), side.bulk_len, cap_arg):
                    done.append(self._close(side, base + pos))
                continue
            msg = side.msg
            if msg is None:
                mabs = base + pos
                msg = side.msg = _Msg(mabs, ts if mabs >= seg_abs else side.line_ts, (seq + mabs - seg_abs) & MASK32)
                if from_client and data[pos] != STAR:            # inline command: a text line
                    e = data.find(b"\n", pos)
                    if e < 0:
                        if n - pos > min(INLINE_MAX, self.config.max_buffer):
                            raise _Bad("inline request too long")
                        self._keep_line(side, data, pos, mabs, seg_abs, ts)
                        side.msg = None
                        break
                    line = data[pos:e]
                    pos = e + 1
                    args = line.split()
                    side.msg = None
                    if not args:
                        continue                                 # Redis ignores empty lines
                    if not _graphic(args[0]):
                        raise _Bad("bad inline command")
                    msg.top = 0
                    for a in args:
                        self._token(msg, captured_text(a, True, cap_arg))
                    msg.argc = len(args)
                    msg.end = base + pos
                    done.append(msg)
                    continue
            e = data.find(b"\r\n", pos)
            if e < 0:
                if n - pos > self.config.max_buffer:
                    raise _Bad(f"line longer than {self.config.max_buffer} bytes")
                if side.msg is not None and side.msg.abs == base + pos and not side.msg.tokens and not side.stack:
                    side.msg = None                               # the message starts with this line
                self._keep_line(side, data, pos, base + pos, seg_abs, ts)
                break
            t = data[pos]
            if from_client and ((side.stack and t != DOLLAR) or (not side.stack and t != STAR)):
                raise _Bad("request is not an array of bulk strings")
            if t in _BULKS:
                blen = _int(data[pos:e])
                if blen is None or blen > MAX_BULK or blen < -1 or (blen == -1 and t != DOLLAR):
                    raise _Bad("bad bulk length")
                pos = e + 2
                if not side.stack:
                    side.msg.top = t
                if blen < 0:                                     # nil
                    if self._value(side, NIL, b"", -1, cap_arg):
                        done.append(self._close(side, base + pos))
                    continue
                end = pos + blen
                if end + 2 <= n:                                 # all here
                    if data[end:end + 2] != b"\r\n":
                        raise _Bad("bulk string not followed by CRLF")
                    keep = data[pos:end if blen <= cap_arg else pos + cap_arg]
                    pos = end + 2
                    if self._value(side, t, keep, blen, cap_arg):
                        done.append(self._close(side, base + pos))
                    continue
                side.bulk_type, side.bulk_len, side.bulk_left = t, blen, blen + 2
                side.bulk_cap = cap_arg
                side.bulk_keep = bytearray()
                continue
            if t in _AGGREGATES:
                count = _int(data[pos:e])
                if count is None or count < -1 or count > MAX_COUNT:
                    raise _Bad("bad aggregate length")
                pos = e + 2
                if not side.stack and t != PIPE:
                    side.msg.top = t
                if from_client and count <= 0:                   # "*0" / "*-1": Redis ignores them
                    side.msg = None
                    continue
                if count < 0:
                    closed = self._value(side, NIL, b"", -1, cap_arg)
                elif count == 0:
                    closed = self._value(side, t, b"", -2, cap_arg)
                else:
                    if len(side.stack) >= MAX_DEPTH:
                        raise _Bad("aggregates nested too deep")
                    if t == PIPE:
                        side.attr += 1
                    side.stack.append([count * 2 if t in b"%|" else count, t == PIPE])
                    continue
                if closed:
                    done.append(self._close(side, base + pos))
                continue
            if t not in REPLY_TYPES or t == ord("?"):
                raise _Bad(f"bad type byte 0x{t:02x}")
            line = data[pos + 1:e]
            pos = e + 2
            if not side.stack:
                side.msg.top = t
            if self._value(side, t, line, -1, cap_arg):
                done.append(self._close(side, base + pos))
        if hole > 0:
            done = self._hole(side, hole, done, seg_abs, len(payload), ts, seq, from_client)
        return done

    def _keep_line(self, side: _Side, data: bytes, pos: int, abs_: int, seg_abs: int, ts: int) -> None:
        """Carry a line cut by the segment end over to the next segment."""
        if not side.line:
            side.line_ts = ts if abs_ >= seg_abs else side.line_ts
        side.line = data[pos:]

    def _hole(self, side: _Side, hole: int, done: list[_Msg], seg_abs: int, captured: int, ts: int, seq: int,
              from_client: bool) -> list[_Msg]:
        """Step over ``hole`` uncaptured bytes at the segment end; collapse when framing is lost."""
        cur = seg_abs + captured                                 # stream offset reached
        if side.bulk_left and not side.line:                     # bulk content: its length spans the hole
            step = hole if hole < side.bulk_left else side.bulk_left
            side.bulk_left -= step
            hole -= step
            cur += step
            side.msg.holes += step
            if side.bulk_left == 0:
                keep = bytes(side.bulk_keep)
                if self._value(side, side.bulk_type, keep, side.bulk_len, side.bulk_cap):
                    done.append(self._close(side, cur))
            if hole == 0:
                return done
        # framing lost: the messages that began in this segment count as one, running to its end
        seg_end = cur + hole
        first = next((m for m in done if m.abs >= seg_abs), None)
        if first is not None:
            del done[done.index(first) + 1:]
            first.holes += seg_end - max(first.end, seg_abs + captured)
            m = first
        else:
            line = side.line
            m = side.msg
            if m is None:                                        # a message starts in the cut line or the hole
                m = _Msg(cur - len(line), side.line_ts if line else ts, (seq + captured - len(line)) & MASK32)
                if line and not from_client:
                    m.top = line[0]
            m.holes += seg_end - cur
            if line:                                             # what the cut line says
                cap = self.config.redis_arg_max if from_client else self.config.result_max
                if from_client and not side.stack and line[0] != STAR:
                    for a in line.split():
                        self._token(m, captured_text(a, True, cap))
                elif line[0] in _SIMPLE and not side.attr:
                    self._token(m, captured_text(line[1:], False, cap))
            done.append(m)
        m.end = seg_end
        m.partial = True
        side.reset()
        side.skip = True
        return done

    def _starts_message(self, payload: bytes, from_client: bool) -> bool:
        """Can parsing resume at this segment's first byte?"""
        if from_client:
            payload = payload.lstrip(b"\r\n")             # empty inline lines get no reply
            if not payload:
                return False
            t = payload[0]
            return (t == STAR and payload[1:2].isdigit()) or (0x41 <= t <= 0x7A and payload[:1].isalpha())
        return bool(payload) and payload[0] in REPLY_TYPES

    # -- values ----------------------------------------------------------------------------------

    def _value(self, side: _Side, t: int, raw: bytes, size: int, cap: int) -> bool:
        """Record a value at the current nesting; True when it completes the top-level message.
        ``size``: bulk length (``raw`` may be a cut prefix), -1 a line value, -2 an empty aggregate."""
        if not side.attr:
            if size >= 0:
                if size == len(raw) and size <= cap:             # the common case: all of it, short
                    text = raw.decode("utf-8", "replace")
                else:
                    text = captured_text(raw, size == len(raw), cap)
                if t == EQUALS and len(text) >= 4 and text[3] == ":":
                    text = text[4:]                              # verbatim string: drop "txt:"
            elif size == -2:
                text = "(empty array)" if not side.stack else ""
            elif t == NIL:
                text = "(nil)"
            elif t == BOOL:
                text = "true" if raw == b"t" else "false"
            else:
                text = raw.decode("utf-8", "replace")
                if len(text) > cap:
                    text = clip(text, cap)
            msg = side.msg
            msg.argc += 1
            if text and msg.tlen <= self.config.sql_max:         # bounded: the rendering is clipped anyway
                msg.tokens.append(text)
                msg.tlen += len(text) + 1
        stack = side.stack
        while stack:
            top = stack[-1]
            top[0] -= 1
            if top[0] > 0:
                return False
            stack.pop()
            if top[1]:                                           # an attribute map ends: the value follows
                side.attr -= 1
                return False
        return True

    def _token(self, msg: _Msg, text: str) -> None:
        if msg.tlen <= self.config.sql_max:
            msg.tokens.append(text)
            msg.tlen += len(text) + 1

    @staticmethod
    def _close(side: _Side, end: int) -> _Msg:
        msg = side.msg
        side.msg = None
        msg.end = end
        return msg

    # -- messages --------------------------------------------------------------------------------

    def _request(self, m: _Msg) -> L7Message | None:
        length = m.end - m.abs
        tokens = m.tokens
        rtype = tokens[0].upper() if tokens else ""
        if rtype in CONTAINER_COMMANDS and len(tokens) > 1:
            rtype = f"{rtype} {tokens[1].upper()}"
        if rtype in SUBSCRIBE_COMMANDS:
            self.pubsub = True
        elif rtype == "RESET":
            self.pubsub = False
        if len(self.pending) >= MAX_PENDING:
            self.pending.popleft()
        self.pending.append(rtype)
        text = " ".join(tokens + ["..."] if m.partial and not (tokens and tokens[-1].endswith("...")) else tokens)
        return L7Message(REQUEST, m.ts, m.seq, request_type=rtype, endpoint=rtype, l7_protocol=REDIS,
                         request_resource=clip(text, self.config.sql_max),
                         length=length, captured=length - m.holes)

    def _response(self, m: _Msg) -> L7Message | None:
        length = m.end - m.abs
        top = m.top
        tokens = m.tokens
        if top in (STAR, GT) and tokens:
            kind = tokens[0].lower()
            if kind.upper() in SUBSCRIBE_COMMANDS and (self.pubsub or top == GT):
                head = self.pending[0] if self.pending else None
                if head != kind.upper():
                    return None                                  # another channel's confirmation
            elif top == GT or (self.pubsub and kind in PUBSUB_MESSAGES):
                return None                                      # pushed, not an answer
        elif top == GT:
            return None
        if self.pending:
            self.pending.popleft()
        limit = self.config.result_max
        cut = m.partial and tokens and top in _AGGREGATES and not tokens[-1].endswith("...")
        text = " ".join(tokens + ["..."] if cut else tokens)
        msg = L7Message(RESPONSE, m.ts, m.seq, l7_protocol=REDIS, length=length, captured=length - m.holes)
        if top in (MINUS, BANG):
            msg.response_status = SERVER_ERROR
            msg.response_exception = clip(text, limit)
        elif m.partial and not tokens:
            msg.response_status = PARSE_FAILED
        else:
            msg.response_result = clip(text, limit)
        return msg


class _Bad(Exception):
    """Bytes that are not RESP: the flow is given up with this reason."""


SPEC = Spec(REDIS, "Redis", frozenset({6379}), frozenset({6}), check, RedisParser)
