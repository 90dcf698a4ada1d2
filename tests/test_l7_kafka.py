"""Kafka parser (collector/l7/kafka.py) on real traffic, crafted messages and fuzz.

How tests/data/kafka.pcap was made (tests/data/gen/kafka_lab.py, README beside it): a real TCP
exchange between a scripted client in the netlab-cli namespace and a small fake broker in
netlab-srv (10.99.0.2 → 10.99.0.1:9092), captured with tcpdump -s 0 on the client's eth0. No Kafka
broker exists here, so both ends were built with kafka-python's own encoders: every request and
every response on the wire is a kafka-python ``kafka.protocol`` ApiMessage encoded with
``encode(header=True, framed=True)`` (the broker decoded the requests with the same classes), the
record batches come from ``kafka.record.MemoryRecordsBuilder``. Nothing on the wire is hand-made;
which error code each answer carries was chosen by the fake broker, as a real one would answer.
The crafted cases below are encoded with kafka-python too; tagged fields in headers and the
lost/garbage cases are hand-made bytes.
"""

from __future__ import annotations

import random
import struct
import uuid
import warnings
from functools import partial

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from collector.l7 import kafka
from collector.l7.base import (
    KAFKA,
    PARSE_FAILED,
    REQUEST,
    RESPONSE,
    SERVER_ERROR,
    SESSION,
    GiveUp,
    L7Config,
    L7Message,
)
from collector.l7.stream import LOST_SEGMENTS_MAX
from tests.l7util import (
    Segment,
    Stream,
    by_time,
    converse,
    fed_chunks,
    feed_result,
    fuzz_overwritten,
    fuzz_seeded,
    needs_tshark,
    no_give_up,
    other_segments,
    paired_by_id,
    spec_messages,
    spec_row,
    streams,
    tshark_fields,
    until_given_up,
    wire_positions,
)

with warnings.catch_warnings():     # kafka-python 3.0 loads its schemas with importlib.resources' legacy API
    warnings.simplefilter("ignore", DeprecationWarning)
    from kafka.protocol.consumer import FetchRequest, FetchResponse
    from kafka.protocol.metadata import ApiVersionsResponse, MetadataRequest, MetadataResponse
    from kafka.protocol.producer import ProduceRequest, ProduceResponse
    from kafka.record import MemoryRecordsBuilder

CONFIG = L7Config()

# The pcap, per connection, in order: (type, correlation id, API, api_version, topic, resource,
# response_code, response_exception). Requests carry the API version, responses the code.
CONN_LAB = [
    (REQUEST, 1, "ApiVersions", "3", "", "", None, ""),
    (RESPONSE, 1, "ApiVersions", None, "", "", 0, ""),
    (REQUEST, 2, "Metadata", "1", "", "", None, ""),
    (RESPONSE, 2, "Metadata", None, "", "", 0, ""),
    (REQUEST, 3, "Metadata", "9", "", "", None, ""),
    (RESPONSE, 3, "Metadata", None, "", "", 3, "UNKNOWN_TOPIC_OR_PARTITION"),
    (REQUEST, 4, "Produce", "3", "orders", "orders-0", None, ""),
    (RESPONSE, 4, "Produce", None, "", "", 0, ""),
    (REQUEST, 5, "Produce", "9", "no-such-topic", "no-such-topic-0", None, ""),
    (RESPONSE, 5, "Produce", None, "", "", 3, "UNKNOWN_TOPIC_OR_PARTITION"),
    (SESSION, 6, "Produce", "7", "orders", "orders-1", None, ""),          # acks=0: no response
    (REQUEST, 7, "Fetch", "4", "orders", "orders-0", None, ""),
    (RESPONSE, 7, "Fetch", None, "", "", 0, ""),
    (REQUEST, 8, "Fetch", "12", "orders", "orders-0", None, ""),
    (RESPONSE, 8, "Fetch", None, "", "", 0, ""),                           # ~3 KB over 3 segments
    (REQUEST, 9, "Fetch", "11", "orders", "orders-0", None, ""),
    (RESPONSE, 9, "Fetch", None, "", "", 1, "OFFSET_OUT_OF_RANGE"),
    (REQUEST, 10, "Metadata", "4", "", "", None, ""),                      # 10 and 11 in one segment
    (REQUEST, 11, "FindCoordinator", "1", "", "", None, ""),
    (RESPONSE, 10, "Metadata", None, "", "", 0, ""),                       # answered in one segment
    (RESPONSE, 11, "FindCoordinator", None, "", "", 15, "COORDINATOR_NOT_AVAILABLE"),
]
CONN_CONSUMER = [
    (REQUEST, 0, "ApiVersions", "0", "", "", None, ""),
    (RESPONSE, 0, "ApiVersions", None, "", "", 0, ""),
    (REQUEST, 1, "Fetch", "12", "orders", "orders-0", None, ""),
    (RESPONSE, 1, "Fetch", None, "", "", 70, "FETCH_SESSION_ID_NOT_FOUND"),   # top-level error_code
]
CLIENT_IDS = {0: "flowscope-lab", 1: "lab-consumer"}
parse = partial(spec_messages, kafka.SPEC)


