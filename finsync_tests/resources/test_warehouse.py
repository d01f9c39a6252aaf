"""The warehouse helpers on a real SQLite file and on PostgreSQL."""

from typing import Any

import numpy as np
import pandas as pd
import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from finsync_pipeline.resources.warehouse import (
    WarehouseNotMigrated,
    create_engine,
    frame_records,
    migrate,
    read_frame,
    replace_partitions,
    split_statements,
    upsert_rows,
)


def invoice_row(source_id: str, day: str, payload: str = "{}") -> dict[str, Any]:
    return {
        "source_id": source_id,
        "partition_date": day,
        "source_system": "stripe",
        "source_updated_at": None,
        "payload": payload,
        "extraction_run_id": "run-1",
        "extracted_at": "2026-10-31T00:00:00+00:00",
    }


def stored(engine: Engine) -> dict[str, tuple[str, str]]:
    with engine.connect() as conn:
        frame = read_frame(conn, "SELECT source_id, partition_date, payload FROM stripe_invoices")
    return {r.source_id: (r.partition_date, r.payload) for r in frame.itertuples()}


def test_migrate_is_idempotent_and_keeps_data(warehouse_engine: Engine) -> None:
    with warehouse_engine.begin() as conn:
        upsert_rows(conn, "stripe_invoices", [invoice_row("in_1", "2026-10-01")], ["source_id"])
    migrate(warehouse_engine)
    migrate(warehouse_engine)
    assert stored(warehouse_engine) == {"in_1": ("2026-10-01", "{}")}
    tables = set(sa.inspect(warehouse_engine).get_table_names())
    assert {"posting_ledger", "posting_ledger_journal", "stripe_invoices", "invoices"} <= tables


def test_split_statements_ignores_comments_and_blank_statements() -> None:
    sql = "-- a comment; with a semicolon\nCREATE TABLE a (x INT);\n\n;CREATE INDEX i ON a (x);\n"
    assert split_statements(sql) == ["CREATE TABLE a (x INT)", "CREATE INDEX i ON a (x)"]


def test_split_statements_keeps_function_bodies_strings_and_line_comments_whole() -> None:
    sql = (
        "CREATE TABLE a (x TEXT) -- the ERP's id; not a statement\n;"
        "SELECT ';' ;\n"
        "CREATE FUNCTION f() RETURNS VOID LANGUAGE sql AS $$ DELETE FROM a; SELECT 1; $$;"
        "DO $body$ BEGIN PERFORM 1; END $body$"
    )
    assert split_statements(sql) == [
        "CREATE TABLE a (x TEXT) -- the ERP's id; not a statement",
        "SELECT ';'",
        "CREATE FUNCTION f() RETURNS VOID LANGUAGE sql AS $$ DELETE FROM a; SELECT 1; $$",
        "DO $body$ BEGIN PERFORM 1; END $body$",
    ]


@pytest.mark.postgres
def test_a_migration_replaces_views_in_place_so_they_keep_their_grants(
    postgres_url: str,
) -> None:
    engine = create_engine(postgres_url)
    views = "SELECT relname, oid FROM pg_class WHERE relkind = 'v' ORDER BY relname"
    with engine.connect() as conn:
        schema = conn.execute(sa.text("SELECT current_schema()")).scalar_one()
        before = dict(conn.execute(sa.text(views)).all())
        conn.exec_driver_sql("GRANT SELECT ON v_exception_backlog TO PUBLIC")
        conn.commit()
    migrate(engine)
    with engine.connect() as conn:
        after = dict(conn.execute(sa.text(views)).all())
        readers = conn.execute(
            sa.text(
                "SELECT grantee FROM information_schema.role_table_grants "
                "WHERE table_schema = :s AND table_name = 'v_exception_backlog' "
                "AND privilege_type = 'SELECT'"
            ),
            {"s": schema},
        ).scalars()
        assert "PUBLIC" in set(readers)
    assert {k: v for k, v in after.items() if k in before} == before


