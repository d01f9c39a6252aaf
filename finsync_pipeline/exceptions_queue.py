"""Working the finance exceptions queue: list, show, resolve and retry.

Every manual action is recorded in ``exception_actions`` with who, when and why. A retry of a
document the ERP refused (``posting_rejected``) or gave up on (``posting_dead``) puts its
ledger row back to pending, so the next posting run sends it again under the same external id:
fixing the cause and re-posting is one command. Other kinds resolve themselves once their
cause is fixed (a mapping added, an account corrected) and the next run derives cleanly.
"""

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import pandas as pd
import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from finsync_pipeline import ledger
from finsync_pipeline.errors import FinsyncError
from finsync_pipeline.resources.warehouse import read_frame

POSTING_KINDS = ("posting_rejected", "posting_dead")
# The systems with documents on the posting ledger.
LEDGER_SYSTEMS = ("netsuite", "salesforce")


class NothingSelected(FinsyncError):
    """The selection matched no exception."""


@dataclass(frozen=True)
class Selection:
    """Which exceptions an action applies to: records, a queue, a kind, a date range."""

    source_ids: Sequence[str] = ()
    queue: str | None = None
    kind: str | None = None
    date_from: str | None = None
    date_to: str | None = None
    status: str = "open"

    def where(self) -> tuple[str, dict[str, Any]]:
        clauses: list[str] = []
        params: dict[str, Any] = {}
        if self.status != "all":
            clauses.append("status = :status")
            params["status"] = self.status
        if self.source_ids:
            clauses.append("source_id IN :ids")
            params["ids"] = list(self.source_ids)
        if self.queue:
            clauses.append("owner_queue = :queue")
            params["queue"] = self.queue
        if self.kind:
            clauses.append("kind = :kind")
            params["kind"] = self.kind
        if self.date_from:
            clauses.append("partition_date >= :date_from")
            params["date_from"] = self.date_from
        if self.date_to:
            clauses.append("partition_date <= :date_to")
            params["date_to"] = self.date_to
        return (" WHERE " + " AND ".join(clauses)) if clauses else "", params

    @property
    def is_empty(self) -> bool:
        return not (self.source_ids or self.queue or self.kind or self.date_from or self.date_to)


def _query(conn: Connection, sql: str, selection: Selection) -> pd.DataFrame:
    where, params = selection.where()
    stmt = sa.text(sql.format(where=where))
    if "ids" in params:
        stmt = stmt.bindparams(sa.bindparam("ids", expanding=True))
    result = conn.execute(stmt, params)
    return pd.DataFrame(result.fetchall(), columns=list(result.keys()))


@dataclass(frozen=True)
class StuckWork:
    """Posting work whose holder stopped: held in flight past its lease, or settled after it.

    Attributes:
        held_past_lease: In-flight rows whose lease expired: erp, doc_type, external_id,
            held_by (the run), claimed_at, lease_until. The next posting run settles them.
        settled: Rows settled by lookup after their holder died, newest first: erp,
            doc_type, external_id, to_state, settled_at, settled_by, detail (names the holder).
    """

    held_past_lease: pd.DataFrame
    settled: pd.DataFrame


def stuck_work(engine: Engine, *, settled_limit: int = 20) -> StuckWork:
    """What ``finsync exceptions list`` shows under the queue about stalled posting."""
    with engine.connect() as conn:
        in_flight = read_frame(
            conn,
            "SELECT erp, doc_type, external_id, claimed_by AS held_by, claimed_at, lease_until "
            "FROM posting_ledger WHERE state = 'in_flight' ORDER BY claimed_at, external_id",
        )
        settled = read_frame(
            conn,
            "SELECT erp, doc_type, external_id, to_state, settled_at, settled_by, detail "
            "FROM v_posting_lease_settlements ORDER BY seq DESC LIMIT :limit",
            {"limit": settled_limit},
        )
    now = ledger.now_iso()
    expired = in_flight["lease_until"].isna() | (in_flight["lease_until"].astype(str) < now)
    return StuckWork(in_flight[expired].reset_index(drop=True), settled)


def list_exceptions(engine: Engine, selection: Selection) -> pd.DataFrame:
    """The selected exceptions, oldest first, with their age in days."""
    with engine.connect() as conn:
        rows = _query(
            conn,
            "SELECT kind, owner_queue, severity, source_system, source_id, partition_date, "
            "legal_entity, status, first_seen, last_seen, detail, resolution "
            "FROM finance_exceptions{where} ORDER BY first_seen, kind, source_id",
            selection,
        )
    now = pd.Timestamp.now(tz="UTC")
    rows["age_days"] = [int((now - pd.Timestamp(first)).days) for first in rows["first_seen"]]
    return rows


