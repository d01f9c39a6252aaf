"""``finsync bench near-real-time``: seconds from Stripe to NetSuite, measured.

A small company's history is run and posted first, as the nightly runs leave it. Then, while
the Stripe events sensor and the posting sensor are ticked as the daemon ticks them (each once
its interval has passed, cursor kept, run keys deduplicated), a billing thread finalizes one
cycle invoice every ``spacing`` seconds in the sandbox and charges it at once, as Stripe does
for ``charge_automatically``. Each invoice's latency is from its finalization to the moment the
posting ledger records NetSuite's answer (``posted_at``), and the same for its payment.

Runs execute in the ticking process, one after another, so a tick waits while a run works;
the daemon launches runs in their own processes and keeps ticking, so a deployment is no
slower than these figures.
"""

import datetime as dt
import os
import statistics
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import dagster as dg
import sqlalchemy as sa

from finsync_pipeline.definitions import build_resources, defs
from finsync_pipeline.defs.automation.stripe_events import INTERVAL_ENV, SENSOR_NAME
from finsync_pipeline.partitions import range_tags
from finsync_pipeline.resources.warehouse import create_engine
from finsync_pipeline.sandbox.generator import CompanySpec, add_months, generate
from finsync_pipeline.sandbox.live_billing import (
    collect_invoice,
    cycle_invoices,
    finalize_next_invoice,
)
from finsync_pipeline.sandbox.server import Sandbox
from finsync_pipeline.sensor_ticks import SensorTicker

POSTING_SENSOR = "erp_posting_sensor"


@dataclass
class Figures:
    """Latencies in seconds, by what reached the ERP."""

    interval_s: int
    invoices: list[float] = field(default_factory=list)
    payments: list[float] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)

    def summary(self) -> dict[str, object]:
        """p50 and p95 of each, and how many were measured."""
        return {
            "sensor_interval_s": self.interval_s,
            **{
                name: {"n": len(v), "p50_s": _pct(v, 50), "p95_s": _pct(v, 95)}
                for name, v in (("invoice", self.invoices), ("payment", self.payments))
            },
            "not in the ERP when the benchmark gave up": self.missing,
        }


def _pct(values: list[float], pct: int) -> float | None:
    if not values:
        return None
    if len(values) == 1:
        return round(values[0], 1)
    return round(statistics.quantiles(values, n=100, method="inclusive")[pct - 1], 1)


def run_bench(
    *,
    samples: int,
    spacing_s: float,
    interval_s: int,
    accounts: int,
    seed: int,
    progress: Callable[[str], None],
) -> Figures:
    """Measure ``samples`` invoices and their payments from Stripe to NetSuite."""
    os.environ[INTERVAL_ENV] = str(interval_s)
    with tempfile.TemporaryDirectory(prefix="finsync-bench-nrt-") as tmp:
        root = Path(tmp)
        yesterday = dt.datetime.now(dt.UTC).date() - dt.timedelta(days=1)
        spec = CompanySpec(accounts=accounts, months=1, seed=seed, end=yesterday)
        sandbox = Sandbox(root / "sandbox")
        progress(f"sandbox: a company of {accounts} accounts over one month (seed {seed})")
        sandbox.seed(generate(spec))
        with sandbox:
            ticker = _ticker(sandbox, root)
            progress("history: the nightly runs of the month, and its posting")
            _history(ticker, add_months(yesterday, -1) + dt.timedelta(days=1), yesterday)
            ticker.tick(SENSOR_NAME)
            return _measure(
                sandbox,
                ticker,
                samples=samples,
                spacing_s=spacing_s,
                interval_s=interval_s,
                progress=progress,
            )


