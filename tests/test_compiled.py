"""The compiled and the pure-Python forms of the per-packet modules (setup.py, collector/compiled.py)
make the same rows: every fixture pcap through the flow table with L7 parsing, once with the
extensions ``make test`` builds and once with ``FLOWSCOPE_PURE=1`` (the ``.py`` sources), in fresh
processes, and every l4/l7/flow-second/application row compared."""

from __future__ import annotations

import importlib.machinery
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from collector import compiled

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "tests" / "data"

# Runs in a child: each fixture file through its own flow table, every row kept (repr: exact values
# and types, except that an IntEnum counts as its int: the compiled table stores some in C fields),
# and which form each compiled module had.
CHILD = r"""
import hashlib, importlib, json, sys
from collector import compiled
from collector.capture.pcap import PcapSource
from collector.flow.table import FlowTable, NicInfo
from collector.l7.registry import Detector
from flowscope.config import Config

def plain(v):
    return int(v) if isinstance(v, int) and type(v) is not bool else v

class Sink:
    def __init__(self):
        self.rows = {"l4": [], "l7": [], "seconds": [], "app": []}
    def __getattr__(self, kind):
        return self.rows[kind].extend

out = {}
for path in sys.argv[1:]:
    sink = Sink()
    table = FlowTable(sink, l7=Detector(Config().l7.parser_config()))
    with PcapSource([path]) as src:
        for batch in src.batches():
            for nic_id, nic in src.nics.items():
                if nic_id >= len(table.nics) or table.nics[nic_id] is None:
                    table.add_nic(nic_id, NicInfo(name=nic.name, linktype=nic.linktype))
            table.process(batch)
    table.flush()
    out[path.rsplit("/", 1)[1]] = {
        k: [len(v), hashlib.sha256(repr([tuple(map(plain, r)) for r in v]).encode()).hexdigest()]
        for k, v in sink.rows.items()}
for name in compiled.MODULES:
    importlib.import_module(name)
print(json.dumps({"forms": compiled.forms(), "rows": out}))
"""


def run(pure: bool) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "FLOWSCOPE_PURE"}
    if pure:
        env["FLOWSCOPE_PURE"] = "1"
    files = sorted(str(p) for p in DATA.glob("*.pcap*"))
    p = subprocess.run([sys.executable, "-c", CHILD, *files], cwd=ROOT, env=env, capture_output=True,
                       text=True, timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    return json.loads(p.stdout)


@pytest.fixture(scope="module")
def both() -> tuple[dict, dict]:
    return run(pure=False), run(pure=True)


def test_make_test_built_every_compiled_module(both):
    """``make test`` installs a C compiler, so a build that quietly fell back to the sources (an
    optional extension failing to compile) shows up here and not only as a slower benchmark."""
    built, pure = both
    assert set(built["forms"].values()) == {"compiled"}, built["forms"]
    assert set(pure["forms"].values()) == {"python"}, pure["forms"]


def test_compiled_and_pure_modules_make_identical_rows(both):
    built, pure = both
    assert len(built["rows"]) >= 20
    total = {k: sum(r[k][0] for r in built["rows"].values()) for k in ("l4", "l7", "seconds", "app")}
    assert min(total.values()) > 0, total          # every kind of row is exercised
    for name, rows in built["rows"].items():
        assert rows == pure["rows"][name], name


def _tree(root: Path, built: set[str], old: set[str] = frozenset()) -> None:
    """A package tree like collector/: every compiled module's .py, and an (empty) extension for
    those in ``built``; the ones in ``old`` were built before their source changed."""
    suffix = importlib.machinery.EXTENSION_SUFFIXES[0]
    for name in compiled.MODULES:
        src = root.joinpath(*name.split(".")[1:]).with_suffix(".py")
        src.parent.mkdir(parents=True, exist_ok=True)
        src.write_text("")
        if name in built:
            ext = src.with_name(src.stem + suffix)
            ext.write_bytes(b"")
            if name in old:
                os.utime(ext, (1, 1))


def test_extensions_run_all_together_or_not_at_all(tmp_path):
    """The compiled modules share cdef classes (a compiled table.py cannot load next to a report.py
    run from source), so one missing or stale extension sends every module to its source."""
    everything = set(compiled.MODULES)
    _tree(tmp_path / "fresh", everything)
    assert compiled.unusable(tmp_path / "fresh") == []
    _tree(tmp_path / "none", set())
    assert compiled.unusable(tmp_path / "none") == []            # no compiler: sources, silently
    _tree(tmp_path / "edited", everything, old={"collector.flow.report"})
    assert compiled.unusable(tmp_path / "edited") == ["collector.flow.report"]
    _tree(tmp_path / "partial", everything - {"collector.writer"})
    assert compiled.unusable(tmp_path / "partial") == ["collector.writer"]


def test_a_stale_extension_runs_every_module_from_source(tmp_path):
    """What a process does with a stale tree: warns once and imports every module from source."""
    if compiled.unusable(ROOT / "collector"):
        pytest.skip("this checkout's extensions are not all fresh")
    script = ("import logging, sys; logging.basicConfig(); from collector import compiled; "
              "compiled.unusable = lambda root: ['collector.flow.report']; "
              "sys.meta_path[:] = [f for f in sys.meta_path if not isinstance(f, compiled._SourceFirst)]; "
              "compiled.install(); import collector.flow.table, collector.flow.report; "
              "print(sorted(set(compiled.forms().values()) - {'not loaded'}))")
    p = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=120,
                       env={k: v for k, v in os.environ.items() if k != "FLOWSCOPE_PURE"})
    assert p.returncode == 0, p.stderr
    assert p.stdout.split() == ["['python']"]
    assert "collector.flow.report" in p.stderr and "runs from source" in p.stderr
