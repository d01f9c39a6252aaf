"""The posting ledger: nothing lost, nothing posted twice.

One row per (ERP, document type, external id). Every transition is checked against the state
machine below, committed before the next side effect, and appended to a hash-chained journal
so that tampering with history is detectable.

    pending ──claim──▶ in_flight ──▶ posted
       ▲                   │  ├────▶ rejected (permanent, with the ERP's reason)
       │                   │  └────▶ dead     (retries exhausted)
       └──── transient ────┘
    rejected, dead ──(fix, then retry)──▶ pending
    posted ──(customer master data changed: upsert again)──▶ pending
"""

import datetime as dt
import hashlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import simplejson
import sqlalchemy as sa
from sqlalchemy.engine import Connection

from finsync_pipeline.errors import FinsyncError

STATES = ("pending", "in_flight", "posted", "rejected", "dead")
TRANSITIONS: dict[str, frozenset[str]] = {
    "pending": frozenset({"in_flight"}),
    "in_flight": frozenset({"posted", "rejected", "dead", "pending"}),
    "posted": frozenset({"pending"}),
    "rejected": frozenset({"pending"}),
    "dead": frozenset({"pending"}),
}
GENESIS_HASH = "0" * 64
# How long a claim stays its holder's without a renewal (FINSYNC_POSTING_LEASE_S).
DEFAULT_LEASE_S = 120.0
# PostgreSQL advisory lock serializing journal appends: the chain needs one writer at a time.
JOURNAL_LOCK_KEY = 0x66_73_6A_6E  # "fsjn"


class IllegalTransition(FinsyncError):
    """A ledger row was asked to move along an edge the state machine does not have."""


class LostClaim(IllegalTransition):
    """A run recorded an outcome for a row it no longer holds: its lease expired and another
    run settled the row by looking it up. The other run's settlement stands."""


def check_transition(from_state: str | None, to_state: str) -> None:
    """Raise IllegalTransition unless ``from_state -> to_state`` is an edge of the machine."""
    if to_state not in STATES:
        raise IllegalTransition(f"unknown ledger state {to_state!r}")
    if from_state is None:
        if to_state != "pending":
            raise IllegalTransition(f"a new ledger row starts pending, not {to_state}")
        return
    if to_state not in TRANSITIONS.get(from_state, frozenset()):
        raise IllegalTransition(f"illegal ledger transition {from_state} -> {to_state}")


def now_iso() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="microseconds")


def iso_in(seconds: float) -> str:
    """The UTC moment ``seconds`` from now, in the ledger's timestamp format."""
    moment = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=seconds)
    return moment.isoformat(timespec="microseconds")


def dumps(payload: Any) -> str:
    """Canonical JSON of a payload: sorted keys and exact decimals, so its hash is stable."""
    return str(simplejson.dumps(payload, use_decimal=True, sort_keys=True, separators=(",", ":")))


def loads(text: str) -> Any:
    return simplejson.loads(text, use_decimal=True)


def payload_hash(payload: Any) -> str:
    return hashlib.sha256(dumps(payload).encode()).hexdigest()


@dataclass(frozen=True)
class LedgerDoc:
    """A document finsync wants in the ERP."""

    erp: str
    doc_type: str
    external_id: str
    source_system: str
    source_id: str
    correlation_id: str
    partition_date: str | None
    payload: Any
    depth: int = 0


@dataclass(frozen=True)
class EnqueueResult:
    new: int
    changed: int
    unchanged: int
    changed_after_posting: list[str]


def _journal(
    conn: Connection,
    *,
    erp: str,
    doc_type: str,
    external_id: str,
    from_state: str | None,
    to_state: str,
    at: str,
    run_id: str | None,
    detail: str | None,
) -> None:
    if conn.dialect.name == "postgresql":
        # Two transactions appending at once would both read the same head and collide on
        # seq; the lock is held to commit. SQLite already admits one writer at a time.
        conn.execute(sa.text("SELECT pg_advisory_xact_lock(:key)"), {"key": JOURNAL_LOCK_KEY})
    last = conn.execute(
        sa.text("SELECT seq, hash FROM posting_ledger_journal ORDER BY seq DESC LIMIT 1")
    ).first()
    seq = 1 if last is None else int(last[0]) + 1
    prev = GENESIS_HASH if last is None else str(last[1])
    body = "|".join(
        str(x) for x in (seq, erp, doc_type, external_id, from_state, to_state, at, run_id, detail)
    )
    digest = hashlib.sha256(f"{prev}|{body}".encode()).hexdigest()
    conn.execute(
        sa.text(
            "INSERT INTO posting_ledger_journal (seq, erp, doc_type, external_id, from_state, "
            "to_state, at, run_id, detail, prev_hash, hash) VALUES (:seq, :erp, :doc_type, "
            ":external_id, :from_state, :to_state, :at, :run_id, :detail, :prev, :hash)"
        ),
        {
            "seq": seq,
            "erp": erp,
            "doc_type": doc_type,
            "external_id": external_id,
            "from_state": from_state,
            "to_state": to_state,
            "at": at,
            "run_id": run_id,
            "detail": detail,
            "prev": prev,
            "hash": digest,
        },
    )


