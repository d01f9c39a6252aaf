"""The Salesforce simulator over real HTTP: OAuth2, SOQL with nextRecordsUrl, errors, limits."""

from typing import Any

import pytest
import requests

from finsync_pipeline.sandbox.generator import Company
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
