"""Flows → rows: ``l4_flow_log`` rows (per 60 s window and at close) and flow-second deltas, the
input of the 1 s / 1 m network metrics (datamodel §1e, §3c).

Rows are plain tuples assembled from blocks (the flow's identity, client and
server counter blocks, latency accumulators) so that building one is a few tuple concatenations.
Column names travel with them; names starting with ``~`` are internal (the writer drops them or
derives real columns from them), ``tag_id_0/1`` expand into the resource columns at write time.
"""

from __future__ import annotations

from operator import sub

import cython

from collector.flow.model import N_LAT3, SEC, ZERO_IP6, ZERO_LAT, Flow, FlowSide, side_counters
from collector.l7.base import CLIENT_ERROR, SERVER_ERROR, SESSION, TIMEOUT, L7Message
from collector.tagging import RESOURCE_COLUMNS

LAT_NAMES = ("rtt", "rtt_client", "rtt_server", "srt", "art", "cit")

# -- l4_flow_log -----------------------------------------------------------------------------
L4_STATIC = (
    "flow_id", "signal_source", "mac_0", "mac_1", "eth_type", "vlan", "ip4_0", "ip4_1", "ip6_0", "ip6_1",
    "is_ipv4", "protocol", "client_port", "server_port", "capture_network_type_id", "capture_nic",
    "capture_nic_type", "observation_point", "agent_id", "l2_end_0", "l2_end_1", "l3_end_0", "l3_end_1",
    "tag_id_0", "tag_id_1",
)
L4_DYNAMIC = (
    "time", "_id", "start_time", "end_time", "duration", "is_new_flow", "close_type", "direction_score",
    "tcp_flags_bit_0", "tcp_flags_bit_1", "syn_seq", "syn_ack_seq", "l7_protocol", "request_domain",
)
L4_TUNNEL = (
    "tunnel_tier", "tunnel_type", "tunnel_tx_id", "tunnel_rx_id", "tunnel_tx_ip4_0", "tunnel_tx_ip4_1",
    "tunnel_rx_ip4_0", "tunnel_rx_ip4_1", "tunnel_tx_ip6_0", "tunnel_tx_ip6_1", "tunnel_rx_ip6_0",
    "tunnel_rx_ip6_1", "tunnel_is_ipv4",
)
NO_TUNNEL = (0, 0, 0, 0, 0, 0, 0, 0, ZERO_IP6, ZERO_IP6, ZERO_IP6, ZERO_IP6, 0)
# Window deltas of the client (tx) and server (rx) counters, in model.COUNTERS order.
L4_TX = ("packet_tx", "byte_tx", "l3_byte_tx", "l4_byte_tx", "retrans_tx", "zero_win_tx", "ooo_tx",
         "syn_count", "retrans_syn", "~fin_tx")
L4_RX = ("packet_rx", "byte_rx", "l3_byte_rx", "l4_byte_rx", "retrans_rx", "zero_win_rx", "ooo_rx",
         "synack_count", "retrans_synack", "~fin_rx")
L4_TOTAL = ("total_packet_tx", "total_packet_rx", "total_byte_tx", "total_byte_rx")
# Window latency: rtt* keep their max (the handshake happens once), the others sum/count/max.
L4_LAT = ("~rtt_sum", "~rtt_count", "rtt", "~rtt_client_sum", "~rtt_client_count", "rtt_client",
          "~rtt_server_sum", "~rtt_server_count", "rtt_server", "srt_sum", "srt_count", "srt_max",
          "art_sum", "art_count", "art_max", "cit_sum", "cit_count", "cit_max")
L4_L7 = ("l7_request", "l7_response", "l7_client_error", "l7_server_error", "l7_server_timeout", "rrt_sum",
         "rrt_count", "rrt_max", "l7_parse_failed")
ZERO_L4_L7 = (0,) * len(L4_L7)
L4_COLUMNS = L4_STATIC + L4_DYNAMIC + L4_TUNNEL + L4_TX + L4_RX + L4_TOTAL + L4_LAT + L4_L7

# -- flow-second deltas (metrics input) ---------------------------------------------------------
FS_KEY = ("tag_id_0", "tag_id_1", "ip4_0", "ip4_1", "ip6_0", "ip6_1", "is_ipv4", "protocol",
          "server_port", "observation_point", "capture_nic", "tunnel_type")
FS_TX = ("packet_tx", "byte_tx", "l3_byte_tx", "l4_byte_tx", "retrans_tx", "zero_win_tx", "ooo_tx",
         "syn_count", "retrans_syn", "~fin_tx")
FS_RX = ("packet_rx", "byte_rx", "l3_byte_rx", "l4_byte_rx", "retrans_rx", "zero_win_rx", "ooo_rx",
         "synack_count", "retrans_synack", "~fin_rx")
