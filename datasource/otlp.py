"""OTLP/HTTP trace receiver: ``POST /v1/traces`` (protobuf or JSON, optionally gzip) → application
spans in ``flow_log.l7_flow_log`` (datamodel §2: ``signal_source`` 4 OTel, ``capture_nic_type`` 8),
tagged like every other row.

Each span becomes one session row (``type`` 2): ``start_time``/``end_time`` from the span,
``observation_point`` from its kind (SERVER/CONSUMER ``s-app``, CLIENT/PRODUCER ``c-app``, other
``app``), ``app_service`` / ``app_instance`` from the resource's ``service.name`` /
``service.instance.id``, the protocol columns from the semantic-convention attributes (HTTP, RPC,
database and messaging: method, route, statement, status code), ``x_request_id_0/1`` from the captured
``http.request|response.header.x-request-id``, the connection (both addresses, client and server
port) from ``client.*`` / ``server.*`` / ``network.peer.*`` / ``network.local.*`` (the tracer joins
app spans and packet spans of the same connection with it), every attribute in
``attribute_names/values`` (resource attributes prefixed ``resource.``) and the events as JSON.
Both ends are tagged by address through the collector's tagger (pods, Services, hosts), so an app
span names the same workload a packet span of its pod names.
"""

from __future__ import annotations

import base64
import gzip
import ipaddress
import itertools
import json
import zlib
from collections.abc import Iterable
from typing import Any

from google.protobuf import json_format
from google.protobuf.message import DecodeError
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from datasource.app import read_bounded
from datasource.tracing import as_deps
from datasource.worker import WORKERS

TABLE = "flow_log.l7_flow_log"
MAX_BODY = 16 << 20             # compressed
MAX_INFLATED = 64 << 20
ZERO_IP6 = bytes(16)
# SpanKind: 0 unspecified, 1 internal, 2 server, 3 client, 4 producer, 5 consumer (datamodel §4 span_kind)
SIDE_OF_KIND = {2: "s-app", 5: "s-app", 3: "c-app", 4: "c-app"}
STATUS_OK, STATUS_ERROR = 1, 2
OK, SERVER_ERROR, CLIENT_ERROR, UNKNOWN = 0, 3, 4, 5

COLUMNS = (
    "time", "_id", "start_time", "end_time", "response_duration", "ip4_0", "ip4_1", "ip6_0", "ip6_1", "is_ipv4",
    "protocol", "client_port", "server_port", "capture_network_type_id", "capture_nic_type", "observation_point",
    "agent_id", "signal_source", "tag_id_0", "tag_id_1", "l7_protocol", "biz_protocol", "version", "type",
    "request_type", "request_domain", "request_resource", "endpoint", "response_status", "response_code",
    "response_exception", "trace_id", "span_id", "parent_span_id", "span_kind", "x_request_id_0", "x_request_id_1",
    "http_proxy_client", "app_service", "app_instance", "request_length", "response_length", "events",
    "~attributes",
)

_DB_PROTOCOLS = {"mysql": 60, "mariadb": 60, "postgresql": 61, "oracle": 62, "redis": 80, "mongodb": 81,
                 "memcached": 82}
_MQ_PROTOCOLS = {"kafka": 100, "mqtt": 101, "rabbitmq": 102, "activemq": 103, "nats": 104, "pulsar": 105,
                 "rocketmq": 107}
_RPC_PROTOCOLS = {"grpc": 41, "dubbo": 40, "apache_dubbo": 40}


def _value(v) -> Any:
    """An AnyValue as a Python value (arrays as lists, kvlists as dicts, bytes as hex)."""
    kind = v.WhichOneof("value")
    if kind is None:
        return None
    if kind == "array_value":
        return [_value(x) for x in v.array_value.values]
    if kind == "kvlist_value":
        return {kv.key: _value(kv.value) for kv in v.kvlist_value.values}
    if kind == "bytes_value":
        return v.bytes_value.hex()
    return getattr(v, kind)


