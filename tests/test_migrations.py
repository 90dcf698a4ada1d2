"""The ClickHouse schema in sql/ and flowscope.migrate: applied on the embedded engine (chDB), and the
ON CLUSTER form checked as text (no ClickHouse cluster runs here)."""

from __future__ import annotations

import datetime as dt
import ipaddress
import shutil
from pathlib import Path

import pytest
import sqlglot
from sqlglot import exp

from flowscope import enums, migrate

RESOURCE = ("region_id", "az_id", "host_id", "l3_device_type", "l3_device_id", "pod_node_id", "pod_ns_id",
            "pod_group_id", "pod_id", "pod_cluster_id", "l3_epc_id", "subnet_id", "service_id",
            "auto_instance_id", "auto_instance_type", "auto_service_id", "auto_service_type", "gprocess_id",
            "tag_source")
TAG_SOURCES = ("region", "az", "pod_cluster", "pod_node", "pod_ns", "pod_group", "pod_service", "pod",
               "subnet", "l3_epc", "chost", "gprocess", "vtap", "device", "vtap_port", "pod_k8s_label",
               "pod_k8s_labels", "pod_service_k8s_label", "pod_service_k8s_labels", "ip_resource", "int_enum",
               "string_enum", "pod_k8s_annotation", "pod_k8s_annotations", "pod_service_k8s_annotation",
               "pod_service_k8s_annotations")
METRICS = tuple(f"{family}.{res}" for family in ("network", "network_map", "application", "application_map")
                for res in ("1s", "1m"))

EXPECTED_TABLES = {
    "flow_log": {"l4_flow_log", "l7_flow_log"},
    "flow_metrics": set(METRICS),
    "flow_tag": set(TAG_SOURCES),
    "flowscope": {"schema_migrations", "retention"},
}
EXPECTED_DICTIONARIES = {f"{t}_map" for t in TAG_SOURCES}

# (table, column, type): the types writer and reader both depend on.
COLUMN_TYPES = [
    ("flow_log.l4_flow_log", "time", "DateTime"),
    ("flow_log.l4_flow_log", "_id", "UInt64"),
    ("flow_log.l4_flow_log", "start_time", "DateTime64(6)"),
    ("flow_log.l4_flow_log", "end_time", "DateTime64(6)"),
    ("flow_log.l4_flow_log", "observation_point", "LowCardinality(String)"),
    ("flow_log.l4_flow_log", "ip4_0", "IPv4"),
    ("flow_log.l4_flow_log", "ip6_1", "IPv6"),
    ("flow_log.l4_flow_log", "tunnel_tx_ip4_0", "IPv4"),
    ("flow_log.l4_flow_log", "tunnel_rx_ip6_1", "IPv6"),
    ("flow_log.l4_flow_log", "l3_epc_id_1", "Int32"),
    ("flow_log.l4_flow_log", "rtt", "Float64"),
    ("flow_log.l4_flow_log", "srt_sum", "Float64"),
    ("flow_log.l4_flow_log", "srt_count", "UInt64"),
    ("flow_log.l4_flow_log", "srt_max", "UInt32"),
    ("flow_log.l4_flow_log", "close_type", "UInt16"),
    ("flow_log.l4_flow_log", "acl_gids", "Array(UInt16)"),
    ("flow_log.l4_flow_log", "team_id", "UInt16"),
    ("flow_log.l7_flow_log", "request_id", "Nullable(UInt64)"),
    ("flow_log.l7_flow_log", "response_code", "Nullable(Int32)"),
    ("flow_log.l7_flow_log", "request_length", "Nullable(Int64)"),
    ("flow_log.l7_flow_log", "span_kind", "Nullable(UInt8)"),
    ("flow_log.l7_flow_log", "process_id_0", "Int32"),
    ("flow_log.l7_flow_log", "attribute_names", "Array(LowCardinality(String))"),
    ("flow_log.l7_flow_log", "metrics_values", "Array(Float64)"),
    ("flow_log.l7_flow_log", "tunnel_type", "UInt8"),
    ("flow_metrics.network.1s", "rtt_sum", "Float64"),
    ("flow_metrics.network.1s", "rtt_count", "UInt64"),
    ("flow_metrics.network.1s", "rtt_max", "UInt32"),
    ("flow_metrics.network.1m", "direction_score", "UInt8"),
    ("flow_metrics.network.1m", "l7_error", "UInt32"),
    ("flow_metrics.network.1m", "ip4", "IPv4"),
    ("flow_metrics.network_map.1m", "observation_point", "LowCardinality(String)"),
    ("flow_metrics.application.1m", "endpoint", "LowCardinality(String)"),
    ("flow_metrics.application_map.1s", "rrt_max", "UInt32"),
]

