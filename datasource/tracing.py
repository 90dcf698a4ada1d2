"""Trace assembly over ``flow_log.l7_flow_log`` (DeepFlow's AutoTracing, datamodel §7) and DeepFlow's
``POST /v1/stats/querier/L7FlowTracing``.

A trace is assembled from one request (``_id``) or a ``trace_id`` in three steps:

1. **Search** (iterative, at most ``max_iteration`` rounds and ``max_spans`` rows). Each round asks
   ClickHouse once for the rows sharing a key with what was found so far — ``trace_id``,
   ``x_request_id_0/1``, ``req_tcp_seq`` / ``resp_tcp_seq``, ``syscall_trace_id_request/response``,
   and the connection tuple (server address, port, client port) — within a time window
   around the rows found. A candidate joins only through a *link* to a row already found, checked
   by its rule: TCP sequence numbers within the network delay (+ the host clock offset across agents)
   and with the same protocol, method, endpoint and status; X-Request-ID with overlapping times;
   syscall ids on the same agent (two client process spans only inside a server process span: a
   client thread's next request carries its last response's id too); an OTel span and a packet span
   on the same connection, one covering the other; a system span (eBPF c-p / s-p) and a network or
   system span of the same connection and the same exchange (*connection*: equal 4-tuple, protocol,
   method, endpoint and status, the client side covering the server side within the network delay,
   the closest pairs first). Candidates that match a key but fail the rule are counted as rejected,
   with the reason.
2. **Tree.** Network spans of the same request at several capture points (linked by TCP sequence
   number) and the system spans of its two processes (linked by connection) form a *hop*, ordered
   client side → server side (c-p, c, c-nd, …, s-nd, s, s-p) and nested in that order. Hops and app
   spans are then joined by the strongest rule that applies: an app CLIENT span owns the hop that
   carries its span id (traceparent) or its connection; a hop's last span owns the app SERVER span
   whose parent span id it carries, whose X-Request-ID it saw, or that ran on its connection; a hop
   owns the next hop behind a proxy (X-Request-ID injected or passed through, or the same
   traceparent), the parent covering the child in time; app spans nest by parent span id; a server
   process span (eBPF s-p) owns the hops of the calls its thread made meanwhile (their c-p carries
   its syscall trace id).
   A link that would close a cycle is refused and reported; so is a span two parents claim equally.
3. **Stats.** Self time per span = its duration minus the union of its children's intervals (within
   its own), so concurrent children are not counted twice; each service's share is the sum of its
   spans' self times (DeepFlow's ``services``). Trees not connected to the entry span are kept when
   they share a trace id or overlap it in time (within the clock offset), as DeepFlow prunes.

Every trace carries a ``completeness`` record: spans found, by which rule they were found and by
which rule they hang in the tree, roots, rejected candidates and conflicts — why a trace is incomplete
is visible, not guessed. Queries only carry values as ClickHouse parameters (``{name:Type}``).
"""

from __future__ import annotations

import json
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Iterable
from contextlib import nullcontext
from dataclasses import dataclass, field, replace
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from datasource.worker import WORKERS
from flowscope.enums import L7_PROTOCOLS

L7_TABLE = "flow_log.l7_flow_log"
PACKET, EBPF, OTEL = 0, 3, 4
SIGNAL_SOURCES = {"packet": PACKET, "ebpf": EBPF, "otel": OTEL}
SIGNAL_NAMES = {PACKET: "packet", EBPF: "ebpf", OTEL: "otel"}

# capture position of a network/system span inside its hop: client side first (datamodel §7 step 3)
_SIDE_ORDER = {"c-p": 0, "c": 1, "c-nd": 2, "c-hv": 3, "c-gw-hv": 4, "c-gw": 5, "local": 6, "rest": 6,
               "s-gw": 7, "s-gw-hv": 8, "s-hv": 9, "s-nd": 10, "s": 11, "s-p": 12}

# DeepFlow's relation names for related_ids (l7_flow_tracing.py L7_FLOW_RELATIONSHIP_MAP)
_RELATION = {"tcp_seq": "network", "x_request_id": "xrequestid", "syscall": "syscall", "trace_id": "app",
             "span_id": "app", "tuple": "app", "parent_span_id": "app", "network": "network", "connection": "network"}
_SYSTEM_SIDES = ("c-p", "s-p")

_IP = "if(is_ipv4, IPv4NumToString(ip4_{s}), IPv6NumToString(ip6_{s}))"

# What the search reads of every candidate: the link keys and what the rules compare (kept small:
# each column costs about as much to read as the granule search itself).
LINK_COLUMNS: dict[str, str] = {
    "_id": "_id", "start_time_us": "toUnixTimestamp64Micro(start_time)",
    "end_time_us": "toUnixTimestamp64Micro(end_time)", "signal_source": "signal_source", "type": "type",
    "tap_side": "toString(observation_point)", "vtap_id": "agent_id", "l7_protocol": "l7_protocol",
    "request_type": "toString(request_type)", "endpoint": "endpoint", "response_code": "response_code",
    "trace_id": "trace_id", "x_request_id_0": "x_request_id_0", "x_request_id_1": "x_request_id_1", "req_tcp_seq": "req_tcp_seq",
    "resp_tcp_seq": "resp_tcp_seq", "syscall_trace_id_request": "syscall_trace_id_request",
    "syscall_trace_id_response": "syscall_trace_id_response", "ip_0": _IP.format(s=0), "ip_1": _IP.format(s=1),
    "client_port": "client_port", "server_port": "server_port",
}
# What building the tree needs besides (read with the display columns, for the spans found only).
TREE_COLUMNS: dict[str, str] = {
    "flow_id": "flow_id", "tap_port": "capture_nic", "request_id": "request_id", "span_kind": "span_kind",
    "span_id": "span_id", "parent_span_id": "parent_span_id",
    "syscall_thread_0": "syscall_thread_0", "syscall_thread_1": "syscall_thread_1",
    "syscall_coroutine_0": "syscall_coroutine_0", "syscall_coroutine_1": "syscall_coroutine_1",
    "syscall_cap_seq_0": "syscall_cap_seq_0", "syscall_cap_seq_1": "syscall_cap_seq_1",
    "app_service": "toString(app_service)",
}


def _name(kind: str, s: int) -> str:
    """auto_instance / auto_service name of one side: the resource's, else its IP."""
    ip = _IP.format(s=s)
    return (f"if(auto_{kind}_type_{s} IN (0, 255), {ip}, dictGetOrDefault('flow_tag.device_map', 'name', "
            f"(toUInt64(auto_{kind}_type_{s}), toUInt64(auto_{kind}_id_{s})), {ip}))")


# What the answer shows of the spans kept (one more query, by _id).
DETAIL_COLUMNS: dict[str, str] = {
    "_id": "_id", **{k: v for k, v in TREE_COLUMNS.items()}, "version": "toString(version)", "protocol": "protocol", "request_domain": "request_domain",
    "request_resource": "request_resource", "response_status": "response_status",
    "response_exception": "response_exception", "response_result": "response_result",
    "response_duration": "response_duration", "http_proxy_client": "http_proxy_client",
    "process_id_0": "process_id_0", "process_id_1": "process_id_1",
    "process_kname_0": "toString(process_kname_0)", "process_kname_1": "toString(process_kname_1)",
    "gprocess_id_0": "gprocess_id_0", "gprocess_id_1": "gprocess_id_1", "app_instance": "toString(app_instance)",
    "is_tls": "is_tls", "is_async": "is_async", "biz_protocol": "toString(biz_protocol)",
    "tap_port_name": "dictGetOrDefault('flow_tag.vtap_port_map', 'name', (toUInt64(agent_id), toUInt64(capture_nic)), '')",
    "attribute_names": "arrayMap(x -> toString(x), attribute_names)", "attribute_values": "attribute_values",
    "events": "events",
    **{f"auto_{k}_{x}_{s}": f"auto_{k}_{x}_{s}" for k in ("instance", "service") for x in ("id", "type") for s in (0, 1)},
    **{f"auto_{k}_{s}": _name(k, s) for k in ("instance", "service") for s in (0, 1)},
}


class TraceError(ValueError):
    """A request the tracer cannot answer (bad parameters): HTTP 400."""


@dataclass(frozen=True)
class TraceConfig:
    """Bounds and tolerances (DeepFlow's defaults: 30 iterations, 1000 rows, 50 ms, 10 ms)."""

    max_iteration: int = 30
    max_spans: int = 1000
    network_delay_us: int = 50_000        # the same bytes seen at two capture points: start times this close
    host_clock_offset_us: int = 10_000    # added across agents (hosts with their own clocks)
    window_s: int = 60                    # search this far around the rows found (and no further)
    sources: frozenset[str] = frozenset({"trace_id", "x_request_id", "tcp_seq", "syscall", "tuple"})
    signal_sources: frozenset[int] = frozenset({PACKET, EBPF, OTEL})

    def tolerance(self, a: dict, b: dict) -> int:
        return self.network_delay_us + (self.host_clock_offset_us if a["vtap_id"] != b["vtap_id"] else 0)


