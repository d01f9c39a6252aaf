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
import hmac
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
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


# The operator's key sealing the journal (an HMAC key, from the environment, never stored).
LEDGER_KEY_ENV = "FINSYNC_LEDGER_KEY"
UNKEYED = "unkeyed"
# v1: SHA-256 of the transition's fields; v2 adds the payload hash and the ERP id, keyed.
SEAL_VERSION = 2
_SEALED = (
    "seq",
    "erp",
    "doc_type",
    "external_id",
    "from_state",
    "to_state",
    "at",
    "run_id",
    "detail",
    "payload_hash",
    "erp_internal_id",
)
_LEGACY_SEALED = _SEALED[:9]


def ledger_key() -> str | None:
    """The journal's sealing key (``FINSYNC_LEDGER_KEY``), or None when none is set."""
    return os.environ.get(LEDGER_KEY_ENV) or None


def key_id(key: str | None) -> str:
    """A key's public name in the journal: which key sealed a row, never the key itself."""
    if key is None:
        return UNKEYED
    return hashlib.sha256(b"finsync-ledger-key|" + key.encode()).hexdigest()[:16]


def seal(prev_hash: str, fields: Mapping[str, Any], key: str | None) -> str:
    """A journal row's seal: HMAC-SHA256 under ``key`` (plain SHA-256 without one) of the
    previous row's seal and the row's fields, the payload hash and ERP id among them."""
    body = "|".join(str(fields[name]) for name in _SEALED)
    message = f"{prev_hash}|v{SEAL_VERSION}|{body}".encode()
    if key is None:
        return hashlib.sha256(message).hexdigest()
    return hmac.new(key.encode(), message, hashlib.sha256).hexdigest()


def _legacy_seal(prev_hash: str, fields: Mapping[str, Any]) -> str:
    body = "|".join(str(fields[name]) for name in _LEGACY_SEALED)
    return hashlib.sha256(f"{prev_hash}|{body}".encode()).hexdigest()


@dataclass(frozen=True)
class _Transition:
    """One journal entry to append: a ledger row's move, and the row as the move left it."""

    doc_type: str
    external_id: str
    from_state: str | None
    to_state: str
    detail: str | None
    payload_hash: str | None
    erp_internal_id: str | None


def _append_journal(
    conn: Connection, *, erp: str, at: str, run_id: str | None, entries: Sequence[_Transition]
) -> None:
    """Append sealed transitions, in order, after their ledger rows were written: one read of
    the chain's head and one insert for all of them."""
    if not entries:
        return
    if conn.dialect.name == "postgresql":
        # Two transactions appending at once would both read the same head and collide on
        # seq; the lock is held to commit. SQLite already admits one writer at a time.
        conn.execute(sa.text("SELECT pg_advisory_xact_lock(:key)"), {"key": JOURNAL_LOCK_KEY})
    last = conn.execute(
        sa.text("SELECT seq, hash FROM posting_ledger_journal ORDER BY seq DESC LIMIT 1")
    ).first()
    key = ledger_key()
    seq = 0 if last is None else int(last[0])
    prev = GENESIS_HASH if last is None else str(last[1])
    rows = []
    for entry in entries:
        seq += 1
        fields: dict[str, Any] = {
            "seq": seq,
            "erp": erp,
            "doc_type": entry.doc_type,
            "external_id": entry.external_id,
            "from_state": entry.from_state,
            "to_state": entry.to_state,
            "at": at,
            "run_id": run_id,
            "detail": entry.detail,
            "payload_hash": entry.payload_hash,
            "erp_internal_id": entry.erp_internal_id,
        }
        sealed = seal(prev, fields, key)
        rows.append({**fields, "version": SEAL_VERSION, "key_id": key_id(key), "prev": prev})
        rows[-1]["hash"] = prev = sealed
    conn.execute(
        sa.text(
            "INSERT INTO posting_ledger_journal (seq, erp, doc_type, external_id, from_state, "
            "to_state, at, run_id, detail, payload_hash, erp_internal_id, seal_version, key_id, "
            "prev_hash, hash) VALUES (:seq, :erp, :doc_type, :external_id, :from_state, "
            ":to_state, :at, :run_id, :detail, :payload_hash, :erp_internal_id, :version, "
            ":key_id, :prev, :hash)"
        ),
        rows,
    )


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
    """Append one sealed transition; call it after the ledger row was written."""
    # The row as this transition left it: the seal binds its payload and its ERP id.
    current = conn.execute(
        sa.text(
            "SELECT payload_hash, erp_internal_id FROM posting_ledger WHERE erp = :erp "
            "AND doc_type = :doc_type AND external_id = :external_id"
        ),
        {"erp": erp, "doc_type": doc_type, "external_id": external_id},
    ).first()
    entry = _Transition(
        doc_type,
        external_id,
        from_state,
        to_state,
        detail,
        None if current is None else current.payload_hash,
        None if current is None else current.erp_internal_id,
    )
    _append_journal(conn, erp=erp, at=at, run_id=run_id, entries=[entry])


