"""L7 through the whole collector: protocol detection, pairing, l7_flow_log rows, the L7 counts on
l4_flow_log, and the application metrics, on the committed real traffic (tests/data) against
what the lab's clients recorded (tests/data/clientlogs)."""

from __future__ import annotations

import re
import struct
from collections import Counter

import pytest

from collector.flow.report import L7_COLUMNS
from flowscope.config import Config
from tests.helpers import DATA, replay

HTTP_PCAPS = ("http1", "http_vxlan", "http_geneve", "http_geneve6", "http_ipip", "http_vlan")


def l7_rows(writer) -> list[dict]:
    return [dict(zip(L7_COLUMNS, r, strict=True)) for b in writer.batches.get("flow_log.l7_flow_log", [])
            for r in b.rows]


def client_log_requests(name: str) -> Counter:
    """(status, method, port, path) of every request curl made, from its log."""
    out: Counter = Counter()
    for line in (DATA / "clientlogs" / f"{name}.log").read_text().splitlines():
        m = re.match(r"(\d{3}) ([A-Z]+) http://[^/]*?:(\d+)(/\S*)$", line)
        if m:
            out[(int(m[1]), m[2], int(m[3]), m[4])] += 1
    return out


@pytest.mark.parametrize("name", HTTP_PCAPS)
def test_every_http_request_is_one_session_with_curls_status(name: str) -> None:
    """Each request curl logged is exactly one session row: method, path, port and status as
    curl saw them, the response after the request, over plain Ethernet and every tunnel."""
    writer, col = replay(name)
    rows = l7_rows(writer)
    got = Counter((r["response_code"], r["request_type"], r["server_port"], r["request_resource"]) for r in rows)
    assert got == client_log_requests(name)
    assert {r["type"] for r in rows} == {2}
    assert all(r["l7_protocol"] == 20 and r["end_time"] >= r["start_time"] > 0 for r in rows)
    assert all(r["response_duration"] == r["end_time"] - r["start_time"] for r in rows)
    status = Counter(r["response_status"] for r in rows)
    codes = Counter(r["response_code"] for r in rows)
    assert status[4] == sum(n for c, n in codes.items() if 400 <= c < 500)
    assert status[3] == sum(n for c, n in codes.items() if c >= 500)
    assert col.snapshot()["l7"]["parsers_gave_up"] == 0


def test_l4_flows_and_metrics_carry_the_l7_counts() -> None:
    writer, _ = replay("http1")
    rows = l7_rows(writer)
    flows = writer.l4_rows()
    assert {f["l7_protocol"] for f in flows} == {20}
    assert {f["request_domain"] for f in flows} == {"10.99.0.1", "10.99.0.1:8080"}
    assert sum(f["l7_request"] for f in flows) == sum(f["l7_response"] for f in flows) == len(rows)
    assert sum(f["l7_client_error"] for f in flows) == sum(r["response_status"] == 4 for r in rows)
    assert sum(f["l7_server_error"] for f in flows) == sum(r["response_status"] == 3 for r in rows)
    assert sum(f["rrt_count"] for f in flows) == len(rows)
    assert sum(f["rrt_sum"] for f in flows) == sum(r["response_duration"] for r in rows)
    by_flow = Counter(r["flow_id"] for r in rows)
    assert all(by_flow[f["flow_id"]] == f["l7_request"] for f in flows)     # l7 rows link to their flow

    for table in ("flow_metrics.application_map.1s", "flow_metrics.application_map.1m"):
        app = writer.metrics(table)
        assert sum(app["request"].to_pylist()) == sum(app["response"].to_pylist()) == len(rows)
        assert sum(app["error"].to_pylist()) == sum(r["response_status"] in (3, 4) for r in rows)
        assert sum(app["rrt_sum"].to_pylist()) == sum(r["response_duration"] for r in rows)
        assert max(app["rrt_max"].to_pylist()) == max(r["response_duration"] for r in rows)
    by_endpoint = Counter()
    for r in writer.metrics("flow_metrics.application_map.1m").to_pylist():
        by_endpoint[r["endpoint"]] += r["request"]
    assert by_endpoint == Counter(r["endpoint"] for r in rows)
    single = writer.metrics("flow_metrics.application.1s")
    assert set(single["role"].to_pylist()) == {0} and sum(single["request"].to_pylist()) == len(rows)
    net = writer.metrics("flow_metrics.network_map.1m")
    assert sum(net["l7_request"].to_pylist()) == len(rows)
    assert sum(net["l7_error"].to_pylist()) == sum(r["response_status"] in (3, 4) for r in rows)


