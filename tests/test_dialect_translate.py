"""The DeepFlow dialect without a store: golden ClickHouse SQL for the rules that are easy to get
wrong (time-weighted Avg, ratios, latencies, time() clamping, two layers, resource filters, Enum,
k8s labels, SLIMIT, shadowed names), error messages that name the token and its position, the
SHOW layouts Grafana's query editor reads, and a catalogue every listed tag and metric of which
translates."""

from __future__ import annotations

import pytest

from datasource.dialect import DialectError, Translation, translate
from datasource.dialect.catalog import FUNCTIONS, TABLES, catalog
from datasource.dialect.parse import parse, text
from datasource.guard import check_and_resolve
from flowscope.enums import INT_ENUMS

# (DeepFlow SQL, db, data_precision) → the ClickHouse SQL that runs, as the guard writes it (sqlglot's
# ClickHouse SQL: `if` as CASE, `!=` as `<>`…): the translator's own text must mean exactly this.
GOLDEN = [
    # Avg of a counter is time-weighted: Σ / intervals in the WHERE range (60..180 → 121 one-second intervals)
    ('select Avg(byte_tx) as a from l4_flow_log where time>=60 and time<=180',
     'flow_log', None,
     'SELECT sum(byte_tx) / 121 AS "a" FROM flow_log."l4_flow_log" WHERE time >= 60 AND time <= 180 LIMIT 10000'),
    # … or in the time() bucket, counted in datasource intervals (120 s on 1m data = 2)
    ('select Avg(byte) as a, time(time, 120) as t from network group by t',
     'flow_metrics', '1m',
     'SELECT sum(byte_tx + byte_rx) / 2 AS "a", toUnixTimestamp(toStartOfInterval(time, toIntervalSecond(120))) AS "t" FROM flow_metrics."network.1m" GROUP BY "t" LIMIT 10000'),
    # Avg of ratios is the ratio of the sums (in %, capped at 100); Avg of a sum/count latency likewise
    ('select Avg(retrans_ratio) as r, Avg(rtt) as d from network',
     'flow_metrics', '1m',
     'SELECT CASE WHEN sum(packet_tx + packet_rx) > 0 THEN least(sum(retrans_tx + retrans_rx) / sum(packet_tx + packet_rx), 1) * 100 ELSE NULL END AS "r", CASE WHEN sum(rtt_count) > 0 THEN sum(rtt_sum) / sum(rtt_count) ELSE NULL END AS "d" FROM flow_metrics."network.1m" LIMIT 10000'),
    # raw latencies skip rows without a sample (0); AAvg is the arithmetic mean of per-row values
    ('select Avg(rtt), Avg(srt), AAvg(srt) from l4_flow_log',
     'flow_log', None,
     'SELECT avgIf(rtt, rtt > 0) AS "Avg(rtt)", CASE WHEN sum(srt_count) > 0 THEN sum(srt_sum) / sum(srt_count) ELSE NULL END AS "Avg(srt)", avgIf(srt_sum / srt_count, srt_count > 0) AS "AAvg(srt)" FROM flow_log."l4_flow_log" LIMIT 10000'),
    # time() is never finer than the datasource interval: 1 s on 1m data is 60 s
    ('select time(time, 1) as t, Sum(byte) from network group by t',
     'flow_metrics', '1m',
     'SELECT toUnixTimestamp(toStartOfInterval(time, toIntervalSecond(60))) AS "t", sum(byte_tx + byte_rx) AS "Sum(byte)" FROM flow_metrics."network.1m" GROUP BY "t" LIMIT 10000'),
    # fractional intervals round up
    ('select time(time, 1.2) as t, Count(row) from l4_flow_log group by t',
     'flow_log', None,
     'SELECT toUnixTimestamp(toStartOfInterval(time, toIntervalSecond(2))) AS "t", count() AS "Count(row)" FROM flow_log."l4_flow_log" GROUP BY "t" LIMIT 10000'),
    ('select time(time, 86400) as t, Sum(byte) from network_map group by t',
     'flow_metrics', '1m',
     'SELECT toUnixTimestamp(toStartOfInterval(time, toIntervalDay(1))) AS "t", sum(byte_tx + byte_rx) AS "Sum(byte)" FROM flow_metrics."network_map.1m" GROUP BY "t" LIMIT 10000'),
    # window 3, offset 30
    ('select time(time, 60, 3, 0, 30) as t, Sum(byte) from network_map group by t',
     'flow_metrics', '1m',
     'SELECT toUnixTimestamp(toStartOfInterval(time - 30, toIntervalSecond(60)) + 30 + toIntervalSecond(arrayJoin(range(3)) * 60)) AS "t", sum(byte_tx + byte_rx) AS "Sum(byte)" FROM flow_metrics."network_map.1m" GROUP BY "t" LIMIT 10000'),
    # Max of a counter needs two layers: the per-minute sums, then their maximum per bucket
    ('select Max(byte) as m, pod_1, time(time, 120) as t from network_map group by pod_1, t',
     'flow_metrics', '1m',
     'SELECT max(_sum_byte) AS "m", "pod_1" AS "pod_1", toUnixTimestamp(toStartOfInterval(_time, toIntervalSecond(120))) AS "t" FROM (SELECT pod_id_1 AS _gk0, dictGet(\'flow_tag.pod_map\', \'name\', toUInt64(pod_id_1)) AS "pod_1", toStartOfInterval(time, toIntervalSecond(60)) AS _time, sum(byte_tx + byte_rx) AS _sum_byte FROM flow_metrics."network_map.1m" GROUP BY _gk0, _time) GROUP BY _gk0, "pod_1", "t" LIMIT 10000'),
    ('select Percentile(byte, 0.9) as p, Avg(rtt) as r, Spread(rtt) as s from network_map',
     'flow_metrics', '1s',
     'SELECT quantile(0.9)(_sum_byte) AS "p", avgIf(_avg_rtt, _avg_rtt > 0) AS "r", maxArray(_arr_rtt) - minArray(_arr_rtt) AS "s" FROM (SELECT toStartOfInterval(time, toIntervalSecond(1)) AS _time, sum(byte_tx + byte_rx) AS _sum_byte, CASE WHEN sum(rtt_count) > 0 THEN sum(rtt_sum) / sum(rtt_count) ELSE NULL END AS _avg_rtt, groupArrayIf(rtt_sum / rtt_count, rtt_count > 0) AS _arr_rtt FROM flow_metrics."network_map.1s" GROUP BY _time) LIMIT 10000'),
    # resources: WHERE is an id-set filter on the dictionary, negations are NOT (…), GROUP BY the id
    ("select pod_1 from l4_flow_log where pod_1 = 'api' and pod_0 != 'web-a' and pod_ns_1 like 'pay*' and pod_group_1 regexp '^a' and pod_service_1 in ('api','web') and pod_node_1 not in ('x') group by pod_1",
     'flow_log', None,
     'SELECT dictGet(\'flow_tag.pod_map\', \'name\', toUInt64(pod_id_1)) AS "pod_1" FROM flow_log."l4_flow_log" WHERE toUInt64(pod_id_1) GLOBAL IN (SELECT id FROM flow_tag."pod_map" WHERE name = \'api\') AND NOT (toUInt64(pod_id_0) GLOBAL IN (SELECT id FROM flow_tag."pod_map" WHERE name = \'web-a\')) AND toUInt64(pod_ns_id_1) GLOBAL IN (SELECT id FROM flow_tag."pod_ns_map" WHERE name ILIKE \'pay%\') AND toUInt64(pod_group_id_1) GLOBAL IN (SELECT id FROM flow_tag."pod_group_map" WHERE match(name, \'^a\')) AND toUInt64(service_id_1) GLOBAL IN (SELECT id FROM flow_tag."pod_service_map" WHERE name IN (\'api\', \'web\')) AND NOT (toUInt64(pod_node_id_1) GLOBAL IN (SELECT id FROM flow_tag."pod_node_map" WHERE name IN (\'x\'))) GROUP BY pod_id_1 LIMIT 10000'),
    ("select chost_0, Count(row) from l4_flow_log where chost_1 = 'netlab-srv' group by chost_0",
     'flow_log', None,
     'SELECT dictGet(\'flow_tag.device_map\', \'name\', (toUInt64(1), toUInt64(CASE WHEN l3_device_type_0 = 1 THEN l3_device_id_0 ELSE 0 END))) AS "chost_0", count() AS "Count(row)" FROM flow_log."l4_flow_log" WHERE toUInt64(CASE WHEN l3_device_type_1 = 1 THEN l3_device_id_1 ELSE 0 END) GLOBAL IN (SELECT deviceid FROM flow_tag."device_map" WHERE name = \'netlab-srv\' AND devicetype = 1) GROUP BY CASE WHEN l3_device_type_0 = 1 THEN l3_device_id_0 ELSE 0 END LIMIT 10000'),
    ("select auto_service_1, Count(row) from l4_flow_log where auto_service_1 = 'api' group by auto_service_1",
     'flow_log', None,
     'SELECT CASE WHEN CASE WHEN auto_service_type_1 IN (0, 255) THEN CASE WHEN is_ipv4 = 1 THEN IPv4NumToString(ip4_1) ELSE IPv6NumToString(ip6_1) END ELSE \'\' END <> \'\' THEN CASE WHEN auto_service_type_1 IN (0, 255) THEN CASE WHEN is_ipv4 = 1 THEN IPv4NumToString(ip4_1) ELSE IPv6NumToString(ip6_1) END ELSE \'\' END ELSE dictGet(\'flow_tag.device_map\', \'name\', (toUInt64(auto_service_type_1), toUInt64(auto_service_id_1))) END AS "auto_service_1", count() AS "Count(row)" FROM flow_log."l4_flow_log" WHERE CASE WHEN auto_service_type_1 IN (0, 255) THEN CASE WHEN is_ipv4 = 1 THEN IPv4NumToString(ip4_1) ELSE IPv6NumToString(ip6_1) END = \'api\' ELSE (toUInt64(auto_service_id_1), toUInt64(auto_service_type_1)) GLOBAL IN (SELECT deviceid, devicetype FROM flow_tag."device_map" WHERE name = \'api\') END GROUP BY auto_service_type_1, auto_service_id_1, CASE WHEN auto_service_type_1 IN (0, 255) THEN CASE WHEN is_ipv4 = 1 THEN IPv4NumToString(ip4_1) ELSE IPv6NumToString(ip6_1) END ELSE \'\' END LIMIT 10000'),
    ("select Enum(close_type), Enum(observation_point), Enum(tcp_flags_bit_0) from l4_flow_log where Enum(close_type) = 'Normal – Finish' and Enum(observation_point) in ('Client NIC', 'c-nd') and Enum(protocol) like 'T*' limit 1",
     'flow_log', None,
     'SELECT dictGetOrDefault(\'flow_tag.int_enum_map\', \'name_en\', (\'close_type\', toUInt64(close_type)), toString(close_type)) AS "Enum(close_type)", dictGetOrDefault(\'flow_tag.string_enum_map\', \'name_en\', (\'observation_point\', toString(observation_point)), toString(observation_point)) AS "Enum(observation_point)", arrayStringConcat(arrayMap(b -> dictGetOrDefault(\'flow_tag.int_enum_map\', \'name_en\', (\'tcp_flags_bit\', toUInt64(b)), toString(b)), bitmaskToArray(tcp_flags_bit_0)), \',\') AS "Enum(tcp_flags_bit_0)" FROM flow_log."l4_flow_log" WHERE close_type GLOBAL IN (SELECT value FROM flow_tag."int_enum_map" WHERE name_en = \'Normal – Finish\' AND tag_name = \'close_type\') AND (observation_point GLOBAL IN (SELECT value FROM flow_tag."string_enum_map" WHERE name_en IN (\'Client NIC\', \'c-nd\') AND tag_name = \'observation_point\') OR observation_point IN (\'Client NIC\', \'c-nd\')) AND protocol GLOBAL IN (SELECT value FROM flow_tag."int_enum_map" WHERE name_en ILIKE \'T%\' AND tag_name = \'protocol\') LIMIT 1'),
    ("select `k8s.label.app_1` as app, Count(row) from l4_flow_log where `k8s.label.team_1` = 'payments' group by app",
     'flow_log', None,
     'SELECT CASE WHEN dictGet(\'flow_tag.pod_service_k8s_label_map\', \'value\', (toUInt64(service_id_1), \'app\')) <> \'\' THEN dictGet(\'flow_tag.pod_service_k8s_label_map\', \'value\', (toUInt64(service_id_1), \'app\')) ELSE dictGet(\'flow_tag.pod_k8s_label_map\', \'value\', (toUInt64(pod_id_1), \'app\')) END AS "app", count() AS "Count(row)" FROM flow_log."l4_flow_log" WHERE (toUInt64(service_id_1) GLOBAL IN (SELECT id FROM flow_tag."pod_service_k8s_label_map" WHERE value = \'payments\' AND key = \'team\') OR toUInt64(pod_id_1) GLOBAL IN (SELECT id FROM flow_tag."pod_k8s_label_map" WHERE value = \'payments\' AND key = \'team\')) GROUP BY CASE WHEN dictGet(\'flow_tag.pod_service_k8s_label_map\', \'value\', (toUInt64(service_id_1), \'app\')) <> \'\' THEN dictGet(\'flow_tag.pod_service_k8s_label_map\', \'value\', (toUInt64(service_id_1), \'app\')) ELSE dictGet(\'flow_tag.pod_k8s_label_map\', \'value\', (toUInt64(pod_id_1), \'app\')) END LIMIT 10000'),
    ('select Sum(byte) as b, pod_1 from network_map group by pod_1 slimit 2 sorder by Sum(byte) desc',
     'flow_metrics', '1m',
     'SELECT sum(byte_tx + byte_rx) AS "b", dictGet(\'flow_tag.pod_map\', \'name\', toUInt64(pod_id_1)) AS "pod_1" FROM flow_metrics."network_map.1m" WHERE pod_id_1 GLOBAL IN (SELECT pod_id_1 FROM flow_metrics."network_map.1m" GROUP BY pod_id_1 ORDER BY sum(byte_tx + byte_rx) DESC LIMIT 2) GROUP BY pod_id_1 LIMIT 10000'),
    # an output name that is also a column: the columns of that query level are qualified
    ('select Sum(request) as request, Avg(timeout_ratio) as t from application',
     'flow_metrics', '1m',
     'SELECT sum(flow_metrics."application.1m".request) AS "request", CASE WHEN sum(flow_metrics."application.1m".request) > 0 THEN least(sum(timeout) / sum(flow_metrics."application.1m".request), 1) * 100 ELSE NULL END AS "t" FROM flow_metrics."application.1m" LIMIT 10000'),
    ("select tap_side, vtap_id, Count(row) from l4_flow_log where tap_side = 'c' group by tap_side, vtap_id",
     'flow_log', None,
     'SELECT observation_point AS "tap_side", agent_id AS "vtap_id", count() AS "Count(row)" FROM flow_log."l4_flow_log" WHERE observation_point = \'c\' GROUP BY observation_point, agent_id LIMIT 10000'),
    ('select Sum(packet) from vtap_flow_edge_port',
     'flow_metrics', None,
     'SELECT sum(packet_tx + packet_rx) AS "Sum(packet)" FROM flow_metrics."network_map.1m" LIMIT 10000'),
    ('select byte from l4_flow_log limit 5, 10',
     'flow_log', None,
     'SELECT byte_tx + byte_rx AS "byte" FROM flow_log."l4_flow_log" LIMIT 10 OFFSET 5'),
    ("select ip_0 from l4_flow_log where ip_0 = '10.16.0.0/24' or ip_1 in ('fd00:10:16::20', '10.99.0.1') or ip_0 != '10.0.0.1'",
     'flow_log', None,
     'SELECT CASE WHEN is_ipv4 = 1 THEN IPv4NumToString(ip4_0) ELSE IPv6NumToString(ip6_0) END AS "ip_0" FROM flow_log."l4_flow_log" WHERE (is_ipv4 = 1 AND ip4_0 >= toIPv4(\'10.16.0.0\') AND ip4_0 <= toIPv4(\'10.16.0.255\')) OR ((is_ipv4 = 0 AND ip6_1 = toIPv6(\'fd00:10:16::20\')) OR (is_ipv4 = 1 AND ip4_1 = toIPv4(\'10.99.0.1\'))) OR NOT ((is_ipv4 = 1 AND ip4_0 = toIPv4(\'10.0.0.1\'))) LIMIT 10000'),
    ('select PerSecond(Sum(byte)) as bps, Percentage(Sum(retrans), Sum(packet)) as r, Sum(byte)/Time_interval as x from l4_flow_log where time >= 1795644540 and time < 1795644600',
     'flow_log', None,
     'SELECT (sum(byte_tx + byte_rx)) / 60 AS "bps", (sum(retrans_tx + retrans_rx)) / (sum(packet_tx + packet_rx)) * 100 AS "r", sum(byte_tx + byte_rx) / 60 AS "x" FROM flow_log."l4_flow_log" WHERE time >= 1795644540 AND time < 1795644600 LIMIT 10000'),
    ('select Histogram(Avg(rtt), 5) as h from l4_flow_log where rtt > 0',
     'flow_log', None,
     'SELECT histogramIf(5)(assumeNotNull(_h), _h > 0) AS "h" FROM (SELECT avgIf(rtt, rtt > 0) AS _h FROM flow_log."l4_flow_log" WHERE rtt > 0 GROUP BY _id) LIMIT 10000'),
    ('select Uniq(pod_1), UniqExact(ip_1), TopK(pod_1, 2), Any(pod_1) from l4_flow_log',
     'flow_log', None,
     'SELECT uniq(pod_id_1) AS "Uniq(pod_1)", uniqExact((is_ipv4, ip4_1, ip6_1)) AS "UniqExact(ip_1)", topKIf(2)(dictGet(\'flow_tag.pod_map\', \'name\', toUInt64(pod_id_1)), dictGet(\'flow_tag.pod_map\', \'name\', toUInt64(pod_id_1)) <> \'\') AS "TopK(pod_1, 2)", anyIf(dictGet(\'flow_tag.pod_map\', \'name\', toUInt64(pod_id_1)), dictGet(\'flow_tag.pod_map\', \'name\', toUInt64(pod_id_1)) <> \'\') AS "Any(pod_1)" FROM flow_log."l4_flow_log" LIMIT 10000'),
    ('select Uniq(pod_1) as u, Max(byte) as m from network_map',
     'flow_metrics', '1m',
     'SELECT uniqMerge(_state_0) AS "u", max(_sum_byte) AS "m" FROM (SELECT toStartOfInterval(time, toIntervalSecond(60)) AS _time, uniqState(pod_id_1) AS _state_0, sum(byte_tx + byte_rx) AS _sum_byte FROM flow_metrics."network_map.1m" GROUP BY _time) LIMIT 10000'),
    ('select Count(row) from l7_flow_log where exist(pod_1) and not exist(pod_0) and exist(response_code) and exist(`attribute.user_agent`)',
     'flow_log', None,
     'SELECT count() AS "Count(row)" FROM flow_log."l7_flow_log" WHERE pod_id_1 <> 0 AND NOT (pod_id_0 <> 0) AND isNotNull(response_code) AND indexOf(attribute_names, \'user_agent\') <> 0 LIMIT 10000'),
    ('select PerSecond(Avg(byte)) as bps, Apdex(rrt, 100) as a from network where time >= 1795644540 and time <= 1795644659',
     'flow_metrics', '1m',
     'SELECT (avg(_sum_byte)) / 60 AS "bps", CASE WHEN sum(LENGTH(_arr_rrt)) > 0 THEN sumArray(arrayMap(x -> CASE WHEN x <= 100 THEN 1 ELSE CASE WHEN x <= 4 * 100 THEN 0.5 ELSE 0 END END, _arr_rrt)) / sum(LENGTH(_arr_rrt)) * 100 ELSE NULL END AS "a" FROM (SELECT toStartOfInterval(time, toIntervalSecond(60)) AS _time, sum(byte_tx + byte_rx) AS _sum_byte, groupArrayIf(rrt_sum / rrt_count, rrt_count > 0) AS _arr_rrt FROM flow_metrics."network.1m" WHERE time >= 1795644540 AND time <= 1795644659 GROUP BY _time) LIMIT 10000'),
]