# Column names of the contract (brief + datamodel §1, §2, §3, §8), beyond the typed ones above.
L4_COLUMNS = {
    "_id", "time", "flow_id", "start_time", "end_time", "duration", "is_new_flow", "close_type", "status",
    "signal_source", "direction_score", "request_domain", "init_ipid", "acl_gids", "aggregated_flow_ids",
    "team_id", "mac_0", "mac_1", "eth_type", "vlan", "ip4_0", "ip4_1", "ip6_0", "ip6_1", "is_ipv4",
    "protocol", "client_port", "server_port", "tcp_flags_bit_0", "tcp_flags_bit_1", "syn_seq", "syn_ack_seq",
    "last_keepalive_seq", "last_keepalive_ack", "l7_protocol", "province_0", "province_1", "nat_source",
    "nat_real_ip4_0", "nat_real_ip4_1", "nat_real_port_0", "nat_real_port_1", "tunnel_tier", "tunnel_type",
    "tunnel_tx_id", "tunnel_rx_id", "tunnel_is_ipv4",
    *(f"tunnel_{d}_{x}_{s}" for d in ("tx", "rx") for x in ("ip4", "ip6", "mac") for s in "01"),
    "capture_network_type_id", "capture_nic", "capture_nic_type", "observation_point", "agent_id",
    "l2_end_0", "l2_end_1", "l3_end_0", "l3_end_1", "epc_id_0", "epc_id_1",
    *(f"{r}_{s}" for r in RESOURCE for s in "01"),
    *(f"{m}_{d}" for m in ("packet", "byte", "l3_byte", "l4_byte", "total_packet", "total_byte", "retrans",
                           "ooo", "zero_win") for d in ("tx", "rx")),
    "rtt", "rtt_client", "rtt_server", "tls_rtt",
    *(f"{m}_{a}" for m in ("srt", "art", "rrt", "cit") for a in ("sum", "count", "max")),
    "syn_count", "synack_count", "fin_count", "retrans_syn", "retrans_synack", "l7_request", "l7_response",
    "l7_client_error", "l7_server_error", "l7_server_timeout", "l7_error", "l7_parse_failed",
}
L7_COLUMNS = {
    "_id", "time", "flow_id", "start_time", "end_time", "ip4_0", "ip4_1", "ip6_0", "ip6_1", "is_ipv4",
    "protocol", "client_port", "server_port", "capture_network_type_id", "capture_nic", "capture_nic_type",
    "nat_source",
    "tunnel_type", "observation_point", "agent_id", "signal_source", "direction_score", "team_id",
    *(f"{r}_{s}" for r in RESOURCE for s in "01"),
    "type", "l7_protocol", "version", "is_tls", "is_async", "is_reversed", "request_type", "request_domain",
    "request_resource", "endpoint", "request_id", "response_status", "response_code", "response_exception",
    "response_result", "response_duration", "request_length", "response_length", "req_tcp_seq",
    "resp_tcp_seq",
    "trace_id", "_trace_id_2", "trace_id_index", "span_id", "parent_span_id", "span_kind", "x_request_id_0",
    "x_request_id_1", "http_proxy_client", "process_id_0", "process_id_1", "process_kname_0",
    "process_kname_1",
    "syscall_trace_id_request", "syscall_trace_id_response", "syscall_thread_0", "syscall_thread_1",
    "syscall_coroutine_0", "syscall_coroutine_1", "syscall_cap_seq_0", "syscall_cap_seq_1", "app_service",
    "app_instance", "attribute_names", "attribute_values", "metrics_names", "metrics_values", "events",
    "captured_request_byte", "captured_response_byte", "sql_affected_rows", "biz_type", "biz_protocol",
}
METRIC_TAGS = {"time", "ip4", "ip6", "is_ipv4", "role", "protocol", "server_port", "signal_source",
               "capture_network_type_id", "agent_id", "team_id", "is_key_service", *RESOURCE}
