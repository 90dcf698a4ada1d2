"""HTTP/2 (h2c) and gRPC parser: the committed captures (nginx h2c, grpcio), cross-checked with the
clients' own logs and with tshark; crafted frame sequences for what the captures lack (CONTINUATION,
padding, priority, RST_STREAM, GOAWAY, push, the h2c upgrade, lost bytes); fuzzing."""

from __future__ import annotations

import json
import random
import re
from functools import cache

import h2.config
import h2.connection
import hpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

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
)
from collector.l7.http2 import MAX_STREAMS, PREFACE, SPEC, Http2Parser, check, upgrade_parser
from tests.helpers import DATA
from tests.l7util import Stream, messages, needs_tshark, streams, tshark, tshark_fields

MASK32 = 0xFFFFFFFF
CFG = L7Config()


# -- helpers ---------------------------------------------------------------------------------

def parse(stream: Stream, config: L7Config = CFG) -> tuple[list[L7Message], str | None, Http2Parser]:
    """All messages of one captured flow, and the give-up reason if any."""
    first = stream.segments[0]
    assert SPEC.check(first.payload, first.from_client)
    p = SPEC.parser(config)
    out = messages(p, stream)
    reason = out.pop() if out and isinstance(out[-1], str) else None
    return out, reason, p


def pairs(msgs: list[L7Message]) -> dict[int, tuple[L7Message | None, L7Message | None]]:
    """Request and response per stream id; a stream id is used once per flow."""
    req: dict[int, L7Message] = {}
    resp: dict[int, L7Message] = {}
    for m in msgs:
        d = req if m.type == REQUEST else resp
        assert m.session_id not in d, f"two {'requests' if d is req else 'responses'} on stream {m.session_id}"
        d[m.session_id] = m
    return {sid: (req.get(sid), resp.get(sid)) for sid in sorted(req.keys() | resp.keys())}


def summary(msgs: list[L7Message]) -> list[tuple]:
    """(stream, method, path, status or grpc-status) per stream, in stream order."""
    return [(sid, q.request_type, q.request_resource if q.l7_protocol == HTTP2 else q.endpoint, r.response_code)
            for sid, (q, r) in pairs(msgs).items()]


def frame(ftype: int, flags: int, sid: int, payload: bytes = b"") -> bytes:
    return len(payload).to_bytes(3, "big") + bytes((ftype, flags)) + sid.to_bytes(4, "big") + payload


SETTINGS_FRAME = frame(4, 0, 0, b"\x00\x03\x00\x00\x00\x64")      # MAX_CONCURRENT_STREAMS 100
CLIENT_START = PREFACE + SETTINGS_FRAME


def req_block(enc: hpack.Encoder, path: str, method: str = "GET", **extra: str) -> bytes:
    headers = [(":method", method), (":scheme", "http"), (":authority", "example.test"), (":path", path)]
    return enc.encode(headers + [(k.replace("_", "-"), v) for k, v in extra.items()])


def resp_block(enc: hpack.Encoder, status: int | None, **extra: str) -> bytes:
    headers = [(":status", str(status))] if status is not None else []
    return enc.encode(headers + [(k.replace("_", "-"), v) for k, v in extra.items()])


def feed(parser: Http2Parser, segments: list[tuple], ts0: int = 1_000_000) -> list:
    """Feed (from_client, bytes[, real length]) segments with consecutive sequence numbers
    (client from 1000, server from 500000) and ts = ts0 + index; messages, then a give-up.
    ``bytes`` None: a segment the capture missed (its sequence numbers are skipped)."""
    seqs = {True: 1000, False: 500_000}
    out: list = []
    for i, seg in enumerate(segments):
        fc, data = seg[0], seg[1]
        length = seg[2] if len(seg) > 2 else len(data)
        if data is None:
            seqs[fc] = (seqs[fc] + length) & MASK32
            continue
        r = parser.feed(data, length, fc, ts0 + i, seqs[fc])
        seqs[fc] = (seqs[fc] + length) & MASK32
        if isinstance(r, str):
            out.append(r)
            break
        out.extend(r)
    return out


class Conv:
    """A real HTTP/2 exchange made by the h2 library (client and server in memory), recorded as
    the segments each side sent."""

    def __init__(self, upgrade: bool = False) -> None:
        self.c = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True, header_encoding="utf-8"))
        self.s = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False, header_encoding="utf-8"))
        self.segments: list[tuple[bool, bytes]] = []
        if upgrade:
            self.settings = self.c.initiate_upgrade_connection()
            self.s.initiate_upgrade_connection(self.settings)
        else:
            self.c.initiate_connection()
            self.s.initiate_connection()
        self.flush()

    def flush(self) -> None:
        for fc, src, dst in ((True, self.c, self.s), (False, self.s, self.c), (True, self.c, self.s)):
            data = src.data_to_send()
            if data:
                self.segments.append((fc, data))
                dst.receive_data(data)

    def request(self, path: str, method: str = "GET", body: bytes = b"", headers: tuple = ()) -> int:
        sid = self.c.get_next_available_stream_id()
        self.c.send_headers(sid, [(":method", method), (":scheme", "http"), (":authority", "example.test"),
                                  (":path", path), *headers], end_stream=not body)
        if body:
            self.c.send_data(sid, body, end_stream=True)
        self.flush()
        return sid

    def respond(self, sid: int, status: int, body: bytes = b"", headers: tuple = (), trailers: tuple = ()) -> None:
        self.s.send_headers(sid, [(":status", str(status)), *headers], end_stream=not body and not trailers)
        if body:
            self.s.send_data(sid, body, end_stream=not trailers)
        if trailers:
            self.s.send_headers(sid, list(trailers), end_stream=True)
        self.flush()


