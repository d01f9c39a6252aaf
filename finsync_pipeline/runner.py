"""Run the pipeline in-process against a Dagster instance, as the daemon would.

``finsync demo`` and ``finsync run`` use this: the ingest job over a day range, then posting
runs launched from the posting sensor's own run requests, then the read-back and
reconciliation. Every run is recorded in the Dagster instance under $DAGSTER_HOME, so the UI
shows the same materializations, checks and metadata as a deployment would.
"""

import datetime as dt
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dagster as dg
import sqlalchemy as sa

from finsync_pipeline.errors import ConfigurationError, FinsyncError
from finsync_pipeline.ledger import loads
from finsync_pipeline.logic.derive import net_negative_external_id
from finsync_pipeline.logic.reconcile import (
    ALL_STATUSES,
    DRIFT_STATUSES,
    RENEWAL_DRIFT,
    RENEWAL_STATUSES,
)
from finsync_pipeline.partitions import RANGE_END_TAG, RANGE_START_TAG, range_tags
from finsync_pipeline.resources.warehouse import create_engine
from finsync_pipeline.run_health import reap_dead_runs, runner_tags
from finsync_pipeline.settings_check import check_settings, mode_from_env
from finsync_pipeline.sources import SWITCH_OFF_HINT, sources_off

REPO_ROOT = Path(__file__).resolve().parents[1]
# The CLI reports progress and failures itself; the run logs stay in the instance for the UI.
QUIET = {"loggers": {"console": {"config": {"log_level": "CRITICAL"}}}}
MAX_SENSOR_TICKS = 6
# Days before the window a run also ingests for the invoices its money refers to.
MAX_DAYS_BEFORE_WINDOW = 31

# What each system needs in the environment, in the words a user acts on.
REQUIRED_ENV: dict[str, list[str]] = {
    "Stripe": ["STRIPE_API_KEY"],
    "Salesforce": ["SALESFORCE_LOGIN_URL", "SALESFORCE_CLIENT_ID"],
    "NetSuite": [
        "NETSUITE_ACCOUNT_ID",
        "NETSUITE_CONSUMER_KEY",
        "NETSUITE_CONSUMER_SECRET",
        "NETSUITE_TOKEN_ID",
        "NETSUITE_TOKEN_SECRET",
    ],
    "Usage metering": ["METERING_API_KEY"],
    "Avalara": ["AVALARA_ACCOUNT_ID", "AVALARA_LICENSE_KEY"],
}
SANDBOX_ENV: dict[str, list[str]] = {
    "Stripe": ["STRIPE_API_BASE"],
    "NetSuite": ["NETSUITE_BASE_URL"],
    "Usage metering": ["METERING_BASE_URL"],
    "Avalara": ["AVALARA_BASE_URL"],
}


_RELAXED: set[str] = set()


def relax_embedded_dagster_storage(dagster_home: Path) -> None:
    """Let the embedded Dagster instance's SQLite files skip fsync (``synchronous=OFF``).

    Dagster writes two events per asset partition of a run (planned, materialized), each in
    its own transaction: a single-run backfill of a year of daily partitions is thousands of
    fsyncs per asset, a third of the demo's time. Those files hold run history, not money: a
    process crash cannot corrupt them, only a power cut could. The warehouse, and with it the
    posting ledger, keeps ``synchronous=FULL``; connections to any other file are untouched.
    Deployments use PostgreSQL storage (dagster.yaml), where this does not apply.
    """
    root = str(dagster_home.resolve())
    if root in _RELAXED or os.environ.get("FINSYNC_DAGSTER_SQLITE_SYNC", "").upper() == "FULL":
        return
    _RELAXED.add(root)

    @sa.event.listens_for(sa.engine.Engine, "connect")
    def _relax(dbapi_connection: Any, _record: Any) -> None:
        if not type(dbapi_connection).__module__.startswith("sqlite3"):
            return
        cursor = dbapi_connection.cursor()
        files = [row[2] or "" for row in cursor.execute("PRAGMA database_list").fetchall()]
        if files and files[0].startswith(root + os.sep):
            cursor.execute("PRAGMA synchronous=OFF")
        cursor.close()


