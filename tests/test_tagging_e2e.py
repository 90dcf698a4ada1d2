"""AutoTagging end to end, as a user runs it: ``flowscope collect --pcap … --inventory lab.yaml``
on pcaps captured from pods of a Kubernetes-like node (tests/data/gen/k8s_lab.py: pods in network
namespaces on a bridge, Kube-OVN-style ``*_h`` veths), then the stored flow and request logs
resolve to pod, namespace, workload, Service and host names through the flow_tag dictionaries.

The inventory file (tests/data/inventory/lab.yaml) goes through the real metadata store (SQLite
here; the store's own suite also runs on MariaDB) and the same code the Kubernetes watcher feeds.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from flowscope.storage import connect
from tests.helpers import DATA

FLOWSCOPE = Path(sys.executable).with_name("flowscope")
ENV = {k: v for k, v in os.environ.items() if not k.startswith("FLOWSCOPE_")} | {"COLUMNS": "160"}
INVENTORY = DATA / "inventory" / "lab.yaml"
CHURN = json.loads((DATA / "truth" / "k8s_churn.json").read_text())["churn"]

# Names of each end, from the ids the rows carry
NAMES = """
    dictGet('flow_tag.pod_map', 'name', toUInt64(pod_id_{s})) AS pod_{s},
    dictGet('flow_tag.pod_ns_map', 'name', toUInt64(pod_ns_id_{s})) AS ns_{s},
    dictGet('flow_tag.pod_group_map', 'name', toUInt64(pod_group_id_{s})) AS group_{s},
    dictGet('flow_tag.pod_group_map', 'pod_group_type', toUInt64(pod_group_id_{s})) AS group_type_{s},
    dictGet('flow_tag.pod_service_map', 'name', toUInt64(service_id_{s})) AS service_{s},
    dictGet('flow_tag.pod_node_map', 'name', toUInt64(pod_node_id_{s})) AS node_{s},
    dictGet('flow_tag.pod_cluster_map', 'name', toUInt64(pod_cluster_id_{s})) AS cluster_{s},
    dictGet('flow_tag.device_map', 'name', (toUInt64(auto_instance_type_{s}), toUInt64(auto_instance_id_{s}))) AS instance_{s}
