"""Validate: the usage-event contract, and usage per day, subscription and meter.

Volumes are large (tens of millions of events a month), so nothing here holds the raw events
in memory: the contract check reads this run's events in keyset-paged chunks, and
``usage_daily`` is one set-based SQL statement per partition range (``sql/usage_daily.sql``).
"""

import datetime as dt
from collections.abc import Iterator
from functools import cache
from typing import Any

import dagster as dg
import pandas as pd
import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from finsync_pipeline.landing import (
    column_schema,
    load_payloads,
    sample,
    sync_exceptions,
    write_quarantine,
)
from finsync_pipeline.ledger import loads
from finsync_pipeline.logic.derive import EXCEPTION_COLUMNS, EXCEPTION_KINDS
from finsync_pipeline.logic.screen import screen
from finsync_pipeline.logic.validation import (
    FAILURE_COLUMNS,
    ValidationOutcome,
    check_contract,
    validate_frame,
)
from finsync_pipeline.partitions import daily_partitions, date_bounds, single_run
from finsync_pipeline.resources.settings import PipelineSettings, future_skew_from_env
from finsync_pipeline.resources.warehouse import SQL_DIR, WarehouseResource, read_frame, upsert_rows
from finsync_pipeline.schemas.usage import UsageDaily, UsageEventRecord

OWNERS = ["team:finance-data"]
SYSTEM = "metering"
CHUNK = 10_000
UNKNOWN_SUBJECT = "unknown_usage_subject"


@cache
def aggregation_sql() -> str:
    """The set-based aggregation statement (bound parameters date_from, date_to, run_id)."""
    lines = (SQL_DIR / "usage_daily.sql").read_text().splitlines()
    return "\n".join(line for line in lines if not line.strip().startswith("--"))


def flatten_usage_events(rows: pd.DataFrame) -> pd.DataFrame:
    """The contract's view of landed usage events (columns of ``UsageEventRecord``)."""
    parsed = [loads(p) for p in rows["payload"]]
    events: list[dict[str, Any]] = [e if isinstance(e, dict) else {} for e in parsed]
    data: list[dict[str, Any]] = [
        e["data"] if isinstance(e.get("data"), dict) else {} for e in events
    ]
    return pd.DataFrame(
        {
            "source_id": [
                f"{s}/{i}" for s, i in zip(rows["source"], rows["event_id"], strict=True)
            ],
            "source": list(rows["source"]),
            "event_id": list(rows["event_id"]),
            "subject": [e.get("subject") for e in events],
            "meter": list(rows["meter"]),
            "event_time": [e.get("time") for e in events],
            "value": pd.Series([d.get("value") for d in data], dtype=object),
        }
    )


def _run_chunks(conn: Connection, run_id: str, size: int = CHUNK) -> Iterator[pd.DataFrame]:
    """The events landed by ``run_id``, ``size`` at a time, in key order (keyset paging)."""
    after: tuple[str, str] | None = None
    while True:
        where = "extraction_run_id = :run_id"
        params: dict[str, Any] = {"run_id": run_id, "size": size}
        if after is not None:
            where += " AND (source > :s OR (source = :s AND event_id > :e))"
            params.update(s=after[0], e=after[1])
        chunk = read_frame(
            conn,
            "SELECT source, event_id, meter, event_date, ingested_at, payload FROM usage_events "
            f"WHERE {where} ORDER BY source, event_id LIMIT :size",
            params,
        )
        if chunk.empty:
            return
        yield chunk
        after = (str(chunk["source"].iloc[-1]), str(chunk["event_id"].iloc[-1]))


