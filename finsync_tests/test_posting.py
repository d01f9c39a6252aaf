"""The posting engine against the NetSuite sandbox over real HTTP, with the ledger on SQLite
and on PostgreSQL: parents first, exactly one ERP document per external id, rejections,
deferrals, pauses, dead rows, and settling what a dead run left in flight."""

import datetime as dt
import random
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import replace
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from finsync_pipeline import ledger
from finsync_pipeline.errors import AuthenticationError
from finsync_pipeline.ledger import LedgerDoc
from finsync_pipeline.posting import PostingEngine, _resolve_refs
from finsync_pipeline.resources.concurrency import AdaptiveConcurrency
from finsync_pipeline.resources.http import HttpOptions
from finsync_pipeline.resources.netsuite import NetSuiteClient, NetSuiteResource
from finsync_pipeline.sandbox.generator import CompanySpec, generate
from finsync_pipeline.sandbox.server import Sandbox
from finsync_tests.conftest import TEST_END

ERP = "netsuite"
# A blocked or released row must not be claimed again and again within one run: a run that
# claims more batches than this is looping on the same rows.
MAX_BATCHES = 25


@pytest.fixture
def sandbox(tmp_path: Path) -> Iterator[Sandbox]:
    box = Sandbox(tmp_path / "sb")
    box.seed(generate(CompanySpec(accounts=10, months=2, seed=3, end=TEST_END)))
    box.start()
    yield box
    box.stop()


@pytest.fixture
def sleeps() -> list[float]:
    return []


def _resource(sandbox: Sandbox, **overrides: str) -> NetSuiteResource:
    env = sandbox.env
    settings = {
        "account_id": env["NETSUITE_ACCOUNT_ID"],
        "base_url": env["NETSUITE_BASE_URL"],
        "consumer_key": env["NETSUITE_CONSUMER_KEY"],
        "consumer_secret": env["NETSUITE_CONSUMER_SECRET"],
        "token_id": env["NETSUITE_TOKEN_ID"],
        "token_secret": env["NETSUITE_TOKEN_SECRET"],
        **overrides,
    }
    return NetSuiteResource(**settings)


def make_client(
    sandbox: Sandbox,
    sleeps: list[float],
    *,
    limiter: AdaptiveConcurrency | None = None,
    **overrides: str,
) -> NetSuiteClient:
    return _resource(sandbox, **overrides).get_client(
        http_options=HttpOptions(
            timeout=(5.0, 30.0),
            max_attempts=3,
            sleep=sleeps.append,
            rng=random.Random(3),
            limiter=limiter,
        )
    )


@pytest.fixture
def client(sandbox: Sandbox, sleeps: list[float]) -> Iterator[NetSuiteClient]:
    with make_client(sandbox, sleeps) as c:
        yield c


class Hooks:
    """Records the engine's side-effect points and stops a run that loops on its claims."""

    def __init__(self) -> None:
        self.points: list[str] = []

    def __call__(self, point: str) -> None:
        self.points.append(point)
        if self.points.count("claimed") > MAX_BATCHES:
            pytest.fail(
                f"the run claimed {MAX_BATCHES}+ batches: it keeps re-claiming rows it "
                "released (a blocked or paused row came back due at once)"
            )


def make_engine(
    warehouse_engine: Engine,
    client: NetSuiteClient,
    run_id: str,
    *,
    hooks: Callable[[str], None] | None = None,
    is_run_alive: Callable[[str], bool] = lambda _run: False,
    **kw: Any,
) -> PostingEngine:
    return PostingEngine(
        warehouse_engine,
        client,
        erp=ERP,
        run_id=run_id,
        is_run_alive=is_run_alive,
        rng=random.Random(7),
        on_hook=hooks if hooks is not None else Hooks(),
        **kw,
    )


def customer(key: str, parent: str | None = None, *, depth: int = 0) -> LedgerDoc:
    external_id = f"SF_{key}"
    payload: dict[str, Any] = {
        "externalId": external_id,
        "companyName": f"{key} Holdings",
        "isPerson": False,
        "subsidiary": {"id": "1"},
        "currency": {"id": "1"},
    }
    if parent is not None:
        payload["parent"] = {"$ref": ["customer", f"SF_{parent}"]}
    return LedgerDoc(
        ERP, "customer", external_id, "salesforce", key, f"fs-{key}", None, payload, depth
    )


