"""StripeClient over real HTTP against the Stripe simulator."""

import datetime
import math
from pathlib import Path

import dagster as dg
import pytest

from finsync_pipeline.errors import (
    AmbiguousOutcomeError,
    AuthenticationError,
    ConfigurationError,
    PermanentUpstreamError,
    RecordMissingError,
    RetryableUpstreamError,
)
from finsync_pipeline.resources.http import HttpOptions
from finsync_pipeline.resources.stripe import (
    STRIPE_API_VERSION,
    StripeClient,
    StripeResource,
    encode_form,
)
from finsync_pipeline.sandbox.generator import Company
from finsync_pipeline.sandbox.server import Sandbox
from finsync_tests.sandbox.stripe_cases import MANY_PAYMENTS, seeded, with_many_payments


def client(sandbox: Sandbox, options: HttpOptions, page_size: int = 100) -> StripeClient:
    env = sandbox.env
    return StripeClient(
        api_key=env["STRIPE_API_KEY"],
        api_base=env["STRIPE_API_BASE"],
        page_size=page_size,
        http_options=options,
    )


def test_lists_every_customer_across_pages(
    sandbox: Sandbox, company: Company, options: HttpOptions
) -> None:
    stripe = client(sandbox, options, page_size=7)
    ids = [c["id"] for c in stripe.list_customers()]
    expected = {c["id"] for c in company.stripe["customer"]}
    assert len(ids) == len(expected) > 7
    assert set(ids) == expected
    assert stripe.requests_made == math.ceil(len(expected) / 7)


@pytest.mark.parametrize(
    ("method", "obj"),
    [
        pytest.param("list_subscriptions", "subscription", id="subscriptions-incl-canceled"),
        pytest.param("list_payment_intents", "payment_intent", id="payment-intents"),
        pytest.param("list_charges", "charge", id="charges"),
    ],
)
def test_lists_every_object(
    sandbox: Sandbox, company: Company, options: HttpOptions, method: str, obj: str
) -> None:
    listed = list(getattr(client(sandbox, options, page_size=40), method)())
    assert sorted(o["id"] for o in listed) == sorted(o["id"] for o in company.stripe[obj])


def test_every_invoice_keeps_every_line(
    sandbox: Sandbox, company: Company, options: HttpOptions
) -> None:
    invoices = list(client(sandbox, options, page_size=50).list_invoices())
    generated = {inv["id"]: inv for inv in company.stripe["invoice"]}
    assert sorted(inv["id"] for inv in invoices) == sorted(generated)
    for inv in invoices:
        want = [line["id"] for line in generated[inv["id"]]["lines"]["data"]]
        assert [line["id"] for line in inv["lines"]["data"]] == want, inv["id"]
        assert inv["lines"]["has_more"] is False
    counts = sorted(len(inv["lines"]["data"]) for inv in invoices)
    assert 25 in counts
    assert counts[-1] > 10


def test_a_25_line_invoice_keeps_25_lines_with_exact_amounts(
    sandbox: Sandbox, company: Company, options: HttpOptions
) -> None:
    target = next(i for i in company.stripe["invoice"] if len(i["lines"]["data"]) == 25)
    window = {"created_gte": target["created"], "created_lt": target["created"] + 1}
    found = [i for i in client(sandbox, options).list_invoices(**window) if i["id"] == target["id"]]
    assert len(found) == 1
    lines = found[0]["lines"]["data"]
    assert len(lines) == 25
    assert all(type(line["amount"]) is int for line in lines)
    assert sum(line["amount"] for line in lines) == sum(
        line["amount"] for line in target["lines"]["data"]
    )


