"""What the L7 parser tests share: the payload streams of the committed pcaps (per flow, the
in-order payloads each side sent, as the flow table will feed them to a parser), feeding crafted
conversations, checks every feed result must pass, fuzz drivers and byte mutators, and tshark's
field extraction to compare with."""

from __future__ import annotations

import random
import shutil
import subprocess
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field

import dpkt
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from collector.decode.packet import DPORT, DST, FLAGS, L4_LEN, PAYLOAD_OFF, PROTO, SEQ, SPORT, SRC, Decoder
from collector.l7.base import REQUEST, RESPONSE, GiveUp, L7Config, L7Message, ProtocolSpec
from tests.helpers import DATA

MASK32 = 0xFFFFFFFF


@dataclass
class Segment:
    from_client: bool
    payload: bytes      # what was captured
    length: int         # the real L4 payload length
    ts: int             # µs
    seq: int            # TCP sequence number of the first byte (0 for UDP)


@dataclass
class Stream:
    proto: int
    client: tuple       # (ip, port) as the decoder gives them (IPv4 int / IPv6 bytes)
    server: tuple
    segments: list[Segment] = field(default_factory=list)


def streams(name: str, snaplen: int | None = None) -> list[Stream]:
    """Flows of tests/data/<name>.pcap with their payloads in capture order; TCP retransmissions
    (data already seen) are left out, as the flow table does. The client is the SYN's sender, else
    the higher port. ``snaplen`` cuts payloads as a shorter capture would."""
    dec = Decoder()
    flows: dict[tuple, Stream] = {}
    nxt: dict[tuple, int] = {}
    with (DATA / f"{name}.pcap").open("rb") as f:
        for ts, buf in dpkt.pcap.Reader(f):
            p = dec.decode(bytes(buf), 1)
            if p is None or p[PROTO] not in (6, 17):
                continue
            a, b = (p[SRC], p[SPORT]), (p[DST], p[DPORT])
            key = (p[PROTO], *sorted([a, b]))
            st = flows.get(key)
            if st is None:
                syn = p[PROTO] == 6 and p[FLAGS] & 0x12 == 0x02
                synack = p[PROTO] == 6 and p[FLAGS] & 0x12 == 0x12
                client = a if syn or (not synack and a[1] > b[1]) else b
                st = flows[key] = Stream(p[PROTO], client, b if client == a else a)
            from_client = a == st.client
            length = p[L4_LEN]
            seq = p[SEQ] if p[PROTO] == 6 else 0
            if p[PROTO] == 6:
                if p[FLAGS] & 0x02:
                    nxt[(key, from_client)] = (seq + 1) & MASK32
                    continue
                if not length:
                    continue
                exp = nxt.get((key, from_client))
                if exp is not None and ((seq - exp) & MASK32) >= 0x80000000:
                    continue                        # below what was seen: a retransmission
                nxt[(key, from_client)] = (seq + length) & MASK32
            elif not length:
                continue
            data = bytes(buf)[p[PAYLOAD_OFF]:p[PAYLOAD_OFF] + length]
            if snaplen is not None:
                data = data[:max(0, snaplen - p[PAYLOAD_OFF])]
            st.segments.append(Segment(from_client, data, length, int(ts * 1_000_000), seq))
    return [s for s in flows.values() if s.segments]


def by_port(name: str, port: int, snaplen: int | None = None) -> list[Stream]:
    return [s for s in streams(name, snaplen) if s.server[1] == port]


def by_time(name: str) -> list[Stream]:
    """The flows of tests/data/<name>.pcap in the order they started."""
    return sorted(streams(name), key=lambda s: s.segments[0].ts)


def spec_row(spec: ProtocolSpec) -> tuple[tuple, tuple]:
    """What a protocol table row says, and the (protocol, name, timeout) of the parser it makes."""
    p = spec.parser(L7Config())
    return (spec.protocol, spec.name, spec.ports, spec.transports), (p.protocol, p.name, p.timeout_s)


