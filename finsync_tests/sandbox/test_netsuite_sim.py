"""The NetSuite simulator over real HTTP: TBA signatures, record upserts, validation, SuiteQL."""

import secrets
import time
from decimal import Decimal
from typing import Any

import pytest
import requests
import simplejson

from finsync_pipeline.sandbox.netsuite_sim import ensure_schema
from finsync_pipeline.sandbox.server import Sandbox
from finsync_tests.sandbox.oauth1 import sign

REST = "/services/rest"


class NetSuite:
    """A tiny signed client for the tests."""

    def __init__(self, http: requests.Session, sandbox: Sandbox) -> None:
        self.http = http
        self.env = sandbox.env

    def auth(self, method: str, url: str, **overrides: Any) -> str:
        env = self.env
        args: dict[str, Any] = {
            "realm": env["NETSUITE_ACCOUNT_ID"],
            "consumer_key": env["NETSUITE_CONSUMER_KEY"],
            "consumer_secret": env["NETSUITE_CONSUMER_SECRET"],
            "token": env["NETSUITE_TOKEN_ID"],
            "token_secret": env["NETSUITE_TOKEN_SECRET"],
        }
        args.update(overrides)
        return sign(method, url, **args)

    def call(
        self,
        method: str,
        path: str,
        body: Any = None,
        headers: dict[str, str] | None = None,
        **sign_overrides: Any,
    ) -> requests.Response:
        url = self.env["NETSUITE_BASE_URL"] + path
        all_headers = {"Authorization": self.auth(method, url, **sign_overrides)}
        data = None
        if body is not None:
            all_headers["Content-Type"] = "application/json"
            data = simplejson.dumps(body, use_decimal=True)
        all_headers.update(headers or {})
        return self.http.request(method, url, data=data, headers=all_headers, timeout=10)

    def suiteql(self, q: str, limit: int, offset: int = 0) -> requests.Response:
        return self.call(
            "POST",
            f"{REST}/query/v1/suiteql?limit={limit}&offset={offset}",
            {"q": q},
            headers={"Prefer": "transient"},
        )


@pytest.fixture
def ns(http: requests.Session, sandbox: Sandbox) -> NetSuite:
    return NetSuite(http, sandbox)


def _customer(name: str, subsidiary: str = "1") -> dict[str, Any]:
    return {"companyName": name, "subsidiary": {"id": subsidiary}, "currency": {"id": "1"}}


def _put_customer(ns: NetSuite, eid: str, name: str = "Acme Inc.") -> str:
    resp = ns.call("PUT", f"{REST}/record/v1/customer/eid:{eid}", _customer(name))
    assert resp.status_code == 204, resp.text
    return resp.headers["Location"].rsplit("/", 1)[1]


def _invoice(customer_id: str, amount: Decimal, item: str = "101") -> dict[str, Any]:
    return {
        "entity": {"id": customer_id},
        "subsidiary": {"id": "1"},
        "currency": {"id": "1"},
        "tranDate": "2026-01-15",
        "memo": "in_test",
        "item": {
            "items": [
                {"item": {"id": item}, "quantity": 1, "amount": amount},
                {"item": {"id": "190"}, "quantity": 1, "amount": Decimal("8.25")},
            ]
        },
    }


def test_good_signature_reads_master_data(ns: NetSuite) -> None:
    resp = ns.call("GET", f"{REST}/record/v1/subsidiary/2")
    assert resp.status_code == 200
    assert resp.json()["id"] == "2"


@pytest.mark.parametrize(
    "tamper",
    [
        pytest.param({"token_secret": "wrong"}, id="wrong-secret"),
        pytest.param({"consumer_key": "unknown"}, id="wrong-consumer"),
        pytest.param({"token": "unknown"}, id="wrong-token"),
        pytest.param({"timestamp": int(time.time()) - 600}, id="stale-timestamp"),
    ],
)
def test_bad_credentials_are_401(ns: NetSuite, tamper: dict[str, Any]) -> None:
    resp = ns.call("GET", f"{REST}/record/v1/subsidiary/1", **tamper)
    assert resp.status_code == 401
    body = resp.json()
    assert body["title"] == "Unauthorized"
    assert body["o:errorDetails"][0]["o:errorCode"] == "INVALID_LOGIN"


def test_tampered_signature_and_replayed_nonce_are_401(ns: NetSuite) -> None:
    url = ns.env["NETSUITE_BASE_URL"] + f"{REST}/record/v1/subsidiary/1"
    header = ns.auth("GET", url)
    tampered = header.replace('oauth_signature="', 'oauth_signature="A')
    assert ns.http.get(url, headers={"Authorization": tampered}, timeout=10).status_code == 401
    # The signature covers the query string: the same header on another URL fails.
    other = ns.http.get(
        url + "?expandSubResources=true", headers={"Authorization": header}, timeout=10
    )
    assert other.status_code == 401
    nonce = secrets.token_hex(8)
    first = ns.call("GET", f"{REST}/record/v1/subsidiary/1", nonce=nonce)
    replay = ns.call("GET", f"{REST}/record/v1/subsidiary/1", nonce=nonce)
    assert (first.status_code, replay.status_code) == (200, 401)


