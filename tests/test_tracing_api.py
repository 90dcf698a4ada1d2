"""The tracing APIs on the tracing lab's store (tests/tracing_store.py): DeepFlow's
``POST /v1/stats/querier/L7FlowTracing`` (its JSON in, ``{DATA: {services, tracing}}`` out), the
Jaeger query API under ``/jaeger`` in the exact JSON shapes Grafana's built-in Jaeger datasource
decodes (grafana/grafana pkg/tsdb/jaeger types.go), and the OTLP/HTTP receiver ``POST /v1/traces`` —
with the payloads the lab's OpenTelemetry SDK sent, their OTLP/JSON and gzip forms, and a live export
by the SDK's own exporter.
"""

from __future__ import annotations

import base64
import gzip
import json
import socket
import threading
import time
import warnings

import jsonschema
import pytest
from google.protobuf import json_format
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceResponse
from starlette.applications import Starlette

from collector.tagging import Tagger
from datasource import jaeger, otlp, tracing
from tests.helpers import MemoryWriter
from tests.tracing_store import L7, OTLP, TRUTH, open_lab

with warnings.catch_warnings():     # starlette nudges towards httpx2, which this environment lacks
    warnings.simplefilter("ignore", UserWarning)
    from starlette.testclient import TestClient

REQUESTS = TRUTH["requests"]
ORDER, FAILED = REQUESTS[0], next(r for r in REQUESTS if r["status"] == 502)
CART = next(r for r in REQUESTS if r["path"].startswith("/api/cart"))


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    yield from open_lab(tmp_path_factory.mktemp("tracing-api"))


@pytest.fixture(scope="module")
def api(lab) -> TestClient:
    d = tracing.Deps(engine=lab.engine)
    return TestClient(Starlette(routes=[*tracing.routes(d), *jaeger.routes(d), *otlp.routes(d)]))


@pytest.fixture(scope="module")
def window(lab) -> dict:
    """The capture's time range, as Jaeger's start/end (µs) around it."""
    [[t0, t1]] = lab.client.query(f"SELECT toUnixTimestamp(min(time)), toUnixTimestamp(max(time)) FROM {L7} "
                                  "WHERE time < toDateTime('2099-01-01')").result_rows
    return {"start": (t0 - 60) * 1_000_000, "end": (t1 + 60) * 1_000_000, "t0": t0, "t1": t1}


# -- DeepFlow: POST /v1/stats/querier/L7FlowTracing --------------------------------------------------------------
# deepflow-app l7_flow_tracing.py _get_flow_dict (+ deepflow_span_id/deepflow_parent_span_id, format_trace)
ITEM_KEYS = {
    "id", "_ids", "related_ids", "signal_source", "type", "start_time_us", "end_time_us", "duration", "selftime",
    "tap_side", "Enum(tap_side)", "l7_protocol", "Enum(l7_protocol)", "l7_protocol_str", "endpoint", "request_type",
    "request_resource", "response_status", "response_exception", "biz_response_code", "response_code", "flow_id",
    "request_id", "x_request_id_0", "x_request_id_1", "trace_id", "span_id", "parent_span_id", "req_tcp_seq",
    "resp_tcp_seq", "syscall_trace_id_request", "syscall_trace_id_response", "syscall_cap_seq_0",
    "syscall_cap_seq_1", "attribute", "parent_id", "childs", "process_id", "vtap_id", "service_uid",
    "service_uname", "app_service", "app_instance", "tap_port", "tap_port_name", "set_parent_info",
    "auto_instance", "auto_instance_id", "auto_instance_type", "is_tls", "is_async", "ip", "auto_service",
    "auto_service_id", "auto_service_type", "process_kname", "deepflow_span_id", "deepflow_parent_span_id",
}


