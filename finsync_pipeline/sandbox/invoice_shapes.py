"""Planted invoice shapes: discounted, tax-inclusive and 100%-off Stripe invoices.

These are not problems: each must post to the ERP exactly, and reconcile with zero drift. They
are planted so the demo exercises every shape Stripe (API 2026-07-29.dahlia) gives an invoice:

- ``coupon_discount``: an invoice-level coupon (``discounts`` on the invoice), spread over its
  lines' ``discount_amounts`` and totalled in ``total_discount_amounts``;
- ``line_discount``: a discount on one line only (``discounts`` on that line);
- ``tax_inclusive``: tax-inclusive prices, whose tax is inside each line's ``amount``;
- ``full_discount``: a 100%-off coupon. The total is zero, so Stripe marks the invoice paid on
  finalization and collects nothing: no payment intent, no charge.

Each invoice is rewritten consistently, as Stripe would have issued it. A line's ``amount``
stays before discounts (inclusive tax included); its tax is on what is left after discounts,
per line, half up: ``tax_for(amount - discount, rate)`` for exclusive tax and
``(amount - discount) - round_half_up((amount - discount) / (1 + rate))`` for inclusive tax.
Invoice totals follow Stripe's identities: ``subtotal`` is the line amounts less the lines' own
discounts ("item discounts are already incorporated"), ``line amounts - every discount +
exclusive tax == total`` and ``total_excluding_tax + every tax == total``. Payments, charges
and event snapshots carry the new total.
"""

import random
from decimal import ROUND_HALF_UP, Decimal
from typing import Any

from finsync_pipeline.sandbox.generator import Company, tax_for
from finsync_pipeline.sandbox.tax_plant import LIVE_STATUSES, excluded_ids, tax_rates

Record = dict[str, Any]

SHAPES = ("coupon_discount", "line_discount", "tax_inclusive", "full_discount")
COUPON_PERCENT = 20
LINE_PERCENT = 10
# The field each shape is recorded under in ``company.planted``.
_FIELDS = {
    "coupon_discount": "total_discount_amounts",
    "line_discount": "lines.discount_amounts",
    "tax_inclusive": "total_taxes.tax_behavior",
    "full_discount": "total",
}


def _percent_of(amount: int, percent: int) -> int:
    return int((Decimal(amount) * percent / 100).quantize(Decimal(1), rounding=ROUND_HALF_UP))


