"""MySQL parser (collector/l7/mysql.py): the lab's real traffic first (tests/data/mysql.pcap and
mixed.pcap, cross-checked with tshark), then truncated captures, crafted protocol corners and fuzz."""

from __future__ import annotations

import random
from collections import defaultdict
from functools import partial

import pytest

from collector.l7 import mysql
from collector.l7.base import (
    CLIENT_ERROR,
    MYSQL,
    OK,
    PARSE_FAILED,
    REQUEST,
    RESPONSE,
    SERVER_ERROR,
    SESSION,
    GiveUp,
    L7Config,
)
from tests.l7util import (
    Stream,
    by_port,
    converse,
    feed_result,
    halves,
    in_order_fuzz_tests,
    mutate_tokens,
    needs_tshark,
    spec_messages,
    tshark_fields,
)

CFG = L7Config()
SERVER_VERSION = "10.11.19-MariaDB-0+deb12u1"
LOGIN_OK = ("LOGIN", "", "", 0, OK, None, "", "")


def pairs(msgs: list) -> list[tuple]:
    """Requests paired in order with responses, as the session aggregator pairs MySQL; SESSION
    messages stand alone. Each item: (request, response or None)."""
    out, waiting = [], []
    for m in msgs:
        assert not isinstance(m, str), f"gave up: {m}"
        if m.type == REQUEST:
            waiting.append(m)
            out.append([m, None])
        elif m.type == RESPONSE:
            slot = next(p for p in out if p[0] is waiting[0])
            waiting.pop(0)
            slot[1] = m
        else:
            out.append([m, None])
    return [tuple(p) for p in out]


def summary(msgs: list) -> list[tuple]:
    """(request_type, request_resource, endpoint, response_code, response_status, sql_affected_rows,
    response_result, response_exception) per exchange; SESSION rows carry the status only."""
    rows = []
    for req, resp in pairs(msgs):
        if req.type == SESSION:
            rows.append((req.request_type, req.request_resource, req.endpoint, None, req.response_status, None,
                         "", ""))
            continue
        assert resp is not None, f"unanswered {req!r}"
        rows.append((req.request_type, req.request_resource, req.endpoint, resp.response_code,
                     resp.response_status, resp.sql_affected_rows, resp.response_result, resp.response_exception))
    return rows


def q(sql: str, result: str = "", affected: int | None = None, endpoint: str = "") -> tuple:
    return ("COM_QUERY", sql, endpoint, 0, OK, affected, result, "")


QUIT = ("COM_QUIT", "", "", None, OK, None, "", "")


def expected_mysql() -> list[list[tuple]]:
    """What t_mysql (shared/netlab/lab.sh) did, connection by connection; see clientlogs/mysql.log."""
    conns = [[LOGIN_OK, q("CREATE TABLE IF NOT EXISTS orders(id INT PRIMARY KEY, item VARCHAR(32), qty INT)",
                          affected=0, endpoint="CREATE orders"), QUIT]]
    for i in range(1, 21):
        conns.append([LOGIN_OK,
                      q(f"REPLACE INTO orders VALUES({i},'item-{i}',{i % 5 + 1})", affected=1, endpoint="REPLACE orders"),
                      q(f"SELECT * FROM orders WHERE id={i}", "1 rows", endpoint="SELECT orders"), QUIT])
    conns.append([LOGIN_OK,
                  q("SELECT id,item,qty FROM orders ORDER BY id", "20 rows", endpoint="SELECT orders"),
                  q("SELECT COUNT(*),SUM(qty) FROM orders", "1 rows", endpoint="SELECT orders"),
                  q("UPDATE orders SET qty=qty+1 WHERE id<=3", affected=3, endpoint="UPDATE orders"), QUIT])
    conns.append([LOGIN_OK, ("COM_QUERY", "SELECT * FROM no_such_table", "SELECT no_such_table", 1146, CLIENT_ERROR,
                             None, "", "42S02: Table 'shop.no_such_table' doesn't exist"), QUIT])
    conns.append([LOGIN_OK, ("COM_QUERY", "SELEC oops", "SELEC", 1064, CLIENT_ERROR, None, "",
                             "42000: You have an error in your SQL syntax; check the manual that corresponds to your "
                             "MariaDB server version for the right syntax to use near 'SELEC oops' at line 1"), QUIT])
    conns.append([("LOGIN", "", "", 1045, CLIENT_ERROR, None, "",
                   "28000: Access denied for user 'lab'@'10.99.0.2' (using password: YES)")])
    conns.append([("LOGIN", "", "", 1049, CLIENT_ERROR, None, "", "42000: Unknown database 'no_such_db'")])
    return conns


