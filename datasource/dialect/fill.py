"""Time fill: ``time(time, N, W, 0|null)`` gives every series a row for every bucket of the WHERE
time range, as DeepFlow's TimeFill callback does, so graphs draw 0 (or a gap Grafana can see as
null) instead of joining the points around a silence.

A series is one combination of the tag columns (schema type 0) other than the bucket; metric
columns of an inserted row are the fill value. Like DeepFlow, only the first ``SERIES_LIMIT`` series
are filled; a range with more than ``BUCKETS_MAX`` buckets is left as it is (memory stays bounded).
Buckets follow the SQL's ``toStartOfInterval`` (epoch-aligned, UTC, minus the offset).
"""

from __future__ import annotations

from itertools import pairwise

SERIES_LIMIT = 20
BUCKETS_MAX = 20_000


def fill_buckets(fill: tuple | None, columns: list[str], schemas: list[dict], values: list[list]) -> list[list]:
    """``values`` with the missing buckets of the first series inserted; time order kept when the
    rows came ordered by time (ascending or descending), else grouped by series."""
    if fill is None:
        return values
    name, interval, offset, value, start, end = fill
    if start is None or end is None or end < start or name not in columns:
        return values
    t = columns.index(name)
    first = int((start - offset) // interval * interval + offset)
    last = int((end - offset) // interval * interval + offset)
    if (last - first) // interval + 1 > BUCKETS_MAX:
        return values
    kinds = [s.get("type", 0) for s in schemas] if len(schemas) == len(columns) else [0] * len(columns)
    keys = [i for i, k in enumerate(kinds) if k == 0 and i != t]
    metrics = [i for i, k in enumerate(kinds) if k == 1]
    blank = 0 if value == "0" else None

    series: dict[tuple, set] = {}
    for row in values:
        key = tuple(row[i] for i in keys)
        seen = series.get(key)
        if seen is None:
            if len(series) >= SERIES_LIMIT:
                continue
            seen = series[key] = set()
        seen.add(row[t])
    if not series and not keys:          # one series and no row at all: all of it is the fill value
        series[()] = set()
    added: list[list] = []
    for key, seen in series.items():
        for bucket in range(first, last + 1, interval):
            if bucket in seen:
                continue
            row = [None] * len(columns)
            for i, v in zip(keys, key, strict=True):
                row[i] = v
            for i in metrics:
                row[i] = blank
            row[t] = bucket
            added.append(row)
    if not added:
        return values
    times = [row[t] for row in values]
    rank = {key: n for n, key in enumerate(series)}
    out = values + added
    if all(a <= b for a, b in pairwise(times)):
        out.sort(key=lambda r: r[t])             # stable: series keep their order within a bucket
    elif all(a >= b for a, b in pairwise(times)):
        out.sort(key=lambda r: r[t], reverse=True)
    else:
        n = len(rank)
        out.sort(key=lambda r: (rank.get(tuple(r[i] for i in keys), n), r[t]))
    return out
