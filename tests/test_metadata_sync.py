"""The metadata store synced into flow_tag on the embedded engine: the dictionaries the datasource
uses resolve ids to the inventory's names, renames show after the next sync, deleted resources keep
resolving, and an unchanged inventory writes nothing."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from flowscope import migrate
from flowscope.metadata.model import GROUP_TYPES, Endpoint, Record
from flowscope.metadata.store import MetadataStore
from flowscope.metadata.sync import FlowTagSyncer, SyncState, build_rows, sync_flow_tag
from flowscope.storage import connect

T0 = 1_700_000_000.0


def pod(name: str, uid: str, ip: str, node: str, group: str, group_kind: str, labels: dict[str, str]) -> Record:
    return Record("pod", name, cluster="prod", namespace="shop", uid=uid, ips=(ip,), node=node,
                  group_kind=group_kind, group_name=group, labels=labels, created=T0)


def inventory(store: MetadataStore) -> dict[str, int]:
    """2 nodes, 2 namespaces, a Deployment with 2 pods, a StatefulSet pod, a Service selecting the
    Deployment's pods, a Service with endpoints, a host. Returns ids by name."""
    ids = {
        "node-1": store.upsert(Record("node", "node-1", cluster="prod", ips=("10.0.0.1",), created=T0)),
        "node-2": store.upsert(Record("node", "node-2", cluster="prod", ips=("10.0.0.2",), created=T0)),
        "kube-system": store.upsert(Record("namespace", "kube-system", cluster="prod", created=T0)),
        "web": store.upsert(Record("pod_group", "web", cluster="prod", namespace="shop",
                                   group_kind="Deployment", created=T0)),
        "web-a": store.upsert(pod("web-a", "uid-a", "10.1.0.1", "node-1", "web", "Deployment",
                                  {"app": "web", "version": "v1"})),
        "web-b": store.upsert(pod("web-b", "uid-b", "10.1.0.2", "node-2", "web", "Deployment",
                                  {"app": "web", "version": "v1"})),
        "db-0": store.upsert(pod("db-0", "uid-db0", "10.1.0.3", "node-2", "db", "StatefulSet", {"app": "db"})),
        "svc-web": store.upsert(Record("service", "web", cluster="prod", namespace="shop", ips=("10.96.0.10",),
                                       labels={"app": "web", "tier": "front"}, selector={"app": "web"},
                                       service_type="ClusterIP", created=T0)),
        "svc-db": store.upsert(Record("service", "db", cluster="prod", namespace="shop", ips=("10.96.0.20",),
                                      endpoints=(Endpoint("10.1.0.3", 5432),), created=T0)),
        "bastion": store.upsert(Record("host", "bastion", ips=("192.168.1.5", "192.168.1.6"), created=T0)),
    }
    ids["shop"] = next(s.id for s in store.records(["namespace"]) if s.record.name == "shop")
    ids["db"] = next(s.id for s in store.records(["pod_group"]) if s.record.name == "db")
    ids["prod"] = store.records(["cluster"])[0].id
    return ids


@pytest.fixture
def store(tmp_path: Path):
    s = MetadataStore(f"sqlite:///{tmp_path / 'metadata.db'}")
    try:
        yield s
    finally:
        s.close()


@pytest.fixture
def flow_tag(chdb):
    migrate.apply(chdb)
    return chdb


def lookup(client: Any) -> Callable[..., Any]:
    def get(dictionary: str, attr: str, key: str) -> Any:
        return client.query(f"SELECT dictGet('flow_tag.{dictionary}', '{attr}', {key})").result_rows[0][0]

    return get


