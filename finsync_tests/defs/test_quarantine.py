"""One bad record never fails an ingest: it goes to quarantine with its system, id, field and
reason, and the others land. The connectors read the sandbox through a tampering proxy (the
hostile server of the connector tests) that spoils chosen records on the wire."""

import copy
import datetime as dt
import json
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import dagster as dg
import pytest
import requests
import sqlalchemy as sa

from finsync_pipeline.definitions import defs
from finsync_pipeline.defs.validate.checks import validate_invoices
from finsync_pipeline.errors import ConfigurationError
from finsync_pipeline.partitions import range_tags
from finsync_pipeline.resources.metering import MeteringResource
from finsync_pipeline.resources.netsuite import NetSuiteResource
from finsync_pipeline.resources.salesforce import SalesforceClient, SalesforceResource
from finsync_pipeline.resources.settings import PipelineSettings, future_skew_from_env
from finsync_pipeline.resources.stripe import StripeResource
from finsync_pipeline.resources.warehouse import WarehouseResource, create_engine
from finsync_pipeline.runner import RunFailed
from finsync_pipeline.runner import _raise_for as raise_for
from finsync_pipeline.sandbox.generator import Company, CompanySpec, add_months, generate
from finsync_pipeline.sandbox.salesforce_sim import jwt_credentials
from finsync_pipeline.sandbox.server import Sandbox
from finsync_tests.conftest import TEST_END
from finsync_tests.resources.hostile import HostileServer, Reply, Request

# load_from_defs_folder imports the defs modules with Dagster's beta warnings silenced
# (single-run backfill policies are beta in 1.13); importing them directly needs the same.
with warnings.catch_warnings():
    warnings.simplefilter("ignore", dg.BetaWarning)
    from finsync_pipeline.defs.extract.usage import usage_events
    from finsync_pipeline.defs.validate.usage import usage_events_contract

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
        self.keep_host = False
        self.script = self._forward

    def _forward(self, request: Request) -> Reply:
        headers = {
            k: v for k, v in request.headers.items() if self.keep_host or k.lower() != "host"
        }
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


def _stripe_run(
    sandbox: Sandbox,
    proxy: Proxy,
    url: str,
    asset: str,
    tags: dict[str, str],
    *,
    raise_on_error: bool = True,
) -> dg.ExecuteInProcessResult:
    """``asset`` and its contract check through the proxy; bad records stay below the limit."""
    return dg.materialize(
        _selection(asset),
        resources={
            "warehouse": WarehouseResource(url=url),
            "settings": PipelineSettings(max_bad_share=0.5, min_bad_records=50),
            "stripe": StripeResource(api_key=sandbox.env["STRIPE_API_KEY"], api_base=proxy.url),
        },
        instance=dg.DagsterInstance.ephemeral(),
        tags=tags,
        raise_on_error=raise_on_error,
    )


