"""DeepFlow SQL on a real store: ``flowscope collect`` fills chDB from the committed pcaps (tagged
with tests/data/inventory/lab.yaml), and every dialect query below must answer what an
independently written ClickHouse query on the same store answers (or what tshark counted in
tests/data/truth/*.json). The dialect's translation is never used to compute an expected value.

The corpus follows reference/deepflow-querier.md §7 and grafana-integration.md §2.1, with the
names of this lab (cluster ``lab``, namespaces ``shop``/``payments``, pods ``web-a``, ``api``…).
"""

from __future__ import annotations

import math
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from datasource.engine import QueryEngine
from flowscope.storage import connect
from tests.helpers import DATA, truth

FLOWSCOPE = Path(sys.executable).with_name("flowscope")
ENV = {k: v for k, v in os.environ.items() if not k.startswith("FLOWSCOPE_")} | {"COLUMNS": "160"}
PCAPS = sorted(DATA.glob("*.pcap")) + [DATA / "k8s_pods.pcapng", DATA / "k8s_churn.pcapng"]

L4 = "flow_log.l4_flow_log"
L7 = "flow_log.l7_flow_log"


def _m(table: str, precision: str = "1m") -> str:
    return f"flow_metrics.`{table}.{precision}`"


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """One store for the module: collected in a subprocess (as a user runs it), then opened here.
    chDB allows one open store per process: it is closed at the end of the module."""
    tmp = tmp_path_factory.mktemp("dialect")
    r = subprocess.run([str(FLOWSCOPE), "collect", "--pcap", *map(str, PCAPS),
                        "--inventory", str(DATA / "inventory" / "lab.yaml"),
                        "--metadata", f"sqlite:///{tmp / 'm.db'}", "--clickhouse", f"chdb://{tmp / 'chdb'}"],
                       cwd=tmp, env=ENV, capture_output=True, text=True, timeout=180)
    assert r.returncode == 0, r.stderr
    client = connect(f"chdb://{tmp / 'chdb'}")
    yield client
    client.close()


@pytest.fixture(scope="module")
def engine(store) -> QueryEngine:
    return QueryEngine(store)


@pytest.fixture(scope="module")
def span(engine) -> dict:
    """The capture's time span, to write time filters and buckets against."""
    [[t0, t1]] = raw(engine, f"SELECT toUnixTimestamp(min(time)), toUnixTimestamp(max(time)) FROM {L4}")
    return {"t0": t0, "t1": t1}


def dialect(engine: QueryEngine, sql: str, db: str, precision: str | None = None) -> tuple[list, list]:
    status, body = engine.query(sql, db, precision, debug=True)
    assert status == 200, f"{body['DESCRIPTION']}\n{body['debug']}"
    return body["result"]["columns"], body["result"]["values"] or []


def raw(engine: QueryEngine, sql: str) -> list:
    status, body = engine.query_raw(sql, None)
    assert status == 200, body["DESCRIPTION"]
    return body["result"]["values"] or []


def same(a, b) -> bool:
    if isinstance(a, float | int) and isinstance(b, float | int) and not isinstance(a, bool):
        return math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-9)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    return a == b


def assert_rows(got: list, want: list, *, ordered: bool) -> None:
    if not ordered:
        got, want = sorted(got, key=repr), sorted(want, key=repr)
    assert len(got) == len(want), f"{len(got)} rows, want {len(want)}:\n{got[:10]}\n{want[:10]}"
    for g, w in zip(got, want, strict=True):
        assert same(g, w), f"row {g} != {w}"


@dataclass(frozen=True)
class Case:
    id: str
    db: str
    dialect: str
    raw: str
    precision: str | None = None
    ordered: bool = False
    nonempty: bool = True

    def param(self):
        return pytest.param(self, id=self.id)


# -- l4_flow_log: every counter, summed per server port ---------------------------------------------------
# metric → the ClickHouse expression DeepFlow defines it as (reference/deepflow-datamodel.md §1e)
L4_COUNTERS = {
    "byte": "byte_tx + byte_rx", "byte_tx": "byte_tx", "byte_rx": "byte_rx", "packet": "packet_tx + packet_rx",
    "packet_tx": "packet_tx", "packet_rx": "packet_rx", "l3_byte": "l3_byte_tx + l3_byte_rx",
    "l4_byte": "l4_byte_tx + l4_byte_rx", "total_byte_tx": "total_byte_tx", "total_packet_rx": "total_packet_rx",
    "retrans": "retrans_tx + retrans_rx", "retrans_tx": "retrans_tx", "zero_win": "zero_win_tx + zero_win_rx",
    "ooo": "ooo_tx + ooo_rx", "syn_count": "syn_count", "synack_count": "synack_count",
    "retrans_syn": "retrans_syn", "fin_count": "fin_count", "new_flow": "is_new_flow",
    "closed_flow": "close_type != 5", "log_count": "1", "l7_request": "l7_request",
    "l7_response": "l7_response", "l7_error": "l7_error", "server_reset": "close_type = 15",
    "server_rst_flow": "close_type = 2", "server_syn_miss": "close_type = 7", "client_rst_flow": "close_type = 9",
    "tcp_establish_fail": "close_type IN (7, 10, 13, 15, 18, 19)",
    "client_establish_fail": "close_type IN (10, 13, 18)", "server_establish_fail": "close_type IN (7, 15, 19)",
    "tcp_transfer_fail": "close_type IN (2, 3, 9, 17)", "tcp_rst_fail": "close_type IN (2, 9, 15, 18, 19)",
}
L4_COUNTER_CASES = [
    Case(f"l4 Sum({m})", "flow_log", f"select server_port, Sum({m}) from l4_flow_log group by server_port",
         f"SELECT server_port, sum({e}) FROM {L4} GROUP BY server_port")
    for m, e in L4_COUNTERS.items()
]

# -- l4_flow_log: latencies (0 = no sample), ratios, the functions ------------------------------------------
L4_AGGREGATE_CASES = [
    Case("l4 Avg(rtt) skips flows without a handshake", "flow_log", "select Avg(rtt) from l4_flow_log",
         f"SELECT avg(rtt) FROM {L4} WHERE rtt > 0"),
    Case("l4 Avg(srt) is Σsum/Σcount", "flow_log", "select Avg(srt), Avg(art) from l4_flow_log",
         f"SELECT sum(srt_sum) / sum(srt_count), sum(art_sum) / sum(art_count) FROM {L4}"),
    Case("l4 AAvg(srt) averages the flows", "flow_log", "select AAvg(srt) from l4_flow_log",
         f"SELECT avg(srt_sum / srt_count) FROM {L4} WHERE srt_count > 0"),
    Case("l4 Max/Min(rtt)", "flow_log", "select Max(rtt), Min(rtt) from l4_flow_log",
         f"SELECT max(rtt), min(rtt) FROM {L4} WHERE rtt > 0"),
    Case("l4 Max(srt_max) by port", "flow_log", "select server_port, Max(srt_max) from l4_flow_log group by server_port",
         f"SELECT server_port, max(if(srt_max > 0, srt_max, 0)) FROM {L4} GROUP BY server_port"),
    Case("l4 Percentile(rtt)", "flow_log", "select Percentile(rtt, 0.5), PercentileExact(rtt, 0.9) from l4_flow_log",
         f"SELECT quantile(0.5)(rtt), quantileExact(0.9)(rtt) FROM {L4} WHERE rtt > 0"),
    Case("l4 Stddev/Spread/Rspread(rtt)", "flow_log",
         "select Stddev(rtt), Spread(rtt), Rspread(rtt) from l4_flow_log",
         f"SELECT stddevPopStable(rtt), max(rtt) - min(rtt), (max(rtt) + 1e-15) / (min(rtt) + 1e-15) FROM {L4} "
         "WHERE rtt > 0"),
    Case("l4 Apdex(rtt, 100)", "flow_log", "select Apdex(rtt, 100) from l4_flow_log",
         f"SELECT (countIf(rtt <= 100) + countIf(rtt > 100 AND rtt <= 400) / 2) / count() * 100 FROM {L4} "
         "WHERE rtt > 0"),
    Case("l4 Apdex(art, 500) by port", "flow_log",
         "select server_port, Apdex(art, 500) as a from l4_flow_log group by server_port having Count(row) > 3",
         f"SELECT server_port, if(countIf(art_count > 0) > 0, (countIf(art_count > 0 AND art_sum / art_count <= 500)"
         f" + 0.5 * countIf(art_count > 0 AND art_sum / art_count > 500 AND art_sum / art_count <= 2000)) "
         f"/ countIf(art_count > 0) * 100, NULL) FROM {L4} GROUP BY server_port HAVING count() > 3"),
    Case("l4 Avg(retrans_ratio) is Σretrans/Σpacket in %", "flow_log",
         "select server_port, Avg(retrans_ratio) from l4_flow_log group by server_port",
         f"SELECT server_port, if(sum(packet_tx + packet_rx) > 0, 100 * sum(retrans_tx + retrans_rx) / "
         f"sum(packet_tx + packet_rx), NULL) FROM {L4} GROUP BY server_port"),
    Case("l4 Avg(bpp)", "flow_log", "select Avg(bpp), Avg(bpp_tx) from l4_flow_log",
         f"SELECT sum(byte_tx + byte_rx) / sum(packet_tx + packet_rx), sum(byte_tx) / sum(packet_tx) FROM {L4}"),
    Case("l4 Avg(tcp_establish_fail_ratio)", "flow_log",
         "select Avg(tcp_establish_fail_ratio), Avg(tcp_rst_fail_ratio) from l4_flow_log where protocol = 6",
         f"SELECT 100 * countIf(close_type IN (7, 10, 13, 15, 18, 19)) / countIf(close_type != 5), "
         f"100 * countIf(close_type IN (2, 9, 15, 18, 19)) / countIf(close_type != 5) FROM {L4} WHERE protocol = 6"),
    Case("l4 Avg(byte) without a time range is the sum", "flow_log", "select Avg(byte) from l4_flow_log",
         f"SELECT sum(byte_tx + byte_rx) FROM {L4}"),
    Case("l4 Count(row), Uniq, UniqExact", "flow_log",
         "select Count(row), Uniq(ip_1), UniqExact(pod_1), UniqExact(ip_0, server_port) from l4_flow_log",
         f"SELECT count(), uniq((ip4_1, ip6_1)), uniqExact(pod_id_1), length(groupUniqArray((ip4_0, ip6_0, "
         f"server_port))) FROM {L4}"),
    Case("l4 Sum(duration) skips 0", "flow_log", "select Sum(duration), Max(duration) from l4_flow_log",
         f"SELECT sum(duration), max(duration) FROM {L4}"),
    Case("l4 arithmetic between aggregates", "flow_log",
         "select (Sum(byte_tx) + Sum(byte_rx)) / Count(row) as per_flow, Max(packet) - Min(packet) as d "
         "from l4_flow_log",
         f"SELECT sum(byte_tx + byte_rx) / count(), max(packet_tx + packet_rx) - min(packet_tx + packet_rx) FROM {L4}"),
    Case("l4 Percentage", "flow_log",
         "select Percentage(Sum(retrans), Sum(packet)) as p, Percentage(Count(row)) as q from l4_flow_log "
         "where protocol = 17",
         f"SELECT 100 * sum(retrans_tx + retrans_rx) / sum(packet_tx + packet_rx), 100 * count() FROM {L4} "
         "WHERE protocol = 17"),
]

