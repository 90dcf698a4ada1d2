"""The datasource: which plain ClickHouse SQL the guard lets through (``query_raw``, ``simple_sql=true``)
and the ClickHouse SQL it becomes, and DeepFlow's ``POST /v1/query/`` (DeepFlow SQL through the
dialect) answered by the real Starlette app over a store that the collector filled from committed
pcaps. The dialect itself is specified in tests/test_dialect_*.py."""

from __future__ import annotations

import datetime as dt
import re
import struct
import uuid
import warnings

import pytest

from collector.capture.pcap import PcapSource
from collector.pipeline import Collector
from collector.tagging import Tagger
from collector.writer import Writer
from datasource.app import create_app
from datasource.engine import Limits, QueryEngine
from datasource.guard import check_and_resolve
from flowscope import migrate
from flowscope.config import Config
from flowscope.storage import connect
from tests.helpers import DATA, truth

with warnings.catch_warnings():     # starlette nudges towards httpx2, which this environment lacks
    warnings.simplefilter("ignore", UserWarning)
    from starlette.testclient import TestClient

PCAPS = ("tcp_rst", "ipv6")

# (DeepFlow SQL, db, data_precision) → the ClickHouse SQL that runs.
ALLOWED = [
    ("SELECT count() FROM l4_flow_log", "flow_log", None,
     'SELECT count() FROM flow_log."l4_flow_log"'),
    ("select close_type, count() as n from l4_flow_log group by close_type order by close_type limit 5",
     "flow_log", None,
     'SELECT close_type, count() AS n FROM flow_log."l4_flow_log" GROUP BY close_type ORDER BY close_type LIMIT 5'),
    ("SELECT sum(packet_tx) FROM network", "flow_metrics", "1s",
     'SELECT sum(packet_tx) FROM flow_metrics."network.1s"'),
    ("SELECT sum(packet_tx) FROM network", "flow_metrics", "1m",
     'SELECT sum(packet_tx) FROM flow_metrics."network.1m"'),
    ("SELECT sum(packet_tx) FROM network", "flow_metrics", None,            # default precision: 1m
     'SELECT sum(packet_tx) FROM flow_metrics."network.1m"'),
    ("SELECT sum(packet_rx) FROM network_map", "flow_metrics", "1s",
     'SELECT sum(packet_rx) FROM flow_metrics."network_map.1s"'),
    ("SELECT count() FROM `network.1s`", "flow_metrics", "1m",              # an explicit suffix wins
     'SELECT count() FROM flow_metrics."network.1s"'),
    ("SELECT count() FROM flow_log.l4_flow_log", None, None,                # qualified: no db needed
     'SELECT count() FROM flow_log."l4_flow_log"'),
    ("SELECT count() FROM flow_metrics.network_map", "flow_log", "1s",
     'SELECT count() FROM flow_metrics."network_map.1s"'),
    ("SELECT name FROM region_map", "flow_tag", None,
     'SELECT name FROM flow_tag."region_map"'),
    ("SELECT dictGet('flow_tag.region_map', 'name', toUInt64(region_id_0)) AS region FROM l4_flow_log",
     "flow_log", None,
     "SELECT dictGet('flow_tag.region_map', 'name', toUInt64(region_id_0)) AS region FROM flow_log.\"l4_flow_log\""),
    ("WITH t AS (SELECT flow_id FROM l4_flow_log) SELECT count() FROM t", "flow_log", None,
     'WITH t AS (SELECT flow_id FROM flow_log."l4_flow_log") SELECT count() FROM t'),
    ("SELECT count() FROM (SELECT flow_id FROM l4_flow_log WHERE close_type = 2)", "flow_log", None,
     'SELECT count() FROM (SELECT flow_id FROM flow_log."l4_flow_log" WHERE close_type = 2)'),
    ("SELECT a.flow_id FROM l4_flow_log AS a JOIN l7_flow_log AS b ON a.flow_id = b.flow_id", "flow_log", None,
     'SELECT a.flow_id FROM flow_log."l4_flow_log" AS a JOIN flow_log."l7_flow_log" AS b ON a.flow_id = b.flow_id'),
    ("SELECT flow_id FROM l4_flow_log UNION ALL SELECT flow_id FROM l7_flow_log", "flow_log", None,
     'SELECT flow_id FROM flow_log."l4_flow_log" UNION ALL SELECT flow_id FROM flow_log."l7_flow_log"'),
    ("SELECT count() FROM l4_flow_log WHERE flow_id IN flow_log.l7_flow_log", "flow_log", None,
     'SELECT count() FROM flow_log."l4_flow_log" WHERE flow_id IN flow_log."l7_flow_log"'),
    ("SELECT count() FROM l4_flow_log WHERE flow_id IN l7_flow_log", "flow_log", None,   # the request's db
     'SELECT count() FROM flow_log."l4_flow_log" WHERE flow_id IN flow_log."l7_flow_log"'),
    ("SELECT count() FROM l4_flow_log AS l WHERE flow_id IN (l.flow_id)", "flow_log", None,   # a column
     'SELECT count() FROM flow_log."l4_flow_log" AS l WHERE flow_id IN (l.flow_id)'),
    ("SELECT count() FROM l4_flow_log WHERE observation_point = 'a;b'", "flow_log", None,
     "SELECT count() FROM flow_log.\"l4_flow_log\" WHERE observation_point = 'a;b'"),
    # a line comment becomes a closed block comment: it cannot swallow the SETTINGS clause the
    # client appends (readonly, limits)
    ("SELECT 1 -- the end", "flow_log", None, "SELECT 1 /* the end */"),
]

