"""MeteringClient over real HTTP against the metering simulator."""

import datetime as dt
import math
import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from finsync_pipeline.errors import (
    AuthenticationError,
    ConfigurationError,
    PermanentUpstreamError,
)
from finsync_pipeline.resources.http import HttpOptions
from finsync_pipeline.resources.metering import MeteringClient, MeteringResource
from finsync_pipeline.sandbox.http_base import Faults, SimServer
from finsync_pipeline.sandbox.metering_sim import MeteringSimulator, arm_fault
from finsync_pipeline.sandbox.store import Store

KEY = "om_test_" + "s" * 40
T0 = 1_790_000_000.0  # 2026-09-21T14:13:20Z


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def sim(tmp_path: Path, clock: Clock) -> Iterator[tuple[MeteringSimulator, str]]:
    store = Store(tmp_path / "sandbox.sqlite3")
    app = MeteringSimulator(Faults(), store, KEY, clock)
    server = SimServer(("127.0.0.1", 0), app)
    server.start()
    yield app, f"http://127.0.0.1:{server.port}"
    server.stop()
    store.close()


@pytest.fixture
def sleeps() -> list[float]:
    return []


@pytest.fixture
def options(sleeps: list[float]) -> HttpOptions:
    return HttpOptions(timeout=(5.0, 30.0), sleep=sleeps.append, rng=random.Random(3))


def client(base: str, options: HttpOptions, key: str = KEY) -> MeteringClient:
    return MeteringResource(api_key=key, base_url=base).get_client(http_options=options)


def events(prefix: str, n: int) -> list[dict[str, Any]]:
    return [
        {
            "specversion": "1.0",
            "id": f"{prefix}-{i:04d}",
            "source": "/meter/api-gateway",
            "type": "com.finsync.usage.api_calls.v1",
            "subject": "sub_1",
            "time": "2026-09-01T10:00:00Z",
            "data": {"value": i, "meter": "api_calls"},
        }
        for i in range(n)
    ]


def at(offset_s: float) -> dt.datetime:
    return dt.datetime.fromtimestamp(T0 + offset_s, dt.UTC)


def test_lists_every_event_across_pages_following_the_cursor(
    sim: tuple[MeteringSimulator, str], options: HttpOptions
) -> None:
    _, base = sim
    metering = client(base, options)
    assert metering.ingest(events("a", 250), batch_size=100) == 250
    assert metering.requests_made == 3
    listed = list(metering.list_events(at(-60), page_size=40))
    assert [i["event"]["id"] for i in listed] == [e["id"] for e in events("a", 250)]
    assert metering.requests_made == 3 + math.ceil(250 / 40)


def test_ingest_twice_stores_once(sim: tuple[MeteringSimulator, str], options: HttpOptions) -> None:
    app, base = sim
    metering = client(base, options)
    metering.ingest(events("a", 30))
    metering.ingest(events("a", 30))
    assert app.count() == 30


def test_reads_only_the_ingestion_window(
    sim: tuple[MeteringSimulator, str], clock: Clock, options: HttpOptions
) -> None:
    _, base = sim
    metering = client(base, options)
    for batch in range(3):
        clock.now = T0 + 3600 * batch
        metering.ingest(events(f"h{batch}", 5))
    window = list(metering.list_events(at(3600), at(7200), page_size=2))
    assert {i["event"]["id"][:2] for i in window} == {"h1"}
    since = list(metering.list_events(at(3600)))
    assert {i["event"]["id"][:2] for i in since} == {"h1", "h2"}
    assert all(i["ingestedAt"] >= "2026-09-21T15:13:20" for i in since)


def test_a_rejected_key_is_one_line_naming_the_variable_without_the_key(
    sim: tuple[MeteringSimulator, str], options: HttpOptions
) -> None:
    _, base = sim
    wrong = "om_live_" + "w" * 40
    with pytest.raises(AuthenticationError) as info:
        list(client(base, options, key=wrong).list_events(at(0)))
    message = str(info.value)
    assert message == "metering: the API key was rejected (HTTP 401); set METERING_API_KEY"
    assert wrong not in message and "\n" not in message


def test_429_is_retried_after_retry_after(
    sim: tuple[MeteringSimulator, str], options: HttpOptions, sleeps: list[float]
) -> None:
    app, base = sim
    arm_fault(app.faults, status=429, count=2, retry_after_s=3)
    metering = client(base, options)
    metering.ingest(events("r", 3))
    assert sleeps == [3.0, 3.0]
    assert app.count() == 3
    arm_fault(app.faults, status=429, count=1, retry_after_s=2)
    assert len(list(metering.list_events(at(-60)))) == 3
    assert sleeps == [3.0, 3.0, 2.0]


def test_a_batch_the_service_rejects_names_the_field(
    sim: tuple[MeteringSimulator, str], options: HttpOptions
) -> None:
    _, base = sim
    bad = events("v", 3)
    bad[2]["time"] = "yesterday"
    with pytest.raises(PermanentUpstreamError, match=r"\[2\]\.time") as info:
        client(base, options).ingest(bad)
    assert info.value.status == 400


def test_naive_datetimes_are_refused(
    sim: tuple[MeteringSimulator, str], options: HttpOptions
) -> None:
    _, base = sim
    with pytest.raises(ValueError, match="timezone-aware"):
        list(client(base, options).list_events(dt.datetime(2026, 1, 1)))


def test_no_key_bound_sends_nothing_and_names_the_variable() -> None:
    # What definitions.py binds when FINSYNC_SOURCES_OFF=metering: nothing may call the API.
    with pytest.raises(ConfigurationError, match="set METERING_API_KEY, or FINSYNC_SOURCES_OFF"):
        MeteringResource(api_key="").get_client()
