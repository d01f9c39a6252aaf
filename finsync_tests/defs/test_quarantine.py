"""One bad record never fails an ingest: it goes to quarantine with its system, id, field and
reason, and the others land. The connectors read the sandbox through a tampering proxy (the
hostile server of the connector tests) that spoils chosen records on the wire."""

import copy
import datetime as dt
import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import dagster as dg
import pytest
import requests
import sqlalchemy as sa

from finsync_pipeline.definitions import defs
from finsync_pipeline.defs.validate.checks import validate_invoices
from finsync_pipeline.partitions import range_tags
from finsync_pipeline.resources.salesforce import SalesforceClient, SalesforceResource
from finsync_pipeline.resources.settings import PipelineSettings
from finsync_pipeline.resources.stripe import StripeResource
from finsync_pipeline.resources.warehouse import WarehouseResource, create_engine
from finsync_pipeline.sandbox.generator import Company, CompanySpec, add_months, generate
from finsync_pipeline.sandbox.salesforce_sim import jwt_credentials
from finsync_pipeline.sandbox.server import Sandbox
from finsync_tests.conftest import TEST_END
from finsync_tests.resources.hostile import HostileServer, Reply, Request

SPEC = CompanySpec(accounts=12, months=1, seed=11, end=TEST_END)
FIRST_DAY = add_months(TEST_END, -SPEC.months) + dt.timedelta(days=1)
Tamper = Callable[[Request, Any], Any]


@pytest.fixture(scope="module")
def company() -> Company:
    return generate(SPEC)


@pytest.fixture(scope="module")
def sandbox(tmp_path_factory: pytest.TempPathFactory, company: Company) -> Iterator[Sandbox]:
    box = Sandbox(tmp_path_factory.mktemp("sandbox"))
    box.seed(company)
    with box:
        yield box


class Proxy(HostileServer):
    """Forwards every request to ``upstream`` and lets ``tamper`` rewrite the JSON answer."""

    def __init__(self, upstream: str) -> None:
        super().__init__()
        self.upstream = upstream
        self.tamper: Tamper = lambda request, body: body
        self.script = self._forward

    def _forward(self, request: Request) -> Reply:
        headers = {k: v for k, v in request.headers.items() if k.lower() not in ("host",)}
        answer = requests.request(
            request.method,
            self.upstream + request.path,
            headers=headers,
            data=request.body,
            timeout=30,
            allow_redirects=False,
        )
        if "json" not in answer.headers.get("Content-Type", "") or not answer.content:
            return Reply(answer.status_code, answer.content)
        body = self.tamper(request, answer.json())
        # json.dumps writes NaN as the bare literal, as a broken upstream would.
        return Reply(
            answer.status_code, body if isinstance(body, bytes) else json.dumps(body).encode()
        )


@pytest.fixture
def proxy_for() -> Iterator[Callable[[str], Proxy]]:
    made: list[Proxy] = []

    def make(upstream: str) -> Proxy:
        made.append(Proxy(upstream))
        return made[-1]

    yield make
    for proxy in made:
        proxy.close()


def _selection(*names: str) -> list[Any]:
    loaded = defs()
    keys = {dg.AssetKey(n) for n in names}
    assets = [
        a for a in loaded.assets or [] if isinstance(a, dg.AssetsDefinition) and a.keys & keys
    ]
    checks = [c for c in loaded.asset_checks or [] if {k.asset_key for k in c.check_keys} & keys]
    return [*assets, *checks]


def _quarantine(url: str, asset: str) -> dict[str, list[tuple[str, str, str, str]]]:
    with create_engine(url).connect() as conn:
        rows = conn.execute(
            sa.text(
                "SELECT source_id, source_system, field, check_name, reason FROM quarantine "
                "WHERE asset = :a ORDER BY source_id, field"
            ),
            {"a": asset},
        ).all()
    out: dict[str, list[tuple[str, str, str, str]]] = {}
    for source_id, system, field, check, reason in rows:
        out.setdefault(source_id, []).append((system, field, check, reason))
    return out


def _ids(url: str, table: str) -> set[str]:
    with create_engine(url).connect() as conn:
        return {r[0] for r in conn.execute(sa.text(f"SELECT source_id FROM {table}"))}


