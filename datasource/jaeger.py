"""The Jaeger query API (HTTP JSON, ``/api/...``) under ``/jaeger``, for Grafana's built-in Jaeger
datasource (grafana/grafana ``pkg/tsdb/jaeger``): its Traces panel, search and dependency graph work
on flowscope's assembled traces with no plugin (grafana-integration.md §3b).

* ``GET /jaeger/api/services`` → ``{"data": [names], "total", "limit", "offset", "errors"}``; also
  Grafana's "Save & test".
* ``GET /jaeger/api/services/{service}/operations`` → ``{"data": [operation names], …}``.
* ``GET /jaeger/api/traces?service=&operation=&tags=&minDuration=&maxDuration=&limit=&start=&end=&lookback=``
  → ``{"data": [Trace], …}``: the most recent requests matching, each assembled into its trace.
  ``tags`` is Jaeger's JSON map; ``start``/``end`` µs (any epoch unit is recognised), else ``lookback``
  (``1h``, ``2d``; default 1 h before now). Also served at ``/api/traces``: older Grafana versions
  replace the datasource URL's path for this one call.
* ``GET /jaeger/api/traces/{id}`` (optional ``start``/``end``) → ``{"data": [Trace]}``; ``id`` is a trace
  id, or for a trace without one (network spans only) the hex of its entry ``_id``, as search reports it.
* ``GET /jaeger/api/dependencies?endTs=<ms>&lookback=<ms>`` → ``{"data": [{"parent", "child",
  "callCount"}]}``: calls between services, each request counted once (at the capture point that saw
  the most).

Spans: ``serviceName`` is the OTel service for app spans and the service (Kubernetes Service,
workload, host… else the IP) of the side that emitted the span for network and eBPF spans (client
side for c*, server side for s*); ``operationName`` is ``METHOD endpoint`` for HTTP, else the endpoint
or request type; times are integer µs; tags carry the observation point, capture NIC, protocol fields,
the link rule and the self time; the root span's warnings and the trace's say how complete it is.
"""

from __future__ import annotations

import json
import re
import time
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from datasource.tracing import (
    _IP,
    EBPF,
    L7_TABLE,
    OTEL,
    PACKET,
    Span,
    Store,
    Trace,
    TraceError,
    as_deps,
    assemble,
    assemble_many,
    dfs_order,
)
from datasource.worker import WORKERS
from flowscope.enums import L7_PROTOCOLS

DEFAULT_LOOKBACK_S = 3600
DEFAULT_LIMIT = 20
MAX_LIMIT = 200
SEARCH_BUDGET_S = 20.0            # stop assembling search results after this long (partial answer)
SEARCH_BATCH = 4                  # search results assembled side by side (more: the queries grow and slow down)
_HEX = re.compile(r"^[0-9a-f]{1,32}$")
_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ns|us|µs|ms|s|m|h)")
_DURATION_US = {"ns": 0.001, "us": 1, "µs": 1, "ms": 1000, "s": 1_000_000, "m": 60_000_000, "h": 3_600_000_000}
_LOOKBACK = re.compile(r"^(\d+(?:\.\d+)?)([smhdw])$")
_LOOKBACK_S = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


class BadRequest(ValueError):
    pass


# -- names, the same in SQL and in Python -------------------------------------------------------------------------
def _side_name_sql(s: int) -> str:
    ip = _IP.format(s=s)
    return (f"if(auto_service_type_{s} IN (0, 255), {ip}, dictGetOrDefault('flow_tag.device_map', 'name', "
            f"(toUInt64(auto_service_type_{s}), toUInt64(auto_service_id_{s})), {ip}))")


# the service that emitted a span: app spans their service.name, the others the service of their side
SERVICE_SQL = (f"if(signal_source = {OTEL} AND app_service != '', toString(app_service), "
               f"if(startsWith(observation_point, 'c'), {_side_name_sql(0)}, {_side_name_sql(1)}))")
