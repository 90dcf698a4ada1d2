"""``flowscope`` command line: collect, query, serve, up, db migrate.

This is the one place where objects are wired together from the configuration.
"""

from __future__ import annotations

import json
import logging
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from dashboards.cli import app as dashboards_app
from flowscope import config as config_mod
from flowscope import storage

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="Zero-code network observability: packets → flows and metrics in ClickHouse, "
                       "queried with DeepFlow's SQL.")
db_app = typer.Typer(no_args_is_help=True, help="Database schema commands.")
app.add_typer(db_app, name="db")
app.add_typer(dashboards_app, name="dashboards")
# soft_wrap: an error stays one line when stderr is not a terminal (rich would wrap it at 80 columns)
err = Console(stderr=True, soft_wrap=True)

ConfigOpt = Annotated[Path | None, typer.Option("--config", "-c", help="YAML config file ($FLOWSCOPE_CONFIG).")]
DsnOpt = Annotated[str | None, typer.Option("--clickhouse", help="ClickHouse DSN: chdb:///DIR (embedded, "
                                            "default ./.flowscope/chdb) or http(s)://user:pass@host:8123/ "
                                            "($FLOWSCOPE_CLICKHOUSE).")]
InventoryOpt = Annotated[Path | None, typer.Option("--inventory", help="Static inventory YAML (clusters, "
                                                    "nodes, pods, services, hosts) to tag flows with.")]
MetadataOpt = Annotated[str | None, typer.Option("--metadata", help="Metadata store: sqlite:///FILE (default "
                                                 ".flowscope/metadata.db) or mysql://user:pass@host/db "
                                                 "($FLOWSCOPE_METADATA).")]
KubeOpt = Annotated[list[str] | None, typer.Option("--kube", help="Watch a Kubernetes cluster: NAME (in-cluster "
                                                   "service account) or NAME=KUBECONFIG[@CONTEXT]; repeatable.")]
TokenOpt = Annotated[str | None, typer.Option("--token", envvar="FLOWSCOPE_TOKEN", show_envvar=True,
                                              help="Bearer token the datasource requires on every request "
                                                   "but /healthz (else config datasource.token; none: open).")]
SendTokenOpt = Annotated[str | None, typer.Option("--token", envvar="FLOWSCOPE_TOKEN", show_envvar=True,
                                                  help="Bearer token to send to --datasource (else config "
                                                       "datasource.token).")]
EbpfOpt = Annotated[bool, typer.Option("--ebpf", help="Also trace sockets with eBPF (syscall tracepoints; "
                                        "needs root and bcc): L7 rows at observation points c-p / s-p. "
                                        "Without SOURCES: eBPF only, until SIGINT/SIGTERM.")]
PidOpt = Annotated[list[int] | None, typer.Option("--pid", help="--ebpf: trace only these process ids "
                                                  "(repeatable).")]
CommOpt = Annotated[str | None, typer.Option("--comm", help="--ebpf: trace only processes whose name "
                                             "(comm) starts with this.")]
ListenOpt = Annotated[str | None, typer.Option("--listen", help="Datasource address HOST:PORT "
                                               "(default 127.0.0.1:20416, config datasource.listen).")]
DEFAULT_LISTEN = "127.0.0.1:20416"


def _setup_logging(verbose: bool) -> None:
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")


def _load_config(path: Path | None, dsn: str | None) -> config_mod.Config:
    try:
        cfg = config_mod.load(path)
    except config_mod.ConfigError as e:
        err.print(f"[red]config error:[/red] {e}")
        raise typer.Exit(2) from e
    if dsn:
        cfg.clickhouse = dsn
    return cfg


def _apply_metadata_options(cfg: config_mod.Config, inventory: Path | None, metadata: str | None,
                            kube: list[str] | None) -> None:
    import os

    m = cfg.metadata
    if inventory:
        m.inventory = str(inventory)
    metadata = metadata or os.environ.get("FLOWSCOPE_METADATA")
    if metadata:
        m.store = metadata
        if m.enabled is None:
            m.enabled = True
    for spec in kube or ():
        name, _, rest = spec.partition("=")
        kubeconfig, _, context = rest.partition("@")
        m.kubernetes.append({"name": name, "kubeconfig": kubeconfig or None, "context": context or None})
    try:
        cfg.validate()
    except config_mod.ConfigError as e:
        err.print(f"[red]config error:[/red] {e}")
        raise typer.Exit(2) from e


