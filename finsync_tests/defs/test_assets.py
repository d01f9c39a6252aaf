"""The assets and the posting sensor, run through Dagster against the sandbox over HTTP."""

import datetime as dt
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import dagster as dg
import pytest
import sqlalchemy as sa

from finsync_pipeline import exceptions_queue, ledger
from finsync_pipeline.definitions import defs
from finsync_pipeline.defs.automation.definitions import automation, erp_posting_sensor
from finsync_pipeline.errors import ConfigurationError
from finsync_pipeline.partitions import RANGE_END_TAG, RANGE_START_TAG, range_tags
from finsync_pipeline.posting_flows import BATCH_WINDOWS_ENV, FLOWS_TAG, batch_windows
from finsync_pipeline.resources.avalara import AvalaraResource
from finsync_pipeline.resources.metering import MeteringResource
from finsync_pipeline.resources.netsuite import NetSuiteResource
from finsync_pipeline.resources.salesforce import SalesforceResource
from finsync_pipeline.resources.settings import PipelineSettings
from finsync_pipeline.resources.stripe import StripeResource
from finsync_pipeline.resources.warehouse import WarehouseResource, create_engine
from finsync_pipeline.sandbox.generator import CompanySpec, add_months, generate
from finsync_pipeline.sandbox.server import Sandbox
from finsync_tests.conftest import TEST_END, postgres_schema_url

SPEC = CompanySpec(accounts=40, months=2, seed=5, end=TEST_END)
FIRST_DAY = add_months(TEST_END, -SPEC.months) + dt.timedelta(days=1)


@pytest.fixture(scope="module")
def sandbox(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sandbox]:
    sb = Sandbox(tmp_path_factory.mktemp("sandbox"))
    sb.seed(generate(SPEC))
    with sb:
        yield sb


