"""The ten flowscope dashboards (issue #6), each a list of rows of panels over DeepFlow SQL.

Tables and metrics are DeepFlow's (reference/deepflow-querier.md §2–§4): ``network_map`` /
``application_map`` (1 minute) for topologies and rates, ``l4_flow_log`` / ``l7_flow_log`` for the
logs. Ratios are percentages (DeepFlow's ``*_ratio`` metrics), latencies microseconds.

"Node" means a host-level end: a cloud host / host / Kubernetes node (auto_instance types 1, 6,
14); "pod" an end with a pod. Both ends of a flow are offered to the variables (either end
matches), except on the per-service pages where the variables select the serving side.
"""

from __future__ import annotations

from dashboards.spec import (
    BUCKET,
    FLOW_LOG,
    FLOW_METRICS,
    TIME,
    Dashboard,
    Link,
    Panel,
    Row,
    Variable,
    either_end,
    n,
    node_graph,
    pick,
    s,
    stat,
    table,
    text_filter,
    timeseries,
    where,
)

UID_PREFIX = "flowscope-"
NODE_TYPES = "(1, 6, 14)"      # auto_instance types of host-level ends: cloud host, host, K8s node
NODE_ENDS = f"(auto_instance_type_0 IN {NODE_TYPES} OR auto_instance_type_1 IN {NODE_TYPES})"
POD_ENDS = "(pod_id_0 != 0 OR pod_id_1 != 0)"
DATABASES = "l7_protocol IN (60, 80)"     # MySQL, Redis
TRACING_UID = UID_PREFIX + "distributed-tracing"


def _show(name: str, label: str, tag: str, db: str, table_: str, value: str = "display_name",
          parents: tuple[tuple[str, str], ...] = ()) -> Variable:
    """``SHOW tag X values``; ``parents`` (variable, tag) narrow it to the resources under what the
    variables above it select (the dictionaries relate them: a namespace's cluster, a workload's
    namespace), so picking a namespace leaves only its workloads and pods to pick from."""
    sql = f"SHOW tag {tag} values FROM {table_}"
    if parents:
        sql += " WHERE " + where(*(pick(var, parent) for var, parent in parents))
    return Variable(name, label, db, sql, value=value)


K8S_CHAIN = (("cluster", "pod_cluster"), ("namespace", "pod_ns"), ("workload", "pod_group"))


def k8s_variables(db: str, table_: str, *, pod: bool = False, protocol: bool = False,
                  observation_point: bool = False) -> tuple[Variable, ...]:
    out = [_show("cluster", "Cluster", "pod_cluster", db, table_),
           _show("namespace", "Namespace", "pod_ns", db, table_, parents=K8S_CHAIN[:1]),
           _show("workload", "Workload", "pod_group", db, table_, parents=K8S_CHAIN[:2])]
    if pod:
        out.append(_show("pod", "Pod", "pod", db, table_, parents=K8S_CHAIN))
    if protocol:
        out.append(_show("protocol", "Protocol", "l7_protocol", db, table_))
    if observation_point:
        out.append(_show("observation_point", "Observation point", "observation_point", db, table_, value="value"))
    return tuple(out)


def k8s_filter(*, pod: bool = False, protocol: bool = False, observation_point: bool = False,
               side: str = "") -> str:
    """The variables' conditions; ``side`` ``_1`` limits them to the server end (else either end)."""
    def one(var: str, tag: str) -> str:
        return pick(var, tag + side) if side else either_end(var, tag)

    parts = [one("cluster", "pod_cluster"), one("namespace", "pod_ns"), one("workload", "pod_group")]
    if pod:
        parts.append(one("pod", "pod"))
    if protocol:
        parts.append(pick("protocol", "Enum(l7_protocol)"))
    if observation_point:
        parts.append(pick("observation_point", "observation_point"))
    return where(*parts)