def assert_not_claimed(check: Callable[[bytes, bool], bool], *names: str) -> None:
    """``check`` claims no flow of these committed pcaps by its first payload, either way round."""
    for name in names:
        for stream in streams(name):
            seg = stream.segments[0]
            assert not check(seg.payload, seg.from_client), (name, seg.payload[:40])
            assert not check(seg.payload, not seg.from_client), (name, seg.payload[:40])


def other_segments(name: str) -> Iterator[tuple[str, Segment]]:
    """(pcap name, segment) of every payload of every committed pcap but tests/data/<name>.pcap."""
    for path in sorted(DATA.glob("*.pcap")):
        if path.stem != name:
            for stream in streams(path.stem):
                for seg in stream.segments:
                    yield path.stem, seg


def messages(parser, stream: Stream) -> list:
    """Feed a whole stream to one parser; the messages in order (stops at a give-up)."""
    out = []
    for seg in stream.segments:
        r = parser.feed(seg.payload, seg.length, seg.from_client, seg.ts, seg.seq)
        if isinstance(r, str):
            out.append(r)
            break
        out.extend(r)
    return out


def spec_messages(spec: ProtocolSpec, stream: Stream, config: L7Config | None = None) -> list:
    """``messages`` of a stream fed to a new parser of ``spec``."""
    return messages(spec.parser(config or L7Config()), stream)


def paired_by_id(msgs: list[L7Message]) -> list[tuple[L7Message, L7Message]]:
    """(request, response) pairs by session id: every response answers a request seen before it,
    not earlier in time, and every request is answered."""
    reqs = {m.session_id: m for m in msgs if m.type == REQUEST}
    out = []
    for m in msgs:
        if m.type == RESPONSE:
            req = reqs.pop(m.session_id)
            assert m.ts >= req.ts
            out.append((req, m))
    assert not reqs                                     # every request got its answer
    return out


def wire_positions(stream: Stream, msgs: list[L7Message]) -> Iterator[tuple[L7Message, bytes, int]]:
    """Each message with the bytes its side sent (the segments joined) and its offset in them, by
    its tcp_seq; its ts must be that of the segment holding its first byte (checked after)."""
    for from_client in (True, False):
        segs = [s for s in stream.segments if s.from_client == from_client]
        data = b"".join(s.payload for s in segs)
        base = segs[0].seq
        for m in (x for x in msgs if (x.type != RESPONSE) == from_client):
            off = (m.tcp_seq - base) & MASK32
            yield m, data, off
            seg = max((s for s in segs if ((s.seq - base) & MASK32) <= off), key=lambda s: s.seq - base)
            assert m.ts == seg.ts                        # the message's first packet


def ends(result: list | str) -> bool:
    """Does this feed result end the parsing of its flow (a give-up, or a message with ends_flow)?"""
    return isinstance(result, str) or any(m.ends_flow for m in result)


def converse(parser, chunks: Iterable[tuple[bytes, bool]], *, lengths: list[int] | None = None,
             client_seq: int = 1000, server_seq: int = 5000, ts0: int = 1000, ts_step: int = 1,
             check: Callable[[list | str], None] | None = None) -> list:
    """Feed (payload, from_client) chunks with consecutive sequence numbers per direction, chunk i
    at ts0 + i·ts_step (``lengths``: their real lengths, when payloads are cut); ``check`` sees each
    result. The messages, then the give-up if one came; a message that ends the flow ends the
    feeding, as in the flow table."""
    seqs = {True: client_seq, False: server_seq}
    out: list = []
    for i, (payload, from_client) in enumerate(chunks):
        length = lengths[i] if lengths else len(payload)
        r = parser.feed(payload, length, from_client, ts0 + i * ts_step, seqs[from_client])
        seqs[from_client] += length
        if check is not None:
            check(r)
        if isinstance(r, str):
            return out + [r]
        out += r
        if ends(r):
            break
    return out


