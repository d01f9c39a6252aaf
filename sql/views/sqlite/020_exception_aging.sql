-- Open finance exceptions by owner queue and age bucket (SQLite date arithmetic).
CREATE VIEW v_exception_aging AS
SELECT owner_queue,
       CASE
           WHEN julianday('now') - julianday(first_seen) < 2 THEN '0-1 days'
           WHEN julianday('now') - julianday(first_seen) < 8 THEN '2-7 days'
           WHEN julianday('now') - julianday(first_seen) < 31 THEN '8-30 days'
           ELSE 'over 30 days'
       END AS age_bucket,
       COUNT(*) AS open_exceptions,
       MIN(first_seen) AS oldest_first_seen
FROM finance_exceptions
WHERE status = 'open'
GROUP BY 1, 2;