# The Dagster instance of a deployment (`finsync deploy`): PostgreSQL storage, run monitoring.
DEPLOY_INSTANCE_YAML = "dagster-deploy.yaml"
DEPLOYED_MARKER = "deployed"


def prepare_home(home: Path, *, deploy: bool = False) -> Path:
    """Create the home: warehouse, Dagster instance (with our dagster.yaml), env.

    ``deploy`` gives the instance dagster-deploy.yaml instead. A home once deployed keeps it:
    every later command on that home (``finsync run``, the exceptions queue) works on the
    deployment's own run storage, never on an embedded one beside it.
    """
    home = home.resolve()
    dagster_home = home / "dagster"
    dagster_home.mkdir(parents=True, exist_ok=True)
    marker = dagster_home / DEPLOYED_MARKER
    if deploy:
        marker.write_text("started by finsync deploy; its dagster.yaml is dagster-deploy.yaml\n")
    source = DEPLOY_INSTANCE_YAML if marker.is_file() else "dagster.yaml"
    shutil.copyfile(REPO_ROOT / source, dagster_home / "dagster.yaml")
    os.environ["FINSYNC_HOME"] = str(home)
    os.environ["DAGSTER_HOME"] = str(dagster_home)
    os.environ.setdefault("FINSYNC_WAREHOUSE_URL", f"sqlite:///{home / 'warehouse.db'}")
    return home


# Systems a company may not have: the optional source that switches each one off.
OPTIONAL_SYSTEMS = {"Usage metering": "metering"}


def check_environment() -> None:
    """Raise ConfigurationError naming the first variable a user must set."""
    mode = mode_from_env()
    off = sources_off()
    for system, names in REQUIRED_ENV.items():
        source = OPTIONAL_SYSTEMS.get(system)
        if source in off:
            continue
        extra = SANDBOX_ENV.get(system, []) if mode == "sandbox" else []
        for name in [*names, *extra]:
            if not os.environ.get(name):
                hint = f", {SWITCH_OFF_HINT[source]}" if source is not None else ""
                raise ConfigurationError(f"{system} is not configured: set {name}{hint}")
    jwt = os.environ.get("SALESFORCE_USERNAME") and os.environ.get("SALESFORCE_PRIVATE_KEY")
    if not (jwt or os.environ.get("SALESFORCE_CLIENT_SECRET")):
        raise ConfigurationError(
            "Salesforce is not configured: set SALESFORCE_CLIENT_SECRET, or SALESFORCE_USERNAME "
            "and SALESFORCE_PRIVATE_KEY for the JWT bearer flow"
        )
    # Read by the assets at run time; a wrong value stops here, before any run.
    check_settings()


def _finsync_message(error: Any) -> str | None:
    """The message of the outermost finsync error in a serialized error chain.

    The outermost one is what our code chose to tell the user; its causes are detail.
    """
    while error is not None:
        if error.cls_name in _FINSYNC_ERROR_NAMES:
            return str(error.message).strip().split(": ", 1)[-1]
        error = error.cause
    return None


_FINSYNC_ERROR_NAMES = {
    "FinsyncError",
    "ConfigurationError",
    "UpstreamError",
    "AuthenticationError",
    "RetryableUpstreamError",
    "UnreachableError",
    "PermanentUpstreamError",
    "AmbiguousOutcomeError",
    "ContractViolation",
    "PostingRejected",
}


class RunFailed(FinsyncError):
    """A pipeline run failed; the message is the cause a user can act on."""


def _failed_checks(result: dg.ExecuteInProcessResult) -> list[str]:
    """A line per failed blocking check: which asset, how many records, against what limit."""
    lines = []
    for event in result.all_events:
        evaluation = event.event_specific_data
        if not isinstance(evaluation, dg.AssetCheckEvaluation) or evaluation.passed:
            continue
        meta = {k: getattr(v, "value", v) for k, v in evaluation.metadata.items()}
        lines.append(
            f"{evaluation.asset_key.to_user_string()} {evaluation.check_name}: "
            f"{meta.get('rows quarantined', '?')} of {meta.get('rows checked', '?')} records broke "
            f"the contract, above the limit of {meta.get('threshold', '?')} "
            "(FINSYNC_MAX_BAD_SHARE, once FINSYNC_MIN_BAD_RECORDS are bad); they are in the "
            "quarantine table"
        )
    return lines


