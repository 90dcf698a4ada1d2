"""MQTT parser (collector/l7/mqtt.py): the mosquitto traffic of mqtt.pcap first (packet kinds,
topics, packet ids, pairing; checked against tshark), then crafted v5 and boundary cases, then
fuzzing."""

from __future__ import annotations

import random
import struct
from collections import deque
from functools import partial

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from collector.l7.base import (
    CLIENT_ERROR,
    MQTT,
    OK,
    PARSE_FAILED,
    REQUEST,
    RESPONSE,
    SERVER_ERROR,
    SESSION,
    L7Config,
)
from collector.l7.mqtt import KINDS, SERVER_SIDE, SPEC
from tests.helpers import DATA
from tests.l7util import (
    CHUNKS,
    FUZZ,
    Stream,
    assert_not_claimed,
    converse,
    feed_result,
    fuzz_chunks,
    fuzz_streams,
    needs_tshark,
    resegmented,
    spec_messages,
    streams,
    tshark_fields,
)

CFG = L7Config()
run = partial(spec_messages, SPEC)


def well_formed(r, config: L7Config = CFG) -> None:
    for m in feed_result(r, "mqtt: ", {MQTT}, (REQUEST, RESPONSE, SESSION)):
        assert m.request_type in KINDS[1:]
        assert m.version in ("3.1", "3.1.1", "5.0")
        assert len(m.response_result) <= config.result_max and len(m.response_exception) <= config.result_max
        assert 0 <= m.captured <= m.length
        assert m.session_id is None or 0 <= m.session_id < 2 * SERVER_SIDE


def pair(msgs: list) -> tuple[list, list, list]:
    """The pairing base.py describes (by session_id, else in order): (sessions, unanswered, orphans)."""
    fifo: deque = deque()
    by_id: dict = {}
    sessions, orphans = [], []
    for m in msgs:
        if m.type == SESSION:
            sessions.append((m, m))
        elif m.type == REQUEST:
            if m.session_id is None:
                fifo.append(m)
            else:
                assert m.session_id not in by_id, m
                by_id[m.session_id] = m
        else:
            req = (fifo.popleft() if fifo else None) if m.session_id is None else by_id.pop(m.session_id, None)
            (sessions.append((req, m)) if req is not None else orphans.append(m))
    return sessions, list(fifo) + list(by_id.values()), orphans


def by_client_id() -> dict[str, list[tuple[Stream, list]]]:
    out: dict[str, list] = {}
    for s in streams("mqtt"):
        msgs = run(s)
        out.setdefault(msgs[0].request_domain, []).append((s, msgs))
    return out


def brief(m) -> tuple:
    return (m.request_type, m.type, m.request_resource, m.request_id, m.session_id)


# -- real traffic ----------------------------------------------------------------------------------
def test_subscriber_flow_exact():
    ((stream, msgs),) = by_client_id()["sub1"]
    assert SPEC.check(stream.segments[0].payload, True)
    client = [brief(m) for m in msgs if m.request_type in ("CONNECT", "SUBSCRIBE", "PUBACK", "DISCONNECT")]
    server = [brief(m) for m in msgs if m.request_type in ("CONNACK", "SUBACK", "PUBLISH")]
    assert client == [("CONNECT", REQUEST, "", None, None), ("SUBSCRIBE", REQUEST, "lab/#", 1, 1)] + [
        ("PUBACK", RESPONSE, "", i, SERVER_SIDE | i) for i in range(1, 13)] + [("DISCONNECT", SESSION, "", None, None)]
    deliveries = []
    for i in range(1, 11):
        deliveries += [("PUBLISH", SESSION, f"lab/sensor/{i}", None, None),
                       ("PUBLISH", REQUEST, f"lab/event/{i}", i, SERVER_SIDE | i)]
    assert server == [("CONNACK", RESPONSE, "", None, None), ("SUBACK", RESPONSE, "", 1, 1)] + deliveries + [
        ("PUBLISH", REQUEST, "lab/state", 11, SERVER_SIDE | 11),      # retained, delivered live (no retain flag)
        ("PUBLISH", REQUEST, "lab/cmd", 12, SERVER_SIDE | 12)]        # QoS 2 downgraded to the subscription's 1
    assert len(client) + len(server) == len(msgs) == 39
    assert all(m.request_domain == "sub1" and m.version == "3.1.1" for m in msgs)
    assert all(m.attributes["sender"] == "server" for m in msgs if m.request_type == "PUBLISH")
    suback = next(m for m in msgs if m.request_type == "SUBACK")
    assert (suback.response_code, suback.response_status, suback.response_result) == (1, OK, "1")
    assert msgs[0].attributes == {"keep_alive": "60", "clean_start": "1"}
    sessions, unanswered, orphans = pair(msgs)
    assert not unanswered and not orphans
    assert len(sessions) == 1 + 1 + 12 + 10 + 1          # connect, subscribe, 12 QoS 1, 10 QoS 0, disconnect
    for req, resp in sessions:
        assert req.ts <= resp.ts


