"""Redis parser (collector/l7/redis.py): the lab's real traffic first (tests/data/redis.pcap and
mixed.pcap, cross-checked with tshark's RESP dissector), then truncated captures, RESP3 and other
crafted corners, and fuzz."""

from __future__ import annotations

import itertools
import random
from collections import Counter, defaultdict
from functools import partial

import pytest

from collector.l7 import redis
from collector.l7.base import OK, PARSE_FAILED, REDIS, REQUEST, RESPONSE, SERVER_ERROR, GiveUp, L7Config
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
ECHO_ARG = bytes.fromhex("56dfc6e26bf110a24cb832a3877cbb6908782d47").decode("utf-8", "replace")


def pairs(msgs: list) -> list[tuple]:
    """Requests and responses paired in order, as the session aggregator pairs Redis."""
    assert not [m for m in msgs if isinstance(m, str)], msgs
    reqs = [m for m in msgs if m.type == REQUEST]
    resps = [m for m in msgs if m.type == RESPONSE]
    assert len(reqs) == len(resps), (reqs, resps)
    return list(zip(reqs, resps, strict=True))


def summary(msgs: list) -> list[tuple]:
    """(request_type, request_resource, endpoint, response_status, response_result, response_exception)."""
    return [(q.request_type, q.request_resource, q.endpoint, r.response_status, r.response_result,
             r.response_exception) for q, r in pairs(msgs)]


def cmd(line: str, result: str = "", status: int = OK, exception: str = "") -> tuple:
    name = line.split(" ", 1)[0]
    return (name, line, name, status, result, exception)


def expected_redis() -> list[list[tuple]]:
    """What t_redis (shared/netlab/lab.sh) did, connection by connection; see clientlogs/redis.log."""
    conns = []
    for i in range(1, 21):
        conns += [[cmd(f"SET user:{i} name-{i}", "OK")], [cmd(f"GET user:{i}", f"name-{i}")]]
    conns += [[cmd("INCR hits", "1")], [cmd("HSET cart:1 apple 3 pear 2", "2")],
              [cmd("HGETALL cart:1", "apple 3 pear 2")], [cmd("GET nosuchkey", "(nil)")],
              [cmd("RPUSH queue a b c", "3")], [cmd("LRANGE queue 0 -1", "a b c")],
              [cmd("GET queue", "", SERVER_ERROR, "WRONGTYPE Operation against a key holding the wrong kind of value")],
              [cmd("NOSUCHCMD foo", "", SERVER_ERROR, "ERR unknown command 'NOSUCHCMD', with args beginning with: 'foo' ")]]
    pipe = []
    for i in range(1, 21):
        pipe += [cmd(f"SET batch:{i} {i}", "OK"), cmd("INCR counter", str(i))]
    pipe += [cmd("MGET batch:1 batch:2 nokey", "1 2 (nil)"), cmd(f"ECHO {ECHO_ARG}", ECHO_ARG)]
    conns.append(pipe)
    return conns


def redis_streams(name: str, snaplen: int | None = None) -> list[Stream]:
    return by_port(name, 6379, snaplen)


run = partial(spec_messages, redis.SPEC)


# -- real traffic ----------------------------------------------------------------------------------


def test_redis_pcap_commands():
    assert [summary(run(s)) for s in redis_streams("redis")] == expected_redis()


def test_redis_pcap_message_framing():
    """ts / tcp_seq / length of each message: its first byte's segment and offset (the pipelined
    batch: 41 commands in one segment, the closing ECHO after redis-cli's empty line)."""
    for s in redis_streams("redis"):
        msgs = run(s)
        assert all(m.l7_protocol == REDIS and m.captured == m.length for m in msgs)
        for from_client, kind in ((True, REQUEST), (False, RESPONSE)):
            segs = [g for g in s.segments if g.from_client == from_client]
            ms = [m for m in msgs if m.type == kind]
            assert sum(m.length for m in ms) == sum(g.length for g in segs) - (2 if len(ms) == 42 and from_client else 0)
            assert (ms[0].ts, ms[0].tcp_seq) == (segs[0].ts, segs[0].seq)
            for a, b in itertools.pairwise(ms):
                if a.ts == b.ts:
                    assert b.tcp_seq == (a.tcp_seq + a.length) & 0xFFFFFFFF
    pipe = run(redis_streams("redis")[-1])
    echo = next(m for m in pipe if m.request_type == "ECHO")
    seg = redis_streams("redis")[-1].segments[1]
    assert (echo.ts, echo.tcp_seq, echo.length) == (seg.ts, seg.seq + 2, seg.length - 2)


