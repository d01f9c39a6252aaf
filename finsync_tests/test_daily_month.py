"""Every day works: a month run one day at a time ends exactly as one backfill of it.

A deployment runs ``daily_sync_job`` once a night, and after each run its sensors do what the
run left: the late-changes sensor runs ``catch_up_job`` for older days whose invoices changed,
and the posting sensor runs ``erp_posting_job`` when the ledger holds due documents. A
backfill runs the same month in one run, followed by the same sensors. Both start from a fresh
sandbox seeded with the same company and a fresh warehouse, and must leave NetSuite, the
posting ledger, both reconciliations and the open exceptions the same, document for document.

This takes minutes (a month of nightly runs, twice over with PostgreSQL), so it is marked
``slow`` and left out of ``make test``; ``make test-daily-month`` runs it.
"""

import datetime as dt
import json
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import dagster as dg
import pytest

from finsync_pipeline.definitions import defs
from finsync_pipeline.sandbox.generator import CompanySpec, add_months, generate
from finsync_pipeline.sandbox.server import Sandbox
from finsync_tests.conftest import TEST_END, postgres_schema_url
from finsync_tests.defs.test_assets import _resources
from finsync_tests.test_daily_runs import _daily, _rows

pytestmark = pytest.mark.slow

SPEC = CompanySpec(accounts=30, months=1, seed=13, end=TEST_END)
FIRST_DAY = add_months(TEST_END, -SPEC.months) + dt.timedelta(days=1)
# Sensor ticks after a run before the deployment is expected to be quiet again.
MAX_TICKS = 12
NETSUITE_TYPES = ["customer", "invoice", "creditmemo", "customerpayment", "customerrefund"]
ERP_INVOICE_FIELD = "Finsync_ERP_Invoice_Id__c"
RECONCILIATION_COLUMNS = (
    "partition_date, external_id, status, billing_currency, billing_total_minor, "
    "erp_currency, erp_total_minor, billing_status, billing_remaining_minor, erp_status, "
    "erp_remaining_minor"
)


class Deployment:
    """One sandbox, warehouse and Dagster instance, with the daemon's run-key memory."""

    def __init__(self, root: Path, url: str) -> None:
        root.mkdir()
        (root / "dagster").mkdir()
        self.sandbox = Sandbox(root / "sandbox")
        self.sandbox.seed(generate(SPEC))
        self.url = url
        self.instance = dg.DagsterInstance.local_temp(str(root / "dagster"))
        # The daemon launches a run key once per sensor, however often a tick returns it.
        self.seen: set[str] = set()

    def settle(self) -> None:
        """Tick the late-changes and posting sensors, running what they ask, until quiet."""
        for _ in range(MAX_TICKS):
            launched = self._catch_up() + self._post_due()
            if not launched:
                return
        raise AssertionError(f"the sensors were still launching runs after {MAX_TICKS} ticks")

    def _catch_up(self) -> int:
        sensor = defs().resolve_sensor_def("late_changes_sensor")
        context = dg.build_sensor_context(
            instance=self.instance,
            definitions=defs(),
            resources={"warehouse": _resources(self.sandbox.env, self.url)["warehouse"]},
        )
        requests = [
            r
            for r in sensor.evaluate_tick(context).run_requests or []
            if f"late:{r.run_key}" not in self.seen
        ]
        for request in requests:
            self.seen.add(f"late:{request.run_key}")
            _daily(
                self.sandbox,
                self.url,
                dt.date.fromisoformat(str(request.partition_key)),
                self.instance,
                job_name="catch_up_job",
            )
        return len(requests)

    def _post_due(self) -> int:
        sensor = defs().resolve_sensor_def("erp_posting_sensor")
        context = dg.build_sensor_context(
            instance=self.instance,
            definitions=defs(),
            resources={"warehouse": _resources(self.sandbox.env, self.url)["warehouse"]},
        )
        requests = [
            r
            for r in sensor.evaluate_tick(context).run_requests or []
            if f"post:{r.run_key}" not in self.seen
        ]
        for request in requests:
            self.seen.add(f"post:{request.run_key}")
            result = (
                defs()
                .resolve_job_def("erp_posting_job")
                .execute_in_process(
                    instance=self.instance,
                    tags={**request.tags, "dagster/run_key": str(request.run_key)},
                    resources=_resources(self.sandbox.env, self.url),
                )
            )
            assert result.success
        return len(requests)

    def _ledger(self) -> list[tuple[Any, ...]]:
        """Each ledger row with its payload's hash; a Salesforce status names the NetSuite
        invoice it shows by that invoice's externalId, as NetSuite numbers its internal ids in
        the order documents arrive, which a month of nights and one backfill do not share."""
        external = {
            str(r["id"]): r.get("externalId") for r in self.sandbox.netsuite_records("invoice")
        }
        rows = []
        for erp, doc_type, external_id, state, stored_hash, payload in _rows(
            self.url,
            "SELECT erp, doc_type, external_id, state, payload_hash, payload FROM posting_ledger",
        ):
            payload_hash = stored_hash
            if erp == "salesforce":
                fields = json.loads(payload)
                erp_id = fields.get(ERP_INVOICE_FIELD)
                if erp_id is not None:
                    fields[ERP_INVOICE_FIELD] = external.get(str(erp_id), f"unknown {erp_id}")
                payload_hash = json.dumps(fields, sort_keys=True)
            rows.append((erp, doc_type, external_id, state, payload_hash))
        return rows

    def state(self) -> dict[str, dict[tuple[Any, ...], Any]]:
        """What the month left, keyed document by document."""
        return {
            "netsuite": netsuite_documents(self.sandbox),
            "posting_ledger": _keyed(self._ledger(), 3),
            "invoice_reconciliation": _keyed(
                _rows(self.url, f"SELECT {RECONCILIATION_COLUMNS} FROM invoice_reconciliation"), 2
            ),
            "payment_reconciliation": _keyed(
                _rows(self.url, f"SELECT {RECONCILIATION_COLUMNS} FROM payment_reconciliation"), 2
            ),
            "open finance_exceptions": _keyed(
                _rows(
                    self.url,
                    "SELECT kind, source_id, partition_date FROM finance_exceptions "
                    "WHERE status = 'open'",
                ),
                2,
            ),
        }


