"""The shape cache (datasource/dialect/shape.py) and the check of translated SQL (safety.py).

* Property: for a corpus of statements whose literals vary the way dashboards vary them (time ranges,
  thresholds, names, intervals, limits…), a translation served from the shape cache is exactly the
  translation done from scratch — SQL, schemas, or the error.
* Hostile literals substituted into a cached shape stay literals: the SQL passes the guard, reads each
  hostile value as one literal, and has the structure of a benign request's; on a real store,
  everything that reaches ClickHouse passes the guard.
* The check refuses generated SQL that leaves flowscope's tables (table functions, system tables,
  comma joins, IN tables, foreign dictionaries), adds clauses (SETTINGS, FORMAT, INTO OUTFILE, UNION)
  or hides text (comments, `;`, stray quotes).
* Empty answers take their column names and types from the template's earlier answer: one DESCRIBE.
"""

from __future__ import annotations

import random
import re

import pytest
import sqlglot
from hypothesis import given, settings
from hypothesis import strategies as st
from sqlglot import exp

import datasource.dialect as dialect
from datasource.dialect import DialectError, safety, translate, translate_uncached
from datasource.dialect.shape import lex
from datasource.engine import QueryEngine
from datasource.guard import check_and_resolve
from flowscope import migrate
from flowscope.storage import connect