def invoice(
    key: str,
    customer_key: str,
    *,
    item: str = "101",
    amount: Decimal = Decimal("10.00"),
    partition_date: str = "2026-10-01",
) -> LedgerDoc:
    external_id = f"STRIPE_{key}"
    payload = {
        "externalId": external_id,
        "entity": {"$ref": ["customer", f"SF_{customer_key}"]},
        "tranDate": partition_date,
        "subsidiary": {"id": "1"},
        "currency": {"id": "1"},
        "memo": f"finsync fs-{key} stripe invoice {key}",
        "item": {"items": [{"item": {"id": item}, "quantity": 1, "amount": amount}]},
    }
    return LedgerDoc(
        ERP, "invoice", external_id, "stripe", key, f"fs-{key}", partition_date, payload
    )


def enqueue(engine: Engine, *docs: LedgerDoc) -> None:
    by_type: dict[str, list[LedgerDoc]] = {}
    for d in docs:
        by_type.setdefault(d.doc_type, []).append(d)
    with engine.begin() as conn:
        for group in by_type.values():
            ledger.enqueue(conn, group, run_id="derive", repost_changed=True)


def row(engine: Engine, external_id: str) -> dict[str, Any]:
    with engine.connect() as conn:
        found = conn.execute(
            sa.text("SELECT * FROM posting_ledger WHERE erp = :erp AND external_id = :x"),
            {"erp": ERP, "x": external_id},
        ).one()
    return dict(found._mapping)


def by_external_id(sandbox: Sandbox, record_type: str) -> dict[str, dict[str, Any]]:
    records = sandbox.netsuite_records(record_type)
    counts = Counter(r.get("externalId") for r in records)
    duplicates = {k: n for k, n in counts.items() if n > 1}
    assert not duplicates, f"NetSuite holds duplicates: {duplicates}"
    return {r["externalId"]: r for r in records if r.get("externalId")}


def make_due_now(engine: Engine, external_id: str) -> None:
    """Let the backoff elapse without waiting for it: the deferral's due time moves to the past."""
    past = (dt.datetime.now(dt.UTC) - dt.timedelta(seconds=1)).isoformat(timespec="microseconds")
    with engine.begin() as conn:
        conn.execute(
            sa.text("UPDATE posting_ledger SET next_attempt_at = :t WHERE external_id = :x"),
            {"t": past, "x": external_id},
        )


# -- the happy path ------------------------------------------------------------------------


def test_posts_parents_before_children_and_resolves_references(
    warehouse_engine: Engine, sandbox: Sandbox, client: NetSuiteClient
) -> None:
    # The child is enqueued first and sorts first by name: only the depth puts the parent first.
    enqueue(
        warehouse_engine,
        customer("a_child", parent="z_parent", depth=1),
        customer("z_parent"),
        invoice("in_1", "a_child", amount=Decimal("1234.57")),
    )
    hooks = Hooks()
    poster = make_engine(warehouse_engine, client, "run-1", hooks=hooks, batch_size=1)
    poster.recover()
    poster.post("customer", depths=[0, 1])
    poster.post("invoice", date_from="2026-10-01", date_to="2026-10-02")

    customers = by_external_id(sandbox, "customer")
    invoices = by_external_id(sandbox, "invoice")
    parent, child = customers["SF_z_parent"], customers["SF_a_child"]
    assert int(parent["id"]) < int(child["id"]), "the parent must reach NetSuite first"
    assert child["parent"]["id"] == parent["id"]
    assert invoices["STRIPE_in_1"]["entity"]["id"] == child["id"]
    assert invoices["STRIPE_in_1"]["item"]["items"][0]["amount"] == Decimal("1234.57")

    assert (poster.stats.posted, poster.stats.rejected, poster.stats.deferred) == (3, 0, 0)
    assert not poster.stats.paused
    assert hooks.points == ["claimed", "sending", "sent", "recorded"] * 3
    for external_id, record in [
        ("SF_z_parent", parent),
        ("SF_a_child", child),
        ("STRIPE_in_1", invoices["STRIPE_in_1"]),
    ]:
        stored = row(warehouse_engine, external_id)
        assert stored["state"] == "posted"
        assert stored["erp_internal_id"] == record["id"]
        assert stored["posted_hash"] == stored["payload_hash"]
        assert stored["attempts"] == 1
        assert stored["claimed_by"] is None
    with warehouse_engine.connect() as conn:
        assert ledger.verify_journal(conn) is None