@dataclass
class LedgerAudit:
    """What ``audit`` found.

    Attributes:
        transitions: Journal rows read.
        head_seq: The last row's seq (0 for an empty journal).
        head_hash: The last row's seal.
        keyed: Whether rows are sealed with the operator's key.
        checkpoints: Checkpoints compared with the journal.
        first_broken: The first seq whose seal or link does not verify, if any.
        problems: Every finding, one line each, naming the row.
    """

    transitions: int = 0
    head_seq: int = 0
    head_hash: str = GENESIS_HASH
    keyed: bool = False
    checkpoints: int = 0
    first_broken: int | None = None
    problems: list[str] = field(default_factory=list)

    @property
    def intact(self) -> bool:
        return not self.problems


def _row_fault(r: Any, prev: str, key: str | None, seen_keyed: bool) -> str | None:
    """Why one journal row does not verify after ``prev``, or None."""
    if int(r.seal_version or 1) == 1:
        if seen_keyed or _legacy_seal(prev, r._mapping) != r.hash:
            return "its seal does not verify"
        return None
    if r.key_id == UNKEYED:
        if seen_keyed:
            return "is unsealed after rows sealed with a key (a downgrade)"
        return None if seal(prev, r._mapping, None) == r.hash else "its seal does not verify"
    if r.key_id != key_id(key):
        return f"is sealed with another key (id {r.key_id}; {LEDGER_KEY_ENV} is {key_id(key)})"
    return None if seal(prev, r._mapping, key) == r.hash else "its seal does not verify"


def _walk_chain(
    conn: Connection, key: str | None, found: LedgerAudit
) -> dict[tuple[str, ...], Any]:
    """Verify every seal and link into ``found``; return each document's last journal row."""
    prev, expected_seq, seen_keyed = GENESIS_HASH, 1, False
    last_of: dict[tuple[str, ...], Any] = {}
    for r in conn.execute(sa.text("SELECT * FROM posting_ledger_journal ORDER BY seq")):
        found.transitions += 1
        last_of[(r.erp, r.doc_type, r.external_id)] = r
        found.head_seq, found.head_hash = int(r.seq), str(r.hash)
        keyed_row = r.key_id not in (None, UNKEYED)
        if found.first_broken is None:
            if int(r.seq) != expected_seq or r.prev_hash != prev:
                why: str | None = "does not link to the row before it (one was removed)"
            elif keyed_row and key is None:
                why = None
                if not found.keyed:
                    found.problems.append(
                        f"journal seq {r.seq} on is sealed with a key (id {r.key_id}): set "
                        f"{LEDGER_KEY_ENV} to verify it"
                    )
            else:
                why = _row_fault(r, prev, key, seen_keyed)
            if why is not None:
                found.first_broken = int(r.seq)
                found.problems.append(f"journal seq {r.seq} ({r.doc_type} {r.external_id}) {why}")
        seen_keyed = seen_keyed or keyed_row
        found.keyed = seen_keyed
        prev, expected_seq = str(r.hash), int(r.seq) + 1
    return last_of


def _row_problems(r: Any, entry: Any) -> list[str]:
    """How a ledger row disagrees with its own payload hash and its last transition."""
    name = f"{r.erp} {r.doc_type} {r.external_id}"
    problems = []
    if payload_hash(loads(r.payload)) != r.payload_hash:
        problems.append(f"{name}: its payload does not match its payload hash")
    if entry is None:
        return [*problems, f"{name}: no transition of it is in the journal"]
    if entry.to_state != r.state:
        problems.append(
            f"{name}: its state is {r.state}, the journal's last transition {entry.to_state}"
        )
    if int(entry.seal_version or 1) >= 2:
        if entry.payload_hash != r.payload_hash:
            problems.append(f"{name}: its payload hash is not the journal's")
        if entry.erp_internal_id != r.erp_internal_id:
            problems.append(
                f"{name}: its ERP id is {r.erp_internal_id}, the journal's {entry.erp_internal_id}"
            )
    return problems