@dataclass
class Span:
    """One span: a row (or a request row merged with its orphan response) and its place in the tree."""

    index: int
    row: dict
    ids: list[int]
    found_by: str = "entry"           # the search rule that brought the row in
    found_from: int = 0               # the _id it was linked to
    parent: int = -1
    children: list[int] = field(default_factory=list)
    link: str = ""                    # the rule that made ``parent`` its parent
    hop: int = -1                     # network hop (span set) index
    selftime: int = 0
    warnings: list[str] = field(default_factory=list)

    @property
    def start(self) -> int:
        return self.row["start_time_us"]

    @property
    def end(self) -> int:
        return self.row["end_time_us"]

    @property
    def duration(self) -> int:
        return max(0, self.end - self.start)

    @property
    def side(self) -> str:
        return self.row["tap_side"]

    @property
    def is_app(self) -> bool:
        return self.row["signal_source"] == OTEL


@dataclass
class Trace:
    entry_id: int
    trace_id: str
    spans: list[Span]
    completeness: dict
    services: list[dict]
    queries: list[dict]


# -- storage access ----------------------------------------------------------------------------------
class Store:
    """Read-only queries through a datasource QueryEngine (its client, limits and lock), or a bare
    clickhouse-connect client (the bench)."""

    def __init__(self, engine) -> None:
        self.client = getattr(engine, "client", engine)
        limits = getattr(engine, "limits", None)
        self.settings = limits.settings() if limits is not None else {}
        self.lock = getattr(engine, "_lock", None)
        self.log: list[dict] = []

    def query(self, sql: str, params: dict | None = None) -> list[dict]:
        t0 = time.perf_counter()
        entry = {"IP": "", "Sql": sql, "QueryTime": "", "QueryUUID": str(uuid.uuid4()), "Error": ""}
        self.log.append(entry)
        try:
            with self.lock or nullcontext():
                res = self.client.query(sql, parameters=params or {}, settings=self.settings)
                names = list(res.column_names)
                rows = res.result_rows
        except Exception as e:
            entry["Error"] = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise
        finally:
            entry["QueryTime"] = f"{time.perf_counter() - t0:.9f}s"
        return [dict(zip(names, r, strict=True)) for r in rows]


def _select(columns: dict[str, str]) -> str:
    return ", ".join(f"{expr} AS `{name}`" for name, expr in columns.items())


def _time_filter(lo_s: int, hi_s: int, p: str = "") -> tuple[str, dict]:
    """Rows of seconds lo_s..hi_s; ``p`` prefixes the parameter names (several searches in one query)."""
    return (f"time >= toDateTime({{{p}t0:UInt32}}) AND time <= toDateTime({{{p}t1:UInt32}})",
            {f"{p}t0": max(0, lo_s), f"{p}t1": hi_s})


# The keys a search round asks for: (key of _pending, the columns holding it, parameter, type).
_KEY_COLUMNS = (
    ("trace_id", ("trace_id",), "tids", "String"),
    ("xrid", ("x_request_id_0", "x_request_id_1"), "xr", "String"),
    ("req_seq", ("req_tcp_seq",), "rq", "UInt32"),
    ("resp_seq", ("resp_tcp_seq",), "rs", "UInt32"),
    ("sys", ("syscall_trace_id_request", "syscall_trace_id_response"), "sy", "UInt64"),
)


def _ip1_in(name: str, columns: str, types: str, keys: list[tuple], params: dict) -> str:
    """``(columns, ip_1) IN keys`` (ip_1 last, as text) with the addresses compared as numbers: no
    address is formatted per row. An address with a ':' is an IPv6 row's (IPv4NumToString has none)."""
    ors = []
    for version, col, test in ((4, "ip4_1", "is_ipv4"), (6, "ip6_1", "NOT is_ipv4")):
        vals = [k for k in keys if (":" in k[-1]) == (version == 6)]
        if vals:
            params[f"{name}{version}"] = vals
            ors.append(f"({test} AND ({columns}, {col}) IN {{{name}{version}:Array(Tuple({types}, IPv{version}))}})")
    return f"({' OR '.join(ors)})"


def find_trace_entry(store: Store, trace_id: str, lo_s: int | None, hi_s: int | None) -> dict | None:
    """The earliest row of a trace id (the bloom filter index skips the other granules)."""
    where, params = ("1", {}) if lo_s is None else _time_filter(lo_s, hi_s or 2**32 - 1)
    rows = store.query(f"SELECT {_select(LINK_COLUMNS)} FROM {L7_TABLE} WHERE {where} AND trace_id = {{tid:String}} "
                       "ORDER BY start_time, signal_source LIMIT 1", {**params, "tid": trace_id})
    return rows[0] if rows else None


# -- search ----------------------------------------------------------------------------------------------
@dataclass
class Round:
    """One search round of one trace: ``where`` selects its rows (time window and keys), with
    ``params`` (ClickHouse parameters); ``details``: bring the display columns too."""

    where: str
    params: dict
    details: bool
    limit: int


# The entry's keys the first round asks with: (name in LINK_COLUMNS, expression, ClickHouse type);
# their order numbers the elements of the first round's ``e`` tuple.
_ENTRY_KEYS: list[tuple[str, str, str]] = [
    ("x_request_id_0", "x_request_id_0", "String"), ("x_request_id_1", "x_request_id_1", "String"),
    ("trace_id", "trace_id", "String"), ("signal_source", "signal_source", "UInt16"),
    ("req_tcp_seq", "req_tcp_seq", "UInt32"), ("resp_tcp_seq", "resp_tcp_seq", "UInt32"),
    ("syscall_trace_id_request", "syscall_trace_id_request", "UInt64"),
    ("syscall_trace_id_response", "syscall_trace_id_response", "UInt64"), ("ip_1", _IP.format(s=1), "String"),
    ("server_port", "server_port", "UInt16"), ("client_port", "client_port", "UInt16"),
    ("start_time_us", "toUnixTimestamp64Micro(start_time)", "Int64"),
    ("end_time_us", "toUnixTimestamp64Micro(end_time)", "Int64"),
    ("", "is_ipv4", "UInt8"), ("", "ip4_1", "IPv4"), ("", "ip6_1", "IPv6"),
]


def _entry_keys(entry: dict) -> list:
    """The values of _ENTRY_KEYS for an entry row fetched with LINK_COLUMNS (is_ipv4, ip4_1 and
    ip6_1 from its ip_1 text: only IPv6NumToString writes a ':')."""
    ip = entry["ip_1"]
    v6 = ":" in ip
    return [entry[name] for name, _, _ in _ENTRY_KEYS[:13]] + [int(not v6), "0.0.0.0" if v6 else ip, ip if v6 else "::"]


def fetch_rounds(store: Store, rounds: list[Round]) -> list[list[dict]]:
    """The rows of several rounds (of different traces) in one query: each row says which rounds
    asked for it, so every trace gets exactly the rows its own query would have brought."""
    details = any(r.details for r in rounds)
    columns = {**DETAIL_COLUMNS, **LINK_COLUMNS} if details else LINK_COLUMNS
    params = {k: v for r in rounds for k, v in r.params.items()}
    params["lim"] = sum(r.limit for r in rounds)
    if len(rounds) == 1:
        return [store.query(f"SELECT {_select(columns)} FROM {L7_TABLE} WHERE {rounds[0].where} "
                            "LIMIT {lim:UInt32}", params)]
    hits = ", ".join(f"({r.where})" for r in rounds)
    rows = store.query(f"SELECT {_select(columns)}, [{hits}] AS `_hits` FROM {L7_TABLE} "
                       f"WHERE {' OR '.join(f'({r.where})' for r in rounds)} LIMIT {{lim:UInt32}}", params)
    out: list[list[dict]] = [[] for _ in rounds]
    for row in rows:
        hit = row.pop("_hits")
        for i, h in enumerate(hit):
            if h:
                out[i].append(dict(row))
    return out


def _xrids(r: dict) -> tuple[str, ...]:
    return tuple(x for x in (r["x_request_id_0"], r["x_request_id_1"]) if x)


def _sysids(r: dict) -> tuple[int, ...]:
    return tuple(x for x in (r["syscall_trace_id_request"], r["syscall_trace_id_response"]) if x)


def _overlap(a: dict, b: dict, tol: int) -> bool:
    return a["end_time_us"] + tol >= b["start_time_us"] and b["end_time_us"] + tol >= a["start_time_us"]


def _covers(outer: dict, inner: dict, tol: int) -> bool:
    return outer["start_time_us"] - tol <= inner["start_time_us"] and inner["end_time_us"] <= outer["end_time_us"] + tol


def _app_tuple(r: dict) -> tuple[str, int, int] | None:
    """The connection an OTel span ran on: (server address, server port, client port or 0)."""
    if r["signal_source"] != OTEL or not r["server_port"] or r["ip_1"] in ("0.0.0.0", "::"):
        return None
    return r["ip_1"], r["server_port"], r["client_port"]


def _conn(r: dict) -> tuple[str, int, int] | None:
    """The connection key of any span: (server address, server port, client port)."""
    if r["signal_source"] == OTEL:
        t = _app_tuple(r)
        return t if t is not None and t[2] else None
    return (r["ip_1"], r["server_port"], r["client_port"]) if r["client_port"] else None


def tuple_fit(app: dict, net: dict, tol: int) -> tuple[int, int] | None:
    """How well an OTel span and a packet/eBPF span of the same connection fit as one exchange:
    (µs outside the cover, duration key), smaller is better; None when they cannot be. A client
    span covers the network exchange (it waits for the answer); the network span covers the server
    span. Several calls on one kept-alive connection are told apart by the tightest cover."""
    t = _app_tuple(app)
    if t is None or net["signal_source"] == OTEL:
        return None
    if (net["ip_1"], net["server_port"]) != t[:2] or (t[2] and net["client_port"] != t[2]):
        return None
    if app["ip_0"] not in ("0.0.0.0", "::", "") and net["ip_0"] != app["ip_0"]:
        return None
    side = app["tap_side"]
    if side == "c-app":
        outer, inner, dur = app, net, app["end_time_us"] - app["start_time_us"]
    elif side == "s-app":
        outer, inner, dur = net, app, app["start_time_us"] - app["end_time_us"]
    else:
        return None
    excess = max(0, outer["start_time_us"] - inner["start_time_us"]) + max(0, inner["end_time_us"] - outer["end_time_us"])
    return (excess, dur) if excess <= tol else None