# -- time: ranges, buckets, PerSecond -------------------------------------------------------------------------
TIME_CASES = [
    Case("Avg(byte) over a time range is Σ per second", "flow_log",
         "select Avg(byte) from l4_flow_log where time >= {t0} and time <= {t0} + 599",
         f"SELECT sum(byte_tx + byte_rx) / 600 FROM {L4} WHERE time >= {{t0}} AND time <= {{t0}} + 599"),
    Case("quoted epoch seconds (Grafana placeholders)", "flow_log",
         "select Sum(packet) from l4_flow_log where time >= '{t0}' and time <= '{t1}'",
         f"SELECT sum(packet_tx + packet_rx) FROM {L4}"),
    Case("PerSecond(Sum) over a range", "flow_log",
         "select PerSecond(Sum(byte)) as bps from l4_flow_log where time >= {t0} and time < {t0} + 120",
         f"SELECT sum(byte_tx + byte_rx) / 120 FROM {L4} WHERE time >= {{t0}} AND time < {{t0}} + 120"),
    Case("Sum/Time_interval", "flow_log",
         "select Sum(packet) / Time_interval as pps from l4_flow_log where time >= {t0} and time <= {t0} + 59",
         f"SELECT sum(packet_tx + packet_rx) / 60 FROM {L4} WHERE time >= {{t0}} AND time <= {{t0}} + 59"),
    Case("time(time, 60) buckets", "flow_log",
         "select time(time, 60) as t, Sum(packet) as p, Count(row) from l4_flow_log group by t order by t",
         f"SELECT toUnixTimestamp(toStartOfMinute(time)) AS t, sum(packet_tx + packet_rx), count() FROM {L4} "
         "GROUP BY t ORDER BY t", ordered=True),
    Case("time(time, 300) with Avg per second", "flow_log",
         "select time(time, 300) as t, Avg(packet) from l4_flow_log group by t order by t",
         f"SELECT intDiv(toUnixTimestamp(time), 300) * 300 AS t, sum(packet_tx + packet_rx) / 300 FROM {L4} "
         "GROUP BY t ORDER BY t", ordered=True),
    Case("time bucket + PerSecond", "flow_log",
         "select time(time, 120) as t, PerSecond(Sum(byte)) from l4_flow_log group by t order by t desc limit 2",
         f"SELECT intDiv(toUnixTimestamp(time), 120) * 120 AS t, sum(byte_tx + byte_rx) / 120 FROM {L4} "
         "GROUP BY t ORDER BY t DESC LIMIT 2", ordered=True),
    Case("time(time, 1) on 1m data is 60 s", "flow_metrics",
         "select time(time, 1) as t, Sum(packet) from network_map group by t order by t",
         f"SELECT toUnixTimestamp(time) AS t, sum(packet_tx + packet_rx) FROM {_m('network_map')} GROUP BY t "
         "ORDER BY t", precision="1m", ordered=True),
    Case("Avg(counter) per 120 s bucket on 1m data: Σ / 2 minutes", "flow_metrics",
         "select time(time, 120) as t, Avg(byte) as b from network_map group by t order by t",
         f"SELECT intDiv(toUnixTimestamp(time), 120) * 120 AS t, sum(byte_tx + byte_rx) / 2 FROM "
         f"{_m('network_map')} GROUP BY t ORDER BY t", precision="1m", ordered=True),
    Case("PerSecond(Avg) per minute on 1m data: Σ / 60 s", "flow_metrics",
         "select time(time, 60) as t, PerSecond(Avg(byte)) as bps from network_map group by t order by t",
         f"SELECT toUnixTimestamp(time) AS t, sum(byte_tx + byte_rx) / 60 FROM {_m('network_map')} GROUP BY t "
         "ORDER BY t", precision="1m", ordered=True),
    Case("time(time, 10) on 1s data", "flow_metrics",
         "select time(time, 10) as t, Sum(packet) from network_map group by t order by t",
         f"SELECT intDiv(toUnixTimestamp(time), 10) * 10 AS t, sum(packet_tx + packet_rx) FROM "
         f"{_m('network_map', '1s')} GROUP BY t ORDER BY t", precision="1s", ordered=True),
    Case("time with an offset", "flow_log",
         "select time(time, 60, 1, 0, 30) as t, Count(row) from l4_flow_log group by t order by t",
         f"SELECT intDiv(toUnixTimestamp(time) - 30, 60) * 60 + 30 AS t, count() FROM {L4} GROUP BY t ORDER BY t",
         ordered=True),
]

# -- resources and other tags of l4_flow_log ---------------------------------------------------------------------
NAME = "dictGet('flow_tag.{m}', 'name', toUInt64({c}))"
POD0, POD1 = NAME.format(m="pod_map", c="pod_id_0"), NAME.format(m="pod_map", c="pod_id_1")
IP0 = "if(is_ipv4, IPv4NumToString(ip4_0), IPv6NumToString(ip6_0))"
IP1 = "if(is_ipv4, IPv4NumToString(ip4_1), IPv6NumToString(ip6_1))"
AUTO = ("if(auto_instance_type_{s} IN (0, 255), {ip}, dictGet('flow_tag.device_map', 'name', "
        "(toUInt64(auto_instance_type_{s}), toUInt64(auto_instance_id_{s}))))")
AUTO0, AUTO1 = AUTO.format(s=0, ip=IP0), AUTO.format(s=1, ip=IP1)
HTTP = "transform(l7_protocol, [20, 21], ['HTTP', 'HTTP2'], '')"
TAG_CASES = [
    Case("pods at both ends", "flow_log",
         "select pod_0, pod_1, Count(row) as flows, Sum(byte) from l4_flow_log group by pod_0, pod_1",
         f"SELECT {POD0}, {POD1}, count(), sum(byte_tx + byte_rx) FROM {L4} GROUP BY pod_id_0, pod_id_1"),
    Case("namespaces, workloads, services, nodes, clusters", "flow_log",
         "select pod_ns_1, pod_group_1, pod_service_1, pod_node_1, pod_cluster_1, Count(row) from l4_flow_log "
         "group by pod_ns_1, pod_group_1, pod_service_1, pod_node_1, pod_cluster_1",
         f"SELECT {NAME.format(m='pod_ns_map', c='pod_ns_id_1')}, {NAME.format(m='pod_group_map', c='pod_group_id_1')},"
         f" {NAME.format(m='pod_service_map', c='service_id_1')}, {NAME.format(m='pod_node_map', c='pod_node_id_1')},"
         f" {NAME.format(m='pod_cluster_map', c='pod_cluster_id_1')}, count() FROM {L4} "
         "GROUP BY pod_ns_id_1, pod_group_id_1, service_id_1, pod_node_id_1, pod_cluster_id_1"),
    Case("cloud hosts", "flow_log", "select chost_0, chost_1, Count(row) from l4_flow_log group by chost_0, chost_1",
         f"SELECT dictGet('flow_tag.chost_map', 'name', toUInt64(if(l3_device_type_0 = 1, l3_device_id_0, 0))), "
         f"dictGet('flow_tag.chost_map', 'name', toUInt64(if(l3_device_type_1 = 1, l3_device_id_1, 0))), count() "
         f"FROM {L4} GROUP BY 1, 2"),
    Case("auto_instance: a resource name, or the IP", "flow_log",
         "select auto_instance_0, auto_instance_1, Count(row) from l4_flow_log group by auto_instance_0, "
         "auto_instance_1",
         f"SELECT if(auto_instance_type_0 IN (0, 255), {IP0}, dictGet('flow_tag.device_map', 'name', "
         f"(toUInt64(auto_instance_type_0), toUInt64(auto_instance_id_0)))) AS a, if(auto_instance_type_1 IN "
         f"(0, 255), {IP1}, dictGet('flow_tag.device_map', 'name', (toUInt64(auto_instance_type_1), "
         f"toUInt64(auto_instance_id_1)))) AS b, count() FROM {L4} GROUP BY a, b"),
    Case("auto_service with its id and type", "flow_log",
         "select auto_service_1, auto_service_id_1, auto_service_type_1, Enum(auto_service_type_1), Count(row) "
         "from l4_flow_log where pod_id_1 != 0 group by auto_service_1, auto_service_id_1, auto_service_type_1",
         f"SELECT dictGet('flow_tag.device_map', 'name', (toUInt64(auto_service_type_1), toUInt64(auto_service_id_1))),"
         f" auto_service_id_1, auto_service_type_1, dictGet('flow_tag.int_enum_map', 'name_en', ('auto_service_type', "
         f"toUInt64(auto_service_type_1))), count() FROM {L4} WHERE pod_id_1 != 0 GROUP BY 1, 2, 3, 4"),
    Case("ip tags", "flow_log", "select ip_0, ip_1, Count(row) from l4_flow_log group by ip_0, ip_1",
         f"SELECT {IP0} AS a, {IP1} AS b, count() FROM {L4} GROUP BY a, b"),
    Case("is_internet and vpc", "flow_log",
         "select is_internet_1, vpc_1, Count(row) from l4_flow_log group by is_internet_1, vpc_1",
         f"SELECT l3_epc_id_1 = -2, dictGet('flow_tag.l3_epc_map', 'name', toUInt64(l3_epc_id_1)), count() "
         f"FROM {L4} GROUP BY l3_epc_id_1"),
    Case("Enum of close_type, status, protocol, observation_point", "flow_log",
         "select Enum(close_type), Enum(status), Enum(protocol), Enum(observation_point), Count(row) "
         "from l4_flow_log group by close_type, status, protocol, observation_point",
         f"SELECT e.name_en, s.name_en, if(p.name_en = '', toString(protocol), p.name_en), o.name_en, count() "
         f"FROM {L4} AS f LEFT JOIN flow_tag.int_enum AS e ON e.tag_name = 'close_type' AND e.value = f.close_type "
         "LEFT JOIN flow_tag.int_enum AS s ON s.tag_name = 'status' AND s.value = f.status "
         "LEFT JOIN flow_tag.int_enum AS p ON p.tag_name = 'protocol' AND p.value = f.protocol "
         "LEFT JOIN flow_tag.string_enum AS o ON o.tag_name = 'observation_point' AND o.value = f.observation_point "
         "GROUP BY 1, 2, 3, 4"),
    Case("Enum of a bit field: the flags' names", "flow_log",
         "select Enum(tcp_flags_bit_0) as f, Count(row) from l4_flow_log where protocol = 6 group by tcp_flags_bit_0",
         f"SELECT arrayStringConcat(arrayFilter(x -> x != '', [if(bitTest(tcp_flags_bit_0, 0), 'FIN', ''), "
         "if(bitTest(tcp_flags_bit_0, 1), 'SYN', ''), if(bitTest(tcp_flags_bit_0, 2), 'RST', ''), "
         "if(bitTest(tcp_flags_bit_0, 3), 'PSH', ''), if(bitTest(tcp_flags_bit_0, 4), 'ACK', '')]), ',') AS f, "
         f"count() FROM {L4} WHERE protocol = 6 GROUP BY tcp_flags_bit_0"),
    Case("Enum(server_port) without names is the number", "flow_log",
         "select Enum(server_port), Count(row) from l4_flow_log group by server_port",
         f"SELECT toString(server_port), count() FROM {L4} GROUP BY server_port"),
    Case("workload type through the dictionary", "flow_log",
         "select pod_group_1, pod_group_type_1, Enum(pod_group_type_1) from l4_flow_log where pod_group_id_1 != 0 "
         "group by pod_group_1, pod_group_type_1",
         "SELECT name, pod_group_type, if(pod_group_type = 130, 'K8s Deployment', 'K8s StatefulSet') FROM "
         f"flow_tag.pod_group FINAL WHERE id IN (SELECT pod_group_id_1 FROM {L4})"),
    Case("k8s labels: the Service's, else the pod's", "flow_log",
         "select `k8s.label.app_1` as app, `k8s.label.team_1` as team, `k8s.label.tier_1`, Count(row) "
         "from l4_flow_log group by app, team, `k8s.label.tier_1`",
         "SELECT coalesce(nullIf(dictGet('flow_tag.pod_service_k8s_label_map', 'value', (toUInt64(service_id_1), "
         "'app')), ''), dictGet('flow_tag.pod_k8s_label_map', 'value', (toUInt64(pod_id_1), 'app'))) AS a, "
         "dictGet('flow_tag.pod_service_k8s_label_map', 'value', (toUInt64(service_id_1), 'team')) AS b, "
         "dictGet('flow_tag.pod_k8s_label_map', 'value', (toUInt64(pod_id_1), 'tier')) AS c, count() "
         f"FROM {L4} GROUP BY a, b, c"),
    Case("agent and capture NIC names", "flow_log",
         "select agent, capture_nic_name, Count(row) from l4_flow_log group by agent, capture_nic_name",
         "SELECT dictGet('flow_tag.vtap_map', 'name', toUInt64(agent_id)) AS a, dictGet('flow_tag.vtap_port_map', "
         f"'name', (toUInt64(agent_id), toUInt64(capture_nic))) AS b, count() FROM {L4} GROUP BY a, b"),
    Case("legacy names: tap_side, vtap_id, tap_port", "flow_log",
         "select tap_side, vtap_id, Enum(tap_side), Count(row) from l4_flow_log group by tap_side, vtap_id",
         "SELECT observation_point, agent_id, dictGet('flow_tag.string_enum_map', 'name_en', ('observation_point', "
         f"toString(observation_point))), count() FROM {L4} GROUP BY observation_point, agent_id"),
    Case("node_type and icon_id (which groups by the resource)", "flow_log",
         "select node_type(auto_instance_0) as n, node_type(pod_1) as p, icon_id(pod_1) as i, Count(row) "
         "from l4_flow_log group by n, p",
         "SELECT multiIf(auto_instance_type_0 = 1, 'chost', auto_instance_type_0 = 10, 'pod', "
         "auto_instance_type_0 = 255, 'ip', 'other') AS n, 'pod', toInt64(0), count() "
         f"FROM {L4} GROUP BY n, pod_id_1"),
    Case("raw columns and toString(_id)", "flow_log",
         "select toString(_id) as id, client_port, server_port, byte_tx from l4_flow_log where server_port = 8080",
         f"SELECT toString(_id), client_port, server_port, byte_tx FROM {L4} WHERE server_port = 8080"),
    Case("mask(ip, 24)", "flow_log",
         "select mask(ip_1, 24) as net, Count(row) from l4_flow_log where is_ipv4 = 1 group by net",
         f"SELECT IPv4NumToString(bitAnd(toUInt32(ip4_1), 0xFFFFFF00)) AS net, count() FROM {L4} WHERE is_ipv4 = 1 "
         "GROUP BY net"),
]