def mysql_streams(name: str, snaplen: int | None = None) -> list[Stream]:
    return by_port(name, 3306, snaplen)


run = partial(spec_messages, mysql.SPEC)


# -- real traffic ----------------------------------------------------------------------------------


def test_mysql_pcap_exchanges():
    got = [summary(run(s)) for s in mysql_streams("mysql")]
    assert got == expected_mysql()


def test_mysql_pcap_login_and_message_framing():
    """LOGIN attributes; each message is one segment here, so its ts / tcp_seq / length are the
    segment's (datamodel §5.7: req/resp_tcp_seq = TCP seq of the message's first byte)."""
    for s in mysql_streams("mysql"):
        msgs = run(s)
        login = msgs[0]
        assert login.request_type == "LOGIN" and login.version == "10"
        assert login.attributes["user"] == "lab"
        assert login.attributes["database"] in ("shop", "no_such_db")
        assert login.attributes["server_version"] == SERVER_VERSION
        segs = [g for g in s.segments if not (not g.from_client and g.payload[4:5] == b"\x0a")]  # no greeting
        assert len(segs) == len(msgs)
        for g, m in zip(segs, msgs, strict=True):
            assert (m.ts, m.tcp_seq, m.length, m.captured) == (g.ts, g.seq, g.length, g.length)
            assert m.l7_protocol == MYSQL
            assert (m.type == REQUEST or m.type == SESSION) == g.from_client


def test_mixed_pcap_mysql_connections():
    """mixed.pcap ran t_mysql alongside HTTP, DNS and Redis: the same exchanges (order of the
    connections may differ). Its table already held the rows, so a REPLACE there deletes and
    inserts: 2 affected rows (tshark agrees, below)."""

    def norm(conns):
        return sorted(tuple(r[:5] + ((1 if r[5] == 2 else r[5]) if r[1].startswith("REPLACE") else r[5],) + r[6:]
                            for r in c) for c in conns)

    got = [summary(run(s)) for s in mysql_streams("mixed")]
    assert norm(got) == norm(expected_mysql())
    assert 2 in {r[5] for c in got for r in c if r[1].startswith("REPLACE")}


def _tshark(pcap: str) -> dict[int, dict[str, list]]:
    rows = tshark_fields(pcap, ["tcp.srcport", "tcp.dstport", "mysql.command", "mysql.query", "mysql.error_code",
                                "mysql.affected_rows"], display="mysql", options=("-E", "occurrence=f"))
    per: dict[int, dict[str, list]] = defaultdict(lambda: defaultdict(list))
    for sport, dport, cmd, query, code, affected in rows:
        conn = per[int(sport) if int(dport) == 3306 else int(dport)]
        if cmd:
            conn["commands"].append(int(cmd))
        if query:
            conn["queries"].append(query)
        if code:
            conn["errors"].append(int(code))
        if affected:
            conn["affected"].append(int(affected))
    return per


@needs_tshark
@pytest.mark.parametrize("pcap", ["mysql", "mixed"])
def test_tshark_agrees(pcap):
    """Commands, SQL text, error codes and affected rows as Wireshark's MySQL dissector sees them
    (it reports affected rows of every OK packet, the login's too)."""
    codes = {name: code for code, (name, _) in mysql.COMMANDS.items()}
    theirs = _tshark(pcap)
    ours: dict[int, dict[str, list]] = {}
    for s in mysql_streams(pcap):
        conn: dict[str, list] = defaultdict(list)
        for req, resp in pairs(run(s)):
            if req.request_type != "LOGIN":
                conn["commands"].append(codes[req.request_type])
            if req.request_type == "COM_QUERY":
                conn["queries"].append(req.request_resource)
            if resp is None:
                continue
            if resp.response_status in (CLIENT_ERROR, SERVER_ERROR):
                conn["errors"].append(resp.response_code)
            elif req.request_type == "LOGIN":
                conn["affected"].append(0)
            elif resp.sql_affected_rows is not None:
                conn["affected"].append(resp.sql_affected_rows)
        ours[s.client[1]] = conn
    assert len(ours) == len(theirs) > 0
    for port, conn in ours.items():
        assert dict(conn) == dict(theirs[port]), port


# -- truncated capture -------------------------------------------------------------------------------


