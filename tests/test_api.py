"""The datasource's HTTP API as Grafana and DeepFlow's clients use it, over a store that
``flowscope collect`` filled from http1.pcap and k8s_pods.pcapng with the lab inventory: the
envelope byte for byte, ``?format=records`` (Grafana Infinity), the Node Graph topology,
bearer-token auth, Prometheus metrics, the OpenAPI description, 50 concurrent clients on a real
server, and ``flowscope serve``."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import warnings
from pathlib import Path

import httpx
import pytest
import uvicorn
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client.parser import text_string_to_metric_families
from starlette.responses import JSONResponse
from starlette.routing import Route

from datasource import auth, topology
from datasource.app import create_app
from datasource.engine import QueryEngine, envelope
from flowscope.storage import connect
from tests.helpers import DATA

with warnings.catch_warnings():     # starlette nudges towards httpx2, which this environment lacks
    warnings.simplefilter("ignore", UserWarning)
    from starlette.testclient import TestClient

FLOWSCOPE = Path(sys.executable).with_name("flowscope")
ENV = {k: v for k, v in os.environ.items() if k not in ("FLOWSCOPE_CLICKHOUSE", "FLOWSCOPE_CONFIG", "FLOWSCOPE_TOKEN")}
# k8s_pods.pcapng: web-a (10.16.0.11) calls api:8080, redis-0:6379 and coredns:53; api calls redis-0.
# Its packets fall in the minute starting at K8S_MINUTE; http1.pcap's are hours earlier.
K8S_MINUTE = 1795657080
K8S_RANGE = {"from": str(K8S_MINUTE), "to": str(K8S_MINUTE + 60)}
PODS = {"web-a": "shop", "api": "payments", "redis-0": "shop", "coredns": "kube-system"}
COLLECTOR_TEXT = b"flowscope_packets_total 476.0\n"


@pytest.fixture(scope="module")
def store_dsn(tmp_path_factory) -> str:
    root = tmp_path_factory.mktemp("api")
    dsn = f"chdb://{root / 'chdb'}"
    p = subprocess.run([str(FLOWSCOPE), "collect", "--pcap", str(DATA / "http1.pcap"), str(DATA / "k8s_pods.pcapng"),
                        "--inventory", str(DATA / "inventory" / "lab.yaml"), "--metadata", f"sqlite:///{root / 'm.db'}",
                        "--clickhouse", dsn], cwd=root, env=ENV, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr
    return dsn


@pytest.fixture(scope="module")
def engine(store_dsn):
    client = connect(store_dsn)       # chDB: one store per process, so it is closed after the module
    yield QueryEngine(client)
    client.close()


@pytest.fixture(scope="module")
def api(engine):
    return TestClient(create_app(engine, metrics=lambda: COLLECTOR_TEXT))


def raw(api, sql: str, db: str = "flow_log", **params) -> httpx.Response:
    """Plain ClickHouse SQL (the guarded raw path) — independent of the DeepFlow dialect."""
    return api.post("/v1/query/", params={"simple_sql": "true", **params}, data={"db": db, "sql": sql})


def rows(api, sql: str, db: str = "flow_log") -> list[list]:
    r = raw(api, sql, db)
    assert r.status_code == 200, r.text
    return r.json()["result"]["values"] or []


# -- /v1/query/: the envelope ---------------------------------------------------------------------------

def test_success_envelope_bytes(api):
    """Exactly what clients parse: key order, compact separators, UTC times with µs, schemas."""
    r = raw(api, "SELECT dictGet('flow_tag.pod_map', 'name', toUInt64(pod_id_0)) AS pod, min(start_time) AS first "
                 "FROM l4_flow_log WHERE pod_id_0 != 0 GROUP BY pod ORDER BY pod")
    assert (r.status_code, r.headers["content-type"]) == (200, "application/json")
    assert r.content == (
        b'{"OPT_STATUS":"SUCCESS","DESCRIPTION":"","result":{"columns":["pod","first"],'
        b'"values":[["api","2026-11-26T01:38:58.014027Z"],["web-a","2026-11-26T01:38:57.321917Z"]],'
        b'"schemas":[{"unit":"","type":0,"value_type":"String","pre_as":"","label_type":""},'
        b'{"unit":"","type":0,"value_type":"DateTime64(6)","pre_as":"","label_type":""}]},"debug":null}')


def test_success_envelope_numbers(api):
    r = raw(api, "SELECT server_port, count() AS flows, sum(byte_tx + byte_rx) AS bytes FROM l4_flow_log "
                 "WHERE pod_id_1 != 0 GROUP BY server_port ORDER BY server_port")
    assert r.content == (
        b'{"OPT_STATUS":"SUCCESS","DESCRIPTION":"","result":{"columns":["server_port","flows","bytes"],'
        b'"values":[[0,1,86],[53,3,690],[6379,2,1913],[8080,3,4680]],'
        b'"schemas":[{"unit":"","type":0,"value_type":"UInt16","pre_as":"","label_type":""},'
        b'{"unit":"","type":0,"value_type":"UInt64","pre_as":"","label_type":""},'
        b'{"unit":"","type":0,"value_type":"UInt64","pre_as":"","label_type":""}]},"debug":null}')


@pytest.mark.parametrize(("form", "status", "body"), [
    ({"db": "flow_log", "sql": "SELECT * FROM system.users"}, 400,
     b'{"OPT_STATUS":"INVALID_POST_DATA","DESCRIPTION":"database \'system\' is not queryable (known: flow_log, '
     b'flow_metrics, flow_tag)","result":null,"debug":null}'),
    ({"db": "flow_log", "sql": "SELEC 1"}, 500,
     b'{"OPT_STATUS":"FAIL","DESCRIPTION":"syntax error at line 1, column 7 near \'1\': Invalid expression / '
     b'Unexpected token","result":null,"debug":null}'),
    ({"db": "flow_log"}, 400, b'{"OPT_STATUS":"INVALID_POST_DATA","DESCRIPTION":"sql is required","result":null,'
                              b'"debug":null}'),
    ({"db": "flow_log", "sql": "SELECT '" + "x" * 70_000 + "'"}, 400,
     b'{"OPT_STATUS":"INVALID_POST_DATA","DESCRIPTION":"sql is 70009 bytes, the limit is 65536","result":null,'
     b'"debug":null}'),
], ids=["refused", "syntax", "no-sql", "too-big"])
def test_error_envelope_bytes(api, form, status, body):
    r = api.post("/v1/query/?simple_sql=true", data=form)
    assert (r.status_code, r.content, r.headers["content-type"]) == (status, body, "application/json")


def test_clickhouse_error_carries_the_sql(api):
    r = raw(api, "SELECT nosuch FROM l4_flow_log")
    body = r.json()
    assert (r.status_code, body["OPT_STATUS"], body["result"]) == (500, "FAIL", None)
    assert "UNKNOWN_IDENTIFIER" in body["DESCRIPTION"]
    [q] = body["debug"]["query_sqls"]
    assert q["Sql"] == 'SELECT nosuch FROM flow_log."l4_flow_log"' and q["Error"] == body["DESCRIPTION"]


def test_debug_shows_the_clickhouse_sql(api):
    body = raw(api, "SELECT count() AS n FROM network_map", "flow_metrics", debug="true").json()
    [q] = body["debug"]["query_sqls"]
    assert q["Sql"] == 'SELECT count() AS n FROM flow_metrics."network_map.1m"' and q["Error"] == ""


def test_form_multipart_and_json_bodies_answer_the_same(api):
    sql = "SELECT server_port, count() AS n FROM l4_flow_log GROUP BY server_port ORDER BY server_port"
    url = "/v1/query/?simple_sql=true"
    form = api.post(url, data={"db": "flow_log", "sql": sql})
    multipart = api.post(url, data={"db": "flow_log", "sql": sql}, files={"unused": (None, "")})
    as_json = api.post(url, json={"db": "flow_log", "sql": sql})
    assert form.status_code == multipart.status_code == as_json.status_code == 200
    assert form.content == multipart.content == as_json.content


@pytest.mark.parametrize("body", [
    b"db=flow_log&sql=SELECT+%60a%60%2C+%27x%2By%27+FROM+t",       # + is a space, %2B a plus
    b"sql=%E4%B8%AD%E6%96%87&db=",                                 # escaped UTF-8, a blank value
    b"sql=%C3%28bad&sql=second&&db",                               # invalid UTF-8, a repeat, no '='
    b"sql=100%25+%2541&x=%zz%2",                                   # %25 once only; broken escapes kept
    "sql=caf\u00e9 raw".encode(),                                   # raw non-ASCII bytes, as latin-1
])
def test_urlencoded_forms_read_as_starlette_reads_them(body):
    """The query endpoint splits url-encoded forms itself (datasource.app._urlencoded); every field
    must come out as Starlette's own form parser gives it."""
    from starlette.requests import Request

    from datasource.app import _urlencoded

    async def receive():
        return {"type": "http.request", "body": body, "more_body": False}

    async def starlette_fields():
        scope = {"type": "http", "method": "POST", "headers": [(b"content-type", b"application/x-www-form-urlencoded")]}
        fields: dict[str, list[str]] = {}
        for k, v in (await Request(scope, receive).form()).multi_items():
            fields.setdefault(k, []).append(v)
        return fields

    assert _urlencoded(body) == asyncio.run(starlette_fields())


