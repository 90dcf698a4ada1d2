"""PcapSource against files written byte by byte here, so every expected value is known exactly."""

from __future__ import annotations

import io
import struct
from pathlib import Path

import dpkt
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from collector.capture import pcap as pcap_mod
from collector.capture.base import STAT_NAMES, CaptureError, CaptureNic
from collector.capture.pcap import PcapSource

MAC_A = bytes.fromhex("020000000001")
MAC_B = bytes.fromhex("020000000002")


def tcp_frame(payload: bytes = b"", sport: int = 40000, dport: int = 80, flags: int = 0x18) -> bytes:
    """Ethernet/IPv4/TCP, checksums zero (the reader does not look at them)."""
    tcp = struct.pack("!HHIIBBHHH", sport, dport, 1, 0, 5 << 4, flags, 65535, 0, 0) + payload
    ip = struct.pack(
        "!BBHHHBBH4s4s", 0x45, 0, 20 + len(tcp), 1, 0, 64, 6, 0, bytes([10, 0, 0, 1]), bytes([10, 0, 0, 2])
    )
    return MAC_B + MAC_A + b"\x08\x00" + ip + tcp


FRAMES = [tcp_frame(b"", flags=0x02), tcp_frame(b"GET / HTTP/1.1\r\n\r\n"), tcp_frame(b"x" * 1000)]
# (seconds, fraction) per packet: µs fraction for classic pcap
TIMES = [(1_700_000_000, 1), (1_700_000_000, 999_999), (1_700_000_123, 500_000)]


# -- writers -----------------------------------------------------------------------------------------------


def pcap_bytes(
    packets: list[tuple[int, int, bytes, int]],
    *,
    bo: str = "<",
    ns: bool = False,
    snaplen: int = 65535,
    linktype: int = 1,
) -> bytes:
    """packets: (sec, frac, captured bytes, wire_len)."""
    magic = 0xA1B23C4D if ns else 0xA1B2C3D4
    out = [struct.pack(bo + "IHHiIII", magic, 2, 4, 0, 0, snaplen, linktype)]
    for sec, frac, data, wlen in packets:
        out.append(struct.pack(bo + "IIII", sec, frac, len(data), wlen) + data)
    return b"".join(out)


def _pad(b: bytes) -> bytes:
    return b + b"\0" * (-len(b) % 4)


def ng_opts(opts: list[tuple[int, bytes]], bo: str = "<") -> bytes:
    if not opts:
        return b""
    return b"".join(struct.pack(bo + "HH", c, len(v)) + _pad(v) for c, v in opts) + struct.pack(
        bo + "HH", 0, 0
    )


def ng_block(btype: int, body: bytes, bo: str = "<") -> bytes:
    body = _pad(body)
    n = len(body) + 12
    return struct.pack(bo + "II", btype, n) + body + struct.pack(bo + "I", n)


def shb(bo: str = "<") -> bytes:
    return ng_block(0x0A0D0D0A, struct.pack(bo + "IHHq", 0x1A2B3C4D, 1, 0, -1), bo)


def idb(
    linktype: int = 1, snaplen: int = 65535, opts: list[tuple[int, bytes]] | None = None, bo: str = "<"
) -> bytes:
    return ng_block(1, struct.pack(bo + "HHI", linktype, 0, snaplen) + ng_opts(opts or [], bo), bo)


def epb(
    ifid: int, ts: int, data: bytes, wlen: int | None = None, flags: int | None = None, bo: str = "<"
) -> bytes:
    opts = [(2, struct.pack(bo + "I", flags))] if flags is not None else []
    head = struct.pack(
        bo + "IIIII", ifid, ts >> 32, ts & 0xFFFFFFFF, len(data), len(data) if wlen is None else wlen
    )
    return ng_block(6, head + _pad(data) + ng_opts(opts, bo), bo)


def read_all(*paths: Path) -> tuple[PcapSource, list[tuple[int, bytes, int, int, int]]]:
    src = PcapSource([str(p) for p in paths])
    packets = [p for batch in src.batches() for p in batch]
    return src, packets