def test_missing_authorization_is_401(ns: NetSuite) -> None:
    resp = ns.http.get(ns.env["NETSUITE_BASE_URL"] + f"{REST}/record/v1/customer/1", timeout=10)
    assert resp.status_code == 401


def test_upsert_twice_keeps_one_record(ns: NetSuite, sandbox: Sandbox) -> None:
    first = _put_customer(ns, "SF-001TWICE", "Twice Ltd")
    second = _put_customer(ns, "SF-001TWICE", "Twice Ltd (renamed)")
    assert first == second
    matching = [c for c in sandbox.netsuite_records("customer") if c["externalId"] == "SF-001TWICE"]
    assert len(matching) == 1
    assert matching[0]["companyName"] == "Twice Ltd (renamed)"
    got = ns.call("GET", f"{REST}/record/v1/customer/eid:SF-001TWICE").json()
    assert got["id"] == first and got["subsidiary"]["id"] == "1"
    assert got["subsidiary"]["refName"].startswith("US01")


def test_invoice_upsert_is_idempotent_and_totals_exact(ns: NetSuite, sandbox: Sandbox) -> None:
    customer = _put_customer(ns, "SF-001INV")
    body = _invoice(customer, Decimal("100.10"))
    path = f"{REST}/record/v1/invoice/eid:in_TESTINVOICE1"
    first = ns.call("PUT", path, body)
    second = ns.call("PUT", path, body)
    assert first.status_code == second.status_code == 204
    assert first.headers["Location"] == second.headers["Location"]
    raw = ns.call("GET", path).text
    got = simplejson.loads(raw, use_decimal=True)
    assert got["total"] == Decimal("108.35")
    assert "108.35" in raw, "amounts are exact JSON numbers"
    assert got["status"] == "Open" and got["tranId"].startswith("INV-")
    assert len(got["item"]["items"]) == 2
    ours = [i for i in sandbox.netsuite_records("invoice") if i["externalId"] == "in_TESTINVOICE1"]
    assert len(ours) == 1


def test_post_duplicate_external_id_is_rejected(ns: NetSuite) -> None:
    body = dict(_customer("Dup Co"), externalId="SF-001DUP")
    assert ns.call("POST", f"{REST}/record/v1/customer", body).status_code == 204
    dup = ns.call("POST", f"{REST}/record/v1/customer", body)
    assert dup.status_code == 400
    assert dup.json()["o:errorDetails"][0]["o:errorCode"].startswith("DUP")


@pytest.mark.parametrize(
    ("mutate", "path"),
    [
        pytest.param(
            lambda b: b["item"]["items"][0].update(item={"id": "999"}),
            "item.items[0].item",
            id="unknown-item",
        ),
        pytest.param(
            lambda b: b["item"]["items"][1].update(amount=Decimal("1.005")),
            "item.items[1].amount",
            id="too-many-decimals",
        ),
        pytest.param(lambda b: b.update(entity={"id": "424242"}), "entity", id="unknown-entity"),
        pytest.param(lambda b: b.update(tranDate="15/01/2026"), "tranDate", id="bad-date"),
        pytest.param(
            lambda b: b.update(subsidiary={"id": "2"}),
            "subsidiary",
            id="subsidiary-not-the-customers",
        ),
        pytest.param(lambda b: b["item"].update(items=[]), "item", id="no-lines"),
        pytest.param(
            lambda b: b["item"]["items"][0].update(amount="100.10"),
            "item.items[0].amount",
            id="amount-as-string",
        ),
    ],
)
def test_invalid_invoice_is_400_with_error_path(ns: NetSuite, mutate: Any, path: str) -> None:
    customer = _put_customer(ns, "SF-001VALID")
    body = _invoice(customer, Decimal("100.10"))
    mutate(body)
    resp = ns.call("PUT", f"{REST}/record/v1/invoice/eid:in_INVALID", body)
    assert resp.status_code == 400
    detail = resp.json()["o:errorDetails"][0]
    assert detail["o:errorPath"] == path
    assert ns.call("GET", f"{REST}/record/v1/invoice/eid:in_INVALID").status_code == 404


