"""Automation: the jobs, the posting sensor and the daily schedule.

Flows:
    ingest_job       extract -> validate -> derive (queues documents on the posting ledger)
    near_real_time_job  the same for the days of Stripe objects that just changed; launched by
                     ``stripe_events_sensor`` (``stripe_events``), and for today when a
                     Salesforce Account changed (``salesforce_changes_sensor``)
    erp_posting_job  post -> read back -> reconcile; launched by ``erp_posting_sensor`` as soon
                     as the ledger holds due documents of a near-real-time flow (and for the
                     days later money paid after they were read back), and by one
                     ``erp_posting_window_*`` schedule per batch window (``posting_flows``)
    daily_sync_job   everything, for the previous day; ``daily_sync_schedule`` runs it as a
                     deployment would (and runs again a recent day whose run failed), and
                     backfills run it over any range in one run
"""

import datetime as dt
import json
import os

import dagster as dg
import sqlalchemy as sa

from finsync_pipeline.defs.automation.salesforce_changes import salesforce_changes_sensor
from finsync_pipeline.defs.automation.stripe_events import interval_from_env, stripe_events_sensor
from finsync_pipeline.errors import ConfigurationError
from finsync_pipeline.ledger import loads, now_iso
from finsync_pipeline.logic.derive import ERP, balance_application_external_id
from finsync_pipeline.logic.reconcile import BALANCE_DOCUMENTS_SQL
from finsync_pipeline.partitions import (
    HISTORY_START,
    RANGE_END_TAG,
    RANGE_START_TAG,
    daily_partitions,
)
from finsync_pipeline.po_source import po_source
from finsync_pipeline.posting_flows import FLOWS_TAG, batch_windows, realtime_flows, valid_cron
from finsync_pipeline.resources.warehouse import WarehouseResource

ERP_TAG = "finsync/erp"

INGEST_SELECTION = dg.AssetSelection.groups(
    "extract", "validate", "derive"
) - dg.AssetSelection.assets("erp_invoices", "erp_payments")

ingest_job = dg.define_asset_job(
    "ingest_job",
    selection=INGEST_SELECTION,
    description="Extract, validate and derive a day range; queues documents for posting.",
)

near_real_time_job = dg.define_asset_job(
    "near_real_time_job",
    selection=INGEST_SELECTION,
    description="Extract, validate and derive the one day whose Stripe objects just changed; "
    "launched by stripe_events_sensor, it queues their documents for the posting sensor.",
)

erp_posting_job = dg.define_asset_job(
    "erp_posting_job",
    selection=dg.AssetSelection.assets(
        "erp_postings",
        "erp_invoices",
        "invoice_reconciliation",
        "erp_payments",
        "payment_reconciliation",
        "renewal_reconciliation",
        "crm_status_writeback",
    ),
    tags={ERP_TAG: ERP},
    description="Post due ledger rows to NetSuite, read NetSuite back, reconcile, and write "
    "the billing status back to Salesforce.",
)

daily_sync_job = dg.define_asset_job(
    "daily_sync_job",
    selection=dg.AssetSelection.all(),
    tags={ERP_TAG: ERP},
    description="The whole pipeline, extract to reconcile, for a day range.",
)

# The extracts of a day's money. A day run again for a late change to its invoices, or for an
# invoice the money of a later day paid, leaves them out: that day's own money belongs to that
# day's own run, and pulling it in would pull in the invoices it paid, and so on back to the
# start of the history.
MONEY_EXTRACTS = [
    "stripe_charges",
    "stripe_credit_notes",
    "stripe_refunds",
    "stripe_payments",
    "stripe_invoice_payments",
]

catch_up_job = dg.define_asset_job(
    "catch_up_job",
    selection=dg.AssetSelection.all() - dg.AssetSelection.assets(*MONEY_EXTRACTS),
    tags={ERP_TAG: ERP},
    description="A day run again for its invoices (late changes, or invoices later money "
    "paid): everything but the day's own money extracts; launched by late_changes_sensor.",
)

# How many days before yesterday the nightly tick looks back for a day whose run failed.
CATCH_UP_DAYS = 7
RETRY_OF_TAG = "finsync/retry_of"


