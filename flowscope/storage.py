"""One way to reach ClickHouse: a clickhouse-connect ``Client`` built from a DSN.

``chdb:///path`` runs the real engine in-process (the embedded default); ``http(s)://`` talks to
a server or cluster. Callers never branch on which one they got.
"""

from __future__ import annotations

import os
import weakref
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


def _embedded_client(path: str, **kwargs: Any) -> Client:
    """A clickhouse-connect chDB client whose ``insert_arrow`` hands the table to the engine in
    memory: ``INSERT … SELECT … FROM Python(table)`` reads the Arrow buffers where they are, where
    clickhouse-connect serializes the table to Arrow IPC for the engine to parse again (1.4x the
    insert rate of a 100k-row l4_flow_log batch; 2x with parsing alone, bench/insert.py). Same rows
    stored: tests/test_writer.py puts the collector's tables through both paths. The class is built
    here because importing chDB loads the engine (~280 MiB): server DSNs never pay for it."""
    import chdb
    from clickhouse_connect.driver._chdbclient import ChdbClient

    class EmbeddedClient(ChdbClient):
        def __init__(self) -> None:
            super().__init__(path=path, **kwargs)
            # a second handle on the same engine (chDB shares one engine per path and process):
            # the clickhouse-connect handle keeps its lock and session settings to itself. Closed
            # like clickhouse-connect's own: on close(), or by a finalizer (also at exit — a handle
            # left to interpreter teardown crashes the process)
            self._arrow_conn = chdb.connect(path)
            self._arrow_release = weakref.finalize(self, self._arrow_conn.close)

        def insert_arrow(self, table: str, arrow_table, database: str | None = None, settings: dict | None = None,
                         transport_settings: dict[str, str] | None = None):
            if database or settings or transport_settings:
                return super().insert_arrow(table, arrow_table, database, settings, transport_settings)
            if arrow_table.num_rows:
                _insert_from_arrow(self._arrow_conn, table, arrow_table)
            return None

        def close(self) -> None:
            try:
                self._arrow_release()
            finally:
                super().close()

    return EmbeddedClient()


# One block for a whole batch up to this many rows (ClickHouse's own max_insert_block_size): read as
# one block, it needs no squashing (a copy of every column into a batch-sized block, which the
# default 64k-row reads got anyway) and still makes one part per partition.
ONE_BLOCK_ROWS = 1_048_576


def _insert_from_arrow(conn, table: str, arrow_table) -> None:
    """chDB's Python() table function finds ``arrow_table`` by name among this frame's locals.
    Settings, measured on 500k l4_flow_log rows in 100k batches (interleaved, 8 rounds): one block
    per batch without squashing and one thread: 370k rows/s against 290k with the defaults (two
    threads on two cores slow the single-part write down: 332k with max_threads = 1 alone)."""
    names = ", ".join("`" + n.replace("\\", "\\\\").replace("`", "\\`") + "`" for n in arrow_table.column_names)
    rows = arrow_table.num_rows
    settings = (f"max_threads = 1, max_block_size = {rows}, min_insert_block_size_rows = 0, "
                "min_insert_block_size_bytes = 0" if rows <= ONE_BLOCK_ROWS else "max_threads = 1")
    conn.query(f"INSERT INTO {table} ({names}) SELECT {names} FROM Python(arrow_table) SETTINGS {settings}")


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
            path = chdb_path(dsn)
            path.mkdir(parents=True, exist_ok=True)
            return _embedded_client(str(path), settings=settings, database=database)
        return clickhouse_connect.get_client(dsn=dsn, settings=settings, database=database)
    except Exception as e:  # clickhouse-connect raises several unrelated types here
        hint = ""
        if is_embedded(dsn):
            hint = (" — another flowscope process probably owns this embedded store (chDB allows one"
                    " process per directory); stop it, query it over HTTP with --datasource, or use"
                    " another --clickhouse chdb:///DIR")
        raise StorageError(f"cannot open ClickHouse at {redact(dsn)}: {e}{hint}") from e
