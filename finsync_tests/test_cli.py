"""The user's surface, end to end: `finsync demo`, `finsync run`, `finsync sandbox serve`.

These run the real command in a subprocess against the real sandbox over HTTP, on a real
SQLite warehouse and a real Dagster instance in the test's folder, at a small scale.
"""

import datetime as dt
import json
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dagster as dg
import pytest
import requests
import sqlalchemy as sa

from finsync_pipeline.cli import retry_range
from finsync_pipeline.logic import derive
from finsync_pipeline.master_data import DEFAULT_DIR
from finsync_pipeline.runner import REQUIRED_ENV
from finsync_pipeline.sandbox.generator import CompanySpec, generate
from finsync_pipeline.sandbox.server import Sandbox
from finsync_pipeline.sources import SOURCES_OFF_ENV
from finsync_tests.conftest import TEST_END

pytestmark = pytest.mark.e2e

FINSYNC = str(Path(sys.executable).with_name("finsync"))
SCALE = ["--accounts", "40", "--months", "2", "--seed", "11", "--end", TEST_END.isoformat()]
QUARANTINE_KINDS = {
    "malformed_currency",
    "missing_amount",
    "invalid_date",
    "bad_currency_code",
    "malformed_usage_event",
    "invalid_quantity",
}
EXCEPTION_KINDS = {
    "missing_po",
    "unmapped_product",
    "unknown_legal_entity",
    "tax_mismatch",
    "unknown_usage_subject",
}
# Invoice shapes that are no problem at all: each must post exactly and reconcile.
SHAPE_KINDS = {
    "coupon_discount",
    "line_discount",
    "tax_inclusive",
    "full_discount",
    # A downgrade that credits more than it charges (a credit memo in NetSuite), and the next
    # invoice, paid partly from that credit (the credit memo applied to it).
    "net_negative",
    "paid_from_balance",
}
# Customers Stripe rightly bills no tax: no problem, and no tax exception on their invoices.
TAX_PROFILE_KINDS = {"tax_exempt_customer", "reverse_charge_customer"}


def _env(**extra: str) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("STRIPE_", "SALESFORCE_", "NETSUITE_", "FINSYNC_", "DAGSTER_"))
    }
    return {**env, **extra}


def _finsync(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [FINSYNC, *args],
        env=env or _env(),
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )


def _summary(result: subprocess.CompletedProcess[str]) -> dict[str, Any]:
    assert result.returncode == 0, result.stderr[-3000:]
    summary: dict[str, Any] = json.loads(result.stdout.strip().splitlines()[-1])
    return summary


@pytest.fixture(scope="module")
def demo_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("demo") / "home"


@pytest.fixture(scope="module")
def first_demo(demo_home: Path) -> dict[str, Any]:
    return _summary(_finsync("demo", "--home", str(demo_home), *SCALE, "--json"))


def test_demo_posts_every_clean_invoice_and_reconciles_with_zero_drift(
    first_demo: dict[str, Any],
) -> None:
    s = first_demo
    for key in (
        "accounts",
        "stripe_invoices",
        "erp_invoices_posted",
        "erp_invoices_in_erp",
        "reconciliation",
        "exceptions_open",
        "quarantined_rows",
        "elapsed_s",
    ):
        assert key in s
    assert s["accounts"] == 40
    # Row counts per extracted asset: every source system contributed.
    assert s["sources"]["salesforce_accounts"] == 40
    assert s["sources"]["stripe_invoices"] >= s["stripe_invoices"]
    assert s["sources"]["erp_invoices"] == s["erp_invoices_in_erp"]
    recon = s["reconciliation"]
    assert set(recon) >= {
        "matched",
        "missing_in_erp",
        "amount_mismatch",
        "duplicate_in_erp",
        "extra_in_erp",
    }
    assert s["erp_invoices_posted"] > 0
    # Every posted invoice matches, but the one paid out of band (held for its exception).
    paid_outside = s["planted"]["paid_out_of_band"]
    assert s["erp_invoices_in_erp"] == s["erp_invoices_posted"] == recon["matched"] + paid_outside
    assert s["drift"] == 0
    # Each renewal the CRM and billing disagree on is drift, and revops has it in its queue.
    renewals = s["renewal_reconciliation"]
    assert s["renewal_drift"] - renewals["missing_in_erp"] == s["exceptions_open_by_kind"].get(
        "renewal_mismatch", 0
    )
    # Every finalized invoice is accounted for: posted and matched, held by an exception, or
    # in quarantine. None vanished.
    quarantined_invoices = s["quarantined_by_asset"].get("stripe_invoices", 0)
    assert (
        recon["matched"] + recon["held_by_exception"] + quarantined_invoices
        == (s["stripe_invoices"])
    )


