"""Screening of landed records for what no contract can read, before they are flattened.

A flattener reads a record into typed columns; some values break that reading, or would
mislead what is computed from it:

- a record that is not a JSON object (``json_object``);
- one id that came more than once in one extract with different content
  (``conflicting_copies``): landing keeps every copy under ``CONFLICT_KEY``;
- a NaN or an Infinity (``finite_number``; the HTTP client reads them as ``NOT_A_NUMBER``);
- a number beyond 2**53 - 1, past which JSON numbers stop being exact in other readers
  (I-JSON, RFC 7493) and an amount of 10**30 stops fitting a column (``number_in_range``);
- a change or creation time beyond the allowed clock skew into the future
  (``future_timestamp``): such a time would carry an extract cursor past every real change.

Each becomes a failure of the record's contract check (source id, field, check, reason), so it
goes to quarantine like any other contract failure, and the record is left out of the
flattening.
"""

import datetime as dt
from collections.abc import Callable, Iterator, Mapping, Sequence
from decimal import Decimal
from typing import Any

import pandas as pd

from finsync_pipeline.logic.validation import FAILURE_COLUMNS
from finsync_pipeline.money import MAX_SAFE_INTEGER
from finsync_pipeline.resources.http import NOT_A_NUMBER

CONFLICT_KEY = "finsync:conflicting_copies"
RECORD = "(record)"
_SF_FORMAT = "%Y-%m-%dT%H:%M:%S.%f%z"


def unix_instant(value: Any) -> dt.datetime | None:
    """Unix seconds as a UTC instant; past year 9999 (or before year 1), ``datetime.max``."""
    if isinstance(value, bool) or not isinstance(value, int):
        return None
    try:
        return dt.datetime.fromtimestamp(value, tz=dt.UTC)
    except (OverflowError, OSError, ValueError):
        return dt.datetime.max.replace(tzinfo=dt.UTC) if value > 0 else None


def salesforce_instant(value: Any) -> dt.datetime | None:
    """Salesforce's ``2025-03-01T10:00:00.000+0000`` as an instant; None when unreadable."""
    if not isinstance(value, str):
        return None
    try:
        return dt.datetime.strptime(value, _SF_FORMAT).astimezone(dt.UTC)
    except (ValueError, OverflowError):
        return None


def iso_instant(value: Any) -> dt.datetime | None:
    """An RFC 3339 time (``Z`` or an offset) as an instant; None when unreadable."""
    if not isinstance(value, str):
        return None
    try:
        moment = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return moment if moment.tzinfo else moment.replace(tzinfo=dt.UTC)


Reader = Callable[[Any], dt.datetime | None]
# Per system, the top-level fields that say when a record was made or last changed, and how
# to read them. ``status_transitions`` holds the Stripe times an invoice's change time is taken
# from.
TIMESTAMPS: Mapping[str, Mapping[str, Reader]] = {
    "stripe": {"created": unix_instant, "updated": unix_instant},
    "salesforce": {
        "CreatedDate": salesforce_instant,
        "LastModifiedDate": salesforce_instant,
        "SystemModstamp": salesforce_instant,
    },
    "metering": {"time": iso_instant},
    "netsuite": {},
}
_NESTED_TIMES: Mapping[str, tuple[str, Reader]] = {"stripe": ("status_transitions", unix_instant)}


def is_future(moment: dt.datetime | None, now: dt.datetime, skew_s: float) -> bool:
    """Whether ``moment`` lies more than ``skew_s`` seconds after ``now``."""
    return moment is not None and moment > now + dt.timedelta(seconds=skew_s)


def _walk(value: Any, path: str) -> Iterator[tuple[str, Any]]:
    """Every scalar of a JSON value with its path (``lines.data[0].amount``), depth first."""
    stack: list[tuple[str, Any]] = [(path, value)]
    while stack:
        where, node = stack.pop()
        if isinstance(node, dict):
            stack.extend((f"{where}.{k}" if where else str(k), v) for k, v in node.items())
        elif isinstance(node, list):
            stack.extend((f"{where}[{n}]", v) for n, v in enumerate(node))
        else:
            yield where, node