# -- WHERE on tags ------------------------------------------------------------------------------------------------
FILTER_CASES = [
    Case(f"where {cond}", "flow_log", f"select Count(row), Sum(byte) from l4_flow_log where {cond}",
         f"SELECT count(), sum(byte_tx + byte_rx) FROM {L4} WHERE {want}", nonempty=False)
    for cond, want in [
        ("pod_1 = 'api'", f"{POD1} = 'api'"),
        ("pod_1 != 'api'", f"{POD1} != 'api'"),
        ("pod_1 in ('api', 'redis-0')", f"{POD1} IN ('api', 'redis-0')"),
        ("pod_1 not in ('api', 'redis-0')", f"{POD1} NOT IN ('api', 'redis-0')"),
        ("pod_0 like 'web*'", f"{POD0} LIKE 'web%'"),
        ("pod_0 not like 'WEB*'", f"NOT ({POD0} ILIKE 'web%')"),
        ("pod_1 regexp '^(api|redis)'", f"match({POD1}, '^(api|redis)')"),
        ("pod_1 not regexp 'a'", f"NOT match({POD1}, 'a')"),
        ("pod_ns_0 = 'shop' and pod_ns_1 = 'payments'",
         "pod_ns_id_0 IN (SELECT id FROM flow_tag.pod_ns WHERE name = 'shop') AND pod_ns_id_1 IN "
         "(SELECT id FROM flow_tag.pod_ns WHERE name = 'payments')"),
        ("pod_group_1 = 'redis' or pod_service_1 = 'kube-dns'",
         "pod_group_id_1 IN (SELECT id FROM flow_tag.pod_group WHERE name = 'redis') OR service_id_1 IN "
         "(SELECT id FROM flow_tag.pod_service WHERE name = 'kube-dns')"),
        ("pod_cluster_0 = 'lab' and pod_node_1 = 'node-1'", "pod_cluster_id_0 = 1 AND pod_node_id_1 = 1"),
        ("chost_1 = 'netlab-srv'", "l3_device_type_1 = 1 AND l3_device_id_1 IN "
         "(SELECT id FROM flow_tag.chost WHERE name = 'netlab-srv')"),
        ("chost_0 != 'netlab-cli'", "NOT (l3_device_type_0 = 1 AND l3_device_id_0 IN "
         "(SELECT id FROM flow_tag.chost WHERE name = 'netlab-cli'))"),
        ("auto_instance_1 = 'api'", "auto_instance_type_1 = 10 AND auto_instance_id_1 = 4"),
        ("auto_instance_0 = '10.200.0.2'", "auto_instance_type_0 IN (0, 255) AND ip4_0 = toIPv4('10.200.0.2')"),
        ("auto_service_1 in ('kube-dns', 'redis')", "auto_service_type_1 = 11 AND auto_service_id_1 IN "
         "(SELECT id FROM flow_tag.pod_service WHERE name IN ('kube-dns', 'redis'))"),
        ("ip_0 = '10.16.0.11'", "is_ipv4 AND IPv4NumToString(ip4_0) = '10.16.0.11'"),
        ("ip_1 = 'fd00:10:16::20'", "NOT is_ipv4 AND ip6_1 = toIPv6('fd00:10:16::20')"),
        ("ip_1 = '10.16.0.0/24'", "is_ipv4 AND isIPAddressInRange(IPv4NumToString(ip4_1), '10.16.0.0/24')"),
        ("ip_0 in ('10.99.0.2', 'fd00:99::2')", f"{IP0} IN ('10.99.0.2', 'fd00:99::2')"),
        ("ip_1 != '10.99.0.1'", f"{IP1} != '10.99.0.1'"),
        ("ip_1 not in ('10.0.0.0/8')", "NOT (is_ipv4 AND ip4_1 >= toIPv4('10.0.0.0') AND ip4_1 <= "
         "toIPv4('10.255.255.255'))"),
        ("is_internet_1 = 0", "l3_epc_id_1 != -2"),
        ("Enum(close_type) = 'Est. – Server RST'", "close_type = 15"),
        ("Enum(close_type) like '*rst*'", "close_type IN (2, 9, 15, 18, 19, 20)"),
        ("Enum(close_type) != 'Normal – Finish'", "close_type != 1"),
        ("Enum(observation_point) = 'Client K8s Node'", "observation_point = 'c-nd'"),
        ("Enum(observation_point) in ('Client NIC', 'rest')", "observation_point IN ('c', 'rest')"),
        ("Enum(protocol) = 'UDP'", "protocol = 17"),
        ("Enum(protocol) = 17", "protocol = 17"),
        ("tap_side = 'c-nd'", "observation_point = 'c-nd'"),
        ("observation_point in ('c', 'rest')", "observation_point IN ('c', 'rest')"),
        ("exist(pod_0)", "pod_id_0 != 0"),
        ("not exist(pod_1)", "pod_id_1 = 0"),
        ("exist(chost_1)", "l3_device_type_1 = 1"),
        ("`k8s.label.app_1` = 'api'", "service_id_1 = 3 OR pod_id_1 = 4"),
        ("`k8s.label.team_1` = 'payments'", "service_id_1 = 3"),
        ("`k8s.label.app_0` like 'w*'", "pod_id_0 IN (1, 2) OR service_id_0 = 1"),
        ("`k8s.label.tier_1` != 'backend'", "pod_id_1 != 4"),
        ("server_port in ('53', '6379')", "server_port IN (53, 6379)"),
        ("server_port >= 8000 and server_port < 9000", "server_port >= 8000 AND server_port < 9000"),
        ("close_type != 1 and status in (3, 4)", "close_type != 1 AND status IN (3, 4)"),
        ("rtt > 1000", "rtt > 1000"),
        ("byte > 10000", "byte_tx + byte_rx > 10000"),
        ("request_domain = ''", "request_domain = ''"),
        ("(pod_0 = 'web-a' or pod_0 = 'web-b') and not pod_1 = 'coredns'",
         f"{POD0} IN ('web-a', 'web-b') AND {POD1} != 'coredns'"),
        ("1 = 1", "1"),
    ]
]

