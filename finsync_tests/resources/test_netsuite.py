"""NetSuiteClient over real HTTP against the NetSuite simulator (TBA-signed)."""

import random
import threading
from concurrent.futures import ThreadPoolExecutor
from decimal import Decimal
from typing import Any

import pytest

from finsync_pipeline.errors import (
    AmbiguousOutcomeError,
    AuthenticationError,
    PermanentUpstreamError,
    RetryableUpstreamError,
)
from finsync_pipeline.resources import netsuite as netsuite_module
from finsync_pipeline.resources.http import HttpOptions
from finsync_pipeline.resources.netsuite import (
    NetSuiteClient,
    NetSuiteResource,
    account_host,
    suiteql_literal,
)
from finsync_pipeline.sandbox.server import Sandbox
from finsync_tests.resources.conftest import Scripted, ScriptedServer


def client(sandbox: Sandbox, options: HttpOptions, **overrides: str) -> NetSuiteClient:
    env = sandbox.env
    settings = {
        "account_id": env["NETSUITE_ACCOUNT_ID"],
        "base_url": env["NETSUITE_BASE_URL"],
        "consumer_key": env["NETSUITE_CONSUMER_KEY"],
        "consumer_secret": env["NETSUITE_CONSUMER_SECRET"],
        "token_id": env["NETSUITE_TOKEN_ID"],
        "token_secret": env["NETSUITE_TOKEN_SECRET"],
    }
    settings.update(overrides)
    return NetSuiteClient(**settings, http_options=options)


def customer_body(name: str, subsidiary: str = "1", currency: str = "1") -> dict[str, Any]:
    return {
        "companyName": name,
        "isPerson": False,
        "subsidiary": {"id": subsidiary},
        "currency": {"id": currency},
    }


def invoice_body(customer_id: str, lines: list[tuple[str, Decimal]]) -> dict[str, Any]:
    return {
        "entity": {"id": customer_id},
        "tranDate": "2026-10-01",
        "subsidiary": {"id": "1"},
        "currency": {"id": "1"},
        "memo": "finsync test",
        "item": {
            "items": [
                {"item": {"id": item}, "quantity": 1, "rate": amount, "amount": amount}
                for item, amount in lines
            ]
        },
    }


def rows(ns: NetSuiteClient, query: str, page_size: int = 1000) -> list[dict[str, Any]]:
    return list(ns.suiteql(query, page_size=page_size))


def test_upsert_customer_then_invoice_with_exact_amounts(
    sandbox: Sandbox, options: HttpOptions
) -> None:
    ns = client(sandbox, options)
    customer_id = ns.upsert("customer", "t-cus-1", customer_body("Acme Upsert Inc."))
    lines = [("101", Decimal("1234.57")), ("102", Decimal("0.10")), ("190", Decimal("107.15"))]
    invoice_id = ns.upsert("invoice", "t-inv-1", invoice_body(customer_id, lines))
    assert customer_id.isdigit() and invoice_id.isdigit()

    invoice = ns.get("invoice", invoice_id)
    assert invoice is not None
    assert invoice["externalId"] == "t-inv-1"
    assert invoice["entity"]["id"] == customer_id
    assert [line["amount"] for line in invoice["item"]["items"]] == [a for _, a in lines]
    assert invoice["total"] == Decimal("1341.82")
    assert all(isinstance(line["amount"], Decimal) for line in invoice["item"]["items"])


def test_upsert_again_keeps_one_record_and_its_id(sandbox: Sandbox, options: HttpOptions) -> None:
    ns = client(sandbox, options)
    first = ns.upsert("customer", "t-cus-again", customer_body("Again Ltd"))
    second = ns.upsert("customer", "t-cus-again", customer_body("Again Ltd (renamed)"))
    assert first == second
    matching = [
        c for c in sandbox.netsuite_records("customer") if c.get("externalId") == "t-cus-again"
    ]
    assert len(matching) == 1
    assert matching[0]["companyName"] == "Again Ltd (renamed)"
    fetched = ns.get_by_external_id("customer", "t-cus-again")
    assert fetched is not None and fetched["id"] == first


