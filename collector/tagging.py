"""Resource tags of a flow end (datamodel §1c/§6), interned as small integer ids.

Flows, rows and metric keys carry a ``tag_id``; the tuple behind it is expanded into the 19
resource columns only when a batch is written, so the hot path never copies them. This module
only knows what an IP says about itself (Internet or private); Kubernetes inventory plugs in
through the same ``Tagger.tag`` call.
"""

from __future__ import annotations

import ipaddress
from typing import NamedTuple

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
        self.intern(PRIVATE_IP)          # id 0: an unknown private IP

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

    def tag(self, ip: int | bytes) -> int:
        tid = self.cache.get(ip)
        if tid is None:
            tid = self.lookup(ip)
            if len(self.cache) >= self._cache_size:
                self.cache.clear()
            self.cache[ip] = tid
        return tid

    def lookup(self, ip: int | bytes) -> int:
        """Uncached resolution; subclasses with an inventory override this."""
        return self._internet if _ip_obj(ip).is_global else 0

    def is_internet(self, tag_id: int) -> bool:
        return self.registry.by_id[tag_id].l3_epc_id == EPC_INTERNET
