"""Validate: blocking contract checks on every extract asset.

Each check runs its pandera contract lazily over the partition range, sends every invalid row
to quarantine with the system, record, field and check, and fails the run only when the share
of bad rows passes ``PipelineSettings.max_bad_share`` and at least ``min_bad_records`` are bad.
"""

import datetime as dt
from collections.abc import Callable
from dataclasses import dataclass

import dagster as dg
import pandas as pd
import pandera.pandas as pa
import sqlalchemy as sa

from finsync_pipeline.landing import (
    load_payloads,
    load_unchecked_payloads,
    mark_checked,
    sample,
    write_quarantine,
)
from finsync_pipeline.logic import normalize
from finsync_pipeline.logic.screen import RECORD, screen
from finsync_pipeline.logic.validation import FAILURE_COLUMNS, ValidationOutcome, validate_frame
from finsync_pipeline.master_data import load_master_data
from finsync_pipeline.partitions import daily_partitions, date_bounds
from finsync_pipeline.po_source import po_source
from finsync_pipeline.resources.settings import PipelineSettings, future_skew_from_env
from finsync_pipeline.resources.warehouse import WarehouseResource
from finsync_pipeline.schemas import netsuite, salesforce, stripe


@dataclass(frozen=True)
class Contract:
    """How one extract asset is flattened and checked."""

    asset: str
    system: str
    obj: str
    model: type[pa.DataFrameModel]
    flatten: Callable[[list[dict[str, object]]], pd.DataFrame]
    partitioned: bool = False


def _erp_invoices(records: list[dict[str, object]]) -> pd.DataFrame:
    codes = {v: k for k, v in load_master_data().netsuite_currency_ids.items()}
    return normalize.flatten_erp_invoices(records, codes)


CONTRACTS = [
    Contract(
        "stripe_subscriptions",
        "stripe",
        "subscription",
        stripe.StripeSubscriptionRecord,
        normalize.flatten_stripe_subscriptions,
    ),
    Contract(
        "stripe_payments",
        "stripe",
        "payment_intent",
        stripe.StripePaymentRecord,
        normalize.flatten_stripe_payments,
        partitioned=True,
    ),
    Contract(
        "stripe_credit_notes",
        "stripe",
        "credit_note",
        stripe.StripeCreditNoteRecord,
        normalize.flatten_stripe_credit_notes,
        partitioned=True,
    ),
    Contract(
        "stripe_refunds",
        "stripe",
        "refund",
        stripe.StripeRefundRecord,
        normalize.flatten_stripe_refunds,
        partitioned=True,
    ),
    Contract(
        "stripe_charges",
        "stripe",
        "charge",
        stripe.StripeChargeRecord,
        normalize.flatten_stripe_charges,
        partitioned=True,
    ),
    Contract(
        "stripe_customers",
        "stripe",
        "customer",
        stripe.StripeCustomerRecord,
        normalize.flatten_stripe_customers,
    ),
    Contract(
        "salesforce_accounts",
        "salesforce",
        "Account",
        salesforce.SalesforceAccountRecord,
        normalize.flatten_salesforce_accounts,
    ),
    Contract(
        "salesforce_opportunities",
        "salesforce",
        "Opportunity",
        salesforce.SalesforceOpportunityRecord,
        normalize.flatten_salesforce_opportunities,
    ),
    Contract(
        "salesforce_contracts",
        "salesforce",
        "Contract",
        salesforce.SalesforceContractRecord,
        normalize.flatten_salesforce_contracts,
    ),
    Contract(
        "cpq_quotes",
        "salesforce",
        "SBQQ__Quote__c",
        salesforce.CpqQuoteRecord,
        normalize.flatten_cpq_quotes,
    ),
    Contract(
        "cpq_quote_lines",
        "salesforce",
        "SBQQ__QuoteLine__c",
        salesforce.CpqQuoteLineRecord,
        normalize.flatten_cpq_quote_lines,
    ),
    Contract(
        "cpq_subscriptions",
        "salesforce",
        "SBQQ__Subscription__c",
        salesforce.CpqSubscriptionRecord,
        normalize.flatten_cpq_subscriptions,
    ),
    Contract(
        "erp_invoices",
        "netsuite",
        "invoice",
        netsuite.ErpInvoiceRecord,
        _erp_invoices,
        partitioned=True,
    ),
    # Customer payments come back from SuiteQL in the same transaction shape as invoices.
    Contract(
        "erp_payments",
        "netsuite",
        "customer payment",
        netsuite.ErpInvoiceRecord,
        _erp_invoices,
        partitioned=True,
    ),
]