def test_mixed_pcap_redis_connections():
    """mixed.pcap ran t_redis alongside HTTP, DNS and MySQL, on a server holding the earlier run's
    keys: the same commands and statuses; values differ (counters went on)."""
    def requests(conns):
        return sorted(tuple((r[0], r[1] if r[0] != "ECHO" else "ECHO", r[3]) for r in c) for c in conns)

    got = [summary(run(s)) for s in redis_streams("mixed")]
    assert requests(got) == requests(expected_redis())
    pipe = max(got, key=len)
    assert [r[4] for r in pipe[1:40:2]] == [str(i) for i in range(21, 41)]
    assert pipe[-1][1] == f"ECHO {pipe[-1][4]}"


def _tshark(pcap: str) -> dict[int, dict[str, list]]:
    rows = tshark_fields(pcap, ["tcp.srcport", "tcp.dstport", "resp.array.length", "resp.bulk_string.value",
                                "resp.string", "resp.error", "resp.integer"],
                         display="resp", decode="tcp.port==6379,resp", separator="|", options=("-E", "aggregator=\t"))
    per: dict[int, dict[str, list]] = defaultdict(lambda: defaultdict(list))
    for row in rows:
        sport, dport, lengths, bulks, strings, errors, ints = (f.split("\t") if f else [] for f in row)
        values = [bytes.fromhex(v).decode("utf-8", "replace") for v in bulks]
        if int(dport[0]) == 6379:               # commands: arrays of bulk strings
            conn = per[int(sport[0])]
            for n in map(int, lengths):
                conn["commands"].append(" ".join(values[:n]))
                values = values[n:]
        else:
            conn = per[int(dport[0])]
            conn["errors"] += errors
            conn["values"] += values + strings + ints
    return per


@needs_tshark
@pytest.mark.parametrize("pcap", ["redis", "mixed"])
def test_tshark_agrees(pcap):
    """The command sequence of each connection, its error replies, and the values of the replies
    (tshark lists them per field type, so those compare as multisets)."""
    theirs = _tshark(pcap)
    ours = {}
    for s in redis_streams(pcap):
        conn: dict[str, list] = defaultdict(list)
        for q, r in pairs(run(s)):
            conn["commands"].append(q.request_resource)
            if r.response_exception:
                conn["errors"].append(r.response_exception)
            conn["values"] += [v for v in r.response_result.split(" ") if v and v != "(nil)"]
        ours[s.client[1]] = conn
    assert len(ours) == len(theirs) > 0
    for port, conn in ours.items():
        assert conn["commands"] == theirs[port]["commands"], port
        assert conn["errors"] == theirs[port]["errors"], port
        assert Counter(conn["values"]) == Counter(theirs[port]["values"]), port


# -- truncated capture -------------------------------------------------------------------------------


@pytest.mark.parametrize("snaplen", [80, 100, 70])
def test_truncated_capture_keeps_pairing(snaplen):
    """Cut payloads: requests and responses still pair one to one; each is the first message of its
    segment in the full capture (a batch cut short counts as one), with that message's command."""
    cut = redis_streams("redis", snaplen=snaplen)
    full = redis_streams("redis")
    assert any(g.length > len(g.payload) for s in cut for g in s.segments)
    for fs, cs in zip(full, cut, strict=True):
        fmsgs = run(fs)
        by_seq = {m.tcp_seq: m for m in fmsgs}
        for q, r in pairs(run(cs)):
            fq, fr = by_seq[q.tcp_seq], by_seq[r.tcp_seq]
            assert fq.type == REQUEST and fr.type == RESPONSE
            assert q.request_type == fq.request_type or fq.request_type.startswith(q.request_type.removesuffix("..."))
            assert fq.request_resource.startswith(q.request_resource.split("...")[0].rstrip(" "))
            assert r.response_status in (fr.response_status, PARSE_FAILED)
            assert q.captured <= q.length and r.captured <= r.length