def test_a_rerun_posts_nothing_and_the_erp_holds_one_document_each(
    warehouse_engine: Engine, sandbox: Sandbox, client: NetSuiteClient, sleeps: list[float]
) -> None:
    docs = [customer("p"), customer("c", parent="p", depth=1), invoice("in_1", "c")]
    enqueue(warehouse_engine, *docs)
    first = make_engine(warehouse_engine, client, "run-1")
    first.post("customer")
    first.post("invoice")
    assert first.stats.posted == 3

    # Derive runs again with the same documents; a new posting run follows.
    enqueue(warehouse_engine, *docs)
    with make_client(sandbox, sleeps) as fresh:
        second = make_engine(warehouse_engine, fresh, "run-2")
        second.recover()
        second.post("customer")
        second.post("invoice")
        assert fresh.requests_made == 0
    assert second.stats == type(second.stats)()
    assert set(by_external_id(sandbox, "customer")) == {"SF_p", "SF_c"}
    assert set(by_external_id(sandbox, "invoice")) == {"STRIPE_in_1"}


def test_a_changed_customer_is_updated_in_place(
    warehouse_engine: Engine, sandbox: Sandbox, client: NetSuiteClient
) -> None:
    enqueue(warehouse_engine, customer("p"))
    make_engine(warehouse_engine, client, "run-1").post("customer")
    first_id = by_external_id(sandbox, "customer")["SF_p"]["id"]

    renamed = customer("p")
    renamed.payload["companyName"] = "P Renamed Ltd"
    enqueue(warehouse_engine, renamed)
    poster = make_engine(warehouse_engine, client, "run-2")
    poster.post("customer")

    record = by_external_id(sandbox, "customer")["SF_p"]
    assert poster.stats.posted == 1
    assert (record["id"], record["companyName"]) == (first_id, "P Renamed Ltd")
    assert row(warehouse_engine, "SF_p")["posted_hash"] == ledger.payload_hash(renamed.payload)


# -- documents that cannot go yet ----------------------------------------------------------


def test_an_invoice_whose_customer_is_not_posted_is_held_back_not_sent(
    warehouse_engine: Engine, sandbox: Sandbox, client: NetSuiteClient
) -> None:
    enqueue(warehouse_engine, customer("later"), invoice("in_1", "later"))
    poster = make_engine(warehouse_engine, client, "run-1")
    poster.post("invoice")

    stored = row(warehouse_engine, "STRIPE_in_1")
    assert poster.stats.blocked == 1
    assert poster.stats.posted == 0
    assert stored["state"] == "pending"
    assert stored["attempts"] == 0
    assert "SF_later" in stored["last_error"]
    assert client.requests_made == 0
    assert by_external_id(sandbox, "invoice") == {}

    assert stored["waiting_for"] == "customer:SF_later"
    assert stored["next_attempt_at"] is not None  # the sensor does not spin on it

    # Posting the customer makes the waiting invoice due at once: the same run sends it.
    later = make_engine(warehouse_engine, client, "run-2")
    later.post("customer")
    assert row(warehouse_engine, "STRIPE_in_1")["next_attempt_at"] is None
    later.post("invoice")
    assert later.stats.posted == 2
    invoices = by_external_id(sandbox, "invoice")
    assert (
        invoices["STRIPE_in_1"]["entity"]["id"]
        == row(warehouse_engine, "SF_later")["erp_internal_id"]
    )


def test_an_invoice_of_a_rejected_customer_does_not_stall_the_run(
    warehouse_engine: Engine, sandbox: Sandbox, client: NetSuiteClient
) -> None:
    bad = customer("bad")
    bad.payload["subsidiary"] = {"id": "99"}
    enqueue(
        warehouse_engine, bad, customer("good"), invoice("in_1", "bad"), invoice("in_2", "good")
    )
    poster = make_engine(warehouse_engine, client, "run-1")
    poster.post("customer")
    poster.post("invoice")

    assert row(warehouse_engine, "SF_bad")["state"] == "rejected"
    assert row(warehouse_engine, "STRIPE_in_1")["state"] == "pending"
    assert row(warehouse_engine, "STRIPE_in_2")["state"] == "posted"
    assert set(by_external_id(sandbox, "invoice")) == {"STRIPE_in_2"}


# -- permanent and transient failures ------------------------------------------------------