# ---------------------------------------------------------------------------------------------------
# Network: flow topology (node and pod level)

def _network_topology(level: str) -> Dashboard:
    pod = level == "pod"
    scope = where(POD_ENDS if pod else NODE_ENDS, k8s_filter(pod=pod, observation_point=True), TIME)
    edges = node_graph(
        f"{level.capitalize()} flow topology",
        FLOW_METRICS,
        "SELECT concat(auto_instance_0, ' -> ', auto_instance_1) AS id, auto_instance_0 AS source, "
        "auto_instance_1 AS target, PerSecond(Sum(byte)) AS mainstat, Avg(rtt) AS secondarystat, "
        "Avg(retrans_ratio) AS detail__retrans_ratio, Avg(tcp_establish_fail_ratio) AS detail__conn_fail_ratio, "
        "Avg(rtt) AS detail__rtt_us, Sum(byte) AS detail__bytes "
        f"FROM network_map WHERE {scope} GROUP BY auto_instance_0, auto_instance_1 "
        "ORDER BY mainstat DESC LIMIT 1000",
        ("detail__retrans_ratio", "detail__conn_fail_ratio", "detail__rtt_us", "detail__bytes"),
        main_unit="Bps", secondary_unit="µs",
        description="Edges: client → server; main stat bytes/s, secondary TCP handshake RTT; details: "
                    "retransmission and connection-failure ratios (%).")

    def over_time(title: str, metric: str, unit: str) -> Panel:
        return timeseries(title, FLOW_METRICS,
                          f"SELECT {BUCKET}, auto_instance_1 AS server, {metric} AS value FROM network_map "
                          f"WHERE {scope} GROUP BY time_60, auto_instance_1 ORDER BY time_60 LIMIT 10000",
                          ("value",), labels=("server",), unit=unit)

    paths = table(
        f"{level.capitalize()} paths by observation point", FLOW_METRICS,
        "SELECT auto_instance_0 AS client, auto_instance_1 AS server, observation_point, "
        "PerSecond(Sum(byte)) AS bytes_per_s, Avg(retrans_ratio) AS retrans_ratio, "
        "Avg(tcp_establish_fail_ratio) AS conn_fail_ratio, Avg(rtt) AS rtt_us "
        f"FROM network_map WHERE {scope} GROUP BY auto_instance_0, auto_instance_1, observation_point "
        "ORDER BY bytes_per_s DESC LIMIT 500",
        s("client", "server", "observation_point") + n("bytes_per_s", "retrans_ratio", "conn_fail_ratio", "rtt_us"),
        units=(("bytes_per_s", "Bps"), ("retrans_ratio", "percent"), ("conn_fail_ratio", "percent"),
               ("rtt_us", "µs")))
    return Dashboard(
        uid=f"{UID_PREFIX}network-{level}-topology",
        title=f"Network – {level.capitalize()} flow topology",
        description=f"Who talks to whom at {level} level: throughput, retransmissions, connection failures "
                    "and handshake latency per edge, by observation point.",
        tags=("flowscope", "network", "topology"),
        variables=k8s_variables(FLOW_METRICS, "network_map", pod=pod, observation_point=True),
        rows=(
            Row("Topology", (edges,)),
            Row("Per server over time", (
                over_time("Throughput", "PerSecond(Sum(byte))", "Bps"),
                over_time("TCP retransmission ratio", "Avg(retrans_ratio)", "percent"),
                over_time("TCP connection failure ratio", "Avg(tcp_establish_fail_ratio)", "percent"),
                over_time("TCP handshake latency (RTT)", "Avg(rtt)", "µs"),
            )),
            Row("Paths", (paths,)),
        ))


# ---------------------------------------------------------------------------------------------------
# Network: flow logs

