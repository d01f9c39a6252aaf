"""A company without usage metering or Salesforce CPQ runs with that source switched off.

The daily run goes through Dagster with the resources ``definitions.py`` binds from the
environment, against the sandbox over HTTP, on a real SQLite warehouse: the switched-off
source's variables are not set at all.
"""

import datetime as dt
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import dagster as dg
import pytest

from finsync_pipeline.definitions import defs
from finsync_pipeline.errors import ConfigurationError
from finsync_pipeline.runner import check_environment
from finsync_pipeline.sandbox.generator import CompanySpec, generate
from finsync_pipeline.sandbox.server import Sandbox
from finsync_pipeline.sources import SOURCES_OFF_ENV, sources_off
from finsync_tests.conftest import TEST_END
from finsync_tests.test_daily_runs import _rows

SPEC = CompanySpec(accounts=24, months=1, seed=13, end=TEST_END)
METERING_ENV = ("METERING_API_KEY", "METERING_BASE_URL")
CPQ_TABLES = ("cpq_quotes", "cpq_quote_lines", "cpq_subscriptions")


@pytest.mark.parametrize(
    ("raw", "off"),
    [
        ("", set()),
        ("metering", {"metering"}),
        (" Metering , cpq ,", {"metering", "cpq"}),
    ],
    ids=["unset", "metering", "both-loosely-written"],
)
def test_the_setting_names_the_sources_switched_off(raw: str, off: set[str]) -> None:
    assert sources_off(raw) == off


def test_a_wrong_source_is_one_line_saying_what_to_set() -> None:
    with pytest.raises(ConfigurationError) as error:
        sources_off("metering,usage")
    message = str(error.value)
    assert "\n" not in message
    assert message.startswith(f"{SOURCES_OFF_ENV}: unknown source 'usage'")
    assert "metering, cpq" in message


def test_definitions_refuse_a_wrong_source(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(SOURCES_OFF_ENV, "cqp")
    with pytest.raises(ConfigurationError, match=f"{SOURCES_OFF_ENV}: unknown source 'cqp'"):
        defs()


@pytest.fixture
def sandbox(tmp_path: Path) -> Iterator[Sandbox]:
    sb = Sandbox(tmp_path / "sandbox")
    sb.seed(generate(SPEC))
    with sb:
        yield sb


def _environment(
    monkeypatch: pytest.MonkeyPatch, sb: Sandbox, url: str, *, off: str, unset: tuple[str, ...]
) -> None:
    """The deployment's environment: the sandbox's variables but ``unset``, and ``off``."""
    for name, value in sb.env.items():
        if name in unset:
            monkeypatch.delenv(name, raising=False)
        else:
            monkeypatch.setenv(name, value)
    monkeypatch.setenv(SOURCES_OFF_ENV, off)
    monkeypatch.setenv("FINSYNC_WAREHOUSE_URL", url)
    monkeypatch.delenv("FINSYNC_POSTING_BATCH_WINDOWS", raising=False)
    monkeypatch.setenv("FINSYNC_MODE", "sandbox")
    # A small company carries the same planted problems as a large one (see test_assets).
    monkeypatch.setenv("FINSYNC_MAX_BAD_SHARE", "0.2")


def _busiest_day() -> dt.date:
    """The day the generated company finalizes the most invoices."""
    days = Counter(
        dt.datetime.fromtimestamp(int(i["created"]), dt.UTC).date()
        for i in generate(SPEC).stripe["invoice"]
        if i.get("status") in ("open", "paid")
    )
    return max(days, key=lambda d: (days[d], d))


def _daily_run(day: dt.date) -> dg.ExecuteInProcessResult:
    """What the daily schedule launches for ``day``, with the environment's resources."""
    return (
        defs()
        .resolve_job_def("daily_sync_job")
        .execute_in_process(
            instance=dg.DagsterInstance.ephemeral(),
            partition_key=day.isoformat(),
            raise_on_error=False,
        )
    )


def _failures(result: dg.ExecuteInProcessResult) -> list[str]:
    """Each failed step and its error, with the causes Dagster wraps it in."""
    failures = []
    for event in result.all_events:
        if not (event.is_step_failure and event.step_failure_data):
            continue
        error, messages = event.step_failure_data.error, []
        while error is not None:
            messages.append(error.message.strip().splitlines()[0])
            error = error.cause
        failures.append(f"{event.step_key}: {' <- '.join(messages)}")
    return failures


def _posted_invoices(url: str) -> int:
    (n,) = _rows(
        url, "SELECT COUNT(*) FROM posting_ledger WHERE doc_type = 'invoice' AND state = 'posted'"
    )[0]
    return int(n)


def test_without_usage_metering_a_daily_run_needs_no_metering_credentials_and_posts(
    sandbox: Sandbox, sqlite_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    _environment(monkeypatch, sandbox, sqlite_url, off="metering", unset=METERING_ENV)
    result = _daily_run(_busiest_day())
    assert result.success, _failures(result)
    assert sandbox.request_counts()["metering"] == 0
    assert _rows(sqlite_url, "SELECT COUNT(*) FROM usage_events") == [(0,)]
    assert _rows(sqlite_url, "SELECT COUNT(*) FROM usage_daily") == [(0,)]
    assert (
        _rows(
            sqlite_url,
            "SELECT kind, source_id FROM finance_exceptions WHERE source_system = 'metering'",
        )
        == []
    )
    assert _posted_invoices(sqlite_url) > 0


def test_with_usage_metering_on_a_missing_key_names_the_variable(
    sandbox: Sandbox, sqlite_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    _environment(monkeypatch, sandbox, sqlite_url, off="", unset=("METERING_API_KEY",))
    with pytest.raises(ConfigurationError) as error:
        check_environment()
    assert str(error.value) == (
        "Usage metering is not configured: set METERING_API_KEY, "
        f"or {SOURCES_OFF_ENV}=metering if the company meters no usage"
    )
    # Dagster refuses to start the run at all, naming the variable it could not read.
    with pytest.raises(dg.DagsterInvalidConfigError, match='variable "METERING_API_KEY"'):
        _daily_run(_busiest_day())
    assert sandbox.request_counts()["metering"] == 0


def test_without_cpq_a_daily_run_sends_no_cpq_query_and_posts(
    sandbox: Sandbox, sqlite_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # An org without the CPQ package refuses every SBQQ query (INVALID_TYPE): the run can only
    # succeed if it sends none.
    sandbox.salesforce.cpq_installed = False
    _environment(monkeypatch, sandbox, sqlite_url, off="cpq", unset=())
    check_environment()
    result = _daily_run(_busiest_day())
    assert result.success, _failures(result)
    for table in CPQ_TABLES:
        assert _rows(sqlite_url, f"SELECT COUNT(*) FROM {table}") == [(0,)]
    assert _rows(sqlite_url, "SELECT COUNT(*) FROM quarantine WHERE asset LIKE 'cpq_%'") == [(0,)]
    assert _posted_invoices(sqlite_url) > 0


def test_with_cpq_on_an_org_without_cpq_fails_on_the_cpq_object(
    sandbox: Sandbox, sqlite_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    sandbox.salesforce.cpq_installed = False
    _environment(monkeypatch, sandbox, sqlite_url, off="", unset=())
    result = _daily_run(_busiest_day())
    assert not result.success
    failures = _failures(result)
    assert any(f.startswith("cpq_quotes") for f in failures), failures
    assert any("SBQQ__Quote__c" in f for f in failures), failures
