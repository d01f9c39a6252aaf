"""The ``finsync`` command: the demo, the pipeline on demand, the deployment, the sandbox, the UI.

Errors a user can act on print one line (which system, which variable) and exit 2; they never
print a stack trace or a secret.
"""

import argparse
import contextlib
import datetime as dt
import getpass
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, NoReturn

from finsync_pipeline.errors import ConfigurationError, FinsyncError

# With --faults, how long the demo waits for documents deferred by the ERP outage.
DRAIN_S = 240.0
# Sandbox ports in order: Stripe, Salesforce, NetSuite, metering, AvaTax.
SANDBOX_PORTS = (12111, 12112, 12113, 12114, 12115)

DEFAULT_HOME = ".finsync"


def _progress(quiet: bool) -> Any:
    started = time.monotonic()

    def report(message: str) -> None:
        if not quiet:
            print(f"[{time.monotonic() - started:6.1f}s] {message}", file=sys.stderr, flush=True)

    return report


def _date(text: str) -> dt.date:
    try:
        return dt.date.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a day; give one such as 2026-10-01"
        ) from None


class _Parser(argparse.ArgumentParser):
    """argparse, with a wrong argument told in one line (the flag and what is allowed)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"finsync: {self.prog}: {message} (see {self.prog} --help)\n")


def _check_day_range(args: argparse.Namespace) -> None:
    first, last = getattr(args, "from", None), getattr(args, "to", None)
    if first is not None and last is None and args.command == "run":
        last = dt.datetime.now(dt.UTC).date() - dt.timedelta(days=1)
        if first > last:
            raise ConfigurationError(
                f"--from {first} is after --to {last} (the default, yesterday UTC); "
                "give a --to on or after --from"
            )
    if first is not None and last is not None and first > last:
        raise ConfigurationError(
            f"--from {first} is after --to {last}; give a --from on or before --to"
        )


def _print_table(command: str, summary: dict[str, Any]) -> None:
    recon = summary["reconciliation"]
    rows = [
        ("Salesforce accounts", summary["accounts"]),
        ("Stripe invoices (finalized or paid)", summary["stripe_invoices"]),
        ("NetSuite customers posted by this run", summary["erp_customers_posted"]),
        ("NetSuite invoices posted by this run", summary["erp_invoices_posted"]),
        ("NetSuite invoices in the ERP (window)", summary["erp_invoices_in_erp"]),
        ("Invoices reconciled: matched", recon["matched"]),
        ("Invoices reconciled: held by an open exception", recon["held_by_exception"]),
        ("Invoices in quarantine (not in the ERP)", recon["quarantined"]),
        ("Payments and refunds reconciled: matched", summary["payment_reconciliation"]["matched"]),
        (
            "Awaiting a batch posting window",
            recon["awaiting_window"] + summary["payment_reconciliation"]["awaiting_window"],
        ),
        ("Renewals reconciled: matched", summary["renewal_reconciliation"]["matched"]),
        ("Drift: invoices and payments against the ERP", summary["drift"]),
        ("Drift: renewals (CRM vs billing vs ERP)", summary["renewal_drift"]),
        ("Finance exceptions open", summary["exceptions_open"]),
        ("Quarantined records", summary["quarantined_rows"]),
        ("Elapsed (s)", summary["elapsed_s"]),
    ]
    width = max(len(label) for label, _ in rows)
    print(f"finsync {command}: {summary['window'][0]} .. {summary['window'][1]}")
    for label, value in rows:
        print(f"  {label:<{width}}  {value:>8}")
    for currency, minor in summary["quarantined_minor_by_currency"].items():
        print(f"  in quarantine, not in the ERP: {minor} {currency} (minor units)")
    if summary["exceptions_open_by_kind"]:
        kinds = ", ".join(f"{k} {v}" for k, v in summary["exceptions_open_by_kind"].items())
        print(f"  open exceptions by kind: {kinds}")


def cmd_demo(args: argparse.Namespace) -> int:
    from finsync_pipeline.runner import check_environment, prepare_home, run_pipeline
    from finsync_pipeline.sandbox.generator import add_months, generate
    from finsync_pipeline.sandbox.server import Sandbox

    progress = _progress(args.json and args.quiet)
    started = time.monotonic()
    home = prepare_home(Path(args.home))
    _refuse_another_company(home, args)
    sandbox = Sandbox(home / "sandbox", tls=args.tls)
    if not sandbox.is_seeded():
        spec = _company(args)
        progress(
            f"sandbox: generating a company of {spec.accounts} accounts over "
            f"{spec.months} months (seed {spec.seed})"
        )
        sandbox.seed(generate(spec))
    stored = sandbox.spec
    if stored is None:
        raise FinsyncError(f"sandbox state {home / 'sandbox'} holds no company spec")
    spec = stored
    with sandbox:
        if args.faults:
            sandbox.arm_fault_preset()
            progress(
                "sandbox: faults armed (throttling, an ERP maintenance window, "
                "concurrency limits, writes that commit but never answer, "
                "Stripe events delivered twice)"
            )
        # Pointed at the sandbox exactly as a deployment is pointed at the real services.
        os.environ.update(sandbox.env)
        os.environ.setdefault("FINSYNC_MODE", "sandbox")
        check_environment()
        first_day = add_months(spec.end, -spec.months) + dt.timedelta(days=1)
        summary = run_pipeline(
            first_day, spec.end, progress, drain_s=DRAIN_S if args.faults else 0.0
        )
        summary["planted"] = {k: len(v) for k, v in sandbox.planted().items()}
        summary["sandbox_requests"] = sandbox.request_counts()
    summary["elapsed_s"] = round(time.monotonic() - started, 1)
    _print_table("demo", summary)
    if args.json:
        print(json.dumps(summary, sort_keys=True))
    return 0


COMPANY_FIELDS = ("accounts", "months", "seed", "end")
# Tables that hold a company's data once any pipeline has run on a home.
COMPANY_TABLES = ("salesforce_accounts", "stripe_invoices", "posting_ledger")


def _company(args: argparse.Namespace) -> Any:
    """The company the flags ask for; the ones not given keep CompanySpec's defaults."""
    from finsync_pipeline.sandbox.generator import CompanySpec

    given = {name: getattr(args, name) for name in COMPANY_FIELDS}
    return CompanySpec(**{name: value for name, value in given.items() if value is not None})