def halves(conv: Iterable[tuple[bool, bytes]], split: int | None) -> list[tuple[bytes, bool]]:
    """(payload, from_client) chunks of (from_client, message) pairs, each message cut in two at
    ``split`` when that falls inside it."""
    return [(part, fc) for fc, data in conv
            for part in ([data[:split], data[split:]] if split is not None and 0 < split < len(data) else [data])]


def until_given_up(feed: Callable[[], list | str], limit: int) -> list | str:
    """``feed()`` up to ``limit`` times: its first give-up, else its last result."""
    r: list | str = []
    for _ in range(limit):
        r = feed()
        if isinstance(r, GiveUp):
            break
    return r


def no_give_up(result: list | str) -> None:
    assert not isinstance(result, str), result


def feed_result(result: list | str, prefix: str, protocols: Iterable[int], types: Iterable[int], *,
                crash: str = "internal error") -> list[L7Message]:
    """The checks every feed result must pass, whatever the input: a GiveUp whose reason names the
    parser (``prefix``) and is not a bug it caught (``crash``), or a list of L7Messages of the
    parser's protocols and types, with string attributes. Returns the messages ([] for a give-up)
    for the protocol's own checks."""
    if isinstance(result, str):
        assert isinstance(result, GiveUp) and result.startswith(prefix) and crash not in result, result
        return []
    assert isinstance(result, list)
    for m in result:
        assert isinstance(m, L7Message) and m.l7_protocol in protocols and m.type in types, m
        assert m.attributes is None or all(isinstance(k, str) and isinstance(v, str) for k, v in m.attributes.items())
    return result


# -- fuzzing -------------------------------------------------------------------------------------

FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
# (payload, from_client, bytes not captured after it)
CHUNKS = st.lists(st.tuples(st.binary(max_size=300), st.booleans(), st.integers(0, 64)), min_size=1, max_size=6)


def mutate(rng: random.Random, data: bytes) -> bytes:
    """1-6 random edits: a byte overwritten, inserted or deleted, or the tail cut off."""
    b = bytearray(data)
    for _ in range(rng.randint(1, 6)):
        op = rng.random()
        if op < 0.5 and b:
            b[rng.randrange(len(b))] = rng.randrange(256)
        elif op < 0.7:
            b.insert(rng.randrange(len(b) + 1), rng.randrange(256))
        elif op < 0.85 and b:
            del b[rng.randrange(len(b))]
        else:
            b = b[:rng.randrange(len(b) + 1)]
    return bytes(b)


def mutate_tokens(rng: random.Random, data: bytes, byte: Callable[[random.Random], int],
                  patch: Callable[[random.Random], bytes], width: int) -> bytes:
    """1-4 random edits: a byte overwritten with ``byte(rng)``, random bytes inserted, or the
    ``width`` bytes at a random place replaced by ``patch(rng)`` (a protocol's tokens)."""
    b = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        op = rng.randrange(4)
        if op == 0 and b:
            b[rng.randrange(len(b))] = byte(rng)
        elif op == 1 and b:
            del b[rng.randrange(len(b)):][:rng.randint(1, 8)]     # NB: deletes from a copy, b stays as is
        elif op == 2:
            i = rng.randrange(len(b) + 1)
            b[i:i] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 8)))
        elif b:
            i = rng.randrange(len(b))
            b[i:i + width] = patch(rng)
    return bytes(b)


def fed_chunks(parser, chunks: Iterable[tuple[bytes, bool, int]], seq: int = 1,
               advance: bool = True) -> Iterator[tuple[list | str, bytes]]:
    """Feed (payload, from_client, bytes not captured after it) chunks at ts 1 from sequence number
    ``seq``, advanced past each chunk (not for UDP: ``advance`` false); yields each result with its
    payload, up to one that ends the flow."""
    for data, from_client, extra in chunks:
        r = parser.feed(data, len(data) + extra, from_client, 1, seq)
        yield r, data
        if ends(r):
            return
        if advance:
            seq += len(data) + extra


