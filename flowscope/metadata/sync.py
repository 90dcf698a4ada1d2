"""Metadata store → ClickHouse ``flow_tag`` tables, so the datasource resolves ids at query time.

Flow rows store small integer ids; the dictionaries over ``flow_tag.*`` turn them into names,
labels and types (reference §6.4). The syncer writes one row per resource (deleted ones included:
old flows must keep resolving), only rows whose content changed since its last write (the tables
are ReplacingMergeTree, so a newer row replaces an older one), then reloads the dictionaries it
touched so names apply at once instead of within their 30 s lifetime.
"""

from __future__ import annotations

import contextlib
import json
import logging
import threading
import time
import weakref
from collections import defaultdict
from collections.abc import Callable, Iterable
from typing import Any, Protocol

from clickhouse_connect.driver.client import Client

from flowscope.metadata.model import GROUP_TYPES, StoredRecord

log = logging.getLogger(__name__)

DATABASE = "flow_tag"
VPC_ID = 1                 # every inventory IP lives in one VPC for now (single-VPC K8s mode, §6.2)
VPC_NAME = "default"

# Device types of device_map (auto_instance / auto_service types, §4/§6.3).
DEVICE_CHOST, DEVICE_POD, DEVICE_SERVICE, DEVICE_NODE, DEVICE_CLUSTER = 1, 10, 11, 14, 103
# Pseudo rows: the auto types 0 (Internet) and 255 (IP), and DeepFlow's device_map pseudo types.
PSEUDO_DEVICES = ((0, 0, "Internet"), (255, 0, "IP"), (63999, 0, "Internet"), (64000, 0, "IP"))

# Columns written per table, key columns first (team_id and _version keep their defaults).
COLUMNS: dict[str, tuple[str, ...]] = {
    "pod_cluster": ("id", "name", "icon_id"),
    "pod_node": ("id", "name", "pod_cluster_id"),
    "pod_ns": ("id", "name", "pod_cluster_id"),
    "pod_group": ("id", "name", "pod_group_type", "pod_cluster_id", "pod_ns_id"),
    "pod_service": ("id", "name", "pod_cluster_id", "pod_ns_id"),
    "pod": ("id", "name", "pod_cluster_id", "pod_ns_id", "pod_node_id", "pod_service_id", "pod_group_id"),
    "chost": ("id", "name", "host_id", "l3_epc_id", "hostname", "ip", "subnet_id"),
    "l3_epc": ("id", "name", "uid"),
    "device": ("devicetype", "deviceid", "name", "uid", "hostname", "ip", "icon_id"),
    "pod_k8s_label": ("id", "key", "value", "l3_epc_id", "pod_ns_id"),
    "pod_k8s_labels": ("id", "labels", "l3_epc_id", "pod_ns_id"),
    "pod_service_k8s_label": ("id", "key", "value", "l3_epc_id", "pod_ns_id"),
    "pod_service_k8s_labels": ("id", "labels", "l3_epc_id", "pod_ns_id"),
    "pod_k8s_annotation": ("id", "key", "value", "l3_epc_id", "pod_ns_id"),
    "pod_k8s_annotations": ("id", "annotations", "l3_epc_id", "pod_ns_id"),
    "pod_service_k8s_annotation": ("id", "key", "value", "l3_epc_id", "pod_ns_id"),
    "pod_service_k8s_annotations": ("id", "annotations", "l3_epc_id", "pod_ns_id"),
    "ip_resource": ("ip", "subnet_id", "region_id", "region_name", "az_id", "az_name", "host_id", "host_name",
                    "chost_id", "chost_name", "vpc_id", "vpc_name", "pod_cluster_id", "pod_cluster_name",
                    "pod_ns_id", "pod_ns_name", "pod_node_id", "pod_node_name", "pod_service_id",
                    "pod_service_name", "pod_group_id", "pod_group_name", "pod_id", "pod_name", "uid"),
}
KEY_WIDTH = {"device": 2, "pod_k8s_label": 2, "pod_service_k8s_label": 2, "ip_resource": 2,
             "pod_k8s_annotation": 2, "pod_service_k8s_annotation": 2}
# Per-key label tables: a label removed from a resource gets a row with value "" (what a missing key
# resolves to), else the dictionary would keep the old value. (owner kind, table)
LABEL_TABLES = {"pod_k8s_label": "pod", "pod_service_k8s_label": "service",
                "pod_k8s_annotation": "pod", "pod_service_k8s_annotation": "service"}

Row = tuple[Any, ...]


