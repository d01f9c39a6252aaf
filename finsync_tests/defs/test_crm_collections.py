"""CRM writeback in sObject Collections: what a writeback costs of the org's daily API quota, and
a record Salesforce refuses inside a collection while the rest of it lands."""

import datetime as dt
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dagster as dg
import pytest
import sqlalchemy as sa

from finsync_pipeline import ledger
from finsync_pipeline.definitions import defs
from finsync_pipeline.resources.salesforce import SalesforceResource, soql_select
from finsync_pipeline.resources.settings import PipelineSettings
from finsync_pipeline.resources.warehouse import WarehouseResource, create_engine
from finsync_pipeline.sandbox.generator import CompanySpec, generate
from finsync_pipeline.sandbox.server import Sandbox

MISSING = "006000000000000AAA"  # well formed, no such Opportunity in the org


@pytest.fixture(scope="module")
def sandbox(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sandbox]:
    box = Sandbox(tmp_path_factory.mktemp("crm-collections"))
    box.seed(generate(CompanySpec(accounts=160, months=2, seed=8, end=dt.date(2026, 10, 31))))
    with box:
        yield box


def _resources(sandbox: Sandbox, url: str) -> dict[str, Any]:
    env = sandbox.env
    return {
        "warehouse": WarehouseResource(url=url),
        "settings": PipelineSettings(),
        "salesforce": SalesforceResource(
            login_url=env["SALESFORCE_LOGIN_URL"],
            client_id=env["SALESFORCE_CLIENT_ID"],
            client_secret=env["SALESFORCE_CLIENT_SECRET"],
        ),
    }


def _opportunities(resources: dict[str, Any]) -> list[str]:
    client = resources["salesforce"].get_client()
    return [r["Id"] for r in client.query(soql_select("Opportunity", ["Id"], order_by="Id"))]


def _enqueue(url: str, statuses: dict[str, dict[str, Any]]) -> None:
    docs = [
        ledger.LedgerDoc(
            "salesforce", "opportunity_status", rid, "finsync", rid, f"r-{rid}", None, payload
        )
        for rid, payload in statuses.items()
    ]
    with create_engine(url).begin() as conn:
        ledger.enqueue(conn, docs, run_id="t", repost_changed=True)


def _writeback(resources: dict[str, Any]) -> dict[str, Any]:
    assets = [
        a
        for a in defs().assets or []
        if isinstance(a, dg.AssetsDefinition) and dg.AssetKey("crm_status_writeback") in a.keys
    ]
    result = dg.materialize(assets, resources=resources, instance=dg.DagsterInstance.ephemeral())
    [event] = result.get_asset_materialization_events()
    metadata = event.materialization.metadata
    return {k: getattr(v, "value", v) for k, v in metadata.items()}


def _status(text: str) -> dict[str, Any]:
    return {"Finsync_Invoice_Status__c": text, "Finsync_Paid__c": False}


def test_a_writeback_of_n_statuses_costs_one_call_per_200(tmp_path: Path, sandbox: Sandbox) -> None:
    url = f"sqlite:///{tmp_path / 'warehouse.db'}"
    resources = _resources(sandbox, url)
    ids = _opportunities(resources)
    assert len(ids) > 200
    _enqueue(url, {rid: _status(f"Invoiced in ERP (invoice {rid[-4:]}), paid") for rid in ids})
    before = sandbox.salesforce.request_count
    sent = _writeback(resources)
    assert sent["changed (sent)"] == len(ids) and sent["rejected"] == 0
    # One token request, then one sObject Collections call per 200 statuses.
    assert sandbox.salesforce.request_count - before == 1 + math.ceil(len(ids) / 200)
    landed = (
        resources["salesforce"]
        .get_client()
        .query(soql_select("Opportunity", ["Id", "Finsync_Invoice_Status__c"]))
    )
    assert {r["Id"]: r["Finsync_Invoice_Status__c"] for r in landed} == {
        rid: f"Invoiced in ERP (invoice {rid[-4:]}), paid" for rid in ids
    }
    # Nothing changed since: the next run costs no call at all.
    before = sandbox.salesforce.request_count
    assert _writeback(resources)["changed (sent)"] == 0
    assert sandbox.salesforce.request_count == before


def test_a_record_refused_inside_a_collection_is_its_own_exception(
    tmp_path: Path, sandbox: Sandbox
) -> None:
    url = f"sqlite:///{tmp_path / 'warehouse.db'}"
    resources = _resources(sandbox, url)
    good = _opportunities(resources)[:3]
    too_long = good.pop()
    statuses = {rid: _status("Not yet invoiced (collection)") for rid in good}
    statuses[MISSING] = _status("Not yet invoiced")
    statuses[too_long] = _status("x" * 300)
    _enqueue(url, statuses)
    before = sandbox.salesforce.request_count
    sent = _writeback(resources)
    assert (sent["changed (sent)"], sent["rejected"]) == (2, 2)
    assert sandbox.salesforce.request_count - before == 2  # the token, one collection
    with create_engine(url).connect() as conn:
        rows = conn.execute(
            sa.text(
                "SELECT source_id, kind, source_system, owner_queue, detail "
                "FROM finance_exceptions WHERE status = 'open' ORDER BY source_id"
            )
        ).all()
        states = dict(
            conn.execute(
                sa.text("SELECT external_id, state FROM posting_ledger WHERE erp = 'salesforce'")
            ).all()
        )
    details = {r.source_id: r.detail for r in rows}
    assert {(r.kind, r.source_system, r.owner_queue) for r in rows} == {
        ("posting_rejected", "salesforce", "revops")
    }
    assert set(details) == {MISSING, too_long}
    assert details[MISSING].startswith(f"Salesforce refused opportunity_status {MISSING}")
    assert "ENTITY_IS_DELETED: entity is deleted" in details[MISSING]
    assert "STRING_TOO_LONG" in details[too_long]
    assert details[too_long].endswith("[field Finsync_Invoice_Status__c]")
    assert states == {
        good[0]: "posted",
        good[1]: "posted",
        MISSING: "rejected",
        too_long: "rejected",
    }
    landed = (
        resources["salesforce"]
        .get_client()
        .query(
            soql_select(
                "Opportunity",
                ["Id", "Finsync_Invoice_Status__c"],
                where=[("Id", "IN", [*good, too_long])],
            )
        )
    )
    texts = {r["Id"]: r["Finsync_Invoice_Status__c"] for r in landed}
    assert texts[good[0]] == texts[good[1]] == "Not yet invoiced (collection)"
    assert texts[too_long] != "x" * 300
