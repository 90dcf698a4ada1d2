"""Dashboards as code (issue #6): the generated Grafana JSON and provisioning tree.

Grafana cannot run here, so these are contract tests: every variable query and every panel target
of every generated dashboard is sent exactly as Grafana + Infinity would send it (the raw form body
with dashboard variables and Infinity's time macros interpolated, tests/grafana_infinity.py) to a
running `flowscope serve` over a store seeded from the committed real-traffic pcaps, and must come
back with rows carrying the fields the panel needs (time series: an epoch-seconds time field and
numbers; Node Graph: edges with id, source, target; tables: the declared columns). Structure is
checked too: the JSON round-trips through grafana-foundation-sdk's models, the build is
deterministic, and the committed tree (deploy/grafana) is what the code generates.
"""

from __future__ import annotations

import json
from pathlib import Path
from urllib.parse import parse_qs

import pytest
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models import dashboard as dm

from dashboards import infinity, library, provisioning, render
from tests import grafana_infinity as gi

ROOT = Path(__file__).resolve().parent.parent
DASHBOARDS = {d.uid: render.dashboard(d) for d in library.dashboards()}
K8S_VARIABLES = ("cluster", "namespace", "workload")


def _targets(dash: dict) -> list[tuple[dict, dict]]:
    """The Infinity targets of DeepFlow SQL (the L7FlowTracing one has its own test)."""
    return [(p, t) for p in dash["panels"] for t in p.get("targets", [])
            if t["datasource"]["type"] == infinity.INFINITY_TYPE and t["url"] == infinity.QUERY_URL]


PANEL_TARGETS = [pytest.param(uid, p["id"], t["refId"], id=f"{uid}/{p['title']}/{t['refId']}")
                 for uid, dash in DASHBOARDS.items() for p, t in _targets(dash)]
VARIABLES = [pytest.param(uid, v["name"], id=f"{uid}/{v['name']}")
             for uid, dash in DASHBOARDS.items() for v in dash["templating"]["list"] if v["type"] == "query"]


def _panel(uid: str, panel_id: int) -> dict:
    return next(p for p in DASHBOARDS[uid]["panels"] if p.get("id") == panel_id)


def _target(uid: str, panel_id: int, ref_id: str) -> tuple[dict, dict]:
    panel = _panel(uid, panel_id)
    return panel, next(t for t in panel["targets"] if t["refId"] == ref_id)


def _all_selected(dash: dict) -> dict[str, gi.VariableState]:
    """Every variable as a dashboard opens: query variables at All, text boxes empty."""
    out = {}
    for v in dash["templating"]["list"]:
        if v["type"] == "query":
            out[v["name"]] = gi.VariableState(v["name"], all=True, all_value=v.get("allValue"))
        else:
            out[v["name"]] = gi.VariableState(v["name"], values=[v.get("query", "")])
    return out


# ---------------------------------------------------------------------------------------------------
# Structure


def test_ten_dashboards_as_the_issue_lists():
    titles = [d["title"] for d in DASHBOARDS.values()]
    assert titles == [
        "Network – Node flow topology", "Network – Pod flow topology", "Network – Node flow log",
        "Network – Pod flow log", "Application – Service overview", "Application – Microservice call topology",
        "Application – Service call log", "Distributed tracing", "Troubleshooting – Database",
        "Troubleshooting – Errors by port and endpoint"]
    assert len(set(DASHBOARDS)) == 10


@pytest.mark.parametrize("uid", DASHBOARDS)
def test_variables_come_from_dialect_show_tag_values(uid):
    variables = {v["name"]: v for v in DASHBOARDS[uid]["templating"]["list"]}
    for name in K8S_VARIABLES:
        assert name in variables, f"{uid} lacks the {name} variable"
    for v in variables.values():
        if v["type"] == "textbox":
            continue
        assert v["type"] == "query"
        assert v["datasource"] == {"type": infinity.INFINITY_TYPE, "uid": infinity.INFINITY_UID}
        q = v["query"]["infinityQuery"]
        sql = parse_qs(q["url_options"]["data"])["sql"][0]
        assert sql.startswith("SHOW tag ") and " values FROM " in sql, sql
        assert {c["text"] for c in q["columns"]} == {"__value", "__text"}
        assert {c["selector"] for c in q["columns"]} <= {"value", "display_name"}
        # DeepFlow's "Any": a custom All value the SQL guard recognises, so All means no filter
        assert v["includeAll"] and v["allValue"] == "'__any'" and v["multi"]


