"""The collector's main loop, wired in one place: capture source → flow table → metrics → writer.

One ``Collector`` per process; the CLI builds it from the configuration and runs it on a pcap
source (until the files end) or a live source (until asked to stop).
"""

from __future__ import annotations

import gc
import logging
import socket
import threading
import time
from pathlib import Path

import pyarrow as pa

from collector.capture.base import LINKTYPE_ETHERNET, CaptureNic
from collector.decode.packet import Decoder
from collector.flow.observation import NearEnd, NicRoles, guess_local_mac
from collector.flow.report import L4_COLUMNS, L7_COLUMNS
from collector.flow.table import FlowConfig, FlowTable, NicInfo
from collector.l7.registry import Detector
from collector.metrics import MetricsAggregator
from collector.tagging import DEV_NODE, DEV_POD, InventoryTagger, Tagger, ip_key
from collector.writer import RowBatch, Writer
from flowscope.config import Config

log = logging.getLogger("flowscope.collector")

L4_TABLE = "flow_log.l4_flow_log"
L7_TABLE = "flow_log.l7_flow_log"
WRITTEN_TABLES = (L4_TABLE, L7_TABLE, "flow_tag.vtap", "flow_tag.vtap_port") + tuple(
    f"flow_metrics.{t}.{p}" for t in ("network", "network_map", "application", "application_map") for p in ("1s", "1m"))
L4_BATCH_ROWS = 50_000