@pytest.mark.postgres
def test_a_postgresql_warehouse_behind_this_release_says_to_migrate_it(
    postgres_url: str,
) -> None:
    owner = sa.create_engine(postgres_url)
    with owner.begin() as conn:
        conn.exec_driver_sql("UPDATE schema_version SET fingerprint = 'older'")
    with pytest.raises(WarehouseNotMigrated, match="run `finsync warehouse migrate`"):
        create_engine(postgres_url)
    migrate(owner)
    owner.dispose()
    assert create_engine(postgres_url).url.render_as_string(hide_password=False) == postgres_url


def test_upsert_rows_updates_on_conflict(warehouse_engine: Engine) -> None:
    with warehouse_engine.begin() as conn:
        upsert_rows(
            conn,
            "stripe_invoices",
            [invoice_row("in_1", "2026-10-01", "v1"), invoice_row("in_2", "2026-10-01", "v1")],
            ["source_id"],
        )
        n = upsert_rows(
            conn, "stripe_invoices", [invoice_row("in_1", "2026-10-02", "v2")], ["source_id"]
        )
    assert n == 1
    assert stored(warehouse_engine) == {
        "in_1": ("2026-10-02", "v2"),
        "in_2": ("2026-10-01", "v1"),
    }


def test_upsert_rows_updates_only_the_named_columns(warehouse_engine: Engine) -> None:
    with warehouse_engine.begin() as conn:
        upsert_rows(
            conn, "stripe_invoices", [invoice_row("in_1", "2026-10-01", "v1")], ["source_id"]
        )
        upsert_rows(
            conn,
            "stripe_invoices",
            [invoice_row("in_1", "2026-10-09", "v2")],
            ["source_id"],
            update=["payload"],
        )
        assert upsert_rows(conn, "stripe_invoices", [], ["source_id"]) == 0
    assert stored(warehouse_engine) == {"in_1": ("2026-10-01", "v2")}


def test_upsert_rows_with_nothing_to_update_keeps_the_first(warehouse_engine: Engine) -> None:
    with warehouse_engine.begin() as conn:
        upsert_rows(
            conn, "stripe_invoices", [invoice_row("in_1", "2026-10-01", "v1")], ["source_id"]
        )
        upsert_rows(
            conn,
            "stripe_invoices",
            [invoice_row("in_1", "2026-10-02", "v2")],
            ["source_id"],
            update=[],
        )
    assert stored(warehouse_engine) == {"in_1": ("2026-10-01", "v1")}


def test_replace_partitions_replaces_only_the_range(warehouse_engine: Engine) -> None:
    with warehouse_engine.begin() as conn:
        upsert_rows(
            conn,
            "stripe_invoices",
            [
                invoice_row("in_before", "2026-09-30"),
                invoice_row("in_gone", "2026-10-01"),
                invoice_row("in_kept", "2026-10-02", "old"),
                invoice_row("in_after", "2026-10-03"),
            ],
            ["source_id"],
        )
        replace_partitions(
            conn,
            "stripe_invoices",
            [invoice_row("in_kept", "2026-10-02", "new"), invoice_row("in_new", "2026-10-01")],
            date_from="2026-10-01",
            date_to="2026-10-03",
            key=["source_id"],
        )
    assert stored(warehouse_engine) == {
        "in_before": ("2026-09-30", "{}"),
        "in_kept": ("2026-10-02", "new"),
        "in_new": ("2026-10-01", "{}"),
        # date_to is exclusive: the next day's partition is untouched.
        "in_after": ("2026-10-03", "{}"),
    }