def test_pod_and_protocol_variables_where_relevant():
    def names(uid: str) -> set[str]:
        return {v["name"] for v in DASHBOARDS[uid]["templating"]["list"]}

    for uid in ("network-pod-topology", "network-pod-flow-log", "application-service-overview",
                "application-call-log", "troubleshooting-errors"):
        assert "pod" in names(library.UID_PREFIX + uid)
    for uid in ("application-service-overview", "application-call-topology", "application-call-log",
                "troubleshooting-errors"):
        assert "protocol" in names(library.UID_PREFIX + uid)
    assert {"trace_id", "service", "endpoint"} <= names(library.TRACING_UID)


@pytest.mark.parametrize("uid", DASHBOARDS)
def test_targets_post_the_deepflow_form_to_records(uid):
    """Infinity, server-side parser, DeepFlow's form to /v1/query/?format=records, Grafana's range as
    plain epoch comparisons."""
    targets = _targets(DASHBOARDS[uid])
    assert targets
    for panel, t in targets:
        assert t["datasource"] == {"type": infinity.INFINITY_TYPE, "uid": infinity.INFINITY_UID}
        assert t["parser"] in ("backend", "jq-backend") and t["url"] == "/v1/query/?format=records"
        assert t["url_options"]["body_content_type"] == "application/x-www-form-urlencoded"
        form = parse_qs(t["url_options"]["data"])
        assert form["db"][0] in ("flow_log", "flow_metrics")
        assert form.get("data_precision", ["1m"])[0] == "1m"
        sql = form["sql"][0]
        assert "time >= ${__timeFrom:date:seconds} AND time <= ${__timeTo:date:seconds}" in sql
        assert t["columns"], f"{panel['title']}: no columns declared"
        if panel["type"] == "timeseries":
            assert t["format"] == "timeseries" and t["columns"][0]["type"] == "timestamp_epoch_s"
        if panel["type"] == "nodeGraph":
            assert t["refId"] == "edges"
            assert [c["text"] for c in t["columns"][:5]] == ["id", "source", "target", "mainstat", "secondarystat"]


def test_trace_view_uses_the_jaeger_datasource_and_rows_link_to_it():
    tracing = DASHBOARDS[library.TRACING_UID]
    traces = [p for p in tracing["panels"] if p["type"] == "traces"]
    assert len(traces) == 1
    assert traces[0]["datasource"] == {"type": "jaeger", "uid": infinity.JAEGER_UID}
    assert traces[0]["targets"] == [{"refId": "A", "datasource": {"type": "jaeger", "uid": infinity.JAEGER_UID},
                                     "query": "${trace_id}"}]
    call_log = DASHBOARDS[library.UID_PREFIX + "application-call-log"]
    links = [prop["value"][0]["url"] for p in call_log["panels"] for o in p.get("fieldConfig", {}).get("overrides", [])
             if o["matcher"]["options"] == "trace_id" for prop in o["properties"] if prop["id"] == "links"]
    assert links == [f"/d/{library.TRACING_UID}?var-trace_id=${{__value.raw}}&${{__url_time_range}}"]


@pytest.mark.parametrize("uid", DASHBOARDS)
def test_json_round_trips_through_the_sdk_models(uid):
    infinity.register()
    text = render.dumps(DASHBOARDS[uid])
    model = dm.Dashboard.from_json(json.loads(text))
    again = render.dumps(json.loads(json.dumps(model, cls=JSONEncoder)))
    assert again == text