def row(m: L7Message) -> tuple:
    if m.type == RESPONSE:
        return (m.type, m.session_id, m.request_type, None, "", "", m.response_code, m.response_exception)
    return (m.type, m.session_id, m.request_type, m.attributes["api_version"], m.request_domain,
            m.request_resource, m.response_code, m.response_exception)


def kafka_streams() -> list[Stream]:
    return by_time("kafka")


# --- the pcap ---------------------------------------------------------------------------------

def test_spec() -> None:
    assert spec_row(kafka.SPEC) == ((100, "Kafka", frozenset({9092}), frozenset({6})), (KAFKA, "Kafka", 120.0))


def test_pcap_messages() -> None:
    """Every request and response of both connections, exactly, in capture order."""
    conns = kafka_streams()
    assert [s.server[1] for s in conns] == [9092, 9092]
    for i, (stream, want) in enumerate(zip(conns, (CONN_LAB, CONN_CONSUMER), strict=True)):
        got = parse(stream)
        assert all(isinstance(m, L7Message) for m in got), got
        assert [row(m) for m in got] == want
        for m in got:
            assert m.l7_protocol == KAFKA and m.request_id == m.session_id
            if m.type != RESPONSE:
                assert m.attributes["client_id"] == CLIENT_IDS[i]
                assert m.endpoint == (m.request_domain or m.request_type)
            assert m.response_status == (SERVER_ERROR if m.response_code else 0)


def test_pcap_pairing_timestamps_and_sequence_numbers() -> None:
    """Each response follows its request (same correlation id and API), never earlier; the
    sequence number of a message is where its length prefix starts; lengths are the prefix's."""
    for stream in kafka_streams():
        got = parse(stream)
        for req, resp in paired_by_id(got):
            assert (req.request_type, req.session_id) == (resp.request_type, resp.session_id)
        # each direction's byte stream: each message's offset and size
        for m, data, off in wire_positions(stream, got):
            assert struct.unpack_from(">i", data, off)[0] == m.length
            assert m.captured == m.length + 4
            assert struct.unpack_from(">i", data, off + (4 if m.type == RESPONSE else 8))[0] == m.session_id


def test_check_claims_the_pcap_and_nothing_else() -> None:
    for stream in kafka_streams():
        first = stream.segments[0]
        assert first.from_client and kafka.check(first.payload, True)
        assert not kafka.check(first.payload, False)
    for name, seg in other_segments("kafka"):          # any payload, either way round (mid-flow pickup)
        assert not kafka.check(seg.payload, True), (name, seg.payload[:32])


