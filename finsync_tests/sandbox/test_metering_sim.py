"""The metering simulator over real HTTP: auth, CloudEvents ingestion, dedupe, listing, faults."""

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
import requests

from finsync_pipeline.sandbox.http_base import Faults, SimServer
from finsync_pipeline.sandbox.metering_sim import (
    BATCH,
    SINGLE,
    MeteringSimulator,
    arm_fault,
    seed_metering,
)
from finsync_pipeline.sandbox.store import Store

KEY = "om_test_" + "k" * 32
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


def event(eid: str, **over: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "specversion": "1.0",
        "id": eid,
        "source": "/meter/api-gateway",
        "type": "com.finsync.usage.api_calls.v1",
        "subject": "sub_123",
        "time": "2026-09-01T10:00:00Z",
        "data": {"value": 5, "meter": "api_calls"},
    }
    body.update(over)
    return body


def post(base: str, body: Any, *, content_type: str = BATCH, key: str = KEY) -> requests.Response:
    return requests.post(
        base + "/api/v1/events",
        data=json.dumps(body),
        headers={"Content-Type": content_type, "Authorization": f"Bearer {key}"},
        timeout=10,
    )


def get(base: str, key: str = KEY, **params: Any) -> requests.Response:
    return requests.get(
        base + "/api/v1/events",
        params=params,
        headers={"Authorization": f"Bearer {key}"},
        timeout=10,
    )


def test_a_wrong_key_is_401_problem_json(sim: tuple[MeteringSimulator, str]) -> None:
    _, base = sim
    response = post(base, [event("e1")], key="om_wrong")
    assert response.status_code == 401
    assert response.headers["Content-Type"] == "application/problem+json"
    body = response.json()
    assert body["status"] == 401 and body["title"] == "Unauthorized"
    assert "om_wrong" not in response.text
    assert get(base, key="").status_code == 401


def test_structured_and_batched_events_are_accepted_with_204(
    sim: tuple[MeteringSimulator, str],
) -> None:
    app, base = sim
    assert post(base, event("e1"), content_type=SINGLE).status_code == 204
    assert post(base, [event("e2"), event("e3")]).status_code == 204
    assert app.count() == 3


def test_a_repeated_source_and_id_is_accepted_and_stored_once(
    sim: tuple[MeteringSimulator, str],
) -> None:
    app, base = sim
    assert post(base, [event("e1"), event("e1", data={"value": 99})]).status_code == 204
    assert post(base, event("e1"), content_type=SINGLE).status_code == 204
    # The same id from another source is another event.
    assert post(base, [event("e1", source="/meter/storage")]).status_code == 204
    items = get(base).json()
    assert app.count() == 2
    first = next(i for i in items if i["event"]["source"] == "/meter/api-gateway")
    assert first["event"]["data"]["value"] == 5  # the first copy wins


@pytest.mark.parametrize(
    ("bad", "field"),
    [
        pytest.param({"specversion": "0.3"}, "specversion", id="specversion"),
        pytest.param({"id": ""}, "id", id="empty-id"),
        pytest.param({"source": None}, "source", id="missing-source"),
        pytest.param({"type": ""}, "type", id="empty-type"),
        pytest.param({"subject": None}, "subject", id="missing-subject"),
        pytest.param({"time": "2026-09-01 10:00"}, "time", id="time-not-rfc3339"),
        pytest.param({"time": "2026-02-30T10:00:00Z"}, "time", id="time-not-a-real-day"),
        pytest.param({"data": {"meter": "api_calls"}}, "data.value", id="no-value-property"),
        pytest.param({"data": "5"}, "data", id="data-not-object"),
    ],
)
def test_an_invalid_event_is_400_naming_the_field_and_nothing_is_stored(
    sim: tuple[MeteringSimulator, str], bad: dict[str, Any], field: str
) -> None:
    app, base = sim
    response = post(base, [event("ok"), event("bad", **bad)])
    assert response.status_code == 400
    assert response.headers["Content-Type"] == "application/problem+json"
    problem = response.json()
    assert set(problem) == {"type", "title", "status", "detail"}
    assert problem["detail"].startswith(f"[1].{field}:"), problem
    assert app.count() == 0  # a batch is all or nothing


def test_wrong_content_type_is_415(sim: tuple[MeteringSimulator, str]) -> None:
    _, base = sim
    assert post(base, [event("e1")], content_type="application/json").status_code == 415