def _open_metadata(cfg: config_mod.Config, *, sources: bool = True):
    """The tagger, and the metadata runtime feeding it (None without an inventory)."""
    from collector.tagging import InventoryTagger, Tagger
    from flowscope.metadata.inventory import InventoryError
    from flowscope.metadata.runtime import Metadata

    if not cfg.metadata.active:
        return Tagger(), None
    tagger = InventoryTagger(own_cluster=cfg.metadata.cluster)
    md = Metadata(cfg.metadata, tagger)
    try:
        md.open(wait_s=10.0 if sources else 0.0, sources=sources)
    except InventoryError as e:
        err.print(f"[red]inventory error:[/red] {e}")
        raise typer.Exit(2) from e
    return tagger, md


def _connect(cfg: config_mod.Config, **kw):
    try:
        return storage.connect(cfg.clickhouse, **kw)
    except storage.StorageError as e:
        err.print(f"[red]error:[/red] {e}")
        raise typer.Exit(1) from e


def _migrate(client, cfg: config_mod.Config, cluster: str | None = None):
    from flowscope import migrate

    try:
        return migrate.apply(client, cluster=cluster, retention=cfg.retention_hours or None)
    except (ValueError, migrate.MigrationError) as e:
        err.print(f"[red]migration failed:[/red] {e}")
        raise typer.Exit(1) from e


def _stop_event() -> threading.Event:
    """SIGINT / SIGTERM set the event: the collector flushes every flow and exits cleanly."""
    stop = threading.Event()

    def handler(signum, frame):
        if stop.is_set():
            raise KeyboardInterrupt
        err.print(f"[yellow]{signal.Signals(signum).name}: flushing flows and stopping…[/yellow]")
        stop.set()

    signal.signal(signal.SIGINT, handler)
    signal.signal(signal.SIGTERM, handler)
    return stop


def _open_source(cfg: config_mod.Config, pcap: bool, iface: bool, sources: list[str], workers_fanout=None):
    from collector.capture.base import CaptureError

    if pcap == iface:
        err.print("[red]error:[/red] say what SOURCES are: --pcap FILE... or --iface PATTERN...")
        raise typer.Exit(2)
    if not sources:
        err.print("[red]error:[/red] no " + ("pcap files" if pcap else "interface patterns") + " given")
        raise typer.Exit(2)
    try:
        if pcap:
            from collector.capture.pcap import PcapSource

            missing = [s for s in sources if not Path(s).is_file()]
            if missing:
                err.print(f"[red]error:[/red] no such file: {', '.join(missing)}")
                raise typer.Exit(2)
            return PcapSource(list(sources)), False
        from collector.capture.afpacket import AfPacketSource

        c = cfg.capture
        return AfPacketSource(list(sources), snaplen=c.snaplen, block_size=c.ring_block_kb << 10,
                              block_count=c.ring_blocks, rescan_s=c.rescan_s, fanout=workers_fanout), True
    except CaptureError as e:
        err.print(f"[red]capture error:[/red] {e}")
        raise typer.Exit(1) from e


def _start_ebpf(cfg: config_mod.Config, col, pids: list[int] | None, comm: str | None):
    """The eBPF tracer beside the collector, writing through its writer; it degrades (one log
    line, a counter) when eBPF is unavailable. Returns the EbpfCollector (started or not)."""
    from collector.ebpf import EbpfCollector

    tracer = EbpfCollector(col.writer, pids=pids, comm=comm, agent_id=cfg.agent_id, tagger=col.tagger,
                           detector=col.detector, flush_interval_s=cfg.writer.flush_interval_s, settings=cfg.ebpf)
    if tracer.start():      # else it logs "eBPF tracing disabled: <reason>" itself
        err.print(f"eBPF socket tracer attached{tracer._filter_text()}")
    return tracer


