"""The Stripe simulator over real HTTP: auth, version pinning, pagination, lines, events, faults."""

import threading
import time
from pathlib import Path
from typing import Any

import pytest
import requests

from finsync_pipeline.sandbox.generator import STRIPE_API_VERSION, Company
from finsync_pipeline.sandbox.server import Sandbox
from finsync_tests.sandbox.stripe_cases import MANY_PAYMENTS, seeded, with_many_payments


def _get(http: requests.Session, sandbox: Sandbox, path: str, **params: Any) -> requests.Response:
    env = sandbox.env
    return http.get(
        env["STRIPE_API_BASE"] + path,
        params=params,
        headers={
            "Authorization": f"Bearer {env['STRIPE_API_KEY']}",
            "Stripe-Version": STRIPE_API_VERSION,
        },
        timeout=10,
    )


def _list_all(http: requests.Session, sandbox: Sandbox, path: str, **params: Any) -> list[dict]:
    items: list[dict] = []
    after: str | None = None
    while True:
        page_params = dict(params, limit=7)
        if after:
            page_params["starting_after"] = after
        page = _get(http, sandbox, path, **page_params).json()
        assert page["object"] == "list" and page["url"] == path
        items += page["data"]
        if not page["has_more"]:
            return items
        after = page["data"][-1]["id"]


def test_starting_after_pages_cover_everything_newest_first(
    http: requests.Session, sandbox: Sandbox, company: Company
) -> None:
    invoices = _list_all(http, sandbox, "/v1/invoices")
    assert {i["id"] for i in invoices} == {i["id"] for i in company.stripe["invoice"]}
    assert len(invoices) == len(company.stripe["invoice"])
    created = [i["created"] for i in invoices]
    assert created == sorted(created, reverse=True)


def test_ending_before_walks_back(http: requests.Session, sandbox: Sandbox) -> None:
    first = _get(http, sandbox, "/v1/customers", limit=5).json()["data"]
    second = _get(http, sandbox, "/v1/customers", limit=5, starting_after=first[-1]["id"]).json()
    back = _get(http, sandbox, "/v1/customers", limit=5, ending_before=second["data"][0]["id"])
    assert [c["id"] for c in back.json()["data"]] == [c["id"] for c in first]


def test_filters_by_customer_and_created(
    http: requests.Session, sandbox: Sandbox, company: Company
) -> None:
    customer = company.stripe["invoice"][0]["customer"]
    mine = _list_all(http, sandbox, "/v1/invoices", customer=customer)
    assert mine and all(i["customer"] == customer for i in mine)
    assert len(mine) == sum(1 for i in company.stripe["invoice"] if i["customer"] == customer)
    cutoff = sorted(i["created"] for i in company.stripe["invoice"])[len(mine)]
    recent = _list_all(http, sandbox, "/v1/invoices", **{"created[gte]": cutoff})
    assert recent and all(i["created"] >= cutoff for i in recent)


def test_canceled_subscriptions_only_with_status_all(
    http: requests.Session, sandbox: Sandbox, company: Company
) -> None:
    canceled = {s["id"] for s in company.stripe["subscription"] if s["status"] == "canceled"}
    assert canceled, "the fixture company should hold a canceled subscription"
    default = {s["id"] for s in _list_all(http, sandbox, "/v1/subscriptions")}
    everything = {s["id"] for s in _list_all(http, sandbox, "/v1/subscriptions", status="all")}
    assert not default & canceled
    assert everything == {s["id"] for s in company.stripe["subscription"]}


def test_invoice_embeds_ten_lines_and_pages_the_rest(
    http: requests.Session, sandbox: Sandbox, company: Company
) -> None:
    big = next(i for i in company.stripe["invoice"] if len(i["lines"]["data"]) == 25)
    shown = _get(http, sandbox, f"/v1/invoices/{big['id']}").json()
    assert len(shown["lines"]["data"]) == 10
    assert shown["lines"]["has_more"] is True
    assert shown["lines"]["url"] == f"/v1/invoices/{big['id']}/lines"
    lines = shown["lines"]["data"]
    while True:
        page = _get(
            http, sandbox, shown["lines"]["url"], limit=10, starting_after=lines[-1]["id"]
        ).json()
        lines += page["data"]
        if not page["has_more"]:
            break
    assert [line["id"] for line in lines] == [line["id"] for line in big["lines"]["data"]]
    assert sum(line["amount"] for line in lines) == big["subtotal"]


def test_bad_key_is_401_without_echoing_it(http: requests.Session, sandbox: Sandbox) -> None:
    wrong = "sk_test_thisIsNotTheKeyAtAll1234"
    resp = http.get(
        sandbox.env["STRIPE_API_BASE"] + "/v1/customers",
        headers={"Authorization": f"Bearer {wrong}"},
        timeout=10,
    )
    assert resp.status_code == 401
    error = resp.json()["error"]
    assert error["type"] == "invalid_request_error"
    assert error["message"].startswith("Invalid API Key provided: sk_test_*")
    assert wrong not in resp.text
    assert resp.headers["Request-Id"].startswith("req_")
    missing = http.get(sandbox.env["STRIPE_API_BASE"] + "/v1/customers", timeout=10)
    assert missing.status_code == 401


