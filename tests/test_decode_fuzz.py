"""Fuzzing the decoder: real frames from the committed pcaps, mutated (byte flips, cuts, insertions,
deletions, hostile length fields, wrong linktypes), and plain random bytes must decode to ``None`` or
a well-formed tuple, never raise; the same stream fed through ``FlowTable`` must not raise either.

Hypothesis explores new inputs on every run; the seeded ``random.Random(1234)`` stream is the
reproducible part (a failure there names its index)."""

from __future__ import annotations

import random
from functools import cache
from pathlib import Path

import dpkt
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from collector.decode.packet import (
    ACK,
    DPORT,
    DST,
    ETH,
    ETH_TYPE,
    FLAGS,
    IS_V4,
    L2_OFF,
    L3_LEN,
    L4_LEN,
    L4_OFF,
    NULL,
    PAYLOAD_OFF,
    PROTO,
    RAW,
    RAW4,
    RAW6,
    SEQ,
    SLL,
    SLL2,
    SPORT,
    SRC,
    TUNNEL,
    VLAN,
    WIN,
    Decoder,
    Tunnel,
)
from collector.flow.report import L4_COLUMNS
from collector.flow.table import FlowTable, NicInfo
from flowscope.enums import TunnelType

DATA = Path(__file__).parent / "data"
LINKTYPES = (ETH, SLL, SLL2, RAW, RAW4, RAW6, NULL, 12, 14, 147)     # 147: unsupported, must be counted
TUNNEL_TYPES = {int(t) for t in TunnelType if t != TunnelType.NONE}
SEED_STREAM = 20_000
# Sized for the slow 2-core CI box: the whole file runs in well under 30 s.
FUZZ = settings(max_examples=1500, deadline=None, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


@cache
def committed_frames() -> tuple[bytes, ...]:
    """Every frame of tests/data/*.pcap (Ethernet: VXLAN, Geneve over v4/v6, IPIP, VLAN, IPv6…)."""
    frames: list[bytes] = []
    for path in sorted(DATA.glob("*.pcap")):
        with path.open("rb") as f:
            reader = dpkt.pcap.Reader(f)
            assert reader.datalink() == dpkt.pcap.DLT_EN10MB
            frames += [bytes(buf) for _, buf in reader]
    assert len(frames) > 5000
    return tuple(frames)


def _u16(b: bytes | bytearray, off: int) -> int:
    return b[off] << 8 | b[off + 1]


def length_fields(frame: bytes) -> list[tuple[int, int]]:
    """(offset, size) of the fields the decoder trusts for lengths and dispatch along the header
    chain — IPv4 version/IHL, total length and fragment word, IPv6 payload length, TCP data offset,
    UDP length, VXLAN flags, Geneve version/option length and protocol type — so mutations can aim
    at them."""
    out: list[tuple[int, int]] = []
    n = len(frame)
    if n < 14:
        return out
    et, off = _u16(frame, 12), 14
    for _ in range(4):
        while et in (0x8100, 0x88A8, 0x9100) and off + 4 <= n:
            et, off = _u16(frame, off + 2), off + 4
        if et == 0x0800 and off + 20 <= n:
            out += [(off, 1), (off + 2, 2), (off + 6, 2)]
            proto, l4 = frame[off + 9], off + (frame[off] & 15) * 4
        elif et == 0x86DD and off + 40 <= n:
            out.append((off + 4, 2))
            proto, l4 = frame[off + 6], off + 40
        else:
            break
        if proto in (4, 41):
            et, off = (0x0800 if proto == 4 else 0x86DD), l4
            continue
        if proto == 6 and l4 + 13 <= n:
            out.append((l4 + 12, 1))
        if proto != 17 or l4 + 8 > n:
            break
        out.append((l4 + 4, 2))
        dport, t = _u16(frame, l4 + 2), l4 + 8
        if dport in (4789, 8472) and t + 22 <= n:
            out.append((t, 1))
            et, off = _u16(frame, t + 20), t + 22
        elif dport == 6081 and t + 8 <= n:
            out += [(t, 1), (t + 2, 2)]
            inner, ptype = t + 8 + (frame[t] & 0x3F) * 4, _u16(frame, t + 2)
            if ptype == 0x6558 and inner + 14 <= n:
                et, off = _u16(frame, inner + 12), inner + 14
            else:
                et, off = ptype, inner
        else:
            break
    return out


@cache
def corpus() -> tuple[bytes, ...]:
    """The committed frames, then the synthetic Ethernet frames of test_decode's table: GRE, IPv6
    extension headers, ICMP, QinQ, two and three tunnel tiers… shapes the captures do not have."""
    from tests.test_decode import DECODE_CASES

    return committed_frames() + tuple(frame for _, frame, linktype, _ in DECODE_CASES if linktype == ETH)


@cache
def corpus_length_fields() -> tuple[list[tuple[int, int]], ...]:
    return tuple(length_fields(f) for f in corpus())


# (kind, position, argument): kind is flip / truncate / insert / delete / length; positions wrap
# around the frame length (for "length": around the list of length fields).
Mutation = tuple[str, int, int | bytes]


def mutate(frame: bytes, fields: list[tuple[int, int]], ops: list[Mutation]) -> bytes:
    """Apply ``ops`` in order; "length" ops write a value into one of ``fields`` (if still inside)."""
    b = bytearray(frame)
    for kind, pos, arg in ops:
        n = len(b)
        if kind == "length":
            if not fields:
                continue
            off, size = fields[pos % len(fields)]
            if off + size <= n:
                b[off:off + size] = (arg & ((1 << 8 * size) - 1)).to_bytes(size, "big")
        elif not n:
            if kind == "insert":
                b[:] = arg
        elif kind == "flip":
            b[pos % n] ^= arg or 0xFF
        elif kind == "truncate":
            del b[pos % n:]
        elif kind == "insert":
            b[pos % (n + 1):pos % (n + 1)] = arg
        elif kind == "delete":
            del b[pos % n:pos % n + arg]
    return bytes(b)


INTERESTING_LENGTHS = (0, 1, 2, 7, 8, 13, 14, 19, 20, 21, 39, 40, 41, 0x3F, 0x40, 0x45, 0x4F, 0x60, 0xFF,
                       0x100, 0x7FFF, 0xFFFF)


def random_ops(rng: random.Random) -> list[Mutation]:
    """1-3 mutations, length-field writes favoured (they reach the deepest code)."""
    ops: list[Mutation] = []
    for _ in range(rng.randint(1, 3)):
        kind = rng.choice(("flip", "truncate", "insert", "delete", "length", "length"))
        pos = rng.randrange(1 << 16)
        if kind == "flip":
            arg = rng.randrange(256)
        elif kind == "insert":
            arg = rng.randbytes(rng.randint(1, 8))
        elif kind == "delete":
            arg = rng.randint(1, 16)
        elif kind == "length":
            arg = rng.choice(INTERESTING_LENGTHS) if rng.random() < 0.5 else rng.randrange(1 << 16)
        else:
            arg = 0
        ops.append((kind, pos, arg))
    return ops


def assert_well_formed(pkt: tuple | None, frame: bytes) -> None:
    """None, or the 18-field tuple with every field in its range and every offset inside the frame."""
    if pkt is None:
        return
    n = len(frame)
    assert type(pkt) is tuple and len(pkt) == 18, pkt
    is_v4 = pkt[IS_V4]
    assert is_v4 in (0, 1)
    for addr in (pkt[SRC], pkt[DST]):
        if is_v4:
            assert type(addr) is int and 0 <= addr <= 0xFFFFFFFF
        else:
            assert type(addr) is bytes and len(addr) == 16
    assert pkt[ETH_TYPE] == (0x0800 if is_v4 else 0x86DD)
    assert 0 <= pkt[SPORT] <= 0xFFFF and 0 <= pkt[DPORT] <= 0xFFFF
    assert 0 <= pkt[PROTO] <= 0xFF
    assert 0 <= pkt[L4_LEN] <= pkt[L3_LEN] <= max(0xFFFF, n), pkt
    assert 0 <= pkt[FLAGS] <= 0x1FF
    assert 0 <= pkt[SEQ] <= 0xFFFFFFFF and 0 <= pkt[ACK] <= 0xFFFFFFFF and 0 <= pkt[WIN] <= 0xFFFF
    assert 0 <= pkt[L4_OFF] <= pkt[PAYLOAD_OFF] <= n, (pkt, n)
    assert 0 <= pkt[VLAN] <= 0xFFF
    l2 = pkt[L2_OFF]
    assert l2 == -1 or 0 <= l2 <= pkt[L4_OFF] - 14 - 20, (l2, pkt)
    tunnel = pkt[TUNNEL]
    if tunnel is not None:
        assert type(tunnel) is Tunnel
        assert tunnel.type in TUNNEL_TYPES and 1 <= tunnel.tier <= 2 and 0 <= tunnel.id <= 0xFFFFFFFF
        if tunnel.is_v4:
            assert type(tunnel.src) is int and type(tunnel.dst) is int
        else:
            assert len(tunnel.src) == 16 and len(tunnel.dst) == 16


def counted(dec: Decoder) -> int:
    """Frames the decoder returned None for: each is counted once, as skipped or as non-IP seen
    (fragment notes in ``seen`` also count frames that did decode)."""
    return sum(dec.skipped.values()) + sum(v for k, v in dec.seen.items() if not k.startswith("IP fragment"))


def decode_checked(dec: Decoder, frame: bytes, linktype: int) -> tuple | None:
    pkt = dec.decode(frame, linktype)
    assert_well_formed(pkt, frame)
    return pkt


@cache
def seeded_stream() -> tuple[tuple[bytes, int], ...]:
    """SEED_STREAM (frame, linktype) pairs from random.Random(1234): mostly mutated capture frames
    as Ethernet, some under another linktype, some untouched, some pure noise."""
    rng = random.Random(1234)
    frames, lfields = corpus(), corpus_length_fields()
    n_committed = len(committed_frames())
    out = []
    for _ in range(SEED_STREAM):
        r = rng.random()
        if r < 0.03:
            out.append((rng.randbytes(rng.randint(0, 120)), rng.choice(LINKTYPES)))
            continue
        # One in five from the synthetic shapes, which are few but reach the rarer code.
        i = rng.randrange(n_committed, len(frames)) if rng.random() < 0.2 else rng.randrange(n_committed)
        frame = frames[i] if r < 0.10 else mutate(frames[i], lfields[i], random_ops(rng))
        if rng.random() < 0.1:
            linktype = rng.choice(LINKTYPES)
            if linktype != ETH and rng.random() < 0.7:
                frame = frame[14:]            # strip the Ethernet header: plausible raw/SLL payloads
        else:
            linktype = ETH
        out.append((frame, linktype))
    return tuple(out)


# -- hypothesis -------------------------------------------------------------------------------------------
POS = st.integers(0, (1 << 16) - 1)
MUTATION = st.one_of(
    st.tuples(st.just("flip"), POS, st.integers(0, 255)),
    st.tuples(st.just("truncate"), POS, st.just(0)),
    st.tuples(st.just("insert"), POS, st.binary(min_size=1, max_size=8)),
    st.tuples(st.just("delete"), POS, st.integers(1, 16)),
    st.tuples(st.just("length"), POS,
              st.one_of(st.sampled_from(INTERESTING_LENGTHS), st.integers(0, 0xFFFF))),
)


@FUZZ
@given(index=st.one_of(st.integers(0, len(committed_frames()) - 1),
                       st.integers(len(committed_frames()), len(corpus()) - 1)),
       ops=st.lists(MUTATION, min_size=1, max_size=4),
       linktype=st.sampled_from((ETH,) * 6 + LINKTYPES), strip_l2=st.booleans())
def test_mutated_capture_frames_decode_or_are_counted(index: int, ops: list[Mutation], linktype: int,
                                                      strip_l2: bool) -> None:
    frame = mutate(corpus()[index], corpus_length_fields()[index], ops)
    if linktype != ETH and strip_l2:
        frame = frame[14:]
    dec = Decoder()
    pkt = decode_checked(dec, frame, linktype)
    assert counted(dec) == (pkt is None)


@FUZZ
@given(frame=st.binary(max_size=160), linktype=st.sampled_from(LINKTYPES))
def test_random_bytes_decode_or_are_counted(frame: bytes, linktype: int) -> None:
    dec = Decoder()
    pkt = decode_checked(dec, frame, linktype)
    assert counted(dec) == (pkt is None)


@settings(max_examples=300, deadline=None, database=None)
@given(prefix=st.binary(min_size=14, max_size=14), body=st.binary(max_size=120),
       et=st.sampled_from((0x0800, 0x86DD, 0x8100, 0x88A8)), first=st.sampled_from((0x45, 0x46, 0x4F, 0x60)))
def test_random_bytes_behind_an_ip_ethertype(prefix: bytes, body: bytes, et: int, first: int) -> None:
    """Pure noise rarely gets past the ethertype; this keeps the IP/L4/tunnel code under fire."""
    frame = prefix[:12] + et.to_bytes(2, "big") + bytes([first]) + body
    decode_checked(Decoder(), frame, ETH)


# -- the reproducible stream ---------------------------------------------------------------------------------
def test_seeded_stream_of_mutated_frames() -> None:
    """20 000 frames through one Decoder (so the fragment cache sees hostile input too)."""
    dec = Decoder(fragment_cache=64)
    decoded = 0
    for i, (frame, linktype) in enumerate(seeded_stream()):
        try:
            decoded += decode_checked(dec, frame, linktype) is not None
        except AssertionError as e:
            raise AssertionError(f"seeded stream frame {i} (linktype {linktype}): {frame.hex()}") from e
    assert decoded + counted(dec) == SEED_STREAM
    assert decoded > SEED_STREAM // 3                # mutations often leave a usable packet
    assert len(dec.skipped) > 10                     # and reach many different reasons


class CollectingSink:
    """Stands in for the writer: keeps the rows FlowTable hands over."""

    def __init__(self) -> None:
        self.l4_rows: list[tuple] = []
        self.second_rows: list = []

    def l4(self, rows: list[tuple]) -> None:
        self.l4_rows += rows

    def seconds(self, rows) -> None:
        self.second_rows.append(rows)


T0 = 1_700_000_000_000_000


def run_table(frames: list[bytes], nics: dict[int, NicInfo] | None = None,
              nic_of: list[int] | None = None) -> tuple[FlowTable, CollectingSink]:
    """Feed ``frames`` in batches of 500 with increasing timestamps (~1 ms apart), then flush."""
    sink = CollectingSink()
    table = FlowTable(sink)
    for nic, info in (nics or {0: NicInfo(name="eth0")}).items():
        table.add_nic(nic, info)
    for start in range(0, len(frames), 500):
        table.process([(T0 + (start + i) * 997, frame, len(frame), nic_of[start + i] if nic_of else 0, 0)
                       for i, frame in enumerate(frames[start:start + 500])])
    table.flush()
    return table, sink


def test_seeded_stream_through_flow_table() -> None:
    """The mutated stream as capture batches on one Ethernet NIC: nothing escapes, every packet
    counted, every flow finished by the flush."""
    frames = [frame for frame, _ in seeded_stream()]
    table, sink = run_table(frames)
    assert table.stats["packets"] == len(frames) > SEED_STREAM * 0.9
    assert table.stats["decode_skipped"] == counted(table.decoder)
    assert sink.l4_rows and sink.second_rows
    assert table.nflows == 0 and not table.flows


def test_seeded_stream_through_flow_table_other_linktypes() -> None:
    """The same stream on SLL / SLL2 / raw / loopback NICs (the table reads SLL packet types itself)."""
    linktypes = (SLL, SLL2, RAW, NULL)
    nics = {i: NicInfo(name=f"nic{i}", linktype=lt) for i, lt in enumerate(linktypes)}
    frames, nic_of = [], []
    for i, (frame, _) in enumerate(seeded_stream()[:8000]):
        frames.append(frame[14:] if i % 2 else frame)
        nic_of.append(i % len(linktypes))
    table, _ = run_table(frames, nics, nic_of)
    assert table.stats["packets"] == len(frames)
    assert table.stats["decode_skipped"] == counted(table.decoder)


def test_flow_table_survives_short_ethernet_frames() -> None:
    """Runt frames (shorter than any header the inline fast path reads) are skipped, not raised."""
    frames = [bytes(n) for n in range(24)] + [bytes(12) + b"\x08\x00\x45" + bytes(n) for n in range(9)]
    table, _ = run_table(frames)
    assert table.stats["packets"] == table.stats["decode_skipped"] == len(frames)


def test_flow_table_byte_counters_never_negative() -> None:
    """Absurd IPv4 total lengths never turn into negative byte counters."""
    frames = [frame for frame, _ in seeded_stream()]
    _, sink = run_table(frames)
    byte_columns = [i for i, name in enumerate(L4_COLUMNS) if "byte" in name]
    negative = [r for r in sink.l4_rows if any(r[i] < 0 for i in byte_columns)]
    assert not negative, f"{len(negative)} l4 rows with negative byte counters"
