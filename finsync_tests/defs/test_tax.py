"""invoice_tax_checks through Dagster: the sandbox over HTTP, the AvaTax simulator next to it."""

import datetime as dt
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dagster as dg
import pytest
import sqlalchemy as sa

import finsync_pipeline.definitions
from finsync_pipeline import ledger
from finsync_pipeline.partitions import range_tags
from finsync_pipeline.resources.avalara import AvalaraResource
from finsync_pipeline.resources.netsuite import NetSuiteResource
from finsync_pipeline.resources.salesforce import SalesforceResource
from finsync_pipeline.resources.settings import PipelineSettings
from finsync_pipeline.resources.stripe import StripeResource
from finsync_pipeline.resources.warehouse import WarehouseResource, create_engine
from finsync_pipeline.sandbox.avalara_sim import AvalaraSimulator
from finsync_pipeline.sandbox.generator import CompanySpec, add_months, generate
from finsync_pipeline.sandbox.http_base import SimServer
from finsync_pipeline.sandbox.server import Sandbox
from finsync_tests.conftest import TEST_END, postgres_schema_url

DEFINITIONS_DIR = Path(finsync_pipeline.definitions.__file__).parent
SPEC = CompanySpec(accounts=40, months=2, seed=5, end=TEST_END)
FIRST_DAY = add_months(TEST_END, -SPEC.months) + dt.timedelta(days=1)
ACCOUNT_ID = "2000111222"
LICENSE_KEY = "A1B2C3D4E5F60718"


@pytest.fixture(scope="module")
def sandbox(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sandbox]:
    sb = Sandbox(tmp_path_factory.mktemp("sandbox"))
    sb.seed(generate(SPEC))
    with sb:
        yield sb


@pytest.fixture(scope="module")
def avatax(sandbox: Sandbox) -> Iterator[tuple[AvalaraSimulator, str]]:
    sim = AvalaraSimulator(
        sandbox.faults, sandbox.store, account_id=ACCOUNT_ID, license_key=LICENSE_KEY
    )
    server = SimServer(("127.0.0.1", 0), sim)
    server.start()
    yield sim, f"http://127.0.0.1:{server.port}"
    server.stop()


@pytest.fixture(
    scope="module", params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)]
)
def warehouse_url(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path_factory.mktemp('warehouse') / 'warehouse.db'}"
    else:
        yield from postgres_schema_url()


def _resources(env: dict[str, str], warehouse_url: str, avatax_url: str) -> dict[str, Any]:
    return {
        "warehouse": WarehouseResource(url=warehouse_url),
        # The small company's planted problems are a larger share of its records.
        "settings": PipelineSettings(max_bad_share=0.2),
        "stripe": StripeResource(api_key=env["STRIPE_API_KEY"], api_base=env["STRIPE_API_BASE"]),
        "salesforce": SalesforceResource(
            login_url=env["SALESFORCE_LOGIN_URL"],
            client_id=env["SALESFORCE_CLIENT_ID"],
            client_secret=env["SALESFORCE_CLIENT_SECRET"],
        ),
        "netsuite": NetSuiteResource(
            account_id=env["NETSUITE_ACCOUNT_ID"],
            base_url=env["NETSUITE_BASE_URL"],
            consumer_key=env["NETSUITE_CONSUMER_KEY"],
            consumer_secret=env["NETSUITE_CONSUMER_SECRET"],
            token_id=env["NETSUITE_TOKEN_ID"],
            token_secret=env["NETSUITE_TOKEN_SECRET"],
        ),
        "avalara": AvalaraResource(
            account_id=ACCOUNT_ID, license_key=LICENSE_KEY, base_url=avatax_url
        ),
    }


def _materialize(resources: dict[str, Any], selection: dg.AssetSelection) -> Any:
    # The defs folder without the mode's resources: only the tax check's lineage is handed
    # over, with the resources it needs, whatever the other stages need.
    loaded = dg.load_from_defs_folder(path_within_project=DEFINITIONS_DIR)
    owner = {
        key: a for a in loaded.assets or [] if isinstance(a, dg.AssetsDefinition) for key in a.keys
    }
    keys: set[dg.AssetKey] = set()
    todo = [dg.AssetKey("invoice_tax_checks")]
    while todo:
        key = todo.pop()
        if key in keys or key not in owner:
            continue
        keys.add(key)
        todo.extend(owner[key].asset_deps[key])
    assets = list({id(owner[k]): owner[k] for k in keys}.values())
    checks = [
        c
        for c in loaded.asset_checks or []
        if isinstance(c, dg.AssetChecksDefinition) and {k.asset_key for k in c.check_keys} <= keys
    ]
    return dg.materialize(
        [*assets, *checks],
        resources=resources,
        instance=dg.DagsterInstance.ephemeral(),
        tags=range_tags(FIRST_DAY, TEST_END),
        selection=selection,
    )