def test_a_validation_error_rejects_the_row_with_the_erp_reason(
    warehouse_engine: Engine, sandbox: Sandbox, client: NetSuiteClient
) -> None:
    enqueue(
        warehouse_engine,
        customer("c"),
        invoice("in_bad", "c", item="999"),
        invoice("in_good", "c"),
    )
    poster = make_engine(warehouse_engine, client, "run-1")
    poster.post("customer")
    poster.post("invoice")

    stored = row(warehouse_engine, "STRIPE_in_bad")
    assert (poster.stats.rejected, poster.stats.posted) == (1, 2)
    assert not poster.stats.paused
    assert stored["state"] == "rejected"
    assert stored["attempts"] == 1
    assert "Invalid Field Value 999 for the following field: item" in stored["last_error"]
    (rejection,) = poster.stats.rejections
    assert rejection["external_id"] == "STRIPE_in_bad"
    assert rejection["source_id"] == "in_bad"
    assert rejection["correlation_id"] == "fs-in_bad"
    assert rejection["partition_date"] == "2026-10-01"
    assert "Invalid Field Value 999" in rejection["detail"]
    assert rejection["detail"].endswith("[field item.items[0].item]")
    assert "dead" not in rejection
    # The rejection stopped nothing else.
    assert set(by_external_id(sandbox, "invoice")) == {"STRIPE_in_good"}


def test_an_id_that_cannot_go_in_a_url_rejects_that_document_and_posts_the_others(
    warehouse_engine: Engine, sandbox: Sandbox, client: NetSuiteClient
) -> None:
    # A hostile upstream id: a path, a query and a fragment in one.
    bad = "in_a/../customer/1?x=1#y"
    enqueue(warehouse_engine, customer("c"), invoice(bad, "c"), invoice("in_good", "c"))
    poster = make_engine(warehouse_engine, client, "run-1")
    poster.post("customer")
    poster.post("invoice")

    stored = row(warehouse_engine, f"STRIPE_{bad}")
    assert stored["state"] == "rejected"
    assert "was not sent" in stored["last_error"]
    (rejection,) = poster.stats.rejections
    assert rejection["source_id"] == bad
    assert rejection["detail"].endswith("[field externalId]")
    assert set(by_external_id(sandbox, "invoice")) == {"STRIPE_in_good"}
    # Reading NetSuite back asks for it like any other id, and finds nothing.
    assert client.lookup_many("invoice", [f"STRIPE_{bad}", "STRIPE_in_good"]).keys() == {
        "STRIPE_in_good"
    }


def test_an_outage_beyond_the_retries_defers_the_row_and_pauses_the_run(
    warehouse_engine: Engine, sandbox: Sandbox, client: NetSuiteClient, sleeps: list[float]
) -> None:
    enqueue(warehouse_engine, customer("a"), customer("b"), customer("c"))
    sandbox.inject("netsuite", status=503, count=3, retry_after_s=1)
    hooks = Hooks()
    poster = make_engine(warehouse_engine, client, "run-1", hooks=hooks)
    started = dt.datetime.now(dt.UTC).isoformat(timespec="microseconds")
    poster.post("customer")

    deferred, released = row(warehouse_engine, "SF_a"), row(warehouse_engine, "SF_b")
    assert poster.stats.paused
    assert (poster.stats.deferred, poster.stats.posted, poster.stats.dead) == (1, 0, 0)
    # The client waited as NetSuite's Retry-After asked, then gave up after its 3 attempts.
    assert sleeps == [1.0, 1.0]
    assert client.requests_made == 3
    assert deferred["state"] == "pending"
    assert deferred["attempts"] == 1
    assert deferred["next_attempt_at"] > started
    assert "503" in deferred["last_error"]
    # The rest of the batch was not sent and burnt no attempt.
    for other in ("SF_b", "SF_c"):
        stored = row(warehouse_engine, other)
        assert (stored["state"], stored["attempts"]) == ("pending", 0)
        assert "paused" in stored["last_error"]
    assert released["claimed_by"] is None
    assert by_external_id(sandbox, "customer") == {}

    # The fault is over. The next run drains the backlog but waits for the deferred row's due time.
    after = make_engine(warehouse_engine, client, "run-2")
    after.post("customer")
    assert after.stats.posted == 2
    assert row(warehouse_engine, "SF_a")["state"] == "pending"
    make_due_now(warehouse_engine, "SF_a")
    again = make_engine(warehouse_engine, client, "run-3")
    again.post("customer")
    assert again.stats.posted == 1
    posted = row(warehouse_engine, "SF_a")
    assert (posted["state"], posted["attempts"], posted["last_error"]) == ("posted", 2, None)
    assert set(by_external_id(sandbox, "customer")) == {"SF_a", "SF_b", "SF_c"}


