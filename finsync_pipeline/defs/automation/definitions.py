"""Automation: the jobs, the posting sensor and the daily schedule.

Flows:
    ingest_job       extract -> validate -> derive (queues documents on the posting ledger)
    erp_posting_job  post -> read back -> reconcile; launched by ``erp_posting_sensor`` as soon
                     as the ledger holds due documents (near real time)
    daily_sync_job   everything, for the previous day; ``daily_sync_schedule`` runs it as a
                     deployment would, and backfills run it over any range in one run
"""

import json

import dagster as dg
import sqlalchemy as sa

from finsync_pipeline.ledger import now_iso
from finsync_pipeline.logic.derive import ERP
from finsync_pipeline.partitions import RANGE_END_TAG, RANGE_START_TAG, daily_partitions
from finsync_pipeline.resources.warehouse import WarehouseResource

ERP_TAG = "finsync/erp"

ingest_job = dg.define_asset_job(
    "ingest_job",
    selection=dg.AssetSelection.groups("extract", "validate", "derive")
    - dg.AssetSelection.assets("erp_invoices", "erp_payments"),
    description="Extract, validate and derive a day range; queues documents for posting.",
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

daily_sync_schedule = dg.build_schedule_from_partitioned_job(
    daily_sync_job,
    hour_of_day=2,
    minute_of_hour=0,
    description="Each night, the previous UTC day from extract to reconcile.",
)


def due_posting_window(conn: sa.Connection) -> dict[str, object] | None:
    """What the ledger holds that is due for posting: the date range and a fingerprint."""
    row = conn.execute(
        sa.text(
            "SELECT COUNT(*) AS n, MIN(partition_date) AS lo, MAX(partition_date) AS hi, "
            "MAX(updated_at) AS touched FROM posting_ledger WHERE erp = :erp AND "
            "state = 'pending' AND (next_attempt_at IS NULL OR next_attempt_at <= :now)"
        ),
        {"erp": ERP, "now": now_iso()},
    ).one()
    if not row.n:
        return None
    return {"count": int(row.n), "lo": row.lo, "hi": row.hi, "touched": row.touched}


@dg.sensor(
    job=erp_posting_job,
    minimum_interval_seconds=60,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="Launches a posting run whenever the ledger holds due documents.",
)
def erp_posting_sensor(
    context: dg.SensorEvaluationContext, warehouse: WarehouseResource
) -> dg.SensorResult:
    with warehouse.get_engine().connect() as conn:
        due = due_posting_window(conn)
    if due is None:
        return dg.SensorResult(skip_reason="no documents are due for posting")
    last_day = daily_partitions.get_last_partition_key()
    lo = str(due["lo"] or last_day)
    hi = str(due["hi"] or last_day)
    # The run key fingerprints the due set: the same backlog never launches twice, a changed
    # backlog (new rows, a retry coming due) launches once more.
    run_key = f"{ERP}:{lo}:{hi}:{due['count']}:{due['touched']}"
    return dg.SensorResult(
        run_requests=[
            dg.RunRequest(
                run_key=run_key,
                tags={RANGE_START_TAG: lo, RANGE_END_TAG: hi, ERP_TAG: ERP},
            )
        ],
        cursor=json.dumps({"last_run_key": run_key}),
    )
