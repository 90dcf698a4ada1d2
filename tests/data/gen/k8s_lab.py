#!/usr/bin/env python3
"""A Kubernetes node wired the way Kube-OVN wires pods, built from network namespaces, and two pcaps
of its pod traffic for the AutoTagging end-to-end tests (k8s_pods.pcapng, k8s_churn.pcapng) with
their tshark truth (truth/k8s_pods.json, truth/k8s_churn.json).

What it builds (all names start with ``fsk-``; the netlab-* namespaces are not touched):

* namespace ``fsk-node``: Linux bridge ``br0`` (10.16.0.1/16, fd00:10:16::1/64, MAC 00:00:00:10:16:01),
  the pods' gateway;
* one namespace per pod, ``fsk-<pod>``: ``eth0`` holding the pod IP(s) (/16, /64; default routes via
  the gateway), its veth peer in ``fsk-node`` enslaved to br0 and named like Kube-OVN names it, the
  first 12 hex digits of the (made-up) container id + ``_h``. Container ids, pod uids and eth0 MACs
  (``00:00:00:xx:xx:xx`` like Kube-OVN's) are derived from the pod's name, so every run gives the
  same ones:

      pod      IPs                         namespace    owner                runs
      web-a    10.16.0.11, fd00:10:16::11  shop         Deployment web       clients
      redis-0  10.16.0.13                  shop         StatefulSet redis    redis-server :6379
      api      10.16.0.20, fd00:10:16::20  payments     Deployment api       HTTP/1.1 :8080 (dual stack)
      coredns  10.16.0.5                   kube-system  Deployment coredns   dnsmasq :53 UDP+TCP
      web-b    10.16.0.11                  shop         Deployment web       clients, after web-a is gone

  Offloads are off on both ends of every veth (and on br0), so frames are wire-sized with valid
  checksums. IPv6 is on only where it is used (br0, web-a, api), without DAD, RA or RS.

Captures: ``dumpcap`` on ``br0`` in fsk-node (promiscuous, so it sees the frames the bridge forwards
between pods; it keeps capturing while pods come and go), pcapng.

* **k8s_pods.pcapng**: from web-a, 5 GETs (/, /health, /, /health, /) to api:8080 on one keep-alive
  connection, GET /missing → 404 on a new connection, 3 DNS A queries (dig) to coredns for
  api.payments.svc.cluster.local, SET/GET/INCR on redis-0 in one connection, 2 GETs to
  [fd00:10:16::20]:8080 on one connection; from api, one redis connection with PING and GET.
* **k8s_churn.pcapng** (same lab, right after): web-a 2 GETs to api on one connection; web-a's
  namespace is deleted (its veth goes with it); ~2 s later a new pod web-b comes up with the same IPv4
  10.16.0.11 but a new MAC and host-side veth, and does 3 GETs to api on one connection and 1 redis GET.

Truth (``OUTDIR/truth/<name>.json``): ``conversations`` exactly as tests/data/make_truth.py makes them
(tshark conv,tcp/conv,udp + exact bytes per direction), ``http`` (every request with its response
code), ``dns`` (every query with rcode and answers), ``redis`` (commands and replies per connection),
``pods`` (name, namespace, owner, uid, container id, host-side veth, MAC, IPs, netns created/deleted
epoch times, and per pcap the first/last frame carrying the pod's MAC in µs) and, for churn,
``churn`` (web-a's last frame, its deletion time, web-b's creation time and first frame).

Rerun (root; iproute2, ethtool, dumpcap/tshark, dnsmasq, redis-server, dig; ~20 s)::

    sudo python3 tests/data/gen/k8s_lab.py capture tests/data   # pcaps + truth/; tears down leftovers first
    sudo python3 tests/data/gen/k8s_lab.py down                 # stop every process, delete fsk-* namespaces
    sudo python3 tests/data/gen/k8s_lab.py up                   # just the lab, servers running (explore)
    python3 tests/data/gen/k8s_lab.py truth tests/data          # recompute the tshark part of the truth

Besides the listed traffic the pcaps hold what the kernels add by themselves: ARP and IPv6 neighbor
discovery before first contact, and in k8s_churn sometimes a few unicast ARP/ND re-checks of phase-1
neighbor entries at the start (it varies from run to run). No DHCP, RS/RA, MLD or other noise.

State, configs, server and client logs: ``/tmp/fsk-k8s`` (``FSK_RUN``). Timestamps, ports, TCP
sequence numbers and DNS ids differ from run to run; IPs, MACs, names and the messages do not.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import random
import shutil
import signal
import socket
import struct
import subprocess
import sys
import time
import uuid
from collections import defaultdict
from decimal import Decimal
from pathlib import Path

RUN = Path(os.environ.get("FSK_RUN", "/tmp/fsk-k8s"))
ME = Path(__file__).resolve()
NODE = "fsk-node"
BR = "br0"
BR_MAC = "00:00:00:10:16:01"
GW4, GW6 = "10.16.0.1", "fd00:10:16::1"
HTTP_PORT, REDIS_PORT, DNS_PORT = 8080, 6379, 53
DNS_NAME = "api.payments.svc.cluster.local"

# pod → Kubernetes identity and addresses (fixed: the tests depend on them)
PODS: dict[str, dict] = {
    "web-a": {"namespace": "shop", "owner_kind": "Deployment", "owner": "web",
              "ip4": "10.16.0.11", "ip6": "fd00:10:16::11"},
    "redis-0": {"namespace": "shop", "owner_kind": "StatefulSet", "owner": "redis", "ip4": "10.16.0.13"},
    "api": {"namespace": "payments", "owner_kind": "Deployment", "owner": "api",
            "ip4": "10.16.0.20", "ip6": "fd00:10:16::20"},
    "coredns": {"namespace": "kube-system", "owner_kind": "Deployment", "owner": "coredns", "ip4": "10.16.0.5"},
    "web-b": {"namespace": "shop", "owner_kind": "Deployment", "owner": "web", "ip4": "10.16.0.11"},
}
FIRST = ["redis-0", "api", "coredns", "web-a"]     # the pods up before the captures
IP = {p: d["ip4"] for p, d in PODS.items()}


def identity(pod: str) -> dict:
    """Made-up but stable ids: container id (64 hex, containerd style), the Kube-OVN host-side veth
    name, the pod's eth0 MAC (Kube-OVN style 00:00:00:xx:xx:xx) and pod uid, all from the pod name."""
    d = PODS[pod]
    cid = hashlib.sha256(f"flowscope-k8s-lab/{pod}/container".encode()).hexdigest()
    m = hashlib.sha256(f"flowscope-k8s-lab/{pod}/mac".encode()).digest()
    return {"pod": pod, "namespace": d["namespace"], "owner_kind": d["owner_kind"], "owner": d["owner"],
            "uid": str(uuid.uuid5(uuid.NAMESPACE_URL, f"flowscope-k8s-lab/{d['namespace']}/{pod}")),
            "container_id": cid, "host_if": cid[:12] + "_h", "mac": "00:00:00:" + ":".join(f"{b:02x}" for b in m[:3]),
            "host_if_mac": "02:" + ":".join(f"{b:02x}" for b in m[3:8]),   # never on the wire (bridge port)
            "ip4": d["ip4"], "ip6": d.get("ip6"), "netns": "fsk-" + pod, "node": NODE, "bridge": BR}