def test_a_row_that_keeps_failing_goes_dead_after_max_attempts(
    warehouse_engine: Engine, sandbox: Sandbox, client: NetSuiteClient
) -> None:
    enqueue(warehouse_engine, customer("a"))
    for run in ("run-1", "run-2"):
        sandbox.inject("netsuite", status=503, count=3, retry_after_s=1)
        make_due_now(warehouse_engine, "SF_a")
        poster = make_engine(warehouse_engine, client, run, max_attempts=2)
        poster.post("customer")

    stored = row(warehouse_engine, "SF_a")
    assert (poster.stats.dead, poster.stats.deferred) == (1, 0)
    assert stored["state"] == "dead"
    assert stored["attempts"] == 2
    assert stored["last_error"].startswith("retries exhausted")
    (dead,) = poster.stats.rejections
    assert (dead["external_id"], dead["dead"]) == ("SF_a", "true")
    # A dead row is not retried by later runs until someone re-queues it.
    later = make_engine(warehouse_engine, client, "run-3")
    later.post("customer")
    assert later.stats.posted == 0
    assert by_external_id(sandbox, "customer") == {}


def test_rejected_credentials_release_the_row_without_burning_an_attempt(
    warehouse_engine: Engine, sandbox: Sandbox, sleeps: list[float]
) -> None:
    enqueue(warehouse_engine, customer("a"))
    with make_client(sandbox, sleeps, token_secret="wrong-secret") as bad:
        poster = make_engine(warehouse_engine, bad, "run-1")
        with pytest.raises(AuthenticationError, match="NETSUITE_TOKEN_SECRET"):
            poster.post("customer")
    stored = row(warehouse_engine, "SF_a")
    assert (stored["state"], stored["attempts"], stored["claimed_by"]) == ("pending", 0, None)


# -- settling what a dead run left in flight -----------------------------------------------


def _claim_as(engine: Engine, run_id: str, doc_type: str = "customer") -> list[ledger.Claimed]:
    with engine.begin() as conn:
        return ledger.claim(conn, erp=ERP, doc_type=doc_type, run_id=run_id, limit=10)


def test_recovery_marks_posted_what_the_dead_run_had_sent(
    warehouse_engine: Engine, sandbox: Sandbox, client: NetSuiteClient, sleeps: list[float]
) -> None:
    enqueue(warehouse_engine, customer("a"))
    (claimed,) = _claim_as(warehouse_engine, "dead-run")
    # The dead run's request reached NetSuite; the run died before recording the outcome.
    sent_id = client.upsert("customer", claimed.external_id, claimed.payload)

    asked: list[str] = []
    with make_client(sandbox, sleeps) as fresh:
        poster = make_engine(
            warehouse_engine, fresh, "run-2", is_run_alive=lambda r: asked.append(r) or False
        )
        poster.recover()
        poster.post("customer")
        assert fresh.requests_made == 1, "settled by one lookup, never by a resend"

    stored = row(warehouse_engine, "SF_a")
    assert asked == ["dead-run"]
    assert (poster.stats.recovered_posted, poster.stats.posted) == (1, 0)
    assert stored["state"] == "posted"
    assert stored["erp_internal_id"] == sent_id
    assert stored["posted_hash"] == claimed.payload_hash
    assert stored["claimed_by"] is None
    assert list(by_external_id(sandbox, "customer")) == ["SF_a"]


def test_recovery_puts_back_what_the_dead_run_had_not_sent(
    warehouse_engine: Engine, sandbox: Sandbox, client: NetSuiteClient
) -> None:
    enqueue(warehouse_engine, customer("a"), customer("b"))
    _claim_as(warehouse_engine, "dead-run")
    poster = make_engine(warehouse_engine, client, "run-2")
    poster.recover()
    assert poster.stats.recovered_pending == 2
    assert row(warehouse_engine, "SF_a")["state"] == "pending"
    poster.post("customer")

    assert poster.stats.posted == 2
    assert set(by_external_id(sandbox, "customer")) == {"SF_a", "SF_b"}
    assert row(warehouse_engine, "SF_a")["attempts"] == 1