def tune_gc() -> None:
    """Flow objects are freed by reference counting (cycles are broken when a flow ends), so the
    cyclic collector only needs to run rarely; at the default thresholds it rescans millions of
    live flow objects many times a second."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(100_000, 50, 100)


def _parse_mac(text: str) -> bytes:
    parts = text.replace("-", ":").split(":")
    if len(parts) != 6:
        raise ValueError(f"not a MAC address: {text!r}")
    return bytes(int(p, 16) for p in parts)


class Collector:
    """Owns the flow table, the metrics aggregator and the writer's inputs."""

    def __init__(self, cfg: Config, writer: Writer, *, tagger: Tagger | None = None, live: bool = False,
                 worker: int = 0) -> None:
        self.cfg = cfg
        self.writer = writer
        self.live = live
        c = cfg.capture
        decoder = Decoder(decap=tuple(c.decap), vxlan_ports=tuple(c.vxlan_ports), geneve_port=c.geneve_port)
        self.tagger = tagger or Tagger()
        self.detector = Detector(cfg.l7.parser_config()) if cfg.l7.enabled else None
        self.table = FlowTable(self, FlowConfig(max_flows=cfg.flow.max_flows, timeouts=cfg.flow.timeouts,
                                                server_ports=frozenset(cfg.flow.server_ports),
                                                agent_id=cfg.agent_id, worker=worker),
                               decoder=decoder, tagger=self.tagger, l7=self.detector)
        self.metrics = MetricsAggregator(self.tagger.registry, agent_id=cfg.agent_id)
        self.app_metrics = MetricsAggregator(self.tagger.registry, agent_id=cfg.agent_id, family="application")
        self.roles = NicRoles(tuple(c.interfaces))
        self.local_macs = frozenset(_parse_mac(m) for m in c.local_macs)
        self.local_ips = frozenset(ip_key(i) for i in c.local_ips)
        self._l4: list[tuple] = []
        self._l7: list[tuple] = []
        self._registered: dict[int, CaptureNic] = {}
        self._last_flush = time.monotonic()
        self.nic_rows: list[tuple] = []
        self.source = None
        self.drain_s = 2.0
        self._agent_written = False
        self.metadata_stats = None        # the metadata runtime's stats(), when there is one

    # -- FlowTable sink ---------------------------------------------------------------------
    def l4(self, rows: list[tuple]) -> None:
        self.metrics.add_l4(rows)
        self._l4.extend(rows)
        if len(self._l4) >= L4_BATCH_ROWS:
            self._flush_l4()

    def seconds(self, rows: list[tuple]) -> None:
        self.metrics.add_seconds(rows)

    def l7(self, rows: list[tuple]) -> None:
        self._l7.extend(rows)
        if len(self._l7) >= L4_BATCH_ROWS:
            self._flush_l4()

    def app(self, rows: list[tuple]) -> None:
        self.app_metrics.add_seconds(rows)

    def _flush_l4(self) -> None:
        if self._l4:
            rows, self._l4 = self._l4, []
            self.writer.put(L4_TABLE, RowBatch(L4_COLUMNS, rows))
        if self._l7:
            rows, self._l7 = self._l7, []
            self.writer.put(L7_TABLE, RowBatch(L7_COLUMNS, rows))

    def _flush_metrics(self, final: bool = False) -> None:
        for agg in (self.metrics, self.app_metrics):
            for table, parts in agg.flush(self.table.sec, final=final).items():
                parts = [t for t in parts if t.num_rows]
                if parts:      # one insert per table: a ClickHouse insert costs ~10 ms however small
                    self.writer.put(table, pa.concat_tables(parts, promote_options="default"))
        self._last_flush = time.monotonic()

    # -- NICs -------------------------------------------------------------------------------
    def register_nics(self, source, batch: list) -> None:
        """Tell the flow table about NICs that appear in ``batch`` for the first time.

        Registration waits for a NIC's first packets: a pcap without direction metadata or MAC
        needs them to guess which host it was taken on."""
        present = {p[3] for p in batch}
        for nic_id in present - self._registered.keys():
            nic = source.nics.get(nic_id)
            if nic is None:
                continue
            self._registered[nic_id] = nic
            role = self.roles.role_of(nic.name)
            near_ips = self.local_ips
            if self.live and isinstance(self.tagger, InventoryTagger) and self.tagger.inv.resources:
                role, near_ips = self._role_from_inventory(nic, role)
            macs = {nic.mac} if nic.mac else set(self.local_macs)
            frames = [p for p in batch if p[3] == nic_id]
            has_direction = any(p[4] for p in frames[:64])
            if not macs and not near_ips and not has_direction and nic.linktype == LINKTYPE_ETHERNET:
                guess = guess_local_mac([(p[1][6:12], p[1][0:6]) for p in frames[:4000] if len(p[1]) >= 14])
                if guess:
                    macs = {guess}
                    log.info("%s: no direction metadata; capture taken on %s (guessed from its frames)",
                             nic.name, guess.hex(":"))
            mac = next(iter(macs), b"")
            capture_nic = int.from_bytes(mac[2:6], "big") if len(mac) == 6 else 0
            self.table.add_nic(nic_id, NicInfo(name=nic.name, role=role, linktype=nic.linktype,
                                               capture_nic=capture_nic, netns=nic.netns,
                                               near=NearEnd(role, frozenset(macs), near_ips)))
            self.nic_rows.append((self.cfg.agent_id, capture_nic, nic.name, nic.netns, role, mac.hex(":")))
            # capture NIC names for flow_tag.vtap_port_map (DeepFlow's tap_port → interface name)
            name = f"{nic.netns}/{nic.name}" if nic.netns else nic.name
            self.writer.put("flow_tag.vtap_port", pa.table({
                "vtap_id": pa.array([self.cfg.agent_id], pa.uint64()),
                "tap_port": pa.array([capture_nic], pa.uint64()), "name": [name]}))
        if not self._agent_written:
            self._agent_written = True
            self.writer.put("flow_tag.vtap", pa.table({
                "id": pa.array([self.cfg.agent_id], pa.uint64()), "name": [agent_name(self.cfg)],
                "host": [socket.gethostname()]}))

    def _role_from_inventory(self, nic, role: str) -> tuple[str, frozenset]:
        """A live NIC's role and near-end addresses from what the inventory says is behind it: a
        veth whose peer holds a pod's address is that pod's NIC (whatever its name; observation
        points c / s), a NIC holding a node's address is the node's (c-nd / s-nd)."""
        from collector.capture.peer import own_addresses, peer_addresses

        by_id = self.tagger.registry.by_id
        kinds = lambda ips: {by_id[self.tagger.tag(ip_key(ip))].l3_device_type for ip in ips}  # noqa: E731
        peer = peer_addresses(nic.netns, nic.name)
        if peer and DEV_POD in kinds(peer) and role != "local":
            log.info("%s: the NIC of pod address(es) %s", nic.name, ", ".join(peer))
            return "pod", frozenset(ip_key(ip) for ip in peer) | self.local_ips
        own = own_addresses(nic.netns, nic.name)
        if own and role == "own" and DEV_NODE in kinds(own):
            log.info("%s: a node's NIC (%s)", nic.name, ", ".join(own))
            role = "node"
        return role, frozenset(ip_key(ip) for ip in own) | self.local_ips

    # -- main loops -------------------------------------------------------------------------
    def run(self, source, stop: threading.Event | None = None, now_us=None) -> None:
        """Consume ``source`` until it ends (files) or ``stop`` is set (live), then flush all.

        After ``stop``, what the kernel already queued is still read: the loop ends at the first
        empty batch (the rings are idle) or after ``drain_s``."""
        table = self.table
        flush_every = self.cfg.writer.flush_interval_s
        self.source = source
        registered = self._registered
        stopping_since = 0.0
        tagger = self.tagger
        for batch in source.batches():
            if tagger.pending is not None:       # a new inventory, built on another thread
                tagger.apply_pending()
            if batch and (len(registered) < len(source.nics) or batch[0][3] not in registered):
                self.register_nics(source, batch)
            if batch:
                table.process(batch)
            elif now_us is not None:
                table.advance(now_us())
            if self.live and time.monotonic() - self._last_flush >= flush_every:
                if now_us is not None:
                    table.advance(now_us())
                self._flush_l4()
                self._flush_metrics()
            elif not self.live and self.metrics.pending() + self.app_metrics.pending() >= 200_000:
                self._flush_metrics()
            if stop is not None and stop.is_set():
                if not stopping_since:
                    stopping_since = time.monotonic()
                if not batch or time.monotonic() - stopping_since > self.drain_s:
                    break
        self.finish()

    def finish(self) -> None:
        """End of capture: every flow's final row, every pending metric, then wait for the writer."""
        self.table.flush()
        self._flush_l4()
        self._flush_metrics(final=True)
        self.writer.flush()

    # -- self-metrics ----------------------------------------------------------------------
    def snapshot(self) -> dict:
        """Counters for the summary and for /metrics (all cumulative since start)."""
        ws = self.writer.stats
        return {
            "table": dict(self.table.stats),
            "l7": {**self.table.l7_stats,
                   **({f"detected {k}": v for k, v in self.detector.detected.items()} if self.detector else {}),
                   **({f"gave up: {k}": v for k, v in self.detector.gave_up.items()} if self.detector else {})},
            "flows_active": self.table.nflows,
            "decode_skipped": dict(self.table.decoder.skipped),
            "decode_notes": dict(self.table.decoder.seen),
            "capture": self.source.stats() if self.source is not None else {},
            "rows_written": dict(ws.rows_written),
            "rows_dropped": dict(ws.rows_dropped),
            "spool_bytes": ws.spool_bytes,
            "rows_spooled": ws.rows_spooled,
            "insert_errors": ws.insert_errors,
            "last_error": ws.last_error,
            **({"metadata": self.metadata_stats()} if self.metadata_stats is not None else {}),
        }


def agent_name(cfg: Config) -> str:
    return cfg.agent_name or socket.gethostname()


def spool_dir(cfg: Config) -> Path:
    return Path(cfg.writer.spool_dir)


def merge_snapshots(snaps: list[dict]) -> dict:
    """Several workers' snapshots as one (counters summed)."""
    out: dict = {"table": {}, "flows_active": 0, "decode_skipped": {}, "decode_notes": {}, "capture": {},
                 "rows_written": {}, "rows_dropped": {}, "spool_bytes": 0, "rows_spooled": 0,
                 "insert_errors": 0, "last_error": ""}
    for s in snaps:
        for key in ("table", "decode_skipped", "decode_notes", "capture", "rows_written", "rows_dropped"):
            for k, v in s.get(key, {}).items():
                out[key][k] = out[key].get(k, 0) + v
        for key in ("flows_active", "spool_bytes", "rows_spooled", "insert_errors"):
            out[key] += s.get(key, 0)
    return out