def test_demo_puts_every_planted_problem_in_quarantine_or_the_exception_queue(
    demo_home: Path, first_demo: dict[str, Any]
) -> None:
    planted = Sandbox(demo_home / "sandbox").planted()
    assert set(planted) == (
        QUARANTINE_KINDS
        | EXCEPTION_KINDS
        | SHAPE_KINDS
        | TAX_PROFILE_KINDS
        | {"duplicate_usage_event", "deleted_draft", "paid_out_of_band", "uncollectible"}
    )
    engine = sa.create_engine(f"sqlite:///{demo_home / 'warehouse.db'}")
    with engine.connect() as conn:
        quarantined = {r[0] for r in conn.execute(sa.text("SELECT source_id FROM quarantine"))}
        reasons = [r[0] for r in conn.execute(sa.text("SELECT reason FROM quarantine"))]
        open_exceptions = {
            (r.kind, r.source_id)
            for r in conn.execute(
                sa.text("SELECT kind, source_id FROM finance_exceptions WHERE status = 'open'")
            )
        }
        usage = {
            f"{r.source}/{r.event_id}": r.subject
            for r in conn.execute(sa.text("SELECT source, event_id, subject FROM usage_events"))
        }
        usage_ids = [
            f"{r.source}/{r.event_id}"
            for r in conn.execute(sa.text("SELECT source, event_id FROM usage_events"))
        ]
    for kind in QUARANTINE_KINDS:
        assert planted[kind], kind
        for item in planted[kind]:
            if item["object"] == "invoice_line":
                # A bad line quarantines its invoice; the reason names the line field.
                assert any("lines.amount" in r for r in reasons)
                continue
            assert item["id"] in quarantined, (kind, item)
    for kind in EXCEPTION_KINDS:
        assert planted[kind], kind
        for item in planted[kind]:
            if item["system"] == "stripe" and item["object"] == "customer":
                continue  # the account side of an unknown legal entity carries the exception
            if kind == "unknown_usage_subject":
                # One exception per unknown subject, however many events it sent.
                assert (kind, usage[item["id"]]) in open_exceptions, item
                continue
            assert (kind, item["id"]) in open_exceptions or item["id"] in quarantined, (kind, item)
    # A usage event sent twice is stored once.
    assert len(usage_ids) == len(set(usage_ids))
    for item in planted["duplicate_usage_event"]:
        assert usage_ids.count(item["id"]) == 1
    for reason in reasons:
        assert reason.split(" ")[0] in {"stripe", "salesforce", "netsuite", "metering"}
        assert "field" in reason
    # An exempt or reverse-charge customer's invoices are checked and raise no tax exception.
    with engine.connect() as conn:
        for kind in TAX_PROFILE_KINDS:
            (profile,) = planted[kind]
            checked = [
                (r.invoice_id, r.within_tolerance)
                for r in conn.execute(
                    sa.text(
                        "SELECT c.invoice_id, c.within_tolerance FROM invoice_tax_checks c "
                        "JOIN invoices i ON i.invoice_id = c.invoice_id "
                        "WHERE i.stripe_customer_id = :id"
                    ),
                    {"id": profile["id"]},
                )
            ]
            assert checked and all(within for _id, within in checked), (kind, checked)
            assert not {("tax_mismatch", i) for i, _ in checked} & open_exceptions, kind
    # A deleted draft is gone: not malformed, not a problem to work, never an invoice.
    (deleted,) = planted["deleted_draft"]
    assert deleted["id"] not in quarantined
    assert not {source_id for _kind, source_id in open_exceptions} & {deleted["id"]}
    with engine.connect() as conn:
        held = conn.execute(
            sa.text("SELECT COUNT(*) FROM invoices WHERE invoice_id = :id"), {"id": deleted["id"]}
        ).scalar_one()
    assert held == 0


