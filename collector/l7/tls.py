"""TLS handshakes over TCP (datamodel §2, protocol 121): the plaintext part of a connection.

The ClientHello is the request: ``request_domain`` = ``request_resource`` = SNI, ``version`` the
highest version offered (supported_versions for TLS 1.3), attributes the number of cipher suites
and the ALPN list. The ServerHello is the response: ``version`` the negotiated version, attributes
the cipher suite and ALPN chosen. They pair in order, so the session's duration is the handshake
latency. A HelloRetryRequest answers the first ClientHello; the second pairs with the ServerHello.

After the ServerHello the connection is encrypted, and the last message carries ``ends_flow``:
* TLS 1.3: the ServerHello itself (the rest, alerts included, is encrypted).
* TLS 1.2 and older: the ServerHello is held until the client's next record, because the
  client's verdict on the certificate comes in plaintext: an Alert (e.g. unknown_ca) makes the
  held ServerHello an error response; anything else (key exchange, ChangeCipherSpec) releases it
  as OK. The server's leaf certificate name and expiry are added to it from the Certificate
  message. A client that closes without sending a record leaves the ClientHello to time out.

An Alert (fatal, or close_notify / user_canceled) ends the handshake with an error response:
``response_code`` = alert description, ``response_exception`` its name. An alert blames the peer
of its sender (a server's protocol_version or handshake_failure: client error; a client's
unknown_ca or bad_certificate: server error), except those reporting the sender's own failure
(close_notify, internal_error, user_canceled). Warning alerts otherwise do not end the handshake.
"""

from __future__ import annotations

from datetime import datetime

from collector.l7.base import (
    CLIENT_ERROR,
    MASK32,
    REQUEST,
    RESPONSE,
    SERVER_ERROR,
    TLS,
    GiveUp,
    L7Config,
    L7Message,
    Spec,
)
from collector.l7.stream import Cut, Framer, Malformed, Reader, give_up, resync

CHANGE_CIPHER_SPEC, ALERT, HANDSHAKE, APPLICATION_DATA, HEARTBEAT = 20, 21, 22, 23, 24
CLIENT_HELLO, SERVER_HELLO, CERTIFICATE = 1, 2, 11
HANDSHAKE_TYPES = frozenset({0, 1, 2, 3, 4, 5, 6, 8, 11, 12, 13, 14, 15, 16, 20, 21, 22, 23, 24, 25, 254})
MAX_RECORD = (1 << 14) + 2048                       # RFC 5246 §6.2.3: ciphertext at most 2^14 + 2048
EXT_SERVER_NAME, EXT_ALPN, EXT_SUPPORTED_VERSIONS = 0, 16, 43
# RFC 8446 §4.1.3: a ServerHello with this random is a HelloRetryRequest
HRR_RANDOM = bytes.fromhex("cf21ad74e59a6111be1d8c021e65b891c2a211167abb8c5e079e09e2c8a8339c")

