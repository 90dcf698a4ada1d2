#!/usr/bin/env python3
"""A multi-hop request chain in network namespaces, captured at five points, with the OpenTelemetry
spans its instrumented service exported over OTLP/HTTP: the fixture of the tracing tests
(tests/test_tracing*.py) and of bench/tracing.py.

What it builds (all names start with ``fstr-``; other labs' namespaces are not touched)::

    client ──front──► proxy (nginx) ──back──► api ──► redis   (redis-server)
    10.77.1.10        10.77.1.20 eth0          │  ──► db      (mariadbd)
                      10.77.2.20 eth1          └──► stock     (plain python http.server)
                                     api 10.77.2.30, stock .40, redis .50, db .60

* two Linux bridges in ``fstr-net`` (``brf`` front, ``brb`` back), every host a namespace with an
  ``eth0`` veth on one of them (the proxy also an ``eth1`` on the back bridge); fixed MACs
  ``02:77:00:00:<net>:<host>``, offloads off (wire-sized frames, valid checksums), IPv6 off (no ND);
* **nginx** reverse proxy: ``proxy_pass`` to the api, ``proxy_set_header X-Request-ID
  $request_id`` (it injects the id upstream) and ``add_header X-Request-ID $request_id always``
  (the client sees it in the response): DeepFlow's "gateway injects X-Request-ID" case;
* **api**: Python HTTP/1.1 service instrumented by hand with the OpenTelemetry SDK (a SERVER span per
  request with the semantic-convention attributes, CLIENT spans around its Redis, MariaDB and stock
  calls, one INTERNAL span), exported by the SDK's own ``OTLPSpanExporter`` (protobuf over HTTP,
  BatchSpanProcessor) to ``otlp-sink``, a recorder on 127.0.0.1:4318 inside the api namespace (so
  the export is not in the captures). The stock call carries ``traceparent``;
* **stock**: the same kind of Python service, *not* instrumented; **redis-server**, **mariadbd**
  (a fresh datadir per run, a table ``shop.orders``).

Requests (client → proxy, one connection each; the last two concurrently): GET /api/order/1, /2,
/3 (stock answers 503, the api 502), /api/cart/7 (4 items: 4 Redis GETs, 4 stock calls, one SQL
query, a Redis SET: 30 spans in all), /api/order/4 and /5 at the same time.

Captures: ``tcpdump -s 0`` on client/eth0, proxy/eth0, proxy/eth1, api/eth0 and stock/eth0, merged
in time order into one pcapng whose interface blocks carry the names (``client/eth0`` …) and MACs,
and whose packets carry their direction (epb_flags). Outputs::

    OUTDIR/trace_lab.pcapng            the five capture points
    OUTDIR/trace_lab.otlp.jsonl        every OTLP/HTTP export as sent: {"content_type", "body_b64"}
    OUTDIR/truth/trace_lab.json        hosts, capture points, and per request: path, status,
                                       X-Request-ID seen by the client, the api's trace id, span count
    OUTDIR/inventory/trace_lab.yaml    the hosts as a flowscope inventory (names the services)

Rerun (root; nginx, redis-server, mariadbd, tcpdump; ~20 s; the venv's python has the SDK)::

    sudo .venv/bin/python tests/data/gen/trace_lab.py capture tests/data
    sudo .venv/bin/python tests/data/gen/trace_lab.py up      # the lab alone, servers running
    sudo .venv/bin/python tests/data/gen/trace_lab.py down    # stop everything, delete fstr-*

Timestamps, ports, TCP sequence numbers, request and trace ids differ from run to run; addresses,
names and the shape of every trace do not. State and logs: /tmp/fstr-trace (``FSTR_RUN``).
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import json
import os
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path

RUN = Path(os.environ.get("FSTR_RUN", "/tmp/fstr-trace"))
ME = Path(__file__).resolve()
NET = "fstr-net"
OTLP_PORT = 4318
HTTP_PORT, STOCK_PORT, REDIS_PORT, DB_PORT = 8080, 8081, 6379, 3306
DB_USER, DB_PASS = "shop", "shop-pw"

# host → (namespace, [(nic, bridge, ip)]); MACs 02:77:00:00:<bridge 1|2>:<last octet>
HOSTS: dict[str, list[tuple[str, str, str]]] = {
    "client": [("eth0", "brf", "10.77.1.10")],
    "proxy": [("eth0", "brf", "10.77.1.20"), ("eth1", "brb", "10.77.2.20")],
    "api": [("eth0", "brb", "10.77.2.30")],
    "stock": [("eth0", "brb", "10.77.2.40")],
    "redis": [("eth0", "brb", "10.77.2.50")],
    "db": [("eth0", "brb", "10.77.2.60")],
}
IP = {h: nics[-1][2] for h, nics in HOSTS.items()}
PROXY_FRONT = HOSTS["proxy"][0][2]
CAPTURES = [("client", "eth0"), ("proxy", "eth0"), ("proxy", "eth1"), ("api", "eth0"), ("stock", "eth0")]
ORDERS = [1, 2, 3]
CONCURRENT = [4, 5]
CART_ITEMS = [11, 12, 13, 14]
STOCK_FAILS = {3}            # stock answers 503 for these ids


def ns(host: str) -> str:
    return f"fstr-{host}"


def mac(nic_ip: str) -> str:
    a = nic_ip.split(".")
    return f"02:77:00:00:{int(a[2]):02x}:{int(a[3]):02x}"


def log(msg: str) -> None:
    print(f"trace_lab: {msg}", flush=True)


def sh(*cmd: str, check: bool = True) -> subprocess.CompletedProcess:
    r = subprocess.run(cmd, capture_output=True, text=True)
    if check and r.returncode:
        raise SystemExit(f"trace_lab: failed ({r.returncode}): {' '.join(cmd)}\n{r.stderr.strip()}")
    return r


def nsx(namespace: str, *cmd: str) -> list[str]:
    return ["ip", "netns", "exec", namespace, *cmd]


# ---------------------------------------------------------------- lab: namespaces, servers
def namespaces() -> list[str]:
    return [line.split()[0] for line in sh("ip", "netns", "list").stdout.splitlines() if line.strip()]


def quiet_ipv6(namespace: str) -> None:
    sh(*nsx(namespace, "sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1", "net.ipv6.conf.default.disable_ipv6=1"))


def offloads_off(namespace: str, dev: str) -> None:
    sh(*nsx(namespace, "ethtool", "-K", dev, "tx", "off", "rx", "off", "tso", "off", "gso", "off", "gro", "off"),
       check=False)


def net_up() -> None:
    sh("ip", "netns", "add", NET)
    quiet_ipv6(NET)
    sh("ip", "-n", NET, "link", "set", "lo", "up")
    for br in ("brf", "brb"):
        sh("ip", "-n", NET, "link", "add", br, "type", "bridge", "stp_state", "0", "forward_delay", "0")
        offloads_off(NET, br)
        sh("ip", "-n", NET, "link", "set", br, "up")
    for host, nics in HOSTS.items():
        n = ns(host)
        sh("ip", "netns", "add", n)
        quiet_ipv6(n)
        sh("ip", "-n", n, "link", "set", "lo", "up")
        for nic, br, ip in nics:
            peer = f"{host[:6]}-{nic}"
            sh("ip", "link", "add", peer, "netns", NET, "type", "veth", "peer", "name", nic, "netns", n)
            sh("ip", "-n", n, "link", "set", nic, "address", mac(ip))
            sh("ip", "-n", NET, "link", "set", peer, "master", br)
            offloads_off(NET, peer)
            offloads_off(n, nic)
            sh("ip", "-n", n, "addr", "add", f"{ip}/24", "dev", nic)
            sh("ip", "-n", NET, "link", "set", peer, "up")
            sh("ip", "-n", n, "link", "set", nic, "up")


def kill_ns(namespace: str) -> None:
    """Stop every process in ``namespace`` (ours: only this script uses fstr-* names)."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        pids = [int(x) for x in sh("ip", "netns", "pids", namespace, check=False).stdout.split()]
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
        for _ in range(50):
            if not sh("ip", "netns", "pids", namespace, check=False).stdout.split():
                return
            time.sleep(0.1)


