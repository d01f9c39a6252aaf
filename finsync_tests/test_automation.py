"""The nightly schedule and the late-changes sensor decide on the runs a Dagster instance holds:
a failed night is run again with the failed run named, and no catch-up starts while a daily run
might be carrying the very changes it would carry."""

import datetime as dt

import dagster as dg
import pytest

from finsync_pipeline.definitions import defs
from finsync_pipeline.defs.automation.definitions import (
    RETRY_OF_TAG,
    daily_sync_cron,
    daily_sync_from,
)
from finsync_pipeline.errors import ConfigurationError
from finsync_pipeline.resources.warehouse import WarehouseResource


@dg.op
def _step() -> None:
    pass


def _run(
    instance: dg.DagsterInstance,
    job: str,
    day: str,
    status: dg.DagsterRunStatus,
    tags: dict[str, str] | None = None,
) -> str:
    """A run record of ``job`` for partition ``day`` as the daemon would have left it (the
    schedule and the sensor read only the job name, the partition tag and the status)."""

    @dg.job(name=job)
    def recorded() -> None:
        _step()

    run = instance.create_run_for_job(
        recorded, tags={"dagster/partition": day, **(tags or {})}, status=status
    )
    return run.run_id


def _tick(instance: dg.DagsterInstance, day: dt.date) -> list[dg.RunRequest]:
    tick = dg.build_schedule_context(
        instance=instance,
        repository_def=defs().get_repository_def(),
        scheduled_execution_time=dt.datetime.combine(day, dt.time(2), tzinfo=dt.UTC),
    )
    result = defs().resolve_schedule_def("daily_sync_job_schedule").evaluate_tick(tick)
    return list(result.run_requests or [])


def test_a_failed_night_is_run_again_naming_the_run_it_retries(
    instance: dg.DagsterInstance,
) -> None:
    failed = _run(instance, "daily_sync_job", "2026-10-20", dg.DagsterRunStatus.FAILURE)
    _run(instance, "daily_sync_job", "2026-10-21", dg.DagsterRunStatus.SUCCESS)
    canceled = _run(instance, "daily_sync_job", "2026-10-22", dg.DagsterRunStatus.CANCELED)
    # Failed once, then succeeded: nothing left to finish for that day.
    _run(instance, "daily_sync_job", "2026-10-19", dg.DagsterRunStatus.FAILURE)
    _run(instance, "daily_sync_job", "2026-10-19", dg.DagsterRunStatus.SUCCESS)
    # Failed more than 7 days before yesterday: a backfill's job, not the nightly tick's.
    _run(instance, "daily_sync_job", "2026-10-10", dg.DagsterRunStatus.FAILURE)

    requests = _tick(instance, dt.date(2026, 10, 25))
    assert [(r.partition_key, r.tags.get(RETRY_OF_TAG)) for r in requests] == [
        ("2026-10-20", failed),
        ("2026-10-22", canceled),
        ("2026-10-24", None),
    ]
    # The run key names the failed run: the retry is asked for once, and once more only if
    # the retry itself fails.
    assert requests[0].run_key == f"2026-10-20:after:{failed}"


def test_no_catch_up_starts_while_a_daily_run_is_in_progress(
    instance: dg.DagsterInstance, sqlite_url: str
) -> None:
    _run(instance, "daily_sync_job", "2026-10-24", dg.DagsterRunStatus.STARTED)
    sensor = defs().resolve_sensor_def("late_changes_sensor")
    context = dg.build_sensor_context(
        instance=instance,
        definitions=defs(),
        resources={"warehouse": WarehouseResource(url=sqlite_url)},
    )
    result = sensor.evaluate_tick(context)
    assert not result.run_requests
    assert result.skip_message == "a daily run is in progress"


def test_a_deployment_runs_the_days_it_owns_that_never_ran(
    instance: dg.DagsterInstance, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Started after its first day, a deployment's first tick runs each day since then that no
    run covers yet, oldest first; days before FINSYNC_DAILY_SYNC_FROM stay a backfill's job."""
    _run(instance, "daily_sync_job", "2026-10-22", dg.DagsterRunStatus.SUCCESS)
    failed = _run(instance, "daily_sync_job", "2026-10-23", dg.DagsterRunStatus.FAILURE)
    monkeypatch.setenv("FINSYNC_DAILY_SYNC_FROM", "2026-10-21")
    requests = _tick(instance, dt.date(2026, 10, 26))
    assert [(r.partition_key, r.run_key) for r in requests] == [
        ("2026-10-21", "2026-10-21"),
        ("2026-10-23", f"2026-10-23:after:{failed}"),
        ("2026-10-24", "2026-10-24"),
        ("2026-10-25", "2026-10-25"),
    ]


def test_a_day_the_schedule_launched_is_not_launched_again_at_its_next_tick(
    instance: dg.DagsterInstance,
) -> None:
    """Under a cron more frequent than daily, yesterday runs once, not at every tick."""
    launched = {"dagster/schedule_name": "daily_sync_job_schedule", "dagster/run_key": "2026-10-25"}
    _run(instance, "daily_sync_job", "2026-10-25", dg.DagsterRunStatus.SUCCESS, launched)
    assert _tick(instance, dt.date(2026, 10, 26)) == []
    # A run of the day from elsewhere (a backfill, `finsync run`) is not the schedule's.
    assert [r.partition_key for r in _tick(instance, dt.date(2026, 10, 27))] == ["2026-10-26"]


def test_the_nightly_cron_is_configuration(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FINSYNC_DAILY_SYNC_CRON", "30 4 * * *")
    assert defs().resolve_schedule_def("daily_sync_job_schedule").cron_schedule == "30 4 * * *"
    monkeypatch.setenv("FINSYNC_DAILY_SYNC_CRON", "at 4")
    with pytest.raises(ConfigurationError, match="FINSYNC_DAILY_SYNC_CRON is not a cron"):
        daily_sync_cron()
    monkeypatch.setenv("FINSYNC_DAILY_SYNC_FROM", "soon")
    with pytest.raises(ConfigurationError, match="FINSYNC_DAILY_SYNC_FROM is not a date"):
        daily_sync_from()
