# cython: annotation_typing=False
"""Rows → ClickHouse: schema-driven Arrow conversion, batched inserts on a background thread,
a bounded queue, and a disk spool that keeps data through storage outages.

The collector hands over plain row tuples with their column names (``RowBatch``) or ready Arrow
tables; this module owns everything about the stored types. Columns a batch leaves at their
zero value are not sent when the table has no DEFAULT expression for them (ClickHouse fills the
same zero), which is most of a flow row's resource and tunnel columns.
"""

from __future__ import annotations

import array
import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.ipc as ipc

from collector.tagging import RESOURCE_COLUMNS, TagRegistry
from flowscope.enums import CLOSE_TYPE_STATUS

log = logging.getLogger("flowscope.writer")

_INT_TYPES = {"UInt8": np.uint8, "UInt16": np.uint16, "UInt32": np.uint32, "UInt64": np.uint64,
              "Int8": np.int8, "Int16": np.int16, "Int32": np.int32, "Int64": np.int64,
              "Float32": np.float32, "Float64": np.float64, "DateTime": np.uint32, "IPv4": np.uint32}
_STATUS_LUT = np.zeros(256, np.uint8)
for _ct, (_st, _) in CLOSE_TYPE_STATUS.items():
    _STATUS_LUT[_ct] = _st
_STATUS_LUT[[i for i in range(256) if i not in CLOSE_TYPE_STATUS]] = 2


@dataclass(frozen=True)
class Column:
    name: str
    ch_type: str
    arrow: pa.DataType
    numpy: type | None          # numpy dtype for numeric, non-Nullable columns
    zero_default: bool          # no DEFAULT expression: omitting it stores the type's zero


def _unwrap(t: str) -> tuple[str, bool]:
    nullable = False
    while True:
        if t.startswith("LowCardinality(") and t.endswith(")"):
            t = t[15:-1]
        elif t.startswith("Nullable(") and t.endswith(")"):
            t, nullable = t[9:-1], True
        else:
            return t, nullable


def arrow_type(ch_type: str) -> tuple[pa.DataType, type | None]:
    """The Arrow (and numpy) type clickhouse-connect's Arrow insert accepts for a column."""
    base, _ = _unwrap(ch_type)
    if base in _INT_TYPES:
        np_t = _INT_TYPES[base]
        return pa.from_numpy_dtype(np_t), np_t
    if base.startswith("DateTime64"):
        return pa.timestamp("us"), np.int64
    if base == "IPv6":
        return pa.binary(16), None
    if base.startswith("Array("):
        inner, _ = arrow_type(base[6:-1])
        return pa.list_(inner), None
    return pa.string(), None


def load_columns(client, table: str) -> dict[str, Column]:
    """The stored columns of ``table`` (``db.name``; dotted names are quoted here)."""
    db, name = table.split(".", 1)
    rows = client.query(f"DESCRIBE TABLE `{db}`.`{name}`").result_rows
    out = {}
    for r in rows:
        col, ch_type, default_kind = r[0], r[1], r[2]
        a, n = arrow_type(ch_type)
        if _unwrap(ch_type)[1]:             # Nullable: None values go through Arrow's own conversion
            n = None
        out[col] = Column(col, ch_type, a, n, default_kind == "")
    return out


@dataclass
class RowBatch:
    """Row tuples plus their column names (collector.flow.report layouts)."""

    columns: tuple[str, ...]
    rows: list[tuple]


