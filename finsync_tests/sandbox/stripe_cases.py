"""Stripe records the generator does not make, planted into a copy of a company for a test."""

import copy
import dataclasses
from pathlib import Path
from typing import Any

from finsync_pipeline.sandbox.generator import Company
from finsync_pipeline.sandbox.server import Sandbox

# More invoice payments than an expanded list shows inline (10).
MANY_PAYMENTS = 13


def with_many_payments(company: Company) -> tuple[Company, dict[str, Any]]:
    """A copy of ``company`` whose first paid invoice was paid in ``MANY_PAYMENTS`` parts
    (each its own invoice payment of one payment intent), and that invoice.

    The parts sum to the invoice's total, so nothing else about the company changes.
    """
    stripe = copy.deepcopy(company.stripe)
    invoice = next(
        i
        for i in stripe["invoice"]
        if i["status"] == "paid" and len(i["payments"]["data"]) == 1 and i["total"] > 100
    )
    (paid,) = invoice["payments"]["data"]
    share, rest = divmod(int(invoice["total"]), MANY_PAYMENTS)
    parts = []
    for n in range(MANY_PAYMENTS):
        amount = share + (rest if n == 0 else 0)
        parts.append(
            dict(
                paid,
                id=f"{paid['id'][:-3]}p{n:02d}",
                amount_paid=amount,
                amount_requested=amount,
                created=int(paid["created"]) + n,
                payment={"type": "payment_intent", "payment_intent": f"pi_split{n:02d}"},
            )
        )
    invoice["payments"]["data"] = parts
    return dataclasses.replace(company, stripe=stripe), invoice


def seeded(path: Path, company: Company) -> Sandbox:
    """A sandbox in ``path`` seeded with ``company`` (start it with ``with``)."""
    box = Sandbox(path)
    box.seed(company)
    return box
