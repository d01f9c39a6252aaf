"""Near real time upstream of the ledger: a sensor on Stripe's events list.

Each tick reads the next events since the sensor's cursor (at most ``EVENTS_PER_TICK``, oldest
first) of the types that change a document of a posting flow: an invoice finalized, paid,
voided or updated, a charge succeeded or refunded, a credit note, a customer. When one of them
touches a near-real-time flow (``posting_flows``), it asks for a small run of the ingest
selection (extract, validate, derive) for the partitions the changed objects belong to, and
for no other day: the run queues their documents on the posting ledger, and the posting sensor
posts them at its next tick. Events of batch-window flows only move the cursor: their
documents are queued by the nightly run and wait for their window anyway.

The daily schedule stays the batch path and the safety net: an event this sensor missed (the
sensor stopped for longer than Stripe keeps events) is carried by that day's nightly run.
"""

import datetime as dt
import json
import os
from typing import Any

import dagster as dg

from finsync_pipeline.errors import ConfigurationError
from finsync_pipeline.partitions import HISTORY_START
from finsync_pipeline.posting_flows import batch_windows, realtime_flows
from finsync_pipeline.resources.stripe import StripeResource

INTERVAL_ENV = "FINSYNC_NEAR_REAL_TIME_INTERVAL_S"
DEFAULT_INTERVAL_S = 15
# Events one tick reads at most (one page of Stripe's list); the rest wait for the next tick.
EVENTS_PER_TICK = 100
STRIPE_EVENTS_TAG = "finsync/stripe_events_through"
SENSOR_NAME = "stripe_events_sensor"

# Stripe event type -> the posting flows whose documents it changes (Stripe takes at most 20
# types a request: these are 14).
EVENT_FLOWS: dict[str, tuple[str, ...]] = {
    "invoice.finalized": ("invoice",),
    "invoice.updated": ("invoice",),
    "invoice.voided": ("invoice", "credit_memo"),
    "invoice.marked_uncollectible": ("invoice", "credit_memo"),
    "invoice.paid": ("customer_payment",),
    "payment_intent.succeeded": ("customer_payment",),
    "charge.succeeded": ("customer_payment",),
    "charge.refunded": ("customer_refund",),
    "refund.created": ("customer_refund",),
    "credit_note.created": ("credit_memo",),
    "credit_note.updated": ("credit_memo",),
    "credit_note.voided": ("credit_memo",),
    "customer.created": ("customer",),
    "customer.updated": ("customer",),
}

# A run of these statuses is still to finish.
IN_PROGRESS = [
    dg.DagsterRunStatus.QUEUED,
    dg.DagsterRunStatus.NOT_STARTED,
    dg.DagsterRunStatus.STARTING,
    dg.DagsterRunStatus.STARTED,
]


def interval_from_env() -> int:
    """``FINSYNC_NEAR_REAL_TIME_INTERVAL_S`` as whole seconds (default 15).

    Raises:
        ConfigurationError: Not a whole number of seconds from 1 to 3600.
    """
    raw = os.environ.get(INTERVAL_ENV, "").strip()
    if not raw:
        return DEFAULT_INTERVAL_S
    if not raw.isdigit() or not 1 <= int(raw) <= 3600:
        raise ConfigurationError(
            f"{INTERVAL_ENV} is {raw!r}; set it to whole seconds from 1 to 3600 "
            f"(default {DEFAULT_INTERVAL_S})"
        )
    return int(raw)


def changed_days(events: list[dict[str, Any]], flows: set[str]) -> list[str]:
    """The partitions the events of ``flows`` changed: each changed object's own creation day
    (a customer, master data, changes today's), never before the history starts."""
    days = set()
    for event in events:
        if not flows.intersection(EVENT_FLOWS.get(str(event.get("type")), ())):
            continue
        obj = (event.get("data") or {}).get("object") or {}
        when = event.get("created") if obj.get("object") == "customer" else obj.get("created")
        if not isinstance(when, int):
            when = int(event["created"])
        day = dt.datetime.fromtimestamp(when, tz=dt.UTC).date().isoformat()
        if day >= HISTORY_START:
            days.add(day)
    return sorted(days)


def _next_events(
    stripe: StripeResource, cursor: dict[str, Any]
) -> tuple[list[dict[str, Any]], bool]:
    client = stripe.get_client()
    types = sorted(EVENT_FLOWS)
    if cursor.get("after"):
        return client.events_after(str(cursor["after"]), types=types, limit=EVENTS_PER_TICK)
    # No event seen yet: every event since the sensor started, oldest first.
    listed = list(client.list_events(created_gte=int(cursor["since"]), types=types))
    listed.reverse()
    return listed[:EVENTS_PER_TICK], len(listed) > EVENTS_PER_TICK


def _start_cursor(stripe: StripeResource, now: float) -> str:
    """Where a new sensor starts: after the newest event, or at ``now`` when there is none.
    What came before is the nightly runs' to carry."""
    newest = next(iter(stripe.get_client().list_events(types=sorted(EVENT_FLOWS))), None)
    return json.dumps({"after": newest["id"]} if newest else {"since": int(now)})


def stripe_events_sensor(job_name: str, interval_s: int) -> dg.SensorDefinition:
    """The sensor on Stripe's events list, launching ``job_name`` and ticking every
    ``interval_s`` seconds."""

    @dg.sensor(
        name=SENSOR_NAME,
        job_name=job_name,
        minimum_interval_seconds=interval_s,
        default_status=dg.DefaultSensorStatus.RUNNING,
        description="Near real time: reads Stripe's events since its cursor and, when an "
        "invoice, payment, refund, credit note or customer of a near-real-time flow changed, "
        f"runs {job_name} for the days of the changed objects only, so their documents are "
        "on the posting ledger for the posting sensor's next tick.",
    )
    def _sensor(context: dg.SensorEvaluationContext, stripe: StripeResource) -> dg.SensorResult:
        if not context.cursor:
            return dg.SensorResult(
                skip_reason="started: the nightly runs carry every earlier event",
                cursor=_start_cursor(stripe, dt.datetime.now(dt.UTC).timestamp()),
            )
        busy = context.instance.get_run_records(
            filters=dg.RunsFilter(job_name=job_name, statuses=IN_PROGRESS), limit=1
        )
        if busy:
            # The cursor stays: the next tick after that run reads these events.
            return dg.SensorResult(skip_reason=f"a {job_name} run is in progress")
        events, more = _next_events(stripe, json.loads(context.cursor))
        if not events:
            return dg.SensorResult(skip_reason="no new Stripe events")
        last = str(events[-1]["id"])
        cursor = json.dumps({"after": last})
        days = changed_days(events, set(realtime_flows(batch_windows())))
        if not days:
            return dg.SensorResult(
                skip_reason=f"{len(events)} new Stripe events, none for a near-real-time flow",
                cursor=cursor,
            )
        context.log.info(
            f"{len(events)} Stripe events through {last} change {', '.join(days)}"
            + ("; more follow at the next tick" if more else "")
        )
        return dg.SensorResult(
            run_requests=[
                dg.RunRequest(
                    # The last event read and the day: the same events never run twice.
                    run_key=f"stripe:{last}:{day}",
                    partition_key=day,
                    tags={STRIPE_EVENTS_TAG: last},
                )
                for day in days
            ],
            cursor=cursor,
        )

    return _sensor