def start(name: str, host: str, *cmd: str) -> subprocess.Popen:
    with open(RUN / f"{name}.log", "w") as out:
        pr = subprocess.Popen(nsx(ns(host), *cmd), stdout=out, stderr=subprocess.STDOUT,
                              stdin=subprocess.DEVNULL, start_new_session=True)
    (RUN / f"{name}.pid").write_text(f"{pr.pid}\n")
    return pr


def wait_port(host: str, port: int, what: str) -> None:
    for _ in range(200):
        if sh(*nsx(ns(host), "ss", "-ltnH", f"sport = :{port}"), check=False).stdout.strip():
            return
        time.sleep(0.1)
    raise SystemExit(f"trace_lab: {what} does not listen on {port} in {ns(host)} (logs in {RUN})")


NGINX_CONF = """worker_processes 1; daemon off; pid {run}/nginx/nginx.pid; error_log {run}/nginx/error.log;
events {{ worker_connections 64; }}
http {{
  access_log off;
  client_body_temp_path {run}/nginx/b; proxy_temp_path {run}/nginx/p; fastcgi_temp_path {run}/nginx/f;
  uwsgi_temp_path {run}/nginx/u; scgi_temp_path {run}/nginx/s;
  server {{
    listen {front}:80;
    location / {{
      proxy_pass http://{api}:{port};
      proxy_set_header X-Request-ID $request_id;
      add_header X-Request-ID $request_id always;
    }}
  }}
}}
"""


