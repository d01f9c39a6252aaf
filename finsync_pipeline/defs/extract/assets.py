"""Extract: source records exactly as each system sends them, one day partition at a time."""

import datetime as dt
import json
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

import dagster as dg

from finsync_pipeline.landing import iso_day, land_changes, land_records, read_cursor, unix_day
from finsync_pipeline.logic.normalize import netsuite_date
from finsync_pipeline.partitions import daily_partitions, date_bounds, single_run, window
from finsync_pipeline.resources.netsuite import NetSuiteResource, suiteql_literal
from finsync_pipeline.resources.salesforce import SalesforceResource, soql_select
from finsync_pipeline.resources.stripe import StripeClient, StripeResource
from finsync_pipeline.resources.warehouse import WarehouseResource

OWNERS = ["team:finance-data"]
SALESFORCE_LOOKBACK = dt.timedelta(minutes=10)
STRIPE_LOOKBACK_S = 600
# Stripe keeps events for 30 days; leave a day of margin before trusting an events cursor.
STRIPE_EVENT_RETENTION_S = 29 * 86400

ACCOUNT_FIELDS = [
    "Id",
    "Name",
    "ParentId",
    "Type",
    "BillingStreet",
    "BillingCity",
    "BillingState",
    "BillingPostalCode",
    "BillingCountry",
    "CurrencyIsoCode",
    "Legal_Entity__c",
    "PO_Required__c",
    "CreatedDate",
    "LastModifiedDate",
    "SystemModstamp",
]
OPPORTUNITY_FIELDS = [
    "Id",
    "Name",
    "AccountId",
    "StageName",
    "CloseDate",
    "Amount",
    "Type",
    "IsClosed",
    "IsWon",
    "ContractId",
    "CurrencyIsoCode",
    "CreatedDate",
    "SystemModstamp",
]
CONTRACT_FIELDS = [
    "Id",
    "AccountId",
    "Status",
    "StartDate",
    "EndDate",
    "ContractTerm",
    "ContractNumber",
    "ActivatedDate",
    "CreatedDate",
    "SystemModstamp",
]
ERP_INVOICE_COLUMNS = [
    "id",
    "externalid",
    "tranid",
    "entity",
    "trandate",
    "currency",
    "subsidiary",
    "foreigntotal",
    "status",
    "memo",
    "lastmodifieddate",
]


def _extract(name: str, system: str, description: str) -> dict[str, Any]:
    return {
        "name": name,
        "group_name": "extract",
        "partitions_def": daily_partitions,
        "backfill_policy": single_run,
        "kinds": {system, "python"},
        "owners": OWNERS,
        "description": description,
        "pool": f"{system}_api",
    }


def _incremental(name: str, system: str, description: str) -> dict[str, Any]:
    # Master data is not partitioned: it is kept current from a cursor, so a day's run reads
    # only what changed, whatever the size of the history.
    spec = _extract(name, system, description)
    del spec["partitions_def"], spec["backfill_policy"]
    return spec


def _sf_instant(value: Any) -> str | None:
    """Salesforce's 2025-03-01T10:00:00.000+0000 as an ISO UTC instant."""
    if not isinstance(value, str):
        return None
    try:
        return dt.datetime.strptime(value, "%Y-%m-%dT%H:%M:%S.%f%z").astimezone(dt.UTC).isoformat()
    except ValueError:
        return None


def _max_cursor(old: str | None, rows: list[dict[str, Any]]) -> str | None:
    seen = [r["source_updated_at"] for r in rows if r["source_updated_at"]]
    return max([*seen, *([old] if old else [])], default=None)


def _stripe_changes(
    context: dg.AssetExecutionContext,
    warehouse: WarehouseResource,
    client: StripeClient,
    *,
    table: str,
    lister: Callable[..., Iterator[dict[str, Any]]],
    event_types: list[str],
) -> dg.MaterializeResult:
    """New objects by creation date, changed ones from the events list; a full listing when
    there is no cursor yet or the cursor is older than the 30 days Stripe keeps events."""
    engine = warehouse.get_engine()
    raw = read_cursor(engine, table)
    cursor = json.loads(raw) if raw else None
    started = int(dt.datetime.now(dt.UTC).timestamp())
    full = cursor is None or started - int(cursor["events_from"]) > STRIPE_EVENT_RETENTION_S
    latest: dict[str, dict[str, Any]] = {}
    if full:
        for obj in lister():
            latest[str(obj.get("id"))] = obj
    else:
        assert cursor is not None
        for obj in lister(created_gte=int(cursor["created"]) - STRIPE_LOOKBACK_S):
            latest[str(obj.get("id"))] = obj
        events = sorted(
            client.list_events(
                created_gte=int(cursor["events_from"]) - STRIPE_LOOKBACK_S, types=event_types
            ),
            key=lambda e: (e.get("created", 0), str(e.get("id"))),
        )
        for event in events:
            obj = (event.get("data") or {}).get("object") or {}
            latest[str(obj.get("id"))] = obj
    records = list(latest.values())
    newest = max(
        (int(r["created"]) for r in records if isinstance(r.get("created"), int)),
        default=int(cursor["created"]) if cursor else 0,
    )
    next_cursor = json.dumps({"created": newest, "events_from": started})
    count = land_changes(
        engine,
        table=table,
        system="stripe",
        stream=table,
        records=records,
        id_key="id",
        created_date=_created,
        updated_at=_stripe_updated,
        new_cursor=lambda _rows: next_cursor,
        run_id=context.run.run_id,
    )
    return dg.MaterializeResult(
        metadata={
            "dagster/row_count": count,
            "mode": "full listing" if full else "incremental (created + events)",
            "stripe requests": client.requests_made,
        }
    )