def test_bad_stripe_invoices_go_to_quarantine_and_the_others_land(
    sandbox: Sandbox, company: Company, tmp_path: Path, proxy_for: Callable[[str], Proxy]
) -> None:
    proxy = proxy_for(sandbox.env["STRIPE_API_BASE"])
    spoiled: dict[str, tuple[str, str]] = {}

    def tamper(request: Request, body: Any) -> Any:
        if not request.path.startswith("/v1/invoices?") or len(body.get("data", [])) < 6:
            return body
        data = body["data"]
        spoil = [
            ("created", "future_timestamp", {"created": 99_999_999_999_999}),
            ("total", "number_in_range", {"total": 10**30}),
            ("amount_paid", "finite_number", {"amount_paid": float("nan")}),
            # A field of the wrong shape inside one record: that record is held, not the page.
            ("lines", "readable_record", {"lines": {"object": "list", "data": ["x"]}}),
        ]
        for (field, check, change), invoice in zip(spoil, data, strict=False):
            spoiled[invoice["id"]] = (field, check)
            invoice.update(change)
        # The same id twice in one extract with different content: a conflict.
        twin = copy.deepcopy(data[4])
        twin["amount_remaining"] = int(twin["amount_remaining"]) + 1
        spoiled[data[4]["id"]] = ("(record)", "conflicting_copies")
        data.append(twin)
        return body

    proxy.tamper = tamper
    url = f"sqlite:///{tmp_path / 'warehouse.db'}"
    result = _stripe_run(sandbox, proxy, url, "stripe_invoices", range_tags(FIRST_DAY, TEST_END))
    assert result.success
    assert len(spoiled) == 5
    held = _quarantine(url, "stripe_invoices")
    for invoice_id, (field, check) in spoiled.items():
        mine = [h for h in held.get(invoice_id, []) if h[1:3] == (field, check)]
        assert mine, (invoice_id, field, held.get(invoice_id))
        system, _field, _check, reason = mine[0]
        assert system == "stripe"
        assert invoice_id in reason and field in reason
    # Every other invoice landed, and none is held unless the generator planted it bad.
    landed = _ids(url, "stripe_invoices")
    assert set(spoiled) <= landed
    planted = {p["id"] for kind in company.planted.values() for p in kind if "id" in p}
    assert set(held) - set(spoiled) <= planted
    assert len(landed - set(held)) >= 5


def body_stamp(body: dict[str, Any]) -> str:
    """A real SystemModstamp of the batch (or a past one when it is empty)."""
    stamps = [r["SystemModstamp"] for r in body["records"] if r.get("SystemModstamp")]
    return max(stamps, default="2026-10-01T00:00:00.000+0000")


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
            revenue = {**record, "Id": "001PLANTEDNAN0000", "SystemModstamp": body_stamp(body)}
            revenue["AnnualRevenue"] = float("nan")
            body["records"] += [record, revenue]
            body["totalSize"] = int(body["totalSize"]) + 2
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
    nan = _quarantine(url, "salesforce_accounts")["001PLANTEDNAN0000"]
    assert ("salesforce", "AnnualRevenue", "finite_number") in [h[:3] for h in nan]
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


def test_a_wrongly_shaped_page_fails_the_run_with_a_line_naming_system_and_field(
    sandbox: Sandbox, tmp_path: Path, proxy_for: Callable[[str], Proxy]
) -> None:
    proxy = proxy_for(sandbox.env["STRIPE_API_BASE"])

    def tamper(request: Request, body: Any) -> Any:
        if request.path.startswith("/v1/invoices?"):
            return {**body, "data": {"id": "in_1"}}
        return body

    proxy.tamper = tamper
    url = f"sqlite:///{tmp_path / 'warehouse.db'}"
    result = dg.materialize(
        _selection("stripe_invoices"),
        resources={
            "warehouse": WarehouseResource(url=url),
            "settings": PipelineSettings(),
            "stripe": StripeResource(api_key=sandbox.env["STRIPE_API_KEY"], api_base=proxy.url),
        },
        instance=dg.DagsterInstance.ephemeral(),
        tags=range_tags(FIRST_DAY, TEST_END),
        raise_on_error=False,
    )
    with pytest.raises(RunFailed) as info:
        raise_for(result, "daily")
    line = str(info.value)
    assert "DagsterExecutionStepExecutionError" not in line
    assert "stripe: GET /v1/invoices answered an object where an array was expected" in line
    assert "[field data]" in line


