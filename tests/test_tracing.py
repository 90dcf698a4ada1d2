"""Trace assembly on real traffic: the tracing lab (tests/data/gen/trace_lab.py) — client → nginx
(injects X-Request-ID) → api (OpenTelemetry SDK) → Redis, MariaDB and an uninstrumented stock service —
captured at client/eth0, proxy/eth0, proxy/eth1, api/eth0 and stock/eth0, with the OTLP exports the
api's SDK sent. Every request of tests/data/truth/trace_lab.json must come back as one tree with each
hop once per capture point, in order, with consistent durations and its app spans on the network
spans of the same calls; plus eBPF-shaped spans, degraded inputs, bounds, cycles and conflicts.
"""

from __future__ import annotations

import datetime as dt
from collections import Counter

import pytest

from datasource import tracing
from datasource.tracing import OTEL, PACKET, Span, TraceConfig, Tree
from tests.tracing_store import L7, TRUTH, open_lab

REQUESTS = TRUTH["requests"]
ORDER, CART = REQUESTS[0], next(r for r in REQUESTS if r["path"].startswith("/api/cart"))
SKEW = TraceConfig().host_clock_offset_us
PORTS = TRUTH["ports"]


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    yield from open_lab(tmp_path_factory.mktemp("tracing"))


def nic(s: Span) -> str:
    return s.row.get("tap_port_name") or ""


def expected_network(request: dict) -> Counter:
    """(capture NIC, observation point, server port) of every network span a request must have."""
    calls = 4 if request["path"].startswith("/api/cart") else 1
    redis = calls + (1 if calls > 1 else 0)            # the cart also SETs the cart
    return Counter({("client/eth0", "c", 80): 1, ("proxy/eth0", "s", 80): 1,
                    ("proxy/eth1", "c", PORTS["api"]): 1, ("api/eth0", "s", PORTS["api"]): 1,
                    ("api/eth0", "c", PORTS["redis"]): redis, ("api/eth0", "c", PORTS["db"]): 1,
                    ("api/eth0", "c", PORTS["stock"]): calls, ("stock/eth0", "s", PORTS["stock"]): calls})


@pytest.fixture(scope="module")
def traces(lab) -> dict[str, tracing.Trace]:
    return {r["path"]: tracing.assemble(lab.engine, entry_id=lab.entry(r)) for r in REQUESTS}


def test_otlp_exports_were_accepted(lab):
    assert lab.otlp_responses and all(s == 200 for s, _, _ in lab.otlp_responses)
    [[n]] = lab.client.query(f"SELECT count() FROM {L7} WHERE signal_source = 4").result_rows
    assert n == sum(r["spans"] for r in REQUESTS)


@pytest.mark.parametrize("request_", REQUESTS, ids=[r["path"] for r in REQUESTS])
def test_every_hop_once_per_capture_point(lab, traces, request_):
    tr = traces[request_["path"]]
    net = Counter((nic(s), s.side, s.row["server_port"]) for s in tr.spans if s.row["signal_source"] == PACKET)
    assert net == expected_network(request_)
    apps = [s for s in tr.spans if s.is_app]
    assert len(apps) == request_["spans"] and {s.row["trace_id"] for s in apps} == {request_["trace_id"]}
    [[n_app]] = lab.client.query(f"SELECT count() FROM {L7} WHERE trace_id = {{t:String}} AND signal_source = 4",
                                 parameters={"t": request_["trace_id"]}).result_rows
    assert len(apps) == n_app
    ids = [i for s in tr.spans for i in s.ids]
    assert len(ids) == len(set(ids))
    c = tr.completeness
    assert (c["roots"], c["score"], c["conflicts"], c["truncated"]) == (1, 1.0, [], False)
    assert c["spans"] == len(tr.spans) == sum(expected_network(request_).values()) + request_["spans"]
    assert sum(c["linked_by"].values()) == len(tr.spans) - 1


def _children(tr, s: Span) -> list[Span]:
    return [tr.spans[i] for i in s.children]


