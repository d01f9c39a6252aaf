"""An invoice voided in billing after it was posted is reversed in the ERP, never edited."""

import datetime as dt
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dagster as dg
import pytest
import sqlalchemy as sa

from finsync_pipeline.definitions import defs
from finsync_pipeline.partitions import range_tags
from finsync_pipeline.resources.warehouse import create_engine
from finsync_pipeline.sandbox.generator import CompanySpec, add_months, generate
from finsync_pipeline.sandbox.server import Sandbox
from finsync_tests.conftest import TEST_END
from finsync_tests.defs.test_assets import _resources

SPEC = CompanySpec(accounts=30, months=2, seed=9, end=TEST_END)
FIRST_DAY = add_months(TEST_END, -SPEC.months) + dt.timedelta(days=1)


@pytest.fixture
def sandbox(tmp_path: Path) -> Iterator[Sandbox]:
    box = Sandbox(tmp_path / "sandbox")
    box.seed(generate(SPEC))
    with box:
        yield box


def _run(resources: dict[str, Any]) -> dg.ExecuteInProcessResult:
    loaded = defs()
    return dg.materialize(
        [*(loaded.assets or []), *(loaded.asset_checks or [])],  # type: ignore[list-item]
        resources=resources,
        instance=dg.DagsterInstance.ephemeral(),
        tags=range_tags(FIRST_DAY, TEST_END),
    )


def test_a_posted_invoice_voided_later_is_reversed_by_a_credit_memo(
    sandbox: Sandbox, tmp_path: Path
) -> None:
    url = f"sqlite:///{tmp_path / 'warehouse.db'}"
    resources = _resources(sandbox.env, url)
    assert _run(resources).success
    engine = create_engine(url)
    with engine.connect() as conn:
        invoice_id = conn.execute(
            sa.text(
                "SELECT i.invoice_id FROM invoices i JOIN posting_ledger l ON l.source_id = "
                "i.invoice_id AND l.doc_type = 'invoice' AND l.state = 'posted' "
                "WHERE i.status = 'open' ORDER BY i.invoice_id LIMIT 1"
            )
        ).scalar_one()
    stripe = resources["stripe"].get_client()
    stripe.post(f"/v1/invoices/{invoice_id}/void", {}, idempotency_key=f"void-{invoice_id}")

    assert _run(resources).success
    reversal = f"VOID_{invoice_id}"
    with engine.connect() as conn:
        memo = conn.execute(
            sa.text("SELECT state, erp_internal_id FROM posting_ledger WHERE external_id = :x"),
            {"x": reversal},
        ).one()
        recon = conn.execute(
            sa.text("SELECT status, explanation FROM invoice_reconciliation WHERE invoice_id = :i"),
            {"i": invoice_id},
        ).one()
    assert memo.state == "posted"
    # The ERP keeps the invoice (history is not edited) and holds its reversal.
    held = {r["externalId"]: r for r in sandbox.netsuite_records("creditmemo")}
    assert reversal in held
    invoice = next(
        r for r in sandbox.netsuite_records("invoice") if r["externalId"] == f"STRIPE_{invoice_id}"
    )
    assert str(invoice["amountRemaining"]) in ("0", "0.00", "0.0")
    assert recon.status == "matched"
    assert reversal in recon.explanation