def _land(
    context: dg.AssetExecutionContext,
    warehouse: WarehouseResource,
    *,
    table: str,
    system: str,
    records: Iterable[Mapping[str, Any]],
    id_key: str,
    created_date: Callable[[Mapping[str, Any]], str | None],
    updated_at: Callable[[Mapping[str, Any]], str | None],
    requests_made: Callable[[], int],
) -> dg.MaterializeResult:
    date_from, date_to = date_bounds(context)
    count = land_records(
        warehouse.get_engine(),
        table=table,
        system=system,
        records=records,
        id_key=id_key,
        created_date=created_date,
        updated_at=updated_at,
        date_from=date_from,
        date_to=date_to,
        run_id=context.run.run_id,
    )
    return dg.MaterializeResult(
        metadata={
            "dagster/row_count": count,
            "partitions": len(context.partition_keys),
            "window": f"[{date_from}, {date_to})",
            f"{system} requests": requests_made(),
        }
    )


def _stripe_window(context: dg.AssetExecutionContext) -> dict[str, int]:
    start, end = window(context)
    return {"created_gte": int(start.timestamp()), "created_lt": int(end.timestamp())}


def _stripe_updated(record: Mapping[str, Any]) -> str | None:
    transitions = record.get("status_transitions") or {}
    latest = max(
        (v for v in [record.get("created"), *transitions.values()] if isinstance(v, int)),
        default=None,
    )
    if latest is None:
        return None
    return dt.datetime.fromtimestamp(latest, tz=dt.UTC).isoformat()


def _created(record: Mapping[str, Any]) -> str | None:
    return unix_day(record.get("created"))


@dg.asset(
    **_incremental(
        "stripe_customers",
        "stripe",
        "Every Stripe customer, kept current incrementally: who is billed, and "
        "the CRM account each bills for (metadata.salesforce_account_id).",
    )
)
def stripe_customers(
    context: dg.AssetExecutionContext, stripe: StripeResource, warehouse: WarehouseResource
) -> dg.MaterializeResult:
    client = stripe.get_client()
    return _stripe_changes(
        context,
        warehouse,
        client,
        table="stripe_customers",
        lister=client.list_customers,
        event_types=["customer.created", "customer.updated"],
    )


@dg.asset(
    **_incremental(
        "stripe_subscriptions",
        "stripe",
        "Every Stripe subscription, kept current incrementally, with its items "
        "and the items' current periods.",
    )
)
def stripe_subscriptions(
    context: dg.AssetExecutionContext, stripe: StripeResource, warehouse: WarehouseResource
) -> dg.MaterializeResult:
    client = stripe.get_client()
    return _stripe_changes(
        context,
        warehouse,
        client,
        table="stripe_subscriptions",
        lister=client.list_subscriptions,
        event_types=[
            "customer.subscription.created",
            "customer.subscription.updated",
            "customer.subscription.deleted",
        ],
    )


@dg.asset(
    **_extract(
        "stripe_invoices",
        "stripe",
        "Stripe invoices created in the window, each with every line: an invoice "
        "with more than 10 lines is paged, never truncated.",
    )
)
def stripe_invoices(
    context: dg.AssetExecutionContext, stripe: StripeResource, warehouse: WarehouseResource
) -> dg.MaterializeResult:
    client = stripe.get_client()
    return _land(
        context,
        warehouse,
        table="stripe_invoices",
        system="stripe",
        records=client.list_invoices(**_stripe_window(context)),
        id_key="id",
        created_date=_created,
        updated_at=_stripe_updated,
        requests_made=lambda: client.requests_made,
    )


@dg.asset(
    **_extract(
        "stripe_payments",
        "stripe",
        "Stripe payment intents created in the window: the money collected.",
    )
)
def stripe_payments(
    context: dg.AssetExecutionContext, stripe: StripeResource, warehouse: WarehouseResource
) -> dg.MaterializeResult:
    client = stripe.get_client()
    return _land(
        context,
        warehouse,
        table="stripe_payments",
        system="stripe",
        records=client.list_payment_intents(**_stripe_window(context)),
        id_key="id",
        created_date=_created,
        updated_at=_stripe_updated,
        requests_made=lambda: client.requests_made,
    )


