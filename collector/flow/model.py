"""What a flow is: two ``FlowSide`` ends with cumulative counters, and the ``Flow`` that joins them.

Plain ``__slots__`` objects because there may be a million of them; everything per packet is an
attribute increment (see table.py for the hot loop, report.py for turning them into rows).
"""

from __future__ import annotations

from operator import attrgetter

import cython

MASK32 = 0xFFFFFFFF
SEC = 1_000_000
MAX_SEQ_GAPS = 16
RTT_MAX_US = 30 * SEC
SRT_MAX_US = 10 * SEC
ART_MAX_US = 30 * SEC

# Latency kinds; Flow.lat (this second) and Flow.win_lat (this window) hold (sum, count, max)
# per kind in this order.
RTT, RTT_CLIENT, RTT_SERVER, SRT, ART, CIT = range(6)
N_LAT = 6
N_LAT3 = 3 * N_LAT
ZERO_LAT = (0,) * N_LAT3

ZERO_IP6 = bytes(16)
# FlowSide.counters order; report.py names these columns.
COUNTERS = ("packets", "bytes", "l3", "l4", "retrans", "zero_win", "ooo", "syn", "syn_re", "fin")
ZERO_SNAP = (0,) * len(COUNTERS)


def _side_counters(c: FlowSide) -> tuple:
    """COUNTERS of one side (compiled: typed field reads instead of attrgetter's lookups)."""
    return (c.packets, c.bytes, c.l3, c.l4, c.retrans, c.zero_win, c.ooo, c.syn, c.syn_re, c.fin)


side_counters = _side_counters if cython.compiled else attrgetter(*COUNTERS)


class FlowSide:
    """One end of a flow and everything it sent (``syn`` counts SYN or SYN-ACK packets,
    ``syn_re`` their retransmissions)."""

    __slots__ = ("bytes", "fin", "flags", "flow", "gaps", "ip", "ip4", "ip6", "is_client", "isn", "l3",
                 "l4", "mac", "near", "next_seq", "ooo", "packets", "peer", "port", "retrans",
                 "sec_snap", "syn", "syn_re", "tag_id", "tun", "win_snap", "zero_win")

    def __init__(self, ip: int | bytes, port: int) -> None:
        self.ip = ip
        self.port = port
        if ip.__class__ is int:
            self.ip4, self.ip6 = ip, ZERO_IP6
        else:
            self.ip4, self.ip6 = 0, ip
        self.packets = self.bytes = self.l3 = self.l4 = self.retrans = self.zero_win = self.ooo = 0
        self.syn = self.syn_re = self.fin = self.flags = self.isn = self.mac = self.tag_id = 0
        self.next_seq = self.gaps = self.tun = None
        self.near = self.is_client = False
        self.sec_snap = self.win_snap = ZERO_SNAP


class Flow:
    """A bidirectional flow at one capture NIC."""

    __slots__ = ("art_wait", "client", "dirty", "done", "eth_type", "flow_id", "is_new", "is_new_sec",
                 "is_v4", "l7", "l7_protocol", "l7_rev", "l7_tries", "l7s", "l7w", "last_ts", "mkey", "nic", "obs", "prev_state",
                 "proto", "report_at", "req_end", "req_ts", "request_domain", "resp_ts", "rst_by_client",
                 "lat", "score", "server", "server_data", "srt_wait", "start_ts", "state",
                 "syn_ts", "synack_ts", "tunnel", "vlan", "win_lat", "win_start")

    def __init__(self) -> None:
        self.done = self.dirty = self.srt_wait = self.art_wait = False
        self.server_data = self.rst_by_client = False
        self.lat = self.win_lat = self.l7 = None
        self.syn_ts = self.synack_ts = self.req_ts = self.resp_ts = self.prev_state = 0
        self.l7_protocol = 0
        self.l7_tries = 0           # payloads looked at without finding a protocol
        self.l7_rev = 0             # is_reversed: the L7 client is the end we took for the server
        self.l7w = None             # this window's L7 counts (l4_flow_log l7_* / rrt_*)
        self.l7s = None             # this second's L7 counts by (protocol, endpoint)
        self.req_end = -1
        self.request_domain = ""
        self.is_new = True          # first 60 s window (is_new_flow)
        self.is_new_sec = True      # first second (new_flow meter)

    def release(self) -> None:
        """Break the flow ↔ side cycles so a finished flow is freed by reference counting."""
        c, s = self.client, self.server
        c.flow = s.flow = c.peer = s.peer = None
