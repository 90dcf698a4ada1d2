"""Kubernetes inventory: list + watch the API server and keep the metadata store current.

One ``KubeWatcher`` per cluster runs one daemon thread per resource (nodes, namespaces, pods,
services, EndpointSlices and the six workload kinds). Each thread lists (paged), then watches from
the list's resourceVersion, and turns objects into ``model.Record``s for the ``Sink``. The
watcher keeps its own in-memory copy of everything it saw, because

* records are derived from several resources: a Service's endpoints come from its EndpointSlices,
  a pod's workload from its owner chain (Pod → ReplicaSet → Deployment, Pod → Job → CronJob);
* the collector must keep the last known inventory while the API is unreachable, and re-send it
  all (``Sink.replace`` per kind) when a store that failed comes back.

Objects are read as raw JSON dicts (``_preload_content=False`` for lists, un-typed watch events),
never through the client's model classes: a malformed object is skipped and counted in
``stats["malformed"]`` instead of failing deserialisation of a whole list.

Semantics chosen here (the API does not decide them):

* A pod is deleted at ``metadata.deletionTimestamp`` when the DELETED event carries one (the
  moment it was asked to go), else when the event arrives.
* A pod in phase Succeeded/Failed is reported deleted at its finish time (latest container
  ``finishedAt``; else its Ready condition's transition; else now) although its API object stays:
  the CNI (Kube-OVN included) releases a finished pod's IP, and another pod may get it. Its record
  is kept in the store with that deletion time so earlier flows still resolve to it.
* A pod whose owner ReplicaSet is not known yet gets the Deployment named by the ReplicaSet name
  minus its ``pod-template-hash`` suffix (how Deployments name ReplicaSets), else the ReplicaSet;
  a pod of an unknown Job gets the Job. Pods are re-sent when the owner arrives. The pods thread
  waits (bounded) for the first ReplicaSet and Job lists so this is rare.
* pod_group records exist for Deployments, StatefulSets, DaemonSets, CronJobs, and ReplicaSets /
  Jobs not controlled by a Deployment / CronJob (those are the groups their pods resolve to).
* ``Sink.replace`` is sent for a kind only after every resource that creates records of that kind
  has been listed (for pod_group: all six workload kinds), so a half-listed kind never marks the
  other half deleted; before that, records are upserted one by one.
* Kube-OVN's annotations add what the API does not say: a pod's MAC
  (``ovn.kubernetes.io/mac_address``), and a node's ovn0 port in the join subnet (IP after the
  node's InternalIP/ExternalIP, and its MAC): kubelet probes reach pods from that IP.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import json
import logging
import os
import random
import re
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import urllib3
from kubernetes import client, config, watch
from kubernetes.client.exceptions import ApiException

from flowscope.metadata.model import GROUP_TYPES, KINDS, Endpoint, Record, ServicePort, Sink

log = logging.getLogger(__name__)

# Workload kinds a pod's owner chain passes through, and the parent that makes them not a group.
_PARENT_GROUP = {"ReplicaSet": "Deployment", "Job": "CronJob"}
_MAC = re.compile(r"^[0-9a-f]{2}(:[0-9a-f]{2}){5}$")
_OVN_IP, _OVN_MAC = "ovn.kubernetes.io/ip_address", "ovn.kubernetes.io/mac_address"
_SERVICE_NAME = "kubernetes.io/service-name"


@dataclass(frozen=True, slots=True)
class ClusterSpec:
    """One cluster to watch: its name in flowscope, and how to reach its API (kubeconfig file
    and context; both None: in-cluster service account, else the default kubeconfig)."""

    name: str
    kubeconfig: str | None = None
    context: str | None = None


@dataclass(frozen=True, slots=True)
class _Resource:
    """One listed/watched resource: its URL plural (also its key in ``stats``), the client method
    that lists it, what it becomes, and which record kinds it changes."""

    name: str
    api: Callable[[client.ApiClient], Any]
    method: str
    kind: str                    # parse rule: a Kubernetes kind, or "" for non-workloads
    record_kinds: tuple[str, ...]


RESOURCES = (
    _Resource("namespaces", client.CoreV1Api, "list_namespace", "", ("namespace",)),
    _Resource("nodes", client.CoreV1Api, "list_node", "", ("node",)),
    _Resource("deployments", client.AppsV1Api, "list_deployment_for_all_namespaces", "Deployment",
              ("pod_group",)),
    _Resource("statefulsets", client.AppsV1Api, "list_stateful_set_for_all_namespaces", "StatefulSet",
              ("pod_group",)),
    _Resource("daemonsets", client.AppsV1Api, "list_daemon_set_for_all_namespaces", "DaemonSet",
              ("pod_group",)),
    _Resource("replicasets", client.AppsV1Api, "list_replica_set_for_all_namespaces", "ReplicaSet",
              ("pod_group", "pod")),
    _Resource("cronjobs", client.BatchV1Api, "list_cron_job_for_all_namespaces", "CronJob",
              ("pod_group",)),
    _Resource("jobs", client.BatchV1Api, "list_job_for_all_namespaces", "Job", ("pod_group", "pod")),
    _Resource("services", client.CoreV1Api, "list_service_for_all_namespaces", "", ("service",)),
    _Resource("endpointslices", client.DiscoveryV1Api, "list_endpoint_slice_for_all_namespaces", "",
              ("service",)),
    _Resource("pods", client.CoreV1Api, "list_pod_for_all_namespaces", "", ("pod",)),
)
_BY_NAME = {r.name: r for r in RESOURCES}
_GROUP_RESOURCE = {r.kind: r.name for r in RESOURCES if r.kind}
# Resources whose listing is the whole set of a record kind (replace waits for all of them).
_PRIMARY = {
    "node": ("nodes",), "namespace": ("namespaces",), "service": ("services",), "pod": ("pods",),
    "pod_group": tuple(_GROUP_RESOURCE.values()),
}
_RECORD_KINDS = tuple(k for k in KINDS if k in _PRIMARY)   # parents first
_RESOURCE_OF = {"node": "nodes", "namespace": "namespaces", "service": "services", "pod": "pods"}


class Malformed(ValueError):
    """An API object flowscope cannot use; ``reason`` is the stats["malformed"] key."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(slots=True)