def _build_collector(cfg: config_mod.Config, client, live: bool, tagger=None):
    from collector.pipeline import Collector, spool_dir, tune_gc
    from collector.writer import Writer

    writer = Writer(client, block=not live, queue_batches=cfg.writer.queue_batches, spool_dir=spool_dir(cfg),
                    spool_max_bytes=cfg.writer.spool_max_mb << 20)
    col = Collector(cfg, writer, live=live, tagger=tagger)
    writer.registry = col.tagger.registry
    writer.replay_spool()
    tune_gc()
    return col


def _print_summary(s: dict, elapsed: float, md=None) -> None:
    t = s["table"]
    tab = Table(title="flowscope collect", show_header=False, box=None)
    rate = t["packets"] / elapsed if elapsed > 0 else 0
    wire = s["capture"].get("wire_bytes", 0)
    tab.add_row("packets", f"{t['packets']:,} ({wire:,} bytes) in {elapsed:.1f}s, {rate:,.0f} pkt/s")
    tab.add_row("flows", f"{t['flows_created']:,} created, {t['flows_closed']:,} ended, "
                         f"{t['flows_evicted']:,} evicted")
    for table_name, n in sorted(s["rows_written"].items()):
        tab.add_row(f"rows → {table_name}", f"{n:,}")
    for table_name, n in sorted(s["rows_dropped"].items()):
        tab.add_row(f"[red]rows dropped[/red] {table_name}", f"{n:,}")
    if s["rows_spooled"]:
        tab.add_row("[yellow]spooled (ClickHouse down)[/yellow]", f"{s['rows_spooled']:,} rows, {s['spool_bytes']:,} bytes")
    for reason, n in sorted(s["decode_skipped"].items()):
        tab.add_row("skipped", f"{n:,} {reason}")
    cap = s["capture"]
    if cap.get("malformed"):
        tab.add_row("malformed records", f"{cap['malformed']:,}")
    if cap.get("kernel_drops"):
        tab.add_row("[red]kernel drops[/red]", f"{cap['kernel_drops']:,}")
    if md is not None:
        m = md.stats()
        tab.add_row("inventory", f"{m['resources']:,} resources, {m['addresses']:,} addresses"
                    + (f" [yellow](last error: {m['last_error']})[/yellow]" if m["last_error"] else ""))
    err.print(tab)


@app.command()
def collect(
    sources: Annotated[list[str] | None, typer.Argument(help="pcap/pcapng files (--pcap) or interface "
                                                        "globs, optionally NETNS/GLOB (--iface)")] = None,
    pcap: Annotated[bool, typer.Option("--pcap", help="SOURCES are pcap/pcapng files: process them, "
                                       "flush every flow, exit.")] = False,
    iface: Annotated[bool, typer.Option("--iface", help="SOURCES are interface globs (eth0, veth*, *_h, "
                                        "NETNS/eth0): capture live until SIGINT/SIGTERM.")] = False,
    clickhouse: DsnOpt = None,
    config: ConfigOpt = None,
    local_ip: Annotated[list[str] | None, typer.Option("--local-ip", help="IP of the capturing host (pcaps "
                                                       "without direction metadata); repeatable.")] = None,
    max_flows: Annotated[int | None, typer.Option(help="Maximum concurrent flows (memory bound).")] = None,
    workers: Annotated[int, typer.Option(help="Live capture: spread flows over N processes with "
                                         "PACKET_FANOUT (symmetric flow hash).", min=1, max=64)] = 1,
    inventory: InventoryOpt = None,
    metadata: MetadataOpt = None,
    kube: KubeOpt = None,
    ebpf: EbpfOpt = False,
    pid: PidOpt = None,
    comm: CommOpt = None,
    verbose: Annotated[bool, typer.Option("--verbose", "-v")] = False,
) -> None:
    """Capture or replay packets into flow logs, request logs and metrics."""
    _setup_logging(verbose)
    cfg = _load_config(config, clickhouse)
    _apply_metadata_options(cfg, inventory, metadata, kube)
    if local_ip:
        cfg.capture.local_ips = list(local_ip)
    if max_flows:
        cfg.flow.max_flows = max_flows
    if workers > 1:
        if not iface:
            err.print("[red]error:[/red] --workers needs --iface (live capture)")
            raise typer.Exit(2)
        _collect_workers(cfg, sources or [], workers)
        return
    if ebpf and not (sources or pcap or iface):
        _collect_ebpf_only(cfg, pid, comm)
        return
    source, live = _open_source(cfg, pcap, iface, sources or [])
    client = _connect(cfg)
    _migrate(client, cfg)
    tagger, md = _open_metadata(cfg)
    col = _build_collector(cfg, client, live, tagger)
    col.metadata_stats = md.stats if md is not None else None
    stop = _stop_event() if live else None
    if md is not None:
        md.sync_now(client)
        if live:
            md.start()
            md.start_sync(lambda: storage.connect(cfg.clickhouse))
    if live:
        _print_capturing(source.nics.values())
    tracer = _start_ebpf(cfg, col, pid, comm) if ebpf else None
    t0 = time.monotonic()
    try:
        col.run(source, stop, now_us=getattr(source, "now_us", None))
    finally:
        source.close()
        if tracer is not None:
            tracer.stop()
        col.writer.close()
        if md is not None:
            md.close()
    _print_summary(col.snapshot(), time.monotonic() - t0, md)


