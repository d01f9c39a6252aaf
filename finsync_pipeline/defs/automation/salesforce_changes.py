"""Near real time for customer master data: a sensor on Salesforce Account changes.

A NetSuite customer is kept in step with its Salesforce Account (name, parent, billing address,
currency, legal entity, PO requirement). Each tick asks Salesforce, in one query (one API call
of the org's daily limit), for the Accounts whose ``SystemModstamp`` is newer than the sensor's
cursor. When one of them changed a field a customer is made of (compared with the Account as
landed in the warehouse: finsync's own billing status written back on the Account changes no
such field) and customers post in near real time (``posting_flows``), it asks for one small
run of the ingest selection for today: the Account extract reads the change from its own
cursor, derive queues the changed customer on the posting ledger, and the posting sensor posts
it at its next tick. No day is re-run: the run's partition is only where its Stripe reads
land, and today's are small.

A ``SystemModstamp`` further in the future than ``MAX_FUTURE_SKEW`` is not a change that has
happened (a clock or a data load gone wrong): it never becomes the cursor, or every real change
made afterwards would look older than it.

The daily schedule stays the batch path and the safety net: a change this sensor did not see
(it was stopped, or customers post in a batch window) is carried by the next nightly run.
"""

import datetime as dt
import json
from typing import Any

import dagster as dg
import sqlalchemy as sa

from finsync_pipeline.defs.automation.stripe_events import IN_PROGRESS
from finsync_pipeline.ledger import loads
from finsync_pipeline.posting_flows import batch_windows, realtime_flows
from finsync_pipeline.resources.salesforce import SalesforceResource, soql_select
from finsync_pipeline.resources.warehouse import WarehouseResource
from finsync_pipeline.schemas.salesforce import ACCOUNT_FIELDS

SENSOR_NAME = "salesforce_changes_sensor"
SALESFORCE_CHANGES_TAG = "finsync/salesforce_changes_through"
MAX_FUTURE_SKEW = dt.timedelta(minutes=5)
# A change can commit with a SystemModstamp a little before one already read (Salesforce stamps
# the transaction's start): each tick reads this far behind its newest change again.
LOOKBACK = dt.timedelta(minutes=10)
# The Account fields a NetSuite customer is made of. A change to any other field (finsync's own
# billing status written back on the Account, or another team's) moves the cursor and runs
# nothing: finsync's write-back would otherwise launch a run after every posting run.
CUSTOMER_FIELDS = [
    f for f in ACCOUNT_FIELDS if f not in ("CreatedDate", "LastModifiedDate", "SystemModstamp")
]


def _instant(value: str) -> dt.datetime:
    """A Salesforce datetime (``2026-12-04T18:02:11.000+0000``) as an aware datetime."""
    return dt.datetime.strptime(value, "%Y-%m-%dT%H:%M:%S.%f%z")


def _stamp(when: dt.datetime) -> str:
    return when.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "+0000"


def _changed(
    salesforce: SalesforceResource, since: dt.datetime, now: dt.datetime
) -> dict[str, dict[str, Any]]:
    """Id -> record of the Accounts changed after ``since``, up to the skew allowed."""
    soql = soql_select(
        "Account",
        [*CUSTOMER_FIELDS, "SystemModstamp"],
        where=[
            ("SystemModstamp", ">", since),
            ("SystemModstamp", "<=", now + MAX_FUTURE_SKEW),
        ],
        order_by="SystemModstamp, Id",
    )
    return {str(r["Id"]): r for r in salesforce.get_client().query(soql)}


def _stamps(changed: dict[str, dict[str, Any]]) -> dict[str, str]:
    return {rid: str(r["SystemModstamp"]) for rid, r in changed.items()}