@pytest.mark.parametrize("snaplen", [120, 90])
def test_truncated_capture_keeps_pairing(snaplen):
    """Cut payloads: the same exchanges at the same TCP sequence numbers; texts are prefixes of the
    full ones, error codes survive when their packet's start was captured."""
    full = mysql_streams("mysql")
    cut = mysql_streams("mysql", snaplen=snaplen)
    assert any(g.length > len(g.payload) for s in cut for g in s.segments)
    for fs, cs in zip(full, cut, strict=True):
        fp, cp = pairs(run(fs)), pairs(run(cs))
        assert len(fp) == len(cp)
        for (freq, fresp), (creq, cresp) in zip(fp, cp, strict=True):
            assert (creq.request_type, creq.tcp_seq, creq.length) == (freq.request_type, freq.tcp_seq, freq.length)
            assert freq.request_resource.startswith(creq.request_resource.removesuffix("..."))
            assert creq.captured <= creq.length
            if fresp is None:
                assert cresp is None
                continue
            assert (cresp.tcp_seq, cresp.length) == (fresp.tcp_seq, fresp.length)
            assert cresp.response_status in (fresp.response_status, PARSE_FAILED)
            if cresp.response_status != PARSE_FAILED:
                assert cresp.response_code == fresp.response_code


def test_snaplen_120_details():
    cut = mysql_streams("mysql", snaplen=120)
    rows = summary(run(cut[0]))
    assert rows[1][:3] == ("COM_QUERY", "CREATE TABLE IF NOT EXISTS orders(id INT PRIMARY ...", "CREATE orders")
    login = run(cut[0])[0]
    assert login.attributes == {"user": "lab", "server_version": SERVER_VERSION}   # database not captured
    big = pairs(run(cut[21]))[1][1]           # 20-row result set, 54 of 493 bytes captured
    assert (big.response_status, big.length, big.response_result) == (OK, 493, "")
    denied = pairs(run(cut[24]))[0][1]
    assert denied.response_code == 1045 and denied.response_exception.endswith("...")


# -- crafted traffic ---------------------------------------------------------------------------------

CAPS = (0x1 | 0x4 | mysql.CLIENT_CONNECT_WITH_DB | mysql.CLIENT_PROTOCOL_41 | mysql.CLIENT_SECURE_CONNECTION
        | mysql.CLIENT_MULTI_STATEMENTS | 1 << 17 | mysql.CLIENT_PLUGIN_AUTH)


def lenenc(n: int) -> bytes:
    if n < 0xFB:
        return bytes([n])
    if n < 1 << 16:
        return b"\xfc" + n.to_bytes(2, "little")
    if n < 1 << 24:
        return b"\xfd" + n.to_bytes(3, "little")
    return b"\xfe" + n.to_bytes(8, "little")


def lstr(b: bytes) -> bytes:
    return lenenc(len(b)) + b


def pkt(seq: int, body: bytes) -> bytes:
    return len(body).to_bytes(3, "little") + bytes([seq & 0xFF]) + body


def greeting(caps: int = CAPS | mysql.CLIENT_DEPRECATE_EOF | mysql.CLIENT_SSL) -> bytes:
    return pkt(0, b"\x0a8.0.36\0" + b"\x07\0\0\0" + b"abcdefgh\0" + (caps & 0xFFFF).to_bytes(2, "little")
               + b"\x21\x02\x00" + (caps >> 16).to_bytes(2, "little") + b"\x15" + b"\0" * 10
               + b"ijklmnopqrst\0mysql_native_password\0")


def login(caps: int = CAPS, user: bytes = b"app", db: bytes = b"shop") -> bytes:
    return pkt(1, caps.to_bytes(4, "little") + b"\0\0\0\x01\x21" + b"\0" * 23 + user + b"\0" + lstr(b"x" * 20)
               + db + b"\0mysql_native_password\0")


def ok(seq: int, affected: int = 0, status: int = 0x0002, header: int = 0) -> bytes:
    return pkt(seq, bytes([header]) + lenenc(affected) + b"\0" + status.to_bytes(2, "little") + b"\0\0")


def err(seq: int, code: int, state: bytes, msg: bytes) -> bytes:
    return pkt(seq, b"\xff" + code.to_bytes(2, "little") + b"#" + state + msg)


def eof(seq: int, status: int = 0x0002) -> bytes:
    return pkt(seq, b"\xfe\0\0" + status.to_bytes(2, "little"))