def failed_days(instance: dg.DagsterInstance, days: list[str]) -> dict[str, str]:
    """Each of ``days`` whose latest daily run failed or was canceled -> that run's id."""
    failed = {}
    for day in days:
        records = instance.get_run_records(
            filters=dg.RunsFilter(job_name=daily_sync_job.name, tags={"dagster/partition": day}),
            limit=1,
        )
        if records and records[0].dagster_run.status in (
            dg.DagsterRunStatus.FAILURE,
            dg.DagsterRunStatus.CANCELED,
        ):
            failed[day] = records[0].dagster_run.run_id
    return failed


# When the nightly run starts (UTC), and the first day a deployment owns: both read from the
# environment when the definitions load (FINSYNC_DAILY_SYNC_CRON) or at each tick
# (FINSYNC_DAILY_SYNC_FROM).
DAILY_SYNC_CRON_ENV = "FINSYNC_DAILY_SYNC_CRON"
DAILY_SYNC_FROM_ENV = "FINSYNC_DAILY_SYNC_FROM"
DEFAULT_DAILY_SYNC_CRON = "0 2 * * *"
DAILY_SYNC_SCHEDULE = "daily_sync_job_schedule"


def daily_sync_cron() -> str:
    """The nightly run's UTC cron: ``FINSYNC_DAILY_SYNC_CRON``, or 02:00 every day."""
    cron = os.environ.get(DAILY_SYNC_CRON_ENV, "").strip() or DEFAULT_DAILY_SYNC_CRON
    if not valid_cron(cron):
        raise ConfigurationError(
            f"{DAILY_SYNC_CRON_ENV} is not a cron expression: {cron!r}; set it to five fields, "
            f"e.g. {DEFAULT_DAILY_SYNC_CRON!r}"
        )
    return cron


def daily_sync_from() -> dt.date | None:
    """The first day the deployment owns (``FINSYNC_DAILY_SYNC_FROM``), or None."""
    text = os.environ.get(DAILY_SYNC_FROM_ENV, "").strip()
    if not text:
        return None
    try:
        return dt.date.fromisoformat(text)
    except ValueError as e:
        raise ConfigurationError(
            f"{DAILY_SYNC_FROM_ENV} is not a date: {text!r}; set it to a UTC day, e.g. 2026-11-01"
        ) from e


def never_run_days(instance: dg.DagsterInstance, days: list[str]) -> list[str]:
    """Each of ``days`` that no daily run was ever launched for, oldest first."""
    return [
        day
        for day in days
        if not instance.get_run_records(
            filters=dg.RunsFilter(job_name=daily_sync_job.name, tags={"dagster/partition": day}),
            limit=1,
        )
    ]


def _catch_up_requests(
    context: dg.ScheduleEvaluationContext, earlier: list[str]
) -> list[dg.RunRequest]:
    """A run for each earlier day whose latest run failed, and for each day since the
    deployment's first day (``FINSYNC_DAILY_SYNC_FROM``) that never ran."""
    requests = [
        dg.RunRequest(
            run_key=f"{day}:after:{run_id}", partition_key=day, tags={RETRY_OF_TAG: run_id}
        )
        for day, run_id in failed_days(context.instance, earlier).items()
    ]
    first = daily_sync_from()
    if first is not None:
        owned = [day for day in earlier if day >= first.isoformat()]
        requests += [
            dg.RunRequest(run_key=day, partition_key=day)
            for day in never_run_days(context.instance, owned)
        ]
    return sorted(requests, key=lambda r: str(r.partition_key))