def _tshark_fields(pcap: str) -> list[dict]:
    fields = ["frame.number", "tcp.srcport", "tcp.dstport", "kafka.api_key", "kafka.correlation_id",
              "kafka.topic_name", "kafka.error"]
    rows = []
    for line in tshark_fields(pcap, fields, decode="tcp.port==9092,kafka", separator="|"):
        vals = [v.split(",") if v else [] for v in line]
        if vals[4]:
            rows.append(dict(zip(["frame", "sport", "dport", "api", "corr", "topic", "error"], vals, strict=True)))
    return rows


@needs_tshark
def test_tshark_agrees() -> None:
    """tshark's Kafka dissector (4.0 decodes the non-flexible versions' bodies) sees the same API
    keys and correlation ids; where it decoded topics and error codes, they match ours."""
    rows = _tshark_fields("kafka")
    ours: dict[tuple, L7Message] = {}
    for stream in kafka_streams():
        for m in parse(stream):
            ours[(stream.client[1], m.type != RESPONSE, m.session_id)] = m
    names = {k: v[0] for k, v in kafka.APIS.items()}
    seen = 0
    for r in rows:
        from_client = r["dport"][0] == "9092"
        port = int(r["sport"][0] if from_client else r["dport"][0])
        msgs = [ours[(port, from_client, int(corr))] for corr in r["corr"]]
        if r["api"]:                                        # 4.0 loses the API of some flexible responses
            assert [m.request_type for m in msgs] == [names[int(a)] for a in r["api"]], r
            seen += len(msgs)
        if len(msgs) == 1:                                  # one message in the frame: attribute its fields
            m = msgs[0]
            if from_client and r["topic"] and m.request_type in ("Produce", "Fetch"):
                assert m.request_domain == r["topic"][0]
            if not from_client and r["error"]:
                codes = [int(e) for e in r["error"]]
                assert m.response_code == next((c for c in codes if c), 0), (r, m)
    assert seen >= 20


# --- crafted: framing ---------------------------------------------------------------------------

def records(n: int = 2, size: int = 30) -> bytes:
    b = MemoryRecordsBuilder(magic=2, compression_type=0, batch_size=1 << 20)
    for i in range(n):
        b.append(timestamp=1_700_000_000_000 + i, key=b"k", value=b"v" * size, headers=[])
    b.close()
    return bytes(b.buffer())


def produce(corr: int, version: int = 9, topic: str = "t1", partition: int = 7, acks: int = 1) -> bytes:
    P = ProduceRequest.TopicProduceData
    r = ProduceRequest(transactional_id=None, acks=acks, timeout_ms=100, version=version, topic_data=[
        P(name=topic, topic_id=uuid.UUID(int=7), partition_data=[P.PartitionProduceData(index=partition,
                                                                                       records=records())])])
    r.with_header(correlation_id=corr, client_id="crafted")
    return bytes(r.encode(header=True, framed=True))


def produce_response(corr: int, version: int = 9, codes: tuple[int, ...] = (0,)) -> bytes:
    R = ProduceResponse.TopicProduceResponse
    r = ProduceResponse(version=version, throttle_time_ms=0, responses=[R(name="t1", topic_id=uuid.UUID(int=7), partition_responses=[
        R.PartitionProduceResponse(index=i, error_code=c, base_offset=0) for i, c in enumerate(codes)])])
    r.with_header(correlation_id=corr)
    return bytes(r.encode(header=True, framed=True))


def fetch(corr: int, version: int, topic: str = "t1", partition: int = 3) -> bytes:
    F = FetchRequest.FetchTopic
    r = FetchRequest(replica_id=-1, max_wait_ms=1, min_bytes=1, max_bytes=1 << 20, isolation_level=0, session_id=0,
                     session_epoch=-1, forgotten_topics_data=[], rack_id="", version=version, topics=[
                         F(topic=topic, topic_id=uuid.UUID(int=9), partitions=[F.FetchPartition(partition=partition)])])
    r.with_header(correlation_id=corr, client_id="crafted")
    return bytes(r.encode(header=True, framed=True))