def _refuse_another_company(home: Path, args: argparse.Namespace) -> None:
    """Stop a demo that would mix two companies in one warehouse: the home's sandbox holds a
    company other than the flags ask for, or the warehouse holds data of systems the home's
    sandbox never served (a `finsync run` home)."""
    import sqlalchemy as sa

    from finsync_pipeline.sandbox.server import STATE_FILE, Sandbox

    state = home / "sandbox"
    spec = Sandbox(state).spec if (state / STATE_FILE).is_file() else None
    if spec is not None:
        differ = [
            f"--{name} {getattr(args, name)} (it holds {getattr(spec, name)})"
            for name in COMPANY_FIELDS
            if getattr(args, name) is not None and getattr(args, name) != getattr(spec, name)
        ]
        if differ:
            raise ConfigurationError(
                f"home {home} holds another company than {', '.join(differ)}; drop those flags "
                "to run it again, or use another --home for a new company"
            )
        return
    url = os.environ["FINSYNC_WAREHOUSE_URL"]
    if url.startswith("sqlite:///") and not Path(url.removeprefix("sqlite:///")).is_file():
        return
    engine = sa.create_engine(url, poolclass=sa.pool.NullPool)
    try:
        with engine.connect() as conn:
            tables = set(sa.inspect(conn).get_table_names())
            held = [
                t
                for t in COMPANY_TABLES
                if t in tables and conn.execute(sa.text(f"SELECT 1 FROM {t} LIMIT 1")).first()
            ]
    finally:
        engine.dispose()
    if held:
        raise ConfigurationError(
            f"home {home} holds the data of another company (its warehouse has {held[0]} rows, "
            "not from a finsync demo); use another --home for the demo"
        )


def cmd_run(args: argparse.Namespace) -> int:
    from finsync_pipeline.runner import check_environment, prepare_home, run_pipeline

    prepare_home(Path(args.home))
    check_environment()
    last = args.to or dt.datetime.now(dt.UTC).date() - dt.timedelta(days=1)
    first = getattr(args, "from") or last
    summary = run_pipeline(first, last, _progress(args.json and args.quiet))
    _print_table("run", summary)
    if args.json:
        print(json.dumps(summary, sort_keys=True))
    return 0