VERSIONS = {0x0300: "SSL 3.0", 0x0301: "TLS 1.0", 0x0302: "TLS 1.1", 0x0303: "TLS 1.2", 0x0304: "TLS 1.3"}
ALERTS = {
    0: "close_notify", 10: "unexpected_message", 20: "bad_record_mac", 21: "decryption_failed",
    22: "record_overflow", 30: "decompression_failure", 40: "handshake_failure", 41: "no_certificate",
    42: "bad_certificate", 43: "unsupported_certificate", 44: "certificate_revoked", 45: "certificate_expired",
    46: "certificate_unknown", 47: "illegal_parameter", 48: "unknown_ca", 49: "access_denied",
    50: "decode_error", 51: "decrypt_error", 60: "export_restriction", 70: "protocol_version",
    71: "insufficient_security", 80: "internal_error", 86: "inappropriate_fallback", 90: "user_canceled",
    100: "no_renegotiation", 109: "missing_extension", 110: "unsupported_extension",
    111: "certificate_unobtainable", 112: "unrecognized_name", 113: "bad_certificate_status_response",
    114: "bad_certificate_hash_value", 115: "unknown_psk_identity", 116: "certificate_required",
    120: "no_application_protocol",
}
SENDER_FAULT_ALERTS = frozenset({0, 80, 90})        # the sender gives up, rather than blaming its peer
ENDING_WARNINGS = frozenset({0, 90})                # warning-level alerts that still end the handshake
CIPHER_SUITES = {
    0x1301: "TLS_AES_128_GCM_SHA256", 0x1302: "TLS_AES_256_GCM_SHA384", 0x1303: "TLS_CHACHA20_POLY1305_SHA256",
    0x1304: "TLS_AES_128_CCM_SHA256", 0x1305: "TLS_AES_128_CCM_8_SHA256",
    0xC02B: "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256", 0xC02C: "TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384",
    0xC02F: "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256", 0xC030: "TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384",
    0xCCA8: "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256", 0xCCA9: "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256",
    0xCCAA: "TLS_DHE_RSA_WITH_CHACHA20_POLY1305_SHA256",
    0xC009: "TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA", 0xC00A: "TLS_ECDHE_ECDSA_WITH_AES_256_CBC_SHA",
    0xC013: "TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA", 0xC014: "TLS_ECDHE_RSA_WITH_AES_256_CBC_SHA",
    0xC023: "TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA256", 0xC024: "TLS_ECDHE_ECDSA_WITH_AES_256_CBC_SHA384",
    0xC027: "TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA256", 0xC028: "TLS_ECDHE_RSA_WITH_AES_256_CBC_SHA384",
    0x009C: "TLS_RSA_WITH_AES_128_GCM_SHA256", 0x009D: "TLS_RSA_WITH_AES_256_GCM_SHA384",
    0x009E: "TLS_DHE_RSA_WITH_AES_128_GCM_SHA256", 0x009F: "TLS_DHE_RSA_WITH_AES_256_GCM_SHA384",
    0x002F: "TLS_RSA_WITH_AES_128_CBC_SHA", 0x0035: "TLS_RSA_WITH_AES_256_CBC_SHA",
    0x003C: "TLS_RSA_WITH_AES_128_CBC_SHA256", 0x003D: "TLS_RSA_WITH_AES_256_CBC_SHA256",
    0x000A: "TLS_RSA_WITH_3DES_EDE_CBC_SHA",
}
_CN_OID = b"\x55\x04\x03"
_DER_STRINGS = frozenset({0x0C, 0x13, 0x14, 0x16, 0x1E})


def version_name(v: int) -> str:
    return VERSIONS.get(v) or f"0x{v:04x}"


def is_grease(v: int) -> bool:
    """RFC 8701 reserved values (0x0A0A, 0x1A1A, …) that clients sprinkle into lists."""
    return v & 0x0F0F == 0x0A0A and v >> 8 == v & 0xFF


def record_len(buf: bytes | bytearray, off: int) -> int | None:
    if len(buf) - off < 5:
        return None
    if buf[off] not in (CHANGE_CIPHER_SPEC, ALERT, HANDSHAKE, APPLICATION_DATA, HEARTBEAT):
        raise Malformed("tls: unknown record content type")
    if buf[off + 1] != 3 or buf[off + 2] > 4:
        raise Malformed("tls: unknown record version")
    n = (buf[off + 3] << 8) | buf[off + 4]
    if n > MAX_RECORD:
        raise Malformed("tls: record longer than 2^14+2048")
    return 5 + n


def _starts_record(payload: bytes) -> bool:
    try:
        return record_len(payload, 0) is not None
    except Malformed:
        return False


def handshake_len(buf: bytes | bytearray, off: int) -> int | None:
    if len(buf) - off < 4:
        return None
    if buf[off] not in HANDSHAKE_TYPES:
        raise Malformed("tls: unknown handshake message type")
    return 4 + ((buf[off + 1] << 16) | (buf[off + 2] << 8) | buf[off + 3])


def _text(b: bytes) -> str:
    return b.decode("utf-8", "backslashreplace")


