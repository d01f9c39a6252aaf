"""A `finsync run` killed from outside, as a node loss or an OOM kill does it, strands nothing.

The whole process group of a real `finsync run` is SIGKILLed while NetSuite holds its requests,
so documents are in flight and the Dagster run stays STARTED forever: a SIGKILLed process never
reports itself dead. The next run must settle those documents by looking them up (their claims'
leases have expired), post everything else, mark the dead run failed with the reason, and leave
nothing in flight.
"""
# The kill lands on a posting run by construction: NetSuite holds every request until the
# test releases them, and the test waits for documents in flight before it kills.

import json
import os
import signal
import sqlite3
import subprocess
import time
import urllib.request
from pathlib import Path

import dagster as dg

from finsync_tests.conftest import TEST_END
from finsync_tests.test_cli import FINSYNC, _env, _finsync, _free_ports, _serve, _stop

WINDOW = ["--from", "2026-09-01", "--to", TEST_END.isoformat()]
LEASE_S = "3"


def _fault(port: int, body: dict[str, object]) -> None:
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/__sandbox/faults",
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        assert response.status == 200


def _ledger_states(warehouse: Path, erp: str = "netsuite") -> dict[str, int]:
    with sqlite3.connect(warehouse) as conn:
        return dict(
            conn.execute(
                "SELECT state, count(*) FROM posting_ledger WHERE erp = ? GROUP BY state", (erp,)
            )
        )


def _wait_in_flight(warehouse: Path, proc: subprocess.Popen[str], timeout_s: float) -> int:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        assert proc.poll() is None, "the run ended before anything was in flight"
        if warehouse.exists():
            try:
                in_flight = _ledger_states(warehouse).get("in_flight", 0)
            except sqlite3.OperationalError:  # the ledger does not exist yet, or is locked
                in_flight = 0
            if in_flight:
                return in_flight
        time.sleep(0.2)
    raise AssertionError("no document went in flight")


def test_a_run_killed_from_outside_with_documents_in_flight_strands_nothing(
    tmp_path: Path,
) -> None:
    state, ports = tmp_path / "state", _free_ports(5)
    home = tmp_path / "home"
    warehouse = home / "warehouse.db"
    netsuite_port = ports[2]
    sandbox, env = _serve(state, ports)
    try:
        run_env = _env(**env, FINSYNC_POSTING_LEASE_S=LEASE_S)
        _fault(netsuite_port, {"kind": "hold"})
        victim = subprocess.Popen(
            [FINSYNC, "run", "--home", str(home), *WINDOW, "--json"],
            env=run_env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            text=True,
            start_new_session=True,  # its own process group, killed whole
        )
        try:
            stranded = _wait_in_flight(warehouse, victim, timeout_s=300)
        finally:
            os.killpg(victim.pid, signal.SIGKILL)
            victim.wait(timeout=30)
        # The held requests now reach NetSuite with nobody left to hear the answer.
        _fault(netsuite_port, {"kind": "release"})
        assert stranded > 0

        rerun = _finsync("run", "--home", str(home), *WINDOW, "--json", env=run_env)
        assert rerun.returncode == 0, rerun.stderr[-3000:]
        summary = json.loads(rerun.stdout.strip().splitlines()[-1])
        listing = _finsync("exceptions", "list", "--home", str(home), env=run_env)
    finally:
        _stop(sandbox)

    assert _ledger_states(warehouse, "salesforce").get("in_flight", 0) == 0
    states = _ledger_states(warehouse)
    assert states.get("in_flight", 0) == 0, states
    assert states.get("pending", 0) == 0, states
    assert states["posted"] > stranded
    assert summary["drift"] == 0
    with sqlite3.connect(state / "sandbox.sqlite3") as conn:
        in_netsuite = conn.execute(
            "SELECT (SELECT count(*) FROM ns_customer) + (SELECT count(*) FROM ns_transaction)"
        ).fetchone()[0]
    assert in_netsuite == states["posted"]
    # The operator sees what the dead run left and who settled it.
    assert listing.returncode == 0, listing.stderr
    assert "settled by lookup after their run died" in listing.stdout
    with sqlite3.connect(warehouse) as conn:
        settled = conn.execute("SELECT COUNT(*) FROM v_posting_lease_settlements").fetchone()[0]
        held = conn.execute("SELECT SUM(held_past_lease) FROM v_posting_backlog").fetchone()[0]
    assert settled >= stranded
    assert not held

    # The killed run is no longer STARTED in Dagster: the next run marked it failed, saying
    # why, and freed the NetSuite pool slot it held (five such deaths would block every run).
    with dg.DagsterInstance.from_config(str(home / "dagster")) as instance:
        records = instance.get_run_records()
        started = [r.dagster_run.run_id for r in records if not r.dagster_run.is_finished]
        assert started == []
        failed = [r.dagster_run for r in records if r.dagster_run.status.value == "FAILURE"]
        assert failed, "the killed run was not marked failed"
        messages = [
            e.message
            for run in failed
            for e in instance.all_logs(run.run_id)
            if e.dagster_event is not None and e.dagster_event.is_run_failure
        ]
        assert any("killed from outside" in m for m in messages), messages
        slots = instance.event_log_storage.get_concurrency_info("netsuite_api")
        assert slots.claimed_slots == [], slots