def _network_flow_log(level: str) -> Dashboard:
    pod = level == "pod"
    scope = where(POD_ENDS if pod else NODE_ENDS, k8s_filter(pod=pod, observation_point=True), TIME)
    flows = table(
        "Flows", FLOW_LOG,
        "SELECT toString(start_time) AS start_time, auto_instance_0 AS client, auto_instance_1 AS server, "
        "observation_point, Enum(protocol) AS protocol, client_port, server_port, "
        "Enum(close_type) AS close_type, Enum(status) AS status, byte_tx, byte_rx, "
        "retrans AS retransmissions, rtt AS rtt_us, art AS art_us "
        f"FROM l4_flow_log WHERE {scope} ORDER BY start_time DESC LIMIT 500",
        s("start_time", "client", "server", "observation_point", "protocol") + n("client_port", "server_port")
        + s("close_type", "status") + n("byte_tx", "byte_rx", "retransmissions", "rtt_us", "art_us"),
        precision=None, height=12,
        units=(("byte_tx", "bytes"), ("byte_rx", "bytes"), ("rtt_us", "µs"), ("art_us", "µs")))
    return Dashboard(
        uid=f"{UID_PREFIX}network-{level}-flow-log",
        title=f"Network – {level.capitalize()} flow log",
        description=f"Every flow with a {level} at one end: totals, failures, TCP handshake and transfer "
                    "latency over time, and the flow table.",
        tags=("flowscope", "network", "flow-log"),
        variables=k8s_variables(FLOW_LOG, "l4_flow_log", pod=pod, observation_point=True),
        rows=(
            Row("Totals", (stat(
                "Totals", FLOW_LOG,
                "SELECT Sum(log_count) AS flows, Sum(tcp_establish_fail) AS establish_failures, "
                f"Sum(tcp_transfer_fail) AS transfer_failures, Sum(byte) AS bytes FROM l4_flow_log WHERE {scope}",
                ("flows", "establish_failures", "transfer_failures", "bytes"), unit="short", precision=None,
                units=(("bytes", "bytes"),)),)),
            Row("Over time", (
                timeseries("Flows and failures", FLOW_LOG,
                           f"SELECT {BUCKET}, Sum(log_count) AS flows, Sum(tcp_establish_fail) AS establish_failures, "
                           f"Sum(tcp_transfer_fail) AS transfer_failures FROM l4_flow_log WHERE {scope} "
                           "GROUP BY time_60 ORDER BY time_60 LIMIT 10000",
                           ("flows", "establish_failures", "transfer_failures"), unit="short", precision=None),
                timeseries("TCP handshake and transfer latency", FLOW_LOG,
                           f"SELECT {BUCKET}, Avg(rtt) AS rtt, Avg(srt) AS srt, Avg(art) AS art FROM l4_flow_log "
                           f"WHERE {scope} GROUP BY time_60 ORDER BY time_60 LIMIT 10000",
                           ("rtt", "srt", "art"), unit="µs", precision=None,
                           description="rtt: TCP handshake; srt: data → ACK (system); art: request → response"),
            )),
            Row("Flow log", (flows,)),
        ))


# ---------------------------------------------------------------------------------------------------
# Application

