"""The relational warehouse every asset lands in: SQLite by default, PostgreSQL by URL.

The DDL lives in ``sql/ddl`` at the top of the repository and is written in the SQL that both
SQLite and PostgreSQL accept, so one set of files serves both. Writes use bound parameters and
one transaction per partition range.
"""

import functools
import hashlib
import re
import threading
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import dagster as dg
import pandas as pd
import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from finsync_pipeline.errors import FinsyncError

SQL_DIR = Path(__file__).resolve().parents[2] / "sql"
_MIGRATE_LOCK = threading.Lock()


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    # WAL lets the Dagster UI and analysts read while a run writes; synchronous=FULL makes a
    # committed posting-ledger transition survive a power cut, which the ledger relies on.
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=FULL")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


# What may hide a semicolon that does not end a statement: a dollar-quoted body (a function's),
# a string literal or a comment at the end of a line.
_SQL_TOKEN = re.compile(r"(\$\w*\$)|('(?:[^']|'')*')|(--[^\n]*)|(;)")


def split_statements(sql_text: str) -> list[str]:
    """Split a SQL file on the semicolons that end a statement: not those inside a string or a
    dollar-quoted body. Whole-line comments are dropped."""
    lines = [line for line in sql_text.splitlines() if not line.strip().startswith("--")]
    text = "\n".join(lines)
    statements: list[str] = []
    start = pos = 0
    while (token := _SQL_TOKEN.search(text, pos)) is not None:
        pos = token.end()
        if token.group(1):
            close = text.find(token.group(1), pos)
            if close < 0:
                raise ValueError(f"unterminated {token.group(1)} quote in SQL")
            pos = close + len(token.group(1))
        elif token.group(4):
            statements.append(text[start : token.start()])
            start = pos
    statements.append(text[start:])
    return [stmt.strip() for stmt in statements if stmt.strip()]


# Columns added after their table first shipped: CREATE TABLE IF NOT EXISTS leaves a warehouse
# created earlier without them, so they are added here (portable ALTER TABLE ... ADD COLUMN).
ADDED_COLUMNS: list[tuple[str, str, str]] = [
    ("posting_ledger", "waiting_for", "TEXT"),
    ("posting_ledger", "lease_until", "TEXT"),
    ("posting_ledger_journal", "payload_hash", "TEXT"),
    ("posting_ledger_journal", "erp_internal_id", "TEXT"),
    ("posting_ledger_journal", "seal_version", "INTEGER NOT NULL DEFAULT 1"),
    ("posting_ledger_journal", "key_id", "TEXT"),
    ("customers", "tax_exempt", "TEXT"),
    ("customers", "has_tax_id", "INTEGER NOT NULL DEFAULT 0"),
    ("customers", "tax_id", "TEXT"),
    ("customers", "tax_exemption_number", "TEXT"),
    ("customers", "tax_entity_use_code", "TEXT"),
    ("invoices", "discount_minor", "BIGINT NOT NULL DEFAULT 0"),
    ("invoices", "inclusive_tax_minor", "BIGINT NOT NULL DEFAULT 0"),
    ("invoices", "total_excluding_tax_minor", "BIGINT"),
    ("invoices", "starting_balance_minor", "BIGINT"),
    ("invoices", "ending_balance_minor", "BIGINT"),
    ("invoices", "amount_due_minor", "BIGINT"),
    ("invoices", "po_number", "TEXT"),
    ("invoices", "opportunity_id", "TEXT"),
    ("invoice_lines", "discount_minor", "BIGINT NOT NULL DEFAULT 0"),
    ("invoice_lines", "inclusive_tax_minor", "BIGINT NOT NULL DEFAULT 0"),
    ("invoice_ready_transactions", "discount_minor", "BIGINT NOT NULL DEFAULT 0"),
    ("invoice_ready_transactions", "doc_type", "TEXT NOT NULL DEFAULT 'invoice'"),
]


# Tables whose constraints changed after they first shipped. CREATE TABLE IF NOT EXISTS cannot
# change a CHECK, and SQLite cannot alter one, so each migration rebuilds its tables once from
# their current DDL, copying every row, and is recorded in ``schema_migrations``. Append only.
REBUILDS: list[tuple[str, tuple[str, ...]]] = [
    (
        "0001_reconciliation_awaiting_window",
        ("invoice_reconciliation", "payment_reconciliation", "renewal_reconciliation"),
    ),
    ("0002_reconciliation_balances", ("invoice_reconciliation", "payment_reconciliation")),
]
# Serializes migrations across processes on PostgreSQL (Dagster runs each step in its own).
_PG_MIGRATE_LOCK_KEY = 7302410


