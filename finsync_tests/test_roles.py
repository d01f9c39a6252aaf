"""The PostgreSQL roles run finsync: each role runs its own commands and is refused the rest.

A fresh database owned by a LOGIN user of its own; ``sql/grants/postgresql.sql`` applied to it;
one LOGIN user granted each role. The owner runs ``finsync warehouse migrate``, the pipeline
``finsync run`` against the sandbox, finance_ops the exceptions queue, the analyst reads the
views; then each tries what it must not do, and the database refuses it.
"""

import datetime as dt
import json
import subprocess
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests
import sqlalchemy as sa

from finsync_pipeline.resources.warehouse import SQL_DIR, split_statements
from finsync_pipeline.sandbox.generator import CompanySpec, generate
from finsync_pipeline.sandbox.server import Sandbox
from finsync_tests.conftest import POSTGRES_URL, TEST_END
from finsync_tests.test_cli import _env, _finsync

pytestmark = [pytest.mark.postgres, pytest.mark.e2e]

ROLES = ("pipeline", "finance_ops", "analyst")
DAY_FROM = TEST_END - dt.timedelta(days=9)
VIEWS = (
    "v_exception_backlog",
    "v_reconciliation_drift",
    "v_posting_lease_settlements",
    "v_exception_aging",
    "v_posting_backlog",
)


@dataclass(frozen=True)
class Warehouse:
    """The database and the URL each of its users connects with."""

    name: str
    urls: dict[str, str]

    def engine(self, user: str) -> sa.Engine:
        return sa.create_engine(self.urls[user])