def test_demo_posts_discounted_tax_inclusive_and_free_invoices_exactly(
    demo_home: Path, first_demo: dict[str, Any]
) -> None:
    planted = Sandbox(demo_home / "sandbox").planted()
    assert first_demo["planted"] == {k: len(v) for k, v in planted.items()}
    shaped = {item["id"] for kind in SHAPE_KINDS for item in planted[kind]}
    assert shaped
    engine = sa.create_engine(f"sqlite:///{demo_home / 'warehouse.db'}")
    with engine.connect() as conn:
        recon = {
            r.invoice_id: (r.status, r.billing_total_minor, r.erp_total_minor)
            for r in conn.execute(
                sa.text(
                    "SELECT invoice_id, status, billing_total_minor, erp_total_minor "
                    "FROM invoice_reconciliation"
                )
            )
        }
        quarantined = {r[0] for r in conn.execute(sa.text("SELECT source_id FROM quarantine"))}
    assert not shaped & quarantined
    for invoice_id in shaped:
        status, billing, erp = recon[invoice_id]
        assert (status, billing) == ("matched", erp), invoice_id
    free = {item["id"] for item in planted["full_discount"]}
    assert all(recon[i][1] == 0 for i in free)
    # The credit memo of a net-negative invoice credits its absolute total, and the invoice
    # paid from that credit has it applied: its payment of 0 reconciles too.
    with engine.connect() as conn:
        totals = dict(conn.execute(sa.text("SELECT invoice_id, total_minor FROM invoices")).all())
        applications = dict(
            conn.execute(sa.text("SELECT payment_id, status FROM payment_reconciliation")).all()
        )
    for item in planted["net_negative"]:
        assert totals[item["id"]] < 0 and recon[item["id"]][1] == -totals[item["id"]]
    for item in planted["paid_from_balance"]:
        assert applications[item["id"]] == "matched"


def test_demo_carries_invoices_settled_without_a_stripe_payment_and_shows_quarantined_money(
    demo_home: Path, first_demo: dict[str, Any]
) -> None:
    planted = Sandbox(demo_home / "sandbox").planted()
    engine = sa.create_engine(f"sqlite:///{demo_home / 'warehouse.db'}")
    with engine.connect() as conn:
        recon = {
            r.invoice_id: (r.status, r.billing_remaining_minor, r.erp_remaining_minor)
            for r in conn.execute(
                sa.text(
                    "SELECT invoice_id, status, billing_remaining_minor, erp_remaining_minor "
                    "FROM invoice_reconciliation"
                )
            )
        }
        open_exceptions = {
            (r.kind, r.source_id)
            for r in conn.execute(
                sa.text("SELECT kind, source_id FROM finance_exceptions WHERE status = 'open'")
            )
        }
        posted = {
            r[0]
            for r in conn.execute(
                sa.text("SELECT external_id FROM posting_ledger WHERE state = 'posted'")
            )
        }
    assert planted["paid_out_of_band"] and planted["uncollectible"]
    for item in planted["paid_out_of_band"]:
        # NetSuite still expects the money; finance records the receipt the exception names.
        assert ("paid_out_of_band", item["id"]) in open_exceptions
        status, billing_left, erp_left = recon[item["id"]]
        assert (status, billing_left) == ("held_by_exception", 0) and erp_left > 0
    for item in planted["uncollectible"]:
        assert f"WRITEOFF_{item['id']}" in posted
        status, billing_left, erp_left = recon[item["id"]]
        assert (status, erp_left) == ("matched", 0) and billing_left > 0
    # The malformed invoice is in quarantine, and its money shows in reconciliation.
    (bad,) = planted["malformed_currency"]
    assert recon[bad["id"]][0] == "quarantined"
    assert first_demo["reconciliation"]["quarantined"] >= 1
    assert first_demo["quarantined_minor_by_currency"]
    assert first_demo["drift"] == 0