def test_l7_flow_tracing_as_grafanas_deepflow_plugin_asks(api, lab, window):
    body = {"_id": str(lab.entry(CART)), "DATABASE": "flow_log", "TABLE": "l7_flow_log", "MAX_ITERATION": 30,
            "TIME_START": window["t0"] - 60, "TIME_END": window["t1"] + 60}
    r = api.post("/v1/stats/querier/L7FlowTracing", json=body, headers={"X-User-Id": "1", "X-User-Type": "1"})
    assert r.status_code == 200
    out = r.json()
    assert (out["OPT_STATUS"], out["DESCRIPTION"], out["TYPE"]) == ("SUCCESS", "", "Flow_Log_L7_Tracing")
    tracing_, services = out["DATA"]["tracing"], out["DATA"]["services"]
    assert len(tracing_) == 30 and all(set(item) >= ITEM_KEYS for item in tracing_)
    by_id = {t["id"]: t for t in tracing_}
    assert len(by_id) == 30
    seen: set[int] = set()
    for t in tracing_:                     # depth-first: a parent before its children
        if t["parent_id"] >= 0:
            parent = by_id[t["parent_id"]]
            assert t["parent_id"] in seen and t["id"] in parent["childs"]
            assert t["deepflow_parent_span_id"] == parent["deepflow_span_id"]
        seen.add(t["id"])
        assert all(by_id[c]["parent_id"] == t["id"] for c in t["childs"])
    assert [t["parent_id"] for t in tracing_].count(-1) == 1
    assert tracing_[0]["tap_side"] == "c" and tracing_[0]["tap_port_name"] == "client/eth0"
    assert {s["service_uname"] for s in services} == {"client", "proxy", "api", "stock"}
    assert sum(s["duration"] for s in services) == sum(t["selftime"] for t in tracing_)
    assert abs(sum(float(s["duration_ratio"]) for s in services) - 100) < 0.05
    assert out["DATA"]["completeness"]["score"] == 1.0


def test_l7_flow_tracing_by_trace_id_and_signal_source(api):
    r = api.post("/v1/stats/querier/L7FlowTracing", json={"DATABASE": "flow_log", "TABLE": "l7_flow_log",
                                                          "trace_id": ORDER["trace_id"]})
    assert r.status_code == 200 and len(r.json()["DATA"]["tracing"]) == 13
    r = api.post("/v1/stats/querier/L7FlowTracing", json={"DATABASE": "flow_log", "TABLE": "l7_flow_log",
                                                          "trace_id": ORDER["trace_id"], "SIGNAL_SOURCES": ["otel"]})
    items = r.json()["DATA"]["tracing"]
    assert len(items) == ORDER["spans"] and {i["signal_source"] for i in items} == {4}


@pytest.mark.parametrize("body, status, needle", [
    ({"DATABASE": "flow_log", "TABLE": "l7_flow_log"}, 400, "_id or trace_id"),
    ({"DATABASE": "flow_metrics", "TABLE": "network", "_id": "1"}, 400, "only DATABASE flow_log"),
    ({"_id": "abc"}, 400, "_id must be an integer"),
    ({"_id": "1", "MAX_ITERATION": "lots"}, 400, "MAX_ITERATION"),
    ({"_id": "1", "SIGNAL_SOURCES": ["carrier-pigeon"]}, 400, "SIGNAL_SOURCES"),
    ({"_id": str((1795600000 << 32) | 7)}, 200, "no l7_flow_log row"),
])
def test_l7_flow_tracing_errors(api, body, status, needle):
    r = api.post("/v1/stats/querier/L7FlowTracing", json=body)
    assert r.status_code == status
    assert needle in r.json()["DESCRIPTION"]
    if status == 200:
        assert r.json()["DATA"] == {"tracing": [], "services": [], "completeness": None}
    else:
        assert r.json()["OPT_STATUS"] == "INVALID_POST_DATA"


def test_l7_flow_tracing_not_json(api):
    r = api.post("/v1/stats/querier/L7FlowTracing", content=b"{nope", headers={"Content-Type": "application/json"})
    assert r.status_code == 400 and r.json()["OPT_STATUS"] == "INVALID_POST_DATA"