def log(msg: str) -> None:
    print(f"k8s_lab: {msg}", flush=True)


def sh(*cmd: str, check: bool = True, quiet: bool = False) -> subprocess.CompletedProcess:
    r = subprocess.run(cmd, capture_output=True, text=True)
    if check and r.returncode:
        raise SystemExit(f"k8s_lab: failed ({r.returncode}): {' '.join(cmd)}\n{r.stderr.strip()}")
    if not quiet and r.returncode and r.stderr.strip():
        log(f"note: {' '.join(cmd)}: {r.stderr.strip()}")
    return r


def nsx(ns: str, *cmd: str) -> list[str]:
    return ["ip", "netns", "exec", ns, *cmd]


def sysctl(ns: str, **kv: int) -> None:
    sh(*nsx(ns, "sysctl", "-qw", *(f"{k.replace('__', '.')}={v}" for k, v in kv.items())))


def ipv6_settings(ns: str, enabled: bool) -> None:
    """Per namespace, before its interfaces exist: IPv6 on or off for every new device, and where
    on, no DAD, no router solicitations, no RA (no stray ICMPv6 in the captures)."""
    off = 0 if enabled else 1
    sysctl(ns, **{f"net.ipv6.conf.{s}.{k}": v for s in ("all", "default")
                  for k, v in (("disable_ipv6", off), ("accept_dad", 0), ("router_solicitations", 0),
                               ("accept_ra", 0))})


