"""Planted tax mismatches: Stripe invoices taxed at another jurisdiction's rate.

The invoices stay internally consistent (every line's tax, ``total_taxes``, ``total``, the
amounts due and paid, the payment and charge, the event snapshots), so they pass the invoice
contract and the ERP ties out; only a tax engine that knows the customer's jurisdiction can tell
the rate was wrong. That is the mistake the AvaTax check exists for: a customer taxed by a stale
or mistyped ship-to.
"""

import random
from decimal import Decimal
from typing import Any

from finsync_pipeline.sandbox.generator import _US_STATES, _VAT, Company, tax_for

LIVE_STATUSES = ("open", "paid", "uncollectible")
# A wrong rate at least this far from the right one: the difference then exceeds the check's
# per-line tolerance on any invoice the generator writes.
MIN_RATE_GAP = Decimal("0.01")


def tax_rates() -> list[tuple[str, Decimal]]:
    """Every (Stripe tax rate id, rate) of the generator's tables, in a fixed order."""
    us = [(f"txr_us_{state.lower()}", rate) for state, _city, _zip, rate in _US_STATES]
    vat = [(f"txr_{country.lower()}", rate) for country, rate in sorted(_VAT.items())]
    return us + vat


def _true_rate(account: dict[str, Any]) -> Decimal | None:
    country = account.get("BillingCountry")
    if country == "US":
        state = account.get("BillingState")
        return next((s[3] for s in _US_STATES if s[0] == state), None)
    return _VAT.get(str(country))


def excluded_ids(company: Company) -> set[str]:
    """Ids already planted, and invoices or charges another record builds on."""
    ids = {p["id"] for items in company.planted.values() for p in items}
    for obj, records in company.stripe.items():
        if obj in ("invoice", "event"):
            continue
        for rec in records:
            # A credit note names its invoice, a refund its charge: re-taxing either document
            # would leave the other one wrong.
            for key in ("invoice", "charge"):
                value = rec.get(key)
                if isinstance(value, str) and obj not in ("charge", "payment_intent"):
                    ids.add(value)
    return ids


def plant_tax_mismatches(company: Company) -> None:
    """Re-tax ``max(1, accounts // 100)`` live invoices at a wrong rate, deterministically.

    Each chosen invoice is rewritten consistently: lines plus tax still equal the total, and its
    payment, charge and event snapshots carry the new total. The invoices are recorded in
    ``company.planted["tax_mismatch"]``.
    """
    rng = random.Random(f"{company.spec.seed}:tax_mismatch")  # noqa: S311 - synthetic data
    wanted = max(1, company.spec.accounts // 100)
    excluded = excluded_ids(company)
    accounts = {a["Id"]: a for a in company.salesforce["Account"]}
    customers = {c["id"]: c for c in company.stripe["customer"]}
    charges_of: dict[str, list[dict[str, Any]]] = {}
    for charge in company.stripe.get("charge", []):
        charges_of.setdefault(charge["payment_intent"], []).append(charge)
    candidates: list[tuple[dict[str, Any], Decimal]] = []
    for inv in company.stripe["invoice"]:
        customer = customers.get(inv["customer"])
        if inv["status"] not in LIVE_STATUSES or customer is None or inv["id"] in excluded:
            continue
        account_id = customer["metadata"].get("salesforce_account_id")
        account = accounts.get(account_id)
        if account is None or {customer["id"], account_id} & excluded:
            continue
        pis = [p["payment"]["payment_intent"] for p in inv["payments"]["data"]]
        if any(c["id"] in excluded for pi in pis for c in charges_of.get(pi, [])):
            continue
        lines = inv["lines"]["data"]
        if any(not isinstance(line["amount"], int) or len(line["taxes"]) != 1 for line in lines):
            continue
        rate = _true_rate(account)
        if rate is not None:
            candidates.append((inv, rate))
    chosen = rng.sample(candidates, min(wanted, len(candidates)))
    planted = company.planted.setdefault("tax_mismatch", [])
    intents = {p["id"]: p for p in company.stripe.get("payment_intent", [])}
    for inv, rate in sorted(chosen, key=lambda pair: pair[0]["id"]):
        wrong = [(txr, r) for txr, r in tax_rates() if abs(r - rate) >= MIN_RATE_GAP]
        txr, wrong_rate = rng.choice(wrong)
        _retax(inv, txr, wrong_rate)
        for payment in inv["payments"]["data"]:
            # Every attempt asked for the total; only a successful one received it.
            payment["amount_requested"] = inv["total"]
            if payment.get("amount_paid"):
                payment["amount_paid"] = inv["total"]
            intent = intents.get(payment["payment"]["payment_intent"])
            if intent is not None:
                intent["amount"] = inv["total"]
                if intent.get("amount_received"):
                    intent["amount_received"] = inv["total"]
                for charge in charges_of.get(intent["id"], []):
                    charge["amount"] = inv["total"]
                    if charge.get("amount_captured"):
                        charge["amount_captured"] = inv["total"]
        _fix_event_snapshots(company, inv)
        planted.append(
            {"system": "stripe", "object": "invoice", "id": inv["id"], "field": "total_taxes"}
        )


def _retax(inv: dict[str, Any], txr: str, rate: Decimal) -> None:
    for line in inv["lines"]["data"]:
        tax = line["taxes"][0]
        tax["amount"] = tax_for(line["amount"], rate)
        tax["tax_rate_details"] = {"tax_rate": txr}
        tax["taxability_reason"] = "standard_rated" if tax["amount"] else "not_collecting"
    tax_total = sum(line["taxes"][0]["amount"] for line in inv["lines"]["data"])
    head = inv["total_taxes"][0]
    head["amount"] = tax_total
    head["tax_rate_details"] = {"tax_rate": txr}
    head["taxability_reason"] = "standard_rated" if tax_total else "not_collecting"
    inv["total"] = inv["subtotal"] + tax_total
    paid = inv["total"] if inv["status"] == "paid" else 0
    inv["amount_due"] = inv["total"]
    inv["amount_paid"] = paid
    inv["amount_remaining"] = inv["total"] - paid if inv["status"] == "open" else 0


def _fix_event_snapshots(company: Company, inv: dict[str, Any]) -> None:
    # Snapshots share the lines and total_taxes with the invoice (already re-taxed); their
    # top-level amounts were copied when the event was made.
    for event in company.stripe.get("event", []):
        snap = event["data"]["object"]
        if snap.get("object") != "invoice" or snap.get("id") != inv["id"]:
            continue
        snap["total"] = inv["total"]
        snap["amount_due"] = inv["amount_due"]
        if snap["status"] in ("draft", "open"):
            snap["amount_paid"] = 0
            snap["amount_remaining"] = inv["total"]
        else:
            snap["amount_paid"] = inv["amount_paid"]
            snap["amount_remaining"] = inv["amount_remaining"]