MAP_TAGS = {"time", "is_ipv4", "protocol", "server_port", "signal_source", "capture_network_type_id",
            "agent_id", "team_id", "is_key_service", "observation_point", "capture_nic", "capture_nic_type",
            "tunnel_type", "nat_source", *(f"{r}_{s}" for r in (*RESOURCE, "ip4", "ip6") for s in "01")}
APP_TAGS = {"l7_protocol", "app_service", "app_instance", "endpoint", "biz_type"}
NETWORK_METERS = {
    *(f"{m}_{d}" for m in ("packet", "byte", "l3_byte", "l4_byte", "retrans", "zero_win", "ooo")
      for d in ("tx", "rx")),
    "new_flow", "closed_flow", "flow_load", "l7_request", "l7_response", "syn_count", "synack_count",
    "direction_score", "retrans_syn", "retrans_synack", "l7_client_error", "l7_server_error", "l7_timeout",
    "l7_error", *(f"{m}_{a}" for m in ("rtt", "rtt_client", "rtt_server", "srt", "art", "rrt", "cit")
                  for a in ("sum", "count", "max")),
    *enums.CLOSE_COUNTERS, *enums.FAIL_SUMS,
}
APP_METERS = {"request", "response", "direction_score", "rrt_sum", "rrt_count", "rrt_max", "client_error",
              "server_error", "timeout", "error"}
EXPECTED_COLUMNS = {
    "flow_log.l4_flow_log": L4_COLUMNS,
    "flow_log.l7_flow_log": L7_COLUMNS,
    **{f"flow_metrics.network.{r}": METRIC_TAGS | NETWORK_METERS for r in ("1s", "1m")},
    **{f"flow_metrics.network_map.{r}": MAP_TAGS | NETWORK_METERS for r in ("1s", "1m")},
    **{f"flow_metrics.application.{r}": METRIC_TAGS | APP_TAGS | APP_METERS for r in ("1s", "1m")},
    **{f"flow_metrics.application_map.{r}": MAP_TAGS | APP_TAGS | APP_METERS for r in ("1s", "1m")},
}
VERSIONS = [m.version for m in migrate.load_migrations()]


def tables(client, kind: str = "table") -> dict[str, set[str]]:
    """{database: names} of our databases; kind 'table' or 'dictionary'."""
    engine = "engine != 'Dictionary'" if kind == "table" else "engine = 'Dictionary'"
    rows = client.query(f"SELECT database, name FROM system.tables WHERE database IN "
                        f"('flow_log', 'flow_metrics', 'flow_tag', 'flowscope') AND {engine}").result_rows
    found: dict[str, set[str]] = {}
    for db, name in rows:
        found.setdefault(db, set()).add(name)
    return found


def columns(client, table: str) -> dict[str, str]:
    db, name = table.split(".", 1)
    rows = client.query("SELECT name, type FROM system.columns "
                        "WHERE database = {db:String} AND table = {t:String}",
                        parameters={"db": db, "t": name}).result_rows
    return dict(rows)


def show_create(client, table: str) -> str:
    db, name = table.split(".", 1)
    return client.command(f"SHOW CREATE TABLE {db}.`{name}`").replace("\\n", "\n")


# ---------------------------------------------------------------------------------------------------
# Applied on chDB


def test_apply_creates_every_table_and_dictionary(chdb):
    report = migrate.apply(chdb)

    assert report.applied == VERSIONS and report.skipped == [] and report.warnings == []
    assert tables(chdb) == EXPECTED_TABLES
    assert tables(chdb, "dictionary") == {"flow_tag": EXPECTED_DICTIONARIES}
    for table, column, typ in COLUMN_TYPES:
        assert columns(chdb, table)[column] == typ, f"{table}.{column}"


@pytest.mark.parametrize("table", sorted(EXPECTED_COLUMNS))
def test_tables_have_the_contract_columns(chdb, table):
    migrate.apply(chdb)
    assert EXPECTED_COLUMNS[table] - set(columns(chdb, table)) == set()


