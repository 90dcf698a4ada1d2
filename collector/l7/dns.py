"""DNS over UDP and TCP (RFC 1035, RFC 7766): queries are requests, answers responses, paired by
transaction id (``session_id`` = ``request_id`` = txid; datamodel §2, protocol 120).

Decisions where the datamodel leaves a choice:

- ``request_type`` is the qtype name (its number when unnamed); ``request_resource`` and
  ``endpoint`` the qname; ``request_domain`` the qname for A/AAAA queries only, as DeepFlow does:
  a PTR, SRV or TXT name is not a host the flow talks to, and l4_flow_log's request_domain is
  filled from it. Only the first question counts (there is one in practice).
- A response repeats the question's fields (so an orphan answer still says what it answered),
  ``response_code`` = RCODE: 0 ok; FORMERR and NXDOMAIN client errors, the rest server errors
  (datamodel: "1,3 client"), ``response_exception`` the RCODE name. ``response_result`` lists the
  answer section as ``"A 10.99.0.1; AAAA fd00:99::1"`` (dig-like data, names without the final
  dot), clipped to ``result_max``; ``attributes`` = {"answers": ANCOUNT, "opcode": name}.
  Authority and additional sections are not read, nor EDNS extended RCODEs.
- UDP or TCP is told by ``seq`` (0 for UDP by the feed contract). Over TCP, messages are framed
  by their 2-byte length: several per segment, one across segments, gaps skipped by length.
- A message cut by the snaplen gives what its captured part holds; under 12 bytes it cannot be
  paired and is reported alone (SESSION, PARSE_FAILED). Compression pointers must point to an
  earlier name and hops are bounded, so loops end; malformed messages give the flow up.

TCP framing, bounded reads and resynchronisation are collector/l7/stream.py's, shared with the other
parsers of length-delimited protocols.
"""

from __future__ import annotations

import ipaddress
import struct

from collector.l7.base import (
    CLIENT_ERROR,
    DNS,
    PARSE_FAILED,
    REQUEST,
    RESPONSE,
    SERVER_ERROR,
    SESSION,
    GiveUp,
    L7Config,
    L7Message,
    Spec,
)
from collector.l7.common import clip
from collector.l7.stream import Cut, Framer, Malformed, give_up, resync

# -- DNS knowledge -------------------------------------------------------------------------------
QTYPES = {
    1: "A", 2: "NS", 5: "CNAME", 6: "SOA", 12: "PTR", 13: "HINFO", 15: "MX", 16: "TXT", 17: "RP", 18: "AFSDB",
    24: "SIG", 25: "KEY", 28: "AAAA", 29: "LOC", 33: "SRV", 35: "NAPTR", 36: "KX", 37: "CERT", 39: "DNAME",
    41: "OPT", 42: "APL", 43: "DS", 44: "SSHFP", 45: "IPSECKEY", 46: "RRSIG", 47: "NSEC", 48: "DNSKEY",
    49: "DHCID", 50: "NSEC3", 51: "NSEC3PARAM", 52: "TLSA", 53: "SMIMEA", 55: "HIP", 59: "CDS", 60: "CDNSKEY",
    61: "OPENPGPKEY", 62: "CSYNC", 63: "ZONEMD", 64: "SVCB", 65: "HTTPS", 99: "SPF", 249: "TKEY", 250: "TSIG",
    251: "IXFR", 252: "AXFR", 253: "MAILB", 254: "MAILA", 255: "ANY", 256: "URI", 257: "CAA",
}
DOMAIN_QTYPES = frozenset({1, 28})                    # request_domain only for address lookups (DeepFlow)
OPCODES = {0: "QUERY", 1: "IQUERY", 2: "STATUS", 4: "NOTIFY", 5: "UPDATE", 6: "DSO"}
RCODES = {0: "NOERROR", 1: "FORMERR", 2: "SERVFAIL", 3: "NXDOMAIN", 4: "NOTIMP", 5: "REFUSED", 6: "YXDOMAIN",
          7: "YXRRSET", 8: "NXRRSET", 9: "NOTAUTH", 10: "NOTZONE", 11: "DSOTYPENI"}
CLIENT_RCODES = frozenset({1, 3})                     # datamodel §2: "RCODE 0 ok; 1,3 client; else server"
QCLASSES = frozenset({1, 3, 4, 254, 255})             # IN, CH, HS, NONE, ANY (mDNS top bit masked)
NAME_TYPES = frozenset({2, 5, 12, 39})                # rdata is one domain name: NS CNAME PTR DNAME
MAX_POINTER_HOPS = 64
HEADER = struct.Struct("!HHHHHH")
_RRFIX = struct.Struct("!HHIH")


def qtype_name(t: int) -> str:
    return QTYPES.get(t) or str(t)


