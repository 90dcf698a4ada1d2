"""Apply the ClickHouse schema in ``sql/``: each numbered file once, in order, single-node or ON CLUSTER.

The SQL files are the contract between collector and datasource. This module only splits them into
statements, derives their cluster form by a few explicit rewrites (``cluster_statements``), records
what ran in ``flowscope.schema_migrations``, refills the enum dictionaries from ``flowscope.enums`` and
applies per-table retention (TTL). ``render()`` returns, as text, the statements ``apply()`` runs
(``apply`` adds only its bookkeeping INSERTs and skips what is already in place).

    python -m flowscope.migrate --clickhouse chdb:///var/lib/flowscope/chdb
    python -m flowscope.migrate --cluster prod --retention flow_log.l4_flow_log=24 --print
"""

from __future__ import annotations

import argparse
import hashlib
import re
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from clickhouse_connect.driver.client import Client

from flowscope.enums import INT_ENUMS, STRING_ENUMS
from flowscope.storage import StorageError, connect, redact, resolve_dsn

SQL_DIR = Path(__file__).resolve().parent.parent / "sql"

FILE_NAME = re.compile(r"^(\d{4})_(\w+)\.sql$")
STATEMENT_END = re.compile(r";[ \t]*$", re.M)
CLUSTER_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")

# Statement shapes the cluster rewrite knows; names are database-qualified, tables may be `quoted`.
_NAME = r"(?P<db>\w+)\.(?P<table>`[^`]+`|\w+)"
CREATE_DATABASE = re.compile(r"^CREATE DATABASE IF NOT EXISTS (?P<db>\w+)", re.I)
CREATE_DICTIONARY = re.compile(rf"^CREATE DICTIONARY IF NOT EXISTS {_NAME}", re.I)
CREATE_TABLE = re.compile(rf"^CREATE TABLE IF NOT EXISTS {_NAME}", re.I)
AS_TABLE = re.compile(rf"^\s+AS {_NAME}", re.I)
ALTER_OR_TRUNCATE = re.compile(rf"^(?P<verb>ALTER TABLE|TRUNCATE TABLE IF EXISTS) {_NAME}", re.I)
RELOAD_DICTIONARY = re.compile(r"^SYSTEM RELOAD DICTIONARY (?P<name>\S+)", re.I)
INSERT_VALUES = re.compile(r"^(?P<head>INSERT INTO \S+ \([^)]*\))\s+VALUES\b", re.I)
ENGINE = re.compile(r"\bENGINE\s*=\s*(?P<kind>\w*)MergeTree\b(?:\((?P<args>[^)]*)\))?", re.I)
ORDER_BY = re.compile(r"^ORDER BY \(?(?P<key>[^)\n]+)\)?\s*$", re.I | re.M)
TTL_HOURS = re.compile(r"\bTTL _ingest_time \+ INTERVAL (?P<hours>\d+) HOUR\b", re.I)

ENUM_COLUMNS = ("tag_name", "value", "name_zh", "name_en", "description_zh", "description_en")
ENUM_TABLES = ("flow_tag.int_enum", "flow_tag.string_enum")


class MigrationError(RuntimeError):
    """A statement failed; the message names the file and statement, the cause is chained."""


@dataclass(frozen=True)
class Migration:
    """One numbered file of ``sql/``; the checksum covers its statements, not its comments."""

    version: int
    name: str
    checksum: str
    statements: tuple[str, ...]


@dataclass(frozen=True)
class RetentionChange:
    table: str
    old_hours: int
    new_hours: int


@dataclass
class MigrationReport:
    """What ``apply`` did; ``warnings`` need a human (an applied file was edited, a file vanished)."""

    applied: list[int] = field(default_factory=list)
    skipped: list[int] = field(default_factory=list)
    retention_changes: list[RetentionChange] = field(default_factory=list)
    enums_refreshed: bool = False
    warnings: list[str] = field(default_factory=list)

    def summary(self) -> str:
        lines = [f"applied migrations: {_versions(self.applied)}",
                 f"already applied: {_versions(self.skipped)}",
                 f"enum dictionaries: {'refilled' if self.enums_refreshed else 'up to date'}"]
        lines += [f"retention {c.table}: {c.old_hours} h -> {c.new_hours} h" for c in self.retention_changes]
        lines += [f"warning: {w}" for w in self.warnings]
        return "\n".join(lines)


def _versions(versions: list[int]) -> str:
    return ", ".join(f"{v:04d}" for v in versions) or "none"


# ---------------------------------------------------------------------------------------------------
# Reading the files


def split_statements(text: str) -> list[str]:
    """Statements of one file: lines starting with ``--`` dropped, split at ``;`` ending a line."""
    code = "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("--"))
    return [s.strip() for s in STATEMENT_END.split(code) if s.strip()]