@settings(max_examples=600, deadline=None)
@given(st.lists(st.sampled_from(["a", "sql", "=", "&", "+", "%", "%3D", "%25", "%2B", "%C3%A9", "%E4%B8", "%ff",
                                 "%0A", "%zz", "%2", "3D", "é", " ", "\r\n", "`", ";"]), max_size=30))
def test_urlencoded_fast_path_splits_like_urllib(parts):
    """The ASCII fast path (quoted-printable decoding) and urllib's parse_qsl read every body alike:
    escapes of every kind, '=' inside values, '+', broken escapes, raw non-ASCII, empty pairs."""
    from urllib.parse import parse_qsl

    from datasource.app import _urlencoded

    body = "".join(parts).encode()
    expected: dict[str, list[str]] = {}
    for k, v in parse_qsl(body.decode("latin-1"), keep_blank_values=True, max_num_fields=256):
        expected.setdefault(k, []).append(v)
    assert _urlencoded(body) == expected


def test_too_many_form_fields_are_400(api):
    r = api.post("/v1/query/", content=b"&".join(b"f%d=1" % i for i in range(300)),
                 headers={"content-type": "application/x-www-form-urlencoded"})
    assert r.status_code == 400 and r.json()["OPT_STATUS"] == "INVALID_POST_DATA"
    assert "malformed form body: Max number of fields exceeded" in r.json()["DESCRIPTION"]


