"""Run DeepFlow SQL (translated by datasource/dialect) or guarded plain ClickHouse SQL on a
read-only ClickHouse client and shape DeepFlow's ``/v1/query/`` envelope (``OPT_STATUS``,
``DESCRIPTION``, ``result.columns/values/schemas``, ``debug``).

Shared by the HTTP API and ``flowscope query`` so both answer identically.
"""

from __future__ import annotations

import datetime as dt
import functools
import ipaddress
import math
import re
import threading
import time
import uuid
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

from datasource.dialect import DialectError, Translation, translate
from datasource.dialect.fill import fill_buckets
from datasource.guard import QueryRejected, QuerySyntaxError, check_and_resolve


@dataclass(frozen=True)
class Limits:
    max_execution_time_s: int = 30
    max_result_rows: int = 1_000_000
    max_memory_mb: int = 2048

    def settings(self) -> dict[str, Any]:
        """Read-only session settings: ClickHouse itself refuses writes, DDL and SETTINGS changes
        beyond these, and stops runaway queries."""
        # readonly goes last: clients that apply settings with SET (chDB does for anything it
        # treats as an INSERT) could not set the limits after it, and the session would stay
        # read-only without them, refusing every later query.
        return {
            "max_execution_time": self.max_execution_time_s,
            "max_result_rows": self.max_result_rows,
            "result_overflow_mode": "throw",
            "max_memory_usage": self.max_memory_mb << 20,
            "readonly": 1,
        }


class QueryFailed(RuntimeError):
    """ClickHouse refused or failed the query."""


def envelope(result: dict | None = None, *, status: str = "SUCCESS", description: str = "",
             debug: dict | None = None) -> dict:
    return {"OPT_STATUS": status, "DESCRIPTION": description, "result": result, "debug": debug}


def _value(v: Any) -> Any:
    if isinstance(v, float):
        return 0 if math.isnan(v) or math.isinf(v) else v
    if isinstance(v, dt.datetime):     # always UTC, whatever the host's time zone
        v = v.replace(tzinfo=dt.UTC) if v.tzinfo is None else v.astimezone(dt.UTC)
        return v.isoformat().replace("+00:00", "Z")
    if isinstance(v, dt.date):
        return v.isoformat()
    if isinstance(v, ipaddress.IPv4Address | ipaddress.IPv6Address):
        return str(v)
    if isinstance(v, bytes):
        return v.decode("utf-8", "replace")
    if isinstance(v, list | tuple):
        return [_value(x) for x in v]
    if isinstance(v, dict):
        return {str(k): _value(x) for k, x in v.items()}
    return v


COLUMN_CACHE_SIZE = 4096


_PLAIN = frozenset({str, int, bool, type(None)})
# ClickHouse types whose values clickhouse-connect already returns JSON-ready (str — invalid UTF-8
# comes as hex text —, int, bool, None): their columns are passed through without a look at each value.
_READY_TYPE = re.compile(r"(?:(?:Nullable|LowCardinality)\()*(?:String|U?Int(?:8|16|32|64|128|256)|Bool|"
                         r"Enum(?:8|16)\(.*\))\)*")


@functools.lru_cache(maxsize=1024)
def _ready(type_name: str) -> bool:
    return _READY_TYPE.fullmatch(type_name) is not None


def _column(values: list, type_name: str) -> list:
    """One result column as JSON-ready values: as it is for text and integer types, otherwise one
    type test per value (floats, times, addresses, arrays go through ``_value``)."""
    if _ready(type_name):
        return values
    return [v if type(v) in _PLAIN else _value(v) for v in values]


def _values(columns: list[list], types: list[str]) -> list[list]:
    """Rows (lists) of JSON-ready values from a columnar result: converting by column skips the
    per-value work for the text and integer columns that make up most dashboard answers."""
    return list(map(list, zip(*(_column(c, t) for c, t in zip(columns, types, strict=False)), strict=True)))


