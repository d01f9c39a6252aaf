"""The AvaTax connector over HTTP against the AvaTax simulator."""

import re
import socket
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from finsync_pipeline.errors import (
    AuthenticationError,
    PermanentUpstreamError,
    RetryableUpstreamError,
)
from finsync_pipeline.resources.avalara import AvalaraClient, AvalaraResource
from finsync_pipeline.resources.http import HttpOptions
from finsync_pipeline.sandbox.avalara_sim import AvalaraSimulator
from finsync_pipeline.sandbox.http_base import FaultRule, Faults, Request, Response, SimServer
from finsync_pipeline.sandbox.store import Store

ACCOUNT_ID = "2000987654"
LICENSE_KEY = "9F8E7D6C5B4A3F2E"


class Recording(AvalaraSimulator):
    """The simulator, remembering the headers and bodies it was sent."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.seen: list[Request] = []

    def handle(self, req: Request) -> Response:
        self.seen.append(req)
        return super().handle(req)


@pytest.fixture(scope="module")
def avatax(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Recording, str]]:
    store = Store(Path(tmp_path_factory.mktemp("avalara")) / "sandbox.sqlite3")
    sim = Recording(Faults(), store, account_id=ACCOUNT_ID, license_key=LICENSE_KEY)
    server = SimServer(("127.0.0.1", 0), sim)
    server.start()
    yield sim, f"http://127.0.0.1:{server.port}"
    server.stop()
    store.close()


def _client(url: str, options: HttpOptions, key: str = LICENSE_KEY) -> AvalaraClient:
    resource = AvalaraResource(
        account_id=ACCOUNT_ID, license_key=key, base_url=url, company_code="FINSYNC"
    )
    return resource.get_client(options)


def _model(amounts: list[Decimal], currency: str = "USD") -> dict[str, Any]:
    return {
        "code": "in_test",
        "date": "2026-10-01",
        "customerCode": "001TEST",
        "currencyCode": currency,
        "addresses": {"singleLocation": {"country": "US", "region": "NY", "postalCode": "10001"}},
        "lines": [
            {"number": str(i + 1), "quantity": Decimal(1), "amount": a, "taxCode": "SW054000"}
            for i, a in enumerate(amounts)
        ],
    }


def test_ping_sends_basic_auth_and_the_client_header(
    avatax: tuple[Recording, str], options: HttpOptions
) -> None:
    sim, url = avatax
    with _client(url, options) as client:
        body = client.ping()
    assert body["authenticated"] is True
    assert str(body["authenticatedAccountId"]) == ACCOUNT_ID
    header = sim.seen[-1].header("X-Avalara-Client")
    assert header == f"finsync; 0.1.0; finsync-avalara; 2; {socket.gethostname()}"
    assert (sim.seen[-1].header("Authorization") or "").startswith("Basic ")


def test_decimal_amounts_round_trip_exactly(
    avatax: tuple[Recording, str], options: HttpOptions
) -> None:
    sim, url = avatax
    # Amounts no binary float holds exactly; one float on the way would show in the sums.
    amounts = [Decimal("0.10"), Decimal("0.20"), Decimal("1234567890123.45")]
    with _client(url, options) as client:
        result = client.create_sales_order(_model(amounts))
    assert b'"amount":0.10' in sim.seen[-1].body
    assert b'"companyCode":"FINSYNC"' in sim.seen[-1].body
    assert b'"commit":false' in sim.seen[-1].body
    assert isinstance(result["totalAmount"], Decimal)
    assert result["totalAmount"] == sum(amounts)
    assert [line["lineAmount"] for line in result["lines"]] == amounts
    # NY 8.875% per line, half up: 0.008875 -> 0.01, 0.01775 -> 0.02, 109567900248.4561875
    # -> 109567900248.46 (beyond what a float holds to the cent).
    assert result["totalTax"] == Decimal("0.01") + Decimal("0.02") + Decimal("109567900248.46")


def test_rejected_credentials_say_which_variables_to_set(
    avatax: tuple[Recording, str], options: HttpOptions
) -> None:
    _sim, url = avatax
    with (
        _client(url, options, key="NOT-THE-KEY") as client,
        pytest.raises(AuthenticationError) as caught,
    ):
        client.create_sales_order(_model([Decimal("1.00")]))
    text = str(caught.value)
    assert text == (
        "avalara: the account id and license key were rejected (HTTP 401); "
        "set AVALARA_ACCOUNT_ID and AVALARA_LICENSE_KEY"
    )
    assert "\n" not in text and "NOT-THE-KEY" not in text
    assert caught.value.status == 401


def test_validation_error_names_avatax_field(
    avatax: tuple[Recording, str], options: HttpOptions
) -> None:
    _sim, url = avatax
    model = _model([Decimal("1.00")])
    del model["addresses"]["singleLocation"]["region"]
    with _client(url, options) as client, pytest.raises(PermanentUpstreamError) as caught:
        client.create_sales_order(model)
    assert caught.value.status == 400
    assert caught.value.code == "ValueRequiredError"
    assert caught.value.field == "addresses.singleLocation.region"
    assert "region" in str(caught.value)
    # The correlation id is what Avalara support asks for to trace a refused call.
    assert re.search(r"AvaTax correlation id [0-9a-f-]{36}\b", str(caught.value))


def test_rate_limit_is_retried_honouring_retry_after(
    avatax: tuple[Recording, str], options: HttpOptions, sleeps: list[float]
) -> None:
    sim, url = avatax
    sim.faults.rules.append(FaultRule("avalara", 429, 2, 3, "/api/v2/transactions"))
    with _client(url, options) as client:
        result = client.create_sales_order(_model([Decimal("10.00")]))
        assert client.requests_made == 3
    assert result["totalTax"] == Decimal("0.89")
    assert sleeps == [3.0, 3.0]


def test_rate_limit_outlasting_the_attempts_is_retryable(
    avatax: tuple[Recording, str], sleeps: list[float]
) -> None:
    sim, url = avatax
    sim.faults.rules.append(FaultRule("avalara", 429, 5, 1, "/api/v2/transactions"))
    options = HttpOptions(max_attempts=2, sleep=sleeps.append)
    with _client(url, options) as client, pytest.raises(RetryableUpstreamError):
        client.create_sales_order(_model([Decimal("10.00")]))
    sim.faults.clear()


@pytest.mark.parametrize(
    "model",
    [
        pytest.param({"type": "SalesInvoice"}, id="recording-type"),
        pytest.param({"commit": True}, id="commit"),
    ],
)
def test_only_estimates_are_sent(
    avatax: tuple[Recording, str], options: HttpOptions, model: dict[str, Any]
) -> None:
    sim, url = avatax
    before = len(sim.seen)
    with _client(url, options) as client, pytest.raises(ValueError, match="SalesOrder"):
        client.create_sales_order({**_model([Decimal("1.00")]), **model})
    assert len(sim.seen) == before


def test_resource_repr_hides_the_license_key() -> None:
    resource = AvalaraResource(account_id=ACCOUNT_ID, license_key=LICENSE_KEY)
    assert LICENSE_KEY not in repr(resource)
    assert resource.base_url == "https://sandbox-rest.avatax.com"
    assert resource.company_code == "DEFAULT"
