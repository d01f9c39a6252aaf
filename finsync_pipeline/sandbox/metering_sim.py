"""OpenMeter-style usage-metering simulator: CloudEvents 1.0 ingestion and an event listing.

Wire format (reference/apis.md section 8):

- ``POST /api/v1/events`` with ``Content-Type: application/cloudevents+json`` (one event) or
  ``application/cloudevents-batch+json`` (a JSON array), ``Authorization: Bearer <API key>``.
  Success is ``204 No Content``. A batch is all or nothing: one invalid event rejects it.
- Errors are RFC 7807 problem details, ``application/problem+json``
  ``{"type", "title", "status", "detail"}``; a 400's ``detail`` names the field (``[3].time``
  for the fourth event of a batch).
- Deduplication on ``(source, id)``: a repeat is accepted with 204 and stored once (the first
  copy wins), as OpenMeter's sink does with dedupe enabled.
- ``GET /api/v1/events`` lists ingested events oldest first, as a JSON array of
  ``{"event": <CloudEvent>, "ingestedAt": RFC 3339, "validationError"?: str}``.

What is assumed where OpenMeter's documentation or apis.md do not settle it:

- Validation at ingestion: ``specversion`` "1.0"; non-empty string ``id``, ``source``, ``type``
  and ``subject`` (OpenMeter aggregates by subject, so it is required here); ``time``, when
  given, an RFC 3339 timestamp (absent, it defaults to the ingestion time, as in OpenMeter);
  ``data`` an object holding the value property of the meter the ``type`` selects (``$.value``).
  An event whose value is present but not a number (nor a numeric string) is stored with a
  ``validationError``, the way OpenMeter reports meter-processing errors in its event list.
  Events that no meter consumes are stored too. finsync's own usage contract (non-negative
  integer, known subscription) is stricter and is enforced downstream, not here.
- Listing parameters: ``ingestedAtFrom`` (inclusive) and ``ingestedAtTo`` (exclusive) bound the
  ingestion time; ``from`` (inclusive) and ``to`` (exclusive) bound the event time; ``limit``
  is 1..1000 (default 100). Paging is by keyset on ``(ingestedAt, source, id)``: when more
  events match, the response carries ``Link: </api/v1/events?...&cursor=...>; rel="next"``, a
  *relative* reference whose ``cursor`` is opaque (base64url JSON of the last item's key). The
  cursor stays valid while events are ingested, since new events sort after it. OpenMeter's v1
  listing has no cursor (only ``limit``); the cursor follows its v2 listing in spirit.
- Rate limiting answers 429 with ``Retry-After`` via the shared ``Faults``.
"""

import base64
import binascii
import datetime as dt
import re
import secrets
import sqlite3
import time
from collections.abc import Callable, Iterable, Mapping
from decimal import Decimal, InvalidOperation
from typing import Any
from urllib.parse import urlencode

import simplejson

from finsync_pipeline.sandbox.http_base import (
    SYSTEMS,
    FaultRule,
    Faults,
    Request,
    Response,
    Simulator,
    dumps,
)
from finsync_pipeline.sandbox.store import Store

SYSTEM = "metering"
EVENTS_PATH = "/api/v1/events"
SINGLE = "application/cloudevents+json"
BATCH = "application/cloudevents-batch+json"
PROBLEM = "application/problem+json"
MAX_LIMIT = 1000
DEFAULT_LIMIT = 100
MAX_BATCH = 1000

# event type -> (meter, JSONPath of the value property), like OpenMeter's meter definitions.
METERS: dict[str, tuple[str, str]] = {
    "com.finsync.usage.api_calls.v1": ("api_calls", "value"),
    "com.finsync.usage.storage_gb_hours.v1": ("storage_gb_hours", "value"),
}

SCHEMA = """
CREATE TABLE IF NOT EXISTS metering_event (
    source TEXT NOT NULL, id TEXT NOT NULL, type TEXT NOT NULL, subject TEXT NOT NULL,
    time TEXT NOT NULL, time_utc TEXT NOT NULL, ingested_at TEXT NOT NULL,
    validation_error TEXT, body TEXT NOT NULL,
    PRIMARY KEY (source, id));
CREATE INDEX IF NOT EXISTS metering_event_ingested ON metering_event (ingested_at, source, id);
CREATE INDEX IF NOT EXISTS metering_event_time ON metering_event (time_utc);
"""

