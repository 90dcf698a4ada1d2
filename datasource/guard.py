"""What the datasource agrees to run: one SELECT over flowscope's own tables, nothing else.

Every query is parsed (sqlglot, ClickHouse dialect) and rejected unless it is a single SELECT
(or UNION of SELECTs) whose tables are all known flowscope tables; table functions, system
tables, SETTINGS and FORMAT clauses, and file/network-reading functions are refused with a
message that names the offending part. Unqualified table names resolve against the request's
``db``, and ``flow_metrics`` tables get their ``.1s`` / ``.1m`` suffix from ``data_precision``.
The ClickHouse client itself also runs read-only with time/row/memory limits (engine.py).
"""

from __future__ import annotations

import sqlglot
from sqlglot import exp
from sqlglot.errors import ParseError

KNOWN_TABLES: dict[str, frozenset[str]] = {
    "flow_log": frozenset({"l4_flow_log", "l7_flow_log"}),
    "flow_metrics": frozenset(f"{t}.{p}" for t in ("network", "network_map", "application", "application_map")
                              for p in ("1s", "1m")),
    "flow_tag": frozenset(),   # every table of flow_tag is flowscope's own (dictionaries and their sources)
}
METRIC_TABLES = frozenset({"network", "network_map", "application", "application_map"})
PRECISIONS = ("1s", "1m")

# Functions that read files, URLs or other servers, or fabricate unbounded data.
FORBIDDEN_FUNCTIONS = frozenset(f.lower() for f in (
    "file", "url", "urlCluster", "remote", "remoteSecure", "cluster", "clusterAllReplicas", "s3", "s3Cluster",
    "gcs", "hdfs", "hdfsCluster", "azureBlobStorage", "mysql", "postgresql", "mongodb", "redis", "sqlite",
    "jdbc", "odbc", "executable", "input", "merge", "dictionary", "generateRandom", "iceberg", "deltaLake",
    "hudi", "view", "viewIfPermitted", "fuzzJSON", "fuzzQuery", "loop", "getSetting", "getServerPort",
))


# Functional forms of IN; like the operator, ClickHouse reads a table when their right-hand side
# is an identifier that names no column (`0 IN system.one`, `notIn(x, db.t)`).
IN_FUNCTIONS = frozenset(f.lower() for f in (
    "in", "notIn", "globalIn", "globalNotIn", "nullIn", "notNullIn", "globalNullIn", "globalNotNullIn",
))


class QueryRejected(ValueError):
    """The query is not allowed; the message says why (HTTP 400, INVALID_POST_DATA)."""


class QuerySyntaxError(QueryRejected):
    """The query does not parse (HTTP 500, FAIL — as DeepFlow answers parse errors)."""


def _table_name(t: exp.Table) -> str:
    return t.name


def resolve_table(db: str, name: str, data_precision: str | None) -> tuple[str, str]:
    """DeepFlow's table naming → the stored (database, table)."""
    if db == "flow_metrics" and name in METRIC_TABLES:
        precision = data_precision or "1m"
        if precision not in PRECISIONS:
            raise QueryRejected(f"data_precision {precision!r} is not stored (available: {', '.join(PRECISIONS)})")
        name = f"{name}.{precision}"
    return db, name


