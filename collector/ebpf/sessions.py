"""Socket data events → L7 messages (the packet path's parsers) → ``l7_flow_log`` rows.

Each traced process's socket is one flow seen from that process: a client's socket gives rows at
observation point ``c-p``, a server's at ``s-p`` (a loopback call traced on both ends gives one
row per side). Rows use the packet path's record layout (``collector.flow.report.l7_record``)
with ``signal_source`` = 3 (eBPF) and the process columns appended (``EBPF_COLUMNS``).

``syscall_trace_id``: per thread, an ingress that follows an egress (or nothing) starts a new id;
the egresses after it share it, so a server's inbound request and the outbound calls (and the
response) its thread makes next carry the same id, as in DeepFlow.
"""

from __future__ import annotations

import logging
import time
from collections import Counter, deque
from operator import itemgetter

from collector.ebpf.tracer import (
    CLOSE,
    CONNECT,
    CONNECTED,
    EGRESS,
    INGRESS,
    ProcNet,
    SockInfo,
    fd_inode,
    parse_connected,
    parse_sockaddr,
)
from collector.flow.model import SEC
from collector.flow.report import (
    FS_KEY,
    L7_COLUMNS,
    L7_FLOW,
    L7_RECORD,
    add_l7_counts,
    l7_counts_of,
    l7_record,
    l7_session_counts,
    l7_session_record,
)
from collector.l7.base import MASK32, REQUEST, RESPONSE, SESSION, GiveUp
from collector.l7.registry import MAX_ATTEMPTS, Detector
from collector.l7.session import Sessions

log = logging.getLogger("flowscope.ebpf")

SIGNAL_EBPF = 3
EBPF_COLUMNS = ("process_id_0", "process_id_1", "process_kname_0", "process_kname_1", "syscall_thread_0",
                "syscall_thread_1", "syscall_trace_id_request", "syscall_trace_id_response",
                "syscall_cap_seq_0", "syscall_cap_seq_1")
COLUMNS = L7_COLUMNS + EBPF_COLUMNS
MAX_SOCKETS = 65536
MAX_PENDING = 256           # per socket (collector.l7.session bounds a flow at 1024)
NO_META = (0, 0, 0)


class SockState:
    __slots__ = ("comm", "dead", "fd", "flow", "info", "is_client", "last_dir", "meta", "nsys", "parser", "progress",
                 "protocol", "run_meta", "seq", "sessions", "tgid", "tls", "tries")

    def __init__(self, tgid: int, comm: str, info: SockInfo | None) -> None:
        self.tgid, self.comm, self.info = tgid, comm, info
        self.fd = -1
        self.dead = info is None          # not TCP (unix socket …) or its protocol was not found
        self.parser = self.sessions = self.flow = None
        self.protocol = 0
        self.is_client = True
        self.tries = 0
        self.progress = False             # rows made since the parser (re)started
        self.seq = [0, 0]
        self.last_dir = -1
        self.run_meta = [NO_META, NO_META]
        self.meta: dict[int, tuple] = {}
        self.nsys = 0
        self.tls = False                  # plaintext from SSL_read/SSL_write seen: ciphertext is ignored


