"""The per-packet modules that setup.py compiles (Cython, pure-Python mode): which form this process
runs, and when the ``.py`` source is imported instead of the extension next to it — with
``FLOWSCOPE_PURE=1`` (debugging; the test that holds both forms to the same rows), and when the
extension is older than its ``.py`` or ``.pxd`` (an edit not rebuilt yet must not run old code)."""

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
    "collector.writer",
)
log = logging.getLogger("flowscope.compiled")


def _extension(source: Path) -> Path | None:
    for suffix in importlib.machinery.EXTENSION_SUFFIXES:
        ext = source.with_name(source.stem + suffix)
        if ext.exists():
            return ext
    return None


def stale(source: Path) -> bool:
    """True when the compiled form of ``source`` is older than the source or its ``.pxd``."""
    ext = _extension(source)
    if ext is None:
        return False
    built = ext.stat().st_mtime
    pxd = source.with_suffix(".pxd")
    return source.stat().st_mtime > built or (pxd.exists() and pxd.stat().st_mtime > built)


class _SourceFirst(MetaPathFinder):
    """Finds the ``.py`` of a compiled module when the extension must not be used."""

    def __init__(self, pure: bool) -> None:
        self.pure = pure

    def find_spec(self, name, path, target=None):
        if name not in MODULES or not path:
            return None
        source = Path(path[0]) / (name.rpartition(".")[2] + ".py")
        if not source.exists() or _extension(source) is None:
            return None
        if not self.pure:
            if not stale(source):
                return None
            log.warning("%s: the compiled module is older than its source; running the source "
                        "(rebuild: pip install -e . or make)", name)
        return importlib.util.spec_from_file_location(name, source)


def install() -> None:
    """Put the finder first on the import path (once, from collector/__init__.py)."""
    if not any(isinstance(f, _SourceFirst) for f in sys.meta_path):
        sys.meta_path.insert(0, _SourceFirst(bool(os.environ.get("FLOWSCOPE_PURE"))))


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
