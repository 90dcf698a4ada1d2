"""The eBPF tracer's userspace caps, driven by synthetic socket events (no root, no bcc needed):
the events/s budget sheds sockets that are not being parsed yet and restarts busy ones past twice
the budget (counted, pending requests reported, picked up again next second); the per-socket
pending cap reports the oldest unanswered requests as UNKNOWN; the socket table is bounded; and the
eBPF settings are validated.
"""

from __future__ import annotations

import socket
import struct

import pytest

from collector.ebpf.sessions import COLUMNS, EbpfSessions
from collector.ebpf.tracer import CONNECT, CONNECTED, EGRESS, INGRESS, Event
from collector.l7.base import UNKNOWN
from flowscope.config import Config, ConfigError, EbpfSettings

PID = 999_999_901            # no such process: nothing is found in /proc for it
SEC = 1_000_000_000
REQ = b"GET /x HTTP/1.1\r\nHost: a\r\n\r\n"
RESP = b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"


def _ev(fd: int, d: int, data: bytes, ts: int) -> Event:
    return Event(ts=ts, tgid=PID, tid=PID, fd=fd, dir=d, tls=0, len=len(data), cap=len(data), rawcomm=b"t",
                 data=data)


def _connect(s: EbpfSessions, fd: int, ts: int) -> None:
    sockaddr = struct.pack("<H", socket.AF_INET) + struct.pack(">H", 8080) + socket.inet_aton("10.0.0.9") + bytes(8)
    s.handle(_ev(fd, CONNECT, sockaddr, ts))


def _exchange(s: EbpfSessions, fd: int, ts: int) -> None:
    s.handle(_ev(fd, EGRESS, REQ, ts))
    s.handle(_ev(fd, INGRESS, RESP, ts + 1000))


def _rows(s: EbpfSessions) -> list[dict]:
    return [dict(zip(COLUMNS, r, strict=True)) for r in s.take_rows()]


def test_events_budget_sheds_new_sockets_and_restarts_busy_ones() -> None:
    s = EbpfSessions(lambda tgid, fd: None, max_events_per_s=4)
    t = 100 * SEC
    for fd in (3, 4, 5):
        _connect(s, fd, t)                  # not data: never counted against the budget
    _exchange(s, 3, t)                      # events 1-2: socket 3 is parsed
    _exchange(s, 4, t)                      # events 3-4: socket 4 is parsed
    _exchange(s, 5, t)                      # events 5-6: over budget, socket 5 not parsed yet → shed
    _exchange(s, 3, t)                      # events 7-8: socket 3 is being parsed → goes on (≤ 2× budget)
    _exchange(s, 3, t)                      # events 9-10: past 2× budget → socket 3 starts over, shed
    rows = _rows(s)
    assert [r["server_port"] for r in rows] == [8080] * 3
    assert [r["type"] for r in rows] == [2, 2, 2] and all(r["request_resource"] == "/x" for r in rows)
    assert s.stats["events shed (over budget)"] == 4
    assert s.stats["sockets restarted (over budget)"] == 1
    # the next second, under the budget: sockets 3 and 5 are parsed again from their next request on
    for fd in (3, 5):
        _exchange(s, fd, t + SEC)
    assert [r["type"] for r in _rows(s)] == [2, 2] and s.stats["events shed (over budget)"] == 4


def test_a_lost_event_costs_a_few_requests_not_the_connection() -> None:
    """A keep-alive connection whose body event never arrived (ring overrun, a torn syscall): the
    parser reads the next status line as that body's end and gives up. The socket had made rows, so
    it is parsed again from its next payload on, and only the requests around the loss go."""
    s = EbpfSessions(lambda tgid, fd: None)
    t = 100 * SEC
    _connect(s, 3, t)
    head = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n"
    for i in range(10):
        ts = t + i * 10_000_000
        s.handle(_ev(3, EGRESS, REQ, ts))
        s.handle(_ev(3, INGRESS, head, ts + 1000))
        if i != 4:                          # the 5th response's body event is lost
            s.handle(_ev(3, INGRESS, b"ok", ts + 2000))
    s.close_all()
    rows = _rows(s)
    assert s.stats["gave up: http1: bad status line b'TP/1.1 200 OK'"] == 1
    assert s.stats["sockets restarted (parser gave up)"] == 1
    sessions = [r for r in rows if r["type"] == 2]
    assert len(sessions) == 9               # requests 1-5 and 7-10; the 6th one's response was misread
    assert [r["type"] for r in rows].count(0) == 1 and rows[5]["response_status"] == UNKNOWN   # the 6th request


def test_a_socket_that_gives_up_before_any_row_stays_dead() -> None:
    """A parser that gives up before it ever made a row is the wrong protocol, not a lost event:
    the socket is not parsed again."""
    s = EbpfSessions(lambda tgid, fd: None)
    t = 100 * SEC
    _connect(s, 3, t)
    s.handle(_ev(3, EGRESS, REQ, t))
    s.handle(_ev(3, INGRESS, b"HTTP/9 what\r\n\r\n", t + 1000))
    for i in range(3):
        _exchange(s, 3, t + (i + 1) * SEC)
    s.close_all()
    assert not [r for r in _rows(s) if r["type"] == 2]
    assert "sockets restarted (parser gave up)" not in s.stats