def fetch_response(corr: int, version: int, codes: tuple[int, ...], top: int = 0, record_bytes: int = 100) -> bytes:
    R = FetchResponse.FetchableTopicResponse
    parts = [R.PartitionData(partition_index=i, error_code=c, high_watermark=1,
                             aborted_transactions=[R.PartitionData.AbortedTransaction(producer_id=1, first_offset=0)],
                             records=records(1, record_bytes)) for i, c in enumerate(codes)]
    r = FetchResponse(version=version, throttle_time_ms=0, error_code=top, session_id=0,
                      responses=[R(topic="t1", topic_id=uuid.UUID(int=9), partitions=parts)])
    r.with_header(correlation_id=corr)
    return bytes(r.encode(header=True, framed=True))


def feed_all(p, chunks: list[tuple[bytes, bool]], ts0: int = 1000) -> list:
    """Feed (bytes, from_client) chunks with per-direction sequence numbers; all results."""
    return converse(p, chunks, ts0=ts0, check=no_give_up)


def test_split_at_every_byte() -> None:
    """A request and its response cut in two at every offset (inside the length prefix, the
    header, the tagged fields, the body) give the same two messages."""
    req, resp = produce(42), produce_response(42, codes=(0, 6))
    for cut in range(1, max(len(req), len(resp))):
        p = kafka.KafkaParser(CONFIG)
        chunks = [(req[:cut], True), (req[cut:], True)] if cut < len(req) else [(req, True)]
        chunks += [(resp[:cut], False), (resp[cut:], False)] if cut < len(resp) else [(resp, False)]
        got = feed_all(p, [c for c in chunks if c[0]])
        assert [(m.type, m.session_id, m.request_type) for m in got] == [(REQUEST, 42, "Produce"),
                                                                           (RESPONSE, 42, "Produce")], cut
        assert (got[0].request_resource, got[0].tcp_seq, got[0].ts, got[0].length) == ("t1-7", 1000, 1000, len(req) - 4)
        assert (got[1].response_code, got[1].response_exception, got[1].tcp_seq) == (6, "NOT_LEADER_OR_FOLLOWER", 5000)


def test_every_byte_alone() -> None:
    req, resp = fetch(9, 12), fetch_response(9, 12, (0, 0, 74))
    p = kafka.KafkaParser(CONFIG)
    got = feed_all(p, [(bytes([b]), True) for b in req] + [(bytes([b]), False) for b in resp])
    assert [(m.type, m.session_id, m.request_resource, m.response_code) for m in got] == \
        [(REQUEST, 9, "t1-3", None), (RESPONSE, 9, "", 74)]
    assert got[0].ts == 1000 and got[1].ts == 1000 + len(req)


def test_several_per_segment() -> None:
    """Pipelined requests in one segment and their responses in one segment; a message may
    also end in the middle of the next segment."""
    reqs = [produce(i, version=v) for i, v in enumerate((3, 5, 8, 9, 11))]
    resps = [produce_response(i, version=v, codes=(0, i)) for i, v in enumerate((3, 5, 8, 9, 11))]
    blob = b"".join(reqs)
    rblob = b"".join(resps)
    p = kafka.KafkaParser(CONFIG)
    got = feed_all(p, [(blob[:300], True), (blob[300:], True), (rblob, False)])
    assert [(m.type, m.session_id) for m in got] == [(REQUEST, i) for i in range(5)] + [(RESPONSE, i) for i in range(5)]
    offs = [1000 + sum(len(r) for r in reqs[:i]) for i in range(5)]
    assert [m.tcp_seq for m in got[:5]] == offs
    assert [m.response_code for m in got[5:]] == [0, 1, 2, 3, 4]


