"""The resource inventory as every source reports it and every consumer reads it.

Sources (the Kubernetes watcher in ``kube.py``, the static YAML file in ``inventory.py``) turn what
they know into ``Record``s and hand them to a ``Sink`` (the metadata store in ``store.py``). The
store gives each record a stable integer id per kind and keeps created/deleted times, so consumers
(the collector's tagger, the flow_tag syncer) read ``StoredRecord``s and resolve old flows too.

One record type for every kind keeps the store's schema and the sources' code small; fields a kind
does not use stay at their defaults.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

# Kinds, in the order parents come before children (a pod names its node, namespace and group).
KINDS = ("cluster", "node", "namespace", "pod_group", "service", "pod", "host")
NAMESPACED = frozenset({"pod_group", "service", "pod"})

# Workload kinds a pod_group can be, and their DeepFlow pod_group_type / auto_service_type
# (datamodel §4). Job and CronJob are flowscope's extensions (DeepFlow has no such group).
GROUP_TYPES = {
    "Deployment": 130, "StatefulSet": 131, "ReplicationController": 132, "DaemonSet": 133,
    "ReplicaSet": 134, "CloneSet": 135, "Job": 136, "CronJob": 137,
}


@dataclass(frozen=True, slots=True)
class ServicePort:
    """One port of a Service: ``port`` on its cluster IPs, ``target_port`` on the pods (0 when it
    is a named port that the EndpointSlices resolve), ``node_port`` on every node (0: none)."""

    port: int
    protocol: str = "TCP"            # TCP / UDP / SCTP
    target_port: int = 0
    node_port: int = 0
    name: str = ""


@dataclass(frozen=True, slots=True)
class Endpoint:
    """A backend of a Service (from EndpointSlices): the pod IP and the port it serves on."""

    ip: str
    port: int
    protocol: str = "TCP"


@dataclass(slots=True)
class Record:
    """One resource as a source sees it now.

    Identity inside the store is ``(kind, cluster, key)``: pods are keyed by ``uid`` (a StatefulSet
    pod recreated under the same name is a new pod), pod groups by namespace/kind/name, everything
    else by namespace/name, so a namespace named by a pod and the same namespace listed by the API
    are one resource.
    """

    kind: str                                  # one of KINDS
    name: str
    cluster: str = ""                          # cluster name; "" for hosts outside any cluster
    namespace: str = ""                        # pod_group, service, pod
    uid: str = ""                              # metadata.uid; the static file makes one up
    ips: tuple[str, ...] = ()                  # pod: status.podIPs; node: its addresses; service:
    #                                            clusterIPs + externalIPs + LB ingress; host: its IPs
    macs: tuple[str, ...] = ()                 # lower-case aa:bb:cc:dd:ee:ff, when known
    labels: dict[str, str] = field(default_factory=dict)
    annotations: dict[str, str] = field(default_factory=dict)
    created: float = 0.0                       # epoch seconds (metadata.creationTimestamp)
    deleted: float | None = None               # epoch seconds; None while it exists
    # pod
    node: str = ""                             # spec.nodeName
    host_network: bool = False                 # its IP is the node's: the node owns the IP
    group_kind: str = ""                       # pod: its workload's kind (owner chain resolved,
    group_name: str = ""                       #   ReplicaSet → Deployment, Job → CronJob); pod_group: its kind
    # service
    service_type: str = ""                     # ClusterIP / NodePort / LoadBalancer / ExternalName
    selector: dict[str, str] = field(default_factory=dict)
    ports: tuple[ServicePort, ...] = ()
    endpoints: tuple[Endpoint, ...] = ()       # from EndpointSlices; empty: match pods by selector

    @property
    def key(self) -> str:
        if self.kind == "pod" and self.uid:
            return self.uid
        if self.kind == "pod_group":          # a Deployment and a StatefulSet may share a name
            return f"{self.namespace}/{self.group_kind}/{self.name}"
        return f"{self.namespace}/{self.name}" if self.namespace else self.name


@dataclass(slots=True)
class StoredRecord:
    """A record with the store's stable id (per kind, from 1) and the ids of its parents
    (0 when it has none): what the tagger and the flow_tag syncer read."""

    id: int
    record: Record
    cluster_id: int = 0
    namespace_id: int = 0                      # pod_group, service, pod
    node_id: int = 0                           # pod
    group_id: int = 0                          # pod


class Sink(Protocol):
    """Where sources send what they see (the metadata store implements it).

    ``upsert`` creates or updates a record (and the cluster / namespace / node / pod_group it
    names, if unknown) and returns its id; a record that comes back after deletion is alive again.
    An upsert with ``deleted`` set records a deletion (the first deletion time is kept).
    ``delete`` marks one deleted at ``when``. ``replace`` is a full listing of one kind from one
    source (a relist after 410 Gone, a reloaded file): records of that kind and cluster not in it
    are marked deleted at ``when``.
    """

    def upsert(self, rec: Record) -> int: ...

    def delete(self, kind: str, cluster: str, key: str, when: float) -> None: ...

    def replace(self, kind: str, cluster: str, records: list[Record], when: float) -> None: ...
