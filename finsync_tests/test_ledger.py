"""The posting ledger: its state machine, enqueue, claim, transitions and the hash-chained journal.

The database tests run on a real SQLite file and on a fresh PostgreSQL schema.
"""

import datetime as dt
import itertools
import threading
from decimal import Decimal
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from finsync_pipeline import ledger
from finsync_pipeline.ledger import (
    STATES,
    TRANSITIONS,
    IllegalTransition,
    LedgerDoc,
    check_transition,
)
from finsync_pipeline.posting_flows import awaiting_windows

ERP = "netsuite"
LEGAL = [(f, t) for f in STATES for t in sorted(TRANSITIONS[f])]
ILLEGAL = [(f, t) for f in STATES for t in STATES if t not in TRANSITIONS[f]]


def doc(
    external_id: str,
    payload: Any = None,
    *,
    doc_type: str = "customer",
    depth: int = 0,
    partition_date: str | None = None,
) -> LedgerDoc:
    return LedgerDoc(
        erp=ERP,
        doc_type=doc_type,
        external_id=external_id,
        source_system="salesforce" if doc_type == "customer" else "stripe",
        source_id=external_id.split("_", 1)[-1],
        correlation_id=f"fs-{external_id.lower()}",
        partition_date=partition_date,
        payload={"companyName": external_id} if payload is None else payload,
        depth=depth,
    )


def row(conn: Connection, external_id: str, doc_type: str = "customer") -> dict[str, Any]:
    found = conn.execute(
        sa.text(
            "SELECT * FROM posting_ledger WHERE erp = :erp AND doc_type = :t AND external_id = :x"
        ),
        {"erp": ERP, "t": doc_type, "x": external_id},
    ).one()
    return dict(found._mapping)


def journal(conn: Connection) -> list[dict[str, Any]]:
    return [
        dict(r._mapping)
        for r in conn.execute(sa.text("SELECT * FROM posting_ledger_journal ORDER BY seq"))
    ]


def claim(conn: Connection, run_id: str, limit: int = 50, **kw: Any) -> list[str]:
    kw.setdefault("doc_type", "customer")
    return [c.external_id for c in ledger.claim(conn, erp=ERP, run_id=run_id, limit=limit, **kw)]


def move(conn: Connection, external_id: str, to_state: str, **kw: Any) -> str:
    kw.setdefault("doc_type", "customer")
    return ledger.transition(
        conn, erp=ERP, external_id=external_id, to_state=to_state, run_id="run-t", **kw
    )


def put_in_state(conn: Connection, external_id: str, state: str, **kw: Any) -> None:
    """Enqueue a document and walk it along legal edges until it is in ``state``."""
    doc_type = kw.get("doc_type", "customer")
    ledger.enqueue(conn, [doc(external_id, **kw)], run_id="run-t", repost_changed=True)
    if state == "pending":
        return
    claimed = claim(conn, "run-t", doc_type=doc_type, limit=1000)
    assert external_id in claimed
    for other in claimed:
        if other != external_id:
            move(conn, other, "pending", doc_type=doc_type)
    if state != "in_flight":
        move(conn, external_id, state, doc_type=doc_type)


def iso_in(seconds: float) -> str:
    return (dt.datetime.now(dt.UTC) + dt.timedelta(seconds=seconds)).isoformat(
        timespec="microseconds"
    )


# -- the state machine (pure) ---------------------------------------------------------------


def test_the_machine_names_every_state_once() -> None:
    assert set(TRANSITIONS) == set(STATES)
    assert all(targets <= set(STATES) for targets in TRANSITIONS.values())


@pytest.mark.parametrize(("from_state", "to_state"), LEGAL, ids=[f"{f}->{t}" for f, t in LEGAL])
def test_legal_transition_passes(from_state: str, to_state: str) -> None:
    check_transition(from_state, to_state)


@pytest.mark.parametrize(("from_state", "to_state"), ILLEGAL, ids=[f"{f}->{t}" for f, t in ILLEGAL])
def test_illegal_transition_raises(from_state: str, to_state: str) -> None:
    with pytest.raises(IllegalTransition, match=f"{from_state} -> {to_state}"):
        check_transition(from_state, to_state)


def test_posted_is_left_only_to_be_upserted_again() -> None:
    # Nothing may take a posted document to rejected/dead/in_flight directly: it was sent.
    assert TRANSITIONS["posted"] == frozenset({"pending"})
    assert "posted" in TRANSITIONS["in_flight"]


def test_a_new_row_starts_pending() -> None:
    check_transition(None, "pending")


