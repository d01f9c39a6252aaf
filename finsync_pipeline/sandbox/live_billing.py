"""Billing as it happens: Stripe finalizing a subscription's next invoice and collecting it.

Stripe's billing engine does both on its own, with no API call behind them: at a cycle's end
it finalizes the subscription's next invoice (``invoice.created``, ``invoice.finalized``) and,
for ``charge_automatically``, charges the customer's card at once (``payment_intent.succeeded``,
``charge.succeeded``, ``invoice.paid``, ``invoice.payment_succeeded``). The sandbox does the
same on demand, stamped by the simulator's clock, so the near-real-time path can be tested and
measured against what a live account sends. Each new invoice bills the next period of a seeded
cycle invoice (same customer, subscription, lines and tax), so derive treats it as it treats
the history.
"""

import hashlib
from typing import Any

import simplejson

from finsync_pipeline.sandbox.server import Sandbox
from finsync_pipeline.sandbox.stripe_sim import StripeSimulator


class LiveBillingError(RuntimeError):
    """The sandbox holds nothing to bill or collect from."""


def cycle_invoices(sb: Sandbox) -> list[str]:
    """The latest cycle invoice of each subscription charged to a card that was charged
    before, by id: the templates ``finalize_next_invoice`` bills the next period of and
    ``collect_invoice`` can charge."""
    charged = {
        str(r["customer"])
        for r in sb.store.all(
            "SELECT DISTINCT customer FROM stripe_object WHERE object = 'charge' "
            "AND status = 'succeeded'"
        )
    }
    rows = sb.store.all(
        "SELECT id, ref, customer, body FROM stripe_object WHERE object = 'invoice' "
        "AND status IN ('open', 'paid') ORDER BY created, seq"
    )
    latest: dict[str, str] = {}
    for row in rows:
        body = simplejson.loads(row["body"], use_decimal=True)
        if (
            body.get("billing_reason") == "subscription_cycle"
            and body.get("collection_method") == "charge_automatically"
            and int(body.get("total") or 0) > 0
            and str(row["customer"]) in charged
        ):
            latest[str(row["ref"])] = str(row["id"])
    return sorted(latest.values())


def finalize_next_invoice(sb: Sandbox, template_id: str) -> str:
    """Finalize the invoice of the period after ``template_id``'s, now; its id.

    Raises:
        LiveBillingError: No such invoice.
    """
    now = int(sb.stripe.clock())
    template = _load(sb, "invoice", template_id)
    invoice_id = _new_id("in", template_id, now)
    shift = int(template["period_end"]) - int(template["period_start"])
    lines = [
        {
            **line,
            "id": _new_id("il", str(line["id"]), now),
            "invoice": invoice_id,
            "period": {k: int(v) + shift for k, v in (line.get("period") or {}).items()},
        }
        for line in _lines(sb, template_id)
    ]
    # What the customer's balance took off the total stays off: amount_due is what is owed.
    due = int(template["amount_due"])
    invoice = {
        **template,
        "id": invoice_id,
        "number": f"{template.get('number')}-{now}",
        "created": now,
        "effective_at": now,
        "period_start": int(template["period_start"]) + shift,
        "period_end": int(template["period_end"]) + shift,
        "status": "open",
        "amount_due": due,
        "amount_paid": 0,
        "amount_remaining": due,
        "attempted": False,
        "attempt_count": 0,
        "status_transitions": {
            "finalized_at": now,
            "marked_uncollectible_at": None,
            "paid_at": None,
            "voided_at": None,
        },
        "lines": {**template["lines"], "data": lines[:10], "has_more": len(lines) > 10},
    }
    invoice["lines"]["url"] = f"/v1/invoices/{invoice_id}/lines"
    stripe = sb.stripe
    with sb.store.tx() as conn:
        # ``GET /v1/invoices?subscription=`` filters on the stored ref, as seeding sets it.
        StripeSimulator._insert(conn, invoice, ref=_subscription_of(invoice), type_=None)
        conn.executemany(
            "INSERT INTO stripe_line (invoice, idx, id, body) VALUES (?, ?, ?, ?)",
            [
                (invoice_id, idx, line["id"], simplejson.dumps(line, use_decimal=True))
                for idx, line in enumerate(lines)
            ],
        )
        draft = {**invoice, "status": "draft", "status_transitions": {}}
        stripe.announce(conn, "invoice.created", draft)
        stripe.announce(conn, "invoice.finalized", invoice)
    return invoice_id