ONLY_SELECT = "only SELECT is allowed, got "
NOT_QUERYABLE = "is not queryable (known: flow_log, flow_metrics, flow_tag)"
# (sql, db, data_precision) → HTTP status, OPT_STATUS, what DESCRIPTION says.
REJECTED = [
    ("DROP TABLE flow_log.l4_flow_log", "flow_log", None, 400, ONLY_SELECT + "DROP"),
    ("INSERT INTO l4_flow_log (flow_id) VALUES (1)", "flow_log", None, 400, ONLY_SELECT + "INSERT"),
    ("ALTER TABLE l4_flow_log DELETE WHERE 1", "flow_log", None, 400, ONLY_SELECT + "ALTER"),
    ("CREATE TABLE t (a UInt8) ENGINE = Memory", "flow_log", None, 400, ONLY_SELECT + "CREATE"),
    ("TRUNCATE TABLE l4_flow_log", "flow_log", None, 400, ONLY_SELECT + "TRUNCATE"),
    ("SYSTEM DROP DNS CACHE", "flow_log", None, 400, ONLY_SELECT + "SYSTEM"),
    ("SET readonly = 0", "flow_log", None, 400, ONLY_SELECT + "SET"),
    ("SHOW TABLES", "flow_log", None, 400, ONLY_SELECT + "SHOW"),
    ("SELECT 1; SELECT 2", "flow_log", None, 400, "one statement per request, got 2"),
    ("SELECT count() FROM l4_flow_log; DROP TABLE l4_flow_log", "flow_log", None, 400,
     "one statement per request, got 2"),
    ("SELECT 1 /* ok */; DROP TABLE l4_flow_log", "flow_log", None, 400, "one statement per request, got 2"),
    ("SELECT 1 -- ok\n; DROP TABLE l4_flow_log", "flow_log", None, 400, "one statement per request, got 2"),
    ("SELECT count() FROM l4_flow_log SETTINGS max_threads=1", "flow_log", None, 400,
     "SETTINGS is not allowed in queries"),
    ("SELECT * FROM (SELECT flow_id FROM l4_flow_log SETTINGS readonly = 0)", "flow_log", None, 400,
     "SETTINGS is not allowed in queries"),
    ("SELECT count() FROM l4_flow_log FORMAT JSON", "flow_log", None, 400,
     "FORMAT is not allowed in queries (the API chooses the format)"),
    ("SELECT * FROM url('http://169.254.169.254/', CSV, 'a String')", "flow_log", None, 400,
     "function url() is not allowed"),
    ("SELECT * FROM file('/etc/passwd', 'LineAsString')", "flow_log", None, 400, "function file() is not allowed"),
    ("SELECT * FROM remote('10.0.0.1', system.users)", "flow_log", None, 400, "function remote() is not allowed"),
    ("SELECT * FROM s3('http://bucket/key', 'CSV')", "flow_log", None, 400, "function s3() is not allowed"),
    ("SELECT * FROM numbers(1000000000)", "flow_log", None, 400,
     "table functions are not allowed: numbers(1000000000)"),
    ("SELECT file('/etc/passwd') AS secret", "flow_log", None, 400, "function file() is not allowed"),
    ("SELECT * FROM view(SELECT * FROM system.users)", "flow_log", None, 400, "function view() is not allowed"),
    ("SELECT * FROM system.tables", "flow_log", None, 400, "database 'system' " + NOT_QUERYABLE),
    ("SELECT * FROM information_schema.tables", "flow_log", None, 400,
     "database 'information_schema' " + NOT_QUERYABLE),
    ("SELECT * FROM INFORMATION_SCHEMA.TABLES", "flow_log", None, 400,
     "database 'INFORMATION_SCHEMA' " + NOT_QUERYABLE),
    ("SELECT count() FROM l4_flow_log", "nosuch", None, 400, "database 'nosuch' " + NOT_QUERYABLE),
    ("SELECT count() FROM l4_flow_log", None, None, 400,
     "table 'l4_flow_log' has no database: pass db (flow_log, flow_metrics, flow_tag)"),
    ("SELECT * FROM nosuch", "flow_log", None, 400,
     "table 'nosuch' does not exist in flow_log (known: l4_flow_log, l7_flow_log)"),
    ("SELECT * FROM default.secrets", "flow_log", None, 400, "database 'default' " + NOT_QUERYABLE),
    ("SELECT * FROM flow_log.network", "flow_metrics", None, 400, "table 'network' does not exist in flow_log"),
    ("SELECT * FROM flow_metrics.l4_flow_log", "flow_log", None, 400,
     "table 'l4_flow_log' does not exist in flow_metrics"),
    ("SELECT * FROM flowscope.schema_migrations", "flow_log", None, 400, "database 'flowscope' " + NOT_QUERYABLE),
    # a forbidden table smuggled through a subquery, JOIN, UNION, CTE, scalar subquery or IN
    ("SELECT count() FROM l4_flow_log WHERE flow_id IN (SELECT 1 FROM system.one)", "flow_log", None, 400,
     "database 'system' " + NOT_QUERYABLE),
    ("SELECT * FROM l4_flow_log JOIN system.users ON 1 = 1", "flow_log", None, 400,
     "database 'system' " + NOT_QUERYABLE),
    ("SELECT name FROM region_map UNION ALL SELECT name FROM system.tables", "flow_tag", None, 400,
     "database 'system' " + NOT_QUERYABLE),
    ("WITH t AS (SELECT * FROM system.tables) SELECT * FROM t", "flow_log", None, 400,
     "database 'system' " + NOT_QUERYABLE),
    ("WITH l4_flow_log AS (SELECT * FROM system.tables) SELECT * FROM l4_flow_log", "flow_log", None, 400,
     "database 'system' " + NOT_QUERYABLE),
    ("SELECT (SELECT count() FROM system.tables)", "flow_log", None, 400, "database 'system' " + NOT_QUERYABLE),
    ("SELECT count() FROM l4_flow_log WHERE 0 IN system.one", "flow_log", None, 400,
     "database 'system' " + NOT_QUERYABLE),
    ("SELECT count() FROM l4_flow_log WHERE 0 GLOBAL NOT IN (system.one)", "flow_log", None, 400,
     "database 'system' " + NOT_QUERYABLE),
    ("SELECT notIn(0, system.one)", "flow_log", None, 400, "database 'system' " + NOT_QUERYABLE),
    # an unqualified name on the right of IN is a table of the session's database: only known ones
    ("SELECT count() FROM l4_flow_log WHERE 0 IN tables", "flow_log", None, 400,
     "IN tables: not a known table of flow_log; use IN (value, …) or IN (SELECT …)"),
    ("SELECT * FROM `system`.`tables`", "flow_log", None, 400, "database 'system' " + NOT_QUERYABLE),
    ('SELECT * FROM "system"."tables"', "flow_log", None, 400, "database 'system' " + NOT_QUERYABLE),
    ("SELECT * FROM `system.tables`", "flow_log", None, 400, "table 'system.tables' does not exist in flow_log"),
    ("SELECT sum(packet_tx) FROM network", "flow_metrics", "1h", 400,
     "data_precision '1h' is not stored (available: 1s, 1m)"),
    ("SELECT * FROM flow_metrics.`network.1h`", "flow_log", None, 400,
     "table 'network.1h' does not exist in flow_metrics"),
    ("", "flow_log", None, 400, "empty sql"),
    ("  \n ", "flow_log", None, 400, "empty sql"),
    # parse errors are HTTP 500 + FAIL, as DeepFlow answers them, with the position
    ("SELECT count( FROM l4_flow_log", "flow_log", None, 500, "syntax error at line 1, column 30"),
    ("SELEC 1", "flow_log", None, 500, "syntax error at line 1, column 7 near '1'"),
]