def _client_hello(r: Reader, m: L7Message) -> None:
    """Fills the request from a ClientHello body; stops quietly where the capture ends."""
    attrs: dict[str, str] = {}
    m.attributes = attrs
    try:
        m.version = version_name(r.u16())
        r.skip(32)
        sid = r.u8()
        if sid > 32:
            raise Malformed("tls: session id longer than 32 bytes")
        r.skip(sid)
        n = r.u16()
        if n == 0 or n & 1:
            raise Malformed("tls: bad cipher suite list length")
        suites = r.take(n)
        attrs["cipher_suites"] = str(sum(1 for i in range(0, n, 2)
                                         if not is_grease((suites[i] << 8) | suites[i + 1])))
        r.skip(r.u8())                                        # compression methods
        if r.remaining() == 0:
            return
        exts = r.sub(r.u16(), "tls: ClientHello extensions")
        while exts.remaining() > 0:
            etype = exts.u16()
            e = exts.sub(exts.u16(), "tls: ClientHello extension")
            if etype == EXT_SERVER_NAME:
                names = e.sub(e.u16())
                while names.remaining() > 0:
                    kind = names.u8()
                    name = names.take(names.u16())
                    if kind == 0:                             # host_name
                        m.request_domain = m.request_resource = _text(name)
                        break
            elif etype == EXT_ALPN:
                protos = e.sub(e.u16())
                offered = []
                while protos.remaining() > 0:
                    offered.append(_text(protos.take(protos.u8())))
                attrs["alpn"] = ",".join(offered)
            elif etype == EXT_SUPPORTED_VERSIONS:
                lst = e.sub(e.u8())
                best = 0
                while lst.remaining() > 0:
                    v = lst.u16()
                    if not is_grease(v) and v > best:
                        best = v
                if best:
                    m.version = version_name(best)
    except Cut:
        pass


def _server_hello(r: Reader, m: L7Message) -> tuple[bool, int]:
    """Fills the response from a ServerHello body: (is a HelloRetryRequest, negotiated version)."""
    attrs: dict[str, str] = {}
    m.attributes = attrs
    hrr = False
    version = 0
    try:
        version = r.u16()
        hrr = r.take(32) == HRR_RANDOM
        sid = r.u8()
        if sid > 32:
            raise Malformed("tls: session id longer than 32 bytes")
        r.skip(sid)
        suite = r.u16()
        attrs["cipher_suite"] = CIPHER_SUITES.get(suite) or f"0x{suite:04X}"
        r.u8()                                                # compression method
        if r.remaining() > 0:
            exts = r.sub(r.u16(), "tls: ServerHello extensions")
            while exts.remaining() > 0:
                etype = exts.u16()
                e = exts.sub(exts.u16(), "tls: ServerHello extension")
                if etype == EXT_SUPPORTED_VERSIONS:
                    version = e.u16()
                elif etype == EXT_ALPN:
                    protos = e.sub(e.u16())
                    attrs["alpn"] = _text(protos.take(protos.u8()))
    except Cut:
        pass
    if version:
        m.version = version_name(version)
    return hrr, version


def _der(buf: bytes, pos: int, end: int) -> tuple[int, int, int]:
    """(tag, content start, content end) of the DER element at pos."""
    if pos + 2 > end:
        raise ValueError("short")
    tag, n = buf[pos], buf[pos + 1]
    pos += 2
    if n & 0x80:
        k = n & 0x7F
        if not 0 < k <= 4 or pos + k > end:
            raise ValueError("length")
        n = int.from_bytes(buf[pos:pos + k], "big")
        pos += k
    if pos + n > end:
        raise ValueError("long")
    return tag, pos, pos + n


def _der_time(tag: int, raw: bytes) -> str:
    s = raw.decode("ascii")
    fmt = "%y%m%d%H%M%SZ" if tag == 0x17 else "%Y%m%d%H%M%SZ"
    return datetime.strptime(s, fmt).strftime("%Y-%m-%dT%H:%M:%SZ")