FS_LAT = tuple(f"{n}_{x}" for n in LAT_NAMES for x in ("sum", "count", "max"))
# L7 counts on the network tables (from the flow's L7 records; zero in plain flow-seconds).
FS_L7 = ("l7_request", "l7_response", "l7_client_error", "l7_server_error", "l7_timeout", "rrt_sum",
         "rrt_count", "rrt_max")
ZERO_L7 = (0,) * len(FS_L7)
FS_COLUMNS = ("time",) + FS_KEY + FS_TX + FS_RX + ("new_flow", "direction_score") + FS_LAT + FS_L7

# Application metrics input: one row per L7 record (datamodel §3b "application[_map]").
APP_METERS = ("request", "response", "client_error", "server_error", "timeout", "rrt_sum", "rrt_count",
              "rrt_max", "direction_score")
APP_COLUMNS = ("time",) + FS_KEY + ("l7_protocol", "endpoint") + APP_METERS

@cython.locals(f=Flow)
def fold_into_window(f: Flow, acc: list[int]) -> None:
    """Add one second's latency accumulators into the flow's window accumulators."""
    win = f.win_lat
    if win is None:
        f.win_lat = acc[:]
        return
    for i in range(0, N_LAT3, 3):
        if acc[i + 1]:
            win[i] += acc[i]
            win[i + 1] += acc[i + 1]
            if acc[i + 2] > win[i + 2]:
                win[i + 2] = acc[i + 2]


class RowBuilder:
    """Turns flow state into rows; holds the 60 s window bookkeeping."""

    def __init__(self, *, agent_id: int, nics: list, worker: int = 0) -> None:
        self.agent_id = agent_id
        self.nics = nics
        self.seconds: list[tuple] = []
        self.app: list[tuple] = []
        self._row_seq = 0
        # _id = end second << 32 | writer id (10 bits) << 22 | counter: one id per agent and worker
        self._id_mid = ((agent_id << 3) + worker & 0x3FF) << 22

    def keys(self, f: Flow) -> None:
        """The flow's metrics key, constant for its life (recomputed if the orientation changes)."""
        c, s = f.client, f.server
        t = f.tunnel
        f.mkey = (c.tag_id, s.tag_id, c.ip4, s.ip4, c.ip6, s.ip6, f.is_v4, f.proto, s.port, f.obs,
                  self.nics[f.nic].capture_nic, t.type if t is not None else 0)

    # -- metrics input ------------------------------------------------------------------------
    @cython.locals(f=Flow, c=FlowSide, s=FlowSide)
    def second(self, f: Flow, sec: int) -> None:
        """Deltas of one flow for second ``sec``; latency samples also fold into the window."""
        c, s = f.client, f.server
        cc, sc = side_counters(c), side_counters(s)
        dc = tuple(map(sub, cc, c.sec_snap))
        ds = tuple(map(sub, sc, s.sec_snap))
        c.sec_snap, s.sec_snap = cc, sc
        acc = f.lat
        if acc is not None:
            f.lat = None
            fold_into_window(f, acc)
            lat = tuple(acc)
        else:
            lat = ZERO_LAT
        if f.is_new_sec:
            f.is_new_sec = False
            tail = (1, f.score)
        else:
            tail = (0, f.score)
        l7 = f.l7s
        if l7 is None:
            self.seconds.append((sec,) + f.mkey + dc + ds + tail + lat + ZERO_L7)
            return
        # this second's L7 counts: on the network row, and one application row per endpoint
        f.l7s = None
        total = [0] * 8
        key = (sec,) + f.mkey
        app = self.app
        for (protocol, endpoint), counts in l7.items():
            app.append(key + (protocol, endpoint) + tuple(counts) + (f.score,))
            for i in range(7):
                total[i] += counts[i]
            if counts[7] > total[7]:
                total[7] = counts[7]
        self.seconds.append(key + dc + ds + tail + lat + tuple(total))

    def take_seconds(self) -> list[tuple]:
        out, self.seconds = self.seconds, []
        return out

    def take_app(self) -> list[tuple]:
        out, self.app = self.app, []
        return out

    # -- l4_flow_log ----------------------------------------------------------------------------
    @cython.locals(f=Flow, c=FlowSide, s=FlowSide)
    def l4_row(self, f: Flow, close_type: int, end_us: int) -> tuple:
        """The row of the current window; ``end_us`` is the last packet (close) or window end."""
        c, s = f.client, f.server
        cc, sc = side_counters(c), side_counters(s)
        end_s = end_us // SEC
        self._row_seq += 1
        dyn = (end_s, (end_s << 32) | self._id_mid | (self._row_seq & 0x3FFFFF),
               f.start_ts if f.is_new else f.win_start, end_us, f.last_ts - f.start_ts,
               1 if f.is_new else 0, close_type, f.score, c.flags, s.flags, c.isn, s.isn, f.l7_protocol,
               f.request_domain)
        cn, sn = int(c.near), int(s.near)
        static = (f.flow_id, 0, c.mac, s.mac, f.eth_type, f.vlan, c.ip4, s.ip4, c.ip6, s.ip6, f.is_v4,
                  f.proto, c.port, s.port, 3, f.mkey[10], 0, f.obs, self.agent_id, cn, sn, cn, sn,
                  c.tag_id, s.tag_id)
        lat = f.win_lat
        return (static + dyn + (NO_TUNNEL if f.tunnel is None else tunnel_block(f))
                + tuple(map(sub, cc, c.win_snap)) + tuple(map(sub, sc, s.win_snap))
                + (cc[0], sc[0], cc[1], sc[1]) + (ZERO_LAT if lat is None else tuple(lat))
                + (ZERO_L4_L7 if f.l7w is None else tuple(f.l7w)))

    @cython.locals(f=Flow, c=FlowSide, s=FlowSide)
    def new_window(self, f: Flow, start_us: int) -> None:
        """Start the next 60 s window of a live flow."""
        c, s = f.client, f.server
        c.win_snap, s.win_snap = side_counters(c), side_counters(s)
        c.flags = s.flags = 0
        f.win_lat = f.l7w = None
        f.win_start = start_us
        f.is_new = False


