-- usage_daily for the day range [:date_from, :date_to): the events of the range that kept
-- their contract (not in quarantine, an integer quantity) and whose subject maps to a
-- subscription, summed per day, subscription and meter. Run after deleting the range, in the
-- same transaction.
INSERT INTO usage_daily (
    usage_date, subscription_id, meter, quantity, events, first_event_at, last_event_at, run_id
)
SELECT e.event_date, s.subscription_id, e.meter, SUM(e.quantity), COUNT(*),
       MIN(e.event_time), MAX(e.event_time), :run_id
FROM usage_events e
JOIN usage_subjects s ON s.subject = e.subject
WHERE e.event_date >= :date_from
  AND e.event_date < :date_to
  AND e.quantity IS NOT NULL
  AND NOT EXISTS (
      SELECT 1 FROM quarantine q
      WHERE q.asset = 'usage_events' AND q.source_id = e.source || '/' || e.event_id
  )
GROUP BY e.event_date, s.subscription_id, e.meter