@pytest.fixture(
    scope="module", params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)]
)
def warehouse_url(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    """The whole pipeline runs once on a SQLite file and once on PostgreSQL."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path_factory.mktemp('warehouse') / 'warehouse.db'}"
    else:
        yield from postgres_schema_url()


def _resources(
    env: dict[str, str], warehouse_url: str, max_bad_share: float = 0.2, min_bad_records: int = 5
) -> dict[str, Any]:
    # A small company carries the same planted problems as a large one, so its bad share is
    # higher; the threshold is raised to let the run go on and the rows go to quarantine.
    return {
        "warehouse": WarehouseResource(url=warehouse_url),
        "settings": PipelineSettings(max_bad_share=max_bad_share, min_bad_records=min_bad_records),
        "stripe": StripeResource(api_key=env["STRIPE_API_KEY"], api_base=env["STRIPE_API_BASE"]),
        "salesforce": SalesforceResource(
            login_url=env["SALESFORCE_LOGIN_URL"],
            client_id=env["SALESFORCE_CLIENT_ID"],
            client_secret=env["SALESFORCE_CLIENT_SECRET"],
        ),
        "metering": MeteringResource(
            api_key=env["METERING_API_KEY"], base_url=env["METERING_BASE_URL"]
        ),
        "avalara": AvalaraResource(
            account_id=env["AVALARA_ACCOUNT_ID"],
            license_key=env["AVALARA_LICENSE_KEY"],
            base_url=env["AVALARA_BASE_URL"],
            company_code=env["AVALARA_COMPANY_CODE"],
        ),
        "netsuite": NetSuiteResource(
            account_id=env["NETSUITE_ACCOUNT_ID"],
            base_url=env["NETSUITE_BASE_URL"],
            consumer_key=env["NETSUITE_CONSUMER_KEY"],
            consumer_secret=env["NETSUITE_CONSUMER_SECRET"],
            token_id=env["NETSUITE_TOKEN_ID"],
            token_secret=env["NETSUITE_TOKEN_SECRET"],
        ),
    }


@pytest.fixture(scope="module")
def pipeline(
    sandbox: Sandbox, warehouse_url: str
) -> tuple[dg.ExecuteInProcessResult, str, dict[str, Any]]:
    """Every asset and check over the whole history, in one run, as a backfill would."""
    url = warehouse_url
    resources = _resources(sandbox.env, url)
    loaded = defs()
    result = dg.materialize(
        [*(loaded.assets or []), *(loaded.asset_checks or [])],  # type: ignore[list-item]
        resources=resources,
        instance=dg.DagsterInstance.ephemeral(),
        tags=range_tags(FIRST_DAY, TEST_END),
    )
    return result, url, resources


def _scalar(url: str, sql: str) -> Any:
    with create_engine(url).connect() as conn:
        return conn.execute(sa.text(sql)).scalar_one()


def _metadata(result: dg.ExecuteInProcessResult, asset: str) -> dict[str, Any]:
    events = [
        e for e in result.get_asset_materialization_events() if e.asset_key == dg.AssetKey(asset)
    ]
    assert events, asset
    return {k: getattr(v, "value", v) for k, v in events[-1].materialization.metadata.items()}


def test_one_run_backfills_every_partition_of_the_range(
    pipeline: tuple[dg.ExecuteInProcessResult, str, dict[str, Any]],
) -> None:
    result, _url, _ = pipeline
    assert result.success
    days = (TEST_END - FIRST_DAY).days + 1
    invoices = [
        e
        for e in result.get_asset_materialization_events()
        if e.asset_key == dg.AssetKey("stripe_invoices")
    ]
    assert len(invoices) == days  # one materialization per day partition, from one run


def test_extract_lands_every_invoice_with_every_line(
    pipeline: tuple[dg.ExecuteInProcessResult, str, dict[str, Any]], sandbox: Sandbox
) -> None:
    _result, url, _ = pipeline
    company = generate(SPEC)
    lo = int(dt.datetime.combine(FIRST_DAY, dt.time(), tzinfo=dt.UTC).timestamp())
    expected = [i for i in company.stripe["invoice"] if i["created"] >= lo]
    assert _scalar(url, "SELECT COUNT(*) FROM stripe_invoices") == len(expected)
    longest = max(len(i["lines"]["data"]) for i in expected)
    assert longest > 10
    with create_engine(url).connect() as conn:
        kept = max(
            len(ledger.loads(p)["lines"]["data"])
            for (p,) in conn.execute(sa.text("SELECT payload FROM stripe_invoices"))
        )
    assert kept == longest


def test_contract_checks_pass_under_the_threshold_and_quarantine_bad_rows(
    pipeline: tuple[dg.ExecuteInProcessResult, str, dict[str, Any]],
) -> None:
    result, url, _ = pipeline
    evaluations = {
        (e.asset_key.to_user_string(), e.check_name): e
        for e in result.get_asset_check_evaluations()
    }
    check = evaluations[("stripe_invoices", "contract")]
    assert check.passed
    meta = {k: getattr(v, "value", v) for k, v in check.metadata.items()}
    assert meta["rows quarantined"] >= 2
    assert meta["rows quarantined"] == _scalar(
        url, "SELECT COUNT(DISTINCT source_id) FROM quarantine WHERE asset = 'stripe_invoices'"
    )
    # A quarantined invoice never reaches the canonical table, so it is never posted.
    assert (
        _scalar(
            url,
            "SELECT COUNT(*) FROM invoices WHERE invoice_id IN "
            "(SELECT source_id FROM quarantine WHERE asset = 'stripe_invoices')",
        )
        == 0
    )


def test_posting_and_reconciliation_metadata(
    pipeline: tuple[dg.ExecuteInProcessResult, str, dict[str, Any]], sandbox: Sandbox
) -> None:
    result, url, _ = pipeline
    posted = _metadata(result, "erp_postings")
    held = {
        t: len(sandbox.netsuite_records(t))
        for t in ("customer", "invoice", "creditmemo", "customerpayment", "customerrefund")
    }
    assert held["creditmemo"] > 0 and held["customerpayment"] > 0 and held["customerrefund"] > 0
    assert posted["posted"] == sum(held.values())
    assert posted["rejected"] == 0
    payments = _metadata(result, "payment_reconciliation")
    assert payments["drift"] == 0
    assert payments["matched"] == held["customerpayment"] + held["customerrefund"]
    # Each refund paid its amount out of the credit memo of the credit note it refunds.
    memos = {str(m["id"]): m for m in sandbox.netsuite_records("creditmemo")}
    for refund in sandbox.netsuite_records("customerrefund"):
        (line,) = refund["apply"]["items"]
        memo = memos[line["doc"]["id"]]
        refund_id = refund["externalId"].removeprefix("STRIPE_")
        note = _scalar(url, f"SELECT credit_note_id FROM refunds WHERE refund_id = '{refund_id}'")
        assert memo["externalId"] == f"STRIPE_{note}"
        assert line["amount"] == refund["total"] <= memo["total"]
        assert memo["entity"]["id"] == refund["customer"]["id"]
    recon = _metadata(result, "invoice_reconciliation")
    assert recon["drift"] == 0
    # Every NetSuite invoice matches billing, but one paid out of band: NetSuite still shows
    # its balance, held for the paid_out_of_band exception finance works.
    planted = sandbox.planted()
    paid_outside = len(planted["paid_out_of_band"])
    # A net-negative invoice is matched by the credit memo that stands for it.
    credits = len(planted["net_negative"])
    assert recon["matched"] + paid_outside == len(sandbox.netsuite_records("invoice")) + credits
    assert recon["held_by_exception"] >= paid_outside
    invoices = _metadata(result, "invoices")
    assert invoices["dagster/row_count"] == _scalar(url, "SELECT COUNT(*) FROM invoices")
    assert "USD" in invoices["total by currency"]
    evaluations = {
        (e.asset_key.to_user_string(), e.check_name): e.passed
        for e in result.get_asset_check_evaluations()
    }
    assert evaluations[("invoice_reconciliation", "no_drift")] is True


def test_incremental_master_data_reads_only_changes(
    pipeline: tuple[dg.ExecuteInProcessResult, str, dict[str, Any]],
) -> None:
    _result, url, resources = pipeline
    loaded = defs()
    again = dg.materialize(
        [
            a
            for a in loaded.assets or []
            if isinstance(a, dg.AssetsDefinition) and dg.AssetKey("salesforce_accounts") in a.keys
        ],
        resources=resources,
        instance=dg.DagsterInstance.ephemeral(),
    )
    meta = _metadata(again, "salesforce_accounts")
    assert meta["mode"] == "incremental"
    # Only the records inside the cursor's short lookback come back, not the whole org.
    assert meta["dagster/row_count"] < _scalar(url, "SELECT COUNT(*) FROM salesforce_accounts")


def test_a_bad_share_above_the_threshold_stops_the_run_before_downstream(
    sandbox: Sandbox, tmp_path: Path
) -> None:
    url = f"sqlite:///{tmp_path / 'warehouse.db'}"
    loaded = defs()
    result = dg.materialize(
        [*(loaded.assets or []), *(loaded.asset_checks or [])],  # type: ignore[list-item]
        resources=_resources(sandbox.env, url, max_bad_share=0.0, min_bad_records=1),
        instance=dg.DagsterInstance.ephemeral(),
        tags=range_tags(FIRST_DAY, TEST_END),
        raise_on_error=False,
        selection=dg.AssetSelection.assets(
            "stripe_invoices", "stripe_customers", "invoices", "invoice_lines"
        ),
    )
    assert not result.success
    failed = [e for e in result.get_asset_check_evaluations() if not e.passed]
    assert {e.asset_key.to_user_string() for e in failed} >= {"stripe_invoices"}
    # The blocking check kept the bad partition range out of the canonical invoices.
    assert _scalar(url, "SELECT COUNT(*) FROM invoices") == 0
    assert _scalar(url, "SELECT COUNT(*) FROM quarantine WHERE asset = 'stripe_invoices'") >= 2


def _sensor(resources: dict[str, Any]) -> dg.SensorResult | dg.SkipReason:
    context = dg.build_sensor_context(resources={"warehouse": resources["warehouse"]})
    return erp_posting_sensor(context)  # type: ignore[return-value]


def _doc(doc_type: str, source_id: str, day: str) -> ledger.LedgerDoc:
    return ledger.LedgerDoc(
        "netsuite",
        doc_type,
        f"STRIPE_{source_id}",
        "stripe",
        source_id,
        "fs-00000000000000000000",
        day,
        {"memo": source_id},
    )


def test_posting_sensor_asks_for_one_run_per_backlog(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'warehouse.db'}"
    resources = {"warehouse": WarehouseResource(url=url)}
    idle = _sensor(resources)
    assert isinstance(idle, dg.SensorResult) and not idle.run_requests

    with create_engine(url).begin() as conn:
        ledger.enqueue(
            conn, [_doc("invoice", "in_x", "2026-10-05")], run_id="test", repost_changed=False
        )
    first = _sensor(resources)
    assert isinstance(first, dg.SensorResult) and first.run_requests
    request = first.run_requests[0]
    assert request.tags[RANGE_START_TAG] == request.tags[RANGE_END_TAG] == "2026-10-05"
    again = _sensor(resources)
    assert isinstance(again, dg.SensorResult) and again.run_requests
    # The same backlog gives the same run key, so the daemon launches it once.
    assert again.run_requests[0].run_key == request.run_key


def test_a_status_salesforce_refuses_goes_to_revops_and_retry_resends_it(
    tmp_path: Path, sandbox: Sandbox
) -> None:
    url = f"sqlite:///{tmp_path / 'warehouse.db'}"
    resources = _resources(sandbox.env, url)
    engine = create_engine(url)
    missing = "006000000000000AAA"  # no such Opportunity in the org
    status = {"Finsync_Invoice_Status__c": "Not yet invoiced", "Finsync_Paid__c": False}
    doc = ledger.LedgerDoc(
        "salesforce", "opportunity_status", missing, "finsync", missing, "r-1", None, status
    )
    with engine.begin() as conn:
        ledger.enqueue(conn, [doc], run_id="t", repost_changed=True)
    writeback = [
        a
        for a in defs().assets or []
        if isinstance(a, dg.AssetsDefinition) and dg.AssetKey("crm_status_writeback") in a.keys
    ]
    result = dg.materialize(writeback, resources=resources, instance=dg.DagsterInstance.ephemeral())
    assert _metadata(result, "crm_status_writeback")["rejected"] == 1
    with engine.connect() as conn:
        (row,) = conn.execute(
            sa.text(
                "SELECT kind, source_system, owner_queue, detail FROM finance_exceptions "
                "WHERE source_id = :id AND status = 'open'"
            ),
            {"id": missing},
        ).all()
    assert (row.kind, row.source_system, row.owner_queue) == (
        "posting_rejected",
        "salesforce",
        "revops",
    )
    assert row.detail.startswith(f"Salesforce refused opportunity_status {missing}")
    # Once the org is fixed, one command puts it back on the ledger for the next run.
    outcome = exceptions_queue.retry(
        engine, exceptions_queue.Selection(source_ids=(missing,)), actor="ana", reason="fixed"
    )
    assert outcome.requeued == [missing] and not outcome.needs_fix
    with engine.connect() as conn:
        state = conn.execute(
            sa.text("SELECT state FROM posting_ledger WHERE erp = 'salesforce'")
        ).scalar_one()
    assert state == "pending"


def _states(url: str) -> dict[str, str]:
    with create_engine(url).connect() as conn:
        rows = conn.execute(sa.text("SELECT doc_type, state FROM posting_ledger")).all()
    return {doc_type: state for doc_type, state in rows}


def test_a_batch_flow_waits_for_its_window_and_only_its_window_posts_it(
    tmp_path: Path, sandbox: Sandbox, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(BATCH_WINDOWS_ENV, '{"credit_memo": "0 3 * * *"}')
    url = f"sqlite:///{tmp_path / 'warehouse.db'}"
    resources = _resources(sandbox.env, url)
    with create_engine(url).begin() as conn:
        ledger.enqueue(
            conn, [_doc("credit_memo", "cn_x", "2026-10-06")], run_id="t", repost_changed=False
        )
    # Only a batch document is due: the near-real-time sensor leaves it alone...
    idle = _sensor(resources)
    assert isinstance(idle, dg.SensorResult) and not idle.run_requests
    # ...and its window (one schedule per cron) launches a run for it at the next tick.
    (window,) = [s for s in automation().schedules or [] if s.name.startswith("erp_posting_window")]
    assert window.name == "erp_posting_window_credit_memo"
    assert window.cron_schedule == "0 3 * * *"
    tick = dg.build_schedule_context(
        resources={"warehouse": resources["warehouse"]},
        scheduled_execution_time=dt.datetime(2026, 10, 7, 3, tzinfo=dt.UTC),
    )
    request = window(tick)
    assert isinstance(request, dg.RunRequest)
    assert request.tags[FLOWS_TAG] == "credit_memo"
    assert request.tags[RANGE_START_TAG] == request.tags[RANGE_END_TAG] == "2026-10-06"

    with create_engine(url).begin() as conn:
        ledger.enqueue(
            conn, [_doc("invoice", "in_x", "2026-10-06")], run_id="t", repost_changed=False
        )
    realtime = _sensor(resources)
    assert isinstance(realtime, dg.SensorResult) and realtime.run_requests
    assert (
        realtime.run_requests[0].tags[FLOWS_TAG]
        == "customer,invoice,customer_payment,customer_refund"
    )

    # The sensor's run sends the invoice and leaves the credit memo for its window. (The test
    # documents are not real invoices: NetSuite refuses them, proof enough they were sent.)
    posting = [
        a
        for a in defs().assets or []
        if isinstance(a, dg.AssetsDefinition) and dg.AssetKey("erp_postings") in a.keys
    ]
    result = dg.materialize(
        posting,
        resources=resources,
        instance=dg.DagsterInstance.ephemeral(),
        tags=dict(realtime.run_requests[0].tags),
    )
    assert result.success
    states = _states(url)
    assert states == {"credit_memo": "pending", "invoice": "rejected"}
    # A nightly or manual run without the tag leaves batch flows to their windows too.
    nightly = dg.materialize(
        posting,
        resources=resources,
        instance=dg.DagsterInstance.ephemeral(),
        tags=range_tags(dt.date(2026, 10, 6), dt.date(2026, 10, 6)),
    )
    assert nightly.success
    assert _states(url)["credit_memo"] == "pending"
    result = dg.materialize(
        posting,
        resources=resources,
        instance=dg.DagsterInstance.ephemeral(),
        tags=dict(request.tags),
    )
    assert result.success
    assert _states(url) == {"credit_memo": "rejected", "invoice": "rejected"}


def test_a_malformed_batch_window_setting_names_the_variable() -> None:
    with pytest.raises(ConfigurationError, match=BATCH_WINDOWS_ENV + ": unknown flow 'refund'"):
        batch_windows('{"refund": "0 3 * * *"}')
    with pytest.raises(ConfigurationError, match="not a cron of 5 fields"):
        batch_windows('{"invoice": "every night"}')
    assert batch_windows("") == {}


def test_payments_find_their_invoices_and_refunds_their_credit_notes(
    pipeline: tuple[dg.ExecuteInProcessResult, str, dict[str, Any]],
) -> None:
    _result, url, _ = pipeline
    assert _scalar(url, "SELECT COUNT(*) FROM payments WHERE status = 'succeeded'") > 0
    # Every collected payment is tied to the invoice its payment intent paid, unless that
    # invoice is in quarantine (then the payment waits with it).
    with create_engine(url).connect() as conn:
        unlinked = {
            r[0]
            for r in conn.execute(
                sa.text(
                    "SELECT payment_intent FROM payments "
                    "WHERE status = 'succeeded' AND invoice_id IS NULL"
                )
            )
        }
        quarantined_intents = {
            pay["payment"]["payment_intent"]
            for (payload,) in conn.execute(
                sa.text(
                    "SELECT payload FROM stripe_invoices WHERE source_id IN "
                    "(SELECT source_id FROM quarantine WHERE asset = 'stripe_invoices')"
                )
            )
            for pay in (ledger.loads(payload).get("payments") or {}).get("data") or []
        }
        landed = [
            ledger.loads(payload)
            for (payload,) in conn.execute(sa.text("SELECT payload FROM stripe_invoices"))
        ]
    assert unlinked <= quarantined_intents
    # Stripe shows an invoice's payments only when the request expands them: the extract asks,
    # so each landed invoice carries its own, and a paid one names the intent that paid it.
    live = [i for i in landed if i.get("deleted") is not True]
    assert live and all(isinstance(i.get("payments", {}).get("data"), list) for i in live)
    assert sum(1 for i in live if i["payments"]["data"]) > len(live) // 2
    assert (
        _scalar(
            url,
            "SELECT COUNT(*) FROM payments p JOIN invoices i ON i.invoice_id = p.invoice_id "
            "WHERE p.currency <> i.currency",
        )
        == 0
    )
    assert _scalar(url, "SELECT COUNT(*) FROM refunds") > 0
    assert (
        _scalar(
            url, "SELECT COUNT(*) FROM refunds WHERE credit_note_id IS NULL OR invoice_id IS NULL"
        )
        == 0
    )
    # A credit note never credits more than its invoice.
    assert (
        _scalar(
            url,
            "SELECT COUNT(*) FROM credit_notes c JOIN invoices i ON i.invoice_id = c.invoice_id "
            "WHERE c.total_minor > i.total_minor",
        )
        == 0
    )


def test_billing_status_reaches_salesforce_once_per_change(
    pipeline: tuple[dg.ExecuteInProcessResult, str, dict[str, Any]],
) -> None:
    result, url, resources = pipeline
    sent = _metadata(result, "crm_status_writeback")
    assert sent["changed (sent)"] > 0 and sent["rejected"] == 0
    crm = resources["salesforce"].get_client()
    accounts = list(
        crm.query(
            "SELECT Id, Finsync_Invoice_Status__c, Finsync_Paid__c, Finsync_ERP_Invoice_Id__c "
            "FROM Account WHERE Finsync_Invoice_Status__c != null"
        )
    )
    assert len(accounts) == sent["accounts changed (sent)"]
    with create_engine(url).connect() as conn:
        posted = dict(
            conn.execute(
                sa.text(
                    "SELECT source_id, erp_internal_id FROM posting_ledger "
                    "WHERE doc_type = 'invoice' AND state = 'posted'"
                )
            ).fetchall()
        )
    erp_ids = set(posted.values())
    for account in accounts:
        assert "invoiced in ERP" in account["Finsync_Invoice_Status__c"]
        if account["Finsync_ERP_Invoice_Id__c"]:
            assert account["Finsync_ERP_Invoice_Id__c"] in erp_ids
    # Nothing changed since: a second run sends nothing and leaves the ledger as it was.
    journal = "SELECT COUNT(*) FROM posting_ledger_journal WHERE erp = 'salesforce'"
    before = _scalar(url, journal)
    loaded = defs()
    again = dg.materialize(
        [
            a
            for a in loaded.assets or []
            if isinstance(a, dg.AssetsDefinition) and dg.AssetKey("crm_status_writeback") in a.keys
        ],
        resources=resources,
        instance=dg.DagsterInstance.ephemeral(),
    )
    rerun = _metadata(again, "crm_status_writeback")
    assert rerun["changed (sent)"] == rerun["renewal opportunities changed (sent)"] == 0
    assert rerun["unchanged"] == rerun["dagster/row_count"] == sent["dagster/row_count"]
    assert _scalar(url, journal) == before


def test_each_renewal_opportunity_says_whether_it_was_invoiced_and_paid(
    pipeline: tuple[dg.ExecuteInProcessResult, str, dict[str, Any]],
) -> None:
    result, url, resources = pipeline
    sent = _metadata(result, "crm_status_writeback")
    with create_engine(url).connect() as conn:
        renewals = {
            r.opportunity_id: r
            for r in conn.execute(
                sa.text(
                    "SELECT r.opportunity_id, r.status, r.invoice_id, i.status AS billing, "
                    "l.state AS ledger_state, l.erp_internal_id FROM renewal_reconciliation r "
                    "LEFT JOIN invoices i ON i.invoice_id = r.invoice_id "
                    "LEFT JOIN posting_ledger l ON l.erp = 'netsuite' AND "
                    "l.doc_type = 'invoice' AND l.source_id = r.invoice_id"
                )
            )
        }
    assert sent["renewal opportunities"] == len(renewals)
    assert sent["renewal opportunities changed (sent)"] == len(renewals) > 0
    # Read back from the Salesforce sandbox over HTTP, as a sales rep's report would.
    crm = resources["salesforce"].get_client()
    written = {
        o["Id"]: o
        for o in crm.query(
            "SELECT Id, Finsync_Invoice_Status__c, Finsync_Paid__c, Finsync_ERP_Invoice_Id__c, "
            "Finsync_Stripe_Invoice_Id__c FROM Opportunity WHERE Finsync_Invoice_Status__c != null"
        )
    }
    assert set(renewals) <= set(written)
    paid = [
        r
        for r in renewals.values()
        if r.status == "matched" and r.billing == "paid" and r.ledger_state == "posted"
    ]
    assert paid, "the test company has a matched, paid renewal"
    for r in paid:
        opp = written[r.opportunity_id]
        assert opp["Finsync_Paid__c"] is True
        assert opp["Finsync_ERP_Invoice_Id__c"] == r.erp_internal_id
        assert opp["Finsync_Stripe_Invoice_Id__c"] == r.invoice_id
        assert opp["Finsync_Invoice_Status__c"].startswith("Invoiced in ERP (invoice ")
        assert opp["Finsync_Invoice_Status__c"].endswith("), paid")
    unpaid = [r for r in renewals.values() if r not in paid]
    assert all(written[r.opportunity_id]["Finsync_Paid__c"] is False for r in unpaid)


def _materialize(resources: dict[str, Any], *keys: str) -> dg.ExecuteInProcessResult:
    loaded = defs()
    return dg.materialize(
        [*(loaded.assets or []), *(loaded.asset_checks or [])],  # type: ignore[list-item]
        resources=resources,
        instance=dg.DagsterInstance.ephemeral(),
        selection=dg.AssetSelection.assets(*keys),
    )


def test_a_renewal_on_a_quarantined_account_says_why_it_is_held(
    pipeline: tuple[dg.ExecuteInProcessResult, str, dict[str, Any]],
) -> None:
    _result, url, resources = pipeline
    with create_engine(url).connect() as conn:
        bad = conn.execute(
            sa.text(
                "SELECT source_id, reason FROM quarantine WHERE asset = 'salesforce_accounts' "
                "ORDER BY source_id"
            )
        ).first()
    assert bad is not None, "the test company plants a malformed Salesforce account"
    crm = resources["salesforce"].get_client()
    # A renewal closes in Salesforce for that account; billing cannot invoice a customer
    # finsync cannot place, so reconciliation holds the renewal.
    renewal = {
        "Name": "Renewal held by a bad account",
        "AccountId": bad.source_id,
        "Type": "Renewal",
        "StageName": "Closed Won",
        "IsClosed": True,
        "IsWon": True,
        "CloseDate": (TEST_END - dt.timedelta(days=15)).isoformat(),
        "Amount": Decimal("1200.00"),
        "CurrencyIsoCode": "USD",
    }
    # The sandbox is shared by the SQLite and the PostgreSQL run: one renewal for each.
    key = f"TEST-HELD-RENEWAL-{create_engine(url).dialect.name}"
    opp_id, created = crm.upsert("Opportunity", "Finsync_External_Id__c", key, renewal)
    assert created
    chain = ("salesforce_opportunities", "renewal_reconciliation", "crm_status_writeback")
    try:
        sent = _metadata(_materialize(resources, *chain), "crm_status_writeback")
        # Only what changed is sent: the new renewal, no Account.
        assert sent["renewal opportunities changed (sent)"] == 1
        assert sent["accounts changed (sent)"] == 0
        assert sent["renewal opportunities held"] >= 1
        held = crm.get_by_external_id("Opportunity", "Id", opp_id)
        assert held["Finsync_Invoice_Status__c"] == f"Held: data check failed: {bad.reason}"
        assert held["Finsync_Paid__c"] is False
        assert held["Finsync_ERP_Invoice_Id__c"] is None
    finally:
        # Leave the shared pipeline as it was: the renewal is lost, reconciliation drops it.
        crm.upsert(
            "Opportunity",
            "Finsync_External_Id__c",
            key,
            {"StageName": "Closed Lost", "IsWon": False},
        )
        _materialize(resources, *chain[:2])
    with create_engine(url).connect() as conn:
        left = conn.execute(
            sa.text("SELECT COUNT(*) FROM renewal_reconciliation WHERE opportunity_id = :id"),
            {"id": opp_id},
        ).scalar_one()
    assert left == 0


def test_every_closed_won_renewal_is_invoiced_and_in_the_erp(
    pipeline: tuple[dg.ExecuteInProcessResult, str, dict[str, Any]],
) -> None:
    result, url, _ = pipeline
    renewals = _metadata(result, "renewal_reconciliation")
    assert renewals["matched"] > 0
    # The only disagreements are renewals whose invoice billing voided while the CRM still
    # shows them closed won: reported as status_mismatch, never as a missing invoice.
    assert renewals["drift"] == renewals["status_mismatch"], renewals["drift sample"]
    assert renewals["missing_in_billing"] == renewals["missing_in_erp"] == 0
    assert (
        _scalar(url, "SELECT COUNT(*) FROM renewal_reconciliation") == renewals["dagster/row_count"]
    )