def tunnel_block(f: Flow) -> tuple:
    """Outer-header columns: tx from the client's packets, rx from the server's (§1b)."""
    t = f.tunnel
    tx = f.client.tun or t
    rx = f.server.tun
    if tx.is_v4:
        tx4, tx6 = (tx.src, tx.dst), (ZERO_IP6, ZERO_IP6)
    else:
        tx4, tx6 = (0, 0), (tx.src, tx.dst)
    if rx is None:
        rx_id, rx4, rx6 = 0, (0, 0), (ZERO_IP6, ZERO_IP6)
    elif rx.is_v4:
        rx_id, rx4, rx6 = rx.id, (rx.src, rx.dst), (ZERO_IP6, ZERO_IP6)
    else:
        rx_id, rx4, rx6 = rx.id, (0, 0), (rx.src, rx.dst)
    return (t.tier, t.type, tx.id, rx_id) + tx4 + rx4 + tx6 + rx6 + (t.is_v4,)


RESOURCE_0 = tuple(f"{c}_0" for c in RESOURCE_COLUMNS)
RESOURCE_1 = tuple(f"{c}_1" for c in RESOURCE_COLUMNS)


# -- l7_flow_log -------------------------------------------------------------------------------
L7_FLOW = ("flow_id", "ip4_0", "ip4_1", "ip6_0", "ip6_1", "is_ipv4", "protocol", "client_port", "server_port",
           "capture_network_type_id", "capture_nic", "capture_nic_type", "tunnel_type", "observation_point",
           "agent_id", "signal_source", "direction_score", "tag_id_0", "tag_id_1")
L7_RECORD = ("time", "_id", "start_time", "end_time", "response_duration", "l7_protocol", "biz_protocol",
             "version", "type", "is_tls", "is_reversed", "request_type", "request_domain", "request_resource",
             "endpoint", "request_id", "response_status", "response_code", "response_exception",
             "response_result", "trace_id", "span_id", "parent_span_id", "x_request_id_0", "x_request_id_1",
             "http_proxy_client", "req_tcp_seq", "resp_tcp_seq", "request_length", "response_length",
             "sql_affected_rows", "captured_request_byte", "captured_response_byte", "~attributes")
L7_COLUMNS = L7_FLOW + L7_RECORD


@cython.locals(f=Flow, c=FlowSide, s=FlowSide)
def l7_flow_part(f: Flow, agent_id: int) -> tuple:
    """The flow's share of an l7_flow_log row (its 5-tuple, capture point and resource tags)."""
    c, s = f.client, f.server
    k = f.mkey
    return (f.flow_id, c.ip4, s.ip4, c.ip6, s.ip6, f.is_v4, f.proto, c.port, s.port, 3, k[10], 0, k[11], f.obs,
            agent_id, 0, f.score, c.tag_id, s.tag_id)