class _Obj:
    """What the watcher keeps of one API object (the raw dict is not kept)."""

    key: str                                   # pods: uid; others: namespace/name or name
    uid: str
    record: Record | None = None               # None for EndpointSlices
    owner: tuple[str, str, str] | None = None  # controller ownerReference (kind, name, uid)
    deletion: float | None = None              # metadata.deletionTimestamp
    finished: float | None = None              # pods in phase Succeeded / Failed
    service: str = ""                          # EndpointSlices: namespace/name of their Service
    endpoints: tuple[Endpoint, ...] = ()       # EndpointSlices: ready backends


# ---------------------------------------------------------------------------------------------
# Parsing: raw API dicts → _Obj. Pure functions; any problem raises Malformed.


def _time(value: Any) -> float:
    if value is None or value == "":
        return 0.0
    if not isinstance(value, str):
        raise Malformed("bad_timestamp")
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
    except ValueError:
        raise Malformed("bad_timestamp") from None


def _ip(value: Any) -> str:
    try:
        return str(ipaddress.ip_address(value))
    except ValueError:
        raise Malformed("bad_ip") from None


def _dict(value: Any) -> dict:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise Malformed("bad_field")
    return value


def _list(value: Any) -> list:
    if value is None:
        return []
    if not isinstance(value, list):
        raise Malformed("bad_field")
    return value


def _strmap(value: Any) -> dict[str, str]:
    return {str(k): str(v) for k, v in _dict(value).items()}


def _int(value: Any, default: int = 0) -> int:
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int):
        raise Malformed("bad_field")
    return value


def _ips(values: Iterable[Any]) -> tuple[str, ...]:
    return tuple(dict.fromkeys(_ip(v) for v in values))


def _base(obj: Any, kind: str, cluster: str, namespaced: bool) -> tuple[dict, Record]:
    """Checks the metadata every object needs and builds the common part of its record."""
    if not isinstance(obj, dict):
        raise Malformed("not_an_object")
    md = obj.get("metadata")
    if not isinstance(md, dict):
        raise Malformed("no_metadata")
    name, uid, ns = md.get("name"), md.get("uid"), md.get("namespace") or ""
    if not isinstance(name, str) or not name:
        raise Malformed("no_name")
    if not isinstance(uid, str) or not uid:
        raise Malformed("no_uid")
    if namespaced and (not isinstance(ns, str) or not ns):
        raise Malformed("no_namespace")
    rec = Record(kind=kind, name=name, cluster=cluster, namespace=ns if namespaced else "", uid=uid,
                 labels=_strmap(md.get("labels")), annotations=_strmap(md.get("annotations")),
                 created=_time(md.get("creationTimestamp")))
    return md, rec


def _controller(md: dict) -> tuple[str, str, str] | None:
    for ref in _list(md.get("ownerReferences")):
        if isinstance(ref, dict) and ref.get("controller") is True:
            return str(ref.get("kind") or ""), str(ref.get("name") or ""), str(ref.get("uid") or "")
    return None


def _obj(rec: Record, md: dict, **kw: Any) -> _Obj:
    return _Obj(key=rec.key if rec.kind != "pod" else rec.uid, uid=rec.uid, record=rec,
                deletion=_time(md.get("deletionTimestamp")) or None, **kw)


