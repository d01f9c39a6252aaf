"""Extract: usage events from the metering service, read incrementally by ingestion time."""

import datetime as dt
import hashlib
import json
from collections.abc import Iterable, Iterator, Mapping
from itertools import islice
from typing import Any

import dagster as dg
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from finsync_pipeline.landing import read_cursor
from finsync_pipeline.ledger import dumps, now_iso
from finsync_pipeline.logic.screen import iso_instant
from finsync_pipeline.resources.metering import MeteringResource
from finsync_pipeline.resources.settings import PipelineSettings, future_skew_from_env
from finsync_pipeline.resources.warehouse import WarehouseResource, upsert_rows
from finsync_pipeline.schemas.usage import rfc3339_utc, usage_quantity

OWNERS = ["team:finance-data"]
STREAM = "usage_events"
# Events commit on the metering side a little out of ingestion order; re-reading a short
# lookback is cheap, and the (source, id) key makes the re-read a no-op.
LOOKBACK = dt.timedelta(minutes=10)
CHUNK = 5000
EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)


def meter_of(event: Mapping[str, Any]) -> str | None:
    """The meter an event feeds: ``data.meter``, else the one its ``type`` names."""
    data = event.get("data")
    if isinstance(data, Mapping) and isinstance(data.get("meter"), str):
        return str(data["meter"])
    etype = event.get("type")
    if isinstance(etype, str) and etype.startswith("com.finsync.usage."):
        return etype.removeprefix("com.finsync.usage.").rsplit(".", 1)[0]
    return None


def usage_row(item: Any, run_id: str) -> dict[str, Any]:
    """The warehouse row of one listed item (``{"event", "ingestedAt", ...}``).

    An item or event that is not an object lands as it came, under an id derived from its
    content, so the contract check quarantines it instead of the read failing.
    """
    event = item.get("event") if isinstance(item, Mapping) else item
    if not isinstance(event, Mapping):
        payload = dumps(event)
        digest = hashlib.sha256(payload.encode()).hexdigest()[:16]
        ingested = item.get("ingestedAt") if isinstance(item, Mapping) else None
        return {
            "source": "",
            "event_id": f"malformed-{digest}",
            "subject": None,
            "meter": None,
            "event_time": None,
            "event_date": None,
            "value_text": None,
            "quantity": None,
            "payload": payload,
            "ingested_at": rfc3339_utc(ingested) or now_iso(),
            "extraction_run_id": run_id,
        }
    data = event.get("data")
    value = data.get("value") if isinstance(data, Mapping) else None
    when = rfc3339_utc(event.get("time"))
    return {
        "source": str(event.get("source") or ""),
        "event_id": str(event.get("id") or ""),
        "subject": event.get("subject"),
        "meter": meter_of(event),
        "event_time": when,
        "event_date": when[:10] if when else None,
        "value_text": None if value is None else dumps(value),
        "quantity": usage_quantity(value),
        "payload": dumps(event),
        "ingested_at": rfc3339_utc(item.get("ingestedAt")) or str(item.get("ingestedAt")),
        "extraction_run_id": run_id,
    }


def _chunks(items: Iterable[dict[str, Any]], size: int) -> Iterator[list[dict[str, Any]]]:
    iterator = iter(items)
    while chunk := list(islice(iterator, size)):
        yield chunk


def _newest_ingestion(rows: list[dict[str, Any]]) -> str:
    """The chunk's newest ingestion time, never one beyond the allowed skew into the future
    (the metering service's clock run ahead must not skip what it ingests later)."""
    horizon = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=future_skew_from_env())
    times = [r["ingested_at"] for r in rows]
    near = [t for t in times if (m := iso_instant(t)) is None or m <= horizon]
    return max(near or [now_iso()])


def land_usage(
    engine: Engine, items: Iterable[Mapping[str, Any]], *, run_id: str, chunk: int = CHUNK
) -> tuple[int, int]:
    """Land listed events chunk by chunk; returns (events read, events new to the warehouse).

    Each chunk is one transaction that inserts its events (an event already landed is left as
    it is) and moves the cursor to the chunk's newest ingestion time: the listing is in
    ingestion order, so a crash resumes after the last committed chunk.
    """
    read = 0
    for rows in _chunks((usage_row(item, run_id) for item in items), chunk):
        read += len(rows)
        # A page may repeat a key (a producer's duplicate inside one response): keep the first.
        unique = list({(r["source"], r["event_id"]): r for r in reversed(rows)}.values())
        with engine.begin() as conn:
            upsert_rows(conn, "usage_events", unique, ["source", "event_id"], update=[])
            cursor = json.dumps({"ingested_at": _newest_ingestion(rows)})
            upsert_rows(
                conn,
                "extract_cursors",
                [{"stream": STREAM, "cursor": cursor, "updated_at": now_iso(), "run_id": run_id}],
                ["stream"],
            )
    # An event landed before keeps its first run id, so this run's rows are the new ones.
    with engine.connect() as conn:
        new = conn.execute(
            sa.text("SELECT COUNT(*) FROM usage_events WHERE extraction_run_id = :run_id"),
            {"run_id": run_id},
        ).scalar_one()
    return read, int(new)


def cursor_start(engine: Engine) -> dt.datetime:
    """Where this run reads from: the cursor minus the lookback, or the beginning."""
    raw = read_cursor(engine, STREAM)
    if raw is None:
        return EPOCH
    last = dt.datetime.fromisoformat(json.loads(raw)["ingested_at"].replace("Z", "+00:00"))
    return max(EPOCH, last - LOOKBACK)


@dg.asset(
    group_name="extract",
    kinds={"metering", "python"},
    owners=OWNERS,
    pool="metering_api",
)
def usage_events(
    context: dg.AssetExecutionContext,
    metering: MeteringResource,
    warehouse: WarehouseResource,
    settings: PipelineSettings,
) -> dg.MaterializeResult:
    """Every usage event the metering service ingested (CloudEvents: meter, subject, value,
    time), read incrementally by ingestion time and stored once per (source, id), so a
    producer's resend or a re-read never counts twice."""
    if not settings.source_on("metering"):
        # A company without usage metering: nothing to read, and no credentials to read it.
        return dg.MaterializeResult(
            metadata={"dagster/row_count": 0, "source": "switched off (FINSYNC_SOURCES_OFF)"}
        )
    engine = warehouse.get_engine()
    start = cursor_start(engine)
    client = metering.get_client()
    read, new = land_usage(engine, client.list_events(start), run_id=context.run.run_id)
    return dg.MaterializeResult(
        metadata={
            "dagster/row_count": new,
            "events read": read,
            "events new (not seen before)": new,
            "read from (ingestedAt)": start.isoformat(),
            "cursor (ingestedAt)": read_cursor(engine, STREAM) or "",
            "metering requests": client.requests_made,
        }
    )