def test_snaplen_80_details():
    cut = redis_streams("redis", snaplen=80)                   # 14 payload bytes captured per segment
    assert summary(run(cut[0])) == [("SET", "SET ...", "SET", OK, "OK", "")]
    assert summary(run(cut[42])) == [("HGETAL...", "HGETAL...", "HGETAL...", OK, "apple ...", "")]
    assert summary(run(cut[46]))[0][3:] == (SERVER_ERROR, "", "WRONGTYPE Ope...")
    pipe = summary(run(cut[48]))
    assert [(r[0], r[4][:6]) for r in pipe] == [("SET", "OK"), ("ECHO", ECHO_ARG[:6])]
    q, r = pairs(run(cut[48]))[0]
    assert (q.length, q.captured, r.length, r.captured) == (1273, 14, 214, 14)


def test_big_reply_across_holes():
    """A 10 MB GET reply captured 100 bytes per 64 KB segment: the bulk length carries the parser
    over every hole, memory stays bounded, the next command pairs."""
    value = b"v" * 10_000_000
    reply = b"$%d\r\n" % len(value) + value + b"\r\n"
    p = redis.SPEC.parser(CFG)
    out = p.feed(b"*2\r\n$3\r\nGET\r\n$3\r\nbig\r\n", 22, True, 1, 0)
    for i in range(0, len(reply), 65536):
        part = reply[i:i + 65536]
        out += p.feed(part[:100], len(part), False, 2, i)
        assert len(p.server.bulk_keep) <= CFG.result_max
    out += p.feed(b"*1\r\n$4\r\nPING\r\n", 14, True, 3, 22)
    out += p.feed(b"+PONG\r\n", 7, False, 4, len(reply))
    (_, r), (_, pong) = pairs(out)
    assert (r.length, r.response_status, len(r.response_result)) == (len(reply), OK, CFG.result_max)
    assert r.response_result.startswith("vvvv") and r.response_result.endswith("...")
    assert pong.response_result == "PONG"


# -- crafted traffic ---------------------------------------------------------------------------------


def resp(*args: bytes | str) -> bytes:
    """A command as a RESP array of bulk strings."""
    bs = [a.encode() if isinstance(a, str) else a for a in args]
    return b"*%d\r\n" % len(bs) + b"".join(b"$%d\r\n%s\r\n" % (len(a), a) for a in bs)


def feed_all(conv: list[tuple[bool, bytes]], split: int | None = None, parser=None, config: L7Config = CFG):
    """Feed (from_client, bytes) messages, each as one segment or cut in two at ``split``."""
    return converse(parser or redis.SPEC.parser(config), halves(conv, split), client_seq=0, server_seq=0, ts0=1,
                    ts_step=0)


RESP3 = [
    (b"%2\r\n+first\r\n:1\r\n+second\r\n:2\r\n", "first 1 second 2"),
    (b"~3\r\n+a\r\n+b\r\n+c\r\n", "a b c"),
    (b"_\r\n", "(nil)"),
    (b"*-1\r\n", "(nil)"),
    (b"*0\r\n", "(empty array)"),
    (b"#t\r\n", "true"),
    (b"#f\r\n", "false"),
    (b",3.14159\r\n", "3.14159"),
    (b",-inf\r\n", "-inf"),
    (b"(3492890328409238509324850943850943825024385\r\n", "3492890328409238509324850943850943825024385"),
    (b"=15\r\ntxt:Some string\r\n", "Some string"),
    (b"*3\r\n:1\r\n*2\r\n+x\r\n$-1\r\n%1\r\n+k\r\n#t\r\n", "1 x (nil) k true"),
    (b"|1\r\n+key-popularity\r\n%2\r\n$1\r\na\r\n,0.1923\r\n$1\r\nb\r\n,0.0012\r\n*2\r\n:2039123\r\n:9543892\r\n",
     "2039123 9543892"),
    (b"*2\r\n|1\r\n+ttl\r\n:3600\r\n$3\r\nval\r\n+OK\r\n", "val OK"),
]