def _id(case: tuple) -> str:
    return " ".join(str(case[0]).split())[:70] or "<empty>"


@pytest.mark.parametrize(("sql", "db", "precision", "ch_sql"), GOLDEN, ids=[_id(c) for c in GOLDEN])
def test_golden_translation(sql, db, precision, ch_sql):
    """The guard accepts the translated SQL as it is, and reads it as the golden query."""
    tr = translate(sql, db, precision)
    assert check_and_resolve(tr.sql, None) == ch_sql
    assert tr.queries == [tr.sql] and tr.static is None


# (sql, db, data_precision) → status, what the message says (token and position)
ERRORS = [
    ("select Sum(bytes) from l4_flow_log", "flow_log", None, 500,
     "function Sum(bytes): unknown metric bytes at position 12"),
    ("select sum(byte) from l4_flow_log", "flow_log", None, 500, "function: sum(byte) not support at position 8"),
    ("select SUM(byte) from l4_flow_log", "flow_log", None, 500, "function: SUM(byte) not support at position 8"),
    ("select foo from l4_flow_log", "flow_log", None, 500, "unknown tag or metric: foo at position 8"),
    ("select byte from l4_flow_log where pod_9 = 'x'", "flow_log", None, 500,
     "unknown tag or metric: pod_9 at position 36"),
    ("select pod from l4_flow_log", "flow_log", None, 500,
     "unknown tag or metric: pod at position 8 (l4_flow_log has two ends: pod_0 for the client, pod_1 for the server)"),
    ("select pod_0 from network", "flow_metrics", None, 500,
     "unknown tag or metric: pod_0 at position 8 (network has one end per row: pod)"),
    ("SELECT count( FROM l4_flow_log", "flow_log", None, 500, "syntax error at position 20 near 'l4_flow_log'"),
    ("select byte form l4_flow_log", "flow_log", None, 500, "syntax error at position 18 near 'l4_flow_log'"),
    ("show foo", "flow_log", None, 500, "not support sql: show foo, please check"),
    ("select TopK(pod_0, 111) from l4_flow_log", "flow_log", None, 500,
     "function [TopK] argument [111] value range is incorrect, it should be within [1, 100] at position 8"),
    ("select Count(byte) from l4_flow_log", "flow_log", None, 500, "function: Count(byte) not support at position 8"),
    ("select Enum(byte_tx) from l4_flow_log", "flow_log", None, 500,
     "unknown tag: byte_tx in Enum(byte_tx) at position 13"),
    ("select Percentile(rtt) from l4_flow_log", "flow_log", None, 500,
     "function Percentile(rtt): Percentile takes 2 argument(s) at position 8"),
    ("select Sum(byte) from l4_flow_log where Sum(byte) > 0", "flow_log", None, 500,
     "function Sum is not allowed in WHERE (use HAVING) at position 41"),
    ("select byte from l4_flow_log limit 'x'", "flow_log", None, 500,
     "LIMIT takes a non-negative integer, got 'x' at position 36"),
    ("select * from l4_flow_log", "flow_log", None, 500, "not support sql: SELECT *"),
    ("select byte from l4_flow_log where pod_0 in (select name from flow_tag.pod_map)", "flow_log", None, 500,
     "not support sql: IN (SELECT …) at position 36"),
    ("select byte from l4_flow_log a join l7_flow_log b on a.flow_id = b.flow_id", "flow_log", None, 500,
     "not support sql: one table in FROM is required"),
    ("select time(time, 60) as t, time(time, 120) as u, Count(row) from l4_flow_log group by t", "flow_log", None,
     500, "one time() per query: time(time, 120) at position 29"),
    ("select byte from l4_flow_log where ip_0 = 'not-an-ip'", "flow_log", None, 400,
     "invalid IP address or CIDR 'not-an-ip' at position 43"),
    ("select byte from nosuch", "flow_log", None, 400,
     "table 'nosuch' does not exist in flow_log (known: l4_flow_log, l7_flow_log)"),
    ("select Sum(byte) from network", "flow_metrics", "1h", 400, "data_precision '1h' is not stored (available: 1s, 1m)"),
    ("select Sum(byte) from `network.1h`", "flow_metrics", None, 400, "data_precision '1h' is not stored"),
    ("select byte from l4_flow_log", None, None, 400, "table 'l4_flow_log' has no database: pass db"),
    ("select byte from system.tables", "flow_log", None, 400, "database 'system' is not queryable"),
    ("DROP TABLE l4_flow_log", "flow_log", None, 400, "only SELECT and SHOW are allowed, got DROP"),
    ("INSERT INTO l4_flow_log (flow_id) VALUES (1)", "flow_log", None, 400, "only SELECT and SHOW are allowed, got INSERT"),
    ("select 1; select 2", "flow_log", None, 400, "one statement per request, got 2"),
    ("", "flow_log", None, 400, "empty sql"),
    ("show tag nosuch values from l4_flow_log", "flow_log", None, 400, "unknown tag: nosuch at position 10"),
    ("show tags", "flow_log", None, 400, "show tags: FROM <table> is required"),
    ("show tables", None, None, 400, "show tables: pass db (flow_log, flow_metrics, flow_tag)"),
]