def test_sort_keys_partitions_and_ttls(chdb):
    migrate.apply(chdb)
    rows = chdb.query("SELECT database || '.' || name, sorting_key, partition_key, engine_full "
                      "FROM system.tables WHERE database IN ('flow_log', 'flow_metrics')").result_rows
    found = {name: (key, part, engine) for name, key, part, engine in rows}
    assert found["flow_log.l4_flow_log"][:2] == ("time, l3_epc_id_1, ip4_1, ip6_1, server_port",
                                                 "toStartOfHour(time)")
    assert found["flow_log.l7_flow_log"][0] == "time, l7_protocol, l3_epc_id_1, ip4_1, ip6_1, server_port"
    assert found["flow_metrics.network.1s"][:2] == ("time, l3_epc_id, ip4, ip6, server_port",
                                                    "toStartOfInterval(time, toIntervalHour(4))")
    assert found["flow_metrics.network_map.1m"][:2] == (
        "time, l3_epc_id_1, ip4_1, ip6_1, l3_epc_id_0, ip4_0, ip6_0, server_port",
        "toStartOfInterval(time, toIntervalHour(12))")
    assert "TTL _ingest_time + toIntervalHour(72)" in found["flow_log.l4_flow_log"][2]
    assert "TTL _ingest_time + toIntervalHour(24)" in found["flow_metrics.application.1s"][2]
    assert "TTL _ingest_time + toIntervalHour(168)" in found["flow_metrics.application_map.1m"][2]


def test_apply_twice_is_a_noop(chdb):
    migrate.apply(chdb)
    snapshot = ("SELECT database, name, create_table_query FROM system.tables "
                "WHERE database LIKE 'flow%' ORDER BY 1, 2")
    before = chdb.query(snapshot).result_rows
    count = "SELECT count() FROM flowscope.schema_migrations"
    recorded = chdb.query(count).result_rows[0][0]

    report = migrate.apply(chdb)

    assert (report.applied, report.skipped) == ([], VERSIONS)
    assert not report.enums_refreshed and report.retention_changes == [] and report.warnings == []
    assert chdb.query(snapshot).result_rows == before
    assert chdb.query(count).result_rows[0][0] == recorded == len(VERSIONS)


def test_insert_with_a_handful_of_columns_takes_defaults(chdb):
    migrate.apply(chdb)
    t = dt.datetime(2030, 1, 2, 3, 4, 5)  # inside the 72 h TTL for a long time
    chdb.insert("l4_flow_log", [[t], [ipaddress.IPv4Address("10.0.0.1")], [ipaddress.IPv4Address("10.0.0.2")],
                                [80], [6], [1500], ["c"]],
                column_names=["time", "ip4_0", "ip4_1", "server_port", "protocol", "byte_tx",
                              "observation_point"],
                database="flow_log", column_oriented=True)
    chdb.command("INSERT INTO flow_log.l7_flow_log (time, l7_protocol, request_type, request_resource) "
                 "VALUES ('2030-01-02 03:04:05', 20, 'GET', '/api')")
    chdb.command("INSERT INTO flow_metrics.`network.1m` (time, ip4, server_port, byte_tx) "
                 "VALUES ('2030-01-02 03:04:00', '10.0.0.2', 80, 1500)")
    chdb.command("INSERT INTO flow_metrics.`application_map.1s` (time, ip6_1, request) "
                 "VALUES ('2030-01-02 03:04:05', '2001:db8::1', 3)")

    l4 = chdb.query("SELECT bitShiftRight(_id, 32) = toUnixTimestamp(time), start_time = time, "
                    "end_time = time, ip4_1, byte_tx, observation_point, is_ipv4, team_id, "
                    "capture_network_type_id, l3_epc_id_1, rtt, acl_gids, request_domain "
                    "FROM flow_log.l4_flow_log").result_rows
    assert l4 == [(True, True, True, ipaddress.IPv4Address("10.0.0.2"), 1500, "c", 1, 1, 3, 0, 0.0, [], "")]
    l7 = chdb.query("SELECT l7_protocol, request_type, request_id, response_code, span_kind, type, is_ipv4, "
                    "attribute_names FROM flow_log.l7_flow_log").result_rows
    assert l7 == [(20, "GET", None, None, None, 0, 1, [])]
    network = chdb.query("SELECT byte_tx, rtt_max, team_id FROM flow_metrics.`network.1m`").result_rows
    assert network == [(1500, 0, 1)]
    application = chdb.query("SELECT request, is_ipv4 FROM flow_metrics.`application_map.1s`").result_rows
    assert application == [(3, 0)]


