"""The HTTP/1 parser (collector/l7/http1.py).

On the committed captures, every request and response is checked against what the lab's curl
did and got (tests/data/clientlogs/*.log) and against tshark's HTTP dissector; the same streams cut
by a short snaplen must still pair one-to-one. Crafted conversations cover what the lab did not
send (pipelining, awkward segment boundaries, chunked extensions and trailers, 100-continue,
close-delimited bodies, trace headers, lost bytes); fuzzing checks that nothing raises and that
memory stays bounded."""

from __future__ import annotations

import random
import re
from functools import cache

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from collector.l7.base import (
    CLIENT_ERROR,
    HTTP1,
    OK,
    PARSE_FAILED,
    REQUEST,
    RESPONSE,
    SERVER_ERROR,
    GiveUp,
    L7Config,
    L7Message,
)
from collector.l7.http1 import SPEC, HttpParser
from tests.helpers import DATA
from tests.l7util import Stream, by_port, messages, needs_tshark, streams, tshark_fields

C, S = True, False
MASK32 = 0xFFFFFFFF
HTTP_CAPTURES = ("http1", "http_vxlan", "http_geneve", "http_geneve6", "http_ipip", "http_vlan", "ipv6", "mixed")
FUZZ = settings(max_examples=400, deadline=None, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


# --- helpers ---------------------------------------------------------------------------------------

def parse(stream: Stream, config: L7Config | None = None) -> list[L7Message]:
    """All messages of an HTTP stream; the stream must be detected and never given up."""
    first = stream.segments[0]
    assert SPEC.check(first.payload, first.from_client), first.payload[:60]
    out = messages(SPEC.parser(config or L7Config()), stream)
    assert not any(isinstance(m, str) for m in out), out[-1]
    return out


def http_streams(name: str, snaplen: int | None = None) -> list[Stream]:
    return [s for s in streams(name, snaplen) if s.proto == 6 and s.server[1] in (80, 8080)]


def pairs(msgs: list[L7Message]) -> list[tuple[L7Message, L7Message]]:
    """Requests and responses of one flow paired in order, as the session aggregator does."""
    reqs = [m for m in msgs if m.type == REQUEST]
    resps = [m for m in msgs if m.type == RESPONSE]
    assert len(reqs) == len(resps), (len(reqs), len(resps))
    return list(zip(reqs, resps, strict=True))


def capture_pairs(name: str, snaplen: int | None = None) -> list[tuple[L7Message, L7Message]]:
    """Every request/response pair of a capture, by request time."""
    out = [p for s in http_streams(name, snaplen) for p in pairs(parse(s))]
    return sorted(out, key=lambda p: p[0].ts)


def client_log(name: str) -> list[tuple[int, str, str]]:
    """(status, method, path) of each request curl made, in order."""
    text = (DATA / "clientlogs" / f"{name}.log").read_text()
    return [(int(c), m, p) for c, m, p in re.findall(r"^(\d{3}) ([A-Z]+) https?://[^/\s]+(/\S*)$", text, re.M)]


def talk(*parts, config: L7Config | None = None, parser: HttpParser | None = None, step: int = 10):
    """Feed crafted segments ``(from_client, payload[, real length])`` with consecutive sequence
    numbers, ``step`` µs apart; the messages, or the GiveUp."""
    p = parser or SPEC.parser(config or L7Config())
    seq = {C: 1000, S: 7_000_000}
    out: list[L7Message] = []
    for i, part in enumerate(parts):
        side, data = part[0], part[1]
        length = part[2] if len(part) > 2 else len(data)
        r = p.feed(data, length, side, 1_000_000 + i * step, seq[side])
        seq[side] = (seq[side] + length) & MASK32
        if isinstance(r, GiveUp):
            return r
        out.extend(r)
    return out


def row(m: L7Message) -> tuple:
    """What a message says, without where and when."""
    if m.type == REQUEST:
        return ("req", m.request_type, m.request_resource, m.length, m.version)
    return ("resp", m.response_code, m.response_status, m.length, m.version)


def check_message(m: object) -> None:
    assert isinstance(m, L7Message)
    assert m.type in (REQUEST, RESPONSE) and m.l7_protocol == HTTP1 and m.session_id is None
    assert m.length is None or m.length >= 0
    assert isinstance(m.request_resource, str) and isinstance(m.request_domain, str)


# --- the committed captures ------------------------------------------------------------------------

@pytest.mark.parametrize("name", HTTP_CAPTURES)
def test_every_request_as_curl_saw_it(name: str) -> None:
    """Method, path and status of every request, in order, as the client logged them."""
    got = [(resp.response_code, req.request_type, req.request_resource) for req, resp in capture_pairs(name)]
    assert got == client_log(name)
    assert len(got) == 65


def test_keepalive_connection_to_nginx() -> None:
    """The 40 GETs on one keep-alive connection: every field, and each message's tcp_seq and ts are
    those of the segment it starts in."""
    (stream,) = [s for s in by_port("http1", 80) if len(s.segments) == 80]
    msgs = parse(stream)
    assert len(msgs) == 80
    for k, ((req, resp), seg_req, seg_resp) in enumerate(zip(pairs(msgs), stream.segments[0::2], stream.segments[1::2],
                                                          strict=True)):
        item = k // 2 + 1
        # nginx answers /api/item/N with {"method":"GET","uri":"/api/item/N"}\n
        path, length, endpoint = ((f"/api/item/{item}", 36 + len(str(item)), "/api/item") if k % 2 == 0
                                  else ("/index.html", 42, "/index.html"))
        assert (req.request_type, req.request_resource, req.endpoint, req.request_domain) == ("GET", path, endpoint, "10.99.0.1")
        assert (req.version, req.length, req.captured) == ("1.1", 0, seg_req.length)
        assert req.attributes == {"user_agent": "curl/7.88.1"}
        assert (req.tcp_seq, req.ts) == (seg_req.seq, seg_req.ts)
        assert (resp.response_code, resp.response_status, resp.response_exception) == (200, OK, "")
        assert (resp.version, resp.length, resp.captured) == ("1.1", length, seg_resp.length)
        assert (resp.tcp_seq, resp.ts) == (seg_resp.seq, seg_resp.ts)
        assert resp.ts >= req.ts


# (method, path) → request length, status, response_status, response length, exception
SINGLES = {
    ("POST", "/api/create"): (25, 201, OK, 10, ""),
    ("PUT", "/api/item/7"): (5, 200, OK, 37, ""),
    ("DELETE", "/api/item/8"): (0, 200, OK, 40, ""),
    ("HEAD", "/index.html"): (0, 200, OK, 0, ""),          # Content-Length: 42, but no body follows
    ("GET", "/nope"): (0, 404, CLIENT_ERROR, 153, "Not Found"),
    ("GET", "/old"): (0, 301, OK, 169, ""),
    ("GET", "/healthz"): (0, 204, OK, 0, ""),
    ("GET", "/fail"): (0, 503, SERVER_ERROR, 12, "Service Temporarily Unavailable"),
    ("POST", "/index.html"): (3, 405, CLIENT_ERROR, 157, "Not Allowed"),
    ("GET", "/big.bin"): (0, 200, OK, 65536, ""),          # 46 segments
    ("GET", "/big.txt"): (0, 200, OK, 51380, ""),          # gzip, chunks 12288+28672+10420 (tshark)
    ("GET", "/missing"): (0, 404, CLIENT_ERROR, 335, "File not found"),
    ("POST", "/"): (3, 501, SERVER_ERROR, 357, "Unsupported method ('POST')"),
}


@pytest.mark.parametrize("name", ["http1", "ipv6", "http_vxlan"])
def test_single_requests(name: str) -> None:
    got = {}
    for req, resp in capture_pairs(name):
        key = (req.request_type, req.request_resource)
        if key in SINGLES:
            assert key not in got
            got[key] = (req.length, resp.response_code, resp.response_status, resp.length, resp.response_exception)
            assert req.version == resp.version == "1.1"
    assert got == SINGLES


def test_python_http_server_on_8080() -> None:
    """Host keeps its port; the body arrives in its own segment after the header block."""
    msgs = [m for s in by_port("http1", 8080) for m in parse(s)]
    reqs = [m for m in msgs if m.type == REQUEST]
    assert {m.request_domain for m in reqs} == {"10.99.0.1:8080"}
    assert [m.request_resource for m in reqs] == ["/", "/index.html"] * 6 + ["/missing", "/"]
    assert [m.response_code for m in msgs if m.type == RESPONSE] == [200] * 12 + [404, 501]


def test_every_response_follows_its_request() -> None:
    for name in HTTP_CAPTURES:
        for s in http_streams(name):
            for req, resp in pairs(parse(s)):
                assert resp.ts >= req.ts
                assert resp.ts - req.ts < 1_000_000


@needs_tshark
def test_same_requests_and_responses_as_tshark() -> None:
    """Methods, URIs and status codes in capture order, and per client port, as tshark's HTTP
    dissector reads them."""
    t_req = [(int(p), m, u) for p, m, u in tshark_fields("http1", ["tcp.srcport", "http.request.method",
                                                                   "http.request.uri"], display="http.request")]
    t_resp = [(int(p), int(c)) for p, c in tshark_fields("http1", ["tcp.dstport", "http.response.code"],
                                                         display="http.response")]
    p_req, p_resp = [], []
    for s in sorted(streams("http1"), key=lambda s: s.segments[0].ts):
        for m in parse(s):
            if m.type == REQUEST:
                p_req.append((s.client[1], m.request_type, m.request_resource))
            else:
                p_resp.append((s.client[1], m.response_code))
    assert p_req == t_req
    assert p_resp == t_resp
    assert len(p_req) == 65


@pytest.mark.parametrize("snaplen", [100, 200, 300, 1000])
def test_truncated_capture_still_pairs(snaplen: int) -> None:
    """A short snaplen cuts header blocks and bodies: bodies are skipped by count, cut header
    blocks are reported with what was captured, and every request still meets its response."""
    full = [(req.request_type, req.request_resource, resp.response_code) for req, resp in capture_pairs("http1")]
    cut = capture_pairs("http1", snaplen)
    assert [(req.request_type, req.request_resource, resp.response_code) for req, resp in cut] == full
    for req, resp in cut:
        assert 0 < req.captured <= snaplen and resp.captured > 0
        assert resp.ts >= req.ts


def test_truncated_capture_keeps_known_lengths() -> None:
    """With snaplen 200, Content-Length is still seen in the first 134 bytes of most messages."""
    got = {(req.request_type, req.request_resource): (req.length, resp.length) for req, resp in capture_pairs("http1", 200)}
    assert got[("GET", "/api/item/1")] == (0, 37)
    assert got[("POST", "/api/create")] == (25, 10)
    assert got[("HEAD", "/index.html")] == (0, 0)
    assert got[("GET", "/healthz")] == (0, 0)


@pytest.mark.parametrize("name", ["http1", "ipv6", "http_vlan"])
def test_truncated_tunnels_and_ipv6(name: str) -> None:
    got = [(resp.response_code, req.request_type, req.request_resource) for req, resp in capture_pairs(name, 200)]
    assert got == client_log(name)


# --- detection -------------------------------------------------------------------------------------

@pytest.mark.parametrize(("payload", "from_client", "expected"), [
    (b"GET / HTTP/1.1\r\nHost: a\r\n\r\n", C, True),
    (b"DELETE /x?y=1 HTTP/1.0\r\n", C, True),
    (b"OPTIONS * HTTP/1.1\r\n", C, True),
    (b"CONNECT example.com:443 HTTP/1.1\r\n", C, True),
    (b"GET http://proxy.example/a HTTP/1.1\r\n", C, True),
    (b"PATCH /a HTTP/1.1\n", C, True),                      # bare LF
    (b"GET /" + b"a" * 1500, C, True),                      # request line cut by the capture
    (b"GET /a HTTP/1.", C, True),
    (b"GET /a HTTP/1.11", C, False),
    (b"HTTP/1.1 200 OK\r\n", S, True),
    (b"HTTP/1.0 404", S, True),
    (b"HTTP/1.1 200 OK\r\n", C, False),                     # a status line from the client
    (b"GET / HTTP/1.1\r\n", S, False),
    (b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", C, False),        # HTTP/2's preface
    (b"GET / HTTP/2.0\r\n", C, False),
    (b"get / HTTP/1.1\r\n", C, False),                      # methods are case-sensitive
    (b"FOO / HTTP/1.1\r\n", C, False),
    (b"GET  / HTTP/1.1\r\n", C, False),
    (b"GET / HTTP/1.1 extra\r\n", C, False),
    (b"GET /\r\n", C, False),                               # HTTP/0.9
    (b"OPTIONS rtsp://cam/stream RTSP/1.0\r\n", C, False),
    (b"OPTIONS sip:bob@example.com SIP/2.0\r\n", C, False),
    (b"OPTIONS rtsp://cam/stream", C, False),
    (b"RTSP/1.0 200 OK\r\n", S, False),
    (b"SIP/2.0 200 OK\r\n", S, False),
    (b"HTTP/2 200\r\n", S, False),
    (b"HTTP/1.1 20", S, False),
    (b"HTTP/1.1 2000 OK", S, False),
    (b"*3\r\n$3\r\nSET\r\n", C, False),
    (b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03", C, False),
    (b"", C, False),
    (b"GET", C, False),
])
def test_check(payload: bytes, from_client: bool, expected: bool) -> None:
    assert SPEC.check(payload, from_client) is expected


def test_spec() -> None:
    assert (SPEC.protocol, SPEC.name, SPEC.transports) == (20, "HTTP", frozenset({6}))
    assert SPEC.ports == {80, 8080, 8000, 8081, 3000, 5000, 9000}
    p = SPEC.parser(L7Config())
    assert (p.protocol, p.name, p.timeout_s) == (20, "HTTP", 120.0)


# --- crafted conversations -------------------------------------------------------------------------

GET = b"GET /a HTTP/1.1\r\nHost: h\r\n\r\n"
OK_2 = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nhi"


def test_pipelined_requests_in_one_segment() -> None:
    reqs = [b"GET /a HTTP/1.1\r\nHost: h\r\n\r\n", b"HEAD /b HTTP/1.1\r\nHost: h\r\n\r\n",
            b"POST /c HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\n\r\nabc", b"\r\nGET /d HTTP/1.1\r\n\r\n"]
    resps = [b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nhi", b"HTTP/1.1 200 OK\r\nContent-Length: 42\r\n\r\n",
             b"HTTP/1.1 201 Created\r\nContent-Length: 0\r\n\r\n", b"HTTP/1.1 404 Not Found\r\nContent-Length: 1\r\n\r\nx"]
    msgs = talk((C, b"".join(reqs)), (S, b"".join(resps)))
    assert [row(m) for m in msgs] == [
        ("req", "GET", "/a", 0, "1.1"), ("req", "HEAD", "/b", 0, "1.1"), ("req", "POST", "/c", 3, "1.1"),
        ("req", "GET", "/d", 0, "1.1"),
        ("resp", 200, OK, 2, "1.1"), ("resp", 200, OK, 0, "1.1"), ("resp", 201, OK, 0, "1.1"),
        ("resp", 404, CLIENT_ERROR, 1, "1.1")]
    starts = [0, len(reqs[0]), len(reqs[0]) + len(reqs[1]), len(b"".join(reqs[:3])) + 2]
    assert [m.tcp_seq for m in msgs[:4]] == [1000 + s for s in starts]
    assert [m.tcp_seq - 7_000_000 for m in msgs[4:]] == [0, len(resps[0]), len(resps[0]) + len(resps[1]),
                                                          len(b"".join(resps[:3]))]
    assert {m.ts for m in msgs[:4]} == {1_000_000} and {m.ts for m in msgs[4:]} == {1_000_010}


REQ_WITH_BODY = (b"POST /api/v1/orders?x=1 HTTP/1.1\r\nHost: shop.example:8443\r\nUser-Agent: t/1\r\n"
                 b"Content-Length: 11\r\n\r\nhello world")


def test_request_across_three_segments_at_every_boundary() -> None:
    """Cut inside the request line, inside a header, between headers and body — at every pair of
    points — the request is the same, with the first segment's ts and seq, and the request that
    follows in the last segment is found too."""
    data = REQ_WITH_BODY + GET
    expected = [("req", "POST", "/api/v1/orders?x=1", 11, "1.1"), ("req", "GET", "/a", 0, "1.1")]
    for i in range(1, len(data) - 1):
        for j in range(i + 1, len(data)):
            msgs = talk((C, data[:i]), (C, data[i:j]), (C, data[j:]))
            assert [row(m) for m in msgs] == expected, (i, j)
            assert (msgs[0].ts, msgs[0].tcp_seq) == (1_000_000, 1000)
            assert msgs[0].request_domain == "shop.example:8443" and msgs[0].endpoint == "/api/v1"
            start = len(REQ_WITH_BODY)            # the GET's first byte: in segment 0, 1 or 2
            assert msgs[1].tcp_seq == 1000 + start
            assert msgs[1].ts == 1_000_000 + 10 * ((start >= i) + (start >= j))


CHUNKED = (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n"
           b"5;name=value\r\nhello\r\n6 ; q=\"a;b\"\r\n world\r\nA\r\n0123456789\r\n"
           b"0;last\r\nX-Checksum: abc\r\nExpires: never\r\n\r\n")


def test_chunked_with_extensions_and_trailers_byte_by_byte() -> None:
    """Length is the chunks' total, whatever the segment boundaries; the next response follows."""
    whole = talk((C, GET + GET), (S, CHUNKED + OK_2))
    parts = [(C, GET + GET)] + [(S, CHUNKED[k:k + 1]) for k in range(len(CHUNKED))] + [(S, OK_2)]
    for msgs in (whole, talk(*parts)):
        assert [row(m) for m in msgs[2:]] == [("resp", 200, OK, 21, "1.1"), ("resp", 200, OK, 2, "1.1")]
        assert msgs[2].tcp_seq == 7_000_000 and msgs[3].tcp_seq == 7_000_000 + len(CHUNKED)
        assert msgs[2].ts == 1_000_010


def test_chunked_request_goes_before_its_response() -> None:
    """A chunked upload the server answers before its last chunk is reported first, length unknown."""
    req = b"PUT /up HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n4\r\nabcd\r\n"
    msgs = talk((C, req), (S, b"HTTP/1.1 413 Payload Too Large\r\nContent-Length: 0\r\n\r\n"))
    assert [row(m) for m in msgs] == [("req", "PUT", "/up", None, "1.1"), ("resp", 413, CLIENT_ERROR, 0, "1.1")]
    done = talk((C, req + b"3\r\nefg\r\n0\r\n\r\n"), (S, OK_2))
    assert [row(m) for m in done] == [("req", "PUT", "/up", 7, "1.1"), ("resp", 200, OK, 2, "1.1")]


def test_streaming_chunked_response_is_reported_after_5s() -> None:
    """Server-sent events never end: the response is reported once it has been open 5 s."""
    p = SPEC.parser(L7Config())
    assert p.feed(GET, len(GET), C, 0, 1) != []
    head = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n"
    ev = b"7\r\ndata: 1\r\n"
    assert p.feed(head + ev, len(head + ev), S, 1000, 1) == []
    assert p.feed(ev, len(ev), S, 3_000_000, 1 + len(head + ev)) == []
    (resp,) = p.feed(ev, len(ev), S, 6_000_000, 1 + len(head + ev) + len(ev))
    assert (resp.response_code, resp.ts, resp.length) == (200, 1000, None)
    assert p.feed(ev, len(ev), S, 9_000_000, 1 + len(head) + 3 * len(ev)) == []


def test_expect_100_continue() -> None:
    """The interim 100 is not emitted: the request's response is the final one."""
    head = b"POST /upload HTTP/1.1\r\nHost: h\r\nExpect: 100-continue\r\nContent-Length: 5\r\n\r\n"
    msgs = talk((C, head), (S, b"HTTP/1.1 100 Continue\r\n\r\n"), (C, b"12345"),
                (S, b"HTTP/1.1 201 Created\r\nContent-Length: 0\r\n\r\n"), (C, GET), (S, OK_2))
    assert [row(m) for m in msgs] == [("req", "POST", "/upload", 5, "1.1"), ("resp", 201, OK, 0, "1.1"),
                                      ("req", "GET", "/a", 0, "1.1"), ("resp", 200, OK, 2, "1.1")]
    assert msgs[1].ts == 1_000_030           # the final response's time, not the 100's
    # 100 and the final response in one segment, 103 Early Hints before it
    msgs = talk((C, head + b"12345"), (S, b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </s>\r\n\r\n"
                                         + OK_2))
    assert [row(m) for m in msgs] == [("req", "POST", "/upload", 5, "1.1"), ("resp", 200, OK, 2, "1.1")]


def test_expect_100_refused_then_next_request() -> None:
    """The server refuses before the body; the client's next segment is a new request, not a body."""
    head = b"PUT /big HTTP/1.1\r\nHost: h\r\nExpect: 100-continue\r\nContent-Length: 999999\r\n\r\n"
    msgs = talk((C, head), (S, b"HTTP/1.1 417 Expectation Failed\r\nContent-Length: 0\r\n\r\n"), (C, GET), (S, OK_2))
    assert [row(m) for m in msgs] == [("req", "PUT", "/big", 999999, "1.1"), ("resp", 417, CLIENT_ERROR, 0, "1.1"),
                                      ("req", "GET", "/a", 0, "1.1"), ("resp", 200, OK, 2, "1.1")]


@pytest.mark.parametrize(("method", "status"), [(b"HEAD", b"200 OK"), (b"GET", b"204 No Content"),
                                                (b"GET", b"304 Not Modified")])
def test_responses_without_body(method: bytes, status: bytes) -> None:
    """Content-Length on a HEAD, 204 or 304 response describes no bytes on the wire."""
    req = method + b" /r HTTP/1.1\r\n\r\n"
    resp = b"HTTP/1.1 " + status + b"\r\nContent-Length: 1234\r\nETag: \"x\"\r\n\r\n"
    msgs = talk((C, req + GET), (S, resp + OK_2))
    assert [row(m) for m in msgs[2:]] == [("resp", int(status[:3]), OK, 0, "1.1"), ("resp", 200, OK, 2, "1.1")]


def test_close_delimited_body_is_not_parsed() -> None:
    """HTTP/1.0 (or Connection: close) without a length: the body runs to the end of the flow,
    even when it looks like HTTP."""
    msgs = talk((C, b"GET /old HTTP/1.0\r\n\r\n"), (S, b"HTTP/1.0 200 OK\r\nConnection: close\r\n\r\n<p>"),
                (S, b"HTTP/1.1 500 Oops\r\n\r\n"), (S, b"\x00\xff garbage"), (S, b"", 1400))
    assert [row(m) for m in msgs] == [("req", "GET", "/old", 0, "1.0"), ("resp", 200, OK, None, "1.0")]


def test_transfer_coding_without_chunked_runs_to_close() -> None:
    msgs = talk((C, GET), (S, b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n\x1f\x8b"), (S, OK_2))
    assert [row(m) for m in msgs][1:] == [("resp", 200, OK, None, "1.1")]


def test_headers_fields_and_odd_case() -> None:
    req = (b"GET /api/users/12345/orders?id=1 HTTP/1.1\r\nhOsT: shop.example\r\nUSER-AGENT: Mozilla/5.0 (X11)\r\n"
           b"referer: https://shop.example/cart\r\nx-REQUEST-id: abc-123\r\n"
           b"X-Forwarded-For: 203.0.113.7, 10.0.0.1\r\nX-Forwarded-For: 10.0.0.2\r\ncontent-LENGTH: 2\r\n\r\nok")
    resp = b"HTTP/1.1 500 \r\nX-Request-Id: resp-9\r\nContent-Length: 0\r\n\r\n"
    req_m, resp_m = talk((C, req), (S, resp))
    assert req_m.request_domain == "shop.example"
    assert req_m.request_resource == "/api/users/12345/orders?id=1"
    assert req_m.endpoint == "/api/users"
    assert req_m.x_request_id == "abc-123"
    assert req_m.http_proxy_client == "203.0.113.7"
    assert req_m.attributes == {"user_agent": "Mozilla/5.0 (X11)", "referer": "https://shop.example/cart"}
    assert req_m.length == 2
    assert (resp_m.response_code, resp_m.response_status, resp_m.x_request_id) == (500, SERVER_ERROR, "resp-9")
    assert resp_m.response_exception == "Internal Server Error"     # empty reason: the standard phrase


def test_endpoint_settings_and_absolute_form() -> None:
    req = b"GET http://proxy.example/api/item/42/detail?q=1 HTTP/1.1\r\nHost: proxy.example\r\n\r\n"
    (m,) = talk((C, req))
    assert m.request_resource == "http://proxy.example/api/item/42/detail?q=1"
    assert m.endpoint == "/api/item"
    (m,) = talk((C, req), config=L7Config(http_endpoint_depth=4))
    assert m.endpoint == "/api/item/{id}/detail"
    (m,) = talk((C, req), config=L7Config(http_endpoint_depth=3, endpoint_strip_ids=False))
    assert m.endpoint == "/api/item/42"


@pytest.mark.parametrize(("request_bytes", "domain"), [
    (b"GET http://origin.example:8080/x HTTP/1.0\r\n\r\n", "origin.example:8080"),
    (b"CONNECT db.example:5432 HTTP/1.1\r\n\r\n", "db.example:5432"),
    (b"GET http://origin.example/x HTTP/1.1\r\nHost: other.example\r\n\r\n", "other.example"),
    (b"GET /x HTTP/1.0\r\n\r\n", ""),
])
def test_domain_without_host_header(request_bytes: bytes, domain: str) -> None:
    (m,) = talk((C, request_bytes))
    assert m.request_domain == domain


def test_long_target_is_clipped() -> None:
    target = b"/q?" + b"x" * 5000
    (m,) = talk((C, b"GET " + target + b" HTTP/1.1\r\n\r\n"))
    assert len(m.request_resource) == 1024 and m.request_resource.endswith("...")
    (m,) = talk((C, b"GET " + target + b" HTTP/1.1\r\n\r\n"), config=L7Config(result_max=32))
    assert len(m.request_resource) == 128


TRACE_CASES = [
    (b"traceparent: 00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
     ("0af7651916cd43dd8448eb211c80319c", "b7ad6b7169203331", "")),
    (b"b3: 80f198ee56343ba864fe8b2a57d3eff7-e457b5a2e4d86bd1-1-05e3ac9a4f6e3b90",
     ("80f198ee56343ba864fe8b2a57d3eff7", "e457b5a2e4d86bd1", "05e3ac9a4f6e3b90")),
    (b"X-B3-TraceId: 463ac35c9f6413ad48485a3953bb6124\r\nX-B3-SpanId: a2fb4a1d1a96d312\r\n"
     b"X-B3-ParentSpanId: 0020000000000001",
     ("463ac35c9f6413ad48485a3953bb6124", "a2fb4a1d1a96d312", "0020000000000001")),
    (b"Uber-Trace-Id: 5d5b1c2c3e4f5a6b%3A7c8d9e0f1a2b3c4d%3A0%3A1", ("5d5b1c2c3e4f5a6b", "7c8d9e0f1a2b3c4d", "")),
    (b"uber-trace-id: 1a2b:3c4d:5e6f:1", ("0000000000001a2b", "3c4d", "5e6f")),
    (b"traceparent: not-a-trace", ("", "", "")),
]


@pytest.mark.parametrize(("header", "expected"), TRACE_CASES)
def test_trace_headers(header: bytes, expected: tuple) -> None:
    (req,) = talk((C, b"GET / HTTP/1.1\r\nHost: h\r\n" + header + b"\r\n\r\n"))
    assert (req.trace_id, req.span_id, req.parent_span_id) == expected


def test_trace_headers_follow_the_config() -> None:
    req = b"GET / HTTP/1.1\r\nuber-trace-id: 1a2b:3c4d:0:1\r\n\r\n"
    (m,) = talk((C, req), config=L7Config(trace_headers=("traceparent",)))
    assert m.trace_id == ""
    (m,) = talk((C, req), config=L7Config(trace_headers=("Uber-Trace-Id",)))
    assert m.trace_id == "0000000000001a2b"
    resp = b"HTTP/1.1 200 OK\r\ntraceparent: 00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01\r\n\r\n"
    assert talk((C, GET), (S, resp))[1].trace_id == "0af7651916cd43dd8448eb211c80319c"


def test_bare_lf_line_ends() -> None:
    msgs = talk((C, b"GET /lf HTTP/1.0\nHost: old\n\nGET /b HTTP/1.1\r\n\r\n"),
                (S, b"HTTP/1.0 200 OK\nContent-Length: 2\n\nhiHTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"))
    assert [row(m) for m in msgs] == [("req", "GET", "/lf", 0, "1.0"), ("req", "GET", "/b", 0, "1.1"),
                                      ("resp", 200, OK, 2, "1.0"), ("resp", 200, OK, 0, "1.1")]
    assert msgs[0].request_domain == "old"


def test_other_methods_after_detection() -> None:
    msgs = talk((C, GET + b"PROPFIND /dav HTTP/1.1\r\nDepth: 1\r\n\r\n"))
    assert [m.request_type for m in msgs] == ["GET", "PROPFIND"]


@pytest.mark.parametrize("resp", [b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n",
                                  b"HTTP/1.1 200 Connection established\r\n\r\n"])
def test_protocol_switch_ends_http(resp: bytes) -> None:
    req = (b"CONNECT db.example:443 HTTP/1.1\r\n\r\n" if resp.startswith(b"HTTP/1.1 200")
           else b"GET /ws HTTP/1.1\r\nUpgrade: websocket\r\n\r\n")
    p = SPEC.parser(L7Config())
    msgs = talk((C, req), (S, resp + b"\x81\x05hello"), parser=p)
    assert msgs[1].ends_flow and msgs[1].length == 0
    assert p.feed(b"\x16\x03\x01 binary", 10, C, 5, 1000 + len(req)) == []


def test_reversed_orientation() -> None:
    """The flow table took the server for the client: requests are still requests."""
    msgs = talk((S, GET), (C, OK_2))
    assert [row(m) for m in msgs] == [("req", "GET", "/a", 0, "1.1"), ("resp", 200, OK, 2, "1.1")]


def test_lost_bytes_inside_a_body_are_skipped_by_count() -> None:
    """A sequence gap inside a body (capture loss) costs nothing: the next response is found."""
    body = b"HTTP/1.1 200 OK\r\nContent-Length: 3000\r\n\r\n"
    p = SPEC.parser(L7Config())
    talk((C, GET + GET), parser=p)
    assert [m.length for m in p.feed(body + b"x" * 1000, len(body) + 1000, S, 10, 100)] == [3000]
    nxt = 100 + len(body) + 3000                 # 1000 body bytes never reach the parser
    (m,) = p.feed(b"y" * 1000 + OK_2, 1000 + len(OK_2), S, 20, nxt - 1000)
    assert (m.response_code, m.tcp_seq, m.length) == (200, nxt, 2)


def test_lost_message_start_resynchronises() -> None:
    """A gap over a message start: skip until a segment starts with a status line."""
    p = SPEC.parser(L7Config())
    talk((C, GET + GET + GET), parser=p)
    assert len(p.feed(OK_2, len(OK_2), S, 10, 100)) == 1
    assert p.feed(b"ddy", 3, S, 20, 100 + len(OK_2) + 500) == []       # the 2nd response was lost
    (m,) = p.feed(OK_2, len(OK_2), S, 30, 100 + len(OK_2) + 503)
    assert m.response_code == 200 and m.ts == 30


def test_retransmitted_overlap_is_ignored() -> None:
    p = SPEC.parser(L7Config())
    data = GET + b"GET /b HTTP/1.1\r\n\r\n"
    assert len(p.feed(data[:20], 20, C, 0, 500)) == 0
    msgs = p.feed(data[10:], len(data) - 10, C, 1, 510)       # resent bytes 10..20
    assert [m.request_resource for m in msgs] == ["/a", "/b"]
    assert p.feed(data[:20], 20, C, 2, 500) == []              # wholly old


def test_cut_header_block_reports_what_was_captured() -> None:
    """Header block cut by the snaplen: the fields of its complete lines, then resynchronisation."""
    req = b"GET /x HTTP/1.1\r\nHost: a.example\r\nUser-Agent: curl/8\r\nX-Long: " + b"v" * 300 + b"\r\n\r\n"
    resp = b"HTTP/1.1 502 Bad Gateway\r\nContent-Length: 10\r\nServer: " + b"s" * 300 + b"\r\n\r\n0123456789"
    msgs = talk((C, req[:60], len(req)), (S, resp[:50], len(resp)), (C, GET), (S, OK_2))
    assert [row(m) for m in msgs] == [("req", "GET", "/x", None, "1.1"), ("resp", 502, SERVER_ERROR, 10, "1.1"),
                                      ("req", "GET", "/a", 0, "1.1"), ("resp", 200, OK, 2, "1.1")]
    assert msgs[0].request_domain == "a.example" and msgs[0].captured == 60
    # the status line itself cut: the response is still reported, as a parse failure
    msgs = talk((C, GET), (S, b"HTTP/1.1 2", 300), (S, b"more body"), (C, GET), (S, OK_2))
    assert [(m.type, m.response_code, m.response_status) for m in msgs] == [
        (REQUEST, None, OK), (RESPONSE, None, PARSE_FAILED), (REQUEST, None, OK), (RESPONSE, 200, OK)]


def test_head_response_body_is_empty_when_pipelined() -> None:
    msgs = talk((C, b"HEAD /h HTTP/1.1\r\n\r\n" + GET),
                (S, b"HTTP/1.1 200 OK\r\nContent-Length: 999\r\n\r\n" + OK_2))
    assert [m.length for m in msgs] == [0, 0, 0, 2]


@pytest.mark.parametrize(("parts", "reason"), [
    ([(C, GET), (C, b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03")], "not a request line"),
    ([(C, GET), (C, b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03\r\n\r\n")], "bad request line"),
    ([(C, GET), (S, b"SSH-2.0-OpenSSH_9.2\r\n\r\n")], "bad status line"),
    ([(C, GET), (S, b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n")], "bad chunk size"),
    ([(C, GET), (S, b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nabc\r\n")], "not followed by CRLF"),
    ([(C, GET), (S, b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n0x2\r\nab\r\n")], "bad chunk size"),
    ([(C, b"GET / HTTP/1.1\r\nHost: h\r\nthis is not a header\r\n\r\n")], "without ':'"),
    ([(C, b"POST / HTTP/1.1\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n")], "conflicting"),
    ([(C, b"POST / HTTP/1.1\r\nContent-Length: -5\r\n\r\n")], "bad Content-Length"),
    ([(C, b"POST / HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\r\n")], "without final chunked"),
    ([(C, b"GET / HTTP/1.1\r\n\r\nGET / HTTP/3.0\r\nHost")], "not a request line"),
    ([(C, b"GET / HTTP/1.1\r\n\r\nGET / HTTP/3.0\r\nHost: x\r\n\r\n")], "bad version"),
    ([(C, GET + b"<html>\r\n\r\n")], "bad request line"),
    ([(C, GET + b"\r\n" * 1000)], "empty lines"),
    ([(C, b"GET / HTTP/1.1\r\nX: " + b"a" * 70000)], "max_buffer"),
])
def test_give_up(parts: list, reason: str) -> None:
    r = talk(*parts)
    assert isinstance(r, GiveUp) and r.startswith("http1: ") and reason in r, r


def test_give_up_is_final() -> None:
    p = SPEC.parser(L7Config())
    r = talk((C, b"GET / HTTP/1.1\r\nnope\r\n\r\n"), parser=p)
    assert isinstance(r, GiveUp)
    assert p.feed(GET, len(GET), C, 5, 9999) == r


# --- fuzzing and bounds ----------------------------------------------------------------------------

def _fed(parser: HttpParser, parts) -> list[L7Message] | GiveUp:
    """Feed (from_client, payload, extra uncaptured bytes, seq jump) parts; check every answer."""
    seq = {C: 1, S: 2_000_000_000}
    out: list[L7Message] = []
    for i, (side, data, missing, jump) in enumerate(parts):
        seq[side] = (seq[side] + jump) & MASK32
        r = parser.feed(data, len(data) + missing, side, i, seq[side])
        seq[side] = (seq[side] + len(data) + missing) & MASK32
        for s in (parser._client, parser._server):
            assert len(s.buf) <= parser._cfg.max_buffer
        if isinstance(r, GiveUp):
            assert r.startswith("http1: ") and "internal error" not in r, r
            return r
        assert isinstance(r, list)
        for m in r:
            check_message(m)
        out.extend(r)
    return out


@cache
def _real_segments() -> list[tuple[bool, bytes]]:
    return [(g.from_client, g.payload) for s in streams("http1") for g in s.segments]


def _conversation(rnd: random.Random) -> list[tuple[bool, bytes]]:
    segs = _real_segments()
    start = rnd.randrange(len(segs))
    return segs[start:start + rnd.randint(1, 12)]


def _mutate(rnd: random.Random, data: bytes) -> bytes:
    b = bytearray(data)
    for _ in range(rnd.randint(1, 4)):
        op = rnd.randrange(5)
        k = rnd.randrange(len(b) + 1)
        if op == 0 and b:
            b[min(k, len(b) - 1)] = rnd.randrange(256)
        elif op == 1:
            b[k:k] = rnd.choice([b"\r\n", b"\r\n\r\n", b":", b" ", b";", b"0\r\n", b"HTTP/1.1 200 OK\r\n", bytes([0])])
        elif op == 2:
            del b[k:k + rnd.randint(1, 20)]
        elif op == 3:
            b = b[:k]
        else:
            b[k:k] = rnd.randbytes(rnd.randint(1, 30))
    return bytes(b)


def test_seeded_mutations_never_raise() -> None:
    """Real segments, mutated, split, truncated and with sequence jumps (the reproducible part)."""
    rnd = random.Random(4242)
    for case in range(3000):
        conv = _conversation(rnd)
        parts = []
        for side, data in conv:
            if rnd.random() < 0.3:
                data = _mutate(rnd, data)
            if rnd.random() < 0.2 and len(data) > 2:
                cut = rnd.randrange(1, len(data))
                parts.append((side, data[:cut], 0, 0))
                data = data[cut:]
            missing = rnd.choice([0, 0, 0, rnd.randint(1, 2000)])
            jump = rnd.choice([0] * 8 + [rnd.randint(1, 500), (-rnd.randint(1, 50)) & MASK32])
            if missing and rnd.random() < 0.5:
                data, missing = data[:rnd.randrange(len(data) + 1)], missing + len(data)
            parts.append((side, data, missing, jump))
        try:
            for side, data, *_ in parts:
                SPEC.check(data, side)
            _fed(SPEC.parser(L7Config(max_buffer=rnd.choice([512, 65536]))), parts)
        except AssertionError as e:
            raise AssertionError(f"case {case}: {e}") from e


@FUZZ
@given(st.lists(st.tuples(st.booleans(), st.binary(max_size=400), st.integers(0, 3000),
                          st.sampled_from([0, 0, 0, 7, MASK32])), max_size=10),
       st.sampled_from([b"", GET, b"HTTP/1.1 200 OK\r\n"]))
def test_random_bytes_never_raise(parts, prefix: bytes) -> None:
    for side, data, *_ in parts:
        assert SPEC.check(data, side) in (True, False)
    _fed(SPEC.parser(L7Config(max_buffer=1024)), [(C, prefix, 0, 0), *parts])


_REQ = st.tuples(st.sampled_from([b"GET", b"POST", b"PUT", b"HEAD", b"DELETE", b"PATCH"]),
                 st.from_regex(rb"\A/[a-z0-9/]{0,20}\Z"),
                 st.one_of(st.none(), st.integers(0, 3000), st.lists(st.integers(1, 700), max_size=4)))
_RESP = st.tuples(st.sampled_from([200, 201, 204, 301, 304, 404, 500, 503]),
                  st.one_of(st.none(), st.integers(0, 3000), st.lists(st.integers(1, 700), max_size=4)),
                  st.booleans())


def _body(kind) -> tuple[bytes, bytes, int]:
    """(headers, body, length) for no body, a Content-Length body or chunks of these sizes."""
    if kind is None:
        return b"", b"", 0
    if isinstance(kind, int):
        return b"Content-Length: %d\r\n" % kind, b"b" * kind, kind
    chunks = b"".join(b"%x;e=1\r\n%s\r\n" % (n, b"c" * n) for n in kind)
    return b"Transfer-Encoding: chunked\r\n", chunks + b"0\r\nT: 1\r\n\r\n", sum(kind)


@FUZZ
@given(st.lists(st.tuples(_REQ, _RESP), min_size=1, max_size=6), st.randoms(use_true_random=False))
def test_generated_conversations_any_split(exchanges, rnd: random.Random) -> None:
    """Pipelined keep-alive exchanges serialised, then cut at random points: the parser reports
    exactly the messages that were sent."""
    client, server, expected_req, expected_resp = b"", b"", [], []
    for (method, path, rkind), (code, skind, interim) in exchanges:
        h, body, length = _body(rkind)
        client += method + b" " + path + b" HTTP/1.1\r\nHost: h\r\n" + h + b"\r\n" + body
        expected_req.append(("req", method.decode(), path.decode(), length, "1.1"))
        no_body = method == b"HEAD" or code in (204, 304)
        h, body, length = _body(skind if skind is not None else 0)
        server += b"HTTP/1.1 100 Continue\r\n\r\n" if interim else b""
        server += b"HTTP/1.1 %d X\r\n" % code + h + b"\r\n" + (b"" if no_body else body)
        status = CLIENT_ERROR if 400 <= code < 500 else SERVER_ERROR if code >= 500 else OK
        expected_resp.append(("resp", code, status, 0 if no_body else length, "1.1"))

    def cuts(data: bytes) -> list[bytes]:
        points = sorted({rnd.randrange(len(data) + 1) for _ in range(rnd.randint(0, 8))})
        return [data[a:b] for a, b in zip([0, *points], [*points, len(data)], strict=True) if b > a]

    parts = [(C, d, 0, 0) for d in cuts(client)] + [(S, d, 0, 0) for d in cuts(server)]
    msgs = _fed(SPEC.parser(L7Config()), parts)
    assert not isinstance(msgs, GiveUp), msgs
    assert [row(m) for m in msgs if m.type == REQUEST] == expected_req
    assert [row(m) for m in msgs if m.type == RESPONSE] == expected_resp


def test_ten_megabytes_of_header_garbage_stays_bounded() -> None:
    """Header-like lines that never end the block: the parser gives up at max_buffer, never
    holding more; in small pieces too."""
    config = L7Config(max_buffer=65536)
    line = b"X-Filler: " + b"a" * 50 + b"\r\n"
    chunk = line * (65536 // len(line))
    p = SPEC.parser(config)
    r = _fed(p, [(C, GET[:-2], 0, 0)] + [(C, chunk, 0, 0)] * (10 * 1024 * 1024 // len(chunk)))
    assert isinstance(r, GiveUp) and "max_buffer" in r
    r = _fed(SPEC.parser(L7Config(max_buffer=4096)), [(C, b"GET / HTTP/1.1\r\n", 0, 0)] + [(C, line[k % 13:k % 13 + 7], 0, 0)
                                                                                        for k in range(3000)])
    assert isinstance(r, GiveUp) and "max_buffer" in r
    # a chunk-size line that never ends
    r = _fed(SPEC.parser(config), [(C, GET, 0, 0), (S, b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n1", 0, 0)]
             + [(S, b"0" * 1000, 0, 0)] * 10)
    assert isinstance(r, GiveUp) and "chunk line" in r
