"""Alert rules (Grafana file provisioning) and the webhook that stores notifications (issue #6).

Grafana cannot run here: these are contract tests. The provisioned alerting file is checked against
the documented file schema (reference/grafana-integration.md §4, Grafana's file-provisioning docs),
read the way Grafana reads it (environment interpolation, ``$$`` → ``$``), and each rule's Infinity
query is sent as an alert evaluation sends it — the raw form body with only Infinity's backend time
macros, no dashboard variables — to a running `flowscope serve` over the seeded store: it must give
rows with exactly one numeric column and string labels unique per row (Grafana's table-data rule
shape). The webhook store is driven through its Starlette routes with Grafana's payload.
"""

from __future__ import annotations

import json
from urllib.parse import parse_qs

import pytest
import yaml
from starlette.applications import Starlette
from starlette.testclient import TestClient

from dashboards import alerts, infinity, provisioning
from datasource.alerts import MAX_BODY_BYTES, AlertStore, routes
from tests import grafana_infinity as gi

ALERTING = yaml.safe_load(provisioning.render_tree()["provisioning/alerting/flowscope.yaml"])
AS_GRAFANA_READS_IT = gi.interpolate_provisioning(ALERTING)
RULES = AS_GRAFANA_READS_IT["groups"][0]["rules"]

_STR_MAP = {"type": "object", "additionalProperties": {"type": "string"}}
_DURATION = {"type": "string", "pattern": r"^(\d+(ms|s|m|h|d|w))+$|^0$"}
# The file format of Grafana's alerting provisioning (docs: alerting/set-up/provision-alerting-resources/
# file-provisioning), the parts flowscope writes.
FILE_SCHEMA = {
    "type": "object",
    "required": ["apiVersion", "groups", "contactPoints", "policies"],
    "additionalProperties": False,
    "properties": {
        "apiVersion": {"const": 1},
        "groups": {"type": "array", "minItems": 1, "items": {
            "type": "object", "required": ["orgId", "name", "folder", "interval", "rules"], "additionalProperties": False,
            "properties": {
                "orgId": {"type": "integer"}, "name": {"type": "string"}, "folder": {"type": "string"},
                "interval": _DURATION,
                "rules": {"type": "array", "minItems": 1, "items": {
                    "type": "object", "additionalProperties": False,
                    "required": ["uid", "title", "condition", "data", "noDataState", "execErrState", "for"],
                    "properties": {
                        "uid": {"type": "string", "pattern": "^[a-zA-Z0-9_-]{1,40}$"},
                        "title": {"type": "string", "minLength": 1},
                        "condition": {"type": "string"},
                        "noDataState": {"enum": ["NoData", "Alerting", "OK", "KeepLast"]},
                        "execErrState": {"enum": ["Error", "Alerting", "OK", "KeepLast"]},
                        "for": _DURATION, "labels": _STR_MAP, "annotations": _STR_MAP,
                        "isPaused": {"type": "boolean"},
                        "data": {"type": "array", "minItems": 1, "items": {
                            "type": "object", "required": ["refId", "datasourceUid", "model"], "additionalProperties": False,
                            "properties": {
                                "refId": {"type": "string"}, "datasourceUid": {"type": "string"},
                                "queryType": {"type": "string"},
                                "relativeTimeRange": {"type": "object", "required": ["from", "to"],
                                                      "properties": {"from": {"type": "integer", "minimum": 0},
                                                                     "to": {"type": "integer", "minimum": 0}}},
                                "model": {"type": "object", "required": ["refId"]}}}}}}}}}},
        "contactPoints": {"type": "array", "items": {
            "type": "object", "required": ["orgId", "name", "receivers"], "additionalProperties": False,
            "properties": {"orgId": {"type": "integer"}, "name": {"type": "string"}, "receivers": {
                "type": "array", "minItems": 1, "items": {
                    "type": "object", "required": ["uid", "type", "settings"], "additionalProperties": False,
                    "properties": {"uid": {"type": "string"}, "type": {"type": "string"}, "settings": {"type": "object"},
                                   "disableResolveMessage": {"type": "boolean"}}}}}}},
        "policies": {"type": "array", "items": {
            "type": "object", "required": ["orgId", "receiver"], "additionalProperties": False,
            "properties": {"orgId": {"type": "integer"}, "receiver": {"type": "string"},
                           "group_by": {"type": "array", "items": {"type": "string"}},
                           "group_wait": _DURATION, "group_interval": _DURATION, "repeat_interval": _DURATION,
                           "routes": {"type": "array"}}}},
    },
}


def test_alerting_file_matches_the_documented_schema():
    jsonschema = pytest.importorskip("jsonschema", reason="jsonschema is a test dependency (pyproject [test])")
    jsonschema.validate(ALERTING, FILE_SCHEMA)
    jsonschema.validate(AS_GRAFANA_READS_IT, FILE_SCHEMA)