def test_flexible_headers_with_tagged_fields() -> None:
    """Request header v2 and response header v1 carrying tagged fields (hand-inserted: tag 0,
    3 bytes) are skipped; ApiVersions responses keep header v0 even for flexible versions."""
    req = produce(5, version=9)
    cid_end = 4 + 8 + 2 + len("crafted")
    assert req[cid_end] == 0                                 # empty tagged fields
    body = req[4:cid_end] + b"\x01\x00\x03abc" + req[cid_end + 1:]
    req2 = struct.pack(">i", len(body)) + body
    resp = produce_response(5, version=9, codes=(0, 19))
    rbody = resp[4:8] + b"\x02\x00\x01z\x05\x02yy" + resp[9:]
    resp2 = struct.pack(">i", len(rbody)) + rbody
    p = kafka.KafkaParser(CONFIG)
    got = feed_all(p, [(req2, True), (resp2, False)])
    assert (got[0].request_domain, got[0].request_resource, got[0].attributes["client_id"]) == ("t1", "t1-7", "crafted")
    assert (got[1].response_code, got[1].response_exception) == (19, "NOT_ENOUGH_REPLICAS")
    # ApiVersions v3: flexible body, header v0: the error code follows the correlation id directly
    av = ApiVersionsResponse(error_code=35, api_keys=[], throttle_time_ms=0, version=3)
    av.with_header(correlation_id=8)
    areq = struct.pack(">hhih", 18, 3, 8, 1) + b"c" + b"\x00" + b"\x02x\x021\x00"
    got = feed_all(kafka.KafkaParser(CONFIG), [(struct.pack(">i", len(areq)) + areq, True),
                                               (bytes(av.encode(header=True, framed=True)), False)])
    assert [(m.request_type, m.response_code) for m in got] == [("ApiVersions", None), ("ApiVersions", 35)]


@pytest.mark.parametrize("version", range(0, 14))
def test_produce_versions(version: int) -> None:
    got = feed_all(kafka.KafkaParser(CONFIG), [(produce(1, version), True),
                                               (produce_response(1, version, (0, 0, 45)), False)])
    req, resp = got
    if version <= 12:
        assert (req.request_domain, req.request_resource, req.endpoint) == ("t1", "t1-7", "t1")
    else:                                                   # v13: topic ids instead of names
        assert (req.request_domain, req.endpoint, req.attributes["topic_id"]) == ("", "Produce", "0" * 31 + "7")
    assert (resp.response_code, resp.response_status) == (45, SERVER_ERROR)


@pytest.mark.parametrize("version", range(0, 19))
def test_fetch_versions(version: int) -> None:
    """Record batches are skipped by length to reach the next partition's error code; Fetch
    v7+ top-level error codes win."""
    got = feed_all(kafka.KafkaParser(CONFIG), [(fetch(1, version), True),
                                               (fetch_response(1, version, (0, 0, 75)), False)])
    req, resp = got
    if version <= 12:
        assert (req.request_domain, req.request_resource) == ("t1", "t1-3")
    else:
        assert req.attributes["topic_id"] == "0" * 31 + "9"
    assert resp.response_code == 75
    if version >= 7:
        got = feed_all(kafka.KafkaParser(CONFIG), [(fetch(2, version), True),
                                                   (fetch_response(2, version, (0,), top=71), False)])
        assert (got[1].response_code, got[1].response_exception) == (71, "INVALID_FETCH_SESSION_EPOCH")


@pytest.mark.parametrize("version", range(0, 14))
def test_metadata_versions(version: int) -> None:
    M = MetadataResponse
    P = M.MetadataResponseTopic.MetadataResponsePartition
    topics = [M.MetadataResponseTopic(error_code=0, name="a", partitions=[
        P(error_code=0, partition_index=0, replica_nodes=[1, 2], isr_nodes=[1], offline_replicas=[2]),
        P(error_code=9, partition_index=1, replica_nodes=[1], isr_nodes=[], offline_replicas=[])])]
    resp = M(version=version, brokers=[M.MetadataResponseBroker(node_id=1, host="h", port=1, rack="r")],
             cluster_id="c", controller_id=1, topics=topics)
    resp.with_header(correlation_id=3)
    req = MetadataRequest(topics=[MetadataRequest.MetadataRequestTopic(name="a")], version=version)
    req.with_header(correlation_id=3, client_id="x")
    got = feed_all(kafka.KafkaParser(CONFIG), [(bytes(req.encode(header=True, framed=True)), True),
                                               (bytes(resp.encode(header=True, framed=True)), False)])
    assert (got[1].request_type, got[1].response_code, got[1].response_exception) == \
        ("Metadata", 9, "REPLICA_NOT_AVAILABLE")


