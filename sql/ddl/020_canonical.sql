-- Canonical stage: validated business objects in integer minor units, each row with its lineage
-- (source system, source id, source version, extraction run, correlation id).

CREATE TABLE IF NOT EXISTS customers (
    customer_key            TEXT NOT NULL PRIMARY KEY,   -- the Salesforce account id
    salesforce_account_id   TEXT NOT NULL,
    stripe_customer_id      TEXT,
    name                    TEXT NOT NULL,
    parent_customer_key     TEXT,
    hierarchy_depth         INTEGER NOT NULL,
    legal_entity            TEXT,
    tax_exempt              TEXT,
    has_tax_id              INTEGER NOT NULL DEFAULT 0,
    tax_id                  TEXT,                        -- the buyer's VAT id
    tax_exemption_number    TEXT,
    tax_entity_use_code     TEXT,
    currency                TEXT,
    country                 TEXT,
    po_required             INTEGER NOT NULL,
    source_system           TEXT NOT NULL,
    source_id               TEXT NOT NULL,
    source_updated_at       TEXT,
    extraction_run_id       TEXT NOT NULL,
    correlation_id          TEXT NOT NULL
);

CREATE TABLE IF NOT EXISTS invoices (
    invoice_id              TEXT NOT NULL PRIMARY KEY,   -- the Stripe invoice id
    partition_date          TEXT NOT NULL,
    number                  TEXT,
    po_number               TEXT,                        -- the customer's PO (FINSYNC_PO_SOURCE)
    opportunity_id          TEXT,                        -- the Salesforce Opportunity it bills
    stripe_customer_id      TEXT NOT NULL,
    customer_key            TEXT,
    subscription_id         TEXT,
    status                  TEXT NOT NULL,
    currency                TEXT NOT NULL,
    subtotal_minor          BIGINT NOT NULL,             -- lines before discounts
    discount_minor          BIGINT NOT NULL DEFAULT 0,
    tax_minor               BIGINT NOT NULL,             -- every tax, inclusive ones too
    inclusive_tax_minor     BIGINT NOT NULL DEFAULT 0,   -- tax inside tax-inclusive prices
    total_excluding_tax_minor BIGINT,
    total_minor             BIGINT NOT NULL,
    starting_balance_minor  BIGINT,                      -- customer balance before (< 0: a credit)
    ending_balance_minor    BIGINT,
    amount_due_minor        BIGINT,
    line_count              INTEGER NOT NULL,
    amount_paid_minor       BIGINT NOT NULL DEFAULT 0,
    amount_remaining_minor  BIGINT NOT NULL DEFAULT 0,   -- left to collect in billing
    paid_out_of_band        INTEGER NOT NULL DEFAULT 0,
    invoice_date            TEXT NOT NULL,
    due_date                TEXT,
    finalized_at            TEXT,
    source_system           TEXT NOT NULL,
    source_id               TEXT NOT NULL,
    source_updated_at       TEXT,
    extraction_run_id       TEXT NOT NULL,
    correlation_id          TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS ix_invoices_partition ON invoices (partition_date);

CREATE TABLE IF NOT EXISTS invoice_lines (
    line_id                 TEXT NOT NULL PRIMARY KEY,
    invoice_id              TEXT NOT NULL,
    partition_date          TEXT NOT NULL,
    line_number             INTEGER NOT NULL,
    product_id              TEXT,
    price_id                TEXT,
    description             TEXT,
    quantity                BIGINT NOT NULL,
    currency                TEXT NOT NULL,
    amount_minor            BIGINT NOT NULL,             -- before discounts
    discount_minor          BIGINT NOT NULL DEFAULT 0,
    tax_minor               BIGINT NOT NULL,
    inclusive_tax_minor     BIGINT NOT NULL DEFAULT 0,
    period_start            TEXT,
    period_end              TEXT,
    correlation_id          TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS ix_invoice_lines_partition ON invoice_lines (partition_date);
CREATE INDEX IF NOT EXISTS ix_invoice_lines_invoice ON invoice_lines (invoice_id);

CREATE TABLE IF NOT EXISTS subscriptions (
    subscription_id             TEXT NOT NULL PRIMARY KEY,
    stripe_customer_id          TEXT NOT NULL,
    customer_key                TEXT,
    status                      TEXT NOT NULL,
    currency                    TEXT NOT NULL,
    billing_interval            TEXT,
    item_count                  INTEGER NOT NULL,
    mrr_minor                   BIGINT NOT NULL,
    current_period_start        TEXT,
    current_period_end          TEXT,
    salesforce_contract_id      TEXT,
    salesforce_opportunity_id   TEXT,
    contract_start              TEXT,
    contract_end                TEXT,
    contract_term_months        INTEGER,
    source_system               TEXT NOT NULL,
    source_id                   TEXT NOT NULL,
    source_updated_at           TEXT,
    extraction_run_id           TEXT NOT NULL,
    correlation_id              TEXT NOT NULL
);

-- Which payment intents paid which invoices (Stripe invoice.payments), kept by the invoices
-- asset so a payment made on a later day still finds its invoice.
CREATE TABLE IF NOT EXISTS invoice_payments (
    invoice_id              TEXT NOT NULL,
    payment_intent          TEXT NOT NULL,
    amount_paid_minor       BIGINT NOT NULL,
    currency                TEXT NOT NULL,
    status                  TEXT NOT NULL,
    PRIMARY KEY (invoice_id, payment_intent)
);
CREATE INDEX IF NOT EXISTS ix_invoice_payments_intent ON invoice_payments (payment_intent);

CREATE TABLE IF NOT EXISTS payments (
    payment_id              TEXT NOT NULL PRIMARY KEY,   -- the Stripe charge id
    partition_date          TEXT NOT NULL,
    payment_intent          TEXT,
    invoice_id              TEXT,
    stripe_customer_id      TEXT,
    customer_key            TEXT,
    status                  TEXT NOT NULL,
    currency                TEXT NOT NULL,
    amount_minor            BIGINT NOT NULL,
    refunded_minor          BIGINT NOT NULL,
    failure_code            TEXT,
    source_system           TEXT NOT NULL,
    source_id               TEXT NOT NULL,
    source_updated_at       TEXT,
    extraction_run_id       TEXT NOT NULL,
    correlation_id          TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS ix_payments_partition ON payments (partition_date);

CREATE TABLE IF NOT EXISTS credit_notes (
    credit_note_id          TEXT NOT NULL PRIMARY KEY,
    partition_date          TEXT NOT NULL,
    number                  TEXT,
    invoice_id              TEXT NOT NULL,
    stripe_customer_id      TEXT NOT NULL,
    customer_key            TEXT,
    type                    TEXT NOT NULL,
    status                  TEXT NOT NULL,
    reason                  TEXT,
    currency                TEXT NOT NULL,
    subtotal_minor          BIGINT NOT NULL,
    tax_minor               BIGINT NOT NULL,
    total_minor             BIGINT NOT NULL,
    refunded_minor          BIGINT NOT NULL,
    source_system           TEXT NOT NULL,
    source_id               TEXT NOT NULL,
    source_updated_at       TEXT,
    extraction_run_id       TEXT NOT NULL,
    correlation_id          TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS ix_credit_notes_partition ON credit_notes (partition_date);

CREATE TABLE IF NOT EXISTS refunds (
    refund_id               TEXT NOT NULL PRIMARY KEY,
    partition_date          TEXT NOT NULL,
    payment_id              TEXT NOT NULL,
    payment_intent          TEXT,
    invoice_id              TEXT,
    credit_note_id          TEXT,
    status                  TEXT NOT NULL,
    reason                  TEXT,
    currency                TEXT NOT NULL,
    amount_minor            BIGINT NOT NULL,
    source_system           TEXT NOT NULL,
    source_id               TEXT NOT NULL,
    source_updated_at       TEXT,
    extraction_run_id       TEXT NOT NULL,
    correlation_id          TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS ix_refunds_partition ON refunds (partition_date);
