"""DNS parser (collector/l7/dns.py): real dig/dnsmasq traffic from the committed pcaps first
(checked against the client log and tshark), then crafted messages (TCP splits, compression, loops,
truncation), then fuzzing. The stream framing it shares is tested in test_l7_stream.py."""

from __future__ import annotations

import random
import re
import struct
from functools import partial

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from collector.l7.base import (
    CLIENT_ERROR,
    DNS,
    OK,
    PARSE_FAILED,
    REQUEST,
    RESPONSE,
    SERVER_ERROR,
    SESSION,
    L7Config,
)
from collector.l7.dns import SPEC, read_name
from collector.l7.stream import Malformed
from tests.helpers import DATA
from tests.l7util import (
    CHUNKS,
    FUZZ,
    Segment,
    Stream,
    assert_not_claimed,
    by_port,
    feed_result,
    fuzz_chunks,
    mutate,
    needs_tshark,
    spec_messages,
    tshark_fields,
)

CFG = L7Config()


def dns_streams(name: str) -> list[Stream]:
    return by_port(name, 53)


run = partial(spec_messages, SPEC)


def well_formed(r, config: L7Config = CFG) -> None:
    """What every feed result must look like, whatever the input."""
    for m in feed_result(r, "dns: ", {DNS}, (REQUEST, RESPONSE, SESSION)):
        assert len(m.response_result) <= config.result_max
        assert m.length is None or 0 <= m.captured <= m.length
        assert m.session_id is None or 0 <= m.session_id <= 0xFFFF


# -- real traffic ----------------------------------------------------------------------------------
# One row per kind of query lab.sh sends: qname pattern, request_type, request_domain?, rcode,
# response_status, response_exception, response_result.
KINDS = [
    (r"web\.lab\.test", "A", True, 0, OK, "", "A 10.99.0.1"),
    (r"db\.lab\.test", "AAAA", True, 0, OK, "", "AAAA fd00:99::1"),
    (r"lab\.test", "TXT", False, 0, OK, "", 'TXT "v=netlab1"'),
    (r"api\d+\.svc\.lab\.test", "A", True, 0, OK, "", "A 10.99.0.10"),           # wildcard
    (r"missing\d+\.lab\.test", "A", True, 3, CLIENT_ERROR, "NXDOMAIN", ""),
    (r"www\d+\.example\.org", "A", True, 5, SERVER_ERROR, "REFUSED", ""),          # no upstream
    (r"_http\._tcp\.lab\.test", "SRV", False, 0, OK, "", "SRV 0 0 80 web.lab.test"),
    (r"lab\.test", "MX", False, 0, OK, "", "MX 1 mail.lab.test"),
    (r"1\.0\.99\.10\.in-addr\.arpa", "PTR", False, 0, OK, "", "PTR web.lab.test"),
    (r"db\.lab\.test", "A", True, 0, OK, "", "A 10.99.0.1"),                       # over TCP
]


def kind_of(m) -> tuple:
    for row in KINDS:
        if re.fullmatch(row[0], m.request_resource) and row[1] == m.request_type:
            return row
    raise AssertionError(f"unexpected query {m.request_type} {m.request_resource}")


def test_dns_pcap_every_query_answered_exactly():
    flows = dns_streams("dns")
    assert len(flows) == 65
    assert sum(s.proto == 6 for s in flows) == 2
    seen = {}
    for s in flows:
        assert SPEC.check(s.segments[0].payload, s.segments[0].from_client)
        out = run(s)
        assert [m.type for m in out] == [REQUEST, RESPONSE], out
        q, a = out
        assert q.session_id == q.request_id == a.session_id == a.request_id
        assert q.ts <= a.ts
        row = kind_of(q)
        _, qtype, has_domain, rcode, status, exc, result = row
        for m in (q, a):
            assert m.request_type == qtype
            assert m.endpoint == m.request_resource
            assert m.request_domain == (m.request_resource if has_domain else "")
        assert q.attributes == {"opcode": "QUERY"}
        assert (a.response_code, a.response_status, a.response_exception, a.response_result) == \
            (rcode, status, exc, result)
        assert a.attributes == {"answers": "0" if rcode else "1", "opcode": "QUERY"}
        assert q.length == q.captured and a.length == a.captured
        if s.proto == 6:
            assert q.tcp_seq == s.segments[0].seq and q.length == s.segments[0].length
        else:
            assert q.tcp_seq == a.tcp_seq == 0
        seen[(row[0], qtype, s.proto)] = seen.get((row[0], qtype, s.proto), 0) + 1
    assert seen[(r"web\.lab\.test", "A", 17)] == 10 and seen[(r"missing\d+\.lab\.test", "A", 17)] == 10
    assert seen[(r"db\.lab\.test", "A", 6)] == 1 and seen[(r"lab\.test", "TXT", 6)] == 1


