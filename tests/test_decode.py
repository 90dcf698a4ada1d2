"""Decoder specification: (frame, expected tuple fields) tables built with ``struct``, read like the
datamodel (§5.9 decapsulation), plus truncation reasons and a cross-check against dpkt's parse."""

from __future__ import annotations

import ipaddress
import struct
from pathlib import Path

import dpkt
import pytest

from collector.decode import packet
from collector.decode.packet import ETH, NULL, RAW, RAW4, RAW6, SLL, SLL2, Decoder, Tunnel
from flowscope.enums import TunnelType

DATA = Path(__file__).parent / "data"

# Tuple field name → index, from the module's own constants.
FIELDS = {name.lower(): getattr(packet, name) for name in (
    "SRC", "DST", "SPORT", "DPORT", "PROTO", "L3_LEN", "L4_LEN", "FLAGS", "SEQ", "ACK", "WIN", "L4_OFF",
    "PAYLOAD_OFF", "IS_V4", "ETH_TYPE", "VLAN", "L2_OFF", "TUNNEL")}

MAC_C, MAC_S = bytes.fromhex("02000000000a"), bytes.fromhex("02000000000b")
FIN, SYN, RST, PSH, ACK, NS = 0x01, 0x02, 0x04, 0x08, 0x10, 0x100


# -- frame builders (test-only; checksums are zero: the decoder never reads them) -----------------
def v4(addr: str) -> int:
    return int(ipaddress.IPv4Address(addr))


def v6(addr: str) -> bytes:
    return ipaddress.IPv6Address(addr).packed


def eth(et: int, payload: bytes, *, tags: tuple[tuple[int, int], ...] = (), pad: bool = False) -> bytes:
    """Ethernet II with optional (TPID, VLAN id) tags; ``pad`` fills to the 60-byte minimum."""
    hdr = MAC_S + MAC_C + b"".join(struct.pack("!HH", tpid, vid) for tpid, vid in tags)
    frame = hdr + struct.pack("!H", et) + payload
    return frame + bytes(60 - len(frame)) if pad and len(frame) < 60 else frame


def ipv4(proto: int, payload: bytes, *, src: str = "10.0.0.1", dst: str = "10.0.0.2", ident: int = 1,
         frag: int = 0, options: bytes = b"", total: int | None = None) -> bytes:
    """IPv4; ``frag`` is the flags/fragment-offset word (0x2000 = MF), ``total`` overrides the length."""
    ihl = 5 + len(options) // 4
    tot = ihl * 4 + len(payload) if total is None else total
    return struct.pack("!BBHHHBBH4s4s", 0x40 | ihl, 0, tot, ident, frag, 64, proto, 0,
                       ipaddress.IPv4Address(src).packed, ipaddress.IPv4Address(dst).packed) + options \
        + payload


def ipv6(nh: int, payload: bytes, *, src: str = "fd00::1", dst: str = "fd00::2",
         plen: int | None = None) -> bytes:
    return struct.pack("!IHBB16s16s", 6 << 28, len(payload) if plen is None else plen, nh, 64, v6(src),
                       v6(dst)) + payload


