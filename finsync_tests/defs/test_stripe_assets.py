"""Stripe billing and payment extracts through Dagster: day partitions, then change capture."""

import datetime as dt
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dagster as dg
import pytest
import requests
import sqlalchemy as sa

from finsync_pipeline import ledger
from finsync_pipeline.definitions import defs
from finsync_pipeline.partitions import range_tags
from finsync_pipeline.resources.settings import PipelineSettings
from finsync_pipeline.resources.stripe import StripeClient, StripeResource
from finsync_pipeline.resources.warehouse import WarehouseResource, create_engine
from finsync_pipeline.sandbox.generator import Company, CompanySpec, add_months, generate
from finsync_pipeline.sandbox.server import Sandbox
from finsync_tests.conftest import TEST_END

# Seed 3 leaves two invoices open at the end, one of 26 lines: a void must page them all.
SPEC = CompanySpec(accounts=40, months=2, seed=3, end=TEST_END)
FIRST_DAY = add_months(TEST_END, -SPEC.months) + dt.timedelta(days=1)
DAY_ASSETS = {
    "stripe_invoices",
    "stripe_credit_notes",
    "stripe_refunds",
    "stripe_charges",
    "stripe_payments",
}
CHECKED = {"stripe_credit_notes", "stripe_refunds", "stripe_charges", "stripe_payments"}


def _definitions(keys: set[str]) -> list[Any]:
    """The loaded assets and contract checks of ``keys`` (loaded as Dagster loads them)."""
    loaded = defs()
    assets = [
        a
        for a in loaded.assets or []
        if isinstance(a, dg.AssetsDefinition) and {k.to_user_string() for k in a.keys} & keys
    ]
    checks = [
        c
        for c in loaded.asset_checks or []
        if {k.asset_key.to_user_string() for k in c.check_keys} & keys
    ]
    return [*assets, *checks]


@pytest.fixture(scope="module")
def company() -> Company:
    return generate(SPEC)


@pytest.fixture(scope="module")
def sandbox(tmp_path_factory: pytest.TempPathFactory, company: Company) -> Iterator[Sandbox]:
    box = Sandbox(tmp_path_factory.mktemp("sandbox"))
    box.seed(company)
    with box:
        yield box


@pytest.fixture(scope="module")
def url(tmp_path_factory: pytest.TempPathFactory) -> str:
    return f"sqlite:///{tmp_path_factory.mktemp('warehouse') / 'warehouse.db'}"


@pytest.fixture(scope="module")
def resources(sandbox: Sandbox, url: str) -> dict[str, Any]:
    env = sandbox.env
    return {
        "warehouse": WarehouseResource(url=url),
        "settings": PipelineSettings(max_bad_share=0.2),
        "stripe": StripeResource(api_key=env["STRIPE_API_KEY"], api_base=env["STRIPE_API_BASE"]),
    }


@pytest.fixture(scope="module")
def days_run(resources: dict[str, Any]) -> dg.ExecuteInProcessResult:
    """The day extracts (and their contract checks) over the whole history, in one run."""
    return dg.materialize(
        _definitions(DAY_ASSETS),
        resources=resources,
        instance=dg.DagsterInstance.ephemeral(),
        tags=range_tags(FIRST_DAY, TEST_END),
    )


def _changes(resources: dict[str, Any]) -> dict[str, Any]:
    result = dg.materialize(
        _definitions({"stripe_invoice_changes"}),
        resources=resources,
        instance=dg.DagsterInstance.ephemeral(),
    )
    assert result.success
    (event,) = [
        e
        for e in result.get_asset_materialization_events()
        if e.asset_key == dg.AssetKey("stripe_invoice_changes")
    ]
    return {k: getattr(v, "value", v) for k, v in event.materialization.metadata.items()}


def _row(url: str, table: str, source_id: str) -> tuple[str, str, dict[str, Any]]:
    with create_engine(url).connect() as conn:
        day, run_id, payload = conn.execute(
            sa.text(
                f"SELECT partition_date, extraction_run_id, payload FROM {table} "
                "WHERE source_id = :id"
            ),
            {"id": source_id},
        ).one()
    return day, run_id, ledger.loads(payload)


