-- Usage metering: raw CloudEvents landed from the metering service, and their daily totals.

-- One row per usage event as the metering service sent it. The key is CloudEvents' identity
-- (source, id), so a re-read inside the extraction lookback or a duplicate sent by a producer
-- is stored, and counted, once. event_time is the event's time normalized to UTC
-- (YYYY-MM-DDTHH:MM:SS.ffffffZ, so text order is time order); quantity is the value when it is
-- a non-negative integer and NULL otherwise (the raw value stays in value_text and payload).
CREATE TABLE IF NOT EXISTS usage_events (
    source              TEXT NOT NULL,
    event_id            TEXT NOT NULL,
    subject             TEXT,
    meter               TEXT,
    event_time          TEXT,
    event_date          TEXT,
    value_text          TEXT,
    quantity            BIGINT,
    payload             TEXT NOT NULL,
    ingested_at         TEXT NOT NULL,
    extraction_run_id   TEXT NOT NULL,
    PRIMARY KEY (source, event_id)
);
CREATE INDEX IF NOT EXISTS ix_usage_events_date ON usage_events (event_date, subject, meter);
CREATE INDEX IF NOT EXISTS ix_usage_events_run ON usage_events (extraction_run_id, source, event_id);

-- Which subscription a usage subject bills: a Stripe subscription id names itself; a Stripe
-- customer id names its only subscription. Kept current by usage_daily from stripe_subscriptions.
CREATE TABLE IF NOT EXISTS usage_subjects (
    subject             TEXT NOT NULL PRIMARY KEY,
    subscription_id     TEXT NOT NULL
);

-- Usage per day, subscription and meter, from the events that kept their contract. A day is
-- rebuilt in one transaction (delete the range, insert the aggregate), so a rerun is exact.
CREATE TABLE IF NOT EXISTS usage_daily (
    usage_date          TEXT NOT NULL,
    subscription_id     TEXT NOT NULL,
    meter               TEXT NOT NULL,
    quantity            BIGINT NOT NULL,
    events              INTEGER NOT NULL,
    first_event_at      TEXT NOT NULL,
    last_event_at       TEXT NOT NULL,
    run_id              TEXT NOT NULL,
    PRIMARY KEY (usage_date, subscription_id, meter)
);

-- Each day usage_daily has aggregated, and the newest ingestion time among the events it
-- counted then: an event the metering service ingests later for that day (a producer's
-- backlog, a late batch) is newer, so the next run aggregates that day again.
CREATE TABLE IF NOT EXISTS usage_days (
    usage_date          TEXT NOT NULL PRIMARY KEY,
    ingested_through    TEXT NOT NULL,               -- '' for a day that had no events
    aggregated_at       TEXT NOT NULL,
    run_id              TEXT NOT NULL
);