def test_demo_runs_are_in_the_dagster_instance(demo_home: Path, first_demo: dict[str, Any]) -> None:
    os.environ["DAGSTER_HOME"] = str(demo_home / "dagster")
    try:
        with dg.DagsterInstance.get() as instance:
            jobs = {run.job_name for run in instance.get_runs()}
            assert {"ingest_job", "erp_posting_job"} <= jobs
            posting = [r for r in instance.get_runs() if r.tags.get("dagster/sensor_name")]
            assert posting and posting[0].tags["dagster/sensor_name"] == "erp_posting_sensor"
            for key in (
                "stripe_invoices",
                "invoice_ready_transactions",
                "erp_postings",
                "invoice_reconciliation",
            ):
                event = instance.get_latest_materialization_event(dg.AssetKey(key))
                assert event is not None, key
    finally:
        del os.environ["DAGSTER_HOME"]


def test_demo_rerun_posts_nothing_and_still_reconciles(
    demo_home: Path, first_demo: dict[str, Any]
) -> None:
    again = _summary(_finsync("demo", "--home", str(demo_home), *SCALE, "--json"))
    assert again["erp_invoices_posted"] == 0
    assert again["erp_customers_posted"] == 0
    assert again["erp_invoices_in_erp"] == first_demo["erp_invoices_in_erp"]
    assert again["drift"] == 0
    assert again["reconciliation"] == first_demo["reconciliation"]
    assert again["exceptions_open"] == first_demo["exceptions_open"]


def _free_ports(n: int) -> list[int]:
    sockets = [socket.socket() for _ in range(n)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[Path, list[int]]]:
    yield tmp_path / "state", _free_ports(5)


def _serve(
    state: Path, ports: list[int], scale: list[str] = SCALE
) -> tuple[subprocess.Popen[str], dict[str, str]]:
    proc = subprocess.Popen(
        [FINSYNC, "sandbox", "serve", "--state", str(state), "--ports", *map(str, ports), *scale],
        env=_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    env: dict[str, str] = {}
    assert proc.stdout is not None
    for line in proc.stdout:
        if line.startswith("export "):
            key, value = line.removeprefix("export ").strip().split("=", 1)
            env[key] = shlex.split(value)[0]
        if line.startswith("# finsync sandbox ready"):
            break
    return proc, env


def _stop(proc: subprocess.Popen[str]) -> None:
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=30)


def test_pipeline_against_standalone_sandbox_survives_its_restart(
    served: tuple[Path, list[int]], tmp_path: Path
) -> None:
    state, ports = served
    window = ["--from", "2026-09-01", "--to", TEST_END.isoformat()]
    proc, env = _serve(state, ports)
    try:
        first = _summary(
            _finsync("run", "--home", str(tmp_path / "home"), *window, "--json", env=_env(**env))
        )
    finally:
        _stop(proc)
    assert first["erp_invoices_posted"] > 0
    assert first["drift"] == 0

    proc, env_again = _serve(state, ports)
    try:
        assert env_again == env  # same credentials and addresses after a restart
        second = _summary(
            _finsync(
                "run", "--home", str(tmp_path / "home"), *window, "--json", env=_env(**env_again)
            )
        )
    finally:
        _stop(proc)
    assert second["erp_invoices_posted"] == 0
    assert second["erp_invoices_in_erp"] == first["erp_invoices_in_erp"]
    assert second["drift"] == 0


def test_missing_credential_says_which_variable_to_set(tmp_path: Path) -> None:
    result = _finsync("run", "--home", str(tmp_path / "home"))
    assert result.returncode == 2
    assert result.stderr.strip() == "finsync: Stripe is not configured: set STRIPE_API_KEY"
    assert "Traceback" not in result.stderr