def daily_sync_schedule(cron: str) -> dg.ScheduleDefinition:
    """The nightly run at each tick of ``cron`` (UTC)."""

    @dg.schedule(
        name=DAILY_SYNC_SCHEDULE,
        job=daily_sync_job,
        cron_schedule=cron,
        execution_timezone="UTC",
        # On wherever a daemon runs (`finsync deploy`, `finsync ui`), as the sensors are.
        default_status=dg.DefaultScheduleStatus.RUNNING,
        description=f"At {cron} (UTC), the previous UTC day from extract to reconcile, and "
        f"again any of the {CATCH_UP_DAYS} days before it whose last run failed (or, from "
        f"{DAILY_SYNC_FROM_ENV} on, that never ran).",
    )
    def _nightly(context: dg.ScheduleEvaluationContext) -> list[dg.RunRequest]:
        """Yesterday's run, and a new run for each recent day whose latest run failed or was
        canceled: the next night finishes what a failed night left, without anyone re-running
        a day by hand. A day that keeps failing is tried each night for ``CATCH_UP_DAYS``
        nights. A deployment that starts on a later day than the first it owns
        (``FINSYNC_DAILY_SYNC_FROM``) runs the days it missed the same way."""
        today = (context.scheduled_execution_time or dt.datetime.now(dt.UTC)).astimezone(dt.UTC)
        yesterday = today.date() - dt.timedelta(days=1)
        earliest = dt.date.fromisoformat(HISTORY_START)
        earlier = [
            d.isoformat()
            for d in (yesterday - dt.timedelta(days=n) for n in range(CATCH_UP_DAYS, 0, -1))
            if d >= earliest
        ]
        requests = [
            *_catch_up_requests(context, earlier),
            dg.RunRequest(run_key=yesterday.isoformat(), partition_key=yesterday.isoformat()),
        ]
        return [r for r in requests if not _launched(context.instance, str(r.run_key))]

    return _nightly


def _launched(instance: dg.DagsterInstance, run_key: str) -> bool:
    """Whether this schedule already launched a run with ``run_key``.

    Dagster dedupes a schedule's run keys within one tick only: under a cron more frequent
    than daily (``FINSYNC_DAILY_SYNC_CRON``), every tick would run yesterday once more.
    """
    return bool(
        instance.get_run_records(
            filters=dg.RunsFilter(
                job_name=daily_sync_job.name,
                tags={"dagster/schedule_name": DAILY_SYNC_SCHEDULE, "dagster/run_key": run_key},
            ),
            limit=1,
        )
    )


def due_posting_window(conn: sa.Connection, flows: list[str]) -> dict[str, object] | None:
    """What the ledger holds due for posting in ``flows``: the date range and a fingerprint."""
    row = conn.execute(
        sa.text(
            "SELECT COUNT(*) AS n, MIN(partition_date) AS lo, MAX(partition_date) AS hi, "
            "MAX(updated_at) AS touched FROM posting_ledger WHERE erp = :erp AND "
            "state = 'pending' AND (next_attempt_at IS NULL OR next_attempt_at <= :now) "
            "AND doc_type IN :flows"
        ).bindparams(sa.bindparam("flows", expanding=True)),
        {"erp": ERP, "now": now_iso(), "flows": flows},
    ).one()
    if not row.n:
        return None
    return {"count": int(row.n), "lo": row.lo, "hi": row.hi, "touched": row.touched}


# Days a posting sensor tick asks to be read back again at most, oldest first.
READ_BACK_DAYS_PER_TICK = 7


