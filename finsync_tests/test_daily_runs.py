"""A deployment runs one day at a time: every day, empty or not, runs alone and ends right.

The daily schedule launches ``daily_sync_job`` for one partition each night. These tests run
that job, through Dagster, against the sandbox over HTTP, on a real SQLite warehouse.
"""

import datetime as dt
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dagster as dg
import pytest
import sqlalchemy as sa

from finsync_pipeline.definitions import defs
from finsync_pipeline.partitions import RANGE_END_TAG, RANGE_START_TAG, range_tags
from finsync_pipeline.resources.warehouse import WarehouseResource, create_engine
from finsync_pipeline.sandbox.generator import CompanySpec, add_months, generate
from finsync_pipeline.sandbox.server import Sandbox
from finsync_tests.conftest import TEST_END
from finsync_tests.defs.test_assets import _resources

SPEC = CompanySpec(accounts=24, months=1, seed=13, end=TEST_END)
FIRST_DAY = add_months(TEST_END, -SPEC.months) + dt.timedelta(days=1)


@pytest.fixture
def sandbox(tmp_path: Path) -> Iterator[Sandbox]:
    sb = Sandbox(tmp_path / "sandbox")
    sb.seed(generate(SPEC))
    with sb:
        yield sb


@pytest.fixture
def instance(tmp_path: Path) -> dg.DagsterInstance:
    """A Dagster instance on disk, as a deployment has: schedules and sensors read its runs."""
    (tmp_path / "dagster").mkdir()
    return dg.DagsterInstance.local_temp(str(tmp_path / "dagster"))


def _daily(
    sb: Sandbox,
    url: str,
    day: dt.date,
    instance: dg.DagsterInstance,
    *,
    last_day: dt.date | None = None,
    env: dict[str, str] | None = None,
    expect_success: bool = True,
    job_name: str = "daily_sync_job",
) -> None:
    """What the daily schedule launches for ``day``: the whole pipeline for one partition
    (or, with ``last_day``, what a backfill launches for a range, in one run)."""
    job = defs().resolve_job_def(job_name)
    where: dict[str, Any] = (
        {"partition_key": day.isoformat()}
        if last_day is None
        else {"tags": range_tags(day, last_day)}
    )
    result = job.execute_in_process(
        instance=instance,
        resources=_resources(env or sb.env, url),
        raise_on_error=False,
        **where,
    )
    if not expect_success:
        assert not result.success, f"{day}: the run was meant to fail"
        return
    failures = [
        f"{e.step_key}: {e.step_failure_data.error.message.splitlines()[0]}"
        for e in result.all_events
        if e.is_step_failure and e.step_failure_data.error
    ]
    assert result.success, f"{day}: {failures}"


def _rows(url: str, sql: str) -> list[tuple[Any, ...]]:
    with create_engine(url).connect() as conn:
        return [tuple(r) for r in conn.execute(sa.text(sql))]


def test_a_day_with_nothing_at_all_is_an_ordinary_day(sandbox: Sandbox, sqlite_url: str) -> None:
    # Days before the company's history: no invoice, charge, credit note, refund or usage.
    empty = FIRST_DAY - dt.timedelta(days=3)
    _daily(sandbox, sqlite_url, empty, dg.DagsterInstance.ephemeral())
    assert _rows(sqlite_url, "SELECT COUNT(*) FROM invoices") == [(0,)]
    assert _rows(
        sqlite_url,
        "SELECT COUNT(*) FROM posting_ledger WHERE doc_type <> 'customer' AND erp = 'netsuite'",
    ) == [(0,)]