def test_publisher_flows_exact():
    flows = by_client_id()
    assert sorted(flows) == ["pub0", "pub1", "pub2", "pub3", "sub1"]
    assert len(flows["pub0"]) == len(flows["pub1"]) == 10
    for i, (_, msgs) in enumerate(flows["pub0"], 1):
        assert [brief(m) for m in msgs] == [
            ("CONNECT", REQUEST, "", None, None), ("CONNACK", RESPONSE, "", None, None),
            ("PUBLISH", SESSION, f"lab/sensor/{i}", None, None), ("DISCONNECT", SESSION, "", None, None)]
        assert msgs[2].attributes == {"qos": "0"} and msgs[2].endpoint == f"lab/sensor/{i}"
    for i, (_, msgs) in enumerate(flows["pub1"], 1):
        assert [brief(m) for m in msgs] == [
            ("CONNECT", REQUEST, "", None, None), ("CONNACK", RESPONSE, "", None, None),
            ("PUBLISH", REQUEST, f"lab/event/{i}", 1, 1), ("PUBACK", RESPONSE, "", 1, 1),
            ("DISCONNECT", SESSION, "", None, None)]
    ((_, retained),) = flows["pub2"]
    assert brief(retained[2]) == ("PUBLISH", REQUEST, "lab/state", 1, 1)
    assert retained[2].attributes == {"qos": "1", "retain": "1"}
    ((_, qos2),) = flows["pub3"]
    assert [brief(m) for m in qos2[2:]] == [
        ("PUBLISH", REQUEST, "lab/cmd", 1, 1), ("PUBREC", RESPONSE, "", 1, 1), ("PUBREL", REQUEST, "", 1, 1),
        ("PUBCOMP", RESPONSE, "", 1, 1), ("DISCONNECT", SESSION, "", None, None)]
    for name, fl in flows.items():
        for _, msgs in fl:
            _, unanswered, orphans = pair(msgs)
            assert not unanswered and not orphans, name
            assert all(m.request_domain == name for m in msgs)


def test_pcap_matches_client_log():
    """Every line the subscriber printed (topic payload) is a PUBLISH it received."""
    ((_, msgs),) = by_client_id()["sub1"]
    received = [m.request_resource for m in msgs if m.request_type == "PUBLISH"]
    log = [line.split(" ", 1)[0] for line in (DATA / "clientlogs" / "mqtt.log").read_text().splitlines()]
    assert received == log


