"""What the fixture generators of this folder share (kafka_lab.py, dubbo_lab.py): TCP plumbing for a
fake server and a scripted client that exchange length-framed messages, the capture in the netlab
namespaces, and the command line (``serve`` / ``client`` / ``capture``). Not run by itself; the
generators import it from beside them (README.md).

Framing: a message is a ``head_len``-byte header whose last 4 bytes are the body's length
(big-endian), then the body: Kafka's 4-byte length prefix, Dubbo's 16-byte header.
"""

from __future__ import annotations

import argparse
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

SRV = "10.99.0.1"            # netlab-srv; the client runs in netlab-cli (10.99.0.2)


def _body_len(head: bytes | bytearray, head_len: int) -> int:
    return struct.unpack_from(">i", head, head_len - 4)[0]


def connect(host: str, port: int) -> socket.socket:
    s = socket.create_connection((host, port))
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return s


def recv_frame(s: socket.socket, head_len: int, peer: str) -> bytes:
    """One whole message (header and body) from ``s``."""
    def exact(n: int) -> bytes:
        b = b""
        while len(b) < n:
            chunk = s.recv(n - len(b))
            if not chunk:
                raise ConnectionError(f"{peer} closed the connection")
            b += chunk
        return b
    head = exact(head_len)
    return head + exact(_body_len(head, head_len))


def serve_frames(host: str, port: int, connections: int, head_len: int, answer: Callable[[bytes], bytes],
                 greet: Callable[[int, socket.socket], None] | None = None) -> None:
    """Accept ``connections`` connections one after the other (``greet(n, conn)`` first, if given)
    and answer every complete message of what one recv() brought with one send, so that pipelined
    requests get pipelined responses, as a server's network thread would. ``answer(frame)``: the
    bytes to send back for one message (b"": none)."""
    ls = socket.socket()
    ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    ls.bind((host, port))
    ls.listen()
    for n in range(connections):
        conn, _ = ls.accept()
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if greet is not None:
            greet(n, conn)
        buf = b""
        while data := conn.recv(65536):
            buf += data
            out = b""
            while len(buf) >= head_len and len(buf) >= head_len + _body_len(buf, head_len):
                size = head_len + _body_len(buf, head_len)
                frame, buf = buf[:size], buf[size:]
                out += answer(frame)
            if out:
                conn.sendall(out)
        conn.close()
    ls.close()


def capture(script: str, out: Path, port: int) -> None:
    """``script serve`` in netlab-srv, tcpdump -s 0 on netlab-cli's eth0, then ``script client`` in
    netlab-cli; stops both (needs root and the lab up)."""
    me = [sys.executable, str(Path(script).resolve())]
    srv = subprocess.Popen(["ip", "netns", "exec", "netlab-srv", *me, "serve", "--connections", "2"])
    for _ in range(40):
        ss = subprocess.run(["ip", "netns", "exec", "netlab-srv", "ss", "-ltnH", f"sport = :{port}"],
                            capture_output=True, text=True).stdout
        if ss.strip():
            break
        time.sleep(0.1)
    tmp = out.with_suffix(".tmp.pcap")
    dump = subprocess.Popen(["ip", "netns", "exec", "netlab-cli", "tcpdump", "-i", "eth0", "-s", "0", "-U", "-n",
                             "-Z", "root", "-w", str(tmp), f"tcp port {port}"], stderr=subprocess.PIPE, text=True)
    dump.stderr.readline()          # "listening on eth0 …"
    time.sleep(0.5)
    try:
        subprocess.run(["ip", "netns", "exec", "netlab-cli", *me, "client"], check=True)
        time.sleep(1)
    finally:
        dump.send_signal(2)
        print(dump.communicate()[1].strip())
        if srv.poll() is None:
            srv.terminate()
        srv.wait(timeout=5)
    tmp.replace(out)
    print(f"{out}: {out.stat().st_size} bytes")


def main(script: str, doc: str, port: int, serve: Callable[[str, int, int], None],
         client: Callable[[str, int], None]) -> None:
    """The generators' command line: ``serve [--host --port --connections]``, ``client [--host
    --port]``, ``capture OUT``."""
    ap = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("serve")
    s.add_argument("--host", default=SRV)
    s.add_argument("--port", type=int, default=port)
    s.add_argument("--connections", type=int, default=2)
    c = sub.add_parser("client")
    c.add_argument("--host", default=SRV)
    c.add_argument("--port", type=int, default=port)
    k = sub.add_parser("capture")
    k.add_argument("out", type=Path)
    a = ap.parse_args()
    if a.cmd == "serve":
        serve(a.host, a.port, a.connections)
    elif a.cmd == "client":
        client(a.host, a.port)
    else:
        capture(script, a.out, port)
