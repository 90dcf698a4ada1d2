"""MQTT 3.1, 3.1.1 and 5.0 over TCP (datamodel §2, protocol 101).

Every control packet is one message; ``request_type`` is its kind and ``request_domain`` the
client id from CONNECT (or the id a v5 server assigned in CONNACK), repeated on every message of
the connection so that a device's traffic can be found by its id. Topics go to
``request_resource`` and ``endpoint`` (SUBSCRIBE/UNSUBSCRIBE: the filters joined by ",").

Pairing (``session_id``):
* CONNECT→CONNACK and PINGREQ→PINGRESP have no packet id: they pair in order (session_id None).
* PUBLISH QoS 1→PUBACK, QoS 2 PUBLISH→PUBREC and PUBREL→PUBCOMP (two sessions for one QoS 2
  delivery: each leg has its own latency), SUBSCRIBE→SUBACK, UNSUBSCRIBE→UNSUBACK pair by packet id.
* The broker's PUBLISH to a subscriber is a request from the server side, answered by the
  client's PUBACK/PUBREC: the flow keeps its orientation (the MQTT client is the client), the
  request carries ``attributes["sender"] = "server"``. Packet ids are per sender, so the
  server-initiated ones get bit 16 set in session_id (request_id stays the packet id).
* QoS 0 PUBLISH, DISCONNECT and AUTH have no answer: SESSION records (DeepFlow logs QoS 0 publishes).

Errors: CONNACK 3.1.1 return codes 1, 2, 4, 5 (version, identifier, credentials, authorisation)
are client errors, 3 (server unavailable) a server error; v5 reason codes ≥ 0x80 by the table
below; a SUBACK 0x80 (3.1.1 "Failure", v5 "Unspecified error") is a server error since the broker
gives no reason.
"""

from __future__ import annotations

from collector.l7.base import (
    CLIENT_ERROR,
    MQTT,
    OK,
    PARSE_FAILED,
    REQUEST,
    RESPONSE,
    SERVER_ERROR,
    SESSION,
    GiveUp,
    L7Config,
    L7Message,
    Spec,
)
from collector.l7.common import clip
from collector.l7.stream import Cut, Framer, Malformed, Reader, give_up, resync

CONNECT, CONNACK, PUBLISH, PUBACK, PUBREC, PUBREL, PUBCOMP = 1, 2, 3, 4, 5, 6, 7
SUBSCRIBE, SUBACK, UNSUBSCRIBE, UNSUBACK, PINGREQ, PINGRESP, DISCONNECT, AUTH = 8, 9, 10, 11, 12, 13, 14, 15
KINDS = ("", "CONNECT", "CONNACK", "PUBLISH", "PUBACK", "PUBREC", "PUBREL", "PUBCOMP", "SUBSCRIBE", "SUBACK",
         "UNSUBSCRIBE", "UNSUBACK", "PINGREQ", "PINGRESP", "DISCONNECT", "AUTH")
FLAGS_2 = frozenset({PUBREL, SUBSCRIBE, UNSUBSCRIBE})      # fixed-header flags must be 0b0010 (others 0)
VERSIONS = {3: "3.1", 4: "3.1.1", 5: "5.0"}                 # DeepFlow's version strings
PROTOCOL_NAMES = {b"MQTT": (4, 5), b"MQIsdp": (3,)}
SERVER_SIDE = 0x10000                                       # session_id bit: a packet id the server chose
MAX_ALIASES = 256                                           # v5 topic aliases remembered per direction
TOPIC_MAX = 1024

