"""Purchase orders through the pipeline, against the sandbox over HTTP.

An account with PO_Required__c is invoiced with its PO in the Stripe invoice's custom field
``PO Number``; the PO lands in NetSuite's otherRefNum. The planted invoice without a PO is held
as an open ``missing_po`` exception until the PO is added in Stripe, and the next run posts it.
"""

import datetime as dt
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dagster as dg
import pytest
import sqlalchemy as sa

from finsync_pipeline import ledger
from finsync_pipeline.definitions import defs
from finsync_pipeline.partitions import range_tags
from finsync_pipeline.resources.warehouse import WarehouseResource, create_engine
from finsync_pipeline.sandbox.generator import Company, CompanySpec, add_months, generate
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


def _erp_invoices(sandbox: Sandbox) -> dict[str, dict[str, Any]]:
    return {r["externalId"]: r for r in sandbox.netsuite_records("invoice")}


def test_a_missing_po_holds_the_invoice_until_the_po_is_added_in_stripe(
    sandbox: Sandbox, tmp_path: Path
) -> None:
    url = f"sqlite:///{tmp_path / 'warehouse.db'}"
    resources = _resources(sandbox.env, url)
    (planted,) = sandbox.planted()["missing_po"]
    held = planted["id"]
    assert _run(resources).success

    engine = create_engine(url)
    with engine.connect() as conn:
        exceptions = conn.execute(
            sa.text(
                "SELECT kind, owner_queue, status, detail FROM finance_exceptions "
                "WHERE source_id = :id"
            ),
            {"id": held},
        ).all()
        recon = conn.execute(
            sa.text("SELECT status FROM invoice_reconciliation WHERE invoice_id = :id"),
            {"id": held},
        ).scalar_one()
        queued = conn.execute(
            sa.text("SELECT COUNT(*) FROM posting_ledger WHERE source_id = :id"), {"id": held}
        ).scalar_one()
        pos = dict(
            conn.execute(
                sa.text(
                    "SELECT i.invoice_id, i.po_number FROM invoices i JOIN customers c "
                    "ON c.customer_key = i.customer_key WHERE c.po_required = 1 "
                    "AND i.po_number IS NOT NULL"
                )
            ).all()
        )
        numbers = {
            r.number
            for r in conn.execute(sa.text("SELECT number FROM invoices WHERE number IS NOT NULL"))
        }
    assert [(e.kind, e.owner_queue, e.status) for e in exceptions] == [
        ("missing_po", "finance_ops", "open")
    ]
    assert "custom field 'PO Number' on the Stripe invoice" in exceptions[0].detail
    assert recon == "held_by_exception"
    assert queued == 0
    erp = _erp_invoices(sandbox)
    assert f"STRIPE_{held}" not in erp
    # Its siblings of PO-required accounts posted, each with its PO as NetSuite's PO field.
    posted_with_po = {i: po for i, po in pos.items() if f"STRIPE_{i}" in erp}
    assert len(posted_with_po) >= 3
    for invoice_id, po in posted_with_po.items():
        assert erp[f"STRIPE_{invoice_id}"]["otherRefNum"] == po
    # The Stripe invoice number is nobody's PO.
    assert not {r.get("otherRefNum") for r in erp.values()} & numbers

    # Finance types the PO into the Stripe invoice; the change reaches the next run by events.
    stripe = resources["stripe"].get_client()
    stripe.post(
        f"/v1/invoices/{held}",
        {"custom_fields": [{"name": "PO Number", "value": "4500099999"}]},
        idempotency_key=f"po-{held}",
    )
    assert _run(resources).success

    with engine.connect() as conn:
        status = conn.execute(
            sa.text(
                "SELECT status FROM finance_exceptions "
                "WHERE source_id = :id AND kind = 'missing_po'"
            ),
            {"id": held},
        ).scalar_one()
        state = conn.execute(
            sa.text("SELECT state FROM posting_ledger WHERE external_id = :x"),
            {"x": f"STRIPE_{held}"},
        ).scalar_one()
        recon = conn.execute(
            sa.text("SELECT status FROM invoice_reconciliation WHERE invoice_id = :id"),
            {"id": held},
        ).scalar_one()
        open_kinds = {
            r.kind
            for r in conn.execute(
                sa.text("SELECT kind FROM finance_exceptions WHERE status = 'open'")
            )
        }
    assert (status, state, recon) == ("resolved", "posted", "matched")
    assert _erp_invoices(sandbox)[f"STRIPE_{held}"]["otherRefNum"] == "4500099999"
    assert "posted_document_changed" not in open_kinds