def well_formed(m: object) -> None:
    """What every emitted message must look like, whatever the input."""
    assert isinstance(m, L7Message)
    assert m.type in (REQUEST, RESPONSE)
    assert isinstance(m.ts, int) and isinstance(m.tcp_seq, int) and 0 <= m.tcp_seq <= MASK32
    assert isinstance(m.session_id, int) and 0 < m.session_id < 2**31 and m.request_id == m.session_id
    assert m.l7_protocol in (HTTP2, GRPC) and m.version == "2"
    assert m.response_status in (OK, CLIENT_ERROR, SERVER_ERROR, UNKNOWN, PARSE_FAILED)
    assert m.response_code is None or isinstance(m.response_code, int)
    assert m.length is None or (isinstance(m.length, int) and m.length >= 0)
    for f in ("request_type", "request_domain", "request_resource", "endpoint", "response_exception", "trace_id",
              "span_id", "x_request_id", "http_proxy_client"):
        assert isinstance(getattr(m, f), str)
    assert len(m.response_exception) <= CFG.result_max


def bounded(p: Http2Parser, config: L7Config = CFG) -> None:
    for side in (p._c, p._s):
        assert len(side.buf) <= config.max_buffer
        assert side.block is None or len(side.block) <= config.max_buffer
    assert len(p._streams) <= MAX_STREAMS


# -- real traffic ----------------------------------------------------------------------------

ITEM_PATHS = [f"/api/item/{i}" for i in range(1, 21)]
NGHTTP = [(13 + 2 * i, "GET", path, code) for i, (path, code) in enumerate(
    zip([*ITEM_PATHS, "/index.html", "/nope", "/fail", "/big.bin", "/big.txt"], [200] * 21 + [404, 503, 200, 200], strict=True))]
H2LOAD = [(sid, "GET", "/api/load", 200) for sid in range(1, 20, 2)]
HTTP2_FLOWS = sorted([
    NGHTTP,                                             # nghttp: 25 streams on one connection
    [(13, "POST", "/api/create", 201)],                 # nghttp -d
    H2LOAD, H2LOAD,                                     # h2load -c 2 -m 5 -n 20
    [(1, "GET", "/healthz", 204)],                      # curl --http2-prior-knowledge
])
GRPC_FLOW = [(sid, "POST", "/netlab.Echo/Say", 0) for sid in range(1, 41, 2)] + [
    (41, "POST", "/netlab.Echo/Say", 5), (43, "POST", "/netlab.Echo/Parts", 0)]


@cache
def real(name: str) -> list[tuple[list[L7Message], str | None, Http2Parser]]:
    return [parse(s) for s in streams(name)]


def test_http2_capture_per_stream() -> None:
    flows = real("http2")
    assert [r for _, r, _ in flows] == [None] * 5
    assert sorted(summary(m) for m, _, _ in flows) == HTTP2_FLOWS
    for msgs, _, p in flows:
        assert p.dropped_streams == p.lost_blocks == p.resyncs == 0 and not p._streams
        for sid, (q, r) in pairs(msgs).items():
            well_formed(q)
            well_formed(r)
            assert q.l7_protocol == r.l7_protocol == HTTP2
            assert q.request_id == r.request_id == sid
            assert q.request_domain == "10.99.0.1:8082"
            assert r.ts >= q.ts and r.ts - q.ts < 100_000
            expected = OK if r.response_code < 400 else CLIENT_ERROR if r.response_code < 500 else SERVER_ERROR
            assert r.response_status == expected
            assert q.endpoint == ("/api/item" if q.request_resource.startswith("/api/item/") else q.request_resource)
    by_path = {q.request_resource: (q, r) for msgs, _, _ in flows for q, r in pairs(msgs).values()}
    assert by_path["/nope"][1].response_exception == "Not Found"
    assert by_path["/fail"][1].response_exception == "Service Unavailable"
    assert by_path["/api/create"][0].length == len(b'{"name":"widget","qty":3}\n')
    assert by_path["/api/create"][1].length == len(b'{"id":42}\n')
    assert by_path["/big.bin"][1].length == 65536
    assert by_path["/healthz"][1].length == 0
    assert by_path["/api/item/1"][0].length == 0                 # GET: HEADERS with END_STREAM
    assert by_path["/api/item/1"][0].attributes["user_agent"].startswith("nghttp2/")


def _nghttp_log() -> list[dict[int, tuple[int, str, str]]]:
    """nghttp's statistics tables in the client log: per run, stream id → (code, size, path)."""
    runs: list[dict[int, tuple[int, str, str]]] = []
    for line in (DATA / "clientlogs" / "http2.log").read_text().splitlines():
        if line.startswith("***** Statistics"):
            runs.append({})
        m = re.match(r"\s*(\d+)\s+\+\S+\s+\+\S+\s+\S+\s+(\d{3})\s+(\S+)\s+(\S+)$", line)
        if m and runs:
            runs[-1][int(m[1])] = (int(m[2]), m[3], m[4])
    return runs


def test_http2_capture_matches_client_log() -> None:
    """nghttp printed each stream's id, status, body size and path."""
    runs = _nghttp_log()
    assert len(runs) == 2
    ours = []
    for msgs, _, _ in real("http2"):
        ps = pairs(msgs)
        if ps and next(iter(ps.values()))[0].attributes["user_agent"].startswith("nghttp2/"):
            ours.append({sid: (r.response_code, r.length, q.request_resource) for sid, (q, r) in ps.items()})
    assert len(ours) == 2
    for run in runs:
        mine = next(o for o in ours if o.keys() == run.keys())
        for sid, (code, size, path) in run.items():
            assert mine[sid][0] == code and mine[sid][2] == path
            if size.isdigit():
                assert mine[sid][1] == int(size)