def check_and_resolve(sql: str, db: str | None, data_precision: str | None = None) -> str:
    """Validate ``sql`` and return the ClickHouse SQL to run (tables fully qualified)."""
    if not sql or not sql.strip():
        raise QueryRejected("empty sql")
    try:
        statements = [s for s in sqlglot.parse(sql, read="clickhouse") if s is not None]
    except ParseError as e:
        err = e.errors[0] if e.errors else {}
        where = f" at line {err.get('line')}, column {err.get('col')}" if err else ""
        near = f" near '{err.get('highlight')}'" if err.get("highlight") else ""
        raise QuerySyntaxError(f"syntax error{where}{near}: {err.get('description', str(e))}") from e
    if len(statements) != 1:
        raise QueryRejected(f"one statement per request, got {len(statements)}")
    tree = statements[0]
    if not isinstance(tree, exp.Select | exp.Union):
        # sqlglot parses SYSTEM, SHOW, EXPLAIN, GRANT … as a generic Command: name its keyword
        kind = tree.this if isinstance(tree, exp.Command) else {"truncatetable": "truncate"}.get(tree.key, tree.key)
        raise QueryRejected(f"only SELECT is allowed, got {kind.upper()}")
    for node in tree.walk():
        if isinstance(node, exp.Select) and node.args.get("settings"):
            raise QueryRejected("SETTINGS is not allowed in queries")
        if isinstance(node, exp.Select | exp.Union) and node.args.get("format"):
            raise QueryRejected("FORMAT is not allowed in queries (the API chooses the format)")
        if isinstance(node, exp.Func):
            name = (node.name if isinstance(node, exp.Anonymous) else node.sql_name()).lower()
            if name in FORBIDDEN_FUNCTIONS:
                raise QueryRejected(f"function {name}() is not allowed")
    ctes = {c.alias_or_name for c in tree.find_all(exp.CTE)}
    for t in list(tree.find_all(exp.Table)):
        if not isinstance(t.this, exp.Identifier):
            raise QueryRejected(f"table functions are not allowed: {t.this.sql('clickhouse')}")
        name = _table_name(t)
        tdb = t.db or ""
        if not tdb and name in ctes:
            continue
        if not tdb:
            if not db:
                raise QueryRejected(f"table {name!r} has no database: pass db (flow_log, flow_metrics, flow_tag)")
            tdb = db
        tdb, name = _known_table(tdb, name, data_precision)
        t.set("db", exp.to_identifier(tdb))
        t.set("this", exp.to_identifier(name, quoted=True))
    aliases = {t.alias_or_name for t in tree.find_all(exp.Table)} | {
        s.alias for s in tree.find_all(exp.Subquery) if s.alias}
    for ref in _in_table_refs(tree):
        if ref.table in aliases:     # `x IN (t.col)` with t a table of the query: a column
            continue
        if not ref.table:
            # `x IN name` reads table `name` of the session's database: allow it only as one of
            # the request's known tables (or a CTE), qualified so nothing else can be reached.
            if ref.name in ctes:
                continue
            if not db or not _is_known(db, ref.name, data_precision):
                raise QueryRejected(f"IN {ref.name}: not a known table of {db or 'the request'}; "
                                    f"use IN (value, …) or IN (SELECT …)")
            tdb, name = _known_table(db, ref.name, data_precision)
        else:
            tdb, name = _known_table(ref.table, ref.name, data_precision)
        ref.set("table", exp.to_identifier(tdb))
        ref.set("this", exp.to_identifier(name, quoted=True))
    return tree.sql(dialect="clickhouse")


def _known_table(tdb: str, name: str, data_precision: str | None) -> tuple[str, str]:
    if tdb not in KNOWN_TABLES:
        raise QueryRejected(f"database {tdb!r} is not queryable (known: {', '.join(KNOWN_TABLES)})")
    tdb, name = resolve_table(tdb, name, data_precision)
    if tdb != "flow_tag" and name not in KNOWN_TABLES[tdb]:
        known = ", ".join(sorted(KNOWN_TABLES[tdb]))
        raise QueryRejected(f"table {name!r} does not exist in {tdb} (known: {known})")
    return tdb, name


def _is_known(db: str, name: str, data_precision: str | None) -> bool:
    try:
        _known_table(db, name, data_precision)
    except QueryRejected:
        return False
    return db != "flow_tag"


def _in_table_refs(tree: exp.Expression):
    """Qualified identifiers on the right of IN: ClickHouse reads them as ``db.table``."""
    for node in tree.walk():
        if isinstance(node, exp.In):
            rhs = node.args.get("field")
            if rhs is None and len(node.expressions) == 1:
                rhs = node.expressions[0]
        elif isinstance(node, exp.Anonymous) and node.name.lower() in IN_FUNCTIONS and len(node.expressions) == 2:
            rhs = node.expressions[1]
        else:
            continue
        if isinstance(rhs, exp.Column):
            yield rhs