# The roles sql/grants/postgresql.sql creates; when a PostgreSQL warehouse has them, every
# migration applies that file again, so a view or table it recreated keeps its grants.
ROLES = ("finsync_analyst", "finsync_finance_ops", "finsync_pipeline")
GRANTS_FILE = SQL_DIR / "grants" / "postgresql.sql"
MIGRATE_COMMAND = "finsync warehouse migrate"
_VIEW = re.compile(r"^CREATE\s+(?:OR\s+REPLACE\s+)?VIEW\s+(\w+)\s+AS\s", re.IGNORECASE)


class WarehouseNotMigrated(FinsyncError):
    """A PostgreSQL warehouse's schema is not this release's: its owner must migrate it."""


def _statements(folder: str, dialect: str) -> list[str]:
    # Portable files first, then the ones for this database's dialect (date math).
    paths = [
        *sorted((SQL_DIR / folder).glob("*.sql")),
        *sorted((SQL_DIR / folder / dialect).glob("*.sql")),
    ]
    return [stmt for path in paths for stmt in split_statements(path.read_text())]


def _views(dialect: str) -> list[tuple[str, str]]:
    """Each view of ``sql/views`` as (name, query). A ``DROP VIEW`` there is skipped: migrate
    replaces a view in place, and drops it only when it must."""
    views: list[tuple[str, str]] = []
    for statement in _statements("views", dialect):
        if statement.upper().startswith("DROP VIEW"):
            continue
        found = _VIEW.match(statement)
        if found is None:
            raise ValueError(f"sql/views holds a statement that is not a view: {statement[:60]}")
        views.append((found.group(1), statement[found.end() :].strip()))
    return views


def schema_fingerprint(dialect: str) -> str:
    """The version of the schema this release sets up: a hash of its DDL (comments aside), its
    views, added columns and rebuilds. ``migrate`` records it; other commands compare it."""
    parts = [
        *_statements("ddl", dialect),
        *(f"VIEW {name} AS {query}" for name, query in _views(dialect)),
        *(" ".join(column) for column in ADDED_COLUMNS),
        *(version for version, _ in REBUILDS),
    ]
    digest = hashlib.sha256("\0".join(parts).encode())
    return digest.hexdigest()[:16]


def _replace_view(conn: Connection, name: str, query: str) -> None:
    if conn.dialect.name != "postgresql":
        # SQLite has no CREATE OR REPLACE VIEW, and no grants to lose.
        conn.exec_driver_sql(f"DROP VIEW IF EXISTS {name}")
        conn.exec_driver_sql(f"CREATE VIEW {name} AS {query}")
        return
    try:
        # In place, a view keeps its grants; PostgreSQL allows it while its columns stay.
        with conn.begin_nested():
            conn.exec_driver_sql(f"CREATE OR REPLACE VIEW {name} AS {query}")
    except sa.exc.DBAPIError:
        conn.exec_driver_sql(f"DROP VIEW {name}")
        conn.exec_driver_sql(f"CREATE VIEW {name} AS {query}")


def _granted(conn: Connection) -> bool:
    """Whether sql/grants/postgresql.sql was applied to this warehouse: its roles exist and
    the pipeline's may read the schema's version."""
    exists = conn.execute(
        sa.text("SELECT COUNT(*) FROM pg_roles WHERE rolname IN :roles").bindparams(
            sa.bindparam("roles", expanding=True)
        ),
        {"roles": list(ROLES)},
    ).scalar_one()
    if int(exists) != len(ROLES):
        return False
    return bool(
        conn.execute(
            sa.text("SELECT has_table_privilege('finsync_pipeline', 'schema_version', 'SELECT')")
        ).scalar_one()
    )