def test_a_discount_line_may_be_negative_but_the_total_may_not(ns: NetSuite) -> None:
    customer = _put_customer(ns, "SF-001DISC")
    body = _invoice(customer, Decimal("100.10"))
    body["item"]["items"].insert(
        1, {"item": {"id": "191"}, "quantity": 1, "amount": Decimal("-120.00")}
    )
    resp = ns.call("PUT", f"{REST}/record/v1/invoice/eid:in_NEGATIVE", body)
    assert resp.status_code == 400
    detail = resp.json()["o:errorDetails"][0]
    assert (detail["o:errorCode"], detail["detail"]) == (
        "USER_ERROR",
        "The total cannot be negative.",
    )
    assert ns.call("GET", f"{REST}/record/v1/invoice/eid:in_NEGATIVE").status_code == 404
    # A 100%-off invoice: its line, a discount of the same amount and no tax is a zero invoice.
    body["item"]["items"] = [
        {"item": {"id": "101"}, "quantity": 1, "amount": Decimal("100.10")},
        {"item": {"id": "191"}, "quantity": 1, "amount": Decimal("-100.10")},
    ]
    path = f"{REST}/record/v1/invoice/eid:in_FREE"
    assert ns.call("PUT", path, body).status_code == 204
    got = simplejson.loads(ns.call("GET", path).text, use_decimal=True)
    assert (got["total"], got["status"]) == (Decimal("0.00"), "Paid In Full")


def test_jpy_amounts_must_be_whole(ns: NetSuite) -> None:
    resp = ns.call(
        "PUT",
        f"{REST}/record/v1/customer/eid:SF-001JP",
        {"companyName": "Tokyo KK", "subsidiary": {"id": "4"}},
    )
    customer = resp.headers["Location"].rsplit("/", 1)[1]
    body = {
        "entity": {"id": customer},
        "subsidiary": {"id": "4"},
        "currency": {"id": "4"},
        "tranDate": "2026-01-15",
        "item": {"items": [{"item": {"id": "101"}, "quantity": 1, "amount": Decimal("7500.5")}]},
    }
    bad = ns.call("PUT", f"{REST}/record/v1/invoice/eid:in_JPY", body)
    assert bad.status_code == 400
    body["item"]["items"][0]["amount"] = 7500
    assert ns.call("PUT", f"{REST}/record/v1/invoice/eid:in_JPY", body).status_code == 204


def test_bad_external_id_charset(ns: NetSuite) -> None:
    resp = ns.call("PUT", f"{REST}/record/v1/customer/eid:bad.id", _customer("x"))
    assert resp.status_code == 400
    assert resp.json()["o:errorDetails"][0]["o:errorCode"] == "INVALID_CONTENT"


def test_suiteql_pages_with_has_more_and_offset(ns: NetSuite) -> None:
    for n in range(5):
        _put_customer(ns, f"SF-PAGE-{n}", f"Page {n} O'Hara")
    q = (
        "SELECT id, externalid, companyname FROM customer "
        "WHERE companyname LIKE 'Page%' ORDER BY id"
    )
    first = ns.suiteql(q, limit=2)
    assert first.status_code == 200
    page = first.json()
    assert (page["count"], page["hasMore"], page["offset"], page["totalResults"]) == (2, True, 0, 5)
    assert any(link["rel"] == "next" for link in page["links"])
    rows = page["items"]
    offset = 2
    while page["hasMore"]:
        page = ns.suiteql(q, limit=2, offset=offset).json()
        rows += page["items"]
        offset += 2
    assert [r["externalid"] for r in rows] == [f"SF-PAGE-{n}" for n in range(5)]
    assert all(isinstance(r["id"], str) for r in rows)
    quoted = ns.suiteql("SELECT id FROM customer WHERE companyname = 'Page 3 O''Hara'", limit=10)
    assert quoted.json()["totalResults"] == 1


def test_suiteql_transactions_with_to_date(ns: NetSuite) -> None:
    customer = _put_customer(ns, "SF-001SQL")
    assert (
        ns.call(
            "PUT", f"{REST}/record/v1/invoice/eid:in_SQL1", _invoice(customer, Decimal("10.00"))
        ).status_code
        == 204
    )
    q = (
        "SELECT id, externalid, foreigntotal, trandate FROM transaction WHERE type = 'CustInvc' "
        "AND externalid = 'in_SQL1' AND trandate >= TO_DATE('2026-01-01', 'YYYY-MM-DD') "
        "ORDER BY id"
    )
    (row,) = ns.suiteql(q, limit=10).json()["items"]
    assert row["foreigntotal"] == "18.25"
    assert row["trandate"] == "2026-01-15"


@pytest.mark.parametrize(
    "q",
    [
        pytest.param("SELECT nope FROM customer", id="unknown-column"),
        pytest.param("SELECT id FROM employee", id="unknown-table"),
        pytest.param("SELECT id FROM customer WHERE", id="dangling-where"),
        pytest.param("SELECT id FROM customer; DROP TABLE ns_customer", id="injection"),
    ],
)
def test_suiteql_rejects_bad_queries(ns: NetSuite, q: str) -> None:
    resp = ns.suiteql(q, limit=10)
    assert resp.status_code == 400
    assert resp.json()["o:errorDetails"][0]["detail"]


def test_injected_429_is_netsuite_envelope(ns: NetSuite, sandbox: Sandbox) -> None:
    sandbox.inject("netsuite", status=429, retry_after_s=2, path_prefix=f"{REST}/record")
    resp = ns.call("GET", f"{REST}/record/v1/subsidiary/1")
    assert resp.status_code == 429 and resp.headers["Retry-After"] == "2"
    assert resp.json()["o:errorDetails"][0]["o:errorCode"] == "CONCURRENCY_LIMIT_EXCEEDED"
    assert ns.call("GET", f"{REST}/record/v1/subsidiary/1").status_code == 200