def test_bad_stripe_invoices_go_to_quarantine_and_the_others_land(
    sandbox: Sandbox, company: Company, tmp_path: Path, proxy_for: Callable[[str], Proxy]
) -> None:
    proxy = proxy_for(sandbox.env["STRIPE_API_BASE"])
    spoiled: dict[str, str] = {}

    def tamper(request: Request, body: Any) -> Any:
        if not request.path.startswith("/v1/invoices?") or not body.get("data"):
            return body
        data = body["data"]
        spoil = [
            ("created", lambda inv: inv.update(created=99_999_999_999_999)),
            ("total", lambda inv: inv.update(total=10**30)),
            ("amount_paid", lambda inv: inv.update(amount_paid=float("nan"))),
        ]
        for (field, change), invoice in zip(spoil, data, strict=False):
            spoiled[invoice["id"]] = field
            change(invoice)
        if len(data) > 4:
            # The same id twice in one extract with different content: a conflict.
            twin = copy.deepcopy(data[3])
            twin["amount_remaining"] = int(twin["amount_remaining"]) + 1
            spoiled[data[3]["id"]] = "(record)"
            data.append(twin)
        return body

    proxy.tamper = tamper
    url = f"sqlite:///{tmp_path / 'warehouse.db'}"
    resources = {
        "warehouse": WarehouseResource(url=url),
        "settings": PipelineSettings(max_bad_share=0.5, min_bad_records=50),
        "stripe": StripeResource(api_key=sandbox.env["STRIPE_API_KEY"], api_base=proxy.url),
    }
    result = dg.materialize(
        _selection("stripe_invoices"),
        resources=resources,
        instance=dg.DagsterInstance.ephemeral(),
        tags=range_tags(FIRST_DAY, TEST_END),
    )
    assert result.success
    assert len(spoiled) == 4
    held = _quarantine(url, "stripe_invoices")
    checks = {"created": "future_timestamp", "total": "number_in_range"}
    checks |= {"amount_paid": "finite_number", "(record)": "conflicting_copies"}
    for invoice_id, field in spoiled.items():
        mine = [h for h in held.get(invoice_id, []) if h[1] == field]
        assert mine, (invoice_id, field, held.get(invoice_id))
        system, _field, check, reason = mine[0]
        assert (system, check) == ("stripe", checks[field])
        assert invoice_id in reason and field in reason
    # Every other invoice landed, and none is held unless the generator planted it bad.
    landed = _ids(url, "stripe_invoices")
    assert set(spoiled) <= landed
    planted = {p["id"] for kind in company.planted.values() for p in kind if "id" in p}
    assert set(held) - set(spoiled) <= planted
    assert len(landed - set(held)) >= 5


def _salesforce_resources(sandbox: Sandbox, url: str, login_url: str) -> dict[str, Any]:
    username, pem = jwt_credentials(sandbox.store, sandbox.credentials["salesforce_org_id"])
    return {
        "warehouse": WarehouseResource(url=url),
        "settings": PipelineSettings(max_bad_share=0.5),
        "salesforce": SalesforceResource(
            login_url=login_url,
            client_id=sandbox.env["SALESFORCE_CLIENT_ID"],
            username=username,
            private_key=pem,
            batch_size=200,
        ),
    }


