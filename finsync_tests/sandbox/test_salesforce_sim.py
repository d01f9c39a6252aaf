"""The Salesforce simulator over real HTTP: OAuth2 (client credentials, JWT bearer), SOQL with
nextRecordsUrl over CRM and CPQ objects, upsert by external id, errors, limits."""

import datetime
import json
import time
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import jwt
import pytest
import requests
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from finsync_pipeline.sandbox.generator import Company, CompanySpec, generate
from finsync_pipeline.sandbox.salesforce_sim import jwt_credentials
from finsync_pipeline.sandbox.server import Sandbox


def _token(http: requests.Session, sandbox: Sandbox, **overrides: str) -> requests.Response:
    env = sandbox.env
    form = {
        "grant_type": "client_credentials",
        "client_id": env["SALESFORCE_CLIENT_ID"],
        "client_secret": env["SALESFORCE_CLIENT_SECRET"],
    }
    form.update(overrides)
    return http.post(env["SALESFORCE_LOGIN_URL"] + "/services/oauth2/token", data=form, timeout=10)


@pytest.fixture
def session(http: requests.Session, sandbox: Sandbox) -> dict[str, Any]:
    resp = _token(http, sandbox)
    assert resp.status_code == 200
    return dict(resp.json())


def _query(
    http: requests.Session, session: dict[str, Any], soql: str, batch: int | None = None
) -> requests.Response:
    headers = {"Authorization": f"Bearer {session['access_token']}"}
    if batch:
        headers["Sforce-Query-Options"] = f"batchSize={batch}"
    return http.get(
        session["instance_url"] + "/services/data/v60.0/query",
        params={"q": soql},
        headers=headers,
        timeout=10,
    )


def test_token_response_shape(session: dict[str, Any], sandbox: Sandbox) -> None:
    assert session["token_type"] == "Bearer"
    assert session["instance_url"] == sandbox.env["SALESFORCE_LOGIN_URL"]
    assert {"access_token", "id", "issued_at", "signature", "scope"} <= session.keys()


def test_bad_client_secret_is_invalid_client(http: requests.Session, sandbox: Sandbox) -> None:
    resp = _token(http, sandbox, client_secret="nope")
    assert resp.status_code == 400
    assert resp.json()["error"] == "invalid_client"


def test_basic_auth_on_token_endpoint(http: requests.Session, sandbox: Sandbox) -> None:
    env = sandbox.env
    resp = http.post(
        env["SALESFORCE_LOGIN_URL"] + "/services/oauth2/token",
        data={"grant_type": "client_credentials"},
        auth=(env["SALESFORCE_CLIENT_ID"], env["SALESFORCE_CLIENT_SECRET"]),
        timeout=10,
    )
    assert resp.status_code == 200