def test_value_that_is_no_number_is_stored_with_a_validation_error(
    sim: tuple[MeteringSimulator, str],
) -> None:
    _, base = sim
    events = [
        event("num", data={"value": "12.5"}),
        event("neg", data={"value": -3}),
        event("txt", data={"value": "lots"}),
    ]
    assert post(base, events).status_code == 204
    items = {i["event"]["id"]: i for i in get(base).json()}
    assert "validationError" not in items["num"] and "validationError" not in items["neg"]
    assert "not a number" in items["txt"]["validationError"]


def test_429_carries_retry_after_then_the_request_goes_through(
    sim: tuple[MeteringSimulator, str],
) -> None:
    app, base = sim
    arm_fault(app.faults, status=429, count=1, retry_after_s=7)
    limited = post(base, [event("e1")])
    assert limited.status_code == 429
    assert limited.headers["Retry-After"] == "7"
    assert limited.json()["status"] == 429
    assert app.count() == 0
    assert post(base, [event("e1")]).status_code == 204
    assert app.count() == 1


def test_listing_pages_by_cursor_in_ingestion_order_without_gaps(
    sim: tuple[MeteringSimulator, str], clock: Clock
) -> None:
    _, base = sim
    for batch in range(5):
        clock.now = T0 + batch
        assert post(base, [event(f"b{batch}-{n}") for n in range(7)]).status_code == 204
    seen: list[dict[str, Any]] = []
    response = get(base, limit=10)
    pages = 1
    while "next" in response.links:
        seen += response.json()
        link = response.links["next"]["url"]
        assert link.startswith("/api/v1/events?")  # relative: the key stays with the base URL
        response = get(base, **{k: v[0] for k, v in parse_qs(urlsplit(link).query).items()})
        pages += 1
    seen += response.json()
    assert pages == 4
    ids = [i["event"]["id"] for i in seen]
    assert len(ids) == len(set(ids)) == 35
    keys = [(i["ingestedAt"], i["event"]["source"], i["event"]["id"]) for i in seen]
    assert keys == sorted(keys)
    # Events ingested after a page was read still show up after the cursor.
    first = get(base, limit=10)
    clock.now = T0 + 100
    post(base, [event("late")])
    cursor = parse_qs(urlsplit(first.links["next"]["url"]).query)["cursor"][0]
    rest = get(base, limit=1000, cursor=cursor).json()
    assert rest[-1]["event"]["id"] == "late"
    assert len(rest) == 26


def test_listing_by_ingestion_window_and_event_time(
    sim: tuple[MeteringSimulator, str], clock: Clock
) -> None:
    _, base = sim
    clock.now = T0
    post(base, [event("old", time="2026-08-01T23:30:00-02:00")])
    clock.now = T0 + 3600
    post(base, [event("new")])
    window = get(base, ingestedAtFrom="2026-09-21T15:00:00Z").json()
    assert [i["event"]["id"] for i in window] == ["new"]
    before = get(base, ingestedAtTo="2026-09-21T15:00:00Z").json()
    assert [i["event"]["id"] for i in before] == ["old"]
    # Event time compares as an instant: 23:30 at -02:00 is the next day in UTC.
    on_aug_2 = get(base, **{"from": "2026-08-02T00:00:00Z", "to": "2026-08-03T00:00:00Z"})
    assert [i["event"]["id"] for i in on_aug_2.json()] == ["old"]
    assert before[0]["ingestedAt"] == "2026-09-21T14:13:20.000000Z"


@pytest.mark.parametrize(
    "params",
    [
        pytest.param({"limit": 1001}, id="limit-too-big"),
        pytest.param({"limit": 0}, id="limit-zero"),
        pytest.param({"ingestedAtFrom": "yesterday"}, id="bad-instant"),
        pytest.param({"cursor": "not-a-cursor"}, id="bad-cursor"),
        pytest.param({"page": 2}, id="unknown-parameter"),
    ],
)
def test_bad_listing_parameters_are_400(
    sim: tuple[MeteringSimulator, str], params: dict[str, Any]
) -> None:
    _, base = sim
    response = get(base, **params)
    assert response.status_code == 400
    assert response.json()["detail"].split(":")[0] == next(iter(params))


def test_seeding_dedupes_and_rejects_what_the_wire_rejects(tmp_path: Path) -> None:
    store = Store(tmp_path / "s.sqlite3")
    assert seed_metering(store, [event("a"), event("b"), event("a")]) == 2
    with pytest.raises(ValueError, match=r"\[0\]\.subject"):
        seed_metering(store, [event("c", subject="")])
    row = store.one("SELECT ingested_at FROM metering_event WHERE id = 'a'")
    assert row is not None and row["ingested_at"] == "2026-09-01T10:00:02.000000Z"
