"""Dubbo (l7_protocol 40): the Dubbo 2 protocol's 16-byte header and its Hessian2 (or JSON) body.

Header (https://dubbo.apache.org/en/overview/reference/protocols/tcp/): magic 0xdabb; a flag byte
(0x80 request, 0x40 two-way, 0x20 event, low 5 bits the serialization id); the response status;
an 8-byte request id that pairs a response with its request; the body length. A request body is
dubbo version, service path, service version, method, parameter types, the arguments and an
attachments map (trace context lives there); a response body with status 20 opens with a result
flag, with any other status it is the error message. Heartbeats (event bit) are not requests;
one-way requests (two-way bit clear) get no response, so they are reported as sessions.
"""

from __future__ import annotations

import json
import struct

from collector.l7.base import (
    CLIENT_ERROR,
    DUBBO,
    OK,
    REQUEST,
    RESPONSE,
    SERVER_ERROR,
    SESSION,
    GiveUp,
    L7Config,
    L7Message,
    Spec,
)
from collector.l7.common import clip, trace_context, trace_names
from collector.l7.stream import Framing, HeadFramer

HEADER = struct.Struct(">HBBQi")        # magic, flag, status, request id, body length
MAGIC = 0xDABB
MAGIC_BYTES = b"\xda\xbb"
MAX_BODY = 128 << 20                    # Dubbo's default payload limit is 8 MiB; leave room
FLAG_REQUEST, FLAG_TWO_WAY, FLAG_EVENT = 0x80, 0x40, 0x20
ATTACHMENTS_MAX = 64

# status → (name, response_status): "20 ok; 30/40/90 client; others server" (datamodel §2)
STATUS = {
    20: ("OK", OK), 30: ("CLIENT_TIMEOUT", CLIENT_ERROR), 31: ("SERVER_TIMEOUT", SERVER_ERROR),
    40: ("BAD_REQUEST", CLIENT_ERROR), 50: ("BAD_RESPONSE", SERVER_ERROR), 60: ("SERVICE_NOT_FOUND", SERVER_ERROR),
    70: ("SERVICE_ERROR", SERVER_ERROR), 80: ("SERVER_ERROR", SERVER_ERROR), 90: ("CLIENT_ERROR", CLIENT_ERROR),
    100: ("SERVER_THREADPOOL_EXHAUSTED_ERROR", SERVER_ERROR),
}
# serialization ids (org.apache.dubbo.common.serialize.Constants) whose bodies are read
HESSIAN2, FASTJSON, GSON = 2, 6, 16
JSON_LINES = frozenset({FASTJSON, GSON})
SERIALIZATION = {2: "hessian2", 3: "java", 4: "compactedjava", 6: "fastjson", 7: "nativejava", 8: "kryo",
                 9: "fst", 10: "native-hessian", 11: "avro", 12: "protostuff", 16: "gson", 21: "protobuf-json",
                 22: "protobuf", 23: "fastjson2", 25: "kryo2", 31: "msgpack"}
# result flags of an OK response (DubboCodec): 0/3 exception, 1/4 value, 2/5 null (+3: attachments)
RESULT_EXCEPTION = frozenset({0, 3})


def check(payload: bytes, from_client: bool) -> bool:
    """The magic 0xdabb, a serialization id, a sane body length; from the client a request (or
    heartbeat), from the server a request (its heartbeat) or a known status."""
    if len(payload) < 16:
        return False
    magic, flag, status, _rid, body = HEADER.unpack_from(payload)
    if magic != MAGIC or not flag & 0x1F or not 0 <= body <= MAX_BODY:
        return False
    return bool(flag & FLAG_REQUEST) if from_client else bool(flag & FLAG_REQUEST) or status in STATUS


class _Stop(Exception):
    """The kept bytes end inside a value, or a tag makes no sense."""