def verify_journal(conn: Connection) -> int | None:
    """Recompute the hash chain; return the first seq that does not verify, or None if intact."""
    prev = GENESIS_HASH
    rows = conn.execute(
        sa.text(
            "SELECT seq, erp, doc_type, external_id, from_state, to_state, at, run_id, detail, "
            "prev_hash, hash FROM posting_ledger_journal ORDER BY seq"
        )
    )
    for r in rows:
        body = "|".join(
            str(x)
            for x in (
                r.seq,
                r.erp,
                r.doc_type,
                r.external_id,
                r.from_state,
                r.to_state,
                r.at,
                r.run_id,
                r.detail,
            )
        )
        digest = hashlib.sha256(f"{prev}|{body}".encode()).hexdigest()
        if r.prev_hash != prev or r.hash != digest:
            return int(r.seq)
        prev = r.hash
    return None


def enqueue(
    conn: Connection, docs: Iterable[LedgerDoc], *, run_id: str, repost_changed: bool
) -> EnqueueResult:
    """Make sure every document has a ledger row.

    A new document starts pending. A document whose payload changed before posting gets the new
    payload (and a rejected or dead one goes back to pending: its cause may be fixed). A
    document that changed after posting is re-posted when ``repost_changed`` (a customer upsert
    updates in place); otherwise it is reported, because a posted invoice is changed only by a
    compensating document, never by an edit that loses history.
    """
    at = now_iso()
    docs = list(docs)
    if not docs:
        return EnqueueResult(0, 0, 0, [])
    erp, doc_type = docs[0].erp, docs[0].doc_type
    existing = {
        r.external_id: r
        for r in conn.execute(
            sa.text(
                "SELECT external_id, state, payload_hash, posted_hash FROM posting_ledger "
                "WHERE erp = :erp AND doc_type = :doc_type"
            ),
            {"erp": erp, "doc_type": doc_type},
        )
    }
    new = changed = unchanged = 0
    changed_after: list[str] = []
    for doc in docs:
        text = dumps(doc.payload)
        digest = hashlib.sha256(text.encode()).hexdigest()
        row = existing.get(doc.external_id)
        if row is None:
            conn.execute(
                sa.text(
                    "INSERT INTO posting_ledger (erp, doc_type, external_id, source_system, "
                    "source_id, correlation_id, partition_date, depth, payload, payload_hash, "
                    "state, attempts, created_at, updated_at) VALUES (:erp, :doc_type, "
                    ":external_id, :source_system, :source_id, :correlation_id, "
                    ":partition_date, :depth, :payload, :hash, 'pending', 0, :at, :at)"
                ),
                {
                    "erp": doc.erp,
                    "doc_type": doc.doc_type,
                    "external_id": doc.external_id,
                    "source_system": doc.source_system,
                    "source_id": doc.source_id,
                    "correlation_id": doc.correlation_id,
                    "partition_date": doc.partition_date,
                    "depth": doc.depth,
                    "payload": text,
                    "hash": digest,
                    "at": at,
                },
            )
            _journal(
                conn,
                erp=doc.erp,
                doc_type=doc.doc_type,
                external_id=doc.external_id,
                from_state=None,
                to_state="pending",
                at=at,
                run_id=run_id,
                detail="enqueued",
            )
            new += 1
            continue
        if row.payload_hash == digest:
            unchanged += 1
            continue
        if row.state in ("posted", "in_flight") and not repost_changed:
            if row.posted_hash != digest:
                changed_after.append(doc.external_id)
            unchanged += 1
            continue
        if row.state == "in_flight":
            # The claim holder posts the payload it read; the new payload waits for its outcome.
            unchanged += 1
            continue
        if row.state != "pending":
            check_transition(row.state, "pending")
        conn.execute(
            sa.text(
                "UPDATE posting_ledger SET payload = :payload, payload_hash = :hash, "
                "state = 'pending', depth = :depth, next_attempt_at = NULL, updated_at = :at "
                "WHERE erp = :erp AND doc_type = :doc_type AND external_id = :external_id"
            ),
            {
                "payload": text,
                "hash": digest,
                "depth": doc.depth,
                "at": at,
                "erp": doc.erp,
                "doc_type": doc.doc_type,
                "external_id": doc.external_id,
            },
        )
        _journal(
            conn,
            erp=doc.erp,
            doc_type=doc.doc_type,
            external_id=doc.external_id,
            from_state=row.state,
            to_state="pending",
            at=at,
            run_id=run_id,
            detail="payload changed",
        )
        changed += 1
    return EnqueueResult(new, changed, unchanged, changed_after)