def _ovn_port(annotations: dict[str, str]) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """IPs and MAC Kube-OVN gave the object's port (comma-separated when dual stack); an
    annotation that does not parse is ignored: it is a hint, not part of the API object."""
    try:
        ips = _ips(v for v in annotations.get(_OVN_IP, "").split(",") if v)
    except Malformed:
        ips = ()
    mac = annotations.get(_OVN_MAC, "").lower()
    return ips, (mac,) if _MAC.match(mac) else ()


def parse_node(obj: Any, cluster: str) -> _Obj:
    md, rec = _base(obj, "node", cluster, namespaced=False)
    addrs = [a for a in _list(_dict(obj.get("status")).get("addresses"))
             if isinstance(a, dict) and a.get("type") in ("InternalIP", "ExternalIP")]
    # Kube-OVN's ovn0 port in the join subnet: the source of the node's traffic to pods (probes)
    join_ips, rec.macs = _ovn_port(rec.annotations)
    rec.ips = tuple(dict.fromkeys(_ips(a.get("address") for a in addrs) + join_ips))
    return _obj(rec, md)


def parse_namespace(obj: Any, cluster: str) -> _Obj:
    md, rec = _base(obj, "namespace", cluster, namespaced=False)
    return _obj(rec, md)


def parse_workload(obj: Any, cluster: str, kind: str) -> _Obj:
    md, rec = _base(obj, "pod_group", cluster, namespaced=True)
    rec.group_kind = kind
    return _obj(rec, md, owner=_controller(md))


def _service_port(p: Any) -> ServicePort:
    p = _dict(p)
    port = _int(p.get("port"))
    target = p.get("targetPort", port)     # the API defaults it to port; a string is a port name
    return ServicePort(port=port, protocol=str(p.get("protocol") or "TCP"),
                       target_port=target if isinstance(target, int) and not isinstance(target, bool) else 0,
                       node_port=_int(p.get("nodePort")), name=str(p.get("name") or ""))


def parse_service(obj: Any, cluster: str) -> _Obj:
    md, rec = _base(obj, "service", cluster, namespaced=True)
    spec = _dict(obj.get("spec"))
    rec.service_type = str(spec.get("type") or "ClusterIP")
    cluster_ips = _list(spec.get("clusterIPs")) or [spec.get("clusterIP")]
    ingress = _list(_dict(_dict(obj.get("status")).get("loadBalancer")).get("ingress"))
    ips = [ip for ip in cluster_ips if ip not in (None, "", "None")]     # "None": headless
    ips += _list(spec.get("externalIPs"))
    ips += [i["ip"] for i in ingress if isinstance(i, dict) and i.get("ip")]  # hostname-only: no IP
    rec.ips = _ips(ips)
    rec.ports = tuple(_service_port(p) for p in _list(spec.get("ports")))
    rec.selector = _strmap(spec.get("selector"))
    return _obj(rec, md)


def parse_endpointslice(obj: Any, cluster: str) -> _Obj:
    md, rec = _base(obj, "service", cluster, namespaced=True)
    svc = _strmap(md.get("labels")).get(_SERVICE_NAME, "")
    endpoints: list[Endpoint] = []
    if obj.get("addressType") in ("IPv4", "IPv6"):       # FQDN slices name no address
        # A slice without ports (or a port without a number) serves every port: port 0.
        ports = [(_int(p.get("port")), str(p.get("protocol") or "TCP"))
                 for p in map(_dict, _list(obj.get("ports")))] or [(0, "TCP")]
        for ep in map(_dict, _list(obj.get("endpoints"))):
            if _dict(ep.get("conditions")).get("ready") is False:   # unset means ready (API docs)
                continue
            for ip in _ips(_list(ep.get("addresses"))):
                endpoints += (Endpoint(ip, port, proto) for port, proto in ports)
    return _Obj(key=rec.key, uid=rec.uid, service=f"{rec.namespace}/{svc}" if svc else "",
                endpoints=tuple(endpoints))


def _finish_time(status: dict) -> float:
    ends = [_time(_dict(_dict(_dict(c).get("state")).get("terminated")).get("finishedAt"))
            for c in _list(status.get("containerStatuses"))]
    if any(ends):
        return max(ends)
    for cond in map(_dict, _list(status.get("conditions"))):
        if cond.get("type") == "Ready" and cond.get("lastTransitionTime"):
            return _time(cond["lastTransitionTime"])
    return time.time()


def parse_pod(obj: Any, cluster: str) -> _Obj:
    md, rec = _base(obj, "pod", cluster, namespaced=True)
    spec, status = _dict(obj.get("spec")), _dict(obj.get("status"))
    pod_ips = [p.get("ip") for p in map(_dict, _list(status.get("podIPs")))]
    if not pod_ips and status.get("podIP"):
        pod_ips = [status["podIP"]]
    rec.ips = _ips(pod_ips)
    rec.node = str(spec.get("nodeName") or "")
    rec.host_network = spec.get("hostNetwork") is True
    if not rec.host_network:
        rec.macs = _ovn_port(rec.annotations)[1]
    finished = _finish_time(status) if status.get("phase") in ("Succeeded", "Failed") else None
    return _obj(rec, md, owner=_controller(md), finished=finished)


