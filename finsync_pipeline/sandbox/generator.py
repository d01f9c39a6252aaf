"""Deterministic generator of a synthetic SaaS company, in each system's native record shapes.

The same ``CompanySpec`` always yields the same ``Company``: every random choice comes from a
``random.Random`` seeded by the spec (or by a string derived from it), never from the global
generator or the wall clock.

Records are what each system would hold:

- ``salesforce``: Account, Opportunity and Contract field maps (no ``attributes``; the simulator
  adds those on the wire), and the CPQ objects SBQQ__Quote__c, SBQQ__QuoteLine__c and
  SBQQ__Subscription__c: one primary quote per contract term with a line per Stripe
  subscription item (same product, quantity and price, as decimals in the opportunity's
  currency), and the subscriptions contracted from it. Renewal lines point at the subscription
  they renew; some monthly subscriptions get a mid-term seat Amendment (see ``_cpq``).
- ``stripe``: customer, subscription, invoice, credit_note, payment_intent, charge, refund and
  event objects in the ``2026-07-29.dahlia`` shape. An invoice (and a credit note) here holds
  *every* line in ``lines.data``; the simulator serves only the first 10 inline and pages the
  rest, as Stripe does.
- ``netsuite``: master data only (subsidiary, currency, item); the pipeline creates the rest.

Tax rule (written down because reconciliation depends on it): tax is computed per line, in the
currency's minor unit, as ``line.amount * rate`` rounded half up to an integer; the invoice's tax
is the sum of its lines' taxes. A credit note follows the same rule per credited line, so its
lines plus its tax equal its total, and a refund never exceeds what is left of its charge.
"""

import calendar
import copy
import datetime
import random
import string
from collections.abc import Callable
from dataclasses import dataclass, field
from decimal import ROUND_HALF_UP, Decimal
from typing import Any

STRIPE_API_VERSION = "2026-07-29.dahlia"

Record = dict[str, Any]

# legal entity -> (NetSuite subsidiary id, currency, NetSuite currency id, countries)
LEGAL_ENTITIES: dict[str, tuple[str, str, str, tuple[str, ...]]] = {
    "US01": ("1", "USD", "1", ("US",)),
    "EU01": ("2", "EUR", "2", ("DE", "FR", "NL")),
    "UK01": ("3", "GBP", "3", ("GB",)),
    "JP01": ("4", "JPY", "4", ("JP",)),
}
CURRENCY_EXPONENT: dict[str, int] = {"USD": 2, "EUR": 2, "GBP": 2, "JPY": 0}

# product -> (display name, NetSuite item id or None when deliberately unmapped)
PRODUCTS: dict[str, tuple[str, str | None]] = {
    "prod_platform": ("Platform", "101"),
    "prod_seats": ("Seats", "102"),
    "prod_support": ("Premium Support", "103"),
    "prod_onboarding": ("Onboarding", "104"),
    "prod_legacy": ("Legacy Analytics Add-on", None),
}
TAX_ITEM_ID = "190"
DISCOUNT_ITEM_ID = "191"
BAD_DEBT_ITEM_ID = "192"
# The sandbox NetSuite account out-of-band receipts clear through (every subsidiary may use
# it); erp_settings.csv names it as netsuite_oob_clearing_account_id when finance wants them
# posted.
OOB_CLEARING_ACCOUNT_ID = "1200"
_ITEM_TYPES = {
    TAX_ITEM_ID: "OthCharge",
    DISCOUNT_ITEM_ID: "Discount",
    BAD_DEBT_ITEM_ID: "OthCharge",
}

# Monthly list prices in US cents; annual = 10 x monthly (two months free).
_USD_MONTHLY: dict[str, int] = {
    "platform": 50000,
    "seats": 2500,
    "support": 20000,
    "legacy": 4900,
}
_USD_ONBOARDING = 150000

_US_STATES: list[tuple[str, str, str, Decimal]] = [
    ("CA", "San Francisco", "94105", Decimal("0.08625")),
    ("NY", "New York", "10001", Decimal("0.08875")),
    ("TX", "Austin", "78701", Decimal("0.0825")),
    ("WA", "Seattle", "98101", Decimal("0.1025")),
    ("MA", "Boston", "02110", Decimal("0.0625")),
    ("IL", "Chicago", "60601", Decimal("0.1025")),
    ("OR", "Portland", "97201", Decimal("0")),
    ("DE", "Wilmington", "19801", Decimal("0")),
    ("CO", "Denver", "80202", Decimal("0.0881")),
    ("GA", "Atlanta", "30303", Decimal("0.089")),
]
_US_STATES_IN_RANGE = [s for s in _US_STATES if s[3] <= Decimal("0.08875")]
_COUNTRY_CITY: dict[str, list[tuple[str, str]]] = {
    "DE": [("Berlin", "10115"), ("Munich", "80331"), ("Hamburg", "20095")],
    "FR": [("Paris", "75001"), ("Lyon", "69001")],
    "NL": [("Amsterdam", "1011"), ("Rotterdam", "3011")],
    "GB": [("London", "EC1A 1BB"), ("Manchester", "M1 1AE"), ("Edinburgh", "EH1 1YZ")],
    "JP": [("Tokyo", "100-0001"), ("Osaka", "530-0001")],
}
_VAT: dict[str, Decimal] = {
    "DE": Decimal("0.19"),
    "FR": Decimal("0.20"),
    "NL": Decimal("0.21"),
    "GB": Decimal("0.20"),
    "JP": Decimal("0.10"),
}

_NAME_A = [
    "Acme",
    "Blue",
    "Bright",
    "Cedar",
    "Delta",
    "Ember",
    "Fjord",
    "Granite",
    "Harbor",
    "Iris",
    "Juniper",
    "Kite",
    "Lumen",
    "Maple",
    "Nimbus",
    "Orbit",
    "Pioneer",
    "Quartz",
    "River",
    "Summit",
    "Tidal",
    "Umber",
    "Vertex",
    "Willow",
    "Xenon",
    "Yonder",
    "Zephyr",
    "O'Brien",
    "Nordic",
    "Atlas",
]
_NAME_B = [
    "Analytics",
    "Labs",
    "Logistics",
    "Health",
    "Robotics",
    "Media",
    "Foods",
    "Energy",
    "Systems",
    "Partners",
    "Software",
    "Networks",
    "Capital",
    "Retail",
    "Bio",
    "Studios",
    "Works",
    "Data",
]
_NAME_C = ["Inc.", "LLC", "GmbH", "SAS", "B.V.", "Ltd", "K.K.", "Group", "Holdings", "Co."]

_ALNUM = string.ascii_letters + string.digits
_SF_CHECKSUM_CHARS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ012345"


def _default_end() -> datetime.date:
    return datetime.datetime.now(datetime.UTC).date() - datetime.timedelta(days=1)


@dataclass(frozen=True)
class CompanySpec:
    """Parameters of a synthetic company.

    Attributes:
        accounts: Salesforce accounts, parents included.
        months: Length of the billing history ending at ``end``.
        seed: Seed of every random choice.
        end: Last day of history (inclusive). Defaults to yesterday (UTC); pass it explicitly
            when output must be reproducible across days.
    """

    accounts: int = 300
    months: int = 12
    seed: int = 7
    end: datetime.date = field(default_factory=_default_end)


@dataclass
class Company:
    """A generated company: native records per system plus the list of planted problems."""

    spec: CompanySpec
    salesforce: dict[str, list[Record]]
    stripe: dict[str, list[Record]]
    netsuite: dict[str, list[Record]]
    planted: dict[str, list[Record]]


def salesforce_id(prefix: str, body15: str) -> str:
    """Return the 18-character Salesforce id for a 15-character id (case-safe suffix)."""
    assert len(body15) == 15 and body15.startswith(prefix)
    suffix = ""
    for chunk in range(3):
        bits = 0
        for pos, ch in enumerate(body15[chunk * 5 : chunk * 5 + 5]):
            if ch.isupper():
                bits |= 1 << pos
        suffix += _SF_CHECKSUM_CHARS[bits]
    return body15 + suffix


def add_months(day: datetime.date, months: int) -> datetime.date:
    """Shift a date by whole months, clamping the day to the month's end (Stripe's anchor rule)."""
    total = day.year * 12 + (day.month - 1) + months
    year, month = divmod(total, 12)
    last = calendar.monthrange(year, month + 1)[1]
    return datetime.date(year, month + 1, min(day.day, last))


def _ts(day: datetime.date, seconds: int = 0) -> int:
    return calendar.timegm(day.timetuple()) + seconds