# -- credit memos, customer payments and what they apply ----------------------------------


def _put(ns: NetSuite, rtype: str, eid: str, body: dict[str, Any]) -> str:
    resp = ns.call("PUT", f"{REST}/record/v1/{rtype}/eid:{eid}", body)
    assert resp.status_code == 204, resp.text
    return resp.headers["Location"].rsplit("/", 1)[1]


def _get(ns: NetSuite, rtype: str, ident: str) -> dict[str, Any]:
    resp = ns.call("GET", f"{REST}/record/v1/{rtype}/{ident}")
    assert resp.status_code == 200, resp.text
    got: dict[str, Any] = simplejson.loads(resp.text, use_decimal=True)
    return got


def _payment(customer_id: str, amount: Decimal, *applied: tuple[str, Decimal]) -> dict[str, Any]:
    return {
        "customer": {"id": customer_id},
        "tranDate": "2026-02-01",
        "currency": {"id": "1"},
        "payment": amount,
        "memo": "ch_test",
        "apply": {
            "items": [{"doc": {"id": doc}, "apply": True, "amount": a} for doc, a in applied]
        },
    }


def _credit_memo(
    customer_id: str, invoice_id: str, amount: Decimal, applied: Decimal | None
) -> dict[str, Any]:
    body: dict[str, Any] = {
        "entity": {"id": customer_id},
        "createdFrom": {"id": invoice_id},
        "tranDate": "2026-02-02",
        "subsidiary": {"id": "1"},
        "currency": {"id": "1"},
        "memo": "cn_test",
        "item": {"items": [{"item": {"id": "101"}, "quantity": 1, "amount": amount}]},
    }
    if applied is not None:
        body["apply"] = {"items": [{"doc": {"id": invoice_id}, "apply": True, "amount": applied}]}
    return body


def test_payments_apply_to_an_invoice_until_paid_in_full(ns: NetSuite, sandbox: Sandbox) -> None:
    customer = _put_customer(ns, "SF-001PAY")
    invoice = _put(ns, "invoice", "in_PAY1", _invoice(customer, Decimal("100.10")))
    first = _put(
        ns, "customerpayment", "ch_PAY1", _payment(customer, Decimal("150.00"), (invoice, 100))
    )
    got = _get(ns, "invoice", invoice)
    assert (got["status"], got["amountRemaining"], got["amountPaid"]) == (
        "Open",
        Decimal("8.35"),
        Decimal("100"),
    )

    payment = _get(ns, "customerpayment", "eid:ch_PAY1")
    assert payment["id"] == first and payment["tranId"].startswith("PYMT-")
    assert payment["customer"]["id"] == customer
    assert payment["currency"]["id"] == "1"
    assert payment["payment"] == Decimal("150.00")
    assert payment["status"] == "Not Deposited"
    (line,) = payment["apply"]["items"]
    assert (line["doc"]["id"], line["apply"], line["amount"]) == (invoice, True, Decimal(100))
    assert line["doc"]["refName"].startswith("Invoice #INV-")
    assert (payment["applied"], payment["unapplied"]) == (Decimal(100), Decimal("50.00"))

    # Resending the same payment changes nothing: what it applied before is not counted twice.
    assert (
        _put(
            ns,
            "customerpayment",
            "ch_PAY1",
            _payment(customer, Decimal("150.00"), (invoice, 100)),
        )
        == first
    )
    assert _get(ns, "invoice", invoice)["amountRemaining"] == Decimal("8.35")

    _put(
        ns,
        "customerpayment",
        "ch_PAY2",
        _payment(customer, Decimal("8.35"), (invoice, Decimal("8.35"))),
    )
    paid = _get(ns, "invoice", "eid:in_PAY1")
    assert (paid["status"], paid["amountRemaining"], paid["amountPaid"]) == (
        "Paid In Full",
        Decimal("0.00"),
        Decimal("108.35"),
    )
    ours = [
        p
        for p in sandbox.netsuite_records("customerpayment")
        if p["externalId"] in ("ch_PAY1", "ch_PAY2")
    ]
    assert len(ours) == 2


