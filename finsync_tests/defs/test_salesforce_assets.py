"""The Salesforce CPQ extracts through Dagster against the sandbox: contracts and the quota stop."""

import datetime as dt
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dagster as dg
import pytest
import sqlalchemy as sa

from finsync_pipeline.definitions import defs
from finsync_pipeline.resources.salesforce import SalesforceResource
from finsync_pipeline.resources.settings import PipelineSettings
from finsync_pipeline.resources.stripe import StripeResource
from finsync_pipeline.resources.warehouse import WarehouseResource, create_engine
from finsync_pipeline.sandbox.generator import Company, CompanySpec, generate
from finsync_pipeline.sandbox.salesforce_sim import API_DAILY_LIMIT, jwt_credentials
from finsync_pipeline.sandbox.server import Sandbox
from finsync_tests.conftest import TEST_END, postgres_schema_url

# More than two batches of 200 quote lines, so a quota stop can fall between batches.
SPEC = CompanySpec(accounts=150, months=3, seed=1, end=TEST_END)
CPQ = {
    "cpq_quotes": "SBQQ__Quote__c",
    "cpq_quote_lines": "SBQQ__QuoteLine__c",
    "cpq_subscriptions": "SBQQ__Subscription__c",
}


@pytest.fixture(scope="module")
def company() -> Company:
    return generate(SPEC)


@pytest.fixture(scope="module")
def sandbox(tmp_path_factory: pytest.TempPathFactory, company: Company) -> Iterator[Sandbox]:
    sb = Sandbox(tmp_path_factory.mktemp("sandbox"))
    sb.seed(company)
    with sb:
        yield sb


def _resources(sandbox: Sandbox, url: str, share: float = 0.5) -> dict[str, Any]:
    username, pem = jwt_credentials(sandbox.store, sandbox.credentials["salesforce_org_id"])
    return {
        "warehouse": WarehouseResource(url=url),
        "settings": PipelineSettings(max_bad_share=0.2, salesforce_max_quota_share=share),
        "salesforce": SalesforceResource(
            login_url=sandbox.env["SALESFORCE_LOGIN_URL"],
            client_id=sandbox.env["SALESFORCE_CLIENT_ID"],
            username=username,
            private_key=pem,
            batch_size=200,
        ),
    }


def _stripe(sandbox: Sandbox) -> StripeResource:
    return StripeResource(
        api_key=sandbox.env["STRIPE_API_KEY"], api_base=sandbox.env["STRIPE_API_BASE"]
    )


def _selection(*names: str, checks: bool = True) -> list[Any]:
    loaded = defs()
    keys = {dg.AssetKey(n) for n in names}
    assets = [
        a for a in loaded.assets or [] if isinstance(a, dg.AssetsDefinition) and a.keys & keys
    ]
    if not checks:
        return assets
    return [
        *assets,
        *[c for c in loaded.asset_checks or [] if {k.asset_key for k in c.check_keys} & keys],
    ]


def _metadata(result: dg.ExecuteInProcessResult, asset: str) -> dict[str, Any]:
    (event,) = [
        e for e in result.get_asset_materialization_events() if e.asset_key == dg.AssetKey(asset)
    ]
    return {k: getattr(v, "value", v) for k, v in event.materialization.metadata.items()}


def _ids(url: str, table: str) -> list[str]:
    with create_engine(url).connect() as conn:
        return [r[0] for r in conn.execute(sa.text(f"SELECT source_id FROM {table}"))]


