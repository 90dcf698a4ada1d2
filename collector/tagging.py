# cython: annotation_typing=False
"""Resource tags of a flow end (datamodel §1c/§6), interned as small integer ids.

Flows, rows and metric keys carry a ``tag_id``; the tuple behind it is expanded into the 19
resource columns only when a batch is written, so the hot path never copies them. ``Tagger``
knows only what an IP says about itself (Internet or private); ``InventoryTagger`` adds the
resource inventory (pods, nodes, services, hosts) through the same ``tag`` call.
"""

from __future__ import annotations

import contextlib
import ipaddress
import math
import threading
import time
from collections.abc import Iterable
from typing import TYPE_CHECKING, NamedTuple

import numpy as np

if TYPE_CHECKING:
    from flowscope.metadata.model import StoredRecord

# Column order of a resource block (suffix _0 / _1 in flow logs and map tables).
RESOURCE_COLUMNS = (
    "region_id", "az_id", "host_id", "l3_device_type", "l3_device_id", "pod_node_id", "pod_ns_id",
    "pod_group_id", "pod_id", "pod_cluster_id", "l3_epc_id", "subnet_id", "service_id",
    "auto_instance_id", "auto_instance_type", "auto_service_id", "auto_service_type", "gprocess_id",
    "tag_source",
)
EPC_INDEX = RESOURCE_COLUMNS.index("l3_epc_id")

EPC_INTERNET = -2
AUTO_INTERNET = 0
AUTO_IP = 255


class Resource(NamedTuple):
    region_id: int = 0
    az_id: int = 0
    host_id: int = 0
    l3_device_type: int = 0
    l3_device_id: int = 0
    pod_node_id: int = 0
    pod_ns_id: int = 0
    pod_group_id: int = 0
    pod_id: int = 0
    pod_cluster_id: int = 0
    l3_epc_id: int = 0
    subnet_id: int = 0
    service_id: int = 0
    auto_instance_id: int = 0
    auto_instance_type: int = AUTO_IP
    auto_service_id: int = 0
    auto_service_type: int = AUTO_IP
    gprocess_id: int = 0
    tag_source: int = 0


PRIVATE_IP = Resource()
INTERNET_IP = Resource(l3_epc_id=EPC_INTERNET, auto_instance_type=AUTO_INTERNET,
                       auto_service_type=AUTO_INTERNET)


class TagRegistry:
    """Interns resource tuples: equal tags share one id for the life of the process."""

    def __init__(self) -> None:
        self.by_id: list[Resource] = []
        self._ids: dict[Resource, int] = {}
        self._array = np.zeros((0, len(RESOURCE_COLUMNS)), np.int64)
        self.intern(PRIVATE_IP)          # id 0: an unknown private IP

    def array(self) -> np.ndarray:
        """All tags as an int64 matrix (row = tag id, columns = RESOURCE_COLUMNS), for expanding
        tag ids into columns at write time. Extended, not rebuilt, as tags are added."""
        arr = self._array
        n = len(self.by_id)
        if len(arr) < n:
            new = np.asarray(self.by_id[len(arr):n], dtype=np.int64).reshape(-1, len(RESOURCE_COLUMNS))
            arr = self._array = np.concatenate([arr, new])
        return arr

    def intern(self, res: Resource) -> int:
        tid = self._ids.get(res)
        if tid is None:
            tid = self._ids[res] = len(self.by_id)
            self.by_id.append(res)
        return tid


def _ip_obj(ip: int | bytes) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    return ipaddress.IPv4Address(ip) if isinstance(ip, int) else ipaddress.IPv6Address(ip)