def coldef(seq: int, name: bytes) -> bytes:
    return pkt(seq, lstr(b"def") + lstr(b"shop") + lstr(b"orders") + lstr(b"orders") + lstr(name) + lstr(name)
               + b"\x0c\x21\x00\x0b\x00\x00\x00\x03\x00\x00\x00\x00\x00")


def resultset(seq: int, cols: list[bytes], rows: list[list[bytes]], *, deprecate_eof: bool, binary: bool = False,
              status: int = 0x0002) -> tuple[bytes, int]:
    """A result set starting at sequence id ``seq``; returns (bytes, next sequence id)."""
    out = [pkt(seq, lenenc(len(cols)))]
    seq += 1
    for c in cols:
        out.append(coldef(seq, c))
        seq += 1
    if not deprecate_eof:
        out.append(eof(seq))
        seq += 1
    for r in rows:
        body = b"\0\0" + b"".join(lstr(v) for v in r) if binary else b"".join(lstr(v) for v in r)
        out.append(pkt(seq, body))
        seq += 1
    out.append(ok(seq, status=status, header=0xFE) if deprecate_eof else eof(seq, status))
    return b"".join(out), seq + 1


def query(sql: bytes, cmd: int = 0x03) -> bytes:
    return pkt(0, bytes([cmd]) + sql)


def feed_all(conv: list[tuple[bool, bytes]], split: int | None = None, parser=None, config: L7Config = CFG):
    """Feed (from_client, bytes) messages, each as one segment or cut in two at ``split``."""
    return converse(parser or mysql.SPEC.parser(config), halves(conv, split), ts0=1_000_010, ts_step=10)


def session(deprecate_eof: bool) -> list[tuple[bool, bytes]]:
    caps = CAPS | (mysql.CLIENT_DEPRECATE_EOF if deprecate_eof else 0)
    rs, _ = resultset(1, [b"id", b"item"], [[b"1", b"a"], [b"2", b"b"], [b"3", b"c"]], deprecate_eof=deprecate_eof)
    return [(False, greeting()), (True, login(caps)), (False, ok(2)),
            (True, query(b"SELECT id,item FROM orders")), (False, rs),
            (True, query(b"UPDATE orders SET qty=1")), (False, ok(1, affected=3)),
            (True, query(b"SELECT * FROM nope")), (False, err(1, 1146, b"42S02", b"Table 'shop.nope' doesn't exist")),
            (True, pkt(0, b"\x0e")), (False, ok(1)),
            (True, pkt(0, b"\x02shop")), (False, ok(1)),
            (True, pkt(0, b"\x01"))]


SESSION_ROWS = [
    ("LOGIN", "", "", 0, OK, None, "", ""),
    ("COM_QUERY", "SELECT id,item FROM orders", "SELECT orders", 0, OK, None, "3 rows", ""),
    ("COM_QUERY", "UPDATE orders SET qty=1", "UPDATE orders", 0, OK, 3, "", ""),
    ("COM_QUERY", "SELECT * FROM nope", "SELECT nope", 1146, CLIENT_ERROR, None, "", "42S02: Table 'shop.nope' doesn't exist"),
    ("COM_PING", "", "", 0, OK, None, "", ""),
    ("COM_INIT_DB", "shop", "", 0, OK, None, "", ""),
    QUIT,
]


@pytest.mark.parametrize("deprecate_eof", [False, True])
def test_crafted_session(deprecate_eof):
    msgs = feed_all(session(deprecate_eof))
    assert summary(msgs) == SESSION_ROWS
    assert msgs[0].attributes == {"user": "app", "database": "shop", "server_version": "8.0.36"}


@pytest.mark.parametrize("deprecate_eof", [False, True])
@pytest.mark.parametrize("split", range(1, 9))
def test_packet_split_at_every_header_byte(deprecate_eof, split):
    """Every message cut in two segments inside its first packet's header or just after it."""
    assert summary(feed_all(session(deprecate_eof), split=split)) == SESSION_ROWS


def test_stream_split_into_single_bytes():
    conv = session(False)
    p = mysql.SPEC.parser(CFG)
    out = []
    seqs = {True: 0, False: 0}
    for from_client, data in conv:
        for i in range(len(data)):
            r = p.feed(data[i:i + 1], 1, from_client, 1, seqs[from_client])
            seqs[from_client] += 1
            out.extend(r)
    assert summary(out) == SESSION_ROWS