@pytest.mark.parametrize(("sql", "db", "precision", "status", "message"), ERRORS, ids=[_id(c) for c in ERRORS])
def test_errors_name_the_token_and_position(sql, db, precision, status, message):
    with pytest.raises(DialectError) as err:
        translate(sql, db, precision)
    assert err.value.status == status
    assert err.value.opt_status == ("FAIL" if status == 500 else "INVALID_POST_DATA")
    assert message in str(err.value)


def test_function_names_keep_their_case():
    """DeepFlow's aggregates are case-sensitive, keywords are not: Sum/SUM/sum are three names,
    Enum/ENUM and time/TIME are one."""
    tree = parse("select Sum(byte), SUM(byte), ENUM(close_type), TIME(time, 60) from t")
    assert [text(e) for e in tree.expressions] == ["Sum(byte)", "SUM(byte)", "ENUM(close_type)", "TIME(time, 60)"]
    a = translate("select ENUM(close_type) as e, TIME(time, 60) as t, Count(row) from l4_flow_log group by t",
                  "flow_log").sql
    b = translate("select Enum(close_type) as e, time(time, 60) as t, Count(row) from l4_flow_log group by t",
                  "flow_log").sql
    assert a == b


def test_default_column_names_are_the_expression_as_written():
    tr = translate("select Sum(`byte`), pod_0, Enum(tap_side), `k8s.label.app_1`, Avg(rtt) AS `平均 RTT` "
                   "from l4_flow_log group by pod_0, tap_side, `k8s.label.app_1`", "flow_log")
    assert [s["pre_as"] for s in tr.schemas] == ["", "", "", "", "Avg(rtt)"]
    assert tr.sql.startswith('SELECT sum(byte_tx + byte_rx) AS "Sum(byte)", ')
    assert 'AS "Enum(tap_side)"' in tr.sql and 'AS "k8s.label.app_1"' in tr.sql and 'AS "平均 RTT"' in tr.sql