# (db, data_precision, DeepFlow SQL with {slots}); a slot's name picks its values (VALUES below).
CORPUS = [
    # the stock dashboards' shapes (bench/datasource.py), their time ranges as Grafana sends them
    ("flow_metrics", "1m", "SELECT pod_cluster as `value`, pod_cluster as `display_name` FROM `network.1m` WHERE "
     "exist(pod_cluster) AND time >= {t0} AND time <= {t1} GROUP BY `value` LIMIT 999999999999"),
    ("flow_metrics", "1m", "SELECT pod_ns as value FROM `network.1m` WHERE exist(pod_ns) AND ('{name}' IN "
     "('__disabled') OR '{name}' IN ('__any') OR pod_cluster IN ('{name}')) AND time >= {t0} AND time <= {t1} "
     "GROUP BY `value` LIMIT 999999999999"),
    ("flow_metrics", "1m", "SELECT PerSecond(Avg(`request`)) AS `request_rate`, Avg(`rrt`) AS `delay_avg`, "
     "Max(`rrt_max`) AS `delay_max`, node_type(auto_service_0) AS `client_node_type`, auto_service_0, "
     "auto_service_1, Enum(observation_point), observation_point FROM application_map WHERE auto_service_id_1!={n} "
     "AND l7_protocol IN ({n2}) AND time>='{t0}' AND time<='{t1}' GROUP BY auto_service_0, auto_service_1, "
     "observation_point, `client_node_type` LIMIT {limit}"),
    ("flow_metrics", "1m", "SELECT PerSecond(Avg(`request`)) AS `Request Rate`, Percentile(`rrt`,{q}) AS `P`, "
     "app_service, auto_service, Enum(signal_source) FROM application WHERE auto_service_id!=0 AND app_service "
     "LIKE('{glob}') AND (Enum(signal_source) = '{enum}' OR Enum(signal_source) = 'eBPF') AND time>='{t0}' AND "
     "time<='{t1}' GROUP BY auto_service, app_service, signal_source LIMIT 1000"),
    ("flow_log", None, "SELECT `response_duration` AS `Response Delay`, auto_service_0, Enum(l7_protocol), "
     "request_type, toString(_id) FROM l7_flow_log WHERE `endpoint` LIKE('{glob}') AND exist(`l7_protocol`) AND "
     "`observation_point` IN ('{s}','s') AND time>={t0} AND time<={t1} LIMIT 1000"),
    ("flow_log", None, "SELECT Sum(`request`) AS `request`, endpoint FROM l7_flow_log WHERE `pod_cluster_0` = "
     "'{name}' AND `pod_group_0` = '{name2}' AND time>={t0} AND time<={t1} GROUP BY endpoint ORDER BY `request` "
     "desc LIMIT {limit}"),
    ("flow_metrics", "1m", "SELECT PerSecond((Avg(`byte`)*8)) AS `bps`, time(time, {interval}) AS `time_60`, "
     "pod_1 FROM network_map WHERE pod_cluster_1 = '{name}' AND time>='{t0}' AND time<='{t1}' GROUP BY "
     "`time_60`, pod_1 SLIMIT {n} LIMIT 1000"),
    ("flow_log", None, "SELECT `byte_tx` AS `byte_tx`, toString(start_time) AS `start_time`, Enum(protocol), "
     "client_port FROM l4_flow_log WHERE (pod_cluster_0 = '{name}' OR pod_cluster_1 = '{name}') AND time>='{t0}' "
     "AND time<='{t1}' LIMIT 500"),
    ("flow_log", None, "SELECT Sum(`log_count`) AS `Sum(client errors)`, time(time, {interval}) AS `time_60` FROM "
     "l4_flow_log WHERE status IN ({n}) AND time>='{t0}' AND time<='{t1}' GROUP BY `time_60` LIMIT 1000"),
    # the WHERE time range sizes Avg / PerSecond / Time_interval: a template fits only its window
    ("flow_log", None, "select Avg(byte_tx) as a, PerSecond(Sum(byte)) as p, Sum(byte)/Time_interval as x from "
     "l4_flow_log where time>={t0} and time<{t1}"),
    ("flow_metrics", "1m", "select Avg(byte) as b, Avg(rtt) as r from network where time >= '{t0}' and time <= "
     "'{t1}' and (time > {t2})"),
    ("flow_metrics", "1s", "select PerSecond(Avg(byte)) as bps, Apdex(rrt, {n}) as a from network where time >= "
     "({t0}) and {t1} >= time"),
    ("flow_log", None, "select Sum(byte) from l4_flow_log where time >= {t0}-{n} and time <= {t1}"),
    # plain tags, metrics and columns compared with literals; shadowed output names; HAVING
    ("flow_log", None, "select toString(start_time) as start_time, response_duration from l7_flow_log where "
     "request_type = '{s}' and response_status IN ({n}, {n2}) and response_duration > {n3} and server_port != '{n}' "
     "and signal_source IN ('{n2}') and time >= {t0} and time <= {t1} limit {limit}"),
    ("flow_metrics", "1m", "select Max(byte) as m, pod_1, time(time, {interval}) as t from network_map where time "
     ">= {t0} and time <= {t1} and protocol IN ({n}) group by pod_1, t having Max(byte) > {n2} and Sum(byte) "
     "<= '{n3}'"),
    ("flow_metrics", "1m", "select Sum(request) as request, Avg(timeout_ratio) as t from application where time "
     ">= {t0} and time <= {t1} and request > {n}"),
    ("flow_metrics", "1m", "SELECT Sum(byte) as b, pod_1 FROM network_map WHERE time >= {t0} AND time <= {t1} "
     "GROUP BY pod_1 SLIMIT {n} SORDER BY Sum(byte) desc"),
    ("flow_log", None, "select Histogram(Avg(rtt), {bins}) as h from l4_flow_log where rtt > {n} and time >= {t0}"),
    ("flow_log", None, "select Count(row) from l4_flow_log where time in ({t0}, {t1}) and time != {t2} and not "
     "(time = '{s}') and byte_tx >= {q}"),
    # literals that change the translation: names, IPs, Enum names, labels, LIKE, SELECT-list literals
    ("flow_log", None, "select Count(row) as c, Enum(close_type) from l4_flow_log where Enum(close_type) = "
     "'{enum}' and ip_0 = '{ip}' and chost_1 = '{name}' and time >= {t0} group by close_type"),
    ("flow_log", None, "select `k8s.label.{key}_1` as app, Count(row) from l4_flow_log where `k8s.label.{key}_1` "
     "= '{s}' and pod_ns_1 like '{glob}' and auto_instance_0 = '{name}' and time >= {t0} group by app"),
    ("flow_log", None, "select byte_tx + {n} as f, Sum(byte_rx) * {n2}, Count(row) from l4_flow_log where f > {n3} "
     "and byte_tx > {n} and time < {t1} group by f"),
    ("flow_log", None, "select mask(ip_0, {bits}) as m, TopK(pod_0, {topk}), Count(row) from l4_flow_log where "
     "pod_0 != '{name}' and time >= {t0} group by m limit {limit}, {limit2}"),
    ("flow_log", None, "select Sum(byte) from l4_flow_log where time >= -{n} and time <= {t1}"),
]

