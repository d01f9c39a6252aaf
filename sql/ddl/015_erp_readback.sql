-- What NetSuite holds besides invoices, read back through SuiteQL for reconciliation. Same
-- shape as every extract table.
CREATE TABLE IF NOT EXISTS erp_payments (
    source_id          TEXT NOT NULL PRIMARY KEY,
    partition_date     TEXT NOT NULL,
    source_system      TEXT NOT NULL,
    source_updated_at  TEXT,
    payload            TEXT NOT NULL,
    extraction_run_id  TEXT NOT NULL,
    extracted_at       TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS ix_erp_payments_partition ON erp_payments (partition_date);