def _text(v) -> str:
    if isinstance(v, list):
        return ",".join(_text(x) for x in v)
    if isinstance(v, dict):
        return json.dumps(v, separators=(",", ":"), default=str)
    if isinstance(v, bool):
        return "true" if v else "false"
    return "" if v is None else str(v)


def _first(attrs: dict, *keys: str, default=None):
    for k in keys:
        v = attrs.get(k)
        if isinstance(v, list):
            v = v[0] if v else None
        if v not in (None, ""):
            return v
    return default


def _ip(v) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    if not isinstance(v, str) or not v:
        return None
    try:
        return ipaddress.ip_address(v.strip("[]"))
    except ValueError:
        return None


def _port(v) -> int:
    try:
        p = int(v)
    except (TypeError, ValueError):
        return 0
    return p if 0 < p < 65536 else 0


def _int_or_none(v) -> int | None:
    try:
        return int(v)
    except (TypeError, ValueError):
        return None


def classify(name: str, kind: int, attrs: dict) -> dict:
    """The protocol columns of a span from its semantic-convention attributes."""
    method = _first(attrs, "http.request.method", "http.method")
    rpc = str(_first(attrs, "rpc.system", default="")).lower()
    db = str(_first(attrs, "db.system.name", "db.system", default="")).lower()
    mq = str(_first(attrs, "messaging.system", default="")).lower()
    code = _int_or_none(_first(attrs, "http.response.status_code", "http.status_code", "rpc.grpc.status_code",
                               "db.response.status_code"))
    out = {"l7_protocol": 0, "request_type": "", "request_resource": "", "endpoint": name, "response_code": code,
           "request_domain": _text(_first(attrs, "server.address", "http.host", "net.peer.name", default="")),
           "version": _text(_first(attrs, "network.protocol.version", "http.flavor", default=""))}
    if rpc in _RPC_PROTOCOLS:
        svc, m = _text(_first(attrs, "rpc.service", default="")), _text(_first(attrs, "rpc.method", default=""))
        out.update(l7_protocol=_RPC_PROTOCOLS[rpc], request_type=m, request_resource=svc,
                   endpoint=f"{svc}/{m}" if svc or m else name)
    elif method:
        path = _first(attrs, "url.path", "http.target", "url.full", "http.url", default="")
        out.update(l7_protocol=21 if out["version"].startswith("2") else 20, request_type=_text(method),
                   request_resource=_text(path), endpoint=_text(_first(attrs, "http.route", default=name)))
    elif db:
        op = _text(_first(attrs, "db.operation.name", "db.operation", default=""))
        coll = _text(_first(attrs, "db.collection.name", "db.sql.table", default=""))
        out.update(l7_protocol=_DB_PROTOCOLS.get(db, 0), request_type=op or name.split(" ")[0],
                   request_resource=_text(_first(attrs, "db.query.text", "db.statement", default="")),
                   endpoint=f"{op} {coll}".strip() if coll else (op or name))
    elif mq:
        dest = _text(_first(attrs, "messaging.destination.name", "messaging.destination", default=""))
        out.update(l7_protocol=_MQ_PROTOCOLS.get(mq, 0), request_domain=dest,
                   request_type=_text(_first(attrs, "messaging.operation.type", "messaging.operation", default="")),
                   request_resource=dest, endpoint=dest or name)
    return out


def response_status(status_code: int, code: int | None, protocol: int) -> int:
    """datamodel §4: OTel ERROR → server error (client error for HTTP 4xx), OK → 0; UNSET from the
    HTTP status where there is one, else unknown (5)."""
    if protocol in (20, 21) and code is not None:
        if code >= 500:
            return SERVER_ERROR
        if code >= 400:
            return CLIENT_ERROR
        return OK if status_code != STATUS_ERROR else SERVER_ERROR
    if status_code == STATUS_ERROR:
        return SERVER_ERROR
    return OK if status_code == STATUS_OK else UNKNOWN


