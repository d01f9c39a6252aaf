"""SalesforceClient over real HTTP against the Salesforce simulator."""

import datetime
import json
from collections.abc import Iterator
from decimal import Decimal

import jwt
import pytest
import sqlalchemy as sa
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from finsync_pipeline.crm_writeback import SalesforceStatusClient
from finsync_pipeline.errors import (
    AuthenticationError,
    ConfigurationError,
    PermanentUpstreamError,
    RetryableUpstreamError,
)
from finsync_pipeline.resources.http import HttpOptions
from finsync_pipeline.resources.salesforce import (
    SalesforceClient,
    SalesforceResource,
    jwt_assertion,
    load_private_key,
    soql_select,
)
from finsync_pipeline.sandbox.generator import Company, CompanySpec, generate
from finsync_pipeline.sandbox.salesforce_sim import jwt_credentials
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


# JWT bearer ------------------------------------------------------------------------------------
def jwt_client(sandbox: Sandbox, options: HttpOptions, **overrides: object) -> SalesforceClient:
    username, pem = jwt_credentials(sandbox.store, sandbox.credentials["salesforce_org_id"])
    settings: dict[str, object] = {
        "login_url": sandbox.env["SALESFORCE_LOGIN_URL"],
        "client_id": sandbox.env["SALESFORCE_CLIENT_ID"],
        "username": username,
        "private_key": pem,
        "http_options": options,
    }
    settings.update(overrides)
    return SalesforceClient(**settings)  # type: ignore[arg-type]


def test_jwt_bearer_flow_end_to_end(
    sandbox: Sandbox, company: Company, options: HttpOptions
) -> None:
    sf = jwt_client(sandbox, options)
    assert sf.flow == "jwt_bearer"
    records = list(sf.query(soql_select("SBQQ__Subscription__c", ["Id", "SBQQ__Quantity__c"])))
    assert len(records) == len(company.salesforce["SBQQ__Subscription__c"])
    assert all(isinstance(r["SBQQ__Quantity__c"], Decimal) for r in records)
    before = sf.requests_made
    sandbox.expire_salesforce_sessions()
    assert len(list(sf.query(soql_select("Account", ["Id"])))) == len(company.salesforce["Account"])
    # The 401, a new assertion for a new token, the query again.
    assert sf.requests_made - before == 3


def test_jwt_audience_is_the_login_server_not_the_my_domain_url(
    sandbox: Sandbox, options: HttpOptions
) -> None:
    sf = jwt_client(sandbox, options)
    assert list(sf.query(soql_select("Contract", ["Id"])))
    sandbox.salesforce.is_sandbox_org = True
    try:
        refused = jwt_client(sandbox, options)
        with pytest.raises(AuthenticationError) as info:
            list(refused.query(soql_select("Contract", ["Id"])))
        assert "audience is invalid" in str(info.value)
        assert "SALESFORCE_JWT_AUDIENCE" in str(info.value)
        sandbox_org = jwt_client(sandbox, options, jwt_audience="https://test.salesforce.com")
        assert list(sandbox_org.query(soql_select("Contract", ["Id"])))
    finally:
        sandbox.salesforce.is_sandbox_org = False


def test_jwt_audience_is_read_from_its_variable(
    sandbox: Sandbox, monkeypatch: pytest.MonkeyPatch
) -> None:
    from finsync_pipeline.definitions import build_resources

    for name, value in sandbox.env.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("SALESFORCE_JWT_AUDIENCE", "https://test.salesforce.com")
    resource = build_resources("sandbox")["salesforce"]
    assert isinstance(resource, SalesforceResource)
    bound = resource.process_config_and_initialize()
    assert bound.jwt_audience == "https://test.salesforce.com"
    monkeypatch.delenv("SALESFORCE_JWT_AUDIENCE")
    resource = build_resources("sandbox")["salesforce"]
    assert isinstance(resource, SalesforceResource)
    assert resource.process_config_and_initialize().jwt_audience is None


