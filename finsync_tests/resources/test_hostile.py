"""Every connector against a hostile upstream: bounded paging, deadlines, no foreign host,
size limits, and no secret in any form in any field of an error."""

import base64
import datetime as dt
import gzip
import json
import random
import tracemalloc
from collections.abc import Iterator
from urllib.parse import quote, quote_plus

import pytest

from finsync_pipeline.errors import (
    AmbiguousOutcomeError,
    ConfigurationError,
    PermanentUpstreamError,
    RetryableUpstreamError,
    UpstreamError,
)
from finsync_pipeline.resources.avalara import AvalaraClient
from finsync_pipeline.resources.http import HttpClient, HttpOptions
from finsync_pipeline.resources.metering import MeteringClient
from finsync_pipeline.resources.netsuite import NetSuiteClient
from finsync_pipeline.resources.salesforce import SalesforceClient
from finsync_pipeline.resources.salesforce import _instance as salesforce_instance
from finsync_pipeline.resources.stripe import StripeClient
from finsync_tests.resources.hostile import HostileServer, Reply, Request, Script

STRIPE_KEY = "sk_test_hostile/key+42"
SF_ID = "3MVG9hostile_client_id"
SF_SECRET = "sf secret/with+plus=and&amp"
SF_TOKEN = "00Dhostile!AQ0token/value+x"
NS_CONSUMER_KEY = "ck" + "a1" * 31
NS_CONSUMER_SECRET = "cs" + "b2" * 31
NS_TOKEN_ID = "ti" + "c3" * 31
NS_TOKEN_SECRET = "ts" + "d4" * 31
METERING_KEY = "om_hostile/key+77"
AVALARA_ACCOUNT = "2000123456"
AVALARA_LICENSE = "LICENSE/key+0123456789"


@pytest.fixture
def evil() -> Iterator[HostileServer]:
    """Another host, the one no request may ever reach."""
    server = HostileServer()
    server.script = lambda request: Reply(200, {"stolen": True})
    yield server
    server.close()


def options(**overrides: object) -> HttpOptions:
    settings: dict[str, object] = {
        "timeout": (5.0, 5.0),
        "max_attempts": 2,
        "sleep": lambda s: None,
        "rng": random.Random(3),
    }
    settings.update(overrides)
    return HttpOptions(**settings)  # type: ignore[arg-type]


def stripe(server: HostileServer, **overrides: object) -> StripeClient:
    page_size = int(overrides.pop("page_size", 100))  # type: ignore[call-overload]
    return StripeClient(
        api_key=STRIPE_KEY,
        api_base=server.url,
        page_size=page_size,
        http_options=options(**overrides),
    )


def salesforce(server: HostileServer, **overrides: object) -> SalesforceClient:
    return SalesforceClient(
        login_url=server.url,
        client_id=SF_ID,
        client_secret=SF_SECRET,
        batch_size=200,
        http_options=options(**overrides),
    )


def netsuite(server: HostileServer, **overrides: object) -> NetSuiteClient:
    return NetSuiteClient(
        account_id="1234567_SB1",
        base_url=server.url,
        consumer_key=NS_CONSUMER_KEY,
        consumer_secret=NS_CONSUMER_SECRET,
        token_id=NS_TOKEN_ID,
        token_secret=NS_TOKEN_SECRET,
        http_options=options(**overrides),
    )


def metering(server: HostileServer, **overrides: object) -> MeteringClient:
    return MeteringClient(
        api_key=METERING_KEY, base_url=server.url, http_options=options(**overrides)
    )


def avalara(server: HostileServer) -> AvalaraClient:
    return AvalaraClient(
        account_id=AVALARA_ACCOUNT,
        license_key=AVALARA_LICENSE,
        base_url=server.url,
        http_options=options(),
    )


def stripe_page(ids: list[str], has_more: bool = True) -> Reply:
    return Reply(200, {"object": "list", "data": [{"id": i} for i in ids], "has_more": has_more})


def token_or(instance_url: str, reply: Reply) -> Script:
    """A Salesforce upstream: a token for the token request, ``reply`` for everything else."""

    def script(request: Request) -> Reply:
        if request.path == "/services/oauth2/token":
            return Reply(200, {"access_token": SF_TOKEN, "instance_url": instance_url})
        return reply

    return script


def sf_batch(next_url: str | None, count: int = 1) -> Reply:
    records = [{"attributes": {"type": "Account"}, "Id": f"001{n:015d}"} for n in range(count)]
    body = {"totalSize": 10**6, "done": next_url is None, "records": records}
    if next_url is not None:
        body["nextRecordsUrl"] = next_url
    return Reply(200, body)