def cmd_sandbox_serve(args: argparse.Namespace) -> int:
    from finsync_pipeline.sandbox.server import serve

    spec = _company(args)
    serve(
        Path(args.state),
        host=args.host,
        ports=args.ports,
        spec=spec,
        faults=args.faults,
        tls=args.tls,
        ready_file=Path(args.ready_file) if args.ready_file else None,
    )
    return 0


def cmd_sandbox_wait(args: argparse.Namespace) -> int:
    from finsync_pipeline.sandbox.server import wait_ready

    print(wait_ready(Path(args.state), args.timeout), end="")
    return 0


def cmd_schema_export(args: argparse.Namespace) -> int:
    from finsync_pipeline.schemas.export import CONTRACTS, json_schema, markdown

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    index = [
        "# finsync contracts",
        "",
        "| contract | version | kind | files |",
        "|---|---|---|---|",
    ]
    for info in CONTRACTS:
        stem = f"{info.name}.v{info.version}"
        (out / f"{stem}.schema.json").write_text(json.dumps(json_schema(info), indent=2) + "\n")
        (out / f"{stem}.md").write_text(markdown(info))
        index.append(
            f"| {info.name} | {info.version} | {info.kind} | "
            f"[{stem}.md]({stem}.md), [{stem}.schema.json]({stem}.schema.json) |"
        )
    (out / "README.md").write_text("\n".join(index) + "\n")
    print(f"wrote {len(CONTRACTS)} contracts (JSON Schema and markdown) to {out}")
    return 0


def _selection(args: argparse.Namespace) -> Any:
    from finsync_pipeline.exceptions_queue import Selection
    from finsync_pipeline.logic.derive import EXCEPTION_KINDS

    # A misspelt queue or kind would match nothing and read as "no exceptions match".
    queues = sorted({queue for _, queue in EXCEPTION_KINDS.values()})
    for flag, value, allowed in (
        ("--queue", args.queue, queues),
        ("--kind", args.kind, sorted(EXCEPTION_KINDS)),
    ):
        if value is not None and value not in allowed:
            raise ConfigurationError(
                f"{flag} {value!r} is unknown; use one of {', '.join(allowed)}"
            )
    return Selection(
        source_ids=tuple(getattr(args, "records", None) or ()),
        queue=args.queue,
        kind=args.kind,
        date_from=getattr(args, "from").isoformat() if getattr(args, "from") else None,
        date_to=args.to.isoformat() if args.to else None,
        status=getattr(args, "status", "open"),
    )


def _warehouse(home: str) -> Any:
    from finsync_pipeline.resources.warehouse import create_engine
    from finsync_pipeline.runner import prepare_home

    # Working the queue of a home that is not there would create it and find it empty. With
    # FINSYNC_WAREHOUSE_URL set the warehouse is elsewhere, and the home only Dagster's.
    if not os.environ.get("FINSYNC_WAREHOUSE_URL") and not Path(home).is_dir():
        raise ConfigurationError(
            f"home {Path(home).resolve()} does not exist; pass the --home (or FINSYNC_HOME) "
            "that finsync demo or finsync run used"
        )
    prepare_home(Path(home))
    return create_engine(os.environ["FINSYNC_WAREHOUSE_URL"])


def _actor(args: argparse.Namespace) -> str:
    return str(args.by or os.environ.get("USER") or getpass.getuser())


def _print_stuck_work(engine: Any) -> None:
    """Posting work whose holder stopped, below the queue: what an operator must see."""
    from finsync_pipeline.exceptions_queue import stuck_work

    stuck = stuck_work(engine)
    if not stuck.held_past_lease.empty:
        print(
            f"{len(stuck.held_past_lease)} document(s) held in flight past their lease (their "
            "run stopped renewing it; the next posting run settles them by lookup):"
        )
        print(stuck.held_past_lease.to_string(index=False, max_colwidth=60))
    if not stuck.settled.empty:
        print(f"last {len(stuck.settled)} document(s) settled by lookup after their run died:")
        print(stuck.settled.to_string(index=False, max_colwidth=90))