def test_a_bad_skew_setting_is_refused_naming_the_variable(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("FINSYNC_MAX_FUTURE_SKEW_S", "a day")
    with pytest.raises(ConfigurationError) as info:
        future_skew_from_env()
    assert "FINSYNC_MAX_FUTURE_SKEW_S is 'a day'" in str(info.value)


def _usage(eid: str, value: Any, time: str = "2026-10-02T10:00:00Z") -> dict[str, Any]:
    event = {
        "specversion": "1.0",
        "id": eid,
        "source": "/meter/api",
        "type": "com.finsync.usage.api_calls.v1",
        "subject": "sub_A",
        "time": time,
        "data": {"value": value, "meter": "api_calls"},
    }
    return {"event": event, "ingestedAt": "2026-10-02T10:00:01Z"}


@pytest.fixture
def hostile() -> Iterator[HostileServer]:
    server = HostileServer()
    yield server
    server.close()


def test_bad_usage_events_go_to_quarantine_and_the_others_land(
    hostile: HostileServer, tmp_path: Path
) -> None:
    items: list[Any] = [
        _usage("good1", 3),
        _usage("huge", 10**30),
        _usage("nan", float("nan")),
        7,
        _usage("future", 1, time="9999-12-31T00:00:00Z"),
        _usage("good2", 4),
    ]
    hostile.script = lambda request: Reply(200, json.dumps(items).encode())
    url = f"sqlite:///{tmp_path / 'warehouse.db'}"
    result = dg.materialize(
        [usage_events, usage_events_contract],
        resources={
            "warehouse": WarehouseResource(url=url),
            "settings": PipelineSettings(max_bad_share=0.9),
            "metering": MeteringResource(api_key="om_test_" + "k" * 40, base_url=hostile.url),
        },
        instance=dg.DagsterInstance.ephemeral(),
    )
    assert result.success
    held = _quarantine(url, "usage_events")
    expected = {
        "/meter/api/huge": ("data.value", "number_in_range"),
        "/meter/api/nan": ("data.value", "finite_number"),
        "/meter/api/future": ("time", "future_timestamp"),
    }
    for source_id, (field, check) in expected.items():
        assert any(h[1:3] == (field, check) for h in held.get(source_id, [])), (
            source_id,
            held.get(source_id),
        )
        assert all(h[0] == "metering" for h in held[source_id])
    (malformed,) = [s for s in held if s.startswith("malformed-") or "malformed" in s]
    assert any(h[2] == "json_object" for h in held[malformed])
    assert "/meter/api/good1" not in held and "/meter/api/good2" not in held
    with create_engine(url).connect() as conn:
        landed = conn.execute(sa.text("SELECT COUNT(*) FROM usage_events")).scalar_one()
    assert landed == len(items)


def _ns_row(rid: str, total: Any) -> dict[str, Any]:
    return {
        "id": rid,
        "externalid": f"fs-inv-{rid}",
        "tranid": f"INV{rid}",
        "entity": "101",
        "trandate": "10/15/2026",
        "currency": "1",
        "foreigntotal": total,
        "foreignamountremaining": "0.00",
        "status": "B",
        "memo": None,
        "type": "CustInvc",
        "links": [],
    }


def test_bad_netsuite_read_back_rows_go_to_quarantine(
    sandbox: Sandbox, tmp_path: Path, proxy_for: Callable[[str], Proxy]
) -> None:
    proxy = proxy_for(sandbox.env["NETSUITE_BASE_URL"])
    proxy.keep_host = True  # the OAuth 1.0a signature covers the URL the client signed

    def tamper(request: Request, body: Any) -> Any:
        if "suiteql" not in request.path or request.param("offset") != "0":
            return body
        rows = [
            _ns_row("9001", "120.00"),
            _ns_row("9002", 10**30),
            _ns_row("9003", float("nan")),
            _ns_row("9004", "80.00"),
        ]
        return {**body, "items": rows, "count": len(rows), "hasMore": False}

    proxy.tamper = tamper
    env = sandbox.env
    url = f"sqlite:///{tmp_path / 'warehouse.db'}"
    result = dg.materialize(
        _selection("erp_invoices"),
        resources={
            "warehouse": WarehouseResource(url=url),
            "settings": PipelineSettings(max_bad_share=0.9),
            "netsuite": NetSuiteResource(
                account_id=env["NETSUITE_ACCOUNT_ID"],
                base_url=proxy.url,
                consumer_key=env["NETSUITE_CONSUMER_KEY"],
                consumer_secret=env["NETSUITE_CONSUMER_SECRET"],
                token_id=env["NETSUITE_TOKEN_ID"],
                token_secret=env["NETSUITE_TOKEN_SECRET"],
            ),
        },
        instance=dg.DagsterInstance.ephemeral(),
        tags=range_tags(dt.date(2026, 10, 15), dt.date(2026, 10, 15)),
    )
    assert result.success
    held = _quarantine(url, "erp_invoices")
    assert ("netsuite", "foreigntotal", "number_in_range") in [h[:3] for h in held["9002"]]
    assert ("netsuite", "foreigntotal", "finite_number") in [h[:3] for h in held["9003"]]
    screen_checks = {"number_in_range", "finite_number"}
    assert not {h[2] for h in held.get("9001", []) + held.get("9004", [])} & screen_checks
    assert _ids(url, "erp_invoices") == {"9001", "9002", "9003", "9004"}


def test_stripe_master_data_future_created_and_conflicts_are_held_not_cursors(
    sandbox: Sandbox, tmp_path: Path, proxy_for: Callable[[str], Proxy]
) -> None:
    proxy = proxy_for(sandbox.env["STRIPE_API_BASE"])

    def tamper(request: Request, body: Any) -> Any:
        if not request.path.startswith("/v1/customers?") or len(body.get("data", [])) < 3:
            return body
        data = body["data"]
        data[0] = {**data[0], "created": 99_999_999_999_999}
        data.insert(2, {**data[1], "name": "Another name"})
        data.append(copy.deepcopy(data[-1]))  # identical: collapses, no conflict
        return body

    proxy.tamper = tamper
    url = f"sqlite:///{tmp_path / 'warehouse.db'}"
    result = _stripe_run(sandbox, proxy, url, "stripe_customers", {})
    assert result.success
    held = _quarantine(url, "stripe_customers")
    checks = {sid: {h[2] for h in rows} for sid, rows in held.items()}
    assert sum("future_timestamp" in c for c in checks.values()) == 1
    assert sum("conflicting_copies" in c for c in checks.values()) == 1
    with create_engine(url).connect() as conn:
        cursor = json.loads(
            conn.execute(
                sa.text("SELECT cursor FROM extract_cursors WHERE stream = 'stripe_customers'")
            ).scalar_one()
        )
    assert cursor["created"] < dt.datetime.now(dt.UTC).timestamp() + 86400


def test_a_stripe_event_without_its_object_fails_the_run_naming_the_field(
    sandbox: Sandbox, tmp_path: Path, proxy_for: Callable[[str], Proxy]
) -> None:
    proxy = proxy_for(sandbox.env["STRIPE_API_BASE"])
    url = f"sqlite:///{tmp_path / 'warehouse.db'}"
    # A cursor inside Stripe's event retention, so the run reads the events list.
    now = int(dt.datetime.now(dt.UTC).timestamp())
    with WarehouseResource(url=url).get_engine().begin() as conn:
        conn.execute(
            sa.text(
                "INSERT INTO extract_cursors (stream, cursor, updated_at, run_id) "
                "VALUES ('stripe_customers', :c, '2026-12-01T00:00:00+00:00', 'seed')"
            ),
            {"c": json.dumps({"created": now - 3600, "events_from": now - 3600})},
        )

    def tamper(request: Request, body: Any) -> Any:
        if request.path.startswith("/v1/events"):
            event = {"id": "evt_broken1", "type": "customer.updated", "created": now}
            return {**body, "data": [{**event, "data": {"object": "cus_1"}}], "has_more": False}
        return body

    proxy.tamper = tamper
    result = _stripe_run(sandbox, proxy, url, "stripe_customers", {}, raise_on_error=False)
    with pytest.raises(RunFailed) as info:
        raise_for(result, "daily")
    assert "evt_broken1" in str(info.value) and "[field data.object]" in str(info.value)