def test_pipelined_segments_and_mid_connection_start():
    """Several packets in one segment; a capture that starts after the handshake (no greeting,
    capabilities unknown): result sets still end right, by the EOF packet's length."""
    rs1, _ = resultset(1, [b"a"], [[b"1"]], deprecate_eof=False)
    rs2, _ = resultset(1, [b"a"], [[b"1"], [b"2"]], deprecate_eof=True)
    conv = [(True, query(b"SELECT a FROM t")), (False, rs1), (True, query(b"SELECT a FROM u")), (False, rs2),
            (True, query(b"DELETE FROM t") + pkt(0, b"\x19\x05\0\0\0")), (False, ok(1, affected=2))]
    rows = summary(feed_all(conv))
    assert rows == [q("SELECT a FROM t", "1 rows", endpoint="SELECT t"), q("SELECT a FROM u", "2 rows", endpoint="SELECT u"),
                    q("DELETE FROM t", affected=2, endpoint="DELETE t"),
                    ("COM_STMT_CLOSE", "", "", None, OK, None, "", "")]


@pytest.mark.parametrize("deprecate_eof", [False, True, None])
def test_prepared_statements(deprecate_eof):
    """PREPARE → PREPARE_OK (statement id, parameter and column definitions), EXECUTE → binary
    result set, CLOSE → no answer (a SESSION message), then the next command pairs right.
    ``None``: no handshake seen, so whether EOF packets follow the definitions is unknown."""
    flag = bool(deprecate_eof)
    conv = [] if deprecate_eof is None else [
        (False, greeting()), (True, login(CAPS | (mysql.CLIENT_DEPRECATE_EOF if flag else 0))), (False, ok(2))]
    sql = b"SELECT id,item,qty FROM orders WHERE id=?"
    prep = [pkt(1, b"\x00" + (7).to_bytes(4, "little") + b"\x03\x00" + b"\x01\x00" + b"\0\0\0"), coldef(2, b"?")]
    seq = 3
    if not flag:
        prep.append(eof(seq))
        seq += 1
    for c in (b"id", b"item", b"qty"):
        prep.append(coldef(seq, c))
        seq += 1
    if not flag:
        prep.append(eof(seq))
    rs, _ = resultset(1, [b"id", b"item", b"qty"], [[b"\x01", b"x", b"\x02"]], deprecate_eof=flag, binary=True)
    execute = pkt(0, b"\x17" + (7).to_bytes(4, "little") + b"\x00\x01\0\0\0" + b"\x00\x01\x03\x00" + b"\x01\0\0\0")
    conv += [(True, query(sql, 0x16)), (False, b"".join(prep)), (True, execute), (False, rs),
             (True, pkt(0, b"\x19" + (7).to_bytes(4, "little"))),
             (True, pkt(0, b"\x0e")), (False, ok(1))]
    msgs = feed_all(conv)
    if deprecate_eof is not None:
        msgs = msgs[2:]
    got = [(req.request_type, req.request_id, req.request_resource, req.endpoint,
            resp and (resp.response_status, resp.request_id, resp.response_result)) for req, resp in pairs(msgs)]
    text = sql.decode()
    assert got == [
        ("COM_STMT_PREPARE", None, text, "SELECT orders", (OK, 7, "")),
        ("COM_STMT_EXECUTE", 7, text, "SELECT orders", (OK, 7, "1 rows")),
        ("COM_STMT_CLOSE", 7, text, "SELECT orders", None),
        ("COM_PING", None, "", "", (OK, None, "")),
    ]
    assert pairs(msgs)[0][1].attributes == {"columns": "3", "params": "1"}
    assert msgs[4].type == SESSION


def test_flush_at_flow_end():
    """A response still being read when the flow ends is handed over by flush(); one awaiting only
    the optional EOF of an unknown-capability PREPARE answer is complete."""
    rs, _ = resultset(1, [b"a"], [[b"1"], [b"2"], [b"3"]], deprecate_eof=False)
    p = mysql.SPEC.parser(CFG)
    out = feed_all([(True, query(b"SELECT a FROM t")), (False, rs[:-9])], parser=p)
    assert [m.type for m in out] == [REQUEST]
    (resp,) = p.flush(2)
    assert (resp.type, resp.response_status, resp.response_result) == (RESPONSE, OK, "")
    assert p.flush(3) == []
    prep = pkt(1, b"\x00" + (3).to_bytes(4, "little") + b"\x00\x00\x01\x00\0\0\0") + coldef(2, b"?")
    p = mysql.SPEC.parser(CFG)
    out = feed_all([(True, query(b"INSERT INTO t VALUES(?)", 0x16)), (False, prep)], parser=p)
    (resp,) = p.flush(2)
    assert (resp.request_id, resp.response_status) == (3, OK)


