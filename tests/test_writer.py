"""collector.writer against the real engine (chDB): rows → Arrow in the stored types, and the
background writer's behaviour when ClickHouse is down (disk spool) or slow (bounded queue)."""

from __future__ import annotations

import ipaddress
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pyarrow as pa
import pytest

from collector.flow.report import L4_COLUMNS
from collector.tagging import INTERNET_IP, Resource, TagRegistry
from collector.writer import Converter, RowBatch, Writer, arrow_type, load_columns
from flowscope import migrate
from flowscope.enums import CloseType, Status
from flowscope.storage import connect
from tests.helpers import replay

L4 = "flow_log.l4_flow_log"
NET_1S = "flow_metrics.network.1s"
DEADLINE_S = 60.0       # background work gets this long; nothing asserts how fast it is


@pytest.fixture(scope="module")
def captured():
    """The collector's own output for two real pcaps (IPv4 tcp_rst, IPv6 ipv6), no ClickHouse."""
    writer, col = replay("tcp_rst", "ipv6")
    rows = [r for b in writer.batches[L4] for r in b.rows]
    assert len(rows) == 19      # 5 + 14 conversations, one row each
    return rows, col.tagger.registry, writer.batches[NET_1S]


NOW = int(time.time())


@pytest.fixture(scope="module")
def _module_store(tmp_path_factory):
    client = connect(f"chdb://{tmp_path_factory.mktemp('writer') / 'chdb'}")
    migrate.apply(client)
    yield client
    client.close()


@pytest.fixture
def store(_module_store):
    """One migrated store for the module (creating one costs seconds), emptied for every test."""
    _module_store.command(f"TRUNCATE TABLE {L4}")
    return _module_store


def _dicts(rows: list[tuple]) -> list[dict]:
    return [dict(zip(L4_COLUMNS, r, strict=True)) for r in rows]


def _tuples(rows: list[dict]) -> list[tuple]:
    return [tuple(r[c] for c in L4_COLUMNS) for r in rows]


