"""stripe-python, Stripe's official client, as the judge of the Stripe sandbox.

The client runs unchanged against a seeded sandbox, once with its own default API version and
once pinned to finsync's, and reads what finsync reads. Where it and the sandbox disagree, the
published contract decides and the sandbox changes.
"""

from collections.abc import Iterator
from typing import Any

import pytest
import stripe

from finsync_pipeline.sandbox.generator import STRIPE_API_VERSION, Company
from finsync_pipeline.sandbox.server import Sandbox

# stripe-python's own pin: the version it sends when none is given.
CLIENT_DEFAULT_VERSION = stripe.api_version


@pytest.fixture(
    params=[
        pytest.param(None, id="client-default-version"),
        pytest.param(STRIPE_API_VERSION, id="finsync-pinned-version"),
    ]
)
def version(request: pytest.FixtureRequest) -> str | None:
    """The ``stripe_version`` the client is built with (None: the client's own)."""
    pinned: str | None = request.param
    return pinned


@pytest.fixture
def client(version: str | None, sandbox: Sandbox) -> Iterator[stripe.StripeClient]:
    env = sandbox.env
    yield stripe.StripeClient(
        env["STRIPE_API_KEY"],
        base_addresses={"api": env["STRIPE_API_BASE"]},
        stripe_version=version,
        max_network_retries=2,
    )


def _ids(objects: Any) -> list[str]:
    return [o.id for o in objects]


