"""usage_events, its contract check and usage_daily, run through Dagster on SQLite and PostgreSQL.

The metering simulator serves the events over real HTTP; the golden file holds the expected
daily usage of a small fixed event set with a duplicate, malformed values, an unknown meter, an
event time with an offset, a customer subject, an ambiguous customer and an unknown subject.
"""

import datetime as dt
import json
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dagster as dg
import pytest
import sqlalchemy as sa

from finsync_pipeline.ledger import dumps
from finsync_pipeline.partitions import range_tags
from finsync_pipeline.resources.metering import MeteringResource
from finsync_pipeline.resources.settings import PipelineSettings
from finsync_pipeline.resources.warehouse import WarehouseResource, create_engine, read_frame
from finsync_pipeline.sandbox.http_base import Faults, SimServer
from finsync_pipeline.sandbox.metering_sim import MeteringSimulator
from finsync_pipeline.sandbox.store import Store
from finsync_tests.conftest import postgres_schema_url

# load_from_defs_folder imports the defs modules with Dagster's beta warnings silenced
# (single-run backfill policies are beta in 1.13); importing them directly needs the same.
with warnings.catch_warnings():
    warnings.simplefilter("ignore", dg.BetaWarning)
    from finsync_pipeline.defs.extract.usage import usage_events
    from finsync_pipeline.defs.validate.usage import usage_daily, usage_events_contract

GOLDEN = Path(__file__).resolve().parents[1] / "golden" / "usage_daily.json"
KEY = "om_test_" + "g" * 40
T0 = 1_790_000_000.0  # 2026-09-21T14:13:20Z
SOURCE = "/meter/api-gateway"
SUBSCRIPTIONS = [("sub_A", "cus_A"), ("sub_B", "cus_B"), ("sub_C", "cus_CD"), ("sub_D", "cus_CD")]


def ev(eid: str, subject: str, meter: str, value: Any, time: str) -> dict[str, Any]:
    return {
        "specversion": "1.0",
        "id": eid,
        "source": SOURCE,
        "type": f"com.finsync.usage.{meter}.v1",
        "subject": subject,
        "time": time,
        "data": {"value": value, "meter": meter},
    }


EVENTS = [
    ev("e01", "sub_A", "api_calls", 10, "2026-09-01T01:00:00Z"),
    ev("e02", "sub_A", "api_calls", 20, "2026-09-01T23:59:59+00:00"),
    ev("e01", "sub_A", "api_calls", 10, "2026-09-01T01:00:00Z"),  # duplicate (source, id)
    ev("e03", "sub_A", "storage_gb_hours", 5, "2026-09-01T12:00:00Z"),
    ev("e04", "cus_B", "api_calls", 7, "2026-09-01T22:30:00-02:00"),  # 2026-09-02 in UTC
    ev("e05", "sub_B", "api_calls", "12.5", "2026-09-02T03:00:00Z"),  # malformed: a string
    ev("e06", "sub_B", "api_calls", -3, "2026-09-02T04:00:00Z"),  # malformed: negative
    ev("e07", "sub_ghost", "api_calls", 100, "2026-09-02T05:00:00Z"),  # unknown subject
    ev("e08", "cus_CD", "api_calls", 4, "2026-09-01T06:00:00Z"),  # customer with two subs
    ev("e09", "sub_B", "storage_gb_hours", 0, "2026-09-02T08:00:00Z"),
    ev("e10", "sub_A", "api_calls", 1, "2026-09-03T00:00:00Z"),  # outside the range
    ev("e11", "sub_A", "bandwidth", 9, "2026-09-01T09:00:00Z"),  # a meter finsync does not bill
]
FIRST, LAST = dt.date(2026, 9, 1), dt.date(2026, 9, 2)


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def metering(tmp_path: Path, clock: Clock) -> Iterator[MeteringResource]:
    store = Store(tmp_path / "sandbox.sqlite3")
    server = SimServer(("127.0.0.1", 0), MeteringSimulator(Faults(), store, KEY, clock))
    server.start()
    yield MeteringResource(api_key=KEY, base_url=f"http://127.0.0.1:{server.port}")
    server.stop()
    store.close()


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def warehouse_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'warehouse.db'}"
    else:
        yield from postgres_schema_url()