@pytest.mark.parametrize(("request_kw", "message"), [
    ({"json": {"db": "flow_log", "sql": ["SELECT 1"]}}, "sql must be a string, got list"),
    ({"files": {"sql": ("q.sql", b"SELECT 1")}}, "malformed form body: Too many files"),
    ({"params": {"format": "csv"}, "data": {"sql": "SELECT 1"}}, "format: 'records' or leave it out"),
])
def test_malformed_requests_are_400(api, request_kw, message):
    r = api.post("/v1/query/", **request_kw)
    assert r.status_code == 400 and r.json()["OPT_STATUS"] == "INVALID_POST_DATA"
    assert message in r.json()["DESCRIPTION"]


def test_unexpected_failure_reading_a_query_is_a_500_envelope(api, monkeypatch):
    """A bug before the query reaches a worker (here: reading the form) answers with DeepFlow's
    envelope and counts as an internal error, like the worker's own failures."""
    def broken(*args):
        raise RuntimeError("form reader broke")

    monkeypatch.setattr("datasource.app._query_fields", broken)
    r = api.post("/v1/query/", data={"db": "flow_log", "sql": "SELECT 1"})
    assert r.status_code == 500 and r.headers["content-type"] == "application/json"
    assert r.json() == {"OPT_STATUS": "FAIL", "DESCRIPTION": "internal error: RuntimeError: form reader broke",
                        "result": None, "debug": None}
    assert 'flowscope_datasource_errors_total{kind="internal"} 1.0' in api.get("/metrics").text


# -- ?format=records (Grafana Infinity backend parsers) ------------------------------------------------

def test_records_format(api):
    sql = "SELECT server_port AS port, count() AS flows FROM l4_flow_log WHERE pod_id_1 != 0 GROUP BY port ORDER BY port"
    r = raw(api, sql, format="records")
    assert r.status_code == 200
    assert r.json() == [{"port": 0, "flows": 1}, {"port": 53, "flows": 3}, {"port": 6379, "flows": 2},
                        {"port": 8080, "flows": 3}]
    assert raw(api, "SELECT flow_id FROM l4_flow_log WHERE server_port = 1", format="records").json() == []


def test_records_errors_keep_the_envelope(api):
    r = raw(api, "SELECT * FROM system.users", format="records")
    assert r.status_code == 400 and r.json()["OPT_STATUS"] == "INVALID_POST_DATA"
    r = raw(api, "SELECT nosuch FROM l4_flow_log", format="records")
    assert r.status_code == 500 and r.json()["OPT_STATUS"] == "FAIL" and r.json()["debug"]["query_sqls"]


@pytest.mark.parametrize("time_filter", [
    f"time>={K8S_MINUTE} AND time<={K8S_MINUTE + 60}",          # Infinity: ${__timeFrom:date:seconds}
    f"time>='{K8S_MINUTE}' AND time<='{K8S_MINUTE + 60}'",      # DeepFlow's SDK: quoted placeholders
], ids=["epoch", "quoted-epoch"])
def test_records_with_grafana_time_filters(api, time_filter):
    """The default (DeepFlow SQL) path with both time-filter spellings Grafana sends; the same SQL on
    the raw path is the reference."""
    sql = f"SELECT server_port FROM l4_flow_log WHERE {time_filter} GROUP BY server_port ORDER BY server_port"
    r = api.post("/v1/query/?format=records", data={"db": "flow_log", "sql": sql})
    assert r.status_code == 200, r.text
    assert r.json() == raw(api, sql, format="records").json() == [
        {"server_port": p} for p in (0, 53, 6379, 8080)]