def test_jwt_assertion_has_the_claims_salesforce_wants(sandbox: Sandbox) -> None:
    username, pem = jwt_credentials(sandbox.store, sandbox.credentials["salesforce_org_id"])
    key = load_private_key(pem)
    assertion = jwt_assertion(
        key, client_id="3MVG9abc", username=username, audience="https://x.example", now=1000.0
    )
    assert jwt.get_unverified_header(assertion) == {"alg": "RS256"}
    claims = jwt.decode(
        assertion,
        key.public_key(),
        algorithms=["RS256"],
        audience="https://x.example",
        options={"verify_exp": False},
    )
    assert claims == {"iss": "3MVG9abc", "sub": username, "aud": "https://x.example", "exp": 1170}
    assert claims["exp"] - 1000 <= 180


def test_jwt_key_in_one_env_line_is_accepted(sandbox: Sandbox, options: HttpOptions) -> None:
    _username, pem = jwt_credentials(sandbox.store, sandbox.credentials["salesforce_org_id"])
    one_line = pem.strip().replace("\n", "\\n")
    sf = jwt_client(sandbox, options, private_key=one_line)
    assert list(sf.query(soql_select("Contract", ["Id"])))


def test_jwt_with_a_key_the_app_does_not_know_is_an_authentication_error(
    sandbox: Sandbox, options: HttpOptions
) -> None:
    other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = other.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()
    sf = jwt_client(sandbox, options, private_key=pem)
    with pytest.raises(AuthenticationError) as info:
        list(sf.query(soql_select("Account", ["Id"])))
    assert info.value.code == "invalid_grant"
    message = str(info.value)
    assert "SALESFORCE_USERNAME" in message and "SALESFORCE_PRIVATE_KEY" in message
    assert all(line not in message for line in pem.splitlines()[1:-1])
    assert sf.requests_made == 1


def test_jwt_key_that_is_not_a_key_is_a_configuration_error(sandbox: Sandbox) -> None:
    with pytest.raises(ConfigurationError) as info:
        jwt_client(sandbox, HttpOptions(), private_key="-----BEGIN PRIVATE KEY-----\nnope\n")
    assert "SALESFORCE_PRIVATE_KEY" in str(info.value) and "nope" not in str(info.value)
    with pytest.raises(ConfigurationError):
        SalesforceClient(login_url="http://127.0.0.1:1", client_id="cid")


def test_resource_picks_jwt_when_username_and_key_are_set(sandbox: Sandbox) -> None:
    env = sandbox.env
    username, pem = jwt_credentials(sandbox.store, sandbox.credentials["salesforce_org_id"])
    jwt_resource = SalesforceResource(
        login_url=env["SALESFORCE_LOGIN_URL"],
        client_id=env["SALESFORCE_CLIENT_ID"],
        username=username,
        private_key=pem,
    )
    assert jwt_resource.get_client().flow == "jwt_bearer"
    assert pem.splitlines()[1] not in repr(jwt_resource)
    secret_resource = SalesforceResource(
        login_url=env["SALESFORCE_LOGIN_URL"],
        client_id=env["SALESFORCE_CLIENT_ID"],
        client_secret=env["SALESFORCE_CLIENT_SECRET"],
    )
    assert secret_resource.get_client().flow == "client_credentials"


# upsert and quota ------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def writable(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sandbox]:
    """A sandbox of its own: writes must not change the shared one's record counts."""
    box = Sandbox(tmp_path_factory.mktemp("writable-sandbox"))
    box.seed(generate(CompanySpec(accounts=12, months=2, seed=4, end=datetime.date(2026, 10, 31))))
    with box:
        yield box


