"""Extract: what NetSuite holds besides invoices, read back after posting for reconciliation."""

import dagster as dg

from finsync_pipeline.defs.extract.assets import ERP_INVOICE_COLUMNS, _extract, _land
from finsync_pipeline.logic.normalize import netsuite_date
from finsync_pipeline.partitions import window
from finsync_pipeline.resources.netsuite import NetSuiteResource, suiteql_literal
from finsync_pipeline.resources.warehouse import WarehouseResource


def read_back(
    context: dg.AssetExecutionContext,
    netsuite: NetSuiteResource,
    warehouse: WarehouseResource,
    *,
    table: str,
    transaction_type: str,
) -> dg.MaterializeResult:
    """Land the NetSuite transactions of one type dated in the window (SuiteQL, paged)."""
    start, end = window(context)
    query = (
        f"SELECT {', '.join(ERP_INVOICE_COLUMNS)} FROM transaction "
        f"WHERE type = {suiteql_literal(transaction_type)} "
        f"AND trandate >= {suiteql_literal(start.date())} "
        f"AND trandate < {suiteql_literal(end.date())} ORDER BY id"
    )
    client = netsuite.get_client()
    return _land(
        context,
        warehouse,
        table=table,
        system="netsuite",
        records=({**r, "id": str(r.get("id"))} for r in client.suiteql(query)),
        id_key="id",
        created_date=lambda r: netsuite_date(r.get("trandate")),
        updated_at=lambda r: r.get("lastmodifieddate"),
        requests_made=lambda: client.requests_made,
    )


@dg.asset(
    **{
        **_extract(
            "erp_payments",
            "netsuite",
            "NetSuite customer payments dated in the window, read back through SuiteQL after "
            "posting: what the ERP really received, for payment reconciliation.",
        ),
        "deps": ["erp_postings"],
    }
)
def erp_payments(
    context: dg.AssetExecutionContext, netsuite: NetSuiteResource, warehouse: WarehouseResource
) -> dg.MaterializeResult:
    return read_back(
        context, netsuite, warehouse, table="erp_payments", transaction_type="CustPymt"
    )