def tuple_match(app: dict, net: dict, tol: int) -> bool:
    return tuple_fit(app, net, tol) is not None


def _same_request(a: dict, b: dict, seqs: bool = True) -> str:
    """'' when two spans with equal TCP sequence numbers can be the same request, else why not
    (``seqs`` False: two spans of one connection, their sequence numbers not compared)."""
    if a["l7_protocol"] != b["l7_protocol"]:
        return "protocol differs"
    for k in ("request_type", "endpoint"):
        if a[k] and b[k] and a[k] != b[k]:
            return f"{k} differs"
    if a["response_code"] is not None and b["response_code"] is not None and a["response_code"] != b["response_code"]:
        return "response_code differs"
    if a["trace_id"] and b["trace_id"] and a["trace_id"] != b["trace_id"]:
        return "trace_id differs"
    if seqs and a["type"] == 2 and b["type"] == 2 and all((a[k], b[k]) != (0, 0) for k in ("req_tcp_seq", "resp_tcp_seq")) \
            and (a["req_tcp_seq"] != b["req_tcp_seq"] or a["resp_tcp_seq"] != b["resp_tcp_seq"]):
        return "one of the two sequence numbers differs"
    return ""


def _seqs_comparable(a: dict, b: dict) -> bool:
    """flowscope's eBPF rows carry the socket's stream offsets, not TCP sequence numbers (syscall
    tracepoints cannot read the socket), so theirs only compare within one connection."""
    return EBPF not in (a["signal_source"], b["signal_source"]) or _conn(a) == _conn(b)


def _is_system(r: dict) -> bool:
    return r["signal_source"] == EBPF and r["tap_side"] in _SYSTEM_SIDES


def exchange_fit(system: dict, other: dict, tol: int) -> tuple[int, int] | None:
    """How well a system span (eBPF c-p / s-p) and a network span, or the other process's system
    span, of the same connection fit as one request/response exchange: (µs outside the cover, µs
    between the starts), smaller is better; None when they cannot be one (another 4-tuple,
    protocol, method, endpoint or status, or more than ``tol`` outside the cover). The client side
    covers the server side: the client process writes before its packets leave and reads after the
    answer came; the server process reads after the request arrived (however long it queued) and
    answers before the response leaves."""
    if other["signal_source"] == OTEL or other["tap_side"] == system["tap_side"] or not system["client_port"]:
        return None
    if any(system[k] != other[k] for k in ("client_port", "server_port", "ip_1", "ip_0")):
        return None
    if _SIDE_ORDER.get(system["tap_side"], 6) < _SIDE_ORDER.get(other["tap_side"], 6):
        outer, inner = system, other
    else:
        outer, inner = other, system
    excess = max(0, outer["start_time_us"] - inner["start_time_us"]) + max(0, inner["end_time_us"] - outer["end_time_us"])
    if excess > tol or _same_request(system, other, seqs=False):
        return None
    return excess, abs(system["start_time_us"] - other["start_time_us"])


def pair_exchanges(rows: Iterable[dict], tolerance) -> dict[int, set[int]]:
    """Which spans of one connection are the same exchange: each system span pairs with at most one
    span per capture point (agent, observation point), each span with at most one system span per
    process side, best fits first (several requests on a kept-alive connection). ``tolerance(a, b)``:
    the most µs outside the cover allowed. Returns _id → the _ids it pairs with."""
    rows = list(rows)
    fits = []
    for s in rows:
        if _is_system(s):
            for o in rows:
                if (f := exchange_fit(s, o, tolerance(s, o))) is not None:
                    fits.append((f, s["_id"], o["_id"], (s["vtap_id"], s["tap_side"]), (o["vtap_id"], o["tap_side"])))
    fits.sort()
    taken: set[tuple] = set()
    out: dict[int, set[int]] = defaultdict(set)
    for _, s, o, s_side, o_side in fits:
        if (s, o_side) in taken or (o, s_side) in taken or o in out[s]:
            continue
        taken |= {(s, o_side), (o, s_side)}
        out[s].add(o)
        out[o].add(s)
    return out