def offloads_off(ns: str, dev: str) -> None:
    sh(*nsx(ns, "ethtool", "-K", dev, "tx", "off", "rx", "off", "tso", "off", "gso", "off", "gro", "off"),
       check=False, quiet=True)


def namespaces() -> list[str]:
    out = sh("ip", "netns", "list").stdout.split("\n")
    return [line.split()[0] for line in out if line.strip()]


# ---------------------------------------------------------------- lab: node, pods, servers
def node_up() -> None:
    sh("ip", "netns", "add", NODE)
    ipv6_settings(NODE, False)                     # bridge ports get no IPv6; br0 gets it below
    sh("ip", "-n", NODE, "link", "set", "lo", "up")
    sh("ip", "-n", NODE, "link", "add", BR, "type", "bridge", "stp_state", "0", "forward_delay", "0")
    sh("ip", "-n", NODE, "link", "set", BR, "address", BR_MAC)   # fixed: ports come and go
    sysctl(NODE, **{f"net.ipv6.conf.{BR}.disable_ipv6": 0})
    sh("ip", "-n", NODE, "addr", "add", f"{GW4}/16", "dev", BR)
    sh("ip", "-n", NODE, "addr", "add", f"{GW6}/64", "dev", BR, "nodad")
    offloads_off(NODE, BR)
    sh("ip", "-n", NODE, "link", "set", BR, "up")


def pod_up(pod: str) -> dict:
    """The pod's namespace, eth0 with its IPs and routes, the host side on br0. Returns its identity
    with ``created_at`` (epoch, just before the namespace is made) and ``ready_at``."""
    p = identity(pod)
    ns = p["netns"]
    p["created_at"] = time.time()
    sh("ip", "netns", "add", ns)
    ipv6_settings(ns, bool(p["ip6"]))
    sh("ip", "-n", ns, "link", "set", "lo", "up")
    sh("ip", "link", "add", p["host_if"], "netns", NODE, "type", "veth", "peer", "name", "eth0", "netns", ns)
    sh("ip", "-n", ns, "link", "set", "eth0", "address", p["mac"])
    sh("ip", "-n", NODE, "link", "set", p["host_if"], "address", p["host_if_mac"])
    sh("ip", "-n", NODE, "link", "set", p["host_if"], "master", BR)
    offloads_off(NODE, p["host_if"])
    offloads_off(ns, "eth0")
    sh("ip", "-n", ns, "addr", "add", f"{p['ip4']}/16", "dev", "eth0")
    if p["ip6"]:
        sh("ip", "-n", ns, "addr", "add", f"{p['ip6']}/64", "dev", "eth0", "nodad")
    sh("ip", "-n", NODE, "link", "set", p["host_if"], "up")
    sh("ip", "-n", ns, "link", "set", "eth0", "up")
    sh("ip", "-n", ns, "route", "add", "default", "via", GW4)
    if p["ip6"]:
        sh("ip", "-n", ns, "-6", "route", "add", "default", "via", GW6)
    p["ready_at"] = time.time()
    return p


def kill_ns(ns: str) -> None:
    """Stop every process in namespace ``ns`` (they are ours: only this script uses fsk-* names)."""
    pids = [int(x) for x in sh("ip", "netns", "pids", ns, check=False, quiet=True).stdout.split()]
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
        for _ in range(30):
            pids = [int(x) for x in sh("ip", "netns", "pids", ns, check=False, quiet=True).stdout.split()]
            if not pids:
                return
            time.sleep(0.1)


def pod_down(p: dict) -> None:
    """Delete the pod's namespace; its veth pair goes with it. Sets ``deleted_at`` (epoch, right
    after the namespace was deleted) and ``host_if_gone_at`` (the host side left fsk-node)."""
    kill_ns(p["netns"])
    sh("ip", "netns", "del", p["netns"])
    p["deleted_at"] = time.time()
    for _ in range(100):
        if sh("ip", "-n", NODE, "link", "show", p["host_if"], check=False, quiet=True).returncode:
            break
        time.sleep(0.02)
    p["host_if_gone_at"] = time.time()