@pytest.mark.parametrize("to_state", [s for s in STATES if s != "pending"])
def test_a_new_row_cannot_start_elsewhere(to_state: str) -> None:
    with pytest.raises(IllegalTransition, match="starts pending"):
        check_transition(None, to_state)


@pytest.mark.parametrize("from_state", [None, *STATES])
def test_unknown_target_state_raises(from_state: str | None) -> None:
    with pytest.raises(IllegalTransition, match="unknown ledger state"):
        check_transition(from_state, "archived")


def test_payload_hash_ignores_key_order_but_not_amounts() -> None:
    a = {"b": 1, "a": {"amount": Decimal("10.00")}}
    b = {"a": {"amount": Decimal("10.00")}, "b": 1}
    assert ledger.payload_hash(a) == ledger.payload_hash(b)
    assert ledger.payload_hash(a) != ledger.payload_hash(
        {"b": 1, "a": {"amount": Decimal("10.01")}}
    )
    # Amounts survive the round trip as exact decimals, never floats.
    assert ledger.loads(ledger.dumps(a))["a"]["amount"] == Decimal("10.00")
    assert isinstance(ledger.loads(ledger.dumps(a))["a"]["amount"], Decimal)


# -- enqueue -------------------------------------------------------------------------------


def test_enqueue_new_rows_start_pending_with_no_attempts(warehouse_engine: Engine) -> None:
    with warehouse_engine.begin() as conn:
        result = ledger.enqueue(
            conn,
            [doc("SF_a", {"amount": Decimal("1.10")}), doc("SF_b", depth=1)],
            run_id="run-1",
            repost_changed=False,
        )
        a, b = row(conn, "SF_a"), row(conn, "SF_b")
        entries = journal(conn)
    assert result == ledger.EnqueueResult(new=2, changed=0, unchanged=0, changed_after_posting=[])
    assert (a["state"], a["attempts"], a["claimed_by"], a["erp_internal_id"]) == (
        "pending",
        0,
        None,
        None,
    )
    assert ledger.loads(a["payload"]) == {"amount": Decimal("1.10")}
    assert a["payload_hash"] == ledger.payload_hash({"amount": Decimal("1.10")})
    assert b["depth"] == 1
    assert [(e["external_id"], e["from_state"], e["to_state"], e["run_id"]) for e in entries] == [
        ("SF_a", None, "pending", "run-1"),
        ("SF_b", None, "pending", "run-1"),
    ]


def test_enqueue_of_nothing_changes_nothing(warehouse_engine: Engine) -> None:
    with warehouse_engine.begin() as conn:
        assert ledger.enqueue(conn, [], run_id="r", repost_changed=True) == ledger.EnqueueResult(
            0, 0, 0, []
        )
        assert journal(conn) == []


def test_enqueue_unchanged_payload_is_a_no_op(warehouse_engine: Engine) -> None:
    with warehouse_engine.begin() as conn:
        ledger.enqueue(conn, [doc("SF_a", {"x": 1, "y": 2})], run_id="r1", repost_changed=True)
        before = row(conn, "SF_a")
        # Same content, different key order: the canonical JSON makes it the same document.
        result = ledger.enqueue(
            conn, [doc("SF_a", {"y": 2, "x": 1})], run_id="r2", repost_changed=True
        )
        assert result == ledger.EnqueueResult(0, 0, 1, [])
        assert row(conn, "SF_a") == before
        assert len(journal(conn)) == 1


def test_enqueue_changed_pending_payload_is_replaced(warehouse_engine: Engine) -> None:
    with warehouse_engine.begin() as conn:
        ledger.enqueue(conn, [doc("SF_a", {"name": "Old"})], run_id="r1", repost_changed=False)
        result = ledger.enqueue(
            conn, [doc("SF_a", {"name": "New"}, depth=2)], run_id="r2", repost_changed=False
        )
        after = row(conn, "SF_a")
        last = journal(conn)[-1]
    assert result == ledger.EnqueueResult(0, 1, 0, [])
    assert after["state"] == "pending"
    assert ledger.loads(after["payload"]) == {"name": "New"}
    assert after["payload_hash"] == ledger.payload_hash({"name": "New"})
    assert after["depth"] == 2
    assert (last["from_state"], last["to_state"], last["detail"]) == (
        "pending",
        "pending",
        "payload changed",
    )


