"""The last step of every translation: the generated ClickHouse SQL passes the datasource's guard
(``datasource.guard.check_and_resolve``: one SELECT over flowscope's own tables and dictionaries —
dictGet names included —, no table functions, SETTINGS, FORMAT, INTO OUTFILE or file/network
functions) before it may run.

It also fixes one ClickHouse scoping rule: a SELECT alias shadows a column of the same name in the
whole query, so ``Sum(request) AS request`` next to ``Avg(timeout_ratio)`` (timeout / request) would
nest aggregates. When an output name equals a stored column, the column references of that query
level are qualified with the table (``flow_metrics."application.1m".request``).
"""

from __future__ import annotations

import sqlglot
from sqlglot import exp

from datasource.dialect.errors import DialectError
from datasource.guard import QueryRejected, QuerySyntaxError, check_and_resolve


def finalize(sql: str, shadowed: set[str] = frozenset(), table: str = "") -> str:
    """Qualify shadowed columns, check, and return the ClickHouse SQL as the guard generates it."""
    if shadowed:
        sql = _qualify(sql, shadowed, table)
    try:
        return check_and_resolve(sql, None)
    except QuerySyntaxError as e:
        raise DialectError(f"internal error: the translated SQL does not parse ({e}): {sql}") from None
    except QueryRejected as e:
        raise DialectError(f"{e} (in the translated SQL)", status=400) from None


def _qualify(sql: str, shadowed: set[str], table: str) -> str:
    tree = sqlglot.parse_one(sql, read="clickhouse")
    db, _, name = table.partition(".")
    name = name.strip("`")
    for select in tree.find_all(exp.Select):
        source = select.args.get("from_")
        if source is None or not isinstance(source.this, exp.Table) or source.this.name != name:
            continue
        aliases = {e.alias for e in select.expressions if isinstance(e, exp.Alias)}
        if not aliases & shadowed:
            continue
        for column in _scope_columns(select):
            ident = column.this
            if (not column.table and isinstance(ident, exp.Identifier) and not ident.quoted
                    and column.name in shadowed):
                column.set("table", exp.to_identifier(name, quoted=True))
                column.set("db", exp.to_identifier(db))
    return tree.sql(dialect="clickhouse")


def _scope_columns(select: exp.Select):
    """Columns of one query level (not of its subqueries)."""
    stack = [v for k, v in select.args.items() if k != "from_" and v is not None]
    while stack:
        node = stack.pop()
        if isinstance(node, list):
            stack.extend(node)
            continue
        if not isinstance(node, exp.Expression) or isinstance(node, exp.Select | exp.Subquery):
            continue
        if isinstance(node, exp.Column):
            yield node
            continue
        stack.extend(v for v in node.args.values() if v is not None)