def test_absent_records_are_none(sandbox: Sandbox, options: HttpOptions) -> None:
    ns = client(sandbox, options)
    assert ns.get_by_external_id("customer", "t-never-created") is None
    assert ns.get("invoice", "99999999") is None


def test_validation_error_is_permanent_with_field_path(
    sandbox: Sandbox, options: HttpOptions
) -> None:
    ns = client(sandbox, options)
    customer_id = ns.upsert("customer", "t-cus-bad-inv", customer_body("Validation Co"))
    body = invoice_body(customer_id, [("999", Decimal("10.00"))])
    with pytest.raises(PermanentUpstreamError) as info:
        ns.upsert("invoice", "t-inv-bad-item", body)
    err = info.value
    assert (err.status, err.code, err.field) == (400, "USER_ERROR", "item.items[0].item")
    assert "999" in (err.detail or "")
    assert ns.get_by_external_id("invoice", "t-inv-bad-item") is None


def test_external_id_charset_is_checked_before_sending(
    sandbox: Sandbox, options: HttpOptions
) -> None:
    ns = client(sandbox, options)
    with pytest.raises(PermanentUpstreamError, match="was not sent") as info:
        ns.upsert("customer", "../customer/1", customer_body("Nope"))
    assert info.value.field == "externalId"
    assert ns.requests_made == 0


def test_bad_token_secret_is_an_authentication_error(
    sandbox: Sandbox, options: HttpOptions
) -> None:
    bad = "f" * 64
    ns = client(sandbox, options, token_secret=bad)
    with pytest.raises(AuthenticationError) as info:
        ns.get_by_external_id("customer", "t-cus-1")
    assert str(info.value) == (
        "netsuite: token-based authentication was rejected (HTTP 401); check "
        "NETSUITE_CONSUMER_KEY, NETSUITE_CONSUMER_SECRET, NETSUITE_TOKEN_ID and "
        "NETSUITE_TOKEN_SECRET"
    )
    assert bad not in repr(info.value)
    assert info.value.status == 401
    assert ns.requests_made == 1


def test_suiteql_pages_with_small_page_size(sandbox: Sandbox, options: HttpOptions) -> None:
    ns = client(sandbox, options)
    ids = [ns.upsert("customer", f"t-page-{n}", customer_body(f"Pager {n}")) for n in range(5)]
    before = ns.requests_made
    query = (
        "SELECT id, externalid, companyname FROM customer WHERE externalid LIKE "
        + suiteql_literal("t-page-%")
        + " ORDER BY id"
    )
    found = rows(ns, query, page_size=2)
    assert [r["id"] for r in found] == ids
    assert [r["externalid"] for r in found] == [f"t-page-{n}" for n in range(5)]
    assert all("links" not in r for r in found)
    assert ns.requests_made - before == 3


def test_suiteql_literal_is_injection_safe(sandbox: Sandbox, options: HttpOptions) -> None:
    ns = client(sandbox, options)
    name = "O'Hara & Sons' OR '1'='1"
    cid = ns.upsert("customer", "t-cus-quote", customer_body(name))
    hit = rows(
        ns, f"SELECT id, companyname FROM customer WHERE companyname = {suiteql_literal(name)}"
    )
    assert [(r["id"], r["companyname"]) for r in hit] == [(cid, name)]
    miss = rows(
        ns, "SELECT id FROM customer WHERE companyname = " + suiteql_literal("x' OR '1'='1")
    )
    assert miss == []


def test_concurrency_limit_is_retried(
    sandbox: Sandbox, options: HttpOptions, sleeps: list[float]
) -> None:
    ns = client(sandbox, options)
    sandbox.inject("netsuite", status=429, count=2, retry_after_s=None)
    cid = ns.upsert("customer", "t-cus-429", customer_body("Busy Corp"))
    assert cid.isdigit()
    assert len(sleeps) == 2
    assert ns.requests_made == 3