def test_grpc_capture_per_stream() -> None:
    [(msgs, reason, p)] = real("grpc")
    assert reason is None and not p._streams
    assert summary(msgs) == GRPC_FLOW
    for sid, (q, r) in pairs(msgs).items():
        well_formed(q)
        well_formed(r)
        assert q.l7_protocol == r.l7_protocol == GRPC
        assert (q.request_type, q.request_domain, q.request_resource) == ("POST", "10.99.0.1:50051", "netlab.Echo")
        assert r.ts >= q.ts
        i = (sid - 1) // 2
        if sid < 41:                                  # Say(item-i): 5-byte prefix + protobuf
            assert q.length == 5 + 2 + len(f"item-{i}")
            assert r.length == 5 + 2 + len(f"hello item-{i}")
            assert (r.response_status, r.response_exception) == (OK, "")
    _, nf = pairs(msgs)[41]
    assert (nf.response_code, nf.response_status, nf.response_exception) == (5, CLIENT_ERROR, "no such item: missing-1")
    assert nf.length == 0                             # trailers-only
    _, parts = pairs(msgs)[43]
    assert parts.length == 5 * (5 + 2 + len("part 0 of stream"))
    # the client log: 20 answers, one NOT_FOUND, a 5-message stream
    log = (DATA / "clientlogs" / "grpc.log").read_text()
    assert log.count("Say b'") == 20 and "NOT_FOUND" in log and log.count("of stream") == 5


def test_grpc_response_ts_is_first_response_packet() -> None:
    """The held gRPC response keeps the ts/seq of its first HEADERS, not of its trailers."""
    [s] = streams("grpc")
    [(msgs, _, _)] = real("grpc")
    first_server = {}
    for g in s.segments:
        if not g.from_client and len(g.payload) >= 9 and g.payload[3] == 1:
            sid = int.from_bytes(g.payload[5:9], "big") & 0x7FFFFFFF
            first_server.setdefault(sid, (g.ts, g.seq))
    for sid, (_, r) in pairs(msgs).items():
        assert (r.ts, r.tcp_seq) == first_server[sid]


def _tshark_headers(pcap: str, port: int) -> list[tuple[int, int, dict[str, str]]]:
    """(client port, stream id, headers) of every HEADERS frame, in capture order, per tshark."""
    def aslist(x: object) -> list:
        return x if isinstance(x, list) else [] if x is None else [x]

    out = tshark(pcap, "-d", f"tcp.port=={port},http2", "-Y", "http2.type == 1", "-T", "json", "--no-duplicate-keys")
    res = []
    for pkt in json.loads(out):
        layers = pkt["_source"]["layers"]
        sport, dport = int(layers["tcp"]["tcp.srcport"]), int(layers["tcp"]["tcp.dstport"])
        for layer in aslist(layers.get("http2")):
            for fr in aslist(layer.get("http2.stream")):
                if fr.get("http2.type") == "1":
                    hdrs = {h["http2.header.name"]: h.get("http2.header.value", "")
                            for h in aslist(fr.get("http2.header"))}
                    res.append((sport if dport == port else dport, int(fr["http2.streamid"]), hdrs))
    return res


@needs_tshark
@pytest.mark.parametrize(("name", "port"), [("http2", 8082), ("grpc", 50051)])
def test_against_tshark(name: str, port: int) -> None:
    """Per flow and in capture order: (stream, method, path) of the requests, (stream, :status)
    of the responses and, for gRPC, (stream, grpc-status) of the trailers, as tshark decodes them."""
    frames = _tshark_headers(name, port)
    theirs: dict[int, tuple[list, list, list]] = {}
    for cport, sid, h in frames:
        reqs, stats, grpc = theirs.setdefault(cport, ([], [], []))
        if ":method" in h:
            reqs.append((sid, h[":method"], h[":path"]))
        if ":status" in h:
            stats.append((sid, int(h[":status"])))
        if "grpc-status" in h:
            grpc.append((sid, int(h["grpc-status"])))
    ours: dict[int, tuple[list, list, list]] = {}
    for s, (msgs, _, _) in zip(streams(name), real(name), strict=True):
        reqs, stats, grpc = ours.setdefault(s.client[1], ([], [], []))
        for m in msgs:
            if m.type == REQUEST:
                path = m.endpoint if m.l7_protocol == GRPC else m.request_resource
                reqs.append((m.session_id, m.request_type, path))
            elif m.l7_protocol == GRPC:
                grpc.append((m.session_id, m.response_code))
                stats.append((m.session_id, 200))      # every gRPC response here had :status 200
            else:
                stats.append((m.session_id, m.response_code))
    assert ours == theirs
    assert sum(len(r) for r, _, _ in ours.values()) == (47 if name == "http2" else 22)


def _tshark_fields(pcap: str, port: int, display: str, *fields: str) -> list[list[str]]:
    """``tshark -T fields`` values, one list per field, flattened over packets in capture order."""
    cols: list[list[str]] = [[] for _ in fields]
    for row in tshark_fields(pcap, fields, display=display, decode=f"tcp.port=={port},http2"):
        for col, value in zip(cols, row, strict=True):
            col.extend(v for v in value.split(",") if v)
    return cols


@needs_tshark
def test_against_tshark_fields() -> None:
    """The field extractions as one would type them: methods, paths and statuses of all flows
    in capture order. (``http2.streamid`` lists every frame of a packet, PRIORITY and SETTINGS
    included, so it does not align with the methods; the per-stream check is the JSON one.)"""
    def in_capture_order(name: str, kind: int) -> list[L7Message]:
        return sorted((m for msgs, _, _ in real(name) for m in msgs if m.type == kind), key=lambda m: (m.ts, m.tcp_seq))

    _, methods, paths = _tshark_fields("http2", 8082, "http2.headers.method", "http2.streamid",
                                       "http2.headers.method", "http2.headers.path")
    reqs = in_capture_order("http2", REQUEST)
    assert [m.request_type for m in reqs] == methods and [m.request_resource for m in reqs] == paths
    [statuses] = _tshark_fields("http2", 8082, "http2.headers.status", "http2.headers.status")
    assert [str(m.response_code) for m in in_capture_order("http2", RESPONSE)] == statuses
    [grpc_paths] = _tshark_fields("grpc", 50051, "http2.headers.path", "http2.headers.path")
    assert [m.endpoint for m in in_capture_order("grpc", REQUEST)] == grpc_paths


# -- truncated captures ----------------------------------------------------------------------