def validate_invoices(records: list[dict[str, object]]) -> ValidationOutcome:
    """Stripe invoices and their lines; a bad line puts its whole invoice in quarantine.

    A deleted draft is a fact, not a malformed record: it is left out of the check.
    """
    live, _deleted = normalize.split_deleted(records)
    heads, lines = normalize.flatten_stripe_invoices(live, po_source())
    largest = lines.groupby("source_id")["amount"].max()
    heads = heads.assign(largest_line_amount=heads["source_id"].map(largest).astype("Int64"))
    head = validate_frame(heads, stripe.StripeInvoiceRecord, system="stripe", obj="invoice")
    body = validate_frame(
        lines,
        stripe.StripeInvoiceLineRecord,
        system="stripe",
        obj="invoice line",
        field_prefix="lines.",
    )
    failures = pd.concat([head.failures, body.failures], ignore_index=True)
    return ValidationOutcome(len(heads), failures.reindex(columns=FAILURE_COLUMNS))


def _unreadable_field(
    record: object, validate: Callable[[list[dict[str, object]]], ValidationOutcome]
) -> str:
    """The top-level field without which ``record`` can be read, or ``(record)``."""
    if isinstance(record, dict):
        for key in sorted(record):
            try:
                validate([{k: v for k, v in record.items() if k != key}])
            except (AttributeError, TypeError, KeyError, ValueError):
                continue
            return str(key)
    return RECORD


def screened_outcome(
    ids: list[str],
    records: list[object],
    validate: Callable[[list[dict[str, object]]], ValidationOutcome],
    *,
    system: str,
    obj: str,
) -> ValidationOutcome:
    """``validate`` over the records that pass ``screen``, with the screen's failures added.

    A record whose shape its flattener cannot read (a list where an object is expected) is
    found by validating the batch record by record, and fails as ``readable_record``.
    """
    now = dt.datetime.now(dt.UTC)
    fit, screened = screen(
        ids, records, system=system, obj=obj, now=now, skew_s=future_skew_from_env()
    )
    kept = [records[n] for n in fit]
    try:
        outcome = validate(kept)  # type: ignore[arg-type]
        failures = [screened, outcome.failures]
    except (AttributeError, TypeError, KeyError, ValueError):
        failures = [screened]
        for n in fit:
            try:
                failures.append(validate([records[n]]).failures)  # type: ignore[list-item]
            except (AttributeError, TypeError, KeyError, ValueError) as e:
                source_id = ids[n]
                field = _unreadable_field(records[n], validate)
                failures.append(
                    pd.DataFrame(
                        [
                            {
                                "source_id": source_id,
                                "field": field,
                                "check_name": "readable_record",
                                "reason": f"{system} {obj} {source_id}: field {field} has a "
                                f"shape the contract cannot read ({type(e).__name__}: {e})",
                                "failure_value": None,
                            }
                        ],
                        columns=FAILURE_COLUMNS,
                    )
                )
    found = [f for f in failures if not f.empty]
    if not found:
        return ValidationOutcome(len(records), pd.DataFrame(columns=FAILURE_COLUMNS))
    merged = pd.concat(found, ignore_index=True).reindex(columns=FAILURE_COLUMNS)
    return ValidationOutcome(len(records), merged)