def test_replace_partitions_moves_a_record_between_partitions(warehouse_engine: Engine) -> None:
    # in_1 was extracted under 2026-10-01; a rerun of 2026-10-05 now finds it there (it was
    # updated). Its old row is outside the range, so only the upsert keeps the key unique.
    with warehouse_engine.begin() as conn:
        upsert_rows(
            conn, "stripe_invoices", [invoice_row("in_1", "2026-10-01", "v1")], ["source_id"]
        )
    with warehouse_engine.begin() as conn:
        replace_partitions(
            conn,
            "stripe_invoices",
            [invoice_row("in_1", "2026-10-05", "v2")],
            date_from="2026-10-05",
            date_to="2026-10-06",
            key=["source_id"],
        )
    assert stored(warehouse_engine) == {"in_1": ("2026-10-05", "v2")}


def test_replace_partitions_with_an_extra_filter(warehouse_engine: Engine) -> None:
    with warehouse_engine.begin() as conn:
        upsert_rows(
            conn,
            "stripe_invoices",
            [invoice_row("in_a", "2026-10-01", "a"), invoice_row("in_b", "2026-10-01", "b")],
            ["source_id"],
        )
        replace_partitions(
            conn,
            "stripe_invoices",
            [],
            date_from="2026-10-01",
            date_to="2026-10-02",
            key=["source_id"],
            extra_where="AND payload = :payload",
            params={"payload": "a"},
        )
    assert stored(warehouse_engine) == {"in_b": ("2026-10-01", "b")}


def test_frame_records_gives_plain_python_values() -> None:
    df = pd.DataFrame(
        {
            "n": pd.array([1, None], dtype="Int64"),
            "i": np.array([7, 8], dtype=np.int64),
            "s": pd.array(["x", None], dtype="str"),
            "f": [np.nan, 1.5],
            "b": np.array([True, False]),
            "o": [{"k": 1}, None],
        }
    )
    records = frame_records(df)
    assert records == [
        {"n": 1, "i": 7, "s": "x", "f": None, "b": True, "o": {"k": 1}},
        {"n": None, "i": 8, "s": None, "f": 1.5, "b": False, "o": None},
    ]
    assert all(type(r["i"]) is int for r in records)
    assert type(records[0]["n"]) is int
    assert type(records[0]["b"]) is bool
    assert frame_records(df, ["i"]) == [{"i": 7}, {"i": 8}]


def test_frame_records_round_trips_through_the_warehouse(warehouse_engine: Engine) -> None:
    df = pd.DataFrame([invoice_row("in_1", "2026-10-01"), invoice_row("in_2", "2026-10-02")])
    df["source_updated_at"] = pd.array([None, "2026-10-02"], dtype="str")
    with warehouse_engine.begin() as conn:
        upsert_rows(conn, "stripe_invoices", frame_records(df), ["source_id"])
        nulls = conn.execute(
            sa.text("SELECT source_id FROM stripe_invoices WHERE source_updated_at IS NULL")
        ).all()
        kept = conn.execute(
            sa.text("SELECT source_updated_at FROM stripe_invoices WHERE source_id = 'in_2'")
        ).scalar_one()
    # A missing value lands as SQL NULL, never as the text 'nan' or '<NA>'.
    assert [r.source_id for r in nulls] == ["in_1"]
    assert kept == "2026-10-02"


def test_exception_aging_buckets_on_both_databases(warehouse_engine: Engine) -> None:
    import datetime as dt

    now = dt.datetime.now(dt.UTC)
    rows = [
        ("a", now - dt.timedelta(hours=5)),
        ("b", now - dt.timedelta(days=5)),
        ("c", now - dt.timedelta(days=40)),
    ]
    with warehouse_engine.begin() as conn:
        for source_id, first_seen in rows:
            conn.execute(
                sa.text(
                    "INSERT INTO finance_exceptions (kind, source_system, source_id, severity, "
                    "owner_queue, detected_by, detail, status, first_seen, last_seen) VALUES "
                    "('unmapped_product', 'stripe', :id, 'high', 'finance_ops', 'test', 'x', "
                    "'open', :at, :at)"
                ),
                {"id": source_id, "at": first_seen.isoformat()},
            )
        aging = dict(
            conn.execute(
                sa.text("SELECT age_bucket, open_exceptions FROM v_exception_aging")
            ).fetchall()
        )
    assert aging == {"0-1 days": 1, "2-7 days": 1, "over 30 days": 1}