def cmd_exceptions_list(args: argparse.Namespace) -> int:
    from finsync_pipeline.exceptions_queue import list_exceptions

    selection = _selection(args)
    engine = _warehouse(args.home)
    rows = list_exceptions(engine, selection)
    if args.json:
        print(rows.to_json(orient="records"))
        return 0
    if rows.empty:
        print("no exceptions match")
        _print_stuck_work(engine)
        return 0
    columns = [
        "kind",
        "owner_queue",
        "severity",
        "source_id",
        "partition_date",
        "status",
        "age_days",
        "detail",
    ]
    print(rows[columns].to_string(index=False, max_colwidth=90))
    print(f"{len(rows)} exception(s)")
    _print_stuck_work(engine)
    return 0


def cmd_ledger_verify(args: argparse.Namespace) -> int:
    """Audit the posting ledger; exit 1 when anything does not verify."""
    from finsync_pipeline import ledger

    with _warehouse(args.home).connect() as conn:
        found = ledger.audit(conn)
    if args.json:
        print(
            json.dumps(
                {
                    "intact": found.intact,
                    "transitions": found.transitions,
                    "head_seq": found.head_seq,
                    "head_seal": found.head_hash,
                    "keyed": found.keyed,
                    "checkpoints": found.checkpoints,
                    "first_broken": found.first_broken,
                    "problems": found.problems,
                }
            )
        )
        return 0 if found.intact else 1
    for problem in found.problems:
        print(f"finsync: ledger: {problem}")
    if not found.keyed and found.transitions:
        print(
            f"warning: the journal is not sealed with a key: set {ledger.LEDGER_KEY_ENV} so a "
            "rewritten chain cannot be re-sealed"
        )
    verdict = "intact" if found.intact else "NOT intact"
    print(
        f"ledger {verdict}: {found.transitions} transition(s), head seq {found.head_seq}, "
        f"{found.checkpoints} checkpoint(s) compared"
    )
    return 0 if found.intact else 1


def cmd_exceptions_show(args: argparse.Namespace) -> int:
    from finsync_pipeline.exceptions_queue import show

    record = show(_warehouse(args.home), args.record)
    if args.json:
        print(json.dumps(record, default=str, sort_keys=True))
        return 0
    print(f"record {record['source_id']}")
    for section in ("exceptions", "ledger", "quarantine", "actions"):
        print(f"  {section}:")
        for row in record[section] or [{"(none)": ""}]:
            print("    " + "; ".join(f"{k}={v}" for k, v in row.items() if v not in (None, "")))
    return 0


def cmd_exceptions_resolve(args: argparse.Namespace) -> int:
    from finsync_pipeline.exceptions_queue import resolve

    selection = _selection(args)
    count = resolve(_warehouse(args.home), selection, actor=_actor(args), reason=args.why)
    print(f"resolved {count} exception(s), recorded as by {_actor(args)}: {args.why}")
    return 0


def cmd_warehouse_migrate(args: argparse.Namespace) -> int:
    """Set the warehouse's schema up, or bring it to this release: the owner's job."""
    from finsync_pipeline.resources.warehouse import migrate_url
    from finsync_pipeline.runner import prepare_home

    prepare_home(Path(args.home))
    url = os.environ["FINSYNC_WAREHOUSE_URL"]
    version = migrate_url(url)
    print(f"warehouse migrated: schema {version}")
    return 0


def retry_range(date_from: str | None, date_to: str | None) -> tuple[dt.date, dt.date]:
    """The days to reconcile after re-posting: those of the re-queued documents, or today when
    none has a day (a customer, a Salesforce status)."""
    today = dt.datetime.now(dt.UTC).date()
    first = dt.date.fromisoformat(date_from) if date_from else today
    last = dt.date.fromisoformat(date_to) if date_to else first
    return first, last