def _service_overview() -> Dashboard:
    scope = where(k8s_filter(pod=True, protocol=True, side="_1"), TIME)
    red = ("Sum(request) AS requests, PerSecond(Sum(request)) AS request_rate, Sum(server_error) AS server_errors, "
           "Sum(client_error) AS client_errors, Avg(server_error_ratio) AS server_error_ratio, "
           "Avg(client_error_ratio) AS client_error_ratio, Avg(rrt) AS latency_avg, "
           "Percentile(rrt, 0.9) AS latency_p90, Percentile(rrt, 0.99) AS latency_p99")
    red_cols = n("requests", "request_rate", "server_errors", "client_errors", "server_error_ratio",
                 "client_error_ratio", "latency_avg", "latency_p90", "latency_p99")
    red_units = (("request_rate", "reqps"), ("server_error_ratio", "percent"), ("client_error_ratio", "percent"),
                 ("latency_avg", "µs"), ("latency_p90", "µs"), ("latency_p99", "µs"))
    return Dashboard(
        uid=UID_PREFIX + "application-service-overview",
        title="Application – Service overview",
        description="RED per service, pod and protocol (requests, errors, latency avg/p90/p99), measured on "
                    "the serving side; client vs server error ratios.",
        tags=("flowscope", "application", "red"),
        variables=k8s_variables(FLOW_METRICS, "application_map", pod=True, protocol=True),
        rows=(
            Row("Totals", (stat(
                "Totals", FLOW_METRICS,
                "SELECT Sum(request) AS requests, Sum(client_error) AS client_errors, Sum(server_error) AS "
                "server_errors, Sum(timeout) AS timeouts, Avg(error_ratio) AS error_ratio, Avg(rrt) AS latency_avg, "
                f"Percentile(rrt, 0.99) AS latency_p99 FROM application_map WHERE {scope}",
                ("requests", "client_errors", "server_errors", "timeouts", "error_ratio", "latency_avg", "latency_p99"),
                unit="short", units=(("error_ratio", "percent"), ("latency_avg", "µs"), ("latency_p99", "µs"))),)),
            Row("Over time", (
                timeseries("Requests per service", FLOW_METRICS,
                           f"SELECT {BUCKET}, auto_service_1 AS service, PerSecond(Sum(request)) AS request_rate "
                           f"FROM application_map WHERE {scope} GROUP BY time_60, auto_service_1 "
                           "ORDER BY time_60 LIMIT 10000", ("request_rate",), labels=("service",), unit="reqps"),
                timeseries("Errors per service", FLOW_METRICS,
                           f"SELECT {BUCKET}, auto_service_1 AS service, Sum(error) AS errors "
                           f"FROM application_map WHERE {scope} GROUP BY time_60, auto_service_1 "
                           "ORDER BY time_60 LIMIT 10000", ("errors",), labels=("service",), unit="short"),
                timeseries("Latency (avg, p90, p99)", FLOW_METRICS,
                           f"SELECT {BUCKET}, Avg(rrt) AS avg, Percentile(rrt, 0.9) AS p90, "
                           f"Percentile(rrt, 0.99) AS p99 FROM application_map WHERE {scope} GROUP BY time_60 "
                           "ORDER BY time_60 LIMIT 10000", ("avg", "p90", "p99"), unit="µs"),
                timeseries("Client vs server error ratio", FLOW_METRICS,
                           f"SELECT {BUCKET}, Avg(client_error_ratio) AS client_error_ratio, "
                           f"Avg(server_error_ratio) AS server_error_ratio FROM application_map WHERE {scope} "
                           "GROUP BY time_60 ORDER BY time_60 LIMIT 10000",
                           ("client_error_ratio", "server_error_ratio"), unit="percent"),
            )),
            Row("Services", (
                table("Per service", FLOW_METRICS,
                      f"SELECT auto_service_1 AS service, {red} FROM application_map WHERE {scope} "
                      "GROUP BY auto_service_1 ORDER BY requests DESC LIMIT 500",
                      s("service") + red_cols, units=red_units),
                table("Per pod", FLOW_METRICS,
                      f"SELECT pod_ns_1 AS namespace, pod_1 AS pod, {red} FROM application_map "
                      f"WHERE pod_id_1 != 0 AND {scope} GROUP BY pod_ns_1, pod_1 ORDER BY requests DESC LIMIT 500",
                      s("namespace", "pod") + red_cols, units=red_units),
                table("Per protocol", FLOW_METRICS,
                      f"SELECT Enum(l7_protocol) AS protocol, {red} FROM application_map WHERE {scope} "
                      "GROUP BY l7_protocol ORDER BY requests DESC LIMIT 100",
                      s("protocol") + red_cols, units=red_units),
            )),
        ))