def test_what_a_failed_day_left_half_done_the_next_day_finishes(
    sandbox: Sandbox, sqlite_url: str, instance: dg.DagsterInstance
) -> None:
    # October 24 has one refund and the credit note behind it. Its run lands them from Stripe,
    # then fails: Salesforce refuses the credentials, so nothing downstream of the customers
    # runs. October 25's run (credentials fixed) must still carry both to NetSuite.
    refund_day = dt.date(2026, 10, 24)
    _daily(sandbox, sqlite_url, FIRST_DAY, instance, last_day=refund_day - dt.timedelta(days=1))
    broken = {**sandbox.env, "SALESFORCE_CLIENT_SECRET": "revoked"}
    _daily(sandbox, sqlite_url, refund_day, instance, env=broken, expect_success=False)
    assert _rows(sqlite_url, "SELECT COUNT(*) FROM stripe_credit_notes") == [(1,)]
    _daily(sandbox, sqlite_url, refund_day + dt.timedelta(days=1), instance)

    (note,) = _rows(sqlite_url, "SELECT source_id FROM stripe_credit_notes")
    memo = (
        "SELECT state FROM posting_ledger WHERE doc_type = 'credit_memo' "
        f"AND source_id = '{note[0]}'"
    )
    # October 25's run carried the credit note and its refund, and queued the credit memo...
    assert _rows(sqlite_url, memo) == [("pending",)]
    assert _rows(sqlite_url, "SELECT credit_note_id FROM refunds") == [note]
    assert (
        _rows(
            sqlite_url,
            "SELECT kind, source_id FROM finance_exceptions WHERE status = 'open' "
            "AND kind IN ('unmatched_refund', 'credit_note_held')",
        )
        == []
    )
    # ...and the next nightly tick runs the failed day again, which posts and reconciles it,
    # then forgets the day once it has succeeded.
    assert _tick(instance, refund_day + dt.timedelta(days=2)) == ["2026-10-24", "2026-10-25"]
    _daily(sandbox, sqlite_url, refund_day, instance)
    assert _rows(sqlite_url, memo) == [("posted",)]
    assert _rows(
        sqlite_url,
        "SELECT COUNT(*) FROM payment_reconciliation WHERE status <> 'matched' "
        "AND partition_date = '2026-10-24'",
    ) == [(0,)]
    assert _tick(instance, refund_day + dt.timedelta(days=2)) == ["2026-10-25"]


def _tick(instance: dg.DagsterInstance, day: dt.date) -> list[str | None]:
    """The partitions the daily schedule's tick at 02:00 UTC of ``day`` asks runs for."""
    tick = dg.build_schedule_context(
        instance=instance,
        repository_def=defs().get_repository_def(),
        scheduled_execution_time=dt.datetime.combine(day, dt.time(2), tzinfo=dt.UTC),
    )
    requests = defs().resolve_schedule_def("daily_sync_job_schedule").evaluate_tick(tick)
    return [r.partition_key for r in requests.run_requests or []]


def test_a_late_change_to_an_old_day_reaches_the_erp_without_a_rerun_by_hand(
    sandbox: Sandbox, sqlite_url: str, instance: dg.DagsterInstance
) -> None:
    today = dt.date(2026, 10, 29)
    _daily(sandbox, sqlite_url, FIRST_DAY, instance, last_day=today - dt.timedelta(days=1))
    (invoice_id, day), *_ = _rows(
        sqlite_url,
        "SELECT i.invoice_id, i.partition_date FROM invoices i JOIN posting_ledger l "
        "ON l.source_id = i.invoice_id AND l.doc_type = 'invoice' AND l.state = 'posted' "
        "WHERE i.status = 'open' ORDER BY i.invoice_id",
    )
    # Finance voids an invoice of an older day in Stripe; the nightly run of today reads the
    # void from the events stream and writes it back into the invoice's own day.
    stripe = _resources(sandbox.env, sqlite_url)["stripe"].get_client()
    stripe.post(f"/v1/invoices/{invoice_id}/void", {}, idempotency_key=f"void-{invoice_id}")
    _daily(sandbox, sqlite_url, today, instance)
    assert _rows(sqlite_url, f"SELECT status FROM invoices WHERE invoice_id = '{invoice_id}'") == [
        ("open",)
    ]

    # The late-changes sensor asks for that day again, and its run reverses the invoice.
    assert _late_changes(instance, sqlite_url) == [day]
    _daily(sandbox, sqlite_url, dt.date.fromisoformat(day), instance, job_name="catch_up_job")
    assert _rows(
        sqlite_url, f"SELECT state FROM posting_ledger WHERE external_id = 'VOID_{invoice_id}'"
    ) == [("posted",)]
    assert _rows(
        sqlite_url,
        f"SELECT status FROM invoice_reconciliation WHERE invoice_id = '{invoice_id}'",
    ) == [("matched",)]
    # That day is carried now; later days of the sandbox's history may have changes of their own.
    assert day not in _late_changes(instance, sqlite_url)