class RecordingEngine:
    """Stands in for the QueryEngine where only the plumbing from HTTP to the engine is under test."""

    client = None

    def __init__(self) -> None:
        self.calls: list[tuple] = []

    def query(self, sql, db, data_precision, debug=False, language="en"):
        self.calls.append(("dialect", sql, db, data_precision, debug, language))
        return 200, envelope({"columns": ["a"], "values": [[1]], "schemas": []})

    def query_raw(self, sql, db, data_precision, debug=False):
        self.calls.append(("raw", sql, db, data_precision, debug))
        return 200, envelope({"columns": ["a"], "values": [[1]], "schemas": []})


@pytest.mark.parametrize(("header", "language"), [(None, "en"), ("zh", "zh"), ("zh-CN", "zh"), ("ch", "zh"),
                                                  ("en", "en"), ("fr", "en")])
def test_x_language_reaches_the_dialect(header, language):
    eng = RecordingEngine()
    api = TestClient(create_app(eng))
    headers = {"X-Language": header} if header else {}
    assert api.post("/v1/query/?debug=true", data={"db": "flow_metrics", "sql": "SELECT 1", "data_precision": "1s"},
                    headers=headers).status_code == 200
    assert api.post("/v1/query/?simple_sql=true", data={"sql": "SELECT 2"}).status_code == 200
    assert eng.calls == [("dialect", "SELECT 1", "flow_metrics", "1s", True, language),
                         ("raw", "SELECT 2", None, None, False)]


# -- /v1/grafana/topology --------------------------------------------------------------------------------

def _topology(api, **params) -> dict:
    r = api.get("/v1/grafana/topology", params={**K8S_RANGE, **params})
    assert r.status_code == 200, r.text
    return r.json()


def _pod_ids(api) -> dict[int, str]:
    return dict(rows(api, "SELECT id, name FROM pod", "flow_tag"))


def test_topology_network_map_pods(api):
    """Nodes are the four pods (names and namespaces from flow_tag), edges carry bytes/s and the
    average RTT; the reference is l4_flow_log of the same store, summed per pod pair."""
    got = _topology(api, table="network_map", group="pod")
    names = _pod_ids(api)
    truth = rows(api, "SELECT pod_id_0, pod_id_1, sum(byte_tx + byte_rx), sumIf(rtt, rtt > 0), countIf(rtt > 0) "
                      "FROM l4_flow_log WHERE pod_id_0 != 0 AND pod_id_1 != 0 GROUP BY pod_id_0, pod_id_1")
    assert {(n["title"], n["subTitle"]) for n in got["nodes"]} == set(PODS.items())
    assert {(names[a], names[b]) for a, b, *_ in truth} == {
        ("web-a", "api"), ("web-a", "redis-0"), ("web-a", "coredns"), ("api", "redis-0"), ("api", "web-a")}
    edges = {e["id"]: e for e in got["edges"]}
    assert len(edges) == len(truth)
    for a, b, volume, rtt_sum, rtt_n in truth:
        e = edges[f"pod:{a}->pod:{b}"]
        assert (e["source"], e["target"]) == (f"pod:{a}", f"pod:{b}")
        assert e["mainStat"] == round(volume / 60, 3) and e["detail__bytes"] == volume
        assert e["secondaryStat"] == (round(rtt_sum / rtt_n / 1000, 3) if rtt_n else 0.0)
        assert e["detail__errors"] == 0 and e["detail__observation_point"] == "rest"
    assert [e["detail__bytes"] for e in got["edges"]] == sorted((t[2] for t in truth), reverse=True)
    for n in got["nodes"]:
        touching = sum(t[2] for t in truth if f"pod:{t[0]}" == n["id"] or f"pod:{t[1]}" == n["id"])
        assert n["mainStat"] == round(touching / 60, 3)
        assert (n["arc__errors"], n["arc__ok"], n["color"]) == (0.0, 1.0, "green")


