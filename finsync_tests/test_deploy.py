"""finsync as deployed: `finsync deploy` (the Dagster daemon and webserver over PostgreSQL)
posts a generated week from the daily schedule and the posting sensor, and a run worker the
daemon launched, SIGKILLed while it posts, strands nothing.

The daily schedule ticks every minute (``FINSYNC_DAILY_SYNC_CRON``) and owns the last seven
days (``FINSYNC_DAILY_SYNC_FROM``): its first tick asks for the week, one run a day, as a
deployment that starts after its first day does. Dagster 1.13 never catches up missed ticks of
a schedule without a partition set, and no test can move the daemon's clock, so the schedule's
own catch-up is how a week reaches the daemon; every run is still the daemon's to queue,
launch and monitor. The sandbox company ends yesterday, so that week is its last.

NetSuite holds every request from the start, so the first run to post has documents in flight
when its worker is killed: the kill lands on posting by construction.
"""

import datetime as dt
import os
import random
import re
import shutil
import signal
import sqlite3
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import dagster as dg
import pytest
import sqlalchemy as sa

from finsync_pipeline.defs.automation.definitions import (
    days_behind,
    days_read_back_before_money,
    days_with_po_set_later,
)
from finsync_pipeline.deploy import check_storage
from finsync_pipeline.errors import ConfigurationError
from finsync_pipeline.logic.reconcile import DRIFT_STATUSES
from finsync_tests.conftest import POSTGRES_URL
from finsync_tests.crash_storm import FAULTS, leftovers, netsuite_documents
from finsync_tests.test_cli import FINSYNC, _env, _free_ports, _serve, _stop
from finsync_tests.test_outside_kill import _fault, _ledger_states

DAYS = 7
LEASE_S = "3"
# The posting sensor ticks at most once a minute: quiet this long, the daemon has nothing left.
QUIET_S = 90.0
DEADLINE_S = 1500.0
WORKER_PID = re.compile(r"Started process for run \(pid: (\d+)\)")


