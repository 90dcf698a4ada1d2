"""A DeepFlow SELECT → one ClickHouse SELECT (reference/deepflow-querier.md §3, §4, §6).

The walk is generic: every column name is looked up in the table's catalogue (tags.py decides what
a tag is in each clause, metrics.py what a function does to a metric), and function names are
matched exactly as DeepFlow does (``Sum`` is an aggregate, ``sum`` is not).

Shape of the output:

* one layer: ``SELECT <tags, aggregates> FROM db.table WHERE … GROUP BY <ids> HAVING … ORDER BY …
  LIMIT …`` — always on flow_log, and on flow_metrics when every function can run on the stored rows;
* two layers (flow_metrics, e.g. ``Max(byte)``): the inner query aggregates per group and datasource
  interval (``_time``), the outer one applies the function to those per-interval values — the peak
  minute, not the peak row;
* ``SLIMIT n [SORDER BY m]`` keeps the top-n series: an IN filter on the group ids of the n largest
  series, computed by a subquery on the same table and filters.

Output column names are DeepFlow's: the alias, else the expression as written (``Sum(byte)``).
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass, field

from sqlglot import exp

from datasource.dialect import metrics as agg
from datasource.dialect import tags
from datasource.dialect.catalog import (
    AGGREGATES,
    COUNTER,
    DATABASES,
    DELAY,
    FLOW_LOG,
    FLOW_TAG,
    FUNCTIONS,
    OTHER,
    ROW,
    TABLES,
    TAG_TYPE,
    Metric,
    TableCatalog,
    Tag,
    catalog,
    resolve_table,
)
from datasource.dialect.errors import DialectError
from datasource.dialect.parse import text, where
from datasource.dialect.tags import TagRef

DEFAULT_LIMIT = 10000
MATH_FUNCTIONS = ("PerSecond", "Percentage", "Histogram")
# ClickHouse functions DeepFlow passes through (lower-case, as in ClickHouse); their arguments are
# translated like any other expression.
PASS_THROUGH = frozenset({
    "toString", "toUnixTimestamp", "toUnixTimestamp64Micro", "toUnixTimestamp64Milli", "toDateTime", "toDate",
    "toInt64", "toUInt64", "toFloat64", "toInt32", "toUInt32", "round", "floor", "ceil", "abs", "length", "lower",
    "upper", "substring", "concat", "least", "greatest", "plus", "minus", "multiply", "divide", "intDiv", "modulo",
    "coalesce", "ifNull", "isNull", "isNotNull", "empty", "notEmpty", "startsWith", "endsWith", "position",
    "replaceAll", "bitAnd", "bitOr", "bitXor", "bitShiftLeft", "bitShiftRight", "formatDateTime", "now",
})
# Lower-case aggregates DeepFlow accepts over tags (tag-type "metrics"): topK(t…, N), any, uniq, countDistinct.
TAG_AGGREGATES = {"uniq": "uniq", "uniqExact": "uniqExact", "countDistinct": "uniqExact", "any": "any",
                  "topK": "topK"}
CASE_INSENSITIVE = {"enum": "Enum", "time": "time", "if": "if"}
# Comparisons whose literals reach the SQL only as ``tags.literal(value)``, one per value (LIKE and
# REGEXP rewrite their pattern): their literals may be a shape's parameters (shape.py).
LIFTABLE_OPS = frozenset({"=", "!=", ">", ">=", "<", "<=", "in", "not in"})


@dataclass(frozen=True)
class Column:
    """One output column: its SQL (one layer, or the outer layer), name and schema entry."""

    sql: str
    name: str
    type: int                     # 0 tag, 1 metric
    unit: str = ""
    pre_as: str = ""
    inner: str = ""               # two layers: computed in the inner query under `name`


@dataclass
class TimeBucket:
    interval: int                 # N, clamped to the datasource interval
    window: int = 1
    offset: int = 0
    name: str = ""
    fill: str | None = None       # time(time, N, W, fill): "0" or "null" for missing buckets, None none

    def sql(self, source: str) -> str:
        unit = (f"toIntervalDay({self.interval // 86400})" if self.interval >= 86400 and self.interval % 86400 == 0
                else f"toIntervalSecond({self.interval})")
        start = (f"toStartOfInterval({source} - {self.offset}, {unit}) + {self.offset}" if self.offset
                 else f"toStartOfInterval({source}, {unit})")
        if self.window > 1:
            start += f" + toIntervalSecond(arrayJoin(range({self.window})) * {self.interval})"
        return f"toUnixTimestamp({start})"


def ident(name: str) -> str:
    """A quoted ClickHouse identifier (output names may hold any character)."""
    return '"' + name.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _fname(node: exp.Anonymous) -> str:
    name = node.name
    return CASE_INSENSITIVE.get(name.lower(), name)


@dataclass
class SelectTranslation:
    sql: str
    columns: list[Column]
    table: str                    # the physical table, db-qualified
    shadowed: set[str] = field(default_factory=set)   # output names hiding a stored column
    # set when the WHERE time range sized an aggregate (Avg, PerSecond, Time_interval): the range's
    # comparisons (lower bound?, strict?, value node), the datasource interval and the seconds they gave
    window: tuple[list[tuple[bool, bool, exp.Expression]], int, float] | None = None
    # time(…, fill): the bucket column, interval, offset, fill value, and the WHERE time range's
    # comparisons the buckets to fill are read from (per request: shape.py recomputes them)
    fill: tuple[str, int, int, str, list[tuple[bool, bool, exp.Expression]]] | None = None


class Translator:
    """Translates one SELECT; holds what the clauses share (aliases, time bucket, partials)."""

    def __init__(self, tree: exp.Select, db: str | None, precision: str | None, language: str,
                 lifter=None) -> None:
        self.tree = tree
        self.language = language
        self.lifter = lifter                  # shape.Lifter: makes the liftable literals Params
        self.cat, self.precision = self._table(tree, db, precision)
        self.table = self.cat.table
        self.ds = self.table.interval(self.precision)
        self.physical = f"{self.table.db}.{ident(self.table.physical(self.precision))}"
        self.aliases: dict[str, exp.Expression] = {}
        self.time: TimeBucket | None = None
        self.range_terms: list[tuple[bool, bool, exp.Expression]] = []
        self.range: tuple[float | None, float | None] = (None, None)
        self.range_used = False               # interval() read the WHERE time range
        self.outer = False                    # translating the outer layer of a two-layer query
        self.partials: dict[str, agg.Partial] = {}
        self.layered = False

    # -- table -----------------------------------------------------------------------------------------
    @staticmethod
    def _table(tree: exp.Select, db: str | None, precision: str | None) -> tuple[TableCatalog, str | None]:
        source = tree.args.get("from_")
        if source is None or not isinstance(source.this, exp.Table) or tree.args.get("joins"):
            raise DialectError("not support sql: one table in FROM is required (no joins or subqueries)")
        table = source.this
        if not isinstance(table.this, exp.Identifier):
            raise DialectError(f"not support sql: table functions are not allowed{where(table)}", status=400)
        name, tdb = table.name, table.db or db
        if not tdb:
            raise DialectError(f"table {name!r} has no database: pass db (flow_log, flow_metrics)", status=400)
        if tdb not in DATABASES:
            raise DialectError(f"database {tdb!r} is not queryable (known: {', '.join(DATABASES)})", status=400)
        if tdb == FLOW_TAG:
            raise DialectError("flow_tag is read through `show tag <tag> values from <table>` (or plain ClickHouse "
                               "SQL with simple_sql=true)", status=400)
        try:
            t, p = resolve_table(tdb, name, precision)
        except KeyError:
            known = ", ".join(sorted(t.name for (d, _), t in TABLES.items() if d == tdb))
            raise DialectError(f"table {name!r} does not exist in {tdb}" + (f" (known: {known})" if known else ""),
                               status=400) from None
        if t.precisions and p not in t.precisions:
            raise DialectError(f"data_precision {p!r} is not stored (available: {', '.join(t.precisions)})",
                               status=400)
        return catalog(t.db, t.name), p

    # -- the whole statement -----------------------------------------------------------------------------
    def run(self) -> SelectTranslation:
        tree = self.tree
        if tree.args.get("distinct"):
            raise DialectError("not support sql: DISTINCT (use GROUP BY)")
        for node in tree.expressions:
            if isinstance(node, exp.Alias):
                self.aliases[node.alias] = node.this
        self.range_terms = _range_terms(tree.args.get("where"))
        self.range = fold_range([(lower, strict, _evaluate(n)) for lower, strict, n in self.range_terms])
        self._find_time(tree.expressions)
        self.layered = self.table.layered and self._needs_layers()
        histogram = [n for n in tree.expressions if self._is_histogram(n)]
        if histogram:
            return self._histogram(histogram[0])
        columns = self._columns()
        group = self._group()
        where_sql = self._where()
        if self.layered:
            sql = self._two_layers(columns, group, where_sql)
        else:
            sql = self._one_layer(columns, group, where_sql)
        return SelectTranslation(sql, columns, self.physical, self._shadowed(columns), self._window(), self._fill())

    def _fill(self) -> tuple | None:
        t = self.time
        if t is None or t.fill is None or not self.range_terms:
            return None
        return (t.name, t.interval, t.offset, t.fill, self.range_terms)

    def _window(self) -> tuple[list, int, float] | None:
        return (self.range_terms, self.ds, self.interval()) if self.range_used else None

    def _shadowed(self, columns: list[Column]) -> set[str]:
        """Output names that are also stored columns but name another expression (see safety.py)."""
        return {c.name for c in columns if c.name in self.cat.stored and (c.inner or c.sql) != c.name}

    def _one_layer(self, columns: list[Column], group: list[str], where_sql: str) -> str:
        parts = [f"SELECT {', '.join(f'{c.sql} AS {ident(c.name)}' for c in columns)}", f"FROM {self.physical}"]
        if where_sql:
            parts.append(f"WHERE {where_sql}")
        keys = list(dict.fromkeys(group))
        if self.time is not None and (keys or self._has_aggregates()):
            keys.append(ident(self.time.name))
        if keys:
            parts.append(f"GROUP BY {', '.join(keys)}")
        parts += self._tail()
        return " ".join(parts)

    def _two_layers(self, columns: list[Column], group: list[str], where_sql: str) -> str:
        keys = list(dict.fromkeys(group))
        inner = [f"{k} AS _gk{i}" for i, k in enumerate(keys)]
        inner += [f"{c.inner} AS {ident(c.name)}" for c in columns if c.inner]
        inner.append(f"toStartOfInterval(time, toIntervalSecond({self.ds})) AS _time")
        inner += [f"{p.inner} AS {p.alias}" for p in self.partials.values()]
        inner_sql = f"SELECT {', '.join(inner)} FROM {self.physical}"
        if where_sql:
            inner_sql += f" WHERE {where_sql}"
        inner_sql += " GROUP BY " + ", ".join([*(f"_gk{i}" for i in range(len(keys))), "_time"])
        outer_keys = [f"_gk{i}" for i in range(len(keys))] + [ident(c.name) for c in columns if c.inner]
        if self.time is not None:
            outer_keys.append(ident(self.time.name))
        parts = [f"SELECT {', '.join(f'{c.sql} AS {ident(c.name)}' for c in columns)}", f"FROM ({inner_sql})"]
        if outer_keys:
            parts.append(f"GROUP BY {', '.join(dict.fromkeys(outer_keys))}")
        parts += self._tail()
        return " ".join(parts)

    def _tail(self) -> list[str]:
        """HAVING, ORDER BY, LIMIT (default 10000), OFFSET — all on the last layer."""
        tree, parts = self.tree, []
        with self._last_layer():
            having = tree.args.get("having")
            if having is not None:
                parts.append(f"HAVING {self.predicate(having.this, having=True)}")
            order = tree.args.get("order")
            if order is not None:
                items = [f"{self.value(o.this)} {'DESC' if o.args.get('desc') else 'ASC'}"
                         for o in order.expressions]
                parts.append(f"ORDER BY {', '.join(items)}")
        limit = tree.args.get("limit")
        parts.append(f"LIMIT {self._int(limit.expression, 'LIMIT') if limit is not None else DEFAULT_LIMIT}")
        offset = tree.args.get("offset")
        if offset is not None:
            parts.append(f"OFFSET {self._int(offset.expression, 'OFFSET')}")
        return parts

    @staticmethod
    def _int(node: exp.Expression, clause: str) -> int:
        if isinstance(node, exp.Literal) and not node.is_string and node.this.isdigit():
            return int(node.this)
        raise DialectError(f"{clause} takes a non-negative integer, got {text(node)}{where(node)}")

    # -- SELECT list ---------------------------------------------------------------------------------------
    def _columns(self) -> list[Column]:
        out = []
        for node in self.tree.expressions:
            body = node.this if isinstance(node, exp.Alias) else node
            name = node.alias if isinstance(node, exp.Alias) else text(node)
            pre_as = text(body) if isinstance(node, exp.Alias) else ""
            out.append(self._column(body, name, pre_as))
        return out

    def _column(self, body: exp.Expression, name: str, pre_as: str) -> Column:
        if isinstance(body, exp.Star):
            raise DialectError("not support sql: SELECT * (name the tags and metrics)")
        if self._is_time(body):
            return Column(self.time.sql("_time" if self.layered else "time"), name, 0, pre_as=pre_as)
        if self._has_aggregates(body):
            with self._last_layer():
                sql = self.value(body)
            return Column(sql, name, 1, unit=self._unit(body), pre_as=pre_as)
        metric = self._metric_of(body)
        sql = self.value(body)
        if self.layered:       # a tag: computed per group by the inner query, carried out by name
            return Column(ident(name), name, 0, pre_as=pre_as, inner=sql)
        if metric is not None:
            return Column(sql, name, 1, unit=metric.unit, pre_as=pre_as)
        return Column(sql, name, 0, pre_as=pre_as)

    @contextlib.contextmanager
    def _last_layer(self):
        """Translate for the outer query of a two-layer statement (a no-op in one layer)."""
        self.outer = self.layered
        try:
            yield
        finally:
            self.outer = False

    def _metric_of(self, node: exp.Expression) -> Metric | None:
        if isinstance(node, exp.Column) and tags.resolve(self.cat, node.name) is None:
            return self.cat.metric(node.name)
        return None

    def _unit(self, node: exp.Expression) -> str:
        """The unit of an aggregate expression: its metric's, rewritten by the outermost function."""
        if isinstance(node, exp.Paren):
            return self._unit(node.this)
        if isinstance(node, exp.Anonymous):
            name = _fname(node)
            if name in FUNCTIONS:
                inner = ""
                args = node.expressions
                if name in MATH_FUNCTIONS and args:
                    inner = self._unit(args[0])
                elif args and isinstance(args[0], exp.Column):
                    m = self.cat.metric(args[0].name)
                    inner = m.unit if m else ""
                return agg.unit(name, inner)
        for child in node.iter_expressions():
            u = self._unit(child)
            if u:
                return u
        return ""

    # -- expressions -----------------------------------------------------------------------------------------
    def value(self, node: exp.Expression, *, row: bool = False) -> str:
        """An expression of SELECT, ORDER BY or HAVING; ``row``: of WHERE or GROUP BY (the stored row:
        aliases stand for what they name, no aggregates)."""
        if isinstance(node, exp.Paren):
            return f"({self.value(node.this, row=row)})"
        if isinstance(node, exp.Alias):
            return self.value(node.this, row=row)
        if isinstance(node, exp.Literal):
            return node.sql(dialect="clickhouse")
        if isinstance(node, exp.Null | exp.Boolean):
            return node.sql(dialect="clickhouse")
        if isinstance(node, exp.Neg):
            inner = self.value(node.this, row=row)
            return f"-({inner})" if inner.startswith("-") else f"-{inner}"    # never `--`, a comment
        if isinstance(node, exp.Column):
            return self._name(node, row=row)
        if isinstance(node, exp.If):
            return (f"if({self.predicate(node.this)}, {self.value(node.args['true'], row=row)}, "
                    f"{self.value(node.args['false'], row=row) if node.args.get('false') else 'NULL'})")
        if isinstance(node, exp.Anonymous):
            return self._function(node, row=row)
        if isinstance(node, exp.Binary) and type(node) in _ARITHMETIC:
            left = self.value(node.this, row=row)
            right = self.value(node.expression, row=row)
            return f"{left} {_ARITHMETIC[type(node)]} {right}"
        if isinstance(node, exp.Tuple):
            return f"({', '.join(self.value(e, row=row) for e in node.expressions)})"
        if isinstance(node, exp.Condition):
            return self.predicate(node)
        raise DialectError(f"not support sql: {text(node)}{where(node)}")

    def _name(self, node: exp.Column, *, row: bool) -> str:
        name = node.name
        if name == "Time_interval":
            return str(self.interval())
        if not row and name in self.aliases and not self._is_self_reference(node):
            return ident(name)
        if row and name in self.aliases and name not in self.cat.stored and tags.resolve(self.cat, name) is None:
            return self.value(self.aliases[name], row=True)
        ref = tags.resolve(self.cat, name)
        if ref is not None:
            if self.outer:
                raise DialectError(f"tag {name} must be selected and grouped by to be used here{where(node)}")
            return tags.select(ref)
        metric = self.cat.metric(name)
        if metric is not None:
            if self.outer:
                raise DialectError(f"metric {name} needs an aggregate function here{where(node)}")
            return metric.value
        if name in self.cat.stored:
            return name
        raise DialectError(f"unknown tag or metric: {name}{where(node)}{self._side_hint(name)}")

    def _side_hint(self, name: str) -> str:
        """Why a resource name is unknown here: it needs (or must not have) a _0/_1 side."""
        table = self.table.name
        if self.table.peer and tags.resolve(self.cat, name + "_0") is not None:
            return f" ({table} has two ends: {name}_0 for the client, {name}_1 for the server)"
        if not self.table.peer and name[-2:] in ("_0", "_1") and tags.resolve(self.cat, name[:-2]) is not None:
            return f" ({table} has one end per row: {name[:-2]})"
        return ""

    @staticmethod
    def _is_self_reference(node: exp.Column) -> bool:
        parent = node.parent
        return isinstance(parent, exp.Alias) and parent.alias == node.name

    def _function(self, node: exp.Anonymous, *, row: bool) -> str:
        name = _fname(node)
        args = node.expressions
        if name in AGGREGATES:
            if row:
                raise DialectError(f"function {name} is not allowed in WHERE (use HAVING){where(node)}")
            return self._aggregate(node, name)
        if name in ("PerSecond", "Percentage"):
            if row:
                raise DialectError(f"function {name} is not allowed in WHERE (use HAVING){where(node)}")
            return self._math(node, name)
        if name == "Enum":
            ref = self._tag_arg(node)
            sql = tags.enum_select(ref, self.language)
            if sql is None:
                raise self._unsupported(node)
            return self._outer_tag(node, sql)
        if name == "time":        # elsewhere than its own column: the bucket, by name
            if self.time is not None and not row:
                return ident(self.time.name)
            raise self._unsupported(node)
        if name in ("node_type", "icon_id"):
            ref = self._tag_arg(node)
            sql = tags.node_type(ref) if name == "node_type" else tags.icon_id(ref)
            if sql is None:
                raise self._unsupported(node)
            return self._outer_tag(node, sql)
        if name == "mask":
            ref = self._tag_arg(node)
            if ref.tag is None or ref.tag.kind != "ip" or len(args) != 2:
                raise self._unsupported(node)
            return self._outer_tag(node, tags.mask(ref, self._int(args[1], "mask()")))
        if name in ("FastFilter", "FastTrans"):    # DeepFlow's index shortcuts: the column itself here
            if len(args) != 1:
                raise self._unsupported(node)
            return self.value(args[0], row=row)
        if name == "exist":
            return self.predicate(node)
        if name in TAG_AGGREGATES:
            if row:
                raise DialectError(f"function {name} is not allowed in WHERE (use HAVING){where(node)}")
            return self._tag_aggregate(node, TAG_AGGREGATES[name])
        if name in PASS_THROUGH:
            inner = ", ".join(self.value(a, row=row) for a in args)
            return self._outer_tag(node, f"{name}({inner})") if self.outer and not self._has_aggregates(node) \
                else f"{name}({inner})"
        raise self._unsupported(node)

    def _outer_tag(self, node: exp.Expression, sql: str) -> str:
        """A tag expression inside the outer layer exists only as a column the inner layer selected."""
        if not self.outer:
            return sql
        raise DialectError(f"{text(node)} must be selected as its own column to be used here{where(node)}")

    @staticmethod
    def _unsupported(node: exp.Anonymous) -> DialectError:
        return DialectError(f"function: {text(node)} not support{where(node)}")

    def _tag_arg(self, node: exp.Anonymous) -> TagRef:
        args = node.expressions
        if not args or not isinstance(args[0], exp.Column):
            raise self._unsupported(node)
        name = args[0].name
        if name in self.aliases and tags.resolve(self.cat, name) is None and isinstance(self.aliases[name], exp.Column):
            name = self.aliases[name].name
        ref = tags.resolve(self.cat, name)
        if ref is None:
            raise DialectError(f"unknown tag: {name} in {text(node)}{where(args[0])}")
        return ref

    # -- aggregates ------------------------------------------------------------------------------------------
    def _aggregate(self, node: exp.Anonymous, name: str) -> str:
        args = node.expressions
        if not args:
            raise self._unsupported(node)
        if name == "Count":
            if len(args) != 1 or not isinstance(args[0], exp.Column) or args[0].name != "row":
                raise self._unsupported(node)
            return self._apply(name, ROW, [], node)
        if name in ("Uniq", "UniqExact"):
            keys = [tags.uniq_key(self._tag_or_column(a, node)) for a in args]
            key = keys[0] if len(keys) == 1 else f"({', '.join(keys)})"
            fn = "uniq" if name == "Uniq" else "uniqExact"
            return self._partial_or(f"{fn}({key})", f"{fn}State({key})", f"{fn}Merge", node)
        if name in ("TopK", "Any"):
            return self._topk_any(node, name)
        metric = self._metric_arg(args[0], node)
        params = [self._param(a, node) for a in args[1:]]
        if FUNCTIONS[name].params != len(params):
            raise DialectError(f"function {text(node)}: {name} takes {FUNCTIONS[name].params + 1} "
                               f"argument(s){where(node)}")
        return self._apply(name, metric, params, node)

    def _apply(self, name: str, metric: Metric, params: list[str], node: exp.Anonymous) -> str:
        if metric.kind == OTHER:
            sql = "count()"
            if self.layered:
                p = self._register(agg.Partial("count()", "_count_1", "sum(_count_1)"))
                return p.outer
            return sql
        if self.layered:
            return self._register(agg.partial(name, metric, params)).outer
        try:
            return agg.one_layer(name, metric, params, self._intervals)
        except KeyError:
            raise self._unsupported(node) from None

    def _register(self, p: agg.Partial) -> agg.Partial:
        existing = self.partials.get(p.alias)
        if existing is not None and existing.inner != p.inner:
            p = agg.Partial(p.inner, f"{p.alias}_{len(self.partials)}", p.outer.replace(p.alias, f"{p.alias}_"
                                                                                        f"{len(self.partials)}"))
        self.partials.setdefault(p.alias, p)
        return p

    def _partial_or(self, one: str, state: str, merge: str, node: exp.Expression) -> str:
        """Tag aggregates in two layers: ClickHouse's -State in the inner query, -Merge outside."""
        if not self.layered:
            return one
        alias = f"_state_{len(self.partials)}"
        for p in self.partials.values():
            if p.inner == state:
                return p.outer
        return self._register(agg.Partial(state, alias, f"{merge}({alias})")).outer

    def _topk_any(self, node: exp.Anonymous, name: str) -> str:
        args = list(node.expressions)
        n = None
        if name == "TopK":
            if len(args) < 2:
                raise self._unsupported(node)
            n = self._int(args.pop(), "TopK")
            if not 1 <= n <= 100:
                raise DialectError(f"function [TopK] argument [{n}] value range is incorrect, it should be within "
                                   f"[1, 100]{where(node)}")
        refs = [self._tag_or_column(a, node) for a in args]
        values = [tags.select(r) for r in refs]
        value = values[0] if len(values) == 1 else f"({', '.join(values)})"
        textual = len(refs) == 1 and refs[0].type in ("resource", "string", "string_enum", "map_item", "ip")
        cond = f"{value} != ''" if textual else ""
        fn = f"topK({n})" if name == "TopK" else "any"
        if cond:
            fn = f"topKIf({n})" if name == "TopK" else "anyIf"
            one = f"{fn}({value}, {cond})"
            state = f"{fn.replace('If', 'IfState', 1)}({value}, {cond})"
        else:
            one = f"{fn}({value})"
            state = f"{fn.replace('(', 'State(', 1) if '(' in fn else fn + 'State'}({value})"
        merge = (f"topKIfMerge({n})" if cond else f"topKMerge({n})") if name == "TopK" else \
            ("anyIfMerge" if cond else "anyMerge")
        return self._partial_or(one, state, merge, node)

    def _tag_aggregate(self, node: exp.Anonymous, fn: str) -> str:
        args = list(node.expressions)
        if fn == "topK":
            n = self._int(args.pop(), "topK") if len(args) > 1 else 10
            fn = f"topK({n})"
        refs = [self._tag_or_column(a, node) for a in args]
        values = [tags.uniq_key(r) if fn.startswith("uniq") else tags.select(r) for r in refs]
        value = values[0] if len(values) == 1 else f"({', '.join(values)})"
        one = f"{fn}({value})"
        state = (f"{fn.replace('(', 'State(', 1)}" if "(" in fn else f"{fn}State") + f"({value})"
        merge = fn.replace("(", "Merge(", 1) if "(" in fn else f"{fn}Merge"
        return self._partial_or(one, state, merge, node)

    def _tag_or_column(self, node: exp.Expression, call: exp.Anonymous) -> TagRef:
        if isinstance(node, exp.Column):
            ref = tags.resolve(self.cat, node.name)
            if ref is not None:
                return ref
            if node.name in self.cat.stored:
                return TagRef(node.name, Tag(node.name, "column", "int", "", "", expr=node.name))
        raise DialectError(f"function {text(call)}: {text(node)} is not a tag{where(node)}")

    def _metric_arg(self, node: exp.Expression, call: exp.Anonymous) -> Metric:
        if isinstance(node, exp.Column):
            m = self.cat.metric(node.name)
            if m is not None:
                return m
            if node.name in self.cat.stored and tags.resolve(self.cat, node.name) is None:
                return Metric(node.name, COUNTER, "", "", node.name, node.name)
            if node.name == "time":
                return Metric("time", DELAY, "s", "", "time", "toUnixTimestamp(time)")
            if tags.resolve(self.cat, node.name) is not None:
                ref = tags.resolve(self.cat, node.name)
                return Metric(node.name, TAG_TYPE, "", "", node.name, tags.select(ref))
        raise DialectError(f"function {text(call)}: unknown metric {text(node)}{where(node)}")

    def _param(self, node: exp.Expression, call: exp.Anonymous) -> str:
        if isinstance(node, exp.Literal) and not node.is_string:
            return node.this
        if isinstance(node, exp.Neg) and isinstance(node.this, exp.Literal):
            return "-" + node.this.this
        raise DialectError(f"function {text(call)}: {text(node)} must be a number{where(node)}")

    def _math(self, node: exp.Anonymous, name: str) -> str:
        args = node.expressions
        if name == "PerSecond":
            if len(args) != 1:
                raise self._unsupported(node)
            inner = self._innermost_aggregate(args[0])
            seconds = self.interval() if inner in ("Sum", "Uniq", "UniqExact", "Count") else \
                self.ds * (self.time.window if self.time else 1)
            return f"({self.value(args[0])}) / {seconds}"
        if len(args) == 1:
            return f"({self.value(args[0])}) * 100"
        if len(args) == 2:
            return f"({self.value(args[0])}) / ({self.value(args[1])}) * 100"
        raise self._unsupported(node)

    def _innermost_aggregate(self, node: exp.Expression) -> str:
        for n in node.walk():
            if isinstance(n, exp.Anonymous) and _fname(n) in AGGREGATES:
                return _fname(n)
        return ""

    def _has_aggregates(self, node: exp.Expression | None = None) -> bool:
        nodes = [node] if node is not None else [*self.tree.expressions]
        return any(isinstance(n, exp.Anonymous) and (_fname(n) in AGGREGATES or _fname(n) in MATH_FUNCTIONS
                                                     or _fname(n) in TAG_AGGREGATES)
                   for x in nodes for n in x.walk())

    def _needs_layers(self) -> bool:
        """DeepFlow layers a flow_metrics query when any function cannot run on the stored rows."""
        nodes = [*self.tree.expressions]
        for key in ("having", "order"):
            if self.tree.args.get(key) is not None:
                nodes.append(self.tree.args[key])
        for x in nodes:
            for n in x.walk():
                if not isinstance(n, exp.Anonymous) or _fname(n) not in AGGREGATES:
                    continue
                name = _fname(n)
                if name in ("Count", "Uniq", "UniqExact", "TopK", "Any") or not n.expressions:
                    continue
                arg = n.expressions[0]
                m = self.cat.metric(arg.name) if isinstance(arg, exp.Column) else None
                if m is not None and agg.needs_two_layers(name, m):
                    return True
        return False

    # -- time --------------------------------------------------------------------------------------------
    def _is_time(self, node: exp.Expression) -> bool:
        return isinstance(node, exp.Anonymous) and _fname(node) == "time"

    def _find_time(self, items: list[exp.Expression]) -> None:
        for node in items:
            body = node.this if isinstance(node, exp.Alias) else node
            if not self._is_time(body):
                continue
            if self.time is not None:
                raise DialectError(f"one time() per query: {text(body)}{where(body)}")
            args = body.expressions
            if not args or not isinstance(args[0], exp.Column) or args[0].name != "time" or len(args) < 2:
                raise DialectError(f"time(time, interval[, window[, fill[, offset]]]) expected, got "
                                   f"{text(body)}{where(body)}")
            n = self._number(args[1], body)
            # DeepFlow rounds the interval up and never goes below the datasource interval
            interval = max(math.ceil(n), self.ds)
            window = int(self._number(args[2], body)) if len(args) > 2 else 1
            offset = int(self._number(args[4], body)) if len(args) > 4 else 0
            name = node.alias if isinstance(node, exp.Alias) else text(body)
            fill = self._fill_value(args[3], body) if len(args) > 3 else None
            self.time = TimeBucket(interval, max(window, 1), offset, name, fill)

    @staticmethod
    def _fill_value(node: exp.Expression, call: exp.Expression) -> str | None:
        """time()'s fill argument: 0 or null fill missing buckets (DeepFlow's TimeFill), none doesn't."""
        if isinstance(node, exp.Null):
            return "null"
        if isinstance(node, exp.Literal | exp.Column):
            value = node.name.lower()
            if value in ("0", "null"):
                return value
            if value in ("none", ""):
                return None
        raise DialectError(f"{text(call)}: fill must be 0, null or none, got {text(node)}{where(node)}")

    def _number(self, node: exp.Expression, call: exp.Expression) -> float:
        value = _evaluate(node)
        if value is None:
            raise DialectError(f"{text(call)}: {text(node)} must be a number{where(node)}")
        return value

    def interval(self) -> float:
        """Seconds of the window an aggregate covers: the time() bucket × window, else the WHERE time
        range aligned to the datasource interval, else one datasource interval (DeepFlow)."""
        if self.time is not None:
            return self.time.interval * self.time.window
        self.range_used = True
        return range_seconds(self.range, self.ds)

    def _intervals(self) -> str:
        n = self.interval() / self.ds
        return str(int(n)) if n == int(n) else repr(n)

    # -- GROUP BY --------------------------------------------------------------------------------------------
    def _group(self) -> list[str]:
        group = self.tree.args.get("group")
        if group is None:
            return []
        keys: list[str] = []
        for node in group.expressions:
            keys += self._group_keys(node)
        # an icon_id(x) column groups by x's ids even when GROUP BY does not name them (DeepFlow adds
        # them): the icon is per resource
        for node in self.tree.expressions:
            body = node.this if isinstance(node, exp.Alias) else node
            if isinstance(body, exp.Anonymous) and body.name == "icon_id":
                keys += tags.group_keys(self._tag_arg(body))
        return keys

    def _group_keys(self, node: exp.Expression) -> list[str]:
        if isinstance(node, exp.Column):
            name = node.name
            if self.time is not None and name == self.time.name:
                return []
            ref = tags.resolve(self.cat, name)
            if ref is None and name in self.aliases:
                target = self.aliases[name]
                if self._is_time(target):
                    return []
                return self._group_keys(target)
            if ref is not None:
                return tags.group_keys(ref)
            if name in self.cat.stored:
                return [name]
            raise DialectError(f"unknown tag in GROUP BY: {name}{where(node)}")
        if self._is_time(node):
            return []
        if isinstance(node, exp.Anonymous) and _fname(node) == "Enum":
            return tags.group_keys(self._tag_arg(node))
        if self._has_aggregates(node):
            raise DialectError(f"aggregate in GROUP BY: {text(node)}{where(node)}")
        return [self.value(node, row=True)]

    # -- WHERE -------------------------------------------------------------------------------------------------
    def _where(self) -> str:
        parts = []
        w = self.tree.args.get("where")
        if w is not None:
            parts.append(self.predicate(w.this))
        slimit = self.tree.args.get("slimit")
        if slimit is not None:
            series = self._slimit(self._int(slimit, "SLIMIT"), " AND ".join(f"({p})" for p in parts))
            if series:
                parts.append(series)
        if len(parts) == 1:
            return parts[0]
        return " AND ".join(f"({p})" for p in parts)

    def predicate(self, node: exp.Expression, *, having: bool = False) -> str:
        """A condition of WHERE (tags become dictionary filters), or of HAVING (aggregates)."""
        if isinstance(node, exp.And):
            return f"{self.predicate(node.this, having=having)} AND {self.predicate(node.expression, having=having)}"
        if isinstance(node, exp.Or):
            return f"{self.predicate(node.this, having=having)} OR {self.predicate(node.expression, having=having)}"
        if isinstance(node, exp.Paren):
            return f"({self.predicate(node.this, having=having)})"
        if isinstance(node, exp.Not):
            return f"NOT ({self.predicate(node.this, having=having)})"
        if isinstance(node, exp.Anonymous) and node.name == "exist":
            return self._exist(node)
        if having:
            return self._compare_values(node, aggregate=True)
        op, left, values, items = _comparison(node)
        if op is None:
            return self._compare_values(node, aggregate=False)
        ref, enum = self._filter_target(left)
        if ref is not None and values is not None:
            try:
                if enum:
                    sql = tags.enum_filter(ref, op, values, self.language)
                    if sql is None:
                        raise self._unsupported(left)
                    return sql
                stored = self._stored_type(ref)
                if tags.compared_as_is(ref):
                    values = self._lift(op, items, tags.coerce(values, stored), (_coerced, stored))
                return tags.filter_(ref, op, values, stored)
            except ValueError as e:
                raise DialectError(f"{e}{where(node)}", status=400) from None
        if isinstance(left, exp.Column) and left.name == "time" and values is not None:
            return tags.compare("time", op, self._lift(op, items, [_time_value(v) for v in values], (_time_value,)))
        return self._compare_values(node, aggregate=False)

    def _lift(self, op: str, items: list[exp.Expression], values: list, convert: tuple) -> list:
        """The values a comparison renders, with the literals a shape may vary as Params. ``convert``:
        (function, *args) turning a literal's value into the one rendered, as done for ``values``."""
        if self.lifter is None or op not in LIFTABLE_OPS:
            return values
        return [self.lifter.lift(item, v, convert) for item, v in zip(items, values, strict=True)]

    def _filter_target(self, left: exp.Expression) -> tuple[TagRef | None, bool]:
        """The tag a WHERE comparison is about (aliases resolve to what they name), and whether Enum()."""
        if isinstance(left, exp.Anonymous) and _fname(left) == "Enum":
            return self._tag_arg(left), True
        if isinstance(left, exp.Anonymous) and left.name in ("FastFilter", "FastTrans") and left.expressions:
            left = left.expressions[0]
        if isinstance(left, exp.Column):
            name = left.name
            ref = tags.resolve(self.cat, name)
            if ref is None and name in self.aliases:
                return self._filter_target(self.aliases[name])
            return ref, False
        return None, False

    def _stored_type(self, ref: TagRef) -> str:
        if ref.tag is not None and ref.tag.kind == "column":
            return self.cat.stored.get(ref.sql(ref.tag.expr), "")
        return ""

    def _compare_values(self, node: exp.Expression, *, aggregate: bool) -> str:
        """A comparison between expressions (metrics, aggregates, stored columns)."""
        op, left, values, items = _comparison(node)
        if op is not None and values is not None:
            if aggregate or self._numeric(left):
                values = self._lift(op, items, [_number_or(v) for v in values], (_number_or,))
            else:
                values = self._lift(op, items, values, (_same,))
            return tags.compare(self.value(left, row=not aggregate), op, values)
        if isinstance(node, exp.Binary) and type(node) in _COMPARISONS:
            return (f"{self.value(node.this, row=not aggregate)} {_COMPARISONS[type(node)]} "
                    f"{self.value(node.expression, row=not aggregate)}")
        if isinstance(node, exp.Between):
            v = self.value(node.this, row=not aggregate)
            return (f"{v} >= {self.value(node.args['low'], row=True)} AND "
                    f"{v} <= {self.value(node.args['high'], row=True)}")
        if isinstance(node, exp.Literal | exp.Boolean | exp.Column | exp.Anonymous):
            return self.value(node, row=not aggregate)
        raise DialectError(f"not support sql: {text(node)}{where(node)}")

    def _numeric(self, node: exp.Expression) -> bool:
        if isinstance(node, exp.Column):
            if self.cat.metric(node.name) is not None:
                return True
            t = self.cat.stored.get(node.name, "")
            return any(t.replace("Nullable(", "").startswith(p) for p in ("Int", "UInt", "Float"))
        return False

    def _exist(self, node: exp.Anonymous) -> str:
        ref = self._tag_arg(node)
        stored = self._stored_type(ref)
        nullable = tags.exist_nullable(ref, stored) if stored else None
        return nullable or tags.exist(ref)

    # -- SLIMIT ------------------------------------------------------------------------------------------
    def _slimit(self, n: int, where_sql: str) -> str:
        """The top-n series: their group ids IN a subquery ranking all series by SORDER BY (else the first
        aggregate of the SELECT), largest first."""
        keys = list(dict.fromkeys(self._group()))
        if not keys:
            return ""
        sorder = self.tree.args.get("sorder")
        rank_node, desc = None, True
        if sorder is not None and sorder.expressions:
            rank_node = sorder.expressions[0].this
            desc = bool(sorder.expressions[0].args.get("desc"))
            if isinstance(rank_node, exp.Column) and rank_node.name in self.aliases:
                rank_node = self.aliases[rank_node.name]
        else:
            rank_node = next((n.this if isinstance(n, exp.Alias) else n for n in self.tree.expressions
                              if self._has_aggregates(n if not isinstance(n, exp.Alias) else n.this)), None)
        layered, self.layered = self.layered, False
        try:
            rank = self.value(rank_node) if rank_node is not None else "count()"
        finally:
            self.layered = layered
        key = keys[0] if len(keys) == 1 else f"({', '.join(keys)})"
        sub = f"SELECT {', '.join(keys)} FROM {self.physical}"
        if where_sql:
            sub += f" WHERE {where_sql}"
        sub += f" GROUP BY {', '.join(keys)} ORDER BY {rank} {'DESC' if desc else 'ASC'} LIMIT {n}"
        return f"{key} GLOBAL IN ({sub})"

    # -- Histogram -----------------------------------------------------------------------------------------
    @staticmethod
    def _is_histogram(node: exp.Expression) -> bool:
        body = node.this if isinstance(node, exp.Alias) else node
        return any(isinstance(n, exp.Anonymous) and n.name == "Histogram" for n in body.walk())

    def _histogram(self, node: exp.Expression) -> SelectTranslation:
        """``Histogram(f, n)``: f per group and log row (flow_log) or stored interval (flow_metrics),
        then ClickHouse's adaptive histogram of those values, n bins."""
        body = node.this if isinstance(node, exp.Alias) else node
        if not (isinstance(body, exp.Anonymous) and len(body.expressions) == 2):
            raise DialectError(f"Histogram(aggregate, bins) must be a column of its own{where(body)}")
        bins = self._int(body.expressions[1], "Histogram")
        name = node.alias if isinstance(node, exp.Alias) else text(body)
        others = [n for n in self.tree.expressions if n is not node]
        self.layered = False
        columns = [self._column(n.this if isinstance(n, exp.Alias) else n,
                                n.alias if isinstance(n, exp.Alias) else text(n), "") for n in others]
        value = self.value(body.expressions[0])
        group = list(dict.fromkeys(self._group())) + ["_id" if self.table.db == FLOW_LOG else "time"]
        where_sql = self._where()
        inner = [f"{c.sql} AS {ident(c.name)}" for c in columns] + [f"{value} AS _h"]
        inner_sql = f"SELECT {', '.join(inner)} FROM {self.physical}"
        if where_sql:
            inner_sql += f" WHERE {where_sql}"
        inner_sql += f" GROUP BY {', '.join(group)}"
        outer_cols = [Column(ident(c.name), c.name, c.type, c.unit) for c in columns]
        hist = Column(f"histogramIf({bins})(assumeNotNull(_h), _h > 0)", name, 1, unit="",
                      pre_as=text(body) if isinstance(node, exp.Alias) else "")
        outer_cols.append(hist)
        sql = f"SELECT {', '.join(f'{c.sql} AS {ident(c.name)}' for c in outer_cols)} FROM ({inner_sql})"
        if columns:
            sql += f" GROUP BY {', '.join(ident(c.name) for c in columns)}"
        limit = self.tree.args.get("limit")
        sql += f" LIMIT {self._int(limit.expression, 'LIMIT') if limit is not None else DEFAULT_LIMIT}"
        return SelectTranslation(sql, outer_cols, self.physical, self._shadowed(columns), self._window(),
                                 self._fill())