# -- l7_flow_log -----------------------------------------------------------------------------------------------
L7_PROTO = "dictGet('flow_tag.int_enum_map', 'name_en', ('l7_protocol', toUInt64(l7_protocol)))"
L7_CASES = [
    Case("requests, responses, errors per protocol", "flow_log",
         "select Enum(l7_protocol) as p, Sum(request), Sum(response), Sum(error), Sum(client_error), "
         "Sum(server_error), Sum(timeout), Sum(log_count) from l7_flow_log group by l7_protocol",
         f"SELECT {L7_PROTO}, countIf(type != 1), countIf(type != 0), countIf(response_status IN (3, 4)), "
         f"countIf(response_status = 4), countIf(response_status = 3), countIf(response_status = 2), count() "
         f"FROM {L7} GROUP BY l7_protocol"),
    Case("error ratios", "flow_log",
         "select Enum(l7_protocol), Avg(error_ratio), Avg(client_error_ratio), Avg(server_error_ratio), "
         "Avg(success_ratio) from l7_flow_log group by l7_protocol",
         f"SELECT {L7_PROTO}, 100 * countIf(response_status IN (3, 4)) / count(), 100 * countIf(response_status = 4) "
         f"/ count(), 100 * countIf(response_status = 3) / count(), 100 - 100 * countIf(response_status IN (3, 4)) / "
         f"count() FROM {L7} GROUP BY l7_protocol"),
    Case("response delay", "flow_log",
         "select request_type, Avg(response_duration), Max(response_duration), Percentile(response_duration, 0.99) "
         "from l7_flow_log where l7_protocol = 20 group by request_type",
         f"SELECT request_type, avg(response_duration), max(response_duration), quantile(0.99)(response_duration) "
         f"FROM {L7} WHERE l7_protocol = 20 AND response_duration > 0 GROUP BY request_type"),
    Case("Enum(response_status)", "flow_log",
         "select Enum(response_status), Count(row) from l7_flow_log group by response_status",
         f"SELECT multiIf(response_status = 0, 'Success', response_status = 3, 'Server Error', 'Client Error'), "
         f"count() FROM {L7} GROUP BY response_status"),
    Case("endpoint glob", "flow_log",
         "select endpoint, Count(row) from l7_flow_log where endpoint like '/api*' group by endpoint",
         f"SELECT endpoint, count() FROM {L7} WHERE startsWith(endpoint, '/api') GROUP BY endpoint"),
    Case("endpoint LIKE('*') is every row", "flow_log",
         "select Count(row) from l7_flow_log where `endpoint` LIKE('*')", f"SELECT count() FROM {L7}"),
    Case("response_code and exist()", "flow_log",
         "select response_code, Count(row) from l7_flow_log where exist(response_code) and l7_protocol = 20 "
         "group by response_code",
         f"SELECT response_code, count() FROM {L7} WHERE response_code IS NOT NULL AND l7_protocol = 20 "
         "GROUP BY response_code"),
    Case("attributes", "flow_log",
         "select `attribute.user_agent` as ua, Count(row) from l7_flow_log where exist(`attribute.user_agent`) "
         "group by ua",
         f"SELECT attribute_values[indexOf(attribute_names, 'user_agent')] AS ua, count() FROM {L7} "
         "WHERE has(attribute_names, 'user_agent') GROUP BY ua"),
    Case("attribute filter", "flow_log",
         "select Count(row) from l7_flow_log where `attribute.database` = 'shop'",
         f"SELECT count() FROM {L7} WHERE arrayElement(attribute_values, indexOf(attribute_names, 'database')) = "
         "'shop'", nonempty=False),
    Case("Service of the server end", "flow_log",
         "select pod_service_1, Enum(l7_protocol), Sum(request) from l7_flow_log where pod_service_1 != '' "
         "group by pod_service_1, l7_protocol",
         f"SELECT {NAME.format(m='pod_service_map', c='service_id_1')}, {L7_PROTO}, count() FROM {L7} "
         "WHERE service_id_1 != 0 GROUP BY 1, 2"),
    Case("request_type and request_resource", "flow_log",
         "select request_type, Count(row) from l7_flow_log where l7_protocol in (60, 80) and request_resource != '' "
         "group by request_type",
         f"SELECT request_type, count() FROM {L7} WHERE l7_protocol IN (60, 80) AND request_resource != '' "
         "GROUP BY request_type"),
    Case("l7_protocol_str", "flow_log",
         "select l7_protocol_str, Count(row) from l7_flow_log group by l7_protocol_str",
         f"SELECT {L7_PROTO}, count() FROM {L7} GROUP BY l7_protocol"),
    Case("Enum(l7_protocol) filter", "flow_log",
         "select Count(row) from l7_flow_log where Enum(l7_protocol) in ('MySQL', 'Redis')",
         f"SELECT count() FROM {L7} WHERE l7_protocol IN (60, 80)"),
    Case("Enum(signal_source) = 'Packet'", "flow_log",
         "select Count(row) from l7_flow_log where Enum(signal_source) = 'Packet' or Enum(signal_source) = 'eBPF'",
         f"SELECT count() FROM {L7} WHERE signal_source IN (0, 3)"),
    Case("timeouts and response ratio", "flow_log",
         "select Avg(timeout_ratio), Avg(response_ratio) from l7_flow_log",
         f"SELECT 100 * countIf(response_status = 2) / countIf(type != 1), 100 * countIf(type != 0) / "
         f"countIf(type != 1) FROM {L7}"),
    Case("session length", "flow_log",
         "select Sum(session_length), Sum(request_length) from l7_flow_log where l7_protocol = 20",
         f"SELECT sum(ifNull(request_length, 0) + ifNull(response_length, 0)), sum(ifNull(request_length, 0)) "
         f"FROM {L7} WHERE l7_protocol = 20"),
    Case("toString(start_time) and _id", "flow_log",
         "select toString(start_time) as start_time, toString(_id), endpoint from l7_flow_log "
         "where l7_protocol = 41 order by start_time limit 3",
         f"SELECT toString(start_time) AS s, toString(_id), endpoint FROM {L7} WHERE l7_protocol = 41 "
         "ORDER BY s LIMIT 3", ordered=True),
    Case("metrics.<key>: a row's own metrics, NULL where absent", "flow_log",
         "select Count(row), Sum(`metrics.db_rows`) from l7_flow_log",
         f"SELECT count(), CAST(NULL, 'Nullable(Float64)') FROM {L7}"),
    Case("FastFilter(trace_id)", "flow_log",
         "select Count(row) from l7_flow_log where FastFilter(trace_id) = ''",
         f"SELECT count() FROM {L7} WHERE trace_id = ''"),
]

# -- flow_metrics ---------------------------------------------------------------------------------------------
NM = _m("network_map")
METRICS_CASES = [
    Case(f"network_map {p}: bytes and packets per server pod", "flow_metrics",
         "select pod_1, Sum(byte), Sum(packet_tx), Sum(new_flow), Sum(closed_flow) from network_map group by pod_1",
         f"SELECT {POD1}, sum(byte_tx + byte_rx), sum(packet_tx), sum(new_flow), sum(closed_flow) "
         f"FROM {_m('network_map', p)} GROUP BY pod_id_1", precision=p)
    for p in ("1s", "1m")
] + [
    Case("network_map Avg(rtt) is Σrtt_sum/Σrtt_count (NULL without samples)", "flow_metrics",
         "select server_port, Avg(rtt), Avg(srt), Avg(art) from network_map group by server_port",
         f"SELECT server_port, sum(rtt_sum) / nullIf(sum(rtt_count), 0), sum(srt_sum) / nullIf(sum(srt_count), 0), "
         f"sum(art_sum) / nullIf(sum(art_count), 0) FROM {NM} GROUP BY server_port", precision="1m"),
    Case("network_map ratios", "flow_metrics",
         "select Avg(retrans_ratio), Avg(tcp_establish_fail_ratio), Avg(bpp) from network_map",
         f"SELECT 100 * sum(retrans_tx + retrans_rx) / sum(packet_tx + packet_rx), 100 * sum(tcp_establish_fail) / "
         f"sum(closed_flow), sum(byte_tx + byte_rx) / sum(packet_tx + packet_rx) FROM {NM}", precision="1m"),
    Case("Max(byte) is the busiest minute (two layers)", "flow_metrics",
         "select Max(byte) as m, Min(byte) as n, AAvg(byte) as a from network_map",
         f"SELECT max(b), min(b), avg(b) FROM (SELECT sum(byte_tx + byte_rx) AS b FROM {NM} GROUP BY time)",
         precision="1m"),
    Case("Max(byte) per server pod (two layers)", "flow_metrics",
         "select pod_1, Max(byte) as m from network_map group by pod_1",
         f"SELECT p, max(b) FROM (SELECT {POD1} AS p, pod_id_1, sum(byte_tx + byte_rx) AS b FROM {NM} "
         "GROUP BY pod_id_1, time) GROUP BY pod_id_1, p", precision="1m"),
    Case("Max(packet) per second, per 10 s bucket (two layers)", "flow_metrics",
         "select time(time, 10) as t, Max(packet) as m from network_map group by t order by t",
         f"SELECT intDiv(toUnixTimestamp(s), 10) * 10 AS t, max(p) FROM (SELECT time AS s, sum(packet_tx + packet_rx)"
         f" AS p FROM {_m('network_map', '1s')} GROUP BY time) GROUP BY t ORDER BY t", precision="1s", ordered=True),
    Case("Percentile and Stddev of minutes (two layers)", "flow_metrics",
         "select Percentile(packet, 0.5) as p, Stddev(packet) as s from network_map",
         f"SELECT quantile(0.5)(x), stddevPopStable(x) FROM (SELECT sum(packet_tx + packet_rx) AS x FROM {NM} "
         "GROUP BY time)", precision="1m"),
    Case("two layers keep Avg of latency per minute", "flow_metrics",
         "select Avg(rtt) as r, Max(byte) as m from network_map",
         f"SELECT avgIf(r, r > 0), max(b) FROM (SELECT if(sum(rtt_count) > 0, sum(rtt_sum) / sum(rtt_count), NULL) "
         f"AS r, sum(byte_tx + byte_rx) AS b FROM {NM} GROUP BY time)", precision="1m"),
    Case("Spread of latency samples (two layers)", "flow_metrics",
         "select Spread(rtt) as s, Max(rtt) as m from network_map",
         f"SELECT max(rtt_sum / rtt_count) - min(rtt_sum / rtt_count), max(rtt_sum / rtt_count) FROM {NM} "
         "WHERE rtt_count > 0", precision="1m"),
    Case("Count(row) and Uniq in one layer", "flow_metrics",
         "select Count(row), Uniq(pod_1), Uniq(ip_0) from network_map",
         f"SELECT count(), uniq(pod_id_1), uniq((ip4_0, ip6_0)) FROM {NM}", precision="1m"),
    Case("Count(row) and Uniq next to a two-layer function", "flow_metrics",
         "select Count(row) as c, Uniq(pod_1) as u, Max(byte) as m from network_map",
         f"SELECT count(), uniq(pod_id_1), (SELECT max(b) FROM (SELECT sum(byte_tx + byte_rx) AS b FROM {NM} "
         f"GROUP BY time)) FROM {NM}", precision="1m"),
    Case("stored failure counters", "flow_metrics",
         "select Sum(server_reset), Sum(server_rst_flow), Sum(server_syn_miss), Sum(tcp_establish_fail) "
         "from network_map",
         f"SELECT sum(server_reset), sum(server_rst_flow), sum(server_syn_miss), sum(tcp_establish_fail) FROM {NM}",
         precision="1m"),
    Case("network (one end per row) by role", "flow_metrics",
         "select ip, Enum(role), Sum(packet) from network group by ip, role",
         f"SELECT if(is_ipv4, IPv4NumToString(ip4), IPv6NumToString(ip6)), 'Client', sum(packet_tx + packet_rx) "
         f"FROM {_m('network')} GROUP BY ip4, ip6, is_ipv4", precision="1m"),
    Case("legacy table names", "flow_metrics",
         "select Sum(packet) from vtap_flow_edge_port", f"SELECT sum(packet_tx + packet_rx) FROM {NM}"),
    Case("legacy table name with a precision suffix", "flow_metrics",
         "select Sum(byte) from `vtap_flow_port.1s`", f"SELECT sum(byte_tx + byte_rx) FROM {_m('network', '1s')}"),
    Case("application: RED per service", "flow_metrics",
         "select pod_service, Sum(request), Avg(error_ratio), Avg(rrt), Max(rrt_max) from application "
         "group by pod_service",
         f"SELECT {NAME.format(m='pod_service_map', c='service_id')}, sum(request), if(sum(response) > 0, "
         f"100 * sum(error) / sum(response), NULL), sum(rrt_sum) / sum(rrt_count), max(rrt_max) FROM "
         f"{_m('application')} GROUP BY service_id", precision="1m"),
    Case("application_map per protocol and observation point", "flow_metrics",
         "select Enum(l7_protocol), observation_point, Sum(request), Sum(server_error), Avg(success_ratio) "
         "from application_map group by l7_protocol, observation_point",
         f"SELECT {L7_PROTO}, observation_point, sum(request), sum(server_error), 100 - 100 * sum(error) / "
         f"sum(response) FROM {_m('application_map', '1s')} GROUP BY l7_protocol, observation_point", precision="1s"),
    Case("application_map latency percentile", "flow_metrics",
         "select Enum(l7_protocol), Percentile(rrt, 0.9) from application_map group by l7_protocol",
         f"SELECT {L7_PROTO}, quantile(0.9)(rrt_sum / rrt_count) FROM {_m('application_map')} WHERE rrt_count > 0 "
         "GROUP BY l7_protocol", precision="1m"),
    Case("application_map filters on both ends", "flow_metrics",
         "select Sum(request) from application_map where pod_ns_0 = 'shop' and pod_service_1 = 'api'",
         f"SELECT sum(request) FROM {_m('application_map')} WHERE pod_ns_id_0 = 1 AND service_id_1 = 3",
         precision="1m"),
    Case("application Avg(timeout_ratio) next to Sum(request) AS request", "flow_metrics",
         "select Sum(request) as request, Avg(timeout_ratio) as t, Avg(response_ratio) as r from application",
         f"SELECT sum(request), 100 * sum(timeout) / sum(request), 100 * sum(response) / sum(request) "
         f"FROM {_m('application')}", precision="1m"),
    Case("Max(request) per minute per protocol, with HAVING", "flow_metrics",
         "select Enum(l7_protocol) as p, Max(request) as m from application group by l7_protocol having m > 10",
         f"SELECT {L7_PROTO}, max(r) AS m FROM (SELECT l7_protocol, sum(request) AS r FROM {_m('application')} "
         "GROUP BY l7_protocol, time) GROUP BY l7_protocol HAVING m > 10", precision="1m"),
]