def test_topology_application_map_pods(api):
    """application_map: requests/s, average response time and the error share, against l7_flow_log."""
    got = _topology(api, table="application_map", group="pod")
    truth = rows(api, "SELECT pod_id_0, pod_id_1, count(), countIf(response_status IN (2, 3, 4)), "
                      "sum(response_duration) FROM l7_flow_log WHERE pod_id_0 != 0 AND pod_id_1 != 0 "
                      "GROUP BY pod_id_0, pod_id_1")
    edges = {e["id"]: e for e in got["edges"]}
    assert set(edges) == {f"pod:{a}->pod:{b}" for a, b, *_ in truth}
    for a, b, requests, errors, duration in truth:
        e = edges[f"pod:{a}->pod:{b}"]
        assert e["mainStat"] == round(requests / 60, 3) and e["detail__requests"] == requests
        assert e["secondaryStat"] == round(duration / requests / 1000, 3)
        assert (e["detail__errors"], e["detail__error_ratio"]) == (errors, round(errors / requests, 4))
    nodes = {n["title"]: n for n in got["nodes"]}
    assert set(nodes) == set(PODS)
    # the one failed request (HTTP 4xx, web-a → api) shows on both ends' arcs
    failed = {names for names, n in nodes.items() if n["arc__errors"] > 0}
    assert failed == {"web-a", "api"}
    for n in nodes.values():
        assert n["arc__errors"] + n["arc__ok"] == pytest.approx(1.0)
        assert n["color"] == ("red" if n["arc__errors"] >= 0.05 else "green")
    names = _pod_ids(api)
    touching_api = [t for t in truth if "api" in (names[t[0]], names[t[1]])]
    assert nodes["api"]["arc__errors"] == round(sum(t[3] for t in touching_api) / sum(t[2] for t in touching_api), 4)


def test_topology_secondary_errors_and_dns_only(api):
    got = _topology(api, table="application_map", group="pod", secondary="errors", l7_protocol="DNS")
    [edge] = got["edges"]
    assert (edge["source"], edge["target"]) == ("pod:1", "pod:5") and edge["secondaryStat"] == 0.0
    assert {n["title"] for n in got["nodes"]} == {"web-a", "coredns"}


@pytest.mark.parametrize(("params", "edges"), [
    ({"pod_ns": "payments"}, {("web-a", "api"), ("api", "redis-0"), ("api", "web-a")}),
    ({"pod_ns_1": "payments"}, {("web-a", "api")}),
    ({"pod_ns_0": "payments,kube-system"}, {("api", "redis-0"), ("api", "web-a")}),
    ({"pod": ["coredns", "redis-0"]}, {("web-a", "redis-0"), ("api", "redis-0"), ("web-a", "coredns")}),
    ({"ip_1": "10.16.0.13"}, {("web-a", "redis-0"), ("api", "redis-0")}),
    ({"protocol": "udp"}, {("web-a", "coredns")}),
    ({"server_port": "8080", "observation_point": "rest"}, {("web-a", "api")}),
    ({"observation_point": "c"}, set()),
], ids=["ns-either-end", "ns-server", "ns-client-list", "pod-repeated", "ip-server", "udp", "port", "op-c"])
def test_topology_filters(api, params, edges):
    got = _topology(api, group="pod", **params)
    titles = {n["id"]: n["title"] for n in got["nodes"]}
    assert {(titles[e["source"]], titles[e["target"]]) for e in got["edges"]} == edges


def test_topology_services_and_ips(api):
    services = _topology(api, group="pod_service")
    assert {(n["title"], n["subTitle"]) for n in services["nodes"]} == {
        ("web", "shop"), ("api", "payments"), ("redis", "shop"), ("kube-dns", "kube-system")}
    ips = _topology(api, group="ip", protocol="tcp")
    assert {e["id"] for e in ips["edges"]} == {
        "ip:10.16.0.11->ip:10.16.0.20", "ip:fd00:10:16::11->ip:fd00:10:16::20", "ip:10.16.0.11->ip:10.16.0.13",
        "ip:10.16.0.20->ip:10.16.0.13"}


def test_topology_post_form_time_range_and_debug(api):
    get = api.get("/v1/grafana/topology", params={**K8S_RANGE, "group": "pod_group"})
    post = api.post("/v1/grafana/topology", data={**K8S_RANGE, "group": "pod_group"})
    assert get.status_code == post.status_code == 200 and get.json() == post.json()
    assert {n["title"] for n in get.json()["nodes"]} == {"web", "api", "redis", "coredns"}
    ms = {"from": str(K8S_MINUTE * 1000), "to": str((K8S_MINUTE + 60) * 1000)}       # Grafana's ${__from}
    assert _topology(api, group="pod_group", **ms) == get.json()
    assert _topology(api, **{"from": "0", "to": "60"}) == {"nodes": [], "edges": []}
    dbg = _topology(api, debug="true")["debug"]["query_sqls"][0]
    assert dbg["Sql"].startswith("SELECT ") and "flow_metrics.`network_map.1m`" in dbg["Sql"]
    assert dbg["parameters"] == {"t0": K8S_MINUTE, "t1": K8S_MINUTE + 60, "limit": topology.DEFAULT_LIMIT}


