"""DeepFlow's aggregate functions over catalogue metrics (reference/deepflow-querier.md §4).

A metric is a per-row value plus the rows it is defined on (``Metric.value`` / ``Metric.cond``);
each function reads them by the metric's type:

* counters/gauges are time-weighted by ``Avg``: Σx divided by the number of datasource intervals
  in the window (a bucket of ``time()``, or the WHERE time range), so ``Avg(byte)`` on 1m data is
  bytes per minute and ``PerSecond`` divides by seconds;
* ratios (quotient, percentage, and latencies stored as sum/count) average as Σnum / Σden;
* raw latencies are 0 when there was no sample: every function skips those rows.

On ``flow_metrics`` a function that cannot be computed from the stored rows in one pass makes the
query two-layer (translate.py): ``partial`` gives the inner expression computed per group and
datasource interval, and the outer expression that aggregates it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from datasource.dialect.catalog import (
    BOUNDED_GAUGE,
    COUNTER,
    DELAY,
    FUNCTIONS,
    GAUGE,
    PERCENTAGE,
    QUOTIENT,
    Metric,
)


def _if(agg: str, value: str, cond: str, params: str = "") -> str:
    """``aggIf(params)(value, cond)``, or plain ``agg(params)(value)`` when the metric has no condition."""
    if cond:
        return f"{agg}If{params}({value}, {cond})"
    return f"{agg}{params}({value})"


def ratio_of_sums(m: Metric) -> str:
    """Σnum / Σden (NULL without a denominator), in % for percentages — DeepFlow's Avg of a ratio."""
    num, den = f"sum({m.num})", f"sum({m.den})"
    if m.kind == PERCENTAGE:
        v = f"least({num} / {den}, 1)"
        v = f"(1 - {v}) * 100" if m.one_minus else f"{v} * 100"
    else:
        v = f"{num} / {den}"
    return f"if({den} > 0, {v}, NULL)"


def apdex(value: str, cond: str, t: str) -> str:
    """Apdex(T) in %: (satisfied + tolerating / 2) / samples, satisfied ≤ T < tolerating ≤ 4T."""
    base = f"{cond} AND " if cond else ""
    total = f"countIf({cond})" if cond else "count()"
    return (f"if({total} > 0, (countIf({base}{value} <= {t}) + countIf({base}{value} > {t} AND {value} <= 4 * {t}) "
            f"* 0.5) / {total} * 100, NULL)")


def one_layer(func: str, m: Metric, params: list[str], intervals: Callable[[], str]) -> str:
    """The function over the stored rows directly. ``intervals()``: datasource intervals in the window,
    asked only by the functions that divide by it: a query whose answer does not depend on the length
    of its time range must not make its cached template depend on it (dialect/shape.py)."""
    v, c = m.value, m.cond
    if func == "Sum":
        return _if("sum", v, c if m.kind == DELAY else "")
    if func == "Avg":
        if m.kind in (COUNTER, GAUGE):
            return f"sum({v}) / {intervals()}"
        if m.is_ratio:
            return ratio_of_sums(m)
        return _if("avg", v, c)
    return _rowwise(func, v, c, params)


def _rowwise(func: str, v: str, c: str, params: list[str]) -> str:
    p = f"({params[0]})" if params else ""
    if func == "AAvg":
        return _if("avg", v, c)
    if func == "Max":
        return _if("max", v, c)
    if func == "Min":
        return _if("min", v, c)
    if func == "Last":
        return _if("anyLast", v, c)
    if func == "Percentile":
        return _if("quantile", v, c, p)
    if func == "PercentileExact":
        return _if("quantileExact", v, c, p)
    if func == "Stddev":
        return _if("stddevPopStable", v, c)
    if func == "Spread":
        return f"{_if('max', v, c)} - {_if('min', v, c)}"
    if func == "Rspread":
        return f"({_if('max', v, c)} + 1e-15) / ({_if('min', v, c)} + 1e-15)"
    if func == "Apdex":
        return apdex(v, c, params[0])
    raise KeyError(func)


def needs_two_layers(func: str, m: Metric) -> bool:
    """DeepFlow's METRICS_TYPE_UNLAY_FUNCTIONS: which (function, metric type) pairs one pass computes."""
    return m.kind not in FUNCTIONS[func].one_layer


@dataclass(frozen=True)
class Partial:
    """A two-layer aggregate: ``inner`` per group and datasource interval, named ``alias``; ``outer``
    aggregates that column."""

    inner: str
    alias: str
    outer: str


def partial(func: str, m: Metric, params: list[str]) -> Partial:
    v, c = m.value, m.cond
    name = m.name
    if m.kind in (COUNTER, GAUGE):
        alias = f"_sum_{name}"
        return Partial(f"sum({v})", alias, _outer(func, alias, params))
    if m.kind in (PERCENTAGE, QUOTIENT):
        alias = f"_div_{name}"
        return Partial(ratio_of_sums(m), alias, _outer(func, alias, params))
    if m.kind == BOUNDED_GAUGE:
        alias = f"_avg_{name}"
        return Partial(f"avg({v})", alias, _outer(func, alias, params))
    # delays: what the outer function needs from each interval
    if func in ("Avg", "AAvg"):
        alias = f"_avg_{name}"
        inner = ratio_of_sums(m) if m.is_ratio else _if("avg", v, c)
        return Partial(inner, alias, f"avgIf({alias}, {alias} > 0)")
    if func in ("Max", "Min", "Sum"):
        agg = {"Max": "max", "Min": "min", "Sum": "sum"}[func]
        alias = f"_{agg}_{name}"
        return Partial(f"{agg}IfOrNull({v}, {c})" if c else f"{agg}({v})", alias, f"{agg}({alias})")
    alias = f"_arr_{name}"
    return Partial(f"groupArrayIf({v}, {c})" if c else f"groupArray({v})", alias, _outer_array(func, alias, params))


def _outer(func: str, col: str, params: list[str]) -> str:
    """The function over per-interval values (two-layer outer; Avg is their arithmetic mean)."""
    if func == "Sum":
        return f"sum({col})"
    if func in ("Avg", "AAvg"):
        return f"avg({col})"
    return _rowwise(func, col, "", params)


def _outer_array(func: str, col: str, params: list[str]) -> str:
    """The function over all samples gathered per interval (``-Array`` combinators)."""
    p = f"({params[0]})" if params else ""
    simple = {"Last": "anyLastArray", "Percentile": f"quantileArray{p}", "PercentileExact": f"quantileExactArray{p}",
              "Stddev": "stddevPopStableArray"}
    if func in simple:
        return f"{simple[func]}({col})"
    if func == "Spread":
        return f"maxArray({col}) - minArray({col})"
    if func == "Rspread":
        return f"(maxArray({col}) + 1e-15) / (minArray({col}) + 1e-15)"
    if func == "Apdex":
        t = params[0]
        total = f"sum(length({col}))"
        return (f"if({total} > 0, sumArray(arrayMap(x -> if(x <= {t}, 1, if(x <= 4 * {t}, 0.5, 0)), {col})) "
                f"/ {total} * 100, NULL)")
    raise KeyError(func)


def unit(func: str, metric_unit: str) -> str:
    """The unit of a function's result (PerSecond → x/s, Percentage/Apdex → %)."""
    overwrite = FUNCTIONS[func].unit
    return overwrite.replace("$unit", metric_unit) if "$unit" in overwrite else overwrite
