"""The static inventory file (``--inventory FILE``): hosts, VMs and clusters without API access.

The file becomes the same ``Record``s the Kubernetes watcher produces and goes into the same store
through ``Sink.replace``, so reloading an edited file deletes what it no longer lists (a cluster
comes from one source: the file or the API). Every error
names the item it is about (``clusters[0].pods[2].ips[1]: not an IP address: '10.1'``).

    clusters:
      - name: lab
        nodes: [{name: node-1, ips: [10.99.0.1]}]
        namespaces: [{name: shop, labels: {team: web}}]      # optional: pods imply theirs
        pods:
          - {name: web-0, namespace: shop, ips: [10.200.0.1], node: node-1,
             workload: {kind: StatefulSet, name: web}, labels: {app: web}}
        services: [{name: web, namespace: shop, cluster_ips: [10.96.0.10], selector: {app: web},
                    ports: [{port: 80, target_port: 8080, node_port: 30080}]}]
    hosts: [{name: vm-a, ips: [192.168.10.5]}]

Optional on any item: ``labels``, ``annotations``, ``uid``, ``created`` / ``deleted`` (epoch
seconds or ISO 8601, for inventories of the past: a pcap replayed with the pods of its day);
``macs`` on pods, nodes and hosts; ``host_network`` on pods; ``type`` on services.
"""

from __future__ import annotations

import ipaddress
from datetime import datetime
from pathlib import Path
from typing import Any

import yaml

from flowscope.metadata.model import GROUP_TYPES, KINDS, Record, ServicePort, Sink


class InventoryError(ValueError):
    """The inventory file is wrong; the message names the file and the item."""


_ITEMS = {"nodes": "node", "namespaces": "namespace", "pods": "pod", "services": "service"}
_COMMON = {"name", "labels", "annotations", "uid", "created", "deleted"}
_ALLOWED = {
    "node": _COMMON | {"ips", "macs"},
    "namespace": _COMMON,
    "pod": _COMMON | {"namespace", "ips", "macs", "node", "workload", "host_network"},
    "service": _COMMON | {"namespace", "cluster_ips", "external_ips", "selector", "ports", "type"},
    "host": _COMMON | {"ips", "macs"},
}
_PROTOCOLS = ("TCP", "UDP", "SCTP")


def _time(value: Any, where: str) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool):
        raise InventoryError(f"{where}: expected epoch seconds or an ISO 8601 time, got {value!r}")
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, datetime):
        return value.timestamp()
    try:
        return datetime.fromisoformat(str(value).replace("Z", "+00:00")).timestamp()
    except ValueError:
        raise InventoryError(f"{where}: expected epoch seconds or an ISO 8601 time, got {value!r}") from None


def _strmap(value: Any, where: str) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise InventoryError(f"{where}: expected a mapping of strings, got {type(value).__name__}")
    return {str(k): "" if v is None else str(v) for k, v in value.items()}


def _ips(value: Any, where: str) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list):
        raise InventoryError(f"{where}: expected a list of IP addresses")
    out = []
    for i, ip in enumerate(value):
        try:
            out.append(str(ipaddress.ip_address(str(ip))))
        except ValueError:
            raise InventoryError(f"{where}[{i}]: not an IP address: {ip!r}") from None
    return tuple(out)


def _macs(value: Any, where: str) -> tuple[str, ...]:
    out = []
    for i, mac in enumerate(value or ()):
        text = str(mac).lower().replace("-", ":")
        parts = text.split(":")
        if len(parts) != 6 or not all(len(p) == 2 and all(c in "0123456789abcdef" for c in p) for p in parts):
            raise InventoryError(f"{where}[{i}]: not a MAC address: {mac!r}")
        out.append(text)
    return tuple(out)


def _ports(value: Any, where: str) -> tuple[ServicePort, ...]:
    out = []
    for i, p in enumerate(value or ()):
        w = f"{where}[{i}]"
        if isinstance(p, int):
            p = {"port": p}
        if not isinstance(p, dict) or "port" not in p:
            raise InventoryError(f"{w}: expected {{port: N, protocol: TCP, target_port: N, node_port: N}}")
        proto = str(p.get("protocol", "TCP")).upper()
        if proto not in _PROTOCOLS:
            raise InventoryError(f"{w}.protocol: one of {', '.join(_PROTOCOLS)}, got {proto!r}")
        nums = {}
        for key in ("port", "target_port", "node_port"):
            v = p.get(key, 0)
            if not isinstance(v, int) or not 0 <= v <= 65535 or (key == "port" and not v):
                raise InventoryError(f"{w}.{key}: expected a port number, got {v!r}")
            nums[key] = v
        out.append(ServicePort(nums["port"], proto, nums["target_port"], nums["node_port"], str(p.get("name", ""))))
    return tuple(out)