def test_multi_statement_query():
    """One COM_QUERY, several results (SERVER_MORE_RESULTS_EXISTS): one response, complete at the
    last result; affected rows summed over the OKs, rows over the result sets."""
    more = 0x0002 | mysql.SERVER_MORE_RESULTS_EXISTS
    rs, _ = resultset(2, [b"id"], [[b"1"], [b"2"]], deprecate_eof=False, status=more)
    sql = b"REPLACE INTO orders VALUES(1,'a',1); SELECT id FROM orders; DELETE FROM orders WHERE id=9"
    conv = [(True, query(sql)), (False, ok(1, affected=2, status=more) + rs + ok(9, affected=1)),
            (True, pkt(0, b"\x0e")), (False, ok(1))]
    msgs = feed_all(conv)
    (req, resp), ping = pairs(msgs)
    assert req.endpoint == "REPLACE orders"
    assert (resp.response_code, resp.response_status, resp.sql_affected_rows, resp.response_result,
            resp.attributes) == (0, OK, 3, "2 rows", {"results": "3"})
    assert ping[1].response_status == OK
    # an ERR ends the batch and makes the response an error
    conv = [(True, query(b"UPDATE t SET a=1; SELECT * FROM nope")),
            (False, ok(1, affected=4, status=more) + err(2, 1146, b"42S02", b"Table 'shop.nope' doesn't exist"))]
    (_, resp), = pairs(feed_all(conv))
    assert (resp.response_code, resp.response_status, resp.sql_affected_rows) == (1146, CLIENT_ERROR, 4)


def test_multi_statement_split_across_segments():
    more = 0x0002 | mysql.SERVER_MORE_RESULTS_EXISTS
    rs, _ = resultset(2, [b"id"], [[b"1"]], deprecate_eof=True, status=0x0002)
    answer = ok(1, affected=1, status=more) + rs
    for cut in range(1, len(answer)):
        conv = [(True, query(b"INSERT INTO t VALUES(1); SELECT id FROM t"))]
        p = mysql.SPEC.parser(CFG)
        out = feed_all(conv, parser=p)
        out += p.feed(answer[:cut], cut, False, 5, 0)
        assert not [m for m in out if m.type == RESPONSE]
        out += p.feed(answer[cut:], len(answer) - cut, False, 6, cut)
        (_, resp), = pairs(out)
        assert (resp.sql_affected_rows, resp.response_result, resp.ts, resp.length) == (1, "1 rows", 5, len(answer))


def big_query(total: int) -> bytes:
    """A COM_QUERY whose payload is ``total`` bytes, split into 0xFFFFFF-long packets."""
    body = b"\x03INSERT INTO big VALUES('" + b"x" * (total - 27) + b"')"
    assert len(body) == total
    out, seq = [], 0
    while True:
        chunk, body = body[:mysql.MAX_PACKET], body[mysql.MAX_PACKET:]
        out.append(pkt(seq, chunk))
        seq += 1
        if len(chunk) < mysql.MAX_PACKET:
            return b"".join(out)


@pytest.mark.parametrize("total", [mysql.MAX_PACKET + 10, mysql.MAX_PACKET])
def test_16mb_packet_continuation(total):
    """A message longer than 16 MB - 1 continues in the next packet (an empty one when it is an
    exact multiple); it is one request, kept clipped, and the following packets frame right."""
    data = big_query(total)
    p = mysql.SPEC.parser(CFG)
    out = []
    for i in range(0, len(data), 65536):
        part = data[i:i + 65536]
        out += p.feed(part, len(part), True, 1, i)
        assert len(p.client.buf) <= p.client.cap
    out += p.feed(ok(2 if total >= mysql.MAX_PACKET else 1, affected=1), 11, False, 2, 0)
    out += p.feed(pkt(0, b"\x0e"), 5, True, 3, len(data))
    out += p.feed(ok(1), 11, False, 4, 11)
    (req, resp), (ping, pong) = pairs(out)
    assert req.length == len(data) and req.endpoint == "INSERT big"
    assert len(req.request_resource) == CFG.sql_max and req.request_resource.endswith("...")
    assert resp.sql_affected_rows == 1 and ping.request_type == "COM_PING" and pong.response_status == OK


