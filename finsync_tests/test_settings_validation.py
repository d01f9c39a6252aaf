"""Every setting is checked when a command starts: a bad one is one line naming it, exit 2.

Each case runs the real ``finsync`` command in a subprocess with one setting wrong and
everything else right, and asserts what the user sees: exit 2, a single stderr line naming
the variable (or the file and line) and what is allowed, no traceback, and no work done.
"""

import shutil
from pathlib import Path

import pytest

from finsync_pipeline.master_data import DEFAULT_DIR
from finsync_pipeline.runner import REQUIRED_ENV
from finsync_tests.test_cli import _env, _finsync


def _live_env(**setting: str) -> dict[str, str]:
    """A live environment with fake credentials (only checked for presence before a run)."""
    names = [n for names in REQUIRED_ENV.values() for n in names]
    env = {"FINSYNC_MODE": "live", "SALESFORCE_CLIENT_SECRET": "x", **dict.fromkeys(names, "x")}
    return _env(**{**env, **setting})


def _refusal(home: Path, *args: str, env: dict[str, str]) -> str:
    result = _finsync(*args, "--home", str(home), env=env)
    assert result.returncode == 2, result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith("finsync: ")
    return line


@pytest.mark.parametrize(
    ("setting", "value", "says"),
    [
        ("FINSYNC_MODE", "production", "set it to sandbox or live"),
        ("FINSYNC_MAX_BAD_SHARE", "five", "a share, from 0 to 1"),
        ("FINSYNC_MAX_BAD_SHARE", "1.5", "a share, from 0 to 1"),
        ("FINSYNC_MIN_BAD_RECORDS", "0", "a whole number, from 1 (default 5)"),
        ("FINSYNC_MIN_BAD_RECORDS", "many", "a whole number, from 1 (default 5)"),
        ("FINSYNC_POSTING_BATCH_WINDOWS", '{"credit_memo": ', "is not JSON"),
        ("FINSYNC_POSTING_BATCH_WINDOWS", '{"credit_memos": "0 3 * * *"}', "unknown flow"),
        ("FINSYNC_POSTING_BATCH_WINDOWS", '{"credit_memo": "at three"}', "not a cron"),
        ("FINSYNC_HTTP_CONNECT_TIMEOUT_S", "soon", "a positive number"),
        ("FINSYNC_HTTP_READ_TIMEOUT_S", "-1", "a positive number"),
        ("FINSYNC_HTTP_DEADLINE_S", "0", "a positive number"),
        ("FINSYNC_HTTP_MAX_RESPONSE_BYTES", "1.5", "a positive integer"),
        ("FINSYNC_HTTP_MAX_PAGES", "lots", "a positive integer"),
        ("FINSYNC_POSTING_LEASE_S", "soon", "from 1 to 3600"),
        ("FINSYNC_NETSUITE_CONCURRENCY", "0", "from 1 to 140"),
    ],
)
def test_a_bad_setting_stops_run_with_one_line_naming_it(
    tmp_path: Path, setting: str, value: str, says: str
) -> None:
    home = tmp_path / "home"
    line = _refusal(home, "run", env=_live_env(**{setting: value}))
    assert setting in line
    assert says in line
    assert not (home / "warehouse.db").exists(), "a refused command must do no work"


def test_an_unknown_mode_is_refused_even_for_the_demo(tmp_path: Path) -> None:
    home = tmp_path / "home"
    line = _refusal(home, "demo", env=_env(FINSYNC_MODE="production"))
    assert "FINSYNC_MODE is 'production'" in line
    assert not (home / "sandbox").exists()


@pytest.mark.parametrize(
    ("file", "row", "says"),
    [
        ("currencies.csv", "EUR,two\n", "currencies.csv line 6: netsuite_currency_id 'two'"),
        ("currencies.csv", "CHF,5,extra\n", "currencies.csv line 6 has 3 fields"),
        ("products.csv", "prod_new,106,New,product\n", "products.csv line 6 has 4 fields"),
    ],
)
def test_a_bad_mapping_row_stops_run_with_the_file_and_line(
    tmp_path: Path, file: str, row: str, says: str
) -> None:
    mappings = tmp_path / "mappings"
    shutil.copytree(DEFAULT_DIR, mappings)
    path = mappings / file
    path.write_text(path.read_text() + row)
    assert len(path.read_text().splitlines()) == 6, "the planted row is line 6"
    line = _refusal(tmp_path / "home", "run", env=_live_env(FINSYNC_MAPPINGS_DIR=str(mappings)))
    assert says in line


@pytest.mark.parametrize("command", [["run"], ["exceptions", "retry", "--why", "x"]])
def test_from_after_to_is_one_line(tmp_path: Path, command: list[str]) -> None:
    home = tmp_path / "home"
    home.mkdir()
    args = [*command, "--from", "2026-10-05", "--to", "2026-10-01"]
    line = _refusal(home, *args, env=_live_env())
    assert "--from 2026-10-05 is after --to 2026-10-01" in line


@pytest.mark.parametrize(
    "command",
    [["exceptions", "list"], ["exceptions", "show", "in_1"], ["ledger", "verify"]],
)
def test_reading_a_home_that_does_not_exist_is_refused_and_creates_nothing(
    tmp_path: Path, command: list[str]
) -> None:
    home = tmp_path / "no-such-home"
    line = _refusal(home, *command, env=_env())
    assert str(home) in line
    assert "does not exist" in line
    assert not home.exists()


@pytest.mark.parametrize(
    ("flag", "value", "allowed"),
    [
        ("--queue", "finance-ops", "finance_ops, revops, tax"),
        ("--kind", "missing-po", "missing_po"),
    ],
)
def test_an_unknown_queue_or_kind_is_refused_with_the_allowed_values(
    tmp_path: Path, flag: str, value: str, allowed: str
) -> None:
    home = tmp_path / "home"
    home.mkdir()
    line = _refusal(home, "exceptions", "list", flag, value, env=_env())
    assert f"{flag} {value!r}" in line
    assert allowed in line


def test_a_bad_flag_value_is_one_line_naming_the_flag(tmp_path: Path) -> None:
    line = _refusal(tmp_path, "run", "--from", "yesterday", env=_env())
    assert "--from" in line
    assert "yesterday" in line


@pytest.mark.parametrize("variable", ["STRIPE_API_BASE", "NETSUITE_BASE_URL"])
def test_an_unreachable_system_is_one_line_naming_its_url_and_variable(
    tmp_path: Path, variable: str
) -> None:
    from finsync_tests.test_cli import _free_ports, _serve, _stop

    ports = _free_ports(6)
    closed = ports.pop()
    proc, served = _serve(tmp_path / "state", ports, ["--accounts", "8", "--months", "1"])
    try:
        env = _env(**{**served, variable: f"http://127.0.0.1:{closed}"})
        home = str(tmp_path / "home")
        result = _finsync("run", "--home", home, "--to", "2026-10-31", "--json", "--quiet", env=env)
    finally:
        _stop(proc)
    assert result.returncode == 2, result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    (line,) = result.stderr.strip().splitlines()
    assert f"cannot connect to http://127.0.0.1:{closed} (connection refused)" in line
    assert f"check {variable}" in line
