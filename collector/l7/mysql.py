"""MySQL / MariaDB client-server protocol (l7_protocol 60): LOGIN, commands and their responses.

Each direction is a stream of packets (3-byte length, sequence id, payload; a 0xFFFFFF-long packet
is continued by the next one). The parser frames packets across segments keeping only a bounded
prefix of each, and runs the response state machine the pending command calls for (OK / ERR /
result set / PREPARE_OK / auth exchange). The protocol is half-duplex, which gives a resync rule:
when a capture hole swallows a packet header, that side's bytes are skipped until the other side
speaks, and its next segment starts a packet again.

Decisions where the protocol or DeepFlow leave a choice (datamodel §2, §5.7):

- ``version`` is the protocol version from the greeting ("10"), as DeepFlow reports it; the server
  version string (MariaDB's "5.5.5-" replication prefix removed) is in the LOGIN request's
  attributes, with the user and database.
- COM_QUIT and COM_STMT_CLOSE get no answer: they are SESSION messages (status OK), as in DeepFlow.
  COM_STMT_SEND_LONG_DATA (no answer, bulk parameter data) produces no message.
- response_status of an ERR: CLIENT_ERROR when the request itself is at fault — SQLSTATE classes 21
  (cardinality), 22 (data), 23 (integrity), 28 (authorization), 3D (no database), 42 (syntax /
  access: 1064, 1146, 1049, 1044 …), plus the codes in ``CLIENT_ERROR_CODES`` and the 2000-2999 client
  library range; SERVER_ERROR otherwise (HY000 general, 08 connection, 40001 deadlock …).
  DeepFlow calls every 1xxx error a server error; we follow the SQLSTATE instead.
- One response per request, complete at its final packet. A multi-statement COM_QUERY answered by
  several results (SERVER_MORE_RESULTS_EXISTS) gives one response: ``sql_affected_rows`` is the sum
  over its OK results, ``response_result`` "N rows" the sum over its result sets,
  ``attributes["results"]`` the number of results; an ERR (it ends the batch) makes the response
  that error. Successful responses have ``response_code`` 0.
- ``endpoint`` is "VERB table": the first keyword and the first table after FROM / INTO / TABLE /
  UPDATE / JOIN (``sql_endpoint``). COM_STMT_EXECUTE reports the prepared SQL and its endpoint when
  the PREPARE was seen, ``request_id`` = statement id.
- A truncated response (a hole lost the packet framing) is reported at that point with status OK
  when its kind was seen (DeepFlow does the same), PARSE_FAILED when nothing of it was captured.
- SSL request → ``GiveUp("mysql: TLS")``; a negotiated compressed protocol and binlog streams give
  up too (named reasons).
"""

from __future__ import annotations

import re
from collections import deque
from typing import ClassVar