class Search:
    """Step 1: the rows linked to the entry, round by round."""

    fuse_details = True     # bring the display columns with the last round (one query less); off: a separate query

    def __init__(self, store: Store, cfg: TraceConfig, lo_s: int | None, hi_s: int | None) -> None:
        self.store, self.cfg = store, cfg
        self.bounds = (lo_s, hi_s)
        self.found: dict[int, dict] = {}
        self.how: dict[int, tuple[str, int]] = {}
        self.rejected: Counter = Counter()
        self.rejected_samples: list[dict] = []
        self.iterations = 0
        self.truncated = False
        self.queried: dict[str, set] = defaultdict(set)
        self.index: dict[str, dict] = defaultdict(lambda: defaultdict(list))
        self.apps: list[dict] = []
        self.conns: dict[tuple, dict[int, dict]] = defaultdict(dict)
        self.pairs: dict[tuple, dict[int, dict]] = defaultdict(dict)
        self.conn_spans: dict[tuple, list[tuple[int, int]]] = defaultdict(list)   # time spans asked per connection
        self.exchanges: dict[tuple, tuple[int, dict]] = {}    # connection → (spans seen, pair_exchanges of them)

    # keys of a row, per rule
    def _keys(self, r: dict) -> dict[str, Iterable]:
        src = self.cfg.sources
        out: dict[str, Iterable] = {}
        if "trace_id" in src and r["trace_id"]:
            out["trace_id"] = (r["trace_id"],)
        if "x_request_id" in src:
            out["xrid"] = _xrids(r)
        if "tcp_seq" in src and r["signal_source"] != OTEL:
            out["req_seq"] = (r["req_tcp_seq"],) if r["req_tcp_seq"] else ()
            out["resp_seq"] = (r["resp_tcp_seq"],) if r["resp_tcp_seq"] else ()
        if "syscall" in src:
            out["sys"] = _sysids(r)
        if "tuple" in src:
            conn = _conn(r)
            # every span of the connection (packet, eBPF and app) around this one's time
            if conn is not None:
                out["conn"] = ((conn, r["_id"]),)
            elif r["signal_source"] == OTEL and _app_tuple(r) is not None:     # a client span without its port
                out["pair"] = ((_app_tuple(r)[:2], r["_id"]),)
        return out

    def add(self, r: dict, how: str, from_id: int) -> None:
        self.found[r["_id"]] = r
        self.how[r["_id"]] = (how, from_id)
        if r["signal_source"] == OTEL:
            self.apps.append(r)
        for k, vals in self._keys(r).items():
            for v in vals:
                self.index[k][v].append(r)
        self._seen(r)

    def _seen(self, r: dict) -> None:
        """Every span of a connection the search saw (found or not): the tuple rule pairs app spans
        and network spans of a connection knowing all of them, not only those of this trace."""
        conn = _conn(r)
        if conn is not None:
            self.conns[conn][r["_id"]] = r
        t = _app_tuple(r)
        if t is not None:
            self.pairs[t[:2]][r["_id"]] = r
        elif r["signal_source"] != OTEL:
            self.pairs[(r["ip_1"], r["server_port"])][r["_id"]] = r

    def _partner(self, r: dict) -> list[int]:
        """The spans ``r`` pairs with on its connection: for a network span, the app span fitting it
        best; for an app span, the network spans it fits best."""
        tol = self.cfg.host_clock_offset_us
        if r["signal_source"] == OTEL:
            t = _app_tuple(r)
            peers = self.pairs.get(t[:2], {}) if t is not None else {}
            return [n["_id"] for n in peers.values() if n["signal_source"] != OTEL
                    and self._best_app(n, tol) == r["_id"]]
        best = self._best_app(r, tol)
        return [] if best is None else [best]

    def _best_app(self, net: dict, tol: int) -> int | None:
        cands = []
        for a in self.pairs.get((net["ip_1"], net["server_port"]), {}).values():
            fit = tuple_fit(a, net, tol) if a["signal_source"] == OTEL else None
            if fit is not None:
                cands.append((fit, a["_id"]))
        return min(cands)[1] if cands else None

    def window(self) -> tuple[int, int]:
        w = self.cfg.window_s * 1_000_000
        lo = min(r["start_time_us"] for r in self.found.values()) - w
        hi = max(r["end_time_us"] for r in self.found.values()) + w
        lo_s, hi_s = lo // 1_000_000, hi // 1_000_000 + 1
        if self.bounds[0] is not None:
            lo_s = max(lo_s, self.bounds[0])
        if self.bounds[1] is not None:
            hi_s = min(hi_s, self.bounds[1])
        return lo_s, max(lo_s, hi_s)

    def _pending(self) -> dict[str, set]:
        new: dict[str, set] = {}
        for k, by in self.index.items():
            vals = set(by) - self.queried[k]
            if k in ("conn", "pair"):       # a connection's spans at a time already asked for: known
                tol = self.cfg.host_clock_offset_us
                covered = {v for v in vals if any(lo <= self.found[v[1]]["start_time_us"] - tol and
                                                  self.found[v[1]]["end_time_us"] + tol <= hi
                                                  for lo, hi in self.conn_spans[v[0]])}
                self.queried[k] |= covered
                vals -= covered
            if vals:
                new[k] = vals
        return new

    def first_round(self, entry_id: int) -> dict | None:
        """The entry row and the rows sharing its keys, in one query: the entry's keys come from a
        scalar subquery (its second is ``_id >> 32``), so the first round needs no separate fetch.
        None when the entry does not exist."""
        sec = entry_id >> 32
        rnd = self.first_round_query(entry_id)
        entry_keys = ", ".join(expr for _, expr, _ in _ENTRY_KEYS)
        sql = (f"WITH (SELECT ({entry_keys}) FROM {L7_TABLE} WHERE time >= toDateTime({{e0:UInt32}}) AND "
               "time <= toDateTime({e1:UInt32}) AND _id = {eid:UInt64} LIMIT 1) AS e "
               f"SELECT {_select(LINK_COLUMNS)} FROM {L7_TABLE} WHERE {rnd.where} LIMIT {{lim:UInt32}}")
        rows = self.store.query(sql, {**rnd.params, "e0": sec - 1, "e1": sec + 1, "lim": rnd.limit})
        return self.first_round_accept(entry_id, rows)

    def first_round_query(self, entry_id: int, entry: dict | None = None, p: str = "") -> Round:
        """The first round's rows: the entry and the rows sharing its keys, around its second. The
        entry's keys are ``tupleElement(e, i)`` of a scalar subquery ``e`` (``entry`` None), else
        parameters taken from ``entry`` (its link columns, fetched before)."""
        cfg, src = self.cfg, self.cfg.sources
        sec = entry_id >> 32
        w = cfg.window_s
        lo_s = max(sec - w - 1, self.bounds[0]) if self.bounds[0] is not None else sec - w - 1
        hi_s = min(sec + w + 1, self.bounds[1]) if self.bounds[1] is not None else sec + w + 1
        where, params = _time_filter(lo_s, max(lo_s, hi_s), p)
        params.update({f"{p}eid": entry_id, f"{p}tol": cfg.host_clock_offset_us})
        if entry is None:
            e = lambda i: f"tupleElement(e, {i})"  # noqa: E731
        else:
            e = lambda i: f"{{{p}e{i}:{_ENTRY_KEYS[i - 1][2]}}}"  # noqa: E731
            params.update({f"{p}e{i}": v for i, v in enumerate(_entry_keys(entry), 1)})
        tol = f"{{{p}tol:Int64}}"
        # ip_1 equal to the entry's, compared as numbers (formatting every row's address costs more)
        same_ip1 = f"is_ipv4 = {e(14)} AND if(is_ipv4, ip4_1 = {e(15)}, ip6_1 = {e(16)})"
        ors = [f"_id = {{{p}eid:UInt64}}"]
        if "x_request_id" in src:
            ors += [f"({e(n)} != '' AND (x_request_id_0 = {e(n)} OR x_request_id_1 = {e(n)}))" for n in (1, 2)]
        if "trace_id" in src:
            ors.append(f"({e(3)} != '' AND trace_id = {e(3)})")
        if "tcp_seq" in src:
            ors.append(f"({e(4)} != 4 AND signal_source != 4 AND (({e(5)} != 0 AND req_tcp_seq = {e(5)}) "
                       f"OR ({e(6)} != 0 AND resp_tcp_seq = {e(6)})))")
        if "syscall" in src:
            ors += [f"({e(n)} != 0 AND (syscall_trace_id_request = {e(n)} OR syscall_trace_id_response = {e(n)}))"
                    for n in (7, 8)]
        if "tuple" in src:
            during = (f"end_time >= fromUnixTimestamp64Micro({e(12)} - {tol}) "
                      f"AND start_time <= fromUnixTimestamp64Micro({e(13)} + {tol})")
            ors.append(f"({e(11)} != 0 AND {e(10)} != 0 AND client_port = {e(11)} AND server_port = {e(10)} "
                       f"AND {same_ip1} AND ({e(4)} != 4 OR {e(9)} NOT IN ('0.0.0.0', '::')) AND {during})")
            ors.append(f"({e(4)} = 4 AND {e(11)} = 0 AND {e(10)} != 0 AND {e(9)} NOT IN ('0.0.0.0', '::') "
                       f"AND server_port = {e(10)} AND {same_ip1} AND {during})")
        return Round(f"{where} AND ({' OR '.join(ors)})", params, False, cfg.max_spans * 4)

    def first_round_accept(self, entry_id: int, rows: list[dict]) -> dict | None:
        """Link what the first round brought; the entry row, or None when it does not exist."""
        cfg = self.cfg
        entry = next((r for r in rows if r["_id"] == entry_id), None)
        if entry is None:
            return None
        self.iterations += 1
        self.add(entry, "entry", 0)
        for k, vals in self._keys(entry).items():       # asked for above
            self.queried[k] |= set(vals)
        tol = cfg.host_clock_offset_us
        for k in ("conn", "pair"):
            for key, _ in self.index[k]:
                self.conn_spans[key].append((entry["start_time_us"] - tol, entry["end_time_us"] + tol))
        self._process([r for r in rows if r["_id"] != entry_id])
        return entry

    def _process(self, rows: list[dict]) -> None:
        """Link what a round brought: candidates joining through rows found (also in this round)."""
        cfg = self.cfg
        for r in rows:
            f = self.found.get(r["_id"])
            if f is not None and "flow_id" in r:
                for k, v in r.items():
                    f.setdefault(k, v)
        cands = [r for r in rows if r["_id"] not in self.found and r["signal_source"] in cfg.signal_sources]
        for r in cands:
            self._seen(r)
        progress = True
        while progress and cands:
            progress = False
            rest = []
            for c in cands:
                if len(self.found) >= cfg.max_spans:
                    self.truncated = True
                    break
                link = self._link(c)
                if link is None:
                    rest.append(c)
                else:
                    self.add(c, *link)
                    progress = True
            cands = rest
        for c in cands:
            self._reject(c)

    def run(self) -> None:
        while (rnd := self.next_round()) is not None:
            self._process(fetch_rounds(self.store, [rnd])[0])

    def next_round(self, p: str = "") -> Round | None:
        """The next round's query (``p`` prefixes its parameter names), or None: nothing left to
        ask, or a bound reached."""
        cfg = self.cfg
        if self.truncated or self.iterations >= cfg.max_iteration:
            return None
        new = self._pending()
        if not new:
            return None
        if len(self.found) >= cfg.max_spans:      # links left to follow: the trace is cut short
            self.truncated = True
            return None
        self.iterations += 1
        for k, vals in new.items():
            self.queried[k] |= vals
        # A round asking only for TCP sequence numbers (the other capture points of calls just
        # found) is usually the last: it also brings the display columns of every row found so
        # far, which saves the separate details query.
        details = ([i for i, r in self.found.items() if "flow_id" not in r]
                   if self.fuse_details and set(new) <= {"req_seq", "resp_seq"} else [])
        return self._round(new, details, p)

    def _round(self, new: dict[str, set], details: list[int], p: str) -> Round:
        lo_s, hi_s = self.window()
        where, params = _time_filter(lo_s, hi_s, p)
        ors = []
        if details:
            ors.append(f"_id IN {{{p}did:Array(UInt64)}}")
            params[f"{p}did"] = details
        for key, columns, name, type_ in _KEY_COLUMNS:
            if key in new:
                ref = f"{{{p}{name}:Array({type_})}}"
                ors.append(" OR ".join(f"{c} IN {ref}" for c in columns))
                params[f"{p}{name}"] = sorted(new[key])
        if "conn" in new:
            # the spans of these connections that overlap the spans carrying them
            conns = sorted({(cp, sp, ip) for (ip, sp, cp), _ in new["conn"]})
            ors.append(self._overlapping(new["conn"], conns, f"{p}cn", "client_port, server_port", "UInt16, UInt16",
                                         params))
        if "pair" in new:
            pairs = sorted({(sp, ip) for (ip, sp), _ in new["pair"]})
            ors.append(self._overlapping(new["pair"], pairs, f"{p}pa", "server_port", "UInt16", params))
        return Round(f"{where} AND ({' OR '.join(ors)})", params, bool(details), self.cfg.max_spans * 4 + len(details))

    def _overlapping(self, items, keys: list[tuple], name: str, columns: str, types: str, params: dict) -> str:
        """Rows on these connections (``columns`` and the server address) during the spans that
        carry them, within the clock tolerance; the windows are kept per connection for _link."""
        carriers = [self.found[i] for _, i in items]
        tol = self.cfg.host_clock_offset_us
        lo, hi = f"{name}_lo", f"{name}_hi"
        params[lo] = min(r["start_time_us"] for r in carriers) - tol
        params[hi] = max(r["end_time_us"] for r in carriers) + tol
        for key, _ in items:
            self.conn_spans[key].append((params[lo], params[hi]))
        return (f"({_ip1_in(name, columns, types, keys, params)} "
                f"AND end_time >= fromUnixTimestamp64Micro({{{lo}:Int64}}) "
                f"AND start_time <= fromUnixTimestamp64Micro({{{hi}:Int64}}))")

    def _link(self, c: dict) -> tuple[str, int] | None:
        """The first rule linking candidate ``c`` to a row found, or None."""
        cfg = self.cfg
        idx = self.index
        if c["trace_id"]:
            for f in idx["trace_id"].get(c["trace_id"], ()):
                return "trace_id", f["_id"]
        if c["signal_source"] != OTEL:
            for key, col, t in (("req_seq", "req_tcp_seq", "start_time_us"), ("resp_seq", "resp_tcp_seq", "end_time_us")):
                if not c[col]:
                    continue
                for f in idx[key].get(c[col], ()):
                    if f["signal_source"] == OTEL:
                        continue
                    if abs(f[t] - c[t]) <= cfg.tolerance(f, c) and not _same_request(f, c) and _seqs_comparable(f, c):
                        return "tcp_seq", f["_id"]
        for x in _xrids(c):
            for f in idx["xrid"].get(x, ()):
                if _overlap(f, c, cfg.network_delay_us + cfg.host_clock_offset_us):
                    return "x_request_id", f["_id"]
        for s in _sysids(c):
            for f in idx["sys"].get(s, ()):
                if f["vtap_id"] == c["vtap_id"] and (f["tap_side"] != c["tap_side"] or (
                        c["tap_side"] == "c-p" and self._in_server_span(c))):
                    return "syscall", f["_id"]
        if "tuple" in cfg.sources:
            for p in self._partner(c):
                if p in self.found:
                    return "tuple", p
            for p in self._exchange(c):
                if p in self.found:
                    return "connection", p
        return None

    def _in_server_span(self, c: dict) -> bool:
        """Is a server process span found on ``c``'s agent around it? Two client process spans
        sharing a syscall id are calls one thread made one after the other: the same request only
        while that thread serves one (the next request of a plain client carries the id too). One
        agent's process spans share a clock: no tolerance."""
        return any(f["tap_side"] == "s-p" and f["vtap_id"] == c["vtap_id"] and _covers(f, c, 0)
                   for f in self.found.values())

    def _exchange(self, c: dict) -> set[int]:
        """The spans of ``c``'s connection that are the same exchange as ``c`` (pair_exchanges over
        every span of the connection the search saw, again only when it saw more)."""
        conn = _conn(c)
        if conn is None or c["signal_source"] == OTEL:
            return set()
        seen = self.conns[conn]
        n, pairs = self.exchanges.get(conn, (-1, {}))
        if n != len(seen):
            pairs = pair_exchanges(seen.values(), self.cfg.tolerance) if any(map(_is_system, seen.values())) else {}
            self.exchanges[conn] = (len(seen), pairs)
        return pairs.get(c["_id"], set())

    def _reject(self, c: dict) -> None:
        """Why a row sharing a key with the trace did not join it (counted; a few kept as samples)."""
        cfg = self.cfg
        reason = "tuple: another exchange on the same connection"
        for key, col, t in (("req_seq", "req_tcp_seq", "start_time_us"), ("resp_seq", "resp_tcp_seq", "end_time_us")):
            for f in self.index[key].get(c[col], ()) if c[col] else ():
                why = _same_request(f, c)
                reason = f"tcp_seq: {why}" if why else (
                    "tcp_seq: outside the network delay" if abs(f[t] - c[t]) > cfg.tolerance(f, c) else reason)
        for x in _xrids(c):
            if x in self.index["xrid"]:
                reason = "x_request_id: reused at another time"
        for s in _sysids(c):
            for f in self.index["sys"].get(s, ()):
                reason = ("syscall: another agent" if f["vtap_id"] != c["vtap_id"] else
                          "syscall: two server process spans" if c["tap_side"] == "s-p" else
                          "syscall: a client thread's calls outside any server span")
        self.rejected[reason] += 1
        if len(self.rejected_samples) < 20:
            self.rejected_samples.append({"_id": str(c["_id"]), "reason": reason})


