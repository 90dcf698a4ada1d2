"""The contract between the flow table and the L7 protocol parsers.

A parser is created per flow once its protocol is detected, and is fed the flow's payloads in
capture order, one TCP segment or UDP datagram at a time, each with its direction. It returns the
messages (requests, responses) that a packet completes; the session aggregator pairs them and
writes ``flow_log.l7_flow_log`` rows (datamodel §2, §5.7). Parsers never raise: on bytes they
cannot make sense of they return ``GIVE_UP`` and the flow stops being parsed (counted by reason).

Payloads may be cut short by the capture's snaplen: ``length`` is the real L4 payload length,
``len(payload)`` what was captured. Parsers use lengths from protocol headers to skip bytes they
did not get, so a truncated body never breaks the pairing of the next message.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar, Protocol

REQUEST, RESPONSE, SESSION = 0, 1, 2
MASK32 = 0xFFFFFFFF            # TCP sequence numbers (``seq``) wrap at 2^32

# response_status (datamodel §4)
OK, TIMEOUT, SERVER_ERROR, CLIENT_ERROR, UNKNOWN, PARSE_FAILED = 0, 2, 3, 4, 5, 6

# l7_protocol ids (datamodel §4)
HTTP1, HTTP2, DUBBO, GRPC, MYSQL, REDIS, KAFKA, MQTT, DNS, TLS = 20, 21, 40, 41, 60, 80, 100, 101, 120, 121


class GiveUp(str):
    """Returned by ``feed`` instead of messages: the reason this flow is no longer parsed."""


class L7Message:
    """One request or response, as a parser saw it. Unset fields keep the class defaults, so a
    parser fills only what its protocol has. Names are l7_flow_log's columns."""

    __slots__ = (
        "type", "ts", "tcp_seq", "session_id", "version", "request_type", "request_domain",
        "request_resource", "endpoint", "request_id", "response_code", "response_status",
        "response_exception", "response_result", "length", "trace_id", "span_id", "parent_span_id",
        "x_request_id", "http_proxy_client", "attributes", "is_tls", "sql_affected_rows", "captured",
        "l7_protocol", "biz_protocol", "ends_flow",
    )

    def __init__(self, type: int, ts: int, tcp_seq: int = 0, **fields) -> None:
        self.type = type                  # REQUEST or RESPONSE (SESSION if the protocol has no pairing)
        self.ts = ts                      # µs: the message's first packet
        self.tcp_seq = tcp_seq            # TCP sequence number of the message's first byte (0 for UDP)
        self.session_id = None            # pairing key where the protocol has one (stream id, DNS txid,
        #                                   Kafka correlation id, Dubbo request id, MQTT packet id);
        #                                   None: requests and responses pair in order on the flow
        self.version = ""
        self.request_type = ""            # method, SQL/Redis command, DNS qtype, Kafka API, MQTT packet kind
        self.request_domain = ""          # Host / :authority, DNS qname, TLS SNI, Kafka topic, MQTT client id
        self.request_resource = ""        # path, SQL text, RPC service/method, Redis args, topic
        self.endpoint = ""                # aggregation key (path without ids, service/method, "VERB table")
        self.request_id = None            # int: stream id, txid, correlation id, statement id …
        self.response_code = None         # int: HTTP status, grpc-status, MySQL errno, DNS rcode …
        self.response_status = OK         # OK / CLIENT_ERROR / SERVER_ERROR (responses only)
        self.response_exception = ""      # error text
        self.response_result = ""         # DNS answers, Redis reply (truncated)
        self.length = None                # int: request or response length in bytes (None if unknown)
        self.trace_id = ""
        self.span_id = ""
        self.parent_span_id = ""
        self.x_request_id = ""            # X-Request-ID seen on this message
        self.http_proxy_client = ""       # X-Forwarded-For (first address)
        self.attributes = None            # dict[str, str] of extra attributes (user agent, DNS opcode …)
        self.is_tls = 0
        self.sql_affected_rows = None     # int
        self.captured = 0                 # payload bytes actually captured for this message
        self.l7_protocol = 0              # set by the parser (gRPC on an HTTP/2 flow reports GRPC)
        self.biz_protocol = ""
        self.ends_flow = False            # e.g. a TLS handshake done: stop parsing, encrypted from here
        if fields:
            for k, v in fields.items():
                setattr(self, k, v)

    def __repr__(self) -> str:
        set_fields = {k: getattr(self, k) for k in self.__slots__ if getattr(self, k) not in (None, "", 0, False)}
        return f"L7Message({set_fields})"


class Parser(Protocol):
    """One flow's parser. ``protocol`` is its l7_protocol id; ``timeout_s`` how long a request
    waits for its response before it is reported as a timeout (DNS/TLS 15 s, else 120 s)."""

    protocol: ClassVar[int]
    name: ClassVar[str]
    timeout_s: ClassVar[float]

    def feed(self, payload: bytes, length: int, from_client: bool, ts: int, seq: int) -> list[L7Message] | GiveUp:
        """The next in-order payload of the flow (``seq`` = TCP sequence number of its first
        byte, 0 for UDP). Returns the messages completed by it (often [])."""
        ...

    # Optional: ``flush(ts) -> list[L7Message]`` hands over messages held for more data (a gRPC
    # response waiting for its trailers, a chunked body) when the flow ends.


class ProtocolSpec(Protocol):
    """What the detector knows about a protocol: a cheap content check and the parser to make."""

    protocol: int
    name: str
    ports: frozenset[int]        # hints only: detection is by content
    transports: frozenset[int]   # 6 TCP, 17 UDP

    def check(self, payload: bytes, from_client: bool) -> bool:
        """Does this first payload of a flow look like the protocol? Must be cheap and strict
        enough not to claim other protocols' traffic."""
        ...

    def parser(self, config: L7Config) -> Parser: ...


@dataclass(frozen=True, slots=True)
class Spec:
    """A protocol table row (``ProtocolSpec``) as data: each parser module declares its ``SPEC``
    with its module's ``check`` function and its parser class (called with the L7Config)."""

    protocol: int
    name: str
    ports: frozenset[int]
    transports: frozenset[int]
    check: Callable[[bytes, bool], bool]
    parser: Callable[[L7Config], Parser]


class L7Config:
    """Parser settings (flowscope.config ``l7`` section)."""

    __slots__ = ("endpoint_strip_ids", "http_endpoint_depth", "max_buffer", "protocols", "redis_arg_max",
                 "result_max", "sql_max", "trace_headers")

    def __init__(self, *, protocols: frozenset[str] | None = None, sql_max: int = 1024, redis_arg_max: int = 64,
                 result_max: int = 256, max_buffer: int = 65536, http_endpoint_depth: int = 2,
                 endpoint_strip_ids: bool = True,
                 trace_headers: tuple[str, ...] = ("traceparent", "b3", "x-b3-traceid", "uber-trace-id")) -> None:
        self.protocols = protocols        # None: all; else names to parse ("HTTP", "DNS", …)
        self.sql_max = sql_max            # SQL text kept in request_resource
        self.redis_arg_max = redis_arg_max
        self.result_max = result_max      # response_result / exception text kept
        self.max_buffer = max_buffer      # bytes a parser may buffer per direction (bounded memory)
        self.http_endpoint_depth = http_endpoint_depth   # path segments kept in HTTP endpoints
        self.endpoint_strip_ids = endpoint_strip_ids     # /api/item/42 → /api/item/{id}
        self.trace_headers = trace_headers