@pytest.mark.parametrize(
    ("account", "accepted"),
    [
        pytest.param("1200", True, id="clearing-account-every-subsidiary-may-use"),
        pytest.param("111", True, id="bank-account-of-the-subsidiary"),
        pytest.param("9999", False, id="no-such-account"),
        pytest.param("112", False, id="bank-account-of-another-subsidiary"),
    ],
)
def test_a_payment_is_deposited_only_to_an_account_of_its_subsidiary(
    ns: NetSuite, account: str, accepted: bool
) -> None:
    customer = _put_customer(ns, "SF-001DEP")
    invoice = _put(ns, "invoice", f"in_DEP{account}", _invoice(customer, Decimal("100.10")))
    body = _payment(customer, Decimal("108.35"), (invoice, Decimal("108.35")))
    body["account"] = {"id": account}
    resp = ns.call("PUT", f"{REST}/record/v1/customerpayment/eid:OOB_in_DEP{account}", body)
    if accepted:
        assert resp.status_code == 204, resp.text
        assert _get(ns, "invoice", invoice)["status"] == "Paid In Full"
        return
    assert resp.status_code == 400
    error = resp.json()["o:errorDetails"][0]
    assert error["o:errorPath"] == "account" and account in error["detail"]
    assert _get(ns, "invoice", invoice)["status"] == "Open"


def test_a_credit_memo_applies_to_its_invoice(ns: NetSuite) -> None:
    customer = _put_customer(ns, "SF-001CM")
    invoice = _put(ns, "invoice", "in_CM1", _invoice(customer, Decimal("100.10")))
    memo_id = _put(
        ns,
        "creditmemo",
        "cn_CM1",
        _credit_memo(customer, invoice, Decimal("20.00"), Decimal("20.00")),
    )
    memo = _get(ns, "creditmemo", "eid:cn_CM1")
    assert memo["id"] == memo_id and memo["tranId"].startswith("CM-")
    assert memo["entity"]["id"] == customer
    assert memo["createdFrom"]["id"] == invoice
    assert memo["item"]["items"][0]["amount"] == Decimal("20.00")
    assert (memo["total"], memo["status"], memo["amountRemaining"]) == (
        Decimal("20.00"),
        "Fully Applied",
        Decimal("0.00"),
    )
    assert memo["apply"]["items"][0]["doc"]["id"] == invoice
    got = _get(ns, "invoice", invoice)
    assert (got["status"], got["amountRemaining"]) == ("Open", Decimal("88.35"))

    # createdFrom alone links the memo but applies nothing.
    _put(ns, "creditmemo", "cn_CM2", _credit_memo(customer, invoice, Decimal("5.00"), None))
    assert _get(ns, "creditmemo", "eid:cn_CM2")["status"] == "Open"
    assert _get(ns, "invoice", invoice)["amountRemaining"] == Decimal("88.35")


def _on_account(customer_id: str, amount: Decimal) -> dict[str, Any]:
    """A credit memo left as credit on account: from no invoice, applied to none."""
    body = _credit_memo(customer_id, "", amount, None)
    del body["createdFrom"]
    return body


def _balance_payment(
    customer_id: str, invoice: str, amount: Decimal, *credits: tuple[str, Decimal]
) -> dict[str, Any]:
    body = _payment(customer_id, Decimal("0.00"), (invoice, amount))
    body["credit"] = {
        "items": [{"doc": {"id": doc}, "apply": True, "amount": a} for doc, a in credits]
    }
    return body


def test_a_payment_of_zero_carries_credit_memos_to_a_later_invoice(ns: NetSuite) -> None:
    # Credit on account from a downgrade, then an invoice paid partly from it.
    customer = _put_customer(ns, "SF-001BAL")
    old = _put(ns, "creditmemo", "cr_BAL1", _on_account(customer, Decimal("30.00")))
    new = _put(ns, "creditmemo", "cr_BAL2", _on_account(customer, Decimal("20.00")))
    invoice = _put(ns, "invoice", "in_BAL1", _invoice(customer, Decimal("100.10")))
    body = _balance_payment(
        customer, invoice, Decimal("45.00"), (old, Decimal("30.00")), (new, Decimal("15.00"))
    )
    payment_id = _put(ns, "customerpayment", "BALANCE_in_BAL1", body)
    got = _get(ns, "invoice", invoice)
    assert (got["status"], got["amountRemaining"]) == ("Open", Decimal("63.35"))
    assert _get(ns, "creditmemo", old)["status"] == "Fully Applied"
    second = _get(ns, "creditmemo", new)
    assert (second["status"], second["amountRemaining"]) == ("Open", Decimal("5.00"))
    payment = _get(ns, "customerpayment", payment_id)
    assert payment["payment"] == Decimal("0.00")
    assert [(c["doc"]["id"], c["amount"]) for c in payment["credit"]["items"]] == [
        (old, Decimal("30.00")),
        (new, Decimal("15.00")),
    ]
    assert (payment["applied"], payment["unapplied"]) == (Decimal("45.00"), Decimal("0.00"))
    # Resending it is idempotent: the credit it took before is not counted twice.
    assert _put(ns, "customerpayment", "BALANCE_in_BAL1", body) == payment_id
    assert _get(ns, "invoice", invoice)["amountRemaining"] == Decimal("63.35")
    assert _get(ns, "creditmemo", new)["amountRemaining"] == Decimal("5.00")


