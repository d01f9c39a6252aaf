"""Fault injection on the NetSuite simulator, and the posting engine through those faults.

Simulator: the concurrency limit (429 CONCURRENCY_LIMIT_EXCEEDED while N requests are in
flight), maintenance windows (503 with Retry-After, by time or by request count, then
recovery), commit-then-timeout (the write commits, the answer never arrives) and the admin
endpoint that arms them. Engine: invoices posted through a commit-then-timeout window and a
maintenance window end with exactly one NetSuite document per external id, every ledger row
posted after a second run.
"""

import datetime as dt
import random
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import requests
import simplejson
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from finsync_pipeline import ledger
from finsync_pipeline.ledger import LedgerDoc
from finsync_pipeline.posting import PostingEngine
from finsync_pipeline.resources.http import HttpOptions
from finsync_pipeline.resources.netsuite import NetSuiteClient, NetSuiteResource
from finsync_pipeline.sandbox.generator import CompanySpec, generate
from finsync_pipeline.sandbox.server import Sandbox
from finsync_tests.conftest import TEST_END
from finsync_tests.sandbox.test_netsuite_sim import REST, NetSuite

SUBSIDIARY = f"{REST}/record/v1/subsidiary/1"


@pytest.fixture
def ns(http: requests.Session, sandbox: Sandbox) -> NetSuite:
    return NetSuite(http, sandbox)


def _customer_body(name: str) -> dict[str, Any]:
    return {"companyName": name, "subsidiary": {"id": "1"}, "currency": {"id": "1"}}


def _records_with(sandbox: Sandbox, rtype: str, eid: str) -> list[dict[str, Any]]:
    return [r for r in sandbox.netsuite_records(rtype) if r.get("externalId") == eid]


# -- concurrency limit ---------------------------------------------------------------------


def test_a_request_beyond_the_concurrency_limit_is_429(ns: NetSuite, sandbox: Sandbox) -> None:
    faults = sandbox.faults
    faults.set_concurrency_limit("netsuite", 2)
    faults.hold("netsuite")

    def held_call() -> int:
        with requests.Session() as session:
            return NetSuite(session, sandbox).call("GET", SUBSIDIARY).status_code

    with ThreadPoolExecutor(2) as pool:
        held = [pool.submit(held_call) for _ in range(2)]
        assert faults.wait_in_flight("netsuite", 2), "two requests should be in flight"
        over = ns.call("GET", SUBSIDIARY)
        assert over.status_code == 429
        assert over.json()["o:errorDetails"][0]["o:errorCode"] == "CONCURRENCY_LIMIT_EXCEEDED"
        # NetSuite documents no Retry-After for its concurrency limit.
        assert "Retry-After" not in over.headers
        faults.release("netsuite")
        assert [f.result(timeout=10) for f in held] == [200, 200]
    assert faults.in_flight("netsuite") == 0
    # The slots are free again; with the limit removed nothing is refused.
    assert ns.call("GET", SUBSIDIARY).status_code == 200
    faults.set_concurrency_limit("netsuite", None)
    assert faults.describe()["concurrency_limit"] == {}


# -- maintenance windows -------------------------------------------------------------------


def test_a_counted_maintenance_window_answers_503_then_recovers(
    ns: NetSuite, sandbox: Sandbox
) -> None:
    sandbox.faults.maintenance("netsuite", requests=2, retry_after_s=7)
    for _ in range(2):
        resp = ns.call("GET", SUBSIDIARY)
        assert (resp.status_code, resp.headers["Retry-After"]) == (503, "7")
        assert resp.json()["o:errorDetails"][0]["o:errorCode"] == "SERVICE_UNAVAILABLE"
    assert ns.call("GET", SUBSIDIARY).status_code == 200