def test_http2_and_grpc_streams() -> None:
    writer, _ = replay("http2", "grpc")
    rows = l7_rows(writer)
    h2 = [r for r in rows if r["server_port"] == 8082]
    grpc = [r for r in rows if r["server_port"] == 50051]
    assert all(r["l7_protocol"] == 21 and r["request_id"] == r["request_id"] for r in h2)
    assert Counter(r["response_code"] for r in h2) == Counter(
        {200: 43, 404: 1, 503: 1, 201: 1, 204: 1})
    assert all(r["l7_protocol"] == 41 and r["endpoint"].startswith("/netlab.Echo/") for r in grpc)
    assert Counter((r["endpoint"], r["response_code"]) for r in grpc) == Counter(
        {("/netlab.Echo/Say", 0): 20, ("/netlab.Echo/Say", 5): 1, ("/netlab.Echo/Parts", 0): 1})
    (missing,) = [r for r in grpc if r["response_code"] == 5]
    assert missing["response_status"] == 4 and "missing-1" in missing["response_exception"]


def test_l7_can_be_turned_off_or_limited() -> None:
    cfg = Config()
    cfg.l7.enabled = False
    writer, _ = replay("http1", cfg=cfg)
    assert not l7_rows(writer) and {f["l7_protocol"] for f in writer.l4_rows()} == {0}
    cfg = Config()
    cfg.l7.protocols = ["DNS"]
    writer, _ = replay("http1", cfg=cfg)
    assert not l7_rows(writer)


# -- an unanswered request and the h2c upgrade, as packets through the flow table -----------------
def _tcp(src: int, dst: int, sport: int, dport: int, seq: int, ack: int, flags: int, data: bytes = b"") -> bytes:
    ip = struct.pack("!BBHHHBBHII", 0x45, 0, 40 + len(data), 0, 0x4000, 64, 6, 0, src, dst)
    tcp = struct.pack("!HHIIBBHHH", sport, dport, seq, ack, 0x50, flags, 65535, 0, 0)
    return b"\x02\x00\x00\x00\x00\x01\x02\x00\x00\x00\x00\x02\x08\x00" + ip + tcp + data


class Conversation:
    """A TCP connection written packet by packet, client 10.0.0.1:40000 → server 10.0.0.2:80."""

    def __init__(self, t0: int = 1_700_000_000_000_000) -> None:
        self.t = t0
        self.cseq, self.sseq = 1000, 5000
        self.packets: list[tuple] = []
        self._add(True, 0x02, b"")
        self.cseq += 1
        self._add(False, 0x12, b"")
        self.sseq += 1
        self._add(True, 0x10, b"")

    def _add(self, client: bool, flags: int, data: bytes) -> None:
        self.t += 1000
        if client:
            f = _tcp(0x0A000001, 0x0A000002, 40000, 80, self.cseq, self.sseq, flags, data)
        else:
            f = _tcp(0x0A000002, 0x0A000001, 80, 40000, self.sseq, self.cseq, flags, data)
        self.packets.append((self.t, f, len(f), 0, 0))

    def send(self, client: bool, data: bytes) -> None:
        self._add(client, 0x18, data)
        if client:
            self.cseq += len(data)
        else:
            self.sseq += len(data)


def _run(packets: list[tuple]):
    from collector.pipeline import Collector
    from tests.helpers import MemoryWriter

    writer = MemoryWriter()
    col = Collector(Config(), writer)

    class Source:
        def __init__(self) -> None:
            from collector.capture.base import CaptureNic

            self.nics = {0: CaptureNic(0, "eth0", "", b"\x02\x00\x00\x00\x00\x02", 1, 65535)}

        def batches(self):
            yield packets

        def stats(self):
            return {}

    col.run(Source())
    return l7_rows(writer), writer