@pytest.mark.parametrize(
    ("change", "path", "detail"),
    [
        # More credit than the memo has left.
        (
            {"credit": Decimal("50.00"), "apply": Decimal("50.00")},
            "credit.items[0].amount",
            "exceeds the amount remaining",
        ),
        # Credit that reaches no invoice would turn a credit memo into unapplied cash.
        (
            {"credit": Decimal("10.00"), "apply": Decimal("5.00")},
            "credit",
            "exceed the amount applied",
        ),
        # A payment of 0 applying more than its credits.
        (
            {"credit": Decimal("10.00"), "apply": Decimal("15.00")},
            "payment",
            "plus the credits",
        ),
        # Nothing paid and no credit: nothing to apply with.
        ({"credit": None, "apply": Decimal("15.00")}, "payment", "must be positive"),
    ],
    ids=["over-credit", "credit-beyond-applied", "applied-beyond-credit", "nothing"],
)
def test_a_payment_carrying_credit_is_refused_as_netsuite_refuses_it(
    ns: NetSuite, change: dict[str, Any], path: str, detail: str
) -> None:
    customer = _put_customer(ns, "SF-001BALX")
    memo = _put(ns, "creditmemo", "cr_BALX", _on_account(customer, Decimal("30.00")))
    invoice = _put(ns, "invoice", "in_BALX", _invoice(customer, Decimal("100.10")))
    credits = [] if change["credit"] is None else [(memo, change["credit"])]
    body = _balance_payment(customer, invoice, change["apply"], *credits)
    resp = ns.call("PUT", f"{REST}/record/v1/customerpayment/eid:BALANCE_X", body)
    assert resp.status_code == 400, resp.text
    (error,) = resp.json()["o:errorDetails"]
    assert error["o:errorPath"] == path
    assert detail in error["detail"]
    assert _get(ns, "invoice", invoice)["amountRemaining"] == Decimal("108.35")


def test_an_invoice_cannot_be_voided_or_deleted(ns: NetSuite) -> None:
    customer = _put_customer(ns, "SF-001VOID")
    invoice = _put(ns, "invoice", "in_VOID1", _invoice(customer, Decimal("10.00")))
    assert ns.call("DELETE", f"{REST}/record/v1/invoice/{invoice}").status_code == 405
    assert _get(ns, "invoice", invoice)["status"] == "Open"


@pytest.mark.parametrize(
    ("rtype", "mutate", "path"),
    [
        pytest.param(
            "customerpayment",
            lambda b, other: b["apply"]["items"][0].update(amount=Decimal("108.36")),
            "apply.items[0].amount",
            id="payment-beyond-amount-remaining",
        ),
        pytest.param(
            "customerpayment",
            lambda b, other: b["apply"]["items"][0].update(doc={"id": other["foreign"]}),
            "apply.items[0].doc",
            id="payment-to-another-customers-invoice",
        ),
        pytest.param(
            "customerpayment",
            lambda b, other: b["apply"]["items"][0].update(doc={"id": other["eur"]}),
            "apply.items[0].doc",
            id="payment-to-an-invoice-in-another-currency",
        ),
        pytest.param(
            "customerpayment",
            lambda b, other: b.update(payment=Decimal("50.00")),
            "payment",
            id="applied-more-than-the-payment",
        ),
        pytest.param(
            "customerpayment",
            lambda b, other: b.update(payment=Decimal("100.001")),
            "payment",
            id="payment-with-too-many-decimals",
        ),
        pytest.param(
            "customerpayment",
            lambda b, other: b.update(customer={"id": "424242"}),
            "customer",
            id="payment-of-an-unknown-customer",
        ),
        pytest.param(
            "customerpayment",
            lambda b, other: b["apply"]["items"][0].update(doc={"id": "424242"}),
            "apply.items[0].doc",
            id="payment-to-an-unknown-invoice",
        ),
        pytest.param(
            "creditmemo",
            lambda b, other: b["apply"]["items"][0].update(amount=Decimal("108.36")),
            "apply.items[0].amount",
            id="credit-beyond-amount-remaining",
        ),
        pytest.param(
            "creditmemo",
            lambda b, other: b.update(createdFrom={"id": other["foreign"]}),
            "createdFrom",
            id="credit-from-another-customers-invoice",
        ),
        pytest.param(
            "creditmemo",
            lambda b, other: b["item"]["items"][0].update(amount=Decimal("10.00")),
            "apply",
            id="credit-applied-beyond-its-total",
        ),
    ],
)
def test_invalid_applications_are_400_with_error_path(
    ns: NetSuite, rtype: str, mutate: Any, path: str
) -> None:
    customer = _put_customer(ns, "SF-001APPLY")
    invoice = _put(ns, "invoice", "in_APPLY1", _invoice(customer, Decimal("100.10")))
    stranger = _put_customer(ns, "SF-001STRANGER", "Stranger Co")
    eur_invoice = dict(_invoice(customer, Decimal("10.00")), currency={"id": "2"})
    other = {
        "foreign": _put(ns, "invoice", "in_APPLY_OTHER", _invoice(stranger, Decimal("100.10"))),
        "eur": _put(ns, "invoice", "in_APPLY_EUR", eur_invoice),
    }
    if rtype == "customerpayment":
        body = _payment(customer, Decimal("200.00"), (invoice, Decimal("100.00")))
    else:
        body = _credit_memo(customer, invoice, Decimal("100.00"), Decimal("100.00"))
    mutate(body, other)
    resp = ns.call("PUT", f"{REST}/record/v1/{rtype}/eid:x_INVALID", body)
    assert resp.status_code == 400, resp.text
    detail = resp.json()["o:errorDetails"][0]
    assert detail["o:errorPath"] == path
    assert detail["o:errorCode"] in ("USER_ERROR", "INVALID_CONTENT")
    assert detail["detail"]
    # Nothing was stored and nothing was applied.
    assert ns.call("GET", f"{REST}/record/v1/{rtype}/eid:x_INVALID").status_code == 404
    assert _get(ns, "invoice", invoice)["amountRemaining"] == Decimal("108.35")