def _bad_number(value: Any) -> tuple[str, str] | None:
    if isinstance(value, str) and value.startswith(NOT_A_NUMBER):
        return "finite_number", f"is {value.removeprefix(NOT_A_NUMBER)}, not a number"
    if isinstance(value, float) or (isinstance(value, Decimal) and not value.is_finite()):
        return "finite_number", f"is {value}, not an exact number"
    if isinstance(value, bool) or not isinstance(value, int | Decimal):
        return None
    if abs(Decimal(value)) > MAX_SAFE_INTEGER:
        return "number_in_range", f"is {value}, beyond {MAX_SAFE_INTEGER}"
    return None


def _times(record: Mapping[str, Any], system: str) -> Iterator[tuple[str, Any, Reader]]:
    for key, read in TIMESTAMPS.get(system, {}).items():
        if key in record:
            yield key, record[key], read
    nested = _NESTED_TIMES.get(system)
    if nested is not None and isinstance(record.get(nested[0]), dict):
        for key, value in record[nested[0]].items():
            yield f"{nested[0]}.{key}", value, nested[1]


def record_failures(
    source_id: str,
    record: Any,
    *,
    system: str,
    obj: str,
    now: dt.datetime,
    skew_s: float,
) -> list[dict[str, Any]]:
    """What keeps ``record`` from its contract, one failure per field (empty when none)."""

    def failure(field: str, check: str, why: str, value: Any) -> dict[str, Any]:
        return {
            "source_id": source_id,
            "field": field,
            "check_name": check,
            "reason": f"{system} {obj} {source_id}: field {field} {why}",
            "failure_value": None if value is None else str(value)[:200],
        }

    if not isinstance(record, dict):
        kind = "an array" if isinstance(record, list) else type(record).__name__
        return [failure(RECORD, "json_object", f"is {kind}, not an object", record)]
    copies = record.get(CONFLICT_KEY)
    if isinstance(copies, list):
        return [
            failure(
                RECORD,
                "conflicting_copies",
                f"came {len(copies)} times in one extract with different content; every copy "
                "is held until the source sends one version",
                len(copies),
            )
        ]
    found = []
    for field, value in _walk(record, ""):
        bad = _bad_number(value)
        if bad is not None:
            found.append(failure(field, bad[0], bad[1], value))
    for field, value, read in _times(record, system):
        moment = read(value)
        if is_future(moment, now, skew_s):
            found.append(
                failure(
                    field,
                    "future_timestamp",
                    f"is {value!r}, more than {skew_s:g}s in the future "
                    "(FINSYNC_MAX_FUTURE_SKEW_S); it never moves an extract cursor",
                    value,
                )
            )
    return found


def screen(
    ids: Sequence[str],
    records: Sequence[Any],
    *,
    system: str,
    obj: str,
    now: dt.datetime,
    skew_s: float,
) -> tuple[list[int], pd.DataFrame]:
    """The positions of the records fit for their contract, and the failures of the others.

    Args:
        ids: Each record's landed source id.
        records: The records as landed (parsed JSON).
        system: The source system (``stripe``, ``salesforce``, ``metering``, ``netsuite``).
        obj: The kind of record, for the reason (``invoice``, ``Account``).
        now: The moment future times are measured from.
        skew_s: How far into the future a time may be (clock skew) before it is refused.
    """
    fit: list[int] = []
    failures: list[dict[str, Any]] = []
    for n, (source_id, record) in enumerate(zip(ids, records, strict=True)):
        found = record_failures(
            str(source_id), record, system=system, obj=obj, now=now, skew_s=skew_s
        )
        if found:
            failures += found
        else:
            fit.append(n)
    return fit, pd.DataFrame(failures, columns=FAILURE_COLUMNS)