# -- tree ------------------------------------------------------------------------------------------------------
def merge_responses(rows: list[dict]) -> list[tuple[dict, list[int]]]:
    """An orphan response (type 1) joins the request (type 0) before it on the same flow, capture
    point and request id (DeepFlow step 2); everything else stays as it is."""
    out: list[tuple[dict, list[int]]] = []
    open_req: dict[tuple, list] = defaultdict(list)
    for r in sorted(rows, key=lambda r: (r["start_time_us"], r["_id"])):
        key = (r["flow_id"], r["vtap_id"], r["tap_port"], r["tap_side"], r["l7_protocol"], r["request_id"])
        if r["type"] == 1 and r["signal_source"] != OTEL and open_req[key]:
            req, ids = open_req[key].pop(0)
            merged = dict(req)
            for k in ("end_time_us", "resp_tcp_seq", "response_code", "x_request_id_1", "syscall_trace_id_response",
                      "syscall_cap_seq_1"):
                merged[k] = r[k] or req.get(k)
            merged["type"] = 2
            out[out.index((req, ids))] = (merged, [*ids, r["_id"]])
            continue
        item = (r, [r["_id"]])
        out.append(item)
        if r["type"] == 0 and r["signal_source"] != OTEL:
            open_req[key].append(item)
    return out


