"""Shared I/O of the assets: landing source records, quarantine, exceptions, metadata.

Assets stay thin: they fetch, call a pure function from ``logic/``, and hand the result to the
helpers here, which write in one transaction per partition range.
"""

import datetime as dt
import hashlib
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import dagster as dg
import pandas as pd
import pandera.pandas as pa
import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from finsync_pipeline.ledger import dumps, loads, now_iso
from finsync_pipeline.logic.screen import CONFLICT_KEY, unix_instant
from finsync_pipeline.logic.validation import ValidationOutcome
from finsync_pipeline.money import format_amount
from finsync_pipeline.resources.warehouse import read_frame, replace_partitions, upsert_rows

MAX_SAMPLE = 5


def column_schema(model: type[pa.DataFrameModel]) -> dg.TableSchema:
    """The Dagster column schema of a pandera contract, with each field's description."""
    schema = model.to_schema()
    return dg.TableSchema(
        columns=[
            dg.TableColumn(
                name=name,
                type=str(col.dtype),
                description=col.description,
                constraints=dg.TableColumnConstraints(
                    nullable=bool(col.nullable), unique=bool(col.unique)
                ),
            )
            for name, col in schema.columns.items()
        ]
    )


def _content_id(prefix: str, payload: str) -> str:
    return prefix + hashlib.sha256(payload.encode()).hexdigest()[:16]


def _one_per_id(records: Iterable[Any], id_key: str) -> list[tuple[str, Any]]:
    """Each record with its source id, one per id.

    Identical repeats of an id collapse to one. Copies of one id with different content are a
    conflict no order can settle: they land together under ``CONFLICT_KEY`` (with the id), so
    the contract check quarantines the id naming every copy, instead of the last one winning
    silently. A record without an id, or that is not an object, is kept under an id derived
    from its content so the contract check can quarantine it; it is never dropped.
    """
    copies: dict[str, list[Any]] = {}
    texts: dict[str, list[str]] = {}
    for record in records:
        payload = dumps(record)
        source_id = record.get(id_key) if isinstance(record, Mapping) else None
        if not isinstance(source_id, str) or not source_id:
            prefix = "missing-id-" if isinstance(record, Mapping) else "malformed-"
            source_id = _content_id(prefix, payload)
        seen = texts.setdefault(source_id, [])
        if payload not in seen:
            seen.append(payload)
            copies.setdefault(source_id, []).append(record)
    return [
        (sid, found[0] if len(found) == 1 else {id_key: sid, CONFLICT_KEY: found})
        for sid, found in copies.items()
    ]


def _landing_rows(
    *,
    system: str,
    records: Iterable[Any],
    id_key: str,
    created_date: Callable[[Mapping[str, Any]], str | None],
    updated_at: Callable[[Mapping[str, Any]], str | None],
    run_id: str,
    clamp: tuple[str, str] | None,
) -> list[dict[str, Any]]:
    at = now_iso()
    rows = []
    for source_id, record in _one_per_id(records, id_key):
        # A conflict is dated by its first copy; a record that is not an object, by the range.
        first = record[CONFLICT_KEY][0] if CONFLICT_KEY in record else record
        readable = isinstance(first, Mapping)
        day = created_date(first) if readable else None
        if clamp is not None and (day is None or not (clamp[0] <= day < clamp[1])):
            day = clamp[0]
        rows.append(
            {
                "source_id": source_id,
                "partition_date": day,
                "source_system": system,
                "source_updated_at": updated_at(first) if readable else None,
                "payload": dumps(record),
                "extraction_run_id": run_id,
                "extracted_at": at,
            }
        )
    return rows


def land_records(
    engine: Engine,
    *,
    table: str,
    system: str,
    records: Iterable[Mapping[str, Any]],
    id_key: str,
    created_date: Callable[[Mapping[str, Any]], str | None],
    updated_at: Callable[[Mapping[str, Any]], str | None],
    date_from: str,
    date_to: str,
    run_id: str,
) -> int:
    """Replace a partition range of an extract table with the records fetched for it.

    A record without an id is kept under a content-derived id so the contract check can send it
    to quarantine; it is never dropped.
    """
    rows = _landing_rows(
        system=system,
        records=records,
        id_key=id_key,
        created_date=created_date,
        updated_at=updated_at,
        run_id=run_id,
        clamp=(date_from, date_to),
    )
    with engine.begin() as conn:
        return replace_partitions(
            conn, table, rows, date_from=date_from, date_to=date_to, key=["source_id"]
        )