def certificate_info(cert: bytes) -> dict[str, str]:
    """Subject CN and notAfter of a DER X.509 certificate (RFC 5280 §4.1); {} if unreadable."""
    try:
        _, p, end = _der(cert, 0, len(cert))                  # Certificate
        _, p, end = _der(cert, p, end)                        # TBSCertificate
        tag, s, e = _der(cert, p, end)
        if tag == 0xA0:                                       # [0] version
            p = e
        fields = []
        for _ in range(5):                                    # serial, signature, issuer, validity, subject
            tag, s, e = _der(cert, p, end)
            fields.append((s, e))
            p = e
        info: dict[str, str] = {}
        vs, ve = fields[3]
        _, _, e1 = _der(cert, vs, ve)
        tag, s, e = _der(cert, e1, ve)                        # notAfter
        info["cert_not_after"] = _der_time(tag, cert[s:e])
        p, end = fields[4]
        while p < end:                                        # RDNs: SET { SEQUENCE { OID, value } }
            _, s, e = _der(cert, p, end)
            p = e
            _, s2, e2 = _der(cert, s, e)
            tag, os_, oe = _der(cert, s2, e2)
            if tag == 6 and cert[os_:oe] == _CN_OID:
                tag, vs_, ve_ = _der(cert, oe, e2)
                if tag in _DER_STRINGS:
                    raw = cert[vs_:ve_]
                    info["cert_cn"] = raw.decode("utf-16-be" if tag == 0x1E else "utf-8", "backslashreplace")
        return info
    except (ValueError, IndexError, UnicodeDecodeError):
        return {}