def test_schemas_carry_units_and_kinds():
    tr = translate("select pod_1, Sum(byte), PerSecond(Sum(byte)), Avg(rtt), Avg(retrans_ratio), Count(row), "
                   "Apdex(rtt, 100), Uniq(pod_0) from l4_flow_log group by pod_1", "flow_log")
    assert [(s["type"], s["unit"]) for s in tr.schemas] == [
        (0, ""), (1, "Byte"), (1, "Byte/s"), (1, "us"), (1, "%"), (1, ""), (1, "%"), (1, "")]
    assert all(s["value_type"] == "" and s["label_type"] == "" for s in tr.schemas)


def test_translations_are_cached():
    sql = "select Sum(byte) as b, pod_1 from l4_flow_log group by pod_1"
    first = translate(sql, "flow_log")
    assert translate(sql, "flow_log") is first
    assert translate(sql, "flow_log", language="zh") is not first
    assert isinstance(first, Translation)


def test_data_precision_and_suffix():
    """The table's suffix wins over data_precision; without either, 1m."""
    assert 'flow_metrics."network.1s"' in translate("select Sum(byte) from network", "flow_metrics", "1s").sql
    assert 'flow_metrics."network.1m"' in translate("select Sum(byte) from network", "flow_metrics").sql
    assert 'flow_metrics."network.1s"' in translate("select Sum(byte) from `network.1s`", "flow_metrics", "1m").sql
    assert 'flow_metrics."application_map.1s"' in translate("select Sum(request) from `vtap_app_edge_port.1s`",
                                                             "flow_metrics").sql
    assert 'flow_log."l7_flow_log"' in translate("select Count(row) from flow_log.l7_flow_log", None).sql


