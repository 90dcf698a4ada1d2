"""The stored columns of every table, read from ``sql/`` (the contract between collector and
datasource), so the catalogue offers a tag or metric on a table only when its columns exist there
and the translator can pass stored columns through by name."""

from __future__ import annotations

import functools
import re

from flowscope import migrate

_CREATE = re.compile(r"CREATE (?:TABLE|DICTIONARY) IF NOT EXISTS\s+([\w.`]+)\s*(\((.*?)\)\s*(?:ENGINE|PRIMARY)|AS\s+([\w.`]+))",
                     re.S)


@functools.cache
def stored_columns() -> dict[str, dict[str, str]]:
    """``"db.table"`` (physical name, e.g. ``flow_metrics.network.1m``) → {column: ClickHouse type}."""
    tables: dict[str, dict[str, str]] = {}
    for m in migrate.load_migrations():
        for statement in m.statements:
            match = _CREATE.match(statement)
            if not match:
                continue
            name = match[1].replace("`", "")
            if match[4]:                                  # CREATE TABLE … AS other
                tables[name] = dict(tables[match[4].replace("`", "")])
                continue
            columns = {}
            for line in match[3].splitlines():
                parts = line.split()
                if len(parts) >= 2 and parts[0] not in ("INDEX", "PROJECTION", "CONSTRAINT"):
                    columns[parts[0]] = parts[1].rstrip(",")
            tables[name] = columns
    return tables


def columns(physical: str) -> dict[str, str]:
    return stored_columns().get(physical, {})


def dictionaries() -> list[str]:
    """The flow_tag dictionaries (``flow_tag.<x>_map``), for ``show tables`` on flow_tag."""
    return sorted(name.split(".", 1)[1] for name in stored_columns()
                  if name.startswith("flow_tag.") and name.endswith("_map"))
