"""Grafana Node Graph from the flow maps: ``GET|POST /v1/grafana/topology`` → ``{"nodes", "edges"}``.

One ClickHouse query over ``flow_metrics.network_map`` or ``application_map`` groups the rows by
the client's and the server's resource (pod, Service, workload, IP, …) — names come from the
``flow_tag`` dictionaries — and the answer is reshaped into Grafana's Node Graph fields (nodes: id,
title, subTitle, mainStat, secondaryStat, arc__*, color; edges: id, source, target, mainStat,
secondaryStat, detail__*). A flow seen at several observation points (client NIC and server NIC)
is counted once per edge: the observation point that saw the most traffic.

Every part of the SQL comes from the tables below; request values only travel as ClickHouse
query parameters (``{name:Type}``), so nothing a caller sends is ever spliced into the text.
"""

from __future__ import annotations

import ipaddress
import time
from collections.abc import Mapping, Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field

from flowscope.enums import CLOSE_TYPE_STATUS, IP_PROTOCOLS, L7_PROTOCOLS, OBSERVATION_POINTS, Status

TABLES = ("network_map", "application_map")
PRECISIONS = ("1s", "1m")
DEFAULT_RANGE_S = 3600
MAX_RANGE_S = 31 * 86400
DEFAULT_LIMIT = 1000
MAX_LIMIT = 10_000
SIDES = ("_0", "_1")      # client, server

_IP = "if(is_ipv4, IPv4NumToString(ip4{s}), IPv6NumToString(ip6{s}))"


@dataclass(frozen=True)
class Resource:
    """How one resource level reads from a map row. Templates: ``{s}`` is the side suffix; ``{k}``
    the grouped key, ``{sub}`` the grouped subtitle column (both aliases of the inner query)."""

    key: str                     # the grouping expression (one per end)
    name: str                    # display name, from {k}
    ident: str = "toString({k})"  # node id suffix, from {k}
    present: str | None = None   # the end has this resource (DeepFlow's not-null filter)
    sub_column: str | None = None  # a column whose any() gives the subtitle
    subtitle: str = "''"         # from {sub}


def _named(id_col: str, dictionary: str, label: str, sub_column: str | None = None,
           subtitle: str = "''") -> Resource:
    return Resource(key=f"{id_col}{{s}}", present=f"{id_col}{{s}} != 0",
                    name=f"dictGetOrDefault('flow_tag.{dictionary}', 'name', toUInt64({{k}}), "
                         f"concat('{label} ', toString({{k}})))",
                    sub_column=sub_column, subtitle=subtitle)


def _auto(kind: str) -> Resource:
    """auto_instance / auto_service: the resource, or the IP when there is none (types 0, 255)."""
    typ, rid = f"auto_{kind}_type{{s}}", f"auto_{kind}_id{{s}}"
    return Resource(
        key=f"(toUInt64({typ}), if({typ} IN (0, 255), {_IP}, toString({rid})))",
        name=("if(tupleElement({k}, 1) IN (0, 255), tupleElement({k}, 2), dictGetOrDefault("
              "'flow_tag.device_map', 'name', (tupleElement({k}, 1), toUInt64OrZero(tupleElement({k}, 2))), "
              "tupleElement({k}, 2)))"),
        ident="concat(toString(tupleElement({k}, 1)), '-', tupleElement({k}, 2))",
        subtitle=f"dictGetOrDefault('flow_tag.int_enum_map', 'name_en', ('auto_{kind}_type', "
                 "tupleElement({k}, 1)), '')")


_NS = "dictGetOrDefault('flow_tag.pod_ns_map', 'name', toUInt64({sub}), '')"
_CLUSTER = "dictGetOrDefault('flow_tag.pod_cluster_map', 'name', toUInt64({sub}), '')"