def test_language_picks_enum_names():
    zh = translate("select Enum(close_type) from l4_flow_log", "flow_log", language="zh").sql
    assert "'name_zh'" in zh and "'name_en'" not in zh


# -- SHOW ---------------------------------------------------------------------------------------------------

def _static(sql: str, db: str | None = None) -> dict:
    tr = translate(sql, db)
    assert tr.static is not None and tr.schemas == []
    return tr.static


def test_show_databases_tables_language():
    assert _static("show databases") == {"columns": ["name"], "values": [["flow_log"], ["flow_metrics"], ["flow_tag"]],
                                         "schemas": []}
    assert _static("show tables", "flow_metrics")["values"] == [
        ["network", ["1s", "1m"]], ["network_map", ["1s", "1m"]], ["application", ["1s", "1m"]],
        ["application_map", ["1s", "1m"]]]
    assert _static("show tables", "flow_log") == {"columns": ["name", "datasources"],
                                                 "values": [["l4_flow_log", None], ["l7_flow_log", None]],
                                                 "schemas": []}
    assert ["pod_map", None] in _static("show tables", "flow_tag")["values"]
    assert _static("show language") == {"columns": ["language"], "values": [["en"]], "schemas": []}
    assert translate("show language", None, language="zh").static["values"] == [["zh"]]


