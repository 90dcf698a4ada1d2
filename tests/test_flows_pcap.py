"""L4 flows built from real traffic (pcaps captured with ../shared/netlab) against packet-level
truth computed by tshark (tests/data/truth/*.json, see tests/data/make_truth.py) and the facts the
lab's clients recorded (tests/data/clientlogs/)."""

from __future__ import annotations

import ipaddress
import re
from collections import defaultdict

import pytest

from tests.helpers import DATA, replay, truth

PCAPS = sorted(p.stem for p in DATA.glob("*.pcap"))


def _ip(row: dict, side: int) -> str:
    if row["is_ipv4"]:
        return str(ipaddress.IPv4Address(row[f"ip4_{side}"]))
    return str(ipaddress.IPv6Address(row[f"ip6_{side}"]))


def _by_conversation(rows: list[dict]) -> dict[tuple, dict]:
    """Our flows summed per (proto, client ip:port, server ip:port)."""
    out: dict[tuple, dict] = defaultdict(lambda: defaultdict(int))
    for r in rows:
        proto = {6: "tcp", 17: "udp"}.get(r["protocol"])
        if proto is None:
            continue
        key = (proto, _ip(r, 0), r["client_port"], _ip(r, 1), r["server_port"])
        acc = out[key]
        acc["flows"] += 1
        for k in ("packet_tx", "packet_rx", "byte_tx", "byte_rx", "retrans_tx", "retrans_rx", "ooo_tx", "ooo_rx"):
            acc[k] += r[k]
    return out


@pytest.mark.parametrize("name", PCAPS)
def test_packets_and_bytes_match_tshark(name: str) -> None:
    """Every tshark conversation is exactly one flow with the same frames and bytes per direction;
    no flow exists that tshark does not know (tunnel underlays are decapsulated, not flows)."""
    writer, col = replay(name)
    ours = _by_conversation(writer.l4_rows())
    convs = [c for c in truth(name)["conversations"] if not c["tunnel_outer"]]
    assert len(ours) == len(convs)
    for c in convs:
        fwd = (c["proto"], c["a"], c["a_port"], c["b"], c["b_port"])
        rev = (c["proto"], c["b"], c["b_port"], c["a"], c["a_port"])
        assert (fwd in ours) != (rev in ours), f"{name}: {fwd} missing or doubled"
        if fwd in ours:       # A is the client
            got = ours[fwd]
            want = (c["frames_ab"], c["frames_ba"], c["bytes_ab"], c["bytes_ba"])
        else:
            got = ours[rev]
            want = (c["frames_ba"], c["frames_ab"], c["bytes_ba"], c["bytes_ab"])
        assert got["flows"] == 1, f"{name}: {fwd} split into {got['flows']} flows"
        assert (got["packet_tx"], got["packet_rx"], got["byte_tx"], got["byte_rx"]) == want, fwd
    assert col.table.stats["decode_skipped"] == 0
    assert col.table.nflows == 0                     # every flow got its final row


def _rows(name: str) -> list[dict]:
    writer, _ = replay(name)
    return writer.l4_rows()