def db_up() -> None:
    data = RUN / "mysql"
    if data.exists():
        sh("rm", "-rf", str(data))
    data.mkdir(parents=True)
    sh("chown", "mysql:mysql", str(data))
    r = sh("mariadb-install-db", "--no-defaults", "--user=mysql", f"--datadir={data}", "--skip-test-db",
           "--auth-root-authentication-method=socket", check=False)
    if r.returncode:
        raise SystemExit(f"trace_lab: mariadb-install-db failed:\n{r.stdout}\n{r.stderr}")
    start("db", "db", "mariadbd", "--no-defaults", "--user=mysql", f"--datadir={data}", f"--socket={data}/sock",
          f"--pid-file={data}/pid", f"--bind-address={IP['db']}", f"--port={DB_PORT}", "--skip-name-resolve",
          "--skip-log-bin", "--innodb-buffer-pool-size=32M")
    for _ in range(300):
        if (data / "sock").exists():
            break
        time.sleep(0.1)
    items = ",".join(f"({i},'item-{i}',{i % 5 + 1})" for i in [*ORDERS, *CONCURRENT, *CART_ITEMS])
    sql = (f"CREATE DATABASE shop; CREATE USER '{DB_USER}'@'%' IDENTIFIED BY '{DB_PASS}'; "
           f"GRANT ALL ON shop.* TO '{DB_USER}'@'%'; "
           "CREATE TABLE shop.orders(id INT PRIMARY KEY, item VARCHAR(32), qty INT); "
           f"INSERT INTO shop.orders VALUES {items};")
    r = sh(*nsx(ns("db"), "mariadb", "--no-defaults", f"--socket={data}/sock", "-uroot", "-e", sql), check=False)
    if r.returncode:
        raise SystemExit(f"trace_lab: database setup failed: {r.stderr}")


