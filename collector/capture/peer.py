"""What is at the other end of a capture interface: its own addresses and, for a veth, the
addresses of its peer in another network namespace (the pod behind a ``*_h`` / ``veth*`` NIC).

Asked once per interface when capture starts (``ip -j``, a few ms), never per packet. Peers in
namespaces without a name (no /run/netns entry, no nsid name) are not found: the NIC keeps the
role its name gives it.
"""

from __future__ import annotations

import json
import subprocess


def _ip_json(netns: str, *args: str) -> list[dict]:
    cmd = ["ip", *(["-n", netns] if netns else []), "-j", *args]
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=5, check=True).stdout
        return json.loads(out or "[]")
    except (OSError, subprocess.SubprocessError, ValueError):
        return []


def _addresses(entries: list[dict], ifindex: int | None = None) -> list[str]:
    return [a["local"] for e in entries if ifindex is None or e.get("ifindex") == ifindex
            for a in e.get("addr_info", ()) if a.get("scope") == "global" and "local" in a]


def own_addresses(netns: str, ifname: str) -> list[str]:
    """Global addresses on the interface itself."""
    return _addresses(_ip_json(netns, "addr", "show", "dev", ifname))


def peer_addresses(netns: str, ifname: str) -> list[str]:
    """Global addresses on the other end of a veth whose peer lives in another named namespace."""
    links = _ip_json(netns, "link", "show", "dev", ifname)
    if not links or "link_netnsid" not in links[0] or "link_index" not in links[0]:
        return []
    nsid, peer_index = links[0]["link_netnsid"], links[0]["link_index"]
    names = {e.get("nsid"): e.get("name") for e in _ip_json(netns, "netns", "list-id")}
    peer_ns = names.get(nsid)
    if not peer_ns:
        return []
    return _addresses(_ip_json(peer_ns, "addr", "show"), peer_index)