@needs_tshark
def test_matches_tshark():
    theirs: dict[tuple, list[list]] = {}
    for sport, dport, types, topics, ids in tshark_fields(
            "mqtt", ["tcp.srcport", "tcp.dstport", "mqtt.msgtype", "mqtt.topic", "mqtt.msgid"], display="mqtt"):
        key = (int(sport) if int(dport) == 1883 else int(dport), int(dport) == 1883)
        acc = theirs.setdefault(key, [[], [], []])
        acc[0] += [int(t) for t in types.split(",")]
        acc[1] += [t for t in topics.split(",") if t]
        acc[2] += [int(i) for i in ids.split(",") if i]
    ours: dict[tuple, list[list]] = {}
    for s in streams("mqtt"):
        p = SPEC.parser(CFG)
        for seg in s.segments:
            for m in p.feed(seg.payload, seg.length, seg.from_client, seg.ts, seg.seq):
                acc = ours.setdefault((s.client[1], seg.from_client), [[], [], []])
                acc[0].append(KINDS.index(m.request_type))
                if m.request_resource:
                    acc[1].append(m.request_resource)
                if m.request_id is not None:
                    acc[2].append(m.request_id)
    assert ours == theirs


def test_check_claims_mqtt_only():
    assert_not_claimed(SPEC.check, "http1", "redis", "mysql", "dns", "tls", "http2", "grpc")
    for s in streams("mqtt"):
        assert SPEC.check(s.segments[0].payload, True) and not SPEC.check(s.segments[0].payload, False)
        assert not SPEC.check(s.segments[1].payload, False)            # a CONNACK is too short to tell


# -- crafted packets -------------------------------------------------------------------------------
def varint(n: int) -> bytes:
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


def packet(kind: int, flags: int, body: bytes) -> bytes:
    return bytes([kind << 4 | flags]) + varint(len(body)) + body


def s(text: str | bytes) -> bytes:
    b = text.encode() if isinstance(text, str) else text
    return struct.pack("!H", len(b)) + b


def props(*items: bytes) -> bytes:
    body = b"".join(items)
    return varint(len(body)) + body


def connect_v5(client_id: str) -> bytes:
    p = props(b"\x11" + struct.pack("!I", 3600), b"\x21\x00\x10", b"\x26" + s("k") + s("v"), b"\x22\x00\x08")
    will = props(b"\x18\x00\x00\x00\x05") + s("lab/will") + s(b"gone")
    return packet(1, 0, s("MQTT") + b"\x05" + b"\xce" + b"\x00\x1e" + p + s(client_id) + will + s("user") + s("pw"))


def feed_all(parser, segs: list[tuple[bytes, bool]], lengths: list[int] | None = None) -> list:
    return converse(parser, segs, lengths=lengths, server_seq=9000, ts0=10, check=well_formed)


def test_v5_session_with_properties():
    p = SPEC.parser(CFG)
    out = feed_all(p, [
        (connect_v5(""), True),
        (packet(2, 0, b"\x00\x00" + props(b"\x12" + s("auto-7f3a"), b"\x21\x00\x14")), False),
        (packet(3, 2, s("lab/v5") + b"\x00\x05" + props(b"\x23\x00\x03", b"\x01\x01") + b"hello"), True),
        (packet(4, 0, b"\x00\x05\x10" + props()), False),                                # no matching subscribers
        (packet(3, 2, s("") + b"\x00\x06" + props(b"\x23\x00\x03") + b"again"), True),   # topic by alias
        (packet(4, 0, b"\x00\x06\x97" + props(b"\x1f" + s("slow down"))), False),
        (packet(8, 2, b"\x00\x07" + props(b"\x0b\x05") + s("a/+") + b"\x01" + s("b/#") + b"\x02"), True),
        (packet(9, 0, b"\x00\x07" + props() + b"\x01\x87"), False),
        (packet(10, 2, b"\x00\x08" + props() + s("a/+")), True),
        (packet(11, 0, b"\x00\x08" + props() + b"\x11"), False),
        (packet(12, 0, b""), True), (packet(13, 0, b""), False),
        (packet(15, 0, b"\x19" + props(b"\x15" + s("SCRAM"))), True),
        (packet(14, 0, b"\x8e" + props(b"\x1f" + s("taken over"))), False),
    ])
    got = [(m.request_type, m.type, m.request_domain, m.request_resource, m.session_id, m.response_code,
            m.response_status, m.response_exception) for m in out]
    assert got == [
        ("CONNECT", REQUEST, "", "", None, None, OK, ""),
        ("CONNACK", RESPONSE, "auto-7f3a", "", None, 0, OK, ""),
        ("PUBLISH", REQUEST, "auto-7f3a", "lab/v5", 5, None, OK, ""),
        ("PUBACK", RESPONSE, "auto-7f3a", "", 5, 0x10, OK, ""),
        ("PUBLISH", REQUEST, "auto-7f3a", "lab/v5", 6, None, OK, ""),
        ("PUBACK", RESPONSE, "auto-7f3a", "", 6, 0x97, CLIENT_ERROR, "Quota exceeded: slow down"),
        ("SUBSCRIBE", REQUEST, "auto-7f3a", "a/+,b/#", 7, None, OK, ""),
        ("SUBACK", RESPONSE, "auto-7f3a", "", 7, 0x87, CLIENT_ERROR, "Not authorized"),
        ("UNSUBSCRIBE", REQUEST, "auto-7f3a", "a/+", 8, None, OK, ""),
        ("UNSUBACK", RESPONSE, "auto-7f3a", "", 8, 0x11, OK, ""),
        ("PINGREQ", REQUEST, "auto-7f3a", "", None, None, OK, ""),
        ("PINGRESP", RESPONSE, "auto-7f3a", "", None, None, OK, ""),
        ("AUTH", SESSION, "auto-7f3a", "", None, 0x19, OK, ""),
        ("DISCONNECT", SESSION, "auto-7f3a", "", None, 0x8E, CLIENT_ERROR, "Session taken over: taken over"),
    ]
    assert all(m.version == "5.0" for m in out)
    assert out[0].attributes == {"keep_alive": "30", "clean_start": "1"}
    assert out[6].attributes == {"qos": "1,2"} and out[7].response_result == "1,135"
    sessions, unanswered, orphans = pair(out)
    assert not unanswered and not orphans and len(sessions) == 8