def show(engine: Engine, source_id: str) -> dict[str, Any]:
    """Everything about one record: its exceptions, ledger rows, quarantine and actions.

    ``source_id`` may be the source record (``in_...``) or its ERP external id
    (``STRIPE_in_...``): a posting exception is filed under the external id, and shows either
    way.
    """
    with engine.connect() as conn:
        params = {"id": source_id}
        ledger_rows = read_frame(
            conn,
            "SELECT erp, doc_type, external_id, source_id, state, attempts, last_error, "
            "erp_internal_id, partition_date, updated_at FROM posting_ledger "
            "WHERE external_id = :id OR source_id = :id ORDER BY doc_type",
            params,
        )
        names = sorted({source_id, *ledger_rows["external_id"], *ledger_rows["source_id"]})
        ledger_rows = ledger_rows.drop(columns=["source_id"])
        exceptions = _read_ids(
            conn, "SELECT * FROM finance_exceptions WHERE source_id IN :ids ORDER BY kind", names
        )
        quarantine = read_frame(
            conn,
            "SELECT asset, field, check_name, reason FROM quarantine WHERE source_id = :id",
            params,
        )
        actions = _read_ids(
            conn,
            "SELECT at, actor, action, kind, source_id, reason, outcome FROM exception_actions "
            "WHERE source_id IN :ids ORDER BY at",
            names,
        )
    if exceptions.empty and ledger_rows.empty and quarantine.empty:
        raise NothingSelected(f"no exception, ledger row or quarantined record for {source_id}")
    return {
        "source_id": source_id,
        "exceptions": exceptions.to_dict("records"),
        "ledger": ledger_rows.to_dict("records"),
        "quarantine": quarantine.to_dict("records"),
        "actions": actions.to_dict("records"),
    }


def _read_ids(conn: Connection, sql: str, ids: list[str]) -> pd.DataFrame:
    result = conn.execute(
        sa.text(sql).bindparams(sa.bindparam("ids", expanding=True)), {"ids": ids}
    )
    return pd.DataFrame(result.fetchall(), columns=list(result.keys()))


def posting_report(engine: Engine, external_ids: Sequence[str]) -> list[dict[str, Any]]:
    """What the ledger last sent for each document and what the ERP answered."""
    if not external_ids:
        return []
    with engine.connect() as conn:
        rows = _read_ids(
            conn,
            "SELECT erp, doc_type, external_id, state, erp_internal_id, last_error, payload "
            "FROM posting_ledger WHERE external_id IN :ids ORDER BY external_id",
            list(external_ids),
        )
    report = []
    for row in rows.itertuples(index=False):
        payload = ledger.loads(row.payload)
        lines = ((payload.get("item") or {}).get("items")) or []
        report.append(
            {
                "erp": row.erp,
                "doc_type": row.doc_type,
                "external_id": row.external_id,
                "items_sent": [str((x.get("item") or {}).get("id")) for x in lines],
                "state": row.state,
                "erp_internal_id": row.erp_internal_id,
                "erp_answer": None if row.state == "posted" else row.last_error,
            }
        )
    return report


def _record(
    conn: Connection, row: Any, *, actor: str, action: str, reason: str, outcome: str
) -> None:
    conn.execute(
        sa.text(
            "INSERT INTO exception_actions (action_id, at, actor, action, kind, source_system, "
            "source_id, reason, outcome) VALUES (:action_id, :at, :actor, :action, :kind, "
            ":source_system, :source_id, :reason, :outcome)"
        ),
        {
            "action_id": uuid.uuid4().hex,
            "at": ledger.now_iso(),
            "actor": actor,
            "action": action,
            "kind": row.kind,
            "source_system": row.source_system,
            "source_id": row.source_id,
            "reason": reason,
            "outcome": outcome,
        },
    )


def _selected(conn: Connection, selection: Selection) -> pd.DataFrame:
    if selection.is_empty:
        raise NothingSelected(
            "name the records, or select a whole --queue, --kind or --from/--to range"
        )
    rows = _query(
        conn,
        "SELECT kind, source_system, source_id, status, partition_date "
        "FROM finance_exceptions{where}",
        selection,
    )
    if rows.empty:
        raise NothingSelected("no exception matches the selection")
    return rows