def servers_up() -> None:
    (RUN / "nginx").mkdir(parents=True, exist_ok=True)
    (RUN / "nginx.conf").write_text(NGINX_CONF.format(run=RUN, front=PROXY_FRONT, api=IP["api"], port=HTTP_PORT))
    start("nginx", "proxy", "nginx", "-c", str(RUN / "nginx.conf"))
    start("redis", "redis", "redis-server", "--bind", IP["redis"], "--port", str(REDIS_PORT), "--protected-mode",
          "no", "--save", "", "--appendonly", "no", "--dir", str(RUN), "--daemonize", "no")
    db_up()
    start("stock", "stock", sys.executable, str(ME), "stock-server")
    (RUN / "otlp.jsonl").unlink(missing_ok=True)
    start("otlp-sink", "api", sys.executable, str(ME), "otlp-sink", "--out", str(RUN / "otlp.jsonl"))
    for host, port, what in (("proxy", 80, "nginx"), ("redis", REDIS_PORT, "redis"), ("db", DB_PORT, "mariadbd"),
                             ("stock", STOCK_PORT, "stock"), ("api", OTLP_PORT, "otlp-sink")):
        wait_port(host, port, what)
    start("api", "api", sys.executable, str(ME), "api-server")
    wait_port("api", HTTP_PORT, "api")


def cmd_down() -> None:
    ours = [n for n in namespaces() if n.startswith("fstr-")]
    for n in ours:
        kill_ns(n)
    for n in ours:
        sh("ip", "netns", "del", n, check=False)
    for f in RUN.glob("*.pid") if RUN.exists() else []:
        f.unlink()
    log(f"down ({len(ours)} namespaces deleted)")


def cmd_up() -> None:
    cmd_down()
    RUN.mkdir(parents=True, exist_ok=True)
    os.chmod(RUN, 0o755)                 # mariadbd (user mysql) and nginx workers read below it
    net_up()
    servers_up()
    log("up: " + ", ".join(f"{h} {IP[h]}" for h in HOSTS))


# ---------------------------------------------------------------- captures → one pcapng
class Capture:
    def __init__(self, host: str, nic: str) -> None:
        self.host, self.nic = host, nic
        self.path = RUN / f"cap-{host}-{nic}.pcap"
        self.path.unlink(missing_ok=True)
        self.err = RUN / f"tcpdump-{host}-{nic}.log"
        with open(self.err, "w") as e:
            self.proc = subprocess.Popen(nsx(ns(host), "tcpdump", "-i", nic, "-s", "0", "-U", "-n", "-Z", "root",
                                             "-w", str(self.path), "tcp"),
                                         stdout=subprocess.DEVNULL, stderr=e, start_new_session=True)

    def ready(self) -> bool:
        return "listening" in self.err.read_text()

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGINT)
        self.proc.wait(timeout=10)


def read_pcap(path: Path) -> list[tuple[int, bytes]]:
    """(µs timestamp, frame) of a classic µs pcap (tcpdump's)."""
    data = path.read_bytes()
    if data[:4] != b"\xd4\xc3\xb2\xa1":
        raise SystemExit(f"trace_lab: {path}: not a little-endian µs pcap")
    out, pos = [], 24
    while pos + 16 <= len(data):
        sec, usec, caplen, _ = struct.unpack_from("<IIII", data, pos)
        out.append((sec * 1_000_000 + usec, data[pos + 16:pos + 16 + caplen]))
        pos += 16 + caplen
    return out


def _block(btype: int, body: bytes) -> bytes:
    body += b"\0" * (-len(body) % 4)
    n = len(body) + 12
    return struct.pack("<II", btype, n) + body + struct.pack("<I", n)


def _opt(code: int, value: bytes) -> bytes:
    return struct.pack("<HH", code, len(value)) + value + b"\0" * (-len(value) % 4)