@pytest.mark.parametrize("stuck", ["rejected", "dead"])
def test_enqueue_change_sends_a_rejected_or_dead_row_back_to_pending(
    warehouse_engine: Engine, stuck: str
) -> None:
    with warehouse_engine.begin() as conn:
        put_in_state(conn, "SF_a", stuck)
        move_back_at = iso_in(3600)
        conn.execute(
            sa.text("UPDATE posting_ledger SET next_attempt_at = :t WHERE external_id = 'SF_a'"),
            {"t": move_back_at},
        )
        # The same payload again is not a fix: the row stays where it is.
        same = ledger.enqueue(conn, [doc("SF_a")], run_id="r2", repost_changed=False)
        assert same.unchanged == 1
        assert row(conn, "SF_a")["state"] == stuck
        fixed = ledger.enqueue(
            conn, [doc("SF_a", {"companyName": "Fixed"})], run_id="r3", repost_changed=False
        )
        after = row(conn, "SF_a")
    assert fixed == ledger.EnqueueResult(0, 1, 0, [])
    assert after["state"] == "pending"
    assert after["next_attempt_at"] is None
    assert ledger.loads(after["payload"]) == {"companyName": "Fixed"}


def test_enqueue_reposts_a_changed_posted_customer_when_asked(warehouse_engine: Engine) -> None:
    with warehouse_engine.begin() as conn:
        put_in_state(conn, "SF_a", "posted")
        result = ledger.enqueue(
            conn, [doc("SF_a", {"companyName": "Renamed"})], run_id="r2", repost_changed=True
        )
        after = row(conn, "SF_a")
    assert result == ledger.EnqueueResult(0, 1, 0, [])
    assert after["state"] == "pending"
    assert ledger.loads(after["payload"]) == {"companyName": "Renamed"}


def test_enqueue_reports_a_changed_posted_invoice_and_keeps_it_posted(
    warehouse_engine: Engine,
) -> None:
    posted_payload = {"total": Decimal("100.00")}
    with warehouse_engine.begin() as conn:
        ledger.enqueue(
            conn,
            [doc("STRIPE_in_1", posted_payload, doc_type="invoice")],
            run_id="r1",
            repost_changed=False,
        )
        claim(conn, "r1", doc_type="invoice")
        move(
            conn,
            "STRIPE_in_1",
            "posted",
            doc_type="invoice",
            erp_internal_id="5001",
            posted_hash=ledger.payload_hash(posted_payload),
        )
        result = ledger.enqueue(
            conn,
            [doc("STRIPE_in_1", {"total": Decimal("90.00")}, doc_type="invoice")],
            run_id="r2",
            repost_changed=False,
        )
        after = row(conn, "STRIPE_in_1", "invoice")
    assert result.changed_after_posting == ["STRIPE_in_1"]
    assert (result.new, result.changed) == (0, 0)
    assert after["state"] == "posted"
    assert after["erp_internal_id"] == "5001"
    # History is not edited: the ledger still holds what the ERP holds.
    assert ledger.loads(after["payload"]) == posted_payload


def test_enqueue_leaves_an_in_flight_payload_to_its_claim_holder(warehouse_engine: Engine) -> None:
    with warehouse_engine.begin() as conn:
        put_in_state(conn, "SF_a", "in_flight")
        result = ledger.enqueue(
            conn, [doc("SF_a", {"companyName": "Changed"})], run_id="r2", repost_changed=True
        )
        after = row(conn, "SF_a")
    assert result.unchanged == 1
    assert after["state"] == "in_flight"
    assert ledger.loads(after["payload"]) == {"companyName": "SF_a"}


# -- claim ---------------------------------------------------------------------------------


def test_claims_by_two_runs_are_disjoint(warehouse_engine: Engine) -> None:
    with warehouse_engine.begin() as conn:
        ledger.enqueue(conn, [doc(f"SF_{i}") for i in range(5)], run_id="r", repost_changed=True)
    with warehouse_engine.begin() as conn:
        first = claim(conn, "run-a", limit=3)
    with warehouse_engine.begin() as conn:
        second = claim(conn, "run-b", limit=10)
        third = claim(conn, "run-c", limit=10)
        holders = {r: row(conn, r)["claimed_by"] for r in first + second}
    assert len(first) == 3
    assert sorted(first + second) == [f"SF_{i}" for i in range(5)]
    assert not set(first) & set(second)
    assert third == []
    assert holders == {**dict.fromkeys(first, "run-a"), **dict.fromkeys(second, "run-b")}