def migrate(engine: Engine) -> None:
    """Apply every DDL file, the pending rebuilds, then every view file; on PostgreSQL with
    finsync's roles, their grants; record the schema's version. Idempotent: a warehouse of any
    earlier version ends with the current schema, its grants intact."""
    dialect = engine.dialect.name
    ddl = _statements("ddl", dialect)
    views = _views(dialect)
    with _MIGRATE_LOCK, engine.begin() as conn:
        if dialect == "postgresql":
            conn.execute(
                sa.text("SELECT pg_advisory_xact_lock(:key)"), {"key": _PG_MIGRATE_LOCK_KEY}
            )
            # The functions of sql/ddl/postgresql keep this search path (SET search_path FROM
            # CURRENT): the warehouse's schema, then pg_temp, so no caller's temporary table
            # can stand in for one of ours while they run with the owner's rights.
            conn.execute(
                sa.text(
                    "SELECT set_config('search_path', "
                    "quote_ident(current_schema()) || ', pg_temp', true)"
                )
            )
        for statement in ddl:
            conn.exec_driver_sql(statement)
        inspector = sa.inspect(conn)
        for table, column, sql_type in ADDED_COLUMNS:
            present = {c["name"] for c in inspector.get_columns(table)}
            if column not in present:
                conn.exec_driver_sql(f"ALTER TABLE {table} ADD COLUMN {column} {sql_type}")
        applied = {v for (v,) in conn.execute(sa.text("SELECT version FROM schema_migrations"))}
        for version, tables in REBUILDS:
            if version in applied:
                continue
            # Views read the tables being replaced; they are recreated below.
            for name, _ in views:
                conn.exec_driver_sql(f"DROP VIEW IF EXISTS {name}")
            for table in tables:
                _rebuild(conn, table, ddl)
            conn.execute(
                sa.text("INSERT INTO schema_migrations (version, applied_at) VALUES (:v, :at)"),
                {"v": version, "at": pd.Timestamp.now(tz="UTC").isoformat()},
            )
        for name, query in views:
            _replace_view(conn, name, query)
        if dialect == "postgresql" and _granted(conn):
            for statement in split_statements(GRANTS_FILE.read_text()):
                conn.exec_driver_sql(statement)
        conn.execute(
            sa.text(
                "INSERT INTO schema_version (id, fingerprint, migrated_at) VALUES (1, :f, :at) "
                "ON CONFLICT (id) DO UPDATE SET fingerprint = excluded.fingerprint, "
                "migrated_at = excluded.migrated_at"
            ),
            {"f": schema_fingerprint(dialect), "at": pd.Timestamp.now(tz="UTC").isoformat()},
        )


def check_schema(engine: Engine) -> None:
    """Raise WarehouseNotMigrated unless the warehouse holds this release's schema."""
    where = engine.url.render_as_string(hide_password=True)
    try:
        with engine.connect() as conn:
            found = (
                conn.execute(sa.text("SELECT fingerprint FROM schema_version")).scalar()
                if sa.inspect(conn).has_table("schema_version")
                else None
            )
    except sa.exc.ProgrammingError as e:
        raise WarehouseNotMigrated(
            f"the warehouse {where} cannot be read: {_first_line(e)}; grant this user a finsync "
            "role (sql/grants/postgresql.sql)"
        ) from e
    if found is None:
        raise WarehouseNotMigrated(
            f"the warehouse {where} has no finsync schema yet: run `{MIGRATE_COMMAND}` as the "
            "owner of its database"
        )
    if found != schema_fingerprint(engine.dialect.name):
        raise WarehouseNotMigrated(
            f"the warehouse {where} has the schema of another finsync release ({found}, this "
            f"one is {schema_fingerprint(engine.dialect.name)}): run `{MIGRATE_COMMAND}` as "
            "the owner of its tables"
        )


def migrate_url(url: str) -> str:
    """Migrate the warehouse at ``url`` (as the user it names); return its schema version.
    A user that may not (not the owner of the tables) is one line saying so."""
    engine = _new_engine(url)
    try:
        migrate(engine)
    except sa.exc.ProgrammingError as e:
        user = engine.url.username or "this user"
        raise WarehouseNotMigrated(
            f"{user} cannot migrate the warehouse {engine.url.render_as_string(hide_password=True)}"
            f": {_first_line(e)}; run `{MIGRATE_COMMAND}` as the owner of its tables"
        ) from e
    finally:
        engine.dispose()
    return schema_fingerprint(engine.dialect.name)


def _first_line(error: sa.exc.DBAPIError) -> str:
    return str(error.orig).strip().splitlines()[0]


def _rebuild(conn: Connection, table: str, ddl: Sequence[str]) -> None:
    """Recreate ``table`` from its current DDL with every row it holds (columns it shares)."""
    create = re.compile(rf"^CREATE TABLE IF NOT EXISTS {table}\s*\(", re.IGNORECASE)
    index = re.compile(rf"^CREATE (UNIQUE )?INDEX IF NOT EXISTS \w+ ON {table}\b", re.IGNORECASE)
    (definition,) = [s for s in ddl if create.match(s)]
    scratch = f"{table}__rebuild"
    conn.exec_driver_sql(f"DROP TABLE IF EXISTS {scratch}")
    conn.exec_driver_sql(create.sub(f"CREATE TABLE {scratch} (", definition, count=1))
    old = {c["name"] for c in sa.inspect(conn).get_columns(table)}
    columns = ", ".join(
        c["name"] for c in sa.inspect(conn).get_columns(scratch) if c["name"] in old
    )
    conn.exec_driver_sql(f"INSERT INTO {scratch} ({columns}) SELECT {columns} FROM {table}")
    conn.exec_driver_sql(f"DROP TABLE {table}")
    conn.exec_driver_sql(f"ALTER TABLE {scratch} RENAME TO {table}")
    if conn.dialect.name == "postgresql":
        # Constraints keep the scratch table's names; give them the table's own back, so a
        # later rebuild's scratch table does not collide with them.
        names = conn.execute(
            sa.text("SELECT conname FROM pg_constraint WHERE conrelid = CAST(:t AS regclass)"),
            {"t": table},
        ).scalars()
        for name in list(names):
            if name.startswith(scratch):
                renamed = table + name.removeprefix(scratch)
                conn.exec_driver_sql(f"ALTER TABLE {table} RENAME CONSTRAINT {name} TO {renamed}")
    for statement in ddl:
        if index.match(statement):
            conn.exec_driver_sql(statement)