MINUTE = dt.datetime(2026, 10, 1, tzinfo=dt.UTC)


# -- 1. paging stops on a cycle, an oversized page or the page cap -------------------------------


def test_stripe_has_more_with_the_same_last_id_stops(hostile: HostileServer) -> None:
    hostile.script = lambda request: stripe_page(["cus_1"])
    with pytest.raises(PermanentUpstreamError) as info:
        list(stripe(hostile).list_charges())
    assert "cus_1" in str(info.value) and info.value.system == "stripe"
    assert len(hostile.seen) == 2


def test_stripe_alternating_cursors_stop(hostile: HostileServer) -> None:
    def script(request: Request) -> Reply:
        return stripe_page(["ch_2"] if request.param("starting_after") == "ch_1" else ["ch_1"])

    hostile.script = script
    with pytest.raises(PermanentUpstreamError) as info:
        list(stripe(hostile).list_charges())
    assert "ch_1" in str(info.value)
    assert len(hostile.seen) == 3


def test_stripe_page_larger_than_asked_is_refused(hostile: HostileServer) -> None:
    hostile.script = lambda request: stripe_page([f"ch_{n}" for n in range(11)], has_more=False)
    with pytest.raises(PermanentUpstreamError) as info:
        list(stripe(hostile, page_size=10).list_charges())
    assert "11" in str(info.value) and "10" in str(info.value)


def test_stripe_stops_at_the_page_cap(hostile: HostileServer) -> None:
    counter = iter(range(10**6))
    hostile.script = lambda request: stripe_page([f"ch_{next(counter)}"])
    with pytest.raises(PermanentUpstreamError) as info:
        list(stripe(hostile, max_pages=3).list_charges())
    assert "3 pages" in str(info.value)
    assert len(hostile.seen) == 3


def test_salesforce_same_next_records_url_stops(hostile: HostileServer) -> None:
    hostile.script = token_or(hostile.url, sf_batch("/services/data/v60.0/query/01gAAA-200"))
    with pytest.raises(PermanentUpstreamError) as info:
        list(salesforce(hostile).query("SELECT Id FROM Account"))
    assert "01gAAA-200" in str(info.value) and info.value.system == "salesforce"
    assert len(hostile.seen) == 3  # the token, then two batches


def test_salesforce_batch_larger_than_the_maximum_is_refused(hostile: HostileServer) -> None:
    hostile.script = token_or(hostile.url, sf_batch(None, count=2001))
    with pytest.raises(PermanentUpstreamError) as info:
        list(salesforce(hostile).query("SELECT Id FROM Account"))
    assert "2001" in str(info.value)


def suiteql_page(rows: list[int], has_more: bool = True) -> Reply:
    items = [{"id": str(r), "links": []} for r in rows]
    return Reply(200, {"items": items, "hasMore": has_more, "count": len(items)})


def test_suiteql_has_more_with_an_empty_page_stops(hostile: HostileServer) -> None:
    hostile.script = lambda request: suiteql_page([])
    with pytest.raises(PermanentUpstreamError) as info:
        list(netsuite(hostile).suiteql("SELECT id FROM customer ORDER BY id"))
    assert info.value.system == "netsuite" and "empty page" in str(info.value)
    assert len(hostile.seen) == 1


def test_suiteql_repeated_page_stops(hostile: HostileServer) -> None:
    hostile.script = lambda request: suiteql_page([1, 2])
    with pytest.raises(PermanentUpstreamError) as info:
        list(netsuite(hostile).suiteql("SELECT id FROM customer ORDER BY id", page_size=2))
    assert "offset 2" in str(info.value)
    assert len(hostile.seen) == 2


def test_suiteql_page_larger_than_asked_is_refused(hostile: HostileServer) -> None:
    hostile.script = lambda request: suiteql_page(list(range(5)), has_more=False)
    with pytest.raises(PermanentUpstreamError):
        list(netsuite(hostile).suiteql("SELECT id FROM customer ORDER BY id", page_size=2))


def metering_page(link: str | None) -> Reply:
    headers = {"Link": f'<{link}>; rel="next"'} if link else {}
    return Reply(200, [{"event": {"id": "e1"}, "ingestedAt": "2026-10-01T00:00:00Z"}], headers)