def _seed_subscriptions(url: str) -> None:
    rows = [
        {
            "source_id": sub,
            "partition_date": "2026-01-01",
            "source_system": "stripe",
            "source_updated_at": None,
            "payload": dumps({"id": sub, "object": "subscription", "customer": cus}),
            "extraction_run_id": "seed",
            "extracted_at": "2026-01-01T00:00:00+00:00",
        }
        for sub, cus in SUBSCRIPTIONS
    ]
    with create_engine(url).begin() as conn:
        conn.execute(
            sa.text(
                "INSERT INTO stripe_subscriptions (source_id, partition_date, source_system, "
                "source_updated_at, payload, extraction_run_id, extracted_at) VALUES "
                "(:source_id, :partition_date, :source_system, :source_updated_at, :payload, "
                ":extraction_run_id, :extracted_at)"
            ),
            rows,
        )


def _run(url: str, metering: MeteringResource, *, daily: bool = True) -> dg.ExecuteInProcessResult:
    assets: list[Any] = [usage_events, usage_events_contract]
    if daily:
        assets.append(usage_daily)
    return dg.materialize(
        assets,
        resources={
            "warehouse": WarehouseResource(url=url),
            "settings": PipelineSettings(max_bad_share=0.5),
            "metering": metering,
        },
        instance=dg.DagsterInstance.ephemeral(),
        tags=range_tags(FIRST, LAST) if daily else None,
    )


def _metadata(result: dg.ExecuteInProcessResult, asset: str) -> dict[str, Any]:
    events = [
        e for e in result.get_asset_materialization_events() if e.asset_key == dg.AssetKey(asset)
    ]
    assert events, asset
    return {k: getattr(v, "value", v) for k, v in events[-1].materialization.metadata.items()}


def _frame(url: str, sql: str) -> list[dict[str, Any]]:
    with create_engine(url).connect() as conn:
        return read_frame(conn, sql).to_dict("records")


def test_golden_usage_daily_with_duplicates_malformed_and_unknown_subjects(
    warehouse_url: str, metering: MeteringResource
) -> None:
    _seed_subscriptions(warehouse_url)
    metering.get_client().ingest(EVENTS)
    result = _run(warehouse_url, metering)
    assert result.success

    rows = _frame(
        warehouse_url,
        "SELECT usage_date, subscription_id, meter, quantity, events, first_event_at, "
        "last_event_at FROM usage_daily ORDER BY usage_date, subscription_id, meter",
    )
    assert [
        {k: (int(v) if k in ("quantity", "events") else v) for k, v in r.items()} for r in rows
    ] == json.loads(GOLDEN.read_text())

    # Stored once per (source, id); the duplicate never counts twice.
    assert _frame(warehouse_url, "SELECT COUNT(*) AS n FROM usage_events")[0]["n"] == 11
    quarantined = _frame(
        warehouse_url,
        "SELECT source_id, field, source_system FROM quarantine "
        "WHERE asset = 'usage_events' ORDER BY source_id",
    )
    assert [(q["source_id"], q["field"]) for q in quarantined] == [
        (f"{SOURCE}/e05", "value"),
        (f"{SOURCE}/e06", "value"),
        (f"{SOURCE}/e11", "meter"),
    ]
    assert {q["source_system"] for q in quarantined} == {"metering"}
    exceptions = _frame(
        warehouse_url,
        "SELECT kind, source_id, owner_queue, status FROM finance_exceptions ORDER BY source_id",
    )
    assert exceptions == [
        {"kind": "unknown_usage_subject", "source_id": s, "owner_queue": "revops", "status": "open"}
        for s in ("cus_CD", "sub_ghost")
    ]

    check = next(iter(result.get_asset_check_evaluations()))
    assert check.passed
    check_meta = {k: getattr(v, "value", v) for k, v in check.metadata.items()}
    assert check_meta["rows checked"] == 11
    assert check_meta["rows quarantined"] == 3

    daily = _metadata(result, "usage_daily")
    assert daily["dagster/row_count"] == 4
    assert daily["events aggregated"] == 5
    assert daily["quantity by meter"] == {"api_calls": 37, "storage_gb_hours": 5}
    assert daily["unknown subjects (exceptions)"] == 2
    columns = [c.name for c in daily["dagster/column_schema"].columns]
    assert columns[:3] == ["usage_date", "subscription_id", "meter"]


