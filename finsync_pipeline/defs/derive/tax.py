"""Derive: the tax check of every live invoice against Avalara AvaTax."""

from concurrent.futures import ThreadPoolExecutor
from typing import Any

import dagster as dg
import pandas as pd

from finsync_pipeline.errors import PermanentUpstreamError
from finsync_pipeline.landing import amounts_by_currency, load_payloads, sample, sync_exceptions
from finsync_pipeline.logic.derive import LIVE_INVOICE_STATUSES
from finsync_pipeline.logic.tax import address_from_account, build_sales_order, compare_tax
from finsync_pipeline.master_data import load_master_data
from finsync_pipeline.partitions import daily_partitions, date_bounds, single_run
from finsync_pipeline.resources.avalara import AvalaraResource
from finsync_pipeline.resources.settings import PipelineSettings
from finsync_pipeline.resources.warehouse import (
    WarehouseResource,
    frame_records,
    read_frame,
    replace_partitions,
)

OWNERS = ["team:finance-data"]
TAX_KINDS = ["tax_mismatch", "tax_address_missing"]
TAX_CHECK_SCHEMA = dg.TableSchema(
    columns=[
        dg.TableColumn("partition_date", "str", description="Partition day of the invoice."),
        dg.TableColumn("invoice_id", "str", description="Stripe invoice id."),
        dg.TableColumn("currency", "str", description="ISO 4217 code of the invoice."),
        dg.TableColumn("billed_tax_minor", "int", description="Tax Stripe billed (minor units)."),
        dg.TableColumn("engine_tax_minor", "int", description="Tax AvaTax computes (minor units)."),
        dg.TableColumn("difference_minor", "int", description="Billed minus engine tax."),
        dg.TableColumn("within_tolerance", "int", description="1 when within the tolerance."),
        dg.TableColumn("jurisdiction", "str", description="Where AvaTax taxed, with its rates."),
        dg.TableColumn("correlation_id", "str", description="finsync correlation id."),
        dg.TableColumn("run_id", "str", description="The Dagster run that checked it."),
    ]
)


@dg.asset(
    group_name="derive",
    kinds={"avalara", "python"},
    owners=OWNERS,
    partitions_def=daily_partitions,
    backfill_policy=single_run,
    deps=["invoices", "invoice_lines", "customers", "salesforce_accounts"],
    pool="avalara_api",
)
def invoice_tax_checks(
    context: dg.AssetExecutionContext,
    warehouse: WarehouseResource,
    avalara: AvalaraResource,
    settings: PipelineSettings,
) -> dg.MaterializeResult:
    """Every live invoice's billed tax checked against the tax Avalara AvaTax computes for the
    customer's billing address (a SalesOrder estimate, never committed). A difference beyond
    the tolerance, or a customer without a usable address, goes to the tax queue as a finance
    exception; it resolves itself once a later run finds the invoice right. An exempt
    customer's exemption and a buyer's VAT id go with the estimate, so AvaTax applies the
    exemption or the reverse charge Stripe billed."""
    date_from, date_to = date_bounds(context)
    engine = warehouse.get_engine()
    bounds = {"date_from": date_from, "date_to": date_to}
    with engine.connect() as conn:
        invoices = read_frame(
            conn,
            "SELECT i.*, c.legal_entity, c.tax_exempt, c.tax_id, c.tax_exemption_number, "
            "c.tax_entity_use_code FROM invoices i "
            "LEFT JOIN customers c ON c.customer_key = i.customer_key "
            "WHERE i.partition_date >= :date_from AND i.partition_date < :date_to",
            bounds,
        )
        lines = read_frame(
            conn,
            "SELECT * FROM invoice_lines WHERE partition_date >= :date_from "
            "AND partition_date < :date_to",
            bounds,
        )
        accounts = load_payloads(conn, "salesforce_accounts")
    # The seller's country: where a reverse-charged sale goes from.
    seller_country = {code: e.country for code, e in load_master_data().legal_entities.items()}
    live = invoices[invoices["status"].isin(LIVE_INVOICE_STATUSES)].sort_values("invoice_id")
    account_of = dict(zip(accounts["source_id"], accounts["payload"], strict=True))
    lines_of = {k: g for k, g in lines.groupby("invoice_id")}
    results: dict[str, dict[str, Any]] = {}
    problems: dict[str, str] = {}
    orders: list[tuple[str, dict[str, Any]]] = []
    for inv in live.to_dict("records"):
        invoice_id = str(inv["invoice_id"])
        key = inv["customer_key"]
        account = None if key is None or pd.isna(key) else account_of.get(str(key))
        if account is None:
            # No valid CRM account: derive already holds this invoice as unmatched_customer.
            continue
        address, reason = address_from_account(account)
        if address is None:
            problems[invoice_id] = reason
            continue
        orders.append(
            (
                invoice_id,
                build_sales_order(
                    inv,
                    lines_of.get(invoice_id, lines.iloc[0:0]),
                    address,
                    avalara.company_code,
                    seller_country=seller_country.get(str(inv.get("legal_entity"))),
                ),
            )
        )

    def estimate(share: list[tuple[str, dict[str, Any]]]) -> int:
        # One client (one HTTP session) per worker: sessions are not shared across threads.
        with avalara.get_client() as client:
            for invoice_id, model in share:
                try:
                    results[invoice_id] = client.create_sales_order(model)
                except PermanentUpstreamError as e:
                    if not (e.field or "").startswith("addresses"):
                        raise
                    # AvaTax could not place the address: the customer record must be fixed.
                    problems[invoice_id] = f"AvaTax refused {e.field}: {e.detail}"
            return client.requests_made

    workers = max(1, settings.avalara_concurrency)
    with ThreadPoolExecutor(max_workers=workers) as pool:
        requests_made = sum(pool.map(estimate, [orders[i::workers] for i in range(workers)]))
    checked = live[live["invoice_id"].isin(results.keys() | problems.keys())]
    checks, found = compare_tax(
        checked,
        results,
        settings.tax_tolerance_minor_per_line,
        address_problems=problems,
    )
    rows = frame_records(checks.assign(run_id=context.run.run_id))
    with engine.begin() as conn:
        replace_partitions(
            conn,
            "invoice_tax_checks",
            rows,
            date_from=date_from,
            date_to=date_to,
            key=["invoice_id"],
        )
        synced = sync_exceptions(
            conn,
            found,
            detected_by="invoice_tax_checks",
            kinds=TAX_KINDS,
            date_from=date_from,
            date_to=date_to,
        )
    mismatched = checks[checks["within_tolerance"] == 0]
    return dg.MaterializeResult(
        metadata={
            "dagster/row_count": len(checks),
            "dagster/column_schema": TAX_CHECK_SCHEMA,
            "mismatches": len(mismatched),
            "addresses missing": len(problems),
            "billed tax by currency": dg.MetadataValue.json(
                amounts_by_currency(checks, "billed_tax_minor", "currency")
            ),
            "AvaTax tax by currency": dg.MetadataValue.json(
                amounts_by_currency(checks, "engine_tax_minor", "currency")
            ),
            "AvaTax requests": requests_made,
            "tolerance (minor units per line)": settings.tax_tolerance_minor_per_line,
            "exceptions found": len(found),
            "exceptions auto-resolved": synced["auto_resolved"],
            "mismatch sample": sample(
                mismatched,
                ["invoice_id", "currency", "billed_tax_minor", "engine_tax_minor", "jurisdiction"],
            ),
            "exception sample": sample(found, ["kind", "source_id", "detail"]),
        }
    )
