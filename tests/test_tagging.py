"""AutoTagging in the collector: the inventory file, and addresses → resource ids (datamodel §6).

The inventory here is written as the store hands it over (StoredRecords with ids); the end-to-end
tests (test_tagging_e2e.py) go through the real store, pcaps and ClickHouse dictionaries."""

from __future__ import annotations

import ipaddress

import pytest

from collector.tagging import (
    AUTO_CLUSTER,
    DEV_CHOST,
    DEV_NODE,
    DEV_POD,
    DEV_SERVICE,
    EPC_INTERNET,
    InventoryTagger,
    ip_key,
)
from flowscope.metadata.inventory import InventoryError, parse
from flowscope.metadata.model import Endpoint, Record, ServicePort, StoredRecord

INVENTORY = {
    "clusters": [{
        "name": "lab",
        "nodes": [{"name": "node-1", "ips": ["10.99.0.1"]}, {"name": "node-2", "ips": ["10.99.0.2"]}],
        "pods": [
            {"name": "web-0", "namespace": "shop", "ips": ["10.16.0.11", "fd00:10:16::11"], "node": "node-1",
             "workload": {"kind": "StatefulSet", "name": "web"}, "labels": {"app": "web"}},
            {"name": "cni-x", "namespace": "kube-system", "ips": ["10.99.0.1"], "node": "node-1",
             "host_network": True, "workload": {"kind": "DaemonSet", "name": "cni"}},
            {"name": "job-1", "namespace": "shop", "ips": ["10.16.0.30"], "node": "node-2"},
        ],
        "services": [{"name": "web", "namespace": "shop", "cluster_ips": ["10.96.0.10"],
                      "selector": {"app": "web"},
                      "ports": [{"port": 80, "target_port": 8080, "node_port": 30080}]}],
    }],
    "hosts": [{"name": "vm-a", "ips": ["192.168.10.5"], "macs": ["02:00:00:00:00:0A"]}],
}


def stored(records: list[Record]) -> list[StoredRecord]:
    """Ids per kind from 1 and parent ids by name, as the metadata store assigns them."""
    ids: dict[tuple, int] = {}
    counters: dict[str, int] = {}
    out = []
    for rec in records:
        counters[rec.kind] = counters.get(rec.kind, 0) + 1
        ids[(rec.kind, rec.cluster, rec.namespace, rec.name)] = \
            counters[rec.kind]
    for rec in records:
        out.append(StoredRecord(
            id=ids[(rec.kind, rec.cluster, rec.namespace, rec.name)], record=rec,
            cluster_id=ids.get(("cluster", rec.cluster, "", rec.cluster), 0),
            namespace_id=ids.get(("namespace", rec.cluster, "", rec.namespace), 0),
            node_id=ids.get(("node", rec.cluster, "", rec.node), 0),
            group_id=ids.get(("pod_group", rec.cluster, rec.namespace, rec.group_name), 0)))
    return out


@pytest.fixture
def tagger() -> InventoryTagger:
    t = InventoryTagger()
    t.load(stored(parse(INVENTORY)))
    t.apply_pending()
    return t


def res(t: InventoryTagger, ip: str, ts: int = 0):
    return t.registry.by_id[t.tag(ip_key(ip), ts)]


def test_file_lists_what_pods_imply() -> None:
    recs = parse(INVENTORY)
    kinds = [(r.kind, r.namespace, r.name) for r in recs]
    assert ("namespace", "", "shop") in kinds and ("namespace", "", "kube-system") in kinds
    assert ("pod_group", "shop", "web") in kinds and ("pod_group", "kube-system", "cni") in kinds
    assert next(r for r in recs if r.kind == "pod_group" and r.name == "web").group_kind == "StatefulSet"
    assert [r.kind for r in recs] == sorted((r.kind for r in recs), key=["cluster", "node", "namespace",
                                            "pod_group", "service", "pod", "host"].index)
    svc = next(r for r in recs if r.kind == "service")
    assert svc.ports == (ServicePort(80, "TCP", 8080, 30080),) and svc.service_type == "NodePort"
    host = next(r for r in recs if r.kind == "host")
    assert host.macs == ("02:00:00:00:00:0a",) and host.cluster == ""