def parse(resource: str, obj: Any, cluster: str) -> _Obj:
    """Parses one object of ``resource`` (a ``RESOURCES`` name); raises Malformed."""
    res = _BY_NAME[resource]
    try:
        if res.kind:
            return parse_workload(obj, cluster, res.kind)
        return _PARSERS[resource](obj, cluster)
    except Malformed:
        raise
    except (AttributeError, KeyError, TypeError, ValueError):   # a field of an unexpected type
        raise Malformed("bad_field") from None


_PARSERS: dict[str, Callable[[Any, str], _Obj]] = {
    "nodes": parse_node, "namespaces": parse_namespace, "services": parse_service,
    "endpointslices": parse_endpointslice, "pods": parse_pod,
}


def _rv_of(obj: Any) -> str | None:
    md = obj.get("metadata") if isinstance(obj, dict) else None
    rv = md.get("resourceVersion") if isinstance(md, dict) else None
    return rv if isinstance(rv, str) and rv else None


class _Backoff:
    """Exponential backoff with jitter, bounded: delays grow ×2 from ``low`` to ``high`` and are
    drawn from [d/2, d] so that many watchers that lost the API together do not retry together."""

    def __init__(self, low: float, high: float) -> None:
        self.low, self.high, self._n = low, high, 0

    def next(self) -> float:
        d = min(self.high, self.low * 2 ** self._n)
        self._n = min(self._n + 1, 32)
        return random.uniform(d / 2, d)

    def reset(self) -> None:
        self._n = 0


def _discard(index: dict[str, set[str]], key: str, member: str) -> None:
    """Removes ``member`` from ``index[key]``, and the key once empty (owners come and go)."""
    members = index.get(key)
    if members is not None:
        members.discard(member)
        if not members:
            del index[key]


def _untyped(fn: Callable[..., Any]) -> Callable[..., Any]:
    """The list function without its signature or docstring: ``watch.Watch`` then cannot find a
    model class and yields events with the raw dict, which we validate ourselves."""

    def call(**kwargs: Any) -> Any:
        return fn(**kwargs)

    return call


# ---------------------------------------------------------------------------------------------


