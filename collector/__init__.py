"""The collector: packets → flows → rows. Importing the package installs the switch between the
compiled and the ``.py`` form of the per-packet modules (collector/compiled.py)."""

from collector.compiled import install as _install

_install()
