"""DeepFlow's SQL dialect on flowscope's ClickHouse schema: ``translate(sql, db, precision)``.

Modules, one concept each:

* ``parse``     — the sqlglot dialect (DeepFlow function names kept as written, SHOW, SLIMIT);
* ``schema``    — the stored columns, read from ``sql/``;
* ``catalog``   — tables, tags, metrics and functions as data;
* ``tags``      — what a tag is in SELECT / GROUP BY / WHERE (dictionaries, Enum, k8s labels, IPs);
* ``metrics``   — the aggregate functions by metric type, one or two layers;
* ``translate`` — a SELECT → one ClickHouse SELECT;
* ``show``      — the SHOW statements, mostly answered from the catalogue;
* ``shape``     — templates of SELECTs whose time (and other copied) literals vary;
* ``join``      — ``WITH q1 AS (SELECT …), q2 AS (…) SELECT … FROM q1 LEFT JOIN q2 ON …``;
* ``fill``      — ``time(…, fill)``: the missing buckets, added to the rows after the query;
* ``safety``    — the final check every generated query passes before it may run.

Two caches: by exact text (db, precision, language, sql) — dashboards repeat statements —, and by
shape (db, precision, language, the text with its liftable literals as markers, the other literals)
— Grafana's refreshes repeat them with a new time range (shape.py says which literals may vary).
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass

from sqlglot import exp

from datasource.dialect import safety
from datasource.dialect.errors import DialectError
from datasource.dialect.join import translate_with
from datasource.dialect.parse import DeepFlowShow, parse
from datasource.dialect.shape import Lifter, Shape, Template, lex
from datasource.dialect.show import answer
from datasource.dialect.translate import _evaluate, fold_range, translate_select

__all__ = ["DialectError", "Translation", "translate", "translate_uncached"]

CACHE_SIZE = 4096
LANGUAGES = ("en", "zh")


@dataclass(frozen=True)
class Translation:
    """What a DeepFlow statement becomes.

    ``sql``: the ClickHouse SELECT to run (None when ``static`` answers a SHOW by itself);
    ``static``: ``{"columns", "values", "schemas": []}`` rows known without ClickHouse (SHOW); the rows
    of ``queries`` follow them;
    ``schemas``: per output column ``{"unit", "type" (0 tag, 1 metric), "value_type" ("" = fill from
    ClickHouse's result type), "pre_as", "label_type"}``;
    ``queries``: every ClickHouse query to run, in order (``[sql]`` for a SELECT);
    ``template``: a SELECT's SQL with its lifted literals as markers — translations with one template
    have the same result columns and types ("" for SHOW);
    ``fill``: ``time(time, N, W, 0|null)`` with a WHERE time range: (bucket column, interval, offset,
    fill value, start, end) for ``fill.fill_buckets`` on the rows.
    """

    sql: str | None
    static: dict | None
    schemas: list[dict]
    queries: list[str]
    template: str = ""
    fill: tuple | None = None


class _Cache:
    """A thread-safe LRU dictionary that counts its hits."""

    def __init__(self, size: int) -> None:
        self.size, self.hits = size, 0
        self._data: OrderedDict = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key, *, count: bool = True):
        """The value (its place refreshed); ``count=False`` leaves counting to the caller (``hit``)."""
        with self._lock:
            value = self._data.get(key)
            if value is not None:
                self.hits += count
                self._data.move_to_end(key)
            return value

    def hit(self) -> None:
        with self._lock:
            self.hits += 1

    def put(self, key, value) -> None:
        with self._lock:
            self._data[key] = value
            self._data.move_to_end(key)
            while len(self._data) > self.size:
                self._data.popitem(last=False)

    def clear(self) -> None:
        with self._lock:
            self._data.clear()
            self.hits = 0


_exact = _Cache(CACHE_SIZE)       # (sql, db, precision, language) → Translation
_lifted = _Cache(CACHE_SIZE)      # (db, precision, language, skeleton) → indices of the lifted literals
_templates = _Cache(CACHE_SIZE)   # (db, precision, language, skeleton, lifted, fixed literals) → Templates
_WINDOWS_KEPT = 4                 # templates kept per key, for different range lengths (Template.window)
_translated = [0]                 # translations done from scratch by translate()


def translate(sql: str, db: str | None, data_precision: str | None = None, *,
              language: str = "en") -> Translation:
    """DeepFlow SQL → ClickHouse; raises DialectError (message names the token and position)."""
    if language not in LANGUAGES:
        language = "en"
    sql, db, precision = (sql.strip() if sql else ""), db or None, data_precision or None
    key = (sql, db, precision, language)
    tr = _exact.get(key)
    if tr is not None:
        return tr
    shape = lex(sql) if sql else None
    if shape is not None and shape.literals:
        skey = (db, precision, language, shape.skeleton)
        lifted = _lifted.get(skey)
        found = _templates.get((*skey, lifted, shape.fixed(lifted)), count=False) if lifted is not None else None
        tmpl = next((t for t in found if t.fits(shape.literals)), None) if found else None
        if tmpl is not None:
            _templates.hit()            # counted when a template serves the request, not when one exists
            sql_out = tmpl.render(shape.literals)     # each parameter checked to be one literal
            safety.check_size(sql_out)
            return Translation(sql_out, None, tmpl.schemas, [sql_out], tmpl.text, tmpl.fill_for(shape.literals))
    _translated[0] += 1
    tr, tmpl = translate_uncached(sql, db, precision, language, shape)
    if tmpl is not None:
        skey = (db, precision, language, shape.skeleton)
        _lifted.put(skey, tmpl.lifted)
        tkey = (*skey, tmpl.lifted, shape.fixed(tmpl.lifted))
        _templates.put(tkey, _with_template(_templates.get(tkey, count=False), tmpl))
    _exact.put(key, tr)
    return tr


def _with_template(kept: tuple[Template, ...] | None, tmpl: Template) -> tuple[Template, ...]:
    """The templates of one shape, newest first. A template sized by its time range (``window``)
    serves only ranges of that length: a panel refreshed over 1 h and the same panel over 6 h keep
    one each instead of replacing each other's on every request."""
    if tmpl.window is None or not kept:
        return (tmpl,)
    seconds = tmpl.window[2]
    return (tmpl, *(t for t in kept if t.window is not None and t.window[2] != seconds))[:_WINDOWS_KEPT]


def translate_uncached(sql: str, db: str | None, precision: str | None, language: str,
                       shape: Shape | None = None) -> tuple[Translation, Template | None]:
    """Translate without the caches; with ``shape`` (``shape.lex(sql)``), also the template for
    requests of the same shape (None when no literal could be lifted)."""
    if not sql:
        raise DialectError("empty sql", status=400)
    tree = parse(sql)
    if isinstance(tree, DeepFlowShow):
        return _show(tree, db, precision, language), None
    if not isinstance(tree, exp.Select):
        kind = tree.this if isinstance(tree, exp.Command) else tree.key
        raise DialectError(f"only SELECT and SHOW are allowed, got {str(kind).upper()}", status=400)
    if tree.args.get("with_"):           # multi-query join: the exact-text cache only
        joined = translate_with(tree, db, precision, language)
        schemas = [{"unit": c.unit, "type": c.type, "value_type": "", "pre_as": c.pre_as, "label_type": ""}
                   for c in joined.columns]
        return Translation(joined.sql, None, schemas, [joined.sql], joined.sql), None
    lifter = Lifter(tree, shape) if shape is not None and shape.literals else None
    result = translate_select(tree, db, precision, language, lifter)
    text = result.sql
    if result.shadowed:
        text = safety.qualify(text, result.shadowed, result.table)
    schemas = [{"unit": c.unit, "type": c.type, "value_type": "", "pre_as": c.pre_as, "label_type": ""}
               for c in result.columns]
    tmpl = lifter.template(text, result.window, schemas, result.fill) if lifter is not None else None
    final = lifter.render(text) if lifter is not None else text
    safety.check(final)
    if tmpl is not None:
        safety.check(tmpl.text)       # its requests are checked per parameter only (Template.render)
    fill = None
    if result.fill is not None:
        name, interval, offset, value, terms = result.fill
        fill = (name, interval, offset, value, *fold_range([(lo, st, _evaluate(n)) for lo, st, n in terms]))
    return Translation(final, None, schemas, [final], tmpl.text if tmpl is not None else final, fill), tmpl


def _show(tree: DeepFlowShow, db: str | None, precision: str | None, language: str) -> Translation:
    """SHOW: catalogue rows (``static``), the ClickHouse queries whose rows follow them, or both."""
    ans = answer(tree, db, precision, language)
    queries = [safety.finalize(q) for q in ans.queries]
    if ans.values is None and queries:
        return Translation(queries[0], None, [], queries)
    return Translation(None, {"columns": ans.columns, "values": ans.values or [], "schemas": []}, [], queries)


def cache_info() -> dict[str, int]:
    """How ``translate`` answered: from the exact-text cache, from a shape's template, or from scratch
    (for /metrics and benchmarks)."""
    return {"exact_hits": _exact.hits, "shape_hits": _templates.hits, "translated": _translated[0]}


def cache_clear() -> None:
    for cache in (_exact, _lifted, _templates):
        cache.clear()
    _translated[0] = 0