def _id(case: tuple) -> str:
    return " ".join(str(case[0]).split())[:60] or "<empty>"


@pytest.mark.parametrize(("sql", "db", "precision", "ch_sql"), ALLOWED, ids=[_id(c) for c in ALLOWED])
def test_allowed_queries_become_this_clickhouse_sql(sql, db, precision, ch_sql):
    assert check_and_resolve(sql, db, precision) == ch_sql


@pytest.mark.parametrize(("sql", "db", "precision", "status", "message"), REJECTED, ids=[_id(c) for c in REJECTED])
def test_rejected_queries_never_reach_clickhouse(sql, db, precision, status, message):
    """The guard answers before any client is touched (the engine here has none)."""
    code, body = QueryEngine(client=None).query_raw(sql, db, precision)
    assert (code, body["OPT_STATUS"]) == (status, "INVALID_POST_DATA" if status == 400 else "FAIL")
    assert message in body["DESCRIPTION"]
    assert body["result"] is None and body["debug"] is None


@pytest.mark.parametrize(("sql", "db", "precision", "status", "message"), REJECTED, ids=[_id(c) for c in REJECTED])
def test_the_dialect_refuses_them_too(sql, db, precision, status, message):
    """None of them is DeepFlow SQL either: the dialect refuses each before any client is touched
    (SHOW TABLES is DeepFlow's own statement, answered from the catalogue)."""
    code, body = QueryEngine(client=None).query(sql, db, precision)
    if sql == "SHOW TABLES":
        assert (code, body["result"]["values"]) == (200, [["l4_flow_log", None], ["l7_flow_log", None]])
        return
    assert code in (400, 500) and body["OPT_STATUS"] in ("INVALID_POST_DATA", "FAIL")
    assert body["result"] is None and body["DESCRIPTION"]