def load_migrations(sql_dir: Path = SQL_DIR) -> list[Migration]:
    """The numbered files of ``sql_dir`` in version order; a misnamed or duplicate file is an error."""
    migrations = []
    for path in sorted(sql_dir.glob("*.sql")):
        match = FILE_NAME.match(path.name)
        if not match:
            raise ValueError(f"{path}: migration files are named NNNN_name.sql")
        statements = tuple(split_statements(path.read_text(encoding="utf-8")))
        checksum = hashlib.sha256(";\n".join(statements).encode()).hexdigest()
        migrations.append(Migration(int(match[1]), path.stem, checksum, statements))
    if not migrations:
        raise ValueError(f"no migration files in {sql_dir}")
    migrations.sort(key=lambda m: m.version)
    seen: dict[int, str] = {}
    for m in migrations:
        if m.version in seen:
            raise ValueError(f"two migrations with version {m.version:04d}: {seen[m.version]}, {m.name}")
        seen[m.version] = m.name
    return migrations


def default_retention(migrations: Iterable[Migration]) -> dict[str, int]:
    """Table -> hours of every table created with ``TTL _ingest_time + INTERVAL n HOUR``: the tunable ones."""
    hours = {}
    for m in migrations:
        for stmt in m.statements:
            table, ttl = CREATE_TABLE.match(stmt), TTL_HOURS.search(stmt)
            if table and ttl:
                hours[f"{table['db']}.{_unquote(table['table'])}"] = int(ttl["hours"])
    return hours


def _unquote(name: str) -> str:
    return name.strip("`")


def _quote(name: str) -> str:
    return name if re.fullmatch(r"\w+", name) else f"`{name}`"


def _literal(value: Any) -> str:
    if isinstance(value, int):
        return str(value)
    return "'" + str(value).replace("\\", "\\\\").replace("'", "\\'") + "'"


# ---------------------------------------------------------------------------------------------------
# Statements beyond the files: enums, retention, bookkeeping


def enum_rows() -> dict[str, list[tuple[Any, ...]]]:
    """Rows of flow_tag.int_enum / string_enum from flowscope.enums (no Chinese names yet: zh = en)."""
    ints = [(tag, int(value), name, name, desc, desc)
            for tag, values in INT_ENUMS.items() for value, (name, desc) in values.items()]
    strings = [(tag, value, name, name, desc, desc)
               for tag, values in STRING_ENUMS.items() for value, (name, desc) in values.items()]
    return {"flow_tag.int_enum": sorted(ints), "flow_tag.string_enum": sorted(strings)}


def enum_statements() -> list[str]:
    """Replace the enum tables' content and reload their dictionaries."""
    statements = []
    for table, rows in enum_rows().items():
        values = ",\n".join("(" + ", ".join(_literal(v) for v in row) + ")" for row in rows)
        statements += [f"TRUNCATE TABLE IF EXISTS {table}",
                       f"INSERT INTO {table} ({', '.join(ENUM_COLUMNS)}) VALUES\n{values}",
                       f"SYSTEM RELOAD DICTIONARY {table}_map"]
    return statements


def check_retention(retention: Mapping[str, int] | None, known: Mapping[str, int]) -> dict[str, int]:
    """``retention`` validated against the tables that have a TTL; errors name the known tables."""
    retention = dict(retention or {})
    unknown = sorted(set(retention) - set(known))
    if unknown:
        raise ValueError(f"unknown table(s) in retention: {', '.join(unknown)}; "
                         f"known tables: {', '.join(sorted(known))}")
    for table, hours in retention.items():
        if isinstance(hours, bool) or not isinstance(hours, int) or hours <= 0:
            raise ValueError(f"retention of {table} must be a positive number of hours, not {hours!r}")
    return retention


def retention_statement(table: str, hours: int) -> str:
    """TTL change that leaves existing parts alone: they expire by the new TTL as they are merged."""
    db, name = table.split(".", 1)
    return (f"ALTER TABLE {db}.{_quote(name)} MODIFY TTL _ingest_time + INTERVAL {hours} HOUR "
            f"SETTINGS materialize_ttl_after_modify = 0")


def _record_migration(m: Migration) -> str:
    return (f"INSERT INTO flowscope.schema_migrations (version, name, checksum) VALUES "
            f"({m.version}, {_literal(m.name)}, {_literal(m.checksum)})")


def _record_retention(table: str, hours: int) -> str:
    return f"INSERT INTO flowscope.retention (table_name, hours) VALUES ({_literal(table)}, {hours})"


# ---------------------------------------------------------------------------------------------------
# Cluster form


