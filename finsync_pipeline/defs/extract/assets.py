"""Extract: source records exactly as each system sends them, one day partition at a time."""

import datetime as dt
import itertools
import json
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import dagster as dg
import pandera.pandas as pa
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from finsync_pipeline.errors import ConfigurationError, PermanentUpstreamError, RecordMissingError
from finsync_pipeline.landing import (
    amounts_by_currency,
    column_schema,
    iso_day,
    land_changes,
    land_records,
    load_pending_payloads,
    looked_up_invoice_of_intent,
    read_cursor,
    unix_day,
)
from finsync_pipeline.ledger import dumps
from finsync_pipeline.logic import normalize
from finsync_pipeline.logic.screen import CONFLICT_KEY, is_future, unix_instant
from finsync_pipeline.money import is_known_currency
from finsync_pipeline.partitions import daily_partitions, date_bounds, single_run, window
from finsync_pipeline.po_source import PO_SOURCE_ENV, po_source
from finsync_pipeline.resources.http import shape_error
from finsync_pipeline.resources.salesforce import SalesforceResource, soql_select
from finsync_pipeline.resources.settings import PipelineSettings, future_skew_from_env
from finsync_pipeline.resources.stripe import StripeClient, StripeResource
from finsync_pipeline.resources.warehouse import WarehouseResource
from finsync_pipeline.schemas import salesforce as salesforce_schemas
from finsync_pipeline.schemas import stripe as stripe_schemas