@pytest.fixture
def dagster_pg_url() -> Iterator[str]:
    """A fresh PostgreSQL database for the deployment's Dagster storage, dropped afterwards."""
    name = f"finsync_deploy_{uuid.uuid4().hex[:10]}"
    admin = sa.create_engine(POSTGRES_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text(f"CREATE DATABASE {name}"))
    try:
        url = sa.make_url(POSTGRES_URL).set(database=name)
        yield url.render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.execute(sa.text(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
        admin.dispose()


def _runs(instance: dg.DagsterInstance) -> list[dg.DagsterRun]:
    return [r.dagster_run for r in instance.get_run_records()]


def _worker_pid(instance: dg.DagsterInstance, run_id: str) -> int | None:
    """The pid of the run worker process the launcher started for ``run_id``."""
    for event in instance.all_logs(run_id):
        found = WORKER_PID.search(event.message or "")
        if found:
            return int(found.group(1))
    return None


def _posting_worker(
    instance: dg.DagsterInstance, warehouse: Path, deploy: subprocess.Popen[bytes]
) -> tuple[str, int]:
    """The run holding documents in flight and its worker's pid, once there is one."""
    deadline = time.monotonic() + DEADLINE_S
    while time.monotonic() < deadline:
        assert deploy.poll() is None, "finsync deploy exited"
        holders: list[str] = []
        if warehouse.exists():
            try:
                with sqlite3.connect(warehouse) as conn:
                    holders = [
                        r[0]
                        for r in conn.execute(
                            "SELECT DISTINCT claimed_by FROM posting_ledger "
                            "WHERE state = 'in_flight' AND erp = 'netsuite'"
                        )
                    ]
            except sqlite3.OperationalError:  # no ledger yet, or locked
                holders = []
        for run_id in holders:
            pid = _worker_pid(instance, run_id)
            if pid is not None:
                return run_id, pid
        time.sleep(0.5)
    raise AssertionError("no daemon-launched run went in flight")


def _wait_quiet(
    instance: dg.DagsterInstance, warehouse: Path, deploy: subprocess.Popen[bytes], days: list[str]
) -> None:
    """Until every day has a successful daily run and nothing has run or been due for a while."""
    deadline = time.monotonic() + DEADLINE_S
    quiet_since: float | None = None
    while time.monotonic() < deadline:
        assert deploy.poll() is None, "finsync deploy exited"
        runs = _runs(instance)
        done = {
            r.tags.get("dagster/partition")
            for r in runs
            if r.job_name == "daily_sync_job" and r.status == dg.DagsterRunStatus.SUCCESS
        }
        busy = any(not r.is_finished for r in runs)
        states = _ledger_states(warehouse) if warehouse.exists() else {}
        drained = not states.get("in_flight") and not states.get("pending")
        settled = drained and not _sensors_owe(warehouse)
        if set(days) <= done and not busy and settled:
            quiet_since = quiet_since or time.monotonic()
            if time.monotonic() - quiet_since >= QUIET_S:
                return
        else:
            quiet_since = None
        time.sleep(2)
    raise AssertionError(f"the deployment never finished the week: {_summary(instance)}")


def _sensors_owe(warehouse: Path) -> bool:
    """Whether the late-changes or posting sensor still has a day to run (they tick every few
    minutes, so a quiet spell alone does not say they are done)."""
    if not warehouse.exists():
        return True
    engine = sa.create_engine(f"sqlite:///{warehouse}")
    try:
        with engine.connect() as conn:
            return bool(
                days_behind(conn, 1)
                or days_with_po_set_later(conn, 1)
                or days_read_back_before_money(conn, 1)
            )
    except sa.exc.OperationalError:  # no tables yet, or busy
        return True
    finally:
        engine.dispose()


def _summary(instance: dg.DagsterInstance) -> list[tuple[str, str, str | None]]:
    return [(r.job_name, r.status.value, r.tags.get("dagster/partition")) for r in _runs(instance)]


def _drift(warehouse: Path) -> int:
    marks = ",".join("?" * len(DRIFT_STATUSES))
    with sqlite3.connect(warehouse) as conn:
        return sum(
            conn.execute(
                f"SELECT COUNT(*) FROM {table} WHERE status IN ({marks})",
                sorted(DRIFT_STATUSES),
            ).fetchone()[0]
            for table in ("invoice_reconciliation", "payment_reconciliation")
        )


def _wait_deployed(home: Path, deploy: subprocess.Popen[bytes]) -> None:
    """Until `finsync deploy` has written the deployment's instance."""
    deadline = time.monotonic() + 120
    while not (home / "dagster" / "deployed").is_file():
        assert deploy.poll() is None, "finsync deploy exited"
        assert time.monotonic() < deadline, "finsync deploy never wrote its instance"
        time.sleep(0.2)


def _start(home: Path, port: int, env: dict[str, str], log: IO[bytes]) -> subprocess.Popen[bytes]:
    """`finsync deploy` in a process group of its own, once it has written its instance."""
    deploy = subprocess.Popen(
        [FINSYNC, "deploy", "--home", str(home), "--port", str(port)],
        env=env,
        stdout=log,
        stderr=log,
        start_new_session=True,
    )
    _wait_deployed(home, deploy)
    return deploy


def _stop_deploy(deploy: subprocess.Popen[bytes]) -> None:
    deploy.send_signal(signal.SIGTERM)
    deploy.wait(timeout=120)


def _aftermath(
    instance: dg.DagsterInstance, killed_run: str
) -> tuple[dg.DagsterRun | None, list[str], Any]:
    """The killed run, its events' messages, and who holds NetSuite's pool slots."""
    messages = [e.message for e in instance.all_logs(killed_run) if e.dagster_event is not None]
    slots = instance.event_log_storage.get_concurrency_info("netsuite_api")
    return instance.get_run_by_id(killed_run), messages, slots


def _in_netsuite(state: Path) -> int:
    with sqlite3.connect(state / "sandbox.sqlite3") as conn:
        return int(
            conn.execute(
                "SELECT (SELECT count(*) FROM ns_customer) + (SELECT count(*) FROM ns_transaction)"
            ).fetchone()[0]
        )


def _deploy_env(env: dict[str, str], pg_url: str, first: dt.date) -> dict[str, str]:
    """The sandbox's environment, the storage, a schedule ticking every minute from ``first``."""
    return _env(
        **env,
        DAGSTER_PG_URL=pg_url,
        FINSYNC_DAILY_SYNC_CRON="* * * * *",
        FINSYNC_DAILY_SYNC_FROM=first.isoformat(),
        FINSYNC_POSTING_LEASE_S=LEASE_S,
    )


def _company(yesterday: dt.date) -> list[str]:
    return ["--accounts", "40", "--months", "2", "--seed", "11", "--end", yesterday.isoformat()]


@pytest.mark.slow
@pytest.mark.postgres
@pytest.mark.e2e
def test_the_daemon_posts_a_week_and_a_killed_run_worker_strands_nothing(
    tmp_path: Path, dagster_pg_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    yesterday = dt.datetime.now(dt.UTC).date() - dt.timedelta(days=1)
    first = yesterday - dt.timedelta(days=DAYS - 1)
    days = [(first + dt.timedelta(days=n)).isoformat() for n in range(DAYS)]
    state, ports = tmp_path / "state", _free_ports(6)
    home = tmp_path / "home"
    warehouse = home / "warehouse.db"
    sandbox, env = _serve(state, ports[:5], _company(yesterday))
    log = (tmp_path / "deploy.log").open("wb")
    deploy_env = _deploy_env(env, dagster_pg_url, first)
    try:
        _fault(ports[2], {"kind": "hold"})
        deploy = _start(home, ports[5], deploy_env, log)
        try:
            # The test reads the deployment's run storage through the same instance file.
            monkeypatch.setenv("DAGSTER_PG_URL", dagster_pg_url)
            with dg.DagsterInstance.from_config(str(home / "dagster")) as instance:
                killed_run, worker = _posting_worker(instance, warehouse, deploy)
                assert worker not in (deploy.pid, os.getpid())
                # The run worker is one process (in-process executor): killed whole, as an
                # OOM kill takes it; the daemon and its code server live on.
                os.kill(worker, signal.SIGKILL)
                _fault(ports[2], {"kind": "release"})
                _wait_quiet(instance, warehouse, deploy, days)
                runs = _runs(instance)
                worker_pids = {r.run_id: _worker_pid(instance, r.run_id) for r in runs}
                killed, messages, slots = _aftermath(instance, killed_run)
        finally:
            _stop_deploy(deploy)
    finally:
        log.close()
        _stop(sandbox)

    # Every run was the daemon's: launched from the schedule or a sensor, in a run worker
    # process of its own, none by a `finsync run` process.
    assert runs
    for run in runs:
        origin = run.tags.get("dagster/schedule_name") or run.tags.get("dagster/sensor_name")
        assert origin, (run.run_id, run.tags)
        assert "finsync/runner_pid" not in run.tags
    assert all(worker_pids.values()), worker_pids
    assert len(set(worker_pids.values())) == len(runs)
    assert {r.tags.get("dagster/partition") for r in runs if r.job_name == "daily_sync_job"} >= set(
        days
    )
    # The killed run ended failed, saying its process died; it holds no NetSuite slot.
    assert killed is not None and killed.status == dg.DagsterRunStatus.FAILURE
    assert any("signal 9" in m or "SIGKILL" in m for m in messages), messages[-5:]
    assert slots.claimed_slots == [], slots
    # Its day ran again from the schedule, and the documents it left in flight were settled.
    killed_day = killed.tags.get("dagster/partition")
    assert any(
        r.tags.get("finsync/retry_of") == killed_run and r.status == dg.DagsterRunStatus.SUCCESS
        for r in runs
    ), (killed_day, [(r.job_name, r.status, r.tags) for r in runs])
    states = _ledger_states(warehouse)
    assert states.get("in_flight", 0) == 0, states
    assert states.get("pending", 0) == 0, states
    assert _in_netsuite(state) == states["posted"] > 0
    assert _drift(warehouse) == 0


@pytest.mark.slow
@pytest.mark.postgres
@pytest.mark.e2e
def test_a_deployment_killed_whole_while_posting_strands_nothing_once_started_again(
    tmp_path: Path, dagster_pg_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A node loss: the whole process group of `finsync deploy` (daemon, code server, run
    worker, webserver) SIGKILLed while a run posts. Nothing is left to report the run dead, so
    the next `finsync deploy` marks it failed before the daemon starts, and the deployment
    finishes the days."""
    yesterday = dt.datetime.now(dt.UTC).date() - dt.timedelta(days=1)
    days = [(yesterday - dt.timedelta(days=1)).isoformat(), yesterday.isoformat()]
    state, ports = tmp_path / "state", _free_ports(6)
    home = tmp_path / "home"
    warehouse = home / "warehouse.db"
    sandbox, env = _serve(state, ports[:5], _company(yesterday))
    log = (tmp_path / "deploy.log").open("wb")
    deploy_env = _deploy_env(env, dagster_pg_url, dt.date.fromisoformat(days[0]))
    monkeypatch.setenv("DAGSTER_PG_URL", dagster_pg_url)
    try:
        _fault(ports[2], {"kind": "hold"})
        deploy = _start(home, ports[5], deploy_env, log)
        with dg.DagsterInstance.from_config(str(home / "dagster")) as instance:
            try:
                killed_run, worker = _posting_worker(instance, warehouse, deploy)
            finally:
                os.killpg(deploy.pid, signal.SIGKILL)
                deploy.wait(timeout=30)
            _fault(ports[2], {"kind": "release"})
            deploy = _start(home, ports[5], deploy_env, log)
            try:
                _wait_quiet(instance, warehouse, deploy, days)
                killed, messages, slots = _aftermath(instance, killed_run)
            finally:
                _stop_deploy(deploy)
    finally:
        log.close()
        _stop(sandbox)

    assert killed is not None and killed.status == dg.DagsterRunStatus.FAILURE
    assert any(f"run worker that executed this run (pid {worker}) is gone" in m for m in messages)
    assert slots.claimed_slots == [], slots
    states = _ledger_states(warehouse)
    assert states.get("in_flight", 0) == 0, states
    assert states.get("pending", 0) == 0, states
    assert _in_netsuite(state) == states["posted"] > 0
    assert _drift(warehouse) == 0


STORM_DAYS = 4
STORM_KILLS = 6
STORM_SEED = 23


def _live_workers(instance: dg.DagsterInstance) -> list[tuple[str, int]]:
    """The runs started and not finished, with their run workers' pids."""
    found = []
    for record in instance.get_run_records(
        filters=dg.RunsFilter(statuses=[dg.DagsterRunStatus.STARTED])
    ):
        pid = _worker_pid(instance, record.dagster_run.run_id)
        if pid is not None:
            found.append((record.dagster_run.run_id, pid))
    return found


def _in_flight_holders(warehouse: Path) -> set[str]:
    try:
        with sqlite3.connect(warehouse, timeout=1) as conn:
            return {
                r[0]
                for r in conn.execute(
                    "SELECT DISTINCT claimed_by FROM posting_ledger WHERE state = 'in_flight'"
                )
            }
    except sqlite3.Error:  # no ledger yet, or busy
        return set()


def _kill_a_worker(
    rng: random.Random,
    instance: dg.DagsterInstance,
    warehouse: Path,
    in_flight: bool,
    wait_s: float = 60.0,
) -> tuple[str, bool] | None:
    """SIGKILL the run worker of a live run after a seeded pause (the worker holding documents
    in flight when ``in_flight``, if one comes within ``wait_s``); None when no run is live."""
    time.sleep(rng.uniform(0.5, 15.0))
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        live = _live_workers(instance)
        holders = _in_flight_holders(warehouse)
        posting = [(run_id, pid) for run_id, pid in live if run_id in holders]
        if in_flight and posting:
            run_id, pid = rng.choice(posting)
        elif live and not in_flight:
            run_id, pid = rng.choice(live)
        else:
            time.sleep(0.2)
            continue
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:  # it finished in between
            continue
        return run_id, run_id in holders
    if in_flight:
        return _kill_a_worker(rng, instance, warehouse, in_flight=False)
    return None


@pytest.mark.slow
@pytest.mark.postgres
@pytest.mark.e2e
def test_run_workers_killed_at_seeded_moments_under_faults_leave_netsuite_as_an_uncut_run_does(
    tmp_path: Path, dagster_pg_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The crash storm for the deployment: run workers the daemon launched are SIGKILLed at
    seeded moments, half of them while they hold documents in flight, each under a NetSuite
    fault drawn at random. Once the daemon has settled, NetSuite holds exactly what an
    uninterrupted `finsync run` of the same days leaves in a sandbox of the same company."""
    rng = random.Random(STORM_SEED)
    yesterday = dt.datetime.now(dt.UTC).date() - dt.timedelta(days=1)
    first = yesterday - dt.timedelta(days=STORM_DAYS - 1)
    days = [(first + dt.timedelta(days=n)).isoformat() for n in range(STORM_DAYS)]
    ports = _free_ports(11)
    control_state = tmp_path / "control-state"
    control, control_env = _serve(control_state, ports[6:], _company(yesterday))
    try:
        window = ["--from", days[0], "--to", days[-1]]
        uncut = subprocess.run(
            [FINSYNC, "run", "--home", str(tmp_path / "control-home"), *window],
            env=_env(**control_env),
            capture_output=True,
            text=True,
            timeout=1500,
            check=False,
        )
        assert uncut.returncode == 0, uncut.stderr[-3000:]
    finally:
        _stop(control)
    expected = netsuite_documents(control_state)

    state, home = tmp_path / "state", tmp_path / "home"
    warehouse = home / "warehouse.db"
    sandbox, env = _serve(state, ports[:5], _company(yesterday))
    log = (tmp_path / "deploy.log").open("wb")
    kills: list[tuple[str | None, bool]] = []
    try:
        deploy = _start(home, ports[5], _deploy_env(env, dagster_pg_url, first), log)
        try:
            monkeypatch.setenv("DAGSTER_PG_URL", dagster_pg_url)
            with dg.DagsterInstance.from_config(str(home / "dagster")) as instance:
                for n in range(STORM_KILLS):
                    fault = rng.choice(FAULTS)
                    _fault(ports[2], {"clear": True})
                    if fault is not None:
                        _fault(ports[2], fault)
                    # The schedule's first tick comes within its minute, once the daemon is up.
                    wait_s = 600.0 if n == 0 else 60.0
                    killed = _kill_a_worker(
                        rng, instance, warehouse, rng.random() < 0.5, wait_s=wait_s
                    )
                    if killed is None:
                        break
                    kills.append((fault and str(fault["kind"]), killed[1]))
                _fault(ports[2], {"clear": True})
                _wait_quiet(instance, warehouse, deploy, days)
        finally:
            _stop_deploy(deploy)
    finally:
        log.close()
        _stop(sandbox)

    assert len(kills) >= STORM_KILLS // 2, kills
    assert any(while_in_flight for _fault_kind, while_in_flight in kills), kills
    held = netsuite_documents(state)
    found = {
        "missing in NetSuite": sorted((expected - held).keys(), key=str),
        "extra in NetSuite": sorted((held - expected).keys(), key=str),
        "left over": leftovers(home),
        "reconciliation drift": _drift(warehouse),
    }
    if any(found.values()):
        kept = Path(tempfile.mkdtemp(prefix="finsync-deploy-storm-"))
        for name in ("home", "state", "control-home", "control-state", "deploy.log"):
            source = tmp_path / name
            if source.is_dir():
                shutil.copytree(source, kept / name)
            elif source.exists():
                shutil.copy(source, kept / name)
        raise AssertionError(f"{found}; kills {kills}; homes kept in {kept}")


@pytest.mark.parametrize(
    ("url", "says"),
    [
        ("", "Dagster storage is not configured: set DAGSTER_PG_URL"),
        ("sqlite:///dagster.db", "names sqlite, not PostgreSQL"),
        (
            "postgresql://dagster:s3cret@127.0.0.1:5432/dagster",
            "uses the driver postgresql; set it with the installed one, "
            "postgresql+psycopg2://dagster:***@127.0.0.1:5432/dagster",
        ),
        (
            "postgresql+psycopg2://dagster:s3cret@127.0.0.1:1/dagster",
            "cannot connect to PostgreSQL 127.0.0.1:1/dagster",
        ),
    ],
    ids=["unset", "not-postgres", "default-driver", "unreachable"],
)
def test_deploy_names_what_is_wrong_with_its_storage_and_never_the_password(
    url: str, says: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DAGSTER_PG_URL", url)
    with pytest.raises(ConfigurationError) as raised:
        check_storage()
    assert says in str(raised.value)
    assert "s3cret" not in str(raised.value)


@pytest.mark.postgres
def test_deploy_accepts_the_local_postgresql(
    dagster_pg_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DAGSTER_PG_URL", dagster_pg_url)
    check_storage()