_RFC3339 = re.compile(r"^\d{4}-\d{2}-\d{2}[Tt]\d{2}:\d{2}:\d{2}(\.\d+)?([Zz]|[+-]\d{2}:\d{2})$")
_TITLES = {
    400: "Bad Request",
    401: "Unauthorized",
    404: "Not Found",
    405: "Method Not Allowed",
    415: "Unsupported Media Type",
    429: "Too Many Requests",
    500: "Internal Server Error",
    502: "Bad Gateway",
    503: "Service Unavailable",
    504: "Gateway Timeout",
}
_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
_LIST_PARAMS = {"ingestedAtFrom", "ingestedAtTo", "from", "to", "limit", "cursor"}


class ProblemError(Exception):
    """An error answered as RFC 7807 problem details."""

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail

    def response(self) -> Response:
        """The problem as an HTTP response."""
        return problem(self.status, self.detail)


def problem(status: int, detail: str) -> Response:
    """An ``application/problem+json`` response."""
    body = {
        "type": "about:blank",
        "title": _TITLES.get(status, "Error"),
        "status": status,
        "detail": detail,
    }
    return Response(status, dumps(body), {"Content-Type": PROBLEM})


def parse_rfc3339(value: Any) -> dt.datetime | None:
    """An aware UTC datetime from an RFC 3339 timestamp, or None when it is not one."""
    if not isinstance(value, str) or not _RFC3339.match(value):
        return None
    try:
        parsed = dt.datetime.fromisoformat(value.upper().replace("Z", "+00:00"))
    except ValueError:
        return None
    return parsed.astimezone(dt.UTC)


def format_instant(moment: dt.datetime) -> str:
    """Fixed-width UTC RFC 3339 with microseconds, so text order is time order."""
    return moment.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _validate(event: Any, where: str) -> dt.datetime | None:
    """Check one CloudEvent; returns its parsed time (None when absent).

    Raises:
        ProblemError: 400 naming the offending field.
    """
    if not isinstance(event, dict):
        raise ProblemError(400, f"{where or 'body'}: an event must be a JSON object")
    prefix = f"{where}." if where else ""
    if event.get("specversion") != "1.0":
        raise ProblemError(
            400, f'{prefix}specversion: must be "1.0", got {event.get("specversion")!r}'
        )
    for name in ("id", "source", "type", "subject"):
        value = event.get(name)
        if not isinstance(value, str) or not value.strip():
            raise ProblemError(400, f"{prefix}{name}: required, a non-empty string")
    when = None
    if event.get("time") is not None:
        when = parse_rfc3339(event["time"])
        if when is None:
            raise ProblemError(
                400, f"{prefix}time: not an RFC 3339 timestamp: {event.get('time')!r}"
            )
    meter = METERS.get(event["type"])
    if meter is not None:
        data = event.get("data")
        if not isinstance(data, dict):
            raise ProblemError(400, f"{prefix}data: required, a JSON object for meter {meter[0]}")
        if data.get(meter[1]) is None:
            raise ProblemError(
                400, f"{prefix}data.{meter[1]}: required by meter {meter[0]} (value property)"
            )
    return when


def _processing_error(event: Mapping[str, Any]) -> str | None:
    """OpenMeter-style meter processing error of a stored event, or None."""
    meter = METERS.get(str(event.get("type")))
    if meter is None:
        return f"no meter consumes event type {event.get('type')!r}"
    value = (event.get("data") or {}).get(meter[1])
    if isinstance(value, bool):
        return f"data.{meter[1]}: not a number"
    if isinstance(value, int | float | Decimal):
        return None
    if isinstance(value, str):
        try:
            Decimal(value)
        except InvalidOperation:
            return f"data.{meter[1]}: not a number: {value!r}"
        return None
    return f"data.{meter[1]}: not a number"


def _rows(
    events: Iterable[Mapping[str, Any]], ingested_at: Callable[[Mapping[str, Any]], str]
) -> list[tuple[Any, ...]]:
    rows = []
    for event in events:
        at = ingested_at(event)
        stored = dict(event)
        if stored.get("time") is None:
            # OpenMeter: the time defaults to the time the event was received.
            stored["time"] = at
        rows.append(
            (
                stored["source"],
                stored["id"],
                stored["type"],
                stored["subject"],
                stored["time"],
                format_instant(parse_rfc3339(stored["time"]) or _EPOCH),
                at,
                _processing_error(stored),
                dumps(stored).decode(),
            )
        )
    return rows