# -- the HTTP API on a filled store --------------------------------------------------------------------

@pytest.fixture(scope="module")
def store_dsn(tmp_path_factory) -> str:
    return f"chdb://{tmp_path_factory.mktemp('datasource') / 'chdb'}"


@pytest.fixture(scope="module")
def store(store_dsn):
    """A store the collector filled from tcp_rst.pcap and ipv6.pcap (in-process, real writer)."""
    client = connect(store_dsn)
    migrate.apply(client)
    tagger = Tagger()
    writer = Writer(client, registry=tagger.registry)
    source = PcapSource([str(DATA / f"{n}.pcap") for n in PCAPS])
    Collector(Config(), writer, tagger=tagger).run(source)
    source.close()
    writer.close()
    assert writer.stats.insert_errors == 0 and not writer.stats.rows_dropped
    yield client
    client.close()


@pytest.fixture(scope="module")
def api(store):
    return TestClient(create_app(QueryEngine(store)))


def _post(api, sql: str, db: str | None = "flow_log", precision: str | None = None, *, debug: bool = False,
          raw: bool = False):
    """POST /v1/query/: DeepFlow SQL, or plain ClickHouse SQL with ``raw`` (``simple_sql=true``)."""
    form = {"sql": sql, **({"db": db} if db else {}), **({"data_precision": precision} if precision else {})}
    params = "&".join(p for p, on in (("debug=true", debug), ("simple_sql=true", raw)) if on)
    r = api.post("/v1/query/" + (f"?{params}" if params else ""), data=form)
    return r.status_code, r.json()