@pytest.mark.parametrize(("code", "status", "text"), [
    (0, OK, ""), (1, CLIENT_ERROR, "Unacceptable protocol version"), (2, CLIENT_ERROR, "Identifier rejected"),
    (3, SERVER_ERROR, "Server unavailable"), (4, CLIENT_ERROR, "Bad user name or password"),
    (5, CLIENT_ERROR, "Not authorized"),
])
def test_connack_v311_codes(code, status, text):
    out = feed_all(SPEC.parser(CFG), [(packet(1, 0, s("MQTT") + b"\x04\x02\x00\x3c" + s("dev")), True),
                                      (packet(2, 0, bytes([0, code])), False)])
    assert (out[1].response_code, out[1].response_status, out[1].response_exception) == (code, status, text)
    assert out[1].request_domain == "dev" and out[1].version == "3.1.1"


@pytest.mark.parametrize(("code", "status", "text"), [
    (0x00, OK, ""), (0x84, CLIENT_ERROR, "Unsupported Protocol Version"), (0x86, CLIENT_ERROR, "Bad User Name or Password"),
    (0x88, SERVER_ERROR, "Server unavailable"), (0x89, SERVER_ERROR, "Server busy"), (0x80, SERVER_ERROR, "Unspecified error"),
    (0xFE, SERVER_ERROR, "Reason code 0xFE"),
])
def test_connack_v5_codes(code, status, text):
    out = feed_all(SPEC.parser(CFG), [(connect_v5("dev5"), True), (packet(2, 0, bytes([0, code]) + props()), False)])
    assert (out[1].response_code, out[1].response_status, out[1].response_exception) == (code, status, text)


def test_v5_connect_refused_in_v311_form():
    out = feed_all(SPEC.parser(CFG), [(connect_v5("new"), True), (packet(2, 0, b"\x00\x01"), False)])
    assert (out[1].response_code, out[1].response_status, out[1].response_exception) == (
        1, CLIENT_ERROR, "Unacceptable protocol version")