def test_a_wrong_po_source_is_one_line_saying_what_to_set(tmp_path: Path) -> None:
    # Credentials are only checked for presence before a run: fake ones reach the PO setting.
    names = [n for names in REQUIRED_ENV.values() for n in names]
    env = _env(
        FINSYNC_MODE="live",
        SALESFORCE_CLIENT_SECRET="x",
        FINSYNC_PO_SOURCE="opportunity:PO_Number__c",
        **dict.fromkeys(names, "x"),
    )
    result = _finsync("run", "--home", str(tmp_path / "home"), env=env)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith("finsync: FINSYNC_PO_SOURCE: unknown source 'opportunity'")
    assert "salesforce_opportunity:<Field>" in line
    assert "stripe_custom_field:PO Number" in line


def _one_line_refusal(tmp_path: Path, **setting: str) -> str:
    """The one stderr line of a live `finsync run` with fake credentials (only checked for
    presence before a run) and ``setting``, which must stop it with exit 2."""
    names = [n for names in REQUIRED_ENV.values() for n in names]
    env = _env(
        FINSYNC_MODE="live", SALESFORCE_CLIENT_SECRET="x", **setting, **dict.fromkeys(names, "x")
    )
    result = _finsync("run", "--home", str(tmp_path / "home"), env=env)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    (line,) = result.stderr.strip().splitlines()
    return line


@pytest.mark.parametrize("lease", ["soon", "0", "86400"])
def test_a_wrong_posting_lease_is_one_line_saying_what_to_set(tmp_path: Path, lease: str) -> None:
    line = _one_line_refusal(tmp_path, FINSYNC_POSTING_LEASE_S=lease)
    assert line.startswith(f"finsync: FINSYNC_POSTING_LEASE_S is '{lease}': set it to")
    assert "from 1 to 3600" in line


@pytest.mark.parametrize("concurrency", ["0", "500", "five"])
def test_a_wrong_netsuite_concurrency_is_one_line_saying_what_to_set(
    tmp_path: Path, concurrency: str
) -> None:
    line = _one_line_refusal(tmp_path, FINSYNC_NETSUITE_CONCURRENCY=concurrency)
    assert line.startswith(f"finsync: FINSYNC_NETSUITE_CONCURRENCY is '{concurrency}': set it")
    assert "from 1 to 140" in line


@pytest.mark.parametrize(
    ("off", "unset", "empty"),
    [
        ("metering", ("METERING_API_KEY", "METERING_BASE_URL"), ["usage_events"]),
        ("cpq", (), ["cpq_quotes", "cpq_quote_lines", "cpq_subscriptions"]),
    ],
    ids=["metering-off", "cpq-off"],
)
def test_run_with_a_source_switched_off_needs_none_of_its_settings_and_posts(
    tmp_path: Path, off: str, unset: tuple[str, ...], empty: list[str]
) -> None:
    sandbox = Sandbox(tmp_path / "sandbox")
    sandbox.seed(generate(CompanySpec(accounts=40, months=2, seed=11, end=TEST_END)))
    # An org without the CPQ package refuses every SBQQ query: the run must send none.
    sandbox.salesforce.cpq_installed = off != "cpq"
    with sandbox:
        env = {k: v for k, v in sandbox.env.items() if k not in unset}
        outer = {k: v for k, v in _env().items() if not k.startswith(("METERING_", "AVALARA_"))}
        result = _finsync(
            "run",
            "--home",
            str(tmp_path / "home"),
            "--from",
            "2026-09-01",
            "--to",
            TEST_END.isoformat(),
            "--json",
            env={**outer, **env, SOURCES_OFF_ENV: off},
        )
        requests_made = sandbox.request_counts()
    summary = _summary(result)
    assert summary["erp_invoices_posted"] > 0
    assert summary["drift"] == 0
    assert {table: summary["sources"][table] for table in empty} == dict.fromkeys(empty, 0)
    if off == "metering":
        assert requests_made["metering"] == 0
        assert "unknown_usage_subject" not in summary["exceptions_open_by_kind"]