def _screened(frame: pd.DataFrame, rows: pd.DataFrame) -> ValidationOutcome:
    """The contract's verdict on a chunk, with what ``screen`` refuses before any contract."""
    ids = list(frame["source_id"])
    _fit, screened = screen(
        ids,
        [loads(p) for p in rows["payload"]],
        system=SYSTEM,
        obj="usage event",
        now=dt.datetime.now(dt.UTC),
        skew_s=future_skew_from_env(),
    )
    outcome = validate_frame(frame, UsageEventRecord, system=SYSTEM, obj="usage event")
    if screened.empty:
        return outcome
    # Screened events also fail their contract (a value past 2**53 - 1 is no quantity); the
    # screen's failure says why, the contract's what it broke.
    found = [f for f in (screened, outcome.failures) if not f.empty]
    return ValidationOutcome(len(frame), pd.concat(found, ignore_index=True))


def check_usage_events(engine: Engine, run_id: str) -> tuple[int, pd.DataFrame]:
    """Validate this run's events chunk by chunk and quarantine the bad ones.

    Returns:
        Rows checked and every failure (small: only bad rows are kept).
    """
    checked = 0
    failures: list[pd.DataFrame] = []
    with engine.connect() as conn:
        for rows in _run_chunks(conn, run_id):
            frame = flatten_usage_events(rows)
            outcome = _screened(frame, rows)
            # An event without a usable time is filed under the day it was ingested.
            days = rows["event_date"].fillna(rows["ingested_at"].str[:10])
            partition_of = dict(zip(frame["source_id"], days, strict=True))
            write_quarantine(
                engine,
                asset="usage_events",
                system=SYSTEM,
                outcome=outcome,
                partition_of=partition_of,
                date_from=str(days.iloc[0]),
                date_to=str(days.iloc[0]),
                run_id=run_id,
                checked_ids=set(frame["source_id"]),
            )
            checked += len(frame)
            failures.append(outcome.failures)
    found = pd.concat(failures, ignore_index=True) if failures else pd.DataFrame()
    return checked, found.reindex(columns=FAILURE_COLUMNS)


@dg.asset_check(
    asset="usage_events",
    name="contract",
    blocking=True,
    description="UsageEventRecord: invalid usage events go to quarantine with a reason.",
)
def usage_events_contract(
    context: dg.AssetCheckExecutionContext,
    warehouse: WarehouseResource,
    settings: PipelineSettings,
) -> dg.AssetCheckResult:
    """The events this run landed, checked in chunks against their contract."""
    checked, failures = check_usage_events(warehouse.get_engine(), context.run.run_id)
    outcome = ValidationOutcome(checked, failures)
    return dg.AssetCheckResult(
        passed=not settings.feed_is_broken(len(outcome.bad_ids), outcome.bad_share),
        severity=dg.AssetCheckSeverity.ERROR,
        metadata={
            "rows checked": checked,
            "rows quarantined": len(outcome.bad_ids),
            "bad share": round(outcome.bad_share, 4),
            "threshold": settings.max_bad_share,
            "minimum bad records": settings.min_bad_records,
            "failures by check": dg.MetadataValue.json(
                failures.groupby("check_name").size().astype(int).to_dict()
            ),
            "sample": sample(failures, ["source_id", "field", "check_name", "reason"]),
        },
    )


def refresh_subjects(conn: Connection) -> int:
    """Refresh usage_subjects from stripe_subscriptions: a subscription id names itself, a
    customer id its only subscription (a customer with several is ambiguous and left out)."""
    subs = load_payloads(conn, "stripe_subscriptions")
    pairs = [
        (str(p.get("id")), str(p.get("customer")))
        for p in subs["payload"]
        if isinstance(p, dict) and p.get("id")
    ]
    per_customer: dict[str, list[str]] = {}
    for sub_id, customer in pairs:
        per_customer.setdefault(customer, []).append(sub_id)
    sub_ids = {sub_id for sub_id, _ in pairs}
    rows = [{"subject": sub_id, "subscription_id": sub_id} for sub_id in sorted(sub_ids)]
    rows += [
        {"subject": customer, "subscription_id": ids[0]}
        for customer, ids in sorted(per_customer.items())
        if len(ids) == 1 and customer not in sub_ids
    ]
    # Upserts, not a rebuild: two partition runs at once must not collide on the key.
    upsert_rows(conn, "usage_subjects", rows, ["subject"])
    ambiguous = sorted(c for c, ids in per_customer.items() if len(ids) > 1)
    if ambiguous:
        conn.execute(
            sa.text("DELETE FROM usage_subjects WHERE subject IN :subjects").bindparams(
                sa.bindparam("subjects", expanding=True)
            ),
            {"subjects": ambiguous},
        )
    return len(rows)


