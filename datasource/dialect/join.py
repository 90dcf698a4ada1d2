"""DeepFlow's multi-query joins: ``WITH q1 AS (SELECT …), q2 AS (SELECT …) SELECT … FROM q1
LEFT JOIN q2 ON q1.x = q2.x`` — e.g. requests from application_map next to bytes from network_map
per pod.

Each named query is a dialect SELECT, translated alone (``translate.translate_select``) and checked
like any other. DeepFlow copies the outer statement verbatim; here it is rebuilt from a small
grammar instead, so it can only read what the named queries return: their output columns (by
``q.name`` or a name only one of them has), literals, arithmetic and comparisons, ``[LEFT|RIGHT|
FULL|INNER] JOIN … ON`` equalities, WHERE, ORDER BY, LIMIT/OFFSET. Every name is quoted, every
literal written by ``tags.literal``; ``safety.check_join`` checks the assembled text. A column a
LEFT JOIN finds no match for holds ClickHouse's default (0, '') rather than NULL.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlglot import exp

from datasource.dialect import safety
from datasource.dialect.errors import DialectError
from datasource.dialect.parse import text, where
from datasource.dialect.tags import literal
from datasource.dialect.translate import DEFAULT_LIMIT, Column, Translator, ident, translate_select

MAX_QUERIES = 4
_JOIN_KINDS = {"": "INNER", "INNER": "INNER", "LEFT": "LEFT", "RIGHT": "RIGHT", "FULL": "FULL"}
_ARITHMETIC = {exp.Add: "+", exp.Sub: "-", exp.Mul: "*", exp.Div: "/"}
_COMPARE = {exp.EQ: "=", exp.NEQ: "!=", exp.GT: ">", exp.GTE: ">=", exp.LT: "<", exp.LTE: "<="}


@dataclass
class JoinTranslation:
    sql: str
    columns: list[Column]


def translate_with(tree: exp.Select, db: str | None, precision: str | None, language: str) -> JoinTranslation:
    queries: dict[str, list[Column]] = {}
    parts: dict[str, str] = {}
    ctes = tree.args["with_"].expressions
    if tree.args["with_"].args.get("recursive") or len(ctes) > MAX_QUERIES:
        raise DialectError(f"not support sql: WITH takes 1..{MAX_QUERIES} named SELECTs")
    for cte in ctes:
        name = cte.alias
        if not name or not name.replace("_", "").isalnum() or name in queries:
            raise DialectError(f"not support sql: WITH needs distinct simple names, got {name!r}{where(cte)}")
        body = cte.this
        if not isinstance(body, exp.Select) or body.args.get("with_"):
            raise DialectError(f"not support sql: WITH {name} AS (…) must be one SELECT{where(cte)}")
        result = translate_select(body, db, precision, language)
        sql = result.sql
        if result.shadowed:
            sql = safety.qualify(sql, result.shadowed, result.table)
        safety.check(sql)
        queries[name], parts[name] = result.columns, sql
    return _Outer(tree, queries, parts).run()


class _Outer:
    """The statement after WITH, over the named queries' output columns only."""

    def __init__(self, tree: exp.Select, queries: dict[str, list[Column]], parts: dict[str, str]) -> None:
        self.tree, self.queries, self.parts = tree, queries, parts
        self.aliases: set[str] = set()
        self.used: list[str] = list(queries)      # the FROM and JOINs read so far

    def run(self) -> JoinTranslation:
        tree = self.tree
        for key in ("distinct", "group", "having", "qualify", "windows"):
            if tree.args.get(key):
                raise DialectError(f"not support sql: {key.upper()} after WITH (aggregate inside the named queries)")
        source = tree.args.get("from_")
        if source is None or not isinstance(source.this, exp.Table):
            raise DialectError("not support sql: FROM must name a query of the WITH")
        used = self.used = [self._query(source.this)]
        sql = [f"FROM ({self.parts[used[0]]}) AS {ident(used[0])}"]
        for join in tree.args.get("joins") or []:
            kind = (join.args.get("side") or join.args.get("kind") or "").upper()
            if kind not in _JOIN_KINDS or join.args.get("using") or join.args.get("on") is None:
                raise DialectError(f"not support sql: {text(join)}: only [LEFT|RIGHT|FULL|INNER] JOIN q ON a = b"
                                   f"{where(join)}")
            name = self._query(join.this)
            if name in used:
                raise DialectError(f"not support sql: {name} is joined twice{where(join)}")
            used.append(name)
            sql.append(f"{_JOIN_KINDS[kind]} JOIN ({self.parts[name]}) AS {ident(name)} ON {self._on(join.args['on'])}")
        columns = []
        select = []
        for node in tree.expressions:
            body = node.this if isinstance(node, exp.Alias) else node
            if isinstance(body, exp.Star):
                raise DialectError(f"not support sql: name the columns of a join{where(body)}")
            name = node.alias if isinstance(node, exp.Alias) else (body.name if isinstance(body, exp.Column) else text(body))
            src = self._source(body) if isinstance(body, exp.Column) else None
            value = self.value(body)
            select.append(f"{value} AS {ident(name)}")
            columns.append(Column(value, name, src.type if src else 1, src.unit if src else "", src.pre_as if src else ""))
            self.aliases.add(name)
        out = ["SELECT " + ", ".join(select), *sql]
        w = tree.args.get("where")
        if w is not None:
            out.append(f"WHERE {self.predicate(w.this)}")
        order = tree.args.get("order")
        if order is not None:
            out.append("ORDER BY " + ", ".join(f"{self.value(o.this)} {'DESC' if o.args.get('desc') else 'ASC'}"
                                               for o in order.expressions))
        limit, offset = tree.args.get("limit"), tree.args.get("offset")
        out.append(f"LIMIT {Translator._int(limit.expression, 'LIMIT') if limit is not None else DEFAULT_LIMIT}")
        if offset is not None:
            out.append(f"OFFSET {Translator._int(offset.expression, 'OFFSET')}")
        final = " ".join(out)
        safety.check_join(final, [self.parts[n] for n in used])
        return JoinTranslation(final, columns)

    def _query(self, table: exp.Expression) -> str:
        if not isinstance(table, exp.Table) or table.db or table.name not in self.queries:
            raise DialectError(f"not support sql: {text(table)} is not a query of the WITH "
                               f"({', '.join(self.queries)}){where(table)}")
        if table.alias and table.alias != table.name:
            raise DialectError(f"not support sql: rename a WITH query by naming it so{where(table)}")
        return table.name

    def _source(self, col: exp.Column) -> Column:
        """The named query's output column ``col`` reads (``q.name``, or a name only one query has)."""
        name, q = col.name, col.table
        if q:
            if q not in self.queries or q not in self.used:
                raise DialectError(f"unknown query {q!r} in {text(col)}{where(col)}")
            found = [c for c in self.queries[q] if c.name == name]
        else:
            found = [c for n in self.used for c in self.queries[n] if c.name == name]
            if len(found) > 1:
                raise DialectError(f"ambiguous column {name!r}: name its query (q1.{name}){where(col)}")
        if not found:
            raise DialectError(f"unknown column {text(col)}: not an output of "
                               f"{q or ' or '.join(self.used)}{where(col)}")
        return found[0]

    def _ref(self, col: exp.Column) -> str:
        if not col.table and col.name in self.aliases:
            return ident(col.name)
        self._source(col)
        if col.table:
            return f"{ident(col.table)}.{ident(col.name)}"
        owner = next(n for n in self.used if any(c.name == col.name for c in self.queries[n]))
        return f"{ident(owner)}.{ident(col.name)}"

    def _on(self, node: exp.Expression) -> str:
        if isinstance(node, exp.And):
            return f"{self._on(node.this)} AND {self._on(node.expression)}"
        if isinstance(node, exp.Paren):
            return f"({self._on(node.this)})"
        if isinstance(node, exp.EQ) and isinstance(node.this, exp.Column) and isinstance(node.expression, exp.Column):
            return f"{self._ref(node.this)} = {self._ref(node.expression)}"
        raise DialectError(f"not support sql: JOIN … ON takes equalities of columns joined by AND: {text(node)}"
                           f"{where(node)}")

    def value(self, node: exp.Expression) -> str:
        if isinstance(node, exp.Column):
            return self._ref(node)
        if isinstance(node, exp.Literal):
            return literal(node.this if node.is_string else _number(node))
        if isinstance(node, exp.Null):
            return "NULL"
        if isinstance(node, exp.Paren):
            return f"({self.value(node.this)})"
        if isinstance(node, exp.Neg):
            return f"-({self.value(node.this)})"
        op = _ARITHMETIC.get(type(node))
        if op is not None:
            return f"{self.value(node.this)} {op} {self.value(node.expression)}"
        raise DialectError(f"not support sql: {text(node)} after WITH (columns of the named queries, literals "
                           f"and + - * / only){where(node)}")

    def predicate(self, node: exp.Expression) -> str:
        if isinstance(node, exp.And | exp.Or):
            return f"({self.predicate(node.this)} {'AND' if isinstance(node, exp.And) else 'OR'} " \
                   f"{self.predicate(node.expression)})"
        if isinstance(node, exp.Not):
            return f"NOT ({self.predicate(node.this)})"
        if isinstance(node, exp.Paren):
            return f"({self.predicate(node.this)})"
        if isinstance(node, exp.Is) and isinstance(node.expression, exp.Null):
            return f"{self.value(node.this)} IS NULL"
        if isinstance(node, exp.In):
            if node.args.get("query") or not node.expressions or \
                    not all(isinstance(i, exp.Literal) for i in node.expressions):
                raise DialectError(f"not support sql: IN takes a list of literals after WITH{where(node)}")
            return f"{self.value(node.this)} IN ({', '.join(self.value(i) for i in node.expressions)})"
        op = _COMPARE.get(type(node))
        if op is not None:
            return f"{self.value(node.this)} {op} {self.value(node.expression)}"
        raise DialectError(f"not support sql: {text(node)} in WHERE after WITH{where(node)}")


def _number(node: exp.Literal) -> int | float:
    try:
        return int(node.this)
    except ValueError:
        return float(node.this)

