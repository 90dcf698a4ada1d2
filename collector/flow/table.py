"""The L4 flow table: packets → flows with TCP state, latency, retransmissions; 1 s deltas for the
metrics and 60 s / close rows for ``flow_log.l4_flow_log`` (datamodel §1, §5).

Clock: packet time drives everything (pcap replay is deterministic); live capture also calls
``advance(now)`` when idle. Each second, flows touched in that second emit one *flow-second*
delta (metrics input) and are scheduled on a timer wheel for their 60 s report and timeout.
Counters are cumulative per side; seconds and windows are differences of snapshots, so a
packet only ever increments one set of numbers.

``process`` is the per-packet hot loop: Ethernet/IPv4/TCP is decoded inline, everything else goes
through ``Decoder``; handshake, FIN and RST packets leave the loop for ``_tcp_control``.
"""

from __future__ import annotations

import heapq
import struct
from dataclasses import dataclass, field

import cython

from collector.decode.packet import ETH, SLL, SLL2, Decoder
from collector.flow import tcp
from collector.flow.model import (
    ART,
    ART_MAX_US,
    CIT,
    MASK32,
    MAX_SEQ_GAPS,
    N_LAT3,
    RTT,
    RTT_CLIENT,
    RTT_MAX_US,
    RTT_SERVER,
    SEC,
    SRT,
    SRT_MAX_US,
    Flow,
    FlowSide,
)
from collector.flow.observation import NearEnd, observation_point
from collector.flow.report import (
    RowBuilder,
    add_counts,
    add_l7_counts,
    l7_counts_of,
    l7_flow_part,
    l7_record,
    l7_session_counts,
    l7_session_record,
)
from collector.flow.tcp import ACK, ESTABLISHED, FIN, NOT_TCP, RST, SYN
from collector.l7.base import REQUEST, SESSION
from collector.l7.registry import MAX_ATTEMPTS, Detector
from collector.l7.session import Sessions
from collector.tagging import Tagger
from flowscope.enums import CloseType

# From Ethernet offset 16: IPv4 total length, fragment word, src, dst (no options), then the TCP
# header up to the window, or the UDP ports; from offset 18: IPv6 payload length, next header,
# addresses and the TCP header fields (UDP packets read ports from the same layout).
_ip4_tcp = struct.Struct("!HxxHxxxxIIHHIIBBH").unpack_from
_ip4_udp = struct.Struct("!HxxHxxxxIIHH").unpack_from
_ip6_l4 = struct.Struct("!HBx16s16sHHIIBBH").unpack_from
_OPENING2 = tcp.OPENING2
NO_L7 = object()     # Flow.l7 when the flow is not (or no longer) parsed


@cython.cfunc
@cython.inline
@cython.locals(b=bytes, o=cython.Py_ssize_t)
@cython.returns(cython.ulonglong)
def _be32(b, o):
    """A big-endian 32-bit field (compiled form only; the source reads these with struct)."""
    return cython.cast(cython.ulonglong, b[o]) << 24 | b[o + 1] << 16 | b[o + 2] << 8 | b[o + 3]


@dataclass
class NicInfo:
    """What the flow table needs to know about one capture NIC."""

    name: str
    role: str = "own"
    linktype: int = ETH
    capture_nic: int = 0          # low 4 bytes of the NIC's MAC (DeepFlow capture_nic)
    near: NearEnd | None = None
    netns: str = ""

    def __post_init__(self) -> None:
        if self.near is None:
            self.near = NearEnd(self.role)
        # observation_point by (client near, server near, tunnelled), computed once per NIC
        self.points = tuple(observation_point(self.role, bool(i & 4), bool(i & 2), i & 1) for i in range(8))


@dataclass
class FlowConfig:
    max_flows: int = 1_000_000
    timeouts: tcp.Timeouts = field(default_factory=tcp.Timeouts)
    server_ports: frozenset[int] = frozenset()   # configured services: direction_score 253
    agent_id: int = 1
    worker: int = 0            # capture process index (PACKET_FANOUT workers): part of flow and row ids
    report_interval_s: int = 60
    service_table_size: int = 65536


class L7State:
    """A flow's parser and its pending requests."""

    __slots__ = ("flow_part", "parser", "protocol", "sessions", "wake")

    def __init__(self, parser, protocol: int, timeout_s: float) -> None:
        self.parser = parser
        self.protocol = protocol
        self.sessions = Sessions(timeout_s)
        self.wake: int | None = None    # the second the flow's timer checks its pending requests
        self.flow_part: tuple | None = None   # the flow's share of its l7_flow_log rows (l7_flow_part)