def write_pcapng(out: Path, captures: list[tuple[str, bytes, list[tuple[int, bytes]]]]) -> int:
    """One pcapng: an interface block per capture (if_name, if_MACaddr, µs resolution) and every
    frame in time order with its direction (epb_flags: 1 inbound, 2 outbound, from the NIC's MAC)."""
    shb = struct.pack("<IHHq", 0x1A2B3C4D, 1, 0, -1) + _opt(4, b"tests/data/gen/trace_lab.py") + _opt(0, b"")
    parts = [_block(0x0A0D0D0A, shb)]
    for name, mac_b, _ in captures:
        opts = _opt(2, name.encode()) + _opt(6, mac_b) + _opt(9, bytes([6])) + _opt(0, b"")
        parts.append(_block(1, struct.pack("<HHI", 1, 0, 262144) + opts))
    frames = sorted(((ts, i, f) for i, (_, _, fr) in enumerate(captures) for ts, f in fr), key=lambda x: (x[0], x[1]))
    for ts, i, frame in frames:
        direction = 2 if frame[6:12] == captures[i][1] else 1
        body = struct.pack("<IIIII", i, ts >> 32, ts & 0xFFFFFFFF, len(frame), len(frame)) + frame
        body += b"\0" * (-len(frame) % 4) + _opt(2, struct.pack("<I", direction)) + _opt(0, b"")
        parts.append(_block(6, body))
    out.write_bytes(b"".join(parts))
    out.chmod(0o644)
    return len(frames)


def stop_api() -> None:
    pid = int((RUN / "api.pid").read_text())
    os.kill(pid, signal.SIGTERM)
    for _ in range(100):
        with contextlib.suppress(ChildProcessError):
            if os.waitpid(pid, os.WNOHANG)[0]:
                return
        time.sleep(0.1)
    log("warning: the api did not exit within 10 s")


def run_client() -> list[dict]:
    r = sh(*nsx(ns("client"), sys.executable, str(ME), "client"))
    return [json.loads(line) for line in r.stdout.splitlines() if line.startswith("{")]


def cmd_capture(outdir: Path) -> None:
    outdir = outdir.resolve()
    for d in ("truth", "inventory"):
        (outdir / d).mkdir(parents=True, exist_ok=True)
    cmd_up()
    try:
        caps = [Capture(h, n) for h, n in CAPTURES]
        for _ in range(100):
            if all(c.ready() for c in caps):
                break
            time.sleep(0.05)
        time.sleep(0.5)
        requests = run_client()
        time.sleep(1.0)
        for c in caps:
            c.stop()
        stop_api()                  # SIGTERM: the api's tracer provider exports its last batch
        api_log = [json.loads(x) for x in (RUN / "api.log").read_text().splitlines() if x.startswith("{")]
    finally:
        cmd_down()
    by_xrid = {a["x_request_id"]: a for a in api_log}
    for r in requests:
        a = by_xrid.get(r["x_request_id"], {})
        r.update(trace_id=a.get("trace_id", ""), spans=a.get("spans", 0))
    mac_of = {(h, n): bytes.fromhex(mac(ip).replace(":", "")) for h, nics in HOSTS.items() for n, _, ip in nics}
    n = write_pcapng(outdir / "trace_lab.pcapng",
                     [(f"{h}/{nic}", mac_of[(h, nic)], read_pcap(RUN / f"cap-{h}-{nic}.pcap")) for h, nic in CAPTURES])
    exports = (RUN / "otlp.jsonl").read_text()
    (outdir / "trace_lab.otlp.jsonl").write_text(exports)
    truth = {
        "generator": "tests/data/gen/trace_lab.py capture tests/data",
        "hosts": {h: {"ips": [ip for _, _, ip in nics], "nics": {nic: {"ip": ip, "mac": mac(ip)}
                                                                   for nic, _, ip in nics}}
                  for h, nics in HOSTS.items()},
        "captures": [f"{h}/{nic}" for h, nic in CAPTURES],
        "ports": {"proxy": 80, "api": HTTP_PORT, "stock": STOCK_PORT, "redis": REDIS_PORT, "db": DB_PORT},
        "requests": requests,
        "otlp_exports": len(exports.splitlines()),
    }
    (outdir / "truth" / "trace_lab.json").write_text(json.dumps(truth, indent=1) + "\n")
    (outdir / "inventory" / "trace_lab.yaml").write_text(
        "# The hosts of tests/data/gen/trace_lab.py: `flowscope collect --inventory` names the services.\n"
        "hosts:\n" + "".join(f"  - {{name: {h}, ips: [{', '.join(ip for _, _, ip in nics)}]}}\n"
                             for h, nics in HOSTS.items()))
    log(f"{outdir / 'trace_lab.pcapng'}: {n} frames, {(outdir / 'trace_lab.pcapng').stat().st_size} bytes; "
        f"{truth['otlp_exports']} OTLP exports; requests: "
        + ", ".join(f"{r['path']} {r['status']} ({r['spans']} app spans)" for r in requests))