def fed_mutated(parser, stream: Stream, rng: random.Random, p_mutate: float) -> Iterator[tuple[list | str, bytes]]:
    """Feed a real stream with some payloads mutated (``mutate``, probability ``p_mutate``) and
    some cut short, as a snaplen would; yields each result with the (uncut) payload, up to one
    that ends the flow."""
    for seg in stream.segments:
        data = mutate(rng, seg.payload) if rng.random() < p_mutate else seg.payload
        cut = len(data) if rng.random() < 0.8 else rng.randrange(len(data) + 1)
        r = parser.feed(data[:cut], len(data), seg.from_client, seg.ts, seg.seq)
        yield r, data
        if ends(r):
            return


def resegmented(parser, stream: Stream, rng: random.Random, pieces: int) -> list:
    """The messages of a stream fed with each segment cut at up to ``pieces`` random points, up to
    the segment of a message that ends the flow; then the give-up if one came."""
    out: list = []
    for seg in stream.segments:
        cuts = sorted(rng.sample(range(1, seg.length), min(pieces, seg.length - 1))) if seg.length > 1 else []
        prev = 0
        for c in [*cuts, seg.length]:
            r = parser.feed(seg.payload[prev:c], c - prev, seg.from_client, seg.ts, (seg.seq + prev) & MASK32)
            if isinstance(r, str):
                return out + [r]
            out += r
            prev = c
        if out and out[-1].ends_flow:
            break
    return out


def fed_conversation(parser, conv: list[tuple[bool, bytes]], rng: random.Random,
                     mutate: Callable[[random.Random, bytes], bytes], p_mutate: float) -> Iterator[list | str]:
    """Feed a conversation of (from_client, payload) from random sequence numbers, payloads
    mutated with probability ``p_mutate``, some cut short, some followed by bytes not captured;
    yields each result up to a give-up, else at last what ``flush`` hands over."""
    seqs = {True: rng.randrange(1 << 32), False: rng.randrange(1 << 32)}
    for from_client, data in conv:
        if rng.random() < p_mutate:
            data = mutate(rng, data)
        length = len(data) + (rng.randrange(200) if rng.random() < 0.2 else 0)
        if rng.random() < 0.2:
            data = data[:rng.randrange(len(data) + 1)]
            length = max(length, len(data))
        r = parser.feed(data, length, from_client, 1, seqs[from_client])
        seqs[from_client] = (seqs[from_client] + length) & MASK32
        yield r
        if isinstance(r, str):
            return
    yield parser.flush(2)


def fed_edited(parser, conv: list[tuple[bool, bytes]], edits: list[tuple[int, bytes]],
               cuts: list[int]) -> Iterator[list | str]:
    """A conversation of (from_client, payload) with bytes overwritten (``edits``: offset, bytes)
    in every payload, each re-cut into segments of the ``cuts`` sizes then the rest; yields each
    result up to a give-up."""
    for from_client, data in conv:
        b = bytearray(data)
        for pos, blob in edits:
            b[pos:pos + len(blob)] = blob
        i = 0
        for size in cuts + [len(b)]:
            part = bytes(b[i:i + size])
            if not part:
                break
            r = parser.feed(part, len(part), from_client, 1, i)
            yield r
            if isinstance(r, str):
                return
            i += size


def fed_overwritten(parser, segs: list[Segment], rng: random.Random, overwrites: int,
                    flip: bool = False) -> Iterator[list | str]:
    """Real segments in order, with up to ``overwrites`` - 1 bytes overwritten each, some cut
    short, some followed by bytes not captured (``flip``: one in twenty fed as the other side's);
    yields each result up to a give-up."""
    for seg in segs:
        data = bytearray(seg.payload)
        for _ in range(rng.randrange(overwrites)):
            if data:
                data[rng.randrange(len(data))] = rng.randrange(256)
        if rng.random() < 0.2 and data:
            data = data[:rng.randrange(len(data))]
        length = len(data) + (rng.randrange(3000) if rng.random() < 0.1 else 0)
        from_client = seg.from_client if not flip or rng.random() < 0.95 else not seg.from_client
        r = parser.feed(bytes(data), length, from_client, seg.ts, seg.seq)
        yield r
        if isinstance(r, str):
            return


