"""HttpClient over real HTTP against a scripted local server."""

import datetime
import email.utils
import random

import pytest
from requests.adapters import HTTPAdapter

from finsync_pipeline.errors import (
    AmbiguousOutcomeError,
    AuthenticationError,
    PermanentUpstreamError,
    RetryableUpstreamError,
)
from finsync_pipeline.resources.http import ErrorInfo, HttpClient, parse_retry_after
from finsync_tests.resources.conftest import Scripted, ScriptedServer

SECRET = "sk_test_supersecret_42"


def make_client(sleeps: list[float], **kwargs: object) -> HttpClient:
    def parser(response: object) -> ErrorInfo:
        body = response.json()  # type: ignore[attr-defined]
        return ErrorInfo(code=body.get("code"), detail=body.get("message"), field=body.get("field"))

    options: dict[str, object] = {
        "max_attempts": 4,
        "secrets": [SECRET],
        "sleep": sleeps.append,
        "rng": random.Random(7),
        "error_parser": parser,
    }
    options.update(kwargs)
    return HttpClient("acme", **options)  # type: ignore[arg-type]


def test_429_waits_for_retry_after_then_succeeds(scripted: ScriptedServer) -> None:
    scripted.answer(
        Scripted(429, {"message": "slow down"}, {"Retry-After": "2"}),
        Scripted(429, {"message": "slow down"}, {"Retry-After": "1"}),
        Scripted(200, {"ok": True}),
    )
    sleeps: list[float] = []
    response = make_client(sleeps).request("GET", scripted.url + "/x", idempotent=True)
    assert response.json() == {"ok": True}
    assert sleeps == [2.0, 1.0]
    assert len(scripted.seen) == 3


def test_retry_after_as_http_date_is_honoured() -> None:
    now = datetime.datetime(2026, 1, 1, 12, 0, 0, tzinfo=datetime.UTC)
    later = email.utils.format_datetime(now + datetime.timedelta(seconds=7), usegmt=True)
    assert parse_retry_after(later, now=now) == 7.0
    assert parse_retry_after("3", now=now) == 3.0
    assert parse_retry_after("garbage", now=now) is None


def test_5xx_backoff_is_jittered_exponential_and_capped(scripted: ScriptedServer) -> None:
    scripted.answer(Scripted(503, {"message": "busy"}))
    sleeps: list[float] = []
    client = make_client(sleeps, max_attempts=6, backoff_base_s=1.0, backoff_max_s=4.0)
    with pytest.raises(RetryableUpstreamError) as info:
        client.request("GET", scripted.url + "/x", idempotent=True)
    assert info.value.status == 503
    assert "gave up after 6 attempts" in str(info.value)
    assert len(scripted.seen) == 6
    assert len(sleeps) == 5
    for attempt, wait in enumerate(sleeps, start=1):
        assert 0.0 <= wait <= min(4.0, 2 ** (attempt - 1))
    assert client.requests_made == 6


def test_retry_after_longer_than_the_cap_is_not_slept_through(scripted: ScriptedServer) -> None:
    scripted.answer(Scripted(503, {"message": "maintenance"}, {"Retry-After": "600"}))
    sleeps: list[float] = []
    with pytest.raises(RetryableUpstreamError) as info:
        make_client(sleeps).request("GET", scripted.url + "/x", idempotent=True)
    assert info.value.retry_after_s == 600.0
    assert sleeps == []
    assert len(scripted.seen) == 1


def test_non_idempotent_request_is_not_resent_after_read_timeout(
    scripted: ScriptedServer,
) -> None:
    scripted.answer(Scripted(201, {"id": "doc_1"}, delay_s=1.0))
    sleeps: list[float] = []
    client = make_client(sleeps, timeout=(2.0, 0.2))
    with pytest.raises(AmbiguousOutcomeError) as info:
        client.request(
            "POST", scripted.url + "/docs", idempotent=False, json={"a": 1}, expected=(201,)
        )
    assert "look the document up" in str(info.value)
    assert len(scripted.seen) == 1
    assert sleeps == []


def test_idempotent_request_is_resent_after_read_timeout(scripted: ScriptedServer) -> None:
    scripted.answer(Scripted(200, {"slow": True}, delay_s=1.0), Scripted(200, {"ok": True}))
    sleeps: list[float] = []
    client = make_client(sleeps, timeout=(2.0, 0.2))
    response = client.request("PUT", scripted.url + "/docs/eid:x", idempotent=True)
    assert response.json() == {"ok": True}
    assert len(scripted.seen) == 2
    assert len(sleeps) == 1