def _insert(conn: sqlite3.Connection, rows: list[tuple[Any, ...]]) -> int:
    before = conn.total_changes
    conn.executemany(
        "INSERT INTO metering_event "
        "(source, id, type, subject, time, time_utc, ingested_at, validation_error, body) "
        "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (source, id) DO NOTHING",
        rows,
    )
    return conn.total_changes - before


def ensure_schema(store: Store) -> None:
    """Create the simulator's table and indexes in the store (idempotent)."""
    with store.tx() as conn:
        for statement in SCHEMA.split(";"):
            if statement.strip():
                conn.execute(statement)


def seed_metering(
    store: Store, events: Iterable[Mapping[str, Any]], *, ingest_delay_s: int = 2
) -> int:
    """Load usage events as if their producers had sent them, ``ingest_delay_s`` after each
    event's time; validation and ``(source, id)`` dedupe apply as on the wire.

    Returns:
        Events stored (duplicates are not counted).

    Raises:
        ValueError: An event breaks CloudEvents validation (the message names the field).
    """
    ensure_schema(store)
    batch = list(events)
    for index, event in enumerate(batch):
        try:
            _validate(event, f"[{index}]")
        except ProblemError as e:
            raise ValueError(e.detail) from e

    def at(event: Mapping[str, Any]) -> str:
        when = parse_rfc3339(event.get("time"))
        assert when is not None, "seeded events carry their time"
        return format_instant(when + dt.timedelta(seconds=ingest_delay_s))

    with store.tx() as conn:
        return _insert(conn, _rows(batch, at))


def arm_fault(
    faults: Faults,
    *,
    status: int,
    count: int = 1,
    retry_after_s: int | None = 1,
    path_prefix: str | None = None,
) -> None:
    """Make the next ``count`` metering requests answer ``status``.

    ``Faults.add`` only accepts the systems listed in ``http_base.SYSTEMS``; until "metering" is
    registered there, the rule is appended under the same lock with the same checks.
    """
    if SYSTEM in SYSTEMS:
        faults.add(
            SYSTEM,
            status=status,
            count=count,
            retry_after_s=retry_after_s,
            path_prefix=path_prefix,
        )
        return
    if not 400 <= status <= 599 or count < 1:
        raise ValueError("fault status must be 400-599 and count >= 1")
    with faults._lock:
        faults.rules.append(FaultRule(SYSTEM, status, count, retry_after_s, path_prefix))


def _encode_cursor(key: tuple[str, str, str]) -> str:
    return base64.urlsafe_b64encode(simplejson.dumps(list(key)).encode()).decode().rstrip("=")


def _decode_cursor(text: str) -> tuple[str, str, str]:
    try:
        raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
        key = simplejson.loads(raw)
        if isinstance(key, list) and len(key) == 3 and all(isinstance(k, str) for k in key):
            return key[0], key[1], key[2]
    except (binascii.Error, ValueError, UnicodeDecodeError):
        pass
    raise ProblemError(400, "cursor: not a cursor this API issued")