def test_tcp_rst_close_types() -> None:
    """Closed port: SYN answered by RST → ServerReset (15). Partial response then RST from the
    server → TcpServerRst (2). Both count as server errors (status 3)."""
    rows = _rows("tcp_rst")
    by_port = defaultdict(list)
    for r in rows:
        by_port[r["server_port"]].append(r)
    assert sorted((r["close_type"], r["status"]) for r in by_port[9]) == [(15, 3)] * 3
    assert sorted((r["close_type"], r["status"]) for r in by_port[9001]) == [(2, 3)] * 2
    for r in by_port[9]:
        assert (r["packet_tx"], r["packet_rx"], r["syn_count"], r["synack_count"]) == (1, 1, 1, 0)
        assert r["rtt"] == 0                          # no handshake, no RTT
    for r in by_port[9001]:
        assert r["rtt"] > 0 and r["rtt_client"] > 0 and r["rtt_server"] > 0
        assert r["rtt"] == pytest.approx(r["rtt_client"] + r["rtt_server"], abs=1)
        assert r["art_count"] == 1 and r["srt_count"] == 1
        assert r["l4_byte_rx"] == len(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\npartial")


def test_syn_dropped_by_network_policy() -> None:
    """nftables drops SYNs to 9090: the client's SYN and its 3 retries, never answered →
    ClientSynRepeat "Est. – Server SYN Miss" (7), status server error."""
    (r,) = _rows("syn_drop")
    assert (r["close_type"], r["status"], r["server_port"]) == (7, 3, 9090)
    assert (r["packet_tx"], r["packet_rx"], r["syn_count"], r["retrans_syn"], r["retrans_tx"]) == (4, 0, 4, 3, 3)
    assert r["direction_score"] == 255 and r["observation_point"] == "c"


def test_retransmissions_match_the_kernel_and_tshark() -> None:
    """Random drops after the capture point: every lost segment and its resend are in the pcap.
    The server's retransmitted segments (SYN-ACK included) equal its kernel's TcpRetransSegs,
    and per direction retrans + out-of-order equals tshark's retransmission + out-of-order flags."""
    rows = _rows("retrans")
    kernel = int(re.search(r"retransmitted (\d+) segments", (DATA / "clientlogs" / "retrans.log").read_text())[1])
    assert sum(r["retrans_rx"] for r in rows) == kernel
    ours = _by_conversation(rows)
    for c in truth("retrans")["conversations"]:
        got = ours[(c["proto"], c["a"], c["a_port"], c["b"], c["b_port"])]
        assert got["retrans_tx"] + got["ooo_tx"] == c["tshark_retrans_ab"] + c["tshark_ooo_ab"]
        assert got["retrans_rx"] + got["ooo_rx"] == c["tshark_retrans_ba"] + c["tshark_ooo_ba"]
    assert all(r["close_type"] == 1 for r in rows)


@pytest.mark.parametrize("name,tunnel_type,tunnel_id,outer", [
    ("http_vxlan", 1, 42, ("10.99.0.2", "10.99.0.1")),
    ("http_geneve", 4, 7, ("10.99.0.2", "10.99.0.1")),
    ("http_geneve6", 4, 7, ("fd00:99::2", "fd00:99::1")),
    ("http_ipip", 2, 0, ("10.99.0.2", "10.99.0.1")),
])
def test_tunnels_are_decapsulated(name: str, tunnel_type: int, tunnel_id: int, outer: tuple[str, str]) -> None:
    """Inner flows with the outermost tunnel recorded per direction; a node NIC that
    encapsulates sees the client end as c-nd."""
    rows = _rows(name)
    assert rows
    for r in rows:
        assert (r["tunnel_type"], r["tunnel_tier"], r["tunnel_tx_id"], r["tunnel_rx_id"]) == \
            (tunnel_type, 1, tunnel_id, tunnel_id)
        if ":" in outer[0]:
            tx = (str(ipaddress.IPv6Address(r["tunnel_tx_ip6_0"])), str(ipaddress.IPv6Address(r["tunnel_tx_ip6_1"])))
            rx = (str(ipaddress.IPv6Address(r["tunnel_rx_ip6_0"])), str(ipaddress.IPv6Address(r["tunnel_rx_ip6_1"])))
            assert r["tunnel_is_ipv4"] == 0
        else:
            tx = (str(ipaddress.IPv4Address(r["tunnel_tx_ip4_0"])), str(ipaddress.IPv4Address(r["tunnel_tx_ip4_1"])))
            rx = (str(ipaddress.IPv4Address(r["tunnel_rx_ip4_0"])), str(ipaddress.IPv4Address(r["tunnel_rx_ip4_1"])))
            assert r["tunnel_is_ipv4"] == 1
        assert tx == outer and rx == outer[::-1]
        assert r["observation_point"] == "c-nd"
        assert _ip(r, 0).endswith(".2") and _ip(r, 1).endswith(".1")


def test_vlan_and_ipv6() -> None:
    vlan = _rows("http_vlan")
    assert {r["vlan"] for r in vlan} == {100}
    assert {r["observation_point"] for r in vlan} == {"c"}
    v6 = _rows("ipv6")
    assert {r["is_ipv4"] for r in v6} == {0}
    assert {_ip(r, 1) for r in v6} == {"fd00:99::1"}
    assert all(r["eth_type"] == 0x86DD for r in v6)


def test_http_keepalive_connection_timings() -> None:
    """40 GETs on one keep-alive connection: one flow, 40 application responses (art),
    a full handshake RTT, normal close by FIN (1)."""
    rows = [r for r in _rows("http1") if r["server_port"] == 80]
    big = max(rows, key=lambda r: r["packet_tx"])
    assert big["art_count"] == 40
    assert big["close_type"] == 1 and big["status"] == 0
    assert big["rtt"] > 0 and big["syn_count"] == 1 and big["synack_count"] == 1
    assert big["~fin_tx"] + big["~fin_rx"] == 2
    assert big["art_max"] >= big["art_sum"] / big["art_count"] > 0


def test_dns_udp_flows() -> None:
    """Each dig query is its own UDP flow (new source port), request → response gives art."""
    rows = _rows("dns")
    udp = [r for r in rows if r["protocol"] == 17]
    tcp = [r for r in rows if r["protocol"] == 6]
    assert len(udp) == 63 and len(tcp) == 2
    assert all(r["server_port"] == 53 and r["close_type"] == 1 and r["art_count"] == 1 for r in udp)
    assert all(r["direction_score"] == 0 for r in udp)         # port heuristic, not a handshake
    assert all(r["direction_score"] == 255 for r in tcp)


def test_metrics_from_flows() -> None:
    """network_map sums what the flows carried; single-side rows exist only for the c / s / local
    ends and are keyed by the client IP here (the capture is on the client's NIC)."""
    writer, _ = replay("tcp_rst", "syn_drop")
    flows = writer.l4_rows()
    m1s = writer.metrics("flow_metrics.network_map.1s")
    m1m = writer.metrics("flow_metrics.network_map.1m")
    single = writer.metrics("flow_metrics.network.1s")
    for t in (m1s, m1m):
        assert sum(t["packet_tx"].to_pylist()) == sum(r["packet_tx"] for r in flows)
        assert sum(t["byte_rx"].to_pylist()) == sum(r["byte_rx"] for r in flows)
        assert sum(t["new_flow"].to_pylist()) == len(flows)
        assert sum(t["closed_flow"].to_pylist()) == len(flows)
        assert sum(t["server_reset"].to_pylist()) == 3
        assert sum(t["server_rst_flow"].to_pylist()) == 2
        assert sum(t["server_syn_miss"].to_pylist()) == 1
        assert sum(t["server_establish_fail"].to_pylist()) == 4      # 3 reset + 1 syn miss
        assert sum(t["retrans_syn"].to_pylist()) == 3
    assert set(single["role"].to_pylist()) == {0}
    assert {str(ipaddress.IPv4Address(i)) for i in single["ip4"].to_pylist()} == {"10.99.0.2"}
    assert sum(single["packet_tx"].to_pylist()) == sum(r["packet_tx"] for r in flows)
    assert set(single["server_port"].to_pylist()) == {0}


def test_local_ip_overrides_the_guess() -> None:
    """--local-ip names the capturing host: given the server's IP, the same capture reads as taken
    on the server's NIC (observation point s, single-side rows of role server with its port)."""
    from flowscope.config import Config

    cfg = Config()
    cfg.capture.local_ips = ["10.99.0.1"]
    writer, _ = replay("tcp_rst", cfg=cfg)
    rows = writer.l4_rows()
    assert {r["observation_point"] for r in rows} == {"s"}
    assert {(r["l2_end_0"], r["l2_end_1"]) for r in rows} == {(0, 1)}
    single = writer.metrics("flow_metrics.network.1s")
    assert set(single["role"].to_pylist()) == {1}
    assert {str(ipaddress.IPv4Address(i)) for i in single["ip4"].to_pylist()} == {"10.99.0.1"}
    assert set(single["server_port"].to_pylist()) == {9, 9001}
    # seen from the server, its tx is what the server sent: the RST/ACKs and partial responses
    assert sum(single["packet_tx"].to_pylist()) == sum(r["packet_rx"] for r in rows)
