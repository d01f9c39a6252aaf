"""A storm of kills from outside: `finsync run` SIGKILLed, process group and all, again and again.

Each round arms a NetSuite fault at random (commit-then-timeout, 429s, 503s, a maintenance
window, latency, or none), starts a real `finsync run` of the next day of the storm's window in
its own process group, as the daily schedule runs one day at a time (so every round has
documents of its own to post), and kills the whole group at a seeded random moment, skewed
toward posting: half the kills wait until documents are in flight. After the storm one uncut
run of the whole window must leave NetSuite holding exactly the documents of an uninterrupted
control run of the same company: none missing, none twice, every payment, credit and refund
applied once, nothing in flight or pending, no Dagster run left unfinished, no pool slot held,
and the ledger's journal verified.

`make crash-storm` runs it with hundreds of kills and prints its figures; the test suite runs a
few (finsync_tests/test_crash_storm.py).

    python -m finsync_tests.crash_storm --kills 200 --seed 7
"""

import argparse
import datetime as dt
import json
import os
import random
import shlex
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from finsync_tests.test_cli import FINSYNC, _free_ports

END = dt.date(2026, 10, 31)
ACCOUNTS = "40"
SLOW_POSTS = {"kind": "latency", "seconds": 0.3}
LEASE_S = "2"
# NetSuite faults a round may arm (one at random, or none).
FAULTS: list[dict[str, Any] | None] = [
    None,
    {"kind": "commit_then_timeout", "count": 2, "stall_s": 1.0},
    {"kind": "status", "status": 429, "count": 3, "retry_after_s": 1},
    {"kind": "status", "status": 503, "count": 2},
    {"kind": "maintenance", "requests": 4, "retry_after_s": 1},
    {"kind": "latency", "seconds": 0.2},
]


@dataclass
class StormReport:
    """What a storm did and what it left."""

    kills: int = 0
    kills_while_in_flight: int = 0
    faults: Counter[str] = field(default_factory=Counter)
    storm_s: float = 0.0
    final_run_s: float = 0.0
    documents: int = 0
    mismatches: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {
            "kills": self.kills,
            "kills_while_in_flight": self.kills_while_in_flight,
            "faults": dict(self.faults),
            "storm_s": round(self.storm_s, 1),
            "final_run_s": round(self.final_run_s, 1),
            "netsuite_documents": self.documents,
            "mismatches": self.mismatches,
        }


def _env(**extra: str) -> dict[str, str]:
    prefixes = ("STRIPE_", "SALESFORCE_", "NETSUITE_", "FINSYNC_", "DAGSTER_", "METERING_")
    env = {k: v for k, v in os.environ.items() if not k.startswith((*prefixes, "AVALARA_"))}
    return {**env, **extra}


def storm_days(kills: int) -> list[dt.date]:
    """The days a storm of ``kills`` rounds runs, one a round, ending at ``END``."""
    return [END - dt.timedelta(days=n) for n in reversed(range(max(kills, 1)))]


def _company(days: list[dt.date]) -> list[str]:
    # A month of history before the first day, so its payments and credits have invoices.
    months = (END.year - days[0].year) * 12 + END.month - days[0].month + 2
    return ["--accounts", ACCOUNTS, "--months", str(months), "--seed", "5", "--end", str(END)]


def _window(days: list[dt.date]) -> list[str]:
    return ["--from", str(days[0]), "--to", str(days[-1])]


def serve(
    state: Path, days: list[dt.date]
) -> tuple[subprocess.Popen[str], dict[str, str], list[int]]:
    """`finsync sandbox serve` of the storm's company on free ports; its process and the
    environment it prints."""
    ports = _free_ports(5)
    command = [FINSYNC, "sandbox", "serve", "--state", str(state), "--ports", *map(str, ports)]
    proc = subprocess.Popen(
        [*command, *_company(days)],
        env=_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    env: dict[str, str] = {}
    assert proc.stdout is not None
    for line in proc.stdout:
        if line.startswith("export "):
            key, value = line.removeprefix("export ").strip().split("=", 1)
            env[key] = shlex.split(value)[0]
        if line.startswith("# finsync sandbox ready"):
            break
    return proc, env, ports


def stop(proc: subprocess.Popen[str]) -> None:
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=30)