def ext6(nh: int, body_len: int) -> bytes:
    """A generic IPv6 extension header (hop-by-hop, destination options, routing) of 8 + body_len bytes."""
    assert (body_len + 8) % 8 == 0
    return struct.pack("!BB", nh, (body_len + 8) // 8 - 1) + bytes(body_len + 6)


def frag6(nh: int, offset: int, more: bool, ident: int) -> bytes:
    return struct.pack("!BxHI", nh, offset << 3 | more, ident)


def tcp(sport: int = 40000, dport: int = 80, *, seq: int = 1000, ack: int = 2000, flags: int = PSH | ACK,
        win: int = 8192, payload: bytes = b"", options: bytes = b"") -> bytes:
    """TCP; a flags value with NS (0x100) sets the low bit of the data-offset byte (RFC 3540)."""
    doff = 5 + len(options) // 4
    return struct.pack("!HHIIBBHHH", sport, dport, seq, ack, doff << 4 | flags >> 8, flags & 0xFF, win, 0,
                       0) + options + payload


def udp(sport: int, dport: int, payload: bytes = b"") -> bytes:
    return struct.pack("!HHHH", sport, dport, 8 + len(payload), 0) + payload


def icmp(itype: int, ident: int, seq: int, data: bytes = b"") -> bytes:
    """ICMP / ICMPv6 echo layout: type, code, checksum, identifier, sequence."""
    return struct.pack("!BBHHH", itype, 0, 0, ident, seq) + data


def vxlan(vni: int, inner: bytes, *, flags: int = 0x08) -> bytes:
    return struct.pack("!B3xI", flags, vni << 8) + inner


def geneve(vni: int, ptype: int, inner: bytes, *, options: bytes = b"") -> bytes:
    """Geneve (RFC 8926): options length in 4-byte words in the low 6 bits of the first byte."""
    return struct.pack("!BBHI", len(options) // 4, 0, ptype, vni << 8) + options + inner


def geneve_opt(cls: int, otype: int, data: bytes) -> bytes:
    return struct.pack("!HBB", cls, otype, len(data) // 4) + data


def gre(ptype: int, inner: bytes, *, key: int | None = None, csum: bool = False,
        seq: int | None = None) -> bytes:
    """GRE version 0 with the optional checksum, key and sequence fields (RFC 2890 order)."""
    flags, extra = 0, b""
    if csum:
        flags, extra = flags | 0x8000, extra + bytes(4)
    if key is not None:
        flags, extra = flags | 0x2000, extra + struct.pack("!I", key)
    if seq is not None:
        flags, extra = flags | 0x1000, extra + struct.pack("!I", seq)
    return struct.pack("!HH", flags, ptype) + extra + inner


def sll(proto: int, payload: bytes) -> bytes:
    """Linux cooked capture v1: 16 bytes, protocol last."""
    return struct.pack("!HHH8sH", 0, 1, 6, MAC_C + bytes(2), proto) + payload


def sll2(proto: int, payload: bytes) -> bytes:
    """Linux cooked capture v2: 20 bytes, protocol first."""
    return struct.pack("!HHIHBB8s", proto, 0, 2, 1, 0, 6, MAC_C + bytes(2)) + payload


def loopback(family: int, payload: bytes, *, little: bool = True) -> bytes:
    """BSD loopback: the address family in the capturing host's byte order."""
    return struct.pack("<I" if little else "!I", family) + payload


def fields(pkt: tuple, names) -> dict:
    """The named fields of a decoded tuple, so a failure shows names rather than indexes."""
    return {name: pkt[FIELDS[name]] for name in names}


# -- shared pieces ------------------------------------------------------------------------------------
BODY = b"GET / HTTP/1.1\r\n\r\n"                                        # 18 bytes
SEG = tcp(40000, 80, seq=0x01020304, ack=0xA0B0C0D0, flags=PSH | ACK, win=501, payload=BODY)  # 38 bytes
INNER4 = ipv4(6, SEG, src="192.168.1.1", dst="192.168.1.2")             # 58 bytes
INNER6 = ipv6(6, SEG, src="fd01::1", dst="fd01::2")                     # 78 bytes
INNER_TCP = {"src": v4("192.168.1.1"), "dst": v4("192.168.1.2"), "sport": 40000, "dport": 80, "proto": 6,
             "l3_len": 38, "l4_len": 18, "flags": PSH | ACK, "seq": 0x01020304, "ack": 0xA0B0C0D0,
             "win": 501, "is_v4": 1, "eth_type": 0x0800}
INNER6_TCP = INNER_TCP | {"src": v6("fd01::1"), "dst": v6("fd01::2"), "is_v4": 0, "eth_type": 0x86DD}
OUT_S, OUT_D = "172.16.0.1", "172.16.0.2"          # underlay addresses


def tun(ttype: TunnelType, tier: int, tid: int, src: str = OUT_S, dst: str = OUT_D) -> Tunnel:
    """The expected TUNNEL field: the outermost tunnel's type, id and underlay addresses."""
    is_v4 = ":" not in src
    conv = v4 if is_v4 else v6
    return Tunnel(int(ttype), tier, tid, conv(src), conv(dst), int(is_v4))


def outer_udp(dport: int, payload: bytes, *, sport: int = 50000) -> bytes:
    """An underlay Ethernet/IPv4/UDP frame (172.16.0.1 → 172.16.0.2) around a tunnel header."""
    return eth(0x0800, ipv4(17, udp(sport, dport, payload), src=OUT_S, dst=OUT_D))


GENEVE_OPTS = geneve_opt(0x0102, 0x01, b"\x11" * 4) + geneve_opt(0x0103, 0x80, b"\x22" * 8)   # 8 + 12 bytes
VXLAN_IN_GENEVE = eth(0x0800, ipv4(17, udp(51000, 4789, vxlan(42, eth(0x0800, INNER4))),
                                   src="10.10.0.1", dst="10.10.0.2"))

# (id, frame, linktype, expected fields) — fields not listed are not checked.
DECODE_CASES = [
    ("ipv4-tcp-all-fields", eth(0x0800, ipv4(6, tcp(40000, 80, seq=0xFFFFFFF0, ack=7, flags=NS | PSH | ACK,
                                                     win=65535, payload=b"x" * 100))), ETH,
     {"src": v4("10.0.0.1"), "dst": v4("10.0.0.2"), "sport": 40000, "dport": 80, "proto": 6, "l3_len": 120,
      "l4_len": 100, "flags": NS | PSH | ACK, "seq": 0xFFFFFFF0, "ack": 7, "win": 65535, "l4_off": 34,
      "payload_off": 54, "is_v4": 1, "eth_type": 0x0800, "vlan": 0, "l2_off": 0, "tunnel": None}),
    ("ethernet-padding-ignored", eth(0x0800, ipv4(6, tcp(flags=SYN, seq=5, ack=0)), pad=True), ETH,
     {"l3_len": 20, "l4_len": 0, "flags": SYN, "seq": 5, "payload_off": 54}),
    ("tcp-options", eth(0x0800, ipv4(6, tcp(flags=SYN, options=b"\x02\x04\x05\xb4" + b"\x01" * 8))), ETH,
     {"l3_len": 32, "l4_len": 0, "l4_off": 34, "payload_off": 66}),
    ("ipv4-options", eth(0x0800, ipv4(6, SEG, options=b"\x94\x04\x00\x00")), ETH,
     {"sport": 40000, "dport": 80, "l3_len": 38, "l4_len": 18, "l4_off": 38, "payload_off": 58}),
    ("ipv4-udp", eth(0x0800, ipv4(17, udp(5353, 53, b"q" * 30))), ETH,
     {"sport": 5353, "dport": 53, "proto": 17, "l3_len": 38, "l4_len": 30, "flags": 0, "seq": 0,
      "l4_off": 34, "payload_off": 42, "tunnel": None}),
    ("ipv4-udp-padded", eth(0x0800, ipv4(17, udp(5353, 53, b"q"))), ETH,
     {"l3_len": 9, "l4_len": 1}),
    ("tso-total-length-0", eth(0x0800, ipv4(6, tcp(payload=b"d" * 3000), total=0)), ETH,
     {"l3_len": 3020, "l4_len": 3000}),
    ("tso-total-length-0-with-options", eth(0x0800, ipv4(6, tcp(payload=b"d" * 3000), total=0,
                                                         options=b"\x01" * 4)), ETH,
     {"l3_len": 3020, "l4_len": 3000, "l4_off": 38}),
    ("ipv6-tcp", eth(0x86DD, INNER6), ETH,
     INNER6_TCP | {"l4_off": 54, "payload_off": 74, "vlan": 0, "l2_off": 0, "tunnel": None}),
    ("ipv6-ext-headers", eth(0x86DD, ipv6(0, ext6(60, 0) + ext6(43, 16) + ext6(6, 24) + SEG,
                                          src="fd01::1", dst="fd01::2")), ETH,
     INNER6_TCP | {"l4_off": 54 + 8 + 24 + 32, "payload_off": 54 + 64 + 20}),
    ("ipv6-ah", eth(0x86DD, ipv6(51, struct.pack("!BBxxII", 6, 4, 0x100, 1) + bytes(12) + SEG,
                                 src="fd01::1", dst="fd01::2")), ETH,
     INNER6_TCP | {"l4_off": 54 + 24}),
    ("icmp-echo-request", eth(0x0800, ipv4(1, icmp(8, 0x1234, 7, b"p" * 56))), ETH,
     {"sport": 0, "dport": 0, "proto": 1, "flags": 8, "seq": 0x12340007, "l3_len": 64, "l4_len": 56,
      "l4_off": 34, "payload_off": 42}),
    ("icmp-echo-reply", eth(0x0800, ipv4(1, icmp(0, 0x1234, 7, b"p" * 56), src="10.0.0.2", dst="10.0.0.1")),
     ETH, {"src": v4("10.0.0.2"), "sport": 0, "dport": 0, "flags": 0, "seq": 0x12340007}),
    ("icmpv6-echo-request", eth(0x86DD, ipv6(58, icmp(128, 0xBEEF, 1, b"p" * 8))), ETH,
     {"proto": 58, "sport": 0, "dport": 0, "flags": 128, "seq": 0xBEEF0001, "l3_len": 16, "l4_len": 8,
      "is_v4": 0}),
    ("icmp-unknown-type", eth(0x0800, ipv4(1, icmp(3, 0, 0, bytes(28)))), ETH,
     {"flags": 3, "seq": 0, "l4_len": 28}),
    ("other-ip-proto", eth(0x0800, ipv4(132, b"s" * 16)), ETH,
     {"proto": 132, "sport": 0, "dport": 0, "l3_len": 16, "l4_len": 16, "l4_off": 34, "payload_off": 34}),
    ("802.1q", eth(0x0800, INNER4, tags=((0x8100, 0x2000 | 100),)), ETH,
     INNER_TCP | {"vlan": 100, "l4_off": 38, "l2_off": 0}),
    ("qinq-88a8", eth(0x0800, INNER4, tags=((0x88A8, 200), (0x8100, 100))), ETH,
     INNER_TCP | {"vlan": 200, "l4_off": 42}),
    ("qinq-9100", eth(0x86DD, INNER6, tags=((0x9100, 300), (0x8100, 100))), ETH,
     INNER6_TCP | {"vlan": 300, "l4_off": 62}),
    # -- tunnels (datamodel §5.9): inner fields, TUNNEL = the outermost tunnel, tier = layers cut
    ("vxlan", outer_udp(4789, vxlan(5000, eth(0x0800, INNER4))), ETH,
     INNER_TCP | {"l2_off": 50, "l4_off": 84, "payload_off": 104, "vlan": 0,
                  "tunnel": tun(TunnelType.VXLAN, 1, 5000)}),
    ("vxlan-inner-vlan", outer_udp(4789, vxlan(7, eth(0x0800, INNER4, tags=((0x8100, 33),)))), ETH,
     INNER_TCP | {"vlan": 33, "l2_off": 50, "l4_off": 88, "tunnel": tun(TunnelType.VXLAN, 1, 7)}),
    ("vxlan-flannel-8472", outer_udp(8472, vxlan(1, eth(0x0800, INNER4))), ETH,
     INNER_TCP | {"tunnel": tun(TunnelType.VXLAN, 1, 1)}),
    ("vxlan-i-flag-unset", outer_udp(4789, vxlan(5000, eth(0x0800, INNER4), flags=0)), ETH,
     {"src": v4(OUT_S), "dst": v4(OUT_D), "sport": 50000, "dport": 4789, "proto": 17,
      "l3_len": 8 + 8 + 14 + 58, "l4_len": 8 + 14 + 58, "tunnel": None}),
    ("vxlan-port-too-short-for-vxlan", outer_udp(4789, b"\x08abc"), ETH,
     {"dport": 4789, "proto": 17, "l4_len": 4, "tunnel": None}),
    ("vxlan-short-payload-with-trailer", outer_udp(4789, b"\x08" + bytes(19)) + b"\x08\x00\xaa\xbb", ETH,
     {"dport": 4789, "proto": 17, "l3_len": 28, "l4_len": 20, "tunnel": None}),
    ("vxlan-disabled-port", outer_udp(6784, vxlan(9, eth(0x0800, INNER4))), ETH,
     {"dport": 6784, "proto": 17, "tunnel": None}),
    ("geneve-options-ethernet", outer_udp(6081, geneve(0xABCDE, 0x6558, eth(0x0800, INNER4),
                                                       options=GENEVE_OPTS)), ETH,
     INNER_TCP | {"l2_off": 70, "l4_off": 104, "payload_off": 124,
                  "tunnel": tun(TunnelType.GENEVE, 1, 0xABCDE)}),
    ("geneve-ipv4-payload", outer_udp(6081, geneve(77, 0x0800, INNER4, options=GENEVE_OPTS)), ETH,
     INNER_TCP | {"l2_off": -1, "l4_off": 90, "tunnel": tun(TunnelType.GENEVE, 1, 77)}),
    ("geneve-ipv6-payload", outer_udp(6081, geneve(78, 0x86DD, INNER6)), ETH,
     INNER6_TCP | {"l2_off": -1, "l4_off": 50 + 40, "tunnel": tun(TunnelType.GENEVE, 1, 78)}),
    ("geneve-ipv6-underlay", eth(0x86DD, ipv6(17, udp(50000, 6081, geneve(12, 0x6558, eth(0x0800, INNER4))),
                                              src="fd00::a", dst="fd00::b")), ETH,
     INNER_TCP | {"l2_off": 70, "l4_off": 104,
                  "tunnel": tun(TunnelType.GENEVE, 1, 12, "fd00::a", "fd00::b")}),
    ("geneve-unknown-payload-not-decoded", outer_udp(6081, geneve(1, 0x88BE, bytes(20))), ETH, None),
    ("ipip", eth(0x0800, ipv4(4, INNER4, src=OUT_S, dst=OUT_D)), ETH,
     INNER_TCP | {"l4_off": 54, "payload_off": 74, "l2_off": 0, "tunnel": tun(TunnelType.IPIP, 1, 0)}),
    ("ipip-keeps-l2-and-vlan", eth(0x0800, ipv4(4, INNER4, src=OUT_S, dst=OUT_D), tags=((0x8100, 5),)), ETH,
     INNER_TCP | {"l4_off": 58, "l2_off": 0, "vlan": 5, "tunnel": tun(TunnelType.IPIP, 1, 0)}),
    ("ipv6-in-ipv4", eth(0x0800, ipv4(41, INNER6, src=OUT_S, dst=OUT_D)), ETH,
     INNER6_TCP | {"l4_off": 74, "tunnel": tun(TunnelType.IPIP, 1, 0)}),
    ("ipv4-in-ipv6", eth(0x86DD, ipv6(4, INNER4, src="fd00::a", dst="fd00::b")), ETH,
     INNER_TCP | {"l4_off": 74, "tunnel": tun(TunnelType.IPIP, 1, 0, "fd00::a", "fd00::b")}),
    ("gre-key", eth(0x0800, ipv4(47, gre(0x0800, INNER4, key=0xDEADBEEF), src=OUT_S, dst=OUT_D)), ETH,
     INNER_TCP | {"l2_off": -1, "l4_off": 62, "tunnel": tun(TunnelType.GRE, 1, 0xDEADBEEF)}),
    ("gre-checksum-sequence", eth(0x0800, ipv4(47, gre(0x0800, INNER4, csum=True, seq=9), src=OUT_S,
                                               dst=OUT_D)), ETH,
     INNER_TCP | {"l4_off": 66, "tunnel": tun(TunnelType.GRE, 1, 0)}),
    ("gre-checksum-key-sequence", eth(0x0800, ipv4(47, gre(0x86DD, INNER6, csum=True, key=3, seq=9),
                                                   src=OUT_S, dst=OUT_D)), ETH,
     INNER6_TCP | {"l4_off": 50 + 40, "tunnel": tun(TunnelType.GRE, 1, 3)}),
    ("gre-teb", eth(0x0800, ipv4(47, gre(0x6558, eth(0x0800, INNER4), key=6), src=OUT_S, dst=OUT_D)), ETH,
     INNER_TCP | {"l2_off": 42, "l4_off": 76, "tunnel": tun(TunnelType.GRE, 1, 6)}),
    ("gre-version-1-not-decapsulated", eth(0x0800, ipv4(47, struct.pack("!HH", 0x3001, 0x880B) + bytes(12))),
     ETH, {"proto": 47, "l4_len": 16, "tunnel": None}),
    ("gre-routing-not-decapsulated", eth(0x0800, ipv4(47, struct.pack("!HH", 0x4000, 0x0800) + INNER4)),
     ETH, {"proto": 47, "tunnel": None}),
    ("two-tiers-vxlan-in-geneve", outer_udp(6081, geneve(900, 0x6558, VXLAN_IN_GENEVE)), ETH,
     INNER_TCP | {"tunnel": tun(TunnelType.GENEVE, 2, 900), "l2_off": 50 + 14 + 28 + 8}),
    ("two-tiers-ipip-in-vxlan", outer_udp(4789, vxlan(8, eth(0x0800, ipv4(4, INNER4)))), ETH,
     INNER_TCP | {"tunnel": tun(TunnelType.VXLAN, 2, 8)}),
    ("three-tiers-third-stays-udp", outer_udp(6081, geneve(900, 0x6558, eth(0x0800, ipv4(
        17, udp(51000, 4789, vxlan(42, eth(0x0800, ipv4(17, udp(52000, 4789, vxlan(43, eth(0x0800, INNER4))),
                                                        src="10.20.0.1", dst="10.20.0.2")))))))), ETH,
     {"src": v4("10.20.0.1"), "dst": v4("10.20.0.2"), "sport": 52000, "dport": 4789, "proto": 17,
      "l4_len": 8 + 14 + 58, "tunnel": tun(TunnelType.GENEVE, 2, 900)}),
    ("three-tiers-third-ipip-stays-ip", outer_udp(4789, vxlan(8, eth(0x0800, ipv4(
        4, ipv4(4, INNER4, src="10.30.0.1", dst="10.30.0.2"))))), ETH,
     {"src": v4("10.30.0.1"), "proto": 4, "sport": 0, "l3_len": 58, "l4_len": 58,
      "tunnel": tun(TunnelType.VXLAN, 2, 8)}),
    # -- other link types
    ("sll", sll(0x0800, INNER4), SLL, INNER_TCP | {"l4_off": 36, "payload_off": 56, "l2_off": -1}),
    ("sll-vlan", sll(0x8100, struct.pack("!HH", 10, 0x0800) + INNER4), SLL, INNER_TCP | {"vlan": 10}),
    ("sll2", sll2(0x86DD, INNER6), SLL2, INNER6_TCP | {"l4_off": 60, "l2_off": -1}),
    ("raw-ip-101", INNER4, RAW, INNER_TCP | {"l4_off": 20, "l2_off": -1}),
    ("raw-ipv4-228", INNER4, RAW4, INNER_TCP | {"l4_off": 20}),
    ("raw-ipv6-229", INNER6, RAW6, INNER6_TCP | {"l4_off": 40}),
    ("loopback-af-inet-little-endian", loopback(2, INNER4), NULL, INNER_TCP | {"l4_off": 24, "l2_off": -1}),
    ("loopback-af-inet6-big-endian", loopback(24, INNER6, little=False), NULL, INNER6_TCP | {"l4_off": 44}),
    ("loopback-af-inet6-darwin", loopback(30, INNER6), NULL, INNER6_TCP),
]


@pytest.mark.parametrize(("frame", "linktype", "expected"),
                         [pytest.param(*c[1:], id=c[0]) for c in DECODE_CASES])
def test_decode_fields(frame: bytes, linktype: int, expected: dict | None) -> None:
    dec = Decoder()
    pkt = dec.decode(frame, linktype)
    if expected is None:
        assert pkt is None
        assert sum(dec.skipped.values()) == 1
        return
    assert pkt is not None, dec.skipped
    assert len(pkt) == 18
    assert fields(pkt, expected) == expected
    assert not dec.skipped


def test_ipv4_fragments_borrow_ports_from_the_first() -> None:
    """First fragment: ports, remembered; later fragments (middle, last): same ports, FLAGS 0,
    L4_LEN = their IP payload, no L4 header."""
    data = bytes(range(80))
    dgram = udp(5000, 6000, data)                                    # 88 bytes, fragmented 40/40/8
    frames = [eth(0x0800, ipv4(17, dgram[:40], ident=77, frag=0x2000)),
              eth(0x0800, ipv4(17, dgram[40:80], ident=77, frag=0x2000 | 5)),
              eth(0x0800, ipv4(17, dgram[80:], ident=77, frag=10))]
    expected = [{"sport": 5000, "dport": 6000, "proto": 17, "l3_len": 40, "l4_len": 32, "l4_off": 34,
                 "payload_off": 42},
                {"sport": 5000, "dport": 6000, "proto": 17, "flags": 0, "l3_len": 40, "l4_len": 40,
                 "l4_off": 34, "payload_off": 34},
                {"sport": 5000, "dport": 6000, "proto": 17, "flags": 0, "l3_len": 8, "l4_len": 8,
                 "payload_off": 34}]
    dec = Decoder()
    got = [dec.decode(f) for f in frames]
    assert [fields(p, e) for p, e in zip(got, expected, strict=True)] == expected
    assert dec.seen == {"IP fragment (first)": 1, "IP fragment (non-first)": 2}
    assert dec.skipped == {}
    # The last fragment released the entry: a repeat of it has no first fragment any more.
    assert dec.decode(frames[2]) is None
    assert dec.skipped == {"IP fragment without its first fragment": 1}


def test_ipv4_fragment_tcp_flags_zero_on_later_fragments() -> None:
    seg = tcp(1234, 443, flags=PSH | ACK, payload=b"z" * 60)
    dec = Decoder()
    first = dec.decode(eth(0x0800, ipv4(6, seg[:48], ident=9, frag=0x2000)))
    later = dec.decode(eth(0x0800, ipv4(6, seg[48:], ident=9, frag=6)))
    assert fields(first, ("sport", "dport", "flags", "l3_len", "l4_len")) == {
        "sport": 1234, "dport": 443, "flags": PSH | ACK, "l3_len": 48, "l4_len": 28}
    assert fields(later, ("sport", "dport", "flags", "seq", "l3_len", "l4_len")) == {
        "sport": 1234, "dport": 443, "flags": 0, "seq": 0, "l3_len": 32, "l4_len": 32}


def test_ipv4_fragment_alone_is_skipped() -> None:
    dec = Decoder()
    assert dec.decode(eth(0x0800, ipv4(17, b"x" * 40, ident=5, frag=0x2000 | 20))) is None
    assert dec.skipped == {"IP fragment without its first fragment": 1}
    # A different datagram's first fragment does not lend its ports (key: src, dst, proto, ip id).
    dec.decode(eth(0x0800, ipv4(17, udp(1, 2, b"y" * 32), ident=6, frag=0x2000)))
    assert dec.decode(eth(0x0800, ipv4(17, b"x" * 8, ident=5, frag=10))) is None
    assert dec.skipped == {"IP fragment without its first fragment": 2}


def test_first_fragment_to_a_tunnel_port_is_not_decapsulated() -> None:
    payload = udp(50000, 4789, vxlan(1, eth(0x0800, INNER4)))
    pkt = Decoder().decode(eth(0x0800, ipv4(17, payload[:48], frag=0x2000)))
    assert fields(pkt, ("dport", "proto", "tunnel")) == {"dport": 4789, "proto": 17, "tunnel": None}


def test_ipv6_fragments() -> None:
    dgram = udp(7000, 8000, bytes(100))                              # 108 bytes: 56 + 52
    src, dst = "fd02::1", "fd02::2"
    first = eth(0x86DD, ipv6(60, ext6(44, 0) + frag6(17, 0, True, 0xCAFE) + dgram[:56], src=src, dst=dst))
    last = eth(0x86DD, ipv6(44, frag6(17, 7, False, 0xCAFE) + dgram[56:], src=src, dst=dst))
    dec = Decoder()
    p1, p2 = dec.decode(first), dec.decode(last)
    assert fields(p1, ("src", "sport", "dport", "proto", "l3_len", "l4_len", "l4_off")) == {
        "src": v6(src), "sport": 7000, "dport": 8000, "proto": 17, "l3_len": 56, "l4_len": 48,
        "l4_off": 54 + 16}
    assert fields(p2, ("sport", "dport", "proto", "flags", "l3_len", "l4_len", "l4_off", "payload_off")) == {
        "sport": 7000, "dport": 8000, "proto": 17, "flags": 0, "l3_len": 52, "l4_len": 52, "l4_off": 62,
        "payload_off": 62}
    assert dec.decode(last) is None
    assert dec.skipped == {"IP fragment without its first fragment": 1}


def test_fragment_cache_is_bounded() -> None:
    dec = Decoder(fragment_cache=8)
    for ident in range(100):
        dec.decode(eth(0x0800, ipv4(17, udp(1, 2, bytes(16)), ident=ident, frag=0x2000)))
    assert len(dec._frags) <= 8
    assert dec.decode(eth(0x0800, ipv4(17, bytes(8), ident=99, frag=3))) is not None
    assert dec.decode(eth(0x0800, ipv4(17, bytes(8), ident=0, frag=3))) is None


def test_non_ip_is_seen_not_skipped() -> None:
    arp = struct.pack("!HHBBH6s4s6s4s", 1, 0x0800, 6, 4, 1, MAC_C, bytes(4), bytes(6), bytes(4))
    dec = Decoder()
    assert dec.decode(eth(0x0806, arp, pad=True)) is None
    assert dec.seen == {"non-IP ethertype 0x0806": 1}
    assert dec.skipped == {}


def test_unsupported_linktype_and_bad_ip_version_are_skipped() -> None:
    dec = Decoder()
    assert dec.decode(INNER4, 147) is None
    assert dec.decode(b"\x50" + INNER4[1:], RAW) is None
    assert dec.skipped == {"unsupported linktype N": 1, "bad IP version N": 1}
    assert set(dec.last_skip.values()) == {"unsupported linktype 147", "bad IP version 5"}


def test_decap_protocols_can_be_disabled() -> None:
    dec = Decoder(decap=("vxlan",))
    pkt = dec.decode(outer_udp(6081, geneve(1, 0x6558, eth(0x0800, INNER4))))
    assert fields(pkt, ("dport", "tunnel")) == {"dport": 6081, "tunnel": None}
    pkt = dec.decode(eth(0x0800, ipv4(4, INNER4)))
    assert fields(pkt, ("proto", "tunnel")) == {"proto": 4, "tunnel": None}


def _cut(frame: bytes, keep: int) -> bytes:
    """A snapped capture: the headers still claim the full length."""
    return frame[:keep]


VX = outer_udp(4789, vxlan(5000, eth(0x0800, INNER4)))
GENEVE_ETH = outer_udp(6081, geneve(3, 0x6558, eth(0x0800, INNER4), options=GENEVE_OPTS))
GENEVE_IP = outer_udp(6081, geneve(3, 0x0800, INNER4, options=GENEVE_OPTS))
GRE_KEY = eth(0x0800, ipv4(47, gre(0x0800, INNER4, key=1)))

# (id, frame, linktype, the one skip reason) — every reason names the layer that was cut.
TRUNCATIONS = [
    ("ethernet-13", eth(0x0800, INNER4)[:13], ETH, "truncated Ethernet header (need 14, have 13)"),
    ("802.1q-tag", eth(0x0800, INNER4, tags=((0x8100, 1),))[:16], ETH, "truncated 802.1Q tag"),
    ("ipv4-19", _cut(eth(0x0800, INNER4), 14 + 19), ETH, "truncated IPv4 header (need 20, have 19)"),
    ("ipv4-options", _cut(eth(0x0800, ipv4(6, SEG, options=bytes(8))), 14 + 22), ETH,
     "truncated IPv4 options (need 28, have 22)"),
    ("tcp-19", _cut(eth(0x0800, INNER4), 34 + 19), ETH, "truncated TCP header (need 20, have 19)"),
    ("udp-7", _cut(eth(0x0800, ipv4(17, udp(1, 2, b"abc"))), 34 + 7), ETH,
     "truncated UDP header (need 8, have 7)"),
    ("icmp-7", _cut(eth(0x0800, ipv4(1, icmp(8, 1, 1, b"abc"))), 34 + 7), ETH,
     "truncated ICMP header (need 8, have 7)"),
    ("ipv6-39", _cut(eth(0x86DD, INNER6), 14 + 39), ETH, "truncated IPv6 header (need 40, have 39)"),
    ("ipv6-tcp-19", _cut(eth(0x86DD, INNER6), 54 + 19), ETH, "truncated TCP header (need 20, have 19)"),
    ("ipv6-ext-header", _cut(eth(0x86DD, ipv6(0, ext6(6, 16) + SEG)), 54 + 6), ETH,
     "truncated IPv6 extension header"),
    ("ipv6-ext-header-body", _cut(eth(0x86DD, ipv6(0, ext6(59, 64))), 54 + 30), ETH,
     "truncated IPv6 extension header"),
    ("ipv6-fragment-header", _cut(eth(0x86DD, ipv6(44, frag6(17, 0, True, 1) + bytes(16))), 54 + 4), ETH,
     "truncated IPv6 fragment header"),
    ("vxlan-header", _cut(VX, 42 + 5), ETH, "truncated VXLAN header (need 8, have 5)"),
    ("vxlan-inner-ethernet", _cut(VX, 50 + 6), ETH,
     "truncated VXLAN inner Ethernet header (need 14, have 6)"),
    ("vxlan-inner-ipv4", _cut(VX, 64 + 10), ETH, "truncated IPv4 header (need 20, have 10)"),
    ("geneve-header", _cut(GENEVE_ETH, 42 + 4), ETH, "truncated Geneve header (need 8, have 4)"),
    ("geneve-options", _cut(GENEVE_ETH, 50 + 8), ETH, "truncated Geneve options (need 20, have 8)"),
    ("geneve-options-ip-payload", _cut(GENEVE_IP, 50 + 12), ETH,
     "truncated Geneve options (need 20, have 12)"),
    ("geneve-inner-ethernet", _cut(GENEVE_ETH, 70 + 10), ETH,
     "truncated Geneve inner Ethernet header (need 14, have 10)"),
    ("geneve-version-1", outer_udp(6081, b"\x40" + geneve(1, 0x6558, eth(0x0800, INNER4))[1:]), ETH,
     "unknown Geneve version 1"),
    ("ipip-inner-ipv4", _cut(eth(0x0800, ipv4(4, INNER4)), 34 + 10), ETH,
     "truncated IPv4 header (need 20, have 10)"),
    ("gre-key", _cut(GRE_KEY, 34 + 6), ETH, "truncated GRE header (need 8, have 6)"),
    ("gre-teb-inner-ethernet", _cut(eth(0x0800, ipv4(47, gre(0x6558, eth(0x0800, INNER4)))), 38 + 5), ETH,
     "truncated inner Ethernet header"),
    ("sll", sll(0x0800, INNER4)[:15], SLL, "truncated SLL header"),
    ("sll2", sll2(0x0800, INNER4)[:19], SLL2, "truncated SLL2 header"),
    ("loopback", b"\x02\x00\x00", NULL, "truncated loopback header"),
    ("raw-empty", b"", RAW, "empty frame"),
    ("bad-tcp-data-offset", eth(0x0800, ipv4(6, b"\x00\x01\x00\x02" + bytes(8) + b"\x40" + bytes(7))), ETH,
     "bad TCP data offset 16"),
    ("ipv4-total-below-header", eth(0x0800, ipv4(6, SEG, total=12)), ETH, "bad IP length -8"),
]


@pytest.mark.parametrize(("frame", "linktype", "reason"),
                         [pytest.param(*c[1:], id=c[0]) for c in TRUNCATIONS])
def test_truncated_frames_are_skipped_with_the_layer_named(frame: bytes, linktype: int, reason: str) -> None:
    dec = Decoder()
    assert dec.decode(frame, linktype) is None
    assert list(dec.last_skip.values()) == [reason]            # the full message names the layer
    assert sum(dec.skipped.values()) == 1 and dec.seen == {}


def test_snapped_tcp_options_keep_payload_offset_inside_the_frame() -> None:
    """Header-only captures (snaplen 54..96) cut TCP options: lengths still come from the IP
    header, the payload offset stops at the end of what was captured."""
    full = eth(0x0800, ipv4(6, tcp(flags=SYN, options=b"\x01" * 20, payload=b"p" * 10)))
    for frame, lt in ((full[:60], ETH), (full[14:60], RAW)):
        pkt = Decoder().decode(frame, lt)
        assert fields(pkt, ("l3_len", "l4_len", "flags")) == {"l3_len": 50, "l4_len": 10, "flags": SYN}
        assert pkt[FIELDS["payload_off"]] == len(frame)


def test_ipv6_payload_length_0_is_the_captured_length() -> None:
    """Linux BIG TCP (> 64 KiB GSO) leaves the IPv6 payload length 0, like IPv4 TSO's total 0."""
    pkt = Decoder().decode(eth(0x86DD, ipv6(6, tcp(payload=b"d" * 3000), plen=0)))
    assert fields(pkt, ("l3_len", "l4_len")) == {"l3_len": 3020, "l4_len": 3000}


# -- cross-check against dpkt on the committed captures -----------------------------------------------
TUNNEL_UDP = {4789, 8472, 6081}


def _dpkt_innermost(frame: bytes) -> tuple[dpkt.Packet, int]:
    """dpkt's parse, descending VXLAN/Geneve (by hand: dpkt has no parser for them) and IPIP."""
    ip, tiers = dpkt.ethernet.Ethernet(frame).data, 0
    while True:
        l4 = ip.data
        if isinstance(l4, dpkt.udp.UDP) and l4.dport in TUNNEL_UDP:
            body = bytes(l4.data)
            if l4.dport == 6081:
                inner = body[8 + (body[0] & 0x3F) * 4:]
                ptype = struct.unpack_from("!H", body, 2)[0]
                ip = dpkt.ethernet.Ethernet(inner).data if ptype == 0x6558 else (
                    dpkt.ip.IP(inner) if ptype == 0x0800 else dpkt.ip6.IP6(inner))
            else:
                ip = dpkt.ethernet.Ethernet(body[8:]).data
        elif isinstance(l4, dpkt.ip.IP | dpkt.ip6.IP6):
            ip = l4
        else:
            return ip, tiers
        tiers += 1


def _committed_frames() -> list[bytes]:
    frames = []
    for path in sorted(DATA.glob("*.pcap")):
        with path.open("rb") as f:
            frames += [bytes(buf) for _, buf in dpkt.pcap.Reader(f)]
    return frames


def _dpkt_view(frame: bytes) -> tuple[dict, int] | None:
    """The fields dpkt reads from the same bytes, and how many tunnel layers it went through."""
    ip, tiers = _dpkt_innermost(frame)
    l4 = ip.data
    if not isinstance(l4, dpkt.tcp.TCP | dpkt.udp.UDP):
        return None
    is_v4 = isinstance(ip, dpkt.ip.IP)
    want = {"src": int.from_bytes(ip.src, "big") if is_v4 else ip.src,
            "dst": int.from_bytes(ip.dst, "big") if is_v4 else ip.dst, "sport": l4.sport, "dport": l4.dport,
            "is_v4": int(is_v4), "l3_len": ip.len - ip.hl * 4 if is_v4 else ip.plen, "l4_len": len(l4.data)}
    if isinstance(l4, dpkt.tcp.TCP):
        want |= {"proto": 6, "seq": l4.seq, "ack": l4.ack, "win": l4.win, "flags": l4.flags}
    return want, tiers


def _tiers(pkt: tuple) -> int:
    tunnel = pkt[FIELDS["tunnel"]]
    return tunnel.tier if tunnel else 0


DPKT_CASES = ["ipv4-tcp-all-fields", "ethernet-padding-ignored", "ipv4-options", "ipv4-udp", "ipv6-tcp",
              "802.1q", "qinq-88a8", "vxlan", "geneve-options-ethernet", "geneve-ipv4-payload",
              "geneve-ipv6-underlay", "ipip", "ipv6-in-ipv4", "ipv4-in-ipv6", "two-tiers-vxlan-in-geneve"]


@pytest.mark.parametrize("frame", [pytest.param(c[1], id=c[0]) for c in DECODE_CASES if c[0] in DPKT_CASES])
def test_fields_agree_with_dpkt(frame: bytes) -> None:
    pkt = Decoder().decode(frame)
    want, tiers = _dpkt_view(frame)
    assert fields(pkt, want) == want
    assert _tiers(pkt) == tiers


def test_fields_agree_with_dpkt_on_committed_pcaps() -> None:
    dec = Decoder()
    checked = tunnelled = 0
    for frame in _committed_frames():
        pkt = dec.decode(frame)
        assert pkt is not None, dec.skipped
        view = _dpkt_view(frame)
        if view is None:
            continue
        want, tiers = view
        assert fields(pkt, want) == want
        assert _tiers(pkt) == tiers
        checked += 1
        tunnelled += tiers > 0
    assert checked > 6000 and tunnelled > 1000
