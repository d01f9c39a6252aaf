"""Derive what the ERP should hold, and the finance exceptions that stop a document.

Pure functions over DataFrames. A document that cannot be derived cleanly is never dropped: it
becomes a finance exception with its kind, owner queue and a readable detail, and the
exception resolves itself once a later run derives the document cleanly.
"""

from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import pandas as pd

from finsync_pipeline.logic.canonical import UNKNOWN_PARENT
from finsync_pipeline.master_data import MasterData
from finsync_pipeline.money import to_decimal
from finsync_pipeline.po_source import DEFAULT_PO_SOURCE, PoSource

ERP = "netsuite"
LIVE_INVOICE_STATUSES = ("open", "paid", "uncollectible")

EXCEPTION_COLUMNS = [
    "kind",
    "source_system",
    "source_id",
    "severity",
    "owner_queue",
    "partition_date",
    "correlation_id",
    "legal_entity",
    "detail",
]

# kind -> (severity, owner queue). Owners are the teams that can remove the cause.
EXCEPTION_KINDS: dict[str, tuple[str, str]] = {
    "unknown_legal_entity": ("high", "revops"),
    "unknown_parent": ("medium", "revops"),
    "unmatched_customer": ("high", "revops"),
    "customer_held": ("medium", "revops"),
    "unmapped_product": ("high", "finance_ops"),
    "unmapped_currency": ("high", "finance_ops"),
    "unmapped_discount": ("high", "finance_ops"),
    "missing_po": ("medium", "finance_ops"),
    "posting_rejected": ("high", "finance_ops"),
    "posting_dead": ("high", "finance_ops"),
    "posted_document_changed": ("medium", "finance_ops"),
    "unknown_usage_subject": ("high", "revops"),
    "tax_mismatch": ("high", "tax"),
    "tax_address_missing": ("medium", "tax"),
    "unmatched_payment": ("high", "finance_ops"),
    "customer_balance_unmatched": ("high", "finance_ops"),
    "payment_held": ("medium", "finance_ops"),
    "credit_note_held": ("medium", "finance_ops"),
    "unmatched_refund": ("high", "finance_ops"),
    "refund_held": ("medium", "finance_ops"),
    "refund_reversed": ("high", "finance_ops"),
    "refund_account_unmapped": ("high", "finance_ops"),
    "uncollectible_invoice": ("medium", "finance_ops"),
    "paid_out_of_band": ("medium", "finance_ops"),
    "credit_note_voided": ("high", "finance_ops"),
    "renewal_mismatch": ("medium", "revops"),
}


def customer_external_id(customer_key: str) -> str:
    """The NetSuite external id of a customer: deterministic from its Salesforce account id."""
    return f"SF_{customer_key}"


def invoice_external_id(invoice_id: str) -> str:
    """The NetSuite external id of an invoice: deterministic from its Stripe invoice id."""
    return f"STRIPE_{invoice_id}"


def net_negative_external_id(invoice_id: str) -> str:
    """The NetSuite external id of the credit memo a net-negative Stripe invoice becomes.

    Its own prefix: a Stripe credit note's memo is ``STRIPE_cn_...`` and an invoice's
    ``STRIPE_in_...``, and Stripe ids are letters and digits after their prefix, so
    ``STRIPE_CREDIT_in_...`` can be neither, whatever NetSuite's rules for external ids
    shared across transaction types (and in any letter case).
    """
    return f"STRIPE_CREDIT_{invoice_id}"


def balance_application_external_id(invoice_id: str) -> str:
    """The NetSuite external id of the customer payment that applies the customer's credit
    balance to a Stripe invoice (one per invoice: Stripe applies the balance once, at
    finalization)."""
    return f"BALANCE_{invoice_id}"


def ref(doc_type: str, external_id: str) -> dict[str, list[str]]:
    """A reference to another document in the same ERP, resolved to its internal id at posting."""
    return {"$ref": [doc_type, external_id]}


@dataclass
class ExceptionRows:
    """Finance exceptions found by a pure derive or reconcile step, as EXCEPTION_COLUMNS rows;
    severity and owner queue come from the kind."""

    rows: list[dict[str, Any]]

    def add(self, kind: str, system: str, source_id: str, detail: str, **extra: Any) -> None:
        severity, owner = EXCEPTION_KINDS[kind]
        self.rows.append(
            {
                "kind": kind,
                "source_system": system,
                "source_id": source_id,
                "severity": severity,
                "owner_queue": owner,
                "partition_date": extra.get("partition_date"),
                "correlation_id": extra.get("correlation_id"),
                "legal_entity": extra.get("legal_entity"),
                "detail": detail,
            }
        )

    def frame(self) -> pd.DataFrame:
        return pd.DataFrame(self.rows, columns=EXCEPTION_COLUMNS)


def _na(value: Any) -> bool:
    return value is None or bool(pd.isna(value))


# Fields of a posted invoice that reference other paperwork (the customer's PO, a note to the
# reader) and carry no amount, date, party or line: a change to them needs no compensating
# document, and an invoice already posted keeps what it was posted with.
REFERENCE_FIELDS = ("otherRefNum", "memo")


