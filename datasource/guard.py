"""What the datasource agrees to run: one SELECT over flowscope's own tables, nothing else.

Every query is parsed (sqlglot, ClickHouse dialect) and rejected unless it is a single SELECT
(or UNION of SELECTs) whose tables are all known flowscope tables; table functions, system
tables, SETTINGS and FORMAT clauses, and file/network-reading functions are refused with a
message that names the offending part. Unqualified table names resolve against the request's
``db``, and ``flow_metrics`` tables get their ``.1s`` / ``.1m`` suffix from ``data_precision``.
The ClickHouse client itself also runs read-only with time/row/memory limits (engine.py).

``check_input`` runs first, on the raw text, for every path (dialect and raw): size, nesting depth and
invisible characters are refused before any parser sees the text — sqlglot's recursive descent
overflows Python's stack past ~40 nested parentheses, and a zero-width character inside a name
would otherwise reach ClickHouse as an "unknown function" instead of being refused here.
"""

from __future__ import annotations

import functools
import re
import unicodedata

import sqlglot
from sqlglot import exp
from sqlglot.errors import ParseError, SqlglotError

KNOWN_TABLES: dict[str, frozenset[str]] = {
    "flow_log": frozenset({"l4_flow_log", "l7_flow_log"}),
    "flow_metrics": frozenset(f"{t}.{p}" for t in ("network", "network_map", "application", "application_map")
                              for p in ("1s", "1m")),
    "flow_tag": frozenset(),   # the migrations' tables and dictionaries: flow_tag_objects()
}
METRIC_TABLES = frozenset({"network", "network_map", "application", "application_map"})
PRECISIONS = ("1s", "1m")

# Functions that read files, URLs or other servers, or fabricate unbounded data.
FORBIDDEN_FUNCTIONS = frozenset(f.lower() for f in (
    "file", "url", "urlCluster", "remote", "remoteSecure", "cluster", "clusterAllReplicas", "s3", "s3Cluster",
    "gcs", "hdfs", "hdfsCluster", "azureBlobStorage", "mysql", "postgresql", "mongodb", "redis", "sqlite",
    "jdbc", "odbc", "executable", "input", "merge", "dictionary", "generateRandom", "iceberg", "deltaLake",
    "hudi", "view", "viewIfPermitted", "fuzzJSON", "fuzzQuery", "loop", "getSetting", "getServerPort",
    # read other tables or models by name, bypassing the table check
    "joinGet", "joinGetOrNull", "hasColumnInTable", "catboostEvaluate", "modelEvaluate", "evalMLMethod",
    # stall the session, or describe the server and its host
    "sleep", "sleepEachRow", "hostName", "fqdn", "currentUser", "tcpPort", "getMacro", "getServerSetting",
    "getMergeTreeSetting", "getOSKernelVersion", "serverUUID", "uptime", "filesystemAvailable",
    "filesystemCapacity", "filesystemUnreserved", "getClientHTTPHeader", "displayName", "buildId",
    "currentProfiles", "currentRoles", "enabledRoles", "defaultRoles", "addressToLine",
    "addressToLineWithInlines", "addressToSymbol", "demangle", "shardNum", "shardCount",
))

# Dictionary functions name their dictionary in a string: only flowscope's flow_tag ones.
DICT_FUNCTION_PREFIXES = ("dictget", "dicthas", "dictisin")

MAX_SQL_BYTES = 64 << 10
# sqlglot parses and generates recursively: ~40 levels of parentheses exhaust Python's default
# stack of 1000 frames, and the dialect adds a few levels of its own. DeepFlow's dashboards nest 5.
MAX_NESTING = 32
# Control characters other than tab and newlines; non-ASCII ones that render as nothing or reorder
# text (zero-width, BOM, bidi controls: Unicode categories Cc, Cf, Co, Cs, Cn) are checked one by one.
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
# Literals, quoted names and comments are skipped whole; a bracket outside them is a match.
_BRACKETS_OUTSIDE_LITERALS = re.compile(
    r"'(?:[^'\\]|\\.)*'|\"(?:[^\"\\]|\\.)*\"|`(?:[^`\\]|\\.)*`|--[^\n]*|/\*.*?\*/|[()\[\]{}]", re.S)


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


