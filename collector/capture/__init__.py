"""Packet capture sources: pcap/pcapng files and live AF_PACKET rings, behind one batch contract."""

from collector.capture.afpacket import PACKET_FANOUT_CPU, PACKET_FANOUT_HASH, PACKET_FANOUT_LB, AfPacketSource
from collector.capture.base import (
    DIR_IN,
    DIR_OUT,
    DIR_UNKNOWN,
    MAX_CAPLEN,
    STAT_NAMES,
    CaptureError,
    CaptureNic,
    CaptureSource,
    Packet,
)
from collector.capture.pcap import PcapSource

__all__ = [
    "DIR_IN",
    "DIR_OUT",
    "DIR_UNKNOWN",
    "MAX_CAPLEN",
    "PACKET_FANOUT_CPU",
    "PACKET_FANOUT_HASH",
    "PACKET_FANOUT_LB",
    "STAT_NAMES",
    "AfPacketSource",
    "CaptureError",
    "CaptureNic",
    "CaptureSource",
    "Packet",
    "PcapSource",
]
