"""simple-salesforce, Salesforce's most used Python client, as the judge of the Salesforce sandbox.

It runs unchanged against a seeded sandbox served over HTTPS (it builds ``https://`` URLs only,
as every real org is): where it and the sandbox disagree, Salesforce's REST API guide decides
and the sandbox changes.
"""

import datetime
import json
import math
from collections.abc import Iterator
from typing import Any

import pytest
import requests
from simple_salesforce import Salesforce
from simple_salesforce.exceptions import SalesforceMalformedRequest, SalesforceResourceNotFound

from finsync_pipeline.sandbox.generator import Company, CompanySpec, generate
from finsync_pipeline.sandbox.server import CA_BUNDLE_VARIABLE, Sandbox
from finsync_tests.sandbox.conftest import serving

API_VERSION = "60.0"


@pytest.fixture(scope="module")
def company() -> Company:
    return generate(CompanySpec(accounts=240, months=2, seed=3, end=datetime.date(2026, 10, 31)))


@pytest.fixture(scope="module")
def tls_sandbox(tmp_path_factory: pytest.TempPathFactory, company: Company) -> Iterator[Sandbox]:
    yield from serving(tmp_path_factory.mktemp("sf-official"), company, tls=True)


@pytest.fixture
def sf(tls_sandbox: Sandbox, monkeypatch: pytest.MonkeyPatch) -> Iterator[Salesforce]:
    """simple-salesforce with a session id from the sandbox's token endpoint, as a deployment
    hands it one from its own OAuth flow, trusting the CA bundle the sandbox prints."""
    env = tls_sandbox.env
    # As `. sandbox.env` does; the variable wins over a session's own verify setting.
    monkeypatch.setenv(CA_BUNDLE_VARIABLE, env[CA_BUNDLE_VARIABLE])
    with requests.Session() as session:
        token = session.post(
            env["SALESFORCE_LOGIN_URL"] + "/services/oauth2/token",
            data={
                "grant_type": "client_credentials",
                "client_id": env["SALESFORCE_CLIENT_ID"],
                "client_secret": env["SALESFORCE_CLIENT_SECRET"],
            },
            timeout=10,
        ).json()
        yield Salesforce(
            instance_url=token["instance_url"],
            session_id=token["access_token"],
            version=API_VERSION,
            session=session,
        )


def _renewals(sf: Salesforce, n: int) -> list[str]:
    rows = sf.query_all(f"SELECT Id FROM Opportunity ORDER BY Id LIMIT {n}")["records"]
    return [str(r["Id"]) for r in rows]


def test_query_all_follows_next_records_url(
    sf: Salesforce, tls_sandbox: Sandbox, company: Company
) -> None:
    expected = {r["Id"] for r in company.salesforce["Opportunity"]}
    before = tls_sandbox.salesforce.request_count
    result = sf.query_all(
        "SELECT Id, Name, StageName FROM Opportunity",
        headers={"Sforce-Query-Options": "batchSize=200"},
    )
    assert result["done"] is True and result["totalSize"] == len(expected)
    assert {r["Id"] for r in result["records"]} == expected
    assert all(r["attributes"]["type"] == "Opportunity" for r in result["records"])
    # One call per batch of 200: the first query, then each nextRecordsUrl.
    calls = tls_sandbox.salesforce.request_count - before
    assert calls == math.ceil(len(expected) / 200) > 1


def test_sobject_get_and_update_by_id(sf: Salesforce) -> None:
    [record_id] = _renewals(sf, 1)
    fields = {"Finsync_Invoice_Status__c": "Invoiced in ERP (invoice X-1), paid"}
    assert sf.Opportunity.update(record_id, {**fields, "Finsync_Paid__c": True}) == 204
    record = sf.Opportunity.get(record_id)
    assert record["Id"] == record_id and record["Finsync_Paid__c"] is True
    assert record["Finsync_Invoice_Status__c"] == fields["Finsync_Invoice_Status__c"]
    assert record["attributes"]["url"].endswith(f"/sobjects/Opportunity/{record_id}")


def test_update_by_id_refuses_what_salesforce_refuses(sf: Salesforce) -> None:
    [record_id] = _renewals(sf, 1)
    with pytest.raises(SalesforceResourceNotFound):
        sf.Opportunity.update("006000000000000AAA", {"Finsync_Paid__c": True})
    with pytest.raises(SalesforceMalformedRequest) as malformed:
        sf.Opportunity.update("001NotAnOpportunity", {"Finsync_Paid__c": True})
    assert malformed.value.content[0]["errorCode"] == "MALFORMED_ID"
    with pytest.raises(SalesforceMalformedRequest) as unknown:
        sf.Opportunity.update(record_id, {"Bogus__c": 1})
    assert unknown.value.content[0]["errorCode"] == "INVALID_FIELD"
    assert unknown.value.content[0]["fields"] == ["Bogus__c"]
    with pytest.raises(SalesforceMalformedRequest) as read_only:
        sf.Opportunity.update(record_id, {"Id": record_id})
    assert read_only.value.content[0]["errorCode"] == "INVALID_FIELD_FOR_INSERT_UPDATE"