VALUES = {
    "t": lambda r: str(r.randrange(1_700_000_000, 1_800_000_000)),
    "n": lambda r: r.choice(["0", "1", "3", "20", "40", "100", str(r.randrange(10**6)), "2.5", "007"]),
    "q": lambda r: r.choice(["0.5", "0.75", "0.99", "1"]),
    "s": lambda r: r.choice(["GET", "POST", "", "c", "rest", "123", "é漢字", "a b", "1.5", "-3", "x*y", "%_"]),
    "name": lambda r: r.choice(["lab", "prod", "web", "", "netlab-cli", "shop", "名前"]),
    "glob": lambda r: r.choice(["*", "a*", "*b*", "x"]),
    "enum": lambda r: r.choice(["Packet", "xFlow", "Normal – Finish", "1", "nope"]),
    "ip": lambda r: r.choice(["10.0.0.1", "10.16.0.0/24", "fd00::1"]),
    "key": lambda r: r.choice(["app", "team", "tier"]),
    "interval": lambda r: r.choice(["1", "60", "120", "3600", "86400"]),
    "limit": lambda r: r.choice(["1", "10", "1000", "999999999999"]),
    "bins": lambda r: r.choice(["5", "10"]),
    "bits": lambda r: r.choice(["8", "24", "32"]),
    "topk": lambda r: r.choice(["1", "3", "100"]),
}
_SLOT = re.compile(r"\{(\w+?)(\d*)\}")


def fill(template: str, r: random.Random, keep: dict | None = None) -> tuple[str, dict]:
    """The template with a value per slot; ``keep``: values to reuse for the slots it names."""
    chosen = dict(keep or {})

    def value(m: re.Match) -> str:
        slot = m[0]
        if slot not in chosen:
            chosen[slot] = VALUES[m[1]](r)
        return chosen[slot]

    return _SLOT.sub(value, template), chosen


def outcome(tr_or_error):
    if isinstance(tr_or_error, Exception):
        return ("error", type(tr_or_error).__name__, str(tr_or_error))
    return (tr_or_error.sql, tr_or_error.schemas, tr_or_error.queries, tr_or_error.static)


def cached(sql: str, db: str, precision: str | None):
    try:
        return translate(sql, db, precision)
    except DialectError as e:
        return e


def scratch(sql: str, db: str, precision: str | None):
    try:
        return translate_uncached(sql, db, precision, "en")[0]
    except DialectError as e:
        return e


@pytest.mark.parametrize(("db", "precision", "template"), CORPUS, ids=[f"{i}" for i in range(len(CORPUS))])
def test_shape_cached_translation_equals_a_fresh_one(db, precision, template):
    """Groups of requests share every slot but the times (a refresh), others change anything."""
    r = random.Random(template)
    n = 0
    for group in range(4):
        _, fixed = fill(template, r)
        fixed = {k: v for k, v in fixed.items() if not k.startswith("{t")}
        for k in range(6):
            sql, _ = fill(template, r, fixed if group < 3 else None)
            got = cached(sql, db, precision)
            assert outcome(got) == outcome(scratch(sql, db, precision)), sql
            if k == 0 and not isinstance(got, Exception):      # the guard reads it too
                check_and_resolve(got.sql, None, check_text=False)
            n += 1
    assert n == 24


def test_refreshes_hit_the_shape_cache():
    """Every dashboard shape of the corpus that compares time with literals is served from the cache
    when only its time range moves (and the window-sized ones while the window keeps its width)."""
    r = random.Random(5)
    for db, precision, template in CORPUS[:9]:
        _, fixed = fill(template, r)
        fixed = {k: v for k, v in fixed.items() if not k.startswith("{t")}
        translate(fill(template, r, {**fixed, "{t0}": "1795590000", "{t1}": "1795593600"})[0], db, precision)
        before = dialect.cache_info()["shape_hits"]
        for k in range(3):
            start = 1_795_600_000 + 7 * k
            sql, _ = fill(template, r, {**fixed, "{t0}": str(start), "{t1}": str(start + 3600)})
            translate(sql, db, precision)
        assert dialect.cache_info()["shape_hits"] == before + 3, template


