-- Tax check: each live Stripe invoice's billed tax against the tax AvaTax computes for the
-- customer's billing address (a SalesOrder estimate, never committed). Amounts are integer minor
-- units; a difference beyond the tolerance is also a tax_mismatch row in finance_exceptions.
-- A rerun of a partition range replaces its rows.
CREATE TABLE IF NOT EXISTS invoice_tax_checks (
    invoice_id          TEXT NOT NULL PRIMARY KEY,   -- the Stripe invoice id
    partition_date      TEXT NOT NULL,
    currency            TEXT NOT NULL,
    billed_tax_minor    BIGINT NOT NULL,
    engine_tax_minor    BIGINT NOT NULL,
    difference_minor    BIGINT NOT NULL,             -- billed - engine
    within_tolerance    INTEGER NOT NULL CHECK (within_tolerance IN (0, 1)),
    jurisdiction        TEXT,
    correlation_id      TEXT NOT NULL,
    run_id              TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS ix_invoice_tax_checks_partition ON invoice_tax_checks (partition_date);