# CONNACK return codes of 3.1 / 3.1.1
CONNACK_V3 = {
    0: ("Connection Accepted", OK), 1: ("Unacceptable protocol version", CLIENT_ERROR),
    2: ("Identifier rejected", CLIENT_ERROR), 3: ("Server unavailable", SERVER_ERROR),
    4: ("Bad user name or password", CLIENT_ERROR), 5: ("Not authorized", CLIENT_ERROR),
}
# v5 reason codes (MQTT 5.0 §2.4); below 0x80 success
REASONS_V5 = {
    0x00: "Success", 0x01: "Granted QoS 1", 0x02: "Granted QoS 2", 0x04: "Disconnect with Will Message",
    0x10: "No matching subscribers", 0x11: "No subscription existed", 0x18: "Continue authentication",
    0x19: "Re-authenticate",
    0x80: ("Unspecified error", SERVER_ERROR), 0x81: ("Malformed Packet", CLIENT_ERROR),
    0x82: ("Protocol Error", CLIENT_ERROR), 0x83: ("Implementation specific error", SERVER_ERROR),
    0x84: ("Unsupported Protocol Version", CLIENT_ERROR), 0x85: ("Client Identifier not valid", CLIENT_ERROR),
    0x86: ("Bad User Name or Password", CLIENT_ERROR), 0x87: ("Not authorized", CLIENT_ERROR),
    0x88: ("Server unavailable", SERVER_ERROR), 0x89: ("Server busy", SERVER_ERROR),
    0x8A: ("Banned", CLIENT_ERROR), 0x8B: ("Server shutting down", SERVER_ERROR),
    0x8C: ("Bad authentication method", CLIENT_ERROR), 0x8D: ("Keep Alive timeout", CLIENT_ERROR),
    0x8E: ("Session taken over", CLIENT_ERROR), 0x8F: ("Topic Filter invalid", CLIENT_ERROR),
    0x90: ("Topic Name invalid", CLIENT_ERROR), 0x91: ("Packet Identifier in use", CLIENT_ERROR),
    0x92: ("Packet Identifier not found", CLIENT_ERROR), 0x93: ("Receive Maximum exceeded", CLIENT_ERROR),
    0x94: ("Topic Alias invalid", CLIENT_ERROR), 0x95: ("Packet too large", CLIENT_ERROR),
    0x96: ("Message rate too high", CLIENT_ERROR), 0x97: ("Quota exceeded", CLIENT_ERROR),
    0x98: ("Administrative action", SERVER_ERROR), 0x99: ("Payload format invalid", CLIENT_ERROR),
    0x9A: ("Retain not supported", CLIENT_ERROR), 0x9B: ("QoS not supported", CLIENT_ERROR),
    0x9C: ("Use another server", SERVER_ERROR), 0x9D: ("Server moved", SERVER_ERROR),
    0x9E: ("Shared Subscriptions not supported", CLIENT_ERROR),
    0x9F: ("Connection rate exceeded", CLIENT_ERROR), 0xA0: ("Maximum connect time", SERVER_ERROR),
    0xA1: ("Subscription Identifiers not supported", CLIENT_ERROR),
    0xA2: ("Wildcard Subscriptions not supported", CLIENT_ERROR),
}
# v5 property id → value encoding: 1/2/4 fixed bytes, "v" varint, "s" string/binary, "p" string pair
PROPERTIES = {
    0x01: 1, 0x02: 4, 0x03: "s", 0x08: "s", 0x09: "s", 0x0B: "v", 0x11: 4, 0x12: "s", 0x13: 2, 0x15: "s",
    0x16: "s", 0x17: 1, 0x18: 4, 0x19: 1, 0x1A: "s", 0x1C: "s", 0x1F: "s", 0x21: 2, 0x22: 2, 0x23: 2, 0x24: 1,
    0x25: 1, 0x26: "p", 0x27: 4, 0x28: 1, 0x29: 1, 0x2A: 1,
}
ASSIGNED_CLIENT_ID, REASON_STRING, TOPIC_ALIAS = 0x12, 0x1F, 0x23
_WANTED = frozenset({ASSIGNED_CLIENT_ID, REASON_STRING, TOPIC_ALIAS})