def client_log() -> dict[int, tuple[str, list[str]]]:
    """tests/data/clientlogs/dns.log (dig output): txid → (status, answer lines as "TYPE data")."""
    out: dict[int, tuple[str, list[str]]] = {}
    cur = None
    for line in (DATA / "clientlogs" / "dns.log").read_text().splitlines():
        h = re.search(r"status: (\w+), id: (\d+)", line)
        if h:
            cur = int(h.group(2))
            out[cur] = (h.group(1), [])
        elif line.strip() and cur is not None:
            _name, _ttl, _cls, rtype, data = line.split(None, 4)
            data = " ".join(w.rstrip(".") if not w.startswith('"') else w for w in data.split())
            out[cur][1].append(f"{rtype} {data}")
    return out


def test_dns_pcap_matches_client_log():
    log = client_log()
    answers = {m.request_id: m for s in dns_streams("dns") for m in run(s) if m.type == RESPONSE}
    assert set(answers) == set(log)
    for txid, (status, lines) in log.items():
        m = answers[txid]
        assert (m.response_exception or "NOERROR") == status
        n = int(m.attributes["answers"])        # dig also prints the additional section (SRV's A)
        assert m.response_result == "; ".join(lines[:n])


TSHARK_DNS = ["dns.id", "dns.flags.response", "dns.qry.name", "dns.qry.type", "dns.flags.rcode", "dns.count.answers"]


def tshark_rows(pcap: str) -> list[tuple]:
    rows = []
    for txid, resp, qname, qtype, rcode, ancount in tshark_fields(pcap, TSHARK_DNS, display="dns"):
        rows.append((int(txid, 16), int(resp), qname, int(qtype), int(rcode or 0) if resp == "1" else None,
                     int(ancount) if resp == "1" else None))
    return rows


QTYPE_NUMBERS = {"A": 1, "AAAA": 28, "TXT": 16, "SRV": 33, "MX": 15, "PTR": 12}


@needs_tshark
@pytest.mark.parametrize("pcap", ["dns", "ipv6", "mixed"])
def test_dns_matches_tshark(pcap):
    ours = []
    for s in dns_streams(pcap):
        for m in run(s):
            resp = m.type == RESPONSE
            ours.append((m.request_id, int(resp), m.request_resource, QTYPE_NUMBERS[m.request_type],
                         m.response_code if resp else None, int(m.attributes["answers"]) if resp else None))
    assert sorted(ours) == sorted(tshark_rows(pcap))


def test_dns_over_ipv6_and_in_mixed_traffic():
    v6 = [m for s in dns_streams("ipv6") for m in run(s)]
    assert [(m.type, m.request_type, m.request_domain, m.response_result) for m in v6] == [
        (REQUEST, "AAAA", "db.lab.test", ""), (RESPONSE, "AAAA", "db.lab.test", "AAAA fd00:99::1"),
        (REQUEST, "A", "web.lab.test", ""), (RESPONSE, "A", "web.lab.test", "A 10.99.0.1")]
    mixed = [m for s in dns_streams("mixed") for m in run(s)]
    assert len(mixed) == 130 and not any(isinstance(m, str) for m in mixed)
    for q, a in zip(mixed[::2], mixed[1::2], strict=True):
        assert q.session_id == a.session_id and kind_of(q) == kind_of(a)


def test_check_claims_dns_only():
    assert_not_claimed(SPEC.check, "http1", "redis", "mysql", "mqtt", "tls", "http2", "grpc")
    for s in dns_streams("dns"):                     # a query is not an answer, and the reverse
        q, a = s.segments[0], s.segments[1]
        assert not SPEC.check(q.payload, False) and not SPEC.check(a.payload, True)
        assert SPEC.check(a.payload, False)


# -- crafted messages ------------------------------------------------------------------------------
def qname(name: str) -> bytes:
    return b"".join(bytes([len(p)]) + p.encode() for p in name.split(".") if p) + b"\0"