def _with_version(http: requests.Session, sandbox: Sandbox, version: str) -> requests.Response:
    env = sandbox.env
    return http.get(
        env["STRIPE_API_BASE"] + "/v1/customers",
        params={"limit": 1},
        headers={"Authorization": f"Bearer {env['STRIPE_API_KEY']}", "Stripe-Version": version},
        timeout=10,
    )


@pytest.mark.parametrize(
    "version",
    [
        pytest.param("2026-10-28.endive", id="stripe-python-16-default"),
        pytest.param(STRIPE_API_VERSION, id="finsync-pin"),
        pytest.param("2025-03-31.basil", id="older-named-release"),
        pytest.param("2024-06-20", id="dated-release-before-names"),
    ],
)
def test_a_well_formed_stripe_version_is_served_and_echoed(
    http: requests.Session, sandbox: Sandbox, version: str
) -> None:
    resp = _with_version(http, sandbox, version)
    assert resp.status_code == 200, resp.text
    assert resp.headers["Stripe-Version"] == version
    assert _get(http, sandbox, "/v1/customers", limit=1).headers["Stripe-Version"] == (
        STRIPE_API_VERSION
    )


@pytest.mark.parametrize(
    "version",
    [
        pytest.param("2019-2-19", id="unpadded-month"),
        pytest.param("2026-13-01.endive", id="no-such-month"),
        pytest.param("2026-07-29", id="named-era-without-its-name"),
        pytest.param("2019-02-19.acacia", id="name-before-named-releases"),
        pytest.param("2019-12-03, 2019-12-03", id="header-sent-twice"),
        pytest.param("latest", id="not-a-date"),
    ],
)
def test_a_malformed_stripe_version_is_refused_as_stripe_refuses_it(
    http: requests.Session, sandbox: Sandbox, version: str
) -> None:
    resp = _with_version(http, sandbox, version)
    assert resp.status_code == 400
    assert resp.json() == {
        "error": {
            "type": "invalid_request_error",
            "message": f"Invalid Stripe API version: {version}",
        }
    }


def test_unknown_id_and_parameter(http: requests.Session, sandbox: Sandbox) -> None:
    missing = _get(http, sandbox, "/v1/invoices/in_doesnotexist")
    assert missing.status_code == 404
    assert missing.json()["error"]["code"] == "resource_missing"
    bad = _get(http, sandbox, "/v1/invoices", limit=101)
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "limit"
    typo = _get(http, sandbox, "/v1/invoices", custmer="cus_x")
    assert typo.status_code == 400 and typo.json()["error"]["param"] == "custmer"


def test_events_filter_by_type_and_keep_30_days(
    http: requests.Session, sandbox: Sandbox, company: Company
) -> None:
    paid = _list_all(http, sandbox, "/v1/events", type="invoice.paid")
    assert paid and all(e["type"] == "invoice.paid" for e in paid)
    assert all(e["api_version"] == STRIPE_API_VERSION for e in paid)
    assert all(e["data"]["object"]["object"] == "invoice" for e in paid)
    newest = max(e["created"] for e in company.stripe["event"])
    listed = _list_all(
        http, sandbox, "/v1/events", **{"types[]": ["invoice.paid", "customer.created"]}
    )
    assert {e["type"] for e in listed} <= {"invoice.paid", "customer.created"}
    everything = _list_all(http, sandbox, "/v1/events")
    # Newest first; the session's sandbox may hold newer events other tests' writes made.
    assert everything[0]["created"] >= newest
    created = [e["created"] for e in everything]
    assert created == sorted(created, reverse=True)
    oldest_allowed = min(e["created"] for e in everything)
    assert len(everything) < len(company.stripe["event"]), "events older than 30 days hidden"
    assert newest - oldest_allowed <= 31 * 86400


def test_injected_429_carries_retry_after(http: requests.Session, sandbox: Sandbox) -> None:
    sandbox.inject("stripe", status=429, count=2, retry_after_s=3, path_prefix="/v1/invoices")
    elsewhere = _get(http, sandbox, "/v1/customers", limit=1)
    assert elsewhere.status_code == 200
    for _ in range(2):
        resp = _get(http, sandbox, "/v1/invoices", limit=1)
        assert resp.status_code == 429
        assert resp.headers["Retry-After"] == "3"
        assert resp.json()["error"]["code"] == "rate_limit"
    assert _get(http, sandbox, "/v1/invoices", limit=1).status_code == 200


def test_admin_endpoint_arms_faults(http: requests.Session, sandbox: Sandbox) -> None:
    resp = http.post(
        sandbox.env["STRIPE_API_BASE"] + "/__sandbox/faults",
        json={"status": 503, "count": 1, "retry_after_s": 2},
        timeout=10,
    )
    assert resp.status_code == 200
    failed = _get(http, sandbox, "/v1/customers", limit=1)
    assert failed.status_code == 503 and failed.headers["Retry-After"] == "2"
    assert failed.json()["error"]["type"] == "api_error"
    assert _get(http, sandbox, "/v1/customers", limit=1).status_code == 200


