"""Near real time upstream of the ledger: a Stripe invoice finalized or a payment succeeded
reaches NetSuite through the Stripe events sensor and the posting sensor, ticked as the daemon
ticks them, without waiting for the nightly run or re-running the history."""

import datetime as dt
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dagster as dg
import pytest
import sqlalchemy as sa

from finsync_pipeline.definitions import defs
from finsync_pipeline.defs.automation.stripe_events import changed_days, interval_from_env
from finsync_pipeline.errors import ConfigurationError
from finsync_pipeline.landing import land_changes
from finsync_pipeline.partitions import range_tags
from finsync_pipeline.posting_flows import BATCH_WINDOWS_ENV
from finsync_pipeline.resources.stripe import StripeResource
from finsync_pipeline.resources.warehouse import create_engine
from finsync_pipeline.sandbox.generator import CompanySpec, add_months, generate
from finsync_pipeline.sandbox.live_billing import (
    collect_invoice,
    cycle_invoices,
    finalize_next_invoice,
)
from finsync_pipeline.sandbox.server import Sandbox
from finsync_pipeline.sensor_ticks import SensorTicker
from finsync_tests.conftest import TEST_END
from finsync_tests.defs.test_assets import _resources

SPEC = CompanySpec(accounts=24, months=1, seed=13, end=TEST_END)
FIRST_DAY = add_months(TEST_END, -SPEC.months) + dt.timedelta(days=1)
# The morning after the history: what Stripe bills now is today's.
NOW = dt.datetime.combine(TEST_END + dt.timedelta(days=1), dt.time(10), tzinfo=dt.UTC)
EVENTS = "stripe_events_sensor"
POSTING = "erp_posting_sensor"
SALESFORCE = "salesforce_changes_sensor"
LATE = "late_changes_sensor"


def _sandbox(path: Path) -> Sandbox:
    sb = Sandbox(path)
    sb.seed(generate(SPEC))
    # Stripe's clock only: the others keep the wall clock their logins are checked against.
    sb.stripe.clock = NOW.timestamp
    return sb


@pytest.fixture
def sandbox(tmp_path: Path) -> Iterator[Sandbox]:
    with _sandbox(tmp_path / "sandbox") as sb:
        yield sb


def _ticker(sb: Sandbox, url: str, tmp_path: Path) -> SensorTicker:
    (tmp_path / "dagster").mkdir(exist_ok=True)
    instance = dg.DagsterInstance.local_temp(str(tmp_path / "dagster"))
    return SensorTicker(defs(), instance, _resources(sb.env, url))


def _run_history(ticker: SensorTicker) -> None:
    """The month of history, as the nightly runs left it (one backfill of it)."""
    history = (
        defs()
        .resolve_job_def("daily_sync_job")
        .execute_in_process(
            instance=ticker.instance,
            resources=ticker.resources,
            tags=range_tags(FIRST_DAY, TEST_END),
        )
    )
    assert history.success


def _rows(url: str, sql: str, **params: Any) -> list[tuple[Any, ...]]:
    with create_engine(url).connect() as conn:
        return [tuple(r) for r in conn.execute(sa.text(sql), params)]


def _newest_event(sb: Sandbox, etype: str) -> str:
    row = sb.store.one(
        "SELECT id FROM stripe_object WHERE object = 'event' AND type = ? "
        "ORDER BY created DESC, seq DESC",
        (etype,),
    )
    assert row is not None
    return str(row["id"])


def test_an_invoice_finalized_and_paid_reaches_netsuite_in_one_small_run(
    sandbox: Sandbox, sqlite_url: str, tmp_path: Path
) -> None:
    ticker = _ticker(sandbox, sqlite_url, tmp_path)
    # The history, as the nightly runs and the posting sensor left it.
    _run_history(ticker)
    while ticker.tick(POSTING).runs:
        pass
    assert ticker.tick(EVENTS).skip_message == "started: the nightly runs carry every earlier event"
    quiet = ticker.tick(EVENTS)
    assert (quiet.requests, quiet.skip_message) == ([], "no new Stripe events")

    invoice = finalize_next_invoice(sandbox, cycle_invoices(sandbox)[0])
    charge = collect_invoice(sandbox, invoice)
    tick = ticker.tick(EVENTS)
    today = NOW.date().isoformat()
    # One run, for today only, keyed by the last event read (``invoice.paid``; the
    # ``invoice.payment_succeeded`` after it says nothing more): the same events never run twice.
    assert [(r.run_key, r.partition_key) for r in tick.requests] == [
        (f"stripe:{_newest_event(sandbox, 'invoice.paid')}:{today}", today)
    ]
    (run,) = tick.runs
    assert run.dagster_run.tags["dagster/partition"] == today
    queued = "SELECT doc_type, state FROM posting_ledger WHERE source_id = :id"
    assert _rows(sqlite_url, queued, id=invoice) == [("invoice", "pending")]
    assert _rows(sqlite_url, queued, id=charge) == [("customer_payment", "pending")]

    # The posting sensor's next tick posts both.
    assert ticker.tick(POSTING).runs
    assert _rows(sqlite_url, queued, id=invoice) == [("invoice", "posted")]
    assert _rows(sqlite_url, queued, id=charge) == [("customer_payment", "posted")]
    ((external_id,),) = _rows(
        sqlite_url, "SELECT external_id FROM posting_ledger WHERE source_id = :id", id=invoice
    )
    assert [r for r in sandbox.netsuite_records("invoice") if r.get("externalId") == external_id]
    again = ticker.tick(EVENTS)
    assert (again.requests, again.skip_message) == ([], "no new Stripe events")