@pytest.fixture
def warehouse() -> Iterator[Warehouse]:
    """A fresh database owned by its own user, a user per role; all dropped afterwards."""
    name = f"finsync_roles_{uuid.uuid4().hex[:10]}"
    users = {user: f"{name}_{user}" for user in ("owner", *ROLES)}
    admin = sa.create_engine(POSTGRES_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        for login in users.values():
            conn.exec_driver_sql(f"CREATE ROLE {login} LOGIN")
        conn.exec_driver_sql(f"CREATE DATABASE {name} OWNER {users['owner']}")
    base = sa.make_url(POSTGRES_URL).set(database=name)
    urls = {
        user: base.set(username=login).render_as_string(hide_password=False)
        for user, login in users.items()
    }
    try:
        yield Warehouse(name, urls)
    finally:
        with admin.connect() as conn:
            conn.exec_driver_sql(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
            for login in users.values():
                conn.exec_driver_sql(f"DROP ROLE IF EXISTS {login}")
        admin.dispose()


def _apply_grants(db: Warehouse) -> None:
    """What the README says a DBA does once: apply the grants file, grant each user its role."""
    admin = sa.create_engine(
        sa.make_url(POSTGRES_URL).set(database=db.name), isolation_level="AUTOCOMMIT"
    )
    try:
        with admin.connect() as conn:
            # Roles are the cluster's, not the database's: one applier at a time.
            conn.execute(sa.text("SELECT pg_advisory_lock(7302411)"))
            for statement in split_statements((SQL_DIR / "grants" / "postgresql.sql").read_text()):
                conn.exec_driver_sql(statement)
            conn.execute(sa.text("SELECT pg_advisory_unlock(7302411)"))
            for role in ROLES:
                login = sa.make_url(db.urls[role]).username
                conn.exec_driver_sql(f"GRANT finsync_{role} TO {login}")
    finally:
        admin.dispose()


def _as(
    db: Warehouse, user: str, home: Path, *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return _finsync(
        *args, "--home", str(home), env=_env(**(env or {}), FINSYNC_WAREHOUSE_URL=db.urls[user])
    )


def _refused(db: Warehouse, user: str, statement: str) -> str:
    """The database's refusal of ``statement`` run as ``user`` (the test fails if it runs)."""
    engine = db.engine(user)
    try:
        with pytest.raises(sa.exc.ProgrammingError) as refused, engine.begin() as conn:
            conn.exec_driver_sql(statement)
    finally:
        engine.dispose()
    return str(refused.value.orig)


def _one_line(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 2, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    return lines[0]


def test_each_role_runs_its_commands_and_is_refused_the_rest(
    warehouse: Warehouse, tmp_path: Path
) -> None:
    db, home = warehouse, tmp_path / "home"

    # Nothing but migrate sets a PostgreSQL warehouse up: before it, a command says so.
    behind = _one_line(_as(db, "owner", home, "exceptions", "list"))
    assert "finsync warehouse migrate" in behind
    migrated = _as(db, "owner", home, "warehouse", "migrate")
    assert migrated.returncode == 0, migrated.stderr[-3000:]
    assert "migrated" in migrated.stdout
    _apply_grants(db)
    # A later migrate (a new release) keeps every grant: views and rebuilt tables included.
    # Forgetting a rebuild makes this one rebuild the reconciliation tables and their views.
    owner = db.engine("owner")
    with owner.begin() as conn:
        conn.exec_driver_sql(
            "DELETE FROM schema_migrations WHERE version = '0002_reconciliation_balances'"
        )
    owner.dispose()
    again = _as(db, "owner", home, "warehouse", "migrate")
    assert again.returncode == 0, again.stderr[-3000:]

    # The pipeline is not the owner: it cannot migrate, and says so in one line.
    assert "owner" in _one_line(_as(db, "pipeline", home, "warehouse", "migrate"))

    sandbox = Sandbox(tmp_path / "sandbox")
    sandbox.seed(generate(CompanySpec(accounts=12, months=1, seed=5, end=TEST_END)))
    with sandbox:
        env = {**sandbox.env, "FINSYNC_MAX_BAD_SHARE": "0.9"}
        # NetSuite refuses the next invoice it is sent: an exception for finance_ops.
        requests.post(
            f"{env['NETSUITE_BASE_URL']}/__sandbox/faults",
            json={
                "status": 400,
                "count": 1,
                "retry_after_s": None,
                "path_prefix": "/services/rest/record/v1/invoice",
            },
            timeout=10,
        ).raise_for_status()
        ran = _as(
            db,
            "pipeline",
            home,
            "run",
            "--from",
            DAY_FROM.isoformat(),
            "--to",
            TEST_END.isoformat(),
            "--json",
            env=env,
        )
    assert ran.returncode == 0, ran.stderr[-3000:]
    summary = json.loads(ran.stdout.strip().splitlines()[-1])
    assert summary["erp_invoices_posted"] > 0
    assert summary["exceptions_open_by_kind"].get("posting_rejected") == 1

    verified = _as(db, "pipeline", home, "ledger", "verify", "--json")
    assert verified.returncode == 0, verified.stdout + verified.stderr[-3000:]
    assert json.loads(verified.stdout)["checkpoints"] >= 1

    # finance_ops works the queue, and its resolve is recorded.
    listed = _as(db, "finance_ops", home, "exceptions", "list", "--kind", "posting_rejected")
    assert listed.returncode == 0, listed.stderr[-3000:]
    (rejected,) = json.loads(
        _as(
            db, "finance_ops", home, "exceptions", "list", "--kind", "posting_rejected", "--json"
        ).stdout
    )
    # A retry moves the posting ledger, sealed with the pipeline's key: the pipeline's job.
    retry = _as(db, "finance_ops", home, "exceptions", "retry", rejected["source_id"], "--why", "x")
    assert "finsync_pipeline" in _one_line(retry)
    resolved = _as(
        db,
        "finance_ops",
        home,
        "exceptions",
        "resolve",
        rejected["source_id"],
        "--why",
        "posted by hand in NetSuite",
        "--by",
        "ana",
    )
    assert resolved.returncode == 0, resolved.stderr[-3000:]
    assert "resolved 1 exception(s)" in resolved.stdout
    shown = json.loads(
        _as(db, "finance_ops", home, "exceptions", "show", rejected["source_id"], "--json").stdout
    )
    # The record may hold another kind of exception too (its reconciliation's): this one is
    # closed, and the action recorded.
    assert [e["status"] for e in shown["exceptions"] if e["kind"] == "posting_rejected"] == [
        "resolved"
    ]
    assert [(a["actor"], a["action"], a["reason"]) for a in shown["actions"]] == [
        ("ana", "resolve", "posted by hand in NetSuite")
    ]

    # The analyst reads every view, after two migrations.
    analyst = db.engine("analyst")
    with analyst.connect() as conn:
        backlog = conn.execute(sa.text("SELECT SUM(open_exceptions) FROM v_exception_backlog"))
        assert backlog.scalar_one() == sum(summary["exceptions_open_by_kind"].values()) - 1
        for view in VIEWS:
            conn.execute(sa.text(f"SELECT * FROM {view} LIMIT 1"))
    analyst.dispose()

    must_not = {
        "analyst": [
            "SELECT * FROM finance_exceptions",
            "INSERT INTO exception_actions (action_id, at, actor, action, kind, source_system, "
            "source_id, reason, outcome) VALUES ('x', 'x', 'x', 'resolve', 'x', 'x', 'x', 'x', "
            "'x')",
            "UPDATE finance_exceptions SET status = 'resolved'",
            "DELETE FROM posting_ledger",
        ],
        "finance_ops": [
            # The audited path (finsync exceptions resolve) is the only way to close one.
            "UPDATE finance_exceptions SET status = 'resolved'",
            "DELETE FROM finance_exceptions",
            "UPDATE exception_actions SET reason = 'nothing happened'",
            "DELETE FROM exception_actions",
            "UPDATE posting_ledger_journal SET detail = 'x'",
            "DELETE FROM posting_ledger_journal",
            "INSERT INTO posting_ledger_checkpoints (seq, hash, at) VALUES (999, 'x', 'x')",
        ],
        "pipeline": [
            "DELETE FROM exception_actions",
            "UPDATE exception_actions SET reason = 'nothing happened'",
            "UPDATE posting_ledger_journal SET detail = 'x'",
            "DELETE FROM posting_ledger_journal",
            # Not through a view either (a simple view is updatable in PostgreSQL).
            "UPDATE v_posting_lease_settlements SET detail = 'x'",
            "INSERT INTO posting_ledger_checkpoints (seq, hash, at) VALUES (999, 'x', 'x')",
            "DELETE FROM posting_ledger_checkpoints",
            "UPDATE schema_version SET fingerprint = 'x'",
            "DROP TABLE posting_ledger_journal",
            "CREATE TABLE scratch (x INT)",
        ],
    }
    for user, statements in must_not.items():
        for statement in statements:
            refusal = _refused(db, user, statement)
            assert "permission denied" in refusal or "must be owner" in refusal, (
                user,
                statement,
                refusal,
            )

    # A warehouse behind this release: every command says in one line to migrate it.
    owner = db.engine("owner")
    with owner.begin() as conn:
        conn.exec_driver_sql("UPDATE schema_version SET fingerprint = 'an older release'")
    owner.dispose()
    stale = _one_line(_as(db, "finance_ops", home, "exceptions", "list"))
    assert "finsync warehouse migrate" in stale and db.name in stale
