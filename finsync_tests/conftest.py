"""Shared fixtures: real warehouses (a SQLite file and the local PostgreSQL) and a sandbox."""

import datetime as dt
import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import dagster as dg
import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from finsync_pipeline.resources.warehouse import create_engine, migrate_url

# The CI machine runs PostgreSQL here with trust auth; override to test elsewhere.
POSTGRES_URL = os.environ.get(
    "FINSYNC_TEST_POSTGRES_URL", "postgresql+psycopg2://postgres@127.0.0.1:5432/test"
)
# A fixed last day of history keeps generated companies identical from day to day.
TEST_END = dt.date(2026, 10, 31)


def postgres_schema_url() -> Iterator[str]:
    """A fresh schema in the local PostgreSQL (its URL), migrated, dropped when the generator
    closes."""
    schema = f"finsync_test_{uuid.uuid4().hex[:12]}"
    admin = sa.create_engine(POSTGRES_URL)
    with admin.begin() as conn:
        conn.execute(sa.text(f"CREATE SCHEMA {schema}"))
    url = f"{POSTGRES_URL}?options=-csearch_path%3D{schema}"
    try:
        # As its owner would (`finsync warehouse migrate`): only SQLite migrates on every start.
        migrate_url(url)
        yield url
    finally:
        create_engine(url).dispose()
        with admin.begin() as conn:
            conn.execute(sa.text(f"DROP SCHEMA {schema} CASCADE"))
        admin.dispose()


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    """A warehouse URL of a real SQLite file in the test's own folder."""
    return f"sqlite:///{tmp_path / 'warehouse.db'}"


@pytest.fixture
def postgres_url() -> Iterator[str]:
    """A warehouse URL of a fresh schema in the local PostgreSQL, dropped afterwards."""
    yield from postgres_schema_url()


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def warehouse_engine(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Engine]:
    """The warehouse engine, once on a SQLite file and once on PostgreSQL, schema applied."""
    if request.param == "sqlite":
        yield create_engine(f"sqlite:///{tmp_path / 'warehouse.db'}")
    else:
        for url in postgres_schema_url():
            yield create_engine(url)


@pytest.fixture
def instance(tmp_path: Path) -> dg.DagsterInstance:
    """A Dagster instance of the test's own, in its folder."""
    (tmp_path / "dagster").mkdir()
    return dg.DagsterInstance.local_temp(str(tmp_path / "dagster"))