def sf_datetime(unix_s: int) -> str:
    """Format a Unix time as Salesforce does: ``2025-03-01T10:00:00.000+0000``."""
    moment = datetime.datetime.fromtimestamp(unix_s, datetime.UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.000+0000")


def tax_for(amount: int, rate: Decimal) -> int:
    """Tax on one line in minor units: ``amount * rate`` rounded half up."""
    return int((Decimal(amount) * rate).quantize(Decimal(1), rounding=ROUND_HALF_UP))


def price_amount(product_key: str, currency: str, interval: str | None) -> int:
    """List price in the currency's minor unit for a product key and interval."""
    usd = _USD_ONBOARDING if product_key == "onboarding" else _USD_MONTHLY[product_key]
    if interval == "year":
        usd *= 10
    if currency == "USD":
        return usd
    if currency == "EUR":
        return usd * 92 // 100
    if currency == "GBP":
        return usd * 80 // 100
    # 1 USD ~ 150 JPY and JPY has no minor unit: cents * 1.5 is whole yen.
    return usd * 3 // 2


def _major(amount: int, currency: str) -> Decimal:
    return Decimal(amount).scaleb(-CURRENCY_EXPONENT[currency])


@dataclass
class _Sub:
    """Working state of one billing account while generating."""

    account_id: str
    name: str
    entity: str
    currency: str
    country: str
    state: str
    tax_rate: Decimal
    customer_id: str
    sub_id: str
    interval: str
    start: datetime.date
    hour_s: int
    products: list[tuple[str, int]]  # (product key, quantity)
    item_ids: list[str]
    target_lines: int = 0
    canceled_on: datetime.date | None = None
    invoice_prefix: str = ""
    terms: list[tuple[datetime.date, str, str]] = field(default_factory=list)
    invoices: list[Record] = field(default_factory=list)


class _Gen:
    def __init__(self, spec: CompanySpec) -> None:
        self.spec = spec
        # Synthetic data, not secrets: a seeded PRNG is the point.
        self.rng = random.Random(spec.seed)  # noqa: S311
        self.used_ids: set[str] = set()
        self.window_start = add_months(spec.end, -spec.months) + datetime.timedelta(days=1)
        self.end_ts = _ts(spec.end, 86399)
        self.sf_counter = 0
        self.contract_number = 100

    # ids -------------------------------------------------------------------------------------
    def rid(self, prefix: str, length: int, rng: random.Random | None = None) -> str:
        source = rng or self.rng
        while True:
            candidate = prefix + "".join(source.choice(_ALNUM) for _ in range(length))
            if candidate not in self.used_ids:
                self.used_ids.add(candidate)
                return candidate

    def sfid(self, prefix: str, rng: random.Random | None = None) -> str:
        source = rng or self.rng
        self.sf_counter += 1
        body = prefix + "5g" + "".join(source.choice(_ALNUM) for _ in range(5))
        body += f"{self.sf_counter:05d}"[-5:]
        body = body[:15].ljust(15, "0")
        return salesforce_id(prefix, body)

    # accounts --------------------------------------------------------------------------------
    def company_names(self, n: int) -> list[str]:
        names: list[str] = []
        seen: set[str] = set()
        while len(names) < n:
            name = " ".join(
                (self.rng.choice(_NAME_A), self.rng.choice(_NAME_B), self.rng.choice(_NAME_C))
            )
            if name in seen:
                name = f"{name} {len(names)}"
            seen.add(name)
            names.append(name)
        # Always one name with a quote, so SOQL escaping is exercised at any scale.
        if not any("'" in name for name in names):
            names[-1] = "O'Brien " + names[-1].split(" ", 1)[1]
        return names

    def pick_entity(self) -> str:
        roll = self.rng.random()
        if roll < 0.5:
            return "US01"
        if roll < 0.75:
            return "EU01"
        if roll < 0.9:
            return "UK01"
        return "JP01"


def generate(spec: CompanySpec) -> Company:
    """Generate a synthetic company, deterministically from ``spec``.

    Args:
        spec: Scale, history length, seed and last day of history.

    Returns:
        The company's records per system and the problems planted in them.
    """
    if spec.accounts < 1 or spec.months < 1:
        raise ValueError("CompanySpec needs accounts >= 1 and months >= 1")
    g = _Gen(spec)
    rng = g.rng
    n_parents = spec.accounts * 15 // 100 if spec.accounts >= 4 else 0
    n_billing = spec.accounts - n_parents
    names = g.company_names(spec.accounts)
    plant_n = max(1, spec.accounts // 100)

    accounts: list[Record] = []
    parents: list[Record] = []
    for i in range(n_parents):
        entity = g.pick_entity()
        parents.append(_account(g, names[i], entity, None, parent=True))
    accounts.extend(parents)
    parent_children: dict[str, int] = {p["Id"]: 0 for p in parents}

    subs: list[_Sub] = []
    for i in range(n_billing):
        entity = g.pick_entity()
        parent_id: str | None = None
        if parents and (i < len(parents) or rng.random() < 0.3):
            parent = parents[i] if i < len(parents) else rng.choice(parents)
            parent_id = parent["Id"]
            parent_children[parent_id] += 1
        acct = _account(g, names[n_parents + i], entity, parent_id, parent=False)
        accounts.append(acct)
        subs.append(_new_sub(g, acct, entity))

    # Line-count shaping: the first billing account always yields 25-line invoices (monthly,
    # started before the window so no one-off onboarding line joins them).
    many = [subs[0]] + [s for s in subs[1:] if rng.random() < 0.04]
    if spec.accounts >= 20 and len(many) < 4:
        many += [s for s in subs[1:] if s not in many][: 4 - len(many)]
    for idx, sub in enumerate(many):
        sub.target_lines = 25 if idx == 0 else rng.randint(11, 30)
        sub.products = [("platform", 1), ("seats", rng.randint(20, 300)), ("support", 1)]
        if idx == 0:
            sub.interval = "month"
            sub.start = add_months(g.window_start, -rng.randint(1, 6))
            sub.canceled_on = None
    plain = [s for s in subs if s.target_lines == 0]
    plainly = plain or subs

    legacy_subs = _pick(rng, plainly, plant_n)
    for sub in legacy_subs:
        sub.products.append(("legacy", 1))
        # Planted subscriptions bill monthly and start before the window so they invoice in it.
        sub.interval = "month"
        sub.start = min(sub.start, g.window_start - datetime.timedelta(days=3))
        sub.canceled_on = None

    for sub in subs:
        sub.item_ids = [g.rid("si_", 14) for _ in sub.products]
        _build_terms(g, sub)
        _build_invoices(g, sub)

    customers = [_customer(g, s) for s in subs]
    subscriptions = [_subscription(g, s) for s in subs]
    contracts, opportunities = _crm_deals(g, subs)
    opportunities += _pipeline_opps(g, accounts)

    planted: dict[str, list[Record]] = {
        "malformed_currency": [],
        "missing_amount": [],
        "invalid_date": [],
        "bad_currency_code": [],
        "unmapped_product": [],
        "unknown_legal_entity": [],
    }
    for sub in legacy_subs:
        for inv in sub.invoices:
            planted["unmapped_product"].append(
                _plant("stripe", "invoice", inv["id"], "lines.pricing.price_details.product")
            )

    candidates = [s for s in plainly if s not in legacy_subs and s.invoices] or [
        s for s in subs if s.invoices
    ]
    victims = _pick(rng, candidates, 2 * plant_n)
    for k, sub in enumerate(victims):
        inv = sub.invoices[len(sub.invoices) // 2]
        if k % 2 == 0:
            inv["currency"] = "usdx"
            planted["malformed_currency"].append(_plant("stripe", "invoice", inv["id"], "currency"))
        else:
            line = inv["lines"]["data"][0]
            line["amount"] = None
            planted["missing_amount"].append(_plant("stripe", "invoice_line", line["id"], "amount"))

    open_lost = [o for o in opportunities if not o["IsWon"]] or opportunities
    for opp in _pick(rng, open_lost, plant_n):
        opp["CloseDate"] = "2025-02-30"
        planted["invalid_date"].append(_plant("salesforce", "Opportunity", opp["Id"], "CloseDate"))

    by_account = {a["Id"]: a for a in accounts}
    others = [s for s in plainly if s not in legacy_subs and s not in victims] or subs
    bad_ccy = _pick(rng, others, plant_n)
    for sub in bad_ccy:
        by_account[sub.account_id]["CurrencyIsoCode"] = "XXX"
        planted["bad_currency_code"].append(
            _plant("salesforce", "Account", sub.account_id, "CurrencyIsoCode")
        )
    rest = [s for s in others if s not in bad_ccy] or subs
    customer_by_id = {c["id"]: c for c in customers}
    unknown_entity = _pick(rng, rest, plant_n)
    for sub in unknown_entity:
        by_account[sub.account_id]["Legal_Entity__c"] = "ZZ99"
        customer_by_id[sub.customer_id]["metadata"]["legal_entity"] = "ZZ99"
        planted["unknown_legal_entity"].append(
            _plant("salesforce", "Account", sub.account_id, "Legal_Entity__c")
        )
        planted["unknown_legal_entity"].append(
            _plant("stripe", "customer", sub.customer_id, "metadata.legal_entity")
        )

    invoices = sorted((i for s in subs for i in s.invoices), key=lambda i: (i["created"], i["id"]))
    payment_intents, charges = _payments(g, subs, invoices)
    adjusted = _adjustments(g, subs, invoices, charges)
    payment_intents += adjusted.payment_intents
    charges += adjusted.charges
    events = _events(g, customers, invoices, payment_intents, adjusted.events)

    cpq = _cpq(g, subs, opportunities, plant_n)
    opportunities += cpq.amendment_opportunities
    planted["invalid_quantity"] = cpq.planted

    company = Company(
        spec=spec,
        salesforce={
            "Account": accounts,
            "Opportunity": opportunities,
            "Contract": contracts,
            "SBQQ__Quote__c": cpq.quotes,
            "SBQQ__QuoteLine__c": cpq.quote_lines,
            "SBQQ__Subscription__c": cpq.subscriptions,
        },
        stripe={
            "customer": customers,
            "subscription": subscriptions,
            "invoice": invoices,
            "credit_note": adjusted.credit_notes,
            "payment_intent": payment_intents,
            "charge": charges,
            "refund": adjusted.refunds,
            "event": events,
        },
        netsuite=netsuite_master_data(),
        planted=planted,
    )
    # Imported here: the plants build on this module (a top-level import would be a cycle).
    from finsync_pipeline.sandbox.balance_plant import plant_customer_balance
    from finsync_pipeline.sandbox.invoice_shapes import plant_invoice_shapes
    from finsync_pipeline.sandbox.po_plant import plant_purchase_orders
    from finsync_pipeline.sandbox.settlement_plant import plant_settlements
    from finsync_pipeline.sandbox.tax_plant import plant_tax_mismatches, plant_tax_profiles

    plant_tax_mismatches(company)
    plant_invoice_shapes(company)
    plant_settlements(company)
    plant_customer_balance(company)
    plant_purchase_orders(company)
    untouched = [s for s in rest if s not in unknown_entity] or subs
    _plant_deleted_draft(g, company, untouched)
    # Last: a tax profile takes a customer no other plant touched (its own seeded PRNG).
    plant_tax_profiles(company)
    return company


def draft_invoice(
    invoice_id: str,
    *,
    created: int,
    currency: str,
    customer: str,
    customer_name: str | None,
    country: str | None,
) -> Record:
    """A one-off draft invoice as Stripe creates it (``POST /v1/invoices``): no lines yet, all
    amounts zero, nothing finalized. Callers add lines and amounts."""
    return {
        "id": invoice_id,
        "object": "invoice",
        "account_country": country,
        "amount_due": 0,
        "amount_overpaid": 0,
        "amount_paid": 0,
        "amount_remaining": 0,
        "amount_shipping": 0,
        "attempt_count": 0,
        "attempted": False,
        "auto_advance": False,
        "billing_reason": "manual",
        "collection_method": "charge_automatically",
        "created": created,
        "currency": currency,
        "custom_fields": None,
        "customer": customer,
        "customer_email": None,
        "customer_name": customer_name,
        "default_payment_method": None,
        "description": None,
        "discounts": [],
        "due_date": None,
        "effective_at": None,
        "ending_balance": None,
        "last_finalization_error": None,
        "lines": {
            "object": "list",
            "data": [],
            "has_more": False,
            "url": f"/v1/invoices/{invoice_id}/lines",
        },
        "livemode": False,
        "metadata": {},
        "number": None,
        "parent": None,
        "payments": {
            "object": "list",
            "data": [],
            "has_more": False,
            "url": f"/v1/invoice_payments?invoice={invoice_id}",
        },
        "period_end": created,
        "period_start": created,
        "post_payment_credit_notes_amount": 0,
        "pre_payment_credit_notes_amount": 0,
        "starting_balance": 0,
        "status": "draft",
        "status_transitions": {
            "finalized_at": None,
            "marked_uncollectible_at": None,
            "paid_at": None,
            "voided_at": None,
        },
        "subtotal": 0,
        "subtotal_excluding_tax": 0,
        "total": 0,
        "total_discount_amounts": [],
        "total_excluding_tax": 0,
        "total_taxes": [],
    }


def _plant_deleted_draft(g: _Gen, company: Company, subs: list[_Sub]) -> None:
    """A one-off draft invoice someone made and deleted near the end of the history.

    Deleting drafts is routine in Stripe: the invoice is gone (GET answers 404), but its
    ``invoice.created`` and ``invoice.deleted`` events stay listed for 30 days and still name
    it. It is recorded in ``company.planted["deleted_draft"]``. Its own seeded PRNG keeps
    every other record of the company unchanged.
    """
    prng = random.Random(f"{g.spec.seed}:deleted_draft")  # noqa: S311 - synthetic data
    planted = company.planted.setdefault("deleted_draft", [])
    day = g.spec.end - datetime.timedelta(days=2)
    # The customer must exist before its draft, and the draft must fall inside the history.
    fits = [s for s in subs if s.start < day and day >= g.window_start]
    if not fits:
        return
    sub = prng.choice(fits)
    cur = sub.currency.lower()
    inv_id = g.rid("in_", 24, prng)
    created = _ts(day, sub.hour_s)
    unit = price_amount("seats", sub.currency, "month")
    quantity = prng.randint(1, 20)
    amount = unit * quantity
    tax = tax_for(amount, sub.tax_rate)
    txr = f"txr_{sub.country.lower()}{('_' + sub.state.lower()) if sub.state else ''}"
    taxes = {
        "tax_behavior": "exclusive",
        "tax_rate_details": {"tax_rate": txr},
        "taxability_reason": "standard_rated" if tax else "not_collecting",
        "taxable_amount": amount,
        "type": "tax_rate_details",
    }
    line = {
        "id": g.rid("il_", 24, prng),
        "object": "line_item",
        "amount": amount,
        "currency": cur,
        "description": "Seats true-up",
        "discount_amounts": [],
        "discountable": True,
        "discounts": [],
        "invoice": inv_id,
        "livemode": False,
        "metadata": {},
        "parent": {
            "type": "invoice_item_details",
            "invoice_item_details": {
                "invoice_item": g.rid("ii_", 24, prng),
                "proration": False,
                "proration_details": {"credited_items": None},
                "subscription": None,
            },
            "subscription_item_details": None,
        },
        "period": {"start": created, "end": created},
        "pretax_credit_amounts": [],
        "pricing": {
            "price_details": {
                "price": f"price_seats_{cur}_trueup",
                "product": "prod_seats",
            },
            "type": "price_details",
            "unit_amount_decimal": str(unit),
        },
        "quantity": quantity,
        "subtotal": amount,
        "taxes": [dict(taxes, amount=tax)],
    }
    draft = draft_invoice(
        inv_id,
        created=created,
        currency=cur,
        customer=sub.customer_id,
        customer_name=sub.name,
        country=sub.country,
    )
    draft["lines"]["data"] = [line]
    draft.update(
        amount_due=amount + tax,
        amount_remaining=amount + tax,
        subtotal=amount,
        subtotal_excluding_tax=amount,
        total=amount + tax,
        total_excluding_tax=amount,
        total_taxes=[dict(taxes, amount=tax, taxable_amount=amount)],
    )
    events = company.stripe["event"]
    for at, etype in ((created, "invoice.created"), (created + 3 * 3600, "invoice.deleted")):
        events.append(
            {
                "id": g.rid("evt_", 24, prng),
                "object": "event",
                "api_version": STRIPE_API_VERSION,
                "created": at,
                "data": {"object": copy.deepcopy(draft)},
                "livemode": False,
                "pending_webhooks": 0,
                "request": {"id": None, "idempotency_key": None},
                "type": etype,
            }
        )
    # Stable: the events already in order keep their relative order.
    events.sort(key=lambda e: e["created"])
    planted.append(_plant("stripe", "invoice", inv_id, "deleted"))


def _plant(system: str, obj: str, rid: str, fld: str) -> Record:
    return {"system": system, "object": obj, "id": rid, "field": fld}


def _pick(rng: random.Random, pool: list[Any], n: int) -> list[Any]:
    if not pool:
        return []
    return rng.sample(pool, min(n, len(pool)))


def _account(g: _Gen, name: str, entity: str, parent_id: str | None, *, parent: bool) -> Record:
    rng = g.rng
    currency = LEGAL_ENTITIES[entity][1]
    country = rng.choice(LEGAL_ENTITIES[entity][3])
    if country == "US":
        state, city, postal, _ = rng.choice(_US_STATES_IN_RANGE)
    else:
        city, postal = rng.choice(_COUNTRY_CITY[country])
        state = ""
    created = _ts(g.window_start, 0) - rng.randint(400, 1400) * 86400 + rng.randint(0, 86399)
    modified = min(created + rng.randint(0, 700) * 86400, g.end_ts - 3600)
    return {
        "Id": g.sfid("001"),
        "Name": name,
        "ParentId": parent_id,
        "Type": "Customer - Direct" if parent or rng.random() < 0.8 else "Customer - Channel",
        "BillingStreet": f"{rng.randint(1, 999)} {rng.choice(_NAME_A).replace(chr(39), '')} St",
        "BillingCity": city,
        "BillingState": state or None,
        "BillingPostalCode": postal,
        "BillingCountry": country,
        "CurrencyIsoCode": currency,
        "Legal_Entity__c": entity,
        "PO_Required__c": rng.random() < 0.2,
        "CreatedDate": sf_datetime(created),
        "LastModifiedDate": sf_datetime(modified),
        "SystemModstamp": sf_datetime(modified),
    }


def _new_sub(g: _Gen, acct: Record, entity: str) -> _Sub:
    rng = g.rng
    country = acct["BillingCountry"]
    if country == "US":
        rate = next(s[3] for s in _US_STATES if s[0] == acct["BillingState"])
    else:
        rate = _VAT[country]
    interval = "month" if rng.random() < 0.6 else "year"
    span = 400 if interval == "month" else 3 * 365
    start = g.window_start - datetime.timedelta(days=rng.randint(-1, span))
    # A share of subscriptions start inside the window, so New Business shows up there too.
    if rng.random() < 0.25:
        days = max(1, (g.spec.end - g.window_start).days - 5)
        start = g.window_start + datetime.timedelta(days=rng.randint(0, days))
    products: list[tuple[str, int]] = [("platform", 1)]
    if rng.random() < 0.85:
        products.append(("seats", rng.randint(5, 250)))
    if rng.random() < 0.3:
        products.append(("support", 1))
    canceled: datetime.date | None = None
    if interval == "month" and rng.random() < 0.06:
        canceled = g.window_start + datetime.timedelta(
            days=rng.randint(30, max(31, (g.spec.end - g.window_start).days))
        )
        if canceled <= start or canceled > g.spec.end:
            canceled = None
    return _Sub(
        account_id=acct["Id"],
        name=acct["Name"],
        entity=entity,
        currency=LEGAL_ENTITIES[entity][1],
        country=country,
        state=acct["BillingState"] or "",
        tax_rate=rate,
        customer_id=g.rid("cus_", 14),
        sub_id=g.rid("sub_", 24),
        interval=interval,
        start=start,
        hour_s=rng.randint(8 * 3600, 18 * 3600),
        products=products,
        item_ids=[],
        canceled_on=canceled,
        invoice_prefix="".join(
            rng.choice(string.ascii_uppercase + string.digits) for _ in range(8)
        ),
    )


def _period_start(sub: _Sub, k: int) -> datetime.date:
    return add_months(sub.start, k if sub.interval == "month" else 12 * k)


def _build_terms(g: _Gen, sub: _Sub) -> None:
    """Contract terms of 12 months from the start, up to the last one begun by ``end``."""
    k = 0
    while True:
        term_start = add_months(sub.start, 12 * k)
        if term_start > g.spec.end or (sub.canceled_on and term_start >= sub.canceled_on):
            break
        sub.terms.append((term_start, g.sfid("800"), g.sfid("006")))
        k += 1


def _term_for(sub: _Sub, day: datetime.date) -> tuple[datetime.date, str, str]:
    current = sub.terms[0]
    for term in sub.terms:
        if term[0] <= day:
            current = term
    return current


def _price_id(product: str, currency: str, interval: str | None) -> str:
    suffix = f"_{interval}" if interval else ""
    return f"price_{product}_{currency.lower()}{suffix}"


def _period_lines(g: _Gen, sub: _Sub, k: int) -> list[Record]:
    """The lines of period ``k``'s invoice without ids; deterministic per (seed, sub, k)."""
    prng = random.Random(f"{g.spec.seed}:{sub.sub_id}:{k}")  # noqa: S311
    start = _period_start(sub, k)
    end = _period_start(sub, k + 1)
    lines: list[Record] = []
    for (product, qty), si_id in zip(sub.products, sub.item_ids, strict=True):
        lines.append(
            {
                "product": f"prod_{product}",
                "price": _price_id(product, sub.currency, sub.interval),
                "unit": price_amount(product, sub.currency, sub.interval),
                "quantity": qty,
                "kind": "subscription_item_details",
                "si": si_id,
                "start": start,
                "end": end,
            }
        )
    if sub.target_lines:
        for n in range(sub.target_lines - len(lines)):
            lines.append(
                {
                    "product": "prod_seats",
                    "price": f"price_seats_{sub.currency.lower()}_trueup",
                    "unit": price_amount("seats", sub.currency, "month"),
                    "quantity": prng.randint(1, 20),
                    "kind": "invoice_item_details",
                    "label": f"Seats true-up, workspace {n + 1:02d}",
                    "start": start,
                    "end": end,
                }
            )
    if k == 0:
        lines.append(
            {
                "product": "prod_onboarding",
                "price": _price_id("onboarding", sub.currency, None),
                "unit": price_amount("onboarding", sub.currency, None),
                "quantity": 1,
                "kind": "invoice_item_details",
                "start": start,
                "end": start,
            }
        )
    return lines


def _subtotal(g: _Gen, sub: _Sub, k: int) -> int:
    return sum(line["unit"] * line["quantity"] for line in _period_lines(g, sub, k))


def _build_invoices(g: _Gen, sub: _Sub) -> None:
    rng = g.rng
    k = 0
    while True:
        start = _period_start(sub, k)
        if start > g.spec.end or (sub.canceled_on and start >= sub.canceled_on):
            break
        if start >= g.window_start:
            sub.invoices.append(_invoice(g, sub, k, rng))
        k += 1


def _invoice(g: _Gen, sub: _Sub, k: int, rng: random.Random) -> Record:
    start = _period_start(sub, k)
    end = _period_start(sub, k + 1)
    inv_id = g.rid("in_", 24)
    cur = sub.currency.lower()
    txr = f"txr_{sub.country.lower()}{('_' + sub.state.lower()) if sub.state else ''}"
    lines: list[Record] = []
    for spec_line in _period_lines(g, sub, k):
        amount = spec_line["unit"] * spec_line["quantity"]
        name = PRODUCTS[spec_line["product"]][0]
        tax = tax_for(amount, sub.tax_rate)
        if spec_line["kind"] == "subscription_item_details":
            parent: Record = {
                "type": "subscription_item_details",
                "invoice_item_details": None,
                "subscription_item_details": {
                    "invoice_item": None,
                    "proration": False,
                    "proration_details": {"credited_items": None},
                    "subscription": sub.sub_id,
                    "subscription_item": spec_line["si"],
                },
            }
            # Stripe writes a multiplication sign in subscription line descriptions.
            times = "\u00d7"
            desc = (
                f"{spec_line['quantity']} {times} {name} (at {spec_line['unit']} / {sub.interval})"
            )
        else:
            parent = {
                "type": "invoice_item_details",
                "invoice_item_details": {
                    "invoice_item": g.rid("ii_", 24),
                    "proration": False,
                    "proration_details": {"credited_items": None},
                    "subscription": sub.sub_id,
                },
                "subscription_item_details": None,
            }
            desc = spec_line.get("label", name)
        lines.append(
            {
                "id": g.rid("il_", 24),
                "object": "line_item",
                "amount": amount,
                "currency": cur,
                "description": desc,
                "discount_amounts": [],
                "discountable": True,
                "discounts": [],
                "invoice": inv_id,
                "livemode": False,
                "metadata": {},
                "parent": parent,
                "period": {"start": _ts(spec_line["start"]), "end": _ts(spec_line["end"])},
                "pretax_credit_amounts": [],
                "pricing": {
                    "price_details": {"price": spec_line["price"], "product": spec_line["product"]},
                    "type": "price_details",
                    "unit_amount_decimal": str(spec_line["unit"]),
                },
                "quantity": spec_line["quantity"],
                "subtotal": amount,
                "taxes": [
                    {
                        "amount": tax,
                        "tax_behavior": "exclusive",
                        "tax_rate_details": {"tax_rate": txr},
                        "taxability_reason": "standard_rated" if tax else "not_collecting",
                        "taxable_amount": amount,
                        "type": "tax_rate_details",
                    }
                ],
            }
        )
    subtotal = sum(line["amount"] for line in lines)
    tax_total = sum(line["taxes"][0]["amount"] for line in lines)
    total = subtotal + tax_total
    created = _ts(start, sub.hour_s)
    finalized = created + 3600
    days_old = (g.spec.end - start).days
    status = "paid"
    paid_at: int | None = None
    voided_at: int | None = None
    roll = rng.random()
    if days_old > 20 and roll < 0.02:
        status = "void"
        voided_at = finalized + 5 * 86400
    elif days_old <= 12 and roll < 0.5:
        status = "open"
    else:
        paid_at = finalized + rng.randint(600, 3 * 86400)
        if paid_at > g.end_ts:
            status, paid_at = "open", None
    _term_start, contract_id, opp_id = _term_for(sub, start)
    paid = total if status == "paid" else 0
    return {
        "id": inv_id,
        "object": "invoice",
        "account_country": sub.country,
        "amount_due": total if status != "void" else 0,
        "amount_overpaid": 0,
        "amount_paid": paid,
        "amount_remaining": total - paid if status == "open" else 0,
        "amount_shipping": 0,
        "attempt_count": 1 if status == "paid" else 0,
        "attempted": status == "paid",
        "auto_advance": status == "open",
        "billing_reason": "subscription_create" if k == 0 else "subscription_cycle",
        "collection_method": "charge_automatically",
        "created": created,
        "currency": cur,
        # Stripe always sends the key; the PO plant fills it for PO-required accounts.
        "custom_fields": None,
        "customer": sub.customer_id,
        "customer_email": None,
        "customer_name": sub.name,
        "default_payment_method": None,
        "description": None,
        "discounts": [],
        "due_date": None,
        "effective_at": finalized,
        "ending_balance": 0,
        "last_finalization_error": None,
        "lines": {
            "object": "list",
            "data": lines,
            "has_more": False,
            "url": f"/v1/invoices/{inv_id}/lines",
        },
        "livemode": False,
        "metadata": {},
        "number": f"{sub.invoice_prefix}-{k + 1:04d}",
        "parent": {
            "type": "subscription_details",
            "quote_details": None,
            "subscription_details": {
                "metadata": {
                    "salesforce_contract_id": contract_id,
                    "salesforce_opportunity_id": opp_id,
                },
                "subscription": sub.sub_id,
            },
        },
        "payments": {
            "object": "list",
            "data": [],
            "has_more": False,
            "url": f"/v1/invoice_payments?invoice={inv_id}",
        },
        "period_end": _ts(end),
        "period_start": _ts(start),
        "post_payment_credit_notes_amount": 0,
        "pre_payment_credit_notes_amount": 0,
        "starting_balance": 0,
        "status": status,
        "status_transitions": {
            "finalized_at": finalized,
            "marked_uncollectible_at": None,
            "paid_at": paid_at,
            "voided_at": voided_at,
        },
        "subtotal": subtotal,
        "subtotal_excluding_tax": subtotal,
        "total": total,
        "total_discount_amounts": [],
        "total_excluding_tax": subtotal,
        "total_taxes": [
            {
                "amount": tax_total,
                "tax_behavior": "exclusive",
                "tax_rate_details": {"tax_rate": txr},
                "taxability_reason": "standard_rated" if tax_total else "not_collecting",
                "taxable_amount": subtotal,
                "type": "tax_rate_details",
            }
        ],
    }


def _customer(g: _Gen, sub: _Sub) -> Record:
    created = _ts(sub.start, sub.hour_s) - 86400
    slug = "".join(ch for ch in sub.name.lower() if ch.isalnum())[:20]
    return {
        "id": sub.customer_id,
        "object": "customer",
        "address": {
            "city": None,
            "country": sub.country,
            "line1": None,
            "line2": None,
            "postal_code": None,
            "state": sub.state or None,
        },
        "balance": 0,
        "created": created,
        "currency": sub.currency.lower(),
        "default_source": None,
        "delinquent": False,
        "description": None,
        "email": f"billing@{slug}.example.com",
        "invoice_prefix": sub.invoice_prefix,
        "invoice_settings": {
            "custom_fields": None,
            "default_payment_method": None,
            "footer": None,
            "rendering_options": None,
        },
        "livemode": False,
        "metadata": {"salesforce_account_id": sub.account_id, "legal_entity": sub.entity},
        "name": sub.name,
        "phone": None,
        "preferred_locales": [],
        "shipping": None,
        "tax_exempt": "none",
        "test_clock": None,
    }


def _subscription(g: _Gen, sub: _Sub) -> Record:
    created = _ts(sub.start, sub.hour_s)
    # The current period is the one containing `end` (or the last one before cancellation).
    k = 0
    while _period_start(sub, k + 1) <= g.spec.end and not (
        sub.canceled_on and _period_start(sub, k + 1) >= sub.canceled_on
    ):
        k += 1
    period_start, period_end = _period_start(sub, k), _period_start(sub, k + 1)
    items = []
    for (product, qty), si_id in zip(sub.products, sub.item_ids, strict=True):
        price_id = _price_id(product, sub.currency, sub.interval)
        unit = price_amount(product, sub.currency, sub.interval)
        items.append(
            {
                "id": si_id,
                "object": "subscription_item",
                "created": created,
                "current_period_end": _ts(period_end),
                "current_period_start": _ts(period_start),
                "discounts": [],
                "metadata": {},
                "price": {
                    "id": price_id,
                    "object": "price",
                    "active": True,
                    "billing_scheme": "per_unit",
                    "created": 1672531200,
                    "currency": sub.currency.lower(),
                    "livemode": False,
                    "lookup_key": None,
                    "metadata": {},
                    "nickname": None,
                    "product": f"prod_{product}",
                    "recurring": {
                        "interval": sub.interval,
                        "interval_count": 1,
                        "meter": None,
                        "usage_type": "licensed",
                    },
                    "tax_behavior": "exclusive",
                    "type": "recurring",
                    "unit_amount": unit,
                    "unit_amount_decimal": str(unit),
                },
                "quantity": qty,
                "subscription": sub.sub_id,
                "tax_rates": [],
            }
        )
    _, contract_id, opp_id = sub.terms[-1]
    canceled_ts = _ts(sub.canceled_on, sub.hour_s) if sub.canceled_on else None
    return {
        "id": sub.sub_id,
        "object": "subscription",
        "automatic_tax": {"enabled": False, "liability": None},
        "billing_cycle_anchor": created,
        "cancel_at": None,
        "cancel_at_period_end": False,
        "canceled_at": canceled_ts,
        "cancellation_details": {
            "comment": None,
            "feedback": None,
            "reason": "cancellation_requested" if canceled_ts else None,
        },
        "collection_method": "charge_automatically",
        "created": created,
        "currency": sub.currency.lower(),
        "customer": sub.customer_id,
        "days_until_due": None,
        "default_payment_method": None,
        "description": None,
        "discounts": [],
        "ended_at": canceled_ts,
        "items": {
            "object": "list",
            "data": items,
            "has_more": False,
            "url": f"/v1/subscription_items?subscription={sub.sub_id}",
        },
        "latest_invoice": sub.invoices[-1]["id"] if sub.invoices else None,
        "livemode": False,
        "metadata": {"salesforce_contract_id": contract_id, "salesforce_opportunity_id": opp_id},
        "start_date": created,
        "status": "canceled" if canceled_ts else "active",
        "trial_end": None,
        "trial_start": None,
    }


def _crm_deals(g: _Gen, subs: list[_Sub]) -> tuple[list[Record], list[Record]]:
    rng = g.rng
    contracts: list[Record] = []
    opps: list[Record] = []
    for sub in subs:
        per_term = 1 if sub.interval == "year" else 12
        for n, (term_start, contract_id, opp_id) in enumerate(sub.terms):
            term_end = add_months(term_start, 12) - datetime.timedelta(days=1)
            close = term_start - datetime.timedelta(days=rng.randint(2, 10))
            created = _ts(close, 9 * 3600) - rng.randint(10, 60) * 86400
            closed_at = _ts(close, 17 * 3600)
            g.contract_number += 1
            contracts.append(
                {
                    "Id": contract_id,
                    "AccountId": sub.account_id,
                    "Status": "Activated",
                    "StartDate": term_start.isoformat(),
                    "EndDate": term_end.isoformat(),
                    "ContractTerm": 12,
                    "ContractNumber": f"{g.contract_number:08d}",
                    "CurrencyIsoCode": sub.currency,
                    "ActivatedDate": sf_datetime(_ts(term_start, 8 * 3600)),
                    "CreatedDate": sf_datetime(closed_at),
                    "LastModifiedDate": sf_datetime(_ts(term_start, 8 * 3600)),
                    "SystemModstamp": sf_datetime(_ts(term_start, 8 * 3600)),
                }
            )
            subtotal = _subtotal(g, sub, n * per_term)
            opps.append(
                {
                    "Id": opp_id,
                    "Name": f"{sub.name} - {'New Business' if n == 0 else 'Renewal'}"
                    f" {term_start.year}",
                    "AccountId": sub.account_id,
                    "StageName": "Closed Won",
                    "CloseDate": close.isoformat(),
                    "Amount": _major(subtotal, sub.currency),
                    "Type": "New Business" if n == 0 else "Renewal",
                    "IsClosed": True,
                    "IsWon": True,
                    "ContractId": contract_id,
                    "CurrencyIsoCode": sub.currency,
                    "CreatedDate": sf_datetime(created),
                    "LastModifiedDate": sf_datetime(closed_at),
                    "SystemModstamp": sf_datetime(closed_at),
                }
            )
    return contracts, opps


# Product2 ids of the CPQ price book, one per product (ProductCode = the Stripe product id).
CPQ_PRODUCT_IDS: dict[str, str] = {
    key: salesforce_id("01t", f"01t5g000000{n:04d}") for n, key in enumerate(PRODUCTS, start=1)
}
_BILLING_FREQUENCY = {"month": "Monthly", "year": "Annual"}


@dataclass
class _Cpq:
    """The CPQ records of the company and the quote lines planted with a bad quantity."""

    quotes: list[Record] = field(default_factory=list)
    quote_lines: list[Record] = field(default_factory=list)
    subscriptions: list[Record] = field(default_factory=list)
    amendment_opportunities: list[Record] = field(default_factory=list)
    planted: list[Record] = field(default_factory=list)


def _sf_ts(value: str) -> int:
    """Unix seconds of a Salesforce datetime string written by ``sf_datetime``."""
    moment = datetime.datetime.strptime(value, "%Y-%m-%dT%H:%M:%S.%f%z")
    return int(moment.timestamp())


def _qty(n: int) -> Decimal:
    # CPQ quantities are Number(18, 2) fields: the API sends 25.0, not 25.
    return Decimal(n).quantize(Decimal("0.1"))


def _cpq(g: _Gen, subs: list[_Sub], opportunities: list[Record], plant_n: int) -> _Cpq:
    """CPQ quotes, quote lines and subscriptions consistent with Stripe and the CRM.

    Every contract term has one primary, accepted quote (Type Quote for new business, Renewal
    after) on its opportunity, with one line per Stripe subscription item: the same product
    (SBQQ__ProductCode__c is the Stripe product), quantity and unit price (the price per billing
    period, a decimal in the opportunity's currency). Contracting the quote made one
    SBQQ__Subscription__c per line under the term's contract; a renewal line names the
    subscription it renews (SBQQ__RenewedSubscription__c).

    Some monthly subscriptions also get an Amendment opportunity closed in their current term
    that changes the seat count from the next billing period on. Stripe has not billed that
    period by the end of the history, so every invoice still matches the quantity contracted
    for its period. The amendment quote carries every line of the contract (SBQQ__Existing__c,
    SBQQ__UpgradedSubscription__c, SBQQ__PriorQuantity__c); the changed line yields a delta
    subscription whose SBQQ__RevisedSubscription__c points at the original.

    A stream of its own: the CPQ records never shift the records generated before them.
    """
    crng = random.Random(f"{g.spec.seed}:salesforce-cpq")  # noqa: S311
    out = _Cpq()
    opp_by_id = {o["Id"]: o for o in opportunities}
    counters = {"quote": 0, "line": 0, "sub": 0}

    def number(kind: str) -> int:
        counters[kind] += 1
        return counters[kind]

    def quote(
        sub: _Sub,
        *,
        opp: Record,
        qtype: str,
        start: datetime.date,
        end: datetime.date,
        months: int,
        stamp: int,
        master_contract: str | None,
    ) -> Record:
        record: Record = {
            "Id": g.sfid("a0Q", crng),
            "Name": f"Q-{number('quote'):05d}",
            "SBQQ__Account__c": sub.account_id,
            "SBQQ__Opportunity2__c": opp["Id"],
            "SBQQ__Primary__c": True,
            "SBQQ__Status__c": "Accepted",
            "SBQQ__Type__c": qtype,
            "SBQQ__StartDate__c": start.isoformat(),
            "SBQQ__EndDate__c": end.isoformat(),
            "SBQQ__SubscriptionTerm__c": Decimal(months),
            "SBQQ__NetAmount__c": Decimal(0),
            "SBQQ__BillingFrequency__c": _BILLING_FREQUENCY[sub.interval],
            "SBQQ__PaymentTerms__c": "Net 30",
            "SBQQ__MasterContract__c": master_contract,
            "SBQQ__Ordered__c": True,
            "CurrencyIsoCode": sub.currency,
            "CreatedDate": sf_datetime(stamp - crng.randint(2, 20) * 86400),
            "LastModifiedDate": sf_datetime(stamp),
            "SystemModstamp": sf_datetime(stamp),
        }
        out.quotes.append(record)
        return record

    def line(
        sub: _Sub,
        q: Record,
        idx: int,
        *,
        quantity: int,
        prior: int | None,
        start: datetime.date,
        end: datetime.date,
        periods: int,
        stamp: int,
        renewed: str | None = None,
        upgraded: str | None = None,
    ) -> Record:
        product, _qty_now = sub.products[idx]
        unit = _major(price_amount(product, sub.currency, sub.interval), sub.currency)
        effective = quantity - (prior or 0)
        record: Record = {
            "Id": g.sfid("a0L", crng),
            "Name": f"QL-{number('line'):07d}",
            "SBQQ__Quote__c": q["Id"],
            "SBQQ__Number__c": Decimal(idx + 1),
            "SBQQ__Product__c": CPQ_PRODUCT_IDS[f"prod_{product}"],
            "SBQQ__ProductCode__c": f"prod_{product}",
            "SBQQ__Quantity__c": _qty(quantity),
            "SBQQ__PriorQuantity__c": None if prior is None else _qty(prior),
            "SBQQ__ListPrice__c": unit,
            "SBQQ__NetPrice__c": unit,
            "SBQQ__NetTotal__c": unit * effective * periods,
            "SBQQ__StartDate__c": start.isoformat(),
            "SBQQ__EndDate__c": end.isoformat(),
            "SBQQ__SubscriptionTerm__c": q["SBQQ__SubscriptionTerm__c"],
            "SBQQ__ProrateMultiplier__c": Decimal(periods),
            "SBQQ__SubscriptionPricing__c": "Fixed Price",
            "SBQQ__ChargeType__c": "Recurring",
            "SBQQ__BillingType__c": "Advance",
            "SBQQ__BillingFrequency__c": _BILLING_FREQUENCY[sub.interval],
            "SBQQ__Renewal__c": renewed is not None,
            "SBQQ__Existing__c": upgraded is not None,
            "SBQQ__RenewedSubscription__c": renewed,
            "SBQQ__UpgradedSubscription__c": upgraded,
            "Stripe_Subscription_Item_Id__c": sub.item_ids[idx],
            "CurrencyIsoCode": sub.currency,
            "CreatedDate": q["CreatedDate"],
            "LastModifiedDate": sf_datetime(stamp),
            "SystemModstamp": sf_datetime(stamp),
        }
        q["SBQQ__NetAmount__c"] += record["SBQQ__NetTotal__c"]
        out.quote_lines.append(record)
        return record

    def subscription(
        sub: _Sub,
        ql: Record,
        contract_id: str,
        *,
        quantity: int,
        start: datetime.date,
        end: datetime.date,
        stamp: int,
        original_line: Record,
        revised: str | None,
    ) -> Record:
        sid = g.sfid("a0S", crng)
        record: Record = {
            "Id": sid,
            "Name": f"SUB-{number('sub'):07d}",
            "SBQQ__Contract__c": contract_id,
            "SBQQ__Account__c": sub.account_id,
            "SBQQ__Product__c": ql["SBQQ__Product__c"],
            "SBQQ__Quantity__c": _qty(quantity),
            "SBQQ__RenewalQuantity__c": _qty(quantity),
            "SBQQ__ListPrice__c": ql["SBQQ__ListPrice__c"],
            "SBQQ__NetPrice__c": ql["SBQQ__NetPrice__c"],
            "SBQQ__CustomerPrice__c": ql["SBQQ__NetPrice__c"],
            "SBQQ__RenewalPrice__c": ql["SBQQ__NetPrice__c"],
            "SBQQ__SubscriptionStartDate__c": start.isoformat(),
            "SBQQ__SubscriptionEndDate__c": end.isoformat(),
            "SBQQ__StartDate__c": start.isoformat(),
            "SBQQ__EndDate__c": end.isoformat(),
            "SBQQ__QuoteLine__c": ql["Id"],
            "SBQQ__OriginalQuoteLine__c": original_line["Id"],
            "SBQQ__RevisedSubscription__c": revised,
            "SBQQ__RootId__c": revised or sid,
            "SBQQ__TerminatedDate__c": None,
            "SBQQ__SubscriptionType__c": "Renewable",
            "SBQQ__ProductSubscriptionType__c": "Renewable",
            "SBQQ__BillingFrequency__c": ql["SBQQ__BillingFrequency__c"],
            "SBQQ__BillingType__c": "Advance",
            "SBQQ__ChargeType__c": "Recurring",
            "SBQQ__ProrateMultiplier__c": ql["SBQQ__ProrateMultiplier__c"],
            "Stripe_Subscription_Item_Id__c": ql["Stripe_Subscription_Item_Id__c"],
            "CurrencyIsoCode": sub.currency,
            "CreatedDate": sf_datetime(stamp),
            "LastModifiedDate": sf_datetime(stamp),
            "SystemModstamp": sf_datetime(stamp),
        }
        out.subscriptions.append(record)
        return record

    originals: list[Record] = []
    for sub in subs:
        per_term = 12 if sub.interval == "month" else 1
        previous: list[Record] = []
        current: list[tuple[Record, Record]] = []
        for n, (term_start, contract_id, opp_id) in enumerate(sub.terms):
            term_end = add_months(term_start, 12) - datetime.timedelta(days=1)
            opp = opp_by_id[opp_id]
            closed = _sf_ts(opp["SystemModstamp"])
            q = quote(
                sub,
                opp=opp,
                qtype="Quote" if n == 0 else "Renewal",
                start=term_start,
                end=term_end,
                months=12,
                stamp=closed,
                master_contract=None,
            )
            activated = _ts(term_start, 8 * 3600)
            current = []
            for idx, (_product, qty) in enumerate(sub.products):
                ql = line(
                    sub,
                    q,
                    idx,
                    quantity=qty,
                    prior=None,
                    start=term_start,
                    end=term_end,
                    periods=per_term,
                    stamp=closed + idx + 1,
                    renewed=previous[idx]["Id"] if previous else None,
                )
                originals.append(ql)
                current.append(
                    (
                        ql,
                        subscription(
                            sub,
                            ql,
                            contract_id,
                            quantity=qty,
                            start=term_start,
                            end=term_end,
                            stamp=activated + idx + 1,
                            original_line=ql,
                            revised=None,
                        ),
                    )
                )
            previous = [s for _ql, s in current]
        if sub.canceled_on is not None:
            for _ql, s in current:
                s["SBQQ__TerminatedDate__c"] = sub.canceled_on.isoformat()
        _amend(g, crng, sub, current, out=out, quote=quote, line=line, subscription=subscription)

    # Planted: a quote line whose quantity went negative (a bad import); the contract check
    # must quarantine it.
    for ql in _pick(crng, originals, plant_n):
        ql["SBQQ__Quantity__c"] = -ql["SBQQ__Quantity__c"]
        out.planted.append(
            _plant("salesforce", "SBQQ__QuoteLine__c", ql["Id"], "SBQQ__Quantity__c")
        )
    return out


def _amend(
    g: _Gen,
    crng: random.Random,
    sub: _Sub,
    current: list[tuple[Record, Record]],
    *,
    out: _Cpq,
    quote: Callable[..., Record],
    line: Callable[..., Record],
    subscription: Callable[..., Record],
) -> None:
    """A mid-term seat change on a monthly subscription, effective at its next billing period.

    Only when that period starts after the end of the history (Stripe has not billed it) and
    before the term ends; a few subscriptions qualify at any scale.
    """
    roll = crng.random()
    seats = next((i for i, (p, _q) in enumerate(sub.products) if p == "seats"), None)
    if sub.interval != "month" or sub.canceled_on is not None or seats is None or not current:
        return
    if roll >= 0.15 and out.amendment_opportunities:
        return
    term_start, contract_id, _opp_id = sub.terms[-1]
    next_term = add_months(term_start, 12)
    k = 0
    while _period_start(sub, k) <= g.spec.end:
        k += 1
    effective = _period_start(sub, k)
    days_in = (g.spec.end - term_start).days
    if effective >= next_term or days_in < 2:
        return
    periods = 0
    while _period_start(sub, k + periods) < next_term:
        periods += 1
    term_end = next_term - datetime.timedelta(days=1)
    old_qty = sub.products[seats][1]
    delta = crng.choice([-3, -2, -1, 2, 5, 10, 15, 25])
    if old_qty + delta < 1:
        delta = 5
    close = g.spec.end - datetime.timedelta(days=crng.randint(1, min(20, days_in - 1)))
    closed_at = _ts(close, 17 * 3600)
    unit = _major(price_amount("seats", sub.currency, "month"), sub.currency)
    opp: Record = {
        "Id": g.sfid("006", crng),
        "Name": f"{sub.name} - Amendment {close.year}",
        "AccountId": sub.account_id,
        "StageName": "Closed Won",
        "CloseDate": close.isoformat(),
        "Amount": unit * delta * periods,
        "Type": "Amendment",
        "IsClosed": True,
        "IsWon": True,
        "ContractId": contract_id,
        "CurrencyIsoCode": sub.currency,
        "CreatedDate": sf_datetime(closed_at - crng.randint(3, 15) * 86400),
        "LastModifiedDate": sf_datetime(closed_at),
        "SystemModstamp": sf_datetime(closed_at),
    }
    out.amendment_opportunities.append(opp)
    q = quote(
        sub,
        opp=opp,
        qtype="Amendment",
        start=effective,
        end=term_end,
        months=periods,
        stamp=closed_at,
        master_contract=contract_id,
    )
    for idx, (original, existing) in enumerate(current):
        qty = sub.products[idx][1]
        ql = line(
            sub,
            q,
            idx,
            quantity=qty + (delta if idx == seats else 0),
            prior=qty,
            start=effective,
            end=term_end,
            periods=periods,
            stamp=closed_at + idx + 1,
            upgraded=existing["Id"],
        )
        if idx == seats:
            subscription(
                sub,
                ql,
                contract_id,
                quantity=delta,
                start=effective,
                end=term_end,
                stamp=closed_at + 3600 + idx,
                original_line=original,
                revised=existing["Id"],
            )


def _pipeline_opps(g: _Gen, accounts: list[Record]) -> list[Record]:
    """Open and lost opportunities: noise a renewal reconciliation must ignore."""
    rng = g.rng
    opps: list[Record] = []
    for acct in accounts:
        if rng.random() >= 0.25:
            continue
        lost = rng.random() < 0.4
        close = g.spec.end + datetime.timedelta(days=rng.randint(-120, 90))
        created = _ts(close, 9 * 3600) - rng.randint(20, 90) * 86400
        modified = min(created + rng.randint(1, 15) * 86400, g.end_ts - 60)
        currency = acct["CurrencyIsoCode"]
        amount = Decimal(rng.randint(50, 900) * 100)
        opps.append(
            {
                "Id": g.sfid("006"),
                "Name": f"{acct['Name']} - Expansion",
                "AccountId": acct["Id"],
                "StageName": "Closed Lost"
                if lost
                else rng.choice(["Prospecting", "Qualification", "Negotiation/Review"]),
                "CloseDate": close.isoformat(),
                "Amount": amount * 150 if currency == "JPY" else amount,
                "Type": rng.choice(["Upsell", "New Business"]),
                "IsClosed": lost,
                "IsWon": False,
                "ContractId": None,
                "CurrencyIsoCode": currency,
                "CreatedDate": sf_datetime(created),
                "LastModifiedDate": sf_datetime(modified),
                "SystemModstamp": sf_datetime(modified),
            }
        )
    return opps


def _payments(
    g: _Gen, subs: list[_Sub], invoices: list[Record]
) -> tuple[list[Record], list[Record]]:
    pis: list[Record] = []
    charges: list[Record] = []
    for inv in invoices:
        if inv["status"] != "paid":
            continue
        paid_at = inv["status_transitions"]["paid_at"]
        currency = inv["currency"] if inv["currency"] != "usdx" else "usd"
        pi_id = g.rid("pi_", 24)
        ch_id = g.rid("ch_", 24)
        pm_id = g.rid("pm_", 24)
        pis.append(
            {
                "id": pi_id,
                "object": "payment_intent",
                "amount": inv["total"],
                "amount_capturable": 0,
                "amount_received": inv["total"],
                "canceled_at": None,
                "cancellation_reason": None,
                "capture_method": "automatic",
                "created": inv["status_transitions"]["finalized_at"],
                "currency": currency,
                "customer": inv["customer"],
                "description": "Subscription update",
                "last_payment_error": None,
                "latest_charge": ch_id,
                "livemode": False,
                "metadata": {},
                "payment_method": pm_id,
                "payment_method_types": ["card"],
                "status": "succeeded",
            }
        )
        charges.append(
            {
                "id": ch_id,
                "object": "charge",
                "amount": inv["total"],
                "amount_captured": inv["total"],
                "amount_refunded": 0,
                "balance_transaction": g.rid("txn_", 24),
                "billing_details": {"email": None, "name": inv["customer_name"]},
                "captured": True,
                "created": paid_at,
                "currency": currency,
                "customer": inv["customer"],
                "disputed": False,
                "failure_code": None,
                "failure_message": None,
                "livemode": False,
                "metadata": {},
                "outcome": {"network_status": "approved_by_network", "type": "authorized"},
                "paid": True,
                "payment_intent": pi_id,
                "payment_method": pm_id,
                "payment_method_details": {"type": "card"},
                "receipt_url": None,
                "refunded": False,
                "refunds": {
                    "object": "list",
                    "data": [],
                    "has_more": False,
                    "url": f"/v1/charges/{ch_id}/refunds",
                },
                "status": "succeeded",
            }
        )
        inv["payments"]["data"].append(
            {
                "id": g.rid("inpay_", 24),
                "object": "invoice_payment",
                "amount_paid": inv["total"],
                "amount_requested": inv["total"],
                "created": inv["status_transitions"]["finalized_at"],
                "currency": currency,
                "invoice": inv["id"],
                "is_default": True,
                "livemode": False,
                "payment": {"type": "payment_intent", "payment_intent": pi_id},
                "status": "paid",
                "status_transitions": {"canceled_at": None, "paid_at": paid_at},
            }
        )
    return pis, charges


_DECLINE: Record = {
    "type": "card_error",
    "code": "card_declined",
    "decline_code": "insufficient_funds",
    "message": "Your card has insufficient funds.",
}


@dataclass
class _Adjustments:
    """Billing adjustments after invoicing: credit notes, refunds, declined payment attempts."""

    credit_notes: list[Record] = field(default_factory=list)
    refunds: list[Record] = field(default_factory=list)
    payment_intents: list[Record] = field(default_factory=list)
    charges: list[Record] = field(default_factory=list)
    events: list[tuple[int, str, Record]] = field(default_factory=list)
    per_invoice: dict[str, int] = field(default_factory=dict)
    voided_any: bool = False

    def count_for(self, invoice_id: str) -> int:
        """The next credit note number of an invoice (1, 2, ...)."""
        self.per_invoice[invoice_id] = self.per_invoice.get(invoice_id, 0) + 1
        return self.per_invoice[invoice_id]


def _adjustments(
    g: _Gen, subs: list[_Sub], invoices: list[Record], charges: list[Record]
) -> _Adjustments:
    """Credit notes, refunds and declined payments on a deterministic share of invoices.

    A paid invoice may get a post-payment credit note refunded to its card: a service credit
    (part of a line), a seat downgrade (part of a line's quantity) or a duplicate (every line,
    refunded in full). An open invoice may get a pre-payment credit note for an order change
    (some voided again) and a declined payment attempt. Planted invoices are left alone.
    """
    # A stream of its own: adding adjustments never shifts the records generated before them.
    arng = random.Random(f"{g.spec.seed}:stripe-adjustments")  # noqa: S311
    rate_of = {s.customer_id: s.tax_rate for s in subs}
    charge_of = {c["payment_intent"]: c for c in charges}
    out = _Adjustments()
    forced_duplicate = forced_downgrade = forced_decline = False
    for inv in invoices:
        lines = inv["lines"]["data"]
        if inv["currency"] == "usdx" or not all(type(line["amount"]) is int for line in lines):
            continue
        rate = rate_of[inv["customer"]]
        roll = arng.random()
        if inv["status"] == "paid":
            kind: str | None = None
            if not forced_duplicate and len(lines) > 10:
                kind, forced_duplicate = "duplicate", True
            elif not forced_downgrade and any(line["quantity"] > 1 for line in lines):
                kind, forced_downgrade = "downgrade", True
            elif roll < 0.015:
                kind = "duplicate"
            elif roll < 0.04:
                kind = "downgrade"
            elif roll < 0.07:
                kind = "service_credit"
            if kind is not None:
                charge = charge_of[inv["payments"]["data"][-1]["payment"]["payment_intent"]]
                _post_payment_credit(g, arng, inv, rate=rate, charge=charge, kind=kind, out=out)
        elif inv["status"] == "open":
            if roll < 0.2:
                _pre_payment_credit(g, arng, inv, rate, out)
            if not forced_decline or arng.random() < 0.4:
                forced_decline = True
                _declined_payment(g, arng, inv, out)
    return out


def _credit_lines(
    g: _Gen, arng: random.Random, inv: Record, rate: Decimal, kind: str
) -> list[Record]:
    """The credited lines, each taxed on its own amount (half up) like an invoice line."""
    lines = inv["lines"]["data"]
    picked: list[tuple[int, int, Record | None, str]] = []
    if kind == "duplicate":
        picked = [(line["amount"], line["quantity"], line, line["description"]) for line in lines]
    elif kind == "downgrade":
        line = next((x for x in lines if x["quantity"] > 1), lines[0])
        unit = line["amount"] // line["quantity"]
        qty = arng.randint(1, max(1, line["quantity"] - 1))
        picked = [(unit * qty, qty, line, f"Downgrade: {qty} fewer ({line['description']})")]
    else:
        line = lines[0]
        amount = line["amount"] * arng.choice([5, 10, 20, 25, 50]) // 100
        picked = [(max(1, amount), 1, None, "Service credit")]
    out: list[Record] = []
    for amount, qty, line, desc in picked:
        tax = tax_for(amount, rate)
        taxes = (line or lines[0])["taxes"][0]
        out.append(
            {
                "id": g.rid("cnli_", 24, arng),
                "object": "credit_note_line_item",
                "amount": amount,
                "description": desc,
                "discount_amount": 0,
                "discount_amounts": [],
                "invoice_line_item": line["id"] if line is not None else None,
                "livemode": False,
                "metadata": {},
                "pretax_credit_amounts": [],
                "quantity": qty,
                "tax_rates": [],
                "taxes": [
                    {
                        "amount": tax,
                        "tax_behavior": "exclusive",
                        "tax_rate_details": taxes["tax_rate_details"],
                        "taxability_reason": taxes["taxability_reason"],
                        "taxable_amount": amount,
                        "type": "tax_rate_details",
                    }
                ],
                "type": "invoice_line_item" if line is not None else "custom_line_item",
                "unit_amount": amount // qty if line is not None else amount,
                "unit_amount_decimal": str(amount // qty if line is not None else amount),
            }
        )
    return out


def _credit_note(
    g: _Gen,
    arng: random.Random,
    inv: Record,
    lines: list[Record],
    *,
    type_: str,
    reason: str,
    created: int,
    number: int,
) -> Record:
    cn_id = g.rid("cn_", 24, arng)
    subtotal = sum(line["amount"] for line in lines)
    tax = sum(line["taxes"][0]["amount"] for line in lines)
    total = subtotal + tax
    details = inv["total_taxes"][0]
    return {
        "id": cn_id,
        "object": "credit_note",
        "amount": total,
        "amount_shipping": 0,
        "created": created,
        "currency": inv["currency"],
        "customer": inv["customer"],
        "customer_balance_transaction": None,
        "discount_amount": 0,
        "discount_amounts": [],
        "effective_at": created,
        "invoice": inv["id"],
        "lines": {
            "object": "list",
            "data": lines,
            "has_more": False,
            "url": f"/v1/credit_notes/{cn_id}/lines",
        },
        "livemode": False,
        "memo": None,
        "metadata": {},
        "number": f"{inv['number']}-CN-{number:02d}",
        "out_of_band_amount": None,
        "pdf": f"https://pay.stripe.com/credit_notes/{cn_id}/pdf",
        "post_payment_amount": total if type_ == "post_payment" else 0,
        "pre_payment_amount": total if type_ == "pre_payment" else 0,
        "reason": reason,
        "refunds": [],
        "status": "issued",
        "subtotal": subtotal,
        "subtotal_excluding_tax": subtotal,
        "total": total,
        "total_excluding_tax": subtotal,
        "total_taxes": [
            {
                "amount": tax,
                "tax_behavior": "exclusive",
                "tax_rate_details": details["tax_rate_details"],
                "taxability_reason": details["taxability_reason"],
                "taxable_amount": subtotal,
                "type": "tax_rate_details",
            }
        ],
        "type": type_,
        "voided_at": None,
    }


def credit_note_wire_view(cn: Record) -> Record:
    """The credit note as the API shows it: only the first 10 lines inline, the rest paged."""
    return invoice_wire_view(cn)


def _post_payment_credit(
    g: _Gen,
    arng: random.Random,
    inv: Record,
    *,
    rate: Decimal,
    charge: Record,
    kind: str,
    out: _Adjustments,
) -> None:
    paid_at = inv["status_transitions"]["paid_at"]
    created = min(paid_at + arng.randint(1, 25) * 86400 + arng.randint(0, 7200), g.end_ts - 600)
    if created <= paid_at:
        return
    lines = _credit_lines(g, arng, inv, rate, kind)
    reason = {
        "duplicate": "duplicate",
        "downgrade": "order_change",
        "service_credit": "product_unsatisfactory",
    }[kind]
    cn = _credit_note(
        g,
        arng,
        inv,
        lines,
        type_="post_payment",
        reason=reason,
        created=created,
        number=out.count_for(inv["id"]),
    )
    amount = min(cn["total"], charge["amount"] - charge["amount_refunded"])
    refund: Record = {
        "id": g.rid("re_", 24, arng),
        "object": "refund",
        "amount": amount,
        "balance_transaction": g.rid("txn_", 24, arng),
        "charge": charge["id"],
        "created": created,
        "currency": charge["currency"],
        "destination_details": {"card": {"type": "refund"}, "type": "card"},
        "failure_reason": None,
        "metadata": {"credit_note": cn["id"]},
        "payment_intent": charge["payment_intent"],
        "reason": "duplicate" if kind == "duplicate" else "requested_by_customer",
        "receipt_number": None,
        "status": "succeeded",
    }
    cn["refunds"].append(
        {
            "amount_refunded": amount,
            "payment_record_refund": None,
            "refund": refund["id"],
            "type": "refund",
        }
    )
    charge["amount_refunded"] += amount
    charge["refunded"] = charge["amount_refunded"] == charge["amount"]
    charge["refunds"]["data"].insert(0, refund)
    inv["post_payment_credit_notes_amount"] += cn["total"]
    out.credit_notes.append(cn)
    out.refunds.append(refund)
    out.events += [
        (created, "credit_note.created", credit_note_wire_view(cn)),
        (created, "refund.created", refund),
        (created, "charge.refunded", copy.deepcopy(charge)),
    ]


def _pre_payment_credit(
    g: _Gen, arng: random.Random, inv: Record, rate: Decimal, out: _Adjustments
) -> None:
    finalized = inv["status_transitions"]["finalized_at"]
    created = min(finalized + arng.randint(3600, 2 * 86400), g.end_ts - 600)
    if created <= finalized:
        return
    lines = _credit_lines(g, arng, inv, rate, "service_credit")
    cn = _credit_note(
        g,
        arng,
        inv,
        lines,
        type_="pre_payment",
        reason="order_change",
        created=created,
        number=out.count_for(inv["id"]),
    )
    out.credit_notes.append(cn)
    out.events.append((created, "credit_note.created", credit_note_wire_view(cn)))
    voided = created + arng.randint(3600, 3 * 86400)
    if (not out.voided_any or arng.random() < 0.3) and voided < g.end_ts:
        out.voided_any = True
        # The creation event keeps the note as it was then: issued.
        out.events[-1] = (created, "credit_note.created", copy.deepcopy(out.events[-1][2]))
        cn["status"], cn["voided_at"] = "void", voided
        out.events.append((voided, "credit_note.voided", credit_note_wire_view(cn)))
        return
    inv["pre_payment_credit_notes_amount"] += cn["total"]
    inv["amount_due"] -= cn["total"]
    inv["amount_remaining"] -= cn["total"]


def _declined_payment(g: _Gen, arng: random.Random, inv: Record, out: _Adjustments) -> None:
    attempted = inv["status_transitions"]["finalized_at"] + arng.randint(60, 3600)
    if attempted >= g.end_ts:
        return
    pi_id = g.rid("pi_", 24, arng)
    ch_id = g.rid("ch_", 24, arng)
    pm_id = g.rid("pm_", 24, arng)
    amount = inv["amount_remaining"]
    charge: Record = {
        "id": ch_id,
        "object": "charge",
        "amount": amount,
        "amount_captured": 0,
        "amount_refunded": 0,
        "balance_transaction": None,
        "billing_details": {"email": None, "name": inv["customer_name"]},
        "captured": False,
        "created": attempted,
        "currency": inv["currency"],
        "customer": inv["customer"],
        "disputed": False,
        "failure_code": _DECLINE["code"],
        "failure_message": _DECLINE["message"],
        "livemode": False,
        "metadata": {},
        "outcome": {
            "network_status": "declined_by_network",
            "reason": _DECLINE["decline_code"],
            "type": "issuer_declined",
        },
        "paid": False,
        "payment_intent": pi_id,
        "payment_method": pm_id,
        "payment_method_details": {"type": "card"},
        "receipt_url": None,
        "refunded": False,
        "refunds": {
            "object": "list",
            "data": [],
            "has_more": False,
            "url": f"/v1/charges/{ch_id}/refunds",
        },
        "status": "failed",
    }
    intent: Record = {
        "id": pi_id,
        "object": "payment_intent",
        "amount": amount,
        "amount_capturable": 0,
        "amount_received": 0,
        "canceled_at": None,
        "cancellation_reason": None,
        "capture_method": "automatic",
        "created": attempted,
        "currency": inv["currency"],
        "customer": inv["customer"],
        "description": "Subscription update",
        "last_payment_error": dict(_DECLINE, charge=ch_id),
        "latest_charge": ch_id,
        "livemode": False,
        "metadata": {},
        "payment_method": None,
        "payment_method_types": ["card"],
        "status": "requires_payment_method",
    }
    inv["attempt_count"], inv["attempted"] = 1, True
    inv["next_payment_attempt"] = attempted + 3 * 86400
    inv["payments"]["data"].append(
        {
            "id": g.rid("inpay_", 24, arng),
            "object": "invoice_payment",
            "amount_paid": 0,
            "amount_requested": amount,
            "created": attempted,
            "currency": inv["currency"],
            "invoice": inv["id"],
            "is_default": True,
            "livemode": False,
            "payment": {"type": "payment_intent", "payment_intent": pi_id},
            "status": "open",
            "status_transitions": {"canceled_at": None, "paid_at": None},
        }
    )
    out.payment_intents.append(intent)
    out.charges.append(charge)
    out.events += [
        (attempted, "charge.failed", charge),
        (attempted, "payment_intent.payment_failed", intent),
        (attempted + 1, "invoice.payment_failed", invoice_wire_view(copy.deepcopy(inv))),
    ]


def invoice_wire_view(inv: Record) -> Record:
    """The invoice as the API shows it: only the first 10 lines inline, the rest paged."""
    lines = inv["lines"]["data"]
    view = dict(inv)
    view["lines"] = dict(inv["lines"], data=lines[:10], has_more=len(lines) > 10)
    return view


def _events(
    g: _Gen,
    customers: list[Record],
    invoices: list[Record],
    pis: list[Record],
    extra: list[tuple[int, str, Record]],
) -> list[Record]:
    raw: list[tuple[int, str, Record]] = list(extra)
    for cus in customers:
        raw.append((cus["created"], "customer.created", cus))
    pi_by_id = {p["id"]: p for p in pis}
    for inv in invoices:
        view = invoice_wire_view(inv)
        transitions = inv["status_transitions"]
        draft = dict(
            view,
            status="draft",
            amount_paid=0,
            amount_remaining=inv["total"],
            payments=dict(inv["payments"], data=[]),
            status_transitions={key: None for key in transitions},
        )
        raw.append((inv["created"], "invoice.created", draft))
        opened = dict(
            draft,
            status="open",
            status_transitions=dict(
                draft["status_transitions"], finalized_at=transitions["finalized_at"]
            ),
        )
        raw.append((transitions["finalized_at"], "invoice.finalized", opened))
        if inv["status"] == "paid":
            raw.append((transitions["paid_at"], "invoice.paid", view))
            pi_id = inv["payments"]["data"][-1]["payment"]["payment_intent"]
            raw.append((transitions["paid_at"], "payment_intent.succeeded", pi_by_id[pi_id]))
        elif inv["status"] == "void":
            raw.append((transitions["voided_at"], "invoice.voided", view))
    raw.sort(key=lambda item: (item[0], item[1], item[2]["id"]))
    return [
        {
            "id": g.rid("evt_", 24),
            "object": "event",
            "api_version": STRIPE_API_VERSION,
            "created": created,
            "data": {"object": obj},
            "livemode": False,
            "pending_webhooks": 0,
            "request": {"id": None, "idempotency_key": None},
            "type": etype,
        }
        for created, etype, obj in raw
    ]


def netsuite_master_data() -> dict[str, list[Record]]:
    """NetSuite master data the mapping CSVs point at: subsidiaries, currencies, items and the
    bank accounts refunds are paid from."""
    subsidiaries = [
        {
            "id": sid,
            "name": f"{entity} - Finsync {country}",
            "country": country,
            "currency": {"id": cid},
            "isInactive": False,
        }
        for entity, (sid, _ccy, cid, (country, *_rest)) in LEGAL_ENTITIES.items()
    ]
    names = {"USD": "US Dollar", "EUR": "Euro", "GBP": "British pound", "JPY": "Yen"}
    currencies = [
        {
            "id": cid,
            "name": names[ccy],
            "symbol": ccy,
            "currencyPrecision": CURRENCY_EXPONENT[ccy],
            "isBaseCurrency": ccy == "USD",
            "isInactive": False,
        }
        for _entity, (_sid, ccy, cid, _countries) in LEGAL_ENTITIES.items()
    ]
    items = [
        {
            "id": item_id,
            "itemId": name,
            "displayName": name,
            "itemType": _ITEM_TYPES.get(item_id, "NonInvtPart"),
            "isInactive": False,
        }
        for item_id, name in [
            ("101", "Platform"),
            ("102", "Seats"),
            ("103", "Premium Support"),
            ("104", "Onboarding"),
            ("105", "Service Credits"),
            (TAX_ITEM_ID, "Sales Tax"),
            (DISCOUNT_ITEM_ID, "Discounts"),
            (BAD_DEBT_ITEM_ID, "Bad Debt"),
        ]
    ]
    # One bank account per subsidiary that Stripe money moves through (legal_entities.csv maps
    # each entity's refunds to it).
    accounts = [
        {
            "id": refund_account_id(sid),
            "acctNumber": f"10{sid}0",
            "acctName": f"Stripe clearing {entity}",
            "acctType": "Bank",
            "subsidiary": {"id": sid},
            "currency": {"id": cid},
            "isInactive": False,
        }
        for entity, (sid, _ccy, cid, _countries) in LEGAL_ENTITIES.items()
    ]
    # Money received outside Stripe (a wire) clears through one account shared by every
    # subsidiary, as NetSuite's multi-subsidiary accounts are.
    accounts.append(
        {
            "id": OOB_CLEARING_ACCOUNT_ID,
            "acctNumber": "12000",
            "acctName": "Out-of-band receipts clearing",
            "acctType": "OthCurrAsset",
            "subsidiary": {"items": [{"id": sid} for sid, *_ in LEGAL_ENTITIES.values()]},
            "isInactive": False,
        }
    )
    return {"subsidiary": subsidiaries, "currency": currencies, "item": items, "account": accounts}


def refund_account_id(subsidiary_id: str) -> str:
    """The sandbox NetSuite bank account a subsidiary pays customer refunds from."""
    return f"11{subsidiary_id}"