class TlsParser:
    """One TLS connection up to the end of its handshake."""

    protocol = TLS
    name = "TLS"
    timeout_s = 15.0

    __slots__ = ("config", "done", "encrypted", "held", "hs", "hs_lost", "records", "version")

    def __init__(self, config: L7Config) -> None:
        self.config = config
        keep = config.max_buffer
        self.records = (Framer(record_len, keep), Framer(record_len, keep))      # [server, client]
        # handshake messages run across record bodies, which are not contiguous in TCP sequence
        self.hs = (Framer(handshake_len, keep, track_seq=False), Framer(handshake_len, keep, track_seq=False))
        self.encrypted = [False, False]      # a side's records are ciphertext from here on
        self.hs_lost = [False, False]        # a side's handshake framing fell in uncaptured bytes
        self.version = 0                     # negotiated, from the ServerHello
        self.held: L7Message | None = None   # a TLS ≤ 1.2 ServerHello awaiting the client's verdict
        self.done = False                    # ends_flow was given: the rest is ciphertext

    def feed(self, payload: bytes, length: int, from_client: bool, ts: int, seq: int) -> list[L7Message] | GiveUp:
        if self.done:
            return []
        try:
            framer = self.records[from_client]
            if framer.lost and (skipped := resync(framer, _starts_record(payload), "tls")) is not None:
                return skipped
            frames = framer.feed(payload, length, ts, seq)
            out: list[L7Message] = []
            for data, total, rts, rseq in frames:
                if self._record(data, total, from_client, rts, rseq, out):
                    self.done = True
                    break
            return out
        except Malformed as e:
            return give_up(e, "tls")
        except Exception as e:                              # a bug, not the traffic: still never raise
            return GiveUp(f"tls: internal error {type(e).__name__}")

    def _record(self, data: bytes, total: int, from_client: bool, ts: int, seq: int,
                out: list[L7Message]) -> bool:
        """One record; True once a message with ``ends_flow`` is out."""
        ctype = data[0]
        side = int(from_client)
        plain = not self.encrypted[side]
        if from_client and self.held is not None:           # the client's verdict on the server's hello
            m = self.held
            self.held = None
            if ctype == ALERT and plain and len(data) >= 7 and (data[5] != 1 or data[6] in ENDING_WARNINGS):
                self._alert(m, data[6], from_client)
            m.ends_flow = True
            out.append(m)
            return True
        if ctype == HANDSHAKE and plain and not self.hs_lost[side]:
            hs = self.hs[side]
            for hdata, htotal, hts, hseq in hs.feed(data[5:], total - 5, ts, (seq + 5) & MASK32):
                if self._handshake(hdata, htotal, from_client, hts, hseq, out):
                    return True
            # records still frame the stream: only this side's handshake messages are lost
            self.hs_lost[side] = hs.lost
        elif ctype == ALERT and plain and len(data) >= 7:
            if data[5] == 1 and data[6] not in ENDING_WARNINGS:
                return False                                # a warning: the handshake goes on
            m = self.held
            self.held = None
            if m is None:
                m = L7Message(RESPONSE, ts, seq, l7_protocol=TLS, is_tls=1, request_type="Alert",
                              length=total, captured=len(data))
                if self.version:
                    m.version = version_name(self.version)
            self._alert(m, data[6], from_client)
            m.ends_flow = True
            out.append(m)
            return True
        elif ctype == CHANGE_CIPHER_SPEC:
            # TLS 1.3 sends a dummy one for middleboxes (RFC 8446 §D.4), also before a second ClientHello
            if self.version and self.version < 0x0304:
                self.encrypted[side] = True
        elif ctype == APPLICATION_DATA:
            self.encrypted[side] = True
        return False

    def _handshake(self, data: bytes, total: int, from_client: bool, ts: int, seq: int,
                   out: list[L7Message]) -> bool:
        htype = data[0]
        if htype == CLIENT_HELLO:
            m = L7Message(REQUEST, ts, seq, l7_protocol=TLS, is_tls=1, request_type="ClientHello", length=total,
                          captured=len(data))
            _client_hello(Reader(data, 4, total, "tls: ClientHello"), m)
            out.append(m)
        elif htype == SERVER_HELLO:
            m = L7Message(RESPONSE, ts, seq, l7_protocol=TLS, is_tls=1, request_type="ServerHello", length=total,
                          captured=len(data))
            hrr, version = _server_hello(Reader(data, 4, total, "tls: ServerHello"), m)
            self.version = version
            if hrr:
                m.request_type = "HelloRetryRequest"
                out.append(m)
            elif version >= 0x0304:
                m.ends_flow = True
                out.append(m)
                return True
            else:
                self.held = m
        elif htype == CERTIFICATE and not from_client and self.held is not None and self.version < 0x0304:
            try:
                r = Reader(data, 4, total, "tls: Certificate")
                r.u24()
                cert = r.take(r.u24())
            except Cut:
                return False
            info = certificate_info(cert)
            if info:
                self.held.attributes = {**(self.held.attributes or {}), **info}
        return False

    @staticmethod
    def _alert(m: L7Message, desc: int, from_client: bool) -> None:
        blames_client = from_client == (desc in SENDER_FAULT_ALERTS)
        m.response_status = CLIENT_ERROR if blames_client else SERVER_ERROR
        m.response_code = desc
        m.response_exception = ALERTS.get(desc, f"alert {desc}")
        m.attributes = {**(m.attributes or {}), "alert_sender": "client" if from_client else "server"}


def check(payload: bytes, from_client: bool) -> bool:
    """A handshake record starting a ClientHello (from the client) or a ServerHello (from the
    server), record and hello versions SSL 3.0–TLS 1.3."""
    if len(payload) < 11 or payload[0] != HANDSHAKE or payload[1] != 3 or payload[2] > 4:
        return False
    n = (payload[3] << 8) | payload[4]
    if n < 4 or n > MAX_RECORD or payload[5] != (CLIENT_HELLO if from_client else SERVER_HELLO):
        return False
    hlen = (payload[6] << 16) | (payload[7] << 8) | payload[8]
    return hlen >= 38 and payload[9] == 3 and payload[10] <= 4


SPEC = Spec(TLS, "TLS", frozenset({443, 465, 636, 853, 993, 995, 4443, 6443, 8443, 8883}), frozenset({6}), check,
            TlsParser)