def _only(spans: list[Span], **want) -> Span:
    hits = [s for s in spans if all((nic(s) if k == "nic" else s.side if k == "side" else s.row[k]) == v
                                    for k, v in want.items())]
    assert len(hits) == 1, f"{want}: {len(hits)} spans"
    return hits[0]


@pytest.mark.parametrize("request_", REQUESTS, ids=[r["path"] for r in REQUESTS])
def test_parent_child_order(traces, request_):
    """client NIC → proxy front NIC → proxy back NIC → api NIC → the api's server span → its calls,
    each call's client span → its network span(s) → the stock service's NIC."""
    tr = traces[request_["path"]]
    [root] = [s for s in tr.spans if s.parent < 0]
    assert (nic(root), root.side) == ("client/eth0", "c")
    chain = [root]
    for want_nic, want_side, link in (("proxy/eth0", "s", "network"), ("proxy/eth1", "c", "x_request_id"),
                                      ("api/eth0", "s", "network")):
        [child] = _children(tr, chain[-1])
        assert (nic(child), child.side, child.link) == (want_nic, want_side, link)
        chain.append(child)
    [server] = _children(tr, chain[-1])
    assert (server.side, server.is_app, server.link) == ("s-app", True, "x_request_id")
    assert server.row["x_request_id_0"] == request_["x_request_id"] == root.row["x_request_id_1"]
    calls = _children(tr, server)
    assert all(s.is_app and s.row["parent_span_id"] == server.row["span_id"] for s in calls)
    assert len(calls) == request_["spans"] - 1
    for call in calls:
        kids = _children(tr, call)
        if call.side == "app":                     # the in-process "price" span
            assert kids == [] and call.row["endpoint"] == "price"
            continue
        [net] = kids                               # the call as the api's NIC saw it
        assert (nic(net), net.side, net.row["server_port"]) == ("api/eth0", "c", call.row["server_port"])
        assert net.row["client_port"] == call.row["client_port"]
        if net.row["server_port"] == PORTS["stock"]:      # traceparent: the network span carries the call's span id
            assert (net.link, net.row["span_id"], net.row["trace_id"]) == ("span_id", call.row["span_id"],
                                                                          request_["trace_id"])
            [far] = _children(tr, net)
            assert (nic(far), far.side, far.link) == ("stock/eth0", "s", "network")
            assert far.row["req_tcp_seq"] == net.row["req_tcp_seq"]
        else:
            assert net.link == "tuple" and net.children == []


@pytest.mark.parametrize("request_", REQUESTS, ids=[r["path"] for r in REQUESTS])
def test_durations_consistent(traces, request_):
    tr = traces[request_["path"]]
    for s in tr.spans:
        assert s.duration > 0 and 0 <= s.selftime <= s.duration
        if s.parent >= 0:
            p = tr.spans[s.parent]
            assert p.start - SKEW <= s.start and s.end <= p.end + SKEW, (p.row["endpoint"], s.row["endpoint"])
    [root] = [s for s in tr.spans if s.parent < 0]
    # calls are sequential here, so the self times add up to the whole request
    assert abs(sum(s.selftime for s in tr.spans) - root.duration) <= root.duration * 0.01
    total = sum(e["duration"] for e in tr.services)
    assert total == sum(s.selftime for s in tr.spans)
    assert abs(sum(float(e["duration_ratio"]) for e in tr.services) - 100) < 0.05
    names = {e["service_uname"] for e in tr.services}
    assert {"client", "proxy", "api", "stock"} <= names
    assert [e["duration"] for e in tr.services] == sorted((e["duration"] for e in tr.services), reverse=True)


def test_concurrent_requests_keep_their_own_calls(traces):
    """/api/order/4 and /5 ran at the same time over the api's one Redis and one MariaDB connection:
    each app call span gets the network span it covers best, none is shared."""
    a, b = traces["/api/order/4"], traces["/api/order/5"]
    ids_a = {i for s in a.spans for i in s.ids}
    ids_b = {i for s in b.spans for i in s.ids}
    assert not ids_a & ids_b
    for tr in (a, b):
        for s in tr.spans:
            if s.is_app and s.side == "c-app":
                [net] = _children(tr, s)
                assert s.start <= net.start and net.end <= s.end