def _spread(amounts: list[int], percent: int) -> list[int]:
    """An invoice-level percentage discount spread over the lines: each line's share rounded
    down, and the rest on the largest line, so the shares sum to the invoice's discount."""
    total = _percent_of(sum(amounts), percent)
    shares = [amount * percent // 100 for amount in amounts]
    largest = max(range(len(amounts)), key=lambda i: (amounts[i], -i))
    shares[largest] += total - sum(shares)
    return shares


def _taxed(net: int, rate: Decimal, inclusive: bool) -> tuple[int, int]:
    """(tax, taxable amount) of a line's amount after discounts."""
    if not inclusive:
        return tax_for(net, rate), net
    taxable = int((Decimal(net) / (1 + rate)).quantize(Decimal(1), rounding=ROUND_HALF_UP))
    return net - taxable, taxable


def reprice(
    inv: Record, discounts: list[int], discount_id: str | None, *, line_level: bool, inclusive: bool
) -> None:
    """Rewrite an invoice with per-line discounts and tax behaviour, as Stripe bills it.

    Args:
        inv: A generated invoice whose lines each carry one tax (the generator's shape).
        discounts: Each line's discount, minor units (zeros for none).
        discount_id: The discount (``di_``) behind them, when any line is discounted.
        line_level: The discount is on the lines (``line.discounts``), not on the invoice.
        inclusive: The prices include the tax.
    """
    rates = dict(tax_rates())
    behavior = "inclusive" if inclusive else "exclusive"
    taxable_total = 0
    for line, discount in zip(inv["lines"]["data"], discounts, strict=True):
        tax = line["taxes"][0]
        rate = rates[tax["tax_rate_details"]["tax_rate"]]
        amount, taxable = _taxed(line["amount"] - discount, rate, inclusive)
        taxable_total += taxable
        tax.update(
            amount=amount,
            tax_behavior=behavior,
            taxable_amount=taxable,
            taxability_reason="standard_rated" if amount else "not_collecting",
        )
        applied = [{"amount": discount, "discount": discount_id}] if discount else []
        line["discount_amounts"] = applied
        line["discounts"] = [discount_id] if discount and line_level else []
        line["pretax_credit_amounts"] = [
            {"amount": d["amount"], "discount": d["discount"], "type": "discount"} for d in applied
        ]
    lines = inv["lines"]["data"]
    discount_total = sum(discounts)
    tax_total = sum(line["taxes"][0]["amount"] for line in lines)
    inclusive_tax = tax_total if inclusive else 0
    head = inv["total_taxes"][0]
    head.update(
        amount=tax_total,
        tax_behavior=behavior,
        taxable_amount=taxable_total,
        taxability_reason="standard_rated" if tax_total else "not_collecting",
    )
    inv["discounts"] = [discount_id] if discount_total and not line_level else []
    inv["total_discount_amounts"] = (
        [{"amount": discount_total, "discount": discount_id}] if discount_total else []
    )
    inv["total_pretax_credit_amounts"] = [
        {"amount": d["amount"], "discount": d["discount"], "type": "discount"}
        for d in inv["total_discount_amounts"]
    ]
    lines_amount = sum(line["amount"] for line in lines)
    # Stripe's subtotal has item (line-level) discounts incorporated, not invoice-level ones.
    inv["subtotal"] = lines_amount - (discount_total if line_level else 0)
    inv["subtotal_excluding_tax"] = inv["subtotal"] - inclusive_tax
    inv["total"] = lines_amount - discount_total + (tax_total - inclusive_tax)
    inv["total_excluding_tax"] = lines_amount - discount_total - inclusive_tax
    paid = inv["total"] if inv["status"] == "paid" else 0
    inv["amount_due"] = inv["total"]
    inv["amount_paid"] = paid
    inv["amount_remaining"] = inv["total"] - paid if inv["status"] == "open" else 0


_SNAPSHOT_KEYS = (
    "subtotal",
    "subtotal_excluding_tax",
    "total",
    "total_excluding_tax",
    "total_discount_amounts",
    "total_pretax_credit_amounts",
    "discounts",
    "amount_due",
    "starting_balance",
    "ending_balance",
)


def _sync_money(company: Company, inv: Record) -> None:
    """Carry an invoice's new amount due to its payments, intents, charges and event snapshots
    (the total, unless a customer balance was applied to it)."""
    due = inv["amount_due"]
    intents = {p["id"]: p for p in company.stripe.get("payment_intent", [])}
    charges_of: dict[str, list[Record]] = {}
    for charge in company.stripe.get("charge", []):
        charges_of.setdefault(charge["payment_intent"], []).append(charge)
    for payment in inv["payments"]["data"]:
        # Every attempt asked for what was due; only a successful one received it.
        payment["amount_requested"] = due
        if payment.get("amount_paid"):
            payment["amount_paid"] = due
        intent = intents.get(payment["payment"]["payment_intent"])
        if intent is None:
            continue
        intent["amount"] = due
        if intent.get("amount_received"):
            intent["amount_received"] = due
        for charge in charges_of.get(intent["id"], []):
            charge["amount"] = due
            if charge.get("amount_captured"):
                charge["amount_captured"] = due
    for event in company.stripe.get("event", []):
        snap = event["data"]["object"]
        if snap.get("object") != "invoice" or snap.get("id") != inv["id"]:
            continue
        # Lines and total_taxes are shared with the invoice; the top-level amounts were copied.
        snap.update({key: inv.get(key) for key in _SNAPSHOT_KEYS})
        if snap["status"] in ("draft", "open"):
            snap["amount_paid"] = 0
            snap["amount_remaining"] = due
        else:
            snap["amount_paid"] = inv["amount_paid"]
            snap["amount_remaining"] = inv["amount_remaining"]


def _collect_nothing(company: Company, inv: Record) -> None:
    """A paid invoice of total zero: Stripe charged nothing, so its payment never happened."""
    intent_ids = {p["payment"]["payment_intent"] for p in inv["payments"]["data"]}
    inv["payments"]["data"].clear()
    stripe = company.stripe
    stripe["payment_intent"] = [p for p in stripe["payment_intent"] if p["id"] not in intent_ids]
    stripe["charge"] = [c for c in stripe["charge"] if c["payment_intent"] not in intent_ids]
    stripe["event"] = [
        e
        for e in stripe["event"]
        if not (e["type"].startswith("payment_intent.") and e["data"]["object"]["id"] in intent_ids)
    ]
    inv["attempt_count"] = 0
    inv["attempted"] = False


def _candidates(company: Company) -> list[Record]:
    """Live invoices no other plant or record builds on, of customers that post cleanly."""
    excluded = excluded_ids(company)
    customers = {c["id"]: c for c in company.stripe["customer"]}
    charges_of: dict[str, list[Record]] = {}
    for charge in company.stripe.get("charge", []):
        charges_of.setdefault(charge["payment_intent"], []).append(charge)
    rates = dict(tax_rates())
    out = []
    for inv in company.stripe["invoice"]:
        customer = customers.get(inv["customer"])
        if inv["status"] not in LIVE_STATUSES or customer is None or inv["id"] in excluded:
            continue
        account_id = customer["metadata"].get("salesforce_account_id")
        if {customer["id"], account_id} & excluded:
            continue
        pis = [p["payment"]["payment_intent"] for p in inv["payments"]["data"]]
        if any(c["id"] in excluded for pi in pis for c in charges_of.get(pi, [])):
            continue
        lines = inv["lines"]["data"]
        if any(
            not isinstance(line["amount"], int)
            or len(line["taxes"]) != 1
            or line["taxes"][0]["tax_rate_details"]["tax_rate"] not in rates
            for line in lines
        ):
            continue
        out.append(inv)
    return out


def _rate_of(inv: Record) -> Decimal:
    rates = dict(tax_rates())
    return rates[inv["lines"]["data"][0]["taxes"][0]["tax_rate_details"]["tax_rate"]]


def plant_invoice_shapes(company: Company) -> None:
    """Give ``max(1, accounts // 100)`` live invoices each shape, deterministically.

    The invoices are recorded in ``company.planted[shape]`` for every shape in ``SHAPES``.
    """
    rng = random.Random(f"{company.spec.seed}:invoice_shapes")  # noqa: S311 - synthetic data
    wanted = max(1, company.spec.accounts // 100)
    pool = _candidates(company)
    for shape in SHAPES:
        if shape == "tax_inclusive":
            fits = [i for i in pool if _rate_of(i) > 0]
        elif shape == "full_discount":
            fits = [i for i in pool if i["status"] == "paid"]
        else:
            fits = pool
        chosen = sorted(rng.sample(fits, min(wanted, len(fits))), key=lambda i: i["id"])
        planted = company.planted.setdefault(shape, [])
        for inv in chosen:
            pool.remove(inv)
            amounts = [line["amount"] for line in inv["lines"]["data"]]
            discount_id = "di_" + "".join(
                rng.choice("ABCDEFGHJKLMNPQRSTUVWXYZ0123456789") for _ in range(24)
            )
            if shape == "coupon_discount":
                reprice(
                    inv,
                    _spread(amounts, COUPON_PERCENT),
                    discount_id,
                    line_level=False,
                    inclusive=False,
                )
            elif shape == "line_discount":
                # The first line's item carries the discount (a negotiated price on one product).
                shares = [_percent_of(amounts[0], LINE_PERCENT)] + [0] * (len(amounts) - 1)
                reprice(inv, shares, discount_id, line_level=True, inclusive=False)
            elif shape == "tax_inclusive":
                reprice(inv, [0] * len(amounts), None, line_level=False, inclusive=True)
            else:
                reprice(inv, list(amounts), discount_id, line_level=False, inclusive=False)
                _collect_nothing(company, inv)
            _sync_money(company, inv)
            planted.append(
                {"system": "stripe", "object": "invoice", "id": inv["id"], "field": _FIELDS[shape]}
            )
