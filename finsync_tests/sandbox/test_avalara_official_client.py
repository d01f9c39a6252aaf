"""Avalara's official Python SDK against the AvaTax sandbox: the vendor's client is the judge.

The SDK (``Avalara`` on PyPI) is a test dependency only; finsync's own connector stays on
``requests``. Each test runs the SDK unchanged against a seeded sandbox: when they disagree, the
AvaTax REST v2 reference decides and the sandbox changes.
"""

import logging
import uuid
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import simplejson
from avalara import AvataxClient

from finsync_pipeline.sandbox.avalara_sim import AvalaraSimulator
from finsync_pipeline.sandbox.generator import tax_for
from finsync_pipeline.sandbox.http_base import FaultRule, Faults, SimServer
from finsync_pipeline.sandbox.store import Store

ACCOUNT_ID = "2000123456"
LICENSE_KEY = "0A1B2C3D4E5F6A7B"


@pytest.fixture(scope="module")
def avatax(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[AvalaraSimulator, str]]:
    store = Store(Path(tmp_path_factory.mktemp("avalara-sdk")) / "sandbox.sqlite3")
    sim = AvalaraSimulator(Faults(), store, account_id=ACCOUNT_ID, license_key=LICENSE_KEY)
    server = SimServer(("127.0.0.1", 0), sim)
    server.start()
    yield sim, f"http://127.0.0.1:{server.port}"
    server.stop()
    store.close()


def _client(url: str, *, key: str = LICENSE_KEY) -> AvataxClient:
    client = AvataxClient("finsync-tests", "1.0", "ci", url)
    return client.add_credentials(ACCOUNT_ID, key)


def _order(**extra: Any) -> dict[str, Any]:
    return {
        "type": "SalesOrder",
        "code": "in_sdk",
        "companyCode": "DEFAULT",
        "date": "2026-10-01",
        "customerCode": "001AAA",
        "currencyCode": "USD",
        "addresses": {
            "singleLocation": {"line1": "1 Main St", "city": "X", "region": "CA", "country": "US"}
        },
        "lines": [{"number": "1", "quantity": 1, "amount": 1000, "taxCode": "SW054000"}],
        **extra,
    }


def _json(response: Any) -> Any:
    return simplejson.loads(response.content, use_decimal=True)


def test_sdk_pings_and_logs_each_answers_correlation_id(
    avatax: tuple[AvalaraSimulator, str], caplog: pytest.LogCaptureFixture
) -> None:
    _sim, url = avatax
    with caplog.at_level(logging.INFO):
        response = _client(url).ping()
    assert response.status_code == 200
    body = response.json()
    assert body["authenticated"] is True and str(body["authenticatedAccountId"]) == ACCOUNT_ID
    # The SDK logs every call with AvaTax's correlation id, the reference Avalara support asks
    # for; an answer without it fails the SDK's call outright.
    logged = [simplejson.loads(r.getMessage()) for r in caplog.records if r.name == "root"]
    correlation = logged[-1]["x-correlation-id"]
    assert uuid.UUID(correlation)
    assert LICENSE_KEY not in caplog.text


def test_sdk_sales_order_is_taxed_like_the_invoice_was(
    avatax: tuple[AvalaraSimulator, str],
) -> None:
    _sim, url = avatax
    response = _client(url).create_transaction(_order())
    assert response.status_code == 201
    doc = _json(response)
    assert doc["type"] == "SalesOrder" and doc["status"] == "Temporary" and doc["id"] == 0
    rate = Decimal(doc["lines"][0]["details"][0]["rate"])
    assert doc["totalTax"] == Decimal(tax_for(100000, rate)).scaleb(-2) > 0
    assert [line["lineNumber"] for line in doc["lines"]] == ["1"]
    assert doc["summary"] and doc["addresses"]
    assert uuid.UUID(response.headers["X-Correlation-Id"])


def test_sdk_include_summary_only_omits_the_lines(avatax: tuple[AvalaraSimulator, str]) -> None:
    _sim, url = avatax
    response = _client(url).create_transaction(_order(), {"$include": "SummaryOnly"})
    assert response.status_code == 201
    doc = _json(response)
    assert "lines" not in doc
    assert sum(Decimal(s["tax"]) for s in doc["summary"]) == doc["totalTax"] > 0


def test_sdk_include_lines_only_omits_the_details(avatax: tuple[AvalaraSimulator, str]) -> None:
    _sim, url = avatax
    doc = _json(_client(url).create_transaction(_order(), {"$include": "LinesOnly"}))
    assert [line["tax"] for line in doc["lines"]] == [doc["totalTax"]]
    assert all("details" not in line for line in doc["lines"])


def test_sdk_reads_the_error_envelope_of_a_refused_field(
    avatax: tuple[AvalaraSimulator, str],
) -> None:
    _sim, url = avatax
    response = _client(url).create_transaction(_order(currencyCode="XXX"))
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["details"][0]["refersTo"] == "currencyCode"
    assert error["details"][0]["faultCode"] == "Client"
    assert uuid.UUID(response.headers["X-Correlation-Id"])


def test_sdk_wrong_license_key_is_the_authentication_envelope(
    avatax: tuple[AvalaraSimulator, str],
) -> None:
    _sim, url = avatax
    response = _client(url, key="WRONG").create_transaction(_order())
    assert response.status_code == 401
    assert response.json()["error"]["code"] == "AuthenticationException"
    assert "WRONG" not in response.text and LICENSE_KEY not in response.text


def test_sdk_survives_an_injected_outage(avatax: tuple[AvalaraSimulator, str]) -> None:
    sim, url = avatax
    sim.faults.rules.append(FaultRule("avalara", 503, 1, None, "/api/v2/transactions"))
    response = _client(url).create_transaction(_order())
    assert response.status_code == 503
    assert response.json()["error"]["details"][0]["faultCode"] == "Server"
    assert uuid.UUID(response.headers["X-Correlation-Id"])
