"""Compiled forms of the per-packet modules (Cython in pure-Python mode, types in the ``.pxd`` next
to each module): the ``.py`` files stay the only source, and they run as they are when no C
compiler is present (each extension is optional) or with ``FLOWSCOPE_PURE=1``. Everything else
about the package is in pyproject.toml."""

import os
import sys

from setuptools import setup

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
# the one list of compiled modules: collector/compiled.py also tells a run which form it has
from collector.compiled import MODULES

COMPILED = [name.replace(".", "/") + ".py" for name in MODULES]


def ext_modules() -> list:
    if os.environ.get("FLOWSCOPE_PURE"):
        return []
    try:
        from Cython.Build import cythonize
    except ImportError:
        return []
    exts = cythonize(COMPILED, build_dir="build/cython", quiet=True,
                     compiler_directives={"language_level": 3})
    for ext in exts:
        ext.optional = True     # no compiler: the pure-Python modules are used
        ext.extra_compile_args = ["-w"]     # generated C: its warnings say nothing about our code
    return exts


setup(ext_modules=ext_modules())