def test_snaplen_300_http2() -> None:
    """At 234 payload bytes per segment: small frames survive; the 25 requests nghttp wrote in one
    881-byte segment lose their framing after the third; the client side resynchronises on a
    later segment, and the 25 responses (in small segments) still pair by stream id. DATA is
    skipped by its frame lengths."""
    full = {s.client[1]: msgs for s, (msgs, _, _) in zip(streams("http2"), real("http2"), strict=True)}
    for s in streams("http2", snaplen=300):
        msgs, reason, p = parse(s)
        assert reason is None
        for m in msgs:
            well_formed(m)
        if s.client[1] != max(full, key=lambda k: len(full[k])):
            assert summary(msgs) == summary(full[s.client[1]])   # everything fit in 234 bytes
            continue
        assert p.resyncs >= 1
        ps = pairs(msgs)
        got = {sid: q for sid, (q, _) in ps.items() if q is not None}
        assert sorted(got) == [13, 15, 17]
        resp_full = {m.session_id: m for m in full[s.client[1]] if m.type == RESPONSE}
        resp_cut = {sid: r for sid, (_, r) in ps.items()}
        assert resp_cut.keys() == resp_full.keys()
        for sid, r in resp_cut.items():
            assert (r.response_code, r.response_status, r.ts, r.tcp_seq) == (
                resp_full[sid].response_code, resp_full[sid].response_status, resp_full[sid].ts, resp_full[sid].tcp_seq)
        for sid in (13, 15, 17):
            q = pairs(full[s.client[1]])[sid][0]
            assert (got[sid].request_resource, got[sid].ts, got[sid].tcp_seq) == (q.request_resource, q.ts, q.tcp_seq)


def test_snaplen_300_grpc() -> None:
    """grpcio's first request block (222 bytes) is cut: it is reported from its frame header
    alone (stream 1, its timing) and its response still pairs. The next request refers to the
    HPACK entries that block added: the flow is given up rather than mis-decoded."""
    [s] = streams("grpc", snaplen=300)
    msgs, reason, p = parse(s)
    assert reason is not None and reason.startswith("http2: a header block refers to HPACK state lost")
    assert p.lost_blocks == 1
    [(sid, (q, r))] = pairs(msgs).items()
    assert sid == 1 and q.request_type == "" and q.l7_protocol == GRPC
    assert (r.response_code, r.response_status, r.l7_protocol) == (0, OK, GRPC)


@pytest.mark.parametrize("snaplen", [120, 200, 400, 700, 1000, 1400])
@pytest.mark.parametrize("name", ["http2", "grpc"])
def test_snaplen_never_wrong(name: str, snaplen: int) -> None:
    """Whatever the snaplen, what is reported agrees with the full capture: same stream ids,
    same codes and timing, requests either complete or placeholders without method."""
    for s_cut, (full_msgs, _, _) in zip(streams(name, snaplen=snaplen), real(name), strict=True):
        msgs, _, p = parse(s_cut)
        bounded(p)
        full = {(m.type, m.session_id): m for m in full_msgs}
        for m in msgs:
            well_formed(m)
            f = full[(m.type, m.session_id)]
            assert (m.ts, m.tcp_seq) == (f.ts, f.tcp_seq)
            if m.type == REQUEST and m.request_type:
                assert (m.request_type, m.request_resource, m.request_domain) == (
                    f.request_type, f.request_resource, f.request_domain)
            if m.type == RESPONSE and m.response_status != PARSE_FAILED:
                assert m.response_code == f.response_code


def test_lost_segment_in_data_makes_length_unknown() -> None:
    """A segment that never reached the capture, holding a whole DATA frame: the framing is
    lost, found again on the next segment (it starts with a frame); the request's length is
    unknown, its response pairs."""
    enc_c, enc_s = hpack.Encoder(), hpack.Encoder()
    body = b"x" * 3000
    req = frame(1, 4, 1, req_block(enc_c, "/up", "POST")) + frame(0, 0, 1, body[:1000])
    segs = [(True, CLIENT_START), (False, SETTINGS_FRAME), (True, req), (True, frame(0, 0, 1, body[1000:2000])),
            (True, frame(0, 1, 1, body[2000:])), (False, frame(1, 5, 1, resp_block(enc_s, 200)))]
    p = Http2Parser(CFG)
    full = feed(p, segs)
    assert full[0].length == 3000
    p = Http2Parser(CFG)
    out = feed(p, [*segs[:3], (True, None, len(segs[3][1])), *segs[4:]])
    q, r = pairs(out)[1]
    assert q.length is None and q.request_resource == "/up" and r.response_code == 200
    assert p.resyncs == 1


# -- crafted exchanges -----------------------------------------------------------------------

def test_continuation_padding_priority() -> None:
    """A padded HEADERS with a priority block, continued by two CONTINUATION frames, then a
    padded DATA; the server answers with a padded HEADERS."""
    enc_c, enc_s = hpack.Encoder(), hpack.Encoder()
    block = req_block(enc_c, "/api/item/42?x=1", "PUT", content_type="text/plain", x_request_id="rid-1",
                      traceparent="00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
                      x_forwarded_for="203.0.113.9, 10.0.0.1")
    a, b, c = block[:7], block[7:20], block[20:]
    pad = 7
    headers = frame(1, 0x08 | 0x20, 1, bytes([pad]) + b"\x80\x00\x00\x00\x10" + a + b"\0" * pad)
    data = frame(0, 0x08 | 0x01, 1, b"\x03" + b"hello" + b"\0\0\0")
    segs = [(True, CLIENT_START), (False, SETTINGS_FRAME),
            (True, headers + frame(9, 0, 1, b) + frame(9, 4, 1, c) + data),
            (False, frame(1, 0x08 | 0x04 | 0x01, 1, b"\x02" + resp_block(enc_s, 200, x_request_id="rid-1") + b"\0\0"))]
    out = feed(Http2Parser(CFG), segs)
    q, r = pairs(out)[1]
    assert (q.request_type, q.request_domain, q.request_resource, q.endpoint) == (
        "PUT", "example.test", "/api/item/42?x=1", "/api/item")
    assert (q.trace_id, q.span_id) == ("0af7651916cd43dd8448eb211c80319c", "b7ad6b7169203331")
    assert (q.x_request_id, q.http_proxy_client, q.length) == ("rid-1", "203.0.113.9", 5)
    assert q.tcp_seq == 1000 + len(CLIENT_START) and q.ts == 1_000_002
    assert (r.response_code, r.x_request_id, r.length) == (200, "rid-1", 0)