_L7_NAME_SQL = ("transform(l7_protocol, [" + ", ".join(str(k) for k in L7_PROTOCOLS) + "], ["
                + ", ".join(f"'{v}'" for v in L7_PROTOCOLS.values()) + "], '')")
OPERATION_SQL = ("multiIf(l7_protocol IN (20, 21) AND request_type != '' AND endpoint != '' "
                 "AND NOT startsWith(endpoint, concat(toString(request_type), ' ')), "
                 "concat(toString(request_type), ' ', endpoint), endpoint != '', endpoint, "
                 f"request_type != '', toString(request_type), {_L7_NAME_SQL})")


def service_name(s: Span) -> str:
    r = s.row
    if s.is_app and r["app_service"]:
        return r["app_service"]
    side = 0 if s.side.startswith("c") else 1
    return r.get(f"auto_service_{side}") or r[f"ip_{side}"]


def operation_name(r: dict) -> str:
    rt, ep = r["request_type"], r["endpoint"]
    if r["l7_protocol"] in (20, 21) and rt and ep and not ep.startswith(rt + " "):
        return f"{rt} {ep}"
    return ep or rt or L7_PROTOCOLS.get(r["l7_protocol"], "")


# -- Trace → Jaeger JSON --------------------------------------------------------------------------------------------
def _kv(key: str, value: Any) -> dict:
    if isinstance(value, bool):
        return {"key": key, "type": "bool", "value": value}
    if isinstance(value, int):
        return {"key": key, "type": "int64", "value": value}
    if isinstance(value, float):
        return {"key": key, "type": "float64", "value": value}
    return {"key": key, "type": "string", "value": "" if value is None else str(value)}


def trace_id_of(trace: Trace) -> str:
    return trace.trace_id or format(trace.entry_id, "032x")


def span_id_of(s: Span) -> str:
    return s.row["span_id"] if s.is_app and s.row["span_id"] else format(s.ids[0], "016x")


_KIND = {"c": "client", "s": "server"}


def _tags(s: Span) -> list[dict]:
    r = s.row
    kind = "internal" if s.side == "app" else _KIND.get(s.side[:1], "internal")
    if r.get("span_kind") == 4:
        kind = "producer"
    elif r.get("span_kind") == 5:
        kind = "consumer"
    status = r.get("response_status", 0)
    tags = [_kv("span.kind", kind), _kv("flowscope.observation_point", s.side),
            _kv("flowscope.signal_source", {PACKET: "packet", EBPF: "ebpf", OTEL: "otel"}.get(r["signal_source"], "")),
            _kv("flowscope.l7_protocol", L7_PROTOCOLS.get(r["l7_protocol"], str(r["l7_protocol"]))),
            _kv("flowscope.self_time_us", s.selftime), _kv("flowscope._id", str(s.ids[0])),
            _kv("flowscope.found_by", s.found_by)]
    if s.link:
        tags.append(_kv("flowscope.link", s.link))
    if not s.is_app:
        tags += [_kv("flowscope.capture_nic", r.get("tap_port_name") or str(r["tap_port"])),
                 _kv("flowscope.agent_id", r["vtap_id"])]
    for key, col in (("request_type", "request_type"), ("request_domain", "request_domain"),
                     ("request_resource", "request_resource"), ("endpoint", "endpoint"),
                     ("response_exception", "response_exception"), ("x_request_id_0", "x_request_id_0"),
                     ("x_request_id_1", "x_request_id_1"), ("trace_id", "trace_id"), ("span_id", "span_id")):
        if r.get(col):
            tags.append(_kv(key, r[col]))
    if r.get("response_code") is not None:
        tags.append(_kv("response_code", int(r["response_code"])))
    tags.append(_kv("response_status", int(status)))
    if status in (3, 4):
        tags.append(_kv("error", True))
    for key, col in (("peer.ip_0", "ip_0"), ("peer.ip_1", "ip_1")):
        if r.get(col) not in (None, "", "0.0.0.0", "::"):
            tags.append(_kv(key, r[col]))
    if r.get("client_port"):
        tags.append(_kv("client_port", r["client_port"]))
    if r.get("server_port"):
        tags.append(_kv("server_port", r["server_port"]))
    if r.get("req_tcp_seq"):
        tags.append(_kv("req_tcp_seq", r["req_tcp_seq"]))
    if r.get("resp_tcp_seq"):
        tags.append(_kv("resp_tcp_seq", r["resp_tcp_seq"]))
    for k, v in zip(r.get("attribute_names") or [], r.get("attribute_values") or [], strict=False):
        if not k.startswith("resource."):
            tags.append(_kv(k, v))
    return tags


