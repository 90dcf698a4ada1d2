"""AfPacketSource on a veth pair between two throwaway network namespaces (needs root).

The client and server exchange payloads of known sizes, so what the ring delivers can be checked
exactly: SYN counts, payload bytes per direction, the direction flag of every packet.
"""

from __future__ import annotations

import mmap
import os
import random
import socket
import struct
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from collector.capture import PACKET_FANOUT_HASH, AfPacketSource, CaptureError, CaptureNic, afpacket
from tests.netns import N_CONN, PORT, REQ_SIZES, SMALL_RING, NetPair, live, run_client, sh


class Collector(threading.Thread):
    """Iterates a source in the background; after ``done`` it stops at the second empty batch (all rings
    idle for two idle periods, so every block the kernel retired has been read)."""

    def __init__(self, src: AfPacketSource) -> None:
        super().__init__(daemon=True)
        self.src = src
        self.packets: list[tuple[int, bytes, int, int, int]] = []
        self.done = threading.Event()
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            empties = 0
            for batch in self.src.batches():
                self.packets.extend(batch)
                if self.done.is_set() and not batch:
                    empties += 1
                    if empties >= 2:
                        return
        except BaseException as e:
            self.error = e

    def finish(self) -> list[tuple[int, bytes, int, int, int]]:
        self.done.set()
        self.join(timeout=60)
        assert not self.is_alive(), "capture thread did not stop"
        assert self.error is None, self.error
        return self.packets


@dataclass(frozen=True)
class Tcp:
    src: str
    dst: str
    sport: int
    dport: int
    flags: int
    payload: int
    direction: int


def tcp_packets(packets: list[tuple[int, bytes, int, int, int]], ips: set[str]) -> list[Tcp]:
    out = []
    for _, frame, _, _, direction in packets:
        if len(frame) < 34 or frame[12:14] != b"\x08\x00" or frame[23] != 6:
            continue
        ihl = (frame[14] & 0x0F) * 4
        total = struct.unpack_from("!H", frame, 16)[0]
        src, dst = socket.inet_ntoa(frame[26:30]), socket.inet_ntoa(frame[30:34])
        if src not in ips or dst not in ips:
            continue
        t = 14 + ihl
        sport, dport = struct.unpack_from("!HH", frame, t)
        doff = (frame[t + 12] >> 4) * 4
        out.append(Tcp(src, dst, sport, dport, frame[t + 13], total - ihl - doff, direction))
    return out


SYN, ACK, FIN = 0x02, 0x10, 0x01


@live
def test_capture_tcp_exchange_in_other_namespace(netpair: NetPair, server: None) -> None:
    ns_before = os.readlink("/proc/thread-self/ns/net")
    src = AfPacketSource([f"{netpair.a}/veth-a"], idle_ms=100, **SMALL_RING)
    assert os.readlink("/proc/thread-self/ns/net") == ns_before  # setns was undone
    assert src.nics == {0: CaptureNic(0, "veth-a", netpair.a, netpair.mac(netpair.a, "veth-a"), 1, 65535)}
    col = Collector(src)
    col.start()
    try:
        run_client(netpair)
        packets = col.finish()
        stats = src.stats()
    finally:
        src.close()

    assert all(nic == 0 for _, _, _, nic, _ in packets)
    assert all(wlen == len(frame) for _, frame, wlen, _, _ in packets)
    assert [p[0] for p in packets] == sorted(p[0] for p in packets)
    tcp = tcp_packets(packets, {netpair.ip_a, netpair.ip_b})
    from_a = [p for p in tcp if p.src == netpair.ip_a]
    from_b = [p for p in tcp if p.src == netpair.ip_b]
    assert {p.direction for p in from_a} == {2}  # sent by this host through veth-a
    assert {p.direction for p in from_b} == {1}  # received by veth-a from its peer
    assert sum(1 for p in from_a if p.flags & (SYN | ACK) == SYN) == N_CONN
    assert sum(1 for p in from_b if p.flags & (SYN | ACK) == SYN | ACK) == N_CONN
    assert len({p.sport for p in from_a if p.flags & SYN}) == N_CONN
    assert sum(1 for p in from_a if p.flags & FIN) == N_CONN
    assert sum(1 for p in from_b if p.flags & FIN) == N_CONN
    assert sum(p.payload for p in from_a) == sum(4 + n for n in REQ_SIZES)
    assert sum(p.payload for p in from_b) == sum(4 + 2 * n + 100 for n in REQ_SIZES)
    assert all(p.dport == PORT for p in from_a)

    assert stats["kernel_drops"] == 0
    assert stats["kernel_freeze_q"] == 0
    assert stats["packets"] == len(packets)
    assert stats["kernel_packets"] >= len(packets)
    assert stats["bytes"] == sum(len(p[1]) for p in packets)