def start(name: str, ns: str, *cmd: str) -> subprocess.Popen:
    """CMD in namespace ``ns`` in the background, own session, output to RUN/NAME.log."""
    with open(RUN / f"{name}.log", "w") as out:
        pr = subprocess.Popen(nsx(ns, *cmd), stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                              start_new_session=True)
    (RUN / f"{name}.pid").write_text(f"{pr.pid}\n")
    return pr


def wait_port(ns: str, port: int, udp: bool = False) -> None:
    for _ in range(50):
        if sh(*nsx(ns, "ss", "-lunH" if udp else "-ltnH", f"sport = :{port}"), check=False).stdout.strip():
            return
        time.sleep(0.1)
    raise SystemExit(f"k8s_lab: nothing listens on {port}/{'udp' if udp else 'tcp'} in {ns} (see {RUN})")


def servers_up() -> None:
    start("redis", "fsk-redis-0", "redis-server", "--bind", IP["redis-0"], "--port", str(REDIS_PORT),
          "--protected-mode", "no", "--save", "", "--appendonly", "no", "--dir", str(RUN), "--daemonize", "no")
    start("api", "fsk-api", sys.executable, str(ME), "http-server", "--port", str(HTTP_PORT))
    start("dns", "fsk-coredns", "dnsmasq", "-k", "--no-resolv", "--no-hosts", "--bind-interfaces",
          f"--listen-address={IP['coredns']}", "--user=root", f"--pid-file={RUN}/dnsmasq.pidfile",
          "--log-queries", f"--log-facility={RUN}/dnsmasq-queries.log", "--local=/cluster.local/",
          f"--address=/{DNS_NAME}/{IP['api']}",
          f"--host-record=redis-0.redis.shop.svc.cluster.local,{IP['redis-0']}",
          f"--host-record=kube-dns.kube-system.svc.cluster.local,{IP['coredns']}")
    wait_port("fsk-redis-0", REDIS_PORT)
    wait_port("fsk-api", HTTP_PORT)
    wait_port("fsk-coredns", DNS_PORT, udp=True)
    wait_port("fsk-coredns", DNS_PORT)


def cmd_down() -> None:
    ours = [n for n in namespaces() if n.startswith("fsk-")]
    for ns in ours:
        kill_ns(ns)
    for ns in ours:
        sh("ip", "netns", "del", ns, check=False)
        log(f"deleted namespace {ns}")
    for f in RUN.glob("*.pid") if RUN.exists() else []:
        f.unlink()
    log("down")


def cmd_up() -> list[dict]:
    cmd_down()
    RUN.mkdir(parents=True, exist_ok=True)
    node_up()
    pods = [pod_up(p) for p in FIRST]
    servers_up()
    for p in pods:
        log(f"pod {p['pod']:8} {p['netns']:14} {p['ip4']:11} {p['ip6'] or '':15} mac {p['mac']}  host {p['host_if']}")
    return pods


# ---------------------------------------------------------------- capture and traffic
class Dump:
    """dumpcap on br0 in fsk-node."""

    def __init__(self, path: Path):
        self.path = path
        path.unlink(missing_ok=True)
        self.err = RUN / f"dumpcap-{path.stem}.log"
        with open(self.err, "w") as e:
            self.proc = subprocess.Popen(nsx(NODE, "dumpcap", "-q", "-i", BR, "-w", str(path)),
                                         stdout=subprocess.DEVNULL, stderr=e, start_new_session=True)
        for _ in range(100):
            if "Capturing on" in self.err.read_text():
                break
            if self.proc.poll() is not None:
                raise SystemExit(f"k8s_lab: dumpcap exited: {self.err.read_text()}")
            time.sleep(0.05)
        time.sleep(0.5)

    def stop(self) -> None:
        time.sleep(0.5)                             # the last ACKs/FINs of the traffic
        self.proc.send_signal(signal.SIGINT)
        self.proc.wait(timeout=10)
        self.path.chmod(0o644)                      # dumpcap creates it 0600
        log(f"{self.path}: {self.path.stat().st_size} bytes; "
            + " ".join(x for x in self.err.read_text().split("\n") if x.startswith("Packets captured")))


