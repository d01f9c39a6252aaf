"""The relational warehouse every asset lands in: SQLite by default, PostgreSQL by URL.

The DDL lives in ``sql/ddl`` at the top of the repository and is written in the SQL that both
SQLite and PostgreSQL accept, so one set of files serves both. Writes use bound parameters and
one transaction per partition range.
"""

import functools
import re
import threading
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import dagster as dg
import pandas as pd
import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

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


def split_statements(sql_text: str) -> list[str]:
    """Split a DDL file on semicolons that end a statement (our DDL has no procedural blocks)."""
    lines = [line for line in sql_text.splitlines() if not line.strip().startswith("--")]
    return [stmt.strip() for stmt in "\n".join(lines).split(";") if stmt.strip()]


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


def _statements(folder: str, dialect: str) -> list[str]:
    # Portable files first, then the ones for this database's dialect (date math).
    paths = [
        *sorted((SQL_DIR / folder).glob("*.sql")),
        *sorted((SQL_DIR / folder / dialect).glob("*.sql")),
    ]
    return [stmt for path in paths for stmt in split_statements(path.read_text())]


def migrate(engine: Engine) -> None:
    """Apply every DDL file, the pending rebuilds, then every view file. Idempotent: safe on
    every start, and a warehouse of any earlier version ends with the current schema."""
    dialect = engine.dialect.name
    ddl = _statements("ddl", dialect)
    views = _statements("views", dialect)
    with _MIGRATE_LOCK, engine.begin() as conn:
        if dialect == "postgresql":
            conn.execute(
                sa.text("SELECT pg_advisory_xact_lock(:key)"), {"key": _PG_MIGRATE_LOCK_KEY}
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
            for statement in views:
                if statement.upper().startswith("DROP VIEW"):
                    conn.exec_driver_sql(statement)
            for table in tables:
                _rebuild(conn, table, ddl)
            conn.execute(
                sa.text("INSERT INTO schema_migrations (version, applied_at) VALUES (:v, :at)"),
                {"v": version, "at": pd.Timestamp.now(tz="UTC").isoformat()},
            )
        for statement in views:
            conn.exec_driver_sql(statement)


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


@functools.cache
def create_engine(url: str) -> Engine:
    """One engine per warehouse URL, with the schema applied."""
    if url.startswith("sqlite:///"):
        Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    engine = sa.create_engine(url, future=True, pool_pre_ping=True)
    if engine.dialect.name == "sqlite":
        sa.event.listen(engine, "connect", _sqlite_pragmas)
    migrate(engine)
    return engine


class WarehouseResource(dg.ConfigurableResource):
    """The warehouse connection.

    Attributes:
        url: A SQLAlchemy URL. ``sqlite:///.finsync/warehouse.db`` by default; set
            ``FINSYNC_WAREHOUSE_URL`` to a ``postgresql+psycopg2://`` URL for PostgreSQL.
    """

    url: str

    def get_engine(self) -> Engine:
        """The engine for ``url``; the schema is applied on first use."""
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
