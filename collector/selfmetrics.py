"""The collector's own counters in Prometheus text format, read from live state at scrape time
(nothing on the packet path updates a Prometheus object)."""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily


class _SnapshotCollector:
    def __init__(self, snapshot: Callable[[], dict]) -> None:
        self.snapshot = snapshot

    def collect(self):
        s = self.snapshot()
        t = s["table"]
        c = CounterMetricFamily("flowscope_packets", "Packets seen by the flow table")
        c.add_metric([], t.get("packets", 0))
        yield c
        c = CounterMetricFamily("flowscope_bytes", "Bytes (on the wire) captured")
        c.add_metric([], s.get("capture", {}).get("wire_bytes", 0))
        yield c
        c = CounterMetricFamily("flowscope_packets_skipped", "Packets skipped by the decoder", labels=["reason"])
        for reason, n in s["decode_skipped"].items():
            c.add_metric([reason], n)
        yield c
        cap = s.get("capture", {})
        c = CounterMetricFamily("flowscope_capture_dropped", "Packets dropped before decoding",
                                labels=["reason"])
        c.add_metric(["kernel"], cap.get("kernel_drops", 0))
        c.add_metric(["malformed_record"], cap.get("malformed", 0))
        yield c
        g = GaugeMetricFamily("flowscope_flows_active", "Flows in the flow table")
        g.add_metric([], s["flows_active"])
        yield g
        for name, key, doc in (("flowscope_flows_created", "flows_created", "Flows created"),
                               ("flowscope_flows_closed", "flows_closed", "Flows ended (any close type)"),
                               ("flowscope_flows_evicted", "flows_evicted",
                                "Flows evicted because the table was full (reported as ForcedReport)")):
            c = CounterMetricFamily(name, doc)
            c.add_metric([], t.get(key, 0))
            yield c
        c = CounterMetricFamily("flowscope_rows_written", "Rows inserted into ClickHouse", labels=["table"])
        for table, n in s["rows_written"].items():
            c.add_metric([table], n)
        yield c
        c = CounterMetricFamily("flowscope_rows_dropped", "Rows dropped (writer queue full or unconvertible)",
                                labels=["table"])
        for table, n in s["rows_dropped"].items():
            c.add_metric([table], n)
        yield c
        g = GaugeMetricFamily("flowscope_spool_bytes", "Bytes waiting in the disk spool")
        g.add_metric([], s["spool_bytes"])
        yield g
        c = CounterMetricFamily("flowscope_insert_errors", "Failed ClickHouse inserts")
        c.add_metric([], s["insert_errors"])
        yield c
        ebpf = s.get("ebpf")
        if ebpf is not None:
            yield from _ebpf_metrics(ebpf)
        md = s.get("metadata")
        if md:
            g = GaugeMetricFamily("flowscope_inventory_addresses", "Addresses the tagger knows")
            g.add_metric([], md["addresses"])
            yield g
            g = GaugeMetricFamily("flowscope_inventory_stale_seconds",
                                  "Seconds since the metadata store was last read (alert when it grows)")
            g.add_metric([], md["stale_s"] if md["stale_s"] is not None else float("inf"))
            yield g
            c = CounterMetricFamily("flowscope_inventory_errors", "Failed reads of the metadata store or sources")
            c.add_metric([], md["errors"])
            yield c


def prometheus_text(snapshot: Callable[[], dict]) -> Callable[[], bytes]:
    """A function returning the current self-metrics as Prometheus exposition text."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_SnapshotCollector(snapshot))
    return lambda: generate_latest(registry)


# eBPF tracer snapshot keys (collector.ebpf.EbpfCollector.snapshot) → why its events were not parsed
_EBPF_LOST = {"events lost (perf buffer full)": "perf_buffer_full", "kernel submit failed": "kernel_submit_failed",
              "events shed (over budget)": "over_budget"}


def _ebpf_metrics(e: dict):
    """The socket tracer's counters: what an operator alerts on (losses, CPU, sockets)."""
    c = CounterMetricFamily("flowscope_ebpf_events", "Socket events the tracer read")
    c.add_metric([], e.get("events", 0))
    yield c
    c = CounterMetricFamily("flowscope_ebpf_events_lost", "Socket events lost or shed", labels=["reason"])
    for key, reason in _EBPF_LOST.items():
        c.add_metric([reason], e.get(key, 0))
    yield c
    c = CounterMetricFamily("flowscope_ebpf_rows", "l7_flow_log rows made from socket events")
    c.add_metric([], e.get("rows", 0))
    yield c
    c = CounterMetricFamily("flowscope_ebpf_parser_gave_up", "Sockets whose L7 parser gave up")
    c.add_metric([], sum(v for k, v in e.items() if k.startswith("gave up")))
    yield c
    c = CounterMetricFamily("flowscope_ebpf_cpu_seconds", "CPU time of the tracer thread")
    c.add_metric([], e.get("tracer CPU ms", 0) / 1000)
    yield c
    g = GaugeMetricFamily("flowscope_ebpf_sockets", "Sockets the tracer follows")
    g.add_metric([], e.get("sockets tracked", 0))
    yield g
    g = GaugeMetricFamily("flowscope_ebpf_up", "1 while the tracer is attached, 0 when eBPF was unavailable")
    g.add_metric([], 0 if e.get("ebpf unavailable") else 1)
    yield g