def test_query_pages_with_next_records_url(
    http: requests.Session, session: dict[str, Any], company: Company
) -> None:
    expected = sorted(o["Id"] for o in company.salesforce["Opportunity"])
    assert len(expected) > 200, "more than one batch of 200 at this scale"
    first = _query(http, session, "SELECT Id, Amount FROM Opportunity ORDER BY Id", batch=200)
    assert first.status_code == 200
    assert first.headers["Sforce-Limit-Info"].startswith("api-usage=")
    page = first.json()
    assert page["totalSize"] == len(expected) and page["done"] is False
    assert page["nextRecordsUrl"].startswith("/services/data/v60.0/query/01g")
    records = page["records"]
    assert len(records) == 200
    batches = 1
    while not page["done"]:
        page = http.get(
            session["instance_url"] + page["nextRecordsUrl"],
            headers={"Authorization": f"Bearer {session['access_token']}"},
            timeout=10,
        ).json()
        records += page["records"]
        batches += 1
    assert "nextRecordsUrl" not in page
    assert batches == -(-len(expected) // 200)
    assert [r["Id"] for r in records] == expected
    assert records[0]["attributes"]["type"] == "Opportunity"


def test_where_with_escaped_quote(
    http: requests.Session, session: dict[str, Any], company: Company
) -> None:
    names = [a["Name"] for a in company.salesforce["Account"] if "'" in a["Name"]]
    assert names, "the generator names some companies O'Brien"
    soql = "SELECT Id, Name FROM Account WHERE Name = '{}'".format(names[0].replace("'", "\\'"))
    resp = _query(http, session, soql)
    assert resp.status_code == 200
    assert [r["Name"] for r in resp.json()["records"]] == [names[0]]


def test_datetime_and_boolean_filters(
    http: requests.Session, session: dict[str, Any], company: Company
) -> None:
    soql = (
        "SELECT Id, Amount, CloseDate FROM Opportunity WHERE IsWon = true AND "
        "(Type = 'Renewal' OR Type = 'New Business') AND SystemModstamp > 2020-01-01T00:00:00Z "
        "ORDER BY CloseDate DESC LIMIT 5"
    )
    resp = _query(http, session, soql)
    assert resp.status_code == 200
    records = resp.json()["records"]
    assert len(records) == 5
    dates = [r["CloseDate"] for r in records]
    assert dates == sorted(dates, reverse=True)


@pytest.mark.parametrize(
    ("soql", "code"),
    [
        pytest.param("SELECT Id FROM Account WHERE", "MALFORMED_QUERY", id="dangling-where"),
        pytest.param("SELECT Id FROM Account WHERE Name = 'x", "MALFORMED_QUERY", id="open-quote"),
        pytest.param("SELECT Bogus__c FROM Account", "INVALID_FIELD", id="unknown-field"),
        pytest.param("SELECT Id FROM Nope", "INVALID_TYPE", id="unknown-object"),
        pytest.param(
            "SELECT Id FROM Opportunity WHERE CloseDate = '2025-01-01'",
            "INVALID_FIELD",
            id="quoted-date",
        ),
    ],
)
def test_bad_queries_are_400(
    http: requests.Session, session: dict[str, Any], soql: str, code: str
) -> None:
    resp = _query(http, session, soql)
    assert resp.status_code == 400
    (error,) = resp.json()
    assert error["errorCode"] == code


def test_expired_session_is_401_until_reauth(http: requests.Session, sandbox: Sandbox) -> None:
    session = _token(http, sandbox).json()
    sandbox.expire_salesforce_sessions()
    resp = _query(http, session, "SELECT Id FROM Account LIMIT 1")
    assert resp.status_code == 401
    assert resp.json() == [
        {"message": "Session expired or invalid", "errorCode": "INVALID_SESSION_ID"}
    ]
    fresh = _token(http, sandbox).json()
    assert _query(http, fresh, "SELECT Id FROM Account LIMIT 1").status_code == 200


def test_injected_org_limit_is_403_request_limit_exceeded(
    http: requests.Session, sandbox: Sandbox, session: dict[str, Any]
) -> None:
    sandbox.inject("salesforce", status=403, retry_after_s=None, path_prefix="/services/data")
    resp = _query(http, session, "SELECT Id FROM Account LIMIT 1")
    assert resp.status_code == 403
    assert resp.json()[0]["errorCode"] == "REQUEST_LIMIT_EXCEEDED"
    assert "Retry-After" not in resp.headers
    sandbox.inject("salesforce", status=503, retry_after_s=5)
    unavailable = _query(http, session, "SELECT Id FROM Account LIMIT 1")
    assert unavailable.status_code == 503 and unavailable.headers["Retry-After"] == "5"
    assert _query(http, session, "SELECT Id FROM Account LIMIT 1").status_code == 200


def test_api_usage_counts_up(http: requests.Session, session: dict[str, Any]) -> None:
    def used() -> int:
        resp = _query(http, session, "SELECT Id FROM Contract LIMIT 1")
        return int(resp.headers["Sforce-Limit-Info"].split("=")[1].split("/")[0])

    before = used()
    assert used() == before + 1


# CPQ -------------------------------------------------------------------------------------------
def _all_pages(
    http: requests.Session, session: dict[str, Any], soql: str, batch: int
) -> tuple[list[dict[str, Any]], int]:
    page = json.loads(_query(http, session, soql, batch=batch).content, parse_float=Decimal)
    records, batches = list(page["records"]), 1
    while not page["done"]:
        page = json.loads(
            http.get(
                session["instance_url"] + page["nextRecordsUrl"],
                headers={"Authorization": f"Bearer {session['access_token']}"},
                timeout=10,
            ).content,
            parse_float=Decimal,
        )
        records += page["records"]
        batches += 1
    return records, batches


def test_cpq_quote_lines_page_with_next_records_url(
    http: requests.Session, session: dict[str, Any], company: Company
) -> None:
    expected = company.salesforce["SBQQ__QuoteLine__c"]
    assert len(expected) > 400
    soql = (
        "SELECT Id, SBQQ__Quote__c, SBQQ__ProductCode__c, SBQQ__Quantity__c, SBQQ__NetPrice__c, "
        "SBQQ__RenewedSubscription__c FROM SBQQ__QuoteLine__c ORDER BY SystemModstamp, Id"
    )
    records, batches = _all_pages(http, session, soql, batch=200)
    assert batches == -(-len(expected) // 200)
    assert sorted(r["Id"] for r in records) == sorted(q["Id"] for q in expected)
    assert records[0]["attributes"]["type"] == "SBQQ__QuoteLine__c"
    by_id = {q["Id"]: q for q in expected}
    # Decimals arrive exact on the wire (25.0, 500.00), never rounded through a float.
    for rec in records[:50]:
        assert str(rec["SBQQ__NetPrice__c"]) == str(by_id[rec["Id"]]["SBQQ__NetPrice__c"])


def test_cpq_filters_on_namespaced_fields_and_escaped_values(
    http: requests.Session, session: dict[str, Any], company: Company
) -> None:
    name = next(a["Name"] for a in company.salesforce["Account"] if "'" in a["Name"])
    account = next(a["Id"] for a in company.salesforce["Account"] if a["Name"] == name)
    escaped = name.replace("'", "\\'")
    found = _query(http, session, f"SELECT Id FROM Account WHERE Name = '{escaped}'").json()
    assert [r["Id"] for r in found["records"]] == [account]
    soql = (
        "SELECT Id, SBQQ__Type__c, SBQQ__Primary__c FROM SBQQ__Quote__c "
        f"WHERE SBQQ__Account__c = '{account}' AND SBQQ__Primary__c = true "
        "AND SBQQ__Type__c IN ('Quote', 'Renewal', 'Amendment') ORDER BY SBQQ__StartDate__c"
    )
    resp = _query(http, session, soql)
    assert resp.status_code == 200
    expected = [
        q["Id"] for q in company.salesforce["SBQQ__Quote__c"] if q["SBQQ__Account__c"] == account
    ]
    assert sorted(r["Id"] for r in resp.json()["records"]) == sorted(expected)
    breakout = _query(
        http,
        session,
        "SELECT Id FROM SBQQ__Quote__c WHERE SBQQ__Status__c = 'x\\' OR Id != \\''",
    )
    assert breakout.status_code == 200 and breakout.json()["records"] == []
    amendments = _query(
        http,
        session,
        "SELECT Id, SBQQ__RevisedSubscription__c FROM SBQQ__Subscription__c "
        "WHERE SBQQ__RevisedSubscription__c != null",
    ).json()["records"]
    assert amendments and all(r["SBQQ__RevisedSubscription__c"] for r in amendments)


def test_unknown_cpq_field_names_the_field(http: requests.Session, session: dict[str, Any]) -> None:
    resp = _query(http, session, "SELECT Id, SBQQ__Bogus__c FROM SBQQ__Subscription__c")
    assert resp.status_code == 400
    assert resp.json()[0]["errorCode"] == "INVALID_FIELD"
    assert "SBQQ__Bogus__c" in resp.json()[0]["message"]


@pytest.mark.parametrize("obj", ["Opportunity", "SBQQ__Quote__c"])
def test_the_po_field_is_served_and_a_field_the_org_lacks_is_invalid_field(
    http: requests.Session, session: dict[str, Any], obj: str
) -> None:
    # The demo org's custom PO_Number__c: set on the records of PO-required accounts, null
    # on the others, as Salesforce serves an empty field.
    records = _query(http, session, f"SELECT Id, PO_Number__c FROM {obj}").json()["records"]
    values = [r["PO_Number__c"] for r in records]
    assert any(values) and None in values
    filtered = _query(http, session, f"SELECT Id FROM {obj} WHERE PO_Number__c != null")
    assert filtered.json()["totalSize"] == sum(1 for v in values if v)
    resp = _query(http, session, f"SELECT Id, Customer_PO__c FROM {obj}")
    assert resp.status_code == 400
    (error,) = resp.json()
    assert error["errorCode"] == "INVALID_FIELD"
    assert f"No such column 'Customer_PO__c' on entity '{obj}'" in error["message"]


def test_an_org_without_cpq_refuses_sbqq_objects_as_unknown(
    http: requests.Session, session: dict[str, Any], sandbox: Sandbox
) -> None:
    sandbox.salesforce.cpq_installed = False
    try:
        resp = _query(http, session, "SELECT Id FROM SBQQ__Quote__c")
        accounts = _query(http, session, "SELECT Id FROM Account LIMIT 1")
    finally:
        sandbox.salesforce.cpq_installed = True
    assert resp.status_code == 400
    assert resp.json()[0]["errorCode"] == "INVALID_TYPE"
    assert "SBQQ__Quote__c" in resp.json()[0]["message"]
    assert accounts.status_code == 200


# JWT bearer ------------------------------------------------------------------------------------
def _assertion(sandbox: Sandbox, key: Any = None, **claims: Any) -> str:
    username, pem = jwt_credentials(sandbox.store, sandbox.credentials["salesforce_org_id"])
    body = {
        "iss": sandbox.credentials["salesforce_client_id"],
        "sub": username,
        "aud": "https://login.salesforce.com",
        "exp": int(time.time()) + 120,
        **claims,
    }
    signing_key = (
        key if key is not None else serialization.load_pem_private_key(pem.encode(), password=None)
    )
    return jwt.encode(body, signing_key, algorithm="RS256", headers={"typ": None})


def _jwt_token(http: requests.Session, sandbox: Sandbox, assertion: str) -> requests.Response:
    return http.post(
        sandbox.env["SALESFORCE_LOGIN_URL"] + "/services/oauth2/token",
        data={"grant_type": "urn:ietf:params:oauth:grant-type:jwt-bearer", "assertion": assertion},
        timeout=10,
    )


def test_jwt_bearer_good_assertion_gets_a_working_token(
    http: requests.Session, sandbox: Sandbox
) -> None:
    assertion = _assertion(sandbox)
    assert jwt.get_unverified_header(assertion) == {"alg": "RS256"}
    resp = _jwt_token(http, sandbox, assertion)
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert body["token_type"] == "Bearer" and "refresh_token" not in body
    assert _query(http, body, "SELECT Id FROM Account LIMIT 1").status_code == 200
    assert (
        sandbox.salesforce.jwt_username
        == jwt_credentials(sandbox.store, sandbox.credentials["salesforce_org_id"])[0]
    )


@pytest.mark.parametrize(
    ("change", "error"),
    [
        pytest.param({"key": "other"}, "invalid_grant", id="wrong-signature"),
        pytest.param({"exp": -30}, "invalid_grant", id="expired"),
        pytest.param({"exp": 600}, "invalid_grant", id="exp-beyond-3-minutes"),
        pytest.param({"aud": "https://test.salesforce.com"}, "invalid_grant", id="sandbox-aud"),
        pytest.param({"aud": ["https://login.salesforce.com"]}, "invalid_grant", id="aud-array"),
        pytest.param({"sub": "someone@else.example"}, "invalid_grant", id="unknown-user"),
        pytest.param({"iss": "3MVG9nope"}, "invalid_client_id", id="wrong-client-id"),
    ],
)
def test_jwt_bearer_bad_assertions_are_400(
    http: requests.Session, sandbox: Sandbox, change: dict[str, Any], error: str
) -> None:
    claims = dict(change)
    key = None
    if claims.pop("key", None):
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    if "exp" in claims:
        claims["exp"] = int(time.time()) + claims["exp"]
    resp = _jwt_token(http, sandbox, _assertion(sandbox, key, **claims))
    assert resp.status_code == 400
    assert resp.json()["error"] == error
    assert resp.json()["error_description"]


def test_jwt_bearer_refuses_the_my_domain_url_as_audience(
    http: requests.Session, sandbox: Sandbox
) -> None:
    # The token request goes to the My Domain URL, but the assertion's audience must be the
    # login server: Salesforce answers this exact body otherwise.
    own = sandbox.env["SALESFORCE_LOGIN_URL"]
    resp = _jwt_token(http, sandbox, _assertion(sandbox, aud=own))
    assert resp.status_code == 400
    assert resp.json() == {"error": "invalid_grant", "error_description": "audience is invalid"}


def test_jwt_bearer_audience_follows_the_org_kind(http: requests.Session, sandbox: Sandbox) -> None:
    org = sandbox.salesforce
    try:
        org.is_sandbox_org = True
        test_aud = _jwt_token(http, sandbox, _assertion(sandbox, aud="https://test.salesforce.com"))
        login_aud = _jwt_token(http, sandbox, _assertion(sandbox))
        org.site_urls = ["https://acme.my.site.com/customers"]
        site_aud = _jwt_token(
            http, sandbox, _assertion(sandbox, aud="https://acme.my.site.com/customers")
        )
    finally:
        org.is_sandbox_org = False
        org.site_urls = []
    assert test_aud.status_code == 200, test_aud.text
    assert login_aud.status_code == 400
    assert login_aud.json()["error_description"] == "audience is invalid"
    assert site_aud.status_code == 200, site_aud.text


def test_jwt_bearer_garbage_and_hs256_are_invalid_grant(
    http: requests.Session, sandbox: Sandbox
) -> None:
    assert _jwt_token(http, sandbox, "not.a.jwt").json()["error"] == "invalid_grant"
    hs = jwt.encode({"iss": "x"}, "secret-secret-secret-secret-32by", algorithm="HS256")
    resp = _jwt_token(http, sandbox, hs)
    assert resp.status_code == 400 and resp.json()["error"] == "invalid_grant"


# upsert by external id -------------------------------------------------------------------------
@pytest.fixture
def writable(tmp_path: Path) -> Iterator[tuple[Sandbox, Company]]:
    """A small sandbox of its own: writes must not disturb the shared one's counts."""
    small = generate(CompanySpec(accounts=12, months=2, seed=4, end=datetime.date(2026, 10, 31)))
    accounts = small.salesforce["Account"]
    accounts[0]["Finsync_External_Id__c"] = accounts[1]["Finsync_External_Id__c"] = "DUP-1"
    box = Sandbox(tmp_path / "sandbox")
    box.seed(small)
    with box:
        yield box, small


def _patch(
    http: requests.Session, session: dict[str, Any], path: str, body: Any
) -> requests.Response:
    return http.patch(
        session["instance_url"] + "/services/data/v60.0/sobjects/" + path,
        json=body,
        headers={"Authorization": f"Bearer {session['access_token']}"},
        timeout=10,
    )


def test_upsert_by_external_id_creates_then_updates(
    http: requests.Session, writable: tuple[Sandbox, Company]
) -> None:
    box, small = writable
    session = _token(http, box).json()
    account = small.salesforce["Account"][2]["Id"]
    fields = {
        "Name": "Acme - Invoice in_1",
        "AccountId": account,
        "StageName": "Closed Won",
        "CloseDate": "2026-10-01",
        "Finsync_Invoice_Status__c": "open",
        "Finsync_Paid__c": False,
    }
    path = "Opportunity/Finsync_External_Id__c/STRIPE%2Fin_1%20x"
    created = _patch(http, session, path, fields)
    assert created.status_code == 201, created.text
    body = created.json()
    assert body["success"] is True and body["created"] is True and body["errors"] == []
    updated = _patch(
        http,
        session,
        path,
        {"Finsync_Paid__c": True, "Finsync_ERP_Invoice_Id__c": "INV-9", "Amount": 12.5},
    )
    # From API v46.0 an update answers 200 and says it created nothing; before, 204 and no body.
    assert updated.status_code == 200, updated.text
    assert updated.json() == {"id": body["id"], "success": True, "errors": [], "created": False}
    again = http.patch(
        session["instance_url"] + "/services/data/v45.0/sobjects/" + path,
        json={"Finsync_Paid__c": True},
        headers={"Authorization": f"Bearer {session['access_token']}"},
        timeout=10,
    )
    assert again.status_code == 204 and again.content == b""
    got = http.get(
        session["instance_url"] + "/services/data/v60.0/sobjects/" + path,
        headers={"Authorization": f"Bearer {session['access_token']}"},
        timeout=10,
    )
    assert got.status_code == 200
    record = got.json()
    assert record["Id"] == body["id"]
    assert record["Finsync_External_Id__c"] == "STRIPE/in_1 x"
    assert record["Finsync_Paid__c"] is True and record["Finsync_ERP_Invoice_Id__c"] == "INV-9"
    assert record["AccountId"] == account
    # The written record is served by SOQL too, and its SystemModstamp moved.
    soql = (
        "SELECT Id, Finsync_Paid__c FROM Opportunity WHERE Finsync_External_Id__c = 'STRIPE/in_1 x'"
    )
    rows = _query(http, session, soql).json()["records"]
    assert [(r["Id"], r["Finsync_Paid__c"]) for r in rows] == [(body["id"], True)]


def test_upsert_ambiguous_unknown_and_invalid(
    http: requests.Session, writable: tuple[Sandbox, Company]
) -> None:
    box, _small = writable
    session = _token(http, box).json()
    several = _patch(http, session, "Account/Finsync_External_Id__c/DUP-1", {"Name": "X"})
    assert several.status_code == 300
    assert len(several.json()) == 2
    assert all(u.startswith("/services/data/v60.0/sobjects/Account/001") for u in several.json())
    for path in ("Nope__c/Finsync_External_Id__c/1", "Account/Name/1", "Account/Bogus__c/1"):
        missing = _patch(http, session, path, {"Name": "X"})
        assert missing.status_code == 404, path
        assert missing.json()[0]["errorCode"] == "NOT_FOUND"
    invalid = _patch(
        http,
        session,
        "Account/Finsync_External_Id__c/NEW-1",
        {"Finsync_Paid__c": "yes", "Bogus__c": 1, "SystemModstamp": "2026-01-01"},
    )
    assert invalid.status_code == 400
    codes = {e["errorCode"]: e["fields"] for e in invalid.json()}
    assert codes == {
        "JSON_PARSER_ERROR": ["Finsync_Paid__c"],
        "INVALID_FIELD": ["Bogus__c"],
        "INVALID_FIELD_FOR_INSERT_UPDATE": ["SystemModstamp"],
        "REQUIRED_FIELD_MISSING": ["Name"],
    }
    got = http.get(
        session["instance_url"]
        + "/services/data/v60.0/sobjects/Account/Finsync_External_Id__c/NEW-1",
        headers={"Authorization": f"Bearer {session['access_token']}"},
        timeout=10,
    )
    assert got.status_code == 404, "a refused upsert creates nothing"


# quota -----------------------------------------------------------------------------------------
def test_daily_limit_is_configurable_and_enforced(
    http: requests.Session, writable: tuple[Sandbox, Company]
) -> None:
    box, _small = writable
    session = _token(http, box).json()
    admin = box.url("salesforce") + "/__sandbox/"
    assert http.post(admin + "api_usage", json={"used": 0}, timeout=10).status_code == 200
    assert http.post(admin + "api_limit", json={"daily": 3}, timeout=10).json()["daily"] == 3
    soql = "SELECT Id FROM SBQQ__Quote__c LIMIT 1"
    seen = [_query(http, session, soql) for _ in range(4)]
    assert [r.headers["Sforce-Limit-Info"] for r in seen] == [
        f"api-usage={n}/3" for n in (1, 2, 3, 4)
    ]
    assert [r.status_code for r in seen] == [200, 200, 200, 403]
    assert seen[-1].json()[0]["errorCode"] == "REQUEST_LIMIT_EXCEEDED"
    # The limit is part of the state: a restarted simulator keeps it.
    assert Sandbox(box.state_dir).salesforce.daily_limit == 3
    box.salesforce.set_daily_limit(15000)
    assert _query(http, session, soql).status_code == 200