def test_no_budget_means_no_shedding() -> None:
    s = EbpfSessions(lambda tgid, fd: None)
    _connect(s, 3, SEC)
    for i in range(50):
        _exchange(s, 3, SEC + i * 10_000)
    assert len(_rows(s)) == 50 and not s.stats["events shed (over budget)"]


def test_pending_cap_reports_oldest_requests_unknown() -> None:
    s = EbpfSessions(lambda tgid, fd: None, max_pending=2)
    _connect(s, 3, SEC)
    for i in range(5):                      # five pipelined requests, no answer yet
        s.handle(_ev(3, EGRESS, REQ.replace(b"/x", b"/r%d" % i), SEC + i))
    rows = _rows(s)
    assert [(r["request_resource"], r["response_status"], r["type"]) for r in rows] == [
        (f"/r{i}", UNKNOWN, 0) for i in range(3)]
    assert s.stats["requests evicted (pending cap)"] == 3
    s.handle(_ev(3, INGRESS, RESP, SEC + 10))   # the oldest still pending gets the answer
    assert [(r["request_resource"], r["type"]) for r in _rows(s)] == [("/r3", 2)]


def test_socket_table_is_bounded() -> None:
    s = EbpfSessions(lambda tgid, fd: None, max_sockets=3)
    for fd in range(3, 10):
        _connect(s, fd, SEC)
    assert len(s.socks) == 3 and s.stats["sockets shed (table full)"] == 4


@pytest.mark.parametrize(("settings", "message"), [
    (EbpfSettings(payload_bytes=500), "ebpf.payload_bytes: a power of two in 64..4096"),
    (EbpfSettings(payload_bytes=8192), "ebpf.payload_bytes: a power of two in 64..4096"),
    (EbpfSettings(perf_pages=100), "ebpf.perf_pages: a power of two"),
    (EbpfSettings(max_events_per_s=-1), "max_events_per_s >= 0"),
    (EbpfSettings(cpu_policy="low"), "ebpf.cpu_policy: idle or normal, got 'low'"),
])
def test_ebpf_settings_are_validated(settings: EbpfSettings, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        Config(ebpf=settings).validate()


def test_an_accept_whose_fd_was_reused_keeps_its_own_peer(monkeypatch) -> None:
    """By the time the tracer reads an accept event the process may have closed that fd and
    accepted another connection on it: /proc then shows the other connection. The accept's own
    peer address wins (the rows of the first connection must not carry the second one's port)."""
    from collector.ebpf import sessions as sessions_mod
    from collector.ebpf.tracer import ACCEPT, SockInfo

    later = SockInfo(77, True, socket.inet_aton("10.0.0.1"), 8080, socket.inet_aton("10.0.0.9"), 40002)
    monkeypatch.setattr(sessions_mod, "fd_inode", lambda tgid, fd: 77)
    s = EbpfSessions(lambda tgid, fd: None)
    monkeypatch.setattr(s.procnet, "lookup", lambda tgid, ino: later)
    monkeypatch.setattr(s.procnet, "listener", lambda tgid, v4: None)
    peer = struct.pack("<H", socket.AF_INET) + struct.pack(">H", 40001) + socket.inet_aton("10.0.0.9") + bytes(8)
    s.handle(_ev(7, ACCEPT, peer, 100 * SEC))
    s.handle(_ev(7, INGRESS, REQ, 100 * SEC))
    s.handle(_ev(7, EGRESS, RESP, 100 * SEC + 1000))
    (row,) = _rows(s)
    assert row["client_port"] == 40001 and row["request_resource"] == "/x"
    assert s.stats["sockets whose fd was reused before /proc was read"] == 1


@pytest.mark.parametrize("family", [socket.AF_INET, socket.AF_INET6])
def test_a_client_socket_takes_its_local_end_from_the_connected_event(family) -> None:
    """tracer.CONNECTED (the kernel's SYN_SENT → ESTABLISHED, with the tracepoint's addresses)
    gives a client socket its local address and port, v4-mapped v6 read as v4; one that names
    another peer (a stale event for a reused fd) changes nothing."""
    def connected(sport: int, daddr: str) -> bytes:
        addrs = [socket.inet_aton(a) for a in ("10.0.0.2", daddr)]
        if family == socket.AF_INET6:
            addrs = [bytes(10) + b"\xff\xff" + a for a in addrs]
        return struct.pack("<HHHH", family, sport, 8080, 0) + b"".join(a.ljust(16, b"\0") for a in addrs)

    s = EbpfSessions(lambda tgid, fd: None)
    _connect(s, 5, SEC)
    s.handle(_ev(5, CONNECTED, connected(40001, "10.0.0.7"), SEC + 1))     # not this socket's peer
    s.handle(_ev(5, CONNECTED, connected(40002, "10.0.0.9"), SEC + 2))
    _exchange(s, 5, SEC + 10)
    (row,) = _rows(s)
    assert (row["ip4_0"], row["client_port"], row["ip4_1"], row["server_port"]) == (
        int.from_bytes(socket.inet_aton("10.0.0.2"), "big"), 40002, int.from_bytes(socket.inet_aton("10.0.0.9"), "big"),
        8080)
    assert s.stats["client ends from the kernel"] == 1