def test_a_timed_maintenance_window_counts_down_its_retry_after(
    ns: NetSuite, sandbox: Sandbox, monkeypatch: pytest.MonkeyPatch
) -> None:
    now = [1000.0]
    monkeypatch.setattr(sandbox.faults, "clock", lambda: now[0])
    sandbox.faults.maintenance("netsuite", seconds=90)
    first = ns.call("GET", SUBSIDIARY)
    assert (first.status_code, first.headers["Retry-After"]) == (503, "90")
    now[0] += 29.5
    # Writes and queries are refused alike while the window lasts.
    put = ns.call("PUT", f"{REST}/record/v1/customer/eid:SF-MAINT", _customer_body("Maint"))
    assert (put.status_code, put.headers["Retry-After"]) == (503, "61")
    now[0] += 61
    assert ns.call("GET", SUBSIDIARY).status_code == 200
    assert _records_with(sandbox, "customer", "SF-MAINT") == []
    assert sandbox.faults.describe()["maintenance"] == []


# -- commit-then-timeout -------------------------------------------------------------------


def test_commit_then_timeout_leaves_one_committed_document(ns: NetSuite, sandbox: Sandbox) -> None:
    sandbox.faults.commit_then_timeout("netsuite", count=1, stall_s=2.0)
    url = ns.env["NETSUITE_BASE_URL"] + f"{REST}/record/v1/customer/eid:SF-CTT1"
    with pytest.raises(requests.exceptions.ReadTimeout):
        ns.http.put(
            url,
            data=simplejson.dumps(_customer_body("Committed Co")),
            headers={
                "Authorization": ns.auth("PUT", url),
                "Content-Type": "application/json",
            },
            timeout=(5, 0.3),
        )
    # The client saw nothing, yet NetSuite holds the document.
    found = ns.call("GET", f"{REST}/record/v1/customer/eid:SF-CTT1")
    assert found.status_code == 200
    assert found.json()["companyName"] == "Committed Co"
    # Resending the upsert finds it: still one document, same id.
    again = ns.call("PUT", f"{REST}/record/v1/customer/eid:SF-CTT1", _customer_body("Committed Co"))
    assert again.status_code == 204
    assert again.headers["Location"].rsplit("/", 1)[1] == found.json()["id"]
    assert len(_records_with(sandbox, "customer", "SF-CTT1")) == 1


def test_commit_then_drop_closes_the_connection_without_an_answer(
    ns: NetSuite, sandbox: Sandbox
) -> None:
    sandbox.faults.commit_then_timeout("netsuite", count=1, stall_s=0)
    with pytest.raises(requests.exceptions.ConnectionError):
        ns.call("PUT", f"{REST}/record/v1/customer/eid:SF-CTT2", _customer_body("Dropped Co"))
    assert ns.call("GET", f"{REST}/record/v1/customer/eid:SF-CTT2").status_code == 200
    assert len(_records_with(sandbox, "customer", "SF-CTT2")) == 1


def test_commit_then_timeout_spares_reads_queries_and_refused_writes(
    ns: NetSuite, sandbox: Sandbox
) -> None:
    sandbox.faults.commit_then_timeout("netsuite", count=1, stall_s=0)
    assert ns.call("GET", SUBSIDIARY).status_code == 200
    assert ns.suiteql("SELECT id FROM customer WHERE externalid = 'x'", limit=5).status_code == 200
    refused = ns.call("PUT", f"{REST}/record/v1/customer/eid:SF-CTT3", {"companyName": "No Sub"})
    assert refused.status_code == 400
    (armed,) = sandbox.faults.describe()["commit_then_timeout"]
    assert armed["remaining"] == 1


# -- the admin endpoint --------------------------------------------------------------------


def _admin(sandbox: Sandbox, body: dict[str, Any]) -> requests.Response:
    return requests.post(
        sandbox.url("netsuite") + "/__sandbox/faults", data=simplejson.dumps(body), timeout=10
    )