# -- Jaeger ----------------------------------------------------------------------------------------------------------
_KV = {"type": "object", "required": ["key", "type", "value"], "additionalProperties": False,
       "properties": {"key": {"type": "string"}, "type": {"enum": ["string", "bool", "int64", "float64"]}, "value": {}},
       "allOf": [{"if": {"properties": {"type": {"const": t}}}, "then": {"properties": {"value": {"type": j}}}}
                 for t, j in (("string", "string"), ("bool", "boolean"), ("int64", "integer"), ("float64", "number"))]}
_STRINGS_OR_NULL = {"oneOf": [{"type": "null"}, {"type": "array", "items": {"type": "string"}}]}
SPAN = {"type": "object", "additionalProperties": False,
        "required": ["traceID", "spanID", "processID", "operationName", "startTime", "duration", "logs",
                     "references", "tags", "warnings", "flags"],
        "properties": {
            "traceID": {"type": "string", "pattern": "^[0-9a-f]{32}$"}, "spanID": {"type": "string", "pattern": "^[0-9a-f]{16}$"},
            "processID": {"type": "string"}, "operationName": {"type": "string", "minLength": 1},
            "startTime": {"type": "integer", "minimum": 0}, "duration": {"type": "integer", "minimum": 0},
            "logs": {"type": "array", "items": {"type": "object", "required": ["timestamp", "fields"],
                                                 "properties": {"timestamp": {"type": "integer"},
                                                                "fields": {"type": "array", "items": _KV}}}},
            "references": {"type": "array", "items": {
                "type": "object", "required": ["refType", "spanID", "traceID"], "additionalProperties": False,
                "properties": {"refType": {"enum": ["CHILD_OF", "FOLLOWS_FROM"]}, "spanID": {"type": "string"},
                               "traceID": {"type": "string"}}}},
            "tags": {"type": "array", "items": _KV}, "warnings": _STRINGS_OR_NULL, "flags": {"type": "integer"}}}
TRACE = {"type": "object", "required": ["traceID", "spans", "processes", "warnings"],
         "properties": {"traceID": {"type": "string"}, "spans": {"type": "array", "minItems": 1, "items": SPAN},
                        "processes": {"type": "object", "additionalProperties": {
                            "type": "object", "required": ["serviceName", "tags"], "properties": {
                                "serviceName": {"type": "string", "minLength": 1},
                                "tags": {"type": "array", "items": _KV}}}},
                        "warnings": _STRINGS_OR_NULL}}


def _list_of(items: dict) -> dict:
    return {"type": "object", "required": ["data", "total", "limit", "offset", "errors"],
            "properties": {"data": {"type": "array", "items": items}, "total": {"type": "integer"},
                           "limit": {"type": "integer"}, "offset": {"type": "integer"},
                           "errors": {"oneOf": [{"type": "null"}, {"type": "array"}]}}}


def check_trace(t: dict) -> dict[str, dict]:
    """Shape, then what the Traces panel relies on: span ids unique, every reference and process
    resolvable, one trace id."""
    jsonschema.validate(t, TRACE)
    spans = {s["spanID"]: s for s in t["spans"]}
    assert len(spans) == len(t["spans"])
    for s in t["spans"]:
        assert s["traceID"] == t["traceID"] and s["processID"] in t["processes"]
        for ref in s["references"]:
            assert ref["spanID"] in spans and ref["traceID"] == t["traceID"]
    return spans


def test_services_and_operations(api, window):
    r = api.get("/jaeger/api/services", params={"start": window["start"], "end": window["end"]})
    jsonschema.validate(r.json(), _list_of({"type": "string"}))
    assert {"api", "client", "proxy", "stock"} <= set(r.json()["data"])
    r = api.get("/jaeger/api/services/api/operations", params={"start": window["start"], "end": window["end"]})
    jsonschema.validate(r.json(), _list_of({"type": "string"}))
    assert {"GET /api/order/{id}", "GET /api/cart/{id}", "GET /stock/{id}", "SELECT orders", "GET", "SET",
            "price"} <= set(r.json()["data"])