def test_a_template_fits_only_its_time_window():
    """Avg of a counter divides by the intervals of the WHERE range: another width is another SQL."""
    sql = "select Avg(byte_tx) as a from l4_flow_log where time>={} and time<={}"
    one = translate(sql.format(1_795_600_000, 1_795_603_599), "flow_log").sql
    same_width = translate(sql.format(1_795_600_010, 1_795_603_609), "flow_log").sql
    wider = translate(sql.format(1_795_600_000, 1_795_607_199), "flow_log").sql
    assert "sum(byte_tx) / 3600 AS" in one and "sum(byte_tx) / 3600 AS" in same_width
    assert "sum(byte_tx) / 7200 AS" in wider
    assert "time >= 1795600010 AND time <= 1795603609" in same_width


def test_panels_over_ranges_of_different_widths_keep_their_templates():
    """The same panel over 1 h and over 2 h (two dashboards, two users) alternate without
    translating again: each width keeps its own template."""
    sql = "select Avg(byte_tx) as a from l4_flow_log where time>={} and time<={} group by ip_0"
    for k in range(2):
        for width in (3600, 7200):
            translate(sql.format(1_795_600_000 + k, 1_795_600_000 + k + width - 1), "flow_log")
    before = dialect.cache_info()["shape_hits"]
    for k in range(2, 6):
        for width in (3600, 7200):
            got = translate(sql.format(1_795_600_000 + k, 1_795_600_000 + k + width - 1), "flow_log").sql
            assert f"sum(byte_tx) / {width} AS" in got
    assert dialect.cache_info()["shape_hits"] == before + 8


def test_a_sum_does_not_tie_its_template_to_the_range_width():
    """Only aggregates that divide by the range (Avg of a counter, PerSecond, Time_interval) make the
    template width-specific; a Sum over any range width is served by one template."""
    sql = "select Sum(request) as r, endpoint from l7_flow_log where time>={} and time<={} group by endpoint"
    translate(sql.format(1_795_600_000, 1_795_603_599), "flow_log")
    before = dialect.cache_info()["shape_hits"]
    for width in (3600, 7200, 60, 86400):
        got = translate(sql.format(1_795_500_000, 1_795_500_000 + width), "flow_log").sql
        assert f"time <= {1_795_500_000 + width}" in got
    assert dialect.cache_info()["shape_hits"] == before + 4


def test_lexer_reads_only_plain_literals():
    shape = lex("select a from t where time >= 1700000000 and b = 'x y' and `c'd` = \"e\" and ip4_1 = 2.5")
    assert [lit.text for lit in shape.literals] == ["1700000000", "'x y'", '"e"', "2.5"]
    assert "`c'd`" in shape.skeleton and "1700000000" not in shape.skeleton
    for text in ("select a -- c", "select a /* c */", "select a # c", "select 'it''s'", "select 'a\\'b'",
                 "select 'a\\\\'", "select '\x01'", "select a\x00"):
        assert lex(text) is None, text


# -- hostile literals -----------------------------------------------------------------------------------

HOSTILE = [
    "1) OR 1=1 --", "x; DROP TABLE flow_log.l4_flow_log", "/* c */ SELECT 1", "1 SETTINGS readonly=0",
    "FROM system.users", "é漢字😀", "\u202eevil", "{p:String}", "$$ heredoc $$", "?", "-- x", "#",
    # these hold quotes or backslashes: no shape, translated from scratch — and just as safe
    "' OR '1'='1", "\\' OR 1=1 --", "a\\", "''", "\"", "`", "x' UNION SELECT * FROM system.users --",
    "\\x27", "\n'; SELECT 1; --",
]
HOSTILE_SHAPE = ("select Count(row) as c from l7_flow_log where request_type = {s} and endpoint IN ({s}, 'x') "
                 "and time >= {t} and time <= 1795603600 and response_duration > {s}")


def _quote(v: str) -> str:
    """A DeepFlow (MySQL) string literal."""
    return "'" + v.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _blank_literals(sql: str) -> exp.Expression:
    tree = sqlglot.parse_one(sql, read="clickhouse")
    for lit in tree.find_all(exp.Literal):
        lit.replace(exp.Literal.string("?"))
    return tree