def days_read_back_before_money(conn: sa.Connection, limit: int) -> list[dict[str, object]]:
    """The days whose NetSuite invoices and credit memos were last read back before money
    applied to one of them was posted: their reconciliation still shows the balance from
    before that money.

    A payment or credit memo belongs to its own day, and the run that posts it reads back and
    reconciles that day only. When it pays an invoice of an earlier day (net 30, or a charge
    just after midnight), or a later invoice draws on the credit memo of an earlier
    net-negative invoice (``BALANCE_<invoice>``), that earlier day's ERP balances are stale
    until it is read back again; a backfill of both days reads them back after everything
    posted. Every read-back of a day replaces its rows, so ``extracted_at`` is when the day
    was last read.
    """
    read_at = {
        str(r.day): str(r.read_at)
        for r in conn.execute(
            sa.text(
                "SELECT partition_date AS day, MAX(extracted_at) AS read_at FROM erp_invoices "
                "GROUP BY partition_date"
            )
        )
    }
    # (day, document whose balance moved, when the money posted)
    moved: list[tuple[str, str, str]] = [
        (str(r.day), str(r.invoice_id), str(r.posted_at))
        for r in conn.execute(
            sa.text(
                "SELECT i.partition_date AS day, i.invoice_id, l.posted_at FROM posting_ledger l "
                f"JOIN ({BALANCE_DOCUMENTS_SQL}) d ON d.doc_id = l.source_id "
                "JOIN invoices i ON i.invoice_id = d.invoice_id "
                "WHERE l.erp = :erp AND l.state = 'posted' "
                "AND l.doc_type IN ('customer_payment', 'credit_memo')"
            ),
            {"erp": ERP},
        )
    ]
    # A credit balance applied to a later invoice draws on the credit memos it references;
    # one such payment per invoice paid from a balance, so reading their payloads is cheap.
    drawn: list[tuple[str, str]] = []
    for r in conn.execute(
        sa.text(
            "SELECT payload, posted_at FROM posting_ledger WHERE erp = :erp "
            "AND state = 'posted' AND doc_type = 'customer_payment' AND external_id LIKE :prefix"
        ),
        {"erp": ERP, "prefix": balance_application_external_id("") + "%"},
    ):
        drawn += [
            (ext, str(r.posted_at))
            for kind, ext in _refs(loads(r.payload))
            if kind == "credit_memo"
        ]
    if drawn:
        day_of = {
            str(r.external_id): str(r.partition_date)
            for r in conn.execute(
                sa.text(
                    "SELECT external_id, partition_date FROM posting_ledger WHERE erp = :erp "
                    "AND doc_type = 'credit_memo' AND external_id IN :ids"
                ).bindparams(sa.bindparam("ids", expanding=True)),
                {"erp": ERP, "ids": sorted({ext for ext, _ in drawn})},
            )
            if r.partition_date is not None
        }
        moved += [(day_of[ext], ext, at) for ext, at in drawn if ext in day_of]
    docs: dict[str, set[str]] = {}
    touched: dict[str, str] = {}
    for day, doc, posted_at in moved:
        if day < HISTORY_START or day not in read_at or posted_at <= read_at[day]:
            continue
        docs.setdefault(day, set()).add(doc)
        touched[day] = max(touched.get(day, posted_at), posted_at)
    return [
        {"day": day, "n": len(docs[day]), "touched": touched[day]} for day in sorted(docs)[:limit]
    ]


def _refs(payload: object) -> list[tuple[str, str]]:
    """Every (doc_type, external_id) a derived document references (``derive.ref``)."""
    if isinstance(payload, dict):
        ref = payload.get("$ref")
        if isinstance(ref, list) and len(ref) == 2:
            return [(str(ref[0]), str(ref[1]))]
        return [found for value in payload.values() for found in _refs(value)]
    if isinstance(payload, list):
        return [found for value in payload for found in _refs(value)]
    return []


def _posting_request(due: dict[str, object], flows: list[str], run_key: str) -> dg.RunRequest:
    last_day = daily_partitions.get_last_partition_key()
    return dg.RunRequest(
        run_key=run_key,
        tags={
            RANGE_START_TAG: str(due["lo"] or last_day),
            RANGE_END_TAG: str(due["hi"] or last_day),
            ERP_TAG: ERP,
            FLOWS_TAG: ",".join(flows),
        },
    )


def _erp_posting_tick(
    context: dg.SensorEvaluationContext, warehouse: WarehouseResource
) -> dg.SensorResult:
    flows = realtime_flows(batch_windows())
    with warehouse.get_engine().connect() as conn:
        due = due_posting_window(conn, flows) if flows else None
        stale = days_read_back_before_money(conn, READ_BACK_DAYS_PER_TICK)
    requests = []
    if due is not None:
        # The run key fingerprints the due set: the same backlog never launches twice, a
        # changed backlog (new rows, a retry coming due) launches once more.
        requests.append(
            _posting_request(
                due, flows, f"{ERP}:{due['lo']}:{due['hi']}:{due['count']}:{due['touched']}"
            )
        )
    if stale:
        # The days money of a later day moved: read back and reconciled again, once per
        # posting that moved them.
        lo, hi = stale[0]["day"], stale[-1]["day"]
        touched = max(str(d["touched"]) for d in stale)
        requests.append(
            _posting_request(
                {"lo": lo, "hi": hi},
                flows,
                f"{ERP}:read_back:{lo}:{hi}:{sum(int(str(d['n'])) for d in stale)}:{touched}",
            )
        )
    if not requests:
        return dg.SensorResult(
            skip_reason="no documents are due for posting"
            if flows
            else "every posting flow waits for a batch window"
        )
    return dg.SensorResult(
        run_requests=requests, cursor=json.dumps({"last_run_key": requests[-1].run_key})
    )