OLD_INVOICE_RECONCILIATION = """
CREATE TABLE invoice_reconciliation (
    partition_date TEXT NOT NULL, external_id TEXT NOT NULL, invoice_id TEXT,
    erp_internal_ids TEXT,
    status TEXT NOT NULL CHECK (status IN ('matched', 'missing_in_erp')),
    billing_currency TEXT, billing_total_minor BIGINT, erp_currency TEXT,
    erp_total_minor BIGINT, correlation_id TEXT, explanation TEXT NOT NULL,
    run_id TEXT NOT NULL, PRIMARY KEY (partition_date, external_id))
"""


def _recon_row(external_id: str, status: str) -> dict[str, Any]:
    return {
        "partition_date": "2026-10-01",
        "external_id": external_id,
        "status": status,
        "explanation": "x",
        "run_id": "run-1",
    }


def test_a_warehouse_made_before_a_check_changed_is_rebuilt_once_keeping_its_rows(
    warehouse_engine: Engine,
) -> None:
    # A warehouse from before `awaiting_window` existed: the old CHECK, one row, no migration.
    with warehouse_engine.begin() as conn:
        conn.exec_driver_sql("DROP VIEW IF EXISTS v_reconciliation_drift")
        conn.exec_driver_sql("DROP TABLE invoice_reconciliation")
        conn.exec_driver_sql(OLD_INVOICE_RECONCILIATION)
        conn.exec_driver_sql("DELETE FROM schema_migrations")
        upsert_rows(
            conn,
            "invoice_reconciliation",
            [_recon_row("STRIPE_in_1", "missing_in_erp")],
            ["partition_date", "external_id"],
        )
    with pytest.raises(sa.exc.IntegrityError), warehouse_engine.begin() as conn:
        upsert_rows(
            conn,
            "invoice_reconciliation",
            [_recon_row("STRIPE_in_2", "awaiting_window")],
            ["partition_date", "external_id"],
        )

    migrate(warehouse_engine)
    migrate(warehouse_engine)

    with warehouse_engine.begin() as conn:
        upsert_rows(
            conn,
            "invoice_reconciliation",
            [_recon_row("STRIPE_in_2", "awaiting_window")],
            ["partition_date", "external_id"],
        )
        rows = read_frame(
            conn, "SELECT external_id, status FROM invoice_reconciliation ORDER BY external_id"
        )
        drift = read_frame(conn, "SELECT status, documents FROM v_reconciliation_drift")
        versions = read_frame(conn, "SELECT version FROM schema_migrations ORDER BY version")
    assert list(rows.itertuples(index=False, name=None)) == [
        ("STRIPE_in_1", "missing_in_erp"),
        ("STRIPE_in_2", "awaiting_window"),
    ]
    # The view is back over the new table, and a document awaiting its window is not drift.
    assert list(drift.itertuples(index=False, name=None)) == [("missing_in_erp", 1)]
    # Each rebuild runs once, in order, however often the warehouse is migrated.
    assert list(versions["version"]) == [
        "0001_reconciliation_awaiting_window",
        "0002_reconciliation_balances",
    ]
    with warehouse_engine.begin() as conn:
        # The balance statuses are accepted now, and the old row kept its values.
        upsert_rows(
            conn,
            "invoice_reconciliation",
            [_recon_row("STRIPE_in_3", "balance_mismatch")],
            ["partition_date", "external_id"],
        )
    indexes = {
        i["name"] for i in sa.inspect(warehouse_engine).get_indexes("invoice_reconciliation")
    }
    assert "ix_invoice_reconciliation_status" in indexes
