"""Where a capture NIC sits, and what that makes of each flow's ``observation_point``.

A capture NIC has a *role*; each flow has a *near end* (the end whose traffic this NIC carries
as its own). Together they give DeepFlow's observation_point (datamodel §5.8):

| role  | NIC                                              | near end                  | point      |
|-------|--------------------------------------------------|---------------------------|------------|
| own   | a host's / VM's / pod's own NIC (eth0 in a pod)  | this host                 | c / s (c-nd / s-nd when tunnelled) |
| pod   | host side of a pod's veth (``veth*``, ``*_h``)   | the pod behind it         | c / s      |
| node  | a K8s node's uplink NIC                          | the node                  | c-nd / s-nd|
| local | loopback                                         | both ends                 | local      |
| mirror| a SPAN/mirror port                               | none                      | rest       |
"""

from __future__ import annotations

import fnmatch
from collections import Counter
from dataclasses import dataclass, field

ROLES = ("own", "pod", "node", "local", "mirror")

# Default interface-name rules, first match wins (Kube-OVN names the host side of a pod NIC
# <containerID>_h; Calico cali*, Cilium lxc*, Flannel/bridge CNIs veth*).
DEFAULT_RULES: tuple[tuple[str, str], ...] = (
    ("lo", "local"),
    ("*_h", "pod"),
    ("veth*", "pod"),
    ("cali*", "pod"),
    ("lxc*", "pod"),
    ("*", "own"),
)


@dataclass(frozen=True)
class NicRoles:
    """Interface-glob → role rules (configurable), first match wins."""

    rules: tuple[tuple[str, str], ...] = DEFAULT_RULES

    def __post_init__(self) -> None:
        for pattern, role in self.rules:
            if role not in ROLES:
                raise ValueError(f"interface rule {pattern!r}: unknown role {role!r} (known: {', '.join(ROLES)})")

    def role_of(self, name: str) -> str:
        for pattern, role in self.rules:
            if fnmatch.fnmatchcase(name, pattern):
                return role
        return "own"


@dataclass
class NearEnd:
    """Decides, from a flow's first packet, whether its source is the NIC's near end.

    Evidence in order: the capture direction (AF_PACKET pkttype, pcapng flags, SLL header),
    the NIC's own MACs, configured local IPs. Returns 1 (source is near), 0 (destination is
    near), -1 (unknown) or 2 (both, loopback).
    """

    role: str
    macs: frozenset[bytes] = frozenset()
    ips: frozenset = field(default_factory=frozenset)

    def source_is_near(self, direction: int, src_mac: bytes, dst_mac: bytes, src_ip, dst_ip) -> int:
        role = self.role
        if role == "local":
            return 2
        if role == "mirror":
            return -1
        if direction:
            outbound = direction == 2
            # On a pod veth's host side the pod's packets arrive *inbound*.
            return int(outbound != (role == "pod"))
        if self.macs and src_mac:
            s, d = src_mac in self.macs, dst_mac in self.macs
            if role == "pod":  # the NIC's MAC is the host side: the other end is the pod
                if d and not s:
                    return 1
                if s and not d:
                    return 0
            elif s != d:
                return int(s)
        if self.ips:
            s, d = src_ip in self.ips, dst_ip in self.ips
            if s != d:
                return int(s)
        return -1


def observation_point(role: str, client_near: bool, server_near: bool, tunnel_tier: int) -> str:
    """DeepFlow's observation_point string for one flow at one capture NIC."""
    if role == "local" or (client_near and server_near):
        return "local"
    if not (client_near or server_near):
        return "rest"
    if role == "node" or (tunnel_tier and role == "own"):
        return "c-nd" if client_near else "s-nd"
    return "c" if client_near else "s"


def guess_local_mac(frames: list[tuple[bytes, bytes]]) -> bytes | None:
    """The MAC of the host a pcap was taken on, from (src, dst) MAC pairs of its first frames.

    On a host's NIC every unicast frame has the host's MAC at one end. If two MACs qualify (a
    point-to-point link), the sender of the first frame wins: captures usually start with the
    capturing host's own request. Returns None when nothing qualifies (mirror or mixed traffic).
    """
    uni = [(s, d) for s, d in frames if not d[0] & 1 and not s[0] & 1]
    if not uni:
        return None
    seen: Counter[bytes] = Counter()
    for s, d in uni:
        seen[s] += 1
        if d != s:
            seen[d] += 1
    need = max(1, int(len(uni) * 0.99))
    candidates = [m for m, n in seen.items() if n >= need]
    if not candidates:
        return None
    if len(candidates) == 1:
        return candidates[0]
    first_src = uni[0][0]
    return first_src if first_src in candidates else None
