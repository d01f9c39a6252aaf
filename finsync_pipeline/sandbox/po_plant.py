"""Purchase orders of the accounts that require one, and a few planted without.

An account with ``PO_Required__c`` pays only an invoice that quotes its purchase order. One PO
covers a contract term, and the demo company keeps it in every place ``FINSYNC_PO_SOURCE`` can
name, so the demo posts the same POs whichever is configured:

- each invoice's custom field ``PO Number`` (the default source), as Stripe serves it:
  ``custom_fields`` is a list of ``{name, value}``, or null on every other invoice;
- the custom field ``PO_Number__c`` of the term's closed-won Opportunity
  (``salesforce_opportunity:PO_Number__c``), and of that Opportunity's primary CPQ quote
  (``salesforce_quote:PO_Number__c``). Each invoice names its term's Opportunity in
  ``parent.subscription_details.metadata.salesforce_opportunity_id``.

``max(1, accounts // 100)`` live invoices of PO-required accounts are planted without a PO,
deterministically, and recorded in ``company.planted["missing_po"]`` (with the Opportunity
they bill): each must be held as a ``missing_po`` exception, never posted. The PO is taken
off the invoice, its Opportunity and that Opportunity's quotes, so the same invoices are held
under every source: they are chosen among the invoices that are the only one of their term,
of customers that post cleanly, and that no other plant or record builds on, so the PO is the
only thing that holds them. A small company may have no such invoice alone in its term; one
with siblings is chosen then, and under a Salesforce source its siblings are held too.
"""

import hashlib
import random
from collections import Counter
from typing import Any

from finsync_pipeline.sandbox.generator import Company
from finsync_pipeline.sandbox.tax_plant import LIVE_STATUSES, excluded_ids

Record = dict[str, Any]

PO_FIELD = "PO Number"
CRM_PO_FIELD = "PO_Number__c"


def po_number(seed: int, account_id: str, term: str) -> str:
    """The PO an account issued for a contract term: deterministic, ERP-style digits."""
    digest = hashlib.sha256(f"{seed}:{account_id}:{term}".encode()).hexdigest()
    return f"45{int(digest[:12], 16) % 10**8:08d}"


def _subscription_metadata(inv: Record) -> dict[str, Any]:
    details = (inv.get("parent") or {}).get("subscription_details") or {}
    return details.get("metadata") or {}


def _term(inv: Record) -> str:
    contract = _subscription_metadata(inv).get("salesforce_contract_id")
    return str(contract or inv["created"] // (365 * 86400))


def _opportunity(inv: Record) -> str | None:
    value = _subscription_metadata(inv).get("salesforce_opportunity_id")
    return str(value) if value else None


def plant_purchase_orders(company: Company) -> None:
    """Give every invoice, term Opportunity and primary quote of a PO-required account its PO,
    then take it off a few invoices and the records of their terms."""
    rng = random.Random(f"{company.spec.seed}:missing_po")  # noqa: S311 - synthetic data
    wanted = max(1, company.spec.accounts // 100)
    required = {a["Id"] for a in company.salesforce["Account"] if a.get("PO_Required__c")}
    account_of = {
        c["id"]: c["metadata"].get("salesforce_account_id") for c in company.stripe["customer"]
    }
    _plant_crm_purchase_orders(company, required)
    excluded = excluded_ids(company)
    per_term = Counter(_opportunity(inv) for inv in company.stripe["invoice"])
    candidates: list[Record] = []
    for inv in company.stripe["invoice"]:
        account_id = account_of.get(inv["customer"])
        if account_id not in required:
            continue
        value = po_number(company.spec.seed, str(account_id), _term(inv))
        inv["custom_fields"] = [{"name": PO_FIELD, "value": value}]
        clean = not {inv["id"], inv["customer"], account_id} & excluded
        if inv["status"] in LIVE_STATUSES and clean:
            candidates.append(inv)
    alone = [i for i in candidates if _opportunity(i) and per_term[_opportunity(i)] == 1]
    pool = alone if len(alone) >= wanted else candidates
    chosen = sorted(rng.sample(pool, min(wanted, len(pool))), key=lambda i: i["id"])
    planted = company.planted.setdefault("missing_po", [])
    for inv in chosen:
        inv["custom_fields"] = None
        opportunity = _opportunity(inv)
        _clear_crm_purchase_order(company, opportunity)
        planted.append(
            {
                "system": "stripe",
                "object": "invoice",
                "id": inv["id"],
                "field": "custom_fields",
                "opportunity": opportunity,
            }
        )
    # Event snapshots copied the invoice's top-level fields when they were made.
    fields_of = {inv["id"]: inv["custom_fields"] for inv in company.stripe["invoice"]}
    for event in company.stripe.get("event", []):
        snap = event["data"]["object"]
        if snap.get("object") == "invoice" and snap.get("id") in fields_of:
            snap["custom_fields"] = fields_of[snap["id"]]


def _plant_crm_purchase_orders(company: Company, required: set[str]) -> None:
    """``PO_Number__c`` on each closed-won term Opportunity of a PO-required account (the PO
    of its contract term) and on that Opportunity's primary quote; null everywhere else, as
    Salesforce serves an empty field."""
    po_of: dict[str, str] = {}
    for opp in company.salesforce["Opportunity"]:
        term = opp.get("ContractId")
        if opp["AccountId"] in required and opp.get("IsWon") and term:
            po_of[opp["Id"]] = po_number(company.spec.seed, opp["AccountId"], term)
        opp[CRM_PO_FIELD] = po_of.get(opp["Id"])
    for quote in company.salesforce.get("SBQQ__Quote__c", []):
        primary = quote.get("SBQQ__Primary__c")
        quote[CRM_PO_FIELD] = po_of.get(quote["SBQQ__Opportunity2__c"]) if primary else None


def _clear_crm_purchase_order(company: Company, opportunity: str | None) -> None:
    for opp in company.salesforce["Opportunity"]:
        if opp["Id"] == opportunity:
            opp[CRM_PO_FIELD] = None
    for quote in company.salesforce.get("SBQQ__Quote__c", []):
        if quote["SBQQ__Opportunity2__c"] == opportunity:
            quote[CRM_PO_FIELD] = None
