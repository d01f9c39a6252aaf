-- Analyst views. Portable between SQLite and PostgreSQL; every migration replaces them in
-- place (PostgreSQL keeps their grants), so they always match the tables underneath.

-- Open finance exceptions by owner queue and kind, oldest first seen.
CREATE VIEW v_exception_backlog AS
SELECT owner_queue, kind, severity, COUNT(*) AS open_exceptions,
       MIN(first_seen) AS oldest_first_seen, MAX(last_seen) AS last_seen
FROM finance_exceptions
WHERE status = 'open'
GROUP BY owner_queue, kind, severity;

-- Reconciliation drift by day, status and currency (matched rows, and rows held by an
-- exception or awaiting their batch posting window, are not drift).
CREATE VIEW v_reconciliation_drift AS
SELECT partition_date, status, COALESCE(billing_currency, erp_currency) AS currency,
       COUNT(*) AS documents,
       SUM(COALESCE(billing_total_minor, 0)) AS billing_total_minor,
       SUM(COALESCE(erp_total_minor, 0)) AS erp_total_minor
FROM invoice_reconciliation
WHERE status NOT IN ('matched', 'held_by_exception', 'awaiting_window')
GROUP BY partition_date, status, COALESCE(billing_currency, erp_currency);

-- Posting-ledger rows settled by looking them up after their holder died (a SIGKILLed run:
-- its lease expired, or its run had finished without recording them); the detail names the
-- run that held them, run_id the run that settled them.
CREATE VIEW v_posting_lease_settlements AS
SELECT seq, erp, doc_type, external_id, to_state, at AS settled_at, run_id AS settled_by,
       detail
FROM posting_ledger_journal
WHERE from_state = 'in_flight' AND substr(detail, 1, 23) = 'settled by lookup: run '
