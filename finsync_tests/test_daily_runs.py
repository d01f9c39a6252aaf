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
from finsync_pipeline.resources.warehouse import create_engine
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


def _daily(sb: Sandbox, url: str, day: dt.date, instance: dg.DagsterInstance) -> None:
    """What the daily schedule launches for ``day``: the whole pipeline for one partition."""
    job = defs().resolve_job_def("daily_sync_job")
    result = job.execute_in_process(
        instance=instance,
        partition_key=day.isoformat(),
        resources=_resources(sb.env, url),
        raise_on_error=False,
    )
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