# group= → how nodes are made. Subtitles: the namespace of namespaced resources, else the cluster.
RESOURCES: dict[str, Resource] = {
    "pod": _named("pod_id", "pod_map", "pod", "pod_ns_id{s}", _NS),
    "pod_service": _named("service_id", "pod_service_map", "service", "pod_ns_id{s}", _NS),
    "pod_group": _named("pod_group_id", "pod_group_map", "workload", "pod_ns_id{s}", _NS),
    "pod_ns": _named("pod_ns_id", "pod_ns_map", "namespace", "pod_cluster_id{s}", _CLUSTER),
    "pod_node": _named("pod_node_id", "pod_node_map", "node", "pod_cluster_id{s}", _CLUSTER),
    "pod_cluster": _named("pod_cluster_id", "pod_cluster_map", "cluster"),
    "region": _named("region_id", "region_map", "region"),
    "az": _named("az_id", "az_map", "az"),
    "subnet": _named("subnet_id", "subnet_map", "subnet"),
    "vpc": Resource(key="l3_epc_id{s}", present="l3_epc_id{s} NOT IN (0, -2)",
                    name="dictGetOrDefault('flow_tag.l3_epc_map', 'name', toUInt64({k}), concat('vpc ', "
                         "toString({k})))"),
    "chost": Resource(key="l3_device_id{s}", present="l3_device_type{s} = 1 AND l3_device_id{s} != 0",
                      name="dictGetOrDefault('flow_tag.chost_map', 'name', toUInt64({k}), concat('chost ', "
                           "toString({k})))"),
    "host": Resource(key="host_id{s}", present="host_id{s} != 0",
                     name="dictGetOrDefault('flow_tag.device_map', 'name', (toUInt64(6), toUInt64({k})), "
                          "concat('host ', toString({k})))"),
    "ip": Resource(key=_IP, name="{k}", ident="{k}"),
    "auto_instance": _auto("instance"),
    "auto_service": _auto("service"),
}


@dataclass(frozen=True)
class NameFilter:
    """``<tag>=name[,name…]``: ends whose resource has one of these names (names → ids in flow_tag)."""

    condition: str    # with {s} and {p} (the parameter placeholder)


def _by_name(id_col: str, dictionary: str, extra: str = "") -> NameFilter:
    return NameFilter(f"toUInt64({id_col}{{s}}) IN (SELECT id FROM flow_tag.{dictionary} WHERE name IN {{p}}){extra}")


NAME_FILTERS: dict[str, NameFilter] = {
    "pod_cluster": _by_name("pod_cluster_id", "pod_cluster_map"),
    "pod_ns": _by_name("pod_ns_id", "pod_ns_map"),
    "pod_group": _by_name("pod_group_id", "pod_group_map"),
    "pod": _by_name("pod_id", "pod_map"),
    "pod_service": _by_name("service_id", "pod_service_map"),
    "pod_node": _by_name("pod_node_id", "pod_node_map"),
    "region": _by_name("region_id", "region_map"),
    "az": _by_name("az_id", "az_map"),
    "subnet": _by_name("subnet_id", "subnet_map"),
    "vpc": _by_name("l3_epc_id", "l3_epc_map"),
    "chost": _by_name("l3_device_id", "chost_map", " AND l3_device_type{s} = 1"),
}


@dataclass(frozen=True)
class Measures:
    """The meters of one table: the edge's rate, latency and error share (SQL over its rows)."""

    volume: str           # summed; per second it is mainStat
    volume_name: str      # what mainStat counts, for detail__ and the OpenAPI text
    latency_sum: str
    latency_count: str
    errors: str
    total: str            # errors / total is the error ratio


# Closes that count as failures on an L4 edge: the close types whose status is a client or server error.
_FAILED_CLOSES = " + ".join(sorted({c for s, c in CLOSE_TYPE_STATUS.values()
                                     if c and s in (Status.CLIENT_ERROR, Status.SERVER_ERROR)}))