def test_16mb_continuation_truncated_capture():
    """The same long query captured with a small snaplen: its length is known from the headers of
    the continuation packets (each within a captured prefix)."""
    data = big_query(mysql.MAX_PACKET + 10)
    p = mysql.SPEC.parser(CFG)
    out = []
    seg = 65536
    for i in range(0, len(data), seg):
        part = data[i:i + seg]
        out += p.feed(part[:100], len(part), True, 1, i)
    out += p.feed(ok(2, affected=1), 11, False, 2, 0)
    (req, resp), = pairs(out)
    assert req.length == len(data) and req.request_resource.startswith("INSERT INTO big VALUES('xxx")
    assert req.request_resource.endswith("...") and resp.sql_affected_rows == 1


def test_login_failure_auth_switch_and_ssl():
    """An auth switch / more-data exchange belongs to the LOGIN; SSL requests turn the flow to TLS."""
    conv = [(False, greeting()), (True, login()),
            (False, pkt(2, b"\xfecaching_sha2_password\0" + b"s" * 20)), (True, pkt(3, b"t" * 32)),
            (False, pkt(4, b"\x01\x04")), (True, pkt(5, b"password\0")),
            (False, err(6, 1045, b"28000", b"Access denied for user 'app'@'h' (using password: YES)"))]
    (req, resp), = pairs(feed_all(conv))
    assert (req.request_type, resp.response_code, resp.response_status) == ("LOGIN", 1045, CLIENT_ERROR)
    ssl_request = pkt(1, (CAPS | mysql.CLIENT_SSL).to_bytes(4, "little") + b"\0\0\0\x01\x21" + b"\0" * 23)
    out = feed_all([(False, greeting()), (True, ssl_request)])
    assert out == [GiveUp("mysql: TLS")]


def test_refused_before_greeting_and_local_infile():
    out = feed_all([(False, err(0, 1040, b"08004", b"Too many connections"))])
    assert [(m.type, m.response_code, m.response_status) for m in out] == [(RESPONSE, 1040, SERVER_ERROR)]
    conv = [(True, query(b"LOAD DATA LOCAL INFILE '/tmp/x' INTO TABLE orders")), (False, pkt(1, b"\xfb/tmp/x")),
            (True, pkt(2, b"1,a\n2,b\n")), (True, pkt(3, b"")), (False, ok(4, affected=2))]
    assert summary(feed_all(conv)) == [q("LOAD DATA LOCAL INFILE '/tmp/x' INTO TABLE orders", affected=2,
                                         endpoint="LOAD orders")]


def test_garbage_gives_up():
    assert feed_all([(True, pkt(0, b"\x77hello"))]) == [GiveUp("mysql: unknown command 0x77")]
    out = feed_all([(True, query(b"SELECT 1")), (False, pkt(1, b"\xfc\xff\xff"))])
    assert out[-1] == GiveUp("mysql: bad column count")


@pytest.mark.parametrize(("code", "state", "status"), [
    (1064, "42000", CLIENT_ERROR), (1146, "42S02", CLIENT_ERROR), (1049, "42000", CLIENT_ERROR),
    (1044, "42000", CLIENT_ERROR), (1045, "28000", CLIENT_ERROR), (1062, "23000", CLIENT_ERROR),
    (1366, "HY000", CLIENT_ERROR), (1406, "22001", CLIENT_ERROR), (1046, "3D000", CLIENT_ERROR),
    (2013, "HY000", CLIENT_ERROR), (1045, "", CLIENT_ERROR),
    (1205, "HY000", SERVER_ERROR), (1213, "40001", SERVER_ERROR), (1040, "08004", SERVER_ERROR),
    (1290, "HY000", SERVER_ERROR), (3024, "HY000", SERVER_ERROR),
])
def test_error_status(code, state, status):
    assert mysql.error_status(code, state) == status


@pytest.mark.parametrize(("sql", "endpoint"), [
    ("SELECT * FROM orders WHERE id=1", "SELECT orders"),
    ("select a from `shop`.`orders` o join items i on 1", "SELECT shop.orders"),
    ("INSERT INTO orders VALUES(1)", "INSERT orders"),
    ("insert ignore into orders values(1)", "INSERT orders"),
    ("REPLACE INTO orders VALUES(1,'a',2)", "REPLACE orders"),
    ("UPDATE LOW_PRIORITY orders SET a=1", "UPDATE orders"),
    ("DELETE FROM orders WHERE id=3", "DELETE orders"),
    ("CREATE TABLE IF NOT EXISTS orders(id INT)", "CREATE orders"),
    ("DROP TABLE IF EXISTS orders", "DROP orders"),
    ("/* trace */ -- c\n  SELECT 1", "SELECT"),
    ("(SELECT a FROM t1) UNION (SELECT a FROM t2)", "SELECT t1"),
    ("SELECT * FROM (SELECT a FROM inner_t) x", "SELECT inner_t"),
    ("SELECT updated_at FROM t FOR UPDATE", "SELECT t"),
    ("BEGIN", "BEGIN"), ("set names utf8mb4", "SET"),
    ("", ""), ("   ", ""), ("123", ""),
])
def test_sql_endpoint(sql, endpoint):
    assert mysql.sql_endpoint(sql) == endpoint