"""
COLUMNS = NAMES.format(s=0) + "," + NAMES.format(s=1)


def collect(tmp: Path, *pcaps: str, inventory: Path | None = INVENTORY) -> subprocess.CompletedProcess:
    args = [str(FLOWSCOPE), "collect", "--pcap", *(str(DATA / p) for p in pcaps),
            "--clickhouse", f"chdb://{tmp / 'chdb'}", "--metadata", f"sqlite:///{tmp / 'metadata.db'}"]
    if inventory is not None:
        args += ["--inventory", str(inventory)]
    r = subprocess.run(args, cwd=tmp, env=ENV, capture_output=True, text=True, timeout=180)
    assert r.returncode == 0, r.stderr
    return r


def rows(tmp: Path, sql: str) -> list[dict]:
    client = connect(f"chdb://{tmp / 'chdb'}")
    try:
        res = client.query(sql)
        return [dict(zip(res.column_names, r, strict=True)) for r in res.result_rows]
    finally:
        client.close()


@pytest.fixture(scope="module")
def pods_store(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("k8s_pods")
    r = collect(tmp, "k8s_pods.pcapng")
    assert "inventory" in r.stderr and "resources" in r.stderr
    return tmp


def test_every_flow_names_the_pods_at_both_ends(pods_store: Path) -> None:
    got = rows(pods_store, f"""
        SELECT server_port, protocol, is_ipv4, {COLUMNS}, count() AS flows
        FROM flow_log.l4_flow_log WHERE protocol IN (6, 17) GROUP BY ALL ORDER BY server_port, is_ipv4""")
    summary = {(r["server_port"], r["is_ipv4"]): r for r in got}
    assert set(summary) == {(53, 1), (6379, 1), (8080, 1), (8080, 0)}
    assert all(r["cluster_0"] == r["cluster_1"] == "lab" and r["node_0"] == r["node_1"] == "node-1" for r in got)
    http4, http6, dns = summary[(8080, 1)], summary[(8080, 0)], summary[(53, 1)]
    for http in (http4, http6):                   # web-a → api over IPv4 and IPv6
        assert (http["pod_0"], http["ns_0"], http["group_0"], http["group_type_0"]) == ("web-a", "shop", "web", 130)
        assert (http["pod_1"], http["ns_1"], http["group_1"], http["service_1"]) == ("api", "payments", "api", "api")
        assert http["service_0"] == "web" and http["instance_0"] == "web-a" and http["instance_1"] == "api"
    assert http4["flows"] == 2 and http6["flows"] == 1
    assert (dns["pod_1"], dns["ns_1"], dns["service_1"], dns["group_1"]) == ("coredns", "kube-system", "kube-dns", "coredns")
    assert dns["flows"] == 3
    redis = [r for r in got if r["server_port"] == 6379]
    assert sorted((r["pod_0"], r["pod_1"], r["group_1"], r["group_type_1"], r["service_1"], r["flows"]) for r in redis) == [
        ("web-a", "redis-0", "redis", 131, "redis", 1)] or sorted(
        (r["pod_0"], r["flows"]) for r in redis) == [("api", 1), ("web-a", 1)]
    by_client = rows(pods_store, """
        SELECT dictGet('flow_tag.pod_map', 'name', toUInt64(pod_id_0)) AS c,
               dictGet('flow_tag.pod_map', 'name', toUInt64(pod_id_1)) AS s,
               dictGet('flow_tag.pod_group_map', 'pod_group_type', toUInt64(pod_group_id_1)) AS t, count() AS n
        FROM flow_log.l4_flow_log WHERE server_port = 6379 GROUP BY ALL ORDER BY c""")
    assert [(r["c"], r["s"], r["t"], r["n"]) for r in by_client] == [("api", "redis-0", 131, 1), ("web-a", "redis-0", 131, 1)]


def test_requests_carry_the_same_tags(pods_store: Path) -> None:
    got = rows(pods_store, f"""
        SELECT l7_protocol, response_code, {COLUMNS} FROM flow_log.l7_flow_log
        WHERE l7_protocol = 20 ORDER BY start_time""")
    assert len(got) == 8 and sorted(r["response_code"] for r in got) == [200] * 7 + [404]
    assert {(r["pod_0"], r["ns_0"], r["pod_1"], r["ns_1"], r["service_1"]) for r in got} == {
        ("web-a", "shop", "api", "payments", "api")}
    flows = rows(pods_store, "SELECT sum(l7_request) AS req, sum(l7_client_error) AS ce, sum(l7_error) AS e "
                             "FROM flow_log.l4_flow_log WHERE server_port = 8080")
    assert flows == [{"req": 8, "ce": 1, "e": 1}]          # l7_error = client + server errors (§1e)


def test_application_and_network_metrics_are_tagged(pods_store: Path) -> None:
    app = rows(pods_store, """
        SELECT dictGet('flow_tag.pod_service_map', 'name', toUInt64(service_id_1)) AS svc, sum(request) AS req,
               sum(client_error) AS err
        FROM flow_metrics.`application_map.1m` GROUP BY svc ORDER BY svc""")
    assert {r["svc"]: (r["req"], r["err"]) for r in app}["api"] == (8, 1)
    net = rows(pods_store, """
        SELECT dictGet('flow_tag.pod_map', 'name', toUInt64(pod_id_1)) AS pod, sum(new_flow) AS flows
        FROM flow_metrics.`network_map.1m` WHERE protocol IN (6, 17) GROUP BY pod ORDER BY pod""")
    assert {r["pod"]: r["flows"] for r in net} == {"api": 3, "coredns": 3, "redis-0": 2}


def test_labels_and_hosts_resolve(pods_store: Path) -> None:
    got = rows(pods_store, """
        SELECT dictGet('flow_tag.pod_k8s_label_map', 'value', (toUInt64(pod_id_1), 'tier')) AS tier,
               dictGet('flow_tag.pod_service_k8s_label_map', 'value', (toUInt64(service_id_1), 'team')) AS team
        FROM flow_log.l4_flow_log WHERE server_port = 8080 LIMIT 1""")
    assert got == [{"tier": "backend", "team": "payments"}]


def test_a_reused_pod_ip_tags_old_and_new_flows_by_time(tmp_path: Path) -> None:
    """web-a (10.16.0.11) is deleted; web-b gets its address ~2 s later: the flows before the
    deletion are web-a's, the flows after web-b's creation are web-b's, by their start times."""
    collect(tmp_path, "k8s_churn.pcapng")
    got = rows(tmp_path, """
        SELECT dictGet('flow_tag.pod_map', 'name', toUInt64(pod_id_0)) AS pod, server_port,
               min(toUnixTimestamp64Micro(start_time)) AS first, max(toUnixTimestamp64Micro(end_time)) AS last,
               count() AS flows
        FROM flow_log.l4_flow_log WHERE IPv4NumToString(ip4_0) = '10.16.0.11' GROUP BY pod, server_port
        ORDER BY first""")
    assert [(r["pod"], r["server_port"], r["flows"]) for r in got] == [
        ("web-a", 8080, 1), ("web-b", 8080, 1), ("web-b", 6379, 1)]
    assert got[0]["last"] <= CHURN["deleted_at"] * 1e6 < CHURN["web_b_created_at"] * 1e6 <= got[1]["first"]
    l7 = rows(tmp_path, """
        SELECT dictGet('flow_tag.pod_map', 'name', toUInt64(pod_id_0)) AS pod, count() AS n
        FROM flow_log.l7_flow_log WHERE l7_protocol = 20 GROUP BY pod ORDER BY pod""")
    assert [(r["pod"], r["n"]) for r in l7] == [("web-a", 2), ("web-b", 3)]