def query(txid: int, name: str, qtype: int = 1, flags: int = 0x0100) -> bytes:
    return struct.pack("!HHHHHH", txid, flags, 1, 0, 0, 0) + qname(name) + struct.pack("!HH", qtype, 1)


def answer(txid: int, name: str, qtype: int, rrs: list[tuple[bytes, int, bytes]], rcode: int = 0) -> bytes:
    """A response; each rr is (owner bytes, type, rdata)."""
    body = qname(name) + struct.pack("!HH", qtype, 1)
    for owner, rtype, rdata in rrs:
        body += owner + struct.pack("!HHIH", rtype, 1, 60, len(rdata)) + rdata
    return struct.pack("!HHHHHH", txid, 0x8180 | rcode, 1, len(rrs), 0, 0) + body


PTR_Q = b"\xc0\x0c"                                    # compression pointer to the question name


def feed_all(parser, segs: list[tuple[bytes, int, bool, int]]) -> list:
    """(payload, length, from_client, seq) in order → messages, or the give-up reason at the end."""
    out: list = []
    for i, (payload, length, from_client, seq) in enumerate(segs):
        r = parser.feed(payload, length, from_client, 1000 + i, seq)
        well_formed(r)
        if isinstance(r, str):
            return out + [r]
        out += r
    return out


def test_compression_pointers_and_answer_types():
    name = "www.example.com"
    # CNAME www → web.example.com where "example.com" is a pointer into the question (offset 16)
    rrs = [(PTR_Q, 5, b"\x03web" + b"\xc0\x10"), (b"\x03web\xc0\x10", 1, bytes([192, 0, 2, 7])),
           (PTR_Q, 28, bytes(15) + b"\x01"), (PTR_Q, 16, b"\x02hi\x05there"),
           (PTR_Q, 33, struct.pack("!HHH", 1, 2, 443) + b"\xc0\x0c"), (PTR_Q, 99, b"xyz")]
    msg = answer(7, name, 1, rrs)
    m = SPEC.parser(CFG).feed(msg, len(msg), False, 5, 0)[0]
    assert m.response_result == ('CNAME web.example.com; A 192.0.2.7; AAAA ::1; TXT "hi" "there"; '
                                 "SRV 1 2 443 www.example.com; SPF \\# 3")
    assert (m.request_type, m.request_domain, m.attributes["answers"]) == ("A", name, "6")


@pytest.mark.parametrize(("blob", "reason"), [
    (struct.pack("!HHHHHH", 1, 0x0100, 1, 0, 0, 0) + b"\x01a\xc0\x0c" + b"\0\1\0\1", "dns: compression pointer loop"),
    (struct.pack("!HHHHHH", 1, 0x0100, 1, 0, 0, 0) + b"\xc0\x0c" + b"\0\1\0\1", "dns: compression pointer not"),
    (struct.pack("!HHHHHH", 1, 0x0100, 1, 0, 0, 0) + b"\xc0\x20" + bytes(40), "dns: compression pointer not"),
    (struct.pack("!HHHHHH", 1, 0x0100, 1, 0, 0, 0) + b"\x41a\0\0\1\0\1", "dns: reserved label type"),
    (struct.pack("!HHHHHH", 1, 0x0100, 1, 0, 0, 0) + b"\x03abc", "dns: a section runs past"),
    (struct.pack("!HHHHHH", 1, 0x3900, 1, 0, 0, 0) + qname("a.b") + b"\0\1\0\1", "dns: unknown opcode"),
    (b"\x12\x34\x01\x00\x00", "dns: message shorter"),
    (answer(9, "a.b", 1, [(PTR_Q, 1, b"\1\2\3")]), "dns: address record of the wrong length"),
], ids=["loop", "self-pointer", "forward-pointer", "label-type", "short-question", "opcode", "short-header",
        "a-length"])
def test_malformed_gives_up(blob, reason):
    r = SPEC.parser(CFG).feed(blob, len(blob), True, 1, 0)
    assert isinstance(r, str) and r.startswith(reason), r


def test_pointer_loop_is_bounded():
    # a chain of labels each ending in a pointer back to the previous one: the hop/length bounds stop it
    msg = bytearray(struct.pack("!HHHHHH", 1, 0x0100, 1, 0, 0, 0))
    msg += b"\x01a\xc0\x0c"
    with pytest.raises(Malformed):
        read_name(bytes(msg), 12)
    assert read_name(qname("x.y") + b"\xc0\x00", 0) == ("x.y", 5)