def _customer_changes(
    warehouse: WarehouseResource, records: dict[str, dict[str, Any]]
) -> list[str]:
    """The ids among ``records`` whose customer fields differ from the Account as landed (or
    that were never landed)."""
    stmt = sa.text(
        "SELECT source_id, payload FROM salesforce_accounts WHERE source_id IN :ids"
    ).bindparams(sa.bindparam("ids", expanding=True))
    with warehouse.get_engine().connect() as conn:
        landed = {r.source_id: loads(r.payload) for r in conn.execute(stmt, {"ids": list(records)})}
    return sorted(
        rid
        for rid, record in records.items()
        if rid not in landed or any(record.get(f) != landed[rid].get(f) for f in CUSTOMER_FIELDS)
    )


def _cursor(through: dt.datetime, changed: dict[str, str]) -> str:
    """The newest change and the changes within the lookback of it, which the next tick reads
    again (a record can commit with a SystemModstamp a little before one already read) and
    must not count twice."""
    floor = through - LOOKBACK
    seen = {rid: stamp for rid, stamp in changed.items() if _instant(stamp) > floor}
    return json.dumps({"through": _stamp(through), "seen": seen}, sort_keys=True)


def salesforce_changes_sensor(job_name: str, interval_s: int) -> dg.SensorDefinition:
    """The sensor on Salesforce Account changes, launching ``job_name`` and ticking every
    ``interval_s`` seconds (one Salesforce API call a tick)."""

    @dg.sensor(
        name=SENSOR_NAME,
        job_name=job_name,
        minimum_interval_seconds=interval_s,
        default_status=dg.DefaultSensorStatus.RUNNING,
        description="Near real time for customer master data: asks Salesforce for the Accounts "
        f"changed since its cursor (one API call a tick) and, when customers post in near real "
        f"time, runs {job_name} for today so the changed customers are on the posting ledger "
        "for the posting sensor's next tick.",
    )
    def _sensor(
        context: dg.SensorEvaluationContext,
        salesforce: SalesforceResource,
        warehouse: WarehouseResource,
    ) -> dg.SensorResult:
        now = dt.datetime.now(dt.UTC)
        if not context.cursor:
            # What changed before the start is the nightly runs' to carry.
            return dg.SensorResult(
                skip_reason="started: the nightly runs carry every earlier Account change",
                cursor=_cursor(now, _stamps(_changed(salesforce, now - LOOKBACK, now))),
            )
        if "customer" not in realtime_flows(batch_windows()):
            return dg.SensorResult(
                skip_reason="customers post in a batch window: the nightly run carries "
                "Account changes"
            )
        busy = context.instance.get_run_records(
            filters=dg.RunsFilter(job_name=job_name, statuses=IN_PROGRESS), limit=1
        )
        if busy:
            # The cursor stays: the next tick after that run sees these changes.
            return dg.SensorResult(skip_reason=f"a {job_name} run is in progress")
        cursor = json.loads(context.cursor)
        through = _instant(cursor["through"])
        seen: dict[str, str] = cursor["seen"]
        changed = _changed(salesforce, through - LOOKBACK, now)
        stamps = _stamps(changed)
        new = {rid: r for rid, r in changed.items() if seen.get(rid) != stamps[rid]}
        if not new:
            return dg.SensorResult(
                skip_reason="no Salesforce Account changed", cursor=_cursor(through, stamps)
            )
        newest = max([through, *(_instant(stamps[rid]) for rid in new)])
        next_cursor = _cursor(newest, {**seen, **stamps})
        customers = _customer_changes(warehouse, new)
        if not customers:
            return dg.SensorResult(
                skip_reason=f"{len(new)} Salesforce Account changes, none to a customer field",
                cursor=next_cursor,
            )
        today = now.date().isoformat()
        context.log.info(
            f"{len(customers)} Salesforce Accounts changed a customer field through "
            f"{_stamp(newest)}; running {job_name} for {today}"
        )
        return dg.SensorResult(
            run_requests=[
                dg.RunRequest(
                    # The newest change and how many: the same changes never run twice.
                    run_key=f"salesforce:Account:{_stamp(newest)}:{len(customers)}",
                    partition_key=today,
                    tags={SALESFORCE_CHANGES_TAG: _stamp(newest)},
                )
            ],
            cursor=next_cursor,
        )

    return _sensor