class Tagger:
    """IP → tag_id. This base tagger knows no inventory: public IPs are Internet (l3_epc_id −2,
    auto type 0), everything else an unknown private IP (epc 0, auto type 255; §6.1 step 9)."""

    def __init__(self, registry: TagRegistry | None = None, cache_size: int = 65536) -> None:
        self.registry = registry or TagRegistry()
        self._internet = self.registry.intern(INTERNET_IP)
        self.cache: dict[int | bytes, int] = {}      # read directly by the flow table
        self._cache_size = cache_size
        # Server-side tags by port: (tag_id, port) → tag_id of the same end with the Service that
        # serves that port (datamodel §6.2: side 1 is matched with server_port). Read by the flow table.
        self.port_tags: dict[tuple[int, int], int] = {}
        # Pod MAC → tag, for ends whose address the inventory does not know (an IPv6 the pod
        # configured itself, a DHCP client): only pods, whose frames always carry their own MAC.
        self.macs: dict[int, int] = {}
        self.pending: object | None = None           # an inventory waiting to be applied

    def tag(self, ip: int | bytes, ts: int = 0) -> int:
        """The tag of an address at ``ts`` (µs). Answers that do not depend on the time are cached
        in ``cache``, which the flow table reads directly."""
        tid = self.cache.get(ip)
        if tid is None:
            tid, cacheable = self.lookup(ip, ts)
            if cacheable:
                if len(self.cache) >= self._cache_size:
                    self.cache.clear()
                self.cache[ip] = tid
        return tid

    def lookup(self, ip: int | bytes, ts: int = 0) -> tuple[int, bool]:
        """Uncached resolution: (tag_id, whether it holds at any time)."""
        obj = _ip_obj(ip)       # §6.1 step 9: public → Internet; private, link-local, multicast → 0
        return (self._internet if obj.is_global and not obj.is_multicast else 0), True

    def apply_pending(self) -> None:
        """Called by the capture thread between batches; the base tagger has nothing to apply."""

    def is_internet(self, tag_id: int) -> bool:
        return self.registry.by_id[tag_id].l3_epc_id == EPC_INTERNET


# -- inventory -------------------------------------------------------------------------------------
VPC_ID = 1                    # single-VPC mode: every inventory address lives in VPC 1 (§6.2)
DEV_CHOST, DEV_POD, DEV_SERVICE, DEV_NODE = 1, 10, 11, 14
AUTO_CLUSTER = 103
SRC_MAC, SRC_EPC_IP = 4, 8    # tag_source: found by MAC / by (EPC, IP)
_KIND_RANK = {"pod": 0, "node": 1, "service": 2, "host": 3}   # who owns an IP claimed twice at once
_FOREVER = math.inf


def ip_key(text: str) -> int | bytes:
    """An address as the flow table keys it: int for IPv4, 16 packed bytes for IPv6."""
    ip = ipaddress.ip_address(text)
    return int(ip) if ip.version == 4 else ip.packed


class Claim(NamedTuple):
    """One resource's hold on an address, over its lifetime (µs; deleted = inf while alive)."""

    created: float
    deleted: float
    rank: tuple
    tag_id: int


class Inventory(NamedTuple):
    """What ``InventoryTagger`` looks addresses up in, built away from the capture thread."""

    single: dict[int | bytes, int]               # addresses only one resource ever held
    claims: dict[int | bytes, list[Claim]]       # addresses several resources held (IP reuse)
    port_tags: dict[tuple[int, int], int]
    resources: int
    macs: dict[int, int]                         # a pod's own MAC → its tag (tag_source MAC)


