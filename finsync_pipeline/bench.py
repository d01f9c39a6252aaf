"""``finsync bench posting``: how close posting comes to the ERP's bound. Prints figures only.

The NetSuite sandbox runs in its own process (with an added latency per request and a
concurrency limit, as armed), N synthetic customers are enqueued on a fresh SQLite ledger, and
one posting engine posts them the way ``erp_postings`` does: a pool of workers sharing one
adaptive limit, every outcome committed to the ledger and its journal before it counts. The
bound is ``min(concurrency, limit) / latency`` documents per second.
"""

import multiprocessing
import resource
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from finsync_pipeline import ledger
from finsync_pipeline.posting import PostingEngine
from finsync_pipeline.resources.concurrency import AdaptiveConcurrency
from finsync_pipeline.resources.http import HttpOptions
from finsync_pipeline.resources.netsuite import NetSuiteResource
from finsync_pipeline.resources.warehouse import create_engine

ERP = "netsuite"


@dataclass(frozen=True)
class PostingBench:
    """What one benchmark run measured."""

    documents: int
    posted: int
    seconds: float
    docs_per_s: float
    bound_docs_per_s: float | None
    ratio_to_bound: float | None
    throttled_429: int
    paused: bool
    cpu_s_per_doc: float
    sandbox_cpu_s_per_doc: float
    journal_verified: bool
    ledger_all_posted: bool


def _serve_netsuite(state: str, latency_s: float, limit: int | None, pipe: Any) -> None:
    """The child: the sandbox with NetSuite's faults armed, until the parent says stop."""
    from finsync_pipeline.sandbox.generator import CompanySpec, generate
    from finsync_pipeline.sandbox.server import Sandbox

    sandbox = Sandbox(Path(state))
    sandbox.seed(generate(CompanySpec(accounts=2, months=1, seed=1)))
    if latency_s:
        sandbox.faults.set_latency(ERP, latency_s)
    if limit:
        sandbox.faults.set_concurrency_limit(ERP, limit)
    with sandbox:
        # Only what serving the posts costs: starting and seeding the sandbox is not counted.
        ready = _cpu_s()
        pipe.send(sandbox.env)
        pipe.recv()
        pipe.send(_cpu_s() - ready)


def _cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _customers(n: int) -> list[ledger.LedgerDoc]:
    return [
        ledger.LedgerDoc(
            ERP,
            "customer",
            f"SF_BENCH{i:07d}",
            "salesforce",
            f"BENCH{i:07d}",
            f"fs-bench-{i}",
            None,
            {
                "externalId": f"SF_BENCH{i:07d}",
                "companyName": f"Bench {i}",
                "isPerson": False,
                "subsidiary": {"id": "1"},
                "currency": {"id": "1"},
            },
        )
        for i in range(n)
    ]


def _resource(env: dict[str, str]) -> NetSuiteResource:
    return NetSuiteResource(
        account_id=env["NETSUITE_ACCOUNT_ID"],
        base_url=env["NETSUITE_BASE_URL"],
        consumer_key=env["NETSUITE_CONSUMER_KEY"],
        consumer_secret=env["NETSUITE_CONSUMER_SECRET"],
        token_id=env["NETSUITE_TOKEN_ID"],
        token_secret=env["NETSUITE_TOKEN_SECRET"],
    )


def _post(env: dict[str, str], url: str, documents: int, concurrency: int) -> dict[str, Any]:
    engine = create_engine(url)
    with engine.begin() as conn:
        ledger.enqueue(conn, _customers(documents), run_id="bench", repost_changed=True)
    limiter = AdaptiveConcurrency(concurrency)
    options = HttpOptions(limiter=limiter)
    netsuite = _resource(env)
    poster = PostingEngine(
        engine,
        netsuite.get_client(http_options=options),
        erp=ERP,
        run_id="bench-posting",
        is_run_alive=lambda _run: False,
        concurrency=concurrency,
        client_factory=lambda: netsuite.get_client(http_options=options),
        limiter=limiter,
    )
    cpu, started = time.process_time(), time.perf_counter()
    poster.post("customer")
    seconds = time.perf_counter() - started
    cpu = time.process_time() - cpu
    with engine.connect() as conn:
        verified = ledger.verify_journal(conn) is None
        states = ledger.state_counts(conn, erp=ERP).get("customer", {})
        recorded = conn.execute(
            sa.text("SELECT count(*) FROM posting_ledger WHERE state = 'posted'")
        ).scalar_one()
    engine.dispose()
    return {
        "posted": int(recorded),
        "seconds": seconds,
        "cpu": cpu,
        "throttled": poster.stats.throttled,
        "paused": poster.stats.paused,
        "verified": verified,
        "all_posted": states == {"posted": documents},
    }


def bench_posting(
    *, documents: int, latency_s: float, limit: int | None, concurrency: int
) -> PostingBench:
    """Post ``documents`` customers against a NetSuite sandbox in its own process."""
    context = multiprocessing.get_context("spawn")
    with tempfile.TemporaryDirectory(prefix="finsync-bench-") as tmp:
        parent, child = context.Pipe()
        server = context.Process(
            target=_serve_netsuite, args=(str(Path(tmp) / "sandbox"), latency_s, limit, child)
        )
        server.start()
        try:
            env = parent.recv()
            url = f"sqlite:///{Path(tmp) / 'warehouse.db'}"
            run = _post(env, url, documents, concurrency)
            parent.send("stop")
            sandbox_cpu = float(parent.recv())
        finally:
            server.join(timeout=30)
            if server.is_alive():
                server.terminate()
    rate = run["posted"] / run["seconds"] if run["seconds"] else 0.0
    slots = min(concurrency, limit) if limit else concurrency
    bound = slots / latency_s if latency_s else None
    return PostingBench(
        documents=documents,
        posted=run["posted"],
        seconds=round(run["seconds"], 3),
        docs_per_s=round(rate, 1),
        bound_docs_per_s=bound,
        ratio_to_bound=round(rate / bound, 3) if bound else None,
        throttled_429=run["throttled"],
        paused=run["paused"],
        cpu_s_per_doc=round(run["cpu"] / max(1, documents), 6),
        sandbox_cpu_s_per_doc=round(sandbox_cpu / max(1, documents), 6),
        journal_verified=run["verified"],
        ledger_all_posted=run["all_posted"],
    )


def report(result: PostingBench) -> str:
    """The figures, one per line."""
    rows = asdict(result)
    width = max(map(len, rows))
    return "\n".join(f"  {k:<{width}}  {v}" for k, v in rows.items())