def test_metering_same_next_link_stops(hostile: HostileServer) -> None:
    hostile.script = lambda request: metering_page("/api/v1/events?cursor=abc")
    with pytest.raises(PermanentUpstreamError) as info:
        list(metering(hostile).list_events(MINUTE))
    assert "cursor=abc" in str(info.value) and info.value.system == "metering"
    assert len(hostile.seen) == 2


def test_a_trickling_body_is_cut_at_the_deadline(hostile: HostileServer) -> None:
    hostile.script = lambda request: Reply(200, stripe_page(["ch_1"] * 40).body, trickle_s=0.05)
    with pytest.raises(RetryableUpstreamError) as info:
        list(stripe(hostile, deadline_s=0.5, max_attempts=1).list_charges())
    assert "deadline" in str(info.value)


def test_trickling_headers_are_cut_at_the_deadline(hostile: HostileServer) -> None:
    hostile.script = lambda request: Reply(
        200, stripe_page([], has_more=False).body, {"X-Pad": "p" * 200}, header_trickle_s=0.05
    )
    with pytest.raises(RetryableUpstreamError) as info:
        list(stripe(hostile, deadline_s=0.5, max_attempts=1).list_charges())
    assert "0.5s deadline" in str(info.value)


# -- 2. no request leaves its configured host ----------------------------------------------------


def test_a_redirect_is_refused_not_followed(hostile: HostileServer, evil: HostileServer) -> None:
    hostile.script = lambda request: Reply(307, {}, {"Location": evil.url + "/v1/charges"})
    with pytest.raises(PermanentUpstreamError) as info:
        list(stripe(hostile).list_charges())
    assert "redirect" in str(info.value) and "127.0.0.1" in str(info.value)
    assert evil.seen == []


def test_a_redirected_token_request_never_reposts_the_secret(
    hostile: HostileServer, evil: HostileServer
) -> None:
    hostile.script = lambda request: Reply(
        307, {}, {"Location": evil.url + "/services/oauth2/token"}
    )
    with pytest.raises(PermanentUpstreamError):
        list(salesforce(hostile).query("SELECT Id FROM Account"))
    assert evil.seen == []


def test_a_redirected_netsuite_write_is_not_sent_elsewhere(
    hostile: HostileServer, evil: HostileServer
) -> None:
    hostile.script = lambda request: Reply(307, {}, {"Location": evil.url + "/record"})
    with pytest.raises(PermanentUpstreamError):
        netsuite(hostile).upsert("invoice", "fs-inv-1", {"entity": {"id": "1"}})
    assert evil.seen == []


@pytest.mark.parametrize(
    "next_url",
    [
        ".evil.example/services/data/v60.0/query/01g-400",
        "@evil.example/services/data/v60.0/query/01g-400",
        "//evil.example/services/data/v60.0/query/01g-400",
        "https://evil.example/services/data/v60.0/query/01g-400",
        "EVIL/services/data/v60.0/query/01g-400",
    ],
)
def test_next_records_url_off_the_instance_is_refused(
    hostile: HostileServer, evil: HostileServer, next_url: str
) -> None:
    hostile.script = token_or(hostile.url, sf_batch(next_url.replace("EVIL", evil.url)))
    with pytest.raises(PermanentUpstreamError) as info:
        list(salesforce(hostile, max_attempts=1).query("SELECT Id FROM Account"))
    assert "nextRecordsUrl" in str(info.value)
    assert evil.seen == []
    assert len(hostile.seen) == 2


def test_metering_next_link_to_another_host_is_refused(
    hostile: HostileServer, evil: HostileServer
) -> None:
    hostile.script = lambda request: metering_page(evil.url + "/api/v1/events?cursor=abc")
    with pytest.raises(PermanentUpstreamError) as info:
        list(metering(hostile).list_events(MINUTE))
    assert "next link" in str(info.value)
    assert len(hostile.seen) == 1 and evil.seen == []