def _logs(s: Span) -> list[dict]:
    events = s.row.get("events") or ""
    if not events:
        return []
    try:
        items = json.loads(events)
    except ValueError:
        return []
    out = []
    for ev in items if isinstance(items, list) else []:
        fields = [_kv("event", ev.get("name", ""))]
        fields += [_kv(k, v if isinstance(v, bool | int | float) else json.dumps(v) if isinstance(v, list | dict) else v)
                   for k, v in (ev.get("attributes") or {}).items()]
        out.append({"timestamp": int(ev.get("time_us", s.start)), "fields": fields})
    return out


def completeness_lines(c: dict) -> list[str]:
    lines = [f"flowscope: {c['linked']} of {c['spans']} spans linked into the tree, {c['roots']} root(s), "
             f"score {c['score']:.2f}; found by " + ", ".join(f"{k} {v}" for k, v in sorted(c["found_by"].items()))
             + "; linked by " + ", ".join(f"{k} {v}" for k, v in sorted(c["linked_by"].items()))]
    if c["truncated"]:
        lines.append("flowscope: the search stopped at the span limit; the trace may be incomplete")
    if c["pruned"]:
        lines.append(f"flowscope: {c['pruned']} spans in unrelated trees were left out")
    for conflict in c["conflicts"][:10]:
        lines.append(f"flowscope: {conflict['kind']} ({conflict['rule']}) at span {conflict['child']}: {conflict['detail']}")
    return lines


def jaeger_trace(trace: Trace) -> dict:
    tid = trace_id_of(trace)
    procs: dict[tuple, str] = {}
    processes: dict[str, dict] = {}
    spans = []
    ordered = dfs_order(trace.spans)
    summary = completeness_lines(trace.completeness)
    for s in ordered:
        r = s.row
        name = service_name(s)
        side = 0 if s.side.startswith("c") else 1
        instance = r.get("app_instance") if s.is_app else r.get(f"auto_instance_{side}", "")
        key = (name, instance or "", r[f"ip_{side}"])
        pid = procs.get(key)
        if pid is None:
            pid = procs[key] = f"p{len(procs) + 1}"
            ptags = [_kv("ip", r[f"ip_{side}"])]
            if instance:
                ptags.append(_kv("instance", instance))
            processes[pid] = {"serviceName": name, "tags": ptags}
        warnings = list(s.warnings)
        if s.parent < 0 and s.index == ordered[0].index:
            warnings = summary + warnings
        spans.append({
            "traceID": tid, "spanID": span_id_of(s), "operationName": operation_name(r),
            "references": [{"refType": "CHILD_OF", "traceID": tid, "spanID": span_id_of(trace.spans[s.parent])}]
            if s.parent >= 0 else [],
            "startTime": int(s.start), "duration": int(s.duration), "tags": _tags(s), "logs": _logs(s),
            "processID": pid, "warnings": warnings or None, "flags": 1,
        })
    return {"traceID": tid, "spans": spans, "processes": processes, "warnings": summary}