@pytest.mark.parametrize(("key", "version", "body", "code"), [
    (12, 0, struct.pack(">h", 25), 25),                     # Heartbeat v0: error first
    (12, 4, struct.pack(">ih", 0, 25) + b"\x00", 25),       # v1+: throttle_time_ms, then error
    (11, 2, struct.pack(">ih", 0, 27) + b"\x00" * 20, 27),  # JoinGroup v2+
    (11, 1, struct.pack(">h", 0) + b"\x00" * 20, 0),
    (36, 0, struct.pack(">h", 58) + b"\xff\xff" + b"\x00\x00\x00\x00", 58),   # SaslAuthenticate
    (10, 4, b"\x00" * 30, None),                            # FindCoordinator v4: per-key errors, not read
    (19, 5, b"\x00" * 30, None),                            # CreateTopics: per-topic errors, not read
])
def test_top_level_error_codes(key: int, version: int, body: bytes, code: int | None) -> None:
    flex_from = kafka.APIS[key][2]
    flex = flex_from is not None and version >= flex_from
    req = struct.pack(">hhih", key, version, 77, 1) + b"c" + (b"\x00" if flex else b"") + b"\x00" * 8
    resp = struct.pack(">i", 77) + (b"\x00" if flex else b"") + body
    got = feed_all(kafka.KafkaParser(CONFIG), [(struct.pack(">i", len(req)) + req, True),
                                               (struct.pack(">i", len(resp)) + resp, False)])
    assert (got[1].request_type, got[1].response_code) == (kafka.APIS[key][0], code)
    assert got[1].response_status == (SERVER_ERROR if code else 0)


def test_acks0_produce_is_a_session() -> None:
    got = feed_all(kafka.KafkaParser(CONFIG), [(produce(3, 7, acks=0), True), (produce(4, 7, acks=1), True)])
    assert [(m.type, m.session_id) for m in got] == [(SESSION, 3), (REQUEST, 4)]


def test_unknown_correlation_id_and_unknown_api() -> None:
    """A response to no request seen is still reported (its API unknown); a newer API key
    than the table's is reported by number."""
    p = kafka.KafkaParser(CONFIG)
    got = feed_all(p, [(produce_response(99), False)])
    assert [(m.type, m.session_id, m.request_type, m.response_code) for m in got] == [(RESPONSE, 99, "", None)]
    req = struct.pack(">hhih", 120, 0, 5, 1) + b"c" + b"\x00" * 4
    got = feed_all(p, [(struct.pack(">i", len(req)) + req, True), (struct.pack(">ii", 4, 5), False)])
    assert [(m.type, m.request_type, m.response_code, m.response_status) for m in got] == \
        [(REQUEST, "ApiKey120", None, 0), (RESPONSE, "ApiKey120", None, 0)]


# --- crafted: truncation, lost bytes, bounds, garbage ------------------------------------------

