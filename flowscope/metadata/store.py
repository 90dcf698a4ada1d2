"""The metadata store: the resource inventory in SQLite (embedded default) or MySQL/MariaDB.

Sources write ``Record``s through the ``Sink`` methods; the store gives every resource a stable id
per kind (from 1, never renumbered or reused, so ids written into flow rows keep meaning the same
resource), keeps created/deleted times, and bumps ``revision`` on every real change so readers in
other threads or processes (the tagger, the flow_tag syncer) know when to reload.

One DB-API code path serves both engines; what differs (parameter style, column types, how a write
transaction starts) sits in a small ``Dialect``. The schema is a list of numbered migrations applied
on open and recorded in ``schema_version``.

    store = MetadataStore("sqlite:///.flowscope/metadata.db")
    store = MetadataStore("mysql://flowscope:secret@db:3306/flowscope")
    store = MetadataStore("mysql://flowscope:secret@localhost/flowscope?unix_socket=/run/mysqld/mysqld.sock")
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import re
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, NamedTuple, TypeVar
from urllib.parse import parse_qs, unquote, urlsplit

from flowscope.metadata.model import KINDS, NAMESPACED, Endpoint, Record, ServicePort, StoredRecord
from flowscope.storage import redact

DEFAULT_DSN = "sqlite:///.flowscope/metadata.db"
MYSQL_SCHEMES = ("mysql", "mariadb", "mysql+pymysql")
DB_NAME = re.compile(r"^[A-Za-z0-9_$-]{1,64}$")

T = TypeVar("T")


class MetadataUnavailable(RuntimeError):
    """The database cannot be reached; the message names the DSN (password hidden). Callers keep
    serving their last snapshot and try again later."""


# ---------------------------------------------------------------------------------------------------
# Dialects: the only places SQLite and MySQL differ


@dataclass(frozen=True)
class Dialect:
    name: str
    placeholder: str          # DB-API paramstyle: "?" (qmark) or "%s" (format)
    begin: str                # opens a write transaction (SQLite: take the write lock up front)
    types: dict[str, str]     # DDL type names used as {kind}, {id}, … in MIGRATIONS
    table_options: str        # appended to CREATE TABLE as {options}

    def sql(self, statement: str) -> str:
        return statement if self.placeholder == "?" else statement.replace("?", self.placeholder)


SQLITE = Dialect(
    "sqlite", "?", "BEGIN IMMEDIATE",
    {"kind": "TEXT", "id": "INTEGER", "int": "INTEGER", "real": "REAL", "name": "TEXT", "key": "TEXT",
     "text": "TEXT"},
    "",
)
# Index columns are VARCHAR sized to stay under InnoDB's 3072-byte key limit in utf8mb4; the binary
# collation keeps names and label values case-sensitive, as in Kubernetes.
MYSQL = Dialect(
    "mysql", "%s", "START TRANSACTION",
    {"kind": "VARCHAR(32)", "id": "BIGINT", "int": "INT", "real": "DOUBLE", "name": "VARCHAR(255)",
     "key": "VARCHAR(320)", "text": "LONGTEXT"},
    " ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin",
)

# ---------------------------------------------------------------------------------------------------
# Schema: (version, statements); append new steps, never edit applied ones. Every statement is
# idempotent, because MySQL commits DDL immediately and a step may be cut short.

_SEED_KINDS = " UNION ALL ".join(f"SELECT '{k}' AS kind" for k in KINDS)

MIGRATIONS: tuple[tuple[int, tuple[str, ...]], ...] = (
    (1, (
        """CREATE TABLE IF NOT EXISTS meta (
            name   {kind} NOT NULL PRIMARY KEY,
            value  {id}   NOT NULL
        ){options}""",
        "INSERT INTO meta (name, value) SELECT 'revision', 0 "
        "WHERE NOT EXISTS (SELECT 1 FROM meta WHERE name = 'revision')",
        # Per-kind high-water mark of ids: purging rows never lets an id come back.
        """CREATE TABLE IF NOT EXISTS id_seq (
            kind     {kind} NOT NULL PRIMARY KEY,
            last_id  {id}   NOT NULL
        ){options}""",
        f"INSERT INTO id_seq (kind, last_id) SELECT k.kind, 0 FROM ({_SEED_KINDS}) k "
        "WHERE NOT EXISTS (SELECT 1 FROM id_seq s WHERE s.kind = k.kind)",
        """CREATE TABLE IF NOT EXISTS resource (
            kind          {kind} NOT NULL,
            id            {id}   NOT NULL,
            cluster       {name} NOT NULL,
            rkey          {key}  NOT NULL,
            name          {name} NOT NULL,
            namespace     {name} NOT NULL,
            uid           {name} NOT NULL,
            ips           {text} NOT NULL,
            macs          {text} NOT NULL,
            labels        {text} NOT NULL,
            annotations   {text} NOT NULL,
            created       {real} NOT NULL,
            deleted       {real} NULL,
            updated       {real} NOT NULL,
            node          {name} NOT NULL,
            host_network  {int}  NOT NULL,
            group_kind    {name} NOT NULL,
            group_name    {name} NOT NULL,
            service_type  {name} NOT NULL,
            selector      {text} NOT NULL,
            ports         {text} NOT NULL,
            endpoints     {text} NOT NULL,
            cluster_id    {id}   NOT NULL,
            namespace_id  {id}   NOT NULL,
            node_id       {id}   NOT NULL,
            group_id      {id}   NOT NULL,
            digest        {name} NOT NULL,
            PRIMARY KEY (kind, id),
            CONSTRAINT resource_identity UNIQUE (kind, cluster, rkey)
        ){options}""",
        # Labels one row each, so SQL can select resources by label.
        """CREATE TABLE IF NOT EXISTS resource_label (
            kind   {kind} NOT NULL,
            id     {id}   NOT NULL,
            lkey   {key}  NOT NULL,
            value  {text} NOT NULL,
            PRIMARY KEY (kind, id, lkey)
        ){options}""",
    )),
)

SCHEMA_VERSION_DDL = """CREATE TABLE IF NOT EXISTS schema_version (
    version     {int}  NOT NULL PRIMARY KEY,
    applied_at  {real} NOT NULL
){options}"""

_RECORD_COLUMNS = ("name", "namespace", "uid", "ips", "macs", "labels", "annotations", "created", "deleted",
                   "node", "host_network", "group_kind", "group_name", "service_type", "selector", "ports",
                   "endpoints")
_PARENT_COLUMNS = ("cluster_id", "namespace_id", "node_id", "group_id")
_SELECT = ("SELECT kind, id, cluster, " + ", ".join(_RECORD_COLUMNS) + ", " + ", ".join(_PARENT_COLUMNS)
           + " FROM resource")
# Which kind a parent id column points at (purge keeps parents that are still referenced).
_PARENT_KINDS = {"cluster_id": "cluster", "namespace_id": "namespace", "node_id": "node",
                 "group_id": "pod_group"}


def _render(statement: str, dialect: Dialect) -> str:
    return statement.format(options=dialect.table_options, **dialect.types)


# ---------------------------------------------------------------------------------------------------
# Records <-> rows


def _json(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def _identity_cluster(rec: Record) -> str:
    """A cluster record is its own cluster: ``Record("cluster", "prod")`` and the cluster a pod of
    "prod" implies must be one resource."""
    return rec.name if rec.kind == "cluster" else rec.cluster


def _values(rec: Record) -> dict[str, Any]:
    """Column values of a record (JSON for the structured fields), without times and ids."""
    return {
        "name": rec.name, "namespace": rec.namespace, "uid": rec.uid,
        "ips": _json(list(rec.ips)), "macs": _json(list(rec.macs)),
        "labels": _json(rec.labels), "annotations": _json(rec.annotations),
        "node": rec.node, "host_network": int(rec.host_network),
        "group_kind": rec.group_kind, "group_name": rec.group_name, "service_type": rec.service_type,
        "selector": _json(rec.selector), "ports": _json([asdict(p) for p in rec.ports]),
        "endpoints": _json([asdict(e) for e in rec.endpoints]),
    }


def _digest(values: dict[str, Any], created: float, parents: dict[str, int]) -> str:
    """What an upsert compares to decide "unchanged" (deletion state is compared separately)."""
    text = _json([values, created, parents])
    return hashlib.sha256(text.encode()).hexdigest()[:40]


def _record_from_row(row: Sequence[Any]) -> StoredRecord:
    kind, rid, cluster, *rest = row
    v = dict(zip(_RECORD_COLUMNS + _PARENT_COLUMNS, rest, strict=True))
    rec = Record(
        kind=kind, name=v["name"], cluster=cluster, namespace=v["namespace"], uid=v["uid"],
        ips=tuple(json.loads(v["ips"])), macs=tuple(json.loads(v["macs"])),
        labels=json.loads(v["labels"]), annotations=json.loads(v["annotations"]),
        created=float(v["created"]), deleted=None if v["deleted"] is None else float(v["deleted"]),
        node=v["node"], host_network=bool(v["host_network"]), group_kind=v["group_kind"],
        group_name=v["group_name"], service_type=v["service_type"], selector=json.loads(v["selector"]),
        ports=tuple(ServicePort(**p) for p in json.loads(v["ports"])),
        endpoints=tuple(Endpoint(**e) for e in json.loads(v["endpoints"])),
    )
    return StoredRecord(int(rid), rec, *(int(v[c]) for c in _PARENT_COLUMNS))


class _Existing(NamedTuple):
    id: int
    digest: str
    deleted: float | None
    created: float
    labels: str


# ---------------------------------------------------------------------------------------------------
# DSN


@dataclass(frozen=True)
class _MySQLTarget:
    host: str
    port: int
    user: str
    password: str
    database: str
    unix_socket: str | None


def _sqlite_path(dsn: str) -> str:
    """``sqlite:///rel/file.db`` is relative, ``sqlite:////abs/file.db`` absolute (SQLAlchemy's rule)."""
    rest = dsn[len("sqlite://"):]
    if rest.startswith("/"):
        rest = rest[1:]
    if not rest:
        raise ValueError(f"metadata DSN {dsn!r}: expected sqlite:///path/to/file.db")
    return rest