@pytest.fixture(scope="module")
def checked(
    sandbox: Sandbox, avatax: tuple[AvalaraSimulator, str], warehouse_url: str
) -> tuple[dg.ExecuteInProcessResult, dict[str, Any]]:
    """The tax check and everything upstream of it, over the whole history, in one run."""
    resources = _resources(sandbox.env, warehouse_url, avatax[1])
    result = _materialize(resources, dg.AssetSelection.assets("invoice_tax_checks").upstream())
    return result, resources


def _rows(url: str, sql: str, **params: Any) -> list[Any]:
    with create_engine(url).connect() as conn:
        return list(conn.execute(sa.text(sql), params))


def _metadata(result: dg.ExecuteInProcessResult) -> dict[str, Any]:
    # A single-run backfill reports one materialization per day, with the run's figures.
    events = [
        e
        for e in result.get_asset_materialization_events()
        if e.asset_key == dg.AssetKey("invoice_tax_checks")
    ]
    assert events
    event = events[-1]
    return {k: getattr(v, "value", v) for k, v in event.materialization.metadata.items()}


def test_every_planted_mismatch_and_no_clean_invoice_is_a_tax_exception(
    checked: tuple[dg.ExecuteInProcessResult, dict[str, Any]], sandbox: Sandbox
) -> None:
    result, resources = checked
    assert result.success
    url = resources["warehouse"].url
    planted = {p["id"] for p in sandbox.planted()["tax_mismatch"]}
    assert planted
    open_mismatches = _rows(
        url,
        "SELECT source_id, owner_queue, severity, correlation_id, detail FROM finance_exceptions "
        "WHERE kind = 'tax_mismatch' AND status = 'open'",
    )
    assert {r.source_id for r in open_mismatches} == planted
    for row in open_mismatches:
        assert (row.owner_queue, row.severity) == ("tax", "high")
        assert row.correlation_id and row.correlation_id in row.detail
        assert "AvaTax computes" in row.detail
    checks = _rows(url, "SELECT * FROM invoice_tax_checks")
    live = _rows(
        url, "SELECT invoice_id FROM invoices WHERE status IN ('open', 'paid', 'uncollectible')"
    )
    assert {r.invoice_id for r in checks} == {r.invoice_id for r in live}
    # A correctly taxed invoice agrees with the engine to the minor unit, not just within the
    # tolerance: both round per line, half up.
    assert {r.invoice_id for r in checks if r.difference_minor != 0} == planted
    assert {r.invoice_id for r in checks if not r.within_tolerance} == planted
    assert all(r.run_id == result.run_id for r in checks)
    assert not _rows(url, "SELECT 1 FROM finance_exceptions WHERE kind = 'tax_address_missing'")


def test_metadata_reports_figures_per_currency_and_requests(
    checked: tuple[dg.ExecuteInProcessResult, dict[str, Any]], sandbox: Sandbox
) -> None:
    result, resources = checked
    meta = _metadata(result)
    n_checks = len(_rows(resources["warehouse"].url, "SELECT 1 FROM invoice_tax_checks"))
    assert meta["dagster/row_count"] == n_checks
    assert meta["mismatches"] == len(sandbox.planted()["tax_mismatch"])
    assert meta["AvaTax requests"] == n_checks
    assert "USD" in meta["billed tax by currency"]
    assert meta["billed tax by currency"] != meta["AvaTax tax by currency"]
    assert LICENSE_KEY not in repr(meta)