def _call_topology() -> Dashboard:
    scope = where(k8s_filter(pod=True, protocol=True), TIME)
    return Dashboard(
        uid=UID_PREFIX + "application-call-topology",
        title="Application – Microservice call topology",
        description="Calls between services (L7): request rate, error ratio and latency per edge.",
        tags=("flowscope", "application", "topology"),
        variables=k8s_variables(FLOW_METRICS, "application_map", pod=True, protocol=True),
        rows=(
            Row("Topology", (node_graph(
                "Service calls", FLOW_METRICS,
                "SELECT concat(auto_service_0, ' -> ', auto_service_1) AS id, auto_service_0 AS source, "
                "auto_service_1 AS target, PerSecond(Sum(request)) AS mainstat, Avg(error_ratio) AS secondarystat, "
                "Sum(request) AS detail__requests, Sum(error) AS detail__errors, Avg(rrt) AS detail__latency_avg_us, "
                "Max(rrt_max) AS detail__latency_max_us "
                f"FROM application_map WHERE {scope} GROUP BY auto_service_0, auto_service_1 "
                "ORDER BY mainstat DESC LIMIT 1000",
                ("detail__requests", "detail__errors", "detail__latency_avg_us", "detail__latency_max_us"),
                main_unit="reqps", secondary_unit="percent",
                description="Edges: caller → service; main stat requests/s, secondary error ratio (%)."),)),
            Row("Calls", (
                table("Calls per edge and protocol", FLOW_METRICS,
                      "SELECT auto_service_0 AS client, auto_service_1 AS server, Enum(l7_protocol) AS protocol, "
                      "PerSecond(Sum(request)) AS request_rate, Avg(error_ratio) AS error_ratio, "
                      "Avg(rrt) AS latency_avg, Max(rrt_max) AS latency_max "
                      f"FROM application_map WHERE {scope} GROUP BY auto_service_0, auto_service_1, l7_protocol "
                      "ORDER BY request_rate DESC LIMIT 500",
                      s("client", "server", "protocol") + n("request_rate", "error_ratio", "latency_avg", "latency_max"),
                      units=(("request_rate", "reqps"), ("error_ratio", "percent"), ("latency_avg", "µs"),
                             ("latency_max", "µs"))),
                timeseries("Request rate by protocol", FLOW_METRICS,
                           f"SELECT {BUCKET}, Enum(l7_protocol) AS protocol, PerSecond(Sum(request)) AS request_rate "
                           f"FROM application_map WHERE {scope} GROUP BY time_60, l7_protocol ORDER BY time_60 "
                           "LIMIT 10000", ("request_rate",), labels=("protocol",), unit="reqps", width=24),
            )),
        ))


_TRACE_LINK = Link("trace_id", "Open trace",
                   f"/d/{TRACING_UID}?var-trace_id=${{__value.raw}}&${{__url_time_range}}")