def _values(api, sql: str, db: str = "flow_log", precision: str | None = None) -> list[list]:
    status, body = _post(api, sql, db, precision)
    assert status == 200, body["DESCRIPTION"]
    return body["result"]["values"]


def _conversations(name: str) -> list[dict]:
    return [c for c in truth(name)["conversations"] if not c["tunnel_outer"]]


def test_success_envelope(api):
    """DeepFlow's envelope, field for field: clients (Grafana plugin, deepflow-app) parse it."""
    status, body = _post(api, "SELECT Count(row) AS flows, Min(client_port), Sum(byte) FROM l4_flow_log")
    assert status == 200
    flows = sum(len(_conversations(n)) for n in PCAPS)
    lowest = min(c["a_port"] for n in PCAPS for c in _conversations(n))      # A is always the client here
    wire = sum(c["bytes_ab"] + c["bytes_ba"] for n in PCAPS for c in _conversations(n))
    assert body == {
        "OPT_STATUS": "SUCCESS", "DESCRIPTION": "",
        "result": {"columns": ["flows", "Min(client_port)", "Sum(byte)"], "values": [[flows, lowest, wire]],
                   "schemas": [{"unit": "", "type": 1, "value_type": "UInt64", "pre_as": "Count(row)", "label_type": ""},
                               {"unit": "", "type": 1, "value_type": "UInt16", "pre_as": "", "label_type": ""},
                               {"unit": "Byte", "type": 1, "value_type": "UInt64", "pre_as": "", "label_type": ""}]},
        "debug": None,
    }
    status, raw = _post(api, "SELECT count() AS flows, min(client_port) FROM l4_flow_log", raw=True)
    assert status == 200 and raw["result"] == {
        "columns": ["flows", "min(client_port)"], "values": [[flows, lowest]],
        "schemas": [{"unit": "", "type": 0, "value_type": "UInt64", "pre_as": "", "label_type": ""},
                    {"unit": "", "type": 0, "value_type": "UInt16", "pre_as": "", "label_type": ""}]}


def test_debug_shows_the_clickhouse_sql(api):
    """?debug=true shows what the DeepFlow SQL became, as DeepFlow's querier does."""
    status, body = _post(api, "SELECT Sum(packet_tx) AS p FROM network", "flow_metrics", "1s", debug=True)
    assert status == 200
    [q] = body["debug"]["query_sqls"]
    assert q["Sql"] == 'SELECT sum(packet_tx) AS "p" FROM flow_metrics."network.1s" LIMIT 10000'
    assert q["Error"] == "" and q["QueryTime"].endswith("s")
    uuid.UUID(q["QueryUUID"])


def test_every_conversation_is_one_flow(api):
    """As many flows as tshark found conversations, one per 5-tuple."""
    [[flows, tuples]] = _values(api, "SELECT uniqExact(flow_id), uniqExact(is_ipv4, ip4_0, ip6_0, client_port, "
                                     "ip4_1, ip6_1, server_port, protocol) FROM l4_flow_log")
    assert flows == tuples == len(_conversations("tcp_rst")) + len(_conversations("ipv6")) == 19


def test_tcp_rst_close_types(api):
    """tcp_rst.pcap: three connections to a closed port (server reset, 15) and two reset by the server
    mid-transfer (TCP server RST, 2); both are server errors (status 3)."""
    rows = _values(api, "SELECT close_type, status, Count(row) FROM l4_flow_log WHERE is_ipv4 = 1 "
                        "GROUP BY close_type, status ORDER BY close_type")
    assert rows == [[2, 3, 2], [15, 3, 3]]
    named = _values(api, "SELECT Enum(close_type), Enum(status), Count(row) FROM l4_flow_log WHERE is_ipv4 = 1 "
                         "GROUP BY close_type, status ORDER BY close_type")
    assert named == [["Transfer – Server RST", "Server Error", 2], ["Est. – Server RST", "Server Error", 3]]