def reason(code: int, v5: bool, kind: int) -> tuple[int, str]:
    """(response_status, exception text) of a return/reason code."""
    if not v5:
        if kind == CONNACK:
            name, status = CONNACK_V3.get(code, (f"Return code {code}", SERVER_ERROR))
            return status, ("" if status == OK else name)
        return (OK, "") if code < 0x80 else (SERVER_ERROR, "Failure")
    if code < 0x80:
        return OK, ""
    entry = REASONS_V5.get(code)
    if isinstance(entry, tuple):
        return entry[1], entry[0]
    return SERVER_ERROR, f"Reason code 0x{code:02X}"


def frame_len(buf: bytes | bytearray, off: int) -> int | None:
    """Fixed header: kind and flags checked, remaining length (1–4 byte varint)."""
    n = len(buf)
    if off >= n:
        return None
    b0 = buf[off]
    kind = b0 >> 4
    flags = b0 & 0xF
    if kind == 0:
        raise Malformed("mqtt: reserved packet type 0")
    if kind == PUBLISH:
        if flags & 6 == 6:
            raise Malformed("mqtt: PUBLISH with QoS 3")
    elif flags != (2 if kind in FLAGS_2 else 0):
        raise Malformed("mqtt: wrong fixed-header flags")
    value = 0
    shift = 0
    i = off + 1
    while True:
        if i >= n:
            return None
        b = buf[i]
        value |= (b & 0x7F) << shift
        i += 1
        if b < 0x80:
            return i - off + value
        shift += 7
        if shift == 28:
            raise Malformed("mqtt: remaining length longer than 4 bytes")


def _varint(r: Reader) -> int:
    value = 0
    for shift in (0, 7, 14, 21):
        b = r.u8()
        value |= (b & 0x7F) << shift
        if b < 0x80:
            return value
    raise Malformed("mqtt: variable byte integer longer than 4 bytes")


def _string(r: Reader) -> str:
    return r.take(r.u16()).decode("utf-8", "backslashreplace")


def _properties(r: Reader) -> dict[int, object]:
    """v5 properties: the ones this parser uses (assigned client id, reason string, topic alias).
    None at all (not even their length) reads as empty, as acks may omit them."""
    if r.remaining() <= 0:
        return {}
    block = r.sub(_varint(r), "mqtt: properties")
    found: dict[int, object] = {}
    try:
        while block.remaining() > 0:
            pid = _varint(block)
            enc = PROPERTIES.get(pid)
            if enc is None:
                raise Malformed("mqtt: unknown property")
            value: object
            if enc == "s":
                value = block.take(block.u16())
            elif enc == "p":
                block.skip(block.u16())
                block.skip(block.u16())
                continue
            elif enc == "v":
                value = _varint(block)
            else:
                value = int.from_bytes(block.take(enc), "big")
            if pid in _WANTED:
                found[pid] = value
    except Cut:
        pass                        # properties cut by the capture: what came before them is kept
    return found


