"""finsync as deployed on one machine: the Dagster daemon and webserver over PostgreSQL.

``finsync deploy`` gives the home's Dagster instance ``dagster-deploy.yaml`` (PostgreSQL run,
event and schedule storage, the queued run coordinator with the ``finsync/erp`` tag limit, the
default run launcher, run monitoring) and runs, until it is stopped:

- ``dagster-daemon run``: the daily schedule, the posting and late-changes sensors, the run
  queue and run monitoring. Every run is launched in a run worker process of its own by the
  code server the daemon starts; the code server marks a run failed when its worker dies, and
  run monitoring frees the pool slots a failed run held.
- ``dagster-webserver``: the UI over the same instance.

Both read the environment of the systems (as ``finsync run`` does) and ``DAGSTER_PG_URL``.
"""

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from types import FrameType

import dagster as dg
import sqlalchemy as sa

from finsync_pipeline.errors import ConfigurationError
from finsync_pipeline.processes import stop_tree
from finsync_pipeline.run_health import reap_dead_workers

PG_URL_ENV = "DAGSTER_PG_URL"
POLL_S = 1.0


def check_storage() -> None:
    """Raise ConfigurationError unless ``DAGSTER_PG_URL`` names a PostgreSQL we can reach.

    The message names the server and database, never the password.
    """
    text = os.environ.get(PG_URL_ENV, "").strip()
    if not text:
        raise ConfigurationError(
            f"Dagster storage is not configured: set {PG_URL_ENV} to a PostgreSQL URL, "
            "e.g. postgresql+psycopg2://dagster@127.0.0.1:5432/dagster"
        )
    try:
        url = sa.make_url(text)
    except sa.exc.ArgumentError as e:
        raise ConfigurationError(
            f"Dagster storage: {PG_URL_ENV} is not a database URL; set it to a PostgreSQL URL, "
            "e.g. postgresql+psycopg2://dagster@127.0.0.1:5432/dagster"
        ) from e
    if url.get_backend_name() != "postgresql":
        raise ConfigurationError(
            f"Dagster storage: {PG_URL_ENV} names {url.get_backend_name()}, not PostgreSQL; "
            "set it to a postgresql+psycopg2:// URL"
        )
    if url.drivername != "postgresql+psycopg2":
        # dagster-postgres hands the URL to SQLAlchemy as it is, and SQLAlchemy 2.1's default
        # PostgreSQL driver (psycopg 3) is not the one installed.
        raise ConfigurationError(
            f"Dagster storage: {PG_URL_ENV} uses the driver {url.drivername}; set it with the "
            f"installed one, {url.set(drivername='postgresql+psycopg2').render_as_string()}"
        )
    engine = sa.create_engine(url)
    try:
        with engine.connect():
            pass
    except sa.exc.OperationalError as e:
        reason = str(e.orig).strip().splitlines()[0] if e.orig else type(e).__name__
        raise ConfigurationError(
            f"Dagster storage: cannot connect to PostgreSQL {url.host}:{url.port or 5432}/"
            f"{url.database} ({reason}); check {PG_URL_ENV}"
        ) from e
    finally:
        engine.dispose()


def reap_dead_workers_of_home() -> list[str]:
    """The runs of the instance under $DAGSTER_HOME whose run worker died with the last
    deployment, marked failed (``run_health.reap_dead_workers``)."""
    with dg.DagsterInstance.get() as instance:
        return reap_dead_workers(instance)


def _commands(repo_root: Path, host: str, port: int) -> dict[str, list[str]]:
    """The daemon's and the webserver's command lines, from this interpreter's own folder."""
    bin_dir = Path(sys.executable).parent
    workspace = str(repo_root / "workspace.yaml")
    return {
        "dagster-daemon": [str(bin_dir / "dagster-daemon"), "run", "-w", workspace],
        "dagster-webserver": [
            str(bin_dir / "dagster-webserver"),
            "-w",
            workspace,
            "-h",
            host,
            "-p",
            str(port),
        ],
    }


class _Stop(Exception):
    """SIGTERM: stop the deployment as Ctrl-C does."""


def _raise_stop(_signum: int, _frame: FrameType | None) -> None:
    raise _Stop


def _stop_all(procs: dict[str, subprocess.Popen[bytes]]) -> None:
    # Each with everything it started (the daemon's code server and run workers).
    for proc in procs.values():
        stop_tree(proc, grace_s=60)


def serve(repo_root: Path, host: str, port: int, progress: Callable[[str], None]) -> int:
    """Run the daemon and the webserver until one of them exits, SIGTERM or Ctrl-C.

    Returns 0 when stopped, else the exit code of the process that ended first.
    """
    previous = signal.signal(signal.SIGTERM, _raise_stop)
    procs: dict[str, subprocess.Popen[bytes]] = {}
    try:
        for name, command in _commands(repo_root, host, port).items():
            # Our own Dagster executables with fixed arguments.
            procs[name] = subprocess.Popen(command, cwd=repo_root, env=os.environ.copy())  # noqa: S603
            progress(f"{name} started (pid {procs[name].pid})")
        progress(f"Dagster UI on http://{host}:{port}; Ctrl-C or SIGTERM stops the deployment")
        while True:
            for name, proc in procs.items():
                code = proc.poll()
                if code is not None:
                    progress(f"{name} exited with code {code}; stopping the deployment")
                    return code or 1
            time.sleep(POLL_S)
    except (KeyboardInterrupt, _Stop):
        return 0
    finally:
        _stop_all(procs)
        signal.signal(signal.SIGTERM, previous)