def _label_text(label: bytes) -> str:
    s = label.decode("latin-1")
    if s.isascii() and s.isprintable() and "." not in s and "\\" not in s:
        return s
    return "".join(c if " " < c < "\x7f" and c not in ".\\" else f"\\{ord(c):03d}" for c in s)


def read_name(msg: bytes, pos: int) -> tuple[str, int]:
    """A domain name at ``pos`` (with compression) and the offset after it. Pointers must point
    backwards (RFC 1035 §4.1.4 "a prior occurrence"); hops and length are bounded, so a loop
    ends as Malformed. Past the captured end: Cut."""
    labels: list[str] = []
    after = -1
    hops = 0
    size = 0
    n = len(msg)
    while True:
        if pos >= n:
            raise Cut
        b = msg[pos]
        if b == 0:
            pos += 1
            break
        if b >= 0xC0:
            if pos + 1 >= n:
                raise Cut
            ptr = ((b & 0x3F) << 8) | msg[pos + 1]
            if after < 0:
                after = pos + 2
            if ptr >= pos or ptr < 12:
                raise Malformed("dns: compression pointer not to an earlier name")
            hops += 1
            if hops > MAX_POINTER_HOPS:
                raise Malformed("dns: compression pointer loop")
            pos = ptr
            continue
        if b >= 0x40:
            raise Malformed("dns: reserved label type")
        size += b + 1
        if size > 254:
            raise Malformed("dns: name longer than 255 bytes")
        if pos + 1 + b > n:
            raise Cut
        labels.append(_label_text(msg[pos + 1:pos + 1 + b]))
        pos += 1 + b
    return (".".join(labels) or "."), (after if after >= 0 else pos)


def _rdata_text(msg: bytes, rtype: int, pos: int, rdlen: int) -> str:
    """One answer's data as text (dig-like). The rdata is within the captured bytes."""
    end = pos + rdlen
    if rtype == 1 or rtype == 28:
        if rdlen != (4 if rtype == 1 else 16):
            raise Malformed("dns: address record of the wrong length")
        return str(ipaddress.ip_address(msg[pos:end]))
    try:
        if rtype in NAME_TYPES:
            return read_name(msg, pos)[0]
        if rtype == 15:                                           # MX: preference, exchange
            return f"{int.from_bytes(msg[pos:pos + 2], 'big')} {read_name(msg, pos + 2)[0]}"
        if rtype == 33:                                           # SRV: priority weight port target
            prio, weight, port = struct.unpack_from("!HHH", msg, pos)
            return f"{prio} {weight} {port} {read_name(msg, pos + 6)[0]}"
        if rtype == 16:                                           # TXT: <len><bytes>…
            parts = []
            p = pos
            while p < end:
                k = msg[p]
                if p + 1 + k > end:
                    raise Malformed("dns: TXT string runs past its record")
                parts.append('"' + msg[p + 1:p + 1 + k].decode("utf-8", "backslashreplace") + '"')
                p += 1 + k
            return " ".join(parts)
        if rtype == 6:                                            # SOA: mname rname serial …
            mname, p = read_name(msg, pos)
            rname, p = read_name(msg, p)
            return f"{mname} {rname} {int.from_bytes(msg[p:p + 4], 'big')}"
    except (Cut, struct.error):
        raise Malformed("dns: record data runs past its length") from None
    return f"\\# {rdlen}"                                         # RFC 3597 unknown-type notation


class _Parsed:
    """What a message gave before its end (or the capture's)."""

    __slots__ = ("answers", "qname", "qtype", "text")

    def __init__(self) -> None:
        self.qname = ""
        self.qtype = -1
        self.answers: list[str] = []
        self.text = 0


def _sections(msg: bytes, qd: int, an: int, is_response: bool, result_max: int, p: _Parsed) -> None:
    """Question(s) then, for a response, the answer section; fills ``p`` as it goes."""
    pos = 12
    for i in range(qd):
        name, pos = read_name(msg, pos)
        if pos + 4 > len(msg):
            raise Cut
        qtype, _qclass = struct.unpack_from("!HH", msg, pos)
        pos += 4
        if i == 0:
            p.qname, p.qtype = name, qtype
    if not is_response:
        return
    for _ in range(an):
        _, pos = read_name(msg, pos)
        if pos + 10 > len(msg):
            raise Cut
        rtype, _rclass, _ttl, rdlen = _RRFIX.unpack_from(msg, pos)
        pos += 10
        if pos + rdlen > len(msg):
            raise Cut
        if p.text <= result_max:                  # stop formatting once the result is full
            s = f"{qtype_name(rtype)} {_rdata_text(msg, rtype, pos, rdlen)}"
            p.answers.append(s)
            p.text += len(s) + 2
        pos += rdlen