# ---------------------------------------------------------------- programs inside the lab
def client_main() -> None:
    """The requests, one connection each; prints one JSON line per answer."""
    import http.client

    def get(path: str) -> dict:
        c = http.client.HTTPConnection(PROXY_FRONT, 80, timeout=20)
        c.request("GET", path)
        r = c.getresponse()
        body = r.read()
        c.close()
        return {"path": path, "status": r.status, "x_request_id": r.getheader("X-Request-ID", ""),
                "bytes": len(body)}

    out = [get(f"/api/order/{i}") for i in ORDERS]
    out.append(get("/api/cart/7"))
    results: list[dict] = []
    threads = [threading.Thread(target=lambda i=i: results.append(get(f"/api/order/{i}"))) for i in CONCURRENT]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    out += sorted(results, key=lambda r: r["path"])
    for r in out:
        print(json.dumps(r), flush=True)


def _http_server(port: int, handler_get) -> None:
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        sys_version = ""
        wbufsize = 65536            # status, headers and body leave in one write

        def do_GET(self) -> None:
            code, body = handler_get(self)
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args) -> None:
            pass

    class Server(ThreadingHTTPServer):
        daemon_threads = True

    Server(("0.0.0.0", port), Handler).serve_forever()


def stock_main() -> None:
    """stock: GET /stock/<id> → 200 {"id", "qty"} (503 for the ids in STOCK_FAILS). Not instrumented."""
    def get(req):
        item = int(req.path.rsplit("/", 1)[-1]) if req.path.rsplit("/", 1)[-1].isdigit() else -1
        time.sleep(0.002)
        if item in STOCK_FAILS:
            return 503, b'{"error":"stock service unavailable"}'
        return 200, json.dumps({"id": item, "qty": item % 7}).encode()

    _http_server(STOCK_PORT, get)


class Redis:
    """One RESP connection (opened at start, so its handshake is not in the captures)."""

    def __init__(self) -> None:
        self.sock = socket.create_connection((IP["redis"], REDIS_PORT), timeout=10)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.f = self.sock.makefile("rb")
        self.lock = threading.Lock()

    def call(self, *words: str):
        msg = f"*{len(words)}\r\n".encode() + b"".join(f"${len(w)}\r\n{w}\r\n".encode() for w in words)
        with self.lock:
            self.sock.sendall(msg)
            line = self.f.readline().rstrip(b"\r\n")
            if line[:1] == b"$":
                n = int(line[1:])
                return None if n < 0 else self.f.read(n + 2)[:-2].decode()
            return line[1:].decode()


