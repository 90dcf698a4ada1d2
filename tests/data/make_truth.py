#!/usr/bin/env python3
"""Compute the packet-level truth for each committed pcap with tshark, once, and store it next to
the pcaps as truth/<name>.json (commands included). Run again only when a pcap changes:

    python3 tests/data/make_truth.py            # needs tshark (Debian package tshark)

Per conversation (tshark's address/port pairs, innermost layer for tunnels):
* frames A→B / B→A from ``tshark -q -z conv,tcp -z conv,udp``;
* exact bytes per direction from per-frame fields (conv's table rounds bytes to kB above 10 kB),
  cross-checked against conv's frame counts.
The pcaps were captured with ../shared/netlab (``lab.sh capture``) on the client's eth0.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

HERE = Path(__file__).resolve().parent
CONV_CMD = ["tshark", "-n", "-q", "-r", "{pcap}", "-z", "conv,tcp", "-z", "conv,udp"]
# _ws.col.Source/Destination are the innermost network addresses (what conv uses for tunnels).
FIELDS = ["frame.len", "_ws.col.Source", "_ws.col.Destination", "tcp.srcport", "tcp.dstport",
          "udp.srcport", "udp.dstport", "tcp.analysis.retransmission", "tcp.analysis.out_of_order"]
FIELDS_CMD = ["tshark", "-n", "-r", "{pcap}", "-T", "fields", "-E", "separator=|", "-E", "occurrence=l"] + \
    [x for f in FIELDS for x in ("-e", f)]
TUNNEL_PORTS = {4789, 8472, 6081}
CONV_RE = re.compile(r"^(\S+):(\d+)\s+<->\s+(\S+):(\d+)\s+(\d+)\s+\S+\s+\S+\s+(\d+)\s+")


def run(cmd: list[str], pcap: Path) -> str:
    return subprocess.run([c.replace("{pcap}", str(pcap)) for c in cmd], check=True, capture_output=True,
                          text=True).stdout


def conversations(pcap: Path) -> list[dict]:
    out, proto = [], None
    for line in run(CONV_CMD, pcap).splitlines():
        if line.startswith(("TCP Conversations", "UDP Conversations")):
            proto = line.split()[0].lower()
            continue
        m = CONV_RE.match(line)
        if m and proto:
            a, ap, b, bp, frames_ba, frames_ab = m.groups()
            out.append({"proto": proto, "a": a, "a_port": int(ap), "b": b, "b_port": int(bp),
                        "frames_ab": int(frames_ab), "frames_ba": int(frames_ba)})
    return out


def exact_bytes(pcap: Path) -> dict[tuple, list[int]]:
    """(proto, src, sport, dst, dport) → [frames, bytes, retransmissions, out-of-order] from
    per-frame fields (innermost layer; tshark's TCP analysis flags)."""
    acc: dict[tuple, list[int]] = defaultdict(lambda: [0, 0, 0, 0])
    for line in run(FIELDS_CMD, pcap).splitlines():
        flen, src, dst, tsp, tdp, usp, udp, retrans, ooo = line.split("|")
        if tsp:
            key = ("tcp", src, int(tsp), dst, int(tdp))
        elif usp:
            key = ("udp", src, int(usp), dst, int(udp))
        else:
            continue
        a = acc[key]
        a[0] += 1
        a[1] += int(flen)
        a[2] += bool(retrans)
        a[3] += bool(ooo)
    return acc


def truth(pcap: Path) -> dict:
    convs = conversations(pcap)
    exact = exact_bytes(pcap)
    for c in convs:
        c["tunnel_outer"] = c["proto"] == "udp" and bool({c["a_port"], c["b_port"]} & TUNNEL_PORTS)
        if c["tunnel_outer"]:           # the underlay of a tunnel: not a flow of its own after decap
            c["bytes_ab"] = c["bytes_ba"] = None
            continue
        ab = exact.get((c["proto"], c["a"], c["a_port"], c["b"], c["b_port"]), [0, 0, 0, 0])
        ba = exact.get((c["proto"], c["b"], c["b_port"], c["a"], c["a_port"]), [0, 0, 0, 0])
        if (ab[0], ba[0]) != (c["frames_ab"], c["frames_ba"]):
            raise SystemExit(f"{pcap.name}: conv and fields disagree on {c}: {ab} {ba}")
        c["bytes_ab"], c["bytes_ba"] = ab[1], ba[1]
        if c["proto"] == "tcp":
            c["tshark_retrans_ab"], c["tshark_retrans_ba"] = ab[2], ba[2]
            c["tshark_ooo_ab"], c["tshark_ooo_ba"] = ab[3], ba[3]
    return {"pcap": pcap.name, "commands": [" ".join(CONV_CMD), " ".join(FIELDS_CMD)],
            "tshark": run(["tshark", "--version"], pcap).splitlines()[0], "conversations": convs}


def main(names: list[str]) -> None:
    (HERE / "truth").mkdir(exist_ok=True)
    pcaps = [HERE / f"{n}.pcap" for n in names] if names else sorted(HERE.glob("*.pcap"))
    for p in pcaps:
        t = truth(p)
        (HERE / "truth" / f"{p.stem}.json").write_text(json.dumps(t, indent=1) + "\n")
        print(f"{p.name}: {len(t['conversations'])} conversations")


if __name__ == "__main__":
    main(sys.argv[1:])
