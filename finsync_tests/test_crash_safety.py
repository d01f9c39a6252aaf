"""Crash safety: a posting run killed with SIGKILL anywhere loses nothing and posts nothing twice.

Each posting process is forked from the test and kills itself at a seeded side-effect point:
after a claim commits, before a send, after the ERP answered but before the ledger recorded
it, or after the record. The next process settles what the dead one left in flight by looking
it up in NetSuite. At the end NetSuite holds exactly one document per source document.
"""

import multiprocessing
import os
import random
import signal
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from finsync_pipeline import ledger
from finsync_pipeline.ledger import LedgerDoc
from finsync_pipeline.posting import PostingEngine
from finsync_pipeline.resources.netsuite import NetSuiteResource
from finsync_pipeline.resources.warehouse import create_engine
from finsync_pipeline.sandbox.generator import CompanySpec, generate
from finsync_pipeline.sandbox.server import Sandbox
from finsync_tests.conftest import TEST_END

ERP = "netsuite"
SEED = 20261126
KILLS = 24
CUSTOMERS = 12
INVOICES = 80


def _docs() -> list[LedgerDoc]:
    docs = []
    for n in range(CUSTOMERS):
        parent = None if n < 3 else f"C{n % 3}"
        payload: dict[str, Any] = {
            "externalId": f"SF_C{n}",
            "companyName": f"Crash Test {n}",
            "isPerson": False,
            "subsidiary": {"id": "1"},
            "currency": {"id": "1"},
        }
        if parent:
            payload["parent"] = {"$ref": ["customer", f"SF_{parent}"]}
        docs.append(
            LedgerDoc(
                ERP,
                "customer",
                f"SF_C{n}",
                "salesforce",
                f"C{n}",
                f"fs-c{n}",
                None,
                payload,
                0 if parent is None else 1,
            )
        )
    for n in range(INVOICES):
        external_id = f"STRIPE_in_crash{n}"
        payload = {
            "externalId": external_id,
            "entity": {"$ref": ["customer", f"SF_C{n % CUSTOMERS}"]},
            "tranDate": "2026-10-01",
            "subsidiary": {"id": "1"},
            "currency": {"id": "1"},
            "memo": f"crash test {n}",
            "item": {
                "items": [
                    {"item": {"id": "101"}, "quantity": 1, "amount": ledger.loads(f"{100 + n}.25")}
                ]
            },
        }
        docs.append(
            LedgerDoc(
                ERP,
                "invoice",
                external_id,
                "stripe",
                f"in_crash{n}",
                f"fs-i{n}",
                "2026-10-01",
                payload,
            )
        )
    return docs


def _post(url: str, env: dict[str, str], kill_at: int | None, run_id: str, log: str) -> None:
    """The child: one posting run that SIGKILLs itself at its ``kill_at``-th point."""
    engine = create_engine(url)
    engine.dispose(close=False)  # never reuse the parent's pooled connections
    seen = 0

    def hook(point: str) -> None:
        nonlocal seen
        seen += 1
        if seen == kill_at:
            Path(log).write_text(point)
            os.kill(os.getpid(), signal.SIGKILL)

    client = NetSuiteResource(
        account_id=env["NETSUITE_ACCOUNT_ID"],
        base_url=env["NETSUITE_BASE_URL"],
        consumer_key=env["NETSUITE_CONSUMER_KEY"],
        consumer_secret=env["NETSUITE_CONSUMER_SECRET"],
        token_id=env["NETSUITE_TOKEN_ID"],
        token_secret=env["NETSUITE_TOKEN_SECRET"],
    ).get_client()
    poster = PostingEngine(
        engine,
        client,
        erp=ERP,
        run_id=run_id,
        is_run_alive=lambda _run: False,
        batch_size=4,
        on_hook=hook,
    )
    poster.recover()
    poster.post("customer", depths=[0, 1])
    poster.post("invoice")


@pytest.fixture
def sandbox(tmp_path: Path) -> Any:
    sb = Sandbox(tmp_path / "sandbox")
    sb.seed(generate(CompanySpec(accounts=4, months=1, seed=1, end=TEST_END)))
    with sb:
        yield sb


def test_sigkill_anywhere_then_rerun_gives_exactly_one_erp_document_per_source(
    sandbox: Sandbox, tmp_path: Path
) -> None:
    url = f"sqlite:///{tmp_path / 'warehouse.db'}"
    docs = _docs()
    engine = create_engine(url)
    with engine.begin() as conn:
        for doc_type in ("customer", "invoice"):
            ledger.enqueue(
                conn,
                [d for d in docs if d.doc_type == doc_type],
                run_id="derive",
                repost_changed=True,
            )
    context = multiprocessing.get_context("fork")
    rng = random.Random(SEED)
    killed_at: list[str] = []
    for n in range(KILLS):
        log = tmp_path / f"kill-{n}.txt"
        child = context.Process(
            target=_post, args=(url, sandbox.env, rng.randint(1, 14), f"run-{n}", str(log))
        )
        child.start()
        child.join(timeout=120)
        assert child.exitcode == -signal.SIGKILL, (
            f"run {n} was meant to die (exit {child.exitcode})"
        )
        killed_at.append(log.read_text())
    final = context.Process(target=_post, args=(url, sandbox.env, None, "run-final", ""))
    final.start()
    final.join(timeout=120)
    assert final.exitcode == 0

    # The kills fell on every kind of point: after a claim, before and after a send, after a record.
    assert len(killed_at) >= 20
    assert set(killed_at) >= {"claimed", "sending", "sent", "recorded"}

    with engine.connect() as conn:
        states = dict(
            conn.execute(sa.text("SELECT external_id, state FROM posting_ledger")).fetchall()
        )
        internal = dict(
            conn.execute(
                sa.text("SELECT external_id, erp_internal_id FROM posting_ledger")
            ).fetchall()
        )
        assert ledger.verify_journal(conn) is None
    assert set(states.values()) == {"posted"}
    for record_type, expected in (("customer", CUSTOMERS), ("invoice", INVOICES)):
        held = [
            r
            for r in sandbox.netsuite_records(record_type)
            if str(r.get("externalId", "")).startswith(("SF_C", "STRIPE_in_crash"))
        ]
        external_ids = [r["externalId"] for r in held]
        # Nothing lost, nothing twice, and the ledger knows each document's ERP id.
        assert len(external_ids) == len(set(external_ids)) == expected
        assert {r["externalId"]: str(r["id"]) for r in held} == {
            x: internal[x] for x in external_ids
        }