def _ends(kind: int, attrs: dict, local_default) -> tuple:
    """(client ip, server ip, client port, server port) of a span's connection."""
    local = _ip(_first(attrs, "network.local.address", "net.host.ip", "net.sock.host.addr")) or local_default
    peer = _ip(_first(attrs, "network.peer.address", "net.peer.ip", "net.sock.peer.addr"))
    if kind in (2, 5):         # server: the peer is the client
        client = _ip(_first(attrs, "client.address", "http.client_ip")) or peer
        server = local or _ip(_first(attrs, "server.address"))
        return (client, server, _port(_first(attrs, "client.port", "network.peer.port", "net.peer.port")),
                _port(_first(attrs, "server.port", "network.local.port", "net.host.port")))
    if kind in (3, 4):         # client: the peer is the server
        server = peer or _ip(_first(attrs, "server.address", "net.peer.name"))
        return (local, server, _port(_first(attrs, "network.local.port", "net.sock.host.port")),
                _port(_first(attrs, "server.port", "network.peer.port", "net.peer.port")))
    return local, local, 0, 0


class OtlpSink:
    """Turns OTLP export requests into l7_flow_log rows for a collector.writer.Writer. ``tagger``
    (collector.tagging.Tagger / InventoryTagger) tags both ends; its registry must be the writer's
    (as in ``flowscope up``: ``OtlpSink(col.writer, col.tagger, cfg.agent_id)``)."""

    def __init__(self, writer, tagger=None, agent_id: int = 1) -> None:
        self.writer = writer
        self.tagger = tagger
        self.agent_id = agent_id
        # _id = end second << 32 | writer slot (10 bits) << 22 | counter: slot 7 of the agent is OTLP's
        self._id_mid = (((agent_id << 3) | 7) & 0x3FF) << 22
        self._seq = itertools.count(1)
        self.stats = {"requests": 0, "spans": 0, "rejected": 0}

    def _tag(self, ip, ts: int, port: int = 0) -> int:
        if self.tagger is None or ip is None:
            return 0
        from collector.tagging import ip_key

        tid = self.tagger.tag(ip_key(str(ip)), ts)
        return self.tagger.port_tags.get((tid, port), tid) if port else tid

    def rows(self, req: ExportTraceServiceRequest, sender: str = "") -> tuple[list[tuple], int, str]:
        """(rows, spans rejected, why) of one export request."""
        out: list[tuple] = []
        rejected, why = 0, ""
        sender_ip = _ip(sender)
        if sender_ip is not None and sender_ip.is_loopback:
            sender_ip = None
        for rs in req.resource_spans:
            res = {kv.key: _value(kv.value) for kv in rs.resource.attributes}
            service = _text(res.get("service.name", "")) or "unknown_service"
            instance = _text(_first(res, "service.instance.id", "host.name", "k8s.pod.name", default=""))
            host = _ip(_first(res, "host.ip", "k8s.pod.ip")) or sender_ip
            res_attrs = {f"resource.{k}": _text(v) for k, v in res.items() if k not in ("service.name",)}
            for ss in rs.scope_spans:
                for sp in ss.spans:
                    if len(sp.trace_id) != 16 or len(sp.span_id) != 8 or not any(sp.trace_id) or not any(sp.span_id):
                        rejected += 1
                        why = "a span without a valid 16-byte trace id and 8-byte span id"
                        continue
                    out.append(self._row(sp, res_attrs, service, instance, host))
        return out, rejected, why

    def _row(self, sp, res_attrs: dict, service: str, instance: str, host) -> tuple:
        attrs = {kv.key: _value(kv.value) for kv in sp.attributes}
        start = sp.start_time_unix_nano // 1000
        end = max(start, sp.end_time_unix_nano // 1000)
        kind = int(sp.kind)
        p = classify(sp.name, kind, attrs)
        client, server, cport, sport = _ends(kind, attrs, host)
        v4 = all(a is None or a.version == 4 for a in (client, server))
        ip4 = [int(a) if a is not None and a.version == 4 else 0 for a in (client, server)]
        ip6 = [a.packed if a is not None and a.version == 6 else ZERO_IP6 for a in (client, server)]
        status = response_status(sp.status.code, p["response_code"], p["l7_protocol"])
        exception = sp.status.message
        for ev in sp.events:
            if ev.name == "exception" and not exception:
                exception = _text(next((_value(kv.value) for kv in ev.attributes if kv.key == "exception.message"), ""))
        events = json.dumps([{"name": ev.name, "time_us": ev.time_unix_nano // 1000,
                              "attributes": {kv.key: _value(kv.value) for kv in ev.attributes}} for ev in sp.events],
                            separators=(",", ":"), default=str) if sp.events else ""
        end_s = end // 1_000_000
        row_id = (end_s << 32) | self._id_mid | (next(self._seq) & 0x3FFFFF)
        xr0 = _text(_first(attrs, "http.request.header.x-request-id", "http.request.header.x_request_id", default=""))
        xr1 = _text(_first(attrs, "http.response.header.x-request-id", "http.response.header.x_request_id", default=""))
        xff = _text(_first(attrs, "http.request.header.x-forwarded-for", default="")).split(",")[0].strip()
        all_attrs = {k: _text(v) for k, v in attrs.items()}
        all_attrs.update(res_attrs)
        all_attrs["span.name"] = sp.name
        return (end_s, row_id, start, end, end - start, ip4[0], ip4[1], ip6[0], ip6[1], int(v4),
                6 if sport else 0, cport, sport, 3, 8, SIDE_OF_KIND.get(kind, "app"), self.agent_id, 4,
                self._tag(client, start), self._tag(server, start, sport), p["l7_protocol"], "", p["version"], 2,
                p["request_type"], p["request_domain"], p["request_resource"], p["endpoint"], status,
                p["response_code"], exception, sp.trace_id.hex(), sp.span_id.hex(), sp.parent_span_id.hex(), kind,
                xr0, xr1, xff, service, instance,
                _int_or_none(_first(attrs, "http.request.body.size", "http.request_content_length")),
                _int_or_none(_first(attrs, "http.response.body.size", "http.response_content_length")),
                events, all_attrs)

    def accept(self, req: ExportTraceServiceRequest, sender: str = "") -> tuple[int, int, str]:
        """Write one export request: (spans written, spans rejected, why)."""
        from collector.writer import RowBatch

        rows, rejected, why = self.rows(req, sender)
        if rows:
            self.writer.put(TABLE, RowBatch(COLUMNS, rows))
        self.stats["requests"] += 1
        self.stats["spans"] += len(rows)
        self.stats["rejected"] += rejected
        return len(rows), rejected, why

    def flush(self) -> None:
        self.writer.flush()


# -- decoding ------------------------------------------------------------------------------------------------------
class OtlpError(ValueError):
    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


def _hex_ids_to_b64(obj) -> None:
    """OTLP/JSON spells trace and span ids in hex; protobuf's JSON mapping expects base64."""
    if isinstance(obj, dict):
        for k in ("traceId", "spanId", "parentSpanId", "trace_id", "span_id", "parent_span_id"):
            v = obj.get(k)
            if isinstance(v, str) and v:
                try:
                    obj[k] = base64.b64encode(bytes.fromhex(v)).decode()
                except ValueError:
                    raise OtlpError(f"{k} {v[:40]!r} is not hex") from None
        for v in obj.values():
            _hex_ids_to_b64(v)
    elif isinstance(obj, list):
        for v in obj:
            _hex_ids_to_b64(v)


def decode(body: bytes, content_type: str, encoding: str) -> tuple[ExportTraceServiceRequest, bool]:
    """(request, is_json) of an OTLP/HTTP body."""
    encoding = encoding.strip().lower()
    if encoding in ("gzip", "deflate"):
        try:
            d = zlib.decompressobj(wbits=31 if encoding == "gzip" else 15)
            body = d.decompress(body, MAX_INFLATED)
            if d.unconsumed_tail:
                raise OtlpError(f"the inflated body is over {MAX_INFLATED} bytes", 413)
        except (zlib.error, gzip.BadGzipFile) as e:
            raise OtlpError(f"Content-Encoding {encoding}: {e}") from None
    elif encoding not in ("", "identity"):
        raise OtlpError(f"Content-Encoding {encoding!r} is not supported (gzip, deflate)", 415)
    ctype = content_type.split(";")[0].strip().lower()
    req = ExportTraceServiceRequest()
    if ctype in ("application/x-protobuf", "application/protobuf"):
        try:
            req.ParseFromString(body)
        except (DecodeError, RuntimeError) as e:
            raise OtlpError(f"not an OTLP ExportTraceServiceRequest: {e}") from None
        return req, False
    if ctype == "application/json":
        try:
            obj = json.loads(body or b"{}")
        except ValueError as e:
            raise OtlpError(f"the body is not JSON: {e}") from None
        if not isinstance(obj, dict):
            raise OtlpError("the body must be a JSON object (ExportTraceServiceRequest)")
        _hex_ids_to_b64(obj)
        try:
            json_format.ParseDict(obj, req, ignore_unknown_fields=True)
        except json_format.ParseError as e:
            raise OtlpError(f"not an OTLP ExportTraceServiceRequest: {e}") from None
        return req, True
    raise OtlpError(f"Content-Type {content_type!r}: OTLP/HTTP is application/x-protobuf or application/json", 415)


def _status_proto(message: str, code: int) -> bytes:
    """google.rpc.Status {code = 1, message = 2}, the body of an OTLP/HTTP error."""
    msg = message.encode()[:4096]
    out = bytearray(b"\x08")
    n = code
    while True:
        b, n = n & 0x7F, n >> 7
        out.append(b | (0x80 if n else 0))
        if not n:
            break
    out.append(0x12)
    n = len(msg)
    while True:
        b, n = n & 0x7F, n >> 7
        out.append(b | (0x80 if n else 0))
        if not n:
            break
    return bytes(out) + msg


def _error(message: str, status: int, as_json: bool) -> Response:
    code = {400: 3, 413: 8, 415: 3, 503: 14}.get(status, 13)      # grpc codes: invalid argument, …
    if as_json:
        return Response(json.dumps({"code": code, "message": message}), status, media_type="application/json")
    return Response(_status_proto(message, code), status, media_type="application/x-protobuf")


def routes(deps) -> list[Route]:
    """``POST /v1/traces``: OTLP/HTTP, protobuf or JSON (the SDKs' default path on port 4318; point
    ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`` at ``http://<datasource>/v1/traces``)."""
    d = as_deps(deps)

    async def traces(request: Request) -> Response:
        """OTLP/HTTP: receive spans (protobuf or JSON, gzip) into flow_log.l7_flow_log."""
        as_json = request.headers.get("content-type", "").split(";")[0].strip().lower() == "application/json"
        sink = d.otlp
        if sink is None:
            return _error("this datasource has no writer for OTLP spans (read-only); send them to `flowscope up`",
                          503, as_json)
        try:
            req, as_json = decode(await read_bounded(request, MAX_BODY, OtlpError), request.headers.get("content-type", ""),
                                  request.headers.get("content-encoding", ""))
        except OtlpError as e:
            return _error(str(e), e.status, as_json)
        sender = request.client.host if request.client else ""
        _written, rejected, why = await WORKERS.run(sink.accept, req, sender)
        resp = ExportTraceServiceResponse()
        if rejected:
            resp.partial_success.rejected_spans = rejected
            resp.partial_success.error_message = why
        if as_json:
            body = json_format.MessageToDict(resp) if rejected else {}
            return Response(json.dumps(body), 200, media_type="application/json")
        return Response(resp.SerializeToString(), 200, media_type="application/x-protobuf")

    return [Route("/v1/traces", traces, methods=["POST"])]


def load_exports(lines: Iterable[str]) -> list[tuple[str, str, bytes]]:
    """The recorded exports of tests/data/*.otlp.jsonl: (content type, content encoding, body)."""
    out = []
    for line in lines:
        if line.strip():
            rec = json.loads(line)
            out.append((rec["content_type"], rec.get("content_encoding", ""), base64.b64decode(rec["body_b64"])))
    return out