class Tree:
    """Step 2: spans into hops and one tree (or a few)."""

    def __init__(self, spans: list[Span], cfg: TraceConfig) -> None:
        self.spans = spans
        self.cfg = cfg
        self.conflicts: list[dict] = []
        self.hops: list[list[int]] = []

    def tol(self, a: Span, b: Span) -> int:
        return self.cfg.tolerance(a.row, b.row)

    def _ancestor(self, a: int, b: int) -> bool:
        """Is ``a`` ``b`` or one of its ancestors?"""
        seen = 0
        while b >= 0 and seen <= len(self.spans):
            if a == b:
                return True
            b = self.spans[b].parent
            seen += 1
        return False

    def attach(self, child: int, parent: int, rule: str) -> bool:
        c = self.spans[child]
        if c.parent >= 0:
            return False
        if self._ancestor(child, parent):
            self.conflicts.append({"kind": "cycle", "rule": rule, "child": str(c.ids[0]),
                                   "parent": str(self.spans[parent].ids[0]),
                                   "detail": "the link would close a cycle; not followed"})
            c.warnings.append(f"a {rule} link to {self.spans[parent].ids[0]} would close a cycle")
            return False
        c.parent, c.link = parent, rule
        self.spans[parent].children.append(child)
        return True

    def _pick(self, child: int, cands: list[tuple[int, int]], rule: str) -> int | None:
        """The candidate parent with the smallest rank (closest); a tie is a reported conflict."""
        if not cands:
            return None
        cands.sort()
        if len(cands) > 1 and cands[0][0] == cands[1][0] and cands[0][1] != cands[1][1]:
            c = self.spans[child]
            others = sorted({str(self.spans[p].ids[0]) for r, p in cands if r == cands[0][0]})
            self.conflicts.append({"kind": "ambiguous", "rule": rule, "child": str(c.ids[0]), "parents": others,
                                   "detail": "several spans qualify equally; the first was taken"})
            c.warnings.append(f"{rule}: {len(others)} equally likely parents: {', '.join(others)}")
        return cands[0][1]

    def build(self) -> None:
        self._hops()
        self._app_client_owns_hop()
        self._hop_owns_app_server()
        self._hop_owns_hop()
        self._syscall()
        self._app_tree()

    # hops: spans of the same request at several capture points (union of their tcp_seq links) and
    # the system spans of its processes (union of their connection links)
    def _hops(self) -> None:
        spans = self.spans
        parent = list(range(len(spans)))

        def find(i: int) -> int:
            while parent[i] != i:
                parent[i] = parent[parent[i]]
                i = parent[i]
            return i

        def union(a: int, b: int) -> None:
            ra, rb = find(a), find(b)
            if ra != rb:
                parent[ra] = rb

        by_id = {i: s.index for s in spans for i in s.ids}
        for s in spans:
            if s.found_by == "tcp_seq" and s.found_from in by_id:
                union(s.index, by_id[s.found_from])
        # rows linked through another key (x_request_id, trace_id) may be the same request too
        seqs: dict[tuple, list[int]] = defaultdict(list)
        for s in spans:
            if not s.is_app and s.row["req_tcp_seq"]:
                seqs[(s.row["req_tcp_seq"], s.row["l7_protocol"])].append(s.index)
        for group in seqs.values():
            for i in group[1:]:
                a, b = spans[group[0]], spans[i]
                if abs(a.start - b.start) <= self.tol(a, b) and not _same_request(a.row, b.row) \
                        and _seqs_comparable(a.row, b.row):
                    union(a.index, i)
        # a system span (eBPF c-p / s-p) and the network spans of its exchange on the same connection
        conns: dict[tuple, list[Span]] = defaultdict(list)
        for s in spans:
            if not s.is_app and (conn := _conn(s.row)) is not None:
                conns[conn].append(s)
        by_row = {s.row["_id"]: s.index for s in spans}
        for members in conns.values():
            if any(_is_system(s.row) for s in members):
                for a, peers in pair_exchanges([s.row for s in members], self.cfg.tolerance).items():
                    for b in peers:
                        union(by_row[a], by_row[b])
        groups: dict[int, list[int]] = defaultdict(list)
        for s in spans:
            if not s.is_app:
                groups[find(s.index)].append(s.index)
        for members in groups.values():
            members.sort(key=lambda i: (_SIDE_ORDER.get(spans[i].side, 6), spans[i].start, -spans[i].end))
            hop = len(self.hops)
            self.hops.append(members)
            for k, i in enumerate(members):
                spans[i].hop = hop
                if k:
                    self.attach(i, members[k - 1], "network")

    def _root(self, hop: int) -> Span:
        return self.spans[self.hops[hop][0]]

    def _tail(self, hop: int) -> Span:
        return self.spans[self.hops[hop][-1]]

    def _hop_ids(self, hop: int, col: str) -> set[str]:
        return {self.spans[i].row[col] for i in self.hops[hop] if self.spans[i].row[col]}

    def _app_client_owns_hop(self) -> None:
        """An app CLIENT span is the parent of the hop carrying its span id (traceparent) or its connection."""
        clients = [s for s in self.spans if s.is_app and s.side == "c-app"]
        for h in range(len(self.hops)):
            root = self._root(h)
            if root.parent >= 0:
                continue
            span_ids = self._hop_ids(h, "span_id")
            cands = []
            tol = self.cfg.host_clock_offset_us
            for a in clients:
                if a.row["span_id"] and a.row["span_id"] in span_ids:
                    cands.append(((0, 0, a.duration), a.index, "span_id"))
                    continue
                fits = [f for i in self.hops[h] if (f := tuple_fit(a.row, self.spans[i].row, tol)) is not None]
                if fits:
                    cands.append(((1, *min(fits)), a.index, "tuple"))
            if cands:
                cands.sort()
                rule = cands[0][2]
                p = self._pick(root.index, [(r, i) for r, i, _ in cands], rule)
                self.attach(root.index, p, rule)

    def _hop_owns_app_server(self) -> None:
        """A hop's last span is the parent of the app SERVER span it delivered the request to."""
        for s in self.spans:
            if not (s.is_app and s.side == "s-app") or s.parent >= 0:
                continue
            cands = []
            for h in range(len(self.hops)):
                tail = self._tail(h)
                tol = self.tol(tail, s)
                if s.row["parent_span_id"] and s.row["parent_span_id"] in self._hop_ids(h, "span_id"):
                    cands.append(((0, 0, tail.duration), tail.index, "span_id"))
                elif ((s.row["x_request_id_0"] and s.row["x_request_id_0"] == tail.row["x_request_id_0"])
                      or (s.row["x_request_id_1"] and s.row["x_request_id_1"] == tail.row["x_request_id_1"])) \
                        and _covers(tail.row, s.row, tol):
                    cands.append(((1, 0, tail.duration), tail.index, "x_request_id"))
                elif (fit := tuple_fit(s.row, tail.row, self.cfg.host_clock_offset_us)) is not None:
                    cands.append(((2, fit[0], tail.duration), tail.index, "tuple"))
            if cands:
                cands.sort()
                rule = cands[0][2]
                self.attach(s.index, self._pick(s.index, [(r, i) for r, i, _ in cands], rule), rule)

    def _hop_owns_hop(self) -> None:
        """Behind a proxy: the front hop's last span is the parent of the back hop (X-Request-ID
        injected: front response = back request; passed through: equal requests; or the same
        traceparent), covering it in time; the closest wins."""
        for h2 in range(len(self.hops)):
            root = self._root(h2)
            if root.parent >= 0:
                continue
            x0 = self._hop_ids(h2, "x_request_id_0")
            sids = self._hop_ids(h2, "span_id")
            cands = []
            for h1 in range(len(self.hops)):
                if h1 == h2:
                    continue
                tail = self._tail(h1)
                rule = ""
                if x0 & (self._hop_ids(h1, "x_request_id_1") | self._hop_ids(h1, "x_request_id_0")):
                    rule = "x_request_id"
                elif sids & self._hop_ids(h1, "span_id"):
                    rule = "span_id"
                if rule and tail.duration >= root.duration and _covers(tail.row, root.row, self.tol(tail, root)):
                    cands.append((tail.duration, tail.index, rule))
            if cands:
                cands.sort()
                self.attach(root.index, self._pick(root.index, [(d, i) for d, i, _ in cands], cands[0][2]),
                            cands[0][2])

    def _syscall(self) -> None:
        """eBPF: a server process span (s-p) is the parent of the client process spans (c-p) its
        thread made with the same syscall trace id (or on the same thread/coroutine, inside it)."""
        servers = [s for s in self.spans if s.side == "s-p"]
        for h in range(len(self.hops)):
            root = self._root(h)
            if root.parent >= 0 or root.side != "c-p":
                continue
            cands = []
            for p in servers:
                if p.row["vtap_id"] != root.row["vtap_id"] or p.hop == h:
                    continue
                same_id = set(_sysids(p.row)) & set(_sysids(root.row))
                same_thread = (p.row["syscall_thread_1"] and p.row["syscall_thread_1"] == root.row["syscall_thread_0"]
                               and p.row["syscall_coroutine_1"] == root.row["syscall_coroutine_0"])
                if (same_id or same_thread) and _covers(p.row, root.row, self.tol(p, root)):
                    # an app span between them (server app span under s-p) owns the call instead
                    target = next((self.spans[c] for c in p.children if self.spans[c].is_app
                                   and _covers(self.spans[c].row, root.row, self.tol(p, root))), p)
                    cands.append(((0 if same_id else 1, p.duration), target.index))
            p = self._pick(root.index, cands, "syscall")
            if p is not None:
                self.attach(root.index, p, "syscall")

    def _app_tree(self) -> None:
        """App spans by parent span id; then spans whose parent span id a network span carries."""
        by_span: dict[tuple[str, str], int] = {}
        for s in self.spans:
            if s.is_app and s.row["span_id"]:
                by_span[(s.row["trace_id"], s.row["span_id"])] = s.index
        net_span: dict[str, int] = {}
        for h in range(len(self.hops)):
            for sid in self._hop_ids(h, "span_id"):
                net_span.setdefault(sid, self._tail(h).index)
        for s in self.spans:
            if not s.is_app or s.parent >= 0 or not s.row["parent_span_id"]:
                continue
            p = by_span.get((s.row["trace_id"], s.row["parent_span_id"]))
            if p is not None:
                self.attach(s.index, p, "parent_span_id")
            elif s.row["parent_span_id"] in net_span:
                self.attach(s.index, net_span[s.row["parent_span_id"]], "span_id")
        # hops carrying an app span's id that no client span claimed (e.g. a non-CLIENT kind)
        for h in range(len(self.hops)):
            root = self._root(h)
            if root.parent >= 0:
                continue
            for sid in self._hop_ids(h, "span_id"):
                p = by_span.get((root.row["trace_id"], sid))
                if p is not None and self.attach(root.index, p, "span_id"):
                    break


# -- stats ------------------------------------------------------------------------------------------------------
def _union(intervals: list[tuple[int, int]]) -> int:
    total, cur_s, cur_e = 0, None, None
    for s, e in sorted(intervals):
        if cur_e is None or s > cur_e:
            if cur_e is not None:
                total += cur_e - cur_s
            cur_s, cur_e = s, e
        elif e > cur_e:
            cur_e = e
    if cur_e is not None:
        total += cur_e - cur_s
    return total


def self_times(spans: list[Span]) -> None:
    for s in spans:
        inside = [(max(s.start, spans[c].start), min(s.end, spans[c].end)) for c in s.children]
        s.selftime = max(0, s.duration - _union([(a, b) for a, b in inside if b > a]))


def service_of(s: Span) -> tuple[str, str]:
    """(service_uid, service_uname) of a span (DeepFlow's merge_service: auto_service, else
    app_service, else the IP). Client-side spans belong to the client end, the others to the server."""
    r = s.row
    side = 0 if s.side.startswith("c") else 1
    typ, sid = r.get(f"auto_service_type_{side}", 255), r.get(f"auto_service_id_{side}", 0)
    ip = r[f"ip_{side}"]
    if sid and typ not in (0, 255):
        return f"{sid}-{typ}", r.get(f"auto_service_{side}") or ip
    if s.is_app and r["app_service"]:
        return f"-{r['app_service']}", r["app_service"]
    if ip and ip not in ("0.0.0.0", "::"):
        return f"{ip}-", ip
    return "unknown-", "unknown service"


def service_stats(spans: list[Span]) -> list[dict]:
    acc: dict[str, dict] = {}
    for s in spans:
        uid, uname = service_of(s)
        e = acc.setdefault(uid, {"service_uid": uid, "service_uname": uname, "duration": 0})
        e["duration"] += s.selftime
    total = sum(e["duration"] for e in acc.values())
    for e in acc.values():
        e["duration_ratio"] = f"{e['duration'] / total * 100:.2f}" if total else "0"
    return sorted(acc.values(), key=lambda e: (-e["duration"], e["service_uid"]))


def _prune(spans: list[Span], entry: int, tol: int) -> tuple[list[Span], int]:
    """Keep the entry's tree and the trees sharing a trace id with it or overlapping it in time."""
    def root(i: int) -> int:
        seen = 0
        while spans[i].parent >= 0 and seen <= len(spans):
            i, seen = spans[i].parent, seen + 1
        return i

    trees: dict[int, list[Span]] = defaultdict(list)
    for s in spans:
        trees[root(s.index)].append(s)
    main = trees[root(entry)]
    lo, hi = min(s.start for s in main), max(s.end for s in main)
    tids = {s.row["trace_id"] for s in main if s.row["trace_id"]}
    keep, dropped = [], 0
    for members in trees.values():
        if members is main or any(s.row["trace_id"] in tids for s in members if s.row["trace_id"]) \
                or (min(s.start for s in members) <= hi + tol and max(s.end for s in members) + tol >= lo):
            keep += members
        else:
            dropped += len(members)
    return keep, dropped