def test_recovery_rejects_an_id_that_a_crashed_run_left_in_flight_and_could_not_send(
    warehouse_engine: Engine, sandbox: Sandbox, client: NetSuiteClient
) -> None:
    # Before ids were checked per document, such a row crashed its run after the claim.
    enqueue(warehouse_engine, customer("c"), invoice("in_a/b", "c"), invoice("in_ok", "c"))
    _claim_as(warehouse_engine, "dead-run", doc_type="invoice")
    poster = make_engine(warehouse_engine, client, "run-2")
    poster.recover()
    poster.post("customer")
    poster.post("invoice")

    assert row(warehouse_engine, "STRIPE_in_a/b")["state"] == "rejected"
    assert set(by_external_id(sandbox, "invoice")) == {"STRIPE_in_ok"}


def test_recovery_leaves_rows_of_a_live_run_alone(
    warehouse_engine: Engine, sandbox: Sandbox, client: NetSuiteClient
) -> None:
    enqueue(warehouse_engine, customer("a"))
    _claim_as(warehouse_engine, "live-run")
    poster = make_engine(warehouse_engine, client, "run-2", is_run_alive=lambda r: True)
    poster.recover()
    poster.post("customer")

    stored = row(warehouse_engine, "SF_a")
    assert (stored["state"], stored["claimed_by"]) == ("in_flight", "live-run")
    assert poster.stats == type(poster.stats)()
    assert client.requests_made == 0
    assert by_external_id(sandbox, "customer") == {}


def test_a_run_believed_alive_whose_lease_expired_is_settled_and_reported_dead(
    warehouse_engine: Engine, sandbox: Sandbox, client: NetSuiteClient
) -> None:
    # A SIGKILLed run stays STARTED in Dagster's run storage forever; its lease does not.
    enqueue(warehouse_engine, customer("a"), customer("b"))
    with warehouse_engine.begin() as conn:
        ledger.claim(conn, erp=ERP, doc_type="customer", run_id="killed-run", limit=10, lease_s=1)
    dead: list[tuple[str, str]] = []
    alive_poster = make_engine(warehouse_engine, client, "run-2", is_run_alive=lambda r: True)
    alive_poster.recover()
    assert row(warehouse_engine, "SF_a")["state"] == "in_flight", "its lease still holds"

    with warehouse_engine.begin() as conn:
        conn.execute(sa.text("UPDATE posting_ledger SET lease_until = '2000-01-01T00:00:00'"))
    poster = make_engine(
        warehouse_engine,
        client,
        "run-3",
        is_run_alive=lambda r: True,
        on_dead_run=lambda run, why: dead.append((run, why)),
    )
    poster.recover()
    poster.post("customer")

    assert [run for run, _ in dead] == ["killed-run"]
    assert "lease" in dead[0][1] and "run-3" in dead[0][1]
    assert poster.stats.dead_runs == ["killed-run"]
    assert (row(warehouse_engine, "SF_a")["state"], row(warehouse_engine, "SF_b")["state"]) == (
        "posted",
        "posted",
    )
    assert set(by_external_id(sandbox, "customer")) == {"SF_a", "SF_b"}


def test_a_holder_that_lost_its_claim_cannot_overwrite_the_settlement(
    warehouse_engine: Engine, client: NetSuiteClient
) -> None:
    enqueue(warehouse_engine, customer("a"))
    _claim_as(warehouse_engine, "slow-run")
    with warehouse_engine.begin() as conn:
        conn.execute(sa.text("UPDATE posting_ledger SET lease_until = '2000-01-01T00:00:00'"))
    make_engine(warehouse_engine, client, "run-2", is_run_alive=lambda r: True).recover()
    _claim_as(warehouse_engine, "run-3")
    # The slow run wakes up and tries to record its own outcome for a row run-3 now holds.
    with warehouse_engine.begin() as conn, pytest.raises(ledger.LostClaim):
        ledger.transition(
            conn,
            erp=ERP,
            doc_type="customer",
            external_id="SF_a",
            to_state="posted",
            run_id="slow-run",
            expect_state="in_flight",
            expect_holder="slow-run",
        )
    assert (
        row(warehouse_engine, "SF_a")["state"],
        row(warehouse_engine, "SF_a")["claimed_by"],
    ) == (
        "in_flight",
        "run-3",
    )