def test_claim_is_exclusive_when_another_run_wins_the_race(warehouse_engine: Engine) -> None:
    """Run B reads the pending rows, then run A claims and commits them before B's update.

    B must not return a row A already holds: the conditional UPDATE decides, not the SELECT.
    """
    with warehouse_engine.begin() as conn:
        ledger.enqueue(conn, [doc(f"SF_{i}") for i in range(4)], run_id="r", repost_changed=True)
    won_by_a: list[str] = []

    def before_execute(conn: Connection, cursor: Any, statement: str, *args: Any) -> None:
        if statement.lstrip().startswith("UPDATE posting_ledger") and not won_by_a:
            with warehouse_engine.begin() as other:
                won_by_a.extend(claim(other, "run-a", limit=2))

    with warehouse_engine.connect() as b_conn:
        sa.event.listen(b_conn, "before_cursor_execute", before_execute)
        with b_conn.begin():
            got_by_b = claim(b_conn, "run-b", limit=10)
        sa.event.remove(b_conn, "before_cursor_execute", before_execute)
    with warehouse_engine.connect() as conn:
        holders = {f"SF_{i}": row(conn, f"SF_{i}")["claimed_by"] for i in range(4)}
        verified = ledger.verify_journal(conn)
    assert won_by_a == ["SF_0", "SF_1"]
    assert got_by_b == ["SF_2", "SF_3"]
    assert holders == {"SF_0": "run-a", "SF_1": "run-a", "SF_2": "run-b", "SF_3": "run-b"}
    assert verified is None


def test_claim_waits_for_next_attempt_at(warehouse_engine: Engine) -> None:
    with warehouse_engine.begin() as conn:
        put_in_state(conn, "SF_later", "in_flight")
        move(conn, "SF_later", "pending", next_attempt_at=iso_in(600))
        put_in_state(conn, "SF_due", "in_flight")
        move(conn, "SF_due", "pending", next_attempt_at=iso_in(-1))
        put_in_state(conn, "SF_new", "pending")
        assert claim(conn, "run-x") == ["SF_due", "SF_new"]
        assert row(conn, "SF_later")["state"] == "pending"


def test_claim_respects_the_partition_range(warehouse_engine: Engine) -> None:
    with warehouse_engine.begin() as conn:
        ledger.enqueue(
            conn,
            [
                doc("STRIPE_before", doc_type="invoice", partition_date="2026-10-01"),
                doc("STRIPE_first", doc_type="invoice", partition_date="2026-10-02"),
                doc("STRIPE_last", doc_type="invoice", partition_date="2026-10-03"),
                doc("STRIPE_after", doc_type="invoice", partition_date="2026-10-04"),
                doc("STRIPE_undated", doc_type="invoice", partition_date=None),
            ],
            run_id="r",
            repost_changed=False,
        )
        got = claim(conn, "run-x", doc_type="invoice", date_from="2026-10-02", date_to="2026-10-04")
        rest = claim(conn, "run-y", doc_type="invoice")
    # date_to is exclusive, like a Dagster partition window.
    assert got == ["STRIPE_first", "STRIPE_last"]
    assert sorted(rest) == ["STRIPE_after", "STRIPE_before", "STRIPE_undated"]


def test_claim_respects_depth_and_doc_type(warehouse_engine: Engine) -> None:
    with warehouse_engine.begin() as conn:
        ledger.enqueue(
            conn,
            [doc("SF_top", depth=0), doc("SF_child", depth=1), doc("SF_grandchild", depth=2)],
            run_id="r",
            repost_changed=True,
        )
        ledger.enqueue(
            conn, [doc("STRIPE_x", doc_type="invoice")], run_id="r", repost_changed=False
        )
        assert claim(conn, "run-x", depth=1) == ["SF_child"]
        assert claim(conn, "run-x", depth=5) == []
        assert claim(conn, "run-x", doc_type="invoice") == ["STRIPE_x"]


def test_claim_order_is_parents_first(warehouse_engine: Engine) -> None:
    with warehouse_engine.begin() as conn:
        # Names sort the other way round, so only the depth can put the parent first.
        ledger.enqueue(
            conn,
            [doc("SF_a_grandchild", depth=2), doc("SF_b_child", depth=1), doc("SF_z_parent")],
            run_id="r",
            repost_changed=True,
        )
        firsts = [claim(conn, f"run-{i}", limit=1) for i in range(3)]
    assert firsts == [["SF_z_parent"], ["SF_b_child"], ["SF_a_grandchild"]]


def test_claim_hands_back_the_payload_and_records_the_holder(warehouse_engine: Engine) -> None:
    payload = {"item": {"items": [{"amount": Decimal("10.05")}]}}
    with warehouse_engine.begin() as conn:
        ledger.enqueue(
            conn,
            [doc("STRIPE_1", payload, doc_type="invoice", partition_date="2026-10-02")],
            run_id="r",
            repost_changed=False,
        )
        (got,) = ledger.claim(conn, erp=ERP, doc_type="invoice", run_id="run-7", limit=5)
        stored = row(conn, "STRIPE_1", "invoice")
        last = journal(conn)[-1]
    assert got.payload == payload
    assert got.payload_hash == ledger.payload_hash(payload)
    assert (got.partition_date, got.attempts, got.correlation_id) == (
        "2026-10-02",
        0,
        "fs-stripe_1",
    )
    assert (stored["state"], stored["claimed_by"]) == ("in_flight", "run-7")
    assert stored["claimed_at"] is not None
    assert (last["to_state"], last["run_id"], last["detail"]) == ("in_flight", "run-7", "claimed")


