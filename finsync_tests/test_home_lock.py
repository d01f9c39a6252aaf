"""One writer per home: a second command that would write is told who holds it, in one line.

The holders are real processes: a second `finsync` racing the first, or a process holding
the lock through ``home_lock`` as every writing command does.
"""

import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from finsync_pipeline.sandbox.generator import CompanySpec, generate
from finsync_pipeline.sandbox.server import Sandbox
from finsync_tests.conftest import TEST_END
from finsync_tests.test_cli import FINSYNC, _env, _finsync
from finsync_tests.test_deploy import dagster_pg_url  # noqa: F401  (a fresh database)

TINY = ["--accounts", "8", "--months", "1", "--seed", "5", "--end", TEST_END.isoformat()]


def _hold(home: Path, env: dict[str, str]) -> subprocess.Popen[str]:
    """A process holding ``home``'s lock as `finsync run` would, until its stdin closes."""
    code = (
        "import os, sys; from pathlib import Path; "
        "from finsync_pipeline.home_lock import home_lock\n"
        f"with home_lock(Path({str(home)!r}), 'finsync run', "
        "os.environ.get('FINSYNC_WAREHOUSE_URL')):\n"
        "    print('held', flush=True); sys.stdin.read()\n"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", code],
        env=env,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "held"
    return proc


def _release(proc: subprocess.Popen[str]) -> None:
    assert proc.stdin is not None
    proc.stdin.close()
    assert proc.wait(timeout=30) == 0


def _one_line(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 2, result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    (line,) = result.stderr.strip().splitlines()
    return line


def test_a_writer_on_a_busy_home_names_the_holder_and_readers_go_on(tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    holder = _hold(home, _env())
    try:
        busy = _finsync("exceptions", "retry", "in_1", "--why", "x", "--post", "--home", str(home))
        line = _one_line(busy)
        assert f"home {home} is in use by pid {holder.pid} (finsync run, since" in line
        # Reading needs no lock, and finance works the queue beside a run or a deployment.
        listed = _finsync("exceptions", "list", "--home", str(home))
        assert listed.returncode == 0, listed.stderr
        resolved = _finsync("exceptions", "resolve", "in_1", "--why", "x", "--home", str(home))
        assert _one_line(resolved) == "finsync: no exception matches the selection"
    finally:
        _release(holder)
    # The lock goes with its holder.
    done = _finsync("exceptions", "retry", "in_1", "--why", "x", "--post", "--home", str(home))
    assert _one_line(done) == "finsync: no exception matches the selection"


def test_two_demos_racing_on_one_home_one_runs_the_other_names_it(tmp_path: Path) -> None:
    home = tmp_path / "home"
    procs = [
        subprocess.Popen(
            [FINSYNC, "demo", "--home", str(home), *TINY, "--json", "--quiet"],
            env=_env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    outcomes = [(p.pid, *p.communicate(timeout=600), p.returncode) for p in procs]
    codes = sorted(code for *_, code in outcomes)
    assert codes == [0, 2], [(code, err[-1500:]) for _, _, err, code in outcomes]
    (winner,) = [pid for pid, _, _, code in outcomes if code == 0]
    (loser_err,) = [err for _, _, err, code in outcomes if code == 2]
    assert "Traceback" not in loser_err
    (line,) = loser_err.strip().splitlines()
    assert f"is in use by pid {winner} (finsync demo" in line


def test_a_demo_refuses_a_home_of_another_company(tmp_path: Path) -> None:
    home = tmp_path / "home"
    spec = CompanySpec(accounts=8, months=1, seed=5, end=TEST_END)
    Sandbox(home / "sandbox").seed(generate(spec))
    line = _one_line(_finsync("demo", "--home", str(home), "--seed", "6", "--accounts", "8"))
    assert "holds another company than --seed 6 (it holds 5)" in line
    assert not (home / "warehouse.db").exists()


def test_a_demo_refuses_a_home_whose_warehouse_holds_another_companys_data(
    tmp_path: Path,
) -> None:
    home = tmp_path / "home"
    home.mkdir()
    # What a `finsync run` against other systems leaves: a warehouse, no sandbox of its own.
    with sqlite3.connect(home / "warehouse.db") as conn:
        conn.execute("CREATE TABLE salesforce_accounts (id TEXT)")
        conn.execute("INSERT INTO salesforce_accounts VALUES ('001A')")
    line = _one_line(_finsync("demo", "--home", str(home), *TINY))
    assert "holds the data of another company" in line
    assert not (home / "sandbox").exists()


@pytest.mark.postgres
def test_two_homes_on_one_postgresql_warehouse_do_not_write_at_once(
    tmp_path: Path,
    dagster_pg_url: str,  # noqa: F811  (the fixture imported above)
) -> None:
    pg_warehouse = dagster_pg_url
    env = _env(FINSYNC_WAREHOUSE_URL=pg_warehouse)
    first, second = tmp_path / "a", tmp_path / "b"
    migrated = _finsync("warehouse", "migrate", "--home", str(first), env=env)
    assert migrated.returncode == 0, migrated.stderr
    holder = _hold(first, env)
    try:
        busy = _finsync(
            "exceptions", "retry", "in_1", "--why", "x", "--post", "--home", str(second), env=env
        )
        line = _one_line(busy)
        database = pg_warehouse.rsplit("/", 1)[1]
        assert f"warehouse 127.0.0.1:5432/{database} is in use by finsync pid {holder.pid}" in line
    finally:
        _release(holder)
    second.mkdir(exist_ok=True)
    done = _finsync(
        "exceptions", "retry", "in_1", "--why", "x", "--post", "--home", str(second), env=env
    )
    assert _one_line(done) == "finsync: no exception matches the selection"


def test_output_to_a_closed_pipe_ends_quietly(tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    proc = subprocess.Popen(
        [FINSYNC, "exceptions", "list", "--home", str(home)],
        env=_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert proc.stdout is not None and proc.stderr is not None
    # The reader goes away before anything is written, as `| head -1` does after one line.
    proc.stdout.close()
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=120) in (0, 141)
    assert err == ""
    assert os.path.isdir(home)
