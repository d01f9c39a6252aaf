-- Open finance exceptions by owner queue and age bucket (PostgreSQL date arithmetic).
CREATE VIEW v_exception_aging AS
SELECT owner_queue,
       CASE
           WHEN now() - first_seen::timestamptz < interval '2 days' THEN '0-1 days'
           WHEN now() - first_seen::timestamptz < interval '8 days' THEN '2-7 days'
           WHEN now() - first_seen::timestamptz < interval '31 days' THEN '8-30 days'
           ELSE 'over 30 days'
       END AS age_bucket,
       COUNT(*) AS open_exceptions,
       MIN(first_seen) AS oldest_first_seen
FROM finance_exceptions
WHERE status = 'open'
GROUP BY 1, 2;