@live
def test_snaplen_truncates_in_kernel(netpair: NetPair) -> None:
    with AfPacketSource([f"{netpair.a}/veth-a"], snaplen=96, idle_ms=100, **SMALL_RING) as src:
        col = Collector(src)
        col.start()
        netpair.exec_a("ping", "-c", "3", "-i", "0.2", "-s", "1000", netpair.ip_b)
        packets = col.finish()
    icmp = [
        (len(f), w, d) for _, f, w, _, d in packets if len(f) > 23 and f[12:14] == b"\x08\x00" and f[23] == 1
    ]
    assert sorted(icmp) == [(96, 14 + 20 + 8 + 1000, 1)] * 3 + [(96, 14 + 20 + 8 + 1000, 2)] * 3


@live
def test_fanout_splits_flows_between_sources(netpair: NetPair, server: None) -> None:
    group = random.randrange(1, 60000)
    srcs = [
        AfPacketSource([f"{netpair.a}/veth-a"], fanout=(group, PACKET_FANOUT_HASH), idle_ms=100, **SMALL_RING)
        for _ in range(2)
    ]
    cols = [Collector(s) for s in srcs]
    try:
        for c in cols:
            c.start()
        run_client(netpair)
        captured = [tcp_packets(c.finish(), {netpair.ip_a, netpair.ip_b}) for c in cols]
    finally:
        for s in srcs:
            s.close()
    # the kernel's symmetric flow hash sends both directions of a connection to the same member
    ports = [{p.sport if p.src == netpair.ip_a else p.dport for p in pkts} for pkts in captured]
    assert not ports[0] & ports[1]
    assert len(ports[0] | ports[1]) == N_CONN
    syns = sum(1 for pkts in captured for p in pkts if p.flags & (SYN | ACK) == SYN)
    assert syns == N_CONN


@live
def test_no_match_lists_existing_interfaces(netpair: NetPair) -> None:
    with pytest.raises(CaptureError) as e:
        AfPacketSource([f"{netpair.a}/nomatch*", "nomatch-either"])
    msg = str(e.value)
    assert msg.startswith(f"no interface matches '{netpair.a}/nomatch*', 'nomatch-either'; interfaces: ")
    assert f"{netpair.a}/veth-a" in msg and f"{netpair.b}/veth-b" in msg and f"{netpair.a}/lo" in msg


