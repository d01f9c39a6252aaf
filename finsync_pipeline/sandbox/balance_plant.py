"""Planted customer credit: a net-negative invoice, and a later invoice paid partly from it.

Neither is a problem: each must reach the ERP exactly and reconcile with zero drift. They are
planted in Stripe's real shapes (API 2026-07-29.dahlia):

- ``net_negative``: a downgrade billed at once (``proration_behavior=always_invoice``), with a
  "Remaining time on" line for the smaller plan and an "Unused time on" line crediting the
  larger one. The credit exceeds the charge, so the total is negative: Stripe finalizes it
  with ``amount_due`` 0, marks it paid without collecting anything, and puts the credit on
  the customer's balance (``ending_balance = starting_balance + total``; ``customer.balance``
  follows, a ``customer.updated`` event says so).
- ``paid_from_balance``: the customer's next invoice. Stripe applies the balance when it
  finalizes it: ``starting_balance`` is the credit (negative), ``amount_due = total +
  starting_balance`` (the credit is smaller than the total, so the rest is charged) and
  ``ending_balance`` 0; its payment intent, charge and invoice payment are for ``amount_due``.

Both are recorded in ``company.planted`` under those names.
"""

import copy
import datetime
import random
import string
from decimal import Decimal
from typing import Any

from finsync_pipeline.sandbox.generator import (
    STRIPE_API_VERSION,
    Company,
    add_months,
    draft_invoice,
    invoice_wire_view,
    tax_for,
)
from finsync_pipeline.sandbox.invoice_shapes import _candidates, _rate_of, _sync_money

Record = dict[str, Any]

_ALNUM = string.ascii_letters + string.digits
# The credit the downgrade leaves, as a share of the next invoice's total: less than all of
# it, so that invoice is paid partly from the balance and partly by card.
CREDIT_SHARE = Decimal("0.4")
# The downgrade happens this long before the next invoice, inside the same period.
DAYS_BEFORE = 3


def _rid(rng: random.Random, prefix: str, length: int = 24) -> str:
    return prefix + "".join(rng.choice(_ALNUM) for _ in range(length))


def _event(rng: random.Random, at: int, etype: str, obj: Record, **extra: Any) -> Record:
    data: Record = {"object": copy.deepcopy(obj), **extra}
    return {
        "id": _rid(rng, "evt_"),
        "object": "event",
        "api_version": STRIPE_API_VERSION,
        "created": at,
        "data": data,
        "livemode": False,
        "pending_webhooks": 0,
        "request": {"id": None, "idempotency_key": None},
        "type": etype,
    }


def _proration_line(
    rng: random.Random, model: Record, invoice_id: str, *, amount: int, description: str, at: int
) -> Record:
    """A proration line like the next invoice's first line (same price, product and tax)."""
    rate_tax = model["taxes"][0]
    line = copy.deepcopy(model)
    details = (model.get("parent") or {}).get("subscription_item_details") or {}
    tax = tax_for(amount, _line_rate(model))
    line.update(
        id=_rid(rng, "il_"),
        amount=amount,
        subtotal=amount,
        description=description,
        invoice=invoice_id,
        quantity=1,
        discount_amounts=[],
        discounts=[],
        pretax_credit_amounts=[],
        period={"start": at, "end": model["period"]["end"]},
        parent={
            "type": "subscription_item_details",
            "invoice_item_details": None,
            "subscription_item_details": {
                "invoice_item": _rid(rng, "ii_"),
                "proration": True,
                "proration_details": {"credited_items": None},
                "subscription": details.get("subscription"),
                "subscription_item": details.get("subscription_item"),
            },
        },
        taxes=[
            {
                "amount": tax,
                "tax_behavior": "exclusive",
                "tax_rate_details": rate_tax["tax_rate_details"],
                "taxability_reason": "standard_rated" if tax else "not_collecting",
                "taxable_amount": amount,
                "type": "tax_rate_details",
            }
        ],
    )
    line["pricing"] = dict(model["pricing"], unit_amount_decimal=str(amount))
    return line


def _line_rate(line: Record) -> Decimal:
    from finsync_pipeline.sandbox.tax_plant import tax_rates

    return dict(tax_rates())[line["taxes"][0]["tax_rate_details"]["tax_rate"]]