TAG_COLUMNS = ["name", "client_name", "server_name", "display_name", "display_name_zh", "display_name_en", "type",
               "category", "operators", "permissions", "description", "description_zh", "description_en",
               "related_tag", "deprecated", "not_supported_operators", "table"]


def test_show_tags_layout():
    tr = translate("show tags from l4_flow_log", "flow_log")
    assert tr.static["columns"] == TAG_COLUMNS
    rows = {r[0]: dict(zip(TAG_COLUMNS, r, strict=True)) for r in tr.static["values"]}
    assert rows["pod"] | {"operators": None} == {
        "name": "pod", "client_name": "pod_0", "server_name": "pod_1", "display_name": "K8s Pod",
        "display_name_zh": "K8s Pod", "display_name_en": "K8s Pod", "type": "resource", "category": "Resource",
        "operators": None, "permissions": [1, 1, 1], "description": "K8s Pod of the end",
        "description_zh": "K8s Pod of the end", "description_en": "K8s Pod of the end", "related_tag": "",
        "deprecated": False, "not_supported_operators": [], "table": "l4_flow_log"}
    assert rows["pod"]["operators"] == ["=", "!=", "IN", "NOT IN", "LIKE", "NOT LIKE", "REGEXP", "NOT REGEXP"]
    assert (rows["observation_point"]["client_name"], rows["observation_point"]["type"]) == (
        "observation_point", "string_enum")
    assert rows["server_port"]["operators"] == ["=", "!=", "IN", "NOT IN", ">=", "<=", ">", "<"]
    assert rows["tap_side"]["deprecated"] is True and rows["tap_side"]["related_tag"] == "observation_point"
    # the label keys and attribute names the data holds come from ClickHouse, after these rows
    assert len(tr.queries) == 1 and "flow_tag.\"pod_k8s_label_map\"" in tr.queries[0]
    assert len(translate("show tags from l7_flow_log", "flow_log").queries) == 2
    single = {r[0]: r for r in translate("show tags from network", "flow_metrics").static["values"]}
    assert single["pod"][1:3] == ["pod", "pod"] and "observation_point" not in single


