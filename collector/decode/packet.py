"""Frame → flat packet tuple: L2 (Ethernet, 802.1Q/QinQ, SLL, raw IP), IPv4/IPv6, TCP/UDP/ICMP,
tunnels (VXLAN, Geneve, IPIP, GRE) up to two tiers.

The decoder runs once per packet, so it returns one flat tuple (no objects) and never raises:
anything it cannot use is counted by reason in ``Decoder.skipped`` and ``None`` comes back.
IPv4 addresses are ints, IPv6 addresses 16-byte ``bytes``.
"""

from __future__ import annotations

import re
import struct
from collections import OrderedDict
from typing import NamedTuple

import cython

from flowscope.enums import TunnelType

# Tuple layout returned by Decoder.decode (index constants for readers off the hot path).
SRC, DST, SPORT, DPORT, PROTO, L3_LEN, L4_LEN, FLAGS, SEQ, ACK, WIN, L4_OFF, PAYLOAD_OFF, IS_V4, \
    ETH_TYPE, VLAN, L2_OFF, TUNNEL = range(18)


class Tunnel(NamedTuple):
    """The outermost tunnel of a packet (DeepFlow stores only that one) and how many were cut."""

    type: int           # flowscope.enums.TunnelType
    tier: int           # layers decapsulated, 1..2
    id: int             # VNI or GRE key, 0 for IPIP
    src: int | bytes    # outer IP source
    dst: int | bytes
    is_v4: int


ETH, SLL, SLL2, RAW, RAW4, RAW6, NULL = 1, 113, 276, 101, 228, 229, 0
_RAW_LINKTYPES = {RAW, RAW4, RAW6, 12, 14}
VLAN_TPIDS = (0x8100, 0x88A8, 0x9100)
IPV6_EXT = {0, 43, 60, 135, 139, 140}
VXLAN_PORTS = (4789, 8472)
GENEVE_PORT = 6081
MASK32 = 0xFFFFFFFF
T_VXLAN, T_IPIP, T_GRE, T_GENEVE = int(TunnelType.VXLAN), int(TunnelType.IPIP), int(TunnelType.GRE), \
    int(TunnelType.GENEVE)

_u16 = struct.Struct("!H").unpack_from
_u32 = struct.Struct("!I").unpack_from
# IPv4 header without options (ver/ihl checked separately) + the first 16 bytes of TCP.
_ip4h = struct.Struct("!xxHHHxBxxII").unpack_from
_ip4 = struct.Struct("!BxHHHxBxxII").unpack_from
_ports = struct.Struct("!HH").unpack_from
_vlan = struct.Struct("!HH").unpack_from
_tcp = struct.Struct("!HHIIBBH").unpack_from
_udp = struct.Struct("!HHH").unpack_from
_ip6 = struct.Struct("!4xHBx16s16s").unpack_from
_vxlan = struct.Struct("!B3xI").unpack_from
_geneve = struct.Struct("!BBHI").unpack_from