def cluster_statements(stmt: str, cluster: str) -> list[str]:
    """The ON CLUSTER form of one single-node statement.

    A MergeTree-family table becomes ``<table>_local`` (Replicated…MergeTree, ZooKeeper path
    ``/clickhouse/tables/{shard}/<db>/<table>_local``) plus a Distributed ``<table>`` over it, so
    readers and writers keep using the original names. A statement of an unknown shape is an error
    rather than something run on one node only.
    """
    if m := CREATE_DATABASE.match(stmt) or CREATE_DICTIONARY.match(stmt):
        return [f"{stmt[:m.end()]} ON CLUSTER {cluster}{stmt[m.end():]}"]
    if m := CREATE_TABLE.match(stmt):
        return _replicated_table(stmt, m, cluster)
    if m := ALTER_OR_TRUNCATE.match(stmt):
        local = _quote(_unquote(m["table"]) + "_local")
        return [f"{m['verb']} {m['db']}.{local} ON CLUSTER {cluster}{stmt[m.end():]}"]
    if m := RELOAD_DICTIONARY.match(stmt):
        return [f"SYSTEM RELOAD DICTIONARY ON CLUSTER {cluster} {m['name']}{stmt[m.end():]}"]
    if m := INSERT_VALUES.match(stmt):
        # Synchronous through the Distributed table, so the next statement (a dictionary reload,
        # the next run's bookkeeping read) sees the rows.
        return [f"{m['head']} SETTINGS insert_distributed_sync = 1 VALUES{stmt[m.end():]}"]
    raise ValueError(f"no cluster form for this statement (teach cluster_statements): {stmt[:80]!r}")


def _replicated_table(stmt: str, head: re.Match[str], cluster: str) -> list[str]:
    db, table = head["db"], _unquote(head["table"])
    local = f"{table}_local"
    rest = stmt[head.end():]
    if source := AS_TABLE.match(rest):  # CREATE TABLE t AS other: copy the other's local table
        rest = f" AS {source['db']}.{_quote(_unquote(source['table']) + '_local')}{rest[source.end():]}"
    engine = ENGINE.search(rest)
    if not engine:
        raise ValueError(f"no cluster form for {db}.{table}: only MergeTree-family tables are replicated")
    args = [f"'/clickhouse/tables/{{shard}}/{db}/{local}'", "'{replica}'"]
    if engine["args"] and engine["args"].strip():
        args.append(engine["args"].strip())
    rest = (f"{rest[:engine.start()]}ENGINE = Replicated{engine['kind']}MergeTree({', '.join(args)})"
            f"{rest[engine.end():]}")
    # Versions of one key must land on one shard for ReplacingMergeTree's FINAL to pick the newest.
    order = ORDER_BY.search(rest)
    sharding = f"cityHash64({order['key']})" if engine["kind"] and order else "rand()"
    return [f"CREATE TABLE IF NOT EXISTS {db}.{_quote(local)} ON CLUSTER {cluster}{rest}",
            f"CREATE TABLE IF NOT EXISTS {db}.{_quote(table)} ON CLUSTER {cluster} AS {db}.{_quote(local)}\n"
            f"ENGINE = Distributed('{cluster}', '{db}', '{local}', {sharding})"]


def _for_target(statements: Iterable[str], cluster: str | None) -> list[str]:
    if cluster is None:
        return list(statements)
    if not CLUSTER_NAME.match(cluster):
        raise ValueError(f"cluster name {cluster!r}: use letters, digits and '_'")
    return [out for stmt in statements for out in cluster_statements(stmt, cluster)]


# ---------------------------------------------------------------------------------------------------
# Public API


def render(cluster: str | None = None, retention: Mapping[str, int] | None = None,
           sql_dir: Path = SQL_DIR) -> list[str]:
    """Every statement of a fresh install (schema, enum fill, retention), as ``apply`` would run them."""
    migrations = load_migrations(sql_dir)
    retention = check_retention(retention, default_retention(migrations))
    statements = [stmt for m in migrations for stmt in m.statements]
    statements += enum_statements()
    statements += [retention_statement(table, hours) for table, hours in retention.items()]
    return _for_target(statements, cluster)