class KubeWatcher:
    """Keeps one cluster's inventory in a Sink from list + watch of its API server.

    ``start()`` returns at once; ``wait_synced()`` tells when every resource was listed once.
    Threads never raise: API outages are retried with backoff while the sink keeps the last
    inventory, sink failures are counted and healed by a full re-send when it works again.
    """

    def __init__(self, cluster_name: str, sink: Sink, api_client: client.ApiClient, *,
                 resync_s: float = 600.0, backoff: tuple[float, float] = (0.5, 30.0),
                 watch_timeout_s: int = 300, page_size: int = 500, owner_wait_s: float = 10.0,
                 request_timeout_s: float = 30.0) -> None:
        self.cluster_name = cluster_name
        self.sink = sink
        self.api_client = api_client
        self.resync_s = resync_s
        self.backoff = backoff
        self.watch_timeout_s = watch_timeout_s
        self.page_size = page_size
        self.owner_wait_s = owner_wait_s
        self.request_timeout_s = request_timeout_s
        self._owns_client = False                  # made by watch_clusters: closed by stop()
        self._lock = threading.RLock()            # state and sink calls
        self._stats_lock = threading.Lock()       # counters only: stats never wait for a slow sink
        self._stop = threading.Event()
        self._synced = threading.Event()
        self._listed = {r.name: threading.Event() for r in RESOURCES}
        self._threads: list[threading.Thread] = []
        self._watches: dict[str, watch.Watch] = {}
        self._streaming: set[str] = set()                      # resources with an open watch
        # what the API said
        self._objects: dict[str, dict[str, _Obj]] = {r.name: {} for r in RESOURCES}
        self._by_uid: dict[str, _Obj] = {}                      # ReplicaSets and Jobs
        self._pods_by_owner: dict[str, set[str]] = {}           # owner uid → pod uids
        self._slices_by_service: dict[str, set[str]] = {}       # service key → slice keys
        self._rv: dict[str, str | None] = {r.name: None for r in RESOURCES}
        # what the sink was sent (kind → internal key → record)
        self._sent: dict[str, dict[str, Record]] = {k: {} for k in _RECORD_KINDS}
        self._sink_broken = False
        self._cluster_sent = False
        # stats
        self._events: Counter[str] = Counter()
        self._relists: Counter[str] = Counter()
        self._reconnects: Counter[str] = Counter()
        self._malformed: Counter[str] = Counter()
        self._errors: Counter[str] = Counter()
        self._last_event_time: float | None = None
        self._last_answer: float | None = None
        self._resends = 0

    # -- public ---------------------------------------------------------------------------

    def start(self) -> None:
        """Starts one daemon thread per resource and one that heals the sink."""
        if self._threads:
            return
        self._stop.clear()
        for res in RESOURCES:
            self._threads.append(threading.Thread(target=self._run_resource, args=(res,),
                                                  name=f"kube-{self.cluster_name}-{res.name}", daemon=True))
        self._threads.append(threading.Thread(target=self._run_housekeeping,
                                              name=f"kube-{self.cluster_name}-sink", daemon=True))
        for t in self._threads:
            t.start()

    def stop(self, timeout: float = 5.0) -> None:
        """Stops the threads (open watches are cut, sleeps interrupted) and waits for them."""
        self._stop.set()
        deadline = time.monotonic() + timeout
        for t in self._threads:
            while t.is_alive() and time.monotonic() < deadline:
                # again and again: a watch that was just opening has no socket to cut yet
                for w in list(self._watches.values()):
                    w.stop()
                t.join(0.05)
        self._threads = []
        if self._owns_client:
            self.api_client.close()

    def wait_synced(self, timeout: float | None = None) -> bool:
        """True once every resource has been listed at least once (and handed to the sink; one
        that failed gets it all again when it works)."""
        return self._synced.wait(timeout)

    @property
    def stats(self) -> dict[str, Any]:
        """A snapshot: per-resource events / relists / reconnects, malformed objects by reason,
        errors by source, the time of the last watch event, and how stale the inventory is."""
        with self._stats_lock:
            names = [r.name for r in RESOURCES]
            return {
                "events": {n: self._events[n] for n in names},
                "relists": {n: self._relists[n] for n in names},
                "reconnects": {n: self._reconnects[n] for n in names},
                "malformed": dict(self._malformed),
                "errors": dict(self._errors),
                "last_event_time": self._last_event_time,
                "synced": self._synced.is_set(),
                "stale_s": self._stale_s(),
                "resource_version": dict(self._rv),
                "sink_ok": not self._sink_broken,
                "resends": self._resends,
            }

    def _stale_s(self) -> float | None:
        """0 while every resource has a watch open (the inventory is current), else the seconds
        since the API last answered; None before it ever did."""
        if len(self._streaming) == len(RESOURCES):
            return 0.0
        return None if self._last_answer is None else time.monotonic() - self._last_answer

    # -- resource threads -----------------------------------------------------------------

    def _run_resource(self, res: _Resource) -> None:
        fn = getattr(res.api(self.api_client), res.method)
        backoff = _Backoff(*self.backoff)
        if res.name == "pods":      # resolve owner chains on the first listing
            self._wait_listed(("replicasets", "jobs"), self.owner_wait_s)
        need_list, failures, gone = True, 0, 0
        while not self._stop.is_set():
            try:
                if need_list:
                    self._list(res, fn)
                    need_list, gone = False, 0
                if self._watch(res, fn):
                    backoff.reset()
                else:                # ended at once with nothing: do not spin on a broken server
                    self._stop.wait(backoff.next())
                failures = 0
                continue
            except ApiException as e:
                if self._stop.is_set():
                    break
                if e.status == 410:  # our resourceVersion (or continue token) is compacted away
                    need_list, gone = True, gone + 1
                    if gone == 1:    # the normal case: list again at once
                        continue
                self._bump(self._errors, "api_status" if e.status else "connection")
                what = f"HTTP {e.status} {e.reason}" if e.status else str(e.reason)
            except (urllib3.exceptions.HTTPError, OSError) as e:
                if self._stop.is_set():
                    break
                self._bump(self._errors, "connection")
                what = f"{type(e).__name__}: {e}"
            except Exception as e:      # a stream we cannot read: start over from a list
                if self._stop.is_set():
                    break
                log.exception("kube %s/%s: unexpected error", self.cluster_name, res.name)
                self._bump(self._errors, "unexpected")
                need_list = True
                what = f"{type(e).__name__}: {e}"
            failures += 1
            delay = backoff.next()
            if failures == 1 or failures % 10 == 0:
                log.warning("kube %s/%s: %s; retrying in %.1fs, keeping the last inventory",
                            self.cluster_name, res.name, what, delay)
            if self._stop.wait(delay):
                break
            self._bump(self._reconnects, res.name)

    def _wait_listed(self, names: Iterable[str], timeout: float) -> None:
        deadline = time.monotonic() + timeout
        for n in names:
            while not self._listed[n].wait(0.05):
                if self._stop.is_set() or time.monotonic() > deadline:
                    return

    def _answered(self) -> None:
        self._last_answer = time.monotonic()

    def _list(self, res: _Resource, fn: Callable[..., Any]) -> None:
        items: list[Any] = []
        cont: str | None = None
        while True:
            resp = fn(limit=self.page_size, _continue=cont, _preload_content=False,
                      _request_timeout=self.request_timeout_s)
            try:
                body = json.loads(resp.data)
            finally:
                resp.release_conn()
            self._answered()
            if not isinstance(body, dict) or not isinstance(body.get("items", []), list):
                raise ValueError(f"{res.name}: a list response without items")
            meta = _dict(body.get("metadata"))
            items += body.get("items") or []
            cont = meta.get("continue") or None
            if cont is None:
                break
        with self._lock:
            if self._listed[res.name].is_set():
                self._bump(self._relists, res.name)
            self._rv[res.name] = meta.get("resourceVersion") or None
            self._apply_list(res, items)
            self._listed[res.name].set()
            if all(e.is_set() for e in self._listed.values()):
                self._synced.set()

    def _watch(self, res: _Resource, fn: Callable[..., Any]) -> bool:
        """One watch request from the last resourceVersion until the server ends it; False when
        it ended at once without a single event (the caller then backs off)."""
        w = watch.Watch()
        self._watches[res.name] = w
        started, seen = time.monotonic(), 0

        def opened(**kw: Any) -> Any:
            resp = fn(**kw)
            self._answered()
            self._streaming.add(res.name)
            return resp

        kwargs: dict[str, Any] = {"allow_watch_bookmarks": True, "timeout_seconds": self.watch_timeout_s,
                                  "_request_timeout": (self.request_timeout_s, self.watch_timeout_s + 30)}
        if self._rv[res.name]:
            kwargs["resource_version"] = self._rv[res.name]
        try:
            if self._stop.is_set():
                return True
            for ev in w.stream(_untyped(opened), **kwargs):
                self._answered()
                seen += 1
                if self._stop.is_set():
                    break
                self._on_event(res, ev)
        finally:
            self._watches.pop(res.name, None)
            self._streaming.discard(res.name)
        self._answered()        # a clean end (timeoutSeconds) is an answer too
        return seen > 0 or time.monotonic() - started > 1.0

    def _on_event(self, res: _Resource, ev: Any) -> None:
        if not isinstance(ev, dict) or not isinstance(ev.get("type"), str):
            self._count_malformed("bad_event")
            return
        kind, obj = ev["type"], ev.get("raw_object", ev.get("object"))
        rv = _rv_of(obj)
        if kind == "BOOKMARK":          # only a newer resourceVersion to resume from
            if rv:
                self._rv[res.name] = rv
            return
        if kind not in ("ADDED", "MODIFIED", "DELETED"):
            self._count_malformed("bad_event_type")
            return
        with self._lock:
            self._bump(self._events, res.name)
            self._last_event_time = time.time()
            if rv:
                self._rv[res.name] = rv
            try:
                o = parse(res.name, obj, self.cluster_name)
            except Malformed as e:
                self._count_malformed(e.reason)
                return
            if kind == "DELETED":
                self._sync(self._remove(res, o.key), o.deletion or time.time())
            else:
                self._sync(self._put(res, o), time.time())

    def _count_malformed(self, reason: str) -> None:
        self._bump(self._malformed, reason)

    def _bump(self, counter: Counter[str], key: str) -> None:
        with self._stats_lock:
            counter[key] += 1

    # -- in-memory state --------------------------------------------------------------------

    def _affected(self, res: _Resource, o: _Obj) -> set[tuple[str, str]]:
        """The (record kind, internal key) pairs whose record depends on object ``o``."""
        if res.name == "endpointslices":
            return {("service", o.service)} if o.service else set()
        assert o.record is not None
        if res.kind:
            out = {("pod_group", f"{res.kind}:{o.key}")}
            out.update(("pod", uid) for uid in self._pods_by_owner.get(o.uid, ()))
            return out
        return {(o.record.kind, o.key)}

    def _put(self, res: _Resource, o: _Obj) -> set[tuple[str, str]]:
        old = self._objects[res.name].get(o.key)
        affected = self._unindex(res, old) if old is not None else set()
        self._objects[res.name][o.key] = o
        if res.name == "endpointslices" and o.service:
            self._slices_by_service.setdefault(o.service, set()).add(o.key)
        elif res.kind in _PARENT_GROUP:
            self._by_uid[o.uid] = o
        elif res.name == "pods" and o.owner:
            self._pods_by_owner.setdefault(o.owner[2], set()).add(o.key)
        return affected | self._affected(res, o)

    def _remove(self, res: _Resource, key: str) -> set[tuple[str, str]]:
        old = self._objects[res.name].pop(key, None)
        return self._unindex(res, old) if old is not None else set()

    def _unindex(self, res: _Resource, old: _Obj) -> set[tuple[str, str]]:
        affected = self._affected(res, old)
        if res.name == "endpointslices" and old.service:
            _discard(self._slices_by_service, old.service, old.key)
        elif res.kind in _PARENT_GROUP:
            self._by_uid.pop(old.uid, None)
        elif res.name == "pods" and old.owner:
            _discard(self._pods_by_owner, old.owner[2], old.key)
        return affected

    def _apply_list(self, res: _Resource, items: list[Any]) -> None:
        affected: set[tuple[str, str]] = set()
        for key in list(self._objects[res.name]):
            affected |= self._remove(res, key)
        for item in items:
            try:
                o = parse(res.name, item, self.cluster_name)
            except Malformed as e:
                self._count_malformed(e.reason)
                continue
            affected |= self._put(res, o)
        now = time.time()
        self._send_cluster()
        replaced = {k for k in res.record_kinds
                    if res.name in _PRIMARY[k] and all(self._listed[n].is_set() or n == res.name
                                                       for n in _PRIMARY[k])}
        for kind in replaced:
            self._replace(kind, now)
        self._sync({a for a in affected if a[0] not in replaced}, now)

    def _group_of(self, pod: _Obj) -> tuple[str, str]:
        """The workload a pod belongs to: its controller, followed up to a Deployment / CronJob."""
        if pod.owner is None:
            return "", ""
        kind, name, uid = pod.owner
        if kind in _PARENT_GROUP:
            parent = self._by_uid.get(uid)
            if parent is not None:
                if parent.owner and parent.owner[0] == _PARENT_GROUP[kind]:
                    return parent.owner[0], parent.owner[1]
                return kind, name
            assert pod.record is not None
            suffix = "-" + pod.record.labels.get("pod-template-hash", "\0")
            if kind == "ReplicaSet" and name.endswith(suffix) and len(name) > len(suffix):
                return "Deployment", name[: -len(suffix)]
            return kind, name
        return (kind, name) if kind in GROUP_TYPES else ("", "")

    def _build(self, kind: str, key: str) -> Record | None:
        """The record of ``kind`` / internal ``key`` as the watcher knows it now (None: gone)."""
        if kind == "pod_group":
            gk, _, okey = key.partition(":")
            o = self._objects[_GROUP_RESOURCE[gk]].get(okey)
            if o is None or (o.owner is not None and o.owner[0] == _PARENT_GROUP.get(gk)):
                return None     # a ReplicaSet / Job under a Deployment / CronJob: not a group
            return o.record
        res = _RESOURCE_OF[kind]
        o = self._objects[res].get(key)
        if o is None or o.record is None:
            return None
        if kind == "service":
            slices = self._objects["endpointslices"]
            eps = {e for sk in self._slices_by_service.get(key, ()) for e in slices[sk].endpoints}
            return dataclasses.replace(o.record, endpoints=tuple(
                sorted(eps, key=lambda e: (e.ip, e.port, e.protocol))))
        if kind == "pod":
            gk, gn = self._group_of(o)
            return dataclasses.replace(o.record, group_kind=gk, group_name=gn, deleted=o.finished)
        return o.record

    def _keys(self, kind: str) -> list[str]:
        if kind == "pod_group":
            return sorted(f"{gk}:{k}" for gk, res in _GROUP_RESOURCE.items() for k in self._objects[res])
        res = _RESOURCE_OF[kind]
        return sorted(self._objects[res])

    # -- sink ---------------------------------------------------------------------------------

    def _call(self, fn: Callable[..., Any], *args: Any) -> bool:
        """Calls the sink; a failure is counted and makes the whole state due for a re-send."""
        if self._sink_broken:
            return False
        try:
            fn(*args)
            return True
        except Exception as e:
            self._bump(self._errors, "sink")
            self._sink_broken = True
            log.warning("kube %s: metadata sink failed (%s: %s); will re-send the whole inventory "
                        "when it works again", self.cluster_name, type(e).__name__, e)
            return False

    def _send_cluster(self) -> None:
        if not self._cluster_sent:
            self._cluster_sent = self._call(self.sink.upsert,
                                            Record(kind="cluster", name=self.cluster_name, cluster=self.cluster_name))

    def _sync(self, affected: Iterable[tuple[str, str]], when: float) -> None:
        order = {k: i for i, k in enumerate(_RECORD_KINDS)}
        for kind, key in sorted(affected, key=lambda a: (order[a[0]], a[1])):
            self._sync_one(kind, key, when)

    def _sync_one(self, kind: str, key: str, when: float) -> None:
        new, old = self._build(kind, key), self._sent[kind].get(key)
        if new == old or self._sink_broken:
            return
        if new is None:
            assert old is not None
            if old.deleted is None and not self._call(self.sink.delete, kind, self.cluster_name, old.key, when):
                return
            del self._sent[kind][key]
            return
        if new.deleted is not None:          # a finished pod: record it once, deleted at its end
            if old is not None and old.deleted is not None:
                return
            if not (self._call(self.sink.upsert, new)
                    and self._call(self.sink.delete, kind, self.cluster_name, new.key, new.deleted)):
                return
        elif not self._call(self.sink.upsert, new):
            return
        self._sent[kind][key] = new

    def _replace(self, kind: str, when: float) -> bool:
        """Sends the full listing of ``kind`` (records absent from it get deleted at ``when``)."""
        records = {k: r for k in self._keys(kind) if (r := self._build(kind, k)) is not None}
        for key, rec in records.items():     # finished pods are not in the listing: report them first
            if rec.deleted is not None:
                self._sync_one(kind, key, when)
        live = [r for r in records.values() if r.deleted is None]
        if not self._call(self.sink.replace, kind, self.cluster_name, live, when):
            return False
        self._sent[kind] = records
        return True

    def _resend_all(self) -> bool:
        """Re-sends everything: replace per kind where it was fully listed, upserts otherwise."""
        self._sent = {k: {} for k in _RECORD_KINDS}
        self._cluster_sent = False
        self._send_cluster()
        now = time.time()
        for kind in _RECORD_KINDS:
            if all(self._listed[n].is_set() for n in _PRIMARY[kind]):
                self._replace(kind, now)
            else:
                self._sync(((kind, k) for k in self._keys(kind)), now)
        return not self._sink_broken

    def _run_housekeeping(self) -> None:
        """Heals the sink after failures (full re-send, retried with backoff) and re-sends the
        whole state every ``resync_s`` so a store that lost writes converges."""
        backoff = _Backoff(*self.backoff)
        next_resync = time.monotonic() + self.resync_s if self.resync_s > 0 else float("inf")
        delay = min(1.0, self.backoff[0])
        while not self._stop.wait(delay):
            delay = min(1.0, self.backoff[0])
            try:
                with self._lock:
                    if self._sink_broken:
                        self._sink_broken = False
                        if self._resend_all():
                            with self._stats_lock:
                                self._resends += 1
                            backoff.reset()
                            log.info("kube %s: metadata sink works again; inventory re-sent", self.cluster_name)
                        else:
                            delay = backoff.next()
                    elif time.monotonic() >= next_resync and self._synced.is_set():
                        self._resend_all()
                        next_resync = time.monotonic() + self.resync_s
            except Exception:           # never let the healer die
                log.exception("kube %s: housekeeping failed", self.cluster_name)
                self._bump(self._errors, "unexpected")


