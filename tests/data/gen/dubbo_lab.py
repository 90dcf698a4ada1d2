#!/usr/bin/env python3
"""Make tests/data/dubbo.pcap: a real TCP exchange between a Dubbo consumer and a small fake Dubbo
provider, in the netlab namespaces, captured with tcpdump on the client's eth0.

No Dubbo provider runs here. The wire is built with dubbo-ssl-python (PyPI ``dubbo-ssl-python``, a
Dubbo 2.x client: 16-byte header + Hessian2), as far as that library goes:
* requests: whole frames from ``dubbo_ssl.codec.encoder.Request(...).encode()`` (header, invoke
  id from the library's counter, hessian2 body: dubbo version, path, version, method, parameter
  types, arguments, attachments map);
* heartbeats both ways: the library's own frames (``CLI_HEARTBEAT_REQ_HEAD`` / ``_RES_HEAD`` +
  id + ``CLI_HEARTBEAT_TAIL``);
* response bodies: the library's hessian2 value encoder (``Request._encode_single_value``):
  result flag + value, a ``java.lang.IllegalArgumentException`` object, or the error string;
* decoding on both sides: the library's hessian2 reader (``dubbo_ssl.codec.decoder.Response``)
  and ``parse_response_head``.
Hand-made here, per the Dubbo protocol spec: the 16-byte response header (magic, flag = hessian2
serialization id 2, status, request id, body length; the library only consumes responses) and the
one-way request (the library's frame with the two-way bit 0x40 cleared). The statuses are chosen
by the fake provider per method; 30 (CLIENT_TIMEOUT) is normally made locally by a consumer and
never sent, it is on the wire here to exercise the client-error mapping.

    sudo bash /work/shared/netlab/lab.sh up          # once
    sudo .venv/bin/python tests/data/gen/dubbo_lab.py capture tests/data/dubbo.pcap
"""

from __future__ import annotations

import socket
import struct
import time

import lab
from dubbo_ssl.codec.decoder import Response, parse_response_head
from dubbo_ssl.codec.encoder import Object, Request
from dubbo_ssl.common.constants import CLI_HEARTBEAT_REQ_HEAD, CLI_HEARTBEAT_RES_HEAD, CLI_HEARTBEAT_TAIL

SRV, PORT = lab.SRV, 20880
DEMO, AUDIT, MISSING = "com.example.DemoService", "com.example.AuditService", "com.example.MissingService"
TRACEPARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
HESSIAN2 = 2
# DubboCodec result flags (hessian2 int at the start of an OK response body)
RESPONSE_WITH_EXCEPTION, RESPONSE_VALUE, RESPONSE_NULL_VALUE = 0, 1, 2


def hessian2(*values) -> bytes:
    """Values encoded one after the other with dubbo-ssl-python's hessian2 encoder."""
    enc = Request({})
    return bytes(b & 0xFF for v in values for b in enc._encode_single_value(v))


def response_frame(req_id: int, status: int, body: bytes, event: bool = False) -> bytes:
    """Dubbo response header (hand-made per spec: magic 0xdabb, flag, status, id, length) + body."""
    flag = HESSIAN2 | (0x20 if event else 0)
    return struct.pack(">HBBqi", 0xDABB, flag, status, req_id, len(body)) + body


def heartbeat_request(req_id: int) -> bytes:
    return bytes(CLI_HEARTBEAT_REQ_HEAD + list(struct.pack(">q", req_id)) + CLI_HEARTBEAT_TAIL)


def heartbeat_response(req_id: bytes) -> bytes:
    return bytes(CLI_HEARTBEAT_RES_HEAD + list(req_id) + CLI_HEARTBEAT_TAIL)


# --- fake provider ----------------------------------------------------------------------------

ERRORS = {   # (service, method) -> (status, message) a provider would send
    (DEMO, "slowCall"): (31, "Waiting server-side response timeout by scan timer. start time: 2024-01-01 "
                             "00:00:00.000, end time: 2024-01-01 00:00:01.000, timeout: 1000 ms"),
    (DEMO, "badArgs"): (40, "Fail to decode request due to: RpcInvocation [methodName=badArgs]"),
    (DEMO, "overload"): (80, f"Server side({SRV},{PORT}) thread pool is exhausted, detail msg:Thread pool "
                             "is EXHAUSTED! Thread Name: DubboServerHandler"),
    (DEMO, "clientTimeout"): (30, "Waiting server-side response timeout."),
}


def reply(req_id: int, body: bytes) -> bytes | None:
    """The provider's answer to one request body (None: nothing to send)."""
    r = Response(body)
    _dubbo_version, path, _version, method, _types = (r.read_next() for _ in range(5))
    if (path, method) in ERRORS:
        status, msg = ERRORS[path, method]
        return response_frame(req_id, status, hessian2(msg))
    if path != DEMO:
        return response_frame(req_id, 70, hessian2(
            f"Not found exported service: {path}:1.0.0:{PORT} in [{DEMO}:1.0.0:{PORT}], "
            "may be version or group mismatch"))
    args = [r.read_next() for _ in range(1 if method in ("sayHello", "getUser", "echo") else 0)]
    if method == "sayHello":
        return response_frame(req_id, 20, hessian2(RESPONSE_VALUE, f"Hello {args[0]}"))
    if method == "echo":
        return response_frame(req_id, 20, hessian2(RESPONSE_VALUE, args[0]))
    if method == "getUser" and args[0] > 0:
        return response_frame(req_id, 20, hessian2(RESPONSE_NULL_VALUE))
    if method == "getUser":
        frame = Object("java.lang.StackTraceElement", {"declaringClass": "com.example.DemoServiceImpl",
                                                       "methodName": "getUser", "fileName": "DemoServiceImpl.java",
                                                       "lineNumber": 42})
        exc = Object("java.lang.IllegalArgumentException", {"detailMessage": "id must be positive",
                                                            "stackTrace": [frame]})
        return response_frame(req_id, 20, hessian2(RESPONSE_WITH_EXCEPTION, exc))
    return response_frame(req_id, 70, hessian2(f"Not found method {method} in {DEMO}"))