def _mysql_target(dsn: str) -> _MySQLTarget:
    url = urlsplit(dsn)
    query = parse_qs(url.query)
    database = unquote(url.path.lstrip("/")) or "flowscope"
    if not DB_NAME.match(database):
        raise ValueError(f"metadata DSN {redact(dsn)}: database name {database!r} must be letters, digits, _ $ -")
    return _MySQLTarget(
        host=url.hostname or "localhost", port=url.port or 3306,
        user=unquote(url.username or "root"), password=unquote(url.password or ""),
        database=database, unix_socket=(query.get("unix_socket") or [None])[0],
    )


# ---------------------------------------------------------------------------------------------------
# The store


class MetadataStore:
    """The inventory database; implements the ``Sink`` protocol.

    Thread-safe: one connection behind a lock (writers are watcher threads, readers a refresher).
    A dropped MySQL connection is re-opened and the call retried once; if that fails too the call
    raises ``MetadataUnavailable`` (and the next call tries again).
    """

    def __init__(self, dsn: str = DEFAULT_DSN) -> None:
        self.dsn = dsn
        self._lock = threading.RLock()
        self._conn: Any = None
        self._closed = False
        scheme = dsn.split("://", 1)[0].lower() if "://" in dsn else ""
        if scheme == "sqlite":
            self.dialect = SQLITE
            self._path = _sqlite_path(dsn)
            self._mysql: _MySQLTarget | None = None
        elif scheme in MYSQL_SCHEMES:
            self.dialect = MYSQL
            self._mysql = _mysql_target(dsn)
        else:
            raise ValueError(f"metadata DSN {redact(dsn)}: use sqlite:///path/file.db or "
                             "mysql://user:password@host:port/database")
        self._conn = self._connect()
        try:
            self._run(self._migrate, write=False)
        except BaseException:
            self.close()
            raise

    # -- connection ---------------------------------------------------------------------------------

    def _unavailable(self, e: BaseException) -> MetadataUnavailable:
        return MetadataUnavailable(f"metadata store {redact(self.dsn)} unavailable: {e}")

    def _connect(self) -> Any:
        try:
            if self._mysql is None:
                return self._connect_sqlite()
            return self._connect_mysql(self._mysql)
        except MetadataUnavailable:
            raise
        except Exception as e:  # sqlite3 / pymysql / OS errors: all mean "cannot open"
            raise self._unavailable(e) from e

    def _connect_sqlite(self) -> sqlite3.Connection:
        if self._path != ":memory:":
            Path(self._path).expanduser().parent.mkdir(parents=True, exist_ok=True)
        # isolation_level=None: no implicit transactions; writes open their own (BEGIN IMMEDIATE).
        conn = sqlite3.connect(str(Path(self._path).expanduser()) if self._path != ":memory:" else self._path,
                               timeout=30, isolation_level=None, check_same_thread=False)
        conn.execute("PRAGMA journal_mode=WAL")  # readers in other processes never block the writer
        conn.execute("PRAGMA synchronous=NORMAL")
        return conn

    @staticmethod
    def _connect_mysql(t: _MySQLTarget) -> Any:
        import pymysql
        from pymysql.constants import CLIENT

        # autocommit: a reader must not sit in one REPEATABLE READ snapshot and miss new revisions.
        # FOUND_ROWS: rowcount counts matched rows, as SQLite does.
        kwargs: dict[str, Any] = dict(
            host=t.host, port=t.port, user=t.user, password=t.password, unix_socket=t.unix_socket,
            charset="utf8mb4", autocommit=True, client_flag=CLIENT.FOUND_ROWS,
            connect_timeout=5, read_timeout=60, write_timeout=60)
        try:
            return pymysql.connect(database=t.database, **kwargs)
        except pymysql.err.OperationalError as e:
            if e.args and e.args[0] == 1049:  # unknown database: create it
                conn = pymysql.connect(**kwargs)
                with conn.cursor() as cur:
                    cur.execute(f"CREATE DATABASE IF NOT EXISTS `{t.database}` "
                                "CHARACTER SET utf8mb4 COLLATE utf8mb4_bin")
                conn.select_db(t.database)
                return conn
            raise

    def _errors(self) -> tuple[tuple[type[BaseException], ...], tuple[type[BaseException], ...]]:
        """(lost connection, duplicate key) exception types of the engine."""
        if self._mysql is None:
            return (sqlite3.OperationalError,), (sqlite3.IntegrityError,)
        import pymysql

        return (pymysql.err.OperationalError, pymysql.err.InterfaceError), (pymysql.err.IntegrityError,)

    def _run(self, fn: Callable[[Any], T], *, write: bool) -> T:
        """Run ``fn(cursor)`` under the lock (in one transaction if ``write``). Every write here is
        idempotent, so it runs once more after a lost MySQL connection (on a new one) or a duplicate
        key (another process inserted the same resource first: the retry finds and updates it)."""
        with self._lock:
            if self._closed:
                raise MetadataUnavailable(f"metadata store {redact(self.dsn)} is closed")
            lost, duplicate = self._errors()
            for attempt in range(2):
                if self._conn is None:
                    self._conn = self._connect()
                conn = self._conn
                cur = conn.cursor()
                try:
                    if write:
                        cur.execute(self.dialect.begin)
                    result = fn(cur)
                    if write:
                        conn.commit()
                    return result
                except lost as e:
                    self._rollback(conn)
                    if self._mysql is None or attempt:
                        raise self._unavailable(e) from e
                    # Retry on a fresh connection (_connect raises MetadataUnavailable if the server
                    # is gone); pymysql's ping(reconnect=True) is deprecated and would forget a
                    # database that _connect_mysql created after connecting.
                    self._drop()
                except duplicate:
                    self._rollback(conn)
                    if attempt or not write:
                        raise
                except BaseException:
                    if write:
                        self._rollback(conn)
                    raise
                finally:
                    with contextlib.suppress(Exception):
                        cur.close()
            raise AssertionError("unreachable")

    @staticmethod
    def _rollback(conn: Any) -> None:
        with contextlib.suppress(Exception):
            conn.rollback()

    def _drop(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(Exception):
                conn.close()

    def close(self) -> None:
        with self._lock:
            self._closed = True
            self._drop()

    def __enter__(self) -> MetadataStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- schema -------------------------------------------------------------------------------------

    def _migrate(self, cur: Any) -> list[int]:
        """Apply the missing MIGRATIONS steps; another process migrating at the same time waits
        (SQLite: the write lock; MySQL: a named lock, since its DDL is not transactional)."""
        d = self.dialect
        if d is MYSQL:
            cur.execute("SELECT GET_LOCK('flowscope_metadata_migrate', 60)")
        else:
            cur.execute(d.begin)
        try:
            cur.execute(_render(SCHEMA_VERSION_DDL, d))
            cur.execute("SELECT version FROM schema_version")
            done = {int(r[0]) for r in cur.fetchall()}
            applied = []
            for version, statements in MIGRATIONS:
                if version in done:
                    continue
                for statement in statements:
                    cur.execute(_render(statement, d))
                cur.execute(d.sql("INSERT INTO schema_version (version, applied_at) VALUES (?, ?)"),
                            (version, time.time()))
                applied.append(version)
            if d is SQLITE:
                cur.execute("COMMIT")
            return applied
        except BaseException:
            if d is SQLITE:
                cur.execute("ROLLBACK")
            raise
        finally:
            if d is MYSQL:
                cur.execute("SELECT RELEASE_LOCK('flowscope_metadata_migrate')")

    @property
    def schema_version(self) -> int:
        def read(cur: Any) -> int:
            cur.execute("SELECT MAX(version) FROM schema_version")
            return int(cur.fetchone()[0] or 0)

        return self._run(read, write=False)

    # -- reads --------------------------------------------------------------------------------------

    @property
    def revision(self) -> int:
        """Bumped by every change, by any process: compare with a saved value to know when to reload."""
        def read(cur: Any) -> int:
            cur.execute("SELECT value FROM meta WHERE name = 'revision'")
            return int(cur.fetchone()[0])

        return self._run(read, write=False)

    def records(self, kinds: Iterable[str] | None = None, include_deleted: bool = True) -> list[StoredRecord]:
        """Stored records, parents before children (KINDS order), then by id."""
        wanted = list(kinds) if kinds is not None else None
        if wanted is not None and not wanted:
            return []
        sql, params = _SELECT, []
        where = []
        if wanted is not None:
            where.append("kind IN (" + ", ".join("?" for _ in wanted) + ")")
            params += wanted
        if not include_deleted:
            where.append("deleted IS NULL")
        if where:
            sql += " WHERE " + " AND ".join(where)

        def read(cur: Any) -> list[Any]:
            cur.execute(self.dialect.sql(sql), params)
            return list(cur.fetchall())

        order = {k: i for i, k in enumerate(KINDS)}
        rows = sorted(self._run(read, write=False), key=lambda r: (order.get(r[0], len(order)), int(r[1])))
        return [_record_from_row(r) for r in rows]

    def label_owners(self, kind: str, key: str, value: str) -> list[int]:
        """Ids of ``kind`` resources carrying label ``key=value`` (deleted ones included)."""
        def read(cur: Any) -> list[int]:
            cur.execute(self.dialect.sql("SELECT id FROM resource_label WHERE kind = ? AND lkey = ? "
                                         "AND value = ? ORDER BY id"), (kind, key, value))
            return [int(r[0]) for r in cur.fetchall()]

        return self._run(read, write=False)

    # -- the Sink protocol --------------------------------------------------------------------------

    def upsert(self, rec: Record) -> int:
        def write(cur: Any) -> int:
            rid, changed = self._upsert(cur, rec, time.time())
            if changed:
                self._bump(cur)
            return rid

        return self._run(write, write=True)

    def delete(self, kind: str, cluster: str, key: str, when: float) -> None:
        _check_kind(kind)
        if kind == "cluster" and not cluster:
            cluster = key

        def write(cur: Any) -> None:
            cur.execute(self.dialect.sql("UPDATE resource SET deleted = ?, updated = ? WHERE kind = ? AND "
                                         "cluster = ? AND rkey = ? AND deleted IS NULL"),
                        (when, time.time(), kind, cluster, key))
            if cur.rowcount > 0:
                self._bump(cur)

        self._run(write, write=True)

    def replace(self, kind: str, cluster: str, records: list[Record], when: float) -> None:
        """A full listing of ``kind`` in ``cluster``, applied in one transaction so readers never see
        half a relist. For kind "cluster", ``cluster`` "" means every cluster."""
        _check_kind(kind)
        for rec in records:
            if rec.kind != kind or (kind != "cluster" and rec.cluster != cluster):
                raise ValueError(f"replace({kind!r}, {cluster!r}) got a {rec.kind} of cluster {rec.cluster!r}")

        def write(cur: Any) -> None:
            now = time.time()
            changed = False
            keep = set()
            for rec in records:
                _, ch = self._upsert(cur, rec, now)
                changed |= ch
                keep.add((_identity_cluster(rec), rec.key))
            sql = "SELECT cluster, rkey FROM resource WHERE kind = ? AND deleted IS NULL"
            params: list[Any] = [kind]
            if kind != "cluster" or cluster:
                sql += " AND cluster = ?"
                params.append(cluster)
            cur.execute(self.dialect.sql(sql), params)
            gone = [(c, k) for c, k in cur.fetchall() if (c, k) not in keep]
            for c, k in gone:
                cur.execute(self.dialect.sql("UPDATE resource SET deleted = ?, updated = ? WHERE kind = ? "
                                             "AND cluster = ? AND rkey = ?"), (when, now, kind, c, k))
            if changed or gone:
                self._bump(cur)

        self._run(write, write=True)

    # -- retention ----------------------------------------------------------------------------------

    def purge(self, older_than: float) -> int:
        """Remove records deleted before ``older_than`` (epoch s) unless a kept record still names
        them as parent; returns how many went. Ids stay unique: new ids come from ``id_seq``."""
        def write(cur: Any) -> int:
            cur.execute("SELECT kind, id, deleted, " + ", ".join(_PARENT_COLUMNS) + " FROM resource")
            rows = cur.fetchall()
            parents = {(r[0], int(r[1])): [(k, int(v)) for k, v in zip(_PARENT_KINDS.values(), r[3:],
                                                                         strict=True) if v]
                       for r in rows}
            old = {(r[0], int(r[1])) for r in rows if r[2] is not None and float(r[2]) < older_than}
            kept = set(parents)
            purged = []
            for kind in reversed(KINDS):  # children first, so their parents can go in the same pass
                referenced = {p for k in kept for p in parents[k]}
                drop = [k for k in old if k[0] == kind and k not in referenced]
                kept.difference_update(drop)
                purged += drop
            for kind, rid in purged:
                cur.execute(self.dialect.sql("DELETE FROM resource WHERE kind = ? AND id = ?"), (kind, rid))
                cur.execute(self.dialect.sql("DELETE FROM resource_label WHERE kind = ? AND id = ?"), (kind, rid))
            if purged:
                self._bump(cur)
            return len(purged)

        return self._run(write, write=True)

    # -- inside a write transaction -----------------------------------------------------------------

    def _bump(self, cur: Any) -> None:
        cur.execute("UPDATE meta SET value = value + 1 WHERE name = 'revision'")

    def _find(self, cur: Any, kind: str, cluster: str, key: str) -> _Existing | None:
        cur.execute(self.dialect.sql("SELECT id, digest, deleted, created, labels FROM resource "
                                     "WHERE kind = ? AND cluster = ? AND rkey = ?"), (kind, cluster, key))
        row = cur.fetchone()
        if row is None:
            return None
        return _Existing(int(row[0]), row[1], None if row[2] is None else float(row[2]), float(row[3]), row[4])

    def _ensure(self, cur: Any, rec: Record, now: float, revive: bool) -> tuple[int, bool]:
        """The id of a parent, creating a minimal record if unknown; a live child proves its
        parent lives, so a deleted parent comes back."""
        found = self._find(cur, rec.kind, _identity_cluster(rec), rec.key)
        if found is None:
            return self._upsert(cur, rec, now)
        if revive and found.deleted is not None:
            cur.execute(self.dialect.sql("UPDATE resource SET deleted = NULL, updated = ? WHERE kind = ? AND id = ?"),
                        (now, rec.kind, found.id))
            return found.id, True
        return found.id, False

    def _parents(self, cur: Any, rec: Record, cluster: str, now: float) -> tuple[dict[str, int], bool]:
        ids = dict.fromkeys(_PARENT_COLUMNS, 0)
        changed = False
        revive = rec.deleted is None

        def ensure(column: str, parent: Record) -> None:
            nonlocal changed
            ids[column], ch = self._ensure(cur, parent, now, revive)
            changed |= ch

        if cluster and rec.kind != "cluster":
            ensure("cluster_id", Record("cluster", cluster, cluster=cluster))
        if rec.kind in NAMESPACED and rec.namespace:
            ensure("namespace_id", Record("namespace", rec.namespace, cluster=cluster))
        if rec.kind == "pod":
            if rec.node:
                ensure("node_id", Record("node", rec.node, cluster=cluster))
            if rec.group_name:
                ensure("group_id", Record("pod_group", rec.group_name, cluster=cluster, namespace=rec.namespace,
                                          group_kind=rec.group_kind))
        return ids, changed

    def _upsert(self, cur: Any, rec: Record, now: float) -> tuple[int, bool]:
        """Create or update one record (and its parents); returns (id, whether anything changed)."""
        _check_kind(rec.kind)
        if not rec.name:
            raise ValueError(f"a {rec.kind} record needs a name")
        cluster = _identity_cluster(rec)
        key = rec.key
        parents, changed = self._parents(cur, rec, cluster, now)
        values = _values(rec)
        found = self._find(cur, rec.kind, cluster, key)
        created = rec.created or (found.created if found else 0.0)  # 0: unknown; keep a known time
        digest = _digest(values, rec.created, parents)
        if found is not None:
            if rec.deleted is None:
                deleted = None
            else:  # a deletion already recorded keeps its (first) time
                deleted = found.deleted if found.deleted is not None else rec.deleted
            if found.digest == digest and found.deleted == deleted:
                return found.id, changed
            columns = {**values, "created": created, "deleted": deleted, "updated": now, **parents,
                       "digest": digest}
            assignments = ", ".join(f"{c} = ?" for c in columns)
            cur.execute(self.dialect.sql(f"UPDATE resource SET {assignments} WHERE kind = ? AND id = ?"),
                        (*columns.values(), rec.kind, found.id))
            if found.labels != values["labels"]:
                self._write_labels(cur, rec.kind, found.id, rec.labels, replace=True)
            return found.id, True

        cur.execute(self.dialect.sql("UPDATE id_seq SET last_id = last_id + 1 WHERE kind = ?"), (rec.kind,))
        cur.execute(self.dialect.sql("SELECT last_id FROM id_seq WHERE kind = ?"), (rec.kind,))
        rid = int(cur.fetchone()[0])
        columns = {"kind": rec.kind, "id": rid, "cluster": cluster, "rkey": key, **values, "created": created,
                   "deleted": rec.deleted, "updated": now, **parents, "digest": digest}
        cur.execute(self.dialect.sql(f"INSERT INTO resource ({', '.join(columns)}) "
                                     f"VALUES ({', '.join('?' for _ in columns)})"), tuple(columns.values()))
        self._write_labels(cur, rec.kind, rid, rec.labels, replace=False)
        return rid, True

    def _write_labels(self, cur: Any, kind: str, rid: int, labels: dict[str, str], replace: bool) -> None:
        if replace:
            cur.execute(self.dialect.sql("DELETE FROM resource_label WHERE kind = ? AND id = ?"), (kind, rid))
        if labels:
            cur.executemany(self.dialect.sql("INSERT INTO resource_label (kind, id, lkey, value) VALUES (?, ?, ?, ?)"),
                            [(kind, rid, k, v) for k, v in sorted(labels.items())])


def _check_kind(kind: str) -> None:
    if kind not in KINDS:
        raise ValueError(f"unknown resource kind {kind!r}; known: {', '.join(KINDS)}")
