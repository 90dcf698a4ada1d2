"""Read pcap and pcapng files as capture batches — the hot path of ``flowscope collect --pcap``.

Files are read in 1 MiB chunks; records are walked with precompiled ``struct.Struct.unpack_from`` and each
frame is sliced out of the chunk as ``bytes``. The per-record loop does one unpack, one slice, one tuple;
anything unusual (a chunk boundary, a non-EPB block, a damaged record) drops out of the loop into plain,
slower code that handles one record and goes back.

Damage never raises: a truncated last record ends the file, a captured length over 256 KiB is counted
and the reader searches for the next plausible record, unknown pcapng blocks are skipped by length.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Iterator
from typing import BinaryIO

import cython

from collector.capture.base import (
    DIR_IN,
    DIR_OUT,
    DIR_UNKNOWN,
    MAX_CAPLEN,
    CaptureError,
    CaptureNic,
    Packet,
    new_stats,
)

BATCH = 2048
_CHUNK = 1 << 20
# pcapng blocks above this are treated as a damaged length field (real blocks: one packet + options)
_MAX_BLOCK = 16 << 20

_PCAP_US = {b"\xd4\xc3\xb2\xa1": "<", b"\xa1\xb2\xc3\xd4": ">"}
_PCAP_NS = {b"\x4d\x3c\xb2\xa1": "<", b"\xa1\xb2\x3c\x4d": ">"}
_NG_SHB = b"\x0a\x0d\x0d\x0a"
_NG_BOM = {b"\x4d\x3c\x2b\x1a": "<", b"\x1a\x2b\x3c\x4d": ">"}

# pcapng block types (draft-ietf-opsawg-pcapng §11.1)
_SHB = 0x0A0D0D0A
_IDB = 1
_PB = 2  # obsolete Packet Block, still written by old tools
_SPB = 3
_NRB = 4
_ISB = 5
_EPB = 6
_KNOWN_SKIPPED = {_NRB, 7, 8, 9, 0x0A, 0x0BAD, 0x40000BAD}
_PLAUSIBLE_BLOCKS = {_SHB, _IDB, _PB, _SPB, _NRB, _ISB, _EPB}

# IDB options
_IF_NAME = 2
_IF_MACADDR = 6
_IF_TSRESOL = 9
_IF_TSOFFSET = 14
_EPB_FLAGS = 2
_FLAG_DIRECTION = (DIR_UNKNOWN, DIR_IN, DIR_OUT, DIR_UNKNOWN)  # epb_flags bits 0-1; 3 is invalid
_ISB_IFDROP = 5


@cython.cfunc
@cython.inline
@cython.locals(b=bytes, o=cython.Py_ssize_t)
@cython.returns(cython.ulonglong)
def _le32(b, o):
    """A little-endian 32-bit field (compiled form only; the source reads these with struct)."""
    return b[o] | b[o + 1] << 8 | b[o + 2] << 16 | cython.cast(cython.ulonglong, b[o + 3]) << 24


class _Chunks:
    """A sliding window over a file: ``buf[pos:]`` is unread data; ``fill`` tops it up."""

    __slots__ = ("buf", "eof", "f", "pos")

    def __init__(self, f: BinaryIO, start: bytes = b"") -> None:
        self.f = f
        self.buf = start
        self.pos = 0
        self.eof = False

    def avail(self) -> int:
        return len(self.buf) - self.pos

    def fill(self, need: int) -> bool:
        """Make ``need`` bytes available from ``pos``; False when the file ends first."""
        have = len(self.buf) - self.pos
        if have >= need:
            return True
        parts = [self.buf[self.pos :]]
        while have < need and not self.eof:
            data = self.f.read(max(_CHUNK, need - have))
            if not data:
                self.eof = True
                break
            parts.append(data)
            have += len(data)
        self.buf = b"".join(parts)
        self.pos = 0
        return have >= need


def _opts(buf: bytes, pos: int, end: int, bo: str) -> Iterator[tuple[int, bytes]]:
    """pcapng options (code, value) between pos and end; stops at opt_endofopt or damage."""
    while pos + 4 <= end:
        code, length = struct.unpack_from(bo + "HH", buf, pos)
        if code == 0:
            return
        pos += 4
        if pos + length > end:
            return
        yield code, buf[pos : pos + length]
        pos += (length + 3) & ~3


def _ts_scale(tsresol: int) -> tuple[int, int]:
    """(mul, div) turning timestamp units into µs: bit 7 set = 2^-n seconds, else 10^-n."""
    n = tsresol & 0x7F
    if tsresol & 0x80:
        return 1_000_000, 1 << n
    if n >= 6:
        return 1, 10 ** (n - 6)
    return 10 ** (6 - n), 1


class PcapSource:
    """Packets from pcap/pcapng files, one file after another.

    Every file is opened and checked at construction, so a wrong path or a non-capture file fails before
    any work starts. Each file's interfaces get their own nic_ids; interfaces a pcapng file declares later
    than its header are added to ``nics`` when reached.
    """

    def __init__(self, paths: list[str]) -> None:
        self.paths = list(paths)
        self.nics: dict[int, CaptureNic] = {}
        self._stats = new_stats()
        self._nic_keys: dict[tuple[int, int, int], int] = {}  # (file, section, interface) -> nic_id
        self._ng_drops: dict[tuple[int, int, int], int] = {}
        self._closed = False
        self._kinds: list[tuple[str, str]] = []  # per file: ("pcap"|"pcap-ns"|"pcapng", byte order)
        for fi, path in enumerate(self.paths):
            self._kinds.append(self._probe(fi, path))

    # -- public API -------------------------------------------------------------------------------------

    def batches(self) -> Iterator[list[Packet]]:
        for fi, path in enumerate(self.paths):
            if self._closed:
                return
            kind, bo = self._kinds[fi]
            with open(path, "rb") as f:
                if kind == "pcapng":
                    yield from self._read_pcapng(fi, path, f)
                else:
                    yield from self._read_pcap(fi, f, bo, kind == "pcap-ns")

    def stats(self) -> dict[str, int]:
        st = dict(self._stats)
        st["kernel_drops"] = sum(self._ng_drops.values())
        return st

    def close(self) -> None:
        self._closed = True

    def __enter__(self) -> PcapSource:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- opening ----------------------------------------------------------------------------------------

    def _probe(self, fi: int, path: str) -> tuple[str, str]:
        try:
            with open(path, "rb") as f:
                head = f.read(24)
                magic = head[:4]
                if magic in _PCAP_US or magic in _PCAP_NS:
                    if len(head) < 24:
                        raise CaptureError(f"{path}: pcap file header truncated ({len(head)} of 24 bytes)")
                    bo = _PCAP_US.get(magic) or _PCAP_NS[magic]
                    _, _, _, _, snaplen, network = struct.unpack_from(bo + "HHiIII", head, 4)
                    self._add_nic((fi, 0, 0), _stem(path), b"", network & 0xFFFF, snaplen)
                    return ("pcap" if magic in _PCAP_US else "pcap-ns"), bo
                if magic == _NG_SHB:
                    f.seek(0)
                    self._probe_pcapng(fi, path, f)
                    return "pcapng", ""
        except OSError as e:
            raise CaptureError(f"{path}: cannot read: {e.strerror or e}") from e
        if len(magic) < 4:
            raise CaptureError(f"{path}: not a pcap or pcapng file (only {len(magic)} bytes)")
        raise CaptureError(
            f"{path}: not a pcap or pcapng file (magic 0x{magic.hex()}; "
            "expected a1b2c3d4/a1b23c4d pcap or 0a0d0d0a pcapng)"
        )

    def _probe_pcapng(self, fi: int, path: str, f: BinaryIO) -> None:
        """Register the interfaces declared at the start of the file so ``nics`` is filled before reading."""
        ch = _Chunks(f)
        ng = _NgState(self, fi, path)
        if not ch.fill(12) or ch.buf[8:12] not in _NG_BOM:
            raise CaptureError(f"{path}: pcapng section header damaged (byte-order magic missing)")
        sink: list[Packet] = []
        while ch.fill(8):
            btype = struct.unpack_from(ng.bo + "I", ch.buf, ch.pos)[0] if ng.bo else _SHB
            if btype not in (_SHB, _IDB) or not ng.block(ch, sink):
                break
        # probing must not count anything: reading starts over in batches()
        self._stats.update(new_stats())

    def _add_nic(self, key: tuple[int, int, int], name: str, mac: bytes, linktype: int, snaplen: int) -> int:
        nic_id = self._nic_keys.get(key)
        if nic_id is None:
            nic_id = len(self._nic_keys)
            self._nic_keys[key] = nic_id
            self.nics[nic_id] = CaptureNic(nic_id, name, "", mac, linktype, snaplen)
        return nic_id

    # -- classic pcap -----------------------------------------------------------------------------------

    # C types for the compiled form (setup.py); the record loop is per packet
    @cython.locals(pos=cython.Py_ssize_t, s=cython.Py_ssize_t, nxt=cython.Py_ssize_t, end=cython.Py_ssize_t,
                   start=cython.Py_ssize_t, caplen=cython.Py_ssize_t, cap=cython.Py_ssize_t, n=cython.Py_ssize_t,
                   n0=cython.Py_ssize_t, le=cython.bint, wb=cython.longlong, wlen=cython.longlong, sec=cython.longlong,
                   frac=cython.longlong, div=cython.longlong, buf=bytes, batch=list)
    def _read_pcap(self, fi: int, f: BinaryIO, bo: str, ns: bool) -> Iterator[list[Packet]]:
        nic = self._nic_keys[(fi, 0, 0)]
        f.seek(24)
        ch = _Chunks(f)
        unpack = struct.Struct(bo + "IIII").unpack_from
        le = bo == "<"
        st = self._stats
        cap = MAX_CAPLEN
        batch: list[Packet] = []
        last_us: int | None = None  # for resync plausibility
        while not self._closed:
            buf = ch.buf
            pos = start = ch.pos
            end = len(buf)
            n0 = len(batch)
            wb = 0
            append = batch.append
            div = 1000 if ns else 1    # fraction of a second: ns or µs
            try:
                for _ in range(BATCH - n0):
                    if cython.compiled and le and pos + 16 <= end:     # the header read in place
                        sec, frac, caplen, wlen = (_le32(buf, pos), _le32(buf, pos + 4), _le32(buf, pos + 8),
                                                   _le32(buf, pos + 12))
                    else:
                        sec, frac, caplen, wlen = unpack(buf, pos)
                    s = pos + 16
                    nxt = s + caplen
                    if nxt > end or caplen > cap:
                        break
                    append((sec * 1000000 + frac // div, buf[s:nxt], wlen, nic, 0))
                    wb += wlen
                    pos = nxt
            except struct.error:  # fewer than 16 bytes left in this chunk
                pass
            ch.pos = pos
            n = len(batch) - n0
            if n:
                st["packets"] += n
                st["bytes"] += pos - start - 16 * n
                st["wire_bytes"] += wb
                last_us = batch[-1][0]
            if len(batch) >= BATCH:
                yield batch
                batch = []
                continue
            # the loop stopped at a chunk boundary, the end of the file, or a damaged record
            if not ch.fill(16):
                if ch.avail():
                    self._count("truncated")
                break
            caplen = unpack(ch.buf, ch.pos)[2]
            if caplen > cap:
                self._count("bogus_caplen")
                last_sec = None if last_us is None else last_us // 1000000
                if not self._resync_pcap(ch, unpack, 10**9 if ns else 10**6, last_sec):
                    break
            elif not ch.fill(16 + caplen):
                self._count("truncated")
                break
        if batch:
            yield batch

    def _resync_pcap(self, ch: _Chunks, unpack, frac_max: int, last_sec: int | None) -> bool:
        """After a damaged record header, find the next offset where two plausible records follow."""

        def plausible(buf: bytes, p: int) -> int:
            sec, frac, caplen, wlen = unpack(buf, p)
            if frac >= frac_max or caplen > MAX_CAPLEN or caplen > wlen or wlen > 4 * MAX_CAPLEN:
                return -1
            if last_sec is not None and abs(sec - last_sec) > 7 * 86400:
                return -1
            return caplen

        self._stats["resyncs"] += 1
        rel = 1
        while ch.fill(rel + 16):
            caplen = plausible(ch.buf, ch.pos + rel)
            if caplen >= 0:
                nxt = rel + 16 + caplen
                if ch.fill(nxt + 16):
                    ok = plausible(ch.buf, ch.pos + nxt) >= 0
                else:
                    ok = ch.avail() == nxt  # a record that ends the file exactly
                if ok:
                    return self._skipped(ch, rel)
            rel += 1
        return self._skipped(ch, None)

    # -- pcapng -----------------------------------------------------------------------------------------

    def _read_pcapng(self, fi: int, path: str, f: BinaryIO) -> Iterator[list[Packet]]:
        ch = _Chunks(f)
        ng = _NgState(self, fi, path)
        st = self._stats
        cap = MAX_CAPLEN
        batch: list[Packet] = []
        while not self._closed:
            if ng.bo:
                buf = ch.buf
                pos = ch.pos
                end = len(buf)
                n0 = len(batch)
                nbytes = wb = 0
                append = batch.append
                unpack = ng.epb.unpack_from
                flags = ng.flags.unpack_from
                ifaces = ng.ifaces
                nif = len(ifaces)
                fdir = _FLAG_DIRECTION
                try:
                    for _ in range(BATCH - n0):
                        btype, blen, ifid, hi, lo, caplen, wlen = unpack(buf, pos)
                        nxt = pos + blen
                        if btype != 6 or nxt > end or caplen > blen - 32 or caplen > cap or ifid >= nif:
                            break
                        nic, mul, div, off = ifaces[ifid]
                        # mul == div only for the default µs resolution
                        t = (hi << 32 | lo) + off if mul == div else (hi << 32 | lo) * mul // div + off
                        s = pos + 28
                        if blen == (caplen + 35) & -4:
                            d = 0
                        else:  # options present; dumpcap writes epb_flags first
                            code, olen, fl = flags(buf, s + ((caplen + 3) & -4))
                            d = (
                                fdir[fl & 3]
                                if code == 2 and olen == 4
                                else ng.epb_direction(buf, s, caplen, nxt)
                            )
                        append((t, buf[s : s + caplen], wlen, nic, d))
                        nbytes += caplen
                        wb += wlen
                        pos = nxt
                except struct.error:
                    pass
                ch.pos = pos
                st["packets"] += len(batch) - n0
                st["bytes"] += nbytes
                st["wire_bytes"] += wb
                if len(batch) >= BATCH:
                    ng.last_ts = batch[-1][0]
                    yield batch
                    batch = []
                    continue
                if batch:
                    ng.last_ts = batch[-1][0]
            if not ng.block(ch, batch):
                break
        if batch:
            yield batch

    def _skipped(self, ch: _Chunks, rel: int | None) -> bool:
        """After garbage: skip ``rel`` bytes to the next good record (True), or everything left
        when none was found (``rel`` None, False); the skipped bytes are counted."""
        n = ch.avail() if rel is None else rel
        self._stats["skipped_bytes"] += n
        ch.pos += n
        return rel is not None

    def _count(self, detail: str = "") -> None:
        """One damaged record or block skipped (``detail`` names the specific counter, if any)."""
        self._stats["malformed"] += 1
        if detail:
            self._stats[detail] += 1


class _NgState:
    """Per-file pcapng state: current section byte order and interfaces; handles one block at a time."""

    def __init__(self, src: PcapSource, fi: int, path: str) -> None:
        self.src = src
        self.fi = fi
        self.stem = _stem(path)
        self.bo = ""  # byte order of the current section, "" before the first SHB
        self.section = -1
        self.ifaces: list[tuple[int, int, int, int]] = []  # (nic_id, mul, div, offset_us)
        self.snaplens: list[int] = []
        self.last_ts = 0
        self.epb = struct.Struct("<7I")
        self.flags = struct.Struct("<HHI")

    def epb_direction(self, buf: bytes, s: int, caplen: int, nxt: int) -> int:
        for code, val in _opts(buf, s + ((caplen + 3) & -4), nxt - 4, self.bo):
            if code == _EPB_FLAGS and len(val) == 4:
                return _FLAG_DIRECTION[struct.unpack(self.bo + "I", val)[0] & 3]
        return DIR_UNKNOWN

    def block(self, ch: _Chunks, batch: list[Packet]) -> bool:
        """Handle the block at ``ch.pos`` (reading more as needed); False at the end of the file."""
        src = self.src
        if not ch.fill(8):
            if ch.avail():
                src._count("truncated")
            return False
        buf, pos = ch.buf, ch.pos
        if buf[pos : pos + 4] == _NG_SHB:
            if not ch.fill(12):
                src._count("truncated")
                return False
            buf, pos = ch.buf, ch.pos
            bo = _NG_BOM.get(buf[pos + 8 : pos + 12])
            if bo is None:
                return self._resync(ch)
            self.bo = bo
            self.section += 1
            self.ifaces = []
            self.snaplens = []
            self.epb = struct.Struct(bo + "7I")
            self.flags = struct.Struct(bo + "HHI")
        bo = self.bo
        if not bo:  # data before the first section header
            return self._resync(ch)
        btype, blen = struct.unpack_from(bo + "II", buf, pos)
        if blen < 12 or blen & 3 or blen > _MAX_BLOCK:
            return self._resync(ch)
        if not ch.fill(blen):
            src._count("truncated")
            return False
        buf, pos = ch.buf, ch.pos
        body, bend = pos + 8, pos + blen - 4
        if btype == _SHB:
            pass
        elif btype == _IDB:
            self._idb(buf, body, bend)
        elif btype == _EPB:
            ifid, _, _, caplen = struct.unpack_from(bo + "IIII", buf, body)
            if caplen > blen - 32 or caplen > MAX_CAPLEN:
                src._count("bogus_caplen")
            elif ifid >= len(self.ifaces):
                src._count()
            else:
                return True  # a valid EPB that straddled a chunk: the fast loop takes it now
        elif btype == _SPB:
            self._spb(buf, body, blen, batch)
        elif btype == _PB:
            self._pb(buf, body, bend, blen, batch)
        elif btype == _ISB:
            ifid = struct.unpack_from(bo + "I", buf, body)[0]
            for code, val in _opts(buf, body + 12, bend, bo):
                if code == _ISB_IFDROP and len(val) == 8:
                    src._ng_drops[(self.fi, self.section, ifid)] = struct.unpack(bo + "Q", val)[0]
        elif btype not in _KNOWN_SKIPPED:
            src._stats["unknown_blocks"] += 1
        ch.pos = pos + blen
        return True

    def _idb(self, buf: bytes, body: int, bend: int) -> None:
        bo = self.bo
        linktype, _, snaplen = struct.unpack_from(bo + "HHI", buf, body)
        idx = len(self.ifaces)
        name = self.stem if idx == 0 else f"{self.stem}#{idx}"
        mac = b""
        mul, div, off = 1, 1, 0
        for code, val in _opts(buf, body + 8, bend, bo):
            if code == _IF_NAME:
                name = val.split(b"\0", 1)[0].decode("utf-8", "replace") or name
            elif code == _IF_MACADDR and len(val) == 6:
                mac = bytes(val)
            elif code == _IF_TSRESOL and len(val) >= 1:
                mul, div = _ts_scale(val[0])
            elif code == _IF_TSOFFSET and len(val) == 8:
                off = struct.unpack(bo + "q", val)[0] * 1_000_000
        nic = self.src._add_nic((self.fi, self.section, idx), name, mac, linktype, snaplen)
        self.ifaces.append((nic, mul, div, off))
        self.snaplens.append(snaplen)

    def _spb(self, buf: bytes, body: int, blen: int, batch: list[Packet]) -> None:
        """Simple Packet Block: interface 0, no timestamp (we reuse the last one so time stays monotonic)."""
        if not self.ifaces:
            self.src._count()
            return
        wlen = struct.unpack_from(self.bo + "I", buf, body)[0]
        caplen = min(wlen, blen - 16, self.snaplens[0] or MAX_CAPLEN)
        s = body + 4
        batch.append((self.last_ts, buf[s : s + caplen], wlen, self.ifaces[0][0], DIR_UNKNOWN))
        self._counted(caplen, wlen)

    def _pb(self, buf: bytes, body: int, bend: int, blen: int, batch: list[Packet]) -> None:
        """Obsolete Packet Block: like an EPB with a 16-bit interface id and pack_flags."""
        ifid, _, hi, lo, caplen, wlen = struct.unpack_from(self.bo + "HHIIII", buf, body)
        if caplen > blen - 32 or caplen > MAX_CAPLEN:
            self.src._count("bogus_caplen")
            return
        if ifid >= len(self.ifaces):
            self.src._count()
            return
        nic, mul, div, off = self.ifaces[ifid]
        s = body + 20
        d = self.epb_direction(buf, s, caplen, bend + 4)
        batch.append(((hi << 32 | lo) * mul // div + off, buf[s : s + caplen], wlen, nic, d))
        self._counted(caplen, wlen)

    def _counted(self, caplen: int, wlen: int) -> None:
        st = self.src._stats
        st["packets"] += 1
        st["bytes"] += caplen
        st["wire_bytes"] += wlen

    def _resync(self, ch: _Chunks) -> bool:
        """Skip garbage 4 bytes at a time until a block whose trailing length matches its leading one."""
        src = self.src
        src._count("resyncs")
        bo = self.bo or "<"
        rel = 4
        while ch.fill(rel + 12):
            buf, p = ch.buf, ch.pos + rel
            if buf[p : p + 4] == _NG_SHB:
                bo2 = _NG_BOM.get(buf[p + 8 : p + 12])
                btype, blen = _SHB, (struct.unpack_from(bo2 + "I", buf, p + 4)[0] if bo2 else 0)
            else:
                bo2 = bo
                btype, blen = struct.unpack_from(bo + "II", buf, p)
                if not self.bo:
                    btype = -1  # only a section header can start a section
            if (
                btype in _PLAUSIBLE_BLOCKS
                and 12 <= blen <= _MAX_BLOCK
                and not blen & 3
                and ch.fill(rel + blen)
                and struct.unpack_from(f"{bo2}I", ch.buf, ch.pos + rel + blen - 4)[0] == blen
            ):
                return src._skipped(ch, rel)
            rel += 4
        return src._skipped(ch, None)


def _stem(path: str) -> str:
    return os.path.splitext(os.path.basename(path))[0]