def answer_frame(frame: bytes) -> bytes:
    """What the provider sends back for one frame."""
    flag, req_id = frame[2], struct.unpack_from(">q", frame, 4)[0]
    if flag & 0x20:                                 # event: answer a heartbeat request, drop a response
        return heartbeat_response(frame[4:12]) if flag & 0x80 else b""
    answer = reply(req_id, frame[16:])
    return answer if flag & 0x40 and answer else b""    # one-way requests get no answer


def greet(n: int, conn: socket.socket) -> None:
    """On the second connection, a heartbeat of our own first, as a provider does to an idle consumer."""
    if n == 1:
        time.sleep(0.05)
        conn.sendall(heartbeat_request(1_000_000))


def serve(host: str, port: int, connections: int) -> None:
    """Answer every complete frame of one recv() in one send (pipelined requests, pipelined
    responses); on the second connection send a heartbeat of our own first."""
    lab.serve_frames(host, port, connections, 16, answer_frame, greet)


# --- consumer ---------------------------------------------------------------------------------

def call(path: str, method: str, *args, context: dict | None = None, two_way: bool = True) -> tuple[int, bytes]:
    """(invoke id, frame) from dubbo-ssl-python's request encoder."""
    req = Request({"dubbo_version": "2.0.2", "path": path, "version": "1.0.0", "method": method,
                   "arguments": list(args), "context": context, "group": "lab"})
    frame = bytearray(req.encode())
    if not two_way:
        frame[2] &= ~0x40 & 0xFF
    return req.invoke_id, bytes(frame)


def show(frame: bytes) -> str:
    """Decode a response the way dubbo-ssl-python's connection does."""
    req_id = struct.unpack_from(">q", frame, 4)[0]
    try:
        heartbeat, _ = parse_response_head(frame[:16])
    except Exception as e:                          # non-20 status: the body is the error message
        return f"id={req_id} status={frame[3]} {type(e).__name__}({e}): {Response(frame[16:]).read_next()[:60]!r}"
    if heartbeat:
        return f"id={req_id} heartbeat {'request' if heartbeat == 2 else 'response'}"
    r = Response(frame[16:])
    flag = r.read_int()
    if flag == RESPONSE_WITH_EXCEPTION:
        err = r.read_error()
        return f"id={req_id} status=20 exception {err['cause']}: {err['detailMessage']}"
    value = r.read_next() if flag == RESPONSE_VALUE else None
    return f"id={req_id} status=20 value={str(value)[:40]!r}"


def expect(s: socket.socket, n: int) -> None:
    for _ in range(n):
        frame = lab.recv_frame(s, 16, "provider")
        print("  <-", show(frame))
        if frame[2] & 0xA0 == 0xA0:                 # the provider's heartbeat: answer as the library does
            s.sendall(heartbeat_response(frame[4:12]))
            print("  -> heartbeat response")


def client(host: str, port: int) -> None:
    s = lab.connect(host, port)
    steps = [
        [call(DEMO, "sayHello", "flowscope")],
        [call(DEMO, "sayHello", "traced", context={"traceparent": TRACEPARENT})],
        [call(DEMO, "getUser", 42)],
        [call(DEMO, "getUser", -1)],
        [(None, heartbeat_request(900))],
        [call(AUDIT, "log", "login ok", two_way=False)],
        [call(DEMO, "slowCall")],
        [call(DEMO, "badArgs")],
        [call(MISSING, "ping")],
        [call(DEMO, "overload")],
        [call(DEMO, "clientTimeout")],
        [call(DEMO, "echo", "a"), call(DEMO, "echo", "y" * 3000)],   # one segment out, one burst back
    ]
    for batch in steps:
        s.sendall(b"".join(f for _, f in batch))
        for req_id, f in batch:
            print(f"-> id={req_id if req_id is not None else struct.unpack_from('>q', f, 4)[0]} "
                  f"flag={f[2]:#04x} {len(f)} bytes")
        expect(s, sum(1 for _, f in batch if f[2] & 0x40))
        time.sleep(0.05)
    s.close()
    time.sleep(0.2)
    s = lab.connect(host, port)                     # the provider opens with a heartbeat request
    expect(s, 1)
    time.sleep(0.05)
    req_id, f = call(DEMO, "sayHello", "again")
    s.sendall(f)
    print(f"-> id={req_id} {len(f)} bytes")
    expect(s, 1)
    s.close()


if __name__ == "__main__":
    lab.main(__file__, __doc__, PORT, serve, client)