def test_suiteql_serves_credit_memos_payments_and_applications(ns: NetSuite) -> None:
    customer = _put_customer(ns, "SF-001SQLPAY")
    invoice = _put(ns, "invoice", "in_SQLPAY1", _invoice(customer, Decimal("100.10")))
    payment = _put(
        ns,
        "customerpayment",
        "ch_SQLPAY1",
        _payment(customer, Decimal("60.00"), (invoice, Decimal("60.00"))),
    )
    memo = _put(
        ns,
        "creditmemo",
        "cn_SQLPAY1",
        _credit_memo(customer, invoice, Decimal("48.35"), Decimal("48.35")),
    )
    q = (
        "SELECT id, type, externalid, entity, foreigntotal, status, amountremaining, "
        "foreignamountremaining, currency, memo FROM transaction WHERE externalid IN "
        "('in_SQLPAY1', 'ch_SQLPAY1', 'cn_SQLPAY1') ORDER BY id"
    )
    rows = {r["type"]: r for r in ns.suiteql(q, limit=10).json()["items"]}
    assert rows["CustInvc"]["id"] == invoice
    assert (rows["CustInvc"]["status"], rows["CustInvc"]["amountremaining"]) == ("B", "0.00")
    assert rows["CustInvc"]["foreignamountremaining"] == "0.00"
    assert (rows["CustPymt"]["id"], rows["CustPymt"]["foreigntotal"]) == (payment, "60.00")
    assert (rows["CustPymt"]["entity"], rows["CustPymt"]["memo"]) == (customer, "ch_test")
    assert (rows["CustCred"]["id"], rows["CustCred"]["foreigntotal"]) == (memo, "48.35")
    assert rows["CustCred"]["status"] == "B"

    applications = ns.suiteql(
        f"SELECT payment, paymenttype, invoice, amount FROM paymentapplication "
        f"WHERE invoice = {invoice} ORDER BY id",
        limit=10,
    ).json()["items"]
    assert [(a["payment"], a["paymenttype"], a["amount"]) for a in applications] == [
        (payment, "CustPymt", "60.00"),
        (memo, "CustCred", "48.35"),
    ]
    # Amounts compare by value, not as text.
    open_ones = ns.suiteql(
        "SELECT id FROM transaction WHERE type = 'CustInvc' AND externalid = 'in_SQLPAY1' "
        "AND amountremaining > 0",
        limit=10,
    ).json()
    assert open_ones["totalResults"] == 0


def _refund(customer_id: str, *applied: tuple[str, Decimal]) -> dict[str, Any]:
    return {
        "customer": {"id": customer_id},
        "tranDate": "2026-02-03",
        "currency": {"id": "1"},
        "account": {"id": "111"},
        "memo": "re_test",
        "apply": {
            "items": [{"doc": {"id": doc}, "apply": True, "amount": a} for doc, a in applied]
        },
    }


