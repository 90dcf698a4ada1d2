"""What Grafana and the Infinity plugin send to flowscope, reproduced for contract tests.

No Grafana runs here. This module does what a dashboard or alert evaluation does with a provisioned
Infinity query before the HTTP request leaves Grafana, per the sources read in
reference/grafana-integration.md §3a:

1. Grafana's template service replaces dashboard variables in ``url``, ``url_options.data``,
   ``params`` and ``headers`` (Infinity ``replaceVariables``; default format ``glob``); a variable
   left at All with a custom All value is replaced by that value verbatim, whatever the format;
   unknown names (``${__timeFrom…}``) are left alone;
2. Infinity's backend applies its macros to the same fields (``${__timeFrom:date:seconds}`` →
   epoch seconds, ``${__timeFrom}`` → epoch ms);
3. the request: POST ``<datasource url><url>`` with the raw body and ``body_content_type``;
4. the ``backend`` parser: the records array (empty root selector) → one row per record, each
   declared column read by its selector (a plain key here) and converted to its type.

Only the features flowscope's generated dashboards use are implemented; anything else fails loudly.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

ALL_VALUE = "$__all"
_VARIABLE = re.compile(r"\$\{(\w+)(?::([^}]+))?\}|\[\[(\w+)(?::(\w+))?\]\]|\$(\w+)")


@dataclass
class VariableState:
    """A dashboard variable as the user left it: ``values`` selected, or All."""

    name: str
    values: list[str] = field(default_factory=list)
    all: bool = False
    all_value: str | None = None       # the variable's custom All value
    options: list[str] = field(default_factory=list)    # every value (All without a custom value)


def _format(values: list[str], fmt: str) -> str:
    if fmt == "singlequote":
        return ",".join("'" + v.replace("'", "\\'") + "'" for v in values)
    if fmt == "doublequote":
        return ",".join('"' + v.replace('"', '\\"') + '"' for v in values)
    if fmt == "sqlstring":
        return ",".join("'" + v.replace("'", "''") + "'" for v in values)
    if fmt == "json":
        return json.dumps(values[0] if len(values) == 1 else values)
    if fmt in ("csv", "raw"):
        return ",".join(values)
    if fmt == "pipe":
        return "|".join(values)
    if fmt == "regex":
        escaped = [re.sub(r"[\\^$.|?*+()\[\]{}/]", lambda m: "\\" + m.group(0), v) for v in values]
        return escaped[0] if len(escaped) == 1 else "(" + "|".join(escaped) + ")"
    if fmt == "glob":
        return values[0] if len(values) == 1 else "{" + ",".join(values) + "}"
    raise AssertionError(f"variable format {fmt!r} is not emulated")


def interpolate(text: str, variables: dict[str, VariableState], default_format: str = "glob") -> str:
    """Grafana's templateSrv.replace for the variables of a dashboard."""
    def repl(m: re.Match) -> str:
        name = m.group(1) or m.group(3) or m.group(5)
        fmt = m.group(2) or m.group(4) or default_format
        var = variables.get(name)
        if var is None:
            return m.group(0)
        if var.all:
            if fmt == "text":
                return "All"
            if var.all_value is not None:
                return var.all_value
            return _format(var.options, fmt)
        if fmt == "text":
            return " + ".join(var.values)
        return _format(var.values or [""], fmt)

    return _VARIABLE.sub(repl, text)


def apply_macros(text: str, start: int, end: int) -> str:
    """Infinity's backend time macros (plugin ≥2.7.1) for a range in epoch seconds."""
    for name, t in (("__timeFrom", start), ("__timeTo", end)):
        text = text.replace(f"${{{name}:date:seconds}}", str(t))
        text = text.replace(f"${{{name}}}", str(t * 1000))
    assert "${__time" not in text, f"time macro not emulated in {text[:200]!r}"
    return text


@dataclass
class Frame:
    ref_id: str
    columns: list[dict]
    rows: list[dict]
    records: list[dict]                 # what the datasource answered, before column selection
    request_body: str

    def missing_columns(self) -> list[str]:
        """Declared selectors absent from the answer (Infinity would show empty fields)."""
        keys = set().union(*(r.keys() for r in self.records)) if self.records else set()
        return [c["selector"] for c in self.columns if c["selector"] not in keys]

    def names(self, type_: str | None = None) -> list[str]:
        return [c["text"] for c in self.columns if type_ is None or c["type"] == type_]


def _convert(value: Any, type_: str) -> Any:
    if value is None:
        return None
    if type_ == "number":
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise AssertionError(f"number column got {value!r}")
        return float(value)
    if type_ == "timestamp_epoch_s":
        if not isinstance(value, int | float):
            raise AssertionError(f"epoch-seconds column got {value!r}")
        return int(value)
    if type_ == "string":
        return value if isinstance(value, str) else str(value)
    raise AssertionError(f"column type {type_!r} is not emulated")