from collector.l7.base import (
    CLIENT_ERROR,
    MASK32,
    MYSQL,
    OK,
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
from collector.l7.common import captured_text, clip

MAX_PACKET = 0xFFFFFF

# capability flags (MySQL protocol documentation, "Capabilities Flags")
CLIENT_CONNECT_WITH_DB = 0x8
CLIENT_COMPRESS = 0x20
CLIENT_PROTOCOL_41 = 0x200
CLIENT_SSL = 0x800
CLIENT_SECURE_CONNECTION = 0x8000
CLIENT_MULTI_STATEMENTS = 1 << 16
CLIENT_PLUGIN_AUTH = 1 << 19
CLIENT_PLUGIN_AUTH_LENENC = 1 << 21
CLIENT_DEPRECATE_EOF = 1 << 24
SERVER_MORE_RESULTS_EXISTS = 0x0008

# how the server answers a command
GENERIC, STRING, FIELDS, PREPARE, ROWS, AUTH, STREAM, NONE, SILENT = range(9)

COMMANDS: dict[int, tuple[str, int]] = {
    0x00: ("COM_SLEEP", GENERIC), 0x01: ("COM_QUIT", NONE), 0x02: ("COM_INIT_DB", GENERIC),
    0x03: ("COM_QUERY", GENERIC), 0x04: ("COM_FIELD_LIST", FIELDS), 0x05: ("COM_CREATE_DB", GENERIC),
    0x06: ("COM_DROP_DB", GENERIC), 0x07: ("COM_REFRESH", GENERIC), 0x08: ("COM_SHUTDOWN", GENERIC),
    0x09: ("COM_STATISTICS", STRING), 0x0A: ("COM_PROCESS_INFO", GENERIC), 0x0B: ("COM_CONNECT", GENERIC),
    0x0C: ("COM_PROCESS_KILL", GENERIC), 0x0D: ("COM_DEBUG", GENERIC), 0x0E: ("COM_PING", GENERIC),
    0x0F: ("COM_TIME", GENERIC), 0x10: ("COM_DELAYED_INSERT", GENERIC), 0x11: ("COM_CHANGE_USER", AUTH),
    0x12: ("COM_BINLOG_DUMP", STREAM), 0x13: ("COM_TABLE_DUMP", GENERIC), 0x14: ("COM_CONNECT_OUT", GENERIC),
    0x15: ("COM_REGISTER_SLAVE", GENERIC), 0x16: ("COM_STMT_PREPARE", PREPARE),
    0x17: ("COM_STMT_EXECUTE", GENERIC), 0x18: ("COM_STMT_SEND_LONG_DATA", SILENT),
    0x19: ("COM_STMT_CLOSE", NONE), 0x1A: ("COM_STMT_RESET", GENERIC), 0x1B: ("COM_SET_OPTION", GENERIC),
    0x1C: ("COM_STMT_FETCH", ROWS), 0x1D: ("COM_DAEMON", GENERIC), 0x1E: ("COM_BINLOG_DUMP_GTID", STREAM),
    0x1F: ("COM_RESET_CONNECTION", GENERIC), 0xFA: ("COM_STMT_BULK_EXECUTE", GENERIC),
}
COM_QUERY, COM_STMT_PREPARE, COM_STMT_EXECUTE, COM_STMT_CLOSE = 0x03, 0x16, 0x17, 0x19
_SQL_COMMANDS = frozenset({COM_QUERY, COM_STMT_PREPARE})
_STMT_COMMANDS = frozenset({0x17, 0x18, 0x19, 0x1A, 0x1C, 0xFA})      # carry a statement id
_ROW_COUNT_COMMANDS = frozenset({COM_QUERY, COM_STMT_EXECUTE, 0xFA})   # report sql_affected_rows

# ERR classification: SQLSTATE classes caused by the request, and codes whose SQLSTATE is the
# catch-all HY000 (or absent before protocol 4.1) although the request is at fault.
CLIENT_ERROR_SQLSTATE_CLASSES = frozenset({"21", "22", "23", "28", "3D", "42"})
CLIENT_ERROR_CODES = frozenset({
    1044, 1045, 1046, 1048, 1049, 1050, 1051, 1054, 1062, 1064, 1091, 1136, 1142, 1143, 1146, 1149, 1227,
    1264, 1292, 1364, 1366, 1406, 1451, 1452,
})

# statements the detector accepts as the first word of a COM_QUERY / COM_STMT_PREPARE
SQL_VERBS = frozenset({
    "SELECT", "INSERT", "UPDATE", "DELETE", "REPLACE", "CREATE", "DROP", "ALTER", "TRUNCATE", "RENAME",
    "SET", "SHOW", "USE", "BEGIN", "START", "COMMIT", "ROLLBACK", "SAVEPOINT", "RELEASE", "LOCK", "UNLOCK",
    "CALL", "EXPLAIN", "DESCRIBE", "DESC", "WITH", "GRANT", "REVOKE", "PREPARE", "EXECUTE", "DEALLOCATE",
    "DO", "HANDLER", "LOAD", "ANALYZE", "OPTIMIZE", "CHECK", "REPAIR", "FLUSH", "KILL", "XA", "VALUES",
    "TABLE", "CHECKSUM", "INSTALL", "UNINSTALL", "PURGE", "RESET", "CHANGE", "HELP", "SIGNAL", "RESIGNAL"
})

# possessive "*+": a failed match must not backtrack through the ways to split spaces and comments
_SQL_HEAD = re.compile(r"(?:\s+|/\*.*?\*/|--[^\n]*(?:\n|$)|#[^\n]*(?:\n|$)|\()*+([A-Za-z_]+)", re.S)
_SQL_TABLE = re.compile(
    r"\b(?:FROM|INTO|TABLE|UPDATE|JOIN)\s+(?:IF\s+(?:NOT\s+)?EXISTS\s+)?"
    r"(?:(?:LOW_PRIORITY|IGNORE|ONLY|TABLE)\s+)*([`\"\w$.]+)", re.I)
_ENDPOINT_SCAN = 512       # SQL characters searched for the table


def sql_endpoint(sql: str) -> str:
    """"VERB table" of a statement, e.g. "SELECT orders"; just the verb when no table follows
    FROM / INTO / TABLE / UPDATE / JOIN; "" when the text does not start with a word.

    >>> sql_endpoint("/* app */ select * from `shop`.`orders` where id=1")
    'SELECT shop.orders'
    >>> sql_endpoint("CREATE TABLE IF NOT EXISTS orders(id INT)")
    'CREATE orders'
    """
    m = _SQL_HEAD.match(sql, 0, _ENDPOINT_SCAN)
    if m is None:
        return ""
    verb = m.group(1).upper()[:32]
    t = _SQL_TABLE.search(sql, m.start(1), _ENDPOINT_SCAN)
    if t is None:
        return verb
    table = t.group(1).replace("`", "").replace('"', "").strip(".")[:64]
    return f"{verb} {table}" if table else verb


def error_status(code: int, sqlstate: str) -> int:
    """CLIENT_ERROR for errors caused by the request (see the module docstring), else SERVER_ERROR."""
    if sqlstate[:2] in CLIENT_ERROR_SQLSTATE_CLASSES or code in CLIENT_ERROR_CODES or 2000 <= code <= 2999:
        return CLIENT_ERROR
    return SERVER_ERROR


def _lenenc(b: bytes, i: int) -> tuple[int, int]:
    """(value, next offset) of a length-encoded integer at b[i]; (-1, i) when it is not all there."""
    n = len(b)
    if i >= n:
        return -1, i
    c = b[i]
    if c < 0xFB:
        return c, i + 1
    width = {0xFC: 2, 0xFD: 3, 0xFE: 8}.get(c)
    if width is None or i + 1 + width > n:
        return -1, i
    return int.from_bytes(b[i + 1:i + 1 + width], "little"), i + 1 + width


def _cstr(b: bytes, i: int, limit: int = 256) -> tuple[str, int]:
    """NUL-terminated string at b[i] (at most ``limit`` bytes kept) and the offset after the NUL
    (len(b) + 1 when the NUL is missing: the rest was not captured)."""
    e = b.find(b"\0", i)
    if e < 0:
        return b[i:i + limit].decode("utf-8", "replace"), len(b) + 1
    return b[i:min(e, i + limit)].decode("utf-8", "replace"), e + 1


def check(payload: bytes, from_client: bool) -> bool:
    """The server's initial handshake (protocol 10, a version string), a client handshake response
    (protocol 4.1, zero filler) or a command packet with a plausible body."""
    n = len(payload)
    if n < 5:
        return False
    plen = payload[0] | payload[1] << 8 | payload[2] << 16
    sid = payload[3]
    if plen == 0 or plen + 4 < n:
        return False
    body = payload[4:]
    if not from_client:
        if sid != 0 or body[0] != 10 or plen < 32 or plen > 1024:
            return False
        e = body.find(b"\0", 1, 80)
        if e < 2 or len(body) < e + 16:
            return False
        version = body[1:e]
        return 0x30 <= version[0] <= 0x39 and all(0x20 < c < 0x7F for c in version)
    if sid == 1:   # handshake response 4.1: capabilities, max packet, charset, 23 filler bytes, user
        # (MariaDB puts its extended capabilities in the filler's last 4 bytes)
        return (plen >= 32 and len(body) >= 33 and bool(body[1] & (CLIENT_PROTOCOL_41 >> 8))
                and body[9:28] == b"\0" * 19)
    if sid != 0:
        return False
    cmd = body[0]
    if cmd in _SQL_COMMANDS:
        m = _SQL_HEAD.match(body[1:257].decode("ascii", "replace"))
        return m is not None and m.group(1).upper() in SQL_VERBS
    if cmd in (0x01, 0x0E, 0x09):      # COM_QUIT, COM_PING, COM_STATISTICS: just the command byte
        return plen == 1
    if cmd == 0x02:                    # COM_INIT_DB: a schema name
        return 1 < plen <= 65 and all(0x20 < c < 0x7F for c in body[1:])
    if cmd == COM_STMT_EXECUTE:        # statement id, cursor flags, iteration count 1
        return plen >= 10 and body[5] in (0, 1, 2, 4) and body[6:10] == b"\x01\0\0\0"
    if cmd == COM_STMT_CLOSE:
        return plen == 5
    return False


class _Side:
    """Packet framing state of one direction."""

    __slots__ = ("abs", "buf", "cap", "captured", "cont", "hdr", "hdr_abs", "hdr_seq", "hdr_ts", "need", "sid",
                 "skip", "start_abs", "start_seq", "start_ts", "total", "wire")

    def __init__(self, cap: int) -> None:
        self.cap = cap                 # body bytes kept per message
        self.hdr = b""                 # a header cut by the segment end
        self.hdr_ts = self.hdr_seq = self.hdr_abs = 0
        self.abs = 0                   # stream offset of the next segment (holes included)
        self.need = 0                  # body bytes of the current packet still to come
        self.cont = False              # the current packet is 0xFFFFFF long: the message continues
        self.buf = bytearray()
        self.sid = self.total = self.wire = self.captured = self.start_ts = self.start_seq = self.start_abs = 0
        self.skip = False              # framing lost: ignore bytes until the other side speaks

    def reset(self) -> None:
        self.hdr = b""
        self.need = 0
        self.cont = False
        self.buf = bytearray()

    def started(self) -> bool:
        return self.need > 0 or self.cont

    def finish(self) -> tuple:
        """The current message as a packet tuple (see ``frame``)."""
        body = bytes(self.buf)
        self.buf = bytearray()
        self.cont = False
        return self.sid, self.total, body, self.start_ts, self.start_seq, self.wire, self.captured, self.start_abs


def frame(side: _Side, data: bytes, hole: int, ts: int, seq: int) -> tuple[list[tuple], bool]:
    """Messages completed by one segment of a direction, as tuples (sequence id, payload length,
    kept payload prefix, ts, tcp seq, wire length, captured bytes, stream offset), and whether the
    uncaptured ``hole`` at its end swallowed a packet header (framing lost)."""
    out: list[tuple] = []
    seg_abs = side.abs
    side.abs += len(data) + max(hole, 0)
    n = len(data)
    pos = 0
    cap = side.cap
    while pos < n:
        if side.need:
            take = side.need if side.need < n - pos else n - pos
            room = cap - len(side.buf)
            if room > 0:
                side.buf += data[pos:pos + (take if take < room else room)]
            side.captured += take
            side.need -= take
            pos += take
            if side.need:
                break
            if not side.cont:
                out.append(side.finish())
            continue
        if side.hdr or n - pos < 4:
            if not side.hdr:
                side.hdr_ts, side.hdr_seq, side.hdr_abs = ts, (seq + pos) & MASK32, seg_abs + pos
            want = 4 - len(side.hdr)
            side.hdr += data[pos:pos + want]
            pos += want if want < n - pos else n - pos
            if len(side.hdr) < 4:
                break
            h = side.hdr
            side.hdr = b""
            plen, sid, mts, mseq, mabs = h[0] | h[1] << 8 | h[2] << 16, h[3], side.hdr_ts, side.hdr_seq, side.hdr_abs
        else:
            plen = data[pos] | data[pos + 1] << 8 | data[pos + 2] << 16
            sid = data[pos + 3]
            if not side.cont and plen < MAX_PACKET and pos + 4 + plen <= n:      # whole packet here
                end = pos + 4 + plen
                out.append((sid, plen, data[pos + 4:end if plen <= cap else pos + 4 + cap], ts,
                            (seq + pos) & MASK32, plen + 4, plen + 4, seg_abs + pos))
                pos = end
                continue
            mts, mseq, mabs = ts, (seq + pos) & MASK32, seg_abs + pos
            pos += 4
        if side.cont:                  # a continuation packet of a long message
            side.total += plen
            side.wire += plen + 4
            side.captured += 4
        else:
            side.sid, side.total, side.wire, side.captured = sid, plen, plen + 4, 4
            side.start_ts, side.start_seq, side.start_abs = mts, mseq, mabs
        side.need = plen
        side.cont = plen == MAX_PACKET
        if plen == 0 and not side.cont:
            out.append(side.finish())
    if hole <= 0:
        return out, False
    if side.hdr:
        return out, True
    if side.need:
        if hole < side.need:
            side.need -= hole
            return out, False
        hole -= side.need
        side.need = 0
        if not side.cont:
            out.append(side.finish())
    return out, hole > 0


class _Response:
    """The response being assembled for the oldest pending command."""

    __slots__ = ("abs", "affected", "attrs", "captured", "code", "cols", "exception", "kind", "left", "length",
                 "ok_seen", "result", "results", "rows", "seen_rows", "seq", "state", "status", "stmt_id", "ts")

    def __init__(self, kind: int) -> None:
        self.kind = kind
        self.state = R_FIRST
        self.ts = self.seq = self.length = self.captured = self.abs = 0
        self.code: int | None = 0
        self.status = OK
        self.result = ""
        self.exception = ""
        self.affected = 0
        self.ok_seen = False
        self.rows = 0
        self.seen_rows = False
        self.results = 0
        self.left = 0              # definitions still to come in this state
        self.cols = 0              # PREPARE_OK: column definitions after the parameters
        self.stmt_id = None
        self.attrs: dict[str, str] | None = None


# response states
R_FIRST, R_COLDEFS, R_COLEOF, R_ROWS, R_PDEFS, R_PEOF, R_CDEFS, R_CEOF, R_AUTH, R_STRING, R_DONE = range(11)


class MySQLParser:
    """One MySQL connection: requests from the client's commands, one response per command."""

    protocol: ClassVar[int] = MYSQL
    name: ClassVar[str] = "MySQL"
    timeout_s: ClassVar[float] = 120.0

    MAX_PENDING = 256          # commands awaiting an answer (a client that pipelines without end)
    MAX_STATEMENTS = 1024      # prepared statements remembered for COM_STMT_EXECUTE

    def __init__(self, config: L7Config) -> None:
        self.config = config
        cap = min(config.max_buffer, max(2048, 4 * config.sql_max + 64))
        self.client = _Side(cap)
        self.server = _Side(min(config.max_buffer, max(1024, 4 * config.result_max + 64)))
        self.greeted = False       # greeting seen
        self.server_version = ""
        self.version = ""
        self.server_caps: int | None = None
        self.caps: int | None = None   # effective capabilities once the handshake response is seen
        self.logged_in = False
        self.infile = False        # client is sending a LOCAL INFILE
        self.pending: deque[tuple[int, int, str, int | None]] = deque()   # (kind, command, SQL, stmt id)
        self.resp: _Response | None = None
        self.statements: dict[int, str] = {}
        self.give_up: str | None = None

    # -- feeding ---------------------------------------------------------------------------------

    def feed(self, payload: bytes, length: int, from_client: bool, ts: int, seq: int) -> list[L7Message] | GiveUp:
        if self.give_up:
            return GiveUp(self.give_up)
        try:
            out = self._feed(payload, length, from_client, ts, seq)
        except Exception as e:     # a bug must not stop the pipeline: report it as a reason
            return GiveUp(f"mysql: parser error ({type(e).__name__})")
        if self.give_up and not out:
            return GiveUp(self.give_up)
        return out

    def flush(self, ts: int) -> list[L7Message]:
        """The flow ended: a response still being read is reported as far as it came (its row
        count, being incomplete, left out — unless only an optional EOF was awaited)."""
        r = self.resp
        if r is None or self.give_up:
            return []
        if r.state not in (R_PEOF, R_CEOF):
            r.seen_rows = False
        out: list[L7Message] = []
        self._finish_response(out)
        return out

    def _feed(self, payload: bytes, length: int, from_client: bool, ts: int, seq: int) -> list[L7Message]:
        out: list[L7Message] = []
        side, other = (self.client, self.server) if from_client else (self.server, self.client)
        if length <= 0 and not payload:
            return out
        if other.skip:                     # this side spoke: the other side's next segment is framed again
            other.skip = False
            other.reset()
        if side.skip:
            return out
        if from_client and self.resp is not None and self.resp.state in (R_PEOF, R_CEOF) and self.caps is None:
            self._finish_response(out)     # an optional EOF that never came: the PREPARE answer ended
        pkts, lost = frame(side, payload, length - len(payload), ts, seq)
        handle = self._client_packet if from_client else self._server_packet
        for p in pkts:
            handle(p, out)
            if self.give_up:
                return out
        if lost:
            if from_client:
                if side.started():
                    handle(side.finish(), out)
            else:
                hole = length - len(payload)
                if self.resp is not None:   # bytes of the response past its last whole packet
                    self.resp.captured += len(side.hdr) + (side.captured if side.started() else 0)
                self._lost_response(ts, (seq + len(payload)) & MASK32, side.abs - hole, side.abs, out)
            side.reset()
            side.skip = True
        return out

    # -- client ----------------------------------------------------------------------------------

    def _client_packet(self, p: tuple, out: list[L7Message]) -> None:
        sid, plen, body, ts, tseq, wire, captured, _ = p
        if self.infile:                     # LOCAL INFILE data, ended by an empty packet
            if plen == 0:
                self.infile = False
            return
        resp = self.resp
        if resp is not None and resp.state == R_AUTH:
            return                          # auth data exchanged during LOGIN / COM_CHANGE_USER
        if sid == 1 and not self.logged_in and plen >= 4:
            self._handshake_response(p, out)
            return
        if sid != 0 or plen == 0 or not body:
            return
        cmd = body[0]
        spec = COMMANDS.get(cmd)
        if spec is None:
            self.give_up = f"mysql: unknown command 0x{cmd:02x}"
            return
        rtype, kind = spec
        if kind == SILENT:
            return
        self.logged_in = True               # commands flow: the connection phase is over
        complete = len(body) >= plen
        kw: dict = {"request_type": rtype, "length": wire, "captured": captured, "l7_protocol": MYSQL,
                    "version": self.version}
        sql = ""
        stmt_id = None
        if cmd in _SQL_COMMANDS:
            raw = body[1:]
            if raw[:2] == b"\0\x01":        # query attributes (MySQL 8.0.23+): none, one set
                raw = raw[2:]
            sql = captured_text(raw, complete, self.config.sql_max)
            kw["request_resource"] = sql
            kw["endpoint"] = sql_endpoint(sql)
        elif cmd in _STMT_COMMANDS:
            if len(body) >= 5:
                stmt_id = int.from_bytes(body[1:5], "little")
                kw["request_id"] = stmt_id
                known = self.statements.get(stmt_id)
                if known:
                    kw["request_resource"] = known
                    kw["endpoint"] = sql_endpoint(known)
            if cmd == COM_STMT_CLOSE and stmt_id is not None:
                self.statements.pop(stmt_id, None)
        elif cmd in (0x02, 0x05, 0x06):     # INIT_DB / CREATE_DB / DROP_DB: a schema name
            kw["request_resource"] = captured_text(body[1:], complete, 256)
        elif cmd == 0x04:                   # FIELD_LIST: table name
            kw["request_resource"] = _cstr(body, 1)[0]
        if kind == NONE:
            out.append(L7Message(SESSION, ts, tseq, response_status=OK, **kw))
            return
        out.append(L7Message(REQUEST, ts, tseq, **kw))
        if kind == STREAM:
            self.give_up = "mysql: binlog stream"
            return
        if len(self.pending) >= self.MAX_PENDING:
            self.pending.popleft()
        self.pending.append((kind, cmd, sql, stmt_id))

    def _handshake_response(self, p: tuple, out: list[L7Message]) -> None:
        """Client handshake response (LOGIN), or an SSL request that turns the connection to TLS."""
        _, plen, body, ts, tseq, wire, captured, _ = p
        caps = int.from_bytes(body[:2], "little")
        if caps & CLIENT_PROTOCOL_41:
            if len(body) < 4:
                return
            caps = int.from_bytes(body[:4], "little")
            if caps & CLIENT_SSL and plen == 32:
                self.give_up = "mysql: TLS"
                return
            i = 32
        else:
            if caps & CLIENT_SSL and plen == 5:
                self.give_up = "mysql: TLS"
                return
            i = 5
        self.caps = caps if self.server_caps is None else caps & self.server_caps
        if self.caps & CLIENT_COMPRESS:
            self.give_up = "mysql: compressed protocol"
        attrs: dict[str, str] = {}
        user, i = _cstr(body, i, 128)
        attrs["user"] = user
        if caps & CLIENT_PROTOCOL_41 and i < len(body):     # auth response, then the database
            if caps & CLIENT_PLUGIN_AUTH_LENENC:
                alen, i = _lenenc(body, i)
            elif caps & CLIENT_SECURE_CONNECTION:
                alen, i = body[i], i + 1
            else:
                alen = body.find(b"\0", i) - i
                i += 1
            if alen >= 0:
                i += alen
                if caps & CLIENT_CONNECT_WITH_DB and i < len(body):
                    db, i = _cstr(body, i, 128)
                    attrs["database"] = db
        if self.server_version:
            attrs["server_version"] = self.server_version
        out.append(L7Message(REQUEST, ts, tseq, request_type="LOGIN", attributes=attrs, length=wire,
                             captured=captured, l7_protocol=MYSQL, version=self.version))
        self.pending.append((AUTH, -1, "", None))

    # -- server ----------------------------------------------------------------------------------

    def _server_packet(self, p: tuple, out: list[L7Message]) -> None:
        _, plen, body, ts, tseq, wire, captured, mabs = p
        if not self.greeted and not self.logged_in and self.resp is None and not self.pending:
            self.greeted = True
            if body[:1] == b"\x0a" and self._greeting(body):
                return
            if body[:1] == b"\xff":         # refused before the handshake: "Too many connections" …
                r = _Response(GENERIC)
                r.ts, r.seq = ts, tseq
                self._err(r, body, len(body) >= plen)
                r.length, r.captured = wire, captured
                self._emit(r, out)
                return
        resp = self.resp
        if resp is None:
            if not self.pending:
                return                      # nothing asked: a reply we did not see the question of
            kind = self.pending[0][0]
            resp = self.resp = _Response(kind)
            resp.ts, resp.seq, resp.abs = ts, tseq, mabs
            if kind == AUTH:
                resp.state = R_AUTH
            elif kind == ROWS:
                resp.state = R_ROWS
                resp.seen_rows = True
            elif kind == FIELDS:
                resp.state = R_COLDEFS
                resp.left = -1              # definitions until EOF
        if not self._step(resp, plen, body, len(body) >= plen):
            self._finish_response(out)      # the packet answers the next command
            self._server_packet(p, out)
            return
        resp.length += wire
        resp.captured += captured
        if resp.state == R_DONE:
            self._finish_response(out)

    def _greeting(self, body: bytes) -> bool:
        """Protocol 10 initial handshake: server version and capabilities."""
        version, i = _cstr(body, 1, 64)
        if not version[:1].isdigit() or not version.isprintable():
            return False
        if version.startswith("5.5.5-") and "MariaDB" in version:
            version = version[6:]           # MariaDB's prefix for old replication clients
        self.server_version = version
        self.version = "10"
        i += 4 + 8 + 1                      # connection id, auth data part 1, filler
        if i + 2 <= len(body):
            caps = int.from_bytes(body[i:i + 2], "little")
            if i + 7 <= len(body):
                caps |= int.from_bytes(body[i + 5:i + 7], "little") << 16
            self.server_caps = caps
        return True

    def _step(self, r: _Response, plen: int, body: bytes, complete: bool) -> bool:
        """Advance the response state machine by one packet; False when the response had ended
        before it (an optional EOF that did not come) and the packet belongs to the next one."""
        first = body[0] if body else -1
        state = r.state
        while True:
            if state == R_ROWS:
                if first == 0xFE and plen < MAX_PACKET:          # EOF / OK: the result set ends
                    r.results += 1
                    flags = self._status_flags(body, plen)
                    r.state = R_FIRST if flags & SERVER_MORE_RESULTS_EXISTS and r.kind == GENERIC else R_DONE
                elif first == 0xFF:
                    self._err(r, body, complete)
                else:
                    r.rows += 1
                return True
            if state == R_FIRST:
                if r.kind == PREPARE:
                    if first == 0x00 and len(body) >= 9:
                        r.stmt_id = int.from_bytes(body[1:5], "little")
                        cols = body[5] | body[6] << 8
                        params = body[7] | body[8] << 8
                        r.attrs = {"columns": str(cols), "params": str(params)}
                        r.cols = cols
                        r.state = R_PDEFS if params else (R_CDEFS if cols else R_DONE)
                        r.left = params or cols
                    elif first == 0xFF:
                        self._err(r, body, complete)
                    else:
                        r.state = R_DONE
                    return True
                if first == 0x00 and plen >= 7:                  # OK
                    affected, _ = _lenenc(body, 1)
                    if affected > 0:
                        r.affected += affected
                    r.ok_seen = True
                    r.results += 1
                    flags = self._status_flags(body, plen)
                    r.state = R_FIRST if flags & SERVER_MORE_RESULTS_EXISTS else R_DONE
                elif first == 0xFF:
                    self._err(r, body, complete)
                elif first == 0xFE and plen < 9:                 # EOF (COM_SET_OPTION, COM_DEBUG)
                    r.state = R_DONE
                elif first == 0xFB:                              # LOCAL INFILE: the client sends a file
                    self.infile = True
                elif first < 0:                                  # nothing captured of it
                    r.status = PARSE_FAILED
                    r.state = R_DONE
                elif r.kind == STRING:
                    r.result = captured_text(body, complete, self.config.result_max)
                    r.state = R_DONE
                else:
                    count, _ = _lenenc(body, 0)
                    if count <= 0 or count > 4096:
                        self.give_up = "mysql: bad column count"
                        return True
                    r.seen_rows = True
                    r.left = count
                    r.state = R_COLDEFS
                return True
            if state in (R_COLDEFS, R_PDEFS, R_CDEFS):
                if first == 0xFF:
                    self._err(r, body, complete)
                    return True
                if r.left < 0:                                   # COM_FIELD_LIST: until EOF
                    if first == 0xFE:
                        r.state = R_DONE
                    return True
                if len(body) >= 4 and body[:4] != b"\x03def":
                    self.give_up = "mysql: bad column definition"
                    return True
                r.left -= 1
                if r.left == 0:
                    if state == R_COLDEFS:
                        r.state = R_COLEOF
                    elif self._eof_expected():
                        r.state = R_PEOF if state == R_PDEFS else R_CEOF
                    else:
                        self._after_defs(r, state)
                return True
            if state == R_COLEOF:                                # EOF before the rows, unless DEPRECATE_EOF
                r.state = R_ROWS
                if first == 0xFE and plen < 7:
                    return True
                state = R_ROWS                                   # a row, or the final OK
                continue
            if state in (R_PEOF, R_CEOF):
                self._after_defs(r, R_PDEFS if state == R_PEOF else R_CDEFS)
                if first == 0xFE and plen < 9:
                    return True
                if r.state == R_DONE:                            # not an EOF: it answers the next command
                    return False
                state = r.state
                continue
            if state == R_AUTH:
                if first == 0x00:
                    r.state = R_DONE
                elif first == 0xFF:
                    self._err(r, body, complete)
                elif first < 0:
                    r.status = PARSE_FAILED
                    r.state = R_DONE
                return True                                      # 0xFE auth switch, 0x01 more data: go on
            if state == R_STRING:
                if first == 0xFF:
                    self._err(r, body, complete)
                else:
                    r.result = captured_text(body, complete, self.config.result_max)
                    r.state = R_DONE
                return True
            return True

    def _after_defs(self, r: _Response, state: int) -> None:
        if state == R_PDEFS and r.cols:
            r.left = r.cols
            r.state = R_CDEFS
        else:
            r.state = R_DONE

    def _eof_expected(self) -> bool:
        return self.caps is None or not self.caps & CLIENT_DEPRECATE_EOF

    def _status_flags(self, body: bytes, plen: int) -> int:
        """Server status flags of an OK or EOF packet (0 when not captured)."""
        if plen < 7:                                             # EOF: warnings, status
            return int.from_bytes(body[3:5], "little") if len(body) >= 5 else 0
        _, i = _lenenc(body, 1)
        _, i = _lenenc(body, i)
        return int.from_bytes(body[i:i + 2], "little") if i + 2 <= len(body) else 0

    def _err(self, r: _Response, body: bytes, complete: bool) -> None:
        """An ERR packet: it ends the response (MariaDB progress reports, code 0xFFFF, do not)."""
        if len(body) < 3:
            r.code = None
            r.status = SERVER_ERROR
            r.state = R_DONE
            return
        code = body[1] | body[2] << 8
        if code == 0xFFFF:
            return
        sqlstate = ""
        msg = body[3:]
        if msg[:1] == b"#":
            sqlstate = msg[1:6].decode("ascii", "replace")
            msg = msg[6:]
        text = captured_text(msg, complete, self.config.result_max)
        r.code = code
        r.status = error_status(code, sqlstate)
        r.exception = clip(f"{sqlstate}: {text}", self.config.result_max) if sqlstate else text
        r.state = R_DONE

    def _lost_response(self, ts: int, seq: int, start: int, end: int, out: list[L7Message]) -> None:
        """Framing lost in the server's bytes: report the response as far as it was seen, its
        length running to the segment end (stream offset ``end``); when none of it was, the hole
        (from ``start``, tcp ``seq``) held it."""
        r = self.resp
        if r is None:
            if not self.pending:
                return
            r = self.resp = _Response(self.pending[0][0])
            r.ts, r.seq = ts, seq
            r.abs = start
            r.status = PARSE_FAILED
        r.length = end - r.abs
        r.state = R_DONE
        r.seen_rows = False                 # the row count is incomplete
        self._finish_response(out)

    def _finish_response(self, out: list[L7Message]) -> None:
        r = self.resp
        self.resp = None
        if r is None:
            return
        kind, cmd, sql, stmt_id = self.pending.popleft() if self.pending else (r.kind, -1, "", None)
        msg = L7Message(RESPONSE, r.ts, r.seq, response_status=r.status, response_code=r.code,
                        length=r.length, captured=r.captured, l7_protocol=MYSQL, version=self.version)
        if r.status == PARSE_FAILED:
            msg.response_code = None
        if r.result:
            msg.response_result = r.result
        if r.exception:
            msg.response_exception = r.exception
        if r.ok_seen and cmd in _ROW_COUNT_COMMANDS:
            msg.sql_affected_rows = r.affected
        if r.seen_rows:
            msg.response_result = f"{r.rows} rows"
        attrs = r.attrs
        if r.results > 1:
            attrs = dict(attrs or {}, results=str(r.results))
        msg.attributes = attrs
        if r.stmt_id is not None:
            msg.request_id = r.stmt_id
            if sql and len(self.statements) < self.MAX_STATEMENTS:
                self.statements[r.stmt_id] = sql
        elif stmt_id is not None:
            msg.request_id = stmt_id
        if kind == AUTH and r.status == OK:
            self.logged_in = True
        out.append(msg)

    def _emit(self, r: _Response, out: list[L7Message]) -> None:
        """A response no command asked for (an ERR instead of the greeting)."""
        self.resp = r
        self.pending.appendleft((GENERIC, -1, "", None))
        self._finish_response(out)


SPEC = Spec(MYSQL, "MySQL", frozenset({3306}), frozenset({6}), check, MySQLParser)