@pytest.mark.parametrize(("snaplen", "lost"), [
    (100, [(REQUEST, 11), (RESPONSE, 11)]),     # 34 payload bytes a packet
    (160, [(RESPONSE, 11)]),                    # 94: the pipelined requests fit, the responses do not
])
def test_truncated_capture_keeps_pairing(snaplen: int, lost: list) -> None:
    """With a short snaplen every message whose header was captured is still reported with its
    correlation id; uncaptured bodies are skipped by length. Lost: what starts in uncaptured
    bytes (the second of the pipelined messages)."""
    full = {(s.client[1], m.type, m.session_id, m.tcp_seq): m for s in kafka_streams() for m in parse(s)}
    cut = {}
    for s in streams("kafka", snaplen=snaplen):
        got = parse(s)
        assert all(isinstance(m, L7Message) for m in got), got
        cut.update({(s.client[1], m.type, m.session_id, m.tcp_seq): m for m in got})
    assert sorted((t, sid) for _, t, sid, _ in set(full) - set(cut)) == lost
    assert not set(cut) - set(full)
    for k, m in cut.items():
        f = full[k]
        assert (m.request_type, m.length, m.ts) == (f.request_type, f.length, f.ts)
        assert m.request_domain == f.request_domain or (snaplen == 100 and not m.request_domain)
        assert m.captured <= f.captured
        if m.type == RESPONSE and m.response_code is None:
            assert m.response_status == PARSE_FAILED          # its error codes were not captured
        elif m.type == RESPONSE:
            assert m.response_code == f.response_code


def test_lost_bytes_resync_on_a_new_message() -> None:
    """Uncaptured bytes holding the next message's start lose the framing; the parser waits
    for a segment that starts a request (or a response to a pending one)."""
    a, b, c = produce(1), produce(2), produce(3)
    p = kafka.KafkaParser(CONFIG)
    first = a + b[:5]                                       # b's header only partly captured
    r = p.feed(a, len(first) + 30, True, 1, 100)            # …and 30 more bytes missing
    assert [m.session_id for m in r] == [1]
    assert p.feed(b[35:], len(b) - 35, True, 2, 0) == []    # the rest of b: no message start
    r = p.feed(c, len(c), True, 3, 1000)
    assert [(m.session_id, m.tcp_seq) for m in r] == [(3, 1000)]
    r = p.feed(produce_response(3), len(produce_response(3)), False, 4, 0)
    assert [(m.type, m.session_id) for m in r] == [(RESPONSE, 3)]
    # never a start again: given up
    r = until_given_up(lambda: p.feed(b"\x00" * 20, 40, True, 5, 0), LOST_SEGMENTS_MAX + 5)
    assert isinstance(r, GiveUp) and r.startswith("kafka: ")


def test_large_fetch_response_bounded_memory() -> None:
    """A 600 KB Fetch response through 1448-byte segments: the parser keeps at most max_buffer
    bytes of it, yet reads the error code of the first partition (before its records)."""
    cfg = L7Config(max_buffer=4096)
    p = kafka.KafkaParser(cfg)
    feed_all(p, [(fetch(5, 12), True)])
    resp = fetch_response(5, 12, (30, 0), record_bytes=300_000)
    got = []
    for i in range(0, len(resp), 1448):
        seg = resp[i:i + 1448]
        got += p.feed(seg, len(seg), False, 10 + i, 77 + i)
        assert len(p.sides[0].keep) <= 4096 and len(p.sides[0].head) <= 4
    assert [(m.session_id, m.response_code, m.length, m.captured) for m in got] == [(5, 30, len(resp) - 4, len(resp))]
    # all partitions OK: the codes kept (top level, first partition) were 0 and the rest was
    # captured, only not kept: OK, not "parse failed"
    feed_all(p, [(fetch(6, 12), True)])
    resp = fetch_response(6, 12, (0, 0), record_bytes=300_000)
    got = [m for i in range(0, len(resp), 1448) for m in p.feed(resp[i:i + 1448], len(resp[i:i + 1448]), False, 1, 0)]
    assert [(m.session_id, m.response_code, m.response_status) for m in got] == [(6, 0, 0)]


def test_pending_requests_bounded() -> None:
    p = kafka.KafkaParser(CONFIG)
    feed_all(p, [(produce(i), True) for i in range(kafka.PENDING_MAX + 50)])
    assert len(p.pending) == kafka.PENDING_MAX