def test_maintenance_longer_than_the_cap_is_left_to_the_run(
    sandbox: Sandbox, options: HttpOptions, sleeps: list[float]
) -> None:
    ns = client(sandbox, options)
    sandbox.inject("netsuite", status=503, count=1, retry_after_s=3600)
    with pytest.raises(RetryableUpstreamError) as info:
        ns.get_by_external_id("customer", "t-cus-1")
    assert info.value.retry_after_s == 3600.0
    assert sleeps == []


def test_every_attempt_is_signed_afresh(scripted: ScriptedServer, options: HttpOptions) -> None:
    scripted.answer(
        Scripted(503, {"o:errorDetails": [{"detail": "down", "o:errorCode": "X"}]}),
        Scripted(204, None, {"Location": f"{scripted.url}/services/rest/record/v1/customer/77"}),
    )
    ns = NetSuiteClient(
        account_id="1234567_SB1",
        base_url=scripted.url,
        consumer_key="ck",
        consumer_secret="cs",
        token_id="ti",
        token_secret="ts",
        http_options=options,
    )
    assert ns.upsert("customer", "c-1", {"companyName": "A", "amount": Decimal("1.10")}) == "77"
    first, second = scripted.seen
    assert first.method == second.method == "PUT"
    assert first.path == "/services/rest/record/v1/customer/eid:c-1"
    nonces = [
        next(p for p in s.headers["Authorization"].split(", ") if p.startswith("oauth_nonce"))
        for s in scripted.seen
    ]
    assert nonces[0] != nonces[1]
    assert 'realm="1234567_SB1"' in first.headers["Authorization"]
    # The body is exact JSON: the Decimal is written as a number, never through a float.
    assert second.body == b'{"companyName": "A", "amount": 1.10}'


def test_default_host_is_the_lower_case_account_host() -> None:
    assert account_host("1234567_SB1") == "1234567-sb1"
    ns = NetSuiteClient(
        account_id="1234567_SB1",
        consumer_key="a",
        consumer_secret="b",
        token_id="c",
        token_secret="d",
    )
    assert "https://1234567-sb1.suitetalk.api.netsuite.com/services/rest" in repr(ns)


def test_resource_hides_secrets_in_repr(sandbox: Sandbox) -> None:
    env = sandbox.env
    resource = NetSuiteResource(
        account_id=env["NETSUITE_ACCOUNT_ID"],
        base_url=env["NETSUITE_BASE_URL"],
        consumer_key=env["NETSUITE_CONSUMER_KEY"],
        consumer_secret=env["NETSUITE_CONSUMER_SECRET"],
        token_id=env["NETSUITE_TOKEN_ID"],
        token_secret=env["NETSUITE_TOKEN_SECRET"],
    )
    secrets = [
        env[k]
        for k in (
            "NETSUITE_CONSUMER_KEY",
            "NETSUITE_CONSUMER_SECRET",
            "NETSUITE_TOKEN_ID",
            "NETSUITE_TOKEN_SECRET",
        )
    ]
    for text in (repr(resource), repr(resource.get_client()), repr(resource.get_client()._auth)):
        assert not any(s in text for s in secrets)


# -- credit memos and payments -------------------------------------------------------------