def apply(client: Client, cluster: str | None = None, retention: Mapping[str, int] | None = None,
          sql_dir: Path = SQL_DIR) -> MigrationReport:
    """Bring the database up to date: new migration files, enum rows, retention. Safe to re-run."""
    migrations = load_migrations(sql_dir)
    known = default_retention(migrations)
    retention = check_retention(retention, known)
    _for_target([], cluster)  # validates the cluster name before anything runs
    report = MigrationReport()

    recorded = _recorded_migrations(client)
    for m in migrations:
        if m.version in recorded:
            report.skipped.append(m.version)
            if recorded[m.version] != m.checksum:
                report.warnings.append(
                    f"{m.name}.sql changed since it was applied (checksum {recorded[m.version][:12]} -> "
                    f"{m.checksum[:12]}); it was not re-applied: put schema changes in a new numbered file")
            continue
        _run(client, m.statements, cluster, where=f"{m.name}.sql")
        _run(client, [_record_migration(m)], cluster, where="flowscope.schema_migrations")
        report.applied.append(m.version)
    for version in sorted(set(recorded) - {m.version for m in migrations}):
        report.warnings.append(f"migration {version:04d} is recorded as applied but has no file in {sql_dir}")

    if _enum_rows_in_db(client) != enum_rows():
        _run(client, enum_statements(), cluster, where="enum dictionaries")
        report.enums_refreshed = True

    current = known | _recorded_retention(client)
    for table, hours in retention.items():
        if current[table] != hours:
            _run(client, [retention_statement(table, hours), _record_retention(table, hours)], cluster,
                 where=f"retention of {table}")
            report.retention_changes.append(RetentionChange(table, current[table], hours))
    return report


def _run(client: Client, statements: Iterable[str], cluster: str | None, where: str) -> None:
    for i, stmt in enumerate(_for_target(statements, cluster), 1):
        try:
            client.command(stmt)
        except Exception as e:  # clickhouse-connect raises several unrelated types
            raise MigrationError(f"{where}, statement {i} failed: {e}\n{stmt[:300]}") from e


def _table_exists(client: Client, db: str, table: str) -> bool:
    rows = client.query("SELECT count() FROM system.tables WHERE database = {db:String} "
                        "AND name = {t:String}", parameters={"db": db, "t": table}).result_rows
    return bool(rows[0][0])


def _recorded_migrations(client: Client) -> dict[int, str]:
    if not _table_exists(client, "flowscope", "schema_migrations"):
        return {}
    rows = client.query("SELECT version, argMax(checksum, applied_at) FROM flowscope.schema_migrations "
                        "GROUP BY version").result_rows
    return {int(version): checksum for version, checksum in rows}


def _recorded_retention(client: Client) -> dict[str, int]:
    if not _table_exists(client, "flowscope", "retention"):
        return {}
    rows = client.query("SELECT table_name, argMax(hours, applied_at) FROM flowscope.retention "
                        "GROUP BY table_name").result_rows
    return {table: int(hours) for table, hours in rows}


def _enum_rows_in_db(client: Client) -> dict[str, list[tuple[Any, ...]]]:
    rows = {}
    for table in ENUM_TABLES:
        db, name = table.split(".")
        if not _table_exists(client, db, name):
            rows[table] = []
            continue
        result = client.query(f"SELECT {', '.join(ENUM_COLUMNS)} FROM {table} FINAL").result_rows
        rows[table] = sorted(tuple(r) for r in result)
    return rows


# ---------------------------------------------------------------------------------------------------
# Command line


def parse_retention(items: Iterable[str]) -> dict[str, int]:
    """``["flow_log.l4_flow_log=24", "flow_metrics.network.1m=720"]`` -> {table: hours}."""
    retention = {}
    for item in items:
        table, sep, hours = item.rpartition("=")
        if not sep or not table or not hours.isdigit():
            raise ValueError(f"retention {item!r}: expected TABLE=HOURS, e.g. flow_log.l4_flow_log=24")
        retention[table] = int(hours)
    return retention


def main(argv: list[str] | None = None) -> int:
    """``python -m flowscope.migrate``: apply the schema, or print it with ``--print``."""
    parser = argparse.ArgumentParser(prog="python -m flowscope.migrate", description=__doc__.splitlines()[0])
    parser.add_argument("--clickhouse", metavar="DSN",
                        help="chdb:///dir or http(s)://user:pass@host:8123/ (default $FLOWSCOPE_CLICKHOUSE, "
                             "else the embedded store in ./.flowscope/chdb)")
    parser.add_argument("--cluster", metavar="NAME",
                        help="create ReplicatedMergeTree <table>_local + Distributed <table> ON CLUSTER NAME")
    parser.add_argument("--retention", metavar="TABLE=HOURS", action="append", default=[],
                        help="TTL of a table in hours, e.g. flow_log.l4_flow_log=24 (repeatable)")
    parser.add_argument("--print", dest="print_only", action="store_true",
                        help="print the statements of a fresh install instead of running anything")
    args = parser.parse_args(argv)
    try:
        retention = parse_retention(args.retention)
        if args.print_only:
            print(";\n\n".join(render(args.cluster, retention)) + ";")
            return 0
        dsn = resolve_dsn(args.clickhouse)
        client = connect(dsn)
        try:
            report = apply(client, args.cluster, retention)
        finally:
            client.close()
    except (ValueError, MigrationError, StorageError) as e:
        parser.exit(2, f"error: {e}\n")
    print(f"ClickHouse {redact(dsn)}\n{report.summary()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