class MqttParser:
    """One MQTT connection: control packets in both directions."""

    protocol = MQTT
    name = "MQTT"
    timeout_s = 120.0

    __slots__ = ("aliases", "client_id", "config", "framers", "level")

    def __init__(self, config: L7Config) -> None:
        self.config = config
        keep = config.max_buffer
        self.framers = (Framer(frame_len, keep), Framer(frame_len, keep))
        self.level = 4                                     # 3.1.1 until a CONNECT says otherwise
        self.client_id = ""
        self.aliases: tuple[dict[int, str], dict[int, str]] = ({}, {})

    def feed(self, payload: bytes, length: int, from_client: bool, ts: int, seq: int) -> list[L7Message] | GiveUp:
        try:
            framer = self.framers[from_client]
            if framer.lost and (skipped := resync(framer, starts_packets(payload, length), "mqtt")) is not None:
                return skipped
            frames = framer.feed(payload, length, ts, seq)
            return [self._message(data, total, from_client, mts, mseq) for data, total, mts, mseq in frames]
        except Malformed as e:
            return give_up(e, "mqtt")
        except Exception as e:                              # a bug, not the traffic: still never raise
            return GiveUp(f"mqtt: internal error {type(e).__name__}")

    def _message(self, data: bytes, total: int, from_client: bool, ts: int, seq: int) -> L7Message:
        b0 = data[0]
        kind = b0 >> 4
        hdr = 2
        while data[hdr - 1] & 0x80:
            hdr += 1
        r = Reader(data, hdr, total, f"mqtt: {KINDS[kind]}")
        m = L7Message(REQUEST, ts, seq, l7_protocol=MQTT, request_type=KINDS[kind], length=total,
                      captured=len(data))
        try:
            self._decode(m, kind, b0 & 0xF, r, from_client)
        except Cut:
            if m.session_id is None and m.type != SESSION and kind not in (CONNECT, CONNACK, PINGREQ, PINGRESP):
                m.type = SESSION                 # cut before its packet id: it cannot be paired
                m.response_status = PARSE_FAILED
        m.version = VERSIONS.get(self.level, "")
        m.request_domain = self.client_id
        return m

    def _decode(self, m: L7Message, kind: int, flags: int, r: Reader, from_client: bool) -> None:
        """Fill ``m`` from the packet's variable header and payload (Cut when the capture ends)."""
        v5 = self.level == 5
        if kind == CONNECT:
            name = r.take(r.u16())
            level = r.u8()
            if level not in PROTOCOL_NAMES.get(bytes(name), ()):
                raise Malformed("mqtt: CONNECT with an unknown protocol name or level")
            self.level = level
            cflags = r.u8()
            if cflags & 1:
                raise Malformed("mqtt: CONNECT reserved flag set")
            keep_alive = r.u16()
            m.attributes = {"keep_alive": str(keep_alive), "clean_start": str(cflags >> 1 & 1)}
            if level == 5:
                _properties(r)
            self.client_id = clip(_string(r), TOPIC_MAX)
        elif kind == CONNACK:
            m.type = RESPONSE
            v5 = v5 and r.remaining() > 2                    # a broker refusing v5 answers in 3.1.1 form
            r.u8()                                           # session present
            code = r.u8()
            m.response_code = code
            m.response_status, m.response_exception = reason(code, v5, CONNACK)
            if v5:
                props = _properties(r)
                assigned = props.get(ASSIGNED_CLIENT_ID)
                if isinstance(assigned, bytes) and not self.client_id:
                    self.client_id = clip(assigned.decode("utf-8", "backslashreplace"), TOPIC_MAX)
                self._reason_string(m, props)
        elif kind == PUBLISH:
            qos = flags >> 1 & 3
            attrs = {"qos": str(qos)}
            if flags & 1:
                attrs["retain"] = "1"
            if flags & 8:
                attrs["dup"] = "1"
            if not from_client:
                attrs["sender"] = "server"
            m.attributes = attrs
            m.type = SESSION if qos == 0 else REQUEST
            topic = _string(r)
            if qos:
                pid = r.u16()
                m.request_id = pid
                m.session_id = pid if from_client else pid | SERVER_SIDE
            if v5:
                topic = self._alias(topic, _properties(r).get(TOPIC_ALIAS), from_client)
            m.request_resource = m.endpoint = clip(topic, TOPIC_MAX)
        elif kind in (PUBACK, PUBREC, PUBREL, PUBCOMP):
            pid = r.u16()
            m.request_id = pid
            # PUBREL comes from the publisher, the acks from the receiver of the PUBLISH
            publisher_is_client = from_client if kind == PUBREL else not from_client
            m.session_id = pid if publisher_is_client else pid | SERVER_SIDE
            if kind != PUBREL:
                m.type = RESPONSE
            if v5 and r.remaining() > 0:
                code = r.u8()
                m.response_code = code
                m.response_status, m.response_exception = reason(code, True, kind)
                if r.remaining() > 0:
                    self._reason_string(m, _properties(r))
        elif kind in (SUBSCRIBE, UNSUBSCRIBE):
            pid = r.u16()
            m.request_id = m.session_id = pid
            if v5:
                _properties(r)
            topics: list[str] = []
            qos: list[str] = []
            try:
                while r.remaining() > 0:
                    topics.append(_string(r))
                    if kind == SUBSCRIBE:
                        qos.append(str(r.u8() & 3))
            finally:
                m.request_resource = m.endpoint = clip(",".join(topics), TOPIC_MAX)
                if qos:
                    m.attributes = {"qos": ",".join(qos)}
            if not topics:
                raise Malformed(f"mqtt: {KINDS[kind]} without a topic filter")
        elif kind in (SUBACK, UNSUBACK):
            m.type = RESPONSE
            pid = r.u16()
            m.request_id = m.session_id = pid
            if v5:
                self._reason_string(m, _properties(r))
            if kind == SUBACK or v5:
                codes = r.take(max(0, r.remaining()))
                if codes:
                    worst = max(codes)
                    m.response_code = worst
                    m.response_status, m.response_exception = reason(worst, v5, kind)
                    m.response_result = clip(",".join(str(c) for c in codes), self.config.result_max)
        elif kind == PINGRESP:
            m.type = RESPONSE
        elif kind in (DISCONNECT, AUTH):
            m.type = SESSION
            if r.remaining() > 0:                        # v5 reason code (absent: 0 success)
                code = r.u8()
                m.response_code = code
                m.response_status, m.response_exception = reason(code, True, kind)
                if r.remaining() > 0:
                    self._reason_string(m, _properties(r))
        # PINGREQ: a request with nothing more

    def _reason_string(self, m: L7Message, props: dict[int, object]) -> None:
        text = props.get(REASON_STRING)
        if isinstance(text, bytes) and text:
            s = text.decode("utf-8", "backslashreplace")
            m.response_exception = clip(f"{m.response_exception}: {s}" if m.response_exception else s,
                                        self.config.result_max)

    def _alias(self, topic: str, alias: object, from_client: bool) -> str:
        """v5 topic alias: a PUBLISH with topic and alias sets it, one with an empty topic uses it."""
        if not isinstance(alias, int) or alias == 0:
            return topic
        table = self.aliases[from_client]
        if topic:
            if alias in table or len(table) < MAX_ALIASES:
                table[alias] = topic
            return topic
        return table.get(alias, "")