def test_live_mode_wants_https_on_the_vendors_own_domain(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("FINSYNC_MODE", "live")
    monkeypatch.delenv("FINSYNC_ALLOW_HOSTS", raising=False)
    for base in (
        "http://api.stripe.com",
        "https://api.stripe.com.evil.example",
        "https://api.stripe.com@evil.example",
    ):
        with pytest.raises(ConfigurationError) as info:
            StripeClient(api_key=STRIPE_KEY, api_base=base)
        assert "STRIPE_API_BASE" in str(info.value) and STRIPE_KEY not in str(info.value)
    StripeClient(api_key=STRIPE_KEY, api_base="https://api.stripe.com")
    with pytest.raises(ConfigurationError) as info:
        SalesforceClient(
            login_url="https://acme.my.evil.example", client_id=SF_ID, client_secret=SF_SECRET
        )
    assert "SALESFORCE_LOGIN_URL" in str(info.value)
    SalesforceClient(
        login_url="https://acme.my.salesforce.com", client_id=SF_ID, client_secret=SF_SECRET
    )
    AvalaraClient(account_id=AVALARA_ACCOUNT, license_key=AVALARA_LICENSE)
    with pytest.raises(ConfigurationError):
        MeteringClient(api_key=METERING_KEY, base_url="http://meter.internal")
    monkeypatch.setenv("FINSYNC_ALLOW_HOSTS", "proxy.internal")
    StripeClient(api_key=STRIPE_KEY, api_base="https://proxy.internal")


# -- 3. response size limits ---------------------------------------------------------------------


def test_a_gzip_bomb_is_not_inflated_whole(hostile: HostileServer) -> None:
    bomb = gzip.compress(b'{"object": "list", "data": [' + b" " * (200 * 2**20))
    hostile.script = lambda request: Reply(200, bomb, {"Content-Encoding": "gzip"})
    client = stripe(hostile, max_response_bytes=2**20)
    tracemalloc.start()
    try:
        with pytest.raises(PermanentUpstreamError) as info:
            list(client.list_charges())
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert "1048576 bytes" in str(info.value) and info.value.system == "stripe"
    assert peak < 40 * 2**20


def test_a_gzipped_page_within_the_limit_is_read(hostile: HostileServer) -> None:
    hostile.script = lambda request: Reply(
        200, stripe_page(["ch_1", "ch_2"], has_more=False).body, gzipped=True
    )
    assert [c["id"] for c in stripe(hostile).list_charges()] == ["ch_1", "ch_2"]
    assert "gzip" in hostile.seen[0].headers["Accept-Encoding"]


def test_an_oversized_plain_body_is_refused(hostile: HostileServer) -> None:
    hostile.script = lambda request: Reply(200, b"[" + b" " * (2 * 2**20) + b"]")
    with pytest.raises(PermanentUpstreamError) as info:
        list(metering(hostile, max_response_bytes=2**20).list_events(MINUTE))
    assert info.value.system == "metering" and "bytes" in str(info.value)


# -- 4. no secret, in any encoding, in any field of an error -------------------------------------


def forms(secret: str) -> set[str]:
    """Every encoding a secret travels in, or comes back in."""
    escaped = json.dumps(secret)[1:-1]
    slashed = escaped.replace("/", "\\/")
    return {secret, quote(secret, safe=""), quote_plus(secret), escaped, slashed}


def basic(user: str, secret: str) -> str:
    return base64.b64encode(f"{user}:{secret}".encode()).decode()


def echo(request: Request) -> str:
    """What an echoing upstream says back: the credentials as sent, and re-encoded."""
    sent = f"{request.headers.get('Authorization', '')} {request.body.decode()}"
    return f"{sent} {quote(sent, safe='')} {json.dumps(sent)}"


def assert_clean(error: UpstreamError, secrets: set[str]) -> None:
    texts = [str(error), repr(error), error.detail, error.code or "", error.field or ""]
    leaks = {form for secret in secrets for form in forms(secret) for t in texts if form in t}
    assert leaks == set()
    assert error.detail and error.code and error.field  # the echo reached every field


def test_stripe_echo_leaks_no_key(hostile: HostileServer) -> None:
    hostile.script = lambda request: Reply(
        400, {"error": {"message": echo(request), "code": echo(request), "param": echo(request)}}
    )
    with pytest.raises(PermanentUpstreamError) as info:
        list(stripe(hostile).list_charges())
    assert_clean(info.value, {STRIPE_KEY})


def test_salesforce_token_endpoint_echo_leaks_no_client_secret(hostile: HostileServer) -> None:
    hostile.script = lambda request: Reply(
        400, {"error": echo(request), "error_description": echo(request)}
    )
    with pytest.raises(UpstreamError) as info:
        list(salesforce(hostile).query("SELECT Id FROM Account"))
    texts = [str(info.value), repr(info.value), info.value.detail, info.value.code or ""]
    leaks = {f for s in (SF_SECRET, SF_ID) for f in forms(s) for t in texts if f in t}
    assert leaks == set()


def test_salesforce_query_echo_leaks_no_token(hostile: HostileServer) -> None:

    def script(request: Request) -> Reply:
        if request.path == "/services/oauth2/token":
            return Reply(200, {"access_token": SF_TOKEN, "instance_url": hostile.url})
        said = echo(request)
        return Reply(400, [{"errorCode": said, "message": said, "fields": [said]}])

    hostile.script = script
    with pytest.raises(PermanentUpstreamError) as info:
        list(salesforce(hostile).query("SELECT Id FROM Account"))
    assert_clean(info.value, {SF_TOKEN, SF_SECRET})


def test_netsuite_echo_leaks_no_consumer_key_or_token_id(hostile: HostileServer) -> None:
    def script(request: Request) -> Reply:
        said = echo(request)
        detail = {"o:errorCode": said, "detail": said, "o:errorPath": said}
        return Reply(400, {"title": said, "o:errorDetails": [detail]})

    hostile.script = script
    with pytest.raises(PermanentUpstreamError) as info:
        netsuite(hostile).upsert("invoice", "fs-inv-1", {"memo": "x"})
    assert_clean(info.value, {NS_CONSUMER_KEY, NS_TOKEN_ID, NS_CONSUMER_SECRET, NS_TOKEN_SECRET})


def test_metering_echo_leaks_no_key(hostile: HostileServer) -> None:
    hostile.script = lambda request: Reply(400, {"title": echo(request), "detail": echo(request)})
    with pytest.raises(PermanentUpstreamError) as info:
        list(metering(hostile).list_events(MINUTE))
    texts = [str(info.value), repr(info.value), info.value.detail, info.value.code or ""]
    assert {f for f in forms(METERING_KEY) for t in texts if f in t} == set()


def test_avalara_echo_leaks_no_license_key(hostile: HostileServer) -> None:
    def script(request: Request) -> Reply:
        said = echo(request)
        details = [{"refersTo": said, "description": said}]
        return Reply(400, {"error": {"code": said, "message": said, "details": details}})

    hostile.script = script
    with pytest.raises(PermanentUpstreamError) as info:
        avalara(hostile).create_sales_order({"lines": []})
    assert_clean(info.value, {AVALARA_LICENSE, basic(AVALARA_ACCOUNT, AVALARA_LICENSE)})


# -- the limits come from the environment --------------------------------------------------------


def test_limits_come_from_the_environment(
    monkeypatch: pytest.MonkeyPatch, hostile: HostileServer
) -> None:
    monkeypatch.setenv("FINSYNC_HTTP_MAX_PAGES", "2")
    monkeypatch.setenv("FINSYNC_HTTP_DEADLINE_S", "30")
    counter = iter(range(10**6))
    hostile.script = lambda request: stripe_page([f"ch_{next(counter)}"])
    client = StripeClient(api_key=STRIPE_KEY, api_base=hostile.url)
    assert client.http.deadline_s == 30.0
    with pytest.raises(PermanentUpstreamError, match="FINSYNC_HTTP_MAX_PAGES"):
        list(client.list_charges())
    assert len(hostile.seen) == 2


@pytest.mark.parametrize("value", ["five", "0", "-3"])
def test_a_bad_limit_names_its_variable(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    monkeypatch.setenv("FINSYNC_HTTP_MAX_RESPONSE_BYTES", value)
    with pytest.raises(ConfigurationError) as info:
        StripeClient(api_key=STRIPE_KEY, api_base="http://127.0.0.1:1")
    assert str(info.value) == (
        f"FINSYNC_HTTP_MAX_RESPONSE_BYTES is {value!r}: set it to a positive integer "
        "(default 67108864)"
    )


def test_a_write_cut_at_the_deadline_is_ambiguous(hostile: HostileServer) -> None:
    hostile.script = lambda request: Reply(200, {"id": "x" * 40}, trickle_s=0.05)
    client = HttpClient("acme", deadline_s=0.5, sleep=lambda s: None)
    with pytest.raises(AmbiguousOutcomeError) as info:
        client.request("POST", hostile.url + "/write", idempotent=False)
    assert "0.5s deadline" in str(info.value)
    assert len(hostile.seen) == 1


def test_live_mode_refuses_an_instance_url_off_salesforce(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FINSYNC_MODE", "live")
    monkeypatch.delenv("FINSYNC_ALLOW_HOSTS", raising=False)
    for instance in (
        "https://acme.my.salesforce.com.evil.example",
        "http://acme.my.salesforce.com",
    ):
        with pytest.raises(PermanentUpstreamError) as info:
            salesforce_instance(instance)
        assert "instance_url" in str(info.value)
    assert (
        salesforce_instance("https://acme.my.salesforce.com/") == "https://acme.my.salesforce.com"
    )