def _record(kind: str, item: Any, cluster: str, where: str) -> Record:
    if not isinstance(item, dict):
        raise InventoryError(f"{where}: expected a mapping, got {type(item).__name__}")
    unknown = set(item) - _ALLOWED[kind]
    if unknown:
        raise InventoryError(f"{where}: unknown key(s) {sorted(unknown)} (known: {', '.join(sorted(_ALLOWED[kind]))})")
    name = item.get("name")
    if not isinstance(name, str) or not name:
        raise InventoryError(f"{where}.name: required")
    namespace = ""
    if kind in ("pod", "service"):
        namespace = item.get("namespace") or "default"
    rec = Record(kind=kind, name=name, cluster=cluster, namespace=str(namespace),
                 labels=_strmap(item.get("labels"), f"{where}.labels"),
                 annotations=_strmap(item.get("annotations"), f"{where}.annotations"),
                 created=_time(item.get("created"), f"{where}.created") or 0.0,
                 deleted=_time(item.get("deleted"), f"{where}.deleted"))
    if kind in ("node", "pod", "host"):
        rec.ips = _ips(item.get("ips"), f"{where}.ips")
        rec.macs = _macs(item.get("macs"), f"{where}.macs")
    if kind == "pod":
        rec.uid = str(item.get("uid") or f"file:{cluster}/{rec.namespace}/{name}")
        rec.node = str(item.get("node") or "")
        rec.host_network = bool(item.get("host_network", False))
        wl = item.get("workload")
        if wl is not None:
            if not isinstance(wl, dict) or set(wl) != {"kind", "name"}:
                raise InventoryError(f"{where}.workload: expected {{kind: KIND, name: NAME}}")
            if wl["kind"] not in GROUP_TYPES:
                raise InventoryError(f"{where}.workload.kind: one of {', '.join(GROUP_TYPES)}, got {wl['kind']!r}")
            rec.group_kind, rec.group_name = wl["kind"], str(wl["name"])
    else:
        rec.uid = str(item.get("uid") or "")
    if kind == "service":
        rec.ips = _ips(item.get("cluster_ips"), f"{where}.cluster_ips") + \
            _ips(item.get("external_ips"), f"{where}.external_ips")
        rec.selector = _strmap(item.get("selector"), f"{where}.selector")
        rec.ports = _ports(item.get("ports"), f"{where}.ports")
        rec.service_type = str(item.get("type") or ("NodePort" if any(p.node_port for p in rec.ports) else "ClusterIP"))
    return rec


def parse(data: Any, source: str = "inventory") -> list[Record]:
    """Records for every item of a parsed inventory document (clusters first, then in KINDS order)."""
    if data is None:
        return []
    if not isinstance(data, dict):
        raise InventoryError(f"{source}: expected a mapping with 'clusters' and/or 'hosts'")
    unknown = set(data) - {"clusters", "hosts"}
    if unknown:
        raise InventoryError(f"{source}: unknown key(s) {sorted(unknown)} (known: clusters, hosts)")
    out: list[Record] = []
    seen: set[tuple[str, str, str]] = set()

    def add(rec: Record, where: str) -> None:
        ident = (rec.kind, rec.cluster, rec.key)
        if ident in seen:
            raise InventoryError(f"{source}: {where}: duplicate {rec.kind} {rec.key!r}")
        seen.add(ident)
        out.append(rec)

    for ci, cl in enumerate(data.get("clusters") or ()):
        w = f"clusters[{ci}]"
        if not isinstance(cl, dict) or not isinstance(cl.get("name"), str) or not cl["name"]:
            raise InventoryError(f"{source}: {w}.name: required")
        unknown = set(cl) - {"name", *_ITEMS}
        if unknown:
            raise InventoryError(f"{source}: {w}: unknown key(s) {sorted(unknown)} (known: name, {', '.join(_ITEMS)})")
        name = cl["name"]
        add(Record(kind="cluster", name=name, cluster=name), w)
        for section, kind in _ITEMS.items():
            items = cl.get(section) or []
            if not isinstance(items, list):
                raise InventoryError(f"{source}: {w}.{section}: expected a list")
            for i, item in enumerate(items):
                try:
                    add(_record(kind, item, name, f"{w}.{section}[{i}]"), f"{w}.{section}[{i}]")
                except InventoryError as e:
                    raise InventoryError(f"{source}: {e}") from None
        # What pods and services name but the file does not list (namespaces, nodes, workloads)
        # is listed too: a reload then deletes a workload whose last pod left the file.
        for rec in [r for r in out if r.cluster == name and r.kind in ("pod", "service")]:
            implied = [Record(kind="namespace", name=rec.namespace, cluster=name)]
            if rec.kind == "pod" and rec.node:
                implied.append(Record(kind="node", name=rec.node, cluster=name))
            if rec.kind == "pod" and rec.group_name:
                implied.append(Record(kind="pod_group", name=rec.group_name, cluster=name,
                                      namespace=rec.namespace, group_kind=rec.group_kind))
            for imp in implied:
                if (imp.kind, name, imp.key) not in seen:
                    add(imp, w)
    hosts = data.get("hosts") or []
    if not isinstance(hosts, list):
        raise InventoryError(f"{source}: hosts: expected a list")
    for i, item in enumerate(hosts):
        try:
            add(_record("host", item, "", f"hosts[{i}]"), f"hosts[{i}]")
        except InventoryError as e:
            raise InventoryError(f"{source}: {e}") from None
    out.sort(key=lambda r: KINDS.index(r.kind))
    return out


def read(path: str | Path) -> list[Record]:
    p = Path(path)
    try:
        text = p.read_text()
    except OSError as e:
        raise InventoryError(f"cannot read inventory file {p}: {e.strerror}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise InventoryError(f"{p}: not valid YAML: {e}") from None
    return parse(data, str(p))


def load_into(sink: Sink, records: list[Record], when: float) -> None:
    """Send a file's records to the store as full listings, so items the file no longer lists
    (per kind and cluster it names) are marked deleted."""
    groups: dict[tuple[str, str], list[Record]] = {}
    for rec in records:
        groups.setdefault((rec.kind, rec.cluster), []).append(rec)
    for cl in {r.cluster for r in records if r.kind == "cluster"}:      # kinds a cluster lists none of
        for kind in ("node", "namespace", "pod_group", "service", "pod"):
            groups.setdefault((kind, cl), [])
    groups.setdefault(("host", ""), [])                                 # the file owns the hosts
    for (kind, cluster), recs in sorted(groups.items(), key=lambda kv: KINDS.index(kv[0][0])):
        sink.replace(kind, cluster, recs, when)