@cython.locals(req=L7Message, resp=L7Message)      # both present: a paired session
def l7_session_record(req, resp, protocol: int, row_id: int, reversed_: int) -> tuple:
    """``l7_record`` of a request paired with its own response (SESSION, no status override): the
    common record, without the general case's tests for a missing half."""
    start, end = req.ts, resp.ts
    a, b = req.attributes, resp.attributes
    attrs = ({**a, **b} if b else dict(a)) if a else (dict(b) if b else None)
    return (end // SEC, row_id, start, end, end - start, resp.l7_protocol or req.l7_protocol or protocol,
            req.biz_protocol, resp.version or req.version, SESSION, req.is_tls or resp.is_tls, reversed_,
            req.request_type, req.request_domain, req.request_resource, req.endpoint or resp.endpoint,
            req.request_id, resp.response_status, resp.response_code, resp.response_exception,
            resp.response_result, req.trace_id or resp.trace_id, req.span_id or resp.span_id, req.parent_span_id,
            req.x_request_id, resp.x_request_id, req.http_proxy_client, req.tcp_seq, resp.tcp_seq, req.length,
            resp.length, resp.sql_affected_rows, req.captured, resp.captured, attrs)


_REC_RRT, _REC_STATUS = L7_RECORD.index("response_duration"), L7_RECORD.index("response_status")


def l7_counts_of(req, resp, rec: tuple) -> tuple:
    """The application counts of one record (``rec``: ``l7_record``'s): request, response, client
    error, server error, timeout, rrt sum, rrt count, rrt max."""
    status = rec[_REC_STATUS]
    n_req = 1 if req is not None else 0
    n_resp = 1 if resp is not None else 0
    has_rrt = 1 if n_req and n_resp and req is not resp else 0
    rrt = rec[_REC_RRT] if has_rrt else 0
    return (n_req, n_resp, 1 if n_resp and status == CLIENT_ERROR else 0, 1 if n_resp and status == SERVER_ERROR else 0,
            1 if status == TIMEOUT else 0, rrt, has_rrt, rrt)


def l7_session_counts(rec: tuple) -> tuple:
    """``l7_counts_of`` for a request paired with its response (``l7_session_record``'s row), the
    common record, without the tests for a missing half."""
    status, rrt = rec[_REC_STATUS], rec[_REC_RRT]
    return (1, 1, 1 if status == CLIENT_ERROR else 0, 1 if status == SERVER_ERROR else 0,
            1 if status == TIMEOUT else 0, rrt, 1, rrt)


def add_l7_counts(acc: dict, key, counts: tuple) -> None:
    """Add ``counts`` (``l7_counts_of``) to ``acc[key]``."""
    cur = acc.get(key)
    if cur is None:
        acc[key] = list(counts)
    else:
        add_counts(cur, counts)


def add_counts(cur: list[int], counts: tuple) -> None:
    """``counts`` (``l7_counts_of``) into ``cur``: sums, and the maximum rrt (unrolled: per record)."""
    cur[0] += counts[0]
    cur[1] += counts[1]
    cur[2] += counts[2]
    cur[3] += counts[3]
    cur[4] += counts[4]
    cur[5] += counts[5]
    cur[6] += counts[6]
    if counts[7] > cur[7]:
        cur[7] = counts[7]


def l7_record(kind: int, req, resp, status: int | None, protocol: int, row_id: int, reversed_: int) -> tuple:
    """One request/response/session record as the l7_flow_log columns after L7_FLOW."""
    m = req if req is not None else resp
    start = m.ts
    end = resp.ts if resp is not None else start
    if status is None:
        status = resp.response_status if resp is not None else 0
    proto = (resp.l7_protocol if resp is not None and resp.l7_protocol else m.l7_protocol) or protocol
    attrs = None            # one dict (numpy keeps it whole); the writer splits it into names/values
    for part in (req, resp):
        if part is not None and part.attributes:
            attrs = dict(part.attributes) if attrs is None else {**attrs, **part.attributes}
    r = resp if resp is not None else None
    return (end // SEC, row_id, start, end, end - start if req is not None and resp is not None else 0, proto,
            m.biz_protocol, (r.version if r is not None and r.version else m.version), kind, m.is_tls or (
                r.is_tls if r is not None else 0), reversed_, m.request_type, m.request_domain, m.request_resource,
            m.endpoint or (r.endpoint if r is not None else ""), m.request_id, status,
            r.response_code if r is not None else None, r.response_exception if r is not None else "",
            r.response_result if r is not None else "", m.trace_id or (r.trace_id if r is not None else ""),
            m.span_id or (r.span_id if r is not None else ""), m.parent_span_id,
            req.x_request_id if req is not None else "", r.x_request_id if r is not None else "",
            m.http_proxy_client, req.tcp_seq if req is not None else 0, r.tcp_seq if r is not None else 0,
            req.length if req is not None else None, r.length if r is not None else None,
            r.sql_affected_rows if r is not None else None, req.captured if req is not None else 0,
            r.captured if r is not None else 0, attrs)
