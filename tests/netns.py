"""Throwaway network namespaces joined by a veth pair, and a TCP client/server exchanging payloads
of known sizes between them: the ground truth for live-capture tests (they need root)."""

from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass

import pytest


def live(fn):
    """Tests that build namespaces and capture for real."""
    fn = pytest.mark.skipif(shutil.which("ip") is None, reason="needs iproute2's ip")(fn)
    fn = pytest.mark.skipif(os.geteuid() != 0, reason="live capture needs root (AF_PACKET + setns)")(fn)
    return pytest.mark.live(fn)


N_CONN = 20
REQ_SIZES = [100 + 37 * i for i in range(N_CONN)]
PORT = 8080
SMALL_RING = {"block_size": 1 << 16, "block_count": 16, "retire_ms": 20}

SERVER = """
import socket, socketserver, struct, sys
class H(socketserver.BaseRequestHandler):
    def handle(self):
        s = self.request
        want = b""
        while len(want) < 4:
            want += s.recv(4 - len(want))
        n = struct.unpack("!I", want)[0]
        got = 0
        while got < n:
            got += len(s.recv(n - got))
        reply = 2 * n + 100
        s.sendall(struct.pack("!I", reply) + b"r" * reply)
socketserver.ThreadingTCPServer.allow_reuse_address = True
srv = socketserver.ThreadingTCPServer((sys.argv[1], int(sys.argv[2])), H)
print("ready", flush=True)
srv.serve_forever()
"""

CLIENT = """
import socket, struct, sys
host, port, sizes = sys.argv[1], int(sys.argv[2]), [int(x) for x in sys.argv[3].split(",")]
for n in sizes:
    c = socket.create_connection((host, port))
    c.sendall(struct.pack("!I", n) + b"q" * n)
    data = b""
    while True:
        chunk = c.recv(65536)
        if not chunk:
            break
        data += chunk
    assert len(data) == 4 + 2 * n + 100, len(data)
    c.close()
"""


def sh(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, check=check, capture_output=True, text=True, timeout=60)


@dataclass
class NetPair:
    a: str  # namespace names
    b: str
    ip_a: str
    ip_b: str
    subnet: int

    def exec_a(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return sh("ip", "netns", "exec", self.a, *args, check=check)

    def mac(self, netns: str, ifname: str) -> bytes:
        info = json.loads(sh("ip", "-n", netns, "-j", "link", "show", ifname).stdout)
        return bytes.fromhex(info[0]["address"].replace(":", ""))


def make_netpair() -> Iterator[NetPair]:
    tag = f"fs-test-{os.getpid()}-{random.randrange(16**4):04x}"
    x = random.randrange(1, 255)
    pair = NetPair(f"{tag}-a", f"{tag}-b", f"10.231.{x}.1", f"10.231.{x}.2", x)
    try:
        sh("ip", "netns", "add", pair.a)
        sh("ip", "netns", "add", pair.b)
        sh(
            "ip",
            "link",
            "add",
            "veth-a",
            "netns",
            pair.a,
            "type",
            "veth",
            "peer",
            "name",
            "veth-b",
            "netns",
            pair.b,
        )
        for ns, dev, ip in ((pair.a, "veth-a", pair.ip_a), (pair.b, "veth-b", pair.ip_b)):
            sh("ip", "-n", ns, "addr", "add", f"{ip}/24", "dev", dev)
            sh("ip", "-n", ns, "link", "set", dev, "up")
            sh("ip", "-n", ns, "link", "set", "lo", "up")
            if shutil.which("ethtool"):
                # without this veth hands the capture GSO super-frames larger than the MTU
                sh("ip", "netns", "exec", ns, "ethtool", "-K", dev, "tso", "off", "gso", "off", "gro", "off",
                   "tx", "off", "rx", "off", check=False)  # fmt: skip
        yield pair
    finally:
        for ns in (pair.a, pair.b):
            sh("ip", "netns", "del", ns, check=False)


def start_server(netpair: NetPair) -> Iterator[None]:
    proc = subprocess.Popen(
        ["ip", "netns", "exec", netpair.b, sys.executable, "-c", SERVER, netpair.ip_b, str(PORT)],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
        yield
    finally:
        proc.kill()
        proc.wait(timeout=10)


def run_client(pair: NetPair) -> None:
    sizes = ",".join(map(str, REQ_SIZES))
    pair.exec_a(sys.executable, "-c", CLIENT, pair.ip_b, str(PORT), sizes)