class InventorySource(Protocol):
    """What the syncer reads (``MetadataStore`` is one)."""

    @property
    def revision(self) -> int: ...

    def records(self, kinds: Iterable[str] | None = None, include_deleted: bool = True) -> list[StoredRecord]: ...


# ---------------------------------------------------------------------------------------------------
# Rows from records (pure)


def _labels_json(labels: dict[str, str]) -> str:
    return json.dumps(labels, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def _first_ip(s: StoredRecord) -> str:
    return s.record.ips[0] if s.record.ips else ""


def pod_services(records: list[StoredRecord]) -> dict[int, int]:
    """pod id → the id of the first Service selecting it: a live pod by its IP among the Service's
    endpoints, else (and for deleted pods, whose IP may serve a successor) by selector ⊆ labels in
    the same namespace. Live Services come first, then the lowest id."""
    services = sorted((s for s in records if s.record.kind == "service"),
                      key=lambda s: (s.record.deleted is not None, s.id))
    by_ip: dict[tuple[str, str], int] = {}
    by_ns: dict[tuple[str, str], list[StoredRecord]] = defaultdict(list)
    for s in services:
        for ep in s.record.endpoints:
            by_ip.setdefault((s.record.cluster, ep.ip), s.id)
        if s.record.selector:
            by_ns[(s.record.cluster, s.record.namespace)].append(s)
    result = {}
    for p in records:
        pod = p.record
        if pod.kind != "pod":
            continue
        found = 0
        if pod.deleted is None:
            found = next((by_ip[(pod.cluster, ip)] for ip in pod.ips if (pod.cluster, ip) in by_ip), 0)
        if not found:
            found = next((s.id for s in by_ns[(pod.cluster, pod.namespace)]
                          if all(pod.labels.get(k) == v for k, v in s.record.selector.items())), 0)
        if found:
            result[p.id] = found
    return result


def build_rows(records: list[StoredRecord]) -> dict[str, list[Row]]:
    """Every flow_tag row the inventory implies, per table (columns as in COLUMNS)."""
    by_kind: dict[str, dict[int, StoredRecord]] = defaultdict(dict)
    for s in records:
        by_kind[s.record.kind][s.id] = s

    def name(kind: str, rid: int) -> str:
        s = by_kind[kind].get(rid)
        return s.record.name if s else ""

    services_of = pod_services(records)
    rows: dict[str, list[Row]] = {t: [] for t in COLUMNS}
    rows["l3_epc"].append((VPC_ID, VPC_NAME, ""))
    rows["device"] += [(t, i, n, "", "", "", 0) for t, i, n in PSEUDO_DEVICES]
    ip_owners: dict[str, list[tuple[tuple[Any, ...], Row]]] = defaultdict(list)

    def own(ip: str, s: StoredRecord, rank: int, **cols: Any) -> None:
        """Offer ``ip`` to ``s``; the winner per IP: alive first, then kind rank, then the newest."""
        values = dict.fromkeys(COLUMNS["ip_resource"], 0) | {
            c: "" for c in COLUMNS["ip_resource"] if c.endswith("_name") or c in ("ip", "uid")}
        values |= {"ip": ip, "vpc_id": VPC_ID, "vpc_name": VPC_NAME, "uid": s.record.uid}
        if s.cluster_id:
            values |= {"pod_cluster_id": s.cluster_id, "pod_cluster_name": name("cluster", s.cluster_id)}
        values |= cols
        order = (s.record.deleted is None, rank, s.record.created, s.id)
        ip_owners[ip].append((order, tuple(values[c] for c in COLUMNS["ip_resource"])))

    for s in records:
        r = s.record
        ns_name = name("namespace", s.namespace_id)
        if r.kind == "cluster":
            rows["pod_cluster"].append((s.id, r.name, 0))
            rows["device"].append((DEVICE_CLUSTER, s.id, r.name, r.uid, "", "", 0))
        elif r.kind == "node":
            rows["pod_node"].append((s.id, r.name, s.cluster_id))
            rows["device"].append((DEVICE_NODE, s.id, r.name, r.uid, r.name, _first_ip(s), 0))
            for ip in r.ips:
                own(ip, s, 2, pod_node_id=s.id, pod_node_name=r.name)
        elif r.kind == "namespace":
            rows["pod_ns"].append((s.id, r.name, s.cluster_id))
        elif r.kind == "pod_group":
            group_type = GROUP_TYPES.get(r.group_kind, 0)
            rows["pod_group"].append((s.id, r.name, group_type, s.cluster_id, s.namespace_id))
            if group_type:
                rows["device"].append((group_type, s.id, r.name, r.uid, "", "", 0))
        elif r.kind == "service":
            rows["pod_service"].append((s.id, r.name, s.cluster_id, s.namespace_id))
            rows["device"].append((DEVICE_SERVICE, s.id, r.name, r.uid, "", _first_ip(s), 0))
            rows["pod_service_k8s_label"] += [(s.id, k, v, VPC_ID, s.namespace_id) for k, v in r.labels.items()]
            rows["pod_service_k8s_labels"].append((s.id, _labels_json(r.labels), VPC_ID, s.namespace_id))
            rows["pod_service_k8s_annotation"] += [(s.id, k, v, VPC_ID, s.namespace_id)
                                                   for k, v in r.annotations.items()]
            rows["pod_service_k8s_annotations"].append((s.id, _labels_json(r.annotations), VPC_ID, s.namespace_id))
            for ip in r.ips:
                own(ip, s, 3, pod_ns_id=s.namespace_id, pod_ns_name=ns_name,
                    pod_service_id=s.id, pod_service_name=r.name)
        elif r.kind == "pod":
            service_id = services_of.get(s.id, 0)
            rows["pod"].append((s.id, r.name, s.cluster_id, s.namespace_id, s.node_id, service_id, s.group_id))
            rows["device"].append((DEVICE_POD, s.id, r.name, r.uid, "", _first_ip(s), 0))
            rows["pod_k8s_label"] += [(s.id, k, v, VPC_ID, s.namespace_id) for k, v in r.labels.items()]
            rows["pod_k8s_labels"].append((s.id, _labels_json(r.labels), VPC_ID, s.namespace_id))
            rows["pod_k8s_annotation"] += [(s.id, k, v, VPC_ID, s.namespace_id) for k, v in r.annotations.items()]
            rows["pod_k8s_annotations"].append((s.id, _labels_json(r.annotations), VPC_ID, s.namespace_id))
            if not r.host_network:  # a host-network pod's IP is its node's
                for ip in r.ips:
                    own(ip, s, 4, pod_ns_id=s.namespace_id, pod_ns_name=ns_name,
                        pod_node_id=s.node_id, pod_node_name=name("node", s.node_id),
                        pod_service_id=service_id, pod_service_name=name("service", service_id),
                        pod_group_id=s.group_id, pod_group_name=name("pod_group", s.group_id),
                        pod_id=s.id, pod_name=r.name)
        elif r.kind == "host":
            rows["chost"].append((s.id, r.name, 0, VPC_ID, r.name, _first_ip(s), 0))
            rows["device"].append((DEVICE_CHOST, s.id, r.name, r.uid, r.name, _first_ip(s), 0))
            for ip in r.ips:
                own(ip, s, 1, chost_id=s.id, chost_name=r.name)

    rows["ip_resource"] = [max(owners, key=lambda o: o[0])[1] for owners in ip_owners.values()]
    return rows


# ---------------------------------------------------------------------------------------------------
# Writing


class SyncState:
    """The rows last written per table and key: what makes a sync write only changes."""

    def __init__(self) -> None:
        self.rows: dict[str, dict[Row, Row]] = {}

    def clear(self) -> None:
        self.rows.clear()


# One state per client when the caller keeps none: a new client (a reconnect, another ClickHouse)
# starts empty and so writes everything once.
_STATES: weakref.WeakKeyDictionary[Any, SyncState] = weakref.WeakKeyDictionary()


def _key(table: str, row: Row) -> Row:
    return row[:KEY_WIDTH.get(table, 1)]


def _label_keys_in_clickhouse(client: Client, table: str) -> set[Row]:
    """(id, key) of non-empty labels already in ClickHouse, for a state that starts empty."""
    result = client.query(f"SELECT id, key FROM {DATABASE}.{table} FINAL WHERE value != ''")
    return {(int(i), k) for i, k in result.result_rows}


def _tombstones(client: Client, table: str, rows: list[Row], written: dict[Row, Row] | None,
                owners: dict[int, StoredRecord]) -> list[Row]:
    """Rows with value "" for labels that a resource still in the store no longer has (a purged
    resource keeps its rows, like its name). A state that never wrote the table asks ClickHouse."""
    present = {_key(table, r) for r in rows}
    if written is not None:
        before = {key for key, row in written.items() if row[2] != ""}
    else:
        before = _label_keys_in_clickhouse(client, table)
    return [(rid, key, "", VPC_ID, owners[rid].namespace_id)
            for rid, key in sorted(before - present) if rid in owners]


def sync_flow_tag(store: InventorySource, client: Client, state: SyncState | None = None) -> dict[str, int]:
    """Write what changed in the inventory since the last sync into flow_tag; returns rows written
    per table (0 for unchanged ones). The first sync with a state (by default: per client) writes all."""
    if state is None:
        state = _STATES.setdefault(client, SyncState())
    records = store.records()
    all_rows = build_rows(records)
    by_kind: dict[str, dict[int, StoredRecord]] = defaultdict(dict)
    for s in records:
        by_kind[s.record.kind][s.id] = s
    for table, kind in LABEL_TABLES.items():
        all_rows[table] += _tombstones(client, table, all_rows[table], state.rows.get(table), by_kind[kind])

    written: dict[str, int] = {}
    for table, rows in all_rows.items():
        old = state.rows.setdefault(table, {})
        changed = {}
        for row in rows:
            key = _key(table, row)
            if old.get(key) != row:
                changed[key] = row
        if changed:
            columns = list(zip(*changed.values(), strict=True))
            client.insert(table, [list(c) for c in columns], column_names=list(COLUMNS[table]),
                          database=DATABASE, column_oriented=True)
            old.update(changed)
        written[table] = len(changed)
    for table, n in written.items():
        if n:
            client.command(f"SYSTEM RELOAD DICTIONARY {DATABASE}.{table}_map")
    return written


# ---------------------------------------------------------------------------------------------------
# Background syncer


class FlowTagSyncer:
    """Keeps flow_tag in step with the store: syncs when ``store.revision`` moves (checked every
    ``poll_s``) and at least every ``interval_s``; every ``full_s`` it rewrites everything (in case
    the tables were emptied behind its back). Errors of either side are logged, counted and retried
    on the next tick.

    ``client`` is a clickhouse-connect Client or a factory returning one; a factory's client is
    closed and re-made after an error. The thread runs from ``start()`` (or ``autostart=True``).
    """

    def __init__(self, store: InventorySource, client: Client | Callable[[], Client], interval_s: float = 60,
                 poll_s: float = 2, full_s: float = 3600, autostart: bool = False) -> None:
        self.store = store
        self.interval_s = interval_s
        self.poll_s = poll_s
        self.full_s = full_s
        if isinstance(client, Client):
            self._client: Client | None = client
            self._factory: Callable[[], Client] | None = None
        else:
            self._client, self._factory = None, client
        self.state = SyncState()
        self.stats: dict[str, float] = {"syncs": 0, "rows": 0, "errors": 0, "last_ok": 0.0}
        self.last_error = ""
        self._synced_revision: int | None = None
        self._last_full = 0.0
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="flow-tag-syncer", daemon=True)
        if autostart:
            self.start()

    @property
    def sync_errors(self) -> int:
        return int(self.stats["errors"])

    def start(self) -> FlowTagSyncer:
        if not self._thread.is_alive():
            self._thread.start()
        return self

    def stop(self, timeout: float = 10) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread.is_alive():
            self._thread.join(timeout)
        if self._factory is not None and self._client is not None:
            self._close_client()

    def poke(self) -> None:
        """Check the store now instead of at the next poll."""
        self._wake.set()

    def sync_once(self, force: bool = False) -> dict[str, int] | None:
        """One tick: sync if the revision moved, the interval passed or ``force``; None if skipped.
        Raises what the store or ClickHouse raised (the loop counts it)."""
        revision = self.store.revision  # read before the records, so a change in between is not lost
        now = time.time()
        due = now - self.stats["last_ok"] >= self.interval_s
        if not (force or due or revision != self._synced_revision):
            return None
        if now - self._last_full >= self.full_s:
            self.state.clear()
            self._last_full = now
        client = self._get_client()
        written = sync_flow_tag(self.store, client, self.state)
        self._synced_revision = revision
        self.stats["syncs"] += 1
        self.stats["rows"] += sum(written.values())
        self.stats["last_ok"] = time.time()
        return written

    def _get_client(self) -> Client:
        if self._client is None:
            assert self._factory is not None
            self._client = self._factory()
        return self._client

    def _close_client(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            with contextlib.suppress(Exception):
                client.close()

    def _loop(self) -> None:
        failing = False
        while not self._stop.is_set():
            try:
                self.sync_once()
            except Exception as e:  # the store or ClickHouse is down: keep going, retry next tick
                self.stats["errors"] += 1
                self.last_error = str(e)
                # one warning per outage, not one per tick
                log.log(logging.DEBUG if failing else logging.WARNING,
                        "flow_tag sync failed (retrying every %.0f s): %s", self.poll_s, e)
                failing = True
                if self._factory is not None:
                    self._close_client()
            else:
                if failing:
                    log.warning("flow_tag sync works again")
                failing = False
            self._wake.wait(self.poll_s)
            self._wake.clear()
