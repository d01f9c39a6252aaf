"""Planted tax mismatches, and the tax profiles that are no mismatch at all.

A mismatch is a Stripe invoice taxed at another jurisdiction's rate. The invoices stay
internally consistent (every line's tax, ``total_taxes``, ``total``, the amounts due and paid,
the payment and charge, the event snapshots), so they pass the invoice contract and the ERP ties
out; only a tax engine that knows the customer's jurisdiction can tell the rate was wrong. That
is the mistake the AvaTax check exists for: a customer taxed by a stale or mistyped ship-to.

A tax profile is a customer Stripe rightly bills no tax: one exempt customer (a US charity with
its exemption certificate) and one EU reverse-charge customer (a VAT-registered business in
France or the Netherlands buying from the German entity). Their invoices are rewritten with the
same consistency, at zero tax. They are not problems: the AvaTax check must find them right.

Where the exemption lives: Stripe has no field for an exemption certificate, so its number is
kept in the customer's metadata under ``tax_exemption_number`` (and an AvaTax entity use code,
when the tax team assigns one, under ``tax_entity_use_code``). The VAT id is a Stripe ``tax_id``
object of the customer (type ``eu_vat``), which Stripe shows only when ``tax_ids`` is expanded.
"""

import random
from decimal import Decimal
from typing import Any

from finsync_pipeline.sandbox.generator import _US_STATES, _VAT, Company, tax_for

LIVE_STATUSES = ("open", "paid", "uncollectible")
# A wrong rate at least this far from the right one: the difference then exceeds the check's
# per-line tolerance on any invoice the generator writes.
MIN_RATE_GAP = Decimal("0.01")
# Customer metadata keys of an exemption (Stripe keeps no exemption certificate of its own).
EXEMPTION_NUMBER_KEY = "tax_exemption_number"
ENTITY_USE_CODE_KEY = "tax_entity_use_code"
# The EU entity sells from Germany: a VAT-registered buyer in these countries is reverse charged.
REVERSE_CHARGE = {"EU01": ("FR", "NL")}
_VAT_DIGITS = {"FR": 11, "NL": 9}


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


def _invoice_is_plain(inv: dict[str, Any]) -> bool:
    """A generated invoice every line of which has an amount and exactly one tax."""
    lines = inv["lines"]["data"]
    return all(isinstance(line["amount"], int) and len(line["taxes"]) == 1 for line in lines)


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
        if not _invoice_is_plain(inv):
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
        _carry_total(company, inv, intents, charges_of)
        planted.append(
            {"system": "stripe", "object": "invoice", "id": inv["id"], "field": "total_taxes"}
        )


def _carry_total(
    company: Company,
    inv: dict[str, Any],
    intents: dict[str, dict[str, Any]],
    charges_of: dict[str, list[dict[str, Any]]],
) -> None:
    """Carry a re-taxed invoice's total into its payments, intents, charges and events."""
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


def _retax(inv: dict[str, Any], txr: str, rate: Decimal, reason: str | None = None) -> None:
    """Re-tax every line at ``rate``; ``reason`` is the taxability reason of an untaxed sale."""
    for line in inv["lines"]["data"]:
        tax = line["taxes"][0]
        tax["amount"] = tax_for(line["amount"], rate)
        tax["tax_rate_details"] = {"tax_rate": txr}
        tax["taxability_reason"] = reason or (
            "standard_rated" if tax["amount"] else "not_collecting"
        )
    tax_total = sum(line["taxes"][0]["amount"] for line in inv["lines"]["data"])
    head = inv["total_taxes"][0]
    head["amount"] = tax_total
    head["tax_rate_details"] = {"tax_rate": txr}
    head["taxability_reason"] = reason or ("standard_rated" if tax_total else "not_collecting")
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