@pytest.mark.parametrize("path", [ORDER["path"], CART["path"]])
def test_any_span_leads_to_the_same_trace(lab, traces, path):
    want = {i for s in traces[path].spans for i in s.ids}
    for i in sorted(want):
        tr = tracing.assemble(lab.engine, entry_id=i)
        assert {j for s in tr.spans for j in s.ids} == want, f"from {i}"
        assert tr.completeness["roots"] == 1


def test_trace_id_entry(lab, traces):
    for r in (ORDER, CART):
        tr = tracing.assemble(lab.engine, trace_id=r["trace_id"])
        assert {i for s in tr.spans for i in s.ids} == {i for s in traces[r["path"]].spans for i in s.ids}


def test_unknown_entry(lab):
    assert tracing.assemble(lab.engine, entry_id=(1 << 32) | 5) is None
    assert tracing.assemble(lab.engine, trace_id="0" * 31 + "1") is None


def _same(tr: tracing.Trace) -> tuple:
    """A trace as its answers show it (the search's timing and the order of its samples aside)."""
    data = tracing.l7_flow_tracing_data(tr)
    c = {k: v for k, v in data["completeness"].items() if k != "elapsed_ms"}
    c["rejected_samples"] = sorted(c["rejected_samples"], key=lambda x: x["_id"])
    return data["tracing"], data["services"], c


@pytest.mark.parametrize("cfg", [TraceConfig(), TraceConfig(signal_sources=frozenset({PACKET})),
                                 TraceConfig(max_iteration=2), TraceConfig(max_spans=6)],
                         ids=["default", "packet only", "max_iteration", "max_spans"])
def test_assemble_many_is_assemble_side_by_side(lab, traces, cfg):
    """Searches run side by side (the Jaeger search) make exactly the traces they make alone: every
    request, every span of the cart's trace as an entry, and an _id that does not exist. (Which
    rows a truncated search keeps depends on the order ClickHouse returns them in, alone too.)"""
    entries = [lab.entry(r) for r in REQUESTS] + sorted(i for s in traces[CART["path"]].spans for i in s.ids)[:8]
    entries.append((1 << 32) | 5)
    many = tracing.assemble_many(lab.engine, entries, config=cfg)
    assert list(many) == list(dict.fromkeys(entries)) and many[(1 << 32) | 5] is None
    for e in entries[:-1]:
        alone = tracing.assemble(lab.engine, entry_id=e, config=cfg)
        if alone.completeness["truncated"]:
            assert many[e].completeness["truncated"] and len(many[e].spans) <= cfg.max_spans
        else:
            assert _same(many[e]) == _same(alone), f"from {e}"


@pytest.mark.parametrize("row, ip, hit", [((1, "10.0.0.1", "::"), "10.0.0.1", 1), ((1, "10.0.0.1", "::"), "10.0.0.2", 0),
                                         ((0, "0.0.0.0", "fd00::1"), "fd00::1", 1),
                                         ((0, "0.0.0.0", "::ffff:10.0.0.1"), "10.0.0.1", 0),
                                         ((0, "0.0.0.0", "::ffff:10.0.0.1"), "::ffff:10.0.0.1", 1)])
def test_connection_keys_compare_addresses_as_numbers(lab, row, ip, hit):
    """(ports, ip_1 text) IN keys without formatting each row's address: the same rows as the text."""
    params: dict = {}
    cond = tracing._ip1_in("cn", "client_port, server_port", "UInt16, UInt16", [(5, 80, ip)], params)
    is_v4, ip4, ip6 = row
    [[by_number, by_text]] = lab.client.query(
        f"SELECT countIf({cond}), countIf(client_port = 5 AND server_port = 80 AND {tracing._IP.format(s=1)} = '{ip}') "
        f"FROM (SELECT toUInt8({is_v4}) AS is_ipv4, toIPv4('{ip4}') AS ip4_1, toIPv6('{ip6}') AS ip6_1, "
        "toUInt16(5) AS client_port, toUInt16(80) AS server_port)", parameters=params).result_rows
    assert by_number == by_text == hit