class Hessian2:
    """Reads the few Hessian 2.0 values Dubbo needs from a body prefix and skips the others
    (http://hessian.caucho.com/doc/hessian-serialization.html §3-4). String lengths count UTF-16
    units, so a string's byte length is only known by walking it."""

    __slots__ = ("b", "classes", "p")

    def __init__(self, b: bytes, p: int = 0) -> None:
        self.b, self.p = b, p
        self.classes: list[list[str]] = []      # field names of each class definition seen

    def byte(self) -> int:
        if self.p >= len(self.b):
            raise _Stop
        self.p += 1
        return self.b[self.p - 1]

    def peek(self) -> int:
        if self.p >= len(self.b):
            raise _Stop
        return self.b[self.p]

    def skip_bytes(self, n: int) -> None:
        if self.p + n > len(self.b):
            raise _Stop
        self.p += n

    def _chars(self, n: int) -> str:
        """``n`` UTF-16 units of (modified) UTF-8."""
        b, start = self.b, self.p
        if b[start:start + n].isascii() and start + n <= len(b):
            self.p = start + n
            return b[start:start + n].decode("ascii")
        p, units = start, 0
        while units < n:
            if p >= len(b):
                raise _Stop
            c = b[p]
            step, u = (1, 1) if c < 0x80 else (2, 1) if c < 0xE0 else (3, 1) if c < 0xF0 else (4, 2)
            p += step
            units += u
        if p > len(b):
            raise _Stop
        self.p = p
        return b[start:p].decode("utf-8", "replace")

    def string(self, partial: bool = False) -> str | None:
        """A string value (chunks joined); None for null. ``partial``: what was kept of a string
        cut short, rather than nothing."""
        b, p = self.b, self.p
        if p < len(b) and b[p] <= 0x1F:                     # fast path: a short ASCII string
            end = p + 1 + b[p]
            if end <= len(b) and b[p + 1:end].isascii():
                self.p = end
                return b[p + 1:end].decode("ascii")
        parts: list[str] = []
        while True:
            t = self.byte()
            if t <= 0x1F:
                n = t
            elif 0x30 <= t <= 0x33:
                n = (t - 0x30) << 8 | self.byte()
            elif t in (0x52, 0x53):                         # 'R' chunk, 'S' final chunk
                n = self.byte() << 8 | self.byte()
            elif t == 0x4E and not parts:
                return None
            else:
                raise _Stop
            try:
                parts.append(self._chars(n))
            except _Stop:
                if not partial:
                    raise
                parts.append(self.b[self.p:].decode("utf-8", "ignore"))
                self.p = len(self.b)
                return "".join(parts)
            if t != 0x52:
                return "".join(parts)

    def int_(self) -> int:
        t = self.byte()
        if 0x80 <= t <= 0xBF:
            return t - 0x90
        if 0xC0 <= t <= 0xCF:
            return (t - 0xC8) << 8 | self.byte()
        if 0xD0 <= t <= 0xD7:
            return (t - 0xD4) << 16 | self.byte() << 8 | self.byte()
        if t == 0x49:
            self.skip_bytes(4)
            return struct.unpack_from(">i", self.b, self.p - 4)[0]
        raise _Stop

    def is_string(self) -> bool:
        t = self.peek()
        return t <= 0x1F or 0x30 <= t <= 0x33 or t in (0x52, 0x53)

    def class_def(self) -> tuple[str, list[str]]:
        """After a 'C': the class name and its field names (registered for later instances)."""
        name = self.string() or ""
        fields = [self.string() or "" for _ in range(self.count(self.int_()))]
        self.classes.append(fields)
        return name, fields

    def count(self, n: int) -> int:
        if not 0 <= n <= len(self.b) - self.p:             # every element takes at least a byte
            raise _Stop
        return n

    def skip_type(self) -> None:
        if self.is_string():
            self.string()
        else:
            self.int_()

    def skip(self, depth: int = 0) -> None:
        """Skip one value."""
        if depth > 32:
            raise _Stop
        t = self.peek()
        if t <= 0x1F or 0x30 <= t <= 0x33 or t in (0x52, 0x53):
            self.string()
            return
        if 0x80 <= t <= 0xD7 or t == 0x49:
            self.int_()
            return
        self.p += 1
        d = depth + 1
        if 0x20 <= t <= 0x2F:
            self.skip_bytes(t - 0x20)
        elif 0x34 <= t <= 0x37:
            self.skip_bytes((t - 0x34) << 8 | self.byte())
        elif t in (0x41, 0x42):                             # binary chunks 'A'…'B'
            while True:
                self.skip_bytes(self.byte() << 8 | self.byte())
                if t == 0x42:
                    break
                t = self.byte()
                if 0x20 <= t <= 0x2F:
                    self.skip_bytes(t - 0x20)
                    break
                if t not in (0x41, 0x42):
                    raise _Stop
        elif t in (0x46, 0x54, 0x4E, 0x5B, 0x5C) or 0xD8 <= t <= 0xEF:
            pass                                            # F, T, N, 0.0, 1.0, compact long
        elif t == 0x43:                                     # class definition, then its instance
            self.class_def()
            self.skip(d)
        elif t in (0x44, 0x4A, 0x4C):
            self.skip_bytes(8)
        elif t in (0x4B, 0x59, 0x5F):
            self.skip_bytes(4)
        elif 0x38 <= t <= 0x3F:
            self.skip_bytes(2)
        elif t == 0x5D or t >= 0xF0:
            self.skip_bytes(1)
        elif t == 0x5E:
            self.skip_bytes(2)
        elif t in (0x48, 0x4D):                             # maps: [type] (key value)* 'Z'
            if t == 0x4D:
                self.skip_type()
            while self.peek() != 0x5A:
                self.skip(d)
                self.skip(d)
            self.p += 1
        elif t in (0x55, 0x57):                             # variable lists: [type] value* 'Z'
            if t == 0x55:
                self.skip_type()
            while self.peek() != 0x5A:
                self.skip(d)
            self.p += 1
        elif t in (0x56, 0x58) or 0x70 <= t <= 0x7F:        # fixed lists
            if t == 0x56 or 0x70 <= t <= 0x77:
                self.skip_type()
            n = self.int_() if t in (0x56, 0x58) else (t - 0x70) & 7
            for _ in range(self.count(n)):
                self.skip(d)
        elif t == 0x4F or 0x60 <= t <= 0x6F:                # object instance
            ref = self.int_() if t == 0x4F else t - 0x60
            if not 0 <= ref < len(self.classes):
                raise _Stop
            for _ in self.classes[ref]:
                self.skip(d)
        elif t == 0x51:                                     # reference
            self.int_()
        else:
            raise _Stop

    def exception(self) -> str:
        """'class: detailMessage' of a serialized Throwable (class definition + instance)."""
        if self.peek() != 0x43:
            return ""
        self.p += 1
        name, fields = self.class_def()
        t = self.byte()
        if t != 0x4F and not 0x60 <= t <= 0x6F:
            return name
        if t == 0x4F:
            self.int_()
        for f in fields:
            if f == "detailMessage" and (self.is_string() or self.peek() == 0x4E):
                msg = self.string()
                return f"{name}: {msg}" if msg else name
            self.skip()
        return name

    def string_map(self) -> dict[str, str]:
        """An attachments map's string entries (others skipped)."""
        t = self.byte()
        if t not in (0x48, 0x4D):
            raise _Stop
        if t == 0x4D:
            self.skip_type()
        out: dict[str, str] = {}
        while self.peek() != 0x5A and len(out) < ATTACHMENTS_MAX:
            key = self.string() if self.is_string() else None
            if key is None:
                self.skip()
            if self.is_string():
                val = self.string()
                if key is not None and val is not None:
                    out[key] = val
            else:
                self.skip()
        return out