def resolve(engine: Engine, selection: Selection, *, actor: str, reason: str) -> int:
    """Close the selected exceptions by hand; each closing is recorded with who and why."""
    with engine.begin() as conn:
        rows = _selected(conn, selection)
        for row in rows.itertuples(index=False):
            if conn.dialect.name == "postgresql":
                # The roles' audited path: finance_ops may not update the table itself.
                conn.execute(
                    sa.text(
                        "SELECT finsync_resolve_exception(:kind, :source_system, :source_id, "
                        ":actor, :reason, :action_id, :at)"
                    ),
                    {
                        "kind": row.kind,
                        "source_system": row.source_system,
                        "source_id": row.source_id,
                        "actor": actor,
                        "reason": reason,
                        "action_id": uuid.uuid4().hex,
                        "at": ledger.now_iso(),
                    },
                )
                continue
            conn.execute(
                sa.text(
                    "UPDATE finance_exceptions SET status = 'resolved', resolved_at = :at, "
                    "resolution = :resolution WHERE kind = :kind AND "
                    "source_system = :source_system AND source_id = :source_id"
                ),
                {
                    "at": ledger.now_iso(),
                    "resolution": f"manual by {actor}: {reason}",
                    "kind": row.kind,
                    "source_system": row.source_system,
                    "source_id": row.source_id,
                },
            )
            _record(conn, row, actor=actor, action="resolve", reason=reason, outcome="resolved")
    return len(rows)


@dataclass(frozen=True)
class RetryOutcome:
    """What a retry did: documents queued again, and exceptions only a fix can clear."""

    requeued: list[str]
    date_from: str | None
    date_to: str | None
    needs_fix: list[str]


class NotPermitted(FinsyncError):
    """The warehouse refused this user an action (PostgreSQL roles)."""


def retry(engine: Engine, selection: Selection, *, actor: str, reason: str) -> RetryOutcome:
    """Queue the selected refused or dead documents for posting again.

    The ledger row goes back to pending (a legal transition) with no waiting time; the
    exception stays open until the document posts, and then resolves itself. It moves the
    posting ledger, so on PostgreSQL it is the pipeline role's (which holds the ledger key).
    """
    try:
        return _retry(engine, selection, actor=actor, reason=reason)
    except sa.exc.ProgrammingError as e:
        said = str(e.orig).strip().splitlines()[0]
        raise NotPermitted(
            f"the warehouse refused the retry ({said}): it moves the posting ledger, so run "
            "`finsync exceptions retry` as a user granted finsync_pipeline"
        ) from e


def _retry(engine: Engine, selection: Selection, *, actor: str, reason: str) -> RetryOutcome:
    requeued: list[str] = []
    needs_fix: list[str] = []
    dates: list[str] = []
    with engine.begin() as conn:
        rows = _selected(conn, selection)
        for row in rows.itertuples(index=False):
            if row.kind not in POSTING_KINDS:
                needs_fix.append(f"{row.kind} {row.source_id}")
                _record(
                    conn,
                    row,
                    actor=actor,
                    action="retry",
                    reason=reason,
                    outcome="not a posting problem: resolves itself once the cause is fixed",
                )
                continue
            # The exception's system is the one that refused the document: NetSuite, or
            # Salesforce for a status update.
            erp = row.source_system if row.source_system in LEDGER_SYSTEMS else "netsuite"
            state = conn.execute(
                sa.text(
                    "SELECT doc_type, state, partition_date FROM posting_ledger "
                    "WHERE erp = :erp AND external_id = :id"
                ),
                {"erp": erp, "id": row.source_id},
            ).first()
            if state is None or state.state not in ("rejected", "dead"):
                needs_fix.append(
                    f"{row.kind} {row.source_id} (ledger: "
                    f"{'none' if state is None else state.state})"
                )
                continue
            ledger.transition(
                conn,
                erp=erp,
                doc_type=state.doc_type,
                external_id=row.source_id,
                to_state="pending",
                run_id=None,
                detail=f"manual retry by {actor}: {reason}",
                expect_state=state.state,
            )
            _record(
                conn,
                row,
                actor=actor,
                action="retry",
                reason=reason,
                outcome=f"ledger {state.state} -> pending",
            )
            requeued.append(row.source_id)
            if state.partition_date:
                dates.append(str(state.partition_date))
    return RetryOutcome(requeued, min(dates, default=None), max(dates, default=None), needs_fix)