def test_network_spans_only(lab):
    """Without app (or eBPF) spans the proxy hop still stitches by X-Request-ID and TCP sequence
    numbers, but nothing says which of the api's outgoing calls served the request."""
    cfg = TraceConfig(signal_sources=frozenset({PACKET}))
    tr = tracing.assemble(lab.engine, entry_id=lab.entry(ORDER), config=cfg)
    assert Counter((nic(s), s.side) for s in tr.spans) == Counter(
        {("client/eth0", "c"): 1, ("proxy/eth0", "s"): 1, ("proxy/eth1", "c"): 1, ("api/eth0", "s"): 1})
    assert tr.completeness["found_by"] == {"entry": 1, "tcp_seq": 2, "x_request_id": 1}
    assert tr.completeness["roots"] == 1


def test_bounds(lab):
    tr = tracing.assemble(lab.engine, entry_id=lab.entry(CART), config=TraceConfig(max_spans=6))
    assert tr.completeness["truncated"] and len(tr.spans) <= 6
    tr = tracing.assemble(lab.engine, entry_id=lab.entry(CART), config=TraceConfig(max_iteration=1))
    assert tr.completeness["iterations"] == 1 and len(tr.spans) < 30


# -- eBPF: system spans (c-p / s-p) made from the lab's packet spans -----------------------------------------
DAY_US = 86400 * 1_000_000


@pytest.fixture(scope="module")
def ebpf_trace(lab, traces):
    """The network spans of /api/order/1 copied a day later (no app spans there), plus what an eBPF
    agent on the api host would add: the s-p span of the inbound request and a c-p span per outbound
    call, the calls carrying the inbound request's syscall trace id (socket_trace.bpf.c)."""
    src = traces[ORDER["path"]]
    net = {s.ids[0]: s for s in src.spans if s.row["signal_source"] == PACKET}
    res = lab.client.query(f"SELECT * FROM {L7} WHERE _id IN {{ids:Array(UInt64)}}", parameters={"ids": list(net)})
    names = list(res.column_names)
    rows = [dict(zip(names, r, strict=True)) for r in res.result_rows]
    out, seq = [], 0
    day = dt.timedelta(days=1)

    def clone(r: dict, start_us: int = 0, end_us: int = 0, **kw) -> dict:
        nonlocal seq
        seq += 1
        c = {**r, "time": r["time"] + day, "start_time": r["start_time"] + day + dt.timedelta(microseconds=start_us),
             "end_time": r["end_time"] + day + dt.timedelta(microseconds=end_us), **kw}
        c["_id"] = (((r["_id"] >> 32) + 86400) << 32) | (0x3F0 << 22) | seq
        return c

    tid, thread = 4242, 77
    ebpf = {"signal_source": 3, "capture_nic_type": 7, "capture_nic": 0}
    for r in rows:
        out.append(clone(r))
        at_api = net[r["_id"]].row["tap_port_name"] == "api/eth0"
        if at_api and r["observation_point"] == "s":
            out.append(clone(r, 40, -40, observation_point="s-p", syscall_trace_id_request=tid,
                             syscall_trace_id_response=tid + 1, syscall_thread_1=thread, process_kname_1="python3",
                             process_id_1=999, **ebpf))
        elif at_api and r["observation_point"] == "c":
            out.append(clone(r, -20, 20, observation_point="c-p", syscall_trace_id_request=tid,
                             syscall_thread_0=thread, process_kname_0="python3", process_id_0=999, **ebpf))
    lab.client.insert(L7, [[row[n] for n in names] for row in out], column_names=names)
    entry = next(r["_id"] for r in out if r["observation_point"] == "c" and r["x_request_id_1"])
    return tracing.assemble(lab.engine, entry_id=entry)