def land_changes(
    engine: Engine,
    *,
    table: str,
    system: str,
    stream: str,
    records: Iterable[Mapping[str, Any]],
    id_key: str,
    created_date: Callable[[Mapping[str, Any]], str | None],
    updated_at: Callable[[Mapping[str, Any]], str | None],
    new_cursor: Callable[[list[dict[str, Any]]], str | None],
    run_id: str,
) -> int:
    """Upsert the records changed since the stream's cursor and advance the cursor, atomically.

    The cursor only moves in the same transaction as the rows it covers, so a crash between
    fetch and write re-reads the same changes next time instead of skipping them.
    """
    rows = _landing_rows(
        system=system,
        records=records,
        id_key=id_key,
        created_date=lambda r: created_date(r) or "1970-01-01",
        updated_at=updated_at,
        run_id=run_id,
        clamp=None,
    )
    cursor = new_cursor(rows)
    with engine.begin() as conn:
        # A record read again unchanged (a lookback, a replayed event) keeps the landing it
        # has: a new run id on it would mark its day as holding a change nothing downstream
        # has seen, and two days' catch-up runs would re-land each other's records for ever.
        upsert_rows(conn, table, _changed_rows(conn, table, rows), ["source_id"])
        if cursor is not None:
            upsert_rows(
                conn,
                "extract_cursors",
                [{"stream": stream, "cursor": cursor, "updated_at": now_iso(), "run_id": run_id}],
                ["stream"],
            )
    return len(rows)


