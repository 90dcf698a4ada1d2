"""KubeWatcher against the contract-test API server (tests/k8s_api.py), through the real
``kubernetes`` client: what reaches the sink, and the exact requests the client sends."""

from __future__ import annotations

import copy
import dataclasses
import threading
import time
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client

from flowscope.metadata import kube
from flowscope.metadata.kube import ClusterSpec, KubeWatcher, load_api_client, watch_clusters
from flowscope.metadata.model import Endpoint, Record, ServicePort
from tests.k8s_api import KubeAPIServer, load_cluster

CLUSTER = "lab"


def ts(s: str) -> float:
    return datetime.fromisoformat(s.replace("Z", "+00:00")).timestamp()


def wait_for(cond: Callable[[], Any], timeout: float = 5.0, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if value := cond():
            return value
        time.sleep(0.01)
    raise AssertionError(f"timed out waiting for {what}")


class MemorySink:
    """The Sink contract in memory: keeps deleted records (with their deletion time) like the
    store does, and logs every call. ``broken`` makes every call raise, as a store that is down."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.records: dict[tuple[str, str, str], Record] = {}
        self.calls: list[tuple] = []
        self.broken = False

    def _check(self) -> None:
        if self.broken:
            raise ConnectionError("metadata store is down")

    def upsert(self, rec: Record) -> int:
        with self.lock:
            self._check()
            self.calls.append(("upsert", rec.kind, rec.cluster, rec.key))
            self.records[(rec.kind, rec.cluster, rec.key)] = dataclasses.replace(rec)
            return len(self.records)

    def delete(self, kind: str, cluster: str, key: str, when: float) -> None:
        with self.lock:
            self._check()
            self.calls.append(("delete", kind, cluster, key, when))
            rec = self.records.get((kind, cluster, key))
            if rec is not None:
                rec.deleted = when

    def replace(self, kind: str, cluster: str, records: list[Record], when: float) -> None:
        with self.lock:
            self._check()
            self.calls.append(("replace", kind, cluster, sorted(r.key for r in records), when))
            keys = {r.key for r in records}
            for r in records:
                self.records[(kind, cluster, r.key)] = dataclasses.replace(r)
            for (k, c, key), rec in self.records.items():
                if k == kind and c == cluster and key not in keys and rec.deleted is None:
                    rec.deleted = when

    def get(self, kind: str, key: str, cluster: str = CLUSTER) -> Record | None:
        with self.lock:
            return self.records.get((kind, cluster, key))

    def alive(self, kind: str, cluster: str = CLUSTER) -> dict[str, Record]:
        with self.lock:
            return {key: r for (k, c, key), r in self.records.items()
                    if k == kind and c == cluster and r.deleted is None}

    def pod(self, name: str, cluster: str = CLUSTER) -> Record:
        with self.lock:
            found = [r for (k, c, _), r in self.records.items() if k == "pod" and c == cluster and r.name == name]
        assert len(found) == 1, f"{name}: {found}"
        return found[0]


def api_client(server: KubeAPIServer) -> client.ApiClient:
    cfg = kube.api_configuration()
    cfg.host = server.url
    return client.ApiClient(cfg)


@pytest.fixture
def server() -> Iterator[KubeAPIServer]:
    srv = KubeAPIServer(load_cluster()).start()
    yield srv
    srv.stop()


@pytest.fixture
def sink() -> MemorySink:
    return MemorySink()


@pytest.fixture
def start_watcher() -> Iterator[Callable[..., KubeWatcher]]:
    started: list[KubeWatcher] = []

    def start(server: KubeAPIServer, sink: MemorySink, name: str = CLUSTER, **kw: Any) -> KubeWatcher:
        opts: dict[str, Any] = {"backoff": (0.02, 0.2), "page_size": 4, "watch_timeout_s": 30}
        opts.update(kw)
        w = KubeWatcher(name, sink, api_client(server), **opts)
        started.append(w)
        w.start()
        assert w.wait_synced(10), w.stats
        return w

    yield start
    for w in started:
        w.stop()


def watching(server: KubeAPIServer, n: int = len(kube.RESOURCES)) -> None:
    wait_for(lambda: server.open_watches() >= n, what="open watches")


def pod_obj(name: str, ns: str, uid: str, ips: list[str], *, node: str = "node-1", owner: tuple | None = None,
            labels: dict | None = None, created: str = "2023-06-22T06:00:00Z", phase: str = "Running") -> dict:
    md: dict[str, Any] = {"name": name, "namespace": ns, "uid": uid, "creationTimestamp": created,
                          "labels": labels or {}}
    if owner:
        kind, oname, ouid = owner
        md["ownerReferences"] = [{"apiVersion": "apps/v1" if kind != "Job" else "batch/v1", "kind": kind,
                                  "name": oname, "uid": ouid, "controller": True, "blockOwnerDeletion": True}]
    return {"kind": "Pod", "apiVersion": "v1", "metadata": md,
            "spec": {"nodeName": node, "containers": [{"name": "c", "image": "busybox"}]},
            "status": {"phase": phase, "podIP": ips[0] if ips else None, "podIPs": [{"ip": i} for i in ips]}}


def workload_obj(kind: str, name: str, ns: str, uid: str, owner: tuple | None = None) -> dict:
    md: dict[str, Any] = {"name": name, "namespace": ns, "uid": uid, "creationTimestamp": "2023-06-22T06:00:00Z"}
    if owner:
        md["ownerReferences"] = [{"apiVersion": "apps/v1", "kind": owner[0], "name": owner[1], "uid": owner[2],
                                  "controller": True}]
    return {"metadata": md, "spec": {}}


# ---------------------------------------------------------------------------------------------
# The recorded cluster, as records: the contract for the tagger and the end-to-end tests.

# pod name → (namespace, IPs, node, group kind, group name, hostNetwork)
EXPECTED_PODS = {
    "kube-ovn-cni-7xk2p": ("kube-system", ("10.99.0.1",), "node-1", "DaemonSet", "kube-ovn-cni", True),
    "kube-ovn-cni-9fzrt": ("kube-system", ("10.99.0.2",), "node-2", "DaemonSet", "kube-ovn-cni", True),
    "kube-ovn-cni-bq4vd": ("kube-system", ("10.99.0.3",), "node-3", "DaemonSet", "kube-ovn-cni", True),
    "coredns-5d78c9869d-4kx7z": ("kube-system", ("10.16.0.2",), "node-1", "Deployment", "coredns", False),
    "coredns-5d78c9869d-h8r2m": ("kube-system", ("10.16.0.3",), "node-2", "Deployment", "coredns", False),
    "web-7c9d8f6b5-2xkqz": ("shop", ("10.16.0.11",), "node-2", "Deployment", "web", False),
    "web-7c9d8f6b5-q7m4n": ("shop", ("10.16.0.12",), "node-3", "Deployment", "web", False),
    "redis-0": ("shop", ("10.16.0.13",), "node-3", "StatefulSet", "redis", False),
    "api-6f7b9c5d48-zp5xw": ("payments", ("10.16.0.20", "fd00:10:16::20"), "node-1", "Deployment", "api", False),
    "report-28123456-x7k9p": ("payments", ("10.16.0.21",), "node-2", "CronJob", "report", False),
}
# node → IPs: InternalIP, ExternalIP, then Kube-OVN's join-subnet (ovn0) IP from its annotation
EXPECTED_NODES = {"node-1": ("10.99.0.1", "192.0.2.11", "100.64.0.2"), "node-2": ("10.99.0.2", "100.64.0.3"),
                  "node-3": ("10.99.0.3", "100.64.0.4")}
EXPECTED_GROUPS = {       # (kind, store key: namespace/kind/name)
    ("DaemonSet", "kube-system/DaemonSet/kube-ovn-cni"), ("Deployment", "kube-system/Deployment/coredns"),
    ("Deployment", "shop/Deployment/web"), ("StatefulSet", "shop/StatefulSet/redis"),
    ("Deployment", "payments/Deployment/api"), ("CronJob", "payments/CronJob/report"),
}
# service → (type, IPs, ports, endpoints)
EXPECTED_SERVICES = {
    "default/kubernetes": ("ClusterIP", ("10.96.0.1",), (ServicePort(443, "TCP", 6443, 0, "https"),),
                           (Endpoint("10.99.0.1", 6443),)),
    "kube-system/kube-dns": (
        "ClusterIP", ("10.96.0.10",),
        (ServicePort(53, "UDP", 53, 0, "dns"), ServicePort(53, "TCP", 53, 0, "dns-tcp"),
         ServicePort(9153, "TCP", 9153, 0, "metrics")),
        tuple(Endpoint(ip, port, proto) for ip in ("10.16.0.2", "10.16.0.3")
              for port, proto in ((53, "TCP"), (53, "UDP"), (9153, "TCP")))),
    "shop/web": ("NodePort", ("10.96.12.34",), (ServicePort(80, "TCP", 8080, 30080, "http"),),
                 (Endpoint("10.16.0.11", 8080), Endpoint("10.16.0.12", 8080))),
    "shop/redis": ("ClusterIP", ("10.96.45.67",), (ServicePort(6379, "TCP", 0, 0, "redis"),),
                   (Endpoint("10.16.0.13", 6379),)),
    "shop/redis-headless": ("ClusterIP", (), (ServicePort(6379, "TCP", 6379, 0, "redis"),),
                            (Endpoint("10.16.0.13", 6379),)),
    "payments/api": ("ClusterIP", ("10.96.100.20", "fd00:10:96::14"), (ServicePort(443, "TCP", 8443, 0, "https"),),
                     (Endpoint("10.16.0.20", 8443), Endpoint("fd00:10:16::20", 8443))),
}


def test_initial_list_gives_the_recorded_cluster(server: KubeAPIServer, sink: MemorySink, start_watcher) -> None:
    w = start_watcher(server, sink)
    assert sink.get("cluster", CLUSTER) is not None
    assert set(sink.alive("namespace")) == {"default", "kube-system", "shop", "payments"}
    assert {k: r.ips for k, r in sink.alive("node").items()} == EXPECTED_NODES
    assert sink.get("node", "node-2").macs == ("00:00:00:3a:00:03",)
    assert {(r.group_kind, k) for k, r in sink.alive("pod_group").items()} == EXPECTED_GROUPS

    pods = sink.alive("pod")
    got = {r.name: (r.namespace, r.ips, r.node, r.group_kind, r.group_name, r.host_network) for r in pods.values()}
    assert got == EXPECTED_PODS
    data = {p["metadata"]["name"]: p for p in load_cluster()["pods"]}
    for key, r in pods.items():           # pods are keyed by uid; metadata passes through
        md = data[r.name]["metadata"]
        assert key == r.uid == md["uid"]
        assert (r.labels, r.annotations, r.created) == (md["labels"], md["annotations"], ts(md["creationTimestamp"]))
        assert r.macs == ((md["annotations"]["ovn.kubernetes.io/mac_address"],) if not r.host_network else ())

    services = sink.alive("service")
    assert {k: (r.service_type, r.ips, r.ports, r.endpoints) for k, r in services.items()} == EXPECTED_SERVICES
    assert services["shop/web"].selector == {"app": "web"}
    assert w.stats["malformed"] == {} and w.stats["errors"] == {}


def test_list_then_watch_requests(server: KubeAPIServer, sink: MemorySink, start_watcher) -> None:
    """Lists page with limit/continue; each watch starts at its list's resourceVersion with
    bookmarks and a timeout; pods are listed after ReplicaSets and Jobs (owner chains)."""
    start_watcher(server, sink, page_size=4)
    watching(server)
    list_rv = str(server.resource_version)
    for res in kube.RESOURCES:
        lists = server.requests_for(res.name, watch=False)
        assert lists[0].query == {"limit": "4"}
        assert all(r.query.get("continue") for r in lists[1:])
        n = len(load_cluster()[res.name])
        assert len(lists) == max(1, -(-n // 4)), res.name
        watches = server.requests_for(res.name, watch=True)
        assert [r.query for r in watches] == [{"watch": "true", "resourceVersion": list_rv, "allowWatchBookmarks": "true",
                                               "timeoutSeconds": "30"}]
    order = server.requests
    first_pods = order.index(server.requests_for("pods")[0])
    assert first_pods > max(order.index(r) for r in server.requests_for("replicasets", watch=False)
                            + server.requests_for("jobs", watch=False))
    # the first listing of each kind is a replace (objects gone while the collector was down go)
    replaced = {c[1] for c in sink.calls if c[0] == "replace"}
    assert replaced == {"node", "namespace", "pod_group", "service", "pod"}


def test_watch_events_reach_the_sink(server: KubeAPIServer, sink: MemorySink, start_watcher) -> None:
    w = start_watcher(server, sink)
    watching(server)
    # a bare pod: no group; then it changes; then it goes (no deletionTimestamp: now)
    server.add("pods", pod_obj("debug", "default", "uid-debug", ["10.16.0.50"], labels={"run": "debug"}))
    rec = wait_for(lambda: sink.get("pod", "uid-debug"), what="ADDED pod")
    assert (rec.group_kind, rec.group_name, rec.ips, rec.namespace) == ("", "", ("10.16.0.50",), "default")
    obj = server.get("pods", "debug", "default")
    obj["metadata"]["labels"]["tier"] = "tools"
    server.modify("pods", obj)
    wait_for(lambda: sink.get("pod", "uid-debug").labels == {"run": "debug", "tier": "tools"}, what="MODIFIED")
    before = time.time()
    server.delete("pods", "debug", "default")
    deleted = wait_for(lambda: sink.get("pod", "uid-debug").deleted, what="DELETED")
    assert before <= deleted <= time.time()

    # a slice change re-sends its service; a not-ready endpoint is no backend
    sl = server.get("endpointslices", "web-8kq2d", "shop")
    sl["endpoints"][1]["conditions"]["ready"] = False
    server.modify("endpointslices", sl)
    wait_for(lambda: sink.get("service", "shop/web").endpoints == (Endpoint("10.16.0.11", 8080),), what="slice")
    # a new LoadBalancer service with external and ingress IPs, and its slice
    svc = server.get("services", "web", "shop")
    svc["metadata"].update(name="web-lb", uid="uid-web-lb")
    svc["spec"].update(type="LoadBalancer", clusterIP="10.96.12.35", clusterIPs=["10.96.12.35"],
                       externalIPs=["192.0.2.80"])
    svc["status"] = {"loadBalancer": {"ingress": [{"ip": "198.51.100.7"}, {"hostname": "lb.example.com"}]}}
    server.add("services", svc)
    rec = wait_for(lambda: sink.get("service", "shop/web-lb"), what="new service")
    assert (rec.service_type, rec.ips, rec.endpoints) == ("LoadBalancer", ("10.96.12.35", "192.0.2.80", "198.51.100.7"), ())
    sl = server.get("endpointslices", "web-8kq2d", "shop")
    sl["metadata"].update(name="web-lb-x1", uid="uid-web-lb-x1", labels={"kubernetes.io/service-name": "web-lb"})
    server.add("endpointslices", sl)
    wait_for(lambda: sink.get("service", "shop/web-lb").endpoints == (Endpoint("10.16.0.11", 8080),), what="lb slice")
    server.delete("services", "web-lb", "shop")
    wait_for(lambda: sink.get("service", "shop/web-lb").deleted, what="service DELETED")
    assert w.stats["events"]["pods"] == 3 and w.stats["events"]["endpointslices"] == 2
    assert w.stats["last_event_time"] is not None


def test_owner_chains_resolved_when_owners_arrive_late(server: KubeAPIServer, sink: MemorySink,
                                                       start_watcher) -> None:
    start_watcher(server, sink)
    watching(server)
    # a ReplicaSet nobody controls is itself the group (and a pod_group record)
    server.add("replicasets", workload_obj("ReplicaSet", "legacy", "shop", "uid-rs-legacy"))
    server.add("pods", pod_obj("legacy-x1", "shop", "uid-legacy-x1", ["10.16.0.60"],
                               owner=("ReplicaSet", "legacy", "uid-rs-legacy")))
    rec = wait_for(lambda: sink.get("pod", "uid-legacy-x1"), what="legacy pod")
    assert (rec.group_kind, rec.group_name) == ("ReplicaSet", "legacy")
    assert wait_for(lambda: sink.get("pod_group", "shop/ReplicaSet/legacy")).group_kind == "ReplicaSet"

    # pod before its ReplicaSet: the RS name without pod-template-hash names the Deployment...
    server.add("pods", pod_obj("cart-6d5c4b3a2-k1", "shop", "uid-cart-k1", ["10.16.0.61"],
                               owner=("ReplicaSet", "cart-6d5c4b3a2", "uid-rs-cart"),
                               labels={"app": "cart", "pod-template-hash": "6d5c4b3a2"}))
    rec = wait_for(lambda: sink.get("pod", "uid-cart-k1"), what="cart pod")
    assert (rec.group_kind, rec.group_name) == ("Deployment", "cart")
    # ...without the hash label it is the ReplicaSet until the RS shows its Deployment
    server.add("pods", pod_obj("canary-1", "shop", "uid-canary-1", ["10.16.0.62"],
                               owner=("ReplicaSet", "canary-rs", "uid-rs-canary")))
    rec = wait_for(lambda: sink.get("pod", "uid-canary-1"), what="canary pod")
    assert (rec.group_kind, rec.group_name) == ("ReplicaSet", "canary-rs")
    server.add("replicasets", workload_obj("ReplicaSet", "canary-rs", "shop", "uid-rs-canary",
                                           owner=("Deployment", "canary", "uid-dep-canary")))
    wait_for(lambda: sink.get("pod", "uid-canary-1").group_name == "canary", what="pod re-sent with Deployment")
    assert sink.get("pod", "uid-canary-1").group_kind == "Deployment"

    # Job before its CronJob parent is known: Job, then CronJob once the Job arrives
    server.add("pods", pod_obj("nightly-28123500-a", "payments", "uid-nightly-a", ["10.16.0.63"],
                               owner=("Job", "nightly-28123500", "uid-job-nightly")))
    rec = wait_for(lambda: sink.get("pod", "uid-nightly-a"), what="job pod")
    assert (rec.group_kind, rec.group_name) == ("Job", "nightly-28123500")
    server.add("jobs", workload_obj("Job", "nightly-28123500", "payments", "uid-job-nightly",
                                    owner=("CronJob", "nightly", "uid-cj-nightly")))
    wait_for(lambda: sink.get("pod", "uid-nightly-a").group_kind == "CronJob", what="pod re-sent with CronJob")
    assert sink.get("pod", "uid-nightly-a").group_name == "nightly"
    # a static pod (owner: its Node) has no group
    server.add("pods", pod_obj("etcd-node-1", "kube-system", "uid-etcd", ["10.99.0.1"],
                               owner=("Node", "node-1", "uid-node-1")))
    assert wait_for(lambda: sink.get("pod", "uid-etcd")).group_kind == ""


def test_bookmark_advances_the_resource_version(server: KubeAPIServer, sink: MemorySink, start_watcher) -> None:
    w = start_watcher(server, sink)
    watching(server)
    rv = server.bookmark()
    wait_for(lambda: w.stats["resource_version"]["pods"] == str(rv), what="bookmark")
    lists = len(server.requests_for("pods", watch=False))
    server.drop_connections()
    resumed = wait_for(lambda: server.requests_for("pods", watch=True)[1:], what="re-watch")[0]
    assert resumed.query["resourceVersion"] == str(rv)
    assert len(server.requests_for("pods", watch=False)) == lists     # resumed, not relisted
    assert w.stats["relists"]["pods"] == 0 and w.stats["events"]["pods"] == 0


def test_410_gone_relists_and_replaces(server: KubeAPIServer, sink: MemorySink, start_watcher) -> None:
    """A pod deleted while the watch was down, with history compacted meanwhile: the resume gets
    an ERROR 410 Expired event, the watcher lists again and replace marks the pod deleted."""
    w = start_watcher(server, sink)
    watching(server)
    old_rv = w.stats["resource_version"]["pods"]
    gone = sink.pod("web-7c9d8f6b5-q7m4n")
    server.stop()
    server.delete("pods", "web-7c9d8f6b5-q7m4n", "shop")
    server.expire_history()
    n = len(server.requests)
    server.start()
    deleted = wait_for(lambda: sink.get("pod", gone.uid).deleted, timeout=10, what="pod deleted by replace")
    pods_reqs = [r for r in server.requests[n:] if r.resource == "pods"]
    assert pods_reqs[0].watch and pods_reqs[0].query["resourceVersion"] == old_rv
    assert not pods_reqs[1].watch and "continue" not in pods_reqs[1].query      # a fresh list
    replace = [c for c in sink.calls if c[:2] == ("replace", "pod")][-1]
    assert gone.uid not in replace[3] and replace[4] == deleted
    assert w.stats["relists"]["pods"] == 1
    assert sink.pod("web-7c9d8f6b5-2xkqz").deleted is None

    # HTTP 410 on the watch request itself (not an ERROR event) relists too, and a list answered
    # with 410 (an expired continue token) is listed again after a backoff
    server.fail_next("services", 410, watch=True)
    server.fail_next("services", 410, watch=False)
    svc = server.get("services", "redis", "shop")
    server.drop_connections()
    server.delete("services", "redis", "shop")
    wait_for(lambda: w.stats["relists"]["services"] == 1, what="services relist")
    assert wait_for(lambda: sink.get("service", "shop/redis").deleted)
    assert svc["metadata"]["uid"] == sink.get("service", "shop/redis").uid
    assert w.stats["errors"]["api_status"] == 1


def test_reconnects_with_backoff_after_server_restart(server: KubeAPIServer, sink: MemorySink,
                                                      start_watcher) -> None:
    w = start_watcher(server, sink)
    watching(server)
    # the server counts a watch as open a moment before the watcher marks it streaming
    wait_for(lambda: w.stats["stale_s"] == 0.0, what="every watch streaming")
    server.stop()
    wait_for(lambda: w.stats["reconnects"]["pods"] >= 2, what="reconnect attempts")
    assert w.stats["errors"]["connection"] >= 2
    assert w.stats["stale_s"] > 0
    # the inventory stays while the API is away
    assert len(sink.alive("pod")) == len(EXPECTED_PODS)
    server.add("pods", pod_obj("late", "default", "uid-late", ["10.16.0.70"]))   # history kept
    server.start()
    wait_for(lambda: sink.get("pod", "uid-late"), timeout=10, what="event after reconnect")
    watching(server)
    wait_for(lambda: w.stats["stale_s"] == 0.0, what="fresh again")
    assert w.stats["relists"] == {r.name: 0 for r in kube.RESOURCES}   # resumed from resourceVersion


def test_malformed_objects_are_counted_and_skipped(sink: MemorySink, start_watcher) -> None:
    objects = load_cluster()
    good = objects["pods"][0]
    no_uid = copy.deepcopy(good)
    no_uid["metadata"]["name"] = "no-uid"
    del no_uid["metadata"]["uid"]
    bad_ip = copy.deepcopy(good)
    bad_ip["metadata"].update(name="bad-ip", uid="uid-bad-ip")
    bad_ip["status"]["podIPs"] = [{"ip": "10.16.0.999"}]
    bad_time = copy.deepcopy(good)
    bad_time["metadata"].update(name="bad-time", uid="uid-bad-time", creationTimestamp="yesterday")
    objects["pods"] += [no_uid, bad_ip, bad_time, "garbage", {"kind": "Pod", "spec": {}}]
    bad_svc = copy.deepcopy(objects["services"][0])
    bad_svc["metadata"].update(name="bad-ports", uid="uid-bad-ports")
    bad_svc["spec"]["ports"] = [{"port": "https"}]
    objects["services"].append(bad_svc)
    with KubeAPIServer(objects) as server:
        w = start_watcher(server, sink)
        assert w.stats["malformed"] == {"no_uid": 1, "bad_ip": 1, "bad_timestamp": 1, "not_an_object": 1,
                                        "no_metadata": 1, "bad_field": 1}
        assert len(sink.alive("pod")) == len(EXPECTED_PODS)
        assert len(sink.alive("service")) == len(EXPECTED_SERVICES)
        watching(server)
        server.push_raw("pods", "this is not JSON")
        server.push_raw("pods", '{"type": "ADDED", "object": 42}')
        server.push_raw("pods", '{"type": "SURPRISE", "object": {}}')
        server.add("pods", {"metadata": {"namespace": "default", "uid": "uid-nameless"}})
        server.add("pods", pod_obj("fine", "default", "uid-fine", ["10.16.0.80"]))
        wait_for(lambda: sink.get("pod", "uid-fine"), what="a good pod after bad ones")
        m = w.stats["malformed"]
        assert (m["bad_event"], m["not_an_object"], m["bad_event_type"], m["no_name"]) == (1, 2, 1, 1)
        assert w.stats["errors"] == {}
        w.stop()


def test_pod_churn_ip_reuse(server: KubeAPIServer, sink: MemorySink, start_watcher) -> None:
    """web-a (10.16.0.11) goes with deletionTimestamp T1; web-b gets 10.16.0.11 later: both
    records stay, the old one deleted at T1, the new one created at T2."""
    start_watcher(server, sink)
    watching(server)
    web_a = server.get("pods", "web-7c9d8f6b5-2xkqz", "shop")
    t1, t2 = "2023-06-22T05:00:00Z", "2023-06-22T05:00:07Z"
    server.delete("pods", "web-7c9d8f6b5-2xkqz", "shop", deletion_timestamp=t1)
    web_b = copy.deepcopy(web_a)
    web_b["metadata"].update(name="web-7c9d8f6b5-8n2vb", uid="5b0f8c0e-1d2a-4c6e-9f3b-7a1e2d4c6b8a",
                             creationTimestamp=t2)
    server.add("pods", web_b)
    new = wait_for(lambda: sink.get("pod", web_b["metadata"]["uid"]), what="web-b")
    old = wait_for(lambda: (r := sink.get("pod", web_a["metadata"]["uid"])) and r.deleted and r, what="web-a gone")
    assert old.ips == new.ips == ("10.16.0.11",)
    assert old.deleted == ts(t1) and old.created < ts(t1)
    assert new.deleted is None and new.created == ts(t2) > old.deleted
    assert (new.group_kind, new.group_name) == ("Deployment", "web")


def test_finished_pod_is_deleted_at_its_finish_time(server: KubeAPIServer, sink: MemorySink,
                                                    start_watcher) -> None:
    start_watcher(server, sink)
    watching(server)
    pod = server.get("pods", "report-28123456-x7k9p", "payments")
    end = "2023-06-22T04:19:42Z"
    pod["status"]["phase"] = "Succeeded"
    pod["status"]["containerStatuses"][0]["state"] = {"terminated": {
        "exitCode": 0, "reason": "Completed", "startedAt": "2023-06-22T04:16:03Z", "finishedAt": end}}
    server.modify("pods", pod)
    uid = pod["metadata"]["uid"]
    assert wait_for(lambda: sink.get("pod", uid).deleted, what="finished") == ts(end)
    assert sink.get("pod", uid).ips == ("10.16.0.21",)          # kept, for flows before its end
    server.delete("pods", "report-28123456-x7k9p", "payments", deletion_timestamp="2023-06-22T07:00:00Z")
    server.add("pods", pod_obj("marker", "default", "uid-marker", []))
    wait_for(lambda: sink.get("pod", "uid-marker"), what="later event")
    assert sink.get("pod", uid).deleted == ts(end)
    assert [c for c in sink.calls if c[0] == "delete" and c[3] == uid] == [("delete", "pod", CLUSTER, uid, ts(end))]


def test_sink_outage_then_full_replace(server: KubeAPIServer, sink: MemorySink, start_watcher) -> None:
    w = start_watcher(server, sink)
    watching(server)
    sink.broken = True
    gone = sink.pod("redis-0")
    server.delete("pods", "redis-0", "shop")
    server.add("pods", pod_obj("during-outage", "shop", "uid-outage", ["10.16.0.90"]))
    wait_for(lambda: w.stats["errors"].get("sink", 0) >= 1, what="sink error counted")
    assert not w.stats["sink_ok"]
    time.sleep(0.1)                               # a few failed re-sends while the store is down
    n = len(sink.calls)
    sink.broken = False
    wait_for(lambda: w.stats["sink_ok"] and w.stats["resends"] == 1, what="re-send")
    replaced = [c[1] for c in sink.calls[n:] if c[0] == "replace"]
    assert replaced == ["node", "namespace", "pod_group", "service", "pod"]
    assert sink.get("pod", "uid-outage").deleted is None
    assert sink.get("pod", gone.uid).deleted is not None
    assert len(sink.alive("pod")) == len(EXPECTED_PODS)
    assert w.stats["events"]["pods"] == 2


def _kubeconfig(tmp_path: Path, servers: dict[str, KubeAPIServer]) -> Path:
    import yaml

    cfg = {"apiVersion": "v1", "kind": "Config", "current-context": next(iter(servers)),
           "clusters": [{"name": n, "cluster": {"server": s.url}} for n, s in servers.items()],
           "users": [{"name": "tester", "user": {"token": "not-checked"}}],
           "contexts": [{"name": n, "context": {"cluster": n, "user": "tester"}} for n in servers]}
    path = tmp_path / "kubeconfig"
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_several_clusters_by_name(server: KubeAPIServer, sink: MemorySink, tmp_path: Path) -> None:
    objects = load_cluster()
    objects["nodes"] = objects["nodes"][:1]
    with KubeAPIServer(objects) as west:
        path = _kubeconfig(tmp_path, {"east-ctx": server, "west-ctx": west})
        watchers = watch_clusters([ClusterSpec("east", str(path), "east-ctx"),
                                   {"name": "west", "kubeconfig": str(path), "context": "west-ctx"}],
                                  sink, backoff=(0.02, 0.2))
        try:
            assert all(w.wait_synced(10) for w in watchers)
            assert [w.cluster_name for w in watchers] == ["east", "west"]
            assert set(sink.alive("node", "east")) == {"node-1", "node-2", "node-3"}
            assert set(sink.alive("node", "west")) == {"node-1"}
            assert sink.pod("redis-0", "east").cluster == "east"
            assert sink.pod("redis-0", "west").cluster == "west"
            assert {c[2] for c in sink.calls if c[0] == "replace"} == {"east", "west"}
            assert server.requests and west.requests     # each context reached its own server
            assert all(r.resource is not None for r in server.requests + west.requests)
        finally:
            for w in watchers:
                w.stop()
    with pytest.raises(ValueError, match="used twice"):
        watch_clusters([ClusterSpec("a", str(path)), ClusterSpec("a", str(path))], sink)
    with pytest.raises(ValueError, match="cannot load"):
        watch_clusters([ClusterSpec("b", str(tmp_path / "missing"))], sink)


def test_load_api_client_in_cluster(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    seen: list[Any] = []

    def fake_incluster(client_configuration: client.Configuration) -> None:
        client_configuration.host = "https://10.96.0.1:443"
        seen.append(client_configuration)

    monkeypatch.setattr(kube.config, "load_incluster_config", fake_incluster)
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "10.96.0.1")
    api = load_api_client(None, None)
    assert seen and api.configuration.host == "https://10.96.0.1:443"
    assert api.configuration.connection_pool_maxsize >= len(kube.RESOURCES)
    with KubeAPIServer() as srv:             # a kubeconfig wins over the service account
        path = _kubeconfig(tmp_path, {"only": srv})
        assert load_api_client(str(path), None).configuration.host == srv.url
        assert len(seen) == 1


def test_into_the_metadata_store(server: KubeAPIServer, start_watcher, tmp_path: Path) -> None:
    """The real store as the sink: pods get their node, namespace and workload ids."""
    from flowscope.metadata.store import MetadataStore

    with MetadataStore(f"sqlite:///{tmp_path / 'meta.db'}") as store:
        w = start_watcher(server, store)
        watching(server)
        server.delete("pods", "redis-0", "shop", deletion_timestamp="2023-06-22T05:00:00Z")
        wait_for(lambda: any(s.record.name == "redis-0" and s.record.deleted for s in store.records(["pod"])),
                 what="deletion in the store")
        w.stop()
        by_id = {(s.record.kind, s.id): s.record for s in store.records()}
        pods = {s.record.name: s for s in store.records(["pod"])}
        assert set(pods) == set(EXPECTED_PODS)
        for name, (ns, ips, node, gkind, gname, _) in EXPECTED_PODS.items():
            p = pods[name]
            assert (p.record.ips, by_id["namespace", p.namespace_id].name, by_id["node", p.node_id].name) == \
                (ips, ns, node)
            assert (by_id["pod_group", p.group_id].group_kind, by_id["pod_group", p.group_id].name) == (gkind, gname)
        assert pods["redis-0"].record.deleted == ts("2023-06-22T05:00:00Z")
        groups = {(r.group_kind, r.key) for s in store.records(["pod_group"], include_deleted=False)
                  for r in [s.record]}
        assert groups == EXPECTED_GROUPS
