"""Runs that died without saying so: found, marked failed with the reason, their slots freed.

A SIGKILLed process (an OOM kill, a node loss) never reports its Dagster run finished: the run
stays STARTED in run storage and keeps the concurrency pool slots its steps held, so after a
few such deaths every new run waits for a slot forever. Two checks settle them:

- **Leases** (``posting``): a run holding posting-ledger rows in flight past their lease is
  dead whatever run storage says; the posting run that settles its rows marks it failed.
- **The runner's start-up check** (``reap_dead_runs``): ``finsync run`` executes its runs in
  its own process and tags each with that process (host, pid and the pid's start time, so a
  reused pid is not mistaken for the runner). A later ``finsync run`` on the same host marks
  every unfinished run whose process is gone failed and frees its slots before it starts.
  Runs launched by the Dagster daemon (``finsync deploy``) are left to Dagster: the code
  server that launched a run marks it failed when its worker process dies, and run monitoring
  frees the slots of ended runs (dagster-deploy.yaml).
"""

import os
import re
import socket
from pathlib import Path

import dagster as dg

HOST_TAG = "finsync/runner_host"
PID_TAG = "finsync/runner_pid"
PID_START_TAG = "finsync/runner_pid_start"
_UNFINISHED = [
    dg.DagsterRunStatus.QUEUED,
    dg.DagsterRunStatus.NOT_STARTED,
    dg.DagsterRunStatus.STARTING,
    dg.DagsterRunStatus.STARTED,
    dg.DagsterRunStatus.CANCELING,
]


def _process_start(pid: int) -> str | None:
    """The kernel's start time of ``pid`` (clock ticks since boot), or None when unknown."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name (field 2) may hold spaces and parentheses; fields follow the last ")".
    fields = stat[stat.rfind(")") + 2 :].split()
    return fields[19] if len(fields) > 19 else None


def runner_tags() -> dict[str, str]:
    """The tags naming this process as the executor of a run."""
    pid = os.getpid()
    return {
        HOST_TAG: socket.gethostname(),
        PID_TAG: str(pid),
        PID_START_TAG: _process_start(pid) or "",
    }


def _process_gone(pid: int, started: str) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False  # alive, another user's
    return bool(started) and _process_start(pid) not in (None, started)


def mark_run_dead(instance: dg.DagsterInstance, run_id: str, why: str) -> bool:
    """Mark an unfinished run failed with ``why`` and free the pool slots it held.

    Returns whether the run was marked (a finished or unknown run is left as it is).
    """
    run = instance.get_run_by_id(run_id)
    if run is None or run.is_finished:
        return False
    instance.report_run_failed(run, message=why)
    storage = instance.event_log_storage
    if storage.supports_global_concurrency_limits:
        storage.free_concurrency_slots_for_run(run_id)
    return True


def reap_dead_runs(instance: dg.DagsterInstance) -> list[str]:
    """Mark failed every unfinished run a ``finsync run`` process of this host executed and
    that process is gone; return their run ids."""
    host = socket.gethostname()
    reaped: list[str] = []
    records = instance.get_run_records(
        filters=dg.RunsFilter(statuses=_UNFINISHED, tags={HOST_TAG: host})
    )
    for record in records:
        tags = record.dagster_run.tags
        pid_text = tags.get(PID_TAG, "")
        if not pid_text.isdigit() or int(pid_text) == os.getpid():
            continue
        if not _process_gone(int(pid_text), tags.get(PID_START_TAG, "")):
            continue
        why = (
            f"the finsync run process that executed this run (pid {pid_text} on {host}) is "
            "gone: it was killed from outside before the run could finish"
        )
        if mark_run_dead(instance, record.dagster_run.run_id, why):
            reaped.append(record.dagster_run.run_id)
    return reaped


# The engine event the launched run worker writes first (dagster's own wording).
_WORKER_STARTED = re.compile(r"Started process for run \(pid: (\d+)\)")


def _started_at(pid: int) -> float | None:
    """When ``pid`` started, in seconds since the epoch, or None when unknown."""
    ticks = _process_start(pid)
    try:
        boot = next(
            float(line.split()[1])
            for line in Path("/proc/stat").read_text().splitlines()
            if line.startswith("btime ")
        )
    except (OSError, StopIteration):
        return None
    return None if ticks is None else boot + int(ticks) / os.sysconf("SC_CLK_TCK")


def _worker_pid(instance: dg.DagsterInstance, run_id: str) -> int | None:
    for event in instance.all_logs(run_id, of_type=dg.DagsterEventType.ENGINE_EVENT):
        found = _WORKER_STARTED.search(event.message or "")
        if found:
            return int(found.group(1))
    return None


def _worker_gone(pid: int, run_started: float | None) -> bool:
    """Whether the worker ``pid`` is gone: no such process, or one started after the run did
    (the pid was reused)."""
    if _process_gone(pid, ""):
        return True
    started = _started_at(pid)
    return started is not None and run_started is not None and started > run_started + 1


def reap_dead_workers(instance: dg.DagsterInstance) -> list[str]:
    """Mark failed every unfinished run the daemon launched on this machine whose run worker
    process is gone; return their run ids.

    ``finsync deploy`` calls it before it starts the daemon: after the whole deployment was
    killed (a node loss, an OOM kill of the daemon's process group), no code server is left to
    report its runs' deaths, Dagster's run monitoring cannot check a default-launched worker,
    and a dead run kept STARTED holds its ``finsync/erp`` tag slot, so every later posting run
    would wait in the queue forever.
    """
    reaped: list[str] = []
    for record in instance.get_run_records(filters=dg.RunsFilter(statuses=_UNFINISHED)):
        run = record.dagster_run
        if HOST_TAG in run.tags:
            continue  # a `finsync run` process's own run: reap_dead_runs
        pid = _worker_pid(instance, run.run_id)
        if pid is None or not _worker_gone(pid, record.start_time):
            continue
        why = (
            f"the run worker that executed this run (pid {pid}) is gone: the deployment was "
            "killed from outside before the run could finish"
        )
        if mark_run_dead(instance, run.run_id, why):
            reaped.append(run.run_id)
    return reaped