def starts_packets(payload: bytes, length: int) -> bool:
    """After lost bytes: does this segment start with packets? Valid fixed headers must tile it
    to its end, or two of them start it, or it starts a PUBLISH with a plausible topic."""
    pos = count = 0
    n = len(payload)
    try:
        while pos < n:
            total = frame_len(payload, pos)
            if total is None:
                break
            pos += total
            count += 1
    except Malformed:
        return False
    if pos == length or count >= 2:
        return True
    if count == 1 and payload[0] >> 4 == PUBLISH:
        hdr = 2
        while payload[hdr - 1] & 0x80:
            hdr += 1
        k = int.from_bytes(payload[hdr:hdr + 2], "big")
        topic = payload[hdr + 2:hdr + 2 + k]
        try:
            text = topic.decode("utf-8")
        except UnicodeDecodeError:
            return False
        return 0 < k == len(topic) and text.isprintable() and not set(text) & {"+", "#"}
    return False


def check(payload: bytes, from_client: bool) -> bool:
    """A CONNECT from the client: protocol name "MQTT" (level 4, 5) or "MQIsdp" (level 3), reserved
    flag clear. Only a connection's first packet identifies MQTT strictly enough."""
    if not from_client or len(payload) < 14 or payload[0] != 0x10:
        return False
    try:
        total = frame_len(payload, 0)
        if total is None or total < 14:
            return False
        hdr = 2
        while payload[hdr - 1] & 0x80:
            hdr += 1
        r = Reader(payload, hdr, total, "mqtt: CONNECT")
        name = bytes(r.take(r.u16()))
        return r.u8() in PROTOCOL_NAMES.get(name, ()) and not r.u8() & 1
    except (Cut, Malformed):
        return False


SPEC = Spec(MQTT, "MQTT", frozenset({1883}), frozenset({6}), check, MqttParser)