# -- request parsing -----------------------------------------------------------------------------------------------
def parse_duration_us(text: str, what: str) -> int | None:
    """Go duration strings as Jaeger takes them (``1.2s``, ``100ms``, ``1m30s``) → µs."""
    if not text:
        return None
    pos, total = 0, 0.0
    for m in _DURATION.finditer(text):
        if m.start() != pos:
            break
        total += float(m.group(1)) * _DURATION_US[m.group(2)]
        pos = m.end()
    if pos != len(text) or pos == 0:
        raise BadRequest(f"{what}: not a duration: {text!r} (e.g. 1.2s, 100ms, 500us)")
    return int(total)


def epoch_s(value: str, what: str) -> int:
    """An epoch time in s, ms, µs or ns (by magnitude) → seconds."""
    try:
        v = float(value)
    except ValueError:
        raise BadRequest(f"{what}: not a number: {value!r}") from None
    for limit, div in ((1e11, 1), (1e14, 1e3), (1e17, 1e6)):
        if v < limit:
            return int(v / div)
    return int(v / 1e9)


def time_range(params, now: float | None = None) -> tuple[int, int]:
    now = time.time() if now is None else now
    end = epoch_s(params["end"], "end") if params.get("end") else int(now) + 1
    if params.get("start"):
        start = epoch_s(params["start"], "start")
    else:
        lb = params.get("lookback", "") or "1h"
        m = _LOOKBACK.match(lb)
        if lb == "custom" or not m:
            if lb != "custom":
                raise BadRequest(f"lookback: {lb!r} (e.g. 1h, 2d)")
            m = _LOOKBACK.match("1h")
        start = end - int(float(m.group(1)) * _LOOKBACK_S[m.group(2)])
    if end < start:
        raise BadRequest(f"end ({end}) is before start ({start})")
    return start, end


def _limit(params) -> int:
    raw = params.get("limit", "")
    if not raw:
        return DEFAULT_LIMIT
    if not raw.isdigit():
        raise BadRequest(f"limit: not a number: {raw!r}")
    return max(1, min(int(raw), MAX_LIMIT))


# tags a search can filter on: Jaeger tag → (SQL over l7_flow_log, ClickHouse type of the value)
TAG_COLUMNS = {
    "error": ("response_status IN (3, 4)", None),
    "http.status_code": ("response_code", "Int32"), "response_code": ("response_code", "Int32"),
    "http.method": ("request_type", "String"), "request_type": ("request_type", "String"),
    "request_domain": ("request_domain", "String"), "endpoint": ("endpoint", "String"),
    "request_resource": ("request_resource", "String"), "trace_id": ("trace_id", "String"),
    "x_request_id": (None, "String"), "flowscope.observation_point": ("observation_point", "String"),
    "observation_point": ("observation_point", "String"), "span.kind": (None, "String"),
    "flowscope.l7_protocol": (_L7_NAME_SQL, "String"), "l7_protocol": (_L7_NAME_SQL, "String"),
}


def tag_filters(raw: str) -> tuple[list[str], dict]:
    if not raw:
        return [], {}
    try:
        tags = json.loads(raw)
    except ValueError:
        raise BadRequest(f"tags: not a JSON object: {raw[:100]!r}") from None
    if not isinstance(tags, dict):
        raise BadRequest("tags: must be a JSON object {\"key\": \"value\"}")
    conds, params = [], {}
    for i, (k, v) in enumerate(sorted(tags.items())):
        v = str(v)
        p = f"tag{i}"
        col, typ = TAG_COLUMNS.get(k, (None, None))
        if k == "error":
            conds.append(col if v.lower() == "true" else f"NOT ({col})")
        elif k == "x_request_id":
            conds.append(f"(x_request_id_0 = {{{p}:String}} OR x_request_id_1 = {{{p}:String}})")
            params[p] = v
        elif k == "span.kind":
            side = {"client": "c", "server": "s", "producer": "c", "consumer": "s"}.get(v.lower())
            conds.append(f"startsWith(observation_point, {{{p}:String}})" if side else "observation_point = 'app'")
            if side:
                params[p] = side
        elif col is not None and typ == "Int32":
            try:
                params[p] = int(v)
            except ValueError:
                raise BadRequest(f"tags: {k} must be an integer, got {v!r}") from None
            conds.append(f"{col} = {{{p}:Int32}}")
        elif col is not None:
            conds.append(f"{col} = {{{p}:String}}")
            params[p] = v
        else:        # any other key: an OTel attribute or extra header of the row
            conds.append(f"has(arrayZip(arrayMap(x -> toString(x), attribute_names), attribute_values), "
                         f"({{{p}k:String}}, {{{p}:String}}))")
            params[p], params[f"{p}k"] = v, k
    return conds, params