def test_retention_changes_the_ttl_once(chdb):
    migrate.apply(chdb)

    report = migrate.apply(chdb, retention={"flow_log.l4_flow_log": 24, "flow_metrics.network.1m": 720})

    assert report.retention_changes == [
        migrate.RetentionChange("flow_log.l4_flow_log", 72, 24),
        migrate.RetentionChange("flow_metrics.network.1m", 168, 720),
    ]
    assert "TTL _ingest_time + toIntervalHour(24)" in show_create(chdb, "flow_log.l4_flow_log")
    assert "TTL _ingest_time + toIntervalHour(720)" in show_create(chdb, "flow_metrics.network.1m")
    assert "TTL _ingest_time + toIntervalHour(72)" in show_create(chdb, "flow_log.l7_flow_log")

    again = migrate.apply(chdb, retention={"flow_log.l4_flow_log": 24})
    assert again.retention_changes == []
    back = migrate.apply(chdb, retention={"flow_log.l4_flow_log": 72})
    assert back.retention_changes == [migrate.RetentionChange("flow_log.l4_flow_log", 24, 72)]
    assert "TTL _ingest_time + toIntervalHour(72)" in show_create(chdb, "flow_log.l4_flow_log")


def test_unknown_retention_table_is_refused_before_anything_runs(chdb):
    with pytest.raises(ValueError, match=r"unknown table\(s\) in retention: flow_log\.l5_flow_log; "
                                         r"known tables: .*flow_log\.l4_flow_log.*flow_metrics\.network\.1s"):
        migrate.apply(chdb, retention={"flow_log.l5_flow_log": 24})
    assert tables(chdb) == {}
    with pytest.raises(ValueError, match="positive number of hours"):
        migrate.render(retention={"flow_log.l4_flow_log": 0})


def test_enum_dictionaries_resolve(chdb):
    report = migrate.apply(chdb)

    assert report.enums_refreshed
    row = chdb.query("SELECT dictGet('flow_tag.int_enum_map', 'name_en', ('close_type', toUInt64(7))), "
                     "dictGet('flow_tag.int_enum_map', 'name_zh', ('l7_protocol', toUInt64(20))), "
                     "dictGet('flow_tag.string_enum_map', 'name_en', ('observation_point', 'c')), "
                     "dictGet('flow_tag.string_enum_map', 'description_en', ('observation_point', 'rest'))"
                     ).result_rows[0]
    assert row == (enums.INT_ENUMS["close_type"][7][0], "HTTP",
                   enums.STRING_ENUMS["observation_point"]["c"][0],
                   enums.STRING_ENUMS["observation_point"]["rest"][1])
    count = chdb.query("SELECT count() FROM flow_tag.int_enum").result_rows[0][0]
    assert count == sum(len(values) for values in enums.INT_ENUMS.values())


def test_resource_dictionary_reads_the_newest_version(chdb):
    migrate.apply(chdb)
    for version, name in ((3, "web-new"), (1, "web-old")):  # the older version is inserted last
        chdb.command(f"INSERT INTO flow_tag.pod (id, name, pod_ns_id, _version) "
                     f"VALUES (7, '{name}', 2, {version})")
    chdb.command("SYSTEM RELOAD DICTIONARY flow_tag.pod_map")

    row = chdb.query("SELECT dictGet('flow_tag.pod_map', 'name', toUInt64(7)), "
                     "dictGet('flow_tag.pod_map', 'team_id', toUInt64(7))").result_rows[0]
    assert row == ("web-new", 1)