def test_a_customer_refund_pays_out_an_unapplied_credit(ns: NetSuite) -> None:
    """A paid invoice's post-payment credit memo stays open until a refund pays it out."""
    customer = _put_customer(ns, "SF-001RFND")
    invoice = _put(ns, "invoice", "in_RFND1", _invoice(customer, Decimal("100.10")))
    _put(
        ns,
        "customerpayment",
        "ch_RFND1",
        _payment(customer, Decimal("108.35"), (invoice, Decimal("108.35"))),
    )
    memo = _put(
        ns, "creditmemo", "cn_RFND1", _credit_memo(customer, invoice, Decimal("30.00"), None)
    )
    refund_id = _put(ns, "customerrefund", "re_RFND1", _refund(customer, (memo, Decimal("25.00"))))

    refund = _get(ns, "customerrefund", "eid:re_RFND1")
    assert refund["id"] == refund_id and refund["tranId"].startswith("RFND-")
    assert (refund["customer"]["id"], refund["total"]) == (customer, Decimal("25.00"))
    assert "status" not in refund
    (line,) = refund["apply"]["items"]
    assert (line["doc"]["id"], line["amount"]) == (memo, Decimal("25.00"))
    credit = _get(ns, "creditmemo", memo)
    assert (credit["status"], credit["amountRemaining"]) == ("Open", Decimal("5.00"))

    # Resending the refund is idempotent; a second one cannot pay out more than is left.
    assert _put(ns, "customerrefund", "re_RFND1", _refund(customer, (memo, Decimal("25.00")))) == (
        refund_id
    )
    assert _get(ns, "creditmemo", memo)["amountRemaining"] == Decimal("5.00")
    too_much = ns.call(
        "PUT",
        f"{REST}/record/v1/customerrefund/eid:re_RFND2",
        _refund(customer, (memo, Decimal("5.01"))),
    )
    assert too_much.status_code == 400
    assert too_much.json()["o:errorDetails"][0]["o:errorPath"] == "apply.items[0].amount"
    _put(ns, "customerrefund", "re_RFND2", _refund(customer, (memo, Decimal("5.00"))))
    credit = _get(ns, "creditmemo", memo)
    assert (credit["status"], credit["amountRemaining"]) == ("Fully Applied", Decimal("0.00"))
    # Re-upserting the credit memo cannot take back what was refunded out of it.
    same = _credit_memo(customer, invoice, Decimal("30.00"), None)
    assert _put(ns, "creditmemo", "cn_RFND1", same) == memo
    smaller = _credit_memo(customer, invoice, Decimal("20.00"), None)
    resp = ns.call("PUT", f"{REST}/record/v1/creditmemo/eid:cn_RFND1", smaller)
    assert resp.status_code == 400

    rows = ns.suiteql(
        "SELECT id, type, foreigntotal, status FROM transaction WHERE type = 'CustRfnd' "
        "AND externalid IN ('re_RFND1', 're_RFND2') ORDER BY id",
        limit=10,
    ).json()["items"]
    assert [(r["id"], r["foreigntotal"], "status" in r) for r in rows] == [
        (refund_id, "25.00", False),
        (rows[1]["id"], "5.00", False),
    ]


@pytest.mark.parametrize(
    ("mutate", "path"),
    [
        pytest.param(lambda b, o: b["apply"].update(items=[]), "apply", id="nothing-applied"),
        pytest.param(
            lambda b, o: b["apply"]["items"][0].update(doc={"id": o["invoice"]}),
            "apply.items[0].doc",
            id="refund-of-an-invoice",
        ),
        pytest.param(
            lambda b, o: b["apply"]["items"][0].update(doc={"id": o["foreign"]}),
            "apply.items[0].doc",
            id="refund-of-another-customers-credit",
        ),
        pytest.param(lambda b, o: b.update(payment=Decimal(1)), "payment", id="unknown-field"),
        pytest.param(lambda b, o: b.pop("account"), "account", id="no-bank-account"),
        pytest.param(
            lambda b, o: b.update(account={"id": "112"}),
            "account",
            id="bank-account-of-another-subsidiary",
        ),
    ],
)
def test_invalid_refunds_are_400_with_error_path(ns: NetSuite, mutate: Any, path: str) -> None:
    customer = _put_customer(ns, "SF-001RFNDBAD")
    stranger = _put_customer(ns, "SF-001RFNDSTRANGER", "Stranger Co")
    invoice = _put(ns, "invoice", "in_RFNDBAD1", _invoice(customer, Decimal("100.10")))
    foreign_invoice = _put(ns, "invoice", "in_RFNDBAD2", _invoice(stranger, Decimal("10.00")))
    memo = _put(
        ns, "creditmemo", "cn_RFNDBAD1", _credit_memo(customer, invoice, Decimal("9.00"), None)
    )
    foreign = _put(
        ns,
        "creditmemo",
        "cn_RFNDBAD2",
        _credit_memo(stranger, foreign_invoice, Decimal("9.00"), None),
    )
    body = _refund(customer, (memo, Decimal("9.00")))
    mutate(body, {"invoice": invoice, "foreign": foreign})
    resp = ns.call("PUT", f"{REST}/record/v1/customerrefund/eid:re_RFNDBAD", body)
    assert resp.status_code == 400, resp.text
    assert resp.json()["o:errorDetails"][0]["o:errorPath"] == path
    assert ns.call("GET", f"{REST}/record/v1/customerrefund/eid:re_RFNDBAD").status_code == 404
    assert _get(ns, "creditmemo", memo)["amountRemaining"] == Decimal("9.00")


def test_a_state_seeded_before_bank_accounts_existed_gains_them(sandbox: Sandbox) -> None:
    with sandbox.store.tx() as conn:
        conn.execute("DELETE FROM ns_master WHERE type = 'account'")
    ensure_schema(sandbox.store)
    accounts = {
        a["id"]: a["subsidiary"].get("id", "all") for a in sandbox.netsuite_records("account")
    }
    assert accounts == {"111": "1", "112": "2", "113": "3", "114": "4", "1200": "all"}