def client(pod: str, logf, *args: str) -> None:
    """Run ``k8s_lab.py <args>`` (or a tool when args[0] is '!') in the pod's namespace; log it."""
    cmd = list(args[1:]) if args[0] == "!" else [sys.executable, str(ME), *args]
    r = subprocess.run(nsx("fsk-" + pod, *cmd), capture_output=True, text=True)
    logf.write(f"## {pod}: {' '.join(cmd)}\n{r.stdout}{r.stderr}")
    logf.flush()
    if r.returncode:
        raise SystemExit(f"k8s_lab: client in {pod} failed: {' '.join(cmd)}\n{r.stdout}{r.stderr}")


def dns_queries(pod: str, logf, n: int) -> None:
    for _ in range(n):
        if shutil.which("dig"):
            client(pod, logf, "!", "dig", "+time=2", "+tries=1", f"@{IP['coredns']}", DNS_NAME, "A")
        else:
            client(pod, logf, "dns-query", IP["coredns"], DNS_NAME)


def phase1(logf) -> None:
    api, api6, redis = IP["api"], PODS["api"]["ip6"], IP["redis-0"]
    client("web-a", logf, "http-get", api, str(HTTP_PORT), "/", "/health", "/", "/health", "/")
    client("web-a", logf, "http-get", api, str(HTTP_PORT), "/missing")
    dns_queries("web-a", logf, 3)
    client("web-a", logf, "redis", redis, str(REDIS_PORT), "SET cart:web-a 3", "GET cart:web-a", "INCR hits")
    client("api", logf, "redis", redis, str(REDIS_PORT), "PING", "GET cart:web-a")
    client("web-a", logf, "http-get", api6, str(HTTP_PORT), "/", "/health")


def cmd_capture(outdir: Path) -> None:
    if shutil.which("dumpcap") is None or shutil.which("tshark") is None:
        raise SystemExit("k8s_lab: needs dumpcap and tshark")
    outdir = outdir.resolve()
    (outdir / "truth").mkdir(parents=True, exist_ok=True)
    pods = {p["pod"]: p for p in cmd_up()}
    time.sleep(2.5)            # MLD reports for the new IPv6 addresses are repeated for ~2 s
    try:
        with open(RUN / "client-k8s_pods.log", "w") as logf:
            d = Dump(outdir / "k8s_pods.pcapng")
            phase1(logf)
            d.stop()
        write_truth(outdir, "k8s_pods", list(pods.values()), None)

        with open(RUN / "client-k8s_churn.log", "w") as logf:
            d = Dump(outdir / "k8s_churn.pcapng")
            client("web-a", logf, "http-get", IP["api"], str(HTTP_PORT), "/", "/health")
            time.sleep(0.5)
            pod_down(pods["web-a"])
            log(f"deleted web-a at {pods['web-a']['deleted_at']:.6f}")
            time.sleep(2)
            pods["web-b"] = pod_up("web-b")
            log(f"created web-b at {pods['web-b']['created_at']:.6f}, mac {pods['web-b']['mac']}")
            client("web-b", logf, "http-get", IP["api"], str(HTTP_PORT), "/", "/health", "/")
            client("web-b", logf, "redis", IP["redis-0"], str(REDIS_PORT), "GET cart:web-a")
            d.stop()
        churn = {k: pods["web-a"][k] for k in ("deleted_at", "host_if_gone_at")}
        churn.update(web_b_created_at=pods["web-b"]["created_at"], web_b_ready_at=pods["web-b"]["ready_at"])
        write_truth(outdir, "k8s_churn", list(pods.values()), churn)
        for f in ("client-k8s_pods.log", "client-k8s_churn.log"):
            log(f"client log: {RUN / f}")
    finally:
        cmd_down()


# ---------------------------------------------------------------- truth (tshark)
def tshark(pcap: Path, display: str, fields: list[str]) -> list[list[str]]:
    cmd = ["tshark", "-n", "-r", str(pcap), "-Y", display, "-T", "fields", "-E", "separator=|",
           "-E", "occurrence=a", "-E", "aggregator=,"] + [x for f in fields for x in ("-e", f)]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return [line.split("|") for line in out.splitlines()]


def us(epoch: str) -> int:
    return int(Decimal(epoch) * 1_000_000)