def test_edited_file_is_reported_not_reapplied_and_new_file_applies(chdb, tmp_path: Path):
    sql = tmp_path / "sql"
    shutil.copytree(migrate.SQL_DIR, sql)
    migrate.apply(chdb, sql_dir=sql)

    flow_log = sql / "0002_flow_log.sql"
    flow_log.write_text("-- a comment changes no statement\n" + flow_log.read_text())
    assert migrate.apply(chdb, sql_dir=sql).warnings == []

    flow_log.write_text(flow_log.read_text().replace("l7_parse_failed          UInt32",
                                                     "l7_parse_failed          UInt64"))
    (sql / "0099_extra.sql").write_text("CREATE TABLE IF NOT EXISTS flowscope.extra (x UInt8)\n"
                                        "ENGINE = MergeTree\nORDER BY x;\n")
    report = migrate.apply(chdb, sql_dir=sql)

    assert report.applied == [99]
    assert len(report.warnings) == 1
    assert "0002_flow_log.sql changed since it was applied" in report.warnings[0]
    assert columns(chdb, "flow_log.l4_flow_log")["l7_parse_failed"] == "UInt32"
    assert "extra" in tables(chdb)["flowscope"]


def test_cli_applies_and_prints(chdb_dsn, capsys):
    assert migrate.main(["--clickhouse", chdb_dsn, "--retention", "flow_metrics.application.1s=12"]) == 0
    out = capsys.readouterr().out
    assert "applied migrations: 0001, 0002, 0003, 0004" in out
    assert "retention flow_metrics.application.1s: 24 h -> 12 h" in out

    assert migrate.main(["--print", "--cluster", "prod"]) == 0
    assert "CREATE DATABASE IF NOT EXISTS flow_log ON CLUSTER prod;" in capsys.readouterr().out


# ---------------------------------------------------------------------------------------------------
# Statements as text


def test_split_statements_drops_comments_and_splits_at_line_end():
    text = ("-- header; not a statement;\nCREATE DATABASE IF NOT EXISTS a;\n\n"
            "  -- note\nSELECT 'x;y'\nFROM t ;\n")
    assert migrate.split_statements(text) == ["CREATE DATABASE IF NOT EXISTS a", "SELECT 'x;y'\nFROM t"]


def test_every_create_is_idempotent_and_qualified():
    for stmt in migrate.render():
        if stmt.startswith("CREATE"):
            assert migrate.CREATE_DATABASE.match(stmt) or migrate.CREATE_TABLE.match(stmt) \
                or migrate.CREATE_DICTIONARY.match(stmt), stmt[:80]


def test_single_node_statements_have_no_cluster_clauses():
    text = "\n".join(migrate.render(retention={"flow_log.l4_flow_log": 24}))
    assert "ON CLUSTER" not in text and "Replicated" not in text and "Distributed" not in text


def test_l4_codecs_keep_zstd_where_rows_carry_entropy(chdb):
    """sql/0007: the insert-speed codecs land on the applied table (and on the replicated local table
    ON CLUSTER): LZ4 for counters and ids that are mostly defaults, ZSTD kept for times and addresses."""
    migrate.apply(chdb)
    codecs = dict(chdb.query("SELECT name, compression_codec FROM system.columns "
                             "WHERE database = 'flow_log' AND table = 'l4_flow_log'").result_rows)
    assert codecs["packet_tx"] == "CODEC(T64, LZ4)"
    assert codecs["pod_id_1"] == "CODEC(LZ4)"
    assert codecs["time"] == "CODEC(DoubleDelta, LZ4)"
    assert codecs["start_time"] == codecs["ip4_0"] == codecs["syn_seq"] == "CODEC(ZSTD(1))"
    assert codecs["_id"] == "CODEC(DoubleDelta, ZSTD(1))"
    l7 = dict(chdb.query("SELECT name, compression_codec FROM system.columns "
                         "WHERE database = 'flow_log' AND table = 'l7_flow_log'").result_rows)
    assert l7["pod_id_1"] == "CODEC(ZSTD(1))"
    [alter] = [s for s in migrate.render("prod") if "MODIFY COLUMN packet_tx" in s]
    assert alter.startswith("ALTER TABLE flow_log.l4_flow_log_local ON CLUSTER prod\n    MODIFY COLUMN time CODEC(")