def test_packets_and_bytes_of_the_biggest_ipv6_conversation(api):
    c = max((c for c in _conversations("ipv6") if c["proto"] == "tcp"), key=lambda c: c["frames_ab"] + c["frames_ba"])
    rows = _values(api, "SELECT ip_0, client_port, ip_1, server_port, Sum(packet_tx), Sum(packet_rx), "
                        "Sum(byte_tx), Sum(byte_rx) FROM l4_flow_log "
                        f"WHERE client_port = {c['a_port']} AND server_port = {c['b_port']} "
                        "GROUP BY ip_0, client_port, ip_1, server_port")
    assert rows == [[c["a"], c["a_port"], c["b"], c["b_port"], c["frames_ab"], c["frames_ba"],
                     c["bytes_ab"], c["bytes_ba"]]]


def _first_packet_us(name: str) -> int:
    data = (DATA / f"{name}.pcap").read_bytes()
    order = "<" if data[:4] == b"\xd4\xc3\xb2\xa1" else ">"
    sec, usec = struct.unpack_from(order + "II", data, 24)
    return sec * 1_000_000 + usec


def test_times_are_rfc3339_utc_with_microseconds(api):
    """DateTime64(6) leaves the API as an RFC 3339 string with its UTC offset, exact to the µs of the
    first packet (the offset is the host's time zone; the instant is what matters). Min(time) is
    epoch seconds, as DeepFlow answers Max/Min of time."""
    [[start, time_s]] = _values(api, "SELECT Min(start_time), Min(time) FROM l4_flow_log WHERE is_ipv4 = 1")
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}(Z|[+-]\d\d:\d\d)", start), start
    first = dt.datetime(1970, 1, 1, tzinfo=dt.UTC) + dt.timedelta(microseconds=_first_packet_us("tcp_rst"))
    assert dt.datetime.fromisoformat(start) == first
    assert time_s == _first_packet_us("tcp_rst") // 1_000_000
    [[time_s]] = _values(api, "SELECT time FROM l4_flow_log WHERE is_ipv4 = 1 ORDER BY time LIMIT 1")
    assert dt.datetime.fromisoformat(time_s) == first.replace(microsecond=0)


@pytest.mark.parametrize("precision", ["1s", "1m"])
def test_metrics_tables_hold_every_packet(api, precision):
    """network_map (both ends) and network (one row per end seen locally) at both precisions hold the
    packets tshark counted; single-side rows all belong to the capturing host 10.99.0.2 / fd00:99::2."""
    packets = {n: (sum(c["frames_ab"] for c in _conversations(n)), sum(c["frames_ba"] for c in _conversations(n)))
               for n in PCAPS}
    want = [[1, *packets["tcp_rst"]], [0, *packets["ipv6"]]]
    by_version = "SELECT is_ipv4, Sum(packet_tx), Sum(packet_rx) FROM {} GROUP BY is_ipv4 ORDER BY is_ipv4 DESC"
    assert _values(api, by_version.format("network_map"), "flow_metrics", precision) == want
    assert _values(api, by_version.format("network"), "flow_metrics", precision) == want
    ends = _values(api, "SELECT ip, role, Enum(role) FROM network GROUP BY ip, role ORDER BY ip", "flow_metrics",
                   precision)
    assert ends == [["10.99.0.2", 0, "Client"], ["fd00:99::2", 0, "Client"]]


def test_form_and_json_bodies_answer_the_same(api):
    sql = "SELECT Sum(packet_rx) AS rx FROM network_map"
    form = api.post("/v1/query/", data={"db": "flow_metrics", "sql": sql, "data_precision": "1s"})
    body = api.post("/v1/query/", json={"db": "flow_metrics", "sql": sql, "data_precision": "1s"})
    no_slash = api.post("/v1/query", data={"db": "flow_metrics", "sql": sql, "data_precision": "1s"})
    assert form.status_code == body.status_code == no_slash.status_code == 200
    assert form.json() == body.json() == no_slash.json()
    assert form.json()["result"]["values"] == [[sum(c["frames_ba"] for n in PCAPS for c in _conversations(n))]]


def test_no_rows_gives_null_values_but_keeps_the_columns(api):
    status, body = _post(api, "SELECT flow_id, ip4_0 FROM l4_flow_log WHERE server_port = 1")
    assert status == 200
    assert body["result"]["columns"] == ["flow_id", "ip4_0"]
    assert body["result"]["values"] is None
    assert [s["value_type"] for s in body["result"]["schemas"]] == ["UInt64", "IPv4"]