def test_sync_resolves_every_dictionary(store: MetadataStore, flow_tag) -> None:
    ids = inventory(store)
    written = sync_flow_tag(store, flow_tag, SyncState())
    assert written["pod"] == 3 and written["pod_node"] == 2 and written["pod_cluster"] == 1
    get = lookup(flow_tag)
    u = "toUInt64({})".format
    assert get("pod_map", "name", u(ids["web-a"])) == "web-a"
    assert get("pod_map", "pod_group_id", u(ids["web-b"])) == ids["web"]
    assert get("pod_map", "pod_node_id", u(ids["web-b"])) == ids["node-2"]
    assert get("pod_map", "pod_service_id", u(ids["web-a"])) == ids["svc-web"]     # by selector
    assert get("pod_map", "pod_service_id", u(ids["db-0"])) == ids["svc-db"]       # by endpoint IP
    assert get("pod_ns_map", "name", u(ids["shop"])) == "shop"
    assert get("pod_ns_map", "name", u(ids["kube-system"])) == "kube-system"
    assert get("pod_group_map", "name", u(ids["db"])) == "db"
    assert get("pod_group_map", "pod_group_type", u(ids["web"])) == GROUP_TYPES["Deployment"]
    assert get("pod_group_map", "pod_group_type", u(ids["db"])) == GROUP_TYPES["StatefulSet"]
    assert get("pod_service_map", "name", u(ids["svc-web"])) == "web"
    assert get("pod_service_map", "pod_ns_id", u(ids["svc-web"])) == ids["shop"]
    assert get("pod_node_map", "name", u(ids["node-1"])) == "node-1"
    assert get("pod_cluster_map", "name", u(ids["prod"])) == "prod"
    assert get("chost_map", "ip", u(ids["bastion"])) == "192.168.1.5"
    assert get("l3_epc_map", "name", u(1)) == "default"
    device = "(toUInt64({}), toUInt64({}))".format
    assert get("device_map", "name", device(10, ids["db-0"])) == "db-0"
    assert get("device_map", "name", device(11, ids["svc-db"])) == "db"
    assert get("device_map", "name", device(14, ids["node-2"])) == "node-2"
    assert get("device_map", "name", device(103, ids["prod"])) == "prod"
    assert get("device_map", "name", device(1, ids["bastion"])) == "bastion"
    assert get("device_map", "name", device(131, ids["db"])) == "db"
    assert get("device_map", "name", device(130, ids["web"])) == "web"
    label = "(toUInt64({}), '{}')".format
    assert get("pod_k8s_label_map", "value", label(ids["web-a"], "version")) == "v1"
    assert get("pod_k8s_labels_map", "labels", u(ids["db-0"])) == '{"app":"db"}'
    assert get("pod_service_k8s_label_map", "value", label(ids["svc-web"], "tier")) == "front"
    assert get("pod_service_k8s_labels_map", "labels", u(ids["svc-db"])) == "{}"
    ip = "('{}', toUInt64(0))".format
    assert get("ip_resource_map", "pod_name", ip("10.1.0.2")) == "web-b"
    assert get("ip_resource_map", "pod_group_name", ip("10.1.0.2")) == "web"
    assert get("ip_resource_map", "pod_node_name", ip("10.1.0.2")) == "node-2"
    assert get("ip_resource_map", "pod_service_name", ip("10.1.0.2")) == "web"
    assert get("ip_resource_map", "pod_cluster_name", ip("10.1.0.2")) == "prod"
    assert get("ip_resource_map", "pod_service_name", ip("10.96.0.20")) == "db"
    assert get("ip_resource_map", "pod_node_name", ip("10.0.0.1")) == "node-1"
    assert get("ip_resource_map", "chost_name", ip("192.168.1.6")) == "bastion"
    assert get("ip_resource_map", "vpc_name", ip("192.168.1.6")) == "default"
    assert get("ip_resource_map", "uid", ip("10.1.0.3")) == "uid-db0"


def test_changes_renames_and_deletions(store: MetadataStore, flow_tag) -> None:
    ids = inventory(store)
    state = SyncState()
    first = sync_flow_tag(store, flow_tag, state)
    assert all(first[t] > 0 for t in ("pod", "device", "ip_resource", "l3_epc"))
    assert sum(sync_flow_tag(store, flow_tag, state).values()) == 0  # nothing changed: nothing written

    get = lookup(flow_tag)
    # A rename (same uid) and a removed label.
    store.upsert(pod("web-a-renamed", "uid-a", "10.1.0.1", "node-1", "web", "Deployment", {"app": "web"}))
    written = sync_flow_tag(store, flow_tag, state)
    assert written["pod"] == 1 and written["pod_k8s_labels"] == 1
    assert written["pod_k8s_label"] == 1  # the tombstone of "version"
    assert written["pod_node"] == 0 and written["pod_service"] == 0
    assert get("pod_map", "name", f"toUInt64({ids['web-a']})") == "web-a-renamed"
    assert get("device_map", "name", f"(toUInt64(10), toUInt64({ids['web-a']}))") == "web-a-renamed"
    assert get("ip_resource_map", "pod_name", "('10.1.0.1', toUInt64(0))") == "web-a-renamed"
    assert get("pod_k8s_label_map", "value", f"(toUInt64({ids['web-a']}), 'version')") == ""
    assert get("pod_k8s_label_map", "value", f"(toUInt64({ids['web-b']}), 'version')") == "v1"

    # web-b is deleted and a new pod takes its IP: both ids resolve; the IP names the live one.
    store.delete("pod", "prod", "uid-b", when=T0 + 100)
    new = store.upsert(pod("web-c", "uid-c", "10.1.0.2", "node-1", "web", "Deployment", {"app": "web"}))
    sync_flow_tag(store, flow_tag, state)
    assert get("pod_map", "name", f"toUInt64({ids['web-b']})") == "web-b"
    assert get("pod_map", "name", f"toUInt64({new})") == "web-c"
    assert get("pod_map", "pod_service_id", f"toUInt64({ids['web-b']})") == ids["svc-web"]
    assert get("ip_resource_map", "pod_name", "('10.1.0.2', toUInt64(0))") == "web-c"
    assert get("ip_resource_map", "pod_node_name", "('10.1.0.2', toUInt64(0))") == "node-1"