def _collect_ebpf_only(cfg: config_mod.Config, pids: list[int] | None, comm: str | None) -> None:
    """`collect --ebpf` without packet sources: trace sockets until SIGINT/SIGTERM."""
    client = _connect(cfg)
    _migrate(client, cfg)
    tagger, md = _open_metadata(cfg)
    col = _build_collector(cfg, client, True, tagger)
    stop = _stop_event()
    tracer = _start_ebpf(cfg, col, pids, comm)
    try:
        if tracer.tracer is not None:
            while not stop.is_set():
                stop.wait(0.5)
    finally:
        tracer.stop()
        col.writer.close()
        if md is not None:
            md.close()
    err.print(f"eBPF: {tracer.snapshot()}")
    if tracer.error:
        raise typer.Exit(1)


def _print_capturing(nics) -> None:
    names = ", ".join(f"{n.netns}/{n.name}" if n.netns else n.name for n in nics)
    err.print(f"capturing on {names} (Ctrl-C or SIGTERM stops and flushes)")


def _collect_workers(cfg: config_mod.Config, patterns: list[str], workers: int) -> None:
    """Live capture in ``workers`` PACKET_FANOUT processes; this process writes."""
    from collector import workers as workers_mod
    from collector.capture.afpacket import AfPacketSource
    from collector.capture.base import CaptureError
    from collector.pipeline import merge_snapshots, spool_dir
    from collector.writer import Writer

    try:       # fail early, with the same message as one process, if nothing matches
        with AfPacketSource(patterns, block_size=1 << 16, block_count=2) as probe:
            nics = list(probe.nics.values())
    except CaptureError as e:
        err.print(f"[red]capture error:[/red] {e}")
        raise typer.Exit(1) from e
    client = _connect(cfg)
    _migrate(client, cfg)
    _, md = _open_metadata(cfg)          # sources and flow_tag sync here; the workers read the store
    if md is not None:
        md.sync_now(client)
        md.start_sync(lambda: storage.connect(cfg.clickhouse))
    writer = Writer(client, block=True, queue_batches=cfg.writer.queue_batches, spool_dir=spool_dir(cfg),
                    spool_max_bytes=cfg.writer.spool_max_mb << 20)
    writer.replay_spool()
    stop = _stop_event()
    t0 = time.monotonic()
    try:
        snaps = workers_mod.run(cfg, patterns, workers, writer, stop,
                                on_ready=lambda: _print_capturing(nics) or err.print(f"{workers} worker processes"))
    except RuntimeError as e:
        err.print(f"[red]capture error:[/red] {e}")
        raise typer.Exit(1) from e
    finally:
        writer.close()
        if md is not None:
            md.close()
    snap = merge_snapshots(snaps)
    snap["rows_written"] = dict(writer.stats.rows_written)
    snap["rows_dropped"] = dict(writer.stats.rows_dropped)
    _print_summary(snap, time.monotonic() - t0)