def test_the_admin_endpoint_arms_and_clears_every_kind(ns: NetSuite, sandbox: Sandbox) -> None:
    resp = _admin(sandbox, {"kind": "maintenance", "requests": 1, "retry_after_s": 3})
    assert resp.status_code == 200
    assert resp.json()["maintenance"][0]["requests_left"] == 1
    assert ns.call("GET", SUBSIDIARY).status_code == 503
    assert ns.call("GET", SUBSIDIARY).status_code == 200

    armed = _admin(sandbox, {"kind": "concurrency_limit", "limit": 5}).json()
    assert armed["concurrency_limit"] == {"netsuite": {"limit": 5, "retry_after_s": None}}
    armed = _admin(sandbox, {"kind": "commit_then_timeout", "count": 2, "stall_s": 1.5}).json()
    assert armed["commit_then_timeout"][0]["remaining"] == 2
    assert _admin(sandbox, {"kind": "latency", "seconds": 0.01}).json()["latency_s"] == {
        "netsuite": 0.01
    }
    assert _admin(sandbox, {"status": 500, "count": 1}).json()["armed"] == 1

    cleared = _admin(sandbox, {"clear": True}).json()
    assert cleared["armed"] == 0
    assert cleared["maintenance"] == cleared["commit_then_timeout"] == []
    assert cleared["concurrency_limit"] == cleared["latency_s"] == {}
    for bad in (
        {"kind": "flood"},
        {"kind": "maintenance"},
        {"kind": "concurrency_limit", "limit": 0},
    ):
        assert _admin(sandbox, bad).status_code == 400


# -- the posting engine through the faults -------------------------------------------------

ERP = "netsuite"


@pytest.fixture
def box(tmp_path: Path) -> Iterator[Sandbox]:
    sandbox = Sandbox(tmp_path / "sb")
    sandbox.seed(generate(CompanySpec(accounts=10, months=2, seed=3, end=TEST_END)))
    sandbox.start()
    yield sandbox
    sandbox.stop()


def _client(box: Sandbox, sleeps: list[float]) -> NetSuiteClient:
    env = box.env
    return NetSuiteResource(
        account_id=env["NETSUITE_ACCOUNT_ID"],
        base_url=env["NETSUITE_BASE_URL"],
        consumer_key=env["NETSUITE_CONSUMER_KEY"],
        consumer_secret=env["NETSUITE_CONSUMER_SECRET"],
        token_id=env["NETSUITE_TOKEN_ID"],
        token_secret=env["NETSUITE_TOKEN_SECRET"],
    ).get_client(
        # A short read timeout: the simulator's stall (0.6 s) outlasts it.
        http_options=HttpOptions(
            timeout=(5.0, 0.2), max_attempts=3, sleep=sleeps.append, rng=random.Random(5)
        )
    )


def _engine(warehouse_engine: Engine, client: NetSuiteClient, run_id: str) -> PostingEngine:
    return PostingEngine(
        warehouse_engine,
        client,
        erp=ERP,
        run_id=run_id,
        is_run_alive=lambda _run: False,
        rng=random.Random(7),
    )


def _docs(invoices: int) -> list[LedgerDoc]:
    customer = LedgerDoc(
        ERP,
        "customer",
        "SF_fault",
        "salesforce",
        "fault",
        "fs-fault",
        None,
        {
            "externalId": "SF_fault",
            "companyName": "Fault Tolerant Inc",
            "subsidiary": {"id": "1"},
            "currency": {"id": "1"},
        },
    )
    docs = [customer]
    for n in range(invoices):
        external_id = f"STRIPE_in_fault{n}"
        docs.append(
            LedgerDoc(
                ERP,
                "invoice",
                external_id,
                "stripe",
                f"in_fault{n}",
                f"fs-in{n}",
                "2026-10-01",
                {
                    "externalId": external_id,
                    "entity": {"$ref": ["customer", "SF_fault"]},
                    "tranDate": "2026-10-01",
                    "subsidiary": {"id": "1"},
                    "currency": {"id": "1"},
                    "memo": f"fault test {n}",
                    "item": {
                        "items": [{"item": {"id": "101"}, "amount": Decimal(f"{100 + n}.50")}]
                    },
                },
            )
        )
    return docs