def write(tmp_path: Path, name: str, data: bytes) -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


# -- classic pcap ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("bo", ["<", ">"], ids=["little-endian", "big-endian"])
def test_pcap_microseconds(tmp_path: Path, bo: str) -> None:
    recs = [(s, f, fr, len(fr)) for (s, f), fr in zip(TIMES, FRAMES, strict=True)]
    path = write(tmp_path, "web.pcap", pcap_bytes(recs, bo=bo))
    src, pkts = read_all(path)
    assert pkts == [
        (1_700_000_000_000_001, FRAMES[0], len(FRAMES[0]), 0, 0),
        (1_700_000_000_999_999, FRAMES[1], len(FRAMES[1]), 0, 0),
        (1_700_000_123_500_000, FRAMES[2], len(FRAMES[2]), 0, 0),
    ]
    assert all(type(p[1]) is bytes for p in pkts)
    assert src.nics == {0: CaptureNic(0, "web", "", b"", 1, 65535)}
    stats = src.stats()
    assert set(stats) == set(STAT_NAMES)
    assert stats["packets"] == 3
    assert stats["bytes"] == stats["wire_bytes"] == sum(map(len, FRAMES))
    assert stats["malformed"] == 0


@pytest.mark.parametrize("bo", ["<", ">"], ids=["little-endian", "big-endian"])
def test_pcap_nanoseconds(tmp_path: Path, bo: str) -> None:
    recs = [(1_700_000_000, 123_456_789, FRAMES[0], 60), (1_700_000_001, 999_999_999, FRAMES[1], 74)]
    path = write(tmp_path, "ns.pcap", pcap_bytes(recs, bo=bo, ns=True))
    _, pkts = read_all(path)
    assert [p[0] for p in pkts] == [1_700_000_000_123_456, 1_700_000_001_999_999]


def test_pcap_snapped_wire_len(tmp_path: Path) -> None:
    big = FRAMES[2]
    recs = [(1, 0, big[:96], len(big)), (2, 0, FRAMES[0], len(FRAMES[0]))]
    path = write(tmp_path, "snap.pcap", pcap_bytes(recs, snaplen=96))
    src, pkts = read_all(path)
    assert [(len(p[1]), p[2]) for p in pkts] == [(96, len(big)), (len(FRAMES[0]), len(FRAMES[0]))]
    assert pkts[0][1] == big[:96]
    assert src.nics[0].snaplen == 96
    assert src.stats()["bytes"] == 96 + len(FRAMES[0])
    assert src.stats()["wire_bytes"] == len(big) + len(FRAMES[0])


def test_pcap_linktype_fcs_bits_masked(tmp_path: Path) -> None:
    # the upper bits of the header's link type may carry FCS information (draft-ietf-opsawg-pcap §4)
    path = write(tmp_path, "fcs.pcap", pcap_bytes([(1, 0, FRAMES[0], 60)], linktype=(1 << 28) | 113))
    src, _ = read_all(path)
    assert src.nics[0].linktype == 113


def test_pcap_truncated_last_record_is_counted_not_raised(tmp_path: Path) -> None:
    recs = [(1, 0, FRAMES[1], len(FRAMES[1])), (2, 0, FRAMES[2], len(FRAMES[2]))]
    data = pcap_bytes(recs)
    for cut in (1, 10, 17, 500, len(FRAMES[2]) + 5):  # inside the frame, inside its header
        path = write(tmp_path, f"cut{cut}.pcap", data[:-cut])
        src, pkts = read_all(path)
        assert [p[1] for p in pkts] == [FRAMES[1]], cut
        assert src.stats()["truncated"] == 1
        assert src.stats()["malformed"] == 1


def test_pcap_header_only_and_exact_end(tmp_path: Path) -> None:
    src, pkts = read_all(write(tmp_path, "empty.pcap", pcap_bytes([])))
    assert pkts == [] and src.stats()["malformed"] == 0


