"""Extract: what NetSuite holds besides invoices, read back after posting for reconciliation."""

import functools
from collections.abc import Callable
from typing import Any, TypeVar

import dagster as dg

from finsync_pipeline.defs.extract.assets import _extract, _land
from finsync_pipeline.errors import (
    AuthenticationError,
    ConfigurationError,
    PermanentUpstreamError,
    UnreachableError,
)
from finsync_pipeline.logic.derive import net_negative_external_id
from finsync_pipeline.logic.normalize import netsuite_date
from finsync_pipeline.partitions import window
from finsync_pipeline.resources.netsuite import NetSuiteResource, suiteql_literal
from finsync_pipeline.resources.warehouse import WarehouseResource

TRANSACTION_COLUMNS = [
    "id",
    "externalid",
    "tranid",
    "entity",
    "trandate",
    "currency",
    "subsidiary",
    "foreigntotal",
    "foreignamountremaining",
    "status",
    "memo",
    "lastmodifieddate",
]

# The read-back runs right after posting, often into the tail of an ERP outage (a maintenance
# window): a read that outlives the HTTP client's own retries is retried by Dagster, later,
# rather than failing the run. Reads are idempotent.
READ_BACK_RETRY = dg.RetryPolicy(max_retries=4, delay=5, backoff=dg.Backoff.EXPONENTIAL)

F = TypeVar("F", bound=Callable[..., Any])


def fail_fast(fn: F) -> F:
    """Bad credentials, a refused query or an address nothing answers on will not heal by
    waiting: fail without retrying."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except (
            AuthenticationError,
            ConfigurationError,
            PermanentUpstreamError,
            UnreachableError,
        ) as e:
            raise dg.Failure(description=str(e), allow_retries=False) from e

    return wrapper  # type: ignore[return-value]


def read_back(
    context: dg.AssetExecutionContext,
    netsuite: NetSuiteResource,
    warehouse: WarehouseResource,
    *,
    table: str,
    transaction_types: tuple[str, ...],
    also: str | None = None,
) -> dg.MaterializeResult:
    """Land the NetSuite transactions of the given types dated in the window (SuiteQL, paged),
    and those matching ``also`` (a SuiteQL condition built with ``suiteql_literal``)."""
    start, end = window(context)
    types = ", ".join(suiteql_literal(t) for t in transaction_types)
    kinds = f"type IN ({types})" if also is None else f"(type IN ({types}) OR ({also}))"
    query = (
        f"SELECT {', '.join(TRANSACTION_COLUMNS)} FROM transaction "
        f"WHERE {kinds} "
        f"AND trandate >= {suiteql_literal(start.date())} "
        f"AND trandate < {suiteql_literal(end.date())} ORDER BY id"
    )
    client = netsuite.get_client()
    return _land(
        context,
        warehouse,
        table=table,
        system="netsuite",
        # A row without an id lands under an id from its content, and its check holds it.
        records=(
            {**r, "id": str(r["id"])} if r.get("id") is not None else r
            for r in client.suiteql(query)
        ),
        id_key="id",
        created_date=lambda r: netsuite_date(r.get("trandate")),
        updated_at=lambda r: r.get("lastmodifieddate"),
        requests_made=lambda: client.requests_made,
    )


@dg.asset(
    **{
        **_extract(
            "erp_invoices",
            "netsuite",
            "NetSuite invoices dated in the window, read back through SuiteQL after "
            "posting: what the ERP really holds, for reconciliation. With them, the credit "
            "memos that stand for net-negative billing invoices (NetSuite has no negative "
            "invoice).",
        ),
        "deps": ["erp_postings"],
        "retry_policy": READ_BACK_RETRY,
    }
)
@fail_fast
def erp_invoices(
    context: dg.AssetExecutionContext, netsuite: NetSuiteResource, warehouse: WarehouseResource
) -> dg.MaterializeResult:
    # Only finsync's net-negative credit memos: credit notes' and voids' credit memos are
    # reconciled through the ledger, not as invoices.
    prefix = suiteql_literal(net_negative_external_id("") + "%")
    return read_back(
        context,
        netsuite,
        warehouse,
        table="erp_invoices",
        transaction_types=("CustInvc",),
        also=f"type = {suiteql_literal('CustCred')} AND externalid LIKE {prefix}",
    )


@dg.asset(
    **{
        **_extract(
            "erp_payments",
            "netsuite",
            "NetSuite customer payments and customer refunds dated in the window, read back "
            "through SuiteQL after posting: the money the ERP shows received and paid back, "
            "for payment reconciliation.",
        ),
        "deps": ["erp_postings"],
        "retry_policy": READ_BACK_RETRY,
    }
)
@fail_fast
def erp_payments(
    context: dg.AssetExecutionContext, netsuite: NetSuiteResource, warehouse: WarehouseResource
) -> dg.MaterializeResult:
    return read_back(
        context,
        netsuite,
        warehouse,
        table="erp_payments",
        transaction_types=("CustPymt", "CustRfnd"),
    )