def test_a_working_run_renews_its_leases(
    warehouse_engine: Engine, sandbox: Sandbox, client: NetSuiteClient
) -> None:
    enqueue(warehouse_engine, customer("a"))
    seen: list[bool] = []

    def slow_send(point: str) -> None:
        if point == "sending":
            # Three lease lengths pass while this document is in flight.
            time.sleep(0.9)
            with warehouse_engine.connect() as conn:
                (row_,) = ledger.stale_in_flight(conn, erp=ERP, run_id="someone-else")
            seen.append(row_.lease_expired)

    poster = make_engine(
        warehouse_engine,
        client,
        "run-1",
        hooks=slow_send,
        lease_s=0.3,
    )
    poster.post("customer")
    assert seen == [False]
    assert row(warehouse_engine, "SF_a")["state"] == "posted"
    assert row(warehouse_engine, "SF_a")["lease_until"] is None


def _pooled(
    warehouse_engine: Engine,
    sandbox: Sandbox,
    run_id: str,
    *,
    concurrency: int,
    batch_size: int = 8,
    hooks: Callable[[str], None] | None = None,
) -> PostingEngine:
    """An engine of ``concurrency`` workers sharing one adaptive limit, as erp_postings builds."""
    limit = AdaptiveConcurrency(concurrency)
    options = HttpOptions(timeout=(5.0, 30.0), max_attempts=3, limiter=limit)
    return PostingEngine(
        warehouse_engine,
        make_client(sandbox, [], limiter=limit),
        erp=ERP,
        run_id=run_id,
        is_run_alive=lambda _r: False,
        batch_size=batch_size,
        concurrency=concurrency,
        client_factory=lambda: _resource(sandbox).get_client(http_options=options),
        limiter=limit,
        on_hook=hooks,
    )


def test_past_the_erp_limit_the_run_backs_off_and_posts_everything_without_pausing(
    warehouse_engine: Engine, sandbox: Sandbox
) -> None:
    docs = [customer("conc")] + [invoice(f"in_c{n}", "conc") for n in range(60)]
    enqueue(warehouse_engine, *docs)
    # NetSuite answers 429 past two requests in flight; finsync is configured for eight.
    sandbox.faults.set_concurrency_limit("netsuite", 2)
    poster = _pooled(warehouse_engine, sandbox, "run-c1", concurrency=8)
    poster.post("customer")
    poster.post("invoice")

    assert not poster.stats.paused, "a concurrency limit must not pause the run"
    assert (poster.stats.posted, poster.stats.deferred, poster.stats.dead) == (61, 0, 0)
    # No 429 storm: the limit learnt from the first refusals, then probed slowly.
    assert 0 < poster.stats.throttled <= 20, poster.stats.throttled
    held = by_external_id(sandbox, "invoice")
    assert sorted(held) == sorted(f"STRIPE_in_c{n}" for n in range(60))
    with warehouse_engine.connect() as conn:
        states = {r[0] for r in conn.execute(sa.text("SELECT DISTINCT state FROM posting_ledger"))}
        assert ledger.verify_journal(conn) is None
    assert states == {"posted"}


def _credit_memo(note: str, customer_key: str, *applied: tuple[str, bool]) -> LedgerDoc:
    """A credit memo of 2.00, applied (or unapplied) to the invoices named."""
    external_id = f"STRIPE_{note}"
    payload = {
        "externalId": external_id,
        "entity": {"$ref": ["customer", f"SF_{customer_key}"]},
        "tranDate": "2026-10-02",
        "subsidiary": {"id": "1"},
        "currency": {"id": "1"},
        "memo": f"finsync fs-{note} stripe credit note {note}",
        "item": {"items": [{"item": {"id": "101"}, "quantity": 1, "amount": Decimal("2.00")}]},
        "apply": {
            "items": [
                {"doc": {"$ref": ["invoice", invoice_id]}, "apply": True, "amount": Decimal("2.00")}
                if on
                else {"doc": {"$ref": ["invoice", invoice_id]}, "apply": False}
                for invoice_id, on in applied
            ]
        },
    }
    return LedgerDoc(
        ERP, "credit_memo", external_id, "stripe", note, f"fs-{note}", "2026-10-02", payload
    )