def test_changes_of_batch_flows_only_move_the_cursor(
    sandbox: Sandbox, sqlite_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    windows = {"invoice": "0 3 * * *", "customer_payment": "0 3 * * *"}
    monkeypatch.setenv(BATCH_WINDOWS_ENV, json.dumps(windows))
    ticker = _ticker(sandbox, sqlite_url, tmp_path)
    ticker.tick(EVENTS)
    invoice = finalize_next_invoice(sandbox, cycle_invoices(sandbox)[1])
    collect_invoice(sandbox, invoice)
    batch_only = ticker.tick(EVENTS)
    assert batch_only.requests == []
    assert batch_only.skip_message == "4 new Stripe events, none for a near-real-time flow"

    # A customer's change is near real time still: a run for the day it changed.
    customer = json.loads(
        str(sandbox.store.one("SELECT body FROM stripe_object WHERE id = ?", (invoice,))["body"])
    )["customer"]
    client = StripeResource(
        api_key=sandbox.env["STRIPE_API_KEY"], api_base=sandbox.env["STRIPE_API_BASE"]
    ).get_client()
    client.post(f"/v1/customers/{customer}", {"metadata": {"tier": "gold"}})
    assert [r.partition_key for r in ticker.tick(EVENTS).requests] == [NOW.date().isoformat()]


def test_an_account_renamed_in_salesforce_renames_its_netsuite_customer_in_one_small_run(
    sandbox: Sandbox, sqlite_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ticker = _ticker(sandbox, sqlite_url, tmp_path)
    _run_history(ticker)
    while ticker.tick(POSTING).runs:
        pass
    assert ticker.tick(SALESFORCE).skip_message == (
        "started: the nightly runs carry every earlier Account change"
    )
    assert ticker.tick(SALESFORCE).skip_message == "no Salesforce Account changed"

    client = ticker.resources["salesforce"].get_client()
    ((key, name),) = [
        (r["Id"], r["Name"])
        for r in client.query("SELECT Id, Name, ParentId FROM Account ORDER BY Id")
        if r["ParentId"] is None
    ][:1]
    [saved] = client.update_collection("Account", [(key, {"Name": f"{name} Holdings"})])
    assert saved.error is None
    tick = ticker.tick(SALESFORCE)
    today = dt.datetime.now(dt.UTC).date().isoformat()
    assert [r.partition_key for r in tick.requests] == [today], tick.skip_message
    assert tick.runs and tick.runs[0].success
    queued = "SELECT state FROM posting_ledger WHERE doc_type = 'customer' AND source_id = :id"
    assert _rows(sqlite_url, queued, id=key) == [("pending",)]
    # Read again within the lookback, the same change asks for nothing more.
    assert ticker.tick(SALESFORCE).skip_message == "no Salesforce Account changed"
    # finsync's own write-back of the billing status changes no customer field: no run.
    client.update_collection("Account", [(key, {"Finsync_Invoice_Status__c": "posted"})])
    assert ticker.tick(SALESFORCE).skip_message == (
        "1 Salesforce Account changes, none to a customer field"
    )

    assert ticker.tick(POSTING).runs
    assert _rows(sqlite_url, queued, id=key) == [("posted",)]
    (customer,) = [
        c for c in sandbox.netsuite_records("customer") if str(c.get("comments", "")).endswith(key)
    ]
    assert customer["companyName"] == f"{name} Holdings"

    # With customers in a batch window, the nightly run carries the change instead.
    monkeypatch.setenv(BATCH_WINDOWS_ENV, json.dumps({"customer": "0 3 * * *"}))
    client.update_collection("Account", [(key, {"Name": name})])
    assert ticker.tick(SALESFORCE).requests == []


def test_a_modstamp_far_in_the_future_never_becomes_the_cursor(
    sandbox: Sandbox, sqlite_url: str, tmp_path: Path
) -> None:
    ticker = _ticker(sandbox, sqlite_url, tmp_path)
    ticker.tick(SALESFORCE)
    client = ticker.resources["salesforce"].get_client()
    first, second = [r["Id"] for r in client.query("SELECT Id FROM Account ORDER BY Id")][:2]
    real_clock = sandbox.salesforce.clock
    sandbox.salesforce.clock = lambda: dt.datetime(9999, 1, 1, tzinfo=dt.UTC).timestamp()
    client.update_collection("Account", [(first, {"Name": "From a broken data load"})])
    sandbox.salesforce.clock = real_clock
    assert ticker.tick(SALESFORCE).skip_message == "no Salesforce Account changed"
    client.update_collection("Account", [(second, {"Name": "A real change"})])
    assert len(ticker.tick(SALESFORCE).requests) == 1


def test_a_change_read_again_unchanged_is_no_late_change(
    sandbox: Sandbox, sqlite_url: str, tmp_path: Path
) -> None:
    """Every run reads Stripe's newest change events again (a lookback of ten minutes before
    its cursor) and lands the invoices they name, as stripe_invoice_changes does. Landed again
    unchanged under the new run's id, they made their invoices' days look changed, and under
    the daemon late_changes_sensor ran those days again, whose runs landed the same invoices
    again, for ever."""
    ticker = _ticker(sandbox, sqlite_url, tmp_path)
    _run_history(ticker)
    carried = "every landed change is carried downstream"
    assert ticker.tick(LATE).skip_message == carried
    read_again = [
        json.loads(str(payload))
        for (payload,) in _rows(sqlite_url, "SELECT payload FROM stripe_invoices LIMIT 5")
    ]
    land_changes(
        create_engine(sqlite_url),
        table="stripe_invoices",
        system="stripe",
        stream="stripe_invoice_changes",
        records=read_again,
        id_key="id",
        created_date=lambda r: (
            dt.datetime.fromtimestamp(int(r["created"]), dt.UTC).date().isoformat()
        ),
        updated_at=lambda _r: None,
        new_cursor=lambda _rows: None,
        run_id="a-later-run",
    )
    again = ticker.tick(LATE)
    assert (again.requests, again.skip_message) == ([], carried)


def test_the_interval_is_configuration_that_names_its_variable(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("FINSYNC_NEAR_REAL_TIME_INTERVAL_S", "5")
    loaded = defs()
    assert loaded.resolve_sensor_def(EVENTS).minimum_interval_seconds == 5
    assert loaded.resolve_sensor_def(POSTING).minimum_interval_seconds == 5
    monkeypatch.setenv("FINSYNC_NEAR_REAL_TIME_INTERVAL_S", "soon")
    with pytest.raises(ConfigurationError, match="FINSYNC_NEAR_REAL_TIME_INTERVAL_S is 'soon'"):
        interval_from_env()


def _event(etype: str, obj: str, created: dt.datetime, at: dt.datetime) -> dict[str, Any]:
    return {
        "id": f"evt_{etype}",
        "type": etype,
        "created": int(at.timestamp()),
        "data": {"object": {"object": obj, "created": int(created.timestamp())}},
    }


@pytest.mark.parametrize(
    ("etype", "obj", "created", "flows", "days"),
    [
        # A payment today of an October invoice: the invoice's own day, not the days between.
        (
            "invoice.paid",
            "invoice",
            dt.datetime(2026, 10, 3, tzinfo=dt.UTC),
            {"customer_payment"},
            ["2026-10-03"],
        ),
        ("charge.succeeded", "charge", NOW, {"customer_payment"}, ["2026-11-01"]),
        # Master data: the day it changed.
        (
            "customer.updated",
            "customer",
            dt.datetime(2025, 1, 1, tzinfo=dt.UTC),
            {"customer"},
            ["2026-11-01"],
        ),
        # A batch flow's change asks for nothing.
        ("credit_note.created", "credit_note", NOW, {"invoice", "customer"}, []),
        # Before the history starts: the nightly backfill's, not the sensor's.
        ("invoice.voided", "invoice", dt.datetime(2022, 5, 1, tzinfo=dt.UTC), {"invoice"}, []),
    ],
    ids=["old-invoice-paid", "charge-today", "customer", "batch-flow", "before-history"],
)
def test_each_event_asks_for_its_objects_own_day(
    etype: str, obj: str, created: dt.datetime, flows: set[str], days: list[str]
) -> None:
    assert changed_days([_event(etype, obj, created, NOW)], flows) == days