def _call_log() -> Dashboard:
    scope = where(k8s_filter(pod=True, protocol=True), TIME)
    return Dashboard(
        uid=UID_PREFIX + "application-call-log",
        title="Application – Service call log",
        description="Every request: totals, errors, latency distribution and the request table; a trace id "
                    "opens the trace.",
        tags=("flowscope", "application", "request-log"),
        variables=k8s_variables(FLOW_LOG, "l7_flow_log", pod=True, protocol=True),
        links=(TRACING_UID,),
        rows=(
            Row("Totals", (stat(
                "Totals", FLOW_LOG,
                "SELECT Sum(request) AS requests, Sum(client_error) AS client_errors, Sum(server_error) AS "
                "server_errors, Sum(timeout) AS timeouts, Avg(response_duration) AS latency_avg, "
                f"Max(response_duration) AS latency_max FROM l7_flow_log WHERE {scope}",
                ("requests", "client_errors", "server_errors", "timeouts", "latency_avg", "latency_max"),
                unit="short", precision=None, units=(("latency_avg", "µs"), ("latency_max", "µs"))),)),
            Row("Over time", (
                timeseries("Requests and errors", FLOW_LOG,
                           f"SELECT {BUCKET}, Sum(request) AS requests, Sum(error) AS errors FROM l7_flow_log "
                           f"WHERE {scope} GROUP BY time_60 ORDER BY time_60 LIMIT 10000",
                           ("requests", "errors"), unit="short", precision=None),
                table("Latency histogram", FLOW_LOG,
                      f"SELECT response_duration AS latency_us FROM l7_flow_log WHERE response_duration > 0 "
                      f"AND {scope} LIMIT 10000", n("latency_us"), precision=None, width=12, height=8,
                      kind="histogram", units=(("latency_us", "µs"),)),
            )),
            Row("Requests", (table(
                "Request log", FLOW_LOG,
                "SELECT toString(start_time) AS start_time, auto_instance_0 AS client, auto_instance_1 AS server, "
                "Enum(l7_protocol) AS protocol, request_type AS method, request_domain AS domain, "
                "request_resource AS resource, Enum(response_status) AS status, response_code AS code, "
                "response_duration AS latency_us, trace_id "
                f"FROM l7_flow_log WHERE {scope} ORDER BY start_time DESC LIMIT 500",
                s("start_time", "client", "server", "protocol", "method", "domain", "resource", "status")
                + n("code", "latency_us") + s("trace_id"),
                precision=None, height=12, links=(_TRACE_LINK,), units=(("latency_us", "µs"),)),)),
        ))


def _tracing() -> Dashboard:
    scope = where(
        k8s_filter(),
        text_filter("trace_id", "trace_id = {v}"),
        text_filter("service", "(auto_service_0 = {v} OR auto_service_1 = {v})"),
        text_filter("endpoint", "endpoint LIKE {v}"),
        TIME)
    return Dashboard(
        uid=TRACING_UID,
        title="Distributed tracing",
        description="Requests filtered by trace id, service or endpoint (glob: *), and the trace view "
                    "through the Jaeger datasource.",
        tags=("flowscope", "tracing"),
        variables=k8s_variables(FLOW_LOG, "l7_flow_log") + (
            Variable("trace_id", "Trace ID"), Variable("service", "Service"), Variable("endpoint", "Endpoint")),
        rows=(
            Row("Requests", (table(
                "Request list", FLOW_LOG,
                "SELECT toString(start_time) AS start_time, trace_id, span_id, auto_service_0 AS client, "
                "auto_service_1 AS server, Enum(l7_protocol) AS protocol, request_type AS method, endpoint, "
                "request_resource AS resource, Enum(response_status) AS status, response_code AS code, "
                "response_duration AS latency_us "
                f"FROM l7_flow_log WHERE {scope} ORDER BY start_time DESC LIMIT 200",
                s("start_time", "trace_id", "span_id", "client", "server", "protocol", "method", "endpoint",
                  "resource", "status") + n("code", "latency_us"),
                precision=None, height=10, links=(_TRACE_LINK,), units=(("latency_us", "µs"),)),)),
            Row("Trace", (Panel("traces", "Trace ${trace_id}", width=24, height=14, trace_id="${trace_id}",
                                description="Grafana's Jaeger datasource on flowscope's /jaeger API"),)),
            Row("DeepFlow trace", (Panel(
                "deepflow-trace", "Spans of ${trace_id} (DeepFlow L7FlowTracing)", width=24, height=12,
                trace_id="${trace_id:json}",
                fields=n("id", "parent_id", "start_time_us") + s(
                    "tap_side", "auto_instance", "auto_service", "app_service", "l7_protocol_str", "request_type",
                    "endpoint") + n("response_code", "duration", "selftime"),
                units=(("duration", "µs"), ("selftime", "µs")),
                description="The same trace from DeepFlow's tracing API (POST /v1/stats/querier/L7FlowTracing, "
                            "what DeepFlow's own tracing panels call): every span with its parent, capture "
                            "point and self time."),)),
        ))


