"""The per-packet modules that setup.py compiles (Cython, pure-Python mode): which form this process
runs. The compiled forms are used together or not at all: they share cdef classes across modules
(table.pxd cimports report.pxd's RowBuilder), so a compiled table next to a report imported from
source fails to load. The ``.py`` sources run instead with ``FLOWSCOPE_PURE=1`` (debugging; the
test that holds both forms to the same rows), and when any extension is missing or older than its
``.py`` or ``.pxd`` (an edit not rebuilt yet must not run old code): a warning, then all sources."""

from __future__ import annotations

import importlib.machinery
import importlib.util
import logging
import os
import sys
from importlib.abc import MetaPathFinder
from pathlib import Path

MODULES = (
    "collector.flow.model",
    "collector.flow.observation",
    "collector.flow.report",
    "collector.flow.table",
    "collector.flow.tcp",
    "collector.capture.pcap",
    "collector.decode.packet",
    "collector.l7.base",
    "collector.l7.common",
    "collector.l7.http1",
    "collector.l7.registry",
    "collector.l7.session",
    "collector.l7.stream",
    "collector.metrics",
    "collector.tagging",
    "collector.writer",
)
log = logging.getLogger("flowscope.compiled")


def _extension(source: Path) -> Path | None:
    for suffix in importlib.machinery.EXTENSION_SUFFIXES:
        ext = source.with_name(source.stem + suffix)
        if ext.exists():
            return ext
    return None


def _older(ext: Path, source: Path) -> bool:
    """The extension was built before its source or its ``.pxd`` last changed."""
    built = ext.stat().st_mtime
    pxd = source.with_suffix(".pxd")
    return source.stat().st_mtime > built or (pxd.exists() and pxd.stat().st_mtime > built)


class _SourceFirst(MetaPathFinder):
    """Finds the ``.py`` of each compiled module (on the import path only when the sources run)."""

    def find_spec(self, name, path, target=None):
        if name not in MODULES or not path:
            return None
        source = Path(path[0]) / (name.rpartition(".")[2] + ".py")
        if not source.exists():
            return None
        return importlib.util.spec_from_file_location(name, source)


def unusable(root: Path) -> list[str]:
    """The modules whose extension is missing or older than their source: [] when all are fresh,
    and when none was built (no compiler: the sources run without a word)."""
    bad, built = [], 0
    for name in MODULES:
        source = root.joinpath(*name.split(".")[1:]).with_suffix(".py")
        ext = _extension(source)
        built += ext is not None
        if ext is None or _older(ext, source):
            bad.append(name)
    return bad if built else []


def install() -> None:
    """Called once from collector/__init__.py, before any of these modules is imported."""
    if any(isinstance(f, _SourceFirst) for f in sys.meta_path):
        return
    if not os.environ.get("FLOWSCOPE_PURE"):
        bad = unusable(Path(__file__).resolve().parent)
        if not bad:
            return
        log.warning("compiled modules missing or older than their source: %s; every per-packet module "
                    "runs from source (rebuild: make, or pip install -e .)", ", ".join(bad))
    sys.meta_path.insert(0, _SourceFirst())


def forms() -> dict[str, str]:
    """Each module's form in this process: "compiled", "python", or "not loaded"."""
    out = {}
    for name in MODULES:
        mod = sys.modules.get(name)
        if mod is None:
            out[name] = "not loaded"
        else:
            out[name] = "python" if (mod.__file__ or "").endswith(".py") else "compiled"
    return out