def test_a_credit_memo_moved_to_its_compensating_invoice_by_a_dead_run_is_moved_once(
    warehouse_engine: Engine, sandbox: Sandbox, client: NetSuiteClient, sleeps: list[float]
) -> None:
    # A credit note's memo posted against in_1; then the note was voided in billing.
    memo = _credit_memo("cn_1", "a", ("STRIPE_in_1", True))
    enqueue(warehouse_engine, customer("a"), invoice("in_1", "a"), memo)
    first = make_engine(warehouse_engine, client, "run-1")
    for doc_type in ("customer", "invoice", "credit_memo"):
        first.post(doc_type)
    charge = invoice("cn_1", "a", amount=Decimal("2.00"), partition_date="2026-10-02")
    charge = replace(
        charge, external_id="CNVOID_cn_1", payload=dict(charge.payload, externalId="CNVOID_cn_1")
    )
    moved = _credit_memo("cn_1", "a", ("STRIPE_in_1", False), ("CNVOID_cn_1", True))
    enqueue(warehouse_engine, charge, moved)
    first.post("invoice")
    # A run sends the moved memo and dies before recording it.
    (claimed,) = _claim_as(warehouse_engine, "dead-run", "credit_memo")
    with warehouse_engine.connect() as conn:
        ids = ledger.posted_ids(
            conn, erp=ERP, doc_type="invoice", external_ids=["STRIPE_in_1", "CNVOID_cn_1"]
        )
        (customer_id,) = ledger.posted_ids(
            conn, erp=ERP, doc_type="customer", external_ids=["SF_a"]
        ).values()
    refs = {("customer", "SF_a"): customer_id, **{("invoice", k): v for k, v in ids.items()}}
    body = _resolve_refs(claimed.payload, refs)
    client.upsert("creditmemo", claimed.external_id, body)

    with make_client(sandbox, sleeps) as fresh:
        second = make_engine(warehouse_engine, fresh, "run-2")
        second.recover()
        second.post("credit_memo")
    # Found after an earlier post, it proves nothing: sent again, by external id, once.
    assert (second.stats.recovered_pending, second.stats.posted) == (1, 1)
    assert row(warehouse_engine, "STRIPE_cn_1")["posted_hash"] == claimed.payload_hash
    invoices = by_external_id(sandbox, "invoice")
    assert (invoices["STRIPE_in_1"]["status"], invoices["STRIPE_in_1"]["amountRemaining"]) == (
        "Open",
        Decimal("10.00"),
    )
    assert invoices["CNVOID_cn_1"]["status"] == "Paid In Full"
    stored = by_external_id(sandbox, "creditmemo")["STRIPE_cn_1"]
    assert (stored["status"], stored["total"]) == ("Fully Applied", Decimal("2.00"))
    assert [line["doc"]["id"] for line in stored["apply"]["items"]] == [ids["CNVOID_cn_1"]]


def test_a_slow_document_does_not_hold_back_the_next_claims(
    warehouse_engine: Engine, sandbox: Sandbox
) -> None:
    # Workers form a continuous pool: while one document is slow, the others go on claiming
    # and sending, instead of waiting for the slow one's whole batch to finish.
    enqueue(warehouse_engine, *[customer(f"p{n:02d}") for n in range(12)])
    sent_meanwhile = threading.Event()
    lock = threading.Lock()
    seen = {"sending": 0, "sent": 0}
    slow_started: list[bool] = []

    def hooks(point: str) -> None:
        with lock:
            seen[point] = seen.get(point, 0) + 1
            first = point == "sending" and not slow_started
            if first:
                slow_started.append(True)
            if seen["sent"] >= 8:
                sent_meanwhile.set()
        if first:
            # This document is slow until eight others (two batches' worth) have been sent.
            slow_started.append(sent_meanwhile.wait(timeout=30))

    poster = _pooled(warehouse_engine, sandbox, "run-p", concurrency=2, batch_size=4, hooks=hooks)
    poster.post("customer")

    assert slow_started == [True, True], "the other worker stopped at the slow one's batch"
    assert poster.stats.posted == 12
    assert len(by_external_id(sandbox, "customer")) == 12


def test_a_maintenance_window_still_pauses_a_pooled_run(
    warehouse_engine: Engine, sandbox: Sandbox
) -> None:
    enqueue(warehouse_engine, *[customer(f"m{n:02d}") for n in range(20)])
    sandbox.faults.maintenance("netsuite", seconds=600, retry_after_s=1)
    poster = _pooled(warehouse_engine, sandbox, "run-m", concurrency=4)
    poster.post("customer")

    assert poster.stats.paused
    assert poster.stats.posted == 0
    with warehouse_engine.connect() as conn:
        states = {
            str(r[0]): int(r[1])
            for r in conn.execute(
                sa.text("SELECT state, count(*) FROM posting_ledger GROUP BY state")
            )
        }
    # Nothing stays claimed: what was sent is deferred, the rest released for the next run.
    assert set(states) == {"pending"}, states