def _raise_for(result: dg.ExecuteInProcessResult, job: str) -> None:
    if result.success:
        return
    checks = _failed_checks(result)
    if checks:
        raise RunFailed(f"{job} stopped by a blocking check: " + "; ".join(checks))
    for event in result.all_events:
        if event.is_step_failure and event.step_failure_data is not None:
            error = event.step_failure_data.error
            message = _finsync_message(error) or (error.message.strip() if error else "")
            raise RunFailed(f"{job} failed in {event.step_key}: {message.splitlines()[0]}")
    raise RunFailed(f"{job} failed (run {result.run_id}); see the Dagster UI for its logs")


@dataclass
class PipelineRun:
    """Executes the jobs of a day range on the instance under $DAGSTER_HOME."""

    first_day: dt.date
    last_day: dt.date
    progress: Callable[[str], None]

    def __post_init__(self) -> None:
        from finsync_pipeline.definitions import defs

        self.defs = defs()
        relax_embedded_dagster_storage(Path(os.environ["DAGSTER_HOME"]))
        self.instance = dg.DagsterInstance.get()
        # Runs an earlier `finsync run` left STARTED when it was killed: failed, slots freed.
        for run_id in reap_dead_runs(self.instance):
            self.progress(f"marked run {run_id} failed: its finsync run process is gone")
        self.started = dt.datetime.now(dt.UTC)
        self.posting_runs = 0
        self.reconciled: list[tuple[dt.date, dt.date]] = []

    def _execute(
        self, job_name: str, tags: dict[str, str], selection: list[dg.AssetKey] | None = None
    ) -> None:
        job = self.defs.resolve_job_def(job_name)
        result = job.execute_in_process(
            instance=self.instance,
            tags={**tags, **runner_tags()},
            run_config=QUIET,
            raise_on_error=False,
            asset_selection=selection,
        )
        _raise_for(result, job_name)

    def ingest(self) -> None:
        self._execute("ingest_job", range_tags(self.first_day, self.last_day))

    def days_before_window(self) -> list[dt.date]:
        """Days before the window holding an invoice its money refers to that nothing
        downstream has seen yet (landed by ``stripe_invoice_payments``), oldest first."""
        from finsync_pipeline.defs.automation.definitions import days_behind

        engine = create_engine(os.environ["FINSYNC_WAREHOUSE_URL"])
        with engine.connect() as conn:
            behind = days_behind(conn, MAX_DAYS_BEFORE_WINDOW)
        days = [dt.date.fromisoformat(str(d["day"])) for d in behind]
        return [d for d in days if d < self.first_day]

    def ingest_invoices_of(self, day: dt.date) -> None:
        """Ingest a day for its invoices only: its own money is left to its own run."""
        from finsync_pipeline.defs.automation.definitions import MONEY_EXTRACTS

        graph = set(self.defs.resolve_job_def("ingest_job").asset_layer.executable_asset_keys)
        money = {dg.AssetKey(k) for k in MONEY_EXTRACTS}
        self._execute("ingest_job", range_tags(day, day), selection=sorted(graph - money))

    def post_from_sensor(self) -> None:
        """Tick the posting sensor and run what it asks for, until it has nothing new."""
        sensor = self.defs.resolve_sensor_def("erp_posting_sensor")
        cursor = None
        seen: set[str] = set()
        for _ in range(MAX_SENSOR_TICKS):
            context = dg.build_sensor_context(
                instance=self.instance,
                cursor=cursor,
                definitions=self.defs,
                sensor_name=sensor.name,
                resources=dict(self.defs.resources or {}),
            )
            tick = sensor.evaluate_tick(context)
            cursor = tick.cursor
            requests = [r for r in tick.run_requests or [] if r.run_key not in seen]
            if not requests:
                return
            for request in requests:
                seen.add(str(request.run_key))
                tags = {
                    **request.tags,
                    "dagster/sensor_name": sensor.name,
                    "dagster/run_key": str(request.run_key),
                }
                self.progress(
                    f"posting run for {request.tags.get('dagster/asset_partition_range_start')}"
                    f"..{request.tags.get('dagster/asset_partition_range_end')}"
                )
                self._execute(sensor.job_name or "erp_posting_job", tags)
                self.reconciled.append(
                    (
                        dt.date.fromisoformat(str(request.tags[RANGE_START_TAG])),
                        dt.date.fromisoformat(str(request.tags[RANGE_END_TAG])),
                    )
                )
                self.posting_runs += 1

    def drain(self, max_wait_s: float) -> None:
        """Wait for retries that come due soon (after an ERP outage) and post them.

        A daemon ticks the sensor every minute; in-process, the runner waits for the next
        retry instead, as long as it comes due within ``max_wait_s``. Documents waiting for
        another document, or with nothing due soon, are left to later runs.
        """
        engine = create_engine(os.environ["FINSYNC_WAREHOUSE_URL"])
        deadline = time.monotonic() + max_wait_s
        while True:
            with engine.connect() as conn:
                due = conn.execute(
                    sa.text(
                        "SELECT MIN(next_attempt_at) FROM posting_ledger WHERE state = 'pending' "
                        "AND waiting_for IS NULL"
                    )
                ).scalar()
            if due is None:
                return
            wait = (dt.datetime.fromisoformat(str(due)) - dt.datetime.now(dt.UTC)).total_seconds()
            if time.monotonic() + max(wait, 0) > deadline:
                return
            if wait > 0:
                self.progress(f"waiting {wait:.0f}s for deferred documents to come due")
                time.sleep(wait + 0.5)
            before = self.posting_runs
            self.post_from_sensor()
            if self.posting_runs == before:
                return

    def unreconciled(self) -> list[tuple[dt.date, dt.date]]:
        """The day ranges of the window that no posting run has reconciled yet."""
        gaps: list[tuple[dt.date, dt.date]] = []
        day = self.first_day
        for lo, hi in sorted(self.reconciled):
            if lo > day:
                gaps.append((day, min(lo - dt.timedelta(days=1), self.last_day)))
            day = max(day, hi + dt.timedelta(days=1))
        if day <= self.last_day:
            gaps.append((day, self.last_day))
        return [(lo, hi) for lo, hi in gaps if lo <= hi]

    def reconcile(self, first_day: dt.date, last_day: dt.date) -> None:
        """Read NetSuite back and reconcile a day range no posting run covered."""
        self._execute(
            "erp_posting_job",
            range_tags(first_day, last_day),
            selection=[
                dg.AssetKey(key)
                for key in (
                    "erp_invoices",
                    "invoice_reconciliation",
                    "erp_payments",
                    "payment_reconciliation",
                    "renewal_reconciliation",
                )
            ],
        )

    def extract_tables(self) -> list[str]:
        """The extract assets that land in a table of their own name."""
        graph = self.defs.resolve_asset_graph()
        return sorted(
            key.to_user_string()
            for key in graph.get_all_asset_keys()
            if graph.get(key).group_name == "extract"
        )

    def summary(self) -> dict[str, Any]:
        engine = create_engine(os.environ["FINSYNC_WAREHOUSE_URL"])
        since = self.started.isoformat(timespec="microseconds")
        tables = set(sa.inspect(engine).get_table_names())
        with engine.connect() as conn:

            def scalar(sql: str, **params: Any) -> int:
                return int(conn.execute(sa.text(sql), params).scalar_one() or 0)

            statuses = [
                loads(p).get("status")
                for (p,) in conn.execute(sa.text("SELECT payload FROM stripe_invoices"))
            ]

            def by_status(table: str) -> dict[str, int]:
                return {
                    s: scalar(f"SELECT COUNT(*) FROM {table} WHERE status = :s", s=s)
                    for s in ALL_STATUSES
                }

            recon = by_status("invoice_reconciliation")
            payment_recon = by_status("payment_reconciliation")
            # Money billing has that the ERP does not, because its invoice is in quarantine.
            quarantined_money = {
                str(r.currency): int(r.total or 0)
                for r in conn.execute(
                    sa.text(
                        "SELECT billing_currency AS currency, SUM(billing_total_minor) AS total "
                        "FROM invoice_reconciliation WHERE status = 'quarantined' "
                        "GROUP BY billing_currency ORDER BY billing_currency"
                    )
                )
            }
            renewal_recon = {
                s: scalar("SELECT COUNT(*) FROM renewal_reconciliation WHERE status = :s", s=s)
                for s in RENEWAL_STATUSES
            }
            exceptions = {
                r.kind: int(r.n)
                for r in conn.execute(
                    sa.text(
                        "SELECT kind, COUNT(*) AS n FROM finance_exceptions WHERE status = 'open' "
                        "GROUP BY kind ORDER BY kind"
                    )
                )
            }
            quarantine = {
                r.asset: int(r.n)
                for r in conn.execute(
                    sa.text(
                        "SELECT asset, COUNT(DISTINCT source_id) AS n FROM quarantine "
                        "GROUP BY asset ORDER BY asset"
                    )
                )
            }
            sources = {
                name: scalar(f"SELECT COUNT(*) FROM {name}")
                for name in self.extract_tables()
                if name in tables
            }
            return {
                "sources": sources,
                "accounts": scalar("SELECT COUNT(*) FROM salesforce_accounts"),
                "stripe_invoices": sum(s in ("open", "paid", "uncollectible") for s in statuses),
                # A net-negative invoice posts as the credit memo that stands for it.
                "erp_invoices_posted": scalar(
                    "SELECT COUNT(*) FROM posting_ledger_journal WHERE (doc_type = 'invoice' "
                    "OR (doc_type = 'credit_memo' AND external_id LIKE :net_negative)) "
                    "AND to_state = 'posted' AND at >= :since",
                    since=since,
                    net_negative=net_negative_external_id("") + "%",
                ),
                "erp_customers_posted": scalar(
                    "SELECT COUNT(*) FROM posting_ledger_journal WHERE doc_type = 'customer' "
                    "AND to_state = 'posted' AND at >= :since",
                    since=since,
                ),
                "erp_invoices_in_erp": scalar("SELECT COUNT(*) FROM erp_invoices"),
                "reconciliation": recon,
                "payment_reconciliation": payment_recon,
                "renewal_reconciliation": renewal_recon,
                "drift": sum(recon[k] + payment_recon[k] for k in DRIFT_STATUSES),
                "renewal_drift": sum(renewal_recon[k] for k in RENEWAL_DRIFT),
                "quarantined_minor_by_currency": quarantined_money,
                "exceptions_open": sum(exceptions.values()),
                "exceptions_open_by_kind": exceptions,
                "quarantined_rows": sum(quarantine.values()),
                "quarantined_by_asset": quarantine,
                "posting_runs": self.posting_runs,
                "window": [self.first_day.isoformat(), self.last_day.isoformat()],
            }


