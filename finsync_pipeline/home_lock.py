"""One writer per home: a file lock on ``HOME/.lock``, and an advisory lock per PostgreSQL
warehouse.

Two commands writing one home at once (two ``finsync run``, a ``finsync demo`` over a home a
run is using) interleave their ledgers and Dagster runs and fail opaquely, or mix two
companies in one warehouse. Every command that writes takes the home's lock for as long as it
runs; a second one stops at once with one line naming the process that holds it. The lock is
an ``flock``: the kernel releases it when its holder exits, however it exits, so a killed
command never leaves a stale lock. Homes on different machines may share one PostgreSQL
warehouse, so there a ``pg_advisory_lock`` on the warehouse's database is held too.
Commands that only read (``exceptions list``/``show``, ``ledger verify``) take no lock.
"""

import contextlib
import datetime as dt
import fcntl
import json
import os
import zlib
from collections.abc import Iterator
from pathlib import Path

import sqlalchemy as sa

from finsync_pipeline.errors import HomeBusyError

LOCK_FILE = ".lock"
# The advisory lock's key; advisory locks live in one database, so one key locks that one.
WAREHOUSE_LOCK_KEY = zlib.crc32(b"finsync warehouse writer") & 0x7FFFFFFF


def _holder(text: str) -> str:
    try:
        holder = json.loads(text)
        return f"pid {holder['pid']} ({holder['command']}, since {holder['since']})"
    except (ValueError, KeyError, TypeError):
        # The holder took the lock a moment ago and has not written its name yet.
        return "another process"


@contextlib.contextmanager
def home_lock(home: Path, command: str, warehouse_url: str | None = None) -> Iterator[None]:
    """Hold ``home``'s lock (created with the home when absent) while the block runs.

    Args:
        home: The home folder.
        command: The command line, told to anyone who finds the home busy.
        warehouse_url: The warehouse; a PostgreSQL one is locked too.

    Raises:
        HomeBusyError: Another process holds the home or the warehouse (it is named).
    """
    home.mkdir(parents=True, exist_ok=True)
    path = home / LOCK_FILE
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _holder(path.read_text())
            raise HomeBusyError(
                f"home {home.resolve()} is in use by {holder}; wait for it to finish or stop "
                "it, or use another --home"
            ) from None
        since = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
        me = json.dumps({"pid": os.getpid(), "command": command, "since": since})
        os.ftruncate(fd, 0)
        os.pwrite(fd, me.encode() + b"\n", 0)
        with _warehouse_lock(warehouse_url, f"finsync pid {os.getpid()} ({command})"):
            yield
    finally:
        os.close(fd)


@contextlib.contextmanager
def _warehouse_lock(url: str | None, holder: str) -> Iterator[None]:
    """Hold the advisory lock of a PostgreSQL warehouse's database (nothing for SQLite, whose
    file lives in the home and is covered by the home's lock)."""
    if not url or sa.make_url(url).get_backend_name() != "postgresql":
        yield
        return
    engine = sa.create_engine(url, poolclass=sa.pool.NullPool)
    try:
        with engine.connect() as conn:
            # Named, so a second writer can say who holds the warehouse.
            conn.execute(sa.text("SELECT set_config('application_name', :n, false)"), {"n": holder})
            got = conn.execute(
                sa.text("SELECT pg_try_advisory_lock(:k)"), {"k": WAREHOUSE_LOCK_KEY}
            ).scalar_one()
            conn.commit()
            if not got:
                other = conn.execute(
                    sa.text(
                        "SELECT a.application_name, a.pid FROM pg_locks l "
                        "JOIN pg_stat_activity a ON a.pid = l.pid "
                        "WHERE l.locktype = 'advisory' AND l.granted AND l.objid = :k "
                        "AND l.database = (SELECT oid FROM pg_database "
                        "WHERE datname = current_database())"
                    ),
                    {"k": WAREHOUSE_LOCK_KEY},
                ).first()
                who = (other[0] or f"backend pid {other[1]}") if other else "another process"
                url_text = sa.make_url(url)
                raise HomeBusyError(
                    f"warehouse {url_text.host}:{url_text.port or 5432}/{url_text.database} is "
                    f"in use by {who}; wait for it to finish or stop it"
                )
            try:
                yield
            finally:
                conn.execute(sa.text("SELECT pg_advisory_unlock(:k)"), {"k": WAREHOUSE_LOCK_KEY})
                conn.commit()
    finally:
        engine.dispose()