def decode(msg: bytes, total: int, ts: int, seq: int, config: L7Config, framing: int = 0) -> L7Message:
    """One DNS message (``msg`` may be cut short of ``total`` by the capture) as an L7Message.
    ``framing``: bytes of TCP length prefix counted in the message's length."""
    cut = len(msg) < total
    if len(msg) < 12:
        if not cut:
            raise Malformed("dns: message shorter than its 12-byte header")
        return L7Message(SESSION, ts, seq, l7_protocol=DNS, response_status=PARSE_FAILED,
                         length=total + framing, captured=len(msg))
    txid, flags, qd, an, _ns, _ar = HEADER.unpack_from(msg)
    opcode = (flags >> 11) & 0xF
    if opcode not in OPCODES:
        raise Malformed("dns: unknown opcode")
    is_response = bool(flags & 0x8000)
    p = _Parsed()
    try:
        _sections(msg, qd, an, is_response, config.result_max, p)
    except Cut:
        if not cut:
            raise Malformed("dns: a section runs past the end of the message") from None
    m = L7Message(RESPONSE if is_response else REQUEST, ts, seq, l7_protocol=DNS, session_id=txid,
                  request_id=txid, length=total + framing, captured=len(msg) + framing)
    if p.qtype >= 0:
        m.request_type = qtype_name(p.qtype)
        m.request_resource = m.endpoint = p.qname
        if p.qtype in DOMAIN_QTYPES:
            m.request_domain = p.qname
    if is_response:
        rcode = flags & 0xF
        m.response_code = rcode
        if rcode:
            m.response_status = CLIENT_ERROR if rcode in CLIENT_RCODES else SERVER_ERROR
            m.response_exception = RCODES.get(rcode, f"RCODE{rcode}")
        m.response_result = clip("; ".join(p.answers), config.result_max)
        m.attributes = {"answers": str(an), "opcode": OPCODES[opcode]}
    else:
        m.attributes = {"opcode": OPCODES[opcode]}
    return m


def _tcp_len(buf: bytes | bytearray, off: int) -> int | None:
    if len(buf) - off < 2:
        return None
    n = (buf[off] << 8) | buf[off + 1]
    if n < 12:
        raise Malformed("dns: TCP message shorter than a DNS header")
    return n + 2


class DnsParser:
    """One flow's DNS: datagrams one message each (UDP, ``seq`` 0 by the feed contract), or a
    TCP stream of 2-byte length-prefixed messages, several per segment or one across segments."""

    protocol = DNS
    name = "DNS"
    timeout_s = 15.0

    __slots__ = ("config", "framers", "tcp")

    def __init__(self, config: L7Config) -> None:
        self.config = config
        self.tcp: bool | None = None
        self.framers: tuple[Framer, Framer] | None = None

    def feed(self, payload: bytes, length: int, from_client: bool, ts: int, seq: int) -> list[L7Message] | GiveUp:
        try:
            if self.tcp is None:
                self.tcp = seq != 0
                if self.tcp:
                    keep = min(self.config.max_buffer, 65537)
                    self.framers = (Framer(_tcp_len, keep), Framer(_tcp_len, keep))
            if not self.tcp:
                return [decode(payload, max(length, len(payload)), ts, 0, self.config)]
            framer = self.framers[from_client]
            if framer.lost and (skipped := resync(framer, _check_message(payload, 2, from_client), "dns")) is not None:
                return skipped
            frames = framer.feed(payload, length, ts, seq)
            return [decode(f[0][2:], f[1] - 2, f[2], f[3], self.config, framing=2) for f in frames]
        except Malformed as e:
            return give_up(e, "dns")
        except Exception as e:                              # a bug, not the traffic: still never raise
            return GiveUp(f"dns: internal error {type(e).__name__}")


def _check_message(p: bytes, off: int, from_client: bool) -> bool:
    if len(p) - off < 17:
        return False
    _txid, flags, qd, an, ns, ar = HEADER.unpack_from(p, off)
    if bool(flags & 0x8000) == from_client or qd != 1:
        return False
    opcode = (flags >> 11) & 0xF
    if opcode not in OPCODES:
        return False
    if from_client and ((flags & 0xF) or (opcode == 0 and an) or ns > 1 or ar > 2):
        return False
    try:
        _, pos = read_name(p[off:], 12)
    except (Cut, Malformed):
        return False
    if off + pos + 4 > len(p):
        return False
    return (struct.unpack_from("!H", p, off + pos + 2)[0] & 0x7FFF) in QCLASSES


def check(payload: bytes, from_client: bool) -> bool:
    """A query (from the client) or an answer (from the server) with one well-formed question,
    bare (UDP) or after a TCP length prefix."""
    if _check_message(payload, 0, from_client):
        return True
    return len(payload) >= 19 and ((payload[0] << 8) | payload[1]) >= 17 and _check_message(payload, 2, from_client)


SPEC = Spec(DNS, "DNS", frozenset({53, 5353}), frozenset({6, 17}), check, DnsParser)