def fed_blobs(parser, rng: random.Random, n: int = 20, magic: bytes = b"") -> Iterator[list | str]:
    """Up to ``n`` random blobs of 1-79 bytes (half of them after ``magic`` when given), each
    from a random side; yields each result up to a give-up."""
    for _ in range(n):
        blob = (magic if magic and rng.random() < 0.5 else b"") + rng.randbytes(rng.randrange(1, 80))
        r = parser.feed(blob, len(blob), rng.random() < 0.5, 0, 0)
        yield r
        if isinstance(r, str):
            return


def fed_random(parser, rng: random.Random, make: Callable[[random.Random], bytes]) -> Iterator[list | str]:
    """1-12 payloads ``make(rng)``, each from a random side, some followed by bytes not captured;
    yields each result up to a give-up."""
    for _ in range(rng.randint(1, 12)):
        data = make(rng)
        r = parser.feed(data, len(data) + rng.choice([0, 0, rng.randrange(5000)]), rng.random() < 0.5, 1, 0)
        yield r
        if isinstance(r, str):
            return


def fuzz_chunks(parser, chunks: Iterable[tuple[bytes, bool, int]], check: Callable[[list | str], None],
                framers: Callable[[object], Iterable] | None = None, cap: int = 0, *, seq: int = 1,
                advance: bool = True) -> None:
    """``fed_chunks``: check(result) after each feed and, while the flow goes on, the buffers of
    ``framers(parser)`` hold at most ``cap`` bytes more than the payload."""
    for r, data in fed_chunks(parser, chunks, seq, advance):
        check(r)
        if framers is not None and not ends(r):
            assert all(len(f.buf) <= cap + len(data) for f in framers(parser))


def fuzz_streams(spec: ProtocolSpec, config: L7Config, real: list[Stream], rng: random.Random, runs: int,
                 p_mutate: float, check: Callable[[list | str], None], framers: Callable[[object], Iterable]) -> None:
    """``runs`` times a random one of the ``real`` streams, mutated (``fed_mutated``), through a new
    parser: check(result) after each feed and, while the flow goes on, the buffers of
    ``framers(parser)`` hold at most max_buffer bytes more than the payload."""
    for _ in range(runs):
        p = spec.parser(config)
        for r, data in fed_mutated(p, rng.choice(real), rng, p_mutate):
            check(r)
            if not ends(r):
                assert all(len(f.buf) <= config.max_buffer + len(data) for f in framers(p))


def fuzz_overwritten(parser, segs: list[Segment], rng: random.Random, check: Callable[[object, list | str], None],
                     overwrites: int, flip: bool = False) -> None:
    """``fed_overwritten``: check(parser, result) after each feed."""
    for r in fed_overwritten(parser, segs, rng, overwrites, flip):
        check(parser, r)


def fuzz_seeded(make_parser: Callable[[L7Config], object], segs: list[Segment],
                check: Callable[[object, list | str], None], overwrites: int, *, flip: bool = False,
                magic: bytes = b"", seeds: int = 300) -> None:
    """Per seed: the real segments with bytes overwritten (``fuzz_overwritten``) through a parser
    with a random max_buffer, then random blobs (``fed_blobs``) through a new default one."""
    for seed in range(seeds):
        rng = random.Random(seed)
        fuzz_overwritten(make_parser(L7Config(max_buffer=rng.choice([64, 512, 65536]))), segs, rng, check,
                         overwrites, flip)
        p = make_parser(L7Config())
        for r in fed_blobs(p, rng, magic=magic):
            check(p, r)


