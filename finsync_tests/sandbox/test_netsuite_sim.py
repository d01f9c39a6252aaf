"""The NetSuite simulator over real HTTP: TBA signatures, record upserts, validation, SuiteQL."""

import secrets
import time
from decimal import Decimal
from typing import Any

import pytest
import requests
import simplejson

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