def run_pipeline(
    first_day: dt.date,
    last_day: dt.date,
    progress: Callable[[str], None],
    *,
    drain_s: float = 0.0,
) -> dict[str, Any]:
    """Ingest, post (sensor-driven) and reconcile a day range; return the summary."""
    started = time.monotonic()
    run = PipelineRun(first_day, last_day, progress)
    progress(f"ingest: extract, validate, derive {first_day}..{last_day}")
    run.ingest()
    # A payment or credit note of the window for an invoice of an earlier day that was never
    # run: that day runs too, so the payment applies instead of waiting as an exception.
    for day in run.days_before_window():
        progress(f"ingest: {day}, the day of an invoice the window's money refers to")
        run.ingest_invoices_of(day)
    progress("posting sensor: launching posting runs for due ledger rows")
    run.post_from_sensor()
    if drain_s:
        run.drain(drain_s)
    # Posting runs reconcile the days they posted; the days they did not cover (all of them on
    # a rerun where nothing was due) are read back and reconciled here.
    for lo, hi in run.unreconciled():
        progress(f"reconcile: read NetSuite back and reconcile {lo}..{hi}")
        run.reconcile(lo, hi)
    summary = run.summary()
    summary["elapsed_s"] = round(time.monotonic() - started, 1)
    return summary