def test_v311_suback_failure_and_qos2_server_delivery():
    out = feed_all(SPEC.parser(CFG), [
        (packet(1, 0, s("MQIsdp") + b"\x03\x02\x00\x3c" + s("old")), True),
        (packet(2, 0, b"\x00\x00"), False),
        (packet(8, 2, b"\x00\x02" + s("x/#") + b"\x02" + s("y") + b"\x00"), True),
        (packet(9, 0, b"\x00\x02\x80\x00"), False),
        (packet(3, 4, s("x/1") + b"\x00\x02" + b"data"), False),       # server → client, QoS 2, packet id 2
        (packet(5, 0, b"\x00\x02"), True), (packet(6, 2, b"\x00\x02"), False), (packet(7, 0, b"\x00\x02"), True),
    ])
    got = [(m.request_type, m.type, m.session_id, m.response_status) for m in out]
    assert got == [("CONNECT", REQUEST, None, OK), ("CONNACK", RESPONSE, None, OK),
                   ("SUBSCRIBE", REQUEST, 2, OK), ("SUBACK", RESPONSE, 2, SERVER_ERROR),
                   ("PUBLISH", REQUEST, SERVER_SIDE | 2, OK), ("PUBREC", RESPONSE, SERVER_SIDE | 2, OK),
                   ("PUBREL", REQUEST, SERVER_SIDE | 2, OK), ("PUBCOMP", RESPONSE, SERVER_SIDE | 2, OK)]
    assert out[0].version == "3.1" and out[3].response_exception == "Failure" and out[3].response_code == 0x80
    assert out[4].attributes == {"qos": "2", "sender": "server"}
    sessions, unanswered, orphans = pair(out)
    assert not unanswered and not orphans and len(sessions) == 4


@pytest.mark.parametrize("remaining", [0, 127, 128, 16383, 16384, 2097151, 2097152])
def test_remaining_length_boundaries(remaining):
    topic = s("t/len")
    body = topic + b"\x00\x09"
    body += bytes(remaining - len(body)) if remaining >= len(body) else b""
    pub = packet(3, 2, body) if remaining >= len(topic) + 2 else packet(12, 0, b"")
    ack = packet(4, 0, b"\x00\x09")
    header = len(pub) - len(body) if remaining >= len(topic) + 2 else 2
    assert header == 1 + len(varint(remaining if remaining >= len(topic) + 2 else 0))
    wire = pub + pub
    for step in (len(wire), 1000, 3):
        if step == 3 and len(wire) > 40000:
            continue
        p = SPEC.parser(CFG)
        out = []
        for i in range(0, len(wire), step):
            chunk = wire[i:i + step]
            r = p.feed(chunk, len(chunk), True, i, 1 + i)
            well_formed(r)
            out += r
            assert all(len(f.buf) <= CFG.max_buffer + step for f in p.framers)
        out += p.feed(ack, len(ack), False, 99, 5)
        assert [m.length for m in out[:2]] == [len(pub)] * 2
        assert [m.tcp_seq for m in out[:2]] == [1, 1 + len(pub)]
        if pub[0] >> 4 == 3:
            assert [m.request_resource for m in out[:2]] == ["t/len"] * 2 and out[0].request_id == 9
            assert out[0].captured == min(len(pub), CFG.max_buffer)
            assert out[2].request_type == "PUBACK"