def _print_envelope(body: dict, as_table: bool) -> None:
    if not as_table or body.get("OPT_STATUS") != "SUCCESS":
        typer.echo(json.dumps(body, indent=1, ensure_ascii=False, default=str))
        return
    res = body["result"]
    tab = Table(*res["columns"])
    for row in res["values"] or []:
        tab.add_row(*(str(v) for v in row))
    Console().print(tab)


def _engine(cfg: config_mod.Config, client):
    from datasource.engine import Limits, QueryEngine

    ds = cfg.datasource
    return QueryEngine(client, Limits(ds.max_execution_time_s, ds.max_result_rows, ds.max_memory_mb))


def _token(token: str | None, cfg: config_mod.Config) -> str | None:
    """--token / $FLOWSCOPE_TOKEN, else the config's datasource.token; empty means none."""
    return token or cfg.datasource.token or None


def _listen_address(listen: str | None, cfg: config_mod.Config) -> tuple[str, int]:
    spec = listen or cfg.datasource.listen or DEFAULT_LISTEN
    host, _, port = spec.rpartition(":")
    if not port.isdigit() or not 0 < int(port) < 65536:
        err.print(f"[red]error:[/red] --listen: HOST:PORT expected, got {spec!r}")
        raise typer.Exit(2)
    return host.strip("[]") or "127.0.0.1", int(port)


def _run_query(engine, sql: str, db: str | None, precision: str | None, *, raw: bool, debug: bool) -> dict:
    """What POST /v1/query/ answers, without HTTP: the input checks, then the dialect or raw path."""
    from datasource.engine import envelope
    from datasource.guard import QueryRejected, check_input

    try:
        check_input(sql)
    except QueryRejected as e:
        return envelope(status="INVALID_POST_DATA", description=str(e))
    run = engine.query_raw if raw else engine.query
    return run(sql, db, precision, debug=debug)[1]


@app.command()
def query(
    sql: Annotated[str, typer.Argument(help="The query.")],
    db: Annotated[str | None, typer.Option("--db", help="flow_log, flow_metrics or flow_tag")] = None,
    data_precision: Annotated[str | None, typer.Option("--data-precision", help="1s or 1m for flow_metrics "
                                                       "tables")] = None,
    clickhouse: DsnOpt = None,
    datasource: Annotated[str | None, typer.Option("--datasource", help="Ask a running flowscope datasource "
                                                   "(e.g. http://127.0.0.1:20416) instead of opening the store.")] = None,
    raw: Annotated[bool, typer.Option("--raw", help="SQL is plain ClickHouse SQL (one guarded SELECT over "
                                      "flowscope's tables), not DeepFlow SQL.")] = False,
    debug: Annotated[bool, typer.Option("--debug", help="Include the ClickHouse SQL that ran.")] = False,
    table: Annotated[bool, typer.Option("--table", help="Print rows as a table instead of JSON.")] = False,
    token: SendTokenOpt = None,
    config: ConfigOpt = None,
) -> None:
    """Run one query and print DeepFlow's /v1/query/ JSON envelope."""
    cfg = _load_config(config, clickhouse)
    if datasource is None:
        try:
            client = storage.connect(cfg.clickhouse)
        except storage.StorageError as e:
            listen = cfg.datasource.listen or DEFAULT_LISTEN     # where `up` serves with this config
            if storage.is_embedded(storage.resolve_dsn(cfg.clickhouse)) and _datasource_up(listen):
                datasource = f"http://{listen}"
            else:
                err.print(f"[red]error:[/red] {e}")
                raise typer.Exit(1) from e
    if datasource is not None:
        body = _http_query(datasource, sql, db, data_precision, debug, raw=raw, token=_token(token, cfg))
    else:
        body = _run_query(_engine(cfg, client), sql, db, data_precision, raw=raw, debug=debug)
        client.close()
    _print_envelope(body, table)
    raise typer.Exit(0 if body.get("OPT_STATUS") == "SUCCESS" else 1)


def _datasource_up(listen: str) -> bool:
    import httpx

    try:
        return httpx.get(f"http://{listen}/healthz", timeout=1.0).status_code == 200
    except httpx.HTTPError:
        return False


