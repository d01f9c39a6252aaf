"""Purchase orders on the invoices of accounts that require one, and a few planted without.

An account with ``PO_Required__c`` pays only an invoice that quotes its purchase order, so its
billing team types the PO into each invoice's custom field ``PO Number`` (finsync's default
``FINSYNC_PO_SOURCE``), as Stripe serves it: ``custom_fields`` is a list of ``{name, value}``,
or null on every other invoice. One PO covers a contract term, so the invoices of a term share
it.

``max(1, accounts // 100)`` live invoices of PO-required accounts are planted without a PO,
deterministically, and recorded in ``company.planted["missing_po"]``: each must be held as a
``missing_po`` exception, never posted. They are chosen among the invoices no other plant or
record builds on, of customers that post cleanly, so the PO is the only thing that holds them.
"""

import hashlib
import random
from typing import Any

from finsync_pipeline.sandbox.generator import Company
from finsync_pipeline.sandbox.tax_plant import LIVE_STATUSES, excluded_ids

Record = dict[str, Any]

PO_FIELD = "PO Number"


def po_number(seed: int, account_id: str, term: str) -> str:
    """The PO an account issued for a contract term: deterministic, ERP-style digits."""
    digest = hashlib.sha256(f"{seed}:{account_id}:{term}".encode()).hexdigest()
    return f"45{int(digest[:12], 16) % 10**8:08d}"


def _term(inv: Record) -> str:
    details = (inv.get("parent") or {}).get("subscription_details") or {}
    contract = (details.get("metadata") or {}).get("salesforce_contract_id")
    return str(contract or inv["created"] // (365 * 86400))


def plant_purchase_orders(company: Company) -> None:
    """Give every invoice of a PO-required account its PO, then take it off a few."""
    rng = random.Random(f"{company.spec.seed}:missing_po")  # noqa: S311 - synthetic data
    wanted = max(1, company.spec.accounts // 100)
    required = {a["Id"] for a in company.salesforce["Account"] if a.get("PO_Required__c")}
    account_of = {
        c["id"]: c["metadata"].get("salesforce_account_id") for c in company.stripe["customer"]
    }
    excluded = excluded_ids(company)
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
    chosen = sorted(rng.sample(candidates, min(wanted, len(candidates))), key=lambda i: i["id"])
    planted = company.planted.setdefault("missing_po", [])
    for inv in chosen:
        inv["custom_fields"] = None
        planted.append(
            {"system": "stripe", "object": "invoice", "id": inv["id"], "field": "custom_fields"}
        )
    # Event snapshots copied the invoice's top-level fields when they were made.
    fields_of = {inv["id"]: inv["custom_fields"] for inv in company.stripe["invoice"]}
    for event in company.stripe.get("event", []):
        snap = event["data"]["object"]
        if snap.get("object") == "invoice" and snap.get("id") in fields_of:
            snap["custom_fields"] = fields_of[snap["id"]]