def _late_changes(instance: dg.DagsterInstance, url: str) -> list[str | None]:
    """The partitions the late-changes sensor asks runs for."""
    sensor = defs().resolve_sensor_def("late_changes_sensor")
    context = dg.build_sensor_context(
        instance=instance,
        definitions=defs(),
        resources={"warehouse": WarehouseResource(url=url)},
    )
    return [r.partition_key for r in sensor.evaluate_tick(context).run_requests or []]


def test_money_of_the_window_for_an_invoice_before_it_finds_that_invoice(
    sandbox: Sandbox, sqlite_url: str, instance: dg.DagsterInstance
) -> None:
    # A first run from October 9 on a new warehouse: charges of October 9 and 11 paid
    # invoices of October 5 to 8, and the credit note of October 24 credits one of October 1.
    start = dt.date(2026, 10, 9)
    _daily(sandbox, sqlite_url, start, instance, last_day=TEST_END)
    false_alarms = (
        "SELECT kind, source_id FROM finance_exceptions WHERE status = 'open' "
        "AND kind IN ('unmatched_payment', 'unmatched_refund')"
    )
    assert _rows(sqlite_url, false_alarms) == []
    earlier = _late_changes(instance, sqlite_url)
    assert earlier and all(str(d) < start.isoformat() for d in earlier)

    # Those days run for their invoices (the late-changes sensor asks for them), and the
    # money applies; their own money is not pulled in, so nothing cascades further back.
    for day in earlier:
        _daily(
            sandbox, sqlite_url, dt.date.fromisoformat(str(day)), instance, job_name="catch_up_job"
        )
    assert _late_changes(instance, sqlite_url) == []
    _post_due(sandbox, sqlite_url, instance)
    before = f"(SELECT invoice_id FROM invoices WHERE partition_date < '{start}')"
    unposted = (
        "SELECT {key} FROM {table} t WHERE t.invoice_id IN {before} {cond} AND NOT EXISTS "
        "(SELECT 1 FROM posting_ledger l WHERE l.source_id = t.{key} AND l.state = 'posted')"
    )
    assert _rows(sqlite_url, f"SELECT COUNT(*) FROM {before} b") != [(0,)]
    assert (
        _rows(
            sqlite_url,
            unposted.format(
                key="payment_id", table="payments", before=before, cond="AND t.status = 'succeeded'"
            ),
        )
        == []
    )
    assert (
        _rows(
            sqlite_url,
            unposted.format(key="credit_note_id", table="credit_notes", before=before, cond=""),
        )
        == []
    )
    assert (
        _rows(
            sqlite_url,
            unposted.format(
                key="invoice_id", table="invoices", before=before, cond="AND t.status <> 'draft'"
            ),
        )
        == []
    )


def _post_due(sb: Sandbox, url: str, instance: dg.DagsterInstance) -> None:
    """What the posting sensor launches for the documents due on the ledger."""
    sensor = defs().resolve_sensor_def("erp_posting_sensor")
    context = dg.build_sensor_context(
        instance=instance, definitions=defs(), resources={"warehouse": WarehouseResource(url=url)}
    )
    (request,) = sensor.evaluate_tick(context).run_requests or []
    job = defs().resolve_job_def("erp_posting_job")
    result = job.execute_in_process(
        instance=instance, tags=request.tags, resources=_resources(sb.env, url)
    )
    assert result.success


# A company some of whose invoices of October 1 to 3 are paid by charges of October 4 to 10.
LATE_MONEY_SPEC = CompanySpec(accounts=30, months=1, seed=13, end=TEST_END)


@pytest.fixture
def late_money_sandbox(tmp_path: Path) -> Iterator[Sandbox]:
    sb = Sandbox(tmp_path / "late-money-sandbox")
    sb.seed(generate(LATE_MONEY_SPEC))
    with sb:
        yield sb