# -- queries -------------------------------------------------------------------------------------------------------
def list_services(store: Store, t0: int, t1: int) -> list[str]:
    side = "startsWith(observation_point, 'c')"
    rows = store.query(
        "SELECT DISTINCT if(app != '', app, if(typ IN (0, 255), ip, dictGetOrDefault('flow_tag.device_map', 'name', "
        "(toUInt64(typ), toUInt64(sid)), ip))) AS service FROM ("
        f"SELECT if(signal_source = {OTEL}, toString(app_service), '') AS app, "
        f"if({side}, auto_service_type_0, auto_service_type_1) AS typ, if({side}, auto_service_id_0, auto_service_id_1) AS sid, "
        f"if(typ IN (0, 255), if({side}, {_IP.format(s=0)}, {_IP.format(s=1)}), '') AS ip "
        f"FROM {L7_TABLE} WHERE time >= toDateTime({{t0:UInt32}}) AND time <= toDateTime({{t1:UInt32}}) "
        "GROUP BY app, typ, sid, ip) WHERE service != '' ORDER BY service LIMIT 10000", {"t0": t0, "t1": t1})
    return [r["service"] for r in rows]


def list_operations(store: Store, service: str, t0: int, t1: int) -> list[str]:
    rows = store.query(
        f"SELECT DISTINCT operation FROM (SELECT {SERVICE_SQL} AS service, {OPERATION_SQL} AS operation "
        f"FROM {L7_TABLE} WHERE time >= toDateTime({{t0:UInt32}}) AND time <= toDateTime({{t1:UInt32}})) "
        "WHERE service = {svc:String} AND operation != '' ORDER BY operation LIMIT 10000",
        {"t0": t0, "t1": t1, "svc": service})
    return [r["operation"] for r in rows]


def search_entries(store: Store, params, t0: int, t1: int, limit: int) -> list[tuple[int, str]]:
    """The requests matching a search, newest first: (_id, the trace id or else an X-Request-ID it
    carries — rows alike in it are likely one trace)."""
    conds, qp = tag_filters(params.get("tags", ""))
    qp.update(t0=t0, t1=t1, lim=limit * 25)
    outer = []
    if params.get("service"):
        outer.append("service = {svc:String}")
        qp["svc"] = params["service"]
    if params.get("operation"):
        outer.append("operation = {op:String}")
        qp["op"] = params["operation"]
    lo = parse_duration_us(params.get("minDuration", ""), "minDuration")
    hi = parse_duration_us(params.get("maxDuration", ""), "maxDuration")
    if lo is not None:
        conds.append("response_duration >= {dlo:UInt64}")
        qp["dlo"] = lo
    if hi is not None:
        conds.append("response_duration <= {dhi:UInt64}")
        qp["dhi"] = hi
    where = " AND ".join(["time >= toDateTime({t0:UInt32})", "time <= toDateTime({t1:UInt32})", "type != 1", *conds])
    rows = store.query(
        "SELECT _id, link FROM (SELECT _id, start_time, if(trace_id != '', trace_id, if(x_request_id_0 != '', "
        f"x_request_id_0, x_request_id_1)) AS link, {SERVICE_SQL} AS service, "
        f"{OPERATION_SQL} AS operation FROM {L7_TABLE} WHERE {where}) "
        f"{'WHERE ' + ' AND '.join(outer) if outer else ''} ORDER BY start_time DESC, _id DESC LIMIT {{lim:UInt32}}", qp)
    return [(r["_id"], r["link"]) for r in rows]


