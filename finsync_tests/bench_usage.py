"""Benchmark of the usage_daily aggregation: prints figures, asserts nothing about time.

    .venv/bin/python -m finsync_tests.bench_usage [--events 1000000] [--url sqlite:///...]

Generates ``--events`` usage events straight into the warehouse's ``usage_events`` table (in
chunks, never all in memory), quarantines a few, then times the set-based SQL aggregation that
``usage_daily`` runs (``sql/usage_daily.sql``) over the whole month in one transaction. Prints
events per second and the peak memory of the process (Python heap by tracemalloc, and the
resident set size high-water mark).
"""

import argparse
import datetime as dt
import random
import resource
import sys
import tempfile
import time
import tracemalloc
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dagster as dg
import sqlalchemy as sa

from finsync_pipeline.resources.warehouse import create_engine

with warnings.catch_warnings():
    warnings.simplefilter("ignore", dg.BetaWarning)
    from finsync_pipeline.defs.validate.usage import aggregate_usage

FIRST_DAY = dt.date(2026, 9, 1)
DAYS = 30
SUBSCRIPTIONS = 2000
CHUNK = 50_000
SOURCE = "/meter/api-gateway"


def _rows(n: int, seed: int) -> Iterator[dict[str, Any]]:
    rng = random.Random(seed)
    meters = ("api_calls", "storage_gb_hours")
    for i in range(n):
        day = FIRST_DAY + dt.timedelta(days=i % DAYS)
        when = f"{day.isoformat()}T{rng.randrange(24):02d}:{rng.randrange(60):02d}:00.000000Z"
        value = rng.randint(1, 5000)
        meter = meters[i % 2]
        yield {
            "source": SOURCE,
            "event_id": f"evt_{i:010d}",
            "subject": f"sub_{rng.randrange(SUBSCRIPTIONS):06d}",
            "meter": meter,
            "event_time": when,
            "event_date": day.isoformat(),
            "value_text": str(value),
            "quantity": value,
            "payload": '{"data":{"value":' + str(value) + '},"id":"evt_' + f"{i:010d}" + '"}',
            "ingested_at": when,
            "extraction_run_id": "bench",
        }


def _load(engine: sa.Engine, n: int) -> float:
    insert = sa.text(
        "INSERT INTO usage_events (source, event_id, subject, meter, event_time, event_date, "
        "value_text, quantity, payload, ingested_at, extraction_run_id) VALUES (:source, "
        ":event_id, :subject, :meter, :event_time, :event_date, :value_text, :quantity, "
        ":payload, :ingested_at, :extraction_run_id)"
    )
    started = time.perf_counter()
    batch: list[dict[str, Any]] = []
    for row in _rows(n, seed=1):
        batch.append(row)
        if len(batch) == CHUNK:
            with engine.begin() as conn:
                conn.execute(insert, batch)
            batch = []
    with engine.begin() as conn:
        if batch:
            conn.execute(insert, batch)
        conn.execute(
            sa.text("INSERT INTO usage_subjects (subject, subscription_id) VALUES (:s, :s)"),
            [{"s": f"sub_{k:06d}"} for k in range(SUBSCRIPTIONS)],
        )
        conn.execute(
            sa.text(
                "INSERT INTO quarantine (asset, source_system, source_id, partition_date, field, "
                "check_name, reason, run_id, quarantined_at) VALUES ('usage_events', 'metering', "
                ":id, '2026-09-01', 'value', 'non_negative_integer', 'bench', 'bench', 'now')"
            ),
            [{"id": f"{SOURCE}/evt_{k:010d}"} for k in range(0, n, max(1, n // 100))],
        )
    return time.perf_counter() - started


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--url", help="warehouse URL (default: a SQLite file in a temp folder)")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        url = args.url or f"sqlite:///{Path(tmp) / 'bench.db'}"
        engine = create_engine(url)
        with engine.begin() as conn:
            for table in ("usage_daily", "usage_events", "usage_subjects"):
                conn.execute(sa.text(f"DELETE FROM {table}"))
            conn.execute(sa.text("DELETE FROM quarantine WHERE asset = 'usage_events'"))
        load_s = _load(engine, args.events)
        backend = engine.url.get_backend_name()
        print(f"loaded {args.events:,} events into usage_events in {load_s:.1f}s ({backend})")
        last = FIRST_DAY + dt.timedelta(days=DAYS)
        tracemalloc.start()
        started = time.perf_counter()
        with engine.begin() as conn:
            rows = aggregate_usage(conn, FIRST_DAY.isoformat(), last.isoformat(), "bench")
        elapsed = time.perf_counter() - started
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        with engine.connect() as conn:
            summed = conn.execute(sa.text("SELECT SUM(events) FROM usage_daily")).scalar_one()
        rss_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        print(f"aggregated {args.events:,} events into {rows:,} usage_daily rows in {elapsed:.2f}s")
        print(f"  events counted (quarantined left out): {int(summed or 0):,}")
        print(f"  throughput: {args.events / elapsed:,.0f} events/s")
        print(f"  peak Python heap during aggregation: {peak / 1e6:.1f} MB")
        print(f"  peak resident set size of the process: {rss_kb / 1024:.0f} MB")
        engine.dispose()
    return 0


if __name__ == "__main__":
    sys.exit(main())