@pytest.mark.parametrize("payload", HOSTILE)
def test_hostile_literals_in_a_cached_shape_stay_literals(payload):
    benign = translate(HOSTILE_SHAPE.format(s="'GET'", t="'1795600000'"), "flow_log")
    sql = HOSTILE_SHAPE.format(s=_quote(payload), t=_quote(payload))
    tr = translate(sql, "flow_log")
    assert outcome(tr) == outcome(scratch(sql, "flow_log", None))
    tree = sqlglot.parse_one(check_and_resolve(tr.sql, None, check_text=False), read="clickhouse")
    strings = [lit.this for lit in tree.find_all(exp.Literal) if lit.is_string]
    assert strings.count(payload) == 4, (payload, tr.sql)
    assert _blank_literals(tr.sql) == _blank_literals(benign.sql)


def test_hostile_literals_are_lifted_when_the_lexer_reads_them():
    plain = [p for p in HOSTILE if not any(c in p for c in "'\"\\`\n")]
    for payload in plain:
        shape = lex(HOSTILE_SHAPE.format(s=_quote(payload), t=_quote(payload)))
        assert shape is not None and payload in {lit.text[1:-1] for lit in shape.literals}, payload


class Recording:
    """The store's real client; every SQL sent to ClickHouse is recorded before it runs."""

    def __init__(self, client) -> None:
        self._client = client
        self.sent: list[str] = []

    def query(self, sql, *args, **kwargs):
        self.sent.append(sql)
        return self._client.query(sql, *args, **kwargs)

    def __getattr__(self, name):
        if name in ("command", "raw_query", "query_arrow", "insert"):
            raise AssertionError(f"the engine called {name}")
        return getattr(self._client, name)


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """An empty store with flowscope's schema (closed again: one chDB store per process at a time)."""
    client = connect(f"chdb://{tmp_path_factory.mktemp('shape') / 'chdb'}")
    migrate.apply(client)
    yield client
    client.close()


def test_nothing_unsafe_reaches_clickhouse(store):
    recording = Recording(store)
    engine = QueryEngine(recording)
    template = ("select Count(row) as c, request_type from l7_flow_log where request_type = {s} and endpoint != {s} "
                "and time >= {t} and time <= {t2} group by request_type")
    for i, payload in enumerate(["GET", *HOSTILE]):
        sql = template.format(s=_quote(payload), t=1_795_600_000 + i, t2=1_795_603_600 + i)
        status, body = engine.query(sql, "flow_log")
        assert status == 200 and body["result"]["columns"] == ["c", "request_type"], body
    queries = [q for q in recording.sent if not q.startswith("DESCRIBE")]
    assert len(queries) == len(HOSTILE) + 1
    for q, payload in zip(queries, ["GET", *HOSTILE], strict=True):
        tree = sqlglot.parse_one(check_and_resolve(q, None, check_text=False), read="clickhouse")
        assert [lit.this for lit in tree.find_all(exp.Literal) if lit.is_string].count(payload) == 2, q


def test_empty_answers_take_their_columns_from_the_template(store):
    """chDB sends no header for an empty result: one DESCRIBE per template, then its columns are known."""
    recording = Recording(store)
    engine = QueryEngine(recording)
    sql = "select Sum(byte) as b, pod_1 from l4_flow_log where time >= {} and time <= {} group by pod_1"
    answers = [engine.query(sql.format(1_795_600_000 + i, 1_795_603_600 + i), "flow_log") for i in range(3)]
    assert [status for status, _ in answers] == [200] * 3
    assert all(body["result"]["columns"] == ["b", "pod_1"] for _, body in answers)
    assert all([s["value_type"] for s in body["result"]["schemas"]] == ["UInt64", "String"] for _, body in answers)
    assert [q.split(" ", 1)[0] for q in recording.sent] == ["SELECT", "DESCRIBE", "SELECT", "SELECT"]
    raw = "SELECT count() AS n FROM flow_log.l4_flow_log WHERE time < 0 GROUP BY flow_id"
    for _ in range(2):
        status, body = engine.query_raw(raw, "flow_log")
        assert status == 200 and body["result"]["columns"] == ["n"]
    assert sum(q.startswith("DESCRIBE") for q in recording.sent) == 2


