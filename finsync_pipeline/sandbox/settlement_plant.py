"""Planted settlements: invoices Stripe closed without a payment finsync can post.

- ``paid_out_of_band``: a paid invoice whose money was received outside Stripe (a wire
  transfer finance marked with ``paid_out_of_band``): no payment intent, no charge.
- ``uncollectible``: an invoice finance gave up on (``mark_uncollectible``): nothing paid, its
  whole total left in ``amount_remaining``.

Neither is a problem in the data: the first is an exception finance works (record the receipt
in the ERP), the second a write-off finsync posts on the bad-debt item. Both reconcile without
drift. They are recorded in ``company.planted`` under their names.
"""

import random

from finsync_pipeline.sandbox.generator import Company
from finsync_pipeline.sandbox.invoice_shapes import _candidates, _collect_nothing

KINDS = ("paid_out_of_band", "uncollectible")


def plant_settlements(company: Company) -> None:
    """Settle ``max(1, accounts // 100)`` paid invoices each way, deterministically."""
    rng = random.Random(f"{company.spec.seed}:settlements")  # noqa: S311 - synthetic data
    wanted = max(1, company.spec.accounts // 100)
    pool = sorted(
        (i for i in _candidates(company) if i["status"] == "paid" and i["total"] > 0),
        key=lambda i: i["id"],
    )
    for kind in KINDS:
        chosen = sorted(rng.sample(pool, min(wanted, len(pool))), key=lambda i: i["id"])
        planted = company.planted.setdefault(kind, [])
        for inv in chosen:
            pool.remove(inv)
            _collect_nothing(company, inv)
            transitions = inv["status_transitions"]
            settled_at = transitions.get("paid_at") or transitions.get("finalized_at")
            if kind == "paid_out_of_band":
                inv.update(paid_out_of_band=True, amount_paid=inv["total"], amount_remaining=0)
                field = "paid_out_of_band"
            else:
                transitions.update(paid_at=None, marked_uncollectible_at=settled_at)
                inv.update(status="uncollectible", amount_paid=0, amount_remaining=inv["total"])
                field = "status"
            _sync_events(company, inv, kind)
            planted.append(
                {"system": "stripe", "object": "invoice", "id": inv["id"], "field": field}
            )


def _sync_events(company: Company, inv: dict, kind: str) -> None:
    """The invoice's events say what happened: paid outside Stripe, or marked uncollectible."""
    kept = []
    for event in company.stripe.get("event", []):
        snap = event["data"]["object"]
        if snap.get("object") != "invoice" or snap.get("id") != inv["id"]:
            kept.append(event)
            continue
        if snap.get("status") != "paid":
            kept.append(event)
            continue
        if event["type"] == "invoice.payment_succeeded":
            continue  # no payment succeeded in Stripe
        snap.update(
            status=inv["status"],
            amount_paid=inv["amount_paid"],
            amount_remaining=inv["amount_remaining"],
            paid_out_of_band=inv.get("paid_out_of_band", False),
            status_transitions=dict(inv["status_transitions"]),
        )
        if kind == "uncollectible" and event["type"] == "invoice.paid":
            event["type"] = "invoice.marked_uncollectible"
        kept.append(event)
    company.stripe["event"] = kept
