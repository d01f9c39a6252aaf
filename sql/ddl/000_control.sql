-- Control tables: quarantine, extraction cursors, and the schema version applied.

-- Rows that broke their contract. One row per (asset, record, field, check); a rerun of the
-- partition replaces its rows, so a record fixed upstream leaves quarantine on its own.
CREATE TABLE IF NOT EXISTS quarantine (
    asset           TEXT NOT NULL,
    source_system   TEXT NOT NULL,
    source_id       TEXT NOT NULL,
    partition_date  TEXT NOT NULL,
    field           TEXT NOT NULL,
    check_name      TEXT NOT NULL,
    reason          TEXT NOT NULL,
    failure_value   TEXT,
    run_id          TEXT NOT NULL,
    quarantined_at  TEXT NOT NULL,
    PRIMARY KEY (asset, source_id, field, check_name)
);
CREATE INDEX IF NOT EXISTS ix_quarantine_partition ON quarantine (asset, partition_date);

-- Incremental extraction cursors: the high-water mark each source stream reached.
CREATE TABLE IF NOT EXISTS extract_cursors (
    stream      TEXT NOT NULL PRIMARY KEY,
    cursor      TEXT NOT NULL,
    updated_at  TEXT NOT NULL,
    run_id      TEXT NOT NULL
);

-- One row per schema migration applied (see REBUILDS in resources/warehouse.py): a table
-- rebuilt from its current DDL because a constraint changed after it first shipped.
CREATE TABLE IF NOT EXISTS schema_migrations (
    version     TEXT NOT NULL PRIMARY KEY,
    applied_at  TEXT NOT NULL
);

-- The version of the schema the warehouse holds (a hash of sql/ddl, sql/views and the
-- migrations), written by every migration. On PostgreSQL only the owner migrates
-- (`finsync warehouse migrate`); every other command compares this row with its own release.
CREATE TABLE IF NOT EXISTS schema_version (
    id          INTEGER NOT NULL PRIMARY KEY CHECK (id = 1),
    fingerprint TEXT NOT NULL,
    migrated_at TEXT NOT NULL
);