def cmd_exceptions_retry(args: argparse.Namespace) -> int:
    from finsync_pipeline.exceptions_queue import retry

    selection = _selection(args)
    outcome = retry(_warehouse(args.home), selection, actor=_actor(args), reason=args.why)
    for item in outcome.needs_fix:
        print(f"not re-postable: {item}; it resolves itself once its cause is fixed")
    print(f"queued {len(outcome.requeued)} document(s) for posting again")
    if args.post and outcome.requeued:
        from finsync_pipeline.exceptions_queue import posting_report
        from finsync_pipeline.runner import PipelineRun

        with _systems(Path(args.home)):
            first, last = retry_range(outcome.date_from, outcome.date_to)
            run = PipelineRun(first, last, _progress(False))
            if outcome.date_from:
                # Derive the documents' days again, so what is sent follows today's mappings.
                run.ingest()
            run.post_from_sensor()
            for lo, hi in run.unreconciled():
                run.reconcile(lo, hi)
            summary = run.summary()
        report = posting_report(_warehouse(args.home), outcome.requeued)
        for doc in report:
            items = f" (items {', '.join(doc['items_sent'])})" if doc["items_sent"] else ""
            answer = (
                f"posted, internal id {doc['erp_internal_id']}"
                if doc["state"] == "posted"
                else f"{doc['state']}: {doc['erp_answer'] or 'not sent yet'}"
            )
            print(f"sent {doc['doc_type']} {doc['external_id']}{items}; {doc['erp']}: {answer}")
        posted = sum(doc["state"] == "posted" for doc in report)
        print(f"posted {posted} document(s); drift now {summary['drift']}")
    return 0


@contextlib.contextmanager
def _systems(home: Path) -> Iterator[None]:
    """The configured systems, or the home's own sandbox when nothing is configured."""
    from finsync_pipeline.runner import check_environment
    from finsync_pipeline.sandbox.server import STATE_FILE, Sandbox

    try:
        check_environment()
    except FinsyncError:
        if not (home / "sandbox" / STATE_FILE).is_file():
            raise
        with Sandbox(home / "sandbox") as sandbox:
            os.environ.update(sandbox.env)
            yield
        return
    yield


def cmd_bench_posting(args: argparse.Namespace) -> int:
    from dataclasses import asdict

    from finsync_pipeline.bench import bench_posting, report

    result = bench_posting(
        documents=args.documents,
        latency_s=args.latency,
        limit=args.limit,
        concurrency=args.concurrency,
    )
    print(
        f"finsync bench posting: {args.documents} documents, latency {args.latency:g} s, "
        f"NetSuite limit {args.limit or 'none'}, concurrency {args.concurrency}"
    )
    print(report(result))
    if args.json:
        print(json.dumps(asdict(result), sort_keys=True))
    return 0


def cmd_ui(args: argparse.Namespace) -> int:
    from finsync_pipeline.processes import Stopped, check_port_free, stop_on_sigterm, stop_tree
    from finsync_pipeline.runner import REPO_ROOT, prepare_home
    from finsync_pipeline.sandbox.generator import CompanySpec, generate
    from finsync_pipeline.sandbox.server import Sandbox

    check_port_free(args.host, args.port, "the Dagster UI", "--port")
    home = prepare_home(Path(args.home))
    sandbox = Sandbox.on_ports(home / "sandbox", host="127.0.0.1", ports=args.ports)
    if not sandbox.is_seeded():
        sandbox.seed(generate(CompanySpec()))
    with sandbox:
        env = {**os.environ, **sandbox.env, "FINSYNC_MODE": "sandbox"}
        print(
            f"Dagster UI on http://{args.host}:{args.port} (sandbox state {home / 'sandbox'}); "
            "Ctrl-C stops both.",
            file=sys.stderr,
            flush=True,
        )
        dagster = Path(sys.executable).with_name("dagster")
        command = [
            str(dagster),
            "dev",
            "-w",
            str(REPO_ROOT / "workspace.yaml"),
            "-h",
            args.host,
            "-p",
            str(args.port),
        ]
        previous = stop_on_sigterm()
        # The command is our own dagster executable with fixed arguments.
        proc = subprocess.Popen(command, env=env, cwd=REPO_ROOT)  # noqa: S603
        try:
            return proc.wait()
        except (KeyboardInterrupt, Stopped):
            return 0
        finally:
            # SIGTERM or Ctrl-C: Dagster's webserver, daemon and code server go with it.
            stop_tree(proc)
            signal.signal(signal.SIGTERM, previous)