def test_fresh_state_rewrites_and_tombstones_from_clickhouse(store: MetadataStore, flow_tag) -> None:
    ids = inventory(store)
    sync_flow_tag(store, flow_tag)          # default state: one per client
    assert sum(sync_flow_tag(store, flow_tag).values()) == 0
    store.upsert(Record("service", "web", cluster="prod", namespace="shop", ips=("10.96.0.10",),
                        labels={"app": "web"}, selector={"app": "web"}, service_type="ClusterIP", created=T0))
    # A restarted syncer (empty state) writes everything and still removes the dropped label.
    written = sync_flow_tag(store, flow_tag, SyncState())
    assert written["pod"] == 3 and written["pod_service_k8s_label"] == 2  # app, and the tier tombstone
    get = lookup(flow_tag)
    assert get("pod_service_k8s_label_map", "value", f"(toUInt64({ids['svc-web']}), 'tier')") == ""
    assert get("pod_service_k8s_label_map", "value", f"(toUInt64({ids['svc-web']}), 'app')") == "web"


def test_build_rows_prefers_live_owner_of_an_ip(store: MetadataStore) -> None:
    old = store.upsert(Record("pod", "old", cluster="c", namespace="n", uid="u1", ips=("10.9.0.1",), created=T0 + 50))
    store.delete("pod", "c", "u1", when=T0 + 60)
    live = store.upsert(Record("pod", "new", cluster="c", namespace="n", uid="u2", ips=("10.9.0.1",), created=T0))
    store.upsert(Record("pod", "hostnet", cluster="c", namespace="n", uid="u3", ips=("10.0.0.9",), host_network=True))
    rows = build_rows(store.records())
    owners = {r[0]: r[22] for r in rows["ip_resource"]}
    assert owners["10.9.0.1"] == live != old
    assert "10.0.0.9" not in owners  # a host-network pod's IP belongs to its node
    assert {r[0] for r in rows["pod"]} == {old, live, live + 1}


def wait_for(condition: Callable[[], bool], timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.02)


def test_syncer_follows_revision_and_survives_errors(store: MetadataStore, flow_tag, chdb_dsn: str,
                                                     tmp_path: Path) -> None:
    inventory(store)
    attempts = []

    def factory():
        attempts.append(time.monotonic())
        if len(attempts) == 1:
            raise RuntimeError("ClickHouse is down")
        return connect(chdb_dsn)

    get = lookup(flow_tag)
    syncer = FlowTagSyncer(store, factory, interval_s=3600, poll_s=0.05).start()
    try:
        wait_for(lambda: syncer.stats["syncs"] >= 1)
        assert syncer.sync_errors == 1 and "ClickHouse is down" in syncer.last_error
        assert get("pod_cluster_map", "name", "toUInt64(1)") == "prod"
        rows = syncer.stats["rows"]
        syncs = syncer.stats["syncs"]
        time.sleep(0.3)  # the revision did not move: no sync
        assert syncer.stats["syncs"] == syncs
        host = store.upsert(Record("host", "new-host", ips=("192.168.1.9",)))
        wait_for(lambda: syncer.stats["syncs"] > syncs)
        assert syncer.stats["rows"] > rows
        assert get("chost_map", "name", f"toUInt64({host})") == "new-host"

        # The store goes away, then comes back: errors are counted, syncing resumes.
        dsn = store.dsn
        store.close()
        wait_for(lambda: syncer.sync_errors >= 2)
        with MetadataStore(dsn) as reopened:
            syncer.store = reopened
            reopened.upsert(Record("host", "later", ips=("192.168.1.10",)))
            wait_for(lambda: get("chost_map", "name", "toUInt64(3)") == "later")
            assert syncer.stats["last_ok"] > 0
            syncer.stop()
    finally:
        syncer.stop()