def http_truth(pcap: Path) -> dict:
    f = ["frame.number", "frame.time_epoch", "_ws.col.Source", "tcp.srcport", "_ws.col.Destination",
         "tcp.dstport", "tcp.stream"]
    reqs = {r[0]: r for r in tshark(pcap, "http.request", f + ["http.request.method", "http.request.uri"])}
    # response: request frame → (status code, response frame)
    codes = {r[7]: (r[8], r[0]) for r in tshark(pcap, "http.response", f + ["http.request_in", "http.response.code"])}
    out = []
    for n, r in reqs.items():
        code, resp_frame = codes.get(n, (None, None))
        out.append({"client": r[2], "client_port": int(r[3]), "server": r[4], "server_port": int(r[5]),
                    "tcp_stream": int(r[6]), "method": r[7], "uri": r[8],
                    "status": int(code) if code else None, "request_frame": int(n),
                    "response_frame": int(resp_frame) if resp_frame else None, "request_us": us(r[1])})
    status: dict[str, int] = defaultdict(int)
    for t in out:
        status[str(t["status"])] += 1
    return {"requests": len(out), "status_counts": dict(sorted(status.items())),
            "connections": len({t["tcp_stream"] for t in out}), "transactions": out}


def dns_truth(pcap: Path) -> dict:
    rows = tshark(pcap, "dns", ["frame.number", "_ws.col.Source", "udp.srcport", "tcp.srcport",
                                "_ws.col.Destination", "udp.dstport", "tcp.dstport", "dns.flags.response",
                                "dns.id", "dns.qry.name", "dns.qry.type", "dns.flags.rcode", "dns.a"])
    queries: list[dict] = []
    answers: dict[tuple, tuple] = {}
    for n, src, usp, tsp, dst, udp_, tdp, resp, qid, name, qtype, rcode, a in rows:
        if resp in ("1", "True"):       # keyed by the client's address and port
            answers[(dst, int(udp_ or tdp), qid)] = (int(rcode), [x for x in a.split(",") if x], int(n))
        else:
            port = int(usp or tsp)
            queries.append({"client": src, "client_port": port, "server": dst, "transport": "udp" if usp else "tcp",
                            "id": int(qid, 0), "name": name, "qtype": int(qtype), "query_frame": int(n),
                            "_key": (src, port, qid)})
    for q in queries:
        rcode, a, rf = answers.get(q.pop("_key"), (None, [], None))
        q.update(rcode=rcode, answers=a, response_frame=rf)
    return {"queries": len(queries), "responses": len(answers), "transactions": queries}


def _resp_text(hexes: str) -> list[str]:
    out = []
    for h in hexes.split(","):
        if h:
            try:
                out.append(bytes.fromhex(h.replace(":", "")).decode())
            except ValueError:
                out.append(h)
    return out


def redis_truth(pcap: Path) -> dict:
    rows = tshark(pcap, "resp", ["tcp.stream", "_ws.col.Source", "tcp.srcport", "_ws.col.Destination",
                                  "tcp.dstport", "resp.bulk_string.value", "resp.string", "resp.integer",
                                  "resp.error"])
    conns: dict[int, dict] = {}
    for stream, src, sp, dst, dp, bulk, simple, integer, err in rows:
        to_server = int(dp) == REDIS_PORT
        c = conns.setdefault(int(stream), {"client": src if to_server else dst,
                                           "client_port": int(sp if to_server else dp),
                                           "server": dst if to_server else src, "server_port": REDIS_PORT,
                                           "commands": [], "replies": []})
        if to_server:
            c["commands"].append(" ".join(_resp_text(bulk)))
        else:
            vals = [f"+{x}" for x in simple.split(",") if x] + [f":{x}" for x in integer.split(",") if x] + \
                   [f"-{x}" for x in err.split(",") if x] + [f"${x}" for x in _resp_text(bulk)]
            c["replies"].append(" ".join(vals) if vals else "$nil")
    cl = [conns[k] for k in sorted(conns)]
    return {"connections": len(cl), "commands": sum(len(c["commands"]) for c in cl), "per_connection": cl}


def seen(pcap: Path, mac: str) -> dict:
    """Frames carrying ``mac`` (source or destination): count, first and last epoch µs; the same for
    IP/IPv6 frames only."""
    rows = tshark(pcap, f"eth.addr == {mac}", ["frame.time_epoch", "ip.version", "ipv6.src"])
    ip = [r for r in rows if r[1] or r[2]]
    return {"frames": len(rows), "first_us": us(rows[0][0]) if rows else None,
            "last_us": us(rows[-1][0]) if rows else None,
            "ip_frames": len(ip), "first_ip_us": us(ip[0][0]) if ip else None,
            "last_ip_us": us(ip[-1][0]) if ip else None}