def test_build_is_deterministic_and_the_committed_tree_is_current(tmp_path):
    first, second = tmp_path / "a", tmp_path / "b"
    provisioning.build(first)
    provisioning.build(second)
    files = sorted(p.relative_to(first) for p in first.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(second) for p in second.rglob("*") if p.is_file())
    assert len([f for f in files if f.suffix == ".json"]) == 10
    assert {str(f) for f in files if f.suffix == ".yaml"} == {
        "provisioning/datasources/flowscope.yaml", "provisioning/dashboards/flowscope.yaml",
        "provisioning/alerting/flowscope.yaml"}
    for f in files:
        assert (first / f).read_bytes() == (second / f).read_bytes(), f
    committed = ROOT / "deploy" / "grafana"
    stale = [str(f) for f in files if not (committed / f).exists() or (committed / f).read_bytes() != (first / f).read_bytes()]
    assert not stale, f"deploy/grafana is out of date: run `flowscope dashboards build --out deploy/grafana` ({stale})"
    extra = sorted(str(p.relative_to(committed)) for p in committed.rglob("*") if p.is_file()
                   and p.relative_to(committed) not in files)
    assert not extra, f"deploy/grafana has files the build does not make: {extra}"


def test_build_cli_writes_the_tree(tmp_path):
    from typer.testing import CliRunner

    from dashboards.cli import app

    res = CliRunner().invoke(app, ["build", "--out", str(tmp_path), "--datasource-url", "http://ds:9999/"])
    assert res.exit_code == 0, res.output
    ds = (tmp_path / "provisioning/datasources/flowscope.yaml").read_text()
    assert "url: http://ds:9999\n" in ds and "url: http://ds:9999/jaeger\n" in ds
    assert "http://ds:9999/v1/alerts/webhook" in (tmp_path / "provisioning/alerting/flowscope.yaml").read_text()
    assert CliRunner().invoke(app, ["build", "--out", str(tmp_path), "--token-env", "A B"]).exit_code == 2


def test_provisioned_datasources_and_dashboard_provider():
    import yaml

    ds = yaml.safe_load(provisioning.render_tree()["provisioning/datasources/flowscope.yaml"])
    by_uid = {d["uid"]: d for d in ds["datasources"]}
    inf = by_uid[infinity.INFINITY_UID]
    assert inf["type"] == "yesoreyeram-infinity-datasource" and inf["jsonData"]["allowedHosts"] == [inf["url"]]
    assert by_uid[infinity.JAEGER_UID]["type"] == "jaeger"
    assert by_uid[infinity.JAEGER_UID]["url"] == inf["url"] + "/jaeger"
    with_token = yaml.safe_load(provisioning.render_tree(token_env="FLOWSCOPE_TOKEN")["provisioning/datasources/flowscope.yaml"])
    for d in with_token["datasources"]:
        assert d["jsonData"]["httpHeaderName1"] == "Authorization"
        assert gi.grafana_provisioning_value(d["secureJsonData"]["httpHeaderValue1"], {"FLOWSCOPE_TOKEN": "t"}) == "Bearer t"
    prov = yaml.safe_load(provisioning.render_tree()["provisioning/dashboards/flowscope.yaml"])["providers"][0]
    assert prov["type"] == "file" and prov["options"]["path"] == "/var/lib/grafana/dashboards/flowscope"


# ---------------------------------------------------------------------------------------------------
# Every query, as Grafana + Infinity send it, against a running datasource over the seeded store


@pytest.mark.parametrize(("uid", "name"), VARIABLES)
def test_variable_query_returns_values(ds, uid, name):
    """As the dashboard opens: the variables above this one at All."""
    v = next(v for v in DASHBOARDS[uid]["templating"]["list"] if v["name"] == name)
    options = gi.Infinity(ds.http).variable_values(v["query"], _all_selected(DASHBOARDS[uid]), gi.RANGE_START,
                                                   gi.RANGE_END)
    assert options, f"{uid}: variable {name} has no values"
    assert all(isinstance(value, str) and value and isinstance(text, str) and text for value, text in options)