def test_the_issue_rules_contact_point_and_policy():
    assert [r["uid"] for r in RULES] == [
        "flowscope-service-server-error-ratio", "flowscope-service-latency-p99", "flowscope-tcp-retransmission-ratio",
        "flowscope-tcp-establish-failures", "flowscope-syn-unanswered", "flowscope-dns-error-ratio",
        "flowscope-port-error-burst"]
    (cp,) = AS_GRAFANA_READS_IT["contactPoints"]
    (receiver,) = cp["receivers"]
    assert receiver["type"] == "webhook"
    assert receiver["settings"]["url"] == provisioning.DEFAULT_DATASOURCE_URL + "/v1/alerts/webhook"
    (policy,) = AS_GRAFANA_READS_IT["policies"]
    assert policy["receiver"] == cp["name"] and "alertname" in policy["group_by"]


@pytest.mark.parametrize("rule", RULES, ids=[r["uid"] for r in RULES])
def test_rule_shape_reduce_then_threshold(rule):
    data = {d["refId"]: d for d in rule["data"]}
    assert rule["condition"] == "C" and set(data) == {"A", "B", "C"}
    a = data["A"]
    assert a["datasourceUid"] == infinity.INFINITY_UID and a["relativeTimeRange"]["from"] > 0
    assert a["model"]["parser"] in ("backend", "jq-backend"), "only server-side parsers evaluate in alerting"
    assert a["model"]["format"] == "table"
    assert data["B"]["model"] == {"expression": "A", "reducer": "last", "refId": "B", "type": "reduce",
                                  "settings": {"mode": "dropNN"}}
    assert data["C"]["model"]["type"] == "threshold" and data["C"]["model"]["expression"] == "B"
    assert {d["datasourceUid"] for d in (data["B"], data["C"])} == {"__expr__"}
    # as Grafana reads the file: Infinity's macros and the label templates survived env interpolation
    sql = parse_qs(a["model"]["url_options"]["data"])["sql"][0]
    assert "time >= ${__timeFrom:date:seconds} AND time <= ${__timeTo:date:seconds}" in sql
    assert "{{ $labels." in rule["annotations"]["summary"]
    numbers = [c for c in a["model"]["columns"] if c["type"] == "number"]
    assert [c["text"] for c in numbers] == ["value"]
    assert all(c["type"] == "string" for c in a["model"]["columns"] if c not in numbers)


def test_without_escaping_grafana_would_eat_the_macros():
    """Why the file doubles its dollars: Grafana expands $NAME / ${NAME} in provisioning values."""
    raw = alerts.provisioning("http://x")["groups"][0]["rules"][0]["data"][0]["model"]["url_options"]["data"]
    assert "${__timeFrom:date:seconds}" not in gi.grafana_provisioning_value(raw)
    assert "${__timeFrom:date:seconds}" in gi.grafana_provisioning_value(provisioning.escape_dollars(raw))


@pytest.mark.parametrize("rule", RULES, ids=[r["uid"] for r in RULES])
def test_rule_query_gives_one_number_per_labelled_row(ds, rule):
    model = rule["data"][0]["model"]
    frame = gi.Infinity(ds.http).query(model, {}, gi.RANGE_START, gi.RANGE_END)
    assert frame.rows, f"{rule['uid']}: no rows over the seeded data\nbody: {frame.request_body}"
    assert not frame.missing_columns()
    labels = [c["text"] for c in model["columns"] if c["type"] == "string"]
    label_sets = [tuple(r[c] for c in labels) for r in frame.rows]
    assert len(set(label_sets)) == len(label_sets), f"{rule['uid']}: label sets repeat: {label_sets}"
    assert all(all(v for v in ls) for ls in label_sets), "empty label values"
    assert any(r["value"] is not None for r in frame.rows)


def test_seeded_traffic_fires_the_rules_it_should(ds):
    """The pcaps hold a DNS server answering NXDOMAIN/SERVFAIL and SYNs dropped by a firewall."""
    fired = {}
    for rule in RULES:
        frame = gi.Infinity(ds.http).query(rule["data"][0]["model"], {}, gi.RANGE_START, gi.RANGE_END)
        (evaluator,) = [c["evaluator"] for c in next(d for d in rule["data"] if d["refId"] == "C")["model"]["conditions"]]
        assert evaluator["type"] == "gt"
        fired[rule["uid"]] = [r for r in frame.rows if r["value"] is not None and r["value"] > evaluator["params"][0]]
    assert fired["flowscope-dns-error-ratio"]
    assert fired["flowscope-syn-unanswered"]


# ---------------------------------------------------------------------------------------------------
# POST /v1/alerts/webhook, GET /v1/alerts