def test_credit_memo_and_payment_upserts_apply_to_the_invoice(
    sandbox: Sandbox, options: HttpOptions
) -> None:
    ns = client(sandbox, options)
    customer_id = ns.upsert("customer", "t-cus-apply", customer_body("Apply Ltd"))
    invoice_id = ns.upsert(
        "invoice", "t-inv-apply", invoice_body(customer_id, [("101", Decimal("100.00"))])
    )
    memo = {
        **invoice_body(customer_id, [("101", Decimal("30.00"))]),
        "createdFrom": {"id": invoice_id},
        "apply": {"items": [{"doc": {"id": invoice_id}, "apply": True, "amount": Decimal(30)}]},
    }
    memo_id = ns.upsert("creditmemo", "t-cm-apply", memo)
    payment = {
        "customer": {"id": customer_id},
        "tranDate": "2026-10-05",
        "currency": {"id": "1"},
        "payment": Decimal("70.00"),
        "memo": "finsync test payment",
        "apply": {
            "items": [{"doc": {"id": invoice_id}, "apply": True, "amount": Decimal("70.00")}]
        },
    }
    payment_id = ns.upsert("customerpayment", "t-pay-apply", payment)
    # Resending the payment (an upsert) changes nothing.
    assert ns.upsert("customerpayment", "t-pay-apply", payment) == payment_id

    invoice = ns.get("invoice", invoice_id)
    assert invoice is not None
    assert (invoice["status"], invoice["amountRemaining"]) == ("Paid In Full", Decimal("0.00"))
    fetched = ns.get_by_external_id("customerpayment", "t-pay-apply")
    assert fetched is not None and fetched["id"] == payment_id
    assert fetched["apply"]["items"][0]["amount"] == Decimal("70.00")
    credit = ns.get_by_external_id("creditmemo", "t-cm-apply")
    assert credit is not None and credit["id"] == memo_id
    assert credit["status"] == "Fully Applied"

    # Another payment applied to the paid invoice is a permanent refusal naming the field.
    with pytest.raises(PermanentUpstreamError) as info:
        ns.upsert("customerpayment", "t-pay-over", payment)
    assert (info.value.status, info.value.field) == (400, "apply.items[0].amount")
    assert ns.get_by_external_id("customerpayment", "t-pay-over") is None


# -- ambiguous outcomes --------------------------------------------------------------------


def _short_read(sleeps: list[float]) -> HttpOptions:
    return HttpOptions(
        timeout=(5.0, 0.2), max_attempts=3, sleep=sleeps.append, rng=random.Random(3)
    )


def test_timeouts_after_the_write_committed_end_as_ambiguous(
    sandbox: Sandbox, sleeps: list[float]
) -> None:
    ns = client(sandbox, _short_read(sleeps))
    sandbox.faults.commit_then_timeout("netsuite", count=3, stall_s=0.6)
    with pytest.raises(AmbiguousOutcomeError) as info:
        ns.upsert("customer", "t-cus-ambiguous", customer_body("Ambiguous Co"))
    assert "look the document up" in str(info.value)
    assert isinstance(info.value.__cause__, RetryableUpstreamError)
    # Retried as an idempotent PUT, then given up; the lookup settles it.
    assert ns.requests_made == 3
    assert len(sleeps) == 2
    found = ns.get_by_external_id("customer", "t-cus-ambiguous")
    assert found is not None and found["companyName"] == "Ambiguous Co"


def test_a_dropped_answer_is_resent_and_keeps_one_record(
    sandbox: Sandbox, sleeps: list[float]
) -> None:
    ns = client(sandbox, _short_read(sleeps))
    sandbox.faults.commit_then_timeout("netsuite", count=1, stall_s=0)
    first = ns.upsert("customer", "t-cus-dropped", customer_body("Dropped Co"))
    assert ns.requests_made == 2
    assert [
        c["id"]
        for c in sandbox.netsuite_records("customer")
        if c.get("externalId") == "t-cus-dropped"
    ] == [first]


def test_a_timeout_then_maintenance_is_still_ambiguous(
    scripted: ScriptedServer, sleeps: list[float]
) -> None:
    scripted.answer(
        Scripted(204, None, {"Location": f"{scripted.url}/r/customer/5"}, delay_s=0.6),
        Scripted(503, {"o:errorDetails": [{"detail": "down", "o:errorCode": "X"}]}),
    )
    ns = NetSuiteClient(
        account_id="1234567_SB1",
        base_url=scripted.url,
        consumer_key="ck",
        consumer_secret="cs",
        token_id="ti",
        token_secret="ts",
        http_options=HttpOptions(
            timeout=(5.0, 0.2), max_attempts=2, sleep=sleeps.append, rng=random.Random(3)
        ),
    )
    # The first attempt may have committed even though the last one was refused unprocessed.
    with pytest.raises(AmbiguousOutcomeError) as info:
        ns.upsert("customer", "c-1", {"companyName": "A"})
    assert info.value.status == 503