def _exchange() -> tuple[bytes, bytes, list[L7Message]]:
    """Client and server byte streams of a few requests (one with CONTINUATION), and the
    messages they give when each side is one segment."""
    enc_c, enc_s = hpack.Encoder(), hpack.Encoder()
    block = req_block(enc_c, "/a", cookie="c" * 40)
    client = CLIENT_START + frame(1, 0, 1, block[:10]) + frame(9, 4, 1, block[10:]) + frame(0, 1, 1, b"")
    client += frame(1, 5, 3, req_block(enc_c, "/b")) + frame(8, 0, 0, b"\0\0\1\0")
    client += frame(1, 4, 5, req_block(enc_c, "/c", "POST")) + frame(0, 0, 5, b"12345") + frame(0, 1, 5, b"678")
    server = SETTINGS_FRAME + frame(4, 1, 0) + frame(1, 4, 3, resp_block(enc_s, 404, content_length="3"))
    server += frame(0, 1, 3, b"no!") + frame(6, 0, 0, b"\0" * 8) + frame(1, 5, 1, resp_block(enc_s, 200))
    server += frame(1, 5, 5, resp_block(enc_s, 201))
    out = feed(Http2Parser(CFG), [(True, client), (False, server)])
    return client, server, out


def test_several_frames_in_one_segment() -> None:
    _, _, out = _exchange()
    assert summary(out) == [(1, "GET", "/a", 200), (3, "GET", "/b", 404), (5, "POST", "/c", 201)]
    assert pairs(out)[5][0].length == 8
    assert pairs(out)[3][1].response_status == CLIENT_ERROR


def test_split_at_every_byte() -> None:
    """Each side cut in two at every position (so through every 9-byte frame header and
    payload), and in three around each frame header byte: the same messages; ts is the
    segment that holds a message's first byte, tcp_seq that byte's sequence number."""
    client, server, ref = _exchange()
    ref_fields = [(m.type, m.session_id, m.request_type, m.request_resource, m.response_code, m.length, m.tcp_seq)
                  for m in ref]
    for side_bytes, fc in ((client, True), (server, False)):
        other = server if fc else client
        for cut in range(1, len(side_bytes)):
            for cuts in ((cut,), (cut, cut + 4)) if cut + 4 < len(side_bytes) else ((cut,),):
                pieces = [side_bytes[i:j] for i, j in zip((0, *cuts), (*cuts, len(side_bytes)), strict=True)]
                segs = [(fc, piece) for piece in pieces] + [(not fc, other)]
                out = feed(Http2Parser(CFG), segs)
                got = [(m.type, m.session_id, m.request_type, m.request_resource, m.response_code, m.length,
                        m.tcp_seq) for m in out]
                assert sorted(got, key=repr) == sorted(ref_fields, key=repr), (fc, cuts)
                base = 1000 if fc else 500_000
                for m in out:
                    if (m.type == REQUEST) == fc:
                        offset = (m.tcp_seq - base) & MASK32
                        assert m.ts == 1_000_000 + sum(1 for c in cuts if c <= offset), (fc, cuts, m)


def test_rst_stream() -> None:
    """A server reset is a server error, a client reset (it gave up) a client error; the error
    code's name is the exception. A held gRPC response reset keeps its first-packet ts."""
    conv = Conv()
    a = conv.request("/slow")
    b = conv.request("/refused")
    g = conv.request("/pkg.Svc/Method", "POST", b"\0\0\0\0\0", headers=(("content-type", "application/grpc"),))
    conv.c.reset_stream(a, error_code=8)              # CANCEL
    conv.flush()
    conv.s.reset_stream(b, error_code=7)              # REFUSED_STREAM
    conv.flush()
    headers_at = len(conv.segments)
    conv.s.send_headers(g, [(":status", "200"), ("content-type", "application/grpc")])
    conv.flush()
    rst_at = len(conv.segments)
    conv.s.reset_stream(g, error_code=2)              # INTERNAL_ERROR before the trailers
    conv.flush()
    out = feed(Http2Parser(CFG), conv.segments)
    ps = pairs(out)
    assert (ps[a][1].response_status, ps[a][1].response_exception, ps[a][1].response_code) == (CLIENT_ERROR, "CANCEL", None)
    assert (ps[b][1].response_status, ps[b][1].response_exception) == (SERVER_ERROR, "REFUSED_STREAM")
    q, r = ps[g]
    assert (q.l7_protocol, r.l7_protocol, r.response_status, r.response_exception) == (
        GRPC, GRPC, SERVER_ERROR, "INTERNAL_ERROR")
    assert (r.ts, r.response_code) == (1_000_000 + headers_at, 200)      # the HEADERS', not the RST's
    assert ps[b][1].ts < 1_000_000 + rst_at


def test_goaway_fails_unprocessed_streams() -> None:
    conv = Conv()
    a = conv.request("/one")
    b = conv.request("/two")
    conv.respond(a, 200)
    conv.s.close_connection(error_code=0, last_stream_id=a)   # h2 sends nothing after its GOAWAY
    conv.flush()
    out = feed(Http2Parser(CFG), conv.segments)
    ps = pairs(out)
    assert (ps[b][1].response_status, ps[b][1].response_exception) == (SERVER_ERROR, "GOAWAY NO_ERROR")
    assert ps[a][1].response_code == 200