def _salesforce(
    context: dg.AssetExecutionContext,
    salesforce: SalesforceResource,
    warehouse: WarehouseResource,
    *,
    table: str,
    sobject: str,
    fields: list[str],
) -> dg.MaterializeResult:
    engine = warehouse.get_engine()
    client = salesforce.get_client()
    cursor = read_cursor(engine, table)
    where: list[tuple[str, str, object]] = []
    if cursor is not None:
        # Records can commit with a SystemModstamp a little before the previous run's
        # high-water mark; re-reading a short lookback is cheap and the upsert is idempotent.
        since = dt.datetime.fromisoformat(cursor) - SALESFORCE_LOOKBACK
        where.append(("SystemModstamp", ">", since))
    soql = soql_select(sobject, fields, where=where, order_by="SystemModstamp, Id")
    count = land_changes(
        engine,
        table=table,
        system="salesforce",
        stream=table,
        records=client.query(soql),
        id_key="Id",
        created_date=lambda r: iso_day(r.get("CreatedDate")),
        updated_at=lambda r: _sf_instant(r.get("SystemModstamp")),
        new_cursor=lambda rows: _max_cursor(cursor, rows),
        run_id=context.run.run_id,
    )
    metadata: dict[str, Any] = {
        "dagster/row_count": count,
        "mode": "incremental" if cursor else "full (first run)",
        "cursor (SystemModstamp)": read_cursor(engine, table) or "",
        "salesforce requests": client.requests_made,
    }
    usage = client.api_usage
    if usage is not None:
        metadata["salesforce daily API usage"] = f"{usage[0]}/{usage[1]}"
    return dg.MaterializeResult(metadata=metadata)


@dg.asset(
    **_incremental(
        "salesforce_accounts",
        "salesforce",
        "Every Salesforce account, kept current by SystemModstamp: the customer "
        "hierarchy (ParentId), legal entity, currency and PO requirement.",
    )
)
def salesforce_accounts(
    context: dg.AssetExecutionContext,
    salesforce: SalesforceResource,
    warehouse: WarehouseResource,
) -> dg.MaterializeResult:
    return _salesforce(
        context,
        salesforce,
        warehouse,
        table="salesforce_accounts",
        sobject="Account",
        fields=ACCOUNT_FIELDS,
    )


@dg.asset(
    **_incremental(
        "salesforce_opportunities",
        "salesforce",
        "Every Salesforce opportunity, kept current by SystemModstamp: new "
        "business, renewals (Type = Renewal) and their stage.",
    )
)
def salesforce_opportunities(
    context: dg.AssetExecutionContext,
    salesforce: SalesforceResource,
    warehouse: WarehouseResource,
) -> dg.MaterializeResult:
    return _salesforce(
        context,
        salesforce,
        warehouse,
        table="salesforce_opportunities",
        sobject="Opportunity",
        fields=OPPORTUNITY_FIELDS,
    )


@dg.asset(
    **_incremental(
        "salesforce_contracts",
        "salesforce",
        "Every Salesforce contract, kept current by SystemModstamp: the terms "
        "subscriptions run under.",
    )
)
def salesforce_contracts(
    context: dg.AssetExecutionContext,
    salesforce: SalesforceResource,
    warehouse: WarehouseResource,
) -> dg.MaterializeResult:
    return _salesforce(
        context,
        salesforce,
        warehouse,
        table="salesforce_contracts",
        sobject="Contract",
        fields=CONTRACT_FIELDS,
    )


@dg.asset(
    **{
        **_extract(
            "erp_invoices",
            "netsuite",
            "NetSuite invoices dated in the window, read back through SuiteQL after "
            "posting: what the ERP really holds, for reconciliation.",
        ),
        "deps": ["erp_postings"],
    }
)
def erp_invoices(
    context: dg.AssetExecutionContext, netsuite: NetSuiteResource, warehouse: WarehouseResource
) -> dg.MaterializeResult:
    start, end = window(context)
    query = (
        f"SELECT {', '.join(ERP_INVOICE_COLUMNS)} FROM transaction "
        f"WHERE type = {suiteql_literal('CustInvc')} "
        f"AND trandate >= {suiteql_literal(start.date())} "
        f"AND trandate < {suiteql_literal(end.date())} ORDER BY id"
    )
    client = netsuite.get_client()
    return _land(
        context,
        warehouse,
        table="erp_invoices",
        system="netsuite",
        records=({**r, "id": str(r.get("id"))} for r in client.suiteql(query)),
        id_key="id",
        created_date=lambda r: netsuite_date(r.get("trandate")),
        updated_at=lambda r: r.get("lastmodifieddate"),
        requests_made=lambda: client.requests_made,
    )