def test_pcap_bogus_caplen_is_counted_and_reader_resyncs(tmp_path: Path) -> None:
    good = [(1_700_000_000 + i, i, tcp_frame(bytes(10 * i)), 54 + 10 * i) for i in range(6)]
    data = bytearray(pcap_bytes(good))
    # corrupt the captured length of the third record to 1 MiB
    off = 24
    for _, _, fr, _ in good[:2]:
        off += 16 + len(fr)
    struct.pack_into("<I", data, off + 8, 1 << 20)
    src, pkts = read_all(write(tmp_path, "bogus.pcap", bytes(data)))
    assert [p[1] for p in pkts] == [r[2] for i, r in enumerate(good) if i != 2]
    stats = src.stats()
    assert stats["bogus_caplen"] == 1
    assert stats["resyncs"] == 1
    assert stats["skipped_bytes"] == 16 + len(good[2][2])


def test_pcap_caplen_beyond_end_of_file(tmp_path: Path) -> None:
    data = pcap_bytes([(1, 0, FRAMES[0], 60)]) + struct.pack("<IIII", 2, 0, 200_000, 200_000) + b"abc"
    src, pkts = read_all(write(tmp_path, "beyond.pcap", data))
    assert len(pkts) == 1
    assert src.stats()["truncated"] == 1


def test_not_a_capture_file(tmp_path: Path) -> None:
    path = write(tmp_path, "x.bin", b"PK\x03\x04 this is a zip")
    with pytest.raises(CaptureError) as e:
        PcapSource([str(path)])
    assert str(e.value) == (
        f"{path}: not a pcap or pcapng file (magic 0x504b0304; expected a1b2c3d4/a1b23c4d pcap or 0a0d0d0a pcapng)"
    )
    with pytest.raises(CaptureError, match=r"empty.pcap: not a pcap or pcapng file \(only 0 bytes\)"):
        PcapSource([str(write(tmp_path, "empty.pcap", b""))])
    with pytest.raises(CaptureError, match=r"missing\.pcap: cannot read: No such file"):
        PcapSource([str(tmp_path / "missing.pcap")])
    with pytest.raises(CaptureError, match="header truncated"):
        PcapSource([str(write(tmp_path, "short.pcap", pcap_bytes([])[:10]))])


def test_several_files_in_order_with_own_nics(tmp_path: Path) -> None:
    a = write(tmp_path, "a.pcap", pcap_bytes([(5, 0, FRAMES[0], 60)]))
    b = write(tmp_path, "b.pcapng", shb() + idb(opts=[(2, b"eth9")]) + epb(0, 1, FRAMES[1]))
    c = write(tmp_path, "c.pcap", pcap_bytes([(6, 0, FRAMES[2], 1014)], bo=">"))
    src, pkts = read_all(a, b, c)
    assert [(p[3], p[1]) for p in pkts] == [(0, FRAMES[0]), (1, FRAMES[1]), (2, FRAMES[2])]
    assert [(n.nic_id, n.name) for n in src.nics.values()] == [(0, "a"), (1, "eth9"), (2, "c")]