def test_push_promise_not_reported_hpack_in_sync() -> None:
    conv = Conv()
    a = conv.request("/index.html")
    conv.s.push_stream(a, 2, [(":method", "GET"), (":scheme", "http"), (":authority", "example.test"),
                              (":path", "/style.css")])
    conv.respond(a, 200, b"<html>", headers=(("content-type", "text/html"), ("x-custom", "v" * 30)))
    conv.s.send_headers(2, [(":status", "200"), ("content-type", "text/css")])
    conv.s.send_data(2, b"body{}", end_stream=True)
    conv.flush()
    b = conv.request("/next")
    conv.respond(b, 200, headers=(("x-custom", "v" * 30),))
    p = Http2Parser(CFG)
    out = feed(p, conv.segments)
    assert summary(out) == [(a, "GET", "/index.html", 200), (b, "GET", "/next", 200)]
    assert p.pushes == 1 and not p._streams


def test_interim_and_trailers() -> None:
    """100 Continue is not the answer; HTTP trailers after a response are decoded and ignored."""
    conv = Conv()
    a = conv.request("/upload", "POST", b"x" * 10)
    conv.s.send_headers(a, [(":status", "100")])
    conv.respond(a, 200, b"done", trailers=(("x-checksum", "abc"),))
    b = conv.request("/after")
    conv.respond(b, 500)
    out = feed(Http2Parser(CFG), conv.segments)
    assert summary(out) == [(a, "POST", "/upload", 200), (b, "GET", "/after", 500)]
    assert pairs(out)[b][1].response_status == SERVER_ERROR


@pytest.mark.parametrize(("code", "status"), [(0, OK), (1, SERVER_ERROR), (3, CLIENT_ERROR), (4, SERVER_ERROR),
                                              (5, CLIENT_ERROR), (7, CLIENT_ERROR), (13, SERVER_ERROR),
                                              (14, SERVER_ERROR), (16, CLIENT_ERROR)])
def test_grpc_status_classes(code: int, status: int) -> None:
    conv = Conv()
    g = conv.request("/pkg.v1.Svc/Do", "POST", b"\0\0\0\0\0", headers=(("content-type", "application/grpc+proto"),))
    conv.respond(g, 200, b"\0\0\0\0\0", headers=(("content-type", "application/grpc+proto"),),
                 trailers=(("grpc-status", str(code)), ("grpc-message", "bad%20thing%3A%20%E2%9C%93")))
    q, r = pairs(feed(Http2Parser(CFG), conv.segments))[g]
    assert (q.request_resource, q.endpoint, q.request_type) == ("pkg.v1.Svc", "/pkg.v1.Svc/Do", "POST")
    assert (r.response_code, r.response_status, r.l7_protocol, r.length) == (code, status, GRPC, 5)
    assert r.response_exception == "bad thing: ✓"


def test_grpc_status_without_message() -> None:
    conv = Conv()
    g = conv.request("/p.S/M", "POST", b"\0\0\0\0\0", headers=(("content-type", "application/grpc"),))
    conv.s.send_headers(g, [(":status", "200"), ("content-type", "application/grpc"), ("grpc-status", "14")],
                        end_stream=True)                                 # trailers-only
    conv.flush()
    _, r = pairs(feed(Http2Parser(CFG), conv.segments))[g]
    assert (r.response_code, r.response_status, r.response_exception, r.length) == (14, SERVER_ERROR, "UNAVAILABLE", 0)


def test_grpc_http_error_without_grpc_status() -> None:
    """A proxy's 503 to a gRPC call, without grpc-status: the HTTP status stands."""
    conv = Conv()
    g = conv.request("/pkg.Svc/M", "POST", b"\0\0\0\0\0", headers=(("content-type", "application/grpc"),))
    conv.respond(g, 503, b"upstream down")
    _, r = pairs(feed(Http2Parser(CFG), conv.segments))[g]
    assert (r.l7_protocol, r.response_code, r.response_status) == (GRPC, 503, SERVER_ERROR)


def test_h2c_upgrade() -> None:
    """HTTP/1.1 GET with Upgrade: h2c and HTTP2-Settings, 101, then HTTP/2: stream 1 answers
    the HTTP/1 request; stream 3 is a new request."""
    conv = Conv(upgrade=True)
    http1_req = (b"GET /up HTTP/1.1\r\nHost: example.test\r\nConnection: Upgrade, HTTP2-Settings\r\n"
                 b"Upgrade: h2c\r\nHTTP2-Settings: " + conv.settings + b"\r\n\r\n")
    http1_resp = b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: h2c\r\n\r\n"
    conv.respond(1, 200, b"upgraded", headers=(("content-length", "8"),))
    b = conv.request("/next")
    conv.respond(b, 204)
    headers = {":method": "GET", ":path": "/up", "host": "example.test", "upgrade": "h2c",
               "http2-settings": conv.settings.decode()}
    p = upgrade_parser(CFG, headers, ts=999_000, tcp_seq=1000 - len(http1_req))
    # what follows the 101 in the server's segment, and the client's preface, as the HTTP/1 owner hands them over
    segs = [(fc, data) for fc, data in conv.segments]
    out = feed(p, segs)
    assert summary(out) == [(1, "GET", "/up", 200), (b, "GET", "/next", 204)]
    q1, r1 = pairs(out)[1]
    assert (q1.ts, q1.tcp_seq, q1.request_domain, q1.length) == (999_000, 1000 - len(http1_req), "example.test", 0)
    assert r1.length == 8 and len(http1_resp) > 0
    # without reporting the request, and with settings given as pairs
    p = upgrade_parser(CFG, list(headers.items()), report_request=False)
    out = feed(p, segs)
    assert [(m.type, m.session_id) for m in out] == [(RESPONSE, 1), (REQUEST, b), (RESPONSE, b)]