# -- transition ----------------------------------------------------------------------------


def test_posting_records_the_erp_id_hash_and_attempt(warehouse_engine: Engine) -> None:
    with warehouse_engine.begin() as conn:
        put_in_state(conn, "SF_a", "in_flight")
        move(conn, "SF_a", "pending", detail="HTTP 503", count_attempt=True)
        claim(conn, "run-2")
        previous = move(
            conn,
            "SF_a",
            "posted",
            erp_internal_id="1001",
            posted_hash="h" * 64,
            count_attempt=True,
            expect_state="in_flight",
        )
        after = row(conn, "SF_a")
    assert previous == "in_flight"
    assert after["state"] == "posted"
    assert after["attempts"] == 2
    assert after["erp_internal_id"] == "1001"
    assert after["posted_hash"] == "h" * 64
    assert after["posted_at"] is not None
    assert after["claimed_by"] is None
    # The transient error that preceded the success is not an open problem any more.
    assert after["last_error"] is None


def test_rejection_keeps_the_erp_reason(warehouse_engine: Engine) -> None:
    with warehouse_engine.begin() as conn:
        put_in_state(conn, "SF_a", "in_flight")
        move(
            conn,
            "SF_a",
            "rejected",
            detail="Invalid Field Value 9 for subsidiary",
            count_attempt=True,
        )
        after = row(conn, "SF_a")
        last = journal(conn)[-1]
    assert (after["state"], after["attempts"], after["claimed_by"]) == ("rejected", 1, None)
    assert after["last_error"] == "Invalid Field Value 9 for subsidiary"
    assert after["posted_hash"] is None
    assert last["detail"] == "Invalid Field Value 9 for subsidiary"


def test_deferral_sets_the_next_attempt(warehouse_engine: Engine) -> None:
    due = iso_in(120)
    with warehouse_engine.begin() as conn:
        put_in_state(conn, "SF_a", "in_flight")
        move(conn, "SF_a", "pending", detail="busy", count_attempt=True, next_attempt_at=due)
        after = row(conn, "SF_a")
    assert (after["state"], after["attempts"], after["next_attempt_at"]) == ("pending", 1, due)
    assert after["claimed_by"] is None


def test_expect_state_mismatch_raises_and_changes_nothing(warehouse_engine: Engine) -> None:
    with warehouse_engine.begin() as conn:
        put_in_state(conn, "SF_a", "pending")
        before, entries = row(conn, "SF_a"), len(journal(conn))
        with pytest.raises(IllegalTransition, match="is pending, expected in_flight"):
            # pending -> in_flight is legal, but this caller believed it already held the row.
            move(conn, "SF_a", "in_flight", expect_state="in_flight")
        assert row(conn, "SF_a") == before
        assert len(journal(conn)) == entries


def test_transition_of_an_unknown_row_raises(warehouse_engine: Engine) -> None:
    with warehouse_engine.begin() as conn, pytest.raises(IllegalTransition, match="no ledger row"):
        move(conn, "SF_nobody", "posted")


def test_every_illegal_transition_is_refused_on_the_table(warehouse_engine: Engine) -> None:
    with warehouse_engine.begin() as conn:
        for n, (from_state, to_state) in enumerate(ILLEGAL):
            external_id = f"SF_{n}"
            put_in_state(conn, external_id, from_state)
            before, entries = row(conn, external_id), len(journal(conn))
            with pytest.raises(IllegalTransition):
                move(conn, external_id, to_state)
            assert row(conn, external_id) == before, (from_state, to_state)
            assert len(journal(conn)) == entries


# -- the journal ---------------------------------------------------------------------------


def _history(conn: Connection) -> None:
    ledger.enqueue(conn, [doc(f"SF_{i}") for i in range(3)], run_id="r1", repost_changed=True)
    claim(conn, "r2")
    move(conn, "SF_0", "posted", erp_internal_id="1", posted_hash="x")
    move(conn, "SF_1", "rejected", detail="bad subsidiary")
    move(conn, "SF_2", "pending", detail="HTTP 503")


