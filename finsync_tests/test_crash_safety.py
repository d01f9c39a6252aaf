"""Crash safety: a posting run killed with SIGKILL anywhere loses nothing and posts nothing twice.

Each posting process is forked from the test and kills itself at a seeded side-effect point:
after a claim commits, before a send, after the ERP answered but before the ledger recorded
it, or after the record. The next process settles what the dead one left in flight by looking
it up in NetSuite. At the end NetSuite holds exactly one document per source document, of every
type the engine posts (customers, invoices, credit memos, payments applied to invoices, refunds
paying credit memos out), and the kills fell while each type was being posted.
"""

import multiprocessing
import os
import random
import signal
import time
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
LEASE_S = 0.3
CUSTOMERS = 12
INVOICES = 32
PAYMENTS = 12  # each pays invoice n in full
CREDITS = 8  # each an unapplied credit memo, paid out by a customer refund
# The documents each run posts, in order. Each run dies within its first 14 points; with these
# counts (and the seed) the 24 kills fall on every type, which the test asserts.
FLOWS = ("customer", "invoice", "credit_memo", "customer_payment", "customer_refund")
RECORDS = {
    "customer": ("customer", "SF_C", CUSTOMERS),
    "invoice": ("invoice", "STRIPE_in_crash", INVOICES),
    "credit_memo": ("creditmemo", "STRIPE_cn_crash", CREDITS),
    "customer_payment": ("customerpayment", "STRIPE_ch_crash", PAYMENTS),
    "customer_refund": ("customerrefund", "STRIPE_re_crash", CREDITS),
}


def _amount(n: int) -> Any:
    return ledger.loads(f"{100 + n}.25")


def _stripe_doc(doc_type: str, source_id: str, payload: dict[str, Any]) -> LedgerDoc:
    external_id = f"STRIPE_{source_id}"
    return LedgerDoc(
        ERP,
        doc_type,
        external_id,
        "stripe",
        source_id,
        f"fs-{source_id}",
        "2026-10-01",
        {"externalId": external_id, "tranDate": "2026-10-01", "currency": {"id": "1"}, **payload},
    )


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
        line = {"item": {"id": "101"}, "quantity": 1, "amount": _amount(n)}
        payload = {
            "entity": {"$ref": ["customer", f"SF_C{n % CUSTOMERS}"]},
            "subsidiary": {"id": "1"},
            "memo": f"crash test {n}",
            "item": {"items": [line]},
        }
        docs.append(_stripe_doc("invoice", f"in_crash{n}", payload))
    for n in range(PAYMENTS):
        applied = {"doc": {"$ref": ["invoice", f"STRIPE_in_crash{n}"]}, "amount": _amount(n)}
        payload = {
            "customer": {"$ref": ["customer", f"SF_C{n % CUSTOMERS}"]},
            "payment": _amount(n),
            "apply": {"items": [{**applied, "apply": True}]},
        }
        docs.append(_stripe_doc("customer_payment", f"ch_crash{n}", payload))
    for n in range(CREDITS):
        customer = {"$ref": ["customer", f"SF_C{n % CUSTOMERS}"]}
        line = {"item": {"id": "101"}, "quantity": 1, "amount": ledger.loads("10.00")}
        memo = {"entity": customer, "subsidiary": {"id": "1"}, "item": {"items": [line]}}
        docs.append(_stripe_doc("credit_memo", f"cn_crash{n}", memo))
        applied = {"doc": {"$ref": ["credit_memo", f"STRIPE_cn_crash{n}"]}, "apply": True}
        paid_out = {"items": [{**applied, "amount": line["amount"]}]}
        refund = {"customer": customer, "account": {"id": "111"}, "apply": paid_out}
        docs.append(_stripe_doc("customer_refund", f"re_crash{n}", refund))
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
        # As after a real SIGKILL, the orchestrator still believes every dead run alive: only
        # the expired leases of their claims let this run settle what they left in flight.
        is_run_alive=lambda _run: True,
        lease_s=LEASE_S,
        batch_size=4,
        on_hook=hook,
    )
    poster.recover()
    for doc_type in FLOWS:
        if doc_type == "customer":
            poster.post("customer", depths=[0, 1])
        else:
            poster.post(doc_type)


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
        for doc_type in FLOWS:
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
        time.sleep(LEASE_S)  # the dead run's leases run out
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
        # The document type each killed run was posting when it died (its last transition).
        died_in = {
            doc_type
            for (doc_type,) in conn.execute(
                sa.text(
                    "SELECT j.doc_type FROM posting_ledger_journal j WHERE j.run_id LIKE 'run-%' "
                    "AND j.run_id <> 'run-final' AND j.seq = (SELECT MAX(k.seq) FROM "
                    "posting_ledger_journal k WHERE k.run_id = j.run_id)"
                )
            )
        }
    assert set(states.values()) == {"posted"}
    assert died_in == set(FLOWS), died_in
    for record_type, prefix, expected in RECORDS.values():
        held = [
            r
            for r in sandbox.netsuite_records(record_type)
            if str(r.get("externalId", "")).startswith(prefix)
        ]
        external_ids = [r["externalId"] for r in held]
        # Nothing lost, nothing twice, and the ledger knows each document's ERP id.
        assert len(external_ids) == len(set(external_ids)) == expected, record_type
        assert {r["externalId"]: str(r["id"]) for r in held} == {
            x: internal[x] for x in external_ids
        }
    # Money moved once: paid invoices are paid in full, refunded credits fully paid out.
    invoices = {r["externalId"]: r for r in sandbox.netsuite_records("invoice")}
    for n in range(INVOICES):
        status = invoices[f"STRIPE_in_crash{n}"]["status"]
        assert status == ("Paid In Full" if n < PAYMENTS else "Open"), n
    for memo in sandbox.netsuite_records("creditmemo"):
        if str(memo.get("externalId", "")).startswith("STRIPE_cn_crash"):
            assert (memo["status"], memo["amountRemaining"]) == ("Fully Applied", 0)