def aggregate_usage(conn: Connection, date_from: str, date_to: str, run_id: str) -> int:
    """Replace usage_daily for [date_from, date_to) by the aggregate of its events (set-based).

    Returns:
        Rows written.
    """
    conn.execute(
        sa.text("DELETE FROM usage_daily WHERE usage_date >= :date_from AND usage_date < :date_to"),
        {"date_from": date_from, "date_to": date_to},
    )
    result = conn.execute(
        sa.text(aggregation_sql()), {"date_from": date_from, "date_to": date_to, "run_id": run_id}
    )
    return int(result.rowcount or 0)


# The most older days one run aggregates again for events ingested after they ran.
LATE_DAYS_PER_RUN = 31


def record_aggregated(conn: Connection, date_from: str, date_to: str, run_id: str) -> None:
    """Record every day of [date_from, date_to) as aggregated through its newest event."""
    newest: dict[str, str] = dict(
        conn.execute(
            sa.text(
                "SELECT event_date, MAX(ingested_at) FROM usage_events "
                "WHERE event_date >= :date_from AND event_date < :date_to GROUP BY event_date"
            ),
            {"date_from": date_from, "date_to": date_to},
        ).all()
    )
    at = pd.Timestamp.now(tz="UTC").isoformat()
    days = pd.date_range(date_from, pd.Timestamp(date_to) - pd.Timedelta(days=1), freq="D")
    rows = [
        {
            "usage_date": day,
            "ingested_through": newest.get(day) or "",
            "aggregated_at": at,
            "run_id": run_id,
        }
        for day in (d.date().isoformat() for d in days)
    ]
    upsert_rows(conn, "usage_days", rows, ["usage_date"])


def late_days(conn: Connection, date_from: str, date_to: str) -> list[str]:
    """Days outside [date_from, date_to) aggregated before, for which the metering service
    has since ingested events (oldest first, at most ``LATE_DAYS_PER_RUN``)."""
    rows = conn.execute(
        sa.text(
            "SELECT e.event_date FROM usage_events e "
            "JOIN usage_days d ON d.usage_date = e.event_date "
            "WHERE e.event_date < :date_from OR e.event_date >= :date_to "
            "GROUP BY e.event_date, d.ingested_through "
            "HAVING MAX(e.ingested_at) > d.ingested_through "
            "ORDER BY e.event_date LIMIT :limit"
        ),
        {"date_from": date_from, "date_to": date_to, "limit": LATE_DAYS_PER_RUN},
    )
    return [str(r[0]) for r in rows]


def unknown_subjects(conn: Connection, date_from: str, date_to: str) -> pd.DataFrame:
    """Finance exceptions for subjects of the range that match no subscription."""
    found = read_frame(
        conn,
        "SELECT e.subject, MIN(e.event_date) AS first_day, COUNT(*) AS events, "
        "MIN(e.source) AS source, MIN(e.event_id) AS sample_id "
        "FROM usage_events e LEFT JOIN usage_subjects s ON s.subject = e.subject "
        "WHERE e.event_date >= :date_from AND e.event_date < :date_to "
        "AND s.subject IS NULL AND e.subject IS NOT NULL "
        "AND NOT EXISTS (SELECT 1 FROM quarantine q WHERE q.asset = 'usage_events' "
        "AND q.source_id = e.source || '/' || e.event_id) "
        "GROUP BY e.subject ORDER BY e.subject",
        {"date_from": date_from, "date_to": date_to},
    )
    severity, owner = EXCEPTION_KINDS[UNKNOWN_SUBJECT]
    rows = [
        {
            "kind": UNKNOWN_SUBJECT,
            "source_system": SYSTEM,
            "source_id": r.subject,
            "severity": severity,
            "owner_queue": owner,
            "partition_date": r.first_day,
            "correlation_id": f"{r.source}/{r.sample_id}",
            "legal_entity": None,
            "detail": f"metering subject {r.subject}: {int(r.events)} usage event(s) from "
            f"{r.first_day} name no Stripe subscription (nor a customer with exactly one); "
            "they are not billed until the subject is fixed or the subscription is extracted",
        }
        for r in found.itertuples(index=False)
    ]
    return pd.DataFrame(rows, columns=EXCEPTION_COLUMNS)