def _admin(port: int, body: dict[str, Any]) -> None:
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/__sandbox/faults",
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=10):
        pass


def _in_flight(warehouse: Path, since: str) -> int:
    """Rows claimed since ``since`` (the round's start) and in flight: the round's own, not
    those a killed round before it left for the lease to settle."""
    if not warehouse.exists():
        return 0
    try:
        with sqlite3.connect(warehouse, timeout=1) as conn:
            row = conn.execute(
                "SELECT COUNT(*) FROM posting_ledger WHERE state = 'in_flight' AND claimed_at >= ?",
                (since,),
            ).fetchone()
    except sqlite3.Error:  # not created yet, or busy
        return 0
    return int(row[0])


def run(home: Path, env: dict[str, str], window: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [FINSYNC, "run", "--home", str(home), *window, "--json"],
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )


def netsuite_documents(state: Path) -> Counter[tuple[Any, ...]]:
    """Every document and application NetSuite holds, by external id (internal ids differ
    between two sandboxes), as a multiset: a duplicate counts twice."""
    held: Counter[tuple[Any, ...]] = Counter()
    with sqlite3.connect(state / "sandbox.sqlite3") as conn:
        for (external_id,) in conn.execute("SELECT externalid FROM ns_customer"):
            held[("customer", external_id)] += 1
        for row in conn.execute(
            "SELECT type, externalid, foreigntotal, foreignamountremaining FROM ns_transaction"
        ):
            held[("transaction", *row)] += 1
        for row in conn.execute(
            "SELECT p.externalid, i.externalid, a.amount FROM ns_application a "
            "JOIN ns_transaction p ON p.id = a.payment JOIN ns_transaction i ON i.id = a.invoice"
        ):
            held[("application", *row)] += 1
        for row in conn.execute(
            "SELECT p.externalid, c.externalid, a.amount FROM ns_credit_application a "
            "JOIN ns_transaction p ON p.id = a.payment JOIN ns_transaction c ON c.id = a.credit"
        ):
            held[("credit_application", *row)] += 1
    return held


def leftovers(home: Path) -> list[str]:
    """What a finished storm must not leave: rows in flight or pending, a broken journal,
    unfinished runs, held pool slots."""
    import dagster as dg
    import sqlalchemy as sa

    from finsync_pipeline import ledger
    from finsync_pipeline.resources.warehouse import create_engine

    problems: list[str] = []
    engine = create_engine(f"sqlite:///{home / 'warehouse.db'}")
    with engine.connect() as conn:
        for state, count in conn.execute(
            sa.text(
                "SELECT state, COUNT(*) FROM posting_ledger WHERE state IN "
                "('in_flight', 'pending') GROUP BY state"
            )
        ):
            problems.append(f"{count} ledger row(s) left {state}")
        broken = ledger.verify_journal(conn)
        if broken is not None:
            problems.append(f"the journal breaks at seq {broken}")
    engine.dispose()
    with dg.DagsterInstance.from_config(str(home / "dagster")) as instance:
        unfinished = [
            r.dagster_run.run_id
            for r in instance.get_run_records()
            if not r.dagster_run.is_finished
        ]
        if unfinished:
            problems.append(f"{len(unfinished)} Dagster run(s) left unfinished")
        storage = instance.event_log_storage
        for pool in storage.get_concurrency_keys():
            claimed = storage.get_concurrency_info(pool).claimed_slots
            if claimed:
                problems.append(f"{len(claimed)} slot(s) of pool {pool} still held")
    return problems