@pytest.mark.parametrize(("reply", "rendered"), RESP3)
def test_resp3_replies(reply, rendered):
    for split in (None, 1, 2, 3, len(reply) // 2, len(reply) - 1):
        msgs = feed_all([(True, resp("CMD", "k")), (False, reply)], split=split)
        assert summary(msgs) == [("CMD", "CMD k", "CMD", OK, rendered, "")], split


def test_resp3_errors_and_pushes():
    conv = [(True, resp("HELLO", "3")), (False, b"%1\r\n+server\r\n+redis\r\n"),
            (True, resp("CLIENT", "TRACKING", "on")), (False, b"+OK\r\n"),
            (False, b">2\r\n$10\r\ninvalidate\r\n*1\r\n$3\r\nfoo\r\n"),          # a push: no request
            (True, resp("EVAL", "bad", "0")), (False, b"!21\r\nSYNTAX invalid syntax\r\n"),
            (False, b">3\r\n$7\r\nmessage\r\n$2\r\nch\r\n$2\r\nhi\r\n"),
            (True, resp("GET", "k")), (False, b"$1\r\nv\r\n")]
    assert summary(feed_all(conv)) == [
        cmd("HELLO 3", "server redis"),
        ("CLIENT TRACKING", "CLIENT TRACKING on", "CLIENT TRACKING", OK, "OK", ""),
        cmd("EVAL bad 0", "", SERVER_ERROR, "SYNTAX invalid syntax"),
        cmd("GET k", "v"),
    ]


def test_pubsub_resp2():
    """SUBSCRIBE a b: two confirmations, the first answers it; messages are not answers."""
    conv = [(True, resp("SUBSCRIBE", "a", "b")),
            (False, b"*3\r\n$9\r\nsubscribe\r\n$1\r\na\r\n:1\r\n*3\r\n$9\r\nsubscribe\r\n$1\r\nb\r\n:2\r\n"),
            (False, b"*3\r\n$7\r\nmessage\r\n$1\r\na\r\n$5\r\nhello\r\n"),
            (True, resp("PING")), (False, b"*2\r\n$4\r\npong\r\n$0\r\n\r\n"),
            (True, resp("UNSUBSCRIBE")),
            (False, b"*3\r\n$11\r\nunsubscribe\r\n$1\r\na\r\n:1\r\n*3\r\n$11\r\nunsubscribe\r\n$1\r\nb\r\n:0\r\n")]
    assert summary(feed_all(conv)) == [cmd("SUBSCRIBE a b", "subscribe a 1"), cmd("PING", "pong"),
                                       cmd("UNSUBSCRIBE", "unsubscribe a 1")]


def test_lists_named_like_pubsub_replies_without_subscribing():
    conv = [(True, resp("LRANGE", "l", "0", "-1")), (False, b"*2\r\n$7\r\nmessage\r\n$9\r\nsubscribe\r\n")]
    assert summary(feed_all(conv)) == [cmd("LRANGE l 0 -1", "message subscribe")]


def test_bulk_string_across_three_segments():
    value = b"x" * 100 + b"\r\n$3\r\n" + b"y" * 100          # RESP-looking bytes inside the value
    reply = b"$%d\r\n" % len(value) + value + b"\r\n"
    p = redis.SPEC.parser(L7Config(result_max=1000))
    out = p.feed(resp("GET", "k"), 22, True, 1, 0)
    a, b = 30, 150
    out += p.feed(reply[:a], a, False, 10, 0)
    out += p.feed(reply[a:b], b - a, False, 11, a)
    assert not [m for m in out if m.type == RESPONSE]
    out += p.feed(reply[b:], len(reply) - b, False, 12, b)
    (_, r), = pairs(out)
    assert (r.ts, r.length, r.response_result) == (10, len(reply), value.decode())


def test_flush_at_flow_end():
    p = redis.SPEC.parser(CFG)
    out = feed_all([(True, resp("LRANGE", "l", "0", "-1")), (False, b"*3\r\n$1\r\na\r\n$1\r\nb")], parser=p)
    assert [m.type for m in out] == [REQUEST]
    (r,) = p.flush(9)
    assert (r.type, r.response_result, r.length) == (RESPONSE, "a b ...", 16)
    assert p.flush(10) == []


def test_inline_commands():
    conv = [(True, b"PING\r\n"), (False, b"+PONG\r\n"),
            (True, b"\r\n\nset  k   v\n"), (False, b"+OK\r\n"),
            (True, b"GET k\r\nEXISTS k\r\n"), (False, b"$1\r\nv\r\n:1\r\n")]
    assert summary(feed_all(conv)) == [cmd("PING", "PONG"), ("SET", "set k v", "SET", OK, "OK", ""),
                                       cmd("GET k", "v"), cmd("EXISTS k", "1")]


def test_empty_requests_get_no_reply():
    conv = [(True, b"*0\r\n*-1\r\n\r\n" + resp("PING")), (False, b"+PONG\r\n")]
    assert summary(feed_all(conv)) == [cmd("PING", "PONG")]


PIPELINE = resp("SET", "a", "1") + resp("INCR", "n") + b"PING\r\n" + resp("MGET", "a", "zz")
PIPELINE_REPLY = b"+OK\r\n:7\r\n+PONG\r\n*2\r\n$1\r\n1\r\n$-1\r\n"
PIPELINE_ROWS = [cmd("SET a 1", "OK"), cmd("INCR n", "7"), cmd("PING", "PONG"), cmd("MGET a zz", "1 (nil)")]


@pytest.mark.parametrize("split", range(1, len(PIPELINE)))
def test_pipeline_split_anywhere(split):
    reply_split = split * len(PIPELINE_REPLY) // len(PIPELINE)
    p = redis.SPEC.parser(CFG)
    out = feed_all([(True, PIPELINE)], split=split, parser=p)
    out += feed_all([(False, PIPELINE_REPLY)], split=reply_split, parser=p)
    assert summary(out) == PIPELINE_ROWS


def test_stream_fed_byte_by_byte():
    p = redis.SPEC.parser(CFG)
    out = []
    for from_client, data in ((True, PIPELINE), (False, PIPELINE_REPLY)):
        for i in range(len(data)):
            out += p.feed(data[i:i + 1], 1, from_client, i, i)
    assert summary(out) == PIPELINE_ROWS
    assert [m.ts for m in out] == [0, 27, 48, 54, 0, 5, 9, 16]


def test_clipping():
    config = L7Config(redis_arg_max=8, result_max=12, sql_max=30)
    conv = [(True, resp("SET", "k" * 20, "v" * 20)), (False, b"+OK\r\n"),
            (True, resp("MSET", *[f"key{i}" for i in range(100)])), (False, b"+OK\r\n"),
            (True, resp("GET", "k")), (False, b"$20\r\n" + b"r" * 20 + b"\r\n")]
    rows = summary(feed_all(conv, config=config))
    assert rows[0][1] == "SET kkkkk... vvvvv..."
    assert len(rows[1][1]) == 30 and rows[1][1].endswith("...")
    assert rows[2][4] == "rrrrrrrrr..."


def test_garbage_gives_up():
    assert feed_all([(True, resp("GET", "k")), (False, b"HTTP/1.1 200 OK\r\n\r\n")])[-1] == GiveUp(
        "redis: bad type byte 0x48")
    assert feed_all([(True, b"*2\r\n:1\r\n")]) == [GiveUp("redis: request is not an array of bulk strings")]
    assert feed_all([(True, b"*1\r\n$3\r\nGETX\r\n")]) == [GiveUp("redis: bulk string not followed by CRLF")]
    assert feed_all([(True, b"\x16\x03\x01\x00\xa5\x01\n")]) == [GiveUp("redis: bad inline command")]
    line = b"+" + b"a" * (CFG.max_buffer + 10)
    assert feed_all([(True, resp("GET", "k")), (False, line)])[-1] == GiveUp(
        f"redis: line longer than {CFG.max_buffer} bytes")
    assert feed_all([(True, b"*1\r\n$999999999999\r\n")]) == [GiveUp("redis: bad bulk length")]
    assert feed_all([(False, b"*1\r\n" * 100)]) == [GiveUp("redis: aggregates nested too deep")]


def test_check():
    ss = redis_streams("redis")
    assert all(redis.SPEC.check(s.segments[0].payload, True) for s in ss)
    assert all(redis.SPEC.check(s.segments[-1].payload, False) for s in ss)
    for reply, _ in RESP3:
        assert redis.SPEC.check(reply, False), reply
    for payload, from_client in [
        (b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", True), (b"HTTP/1.1 200 OK\r\n\r\n", False),
        (b"+OK Dovecot ready.\r\n", False), (b"-ERR\r\n", False), (b"* OK IMAP4rev1 ready\r\n", False),
        (b"PING\r\n", True), (b"*1\r\n$4\r\nP\x00NG\r\n", True), (b"*1\r\n:4\r\n", True),
        (b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03", True), (b"SSH-2.0-OpenSSH_9.2\r\n", False),
        (b"$5\r\nab\r\n", False), (b"", True), (b"", False), (b"*2\r\nxx", False),
    ]:
        assert not redis.SPEC.check(payload, from_client), payload
    assert redis.SPEC.protocol == REDIS and redis.SPEC.name == "Redis"
    assert redis.SPEC.ports == frozenset({6379}) and redis.SPEC.transports == frozenset({6})


# -- fuzz ----------------------------------------------------------------------------------------------


def well_formed(result, parser, config: L7Config = CFG) -> None:
    """A feed result: a GiveUp that is not a crash, or messages with the contract's types and
    bounds; the parser's buffers stay bounded."""
    for m in feed_result(result, "redis: ", {REDIS}, (REQUEST, RESPONSE), crash="parser error"):
        assert len(m.request_resource) <= config.sql_max and len(m.response_result) <= config.result_max
        assert len(m.response_exception) <= config.result_max
        assert m.response_status in (OK, SERVER_ERROR, PARSE_FAILED)
        assert isinstance(m.length, int) and 0 <= m.captured <= m.length
        assert 0 <= m.tcp_seq <= 0xFFFFFFFF
    if isinstance(result, str):                 # given up: the parser is dropped
        return
    for side in (parser.client, parser.server):
        assert len(side.line) <= config.max_buffer + 4096 and len(side.bulk_keep) <= max(config.result_max,
                                                                                       config.redis_arg_max)
        assert len(side.stack) <= redis.MAX_DEPTH
        assert side.msg is None or side.msg.tlen <= config.sql_max + config.result_max + 2
    assert len(parser.pending) <= redis.MAX_PENDING


def mutate(rng: random.Random, data: bytes) -> bytes:
    """RESP's type bytes, CRLFs and digits, or a RESP token in place of a byte."""
    return mutate_tokens(rng, data, lambda r: r.choice(b"*$+-:%~_#,(!=>|\r\n0123456789"),
                         lambda r: r.choice([b"\r\n", b"$-1\r\n", b"*3\r\n", b"|1\r\n", b">2\r\n", b"9999"]), 1)


REAL = [[(g.from_client, g.payload) for g in s.segments] for s in redis_streams("redis")] + [
    [(True, PIPELINE), (False, PIPELINE_REPLY)]] + [[(True, resp("X")), (False, reply)] for reply, _ in RESP3]


def random_payload(rng: random.Random) -> bytes:
    """RESP's bytes mostly, any bytes sometimes."""
    pool = b"*$+-:%~_#,(!=>|\r\n0123456789abc " if rng.random() < 0.7 else bytes(range(256))
    return bytes(rng.choice(pool) for _ in range(rng.randint(0, 200)))


(test_fuzz_seeded_mutations, test_fuzz_seeded_random_bytes, test_fuzz_hypothesis,
 test_fuzz_hypothesis_random) = in_order_fuzz_tests(
    "redis", lambda: redis.SPEC.parser(CFG), well_formed, REAL, mutate, 0.4, random_payload,
    seeds=(80, 81), edit_at=60, edit_size=8, cut_max=40)
