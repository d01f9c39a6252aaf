-- Extract stage: one table per extract asset. Each row is one source record as the source
-- sent it (payload, native JSON) with its lineage. Partitioned assets replace their partition
-- range in one transaction, so a rerun of a day never duplicates it.

CREATE TABLE IF NOT EXISTS stripe_customers (
    source_id          TEXT NOT NULL PRIMARY KEY,
    partition_date     TEXT NOT NULL,
    source_system      TEXT NOT NULL,
    source_updated_at  TEXT,
    payload            TEXT NOT NULL,
    extraction_run_id  TEXT NOT NULL,
    extracted_at       TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS ix_stripe_customers_partition ON stripe_customers (partition_date);

CREATE TABLE IF NOT EXISTS stripe_subscriptions (
    source_id          TEXT NOT NULL PRIMARY KEY,
    partition_date     TEXT NOT NULL,
    source_system      TEXT NOT NULL,
    source_updated_at  TEXT,
    payload            TEXT NOT NULL,
    extraction_run_id  TEXT NOT NULL,
    extracted_at       TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS ix_stripe_subscriptions_partition ON stripe_subscriptions (partition_date);

CREATE TABLE IF NOT EXISTS stripe_invoices (
    source_id          TEXT NOT NULL PRIMARY KEY,
    partition_date     TEXT NOT NULL,
    source_system      TEXT NOT NULL,
    source_updated_at  TEXT,
    payload            TEXT NOT NULL,
    extraction_run_id  TEXT NOT NULL,
    extracted_at       TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS ix_stripe_invoices_partition ON stripe_invoices (partition_date);

CREATE TABLE IF NOT EXISTS stripe_payments (
    source_id          TEXT NOT NULL PRIMARY KEY,
    partition_date     TEXT NOT NULL,
    source_system      TEXT NOT NULL,
    source_updated_at  TEXT,
    payload            TEXT NOT NULL,
    extraction_run_id  TEXT NOT NULL,
    extracted_at       TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS ix_stripe_payments_partition ON stripe_payments (partition_date);

CREATE TABLE IF NOT EXISTS stripe_credit_notes (
    source_id          TEXT NOT NULL PRIMARY KEY,
    partition_date     TEXT NOT NULL,
    source_system      TEXT NOT NULL,
    source_updated_at  TEXT,
    payload            TEXT NOT NULL,
    extraction_run_id  TEXT NOT NULL,
    extracted_at       TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS ix_stripe_credit_notes_partition ON stripe_credit_notes (partition_date);

CREATE TABLE IF NOT EXISTS stripe_refunds (
    source_id          TEXT NOT NULL PRIMARY KEY,
    partition_date     TEXT NOT NULL,
    source_system      TEXT NOT NULL,
    source_updated_at  TEXT,
    payload            TEXT NOT NULL,
    extraction_run_id  TEXT NOT NULL,
    extracted_at       TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS ix_stripe_refunds_partition ON stripe_refunds (partition_date);

CREATE TABLE IF NOT EXISTS stripe_charges (
    source_id          TEXT NOT NULL PRIMARY KEY,
    partition_date     TEXT NOT NULL,
    source_system      TEXT NOT NULL,
    source_updated_at  TEXT,
    payload            TEXT NOT NULL,
    extraction_run_id  TEXT NOT NULL,
    extracted_at       TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS ix_stripe_charges_partition ON stripe_charges (partition_date);

CREATE TABLE IF NOT EXISTS salesforce_accounts (
    source_id          TEXT NOT NULL PRIMARY KEY,
    partition_date     TEXT NOT NULL,
    source_system      TEXT NOT NULL,
    source_updated_at  TEXT,
    payload            TEXT NOT NULL,
    extraction_run_id  TEXT NOT NULL,
    extracted_at       TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS ix_salesforce_accounts_partition ON salesforce_accounts (partition_date);

CREATE TABLE IF NOT EXISTS salesforce_opportunities (
    source_id          TEXT NOT NULL PRIMARY KEY,
    partition_date     TEXT NOT NULL,
    source_system      TEXT NOT NULL,
    source_updated_at  TEXT,
    payload            TEXT NOT NULL,
    extraction_run_id  TEXT NOT NULL,
    extracted_at       TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS ix_salesforce_opportunities_partition ON salesforce_opportunities (partition_date);

CREATE TABLE IF NOT EXISTS salesforce_contracts (
    source_id          TEXT NOT NULL PRIMARY KEY,
    partition_date     TEXT NOT NULL,
    source_system      TEXT NOT NULL,
    source_updated_at  TEXT,
    payload            TEXT NOT NULL,
    extraction_run_id  TEXT NOT NULL,
    extracted_at       TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS ix_salesforce_contracts_partition ON salesforce_contracts (partition_date);

CREATE TABLE IF NOT EXISTS cpq_quotes (
    source_id          TEXT NOT NULL PRIMARY KEY,
    partition_date     TEXT NOT NULL,
    source_system      TEXT NOT NULL,
    source_updated_at  TEXT,
    payload            TEXT NOT NULL,
    extraction_run_id  TEXT NOT NULL,
    extracted_at       TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS ix_cpq_quotes_partition ON cpq_quotes (partition_date);

CREATE TABLE IF NOT EXISTS cpq_quote_lines (
    source_id          TEXT NOT NULL PRIMARY KEY,
    partition_date     TEXT NOT NULL,
    source_system      TEXT NOT NULL,
    source_updated_at  TEXT,
    payload            TEXT NOT NULL,
    extraction_run_id  TEXT NOT NULL,
    extracted_at       TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS ix_cpq_quote_lines_partition ON cpq_quote_lines (partition_date);

CREATE TABLE IF NOT EXISTS cpq_subscriptions (
    source_id          TEXT NOT NULL PRIMARY KEY,
    partition_date     TEXT NOT NULL,
    source_system      TEXT NOT NULL,
    source_updated_at  TEXT,
    payload            TEXT NOT NULL,
    extraction_run_id  TEXT NOT NULL,
    extracted_at       TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS ix_cpq_subscriptions_partition ON cpq_subscriptions (partition_date);

CREATE TABLE IF NOT EXISTS erp_invoices (
    source_id          TEXT NOT NULL PRIMARY KEY,
    partition_date     TEXT NOT NULL,
    source_system      TEXT NOT NULL,
    source_updated_at  TEXT,
    payload            TEXT NOT NULL,
    extraction_run_id  TEXT NOT NULL,
    extracted_at       TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS ix_erp_invoices_partition ON erp_invoices (partition_date);

-- Stripe invoice payments looked up for a payment whose invoice the warehouse did not hold.
CREATE TABLE IF NOT EXISTS stripe_invoice_payments (
    source_id          TEXT NOT NULL PRIMARY KEY,
    partition_date     TEXT NOT NULL,
    source_system      TEXT NOT NULL,
    source_updated_at  TEXT,
    payload            TEXT NOT NULL,
    extraction_run_id  TEXT NOT NULL,
    extracted_at       TEXT NOT NULL
);