def test_a_year_9999_modstamp_is_quarantined_and_never_moves_the_cursor(
    sandbox: Sandbox, tmp_path: Path, proxy_for: Callable[[str], Proxy]
) -> None:
    proxy = proxy_for(sandbox.env["SALESFORCE_LOGIN_URL"])
    planted = "001PLANTED0000FUT"

    def tamper(request: Request, body: Any) -> Any:
        if isinstance(body, dict) and "instance_url" in body:
            # Keep the connector talking through the proxy after login.
            proxy.upstream = body["instance_url"]
            return {**body, "instance_url": proxy.url}
        if isinstance(body, dict) and "records" in body and "FROM+Account" in request.path:
            record = {
                "attributes": {"type": "Account"},
                "Id": planted,
                "Name": "Clock skew",
                "CreatedDate": "2026-10-01T00:00:00.000+0000",
                "LastModifiedDate": "9999-12-31T23:59:59.000+0000",
                "SystemModstamp": "9999-12-31T23:59:59.000+0000",
            }
            body["records"].append(record)
            body["totalSize"] = int(body["totalSize"]) + 1
        return body

    proxy.tamper = tamper
    url = f"sqlite:///{tmp_path / 'warehouse.db'}"
    resources = _salesforce_resources(sandbox, url, proxy.url)
    login = sandbox.env["SALESFORCE_LOGIN_URL"]
    first = dg.materialize(
        _selection("salesforce_accounts"),
        resources=resources,
        instance=dg.DagsterInstance.ephemeral(),
    )
    assert first.success
    (reason,) = [
        r
        for (_s, field, check, r) in _quarantine(url, "salesforce_accounts")[planted]
        if (field, check) == ("SystemModstamp", "future_timestamp")
    ]
    assert planted in reason and "9999" in reason
    with create_engine(url).connect() as conn:
        cursor = conn.execute(
            sa.text("SELECT cursor FROM extract_cursors WHERE stream = 'salesforce_accounts'")
        ).scalar_one()
    assert not cursor.startswith("9999")

    # A real change after the run is extracted by the next one.
    real = SalesforceResource(**{**resources["salesforce"].__dict__, "login_url": login})
    client: SalesforceClient = real.get_client()
    (account,) = list(client.query("SELECT Id FROM Account ORDER BY Id LIMIT 1"))
    [result] = client.update_collection("Account", [(account["Id"], {"Name": "Renamed Ltd"})])
    assert result.error is None
    second = dg.materialize(
        _selection("salesforce_accounts"),
        resources=resources,
        instance=dg.DagsterInstance.ephemeral(),
    )
    assert second.success
    with create_engine(url).connect() as conn:
        payload = conn.execute(
            sa.text("SELECT payload FROM salesforce_accounts WHERE source_id = :id"),
            {"id": account["Id"]},
        ).scalar_one()
    assert json.loads(payload)["Name"] == "Renamed Ltd"


def _negated(value: Any) -> Any:
    """``value`` with every amount negated, as a sign error upstream would send it."""
    amounts = {"amount", "subtotal", "total", "total_excluding_tax", "subtotal_excluding_tax"}
    if isinstance(value, dict):
        return {
            k: -v
            if k in amounts and isinstance(v, int) and not isinstance(v, bool)
            else _negated(v)
            for k, v in value.items()
        }
    if isinstance(value, list):
        return [_negated(v) for v in value]
    return value


def test_an_invoice_with_every_amount_negated_is_refused_by_its_contract(
    company: Company,
) -> None:
    paid = [
        i
        for i in company.stripe["invoice"]
        if i["status"] == "paid" and i["total"] > 0 and i["starting_balance"] == 0
    ]
    invoice = paid[0]
    negated = _negated(invoice)
    # amount_due cannot be negative: a negative total leaves nothing due.
    negated.update(id="in_negated1", amount_due=0, amount_paid=0, amount_remaining=0)
    assert all(line["amount"] < 0 for line in negated["lines"]["data"])
    outcome = validate_invoices([invoice, negated])
    assert outcome.bad_ids == {negated["id"]}
    refused = outcome.failures[outcome.failures["check_name"] == "not_all_negative"]
    assert list(refused["source_id"]) == [negated["id"]]
    assert "not_all_negative" in refused["reason"].iloc[0]


def test_a_downgrade_with_a_negative_total_still_passes(company: Company) -> None:
    invoice = next(i for i in company.stripe["invoice"] if i["status"] == "paid")
    downgrade = copy.deepcopy(invoice)
    lines = downgrade["lines"]["data"]
    credit = copy.deepcopy(lines[0])
    credit["id"] = "il_credit1"
    credit["amount"] = -(sum(line["amount"] for line in lines) + 500)
    credit["taxes"] = []
    credit["discount_amounts"] = []
    lines.append(credit)
    downgrade["lines"]["total_count"] = len(lines)
    outcome = validate_invoices([downgrade])
    assert "not_all_negative" not in set(outcome.failures["check_name"])