@pytest.mark.parametrize(
    ("setting", "says"),
    [
        (
            "",
            "finsync: Usage metering is not configured: set METERING_API_KEY, "
            f"or {SOURCES_OFF_ENV}=metering if the company meters no usage",
        ),
        (
            "metering,crm",
            f"finsync: {SOURCES_OFF_ENV}: unknown source 'crm'; set it to a comma-separated "
            "list of metering, cpq (or leave it empty)",
        ),
    ],
    ids=["metering-on-without-key", "unknown-source"],
)
def test_a_source_left_on_without_its_key_or_a_wrong_source_is_one_line(
    tmp_path: Path, setting: str, says: str
) -> None:
    configured = {
        name: "set"
        for name in [
            "STRIPE_API_KEY",
            "STRIPE_API_BASE",
            "SALESFORCE_LOGIN_URL",
            "SALESFORCE_CLIENT_ID",
            "SALESFORCE_CLIENT_SECRET",
            "NETSUITE_ACCOUNT_ID",
            "NETSUITE_BASE_URL",
            "NETSUITE_CONSUMER_KEY",
            "NETSUITE_CONSUMER_SECRET",
            "NETSUITE_TOKEN_ID",
            "NETSUITE_TOKEN_SECRET",
            "METERING_BASE_URL",
            "AVALARA_ACCOUNT_ID",
            "AVALARA_LICENSE_KEY",
            "AVALARA_BASE_URL",
        ]
    }
    outer = {k: v for k, v in _env().items() if not k.startswith(("METERING_", "AVALARA_"))}
    result = _finsync(
        "run",
        "--home",
        str(tmp_path / "home"),
        env={**outer, **configured, SOURCES_OFF_ENV: setting},
    )
    assert result.returncode == 2
    assert result.stderr.strip() == says
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize(
    ("variable", "says"),
    [
        ("STRIPE_API_KEY", "set STRIPE_API_KEY"),
        ("SALESFORCE_USERNAME", "SALESFORCE_USERNAME and SALESFORCE_PRIVATE_KEY"),
        ("NETSUITE_TOKEN_SECRET", "NETSUITE_TOKEN_SECRET"),
    ],
    ids=["stripe", "salesforce", "netsuite"],
)
def test_wrong_credential_is_one_line_naming_the_variable_without_the_secret(
    served: tuple[Path, list[int]], tmp_path: Path, variable: str, says: str
) -> None:
    state, ports = served
    proc, env = _serve(state, ports)
    wrong = "wrong-" + "x" * 24
    try:
        result = _finsync(
            "run",
            "--home",
            str(tmp_path / "home"),
            "--from",
            "2026-10-30",
            "--to",
            TEST_END.isoformat(),
            env=_env(**{**env, variable: wrong}),
        )
    finally:
        _stop(proc)
    assert result.returncode == 2
    errors = [line for line in result.stderr.splitlines() if line.startswith("finsync:")]
    assert len(errors) == 1, result.stderr
    assert says in errors[0]
    assert "Traceback" not in result.stderr
    assert wrong not in result.stderr + result.stdout
    assert env[variable] not in result.stderr + result.stdout