def _new_engine(url: str) -> Engine:
    if url.startswith("sqlite:///"):
        Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    engine = sa.create_engine(url, future=True, pool_pre_ping=True)
    if engine.dialect.name == "sqlite":
        sa.event.listen(engine, "connect", _sqlite_pragmas)
    return engine


@functools.cache
def create_engine(url: str) -> Engine:
    """One engine per warehouse URL, with the current schema.

    A SQLite warehouse is migrated here, on every start: it has no roles, and one user owns the
    file. A PostgreSQL warehouse is migrated only by its owner (``finsync warehouse migrate``),
    so the roles that run everything else need no ownership; one behind this release raises
    WarehouseNotMigrated, saying so.
    """
    engine = _new_engine(url)
    try:
        if engine.dialect.name == "sqlite":
            migrate(engine)
        else:
            check_schema(engine)
    except BaseException:
        engine.dispose()
        raise
    return engine


class WarehouseResource(dg.ConfigurableResource):
    """The warehouse connection.

    Attributes:
        url: A SQLAlchemy URL. ``sqlite:///.finsync/warehouse.db`` by default; set
            ``FINSYNC_WAREHOUSE_URL`` to a ``postgresql+psycopg2://`` URL for PostgreSQL.
    """

    url: str

    def get_engine(self) -> Engine:
        """The engine for ``url`` (see ``create_engine``: SQLite is migrated, PostgreSQL
        checked)."""
        return create_engine(self.url)


def upsert_rows(
    conn: Connection,
    table: str,
    rows: Sequence[Mapping[str, Any]],
    key: Sequence[str],
    *,
    update: Sequence[str] | None = None,
) -> int:
    """Insert rows, updating the ``update`` columns (default: all non-key) on a key conflict."""
    if not rows:
        return 0
    columns = list(rows[0].keys())
    updates = [c for c in (update if update is not None else columns) if c not in key]
    set_clause = ", ".join(f"{c} = excluded.{c}" for c in updates)
    conflict = f"ON CONFLICT ({', '.join(key)}) " + (
        f"DO UPDATE SET {set_clause}" if updates else "DO NOTHING"
    )
    sql = (
        f"INSERT INTO {table} ({', '.join(columns)}) "
        f"VALUES ({', '.join(':' + c for c in columns)}) {conflict}"
    )
    conn.execute(sa.text(sql), [dict(r) for r in rows])
    return len(rows)


def replace_partitions(
    conn: Connection,
    table: str,
    rows: Sequence[Mapping[str, Any]],
    *,
    date_from: str,
    date_to: str,
    key: Sequence[str],
    extra_where: str = "",
    params: Mapping[str, Any] | None = None,
) -> int:
    """Replace the rows of ``table`` whose partition_date is in [date_from, date_to) by ``rows``.

    Deleting first makes a rerun of a range exact (a record gone upstream leaves the table);
    the upsert after it keeps a record that moved between partitions from colliding on its key.
    """
    conn.execute(
        sa.text(
            f"DELETE FROM {table} WHERE partition_date >= :date_from "
            f"AND partition_date < :date_to {extra_where}"
        ),
        {"date_from": date_from, "date_to": date_to, **(params or {})},
    )
    return upsert_rows(conn, table, rows, key)


def read_frame(conn: Connection, sql: str, params: Mapping[str, Any] | None = None) -> pd.DataFrame:
    """Run a read query with bound parameters into a DataFrame."""
    result = conn.execute(sa.text(sql), dict(params or {}))
    return pd.DataFrame(result.fetchall(), columns=list(result.keys()))


def frame_records(df: pd.DataFrame, columns: Iterable[str] | None = None) -> list[dict[str, Any]]:
    """DataFrame rows as plain Python dicts (NA becomes None, numpy ints become int)."""
    selected = df[list(columns)] if columns is not None else df
    records: list[dict[str, Any]] = []
    for row in selected.astype(object).itertuples(index=False):
        records.append(
            {
                col: (None if _is_na(val) else _plain(val))
                for col, val in zip(selected.columns, row, strict=True)
            }
        )
    return records


def _is_na(value: Any) -> bool:
    try:
        return bool(pd.isna(value))
    except (TypeError, ValueError):
        return False


def _plain(value: Any) -> Any:
    item = getattr(value, "item", None)
    return item() if callable(item) else value