@pytest.mark.parametrize(("payload", "from_client"), [
    (b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", True),
    (b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + bytes(40), True),
    (struct.pack(">ihhih", 20, 3000, 1, 1, 1) + b"x" + bytes(8), True),      # api_key 3000
    (struct.pack(">ihhih", 20, 0, 900, 1, 1) + b"x" + bytes(8), True),       # version 900
    (struct.pack(">i", 2), False),                                           # response shorter than a corr id
    (struct.pack(">i", -5) + bytes(8), True),
])
def test_garbage_gives_up(payload: bytes, from_client: bool) -> None:
    r = kafka.KafkaParser(CONFIG).feed(payload, len(payload), from_client, 1, 0)
    assert isinstance(r, GiveUp) and r.startswith("kafka: "), r


def test_responses_to_nothing_give_up() -> None:
    p = kafka.KafkaParser(CONFIG)
    r = []
    for i in range(kafka.UNMATCHED_MAX + 1):
        r = p.feed(struct.pack(">ii", 4, 1000 + i), 8, False, i, 0)
    assert isinstance(r, GiveUp) and r.startswith("kafka: ")


def test_check() -> None:
    req = produce(1)
    assert kafka.check(req, True) and kafka.check(req + produce(2)[:30], True)
    assert not kafka.check(req, False)
    assert not kafka.check(req + b"\x00" * 20, True)          # what follows is no request
    assert not kafka.check(req[:13], True) and not kafka.check(req[:100], True)   # a short cut-off segment…
    big = fetch(1, 4, topic="t" * 600)
    assert kafka.check(big[:600], True)                      # …but a full-sized one may continue
    bad_cid = req[:14] + b"\x01" + req[15:]
    assert not kafka.check(bad_cid, True)
    no_cid = struct.pack(">hhih", 3, 1, 1, -1) + struct.pack(">i", -1)
    assert not kafka.check(struct.pack(">i", len(no_cid)) + no_cid, True)
    h2_settings = bytes.fromhex("000012040000000000000300000080000400010000")
    assert not kafka.check(h2_settings, True)
    assert kafka.error_name(-1) == "UNKNOWN_SERVER_ERROR" and kafka.error_name(999) == "ERROR_999"


# --- fuzz ---------------------------------------------------------------------------------------

def real_payloads() -> list[Segment]:
    return [seg for s in kafka_streams() for seg in s.segments]


def check_results(p: kafka.KafkaParser, r) -> None:
    """Well-formed output and bounded state after any feed."""
    for m in feed_result(r, "kafka: ", {KAFKA}, (REQUEST, RESPONSE, SESSION)):
        assert isinstance(m.session_id, int) and -(1 << 31) <= m.session_id < (1 << 31)
        assert isinstance(m.request_type, str) and isinstance(m.request_domain, str)
        assert m.response_code is None or isinstance(m.response_code, int)
        assert isinstance(m.length, int) and m.length >= 0 and 0 <= m.tcp_seq <= 0xFFFFFFFF
    for s in p.sides:
        assert len(s.keep) <= p.cap and len(s.head) <= 4
    assert len(p.pending) <= kafka.PENDING_MAX


def test_fuzz_seeded() -> None:
    fuzz_seeded(kafka.KafkaParser, real_payloads(), check_results, 4, flip=True)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(st.binary(max_size=200), st.booleans(), st.integers(0, 300)), max_size=12),
       st.integers(0, 10_000))
def test_fuzz_hypothesis(chunks: list[tuple[bytes, bool, int]], seed: int) -> None:
    """Random chunks, alone and spliced after real messages, never raise."""
    segs = real_payloads()
    for prefix in ([], segs[:3]):
        p = kafka.KafkaParser(L7Config(max_buffer=128))
        for seg in prefix:
            check_results(p, p.feed(seg.payload, seg.length, seg.from_client, seg.ts, seg.seq))
        for r, _ in fed_chunks(p, chunks, seq=seed, advance=False):
            check_results(p, r)
    fuzz_overwritten(kafka.KafkaParser(CONFIG), segs, random.Random(seed), check_results, 4, flip=True)