def test_trace_by_id(api):
    r = api.get(f"/jaeger/api/traces/{ORDER['trace_id']}")
    assert r.status_code == 200
    body = r.json()
    assert len(body["data"]) == 1
    t = body["data"][0]
    spans = check_trace(t)
    assert t["traceID"] == ORDER["trace_id"] and len(spans) == 13
    roots = [s for s in t["spans"] if not s["references"]]
    assert len(roots) == 1 and roots[0]["operationName"] == "GET /api/order"
    assert any("13 spans" in w or "12 of 13" in w for w in roots[0]["warnings"])
    names = {t["processes"][s["processID"]]["serviceName"] for s in t["spans"]}
    assert names == {"client", "proxy", "api", "stock"}
    # the api's app spans keep their OpenTelemetry ids; the network spans hang under them
    app = {s["spanID"]: s for s in t["spans"] if {"key": "flowscope.signal_source", "type": "string",
                                                  "value": "otel"} in s["tags"]}
    assert len(app) == ORDER["spans"]
    for s in t["spans"]:
        tags = {kv["key"]: kv["value"] for kv in s["tags"]}
        if tags["flowscope.observation_point"] == "c" and tags.get("flowscope.capture_nic") == "api/eth0":
            assert s["references"][0]["spanID"] in app
    assert r.headers["content-type"] == "application/json"


def test_trace_by_hex_entry_id_and_missing(api, lab):
    r = api.get(f"/jaeger/api/traces/{lab.entry(ORDER):032x}")
    assert r.status_code == 200 and len(r.json()["data"][0]["spans"]) == 13
    r = api.get("/jaeger/api/traces/" + "0" * 31 + "1")
    assert r.status_code == 404 and r.json()["errors"][0]["code"] == 404
    assert api.get("/jaeger/api/traces/not-hex").status_code == 400


def test_search(api, window):
    rng = {"start": window["start"], "end": window["end"]}
    r = api.get("/jaeger/api/traces", params={"service": "client", "operation": "GET /api/cart", **rng})
    body = r.json()
    jsonschema.validate(body, _list_of(TRACE))
    [t] = body["data"]
    assert len(check_trace(t)) == 30 and t["traceID"] == CART["trace_id"]
    # every request once, newest first, whichever span the search met first
    r = api.get("/jaeger/api/traces", params={"service": "proxy", "limit": 20, **rng})
    ids = [t["traceID"] for t in r.json()["data"]]
    assert sorted(ids) == sorted(q["trace_id"] for q in REQUESTS)
    # Grafana's tags (logfmt → JSON) and durations
    r = api.get("/jaeger/api/traces", params={"service": "client", "tags": json.dumps({"http.status_code": "502"}), **rng})
    assert [t["traceID"] for t in r.json()["data"]] == [FAILED["trace_id"]]
    r = api.get("/jaeger/api/traces", params={"service": "client", "minDuration": "20ms", **rng})
    assert [t["traceID"] for t in r.json()["data"]] == [CART["trace_id"]]
    r = api.get("/jaeger/api/traces", params={"service": "api", "tags": json.dumps({"db.system": "redis"}),
                                              "limit": "2", **rng})
    assert len(r.json()["data"]) == 2
    # older Grafana versions send the search to /api/traces whatever the datasource URL's path
    r = api.get("/api/traces", params={"service": "client", "operation": "GET /api/cart", **rng})
    assert [t["traceID"] for t in r.json()["data"]] == [CART["trace_id"]]


@pytest.mark.parametrize("params, needle", [({"minDuration": "soon"}, "minDuration"), ({"limit": "x"}, "limit"),
                                            ({"tags": "[1]"}, "tags"), ({"lookback": "forever"}, "lookback")])
def test_search_bad_parameters(api, params, needle):
    r = api.get("/jaeger/api/traces", params={"service": "client", **params})
    assert r.status_code == 400 and needle in r.json()["errors"][0]["msg"]