def test_show_tags_filters_and_pages():
    names = [r[0] for r in _static_or_first("show tags from l4_flow_log where name not regexp '^(pod|auto)'")]
    assert names and not any(n.startswith(("pod", "auto")) for n in names)
    page = translate("show tags from l4_flow_log limit 3 offset 2", "flow_log")
    full = translate("show tags from l4_flow_log", "flow_log")
    assert page.static["values"] == full.static["values"][2:5] and page.queries == []


def _static_or_first(sql: str) -> list:
    return translate(sql, "flow_log").static["values"]


METRIC_COLUMNS = ["name", "is_agg", "display_name", "display_name_zh", "display_name_en", "unit", "unit_zh",
                  "unit_en", "type", "category", "operators", "permissions", "table", "description",
                  "description_zh", "description_en"]


def test_show_metrics_layout():
    s = _static("show metrics from network_map", "flow_metrics")
    assert s["columns"] == METRIC_COLUMNS
    rows = {r[0]: dict(zip(METRIC_COLUMNS, r, strict=True)) for r in s["values"]}
    assert (rows["byte"]["unit"], rows["byte"]["type"], rows["byte"]["is_agg"]) == ("Byte", 1, True)
    assert (rows["rtt"]["type"], rows["retrans_ratio"]["type"], rows["bpp"]["type"], rows["row"]["type"]) == (3, 4, 5, 8)
    assert rows["pod_1"]["category"] == "Tag" and rows["pod_1"]["type"] == 6
    assert rows["byte"]["operators"] == [">=", "<=", ">", "<", "="]
    assert _static("show metrics from l4_flow_log where name = 'rtt'", "flow_log")["values"][0][:9] == [
        "rtt", False, "TCP Establish Delay", "TCP Establish Delay", "TCP Establish Delay", "us", "us", "us", 3]


def test_show_metrics_functions_layout():
    s = _static("show metrics functions from l4_flow_log", "flow_log")
    assert s["columns"] == ["name", "type", "support_metric_types", "unit_overwrite", "additional_param_count",
                            "is_support_other_operators", "value_type"]
    rows = {r[0]: r for r in s["values"]}
    assert set(rows) == {"Sum", "Avg", "AAvg", "Max", "Min", "Last", "Percentile", "PercentileExact", "Spread",
                         "Rspread", "Stddev", "Apdex", "Uniq", "UniqExact", "Count", "TopK", "Any", "PerSecond",
                         "Percentage", "Histogram"}
    assert rows["PerSecond"][1:5] == [3, [1, 2, 3, 4, 5, 9], "$unit/s", 0]
    assert rows["Percentile"][1] == 1 and rows["Percentile"][4] == 1