def test_topology_limit_keeps_the_biggest_edges(api):
    got = _topology(api, limit="2")
    assert [e["detail__bytes"] for e in got["edges"]] == [4680, 1047]


# -- auth --------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def locked(engine):
    return TestClient(create_app(engine, token="s3cret-t0ken"))


def test_auth_refuses_without_the_token(locked):
    r = locked.post("/v1/query/?simple_sql=true", data={"db": "flow_log", "sql": "SELECT 1"})
    assert r.status_code == 401 and r.headers["www-authenticate"] == 'Bearer realm="flowscope"'
    assert r.content == (b'{"OPT_STATUS":"UNAUTHORIZED","DESCRIPTION":"missing Authorization header: send '
                         b'\'Authorization: Bearer <token>\'","result":null,"debug":null}')
    for path in ("/v1/health/", "/metrics", "/openapi.json", "/v1/grafana/topology"):
        assert locked.get(path).status_code == 401, path
    assert locked.get("/healthz").json() == {"status": "ok"}


@pytest.mark.parametrize(("header", "status", "problem"), [
    ("Bearer s3cret-t0ken", 200, None),
    ("bearer s3cret-t0ken", 200, None),
    ("Bearer s3cret-t0ke", 401, "invalid bearer token"),
    ("Bearer s3cret-t0ken2", 401, "invalid bearer token"),
    ("Basic czNjcmV0LXQwa2Vu", 401, "Authorization header is not 'Bearer <token>'"),
    ("Bearer ", 401, "Authorization header is not 'Bearer <token>'"),
])
def test_auth_header(locked, header, status, problem):
    r = locked.post("/v1/query/?simple_sql=true", data={"db": "flow_log", "sql": "SELECT 1 AS one"},
                    headers={"Authorization": header})
    assert r.status_code == status
    if problem:
        assert r.json() == {"OPT_STATUS": "UNAUTHORIZED", "DESCRIPTION": problem, "result": None, "debug": None}
    else:
        assert r.json()["result"]["values"] == [[1]]


def test_auth_compares_in_constant_time(monkeypatch):
    seen = []
    real = auth.hmac.compare_digest
    monkeypatch.setattr(auth.hmac, "compare_digest", lambda a, b: seen.append((a, b)) or real(a, b))
    assert auth.check("Bearer guess", "token") == "invalid bearer token"
    assert seen == [(b"guess", b"token")]


# -- /metrics, /healthz, /openapi.json -------------------------------------------------------------------

def _samples(text: str) -> dict[tuple, float]:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for fam in text_string_to_metric_families(text) for s in fam.samples}


def test_metrics_count_requests_errors_and_clickhouse_time(engine):
    api = TestClient(create_app(engine, metrics=lambda: COLLECTOR_TEXT, token="t"))
    bearer = {"Authorization": "Bearer t"}
    for sql in ("SELECT 1", "SELECT * FROM system.users", "SELEC 1", "SELECT nosuch FROM l4_flow_log"):
        api.post("/v1/query/?simple_sql=true", data={"db": "flow_log", "sql": sql}, headers=bearer)
    api.get("/v1/grafana/topology", params=K8S_RANGE, headers=bearer)
    api.get("/v1/grafana/topology", params={"group": "nosuch"}, headers=bearer)
    api.post("/v1/query/", data={"sql": "SELECT 1"})                                  # no token
    text = api.get("/metrics", headers=bearer).text
    assert text.endswith(COLLECTOR_TEXT.decode())                                    # the collector's, merged
    s = _samples(text)
    q = "/v1/query/"
    assert s[("flowscope_datasource_requests_total", (("endpoint", q), ("status", "200")))] == 1
    assert s[("flowscope_datasource_requests_total", (("endpoint", q), ("status", "400")))] == 1
    assert s[("flowscope_datasource_requests_total", (("endpoint", q), ("status", "500")))] == 2
    assert s[("flowscope_datasource_requests_total", (("endpoint", q), ("status", "401")))] == 1
    topo = "/v1/grafana/topology"
    assert s[("flowscope_datasource_requests_total", (("endpoint", topo), ("status", "200")))] == 1
    assert s[("flowscope_datasource_requests_total", (("endpoint", topo), ("status", "400")))] == 1
    kinds = {k: s[("flowscope_datasource_errors_total", (("kind", k),))] for k in
             ("syntax", "refused", "clickhouse", "auth", "internal")}
    assert kinds == {"syntax": 1, "refused": 2, "clickhouse": 1, "auth": 1, "internal": 0}
    assert s[("flowscope_datasource_request_seconds_count", (("endpoint", q),))] == 5
    assert s[("flowscope_datasource_clickhouse_seconds_count", ())] == 3       # SELECT 1, nosuch, topology