def arg_count(desc: str) -> int:
    """Arguments in a JVM parameter descriptor ("Ljava/lang/String;I[J" → 3)."""
    n = i = 0
    while i < len(desc):
        while i < len(desc) and desc[i] == "[":
            i += 1
        if i >= len(desc):
            raise _Stop
        if desc[i] == "L":
            j = desc.find(";", i)
            if j < 0:
                raise _Stop
            i = j + 1
        elif desc[i] in "ZBCSIJFDV":
            i += 1
        else:
            raise _Stop
        n += 1
    return n


def _starts_frame(payload: bytes) -> bool:
    return payload[:2] == MAGIC_BYTES


FRAMING = Framing("dubbo", 16, 0, MAX_BODY, "body length", MAGIC_BYTES,
                  lost_reason="no header found after lost bytes")


class DubboParser:
    """One Dubbo connection: requests and responses paired by request id, heartbeats left out (see
    the module docstring)."""

    protocol = DUBBO
    name = "Dubbo"
    timeout_s = 120.0

    def __init__(self, config: L7Config) -> None:
        self.cap = max(256, config.max_buffer)
        self.result_max = config.result_max
        self.trace_names = trace_names(config.trace_headers)
        self.trace_needles = tuple(n.encode() for n in self.trace_names)   # attachments read only if one is there
        self.sides = (HeadFramer(FRAMING, self.cap), HeadFramer(FRAMING, self.cap))

    def feed(self, payload: bytes, length: int, from_client: bool, ts: int, seq: int) -> list[L7Message] | GiveUp:
        return self.sides[from_client].feed(payload, length, ts, seq, self._finish, _starts_frame)

    def _finish(self, head: bytes, size: int, body: bytes, ts: int, seq: int, captured: int) -> L7Message | None:
        _magic, flag, status, rid, _size = HEADER.unpack(head)
        if flag & FLAG_EVENT:
            return None                 # heartbeat (or readonly event): not an exchange
        ser = flag & 0x1F
        msg = L7Message(REQUEST, ts, seq, session_id=rid, request_id=rid, length=size, captured=captured,
                        l7_protocol=DUBBO)
        if flag & FLAG_REQUEST:
            if not flag & FLAG_TWO_WAY:
                msg.type = SESSION      # one-way: no response will come
            self._request(msg, ser, body)
        else:
            msg.type = RESPONSE
            self._response(msg, ser, status, body)
        return msg

    def _request(self, msg: L7Message, ser: int, body: bytes) -> None:
        attrs = {"serialization": SERIALIZATION.get(ser, str(ser))}
        msg.attributes = attrs
        try:
            if ser == HESSIAN2:
                h = Hessian2(body)
                dubbo_version, service, version, method = (h.string() or "" for _ in range(4))
            elif ser in JSON_LINES:
                lines = body.split(b"\n", 4)
                if len(lines) < 4:
                    raise _Stop
                dubbo_version, service, version, method = (_json_str(x) for x in lines[:4])
            else:
                return
        except _Stop:
            return
        msg.version, msg.request_resource, msg.request_type = dubbo_version, service, method
        msg.endpoint = f"{service}/{method}" if service or method else ""
        if version:
            attrs["service_version"] = version
        low = body.lower() if ser == HESSIAN2 else b""
        if any(n in low for n in self.trace_needles):
            try:
                for _ in range(arg_count(h.string() or "")):
                    h.skip()
                att = h.string_map()
            except _Stop:
                return
            ctx = {k.lower(): v for k, v in att.items() if k.lower() in self.trace_names}
            msg.trace_id, msg.span_id, msg.parent_span_id = trace_context(ctx)

    def _response(self, msg: L7Message, ser: int, status: int, body: bytes) -> None:
        name, msg.response_status = STATUS.get(status, (f"STATUS_{status}", SERVER_ERROR))
        msg.response_code = status
        text = ""
        try:
            if ser == HESSIAN2:
                h = Hessian2(body)
                if status != 20:
                    text = h.string(partial=True) or ""
                elif h.int_() in RESULT_EXCEPTION:
                    text = h.exception()
            elif ser in JSON_LINES and status != 20:
                text = _json_str(body.split(b"\n", 1)[0])
        except _Stop:
            pass                        # the header's status stands; the text is what was read
        if status != 20:
            msg.response_exception = clip(text or name, self.result_max)
        elif text:
            msg.response_exception = clip(text, self.result_max)


def _json_str(line: bytes) -> str:
    try:
        v = json.loads(line)
    except ValueError:
        raise _Stop from None
    if not isinstance(v, str):
        raise _Stop
    return v


SPEC = Spec(DUBBO, "Dubbo", frozenset({20880}), frozenset({6}), check, DubboParser)