def _as_if_journaled(conn: sa.Connection) -> None:
    """Make the journal tell the history the edited ledger rows stand for (an earlier finsync
    posted those payloads): their last transitions carry the rows' payload hashes, and the
    chain and its checkpoints are sealed again from its start (unkeyed, as the tests run).
    Without this the ledger's
    audit would rightly call the edit tampering."""
    last = {
        (r.erp, r.doc_type, r.external_id): r.seq
        for r in conn.execute(
            sa.text("SELECT seq, erp, doc_type, external_id FROM posting_ledger_journal")
        )
    }
    for r in conn.execute(
        sa.text("SELECT erp, doc_type, external_id, payload_hash FROM posting_ledger")
    ).all():
        conn.execute(
            sa.text("UPDATE posting_ledger_journal SET payload_hash = :h WHERE seq = :seq"),
            {"h": r.payload_hash, "seq": last[(r.erp, r.doc_type, r.external_id)]},
        )
    prev = ledger.GENESIS_HASH
    for r in conn.execute(sa.text("SELECT * FROM posting_ledger_journal ORDER BY seq")).all():
        sealed = ledger.seal(prev, r._mapping, key=None)
        conn.execute(
            sa.text("UPDATE posting_ledger_journal SET prev_hash = :p, hash = :h WHERE seq = :s"),
            {"p": prev, "h": sealed, "s": r.seq},
        )
        conn.execute(
            sa.text("UPDATE posting_ledger_checkpoints SET hash = :h WHERE seq = :s"),
            {"h": sealed, "s": r.seq},
        )
        prev = sealed


def test_invoices_posted_with_the_stripe_number_as_po_raise_nothing_after_the_upgrade(
    sandbox: Sandbox, tmp_path: Path
) -> None:
    url = f"sqlite:///{tmp_path / 'warehouse.db'}"
    resources = _resources(sandbox.env, url)
    assert _run(resources).success
    engine = create_engine(url)
    # What an earlier finsync posted: otherRefNum held the Stripe invoice number.
    with engine.begin() as conn:
        rows = conn.execute(
            sa.text(
                "SELECT l.external_id, l.payload, i.number FROM posting_ledger l JOIN invoices i "
                "ON i.invoice_id = l.source_id WHERE l.doc_type = 'invoice' AND l.state = 'posted'"
            )
        ).all()
        assert rows
        for external_id, payload, number in rows:
            old = {**ledger.loads(payload), "otherRefNum": number}
            old["memo"] = old["memo"].split(" number ")[0]
            digest = ledger.payload_hash(old)
            conn.execute(
                sa.text(
                    "UPDATE posting_ledger SET payload = :p, payload_hash = :h, posted_hash = :h "
                    "WHERE doc_type = 'invoice' AND external_id = :x"
                ),
                {"p": ledger.dumps(old), "h": digest, "x": external_id},
            )
        _as_if_journaled(conn)
    # And one posted without a PO, as every invoice was before finsync read them: its PO is
    # taken off in Stripe, so its day is derived again and finds none.
    with engine.connect() as conn:
        bare = conn.execute(
            sa.text(
                "SELECT i.invoice_id FROM invoices i JOIN customers c ON c.customer_key = "
                "i.customer_key JOIN posting_ledger l ON l.source_id = i.invoice_id "
                "WHERE c.po_required = 1 AND i.po_number IS NOT NULL AND l.state = 'posted' "
                "AND i.status = 'paid' "
                "ORDER BY i.invoice_id LIMIT 1"
            )
        ).scalar_one()
    resources["stripe"].get_client().post(
        f"/v1/invoices/{bare}", {"custom_fields": ""}, idempotency_key=f"bare-{bare}"
    )
    assert _run(resources).success
    with engine.connect() as conn:
        assert (
            conn.execute(
                sa.text("SELECT po_number FROM invoices WHERE invoice_id = :id"), {"id": bare}
            ).scalar_one()
            is None
        )
        held = conn.execute(
            sa.text(
                "SELECT kind, source_id, detail FROM finance_exceptions WHERE status = 'open' "
                "AND kind IN ('missing_po', 'payment_held')"
            )
        ).all()
        changed = conn.execute(
            sa.text(
                "SELECT COUNT(*) FROM finance_exceptions WHERE kind = 'posted_document_changed'"
            )
        ).scalar_one()
        states = {
            r.state
            for r in conn.execute(
                sa.text("SELECT state FROM posting_ledger WHERE doc_type = 'invoice'")
            )
        }
    assert changed == 0
    # A missing PO cannot hold what is already in the ERP, nor anything applied to it.
    (planted,) = sandbox.planted()["missing_po"]
    assert {(k, s) for k, s, _d in held if k == "missing_po"} == {("missing_po", planted["id"])}
    assert not [d for _k, _s, d in held if bare in d]
    # Nothing was re-sent: the posted invoices keep what they were posted with.
    assert states == {"posted"}