def test_exempt_and_reverse_charge_customers_raise_no_tax_mismatch(
    checked: tuple[dg.ExecuteInProcessResult, dict[str, Any]], sandbox: Sandbox
) -> None:
    result, resources = checked
    assert result.success
    url = resources["warehouse"].url
    planted = sandbox.planted()
    (exempt,) = planted["tax_exempt_customer"]
    (reverse,) = planted["reverse_charge_customer"]
    profiles = {
        r.stripe_customer_id: r
        for r in _rows(
            url,
            "SELECT stripe_customer_id, tax_exempt, has_tax_id, tax_id, tax_exemption_number "
            "FROM customers WHERE stripe_customer_id IN (:a, :b)",
            a=exempt["id"],
            b=reverse["id"],
        )
    }
    # The profile reached the canonical customer from Stripe: the VAT id only because the
    # extract asked for it (expand[]=data.tax_ids).
    assert profiles[exempt["id"]].tax_exempt == "exempt"
    assert profiles[exempt["id"]].tax_exemption_number
    assert profiles[reverse["id"]].tax_exempt == "reverse"
    assert profiles[reverse["id"]].has_tax_id == 1
    assert profiles[reverse["id"]].tax_id.startswith(("FR", "NL"))
    checks = _rows(
        url,
        "SELECT c.invoice_id, c.billed_tax_minor, c.engine_tax_minor, c.within_tolerance, "
        "i.stripe_customer_id FROM invoice_tax_checks c "
        "JOIN invoices i ON i.invoice_id = c.invoice_id WHERE i.stripe_customer_id IN (:a, :b)",
        a=exempt["id"],
        b=reverse["id"],
    )
    assert {r.stripe_customer_id for r in checks} == {exempt["id"], reverse["id"]}
    # Stripe billed no tax, and AvaTax, told of the exemption and the VAT id, agrees.
    assert all(
        (r.billed_tax_minor, r.engine_tax_minor, r.within_tolerance) == (0, 0, 1) for r in checks
    )
    mismatched = {
        r.source_id
        for r in _rows(
            url,
            "SELECT source_id FROM finance_exceptions WHERE kind = 'tax_mismatch' "
            "AND status = 'open'",
        )
    }
    assert not mismatched & {r.invoice_id for r in checks}
    # The real mismatch is still caught.
    assert mismatched == {p["id"] for p in planted["tax_mismatch"]}


def test_fixed_invoice_resolves_and_lost_address_opens_an_exception(
    checked: tuple[dg.ExecuteInProcessResult, dict[str, Any]],
    sandbox: Sandbox,
) -> None:
    _result, resources = checked
    url = resources["warehouse"].url
    fixed = sorted(p["id"] for p in sandbox.planted()["tax_mismatch"])[0]
    engine = create_engine(url)
    with engine.begin() as conn:
        # Finance re-bills the right tax: the canonical invoice now carries the engine's figure.
        conn.execute(
            sa.text(
                "UPDATE invoices SET tax_minor = (SELECT engine_tax_minor FROM invoice_tax_checks "
                "WHERE invoice_id = :id) WHERE invoice_id = :id"
            ),
            {"id": fixed},
        )
        # A customer's billing country is wiped in the CRM.
        victim = conn.execute(
            sa.text(
                "SELECT customer_key FROM invoices WHERE invoice_id <> :id AND status = 'paid' "
                "ORDER BY invoice_id LIMIT 1"
            ),
            {"id": fixed},
        ).scalar_one()
        payload = ledger.loads(
            conn.execute(
                sa.text("SELECT payload FROM salesforce_accounts WHERE source_id = :k"),
                {"k": victim},
            ).scalar_one()
        )
        payload["BillingCountry"] = None
        conn.execute(
            sa.text("UPDATE salesforce_accounts SET payload = :p WHERE source_id = :k"),
            {"p": ledger.dumps(payload), "k": victim},
        )
    again = _materialize(resources, dg.AssetSelection.assets("invoice_tax_checks"))
    assert again.success
    status = {
        r.source_id: r.status
        for r in _rows(
            url,
            "SELECT source_id, status FROM finance_exceptions WHERE kind = :k",
            k="tax_mismatch",
        )
    }
    assert status[fixed] == "resolved"
    missing = _rows(
        url,
        "SELECT e.source_id, e.owner_queue, e.detail FROM finance_exceptions e "
        "JOIN invoices i ON i.invoice_id = e.source_id "
        "WHERE e.kind = 'tax_address_missing' AND e.status = 'open'",
    )
    victims = _rows(
        url,
        "SELECT invoice_id FROM invoices WHERE customer_key = :k "
        "AND status IN ('open', 'paid', 'uncollectible')",
        k=victim,
    )
    assert {r.source_id for r in missing} == {r.invoice_id for r in victims}
    assert all(r.owner_queue == "tax" and "BillingCountry" in r.detail for r in missing)
    assert _metadata(again)["addresses missing"] == len(victims)