# -- assembly -------------------------------------------------------------------------------------------------
def assemble(engine_or_store, *, entry_id: int | None = None, trace_id: str | None = None,
             time_range: tuple[int | None, int | None] = (None, None), config: TraceConfig | None = None) -> Trace | None:
    """The trace of one request (``entry_id``, an l7_flow_log ``_id``) or of a ``trace_id``;
    ``time_range`` = (first, last) second to search in (None: around the rows found). None when
    the entry does not exist."""
    cfg = config or TraceConfig()
    store = engine_or_store if isinstance(engine_or_store, Store) else Store(engine_or_store)
    t0 = time.perf_counter()
    search = Search(store, cfg, *time_range)
    if entry_id is not None:
        entry = search.first_round(entry_id)
    elif trace_id:
        entry = find_trace_entry(store, trace_id, *time_range)
        if entry is not None:
            search.add(entry, "entry", 0)
    else:
        raise TraceError("_id or trace_id is required")
    if entry is None:
        return None
    search.run()
    _details(store, [list(search.found.values())])
    return _finish(search, entry, store, t0)


def assemble_many(engine_or_store, entry_ids: list[int], *, time_range: tuple[int | None, int | None] = (None, None),
                  config: TraceConfig | None = None) -> dict[int, Trace | None]:
    """The traces of several requests, each exactly as ``assemble(entry_id=…)`` makes it, with the
    searches run side by side: each round of every trace goes into one query (the entries, then
    one query per round, then the display columns), not one query per trace and round."""
    cfg = config or TraceConfig()
    store = engine_or_store if isinstance(engine_or_store, Store) else Store(engine_or_store)
    t0 = time.perf_counter()
    ids = list(dict.fromkeys(entry_ids))
    out: dict[int, Trace | None] = dict.fromkeys(ids)
    if not ids:
        return out
    params: dict = {"ids": ids}
    within = []
    for n, sec in enumerate(sorted({i >> 32 for i in ids})):     # an _id's second is its top 32 bits
        where, p = _time_filter(sec - 1, sec + 1, f"e{n}_")
        within.append(f"({where})")
        params.update(p)
    found = {r["_id"]: r for r in store.query(f"SELECT {_select(LINK_COLUMNS)} FROM {L7_TABLE} WHERE "
                                              f"({' OR '.join(within)}) AND _id IN {{ids:Array(UInt64)}}", params)}
    searches = {i: Search(store, cfg, *time_range) for i in ids if i in found}
    entries: dict[int, dict] = {}
    rounds = {i: s.first_round_query(i, found[i], f"s{n}_") for n, (i, s) in enumerate(searches.items())}
    for i, rows in zip(rounds, fetch_rounds(store, list(rounds.values())), strict=True):
        entry = searches[i].first_round_accept(i, rows)
        if entry is not None:
            entries[i] = entry
    active = [i for i in searches if i in entries]
    while active:
        rounds = {}
        for n, i in enumerate(active):
            rnd = searches[i].next_round(f"s{n}_")
            if rnd is not None:
                rounds[i] = rnd
        if rounds:
            for i, rows in zip(rounds, fetch_rounds(store, list(rounds.values())), strict=True):
                searches[i]._process(rows)
        active = list(rounds)
    _details(store, [list(searches[i].found.values()) for i in entries])
    for i, entry in entries.items():
        out[i] = _finish(searches[i], entry, store, t0)
    return out


def _finish(search: Search, entry: dict, store: Store, t0: float) -> Trace:
    """Steps 2 and 3 over the rows the search found (with their display columns)."""
    cfg = search.cfg
    rows = list(search.found.values())
    merged = merge_responses(rows)
    spans = [Span(i, r, ids, *search.how[ids[0]]) for i, (r, ids) in enumerate(merged)]
    tree = Tree(spans, cfg)
    tree.build()
    entry_index = next(s.index for s in spans if entry["_id"] in s.ids)
    kept, pruned = _prune(spans, entry_index, cfg.host_clock_offset_us)
    if pruned:
        spans = _reindex(kept)
        entry_index = next(s.index for s in spans if entry["_id"] in s.ids)
    self_times(spans)
    services = service_stats(spans)
    roots = [s for s in spans if s.parent < 0]
    linked = len(spans) - len(roots)
    tids = Counter(s.row["trace_id"] for s in spans if s.row["trace_id"])
    completeness = {
        "spans": len(spans),
        "linked": linked,
        "roots": len(roots),
        "score": round((linked + 1) / len(spans), 4) if spans else 0.0,
        "found_by": dict(Counter(s.found_by for s in spans)),
        "linked_by": dict(Counter(s.link for s in spans if s.parent >= 0)),
        "by_signal_source": {SIGNAL_NAMES.get(k, str(k)): v for k, v in
                             Counter(s.row["signal_source"] for s in spans).items()},
        "unattached": [str(s.ids[0]) for s in roots if s.index != _root_of(spans, entry_index)],
        "rejected": dict(search.rejected),
        "rejected_samples": search.rejected_samples,
        "conflicts": tree.conflicts,
        "pruned": pruned,
        "iterations": search.iterations,
        "truncated": search.truncated,
        "elapsed_ms": round((time.perf_counter() - t0) * 1000, 3),
    }
    return Trace(entry_id=entry["_id"], trace_id=tids.most_common(1)[0][0] if tids else "", spans=spans,
                 completeness=completeness, services=services, queries=store.log)


def _root_of(spans: list[Span], i: int) -> int:
    seen = 0
    while spans[i].parent >= 0 and seen <= len(spans):
        i, seen = spans[i].parent, seen + 1
    return i


def _reindex(kept: list[Span]) -> list[Span]:
    old = {s.index: k for k, s in enumerate(sorted(kept, key=lambda s: s.index))}
    out = []
    for s in sorted(kept, key=lambda s: s.index):
        out.append(replace(s, index=old[s.index], parent=old.get(s.parent, -1),
                           children=[old[c] for c in s.children if c in old]))
    return out


def _details(store: Store, traces: list[list[dict]]) -> None:
    """The tree and display columns of the rows found (names from the flow_tag dictionaries), in
    place, for the rows the search did not bring them with; one query for the rows of all traces."""
    missing = [r for rows in traces for r in rows if "flow_id" not in r]
    by_id: dict[int, dict] = {}
    if missing:
        ids = sorted({r["_id"] for r in missing})
        ranges, params = [], {"ids": ids}
        for n, rows in enumerate(traces):
            secs = [r["_id"] >> 32 for r in rows if "flow_id" not in r]
            if secs:
                where, p = _time_filter(min(secs) - 1, max(secs) + 1, f"d{n}_" if len(traces) > 1 else "")
                ranges.append(f"({where})")
                params.update(p)
        details = store.query(f"SELECT {_select(DETAIL_COLUMNS)} FROM {L7_TABLE} WHERE ({' OR '.join(ranges)}) "
                              "AND _id IN {ids:Array(UInt64)}", params)
        by_id = {d["_id"]: d for d in details}
    for rows in traces:
        for r in rows:
            d = by_id.get(r["_id"])
            if d is not None:
                for k, v in d.items():
                    r.setdefault(k, v)
            for k in TREE_COLUMNS:
                r.setdefault(k, None if k in ("request_id", "span_kind") else
                             "" if k in ("app_service", "span_id", "parent_span_id") else 0)
            r.setdefault("response_status", 0)


# -- DeepFlow's L7FlowTracing answer -------------------------------------------------------------------------------
def deepflow_span_id(s: Span) -> str:
    if s.is_app and s.row["span_id"]:
        return s.row["span_id"]
    return f"{s.row['span_id'] or format(s.ids[0], '016x')}.{s.side}.{s.index}"


def _attribute(r: dict) -> dict | None:
    names = r.get("attribute_names") or []
    return dict(zip(names, r.get("attribute_values") or [], strict=False)) or None