def test_lost_header_block_then_static_only_blocks() -> None:
    """A request block that was not captured: reported from its frame header; later blocks
    that use only static entries and literals still decode; one that refers to a lost dynamic
    entry ends the flow."""
    enc = hpack.Encoder()
    first = req_block(enc, "/first", user_agent="ua/1")
    lost_block = frame(1, 5, 1, first)
    plain = hpack.Encoder()
    plain.header_table_size = 0                       # no dynamic entries: self-contained blocks
    fresh = plain.encode([(":method", "GET"), (":scheme", "http"), (":path", "/second")])
    enc_s = hpack.Encoder()
    segs = [(True, CLIENT_START), (False, SETTINGS_FRAME), (True, lost_block[:12], len(lost_block)),
            (True, frame(1, 5, 3, fresh)), (False, frame(1, 5, 1, resp_block(enc_s, 200))),
            (False, frame(1, 5, 3, resp_block(enc_s, 200))),
            (True, frame(1, 5, 5, req_block(enc, "/third", user_agent="ua/1")))]
    p = Http2Parser(CFG)
    out = feed(p, segs)
    reason = out.pop()
    assert isinstance(reason, str) and "HPACK state lost" in reason
    ps = pairs(out)
    assert ps[1][0].request_type == "" and ps[1][0].ts == 1_000_002 and ps[1][1].response_code == 200
    assert ps[3][0].request_resource == "/second" and ps[3][1].response_code == 200
    assert p.lost_blocks == 1
    assert isinstance(p.feed(b"", 0, True, 0, 0), GiveUp)


def test_lost_response_block_is_parse_failed() -> None:
    enc_c, enc_s = hpack.Encoder(), hpack.Encoder()
    resp = frame(1, 5, 1, resp_block(enc_s, 200, server="test", date="Mon, 01 Jan 2024 00:00:00 GMT"))
    segs = [(True, CLIENT_START + frame(1, 5, 1, req_block(enc_c, "/x"))), (False, SETTINGS_FRAME),
            (False, resp[:15], len(resp))]
    q, r = pairs(feed(Http2Parser(CFG), segs))[1]
    assert q.request_resource == "/x"
    assert (r.response_status, r.response_code, r.response_exception) == (PARSE_FAILED, None, "header block not captured")


def test_stream_table_bounded() -> None:
    """Requests never answered: at most MAX_STREAMS tracked, the oldest dropped and counted."""
    enc = hpack.Encoder()
    client = CLIENT_START + b"".join(frame(1, 4, sid, req_block(enc, "/p", "POST"))
                                     for sid in range(1, 2 * (MAX_STREAMS + 10), 2))
    p = Http2Parser(CFG)
    out = feed(p, [(True, client[i:i + 1400]) for i in range(0, len(client), 1400)])
    assert len(p._streams) == MAX_STREAMS and p.dropped_streams == 10
    assert [m.session_id for m in out] == list(range(1, 21, 2))   # the dropped ones, length unknown
    assert all(m.length is None for m in out)


def test_header_block_over_max_buffer() -> None:
    """A header block larger than max_buffer is not kept: treated as lost (HPACK restarts)."""
    cfg = L7Config(max_buffer=1024)
    enc = hpack.Encoder()
    big = req_block(enc, "/big", cookie="k" * 3000)
    segs = [(True, CLIENT_START + frame(1, 1, 1, big[:900]) + frame(9, 0, 1, big[900:1800]) + frame(9, 4, 1, big[1800:]))]
    p = Http2Parser(cfg)
    out = feed(p, segs)
    bounded(p, cfg)
    assert p.lost_blocks == 1 and [(m.type, m.session_id, m.request_type) for m in out] == [(REQUEST, 1, "")]