def _batch(entries: list[tuple[int, str]], seen: set[int], done: dict, n: int) -> list[int]:
    """The next entries to assemble together: not in a trace already made, one per trace id or
    X-Request-ID (an entry of a trace in the batch is usually among its spans, and skipped then)."""
    out: list[int] = []
    tids: set[str] = set()
    for e, tid in entries:
        if e in seen or e in done or (tid and tid in tids):
            continue
        out.append(e)
        tids.add(tid)
        if len(out) >= n:
            break
    return out


def dependencies(store: Store, t0: int, t1: int) -> list[dict]:
    parent = f"if(signal_source = {OTEL} AND observation_point = 'c-app', toString(app_service), {_side_name_sql(0)})"
    child = f"if(signal_source = {OTEL} AND observation_point = 's-app', toString(app_service), {_side_name_sql(1)})"
    rows = store.query(
        f"SELECT parent, child, max(n) AS callCount FROM (SELECT {parent} AS parent, {child} AS child, "
        f"observation_point, count() AS n FROM {L7_TABLE} WHERE time >= toDateTime({{t0:UInt32}}) "
        "AND time <= toDateTime({t1:UInt32}) AND type != 1 AND observation_point != 'app' "
        "GROUP BY parent, child, observation_point) WHERE parent != child AND parent != '' AND child != '' "
        "GROUP BY parent, child ORDER BY callCount DESC, parent, child LIMIT 10000", {"t0": t0, "t1": t1})
    return [{"parent": r["parent"], "child": r["child"], "callCount": int(r["callCount"])} for r in rows]


def find_trace(store: Store, trace_id: str, t_range: tuple[int, int] | None, cfg) -> Trace | None:
    tid = trace_id.strip().lower()
    if not _HEX.match(tid):
        raise BadRequest(f"trace id {trace_id[:64]!r} is not hex")
    variants = {tid, tid.zfill(32), tid.lstrip("0").zfill(16)}
    lo, hi = t_range if t_range else (None, None)
    where = "trace_id IN {tids:Array(String)}"
    qp: dict = {"tids": sorted(variants)}
    if lo is not None:
        where += " AND time >= toDateTime({t0:UInt32}) AND time <= toDateTime({t1:UInt32})"
        qp.update(t0=lo, t1=hi)
    rows = store.query(f"SELECT _id FROM {L7_TABLE} WHERE {where} ORDER BY start_time, signal_source LIMIT 1", qp)
    if rows:
        return assemble(store, entry_id=rows[0]["_id"], time_range=(lo, hi), config=cfg)
    n = int(tid, 16)
    if n < 2**64 and n >> 32:          # the hex of an entry _id (a trace without a trace id)
        return assemble(store, entry_id=n, time_range=(lo, hi), config=cfg)
    return None


# -- HTTP -----------------------------------------------------------------------------------------------------------
def _json(obj, status: int = 200) -> Response:
    return Response(json.dumps(obj, ensure_ascii=False, allow_nan=False, separators=(",", ":")).encode(), status,
                    media_type="application/json")


def _list(data: list, errors=None) -> dict:
    return {"data": data, "total": len(data), "limit": 0, "offset": 0, "errors": errors}


def _error(status: int, msg: str) -> Response:
    return _json({"data": None, "total": 0, "limit": 0, "offset": 0, "errors": [{"code": status, "msg": msg}]}, status)