def test_an_outage_that_processed_nothing_stays_retryable(
    sandbox: Sandbox, sleeps: list[float]
) -> None:
    ns = client(sandbox, _short_read(sleeps))
    sandbox.faults.maintenance("netsuite", requests=3, retry_after_s=1)
    with pytest.raises(RetryableUpstreamError) as info:
        ns.upsert("customer", "t-cus-maint", customer_body("Maintenance Co"))
    assert not isinstance(info.value, AmbiguousOutcomeError)
    assert (info.value.status, sleeps) == (503, [1.0, 1.0])
    assert ns.get_by_external_id("customer", "t-cus-maint") is None


def test_the_concurrency_limit_is_retried_honouring_retry_after(sandbox: Sandbox) -> None:
    faults = sandbox.faults
    faults.set_concurrency_limit("netsuite", 1, retry_after_s=2)
    faults.hold("netsuite")
    busy = client(sandbox, HttpOptions())
    waits: list[float] = []
    with ThreadPoolExecutor(1) as pool:
        other = pool.submit(busy.get_by_external_id, "customer", "t-never-created")
        assert faults.wait_in_flight("netsuite", 1)
        released = threading.Event()

        def wait(seconds: float) -> None:
            # The other request finishes while this client backs off.
            waits.append(seconds)
            if not released.is_set():
                released.set()
                faults.release("netsuite")
                other.result(timeout=10)

        ns = client(sandbox, HttpOptions(sleep=wait, rng=random.Random(3)))
        cid = ns.upsert("customer", "t-cus-limited", customer_body("Limited Co"))
    assert cid.isdigit()
    assert waits == [2.0]
    assert ns.requests_made == 2


# -- lookup_many ---------------------------------------------------------------------------


def test_lookup_many_finds_what_exists_in_chunked_queries(
    sandbox: Sandbox, options: HttpOptions, monkeypatch: pytest.MonkeyPatch
) -> None:
    ns = client(sandbox, options)
    customer_id = ns.upsert("customer", "t-cus-many", customer_body("Many Inc"))
    ids = {
        f"t-inv-many-{n}": ns.upsert(
            "invoice",
            f"t-inv-many-{n}",
            invoice_body(customer_id, [("101", Decimal(f"{n + 1}.25"))]),
        )
        for n in range(5)
    }
    # A credit memo sharing an invoice's external id is another record type: not found.
    ns.upsert("creditmemo", "t-inv-many-x", invoice_body(customer_id, [("101", Decimal(1))]))
    monkeypatch.setattr(netsuite_module, "LOOKUP_CHUNK", 2)
    before = ns.requests_made
    wanted = [*ids, "t-inv-many-x", "t-inv-missing", "t-inv-many-0"]
    found = ns.lookup_many("invoice", wanted)
    # Seven distinct external ids in chunks of two: four queries.
    assert ns.requests_made - before == 4
    assert {k: v["id"] for k, v in found.items()} == ids
    assert found["t-inv-many-3"]["foreigntotal"] == "4.25"
    assert found["t-inv-many-3"]["entity"] == customer_id
    credits = ns.lookup_many("creditmemo", ["t-inv-many-x", "t-inv-many-0"])
    assert list(credits) == ["t-inv-many-x"]
    customers = ns.lookup_many("customer", ["t-cus-many"])
    assert customers["t-cus-many"]["id"] == customer_id
    assert ns.lookup_many("invoice", []) == {}


def test_lookup_many_checks_its_arguments_before_sending(
    sandbox: Sandbox, options: HttpOptions
) -> None:
    ns = client(sandbox, options)
    with pytest.raises(ValueError, match="lookup_many supports"):
        ns.lookup_many("journalentry", ["ok"])
    assert ns.requests_made == 0
    # Any id can be asked for: it is a quoted literal, so an injection matches nothing.
    assert ns.lookup_many("invoice", ["x' OR '1'='1"]) == {}