# -- SLIMIT, HAVING, ORDER BY, LIMIT ------------------------------------------------------------------------
CLAUSE_CASES = [
    Case("HAVING on an aggregate", "flow_log",
         "select server_port, Count(row) as n from l4_flow_log group by server_port having Count(row) >= 5",
         f"SELECT server_port, count() FROM {L4} GROUP BY server_port HAVING count() >= 5"),
    Case("HAVING on an alias with a quoted number", "flow_log",
         "select server_port, Sum(byte) as b from l4_flow_log group by server_port having b >= '100000'",
         f"SELECT server_port, sum(byte_tx + byte_rx) AS b FROM {L4} GROUP BY server_port HAVING b >= 100000"),
    Case("ORDER BY an alias, LIMIT", "flow_log",
         "select server_port, Sum(byte) as b from l4_flow_log group by server_port order by b desc limit 3",
         f"SELECT server_port, sum(byte_tx + byte_rx) AS b FROM {L4} GROUP BY server_port ORDER BY b DESC LIMIT 3",
         ordered=True),
    Case("ORDER BY defaults to ascending", "flow_log",
         "select server_port, Count(row) from l4_flow_log group by server_port order by server_port",
         f"SELECT server_port, count() FROM {L4} GROUP BY server_port ORDER BY server_port", ordered=True),
    Case("LIMIT m, n", "flow_log",
         "select server_port from l4_flow_log group by server_port order by server_port limit 2, 3",
         f"SELECT server_port FROM {L4} GROUP BY server_port ORDER BY server_port LIMIT 3 OFFSET 2", ordered=True),
    Case("LIMIT n OFFSET m", "flow_log",
         "select server_port from l4_flow_log group by server_port order by server_port limit 3 offset 4",
         f"SELECT server_port FROM {L4} GROUP BY server_port ORDER BY server_port LIMIT 3 OFFSET 4", ordered=True),
    Case("ORDER BY an aggregate not selected", "flow_log",
         "select pod_1 from l4_flow_log where pod_id_1 != 0 group by pod_1 order by Sum(byte) desc",
         f"SELECT {POD1} FROM {L4} WHERE pod_id_1 != 0 GROUP BY pod_id_1 ORDER BY sum(byte_tx + byte_rx) DESC",
         ordered=True),
    Case("SLIMIT keeps the top series", "flow_log",
         "select server_port, time(time, 3600) as t, Sum(byte) as b from l4_flow_log group by server_port, t "
         "slimit 2 sorder by Sum(byte) desc",
         f"SELECT server_port, intDiv(toUnixTimestamp(time), 3600) * 3600 AS t, sum(byte_tx + byte_rx) FROM {L4} "
         f"WHERE server_port IN (SELECT server_port FROM {L4} GROUP BY server_port ORDER BY sum(byte_tx + byte_rx) "
         "DESC LIMIT 2) GROUP BY server_port, t"),
    Case("SLIMIT without SORDER ranks by the first metric", "flow_metrics",
         "select pod_1, time(time, 60) as t, Sum(packet) as p from network_map where pod_id_1 != 0 "
         "group by pod_1, t slimit 1",
         f"SELECT {POD1}, toUnixTimestamp(time) AS t, sum(packet_tx + packet_rx) FROM {NM} WHERE pod_id_1 = "
         f"(SELECT pod_id_1 FROM {NM} WHERE pod_id_1 != 0 GROUP BY pod_id_1 ORDER BY sum(packet_tx + packet_rx) DESC "
         "LIMIT 1) GROUP BY pod_id_1, t", precision="1m"),
    Case("default LIMIT 10000", "flow_log", "select Count(row) from l7_flow_log group by _id",
         f"SELECT count() FROM {L7} GROUP BY _id"),
    Case("Histogram of per-flow values", "flow_log",
         "select Histogram(Sum(packet), 4) as h from l4_flow_log",
         f"SELECT histogram(4)(p) FROM (SELECT sum(packet_tx + packet_rx) AS p FROM {L4} GROUP BY _id) WHERE p > 0"),
    Case("TopK and Any on a resource", "flow_log",
         "select TopK(pod_1, 2) as t, Any(pod_ns_1) as a from l4_flow_log where pod_1 = 'api'",
         f"SELECT ['api'], 'payments' FROM {L4} LIMIT 1"),
]