def test_journal_chain_verifies(warehouse_engine: Engine) -> None:
    with warehouse_engine.begin() as conn:
        _history(conn)
        entries = journal(conn)
        assert ledger.verify_journal(conn) is None
    assert [e["seq"] for e in entries] == list(range(1, 10))
    assert entries[0]["prev_hash"] == ledger.GENESIS_HASH
    assert all(b["prev_hash"] == a["hash"] for a, b in itertools.pairwise(entries))


def test_empty_journal_verifies(warehouse_engine: Engine) -> None:
    with warehouse_engine.connect() as conn:
        assert ledger.verify_journal(conn) is None


@pytest.mark.parametrize(
    ("column", "value"),
    [
        pytest.param("detail", "nothing to see", id="detail"),
        pytest.param("to_state", "posted", id="state"),
        pytest.param("run_id", "someone-else", id="run-id"),
        pytest.param("at", "2020-01-01T00:00:00.000000+00:00", id="time"),
    ],
)
def test_journal_detects_an_edited_row(warehouse_engine: Engine, column: str, value: str) -> None:
    with warehouse_engine.begin() as conn:
        _history(conn)
        conn.execute(
            sa.text(f"UPDATE posting_ledger_journal SET {column} = :v WHERE seq = 5"), {"v": value}
        )
        assert ledger.verify_journal(conn) == 5


def test_journal_detects_an_edited_row_whose_own_hash_was_recomputed(
    warehouse_engine: Engine,
) -> None:
    # A forger who rewrites a row and its own hash still breaks the next row's link.
    with warehouse_engine.begin() as conn:
        _history(conn)
        r = conn.execute(sa.text("SELECT * FROM posting_ledger_journal WHERE seq = 4")).one()
        forged = ledger.seal(r.prev_hash, {**r._mapping, "to_state": "posted"}, key=None)
        conn.execute(
            sa.text(
                "UPDATE posting_ledger_journal SET to_state = 'posted', hash = :h WHERE seq = 4"
            ),
            {"h": forged},
        )
        assert ledger.verify_journal(conn) == 5


def test_journal_detects_a_deleted_middle_row(warehouse_engine: Engine) -> None:
    with warehouse_engine.begin() as conn:
        _history(conn)
        conn.execute(sa.text("DELETE FROM posting_ledger_journal WHERE seq = 6"))
        # The row after the gap no longer links to its predecessor.
        assert ledger.verify_journal(conn) == 7


# -- read helpers --------------------------------------------------------------------------


def test_posted_ids_maps_only_posted_documents(warehouse_engine: Engine) -> None:
    with warehouse_engine.begin() as conn:
        put_in_state(conn, "SF_posted", "in_flight")
        move(conn, "SF_posted", "posted", erp_internal_id="1042")
        put_in_state(conn, "SF_pending", "pending")
        put_in_state(conn, "SF_rejected", "rejected")
        got = ledger.posted_ids(
            conn,
            erp=ERP,
            doc_type="customer",
            external_ids=["SF_posted", "SF_pending", "SF_rejected", "SF_unknown"],
        )
        other_erp = ledger.posted_ids(
            conn, erp="dynamics", doc_type="customer", external_ids=["SF_posted"]
        )
        other_type = ledger.posted_ids(
            conn, erp=ERP, doc_type="invoice", external_ids=["SF_posted"]
        )
        none = ledger.posted_ids(conn, erp=ERP, doc_type="customer", external_ids=[])
    assert got == {"SF_posted": "1042"}
    assert other_erp == other_type == none == {}


def test_state_counts_per_doc_type(warehouse_engine: Engine) -> None:
    with warehouse_engine.begin() as conn:
        for i, state in enumerate(["pending", "pending", "posted", "dead"]):
            put_in_state(conn, f"SF_{i}", state)
        put_in_state(conn, "STRIPE_1", "rejected", doc_type="invoice")
        counts = ledger.state_counts(conn, erp=ERP)
        other = ledger.state_counts(conn, erp="dynamics")
    assert counts == {
        "customer": {"pending": 2, "posted": 1, "dead": 1},
        "invoice": {"rejected": 1},
    }
    assert other == {}