def test_dns_over_tcp_split_and_pipelined():
    msgs = [query(1, "a.lab.test"), query(2, "b.lab.test", 28), query(3, "c.lab.test", 16)]
    stream = b"".join(struct.pack("!H", len(m)) + m for m in msgs)
    seq0 = 0x7FFFFFF0                                   # wraps past 2^32 on the way
    for cuts in ([1], [2, 3], [len(stream) // 2], list(range(1, len(stream))), []):
        segs, prev = [], 0
        for c in [*cuts, len(stream)]:
            segs.append((stream[prev:c], c - prev, True, (seq0 + prev) & 0xFFFFFFFF))
            prev = c
        out = feed_all(SPEC.parser(CFG), segs)
        assert [(m.request_id, m.request_type, m.request_resource) for m in out] == [
            (1, "A", "a.lab.test"), (2, "AAAA", "b.lab.test"), (3, "TXT", "c.lab.test")]
        offsets = [0, len(msgs[0]) + 2, len(msgs[0]) + len(msgs[1]) + 4]
        assert [m.tcp_seq for m in out] == [(seq0 + o) & 0xFFFFFFFF for o in offsets]
        assert [m.length for m in out] == [len(m) + 2 for m in msgs]


def test_truncated_capture_keeps_what_was_captured():
    big = answer(5, "many.lab.test", 1, [(PTR_Q, 1, bytes([10, 0, 0, i])) for i in range(1, 60)])
    r = SPEC.parser(CFG).feed(big[:80], len(big), False, 1, 0)
    (m,) = r
    assert (m.type, m.request_id, m.request_domain, m.captured, m.length) == (RESPONSE, 5, "many.lab.test", 80,
                                                                             len(big))
    assert m.response_result == "A 10.0.0.1; A 10.0.0.2; A 10.0.0.3"      # the answers fully captured
    (m,) = SPEC.parser(CFG).feed(big[:8], len(big), False, 1, 0)  # not even a header: cannot pair
    assert (m.type, m.response_status) == (SESSION, PARSE_FAILED)
    # over TCP: the rest of a cut message is skipped by its length, the next one parsed
    q1, q2 = query(1, "x.lab.test"), query(2, "y.lab.test")
    wire = struct.pack("!H", len(big)) + big + struct.pack("!H", len(q2)) + q2
    p = SPEC.parser(CFG)
    seg1 = wire[:100]
    out = feed_all(p, [(struct.pack("!H", len(q1)) + q1, len(q1) + 2, True, 1),
                       (seg1, 200, False, 5000),
                       (wire[200:], len(wire) - 200, False, 5200)])
    assert [(m.type, m.request_id, m.captured) for m in out] == [(REQUEST, 1, len(q1) + 2), (RESPONSE, 5, 100),
                                                                 (REQUEST, 2, len(q2) + 2)]
    # a message that starts in the uncaptured bytes: its boundary is lost until a segment starts one
    p = SPEC.parser(CFG)
    out = feed_all(p, [(wire[:len(big) + 2], len(wire), False, 7), (b"\x01" * 40, 40, False, 9000),
                       (struct.pack("!H", len(big)) + big, len(big) + 2, False, 9040)])
    assert [(m.request_id, m.length) for m in out] == [(5, len(big) + 2), (5, len(big) + 2)]
    assert p.framers[0].lost is False
    p = SPEC.parser(CFG)
    p.feed(wire[:len(big) + 2], len(wire), False, 1, 7)
    results = [p.feed(b"\x01" * 40, 40, False, 1, 9000) for _ in range(257)]
    assert results[-1] == "dns: no message start found after lost bytes" and results[-2] == []


def test_missed_segment_and_overlap_by_sequence_numbers():
    q1, q2 = query(1, "x.lab.test"), query(2, "y.lab.test")
    wire = struct.pack("!H", len(q1)) + q1 + struct.pack("!H", len(q2)) + q2
    a = len(q1) + 2
    # a segment inside the first query was missed: it is skipped, the second query parsed
    out = feed_all(SPEC.parser(CFG), [(wire[:16], 16, True, 100), (wire[20:], len(wire) - 20, True, 120)])
    assert [(m.request_id, m.captured, m.length, m.tcp_seq) for m in out] == [(1, 16, a, 100),
                                                                             (2, len(q2) + 2, len(q2) + 2, 100 + a)]
    # a segment that partly repeats what was fed: the repeated part is dropped
    out = feed_all(SPEC.parser(CFG), [(wire[:30], 30, True, 100), (wire[20:], len(wire) - 20, True, 120)])
    assert [(m.request_id, m.request_resource) for m in out] == [(1, "x.lab.test"), (2, "y.lab.test")]
    # a missed segment that held the start of the second query: lost until a segment starts a message
    p = SPEC.parser(CFG)
    out = feed_all(p, [(wire[:a], a, True, 100), (wire[a + 5:], len(wire) - a - 5, True, 100 + a + 5)])
    assert [m.request_id for m in out] == [1] and p.framers[1].lost


def test_result_clipped():
    rrs = [(PTR_Q, 1, bytes([10, 1, i // 256, i % 256])) for i in range(300)]
    msg = answer(8, "big.lab.test", 1, rrs)
    cfg = L7Config(result_max=50)
    (m,) = SPEC.parser(cfg).feed(msg, len(msg), False, 1, 0)
    assert len(m.response_result) == 50 and m.response_result.endswith("...")
    assert m.attributes["answers"] == "300"


def test_labels_with_odd_bytes_are_escaped():
    msg = struct.pack("!HHHHHH", 4, 0x0100, 1, 0, 0, 0) + b"\x03a.b\x02\xff\x20\x00" + b"\0\1\0\1"
    (m,) = SPEC.parser(CFG).feed(msg, len(msg), True, 1, 0)
    assert m.request_resource == "a\\046b.\\255\\032"
    root = struct.pack("!HHHHHH", 4, 0x0100, 1, 0, 0, 0) + b"\0\0\2\0\1"
    assert SPEC.parser(CFG).feed(root, len(root), True, 1, 0)[0].request_resource == "."


# -- fuzzing ---------------------------------------------------------------------------------------
REAL = [seg for name in ("dns", "mixed") for s in dns_streams(name) for seg in s.segments]


def test_fuzz_mutated_real_payloads_seeded():
    rng = random.Random(1209)
    for _ in range(3000):
        seg = rng.choice(REAL)
        data = mutate(rng, seg.payload)
        cut = rng.choice([len(data), rng.randrange(len(data) + 1)])
        p = SPEC.parser(CFG)
        seq = seg.seq
        for _ in range(rng.randint(1, 3)):
            r = p.feed(data[:cut], len(data), seg.from_client, seg.ts, seq)
            well_formed(r)
            if isinstance(r, str):
                break
            seq = (seq + len(data)) & 0xFFFFFFFF if seq else 0
        if p.framers:
            assert all(len(f.buf) <= CFG.max_buffer + len(data) for f in p.framers)


@FUZZ
@given(CHUNKS, st.booleans())
def test_fuzz_random_bytes(chunks, tcp):
    """Random datagrams, or a random TCP stream (its framers' buffers bounded)."""
    cfg = L7Config(max_buffer=512)
    fuzz_chunks(SPEC.parser(cfg), chunks, lambda r: well_formed(r, cfg), (lambda p: p.framers) if tcp else None, 512,
                seq=int(tcp), advance=tcp)
    SPEC.check(chunks[0][0], chunks[0][1])


@settings(max_examples=200, deadline=None)
@given(st.sampled_from(REAL), st.data())
def test_fuzz_resegmented_tcp_gives_same_messages(seg: Segment, data):
    """Any split of a TCP stream into segments gives the same messages."""
    msg = seg.payload if seg.seq else struct.pack("!H", len(seg.payload)) + seg.payload
    wire = msg * 3
    cuts = sorted(set(data.draw(st.lists(st.integers(1, len(wire) - 1), max_size=8))))
    segs, prev = [], 0
    for c in [*cuts, len(wire)]:
        segs.append((wire[prev:c], c - prev, seg.from_client, 100 + prev))
        prev = c
    out = feed_all(SPEC.parser(CFG), segs)
    whole = feed_all(SPEC.parser(CFG), [(wire, len(wire), seg.from_client, 100)])
    key = [(m.type, m.request_id, m.request_resource, m.response_result, m.tcp_seq, m.length) for m in out]
    assert key == [(m.type, m.request_id, m.request_resource, m.response_result, m.tcp_seq, m.length)
                   for m in whole]
    assert len(out) == 3