def test_an_unanswered_request_is_reported_when_the_capture_ends() -> None:
    conv = Conversation()
    conv.send(True, b"GET /slow HTTP/1.1\r\nHost: x\r\n\r\n")
    conv.send(True, b"GET /never HTTP/1.1\r\nHost: x\r\n\r\n")
    conv.send(False, b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
    rows, writer = _run(conv.packets)
    assert [(r["type"], r["request_resource"], r["response_status"]) for r in rows] == [
        (2, "/slow", 0), (0, "/never", 5)]      # unknown: the capture ended before its timeout
    (flow,) = writer.l4_rows()
    assert (flow["l7_request"], flow["l7_response"]) == (2, 1)


def test_h2c_upgrade_switches_the_flow_to_http2() -> None:
    """curl --http2 on http://: an HTTP/1.1 request with Upgrade: h2c, 101, then HTTP/2; the
    upgraded request's HTTP/2 answer pairs with stream 1."""
    import h2.config
    import h2.connection

    conv = Conversation()
    req = (b"GET /up HTTP/1.1\r\nHost: web\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\n"
           b"HTTP2-Settings: AAMAAABkAAQCAAAAAAIAAAAA\r\n\r\n")
    conv.send(True, req)
    conv.send(False, b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: h2c\r\n\r\n")
    client = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    client.initiate_upgrade_connection()
    server = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False))
    server.initiate_upgrade_connection(b"AAMAAABkAAQCAAAAAAIAAAAA")
    conv.send(True, client.data_to_send())
    server.send_headers(1, [(":status", "200"), ("content-length", "2")])
    server.send_data(1, b"ok", end_stream=True)
    conv.send(False, server.data_to_send())
    rows, _ = _run(conv.packets)
    assert [(r["l7_protocol"], r["request_resource"], r["response_code"]) for r in rows] == [
        (20, "/up", 101), (21, "/up", 200)]


def test_an_unanswered_request_times_out_after_the_protocols_timeout() -> None:
    """HTTP waits 120 s for a response (datamodel §5.7): the request is reported as a timeout when
    the clock passes that, while its connection is still open."""
    conv = Conversation()
    conv.send(True, b"GET /hang HTTP/1.1\r\nHost: x\r\n\r\n")
    t_request = conv.t
    for _ in range(1, 14):                       # keep-alive ACKs every 10 s keep the flow alive
        conv.t += 10_000_000
        conv._add(False, 0x10, b"")
    rows, writer = _run(conv.packets)
    ((kind, resource, status, start, end),) = [
        (r["type"], r["request_resource"], r["response_status"], r["start_time"], r["end_time"]) for r in rows]
    assert (kind, resource, status) == (0, "/hang", 2)
    assert start == end == t_request
    flows = writer.l4_rows()                    # 130 s: two 60 s windows and the final row
    assert [f["close_type"] for f in flows] == [5, 5, 5]
    assert sum(f["l7_server_timeout"] for f in flows) == 1 and sum(f["l7_response"] for f in flows) == 0
    assert flows[-1]["l7_request"] == 1         # counted in the window where it timed out
    app = writer.metrics("flow_metrics.application_map.1s")
    assert sum(app["timeout"].to_pylist()) == 1 and sum(app["request"].to_pylist()) == 1


def test_a_negative_duration_costs_its_value_not_the_flush(caplog):
    """Metric columns are unsigned; a negative value (a response timed before its request by
    clocks that disagree) used to raise OverflowError and lose every row of the flush. It becomes
    0, is logged, and the other rows and columns stay as they were."""
    import logging

    from collector.metrics import _table

    with caplog.at_level(logging.WARNING, logger="flowscope.metrics"):
        t = _table(("rrt_max", "rrt_sum", "~skip"), [(5, 1.5, None), (-4830, 2.0, None), (7, 0.25, None)])
    assert t.to_pylist() == [{"rrt_max": 5, "rrt_sum": 1.5}, {"rrt_max": 0, "rrt_sum": 2.0},
                             {"rrt_max": 7, "rrt_sum": 0.25}]
    assert "1 negative value(s) in rrt_max set to 0" in caplog.text
