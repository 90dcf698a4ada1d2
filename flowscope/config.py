"""Configuration: one YAML file (``--config`` / ``$FLOWSCOPE_CONFIG``), every key optional.

Read once by the CLI and passed down as plain dataclasses; nothing deeper reads the environment.
See the README ("Configuration") for the annotated defaults.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any

import yaml

from collector.flow.observation import DEFAULT_RULES, ROLES
from collector.flow.tcp import Timeouts

ENV_CONFIG = "FLOWSCOPE_CONFIG"


class ConfigError(ValueError):
    """A configuration value is wrong; the message names the key."""


@dataclass
class CaptureConfig:
    # Interface-glob → role (own, pod, node, local, mirror); first match wins.
    interfaces: list[tuple[str, str]] = field(default_factory=lambda: list(DEFAULT_RULES))
    # Bytes kept per packet: headers of two tunnel tiers plus ~1.9 kB of payload for L7 parsers;
    # byte counters come from the wire and IP lengths, so a shorter capture loses nothing in L4.
    snaplen: int = 2048
    decap: list[str] = field(default_factory=lambda: ["vxlan", "geneve", "ipip", "gre"])
    vxlan_ports: list[int] = field(default_factory=lambda: [4789, 8472])
    geneve_port: int = 6081
    # For pcap files without direction metadata: the capturing host's MACs / IPs (else guessed).
    local_macs: list[str] = field(default_factory=list)
    local_ips: list[str] = field(default_factory=list)
    rescan_s: float = 5.0
    # TPACKET_V3 ring per interface: 2 MiB × 16 = 32 MiB of kernel memory (≈ 16k full frames,
    # ~40 ms at 400k pkt/s); raise it on busy uplinks, lower it with hundreds of pod veths.
    ring_block_kb: int = 2048
    ring_blocks: int = 16


@dataclass
class FlowSettings:
    max_flows: int = 1_000_000
    server_ports: list[int] = field(default_factory=list)
    timeouts: Timeouts = field(default_factory=Timeouts)


@dataclass
class L7Settings:
    enabled: bool = True
    protocols: list[str] | None = None     # None: all (HTTP, HTTP2, DNS, TLS, MySQL, Redis, Kafka, MQTT, Dubbo)
    sql_max: int = 1024                    # SQL text kept per statement
    redis_arg_max: int = 64
    result_max: int = 256
    max_buffer_kb: int = 64                # per flow direction
    http_endpoint_depth: int = 2           # path segments kept in HTTP endpoints
    endpoint_strip_ids: bool = True

    def parser_config(self):
        from collector.l7.base import L7Config

        return L7Config(protocols=frozenset(self.protocols) if self.protocols else None, sql_max=self.sql_max,
                        redis_arg_max=self.redis_arg_max, result_max=self.result_max,
                        max_buffer=self.max_buffer_kb << 10, http_endpoint_depth=self.http_endpoint_depth,
                        endpoint_strip_ids=self.endpoint_strip_ids)


@dataclass
class WriterConfig:
    queue_batches: int = 64
    spool_dir: str = ".flowscope/spool"
    spool_max_mb: int = 1024
    # Live capture hands rows and metrics to ClickHouse this often. Each insert has a fixed cost in
    # the embedded engine (~25-50 ms of CPU however few the rows: parsing, a new part's files), and a
    # flush writes ~6 tables: at 1 s the collector used 37% of a core for a trickle of traffic,
    # at 5 s 11% (DEVELOPERS.md, "Live flush interval"). Bigger batches flush early by size.
    flush_interval_s: float = 5.0


@dataclass
class TracingSettings:
    """Trace assembly bounds (datasource.tracing.TraceConfig; DeepFlow's defaults). A request to
    L7FlowTracing may lower max_iteration for itself."""
    max_iteration: int = 30                # search rounds per trace
    max_spans: int = 1000                  # rows per trace
    network_delay_us: int = 50_000         # the same request at two capture points: start times this close
    host_clock_offset_us: int = 10_000     # added across agents (hosts with their own clocks)
    window_s: int = 60                     # search this far around the rows found


@dataclass
class DatasourceConfig:
    listen: str = "127.0.0.1:20416"
    max_execution_time_s: int = 30
    max_result_rows: int = 1_000_000
    max_memory_mb: int = 2048
    token: str | None = None               # bearer token every request but /healthz must carry
    alerts_path: str = ".flowscope/alerts.jsonl"   # Grafana notifications received on /v1/alerts/webhook
    tracing: TracingSettings = field(default_factory=TracingSettings)


@dataclass
class MetadataSettings:
    # Where the inventory lives: sqlite:///FILE (embedded) or mysql://user:pass@host:3306/db.
    store: str = "sqlite:///.flowscope/metadata.db"
    inventory: str | None = None           # static inventory file (README "Inventory")
    # Kubernetes clusters to watch: [{name: prod, kubeconfig: ~/.kube/config, context: prod}];
    # {name: X} alone uses the in-cluster service account.
    kubernetes: list[dict] = field(default_factory=list)
    cluster: str = ""                      # the cluster this collector runs in (wins IP conflicts)
    enabled: bool | None = None            # None: on when an inventory, a cluster or --metadata is given
    refresh_s: float = 5.0                 # how often the collector polls the store for changes
    sync_interval_s: float = 60.0          # full flow_tag sync period (changes sync within refresh_s)

    @property
    def active(self) -> bool:
        return bool(self.inventory or self.kubernetes) if self.enabled is None else self.enabled


@dataclass
class EbpfSettings:
    """The eBPF socket tracer (``--ebpf``): its CPU and memory caps."""
    max_events_per_s: int = 50_000         # socket data events parsed per second; beyond, sockets are shed
    max_sockets: int = 65536               # sockets with parser state (beyond: shed, counted)
    max_pending: int = 256                 # requests awaiting a response per socket (beyond: reported UNKNOWN)
    payload_bytes: int = 512               # payload prefix copied per syscall: a power of two, 64..4096
    perf_pages: int = 256                  # perf buffer pages per CPU (a power of two)
    tls: bool = True                       # OpenSSL SSL_read/SSL_write uprobes (HTTPS in plaintext)
    tls_libraries: list[str] | None = None  # None: the system's libssl.so.3
    # "normal": the tracer thread competes for the CPU like any thread. "idle": SCHED_IDLE, so a
    # traced thread that wakes up takes the CPU from it at once (at normal priority it may wait for
    # the end of the tracer's time slice: +150% p90 latency with both on one CPU); but when other
    # threads keep every CPU busy the tracer starves: its buffer overflows (counted) and the
    # process's other threads wait for the GIL it holds (see README).
    cpu_policy: str = "normal"


@dataclass
class Config:
    clickhouse: str | None = None          # DSN; None = $FLOWSCOPE_CLICKHOUSE or the embedded store
    agent_id: int = 1
    agent_name: str = ""                   # default: the host name
    retention_hours: dict[str, int] = field(default_factory=dict)
    capture: CaptureConfig = field(default_factory=CaptureConfig)
    flow: FlowSettings = field(default_factory=FlowSettings)
    l7: L7Settings = field(default_factory=L7Settings)
    writer: WriterConfig = field(default_factory=WriterConfig)
    datasource: DatasourceConfig = field(default_factory=DatasourceConfig)
    metadata: MetadataSettings = field(default_factory=MetadataSettings)
    ebpf: EbpfSettings = field(default_factory=EbpfSettings)

    def validate(self) -> Config:
        if not 0 < self.agent_id < 65536:
            raise ConfigError(f"agent_id: must be 1..65535, got {self.agent_id}")
        for i, rule in enumerate(self.capture.interfaces):
            if len(rule) != 2 or rule[1] not in ROLES:
                raise ConfigError(f"capture.interfaces[{i}]: expected {{match: GLOB, role: {'|'.join(ROLES)}}}, "
                                  f"got {rule!r}")
        unknown = set(self.capture.decap) - {"vxlan", "geneve", "ipip", "gre"}
        if unknown:
            raise ConfigError(f"capture.decap: unknown tunnel(s) {sorted(unknown)} (known: vxlan geneve ipip gre)")
        for i, spec in enumerate(self.metadata.kubernetes):
            if not isinstance(spec, dict) or not spec.get("name") or set(spec) - {"name", "kubeconfig", "context"}:
                raise ConfigError(f"metadata.kubernetes[{i}]: expected {{name: CLUSTER, kubeconfig: FILE, "
                                  f"context: NAME}}, got {spec!r}")
        if not self.metadata.store.startswith(("sqlite://", "mysql://")):
            raise ConfigError(f"metadata.store: sqlite:///FILE or mysql://user:pass@host/db, got {self.metadata.store!r}")
        e = self.ebpf
        for name in ("payload_bytes", "perf_pages"):
            v = getattr(e, name)
            if v < 1 or v & (v - 1) or (name == "payload_bytes" and not 64 <= v <= 4096):
                raise ConfigError(f"ebpf.{name}: a power of two{' in 64..4096' if name == 'payload_bytes' else ''}, "
                                  f"got {v}")
        if e.cpu_policy not in ("idle", "normal"):
            raise ConfigError(f"ebpf.cpu_policy: idle or normal, got {e.cpu_policy!r}")
        if e.max_events_per_s < 0 or e.max_sockets < 1 or e.max_pending < 1:
            raise ConfigError("ebpf: max_events_per_s >= 0 (0: no cap), max_sockets and max_pending >= 1")
        t = self.datasource.tracing
        for name in ("max_iteration", "max_spans", "window_s"):
            if not isinstance(getattr(t, name), int) or getattr(t, name) < 1:
                raise ConfigError(f"datasource.tracing.{name}: a positive integer, got {getattr(t, name)!r}")
        for name in ("network_delay_us", "host_clock_offset_us"):
            if not isinstance(getattr(t, name), int) or getattr(t, name) < 0:
                raise ConfigError(f"datasource.tracing.{name}: an integer >= 0, got {getattr(t, name)!r}")
        if self.flow.max_flows < 1000:
            raise ConfigError(f"flow.max_flows: at least 1000, got {self.flow.max_flows}")
        return self


def _build(cls: type, data: Any, path: str) -> Any:
    if not isinstance(data, dict):
        raise ConfigError(f"{path or 'config'}: expected a mapping, got {type(data).__name__}")
    known = {f.name: f for f in fields(cls)}
    kwargs = {}
    for key, value in data.items():
        f = known.get(key)
        where = f"{path}.{key}" if path else key
        if f is None:
            raise ConfigError(f"{where}: unknown key (known: {', '.join(sorted(known))})")
        default = getattr(cls(), key) if is_dataclass(cls) else None
        if is_dataclass(default):
            kwargs[key] = _build(type(default), value, where)
        elif key == "interfaces":
            try:
                kwargs[key] = [(r["match"], r["role"]) for r in value]
            except (TypeError, KeyError) as e:
                raise ConfigError(f"{where}: expected a list of {{match: GLOB, role: ROLE}}") from e
        else:
            kwargs[key] = value
    return cls(**kwargs)


def load(path: str | os.PathLike | None = None) -> Config:
    """Defaults, overlaid with the YAML file at ``path`` (or $FLOWSCOPE_CONFIG) if any."""
    path = path or os.environ.get(ENV_CONFIG)
    if not path:
        return Config().validate()
    p = Path(path)
    try:
        data = yaml.safe_load(p.read_text()) or {}
    except OSError as e:
        raise ConfigError(f"cannot read config file {p}: {e.strerror}") from e
    except yaml.YAMLError as e:
        raise ConfigError(f"{p}: not valid YAML: {e}") from e
    return _build(Config, data, "").validate()
