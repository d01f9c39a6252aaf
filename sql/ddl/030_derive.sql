-- Derive stage: what the ERP should hold, and the problems that stop it.

CREATE TABLE IF NOT EXISTS erp_customer_upserts (
    erp                     TEXT NOT NULL,
    external_id             TEXT NOT NULL,
    customer_key            TEXT NOT NULL,
    parent_external_id      TEXT,
    hierarchy_depth         INTEGER NOT NULL,
    subsidiary_id           TEXT NOT NULL,
    currency_id             TEXT NOT NULL,
    payload                 TEXT NOT NULL,
    correlation_id          TEXT NOT NULL,
    PRIMARY KEY (erp, external_id)
);

CREATE TABLE IF NOT EXISTS invoice_ready_transactions (
    erp                     TEXT NOT NULL,
    doc_type                TEXT NOT NULL DEFAULT 'invoice',  -- credit_memo when net negative
    external_id             TEXT NOT NULL,
    invoice_id              TEXT NOT NULL,
    partition_date          TEXT NOT NULL,
    customer_external_id    TEXT NOT NULL,
    legal_entity            TEXT NOT NULL,
    subsidiary_id           TEXT NOT NULL,
    currency                TEXT NOT NULL,
    total_minor             BIGINT NOT NULL,
    tax_minor               BIGINT NOT NULL,
    discount_minor          BIGINT NOT NULL DEFAULT 0,
    line_count              INTEGER NOT NULL,
    tran_date               TEXT NOT NULL,
    payload                 TEXT NOT NULL,
    correlation_id          TEXT NOT NULL,
    PRIMARY KEY (erp, external_id)
);
CREATE INDEX IF NOT EXISTS ix_irt_partition ON invoice_ready_transactions (partition_date);

-- One row per problem. The key is (kind, source_system, source_id): a problem seen again
-- updates last_seen; a problem no longer seen in its scope is resolved automatically.
CREATE TABLE IF NOT EXISTS finance_exceptions (
    kind                TEXT NOT NULL,
    source_system       TEXT NOT NULL,
    source_id           TEXT NOT NULL,
    severity            TEXT NOT NULL,
    owner_queue         TEXT NOT NULL,
    detected_by         TEXT NOT NULL,
    partition_date      TEXT,
    correlation_id      TEXT,
    legal_entity        TEXT,
    detail              TEXT NOT NULL,
    status              TEXT NOT NULL CHECK (status IN ('open', 'resolved')),
    resolution          TEXT,
    first_seen          TEXT NOT NULL,
    last_seen           TEXT NOT NULL,
    resolved_at         TEXT,
    PRIMARY KEY (kind, source_system, source_id)
);
CREATE INDEX IF NOT EXISTS ix_finance_exceptions_status ON finance_exceptions (status, owner_queue);

-- Every manual action on the exceptions queue: who, when, why. Append-only.
CREATE TABLE IF NOT EXISTS exception_actions (
    action_id           TEXT NOT NULL PRIMARY KEY,
    at                  TEXT NOT NULL,
    actor               TEXT NOT NULL,
    action              TEXT NOT NULL CHECK (action IN ('resolve', 'retry', 'reopen')),
    kind                TEXT NOT NULL,
    source_system       TEXT NOT NULL,
    source_id           TEXT NOT NULL,
    reason              TEXT NOT NULL,
    outcome             TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS ix_exception_actions_record ON exception_actions (source_id);

-- Credit memos and customer payments ready for the ERP (invoices have their own table).
CREATE TABLE IF NOT EXISTS erp_document_requests (
    erp                     TEXT NOT NULL,
    doc_type                TEXT NOT NULL,
    external_id             TEXT NOT NULL,
    source_system           TEXT NOT NULL,
    source_id               TEXT NOT NULL,
    partition_date          TEXT NOT NULL,
    currency                TEXT NOT NULL,
    total_minor             BIGINT NOT NULL,
    payload                 TEXT NOT NULL,
    correlation_id          TEXT NOT NULL,
    run_id                  TEXT NOT NULL,
    PRIMARY KEY (erp, doc_type, external_id)
);
CREATE INDEX IF NOT EXISTS ix_erp_document_requests_partition ON erp_document_requests (partition_date);

-- The version (the landing's extraction_run_id) of each canonical row that a change-driven
-- derive asset last derived from. A row with another version, or none here, is derived on the
-- next run, so a run that failed between validate and derive leaves nothing behind.
CREATE TABLE IF NOT EXISTS derived_versions (
    asset                   TEXT NOT NULL,
    source_id               TEXT NOT NULL,
    extraction_run_id       TEXT NOT NULL,
    derived_at              TEXT NOT NULL,
    PRIMARY KEY (asset, source_id)
);