def posting_sensor(interval_s: int) -> dg.SensorDefinition:
    """The posting sensor, ticking every ``interval_s`` seconds."""
    return dg.sensor(
        name="erp_posting_sensor",
        job=erp_posting_job,
        minimum_interval_seconds=interval_s,
        default_status=dg.DefaultSensorStatus.RUNNING,
        description="Launches a posting run whenever the ledger holds due documents of a "
        "near-real-time flow, and reads back and reconciles again the days whose invoices "
        "money of a later day paid or credited since they were last read back.",
    )(_erp_posting_tick)


erp_posting_sensor = posting_sensor(60)


# Days the late-changes sensor asks runs for at one tick, oldest first.
LATE_DAYS_PER_TICK = 7
LATE_CHANGES_TAG = "finsync/late_changes"


def days_behind(conn: sa.Connection, limit: int) -> list[dict[str, object]]:
    """The days whose landed Stripe invoices the canonical invoices do not carry yet.

    The events stream writes a late change (a payment, a void, a finalization days later)
    back into the day the invoice was created, under the run that read it; the canonical row
    keeps the run that validated its day. A day with such a difference has changes nothing
    downstream has seen. Quarantined invoices wait in quarantine instead, and a deleted draft
    is gone.
    """
    rows = conn.execute(
        sa.text(
            "SELECT l.partition_date AS day, COUNT(*) AS n, MAX(l.extracted_at) AS touched "
            "FROM stripe_invoices l LEFT JOIN invoices c ON c.invoice_id = l.source_id "
            "WHERE l.partition_date >= :start "
            "AND (c.invoice_id IS NULL OR c.extraction_run_id <> l.extraction_run_id) "
            "AND NOT EXISTS (SELECT 1 FROM quarantine q WHERE q.asset = 'stripe_invoices' "
            "AND q.source_id = l.source_id) "
            # A deleted draft is landed marked deleted (canonical JSON) and is never carried.
            "AND l.payload NOT LIKE :deleted "
            "GROUP BY l.partition_date ORDER BY l.partition_date LIMIT :limit"
        ),
        {"start": HISTORY_START, "limit": limit, "deleted": '%"deleted":true%'},
    )
    return [dict(r._mapping) for r in rows]


# The Salesforce records an invoice held for its PO reads, by the Opportunity it bills: the
# Opportunity itself, or a CPQ quote of it (a quote names its Opportunity in its payload).
_PO_RECORDS_SQL = {
    "salesforce_opportunity": "JOIN salesforce_opportunities r ON r.source_id = i.opportunity_id",
    "salesforce_quote": "JOIN cpq_quotes r ON r.payload LIKE '%' || i.opportunity_id || '%'",
}


def days_with_po_set_later(conn: sa.Connection, limit: int) -> list[dict[str, object]]:
    """The days holding an invoice for a missing PO whose Salesforce record landed again since
    the exception was last seen: finance may have set the PO on the Opportunity or quote
    (``FINSYNC_PO_SOURCE`` naming a Salesforce field), and only a run of that day derives the
    invoice again. None for a Stripe source: the invoice's own change lands in its day.
    """
    source = po_source()
    if not source.crm:
        return []
    rows = conn.execute(
        sa.text(
            "SELECT e.partition_date AS day, COUNT(DISTINCT e.source_id) AS n, "
            "MAX(r.extracted_at) AS touched FROM finance_exceptions e "
            "JOIN invoices i ON i.invoice_id = e.source_id "
            f"{_PO_RECORDS_SQL[source.kind]} "
            "WHERE e.kind = 'missing_po' AND e.status = 'open' AND r.extracted_at > e.last_seen "
            "AND e.partition_date >= :start "
            "GROUP BY e.partition_date ORDER BY e.partition_date LIMIT :limit"
        ),
        {"start": HISTORY_START, "limit": limit},
    )
    return [dict(r._mapping) for r in rows]