MEASURES: dict[str, Measures] = {
    "network_map": Measures(volume="byte_tx + byte_rx", volume_name="bytes", latency_sum="rtt_sum",
                            latency_count="rtt_count", errors=_FAILED_CLOSES, total="closed_flow"),
    "application_map": Measures(volume="request", volume_name="requests", latency_sum="rrt_sum",
                                latency_count="rrt_count", errors="error + timeout", total="request"),
}

OTHER_FILTERS = ("ip", "observation_point", "protocol", "server_port", "l7_protocol")
CONTROL = ("table", "group", "from", "to", "data_precision", "limit", "secondary", "debug")
SECONDARY = ("latency", "errors")


class TopologyError(ValueError):
    """A parameter is wrong; the message names it (HTTP 400)."""


@dataclass
class TopologyRequest:
    table: str = "network_map"
    group: str = "pod"
    start: int = 0
    end: int = 0
    precision: str = "1m"
    limit: int = DEFAULT_LIMIT
    secondary: str = "latency"
    conditions: list[str] = field(default_factory=list)
    parameters: dict[str, object] = field(default_factory=dict)

    @property
    def seconds(self) -> int:
        return max(self.end - self.start, 1)


def _values(params: Mapping[str, Sequence[str]], key: str) -> list[str]:
    """Repeated keys and comma-separated lists (Grafana's ${var:csv}) both give several values."""
    return [v.strip() for raw in params.get(key, ()) for v in raw.split(",") if v.strip()]


def _choice(params: Mapping[str, Sequence[str]], name: str, default: str, allowed) -> str:
    """A parameter that takes one of ``allowed``'s values."""
    value = _one(params, name, default)
    if value not in allowed:
        raise TopologyError(f"{name}: one of {', '.join(allowed)}, got {value!r}")
    return value


def _one(params: Mapping[str, Sequence[str]], key: str, default: str) -> str:
    got = params.get(key) or ()
    if len(got) > 1:
        raise TopologyError(f"{key}: one value expected, got {len(got)}")
    return got[0].strip() if got and got[0].strip() else default


def _epoch(value: str, key: str) -> int:
    try:
        n = int(float(value))
    except ValueError:
        raise TopologyError(f"{key}: epoch seconds expected, got {value!r}") from None
    # Grafana's ${__from} is in milliseconds, ${__from:date:seconds} in seconds: accept both.
    return n // 1000 if n > 100_000_000_000 else n


def parse(params: Mapping[str, Sequence[str]], now: float | None = None) -> TopologyRequest:
    """Validate the request's parameters (query string and form, each a list of values)."""
    unknown = sorted(set(params) - set(CONTROL) - set(OTHER_FILTERS)
                     - {f"{n}{s}" for n in (*NAME_FILTERS, "ip") for s in ("", *SIDES)})
    if unknown:
        raise TopologyError(f"unknown parameter {unknown[0]!r} (known: {', '.join(CONTROL)}, filters "
                            f"{', '.join(NAME_FILTERS)}, ip[_0|_1], {', '.join(OTHER_FILTERS[1:])})")
    req = TopologyRequest()
    req.table = _choice(params, "table", req.table, TABLES)
    req.group = _choice(params, "group", req.group, RESOURCES)
    req.precision = _choice(params, "data_precision", req.precision, PRECISIONS)
    req.secondary = _choice(params, "secondary", req.secondary, SECONDARY)
    limit = _one(params, "limit", str(DEFAULT_LIMIT))
    if not limit.isdigit() or not 1 <= int(limit) <= MAX_LIMIT:
        raise TopologyError(f"limit: an integer from 1 to {MAX_LIMIT}, got {limit!r}")
    req.limit = int(limit)
    now_s = int(time.time() if now is None else now)
    req.end = _epoch(_one(params, "to", str(now_s)), "to")
    req.start = _epoch(_one(params, "from", str(req.end - DEFAULT_RANGE_S)), "from")
    if req.start > req.end:
        raise TopologyError(f"from ({req.start}) is after to ({req.end})")
    if req.end - req.start > MAX_RANGE_S:
        raise TopologyError(f"the time range is {req.end - req.start} s; the limit is {MAX_RANGE_S} s (31 days)")
    req.parameters.update(t0=req.start, t1=req.end, limit=req.limit)
    _add_filters(req, params)
    return req