OWNERS = ["team:finance-data"]
SALESFORCE_LOOKBACK = dt.timedelta(minutes=10)
STRIPE_LOOKBACK_S = 600
# Stripe keeps events for 30 days; leave a day of margin before trusting an events cursor.
STRIPE_EVENT_RETENTION_S = 29 * 86400
# Events after which the object no longer exists: Stripe deletes a draft invoice for good (a
# finalized one can only be voided), and GET answers 404 from then on.
STRIPE_DELETION_EVENTS = {"invoice.deleted"}

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
# Salesforce CPQ (SBQQ__ namespace): the fields that fix a renewal's terms.
CPQ_QUOTE_FIELDS = [
    "Id",
    "Name",
    "SBQQ__Account__c",
    "SBQQ__Opportunity2__c",
    "SBQQ__Primary__c",
    "SBQQ__Status__c",
    "SBQQ__Type__c",
    "SBQQ__StartDate__c",
    "SBQQ__EndDate__c",
    "SBQQ__SubscriptionTerm__c",
    "SBQQ__NetAmount__c",
    "SBQQ__BillingFrequency__c",
    "SBQQ__PaymentTerms__c",
    "SBQQ__MasterContract__c",
    "CurrencyIsoCode",
    "CreatedDate",
    "SystemModstamp",
]
CPQ_QUOTE_LINE_FIELDS = [
    "Id",
    "Name",
    "SBQQ__Quote__c",
    "SBQQ__Number__c",
    "SBQQ__Product__c",
    "SBQQ__ProductCode__c",
    "SBQQ__Quantity__c",
    "SBQQ__PriorQuantity__c",
    "SBQQ__ListPrice__c",
    "SBQQ__NetPrice__c",
    "SBQQ__NetTotal__c",
    "SBQQ__StartDate__c",
    "SBQQ__EndDate__c",
    "SBQQ__SubscriptionTerm__c",
    "SBQQ__ProrateMultiplier__c",
    "SBQQ__BillingFrequency__c",
    "SBQQ__ChargeType__c",
    "SBQQ__Renewal__c",
    "SBQQ__Existing__c",
    "SBQQ__RenewedSubscription__c",
    "SBQQ__UpgradedSubscription__c",
    "Stripe_Subscription_Item_Id__c",
    "CurrencyIsoCode",
    "CreatedDate",
    "SystemModstamp",
]
CPQ_SUBSCRIPTION_FIELDS = [
    "Id",
    "Name",
    "SBQQ__Contract__c",
    "SBQQ__Account__c",
    "SBQQ__Product__c",
    "SBQQ__Quantity__c",
    "SBQQ__RenewalQuantity__c",
    "SBQQ__ListPrice__c",
    "SBQQ__NetPrice__c",
    "SBQQ__SubscriptionStartDate__c",
    "SBQQ__SubscriptionEndDate__c",
    "SBQQ__StartDate__c",
    "SBQQ__EndDate__c",
    "SBQQ__QuoteLine__c",
    "SBQQ__OriginalQuoteLine__c",
    "SBQQ__RevisedSubscription__c",
    "SBQQ__RootId__c",
    "SBQQ__TerminatedDate__c",
    "SBQQ__SubscriptionType__c",
    "SBQQ__BillingFrequency__c",
    "SBQQ__ProrateMultiplier__c",
    "Stripe_Subscription_Item_Id__c",
    "CurrencyIsoCode",
    "CreatedDate",
    "SystemModstamp",
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
    """The newest change time landed, never one beyond the allowed skew into the future: such
    a record is quarantined, and a cursor moved to it would skip every real change after."""
    now, skew_s = dt.datetime.now(dt.UTC), future_skew_from_env()
    seen = [
        r["source_updated_at"]
        for r in rows
        if r["source_updated_at"]
        and not is_future(dt.datetime.fromisoformat(r["source_updated_at"]), now, skew_s)
    ]
    return max([*seen, *([old] if old else [])], default=None)


@dataclass
class _StripeChanges:
    """What changed in Stripe since a stream's cursor: the latest version of each object."""

    objects: list[dict[str, Any]]
    mode: str
    next_cursor: str
    from_events: set[str]
    repeated_events: int = 0
    # Object id -> (Unix time of its deletion event, the object as it was when deleted).
    deleted: dict[str, tuple[int, dict[str, Any]]] = field(default_factory=dict)


def _event(event: Any) -> dict[str, Any]:
    """A listed Stripe event whose ``data.object`` is an object, or a shape error naming the
    event and the field: an event that does not say what changed cannot be applied, and
    skipping it would lose the change."""
    where = "GET /v1/events"
    if not isinstance(event, dict):
        raise shape_error("stripe", where, "data[]", "an event object", event)
    data = event.get("data")
    if not isinstance(data, dict) or not isinstance(data.get("object"), dict):
        found = data.get("object") if isinstance(data, dict) else data
        raise shape_error(
            "stripe", f"{where} event {event.get('id')}", "data.object", "an object", found
        )
    return event


def _read_stripe_changes(
    engine: Engine,
    client: StripeClient,
    *,
    stream: str,
    lister: Callable[..., Iterator[dict[str, Any]]],
    event_types: list[str],
    bounded: bool = False,
) -> _StripeChanges:
    """New objects by creation date, changed ones from the events list.

    When there is no cursor yet, or it is older than the 30 days Stripe keeps events, the
    events in between are gone: an unbounded stream (master data) lists everything again; a
    ``bounded`` one (invoice changes, whose history the daily extract already holds) lists by
    created date from its cursor (or from the start of the retention) and reads every event
    Stripe still keeps.
    """
    raw = read_cursor(engine, stream)
    cursor = json.loads(raw) if raw else None
    started = int(dt.datetime.now(dt.UTC).timestamp())
    retained_from = started - STRIPE_EVENT_RETENTION_S
    stale = cursor is None or int(cursor["events_from"]) < retained_from
    latest: dict[str, dict[str, Any]] = {}
    from_events: set[str] = set()
    deleted: dict[str, tuple[int, dict[str, Any]]] = {}
    repeated = 0
    events_from: int | None
    if not stale:
        assert cursor is not None
        listing = lister(created_gte=int(cursor["created"]) - STRIPE_LOOKBACK_S)
        events_from = int(cursor["events_from"]) - STRIPE_LOOKBACK_S
        mode = "incremental (created + events)"
    elif bounded:
        since = int(cursor["created"]) - STRIPE_LOOKBACK_S if cursor else retained_from
        listing = lister(created_gte=since)
        events_from = retained_from
        mode = "listing by created date + retained events"
    else:
        listing = lister()
        events_from = None
        mode = "full listing"
    listed_ids: set[str] = set()
    for obj in listing:
        key = str(obj.get("id")) if isinstance(obj, Mapping) else dumps(obj)
        if key in listed_ids and latest[key] != obj:
            # One id listed twice with different content: no order settles which is true, so
            # both land together and the contract check quarantines the conflict.
            previous = latest[key]
            held = previous.get(CONFLICT_KEY, [previous])
            latest[key] = {"id": key, CONFLICT_KEY: [*held, obj]}
            continue
        listed_ids.add(key)
        latest[key] = obj
    if events_from is not None:
        # Stripe lists events newest first; within one second only that order tells which
        # change came last (event ids are random). Replay the listing oldest first with a
        # stable sort by time. An event delivered twice (the sandbox's repeat_items fault)
        # counts once, at its oldest position: a later replay would bring back a stale snapshot.
        listed = [_event(e) for e in client.list_events(created_gte=events_from, types=event_types)]
        once = {str(e.get("id")): e for e in reversed(listed)}
        events = sorted(once.values(), key=lambda e: normalize.as_int(e.get("created")) or 0)
        repeated = len(listed) - len(once)
        for event in events:
            obj = event["data"]["object"]
            oid = str(obj.get("id"))
            if oid in deleted:
                continue  # a deletion is final: nothing stamped after it can bring the object back
            if event.get("type") in STRIPE_DELETION_EVENTS:
                deleted[oid] = (normalize.as_int(event.get("created")) or 0, obj)
            latest[oid] = obj
            from_events.add(oid)
    records = list(latest.values())
    # A creation time beyond the allowed skew into the future never moves the cursor: the
    # record is quarantined, and the cursor stays where real records put it.
    horizon = started + future_skew_from_env()
    newest = max(
        (
            int(r["created"])
            for r in records
            if isinstance(r, Mapping)
            and isinstance(r.get("created"), int)
            and not isinstance(r.get("created"), bool)
            and r["created"] <= horizon
        ),
        default=int(cursor["created"]) if cursor else retained_from,
    )
    next_cursor = json.dumps({"created": newest, "events_from": started})
    return _StripeChanges(records, mode, next_cursor, from_events, repeated, deleted)


def _stripe_changes(
    context: dg.AssetExecutionContext,
    warehouse: WarehouseResource,
    client: StripeClient,
    *,
    table: str,
    lister: Callable[..., Iterator[dict[str, Any]]],
    event_types: list[str],
    refetch: str | None = None,
) -> dg.MaterializeResult:
    """Keep a master-data table current from its cursor (see ``_read_stripe_changes``).

    ``refetch`` (an object path such as ``customers``) retrieves every object an event changed:
    an event's snapshot leaves out the includable fields a listing expands (a customer's
    ``tax_ids``), and landing it as is would lose them.
    """
    engine = warehouse.get_engine()
    changes = _read_stripe_changes(
        engine, client, stream=table, lister=lister, event_types=event_types
    )
    records = changes.objects
    if refetch is not None:
        records = [
            client.retrieve(refetch, oid)
            if (oid := str(obj.get("id"))) in changes.from_events and oid not in changes.deleted
            else obj
            for obj in records
        ]
    count = land_changes(
        engine,
        table=table,
        system="stripe",
        stream=table,
        records=records,
        id_key="id",
        created_date=_created,
        updated_at=_stripe_updated,
        new_cursor=lambda _rows: changes.next_cursor,
        run_id=context.run.run_id,
    )
    return dg.MaterializeResult(
        metadata={
            "dagster/row_count": count,
            "mode": changes.mode,
            "events delivered twice (applied once)": changes.repeated_events,
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


def _stripe_window(context: dg.AssetExecutionContext) -> dict[str, Any]:
    start, end = window(context)
    return {"created_gte": int(start.timestamp()), "created_lt": int(end.timestamp())}


def _stripe_updated(record: Mapping[str, Any]) -> str | None:
    transitions = record.get("status_transitions")
    moments = [
        record.get("created"),
        record.get("voided_at"),
        *(transitions.values() if isinstance(transitions, Mapping) else ()),
    ]
    # A time past year 9999 reads as none: the record's contract check quarantines it.
    readable = [m for v in moments if (m := unix_instant(v)) is not None and m.year < dt.MAXYEAR]
    return max(readable).isoformat() if readable else None


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
        refetch="customers",
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


def _stripe_day(
    context: dg.AssetExecutionContext,
    warehouse: WarehouseResource,
    client: StripeClient,
    *,
    table: str,
    records: Iterable[dict[str, Any]],
    flatten: normalize.Flattener,
    model: type[pa.DataFrameModel],
    amount: str,
) -> dg.MaterializeResult:
    """Land a day range of Stripe objects; report the amounts per currency of ``amount``."""
    fetched = list(records)
    landed = _land(
        context,
        warehouse,
        table=table,
        system="stripe",
        records=fetched,
        id_key="id",
        created_date=_created,
        updated_at=_stripe_updated,
        requests_made=lambda: client.requests_made,
    )
    frame = flatten(fetched)
    known = frame[
        frame["currency"].map(lambda c: isinstance(c, str) and is_known_currency(c)).astype(bool)
        & frame[amount].notna()
    ]
    return dg.MaterializeResult(
        metadata={
            **(landed.metadata or {}),
            "dagster/column_schema": column_schema(model),
            f"{amount} by currency": dg.MetadataValue.json(
                amounts_by_currency(known, amount, "currency")
            ),
        }
    )


@dg.asset(
    **_extract(
        "stripe_credit_notes",
        "stripe",
        "Stripe credit notes created in the window, each with every line: the "
        "downgrades, service credits and duplicates that reduce or refund an invoice.",
    )
)
def stripe_credit_notes(
    context: dg.AssetExecutionContext, stripe: StripeResource, warehouse: WarehouseResource
) -> dg.MaterializeResult:
    client = stripe.get_client()
    return _stripe_day(
        context,
        warehouse,
        client,
        table="stripe_credit_notes",
        records=client.list_credit_notes(**_stripe_window(context)),
        flatten=normalize.flatten_stripe_credit_notes,
        model=stripe_schemas.StripeCreditNoteRecord,
        amount="total",
    )


@dg.asset(
    **_extract(
        "stripe_refunds",
        "stripe",
        "Stripe refunds created in the window: money returned to a card, in full or in part.",
    )
)
def stripe_refunds(
    context: dg.AssetExecutionContext, stripe: StripeResource, warehouse: WarehouseResource
) -> dg.MaterializeResult:
    client = stripe.get_client()
    return _stripe_day(
        context,
        warehouse,
        client,
        table="stripe_refunds",
        records=client.list_refunds(**_stripe_window(context)),
        flatten=normalize.flatten_stripe_refunds,
        model=stripe_schemas.StripeRefundRecord,
        amount="amount",
    )


@dg.asset(
    **_extract(
        "stripe_charges",
        "stripe",
        "Stripe charges created in the window, declined attempts included: what each "
        "card payment captured and how much of it was refunded.",
    )
)
def stripe_charges(
    context: dg.AssetExecutionContext, stripe: StripeResource, warehouse: WarehouseResource
) -> dg.MaterializeResult:
    client = stripe.get_client()
    return _stripe_day(
        context,
        warehouse,
        client,
        table="stripe_charges",
        records=client.list_charges(**_stripe_window(context)),
        flatten=normalize.flatten_stripe_charges,
        model=stripe_schemas.StripeChargeRecord,
        amount="amount_refunded",
    )


# Events that change an invoice or the money around it (Stripe takes at most 20 types per
# request: this list holds 19).
INVOICE_CHANGE_EVENTS = [
    "invoice.created",
    "invoice.finalized",
    "invoice.updated",
    "invoice.paid",
    "invoice.payment_failed",
    "invoice.payment_succeeded",
    "invoice.voided",
    "invoice.marked_uncollectible",
    "invoice.deleted",
    "credit_note.created",
    "credit_note.updated",
    "credit_note.voided",
    "charge.refunded",
    "refund.created",
    "refund.updated",
    "refund.failed",
    "payment_intent.succeeded",
    "payment_intent.payment_failed",
    "payment_intent.canceled",
]
# Stripe object -> the day-partitioned extract table that holds it.
CHANGE_TABLES = {
    "invoice": "stripe_invoices",
    "credit_note": "stripe_credit_notes",
    "refund": "stripe_refunds",
    "charge": "stripe_charges",
    "payment_intent": "stripe_payments",
}
INVOICE_CHANGES_STREAM = "stripe_invoice_changes"


@dg.asset(
    **{
        **_incremental(
            "stripe_invoice_changes",
            "stripe",
            "Later changes to Stripe invoices and the money around them (paid, voided, "
            "credited, refunded, declined), read from the events list since a cursor and "
            "written back into the day partitions the objects were created in.",
        ),
        "deps": [
            "stripe_invoices",
            "stripe_credit_notes",
            "stripe_refunds",
            "stripe_charges",
            "stripe_payments",
        ],
    }
)
def stripe_invoice_changes(
    context: dg.AssetExecutionContext, stripe: StripeResource, warehouse: WarehouseResource
) -> dg.MaterializeResult:
    """Refetch what changed and upsert it under its created day.

    The day extracts see an invoice as it was when its day was extracted; a payment, void or
    credit note days later would stay unseen until that day is extracted again. This asset
    reads the change events since its cursor, refetches each changed invoice and credit note
    in full (an event embeds only 10 lines) and upserts every changed object into its day
    partition, so the next run of that day derives from the current state. A draft deleted
    in Stripe answers 404 to the refetch; when an ``invoice.deleted`` event explains it, its
    last snapshot lands marked ``"deleted": true`` and downstream treats it as gone. The
    metadata names the days touched per table and counts the deleted drafts recorded.
    """
    engine = warehouse.get_engine()
    client = stripe.get_client()

    def lister(created_gte: int | None = None) -> Iterator[dict[str, Any]]:
        return itertools.chain(
            client.list_invoices(created_gte=created_gte),
            client.list_credit_notes(created_gte=created_gte),
            client.list_refunds(created_gte=created_gte),
        )

    changes = _read_stripe_changes(
        engine,
        client,
        stream=INVOICE_CHANGES_STREAM,
        lister=lister,
        event_types=INVOICE_CHANGE_EVENTS,
        bounded=True,
    )
    by_table: dict[str, dict[str, dict[str, Any]]] = {t: {} for t in CHANGE_TABLES.values()}
    for obj in changes.objects:
        table = CHANGE_TABLES.get(str(obj.get("object")))
        if table is not None:
            by_table[table][str(obj.get("id"))] = obj
    # A credit note changes its invoice's credited amounts: refetch the invoice too.
    to_refetch = {
        ("invoices", oid) for oid in by_table["stripe_invoices"] if oid in changes.from_events
    } | {
        ("credit_notes", oid)
        for oid in by_table["stripe_credit_notes"]
        if oid in changes.from_events
    }
    to_refetch |= {
        ("invoices", str(note["invoice"]))
        for note in by_table["stripe_credit_notes"].values()
        if isinstance(note.get("invoice"), str)
    }
    deleted_at: dict[str, str] = {}
    for path, oid in sorted(to_refetch):
        try:
            fresh = client.retrieve(path, oid)
        except RecordMissingError as e:
            if path != "invoices" or oid not in changes.deleted:
                raise PermanentUpstreamError(
                    "stripe",
                    f"{path[:-1].replace('_', ' ')} {oid} is named by a change event, but "
                    f"GET /v1/{path}/{oid} answered 404 resource_missing and no deletion event "
                    "explains it; it cannot be refetched",
                    status=404,
                    code=e.code,
                    field="id",
                ) from e
            # Deleting a draft is routine: the 404 is the fact that it is gone. Its last
            # snapshot (the deletion event's) is kept, marked as Stripe marks deleted objects,
            # so downstream sees the draft as gone rather than as a record that vanished.
            when, snapshot = changes.deleted[oid]
            by_table["stripe_invoices"][oid] = {**snapshot, "deleted": True}
            deleted_at[oid] = dt.datetime.fromtimestamp(when, tz=dt.UTC).isoformat()
            continue
        by_table[CHANGE_TABLES[str(fresh.get("object"))]][oid] = fresh

    def updated_at(record: Mapping[str, Any]) -> str | None:
        return deleted_at.get(str(record.get("id"))) or _stripe_updated(record)

    landed: dict[str, int] = {}
    days: dict[str, list[str]] = {}
    for table, objects in by_table.items():
        records = list(objects.values())
        landed[table] = land_changes(
            engine,
            table=table,
            system="stripe",
            stream=INVOICE_CHANGES_STREAM,
            records=records,
            id_key="id",
            created_date=_created,
            updated_at=updated_at,
            new_cursor=lambda _rows: None,
            run_id=context.run.run_id,
        )
        days[table] = sorted({d for d in map(_created, records) if d})
    # The cursor moves only after every table holds the changes it covers.
    land_changes(
        engine,
        table="stripe_invoices",
        system="stripe",
        stream=INVOICE_CHANGES_STREAM,
        records=[],
        id_key="id",
        created_date=_created,
        updated_at=_stripe_updated,
        new_cursor=lambda _rows: changes.next_cursor,
        run_id=context.run.run_id,
    )
    statuses: dict[str, int] = {}
    for invoice in by_table["stripe_invoices"].values():
        key = "deleted" if invoice.get("deleted") is True else str(invoice.get("status"))
        statuses[key] = statuses.get(key, 0) + 1
    return dg.MaterializeResult(
        metadata={
            "dagster/row_count": sum(landed.values()),
            "mode": changes.mode,
            "events delivered twice (applied once)": changes.repeated_events,
            "rows by table": dg.MetadataValue.json(landed),
            "partition days touched": dg.MetadataValue.json(
                {table: touched for table, touched in days.items() if touched}
            ),
            "invoices by status": dg.MetadataValue.json(statuses),
            "objects refetched in full": len(to_refetch) - len(deleted_at),
            "deleted drafts recorded": len(deleted_at),
            "stripe requests": client.requests_made,
        }
    )


REFERENCED_INVOICES_STREAM = "stripe_invoice_payments"


def _ids_in(engine: Engine, sql: str, ids: Iterable[str]) -> set[str]:
    wanted = sorted(set(ids))
    if not wanted:
        return set()
    stmt = sa.text(sql).bindparams(sa.bindparam("ids", expanding=True))
    with engine.connect() as conn:
        return {str(r[0]) for r in conn.execute(stmt, {"ids": wanted})}


@dg.asset(
    **{
        **_incremental(
            "stripe_invoice_payments",
            "stripe",
            "The invoice a landed payment, refund or credit note refers to when the warehouse "
            "does not hold it (an invoice created before the first day finsync ran): looked "
            "up in Stripe's invoice payments, then the invoice itself landed under its own "
            "day, where the late-changes sensor carries it to the ERP.",
        ),
        "deps": ["invoices", "stripe_charges", "stripe_credit_notes", "stripe_refunds"],
    }
)
def stripe_invoice_payments(
    context: dg.AssetExecutionContext,
    stripe: StripeResource,
    warehouse: WarehouseResource,
    settings: PipelineSettings,
) -> dg.MaterializeResult:
    """Find the invoices outside the warehouse that this run's money refers to.

    Since API 2025-03-31 a charge names no invoice: the invoice is found through
    ``GET /v1/invoice_payments`` by payment intent. A credit note names its invoice; one the
    warehouse does not hold is retrieved. Lookups are bounded by
    ``PipelineSettings.stripe_max_lookups`` a run; the rest wait for the next run.
    """
    engine = warehouse.get_engine()
    client = stripe.get_client()
    with engine.connect() as conn:
        charges = load_pending_payloads(conn, "stripe_charges", "payments", "payment_id")
        refunds = load_pending_payloads(conn, "stripe_refunds", "refunds", "refund_id")
        notes = load_pending_payloads(conn, "stripe_credit_notes", "credit_notes", "credit_note_id")
        looked_up = looked_up_invoice_of_intent(conn)
    intents = {
        str(c["payment_intent"])
        for c in [*charges["payload"], *refunds["payload"]]
        if isinstance(c.get("payment_intent"), str) and c.get("status") != "failed"
    }
    intents -= _ids_in(
        engine, "SELECT payment_intent FROM invoice_payments WHERE payment_intent IN :ids", intents
    )
    intents -= set(looked_up)
    budget = settings.stripe_max_lookups
    asked = sorted(intents)[:budget]
    found = [pay for intent in asked for pay in client.invoice_payments_of_intent(intent)]
    wanted = {str(n["invoice"]) for n in notes["payload"] if isinstance(n.get("invoice"), str)}
    wanted |= {str(p["invoice"]) for p in found if isinstance(p.get("invoice"), str)}
    wanted -= _ids_in(engine, "SELECT invoice_id FROM invoices WHERE invoice_id IN :ids", wanted)
    wanted -= _ids_in(
        engine, "SELECT source_id FROM stripe_invoices WHERE source_id IN :ids", wanted
    )
    fetched, missing = [], []
    for invoice_id in sorted(wanted)[: max(budget - len(asked), 0)]:
        try:
            fetched.append(client.retrieve("invoices", invoice_id))
        except RecordMissingError:
            missing.append(invoice_id)
    for table, records in (("stripe_invoice_payments", found), ("stripe_invoices", fetched)):
        land_changes(
            engine,
            table=table,
            system="stripe",
            stream=REFERENCED_INVOICES_STREAM,
            records=records,
            id_key="id",
            created_date=_created,
            updated_at=_stripe_updated,
            new_cursor=lambda _rows: None,
            run_id=context.run.run_id,
        )
    return dg.MaterializeResult(
        metadata={
            "dagster/row_count": len(found),
            "payment intents looked up": len(asked),
            "left for the next run (over the limit)": len(intents) - len(asked),
            "invoices landed under their own day": dg.MetadataValue.json(
                {str(_created(i)): str(i["id"]) for i in fetched}
            ),
            "invoices Stripe no longer has": dg.MetadataValue.json(missing),
            "stripe requests": client.requests_made,
        }
    )


def _salesforce(
    context: dg.AssetExecutionContext,
    salesforce: SalesforceResource,
    warehouse: WarehouseResource,
    settings: PipelineSettings,
    *,
    table: str,
    sobject: str,
    fields: list[str],
    model: type[pa.DataFrameModel] | None = None,
) -> dg.MaterializeResult:
    """Land what changed in ``sobject`` since the cursor, within the org's quota share.

    When ``FINSYNC_PO_SOURCE`` names a field of ``sobject`` it is selected too, under a cursor
    of its own (``<table>+<field>``): records landed before the field was configured lack it,
    so the first run with it reads every record again. A field the org lacks (Salesforce's
    400 INVALID_FIELD) is a configuration error naming the setting and the field.

    The query is ordered by SystemModstamp and read one batch (one API call) at a time. Before
    each further call the org's usage (``Sforce-Limit-Info``) is held against
    ``settings.salesforce_max_quota_share`` of its daily limit: when the call would pass it,
    the extract stops, lands the batches read, moves the cursor only to the newest record
    landed, and says so in the metadata. The next run resumes from that cursor.
    """
    engine = warehouse.get_engine()
    client = salesforce.get_client()
    source = po_source()
    po_field = source.name if source.sobject == sobject else None
    stream = table if po_field is None else f"{table}+{po_field}"
    if po_field is not None and po_field not in fields:
        fields = [*fields, po_field]
    cursor = read_cursor(engine, stream)
    where: list[tuple[str, str, object]] = []
    if cursor is not None:
        # Records can commit with a SystemModstamp a little before the previous run's
        # high-water mark; re-reading a short lookback is cheap and the upsert is idempotent.
        since = dt.datetime.fromisoformat(cursor) - SALESFORCE_LOOKBACK
        where.append(("SystemModstamp", ">", since))
    soql = soql_select(sobject, fields, where=where, order_by="SystemModstamp, Id")
    share = settings.salesforce_max_quota_share
    records: list[dict[str, Any]] = []
    total = 0
    stopped = False
    try:
        for batch in client.query_batches(soql):
            records.extend(batch.records)
            total = batch.total_size
            if not batch.done and not client.next_call_within(share):
                stopped = True
                break
    except PermanentUpstreamError as e:
        if (
            po_field is None
            or e.code != "INVALID_FIELD"
            or (e.field or "").lower() != po_field.lower()
        ):
            raise
        raise ConfigurationError(
            f"{PO_SOURCE_ENV} names field {po_field} of the Salesforce {sobject}, which the org "
            f"does not have (INVALID_FIELD): set {PO_SOURCE_ENV} to the API name of the "
            f"{sobject} field that holds the PO"
        ) from e
    count = land_changes(
        engine,
        table=table,
        system="salesforce",
        stream=stream,
        records=records,
        id_key="Id",
        created_date=lambda r: iso_day(r.get("CreatedDate")),
        updated_at=lambda r: _sf_instant(r.get("SystemModstamp")),
        new_cursor=lambda rows: _max_cursor(cursor, rows),
        run_id=context.run.run_id,
    )
    metadata: dict[str, Any] = {
        "dagster/row_count": count,
        "mode": "incremental" if cursor else "full (first run)",
        "cursor (SystemModstamp)": read_cursor(engine, stream) or "",
        "salesforce requests": client.requests_made,
        "stopped at quota share": stopped,
        "max quota share": share,
    }
    usage = client.api_usage
    if usage is not None:
        metadata["salesforce daily API usage"] = f"{usage[0]}/{usage[1]}"
    if stopped:
        metadata["records left for the next run"] = total - count
        context.log.warning(
            f"{table}: stopped at quota share {share:.0%} of the org's daily API limit "
            f"(usage {usage[0] if usage else '?'}/{usage[1] if usage else '?'}); landed "
            f"{count} of {total} records, the next run resumes from the cursor"
        )
    if model is not None:
        metadata["dagster/column_schema"] = column_schema(model)
    if po_field is not None:
        metadata["PO field (FINSYNC_PO_SOURCE)"] = po_field
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
    settings: PipelineSettings,
) -> dg.MaterializeResult:
    return _salesforce(
        context,
        salesforce,
        warehouse,
        settings,
        table="salesforce_accounts",
        sobject="Account",
        fields=salesforce_schemas.ACCOUNT_FIELDS,
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
    settings: PipelineSettings,
) -> dg.MaterializeResult:
    return _salesforce(
        context,
        salesforce,
        warehouse,
        settings,
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
    settings: PipelineSettings,
) -> dg.MaterializeResult:
    return _salesforce(
        context,
        salesforce,
        warehouse,
        settings,
        table="salesforce_contracts",
        sobject="Contract",
        fields=CONTRACT_FIELDS,
    )


def _cpq_asset(
    name: str, sobject: str, fields: list[str], model: type[pa.DataFrameModel], description: str
) -> dg.AssetsDefinition:
    @dg.asset(**_incremental(name, "salesforce", description))
    def cpq_asset(
        context: dg.AssetExecutionContext,
        salesforce: SalesforceResource,
        warehouse: WarehouseResource,
        settings: PipelineSettings,
    ) -> dg.MaterializeResult:
        if not settings.source_on("cpq"):
            # An org without Salesforce CPQ has no SBQQ objects: a query would be refused.
            return dg.MaterializeResult(
                metadata={
                    "dagster/row_count": 0,
                    "dagster/column_schema": column_schema(model),
                    "source": "switched off (FINSYNC_SOURCES_OFF)",
                }
            )
        return _salesforce(
            context,
            salesforce,
            warehouse,
            settings,
            table=name,
            sobject=sobject,
            fields=fields,
            model=model,
        )

    return cpq_asset


cpq_quotes = _cpq_asset(
    "cpq_quotes",
    "SBQQ__Quote__c",
    CPQ_QUOTE_FIELDS,
    salesforce_schemas.CpqQuoteRecord,
    "Every Salesforce CPQ quote, kept current by SystemModstamp: the new business, renewal "
    "and amendment quotes whose primary, accepted version fixes a contract term.",
)
cpq_quote_lines = _cpq_asset(
    "cpq_quote_lines",
    "SBQQ__QuoteLine__c",
    CPQ_QUOTE_LINE_FIELDS,
    salesforce_schemas.CpqQuoteLineRecord,
    "Every Salesforce CPQ quote line, kept current by SystemModstamp: product, quantity and "
    "net price per billing period as quoted, with the subscription each renews or amends.",
)
cpq_subscriptions = _cpq_asset(
    "cpq_subscriptions",
    "SBQQ__Subscription__c",
    CPQ_SUBSCRIPTION_FIELDS,
    salesforce_schemas.CpqSubscriptionRecord,
    "Every Salesforce CPQ subscription, kept current by SystemModstamp: what each contract "
    "entitles the customer to (product, quantity, price, dates), amendment deltas included.",
)