def api_main() -> None:
    """api: GET /api/order/<id> and /api/cart/<id>, instrumented with the OpenTelemetry SDK."""
    import pymysql
    from opentelemetry import propagate, trace
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor
    from opentelemetry.trace import SpanKind, Status, StatusCode

    provider = TracerProvider(resource=Resource.create({
        "service.name": "api", "service.instance.id": "api-1", "service.version": "1.4.2",
        "host.name": "api", "host.ip": IP["api"]}))
    provider.add_span_processor(BatchSpanProcessor(
        OTLPSpanExporter(endpoint=f"http://127.0.0.1:{OTLP_PORT}/v1/traces"), schedule_delay_millis=500))
    trace.set_tracer_provider(provider)
    tracer = trace.get_tracer("trace_lab.api", "1.0")
    redis = Redis()
    db = pymysql.connect(host=IP["db"], port=DB_PORT, user=DB_USER, password=DB_PASS, database="shop",
                         autocommit=True)
    db_lock = threading.Lock()
    me = IP["api"]
    counts: dict[str, int] = {}

    def peer(sock: socket.socket, **attrs) -> dict:
        local, remote = sock.getsockname(), sock.getpeername()
        return {"network.peer.address": remote[0], "network.peer.port": remote[1],
                "network.local.address": local[0], "network.local.port": local[1],
                "server.address": remote[0], "server.port": remote[1], **attrs}

    def count(tid: str) -> None:
        counts[tid] = counts.get(tid, 0) + 1

    def redis_get(key: str, tid: str) -> str | None:
        with tracer.start_as_current_span("GET", kind=SpanKind.CLIENT, attributes=peer(
                redis.sock, **{"db.system": "redis", "db.operation.name": "GET", "db.query.text": f"GET {key}"})):
            count(tid)
            return redis.call("GET", key)

    def redis_set(key: str, value: str, tid: str) -> None:
        with tracer.start_as_current_span("SET", kind=SpanKind.CLIENT, attributes=peer(
                redis.sock, **{"db.system": "redis", "db.operation.name": "SET", "db.query.text": f"SET {key} ?"})):
            count(tid)
            redis.call("SET", key, value)

    def sql(query: str, tid: str):
        with db_lock, tracer.start_as_current_span("SELECT orders", kind=SpanKind.CLIENT, attributes=peer(
                db._sock, **{"db.system": "mysql", "db.operation.name": "SELECT", "db.collection.name": "orders",
                             "db.query.text": query, "db.namespace": "shop"})):
            count(tid)
            with db.cursor() as cur:
                cur.execute(query)
                return cur.fetchall()

    def stock(item: int, tid: str) -> int:
        import http.client
        c = http.client.HTTPConnection(IP["stock"], STOCK_PORT, timeout=10)
        c.connect()
        path = f"/stock/{item}"
        with tracer.start_as_current_span("GET /stock/{id}", kind=SpanKind.CLIENT, attributes=peer(
                c.sock, **{"http.request.method": "GET", "url.full": f"http://{IP['stock']}:{STOCK_PORT}{path}",
                           "http.route": "/stock/{id}"})) as span:
            count(tid)
            headers: dict[str, str] = {}
            propagate.inject(headers)
            c.request("GET", path, headers=headers)
            r = c.getresponse()
            r.read()
            span.set_attribute("http.response.status_code", r.status)
            if r.status >= 500:
                span.set_status(Status(StatusCode.ERROR, f"stock answered {r.status}"))
        c.close()
        return r.status

    def handle(req):
        parts = req.path.strip("/").split("/")
        xrid = req.headers.get("X-Request-ID", "")
        route = f"/api/{parts[1]}/{{id}}" if len(parts) == 3 else req.path
        local, remote = req.connection.getsockname(), req.connection.getpeername()
        attrs = {"http.request.method": "GET", "url.path": req.path, "http.route": route,
                 "client.address": remote[0], "client.port": remote[1], "network.peer.address": remote[0],
                 "network.peer.port": remote[1], "server.address": local[0], "server.port": local[1],
                 "network.local.address": local[0], "network.local.port": local[1],
                 "http.request.header.x-request-id": [xrid] if xrid else [],
                 "user_agent.original": req.headers.get("User-Agent", "")}
        with tracer.start_as_current_span(f"GET {route}", kind=SpanKind.SERVER, attributes=attrs) as span:
            tid = format(span.get_span_context().trace_id, "032x")
            count(tid)
            code = 200
            if len(parts) == 3 and parts[0] == "api" and parts[1] == "order" and parts[2].isdigit():
                item = int(parts[2])
                redis_get(f"order:{item}", tid)
                rows = sql(f"SELECT id, item, qty FROM orders WHERE id = {item}", tid)
                with tracer.start_as_current_span("price", kind=SpanKind.INTERNAL):
                    count(tid)
                    time.sleep(0.003)
                status = stock(item, tid)
                code = 200 if status == 200 and rows else 502
                body = json.dumps({"order": item, "rows": len(rows), "stock": status}).encode()
            elif len(parts) == 3 and parts[0] == "api" and parts[1] == "cart":
                statuses = []
                for item in CART_ITEMS:
                    redis_get(f"order:{item}", tid)
                    statuses.append(stock(item, tid))
                rows = sql(f"SELECT id, item, qty FROM orders WHERE id IN ({', '.join(map(str, CART_ITEMS))})", tid)
                with tracer.start_as_current_span("price", kind=SpanKind.INTERNAL):
                    count(tid)
                    time.sleep(0.003)
                redis_set(f"cart:{parts[2]}", str(len(rows)), tid)
                body = json.dumps({"cart": parts[2], "items": len(rows), "stock": statuses}).encode()
            else:
                code, body = 404, b'{"error":"not found"}'
            span.set_attribute("http.response.status_code", code)
            if code >= 500:
                span.set_status(Status(StatusCode.ERROR))
        print(json.dumps({"x_request_id": xrid, "trace_id": tid, "path": req.path, "spans": counts.get(tid, 0),
                          "server": me}), flush=True)
        return code, body

    def stop(signum, frame):
        provider.shutdown()             # exports what the batch processor still holds
        os._exit(0)

    signal.signal(signal.SIGTERM, stop)
    _http_server(HTTP_PORT, handle)