def test_upsert_is_idempotent_and_returns_the_id(writable: Sandbox, options: HttpOptions) -> None:
    sf = jwt_client(writable, options)
    account = next(sf.query(soql_select("Account", ["Id"])))["Id"]
    fields = {
        "Name": "Writeback in_9",
        "AccountId": account,
        "StageName": "Closed Won",
        "CloseDate": "2026-10-02",
        "Amount": Decimal("1234.50"),
        "Finsync_Invoice_Status__c": "open",
    }
    first_id, created = sf.upsert("Opportunity", "Finsync_External_Id__c", "STRIPE/in_9", fields)
    assert created is True and first_id.startswith("006")
    # A resend after an unknown outcome: the same record, updated, never a second one.
    again_id, created_again = sf.upsert(
        "Opportunity", "Finsync_External_Id__c", "STRIPE/in_9", {**fields, "Finsync_Paid__c": True}
    )
    assert (again_id, created_again) == (first_id, False)
    record = sf.get_by_external_id("Opportunity", "Finsync_External_Id__c", "STRIPE/in_9")
    assert record["Id"] == first_id and record["Finsync_Paid__c"] is True
    assert record["Amount"] == Decimal("1234.50")
    rows = list(
        sf.query(
            soql_select(
                "Opportunity", ["Id"], where=[("Finsync_External_Id__c", "=", "STRIPE/in_9")]
            )
        )
    )
    assert rows == [{"Id": first_id}]


@pytest.mark.parametrize(
    ("api_version", "calls"),
    [("v60.0", 1), ("v45.0", 2)],
    ids=["v60-answers-with-the-id", "v45-answers-204-and-the-id-is-read-back"],
)
def test_status_client_updates_a_renewal_opportunity_by_its_id(
    writable: Sandbox, options: HttpOptions, api_version: str, calls: int
) -> None:
    sf = jwt_client(writable, options, api_version=api_version)
    renewal = next(sf.query(soql_select("Opportunity", ["Id"], where=[("Type", "=", "Renewal")])))[
        "Id"
    ]
    fields = {
        "Finsync_Invoice_Status__c": f"Invoiced in ERP (invoice ACME-{api_version}), paid",
        "Finsync_Paid__c": True,
        "Finsync_ERP_Invoice_Id__c": "5012",
        "Finsync_Stripe_Invoice_Id__c": "in_renewal",
    }
    before = sf.requests_made
    assert SalesforceStatusClient(sf).upsert("Opportunity", renewal, fields) == renewal
    assert sf.requests_made - before == calls
    record = sf.get_by_external_id("Opportunity", "Id", renewal)
    assert {name: record[name] for name in fields} == fields
    listed = sf.query(
        soql_select("Opportunity", ["Id", *fields], where=[("Finsync_Paid__c", "=", True)])
    )
    assert {"Id": renewal, **fields} in list(listed)
    # Id can only update: an Opportunity that does not exist is refused, never created.
    with pytest.raises(PermanentUpstreamError) as missing:
        SalesforceStatusClient(sf).upsert("Opportunity", "006000000000000AAA", fields)
    assert missing.value.status == 404


def test_upsert_reauthenticates_after_session_expiry(
    writable: Sandbox, options: HttpOptions
) -> None:
    sf = jwt_client(writable, options)
    sf.upsert("Account", "Finsync_External_Id__c", "ACC-1", {"Name": "Writeback Ltd"})
    writable.expire_salesforce_sessions()
    before = sf.requests_made
    _id, created = sf.upsert(
        "Account", "Finsync_External_Id__c", "ACC-1", {"Finsync_Paid__c": True}
    )
    assert created is False
    # 401, new token, then the PATCH, whose answer (API v60.0) carries the id.
    assert sf.requests_made - before == 3


def test_upsert_errors_are_permanent_and_named(writable: Sandbox, options: HttpOptions) -> None:
    sf = jwt_client(writable, options)
    with pytest.raises(PermanentUpstreamError) as invalid:
        sf.upsert(
            "Account", "Finsync_External_Id__c", "ACC-2", {"Name": "X", "Finsync_Paid__c": "y"}
        )
    assert invalid.value.status == 400 and invalid.value.code == "JSON_PARSER_ERROR"
    assert invalid.value.field == "Finsync_Paid__c"
    with pytest.raises(PermanentUpstreamError) as unknown:
        sf.upsert("Account", "Bogus__c", "1", {"Name": "X"})
    assert unknown.value.status == 404 and unknown.value.code == "NOT_FOUND"
    with pytest.raises(ValueError):
        sf.upsert("Account; DROP", "Finsync_External_Id__c", "1", {})