class Converter:
    """RowBatch → Arrow table in a table's stored types; expands tag ids, derives columns."""

    def __init__(self, columns: dict[str, Column], registry: TagRegistry | None = None) -> None:
        self.columns = columns
        self.registry = registry
        self._plans: dict[tuple[str, ...], list] = {}     # row layout → _plan

    def _tag_block(self) -> np.ndarray:
        return self.registry.array()

    def convert(self, batch: RowBatch) -> pa.Table:
        cols: dict[str, pa.Array] = {}
        rows = batch.rows
        n = len(rows)
        if not n:
            return pa.table({"time": pa.array([], pa.uint32())})
        width = len(batch.columns)
        if min(map(len, rows)) != width or max(map(len, rows)) != width:
            raise ValueError(f"rows of unequal length for {width} columns")
        data = self._gather(batch.columns, rows)
        attrs = data.get("~attributes")
        if attrs is not None and "attribute_names" in self.columns and attrs.count(None) != n:
            self._attributes(cols, attrs)
        for name, values in data.items():
            if name[0] == "~" or name.startswith("tag_id_"):
                continue
            self._put(cols, name, values)
        if "~fin_tx" in data and "fin_count" in self.columns:
            fin = data["~fin_tx"].astype(np.uint64) + data["~fin_rx"].astype(np.uint64)
            self._put(cols, "fin_count", fin)
        if "l7_client_error" in data and "l7_error" in self.columns and "l7_error" not in data:
            err = data["l7_client_error"].astype(np.uint32) + data["l7_server_error"].astype(np.uint32)
            self._put(cols, "l7_error", err)                  # datamodel §1e: client + server errors
        if "close_type" in data and "status" in self.columns:
            self._put(cols, "status", _STATUS_LUT[data["close_type"].astype(np.uint16) & 0xFF])
        for suffix in ("_0", "_1"):
            ids = data.get(f"tag_id{suffix}")
            if ids is not None and self.registry is not None:
                block = self._tag_block()[ids.astype(np.int64)]
                for i, res in enumerate(RESOURCE_COLUMNS):
                    self._put(cols, res + suffix, block[:, i])
        return pa.table(cols) if cols else pa.table({"time": pa.array([], pa.uint32())})

    def _gather(self, names: tuple[str, ...], rows: list[tuple]) -> dict[str, np.ndarray | list]:
        """The columns of ``rows`` this table needs: numbers into numpy arrays, the rest into
        lists. Rows are transposed ``_CHUNK`` at a time (zip(*chunk), in C) and each chunk's
        numbers are converted while it is in the CPU cache: transposing a whole batch at once
        walks every row again for each column, and that, not the conversion, was the cost."""
        plan = self._plans.get(names)
        if plan is None:
            plan = self._plans[names] = self._plan(names)
        n = len(rows)
        data: dict[str, np.ndarray | list] = {name: [] if dtype is None else np.empty(n, dtype)
                                              for _, name, dtype in plan}
        targets = [(j, data[name], _TYPECODES.get(dtype)) for j, name, dtype in plan]
        frombuffer, pyarray = np.frombuffer, array.array
        for i in range(0, n, _CHUNK):
            part = tuple(zip(*rows[i:i + _CHUNK], strict=True))
            for j, target, code in targets:
                if code is None:
                    target.extend(part[j])
                    continue
                # array.array reads a tuple of ints ~6x faster than numpy's element-wise assignment;
                # what it refuses (a float in an integer column, a value out of range) goes the
                # numpy way, which truncates floats and raises for out-of-range values, as before
                try:
                    target[i:i + _CHUNK] = frombuffer(pyarray(code, part[j]), target.dtype)
                except (TypeError, OverflowError):
                    target[i:i + _CHUNK] = part[j]
        return data

    def _plan(self, names: tuple[str, ...]) -> list[tuple[int, str, type | None]]:
        """(position, name, numpy dtype or None for a list) of each column ``convert`` reads:
        the stored ones, in their stored type, and those derived columns come from."""
        plan = []
        for j, name in enumerate(names):
            col = self.columns.get(name)
            if col is not None and name[0] != "~" and not name.startswith("tag_id_"):
                plan.append((j, name, col.numpy))
            elif name in _SOURCES:
                plan.append((j, name, _SOURCES[name]))
        return plan

    def _attributes(self, cols: dict, attrs: list) -> None:
        """The rows' attribute dicts (or None) → attribute_names / attribute_values. Arrow reads the
        dicts as one map array in C; a value that is not a string takes the Python way (str())."""
        try:
            m = pa.array(attrs, _ATTR_MAP)
        except (pa.ArrowInvalid, pa.ArrowTypeError):
            self._put(cols, "attribute_names", [list(a) if a else [] for a in attrs])
            self._put(cols, "attribute_values", [list(map(str, a.values())) if a else [] for a in attrs])
            return
        if not len(m.keys):                  # only empty dicts: both columns stay at their default
            return
        offsets = m.offsets                  # no validity bitmap: a None row is an empty list
        self._put(cols, "attribute_names", pa.ListArray.from_arrays(offsets, m.keys))
        self._put(cols, "attribute_values", pa.ListArray.from_arrays(offsets, m.items))

    def table(self, t: pa.Table) -> pa.Table:
        """An aggregated Arrow table → stored types, same omission rule."""
        cols: dict[str, pa.Array] = {}
        for name in t.column_names:
            if name in self.columns:
                self._put(cols, name, t[name])
        return pa.table(cols)

    def _put(self, cols: dict, name: str, values) -> None:
        col = self.columns.get(name)
        if col is None:
            return
        if col.numpy is not None:
            if isinstance(values, pa.ChunkedArray | pa.Array):
                arr = values.to_numpy().astype(col.numpy, copy=False)
            elif isinstance(values, np.ndarray):
                arr = values.astype(col.numpy, copy=False)
            else:
                arr = _ints(values, col.numpy)
            if col.zero_default and not arr.any():
                return
            cols[name] = pa.array(arr, col.arrow)
            return
        if isinstance(values, pa.ChunkedArray | pa.Array):
            arr = values.cast(col.arrow)
            if col.zero_default and _all_zero(arr, col.arrow):
                return
            cols[name] = arr
            return
        if isinstance(values, np.ndarray):
            values = values.tolist()
        elif not isinstance(values, list | tuple):
            values = list(values)
        if col.zero_default and _all_default_py(values, col.arrow):
            return
        cols[name] = pa.array(values, col.arrow)