@live
def test_rescan_opens_new_and_closes_vanished_interfaces(netpair: NetPair) -> None:
    src = AfPacketSource(
        [f"{netpair.a}/veth-a", f"{netpair.a}/late*"], idle_ms=50, rescan_s=0.1, **SMALL_RING
    )
    try:
        assert [n.name for n in src.nics.values()] == ["veth-a"]
        sh(
            "ip",
            "link",
            "add",
            "late0",
            "netns",
            netpair.a,
            "type",
            "veth",
            "peer",
            "name",
            "late0b",
            "netns",
            netpair.b,
        )
        for ns, dev, host in ((netpair.a, "late0", 1), (netpair.b, "late0b", 2)):
            sh("ip", "-n", ns, "addr", "add", f"10.232.{netpair.subnet}.{host}/24", "dev", dev)
            sh("ip", "-n", ns, "link", "set", dev, "up")
        batches = src.batches()
        for _ in range(400):
            next(batches)
            if any(n.name == "late0" for n in src.nics.values()):
                break
        late = next(n for n in src.nics.values() if n.name == "late0")
        assert late == CaptureNic(1, "late0", netpair.a, netpair.mac(netpair.a, "late0"), 1, 65535)

        # a datagram routed out of the new interface is seen as outgoing on it
        send = f"import socket; socket.socket(socket.AF_INET, socket.SOCK_DGRAM).sendto(b'hello', ('10.232.{netpair.subnet}.2', 9))"
        netpair.exec_a(sys.executable, "-c", send)
        seen = []
        for _ in range(400):
            seen = [
                p
                for p in next(batches)
                if p[3] == late.nic_id and p[1][23:24] == b"\x11" and p[1].endswith(b"hello")
            ]
            if seen:
                break
        assert [(p[4], p[2]) for p in seen] == [(2, 14 + 20 + 8 + 5)]

        sh("ip", "-n", netpair.a, "link", "del", "late0")
        for _ in range(400):
            next(batches)
            if src.stats()["nics_vanished"]:
                break
        stats = src.stats()
        assert stats["nics_vanished"] == 1
        assert stats["nics_opened"] == 2
        assert stats["rescans"] >= 2
        assert late.nic_id in src.nics  # ids are never reused; the description stays for late packets
    finally:
        src.close()


@live
def test_close_from_another_thread_stops_batches(netpair: NetPair) -> None:
    src = AfPacketSource([f"{netpair.a}/veth-a"], idle_ms=60_000, **SMALL_RING)
    col = Collector(src)
    col.start()
    src.close()  # wakes the poll at once although idle_ms is a minute
    col.join(timeout=30)
    assert not col.is_alive()
    assert col.error is None
    assert list(src.batches()) == []
    src.close()  # idempotent


@live
def test_deleted_namespace_is_released(netpair: NetPair) -> None:
    """Our socket would keep a deleted namespace (and its interfaces) alive; rescans must let go of it."""
    src = AfPacketSource(
        [f"{netpair.a}/veth-a", f"{netpair.b}/veth-b"], idle_ms=50, rescan_s=0.1, **SMALL_RING
    )
    try:
        assert sorted((n.netns, n.name) for n in src.nics.values()) == [
            (netpair.a, "veth-a"),
            (netpair.b, "veth-b"),
        ]
        sh("ip", "netns", "del", netpair.b)
        batches = src.batches()
        # veth-b goes first; once its socket is closed namespace b dies, taking the veth pair with it
        for _ in range(400):
            next(batches)
            if src.stats()["nics_vanished"] == 2:
                break
        assert src.stats()["nics_vanished"] == 2
        assert sh("ip", "-n", netpair.a, "-br", "link", "show", "type", "veth").stdout.strip() == ""
    finally:
        src.close()


# -- the ring walker on synthetic TPACKET_V3 blocks (no root needed) ----------------------------------------

BLOCK = 4096
ETH_IP = bytes.fromhex("020000000002020000000001") + b"\x08\x00" + bytes(range(20))


def fill_block(
    mm: mmap.mmap, index: int, packets: list[tuple[int, int, bytes, int, int, int, int, int]], status: int = 1
) -> None:
    """Lay out a block as the kernel does: block descriptor, then tpacket3_hdr + sockaddr_ll + frame.

    packets: (sec, nsec, frame, wire_len, tp_status, sll_pkttype, vlan_tci, vlan_tpid)
    """
    base = index * BLOCK
    mm[base : base + BLOCK] = bytes(BLOCK)
    off = base + 48
    for i, (sec, nsec, frame, wlen, tp_status, pkttype, tci, tpid) in enumerate(packets):
        mac = 82  # TPACKET_ALIGN(48 + sizeof(sockaddr_ll)) + 2, so the IP header lands aligned
        size = (mac + len(frame) + 15) & ~15
        nxt = 0 if i == len(packets) - 1 else size
        struct.pack_into(
            "=IIIIIIHHIIH", mm, off, nxt, sec, nsec, len(frame), wlen, tp_status, mac, mac + 14, 0, tci, tpid
        )
        struct.pack_into(
            "=HHiHBB8s", mm, off + 48, 17, socket.htons(0x0800), 3, 1, pkttype, 6, b"\x02\0\0\0\0\x01"
        )
        mm[off + mac : off + mac + len(frame)] = frame
        off += size
    struct.pack_into("=III", mm, base + 8, status, len(packets), 48)