def test_a_refused_document_is_reposted_with_one_command_and_every_action_is_recorded(
    served: tuple[Path, list[int]], tmp_path: Path
) -> None:
    state, ports = served
    home = str(tmp_path / "home")
    window = ["--from", "2026-10-20", "--to", TEST_END.isoformat()]
    proc, env = _serve(state, ports)
    # Twelve days hold few invoices, so one planted malformed invoice is a large share.
    env["FINSYNC_MAX_BAD_SHARE"] = "0.5"
    try:
        # NetSuite refuses the next two invoices it is sent (a validation error).
        requests.post(
            f"{env['NETSUITE_BASE_URL']}/__sandbox/faults",
            json={
                "status": 400,
                "count": 2,
                "retry_after_s": None,
                "path_prefix": "/services/rest/record/v1/invoice",
            },
            timeout=10,
        ).raise_for_status()
        first = _summary(_finsync("run", "--home", home, *window, "--json", env=_env(**env)))
        assert first["exceptions_open_by_kind"].get("posting_rejected") == 2
        assert first["reconciliation"]["held_by_exception"] >= 2
        listed = json.loads(
            _finsync(
                "exceptions", "list", "--home", home, "--kind", "posting_rejected", "--json"
            ).stdout
        )
        refused = sorted(r["source_id"] for r in listed)
        assert len(refused) == 2 and all(r["owner_queue"] == "finance_ops" for r in listed)

        retried = _finsync(
            "exceptions",
            "retry",
            *refused,
            "--home",
            home,
            "--why",
            "NetSuite item fixed",
            "--by",
            "ana",
            "--post",
            env=_env(**env),
        )
        assert retried.returncode == 0, retried.stderr
        assert "queued 2 document(s)" in retried.stdout
        assert "posted 2 document(s); drift now 0" in retried.stdout
    finally:
        _stop(proc)
    shown = json.loads(_finsync("exceptions", "show", refused[0], "--home", home, "--json").stdout)
    assert shown["ledger"][0]["state"] == "posted"
    assert [e["status"] for e in shown["exceptions"]] == ["resolved"]
    assert [(a["actor"], a["action"], a["reason"]) for a in shown["actions"]] == [
        ("ana", "retry", "NetSuite item fixed")
    ]


def test_a_retry_after_a_mapping_fix_sends_what_todays_mappings_derive(
    served: tuple[Path, list[int]], tmp_path: Path
) -> None:
    state, ports = served
    home = str(tmp_path / "home")
    window = ["--from", "2026-10-20", "--to", TEST_END.isoformat()]
    mappings = tmp_path / "mappings"
    shutil.copytree(DEFAULT_DIR, mappings)
    products = mappings / "products.csv"
    fixed = products.read_text()
    # A mistyped item: NetSuite has no item 999, so every invoice with seats is refused.
    products.write_text(fixed.replace("prod_seats,102,", "prod_seats,999,"))
    proc, env = _serve(state, ports)
    env |= {"FINSYNC_MAX_BAD_SHARE": "0.5", "FINSYNC_MAPPINGS_DIR": str(mappings)}
    try:
        first = _summary(_finsync("run", "--home", home, *window, "--json", env=_env(**env)))
        assert first["exceptions_open_by_kind"].get("posting_rejected", 0) > 0
        listed = json.loads(
            _finsync(
                "exceptions", "list", "--home", home, "--kind", "posting_rejected", "--json"
            ).stdout
        )
        refused = sorted(r["source_id"] for r in listed)
        products.write_text(fixed)  # finance corrects the mapping, then retries
        retried = _finsync(
            "exceptions",
            "retry",
            *refused,
            "--home",
            home,
            "--why",
            "seats item fixed",
            "--post",
            env=_env(**env),
        )
    finally:
        _stop(proc)
    assert retried.returncode == 0, retried.stderr
    # Each document is named with what was sent and what NetSuite answered.
    for external_id in refused:
        assert f" {external_id} (items " in retried.stdout
    assert "999" not in retried.stdout
    assert f"posted {len(refused)} document(s); drift now 0" in retried.stdout
    # The exception was filed under the ERP external id; the Stripe id finds it too.
    shown = json.loads(
        _finsync(
            "exceptions", "show", refused[0].removeprefix("STRIPE_"), "--home", home, "--json"
        ).stdout
    )
    assert ("posting_rejected", "resolved") in {
        (e["kind"], e["status"]) for e in shown["exceptions"]
    }
    assert [a["action"] for a in shown["actions"]] == ["retry"]


