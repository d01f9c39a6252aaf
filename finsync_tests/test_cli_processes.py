"""The long-running commands as a user starts and stops them: busy ports, waiting for the
sandbox, SIGTERM.

Real processes on real ports: `finsync sandbox serve`, `finsync ui`, `finsync deploy`.
"""

import contextlib
import os
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from finsync_pipeline.processes import alive, descendants
from finsync_tests.test_cli import FINSYNC, _env, _finsync, _free_ports, _serve, _stop
from finsync_tests.test_deploy import dagster_pg_url  # noqa: F401  (a fresh database)
from finsync_tests.test_settings_validation import _live_env

TINY = ["--accounts", "8", "--months", "1", "--seed", "5", "--end", "2026-10-31"]


@pytest.fixture
def busy_port() -> Iterator[int]:
    """A port another process (this test) listens on."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        yield listener.getsockname()[1]


def _one_line(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 2, result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    (line,) = result.stderr.strip().splitlines()
    return line


def test_a_busy_sandbox_port_is_named_with_its_flag(tmp_path: Path, busy_port: int) -> None:
    ports = [busy_port, *_free_ports(4)]
    result = _finsync(
        "sandbox", "serve", "--state", str(tmp_path / "s"), "--ports", *map(str, ports), *TINY
    )
    line = _one_line(result)
    assert f"port {busy_port} on 127.0.0.1 (the stripe simulator) is in use" in line
    assert "--ports" in line


def test_a_busy_ui_port_is_named_with_its_flag(tmp_path: Path, busy_port: int) -> None:
    args = ["--port", str(busy_port), "--ports", *map(str, _free_ports(5))]
    line = _one_line(_finsync("ui", "--home", str(tmp_path / "home"), *args))
    assert f"port {busy_port} on 127.0.0.1 (the Dagster UI) is in use" in line
    assert "--port" in line


@pytest.mark.postgres
def test_a_busy_deploy_port_is_named_with_its_flag(tmp_path: Path, busy_port: int) -> None:
    env = _live_env(DAGSTER_PG_URL="postgresql+psycopg2://postgres@127.0.0.1:5432/test")
    result = _finsync("deploy", "--home", str(tmp_path / "home"), "--port", str(busy_port), env=env)
    line = _one_line(result)
    assert f"port {busy_port} on 127.0.0.1 (the Dagster webserver) is in use" in line


def test_sandbox_wait_returns_the_complete_environment_once_every_simulator_listens(
    tmp_path: Path,
) -> None:
    state, ready = tmp_path / "state", tmp_path / "sandbox.env"
    ports = _free_ports(5)
    args = ["--state", str(state), "--ports", *map(str, ports), "--ready-file", str(ready)]
    serve = subprocess.Popen(
        [FINSYNC, "sandbox", "serve", *args, *TINY],
        env=_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        # Started at once, before the state folder exists: wait must not take that for ready.
        waited = _finsync("sandbox", "wait", "--state", str(state), "--timeout", "300")
        assert waited.returncode == 0, waited.stderr
        block = waited.stdout
        assert block.endswith("# finsync sandbox ready\n")
        assert ready.read_text() == block
        for name in ("STRIPE_API_BASE", "NETSUITE_BASE_URL", "SALESFORCE_CLIENT_ID"):
            assert f"export {name}=" in block
        for port in ports:
            with socket.create_connection(("127.0.0.1", port), timeout=5):
                pass
    finally:
        serve.send_signal(signal.SIGTERM)
        serve.wait(timeout=60)
    assert not ready.exists(), "a stopped sandbox leaves no ready file behind"
    gone = _finsync("sandbox", "wait", "--state", str(state), "--timeout", "1")
    assert "no sandbox serving" in _one_line(gone)


def _running_in_group(pgid: int) -> list[int]:
    """The processes of group ``pgid`` still running (not exited)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                if os.getpgid(int(entry.name)) == pgid and alive(int(entry.name)):
                    found.append(int(entry.name))
    return found


def _sigterm_stops_the_whole_tree(
    command: list[str], port: int, env: dict[str, str], tmp_path: Path
) -> None:
    """Start ``command`` (serving Dagster's webserver on ``port``) as a process group leader,
    SIGTERM it once the webserver answers, and check that nothing it started survives."""
    log = (tmp_path / "command.log").open("w")
    ui = subprocess.Popen(
        [FINSYNC, *command],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 300
        while True:
            assert ui.poll() is None, (tmp_path / "command.log").read_text()[-2000:]
            try:
                if requests.get(f"http://127.0.0.1:{port}/server_info", timeout=5).ok:
                    break
            except requests.ConnectionError:
                pass
            assert time.monotonic() < deadline, "the Dagster UI never answered"
            time.sleep(1)
        tree = descendants(ui.pid)
        assert tree, "Dagster runs below the command"
        ui.send_signal(signal.SIGTERM)
        assert ui.wait(timeout=120) == 0
        survivors = [pid for pid in tree if alive(pid)]
        assert survivors == [], survivors
        # Nothing of the command's group runs on (an exited process its new parent has not
        # reaped yet is no longer running: it only waits to be reaped).
        deadline = time.monotonic() + 10
        while _running_in_group(ui.pid) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert _running_in_group(ui.pid) == []
    finally:
        if ui.poll() is None:
            os.killpg(ui.pid, signal.SIGKILL)
            ui.wait()
        log.close()


def test_sigterm_stops_finsync_ui_and_every_process_it_started(tmp_path: Path) -> None:
    port, *ports = _free_ports(6)
    args = ["--home", str(tmp_path / "home"), "--port", str(port), "--ports", *map(str, ports)]
    _sigterm_stops_the_whole_tree(["ui", *args], port, _env(), tmp_path)


@pytest.mark.postgres
def test_sigterm_stops_finsync_deploy_and_every_process_it_started(
    tmp_path: Path,
    dagster_pg_url: str,  # noqa: F811  (the fixture imported above)
) -> None:
    port, *ports = _free_ports(6)
    sandbox, served = _serve(tmp_path / "state", ports, TINY)
    try:
        env = _env(**served, DAGSTER_PG_URL=dagster_pg_url)
        args = ["--home", str(tmp_path / "home"), "--port", str(port)]
        _sigterm_stops_the_whole_tree(["deploy", *args], port, env, tmp_path)
    finally:
        _stop(sandbox)