class Infinity:
    """Runs provisioned Infinity query models against a datasource (an httpx-style client whose base
    URL is the Infinity datasource's ``url``)."""

    def __init__(self, http) -> None:
        self.http = http

    def request(self, model: dict, variables: dict[str, VariableState], start: int, end: int) -> tuple[str, str, dict]:
        assert model["type"] == "json" and model["source"] == "url", model
        assert model["parser"] in ("backend", "jq-backend"), "only server-side parsers evaluate in alert rules"
        opts = model["url_options"]
        assert opts["method"] == "POST" and opts["body_type"] == "raw", opts
        assert not opts.get("params") and not opts.get("headers"), "params/headers are not emulated"
        url = apply_macros(interpolate(model["url"], variables), start, end)
        body = apply_macros(interpolate(opts["data"], variables), start, end)
        return url, body, {"Content-Type": opts["body_content_type"]}

    def query(self, model: dict, variables: dict[str, VariableState], start: int, end: int) -> Frame:
        url, body, headers = self.request(model, variables, start, end)
        resp = self.http.post(url, content=body.encode(), headers=headers)
        if resp.status_code != 200:
            raise AssertionError(f"{model['refId']}: HTTP {resp.status_code}: {resp.text[:600]}\nbody: {body[:1500]}")
        records = resp.json()
        root = model.get("root_selector", "")
        assert re.fullmatch(r"(\w+(\.\w+)*)?", root), f"only dotted-path root selectors are emulated: {root!r}"
        for key in filter(None, root.split(".")):       # gjson / JSONata paths: DATA.tracing
            records = records[key]
        assert isinstance(records, list), f"not a records array: {str(records)[:300]}"
        rows = [{c["text"]: _convert(r.get(c["selector"]), c["type"]) for c in model["columns"]} for r in records]
        return Frame(model["refId"], model["columns"], rows, records, body)

    def variable_values(self, query: dict, variables: dict[str, VariableState], start: int,
                        end: int) -> list[tuple[str, str]]:
        """(value, text) options of an Infinity variable query (fields ``__value`` / ``__text``)."""
        assert query["queryType"] == "infinity", query
        frame = self.query(query["infinityQuery"], variables, start, end)
        return [(r["__value"], r["__text"]) for r in frame.rows]


# ---------------------------------------------------------------------------------------------------
# The datasource under test: `flowscope serve` in a subprocess over a store seeded from the pcaps.
# One per test session, shared by test_dashboards.py and test_alerts.py (a chDB directory belongs to
# one process, so the modules cannot each start their own).

SEED_PCAPS = ("*.pcap", "*.pcapng")
# The committed pcaps span 2026-11-25 22:09 – 2026-11-26 01:39 UTC (netlab captures, then the
# Kube-OVN-like node): one fixed range covering all of them.
RANGE_START = 1795640400      # 2026-11-25T21:00:00Z
RANGE_END = 1795662000        # 2026-11-26T03:00:00Z


class Datasource:
    """A seeded store and `flowscope serve` on it; ``http`` is an httpx client on its base URL."""

    def __init__(self) -> None:
        import atexit
        import shutil
        import socket
        import subprocess
        import sys
        import tempfile
        import time
        from pathlib import Path

        import httpx

        data = Path(__file__).parent / "data"
        self.dir = Path(tempfile.mkdtemp(prefix="flowscope-grafana-"))
        atexit.register(shutil.rmtree, self.dir, True)
        self.dsn = f"chdb://{self.dir / 'chdb'}"
        pcaps = sorted(str(p) for pattern in SEED_PCAPS for p in data.glob(pattern))
        seed = subprocess.run(
            [sys.executable, "-m", "flowscope.cli", "collect", "--pcap", *pcaps,
             "--inventory", str(data / "inventory" / "lab.yaml"), "--metadata", f"sqlite:///{self.dir / 'm.db'}",
             "--clickhouse", self.dsn], capture_output=True, text=True, timeout=300)
        if seed.returncode:
            raise RuntimeError(f"seeding the store failed:\n{seed.stdout[-2000:]}\n{seed.stderr[-2000:]}")
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        self.log = (self.dir / "serve.log").open("wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "flowscope.cli", "serve", "--clickhouse", self.dsn, "--listen", f"127.0.0.1:{port}"],
            stdout=self.log, stderr=subprocess.STDOUT)
        atexit.register(self.stop)
        self.url = f"http://127.0.0.1:{port}"
        self.http = httpx.Client(base_url=self.url, timeout=60)
        deadline = time.monotonic() + 60
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"flowscope serve exited: {(self.dir / 'serve.log').read_text()[-2000:]}")
            try:
                if self.http.get("/healthz").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("flowscope serve did not answer /healthz in 60 s")
            time.sleep(0.1)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except Exception:
                self.proc.kill()
                self.proc.wait()
        self.http.close()
        self.log.close()


_DATASOURCE: list[Datasource] = []


def datasource() -> Datasource:
    """The session's datasource, started on first use."""
    if not _DATASOURCE:
        _DATASOURCE.append(Datasource())
    return _DATASOURCE[0]


def dialect_missing() -> str | None:
    """Why the dashboards' SQL cannot run yet (issue #5's dialect absent), or None."""
    try:
        import datasource.dialect  # noqa: F401
    except ImportError as e:
        return f"the DeepFlow SQL dialect (datasource/dialect, issue #5) is not there yet: {e}"
    return None


def grafana_provisioning_value(text: str, env: dict[str, str] | None = None) -> str:
    """Grafana's env interpolation of provisioning YAML values: ``$$`` is a literal ``$``, ``$NAME`` /
    ``${NAME}`` the environment variable (pkg/services/provisioning/values, setting.ExpandVar)."""
    env = env or {}

    def expand(part: str) -> str:
        return re.sub(r"\$\{([^}]*)\}|\$(\w+)", lambda m: env.get(m.group(1) or m.group(2), ""), part)

    return "$".join(expand(p) for p in text.split("$$"))


def interpolate_provisioning(obj: Any, env: dict[str, str] | None = None) -> Any:
    """Every string value of a provisioning document as Grafana reads it."""
    if isinstance(obj, str):
        return grafana_provisioning_value(obj, env)
    if isinstance(obj, list):
        return [interpolate_provisioning(v, env) for v in obj]
    if isinstance(obj, dict):
        return {k: interpolate_provisioning(v, env) for k, v in obj.items()}
    return obj