def _states(engine: Engine) -> Counter[str]:
    with engine.connect() as conn:
        return Counter(
            r.state
            for r in conn.execute(
                sa.text("SELECT state FROM posting_ledger WHERE erp = :erp"), {"erp": ERP}
            )
        )


def test_posting_through_commit_then_timeout_and_maintenance_posts_each_invoice_once(
    warehouse_engine: Engine, box: Sandbox
) -> None:
    invoices = 6
    docs = _docs(invoices)
    with warehouse_engine.begin() as conn:
        ledger.enqueue(conn, docs[:1], run_id="derive", repost_changed=True)
        ledger.enqueue(conn, docs[1:], run_id="derive", repost_changed=True)
    sleeps: list[float] = []
    with _client(box, sleeps) as client:
        first = _engine(warehouse_engine, client, "run-1")
        first.post("customer")
        # Four writes commit and time out: the first invoice's three attempts (its retries
        # run out: an ambiguous outcome the engine settles by lookup) and the second's first.
        box.faults.commit_then_timeout("netsuite", count=4, stall_s=0.6)
        first.post("invoice", date_from="2026-10-01", date_to="2026-10-02")
        assert first.stats.posted == 1 + invoices
        assert box.faults.describe()["commit_then_timeout"] == []

    # The ERP goes down for maintenance in the middle of the next run.
    more = _docs(invoices + 4)[invoices + 1 :]
    with warehouse_engine.begin() as conn:
        ledger.enqueue(conn, more, run_id="derive", repost_changed=True)
    box.faults.maintenance("netsuite", requests=3, retry_after_s=1)
    with _client(box, sleeps) as client:
        paused = _engine(warehouse_engine, client, "run-2")
        paused.post("invoice", date_from="2026-10-01", date_to="2026-10-02")
    assert paused.stats.paused
    assert (paused.stats.posted, paused.stats.deferred) == (0, 1)
    assert _states(warehouse_engine) == Counter(posted=1 + invoices, pending=4)

    # The window is over; once the deferred row is due, a second run drains the backlog.
    past = (dt.datetime.now(dt.UTC) - dt.timedelta(seconds=1)).isoformat(timespec="microseconds")
    with warehouse_engine.begin() as conn:
        conn.execute(sa.text("UPDATE posting_ledger SET next_attempt_at = :t"), {"t": past})
    with _client(box, sleeps) as client:
        after = _engine(warehouse_engine, client, "run-3")
        after.recover()
        after.post("invoice", date_from="2026-10-01", date_to="2026-10-02")
    assert after.stats.posted == 4

    assert _states(warehouse_engine) == Counter(posted=1 + invoices + 4)
    records = box.netsuite_records("invoice")
    counts = Counter(r["externalId"] for r in records)
    assert counts == Counter({f"STRIPE_in_fault{n}": 1 for n in range(invoices + 4)})
    with warehouse_engine.connect() as conn:
        known = dict(
            conn.execute(
                sa.text(
                    "SELECT external_id, erp_internal_id FROM posting_ledger "
                    "WHERE erp = :erp AND doc_type = 'invoice'"
                ),
                {"erp": ERP},
            ).all()
        )
        assert ledger.verify_journal(conn) is None
    assert known == {r["externalId"]: r["id"] for r in records}
    # The first invoice was settled by lookup after its retries ran out.
    with warehouse_engine.connect() as conn:
        details = [
            r.detail
            for r in conn.execute(
                sa.text(
                    "SELECT detail FROM posting_ledger_journal WHERE external_id = :x ORDER BY seq"
                ),
                {"x": "STRIPE_in_fault0"},
            )
        ]
    assert "ambiguous send settled by lookup: found" in details