def cmd_deploy(args: argparse.Namespace) -> int:
    from finsync_pipeline.defs.automation.definitions import daily_sync_cron, daily_sync_from
    from finsync_pipeline.deploy import check_storage, reap_dead_workers_of_home, serve
    from finsync_pipeline.processes import check_port_free
    from finsync_pipeline.runner import REPO_ROOT, check_environment, prepare_home

    check_environment()
    check_storage()
    check_port_free(args.host, args.port, "the Dagster webserver", "--port")
    daily_sync_cron()
    daily_sync_from()
    home = prepare_home(Path(args.home), deploy=True)
    progress = _progress(False)
    progress(f"deploying on {home / 'dagster'} (Dagster storage in PostgreSQL)")
    for run_id in reap_dead_workers_of_home():
        progress(f"marked run {run_id} failed: its run worker is gone")
    return serve(REPO_ROOT, args.host, args.port, progress)


def cmd_bench_near_real_time(args: argparse.Namespace) -> int:
    from finsync_pipeline.bench_near_real_time import run_bench

    progress = _progress(args.json)
    figures = run_bench(
        samples=args.samples,
        spacing_s=args.spacing,
        interval_s=args.interval,
        accounts=args.accounts,
        seed=args.seed,
        progress=progress,
    ).summary()
    if args.json:
        print(json.dumps(figures))
    else:
        print(f"sensor interval: {figures['sensor_interval_s']} s")
        for name in ("invoice", "payment"):
            row = figures[name]
            assert isinstance(row, dict)
            print(f"{name}: n={row['n']} p50={row['p50_s']} s p95={row['p95_s']} s")
        missing = figures["not in the ERP when the benchmark gave up"]
        if missing:
            print(f"not in the ERP when the benchmark gave up: {missing}")
    return 1 if figures["not in the ERP when the benchmark gave up"] else 0


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="finsync", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    def home_arg(p: argparse.ArgumentParser) -> None:
        p.add_argument(
            "--home",
            default=os.environ.get("FINSYNC_HOME", DEFAULT_HOME),
            help="folder of the warehouse, Dagster instance and sandbox state "
            "(default: $FINSYNC_HOME or .finsync)",
        )

    def tls_arg(p: argparse.ArgumentParser) -> None:
        p.add_argument(
            "--tls",
            action="store_true",
            help="serve the sandbox over HTTPS with a self-signed CA kept in the state folder; "
            "REQUESTS_CA_BUNDLE names it (default: plain HTTP)",
        )

    def company_args(p: argparse.ArgumentParser) -> None:
        # No defaults here: a demo tells the flags given from those left out (CompanySpec's).
        p.add_argument("--accounts", type=int, help="accounts (default 300)")
        p.add_argument("--months", type=int, help="months of history (default 12)")
        p.add_argument("--seed", type=int, help="generator seed (default 7)")
        p.add_argument(
            "--end",
            type=_date,
            help="last day of the company's history "
            "(default: yesterday, UTC); fixes the output for reproducible runs",
        )

    demo = sub.add_parser("demo", help="run the full pipeline against the sandbox")
    company_args(demo)
    demo.add_argument(
        "--faults",
        action="store_true",
        help="arm the sandbox's faults: throttling, an ERP maintenance window, concurrency "
        "limits and writes that commit but never answer",
    )
    tls_arg(demo)
    home_arg(demo)
    demo.add_argument("--json", action="store_true", help="print a JSON summary as the last line")
    demo.add_argument("--quiet", action="store_true", help="with --json, no progress lines")
    demo.set_defaults(func=cmd_demo, writes=True)

    run = sub.add_parser(
        "run",
        help="ingest, post and reconcile a day range against the "
        "systems configured in the environment",
    )
    run.add_argument("--from", type=_date, help="first day (default: the last day)")
    run.add_argument("--to", type=_date, help="last day (default: yesterday, UTC)")
    home_arg(run)
    run.add_argument("--json", action="store_true")
    run.add_argument("--quiet", action="store_true")
    run.set_defaults(func=cmd_run, writes=True)

    sandbox = sub.add_parser("sandbox", help="the simulators of the external systems")
    sandbox_sub = sandbox.add_subparsers(dest="sandbox_command", required=True)
    serve = sandbox_sub.add_parser("serve", help="serve the simulators until Ctrl-C")
    serve.add_argument("--state", required=True, help="state folder (survives restarts)")
    serve.add_argument(
        "--faults",
        action="store_true",
        help="arm the demo's fault preset (see finsync demo --faults); more "
        "faults can be armed at runtime with POST /__sandbox/faults",
    )
    tls_arg(serve)
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument(
        "--ports",
        type=int,
        nargs=5,
        default=list(SANDBOX_PORTS),
        metavar=("STRIPE", "SALESFORCE", "NETSUITE", "METERING", "AVALARA"),
    )
    serve.add_argument(
        "--ready-file",
        help="write the environment block to this file once every simulator listens "
        "(removed when the sandbox stops)",
    )
    company_args(serve)
    serve.set_defaults(func=cmd_sandbox_serve)
    wait = sandbox_sub.add_parser(
        "wait", help="wait until the sandbox serving --state listens; print its environment"
    )
    wait.add_argument("--state", required=True, help="the state folder of sandbox serve")
    wait.add_argument(
        "--timeout", type=float, default=120.0, help="seconds to wait at most (default 120)"
    )
    wait.set_defaults(func=cmd_sandbox_wait)

    schema = sub.add_parser("schema", help="the data contracts")
    schema_sub = schema.add_subparsers(dest="schema_command", required=True)
    export = schema_sub.add_parser(
        "export", help="write every contract as JSON Schema and markdown for other teams"
    )
    export.add_argument(
        "--out",
        default=str(Path(DEFAULT_HOME) / "contracts"),
        help="folder to write (default .finsync/contracts)",
    )
    export.set_defaults(func=cmd_schema_export)

    exceptions = sub.add_parser("exceptions", help="work the finance exceptions queue")
    exc_sub = exceptions.add_subparsers(dest="exceptions_command", required=True)

    def selection_args(p: argparse.ArgumentParser, records: bool) -> None:
        if records:
            p.add_argument(
                "records",
                nargs="*",
                metavar="RECORD",
                help="source ids (Stripe invoice, Salesforce account, external id)",
            )
        p.add_argument("--queue", help="owner queue: finance_ops, revops or tax")
        p.add_argument("--kind", help="exception kind, e.g. unmapped_product")
        p.add_argument("--from", type=_date, help="first partition day")
        p.add_argument("--to", type=_date, help="last partition day")
        home_arg(p)

    exc_list = exc_sub.add_parser("list", help="the queue, oldest first")
    selection_args(exc_list, records=False)
    exc_list.add_argument("--status", choices=["open", "resolved", "all"], default="open")
    exc_list.add_argument("--json", action="store_true")
    exc_list.set_defaults(func=cmd_exceptions_list)

    exc_show = exc_sub.add_parser("show", help="one record: exceptions, ledger, actions")
    exc_show.add_argument("record")
    home_arg(exc_show)
    exc_show.add_argument("--json", action="store_true")
    exc_show.set_defaults(func=cmd_exceptions_show)

    for name, func, text in [
        ("resolve", cmd_exceptions_resolve, "close exceptions by hand (recorded)"),
        ("retry", cmd_exceptions_retry, "queue refused or dead documents for posting again"),
    ]:
        action = exc_sub.add_parser(name, help=text)
        selection_args(action, records=True)
        action.add_argument("--why", required=True, help="the reason, kept with the action")
        action.add_argument("--by", help="who acts (default: $USER)")
        if name == "retry":
            action.add_argument(
                "--post",
                action="store_true",
                help="post now instead of waiting for the posting sensor",
            )
        # Resolving, and queueing a retry for the posting sensor, are transactions on the
        # warehouse that run beside a deployment (finance works the queue while the daemon
        # runs); posting now writes like a run does.
        posts_now = name == "retry"
        action.set_defaults(func=func, writes=(lambda a: bool(a.post)) if posts_now else False)

    ledger_cmd = sub.add_parser("ledger", help="the posting ledger")
    ledger_sub = ledger_cmd.add_subparsers(dest="ledger_command", required=True)
    verify = ledger_sub.add_parser(
        "verify", help="check the journal's seals, the ledger rows and the checkpoints"
    )
    home_arg(verify)
    verify.add_argument("--json", action="store_true")
    verify.set_defaults(func=cmd_ledger_verify)

    warehouse = sub.add_parser("warehouse", help="the warehouse's schema")
    warehouse_sub = warehouse.add_subparsers(dest="warehouse_command", required=True)
    migrate = warehouse_sub.add_parser(
        "migrate",
        help="create or upgrade the tables and views, and re-apply the roles' grants "
        "(run it as the owner of the warehouse; on PostgreSQL no other command does it)",
    )
    home_arg(migrate)
    migrate.set_defaults(func=cmd_warehouse_migrate, writes=True)

    deploy = sub.add_parser(
        "deploy",
        help="run finsync as deployed: the Dagster daemon (schedules, sensors, run queue, run "
        "monitoring) and the webserver over PostgreSQL storage (DAGSTER_PG_URL)",
    )
    home_arg(deploy)
    deploy.add_argument("--host", default="127.0.0.1", help="the webserver's address")
    deploy.add_argument("--port", type=int, default=3000, help="the webserver's port")
    deploy.set_defaults(func=cmd_deploy, writes=True)

    bench = sub.add_parser("bench", help="benchmarks that print figures")
    bench_sub = bench.add_subparsers(dest="bench_command", required=True)
    posting = bench_sub.add_parser(
        "posting", help="post synthetic documents to a NetSuite sandbox in its own process"
    )
    posting.add_argument("--documents", type=int, default=2000, help="documents (default 2000)")
    posting.add_argument(
        "--latency", type=float, default=0.5, help="seconds NetSuite takes per request (0.5)"
    )
    posting.add_argument(
        "--limit", type=int, default=15, help="NetSuite's concurrency limit; 0 for none (15)"
    )
    posting.add_argument(
        "--concurrency", type=int, default=15, help="finsync's NetSuite concurrency (15)"
    )
    posting.add_argument("--json", action="store_true", help="also print the figures as JSON")
    posting.set_defaults(func=cmd_bench_posting)

    nrt = bench_sub.add_parser(
        "near-real-time",
        help="seconds from a Stripe invoice finalized (and charged) to NetSuite, p50/p95",
    )
    nrt.add_argument("--samples", type=int, default=20, help="invoices billed (default 20)")
    nrt.add_argument(
        "--spacing", type=float, default=5.0, help="seconds between invoices (default 5)"
    )
    nrt.add_argument(
        "--interval",
        type=int,
        default=15,
        help="sensor interval in seconds, as FINSYNC_NEAR_REAL_TIME_INTERVAL_S (default 15)",
    )
    nrt.add_argument("--accounts", type=int, default=24, help="accounts (default 24)")
    nrt.add_argument("--seed", type=int, default=13, help="generator seed (default 13)")
    nrt.add_argument("--json", action="store_true", help="print the figures as JSON")
    nrt.set_defaults(func=cmd_bench_near_real_time)

    ui = sub.add_parser("ui", help="the Dagster UI over the demo's home, with the sandbox")
    home_arg(ui)
    ui.add_argument("--host", default="127.0.0.1")
    ui.add_argument("--port", type=int, default=3000)
    ui.add_argument(
        "--ports",
        type=int,
        nargs=5,
        default=list(SANDBOX_PORTS),
        metavar=("STRIPE", "SALESFORCE", "NETSUITE", "METERING", "AVALARA"),
        help="sandbox ports",
    )
    ui.set_defaults(func=cmd_ui, writes=True)
    return parser


# Commands that read no setting of the pipeline: the simulators and the contracts.
UNCHECKED_COMMANDS = {"sandbox", "schema"}


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        _check_day_range(args)
        if args.command not in UNCHECKED_COMMANDS:
            from finsync_pipeline.settings_check import check_settings

            check_settings()
        with contextlib.ExitStack() as stack:
            writes = getattr(args, "writes", False)
            if writes(args) if callable(writes) else writes:
                from finsync_pipeline.home_lock import home_lock

                words = ["finsync", args.command, getattr(args, "exceptions_command", None)]
                command = " ".join(w for w in words if w)
                url = os.environ.get("FINSYNC_WAREHOUSE_URL")
                stack.enter_context(home_lock(Path(args.home), command, url))
            code = int(args.func(args))
        # Flushed here, so a reader that went away (`| head`) is caught below.
        sys.stdout.flush()
        return code
    except FinsyncError as e:
        print(f"finsync: {e}", file=sys.stderr)
        return 2
    except BrokenPipeError:
        # The reader of stdout stopped reading: end quietly, as a shell tool does; the
        # interpreter's own flush at exit must not find the broken pipe again.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 141
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
