"""A snapshot of what Dagster loads: assets by stage, checks, jobs, schedules and sensors."""

import dagster as dg
import pytest

from finsync_pipeline.definitions import defs

ASSET_GROUPS = {
    "extract": [
        "cpq_quote_lines",
        "cpq_quotes",
        "cpq_subscriptions",
        "erp_invoices",
        "erp_payments",
        "salesforce_accounts",
        "salesforce_contracts",
        "salesforce_opportunities",
        "stripe_charges",
        "stripe_credit_notes",
        "stripe_customers",
        "stripe_invoice_changes",
        "stripe_invoice_payments",
        "stripe_invoices",
        "stripe_payments",
        "stripe_refunds",
        "stripe_subscriptions",
        "usage_events",
    ],
    "validate": [
        "credit_notes",
        "customers",
        "invoice_lines",
        "invoices",
        "payments",
        "quarantine",
        "refunds",
        "subscriptions",
        "usage_daily",
    ],
    "derive": [
        "credit_memo_requests",
        "customer_refund_requests",
        "erp_customer_upserts",
        "finance_exceptions",
        "invoice_ready_transactions",
        "invoice_tax_checks",
        "payment_applications",
    ],
    "post": ["crm_status_writeback", "erp_postings"],
    "reconcile": ["invoice_reconciliation", "payment_reconciliation", "renewal_reconciliation"],
}
CHECKS = [
    "cpq_quote_lines:contract",
    "cpq_quotes:contract",
    "cpq_subscriptions:contract",
    "erp_invoices:contract",
    "erp_payments:contract",
    "erp_postings:ledger_sealed",
    "invoice_reconciliation:no_drift",
    "payment_reconciliation:no_drift",
    "renewal_reconciliation:no_drift",
    "salesforce_accounts:contract",
    "salesforce_contracts:contract",
    "salesforce_opportunities:contract",
    "stripe_charges:contract",
    "stripe_credit_notes:contract",
    "stripe_customers:contract",
    "stripe_invoices:contract",
    "stripe_payments:contract",
    "stripe_refunds:contract",
    "stripe_subscriptions:contract",
    "usage_events:contract",
]


@pytest.fixture(scope="module")
def definitions() -> dg.Definitions:
    return defs()


def test_definitions_load(definitions: dg.Definitions) -> None:
    dg.Definitions.validate_loadable(definitions)


def test_assets_are_grouped_by_stage(definitions: dg.Definitions) -> None:
    graph = definitions.resolve_asset_graph()
    groups: dict[str, list[str]] = {}
    for key in graph.get_all_asset_keys():
        groups.setdefault(graph.get(key).group_name, []).append(key.to_user_string())
    assert {g: sorted(keys) for g, keys in groups.items()} == ASSET_GROUPS


def test_every_asset_has_owner_kinds_and_purpose(definitions: dg.Definitions) -> None:
    graph = definitions.resolve_asset_graph()
    for key in graph.get_all_asset_keys():
        node = graph.get(key)
        assert node.owners == ["team:finance-data"], key
        assert node.kinds, key
        assert node.description and len(node.description) > 40, key


def test_checks_jobs_schedules_sensors(definitions: dg.Definitions) -> None:
    checks = definitions.resolve_asset_graph().asset_check_keys
    assert sorted(f"{c.asset_key.to_user_string()}:{c.name}" for c in checks) == CHECKS
    jobs = {j.name for j in definitions.resolve_all_job_defs()} - {"__ASSET_JOB"}
    assert jobs == {
        "catch_up_job",
        "daily_sync_job",
        "erp_posting_job",
        "ingest_job",
        "near_real_time_job",
    }
    assert [s.name for s in definitions.schedules or []] == ["daily_sync_job_schedule"]
    assert [s.name for s in definitions.sensors or []] == [
        "stripe_events_sensor",
        "salesforce_changes_sensor",
        "erp_posting_sensor",
        "late_changes_sensor",
    ]


def test_contract_checks_block_downstream(definitions: dg.Definitions) -> None:
    graph = definitions.resolve_asset_graph()
    for key in graph.asset_check_keys:
        spec = graph.get_check_spec(key)
        # Contracts block what derives from a bad feed; the ledger's seal blocks what follows
        # a posting run whose ledger does not verify.
        assert spec.blocking == (key.name in ("contract", "ledger_sealed")), key


def test_daily_schedule_runs_the_whole_pipeline_for_yesterday(
    definitions: dg.Definitions,
) -> None:
    schedule = definitions.resolve_schedule_def("daily_sync_job_schedule")
    assert schedule.cron_schedule == "0 2 * * *"
    job = definitions.resolve_job_def("daily_sync_job")
    selected = {k.to_user_string() for k in job.asset_layer.executable_asset_keys}
    assert selected == {a for keys in ASSET_GROUPS.values() for a in keys}