class FlowTable:
    """Builds flows from packets; hands finished rows to ``sink``.

    ``sink.l4(rows)`` receives l4_flow_log rows (report.L4_COLUMNS order);
    ``sink.seconds(rows)`` flow-second deltas (report.FS_COLUMNS order).
    """

    def __init__(self, sink, config: FlowConfig | None = None, *, decoder: Decoder | None = None,
                 tagger: Tagger | None = None, l7: Detector | None = None) -> None:
        self.sink = sink
        self.cfg = config or FlowConfig()
        self.decoder = decoder or Decoder()
        self.tagger = tagger or Tagger()
        self.flows: dict[tuple, FlowSide] = {}
        self.nics: list[NicInfo | None] = []
        self._linktypes: list[int] = []
        self.nflows = 0
        self.sec: int | None = None          # the second being accumulated
        self._dirty: list[Flow] = []
        self._wheel: dict[int, list[Flow]] = {}
        self._heap: list[int] = []
        self._timeouts = self.cfg.timeouts.us_table()
        self._udp_timeout = int(self.cfg.timeouts.udp * SEC)
        self._other_timeout = int(self.cfg.timeouts.established_rst * SEC)
        self._single_timeout = int(self.cfg.timeouts.single_direction * SEC)
        self._services: dict[tuple, int] = {}
        self._tag_cache = self.tagger.cache
        self._flow_seq = 0
        self._worker_bits = (self.cfg.worker & 0xFF) << 24
        self._l4_rows: list[tuple] = []
        self._l7_rows: list[tuple] = []
        self.l7 = l7                                # None: no L7 parsing
        self.l7_stats: dict[str, int] = {"records": 0, "parsers_gave_up": 0}
        self.rows = RowBuilder(agent_id=self.cfg.agent_id, nics=self.nics, worker=self.cfg.worker)
        self.stats: dict[str, int] = {"packets": 0, "flows_created": 0, "flows_closed": 0,
                                      "flows_evicted": 0, "flow_rows": 0, "decode_skipped": 0}

    # -- NICs -------------------------------------------------------------------------------
    def add_nic(self, nic_id: int, info: NicInfo) -> None:
        while len(self.nics) <= nic_id:
            self.nics.append(None)
            self._linktypes.append(ETH)
        self.nics[nic_id] = info
        self._linktypes[nic_id] = info.linktype

    # -- hot loop ---------------------------------------------------------------------------
    # C types for the compiled form (setup.py): packet fields as C integers, flows and sides as
    # the cdef classes of model.pxd (their counters are C fields)
    @cython.locals(sd=FlowSide, f=Flow, ts=cython.longlong, wl=cython.longlong, l3=cython.longlong,
                   l4=cython.longlong, flags=cython.longlong, seq=cython.longlong, ack=cython.longlong,
                   win=cython.longlong, next_tick=cython.longlong, d=cython.longlong, skipped=cython.longlong,
                   l4o=cython.int, poff=cython.int, l2=cython.int, tot=cython.int, frag=cython.int,
                   doff=cython.int, b=cython.int, ioff=cython.int, ttype=cython.int, vni=cython.int,
                   slow=cython.bint, v4=cython.bint, frame=bytes, flows=dict, tunnels=dict, dirty=list, lts=list)
    def process(self, batch: list[tuple[int, bytes, int, int, int]]) -> None:
        """Feed ``(ts_us, frame, wire_len, nic_id, direction)`` packets in capture order."""
        decode = self.decoder.decode
        flows = self.flows
        lts = self._linktypes
        dirty = self._dirty
        ip4_tcp, ip4_udp, ip6_l4 = _ip4_tcp, _ip4_udp, _ip6_l4
        tunnel_ports = self.decoder.tunnel_udp_ports
        geneve_port = self.decoder.geneve_port
        tunnels = self.decoder.tunnels            # outer headers seen before, by (type, id, src, dst)
        next_tick = (self.sec + 1) * SEC if self.sec is not None else -1
        skipped = 0
        for ts, frame, wl, nic, dirn in batch:
            if ts >= next_tick:
                if next_tick < 0:
                    self.sec = ts // SEC
                else:
                    self._advance_to(ts // SEC)
                next_tick = (self.sec + 1) * SEC
            # Inline fast paths for untagged Ethernet with IPv4 (no options, not a fragment) or
            # IPv6 (no extension headers) carrying TCP or non-tunnel UDP; the rest goes to the decoder.
            slow = True
            tun = None
            l2 = 0
            if lts[nic] == 1 and len(frame) >= 54:
                if frame[12] == 8 and frame[13] == 0 and frame[14] == 0x45:
                    proto = frame[23]
                    if cython.compiled and (proto == 6 or proto == 17):
                        # the fields read in place, not as a tuple of ints from struct
                        tot = frame[16] << 8 | frame[17]
                        frag = frame[20] << 8 | frame[21]
                        src = _be32(frame, 26)
                        dst = _be32(frame, 30)
                        sport = frame[34] << 8 | frame[35]
                        dport = frame[36] << 8 | frame[37]
                    if proto == 6:
                        if cython.compiled:
                            seq = _be32(frame, 38)
                            ack = _be32(frame, 42)
                            doff, flags, win = frame[46], frame[47], frame[48] << 8 | frame[49]
                        else:
                            tot, frag, src, dst, sport, dport, seq, ack, doff, flags, win = ip4_tcp(frame, 16)
                        if not (frag & 0x3FFF or doff < 0x50 or 0 < tot < 40):
                            slow = False
                            l3 = (tot or len(frame) - 14) - 20
                            poff = 34 + ((doff >> 4) << 2)
                            l4o, l4 = 34, l3 - ((doff >> 4) << 2)
                            if l4 < 0:
                                l4 = 0
                            flags |= (doff & 1) << 8
                    elif proto == 17:
                        if not cython.compiled:
                            tot, frag, src, dst, sport, dport = ip4_udp(frame, 16)
                        if frag & 0x3FFF or tot < 28:
                            pass
                        elif dport not in tunnel_ports:
                            slow = False
                            l3 = tot - 20
                            l4o, l4, poff = 34, l3 - 8, 42
                            flags = seq = ack = win = 0
                        else:
                            # VXLAN / Geneve (Ethernet payload) over IPv4 carrying IPv4 TCP, the usual
                            # overlay on a node NIC: decapsulated here; anything else by the decoder.
                            b = frame[42]
                            if dport == geneve_port:
                                ioff = 64 + ((b & 0x3F) << 2)
                                ok = b < 0x40 and frame[44] == 0x65 and frame[45] == 0x58
                                ttype = 4
                            else:
                                ioff = 64
                                ok = b & 0x08
                                ttype = 1
                            if (ok and len(frame) >= ioff + 40 and tot + 14 >= ioff + 40
                                    and frame[ioff - 2] == 8 and frame[ioff - 1] == 0 and frame[ioff] == 0x45
                                    and frame[ioff + 9] == 6):
                                vni = frame[46] << 16 | frame[47] << 8 | frame[48]
                                tkey = (ttype, vni, src, dst)
                                tot, frag, src, dst, sport, dport, seq, ack, doff, flags, win = \
                                    ip4_tcp(frame, ioff + 2)
                                if not (frag & 0x3FFF or doff < 0x50 or tot < 40):
                                    tun = tunnels.get(tkey)
                                    if tun is not None:
                                        slow = False
                                        proto = 6
                                        l2 = ioff - 14
                                        l3 = tot - 20
                                        l4o, l4 = ioff + 20, l3 - ((doff >> 4) << 2)
                                        poff = l4o + ((doff >> 4) << 2)
                                        if l4 < 0:
                                            l4 = 0
                                        flags |= (doff & 1) << 8
                elif (frame[12] == 0x86 and frame[13] == 0xDD and frame[14] >> 4 == 6 and len(frame) >= 74
                      and (frame[20] == 6 or frame[20] == 17)):
                    l3, proto, src, dst, sport, dport, seq, ack, doff, flags, win = ip6_l4(frame, 18)
                    if l3 >= 20 and proto == 6 and doff >= 0x50:
                        slow = False
                        l4o, l4 = 54, l3 - ((doff >> 4) << 2)
                        poff = 54 + ((doff >> 4) << 2)
                        if l4 < 0:
                            l4 = 0
                        flags |= (doff & 1) << 8
                    elif l3 >= 8 and proto == 17 and dport not in tunnel_ports:
                        slow = False
                        l4o, l4, poff = 54, l3 - 8, 62
                        flags = seq = ack = win = 0
            if slow:
                p = decode(frame, lts[nic])
                if p is None:
                    skipped += 1
                    continue
                src, dst, sport, dport, proto, l3, l4, flags, seq, ack, win = p[:11]
                poff = p[12]
                tun = p[17]
            else:
                p = None
            sd = flows.get((src, dst, sport, dport, proto, nic))
            if sd is None:
                if p is None:       # the decoder's tuple for the fast path's shapes
                    v4 = l4o != 54
                    p = (src, dst, sport, dport, proto, l3, l4, flags, seq, ack, win, l4o,
                         l4o + l3 - l4 if l3 - l4 <= len(frame) - l4o else len(frame), int(v4),
                         0x0800 if v4 else 0x86DD, 0, l2, tun)
                sd = self._new_flow(p, ts, nic, dirn, frame)
            f = sd.flow
            if proto == 6:
                if flags & 7 or f.state != ESTABLISHED:
                    sd = self._tcp_control(f, sd, flags, seq, ack, l4, ts, nic, dirn, frame)
                    f = sd.flow
                sd.flags |= flags
                if l4 and not flags & SYN:
                    if seq == sd.next_seq:
                        sd.next_seq = (seq + l4) & MASK32
                        if f.l7 is not NO_L7:
                            self._l7_feed(f, sd, frame, poff, l4, ts, seq)
                    elif self._seq_slow(sd, seq, l4) and f.l7 is not NO_L7:
                        self._l7_feed(f, sd, frame, poff, l4, ts, seq)
                    if sd.is_client:
                        f.req_ts = ts
                        f.req_end = (seq + l4) & MASK32
                        f.srt_wait = f.art_wait = True
                        if f.resp_ts and l4 > 1:        # client idle time (cit)
                            d = ts - f.resp_ts
                            f.resp_ts = 0
                            if d >= 0:
                                self._sample(f, CIT, d)
                    else:
                        f.server_data = True
                        if f.art_wait:                  # application response time (art)
                            f.art_wait = False
                            d = ts - f.req_ts
                            if 0 <= d <= ART_MAX_US:
                                self._sample(f, ART, d)
                        f.resp_ts = ts
                elif f.srt_wait and not sd.is_client and ack == f.req_end and flags & 0x1F == ACK:
                    f.srt_wait = False                  # system response time (srt): a pure ACK
                    d = ts - f.req_ts
                    if 0 <= d <= SRT_MAX_US:
                        self._sample(f, SRT, d)
                if not win and not flags & 6:
                    sd.zero_win += 1
            elif proto == 17:
                if l4:
                    if sd.is_client:
                        f.req_ts = ts
                        f.art_wait = True
                    elif f.art_wait:
                        f.art_wait = False
                        d = ts - f.req_ts
                        if 0 <= d <= ART_MAX_US:
                            self._sample(f, ART, d)
                    if f.l7 is not NO_L7:
                        self._l7_feed(f, sd, frame, poff, l4, ts, 0)
            elif proto == 1 or proto == 58:
                self._icmp(f, flags, seq, ts)
            if tun is not None and sd.tun is None:
                sd.tun = tun
            sd.packets += 1
            sd.bytes += wl
            sd.l3 += l3
            sd.l4 += l4
            if ts > f.last_ts:
                f.last_ts = ts
            if not f.dirty:
                f.dirty = True
                dirty.append(f)
        stats = self.stats
        stats["packets"] += len(batch)
        stats["decode_skipped"] += skipped

    # -- per-packet slow paths ---------------------------------------------------------------
    @staticmethod
    def _sample(f: Flow, kind: int, value: int) -> None:
        """One latency sample into this second's (sum, count, max) accumulators."""
        acc = f.lat
        if acc is None:
            acc = f.lat = [0] * N_LAT3
        i = 3 * kind
        acc[i] += value
        acc[i + 1] += 1
        if value > acc[i + 2]:
            acc[i + 2] = value

    @staticmethod
    def _seq_slow(sd: FlowSide, seq: int, length: int) -> bool:
        """Sequence bookkeeping off the in-order path: first data, holes, retransmissions and
        out-of-order fills (datamodel §5.6; at most MAX_SEQ_GAPS holes remembered). True when the
        segment carries bytes beyond everything seen (the L7 parser reads those; a hole is lost)."""
        nxt = sd.next_seq
        end = (seq + length) & MASK32
        if nxt is None:
            sd.next_seq = end
            return True
        ahead = (seq - nxt) & MASK32
        if ahead < 0x80000000:              # beyond everything seen: a hole opens before it
            if ahead > 0x40000000:          # a jump this large is a wrap or a new stream
                sd.gaps = None
            else:
                gaps = sd.gaps
                if gaps is None:
                    gaps = sd.gaps = []
                gaps.append([nxt, seq])
                if len(gaps) > MAX_SEQ_GAPS:
                    del gaps[0]
            sd.next_seq = end
            return True
        # Below the highest byte seen: it fills a hole (out of order) or repeats data (retransmission).
        gaps = sd.gaps
        if gaps:
            for i, (g0, g1) in enumerate(gaps):
                if (seq - g0) & MASK32 < (g1 - g0) & MASK32:       # starts inside this hole
                    sd.ooo += 1
                    fills_end = (end - g1) & MASK32 < 0x80000000
                    if seq == g0 and fills_end:
                        del gaps[i]
                    elif seq == g0:
                        gaps[i][0] = end
                    elif fills_end:
                        gaps[i][1] = seq
                    else:
                        gaps.insert(i + 1, [end, g1])
                        gaps[i][1] = seq
                    return False
        sd.retrans += 1
        if (end - nxt) & MASK32 < 0x80000000 and end != nxt:     # also extends past the top
            sd.next_seq = end
        return False

    # -- L7 -----------------------------------------------------------------------------------
    def _l7_feed(self, f: Flow, sd: FlowSide, frame: bytes, poff: int, length: int, ts: int, seq: int) -> None:
        """One in-order payload to the flow's L7 parser (detecting the protocol first)."""
        state = f.l7
        payload = frame[poff:poff + length]
        if state is None:
            det = self.l7.detect(payload, sd.is_client, f.proto, f.server.port, f.score < 255)
            if det is None:
                f.l7_tries += 1
                if f.l7_tries >= MAX_ATTEMPTS:
                    f.l7 = NO_L7
                return
            spec, flipped = det
            if flipped:              # the L7 client is the end the port heuristic took for the server
                f.l7_rev = 1
            parser = spec.parser(self.l7.config)
            state = f.l7 = L7State(parser, spec.protocol, getattr(parser, "timeout_s", 120.0))
            f.l7_protocol = spec.protocol
        r = state.parser.feed(payload, length, not sd.is_client if f.l7_rev else sd.is_client, ts, seq)
        if not r and r.__class__ is list:       # most segments complete no message (a body's middle)
            return
        out: list = []
        if isinstance(r, str):
            self.l7.gave_up[r.split(":", 1)[0] + ": " + r.split(":", 1)[-1].strip()[:60]] += 1
            self.l7_stats["parsers_gave_up"] += 1
            state.sessions.close(ts, out, timed_out=False)
            f.l7 = NO_L7
        else:
            sessions = state.sessions
            for m in r:
                if m.type == REQUEST and not f.request_domain and m.request_domain:
                    f.request_domain = m.request_domain
                sessions.add(m, out)
                if m.ends_flow:
                    nxt = getattr(state.parser, "next_parser", None)
                    if nxt is not None:            # an upgrade (h2c): another parser takes over
                        state.parser = nxt
                        state.protocol = nxt.protocol
                        f.l7_protocol = nxt.protocol
                        continue
                    sessions.close(ts, out, timed_out=False)
                    f.l7 = NO_L7
                    break
            if f.l7 is state and state.wake is None and sessions.pending():
                deadline = sessions.next_deadline()     # one timer per flow at a time
                if deadline is not None:
                    state.wake = -(-deadline // SEC)
                    self._schedule(f, state.wake)
        if out:
            self._l7_records(f, state, out, ts // SEC)

    def _l7_records(self, f: Flow, state: L7State, records: list, sec: int) -> None:
        """Rows for l7_flow_log, application metrics, and the flow's L7 counts."""
        flow_part = state.flow_part
        if flow_part is None or flow_part[16] != f.score:     # direction_score is the part that can change
            flow_part = state.flow_part = l7_flow_part(f, self.cfg.agent_id)
        rows = self._l7_rows
        rb = self.rows
        w = f.l7w
        if w is None:
            w = f.l7w = [0] * 9
        # request, response, client_error, server_error, timeout, rrt_sum, rrt_count, rrt_max, parse_failed
        acc = f.l7s             # this second's counts by (protocol, endpoint): RowBuilder.second's input
        if acc is None:
            acc = f.l7s = {}
        id_mid = rb._id_mid
        for kind, req, resp, status in records:
            rb._row_seq += 1
            row_id = (sec << 32) | id_mid | (rb._row_seq & 0x3FFFFF)
            if kind == SESSION and status is None and req is not resp:
                # a paired request and response, the common record
                rec = l7_session_record(req, resp, state.protocol, row_id, f.l7_rev)
                counts = l7_session_counts(rec)
            else:
                rec = l7_record(kind, req, resp, status, state.protocol, row_id, f.l7_rev)
                counts = l7_counts_of(req, resp, rec)
            rows.append(flow_part + rec)
            add_counts(w, counts)
            add_l7_counts(acc, (rec[5], rec[14]), counts)      # l7_protocol, endpoint
        self.l7_stats["records"] += len(records)
        if not f.dirty:             # counts made at a timer (timeouts) go out with the next second
            f.dirty = True
            self._dirty.append(f)

    def _l7_expire(self, f: Flow, now: int) -> None:
        state = f.l7
        out: list = []
        state.sessions.expire(now, out)
        if out:
            self._l7_records(f, state, out, now // SEC)
        deadline = state.sessions.next_deadline()
        state.wake = None if deadline is None else -(-deadline // SEC)
        if state.wake is not None:
            self._schedule(f, state.wake)

    def _icmp(self, f: Flow, itype: int, ident_seq: int, ts: int) -> None:
        """ICMP echo request → reply gives srt (datamodel §1e)."""
        if itype in (8, 128):
            f.req_ts = ts
            f.req_end = ident_seq
            f.srt_wait = True
        elif itype in (0, 129) and f.srt_wait and ident_seq == f.req_end:
            f.srt_wait = False
            d = ts - f.req_ts
            if 0 <= d <= SRT_MAX_US:
                self._sample(f, SRT, d)

    def _tcp_control(self, f: Flow, sd: FlowSide, flags: int, seq: int, ack: int, l4: int, ts: int, nic: int,
                     dirn: int, frame: bytes) -> FlowSide:
        """Handshake, FIN and RST packets (and anything outside ESTABLISHED): latency of the
        handshake, SYN retransmissions, state transitions. Returns the side to account the packet
        on, a new flow's when a SYN reuses a finished connection's 5-tuple."""
        from_client = sd.is_client
        state = f.state
        if flags & SYN:
            if not flags & ACK and state in tcp.REUSABLE:
                self._finish(f, ts, timed_out=True)
                return self._new_flow(self.decoder.decode(frame, self._linktypes[nic]), ts, nic, dirn, frame)
            self._syn(f, sd, flags, seq, l4, ts, from_client)
        elif state == _OPENING2 and from_client and flags & ACK and f.synack_ts \
                and ack == (sd.peer.isn + 1) & MASK32:
            d = ts - f.synack_ts
            if 0 <= d <= RTT_MAX_US:
                self._sample(f, RTT_CLIENT, d)
            if f.syn_ts:
                d = ts - f.syn_ts
                if 0 <= d <= RTT_MAX_US:
                    self._sample(f, RTT, d)
        if flags & FIN:
            sd.fin += 1
        new_state = tcp.NEXT[state << 6 | (flags & 0x17) << 1 | from_client]
        if new_state != state:
            if flags & RST:
                f.rst_by_client = from_client
            f.prev_state = state
            f.state = new_state
        return sd

    def _syn(self, f: Flow, sd: FlowSide, flags: int, seq: int, l4: int, ts: int, from_client: bool) -> None:
        """A SYN or SYN-ACK: ISN, retransmission count, handshake timestamps."""
        sd.syn += 1
        if sd.syn > 1:
            if flags & ACK or seq == sd.isn:
                sd.syn_re += 1
                sd.retrans += 1
            return
        sd.isn = seq
        sd.next_seq = (seq + 1 + l4) & MASK32
        if flags & ACK:
            if not from_client:
                f.synack_ts = ts
                self._learn_service(sd)
                f.score = 255
                if f.syn_ts:
                    d = ts - f.syn_ts
                    if 0 <= d <= RTT_MAX_US:
                        self._sample(f, RTT_SERVER, d)
        elif from_client and not f.synack_ts:
            f.syn_ts = ts

    # -- flows ------------------------------------------------------------------------------
    def _new_flow(self, p: tuple, ts: int, nic: int, dirn: int, frame: bytes) -> FlowSide:
        if self.nflows >= self.cfg.max_flows:
            self._evict()
        src, dst, sport, dport, proto = p[0], p[1], p[2], p[3], p[4]
        info = self.nics[nic] if nic < len(self.nics) else None
        if info is None:
            info = NicInfo(name=f"nic{nic}")
            self.add_nic(nic, info)
        f = Flow()
        a = FlowSide(src, sport)
        b = FlowSide(dst, dport)
        a.flow = b.flow = f
        a.peer = b
        b.peer = a
        f.nic = nic
        f.proto = proto
        f.start_ts = f.last_ts = f.win_start = ts
        f.is_v4 = p[13]
        f.eth_type = p[14]
        f.vlan = p[15]
        f.tunnel = tun = p[17]
        flags = p[7]
        f.state = tcp.initial_state(flags) if proto == 6 else NOT_TCP
        f.l7 = None if self.l7 is not None and (proto == 6 or proto == 17) else NO_L7
        # Orientation: SYN / SYN-ACK are certain; otherwise learned services, then ports.
        client, f.score = self._orient(proto, flags, a, b)
        client.is_client = True
        f.client = client
        f.server = server = client.peer
        # Near end (observation point) from the first packet.
        l2 = p[16]
        smac = dmac = b""
        if info.linktype == ETH:
            dmac, smac = frame[0:6], frame[6:12]       # the capture NIC's frame (outer header)
            if l2 >= 0:                                # mac_0/1: the innermost Ethernet header
                a.mac = int.from_bytes(frame[l2 + 6:l2 + 12], "big")
                b.mac = int.from_bytes(frame[l2:l2 + 6], "big")
        elif not dirn and info.linktype in (SLL, SLL2) and len(frame) >= 12:
            pkttype = frame[1] if info.linktype == SLL else frame[10]
            dirn = 2 if pkttype == 4 else 1
        near = info.near.source_is_near(dirn, smac, dmac, src, dst)
        if near == 2:
            a.near = b.near = True
        elif near >= 0:
            a.near = near == 1
            b.near = near == 0
        tags = self._tag_cache
        a.tag_id = tags.get(src)
        if a.tag_id is None:
            a.tag_id = self.tagger.tag(src, ts)
        b.tag_id = tags.get(dst)
        if b.tag_id is None:
            b.tag_id = self.tagger.tag(dst, ts)
        if not (a.tag_id and b.tag_id) and self.tagger.macs:    # unknown addresses: a pod's own MAC
            macs = self.tagger.macs
            if not a.tag_id and a.mac:
                a.tag_id = macs.get(a.mac, 0)
            if not b.tag_id and b.mac:
                b.tag_id = macs.get(b.mac, 0)
        port_tags = self.tagger.port_tags
        if port_tags:                  # the Service behind a server port (pods with several, NodePorts)
            a.tag_id = port_tags.get((a.tag_id, sport), a.tag_id)
            b.tag_id = port_tags.get((b.tag_id, dport), b.tag_id)
        f.obs = info.points[client.near << 2 | server.near << 1 | (tun is not None)]
        self._flow_seq += 1
        f.flow_id = (((ts * 1000) >> 30) & MASK32) << 32 | self._worker_bits | (self._flow_seq & 0xFFFFFF)
        self.rows.keys(f)
        flows = self.flows
        k1, k2 = (src, dst, sport, dport, proto, nic), (dst, src, dport, sport, proto, nic)
        flows[k1] = a
        if k2 != k1:                # not a self-connection (same address and port at both ends)
            flows[k2] = b
        f.report_at = sec = ts // SEC + self.cfg.report_interval_s
        self._schedule(f, sec)
        self.nflows += 1
        self.stats["flows_created"] += 1
        return a

    def _orient(self, proto: int, flags: int, a: FlowSide, b: FlowSide) -> tuple[FlowSide, int]:
        """Which side is the client, and how sure we are (direction_score, datamodel §5.3)."""
        if proto == 6 and flags & SYN:
            return (b, 255) if flags & ACK else (a, 255)
        if proto == 1 or proto == 58:
            return (b, 0) if flags in (0, 129) else (a, 0)
        svc = self._services
        if svc:
            sb = svc.get((b.ip, b.port, proto), 0)
            sa = svc.get((a.ip, a.port, proto), 0)
            if sa or sb:
                return (b, sa) if sa > sb else (a, sb)
        ports = self.cfg.server_ports
        if ports:
            if b.port in ports:
                return a, 253
            if a.port in ports:
                return b, 253
        # Port heuristic: the lower (well-known, non-ephemeral) port is the server's.
        return (b, 0) if a.port < b.port else (a, 0)

    def _learn_service(self, server: FlowSide) -> None:
        svc = self._services
        if len(svc) >= self.cfg.service_table_size:
            svc.clear()
        svc[(server.ip, server.port, 6)] = 255

    def timeout_of(self, f: Flow) -> int:
        """Idle time after which ``f`` ends, by protocol and state (datamodel §5.4)."""
        if not (f.client.packets and f.server.packets) and (f.proto != 6 or f.state == ESTABLISHED):
            return self._single_timeout
        if f.proto == 6:
            return self._timeouts[f.state]
        return self._udp_timeout if f.proto == 17 else self._other_timeout

    def close_type(self, f: Flow, timed_out: bool) -> int:
        if f.proto != 6:
            return CloseType.FINISH
        return tcp.close_type_of(f.state, rst_by_client=f.rst_by_client, prev_state=f.prev_state,
                                 synack_count=f.server.syn, server_data=f.server_data,
                                 timed_out=timed_out)

    # -- clock ------------------------------------------------------------------------------
    def _schedule(self, f: Flow, sec: int) -> None:
        lst = self._wheel.get(sec)
        if lst is None:
            self._wheel[sec] = [f]
            heapq.heappush(self._heap, sec)
        else:
            lst.append(f)

    def advance(self, now_us: int) -> None:
        """Move the clock to ``now_us`` (live capture with no packets, or a periodic nudge)."""
        if self.sec is None:
            self.sec = now_us // SEC
        elif now_us // SEC > self.sec:
            self._advance_to(now_us // SEC)

    def _advance_to(self, new_sec: int) -> None:
        """Close second ``self.sec``, fire timers up to ``new_sec``, start accumulating it."""
        self._emit_second(self.sec)
        heap, wheel = self._heap, self._wheel
        timeout_of = self.timeout_of
        while heap and heap[0] <= new_sec:
            t = heapq.heappop(heap)
            now = t * SEC
            for f in wheel.pop(t):
                if f.done:
                    continue
                if f.last_ts + timeout_of(f) <= now:
                    self._finish(f, now, timed_out=True)
                    continue
                if t >= f.report_at:
                    self._report(f, t)
                if f.l7.__class__ is L7State and f.l7.wake is not None and f.l7.wake <= t:
                    self._l7_expire(f, now)
        self.sec = new_sec
        self._flush_out()

    def _emit_second(self, sec: int) -> None:
        second = self.rows.second
        schedule = self._schedule
        timeout_of = self.timeout_of
        for f in self._dirty:
            f.dirty = False
            if not f.done:
                second(f, sec)
                schedule(f, -(-(f.last_ts + timeout_of(f)) // SEC))
        self._dirty.clear()

    def _report(self, f: Flow, t: int) -> None:
        """The periodic (ForcedReport) row of a live flow, then a new 60 s window."""
        now = t * SEC
        self._l4_rows.append(self.rows.l4_row(f, CloseType.FORCED_REPORT, now))
        self.rows.new_window(f, now)
        while f.report_at <= t:
            f.report_at += self.cfg.report_interval_s
        self._schedule(f, f.report_at)

    def _finish(self, f: Flow, now: int, *, timed_out: bool, forced: bool = False) -> None:
        """Final row of a flow at clock ``now``; its keys leave the table."""
        rb = self.rows
        state = f.l7
        if state.__class__ is L7State:
            out: list = []
            flush = getattr(state.parser, "flush", None)
            if flush is not None:              # messages the parser held for more data
                for m in flush(now):
                    state.sessions.add(m, out)
            state.sessions.close(now, out, timed_out)
            if out:
                self._l7_records(f, state, out, now // SEC)
        if f.dirty:                        # fold its partial second first
            f.dirty = False
            rb.second(f, self.sec if self.sec is not None else now // SEC)
        ct = CloseType.FORCED_REPORT if forced else self.close_type(f, timed_out)
        f.done = True
        self._l4_rows.append(rb.l4_row(f, ct, f.last_ts))
        flows = self.flows
        c, s = f.client, f.server
        flows.pop((c.ip, s.ip, c.port, s.port, f.proto, f.nic), None)
        flows.pop((s.ip, c.ip, s.port, c.port, f.proto, f.nic), None)
        f.release()
        self.nflows -= 1
        self.stats["flows_closed"] += 1

    def _live_flows(self) -> list[Flow]:
        return list({id(sd.flow): sd.flow for sd in self.flows.values()}.values())

    def _evict(self) -> None:
        """Table full: report and drop the least recently active 1% (counted, never unbounded)."""
        live = self._live_flows()
        n = max(1, len(live) // 100)
        for f in heapq.nsmallest(n, live, key=lambda x: x.last_ts):
            self._finish(f, f.last_ts, timed_out=False, forced=True)
            self.stats["flows_evicted"] += 1
        self._flush_out()           # hand the evicted flows' rows over now, not at the next tick

    def flush(self) -> None:
        """End of capture: every flow gets its final row now, as if the capture ended.

        Connections still established then are reported as ForcedReport (5), not Timeout:
        the capture stopped, the connection did not fail."""
        if self.sec is not None:
            self._emit_second(self.sec)
            for f in self._live_flows():
                self._finish(f, f.last_ts, timed_out=False)
        self._flush_out()

    def _flush_out(self) -> None:
        if self._l4_rows:
            rows, self._l4_rows = self._l4_rows, []
            self.stats["flow_rows"] += len(rows)
            self.sink.l4(rows)
        if self._l7_rows:
            rows, self._l7_rows = self._l7_rows, []
            self.sink.l7(rows)
        app = self.rows.take_app()
        if app:
            self.sink.app(app)
        secs = self.rows.take_seconds()
        if secs:
            self.sink.seconds(secs)