class Decoder:
    """Decodes frames of one capture; keeps skip counters and a small IP-fragment cache."""

    def __init__(self, *, decap: tuple[str, ...] = ("vxlan", "geneve", "ipip", "gre"),
                 vxlan_ports: tuple[int, ...] = VXLAN_PORTS, geneve_port: int = GENEVE_PORT,
                 max_tunnel_tiers: int = 2, fragment_cache: int = 4096) -> None:
        self.vxlan_ports = frozenset(vxlan_ports) if "vxlan" in decap else frozenset()
        self.geneve_port = geneve_port if "geneve" in decap else -1
        self.decap_ipip = "ipip" in decap
        self.decap_gre = "gre" in decap
        self.tunnel_udp_ports = self.vxlan_ports | ({geneve_port} if "geneve" in decap else set())
        self.max_tiers = max_tunnel_tiers
        self.skipped: dict[str, int] = {}
        self.seen: dict[str, int] = {}          # notable but valid: fragments, non-IP frames
        self.last_skip: dict[str, str] = {}
        self.tunnels: dict[tuple, Tunnel] = {}
        self._frags: OrderedDict[tuple, tuple[int, int]] = OrderedDict()
        self._frag_cap = fragment_cache

    def _outer(self, tunnel: Tunnel | None, ttype: int, tier: int, tid: int, src, dst, is_v4: int) -> Tunnel:
        """Keep the outermost tunnel's identity, count the tiers. Outer headers repeat for every
        packet of a tunnel, so their Tunnel objects are shared (bounded cache)."""
        if tunnel is None:
            key = (ttype, tid, src, dst)
            t = self.tunnels.get(key)
            if t is None:
                if len(self.tunnels) >= 4096:
                    self.tunnels.clear()
                t = self.tunnels[key] = Tunnel(ttype, 1, tid, src, dst, is_v4)
            return t
        return tunnel._replace(tier=tier + 1)

    # -- counters ---------------------------------------------------------------------------
    def _skip(self, reason: str) -> None:
        """Count a skipped frame by the kind of problem (numbers folded, so the set of reasons stays
        small enough for metric labels); the last full message per kind is kept for logs."""
        key = _reason_key(reason)
        self.skipped[key] = self.skipped.get(key, 0) + 1
        self.last_skip[key] = reason

    def _note(self, what: str) -> None:
        """Count something valid but not decoded (ARP, LLDP, fragments): at most 64 kinds, the rest
        in one bucket, so random garbage cannot grow the dict."""
        seen = self.seen
        if what not in seen and len(seen) >= 64:
            what = "non-IP ethertype (other)"
        seen[what] = seen.get(what, 0) + 1

    # -- entry point ------------------------------------------------------------------------
    def decode(self, frame: bytes, linktype: int = ETH):
        """One frame → the packet tuple (see the index constants) or None (counted)."""
        try:
            if linktype == ETH:
                if len(frame) < 14:
                    self._skip(f"truncated Ethernet header (need 14, have {len(frame)})")
                    return None
                return self._net(frame, 14, frame[12] << 8 | frame[13], 0, 0, None)
            return self._other_link(frame, linktype)
        except (struct.error, IndexError, ValueError):
            self._skip("truncated header")
            return None

    # C integers in the compiled form (setup.py): offsets and header fields
    @cython.locals(off=cython.Py_ssize_t, et=cython.int, l2=cython.Py_ssize_t, tier=cython.int, vlan=cython.int,
                   n=cython.Py_ssize_t, l3=cython.Py_ssize_t, l4o=cython.Py_ssize_t, tot=cython.Py_ssize_t,
                   frag=cython.int, proto=cython.int, is_v4=cython.int, doff=cython.int, thl=cython.Py_ssize_t,
                   flags=cython.int, tci=cython.int)
    def _net(self, frame: bytes, off: int, et: int, l2: int, tier: int, tunnel: Tunnel | None,
             vlan: int = 0):
        """From an ethertype at ``off`` down to L4. Common shapes (IPv4 without options or IPv6
        without extension headers, carrying TCP/UDP, VXLAN/Geneve inside) stay in this loop;
        everything else takes the general path below. ``vlan`` is an outer tag kept across IPIP."""
        n = len(frame)
        while True:
            if et == 0x0800:
                if n < off + 20 or frame[off] != 0x45:
                    return self._ipv4(frame, off, vlan, l2, tier, tunnel)
                tot, _ipid, frag, proto, src, dst = _ip4h(frame, off)
                if frag & 0x3FFF:
                    return self._ipv4(frame, off, vlan, l2, tier, tunnel)
                l3 = (tot or n - off) - 20
                is_v4 = 1
                l4o = off + 20
            elif et == 0x86DD:
                if n < off + 40 or frame[off] >> 4 != 6:
                    return self._ipv6(frame, off, vlan, l2, tier, tunnel)
                l3, proto, src, dst = _ip6(frame, off)
                l3 = l3 or n - off - 40     # 0: BIG TCP GSO super-frame, like IPv4 TSO's total 0
                if proto != 6 and proto != 17:
                    return self._ipv6(frame, off, vlan, l2, tier, tunnel)
                is_v4 = 0
                l4o = off + 40
            elif et in VLAN_TPIDS:
                if n < off + 4:
                    self._skip("truncated 802.1Q tag")
                    return None
                tci, et = _vlan(frame, off)
                if not vlan:
                    vlan = tci & 0x0FFF
                off += 4
                continue
            else:
                self._note(f"non-IP ethertype 0x{et:04x}")
                return None
            if l3 < 0:
                self._skip(f"bad IP length {l3}")
                return None
            if proto == 6:
                if n < l4o + 20:
                    self._skip(f"truncated TCP header (need 20, have {n - l4o})")
                    return None
                sport, dport, seq, ack, doff, flags, win = _tcp(frame, l4o)
                thl = (doff >> 4) << 2
                if thl < 20:
                    self._skip(f"bad TCP data offset {thl}")
                    return None
                # Snapped header-only captures may cut the options: the payload starts at most at the end.
                return (src, dst, sport, dport, 6, l3, l3 - thl if l3 > thl else 0,
                        flags | (doff & 1) << 8, seq, ack, win, l4o, l4o + thl if n >= l4o + thl else n,
                        is_v4, et, vlan, l2, tunnel)
            if proto == 17:
                if n < l4o + 8:
                    self._skip(f"truncated UDP header (need 8, have {n - l4o})")
                    return None
                sport, dport = _ports(frame, l4o)
                if dport in self.tunnel_udp_ports and tier < self.max_tiers:
                    inner = self._udp_tunnel(frame, l4o + 8, l4o + l3, dport, src, dst, is_v4, tier,
                                             tunnel)
                    if inner is not None:
                        if inner[0] < 0:
                            return None
                        off, et, l2, tunnel = inner
                        tier += 1
                        vlan = 0
                        continue
                return (src, dst, sport, dport, 17, l3, l3 - 8 if l3 > 8 else 0, 0, 0, 0, 0, l4o, l4o + 8,
                        is_v4, et, vlan, l2, tunnel)
            return self._l4(frame, l4o, l3, proto, src, dst, is_v4, et, vlan, l2, tier, tunnel)

    def _udp_tunnel(self, frame, off, end, dport, src, dst, is_v4, tier, tunnel):
        """VXLAN / Geneve header at ``off`` → (inner offset, ethertype, l2 offset, tunnel), None
        when it is not a tunnel after all, or (-1, …) when it is broken (counted). ``end`` is where
        the IP length says the datagram ends: a datagram too short for the header is no tunnel
        (bytes past ``end`` are Ethernet padding or a trailer), a capture cut short is truncated."""
        n = len(frame)
        if dport in self.vxlan_ports:
            # RFC 7348: the I flag marks a valid VNI; without it this is plain UDP.
            if end < off + 22 or (n > off and not frame[off] & 0x08):
                return None
            if n < off + 8:
                self._skip(f"truncated VXLAN header (need 8, have {n - off})")
                return -1, 0, 0, None
            if n < off + 22:
                self._skip(f"truncated VXLAN inner Ethernet header (need 14, have {n - off - 8})")
                return -1, 0, 0, None
            vni = _vxlan(frame, off)[1]
            t = self._outer(tunnel, T_VXLAN, tier, vni >> 8, src, dst, is_v4)
            return off + 22, frame[off + 20] << 8 | frame[off + 21], off + 8, t
        if end < off + 8:
            return None
        if n < off + 8:
            self._skip(f"truncated Geneve header (need 8, have {n - off})")
            return -1, 0, 0, None
        vo, _flags, ptype, vni = _geneve(frame, off)
        if vo >> 6:  # RFC 8926 §3.4: version 0 only
            self._skip(f"unknown Geneve version {vo >> 6}")
            return -1, 0, 0, None
        inner = off + 8 + (vo & 0x3F) * 4  # options length in 4-byte words (RFC 8926 §3.5)
        if n < inner:
            self._skip(f"truncated Geneve options (need {inner - off - 8}, have {n - off - 8})")
            return -1, 0, 0, None
        t = self._outer(tunnel, T_GENEVE, tier, vni >> 8, src, dst, is_v4)
        if ptype == 0x6558:
            if n < inner + 14:
                self._skip(f"truncated Geneve inner Ethernet header (need 14, have {n - inner})")
                return -1, 0, 0, None
            return inner + 14, frame[inner + 12] << 8 | frame[inner + 13], inner, t
        if ptype in (0x0800, 0x86DD):
            return inner, ptype, -1, t
        self._skip(f"Geneve payload 0x{ptype:04x} not decoded")
        return -1, 0, 0, None

    # -- L2 ---------------------------------------------------------------------------------
    def _other_link(self, frame: bytes, linktype: int):
        if linktype == SLL:
            if len(frame) < 16:
                self._skip("truncated SLL header")
                return None
            return self._l3(frame, 16, _u16(frame, 14)[0], 0, None)
        if linktype == SLL2:
            if len(frame) < 20:
                self._skip("truncated SLL2 header")
                return None
            return self._l3(frame, 20, _u16(frame, 0)[0], 0, None)
        if linktype in _RAW_LINKTYPES:
            if not frame:
                self._skip("empty frame")
                return None
            v = frame[0] >> 4
            if v != 4 and v != 6:
                self._skip(f"bad IP version {v}")
                return None
            return self._l3(frame, 0, 0x0800 if v == 4 else 0x86DD, 0, None)
        if linktype == NULL:
            if len(frame) < 4:
                self._skip("truncated loopback header")
                return None
            fam = int.from_bytes(frame[:4], "little") if frame[0] else int.from_bytes(frame[:4], "big")
            et = 0x0800 if fam == 2 else 0x86DD if fam in (10, 24, 28, 30) else 0
            return self._l3(frame, 4, et, 0, None)
        self._skip(f"unsupported linktype {linktype}")
        return None

    def _ethernet(self, frame: bytes, off: int, tier: int, tunnel: Tunnel | None):
        """An inner Ethernet frame at ``off`` (GRE TEB)."""
        if len(frame) < off + 14:
            self._skip("truncated inner Ethernet header")
            return None
        return self._net(frame, off + 14, frame[off + 12] << 8 | frame[off + 13], off, tier, tunnel)

    def _l3(self, frame: bytes, off: int, et: int, tier: int, tunnel: Tunnel | None):
        """An IP packet at ``off`` with no L2 header of its own."""
        return self._net(frame, off, et, -1, tier, tunnel)

    def _ipv4(self, frame: bytes, off: int, vlan: int, l2: int, tier: int, tunnel: Tunnel | None):
        n = len(frame) - off
        if n < 20:
            self._skip(f"truncated IPv4 header (need 20, have {n})")
            return None
        vihl, tot, ipid, frag, proto, src, dst = _ip4(frame, off)
        if tot == 0:  # TSO/GSO super-frame captured before segmentation: length unknown
            tot = n
        if vihl >> 4 != 4:
            self._skip(f"bad IPv4 version {vihl >> 4}")
            return None
        ihl = (vihl & 15) * 4
        if ihl < 20 or tot < ihl:
            self._skip(f"bad IPv4 header length (ihl {ihl}, total {tot})")
            return None
        if n < ihl:
            self._skip(f"truncated IPv4 options (need {ihl}, have {n})")
            return None
        l4 = off + ihl
        l3 = tot - ihl
        frag_off = frag & 0x1FFF
        if frag_off or frag & 0x2000:
            return self._fragment(frame, (src, dst, proto, ipid), frag_off, frag & 0x2000, l4, l3,
                                  proto, src, dst, 1, 0x0800, vlan, l2, tier, tunnel)
        return self._l4(frame, l4, l3, proto, src, dst, 1, 0x0800, vlan, l2, tier, tunnel)

    def _ipv6(self, frame: bytes, off: int, vlan: int, l2: int, tier: int, tunnel: Tunnel | None):
        n = len(frame) - off
        if n < 40:
            self._skip(f"truncated IPv6 header (need 40, have {n})")
            return None
        if frame[off] >> 4 != 6:
            self._skip(f"bad IPv6 version {frame[off] >> 4}")
            return None
        plen, nh, src, dst = _ip6(frame, off)
        p = off + 40
        end = p + (plen or n - 40)  # 0: BIG TCP GSO super-frame, the captured length
        for _ in range(8):
            if nh in IPV6_EXT:
                if len(frame) < p + 8:
                    self._skip("truncated IPv6 extension header")
                    return None
                nh, hlen = frame[p], (frame[p + 1] + 1) * 8
                p += hlen
            elif nh == 51:  # AH: length in 4-byte units minus 2
                if len(frame) < p + 8:
                    self._skip("truncated IPv6 AH header")
                    return None
                nh, hlen = frame[p], (frame[p + 1] + 2) * 4
                p += hlen
            elif nh == 44:  # fragment header
                if len(frame) < p + 8:
                    self._skip("truncated IPv6 fragment header")
                    return None
                nxt = frame[p]
                fo_m = _u16(frame, p + 2)[0]
                ident = _u32(frame, p + 4)[0]
                p += 8
                if p > end:
                    self._skip("IPv6 extension headers exceed the payload length")
                    return None
                return self._fragment(frame, (src, dst, nxt, ident), fo_m >> 3, fo_m & 1, p, end - p,
                                      nxt, src, dst, 0, 0x86DD, vlan, l2, tier, tunnel)
            else:
                break
        else:
            self._skip("too many IPv6 extension headers")
            return None
        if p > end:
            self._skip("IPv6 extension headers exceed the payload length")
            return None
        if p > len(frame):
            self._skip("truncated IPv6 extension header")
            return None
        return self._l4(frame, p, end - p, nh, src, dst, 0, 0x86DD, vlan, l2, tier, tunnel)

    def _fragment(self, frame, fkey, frag_off, more, l4, l3, proto, src, dst, is_v4, et, vlan, l2,
                  tier, tunnel):
        """First fragments carry ports (remembered); later ones borrow them from the cache."""
        if frag_off == 0:
            self.seen["IP fragment (first)"] = self.seen.get("IP fragment (first)", 0) + 1
            pkt = self._l4(frame, l4, l3, proto, src, dst, is_v4, et, vlan, l2, tier, tunnel,
                           fragment=True)
            if pkt is not None:
                frags = self._frags
                frags[fkey] = (pkt[SPORT], pkt[DPORT])
                if len(frags) > self._frag_cap:
                    frags.popitem(last=False)
            return pkt
        ports = self._frags.get(fkey)
        if not more:
            self._frags.pop(fkey, None)
        if ports is None:
            self._skip("IP fragment without its first fragment")
            return None
        self.seen["IP fragment (non-first)"] = self.seen.get("IP fragment (non-first)", 0) + 1
        return (src, dst, ports[0], ports[1], proto, l3, l3, 0, 0, 0, 0, l4, l4, is_v4, et, vlan, l2,
                tunnel)

    # -- L4 ---------------------------------------------------------------------------------
    @cython.locals(off=cython.Py_ssize_t, l3=cython.Py_ssize_t, proto=cython.int, is_v4=cython.int, et=cython.int,
                   vlan=cython.int, l2=cython.Py_ssize_t, tier=cython.int, n=cython.Py_ssize_t, thl=cython.Py_ssize_t,
                   doff=cython.int, flags=cython.int)
    def _l4(self, frame, off, l3, proto, src, dst, is_v4, et, vlan, l2, tier, tunnel, fragment=False):
        n = len(frame) - off
        if l3 < 0:
            self._skip("negative L3 payload length")
            return None
        if proto == 6:
            if n < 20:
                self._skip(f"truncated TCP header (need 20, have {n})")
                return None
            sport, dport, seq, ack, doff, flags, win = _tcp(frame, off)
            thl = (doff >> 4) * 4
            if thl < 20:
                self._skip(f"bad TCP data offset {thl}")
                return None
            l4 = max(l3 - thl, 0)
            return (src, dst, sport, dport, 6, l3, l4, flags | (doff & 1) << 8, seq, ack, win, off,
                    off + min(thl, n), is_v4, et, vlan, l2, tunnel)
        if proto == 17:
            if n < 8:
                self._skip(f"truncated UDP header (need 8, have {n})")
                return None
            sport, dport, _ulen = _udp(frame, off)
            if not fragment and tier < self.max_tiers and dport in self.tunnel_udp_ports:
                inner = self._udp_tunnel(frame, off + 8, off + l3, dport, src, dst, is_v4, tier, tunnel)
                if inner is not None:
                    if inner[0] < 0:
                        return None
                    return self._net(frame, inner[0], inner[1], inner[2], tier + 1, inner[3])
            return (src, dst, sport, dport, 17, l3, max(l3 - 8, 0), 0, 0, 0, 0, off, off + 8, is_v4,
                    et, vlan, l2, tunnel)
        if proto == 1 or proto == 58:
            if n < 8:
                self._skip(f"truncated ICMP header (need 8, have {n})")
                return None
            # ICMP: type in FLAGS, (identifier << 16 | sequence) in SEQ, echo ids pair request/reply.
            itype = frame[off]
            ident_seq = _u32(frame, off + 4)[0]
            return (src, dst, 0, 0, proto, l3, max(l3 - 8, 0), itype, ident_seq, 0, 0, off, off + 8,
                    is_v4, et, vlan, l2, tunnel)
        if tier < self.max_tiers and not fragment:
            if (proto == 4 or proto == 41) and self.decap_ipip:
                # The outer IP header is cut and the L2 header (tags too) kept (datamodel §5.9).
                t = self._outer(tunnel, T_IPIP, tier, 0, src, dst, is_v4)
                return self._net(frame, off, 0x0800 if proto == 4 else 0x86DD, l2, tier + 1, t, vlan)
            if proto == 47 and self.decap_gre:
                r = self._gre(frame, off, src, dst, is_v4, vlan, l2, tier, tunnel)
                if r is not False:
                    return r
        return (src, dst, 0, 0, proto, l3, l3, 0, 0, 0, 0, off, off, is_v4, et, vlan, l2, tunnel)

    # -- tunnels (return False = "not a tunnel after all", keep the outer packet) -----------
    def _gre(self, frame, off, src, dst, is_v4, vlan, l2, tier, tunnel):
        if len(frame) < off + 4:
            return False
        fl, ptype = _ports(frame, off)
        # Version 1 is PPTP's enhanced GRE; R (RFC 1701 source routing) adds SREs we do not walk.
        if fl & 0x4007 or ptype not in (0x6558, 0x0800, 0x86DD):
            return False
        p = off + 4 + (4 if fl & 0x8000 else 0)    # checksum + reserved1
        key_at = p
        p += (4 if fl & 0x2000 else 0) + (4 if fl & 0x1000 else 0)   # key, sequence (RFC 2890)
        if len(frame) < p:
            self._skip(f"truncated GRE header (need {p - off}, have {len(frame) - off})")
            return None
        key = _u32(frame, key_at)[0] if fl & 0x2000 else 0
        t = self._outer(tunnel, T_GRE, tier, key, src, dst, is_v4)
        if ptype == 0x6558:
            return self._ethernet(frame, p, tier + 1, t)
        return self._l3(frame, p, ptype, tier + 1, t)


def _reason_key(reason: str) -> str:
    """'truncated TCP header (need 20, have 11)' → 'truncated TCP header'; numbers → N."""
    return _NUMBERS.sub("N", reason.split(" (", 1)[0])


_NUMBERS = re.compile(r"0x[0-9a-fA-F]+|\d+")