def test_stale_in_flight_lists_rows_held_by_other_runs(warehouse_engine: Engine) -> None:
    with warehouse_engine.begin() as conn:
        ledger.enqueue(
            conn, [doc("SF_child", depth=1), doc("SF_parent")], run_id="r", repost_changed=True
        )
        assert claim(conn, "dead-run", limit=2) == ["SF_parent", "SF_child"]
        ledger.enqueue(conn, [doc("SF_mine"), doc("SF_waiting")], run_id="r", repost_changed=True)
        assert claim(conn, "me", limit=1) == ["SF_mine"]
        ledger.enqueue(
            conn, [doc("STRIPE_1", doc_type="invoice")], run_id="r", repost_changed=False
        )
        assert claim(conn, "other-run", doc_type="invoice") == ["STRIPE_1"]
        stale = ledger.stale_in_flight(conn, erp=ERP, run_id="me")
        from_elsewhere = ledger.stale_in_flight(conn, erp="dynamics", run_id="me")
    # Parents first, so settling them first frees their children.
    assert [(r.doc_type, r.external_id, r.holder) for r in stale] == [
        ("customer", "SF_parent", "dead-run"),
        ("invoice", "STRIPE_1", "other-run"),
        ("customer", "SF_child", "dead-run"),
    ]
    # Just claimed: every lease still holds.
    assert [r.lease_expired for r in stale] == [False, False, False]
    assert from_elsewhere == []


def test_concurrent_writers_keep_one_unbroken_journal(warehouse_engine: Engine) -> None:
    """Derive and posting write the ledger at the same time; the hash chain stays linear."""
    errors: list[BaseException] = []
    barrier = threading.Barrier(4)

    def writer(n: int) -> None:
        try:
            barrier.wait()
            for i in range(15):
                with warehouse_engine.begin() as conn:
                    ledger.enqueue(conn, [doc(f"W{n}_{i}")], run_id=f"run-{n}", repost_changed=True)
        except BaseException as e:  # collected and asserted below
            errors.append(e)

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    with warehouse_engine.connect() as conn:
        assert ledger.verify_journal(conn) is None
        seqs = [r["seq"] for r in journal(conn)]
    assert seqs == list(range(1, 61))


def test_documents_of_batch_flows_and_their_dependents_await_the_window(
    warehouse_engine: Engine,
) -> None:
    with warehouse_engine.begin() as conn:
        ledger.enqueue(
            conn,
            [
                doc("STRIPE_cn_1", {"memo": "a"}, doc_type="credit_memo"),
                doc("STRIPE_in_1", {"memo": "b"}, doc_type="invoice"),
                doc("STRIPE_in_2", {"memo": "c"}, doc_type="invoice"),
                doc("STRIPE_cn_2", {"memo": "d"}, doc_type="credit_memo"),
            ],
            run_id="r",
            repost_changed=False,
        )
        # in_2 waits for its customer, whose flow is batch; cn_2 has already posted.
        conn.execute(
            sa.text(
                "UPDATE posting_ledger SET waiting_for = 'customer:SF_1' "
                "WHERE external_id = 'STRIPE_in_2'"
            )
        )
        conn.execute(
            sa.text("UPDATE posting_ledger SET state = 'posted' WHERE external_id = 'STRIPE_cn_2'")
        )
        windows = {"credit_memo": "0 3 * * *", "customer": "0 4 * * *"}
        assert awaiting_windows(conn, ERP, windows) == {
            "STRIPE_cn_1": "0 3 * * *",
            "STRIPE_in_2": "0 4 * * *",
        }
        assert awaiting_windows(conn, ERP, {}) == {}


def test_work_held_past_its_lease_and_its_settlement_are_visible(warehouse_engine: Engine) -> None:
    from finsync_pipeline.exceptions_queue import stuck_work

    with warehouse_engine.begin() as conn:
        ledger.enqueue(
            conn, [doc("SF_stalled"), doc("SF_working")], run_id="r", repost_changed=True
        )
        assert claim(conn, "killed-run", limit=1) == ["SF_stalled"]
        assert claim(conn, "live-run", limit=1) == ["SF_working"]
        conn.execute(
            sa.text(
                "UPDATE posting_ledger SET lease_until = '2000-01-01T00:00:00+00:00' "
                "WHERE external_id = 'SF_stalled'"
            )
        )
        backlog = conn.execute(
            sa.text(
                "SELECT documents, held_past_lease, held_by FROM v_posting_backlog "
                "WHERE state = 'in_flight'"
            )
        ).one()
    assert (backlog.documents, backlog.held_past_lease) == (2, 1)
    assert set(backlog.held_by.split(",")) == {"killed-run", "live-run"}
    stuck = stuck_work(warehouse_engine)
    assert list(stuck.held_past_lease["external_id"]) == ["SF_stalled"]
    assert list(stuck.held_past_lease["held_by"]) == ["killed-run"]

    with warehouse_engine.begin() as conn:
        ledger.transition(
            conn,
            erp=ERP,
            doc_type="customer",
            external_id="SF_stalled",
            to_state="pending",
            run_id="next-run",
            detail="settled by lookup: run killed-run had not sent it",
            expect_state="in_flight",
            expect_holder="killed-run",
        )
    settled = stuck_work(warehouse_engine).settled
    assert settled[["external_id", "to_state", "settled_by"]].values.tolist() == [
        ["SF_stalled", "pending", "next-run"]
    ]
    assert "killed-run" in settled.at[0, "detail"]
    assert stuck_work(warehouse_engine).held_past_lease.empty


