# cython: annotation_typing=False
"""Per-flow deltas → ``flow_metrics`` rows at 1 s and 1 m (datamodel §3, "How the agent produces
them"): flow-seconds into ``network`` / ``network_map``, L7 records into ``application`` /
``application_map``.

Python only appends tuples; grouping, the single-side split and the minute roll-up run in
Arrow's C++ group-by. Any column that is not a key is a meter: ``*_max`` and direction_score are
maxed, the rest summed. Close events come from the l4_flow_log close rows and count in the
second of the flow's last packet (closed_flow and one counter per close_type, §4).
"""

from __future__ import annotations

import functools
import logging
from collections import defaultdict

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from collector.flow.report import APP_COLUMNS, FS_COLUMNS, FS_KEY, L4_COLUMNS
from collector.tagging import EPC_INDEX, RESOURCE_COLUMNS, TagRegistry
from flowscope.enums import CLOSE_TYPE_STATUS, FAIL_SUMS

log = logging.getLogger("flowscope.metrics")

# Columns that identify a row (everything else is a meter).
KEYS = frozenset(FS_KEY) | {"time", "l7_protocol", "endpoint", "role", "ip4", "ip6"}
# Derived sums stored next to their parts.
DERIVED = {"l7_error": ("l7_client_error", "l7_server_error"), "error": ("client_error", "server_error"),
           **FAIL_SUMS}
# close_type → its counter column (only the types that have one).
CLOSE_COUNTERS = {ct: name for ct, (_, name) in CLOSE_TYPE_STATUS.items() if name}
COUNTER_COLUMNS = tuple(sorted(set(CLOSE_COUNTERS.values()))) + ("closed_flow",)

_L4 = {c: i for i, c in enumerate(L4_COLUMNS)}
_CLOSE_SRC = ("time",) + FS_KEY + ("close_type",)
_CLOSE_IDX = tuple(_L4[c] for c in _CLOSE_SRC)

_TYPES: dict[str, pa.DataType] = {
    "time": pa.uint32(), "tag_id_0": pa.uint32(), "tag_id_1": pa.uint32(), "ip4_0": pa.uint32(),
    "ip4_1": pa.uint32(), "ip6_0": pa.binary(16), "ip6_1": pa.binary(16), "is_ipv4": pa.uint8(),
    "protocol": pa.uint8(), "server_port": pa.uint16(), "observation_point": pa.string(),
    "capture_nic": pa.uint32(), "tunnel_type": pa.uint8(), "direction_score": pa.uint8(),
    "l7_protocol": pa.uint8(), "endpoint": pa.string(),
}
_MAP_KEYS = FS_KEY
_TX_RX = [(c, c[:-3] + "_rx") for c in FS_COLUMNS if c.endswith("_tx")] + [
    ("syn_count", "synack_count"), ("retrans_syn", "retrans_synack")]


def _is_max(name: str) -> bool:
    return name == "direction_score" or name.endswith("_max")


def _col_type(name: str) -> pa.DataType:
    if name in _TYPES:
        return _TYPES[name]
    return pa.float64() if name.endswith("_sum") else pa.uint64()


def _table(columns: tuple[str, ...], rows: list[tuple]) -> pa.Table:
    """Row tuples → Arrow columns: zip(*rows) transposes in C, then each column goes to numpy
    (np.fromiter) or, for strings and addresses, straight to Arrow."""
    if not rows:
        return pa.table({name: pa.array([], _col_type(name)) for name in columns if not name.startswith("~")})
    n = len(rows)
    out = {}
    for name, col in zip(columns, zip(*rows, strict=True), strict=True):
        if name[0] == "~":
            continue
        t = _col_type(name)
        if pa.types.is_string(t) or pa.types.is_binary(t) or pa.types.is_fixed_size_binary(t):
            out[name] = pa.array(col, t)
        else:
            out[name] = pa.array(_numbers(name, col, _np_dtype(t), n), t)
    return pa.table(out)


@functools.cache
def _np_dtype(t: pa.DataType) -> np.dtype:
    """numpy's dtype of a numeric Arrow type (``to_pandas_dtype`` would import pandas)."""
    return np.dtype({"double": "float64", "float": "float32"}.get(str(t), str(t)))


def _numbers(name: str, col: tuple, dtype: np.dtype, n: int) -> np.ndarray:
    """A numeric column; a negative value in an unsigned column (a duration from clocks that
    disagree) becomes 0 and is logged, rather than losing the whole flush."""
    try:
        return np.fromiter(col, dtype, n)
    except OverflowError:
        wide = np.fromiter(col, np.float64 if dtype.kind == "f" else np.int64, n)
        log.warning("metrics: %d negative value(s) in %s set to 0", int((wide < 0).sum()), name)
        return wide.clip(0).astype(dtype)