def check_input(sql: str) -> None:
    """Refuse text no parser should see: too big, nested too deep, or with invisible characters."""
    size = len(sql.encode("utf-8", "surrogatepass"))
    if size > MAX_SQL_BYTES:
        raise QueryRejected(f"sql is {size} bytes, the limit is {MAX_SQL_BYTES}")
    bad = _CONTROL.search(sql)
    if bad:
        raise QueryRejected(f"control character U+{ord(bad[0]):04X} at offset {bad.start()} is not allowed")
    if not sql.isascii():
        for i, ch in enumerate(sql):
            if not ch.isascii() and unicodedata.category(ch) in ("Cc", "Cf", "Co", "Cs", "Cn"):
                name = unicodedata.name(ch, "unassigned")
                raise QueryRejected(f"invisible character U+{ord(ch):04X} ({name}) at offset {i} is not allowed")
    # fewer opening brackets than the limit cannot nest past it: most statements skip the scan
    if sum(map(sql.count, "([{")) <= MAX_NESTING:
        return
    depth = nesting_depth(sql)
    if depth > MAX_NESTING:
        raise QueryRejected(f"sql nests brackets {depth} deep, the limit is {MAX_NESTING}")


def nesting_depth(sql: str) -> int:
    """Deepest bracket nesting ((), [], {}) outside string literals, quoted names and comments."""
    depth = deepest = 0
    for m in _BRACKETS_OUTSIDE_LITERALS.finditer(sql):
        ch = m[0]
        if ch in "([{":
            depth += 1
            deepest = max(deepest, depth)
        elif ch in ")]}":
            depth = max(depth - 1, 0)
    return deepest


@functools.cache
def flow_tag_objects() -> frozenset[str]:
    """Tables and dictionaries the migrations create in flow_tag (the schema is the allow-list)."""
    from flowscope import migrate

    names = set()
    for m in migrate.load_migrations():
        for stmt in m.statements:
            match = migrate.CREATE_TABLE.match(stmt) or migrate.CREATE_DICTIONARY.match(stmt)
            if match and match["db"] == "flow_tag":
                names.add(match["table"].strip("`"))
    return frozenset(names)


def resolve_table(db: str, name: str, data_precision: str | None) -> tuple[str, str]:
    """DeepFlow's table naming → the stored (database, table)."""
    if db == "flow_metrics" and name in METRIC_TABLES:
        precision = data_precision or "1m"
        if precision not in PRECISIONS:
            raise QueryRejected(f"data_precision {precision!r} is not stored (available: {', '.join(PRECISIONS)})")
        name = f"{name}.{precision}"
    return db, name


def check_and_resolve(sql: str, db: str | None, data_precision: str | None = None, *,
                      check_text: bool = True) -> str:
    """Validate ``sql`` and return the ClickHouse SQL to run (tables fully qualified).

    ``check_text=False`` skips ``check_input`` (size, depth, characters) for SQL flowscope generated
    from an input that already passed it — a translation may be several times larger than its input."""
    if not sql or not sql.strip():
        raise QueryRejected("empty sql")
    if check_text:
        check_input(sql)
    try:
        statements = [s for s in sqlglot.parse(sql, read="clickhouse") if s is not None]
    except ParseError as e:
        err = e.errors[0] if e.errors else {}
        where = f" at line {err.get('line')}, column {err.get('col')}" if err else ""
        near = f" near '{err.get('highlight')}'" if err.get("highlight") else ""
        raise QuerySyntaxError(f"syntax error{where}{near}: {err.get('description', str(e))}") from e
    except SqlglotError as e:        # the tokenizer's errors (unterminated string, stray `$`)
        raise QuerySyntaxError(f"syntax error: {str(e).splitlines()[0]}") from e
    except RecursionError as e:
        raise QueryRejected("sql is nested too deeply to parse") from e
    try:
        return _check_tree(statements, db, data_precision)
    except RecursionError as e:
        raise QueryRejected("sql is nested too deeply to check") from e