@pytest.mark.parametrize(
    "backend", ["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)]
)
def test_cpq_extracts_land_every_record_and_quarantine_the_bad_quantity(
    sandbox: Sandbox, company: Company, tmp_path: Path, backend: str
) -> None:
    urls = (
        iter([f"sqlite:///{tmp_path / 'warehouse.db'}"])
        if backend == "sqlite"
        else postgres_schema_url()
    )
    for url in urls:
        result = dg.materialize(
            _selection(*CPQ),
            resources=_resources(sandbox, url),
            instance=dg.DagsterInstance.ephemeral(),
        )
        assert result.success
        for table, sobject in CPQ.items():
            assert sorted(_ids(url, table)) == sorted(r["Id"] for r in company.salesforce[sobject])
            meta = _metadata(result, table)
            assert meta["stopped at quota share"] is False
            assert meta["mode"] == "full (first run)"
            assert meta["dagster/column_schema"].columns
        checks = {e.asset_key.to_user_string(): e for e in result.get_asset_check_evaluations()}
        assert set(checks) == set(CPQ) and all(e.passed for e in checks.values())
        planted = {p["id"] for p in company.planted["invalid_quantity"]}
        with create_engine(url).connect() as conn:
            quarantined = {
                (r.asset, r.source_id, r.field, r.check_name)
                for r in conn.execute(
                    sa.text("SELECT asset, source_id, field, check_name FROM quarantine")
                )
            }
        assert {q[1] for q in quarantined} == planted
        assert all(q[0] == "cpq_quote_lines" and q[2] == "quantity" for q in quarantined)


def test_quota_share_stops_cleanly_and_the_next_run_resumes(
    sandbox: Sandbox, company: Company, tmp_path: Path
) -> None:
    url = f"sqlite:///{tmp_path / 'warehouse.db'}"
    expected = sorted(r["Id"] for r in company.salesforce["SBQQ__QuoteLine__c"])
    assert len(expected) > 400
    sim = sandbox.salesforce
    # Half of a 4-call limit: the first batch (usage 1) leaves room for one more call, the
    # second (usage 2) for none, so the run stops after two of three batches.
    sim.set_api_usage(0)
    sim.set_daily_limit(4)
    try:
        first = dg.materialize(
            _selection("cpq_quote_lines", checks=False),
            resources=_resources(sandbox, url, share=0.5),
            instance=dg.DagsterInstance.ephemeral(),
        )
    finally:
        sim.set_daily_limit(API_DAILY_LIMIT)
    assert first.success
    meta = _metadata(first, "cpq_quote_lines")
    assert meta["stopped at quota share"] is True
    assert meta["dagster/row_count"] == 400
    assert meta["records left for the next run"] == len(expected) - 400
    assert meta["salesforce daily API usage"] == "2/4"
    landed = _ids(url, "cpq_quote_lines")
    assert len(landed) == 400
    by_id = {r["Id"]: r for r in company.salesforce["SBQQ__QuoteLine__c"]}
    # What landed is the oldest part by SystemModstamp, and the cursor is its newest record.
    order = sorted(expected, key=lambda i: (_instant(by_id[i]["SystemModstamp"]), i))
    assert sorted(landed) == sorted(order[:400])
    with create_engine(url).connect() as conn:
        cursor = conn.execute(
            sa.text("SELECT cursor FROM extract_cursors WHERE stream = 'cpq_quote_lines'")
        ).scalar_one()
    assert cursor == _instant(by_id[order[399]]["SystemModstamp"]).isoformat()

    second = dg.materialize(
        _selection("cpq_quote_lines", checks=False),
        resources=_resources(sandbox, url, share=0.5),
        instance=dg.DagsterInstance.ephemeral(),
    )
    meta = _metadata(second, "cpq_quote_lines")
    assert meta["stopped at quota share"] is False and meta["mode"] == "incremental"
    # Nothing missing, nothing twice.
    assert sorted(_ids(url, "cpq_quote_lines")) == expected


def _instant(value: str) -> dt.datetime:
    return dt.datetime.strptime(value, "%Y-%m-%dT%H:%M:%S.%f%z").astimezone(dt.UTC)


def test_accounts_landed_by_a_run_killed_before_its_check_are_checked_by_the_next(
    sandbox: Sandbox, company: Company, tmp_path: Path
) -> None:
    """A run killed after the Account extract landed and moved its cursor, but before the
    contract check ran, leaves records no later landing brings back: the next run's check
    takes them, so the planted bad currency goes to quarantine instead of failing customers."""
    url = f"sqlite:///{tmp_path / 'warehouse.db'}"
    resources = {**_resources(sandbox, url), "stripe": _stripe(sandbox)}
    landed_only = dg.materialize(
        _selection("salesforce_accounts", checks=False),
        resources=resources,
        instance=dg.DagsterInstance.ephemeral(),
    )
    assert landed_only.success
    next_run = dg.materialize(
        _selection("salesforce_accounts", "stripe_customers", "customers"),
        resources=resources,
        instance=dg.DagsterInstance.ephemeral(),
    )
    assert next_run.success
    planted = {p["id"] for p in company.planted["bad_currency_code"]}
    with create_engine(url).connect() as conn:
        held = {
            r[0]
            for r in conn.execute(
                sa.text("SELECT source_id FROM quarantine WHERE asset = 'salesforce_accounts'")
            )
        }
        carried = {r[0] for r in conn.execute(sa.text("SELECT customer_key FROM customers"))}
    assert planted and planted <= held
    assert not planted & carried
    assert len(carried) > len(company.salesforce["Account"]) // 2
