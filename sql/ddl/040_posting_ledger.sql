-- The posting ledger: one row per (ERP, document type, external id). The external id is
-- deterministic from the source document, so a document can only ever be posted once.
-- States: pending -> in_flight -> posted | rejected | dead; in_flight -> pending (transient
-- failure, retry later). The SQLite warehouse runs this table with synchronous=FULL.
CREATE TABLE IF NOT EXISTS posting_ledger (
    erp                 TEXT NOT NULL,
    doc_type            TEXT NOT NULL,
    external_id         TEXT NOT NULL,
    source_system       TEXT NOT NULL,
    source_id           TEXT NOT NULL,
    correlation_id      TEXT NOT NULL,
    partition_date      TEXT,
    depth               INTEGER NOT NULL DEFAULT 0,
    payload             TEXT NOT NULL,
    payload_hash        TEXT NOT NULL,
    state               TEXT NOT NULL
        CHECK (state IN ('pending', 'in_flight', 'posted', 'rejected', 'dead')),
    attempts            INTEGER NOT NULL DEFAULT 0,
    last_error          TEXT,
    erp_internal_id     TEXT,
    posted_hash         TEXT,
    claimed_by          TEXT,
    claimed_at          TEXT,
    -- Until when the claim is its holder's; the holder renews it while it works, and a row
    -- whose lease expired is settled by the next run by looking it up in the ERP.
    lease_until         TEXT,
    next_attempt_at     TEXT,
    -- doc_type:external_id of the document this one waits for (a parent, an invoice);
    -- posting that document makes this one due at once.
    waiting_for         TEXT,
    posted_at           TEXT,
    created_at          TEXT NOT NULL,
    updated_at          TEXT NOT NULL,
    PRIMARY KEY (erp, doc_type, external_id)
);
CREATE INDEX IF NOT EXISTS ix_posting_ledger_state ON posting_ledger (erp, state, doc_type, depth);

-- Append-only journal of every ledger transition, chained by hash so tampering is detectable:
-- hash = sha256(prev_hash || the row's fields).
CREATE TABLE IF NOT EXISTS posting_ledger_journal (
    seq                 BIGINT NOT NULL PRIMARY KEY,
    erp                 TEXT NOT NULL,
    doc_type            TEXT NOT NULL,
    external_id         TEXT NOT NULL,
    from_state          TEXT,
    to_state            TEXT NOT NULL,
    at                  TEXT NOT NULL,
    run_id              TEXT,
    detail              TEXT,
    -- The document as this transition left it: its payload's hash and its ERP id.
    payload_hash        TEXT,
    erp_internal_id     TEXT,
    -- 1: SHA-256 of the transition's fields; 2: HMAC-SHA256 under FINSYNC_LEDGER_KEY (named
    -- by key_id, 'unkeyed' without one) of those fields, the payload hash and the ERP id.
    seal_version        INTEGER NOT NULL DEFAULT 1,
    key_id              TEXT,
    prev_hash           TEXT NOT NULL,
    hash                TEXT NOT NULL
);

-- The journal's head (seq and seal) recorded by every posting run: a tail cut off the journal,
-- or a chain rewritten from an earlier row, no longer holds these. Append-only, like the
-- journal; the posting runs' Dagster metadata holds the same heads outside the warehouse.
CREATE TABLE IF NOT EXISTS posting_ledger_checkpoints (
    seq                 BIGINT NOT NULL PRIMARY KEY,
    hash                TEXT NOT NULL,
    at                  TEXT NOT NULL,
    run_id              TEXT
);