@pytest.mark.parametrize(("sql", "db", "precision", "status", "message"),
                         [c for c in REJECTED if c[0].strip()], ids=[_id(c) for c in REJECTED if c[0].strip()])
def test_rejected_over_http(api, sql, db, precision, status, message):
    code, body = _post(api, sql, db, precision, raw=True)
    assert code == status
    assert body["OPT_STATUS"] == ("INVALID_POST_DATA" if status == 400 else "FAIL")
    assert message in body["DESCRIPTION"]
    assert body["result"] is None and body["debug"] is None


@pytest.mark.parametrize("form", [{"db": "flow_log"}, {"db": "flow_log", "sql": "   "}, {}])
def test_missing_sql_is_a_bad_request(api, form):
    r = api.post("/v1/query/", data=form)
    assert r.status_code == 400
    assert r.json() == {"OPT_STATUS": "INVALID_POST_DATA", "DESCRIPTION": "sql is required", "result": None,
                        "debug": None}


def test_clickhouse_errors_are_500_fail_with_the_sql(api):
    """The guard passes it, ClickHouse refuses it: the message and the SQL that ran come back. (The
    dialect knows the columns and refuses it first, naming the token.)"""
    status, body = _post(api, "SELECT nosuch_column FROM l4_flow_log")
    assert (status, body["OPT_STATUS"]) == (500, "FAIL")
    assert body["DESCRIPTION"] == "unknown tag or metric: nosuch_column at position 8"
    status, body = _post(api, "SELECT nosuch_column FROM l4_flow_log", raw=True)
    assert status == 500 and body["OPT_STATUS"] == "FAIL" and body["result"] is None
    assert "nosuch_column" in body["DESCRIPTION"] and "UNKNOWN_IDENTIFIER" in body["DESCRIPTION"]
    [q] = body["debug"]["query_sqls"]
    assert q["Sql"] == 'SELECT nosuch_column FROM flow_log."l4_flow_log"' and q["Error"] == body["DESCRIPTION"]


def test_clickhouse_itself_refuses_writes(store, store_dsn):
    """Defence in depth: a write that got past the guard still fails on the engine's read-only
    session, and the engine keeps answering afterwards."""
    client = connect(store_dsn)      # a second session on the same store
    try:
        engine = QueryEngine(client)
        [[before]] = engine.query("SELECT Count(row) FROM l4_flow_log", "flow_log")[1]["result"]["values"]
        for statement in ("INSERT INTO flow_log.l4_flow_log (flow_id) VALUES (1)",
                          "TRUNCATE TABLE flow_log.l4_flow_log", "DROP TABLE flow_log.l4_flow_log"):
            with pytest.raises(Exception, match="readonly"):
                engine.client.query(statement, settings=engine.limits.settings())
        status, body = engine.query("SELECT Count(row) FROM l4_flow_log", "flow_log")
        assert status == 200 and body["result"]["values"] == [[before]]
    finally:
        client.close()


def test_result_row_limit(store, store_dsn):
    """max_result_rows stops a query whose answer is too big, with ClickHouse's message."""
    client = connect(store_dsn)      # a second session on the same store
    try:
        engine = QueryEngine(client, Limits(max_result_rows=5))
        status, body = engine.query("SELECT flow_id FROM l4_flow_log", "flow_log")
        assert (status, body["OPT_STATUS"]) == (500, "FAIL")
        assert "Limit for result exceeded, max rows: 5.00" in body["DESCRIPTION"]
        status, body = engine.query("SELECT flow_id FROM l4_flow_log LIMIT 5", "flow_log")
        assert status == 200 and len(body["result"]["values"]) == 5
    finally:
        client.close()


def test_health_and_metrics_endpoints(store):
    api = TestClient(create_app(QueryEngine(store), metrics=lambda: b"flowscope_packets_total 22.0\n",
                                health=lambda: {"flows_active": 0}))
    assert api.get("/v1/health/").json() == {"status": "ok", "flows_active": 0}
    r = api.get("/metrics")
    # the collector's metrics follow the datasource's own (tests/test_api.py checks those)
    assert r.status_code == 200 and r.text.endswith("\nflowscope_packets_total 22.0\n")
    assert r.headers["content-type"].startswith("text/plain")