_ARITHMETIC = {exp.Add: "+", exp.Sub: "-", exp.Mul: "*", exp.Div: "/", exp.Mod: "%"}
_COMPARISONS = {exp.EQ: "=", exp.NEQ: "!=", exp.GT: ">", exp.GTE: ">=", exp.LT: "<", exp.LTE: "<="}


def _comparison(node: exp.Expression) -> tuple[str | None, exp.Expression | None, list | None, list]:
    """(operator, left side, literal values, their nodes) of a simple comparison, else (None, …)."""
    negate = False
    if isinstance(node, exp.Not):
        negate, node = True, node.this
    if isinstance(node, exp.Paren) and negate:
        node = node.this
    op = None
    rhs: list[exp.Expression] = []
    if type(node) in _COMPARISONS:
        op, rhs = _COMPARISONS[type(node)], [node.expression]
    elif isinstance(node, exp.In):
        if node.args.get("query") is not None or node.args.get("field") is not None:
            raise DialectError(f"not support sql: IN (SELECT …){where(node)}")
        op, rhs = "in", node.expressions
    elif isinstance(node, exp.Like | exp.ILike):
        op, rhs = "like", [node.expression]
    elif isinstance(node, exp.RegexpLike):
        op, rhs = "regexp", [node.expression]
    elif isinstance(node, exp.Is) and isinstance(node.expression, exp.Null):
        op = "is null"
    if op is None:
        return None, None, None, []
    if negate:
        op = {"=": "!=", "in": "not in", "like": "not like", "regexp": "not regexp", "is null": "is not null"}.get(op)
        if op is None:
            return None, None, None, []
    values, nodes = [], []
    for r in rhs:
        if isinstance(r, exp.Paren | exp.Tuple):
            items = r.expressions if isinstance(r, exp.Tuple) else [r.this]
        else:
            items = [r]
        for item in items:
            v = _literal(item)
            if v is _NOT_LITERAL:
                return op, node.this, None, []
            values.append(v)
            nodes.append(item)
    return op, node.this, values, nodes