def test_dependencies(api, window):
    r = api.get("/jaeger/api/dependencies", params={"endTs": window["end"] // 1000,
                                                    "lookback": (window["end"] - window["start"]) // 1000})
    body = r.json()
    jsonschema.validate(body, {"type": "object", "required": ["data"], "properties": {"data": {
        "type": "array", "items": {"type": "object", "required": ["parent", "child", "callCount"],
                                   "properties": {"parent": {"type": "string"}, "child": {"type": "string"},
                                                  "callCount": {"type": "integer"}}}}}})
    edges = {(d["parent"], d["child"]): d["callCount"] for d in body["data"]}
    n, calls = len(REQUESTS), len(REQUESTS) - 1 + 4
    assert edges == {("client", "proxy"): n, ("proxy", "api"): n, ("api", "stock"): calls,
                     ("api", "redis"): calls + 1, ("api", "db"): n}


# -- OTLP/HTTP -------------------------------------------------------------------------------------------------------
def test_recorded_exports_accepted(lab):
    """The fixture posted the SDK's exports (protobuf) through POST /v1/traces."""
    for status, ctype, body in lab.otlp_responses:
        assert (status, ctype) == (200, "application/x-protobuf")
        ExportTraceServiceResponse().ParseFromString(body)
    [[n]] = lab.client.query(f"SELECT count() FROM {L7} WHERE signal_source = 4 AND observation_point IN "
                             "('s-app', 'c-app', 'app') AND capture_nic_type = 8").result_rows
    assert n == sum(r["spans"] for r in REQUESTS)


def test_app_spans_are_tagged(lab):
    rows = lab.client.query(
        f"SELECT observation_point, endpoint, app_service, app_instance, "
        "dictGetOrDefault('flow_tag.device_map', 'name', (toUInt64(auto_service_type_0), toUInt64(auto_service_id_0)), '') s0, "
        "dictGetOrDefault('flow_tag.device_map', 'name', (toUInt64(auto_service_type_1), toUInt64(auto_service_id_1)), '') s1, "
        "l7_protocol, x_request_id_0, response_status, response_code "
        f"FROM {L7} WHERE trace_id = {{t:String}} AND signal_source = 4", parameters={"t": FAILED["trace_id"]}).result_rows
    by = {(r[0], r[1]): r for r in rows}
    server = by[("s-app", "/api/order/{id}")]
    assert server[2:6] == ("api", "api-1", "proxy", "api")         # client end: nginx's address; server end: the api
    assert (server[6], server[7], server[8], server[9]) == (20, FAILED["x_request_id"], 3, 502)
    assert by[("c-app", "GET")][4:7] == ("api", "redis", 80)
    assert by[("c-app", "SELECT orders")][4:7] == ("api", "db", 60)
    assert by[("c-app", "/stock/{id}")][4:6] == ("api", "stock") and by[("c-app", "/stock/{id}")][9] == 503
    assert by[("app", "price")][6] == 0


def _recorded():
    return otlp.load_exports(OTLP.read_text().splitlines())


def _as_otlp_json(body: bytes) -> bytes:
    """An export in OTLP/JSON (ids in hex, as the spec says) made from its protobuf."""
    req, _ = otlp.decode(body, "application/x-protobuf", "")
    obj = json_format.MessageToDict(req)

    def hexify(o):
        if isinstance(o, dict):
            for k in ("traceId", "spanId", "parentSpanId"):
                if o.get(k):
                    o[k] = base64.b64decode(o[k]).hex()
            for v in o.values():
                hexify(v)
        elif isinstance(o, list):
            for v in o:
                hexify(v)
    hexify(obj)
    return json.dumps(obj).encode()


def _sink_client():
    writer = MemoryWriter()
    sink = otlp.OtlpSink(writer, Tagger())
    return TestClient(Starlette(routes=otlp.routes(tracing.Deps(engine=None, otlp=sink)))), writer


def _rows(writer: MemoryWriter) -> list[dict]:
    return [dict(zip(b.columns, r, strict=True)) for b in writer.batches.get(L7, []) for r in b.rows]


def test_json_and_gzip_give_the_same_rows():
    web, writer = _sink_client()
    ctype, _, body = _recorded()[0]
    for payload, headers in ((body, {"Content-Type": ctype}),
                             (_as_otlp_json(body), {"Content-Type": "application/json"}),
                             (gzip.compress(body), {"Content-Type": ctype, "Content-Encoding": "gzip"})):
        r = web.post("/v1/traces", content=payload, headers=headers)
        assert r.status_code == 200
        if headers["Content-Type"] == "application/json":
            assert r.json() == {}
    rows = _rows(writer)
    n = len(rows) // 3
    strip = lambda r: {k: v for k, v in r.items() if k != "_id"}  # noqa: E731
    assert n > 0 and [strip(r) for r in rows[:n]] == [strip(r) for r in rows[n:2 * n]] == [strip(r) for r in rows[2 * n:]]
    assert len({r["_id"] for r in rows}) == len(rows)


def test_otlp_refusals():
    web, writer = _sink_client()
    assert web.post("/v1/traces", content=b"x", headers={"Content-Type": "text/plain"}).status_code == 415
    r = web.post("/v1/traces", content=b"\xff\xff\xff", headers={"Content-Type": "application/x-protobuf"})
    assert r.status_code == 400 and r.headers["content-type"] == "application/x-protobuf"
    r = web.post("/v1/traces", content=b"[]", headers={"Content-Type": "application/json"})
    assert r.status_code == 400 and "JSON object" in r.json()["message"]
    r = web.post("/v1/traces", content=b"x", headers={"Content-Type": "application/json", "Content-Encoding": "br"})
    assert r.status_code == 415
    bad = {"resourceSpans": [{"scopeSpans": [{"spans": [{"traceId": "", "spanId": "", "name": "x"},
                                                        {"traceId": "ab" * 16, "spanId": "cd" * 8, "name": "ok",
                                                         "startTimeUnixNano": "1795600000000000000",
                                                         "endTimeUnixNano": "1795600000001000000"}]}]}]}
    r = web.post("/v1/traces", json=bad)
    assert r.status_code == 200 and r.json()["partialSuccess"]["rejectedSpans"] == "1"
    assert [row["endpoint"] for row in _rows(writer)] == ["ok"]
    read_only = TestClient(Starlette(routes=otlp.routes(tracing.Deps(engine=None))))
    r = read_only.post("/v1/traces", json=bad)
    assert r.status_code == 503 and "read-only" in r.json()["message"]


def test_the_sdk_exporter_talks_to_flowscope():
    """A live export by the OpenTelemetry SDK's own OTLP/HTTP exporter (gzip) to a real server."""
    import uvicorn
    from opentelemetry.exporter.otlp.proto.http import Compression
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.trace import SpanKind

    writer = MemoryWriter()
    app = Starlette(routes=otlp.routes(tracing.Deps(engine=None, otlp=otlp.OtlpSink(writer, Tagger(), agent_id=3))))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        for _ in range(200):
            if server.started:
                break
            time.sleep(0.05)
        provider = TracerProvider(resource=Resource.create({"service.name": "checkout", "service.instance.id": "c-7"}))
        provider.add_span_processor(SimpleSpanProcessor(OTLPSpanExporter(
            endpoint=f"http://127.0.0.1:{port}/v1/traces", compression=Compression.Gzip)))
        tracer = provider.get_tracer("test")
        with tracer.start_as_current_span("POST /pay", kind=SpanKind.SERVER, attributes={
                "http.request.method": "POST", "http.route": "/pay", "url.path": "/pay/9",
                "http.response.status_code": 201, "client.address": "10.1.2.3", "client.port": 40123,
                "server.address": "10.1.2.4", "server.port": 8443,
                "http.request.header.x-request-id": ["req-1"]}) as parent, \
                tracer.start_as_current_span("INCR", kind=SpanKind.CLIENT, attributes={
                    "db.system": "redis", "db.operation.name": "INCR", "server.address": "10.1.2.9",
                    "server.port": 6379}):
            pass
        provider.shutdown()
    finally:
        server.should_exit = True
        thread.join(10)
    rows = {r["observation_point"]: r for r in _rows(writer)}
    s, c = rows["s-app"], rows["c-app"]
    tid = format(parent.get_span_context().trace_id, "032x")
    assert (s["trace_id"], c["trace_id"], c["parent_span_id"]) == (tid, tid, s["span_id"])
    assert (s["app_service"], s["app_instance"], s["agent_id"], s["signal_source"], s["span_kind"]) == (
        "checkout", "c-7", 3, 4, 2)
    assert (s["l7_protocol"], s["request_type"], s["endpoint"], s["request_resource"], s["response_code"],
            s["response_status"]) == (20, "POST", "/pay", "/pay/9", 201, 0)
    assert (s["client_port"], s["server_port"], s["x_request_id_0"]) == (40123, 8443, "req-1")
    assert (s["ip4_0"], s["ip4_1"]) == (0x0A010203, 0x0A010204)
    assert (c["l7_protocol"], c["request_type"], c["server_port"], c["ip4_1"], c["response_status"]) == (
        80, "INCR", 6379, 0x0A010209, 5)
    assert s["start_time"] <= c["start_time"] <= c["end_time"] <= s["end_time"]
    assert s["~attributes"]["resource.service.instance.id"] == "c-7"


def test_routes_mount_in_the_datasource_app(lab, window):
    """The three route sets as `flowscope up` mounts them: behind the datasource's bearer auth, in
    its request metrics and OpenAPI document."""
    from datasource.app import create_app
    from datasource.engine import QueryEngine

    engine = QueryEngine(lab.client)
    d = tracing.Deps(engine=engine)
    web = TestClient(create_app(engine, token="s3cret", routes=[*tracing.routes(d), *jaeger.routes(d),
                                                                *otlp.routes(d)]))
    auth = {"Authorization": "Bearer s3cret"}
    assert web.get("/jaeger/api/services").status_code == 401
    r = web.get("/jaeger/api/services", params={"start": window["start"], "end": window["end"]}, headers=auth)
    assert r.status_code == 200 and "api" in r.json()["data"]
    r = web.post("/v1/stats/querier/L7FlowTracing", json={"trace_id": ORDER["trace_id"]}, headers=auth)
    assert len(r.json()["DATA"]["tracing"]) == 13
    assert web.post("/v1/traces", content=b"", headers={**auth, "Content-Type": "application/x-protobuf"}).status_code == 503
    paths = web.get("/openapi.json", headers=auth).json()["paths"]
    assert {"/jaeger/api/traces", "/v1/stats/querier/L7FlowTracing", "/v1/traces"} <= set(paths)


def test_tracing_bounds_come_from_the_config_file(lab, window, tmp_path):
    """``datasource.tracing`` in flowscope's YAML sets the bounds `flowscope serve` / `up` assemble
    with (the routes are built as the CLI builds them): five spans at most, reported as truncated."""
    from flowscope import config
    from flowscope.cli import _extra_routes

    path = tmp_path / "flowscope.yaml"
    path.write_text("datasource:\n  alerts_path: %s\n  tracing: {max_spans: 5, window_s: 30}\n" % (tmp_path / "a.jsonl"))
    cfg = config.load(path)
    web = TestClient(Starlette(routes=_extra_routes(cfg, lab.engine)))
    body = {"_id": str(lab.entry(CART)), "DATABASE": "flow_log", "TABLE": "l7_flow_log",
            "TIME_START": window["t0"] - 60, "TIME_END": window["t1"] + 60}
    out = web.post("/v1/stats/querier/L7FlowTracing", json=body).json()
    assert len(out["DATA"]["tracing"]) == 5
    assert out["DATA"]["completeness"]["truncated"] is True, out["DATA"]["completeness"]
    path.write_text("datasource:\n  tracing: {max_spans: 0}\n")
    with pytest.raises(config.ConfigError, match=r"datasource\.tracing\.max_spans: a positive integer"):
        config.load(path)