@pytest.mark.parametrize(("segments", "reason"), [
    ([(True, CLIENT_START + b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")], "exceeds SETTINGS_MAX_FRAME_SIZE"),
    ([(True, b"PRI * HTTP/2.0\r\n\r\nXX\r\n\r\n")], "broken connection preface"),
    ([(True, CLIENT_START + frame(0, 0, 0, b"x"))], "DATA on stream 0"),
    ([(True, CLIENT_START + frame(4, 0, 0, b"\0\0\0"))], "SETTINGS of 3 bytes"),
    ([(True, CLIENT_START + frame(9, 4, 1, b"\x82"))], "CONTINUATION without HEADERS"),
    ([(True, CLIENT_START + frame(1, 0, 1, b"\x82") + frame(0, 0, 1, b""))], "frame inside a header block"),
    ([(True, CLIENT_START + frame(1, 5, 1, b"\xff\xff\xff\xff\x0f"))], "undecodable header block"),
    ([(True, CLIENT_START + frame(1, 0x0d, 1, b"\x09abc"))], "padding longer than the frame"),
])
def test_garbage_gives_up(segments: list, reason: str) -> None:
    out = feed(Http2Parser(CFG), segments)
    assert len(out) == 1 and isinstance(out[0], GiveUp) and out[0].startswith("http2: ") and reason in out[0]


def test_check() -> None:
    assert check(CLIENT_START, True) and check(PREFACE, True)
    assert not check(PREFACE, False) and not check(PREFACE[:20], True)
    assert not check(PREFACE + frame(1, 4, 1, b"\x82"), True)           # the preface's SETTINGS is missing
    assert check(SETTINGS_FRAME, False) and check(frame(4, 0, 0), False)
    assert check(SETTINGS_FRAME + frame(8, 0, 0, b"\0\0\1\0"), False)
    assert not check(SETTINGS_FRAME, True)
    assert not check(frame(4, 1, 0), False)                             # an ACK does not open a connection
    assert not check(frame(4, 0, 0, b"\0\2\0\0\0\2"), False)            # ENABLE_PUSH 2
    assert not check(frame(4, 0, 0, b"\0\5\0\0\0\1"), False)            # MAX_FRAME_SIZE 1
    assert not check(frame(4, 0, 0, b"\0\0\0\0\0"), False)              # not a multiple of 6
    assert not check(SETTINGS_FRAME + b"\xff" * 9, False)              # followed by garbage
    assert not check(SETTINGS_FRAME[:12], False)                        # SETTINGS not whole
    for other in (b"GET / HTTP/1.1\r\n\r\n", b"HTTP/1.1 200 OK\r\n", b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03",
                  b"\x4a\x00\x00\x00\x0a5.5.5-10.11", b"*1\r\n$4\r\nPING\r\n", b"", b"\0" * 9):
        assert not check(other, True) and not check(other, False)
    for name in ("http2", "grpc", "http1", "redis", "mysql", "dns", "mqtt"):
        for s in streams(name):
            first = s.segments[0]
            assert check(first.payload, first.from_client) == (name in ("http2", "grpc")), (name, s.client)
    assert (SPEC.protocol, SPEC.name, SPEC.transports) == (HTTP2, "HTTP2", frozenset({6}))


def test_config_trace_headers_respected() -> None:
    conv = Conv()
    a = conv.request("/t", headers=(("b3", "80f198ee56343ba864fe8b2a57d3eff7-e457b5a2e4d86bd1-1"),))
    conv.respond(a, 200)
    q, _ = pairs(feed(Http2Parser(CFG), conv.segments))[a]
    assert q.trace_id == "80f198ee56343ba864fe8b2a57d3eff7"
    q, _ = pairs(feed(Http2Parser(L7Config(trace_headers=("traceparent",))), conv.segments))[a]
    assert q.trace_id == ""


# -- fuzzing ---------------------------------------------------------------------------------

@cache
def _corpus() -> list[list[tuple[bool, bytes, int]]]:
    flows = [[(g.from_client, g.payload, g.length) for g in s.segments] for name in ("http2", "grpc")
             for s in streams(name)]
    return [f[:60] for f in flows]      # the first 60 segments: all header blocks, less DATA


def _run_fuzzed(segs: list[tuple[bool, bytes, int]]) -> None:
    p = Http2Parser(CFG)
    seqs = {True: 7, False: 9}
    for i, (fc, data, length) in enumerate(segs):
        check(data, fc)
        r = p.feed(data, length, fc, i, seqs[fc])
        seqs[fc] = (seqs[fc] + length) & MASK32
        if isinstance(r, str):
            assert r.startswith("http2: ") and "internal error" not in r, r
            assert p.feed(data, length, fc, i, 0) == r
            return
        assert isinstance(r, list)
        for m in r:
            well_formed(m)
        bounded(p)


def _mutate(rng: random.Random, segs: list[tuple[bool, bytes, int]]) -> list[tuple[bool, bytes, int]]:
    segs = list(segs)
    for _ in range(rng.randint(1, 4)):
        i = rng.randrange(len(segs))
        fc, data, length = segs[i]
        b = bytearray(data)
        op = rng.randrange(7)
        if op == 0 and b:                                # flip bytes
            for _ in range(rng.randint(1, 4)):
                b[rng.randrange(len(b))] ^= 1 << rng.randrange(8)
        elif op == 1 and b:                              # cut (as a snaplen would)
            b = b[:rng.randrange(len(b))]
        elif op == 2:                                    # insert bytes
            k = rng.randrange(len(b) + 1)
            b[k:k] = rng.randbytes(rng.randint(1, 20))
        elif op == 3 and b:                              # delete bytes
            k = rng.randrange(len(b))
            del b[k:k + rng.randint(1, 20)]
        elif op == 4 and len(b) >= 9:                    # hostile frame length / type / stream
            k = rng.randrange(len(b) - 8)
            b[k:k + 9] = rng.choice([b"\xff\xff\xff", b"\x00\x40\x00", b"\x00\x00\x00"]) + bytes(
                [rng.randrange(12), rng.randrange(256)]) + rng.randbytes(4)
        elif op == 5:                                    # drop or duplicate a segment
            if rng.random() < 0.5:
                segs.pop(i)
                continue
            segs.insert(i, segs[i])
            continue
        else:                                            # swap direction
            fc = not fc
        segs[i] = (fc, bytes(b), max(len(b), length))     # a cut or deletion: bytes not captured
    return segs


def test_fuzz_seeded() -> None:
    rng = random.Random(1234)
    corpus = _corpus()
    for n in range(400):
        segs = _mutate(rng, rng.choice(corpus))
        try:
            _run_fuzzed(segs)
        except AssertionError as e:
            raise AssertionError(f"seeded case {n}: {e}") from e
    for n in range(200):
        segs = [(rng.random() < 0.5, rng.randbytes(rng.randrange(200)), 0) for _ in range(rng.randint(1, 8))]
        segs = [(fc, d, len(d) + rng.choice((0, 0, 50))) for fc, d, _ in segs]
        if rng.random() < 0.5:
            segs.insert(0, (True, CLIENT_START, len(CLIENT_START)))
        try:
            _run_fuzzed(segs)
        except AssertionError as e:
            raise AssertionError(f"random case {n}: {e}") from e


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 2**32 - 1), flow=st.integers(0, 5))
def test_fuzz_mutated_real(seed: int, flow: int) -> None:
    corpus = _corpus()
    _run_fuzzed(_mutate(random.Random(seed), corpus[flow % len(corpus)]))


@settings(max_examples=150, deadline=None)
@given(st.lists(st.tuples(st.booleans(), st.binary(max_size=300), st.integers(0, 100)), min_size=1, max_size=8),
       st.booleans())
def test_fuzz_random_frames(segments: list[tuple[bool, bytes, int]], preface: bool) -> None:
    segs = [(fc, d, len(d) + extra) for fc, d, extra in segments]
    if preface:
        segs.insert(0, (True, CLIENT_START, len(CLIENT_START)))
    _run_fuzzed(segs)


@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 12), st.integers(0, 255), st.integers(0, 9),
                          st.binary(max_size=40)), min_size=1, max_size=12))
def test_fuzz_frame_sequences(frames: list[tuple[int, int, int, bytes]]) -> None:
    """Well-framed but arbitrary frames (types, flags, stream ids, payloads) after the preface."""
    body = b"".join(frame(t, f, s, payload) for t, f, s, payload in frames)
    _run_fuzzed([(True, CLIENT_START, len(CLIENT_START)), (False, SETTINGS_FRAME, 15), (True, body, len(body)),
                 (False, body, len(body))])