@pytest.mark.parametrize("doc, message", [
    ({"clusters": [{"name": "x", "pods": [{"name": "p", "ips": ["10.1"]}]}]},
     "clusters[0].pods[0].ips[0]: not an IP address: '10.1'"),
    ({"clusters": [{"name": "x", "pods": [{"name": "p", "workload": {"kind": "Foo", "name": "f"}}]}]},
     "clusters[0].pods[0].workload.kind: one of Deployment"),
    ({"clusters": [{"name": "x", "services": [{"name": "s", "ports": [{"port": 70000}]}]}]},
     "clusters[0].services[0].ports[0].port: expected a port number, got 70000"),
    ({"clusters": [{"name": "x", "nodes": [{"name": "n"}, {"name": "n"}]}]}, "duplicate node 'n'"),
    ({"clusters": [{"name": "x", "pods": [{"nam": "p"}]}]}, "clusters[0].pods[0]: unknown key(s) ['nam']"),
    ({"hosts": [{"name": "h", "macs": ["zz"]}]}, "hosts[0].macs[0]: not a MAC address: 'zz'"),
    ({"hosts": [{"name": "h", "created": "yesterday"}]}, "hosts[0].created: expected epoch seconds or an ISO"),
    ({"cluster": []}, "unknown key(s) ['cluster']"),
])
def test_file_errors_name_the_item(doc, message) -> None:
    with pytest.raises(InventoryError) as e:
        parse(doc, "inv.yaml")
    assert message in str(e.value) and str(e.value).startswith("inv.yaml: ")


def test_pod_node_service_host_and_outside(tagger: InventoryTagger) -> None:
    web = res(tagger, "10.16.0.11")
    assert (web.l3_device_type, web.pod_id, web.pod_node_id, web.pod_cluster_id) == (DEV_POD, 1, 1, 1)
    assert web.pod_group_id == 1 and web.pod_ns_id == 1 and web.l3_epc_id == 1
    assert (web.service_id, web.auto_instance_type, web.auto_service_type) == (1, DEV_POD, DEV_SERVICE)
    assert res(tagger, "fd00:10:16::11") == web                       # every IP of a pod, IPv6 too
    job = res(tagger, "10.16.0.30")                                   # no group, no service: the cluster
    assert (job.pod_id, job.pod_group_id, job.service_id) == (3, 0, 0)
    assert (job.auto_service_type, job.auto_service_id) == (AUTO_CLUSTER, 1)
    node = res(tagger, "10.99.0.1")                                   # the host-network pod does not own it
    assert (node.l3_device_type, node.pod_node_id, node.pod_id, node.auto_instance_type) == (DEV_NODE, 1, 0, DEV_NODE)
    svc = res(tagger, "10.96.0.10")
    assert (svc.l3_device_type, svc.service_id, svc.pod_ns_id, svc.auto_service_type) == (DEV_SERVICE, 1, 1, DEV_SERVICE)
    host = res(tagger, "192.168.10.5")
    assert (host.l3_device_type, host.auto_instance_type, host.l3_epc_id) == (DEV_CHOST, DEV_CHOST, 1)
    assert res(tagger, "8.8.8.8").l3_epc_id == EPC_INTERNET
    assert res(tagger, "10.200.9.9").l3_epc_id == 0 and res(tagger, "10.200.9.9").auto_instance_type == 255


def test_node_port_names_the_service_on_the_node(tagger: InventoryTagger) -> None:
    node_tid = tagger.tag(ip_key("10.99.0.2"))
    via = tagger.registry.by_id[tagger.port_tags[(node_tid, 30080)]]
    assert (via.pod_node_id, via.service_id, via.auto_service_type) == (2, 1, DEV_SERVICE)
    assert (node_tid, 80) not in tagger.port_tags


def test_pod_behind_two_services_is_told_apart_by_port() -> None:
    recs = parse({"clusters": [{"name": "c", "pods": [
        {"name": "db-0", "namespace": "d", "ips": ["10.16.0.40"], "labels": {"app": "db"}}],
        "services": [
            {"name": "db", "namespace": "d", "cluster_ips": ["10.96.1.1"], "selector": {"app": "db"},
             "ports": [{"port": 5432}]},
            {"name": "db-metrics", "namespace": "d", "cluster_ips": ["10.96.1.2"], "selector": {"app": "db"},
             "ports": [{"port": 9187}]}]}]})
    t = InventoryTagger()
    t.load(stored(recs))
    t.apply_pending()
    tid = t.tag(ip_key("10.16.0.40"))
    assert t.registry.by_id[tid].service_id == 1                    # no port (client side): the first
    assert t.registry.by_id[t.port_tags[(tid, 5432)]].service_id == 1
    assert t.registry.by_id[t.port_tags[(tid, 9187)]].service_id == 2


