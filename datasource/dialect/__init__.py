"""DeepFlow's SQL dialect on flowscope's ClickHouse schema: ``translate(sql, db, precision)``.

Modules, one concept each:

* ``parse``     — the sqlglot dialect (DeepFlow function names kept as written, SHOW, SLIMIT);
* ``schema``    — the stored columns, read from ``sql/``;
* ``catalog``   — tables, tags, metrics and functions as data;
* ``tags``      — what a tag is in SELECT / GROUP BY / WHERE (dictionaries, Enum, k8s labels, IPs);
* ``metrics``   — the aggregate functions by metric type, one or two layers;
* ``translate`` — a SELECT → one ClickHouse SELECT;
* ``show``      — the SHOW statements, mostly answered from the catalogue;
* ``safety``    — the final check every generated query passes before it may run.

Translations are cached by (db, precision, language, sql): dashboards repeat the same statements.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

from sqlglot import exp

from datasource.dialect import safety
from datasource.dialect.errors import DialectError
from datasource.dialect.parse import DeepFlowShow, parse
from datasource.dialect.show import answer
from datasource.dialect.translate import translate_select

__all__ = ["DialectError", "Translation", "translate"]

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
    ``queries``: every ClickHouse query to run, in order (``[sql]`` for a SELECT).
    """

    sql: str | None
    static: dict | None
    schemas: list[dict]
    queries: list[str]


def translate(sql: str, db: str | None, data_precision: str | None = None, *,
              language: str = "en") -> Translation:
    """DeepFlow SQL → ClickHouse; raises DialectError (message names the token and position)."""
    if language not in LANGUAGES:
        language = "en"
    return _translate(sql.strip() if sql else "", db or None, data_precision or None, language)


@functools.lru_cache(maxsize=CACHE_SIZE)
def _translate(sql: str, db: str | None, precision: str | None, language: str) -> Translation:
    if not sql:
        raise DialectError("empty sql", status=400)
    tree = parse(sql)
    if isinstance(tree, DeepFlowShow):
        return _show(tree, db, precision, language)
    if not isinstance(tree, exp.Select):
        kind = tree.this if isinstance(tree, exp.Command) else tree.key
        raise DialectError(f"only SELECT and SHOW are allowed, got {str(kind).upper()}", status=400)
    result = translate_select(tree, db, precision, language)
    final = safety.finalize(result.sql, result.shadowed, result.table)
    schemas = [{"unit": c.unit, "type": c.type, "value_type": "", "pre_as": c.pre_as, "label_type": ""}
               for c in result.columns]
    return Translation(final, None, schemas, [final])


def _show(tree: DeepFlowShow, db: str | None, precision: str | None, language: str) -> Translation:
    """SHOW: catalogue rows (``static``), the ClickHouse queries whose rows follow them, or both."""
    ans = answer(tree, db, precision, language)
    queries = [safety.finalize(q) for q in ans.queries]
    if ans.values is None and queries:
        return Translation(queries[0], None, [], queries)
    return Translation(None, {"columns": ans.columns, "values": ans.values or [], "schemas": []}, [], queries)


def cache_info():
    """Hits and misses of the translation cache (for /metrics and benchmarks)."""
    return _translate.cache_info()