# -- the PO from the CRM -------------------------------------------------------------------------


# A company whose planted invoice is the only one of its term, so the Opportunity that lacks
# the PO holds that invoice alone (seed 9's shares its term with a sibling).
CRM_SPEC = CompanySpec(accounts=30, months=2, seed=1, end=TEST_END)


@pytest.fixture
def crm_company() -> Company:
    company = generate(CRM_SPEC)
    # Each place holds a PO of its own here, so the ERP shows which one was read.
    for obj, mark in (("Opportunity", "OPP-"), ("SBQQ__Quote__c", "Q-")):
        for record in company.salesforce[obj]:
            if record["PO_Number__c"]:
                record["PO_Number__c"] = mark + record["PO_Number__c"]
    return company


@pytest.fixture
def crm_sandbox(tmp_path: Path, crm_company: Company) -> Iterator[Sandbox]:
    box = Sandbox(tmp_path / "sandbox")
    box.seed(crm_company)
    with box:
        yield box


def _expected_pos(company: Company, kind: str) -> dict[str, str]:
    """Invoice id -> the PO of the Opportunity it bills (or of that Opportunity's primary
    quote), for the invoices of PO-required accounts whose record has one."""
    opps = {o["Id"]: o for o in company.salesforce["Opportunity"]}
    quotes = {
        q["SBQQ__Opportunity2__c"]: q
        for q in company.salesforce["SBQQ__Quote__c"]
        if q["SBQQ__Primary__c"]
    }
    out = {}
    for inv in company.stripe["invoice"]:
        opp_id = inv["parent"]["subscription_details"]["metadata"]["salesforce_opportunity_id"]
        record = opps[opp_id] if kind == "salesforce_opportunity" else quotes.get(opp_id, {})
        if record.get("PO_Number__c"):
            out[inv["id"]] = record["PO_Number__c"]
    return out


def _open_missing_po(url: str) -> dict[str, str]:
    with create_engine(url).connect() as conn:
        return dict(
            conn.execute(
                sa.text(
                    "SELECT source_id, detail FROM finance_exceptions "
                    "WHERE kind = 'missing_po' AND status = 'open'"
                )
            ).all()
        )


@pytest.mark.parametrize(
    ("kind", "mark"),
    [("salesforce_opportunity", "OPP-"), ("salesforce_quote", "Q-")],
    ids=["opportunity", "quote"],
)
def test_the_po_of_the_opportunity_or_quote_an_invoice_bills_lands_in_other_ref_num(
    crm_sandbox: Sandbox,
    crm_company: Company,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    kind: str,
    mark: str,
) -> None:
    monkeypatch.setenv("FINSYNC_PO_SOURCE", f"{kind}:PO_Number__c")
    url = f"sqlite:///{tmp_path / 'warehouse.db'}"
    assert _run(_resources(crm_sandbox.env, url)).success

    erp = _erp_invoices(crm_sandbox)
    expected = _expected_pos(crm_company, kind)
    posted = {i: po for i, po in expected.items() if f"STRIPE_{i}" in erp}
    assert len(posted) >= 3
    for invoice_id, po in posted.items():
        assert po.startswith(mark)
        assert erp[f"STRIPE_{invoice_id}"]["otherRefNum"] == po
    # The Stripe custom field is not where this company keeps its POs.
    assert not any(str(r.get("otherRefNum", "")).startswith("45") for r in erp.values())
    # The invoice whose Opportunity has no PO is the one held, and the detail says which
    # Salesforce record and field finance sets.
    (planted,) = crm_sandbox.planted()["missing_po"]
    held = _open_missing_po(url)
    assert set(held) == {planted["id"]}
    assert f"STRIPE_{planted['id']}" not in erp
    detail = held[planted["id"]]
    assert "field PO_Number__c on" in detail
    assert f"Salesforce Opportunity {planted['opportunity']}" in detail
    if kind == "salesforce_quote":
        (quote,) = [
            q["Id"]
            for q in crm_company.salesforce["SBQQ__Quote__c"]
            if q["SBQQ__Opportunity2__c"] == planted["opportunity"] and q["SBQQ__Primary__c"]
        ]
        assert f"primary CPQ quote {quote} (SBQQ__Quote__c)" in detail