# -- what Grafana sends (grafana-integration.md §2.1, names of this lab) -----------------------------------
GRAFANA_CASES = [
    Case("variable: clusters", "flow_metrics",
         "SELECT pod_cluster_1 as `value`, pod_cluster_1 as `display_name` FROM `network_map.1m` WHERE "
         "exist(pod_cluster_1) AND time >= {t0} AND time <= {t1} GROUP BY `value` LIMIT 999999999999",
         f"SELECT DISTINCT 'lab', 'lab' FROM {NM} WHERE pod_cluster_id_1 != 0"),
    Case("variable: namespaces of a cluster (Any)", "flow_metrics",
         "SELECT pod_ns as value, pod_ns as display_name FROM `network_map.1m` WHERE exist(pod_ns_1) "
         "AND ('__any' IN ('__disabled') OR '__any' IN ('__any') OR pod_cluster_1 IN ('lab')) "
         "GROUP BY `value` LIMIT 999999999999".replace("pod_ns as", "pod_ns_1 as"),
         f"SELECT DISTINCT {NAME.format(m='pod_ns_map', c='pod_ns_id_1')} AS n, n FROM {NM} WHERE pod_ns_id_1 != 0"),
    Case("variable: workloads", "flow_metrics",
         "SELECT pod_group_1 as `value`, pod_group_1 as `display_name` FROM `application_map.1m` WHERE "
         "exist(pod_group_1) AND ('shop' IN ('__any', '__disabled') OR pod_ns_1 IN ('payments', 'kube-system')) "
         "GROUP BY `value`",
         "SELECT name, name FROM flow_tag.pod_group FINAL WHERE id IN (3, 4)"),
    Case("G1 pod flow topology", "flow_metrics",
         "SELECT PerSecond((Avg(`byte`)*8)) AS `bps`, Avg(`retrans_ratio`) AS `Avg(retrans_ratio)`, "
         "Avg(`tcp_establish_fail_ratio`) AS `Avg(tcp_establish_fail_ratio)`, Avg(`rtt`) AS `Avg(rtt)`, "
         "Avg(`art`) AS `Avg(art)`, node_type(auto_instance_0) AS `client_node_type`, icon_id(auto_instance_0) AS "
         "`client_icon_id`, auto_instance_id_0, auto_instance_0, node_type(pod_1) AS `server_node_type`, "
         "icon_id(pod_1) AS `server_icon_id`, pod_id_1, pod_1, Enum(observation_point), observation_point FROM "
         "network_map WHERE pod_cluster_1 = 'lab' AND pod_ns_1 = 'payments' AND pod_group_1 = 'api' AND "
         "time>='{t0}' AND time<='{t1}' GROUP BY auto_instance_0, pod_1, observation_point, auto_instance_id_0, "
         "pod_id_1, `client_node_type`, `server_node_type` LIMIT 100",
         f"SELECT sum(byte_tx + byte_rx) * 8 / ({{t1}} DIV 60 * 60 - {{t0}} DIV 60 * 60 + 60), "
         "if(sum(packet_tx + packet_rx) > 0, 100 * sum(retrans_tx + retrans_rx) / sum(packet_tx + packet_rx), NULL), "
         "if(sum(closed_flow) > 0, 100 * sum(tcp_establish_fail) / sum(closed_flow), NULL), if(sum(rtt_count) > 0, "
         "sum(rtt_sum) / sum(rtt_count), NULL), if(sum(art_count) > 0, sum(art_sum) / sum(art_count), NULL), 'pod', "
         f"0, pod_id_0, {POD0}, 'pod', 0, 4, 'api', 'Other NIC', 'rest' FROM {NM} WHERE pod_id_1 = 4 AND "
         "time >= {t0} AND time <= {t1} GROUP BY pod_id_0", precision="1m"),
    Case("G2 throughput time series with SLIMIT", "flow_metrics",
         "SELECT PerSecond((Avg(`byte`)*8)) AS `PerSecond(Math(Avg(byte)*8))`, node_type(auto_instance_0) AS "
         "`client_node_type`, auto_instance_id_0, auto_instance_0, pod_id_1, pod_1, time(time, 60) AS `time_60` "
         "FROM network_map WHERE pod_cluster_1 = 'lab' AND time>='{t0}' AND time<='{t1}' GROUP BY auto_instance_0, "
         "pod_1, auto_instance_id_0, pod_id_1, `client_node_type`, `time_60` SLIMIT 20 LIMIT 1000",
         f"SELECT sum(byte_tx + byte_rx) * 8 / 60, 'pod', auto_instance_id_0, {POD0}, pod_id_1, {POD1}, "
         f"toUnixTimestamp(time) FROM {NM} WHERE pod_cluster_id_1 = 1 AND time >= {{t0}} AND time <= {{t1}} "
         "GROUP BY auto_instance_id_0, pod_id_0, pod_id_1, time", precision="1m"),
    Case("G4 pod flow log", "flow_log",
         "SELECT `byte_tx` AS `byte_tx`, `byte_rx` AS `byte_rx`, `retrans_tx` AS `retrans_tx`, `rtt` AS `rtt`, "
         "`art` AS `art`, auto_instance_0, auto_instance_1, toString(start_time) AS `start_time`, Enum(protocol), "
         "client_port, Enum(server_port), Enum(observation_point), Enum(status), auto_instance_id_0, "
         "auto_instance_id_1 FROM l4_flow_log WHERE (pod_cluster_0 = 'lab' OR pod_cluster_1 = 'lab') AND "
         "(pod_ns_0 = 'shop' OR pod_ns_1 = 'shop') AND (pod_group_0 = 'web' OR pod_group_1 = 'web') AND "
         "time>='{t0}' AND time<='{t1}' LIMIT 500",
         f"SELECT byte_tx, byte_rx, retrans_tx, rtt, art_sum / art_count, {AUTO0}, {AUTO1}, toString(start_time), "
         "transform(protocol, [6, 17, 58], ['TCP', 'UDP', 'ICMPv6'], ''), client_port, toString(server_port), 'Other NIC', 'Success', "
         f"auto_instance_id_0, auto_instance_id_1 FROM {L4} WHERE pod_group_id_0 = 1 OR pod_group_id_1 = 1"),
    Case("G5 flow-log errors per minute", "flow_log",
         "SELECT Sum(`log_count`) AS `Sum(客户端异常)`, time(time, 60) AS `time_60` FROM l4_flow_log WHERE "
         "status IN (3) AND time>='{t0}' AND time<='{t1}' GROUP BY `time_60` LIMIT 1000",
         f"SELECT count(), toUnixTimestamp(toStartOfMinute(time)) AS t FROM {L4} WHERE status = 3 GROUP BY t"),
    Case("G6 service call topology", "flow_metrics",
         "SELECT PerSecond(Avg(`request`)) AS `request`, Avg(`server_error_ratio`) AS `server_error_ratio`, "
         "Avg(`rrt`) AS `rrt`, node_type(pod_0) AS `client_node_type`, pod_id_0, pod_0, node_type(pod_1) AS "
         "`server_node_type`, pod_id_1, pod_1, Enum(observation_point), observation_point FROM application_map "
         "WHERE pod_cluster_1 = 'lab' AND l7_protocol IN ('20') AND time>='{t0}' AND time<='{t1}' GROUP BY pod_0, "
         "pod_1, observation_point, pod_id_0, pod_id_1, `client_node_type`, `server_node_type` LIMIT 100",
         f"SELECT sum(request) / ({{t1}} DIV 60 * 60 - {{t0}} DIV 60 * 60 + 60), 100 * sum(server_error) / "
         f"sum(response), sum(rrt_sum) / sum(rrt_count), 'pod', pod_id_0, {POD0}, 'pod', pod_id_1, {POD1}, "
         f"'Other NIC', 'rest' FROM {_m('application_map')} WHERE pod_cluster_id_1 = 1 AND l7_protocol = 20 "
         "GROUP BY pod_id_0, pod_id_1", precision="1m"),
    Case("G7 request log", "flow_log",
         "SELECT toString(start_time) AS `start_time`, auto_instance_0, auto_instance_1, Enum(observation_point), "
         "Enum(l7_protocol), l7_protocol_str, request_type, request_domain, request_resource, Enum(response_status), "
         "response_code, response_duration FROM l7_flow_log WHERE request_type = 'GET' AND response_status IN "
         "('4') AND time>='{t0}' AND time<='{t1}' LIMIT 1000",
         f"SELECT toString(start_time), {AUTO0}, {AUTO1}, transform(observation_point, ['c', 'c-nd', 'rest'], ['Client NIC', "
         f"'Client K8s Node', 'Other NIC'], ''), {HTTP}, {HTTP}, request_type, request_domain, "
         f"request_resource, 'Client Error', response_code, response_duration FROM {L7} WHERE request_type = 'GET' "
         "AND response_status = 4"),
    Case("G8 tracing request list", "flow_log",
         "SELECT `response_duration` AS `response_duration`, auto_instance_0, auto_instance_1, ip_0, ip_1, "
         "Enum(capture_nic_type), Enum(l7_protocol), request_type, Enum(response_status), trace_id, span_id, "
         "server_port, endpoint, toString(_id), auto_instance_id_0, auto_instance_id_1 FROM l7_flow_log WHERE "
         "(pod_cluster_0 = 'lab' OR pod_cluster_1 = 'lab') AND (pod_ns_0 = 'shop' OR pod_ns_1 = 'shop') AND "
         "time>='{t0}' AND time<='{t1}' LIMIT 100",
         f"SELECT response_duration, {POD0}, {POD1}, {IP0}, {IP1}, 'Local', {L7_PROTO}, request_type, "
         "if(response_status = 0, 'Success', 'Client Error'), trace_id, span_id, server_port, endpoint, "
         f"toString(_id), auto_instance_id_0, auto_instance_id_1 FROM {L7} WHERE pod_ns_id_0 = 1 OR pod_ns_id_1 = 1"),
    Case("9: service overview (RED)", "flow_metrics",
         "SELECT PerSecond(Avg(`request`)) AS `Request Rate`, Avg(`rrt`) AS `Delay Avg`, Percentile(`rrt`,0.75) AS "
         "`Delay P75`, Avg(`client_error_ratio`) AS `Client Error Ratio`, Avg(`server_error_ratio`) AS "
         "`Server Error Ratio`, app_service, auto_service, Enum(signal_source), auto_service_id, "
         "node_type(auto_service) AS `node_type`, icon_id(auto_service) AS `icon_id`, signal_source FROM application "
         "WHERE auto_service_id!=0 AND app_service LIKE('*') AND (Enum(signal_source) = 'Packet' OR "
         "Enum(signal_source) = 'xFlow' OR Enum(signal_source) = 'eBPF' OR Enum(signal_source) = 'OTel') AND "
         "time>='{t0}' AND time<='{t1}' GROUP BY auto_service, app_service, signal_source, auto_service_id, "
         "`node_type` LIMIT 1000",
         f"SELECT sum(request) / ({{t1}} DIV 60 * 60 - {{t0}} DIV 60 * 60 + 60), if(sum(rrt_count) > 0, "
         "sum(rrt_sum) / sum(rrt_count), NULL), quantileIf(0.75)(rrt_sum / rrt_count, rrt_count > 0), "
         "if(sum(response) > 0, 100 * sum(client_error) / sum(response), NULL), if(sum(response) > 0, 100 * "
         "sum(server_error) / sum(response), NULL), app_service, if(auto_service_type IN (0, 255), "
         "if(is_ipv4, IPv4NumToString(ip4), IPv6NumToString(ip6)), dictGet('flow_tag.device_map', 'name', "
         "(toUInt64(auto_service_type), toUInt64(auto_service_id)))) AS s, 'Packet', if(auto_service_type IN "
         "(0, 255), subnet_id, auto_service_id) AS i, multiIf(auto_service_type = 1, 'chost', auto_service_type = 11, "
         "'pod_service', auto_service_type = 130, 'pod_group', 'ip') AS n, dictGetOrDefault('flow_tag.device_map', "
         "'icon_id', (toUInt64(auto_service_type), toUInt64(auto_service_id)), toInt64(0)), 0 "
         f"FROM {_m('application')} WHERE i != 0 AND time >= {{t0}} AND time <= {{t1}} GROUP BY s, app_service, i, "
         "n, auto_service_type, auto_service_id",
         precision="1m"),
    Case("11: top N endpoints", "flow_log",
         "SELECT Sum(`request`) AS `request`, endpoint FROM l7_flow_log WHERE `pod_cluster_0` = 'lab' AND "
         "`pod_group_0` = 'web' AND time>={t0} AND time<={t1} GROUP BY endpoint ORDER BY `request` desc LIMIT 10",
         f"SELECT countIf(type != 1) AS r, endpoint FROM {L7} WHERE pod_group_id_0 = 1 GROUP BY endpoint "
         "ORDER BY r DESC, endpoint LIMIT 10"),
    Case("12: threshold-style HAVING with SLIMIT", "flow_metrics",
         "SELECT Sum(`server_error`) AS `Sum(server_error)`, time(time, 60) AS `time_60`, pod_service_1 FROM "
         "application_map WHERE time>={t0} AND time<={t1} GROUP BY `time_60`, pod_service_1 HAVING "
         "Sum(`server_error`)>='1' ORDER BY `Sum(server_error)` desc SLIMIT 20 LIMIT 10000",
         f"SELECT sum(server_error) AS e, toUnixTimestamp(time), {NAME.format(m='pod_service_map', c='service_id_1')} "
         f"FROM {_m('application_map')} WHERE time >= {{t0}} AND time <= {{t1}} GROUP BY time, service_id_1 "
         "HAVING e >= 1", precision="1m"),
    Case("35: resource ids as variable values", "flow_metrics",
         "SELECT pod_id as `value`, pod as `display_name` FROM `network.1m` WHERE pod_cluster IN ('lab') AND "
         "time >= {t0}-500 AND time <= {t1}+500 GROUP BY `value`",
         f"SELECT 0, '' FROM {L4} WHERE 0", nonempty=False),
    Case("alert rule: server error ratio per service", "flow_metrics",
         "SELECT auto_service, Avg(`server_error_ratio`) AS v FROM application WHERE auto_service_id!=0 AND "
         "time>={t0} AND time<={t1} GROUP BY auto_service",
         "SELECT s, if(sum(r) > 0, 100 * sum(e) / sum(r), NULL) FROM (SELECT if(auto_service_type IN (0, 255), "
         "if(is_ipv4, IPv4NumToString(ip4), IPv6NumToString(ip6)), dictGet('flow_tag.device_map', 'name', "
         "(toUInt64(auto_service_type), toUInt64(auto_service_id)))) AS s, response AS r, server_error AS e, "
         f"auto_service_type, auto_service_id, ip4, ip6, is_ipv4 FROM {_m('application')} WHERE (auto_service_type "
         "IN (0, 255) AND subnet_id != 0 OR auto_service_type NOT IN (0, 255) AND auto_service_id != 0) AND "
         "time >= {t0} AND time <= {t1}) GROUP BY s, "
         "auto_service_type, auto_service_id, if(auto_service_type IN (0, 255), s, '')", precision="1m"),
]