_ZERO16 = bytes(16)
_ATTR_MAP = pa.map_(pa.string(), pa.string())
_CHUNK = 512        # rows transposed at a time (Converter._gather)
# array.array type codes of the numpy types numeric columns are read in (same sizes on Linux x86-64
# and arm64; checked at import)
_TYPECODES: dict[type | None, str] = {np.uint8: "B", np.uint16: "H", np.uint32: "I", np.uint64: "Q", np.int8: "b",
                                      np.int16: "h", np.int32: "i", np.int64: "q", np.float32: "f",
                                      np.float64: "d"}
assert all(array.array(c).itemsize == np.dtype(t).itemsize for t, c in _TYPECODES.items())
# Row columns that are not stored as such but that stored columns come from, with the numpy type
# they are read in (None: kept as Python objects).
_SOURCES: dict[str, type | None] = {"~fin_tx": np.uint64, "~fin_rx": np.uint64, "tag_id_0": np.int64,
                                    "tag_id_1": np.int64, "close_type": np.uint16, "l7_client_error": np.uint32,
                                    "l7_server_error": np.uint32, "~attributes": None}


def _ints(values, dtype) -> np.ndarray:
    """A column of Python numbers as a numpy array (out-of-range values raise, as astype did)."""
    return np.fromiter(values, dtype, len(values))


def _all_default_py(values: list, typ: pa.DataType) -> bool:
    if typ == pa.string():
        return values.count("") == len(values)
    if typ == pa.binary(16):
        return values.count(_ZERO16) == len(values)
    if pa.types.is_list(typ):
        return values.count([]) == len(values)
    return values.count(None) == len(values)     # Nullable: all NULL


def _all_zero(arr, typ: pa.DataType) -> bool:
    if typ == pa.binary(16):
        return arr.to_pylist().count(_ZERO16) == len(arr)
    if typ == pa.string():
        return arr.to_pylist().count("") == len(arr)
    return False


@dataclass
class WriterStats:
    rows_written: dict[str, int] = field(default_factory=dict)
    rows_dropped: dict[str, int] = field(default_factory=dict)
    rows_spooled: int = 0
    rows_replayed: int = 0
    spool_bytes: int = 0
    spool_dropped_bytes: int = 0
    insert_errors: int = 0
    last_error: str = ""


