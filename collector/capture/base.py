"""The contract between packet capture sources and the flow builder.

A source (``PcapSource`` for files, ``AfPacketSource`` for live interfaces) hands out packets as plain
tuples ``(ts_us, frame, wire_len, nic_id, direction)`` in lists, so the hot path allocates one tuple and
one ``bytes`` per packet and nothing else.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Protocol

# direction of a packet relative to the capturing NIC
DIR_UNKNOWN = 0
DIR_IN = 1  # received by that NIC from the wire/peer
DIR_OUT = 2  # sent by this host through the NIC

# pcap LINKTYPE_* values the collector understands (https://www.tcpdump.org/linktypes.html)
LINKTYPE_NULL = 0  # BSD loopback: 4-byte host-order address family
LINKTYPE_ETHERNET = 1
LINKTYPE_RAW = 101  # raw IPv4/IPv6, version from the first nibble
LINKTYPE_LINUX_SLL = 113
LINKTYPE_IPV4 = 228
LINKTYPE_IPV6 = 229
LINKTYPE_LINUX_SLL2 = 276

# Larger captured lengths are treated as corruption: no link layer Linux captures on has frames this
# big (GSO super-frames stop at 64 KiB), and libpcap/Wireshark use the same 256 KiB ceiling.
MAX_CAPLEN = 256 * 1024

Packet = tuple[int, bytes, int, int, int]
"""(ts_us, frame, wire_len, nic_id, direction)"""

# Every source reports all of these (0 where a counter does not apply), so a consumer can export them
# without knowing which kind of source it has.
STAT_NAMES: tuple[str, ...] = (
    "packets",  # packets handed out in batches
    "bytes",  # captured frame bytes handed out
    "wire_bytes",  # original lengths of those packets on the wire
    "malformed",  # records/blocks skipped because they were damaged (sum of the detailed counters below)
    "truncated",  # a record cut short by the end of a file (ends that file)
    "bogus_caplen",  # captured length > 256 KiB or larger than its block
    "unknown_blocks",  # pcapng blocks of a type this reader does not know (skipped)
    "resyncs",  # times the file reader had to search for the next valid record after garbage
    "skipped_bytes",  # bytes passed over while resynchronising
    "kernel_packets",  # PACKET_STATISTICS tp_packets (includes drops)
    "kernel_drops",  # PACKET_STATISTICS tp_drops, or pcapng isb_ifdrop for files
    "kernel_freeze_q",  # PACKET_STATISTICS tp_freeze_q_cnt (ring full, queue frozen)
    "nics_opened",
    "nics_vanished",  # live interfaces (or their namespaces) that disappeared and were closed
    "open_errors",  # interfaces that matched during a rescan but could not be opened
    "rescans",
)


def new_stats() -> dict[str, int]:
    return dict.fromkeys(STAT_NAMES, 0)


class CaptureError(Exception):
    """A capture source cannot start: the message says what is wrong and, where possible, what exists."""


@dataclass(frozen=True)
class CaptureNic:
    nic_id: int  # small integer assigned by the source, unique within the source; stable while the interface exists
    name: str  # interface name, or for files the pcapng if_name or the file stem
    netns: str  # network namespace name ("" = the process's own namespace)
    mac: bytes  # 6 bytes of the interface MAC if known, else b""
    linktype: int  # pcap LINKTYPE_* of the frames
    snaplen: int


class CaptureSource(Protocol):
    """What the flow builder consumes."""

    nics: dict[int, CaptureNic]

    def batches(self) -> Iterator[list[Packet]]: ...

    def stats(self) -> dict[str, int]: ...

    def close(self) -> None: ...