def test_batches_cover_chunk_boundaries(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Tiny chunks force every record to straddle a refill; the output must not change."""
    recs = [
        (1_600_000_000 + i // 7, i % 1_000_000, tcp_frame(bytes(i % 300)), 54 + i % 300 + 5)
        for i in range(5000)
    ]
    path = write(tmp_path, "many.pcap", pcap_bytes(recs))
    _, expected = read_all(path)
    assert [(p[0], p[1], p[2]) for p in expected] == [(s * 1_000_000 + f, d, w) for s, f, d, w in recs]
    monkeypatch.setattr(pcap_mod, "_CHUNK", 37)
    src = PcapSource([str(path)])
    batches = list(src.batches())
    assert [p for b in batches for p in b] == expected
    assert max(map(len, batches)) <= pcap_mod.BATCH
    assert src.stats()["malformed"] == 0


def test_cross_check_with_dpkt_pcap_writer(tmp_path: Path) -> None:
    buf = io.BytesIO()
    w = dpkt.pcap.Writer(buf, snaplen=1500, linktype=1)
    for i, fr in enumerate(FRAMES):
        w.writepkt(fr, ts=1_700_000_000 + i + 0.25)
    _, pkts = read_all(write(tmp_path, "dpkt.pcap", buf.getvalue()))
    assert [(p[0], p[1]) for p in pkts] == [
        (1_700_000_000_250_000 + i * 1_000_000, fr) for i, fr in enumerate(FRAMES)
    ]


# -- pcapng ------------------------------------------------------------------------------------------------


def test_pcapng_tsresol_ns_name_mac_and_direction_flags(tmp_path: Path) -> None:
    ts0 = 1_700_000_000_123_456_789  # nanoseconds
    data = (
        shb()
        + idb(opts=[(2, b"veth12ab"), (6, MAC_A), (9, b"\x09")])
        + epb(0, ts0, FRAMES[0], flags=0b01)  # inbound
        + epb(0, ts0 + 1_000, FRAMES[1], flags=0b10)  # outbound
        + epb(0, ts0 + 2_999, FRAMES[2])  # no flags
        + epb(0, ts0 + 3_000, FRAMES[0], flags=0)  # flags, direction not available
    )
    src, pkts = read_all(write(tmp_path, "dir.pcapng", data))
    assert [(p[0], p[3], p[4]) for p in pkts] == [
        (1_700_000_000_123_456, 0, 1),
        (1_700_000_000_123_457, 0, 2),
        (1_700_000_000_123_459, 0, 0),
        (1_700_000_000_123_459, 0, 0),
    ]
    assert [p[1] for p in pkts] == [FRAMES[0], FRAMES[1], FRAMES[2], FRAMES[0]]
    assert src.nics == {0: CaptureNic(0, "veth12ab", "", MAC_A, 1, 65535)}


def test_pcapng_epb_flags_after_other_options(tmp_path: Path) -> None:
    comment = (1, b"a comment")
    flags = (2, struct.pack("<I", 0b10 | 0x100))  # outbound, plus a reception-type bit
    body = struct.pack("<IIIII", 0, 0, 5, len(FRAMES[0]), 99) + _pad(FRAMES[0]) + ng_opts([comment, flags])
    data = shb() + idb() + ng_block(6, body)
    _, pkts = read_all(write(tmp_path, "opts.pcapng", data))
    assert [(p[0], p[2], p[4]) for p in pkts] == [(5, 99, 2)]


def test_pcapng_two_interfaces(tmp_path: Path) -> None:
    data = (
        shb()
        + idb(opts=[(2, b"eth0"), (6, MAC_A)])
        + idb(linktype=113, snaplen=128, opts=[(2, b"any"), (9, b"\x03")])  # milliseconds
        + epb(1, 1_700_000_000_001, FRAMES[0])
        + epb(0, 1_700_000_000_000_002, FRAMES[1])
    )
    src, pkts = read_all(write(tmp_path, "two.pcapng", data))
    assert src.nics == {
        0: CaptureNic(0, "eth0", "", MAC_A, 1, 65535),
        1: CaptureNic(1, "any", "", b"", 113, 128),
    }
    assert [(p[0], p[3]) for p in pkts] == [(1_700_000_000_001_000, 1), (1_700_000_000_000_002, 0)]


def test_pcapng_interfaces_known_before_reading(tmp_path: Path) -> None:
    data = shb() + idb(opts=[(2, b"a")]) + idb(opts=[(2, b"b")]) + epb(0, 1, FRAMES[0])
    src = PcapSource([str(write(tmp_path, "pre.pcapng", data))])
    assert [n.name for n in src.nics.values()] == ["a", "b"]
    assert src.stats()["packets"] == 0
    assert len([p for b in src.batches() for p in b]) == 1
    assert len(src.nics) == 2  # reading registers the same interfaces, not new ones


@pytest.mark.parametrize(
    ("tsresol", "ticks", "want_us"),
    [
        (None, 1_700_000_000_000_007, 1_700_000_000_000_007),  # default 10^-6
        (6, 42, 42),
        (0, 3, 3_000_000),  # whole seconds
        (0x80 | 10, 3 * 1024 + 512, 3_500_000),  # 2^-10 s
        (0x80 | 20, 1 << 20, 1_000_000),  # 2^-20 s
    ],
)
def test_pcapng_tsresol(tmp_path: Path, tsresol: int | None, ticks: int, want_us: int) -> None:
    opts = [] if tsresol is None else [(9, bytes([tsresol]))]
    _, pkts = read_all(write(tmp_path, "r.pcapng", shb() + idb(opts=opts) + epb(0, ticks, FRAMES[0])))
    assert pkts[0][0] == want_us


def test_pcapng_tsoffset(tmp_path: Path) -> None:
    data = shb() + idb(opts=[(14, struct.pack("<q", 1_700_000_000))]) + epb(0, 25, FRAMES[0])
    _, pkts = read_all(write(tmp_path, "off.pcapng", data))
    assert pkts[0][0] == 1_700_000_000_000_025


def test_pcapng_big_endian(tmp_path: Path) -> None:
    data = (
        shb(">")
        + idb(opts=[(2, b"be0"), (9, b"\x09")], bo=">")
        + epb(0, 5_000_000_123, FRAMES[1], wlen=1500, flags=2, bo=">")
    )
    src, pkts = read_all(write(tmp_path, "be.pcapng", data))
    assert pkts == [(5_000_000, FRAMES[1], 1500, 0, 2)]
    assert src.nics[0].name == "be0"


def test_pcapng_new_section_resets_interfaces(tmp_path: Path) -> None:
    data = (
        shb()
        + idb(opts=[(2, b"first")])
        + epb(0, 1, FRAMES[0])
        + shb(">")
        + idb(opts=[(2, b"second")], bo=">")
        + epb(0, 2, FRAMES[1], bo=">")
    )
    src, pkts = read_all(write(tmp_path, "sections.pcapng", data))
    assert [(p[3], src.nics[p[3]].name) for p in pkts] == [(0, "first"), (1, "second")]


def test_pcapng_spb_unknown_and_skipped_blocks(tmp_path: Path) -> None:
    nrb = ng_block(4, struct.pack("<HH", 0, 0))
    isb = ng_block(5, struct.pack("<III", 0, 0, 0) + ng_opts([(5, struct.pack("<Q", 7))]))
    unknown = ng_block(0x1234, b"whatever")
    custom = ng_block(0x0BAD, struct.pack("<I", 32473) + b"data")
    spb = ng_block(3, struct.pack("<I", 1000) + FRAMES[1])  # snapped at the IDB's 64-byte snaplen
    data = shb() + idb(snaplen=64) + nrb + epb(0, 10, FRAMES[0]) + unknown + spb + custom + isb
    src, pkts = read_all(write(tmp_path, "misc.pcapng", data))
    assert [(p[0], p[1], p[2]) for p in pkts] == [(10, FRAMES[0], len(FRAMES[0])), (10, FRAMES[1][:64], 1000)]
    stats = src.stats()
    assert stats["unknown_blocks"] == 1
    assert stats["kernel_drops"] == 7  # isb_ifdrop
    assert stats["malformed"] == 0


def test_pcapng_obsolete_packet_block(tmp_path: Path) -> None:
    body = struct.pack("<HHIIII", 0, 0, 0, 77, len(FRAMES[0]), 60) + _pad(FRAMES[0])
    body += ng_opts([(2, struct.pack("<I", 1))])
    _, pkts = read_all(write(tmp_path, "pb.pcapng", shb() + idb() + ng_block(2, body)))
    assert pkts == [(77, FRAMES[0], 60, 0, 1)]


def test_pcapng_damage_is_counted(tmp_path: Path) -> None:
    bad_caplen = bytearray(epb(0, 2, FRAMES[1]))
    struct.pack_into("<I", bad_caplen, 20, 300_000)  # caplen far beyond the block
    unknown_if = epb(5, 3, FRAMES[1])
    data = shb() + idb() + epb(0, 1, FRAMES[0]) + bytes(bad_caplen) + unknown_if + epb(0, 4, FRAMES[2])
    src, pkts = read_all(write(tmp_path, "damaged.pcapng", data))
    assert [p[0] for p in pkts] == [1, 4]
    stats = src.stats()
    assert stats["bogus_caplen"] == 1
    assert stats["malformed"] == 2


def test_pcapng_bad_block_length_resyncs(tmp_path: Path) -> None:
    broken = bytearray(epb(0, 2, FRAMES[1]))
    struct.pack_into("<I", broken, 4, 0xFFFFFFF0)
    data = shb() + idb() + epb(0, 1, FRAMES[0]) + bytes(broken) + epb(0, 3, FRAMES[2])
    src, pkts = read_all(write(tmp_path, "resync.pcapng", data))
    assert [p[0] for p in pkts] == [1, 3]
    assert src.stats()["resyncs"] == 1
    assert src.stats()["skipped_bytes"] == len(broken)


def test_pcapng_truncated_last_block(tmp_path: Path) -> None:
    data = shb() + idb() + epb(0, 1, FRAMES[0]) + epb(0, 2, FRAMES[2])
    for cut in (3, 100, len(epb(0, 2, FRAMES[2])) - 4):
        src, pkts = read_all(write(tmp_path, "cut.pcapng", data[:-cut]))
        assert [p[0] for p in pkts] == [1], cut
        assert src.stats()["truncated"] == 1


def test_pcapng_chunk_boundaries(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    parts = [shb(), idb(opts=[(9, b"\x09")]), idb(opts=[(2, b"b")])]
    for i in range(3000):
        parts.append(epb(i % 2, 1_000 * i, tcp_frame(bytes(i % 77)), flags=(i % 3) or None))
        if i % 500 == 0:
            parts.append(ng_block(4, b"\0" * 4))
    path = write(tmp_path, "many.pcapng", b"".join(parts))
    _, expected = read_all(path)
    assert len(expected) == 3000
    assert [p[4] for p in expected[:4]] == [0, 1, 2, 0]
    assert [p[0] for p in expected[:3]] == [0, 1_000, 2]
    monkeypatch.setattr(pcap_mod, "_CHUNK", 29)
    assert [p for b in PcapSource([str(path)]).batches() for p in b] == expected


def test_cross_check_with_dpkt_pcapng_writer(tmp_path: Path) -> None:
    buf = io.BytesIO()
    w = dpkt.pcapng.Writer(buf, snaplen=1500, linktype=1)
    for i, fr in enumerate(FRAMES):
        w.writepkt(fr, ts=1_700_000_000 + i + 0.5)
    _, pkts = read_all(write(tmp_path, "dpkt.pcapng", buf.getvalue()))
    assert [(p[0], p[1]) for p in pkts] == [
        (1_700_000_000_500_000 + i * 1_000_000, fr) for i, fr in enumerate(FRAMES)
    ]


# -- no input makes the reader raise -----------------------------------------------------------------------

_VALID_PCAP = pcap_bytes([(1_700_000_000 + i, i, FRAMES[i % 3], len(FRAMES[i % 3])) for i in range(8)])
_VALID_NG = (
    shb()
    + idb(opts=[(2, b"x"), (9, b"\x09")])
    + b"".join(epb(0, i, FRAMES[i % 3], flags=i % 3) for i in range(8))
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    base=st.sampled_from([_VALID_PCAP, _VALID_NG]),
    edits=st.lists(st.tuples(st.integers(0, 10_000), st.integers(0, 255)), max_size=6),
    cut=st.integers(0, 400),
)
def test_damaged_files_never_raise(
    tmp_path: Path, base: bytes, edits: list[tuple[int, int]], cut: int
) -> None:
    data = bytearray(base)
    for pos, value in edits:
        pos = 32 + pos % (len(data) - 32)  # keep the file header, damage the rest
        data[pos] = value
    path = write(tmp_path, "fuzz.bin", bytes(data[: len(data) - cut]))
    src = PcapSource([str(path)])
    for batch in src.batches():
        for ts, frame, wlen, nic, direction in batch:
            assert type(frame) is bytes and len(frame) <= 256 * 1024
            assert nic in src.nics and direction in (0, 1, 2)
            assert isinstance(ts, int) and isinstance(wlen, int)