def test_money_of_a_later_day_has_the_days_it_paid_read_back_and_reconciled(
    late_money_sandbox: Sandbox, sqlite_url: str, instance: dg.DagsterInstance
) -> None:
    sandbox = late_money_sandbox
    # October 1 to 3 run first: Stripe already shows some of their invoices paid, by charges
    # of later days, which the warehouse does not hold yet.
    later = FIRST_DAY + dt.timedelta(days=3)
    _daily(sandbox, sqlite_url, FIRST_DAY, instance, last_day=later - dt.timedelta(days=1))
    # The run of October 4 to 10 posts those charges, applied to the earlier invoices, and
    # reads back and reconciles only its own days.
    _daily(sandbox, sqlite_url, later, instance, last_day=later + dt.timedelta(days=6))
    moved = (
        "SELECT r.partition_date, r.external_id, r.status, r.erp_remaining_minor "
        "FROM invoice_reconciliation r JOIN payments p ON p.invoice_id = r.invoice_id "
        "JOIN posting_ledger l ON l.source_id = p.payment_id AND l.state = 'posted' "
        f"WHERE r.partition_date < '{later}' ORDER BY r.partition_date, r.external_id"
    )
    before = _rows(sqlite_url, moved)
    # Reconciled before their money was read, they were paid in Stripe on later days: on their
    # way (awaiting_window, explained), never drift.
    assert before and any(status == "awaiting_window" for _, _, status, _ in before), before
    assert not any(status == "balance_mismatch" for _, _, status, _ in before), before

    # The posting sensor asks for those days to be read back; its run reconciles them.
    sensor = defs().resolve_sensor_def("erp_posting_sensor")
    context = dg.build_sensor_context(
        instance=instance,
        definitions=defs(),
        resources={"warehouse": WarehouseResource(url=sqlite_url)},
    )
    (request,) = sensor.evaluate_tick(context).run_requests or []
    assert request.tags[RANGE_START_TAG] <= min(day for day, *_ in before)
    assert request.tags[RANGE_END_TAG] >= max(day for day, *_ in before)
    job = defs().resolve_job_def("erp_posting_job")
    result = job.execute_in_process(
        instance=instance, tags=request.tags, resources=_resources(sandbox.env, sqlite_url)
    )
    assert result.success
    after = _rows(sqlite_url, moved)
    assert [(day, ext) for day, ext, *_ in after] == [(day, ext) for day, ext, *_ in before]
    assert {status for _, _, status, _ in after} == {"matched"}, after
    # Read back after the money, those days are not asked for again.
    assert not (sensor.evaluate_tick(context).run_requests or [])


def test_a_credit_balance_drawn_later_has_its_credit_memos_day_read_back(
    late_money_sandbox: Sandbox, sqlite_url: str, instance: dg.DagsterInstance
) -> None:
    sandbox = late_money_sandbox
    # October 19 has a net-negative invoice, posted as a credit memo that leaves the customer
    # a credit; an invoice of October 22 draws on it (BALANCE_<invoice> applies that memo).
    credit_day, later = dt.date(2026, 10, 19), dt.date(2026, 10, 20)
    _daily(sandbox, sqlite_url, dt.date(2026, 10, 15), instance, last_day=credit_day)
    _daily(sandbox, sqlite_url, later, instance, last_day=later + dt.timedelta(days=4))
    credit = (
        "SELECT external_id, erp_remaining_minor FROM invoice_reconciliation "
        f"WHERE partition_date = '{credit_day}' AND external_id LIKE 'STRIPE_CREDIT_%'"
    )
    drawn = _rows(
        sqlite_url,
        "SELECT COUNT(*) FROM posting_ledger WHERE external_id LIKE 'BALANCE_%' "
        f"AND state = 'posted' AND partition_date >= '{later}'",
    )
    before = _rows(sqlite_url, credit)
    assert drawn != [(0,)] and before and all(left > 0 for _, left in before), before

    sensor = defs().resolve_sensor_def("erp_posting_sensor")
    context = dg.build_sensor_context(
        instance=instance,
        definitions=defs(),
        resources={"warehouse": WarehouseResource(url=sqlite_url)},
    )
    (request,) = sensor.evaluate_tick(context).run_requests or []
    assert request.tags[RANGE_START_TAG] <= credit_day.isoformat() <= request.tags[RANGE_END_TAG]
    job = defs().resolve_job_def("erp_posting_job")
    result = job.execute_in_process(
        instance=instance, tags=request.tags, resources=_resources(sandbox.env, sqlite_url)
    )
    assert result.success
    after = _rows(sqlite_url, credit)
    assert [ext for ext, _ in after] == [ext for ext, _ in before]
    assert all(left < was for (_, left), (_, was) in zip(after, before, strict=True)), after
    assert not (sensor.evaluate_tick(context).run_requests or [])