def test_sql_endpoint_no_catastrophic_backtracking():
    import time
    t = time.perf_counter()
    mysql.sql_endpoint(" " * 5000 + "!")
    mysql.sql_endpoint("/*" * 3000)
    assert time.perf_counter() - t < 0.5


def test_check():
    ss = mysql_streams("mysql")
    assert all(mysql.SPEC.check(s.segments[0].payload, s.segments[0].from_client) for s in ss)
    assert mysql.SPEC.check(ss[1].segments[3].payload, True)        # a COM_QUERY
    assert mysql.SPEC.check(ss[1].segments[1].payload, True)        # the handshake response
    assert mysql.SPEC.check(pkt(0, b"\x0e"), True)
    for payload, from_client in [
        (b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", True), (b"HTTP/1.1 200 OK\r\n\r\n", False),
        (b"*1\r\n$4\r\nPING\r\n", True), (b"+OK\r\n", False), (b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03", True),
        (b"SSH-2.0-OpenSSH_9.2\r\n", False), (pkt(0, b"\x03hello world"), True), (pkt(1, b"\x03SELECT 1"), True),
        (pkt(0, b"\x0aabc\0" + b"\0" * 40), False), (b"", True), (b"\x01\x00", False),
    ]:
        assert not mysql.SPEC.check(payload, from_client), payload
    assert mysql.SPEC.protocol == MYSQL and mysql.SPEC.name == "MySQL"
    assert mysql.SPEC.ports == frozenset({3306}) and mysql.SPEC.transports == frozenset({6})


# -- fuzz ----------------------------------------------------------------------------------------------


def well_formed(result, parser, config: L7Config = CFG) -> None:
    """A feed result: a GiveUp that is not a crash, or messages whose fields have the contract's
    types and bounds; the parser's buffers stay bounded."""
    for m in feed_result(result, "mysql: ", {MYSQL}, (REQUEST, RESPONSE, SESSION), crash="parser error"):
        assert isinstance(m.request_type, str) and isinstance(m.endpoint, str)
        assert len(m.request_resource) <= max(config.sql_max, 256)
        assert len(m.response_exception) <= config.result_max and len(m.response_result) <= config.result_max
        assert m.response_status in (OK, CLIENT_ERROR, SERVER_ERROR, PARSE_FAILED)
        assert m.response_code is None or isinstance(m.response_code, int)
        assert m.length is None or (isinstance(m.length, int) and m.length >= 0)
        assert 0 <= m.captured <= (m.length if m.length is not None else m.captured)
        assert 0 <= m.tcp_seq <= 0xFFFFFFFF
    if isinstance(result, str):                 # given up: the parser is dropped
        return
    for side in (parser.client, parser.server):
        assert len(side.buf) <= side.cap and len(side.hdr) < 4
    assert len(parser.pending) <= parser.MAX_PENDING and len(parser.statements) <= parser.MAX_STATEMENTS


def mutate(rng: random.Random, data: bytes) -> bytes:
    """Random bytes, or a 0xFFFFFF packet length."""
    return mutate_tokens(rng, data, lambda r: r.randrange(256), lambda _: b"\xff\xff\xff", 3)


REAL = [[(g.from_client, g.payload) for g in s.segments] for s in mysql_streams("mysql")] + [
    session(False), session(True)]


(test_fuzz_seeded_mutations, test_fuzz_seeded_random_bytes, test_fuzz_hypothesis,
 test_fuzz_hypothesis_random) = in_order_fuzz_tests(
    "mysql", lambda: mysql.SPEC.parser(CFG), well_formed, REAL, mutate, 0.3,
    lambda r: bytes(r.randrange(256) for _ in range(r.randint(0, 300))), seeds=(60, 61), edit_at=30, edit_size=12,
    cut_max=64)