def test_non_idempotent_500_is_ambiguous_but_429_is_resent(scripted: ScriptedServer) -> None:
    sleeps: list[float] = []
    scripted.answer(Scripted(500, {"message": "boom"}))
    with pytest.raises(AmbiguousOutcomeError):
        make_client(sleeps).request("POST", scripted.url + "/d", idempotent=False)
    assert len(scripted.seen) == 1

    scripted.answer(
        Scripted(429, {"message": "slow"}, {"Retry-After": "0"}), Scripted(200, {"ok": True})
    )
    response = make_client(sleeps).request("POST", scripted.url + "/d", idempotent=False)
    assert response.json() == {"ok": True}
    assert len(scripted.seen) == 2


def test_4xx_is_permanent_with_code_and_field(scripted: ScriptedServer) -> None:
    scripted.answer(Scripted(400, {"code": "INVALID", "message": "bad amount", "field": "amount"}))
    sleeps: list[float] = []
    with pytest.raises(PermanentUpstreamError) as info:
        make_client(sleeps).request("POST", scripted.url + "/d", idempotent=True)
    err = info.value
    assert (err.status, err.code, err.field) == (400, "INVALID", "amount")
    assert str(err) == "acme: POST /d: bad amount (HTTP 400, INVALID) [field amount]"
    assert len(scripted.seen) == 1
    assert sleeps == []


def test_unexpected_success_status_is_an_error(scripted: ScriptedServer) -> None:
    scripted.answer(Scripted(300, {"message": "several matches"}))
    with pytest.raises(PermanentUpstreamError, match="unexpected HTTP 300"):
        make_client([]).request("GET", scripted.url + "/x", idempotent=True, expected=(200,))


def test_401_is_authentication_error_without_retry(scripted: ScriptedServer) -> None:
    scripted.answer(Scripted(401, {"message": "bad key"}))
    client = make_client([], auth_message="the key was rejected (HTTP 401); set ACME_KEY")
    with pytest.raises(AuthenticationError) as info:
        client.request("GET", scripted.url + "/x", idempotent=True)
    assert str(info.value) == "acme: the key was rejected (HTTP 401); set ACME_KEY"
    assert info.value.status == 401
    assert len(scripted.seen) == 1


def test_secrets_are_redacted_from_error_text(scripted: ScriptedServer) -> None:
    scripted.answer(Scripted(400, {"message": f"Invalid API Key provided: {SECRET}"}))
    with pytest.raises(PermanentUpstreamError) as info:
        make_client([]).request("GET", scripted.url + "/x", idempotent=True)
    assert SECRET not in str(info.value)
    assert SECRET not in (info.value.detail or "")
    assert "***" in str(info.value)


def test_connection_refused_once_the_system_answered_is_retried_then_retryable(
    scripted: ScriptedServer,
) -> None:
    scripted.answer(Scripted(200, {"ok": True}))
    sleeps: list[float] = []
    client = make_client(sleeps, max_attempts=2, timeout=(0.5, 0.5))
    client.request("GET", scripted.url + "/x", idempotent=True)
    # Port 9 (discard) on localhost is closed in the test environment: the connect is refused.
    with pytest.raises(RetryableUpstreamError) as info:
        client.request("POST", "http://127.0.0.1:9/x", idempotent=False)
    assert info.value.status is None
    assert len(sleeps) == 1


def test_a_system_never_reached_is_named_with_its_url_and_variable_at_once() -> None:
    sleeps: list[float] = []
    client = make_client(sleeps, max_attempts=5, url_variable="ACME_BASE_URL")
    with pytest.raises(RetryableUpstreamError) as info:
        client.request("GET", "http://127.0.0.1:9/v1/things?secret=1", idempotent=True)
    message = str(info.value)
    assert "acme: cannot connect to http://127.0.0.1:9 (connection refused)" in message
    assert "check ACME_BASE_URL" in message
    assert "secret=1" not in message
    # Told within the connect timeout: no backoff, no second attempt.
    assert sleeps == []
    assert client.requests_made == 1


def test_session_is_reused_across_requests(scripted: ScriptedServer) -> None:
    scripted.answer(Scripted(200, {"ok": True}))
    client = make_client([])
    for _ in range(3):
        client.request("GET", scripted.url + "/x", idempotent=True)
    adapter = client.session.get_adapter(scripted.url)
    assert isinstance(adapter, HTTPAdapter)
    pool = next(iter(adapter.poolmanager.pools._container.values()))
    assert pool.num_connections == 1