def make_truth_module():
    sys.path.insert(0, str(ME.parents[1]))          # tests/data: make_truth.py
    import make_truth  # type: ignore[import-not-found]
    return make_truth


def write_truth(outdir: Path, name: str, pods: list[dict] | None, churn: dict | None) -> None:
    """truth/<name>.json from the pcap; ``pods``/``churn`` (lab facts, not in the pcap) are taken from
    the existing truth file when None."""
    pcap = outdir / f"{name}.pcapng"
    path = outdir / "truth" / f"{name}.json"
    old = json.loads(path.read_text()) if path.exists() else {}
    if pods is None:
        pods = old.get("pods") or []
        churn = old.get("churn")
    t = make_truth_module().truth(pcap)
    t["generator"] = "tests/data/gen/k8s_lab.py capture " + str(outdir.relative_to(Path.cwd())
                                                               if outdir.is_relative_to(Path.cwd()) else outdir)
    t["capture"] = {"tool": "dumpcap", "netns": NODE, "interface": BR, "format": "pcapng"}
    t["node"] = {"name": NODE, "bridge": BR, "bridge_mac": BR_MAC, "gateway4": GW4, "gateway6": GW6,
                 "subnet4": "10.16.0.0/16", "subnet6": "fd00:10:16::/64"}
    keep = ("pod", "namespace", "owner_kind", "owner", "uid", "container_id", "host_if", "host_if_mac", "mac",
            "ip4", "ip6", "netns", "node", "bridge", "created_at", "ready_at", "deleted_at", "host_if_gone_at")
    t["pods"] = []
    for p in pods:
        q = {k: p.get(k) for k in keep}
        q["in_pcap"] = seen(pcap, p["mac"])
        t["pods"].append(q)
    t["http"] = http_truth(pcap)
    t["dns"] = dns_truth(pcap)
    t["redis"] = redis_truth(pcap)
    if churn:
        by = {p["pod"]: p for p in t["pods"]}
        a, b = by["web-a"], by["web-b"]
        churn = {k: churn[k] for k in ("deleted_at", "host_if_gone_at", "web_b_created_at", "web_b_ready_at")}
        churn.update(ip4=a["ip4"], web_a_mac=a["mac"], web_b_mac=b["mac"],
                     web_a_host_if=a["host_if"], web_b_host_if=b["host_if"],
                     web_a_last_packet_us=a["in_pcap"]["last_us"], web_b_first_packet_us=b["in_pcap"]["first_us"],
                     web_b_first_ip_packet_us=b["in_pcap"]["first_ip_us"])
        ok = (churn["web_a_last_packet_us"] < churn["deleted_at"] * 1e6 < churn["web_b_created_at"] * 1e6
              < churn["web_b_first_packet_us"])
        churn["ordered"] = ok
        if not ok:
            log(f"WARNING: churn times out of order: {churn}")
        t["churn"] = churn
    path.write_text(json.dumps(t, indent=1) + "\n")
    h, d, r = t["http"], t["dns"], t["redis"]
    log(f"{path}: {len(t['conversations'])} conversations, http {h['requests']} requests {h['status_counts']}, "
        f"dns {d['queries']} queries, redis {r['connections']} connections / {r['commands']} commands")


def cmd_truth(outdir: Path) -> None:
    outdir = outdir.resolve()
    for name in ("k8s_pods", "k8s_churn"):
        write_truth(outdir, name, None, None)


# ---------------------------------------------------------------- in-pod programs
def http_server(port: int) -> None:
    """api: HTTP/1.1 keep-alive, dual stack. GET / → 200 JSON, GET /health → 200, anything else → 404."""
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        server_version = "api/1.0"
        sys_version = ""
        wbufsize = 65536                 # headers and body leave in one write (flushed per request)

        def do_GET(self) -> None:
            if self.path == "/":
                code, body, ctype = 200, b'{"service":"api","namespace":"payments"}\n', "application/json"
            elif self.path == "/health":
                code, body, ctype = 200, b"ok\n", "text/plain"
            else:
                code, body, ctype = 404, b"not found\n", "text/plain"
            self.send_response(code)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    class Server(ThreadingHTTPServer):
        address_family = socket.AF_INET6
        daemon_threads = True

        def server_bind(self) -> None:
            self.socket.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
            super().server_bind()

    Server(("::", port), Handler).serve_forever()


