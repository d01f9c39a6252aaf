"""Runs the daemon launched whose run worker died with the deployment are found and failed."""

import os
import subprocess
import sys

import dagster as dg

from finsync_pipeline.run_health import HOST_TAG, reap_dead_workers
from finsync_tests.test_automation import _step


@dg.job
def _posting() -> None:
    _step()


def _dead_pid() -> int:
    """The pid of a process that has exited (and been reaped)."""
    proc = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        check=True,
        capture_output=True,
        text=True,
    )
    return int(proc.stdout)


def _started_run(instance: dg.DagsterInstance, worker: int, tags: dict[str, str]) -> str:
    """A STARTED run whose run worker ``worker`` wrote Dagster's start event."""
    run = instance.create_run_for_job(_posting, tags=tags, status=dg.DagsterRunStatus.NOT_STARTED)
    instance.handle_run_event(
        run.run_id,
        dg.DagsterEvent(
            event_type_value=dg.DagsterEventType.RUN_START.value, job_name=run.job_name
        ),
    )
    instance.report_engine_event(f"Started process for run (pid: {worker}).", run)
    return run.run_id


def test_a_run_whose_worker_is_gone_is_failed_saying_so_and_live_ones_are_left(
    instance: dg.DagsterInstance,
) -> None:
    dead = _started_run(instance, _dead_pid(), {})
    alive = _started_run(instance, os.getpid(), {})
    # A `finsync run` process's own run is reap_dead_runs' to judge, by its tags.
    runner = _started_run(instance, _dead_pid(), {HOST_TAG: "elsewhere"})

    assert reap_dead_workers(instance) == [dead]
    statuses = {r: instance.get_run_by_id(r).status for r in (dead, alive, runner)}  # type: ignore[union-attr]
    assert statuses == {
        dead: dg.DagsterRunStatus.FAILURE,
        alive: dg.DagsterRunStatus.STARTED,
        runner: dg.DagsterRunStatus.STARTED,
    }
    failure = [
        e.message
        for e in instance.all_logs(dead)
        if e.dagster_event is not None and e.dagster_event.is_run_failure
    ]
    assert any("is gone: the deployment was killed from outside" in m for m in failure), failure