@pytest.mark.parametrize("uid", [library.UID_PREFIX + "network-pod-flow-log", library.TRACING_UID])
def test_variables_are_chained_cluster_namespace_workload_pod(ds, uid):
    """Picking a namespace leaves its workloads (and a workload its pods) to pick from, as in the
    lab inventory (tests/data/inventory/lab.yaml); the chain is in the SQL Grafana re-runs when a
    variable above changes."""
    dash = DASHBOARDS[uid]
    by_name = {v["name"]: v for v in dash["templating"]["list"]}
    for name, parents in (("namespace", ("cluster",)), ("workload", ("cluster", "namespace")),
                          ("pod", ("cluster", "namespace", "workload"))):
        if name in by_name:
            sql = parse_qs(by_name[name]["query"]["infinityQuery"]["url_options"]["data"])["sql"][0]
            assert all(f"${{{p}:singlequote}}" in sql for p in parents), sql
    client = gi.Infinity(ds.http)

    def options(name: str, **chosen: str) -> set[str]:
        state = _all_selected(dash)
        for var, value in chosen.items():
            state[var] = gi.VariableState(var, values=[value])
        return {value for value, _ in client.variable_values(by_name[name]["query"], state, gi.RANGE_START,
                                                              gi.RANGE_END)}

    assert options("namespace") == {"shop", "payments", "kube-system"}
    assert options("namespace", cluster="lab") == {"shop", "payments", "kube-system"}
    assert options("namespace", cluster="elsewhere") == set()
    assert options("workload") >= {"web", "redis", "api", "coredns"}
    assert options("workload", namespace="shop") == {"web", "redis"}
    assert options("workload", namespace="payments") == {"api"}
    if "pod" in by_name:
        assert options("pod", namespace="shop") == {"web-a", "web-b", "redis-0"}
        assert options("pod", namespace="shop", workload="web") == {"web-a", "web-b"}
        assert options("pod", namespace="payments", workload="web") == set()


@pytest.mark.parametrize(("uid", "panel_id", "ref_id"), PANEL_TARGETS)
def test_panel_target_returns_the_fields_it_needs(ds, uid, panel_id, ref_id):
    panel, target = _target(uid, panel_id, ref_id)
    frame = gi.Infinity(ds.http).query(target, _all_selected(DASHBOARDS[uid]), gi.RANGE_START, gi.RANGE_END)
    assert frame.rows, f"{panel['title']}: no rows over the seeded data\nbody: {frame.request_body}"
    assert not frame.missing_columns(), f"{panel['title']}: the answer lacks {frame.missing_columns()}"
    numbers = frame.names("number")
    if panel["type"] == "timeseries":
        times = [r["time_60"] for r in frame.rows]
        assert all(isinstance(t, int) and gi.RANGE_START - 60 <= t <= gi.RANGE_END for t in times)
        assert numbers and any(r[c] is not None for r in frame.rows for c in numbers)
    elif panel["type"] == "nodeGraph":
        ids = [r["id"] for r in frame.rows]
        assert len(set(ids)) == len(ids), "edge ids must be unique"
        assert all(r["source"] and r["target"] for r in frame.rows)
        assert all(r["mainstat"] is not None for r in frame.rows)
    elif panel["type"] in ("stat", "histogram"):
        assert any(r[c] is not None for r in frame.rows for c in numbers)


@pytest.mark.parametrize("uid", DASHBOARDS)
def test_every_target_runs_with_values_selected(ds, uid):
    """The guard's other branch: each variable set to two of its values, top to bottom as a user
    picks them (rows may be empty then)."""
    dash = DASHBOARDS[uid]
    client = gi.Infinity(ds.http)
    selected = {}
    for v in dash["templating"]["list"]:
        if v["type"] == "query":
            options = client.variable_values(v["query"], _all_selected(dash) | selected, gi.RANGE_START,
                                             gi.RANGE_END)     # the chain: with the choices above
            selected[v["name"]] = gi.VariableState(v["name"], values=[options[0][0], options[-1][0]])
        else:
            selected[v["name"]] = gi.VariableState(v["name"], values=["x'y"])    # a quote in a text box
    for _panel, target in _targets(dash):
        client.query(target, selected, gi.RANGE_START, gi.RANGE_END)     # raises on any non-200


def test_time_range_selects_rows(ds):
    """Outside the data's days, the same queries answer nothing: the range really filters."""
    dash = DASHBOARDS[library.UID_PREFIX + "network-pod-topology"]
    _, target = _targets(dash)[0]
    frame = gi.Infinity(ds.http).query(target, _all_selected(dash), gi.RANGE_START - 86400, gi.RANGE_START - 3600)
    assert frame.rows == []