_NOT_LITERAL = object()


def _literal(node: exp.Expression):
    if isinstance(node, exp.Literal):
        if node.is_string:
            return node.this
        return int(node.this) if node.this.lstrip("-").isdigit() else float(node.this)
    if isinstance(node, exp.Neg) and isinstance(node.this, exp.Literal) and not node.this.is_string:
        v = _literal(node.this)
        return -v
    if isinstance(node, exp.Boolean):
        return 1 if node.this else 0
    if isinstance(node, exp.Paren):
        return _literal(node.this)
    v = _evaluate(node)
    return v if v is not None else _NOT_LITERAL


def _evaluate(node: exp.Expression) -> float | None:
    """Arithmetic on numeric literals (``1700000000-500``, ``'1716185497'``) → a number, else None."""
    if isinstance(node, exp.Literal):
        try:
            v = float(node.this)
        except ValueError:
            return None
        return int(v) if v == int(v) else v
    if isinstance(node, exp.Paren):
        return _evaluate(node.this)
    if isinstance(node, exp.Neg):
        v = _evaluate(node.this)
        return -v if v is not None else None
    if type(node) in _ARITHMETIC:
        a, b = _evaluate(node.this), _evaluate(node.expression)
        if a is None or b is None:
            return None
        op = _ARITHMETIC[type(node)]
        if op == "/" and b == 0:
            return None
        v = {"+": a + b, "-": a - b, "*": a * b, "/": a / b if b else 0, "%": a % b if b else 0}[op]
        return int(v) if v == int(v) else v
    return None