def test_repeated_items_fault_delivers_the_page_boundary_twice(
    http: requests.Session, sandbox: Sandbox
) -> None:
    resp = http.post(
        sandbox.env["STRIPE_API_BASE"] + "/__sandbox/faults",
        json={"kind": "repeat_items", "pages": 1, "path_prefix": "/v1/customers"},
        timeout=10,
    )
    assert resp.status_code == 200
    first = _get(http, sandbox, "/v1/customers", limit=3).json()["data"]
    after = first[-1]["id"]
    repeated = _get(http, sandbox, "/v1/customers", limit=3, starting_after=after).json()["data"]
    # The armed page starts with the cursor's customer again; the next page is back to normal.
    assert repeated[0]["id"] == after and len(repeated) == 3
    plain = _get(http, sandbox, "/v1/customers", limit=3, starting_after=after).json()["data"]
    assert plain[0]["id"] != after
    assert [c["id"] for c in plain[:2]] == [c["id"] for c in repeated[1:]]


def _post(
    http: requests.Session, sandbox: Sandbox, path: str, data: Any, key: str | None = None
) -> requests.Response:
    env = sandbox.env
    headers = {
        "Authorization": f"Bearer {env['STRIPE_API_KEY']}",
        "Stripe-Version": STRIPE_API_VERSION,
    }
    if key is not None:
        headers["Idempotency-Key"] = key
    return http.post(env["STRIPE_API_BASE"] + path, data=data, headers=headers, timeout=10)


def _refundable(sandbox: Sandbox, company: Company, http: requests.Session) -> dict:
    """A succeeded charge nothing has refunded yet (not even an earlier test)."""
    for charge in company.stripe["charge"]:
        if charge["status"] == "succeeded" and charge["amount_refunded"] == 0:
            live = _get(http, sandbox, f"/v1/charges/{charge['id']}").json()
            if live["amount_refunded"] == 0 and charge["amount"] > 100:
                return live
    raise AssertionError("no refundable charge in the fixture company")


def test_credit_notes_and_their_lines_page_like_invoices(
    http: requests.Session, sandbox: Sandbox, company: Company
) -> None:
    notes = _list_all(http, sandbox, "/v1/credit_notes")
    assert {n["id"] for n in notes} == {n["id"] for n in company.stripe["credit_note"]}
    big = next(n for n in company.stripe["credit_note"] if len(n["lines"]["data"]) > 10)
    shown = _get(http, sandbox, f"/v1/credit_notes/{big['id']}").json()
    assert len(shown["lines"]["data"]) == 10 and shown["lines"]["has_more"] is True
    lines = _list_all(http, sandbox, f"/v1/credit_notes/{big['id']}/lines")
    assert [x["id"] for x in lines] == [x["id"] for x in big["lines"]["data"]]
    mine = _list_all(http, sandbox, "/v1/credit_notes", invoice=big["invoice"])
    assert [n["id"] for n in mine] == [
        n["id"] for n in company.stripe["credit_note"] if n["invoice"] == big["invoice"]
    ]