# -- tamper evidence -------------------------------------------------------------------------

KEY = "a-key-only-the-operator-holds-0123456789"


@pytest.fixture
def keyed(monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv(ledger.LEDGER_KEY_ENV, KEY)
    return KEY


def _invoice_history(conn: Connection) -> None:
    invoice = {"externalId": "STRIPE_in_1", "amount": "100.25"}
    ledger.enqueue(
        conn, [doc("STRIPE_in_1", invoice, doc_type="invoice")], run_id="r1", repost_changed=False
    )
    ledger.claim(conn, erp=ERP, doc_type="invoice", run_id="r2", limit=1)
    ledger.transition(
        conn,
        erp=ERP,
        doc_type="invoice",
        external_id="STRIPE_in_1",
        to_state="posted",
        run_id="r2",
        erp_internal_id="9001",
        posted_hash="h",
    )


def test_an_intact_keyed_ledger_audits_clean(warehouse_engine: Engine, keyed: str) -> None:
    with warehouse_engine.begin() as conn:
        _invoice_history(conn)
        ledger.checkpoint(conn, run_id="r2")
        audit = ledger.audit(conn)
    assert audit.intact, audit.problems
    assert (audit.transitions, audit.head_seq, audit.checkpoints) == (3, 3, 1)
    assert audit.keyed


@pytest.mark.parametrize(
    ("sql", "problem"),
    [
        pytest.param(
            'UPDATE posting_ledger SET payload = \'{"amount":"1.25","externalId":"STRIPE_in_1"}\'',
            "payload",
            id="amount-edited-in-the-ledger",
        ),
        pytest.param(
            "UPDATE posting_ledger SET erp_internal_id = '666'", "ERP id", id="erp-id-edited"
        ),
        pytest.param("UPDATE posting_ledger SET state = 'pending'", "state", id="state-edited"),
    ],
)
def test_a_ledger_row_edited_behind_the_journal_is_caught(
    warehouse_engine: Engine, keyed: str, sql: str, problem: str
) -> None:
    with warehouse_engine.begin() as conn:
        _invoice_history(conn)
        conn.execute(sa.text(sql))
        audit = ledger.audit(conn)
    assert not audit.intact
    assert any("STRIPE_in_1" in p and problem in p for p in audit.problems), audit.problems


def test_a_chain_rewritten_and_resealed_without_the_key_is_caught(
    warehouse_engine: Engine, keyed: str
) -> None:
    with warehouse_engine.begin() as conn:
        _invoice_history(conn)
        # The forger moves the posted invoice to another ERP id, in the ledger and in the
        # journal, and re-seals the chain from there with a key of its own.
        conn.execute(sa.text("UPDATE posting_ledger SET erp_internal_id = '666'"))
        r = conn.execute(sa.text("SELECT * FROM posting_ledger_journal WHERE seq = 3")).one()
        fields = {**r._mapping, "erp_internal_id": "666"}
        forged = ledger.seal(r.prev_hash, fields, key="the-forgers-guess")
        conn.execute(
            sa.text(
                "UPDATE posting_ledger_journal SET erp_internal_id = '666', hash = :h WHERE seq = 3"
            ),
            {"h": forged},
        )
        audit = ledger.audit(conn)
    assert not audit.intact
    assert audit.first_broken == 3


def test_a_truncated_tail_is_caught_by_its_checkpoint(warehouse_engine: Engine, keyed: str) -> None:
    with warehouse_engine.begin() as conn:
        _invoice_history(conn)
        ledger.checkpoint(conn, run_id="r2")
        conn.execute(sa.text("DELETE FROM posting_ledger_journal WHERE seq = 3"))
        audit = ledger.audit(conn)
    assert not audit.intact
    assert any("checkpoint" in p and "seq 3" in p for p in audit.problems), audit.problems


def test_a_keyed_journal_cannot_be_checked_without_its_key(
    warehouse_engine: Engine, keyed: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    with warehouse_engine.begin() as conn:
        _invoice_history(conn)
        monkeypatch.delenv(ledger.LEDGER_KEY_ENV)
        audit = ledger.audit(conn)
    assert not audit.intact
    assert any(ledger.LEDGER_KEY_ENV in p for p in audit.problems), audit.problems