def audit(
    conn: Connection,
    *,
    key: str | None = None,
    external_checkpoints: Sequence[tuple[int, str, str]] = (),
) -> LedgerAudit:
    """Check the journal's seals and links, every ledger row against its payload hash and its
    last transition, and every checkpoint of the head: the table's, and
    ``external_checkpoints`` ((seq, seal, where) read elsewhere, such as the posting runs'
    Dagster metadata). The key is ``FINSYNC_LEDGER_KEY`` unless given."""
    key = key if key is not None else ledger_key()
    found = LedgerAudit()
    last_of = _walk_chain(conn, key, found)
    for r in conn.execute(
        sa.text(
            "SELECT erp, doc_type, external_id, state, payload, payload_hash, erp_internal_id "
            "FROM posting_ledger ORDER BY erp, doc_type, external_id"
        )
    ):
        found.problems.extend(_row_problems(r, last_of.get((r.erp, r.doc_type, r.external_id))))
    table = [
        (int(c.seq), str(c.hash), f"checkpoint of run {c.run_id}")
        for c in conn.execute(
            sa.text("SELECT seq, hash, run_id FROM posting_ledger_checkpoints ORDER BY seq")
        )
    ]
    seals = {
        int(seq): str(sealed)
        for seq, sealed in conn.execute(sa.text("SELECT seq, hash FROM posting_ledger_journal"))
    }
    for seq, sealed, where in [*table, *external_checkpoints]:
        found.checkpoints += 1
        if seq not in seals:
            found.problems.append(f"{where}: the journal no longer holds seq {seq} (cut)")
        elif seals[seq] != sealed:
            found.problems.append(f"{where}: journal seq {seq} is not the row it checkpointed")
    return found


def checkpoint(conn: Connection, *, run_id: str) -> tuple[int, str] | None:
    """Record the journal's head (seq, seal) in ``posting_ledger_checkpoints``; return it.

    On PostgreSQL through ``finsync_checkpoint_ledger`` (sql/ddl/postgresql), so the pipeline
    role needs no write on the table."""
    head = conn.execute(
        sa.text("SELECT seq, hash FROM posting_ledger_journal ORDER BY seq DESC LIMIT 1")
    ).first()
    if head is None:
        return None
    seq, sealed = int(head[0]), str(head[1])
    if conn.dialect.name == "postgresql":
        # Only the owner writes the checkpoints there: its function copies the journal's row.
        conn.execute(
            sa.text("SELECT finsync_checkpoint_ledger(:seq, :run_id)"),
            {"seq": seq, "run_id": run_id},
        )
        return seq, sealed
    exists = conn.execute(
        sa.text("SELECT 1 FROM posting_ledger_checkpoints WHERE seq = :seq"), {"seq": seq}
    ).first()
    if exists is None:
        conn.execute(
            sa.text(
                "INSERT INTO posting_ledger_checkpoints (seq, hash, at, run_id) "
                "VALUES (:seq, :hash, :at, :run_id)"
            ),
            {"seq": seq, "hash": sealed, "at": now_iso(), "run_id": run_id},
        )
    return seq, sealed


