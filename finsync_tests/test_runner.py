"""The runner's storage tuning never touches the warehouse's durability."""

from pathlib import Path

import sqlalchemy as sa

from finsync_pipeline.resources.warehouse import create_engine
from finsync_pipeline.runner import relax_embedded_dagster_storage


def test_only_the_embedded_dagster_files_skip_fsync(tmp_path: Path) -> None:
    dagster_home = tmp_path / "dagster"
    dagster_home.mkdir()
    relax_embedded_dagster_storage(dagster_home)
    run_history = sa.create_engine(f"sqlite:///{dagster_home / 'runs.db'}")
    warehouse = create_engine(f"sqlite:///{tmp_path / 'warehouse.db'}")
    neighbour = sa.create_engine(f"sqlite:///{tmp_path / 'dagster-other.db'}")
    with run_history.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA synchronous").scalar() == 0  # OFF
    with warehouse.connect() as conn:
        # The posting ledger lives here: every commit reaches the disk.
        assert conn.exec_driver_sql("PRAGMA synchronous").scalar() == 2  # FULL
    with neighbour.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA synchronous").scalar() != 0