@dataclass(frozen=True)
class Claimed:
    """A ledger row claimed by a posting run."""

    erp: str
    doc_type: str
    external_id: str
    correlation_id: str
    source_id: str
    partition_date: str | None
    payload: Any
    payload_hash: str
    attempts: int
    posted_hash: str | None = None


def claim(
    conn: Connection,
    *,
    erp: str,
    doc_type: str,
    run_id: str,
    limit: int,
    date_from: str | None = None,
    date_to: str | None = None,
    depth: int | None = None,
    lease_s: float = DEFAULT_LEASE_S,
) -> list[Claimed]:
    """Move up to ``limit`` due pending rows to in_flight for this run, and return them.

    The conditional UPDATE (``state = 'pending'``) is what makes a claim exclusive: a row
    another run claimed first matches no longer. Each claim holds a lease of ``lease_s``
    seconds, which its holder renews while it works (``renew_leases``); once it expires, the
    next run settles the row by looking it up, whatever became of the holder.
    """
    at = now_iso()
    filters = [
        "erp = :erp",
        "doc_type = :doc_type",
        "state = 'pending'",
        "(next_attempt_at IS NULL OR next_attempt_at <= :at)",
    ]
    lease_until = iso_in(lease_s)
    params: dict[str, Any] = {"erp": erp, "doc_type": doc_type, "at": at, "limit": limit}
    if date_from is not None and date_to is not None:
        filters.append("partition_date >= :date_from AND partition_date < :date_to")
        params.update(date_from=date_from, date_to=date_to)
    if depth is not None:
        filters.append("depth = :depth")
        params["depth"] = depth
    keys = [
        r.external_id
        for r in conn.execute(
            sa.text(
                f"SELECT external_id FROM posting_ledger WHERE {' AND '.join(filters)} "
                "ORDER BY depth, partition_date, external_id LIMIT :limit"
            ),
            params,
        )
    ]
    claimed: list[Claimed] = []
    for external_id in keys:
        result = conn.execute(
            sa.text(
                "UPDATE posting_ledger SET state = 'in_flight', claimed_by = :run_id, "
                "claimed_at = :at, lease_until = :lease_until, updated_at = :at "
                "WHERE erp = :erp AND doc_type = :doc_type "
                "AND external_id = :external_id AND state = 'pending'"
            ),
            {
                "run_id": run_id,
                "at": at,
                "lease_until": lease_until,
                "erp": erp,
                "doc_type": doc_type,
                "external_id": external_id,
            },
        )
        if result.rowcount != 1:
            continue
        _journal(
            conn,
            erp=erp,
            doc_type=doc_type,
            external_id=external_id,
            from_state="pending",
            to_state="in_flight",
            at=at,
            run_id=run_id,
            detail="claimed",
        )
        row = conn.execute(
            sa.text(
                "SELECT correlation_id, source_id, partition_date, payload, payload_hash, "
                "attempts, posted_hash FROM posting_ledger WHERE erp = :erp "
                "AND doc_type = :doc_type AND external_id = :external_id"
            ),
            {"erp": erp, "doc_type": doc_type, "external_id": external_id},
        ).one()
        claimed.append(
            Claimed(
                erp,
                doc_type,
                external_id,
                row.correlation_id,
                row.source_id,
                row.partition_date,
                loads(row.payload),
                row.payload_hash,
                int(row.attempts),
                row.posted_hash,
            )
        )
    return claimed