def _result(
    context: dg.AssetCheckExecutionContext,
    warehouse: WarehouseResource,
    settings: PipelineSettings,
    *,
    asset: str,
    system: str,
    obj: str,
    validate: Callable[[list[dict[str, object]]], ValidationOutcome],
    partitioned: bool,
) -> dg.AssetCheckResult:
    engine = warehouse.get_engine()
    if partitioned:
        date_from, date_to = date_bounds(context)
        with engine.connect() as conn:
            raw = load_payloads(conn, asset, date_from, date_to)
    else:
        # An incremental asset is checked on what this run landed (the cost follows the
        # change), and on what a run killed before its check left unchecked.
        date_from = date_to = ""
        with engine.connect() as conn:
            raw = load_unchecked_payloads(conn, asset, context.run.run_id)
    outcome = screened_outcome(
        list(raw["source_id"]), list(raw["payload"]), validate, system=system, obj=obj
    )
    partition_of = dict(zip(raw["source_id"], raw["partition_date"], strict=True))
    write_quarantine(
        engine,
        asset=asset,
        system=system,
        outcome=outcome,
        partition_of=partition_of,
        date_from=date_from,
        date_to=date_to,
        run_id=context.run.run_id,
        checked_ids=None if partitioned else set(raw["source_id"]),
    )
    if not partitioned:
        with engine.begin() as conn:
            mark_checked(conn, asset, [context.run.run_id, *raw["extraction_run_id"]])
    bad = len(outcome.bad_ids)
    share = outcome.bad_share
    if not partitioned:
        # An incremental run may land a handful of changed records; the share that decides
        # is the quarantine's against the whole table, not against this run's handful.
        with engine.connect() as conn:
            total = conn.execute(sa.text(f"SELECT COUNT(*) FROM {asset}")).scalar_one()
            held = conn.execute(
                sa.text("SELECT COUNT(DISTINCT source_id) FROM quarantine WHERE asset = :a"),
                {"a": asset},
            ).scalar_one()
        share = held / total if total else 0.0
        bad = held
    return dg.AssetCheckResult(
        passed=not settings.feed_is_broken(bad, share),
        severity=dg.AssetCheckSeverity.ERROR,
        metadata={
            "rows checked": outcome.rows,
            "rows quarantined": bad,
            "bad share": round(share, 4),
            "threshold": settings.max_bad_share,
            "minimum bad records": settings.min_bad_records,
            "failures by check": dg.MetadataValue.json(
                outcome.failures.groupby("check_name").size().astype(int).to_dict()
            ),
            "sample": sample(outcome.failures, ["source_id", "field", "check_name", "reason"]),
        },
    )


def _contract_check(contract: Contract) -> dg.AssetChecksDefinition:
    def validate(records: list[dict[str, object]]) -> ValidationOutcome:
        return validate_frame(
            contract.flatten(records), contract.model, system=contract.system, obj=contract.obj
        )

    @dg.asset_check(
        asset=contract.asset,
        name="contract",
        blocking=True,
        partitions_def=daily_partitions if contract.partitioned else None,
        description=f"{contract.model.__name__}: invalid rows go to quarantine with a reason.",
    )
    def check(
        context: dg.AssetCheckExecutionContext,
        warehouse: WarehouseResource,
        settings: PipelineSettings,
    ) -> dg.AssetCheckResult:
        return _result(
            context,
            warehouse,
            settings,
            asset=contract.asset,
            system=contract.system,
            obj=contract.obj,
            validate=validate,
            partitioned=contract.partitioned,
        )

    return check


contract_checks = [_contract_check(c) for c in CONTRACTS]


@dg.asset_check(
    asset="stripe_invoices",
    name="contract",
    blocking=True,
    partitions_def=daily_partitions,
    description="StripeInvoiceRecord and StripeInvoiceLineRecord: a bad line quarantines its "
    "invoice; lines and tax must tie out to the total.",
)
def stripe_invoices_contract(
    context: dg.AssetCheckExecutionContext,
    warehouse: WarehouseResource,
    settings: PipelineSettings,
) -> dg.AssetCheckResult:
    return _result(
        context,
        warehouse,
        settings,
        asset="stripe_invoices",
        system="stripe",
        obj="invoice",
        validate=validate_invoices,
        partitioned=True,
    )