class Spool:
    """Arrow IPC files on disk, one per failed batch, replayed oldest first; bounded in bytes
    (the oldest file goes first when full, and is counted)."""

    def __init__(self, path: Path, max_bytes: int, stats: WriterStats) -> None:
        self.path = path
        self.max_bytes = max_bytes
        self.stats = stats
        self._seq = 0
        path.mkdir(parents=True, exist_ok=True)
        stats.spool_bytes = sum(p.stat().st_size for p in path.glob("*.arrow"))

    def files(self) -> list[Path]:
        return sorted(self.path.glob("*.arrow"))

    def put(self, table: str, t: pa.Table) -> None:
        self._seq += 1
        p = self.path / f"{time.time_ns():020d}-{self._seq:06d}-{table}.arrow"
        with pa.OSFile(str(p), "wb") as f, ipc.new_file(f, t.schema) as w:
            w.write_table(t)
        self.stats.spool_bytes += p.stat().st_size
        self.stats.rows_spooled += t.num_rows
        while self.stats.spool_bytes > self.max_bytes:
            files = self.files()
            if len(files) <= 1:
                break
            victim = files[0]
            size = victim.stat().st_size
            victim.unlink()
            self.stats.spool_bytes -= size
            self.stats.spool_dropped_bytes += size
            log.warning("spool over %d bytes: dropped %s", self.max_bytes, victim.name)

    def replay(self, insert: Callable[[str, pa.Table], None]) -> bool:
        """Insert spooled batches in order; stop at the first failure. True when empty."""
        for p in self.files():
            table = p.stem.split("-", 2)[2]
            with pa.memory_map(str(p)) as src:
                t = ipc.open_file(src).read_all()
            insert(table, t)
            size = p.stat().st_size
            p.unlink()
            self.stats.spool_bytes -= size
            self.stats.rows_replayed += t.num_rows
            log.info("replayed %d spooled rows into %s", t.num_rows, table)
        return True