def _changed_rows(conn: Connection, table: str, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The landing rows whose payload differs from the one ``table`` holds for the id."""
    held: dict[str, str] = {}
    stmt = sa.text(f"SELECT source_id, payload FROM {table} WHERE source_id IN :ids").bindparams(
        sa.bindparam("ids", expanding=True)
    )
    ids = [r["source_id"] for r in rows]
    for start in range(0, len(ids), 500):
        held.update(
            (r.source_id, r.payload) for r in conn.execute(stmt, {"ids": ids[start : start + 500]})
        )
    return [r for r in rows if held.get(r["source_id"]) != r["payload"]]


def read_cursor(engine: Engine, stream: str) -> str | None:
    """The stream's high-water mark, or None before its first extraction."""
    with engine.connect() as conn:
        row = conn.execute(
            sa.text("SELECT cursor FROM extract_cursors WHERE stream = :stream"),
            {"stream": stream},
        ).first()
    return None if row is None else str(row[0])


def load_payloads(
    conn: Connection, table: str, date_from: str | None = None, date_to: str | None = None
) -> pd.DataFrame:
    """source_id, partition_date, payload (parsed) of an extract table, optionally a range."""
    where = ""
    params: dict[str, Any] = {}
    if date_from is not None:
        where = " WHERE partition_date >= :date_from AND partition_date < :date_to"
        params = {"date_from": date_from, "date_to": date_to}
    df = read_frame(
        conn,
        f"SELECT source_id, partition_date, source_updated_at, payload FROM {table}{where} "
        "ORDER BY source_id",
        params,
    )
    df["payload"] = [loads(p) for p in df["payload"]]
    return df


def load_unchecked_payloads(conn: Connection, table: str, run_id: str) -> pd.DataFrame:
    """The records of an incremental extract its contract check must take: those ``run_id``
    landed, and those landed by a run no check has taken (killed between landing and checking,
    they would otherwise reach the canonical tables unchecked, as the cursor has moved past
    them). ``mark_checked`` records the runs a check took."""
    df = read_frame(
        conn,
        f"SELECT source_id, partition_date, source_updated_at, extraction_run_id, payload "
        f"FROM {table} WHERE extraction_run_id = :run_id OR extraction_run_id NOT IN "
        "(SELECT run_id FROM landing_checks WHERE asset = :table) ORDER BY source_id",
        {"run_id": run_id, "table": table},
    )
    df["payload"] = [loads(p) for p in df["payload"]]
    return df


def mark_checked(conn: Connection, table: str, run_ids: Iterable[str]) -> None:
    """Record that the landings of ``run_ids`` in ``table`` were checked."""
    at = now_iso()
    rows = [{"asset": table, "run_id": r, "checked_at": at} for r in sorted(set(run_ids))]
    upsert_rows(conn, "landing_checks", rows, ["asset", "run_id"])


def load_pending_payloads(conn: Connection, table: str, canonical: str, key: str) -> pd.DataFrame:
    """The records of an extract table that its canonical table does not carry yet.

    A record is pending when no canonical row exists for it, or when the canonical row came
    from another landing (its ``extraction_run_id`` differs). So a run that landed records and
    then failed, or was killed, before validating them leaves them pending, and the next run
    carries them whatever day it runs for. Records in quarantine wait there instead.
    """
    df = read_frame(
        conn,
        "SELECT l.source_id, l.partition_date, l.source_updated_at, l.extraction_run_id, "
        f"l.payload FROM {table} l LEFT JOIN {canonical} c ON c.{key} = l.source_id "
        f"WHERE (c.{key} IS NULL OR c.extraction_run_id <> l.extraction_run_id) "
        "AND NOT EXISTS (SELECT 1 FROM quarantine q WHERE q.asset = :table "
        "AND q.source_id = l.source_id) ORDER BY l.source_id",
        {"table": table},
    )
    df["payload"] = [loads(p) for p in df["payload"]]
    return df


def looked_up_invoice_of_intent(conn: Connection) -> dict[str, str]:
    """Payment intent -> invoice, from the invoice payments ``stripe_invoice_payments`` looked
    up in Stripe for money whose invoice the warehouse did not hold."""
    found: dict[str, str] = {}
    for (payload,) in conn.execute(sa.text("SELECT payload FROM stripe_invoice_payments")):
        pay = loads(payload)
        intent = (pay.get("payment") or {}).get("payment_intent")
        if isinstance(intent, str) and isinstance(pay.get("invoice"), str):
            found[intent] = pay["invoice"]
    return found


def quarantined_ids(conn: Connection, asset: str) -> set[str]:
    """Ids of the records of ``asset`` that are in quarantine now."""
    return {
        r[0]
        for r in conn.execute(
            sa.text("SELECT DISTINCT source_id FROM quarantine WHERE asset = :asset"),
            {"asset": asset},
        )
    }


def write_quarantine(
    engine: Engine,
    *,
    asset: str,
    system: str,
    outcome: ValidationOutcome,
    partition_of: Mapping[str, str],
    date_from: str,
    date_to: str,
    run_id: str,
    checked_ids: set[str] | None = None,
) -> None:
    """Replace the quarantine rows of ``asset`` in the range by this validation's failures."""
    at = now_iso()
    rows = [
        {
            "asset": asset,
            "source_system": system,
            "source_id": f.source_id,
            "partition_date": partition_of.get(f.source_id, date_from),
            "field": f.field,
            "check_name": f.check_name,
            "reason": f.reason,
            "failure_value": f.failure_value,
            "run_id": run_id,
            "quarantined_at": at,
        }
        for f in outcome.failures.itertuples(index=False)
    ]
    key = ["asset", "source_id", "field", "check_name"]
    with engine.begin() as conn:
        if checked_ids is None:
            replace_partitions(
                conn,
                "quarantine",
                rows,
                date_from=date_from,
                date_to=date_to,
                key=key,
                extra_where="AND asset = :asset",
                params={"asset": asset},
            )
            return
        # Incremental: only the records this run landed were checked, so only their verdicts
        # are replaced.
        if checked_ids:
            conn.execute(
                sa.text(
                    "DELETE FROM quarantine WHERE asset = :asset AND source_id IN :ids"
                ).bindparams(sa.bindparam("ids", expanding=True)),
                {"asset": asset, "ids": sorted(checked_ids)},
            )
        upsert_rows(conn, "quarantine", rows, key)


def sync_exceptions(
    conn: Connection,
    found: pd.DataFrame,
    *,
    detected_by: str,
    kinds: Iterable[str],
    date_from: str | None = None,
    date_to: str | None = None,
    source_ids: Iterable[str] | None = None,
) -> dict[str, int]:
    """Open (or refresh) the exceptions found; resolve the ones of this scope no longer found.

    The scope is the detector, its kinds and, for partitioned detectors, the partition range
    (for change-driven ones, the records this run looked at): a problem this run would have
    seen again but did not has lost its cause.
    """
    at = now_iso()
    rows = [
        {
            **r,
            "detected_by": detected_by,
            "status": "open",
            "resolution": None,
            "first_seen": at,
            "last_seen": at,
            "resolved_at": None,
        }
        for r in found.to_dict("records")
    ]
    if rows:
        columns = list(rows[0])
        refreshed = [
            "severity",
            "owner_queue",
            "detected_by",
            "partition_date",
            "correlation_id",
            "legal_entity",
            "detail",
            "last_seen",
        ]
        # A problem seen again reopens, unless a person resolved it by hand: that was a
        # decision (recorded in exception_actions), not a fix the pipeline can observe.
        kept = "finance_exceptions.resolution LIKE 'manual%'"
        conn.execute(
            sa.text(
                f"INSERT INTO finance_exceptions ({', '.join(columns)}) "
                f"VALUES ({', '.join(':' + c for c in columns)}) "
                "ON CONFLICT (kind, source_system, source_id) DO UPDATE SET "
                + ", ".join(f"{c} = excluded.{c}" for c in refreshed)
                + f", status = CASE WHEN {kept} THEN finance_exceptions.status ELSE 'open' END"
                f", resolution = CASE WHEN {kept} THEN finance_exceptions.resolution END"
                f", resolved_at = CASE WHEN {kept} THEN finance_exceptions.resolved_at END"
            ),
            rows,
        )
    kinds = list(kinds)
    if not kinds:
        # A detector that owns no kinds (posting resolves its own) resolves nothing here.
        return {"open_or_refreshed": len(rows), "auto_resolved": 0}
    scope = ["status = 'open'", "detected_by = :detected_by", "last_seen < :at"]
    params: dict[str, Any] = {"detected_by": detected_by, "at": at}
    stmt_kinds: sa.BindParameter[Any] = sa.bindparam("kinds", expanding=True)
    if date_from is not None:
        scope.append("partition_date >= :date_from AND partition_date < :date_to")
        params.update(date_from=date_from, date_to=date_to)
    binds = [stmt_kinds]
    if source_ids is not None:
        ids = sorted(set(source_ids))
        if not ids:
            return {"open_or_refreshed": len(rows), "auto_resolved": 0}
        scope.append("source_id IN :ids")
        params["ids"] = ids
        binds.append(sa.bindparam("ids", expanding=True))
    resolved = conn.execute(
        sa.text(
            "UPDATE finance_exceptions SET status = 'resolved', resolved_at = :at, "
            "resolution = 'auto: the cause is gone (derived cleanly on a later run)' "
            f"WHERE {' AND '.join(scope)} AND kind IN :kinds"
        ).bindparams(*binds),
        {**params, "kinds": kinds},
    ).rowcount
    return {"open_or_refreshed": len(rows), "auto_resolved": int(resolved or 0)}


def amounts_by_currency(df: pd.DataFrame, amount: str, currency: str) -> dict[str, str]:
    """Sum of an integer minor-unit column per currency, formatted for metadata."""
    if df.empty:
        return {}
    sums = df.groupby(currency)[amount].sum()
    return {str(cur): format_amount(int(total), str(cur)) for cur, total in sums.items()}


def sample(df: pd.DataFrame, columns: list[str]) -> dg.MarkdownMetadataValue:
    """A small markdown sample of rows for metadata (never personal data: ids and reasons)."""
    if df.empty:
        return dg.MetadataValue.md("(none)")
    head = df[columns].head(MAX_SAMPLE).astype(str)
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += [
        "| " + " | ".join(v.replace("|", "/") for v in row) + " |"
        for row in head.itertuples(index=False)
    ]
    return dg.MetadataValue.md("\n".join(lines))


def unix_day(seconds: Any) -> str | None:
    """The UTC day of Unix ``seconds``; None when it is no time or lies past year 9999."""
    moment = unix_instant(seconds)
    if moment is None or moment.year == dt.MAXYEAR:
        return None
    return moment.date().isoformat()


def iso_day(value: Any) -> str | None:
    return value[:10] if isinstance(value, str) and len(value) >= 10 else None