def test_upsert_on_a_shared_external_id_is_300(
    scripted: ScriptedServer, options: HttpOptions
) -> None:
    scripted.answer(
        Scripted(200, {"access_token": "00Dx!tok", "instance_url": scripted.url}),
        Scripted(300, ["/services/data/v60.0/sobjects/Account/001A", "/x/001B"]),
    )
    sf = SalesforceClient(
        login_url=scripted.url, client_id="cid", client_secret="secret", http_options=options
    )
    with pytest.raises(PermanentUpstreamError) as info:
        sf.upsert("Account", "Finsync_External_Id__c", "a/b c", {"Name": "X"})
    assert info.value.code == "MULTIPLE_RECORDS" and info.value.status == 300
    patch = scripted.seen[1]
    assert patch.method == "PATCH"
    assert patch.path == "/services/data/v60.0/sobjects/Account/Finsync_External_Id__c/a%2Fb%20c"
    assert patch.body == b'{"Name": "X"}'


def test_quota_share_is_read_from_the_limit_header(writable: Sandbox, options: HttpOptions) -> None:
    sf = jwt_client(writable, options, batch_size=200)
    assert sf.next_call_within(0.5), "unknown usage: the first call finds it out"
    writable.salesforce.set_api_usage(0)
    writable.salesforce.set_daily_limit(10)
    try:
        list(sf.query(soql_select("Contract", ["Id"])))
        assert sf.api_usage == (1, 10)
        assert sf.next_call_within(0.2) and not sf.next_call_within(0.1)
    finally:
        writable.salesforce.set_daily_limit(15000)


def test_a_row_lock_inside_a_collection_is_deferred_not_refused(
    scripted: ScriptedServer, options: HttpOptions, sqlite_url: str
) -> None:
    from finsync_pipeline import ledger
    from finsync_pipeline.posting import PostingEngine
    from finsync_pipeline.resources.warehouse import create_engine

    locked = {"statusCode": "UNABLE_TO_LOCK_ROW", "message": "unable to obtain exclusive access"}
    scripted.answer(
        Scripted(200, {"access_token": "00Dx!tok", "instance_url": scripted.url}),
        Scripted(
            200,
            [
                {"id": "006A", "success": True, "errors": []},
                {"success": False, "errors": [{**locked, "fields": []}]},
            ],
        ),
    )
    engine = create_engine(sqlite_url)
    status = {"Finsync_Invoice_Status__c": "Invoiced", "Finsync_Paid__c": True}
    docs = [
        ledger.LedgerDoc("salesforce", "opportunity_status", rid, "finsync", rid, rid, None, status)
        for rid in ("006A", "006B")
    ]
    with engine.begin() as conn:
        ledger.enqueue(conn, docs, run_id="t", repost_changed=True)
    sf = SalesforceClient(
        login_url=scripted.url, client_id="cid", client_secret="secret", http_options=options
    )
    poster = PostingEngine(
        engine,
        SalesforceStatusClient(sf),
        erp="salesforce",
        run_id="r",
        is_run_alive=lambda _run: False,
    )
    poster.post("opportunity_status")
    collection = scripted.seen[1]
    assert collection.method == "PATCH"
    assert collection.path == "/services/data/v60.0/composite/sobjects"
    sent = json.loads(collection.body)
    assert sent["allOrNone"] is False
    assert sent["records"][1] == {"attributes": {"type": "Opportunity"}, **status, "id": "006B"}
    with engine.connect() as conn:
        states = dict(conn.execute(sa.text("SELECT external_id, state FROM posting_ledger")).all())
    # Row-lock contention is transient: the locked record waits for a later run, never refused.
    assert states == {"006A": "posted", "006B": "pending"}
    assert poster.stats.rejected == 0 and poster.stats.deferred == 1