def _http_query(url: str, sql: str, db: str | None, precision: str | None, debug: bool, *, raw: bool = False,
                token: str | None = None) -> dict:
    import httpx

    form = {"sql": sql, **({"db": db} if db else {}), **({"data_precision": precision} if precision else {})}
    params = {**({"debug": "true"} if debug else {}), **({"simple_sql": "true"} if raw else {})}
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    try:
        r = httpx.post(url.rstrip("/") + "/v1/query/", params=params, data=form, headers=headers, timeout=120)
        return r.json()
    except (httpx.HTTPError, ValueError) as e:
        err.print(f"[red]error:[/red] datasource {url}: {e}")
        raise typer.Exit(1) from e


def _extra_routes(cfg: config_mod.Config, engine, otlp_sink=None) -> list:
    """Endpoints beyond the querier's: Grafana alert notifications (kept across restarts), trace
    assembly (DeepFlow's L7FlowTracing, the Jaeger API under /jaeger) and OTLP/HTTP span ingest
    (``otlp_sink``: where spans are written; without one, /v1/traces answers 503)."""
    from dataclasses import asdict

    from datasource import alerts, jaeger, otlp, tracing

    deps = tracing.Deps(engine=engine, config=tracing.TraceConfig(**asdict(cfg.datasource.tracing)), otlp=otlp_sink)
    return [*alerts.routes(alerts.AlertStore(cfg.datasource.alerts_path)),
            *tracing.routes(deps), *jaeger.routes(deps), *otlp.routes(deps)]


@app.command()
def serve(
    listen: ListenOpt = None,
    clickhouse: DsnOpt = None,
    token: TokenOpt = None,
    config: ConfigOpt = None,
    verbose: Annotated[bool, typer.Option("--verbose", "-v")] = False,
) -> None:
    """Serve the datasource HTTP API alone (read-only) on a store another process fills: DeepFlow's
    /v1/query/, /v1/grafana/topology, /healthz, /metrics, /openapi.json."""
    import uvicorn

    from datasource.app import create_app

    _setup_logging(verbose)
    cfg = _load_config(config, clickhouse)
    host, port = _listen_address(listen, cfg)
    client = _connect(cfg)
    try:
        if not client.command("EXISTS TABLE flow_log.l4_flow_log"):
            err.print("[yellow]warning:[/yellow] this store has no flowscope schema yet: queries fail until "
                      "`flowscope db migrate` (or collect) creates it")
        secret = _token(token, cfg)
        engine = _engine(cfg, client)
        web = create_app(engine, token=secret, routes=_extra_routes(cfg, engine))
        # access_log off: at log level warning nothing is printed anyway, and each request skips the
        # access line's formatting (uvicorn uses httptools and uvloop by itself: they are dependencies)
        server = uvicorn.Server(uvicorn.Config(web, host=host, port=port, log_level="warning", access_log=False))
        err.print(f"flowscope datasource on http://{host}:{port}/v1/query/"
                  + ("  (bearer token required)" if secret else "") + "  (Ctrl-C stops)")
        # uvicorn stops gracefully on SIGINT/SIGTERM, then re-raises the signal to the handler it
        # found: this one notes it, so a requested stop exits 0 as `up` does.
        stopped_by: list[int] = []
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda signum, frame: stopped_by.append(signum))
        server.run()
        if not server.started:
            raise typer.Exit(1)       # uvicorn logged why (address in use, permission)
        if stopped_by:
            err.print(f"{signal.Signals(stopped_by[0]).name}: stopped")
    finally:
        client.close()