@pytest.fixture
def ring() -> Iterator[afpacket._Ring]:
    mm = mmap.mmap(-1, 3 * BLOCK)
    r = afpacket._Ring(socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM), mm, BLOCK, 3)
    r.nic_id = 7
    r.special = afpacket.TP_STATUS_VLAN_VALID
    yield r
    r.close()


def block_status(r: afpacket._Ring, index: int) -> int:
    return struct.unpack_from("=I", r.mm, index * BLOCK + 8)[0]


def test_ring_walk_resumes_mid_block_and_wraps(ring: afpacket._Ring, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(afpacket, "BATCH", 2)
    fill_block(ring.mm, 0, [(1, 1_000, ETH_IP, 60, 1, 0, 0, 0), (1, 2_999, ETH_IP[:20], 60, 1, 4, 0, 0),
                            (2, 0, ETH_IP, 34, 1, 1, 0, 0)])  # fmt: skip
    fill_block(ring.mm, 1, [(3, 0, ETH_IP, 34, 1, 3, 0, 0)])
    fill_block(ring.mm, 2, [(9, 0, ETH_IP, 34, 1, 0, 0, 0)], status=0)  # still the kernel's
    batches = []
    for _ in range(3):
        batch: list = []
        afpacket.drain_ring(ring, batch)
        batches.append(batch)
    assert batches == [
        [(1_000_001, ETH_IP, 60, 7, 1), (1_000_002, ETH_IP[:20], 60, 7, 2)],
        [(2_000_000, ETH_IP, 34, 7, 1), (3_000_000, ETH_IP, 34, 7, 1)],
        [],
    ]
    assert [block_status(ring, i) for i in range(3)] == [0, 0, 0]  # handed back
    assert ring.cur == 2
    fill_block(ring.mm, 2, [(9, 0, ETH_IP, 34, 1, 0, 0, 0)])
    fill_block(ring.mm, 0, [(10, 0, ETH_IP, 34, 1, 0, 0, 0)])
    batch = []
    afpacket.drain_ring(ring, batch)
    assert [p[0] for p in batch] == [9_000_000, 10_000_000]
    assert ring.cur == 1


def test_ring_reinserts_stripped_vlan_tag(ring: afpacket._Ring) -> None:
    valid = 1 | afpacket.TP_STATUS_VLAN_VALID
    fill_block(ring.mm, 0, [(1, 0, ETH_IP, 34, valid, 0, 0x2064, 0),
                            (1, 0, ETH_IP, 34, valid | afpacket.TP_STATUS_VLAN_TPID_VALID, 4, 5, 0x88A8)])  # fmt: skip
    batch: list = []
    assert afpacket.drain_ring(ring, batch) == (2 * (len(ETH_IP) + 4), 2 * 38)
    assert batch == [
        (1_000_000, ETH_IP[:12] + bytes.fromhex("81002064") + ETH_IP[12:], 38, 7, 1),
        (1_000_000, ETH_IP[:12] + bytes.fromhex("88a80005") + ETH_IP[12:], 38, 7, 2),
    ]


def test_ring_cooked_header_for_unknown_link_types(ring: afpacket._Ring) -> None:
    ring.mode = afpacket.LINKTYPE_LINUX_SLL
    ring.special = 0xFFFFFFFF
    fill_block(ring.mm, 0, [(1, 0, ETH_IP, 34, 1, 4, 0, 0)])
    batch: list = []
    afpacket.drain_ring(ring, batch)
    sll = struct.pack("!HHH8sH", 4, 1, 6, b"\x02\0\0\0\0\x01\0\0", 0x0800)
    assert batch == [(1_000_000, sll + ETH_IP[14:], 34 - 14 + 16, 7, 2)]