def test_ebpf_spans_stitch_the_calls(ebpf_trace):
    tr = ebpf_trace
    c = tr.completeness
    assert (c["roots"], c["conflicts"], c["by_signal_source"]) == (1, [], {"packet": 8, "ebpf": 4})
    [sp] = [s for s in tr.spans if s.side == "s-p"]
    parent = tr.spans[sp.parent]
    assert (nic(parent), parent.side, sp.link) == ("api/eth0", "s", "network")     # same bytes: same hop
    cps = _children(tr, sp)
    assert sorted(s.side for s in cps) == ["c-p"] * 3 and {s.link for s in cps} == {"syscall"}
    for cp in cps:
        [net] = _children(tr, cp)
        assert (nic(net), net.side, net.link) == ("api/eth0", "c", "network")
        assert net.row["req_tcp_seq"] == cp.row["req_tcp_seq"]
    assert c["found_by"].get("syscall") == 3


# -- the tree's rules on hand-made rows ------------------------------------------------------------------------
def _row(i: int, **kw) -> dict:
    r = dict.fromkeys([*tracing.LINK_COLUMNS, *tracing.TREE_COLUMNS], 0)
    r.update({k: "" for k in ("tap_side", "request_type", "endpoint", "trace_id", "span_id", "parent_span_id",
                               "x_request_id_0", "x_request_id_1", "app_service")})
    r.update(_id=i, ip_0="10.0.0.1", ip_1="10.0.0.2", response_code=None, request_id=None, span_kind=None, vtap_id=1,
             signal_source=OTEL, type=2, start_time_us=1000, end_time_us=2000, tap_side="app", trace_id="t1")
    r.update(kw)
    return r


def _tree(rows: list[dict]) -> Tree:
    t = Tree([Span(i, r, [r["_id"]]) for i, r in enumerate(rows)], TraceConfig())
    t.build()
    return t


def test_cycle_is_reported_not_followed():
    t = _tree([_row(1, span_id="a", parent_span_id="b"), _row(2, span_id="b", parent_span_id="a")])
    assert [c["kind"] for c in t.conflicts] == ["cycle"]
    assert sorted(s.parent for s in t.spans) == [-1, 1]           # the first link holds, the closing one not
    assert t.spans[0].warnings or t.spans[1].warnings


def test_equal_parents_are_reported():
    """Two app client spans on one connection fit the same network span equally well."""
    conn = {"ip_0": "10.0.0.1", "ip_1": "10.0.0.9", "server_port": 6379, "client_port": 40000}
    rows = [_row(1, tap_side="c-app", span_id="a1", start_time_us=1000, end_time_us=3000, **conn),
            _row(2, tap_side="c-app", span_id="a2", start_time_us=1000, end_time_us=3000, **conn),
            _row(3, tap_side="c", signal_source=PACKET, trace_id="", start_time_us=1500, end_time_us=2500,
                 req_tcp_seq=7, **conn)]
    t = _tree(rows)
    assert [c["kind"] for c in t.conflicts] == ["ambiguous"]
    assert t.spans[2].parent in (0, 1) and t.spans[2].link == "tuple"


def test_proxy_hop_needs_the_cover():
    """X-Request-ID alone does not nest a hop under one that does not cover it in time."""
    front = _row(1, signal_source=PACKET, tap_side="s", x_request_id_1="r", start_time_us=1000, end_time_us=2000)
    back = _row(2, signal_source=PACKET, tap_side="c", x_request_id_0="r", start_time_us=1900, end_time_us=5000)
    t = _tree([front, back])
    assert [s.parent for s in t.spans] == [-1, -1]
    back_ok = _row(2, signal_source=PACKET, tap_side="c", x_request_id_0="r", start_time_us=1100, end_time_us=1900)
    t = _tree([front, back_ok])
    assert [s.parent for s in t.spans] == [-1, 0] and t.spans[1].link == "x_request_id"


def test_self_time_counts_concurrent_children_once():
    rows = [_row(1, span_id="p", start_time_us=0, end_time_us=100),
            _row(2, span_id="a", parent_span_id="p", start_time_us=10, end_time_us=60),
            _row(3, span_id="b", parent_span_id="p", start_time_us=40, end_time_us=90)]
    t = _tree(rows)
    tracing.self_times(t.spans)
    assert [s.selftime for s in t.spans] == [20, 50, 50]