def _notification(status: str = "firing", alertname: str = "flowscope-dns-error-ratio", n: int = 1) -> dict:
    """Grafana's webhook payload (docs: alerting/configure-notifications/manage-contact-points/integrations/webhook)."""
    return {
        "receiver": "flowscope-webhook", "status": status, "orgId": 1,
        "alerts": [{
            "status": status, "labels": {"alertname": alertname, "server": f"dns-{i}", "severity": "warning"},
            "annotations": {"summary": f"dns-{i}: 30% of DNS answers are errors"},
            "startsAt": "2026-11-26T00:16:00Z", "endsAt": "0001-01-01T00:00:00Z",
            "generatorURL": "http://grafana:3000/alerting/grafana/x/view", "fingerprint": f"{i:016x}",
            "silenceURL": "http://grafana:3000/alerting/silence/new", "values": {"B": 30.3, "C": 1},
            "valueString": "[ var='B' value=30.3 ]"} for i in range(n)],
        "groupLabels": {"alertname": alertname}, "commonLabels": {"alertname": alertname},
        "commonAnnotations": {}, "externalURL": "http://grafana:3000/", "version": "1",
        "groupKey": "{}:{alertname=\"x\"}", "truncatedAlerts": 0, "title": f"[FIRING:{n}] {alertname}",
        "state": "alerting", "message": "**Firing**",
    }


def _client(store: AlertStore) -> TestClient:
    return TestClient(Starlette(routes=routes(store)))


def test_webhook_stores_and_lists_notifications():
    store = AlertStore()
    api = _client(store)
    r = api.post("/v1/alerts/webhook", json=_notification(n=2))
    assert r.status_code == 200 and r.json()["OPT_STATUS"] == "SUCCESS"
    api.post("/v1/alerts/webhook", json=_notification(status="resolved", alertname="flowscope-syn-unanswered"))
    listed = api.get("/v1/alerts").json()["result"]
    assert listed["total"] == 2
    newest, oldest = listed["notifications"]
    assert newest["status"] == "resolved" and oldest["status"] == "firing"
    assert [a["labels"]["server"] for a in oldest["alerts"]] == ["dns-0", "dns-1"]
    assert oldest["alerts"][0]["values"] == {"B": 30.3, "C": 1} and oldest["id"] < newest["id"]
    assert "received_at" in oldest
    only = api.get("/v1/alerts", params={"status": "firing"}).json()["result"]["notifications"]
    assert [n["status"] for n in only] == ["firing"]
    by_name = api.get("/v1/alerts", params={"alertname": "flowscope-syn-unanswered"}).json()["result"]["notifications"]
    assert len(by_name) == 1 and by_name[0]["status"] == "resolved"
    assert len(api.get("/v1/alerts", params={"limit": "1"}).json()["result"]["notifications"]) == 1


@pytest.mark.parametrize(("body", "status", "says"), [
    (b"{not json", 400, "not JSON"),
    (b"[]", 400, "JSON object"),
    (json.dumps({"status": "firing"}).encode(), 400, "'alerts'"),
    (json.dumps({"status": "maybe", "alerts": []}).encode(), 400, "'status'"),
    (b"{" + b" " * MAX_BODY_BYTES + b"}", 413, "limit"),
])
def test_webhook_refuses_what_is_not_a_notification(body, status, says):
    store = AlertStore()
    r = _client(store).post("/v1/alerts/webhook", content=body, headers={"Content-Type": "application/json"})
    assert r.status_code == status and says in r.json()["DESCRIPTION"]
    assert len(store) == 0


@pytest.mark.parametrize("query", [{"limit": "0"}, {"limit": "x"}, {"limit": "100000"}, {"status": "pending"}])
def test_listing_refuses_bad_parameters(query):
    r = _client(AlertStore()).get("/v1/alerts", params=query)
    assert r.status_code == 400 and r.json()["OPT_STATUS"] == "INVALID_POST_DATA"


def test_store_is_bounded_in_memory_and_on_disk(tmp_path):
    path = tmp_path / "alerts" / "notifications.jsonl"
    store = AlertStore(path, max_items=3)
    api = _client(store)
    for i in range(10):
        assert api.post("/v1/alerts/webhook", json=_notification(alertname=f"a{i}")).status_code == 200
        assert len(path.read_text().splitlines()) <= 2 * 3
    assert len(store) == 3
    names = [n["alerts"][0]["labels"]["alertname"] for n in api.get("/v1/alerts").json()["result"]["notifications"]]
    assert names == ["a9", "a8", "a7"]
    # a restart keeps the newest notifications and goes on numbering after them
    again = AlertStore(path, max_items=3)
    assert [n["alerts"][0]["labels"]["alertname"] for n in again.list()] == ["a9", "a8", "a7"]
    assert again.add({"status": "firing", "alerts": []})["id"] == 11


def test_store_survives_a_cut_last_line(tmp_path):
    path = tmp_path / "n.jsonl"
    store = AlertStore(path)
    store.add({"status": "firing", "alerts": []})
    with path.open("a") as f:
        f.write('{"id": 2, "status": "fir')          # the process died mid-write
    assert [n["id"] for n in AlertStore(path).list()] == [1]
