"""The relational warehouse every asset lands in: SQLite by default, PostgreSQL by URL.

The DDL lives in ``sql/ddl`` at the top of the repository and is written in the SQL that both
SQLite and PostgreSQL accept, so one set of files serves both. Writes use bound parameters and
one transaction per partition range.
"""

import functools
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
    ("customers", "tax_exempt", "TEXT"),
    ("customers", "has_tax_id", "INTEGER NOT NULL DEFAULT 0"),
]


def migrate(engine: Engine, folders: Sequence[str] = ("ddl", "views")) -> None:
    """Apply every DDL and view file in order. Idempotent: safe on every start."""
    with _MIGRATE_LOCK, engine.begin() as conn:
        for folder in folders:
            # Portable files first, then the ones for this database's dialect (date math).
            paths = [
                *sorted((SQL_DIR / folder).glob("*.sql")),
                *sorted((SQL_DIR / folder / engine.dialect.name).glob("*.sql")),
            ]
            for path in paths:
                for statement in split_statements(path.read_text()):
                    conn.exec_driver_sql(statement)
            if folder == "ddl":
                inspector = sa.inspect(conn)
                for table, column, sql_type in ADDED_COLUMNS:
                    present = {c["name"] for c in inspector.get_columns(table)}
                    if column not in present:
                        conn.exec_driver_sql(f"ALTER TABLE {table} ADD COLUMN {column} {sql_type}")


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