def test_mounted_routes_share_auth_metrics_and_openapi(engine):
    """Routes mounted beside the API (the alert webhook, say) sit behind the same token, get their
    own metrics label and are described in /openapi.json from their docstring."""
    async def ping(request):
        """Answer pong.

        A route mounted with create_app(routes=…)."""
        return JSONResponse({"pong": True})

    api = TestClient(create_app(engine, token="t", routes=[Route("/v1/ping", ping, methods=["POST"])]))
    assert api.post("/v1/ping").status_code == 401
    assert api.post("/v1/ping", headers={"Authorization": "Bearer t"}).json() == {"pong": True}
    doc = api.get("/openapi.json", headers={"Authorization": "Bearer t"}).json()
    assert doc["paths"]["/v1/ping"]["post"]["summary"] == "Answer pong."
    s = _samples(api.get("/metrics", headers={"Authorization": "Bearer t"}).text)
    assert s[("flowscope_datasource_requests_total", (("endpoint", "/v1/ping"), ("status", "200")))] == 1


def test_unknown_paths_and_methods_answer_with_the_envelope(api):
    r = api.get("/v1/query/")
    assert (r.status_code, r.json()) == (405, {"OPT_STATUS": "INVALID_POST_DATA", "DESCRIPTION": "method GET is "
                                               "not allowed on /v1/query/ (allowed: POST)", "result": None,
                                               "debug": None})
    r = api.post("/v1/nosuch")
    assert r.status_code == 404 and r.json()["OPT_STATUS"] == "RESOURCE_NOT_FOUND"
    assert r.json()["DESCRIPTION"] == "no such endpoint: /v1/nosuch (see /openapi.json)"


def test_health_endpoints(engine):
    api = TestClient(create_app(engine, health=lambda: {"flows_active": 3}))
    assert api.get("/healthz").json() == api.get("/v1/health/").json() == {"status": "ok", "flows_active": 3}


def test_openapi_describes_exactly_the_routes(api):
    doc = api.get("/openapi.json").json()
    assert doc["openapi"] == "3.1.0"
    described = {(path, method.upper()) for path, ops in doc["paths"].items() for method in ops}
    web = api.app
    while not hasattr(web, "routes"):            # the Starlette app inside the metrics/auth/query-lane wrappers
        web = web.app
    served = {(r.path, m) for r in web.routes for m in r.methods if m != "HEAD"}
    assert described == served
    for path, method in described:               # every described operation answers (not 404/405)
        query = path.startswith("/v1/query")
        r = api.request(method, path, params={"simple_sql": "true"} if query else None,
                        data={"sql": "SELECT 1"} if query else None)
        assert r.status_code == 200, (path, method, r.text)
    topo = {p["name"] for p in doc["paths"]["/v1/grafana/topology"]["get"]["parameters"]}
    accepted = set(topology.CONTROL) | set(topology.OTHER_FILTERS) | {
        f"{n}{s}" for n in (*topology.NAME_FILTERS, "ip") for s in ("", "_0", "_1")}
    assert topo == accepted
    query = {p["name"] for p in doc["paths"]["/v1/query/"]["post"]["parameters"]}
    assert query == {"debug", "format", "simple_sql", "X-Language"}


# -- 50 concurrent clients against a real server ---------------------------------------------------------

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_fifty_concurrent_clients(engine):
    """A real uvicorn server in this process; 50 clients each send a query whose answer is their
    own number, a records query and a topology request, all at once."""
    app = create_app(engine)
    port = _free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert time.monotonic() < deadline and thread.is_alive(), "uvicorn did not start"
        time.sleep(0.05)
    url = f"http://127.0.0.1:{port}"
    reference = TestClient(app)
    expected_topology = reference.get("/v1/grafana/topology", params=K8S_RANGE).json()
    [[flows, packets]] = rows(reference, "SELECT (SELECT count() FROM flow_log.l4_flow_log), "
                                         "(SELECT sum(packet_tx) FROM flow_metrics.`network_map.1s`)")

    async def one_client(i: int) -> None:
        async with httpx.AsyncClient(base_url=url, timeout=60) as c:
            r = await c.post("/v1/query/?simple_sql=true", data={
                "db": "flow_log", "sql": f"SELECT {i} AS client, count() AS flows FROM l4_flow_log"})
            assert r.status_code == 200 and r.json()["result"]["values"] == [[i, flows]], r.text
            r = await c.post("/v1/query/?simple_sql=true&format=records", data={
                "db": "flow_metrics", "data_precision": "1s", "sql": f"SELECT {i} AS client, sum(packet_tx) AS p "
                                                                     "FROM network_map"})
            assert r.status_code == 200 and r.json() == [{"client": i, "p": packets}], r.text
            r = await c.get("/v1/grafana/topology", params=K8S_RANGE)
            assert r.status_code == 200 and r.json() == expected_topology

    async def everyone() -> None:
        await asyncio.gather(*(one_client(i) for i in range(50)))

    try:
        asyncio.run(everyone())
        s = _samples(httpx.get(f"{url}/metrics").text)       # +1 each: the reference requests above
        assert s[("flowscope_datasource_requests_total", (("endpoint", "/v1/query/"), ("status", "200")))] == 101
        assert s[("flowscope_datasource_requests_total", (("endpoint", "/v1/grafana/topology"), ("status", "200")))] == 51
        assert all(v == 0 for (name, _), v in s.items() if name == "flowscope_datasource_errors_total")
    finally:
        server.should_exit = True
        thread.join(10)