def plant_tax_profiles(company: Company) -> None:
    """Make one customer tax exempt and one EU customer reverse charged, deterministically.

    Each is a customer none of whose records another plant touched, with a live invoice Stripe
    taxed. Stripe then bills it no tax: every invoice is rewritten at zero tax with taxability
    reason ``customer_exempt`` or ``reverse_charge`` (payments, charges and events carry the
    new totals). The exempt customer (US entity, a state with sales tax) gets
    ``tax_exempt: exempt`` and its certificate number in ``metadata.tax_exemption_number``; the
    reverse-charge one (EU entity, billed in France or the Netherlands) ``tax_exempt: reverse``
    and an ``eu_vat`` tax id in ``company.stripe["tax_id"]``. They are recorded in
    ``company.planted["tax_exempt_customer"]`` and ``["reverse_charge_customer"]``: they are
    no problem, and must raise no tax exception.
    """
    rng = random.Random(f"{company.spec.seed}:tax_profiles")  # noqa: S311 - synthetic data
    excluded = excluded_ids(company)
    accounts = {a["Id"]: a for a in company.salesforce["Account"]}
    charges_of: dict[str, list[dict[str, Any]]] = {}
    for charge in company.stripe.get("charge", []):
        charges_of.setdefault(charge["payment_intent"], []).append(charge)
    invoices_of: dict[str, list[dict[str, Any]]] = {}
    for inv in company.stripe["invoice"]:
        invoices_of.setdefault(inv["customer"], []).append(inv)

    def untouched(inv: dict[str, Any]) -> bool:
        pis = [p["payment"]["payment_intent"] for p in inv["payments"]["data"]]
        charges = [c["id"] for pi in pis for c in charges_of.get(pi, [])]
        return inv["id"] not in excluded and not set(charges) & excluded and _invoice_is_plain(inv)

    exempt: list[tuple[dict[str, Any], dict[str, Any]]] = []
    reverse: list[tuple[dict[str, Any], dict[str, Any]]] = []
    for customer in company.stripe["customer"]:
        account = accounts.get(customer["metadata"].get("salesforce_account_id"))
        invoices = invoices_of.get(customer["id"], [])
        if account is None or {customer["id"], account["Id"]} & excluded:
            continue
        taxed = any(
            i["status"] in LIVE_STATUSES and i["total_taxes"][0]["amount"] for i in invoices
        )
        if not taxed or not all(untouched(i) for i in invoices):
            continue
        entity, country = customer["metadata"].get("legal_entity"), account["BillingCountry"]
        if entity == "US01" and country == "US" and (_true_rate(account) or 0) > 0:
            exempt.append((customer, account))
        elif country in REVERSE_CHARGE.get(str(entity), ()):
            reverse.append((customer, account))
    planted_exempt = company.planted.setdefault("tax_exempt_customer", [])
    planted_reverse = company.planted.setdefault("reverse_charge_customer", [])
    tax_ids = company.stripe.setdefault("tax_id", [])
    intents = {p["id"]: p for p in company.stripe.get("payment_intent", [])}
    if exempt:
        customer, _account = rng.choice(exempt)
        customer["tax_exempt"] = "exempt"
        customer["metadata"][EXEMPTION_NUMBER_KEY] = f"EX-{rng.randint(10**7, 10**8 - 1)}"
        for inv in invoices_of[customer["id"]]:
            _untax(company, inv, "customer_exempt", intents, charges_of)
        planted_exempt.append(
            {"system": "stripe", "object": "customer", "id": customer["id"], "field": "tax_exempt"}
        )
    if reverse:
        customer, account = rng.choice(reverse)
        country = account["BillingCountry"]
        digits = "".join(rng.choice("0123456789") for _ in range(_VAT_DIGITS[country]))
        value = f"{country}{digits}" + ("B01" if country == "NL" else "")
        customer["tax_exempt"] = "reverse"
        tax_ids.append(
            {
                "id": "txi_"
                + "".join(rng.choice("ABCDEFGHJKLMNPQRSTUVWXYZ0123456789") for _ in range(24)),
                "object": "tax_id",
                "country": country,
                "created": customer["created"],
                "customer": customer["id"],
                "livemode": False,
                "owner": {"type": "customer", "customer": customer["id"]},
                "type": "eu_vat",
                "value": value,
                "verification": {
                    "status": "verified",
                    "verified_address": None,
                    "verified_name": customer["name"],
                },
            }
        )
        for inv in invoices_of[customer["id"]]:
            _untax(company, inv, "reverse_charge", intents, charges_of)
        planted_reverse.append(
            {"system": "stripe", "object": "customer", "id": customer["id"], "field": "tax_exempt"}
        )


def _untax(
    company: Company,
    inv: dict[str, Any],
    reason: str,
    intents: dict[str, dict[str, Any]],
    charges_of: dict[str, list[dict[str, Any]]],
) -> None:
    # Whatever the invoice's status, each amount that was the old total becomes the new one.
    before = {k: inv[k] for k in ("total", "amount_due", "amount_paid", "amount_remaining")}
    txr = inv["total_taxes"][0]["tax_rate_details"]["tax_rate"]
    _retax(inv, txr, Decimal(0), reason)
    for key in ("amount_due", "amount_paid", "amount_remaining"):
        inv[key] = inv["total"] if before[key] == before["total"] else before[key]
    _carry_total(company, inv, intents, charges_of)