def _by_id(records: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {r["id"]: r for r in records}


def test_the_version_asked_is_the_version_served(
    client: stripe.StripeClient, version: str | None
) -> None:
    page = client.v1.customers.list(params={"limit": 1})
    assert page.last_response is not None
    assert page.last_response.headers["Stripe-Version"] == (version or CLIENT_DEFAULT_VERSION)


def test_customers_page_with_their_tax_ids(client: stripe.StripeClient, company: Company) -> None:
    listed = client.v1.customers.list(params={"limit": 40, "expand": ["data.tax_ids"]})
    customers = list(listed.auto_paging_iter())
    assert sorted(_ids(customers)) == sorted(c["id"] for c in company.stripe["customer"])
    with_vat = {c.id: c for c in customers if c.tax_ids.data}
    (planted,) = company.planted["reverse_charge_customer"]
    assert planted["id"] in with_vat
    assert with_vat[planted["id"]].tax_ids.data[0].type == "eu_vat"


def test_invoices_page_with_their_payments_and_every_line(
    client: stripe.StripeClient, company: Company
) -> None:
    generated = _by_id(company.stripe["invoice"])
    listed = client.v1.invoices.list(params={"limit": 100, "expand": ["data.payments"]})
    invoices = list(listed.auto_paging_iter())
    assert sorted(_ids(invoices)) == sorted(generated)
    for invoice in invoices:
        want = generated[invoice.id]["payments"]["data"]
        assert sorted(_ids(invoice.payments.data)) == sorted(p["id"] for p in want)
    unexpanded = client.v1.invoices.retrieve(invoices[0].id)
    assert "payments" not in unexpanded
    big = next(i for i in company.stripe["invoice"] if len(i["lines"]["data"]) > 10)
    lines = client.v1.invoices.line_items.list(big["id"], params={"limit": 10})
    assert _ids(lines.auto_paging_iter()) == [line["id"] for line in big["lines"]["data"]]


def test_credit_notes_and_their_lines(client: stripe.StripeClient, company: Company) -> None:
    notes = list(client.v1.credit_notes.list(params={"limit": 25}).auto_paging_iter())
    assert sorted(_ids(notes)) == sorted(n["id"] for n in company.stripe["credit_note"])
    big = next(n for n in company.stripe["credit_note"] if len(n["lines"]["data"]) > 10)
    lines = client.v1.credit_notes.line_items.list(big["id"], params={"limit": 10})
    assert _ids(lines.auto_paging_iter()) == [line["id"] for line in big["lines"]["data"]]


def test_charges_refunds_and_invoice_payments(
    client: stripe.StripeClient, company: Company
) -> None:
    charges = client.v1.charges.list(params={"limit": 100}).auto_paging_iter()
    assert sorted(_ids(charges)) == sorted(c["id"] for c in company.stripe["charge"])
    refunds = client.v1.refunds.list(params={"limit": 100}).auto_paging_iter()
    # Other tests of the session may refund more; every generated refund is listed.
    assert {r["id"] for r in company.stripe["refund"]} <= set(_ids(refunds))
    paid = next(i for i in company.stripe["invoice"] if i["payments"]["data"])
    of_invoice = client.v1.invoice_payments.list(params={"invoice": paid["id"]})
    assert sorted(_ids(of_invoice.auto_paging_iter())) == sorted(
        p["id"] for p in paid["payments"]["data"]
    )
    intent = paid["payments"]["data"][-1]["payment"]["payment_intent"]
    by_intent = client.v1.invoice_payments.list(
        params={"payment": {"type": "payment_intent", "payment_intent": intent}}
    )
    assert [p.invoice for p in by_intent.auto_paging_iter()] == [paid["id"]]


def test_events_filtered_by_types(client: stripe.StripeClient) -> None:
    types = ["invoice.paid", "customer.created"]
    events = list(client.v1.events.list(params={"limit": 100, "types": types}).auto_paging_iter())
    assert events and {e.type for e in events} <= set(types)
    assert {e.type for e in events} == set(types)


def test_a_missing_object_is_the_real_error_envelope(client: stripe.StripeClient) -> None:
    with pytest.raises(stripe.InvalidRequestError) as info:
        client.v1.invoices.retrieve("in_doesnotexist")
    error = info.value
    assert error.http_status == 404 and error.code == "resource_missing"
    assert error.param == "id" and "in_doesnotexist" in str(error.user_message)
    assert error.request_id is not None and error.request_id.startswith("req_")


def test_an_id_with_url_special_characters_is_decoded(client: stripe.StripeClient) -> None:
    odd = "cus_a/b?c#d%e"
    with pytest.raises(stripe.InvalidRequestError) as info:
        client.v1.customers.retrieve(odd)
    # The sandbox read the id the client percent-encoded, not a path of several segments.
    assert info.value.http_status == 404
    assert info.value.user_message == f"No such customer: '{odd}'"


def test_an_idempotent_post_replays(
    client: stripe.StripeClient, version: str | None, company: Company
) -> None:
    customer = company.stripe["customer"][5]["id"]
    key = f"judge-{version}"
    params: Any = {"metadata": {"judged": key}}
    first = client.v1.customers.update(customer, params=params, options={"idempotency_key": key})
    again = client.v1.customers.update(customer, params=params, options={"idempotency_key": key})
    assert first.last_response is not None and again.last_response is not None
    assert "Idempotent-Replayed" not in first.last_response.headers
    assert again.last_response.headers["Idempotent-Replayed"] == "true"
    assert again.metadata["judged"] == key and again.id == first.id
    with pytest.raises(stripe.IdempotencyError):
        client.v1.customers.update(
            customer, params={"metadata": {"judged": "other"}}, options={"idempotency_key": key}
        )


def test_a_500_is_not_retried_and_a_503_is(client: stripe.StripeClient, sandbox: Sandbox) -> None:
    # The client follows Stripe-Should-Retry: false on the 500, true on the 503.
    sandbox.inject("stripe", status=500, count=1, retry_after_s=None)
    with pytest.raises(stripe.APIError) as info:
        client.v1.customers.list(params={"limit": 1})
    assert info.value.http_status == 500
    assert info.value.headers is not None and info.value.headers["Stripe-Should-Retry"] == "false"
    sandbox.inject("stripe", status=503, count=1, retry_after_s=0)
    before = sandbox.stripe.request_count
    page = client.v1.customers.list(params={"limit": 1})
    assert len(page.data) == 1 and sandbox.stripe.request_count - before == 2
