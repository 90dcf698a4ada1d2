"""Alert rules, the webhook contact point and the notification policy, as Grafana file provisioning.

Each rule is one DeepFlow statement evaluated server-side by Infinity's backend parser: it returns
exactly one numeric column (``value``) and string columns that become the alert's labels, one row
per entity (Grafana's rule shape for table data). Time comes from Infinity's backend macros, the
only ones an alert evaluation has. Then Grafana reduces each series (last) and compares it with the
threshold.

Rules are built with grafana-foundation-sdk's alerting builders (the HTTP provisioning API shape)
and rewritten into the file shape Grafana reads from ``provisioning/alerting`` (reference
grafana-integration.md §4): ``groups[{orgId, name, folder, interval, rules}]``,
``contactPoints[{orgId, name, receivers}]``, ``policies[{orgId, receiver, …}]``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from grafana_foundation_sdk.builders import alerting, expr
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models import alerting as am

from dashboards import infinity
from dashboards.infinity import NUMBER, STRING, Column
from dashboards.spec import FLOW_METRICS, TIME

ORG_ID = 1
FOLDER = "flowscope"
GROUP = "flowscope"
INTERVAL = "1m"
CONTACT_POINT = "flowscope-webhook"
WEBHOOK_PATH = "/v1/alerts/webhook"
WINDOW_S = 600                     # each evaluation looks at the last 10 minutes


@dataclass(frozen=True)
class AlertRule:
    uid: str
    title: str
    sql: str                       # DeepFlow SQL on flow_metrics; one numeric column named ``value``
    labels: tuple[str, ...]        # the string columns: one alert instance per row
    op: str                        # gt | lt
    threshold: float
    summary: str                   # annotation; {{ $labels.x }} and {{ $values.B }} are Grafana's
    for_: str = "5m"
    severity: str = "warning"
    dashboard: str = ""            # the dashboard to open from the alert


def _rule_sql(select: str, table: str, group: str, condition: str = "") -> str:
    where = " AND ".join(c for c in (condition, TIME) if c)
    return f"SELECT {select} FROM {table} WHERE {where} GROUP BY {group}"


RULES: tuple[AlertRule, ...] = (
    AlertRule(
        "flowscope-service-server-error-ratio", "Service server-error ratio above 5%",
        _rule_sql("auto_service_1 AS service, Avg(server_error_ratio) AS value", "application_map", "auto_service_1"),
        ("service",), "gt", 5.0,
        "{{ $labels.service }}: {{ $values.B }}% of responses are server errors",
        dashboard="flowscope-application-service-overview"),
    AlertRule(
        "flowscope-service-latency-p99", "Service p99 latency above 500 ms",
        _rule_sql("auto_service_1 AS service, Percentile(rrt, 0.99) AS value", "application_map", "auto_service_1"),
        ("service",), "gt", 500_000.0,
        "{{ $labels.service }}: p99 response time {{ $values.B }} µs",
        dashboard="flowscope-application-service-overview"),
    AlertRule(
        "flowscope-tcp-retransmission-ratio", "TCP retransmission ratio above 5%",
        _rule_sql("auto_instance_1 AS server, Avg(retrans_ratio) AS value", "network_map", "auto_instance_1"),
        ("server",), "gt", 5.0,
        "{{ $labels.server }}: {{ $values.B }}% of packets retransmitted",
        dashboard="flowscope-network-pod-topology"),
    AlertRule(
        "flowscope-tcp-establish-failures", "TCP connections failing to establish",
        _rule_sql("auto_instance_1 AS server, Sum(tcp_establish_fail) AS value", "network_map", "auto_instance_1"),
        ("server",), "gt", 10.0,
        "{{ $labels.server }}: {{ $values.B }} connections failed during the handshake in 10 minutes",
        dashboard="flowscope-troubleshooting-errors"),
    AlertRule(
        "flowscope-syn-unanswered", "SYNs never answered (NetworkPolicy drop suspect)",
        _rule_sql("auto_instance_1 AS server, toString(server_port) AS port, Sum(server_syn_miss) AS value",
                  "network_map", "auto_instance_1, server_port"),
        ("server", "port"), "gt", 0.0,
        "{{ $labels.server }}:{{ $labels.port }}: {{ $values.B }} connections whose SYNs were never answered",
        for_="0s", dashboard="flowscope-troubleshooting-errors"),
    AlertRule(
        "flowscope-dns-error-ratio", "DNS error ratio above 10%",
        _rule_sql("auto_service_1 AS server, Avg(error_ratio) AS value", "application_map", "auto_service_1",
                  "l7_protocol = 120"),
        ("server",), "gt", 10.0,
        "{{ $labels.server }}: {{ $values.B }}% of DNS answers are errors (NXDOMAIN, SERVFAIL, REFUSED…)",
        dashboard="flowscope-troubleshooting-errors"),
    AlertRule(
        "flowscope-port-error-burst", "Error burst on a server port",
        _rule_sql("auto_service_1 AS service, toString(server_port) AS port, Sum(error) + Sum(timeout) AS value",
                  "application_map", "auto_service_1, server_port"),
        ("service", "port"), "gt", 50.0,
        "{{ $labels.service }}:{{ $labels.port }}: {{ $values.B }} error responses and timeouts in 10 minutes",
        for_="0s", severity="critical", dashboard="flowscope-troubleshooting-errors"),
)


def rule_query(r: AlertRule) -> dict[str, Any]:
    columns = tuple(Column(label, STRING) for label in r.labels) + (Column("value", NUMBER),)
    return infinity.model("A", FLOW_METRICS, r.sql, columns, precision="1m", fmt="table")


def _rule(r: AlertRule) -> alerting.Rule:
    b = (alerting.Rule(r.title).uid(r.uid).condition("C").for_val(r.for_)
         .no_data_state("OK").exec_err_state("Error")
         .labels({"severity": r.severity, "source": "flowscope"})
         .annotations({"summary": r.summary, "description": r.title})
         .queries([
             alerting.Query("A").datasource_uid(infinity.INFINITY_UID)
             .relative_time_range(am.RelativeTimeRange(from_val=WINDOW_S, to=0))
             .model(infinity.Query(rule_query(r))),
             alerting.Query("B").datasource_uid("__expr__").model(
                 expr.TypeReduce().ref_id("B").expression("A").reducer("last")
                 .settings(expr.ExprTypeReduceSettings().mode("dropNN"))),
             alerting.Query("C").datasource_uid("__expr__").model(
                 expr.TypeThreshold().ref_id("C").expression("B").conditions([
                     expr.ExprTypeThresholdConditions().evaluator(
                         expr.ExprTypeThresholdConditionsEvaluator().type(r.op).params([r.threshold]))])),
         ]))
    return b


def _to_json(builder) -> dict[str, Any]:
    return json.loads(json.dumps(builder.build(), cls=JSONEncoder))


def _file_rule(r: AlertRule) -> dict[str, Any]:
    """The API-shaped rule without what the file's group carries (folderUID, orgID, ruleGroup)."""
    rule = _to_json(_rule(r))
    for key in ("folderUID", "orgID", "ruleGroup"):
        rule.pop(key, None)
    rule["isPaused"] = False
    if r.dashboard:      # a plain annotation: a file rule linked by dashboardUid also needs a panelId
        rule["annotations"]["dashboard_url"] = f"/d/{r.dashboard}"
    return rule


def provisioning(webhook_url: str) -> dict[str, Any]:
    """The whole ``provisioning/alerting`` file: rule group, contact point, notification policy."""
    contact = _to_json(alerting.ContactPoint().name(CONTACT_POINT).uid(CONTACT_POINT).type("webhook")
                       .settings({"url": webhook_url, "httpMethod": "POST"}).disable_resolve_message(False))
    policy = _to_json(alerting.NotificationPolicy().receiver(CONTACT_POINT)
                      .group_by(["alertname", "service", "server"])
                      .group_wait("30s").group_interval("5m").repeat_interval("4h"))
    return {
        "apiVersion": 1,
        "groups": [{"orgId": ORG_ID, "name": GROUP, "folder": FOLDER, "interval": INTERVAL,
                    "rules": [_file_rule(r) for r in RULES]}],
        "contactPoints": [{"orgId": ORG_ID, "name": contact["name"], "receivers": [{
            "uid": contact["uid"], "type": contact["type"], "settings": contact["settings"],
            "disableResolveMessage": contact.get("disableResolveMessage", False)}]}],
        "policies": [{"orgId": ORG_ID, **policy}],
    }
