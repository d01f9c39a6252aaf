-- What the posting ledger still holds back, by ERP, document type and state; in flight, how
-- many are held past their lease (their holder stopped renewing it: the next posting run
-- settles them by lookup), since when, and by which runs.
CREATE VIEW v_posting_backlog AS
SELECT erp, doc_type, state, COUNT(*) AS documents, MIN(updated_at) AS oldest_update,
       MAX(attempts) AS max_attempts,
       SUM(CASE WHEN state = 'in_flight' AND (lease_until IS NULL
                OR lease_until < to_char(now() AT TIME ZONE 'UTC',
                'YYYY-MM-DD"T"HH24:MI:SS.US"+00:00"'))
           THEN 1 ELSE 0 END) AS held_past_lease,
       MIN(claimed_at) AS oldest_claim,
       STRING_AGG(DISTINCT claimed_by, ',') AS held_by
FROM posting_ledger
WHERE state <> 'posted'
GROUP BY erp, doc_type, state;