def api_configuration() -> client.Configuration:
    """A client configuration with a connection pool that holds every watch of one watcher open
    (the default, 5 per CPU, makes urllib3 drop and re-open connections on small machines)."""
    cfg = client.Configuration()
    cfg.connection_pool_maxsize = max(cfg.connection_pool_maxsize or 0, len(RESOURCES) + 4)
    return cfg


def load_api_client(kubeconfig: str | None = None, context: str | None = None) -> client.ApiClient:
    """An API client: the pod's service account when running in a cluster and no kubeconfig or
    context is given, else the kubeconfig file (default ~/.kube/config, $KUBECONFIG) and context."""
    cfg = api_configuration()
    if kubeconfig is None and context is None and os.environ.get("KUBERNETES_SERVICE_HOST"):
        config.load_incluster_config(client_configuration=cfg)
        return client.ApiClient(cfg)
    return config.new_client_from_config(config_file=kubeconfig, context=context, persist_config=False,
                                         client_configuration=cfg)


def watch_clusters(specs: Iterable[ClusterSpec | Mapping[str, Any]], sink: Sink,
                   **options: Any) -> list[KubeWatcher]:
    """Starts one watcher per cluster (spec: name, kubeconfig, context); ``options`` go to
    every ``KubeWatcher``. Raises ValueError for a duplicate name or a kubeconfig it cannot load."""
    watchers: list[KubeWatcher] = []
    names: set[str] = set()
    try:
        for spec in specs:
            if not isinstance(spec, ClusterSpec):
                spec = ClusterSpec(str(spec.get("name") or ""), spec.get("kubeconfig"), spec.get("context"))
            if not spec.name or spec.name in names:
                raise ValueError(f"cluster name {spec.name!r} is empty or used twice")
            names.add(spec.name)
            try:
                api = load_api_client(spec.kubeconfig, spec.context)
            except Exception as e:
                raise ValueError(f"cluster {spec.name!r}: cannot load its API configuration "
                                 f"({type(e).__name__}: {e})") from e
            w = KubeWatcher(spec.name, sink, api, **options)
            w._owns_client = True
            watchers.append(w)
            w.start()
    except BaseException:
        for w in watchers:
            w.stop()
        raise
    return watchers