def tracing_item(s: Span, spans: list[Span], related: dict[int, set[str]]) -> dict:
    """One ``tracing`` item as deepflow-app's _get_flow_dict shapes it."""
    r = s.row
    side = 0 if s.side.startswith("c") and s.side != "app" else 1
    uid, uname = service_of(s)
    return {
        "id": s.index, "_ids": [str(i) for i in s.ids],
        "related_ids": sorted(f"{j}-{','.join(sorted(rel))}-{spans[j].ids[0]}" for j, rel in related.get(s.index, {}).items())
        if related.get(s.index) else [],
        "signal_source": r["signal_source"], "type": r["type"],
        "start_time_us": s.start, "end_time_us": s.end, "duration": s.duration, "selftime": s.selftime,
        "tap_side": s.side, "Enum(tap_side)": s.side, "l7_protocol": r["l7_protocol"],
        "Enum(l7_protocol)": L7_PROTOCOLS.get(r["l7_protocol"], str(r["l7_protocol"])),
        "l7_protocol_str": r.get("biz_protocol") or L7_PROTOCOLS.get(r["l7_protocol"], ""),
        "endpoint": r["endpoint"], "request_type": r["request_type"], "request_domain": r.get("request_domain", ""),
        "request_resource": r.get("request_resource", ""), "request_id": r["request_id"],
        "response_status": r.get("response_status", 0), "response_code": r["response_code"],
        "response_exception": r.get("response_exception", ""), "biz_response_code": "",
        "flow_id": str(r["flow_id"]), "x_request_id_0": r["x_request_id_0"], "x_request_id_1": r["x_request_id_1"],
        "trace_id": r["trace_id"], "span_id": r["span_id"], "parent_span_id": r["parent_span_id"],
        "req_tcp_seq": r["req_tcp_seq"], "resp_tcp_seq": r["resp_tcp_seq"],
        "syscall_trace_id_request": str(r["syscall_trace_id_request"]),
        "syscall_trace_id_response": str(r["syscall_trace_id_response"]),
        "syscall_cap_seq_0": r["syscall_cap_seq_0"], "syscall_cap_seq_1": r["syscall_cap_seq_1"],
        "attribute": _attribute(r), "parent_id": s.parent, "childs": list(s.children),
        "process_id": r.get(f"process_id_{side}"), "process_kname": r.get(f"process_kname_{side}", ""),
        "vtap_id": r["vtap_id"], "tap_port": r["tap_port"], "tap_port_name": r.get("tap_port_name", ""),
        "service_uid": uid, "service_uname": uname, "app_service": r["app_service"],
        "app_instance": r.get("app_instance", ""),
        "auto_instance": r.get(f"auto_instance_{side}", ""), "auto_instance_id": r.get(f"auto_instance_id_{side}", 0),
        "auto_instance_type": r.get(f"auto_instance_type_{side}", 0),
        "auto_service": r.get(f"auto_service_{side}", ""), "auto_service_id": r.get(f"auto_service_id_{side}", 0),
        "auto_service_type": r.get(f"auto_service_type_{side}", 0), "ip": r[f"ip_{side}"],
        "is_tls": r.get("is_tls", 0), "is_async": r.get("is_async", 0), "set_parent_info": s.link or None,
        "found_by": s.found_by, "deepflow_span_id": deepflow_span_id(s),
        "deepflow_parent_span_id": deepflow_span_id(spans[s.parent]) if s.parent >= 0 else "",
    }


def dfs_order(spans: list[Span]) -> list[Span]:
    """Roots by start time, each followed by its subtree (children by start time)."""
    out: list[Span] = []
    stack = sorted((s for s in spans if s.parent < 0), key=lambda s: (s.start, s.index), reverse=True)
    seen: set[int] = set()
    while stack:
        s = stack.pop()
        if s.index in seen:
            continue
        seen.add(s.index)
        out.append(s)
        stack.extend(sorted((spans[c] for c in s.children), key=lambda c: (c.start, c.index), reverse=True))
    return out


def related_ids(trace: Trace) -> dict[int, dict[int, set[str]]]:
    by_id = {i: s.index for s in trace.spans for i in s.ids}
    rel: dict[int, dict[int, set[str]]] = defaultdict(lambda: defaultdict(set))
    for s in trace.spans:
        j = by_id.get(s.found_from)
        if j is not None and j != s.index:
            name = _RELATION.get(s.found_by, "app")
            rel[s.index][j].add(name)
            rel[j][s.index].add(name)
        if s.parent >= 0:
            name = _RELATION.get(s.link, "app")
            rel[s.index][s.parent].add(name)
            rel[s.parent][s.index].add(name)
    return rel


def l7_flow_tracing_data(trace: Trace | None) -> dict:
    if trace is None:
        return {"tracing": [], "services": [], "completeness": None}
    rel = related_ids(trace)
    return {"tracing": [tracing_item(s, trace.spans, rel) for s in dfs_order(trace.spans)],
            "services": trace.services, "completeness": trace.completeness}


# -- HTTP ------------------------------------------------------------------------------------------------------------
@dataclass
class Deps:
    """What the tracing, Jaeger and OTLP routes need: ``engine`` (a datasource QueryEngine: its
    read-only client, limits and lock), the tracing bounds, and ``otlp`` (a datasource.otlp.OtlpSink,
    or None where nothing may be written: /v1/traces then answers 503)."""

    engine: Any
    config: TraceConfig = field(default_factory=TraceConfig)
    otlp: Any = None


def as_deps(deps) -> Deps:
    return deps if isinstance(deps, Deps) else Deps(engine=deps)


def _json(obj, status: int = 200) -> Response:
    return Response(json.dumps(obj, ensure_ascii=False, allow_nan=False, default=str, separators=(",", ":")).encode(),
                    status, media_type="application/json")


def _int(body: dict, key: str, default: int | None, lo: int = 0) -> int | None:
    v = body.get(key)
    if v is None or v == "":
        return default
    try:
        n = int(v)
    except (TypeError, ValueError):
        raise TraceError(f"{key} must be an integer, got {v!r}") from None
    if n < lo:
        raise TraceError(f"{key} must be at least {lo}, got {n}")
    return n


def parse_l7_flow_tracing(body: Any, base: TraceConfig) -> tuple[dict, TraceConfig]:
    """DeepFlow's FlowLogL7Tracing model (deepflow-app models.py): upper-case keys, as Grafana's
    DeepFlow plugin sends them (lower-case accepted too)."""
    if not isinstance(body, dict):
        raise TraceError("the body must be a JSON object")
    b = {str(k).upper() if str(k).upper() not in ("_ID", "TRACE_ID") else str(k).lower(): v for k, v in body.items()}
    db, table = b.get("DATABASE", "flow_log"), b.get("TABLE", "l7_flow_log")
    if db != "flow_log" or table != "l7_flow_log":
        raise TraceError(f"only DATABASE flow_log, TABLE l7_flow_log can be traced, got {db}.{table}")
    raw_id = b.get("_id")
    entry_id = None
    if raw_id not in (None, ""):
        try:
            entry_id = int(str(raw_id).removeprefix("id-"))
        except ValueError:
            raise TraceError(f"_id must be an integer, got {raw_id!r}") from None
    trace_id = str(b.get("trace_id") or "").strip().lower()
    if entry_id is None and not trace_id:
        raise TraceError("_id or trace_id is required")
    t0, t1 = _int(b, "TIME_START", None), _int(b, "TIME_END", None)
    if t0 is not None and t1 is not None and t1 < t0:
        raise TraceError(f"TIME_END ({t1}) is before TIME_START ({t0})")
    sources = base.signal_sources
    if b.get("SIGNAL_SOURCES"):
        names = b["SIGNAL_SOURCES"] if isinstance(b["SIGNAL_SOURCES"], list) else [b["SIGNAL_SOURCES"]]
        unknown = [n for n in names if str(n).lower() not in SIGNAL_SOURCES]
        if unknown:
            raise TraceError(f"SIGNAL_SOURCES: unknown {unknown} (known: {sorted(SIGNAL_SOURCES)})")
        sources = frozenset(SIGNAL_SOURCES[str(n).lower()] for n in names)
    tracing_sources = base.sources
    if b.get("TRACING_SOURCES"):
        tracing_sources = frozenset(str(x).lower() for x in b["TRACING_SOURCES"]) & (base.sources | {"trace_id"})
    cfg = replace(base, max_iteration=min(_int(b, "MAX_ITERATION", base.max_iteration), 100),
                  network_delay_us=_int(b, "NETWORK_DELAY_US", base.network_delay_us, 1),
                  host_clock_offset_us=_int(b, "HOST_CLOCK_OFFSET_US", base.host_clock_offset_us, 1),
                  signal_sources=sources, sources=tracing_sources)
    if sources == frozenset({OTEL}):
        cfg = replace(cfg, max_iteration=1, sources=frozenset({"trace_id"}))
    return {"entry_id": entry_id, "trace_id": trace_id or None, "time_range": (t0, t1),
            "debug": bool(b.get("DEBUG"))}, cfg


def routes(deps) -> list[Route]:
    """``POST /v1/stats/querier/L7FlowTracing`` (deepflow-app's API, for DeepFlow's Grafana tracing panel)."""
    d = as_deps(deps)

    async def l7_flow_tracing(request: Request) -> Response:
        """DeepFlow: assemble the trace of an l7_flow_log _id or a trace_id (deepflow-app's L7FlowTracing)."""
        try:
            body = json.loads(await request.body() or b"{}")
        except ValueError as e:
            return _json({"OPT_STATUS": "INVALID_POST_DATA", "DESCRIPTION": f"the body is not JSON: {e}"}, 400)
        try:
            args, cfg = parse_l7_flow_tracing(body, d.config)
        except TraceError as e:
            return _json({"OPT_STATUS": "INVALID_POST_DATA", "DESCRIPTION": str(e)}, 400)

        def work() -> tuple[int, dict]:
            store = Store(d.engine)
            try:
                trace = assemble(store, entry_id=args["entry_id"], trace_id=args["trace_id"],
                                 time_range=args["time_range"], config=cfg)
            except TraceError as e:
                return 400, {"OPT_STATUS": "INVALID_POST_DATA", "DESCRIPTION": str(e)}
            except Exception as e:
                return 500, {"OPT_STATUS": "SERVER_ERROR", "DESCRIPTION": f"{type(e).__name__}: {e}",
                             **({"DEBUG": {"query_sqls": store.log}} if args["debug"] else {})}
            what = f"_id {args['entry_id']}" if args["entry_id"] is not None else f"trace_id {args['trace_id']}"
            out = {"OPT_STATUS": "SUCCESS", "DESCRIPTION": "" if trace else f"no l7_flow_log row for {what}",
                   "TYPE": "Flow_Log_L7_Tracing", "DATA": l7_flow_tracing_data(trace)}
            if args["debug"]:
                out["DEBUG"] = {"query_sqls": store.log}
            return 200, out

        status, out = await WORKERS.run(work)
        return _json(out, status)

    return [Route("/v1/stats/querier/L7FlowTracing", l7_flow_tracing, methods=["POST"])]
