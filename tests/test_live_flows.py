"""``flowscope collect --iface`` on both ends of a veth pair in two throwaway namespaces (needs root):
a real client and server exchange payloads of known sizes, the collector captures through its
AF_PACKET rings until SIGTERM, and the flows and metrics it stored must say exactly what happened.
"""

from __future__ import annotations

import ipaddress
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import yaml

from tests.netns import N_CONN, PORT, REQ_SIZES, NetPair, live, run_client

FLOWSCOPE = Path(sys.executable).with_name("flowscope")
ENV = {k: v for k, v in os.environ.items() if k not in ("FLOWSCOPE_CLICKHOUSE", "FLOWSCOPE_CONFIG")}


def _query(dsn: str, db: str, sql: str, *args: str) -> list[list]:
    p = subprocess.run([str(FLOWSCOPE), "query", "--raw", "--clickhouse", dsn, "--db", db, *args, sql],
                       capture_output=True, text=True, env=ENV, timeout=120)
    assert p.returncode == 0, p.stdout + p.stderr
    return json.loads(p.stdout)["result"]["values"] or []


@live
def test_live_capture_on_both_ends(netpair: NetPair, server: None, tmp_path: Path) -> None:
    dsn = f"chdb://{tmp_path / 'chdb'}"
    cfg = tmp_path / "flowscope.yaml"
    # the veths are each namespace's own NIC (like eth0 in a pod), not a host-side pod veth
    cfg.write_text(yaml.safe_dump({"capture": {"interfaces": [{"match": "veth-?", "role": "own"}]},
                                   "writer": {"spool_dir": str(tmp_path / "spool")}}))
    proc = subprocess.Popen([str(FLOWSCOPE), "collect", "--iface", f"{netpair.a}/veth-a", f"{netpair.b}/veth-b",
                             "--clickhouse", dsn, "--config", str(cfg)],
                            stderr=subprocess.PIPE, text=True, env=ENV)
    try:
        assert proc.stderr is not None
        line = proc.stderr.readline()
        assert "capturing on" in line and "veth-a" in line and "veth-b" in line, line
        run_client(netpair)
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    assert "kernel drops" not in err

    rows = _query(dsn, "flow_log", "SELECT observation_point, IPv4NumToString(toUInt32(ip4_0)), "
                  "IPv4NumToString(toUInt32(ip4_1)), server_port, close_type, l4_byte_tx, l4_byte_rx, syn_count, "
                  "synack_count, fin_count, art_count, direction_score, rtt > 0, capture_nic "
                  "FROM l4_flow_log WHERE protocol = 6 ORDER BY observation_point, l4_byte_tx")
    # every connection once per capture NIC: the client's NIC sees it as c, the server's as s
    # (the fresh veths also carry IPv6 neighbour discovery: ICMPv6 flows, not counted here)
    assert len(rows) == 2 * N_CONN
    for point, ns_nic in (("c", netpair.mac(netpair.a, "veth-a")), ("s", netpair.mac(netpair.b, "veth-b"))):
        mine = [r for r in rows if r[0] == point]
        assert len(mine) == N_CONN
        assert {r[13] for r in mine} == {int.from_bytes(ns_nic[2:], "big")}
        for r, n in zip(mine, sorted(REQ_SIZES), strict=True):
            assert r[1:4] == [netpair.ip_a, netpair.ip_b, PORT]
            assert r[4] == 1                                       # closed by FIN on both sides
            assert (r[5], r[6]) == (4 + n, 4 + 2 * n + 100)        # exactly the payload exchanged
            assert (r[7], r[8], r[9]) == (1, 1, 2)
            assert r[10] == 1 and r[11] == 255 and r[12] == 1      # one response, handshake seen

    # single-side metrics: the client's IP from the client's NIC, the server's (with its port) from its own
    sides = _query(dsn, "flow_metrics", "SELECT role, IPv4NumToString(toUInt32(ip4)), server_port, "
                   "sum(new_flow), sum(closed_flow), sum(l4_byte_tx), sum(l4_byte_rx) FROM network "
                   "WHERE protocol = 6 GROUP BY 1, 2, 3 ORDER BY 1", "--data-precision", "1s")
    sent = sum(4 + n for n in REQ_SIZES)
    answered = sum(4 + 2 * n + 100 for n in REQ_SIZES)
    assert sides == [[0, netpair.ip_a, 0, N_CONN, N_CONN, sent, answered],
                     [1, netpair.ip_b, PORT, N_CONN, N_CONN, answered, sent]]
    assert ipaddress.ip_address(netpair.ip_a).is_private


@live
def test_live_capture_with_fanout_workers(netpair: NetPair, server: None, tmp_path: Path) -> None:
    """--workers 2: PACKET_FANOUT spreads the connections over two capture processes (both directions
    of a flow to the same one); the parent writes everything, and the flows are the same as with one."""
    dsn = f"chdb://{tmp_path / 'chdb'}"
    cfg = tmp_path / "flowscope.yaml"
    cfg.write_text(yaml.safe_dump({"capture": {"interfaces": [{"match": "veth-?", "role": "own"}]},
                                   "writer": {"spool_dir": str(tmp_path / "spool")}}))
    proc = subprocess.Popen([str(FLOWSCOPE), "collect", "--iface", f"{netpair.a}/veth-a", "--workers", "2",
                             "--clickhouse", dsn, "--config", str(cfg)],
                            stderr=subprocess.PIPE, text=True, env=ENV)
    try:
        assert proc.stderr is not None
        line = proc.stderr.readline()
        assert "capturing on" in line, line
        run_client(netpair)
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    rows = _query(dsn, "flow_log", "SELECT l4_byte_tx, l4_byte_rx, close_type, syn_count, synack_count, "
                  "bitAnd(bitShiftRight(flow_id, 24), 255) AS worker FROM l4_flow_log WHERE protocol = 6 ORDER BY l4_byte_tx")
    assert [(r[0], r[1], r[2], r[3], r[4]) for r in rows] == \
        [(4 + n, 4 + 2 * n + 100, 1, 1, 1) for n in sorted(REQ_SIZES)]
    assert {r[5] for r in rows} == {0, 1}            # both workers had connections