class MeteringSimulator(Simulator):
    """OpenMeter's event ingestion and listing API over the sandbox store.

    Args:
        faults: Shared fault injection (system "metering").
        store: The sandbox store; the simulator adds its own table.
        api_key: The Bearer API key accepted.
        clock: Wall clock (Unix seconds) that stamps ``ingestedAt``.
    """

    system = SYSTEM

    def __init__(
        self, faults: Faults, store: Store, api_key: str, clock: Callable[[], float] = time.time
    ) -> None:
        super().__init__(faults)
        self.store = store
        self.api_key = api_key
        self.clock = clock
        ensure_schema(store)

    def fault_response(self, status: int) -> Response:
        """Problem details for an injected status."""
        if status == 429:
            return problem(429, "rate limit exceeded; retry after the Retry-After delay")
        return problem(status, f"injected error {status}")

    def handle(self, req: Request) -> Response:
        """Serve one ``/api/v1/events`` request."""
        try:
            self._authenticate(req)
            if req.path.rstrip("/") != EVENTS_PATH:
                raise ProblemError(404, f"no route {req.method} {req.path}")
            if req.method == "POST":
                return self._ingest(req)
            if req.method == "GET":
                return self._list(req)
            raise ProblemError(405, f"{req.method} is not allowed on {EVENTS_PATH}")
        except ProblemError as e:
            return e.response()

    def _authenticate(self, req: Request) -> None:
        auth = req.header("Authorization") or ""
        if not auth.startswith("Bearer ") or not auth[len("Bearer ") :].strip():
            raise ProblemError(401, "missing API token: send Authorization: Bearer <token>")
        token = auth[len("Bearer ") :].strip()
        if not secrets.compare_digest(token.encode(), self.api_key.encode()):
            raise ProblemError(401, "invalid API token")

    # ingestion --------------------------------------------------------------------------------
    def _ingest(self, req: Request) -> Response:
        content_type = (req.header("Content-Type") or "").split(";")[0].strip().lower()
        if content_type not in (SINGLE, BATCH):
            raise ProblemError(
                415, f"Content-Type must be {SINGLE} or {BATCH}, got {content_type or 'none'}"
            )
        try:
            body = simplejson.loads(req.body or b"null", use_decimal=True)
        except ValueError as e:
            raise ProblemError(400, f"body: not JSON ({e})") from None
        if content_type == SINGLE:
            events = [body]
            _validate(body, "")
        else:
            if not isinstance(body, list) or not body:
                raise ProblemError(400, "body: a batch is a non-empty JSON array of events")
            if len(body) > MAX_BATCH:
                raise ProblemError(400, f"body: at most {MAX_BATCH} events per batch")
            events = body
            for index, event in enumerate(events):
                _validate(event, f"[{index}]")
        at = format_instant(dt.datetime.fromtimestamp(self.clock(), dt.UTC))
        with self.store.tx() as conn:
            _insert(conn, _rows(events, lambda _e: at))
        return Response(204)

    # listing ----------------------------------------------------------------------------------
    @staticmethod
    def _instant(params: dict[str, str], name: str) -> str | None:
        if name not in params:
            return None
        when = parse_rfc3339(params[name])
        if when is None:
            raise ProblemError(400, f"{name}: not an RFC 3339 timestamp: {params[name]!r}")
        return format_instant(when)

    def _list(self, req: Request) -> Response:
        params: dict[str, str] = {}
        for key, value in req.params():
            if key not in _LIST_PARAMS:
                raise ProblemError(400, f"{key}: unknown query parameter")
            params[key] = value
        try:
            limit = int(params.get("limit", DEFAULT_LIMIT))
        except ValueError:
            raise ProblemError(400, f"limit: not an integer: {params['limit']!r}") from None
        if not 1 <= limit <= MAX_LIMIT:
            raise ProblemError(400, f"limit: must be between 1 and {MAX_LIMIT}")
        where: list[str] = []
        args: list[Any] = []
        for name, column, op in (
            ("ingestedAtFrom", "ingested_at", ">="),
            ("ingestedAtTo", "ingested_at", "<"),
            ("from", "time_utc", ">="),
            ("to", "time_utc", "<"),
        ):
            bound = self._instant(params, name)
            if bound is not None:
                where.append(f"{column} {op} ?")
                args.append(bound)
        if params.get("cursor"):
            where.append("(ingested_at, source, id) > (?, ?, ?)")
            args += list(_decode_cursor(params["cursor"]))
        rows = self.store.all(
            "SELECT source, id, ingested_at, validation_error, body FROM metering_event"
            + (f" WHERE {' AND '.join(where)}" if where else "")
            + " ORDER BY ingested_at, source, id LIMIT ?",
            [*args, limit + 1],
        )
        page = rows[:limit]
        items = [self._item(row) for row in page]
        headers = {"Content-Type": "application/json"}
        if len(rows) > limit:
            last = page[-1]
            next_params = {k: v for k, v in params.items() if k != "cursor"}
            next_params["limit"] = str(limit)
            next_params["cursor"] = _encode_cursor(
                (last["ingested_at"], last["source"], last["id"])
            )
            headers["Link"] = f'<{EVENTS_PATH}?{urlencode(next_params)}>; rel="next"'
        return Response(200, ("[" + ",".join(items) + "]").encode(), headers)

    @staticmethod
    def _item(row: sqlite3.Row) -> str:
        text = '{"event":' + row["body"] + ',"ingestedAt":' + simplejson.dumps(row["ingested_at"])
        if row["validation_error"] is not None:
            text += ',"validationError":' + simplejson.dumps(row["validation_error"])
        return text + "}"

    def count(self) -> int:
        """Events stored (each (source, id) once)."""
        row = self.store.one("SELECT COUNT(*) AS n FROM metering_event")
        return 0 if row is None else int(row["n"])
