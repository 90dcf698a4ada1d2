"""The ``flowscope`` command as a user runs it: separate processes, each with its own embedded store
(chDB lets one process own a store directory), checked through ``flowscope query`` and HTTP."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import struct
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import httpx
import pytest
import yaml

from flowscope import migrate
from tests.helpers import DATA, truth

FLOWSCOPE = Path(sys.executable).with_name("flowscope")
ENV = {k: v for k, v in os.environ.items() if k not in ("FLOWSCOPE_CLICKHOUSE", "FLOWSCOPE_CONFIG")} | {
    "COLUMNS": "160"}                                  # rich tables: no truncated cells
DEADLINE_S = 60.0
TCP_RST, SYN_DROP = str(DATA / "tcp_rst.pcap"), str(DATA / "syn_drop.pcap")


def flowscope(*args: str, cwd: Path, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([str(FLOWSCOPE), *args], cwd=cwd, env=ENV, capture_output=True, text=True,
                          timeout=timeout)


def write_config(path: Path, **extra) -> Path:
    path.write_text(yaml.safe_dump(extra))
    return path


class Store:
    """A store directory, its DSN and a config file (default settings); cwd holds the spool."""

    def __init__(self, root: Path) -> None:
        self.cwd = root
        self.dsn = f"chdb://{root / 'chdb'}"
        self.config = write_config(root / "flowscope.yaml")

    def run(self, *command: str, args: tuple[str, ...] = ()) -> subprocess.CompletedProcess:
        return flowscope(*command, "--clickhouse", self.dsn, "--config", str(self.config), *args, cwd=self.cwd)

    def query(self, sql: str, db: str, *args: str) -> list[list]:
        """Plain ClickHouse SQL (--raw): these tests check what was stored, not the DeepFlow dialect."""
        p = self.run("query", args=("--raw", "--db", db, *args, sql))
        assert p.returncode == 0, p.stdout + p.stderr
        body = json.loads(p.stdout)
        assert body["OPT_STATUS"] == "SUCCESS"
        return body["result"]["values"]


def _conversations(name: str) -> list[dict]:
    return [c for c in truth(name)["conversations"] if not c["tunnel_outer"]]


@pytest.fixture(scope="module")
def filled(tmp_path_factory) -> tuple[Store, subprocess.CompletedProcess]:
    """One store filled by ``flowscope collect`` from tcp_rst.pcap and syn_drop.pcap, shared by the
    read-only tests below."""
    store = Store(tmp_path_factory.mktemp("filled"))
    return store, store.run("collect", args=("--pcap", TCP_RST, SYN_DROP))


def test_collect_exits_0_and_summarises(filled):
    _, p = filled
    assert p.returncode == 0, p.stderr
    convs = _conversations("tcp_rst") + _conversations("syn_drop")
    packets = sum(c["frames_ab"] + c["frames_ba"] for c in convs)
    wire_bytes = sum(c["bytes_ab"] + c["bytes_ba"] for c in convs)
    assert re.search(rf"packets\s+{packets} \({wire_bytes:,} bytes\)", p.stderr), p.stderr
    assert re.search(r"flows\s+6 created, 6 ended, 0 evicted", p.stderr)
    assert re.search(r"rows → flow_log\.l4_flow_log\s+6\b", p.stderr)
    assert "Traceback" not in p.stderr


def test_collect_stores_one_flow_per_conversation(filled):
    """tcp_rst: 3× SYN→RST on a closed port (ServerReset 15), 2× reset mid-transfer (TcpServerRst 2);
    syn_drop: a SYN retried 3 times, never answered (ClientSynRepeat 7). All server errors (3)."""
    store, _ = filled
    rows = store.query("SELECT client_port, server_port, close_type, status, packet_tx, packet_rx, byte_tx, "
                       "byte_rx FROM l4_flow_log ORDER BY client_port", "flow_log")
    assert len(rows) == 6
    assert Counter(r[2] for r in rows) == {15: 3, 2: 2, 7: 1}
    assert {r[3] for r in rows} == {3}
    want = sorted([c["a_port"], c["b_port"], c["frames_ab"], c["frames_ba"], c["bytes_ab"], c["bytes_ba"]]
                  for n in ("tcp_rst", "syn_drop") for c in _conversations(n))
    assert [r[:2] + r[4:] for r in rows] == want


@pytest.mark.parametrize("precision", ["1s", "1m"])
def test_collect_fills_the_metrics_tables(filled, precision):
    """network_map has both ends, network one row per end on the capturing host (10.99.0.2,
    client role 0); both sum to the packets of the flows."""
    store, _ = filled
    tx = sum(c["frames_ab"] for n in ("tcp_rst", "syn_drop") for c in _conversations(n))
    rx = sum(c["frames_ba"] for n in ("tcp_rst", "syn_drop") for c in _conversations(n))
    rows = store.query("SELECT 'network_map' AS t, '' AS ip, toUInt8(0) AS role, sum(packet_tx), sum(packet_rx) "
                       "FROM network_map UNION ALL SELECT 'network', IPv4NumToString(ip4), role, sum(packet_tx), "
                       "sum(packet_rx) FROM network GROUP BY ip4, role", "flow_metrics", "--data-precision", precision)
    assert sorted(rows) == [["network", "10.99.0.2", 0, tx, rx], ["network_map", "", 0, tx, rx]]
    assert (tx, rx) == (15, 11)


def test_query_rejected_prints_the_envelope_and_exits_1(filled):
    store, _ = filled
    p = store.run("query", args=("--raw", "--db", "flow_log", "DROP TABLE l4_flow_log"))
    assert p.returncode == 1
    assert json.loads(p.stdout) == {"OPT_STATUS": "INVALID_POST_DATA",
                                    "DESCRIPTION": "only SELECT is allowed, got DROP", "result": None, "debug": None}


def test_query_raw_runs_guarded_clickhouse_sql(filled):
    """--raw: plain ClickHouse SQL through the guard (what ?simple_sql=true runs over HTTP); the
    default is DeepFlow SQL."""
    store, _ = filled
    rows = store.query("SELECT close_type, count() AS flows FROM flow_log.l4_flow_log GROUP BY close_type "
                       "ORDER BY close_type", "flow_log")
    assert rows == [[2, 2], [7, 1], [15, 3]]
    p = store.run("query", args=("--raw", "--db", "flow_log", "SELECT name FROM system.users"))
    assert p.returncode == 1
    assert json.loads(p.stdout) == {"OPT_STATUS": "INVALID_POST_DATA", "DESCRIPTION": "database 'system' is not "
                                    "queryable (known: flow_log, flow_metrics, flow_tag)", "result": None, "debug": None}


def test_query_table_prints_rows(filled):
    store, _ = filled
    p = store.run("query", args=("--raw", "--db", "flow_log", "--table", "SELECT close_type, count() AS flows "
                                 "FROM l4_flow_log GROUP BY close_type ORDER BY close_type"))
    assert p.returncode == 0, p.stderr
    cells = [[c.strip() for c in re.split("[│┃]", line)[1:-1]] for line in p.stdout.splitlines()
             if re.match("[│┃]", line)]
    assert cells == [["close_type", "flows"], ["2", "2"], ["7", "1"], ["15", "3"]]


def test_collect_twice_doubles_rows_and_migrate_twice_is_a_noop(tmp_path: Path):
    """collect appends: replaying the same pcap again stores its flows again (nothing deduplicates);
    re-running the migrations changes nothing."""
    store = Store(tmp_path)
    first, second = store.run("db", "migrate"), store.run("db", "migrate")
    assert first.returncode == second.returncode == 0
    versions = ", ".join(f"{m.version:04d}" for m in migrate.load_migrations())
    assert first.stdout.startswith(f"applied migrations: {versions}\n")
    assert second.stdout == (f"applied migrations: none\nalready applied: {versions}\n"
                             "enum dictionaries: up to date\n")
    for _ in range(2):
        assert store.run("collect", args=("--pcap", SYN_DROP)).returncode == 0
    assert store.query("SELECT count(), sum(packet_tx) FROM l4_flow_log", "flow_log") == [[2, 8]]


@pytest.mark.parametrize(("args", "code", "message"), [
    (["--pcap", "/nonexistent/x.pcap"], 2, "error: no such file: /nonexistent/x.pcap"),
    (["--pcap"], 2, "error: no pcap files given"),
    (["--pcap", "--iface", "eth0"], 2, "error: say what SOURCES are: --pcap FILE... or --iface PATTERN..."),
    ([TCP_RST], 2, "error: say what SOURCES are: --pcap FILE... or --iface PATTERN..."),
    (["--pcap", "garbage.pcap"], 1, "capture error: garbage.pcap: not a pcap or pcapng file (magic 0x"),
], ids=["missing-file", "no-sources", "pcap-and-iface", "no-mode", "not-a-pcap"])
def test_collect_usage_errors_are_one_readable_line(tmp_path: Path, args, code, message):
    """Bad input is refused before anything is opened or created, in one line, without a traceback."""
    (tmp_path / "garbage.pcap").write_bytes(b"this is not a capture file, just text\n" * 10)
    p = flowscope("collect", "--clickhouse", f"chdb://{tmp_path / 'chdb'}", *args, cwd=tmp_path)
    assert p.returncode == code
    assert p.stderr.startswith(message) and p.stderr.count("\n") == 1, p.stderr
    assert not (tmp_path / "chdb").exists() and not (tmp_path / ".flowscope").exists()


def test_db_migrate_print_cluster_ddl(tmp_path: Path):
    p = flowscope("db", "migrate", "--print", "--cluster", "prod", cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    assert "CREATE DATABASE IF NOT EXISTS flow_log ON CLUSTER prod;" in p.stdout
    assert ("CREATE TABLE IF NOT EXISTS flow_log.l4_flow_log_local ON CLUSTER prod" in p.stdout
            and "ENGINE = ReplicatedMergeTree('/clickhouse/tables/{shard}/flow_log/l4_flow_log_local', "
                "'{replica}')" in p.stdout)
    assert ("CREATE TABLE IF NOT EXISTS flow_log.l4_flow_log ON CLUSTER prod AS flow_log.l4_flow_log_local\n"
            "ENGINE = Distributed('prod', 'flow_log', 'l4_flow_log_local', rand());") in p.stdout
    assert list(tmp_path.iterdir()) == []                  # --print changes nothing


def test_db_migrate_cluster_needs_a_server(tmp_path: Path):
    p = flowscope("db", "migrate", "--cluster", "prod", "--clickhouse", f"chdb://{tmp_path / 'chdb'}", cwd=tmp_path)
    assert p.returncode == 2
    assert p.stderr == ("error: --cluster needs a ClickHouse server (http(s):// DSN); the embedded engine runs "
                        "the single-node schema. Use --print to see the cluster DDL.\n")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _poll(what: str, probe, proc: subprocess.Popen, err: Path):
    """probe() until it returns something truthy; fail early if the server died."""
    deadline = time.monotonic() + DEADLINE_S
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"flowscope up exited with {proc.returncode}: {err.read_text()}"
        try:
            got = probe()
            if got:
                return got
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise AssertionError(f"gave up waiting for {what}: {err.read_text()}")


def test_up_replays_serves_and_stops_on_sigterm(tmp_path: Path):
    """The all-in-one process: replays the pcap, answers /v1/query/ (directly and for `flowscope
    query`), exposes its counters, owns the store while it runs, and exits 0 on SIGTERM."""
    store = Store(tmp_path)
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    up_config = write_config(tmp_path / "up.yaml", datasource={"listen": f"127.0.0.1:{port}"})
    idle_config = write_config(tmp_path / "idle.yaml", datasource={"listen": f"127.0.0.1:{_free_port()}"})
    err = tmp_path / "up.stderr"
    with err.open("w") as err_f:
        proc = subprocess.Popen([str(FLOWSCOPE), "up", "--pcap", TCP_RST, "--listen", f"127.0.0.1:{port}",
                                 "--clickhouse", store.dsn, "--config", str(up_config)],
                                cwd=tmp_path, env=ENV, stdout=subprocess.DEVNULL, stderr=err_f)
    try:
        _poll("/v1/health/", lambda: httpx.get(f"{url}/v1/health/", timeout=5).status_code == 200, proc, err)

        def flows():
            r = httpx.post(f"{url}/v1/query/?simple_sql=true", timeout=30, data={
                "db": "flow_log", "sql": "SELECT close_type, count() FROM l4_flow_log GROUP BY close_type "
                                         "ORDER BY close_type"})
            values = r.json()["result"]["values"]
            return values if values and sum(v[1] for v in values) == 5 else None

        assert _poll("the replayed flows", flows, proc, err) == [[2, 2], [15, 3]]

        metrics = httpx.get(f"{url}/metrics", timeout=5).text
        packets = sum(c["frames_ab"] + c["frames_ba"] for c in _conversations("tcp_rst"))
        assert f"flowscope_packets_total {packets:.1f}" in metrics.splitlines()
        assert 'flowscope_rows_written_total{table="flow_log.l4_flow_log"} 5.0' in metrics.splitlines()

        sql = "SELECT count() FROM l4_flow_log"
        over_http = flowscope("query", "--datasource", url, "--raw", "--db", "flow_log", sql, cwd=tmp_path)
        assert over_http.returncode == 0 and json.loads(over_http.stdout)["result"]["values"] == [[5]]

        # The store is taken: opening it fails with the hint, unless the configured datasource answers.
        locked = flowscope("query", "--raw", "--clickhouse", store.dsn, "--config", str(idle_config), "--db", "flow_log", sql,
                           cwd=tmp_path)
        assert locked.returncode == 1 and locked.stdout == ""
        assert "another flowscope process probably owns this embedded store" in locked.stderr
        assert "--datasource" in locked.stderr and "Traceback" not in locked.stderr
        fallback = flowscope("query", "--raw", "--clickhouse", store.dsn, "--config", str(up_config), "--db", "flow_log", sql,
                             cwd=tmp_path)
        assert fallback.returncode == 0 and json.loads(fallback.stdout)["result"]["values"] == [[5]]

        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=DEADLINE_S) == 0
        assert "SIGTERM: flushing flows and stopping" in err.read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_an_old_capture_is_kept_for_the_retention_period(tmp_path):
    """Retention counts from when rows were written: replaying a capture recorded five years ago
    keeps its flows and metrics (with the default TTLs), instead of ClickHouse dropping them on
    insert for being older than 72 h."""
    old = tmp_path / "old.pcap"
    data = bytearray((DATA / "tcp_rst.pcap").read_bytes())
    shift = 5 * 365 * 86400
    off = 24
    while off + 16 <= len(data):
        sec, _usec, caplen, _wire = struct.unpack_from("<IIII", data, off)
        struct.pack_into("<I", data, off, sec - shift)
        off += 16 + caplen
    old.write_bytes(bytes(data))
    store = Store(tmp_path)
    assert store.run("collect", args=("--pcap", str(old))).returncode == 0
    ((flows, year),) = store.query("SELECT count(), toYear(min(time)) FROM l4_flow_log", "flow_log")
    assert flows == 5 and year <= 2021
    ((packets,),) = store.query("SELECT sum(packet_tx + packet_rx) FROM network_map", "flow_metrics",
                                "--data-precision", "1s")
    assert packets == 22


def test_capture_nic_and_agent_names_resolve(filled):
    """flow_tag dictionaries name the capture NIC (a pcap's stem) and the agent (this host)."""
    store, _ = filled
    ((nic, agent),) = store.query(
        "SELECT DISTINCT dictGet('flow_tag.vtap_port_map', 'name', (toUInt64(agent_id), toUInt64(capture_nic))), "
        "dictGet('flow_tag.vtap_map', 'name', toUInt64(agent_id)) FROM l4_flow_log", "flow_log")
    assert nic in {"tcp_rst", "syn_drop"}          # both captured on the same client NIC (one MAC)
    assert agent == socket.gethostname()