@dg.asset(
    group_name="validate",
    kinds={"sql"},
    owners=OWNERS,
    deps=["usage_events", "stripe_subscriptions"],
    partitions_def=daily_partitions,
    backfill_policy=single_run,
)
def usage_daily(
    context: dg.AssetExecutionContext, warehouse: WarehouseResource
) -> dg.MaterializeResult:
    """Usage per day, subscription and meter, ready to bill: each event counted once, events
    that broke their contract left out (they wait in quarantine), and usage whose subject
    matches no subscription raised as a finance exception for revops instead of dropped. An
    older day for which the metering service ingested events after it ran is aggregated
    again, so late usage is never left out."""
    date_from, date_to = date_bounds(context)
    run_id = context.run.run_id
    with warehouse.get_engine().begin() as conn:
        subjects = refresh_subjects(conn)
        late = late_days(conn, date_from, date_to)
        ranges = [(date_from, date_to)] + [
            (day, (pd.Timestamp(day) + pd.Timedelta(days=1)).date().isoformat()) for day in late
        ]
        found_by_range = []
        synced = {"auto_resolved": 0}
        for lo, hi in ranges:
            aggregate_usage(conn, lo, hi, run_id)
            record_aggregated(conn, lo, hi, run_id)
            found_by_range.append(unknown_subjects(conn, lo, hi))
            done = sync_exceptions(
                conn,
                found_by_range[-1],
                detected_by="usage_daily",
                kinds=[UNKNOWN_SUBJECT],
                date_from=lo,
                date_to=hi,
            )
            synced["auto_resolved"] += done["auto_resolved"]
        found = pd.concat(
            [f for f in found_by_range if len(f)] or found_by_range[:1], ignore_index=True
        )
        totals = read_frame(
            conn,
            "SELECT meter, COUNT(*) AS n, SUM(events) AS events, SUM(quantity) AS quantity "
            "FROM usage_daily WHERE usage_date >= :date_from AND usage_date < :date_to "
            "GROUP BY meter ORDER BY meter",
            {"date_from": date_from, "date_to": date_to},
        )
        preview = read_frame(
            conn,
            "SELECT * FROM usage_daily WHERE usage_date >= :date_from AND usage_date < :date_to "
            "ORDER BY usage_date, subscription_id, meter LIMIT 1000",
            {"date_from": date_from, "date_to": date_to},
        )
    # The SQL fixes the shape; a sample of its rows is held to the contract all the same.
    check_contract(preview.astype({"quantity": "Int64", "events": "Int64"}), UsageDaily)
    rows = int(totals["n"].sum()) if len(totals) else 0
    return dg.MaterializeResult(
        metadata={
            "dagster/row_count": rows,
            "dagster/column_schema": column_schema(UsageDaily),
            "events aggregated": int(totals["events"].sum()) if len(totals) else 0,
            "quantity by meter": dg.MetadataValue.json(
                {str(r.meter): int(r.quantity) for r in totals.itertuples(index=False)}
            ),
            "subjects known": subjects,
            "unknown subjects (exceptions)": len(found),
            "exceptions auto-resolved": synced["auto_resolved"],
            "exception sample": sample(found, ["kind", "source_id", "detail"]),
            "window": f"[{date_from}, {date_to})",
            "older days aggregated again (late events)": dg.MetadataValue.json(late),
        }
    )