# -- the check of translated SQL -----------------------------------------------------------------------

T = 'flow_log."l4_flow_log"'
REFUSED = [
    ("SELECT 1 FROM system.users", "not one of flowscope's tables"),
    ("SELECT 1 FROM flow_log.nosuch", "not one of flowscope's tables"),
    ("SELECT 1 FROM file('/etc/passwd', 'CSV', 'a String')", "function file() is not allowed"),
    ("SELECT 1 FROM numbers(10)", "not one of flowscope's tables"),
    ("SELECT 1 FROM flow_log.numbers(10)", "not one of flowscope's tables"),
    (f"SELECT 1 FROM {T}, system.users", "not by a clause (no joins)"),
    (f"SELECT 1 FROM (SELECT 1 FROM {T}), system.users", "not by a clause (no joins)"),
    (f"SELECT 1 FROM {T} FINAL", "not by a clause (no joins)"),
    ("SELECT 1 FROM flow_tag.pod_map_x('y')", "not one of flowscope's tables"),
    (f"SELECT 1 FROM {T} AS a JOIN system.users AS b ON 1", "JOIN is not allowed"),
    (f"SELECT 1 FROM {T} ARRAY JOIN [1] AS x", "JOIN is not allowed"),
    (f"SELECT 1 FROM {T} SETTINGS readonly = 0", "SETTINGS is not allowed"),
    (f"SELECT 1 FROM {T} FORMAT JSON", "FORMAT is not allowed"),
    (f"SELECT 1 FROM {T} INTO OUTFILE '/tmp/x'", "INTO is not allowed"),
    (f"SELECT 1 FROM {T} UNION ALL SELECT name FROM system.users", "UNION is not allowed"),
    (f"WITH x AS (SELECT 1) SELECT 1 FROM {T}", "not a SELECT"),
    (f"SELECT 1 FROM {T}; DROP TABLE {T}", "unexpected text"),
    (f"SELECT 1 FROM {T} -- comment", "unexpected text"),
    (f"SELECT 1 /* x */ FROM {T}", "unexpected text"),
    (f"SELECT 1 FROM {T} # x", "unexpected text"),
    (f"SELECT 'unterminated FROM {T}", "unexpected text"),
    (f"SELECT {{p:String}} FROM {T}", "unexpected text"),
    (f"SELECT $$x$$ FROM {T}", "unexpected text"),
    (f"SELECT ? FROM {T}", "unexpected text"),
    (f"SELECT ～ FROM {T}", "unexpected text"),
    (f"SELECT 1 ~ 2 FROM {T}", "~ or @ outside quotes"),
    (f"SELECT url('http://x') FROM {T}", "function url() is not allowed"),
    (f"SELECT joinGet('x', 'y', 1) FROM {T}", "function joinget() is not allowed"),
    (f"SELECT `file`('/etc/passwd') FROM {T}", "a quoted name is called as a function"),
    (f"SELECT notIn(1, system.users) FROM {T}", "function notin() is not allowed"),
    (f"SELECT in(1, system.users) FROM {T}", "IN must take literals or a subquery"),
    (f"SELECT 1 FROM {T} WHERE 1 IN system.users", "IN must take literals or a subquery"),
    (f"SELECT 1 FROM {T} WHERE 1 IN (system.users)", "IN must take literals or a subquery"),
    (f"SELECT 1 FROM {T} WHERE 1 GLOBAL IN (flow_id)", "IN must take literals or a subquery"),
    (f"SELECT 1 FROM {T} WHERE 1 IN (SELECT 1 FROM system.one)", "not one of flowscope's tables"),
    (f"SELECT dictGet('system.x', 'name', 1) FROM {T}", "not one of flowscope's dictionaries"),
    (f"SELECT dictGet(concat('flow_tag.', 'pod_map'), 'name', 1) FROM {T}", "not one of flowscope's dictionaries"),
    (f"SELECT dictGetOrDefault('flow_tag.nosuch', 'name', 1, '') FROM {T}", "not one of flowscope's dictionaries"),
    (f"SELECT 1 FROM {T} WHERE x = (SELECT 1 FROM system.users)", "not one of flowscope's tables"),
    (f"SELECT '{'x' * (256 << 10)}' FROM {T}", "the limit is 262144"),
]
ACCEPTED = [
    f"SELECT 'FROM system.users; -- it''s' AS \"FROM system.users\" FROM {T} WHERE a = 'x\\' OR 1=1' LIMIT 1",
    f"SELECT dictGet('flow_tag.pod_map', 'name', toUInt64(pod_id_0)) AS \"p\" FROM {T} WHERE pod_id_0 IN (1, -2, 3.5e-3, 'x')",
    f"SELECT max(_sum) AS \"m\" FROM (SELECT sum(byte_tx) AS _sum FROM {T} WHERE toUInt64(pod_id_1) GLOBAL IN "
    f"(SELECT id FROM flow_tag.pod_map WHERE name = 'api') GROUP BY flow_id) LIMIT 10000",
    f"SELECT arrayMap(x -> x * 2, [1, 2]) AS \"a\", -(-1) AS \"b\" FROM {T} WHERE a != 1 AND b <> 2 OR c || d = '' ORDER BY 1 DESC",
]