def test_show_enum_values():
    s = _static("show enum close_type values")
    assert s["columns"] == ["value", "display_name", "description"]
    assert s["values"] == [[v, n, d] for v, (n, d) in INT_ENUMS["close_type"].items()]
    assert _static("show enum tap_side values where value = 'c'")["values"] == [
        ["c", "Client NIC", "Client NIC: the client's own NIC (pod veth, vNIC, host NIC)"]]


def test_show_tag_values_queries():
    """Tag values come from the dictionaries (resources, enums) or the table (plain tags)."""
    pod = translate("show tag pod values from l7_flow_log where display_name like '*a*' limit 5 offset 1", "flow_log")
    assert pod.static is None and pod.queries == [pod.sql]
    assert pod.sql == ("SELECT id AS value, name AS display_name, '' AS uid FROM flow_tag.\"pod_map\" "
                       "WHERE (name ILIKE '%a%') GROUP BY value, display_name, uid ORDER BY LENGTH(display_name) ASC, "
                       "value LIMIT 5 OFFSET 1")
    enum = translate("show tag response_status values from l7_flow_log", "flow_log").sql
    assert enum == ("SELECT value AS value, name_en AS display_name, description_en AS description FROM "
                    "flow_tag.\"int_enum_map\" WHERE tag_name = 'response_status' GROUP BY value, display_name, "
                    "description ORDER BY value LIMIT 10000")
    chost = translate("show tag chost values from network_map where subnet_id != 1 and subnet != 'xx'",
                      "flow_metrics").sql
    assert "FROM flow_tag.\"chost_map\" WHERE ((subnet_id <> 1 AND dictGet('flow_tag.subnet_map', 'name', " \
           "toUInt64(subnet_id)) <> 'xx'))" in chost
    endpoint = translate("show tag endpoint values from l7_flow_log limit 3", "flow_log").sql
    assert endpoint.startswith("SELECT endpoint AS value, toString(endpoint) AS display_name, '' AS uid FROM "
                               "flow_log.\"l7_flow_log\" WHERE toString(endpoint) <> ''")


# -- the catalogue is complete: whatever SHOW lists translates --------------------------------------------

def _tables():
    for (db, name), t in TABLES.items():
        yield db, name, (t.precisions[-1] if t.precisions else None)


@pytest.mark.parametrize(("db", "table", "precision"), list(_tables()), ids=[t[1] for t in _tables()])
def test_every_listed_tag_translates_in_every_clause(db, table, precision):
    """Whatever ``show tags`` lists (the names SQL uses: X_0/X_1 or X) works in SELECT, WHERE,
    exist(), GROUP BY, Enum() when it has an enum, and the tag functions (Uniq, TopK, Any)."""
    tr = translate(f"show tags from {table}", db, precision)
    names = sorted({n for r in tr.static["values"] for n in r[1:3]})     # the names SQL uses (X_0, X_1 or X)
    cat = catalog(db, table)
    for chunk in (names[i:i + 25] for i in range(0, len(names), 25)):
        tags = {n: cat.tags.get(n) or cat.tags.get(n[:-2]) for n in chunk}
        cols = ", ".join(f"`{n}`" for n in chunk)
        conds = " AND ".join(f"`{n}` = {chr(39)}{'1.1.1.1' if t is not None and t.type == 'ip' else '1'}{chr(39)} "
                             f"AND exist(`{n}`)" for n, t in tags.items())
        translate(f"select {cols} from {table} where {conds} group by {cols}", db, precision)
        enums = [n for n, t in tags.items() if t is not None and t.enum]
        if enums:
            translate(f"select {', '.join(f'Enum({n})' for n in enums)} from {table} where "
                      f"{' AND '.join(f'Enum({n}) = {chr(39)}x{chr(39)}' for n in enums)} group by "
                      f"{', '.join(enums)}", db, precision)
        translate(f"select {', '.join(f'Uniq(`{n}`), TopK(`{n}`, 3), Any(`{n}`)' for n in chunk)} from {table}", db,
                  precision)


@pytest.mark.parametrize(("db", "table", "precision"), list(_tables()), ids=[t[1] for t in _tables()])
def test_every_listed_metric_translates_with_every_function(db, table, precision):
    tr = translate(f"show metrics from {table}", db, precision)
    metrics = [r[0] for r in tr.static["values"] if r[9] not in ("Tag", "Other")]
    assert len(metrics) >= 15
    funcs = [f for f in FUNCTIONS if f not in ("Uniq", "UniqExact", "Count", "TopK", "Any", "Histogram",
                                               "PerSecond", "Percentage")]
    for chunk in (metrics[i:i + 8] for i in range(0, len(metrics), 8)):
        items = ", ".join(f"{f}({m}{', 0.5' if f.startswith('Percentile') else ', 100' if f == 'Apdex' else ''})"
                          for m in chunk for f in funcs)
        more = ", ".join(f"PerSecond(Sum({m})), Percentage(Sum({m}), Count(row))" for m in chunk)
        translate(f"select {items}, {more} from {table}", db, precision)
        translate(f"select {', '.join(chunk)} from {table} where {' AND '.join(f'{m} > 0' for m in chunk)}", db,
                  precision)