def collect_invoice(sb: Sandbox, invoice_id: str) -> str:
    """Charge the customer's card for what ``invoice_id`` has left, now; the charge's id.

    The charge copies the customer's last successful one (its card and billing details).

    Raises:
        LiveBillingError: No such invoice, it is not open, or its customer was never charged.
    """
    now = int(sb.stripe.clock())
    invoice = _load(sb, "invoice", invoice_id)
    if invoice.get("status") != "open":
        raise LiveBillingError(f"invoice {invoice_id} is {invoice.get('status')}, not open")
    row = sb.store.one(
        "SELECT body FROM stripe_object WHERE object = 'charge' AND customer = ? "
        "AND status = 'succeeded' ORDER BY created DESC, seq DESC LIMIT 1",
        (invoice["customer"],),
    )
    if row is None:
        raise LiveBillingError(f"customer {invoice['customer']} has no card charged before")
    last = simplejson.loads(row["body"], use_decimal=True)
    amount = int(invoice["amount_remaining"])
    intent_id = _new_id("pi", invoice_id, now)
    charge_id = _new_id("ch", invoice_id, now)
    intent = {
        **_load(sb, "payment_intent", str(last["payment_intent"])),
        "id": intent_id,
        "amount": amount,
        "amount_received": amount,
        "created": now,
        "last_payment_error": None,
        "latest_charge": charge_id,
        "status": "succeeded",
    }
    charge = {
        **last,
        "id": charge_id,
        "amount": amount,
        "amount_captured": amount,
        "amount_refunded": 0,
        "balance_transaction": _new_id("txn", invoice_id, now),
        "created": now,
        "payment_intent": intent_id,
        "refunded": False,
    }
    payment = {
        "id": _new_id("inpay", invoice_id, now),
        "object": "invoice_payment",
        "amount_paid": amount,
        "amount_requested": amount,
        "created": now,
        "currency": invoice["currency"],
        "invoice": invoice_id,
        "is_default": True,
        "livemode": False,
        "payment": {"type": "payment_intent", "payment_intent": intent_id},
        "status": "paid",
        "status_transitions": {"canceled_at": None, "paid_at": now},
    }
    previous = {"status": "open", "status_transitions": dict(invoice["status_transitions"])}
    invoice.update(
        status="paid",
        amount_paid=int(invoice["amount_paid"]) + amount,
        amount_remaining=0,
        attempted=True,
        attempt_count=1,
        status_transitions={**invoice["status_transitions"], "paid_at": now},
    )
    stripe = sb.stripe
    with sb.store.tx() as conn:
        StripeSimulator._insert(conn, intent, ref=None, type_=None)
        StripeSimulator._insert(conn, charge, ref=intent_id, type_=None)
        StripeSimulator._insert(conn, payment, ref=invoice_id, type_=None)
        StripeSimulator._save(conn, invoice)
        stripe.announce(conn, "payment_intent.succeeded", intent)
        stripe.announce(conn, "charge.succeeded", charge)
        stripe.announce(conn, "invoice.paid", invoice, previous)
        stripe.announce(conn, "invoice.payment_succeeded", invoice, previous)
    return charge_id


def _load(sb: Sandbox, obj: str, rid: str) -> dict[str, Any]:
    row = sb.store.one("SELECT body FROM stripe_object WHERE object = ? AND id = ?", (obj, rid))
    if row is None:
        raise LiveBillingError(f"the sandbox holds no {obj} {rid}")
    loaded: dict[str, Any] = simplejson.loads(row["body"], use_decimal=True)
    return loaded


def _lines(sb: Sandbox, invoice_id: str) -> list[dict[str, Any]]:
    return [
        simplejson.loads(r["body"], use_decimal=True)
        for r in sb.store.all(
            "SELECT body FROM stripe_line WHERE invoice = ? ORDER BY idx", (invoice_id,)
        )
    ]


def _subscription_of(invoice: dict[str, Any]) -> str | None:
    details = (invoice.get("parent") or {}).get("subscription_details") or {}
    sub = details.get("subscription")
    return str(sub) if sub else None


def _new_id(prefix: str, source: str, now: int) -> str:
    # Deterministic from what it bills and when, so a seeded run names the same objects.
    return f"{prefix}_" + hashlib.sha256(f"{prefix}:{source}:{now}".encode()).hexdigest()[:24]