# -- flowscope serve ----------------------------------------------------------------------------------------

def test_serve_answers_with_a_token_and_stops_on_sigterm(tmp_path):
    """`flowscope serve` alone on a store `collect` filled: the token comes from $FLOWSCOPE_TOKEN,
    `flowscope query --datasource --raw` sends it too; SIGTERM ends it with status 0."""
    dsn = f"chdb://{tmp_path / 'chdb'}"
    collect = subprocess.run([str(FLOWSCOPE), "collect", "--pcap", str(DATA / "tcp_rst.pcap"), "--clickhouse", dsn],
                             cwd=tmp_path, env=ENV, capture_output=True, text=True, timeout=120)
    assert collect.returncode == 0, collect.stderr
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    env = {**ENV, "FLOWSCOPE_TOKEN": "tok"}
    err = tmp_path / "serve.stderr"
    with err.open("w") as err_f:
        proc = subprocess.Popen([str(FLOWSCOPE), "serve", "--listen", f"127.0.0.1:{port}", "--clickhouse", dsn],
                                cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=err_f)
    try:
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None, err.read_text()
            try:
                if httpx.get(f"{url}/healthz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, err.read_text()
            time.sleep(0.2)
        assert "(bearer token required)" in err.read_text()
        form = {"db": "flow_log", "sql": "SELECT count() AS flows FROM l4_flow_log"}
        assert httpx.post(f"{url}/v1/query/?simple_sql=true", data=form).status_code == 401
        r = httpx.post(f"{url}/v1/query/?simple_sql=true", data=form, headers={"Authorization": "Bearer tok"})
        assert r.json()["result"]["values"] == [[5]]
        q = subprocess.run([str(FLOWSCOPE), "query", "--datasource", url, "--raw", "--db", "flow_log",
                            "SELECT count() FROM l4_flow_log"], env=env, capture_output=True, text=True, timeout=60)
        assert q.returncode == 0 and json.loads(q.stdout)["result"]["values"] == [[5]], q.stdout + q.stderr
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_a_full_worker_pool_answers_503_with_the_envelope(monkeypatch):
    """Past datasource.worker's bound on waiting queries the API refuses at once (503, Retry-After,
    DeepFlow's envelope, counted as a 'busy' error) rather than queueing without limit; it serves
    again as soon as the pool drains."""
    from datasource import worker

    release = threading.Event()

    class SlowEngine:
        client = None

        def query(self, sql, db, data_precision=None, *, debug=False, language="en"):
            release.wait(10)
            return 200, envelope({"columns": ["n"], "values": [[1]], "schemas": []})

    monkeypatch.setattr(worker, "WORKERS", worker.Workers(threads=1, max_pending=1))
    monkeypatch.setattr("datasource.app.WORKERS", worker.WORKERS)
    app = create_app(SlowEngine())

    async def main():
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app), base_url="http://x") as http:
            form = {"db": "flow_log", "sql": "SELECT Sum(byte) AS n FROM network"}
            first = asyncio.ensure_future(http.post("/v1/query/", data=form))
            await asyncio.sleep(0.1)
            refused = await http.post("/v1/query/", data=form)
            release.set()
            served, again = await first, await http.post("/v1/query/", data=form)
            metrics = (await http.get("/metrics")).text
        return refused, served, again, metrics

    refused, served, again, metrics = asyncio.run(main())
    assert refused.status_code == 503 and refused.headers["retry-after"] == "1"
    assert refused.json() == {"OPT_STATUS": "SERVER_ERROR", "result": None, "debug": None,
                              "DESCRIPTION": "too many requests in progress (1, the limit); retry shortly"}
    assert served.status_code == again.status_code == 200 and served.json()["result"]["values"] == [[1]]
    assert 'flowscope_datasource_errors_total{kind="busy"} 1.0' in metrics