def test_resolving_by_hand_needs_a_reason_and_is_recorded(
    demo_home: Path, first_demo: dict[str, Any], tmp_path: Path
) -> None:
    home = tmp_path / "home"
    shutil.copytree(demo_home, home)
    no_reason = _finsync(
        "exceptions", "resolve", "--home", str(home), "--kind", "unknown_legal_entity"
    )
    assert no_reason.returncode == 2 and "--why" in no_reason.stderr
    nothing = _finsync("exceptions", "resolve", "--home", str(home), "--why", "x")
    assert nothing.returncode == 2
    assert "name the records" in nothing.stderr
    done = _finsync(
        "exceptions",
        "resolve",
        "--home",
        str(home),
        "--kind",
        "unknown_legal_entity",
        "--why",
        "entity being set up",
        "--by",
        "li",
    )
    assert done.returncode == 0 and "resolved 1 exception(s)" in done.stdout
    left = json.loads(
        _finsync(
            "exceptions", "list", "--home", str(home), "--kind", "unknown_legal_entity", "--json"
        ).stdout
    )
    assert left == []
    closed = json.loads(
        _finsync(
            "exceptions",
            "list",
            "--home",
            str(home),
            "--status",
            "resolved",
            "--kind",
            "unknown_legal_entity",
            "--json",
        ).stdout
    )
    assert closed[0]["resolution"] == "manual by li: entity being set up"
    # A later run sees the same cause but keeps the hand resolution: it was a decision.
    again = _summary(_finsync("demo", "--home", str(home), *SCALE, "--json"))
    assert "unknown_legal_entity" not in again["exceptions_open_by_kind"]


def test_demo_with_faults_still_ends_with_zero_drift_and_no_duplicate(tmp_path: Path) -> None:
    home = tmp_path / "home"
    summary = _summary(_finsync("demo", "--home", str(home), *SCALE, "--faults", "--json"))
    assert summary["drift"] == 0
    for recon in (summary["reconciliation"], summary["payment_reconciliation"]):
        assert recon["duplicate_in_erp"] == recon["missing_in_erp"] == 0
    paid_outside = summary["planted"]["paid_out_of_band"]
    assert summary["erp_invoices_in_erp"] == summary["reconciliation"]["matched"] + paid_outside
    assert summary["reconciliation"]["matched"] > 0
    # The outage was real: NetSuite answered 503s and 429s, and some writes never answered.
    assert summary["posting_runs"] >= 1
    sandbox = Sandbox(home / "sandbox")
    for record_type in ("customer", "invoice", "creditmemo", "customerpayment", "customerrefund"):
        external_ids = [r["externalId"] for r in sandbox.netsuite_records(record_type)]
        assert len(external_ids) == len(set(external_ids)), record_type
    assert "posting_rejected" not in summary["exceptions_open_by_kind"]
    assert "posting_dead" not in summary["exceptions_open_by_kind"]


def test_documents_of_a_batch_flow_await_their_window_and_are_not_drift(tmp_path: Path) -> None:
    home = tmp_path / "home"
    windows = '{"customer_payment": "0 3 * * *", "customer_refund": "0 3 * * *"}'
    env = _env(FINSYNC_POSTING_BATCH_WINDOWS=windows)
    summary = _summary(_finsync("demo", "--home", str(home), *SCALE, "--json", env=env))
    payments = summary["payment_reconciliation"]
    # Invoices post at once; payments and refunds wait on the ledger for the 03:00 window.
    assert summary["reconciliation"]["matched"] > 0
    assert payments["awaiting_window"] > 0
    assert payments["matched"] == payments["missing_in_erp"] == 0
    assert summary["drift"] == 0
    sandbox = Sandbox(home / "sandbox")
    assert sandbox.netsuite_records("customerpayment") == []
    assert sandbox.netsuite_records("customerrefund") == []


def test_the_readme_explains_every_exception_kind() -> None:
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    missing = [kind for kind in derive.EXCEPTION_KINDS if f"`{kind}`" not in readme]
    assert not missing, f"README.md does not explain the exception kinds {missing}"


def test_retry_reconciles_the_days_of_what_it_requeued_or_today_for_undated_documents() -> None:
    assert retry_range("2026-10-02", "2026-10-05") == (
        dt.date(2026, 10, 2),
        dt.date(2026, 10, 5),
    )
    # A customer or a Salesforce status has no day: re-posting it must not fail.
    today = dt.datetime.now(dt.UTC).date()
    assert retry_range(None, None) == (today, today)