def _in_window(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    lo = int(dt.datetime.combine(FIRST_DAY, dt.time(), tzinfo=dt.UTC).timestamp())
    return [r for r in records if r["created"] >= lo]


def _day(unix_s: int) -> str:
    return dt.datetime.fromtimestamp(unix_s, dt.UTC).date().isoformat()


def test_day_extracts_land_credit_notes_refunds_and_charges(
    days_run: dg.ExecuteInProcessResult, company: Company, url: str
) -> None:
    assert days_run.success
    evaluations = {e.asset_key.to_user_string(): e for e in days_run.get_asset_check_evaluations()}
    assert set(evaluations) >= CHECKED
    for asset in CHECKED:
        meta = {k: getattr(v, "value", v) for k, v in evaluations[asset].metadata.items()}
        assert evaluations[asset].passed and meta["rows quarantined"] == 0, asset
    with create_engine(url).connect() as conn:
        for table, obj in [
            ("stripe_credit_notes", "credit_note"),
            ("stripe_refunds", "refund"),
            ("stripe_charges", "charge"),
        ]:
            ids = {r[0] for r in conn.execute(sa.text(f"SELECT source_id FROM {table}"))}
            assert ids == {r["id"] for r in _in_window(company.stripe[obj])}, table
            assert ids, table
    # A credit note of more than 10 lines is paged in full, like an invoice.
    for note in _in_window(company.stripe["credit_note"]):
        _, _, payload = _row(url, "stripe_credit_notes", note["id"])
        assert len(payload["lines"]["data"]) == len(note["lines"]["data"])
        assert payload["lines"]["has_more"] is False
    refunds = [
        e
        for e in days_run.get_asset_materialization_events()
        if e.asset_key == dg.AssetKey("stripe_refunds")
    ]
    assert any(e.materialization.metadata["amount by currency"].value for e in refunds)


def test_change_capture_writes_a_later_void_and_payment_into_the_original_day(
    days_run: dg.ExecuteInProcessResult,
    resources: dict[str, Any],
    sandbox: Sandbox,
    company: Company,
    url: str,
) -> None:
    assert days_run.success
    first = _changes(resources)
    # No cursor yet: the listing by created date and every event Stripe still keeps.
    assert first["mode"] == "listing by created date + retained events"
    open_invoices = sorted(
        (i for i in _in_window(company.stripe["invoice"]) if i["status"] == "open"),
        key=lambda i: (-len(i["lines"]["data"]), i["created"]),
    )
    assert len(open_invoices) >= 2
    to_void, to_pay = open_invoices[0], open_invoices[1]
    assert len(to_void["lines"]["data"]) > 10
    day_before, run_before, before = _row(url, "stripe_invoices", to_void["id"])
    assert before["status"] == "open" and day_before == _day(to_void["created"])

    env = sandbox.env
    with StripeClient(api_key=env["STRIPE_API_KEY"], api_base=env["STRIPE_API_BASE"]) as client:
        client.post(f"/v1/invoices/{to_void['id']}/void", {}, idempotency_key="t-void-1")
        client.post(
            f"/v1/invoices/{to_pay['id']}/pay",
            {"paid_out_of_band": True},
            idempotency_key="t-pay-1",
        )

    second = _changes(resources)
    assert second["mode"] == "incremental (created + events)"
    touched = second["partition days touched"]["stripe_invoices"]
    assert _day(to_void["created"]) in touched and _day(to_pay["created"]) in touched
    assert second["invoices by status"] == {"paid": 1, "void": 1}

    day_after, run_after, voided = _row(url, "stripe_invoices", to_void["id"])
    assert (day_after, voided["status"]) == (day_before, "void")
    assert run_after != run_before
    assert voided["status_transitions"]["voided_at"] is not None
    # The event embeds 10 lines; the refetch brought every one of them.
    assert [line["id"] for line in voided["lines"]["data"]] == [
        line["id"] for line in to_void["lines"]["data"]
    ]
    _day_paid, _run, paid = _row(url, "stripe_invoices", to_pay["id"])
    assert paid["status"] == "paid" and paid["amount_remaining"] == 0

    third = _changes(resources)
    # Only the short lookback is read again; the upsert keeps one row per invoice.
    assert third["mode"] == "incremental (created + events)"
    with create_engine(url).connect() as conn:
        count = conn.execute(sa.text("SELECT COUNT(*) FROM stripe_invoices")).scalar_one()
    assert count == len(_in_window(company.stripe["invoice"]))


def test_a_cursor_older_than_the_event_retention_falls_back_to_a_listing(
    days_run: dg.ExecuteInProcessResult, resources: dict[str, Any], url: str
) -> None:
    assert days_run.success
    old = int(dt.datetime.now(dt.UTC).timestamp()) - 40 * 86400
    with create_engine(url).begin() as conn:
        conn.execute(
            sa.text("DELETE FROM extract_cursors WHERE stream = :s"),
            {"s": "stripe_invoice_changes"},
        )
        conn.execute(
            sa.text(
                "INSERT INTO extract_cursors (stream, cursor, updated_at, run_id) "
                "VALUES (:s, :c, :u, 'test')"
            ),
            {
                "s": "stripe_invoice_changes",
                "c": json.dumps({"created": old, "events_from": old}),
                "u": dt.datetime.now(dt.UTC).isoformat(),
            },
        )
    meta = _changes(resources)
    assert meta["mode"] == "listing by created date + retained events"
    with create_engine(url).connect() as conn:
        cursor = json.loads(
            conn.execute(
                sa.text("SELECT cursor FROM extract_cursors WHERE stream = :s"),
                {"s": "stripe_invoice_changes"},
            ).scalar_one()
        )
    assert cursor["events_from"] > old + 39 * 86400


def test_the_last_of_several_changes_in_one_second_wins_even_when_events_repeat(
    resources: dict[str, Any], sandbox: Sandbox, company: Company, url: str
) -> None:
    customers = _definitions({"stripe_customers"})
    env = sandbox.env
    # Pages of three, so the eight events below span page boundaries the fault repeats at.
    paged = {
        **resources,
        "stripe": StripeResource(
            api_key=env["STRIPE_API_KEY"], api_base=env["STRIPE_API_BASE"], page_size=3
        ),
    }

    def run() -> dict[str, Any]:
        result = dg.materialize(customers, resources=paged, instance=dg.DagsterInstance.ephemeral())
        assert result.success
        (event,) = result.get_asset_materialization_events()
        return {k: getattr(v, "value", v) for k, v in event.materialization.metadata.items()}

    run()  # sets the cursor, so the next run reads events
    with create_engine(url).connect() as conn:
        rows_before = conn.execute(sa.text("SELECT COUNT(*) FROM stripe_customers")).scalar_one()
    customer_id = company.stripe["customer"][0]["id"]
    frozen = int(dt.datetime.now(dt.UTC).timestamp())
    sandbox.clock = lambda: float(frozen)
    try:
        with StripeClient(api_key=env["STRIPE_API_KEY"], api_base=env["STRIPE_API_BASE"]) as client:
            # Eight updates stamped with the same second: event ids are random, so only the
            # order Stripe lists them in says which came last.
            for n in range(8):
                client.post(
                    f"/v1/customers/{customer_id}",
                    {"description": f"edit {n}"},
                    idempotency_key=f"t-same-second-{n}",
                )
    finally:
        sandbox.clock = time.time
    sandbox.faults.repeat_items("stripe", pages=100, path_prefix="/v1/events")
    try:
        meta = run()
    finally:
        sandbox.faults.clear("stripe")
    assert meta["events delivered twice (applied once)"] >= 2
    with create_engine(url).connect() as conn:
        payload = conn.execute(
            sa.text("SELECT payload FROM stripe_customers WHERE source_id = :id"),
            {"id": customer_id},
        ).scalar_one()
        rows_after = conn.execute(sa.text("SELECT COUNT(*) FROM stripe_customers")).scalar_one()
    assert ledger.loads(payload)["description"] == "edit 7"
    assert rows_after == rows_before


# History ending yesterday, so the events of the generator's planted deleted draft are within
# the 30 days Stripe keeps and the first change-capture run reads them.
RECENT = CompanySpec(
    accounts=8, months=1, seed=3, end=dt.datetime.now(dt.UTC).date() - dt.timedelta(days=1)
)


@pytest.fixture
def recent(tmp_path: Path) -> Iterator[tuple[Company, Sandbox, dict[str, Any], str]]:
    """A fresh sandbox of a recent company and an empty warehouse, for one test alone."""
    company = generate(RECENT)
    box = Sandbox(tmp_path / "sandbox")
    box.seed(company)
    url = f"sqlite:///{tmp_path / 'warehouse.db'}"
    with box:
        env = box.env
        resources = {
            "warehouse": WarehouseResource(url=url),
            "settings": PipelineSettings(max_bad_share=1.0),
            "stripe": StripeResource(
                api_key=env["STRIPE_API_KEY"], api_base=env["STRIPE_API_BASE"]
            ),
        }
        yield company, box, resources, url


def _delete_invoice(sandbox: Sandbox, invoice_id: str) -> None:
    env = sandbox.env
    response = requests.delete(
        f"{env['STRIPE_API_BASE']}/v1/invoices/{invoice_id}",
        headers={"Authorization": f"Bearer {env['STRIPE_API_KEY']}"},
        timeout=10,
    )
    assert response.status_code == 200, response.text
    assert response.json()["deleted"] is True


def _validate_day(resources: dict[str, Any], day: dt.date) -> dg.ExecuteInProcessResult:
    """The invoice contract check and the canonical invoices of one day, without re-extracting."""
    return dg.materialize(
        _definitions({"stripe_invoices", "invoices"}),
        resources=resources,
        instance=dg.DagsterInstance.ephemeral(),
        partition_key=day.isoformat(),
        selection=dg.AssetSelection.assets("invoices", "invoice_lines")
        | dg.AssetSelection.checks_for_assets("stripe_invoices"),
    )


def test_a_deleted_draft_is_recorded_as_gone_and_never_reaches_the_canonical_invoices(
    recent: tuple[Company, Sandbox, dict[str, Any], str],
) -> None:
    company, sandbox, resources, url = recent
    yesterday = RECENT.end
    env = sandbox.env
    customer = company.stripe["customer"][0]["id"]
    noon = dt.datetime.combine(yesterday, dt.time(12), tzinfo=dt.UTC).timestamp()
    # A draft made yesterday: change capture reads its event and lands it as a draft.
    sandbox.clock = lambda: noon
    try:
        with StripeClient(api_key=env["STRIPE_API_KEY"], api_base=env["STRIPE_API_BASE"]) as c:
            kept = c.post("/v1/invoices", {"customer": customer}, idempotency_key="t-draft-a")
    finally:
        sandbox.clock = time.time
    first = _changes(resources)
    assert first["invoices by status"].get("draft") == 1
    day, _run, landed = _row(url, "stripe_invoices", kept["id"])
    assert (day, landed["status"], landed.get("deleted")) == (yesterday.isoformat(), "draft", None)
    before = _validate_day(resources, yesterday)
    assert before.success
    with create_engine(url).connect() as conn:
        canonical = conn.execute(
            sa.text("SELECT status FROM invoices WHERE invoice_id = :id"), {"id": kept["id"]}
        ).scalar_one()
    assert canonical == "draft"

    # Today the draft is deleted, and a second draft is made and deleted between two runs:
    # its invoice.created event names an invoice that already answers 404.
    _delete_invoice(sandbox, kept["id"])
    with StripeClient(api_key=env["STRIPE_API_KEY"], api_base=env["STRIPE_API_BASE"]) as c:
        brief = c.post("/v1/invoices", {"customer": customer}, idempotency_key="t-draft-b")
    _delete_invoice(sandbox, brief["id"])

    second = _changes(resources)
    assert second["deleted drafts recorded"] == 2
    assert second["invoices by status"] == {"deleted": 2}
    for invoice in (kept, brief):
        day, _run, gone = _row(url, "stripe_invoices", invoice["id"])
        assert day == _day(invoice["created"])
        assert (gone["deleted"], gone["status"], gone["id"]) == (True, "draft", invoice["id"])

    after = _validate_day(resources, yesterday)
    assert after.success
    (check,) = after.get_asset_check_evaluations()
    assert check.passed
    (canonical_event,) = [
        e for e in after.get_asset_materialization_events() if e.asset_key.path == ["invoices"]
    ]
    assert canonical_event.materialization.metadata["deleted drafts (left out)"].value == 1
    with create_engine(url).connect() as conn:
        for table, column in (("invoices", "invoice_id"), ("quarantine", "source_id")):
            count = conn.execute(
                sa.text(f"SELECT COUNT(*) FROM {table} WHERE {column} IN (:a, :b)"),
                {"a": kept["id"], "b": brief["id"]},
            ).scalar_one()
            assert count == 0, table

    # The deletion stays recorded: a later run reads the same events again, and does not fail.
    third = _changes(resources)
    assert third["mode"] == "incremental (created + events)"
    assert _row(url, "stripe_invoices", kept["id"])[2]["deleted"] is True


def test_the_first_run_records_the_planted_deleted_draft(
    recent: tuple[Company, Sandbox, dict[str, Any], str],
) -> None:
    company, _sandbox, resources, url = recent
    (planted,) = company.planted["deleted_draft"]
    assert planted["id"] not in {i["id"] for i in company.stripe["invoice"]}
    meta = _changes(resources)
    assert meta["mode"] == "listing by created date + retained events"
    assert meta["deleted drafts recorded"] == 1
    _day_landed, _run, gone = _row(url, "stripe_invoices", planted["id"])
    assert gone["deleted"] is True and gone["status"] == "draft"


def test_a_404_without_a_deletion_event_fails_naming_the_invoice(
    recent: tuple[Company, Sandbox, dict[str, Any], str],
) -> None:
    company, sandbox, resources, url = recent
    env = sandbox.env
    customer = company.stripe["customer"][0]["id"]
    with StripeClient(api_key=env["STRIPE_API_KEY"], api_base=env["STRIPE_API_BASE"]) as c:
        draft = c.post("/v1/invoices", {"customer": customer}, idempotency_key="t-draft-c")
    # The invoice vanishes with no invoice.deleted event: not a deletion anyone recorded.
    with sandbox.stripe.store.tx() as conn:
        conn.execute(
            "DELETE FROM stripe_object WHERE object = 'invoice' AND id = ?", (draft["id"],)
        )
    result = dg.materialize(
        _definitions({"stripe_invoice_changes"}),
        resources=resources,
        instance=dg.DagsterInstance.ephemeral(),
        raise_on_error=False,
    )
    assert not result.success
    (failure,) = result.get_step_failure_events()
    error = failure.step_failure_data.error
    assert error is not None and error.cause is not None
    # Dagster wraps the asset's error; the cause is finsync's, naming system, record and 404.
    assert error.cause.cls_name == "PermanentUpstreamError"
    message = error.cause.message
    assert message.startswith("finsync_pipeline.errors.PermanentUpstreamError: stripe: invoice ")
    assert draft["id"] in message and "404" in message and "no deletion event" in message
    with create_engine(url).connect() as conn:
        cursor = conn.execute(
            sa.text("SELECT COUNT(*) FROM extract_cursors WHERE stream = :s"),
            {"s": "stripe_invoice_changes"},
        ).scalar_one()
    assert cursor == 0  # the cursor does not move past a change it could not land


def test_a_customer_changed_by_an_event_keeps_its_tax_ids(
    resources: dict[str, Any], sandbox: Sandbox, company: Company, url: str
) -> None:
    customers = _definitions({"stripe_customers"})

    def payload(customer_id: str) -> dict[str, Any]:
        with create_engine(url).connect() as conn:
            return dict(
                ledger.loads(
                    conn.execute(
                        sa.text("SELECT payload FROM stripe_customers WHERE source_id = :id"),
                        {"id": customer_id},
                    ).scalar_one()
                )
            )

    first = dg.materialize(customers, resources=resources, instance=dg.DagsterInstance.ephemeral())
    assert first.success
    (planted,) = company.planted["reverse_charge_customer"]
    (vat,) = payload(planted["id"])["tax_ids"]["data"]
    env = sandbox.env
    with StripeClient(api_key=env["STRIPE_API_KEY"], api_base=env["STRIPE_API_BASE"]) as client:
        client.post(
            f"/v1/customers/{planted['id']}",
            {"description": "VAT id checked"},
            idempotency_key="t-vat-customer-edit",
        )
    # The change arrives as an event, whose snapshot has no tax ids (Stripe leaves the
    # includable field out): the landed customer must still carry them.
    again = dg.materialize(customers, resources=resources, instance=dg.DagsterInstance.ephemeral())
    assert again.success
    landed = payload(planted["id"])
    assert landed["description"] == "VAT id checked"
    assert landed["tax_ids"]["data"] == [vat]