def test_truncated_capture_and_lost_boundary():
    big = packet(3, 2, s("cam/1") + b"\x00\x03" + bytes(3000))
    ack = packet(4, 0, b"\x00\x03")
    out = feed_all(SPEC.parser(CFG), [(big[:100], True), (big[1448:2896], True), (big[2896:], True), (ack, False)],
                   lengths=[1448, 1448, len(big) - 2896, len(ack)])
    assert [(m.request_type, m.session_id, m.captured, m.length) for m in out] == [
        ("PUBLISH", 3, 100, len(big)), ("PUBACK", 3, 4, 4)]
    # the capture ends inside the topic: the packet id is not known, so it is reported unpaired
    (m,) = feed_all(SPEC.parser(CFG), [(big[:5], True)], lengths=[1448])
    assert (m.type, m.response_status, m.length) == (SESSION, PARSE_FAILED, len(big))
    # the next packet starts in uncaptured bytes: skipped until a segment starts with packets
    small = packet(3, 0, s("a") + b"x")
    p = SPEC.parser(CFG)
    out = feed_all(p, [(small, True), (b"\x00\x01\x02", True), (ack[1:] + small, True), (small + ack, True),
                       (packet(3, 0, s("cam/2") + bytes(100))[:50], True)], lengths=[len(small) + 10, 3, 9, 10, 107])
    assert [(m.request_type, m.request_resource) for m in out] == [("PUBLISH", "a"), ("PUBLISH", "a"),
                                                                   ("PUBACK", ""), ("PUBLISH", "cam/2")]
    assert not p.framers[1].lost
    p = SPEC.parser(CFG)                                    # a PUBLISH with a plausible topic starts a segment
    p.feed(small, len(small) + 10, True, 1, 1)
    (m,) = p.feed(packet(3, 0, s("cam/2") + bytes(100))[:50], 107, True, 2, 500)
    assert (m.request_resource, m.captured) == ("cam/2", 50)
    p = SPEC.parser(CFG)
    p.feed(small, len(small) + 10, True, 1, 1)
    results = [p.feed(b"\x00" * 9, 9, True, 1, 1000 + 9 * i) for i in range(257)]
    assert results[-1] == "mqtt: no message start found after lost bytes" and results[-2] == []


@pytest.mark.parametrize(("blob", "reason"), [
    (b"\x00\x00", "mqtt: reserved packet type 0"),
    (b"\x80\x05\x00\x01\x00\x01a", "mqtt: wrong fixed-header flags"),
    (b"\x36\x02\x00\x00", "mqtt: PUBLISH with QoS 3"),
    (b"\x30\xff\xff\xff\xff\x01", "mqtt: remaining length longer than 4 bytes"),
    (packet(1, 0, s("HTTP") + b"\x04\x02\x00\x3c" + s("x")), "mqtt: CONNECT with an unknown protocol"),
    (packet(1, 0, s("MQTT") + b"\x04\x03\x00\x3c" + s("x")), "mqtt: CONNECT reserved flag"),
    (packet(1, 0, s("MQTT") + b"\x04\x02\x00\x3c" + b"\x00\x09ab"), "mqtt: CONNECT runs past its length"),
    (packet(8, 2, b"\x00\x01"), "mqtt: SUBSCRIBE without a topic filter"),
    (packet(1, 0, s("MQTT") + b"\x05\x02\x00\x3c" + props(b"\x7f\x00") + s("x")), "mqtt: unknown property"),
])
def test_malformed_gives_up(blob, reason):
    r = SPEC.parser(CFG).feed(blob, len(blob), True, 1, 1)
    assert isinstance(r, str) and r.startswith(reason), r


# -- fuzzing ---------------------------------------------------------------------------------------
REAL_STREAMS = streams("mqtt")
REAL = [seg for st_ in REAL_STREAMS for seg in st_.segments]


def framers(p) -> tuple:
    return p.framers


def test_fuzz_mutated_real_streams_seeded():
    cfg = L7Config(max_buffer=1024)
    fuzz_streams(SPEC, cfg, REAL_STREAMS, random.Random(1883), 400, 0.3, lambda r: well_formed(r, cfg), framers)


@FUZZ
@given(CHUNKS)
def test_fuzz_random_bytes(chunks):
    cfg = L7Config(max_buffer=512)
    fuzz_chunks(SPEC.parser(cfg), chunks, lambda r: well_formed(r, cfg), framers, 512)
    SPEC.check(chunks[0][0], chunks[0][1])


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.randoms(use_true_random=False))
def test_fuzz_resegmented_stream_gives_same_messages(rng):
    """Any split of each segment of the subscriber's flow into smaller ones gives the same messages."""
    stream = max(REAL_STREAMS, key=lambda x: len(x.segments))
    whole = run(stream)
    out = resegmented(SPEC.parser(CFG), stream, rng, 3)
    assert [(brief(m), m.tcp_seq, m.length) for m in out] == [(brief(m), m.tcp_seq, m.length) for m in whole]
