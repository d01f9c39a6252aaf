"""Post: ledger-driven writes to NetSuite, exactly once."""

from collections.abc import Callable
from typing import TypedDict

import dagster as dg
import pandas as pd
import sqlalchemy as sa

from finsync_pipeline import ledger
from finsync_pipeline.landing import sample, sync_exceptions
from finsync_pipeline.logic.derive import ERP, EXCEPTION_COLUMNS, EXCEPTION_KINDS
from finsync_pipeline.partitions import daily_partitions, date_bounds, single_run
from finsync_pipeline.posting import PostingEngine
from finsync_pipeline.posting_flows import batch_windows, flows_of_run
from finsync_pipeline.resources.concurrency import AdaptiveConcurrency
from finsync_pipeline.resources.http import HttpOptions
from finsync_pipeline.resources.netsuite import NetSuiteResource
from finsync_pipeline.resources.settings import PipelineSettings
from finsync_pipeline.resources.warehouse import WarehouseResource
from finsync_pipeline.run_health import mark_run_dead

OWNERS = ["team:finance-data"]
POSTING_KINDS = ["posting_rejected", "posting_dead"]


def _run_alive(instance: dg.DagsterInstance, run_id: str) -> bool:
    run = instance.get_run_by_id(run_id)
    return run is not None and not run.is_finished


class EngineOptions(TypedDict):
    """The keyword arguments every posting engine of a run shares."""

    run_id: str
    is_run_alive: Callable[[str], bool]
    on_dead_run: Callable[[str, str], None]
    lease_s: float
    max_attempts: int
    batch_size: int


def posting_engine_options(
    context: dg.AssetExecutionContext, settings: PipelineSettings
) -> EngineOptions:
    """What every posting engine of a run shares: its liveness, lease and retry settings."""
    instance = context.instance

    def on_dead_run(run_id: str, why: str) -> None:
        if mark_run_dead(instance, run_id, why):
            context.log.warning(f"marked run {run_id} failed: {why}")

    return {
        "run_id": context.run.run_id,
        "is_run_alive": lambda run_id: _run_alive(instance, run_id),
        "on_dead_run": on_dead_run,
        "lease_s": settings.posting_lease_s,
        "max_attempts": settings.posting_max_attempts,
        "batch_size": settings.posting_batch_size,
    }


def rejection_exceptions(
    rejections: list[dict[str, str]],
    *,
    system: str = ERP,
    name: str = "NetSuite",
    owner_queue: str | None = None,
) -> pd.DataFrame:
    """A finance exception for each document the target system refused or the engine gave up
    on, carrying the system's own message (``source_system`` is the target system)."""
    rows = []
    for r in rejections:
        kind = "posting_dead" if r.get("dead") else "posting_rejected"
        severity, owner = EXCEPTION_KINDS[kind]
        rows.append(
            {
                "kind": kind,
                "source_system": system,
                "source_id": r["external_id"],
                "severity": severity,
                "owner_queue": owner_queue or owner,
                "partition_date": r["partition_date"] or None,
                "correlation_id": r["correlation_id"],
                "legal_entity": None,
                "detail": f"{name} refused {r['doc_type']} {r['external_id']} "
                f"({r['source_id']}): {r['detail']}",
            }
        )
    return pd.DataFrame(rows, columns=EXCEPTION_COLUMNS)


def resolve_posted(conn: sa.Connection, system: str) -> int:
    """Resolve the rejection exceptions of ``system`` whose document has since posted."""
    return int(
        conn.execute(
            sa.text(
                "UPDATE finance_exceptions SET status = 'resolved', resolved_at = :at, "
                "resolution = 'auto: the document has since posted' WHERE status = 'open' "
                "AND kind IN ('posting_rejected', 'posting_dead') AND source_system = :erp "
                "AND source_id IN (SELECT external_id FROM posting_ledger WHERE erp = :erp "
                "AND state = 'posted')"
            ),
            {"at": ledger.now_iso(), "erp": system},
        ).rowcount
        or 0
    )


@dg.asset(
    group_name="post",
    kinds={"netsuite", "python"},
    owners=OWNERS,
    partitions_def=daily_partitions,
    backfill_policy=single_run,
    deps=[
        "erp_customer_upserts",
        "invoice_ready_transactions",
        "credit_memo_requests",
        "payment_applications",
        "customer_refund_requests",
    ],
    pool="netsuite_api",
)
def erp_postings(
    context: dg.AssetExecutionContext,
    netsuite: NetSuiteResource,
    warehouse: WarehouseResource,
    settings: PipelineSettings,
) -> dg.MaterializeResult:
    """Customers, invoices, credit memos, customer payments and customer refunds written to
    NetSuite from the posting ledger (the flows the run is for; see ``posting_flows``):
    customers first, parents before children, then the window's invoices, then the credit
    memos and payments that apply to them, then the refunds that pay credit memos out. Each
    document is upserted by its deterministic external id and every outcome is committed
    before it counts, so a crash anywhere loses nothing and posts nothing twice. Up to
    ``FINSYNC_NETSUITE_CONCURRENCY`` documents are in flight at once, fewer while NetSuite
    answers 429 (the run backs off and recovers instead of pausing)."""
    date_from, date_to = date_bounds(context)
    engine = warehouse.get_engine()
    # Every client of the run shares one adaptive limit: a 429 slows them all.
    limiter = AdaptiveConcurrency(settings.netsuite_concurrency)
    options = HttpOptions(limiter=limiter)
    client = netsuite.get_client(http_options=options)
    poster = PostingEngine(
        engine,
        client,
        erp=ERP,
        concurrency=settings.netsuite_concurrency,
        client_factory=lambda: netsuite.get_client(http_options=options),
        limiter=limiter,
        **posting_engine_options(context, settings),
    )
    poster.recover()
    with engine.connect() as conn:
        depths = [
            int(d)
            for (d,) in conn.execute(
                sa.text(
                    "SELECT DISTINCT depth FROM posting_ledger WHERE erp = :erp AND "
                    "doc_type = 'customer' AND state = 'pending' ORDER BY depth"
                ),
                {"erp": ERP},
            )
        ]
    # The run's flows (see ``flows_of_run``), in order: customers parents first, then
    # invoices before the credit memos and payments that apply to them, then refunds.
    flows = flows_of_run(context.run.tags, batch_windows())
    for doc_type in flows:
        if doc_type == "customer":
            poster.post("customer", depths=depths)
        else:
            poster.post(doc_type, date_from=date_from, date_to=date_to)
    found = rejection_exceptions(poster.stats.rejections)
    with engine.begin() as conn:
        upserted = sync_exceptions(conn, found, detected_by="erp_postings", kinds=[])
        # A rejected or dead document that has since posted has lost its cause.
        resolved = resolve_posted(conn, ERP)
        counts = ledger.state_counts(conn, erp=ERP)
    return dg.MaterializeResult(
        metadata={
            **poster.stats.as_metadata(),
            "flows posted": ", ".join(flows),
            "netsuite requests (lookups)": client.requests_made,
            "ledger by state": dg.MetadataValue.json(counts),
            "exceptions opened": upserted["open_or_refreshed"],
            "exceptions auto-resolved": resolved,
            "rejections": sample(found, ["kind", "source_id", "detail"]),
        }
    )