def test_upsert_by_external_id_creates_then_updates(sf: Salesforce) -> None:
    assert sf.Account.upsert("Finsync_External_Id__c/ACC-JUDGE-1", {"Name": "Judge Ltd"}) == 201
    # From API v46.0 an upsert that updates answers 200 (with the id), not 204.
    updated = sf.Account.upsert("Finsync_External_Id__c/ACC-JUDGE-1", {"Finsync_Paid__c": True})
    assert updated == 200
    record = sf.Account.get_by_custom_id("Finsync_External_Id__c", "ACC-JUDGE-1")
    assert record["Name"] == "Judge Ltd" and record["Finsync_Paid__c"] is True
    found = sf.query_all("SELECT Id FROM Account WHERE Finsync_External_Id__c = 'ACC-JUDGE-1'")
    assert found["totalSize"] == 1


def _collection(ids: list[str], status: str) -> dict[str, Any]:
    return {
        "allOrNone": False,
        "records": [
            {"attributes": {"type": "Opportunity"}, "id": rid, "Finsync_Invoice_Status__c": status}
            for rid in ids
        ],
    }


def test_collections_update_lands_each_record_and_reports_each_refusal(
    sf: Salesforce, tls_sandbox: Sandbox
) -> None:
    ids = _renewals(sf, 3)
    body = _collection([*ids[:2], "006000000000000AAA", ids[2]], "Collected")
    body["records"][3]["Bogus__c"] = "x"
    before = tls_sandbox.salesforce.request_count
    results = sf.restful("composite/sobjects", method="PATCH", data=json.dumps(body))
    assert tls_sandbox.salesforce.request_count - before == 1
    assert [r["success"] for r in results] == [True, True, False, False]
    assert [r.get("id") for r in results[:2]] == ids[:2]
    assert results[2]["errors"][0]["statusCode"] == "ENTITY_IS_DELETED"
    assert results[3]["errors"][0]["statusCode"] == "INVALID_FIELD"
    assert results[3]["errors"][0]["fields"] == ["Bogus__c"]
    statuses = sf.query_all(
        "SELECT Id, Finsync_Invoice_Status__c FROM Opportunity "
        f"WHERE Id IN ('{ids[0]}', '{ids[1]}', '{ids[2]}')"
    )["records"]
    by_id = {r["Id"]: r["Finsync_Invoice_Status__c"] for r in statuses}
    assert by_id[ids[0]] == by_id[ids[1]] == "Collected" and by_id[ids[2]] != "Collected"


def test_collections_all_or_none_rolls_everything_back(sf: Salesforce) -> None:
    ids = _renewals(sf, 2)
    body = _collection([ids[0], "006000000000000AAA", ids[1]], "All or none")
    body["allOrNone"] = True
    results = sf.restful("composite/sobjects", method="PATCH", data=json.dumps(body))
    assert [r["success"] for r in results] == [False, False, False]
    assert results[0]["errors"][0]["statusCode"] == "ALL_OR_NONE_OPERATION_ROLLED_BACK"
    assert results[1]["errors"][0]["statusCode"] == "ENTITY_IS_DELETED"
    for rid in ids:
        assert sf.Opportunity.get(rid)["Finsync_Invoice_Status__c"] != "All or none"


def test_collections_refuse_more_than_200_records_and_records_without_a_type(
    sf: Salesforce,
) -> None:
    ids = _renewals(sf, 201)
    with pytest.raises(SalesforceMalformedRequest) as too_many:
        sf.restful("composite/sobjects", method="PATCH", data=json.dumps(_collection(ids, "x")))
    assert too_many.value.content[0]["errorCode"] == "EXCEEDED_ID_LIMIT"
    untyped = {"allOrNone": False, "records": [{"id": ids[0], "Finsync_Paid__c": True}]}
    with pytest.raises(SalesforceMalformedRequest) as no_type:
        sf.restful("composite/sobjects", method="PATCH", data=json.dumps(untyped))
    assert no_type.value.content[0]["errorCode"] == "INVALID_TYPE"
    assert sf.Opportunity.get(ids[0])["Finsync_Invoice_Status__c"] != "x"