def _downgrade(rng: random.Random, later: Record, customer: Record) -> Record | None:
    """The net-negative invoice a downgrade billed ``DAYS_BEFORE`` days before ``later``."""
    rate = _rate_of(later)
    credit = int(later["total"] * CREDIT_SHARE / (1 + rate))
    if credit <= 0:
        return None
    created = later["created"] - DAYS_BEFORE * 86400
    finalized = created + 3600
    invoice_id = _rid(rng, "in_")
    model = later["lines"]["data"][0]
    charge = credit // 2
    lines = [
        _proration_line(
            rng,
            model,
            invoice_id,
            amount=charge,
            description="Remaining time on the smaller plan",
            at=created,
        ),
        _proration_line(
            rng,
            model,
            invoice_id,
            amount=-(charge + credit),
            description="Unused time on the larger plan",
            at=created,
        ),
    ]
    net = sum(line["amount"] for line in lines)
    tax = sum(line["taxes"][0]["amount"] for line in lines)
    total = net + tax
    if not 0 < -total < later["total"]:
        return None
    inv = draft_invoice(
        invoice_id,
        created=created,
        currency=later["currency"],
        customer=later["customer"],
        customer_name=later.get("customer_name"),
        country=later.get("account_country"),
    )
    inv["lines"]["data"] = lines
    inv.update(
        billing_reason="subscription_update",
        number=f"{customer.get('invoice_prefix') or 'DN'}-D{rng.randint(100, 999)}",
        parent=copy.deepcopy(later["parent"]),
        period_start=created,
        period_end=created,
        subtotal=net,
        subtotal_excluding_tax=net,
        total=total,
        total_excluding_tax=net,
        total_taxes=[
            {
                "amount": tax,
                "tax_behavior": "exclusive",
                "tax_rate_details": model["taxes"][0]["tax_rate_details"],
                "taxability_reason": "standard_rated" if tax else "not_collecting",
                "taxable_amount": net,
                "type": "tax_rate_details",
            }
        ],
        # Nothing is due: Stripe marks it paid at finalization and collects nothing; the
        # credit goes to the customer's balance.
        status="paid",
        amount_due=0,
        amount_paid=0,
        amount_remaining=0,
        starting_balance=0,
        ending_balance=total,
        effective_at=finalized,
        status_transitions={
            "finalized_at": finalized,
            "marked_uncollectible_at": None,
            "paid_at": finalized,
            "voided_at": None,
        },
    )
    return inv


def _window_start(company: Company) -> int:
    day = add_months(company.spec.end, -company.spec.months) + datetime.timedelta(days=1)
    return int(datetime.datetime.combine(day, datetime.time(), datetime.UTC).timestamp())


def plant_customer_balance(company: Company) -> None:
    """Give ``max(1, accounts // 100)`` customers a net-negative invoice and pay their next
    invoice partly from the credit it left, deterministically (its own PRNG: every other
    record of the company stays as it was)."""
    rng = random.Random(f"{company.spec.seed}:customer_balance")  # noqa: S311 - synthetic data
    wanted = max(1, company.spec.accounts // 100)
    stripe = company.stripe
    customers = {c["id"]: c for c in stripe["customer"]}
    invoices_of: dict[str, list[Record]] = {}
    for inv in stripe["invoice"]:
        invoices_of.setdefault(inv["customer"], []).append(inv)
    start = _window_start(company)
    fits = []
    for inv in _candidates(company):
        if inv["status"] != "paid" or inv["total"] <= 0 or not inv["payments"]["data"]:
            continue
        created = inv["created"] - DAYS_BEFORE * 86400
        before = [i for i in invoices_of[inv["customer"]] if i["created"] < inv["created"]]
        # The downgrade falls inside the history, after the customer's previous invoice, so
        # the next invoice Stripe finalizes (and applies the balance to) is this one.
        if created < start or created <= customers[inv["customer"]]["created"]:
            continue
        if any(i["created"] >= created for i in before):
            continue
        fits.append(inv)
    chosen: list[Record] = []
    for inv in sorted(fits, key=lambda i: i["id"]):
        if inv["customer"] not in {c["customer"] for c in chosen}:
            chosen.append(inv)
    chosen = sorted(rng.sample(chosen, min(wanted, len(chosen))), key=lambda i: i["id"])
    net_negative = company.planted.setdefault("net_negative", [])
    from_balance = company.planted.setdefault("paid_from_balance", [])
    for later in chosen:
        customer = customers[later["customer"]]
        down = _downgrade(rng, later, customer)
        if down is None:
            continue
        _apply_balance(rng, company, down, later, customer)
        net_negative.append(
            {"system": "stripe", "object": "invoice", "id": down["id"], "field": "total"}
        )
        from_balance.append(
            {
                "system": "stripe",
                "object": "invoice",
                "id": later["id"],
                "field": "starting_balance",
            }
        )
    stripe["invoice"].sort(key=lambda i: (i["created"], i["id"]))
    # Stable: the events already in order keep their relative order.
    stripe["event"].sort(key=lambda e: e["created"])


def _apply_balance(
    rng: random.Random, company: Company, down: Record, later: Record, customer: Record
) -> None:
    """Add the downgrade, and bill the next invoice as Stripe does after it: the credit off
    what is due, the charge for the rest, the customer's balance back to 0."""
    credit = down["total"]
    stripe = company.stripe
    stripe["invoice"].append(down)
    finalized = down["status_transitions"]["finalized_at"]
    view = invoice_wire_view(down)
    draft = dict(
        view,
        status="draft",
        ending_balance=None,
        status_transitions={key: None for key in down["status_transitions"]},
    )
    opened = dict(view, status="open", status_transitions=dict(draft["status_transitions"]))
    opened["status_transitions"]["finalized_at"] = finalized
    events = stripe["event"]
    events += [
        _event(rng, down["created"], "invoice.created", draft),
        _event(rng, finalized, "invoice.finalized", opened),
        _event(rng, finalized, "invoice.paid", view),
    ]
    with_credit = dict(customer, balance=credit)
    events.append(
        _event(rng, finalized, "customer.updated", with_credit, previous_attributes={"balance": 0})
    )
    later.update(
        starting_balance=credit,
        amount_due=later["total"] + credit,
        ending_balance=0,
    )
    later["amount_paid"] = later["amount_due"]
    later["amount_remaining"] = 0
    events.append(
        _event(
            rng,
            later["status_transitions"]["finalized_at"],
            "customer.updated",
            dict(customer, balance=0),
            previous_attributes={"balance": credit},
        )
    )
    # The balance is used up: the customer record shows what is left, nothing.
    customer["balance"] = 0
    _sync_money(company, later)