def _check_tree(statements: list[exp.Expression], db: str | None, data_precision: str | None) -> str:
    if len(statements) != 1:
        raise QueryRejected(f"one statement per request, got {len(statements)}")
    tree = statements[0]
    if not isinstance(tree, exp.Select | exp.Union):
        # sqlglot parses SYSTEM, SHOW, EXPLAIN, GRANT … as a generic Command: name its keyword
        kind = tree.this if isinstance(tree, exp.Command) else {"truncatetable": "truncate"}.get(tree.key, tree.key)
        raise QueryRejected(f"only SELECT is allowed, got {kind.upper()}")
    for node in tree.walk():
        if node.args.get("settings"):          # on a SELECT or on a UNION / INTERSECT / EXCEPT
            raise QueryRejected("SETTINGS is not allowed in queries")
        if node.args.get("format") and isinstance(node, exp.Query):
            raise QueryRejected("FORMAT is not allowed in queries (the API chooses the format)")
        if isinstance(node, exp.Values):        # FROM values('a UInt8', 1): the values() table function
            raise QueryRejected(f"table functions are not allowed: {node.sql('clickhouse')}")
        if isinstance(node, exp.Placeholder | exp.Parameter):
            raise QueryRejected(f"query parameters are not supported: {node.sql('clickhouse')}")
        if isinstance(node, exp.Identifier) and not node.quoted and not node.name.isascii():
            raise QueryRejected(f"name {node.name!r} has non-ASCII characters{_first_non_ascii(node.name)}; "
                                "quote non-ASCII aliases with backticks")
        if isinstance(node, exp.Func):
            raw = node.name if isinstance(node, exp.Anonymous) else node.sql_name()
            if not raw.isascii():
                raise QueryRejected(f"function {raw!r} has non-ASCII characters{_first_non_ascii(raw)}")
            name = raw.lower()
            if name in FORBIDDEN_FUNCTIONS:
                raise QueryRejected(f"function {name}() is not allowed")
            if name.startswith(DICT_FUNCTION_PREFIXES):
                _check_dictionary(raw, node)
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


def _first_non_ascii(text: str) -> str:
    ch = next(c for c in text if not c.isascii())
    return f" (U+{ord(ch):04X} {unicodedata.name(ch, '?')} at {text.index(ch)})"


def _check_dictionary(func: str, node: exp.Func) -> None:
    """dictGet*('flow_tag.<dictionary>', …): a literal naming one of flowscope's dictionaries."""
    args = node.expressions if isinstance(node, exp.Anonymous) else [node.this, *node.expressions]
    first = args[0] if args else None
    if not isinstance(first, exp.Literal) or not first.is_string:
        raise QueryRejected(f"{func}() must name its dictionary as a literal 'flow_tag.<name>'")
    db, _, name = first.this.partition(".")
    if db != "flow_tag" or name not in flow_tag_objects():
        raise QueryRejected(f"{func}(): dictionary {first.this!r} is not one of flowscope's "
                            "(flow_tag.<name>_map)")


def _known_table(tdb: str, name: str, data_precision: str | None) -> tuple[str, str]:
    if tdb not in KNOWN_TABLES:
        raise QueryRejected(f"database {tdb!r} is not queryable (known: {', '.join(KNOWN_TABLES)})")
    tdb, name = resolve_table(tdb, name, data_precision)
    if tdb == "flow_tag":
        if name not in flow_tag_objects():
            raise QueryRejected(f"table {name!r} is not one of flowscope's flow_tag tables or dictionaries")
    elif name not in KNOWN_TABLES[tdb]:
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