def test_incremental_runs_read_from_the_cursor_and_land_each_event_once(
    warehouse_url: str, metering: MeteringResource, clock: Clock
) -> None:
    client = metering.get_client()
    client.ingest(EVENTS[:4])
    first = _run(warehouse_url, metering, daily=False)
    assert _metadata(first, "usage_events")["events new (not seen before)"] == 3

    clock.now = T0 + 3600
    client.ingest(EVENTS)  # a producer resending everything: only new ids are stored
    second = _run(warehouse_url, metering, daily=False)
    meta = _metadata(second, "usage_events")
    assert meta["events new (not seen before)"] == 8
    # The cursor (minus its 10-minute lookback) skips nothing and re-reads only the lookback.
    assert meta["read from (ingestedAt)"] == "2026-09-21T14:03:20+00:00"
    assert meta["events read"] == 11
    check = next(iter(second.get_asset_check_evaluations()))
    assert {k: getattr(v, "value", v) for k, v in check.metadata.items()}["rows checked"] == 8

    clock.now = T0 + 7200
    third = _run(warehouse_url, metering, daily=False)
    meta = _metadata(third, "usage_events")
    # Nothing new: the lookback re-reads the last batch, and it lands nothing twice.
    assert (meta["events read"], meta["events new (not seen before)"]) == (8, 0)
    assert _frame(warehouse_url, "SELECT COUNT(*) AS n FROM usage_events")[0]["n"] == 11


def test_rerunning_a_range_replaces_it_exactly(
    warehouse_url: str, metering: MeteringResource
) -> None:
    _seed_subscriptions(warehouse_url)
    metering.get_client().ingest(EVENTS)
    assert _run(warehouse_url, metering).success
    before = _frame(warehouse_url, "SELECT * FROM usage_daily ORDER BY 1, 2, 3")
    assert _run(warehouse_url, metering).success
    after = _frame(warehouse_url, "SELECT * FROM usage_daily ORDER BY 1, 2, 3")
    strip = [{k: v for k, v in r.items() if k != "run_id"} for r in before]
    assert strip == [{k: v for k, v in r.items() if k != "run_id"} for r in after]


def _run_day(url: str, metering: MeteringResource, day: dt.date) -> dg.ExecuteInProcessResult:
    """What the daily schedule runs of usage for one partition."""
    return dg.materialize(
        [usage_events, usage_events_contract, usage_daily],
        resources={
            "warehouse": WarehouseResource(url=url),
            "settings": PipelineSettings(max_bad_share=0.5),
            "metering": metering,
        },
        instance=dg.DagsterInstance.ephemeral(),
        partition_key=day.isoformat(),
    )


def test_usage_ingested_after_its_day_ran_is_aggregated_by_the_next_run(
    warehouse_url: str, metering: MeteringResource, clock: Clock
) -> None:
    _seed_subscriptions(warehouse_url)
    client = metering.get_client()
    client.ingest([ev("e01", "sub_A", "api_calls", 10, "2026-09-01T01:00:00Z")])
    assert _run_day(warehouse_url, metering, FIRST).success
    # A day with no usage at all ran too.
    assert _run_day(warehouse_url, metering, LAST).success
    totals = "SELECT usage_date, quantity, events FROM usage_daily ORDER BY usage_date"
    assert [(r["usage_date"], int(r["quantity"])) for r in _frame(warehouse_url, totals)] == [
        ("2026-09-01", 10)
    ]

    # A producer's backlog arrives an hour later: usage of September 1 and 2, after both ran.
    clock.now = T0 + 3600
    client.ingest(
        [
            ev("e02", "sub_A", "api_calls", 5, "2026-09-01T13:00:00Z"),
            ev("e03", "sub_B", "api_calls", 7, "2026-09-02T02:00:00Z"),
            ev("e04", "sub_A", "api_calls", 1, "2026-09-03T00:00:00Z"),
        ]
    )
    result = _run_day(warehouse_url, metering, LAST + dt.timedelta(days=1))
    assert result.success
    assert [
        (r["usage_date"], int(r["quantity"]), int(r["events"]))
        for r in _frame(warehouse_url, totals)
    ] == [("2026-09-01", 15, 2), ("2026-09-02", 7, 1), ("2026-09-03", 1, 1)]
    late = _metadata(result, "usage_daily")["older days aggregated again (late events)"]
    assert late == ["2026-09-01", "2026-09-02"]
    # Nothing new: the next run aggregates no older day again.
    again = _run_day(warehouse_url, metering, LAST + dt.timedelta(days=1))
    assert _metadata(again, "usage_daily")["older days aggregated again (late events)"] == []