# ---------------------------------------------------------------------------------------------------
# Troubleshooting

def _database() -> Dashboard:
    scope = where(DATABASES, k8s_filter(pod=True), TIME)
    return Dashboard(
        uid=UID_PREFIX + "troubleshooting-database",
        title="Troubleshooting – Database",
        description="MySQL and Redis: slow and top statements, traffic and requests by client service, errors.",
        tags=("flowscope", "troubleshooting", "database"),
        variables=k8s_variables(FLOW_LOG, "l7_flow_log", pod=True),
        rows=(
            Row("Statements", (
                table("Slow statements", FLOW_LOG,
                      "SELECT toString(start_time) AS start_time, auto_service_0 AS client, "
                      "auto_instance_1 AS server, Enum(l7_protocol) AS protocol, request_type AS command, "
                      "request_resource AS statement, response_duration AS latency_us, "
                      "Enum(response_status) AS status, response_exception AS error "
                      f"FROM l7_flow_log WHERE {scope} ORDER BY latency_us DESC LIMIT 100",
                      s("start_time", "client", "server", "protocol", "command", "statement") + n("latency_us")
                      + s("status", "error"), precision=None, units=(("latency_us", "µs"),)),
                table("Top statements", FLOW_LOG,
                      "SELECT request_resource AS statement, Enum(l7_protocol) AS protocol, Sum(request) AS calls, "
                      "Avg(response_duration) AS latency_avg, Max(response_duration) AS latency_max, "
                      f"Sum(error) AS errors FROM l7_flow_log WHERE {scope} GROUP BY request_resource, l7_protocol "
                      "ORDER BY calls DESC LIMIT 50",
                      s("statement", "protocol") + n("calls", "latency_avg", "latency_max", "errors"),
                      precision=None, units=(("latency_avg", "µs"), ("latency_max", "µs"))),
            )),
            Row("By client service", (
                timeseries("Database requests by client service", FLOW_METRICS,
                           f"SELECT {BUCKET}, auto_service_0 AS client, PerSecond(Sum(request)) AS request_rate "
                           f"FROM application_map WHERE {scope} GROUP BY time_60, auto_service_0 ORDER BY time_60 "
                           "LIMIT 10000", ("request_rate",), labels=("client",), unit="reqps"),
                timeseries("Database traffic by client service", FLOW_LOG,
                           f"SELECT {BUCKET}, auto_service_0 AS client, Sum(byte) AS bytes FROM l4_flow_log "
                           f"WHERE {scope} GROUP BY time_60, auto_service_0 ORDER BY time_60 LIMIT 10000",
                           ("bytes",), labels=("client",), unit="bytes", precision=None),
            )),
            Row("Errors", (table(
                "MySQL and Redis errors", FLOW_LOG,
                "SELECT Enum(l7_protocol) AS protocol, auto_service_0 AS client, auto_instance_1 AS server, "
                "response_code AS code, response_exception AS error, Sum(log_count) AS count "
                f"FROM l7_flow_log WHERE response_status IN (3, 4) AND {scope} "
                "GROUP BY l7_protocol, auto_service_0, auto_instance_1, response_code, response_exception "
                "ORDER BY count DESC LIMIT 200",
                s("protocol", "client", "server") + n("code") + s("error") + n("count"), precision=None),)),
        ))