def test_created_window_filters(sandbox: Sandbox, company: Company, options: HttpOptions) -> None:
    created = sorted(inv["created"] for inv in company.stripe["invoice"])
    gte, lt = created[len(created) // 4], created[3 * len(created) // 4]
    listed = list(
        client(sandbox, options, page_size=20).list_invoices(created_gte=gte, created_lt=lt)
    )
    expected = {i["id"] for i in company.stripe["invoice"] if gte <= i["created"] < lt}
    assert {i["id"] for i in listed} == expected
    assert 0 < len(expected) < len(created)


def test_events_filtered_by_types_and_created(
    sandbox: Sandbox, company: Company, options: HttpOptions, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The simulator keeps 30 days of events, like Stripe: pin its clock to the history's end.
    end = datetime.datetime(2026, 11, 1, tzinfo=datetime.UTC).timestamp()
    monkeypatch.setattr(sandbox.stripe, "clock", lambda: end)
    since = int(end) - 20 * 86400
    types = ["invoice.paid", "customer.created"]
    listed = list(
        client(sandbox, options, page_size=10).list_events(created_gte=since, types=types)
    )
    expected = {
        e["id"] for e in company.stripe["event"] if e["type"] in types and e["created"] >= since
    }
    assert {e["id"] for e in listed} == expected
    assert len(expected) > 10


def test_bad_key_is_an_authentication_error_without_the_key(
    sandbox: Sandbox, options: HttpOptions
) -> None:
    bad_key = "sk_test_" + "wrong" * 8
    stripe = StripeClient(
        api_key=bad_key, api_base=sandbox.env["STRIPE_API_BASE"], http_options=options
    )
    with pytest.raises(AuthenticationError) as info:
        list(stripe.list_customers())
    message = str(info.value)
    assert message == (
        "stripe: the API key was rejected (HTTP 401); set STRIPE_API_KEY to a valid secret key"
    )
    assert "\n" not in message
    assert bad_key not in repr(info.value) and bad_key[-4:] not in message
    assert info.value.status == 401
    assert stripe.requests_made == 1


def test_429_honours_retry_after_then_succeeds(
    sandbox: Sandbox, company: Company, options: HttpOptions, sleeps: list[float]
) -> None:
    sandbox.inject("stripe", status=429, count=2, retry_after_s=1)
    stripe = client(sandbox, options)
    ids = [c["id"] for c in stripe.list_customers()]
    assert len(ids) == len(company.stripe["customer"])
    assert sleeps == [1.0, 1.0]
    assert stripe.requests_made == 2 + math.ceil(len(ids) / 100)


def test_persistent_5xx_gives_up_as_retryable(
    sandbox: Sandbox, options: HttpOptions, sleeps: list[float]
) -> None:
    sandbox.inject("stripe", status=503, count=3, retry_after_s=None)
    stripe = StripeClient(
        api_key=sandbox.env["STRIPE_API_KEY"],
        api_base=sandbox.env["STRIPE_API_BASE"],
        http_options=HttpOptions(max_attempts=3, sleep=options.sleep, rng=options.rng),
    )
    with pytest.raises(RetryableUpstreamError) as info:
        list(stripe.list_customers())
    assert info.value.status == 503
    assert len(sleeps) == 2


def test_resource_binds_env_vars_and_hides_the_key(
    sandbox: Sandbox, company: Company, monkeypatch: pytest.MonkeyPatch
) -> None:
    for key in ("STRIPE_API_KEY", "STRIPE_API_BASE"):
        monkeypatch.setenv(key, sandbox.env[key])

    @dg.asset
    def customer_count(stripe: StripeResource) -> dg.MaterializeResult:
        stripe_client = stripe.get_client()
        rows = list(stripe_client.list_customers())
        return dg.MaterializeResult(
            metadata={"rows": len(rows), "requests": stripe_client.requests_made}
        )

    resource = StripeResource(
        api_key=dg.EnvVar("STRIPE_API_KEY"), api_base=dg.EnvVar("STRIPE_API_BASE")
    )
    result = dg.materialize([customer_count], resources={"stripe": resource})
    assert result.success
    mat = result.asset_materializations_for_node("customer_count")[0]
    assert mat.metadata["rows"].value == len(company.stripe["customer"])
    resolved = StripeResource(api_key=sandbox.env["STRIPE_API_KEY"])
    assert sandbox.env["STRIPE_API_KEY"] not in repr(resolved)
    assert sandbox.env["STRIPE_API_KEY"] not in repr(resolved.get_client())
    assert STRIPE_API_VERSION == "2026-07-29.dahlia"


def test_unusable_base_url_names_the_variable(options: HttpOptions) -> None:
    with (
        StripeClient(
            api_key="sk_test_abcdefgh", api_base="api.stripe.com", http_options=options
        ) as stripe,
        pytest.raises(ConfigurationError) as info,
    ):
        list(stripe.list_customers())
    assert "STRIPE_API_BASE" in str(info.value)
    assert "sk_test_abcdefgh" not in str(info.value)


def test_lists_credit_notes_with_every_line_and_refunds(
    sandbox: Sandbox, company: Company, options: HttpOptions
) -> None:
    stripe = client(sandbox, options, page_size=5)
    notes = {n["id"]: n for n in stripe.list_credit_notes()}
    generated = {n["id"]: n for n in company.stripe["credit_note"]}
    assert notes.keys() == generated.keys()
    for note_id, note in notes.items():
        want = [line["id"] for line in generated[note_id]["lines"]["data"]]
        assert [line["id"] for line in note["lines"]["data"]] == want
    assert max(len(n["lines"]["data"]) for n in notes.values()) > 10
    refunds = list(stripe.list_refunds())
    assert {r["id"] for r in company.stripe["refund"]} <= {r["id"] for r in refunds}
    one = company.stripe["refund"][0]
    assert one["id"] in {r["id"] for r in stripe.list_refunds(charge=one["charge"])}
    of_invoice = list(stripe.list_credit_notes(invoice=company.stripe["credit_note"][0]["invoice"]))
    assert company.stripe["credit_note"][0]["id"] in {n["id"] for n in of_invoice}


def test_retrieve_refetches_an_invoice_with_every_line(
    sandbox: Sandbox, company: Company, options: HttpOptions
) -> None:
    big = next(i for i in company.stripe["invoice"] if len(i["lines"]["data"]) > 10)
    stripe = client(sandbox, options)
    invoice = stripe.retrieve("invoices", big["id"])
    assert [line["id"] for line in invoice["lines"]["data"]] == [
        line["id"] for line in big["lines"]["data"]
    ]
    assert invoice["lines"]["has_more"] is False
    assert stripe.requests_made == 2  # the invoice, then one page of its remaining lines
    customer = stripe.retrieve("customers", big["customer"])
    assert customer["object"] == "customer"
    with pytest.raises(PermanentUpstreamError) as info:
        stripe.retrieve("invoices", "in_missing")
    assert info.value.status == 404 and info.value.code == "resource_missing"


def test_retrieve_of_a_deleted_draft_is_a_record_missing_error(
    sandbox: Sandbox, company: Company, options: HttpOptions
) -> None:
    stripe = client(sandbox, options)
    draft = stripe.post("/v1/invoices", {"customer": company.stripe["customer"][0]["id"]})
    assert stripe.retrieve("invoices", draft["id"])["status"] == "draft"
    response = stripe.http.request(
        "DELETE", f"{sandbox.env['STRIPE_API_BASE']}/v1/invoices/{draft['id']}", idempotent=True
    )
    assert response.json() == {"id": draft["id"], "object": "invoice", "deleted": True}
    with pytest.raises(RecordMissingError) as missing:
        stripe.retrieve("invoices", draft["id"])
    assert isinstance(missing.value, PermanentUpstreamError)
    assert (missing.value.status, missing.value.code) == (404, "resource_missing")
    assert str(missing.value).startswith("stripe: ") and draft["id"] in str(missing.value)
    # A finalized invoice cannot be deleted: it stays a plain permanent error, not "missing".
    finalized = next(i for i in company.stripe["invoice"] if i["status"] == "paid")
    with pytest.raises(PermanentUpstreamError) as refused:
        stripe.http.request(
            "DELETE",
            f"{sandbox.env['STRIPE_API_BASE']}/v1/invoices/{finalized['id']}",
            idempotent=True,
        )
    assert refused.value.status == 400 and not isinstance(refused.value, RecordMissingError)


def _unrefunded_charge(company: Company, nth: int = 0) -> dict:
    return [
        c
        for c in company.stripe["charge"]
        if c["status"] == "succeeded" and c["amount_refunded"] == 0 and c["amount"] > 1000
    ][nth]


def _keys_sent(stripe: StripeClient) -> list[str]:
    seen: list[str] = []
    stripe.http.session.hooks["response"].append(
        lambda r, *a, **k: seen.append(r.request.headers.get("Idempotency-Key", "GET"))
    )
    return seen


def test_post_resends_the_same_idempotency_key_after_a_429(
    sandbox: Sandbox, company: Company, options: HttpOptions, sleeps: list[float]
) -> None:
    charge = _unrefunded_charge(company)
    stripe = client(sandbox, options)
    seen = _keys_sent(stripe)
    sandbox.inject("stripe", status=429, count=1, retry_after_s=None, path_prefix="/v1/refunds")
    params = {"charge": charge["id"], "amount": 1000, "metadata": {"credit_note": "cn_test"}}
    refund = stripe.post("/v1/refunds", params, idempotency_key="refund:cn_test")
    # The 429 said retry: the client waited once and resent the very same key.
    assert seen == ["refund:cn_test", "refund:cn_test"] and len(sleeps) == 1
    assert refund["amount"] == 1000 and refund["metadata"] == {"credit_note": "cn_test"}
    # A rerun of the same step (same key) replays the refund instead of refunding twice.
    again = stripe.post("/v1/refunds", params, idempotency_key="refund:cn_test")
    assert again["id"] == refund["id"]
    assert stripe.retrieve("charges", charge["id"])["amount_refunded"] == 1000
    with pytest.raises(PermanentUpstreamError) as info:
        stripe.post("/v1/refunds", {**params, "amount": 999}, idempotency_key="refund:cn_test")
    assert info.value.status == 400 and info.value.code == "idempotency_error"


def test_post_without_a_key_sends_a_fresh_one(
    sandbox: Sandbox, options: HttpOptions, company: Company
) -> None:
    stripe = client(sandbox, options)
    seen: list[str] = []
    stripe.http.session.hooks["response"].append(
        lambda r, *a, **k: seen.append(r.request.headers.get("Idempotency-Key", "GET"))
    )
    customer = company.stripe["customer"][2]["id"]
    for value in ("1", "2"):
        updated = stripe.post(f"/v1/customers/{customer}", {"metadata": {"sync": value}})
        assert updated["metadata"]["sync"] == value
    assert len(set(seen)) == 2 and all(k.startswith("finsync-") for k in seen)


@pytest.mark.parametrize(
    ("params", "expected"),
    [
        pytest.param(
            {"metadata": {"crm_id": "001"}, "amount": 5},
            [("metadata[crm_id]", "001"), ("amount", "5")],
            id="nested-dict",
        ),
        pytest.param(
            {"items": [{"price": "p", "quantity": 3}], "expand": ["latest_invoice"]},
            [
                ("items[0][price]", "p"),
                ("items[0][quantity]", "3"),
                ("expand[0]", "latest_invoice"),
            ],
            id="lists",
        ),
        pytest.param(
            {"paid_out_of_band": True, "description": None},
            [("paid_out_of_band", "true"), ("description", "")],
            id="bool-and-unset",
        ),
    ],
)
def test_encode_form_uses_bracket_notation(params: dict, expected: list) -> None:
    assert encode_form(params) == expected


def test_encode_form_refuses_float_amounts() -> None:
    with pytest.raises(TypeError, match="amount"):
        encode_form({"amount": 10.5})


def test_customers_come_with_their_tax_ids(
    sandbox: Sandbox, company: Company, options: HttpOptions
) -> None:
    # Stripe leaves tax_ids out of a customer unless asked: the connector always asks.
    stripe = client(sandbox, options, page_size=7)
    customers = {c["id"]: c for c in stripe.list_customers()}
    assert all(c["tax_ids"]["object"] == "list" for c in customers.values())
    (planted,) = company.planted["reverse_charge_customer"]
    (vat,) = customers[planted["id"]]["tax_ids"]["data"]
    assert vat["type"] == "eu_vat"
    one = stripe.retrieve("customers", planted["id"])
    assert one["tax_ids"]["data"] == [vat]
    # Other objects are retrieved as they are: nothing to expand there.
    invoice = company.stripe["invoice"][0]["id"]
    assert "tax_ids" not in stripe.retrieve("invoices", invoice)


def test_a_500_that_says_do_not_retry_is_settled_by_lookup_never_resent_blind(
    sandbox: Sandbox, company: Company, options: HttpOptions, sleeps: list[float]
) -> None:
    charge = _unrefunded_charge(company, 1)
    stripe = client(sandbox, options)
    seen = _keys_sent(stripe)
    sandbox.inject("stripe", status=500, count=1, retry_after_s=None, path_prefix="/v1/refunds")
    params = {"charge": charge["id"], "amount": 1000, "metadata": {"credit_note": "cn_500"}}
    with pytest.raises(AmbiguousOutcomeError) as info:
        stripe.post("/v1/refunds", params, idempotency_key="refund:cn_500")
    # Stripe-Should-Retry: false: sent once, no wait, and the error says to look it up.
    assert seen == ["refund:cn_500"] and sleeps == []
    assert info.value.status == 500 and "look the document up" in str(info.value)
    # The lookup settles it: no refund was made, so the write is sent again with its key.
    refunds = [r for r in stripe.list_refunds(charge=charge["id"]) if r["metadata"]]
    assert refunds == []
    refund = stripe.post("/v1/refunds", params, idempotency_key="refund:cn_500")
    assert stripe.post("/v1/refunds", params, idempotency_key="refund:cn_500") == refund
    assert stripe.retrieve("charges", charge["id"])["amount_refunded"] == 1000


def test_a_read_answered_500_do_not_retry_gives_up_at_once(
    sandbox: Sandbox, options: HttpOptions, sleeps: list[float]
) -> None:
    sandbox.inject("stripe", status=500, count=1, retry_after_s=None)
    stripe = client(sandbox, options)
    with pytest.raises(RetryableUpstreamError) as info:
        list(stripe.list_customers())
    assert info.value.status == 500 and stripe.requests_made == 1 and sleeps == []


def test_every_payment_of_an_invoice_is_read_past_the_ten_stripe_embeds(
    tmp_path: Path, company: Company, options: HttpOptions
) -> None:
    planted, target = with_many_payments(company)
    want = sorted(p["id"] for p in target["payments"]["data"])
    with seeded(tmp_path, planted) as box:
        stripe = client(box, options)
        window = {"created_gte": target["created"], "created_lt": target["created"] + 1}
        (listed,) = [i for i in stripe.list_invoices(**window) if i["id"] == target["id"]]
        retrieved = stripe.retrieve("invoices", target["id"])
        others = {i["id"]: i for i in stripe.list_invoices()}
    for invoice in (listed, retrieved):
        assert sorted(p["id"] for p in invoice["payments"]["data"]) == want
        assert len(want) == MANY_PAYMENTS and invoice["payments"]["has_more"] is False
    # Every other invoice keeps its payments too, though the sandbox shows them only expanded.
    for invoice in planted.stripe["invoice"]:
        got = others[invoice["id"]]["payments"]["data"]
        assert sorted(p["id"] for p in got) == sorted(p["id"] for p in invoice["payments"]["data"])