def _wait(cond: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + DEADLINE_S
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up waiting for {what}")
        time.sleep(0.05)


def _flow_ids(client) -> list[int]:
    return [r[0] for r in client.query(f"SELECT flow_id FROM {L4} ORDER BY flow_id").result_rows]


# -- Converter ------------------------------------------------------------------------------------

def test_arrow_table_has_the_stored_types(store, captured):
    """What the insert sends must be exactly the table's types, or ClickHouse casts or refuses."""
    rows, registry, _ = captured
    columns = load_columns(store, L4)
    t = Converter(columns, registry).convert(RowBatch(L4_COLUMNS, rows))
    assert t.num_rows == 19
    for f in t.schema:
        assert f.type == arrow_type(columns[f.name].ch_type)[0], f.name
    expected = {"time": pa.uint32(), "start_time": pa.timestamp("us"), "ip4_0": pa.uint32(),
                "ip6_1": pa.binary(16), "observation_point": pa.string(), "close_type": pa.uint16(),
                "rtt": pa.float64(), "status": pa.uint8(), "fin_count": pa.uint32()}
    assert {n: t.schema.field(n).type for n in expected} == expected
    assert not [n for n in t.column_names if n.startswith("~") or n.startswith("tag_id")]


def test_all_zero_columns_are_omitted_unless_they_have_a_default(store, captured):
    """IPv4-only traffic has no IPv6 addresses, VLAN or tunnel: those columns are not sent (ClickHouse
    stores the same zero). team_id / is_ipv4 / capture_network_type_id have DEFAULT expressions
    (1, computed, 3), so an explicit 0 must be sent or the stored value would be wrong."""
    rows, registry, _ = captured
    columns = load_columns(store, L4)
    v4 = [r for r in _dicts(rows) if r["is_ipv4"]]
    assert len(v4) == 5
    t = Converter(columns, registry).convert(RowBatch(L4_COLUMNS, _tuples(v4)))
    for absent in ("ip6_0", "ip6_1", "vlan", "tunnel_type", "tunnel_tx_ip4_0", "retrans_tx", "l3_epc_id_0"):
        assert absent not in t.column_names, absent
    assert {"ip4_0", "packet_tx", "is_ipv4", "capture_network_type_id"} <= set(t.column_names)

    zeros = RowBatch(("time", "flow_id", "team_id", "is_ipv4", "capture_network_type_id", "vlan"),
                     [(NOW, 1, 0, 0, 0, 0), (NOW, 2, 0, 0, 0, 0)])
    t0 = Converter(columns).convert(zeros)
    assert t0.column_names == ["time", "flow_id", "team_id", "is_ipv4", "capture_network_type_id"]
    store.insert_arrow("`flow_log`.`l4_flow_log`", t0)
    store.insert_arrow("`flow_log`.`l4_flow_log`", pa.table({"time": pa.array([NOW], pa.uint32()),
                                                            "flow_id": pa.array([3], pa.uint64())}))
    got = store.query(f"SELECT flow_id, team_id, is_ipv4, capture_network_type_id, vlan FROM {L4} "
                      "ORDER BY flow_id").result_rows
    assert got == [(1, 0, 0, 0, 0), (2, 0, 0, 0, 0), (3, 1, 1, 3, 0)]


def test_status_and_fin_count_are_derived(store):
    """status follows DeepFlow's close_type table (unknown close types → UNKNOWN); fin_count is
    the FINs of both directions, which the row carries as internal ~fin_tx/~fin_rx."""
    close = [CloseType.FINISH, CloseType.TCP_SERVER_RST, CloseType.TCP_CLIENT_RST, CloseType.UNKNOWN,
             CloseType.FORCED_REPORT, 4, CloseType.CLIENT_SYN_REPEAT]
    batch = RowBatch(("time", "flow_id", "close_type", "~fin_tx", "~fin_rx"),
                     [(NOW, i, ct, i % 2, 1) for i, ct in enumerate(close)])
    t = Converter(load_columns(store, L4)).convert(batch)
    assert "~fin_tx" not in t.column_names
    assert t["status"].to_pylist() == [Status.OK, Status.SERVER_ERROR, Status.CLIENT_ERROR, Status.UNKNOWN,
                                       Status.OK, Status.UNKNOWN, Status.SERVER_ERROR]
    assert t["fin_count"].to_pylist() == [1, 2, 1, 2, 1, 2, 1]


def test_tag_ids_expand_into_resource_columns(store):
    """Rows carry one interned tag id per end; the writer expands it into the 19 resource columns."""
    registry = TagRegistry()
    pod = registry.intern(Resource(region_id=3, az_id=4, pod_id=77, pod_ns_id=5, l3_epc_id=12,
                                   auto_instance_id=77, auto_instance_type=10))
    internet = registry.intern(INTERNET_IP)
    batch = RowBatch(("time", "flow_id", "tag_id_0", "tag_id_1"),
                     [(NOW, 1, pod, internet), (NOW, 2, 0, internet)])
    t = Converter(load_columns(store, L4), registry).convert(batch)
    assert "tag_id_0" not in t.column_names
    assert t["region_id_0"].to_pylist() == [3, 0]
    assert t["pod_id_0"].to_pylist() == [77, 0]
    assert t["auto_instance_type_0"].to_pylist() == [10, 255]       # 255: an IP without a resource
    assert t["l3_epc_id_1"].to_pylist() == [-2, -2]                 # -2: Internet
    for zero in ("region_id_1", "host_id_0", "auto_instance_type_1"):  # Internet's auto type is 0
        assert zero not in t.column_names, zero
    store.insert_arrow("`flow_log`.`l4_flow_log`", t)
    got = store.query(f"SELECT region_id_0, az_id_0, pod_ns_id_0, l3_epc_id_0, auto_instance_id_0, "
                      f"l3_epc_id_1, auto_instance_type_0, auto_instance_type_1 FROM {L4} ORDER BY flow_id").result_rows
    assert got == [(3, 4, 5, 12, 77, -2, 10, 0), (0, 0, 0, 0, 0, -2, 255, 0)]


def test_round_trip_through_clickhouse_is_exact(store, captured):
    """Inserted and read back, every flow keeps its addresses, µs timestamps and counters."""
    rows, registry, _ = captured
    t = Converter(load_columns(store, L4), registry).convert(RowBatch(L4_COLUMNS, rows))
    store.insert_arrow("`flow_log`.`l4_flow_log`", t)
    got = store.query(
        f"SELECT flow_id, toString(ip4_0), toString(ip4_1), toString(ip6_0), toString(ip6_1), is_ipv4, "
        f"toUnixTimestamp64Micro(start_time), toUnixTimestamp64Micro(end_time), toUnixTimestamp(time), _id, "
        f"client_port, server_port, close_type, packet_tx, packet_rx, byte_tx, byte_rx, rtt, observation_point "
        f"FROM {L4} ORDER BY flow_id").result_rows

    def ip(v) -> str:
        return str(ipaddress.IPv4Address(v) if isinstance(v, int) else ipaddress.IPv6Address(v))

    want = sorted((r["flow_id"], ip(r["ip4_0"]), ip(r["ip4_1"]), ip(r["ip6_0"]), ip(r["ip6_1"]), r["is_ipv4"],
                   r["start_time"], r["end_time"], r["time"], r["_id"], r["client_port"], r["server_port"],
                   int(r["close_type"]), r["packet_tx"], r["packet_rx"], r["byte_tx"], r["byte_rx"], r["rtt"],
                   r["observation_point"]) for r in _dicts(rows))
    assert got == want
    assert {g[1] for g in got if g[5]} == {"10.99.0.2"} and {g[3] for g in got if not g[5]} == {"fd00:99::2"}


# -- Writer: outages and back-pressure ---------------------------------------------------------------

class FlakyClient:
    """A real client whose inserts fail while ``down`` is set (ClickHouse unreachable) and wait
    while ``stall`` is clear-blocked; records every insert that got through, in order."""

    def __init__(self, client, *, down: bool = False, queries_fail: bool = False) -> None:
        self.client = client
        self.queries_fail = queries_fail     # down from the start: even DESCRIBE fails
        self.down = threading.Event()
        if down:
            self.down.set()
        self.release = threading.Event()
        self.release.set()
        self.entered = threading.Event()
        self.inserted: list[tuple[str, int]] = []     # (table, rows)

    def query(self, *args, **kwargs):
        if self.down.is_set() and self.queries_fail:
            raise ConnectionError("Connection refused: ClickHouse at 127.0.0.1:8123")
        return self.client.query(*args, **kwargs)

    def insert_arrow(self, table: str, t: pa.Table):
        self.entered.set()
        self.release.wait()
        if self.down.is_set():
            raise ConnectionError("Connection refused: ClickHouse at 127.0.0.1:8123")
        self.client.insert_arrow(table, t)
        self.inserted.append((table.replace("`", ""), t.num_rows))


def _batches(rows: list[tuple], sizes: tuple[int, ...]) -> list[RowBatch]:
    out, i = [], 0
    for n in sizes:
        out.append(RowBatch(L4_COLUMNS, rows[i:i + n]))
        i += n
    return out


def _spooled(spool: Path) -> list[Path]:
    return sorted(spool.glob("*.arrow"))


def test_outage_spools_to_disk_then_replays_in_order_exactly_once(store, captured, tmp_path: Path):
    """Batches written while ClickHouse is down are kept on disk; when it is back they are
    inserted oldest first, before newer data, and no row is lost or doubled."""
    rows, registry, _ = captured
    spool = tmp_path / "spool"
    proxy = FlakyClient(store, down=True)
    w = Writer(proxy, registry=registry, spool_dir=spool, retry_s=0.2)
    try:
        b1, b2, b3, b4 = _batches(rows, (3, 5, 7, 4))
        for b in (b1, b2, b3):      # one at a time: queued batches of a table would be merged
            w.put(L4, b)
            w.flush()
        assert len(_spooled(spool)) == 3
        assert w.stats.rows_spooled == 15
        assert w.stats.spool_bytes == sum(p.stat().st_size for p in _spooled(spool)) > 0
        assert w.stats.insert_errors >= 1 and "Connection refused" in w.stats.last_error
        assert w.stats.rows_written == {} and w.stats.rows_dropped == {}
        assert _flow_ids(store) == []

        proxy.down.clear()
        _wait(lambda: not _spooled(spool) and w.stats.rows_replayed == 15, "the spool to be replayed")
        w.put(L4, b4)
        w.flush()
        assert proxy.inserted == [(L4, 3), (L4, 5), (L4, 7), (L4, 4)]
        assert w.stats.spool_bytes == 0
        assert w.stats.rows_written == {L4: 4}
    finally:
        w.close()
    assert _flow_ids(store) == sorted(r[0] for r in rows)


def test_clickhouse_down_at_start_holds_batches_until_it_answers(store, captured, tmp_path: Path):
    """Down before the writer could read the table's columns: batches wait in memory (bounded),
    then go in oldest first once ClickHouse answers; nothing is dropped."""
    rows, registry, _ = captured
    proxy = FlakyClient(store, down=True, queries_fail=True)
    w = Writer(proxy, registry=registry, spool_dir=tmp_path / "spool", retry_s=0.2)
    try:
        b1, b2 = _batches(rows, (6, 9))
        w.put(L4, b1)
        w.flush()
        w.put(L4, b2)
        w.flush()
        assert w.stats.rows_written == {} and w.stats.rows_dropped == {}
        assert "Connection refused" in w.stats.last_error
        proxy.down.clear()
        _wait(lambda: w.stats.rows_written.get(L4) == 15, "the held batches to be written")
        assert proxy.inserted == [(L4, 6), (L4, 9)]
    finally:
        w.close()
    assert _flow_ids(store) == sorted(r[0] for r in rows[:15])


def test_a_new_writer_replays_what_a_previous_run_spooled(store, captured, tmp_path: Path):
    """Rows spooled by a process that then exited reach ClickHouse when the next one starts."""
    rows, registry, _ = captured
    spool = tmp_path / "spool"
    first = Writer(FlakyClient(store, down=True), registry=registry, spool_dir=spool, retry_s=0.2)
    for b in _batches(rows, (10, 9)):
        first.put(L4, b)
        first.flush()
    first.close()
    files = _spooled(spool)
    assert len(files) == 2 and _flow_ids(store) == []

    second = Writer(store, registry=registry, spool_dir=spool, retry_s=0.2)
    try:
        assert second.stats.spool_bytes == sum(p.stat().st_size for p in files)
        second.replay_spool()
        _wait(lambda: not _spooled(spool), "the previous run's spool to be replayed")
        assert second.stats.rows_replayed == 19 and second.stats.spool_bytes == 0
    finally:
        second.close()
    assert _flow_ids(store) == sorted(r[0] for r in rows)


def test_the_spool_is_bounded_and_drops_the_oldest(store, captured, tmp_path: Path):
    """A long outage must not fill the disk: past spool_max_bytes the oldest batches go (and are
    counted); the newest survive and are replayed."""
    rows, registry, _ = captured
    spool = tmp_path / "spool"
    proxy = FlakyClient(store, down=True)
    w = Writer(proxy, registry=registry, spool_dir=spool, spool_max_bytes=1, retry_s=0.2)
    try:
        b1, b2, b3 = _batches(rows, (6, 6, 7))
        for b in (b1, b2, b3):
            w.put(L4, b)
            w.flush()
        kept = _spooled(spool)
        assert len(kept) == 1
        assert w.stats.rows_spooled == 19
        assert w.stats.spool_bytes == kept[0].stat().st_size
        assert w.stats.spool_dropped_bytes > 0
        proxy.down.clear()
        _wait(lambda: not _spooled(spool), "the spool to be replayed")
    finally:
        w.close()
    assert _flow_ids(store) == sorted(r[0] for r in b3.rows)


def test_without_a_spool_failed_inserts_are_counted_as_dropped(store, captured):
    """No spool configured: a failed insert loses its rows, and says so per table."""
    rows, registry, net = captured
    w = Writer(FlakyClient(store, down=True), registry=registry)
    try:
        w.put(L4, RowBatch(L4_COLUMNS, rows))
        w.flush()
        w.put(NET_1S, net[0])
        w.flush()
        assert w.stats.rows_dropped == {L4: 19, NET_1S: net[0].num_rows}
        assert w.stats.insert_errors == 2
    finally:
        w.close()


def test_non_blocking_writer_drops_and_counts_instead_of_stalling(store, captured):
    """Live capture must never wait for ClickHouse: with the queue full, put() returns at once
    and the rows it could not queue are counted per table."""
    rows, registry, net = captured
    proxy = FlakyClient(store)
    proxy.release.clear()                         # inserts hang until released
    w = Writer(proxy, registry=registry, block=False, queue_batches=1)
    b1, b2, b3 = _batches(rows, (5, 6, 8))
    try:
        w.put(L4, b1)
        assert proxy.entered.wait(DEADLINE_S)     # the writer thread is stuck inside b1's insert
        producer = threading.Thread(target=lambda: [w.put(L4, b2), w.put(L4, b3), w.put(NET_1S, net[0])])
        producer.start()
        producer.join(DEADLINE_S)
        assert not producer.is_alive(), "put() blocked on a full queue"
        assert w.stats.rows_dropped == {L4: 8, NET_1S: net[0].num_rows}
        proxy.release.set()
        w.flush()
        assert w.stats.rows_written == {L4: 11}
    finally:
        proxy.release.set()
        w.close()
    assert _flow_ids(store) == sorted(r[0] for r in b1.rows + b2.rows)


def test_queued_batches_of_a_table_are_written_in_one_insert(store, captured):
    """Under load the writer takes everything queued and inserts each table once (an insert has a
    fixed cost), keeping the rows and their order."""
    rows, registry, _ = captured
    proxy = FlakyClient(store)
    proxy.release.clear()                          # hold the first insert so the rest queue up
    w = Writer(proxy, registry=registry, queue_batches=16)
    b1, b2, b3, b4 = _batches(rows, (2, 5, 6, 6))
    try:
        w.put(L4, b1)
        assert proxy.entered.wait(DEADLINE_S)
        for b in (b2, b3, b4):
            w.put(L4, b)
        proxy.release.set()
        w.flush()
    finally:
        proxy.release.set()
        w.close()
    assert proxy.inserted == [(L4, 2), (L4, 17)]
    assert _flow_ids(store) == sorted(r[0] for r in rows)


def test_queued_batches_with_different_columns_are_written_apart(store, captured):
    """Two sources of one table with their own columns (packets and the eBPF tracer both write
    l7_flow_log) queued together: each group is inserted on its own, nothing is lost, and the
    writer thread lives on (it used to die on "cannot merge mixed batches", hanging flush())."""
    rows, registry, _ = captured
    proxy = FlakyClient(store)
    proxy.release.clear()
    w = Writer(proxy, registry=registry, queue_batches=16)
    b1, b2, b3 = _batches(rows, (2, 9, 8))
    narrow = tuple(c for c in L4_COLUMNS if c != "l7_parse_failed")     # another source: one column fewer
    at = L4_COLUMNS.index("l7_parse_failed")
    b3 = RowBatch(narrow, [r[:at] + r[at + 1:] for r in b3.rows])
    try:
        w.put(L4, b1)
        assert proxy.entered.wait(DEADLINE_S)
        w.put(L4, b2)
        w.put(L4, b3)
        proxy.release.set()
        w.flush()
        w.put(L4, RowBatch(L4_COLUMNS, []))
        w.flush()
    finally:
        proxy.release.set()
        w.close()
    assert proxy.inserted[:3] == [(L4, 2), (L4, 9), (L4, 8)]
    assert _flow_ids(store) == sorted(r[0] for r in rows)


def test_in_memory_arrow_insert_stores_what_the_arrow_format_insert_stores(_module_store, tmp_path):
    """flowscope.storage's embedded client inserts Arrow tables through chDB's Python() table
    function instead of clickhouse-connect's Arrow-format insert: every table the collector writes
    (flows over IPv4/IPv6 and tunnels, L7 requests with attributes, 1s/1m metrics) must store the
    same rows, value for value, both ways."""
    from clickhouse_connect.driver._chdbclient import ChdbClient

    client = _module_store
    writer, _col = replay("http1", "ipv6", "http_vxlan", "http_geneve6", "dns", "redis", "mysql", "grpc")
    compared = []
    for table, batches in sorted(writer.batches.items()):
        if not table.startswith(("flow_log.", "flow_metrics.")):
            continue
        db, name = table.split(".", 1)
        conv = Converter(load_columns(client, table), writer.registry)
        tables = [conv.table(b) if isinstance(b, pa.Table) else conv.convert(b) for b in batches]   # as Writer does
        ours, theirs = f"`{db}`.`{name}_ours`", f"`{db}`.`{name}_theirs`"
        for copy in (ours, theirs):
            client.command(f"CREATE TABLE {copy} AS `{db}`.`{name}`")
        try:
            for t in tables:
                client.insert_arrow(ours, t)                   # Python() table function
                ChdbClient.insert_arrow(client, theirs, t)     # Arrow IPC, parsed by the engine
            columns = ", ".join(f"`{c}`" for c, *_ in client.query(f"DESCRIBE TABLE {ours}").result_rows
                                if c != "_ingest_time")
            n = client.command(f"SELECT count() FROM {ours}")
            assert n == client.command(f"SELECT count() FROM {theirs}") == sum(t.num_rows for t in tables) > 0
            for a, b in ((ours, theirs), (theirs, ours)):
                assert client.command(f"SELECT count() FROM (SELECT {columns} FROM {a} EXCEPT "
                                      f"SELECT {columns} FROM {b})") == 0, f"{table}: {a} has rows {b} lacks"
            compared.append(table)
        finally:
            for copy in (ours, theirs):
                client.command(f"DROP TABLE IF EXISTS {copy}")
    assert {"flow_log.l4_flow_log", "flow_log.l7_flow_log", "flow_metrics.network.1s", "flow_metrics.network.1m",
            "flow_metrics.application.1m", "flow_metrics.application_map.1s"} <= set(compared), compared