class QueryEngine:
    """Translates and executes queries; one lock because a chDB session is not meant for concurrent
    queries from several threads.

    ``query``: DeepFlow SQL through the dialect (datasource/dialect); ``query_raw``: plain ClickHouse
    SQL through the guard only (``flowscope query --raw``, ``simple_sql=true``).

    chDB sends no header block for an empty result, so the names and types of a result's columns are
    kept per query template (``Translation.template``: a dashboard query with a new time range has the
    same columns) or raw SQL text, from any answer that had rows or from one ``DESCRIBE`` — empty
    answers do not pay a second query each time."""

    def __init__(self, client, limits: Limits | None = None) -> None:
        self.client = client
        self.limits = limits or Limits()
        self._settings = self.limits.settings()
        self._lock = threading.Lock()
        self._columns: OrderedDict[str, tuple[list[str], list[str]]] = OrderedDict()    # under _lock

    def translate(self, sql: str, db: str | None, data_precision: str | None = None, *,
                  language: str = "en") -> Translation:
        return translate(sql, db, data_precision, language=language)

    def query(self, sql: str, db: str | None, data_precision: str | None = None, *,
              debug: bool = False, language: str = "en") -> tuple[int, dict]:
        """(HTTP status, envelope) for one DeepFlow statement."""
        try:
            tr = translate(sql, db, data_precision, language=language)
        except DialectError as e:
            return e.status, envelope(status=e.opt_status, description=str(e))
        if tr.static is not None:
            # rows copied: the translation (and its static rows) stays in the cache
            columns, values, schemas = tr.static["columns"], [list(r) for r in tr.static["values"]], []
        else:
            columns, values, schemas = None, [], tr.schemas
        queries: list[dict] = []
        for ch_sql in tr.queries:
            status, res = self._run(ch_sql, queries, tr.template or ch_sql)
            if status != 200:
                return status, res
            names, types, data = res
            if columns is None:
                columns = names
                schemas = [dict(s, value_type=s["value_type"] or t) for s, t in zip(schemas, types, strict=False)]
            values += _values(data, types)
        if tr.fill is not None:
            values = fill_buckets(tr.fill, columns or [], schemas, values)
        result = {"columns": columns or [], "values": values or None, "schemas": schemas}
        return 200, envelope(result, debug={"query_sqls": queries} if debug else None)

    def query_raw(self, sql: str, db: str | None, data_precision: str | None = None, *,
                  debug: bool = False) -> tuple[int, dict]:
        """(HTTP status, envelope) for one plain ClickHouse SELECT, checked by the guard."""
        try:
            ch_sql = check_and_resolve(sql, db, data_precision)
        except QuerySyntaxError as e:
            return 500, envelope(status="FAIL", description=str(e))
        except QueryRejected as e:
            return 400, envelope(status="INVALID_POST_DATA", description=str(e))
        queries: list[dict] = []
        status, res = self._run(ch_sql, queries)
        if status != 200:
            return status, res
        names, types, data = res
        result = {
            "columns": names,
            "values": _values(data, types) or None,
            "schemas": [{"unit": "", "type": 0, "value_type": t, "pre_as": "", "label_type": ""} for t in types],
        }
        return 200, envelope(result, debug={"query_sqls": queries} if debug else None)

    def _run(self, ch_sql: str, log: list[dict], shape: str | None = None):
        """Execute one query: (200, (names, types, columns)) or (500, FAIL envelope); ``log`` gets the
        debug entry either way. ``shape``: the key of its result columns (default: the SQL)."""
        t0 = time.perf_counter()
        entry = {"IP": "", "Sql": ch_sql, "QueryTime": "", "QueryUUID": str(uuid.uuid4()), "Error": ""}
        log.append(entry)
        key = shape or ch_sql
        try:
            with self._lock:
                res = self.client.query(ch_sql, settings=self._settings)
                names, types = list(res.column_names), [t.name for t in res.column_types]
                if names:
                    self._remember(key, names, types)
                elif key in self._columns:
                    names, types = (list(x) for x in self._columns[key])
                    self._columns.move_to_end(key)
                else:           # chDB sends no header block for an empty result: ask for the columns
                    desc = self.client.query(f"DESCRIBE ({ch_sql})", settings=self._settings).result_rows
                    names, types = [r[0] for r in desc], [r[1] for r in desc]
                    self._remember(key, names, types)
        except Exception as e:
            msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            entry.update(QueryTime=f"{time.perf_counter() - t0:.9f}s", Error=msg)
            return 500, envelope(status="FAIL", description=msg, debug={"query_sqls": log})
        entry["QueryTime"] = f"{time.perf_counter() - t0:.9f}s"
        return 200, (names, types, res.result_columns)

    def _remember(self, key: str, names: list[str], types: list[str]) -> None:
        self._columns[key] = (tuple(names), tuple(types))
        self._columns.move_to_end(key)
        if len(self._columns) > COLUMN_CACHE_SIZE:
            self._columns.popitem(last=False)
