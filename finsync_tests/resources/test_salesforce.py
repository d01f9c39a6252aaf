"""SalesforceClient over real HTTP against the Salesforce simulator."""

import pytest

from finsync_pipeline.errors import (
    AuthenticationError,
    PermanentUpstreamError,
    RetryableUpstreamError,
)
from finsync_pipeline.resources.http import HttpOptions
from finsync_pipeline.resources.salesforce import (
    SalesforceClient,
    SalesforceResource,
    soql_select,
)
from finsync_pipeline.sandbox.generator import Company
from finsync_pipeline.sandbox.server import Sandbox
from finsync_tests.resources.conftest import Scripted, ScriptedServer


def client(sandbox: Sandbox, options: HttpOptions, **overrides: object) -> SalesforceClient:
    env = sandbox.env
    settings: dict[str, object] = {
        "login_url": env["SALESFORCE_LOGIN_URL"],
        "client_id": env["SALESFORCE_CLIENT_ID"],
        "client_secret": env["SALESFORCE_CLIENT_SECRET"],
        "http_options": options,
    }
    settings.update(overrides)
    return SalesforceClient(**settings)  # type: ignore[arg-type]


def test_query_follows_next_records_url_across_batches(
    sandbox: Sandbox, company: Company, options: HttpOptions
) -> None:
    sf = client(sandbox, options, batch_size=200)
    records = list(sf.query(soql_select("Opportunity", ["Id", "Name", "Amount"])))
    expected = [o["Id"] for o in company.salesforce["Opportunity"]]
    assert len(expected) > 200
    assert sorted(r["Id"] for r in records) == sorted(expected)
    assert all("attributes" not in r for r in records)
    # One token request, then two query batches.
    assert sf.requests_made == 3
    usage = sf.api_usage
    assert usage is not None and usage[0] >= 2 and usage[1] == 15000


def test_quote_in_value_round_trips(
    sandbox: Sandbox, company: Company, options: HttpOptions
) -> None:
    name = next(a["Name"] for a in company.salesforce["Account"] if "'" in a["Name"])
    records = list(
        client(sandbox, options).query(
            soql_select("Account", ["Id", "Name"], where=[("Name", "=", name)])
        )
    )
    assert [r["Name"] for r in records] == [name]


@pytest.mark.parametrize(
    "value",
    [
        pytest.param("x' OR Name != '", id="quote-breakout"),
        pytest.param("x\\' OR Name != '", id="backslash-quote-breakout"),
        pytest.param("O'Brien\\", id="trailing-backslash"),
        pytest.param('x" OR Name != "', id="double-quote"),
    ],
)
def test_hostile_values_cannot_inject(sandbox: Sandbox, options: HttpOptions, value: str) -> None:
    soql = soql_select("Account", ["Id"], where=[("Name", "=", value)])
    assert list(client(sandbox, options).query(soql)) == []


def test_reauthenticates_once_after_session_expiry(
    sandbox: Sandbox, company: Company, options: HttpOptions
) -> None:
    sf = client(sandbox, options)
    soql = soql_select("Account", ["Id"])
    assert len(list(sf.query(soql))) == len(company.salesforce["Account"])
    before = sf.requests_made
    sandbox.expire_salesforce_sessions()
    assert len(list(sf.query(soql))) == len(company.salesforce["Account"])
    # The 401, a new token, the query again.
    assert sf.requests_made - before == 3


def test_bad_secret_is_an_authentication_error(sandbox: Sandbox, options: HttpOptions) -> None:
    bad_secret = "0123456789ABCDEF" * 4
    sf = client(sandbox, options, client_secret=bad_secret)
    with pytest.raises(AuthenticationError) as info:
        list(sf.query(soql_select("Account", ["Id"])))
    assert str(info.value) == (
        "salesforce: client credentials were rejected (invalid_client); "
        "set SALESFORCE_CLIENT_ID and SALESFORCE_CLIENT_SECRET"
    )
    assert bad_secret not in repr(info.value)
    assert sf.requests_made == 1


def test_org_limit_is_retryable_and_not_hammered(
    sandbox: Sandbox, options: HttpOptions, sleeps: list[float]
) -> None:
    sf = client(sandbox, options)
    soql = soql_select("Account", ["Id"])
    list(sf.query(soql))
    served = sandbox.request_counts()["salesforce"]
    sandbox.inject("salesforce", status=403, count=5, retry_after_s=None)
    with pytest.raises(RetryableUpstreamError) as info:
        list(sf.query(soql))
    assert info.value.code == "REQUEST_LIMIT_EXCEEDED"
    assert info.value.status == 403
    assert sandbox.request_counts()["salesforce"] - served == 1
    assert sleeps == []


def test_unavailable_is_retried(
    sandbox: Sandbox, options: HttpOptions, sleeps: list[float]
) -> None:
    sandbox.inject(
        "salesforce", status=503, count=2, retry_after_s=None, path_prefix="/services/data/"
    )
    records = list(client(sandbox, options).query(soql_select("Contract", ["Id"])))
    assert records
    assert len(sleeps) == 2


def test_unknown_field_is_permanent_and_named(sandbox: Sandbox, options: HttpOptions) -> None:
    with pytest.raises(PermanentUpstreamError) as info:
        list(client(sandbox, options).query(soql_select("Account", ["Id", "Bogus__c"])))
    assert info.value.code == "INVALID_FIELD"
    assert info.value.field == "Bogus__c"
    assert info.value.status == 400


def test_resource_hides_secrets_in_repr(sandbox: Sandbox) -> None:
    env = sandbox.env
    resource = SalesforceResource(
        login_url=env["SALESFORCE_LOGIN_URL"],
        client_id=env["SALESFORCE_CLIENT_ID"],
        client_secret=env["SALESFORCE_CLIENT_SECRET"],
    )
    for text in (repr(resource), repr(resource.get_client())):
        assert env["SALESFORCE_CLIENT_SECRET"] not in text
        assert env["SALESFORCE_CLIENT_ID"] not in text


def test_row_lock_contention_is_retried(scripted: ScriptedServer, options: HttpOptions) -> None:
    scripted.answer(
        Scripted(200, {"access_token": "00Dx!tok", "instance_url": scripted.url}),
        Scripted(
            400,
            [{"message": "unable to obtain exclusive access", "errorCode": "UNABLE_TO_LOCK_ROW"}],
        ),
        Scripted(200, {"totalSize": 1, "done": True, "records": [{"attributes": {}, "Id": "001"}]}),
    )
    sf = SalesforceClient(
        login_url=scripted.url, client_id="cid", client_secret="secret", http_options=options
    )
    assert list(sf.query("SELECT Id FROM Account")) == [{"Id": "001"}]
    token, locked, ok = scripted.seen
    assert token.path == "/services/oauth2/token"
    assert b"client_secret=secret" in token.body
    assert locked.path == ok.path == "/services/data/v60.0/query?q=SELECT+Id+FROM+Account"
    assert ok.headers["Authorization"] == "Bearer 00Dx!tok"
    assert ok.headers["Sforce-Query-Options"] == "batchSize=2000"