class EbpfSessions:
    """Owns per-socket parser state and per-thread trace ids; ``handle`` takes tracer events,
    ``take_rows`` hands the finished rows (``COLUMNS`` layout)."""

    def __init__(self, classify, *, detector: Detector | None = None, agent_id: int = 0, tagger=None,
                 procnet: ProcNet | None = None, metrics: bool = True, max_events_per_s: int = 0,
                 max_sockets: int = MAX_SOCKETS, max_pending: int = MAX_PENDING) -> None:
        self.classify = classify              # (tgid, fd) → socket inode, 0 not a socket, None gone
        self.budget = max_events_per_s        # data events parsed per second (0: no cap)
        self.max_sockets = max_sockets
        self.max_pending = max_pending        # requests awaiting a response, per socket
        self._win = self._win_n = 0           # the budget's current second and its event count
        self.detector = detector or Detector()
        self.agent_id = agent_id
        self.tagger = tagger
        self.procnet = procnet or ProcNet()
        self.socks: dict[tuple[int, int], SockState] = {}
        self.threads: dict[int, list] = {}       # tid → [last direction, trace id]
        self.connects: dict[tuple, deque] = {}   # server (addr, port) → client sockets missing their local end
        self.rows: list[tuple] = []
        # application metrics input: counts by (socket, second, protocol, endpoint)
        self.app_acc: dict[tuple, list[int]] | None = {} if metrics else None
        self.stats: Counter[str] = Counter()
        self._trace_seq = 0
        self._row_seq = 0
        self.mono_to_wall_ns = time.time_ns() - time.monotonic_ns()
        self._trace_base = (agent_id & 0xFFFF) << 48 | (self.mono_to_wall_ns // 1_000_000_000 & 0xFFFF) << 32

    # -- events ---------------------------------------------------------------------------------
    def handle(self, e) -> None:
        ts, tgid, tid, fd, d, tls, length, _cap, _comm, data = e
        if d > INGRESS:
            self._control(e)
            return
        key = (tgid, fd)
        st = self.socks.get(key)
        if self.budget:
            sec = ts // 1_000_000_000
            if sec != self._win:
                self._win, self._win_n = sec, 0
            self._win_n += 1
            if self._win_n > self.budget and self._shed(st, e):
                return
        if st is None:                      # a socket opened before the tracer started
            ino = self.classify(tgid, fd)
            if not ino:
                self.stats["events on unknown sockets"] += 1
                return
            if len(self.socks) >= self.max_sockets:
                self.stats["sockets shed (table full)"] += 1
                return
            st = self.socks[key] = SockState(tgid, e.comm, self.procnet.lookup(tgid, ino))
            if st.dead:
                self.stats["sockets not TCP"] += 1
        if tls != st.tls:
            if not tls:                     # ciphertext the uprobes did not suppress (handshake, alerts)
                self.stats["TLS ciphertext events skipped"] += 1
                return
            self._to_tls(st)
        if st.dead:
            return
        egress = d == EGRESS
        # per-thread trace id
        th = self.threads.get(tid)
        if th is None:
            if len(self.threads) > 100_000:
                self.threads.clear()
            th = self.threads[tid] = [d, self._trace_new()]
        elif not egress and th[0] == EGRESS:
            th[1] = self._trace_new()
        th[0] = d
        nsys = st.nsys = st.nsys + 1
        if d != st.last_dir:
            st.last_dir = d
            st.run_meta[d] = (tid, th[1], nsys)
        parser = st.parser
        if parser is None:
            if not st.info.resolved:
                self._resolve(st, fd)
            if not self._detect(st, data, egress):
                return
            parser = st.parser
        seqs = st.seq
        seq = seqs[d]
        seqs[d] = (seq + length) & MASK32
        msgs = parser.feed(data, length, egress == st.is_client, (ts + self.mono_to_wall_ns) // 1000, seq)
        if msgs.__class__ is GiveUp:
            self.stats[f"gave up: {msgs}"] += 1
            if st.progress:
                # the parser had made rows since it started: more likely an event lost than a
                # socket that is not this protocol, so parse again from the next payload (a
                # keep-alive connection would lose every later request otherwise)
                self._start_over(st, ts)
                self.stats["sockets restarted (parser gave up)"] += 1
            else:
                st.dead = True
            return
        if not msgs:
            return
        out: list = []
        req_dir = EGRESS if st.is_client else 1 - EGRESS
        meta, run_meta, sessions = st.meta, st.run_meta, st.sessions
        if st.tls:
            for m in msgs:
                m.is_tls = 1
        for m in msgs:
            t = m.type
            meta[id(m)] = run_meta[req_dir if t == REQUEST else 1 - req_dir if t == RESPONSE else d]
            sessions.add(m, out)
        if sessions.pending() > self.max_pending:
            self._evict(st, out)
        self._records(st, out)

    def _control(self, e) -> None:
        """close, accept and connect events: a socket's state ends or begins; connected: a client
        socket's local end, from the kernel."""
        key = (e.tgid, e.fd)
        if e.dir == CONNECTED:
            self._connected(key, e.data)
            return
        if e.dir == CLOSE:
            st = self.socks.pop(key, None)
            if st is not None:
                self._close(st, e.ts)
            return
        old = self.socks.pop(key, None)
        if old is not None:
            if e.dir == CONNECT and self._same_connect(old, e.data):
                self.socks[key] = old       # a non-blocking connect checked again: not a new socket
                return
            self._close(old, e.ts)
        if len(self.socks) >= self.max_sockets:
            self.stats["sockets shed (table full)"] += 1
            return
        st = self.socks[key] = self._new_sock(e, e.dir == CONNECT)
        if st.info is not None:
            self._match_connect(st)

    def _connected(self, key: tuple[int, int], data: bytes) -> None:
        """The kernel's word on a client socket's local end (tracer.CONNECTED): exact even when the
        process has since closed the fd and connected again on it, which /proc cannot tell apart
        when both connections go to the same server."""
        st = self.socks.get(key)
        got = parse_connected(data)
        if st is None or got is None or not st.is_client or st.info is None:
            return
        v4, laddr, lport, raddr, rport = got
        i = st.info
        if (i.raddr, i.rport) != (raddr, rport) or (i.lport, i.laddr) == (lport, laddr):
            return
        st.info = SockInfo(i.inode, v4, laddr, lport, raddr, rport)
        st.flow = None
        self.stats["client ends from the kernel"] += 1

    def _shed(self, st: SockState | None, e) -> bool:
        """Over the events/s budget: drop events of sockets not being parsed yet (they are picked
        up again at a later message once the rate is back under the budget); sockets being parsed
        go on up to twice the budget, then start over (what they had pending is reported UNKNOWN).
        True: the event is dropped (counted)."""
        if st is not None and st.parser is not None:
            if self._win_n <= 2 * self.budget:
                return False
            self._start_over(st, e.ts)
            self.stats["sockets restarted (over budget)"] += 1
        if st is not None:
            st.seq[e.dir] = (st.seq[e.dir] + e.len) & MASK32
        self.stats["events shed (over budget)"] += 1
        return True

    def _start_over(self, st: SockState, ts_ns: int) -> None:
        """Forget the socket's parser: what it had pending is reported UNKNOWN, and the next
        payload is detected again (a syscall's payload usually starts a message)."""
        if st.sessions is not None:
            out: list = []
            st.sessions.close((ts_ns + self.mono_to_wall_ns) // 1000, out, False)
            self._records(st, out)
        st.parser = st.sessions = None
        st.tries = 0
        st.progress = False

    def _evict(self, st: SockState, out: list) -> None:
        """More requests awaiting a response than ``max_pending``: the oldest are reported UNKNOWN."""
        sessions = st.sessions
        while sessions.pending() > self.max_pending:
            sessions._evict_oldest(out)     # the pairing's own bound, at a lower limit
            self.stats["requests evicted (pending cap)"] += 1

    def _to_tls(self, st: SockState) -> None:
        """The socket carries TLS: parse the plaintext from here on, forget the handshake's
        ciphertext (its parser and anything it had pending)."""
        st.tls = True
        st.dead = st.info is None
        st.parser = st.sessions = None
        st.tries = 0
        st.seq = [0, 0]
        st.meta.clear()
        self.stats["TLS sockets"] += 1

    def _new_sock(self, e, is_client: bool) -> SockState:
        """A socket from accept (server end) or connect (client end): the peer from the syscall's
        sockaddr, the rest from /proc while the socket still exists."""
        peer = parse_sockaddr(e.data)
        if peer is None:                 # unix or other non-IP socket
            st = SockState(e.tgid, e.comm, None)
            self.stats["sockets not TCP"] += 1
            return st
        info = None
        v4, addr, port = peer
        if not is_client:                # accept: the connection exists now; connect: not yet
            ino = fd_inode(e.tgid, e.fd)
            info = self.procnet.lookup(e.tgid, ino) if ino else None
            if info is not None and (info.raddr, info.rport) != (addr, port):
                # the fd was closed and reused before this event was read: /proc shows another
                # connection; keep what the accept itself said
                self.stats["sockets whose fd was reused before /proc was read"] += 1
                info = None
        if info is None:
            info = SockInfo(0, v4, bytes(4 if v4 else 16), 0, addr, port, resolved=False)
            lis = None if is_client else self.procnet.listener(e.tgid, v4)
            if lis is not None:          # the accepted connection is gone already: its listener's end
                local = lis.laddr
                if not any(local) and (addr[:1] == b"\x7f" or addr == bytes(15) + b"\x01"):
                    local = addr         # a wildcard listener reached over loopback
                info = SockInfo(0, v4, local, lis.lport, addr, port)
        st = SockState(e.tgid, e.comm, info)
        st.is_client = is_client
        st.fd = e.fd
        return st

    @staticmethod
    def _same_connect(old: SockState, sockaddr: bytes) -> bool:
        i = old.info
        return old.is_client and not old.nsys and i is not None and parse_sockaddr(sockaddr) == (
            i.is_v4, i.raddr, i.rport)

    def _match_connect(self, st: SockState) -> None:
        """Both ends traced on this host: a client socket whose local end /proc did not give in
        time learns it from the server's accept (its peer), oldest connect to that address first."""
        i = st.info
        if st.is_client:
            if i.lport == 0:
                q = self.connects.setdefault((i.raddr, i.rport), deque(maxlen=256))
                q.append(st)
                if len(self.connects) > 10_000:
                    self.connects.clear()
            return
        q = self.connects.get((i.laddr, i.lport))
        while q:
            cst = q.popleft()
            if cst.info.lport == 0 and self.socks.get((cst.tgid, cst.fd)) is cst:
                cst.info = SockInfo(0, i.is_v4, i.raddr, i.rport, i.laddr, i.lport)
                cst.flow = None
                self.stats["client ends from a traced accept"] += 1
                return

    def _resolve(self, st: SockState, fd: int) -> None:
        """Fill in the local end of a socket known only by its peer."""
        st.info.resolved = True          # one try
        ino = fd_inode(st.tgid, fd)
        found = self.procnet.lookup(st.tgid, ino) if ino else None
        if found is not None and (found.raddr, found.rport) == (st.info.raddr, st.info.rport):
            st.info = found
            st.flow = None
        elif st.info.lport == 0 or st.info.rport == 0:
            self.stats["sockets with unresolved local address"] += 1

    def _trace_new(self) -> int:
        """A new syscall trace id: the agent, the tracer's start second, then a sequence number."""
        self._trace_seq = seq = self._trace_seq + 1
        return self._trace_base | (seq & 0xFFFFFFFF)

    def _detect(self, st: SockState, payload: bytes, egress: bool) -> bool:
        info = st.info
        port = info.rport if info.lport not in self.procnet.listen_ports else info.lport
        found = self.detector.detect(payload, egress == st.is_client, 6, port, True)
        if found is None:
            st.tries += 1
            if st.tries >= MAX_ATTEMPTS:
                st.dead = True
                self.stats["sockets with no known protocol"] += 1
            return False
        spec, flipped = found
        st.is_client = st.is_client != flipped
        st.parser = spec.parser(self.detector.config)
        st.protocol = spec.protocol
        st.sessions = Sessions(st.parser.timeout_s)
        return True

    def _flow_part(self, st: SockState) -> tuple:
        i = st.info
        if st.is_client:
            a0, p0, a1, p1, obs = i.laddr, i.lport, i.raddr, i.rport, "c-p"
        else:
            a0, p0, a1, p1, obs = i.raddr, i.rport, i.laddr, i.lport, "s-p"
        if i.is_v4:
            ip4_0, ip4_1, ip6_0, ip6_1 = int.from_bytes(a0, "big"), int.from_bytes(a1, "big"), bytes(16), bytes(16)
            k0, k1 = ip4_0, ip4_1
        else:
            ip4_0 = ip4_1 = 0
            ip6_0, ip6_1 = k0, k1 = a0, a1
        t0 = t1 = 0
        if self.tagger is not None:
            try:
                t0, t1 = self.tagger.tag(k0), self.tagger.tag(k1)
            except Exception:  # tags are best effort
                t0 = t1 = 0
        flow_id = (SIGNAL_EBPF << 60) | (st.tgid & 0xFFFFFF) << 32 | (i.inode or p0 << 16 | p1) & 0xFFFFFFFF
        return (flow_id, ip4_0, ip4_1, ip6_0, ip6_1, int(i.is_v4), 6, p0, p1, 3, 0, 0, 0, obs, self.agent_id,
                SIGNAL_EBPF, 0, t0, t1)

    def _records(self, st: SockState, out: list) -> None:
        if not out:
            return
        st.progress = True
        flow = st.flow
        if flow is None:
            flow = st.flow = self._flow_part(st)
        pid, comm, meta, protocol = st.tgid, st.comm, st.meta, st.protocol
        side = (pid, 0, comm, "") if st.is_client else (0, pid, "", comm)
        rows, acc, row_seq = self.rows, self.app_acc, self._row_seq
        for kind, req, resp, status in out:
            row_seq += 1
            if kind == SESSION and status is None and req is not resp:
                # a request paired with its response, the common record
                rq, rs = meta.pop(id(req), NO_META), meta.pop(id(resp), NO_META)
                t = resp.ts // SEC          # the row id: its time's second, then a sequence number
                rec = l7_session_record(req, resp, protocol, t << 32 | (row_seq & MASK32), 0)
                counts = l7_session_counts(rec)
            else:
                rq = meta.pop(id(req), NO_META) if req is not None else NO_META
                rs = meta.pop(id(resp), NO_META) if resp is not None and resp is not req else (
                    rq if resp is not None else NO_META)
                t = (resp if resp is not None else req).ts // SEC
                rec = l7_record(kind, req, resp, status, protocol, t << 32 | (row_seq & MASK32), 0)
                counts = l7_counts_of(req, resp, rec)
            rows.append(flow + rec + side + (rq[0], rs[0], rq[1], rs[1], rq[2], rs[2]))
            if acc is not None:     # this second's application counts per socket, protocol and endpoint
                add_l7_counts(acc, (st, t, rec[_PROTO], rec[_ENDPOINT]), counts)
        self.stats["rows"] += row_seq - self._row_seq
        self._row_seq = row_seq

    def _close(self, st: SockState, ts_ns: int) -> None:
        if st.sessions is not None:
            out: list = []
            st.sessions.close((ts_ns + self.mono_to_wall_ns) // 1000, out, False)
            self._records(st, out)

    def expire(self) -> None:
        """Requests past their protocol's timeout → TIMEOUT rows."""
        now = time.time_ns() // 1000
        for st in self.socks.values():
            if st.sessions is not None and st.sessions.pending():
                out: list = []
                st.sessions.expire(now, out)
                self._records(st, out)

    def close_all(self) -> None:
        now = time.monotonic_ns()
        for st in self.socks.values():
            self._close(st, now)
        self.socks.clear()

    def take_rows(self) -> list[tuple]:
        rows, self.rows = self.rows, []
        return rows

    def take_app_rows(self) -> list[tuple]:
        """The application-metrics input (APP_COLUMNS) of the rows made since the last call: one
        row per socket, second, protocol and endpoint (the aggregator sums them further)."""
        acc = self.app_acc
        if not acc:
            return []
        self.app_acc = {}
        out = []
        for (st, t, protocol, endpoint), c in acc.items():
            flow = st.flow if st.flow is not None else self._flow_part(st)
            out.append((t, *_MKEY(flow), protocol, endpoint, *c, flow[_SCORE]))
        return out


# the metrics key (collector.flow.report.FS_KEY) out of an l7_flow_log flow part (L7_FLOW)
_MKEY = itemgetter(*(L7_FLOW.index(c) for c in FS_KEY))
_SCORE = L7_FLOW.index("direction_score")
_PROTO, _ENDPOINT = L7_RECORD.index("l7_protocol"), L7_RECORD.index("endpoint")