def http_get(host: str, port: int, paths: list[str]) -> None:
    """GET each path on one keep-alive connection; the client closes it."""
    import http.client
    c = http.client.HTTPConnection(host, port, timeout=10)
    for p in paths:
        c.request("GET", p)
        r = c.getresponse()
        body = r.read()
        print(f"GET http://{host}:{port}{p} -> {r.status} {len(body)} bytes")
    c.close()


def redis_cmds(host: str, port: int, cmds: list[str]) -> None:
    """Each command (space-separated words) in RESP, one after the other on one connection."""
    s = socket.create_connection((host, port), timeout=10)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    f = s.makefile("rb")

    def reply():
        line = f.readline().rstrip(b"\r\n")
        t, rest = line[:1], line[1:].decode()
        if t == b"$":
            n = int(rest)
            return None if n < 0 else f.read(n + 2)[:-2].decode()
        if t == b"*":
            return [reply() for _ in range(int(rest))]
        return t.decode() + rest

    for cmd in cmds:
        words = cmd.split()
        s.sendall(f"*{len(words)}\r\n".encode() + b"".join(f"${len(w)}\r\n{w}\r\n".encode() for w in words))
        print(f"{cmd} -> {reply()!r}")
    f.close()
    s.close()


def dns_query(server: str, name: str) -> None:
    """One A query over UDP (used when dig is missing)."""
    qid = random.randrange(65536)
    q = struct.pack(">HHHHHH", qid, 0x0100, 1, 0, 0, 0) + \
        b"".join(bytes([len(x)]) + x.encode() for x in name.split(".")) + b"\0" + struct.pack(">HH", 1, 1)
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.settimeout(3)
    s.sendto(q, (server, DNS_PORT))
    data = s.recv(4096)
    flags, an = struct.unpack_from(">HH", data, 2)[0], struct.unpack_from(">H", data, 6)[0]
    ips = [socket.inet_ntoa(data[i + 12:i + 16]) for i in range(len(data) - 15)
           if data[i + 2:i + 4] == b"\0\1" and data[i + 10:i + 12] == b"\0\4"][:an]
    print(f"{name} A -> rcode {flags & 15}, {an} answers {ips}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    sub.add_parser("capture", help="build the lab, write OUTDIR/k8s_*.pcapng + OUTDIR/truth/, tear down").add_argument(
        "outdir", type=Path)
    sub.add_parser("up", help="build the lab and start the servers (no traffic)")
    sub.add_parser("down", help="stop every process and delete every fsk-* namespace")
    sub.add_parser("truth", help="recompute OUTDIR/truth/k8s_*.json from the pcaps").add_argument("outdir", type=Path)
    s = sub.add_parser("http-server")
    s.add_argument("--port", type=int, default=HTTP_PORT)
    g = sub.add_parser("http-get")
    g.add_argument("host")
    g.add_argument("port", type=int)
    g.add_argument("paths", nargs="+")
    r = sub.add_parser("redis")
    r.add_argument("host")
    r.add_argument("port", type=int)
    r.add_argument("cmds", nargs="+")
    q = sub.add_parser("dns-query")
    q.add_argument("server")
    q.add_argument("name")
    a = ap.parse_args()
    if a.cmd in ("capture", "up", "down") and os.geteuid() != 0:
        raise SystemExit("k8s_lab: needs root (namespaces, veth, bridge)")
    if a.cmd == "capture":
        cmd_capture(a.outdir)
    elif a.cmd == "up":
        cmd_up()
    elif a.cmd == "down":
        cmd_down()
    elif a.cmd == "truth":
        cmd_truth(a.outdir)
    elif a.cmd == "http-server":
        http_server(a.port)
    elif a.cmd == "http-get":
        http_get(a.host, a.port, a.paths)
    elif a.cmd == "redis":
        redis_cmds(a.host, a.port, a.cmds)
    else:
        dns_query(a.server, a.name)


if __name__ == "__main__":
    main()
