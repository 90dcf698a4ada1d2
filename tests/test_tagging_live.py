"""Capture interfaces placed by the inventory, live (needs root): a veth whose peer holds a pod's
address is that pod's NIC whatever its name (observation point c / s from the pod's side), a NIC
holding a node's address is the node's (c-nd / s-nd). The interface rules here call every NIC
"own", so only the inventory can make these points come out right."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import yaml

from tests.netns import N_CONN, PORT, NetPair, live, run_client

FLOWSCOPE = Path(sys.executable).with_name("flowscope")
ENV = {k: v for k, v in os.environ.items() if not k.startswith("FLOWSCOPE_")}


def capture(netpair: NetPair, tmp: Path, iface: str, inventory: dict) -> list[list]:
    dsn = f"chdb://{tmp / 'chdb'}"
    cfg = tmp / "flowscope.yaml"
    cfg.write_text(yaml.safe_dump({"capture": {"interfaces": [{"match": "*", "role": "own"}]},
                                   "writer": {"spool_dir": str(tmp / "spool")}}))
    inv = tmp / "inventory.yaml"
    inv.write_text(yaml.safe_dump(inventory))
    proc = subprocess.Popen([str(FLOWSCOPE), "collect", "--iface", iface, "--clickhouse", dsn, "--config", str(cfg),
                             "--inventory", str(inv), "--metadata", f"sqlite:///{tmp / 'metadata.db'}"],
                            stderr=subprocess.PIPE, text=True, env=ENV, cwd=tmp)
    try:
        assert proc.stderr is not None
        line = proc.stderr.readline()
        assert "capturing on" in line, line
        run_client(netpair)
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    sql = ("SELECT observation_point, server_port, dictGet('flow_tag.pod_map', 'name', toUInt64(pod_id_1)), "
           "dictGet('flow_tag.pod_node_map', 'name', toUInt64(pod_node_id_0)), "
           "dictGet('flow_tag.chost_map', 'name', toUInt64(l3_device_id_1)), count() "
           "FROM l4_flow_log WHERE protocol = 6 GROUP BY 1, 2, 3, 4, 5")
    p = subprocess.run([str(FLOWSCOPE), "query", "--raw", "--clickhouse", dsn, "--db", "flow_log", sql],
                       capture_output=True, text=True, env=ENV, timeout=120)
    assert p.returncode == 0, p.stdout + p.stderr
    return json.loads(p.stdout)["result"]["values"]


@live
def test_a_veth_whose_peer_is_a_pod_sees_it_from_the_pods_side(netpair: NetPair, server: None, tmp_path: Path) -> None:
    """veth-a's peer (in the other namespace) holds the pod's address: veth-a is that pod's
    host-side NIC, so the client → pod connections are seen at the server side ("s")."""
    inventory = {"clusters": [{"name": "live", "nodes": [{"name": "node-a", "ips": [netpair.ip_a]}],
                               "pods": [{"name": "srv", "namespace": "t", "ips": [netpair.ip_b]}]}]}
    rows = capture(netpair, tmp_path, f"{netpair.a}/veth-a", inventory)
    assert rows == [["s", PORT, "srv", "node-a", "", N_CONN]]


@live
def test_a_nic_holding_a_nodes_address_is_the_nodes(netpair: NetPair, server: None, tmp_path: Path) -> None:
    """veth-a holds node-a's address and its peer is no pod: it is the node's NIC, and the
    node's own connections to a host are seen as client side of a node ("c-nd")."""
    inventory = {"clusters": [{"name": "live", "nodes": [{"name": "node-a", "ips": [netpair.ip_a]}]}],
                 "hosts": [{"name": "db-vm", "ips": [netpair.ip_b]}]}
    rows = capture(netpair, tmp_path, f"{netpair.a}/veth-a", inventory)
    assert rows == [["c-nd", PORT, "", "node-a", "db-vm", N_CONN]]