class Writer:
    """Background inserter. ``put`` converts nothing: the writer thread does it, so the capture
    thread only pays for appending to a queue.

    ``block=True`` (file replay) makes ``put`` wait when the queue is full; live capture uses
    ``block=False`` and counts what it had to drop instead of stalling the capture ring.
    """

    def __init__(self, client, *, registry: TagRegistry | None = None, queue_batches: int = 64,
                 block: bool = True, spool_dir: Path | None = None, spool_max_bytes: int = 1 << 30,
                 retry_s: float = 5.0, hold_max_rows: int = 2_000_000) -> None:
        self.client = client
        self.registry = registry
        self.block = block
        self.stats = WriterStats()
        self._q: queue.Queue = queue.Queue(maxsize=queue_batches)
        self._converters: dict[str, Converter] = {}
        self._spool = Spool(spool_dir, spool_max_bytes, self.stats) if spool_dir else None
        self._retry_s = retry_s
        self.hold_max_rows = hold_max_rows
        self._held: list[tuple[str, RowBatch | pa.Table]] = []
        self._held_rows = 0
        self._next_retry = 0.0
        self._healthy = True
        self._thread = threading.Thread(target=self._run, name="flowscope-writer", daemon=True)
        self._thread.start()

    # -- producer side ----------------------------------------------------------------------
    def put(self, table: str, batch: RowBatch | pa.Table) -> None:
        n = _rows(batch)
        if not n:
            return
        try:
            self._q.put((table, batch), block=self.block)
        except queue.Full:
            self._count_dropped(table, batch)

    def close(self, timeout: float = 60.0) -> None:
        """Drain the queue and stop."""
        self._q.put(None)
        self._thread.join(timeout)

    def flush(self) -> None:
        """Wait until everything queued so far has been handled (written or spooled)."""
        self._q.join()

    def columns(self, table: str) -> dict[str, Column]:
        """The stored columns of ``table`` (read once from ClickHouse)."""
        return self._converter(table).columns

    # -- writer thread ----------------------------------------------------------------------
    def _converter(self, table: str) -> Converter:
        conv = self._converters.get(table)
        if conv is None:
            conv = self._converters[table] = Converter(load_columns(self.client, table), self.registry)
        return conv

    def _insert(self, table: str, t: pa.Table) -> None:
        db, name = table.split(".", 1)
        self.client.insert_arrow(f"`{db}`.`{name}`", t)

    def _run(self) -> None:
        while True:
            try:
                item = self._q.get(timeout=1.0)
            except queue.Empty:
                self._retry_spool()
                continue
            # Take whatever else is queued too and write each table once (inserts have a fixed cost).
            items = [item]
            while True:
                try:
                    items.append(self._q.get_nowait())
                except queue.Empty:
                    break
            try:
                stop = any(i is None for i in items)
                for table, batches in _by_table(i for i in items if i is not None):
                    for batch in _merged(batches):
                        self._handle(table, batch)
                if stop:
                    return
            finally:
                for _ in items:
                    self._q.task_done()

    def _handle(self, table: str, batch: RowBatch | pa.Table) -> None:
        try:
            conv = self._converter(table)
        except Exception as e:    # ClickHouse unreachable before this table's columns are known
            self._fail(e)
            self._hold(table, batch)
            return
        if self._held:            # older batches first
            self._release_held()
        try:
            t = conv.convert(batch) if isinstance(batch, RowBatch) else conv.table(batch)
        except Exception as e:  # a conversion bug must not kill the writer
            self.stats.insert_errors += 1
            self.stats.last_error = f"{table}: cannot convert batch: {e}"
            log.exception("cannot convert a batch for %s; dropped", table)
            self._count_dropped(table, batch)
            return
        self._write(table, t)

    def _hold(self, table: str, batch: RowBatch | pa.Table) -> None:
        """Keep a batch in memory until its table's columns can be read (bounded, counted)."""
        n = _rows(batch)
        if self._held_rows + n > self.hold_max_rows:
            self._count_dropped(table, batch)
            return
        self._held.append((table, batch))
        self._held_rows += n

    def _release_held(self) -> None:
        held, self._held, self._held_rows = self._held, [], 0
        for table, batch in held:
            self._handle(table, batch)

    def _count_dropped(self, table: str, batch: RowBatch | pa.Table) -> None:
        self.stats.rows_dropped[table] = self.stats.rows_dropped.get(table, 0) + _rows(batch)

    def _retry_spool(self) -> None:
        if self._held and time.monotonic() >= self._next_retry:
            self._release_held()
        if self._spool is None or self._healthy or time.monotonic() < self._next_retry:
            return
        try:
            self._spool.replay(self._insert)
            self._healthy = True
            log.info("ClickHouse is back; spool replayed")
        except Exception as e:
            self._fail(e)

    def _write(self, table: str, t: pa.Table) -> None:
        if self._spool is not None and not self._healthy:
            self._retry_spool()
            if not self._healthy:
                self._spool.put(table, t)
                return
        try:
            self._insert(table, t)
            self.stats.rows_written[table] = self.stats.rows_written.get(table, 0) + t.num_rows
        except Exception as e:
            self._fail(e)
            if self._spool is not None:
                self._spool.put(table, t)
                log.warning("ClickHouse unreachable (%s), spooling to %s (%d MB)", e, self._spool.path,
                            self.stats.spool_bytes >> 20)
            else:
                self._count_dropped(table, t)

    def _fail(self, e: Exception) -> None:
        self._healthy = False
        self._next_retry = time.monotonic() + self._retry_s
        self.stats.insert_errors += 1
        self.stats.last_error = str(e)[:500]

    def replay_spool(self) -> None:
        """Replay (on the writer thread, within a second) what a previous run left in the spool."""
        if self._spool is not None and self._spool.files():
            self._next_retry = 0.0
            self._healthy = False


def _rows(batch: RowBatch | pa.Table) -> int:
    return len(batch.rows) if isinstance(batch, RowBatch) else batch.num_rows


def _by_table(items) -> list[tuple[str, list]]:
    """Queued (table, batch) items grouped by table, in first-seen order."""
    groups: dict[str, list] = {}
    for table, batch in items:
        groups.setdefault(table, []).append(batch)
    return list(groups.items())


def _merged(batches: list) -> list[RowBatch | pa.Table]:
    """Several batches of one table as few: row batches with the same columns as one, Arrow tables
    as one. Sources with their own columns (packets and eBPF both write l7_flow_log) stay apart."""
    if len(batches) == 1:
        return batches
    rows: dict[tuple[str, ...], list[RowBatch]] = {}
    tables: list[pa.Table] = []
    for b in batches:
        if isinstance(b, RowBatch):
            rows.setdefault(b.columns, []).append(b)
        else:
            tables.append(b)
    out: list[RowBatch | pa.Table] = [
        group[0] if len(group) == 1 else RowBatch(columns, [r for b in group for r in b.rows])
        for columns, group in rows.items()]
    if tables:
        out.append(tables[0] if len(tables) == 1 else pa.concat_tables(tables, promote_options="default"))
    return out