def _keyed(rows: list[tuple[Any, ...]], key: int) -> dict[tuple[Any, ...], Any]:
    out = {tuple(r[:key]): tuple(r[key:]) for r in rows}
    assert len(out) == len(rows), "a key repeats"
    return out


def _amount(value: Any) -> Decimal | None:
    return None if value is None else Decimal(str(value))


def netsuite_documents(sb: Sandbox) -> dict[tuple[Any, ...], Any]:
    """Each NetSuite record by (type, externalId): what it is worth and what it applies to,
    references written as the other record's externalId; internal ids and timestamps left out.
    """
    records = {rtype: sb.netsuite_records(rtype) for rtype in NETSUITE_TYPES}
    external = {
        (rtype, str(r["id"])): r.get("externalId") for rtype, rs in records.items() for r in rs
    }

    def ref(rtype: str, value: Any) -> Any:
        return None if not value else external.get((rtype, str(value["id"])), "?")

    out: dict[tuple[Any, ...], Any] = {}
    for rtype, rs in records.items():
        for r in rs:
            key = (rtype, r.get("externalId"))
            assert key not in out, f"NetSuite holds {key} twice"
            if rtype == "customer":
                out[key] = (
                    r.get("companyName"),
                    ref("customer", r.get("parent")),
                    (r.get("subsidiary") or {}).get("id"),
                    (r.get("currency") or {}).get("id"),
                )
                continue
            applied = sorted(
                (
                    a["doc"]["links"][0]["href"].rsplit("/", 2)[-2],
                    ref(a["doc"]["links"][0]["href"].rsplit("/", 2)[-2], a["doc"]),
                    _amount(a["amount"]),
                )
                for a in (r.get("apply") or {}).get("items", [])
            )
            lines = [
                (str(line["item"]["id"]), _amount(line.get("amount")), _amount(line["quantity"]))
                for line in (r.get("item") or {}).get("items", [])
            ]
            out[key] = (
                ref("customer", r.get("entity") or r.get("customer")),
                (r.get("currency") or {}).get("id"),
                r.get("status"),
                _amount(r.get("total")),
                _amount(r.get("amountRemaining")),
                _amount(r.get("unapplied")),
                ref("invoice", r.get("createdFrom")),
                tuple(applied),
                tuple(lines),
            )
    return out


def _differences(
    daily: dict[tuple[Any, ...], Any], backfill: dict[tuple[Any, ...], Any]
) -> list[str]:
    lines = []
    for key in sorted(set(daily) | set(backfill), key=repr):
        if key not in backfill:
            lines.append(f"only daily:    {key} {daily[key]}")
        elif key not in daily:
            lines.append(f"only backfill: {key} {backfill[key]}")
        elif daily[key] != backfill[key]:
            lines.append(f"differs:       {key} daily {daily[key]} backfill {backfill[key]}")
    return lines


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def warehouse_urls(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[str, str]]:
    """Two fresh warehouses (daily, backfill) of the same kind."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'daily.db'}", f"sqlite:///{tmp_path / 'backfill.db'}"
        return
    daily, backfill = postgres_schema_url(), postgres_schema_url()
    try:
        yield next(daily), next(backfill)
    finally:
        daily.close()
        backfill.close()


def test_a_month_of_nightly_runs_ends_as_one_backfill_of_it(
    tmp_path: Path, warehouse_urls: tuple[str, str]
) -> None:
    daily_url, backfill_url = warehouse_urls
    nightly = Deployment(tmp_path / "nightly", daily_url)
    backfill = Deployment(tmp_path / "backfill", backfill_url)

    with nightly.sandbox:
        day = FIRST_DAY
        while day <= TEST_END:
            _daily(nightly.sandbox, nightly.url, day, nightly.instance)
            nightly.settle()
            day += dt.timedelta(days=1)
        by_day = nightly.state()

    with backfill.sandbox:
        _daily(backfill.sandbox, backfill.url, FIRST_DAY, backfill.instance, last_day=TEST_END)
        backfill.settle()
        at_once = backfill.state()

    # The month did something: documents of every kind reached NetSuite.
    kinds = {rtype for rtype, _ in at_once["netsuite"]}
    assert kinds == set(NETSUITE_TYPES), kinds
    report = {
        name: _differences(by_day[name], at_once[name])
        for name in by_day
        if by_day[name] != at_once[name]
    }
    assert not report, "\n".join(
        f"{name}: {len(lines)} difference(s)\n  " + "\n  ".join(lines[:40])
        for name, lines in report.items()
    )