def test_cluster_ddl_for_l4_flow_log():
    statements = migrate.render("prod")
    local = [s for s in statements if s.startswith("CREATE TABLE IF NOT EXISTS flow_log.l4_flow_log_local ")]
    assert len(local) == 1
    assert local[0].startswith("CREATE TABLE IF NOT EXISTS flow_log.l4_flow_log_local ON CLUSTER prod\n(")
    assert ("ENGINE = ReplicatedMergeTree("
            "'/clickhouse/tables/{shard}/flow_log/l4_flow_log_local', '{replica}')\n"
            "PARTITION BY toStartOfHour(time)") in local[0]
    assert "TTL _ingest_time + INTERVAL 72 HOUR" in local[0]
    assert ("CREATE TABLE IF NOT EXISTS flow_log.l4_flow_log ON CLUSTER prod AS flow_log.l4_flow_log_local\n"
            "ENGINE = Distributed('prod', 'flow_log', 'l4_flow_log_local', rand())") in statements


def test_cluster_ddl_quotes_dotted_metric_tables():
    statements = migrate.render("prod")
    assert any(s.startswith("CREATE TABLE IF NOT EXISTS flow_metrics.`network.1s_local` ON CLUSTER prod "
                            "AS flow_metrics.`network.1m_local`\nENGINE = ReplicatedMergeTree("
                            "'/clickhouse/tables/{shard}/flow_metrics/network.1s_local', '{replica}')")
               for s in statements)
    assert ("CREATE TABLE IF NOT EXISTS flow_metrics.`network.1s` ON CLUSTER prod "
            "AS flow_metrics.`network.1s_local`\n"
            "ENGINE = Distributed('prod', 'flow_metrics', 'network.1s_local', rand())") in statements


def test_cluster_ddl_databases_dictionaries_and_replacing_tables():
    statements = migrate.render("prod", retention={"flow_log.l4_flow_log": 24})
    for db in ("flow_log", "flow_metrics", "flow_tag", "flowscope"):
        assert f"CREATE DATABASE IF NOT EXISTS {db} ON CLUSTER prod" in statements
    dictionaries = [s for s in statements if s.startswith("CREATE DICTIONARY")]
    assert len(dictionaries) == len(EXPECTED_DICTIONARIES)
    assert all(" ON CLUSTER prod\n(" in s for s in dictionaries)
    pod = next(s for s in statements if s.startswith("CREATE TABLE IF NOT EXISTS flow_tag.pod_local "))
    assert ("ENGINE = ReplicatedReplacingMergeTree("
            "'/clickhouse/tables/{shard}/flow_tag/pod_local', '{replica}', _version)") in pod
    # every version of a key on one shard, so FINAL sees them together
    assert ("CREATE TABLE IF NOT EXISTS flow_tag.pod_k8s_label ON CLUSTER prod "
            "AS flow_tag.pod_k8s_label_local\n"
            "ENGINE = Distributed('prod', 'flow_tag', 'pod_k8s_label_local', cityHash64(id, key))"
            ) in statements
    assert ("ALTER TABLE flow_log.l4_flow_log_local ON CLUSTER prod MODIFY TTL _ingest_time + INTERVAL 24 HOUR "
            "SETTINGS materialize_ttl_after_modify = 0") in statements
    assert "SYSTEM RELOAD DICTIONARY ON CLUSTER prod flow_tag.int_enum_map" in statements
    single_tables = sum(s.startswith("CREATE TABLE") for s in migrate.render())
    assert sum(s.startswith("CREATE TABLE") for s in statements) == 2 * single_tables


def test_every_cluster_statement_parses():
    for stmt in migrate.render("prod", retention={"flow_metrics.network.1m": 720}):
        tree = sqlglot.parse_one(stmt, read="clickhouse")  # raises on a syntax error
        if stmt.startswith("CREATE"):  # dictionaries included: sqlglot parses CREATE DICTIONARY
            assert isinstance(tree, exp.Create), stmt[:80]
        # SYSTEM RELOAD DICTIONARY has no sqlglot grammar: it comes back as a generic exp.Command.


def test_bad_cluster_name_and_unknown_statement_are_errors():
    with pytest.raises(ValueError, match="cluster name"):
        migrate.render("prod; DROP")
    with pytest.raises(ValueError, match="no cluster form"):
        migrate.cluster_statements("DROP TABLE flow_log.l4_flow_log", "prod")