def routes(deps) -> list[Route]:
    """The Jaeger query API under /jaeger (and the search at /api/traces, see the module doc)."""
    d = as_deps(deps)

    async def run(fn, *args) -> Response:
        def work():
            try:
                return fn(Store(d.engine), *args)
            except (BadRequest, TraceError) as e:
                return _error(400, str(e))
            except Exception as e:
                return _error(500, f"{type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}")
        return await WORKERS.run(work)

    def _range(params) -> tuple[int, int]:
        return time_range(params) if params.get("start") or params.get("end") else time_range(
            {"lookback": params.get("lookback") or "2d"})

    async def services(request: Request) -> Response:
        """Jaeger: the services that emitted spans (start/end µs or lookback; default 2 days)."""
        params = request.query_params
        return await run(lambda st: _json(_list(list_services(st, *_range(params)))))

    async def operations(request: Request) -> Response:
        """Jaeger: a service's operation names."""
        params = request.query_params
        svc = request.path_params["service"]
        return await run(lambda st: _json(_list(list_operations(st, svc, *_range(params)))))

    async def search(request: Request) -> Response:
        """Jaeger: find traces (service, operation, tags, minDuration, maxDuration, limit, start/end or lookback)."""
        params = request.query_params

        def work(st: Store) -> Response:
            t0, t1 = time_range(params)
            limit = _limit(params)
            deadline = time.monotonic() + SEARCH_BUDGET_S
            traces, seen, errors = [], set(), None
            entries = search_entries(st, params, t0, t1, limit)
            done: dict[int, Trace | None] = {}
            for k, (entry, _) in enumerate(entries):
                if entry in seen:
                    continue
                if time.monotonic() > deadline:
                    errors = [{"code": 504, "msg": f"search stopped after {SEARCH_BUDGET_S:.0f} s; "
                                                   f"{len(traces)} traces assembled"}]
                    break
                if entry not in done:
                    batch = _batch(entries[k:], seen, done, min(SEARCH_BATCH, limit - len(traces)))
                    done.update(assemble_many(Store(d.engine), batch, time_range=(t0 - 60, t1 + 60), config=d.config))
                tr = done[entry]
                if tr is None:
                    continue
                seen.update(i for s in tr.spans for i in s.ids)
                traces.append(jaeger_trace(tr))
                if len(traces) >= limit:
                    break
            return _json(_list(traces, errors))

        return await run(work)

    async def trace(request: Request) -> Response:
        """Jaeger: one trace by trace id (or the hex of an entry _id)."""
        params = request.query_params
        tid = request.path_params["trace_id"]

        def work(st: Store) -> Response:
            rng = time_range(params) if params.get("start") or params.get("end") else None
            tr = find_trace(st, tid, rng, d.config)
            if tr is None:
                return _error(404, f"trace not found: {tid}")
            return _json({"data": [jaeger_trace(tr)], "total": 1, "limit": 0, "offset": 0, "errors": None})

        return await run(work)

    async def deps_graph(request: Request) -> Response:
        """Jaeger: calls between services (endTs, lookback in ms)."""
        params = request.query_params

        def work(st: Store) -> Response:
            end_ms = epoch_s(params["endTs"], "endTs") * 1000 if params.get("endTs") else int(time.time() * 1000)
            lookback = params.get("lookback", "")
            if lookback and not lookback.isdigit():
                raise BadRequest(f"lookback: milliseconds expected, got {lookback!r}")
            lb_ms = int(lookback) if lookback else 24 * 3600 * 1000
            t1 = end_ms // 1000 + 1
            return _json({"data": dependencies(st, max(0, t1 - lb_ms // 1000 - 1), t1), "errors": None})

        return await run(work)

    return [
        Route("/jaeger/api/services", services, methods=["GET"]),
        Route("/jaeger/api/services/{service:path}/operations", operations, methods=["GET"]),
        Route("/jaeger/api/traces", search, methods=["GET"]),
        Route("/jaeger/api/traces/{trace_id}", trace, methods=["GET"]),
        Route("/jaeger/api/dependencies", deps_graph, methods=["GET"]),
        Route("/api/traces", search, methods=["GET"]),
    ]