# -- reference/deepflow-querier.md §7, the numbered inputs (names of this lab) ------------------------------
SECTION7_CASES = [
    Case("§7.2 Sum/Time_interval per 120 s, HAVING, LIMIT … OFFSET", "flow_log",
         "select Sum(byte)/Time_interval as sum_byte, time(time, 120) as time_120 from l4_flow_log group by time_120 "
         "having Sum(byte)>=0 order by time_120 limit 10 offset 1",
         f"SELECT sum(byte_tx + byte_rx) / 120, intDiv(toUnixTimestamp(time), 120) * 120 AS t FROM {L4} GROUP BY t "
         "ORDER BY t LIMIT 10 OFFSET 1", ordered=True),
    Case("§7.3 Uniq over several tags", "flow_log",
         "select Uniq(ip_0, pod_0, pod_id_0) as uniq_0 from l4_flow_log",
         f"SELECT length(groupUniqArray((ip4_0, ip6_0, pod_id_0))) FROM {L4}"),
    Case("§7.9 PerSecond(Sum(byte)+100) per minute", "flow_log",
         "select time(time, 60) as toi, PerSecond(Sum(byte)+100) as p from l4_flow_log group by toi order by toi",
         f"SELECT toUnixTimestamp(toStartOfMinute(time)) AS t, (sum(byte_tx + byte_rx) + 100) / 60 FROM {L4} "
         "GROUP BY t ORDER BY t", ordered=True),
    Case("§7.13 ip ranges", "flow_log",
         "select Count(row) from l4_flow_log where ip_1 >= '10.99.0.0/24' and ip_1 <= '10.200.0.0/24'",
         f"SELECT count() FROM {L4} WHERE is_ipv4 AND ip4_1 BETWEEN toIPv4('10.99.0.0') AND toIPv4('10.200.0.255')"),
    Case("§7.14 a k8s label through its alias in WHERE and GROUP BY", "flow_log",
         "select `k8s.label.app_1` as `k8s.label.abc`, Count(row) from l4_flow_log where `k8s.label.abc`='api' "
         "group by `k8s.label.abc`",
         f"SELECT 'api', count() FROM {L4} WHERE service_id_1 = 3 OR pod_id_1 = 4"),
    Case("§7.21 Enum of the workload type, negated", "flow_log",
         "select Enum(pod_group_type_1), pod_group_type_1, Count(row) from l4_flow_log where "
         "Enum(pod_group_type_1) != 'K8s Deployment' and pod_group_id_1 != 0 group by pod_group_type_1",
         f"SELECT 'K8s StatefulSet', 131, count() FROM {L4} WHERE pod_group_id_1 IN (SELECT id FROM flow_tag.pod_group "
         "WHERE pod_group_type = 131)"),
    Case("§7.25 AAvg, icon_id, Count(row) with HAVING on an alias (two layers)", "flow_metrics",
         "select AAvg(`byte_tx`) AS `AAvg(byte_tx)`, icon_id(chost_0) as `xx`, Count(row) as `c`, region_0 "
         "from vtap_flow_edge_port group by region_0 having `c` > 0",
         "SELECT avg(s), 0, sum(c), '' FROM (SELECT region_id_0, if(l3_device_type_0 = 1, l3_device_id_0, 0) AS ch, "
         f"sum(byte_tx) AS s, count() AS c FROM {NM} GROUP BY region_id_0, ch, time) GROUP BY region_id_0, ch "
         "HAVING sum(c) > 0", precision="1m"),
    Case("§7.26 Avg and Spread of a percentage per service (two layers)", "flow_metrics",
         "select Avg(`success_ratio`) AS `Avg(success_ratio)`, Spread(`success_ratio`) AS `Spread(success_ratio)`, "
         "auto_service_id from vtap_app_port group by auto_service_id",
         "SELECT avg(r), max(r) - min(r), i FROM (SELECT if(auto_service_type IN (0, 255), subnet_id, "
         "auto_service_id) AS i, if(sum(response) > 0, (1 - least(sum(error) / sum(response), 1)) * 100, NULL) AS r "
         f"FROM {_m('application')} GROUP BY i, time) GROUP BY i", precision="1m"),
    Case("§7.37 latency P90 of a workload per minute, with SLIMIT", "flow_metrics",
         "SELECT Percentile(`rrt`,0.9) AS `delay_p90`, time(time, 60) AS `time_60`, node_type(pod_group_0) AS "
         "`client_node_type`, icon_id(pod_group_0) AS `client_icon_id`, pod_group_id_0, pod_group_0 FROM "
         "application_map WHERE `pod_group_0` = 'web' AND `observation_point` IN ('c','s','rest') AND time>={t0} "
         "AND time<={t1} GROUP BY `time_60`, pod_group_0, pod_group_id_0, `client_node_type` SLIMIT 20 LIMIT 1000",
         "SELECT quantileIf(0.9)(rrt_sum / rrt_count, rrt_count > 0), toUnixTimestamp(time), 'pod_group', 0, "
         f"pod_group_id_0, 'web' FROM {_m('application_map')} WHERE pod_group_id_0 = 1 AND time >= {{t0}} GROUP BY "
         "time, pod_group_id_0", precision="1m"),
]

CASES = (L4_COUNTER_CASES + L4_AGGREGATE_CASES + TIME_CASES + TAG_CASES + FILTER_CASES + L7_CASES
         + METRICS_CASES + CLAUSE_CASES + GRAFANA_CASES + SECTION7_CASES)


@pytest.mark.parametrize("case", [c.param() for c in CASES])
def test_dialect_answers_like_clickhouse(engine, span, case):
    columns, got = dialect(engine, case.dialect.format(**span), case.db, case.precision)
    want = raw(engine, case.raw.format(**span))
    assert len(columns) == len(got[0]) if got else True
    if case.nonempty:
        assert want, "the expected answer is empty: the case tests nothing"
    assert_rows(got, want, ordered=case.ordered)


def test_corpus_size():
    assert len(CASES) >= 150


def test_topk_lists_the_most_frequent_values(engine):
    """§7.27/28: TopK (and DeepFlow's lower-case topK) over names: the most frequent values per group."""
    _, rows = dialect(engine, "select pod_ns_1, TopK(pod_1, 10) as t, topK(pod_1, 10) as u from l4_flow_log "
                              "where exist(pod_1) group by pod_ns_1", "flow_log")
    want = {ns: sorted(pods) for ns, pods in raw(
        engine, f"SELECT {NAME.format(m='pod_ns_map', c='pod_id_1')}, groupUniqArray({POD1}) FROM {L4} "
                "WHERE pod_id_1 != 0 GROUP BY pod_ns_id_1".replace("pod_id_1)), groupUniq", "pod_ns_id_1)), groupUniq"))}
    assert {ns: sorted(t) for ns, t, _ in rows} == want
    assert all(sorted(t) == sorted(u) for _, t, u in rows)
    _, [[top]] = dialect(engine, "select TopK(pod_service_1, 1) from application_map", "flow_metrics", "1m")
    [[most]] = raw(engine, f"SELECT {NAME.format(m='pod_service_map', c='service_id_1')} AS n FROM "
                           f"{_m('application_map')} WHERE n != '' GROUP BY n ORDER BY count() DESC LIMIT 1")
    assert top == [most]


# -- answers checked against tshark's counts (tests/data/truth) -------------------------------------------

def _conversations(name: str) -> list[dict]:
    return [c for c in truth(name)["conversations"] if not c["tunnel_outer"]]


@pytest.mark.parametrize("pcap", ["http1", "mysql", "redis", "tcp_rst", "retrans", "kafka"])
def test_bytes_and_packets_per_conversation_match_tshark(engine, pcap):
    for c in _conversations(pcap):
        if c["proto"] != "tcp":
            continue
        _, rows = dialect(engine, f"select Sum(packet_tx), Sum(packet_rx), Sum(byte_tx), Sum(byte_rx) "
                                  f"from l4_flow_log where client_port = {c['a_port']} and server_port = {c['b_port']} "
                                  f"and ip_0 = '{c['a']}' and ip_1 = '{c['b']}'", "flow_log")
        assert rows == [[c["frames_ab"], c["frames_ba"], c["bytes_ab"], c["bytes_ba"]]], c


def test_close_types_of_tcp_rst_and_syn_drop(engine):
    """tcp_rst: 3× SYN→RST (Est. – Server RST), 2× reset mid-transfer; syn_drop: SYNs never answered."""
    ports = {c["b_port"] for c in _conversations("tcp_rst")}
    _, rows = dialect(engine, "select Enum(close_type) as c, Enum(status) as s, Count(row) as n from l4_flow_log "
                              f"where server_port in ({', '.join(map(str, ports))}) and ip_1 = '10.99.0.1' "
                              "group by close_type, status order by n", "flow_log")
    assert rows == [["Transfer – Server RST", "Server Error", 2], ["Est. – Server RST", "Server Error", 3]]
    _, rows = dialect(engine, "select Sum(server_syn_miss), Sum(tcp_establish_fail), Sum(retrans_syn) "
                              "from l4_flow_log where Enum(close_type) = 'Est. – Server SYN Miss'", "flow_log")
    syn = _conversations("syn_drop")[0]
    assert rows == [[1, 1, syn["frames_ab"] - 1]]


def test_retransmissions_match_tshark(engine):
    convs = [c for c in _conversations("retrans") if c["proto"] == "tcp"]
    _, rows = dialect(engine, "select Sum(retrans_tx) from l4_flow_log where " + " or ".join(
        f"(client_port = {c['a_port']} and server_port = {c['b_port']})" for c in convs), "flow_log")
    assert rows == [[sum(c["tshark_retrans_ab"] for c in convs)]]


def test_requests_per_service_of_the_k8s_lab(engine):
    """k8s_pods: web-a calls the api Service 8 times (one 404); k8s_churn: web-a again until it is
    deleted, then web-b from the same address (truth: tests/data/truth/k8s_*.json)."""
    pods, churn = truth("k8s_pods"), truth("k8s_churn")
    deleted_us = churn["churn"]["deleted_at"] * 1e6
    churn_a = sum(1 for t in churn["http"]["transactions"] if t["request_us"] < deleted_us)
    web_a = pods["http"]["requests"] + churn_a
    web_b = churn["http"]["requests"] - churn_a
    errors_a = sum(n for code, n in pods["http"]["status_counts"].items() if code.startswith("4"))
    _, rows = dialect(engine, "select pod_0, pod_service_1, Sum(request), Sum(client_error) from l7_flow_log "
                              "where pod_service_1 = 'api' and Enum(l7_protocol) = 'HTTP' group by pod_0, "
                              "pod_service_1 order by pod_0", "flow_log")
    assert rows == [["web-a", "api", web_a, errors_a], ["web-b", "api", web_b, 0]]
    _, app = dialect(engine, "select pod_service_1, Sum(request), Sum(client_error) from application_map "
                             "where pod_service_1 = 'api' group by pod_service_1", "flow_metrics", "1m")
    assert app == [["api", web_a + web_b, errors_a]]


# -- SHOW on the store ------------------------------------------------------------------------------------------

def test_show_tags_lists_the_label_keys_the_store_holds(engine):
    cols, rows = dialect(engine, "show tags from l4_flow_log where name like 'k8s.label.*'", "flow_log")
    keys = raw(engine, "SELECT DISTINCT key FROM flow_tag.pod_k8s_label UNION DISTINCT "
                       "SELECT DISTINCT key FROM flow_tag.pod_service_k8s_label")
    assert sorted(r[0] for r in rows) == sorted(f"k8s.label.{k}" for [k] in keys)
    app = dict(zip(cols, next(r for r in rows if r[0] == "k8s.label.app"), strict=True))
    assert (app["client_name"], app["server_name"], app["type"], app["deprecated"]) == (
        "k8s.label.app_0", "k8s.label.app_1", "map_item", False)
    _, l7 = dialect(engine, "show tags from l7_flow_log where name = 'attribute.user_agent'", "flow_log")
    assert [r[:3] for r in l7] == [["attribute.user_agent"] * 3]