def test_without_an_inventory_nothing_is_tagged(tmp_path: Path) -> None:
    collect(tmp_path, "k8s_pods.pcapng", inventory=None)
    got = rows(tmp_path, "SELECT max(pod_id_0) AS a, max(pod_id_1) AS b, min(l3_epc_id_1) AS epc, "
                         "max(auto_instance_type_1) AS auto FROM flow_log.l4_flow_log")
    assert got == [{"a": 0, "b": 0, "epc": 0, "auto": 255}]     # private and multicast: epc 0, type IP


def test_a_bad_inventory_is_one_readable_error(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("clusters:\n  - name: x\n    pods: [{name: p, ips: [10.0.0.300]}]\n")
    r = subprocess.run([str(FLOWSCOPE), "collect", "--pcap", str(DATA / "k8s_pods.pcapng"), "--inventory", str(bad),
                        "--clickhouse", f"chdb://{tmp_path / 'chdb'}", "--metadata", f"sqlite:///{tmp_path / 'm.db'}"],
                       cwd=tmp_path, env=ENV, capture_output=True, text=True, timeout=120)
    assert r.returncode == 2
    assert "inventory error:" in r.stderr and "clusters[0].pods[0].ips[0]: not an IP address: '10.0.0.300'" in r.stderr


def test_kubernetes_inventory_tags_the_same_pcap(tmp_path: Path) -> None:
    """``--kube lab=KUBECONFIG``: the recorded Kube-OVN cluster (tests/data/k8s/cluster.json) served
    by the contract API server (no real API server runs here; tests/k8s_api.py) through the real
    ``kubernetes`` client. Its pods hold the pcap's addresses: web-7c9d8f6b5-2xkqz 10.16.0.11,
    api-6f7b9c5d48-zp5xw 10.16.0.20 / fd00:10:16::20, redis-0 10.16.0.13 (its coredns pods have
    other addresses: the DNS server 10.16.0.5 stays unknown, and so does the client's IPv6 address,
    which the recorded web pod does not have)."""
    import yaml

    from tests.k8s_api import KubeAPIServer, load_cluster

    with KubeAPIServer(load_cluster()) as api:
        kubeconfig = tmp_path / "kubeconfig"
        kubeconfig.write_text(yaml.safe_dump({
            "apiVersion": "v1", "kind": "Config", "current-context": "lab",
            "clusters": [{"name": "lab", "cluster": {"server": api.url}}],
            "users": [{"name": "u", "user": {"token": "not-checked"}}],
            "contexts": [{"name": "lab", "context": {"cluster": "lab", "user": "u"}}]}))
        args = [str(FLOWSCOPE), "collect", "--pcap", str(DATA / "k8s_pods.pcapng"), "--kube", f"lab={kubeconfig}",
                "--clickhouse", f"chdb://{tmp_path / 'chdb'}", "--metadata", f"sqlite:///{tmp_path / 'm.db'}"]
        r = subprocess.run(args, cwd=tmp_path, env=ENV, capture_output=True, text=True, timeout=180)
        assert r.returncode == 0, r.stderr
        assert any(q.watch for q in api.requests_for("pods"))         # listed, then watched
    got = rows(tmp_path, f"""
        SELECT server_port, is_ipv4, {COLUMNS}, count() AS flows FROM flow_log.l4_flow_log
        WHERE protocol IN (6, 17) GROUP BY ALL ORDER BY server_port, is_ipv4, pod_0""")
    seen = {(r["server_port"], r["is_ipv4"], r["pod_0"], r["pod_1"], r["group_1"], r["service_1"], r["flows"])
            for r in got}
    assert seen == {
        (53, 1, "web-7c9d8f6b5-2xkqz", "", "", "", 3),
        (6379, 1, "api-6f7b9c5d48-zp5xw", "redis-0", "redis", "redis", 1),
        (6379, 1, "web-7c9d8f6b5-2xkqz", "redis-0", "redis", "redis", 1),
        (8080, 0, "", "api-6f7b9c5d48-zp5xw", "api", "api", 1),      # the web pod is IPv4-only there
        (8080, 1, "web-7c9d8f6b5-2xkqz", "api-6f7b9c5d48-zp5xw", "api", "api", 2),
    }
    assert {(r["ns_0"], r["group_0"], r["group_type_0"], r["cluster_0"], r["node_0"]) for r in got if r["pod_0"]} == {
        ("shop", "web", 130, "lab", "node-2"), ("payments", "api", 130, "lab", "node-1")}
    notes = rows(tmp_path, """
        SELECT dictGet('flow_tag.pod_k8s_annotation_map', 'value',
                       (toUInt64(pod_id_1), 'ovn.kubernetes.io/logical_switch')) AS switch,
               JSONExtractString(dictGet('flow_tag.pod_k8s_annotations_map', 'annotations', toUInt64(pod_id_1)),
                                 'ovn.kubernetes.io/ip_address') AS ips
        FROM flow_log.l4_flow_log WHERE server_port = 8080 AND is_ipv4 LIMIT 1""")
    assert notes == [{"switch": "ovn-default", "ips": "10.16.0.20,fd00:10:16::20"}]   # Kube-OVN's annotations
