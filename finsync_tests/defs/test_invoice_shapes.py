"""Discounted, tax-inclusive and 100%-off invoices go through extract, validate, derive and
post against the sandbox over HTTP, and NetSuite holds each one exactly: its lines plus its
discount plus its tax equal the Stripe total."""

import datetime as dt
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path

import dagster as dg
import pytest
import sqlalchemy as sa

from finsync_pipeline.definitions import defs
from finsync_pipeline.money import to_decimal
from finsync_pipeline.partitions import range_tags
from finsync_pipeline.resources.warehouse import create_engine
from finsync_pipeline.sandbox.generator import (
    DISCOUNT_ITEM_ID,
    TAX_ITEM_ID,
    Company,
    CompanySpec,
    add_months,
    generate,
)
from finsync_pipeline.sandbox.invoice_shapes import SHAPES
from finsync_pipeline.sandbox.server import Sandbox
from finsync_tests.conftest import TEST_END
from finsync_tests.defs.test_assets import _resources

SPEC = CompanySpec(accounts=30, months=2, seed=9, end=TEST_END)
FIRST_DAY = add_months(TEST_END, -SPEC.months) + dt.timedelta(days=1)


@pytest.fixture
def company() -> Company:
    return generate(SPEC)


@pytest.fixture
def sandbox(tmp_path: Path, company: Company) -> Iterator[Sandbox]:
    box = Sandbox(tmp_path / "sandbox")
    box.seed(company)
    with box:
        yield box


def test_every_invoice_shape_posts_exactly_once_and_ties_out_in_netsuite(
    sandbox: Sandbox, company: Company, tmp_path: Path
) -> None:
    url = f"sqlite:///{tmp_path / 'warehouse.db'}"
    loaded = defs()
    result = dg.materialize(
        [*(loaded.assets or []), *(loaded.asset_checks or [])],  # type: ignore[list-item]
        resources=_resources(sandbox.env, url),
        instance=dg.DagsterInstance.ephemeral(),
        tags=range_tags(FIRST_DAY, TEST_END),
    )
    assert result.success
    stripe = {i["id"]: i for i in company.stripe["invoice"]}
    held = {}
    for record in sandbox.netsuite_records("invoice"):
        held.setdefault(record["externalId"], []).append(record)
    with create_engine(url).connect() as conn:
        recon = dict(
            conn.execute(sa.text("SELECT invoice_id, status FROM invoice_reconciliation")).all()
        )
        quarantined = {r[0] for r in conn.execute(sa.text("SELECT source_id FROM quarantine"))}
    for shape in SHAPES:
        assert company.planted[shape], shape
        for planted in company.planted[shape]:
            invoice = stripe[planted["id"]]
            assert invoice["id"] not in quarantined, shape
            (document,) = held[f"STRIPE_{invoice['id']}"]
            currency = invoice["currency"].upper()
            items = document["item"]["items"]
            amounts = [Decimal(str(i["amount"])) for i in items]
            assert sum(amounts, Decimal(0)) == to_decimal(invoice["total"], currency), shape
            assert Decimal(str(document["total"])) == to_decimal(invoice["total"], currency)
            discount = sum(d["amount"] for d in invoice["total_discount_amounts"])
            tax = sum(t["amount"] for t in invoice["total_taxes"])
            by_item: dict[str, Decimal] = {}
            for item, amount in zip(items, amounts, strict=True):
                key = str(item["item"]["id"])
                by_item[key] = by_item.get(key, Decimal(0)) + amount
            assert by_item.get(DISCOUNT_ITEM_ID, Decimal(0)) == -to_decimal(discount, currency)
            assert by_item.get(TAX_ITEM_ID, Decimal(0)) == to_decimal(tax, currency)
            assert recon[invoice["id"]] == "matched", shape
    free = company.planted["full_discount"]
    assert all(stripe[p["id"]]["total"] == 0 for p in free)