def test_show_tag_values(engine):
    cols, rows = dialect(engine, "show tag pod values from l4_flow_log", "flow_log")
    assert cols == ["value", "display_name", "uid"]
    assert rows == [list(r) + [""] for r in raw(engine, "SELECT id, name FROM flow_tag.pod FINAL ORDER BY id")]
    _, like = dialect(engine, "show tag pod values from l4_flow_log where display_name like '*e*' limit 2", "flow_log")
    assert like == [[1, "web-a", ""], [2, "web-b", ""]]       # shortest names first
    _, nth = dialect(engine, "show tag pod_ns values from l4_flow_log limit 1 offset 1", "flow_log")
    assert nth == [[2, "payments", ""]]
    _, svc = dialect(engine, "show tag pod_service values from network where pod_ns_id = 1", "flow_metrics")
    assert [r[1] for r in svc] == ["web", "redis"]
    # a dashboard's chained variable: DeepFlow's "Any" guard is a comparison of literals, folded
    chained = "show tag pod_group values from network where ('__any' IN ({v}) OR pod_ns IN ({v}))"
    _, shop = dialect(engine, chained.format(v="'shop'"), "flow_metrics")
    assert [r[1] for r in shop] == ["web", "redis"]
    _, every = dialect(engine, chained.format(v="'__any'"), "flow_metrics")
    assert [r[1] for r in every] == [r[0] for r in raw(engine, "SELECT name FROM flow_tag.pod_group FINAL ORDER BY id")]
    _, none = dialect(engine, "show tag pod_group values from network where 'a' != 'a' or pod_ns = 'nowhere'",
                      "flow_metrics")
    assert none == []
    _, chost = dialect(engine, "show tag chost values from network_map", "flow_metrics")
    assert chost == [[1, "netlab-srv", ""], [2, "netlab-cli", ""]]
    cols, enum = dialect(engine, "show tag close_type values from l4_flow_log where display_name like 'Est*'",
                         "flow_log")
    assert cols == ["value", "display_name", "description"]
    assert [r[0] for r in enum] == [15, 7, 10, 18, 19, 13]      # "Est. – …", shortest names first
    _, label = dialect(engine, "show tag `k8s.label.app` values from l7_flow_log", "flow_log")
    assert [r[0] for r in label] == ["api", "redis", "web"]
    _, ep = dialect(engine, "show tag endpoint values from l7_flow_log limit 2", "flow_log")
    top = raw(engine, f"SELECT endpoint FROM {L7} WHERE endpoint != '' GROUP BY endpoint ORDER BY count() DESC LIMIT 2")
    assert [r[0] for r in ep] == [r[0] for r in top]
    cols, auto = dialect(engine, "show tag auto_service values from l7_flow_log where display_name = 'api'",
                         "flow_log")
    assert cols == ["value", "display_name", "device_type", "uid", "icon_id"]
    assert sorted(r[2] for r in auto) == [11, 130]
    _, agents = dialect(engine, "show tag agent values from l4_flow_log", "flow_log")
    assert [r[1] for r in agents] == [r[0] for r in raw(engine, "SELECT name FROM flow_tag.vtap FINAL")]


def test_every_tag_and_metric_runs_on_clickhouse(engine):
    """The catalogue's SQL is valid ClickHouse on the real schema: every tag of every table in one
    SELECT/GROUP BY, every metric under Sum, Avg and Max."""
    for db, table, precision in (("flow_log", "l4_flow_log", None), ("flow_log", "l7_flow_log", None),
                                 ("flow_metrics", "network", "1s"), ("flow_metrics", "network_map", "1m"),
                                 ("flow_metrics", "application", "1m"), ("flow_metrics", "application_map", "1s")):
        _, tag_rows = dialect(engine, f"show tags from {table}", db, precision)
        names = sorted({n for r in tag_rows for n in r[1:3] if not n.startswith("attribute.")})
        for chunk in (names[i:i + 40] for i in range(0, len(names), 40)):
            cols = ", ".join(f"`{n}`" for n in chunk)
            dialect(engine, f"select {cols}, Count(row) from {table} group by {cols} limit 1", db, precision)
        _, metric_rows = dialect(engine, f"show metrics from {table}", db, precision)
        metrics = [r[0] for r in metric_rows if r[9] not in ("Tag", "Other")]
        items = ", ".join(f"Sum({m}), Avg({m}), Max({m})" for m in metrics)
        dialect(engine, f"select {items} from {table}", db, precision)


def test_schemas_value_types_come_from_clickhouse(engine):
    status, body = engine.query("select pod_1, Sum(byte) as b, Avg(rtt), time(time, 60) as t from l4_flow_log "
                                "group by pod_1, t limit 1", "flow_log")
    assert status == 200
    assert [(s["type"], s["unit"], s["value_type"], s["pre_as"]) for s in body["result"]["schemas"]] == [
        (0, "", "String", ""), (1, "Byte", "UInt64", "Sum(byte)"), (1, "us", "Float64", ""),
        (0, "", "UInt32", "time(time, 60)")]


def test_no_rows_keep_columns_and_types(engine):
    status, body = engine.query("select pod_1, Sum(byte) from l4_flow_log where pod_1 = 'nobody' group by pod_1",
                                "flow_log")
    assert status == 200 and body["result"]["values"] is None
    assert body["result"]["columns"] == ["pod_1", "Sum(byte)"]
    assert [s["value_type"] for s in body["result"]["schemas"]] == ["String", "UInt64"]


def test_debug_lists_every_clickhouse_query(engine):
    status, body = engine.query("show tags from l7_flow_log", "flow_log", debug=True)
    assert status == 200 and len(body["debug"]["query_sqls"]) == 2
    assert body["result"]["schemas"] == [] and len(body["result"]["values"]) > 100
    status, body = engine.query("select Sum(byte) from l4_flow_log", "flow_log", debug=True)
    [q] = body["debug"]["query_sqls"]
    assert q["Sql"] == 'SELECT sum(byte_tx + byte_rx) AS "Sum(byte)" FROM flow_log."l4_flow_log" LIMIT 10000'
    assert q["Error"] == ""


# ---------------------------------------------------------------------------------------------------
# time(time, N, W, fill): DeepFlow's TimeFill


def test_time_fill_zero_gives_every_bucket_of_the_range(engine, span):
    """A one-hour range around the capture at 60 s: every minute has a row, the minutes without
    traffic hold 0, the others what ClickHouse summed (the same as without fill)."""
    lo = span["t0"] // 60 * 60 - 1800
    hi = lo + 3599
    base = f"from l4_flow_log where time >= {lo} and time <= {hi} group by t order by t"
    _, plain = dialect(engine, f"select time(time, 60) as t, Sum(packet) as p {base}", "flow_log")
    cols, filled = dialect(engine, f"select time(time, 60, 1, 0) as t, Sum(packet) as p {base}", "flow_log")
    assert cols == ["t", "p"]
    assert [r[0] for r in filled] == list(range(lo, hi + 1, 60))
    got = dict(map(tuple, plain))
    assert plain and len(plain) < 60
    assert all(p == got.get(t, 0) for t, p in filled)
    # again with other bounds: the shape's template recomputes the range
    _, later = dialect(engine, f"select time(time, 60, 1, 0) as t, Sum(packet) as p from l4_flow_log "
                                f"where time >= {lo + 600} and time <= {hi} group by t order by t", "flow_log")
    assert [r[0] for r in later] == list(range(lo + 600, hi + 1, 60))
    _, desc = dialect(engine, f"select time(time, 60, 1, 0) as t, Sum(packet) as p from l4_flow_log "
                               f"where time >= {lo} and time <= {hi} group by t order by t desc", "flow_log")
    assert desc == filled[::-1]


def test_time_fill_null_per_series_and_none(engine, span):
    """Each series (the tag columns) gets its own missing buckets as null; ``none`` fills nothing."""
    lo = span["t0"] // 120 * 120 - 600
    hi = span["t1"] // 120 * 120 + 600
    sql = ("select time(time, 120, 1, {fill}) as t, protocol, Sum(byte) as b from l4_flow_log "
           f"where time >= {lo} and time < {hi} group by t, protocol order by t")
    _, plain = dialect(engine, sql.format(fill="none"), "flow_log")
    _, filled = dialect(engine, sql.format(fill="null"), "flow_log")
    protocols = {r[1] for r in plain}
    assert len(protocols) >= 2
    buckets = list(range(lo, hi, 120))
    for proto in protocols:
        mine = [r for r in filled if r[1] == proto]
        assert [r[0] for r in mine] == buckets
        have = {r[0]: r[2] for r in plain if r[1] == proto}
        assert all(r[2] == have.get(r[0]) for r in mine)          # None where the series was silent
    assert [r[0] for r in filled] == sorted(r[0] for r in filled)  # still in time order
    status, body = engine.query(sql.format(fill="'zero'"), "flow_log")
    assert status == 500 and "fill must be 0, null or none" in body["DESCRIPTION"]


# ---------------------------------------------------------------------------------------------------
# WITH q1 AS (…), q2 AS (…) SELECT … FROM q1 LEFT JOIN q2 ON …: DeepFlow's multi-query joins


def test_with_joins_two_dialect_queries(engine):
    """Requests per server pod (application_map) next to bytes per server pod (network_map): each
    named query is a dialect SELECT; the join matches what ClickHouse computes from the tables."""
    cols, rows = dialect(engine, (
        "WITH req AS (SELECT pod_1, Sum(request) AS requests FROM application_map WHERE pod_id_1 != 0 "
        "GROUP BY pod_1 LIMIT 100), net AS (SELECT pod_1, Sum(byte) AS bytes FROM network_map "
        "WHERE pod_id_1 != 0 GROUP BY pod_1 LIMIT 100) "
        "SELECT req.pod_1 AS pod, requests, bytes, bytes / requests AS bytes_per_request FROM req "
        "LEFT JOIN net ON req.pod_1 = net.pod_1 WHERE requests > 0 ORDER BY requests DESC, pod LIMIT 50"),
        "flow_metrics", "1m")
    assert cols == ["pod", "requests", "bytes", "bytes_per_request"]
    app = dict(raw(engine, f"SELECT dictGet('flow_tag.pod_map', 'name', toUInt64(pod_id_1)) AS p, sum(request) "
                           f"FROM {_m('application_map')} WHERE pod_id_1 != 0 GROUP BY p"))
    net = dict(raw(engine, f"SELECT dictGet('flow_tag.pod_map', 'name', toUInt64(pod_id_1)) AS p, "
                           f"sum(byte_tx + byte_rx) FROM {_m('network_map')} WHERE pod_id_1 != 0 GROUP BY p"))
    want = sorted(((p, n, net.get(p, 0)) for p, n in app.items() if n > 0), key=lambda r: (-r[1], r[0]))
    assert [tuple(r[:3]) for r in rows] == want and len(want) >= 3
    assert all(same(r[3], r[2] / r[1]) for r in rows)


@pytest.mark.parametrize(("sql", "needle"), [
    ("WITH a AS (SELECT pod_1 FROM network_map LIMIT 1) SELECT pod_1 FROM b", "not a query of the WITH"),
    ("WITH a AS (SELECT pod_1 FROM network_map LIMIT 1), b AS (SELECT pod_1 FROM network_map LIMIT 1) "
     "SELECT pod_1 FROM a JOIN b ON a.pod_1 = b.pod_1", "ambiguous column"),
    ("WITH a AS (SELECT pod_1 FROM network_map LIMIT 1) SELECT lower(pod_1) AS f FROM a", "not support sql"),
    ("WITH a AS (SELECT name FROM system.tables LIMIT 1) SELECT name FROM a", "system"),
    ("WITH a AS (SELECT pod_1 FROM network_map LIMIT 1) SELECT pod_1 FROM a WHERE pod_1 IN (SELECT 1)",
     "IN takes a list of literals"),
    ("WITH a AS (SELECT pod_1 FROM network_map LIMIT 1) SELECT * FROM a", "name the columns"),
    ("WITH a AS (SELECT pod_1 FROM network_map LIMIT 1) SELECT x FROM a", "unknown column x"),
])
def test_with_refuses_what_it_cannot_check(engine, sql, needle):
    status, body = engine.query(sql, "flow_metrics", "1m", debug=True)
    assert status in (400, 500) and needle in body["DESCRIPTION"], body["DESCRIPTION"]
    assert not body["debug"] or not body["debug"]["query_sqls"]          # nothing ran