def otlp_sink_main(out: Path) -> None:
    """Records every OTLP/HTTP POST /v1/traces body as sent (base64) with its content type; answers
    an empty ExportTraceServiceResponse."""
    from http.server import BaseHTTPRequestHandler, HTTPServer

    lock = threading.Lock()

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            rec = {"path": self.path, "content_type": self.headers.get("Content-Type", ""),
                   "content_encoding": self.headers.get("Content-Encoding", ""),
                   "body_b64": base64.b64encode(body).decode()}
            with lock, open(out, "a") as f:
                f.write(json.dumps(rec) + "\n")
            self.send_response(200)
            self.send_header("Content-Type", "application/x-protobuf")
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args) -> None:
            pass

    HTTPServer(("127.0.0.1", OTLP_PORT), Handler).serve_forever()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    sub.add_parser("capture", help="build the lab, capture, write OUTDIR/trace_lab.*, tear down").add_argument(
        "outdir", type=Path)
    sub.add_parser("up", help="build the lab and start the servers")
    sub.add_parser("down", help="stop every process and delete the fstr-* namespaces")
    for name in ("client", "stock-server", "api-server"):
        sub.add_parser(name)
    s = sub.add_parser("otlp-sink")
    s.add_argument("--out", type=Path, required=True)
    a = ap.parse_args()
    if a.cmd in ("capture", "up", "down") and os.geteuid() != 0:
        raise SystemExit("trace_lab: needs root (namespaces, veths, bridges)")
    {"capture": lambda: cmd_capture(a.outdir), "up": cmd_up, "down": cmd_down, "client": client_main,
     "stock-server": stock_main, "api-server": api_main, "otlp-sink": lambda: otlp_sink_main(a.out)}[a.cmd]()


if __name__ == "__main__":
    main()