def _ticker(sandbox: Sandbox, root: Path) -> SensorTicker:
    os.environ.update(sandbox.env)
    os.environ["FINSYNC_WAREHOUSE_URL"] = f"sqlite:///{root / 'warehouse.db'}"
    # A small company carries as many planted problems as a large one: a higher bad share.
    os.environ.setdefault("FINSYNC_MAX_BAD_SHARE", "0.2")
    (root / "dagster").mkdir()
    instance = dg.DagsterInstance.local_temp(str(root / "dagster"))
    return SensorTicker(defs(), instance, build_resources("sandbox"))


def _history(ticker: SensorTicker, first: dt.date, last: dt.date) -> None:
    result = ticker.definitions.resolve_job_def("daily_sync_job").execute_in_process(
        instance=ticker.instance, resources=ticker.resources, tags=range_tags(first, last)
    )
    if not result.success:
        raise RuntimeError("the history run failed; see the Dagster logs above")
    while ticker.tick(POSTING_SENSOR).runs:
        pass


def _measure(
    sandbox: Sandbox,
    ticker: SensorTicker,
    *,
    samples: int,
    spacing_s: float,
    interval_s: int,
    progress: Callable[[str], None],
) -> Figures:
    templates = _clean_templates(sandbox, str(os.environ["FINSYNC_WAREHOUSE_URL"]))
    started: dict[str, tuple[float, str]] = {}  # invoice -> (finalized at, its charge)
    lock = threading.Lock()

    failed: list[BaseException] = []

    def bill() -> None:
        try:
            for n in range(samples):
                at = time.time()
                invoice = finalize_next_invoice(sandbox, templates[n % len(templates)])
                charge = collect_invoice(sandbox, invoice)
                with lock:
                    started[invoice] = (at, charge)
                time.sleep(spacing_s)
        except Exception as e:  # reported by the measuring loop, which stops on it
            failed.append(e)

    biller = threading.Thread(target=bill, name="stripe-billing", daemon=True)
    biller.start()
    figures = Figures(interval_s)
    done: set[str] = set()
    engine = create_engine(str(os.environ["FINSYNC_WAREHOUSE_URL"]))
    # Far beyond any target: a document still missing by then is reported, not waited for.
    give_up = time.monotonic() + samples * spacing_s + 10 * interval_s + 300
    while len(done) < samples * 2 and time.monotonic() < give_up:
        if failed:
            raise RuntimeError(f"billing in the sandbox failed: {failed[0]}") from failed[0]
        ticker.tick_due([SENSOR_NAME, POSTING_SENSOR])
        with lock:
            waiting = dict(started)
        for invoice, (at, charge) in waiting.items():
            for source, bucket in ((invoice, figures.invoices), (charge, figures.payments)):
                posted = _posted_at(engine, source)
                if source not in done and posted is not None:
                    done.add(source)
                    bucket.append(posted - at)
                    progress(f"{source}: in NetSuite after {posted - at:.1f} s")
        time.sleep(0.5)
    biller.join()
    figures.missing = sorted(
        {s for invoice, (_, charge) in started.items() for s in (invoice, charge)} - done
    )
    return figures


def _clean_templates(sandbox: Sandbox, url: str) -> list[str]:
    """Cycle invoices the history posted: the generator plants malformed, unmapped and
    mistaxed ones, whose copies would be held, as they should, and never reach the ERP."""
    with create_engine(url).connect() as conn:
        posted = {
            str(r[0])
            for r in conn.execute(
                sa.text(
                    "SELECT source_id FROM posting_ledger WHERE doc_type = 'invoice' "
                    "AND state = 'posted'"
                )
            )
        }
    return [i for i in cycle_invoices(sandbox) if i in posted]


def _posted_at(engine: sa.Engine, source_id: str) -> float | None:
    with engine.connect() as conn:
        row = conn.execute(
            sa.text(
                "SELECT posted_at FROM posting_ledger WHERE source_id = :id AND state = 'posted'"
            ),
            {"id": source_id},
        ).first()
    if row is None or row.posted_at is None:
        return None
    return dt.datetime.fromisoformat(str(row.posted_at)).timestamp()