def _matches(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


def build_inventory(records: Iterable[StoredRecord], registry: TagRegistry, own_cluster: str = "") -> Inventory:
    """Resource tuples for every address in the inventory (pods, nodes, Services, hosts).

    A pod's Service (side 0, no port) is the first Service, by id, that selects it — by its
    EndpointSlices' addresses, else by label selector; ``port_tags`` holds the Service per server
    port when ports tell Services apart, and NodePorts on the nodes' addresses.
    """
    from flowscope.metadata.model import GROUP_TYPES

    recs = list(records)
    by_kind: dict[str, list[StoredRecord]] = {}
    for sr in recs:
        by_kind.setdefault(sr.record.kind, []).append(sr)
    groups = {sr.id: sr.record for sr in by_kind.get("pod_group", ())}
    services = sorted(by_kind.get("service", ()), key=lambda sr: sr.id)

    # Services of each pod: by endpoint address, else by selector; and which ports each serves.
    svc_by_ip: dict[tuple[str, str], list[tuple[int, set[tuple[int, str]]]]] = {}
    for sr in services:
        svc = sr.record
        for ep in svc.endpoints:
            entry = svc_by_ip.setdefault((svc.cluster, ep.ip), [])
            for sid, ports in entry:
                if sid == sr.id:
                    ports.add((ep.port, ep.protocol))
                    break
            else:
                entry.append((sr.id, {(ep.port, ep.protocol)}))

    # Services without slices, by one (the smallest) label of their selector: a pod's candidates
    by_label: dict[tuple, list[StoredRecord]] = {}
    for sr in services:
        svc = sr.record
        if not svc.endpoints and svc.selector:
            by_label.setdefault((svc.cluster, svc.namespace, min(svc.selector.items())), []).append(sr)

    def pod_services(pod: StoredRecord) -> list[tuple[int, set[int]]]:
        rec = pod.record
        out: dict[int, set[int]] = {}
        for ip in rec.ips:
            for sid, ports in svc_by_ip.get((rec.cluster, ip), ()):
                out.setdefault(sid, set()).update(p for p, _ in ports)
        for label in rec.labels.items():
            for sr in by_label.get((rec.cluster, rec.namespace, label), ()):
                svc = sr.record
                if sr.id not in out and _matches(svc.selector, rec.labels):
                    out[sr.id] = {p.target_port or p.port for p in svc.ports}
        return sorted(out.items())

    def life(rec) -> tuple[float, float]:
        created = rec.created * 1e6 if rec.created else 0.0
        return created, rec.deleted * 1e6 if rec.deleted is not None else _FOREVER

    claims: dict[int | bytes, list[Claim]] = {}
    port_tags: dict[tuple[int, int], int] = {}
    macs: dict[int, int] = {}

    def claim(rec, ip: str, tid: int) -> None:
        try:
            key = ip_key(ip)
        except ValueError:
            return
        c, d = life(rec)
        rank = (rec.cluster != own_cluster if own_cluster else False, _KIND_RANK[rec.kind])
        claims.setdefault(key, []).append(Claim(c, d, rank, tid))

    for sr in by_kind.get("pod", ()):
        rec = sr.record
        if rec.host_network:            # the node owns the address; the pod shares it
            continue
        group = groups.get(sr.group_id)
        gtype = GROUP_TYPES.get(group.group_kind, 0) if group is not None else 0
        svcs = pod_services(sr)
        base = dict(l3_device_type=DEV_POD, l3_device_id=sr.id, pod_node_id=sr.node_id,
                    pod_ns_id=sr.namespace_id, pod_group_id=sr.group_id, pod_id=sr.id,
                    pod_cluster_id=sr.cluster_id, l3_epc_id=VPC_ID, auto_instance_id=sr.id,
                    auto_instance_type=DEV_POD, tag_source=SRC_EPC_IP)

        def pod_tag(service_id: int, base=base, group_id=sr.group_id, gtype=gtype, cluster_id=sr.cluster_id) -> int:
            if service_id:
                auto = (service_id, DEV_SERVICE)
            elif group_id and gtype:
                auto = (group_id, gtype)
            else:
                auto = (cluster_id, AUTO_CLUSTER)
            return registry.intern(Resource(**base, service_id=service_id, auto_service_id=auto[0],
                                            auto_service_type=auto[1]))

        tid = pod_tag(svcs[0][0] if svcs else 0)
        for ip in rec.ips:
            claim(rec, ip, tid)
        if rec.deleted is None:          # a live pod's own MAC names it at any address it uses
            for mac in rec.macs:
                with contextlib.suppress(ValueError):
                    macs[int(mac.replace(":", ""), 16)] = registry.intern(
                        registry.by_id[tid]._replace(tag_source=SRC_MAC))
        if len(svcs) > 1:               # ports tell the Services apart on the server side
            for sid, ports in reversed(svcs):
                for port in ports:
                    port_tags[(tid, port)] = pod_tag(sid)

    for sr in by_kind.get("node", ()):
        rec = sr.record
        res = Resource(l3_device_type=DEV_NODE, l3_device_id=sr.id, pod_node_id=sr.id,
                       pod_cluster_id=sr.cluster_id, l3_epc_id=VPC_ID, auto_instance_id=sr.id,
                       auto_instance_type=DEV_NODE, auto_service_id=sr.cluster_id,
                       auto_service_type=AUTO_CLUSTER, tag_source=SRC_EPC_IP)
        tid = registry.intern(res)
        for ip in rec.ips:
            claim(rec, ip, tid)
        for svc in services:             # NodePorts: the node's address serves the Service
            if svc.record.cluster != rec.cluster:
                continue
            for p in svc.record.ports:
                if p.node_port:
                    port_tags.setdefault((tid, p.node_port), registry.intern(res._replace(
                        service_id=svc.id, auto_service_id=svc.id, auto_service_type=DEV_SERVICE)))

    for sr in services:
        rec = sr.record
        tid = registry.intern(Resource(
            l3_device_type=DEV_SERVICE, l3_device_id=sr.id, pod_ns_id=sr.namespace_id,
            pod_cluster_id=sr.cluster_id, l3_epc_id=VPC_ID, service_id=sr.id, auto_instance_id=sr.id,
            auto_instance_type=DEV_SERVICE, auto_service_id=sr.id, auto_service_type=DEV_SERVICE,
            tag_source=SRC_EPC_IP))
        for ip in rec.ips:
            claim(rec, ip, tid)

    for sr in by_kind.get("host", ()):
        rec = sr.record
        tid = registry.intern(Resource(
            l3_device_type=DEV_CHOST, l3_device_id=sr.id, l3_epc_id=VPC_ID, auto_instance_id=sr.id,
            auto_instance_type=DEV_CHOST, auto_service_id=sr.id, auto_service_type=DEV_CHOST,
            tag_source=SRC_EPC_IP))
        for ip in rec.ips:
            claim(rec, ip, tid)

    single: dict[int | bytes, int] = {}
    multi: dict[int | bytes, list[Claim]] = {}
    for key, cs in claims.items():
        if len({c.tag_id for c in cs}) == 1:
            single[key] = cs[0].tag_id
        else:
            multi[key] = sorted(cs)
    return Inventory(single, multi, port_tags, len(recs), macs)


class InventoryTagger(Tagger):
    """Tags addresses with the resources of the inventory, by the time a flow starts.

    An address only one resource ever held resolves without looking at the time (and is cached);
    an address several held — a pod deleted and its IP given to a new one — resolves to the
    resource that held it at the flow's start (else the latest one created before it). A new
    inventory is built on any thread (``load``) and swapped in by the capture thread between
    batches (``apply_pending``), so capture never waits and no stale answer outlives the swap.
    """

    def __init__(self, registry: TagRegistry | None = None, cache_size: int = 65536, own_cluster: str = "") -> None:
        super().__init__(registry, cache_size)
        self.own_cluster = own_cluster
        self.inv = Inventory({}, {}, {}, 0, {})
        self.loaded_at = 0.0                      # wall clock of the inventory in use (0: none yet)
        self._lock = threading.Lock()             # one builder at a time (interning is not reentrant)

    def load(self, records: Iterable[StoredRecord]) -> Inventory:
        """Build an inventory from the store's records and queue it for the capture thread."""
        with self._lock:
            inv = build_inventory(records, self.registry, self.own_cluster)
            self.pending = inv
        return inv

    def apply_pending(self) -> None:
        inv = self.pending
        if inv is None:
            return
        self.pending = None
        self.inv = inv
        self.port_tags = inv.port_tags
        self.macs = inv.macs
        self.cache.clear()                        # in place: the flow table holds this dict
        self.loaded_at = time.time()

    def lookup(self, ip: int | bytes, ts: int = 0) -> tuple[int, bool]:
        inv = self.inv
        tid = inv.single.get(ip)
        if tid is not None:
            return tid, True
        claims = inv.claims.get(ip)
        if claims is None:
            return super().lookup(ip, ts)
        live = [c for c in claims if c.created <= ts < c.deleted]
        if live:
            return min(live, key=lambda c: c.rank).tag_id, False
        before = [c for c in claims if c.created <= ts]
        return (max(before, key=lambda c: c.created) if before else claims[0]).tag_id, False