def _add_filters(req: TopologyRequest, params: Mapping[str, Sequence[str]]) -> None:
    def placeholder(kind: str, values: list) -> str:
        name = f"f{len(req.parameters)}"
        req.parameters[name] = values
        return f"{{{name}:Array({kind})}}"

    for tag, flt in NAME_FILTERS.items():
        for suffix in ("", *SIDES):
            names = _values(params, tag + suffix)
            if names:
                p = placeholder("String", names)
                sides = [flt.condition.format(s=s, p=p) for s in (SIDES if not suffix else (suffix,))]
                req.conditions.append("(" + " OR ".join(sides) + ")")
    for suffix in ("", *SIDES):
        ips = _values(params, "ip" + suffix)
        if ips:
            try:
                ips = [str(ipaddress.ip_address(v)) for v in ips]
            except ValueError as e:
                raise TopologyError(f"ip{suffix}: {e}") from None
            p = placeholder("String", ips)
            req.conditions.append("(" + " OR ".join(f"{_IP.format(s=s)} IN {p}"
                                                    for s in (SIDES if not suffix else (suffix,))) + ")")
    points = _values(params, "observation_point")
    if points:
        bad = [v for v in points if v not in OBSERVATION_POINTS]
        if bad:
            raise TopologyError(f"observation_point: unknown {bad[0]!r} (known: {', '.join(OBSERVATION_POINTS)})")
        req.conditions.append(f"observation_point IN {placeholder('String', points)}")
    for key, kind, names in (("protocol", "UInt8", IP_PROTOCOLS), ("server_port", "UInt16", None),
                             ("l7_protocol", "UInt8", L7_PROTOCOLS)):
        values = _values(params, key)
        if not values:
            continue
        if key == "l7_protocol" and req.table != "application_map":
            raise TopologyError("l7_protocol filters application_map only")
        req.conditions.append(f"{key} IN {placeholder(kind, [_number(key, v, names) for v in values])}")


def _number(key: str, value: str, names: dict[int, str] | None) -> int:
    if value.isdigit():
        n = int(value)
        if n < (1 << (16 if key == "server_port" else 8)):
            return n
    by_name = {v.lower(): k for k, v in (names or {}).items()}
    if value.lower() in by_name:
        return by_name[value.lower()]
    raise TopologyError(f"{key}: a number{' or a name' if names else ''} expected, got {value!r}")


def build_sql(req: TopologyRequest) -> str:
    """The one ClickHouse query of a request (parameters in ``req.parameters``)."""
    res, m = RESOURCES[req.group], MEASURES[req.table]
    inner_cols, outer_cols, where = [], [], ["time >= toDateTime({t0:UInt32})", "time <= toDateTime({t1:UInt32})"]
    for end, s in zip(("src", "dst"), SIDES, strict=True):
        k, sub = f"{end}_key", f"{end}_sub"
        inner_cols.append(f"{res.key.format(s=s)} AS {k}")
        if res.sub_column:
            inner_cols.append(f"any({res.sub_column.format(s=s)}) AS {sub}")
        if res.present:
            where.append(res.present.format(s=s))
        outer_cols += [f"{res.ident.format(k=k)} AS {end}_id", f"{res.name.format(k=k)} AS {end}_name",
                       f"{res.subtitle.format(k=k, sub=f'any({sub})')} AS {end}_subtitle"]
    where += req.conditions
    table = f"flow_metrics.`{req.table}.{req.precision}`"
    return (
        f"SELECT {', '.join(outer_cols)}, "
        "argMax((observation_point, volume, latency_sum, latency_count, errors, total), (volume, observation_point)) "
        "AS best "
        f"FROM (SELECT {', '.join(inner_cols)}, observation_point, sum({m.volume}) AS volume, "
        f"sum({m.latency_sum}) AS latency_sum, sum({m.latency_count}) AS latency_count, "
        f"sum({m.errors}) AS errors, sum({m.total}) AS total "
        f"FROM {table} WHERE {' AND '.join(where)} "
        "GROUP BY src_key, dst_key, observation_point) "
        "GROUP BY src_key, dst_key ORDER BY max(volume) DESC, src_id, dst_id LIMIT {limit:UInt32}"
    )


