"""One way to reach ClickHouse: a clickhouse-connect ``Client`` built from a DSN.

``chdb:///path`` runs the real engine in-process (the embedded default); ``http(s)://`` talks to
a server or cluster. Callers never branch on which one they got.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import clickhouse_connect
from clickhouse_connect.driver.client import Client

ENV_DSN = "FLOWSCOPE_CLICKHOUSE"
DEFAULT_DIR = Path(".flowscope") / "chdb"


class StorageError(RuntimeError):
    """ClickHouse cannot be reached or opened; the message says what to do."""


def resolve_dsn(dsn: str | None = None) -> str:
    """--clickhouse, else $FLOWSCOPE_CLICKHOUSE, else the embedded store under ./.flowscope/."""
    return dsn or os.environ.get(ENV_DSN) or f"chdb://{DEFAULT_DIR}"


def is_embedded(dsn: str) -> bool:
    return dsn.startswith("chdb://")


def chdb_path(dsn: str) -> Path:
    """Directory of a ``chdb://`` DSN; ``chdb:///abs`` and ``chdb://rel/dir`` both work."""
    rest = dsn[len("chdb://"):]
    return Path(rest or DEFAULT_DIR).expanduser().resolve()


def redact(dsn: str) -> str:
    """The DSN with any password hidden, for logs and errors."""
    if "@" not in dsn or "://" not in dsn:
        return dsn
    scheme, rest = dsn.split("://", 1)
    cred, host = rest.rsplit("@", 1)
    user = cred.split(":", 1)[0]
    return f"{scheme}://{user}:***@{host}"


def connect(dsn: str | None = None, *, settings: dict[str, Any] | None = None,
            database: str | None = None) -> Client:
    """A client for ``dsn``; raises StorageError with an actionable message on failure."""
    dsn = resolve_dsn(dsn)
    try:
        if is_embedded(dsn):
            from clickhouse_connect.driver._chdbclient import ChdbClient

            path = chdb_path(dsn)
            path.mkdir(parents=True, exist_ok=True)
            return ChdbClient(path=str(path), settings=settings, database=database)
        return clickhouse_connect.get_client(dsn=dsn, settings=settings, database=database)
    except Exception as e:  # clickhouse-connect raises several unrelated types here
        hint = ""
        if is_embedded(dsn):
            hint = (" — another flowscope process probably owns this embedded store (chDB allows one"
                    " process per directory); stop it, query it over HTTP with --datasource, or use"
                    " another --clickhouse chdb:///DIR")
        raise StorageError(f"cannot open ClickHouse at {redact(dsn)}: {e}{hint}") from e
