-- Reconcile stage: every difference between billing and the ERP, classified and explained
-- with both sides' values and the correlation id. Matched rows are kept too, so a day's
-- reconciliation is complete evidence, not only a list of problems. A status added to a
-- CHECK here needs a rebuild of its table in REBUILDS (resources/warehouse.py), or existing
-- warehouses keep the old CHECK.
CREATE TABLE IF NOT EXISTS invoice_reconciliation (
    partition_date      TEXT NOT NULL,
    external_id         TEXT NOT NULL,
    invoice_id          TEXT,
    erp_internal_ids    TEXT,
    status              TEXT NOT NULL CHECK (status IN (
        'matched', 'missing_in_erp', 'amount_mismatch', 'currency_mismatch',
        'duplicate_in_erp', 'extra_in_erp', 'held_by_exception', 'status_mismatch',
        'awaiting_window', 'balance_mismatch', 'quarantined')),
    billing_currency    TEXT,
    billing_total_minor BIGINT,
    erp_currency        TEXT,
    erp_total_minor     BIGINT,
    billing_status      TEXT,                   -- open, paid, uncollectible, void
    billing_remaining_minor BIGINT,             -- left to collect in billing
    erp_status          TEXT,                   -- as NetSuite reports it
    erp_remaining_minor BIGINT,                 -- NetSuite's foreignamountremaining
    correlation_id      TEXT,
    explanation         TEXT NOT NULL,
    run_id              TEXT NOT NULL,
    PRIMARY KEY (partition_date, external_id)
);
CREATE INDEX IF NOT EXISTS ix_invoice_reconciliation_status ON invoice_reconciliation (status);

-- Gateway (Stripe) payments against NetSuite customer payments, same classification.
CREATE TABLE IF NOT EXISTS payment_reconciliation (
    partition_date      TEXT NOT NULL,
    external_id         TEXT NOT NULL,
    payment_id          TEXT,
    erp_internal_ids    TEXT,
    status              TEXT NOT NULL CHECK (status IN (
        'matched', 'missing_in_erp', 'amount_mismatch', 'currency_mismatch',
        'duplicate_in_erp', 'extra_in_erp', 'held_by_exception', 'awaiting_window',
        'balance_mismatch', 'quarantined')),
    billing_currency    TEXT,
    billing_total_minor BIGINT,
    erp_currency        TEXT,
    erp_total_minor     BIGINT,
    billing_status      TEXT,
    billing_remaining_minor BIGINT,
    erp_status          TEXT,
    erp_remaining_minor BIGINT,
    correlation_id      TEXT,
    explanation         TEXT NOT NULL,
    run_id              TEXT NOT NULL,
    PRIMARY KEY (partition_date, external_id)
);
CREATE INDEX IF NOT EXISTS ix_payment_reconciliation_status ON payment_reconciliation (status);

-- Closed-won renewals in Salesforce against their first invoice in Stripe and in NetSuite.
CREATE TABLE IF NOT EXISTS renewal_reconciliation (
    opportunity_id          TEXT NOT NULL PRIMARY KEY,
    account_id              TEXT NOT NULL,
    close_date              TEXT NOT NULL,
    term_start              TEXT NOT NULL,
    status                  TEXT NOT NULL CHECK (status IN (
        'matched', 'held_by_exception', 'missing_in_billing', 'missing_in_erp',
        'amount_mismatch', 'currency_mismatch', 'status_mismatch', 'awaiting_window')),
    crm_currency            TEXT,
    crm_amount_minor        BIGINT,
    invoice_id              TEXT,
    billing_currency        TEXT,
    billing_subtotal_minor  BIGINT,
    erp_status              TEXT,
    explanation             TEXT NOT NULL,
    run_id                  TEXT NOT NULL
);