def storm(kills: int, seed: int, workdir: Path, log: Any = None) -> StormReport:
    """Kill `finsync run` ``kills`` times, run it once uncut, and compare with a control.

    Round n runs the n-th day of the storm's window as the daily schedule does, one day at a
    time, so every round has documents of its own to post and can be killed posting them
    (and settles what the rounds before it left in flight). The uncut run and the control run
    the whole window.
    """
    rng = random.Random(seed)
    report = StormReport()
    say = log or (lambda _message: None)
    days = storm_days(kills)
    window = _window(days)
    control_proc, control_env, _ = serve(workdir / "control-state", days)
    try:
        result = run(workdir / "control-home", _env(**control_env), window)
        assert result.returncode == 0, result.stderr[-3000:]
    finally:
        stop(control_proc)
    expected = netsuite_documents(workdir / "control-state")

    home, state = workdir / "home", workdir / "state"
    warehouse = home / "warehouse.db"
    proc, env, ports = serve(state, days)
    run_env = _env(**env, FINSYNC_POSTING_LEASE_S=LEASE_S)
    started = time.monotonic()
    span_s = 30.0
    try:
        for n, day in enumerate(days):
            fault = rng.choice(FAULTS)
            _admin(ports[2], {"clear": True})
            if fault is not None:
                _admin(ports[2], fault)
            report.faults[str(fault["kind"] if fault else "none")] += 1
            wait_for_posting = rng.random() < 0.5
            if wait_for_posting and (fault is None or fault["kind"] != "latency"):
                # A day's documents are few: slowed down, they stay in flight long enough for
                # the kill to land among them.
                _admin(ports[2], SLOW_POSTS)
            round_started = time.monotonic()
            since = dt.datetime.now(dt.UTC).isoformat(timespec="microseconds")
            victim = subprocess.Popen(
                [FINSYNC, "run", "--home", str(home), *_window([day]), "--json"],
                env=run_env,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                start_new_session=True,
            )
            # Kills fall within the span of a day's uncut run, learnt from the rounds so far;
            # a kill waiting for posting waits for it as long as the run lasts.
            deadline = time.monotonic() + (900.0 if wait_for_posting else rng.uniform(0.5, span_s))
            while victim.poll() is None and time.monotonic() < deadline:
                if wait_for_posting and _in_flight(warehouse, since):
                    time.sleep(rng.uniform(0.0, 0.5))
                    break
                time.sleep(0.02)
            in_flight = _in_flight(warehouse, since) > 0
            if victim.poll() is None:
                os.killpg(victim.pid, signal.SIGKILL)
                report.kills += 1
                report.kills_while_in_flight += in_flight
            else:
                span_s = max(2.0, 0.9 * (time.monotonic() - round_started))
            victim.wait(timeout=60)
            say(
                f"round {n + 1}/{len(days)} ({day}): fault {fault and fault['kind']}, "
                f"in flight {in_flight}"
            )
        _admin(ports[2], {"clear": True})
        report.storm_s = time.monotonic() - started
        final_started = time.monotonic()
        final = run(home, run_env, window)
        report.final_run_s = time.monotonic() - final_started
        if final.returncode != 0:
            report.mismatches.append(f"the uncut run failed: {final.stderr[-2000:]}")
    finally:
        stop(proc)
    held = netsuite_documents(state)
    report.documents = sum(held.values())
    for doc in sorted((expected - held).keys(), key=str):
        report.mismatches.append(f"missing in NetSuite: {doc}")
    for doc in sorted((held - expected).keys(), key=str):
        report.mismatches.append(f"extra in NetSuite: {doc}")
    report.mismatches.extend(leftovers(home))
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kills", type=int, default=200)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--workdir", type=Path, default=None)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="finsync-storm-") as tmp:
        workdir = args.workdir or Path(tmp)
        report = storm(args.kills, args.seed, workdir, log=lambda m: print(m, flush=True))
    print(json.dumps(report.as_dict(), indent=2))
    return 1 if report.mismatches else 0


if __name__ == "__main__":
    sys.exit(main())