def transition(
    conn: Connection,
    *,
    erp: str,
    doc_type: str,
    external_id: str,
    to_state: str,
    run_id: str | None,
    detail: str | None = None,
    erp_internal_id: str | None = None,
    posted_hash: str | None = None,
    count_attempt: bool = False,
    next_attempt_at: str | None = None,
    expect_state: str | None = None,
    expect_holder: str | None = None,
) -> str:
    """Move one row to ``to_state`` (checked against the machine); return its previous state.

    With ``expect_holder``, the row must still be claimed by that run, or LostClaim is raised
    and nothing changes: a holder whose lease expired cannot overwrite the settlement of the
    run that took the row over.
    """
    row = conn.execute(
        sa.text(
            "SELECT state, claimed_by FROM posting_ledger WHERE erp = :erp "
            "AND doc_type = :doc_type AND external_id = :external_id"
        ),
        {"erp": erp, "doc_type": doc_type, "external_id": external_id},
    ).first()
    if row is None:
        raise IllegalTransition(f"no ledger row for {erp} {doc_type} {external_id}")
    from_state = str(row.state)
    if expect_state is not None and from_state != expect_state:
        raise IllegalTransition(
            f"{erp} {doc_type} {external_id} is {from_state}, expected {expect_state}"
        )
    if expect_holder is not None and row.claimed_by != expect_holder:
        raise LostClaim(
            f"{erp} {doc_type} {external_id} is no longer claimed by run {expect_holder}: its "
            "lease expired and another run settled it"
        )
    check_transition(from_state, to_state)
    at = now_iso()
    conn.execute(
        sa.text(
            "UPDATE posting_ledger SET state = :to_state, updated_at = :at, "
            "attempts = attempts + :inc, last_error = CASE WHEN :to_state = 'posted' THEN NULL "
            "ELSE COALESCE(:detail, last_error) END, "
            "erp_internal_id = COALESCE(:erp_internal_id, erp_internal_id), "
            "posted_hash = CASE WHEN :to_state = 'posted' THEN :posted_hash ELSE posted_hash END, "
            "posted_at = CASE WHEN :to_state = 'posted' THEN :at ELSE posted_at END, "
            "next_attempt_at = :next_attempt_at, "
            "claimed_by = CASE WHEN :to_state = 'in_flight' THEN claimed_by ELSE NULL END, "
            "lease_until = CASE WHEN :to_state = 'in_flight' THEN lease_until ELSE NULL END "
            "WHERE erp = :erp AND doc_type = :doc_type AND external_id = :external_id"
        ),
        {
            "to_state": to_state,
            "at": at,
            "inc": 1 if count_attempt else 0,
            "detail": detail,
            "erp_internal_id": erp_internal_id,
            "posted_hash": posted_hash,
            "next_attempt_at": next_attempt_at,
            "erp": erp,
            "doc_type": doc_type,
            "external_id": external_id,
        },
    )
    _journal(
        conn,
        erp=erp,
        doc_type=doc_type,
        external_id=external_id,
        from_state=from_state,
        to_state=to_state,
        at=at,
        run_id=run_id,
        detail=detail,
    )
    return from_state


@dataclass(frozen=True)
class InFlight:
    """A row another run holds in flight.

    Attributes:
        doc_type: The document type.
        external_id: The document's external id.
        holder: The run that claimed it ("" when unknown).
        lease_expired: Whether its lease ran out without a renewal (or it has none).
    """

    doc_type: str
    external_id: str
    holder: str
    lease_expired: bool


def stale_in_flight(conn: Connection, *, erp: str, run_id: str) -> list[InFlight]:
    """In-flight rows claimed by another run, each with whether its lease has expired.

    A row claimed before leases existed has none: it counts as expired.
    """
    return [
        InFlight(r.doc_type, r.external_id, r.claimed_by or "", bool(r.expired))
        for r in conn.execute(
            sa.text(
                "SELECT doc_type, external_id, claimed_by, "
                "CASE WHEN lease_until IS NULL OR lease_until < :now THEN 1 ELSE 0 END "
                "AS expired FROM posting_ledger WHERE erp = :erp "
                "AND state = 'in_flight' AND (claimed_by IS NULL OR claimed_by <> :run_id) "
                "ORDER BY depth, external_id"
            ),
            {"erp": erp, "run_id": run_id, "now": now_iso()},
        )
    ]


def renew_leases(conn: Connection, *, erp: str, run_id: str, lease_s: float) -> int:
    """Extend the lease of every row ``run_id`` holds in flight; return how many it holds."""
    result = conn.execute(
        sa.text(
            "UPDATE posting_ledger SET lease_until = :until WHERE erp = :erp "
            "AND state = 'in_flight' AND claimed_by = :run_id"
        ),
        {"until": iso_in(lease_s), "erp": erp, "run_id": run_id},
    )
    return int(result.rowcount or 0)


def posted_ids(
    conn: Connection, *, erp: str, doc_type: str, external_ids: Sequence[str]
) -> dict[str, str]:
    """external id -> ERP internal id, for the given documents that are posted."""
    if not external_ids:
        return {}
    stmt = sa.text(
        "SELECT external_id, erp_internal_id FROM posting_ledger WHERE erp = :erp AND "
        "doc_type = :doc_type AND state = 'posted' AND external_id IN :ids"
    ).bindparams(sa.bindparam("ids", expanding=True))
    return {
        r.external_id: r.erp_internal_id
        for r in conn.execute(stmt, {"erp": erp, "doc_type": doc_type, "ids": list(external_ids)})
    }


def state_counts(conn: Connection, *, erp: str) -> dict[str, dict[str, int]]:
    """doc_type -> state -> rows."""
    out: dict[str, dict[str, int]] = {}
    for r in conn.execute(
        sa.text(
            "SELECT doc_type, state, COUNT(*) AS n FROM posting_ledger WHERE erp = :erp "
            "GROUP BY doc_type, state"
        ),
        {"erp": erp},
    ):
        out.setdefault(r.doc_type, {})[r.state] = int(r.n)
    return out