class MetricsAggregator:
    """Buffers flow-seconds and close events; ``flush`` returns finished Arrow tables by name.

    1 s rows are emitted at every flush; 1 m rows once data time has passed the end of their
    minute by ``minute_grace_s`` (late close events for an emitted minute become extra rows,
    which the querier sums like any other).
    """

    def __init__(self, registry: TagRegistry, *, agent_id: int = 1, minute_grace_s: int = 5,
                 family: str = "network") -> None:
        self.family = family                # "network" (flow-seconds) or "application" (L7 records)
        self.columns = FS_COLUMNS if family == "network" else APP_COLUMNS
        self.registry = registry
        self.agent_id = agent_id
        self.grace = minute_grace_s
        self._seconds: list[tuple] = []
        self._closes: list[tuple] = []
        self._minutes: list[pa.Table] = []     # grouped 1 m rows of minutes not emitted yet
        self.rows_in = 0

    # -- input --------------------------------------------------------------------------------
    def add_seconds(self, rows: list[tuple]) -> None:
        self._seconds.extend(rows)
        self.rows_in += len(rows)

    def add_l4(self, rows: list[tuple]) -> None:
        """Keep the close events of l4_flow_log rows (ForcedReport rows are not closes)."""
        ict = _L4["close_type"]
        idx = _CLOSE_IDX
        self._closes.extend(tuple(r[i] for i in idx) for r in rows if r[ict] != 5)

    def pending(self) -> int:
        return len(self._seconds) + len(self._closes)

    # -- output -------------------------------------------------------------------------------
    def flush(self, data_sec: int | None, *, final: bool = False) -> dict[str, list[pa.Table]]:
        """Aggregate what is buffered; ``data_sec`` is the collector's current data second."""
        out: dict[str, list[pa.Table]] = defaultdict(list)
        flat = self._flat()
        fam = f"flow_metrics.{self.family}"
        if flat is not None:
            out[f"{fam}_map.1s"].append(self._map_rows(flat))
            out[f"{fam}.1s"].append(self._single_rows(flat))
            self._minutes.append(_group(self._floor_minutes(flat)))
        ready = self._ready_minutes(data_sec, final)
        if ready is not None:
            out[f"{fam}_map.1m"].append(self._map_rows(ready))
            out[f"{fam}.1m"].append(self._single_rows(ready))
        return dict(out)

    def _ready_minutes(self, data_sec: int | None, final: bool) -> pa.Table | None:
        """The 1 m rows of every minute that data time has left by the grace, grouped in one
        table (time is a key, so each minute stays apart); the others stay buffered. One pass
        for all minutes: a replay moves through minutes faster than a live capture, and each
        Arrow group-by and shaping step has a fixed cost."""
        parts = self._minutes
        if not parts or (not final and data_sec is None):
            return None
        if len(parts) > 1:               # a flush of close events only lacks the per-second meters
            schema = pa.unify_schemas([p.schema for p in parts])
            table = pa.concat_tables([_zero_fill(p, schema).select(schema.names) for p in parts])
        else:
            table = parts[0]
        if final:
            self._minutes = []
            return _group(table)
        ready = pc.less_equal(table["time"], pa.scalar(data_sec - 60 - self.grace, pa.int64()))
        if not pc.any(ready).as_py():
            self._minutes = [table]
            return None
        rest = table.filter(pc.invert(ready))
        self._minutes = [rest] if rest.num_rows else []
        return _group(table.filter(ready))

    def _flat(self) -> pa.Table | None:
        """Buffered seconds + close events as one grouped table in FS_COLUMNS form."""
        if not self._seconds and not self._closes:
            return None
        parts = []
        if self._seconds:
            parts.append(_table(self.columns, self._seconds))
            self._seconds = []
        if self._closes:
            parts.append(self._close_table(self._closes))
            self._closes = []
        if len(parts) == 2:
            a, b = parts
            a, b = _zero_fill(a, b.schema), _zero_fill(b, a.schema)
            return _group(pa.concat_tables([a, b.select(a.column_names)]))
        return _group(parts[0])

    def _close_table(self, closes: list[tuple]) -> pa.Table:
        t = _table(_CLOSE_SRC, closes)
        ct = t["close_type"].to_numpy()
        t = t.drop_columns(["close_type"])
        n = t.num_rows
        t = t.append_column("closed_flow", pa.array(np.ones(n, np.uint64)))
        for name in COUNTER_COLUMNS[:-1]:
            types = [k for k, v in CLOSE_COUNTERS.items() if v == name]
            t = t.append_column(name, pa.array(np.isin(ct, types).astype(np.uint64)))
        return t

    @staticmethod
    def _floor_minutes(t: pa.Table) -> pa.Table:
        secs = t["time"].to_numpy()
        return t.set_column(t.schema.get_field_index("time"), "time", pa.array(secs - secs % 60, pa.uint32()))

    # -- shaping to the stored tables -----------------------------------------------------------
    def _tags(self) -> np.ndarray:
        return self.registry.array()

    def _map_rows(self, t: pa.Table) -> pa.Table:
        tags = self._tags()
        t0 = t["tag_id_0"].to_numpy()
        ip4_0 = t["ip4_0"].to_numpy().copy()
        ip4_0[tags[t0, EPC_INDEX] == -2] = 0          # the client end's Internet IP is 0.0.0.0 (§6.5)
        cols = {n: t[n] for n in t.column_names if n not in ("tag_id_0", "tag_id_1", "ip4_0")}
        cols["ip4_0"] = pa.array(ip4_0, pa.uint32())
        cols.update(_expand(tags, t0, "_0"))
        cols.update(_expand(tags, t["tag_id_1"].to_numpy(), "_1"))
        cols["agent_id"] = pa.array(np.full(t.num_rows, self.agent_id, np.uint16))
        return _with_derived(pa.table(cols))

    def _single_rows(self, t: pa.Table) -> pa.Table:
        """One row per end observed as c / s / local, keyed by that end's IP and role (§3c)."""
        tags = self._tags()
        obs = t["observation_point"]
        parts = []
        for side, points, roles in ((0, ("c", "c-p", "local"), {"c": 0, "local": 2}),     # c-p/s-p: eBPF (§3c)
                                    (1, ("s", "s-p", "local"), {"s": 1, "local": 2})):
            sel = t.filter(pc.is_in(obs, pa.array(points)))
            if not sel.num_rows:
                continue
            tid = sel[f"tag_id_{side}"].to_numpy()
            ip4 = sel[f"ip4_{side}"].to_numpy().copy()
            if side == 0:
                ip4[tags[tid, EPC_INDEX] == -2] = 0
            role = np.where(pc.equal(sel["observation_point"], "local").to_numpy(zero_copy_only=False),
                            roles["local"], roles[points[0]]).astype(np.uint8)
            cols: dict[str, pa.Array] = {
                "time": sel["time"], "ip4": pa.array(ip4, pa.uint32()), "ip6": sel[f"ip6_{side}"],
                "is_ipv4": sel["is_ipv4"], "protocol": sel["protocol"], "role": pa.array(role),
                "server_port": sel["server_port"] if side == 1 else pa.array(np.zeros(sel.num_rows, np.uint16)),
            }
            cols.update(_expand(tags, tid, ""))
            for name in sel.column_names:
                if name in _MAP_KEYS or name == "time":
                    continue
                cols[name] = sel[name]
            if side == 1:   # the server's row is seen from the server: its tx is what it sent
                for tx, rx in _TX_RX:
                    if tx in cols and rx in cols:
                        cols[tx], cols[rx] = cols[rx], cols[tx]
            parts.append(pa.table(cols))
        if not parts:
            return pa.table({})
        grouped = _group(pa.concat_tables(parts))
        return _with_derived(grouped.append_column(
            "agent_id", pa.array(np.full(grouped.num_rows, self.agent_id, np.uint16))))


