"""Datasource latency: DeepFlow SQL translation time, and the dashboard queries end to end (HTTP →
translation → ClickHouse → JSON) next to the same ClickHouse SQL run directly on the client.

    .venv/bin/python bench/datasource.py [--rows 10000000] [--runs 15] [--rebuild] [--client process|raw|stdlib|httpx]

Store (cached under bench/out/datasource-<rows>/, rebuilt when missing or with --rebuild):
``flowscope collect`` over every fixture pcap with the lab inventory (pods, Services, hosts), then
INSERT … SELECT inside ClickHouse multiplies those rows — times spread over 24 h, client IPs and
ports shifted — to ``--rows`` l4_flow_log and ``--rows`` l7_flow_log rows, and ~1M rows in each
flow_metrics .1m table (the single-side network/application tables seeded with the tagged server
ends of the two-sided ones: the fixtures have no pod NIC as capture point). ``_ingest_time`` is set
far ahead so the tables' TTL never empties the cache.

Queries: the DeepFlow SQL of the stock dashboards (reference/grafana-integration.md §2.1 — variables,
saved panel SQL and the SDK-generated G1–G8) with the lab's names, over the last hour of the data.
Each is measured
  * end to end: POST /v1/query/ on a real uvicorn server in this process, from a client in a child
    process, as Grafana is one (keep-alive; a bare socket that sends the encoded request and reads the
    answer to its Content-Length, timed by the child: in this process the client would share the GIL
    with the server, and http.client spends ~0.2 ms of its own per request here, httpx ~0.8 ms — the
    client's costs, not the datasource's; ``--client raw|stdlib|httpx`` measure in this process),
    with a new time range every request (as Grafana refreshes: the exact-text cache misses, the
    shape cache hits), and again with the same statement (exact-text cache hit, "cached");
  * direct: the ClickHouse SQL the dialect produces for another new range, ``client.query`` on the
    same client (the baseline; ClickHouse answers a statement it has just run a little faster, so the
    baseline is never the statement the server just ran), and for the "again" figure the very SQL the
    server ran, right after it; the overhead ratios are end-to-end / direct.
The HTTP floor: a bare ASGI app on the same uvicorn that runs the same ClickHouse SQL on a worker
thread and answers a few bytes, measured the same way (what HTTP, the server and the hand-offs
cost on this machine before any datasource code).
Translation time over the dashboard queries and the reference's §7 examples (n/a when the dialect is
not importable): cold (``translate_uncached``: parse, translate, check, build the shape's template —
what a new statement costs) and shape-cached (``translate`` of the dashboard queries with a new time
range each time, the shape cache warm — what a Grafana refresh costs).
Goal: overhead ≤ 5 %, dashboard query p95 ≤ 500 ms.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import DATA, OUT, copy_rows, result

FLOWSCOPE = Path(sys.executable).with_name("flowscope")
DAY = 86400
METRIC_ROWS = 1_000_000
FAR_FUTURE = "toDateTime('2100-01-01 00:00:00')"

# The stock dashboards' DeepFlow SQL (grafana-integration.md §2.1) with the lab inventory's names:
# cluster lab, namespace shop, workload web/redis, host netlab-cli. {F}/{T}: the panel's time range.
DASHBOARD = [
    ("var-cluster", "flow_metrics", "1m",
     "SELECT pod_cluster as `value`, pod_cluster as `display_name` FROM `network.1m` WHERE exist(pod_cluster) "
     "AND time >= {F} AND time <= {T} GROUP BY `value` LIMIT 999999999999"),
    ("var-namespace", "flow_metrics", "1m",
     "SELECT pod_ns as value, pod_ns as display_name FROM `network.1m` WHERE exist(pod_ns) AND ('lab' IN "
     "('__disabled') OR 'lab' IN ('__any') OR pod_cluster IN ('lab')) AND time >= {F} AND time <= {T} "
     "GROUP BY `value` LIMIT 999999999999"),
    ("var-workload", "flow_metrics", "1m",
     "SELECT pod_group as `value`, pod_group as `display_name` FROM `network.1m` WHERE exist(pod_group) AND "
     "('lab' IN ('__any', '__disabled') OR pod_cluster IN ('lab')) AND ('shop' IN ('__any', '__disabled') OR "
     "pod_ns IN ('shop')) AND time >= {F} AND time <= {T} GROUP BY `value` LIMIT 999999999999"),
    ("dubbo-topology", "flow_metrics", "1m",
     "SELECT PerSecond(Avg(`request`)) AS `request_rate`, Avg(`rrt`) AS `delay_avg`, Max(`rrt_max`) AS "
     "`delay_max`, Sum(`server_error`) AS `server_error_sum`, Avg(`timeout`) AS `time_out`, "
     "node_type(auto_service_0) AS `client_node_type`, icon_id(auto_service_0) AS `client_icon_id`, "
     "auto_service_id_0, auto_service_0, node_type(auto_service_1) AS `server_node_type`, "
     "icon_id(auto_service_1) AS `server_icon_id`, auto_service_id_1, auto_service_1, Enum(observation_point), "
     "observation_point FROM application_map WHERE auto_service_id_1!=0 AND l7_protocol IN (40) AND "
     "time>='{F}' AND time<='{T}' GROUP BY auto_service_0, auto_service_1, observation_point, auto_service_id_0, "
     "auto_service_id_1, `client_node_type`, `server_node_type` LIMIT 1000"),
    ("service-red", "flow_metrics", "1m",
     "SELECT PerSecond(Avg(`request`)) AS `Request Rate`, Avg(`rrt`) AS `Delay Avg`, Percentile(`rrt`,0.75) AS "
     "`Delay P75`, Percentile(`rrt`,0.9) AS `Delay P90`, Percentile(`rrt`,0.99) AS `Delay P99`, "
     "Avg(`client_error_ratio`) AS `Client Error Ratio`, Avg(`server_error_ratio`) AS `Server Error Ratio`, "
     "app_service, auto_service, Enum(signal_source), auto_service_id, node_type(auto_service) AS `node_type`, "
     "icon_id(auto_service) AS `icon_id`, signal_source FROM application WHERE auto_service_id!=0 AND "
     "app_service LIKE('*') AND (Enum(signal_source) = 'Packet' OR Enum(signal_source) = 'xFlow' OR "
     "Enum(signal_source) = 'eBPF' OR Enum(signal_source) = 'OTel') AND time>='{F}' AND time<='{T}' "
     "GROUP BY auto_service, app_service, signal_source, auto_service_id, `node_type` LIMIT 1000"),
    ("service-call-log", "flow_log", None,
     "SELECT `response_duration` AS `Response Delay`, auto_service_0, auto_service_1, Enum(l7_protocol), "
     "request_type, request_domain, request_resource, Enum(response_status), response_code, response_exception, "
     "toString(_id), auto_service_id_0, auto_service_id_1 FROM l7_flow_log WHERE `endpoint` LIKE('*') AND "
     "exist(`l7_protocol`) AND exist(pod_cluster_id_1) AND exist(pod_ns_id_1) AND exist(auto_service_id_1) AND "
     "`observation_point` IN ('rest','s') AND time>={F} AND time<={T} LIMIT 1000"),
    ("top-n-endpoints", "flow_log", None,
     "SELECT Sum(`request`) AS `request`, endpoint FROM l7_flow_log WHERE `pod_cluster_0` = 'lab' AND "
     "`pod_group_0` = 'web' AND time>={F} AND time<={T} GROUP BY endpoint ORDER BY `request` desc LIMIT 10"),
    ("pod-flow-topology", "flow_metrics", "1m",
     "SELECT PerSecond((Avg(`byte`)*8)) AS `bps`, Avg(`retrans_ratio`) AS `Avg(retrans_ratio)`, "
     "Avg(`tcp_establish_fail_ratio`) AS `Avg(tcp_establish_fail_ratio)`, Avg(`rtt`) AS `Avg(rtt)`, Avg(`art`) AS "
     "`Avg(art)`, node_type(auto_instance_0) AS `client_node_type`, icon_id(auto_instance_0) AS `client_icon_id`, "
     "auto_instance_id_0, auto_instance_0, node_type(pod_1) AS `server_node_type`, icon_id(pod_1) AS "
     "`server_icon_id`, pod_id_1, pod_1, Enum(observation_point), observation_point FROM network_map WHERE "
     "pod_cluster_1 = 'lab' AND pod_ns_1 = 'shop' AND pod_group_1 = 'redis' AND time>='{F}' AND time<='{T}' "
     "GROUP BY auto_instance_0, pod_1, observation_point, auto_instance_id_0, pod_id_1, `client_node_type`, "
     "`server_node_type` LIMIT 100"),
    ("pod-throughput-series", "flow_metrics", "1m",
     "SELECT PerSecond((Avg(`byte`)*8)) AS `PerSecond(Math(Avg(byte)*8))`, time(time, 60) AS `time_60`, "
     "node_type(auto_instance_0) AS `client_node_type`, icon_id(auto_instance_0) AS `client_icon_id`, "
     "auto_instance_id_0, auto_instance_0, node_type(pod_1) AS `server_node_type`, icon_id(pod_1) AS "
     "`server_icon_id`, pod_id_1, pod_1, Enum(observation_point), observation_point FROM network_map WHERE "
     "pod_cluster_1 = 'lab' AND pod_ns_1 = 'shop' AND time>='{F}' AND time<='{T}' GROUP BY `time_60`, "
     "auto_instance_0, pod_1, observation_point, auto_instance_id_0, pod_id_1, `client_node_type`, "
     "`server_node_type` SLIMIT 20 LIMIT 1000"),
    ("node-topology", "flow_metrics", "1m",
     "SELECT PerSecond((Avg(`byte`)*8)) AS `bps`, Avg(`rtt`) AS `Avg(rtt)`, node_type(chost_0) AS "
     "`client_node_type`, icon_id(chost_0) AS `client_icon_id`, chost_id_0, chost_0, node_type(auto_instance_1) "
     "AS `server_node_type`, icon_id(auto_instance_1) AS `server_icon_id`, auto_instance_id_1, auto_instance_1, "
     "Enum(observation_point), observation_point FROM network_map WHERE chost_0 = 'netlab-cli' AND "
     "time>='{F}' AND time<='{T}' GROUP BY chost_0, auto_instance_1, observation_point, chost_id_0, "
     "auto_instance_id_1, `client_node_type`, `server_node_type` LIMIT 100"),
    ("pod-flow-log", "flow_log", None,
     "SELECT `byte_tx` AS `byte_tx`, `byte_rx` AS `byte_rx`, `retrans_tx` AS `retrans_tx`, `retrans_rx` AS "
     "`retrans_rx`, `rtt` AS `rtt`, `art` AS `art`, auto_instance_0, auto_instance_1, toString(start_time) AS "
     "`start_time`, Enum(protocol), client_port, Enum(server_port), Enum(observation_point), Enum(status), "
     "auto_instance_id_0, auto_instance_id_1 FROM l4_flow_log WHERE (pod_cluster_0 = 'lab' OR pod_cluster_1 = "
     "'lab') AND (pod_ns_0 = 'shop' OR pod_ns_1 = 'shop') AND (pod_group_0 = 'web' OR pod_group_1 = 'web') AND "
     "time>='{F}' AND time<='{T}' LIMIT 500"),
    ("flow-log-client-errors", "flow_log", None,
     "SELECT Sum(`log_count`) AS `Sum(client errors)`, time(time, 60) AS `time_60` FROM l4_flow_log WHERE "
     "status IN (4) AND (pod_cluster_0 = 'lab' OR pod_cluster_1 = 'lab') AND time>='{F}' AND time<='{T}' "
     "GROUP BY `time_60` LIMIT 1000"),
    ("service-call-topology", "flow_metrics", "1m",
     "SELECT PerSecond(Avg(`request`)) AS `request_rate`, Avg(`server_error_ratio`) AS "
     "`Avg(server_error_ratio)`, Avg(`rrt`) AS `Avg(rrt)`, node_type(auto_instance_0) AS `client_node_type`, "
     "icon_id(auto_instance_0) AS `client_icon_id`, auto_instance_id_0, auto_instance_0, node_type(pod_1) AS "
     "`server_node_type`, icon_id(pod_1) AS `server_icon_id`, pod_id_1, pod_1, Enum(observation_point), "
     "observation_point FROM application_map WHERE pod_cluster_1 = 'lab' AND l7_protocol IN (20) AND "
     "time>='{F}' AND time<='{T}' GROUP BY auto_instance_0, pod_1, observation_point, auto_instance_id_0, "
     "pod_id_1, `client_node_type`, `server_node_type` LIMIT 100"),
    ("request-log", "flow_log", None,
     "SELECT toString(start_time) AS `start_time`, auto_instance_0, auto_instance_1, Enum(observation_point), "
     "Enum(l7_protocol), l7_protocol_str, request_type, request_domain, request_resource, Enum(response_status), "
     "response_code, response_duration FROM l7_flow_log WHERE (pod_cluster_0 = 'lab' OR pod_cluster_1 = 'lab') "
     "AND request_type = 'GET' AND response_status IN (0) AND time>='{F}' AND time<='{T}' LIMIT 1000"),
    ("tracing-request-list", "flow_log", None,
     "SELECT `response_duration` AS `response_duration`, auto_instance_0, auto_instance_1, ip_0, ip_1, "
     "toString(start_time) AS `start_time`, Enum(capture_nic_type), Enum(l7_protocol), request_type, "
     "request_domain, request_resource, Enum(response_status), response_code, response_exception, trace_id, "
     "span_id, server_port, endpoint, toString(_id), auto_instance_id_0, auto_instance_id_1 FROM l7_flow_log "
     "WHERE (pod_cluster_0 = 'lab' OR pod_cluster_1 = 'lab') AND time>={F} AND time<={T} LIMIT 100"),
]

# More dialect inputs for the translation timing: deepflow-querier.md §7 on flowscope's databases.
EXAMPLES = [
    ("flow_log", None, "select byte from l4_flow_log limit 1"),
    ("flow_log", None, "select Sum(byte)/Time_interval as sum_byte, time(time, 120) as time_120 from l4_flow_log "
                       "group by time_120 having Sum(byte)>=0 limit 10 offset 20"),
    ("flow_log", None, "select Uniq(ip_0, region_0, region_id_0) as uniq_0 from l4_flow_log limit 1"),
    ("flow_log", None, "select Avg(byte_tx) as avg_byte_tx from l4_flow_log where `time`>=60 and `time`<=180 "
                       "having Spread(byte_tx)>=0 limit 1"),
    ("flow_log", None, "select Rspread(rtt) as rspread_rtt from l4_flow_log limit 1"),
    ("flow_log", None, "select Apdex(rtt, 100) as apdex_rtt_100 from l4_flow_log limit 1"),
    ("flow_log", None, "select ((Max(byte_tx))+Avg(rtt ))/(1-Avg(rtt )) as avg_rtt from l4_flow_log limit 1"),
    ("flow_log", None, "select Max(byte) as 'max_byte',region_0,chost_1,lb_1 from l4_flow_log "
                       "group by region_0,chost_1,lb_1 limit 1"),
    ("flow_log", None, "select time(time, 60) as toi, PerSecond(Sum(byte)+100) as persecond_max_byte_100 from "
                       "l4_flow_log group by toi limit 1"),
    ("flow_log", None, "select auto_instance_0,ip_0 from l7_flow_log where ip_0='1.1.1.1' and auto_instance_0='abc' "
                       "and auto_instance_0 regexp 'abc' and auto_instance_id_0=2 group by auto_instance_0,ip_0"),
    ("flow_log", None, "select byte from l4_flow_log where ip_0>=('1.1.1.1/24','2.2.2.2') and ip_0<='::/24'"),
    ("flow_log", None, "select request from l7_flow_log where Enum(tap_side) like 'xxx' limit 0, 50"),
    ("flow_log", None, "select Histogram(Sum(byte),10) AS histo from l4_flow_log"),
    ("flow_metrics", None, "select Avg(`rtt`) AS `Avg(rtt)`,Max(`byte`) AS `Max(byte)`,region_0 from "
                           "vtap_flow_edge_port where `time` >= 60 AND `time` <= 180 group by region_0 limit 1"),
    ("flow_metrics", "1m", "SELECT TopK(`region`,3) AS `TopK_3(区域)` FROM `vtap_app_port` WHERE "
                           "(time>=1705370520 AND time<=1705371300)"),
    ("flow_metrics", "1m", "SELECT time(time,1,1,0) as toi, PerSecond(Avg(`byte`)) AS `流量速率`, pod as pod FROM "
                           "`vtap_flow_port` WHERE time>=1705040184 AND time<=1705045184 GROUP BY toi, pod "
                           "ORDER BY toi desc SLIMIT 5"),
    (None, None, "show databases"),
    ("flow_log", None, "show tag pod values from l7_flow_log where display_name like '*abc*' limit 100 offset 100"),
    ("flow_metrics", None, "show metrics functions"),
    ("flow_log", None, "SELECT Sum(`request`) AS `request`, endpoint FROM l7_flow_log WHERE `pod_cluster_0` = "
                       "'k8s-d-rUL3jSx3ft' AND `pod_group_0` = 'istio-ingressgateway' AND time>=1716169621 AND "
                       "time<=1716170521 GROUP BY endpoint ORDER BY `request` desc LIMIT 10"),
]


def percentile(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, round(q * (len(xs) - 1)))]


# -- the store -----------------------------------------------------------------------------------------

def build_store(root: Path, rows: int) -> None:
    """Seed with the collector over the fixtures, then multiply inside ClickHouse."""
    from flowscope.storage import connect

    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    pcaps = sorted(str(p) for p in DATA.glob("*.pcap")) + [str(DATA / "k8s_pods.pcapng"),
                                                            str(DATA / "k8s_churn.pcapng")]
    t0 = time.monotonic()
    print(f"seeding: flowscope collect over {len(pcaps)} fixture captures with the lab inventory…", flush=True)
    p = subprocess.run([str(FLOWSCOPE), "collect", "--pcap", *pcaps, "--inventory",
                        str(DATA / "inventory" / "lab.yaml"), "--metadata", f"sqlite:///{root / 'metadata.db'}",
                        "--clickhouse", f"chdb://{root / 'chdb'}"], cwd=root, capture_output=True, text=True)
    if p.returncode:
        raise SystemExit(f"flowscope collect failed:\n{p.stderr}")
    client = connect(f"chdb://{root / 'chdb'}")
    try:
        _server_sides(client)
        end = int(time.time()) // 60 * 60
        for table, target, kind in (("flow_log.l4_flow_log", rows, "log"), ("flow_log.l7_flow_log", rows, "log"),
                                    ("flow_metrics.`network.1m`", METRIC_ROWS, "metric"),
                                    ("flow_metrics.`network_map.1m`", METRIC_ROWS, "metric"),
                                    ("flow_metrics.`application.1m`", METRIC_ROWS, "metric"),
                                    ("flow_metrics.`application_map.1m`", METRIC_ROWS, "metric")):
            _multiply(client, table, target, kind, end)
            print(f"  {time.monotonic() - t0:5.0f} s  {table}: {client.command(f'SELECT count() FROM {table}'):,} rows",
                  flush=True)
    finally:
        client.close()
    (root / "complete").write_text(f"{rows}\n")


def _server_sides(client) -> None:
    """The fixtures were captured where no pod NIC is the capture point (a bridge, netlab's links), so
    the collector wrote the pod-tagged traffic only to the two-sided tables: a single-side row is
    made at a pod's own NIC. The seed gets those rows here — each tagged server end of network_map /
    application_map as a server row (role 1) of network / application — so the dashboards' variable
    queries (pod_cluster, pod_ns, pod_group over network.1m) have values to find, as on a node."""
    for one, two in (("network.1m", "network_map.1m"), ("application.1m", "application_map.1m")):
        dst = [r[0] for r in client.query(f"DESCRIBE TABLE flow_metrics.`{one}`").result_rows]
        src = {r[0] for r in client.query(f"DESCRIBE TABLE flow_metrics.`{two}`").result_rows}
        exprs = ["1" if c == "role" else f"`{c}_1`" if f"{c}_1" in src else f"`{c}`" for c in dst]
        client.command(f"INSERT INTO flow_metrics.`{one}` ({', '.join(f'`{c}`' for c in dst)}) "
                       f"SELECT {', '.join(exprs)} FROM flow_metrics.`{two}` WHERE pod_id_1 != 0")


def _multiply(client, table: str, target: int, kind: str, end: int) -> None:
    """Copies of the seed rows (the collector's) until ``target``: copy k lands at a time spread over
    the 24 h before ``end``; log rows get other client IPs and ports; then the seed itself goes."""
    columns = [r[0] for r in client.query(f"DESCRIBE TABLE {table}").result_rows]
    seed_n = client.command(f"SELECT count() FROM {table}")
    copies = max(1, -(-target // seed_n))
    offset = f"intDiv(n.number * {DAY}, {copies})"
    # each copy keeps the seed's within-minute (metrics) or within-10-minutes (logs) offsets
    new_time = (f"toDateTime({end - DAY} + {offset} + toUnixTimestamp(s.time) % 600)" if kind == "log"
                else f"toStartOfMinute(toDateTime({end - DAY} + {offset}))")
    shift = f"(toInt64(toUnixTimestamp({new_time})) - toInt64(toUnixTimestamp(s.time)))"
    replace = {"time": new_time, "_ingest_time": FAR_FUTURE}
    if kind == "log":
        replace |= {"start_time": f"addSeconds(s.start_time, {shift})", "end_time": f"addSeconds(s.end_time, {shift})",
                    "ip4_0": "toIPv4(toUInt32((toUInt64(toUInt32(s.ip4_0)) + (n.number % 2000) * 256) % 4294967296))",
                    "_id": "s._id + n.number * 4194304"}
        if "client_port" in columns:
            replace["client_port"] = "toUInt16(32768 + (s.client_port + n.number * 7) % 28000)"
        if "flow_id" in columns:
            replace["flow_id"] = "s.flow_id + n.number * 1000003"
    copy_rows(client, table, columns, replace, copies, 2_000_000, {"max_insert_threads": 2}, progress=kind == "log")


def open_store(rows: int, rebuild: bool) -> Path:
    root = OUT / f"datasource-{rows}"
    done = root / "complete"
    if rebuild or not done.exists() or done.read_text().strip() != str(rows):
        build_store(root, rows)
    else:
        print(f"store: {root} (cached; --rebuild to regenerate)")
    return root


# -- measuring ------------------------------------------------------------------------------------------

def translation_times(runs: int) -> dict | None:
    try:
        import datasource.dialect as dialect
        from datasource.dialect.shape import lex
    except ImportError:
        return None
    corpus = [(db, prec, sql.replace("{F}", "1795600000").replace("{T}", "1795603600"))
              for _, db, prec, sql in DASHBOARD] + EXAMPLES
    cold, failed = [], []
    for db, prec, sql in corpus:
        for _ in range(runs):
            t0 = time.perf_counter()
            try:
                dialect.translate_uncached(sql, db, prec, "en", lex(sql))
            except Exception as e:       # a statement the dialect refuses is reported, not fatal
                failed.append(f"{sql[:60]}…: {type(e).__name__}: {str(e)[:80]}")
                break
            cold.append(time.perf_counter() - t0)
    cached = []
    for i in range(runs + 1):            # a new time range each round, as Grafana refreshes; round 0 warms
        for _, db, prec, template in DASHBOARD:
            sql = template.replace("{F}", str(1795600000 + i)).replace("{T}", str(1795603600 + i))
            t0 = time.perf_counter()
            dialect.translate(sql, db, prec)
            if i:
                cached.append(time.perf_counter() - t0)
    return {"n_queries": len(corpus), "failed": failed, "times": cold, "cached": cached}


def serve(app) -> tuple[object, str]:
    import socket

    import uvicorn

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", access_log=False))
    threading.Thread(target=server.run, daemon=True).start()
    while not server.started:
        time.sleep(0.05)
    return server, f"http://127.0.0.1:{port}"


class RawClient:
    """POST a form on one keep-alive socket: the request's bytes are written in one ``sendall`` and
    the answer read up to its Content-Length, nothing more. http.client spends ~0.2 ms of its own per
    request here (header objects, its email-parser for the answer's headers), and httpx ~0.8 ms: that
    is the client's cost in this same process on these same 2 cores, not the datasource's. The form is
    encoded by ``prepare`` before the clock starts (a client's work, not the server's)."""

    def __init__(self, url: str) -> None:
        import socket
        from urllib.parse import urlsplit

        u = urlsplit(url)
        self.host = f"{u.hostname}:{u.port}"
        self.sock = socket.create_connection((u.hostname, u.port), timeout=120)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def prepare(self, path: str, params: dict, form: dict) -> bytes:
        from urllib.parse import urlencode

        body = urlencode(form).encode()
        return (f"POST {path}?{urlencode(params)} HTTP/1.1\r\nHost: {self.host}\r\n"
                f"Content-Type: application/x-www-form-urlencoded\r\nContent-Length: {len(body)}\r\n\r\n"
                ).encode() + body

    def send(self, request: bytes) -> tuple[int, bytes, float]:
        """(status, body, seconds from the first byte sent to the last byte read)."""
        t0 = time.perf_counter()
        self.sock.sendall(request)
        buf = b""
        while (end := buf.find(b"\r\n\r\n")) < 0:
            buf += self._recv()
        head, body = buf[:end].decode("latin-1"), buf[end + 4:]
        status = int(head.split(" ", 2)[1])
        length = next(int(line.split(":", 1)[1]) for line in head.split("\r\n")[1:]
                      if line.lower().startswith("content-length:"))
        while len(body) < length:
            body += self._recv()
        return status, body, time.perf_counter() - t0

    def _recv(self) -> bytes:
        chunk = self.sock.recv(1 << 20)
        if not chunk:
            raise ConnectionError("the datasource closed the connection")
        return chunk

    def post(self, path: str, params: dict, form: dict) -> tuple[int, bytes]:
        return self.send(self.prepare(path, params, form))[:2]

    def close(self) -> None:
        self.sock.close()


class ProcessClient(RawClient):
    """``RawClient`` in a child process of its own, as every real client is: in this process the
    client's thread shares the GIL with the server's threads, and waits for it on both ends of each
    request (~0.1–0.3 ms here), a cost no deployment has. The child times each request itself; this
    process waits on a pipe meanwhile (and holds no GIL the server needs)."""

    def __init__(self, url: str) -> None:
        u = url.split("//", 1)[1]
        self.host = u
        self.child = subprocess.Popen([sys.executable, __file__, "--client-child", url], stdin=subprocess.PIPE,
                                      stdout=subprocess.PIPE)

    def send(self, request: bytes) -> tuple[int, bytes, float]:
        self.child.stdin.write(struct.pack("<I", len(request)) + request)
        self.child.stdin.flush()
        status, seconds, n = struct.unpack("<Hdi", self._read(14))
        return status, self._read(n), seconds

    def _read(self, n: int) -> bytes:
        data = self.child.stdout.read(n)
        if len(data) != n:
            raise ConnectionError(f"the client process ended (exit {self.child.poll()})")
        return data

    def close(self) -> None:
        self.child.stdin.close()
        self.child.wait(10)


def client_child(url: str) -> None:
    """The child of ProcessClient: requests in on stdin, (status, seconds, body) out on stdout."""
    client = RawClient(url)
    inp, out = sys.stdin.buffer, sys.stdout.buffer
    while head := inp.read(4):
        status, body, seconds = client.send(inp.read(struct.unpack("<I", head)[0]))
        out.write(struct.pack("<Hdi", status, seconds, len(body)) + body)
        out.flush()


class LibraryClient:
    """A client library's ``post``: the form is encoded inside the timed call, as the library does it."""

    def prepare(self, path: str, params: dict, form: dict) -> tuple:
        return path, params, form

    def send(self, request: tuple) -> tuple[int, bytes, float]:
        t0 = time.perf_counter()
        status, body = self.post(*request)
        return status, body, time.perf_counter() - t0

    def close(self) -> None:
        pass


class StdlibClient(LibraryClient):
    """POST a form on one keep-alive connection with http.client: (status, body bytes)."""

    def __init__(self, url: str) -> None:
        import http.client
        from urllib.parse import urlsplit

        u = urlsplit(url)
        self.conn = http.client.HTTPConnection(u.hostname, u.port, timeout=120)

    def post(self, path: str, params: dict, form: dict) -> tuple[int, bytes]:
        from urllib.parse import urlencode

        self.conn.request("POST", f"{path}?{urlencode(params)}", urlencode(form).encode(),
                          {"Content-Type": "application/x-www-form-urlencoded"})
        r = self.conn.getresponse()
        return r.status, r.read()


class HttpxClient(LibraryClient):
    def __init__(self, url: str) -> None:
        import httpx

        self.http = httpx.Client(base_url=url, timeout=120)

    def post(self, path: str, params: dict, form: dict) -> tuple[int, bytes]:
        r = self.http.post(path, params=params, data=form)
        return r.status_code, r.content


CLIENTS = {"process": ProcessClient, "raw": RawClient, "stdlib": StdlibClient, "httpx": HttpxClient}


def new_ranges(template: str, end: int, i: int) -> tuple[str, str]:
    """Round ``i``'s statement for the server and another one for the direct baseline: each a new
    one-hour range (as Grafana refreshes; ClickHouse answers a statement it has just run faster)."""
    return tuple(template.replace("{F}", str(end - 3600 - 2 * i - k)).replace("{T}", str(end - 2 * i - k))
                 for k in (0, 1))


def floor_app(client, settings: dict):
    """The least an HTTP datasource can be: a bare ASGI app that runs the ClickHouse SQL it is sent on
    a worker thread (the engine must not block the event loop) and answers a few bytes. Its overhead
    over the direct run is what HTTP, uvicorn and the thread hand-offs cost on this machine."""
    import asyncio
    from urllib.parse import parse_qs

    def run(sql: str) -> int:
        return len(client.query(sql, settings=settings).result_rows)

    async def app(scope, receive, send) -> None:
        if scope["type"] != "http":
            return
        body = b""
        while True:
            m = await receive()
            body += m.get("body", b"")
            if not m.get("more_body"):
                break
        n = await asyncio.to_thread(run, parse_qs(body.decode())["sql"][0])
        out = b'{"rows":%d}' % n
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-length", str(len(out)).encode()), (b"content-type", b"application/json")]})
        await send({"type": "http.response.body", "body": out})

    return app


def floor_overhead(client, settings: dict, end: int, runs: int, client_kind: str) -> float | None:
    """Overhead of summed p50s of ``floor_app`` over the direct run, on the dashboard queries that
    translate to one ClickHouse statement, measured like the datasource (new range each request)."""
    from datasource.dialect import DialectError, translate

    server, url = serve(floor_app(client, settings))
    http = CLIENTS[client_kind](url)
    e2e_sum = direct_sum = 0.0
    try:
        for _name, db, prec, template in DASHBOARD:
            e2e, direct = [], []
            for i in range(runs + 2):
                sql, base = new_ranges(template, end, i)
                try:
                    q1, q0 = translate(sql, db, prec).queries, translate(base, db, prec).queries
                except DialectError:
                    break
                if len(q1) != 1 or len(q0) != 1:
                    break
                request = http.prepare("/", {}, {"sql": q1[0]})
                t0 = time.perf_counter()
                _rows = len(client.query(q0[0], settings=settings).result_rows)
                t1 = time.perf_counter()
                seconds = http.send(request)[2]
                if i >= 2:
                    direct.append(t1 - t0)
                    e2e.append(seconds)
            if e2e:
                e2e_sum += statistics.median(e2e)
                direct_sum += statistics.median(direct)
    finally:
        server.should_exit = True
        http.close()
    return e2e_sum / direct_sum - 1 if direct_sum else None


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=10_000_000, help="rows in l4_flow_log and in l7_flow_log")
    ap.add_argument("--runs", type=int, default=15, help="measurements per query and path")
    ap.add_argument("--rebuild", action="store_true", help="regenerate the cached store")
    ap.add_argument("--client", choices=tuple(CLIENTS), default="process",
                    help="HTTP client of the end-to-end requests: a bare socket in a child process or in this "
                         "one, http.client or httpx")
    ap.add_argument("--client-child", metavar="URL", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.client_child:
        return client_child(args.client_child)

    tr = translation_times(max(3, args.runs // 3))
    if tr is None:
        print("translation: n/a (datasource.dialect is not importable)")
    else:
        ms, cms = [t * 1000 for t in tr["times"]], [t * 1000 for t in tr["cached"]]
        print(f"translation, cold, over {tr['n_queries']} dialect queries: p50 {percentile(ms, .5):.2f} ms, "
              f"p99 {percentile(ms, .99):.2f} ms, {len(tr['failed'])} refused; shape-cached (the "
              f"{len(DASHBOARD)} dashboard queries, new time range): p50 {percentile(cms, .5):.3f} ms, "
              f"p99 {percentile(cms, .99):.3f} ms")
        for f in tr["failed"]:
            print(f"  refused: {f}")

    root = open_store(args.rows, args.rebuild)
    import json

    from datasource.app import create_app
    from datasource.dialect import DialectError, translate
    from datasource.engine import QueryEngine
    from flowscope.storage import connect

    client = connect(f"chdb://{root / 'chdb'}")
    try:
        engine = QueryEngine(client)
        settings = engine.limits.settings()
        [[end]] = client.query("SELECT toUnixTimestamp(max(time)) FROM flow_log.l4_flow_log").result_rows
        [[n4, n7]] = client.query("SELECT (SELECT count() FROM flow_log.l4_flow_log), "
                                  "(SELECT count() FROM flow_log.l7_flow_log)").result_rows
        print(f"store: {n4:,} l4_flow_log rows, {n7:,} l7_flow_log rows; queries over the last hour of the data")
        server, url = serve(create_app(engine))
        http = CLIENTS[args.client](url)
        rows_out = []
        all_e2e, all_direct = [], []
        for name, db, prec, template in DASHBOARD:
            e2e, cached, direct, again, result_rows, base_rows, error = [], [], [], [], 0, [], ""
            for i in range(args.runs + 2):          # two warm-up rounds, then measured
                # a new range per refresh, like Grafana's; the direct baseline runs a new range of its own
                # (ClickHouse answers a statement it has just run a little faster)
                sql, base = new_ranges(template, end, i)
                form = {"db": db, "sql": sql, **({"data_precision": prec} if prec else {})}
                try:
                    base_queries = translate(base, db, prec).queries
                except DialectError as e:
                    error = str(e)[:120]
                    break
                request = http.prepare("/v1/query/", {"debug": "true"}, form)
                t0 = time.perf_counter()
                base_rows = [len(client.query(q, settings=settings).result_rows) for q in base_queries]
                t1 = time.perf_counter()
                status, raw, e2e_s = http.send(request)
                body = json.loads(raw)
                if status != 200:
                    error = body["DESCRIPTION"][:120]
                    break
                cached_s = http.send(request)[2]     # the same statement: cached
                t4 = time.perf_counter()
                for q in body["debug"]["query_sqls"]:
                    result_rows = len(client.query(q["Sql"], settings=settings).result_rows)
                t5 = time.perf_counter()
                if i >= 2:
                    direct.append(t1 - t0)
                    e2e.append(e2e_s)
                    cached.append(cached_s)
                    again.append(t5 - t4)
            if error or not base_rows:
                error = error or "no ClickHouse query"
                print(f"{name:24s} refused by the datasource: {error}")
                rows_out.append({"query": name, "error": error})
                continue
            p50e, p95e, p50c, p50d, p50a = (statistics.median(e2e), percentile(e2e, .95), statistics.median(cached),
                                            statistics.median(direct), statistics.median(again))
            all_e2e += e2e
            all_direct += direct
            print(f"{name:24s} end-to-end p50 {p50e * 1000:6.1f} ms p95 {p95e * 1000:6.1f} ms | direct p50 "
                  f"{p50d * 1000:6.1f} ms | overhead {(p50e / p50d - 1) * 100:+6.1f} % | same statement again: "
                  f"{p50c * 1000:6.1f} ms, direct {p50a * 1000:6.1f} ms, overhead {(p50c / p50a - 1) * 100:+5.1f} % "
                  f"| {result_rows} rows")
            rows_out.append({"query": name, "e2e_p50_ms": round(p50e * 1000, 1), "e2e_p95_ms": round(p95e * 1000, 1),
                             "cached_p50_ms": round(p50c * 1000, 1), "direct_p50_ms": round(p50d * 1000, 1),
                             "direct_again_p50_ms": round(p50a * 1000, 1)})
        server.should_exit = True
        http.close()
        measured = [r for r in rows_out if "error" not in r]
        if not measured:
            raise SystemExit("no dashboard query ran")
        overhead = sum(r["e2e_p50_ms"] for r in measured) / sum(r["direct_p50_ms"] for r in measured) - 1
        overhead_cached = (sum(r["cached_p50_ms"] for r in measured) /
                           sum(r["direct_again_p50_ms"] for r in measured) - 1)
        p95 = percentile(all_e2e, .95) * 1000
        p95_direct = percentile(all_direct, .95) * 1000
        print(f"all dashboard queries: end-to-end p95 {p95:.1f} ms (goal ≤ 500), direct p95 {p95_direct:.1f} ms; "
              f"overhead of summed p50s {overhead * 100:+.1f} % with a new time range per request, "
              f"{overhead_cached * 100:+.1f} % for the same statement again (goal ≤ 5 %); "
              f"{len(rows_out) - len(measured)} of {len(rows_out)} refused")
        floor = floor_overhead(client, settings, end, args.runs, args.client)
        if floor is not None:
            print(f"HTTP floor on this machine: a bare ASGI app running the same SQL on a worker thread "
                  f"adds {floor * 100:+.1f} % (single-statement queries, same measurement)")
        tr_extra = ({"translate_p50_ms": None, "translate_p99_ms": None} if tr is None else
                    {"translate_p50_ms": round(percentile([t * 1000 for t in tr["times"]], .5), 2),
                     "translate_p99_ms": round(percentile([t * 1000 for t in tr["times"]], .99), 2),
                     "translate_cached_p50_ms": round(percentile([t * 1000 for t in tr["cached"]], .5), 3),
                     "translate_cached_p99_ms": round(percentile([t * 1000 for t in tr["cached"]], .99), 3),
                     "translate_refused": len(tr["failed"])})
        result("datasource", p95, "ms (dashboard query p95, end to end)", "same ClickHouse SQL run directly (p95)",
               p95_direct, f"{len(measured)} stock-dashboard DeepFlow queries over {n4:,} l4 + {n7:,} l7 flow-log rows "
               f"(chDB), last hour", overhead_pct=round(overhead * 100, 1),
               overhead_cached_pct=round(overhead_cached * 100, 1), refused=len(rows_out) - len(measured),
               floor_overhead_pct=None if floor is None else round(floor * 100, 1),
               client=args.client, **tr_extra)
    finally:
        client.close()


if __name__ == "__main__":
    sys.exit(main())