@pytest.mark.parametrize(("sql", "message"), REFUSED, ids=[s[:80] for s, _ in REFUSED])
def test_check_refuses(sql, message):
    with pytest.raises(DialectError) as err:
        safety.check(sql)
    assert message in str(err.value) and err.value.status == 400


@pytest.mark.parametrize("sql", ACCEPTED)
def test_check_accepts(sql):
    safety.check(sql)


def test_qualify_shadowed_columns_of_the_level_reading_the_table():
    sql = (f'SELECT sum(request) AS "request", request_length AS "x" FROM {T} WHERE request > 0 AND '
           f"toUInt64(pod_id_1) GLOBAL IN (SELECT request FROM flow_tag.pod_map WHERE request = 'request') "
           f"ORDER BY \"request\" ASC")
    assert safety.qualify(sql, {"request"}, T) == (
        f'SELECT sum({T}.request) AS "request", request_length AS "x" FROM {T} WHERE {T}.request > 0 AND '
        f"toUInt64(pod_id_1) GLOBAL IN (SELECT request FROM flow_tag.pod_map WHERE request = 'request') "
        f"ORDER BY \"request\" ASC")


@pytest.mark.parametrize("text", ["1", "-5", "1.5", "1e+16", "inf", "'a\\'b'", "''", "'x\\\\'"])
def test_a_rendered_parameter_is_one_literal(text):
    from datasource.dialect.safety import check_literal

    assert check_literal(text) == text


@pytest.mark.parametrize("text", ["'a' OR 1", "1) OR (1", "'a", "'a\\'", "1 1", "x", "'a''b'", "1; DROP"])
def test_anything_else_in_a_parameter_is_refused(text):
    """The shape cache checks only the parameters of a template the whole check passed: a value
    that is not exactly one literal token could change the query, so it is refused."""
    from datasource.dialect.safety import check_literal

    with pytest.raises(DialectError, match="not one literal"):
        check_literal(text)


_NUMBER_AS_WRITTEN = re.compile(r"(?<![\w.$])\d+(?:\.\d+)?(?![\w.$])")


@settings(max_examples=3000, deadline=None)
@given(st.lists(st.sampled_from(["0", "1", "42", ".", "1.5", "a", "_", "$", "x1", "1a", " ", "`", "`a1`", "'",
                                 "'s1'", '"', "-", "--", "/", "/*", "#", "\\", "\x00", "\n", "(", ">=", "time"]),
                max_size=16))
def test_lexed_numbers_are_the_unsigned_decimals_outside_names(parts):
    """The lexer's number rule (its lookbehind after the first digit, for speed) finds exactly the
    numbers a leading-lookbehind rule finds outside quoted names and strings."""
    sql = "".join(parts)
    shape = lex(sql)
    if shape is None:
        return
    numbers = [lit for lit in shape.literals if not lit.string]
    blanked = re.sub(r"`[^`]*`|'[^']*'|\"[^\"]*\"", lambda m: " " * len(m[0]), sql)
    assert [(n.start, n.text) for n in numbers] == [(m.start(), m[0]) for m in _NUMBER_AS_WRITTEN.finditer(blanked)]
