"""Every query of every generated dashboard — variable queries and panel targets, variables at All —
for one 1 h window, sent as Grafana + Infinity send them (raw form body, macros interpolated) to
the datasource over HTTP, on the store seeded from the committed pcaps. Issue #6's goal: ≤ 2 s for
the whole set.

    .venv/bin/python bench/dashboards.py [--runs 5]

Figures: the first pass (cold: the dialect translates every statement once, then caches it) and
the median wall time of the following passes (with their CPU time: this 2-core VM is shared). Baseline, same run, same process: the ClickHouse SQL those
statements translate to, run directly on the engine's client (no HTTP, no translation, no
records encoding) — what the datasource adds on top of ClickHouse.
"""

from __future__ import annotations

import argparse
import shutil
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import DATA, OUT, median, result

# The busiest hour of the seeded data (the netlab captures of 2026-11-25).
WINDOW = (1795647600, 1795651200)      # 2026-11-25T21:40:00Z – 22:40:00Z


def seed(store: Path) -> str:
    dsn = f"chdb://{store / 'chdb'}"
    if (store / "seeded").exists():
        return dsn
    shutil.rmtree(store, ignore_errors=True)
    store.mkdir(parents=True)
    pcaps = sorted(str(p) for pattern in ("*.pcap", "*.pcapng") for p in DATA.glob(pattern))
    subprocess.run([sys.executable, "-m", "flowscope.cli", "collect", "--pcap", *pcaps,
                    "--inventory", str(DATA / "inventory" / "lab.yaml"),
                    "--metadata", f"sqlite:///{store / 'm.db'}", "--clickhouse", dsn],
                   check=True, capture_output=True)
    (store / "seeded").touch()
    return dsn


def requests() -> list[tuple[str, dict, dict]]:
    """(label, Infinity model, variables) for every variable query and panel target."""
    from dashboards import infinity, library, render
    from tests.grafana_infinity import VariableState

    out = []
    for d in library.dashboards():
        dash = render.dashboard(d)
        variables = {}
        for v in dash["templating"]["list"]:
            if v["type"] == "query":
                variables[v["name"]] = VariableState(v["name"], all=True, all_value=v["allValue"])
                out.append((f"{d.uid}/${v['name']}", v["query"]["infinityQuery"], variables))   # chained: parents at All
            else:
                variables[v["name"]] = VariableState(v["name"], values=[""])
        for p in dash["panels"]:
            for t in p.get("targets", []):
                if t["datasource"]["type"] == infinity.INFINITY_TYPE and t["url"] == infinity.QUERY_URL:
                    out.append((f"{d.uid}/{p['title']}/{t['refId']}", t, variables))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=5)
    args = ap.parse_args()

    from urllib.parse import parse_qs

    import httpx
    import uvicorn

    from datasource.app import create_app
    from datasource.dialect import translate
    from datasource.engine import QueryEngine
    from flowscope.storage import connect
    from tests.grafana_infinity import Infinity

    dsn = seed(OUT / "dashboards-store")
    client = connect(dsn)
    engine = QueryEngine(client)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(create_app(engine), host="127.0.0.1", port=port, log_level="warning"))
    server.install_signal_handlers = lambda: None
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.05)

    reqs = requests()
    http = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=60)
    grafana = Infinity(http)
    start, end = WINDOW

    def one_pass() -> tuple[float, dict[str, float], int, float]:
        per, rows = {}, 0
        t0, c0 = time.perf_counter(), time.process_time()
        for label, model, variables in reqs:
            t = time.perf_counter()
            rows += len(grafana.query(model, variables, start, end).rows)
            per[label] = time.perf_counter() - t
        return time.perf_counter() - t0, per, rows, time.process_time() - c0

    cold, _, rows, _ = one_pass()
    warm = [one_pass() for _ in range(args.runs)]
    totals = [w[0] for w in warm]
    cpu = median([w[3] for w in warm])

    # baseline: the translated ClickHouse statements on the client itself
    statements = []
    for _, model, variables in reqs:
        _, body, _ = grafana.request(model, variables, start, end)
        form = {k: v[0] for k, v in parse_qs(body, keep_blank_values=True).items()}
        statements += translate(form["sql"], form["db"], form.get("data_precision")).queries
    settings = engine.limits.settings()

    def direct() -> float:
        t0 = time.perf_counter()
        for sql in statements:
            client.query(sql, settings=settings)
        return time.perf_counter() - t0

    base = median([direct() for _ in range(args.runs)])
    server.should_exit = True
    thread.join(10)
    http.close()
    client.close()

    warm_total = median(totals)
    print(f"dashboards' queries: {len(reqs)} requests ({len(statements)} ClickHouse statements), "
          f"{rows} rows per pass, window {WINDOW[0]}–{WINDOW[1]} (1 h)")
    print(f"  first pass (translations cold): {cold:.3f} s")
    print(f"  following passes, median of {args.runs}: {warm_total:.3f} s (goal ≤ 2 s)")
    print(f"  CPU time of this process per pass (client, server and chDB threads), median: {cpu:.3f} s")
    print(f"  baseline, the same ClickHouse SQL on the client directly: {base:.3f} s")
    slowest = sorted(warm[len(warm) // 2][1].items(), key=lambda kv: -kv[1])[:5]
    print("  slowest requests: " + "; ".join(f"{k} {v * 1000:.0f} ms" for k, v in slowest))
    result("dashboards", warm_total, "s", "translated ClickHouse SQL run directly", base,
           f"{len(reqs)} dashboard/variable queries, 1 h window, store seeded from tests/data pcaps",
           cold_s=round(cold, 3), cpu_s=round(cpu, 3), requests=len(reqs), goal_s=2.0)


if __name__ == "__main__":
    main()
