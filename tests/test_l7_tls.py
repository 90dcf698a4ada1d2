"""TLS parser (collector/l7/tls.py): the openssl/curl handshakes of tls.pcap first (SNI, versions,
HelloRetryRequest, alerts; checked against tshark), then crafted records (fragmented hellos,
truncation, alerts), then fuzzing. tests/data/README-tls.md says how tls.pcap was made."""

from __future__ import annotations

import random
import struct
from functools import partial

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from collector.l7.base import CLIENT_ERROR, OK, REQUEST, RESPONSE, SERVER_ERROR, TLS, L7Config
from collector.l7.tls import ALERTS, SPEC, certificate_info
from tests.l7util import (
    CHUNKS,
    FUZZ,
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


def well_formed(r) -> None:
    for i, m in enumerate(feed_result(r, "tls: ", {TLS}, (REQUEST, RESPONSE))):
        assert m.is_tls == 1
        assert m.request_type in ("ClientHello", "ServerHello", "HelloRetryRequest", "Alert")
        assert 0 <= m.captured <= m.length
        assert not m.ends_flow or i == len(r) - 1          # the flow table stops at ends_flow


def brief(m) -> tuple:
    return (m.type, m.request_type, m.request_domain, m.version, m.response_status, m.response_code,
            m.response_exception, m.ends_flow)


# -- real traffic ----------------------------------------------------------------------------------
CERT = {"cert_not_after": "2036-11-23T00:05:38Z", "cert_cn": "web.lab.test"}
ECDSA_256 = "TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384"
# per connection of tls.pcap (tests/data/clientlogs/tls.log): the messages and their attributes
EXPECTED = [
    (443, [(REQUEST, "ClientHello", "web.lab.test", "TLS 1.3", OK, None, "", False),      # 1. curl -k, TLS 1.3
           (RESPONSE, "ServerHello", "", "TLS 1.3", OK, None, "", True)],
     [{"cipher_suites": "31", "alpn": "h2,http/1.1"}, {"cipher_suite": "TLS_AES_256_GCM_SHA384"}]),
    (443, [(REQUEST, "ClientHello", "api.lab.test", "TLS 1.2", OK, None, "", False),      # 2. curl -k, TLS 1.2
           (RESPONSE, "ServerHello", "", "TLS 1.2", OK, None, "", True)],
     [{"cipher_suites": "28", "alpn": "h2,http/1.1"}, {"cipher_suite": ECDSA_256, "alpn": "http/1.1", **CERT}]),
    (443, [(REQUEST, "ClientHello", "web.lab.test", "TLS 1.2", OK, None, "", False),      # 3. cert rejected
           (RESPONSE, "ServerHello", "", "TLS 1.2", SERVER_ERROR, 48, "unknown_ca", True)],
     [{"cipher_suites": "28", "alpn": "h2,http/1.1"},
      {"cipher_suite": ECDSA_256, "alpn": "http/1.1", **CERT, "alert_sender": "client"}]),
    (8443, [(REQUEST, "ClientHello", "old.lab.test", "TLS 1.3", OK, None, "", False),     # 4. no common version
            (RESPONSE, "Alert", "", "", CLIENT_ERROR, 70, "protocol_version", True)],
     [{"cipher_suites": "4"}, {"alert_sender": "server"}]),
    (4443, [(REQUEST, "ClientHello", "hrr.lab.test", "TLS 1.3", OK, None, "", False),     # 5. HelloRetryRequest
            (RESPONSE, "HelloRetryRequest", "", "TLS 1.3", OK, None, "", False),
            (REQUEST, "ClientHello", "hrr.lab.test", "TLS 1.3", OK, None, "", False),
            (RESPONSE, "ServerHello", "", "TLS 1.3", OK, None, "", True)],
     [{"cipher_suites": "4"}, {"cipher_suite": "TLS_AES_256_GCM_SHA384"}] * 2),
]


def test_tls_pcap_exact():
    flows = streams("tls")
    assert len(flows) == len(EXPECTED)
    for s, (port, want, attrs) in zip(flows, EXPECTED, strict=True):
        assert s.server[1] == port
        assert SPEC.check(s.segments[0].payload, True)
        out = run(s)
        well_formed(out)
        assert [brief(m) for m in out] == want
        assert [m.attributes for m in out] == attrs
        for m in out:
            assert m.request_resource == m.request_domain and m.endpoint == ""
        for req, resp in zip(out[::2], out[1::2], strict=True):      # in order: handshake latency > 0
            assert 0 < resp.ts - req.ts < 10_000
        assert out[0].tcp_seq == (s.segments[0].seq + 5) & 0xFFFFFFFF and out[0].length == s.segments[0].length - 5


def test_handshake_stops_parsing_at_ends_flow():
    """What follows the message with ends_flow is ciphertext: a fresh feed of it yields nothing."""
    for s in streams("tls"):
        p = SPEC.parser(CFG)
        ended = False
        for seg in s.segments:
            r = p.feed(seg.payload, seg.length, seg.from_client, seg.ts, seg.seq)
            well_formed(r)
            if ended:
                assert r == [], r
            ended = ended or any(m.ends_flow for m in r)
        assert ended


@needs_tshark
def test_matches_tshark():
    ours: dict[int, dict[str, list]] = {}
    for s in streams("tls"):
        acc = ours.setdefault(s.client[1], {"sni": [], "types": [], "alerts": [], "versions": [], "suites": []})
        for m in run(s):
            if m.request_type == "ClientHello":
                acc["sni"].append(m.request_domain)
                acc["types"].append(1)
                acc["suites"].append(int(m.attributes["cipher_suites"]))
            elif m.request_type in ("ServerHello", "HelloRetryRequest"):
                acc["types"].append(2)
                acc["versions"].append(m.version)
            if m.response_exception:
                acc["alerts"].append(m.response_code)
    theirs: dict[int, dict[str, list]] = {}
    names = {"0x0304": "TLS 1.3", "0x0303": "TLS 1.2"}
    for sport, dport, types, sni, desc, sv, ver, suites in tshark_fields(
            "tls", ["tcp.srcport", "tcp.dstport", "tls.handshake.type", "tls.handshake.extensions_server_name",
                    "tls.alert_message.desc", "tls.handshake.extensions.supported_version", "tls.handshake.version",
                    "tls.handshake.ciphersuite"],
            display="tls.handshake.type == 1 or tls.handshake.type == 2 or tls.alert_message"):
        client_port = int(sport) if int(dport) in (443, 8443, 4443) else int(dport)
        acc = theirs.setdefault(client_port, {"sni": [], "types": [], "alerts": [], "versions": [], "suites": []})
        hs = [int(t) for t in types.split(",") if t in ("1", "2")]
        acc["types"] += hs
        if sni:
            acc["sni"].append(sni)
        if desc:                                       # encrypted alerts have none
            acc["alerts"].append(int(desc))
        if 1 in hs:
            acc["suites"].append(len(suites.split(",")))
        if 2 in hs:
            acc["versions"].append(names[sv or ver])
    assert ours == theirs


def test_check_claims_tls_only():
    assert_not_claimed(SPEC.check, "http1", "redis", "mysql", "dns", "mqtt", "http2", "grpc")
    for s in streams("tls"):
        assert SPEC.check(s.segments[0].payload, True) and not SPEC.check(s.segments[0].payload, False)


def test_certificate_info_garbage():
    assert certificate_info(b"") == {} and certificate_info(b"\x30\x82\xff\xff" + bytes(10)) == {}


# -- crafted records -------------------------------------------------------------------------------
def ext(t: int, body: bytes) -> bytes:
    return struct.pack("!HH", t, len(body)) + body


def handshake(htype: int, body: bytes) -> bytes:
    return bytes([htype]) + len(body).to_bytes(3, "big") + body


def record(ctype: int, body: bytes, version: int = 0x0303) -> bytes:
    return struct.pack("!BHH", ctype, version, len(body)) + body


def client_hello(sni: str | None = "shop.example", versions: tuple[int, ...] = (0x0A0A, 0x0304, 0x0303),
                 suites: tuple[int, ...] = (0x2A2A, 0x1301, 0x1302, 0xC02F), alpn: tuple[str, ...] = ("h2",),
                 pad: int = 0) -> bytes:
    exts = b""
    if sni is not None:
        name = sni.encode()
        exts += ext(0, struct.pack("!HBH", len(name) + 3, 0, len(name)) + name)
    if alpn:
        lst = b"".join(bytes([len(a)]) + a.encode() for a in alpn)
        exts += ext(16, struct.pack("!H", len(lst)) + lst)
    if versions:
        exts += ext(43, bytes([2 * len(versions)]) + b"".join(struct.pack("!H", v) for v in versions))
    if pad:
        exts += ext(21, bytes(pad))
    body = (b"\x03\x03" + bytes(32) + b"\x20" + bytes(32) + struct.pack("!H", 2 * len(suites))
            + b"".join(struct.pack("!H", x) for x in suites) + b"\x01\x00" + struct.pack("!H", len(exts)) + exts)
    return handshake(1, body)


def server_hello(version: int = 0x0303, suite: int = 0xC02F, selected: int | None = None,
                 alpn: str | None = None) -> bytes:
    exts = b""
    if selected:
        exts += ext(43, struct.pack("!H", selected))
    if alpn:
        exts += ext(16, struct.pack("!HB", len(alpn) + 1, len(alpn)) + alpn.encode())
    body = struct.pack("!H", version) + bytes(range(32)) + b"\x00" + struct.pack("!HB", suite, 0)
    body += struct.pack("!H", len(exts)) + exts if exts else b""
    return handshake(2, body)


CCS = record(20, b"\x01")
CKE = record(22, handshake(16, bytes(33)))
DONE = handshake(14, b"")


def alert(level: int, desc: int) -> bytes:
    return record(21, bytes([level, desc]))


def feed_all(parser, segs: list[tuple[bytes, bool]], lengths: list[int] | None = None) -> list:
    return converse(parser, segs, lengths=lengths, client_seq=100, server_seq=50000, ts0=1000, ts_step=1000,
                    check=well_formed)


def test_client_hello_across_records_and_segments():
    ch = client_hello(pad=400)
    wire = record(22, ch[:150], 0x0301) + record(22, ch[150:], 0x0301)
    for cuts in ([], [3], [100, 160, 300], list(range(7, len(wire), 7))):
        segs, prev = [], 0
        for c in [*cuts, len(wire)]:
            segs.append((wire[prev:c], True))
            prev = c
        (m,) = feed_all(SPEC.parser(CFG), segs)
        assert brief(m) == (REQUEST, "ClientHello", "shop.example", "TLS 1.3", OK, None, "", False)
        assert m.attributes == {"cipher_suites": "3", "alpn": "h2"}            # GREASE not counted
        assert (m.ts, m.tcp_seq, m.length) == (1000, 105, len(ch))


def test_tls12_client_accepts():
    flight = record(22, server_hello(alpn="h2") + DONE)
    out = feed_all(SPEC.parser(CFG), [(record(22, client_hello(versions=())), True), (flight, False),
                                      (CKE + CCS + record(22, bytes(40)), True)])
    assert [brief(m) for m in out] == [
        (REQUEST, "ClientHello", "shop.example", "TLS 1.2", OK, None, "", False),
        (RESPONSE, "ServerHello", "", "TLS 1.2", OK, None, "", True)]
    assert out[1].ts == 2000 and out[1].attributes == {"cipher_suite": "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256",
                                                       "alpn": "h2"}


@pytest.mark.parametrize(("sender_is_client", "level", "desc", "status"), [
    (False, 2, 70, CLIENT_ERROR),      # protocol_version: the client's offer is unacceptable
    (False, 2, 40, CLIENT_ERROR),      # handshake_failure
    (False, 2, 80, SERVER_ERROR),      # internal_error: the server itself failed
    (False, 1, 0, SERVER_ERROR),       # close_notify from the server before answering
    (True, 2, 42, SERVER_ERROR),       # bad_certificate: the server's certificate is at fault
    (True, 2, 45, SERVER_ERROR),       # certificate_expired
    (True, 1, 90, CLIENT_ERROR),       # user_canceled
])
def test_alert_blame(sender_is_client, level, desc, status):
    segs = [(record(22, client_hello()), True)]
    if sender_is_client:
        segs.append((record(22, server_hello()) + record(22, DONE), False))
    segs.append((alert(level, desc), sender_is_client))
    out = feed_all(SPEC.parser(CFG), segs)
    last = out[-1]
    assert (last.type, last.response_status, last.response_code, last.response_exception, last.ends_flow) == \
        (RESPONSE, status, desc, ALERTS[desc], True)
    assert last.request_type == ("ServerHello" if sender_is_client else "Alert")
    assert len(out) == 2


def test_warning_alert_does_not_end_handshake():
    out = feed_all(SPEC.parser(CFG), [(record(22, client_hello()), True),
                                      (alert(1, 112) + record(22, server_hello(selected=0x0304)) + CCS, False)])
    assert [brief(m)[:2] + brief(m)[-1:] for m in out] == [(REQUEST, "ClientHello", False),
                                                           (RESPONSE, "ServerHello", True)]


def test_tls12_flight_cut_by_snaplen():
    cert = handshake(11, (300).to_bytes(3, "big") + (297).to_bytes(3, "big") + bytes(297))
    flight = record(22, server_hello() + cert + DONE)
    ch = record(22, client_hello())
    full = feed_all(SPEC.parser(CFG), [(ch, True), (flight, False), (CKE + CCS, True)])
    assert [(m.request_type, m.response_status, m.ends_flow) for m in full] == [
        ("ClientHello", OK, False), ("ServerHello", OK, True)]
    # the flight captured up to 120 bytes: hello parsed, certificate skipped by its length
    cut = feed_all(SPEC.parser(CFG), [(ch, True), (flight[:120], False), (CKE + CCS, True)],
                   lengths=[len(ch), len(flight), len(CKE + CCS)])
    assert [brief(m) for m in cut] == [brief(m) for m in full]
    assert cut[1].attributes == {"cipher_suite": "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256"}
    # a ClientHello cut inside its extensions: what came before them is kept
    ch = record(22, client_hello(pad=600))
    (m,) = SPEC.parser(CFG).feed(ch[:60], len(ch), True, 1, 1)
    assert (m.request_type, m.version, m.request_domain, m.captured, m.length) == ("ClientHello", "TLS 1.2", "", 55,
                                                                                     len(ch) - 5)


def test_lost_record_boundary_and_malformed():
    ch = record(22, client_hello())
    p = SPEC.parser(CFG)
    (m,) = p.feed(ch, len(ch) + 20, True, 1, 1)             # the next record starts in uncaptured bytes
    assert m.request_domain == "shop.example"
    assert p.feed(b"\x99" * 30, 30, True, 2, 1000) == []    # no record starts here: skipped
    (m,) = p.feed(alert(2, 90), 7, True, 3, 2000)            # one does: followed again
    assert (m.response_exception, m.response_status) == ("user_canceled", CLIENT_ERROR)
    p = SPEC.parser(CFG)
    p.feed(ch, len(ch) + 20, True, 1, 1)
    results = [p.feed(b"\x99" * 30, 30, True, 2, 1000 + 30 * i) for i in range(257)]
    assert results[:-1] == [[]] * 256 and results[-1] == "tls: no message start found after lost bytes"
    for blob, reason in [(b"GET / HTTP/1.1\r\n\r\n", "tls: unknown record content type"),
                         (b"\x16\x02\x00\x00\x04", "tls: unknown record version"),
                         (b"\x16\x03\x03\x50\x00", "tls: record longer than"),
                         (record(22, handshake(99, b"")), "tls: unknown handshake message type"),
                         (record(22, handshake(1, b"\x03\x03" + bytes(32) + b"\x40" + bytes(70))),
                          "tls: session id longer than 32 bytes"),
                         (record(22, handshake(1, b"\x03\x03" + bytes(32) + b"\x00\x00\x03\x00\x00")),
                          "tls: bad cipher suite list length"),
                         (record(22, handshake(1, b"\x03\x03" + bytes(32) + b"\x00\x00\x02\x13\x01\x01\x00\x00\x09")),
                          "tls: ClientHello runs past its length")]:
        r = SPEC.parser(CFG).feed(blob, len(blob), True, 1, 1)
        assert isinstance(r, str) and r.startswith(reason), (blob, r)


def test_mid_stream_ciphertext_is_ignored():
    p = SPEC.parser(CFG)
    data = record(23, bytes(100)) + record(21, bytes(26))      # an encrypted alert is not readable
    assert p.feed(data, len(data), True, 1, 1) == [] and p.feed(data, len(data), False, 2, 1) == []


# -- fuzzing ---------------------------------------------------------------------------------------
REAL_STREAMS = streams("tls")


def framers(p) -> tuple:
    """The record framers, then the handshake-message framers."""
    return (*p.records, *p.hs)


def test_fuzz_mutated_real_streams_seeded():
    fuzz_streams(SPEC, L7Config(max_buffer=2048), REAL_STREAMS, random.Random(443), 1500, 0.4, well_formed, framers)


@FUZZ
@given(CHUNKS, st.booleans())
def test_fuzz_random_bytes(chunks, tls_prefix):
    fed = list(chunks)
    if tls_prefix:                                  # get past the record layer more often
        data, from_client, extra = fed[0]
        fed[0] = (b"\x16\x03\x01" + struct.pack("!H", len(data) + extra) + data, from_client, extra)
    fuzz_chunks(SPEC.parser(L7Config(max_buffer=512)), fed, well_formed, framers, 512)
    SPEC.check(chunks[0][0], chunks[0][1])


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.randoms(use_true_random=False))
def test_fuzz_resegmented_streams_give_same_messages(rng):
    for stream in REAL_STREAMS:
        whole = run(stream)
        out = resegmented(SPEC.parser(CFG), stream, rng, 4)
        assert [(brief(m), m.attributes, m.tcp_seq, m.length) for m in out] == \
            [(brief(m), m.attributes, m.tcp_seq, m.length) for m in whole]
