"""A run over a past stretch, with Stripe read as it is today, reports no false drift.

An engineer backfills September in October. Stripe answers with each invoice as it is now, so
an invoice of September 29 that its customer paid on October 2 is paid in Stripe and open in
NetSuite: its payment's day is outside the run. That is a payment on its way, not drift; the
run of its day posts it, and the invoice is then matched.
"""

import json
import sqlite3
from pathlib import Path
from typing import Any

from finsync_tests.conftest import TEST_END
from finsync_tests.test_cli import _env, _finsync, _free_ports, _serve, _stop


def _run(home: Path, env: dict[str, str], first: str, last: str) -> dict[str, Any]:
    result = _finsync("run", "--home", str(home), "--from", first, "--to", last, "--json", env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    summary: dict[str, Any] = json.loads(result.stdout.strip().splitlines()[-1])
    return summary


def test_a_backfill_of_a_past_month_shows_later_payments_on_their_way_not_drift(
    tmp_path: Path,
) -> None:
    state, ports, home = tmp_path / "state", _free_ports(5), tmp_path / "home"
    sandbox, env = _serve(state, ports)
    try:
        keyed = _env(**env, FINSYNC_LEDGER_KEY="operator-held-key-for-this-test")
        september = _run(home, keyed, "2026-09-01", "2026-09-30")
        with sqlite3.connect(home / "warehouse.db") as conn:
            waiting = conn.execute(
                "SELECT invoice_id, explanation FROM invoice_reconciliation "
                "WHERE status = 'awaiting_window' AND explanation LIKE '%after the last day%'"
            ).fetchall()
        october = _run(home, keyed, "2026-10-01", TEST_END.isoformat())
    finally:
        _stop(sandbox)

    assert september["reconciliation"]["balance_mismatch"] == 0
    assert september["drift"] == 0
    assert waiting, "some September invoice was paid in October"
    invoice_id, explanation = waiting[0]
    assert "billing records it paid on 2026-10-" in explanation
    assert ".0 " not in explanation  # minor units are whole numbers
    assert october["drift"] == 0
    with sqlite3.connect(home / "warehouse.db") as conn:
        (now,) = conn.execute(
            "SELECT status, billing_remaining_minor, erp_remaining_minor "
            "FROM invoice_reconciliation WHERE invoice_id = ?",
            (invoice_id,),
        ).fetchall()
    assert now == ("matched", 0, 0)

    # Every posting run sealed the journal under the operator's key and checkpointed its head;
    # `finsync ledger verify` finds it intact, and catches an amount edited behind it.
    verify = _finsync("ledger", "verify", "--home", str(home), "--json", env=keyed)
    assert verify.returncode == 0, verify.stdout + verify.stderr
    report = json.loads(verify.stdout)
    assert report["intact"] and report["keyed"] and report["checkpoints"] >= 2
    with sqlite3.connect(home / "warehouse.db") as conn:
        conn.execute(
            "UPDATE posting_ledger SET payload = replace(payload, '\"quantity\":1', "
            "'\"quantity\":2') WHERE external_id = ?",
            (f"STRIPE_{invoice_id}",),
        )
    tampered = _finsync("ledger", "verify", "--home", str(home), env=keyed)
    assert tampered.returncode == 1
    assert f"STRIPE_{invoice_id}: its payload does not match its payload hash" in tampered.stdout