def _ratio(errors: float, total: float) -> float:
    return min(errors / total, 1.0) if total else 0.0


def _color(error_ratio: float) -> str:
    return "green" if error_ratio == 0 else "orange" if error_ratio < 0.05 else "red"


def shape(req: TopologyRequest, rows: Sequence[Sequence]) -> dict:
    """ClickHouse rows → Grafana Node Graph nodes and edges.

    Edges: mainStat = volume per second (bytes/s on network_map, requests/s on application_map);
    secondaryStat = average latency in ms (rtt / rrt) or, with secondary=errors, the error ratio.
    Nodes: mainStat = the volume per second of every edge touching the node; secondaryStat = the
    latency of its answers (as server; as client when it never answered) or its error ratio;
    arc__errors / arc__ok = its share of failed flows or requests (summing to 1)."""
    m = MEASURES[req.table]
    nodes: dict[str, dict] = {}
    edges = []
    for src_id, src_name, src_sub, dst_id, dst_name, dst_sub, best in rows:
        point, volume, lat_sum, lat_count, errors, total = best
        source, target = f"{req.group}:{src_id}", f"{req.group}:{dst_id}"
        for nid, title, sub in ((source, src_name, src_sub), (target, dst_name, dst_sub)):
            nodes.setdefault(nid, {"id": nid, "title": title, "subTitle": sub or req.group, "volume": 0.0,
                                   "server": [0.0, 0], "client": [0.0, 0], "errors": 0, "total": 0})
        ratio = _ratio(errors, total)
        latency_ms = lat_sum / lat_count / 1000 if lat_count else 0.0
        edges.append({
            "id": f"{source}->{target}", "source": source, "target": target,
            "mainStat": round(volume / req.seconds, 3),
            "secondaryStat": round(latency_ms, 3) if req.secondary == "latency" else round(ratio, 4),
            f"detail__{m.volume_name}": volume, "detail__latency_ms": round(latency_ms, 3),
            "detail__errors": errors, "detail__error_ratio": round(ratio, 4),
            "detail__observation_point": point,
        })
        for nid, role in ((source, "client"), (target, "server")):
            n = nodes[nid]
            n[role][0] += lat_sum
            n[role][1] += lat_count
            if source == target and role == "server":
                continue       # a resource talking to itself: count its edge once
            n["volume"] += volume
            n["errors"] += errors
            n["total"] += total
    out = []
    for nid in sorted(nodes):
        n = nodes[nid]
        lat_sum, lat_count = n["server"] if n["server"][1] else n["client"]
        ratio = _ratio(n["errors"], n["total"])
        out.append({
            "id": nid, "title": n["title"], "subTitle": n["subTitle"],
            "mainStat": round(n["volume"] / req.seconds, 3),
            "secondaryStat": (round(lat_sum / lat_count / 1000, 3) if lat_count else 0.0)
            if req.secondary == "latency" else round(ratio, 4),
            "arc__errors": round(ratio, 4), "arc__ok": round(1 - round(ratio, 4), 4),
            "color": _color(ratio),
            "detail__errors": n["errors"], "detail__error_ratio": round(ratio, 4),
        })
    return {"nodes": out, "edges": edges}


def run(engine, req: TopologyRequest, sql: str) -> list:
    """Execute ``build_sql(req)`` on the engine's client with its read-only limits, under its lock
    (one chDB session runs one query at a time)."""
    with getattr(engine, "_lock", None) or nullcontext():
        return engine.client.query(sql, parameters=req.parameters, settings=engine.limits.settings()).result_rows
