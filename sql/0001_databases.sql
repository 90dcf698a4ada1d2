-- Databases of DeepFlow's layout (reference/deepflow-datamodel.md §0) and flowscope's own bookkeeping.
--
-- Conventions for every file in sql/ (flowscope/migrate.py relies on them):
--   * files are applied in numeric order, once each; each holds statements ending with ';' at line end;
--   * every CREATE uses IF NOT EXISTS and a database-qualified name, so re-running a file is harmless;
--   * lines starting with '--' are comments and are not sent to ClickHouse;
--   * the files are plain single-node ClickHouse SQL; for a cluster, flowscope/migrate.py derives the
--     ON CLUSTER form (ReplicatedMergeTree `<table>_local` + Distributed `<table>`) from these statements.
-- A schema change is a new numbered file, never an edit of an applied one (the runner warns on edits).

CREATE DATABASE IF NOT EXISTS flow_log;

CREATE DATABASE IF NOT EXISTS flow_metrics;

CREATE DATABASE IF NOT EXISTS flow_tag;

CREATE DATABASE IF NOT EXISTS flowscope;

-- One row per applied migration file.
CREATE TABLE IF NOT EXISTS flowscope.schema_migrations
(
    version     UInt32,
    name        String,
    checksum    String,
    applied_at  DateTime64(3)  DEFAULT now64(3)
)
ENGINE = MergeTree
ORDER BY version;

-- One row per retention change; the latest row of a table is the TTL in force (hours, on `_ingest_time`).
CREATE TABLE IF NOT EXISTS flowscope.retention
(
    table_name  String,
    hours       UInt32,
    applied_at  DateTime64(3)  DEFAULT now64(3)
)
ENGINE = MergeTree
ORDER BY (table_name, applied_at);