def in_order_fuzz_tests(name: str, make_parser: Callable[[], object], check: Callable[[list | str, object], None],
                        real: list[list[tuple[bool, bytes]]], mutate: Callable[[random.Random, bytes], bytes],
                        p_mutate: float, random_payload: Callable[[random.Random], bytes], seeds: tuple[int, int],
                        edit_at: int, edit_size: int, cut_max: int) -> tuple:
    """The fuzz tests of the parsers that pair in order (MySQL, Redis) on their ``real``
    conversations of (from_client, payload), ``check(result, parser)`` after every feed:
    (test_fuzz_seeded_mutations, test_fuzz_seeded_random_bytes, test_fuzz_hypothesis,
    test_fuzz_hypothesis_random), for the protocol's test module to bind under these names."""

    def test_fuzz_seeded_mutations() -> None:
        """3000 real conversations, mutated, cut short and with bytes not captured."""
        rng = random.Random(seeds[0])
        for _ in range(3000):
            conv = rng.choice(real)
            p = make_parser()
            for r in fed_conversation(p, conv, rng, mutate, p_mutate):
                check(r, p)

    def test_fuzz_seeded_random_bytes() -> None:
        rng = random.Random(seeds[1])
        for _ in range(500):
            p = make_parser()
            for r in fed_random(p, rng, random_payload):
                check(r, p)

    @FUZZ
    @given(st.integers(0, len(real) - 1),
           st.lists(st.tuples(st.integers(0, edit_at), st.binary(max_size=edit_size)), max_size=4),
           st.lists(st.integers(1, cut_max), max_size=6))
    def test_fuzz_hypothesis(conv_index, edits, cuts) -> None:
        """Real conversations with bytes overwritten, re-cut into segments of arbitrary sizes."""
        p = make_parser()
        for r in fed_edited(p, real[conv_index], edits, cuts):
            check(r, p)

    @settings(max_examples=300, deadline=None)
    @given(st.lists(st.tuples(st.booleans(), st.binary(max_size=64), st.integers(0, 300)), max_size=10))
    def test_fuzz_hypothesis_random(segments) -> None:
        p = make_parser()
        for r, _ in fed_chunks(p, [(data, fc, extra) for fc, data, extra in segments], seq=0, advance=False):
            check(r, p)

    for test in (test_fuzz_hypothesis, test_fuzz_hypothesis_random):
        # the same source serves several protocols: each its own key in Hypothesis' example database
        test.hypothesis.inner_test._hypothesis_internal_add_digest = name.encode()
    return test_fuzz_seeded_mutations, test_fuzz_seeded_random_bytes, test_fuzz_hypothesis, test_fuzz_hypothesis_random


# -- tshark --------------------------------------------------------------------------------------

needs_tshark = pytest.mark.skipif(shutil.which("tshark") is None, reason="tshark not installed")


def tshark(pcap: str, *args: str) -> str:
    """What ``tshark -n -r tests/data/<pcap>.pcap args…`` prints."""
    return subprocess.run(["tshark", "-n", "-r", str(DATA / f"{pcap}.pcap"), *args], capture_output=True,
                          text=True, check=True, timeout=120).stdout


def tshark_fields(pcap: str, fields: Iterable[str], *, display: str | None = None, decode: str | None = None,
                  separator: str = "\t", options: Iterable[str] = ()) -> list[list[str]]:
    """``-T fields``: one row per packet (``display``: a display filter; ``decode``: a "Decode As",
    e.g. ``tcp.port==6379,resp``), its fields' values split at ``separator``."""
    args = [*(("-d", decode) if decode else ()), *(("-Y", display) if display else ()), "-T", "fields"]
    if separator != "\t":
        args += ["-E", f"separator={separator}"]
    args += [*options, *(x for f in fields for x in ("-e", f))]
    return [line.split(separator) for line in tshark(pcap, *args).splitlines() if line]