def only_references_changed(posted: Mapping[str, Any], derived: Mapping[str, Any]) -> bool:
    """Whether an invoice derived again differs from what was posted only in REFERENCE_FIELDS.

    Until finsync read POs, ``otherRefNum`` carried the Stripe invoice number; invoices posted
    then would otherwise all look changed once it carries the PO (or nothing).
    """

    def rest(payload: Mapping[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in payload.items() if k not in REFERENCE_FIELDS}

    return rest(posted) == rest(derived)


def derive_customer_upserts(
    customers: pd.DataFrame, master: MasterData
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """ERP customer upserts (parents before children) and the customers that cannot be placed."""
    problems = ExceptionRows([])
    rows: list[dict[str, Any]] = []
    placed: set[str] = set()
    ordered = customers.sort_values(["hierarchy_depth", "customer_key"])
    for c in ordered.itertuples(index=False):
        key = str(c.customer_key)
        extra = {"correlation_id": c.correlation_id, "legal_entity": c.legal_entity}
        entity = master.legal_entities.get(str(c.legal_entity))
        parent = None if _na(c.parent_customer_key) else str(c.parent_customer_key)
        if c.hierarchy_depth == UNKNOWN_PARENT:
            problems.add(
                "unknown_parent",
                "salesforce",
                key,
                f"Account {key} has ParentId {parent}, which is not a known account "
                "(missing, quarantined or a cycle)",
                **extra,
            )
            continue
        if entity is None:
            problems.add(
                "unknown_legal_entity",
                "salesforce",
                key,
                f"Account {key} field Legal_Entity__c is {c.legal_entity!r}, "
                "which is not in legal_entities.csv",
                **extra,
            )
            continue
        if parent is not None and parent not in placed:
            problems.add(
                "unknown_parent",
                "salesforce",
                key,
                f"Account {key} waits for its parent {parent}, which is held by its own exception",
                **extra,
            )
            continue
        currency = str(c.currency) if not _na(c.currency) else entity.currency
        currency_id = master.netsuite_currency_ids.get(currency)
        if currency_id is None:
            problems.add(
                "unmapped_currency",
                "salesforce",
                key,
                f"Account {key} currency {currency} has no NetSuite currency in currencies.csv",
                **extra,
            )
            continue
        external_id = customer_external_id(key)
        payload: dict[str, Any] = {
            "externalId": external_id,
            "companyName": str(c.name),
            "isPerson": False,
            "subsidiary": {"id": entity.netsuite_subsidiary_id},
            "currency": {"id": currency_id},
            "comments": f"finsync {c.correlation_id} salesforce Account {key}",
        }
        if parent is not None:
            payload["parent"] = ref("customer", customer_external_id(parent))
        placed.add(key)
        rows.append(
            {
                "erp": ERP,
                "external_id": external_id,
                "customer_key": key,
                "parent_external_id": None if parent is None else customer_external_id(parent),
                "hierarchy_depth": int(c.hierarchy_depth),
                "subsidiary_id": entity.netsuite_subsidiary_id,
                "currency_id": currency_id,
                "payload": payload,
                "correlation_id": c.correlation_id,
            }
        )
    upserts = pd.DataFrame(
        rows,
        columns=[
            "erp",
            "external_id",
            "customer_key",
            "parent_external_id",
            "hierarchy_depth",
            "subsidiary_id",
            "currency_id",
            "payload",
            "correlation_id",
        ],
    )
    return upserts, problems.frame()


def derive_invoice_ready(
    invoices: pd.DataFrame,
    lines: pd.DataFrame,
    upserts: pd.DataFrame,
    customers: pd.DataFrame,
    master: MasterData,
    *,
    po_source: PoSource = DEFAULT_PO_SOURCE,
    in_erp: frozenset[str] = frozenset(),
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Invoice-ready transactions for the ERP, and the invoices that must wait.

    Only live invoices (open, paid, uncollectible) are posted; drafts are not final and voids
    before posting never reach the ERP.

    The customer's purchase order (``po_number``, read from ``po_source``) goes in
    ``otherRefNum``, NetSuite's PO field; an invoice without one leaves it out, and the Stripe
    invoice number is named in the memo. An invoice of an account with ``PO_Required__c``
    (``po_required``) and no PO is a ``missing_po`` exception and is not derived: the customer
    would refuse to pay it. Its detail says where finance sets the PO: the invoice's
    ``po_where`` when the frame has one (a Salesforce source names the Opportunity or quote and
    the field, ``logic.purchase_orders``), else ``po_source.where``. ``customers`` without a
    ``po_required`` column require no PO.
    An invoice already in the ERP (``in_erp``: posted or being posted, by invoice id) is past
    holding: it is derived as before, so what applies to it (its payments) still does.

    The ERP document states the invoice as billing does, to the minor unit:

    - one line per billing line, at its amount net of the tax inside a tax-inclusive price
      (and before discounts);
    - one discount line on the mapped discount item (``netsuite_discount_item_id``), negative,
      for every discount of the invoice (coupons and line discounts, as Stripe totals them);
    - one tax line for every tax, inclusive and exclusive.

    So lines + discount + tax == subtotal - inclusive tax - discount + tax == total. A 100%-off
    invoice posts as a zero invoice: its lines, a discount of the same amount, no tax.

    A net-negative invoice (a downgrade whose proration credit exceeds its charges) becomes a
    credit memo instead (``doc_type`` credit_memo): NetSuite refuses a negative invoice, and
    Stripe put the credit on the customer's balance, so the ERP holds it as credit on account
    (unapplied) until a later invoice draws on it (``derive_balance_applications``).
    """
    problems = ExceptionRows([])
    placed = dict(zip(upserts["customer_key"], upserts["external_id"], strict=True))
    entity_of: Mapping[str, Any] = dict(
        zip(customers["customer_key"], customers["legal_entity"], strict=True)
    )
    needs_po: set[str] = (
        set(customers.loc[customers["po_required"].fillna(0).astype(int) == 1, "customer_key"])
        if "po_required" in customers
        else set()
    )
    lines_of = {k: g.sort_values("line_number") for k, g in lines.groupby("invoice_id")}
    rows: list[dict[str, Any]] = []
    live = invoices[invoices["status"].isin(LIVE_INVOICE_STATUSES)]
    for inv in live.sort_values("invoice_id").itertuples(index=False):
        invoice_id = str(inv.invoice_id)
        key = None if _na(inv.customer_key) else str(inv.customer_key)
        legal_entity = None if key is None else entity_of.get(key)
        extra = {
            "partition_date": inv.partition_date,
            "correlation_id": inv.correlation_id,
            "legal_entity": None if _na(legal_entity) else legal_entity,
        }
        if key is None or key not in entity_of:
            problems.add(
                "unmatched_customer",
                "stripe",
                invoice_id,
                f"Stripe invoice {invoice_id} bills customer {inv.stripe_customer_id}, "
                "whose metadata.salesforce_account_id matches no valid account",
                **extra,
            )
            continue
        if key not in placed:
            problems.add(
                "customer_held",
                "stripe",
                invoice_id,
                f"Stripe invoice {invoice_id} waits for its customer {key}, which is "
                "held by its own exception",
                **extra,
            )
            continue
        po = getattr(inv, "po_number", None)
        po = None if _na(po) or not str(po).strip() else str(po).strip()
        # A net-negative invoice is the customer's credit (a credit memo), not a bill to
        # them: it needs no purchase order.
        owes = int(inv.total_minor) >= 0
        if po is None and key in needs_po and invoice_id not in in_erp and owes:
            number = "" if _na(inv.number) else f" ({inv.number})"
            # A Salesforce source names the very record that lacks it (po_where).
            where = getattr(inv, "po_where", None)
            where = po_source.where if _na(where) else str(where)
            problems.add(
                "missing_po",
                "stripe",
                invoice_id,
                f"Stripe invoice {invoice_id}{number} bills account {key}, which has "
                f"PO_Required__c, and carries no purchase order: set the {where} "
                "(FINSYNC_PO_SOURCE) and the next run posts it",
                **extra,
            )
            continue
        entity = master.legal_entities[str(legal_entity)]
        currency_id = master.netsuite_currency_ids.get(str(inv.currency))
        if currency_id is None:
            problems.add(
                "unmapped_currency",
                "stripe",
                invoice_id,
                f"Stripe invoice {invoice_id} field currency {inv.currency} has no "
                "NetSuite currency in currencies.csv",
                **extra,
            )
            continue
        inv_lines = lines_of.get(invoice_id, lines.iloc[0:0])
        unmapped = sorted(
            {
                "(no product)" if _na(p) else str(p)
                for p in inv_lines["product_id"]
                if _na(p) or str(p) not in master.netsuite_items
            }
        )
        if unmapped:
            problems.add(
                "unmapped_product",
                "stripe",
                invoice_id,
                f"Stripe invoice {invoice_id} lines carry products {', '.join(unmapped)} "
                "with no NetSuite item in products.csv",
                **extra,
            )
            continue
        discount_minor = int(inv.discount_minor)
        if discount_minor and master.netsuite_discount_item_id is None:
            problems.add(
                "unmapped_discount",
                "stripe",
                invoice_id,
                f"Stripe invoice {invoice_id} field total_discount_amounts discounts "
                f"{discount_minor} {inv.currency} (minor units), and erp_settings.csv has no "
                "netsuite_discount_item_id to post it on",
                **extra,
            )
            continue
        currency = str(inv.currency)
        items = [
            {
                "item": {"id": master.netsuite_items[str(line.product_id)]},
                "quantity": int(line.quantity),
                # Inclusive tax goes on the tax line, so the line carries the price net of it.
                "amount": to_decimal(
                    int(line.amount_minor) - int(line.inclusive_tax_minor), currency
                ),
                "description": "" if _na(line.description) else str(line.description),
            }
            for line in inv_lines.itertuples(index=False)
        ]
        if discount_minor:
            items.append(
                {
                    "item": {"id": master.netsuite_discount_item_id},
                    "quantity": 1,
                    "amount": to_decimal(-discount_minor, currency),
                    "description": "Discount",
                }
            )
        if int(inv.tax_minor):
            items.append(
                {
                    "item": {"id": master.netsuite_tax_item_id},
                    "quantity": 1,
                    "amount": to_decimal(int(inv.tax_minor), currency),
                    "description": "Tax",
                }
            )
        external_id = invoice_external_id(invoice_id)
        memo = f"finsync {inv.correlation_id} stripe invoice {invoice_id}"
        payload: dict[str, Any] = {
            "externalId": external_id,
            "entity": ref("customer", placed[key]),
            "tranDate": inv.invoice_date,
            "subsidiary": {"id": entity.netsuite_subsidiary_id},
            "currency": {"id": currency_id},
            # The Stripe number names the invoice for whoever reads it in NetSuite; tranId is
            # NetSuite's own number and otherRefNum is the customer's PO, never ours.
            "memo": memo if _na(inv.number) else f"{memo} number {inv.number}",
            "item": {"items": items},
        }
        if not _na(inv.due_date):
            payload["dueDate"] = inv.due_date
        if po is not None:
            payload["otherRefNum"] = po
        doc_type = "invoice"
        if int(inv.total_minor) < 0:
            doc_type, payload = "credit_memo", _as_credit_memo(payload, invoice_id)
        rows.append(
            {
                "erp": ERP,
                "doc_type": doc_type,
                "external_id": payload["externalId"],
                "invoice_id": invoice_id,
                "partition_date": inv.partition_date,
                "customer_external_id": placed[key],
                "legal_entity": entity.code,
                "subsidiary_id": entity.netsuite_subsidiary_id,
                "currency": currency,
                # The ERP document's own total: a credit memo credits abs(total).
                "total_minor": abs(int(inv.total_minor)),
                "tax_minor": int(inv.tax_minor),
                "discount_minor": discount_minor,
                "line_count": len(items),
                "tran_date": inv.invoice_date,
                "payload": payload,
                "correlation_id": inv.correlation_id,
            }
        )
    ready = pd.DataFrame(
        rows,
        columns=[
            "erp",
            "doc_type",
            "external_id",
            "invoice_id",
            "partition_date",
            "customer_external_id",
            "legal_entity",
            "subsidiary_id",
            "currency",
            "total_minor",
            "tax_minor",
            "discount_minor",
            "line_count",
            "tran_date",
            "payload",
            "correlation_id",
        ],
    )
    return ready, problems.frame()


def _as_credit_memo(invoice: dict[str, Any], invoice_id: str) -> dict[str, Any]:
    """The credit memo standing for a net-negative invoice's payload.

    A credit memo's lines credit what they state, so every line of the invoice is negated: the
    invoice's +100 (new plan) and -300 (unused time on the old one) become -100 and +300, with
    the discount and tax lines negated too, and the lines sum to abs(total) exactly. It stays
    unapplied: Stripe put the credit on the customer's balance, not on any invoice.
    """
    memo = {k: v for k, v in invoice.items() if k != "dueDate"}
    memo["externalId"] = net_negative_external_id(invoice_id)
    memo["memo"] = f"{invoice['memo']} (net negative: credit on the customer's balance)"
    memo["item"] = {
        # 0 - x, not -x: a zero line stays 0.00, never -0.00.
        "items": [dict(i, amount=Decimal(0) - i["amount"]) for i in invoice["item"]["items"]]
    }
    return memo


# -- credit memos and customer payments ------------------------------------------------------

DOCUMENT_COLUMNS = [
    "erp",
    "doc_type",
    "external_id",
    "source_system",
    "source_id",
    "partition_date",
    "currency",
    "total_minor",
    "payload",
    "correlation_id",
]


def credit_memo_external_id(credit_note_id: str) -> str:
    """The NetSuite external id of the credit memo for a Stripe credit note."""
    return f"STRIPE_{credit_note_id}"


def void_external_id(invoice_id: str) -> str:
    """The NetSuite external id of the credit memo compensating a voided, posted invoice."""
    return f"VOID_{invoice_id}"


def payment_external_id(payment_id: str) -> str:
    """The NetSuite external id of the customer payment for a Stripe charge."""
    return f"STRIPE_{payment_id}"


def refund_external_id(refund_id: str) -> str:
    """The NetSuite external id of the customer refund for a Stripe refund."""
    return f"STRIPE_{refund_id}"


def _stripe_document(
    doc_type: str,
    external_id: str,
    source_id: str,
    record: dict[str, Any],
    *,
    total_minor: int,
    payload: dict[str, Any],
) -> dict[str, Any]:
    """A ledger document (``DOCUMENT_COLUMNS``) from a Stripe record of the partition, currency
    and correlation id it carries."""
    return {
        "erp": ERP,
        "doc_type": doc_type,
        "external_id": external_id,
        "source_system": "stripe",
        "source_id": source_id,
        "partition_date": record["partition_date"],
        "currency": str(record["currency"]),
        "total_minor": total_minor,
        "payload": payload,
        "correlation_id": record["correlation_id"],
    }


def _ready_index(ready: pd.DataFrame) -> dict[str, dict[str, Any]]:
    return {str(r["invoice_id"]): r for r in ready.to_dict("records")}


def derive_credit_memos(
    notes: pd.DataFrame,
    note_lines: pd.DataFrame,
    invoice_lines: pd.DataFrame,
    ready: pd.DataFrame,
    master: MasterData,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Credit memos for issued Stripe credit notes, against the invoice they credit.

    A pre-payment note is applied to its invoice (it lowers what is due); a post-payment note
    is not applied (the invoice is paid; the credit is refunded to the customer's card). A
    note voided after its credit memo posted is ``derive_credit_note_voids``'s.

    Args:
        notes: Canonical credit notes.
        note_lines: credit_note_id, invoice_line_item, amount_minor of every note line.
        invoice_lines: line_id -> product_id of the credited invoices' lines.
        ready: Invoice-ready transactions of the credited invoices (their ERP coordinates).
        master: Mapping data.
    """
    problems = ExceptionRows([])
    rows: list[dict[str, Any]] = []
    by_invoice = _ready_index(ready)
    product_of = dict(zip(invoice_lines["line_id"], invoice_lines["product_id"], strict=True))
    lines_of = {k: g for k, g in note_lines.groupby("credit_note_id")}
    for note in notes[notes["status"] == "issued"].sort_values("credit_note_id").to_dict("records"):
        note_id = str(note["credit_note_id"])
        extra = {"partition_date": note["partition_date"], "correlation_id": note["correlation_id"]}
        invoice = by_invoice.get(str(note["invoice_id"]))
        if invoice is None:
            problems.add(
                "credit_note_held",
                "stripe",
                note_id,
                f"Stripe credit note {note_id} credits invoice {note['invoice_id']}, "
                "which is not ready for the ERP yet: its own exception says why, or its day has "
                "not run yet (the late-changes sensor runs it)",
                **extra,
            )
            continue
        currency = str(note["currency"])
        items: list[dict[str, Any]] = []
        unmapped: set[str] = set()
        for line in lines_of.get(note_id, note_lines.iloc[0:0]).to_dict("records"):
            credited = line["invoice_line_item"]
            item: str | None
            product: str | None
            if _na(credited):
                # A custom line (a service credit) credits no invoice line: its own item.
                item = master.netsuite_service_credit_item_id
                product = "(service credit)"
            else:
                product = product_of.get(credited)
                item = master.netsuite_items.get(str(product)) if product else None
            if item is None:
                unmapped.add(str(product or "(no product)"))
                continue
            items.append(
                {
                    "item": {"id": item},
                    "quantity": 1,
                    "amount": to_decimal(int(line["amount_minor"]), currency),
                    "description": "Service credit"
                    if _na(credited)
                    else f"Credit for invoice line {credited}",
                }
            )
        if unmapped:
            problems.add(
                "unmapped_product",
                "stripe",
                note_id,
                f"Stripe credit note {note_id} credits products {', '.join(sorted(unmapped))} "
                "with no NetSuite item in products.csv",
                **extra,
            )
            continue
        if int(note["tax_minor"]):
            items.append(
                {
                    "item": {"id": master.netsuite_tax_item_id},
                    "quantity": 1,
                    "amount": to_decimal(int(note["tax_minor"]), currency),
                    "description": "Tax",
                }
            )
        external_id = credit_memo_external_id(note_id)
        payload: dict[str, Any] = {
            "externalId": external_id,
            "entity": ref("customer", str(invoice["customer_external_id"])),
            "tranDate": note["partition_date"],
            "subsidiary": {"id": str(invoice["subsidiary_id"])},
            "currency": {"id": master.netsuite_currency_ids[currency]},
            "memo": f"finsync {note['correlation_id']} stripe credit note {note_id} "
            f"({note['type']}, {note['reason'] or 'no reason'})",
            "item": {"items": items},
        }
        if note["type"] == "pre_payment":
            payload["apply"] = {
                "items": [
                    {
                        "doc": ref("invoice", str(invoice["external_id"])),
                        "apply": True,
                        "amount": to_decimal(int(note["total_minor"]), currency),
                    }
                ]
            }
        rows.append(
            _stripe_document(
                "credit_memo",
                external_id,
                note_id,
                note,
                total_minor=int(note["total_minor"]),
                payload=payload,
            )
        )
    return pd.DataFrame(rows, columns=DOCUMENT_COLUMNS), problems.frame()


def credit_note_void_external_id(credit_note_id: str) -> str:
    """The NetSuite external id of the invoice compensating the credit memo of a Stripe
    credit note voided after that memo posted."""
    return f"CNVOID_{credit_note_id}"


def derive_credit_note_voids(
    notes: pd.DataFrame, posted: pd.DataFrame
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Carry Stripe credit notes voided after their credit memo posted to the ERP.

    Stripe's void gives the invoice back what the note took off it (a note can be voided only
    while its invoice is open). The posted credit memo is never edited in amount: an invoice
    ``CNVOID_<credit note>`` re-charges exactly what it credited (its lines, tax included),
    and the credit memo is applied to that invoice instead of the original one. Both are then
    closed, and the original invoice is open again for what Stripe restored, so the payments
    Stripe later collects for it apply to it. The two documents go to the ledger together;
    the re-applied memo waits for the compensating invoice to post.

    A memo applied to no invoice (a post-payment credit: the customer's credit or a refund)
    has no application to move: ``credit_note_voided``, for finance to decide.

    Args:
        notes: Canonical credit notes; only void ones are read.
        posted: credit_note_id, erp_internal_id and the posted payload of each posted credit
            memo of a Stripe credit note.
    """
    problems = ExceptionRows([])
    rows: list[dict[str, Any]] = []
    memo_of = {str(r["credit_note_id"]): r for r in posted.to_dict("records")}
    for note in notes[notes["status"] == "void"].sort_values("credit_note_id").to_dict("records"):
        note_id = str(note["credit_note_id"])
        memo = memo_of.get(note_id)
        if memo is None:
            continue
        body: dict[str, Any] = memo["payload"]
        applied = [line for line in (body.get("apply") or {}).get("items", []) if line.get("apply")]
        credited = {tuple(line["doc"]["$ref"]) for line in applied}
        compensation = credit_note_void_external_id(note_id)
        if credited == {("invoice", compensation)}:
            # Already carried (a run after the memo was re-applied): derived as before.
            applied = [
                dict(line, doc=ref("invoice", invoice_external_id(str(note["invoice_id"]))))
                for line in applied
            ]
        if len(applied) != 1:
            problems.add(
                "credit_note_voided",
                "stripe",
                note_id,
                f"Stripe credit note {note_id} of {note['total_minor']} {note['currency']} "
                f"(minor units) on invoice {note['invoice_id']} was voided after its credit memo "
                f"{credit_memo_external_id(note_id)} (NetSuite id {memo['erp_internal_id']}) "
                "posted, and that memo is applied to no invoice (a post-payment credit), so "
                "finsync has no application to move: void or re-apply it in NetSuite as the "
                "customer's credit requires",
                partition_date=note["partition_date"],
                correlation_id=note["correlation_id"],
            )
            continue
        (original,) = applied
        rows.append(
            _stripe_document(
                "invoice",
                compensation,
                note_id,
                note,
                total_minor=int(note["total_minor"]),
                payload={
                    "externalId": compensation,
                    "entity": body["entity"],
                    "tranDate": note["partition_date"],
                    "subsidiary": body["subsidiary"],
                    "currency": body["currency"],
                    "memo": f"finsync {note['correlation_id']} void of stripe credit note "
                    f"{note_id}: re-charges credit memo {credit_memo_external_id(note_id)}",
                    "item": body["item"],
                },
            )
        )
        reapplied = dict(
            body,
            apply={
                "items": [
                    {"doc": original["doc"], "apply": False},
                    {
                        "doc": ref("invoice", compensation),
                        "apply": True,
                        "amount": original["amount"],
                    },
                ]
            },
        )
        rows.append(
            _stripe_document(
                "credit_memo",
                credit_memo_external_id(note_id),
                note_id,
                note,
                total_minor=int(note["total_minor"]),
                payload=reapplied,
            )
        )
    return pd.DataFrame(rows, columns=DOCUMENT_COLUMNS), problems.frame()


def derive_void_compensations(voided: pd.DataFrame, ready: pd.DataFrame) -> pd.DataFrame:
    """Credit memos that reverse invoices voided in billing after they were posted.

    History is never edited: the posted invoice stays, and a credit memo for its full amount,
    applied to it, brings its balance to zero.

    Args:
        voided: Canonical invoices now void whose ERP invoice is posted.
        ready: invoice_id, external_id and the payload that was posted for each.
    """
    rows: list[dict[str, Any]] = []
    by_invoice = _ready_index(ready)
    for inv in voided.sort_values("invoice_id").to_dict("records"):
        posted = by_invoice.get(str(inv["invoice_id"]))
        if posted is None:
            continue
        rows.append(
            _credit_applied_to(
                inv,
                posted,
                void_external_id(str(inv["invoice_id"])),
                int(inv["total_minor"]),
                memo=f"void of stripe invoice {inv['invoice_id']}",
                item=posted["payload"]["item"],
            )
        )
    return pd.DataFrame(rows, columns=DOCUMENT_COLUMNS)


def _credit_applied_to(
    inv: dict[str, Any],
    posted: dict[str, Any],
    external_id: str,
    total_minor: int,
    *,
    memo: str,
    item: dict[str, Any],
) -> dict[str, Any]:
    """A credit memo for ``total_minor`` applied to the posted invoice of ``inv``, with the
    customer, subsidiary and currency it was posted with: how a billing change after posting
    (a void, a write-off) reaches the ERP without editing what was posted."""
    body = posted["payload"]
    amount = to_decimal(total_minor, str(inv["currency"]))
    return _stripe_document(
        "credit_memo",
        external_id,
        str(inv["invoice_id"]),
        inv,
        total_minor=total_minor,
        payload={
            "externalId": external_id,
            "entity": body["entity"],
            "tranDate": inv["partition_date"],
            "subsidiary": body["subsidiary"],
            "currency": body["currency"],
            "memo": f"finsync {inv['correlation_id']} {memo}",
            "item": item,
            "apply": {
                "items": [
                    {
                        "doc": ref("invoice", str(posted["external_id"])),
                        "apply": True,
                        "amount": amount,
                    }
                ]
            },
        },
    )


def writeoff_external_id(invoice_id: str) -> str:
    """The NetSuite external id of the credit memo writing off an uncollectible invoice."""
    return f"WRITEOFF_{invoice_id}"


def out_of_band_payment_external_id(invoice_id: str) -> str:
    """The NetSuite external id of the customer payment recording what an invoice paid out of
    band in Stripe received outside it."""
    return f"OOB_{invoice_id}"


def paid_outside_stripe(invoice: Mapping[str, Any], collected: int) -> int:
    """What an invoice marked paid out of band received outside Stripe, minor units: what it
    was paid less what Stripe charges collected for it (0 for any other invoice)."""
    if invoice["status"] != "paid" or _na(invoice["paid_out_of_band"]):
        return 0
    if not int(invoice["paid_out_of_band"]):
        return 0
    return max(0, int(invoice["amount_paid_minor"]) - collected)


def _out_of_band_payment(
    inv: dict[str, Any], posted: dict[str, Any], amount_minor: int, account_id: str
) -> dict[str, Any]:
    """A customer payment of what ``inv`` received outside Stripe, into the clearing account
    finance named, applied to its posted invoice."""
    invoice_id = str(inv["invoice_id"])
    external_id = out_of_band_payment_external_id(invoice_id)
    amount = to_decimal(amount_minor, str(inv["currency"]))
    return _stripe_document(
        "customer_payment",
        external_id,
        invoice_id,
        inv,
        total_minor=amount_minor,
        payload={
            "externalId": external_id,
            "customer": ref("customer", str(posted["customer_external_id"])),
            "tranDate": inv["partition_date"],
            "currency": posted["payload"]["currency"],
            "payment": amount,
            "account": {"id": account_id},
            "memo": f"finsync {inv['correlation_id']} stripe invoice {invoice_id} paid out of "
            f"band ({amount} received outside Stripe)",
            "apply": {
                "items": [
                    {
                        "doc": ref("invoice", str(posted["external_id"])),
                        "apply": True,
                        "amount": amount,
                    }
                ]
            },
        },
    )


def derive_settlements(
    invoices: pd.DataFrame,
    ready: pd.DataFrame,
    collected: Mapping[str, int],
    master: MasterData,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """What billing settled without money the ERP can see, carried to the ERP.

    - An invoice marked uncollectible is written off: a credit memo on the bad-debt item
      (``netsuite_bad_debt_item_id``) for what billing leaves to collect, applied to the
      invoice. Without that item finance writes it off by hand: ``uncollectible_invoice``.
    - An invoice paid out of band (money received outside Stripe, a wire) has no Stripe
      payment to post. With a clearing account (``netsuite_oob_clearing_account_id``) the
      receipt is a customer payment ``OOB_<invoice>`` into that account, applied to the
      invoice; without one, ``paid_out_of_band`` tells finance the amount to record by hand.

    Args:
        invoices: Canonical invoices now uncollectible, or paid out of band.
        ready: Their invoice-ready transactions (ERP coordinates); one without is held by its
            own exception and waits.
        collected: Invoice id -> what Stripe charges collected for it, minor units.
        master: Mapping data.
    """
    problems = ExceptionRows([])
    rows: list[dict[str, Any]] = []
    by_invoice = _ready_index(ready)
    for inv in invoices.sort_values("invoice_id").to_dict("records"):
        invoice_id = str(inv["invoice_id"])
        posted = by_invoice.get(invoice_id)
        if posted is None:
            continue
        extra = {"partition_date": inv["partition_date"], "correlation_id": inv["correlation_id"]}
        currency = str(inv["currency"])
        erp_id = str(posted["external_id"])
        if inv["status"] == "paid":
            outside = paid_outside_stripe(inv, int(collected.get(invoice_id, 0)))
            account = master.netsuite_oob_clearing_account_id
            if outside > 0 and account is not None:
                rows.append(_out_of_band_payment(inv, posted, outside, account))
            elif outside > 0:
                problems.add(
                    "paid_out_of_band",
                    "stripe",
                    invoice_id,
                    f"Stripe invoice {invoice_id} was marked paid out of band: {outside} "
                    f"{currency} (minor units) was received outside Stripe, so no payment for it "
                    f"reaches NetSuite; record that receipt against {erp_id} in NetSuite (or set "
                    "netsuite_oob_clearing_account_id in erp_settings.csv to have finsync post "
                    "it)",
                    **extra,
                )
            continue
        remaining = int(inv["amount_remaining_minor"])
        if inv["status"] != "uncollectible" or remaining <= 0:
            continue
        money = f"{remaining} {currency} (minor units)"
        if master.netsuite_bad_debt_item_id is None:
            problems.add(
                "uncollectible_invoice",
                "stripe",
                invoice_id,
                f"Stripe invoice {invoice_id} was marked uncollectible with {money} unpaid: "
                f"write {erp_id} off in NetSuite (or set netsuite_bad_debt_item_id in "
                "erp_settings.csv to have finsync post the write-off)",
                **extra,
            )
            continue
        rows.append(
            _credit_applied_to(
                inv,
                posted,
                writeoff_external_id(invoice_id),
                remaining,
                memo=f"write-off of stripe invoice {invoice_id} (marked uncollectible)",
                item={
                    "items": [
                        {
                            "item": {"id": master.netsuite_bad_debt_item_id},
                            "quantity": 1,
                            "amount": to_decimal(remaining, currency),
                            "description": "Bad debt write-off",
                        }
                    ]
                },
            )
        )
    return pd.DataFrame(rows, columns=DOCUMENT_COLUMNS), problems.frame()


def derive_payment_applications(
    payments: pd.DataFrame, ready: pd.DataFrame, master: MasterData
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Customer payments for collected Stripe charges, applied to the invoice they paid.

    Failed charges moved no money and are not posted. A collected payment whose invoice is
    unknown is an ``unmatched_payment``; one whose invoice waits on an exception is
    ``payment_held``.
    """
    problems = ExceptionRows([])
    rows: list[dict[str, Any]] = []
    by_invoice = _ready_index(ready)
    collected = payments[payments["status"] == "succeeded"]
    for pay in collected.sort_values("payment_id").to_dict("records"):
        payment_id = str(pay["payment_id"])
        extra = {"partition_date": pay["partition_date"], "correlation_id": pay["correlation_id"]}
        invoice_id = None if _na(pay["invoice_id"]) else str(pay["invoice_id"])
        if invoice_id is None:
            problems.add(
                "unmatched_payment",
                "stripe",
                payment_id,
                f"Stripe charge {payment_id} collected {pay['amount_minor']} "
                f"{pay['currency']} (minor units) for no known invoice",
                **extra,
            )
            continue
        invoice = by_invoice.get(invoice_id)
        if invoice is None:
            problems.add(
                "payment_held",
                "stripe",
                payment_id,
                f"Stripe charge {payment_id} paid invoice {invoice_id}, which is not "
                "ready for the ERP yet: its own exception says why, or its day has not run "
                "yet (the late-changes sensor runs it)",
                **extra,
            )
            continue
        currency = str(pay["currency"])
        amount = to_decimal(int(pay["amount_minor"]), currency)
        external_id = payment_external_id(payment_id)
        rows.append(
            _stripe_document(
                "customer_payment",
                external_id,
                payment_id,
                pay,
                total_minor=int(pay["amount_minor"]),
                payload={
                    "externalId": external_id,
                    "customer": ref("customer", str(invoice["customer_external_id"])),
                    "tranDate": pay["partition_date"],
                    "currency": {"id": master.netsuite_currency_ids[currency]},
                    "payment": amount,
                    "memo": f"finsync {pay['correlation_id']} stripe charge {payment_id}",
                    "apply": {
                        "items": [
                            {
                                "doc": ref("invoice", str(invoice["external_id"])),
                                "apply": True,
                                "amount": amount,
                            }
                        ]
                    },
                },
            )
        )
    return pd.DataFrame(rows, columns=DOCUMENT_COLUMNS), problems.frame()


def balance_applied(invoice: Mapping[str, Any]) -> int:
    """The customer credit Stripe applied to an invoice when it finalized it, minor units.

    Stripe applies a credit balance (``starting_balance`` < 0) to the next invoice it
    finalizes: the balance moves by ``ending_balance - starting_balance``, never by more than
    the total, and ``amount_due`` is what is left. 0 when no credit was applied (no credit, a
    debt carried forward, or a net-negative invoice, which adds credit instead).
    """
    keys = ("starting_balance_minor", "ending_balance_minor", "total_minor")
    values: list[Any] = [invoice.get(k) for k in keys]
    if any(_na(v) for v in values):
        return 0
    start, end, total = (int(v) for v in values)
    if start >= 0 or total <= 0:
        return 0
    return max(0, min(end - start, total, -start))


def derive_balance_applications(
    invoices: pd.DataFrame,
    ready: pd.DataFrame,
    credits: pd.DataFrame,
    drawn: Mapping[str, int],
    master: MasterData,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Customer payments of 0 that apply the customer's credit to invoices Stripe paid (partly)
    from the credit balance.

    Stripe takes the credit off what is due; NetSuite keeps it as unapplied credit memos (one
    per net-negative invoice). Each invoice that drew on the balance gets one customer payment
    (``BALANCE_<invoice>``) whose ``credit`` sublist takes exactly the amount Stripe applied
    from the customer's open credit memos, oldest first, and whose ``apply`` sublist puts it on
    the invoice, so NetSuite's amount remaining follows Stripe's. Nothing posted is edited.
    A balance the ERP holds no credit for (it predates finsync's history, or its credit memo
    was refused) is a ``customer_balance_unmatched`` exception with the amount, never a guess;
    one whose invoice waits on an exception is ``payment_held``.

    Args:
        invoices: Canonical invoices (live) with their balances.
        ready: Invoice-ready rows (doc_type invoice) of those invoices: invoice_id,
            external_id, customer_external_id, currency.
        credits: Credit memos a balance can draw on: external_id, customer_external_id,
            currency, total_minor, partition_date.
        drawn: Credit memo external id -> what balance applications not derived here already
            take from it, minor units.
        master: Mapping data (currencies).
    """
    problems = ExceptionRows([])
    rows: list[dict[str, Any]] = []
    by_invoice = _ready_index(ready)
    taken = dict(drawn)
    pools = {
        key: group.sort_values(["partition_date", "external_id"]).to_dict("records")
        for key, group in credits.groupby(["customer_external_id", "currency"])
    }
    for inv in invoices.sort_values(["partition_date", "invoice_id"]).to_dict("records"):
        applied = balance_applied(inv)
        if applied <= 0:
            continue
        invoice_id = str(inv["invoice_id"])
        currency = str(inv["currency"])
        extra = {"partition_date": inv["partition_date"], "correlation_id": inv["correlation_id"]}
        money = f"{applied} {currency} (minor units)"
        invoice = by_invoice.get(invoice_id)
        if invoice is None:
            problems.add(
                "payment_held",
                "stripe",
                invoice_id,
                f"Stripe invoice {invoice_id} was paid {money} from the customer's credit "
                "balance, and is not ready for the ERP yet: its own exception says why",
                **extra,
            )
            continue
        customer = str(invoice["customer_external_id"])
        pool = pools.get((customer, currency), [])
        left = {str(c["external_id"]): int(c["total_minor"]) for c in pool}
        for credit_id in left:
            left[credit_id] -= taken.get(credit_id, 0)
        if sum(max(0, v) for v in left.values()) < applied:
            problems.add(
                "customer_balance_unmatched",
                "stripe",
                invoice_id,
                f"Stripe invoice {invoice_id} field starting_balance applied {money} of "
                f"customer {customer}'s credit balance, and NetSuite holds only "
                f"{sum(max(0, v) for v in left.values())} of open credit from finsync for "
                "that customer and currency: post the missing credit (or record where the "
                "balance came from), then the application posts",
                **extra,
            )
            continue
        lines: list[dict[str, Any]] = []
        need = applied
        for credit_id, available in left.items():
            take = min(need, available)
            if take <= 0:
                continue
            lines.append(
                {
                    "doc": ref("credit_memo", credit_id),
                    "apply": True,
                    "amount": to_decimal(take, currency),
                }
            )
            taken[credit_id] = taken.get(credit_id, 0) + take
            need -= take
            if need == 0:
                break
        external_id = balance_application_external_id(invoice_id)
        rows.append(
            _stripe_document(
                "customer_payment",
                external_id,
                invoice_id,
                inv,
                total_minor=0,
                payload={
                    "externalId": external_id,
                    "customer": ref("customer", customer),
                    "tranDate": inv["partition_date"],
                    "currency": {"id": master.netsuite_currency_ids[currency]},
                    # No money moves: the payment carries credits to the invoice.
                    "payment": to_decimal(0, currency),
                    "memo": f"finsync {inv['correlation_id']} stripe invoice {invoice_id}: "
                    f"customer credit balance applied ({to_decimal(applied, currency)})",
                    "credit": {"items": lines},
                    "apply": {
                        "items": [
                            {
                                "doc": ref("invoice", str(invoice["external_id"])),
                                "apply": True,
                                "amount": to_decimal(applied, currency),
                            }
                        ]
                    },
                },
            )
        )
    return pd.DataFrame(rows, columns=DOCUMENT_COLUMNS), problems.frame()


# Stripe refund statuses that returned no money: a refund in one of them is never posted.
UNDONE_REFUND_STATUSES = ("failed", "canceled")


def derive_customer_refunds(
    refunds: pd.DataFrame, memos: pd.DataFrame, posted: pd.DataFrame, master: MasterData
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Customer refunds for the money Stripe returned, paying out the credit memo of the
    credit note behind each refund.

    NetSuite books a refund as a customer refund applied to a credit (the post-payment credit
    memo finsync posts unapplied), so the customer's balance and the bank both tie out. Only a
    succeeded refund is posted; a pending one waits for its next change. A refund with no
    credit note is an ``unmatched_refund`` (finance decides what it credits, never finsync); one
    whose credit note waits on an exception is ``refund_held``; one that failed or was canceled
    after its customer refund posted is ``refund_reversed`` (void it in NetSuite). A refund is
    paid from its subsidiary's ``netsuite_refund_account_id`` (legal_entities.csv); a
    subsidiary without one is ``refund_account_unmapped``.

    Args:
        refunds: Canonical refunds.
        memos: credit_note_id, external_id and the queued payload of each credit memo.
        posted: refund_id and erp_internal_id of customer refunds already posted.
        master: Mapping data (the refund account of each subsidiary).
    """
    problems = ExceptionRows([])
    rows: list[dict[str, Any]] = []
    account_of = {
        e.netsuite_subsidiary_id: e.netsuite_refund_account_id
        for e in master.legal_entities.values()
        if e.netsuite_refund_account_id
    }
    memo_of = {str(r["credit_note_id"]): r for r in memos.to_dict("records")}
    posted_as = dict(zip(posted["refund_id"], posted["erp_internal_id"], strict=True))
    for refund in refunds.sort_values("refund_id").to_dict("records"):
        refund_id = str(refund["refund_id"])
        extra = {
            "partition_date": refund["partition_date"],
            "correlation_id": refund["correlation_id"],
        }
        money = f"{refund['amount_minor']} {refund['currency']} (minor units)"
        if refund["status"] in UNDONE_REFUND_STATUSES:
            if refund_id in posted_as:
                problems.add(
                    "refund_reversed",
                    "stripe",
                    refund_id,
                    f"Stripe refund {refund_id} of {money} is {refund['status']}, but its "
                    f"customer refund (NetSuite id {posted_as[refund_id]}) is posted: void it "
                    "in NetSuite so the credit returns to the customer's balance",
                    **extra,
                )
            continue
        if refund["status"] != "succeeded":
            continue
        note_id = None if _na(refund["credit_note_id"]) else str(refund["credit_note_id"])
        if note_id is None:
            problems.add(
                "unmatched_refund",
                "stripe",
                refund_id,
                f"Stripe refund {refund_id} returned {money} on charge {refund['payment_id']} "
                "with no credit note: issue a credit note for it in Stripe, so the ERP has the "
                "credit the refund pays out",
                **extra,
            )
            continue
        memo = memo_of.get(note_id)
        if memo is None:
            problems.add(
                "refund_held",
                "stripe",
                refund_id,
                f"Stripe refund {refund_id} pays out credit note {note_id}, which is not "
                "ready for the ERP (see that credit note's exception)",
                **extra,
            )
            continue
        body = memo["payload"]
        subsidiary = str(body["subsidiary"]["id"])
        if subsidiary not in account_of:
            problems.add(
                "refund_account_unmapped",
                "stripe",
                refund_id,
                f"Stripe refund {refund_id} is paid out by NetSuite subsidiary {subsidiary}, "
                "which has no netsuite_refund_account_id in legal_entities.csv",
                **extra,
            )
            continue
        currency = str(refund["currency"])
        amount = to_decimal(int(refund["amount_minor"]), currency)
        external_id = refund_external_id(refund_id)
        rows.append(
            _stripe_document(
                "customer_refund",
                external_id,
                refund_id,
                refund,
                total_minor=int(refund["amount_minor"]),
                payload={
                    "externalId": external_id,
                    "customer": body["entity"],
                    "tranDate": refund["partition_date"],
                    "subsidiary": body["subsidiary"],
                    "currency": body["currency"],
                    "account": {"id": account_of[subsidiary]},
                    "memo": f"finsync {refund['correlation_id']} stripe refund {refund_id} "
                    f"of charge {refund['payment_id']} ({refund['reason'] or 'no reason'})",
                    "apply": {
                        "items": [
                            {
                                "doc": ref("credit_memo", str(memo["external_id"])),
                                "apply": True,
                                "amount": amount,
                            }
                        ]
                    },
                },
            )
        )
    return pd.DataFrame(rows, columns=DOCUMENT_COLUMNS), problems.frame()