def _time_value(v):
    """Time filters compare epoch seconds; a quoted number is one (Grafana's quoted placeholders)."""
    if isinstance(v, str):
        try:
            return int(v)
        except ValueError:
            return v
    return int(v) if isinstance(v, float) and v == int(v) else v


def _number_or(v):
    if isinstance(v, str):
        try:
            return int(v)
        except ValueError:
            try:
                return float(v)
            except ValueError:
                return v
    return v


def _same(v):
    return v


def _coerced(v, stored_type: str):
    return tags.coerce([v], stored_type)[0]


def _range_terms(where_: exp.Where | None) -> list[tuple[bool, bool, exp.Expression]]:
    """The time bounds at the top of WHERE (``time >= a AND time <= b``, either side): (lower bound?,
    strict?, the bound's expression), in the order ``fold_range`` takes them."""
    terms: list[tuple[bool, bool, exp.Expression]] = []
    if where_ is None:
        return terms
    stack = [where_.this]
    while stack:
        n = stack.pop()
        if isinstance(n, exp.And):
            stack += [n.this, n.expression]
            continue
        if isinstance(n, exp.Paren):
            stack.append(n.this)
            continue
        if not isinstance(n, exp.GT | exp.GTE | exp.LT | exp.LTE):
            continue
        left, right = n.this, n.expression
        flipped = False
        if not (isinstance(left, exp.Column) and left.name == "time"):
            left, right, flipped = right, left, True
            if not (isinstance(left, exp.Column) and left.name == "time"):
                continue
        lower = isinstance(n, exp.GT | exp.GTE) != flipped
        terms.append((lower, isinstance(n, exp.GT) if lower else isinstance(n, exp.LT), right))
    return terms


def fold_range(terms: list[tuple[bool, bool, float | None]]) -> tuple[float | None, float | None]:
    """TimeStart/TimeEnd from the bounds' values (None: not a number, ignored)."""
    start = end = None
    for lower, strict, v in terms:
        if v is None:
            continue
        if lower:
            start = v + (1 if strict else 0) if start is None else max(start, v)
        else:
            end = v - (1 if strict else 0) if end is None else min(end, v)
    return start, end


def range_seconds(time_range: tuple[float | None, float | None], ds: int) -> float:
    """The WHERE time range aligned to the datasource interval, else one datasource interval."""
    start, end = time_range
    if start is not None and end is not None and end >= start:
        return (end // ds * ds) - (start // ds * ds) + ds
    return ds


def translate_select(tree: exp.Select, db: str | None, precision: str | None, language: str,
                     lifter=None) -> SelectTranslation:
    """``lifter`` (shape.Lifter): translate into a template whose liftable literals are markers."""
    return Translator(tree, db, precision, language, lifter).run()