@app.command()
def up(
    sources: Annotated[list[str] | None, typer.Argument(help="pcap files (--pcap) or interface globs "
                                                        "(--iface); none: serve the store only")] = None,
    pcap: Annotated[bool, typer.Option("--pcap", help="Replay SOURCES (pcap files), then keep serving.")] = False,
    iface: Annotated[bool, typer.Option("--iface", help="Capture live on SOURCES (interface globs).")] = False,
    listen: ListenOpt = None,
    clickhouse: DsnOpt = None,
    token: TokenOpt = None,
    config: ConfigOpt = None,
    inventory: InventoryOpt = None,
    metadata: MetadataOpt = None,
    kube: KubeOpt = None,
    ebpf: EbpfOpt = False,
    pid: PidOpt = None,
    comm: CommOpt = None,
    verbose: Annotated[bool, typer.Option("--verbose", "-v")] = False,
) -> None:
    """Embedded all-in-one: capture or replay + store + datasource HTTP API, in one process."""
    import uvicorn

    from collector.selfmetrics import prometheus_text
    from datasource.app import create_app

    _setup_logging(verbose)
    cfg = _load_config(config, clickhouse)
    _apply_metadata_options(cfg, inventory, metadata, kube)
    host, port = _listen_address(listen, cfg)
    source = live = None
    if sources or pcap or iface:
        source, live = _open_source(cfg, pcap, iface, sources or [])
    client = _connect(cfg)
    _migrate(client, cfg)
    qclient = _connect(cfg)
    engine = _engine(cfg, qclient)
    tagger, md = _open_metadata(cfg)
    col = _build_collector(cfg, client, bool(live), tagger)
    col.metadata_stats = md.stats if md is not None else None
    if md is not None:
        md.sync_now(client)
        md.start()
        md.start_sync(lambda: storage.connect(cfg.clickhouse))
    stop = _stop_event()
    tracers: list = []              # the eBPF tracer, once started: its counters join /metrics
    metrics = prometheus_text(lambda: {**col.snapshot(), **({"ebpf": tracers[0].snapshot()} if tracers else {})})
    secret = _token(token, cfg)
    from datasource.otlp import OtlpSink

    web = create_app(engine, metrics=metrics, health=lambda: {"flows_active": col.table.nflows}, token=secret,
                     routes=_extra_routes(cfg, engine, OtlpSink(col.writer, col.tagger, cfg.agent_id)))
    server = uvicorn.Server(uvicorn.Config(web, host=host, port=port, log_level="warning"))
    server.install_signal_handlers = lambda: None
    web_thread = threading.Thread(target=server.run, name="flowscope-datasource", daemon=True)
    web_thread.start()
    err.print(f"flowscope datasource on http://{host}:{port}/v1/query/"
              + ("  (bearer token required)" if secret else "") + "  (Ctrl-C stops)")
    tracer = _start_ebpf(cfg, col, pid, comm) if ebpf else None
    if tracer is not None:
        tracers.append(tracer)
    t0 = time.monotonic()
    try:
        if source is not None:
            col.run(source, stop, now_us=getattr(source, "now_us", None))
            source.close()
            _print_summary(col.snapshot(), time.monotonic() - t0, md)
        while not stop.is_set():
            stop.wait(0.5)
            if md is not None and tagger.pending is not None and source is None:
                tagger.apply_pending()      # no capture loop to apply it (serving only)
    finally:
        server.should_exit = True
        web_thread.join(5)
        if tracer is not None:
            tracer.stop()
        col.writer.close()
        if md is not None:
            md.close()


@db_app.command("migrate")
def db_migrate(
    cluster: Annotated[str | None, typer.Option("--cluster", help="Create ReplicatedMergeTree + Distributed "
                                                "tables ON CLUSTER NAME (needs a ClickHouse server).")] = None,
    print_only: Annotated[bool, typer.Option("--print", help="Print the DDL that would run; change nothing.")] = False,
    clickhouse: DsnOpt = None,
    config: ConfigOpt = None,
) -> None:
    """Apply the numbered schema files in sql/ (idempotent) and the configured retention."""
    from flowscope import migrate

    cfg = _load_config(config, clickhouse)
    if print_only:
        for stmt in migrate.render(cluster, cfg.retention_hours or None):
            typer.echo(stmt.rstrip() + ";\n")
        return
    if cluster and storage.is_embedded(storage.resolve_dsn(cfg.clickhouse)):
        err.print("[red]error:[/red] --cluster needs a ClickHouse server (http(s):// DSN); the embedded engine "
                  "runs the single-node schema. Use --print to see the cluster DDL.")
        raise typer.Exit(2)
    client = _connect(cfg)
    report = _migrate(client, cfg, cluster)
    typer.echo(report.summary())


def main() -> None:
    app()


if __name__ == "__main__":
    main()
