"""Dashboard specs (spec.py) → Grafana dashboard JSON through grafana-foundation-sdk builders.

Output is deterministic: panel ids are assigned in order, keys are sorted, and nothing depends on
the clock or the environment, so a rebuild is byte-identical.
"""

from __future__ import annotations

import json
from typing import Any

from grafana_foundation_sdk.builders import bargauge, histogram, nodegraph, stat, table, timeseries
from grafana_foundation_sdk.builders import dashboard as db
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models import dashboard as dm

from dashboards import infinity, spec

ALL_TEXT = "All"
ALL_VALUE = "$__all"
PANEL_BUILDERS = {"timeseries": timeseries.Panel, "table": table.Panel, "stat": stat.Panel,
                  "nodegraph": nodegraph.Panel, "histogram": histogram.Panel, "bargauge": bargauge.Panel}


def _datasource(kind: str) -> dm.DataSourceRef:
    if kind == "jaeger":
        return dm.DataSourceRef(type_val=infinity.JAEGER_TYPE, uid=infinity.JAEGER_UID)
    return dm.DataSourceRef(type_val=infinity.INFINITY_TYPE, uid=infinity.INFINITY_UID)


def target(t: spec.Target) -> infinity.Query:
    return infinity.Query(infinity.model(t.ref_id, t.db, t.sql, t.columns, precision=t.precision, fmt=t.format))


def variable(v: spec.Variable):
    if v.textbox:
        return (db.TextBoxVariable(v.name).label(v.label).default_value("")
                .current(dm.VariableOption(selected=True, text="", value="")))
    return (db.QueryVariable(v.name).label(v.label).datasource(_datasource("infinity"))
            .query(infinity.variable_query(v.db, v.sql, value=v.value))
            .multi(v.multi).include_all(True).all_value(spec.ANY)
            .current(dm.VariableOption(selected=True, text=[ALL_TEXT], value=[ALL_VALUE]))
            .refresh(dm.VariableRefresh.ON_DASHBOARD_LOAD).sort(dm.VariableSort.ALPHABETICAL_ASC))


def panel(p: spec.Panel, panel_id: int):
    if p.kind == "traces":     # the SDK has no traces builder: a generic panel of that type
        b = (db.Panel().type("traces").datasource(_datasource("jaeger"))
             .with_target(infinity.jaeger_target("A", p.trace_id)))
    elif p.kind == "deepflow-trace":     # DeepFlow's L7FlowTracing spans as a table
        b = (table.Panel().datasource(_datasource("infinity"))
             .with_target(infinity.Query(infinity.tracing_model("A", p.trace_id, p.fields))))
    else:
        b = PANEL_BUILDERS[p.kind]().datasource(_datasource("infinity"))
        for t in p.targets:
            b = b.with_target(target(t))
    b = b.id(panel_id).title(p.title).span(p.width).height(p.height)
    if p.description:
        b = b.description(p.description)
    if p.unit:
        b = b.unit(p.unit)
    if p.kind == "nodegraph":
        units = dict(p.units)
        b = (b.nodes(nodegraph.NodeOptions().main_stat_unit(units["mainstat"]))
             .edges(nodegraph.EdgeOptions().main_stat_unit(units["mainstat"])
                    .secondary_stat_unit(units["secondarystat"])))
    else:
        for column, unit in p.units:
            b = b.override_by_name(column, [dm.DynamicConfigValue(id_val="unit", value=unit)])
    for link in p.links:
        b = b.override_by_name(link.column, [dm.DynamicConfigValue(
            id_val="links", value=[{"title": link.title, "url": link.url}])])
    return b


def dashboard(d: spec.Dashboard) -> dict[str, Any]:
    """The dashboard as Grafana JSON (a dict)."""
    b = (db.Dashboard(d.title).uid(d.uid).description(d.description).tags(list(d.tags))
         .time("now-1h", "now").refresh("1m").timezone("browser").readonly()
         .link(db.DashboardLink("flowscope").type(dm.DashboardLinkType.DASHBOARDS).tags(["flowscope"])
               .as_dropdown(True).include_vars(True).keep_time(True)))
    for v in d.variables:
        b = b.with_variable(variable(v))
    panel_id = 0
    for row in d.rows:
        panel_id += 1
        b = b.with_row(db.Row(row.title).id(panel_id))
        for p in row.panels:
            panel_id += 1
            b = b.with_panel(panel(p, panel_id))
    return json.loads(json.dumps(b.build(), cls=JSONEncoder))


def dumps(obj: Any) -> str:
    """Stable JSON text: sorted keys, two-space indent, a final newline."""
    return json.dumps(obj, indent=2, sort_keys=True, ensure_ascii=False) + "\n"
