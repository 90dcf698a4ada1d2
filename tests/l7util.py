"""Payload streams of the committed pcaps, for L7 parser tests: per flow, the in-order payloads
each side sent, as the flow table will feed them to a parser."""

from __future__ import annotations

from dataclasses import dataclass, field

import dpkt

from collector.decode.packet import DPORT, DST, FLAGS, L4_LEN, PAYLOAD_OFF, PROTO, SEQ, SPORT, SRC, Decoder
from tests.helpers import DATA

MASK32 = 0xFFFFFFFF


@dataclass
class Segment:
    from_client: bool
    payload: bytes      # what was captured
    length: int         # the real L4 payload length
    ts: int             # µs
    seq: int            # TCP sequence number of the first byte (0 for UDP)


@dataclass
class Stream:
    proto: int
    client: tuple       # (ip, port) as the decoder gives them (IPv4 int / IPv6 bytes)
    server: tuple
    segments: list[Segment] = field(default_factory=list)


def streams(name: str, snaplen: int | None = None) -> list[Stream]:
    """Flows of tests/data/<name>.pcap with their payloads in capture order; TCP retransmissions
    (data already seen) are left out, as the flow table does. The client is the SYN's sender, else
    the higher port. ``snaplen`` cuts payloads as a shorter capture would."""
    dec = Decoder()
    flows: dict[tuple, Stream] = {}
    nxt: dict[tuple, int] = {}
    with (DATA / f"{name}.pcap").open("rb") as f:
        for ts, buf in dpkt.pcap.Reader(f):
            p = dec.decode(bytes(buf), 1)
            if p is None or p[PROTO] not in (6, 17):
                continue
            a, b = (p[SRC], p[SPORT]), (p[DST], p[DPORT])
            key = (p[PROTO], *sorted([a, b]))
            st = flows.get(key)
            if st is None:
                syn = p[PROTO] == 6 and p[FLAGS] & 0x12 == 0x02
                synack = p[PROTO] == 6 and p[FLAGS] & 0x12 == 0x12
                client = a if syn or (not synack and a[1] > b[1]) else b
                st = flows[key] = Stream(p[PROTO], client, b if client == a else a)
            from_client = a == st.client
            length = p[L4_LEN]
            seq = p[SEQ] if p[PROTO] == 6 else 0
            if p[PROTO] == 6:
                if p[FLAGS] & 0x02:
                    nxt[(key, from_client)] = (seq + 1) & MASK32
                    continue
                if not length:
                    continue
                exp = nxt.get((key, from_client))
                if exp is not None and ((seq - exp) & MASK32) >= 0x80000000:
                    continue                        # below what was seen: a retransmission
                nxt[(key, from_client)] = (seq + length) & MASK32
            elif not length:
                continue
            data = bytes(buf)[p[PAYLOAD_OFF]:p[PAYLOAD_OFF] + length]
            if snaplen is not None:
                data = data[:max(0, snaplen - p[PAYLOAD_OFF])]
            st.segments.append(Segment(from_client, data, length, int(ts * 1_000_000), seq))
    return [s for s in flows.values() if s.segments]


def by_port(name: str, port: int) -> list[Stream]:
    return [s for s in streams(name) if s.server[1] == port]


def messages(parser, stream: Stream) -> list:
    """Feed a whole stream to one parser; the messages in order (stops at a give-up)."""
    out = []
    for seg in stream.segments:
        r = parser.feed(seg.payload, seg.length, seg.from_client, seg.ts, seg.seq)
        if isinstance(r, str):
            out.append(r)
            break
        out.extend(r)
    return out