def test_trace_view_target_opens_the_trace_of_a_listed_request(ds):
    """The trace panel's target run as Grafana's built-in Jaeger datasource runs it (Grafana cannot
    run here: a contract test). The user clicks a trace id in the Request list, the link sets
    ${trace_id}; the Jaeger datasource (provisioned at <datasource>/jaeger) then asks
    GET /jaeger/api/traces/<query> and draws ``data[0]``: spans of that trace whose processes and
    parent references resolve inside it."""
    dash = DASHBOARDS[library.TRACING_UID]
    client = gi.Infinity(ds.http)
    listed = next(t for p, t in _targets(dash) if p["title"] == "Request list")
    rows = client.query(listed, _all_selected(dash), gi.RANGE_START, gi.RANGE_END).rows
    traced = [r["trace_id"] for r in rows if r["trace_id"]]
    assert traced, "no request with a trace id in the seeded store"
    trace_id = max(set(traced), key=traced.count)           # the trace with the most listed requests
    state = _all_selected(dash) | {"trace_id": gi.VariableState("trace_id", values=[trace_id])}
    of_trace = client.query(listed, state, gi.RANGE_START, gi.RANGE_END).rows
    assert of_trace and {r["trace_id"] for r in of_trace} == {trace_id}

    panel = next(p for p in dash["panels"] if p["type"] == "traces")
    (target,) = panel["targets"]
    query = gi.interpolate(target["query"], state)
    assert query == trace_id
    resp = ds.http.get(f"/jaeger/api/traces/{query}")
    assert resp.status_code == 200, resp.text[:300]
    (trace,) = resp.json()["data"]
    assert trace["traceID"] == trace_id
    spans = trace["spans"]
    assert len(spans) >= len(of_trace) >= 2
    ids = {s["spanID"] for s in spans}
    assert len(ids) == len(spans)
    for span in spans:
        assert span["traceID"] == trace_id and span["processID"] in trace["processes"]
        assert span["operationName"] and span["duration"] >= 0 and span["startTime"] > gi.RANGE_START * 10**6
        for ref in span["references"]:
            assert ref["refType"] == "CHILD_OF" and ref["spanID"] in ids
    # a tree, not a list: spans hang under their callers (the seed has no OTLP exports, so calls
    # whose parent is an application's own span start sub-trees of their own)
    children = [s for s in spans if s["references"]]
    assert children and len(children) < len(spans)


def test_deepflow_trace_panel_posts_l7flowtracing_for_the_listed_trace(ds):
    """The tracing dashboard's second trace view: Infinity posts deepflow-app's L7FlowTracing JSON
    (the trace id through Grafana's ``json`` format, the range through Infinity's backend macros)
    and reads the spans at ``DATA.tracing``: the same trace the Jaeger panel shows, parent before
    child."""
    dash = DASHBOARDS[library.TRACING_UID]
    client = gi.Infinity(ds.http)
    listed = next(t for p, t in _targets(dash) if p["title"] == "Request list")
    traced = [r["trace_id"] for r in client.query(listed, _all_selected(dash), gi.RANGE_START, gi.RANGE_END).rows
              if r["trace_id"]]
    trace_id = max(set(traced), key=traced.count)
    state = _all_selected(dash) | {"trace_id": gi.VariableState("trace_id", values=[trace_id])}
    (panel,) = [p for p in dash["panels"] if p.get("targets") and p["targets"][0].get("url") == infinity.TRACING_URL]
    (target,) = panel["targets"]
    assert target["url_options"]["body_content_type"] == "application/json" and target["root_selector"] == "DATA.tracing"
    frame = client.query(target, state, gi.RANGE_START, gi.RANGE_END)
    assert frame.rows and not frame.missing_columns()
    jaeger = ds.http.get(f"/jaeger/api/traces/{trace_id}").json()["data"][0]["spans"]
    assert len(frame.rows) == len(jaeger)
    seen = set()
    for r in frame.rows:
        assert r["parent_id"] == -1 or r["parent_id"] in seen
        assert r["tap_side"] and r["duration"] >= r["selftime"] >= 0
        seen.add(r["id"])