_RESOURCE_PREFIXES = tuple(RESOURCE_COLUMNS)


def _expand(tags: np.ndarray, tid: np.ndarray, suffix: str) -> dict[str, pa.Array]:
    block = tags[tid] if len(tid) else np.zeros((0, len(RESOURCE_COLUMNS)), np.int64)
    return {f"{name}{suffix}": pa.array(block[:, i]) for i, name in enumerate(RESOURCE_COLUMNS)}


def _group(t: pa.Table) -> pa.Table:
    """Group by the key columns; sum the counters and max the maxima."""
    names = t.column_names
    keys = [c for c in names if c in KEYS or c.startswith(_RESOURCE_PREFIXES)]
    meters = [c for c in names if c not in keys]
    aggs = [(c, "max") if _is_max(c) else (c, "sum") for c in meters]
    g = t.group_by(keys, use_threads=False).aggregate(aggs)
    return g.rename_columns([n[:-4] if n.endswith(("_sum", "_max")) and n[:-4] in names else n
                             for n in g.column_names])


def _appended(t: pa.Table, columns: dict[str, pa.Array]) -> pa.Table:
    """``t`` with ``columns`` added, in one new table: each ``append_column`` copies the column list,
    and a flush adds tens of columns to several tables (a fixed cost paid every few seconds live)."""
    if not columns:
        return t
    return pa.Table.from_arrays(t.columns + list(columns.values()), names=t.column_names + list(columns))


def _zero_fill(t: pa.Table, schema: pa.Schema) -> pa.Table:
    """Add the columns of ``schema`` that ``t`` lacks, as zeros (meters it has nothing for)."""
    have = set(t.column_names)
    return _appended(t, {f.name: pa.array(np.zeros(t.num_rows, f.type.to_pandas_dtype()))
                         for f in schema if f.name not in have})


def _with_derived(t: pa.Table) -> pa.Table:
    """The stored sums (datamodel §3b: failure sums from the per-close_type counters, l7_error,
    error) from their parts."""
    have = set(t.column_names)
    added: dict[str, pa.Array] = {}
    for name, parts in DERIVED.items():
        if name in have:
            continue
        total = None
        for p in parts:
            if p in have:
                col = t[p].to_numpy()
                total = col if total is None else total + col
        if total is not None:
            added[name] = pa.array(total, pa.uint64())
    return _appended(t, added)