def test_endpoint_slices_win_over_selectors() -> None:
    recs = parse({"clusters": [{"name": "c", "pods": [
        {"name": "a", "namespace": "n", "ips": ["10.16.0.50"], "labels": {"app": "x"}}]}]})
    recs.append(Record(kind="service", name="ext", cluster="c", namespace="n", ips=("10.96.2.2",),
                       ports=(ServicePort(443, "TCP", 8443),), endpoints=(Endpoint("10.16.0.50", 8443),)))
    t = InventoryTagger()
    t.load(stored(recs))
    t.apply_pending()
    assert t.registry.by_id[t.tag(ip_key("10.16.0.50"))].service_id == 1


def test_a_reused_ip_is_tagged_by_time() -> None:
    """web-a held 10.16.0.11 until t=100 s; web-b from t=102 s: flows resolve by their start."""
    recs = parse({"clusters": [{"name": "c", "pods": [
        {"name": "web-a", "namespace": "n", "ips": ["10.16.0.11"], "created": 10, "deleted": 100},
        {"name": "web-b", "namespace": "n", "ips": ["10.16.0.11"], "created": 102}]}]})
    t = InventoryTagger()
    t.load(stored(recs))
    t.apply_pending()
    ip = ip_key("10.16.0.11")
    assert t.registry.by_id[t.tag(ip, 50_000_000)].pod_id == 1
    assert t.registry.by_id[t.tag(ip, 150_000_000)].pod_id == 2
    assert t.registry.by_id[t.tag(ip, 101_000_000)].pod_id == 1      # the gap: the last one before
    assert t.registry.by_id[t.tag(ip, 1_000_000)].pod_id == 1        # before both: the first
    assert ip not in t.cache                                          # time-dependent: never cached


def test_a_new_inventory_applies_between_batches_only(tagger: InventoryTagger) -> None:
    ip = ip_key("10.16.0.11")
    before = tagger.tag(ip)
    assert ip in tagger.cache
    tagger.load(stored(parse({"clusters": [{"name": "lab"}]})))
    assert tagger.tag(ip) == before                   # built, not applied: capture keeps its answers
    tagger.apply_pending()
    assert not tagger.cache and tagger.registry.by_id[tagger.tag(ip)].pod_id == 0


def test_ip_keys_match_the_flow_table() -> None:
    assert ip_key("10.0.0.1") == int(ipaddress.IPv4Address("10.0.0.1"))
    assert ip_key("fd00::1") == ipaddress.IPv6Address("fd00::1").packed


def test_an_address_the_inventory_lacks_is_named_by_the_pods_mac() -> None:
    """web-a's IPv6 address is not in this inventory, its MAC is: the IPv6 flows from it are
    still web-a's (tag_source 4, MAC), and a pod deleted earlier no longer claims its MAC."""
    from tests.helpers import replay

    recs = parse({"clusters": [{"name": "lab", "pods": [
        {"name": "web-a", "namespace": "shop", "ips": ["10.16.0.11"], "macs": ["00:00:00:ca:61:07"]},
        {"name": "old", "namespace": "shop", "ips": ["10.16.0.99"], "macs": ["00:00:00:fa:35:c1"], "deleted": 1},
        {"name": "api", "namespace": "payments", "ips": ["10.16.0.20", "fd00:10:16::20"]}]}]})
    t = InventoryTagger()
    t.load(stored(recs))
    t.apply_pending()
    writer, _ = replay("k8s_pods.pcapng", tagger=t)
    v6 = [r for r in writer.l4_rows() if not r["is_ipv4"] and r["server_port"] == 8080]
    assert len(v6) == 1
    client, server = (t.registry.by_id[v6[0][f"tag_id_{s}"]] for s in (0, 1))
    assert (client.pod_id, client.tag_source) == (1, 4) and (server.pod_id, server.tag_source) == (3, 8)
    assert 0x00000000FA35C1 not in t.macs and 0x00000000CA6107 in t.macs