def verify_journal(conn: Connection) -> int | None:
    """The first journal seq whose seal or link does not verify, or None if the chain holds
    (under ``FINSYNC_LEDGER_KEY`` when set); ``audit`` checks rows and checkpoints too."""
    found = LedgerAudit()
    _walk_chain(conn, ledger_key(), found)
    return found.first_broken


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
    if not keys:
        return []
    # Only the rows still pending match: a row another run claimed first is not this run's.
    conn.execute(
        sa.text(
            "UPDATE posting_ledger SET state = 'in_flight', claimed_by = :run_id, "
            "claimed_at = :at, lease_until = :lease_until, updated_at = :at "
            "WHERE erp = :erp AND doc_type = :doc_type "
            "AND external_id IN :keys AND state = 'pending'"
        ).bindparams(sa.bindparam("keys", expanding=True)),
        {
            "run_id": run_id,
            "at": at,
            "lease_until": lease_until,
            "erp": erp,
            "doc_type": doc_type,
            "keys": keys,
        },
    )
    rows = {
        r.external_id: r
        for r in conn.execute(
            sa.text(
                "SELECT external_id, correlation_id, source_id, partition_date, payload, "
                "payload_hash, erp_internal_id, attempts, posted_hash FROM posting_ledger "
                "WHERE erp = :erp AND doc_type = :doc_type AND external_id IN :keys "
                "AND state = 'in_flight' AND claimed_by = :run_id AND claimed_at = :at"
            ).bindparams(sa.bindparam("keys", expanding=True)),
            {"erp": erp, "doc_type": doc_type, "keys": keys, "run_id": run_id, "at": at},
        )
    }
    taken = [rows[k] for k in keys if k in rows]
    _append_journal(
        conn,
        erp=erp,
        at=at,
        run_id=run_id,
        entries=[
            _Transition(
                doc_type,
                row.external_id,
                "pending",
                "in_flight",
                "claimed",
                row.payload_hash,
                row.erp_internal_id,
            )
            for row in taken
        ],
    )
    return [
        Claimed(
            erp,
            doc_type,
            row.external_id,
            row.correlation_id,
            row.source_id,
            row.partition_date,
            loads(row.payload),
            row.payload_hash,
            int(row.attempts),
            row.posted_hash,
        )
        for row in taken
    ]


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
class Sent:
    """A claimed document the ERP accepted: the id it gave it and the payload hash sent."""

    doc_type: str
    external_id: str
    erp_internal_id: str
    posted_hash: str


def record_posted(
    conn: Connection, *, erp: str, run_id: str, sent: Sequence[Sent]
) -> tuple[list[Sent], list[Sent]]:
    """Move the ``sent`` rows ``run_id`` still holds in flight to posted, in one statement
    set (the rows, their journal entries, the documents waiting for them woken); return the
    rows recorded and those whose claim was lost (another run settled them by lookup after
    this run's lease lapsed; that settlement stands, as with ``transition``'s LostClaim)."""
    if not sent:
        return [], []
    held = {
        (r.doc_type, r.external_id): r.payload_hash
        for r in conn.execute(
            sa.text(
                "SELECT doc_type, external_id, payload_hash FROM posting_ledger "
                "WHERE erp = :erp AND state = 'in_flight' AND claimed_by = :run_id"
            ),
            {"erp": erp, "run_id": run_id},
        )
    }
    mine = [s for s in sent if (s.doc_type, s.external_id) in held]
    lost = [s for s in sent if (s.doc_type, s.external_id) not in held]
    if not mine:
        return [], lost
    at = now_iso()
    conn.execute(
        sa.text(
            "UPDATE posting_ledger SET state = 'posted', updated_at = :at, "
            "attempts = attempts + 1, last_error = NULL, erp_internal_id = :erp_internal_id, "
            "posted_hash = :posted_hash, posted_at = :at, next_attempt_at = NULL, "
            "claimed_by = NULL, lease_until = NULL WHERE erp = :erp AND doc_type = :doc_type "
            "AND external_id = :external_id AND state = 'in_flight' AND claimed_by = :run_id"
        ),
        [
            {
                "at": at,
                "erp_internal_id": s.erp_internal_id,
                "posted_hash": s.posted_hash,
                "erp": erp,
                "doc_type": s.doc_type,
                "external_id": s.external_id,
                "run_id": run_id,
            }
            for s in mine
        ],
    )
    _append_journal(
        conn,
        erp=erp,
        at=at,
        run_id=run_id,
        entries=[
            _Transition(
                s.doc_type,
                s.external_id,
                "in_flight",
                "posted",
                None,
                held[(s.doc_type, s.external_id)],
                s.erp_internal_id,
            )
            for s in mine
        ],
    )
    # Documents waiting for these are due now: they post in this same run.
    conn.execute(
        sa.text(
            "UPDATE posting_ledger SET next_attempt_at = NULL, waiting_for = NULL "
            "WHERE erp = :erp AND state = 'pending' AND waiting_for IN :refs"
        ).bindparams(sa.bindparam("refs", expanding=True)),
        {"erp": erp, "refs": [f"{s.doc_type}:{s.external_id}" for s in mine]},
    )
    return mine, lost


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