def test_a_po_set_on_the_opportunity_in_salesforce_posts_the_held_invoice(
    crm_sandbox: Sandbox, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FINSYNC_PO_SOURCE", "salesforce_opportunity:PO_Number__c")
    url = f"sqlite:///{tmp_path / 'warehouse.db'}"
    resources = _resources(crm_sandbox.env, url)
    instance = dg.DagsterInstance.ephemeral()
    assert _run(resources).success
    (planted,) = crm_sandbox.planted()["missing_po"]
    assert set(_open_missing_po(url)) == {planted["id"]}
    with create_engine(url).connect() as conn:
        day = conn.execute(
            sa.text("SELECT partition_date FROM invoices WHERE invoice_id = :id"),
            {"id": planted["id"]},
        ).scalar_one()
    assert _late_days(instance, url) == []

    # Finance types the PO into the Opportunity; a later day's run extracts the change.
    resources["salesforce"].get_client().upsert(
        "Opportunity", "Id", planted["opportunity"], {"PO_Number__c": "4500099999"}
    )
    loaded = defs()
    extract = dg.materialize(
        [loaded.get_assets_def("salesforce_opportunities")],
        resources=resources,
        instance=instance,
    )
    assert extract.success
    # The held invoice's day is run again without anyone asking, and the invoice posts.
    assert _late_days(instance, url) == [day]
    caught_up = loaded.resolve_job_def("catch_up_job").execute_in_process(
        instance=instance, resources=resources, partition_key=day
    )
    assert caught_up.success
    assert _open_missing_po(url) == {}
    assert _erp_invoices(crm_sandbox)[f"STRIPE_{planted['id']}"]["otherRefNum"] == "4500099999"
    assert _late_days(instance, url) == []


def _late_days(instance: dg.DagsterInstance, url: str) -> list[str | None]:
    """The partitions the late-changes sensor asks runs for."""
    sensor = defs().resolve_sensor_def("late_changes_sensor")
    context = dg.build_sensor_context(
        instance=instance, definitions=defs(), resources={"warehouse": WarehouseResource(url=url)}
    )
    return [r.partition_key for r in sensor.evaluate_tick(context).run_requests or []]


def test_a_po_field_the_org_lacks_fails_the_run_with_one_line_naming_setting_and_field(
    sandbox: Sandbox, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FINSYNC_PO_SOURCE", "salesforce_opportunity:Customer_PO__c")
    url = f"sqlite:///{tmp_path / 'warehouse.db'}"
    result = dg.materialize(
        [defs().get_assets_def("salesforce_opportunities")],
        resources=_resources(sandbox.env, url),
        instance=dg.DagsterInstance.ephemeral(),
        raise_on_error=False,
    )
    assert not result.success
    (failure,) = result.get_step_failure_events()
    error = failure.step_failure_data.error
    assert error is not None
    messages = [error.message]
    while error.cause is not None:
        error = error.cause
        messages.append(error.message)
    (line,) = [m for m in messages if m.startswith("finsync_pipeline.errors.ConfigurationError")]
    text = line.strip().split(": ", 1)[1]
    assert "\n" not in text
    assert text.startswith("FINSYNC_PO_SOURCE names field Customer_PO__c of the Salesforce ")
    assert "INVALID_FIELD" in text
    # Nothing was landed under the bad setting.
    with create_engine(url).connect() as conn:
        landed = conn.execute(sa.text("SELECT COUNT(*) FROM salesforce_opportunities"))
        assert landed.scalar_one() == 0