def test_refunds_filter_by_charge_payment_intent_and_created(
    http: requests.Session, sandbox: Sandbox, company: Company
) -> None:
    refunds = company.stripe["refund"]
    listed = _list_all(http, sandbox, "/v1/refunds")
    assert {r["id"] for r in refunds} <= {r["id"] for r in listed}
    one = refunds[0]
    by_charge = _list_all(http, sandbox, "/v1/refunds", charge=one["charge"])
    by_intent = _list_all(http, sandbox, "/v1/refunds", payment_intent=one["payment_intent"])
    assert one["id"] in {r["id"] for r in by_charge} == {r["id"] for r in by_intent}
    cutoff = sorted(r["created"] for r in refunds)[len(refunds) // 2]
    recent = _list_all(http, sandbox, "/v1/refunds", **{"created[gte]": cutoff})
    assert recent and all(r["created"] >= cutoff for r in recent)
    for path in (f"/v1/refunds/{one['id']}", f"/v1/charges/{one['charge']}"):
        assert _get(http, sandbox, path).status_code == 200
    retrieved = _get(http, sandbox, f"/v1/payment_intents/{one['payment_intent']}").json()
    assert retrieved["latest_charge"] == one["charge"]


def test_idempotency_key_replays_the_first_refund(
    http: requests.Session, sandbox: Sandbox, company: Company
) -> None:
    charge = _refundable(sandbox, company, http)
    form = {"charge": charge["id"], "amount": "100", "metadata[case]": "replay"}
    first = _post(http, sandbox, "/v1/refunds", form, key="replay-1")
    assert first.status_code == 200 and "Idempotent-Replayed" not in first.headers
    again = _post(http, sandbox, "/v1/refunds", form, key="replay-1")
    assert again.status_code == 200 and again.headers["Idempotent-Replayed"] == "true"
    assert again.json() == first.json()
    after = _get(http, sandbox, f"/v1/charges/{charge['id']}").json()
    assert after["amount_refunded"] == 100, "the replay refunded nothing more"
    refunds = _list_all(http, sandbox, "/v1/refunds", charge=charge["id"])
    assert [r["id"] for r in refunds] == [first.json()["id"]]
    events = _list_all(http, sandbox, "/v1/events", type="refund.created")
    assert [e["request"]["idempotency_key"] for e in events].count("replay-1") == 1


def test_same_key_with_other_parameters_is_an_idempotency_error(
    http: requests.Session, sandbox: Sandbox, company: Company
) -> None:
    charge = _refundable(sandbox, company, http)
    assert _post(
        http, sandbox, "/v1/refunds", {"charge": charge["id"], "amount": "50"}, key="mismatch"
    ).ok
    other = _post(
        http, sandbox, "/v1/refunds", {"charge": charge["id"], "amount": "60"}, key="mismatch"
    )
    assert other.status_code == 400
    assert other.json()["error"]["type"] == "idempotency_error"


def test_a_rejected_request_stores_nothing_under_its_key(
    http: requests.Session, sandbox: Sandbox, company: Company
) -> None:
    charge = _refundable(sandbox, company, http)
    too_much = str(charge["amount"] + 1)
    bad = _post(
        http, sandbox, "/v1/refunds", {"charge": charge["id"], "amount": too_much}, key="fix-me"
    )
    assert bad.status_code == 400 and bad.json()["error"]["code"] == "amount_too_large"
    fixed = _post(http, sandbox, "/v1/refunds", {"charge": charge["id"]}, key="fix-me")
    assert fixed.status_code == 200 and fixed.json()["amount"] == charge["amount"]
    assert _get(http, sandbox, f"/v1/charges/{charge['id']}").json()["refunded"] is True


def test_a_concurrent_request_with_the_same_key_is_409(
    http: requests.Session, sandbox: Sandbox, company: Company
) -> None:
    customer = company.stripe["customer"][0]["id"]
    entered, release = threading.Event(), threading.Event()

    def hold() -> None:
        entered.set()
        release.wait(10)

    sandbox.stripe.before_write = hold
    form = {"metadata[crm_sync]": "1"}
    first: list[requests.Response] = []
    worker = threading.Thread(
        target=lambda: first.append(
            _post(requests.Session(), sandbox, f"/v1/customers/{customer}", form, key="busy")
        )
    )
    try:
        worker.start()
        assert entered.wait(10)
        sandbox.stripe.before_write = None
        second = _post(http, sandbox, f"/v1/customers/{customer}", form, key="busy")
        assert second.status_code == 409
        assert second.json()["error"]["code"] == "idempotency_key_in_use"
        assert second.headers["Stripe-Should-Retry"] == "true"
    finally:
        release.set()
        worker.join(10)
        sandbox.stripe.before_write = None
    assert first[0].status_code == 200
    assert first[0].json()["metadata"]["crm_sync"] == "1"
    replay = _post(http, sandbox, f"/v1/customers/{customer}", form, key="busy")
    assert replay.headers["Idempotent-Replayed"] == "true"


def test_keys_expire_after_24_hours(
    http: requests.Session, sandbox: Sandbox, company: Company, monkeypatch: pytest.MonkeyPatch
) -> None:
    customer = company.stripe["customer"][1]["id"]
    form = {"metadata[note]": "a"}
    assert _post(http, sandbox, f"/v1/customers/{customer}", form, key="old-key").ok
    later = time.time() + 25 * 3600
    monkeypatch.setattr(sandbox.stripe, "clock", lambda: later)
    # Pruned: the same key now runs a new request, even with other parameters.
    other = _post(http, sandbox, f"/v1/customers/{customer}", {"metadata[note]": "b"}, "old-key")
    assert other.status_code == 200 and "Idempotent-Replayed" not in other.headers
    assert other.json()["metadata"]["note"] == "b"


def test_events_older_than_30_days_by_the_clock_are_gone(
    http: requests.Session, sandbox: Sandbox, company: Company, monkeypatch: pytest.MonkeyPatch
) -> None:
    newest = max(e["created"] for e in company.stripe["event"])
    monkeypatch.setattr(sandbox.stripe, "clock", lambda: float(newest))
    kept = _list_all(http, sandbox, "/v1/events", **{"created[gte]": 0})
    assert kept and min(e["created"] for e in kept) >= newest - 30 * 86400
    # Past every event: the generated ones and those earlier tests' writes emitted (up to a
    # day ahead, under a moved clock).
    beyond = max(newest, int(time.time())) + 40 * 86400
    monkeypatch.setattr(sandbox.stripe, "clock", lambda: float(beyond))
    assert _get(http, sandbox, "/v1/events", **{"created[gte]": 0}).json()["data"] == []
    types = _list_all(
        http,
        sandbox,
        "/v1/events",
        **{"types[]": ["credit_note.created", "refund.created"], "created[gte]": 0},
    )
    assert types == []


def _delete(http: requests.Session, sandbox: Sandbox, path: str) -> requests.Response:
    env = sandbox.env
    return http.delete(
        env["STRIPE_API_BASE"] + path,
        headers={
            "Authorization": f"Bearer {env['STRIPE_API_KEY']}",
            "Stripe-Version": STRIPE_API_VERSION,
        },
        timeout=10,
    )


def _events_of(http: requests.Session, sandbox: Sandbox, object_id: str, since: int) -> list[dict]:
    events = _list_all(
        http, sandbox, "/v1/events", **{"types[]": ["invoice.*"], "created[gte]": since}
    )
    return [e for e in events if e["data"]["object"]["id"] == object_id]


def test_a_deleted_draft_is_gone_but_its_events_remain(
    http: requests.Session, sandbox: Sandbox, company: Company
) -> None:
    customer = company.stripe["customer"][2]
    created = _post(http, sandbox, "/v1/invoices", {"customer": customer["id"]}, key="draft-1")
    assert created.status_code == 200
    draft = created.json()
    assert (draft["status"], draft["number"], draft["total"]) == ("draft", None, 0)
    assert draft["currency"] == customer["currency"] and draft["lines"]["data"] == []
    assert _get(http, sandbox, f"/v1/invoices/{draft['id']}").json()["status"] == "draft"

    gone = _delete(http, sandbox, f"/v1/invoices/{draft['id']}")
    assert gone.status_code == 200
    assert gone.json() == {"id": draft["id"], "object": "invoice", "deleted": True}
    for path in (f"/v1/invoices/{draft['id']}", f"/v1/invoices/{draft['id']}/lines"):
        missing = _get(http, sandbox, path)
        assert missing.status_code == 404, path
        error = missing.json()["error"]
        assert (error["type"], error["code"]) == ("invalid_request_error", "resource_missing")
        assert draft["id"] in error["message"]
    # DELETE is idempotent by definition: the second one finds nothing to delete.
    again = _delete(http, sandbox, f"/v1/invoices/{draft['id']}")
    assert again.status_code == 404 and again.json()["error"]["code"] == "resource_missing"
    listed = _list_all(http, sandbox, "/v1/invoices", customer=customer["id"])
    assert draft["id"] not in {i["id"] for i in listed}
    events = _events_of(http, sandbox, draft["id"], draft["created"])
    assert sorted(e["type"] for e in events) == ["invoice.created", "invoice.deleted"]
    (deleted,) = [e for e in events if e["type"] == "invoice.deleted"]
    assert deleted["data"]["object"]["status"] == "draft"
    assert "deleted" not in deleted["data"]["object"]


def test_only_a_draft_can_be_deleted(
    http: requests.Session, sandbox: Sandbox, company: Company
) -> None:
    finalized = next(i for i in company.stripe["invoice"] if i["status"] in ("open", "paid"))
    refused = _delete(http, sandbox, f"/v1/invoices/{finalized['id']}")
    assert refused.status_code == 400
    error = refused.json()["error"]
    assert error["type"] == "invalid_request_error" and "void" in error["message"]
    assert _get(http, sandbox, f"/v1/invoices/{finalized['id']}").status_code == 200
    since = int(time.time()) - 60
    assert not _events_of(http, sandbox, finalized["id"], since)
    unknown = _post(http, sandbox, "/v1/invoices", {"customer": "cus_nobody"})
    assert unknown.status_code == 400
    assert (unknown.json()["error"]["code"], unknown.json()["error"]["param"]) == (
        "resource_missing",
        "customer",
    )


def test_invoice_payments_trace_a_payment_intent_to_its_invoice(
    http: requests.Session, sandbox: Sandbox, company: Company
) -> None:
    paid = next(i for i in company.stripe["invoice"] if i["payments"]["data"])
    pay = paid["payments"]["data"][-1]
    intent = pay["payment"]["payment_intent"]
    found = _list_all(
        http,
        sandbox,
        "/v1/invoice_payments",
        **{"payment[type]": "payment_intent", "payment[payment_intent]": intent},
    )
    assert [(p["id"], p["invoice"]) for p in found] == [(pay["id"], paid["id"])]
    # Every invoice payment pages newest first, and each names its invoice.
    every = _list_all(http, sandbox, "/v1/invoice_payments")
    assert len(every) == sum(len(i["payments"]["data"]) for i in company.stripe["invoice"])
    # Like Stripe: the payment's id needs its type, and an unknown filter is refused.
    untyped = _get(http, sandbox, "/v1/invoice_payments", **{"payment[payment_intent]": intent})
    assert untyped.status_code == 400
    assert untyped.json()["error"]["param"] == "payment[type]"
    assert _get(http, sandbox, "/v1/invoice_payments", charge="ch_x").status_code == 400


def test_an_invoice_serves_custom_fields_as_stripe_does_and_takes_a_po_after_finalization(
    http: requests.Session, sandbox: Sandbox, company: Company
) -> None:
    with_po = next(i for i in company.stripe["invoice"] if i["custom_fields"])
    served = _get(http, sandbox, f"/v1/invoices/{with_po['id']}").json()
    assert served["custom_fields"] == [
        {"name": "PO Number", "value": with_po["custom_fields"][0]["value"]}
    ]
    (planted,) = company.planted["missing_po"][:1]
    invoice_id = planted["id"]
    before = _get(http, sandbox, f"/v1/invoices/{invoice_id}").json()
    # The key is always there: null when the invoice has no custom fields.
    assert "custom_fields" in before and before["custom_fields"] is None
    assert before["status"] in ("open", "paid")
    since = int(time.time()) - 1

    form = {
        "custom_fields[0][name]": "PO Number",
        "custom_fields[0][value]": "4500012345",
        "metadata[po_number]": "4500012345",
    }
    updated = _post(http, sandbox, f"/v1/invoices/{invoice_id}", form, key=f"po-{invoice_id}")
    assert updated.status_code == 200, updated.text
    after = _get(http, sandbox, f"/v1/invoices/{invoice_id}").json()
    assert after["custom_fields"] == [{"name": "PO Number", "value": "4500012345"}]
    assert after["metadata"]["po_number"] == "4500012345"
    assert (after["total"], after["status"]) == (before["total"], before["status"])
    (event,) = [
        e for e in _events_of(http, sandbox, invoice_id, since) if e["type"] == "invoice.updated"
    ]
    assert event["data"]["previous_attributes"]["custom_fields"] is None
    assert event["data"]["object"]["custom_fields"] == after["custom_fields"]

    for bad, param in [
        ({"custom_fields[0][name]": "x" * 41, "custom_fields[0][value]": "1"}, "custom_fields[0]"),
        ({"custom_fields[1][name]": "PO Number", "custom_fields[1][value]": "1"}, "custom_fields"),
        ({"custom_fields[0][name]": "PO Number"}, "custom_fields[0][value]"),
        ({"total": "1"}, "total"),
    ]:
        refused = _post(http, sandbox, f"/v1/invoices/{invoice_id}", bad)
        assert refused.status_code == 400, bad
        assert refused.json()["error"]["param"] == param
    void = next(i for i in company.stripe["invoice"] if i["status"] == "void")
    refused = _post(http, sandbox, f"/v1/invoices/{void['id']}", form)
    assert refused.status_code == 400
    assert refused.json()["error"]["code"] == "invoice_not_editable"

    # An empty string removes them all, as in Stripe; the invoice is as it was planted again.
    cleared = _post(
        http,
        sandbox,
        f"/v1/invoices/{invoice_id}",
        {"custom_fields": "", "metadata[po_number]": ""},
    )
    assert cleared.status_code == 200
    assert cleared.json()["custom_fields"] is None
    assert "po_number" not in cleared.json()["metadata"]


def _reverse_charge_customer(company: Company) -> str:
    (planted,) = company.planted["reverse_charge_customer"]
    return str(planted["id"])


def test_customer_tax_ids_appear_only_when_expanded(
    http: requests.Session, sandbox: Sandbox, company: Company
) -> None:
    customer_id = _reverse_charge_customer(company)
    plain = _list_all(http, sandbox, "/v1/customers")
    assert plain and all("tax_ids" not in c for c in plain)
    expanded = _list_all(http, sandbox, "/v1/customers", **{"expand[]": "data.tax_ids"})
    assert [c["id"] for c in expanded] == [c["id"] for c in plain]
    by_id = {c["id"]: c for c in expanded}
    for customer in expanded:
        tax_ids = customer["tax_ids"]
        assert tax_ids["object"] == "list" and tax_ids["has_more"] is False
        assert tax_ids["url"] == f"/v1/customers/{customer['id']}/tax_ids"
    (vat,) = by_id[customer_id]["tax_ids"]["data"]
    assert vat["object"] == "tax_id" and vat["type"] == "eu_vat"
    assert vat["customer"] == customer_id and vat["id"].startswith("txi_")
    assert vat["value"].startswith(by_id[customer_id]["address"]["country"])
    # Customers without a tax id have an empty list, not a missing field, once expanded.
    assert sum(1 for c in expanded if c["tax_ids"]["data"]) == len(company.stripe["tax_id"])

    one = _get(http, sandbox, f"/v1/customers/{customer_id}").json()
    assert "tax_ids" not in one
    one = _get(http, sandbox, f"/v1/customers/{customer_id}", **{"expand[]": "tax_ids"}).json()
    assert one["tax_ids"]["data"] == [vat]


@pytest.mark.parametrize(
    ("path", "expand", "shown"),
    [
        pytest.param("/v1/customers", "tax_ids", "tax_ids", id="list-without-data-prefix"),
        pytest.param("/v1/customers", "data.nonsense", "nonsense", id="unknown-field"),
        pytest.param("/v1/customers", "data.name", "name", id="plain-field"),
        pytest.param("/v1/invoices", "data.tax_ids", "tax_ids", id="field-of-another-object"),
        pytest.param("{customer}", "data.tax_ids", "data", id="retrieve-with-list-prefix"),
    ],
)
def test_an_expand_stripe_cannot_make_is_refused(
    http: requests.Session, sandbox: Sandbox, company: Company, path: str, expand: str, shown: str
) -> None:
    path = path.replace("{customer}", f"/v1/customers/{_reverse_charge_customer(company)}")
    response = _get(http, sandbox, path, **{"expand[]": expand})
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error"
    assert error["message"] == f"This property cannot be expanded ({shown})."


def test_invoice_payments_appear_only_when_expanded(
    http: requests.Session, sandbox: Sandbox, company: Company
) -> None:
    paid = {i["id"]: i for i in company.stripe["invoice"] if i["payments"]["data"]}
    plain = _get(http, sandbox, "/v1/invoices", limit=20).json()["data"]
    assert plain and all("payments" not in i for i in plain)
    listed = _list_all(http, sandbox, "/v1/invoices", **{"expand[]": "data.payments"})
    assert listed and all(i["payments"]["object"] == "list" for i in listed)
    for invoice in listed:
        payments = invoice["payments"]
        assert payments["url"] == f"/v1/invoice_payments?invoice={invoice['id']}"
        want = paid[invoice["id"]]["payments"]["data"] if invoice["id"] in paid else []
        assert sorted(p["id"] for p in payments["data"]) == sorted(p["id"] for p in want)
    one = next(iter(paid))
    assert "payments" not in _get(http, sandbox, f"/v1/invoices/{one}").json()
    expanded = _get(http, sandbox, f"/v1/invoices/{one}", **{"expand[]": "payments"}).json()
    assert [p["invoice"] for p in expanded["payments"]["data"]] == [one] * len(
        paid[one]["payments"]["data"]
    )
    # Exactly what was asked: expanding payments leaves the customer's tax ids out.
    assert "tax_ids" not in expanded and isinstance(expanded["customer"], str)


def test_event_snapshots_of_invoices_carry_no_payments(
    http: requests.Session, sandbox: Sandbox
) -> None:
    events = _get(http, sandbox, "/v1/events", limit=50, type="invoice.paid").json()["data"]
    assert events
    assert all("payments" not in e["data"]["object"] for e in events)


def test_more_than_ten_payments_show_ten_and_page_the_rest(
    http: requests.Session, tmp_path: Path, company: Company
) -> None:
    planted, invoice = with_many_payments(company)
    with seeded(tmp_path, planted) as box:
        shown = _get(http, box, f"/v1/invoices/{invoice['id']}", **{"expand[]": "payments"})
        payments = shown.json()["payments"]
        assert len(payments["data"]) == 10 and payments["has_more"] is True
        every = _list_all(http, box, "/v1/invoice_payments", invoice=invoice["id"])
    want = sorted(invoice["payments"]["data"], key=lambda p: -p["created"])
    assert [p["id"] for p in every] == [p["id"] for p in want]
    assert len(every) == MANY_PAYMENTS
    assert [p["id"] for p in payments["data"]] == [p["id"] for p in want[:10]]
    assert sum(p["amount_paid"] for p in every) == invoice["total"]


def test_list_params_are_read_in_both_of_stripes_forms(
    http: requests.Session, sandbox: Sandbox
) -> None:
    types = ["invoice.paid", "customer.created"]
    bracketed = _list_all(http, sandbox, "/v1/events", **{"types[]": types})
    indexed = _list_all(
        http, sandbox, "/v1/events", **{f"types[{n}]": t for n, t in enumerate(types)}
    )
    assert bracketed and [e["id"] for e in indexed] == [e["id"] for e in bracketed]
    page = _get(http, sandbox, "/v1/customers", limit=3, **{"expand[0]": "data.tax_ids"})
    assert page.status_code == 200
    assert all(c["tax_ids"]["object"] == "list" for c in page.json()["data"])


def test_a_percent_encoded_id_is_decoded(
    http: requests.Session, sandbox: Sandbox, company: Company
) -> None:
    customer = company.stripe["customer"][0]["id"]
    encoded = "".join(f"%{ord(c):02X}" for c in customer)
    assert _get(http, sandbox, f"/v1/customers/{encoded}").json()["id"] == customer
    odd = _get(http, sandbox, "/v1/customers/cus_a%2Fb%3Fc")
    assert odd.status_code == 404
    assert odd.json()["error"]["message"] == "No such customer: 'cus_a/b?c'"


@pytest.mark.parametrize(
    ("status", "should_retry"),
    [
        pytest.param(500, "false", id="500-its-result-is-kept-under-the-key"),
        pytest.param(503, "true", id="503-not-processed"),
        pytest.param(429, "true", id="429-rate-limited"),
    ],
)
def test_an_error_says_whether_to_retry_as_stripe_does(
    http: requests.Session, sandbox: Sandbox, status: int, should_retry: str
) -> None:
    sandbox.inject("stripe", status=status, count=1, retry_after_s=None)
    resp = _get(http, sandbox, "/v1/customers", limit=1)
    assert resp.status_code == status
    assert resp.headers["Stripe-Should-Retry"] == should_retry


@pytest.mark.parametrize(
    ("path", "params", "param"),
    [
        pytest.param("/v1/invoices", {"limit": 101}, "limit", id="limit-over-100"),
        pytest.param("/v1/invoices", {"limit": 0}, "limit", id="limit-under-1"),
        pytest.param("/v1/refunds", {"customer": "cus_x"}, "customer", id="filter-not-in-spec"),
        pytest.param(
            "/v1/customers", {"starting_after": "cus_nobody"}, "starting_after", id="unknown-cursor"
        ),
        pytest.param(
            "/v1/customers",
            {"starting_after": "cus_a", "ending_before": "cus_b"},
            "ending_before",
            id="both-cursors",
        ),
        pytest.param("{customer}", {"limit": 1}, "limit", id="retrieve-takes-expand-only"),
        pytest.param(
            "/v1/events",
            {"type": "invoice.paid", "types[]": "invoice.paid"},
            "types",
            id="type-and-types",
        ),
        pytest.param(
            "/v1/events",
            {"types[]": [f"invoice.t{n}" for n in range(21)]},
            "types",
            id="over-20-types",
        ),
        pytest.param(
            "/v1/events", {"delivery_success": "yes"}, "delivery_success", id="not-a-boolean"
        ),
        pytest.param(
            "/v1/invoice_payments",
            {"payment[payment_intent]": "pi_x"},
            "payment[type]",
            id="payment-id-without-its-type",
        ),
        pytest.param("/v1/invoice_payments", {"status": "void"}, "status", id="bad-payment-status"),
    ],
)
def test_refused_as_stripe_refuses(
    http: requests.Session,
    sandbox: Sandbox,
    company: Company,
    path: str,
    params: dict[str, Any],
    param: str,
) -> None:
    path = path.replace("{customer}", f"/v1/customers/{company.stripe['customer'][0]['id']}")
    resp = _get(http, sandbox, path, **params)
    assert resp.status_code == 400, resp.text
    error = resp.json()["error"]
    assert error["type"] == "invalid_request_error" and error["param"] == param


def test_delivery_success_filters_events(http: requests.Session, sandbox: Sandbox) -> None:
    every = _get(http, sandbox, "/v1/events", limit=20).json()["data"]
    delivered = _get(http, sandbox, "/v1/events", limit=20, delivery_success="true").json()
    failed = _get(http, sandbox, "/v1/events", limit=20, delivery_success="false").json()
    assert every and [e["id"] for e in delivered["data"]] == [e["id"] for e in every]
    # No webhook endpoint is configured: no event is pending or failed.
    assert failed["data"] == [] and failed["has_more"] is False


def test_a_write_expands_what_it_is_asked_and_refuses_what_it_cannot(
    http: requests.Session, sandbox: Sandbox, company: Company
) -> None:
    paid = next(i for i in company.stripe["invoice"] if i["payments"]["data"])
    form = {"metadata[judge]": "1", "expand[0]": "payments"}
    updated = _post(http, sandbox, f"/v1/invoices/{paid['id']}", form)
    assert updated.status_code == 200, updated.text
    assert sorted(p["id"] for p in updated.json()["payments"]["data"]) == sorted(
        p["id"] for p in paid["payments"]["data"]
    )
    plain = _post(http, sandbox, f"/v1/invoices/{paid['id']}", {"metadata[judge]": "2"})
    assert "payments" not in plain.json()
    charge = _refundable(sandbox, company, http)
    refused = _post(http, sandbox, "/v1/refunds", {"charge": charge["id"], "expand[]": "nonsense"})
    assert refused.status_code == 400
    assert refused.json()["error"]["message"] == "This property cannot be expanded (nonsense)."
    after = _get(http, sandbox, f"/v1/charges/{charge['id']}").json()
    assert after["amount_refunded"] == 0, "a refused write changes nothing"


def test_a_charge_shows_its_refunds_only_when_expanded(
    http: requests.Session, sandbox: Sandbox, company: Company
) -> None:
    # Since API 2022-11-15 Stripe no longer expands a charge's refunds unless asked.
    refund = company.stripe["refund"][0]
    plain = _get(http, sandbox, f"/v1/charges/{refund['charge']}").json()
    assert "refunds" not in plain and plain["amount_refunded"] >= refund["amount"]
    listed = _get(http, sandbox, "/v1/charges", limit=100).json()["data"]
    assert all("refunds" not in c for c in listed)
    expanded = _get(http, sandbox, f"/v1/charges/{refund['charge']}", **{"expand[]": "refunds"})
    refunds = expanded.json()["refunds"]
    assert refund["id"] in {r["id"] for r in refunds["data"]}
    assert all(r["charge"] == refund["charge"] for r in refunds["data"])
    events = _get(http, sandbox, "/v1/events", limit=100, type="charge.refunded").json()["data"]
    assert all("refunds" not in e["data"]["object"] for e in events)