def _errors() -> Dashboard:
    l7 = where(k8s_filter(pod=True, protocol=True, side="_1"), TIME)
    l4 = where(k8s_filter(pod=True, side="_1"), TIME)
    failures = ("Sum(tcp_establish_fail) AS establish_failures, Sum(tcp_transfer_fail) AS transfer_failures, "
                "Sum(server_syn_miss) AS syn_unanswered, Sum(server_reset) AS syn_rst, Sum(closed_flow) AS closed")
    failure_cols = n("establish_failures", "transfer_failures", "syn_unanswered", "syn_rst", "closed")

    def failed_by(title: str, key: str, alias: str, extra: str = "") -> Panel:
        return table(title, FLOW_METRICS,
                     f"SELECT {key} AS {alias}, {failures} FROM network_map WHERE {where(extra, l4)} "
                     f"GROUP BY {key} ORDER BY establish_failures DESC LIMIT 200",
                     (s(alias) if alias != "server_port" else n(alias)) + failure_cols, width=8)

    return Dashboard(
        uid=UID_PREFIX + "troubleshooting-errors",
        title="Troubleshooting – Errors by port and endpoint",
        description="Error responses by server port and endpoint; failed connections by server port, pod and "
                    "node; SYNs never answered (NetworkPolicy drop suspects) vs RSTs.",
        tags=("flowscope", "troubleshooting", "errors"),
        variables=k8s_variables(FLOW_METRICS, "application_map", pod=True, protocol=True),
        rows=(
            Row("Error responses", (table(
                "Error responses by server port and endpoint", FLOW_METRICS,
                "SELECT server_port, endpoint, Enum(l7_protocol) AS protocol, Sum(request) AS requests, "
                "Sum(client_error) AS client_errors, Sum(server_error) AS server_errors, Sum(timeout) AS timeouts, "
                f"Avg(error_ratio) AS error_ratio FROM application_map WHERE {l7} "
                "GROUP BY server_port, endpoint, l7_protocol HAVING Sum(error) + Sum(timeout) > 0 "
                "ORDER BY server_errors DESC LIMIT 200",
                n("server_port") + s("endpoint", "protocol")
                + n("requests", "client_errors", "server_errors", "timeouts", "error_ratio"),
                units=(("error_ratio", "percent"),)),)),
            Row("Failed connections", (
                failed_by("By server port", "server_port", "server_port"),
                failed_by("By pod", "pod_1", "pod", "pod_id_1 != 0"),
                failed_by("By node", "pod_node_1", "node", "pod_node_id_1 != 0"),
            )),
            Row("SYNs never answered vs RSTs", (
                timeseries("SYN unanswered vs RST", FLOW_METRICS,
                           f"SELECT {BUCKET}, Sum(server_syn_miss) AS syn_unanswered, Sum(server_reset) AS syn_rst, "
                           f"Sum(tcp_rst_fail) AS rst FROM network_map WHERE {l4} GROUP BY time_60 "
                           "ORDER BY time_60 LIMIT 10000", ("syn_unanswered", "syn_rst", "rst"), unit="short"),
                table("Suspect connections", FLOW_LOG,
                      "SELECT auto_instance_0 AS client, auto_instance_1 AS server, server_port, "
                      "Enum(close_type) AS close_type, Sum(log_count) AS flows, Max(retrans_syn) AS syn_retransmissions "
                      f"FROM l4_flow_log WHERE close_type IN (7, 15, 18, 19, 2, 9) AND {l4} "
                      "GROUP BY auto_instance_0, auto_instance_1, server_port, close_type ORDER BY flows DESC LIMIT 200",
                      s("client", "server") + n("server_port") + s("close_type") + n("flows", "syn_retransmissions"),
                      precision=None, width=12,
                      description="close type 7: SYNs never answered (what a NetworkPolicy drop looks like); "
                                  "15: SYN answered by RST; 18/19: RST during the handshake; 2/9: RST later"),
            )),
        ))


def dashboards() -> list[Dashboard]:
    """All dashboards, in the order the issue lists them."""
    return [
        _network_topology("node"), _network_topology("pod"),
        _network_flow_log("node"), _network_flow_log("pod"),
        _service_overview(), _call_topology(), _call_log(), _tracing(),
        _database(), _errors(),
    ]