@dg.sensor(
    job=catch_up_job,
    minimum_interval_seconds=300,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="Runs an older day again (catch_up_job) when its invoices changed after the "
    "day (paid, voided, finalized later), an invoice of it was landed for the money of a "
    "later day, or the Salesforce record an invoice of it was held for its PO changed, so the "
    "change reaches derive, the ledger and reconciliation without anyone "
    "re-running the day by hand.",
)
def late_changes_sensor(
    context: dg.SensorEvaluationContext, warehouse: WarehouseResource
) -> dg.SensorResult:
    in_progress = [
        dg.DagsterRunStatus.QUEUED,
        dg.DagsterRunStatus.NOT_STARTED,
        dg.DagsterRunStatus.STARTING,
        dg.DagsterRunStatus.STARTED,
    ]
    busy = [
        run
        for job in (daily_sync_job.name, catch_up_job.name)
        for run in context.instance.get_run_records(
            filters=dg.RunsFilter(job_name=job, statuses=in_progress), limit=1
        )
    ]
    if busy:
        # A running day may be the very run about to carry these changes.
        return dg.SensorResult(skip_reason="a daily run is in progress")
    with warehouse.get_engine().connect() as conn:
        behind = days_behind(conn, LATE_DAYS_PER_TICK)
        days = {d["day"] for d in behind}
        po_days = [
            d for d in days_with_po_set_later(conn, LATE_DAYS_PER_TICK) if d["day"] not in days
        ][: max(LATE_DAYS_PER_TICK - len(behind), 0)]
    if not behind and not po_days:
        return dg.SensorResult(skip_reason="every landed change is carried downstream")
    # The run key fingerprints the day's unseen changes: the same changes never launch twice.
    return dg.SensorResult(
        run_requests=[
            dg.RunRequest(
                run_key=f"{prefix}{d['day']}:{d['n']}:{d['touched']}",
                partition_key=str(d["day"]),
                tags={LATE_CHANGES_TAG: str(d["n"])},
            )
            for prefix, found in (("", behind), ("po:", po_days))
            for d in found
        ]
    )


def posting_window_schedule(flows: list[str], cron: str) -> dg.ScheduleDefinition:
    """The batch window of ``flows``: at each tick of ``cron`` (UTC), one posting run for
    whatever of them is due."""

    @dg.schedule(
        name="erp_posting_window_" + "_".join(flows),
        job=erp_posting_job,
        cron_schedule=cron,
        execution_timezone="UTC",
        default_status=dg.DefaultScheduleStatus.RUNNING,
        description=f"Batch window ({cron} UTC) posting {', '.join(flows)}.",
    )
    def _window(
        context: dg.ScheduleEvaluationContext, warehouse: WarehouseResource
    ) -> dg.RunRequest | dg.SkipReason:
        with warehouse.get_engine().connect() as conn:
            due = due_posting_window(conn, flows)
        if due is None:
            return dg.SkipReason(f"no {', '.join(flows)} documents are due for posting")
        tick = context.scheduled_execution_time.isoformat()
        return _posting_request(due, flows, f"{ERP}:window:{'+'.join(flows)}:{tick}")

    return _window


def posting_window_schedules(windows: dict[str, str]) -> list[dg.ScheduleDefinition]:
    """One schedule per distinct cron of the batch flows."""
    by_cron: dict[str, list[str]] = {}
    for flow, cron in windows.items():
        by_cron.setdefault(cron, []).append(flow)
    return [posting_window_schedule(flows, cron) for cron, flows in sorted(by_cron.items())]


@dg.definitions
def automation() -> dg.Definitions:
    """The jobs, the Stripe events, Salesforce changes, posting and late-changes sensors, the
    daily schedule and the batch-window schedules set in FINSYNC_POSTING_BATCH_WINDOWS (none by
    default: every flow posts in near real time). The Stripe events, Salesforce changes and
    posting sensors tick every FINSYNC_NEAR_REAL_TIME_INTERVAL_S seconds."""
    interval = interval_from_env()
    return dg.Definitions(
        jobs=[ingest_job, near_real_time_job, erp_posting_job, daily_sync_job, catch_up_job],
        sensors=[
            stripe_events_sensor(near_real_time_job.name, interval),
            salesforce_changes_sensor(near_real_time_job.name, interval),
            posting_sensor(interval),
            late_changes_sensor,
        ],
        schedules=[
            daily_sync_schedule(daily_sync_cron()),
            *posting_window_schedules(batch_windows()),
        ],
    )
