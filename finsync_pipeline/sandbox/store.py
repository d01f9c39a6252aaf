"""The sandbox's persistent state: one SQLite file (WAL) shared by the three simulators.

A single connection guarded by a re-entrant lock serves every handler thread: the work per
request is small, and one writer avoids SQLITE_BUSY between simulators.
"""

import sqlite3
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);

CREATE TABLE IF NOT EXISTS stripe_object (
    object TEXT NOT NULL, id TEXT NOT NULL, seq INTEGER NOT NULL, created INTEGER NOT NULL,
    customer TEXT, status TEXT, type TEXT, ref TEXT, body TEXT NOT NULL,
    PRIMARY KEY (object, id));
CREATE INDEX IF NOT EXISTS stripe_object_order ON stripe_object (object, created, seq);
CREATE INDEX IF NOT EXISTS stripe_object_customer
    ON stripe_object (object, customer, created, seq);
CREATE INDEX IF NOT EXISTS stripe_object_type ON stripe_object (object, type, created, seq);
CREATE TABLE IF NOT EXISTS stripe_line (
    invoice TEXT NOT NULL, idx INTEGER NOT NULL, id TEXT NOT NULL, body TEXT NOT NULL,
    PRIMARY KEY (invoice, idx));
CREATE INDEX IF NOT EXISTS stripe_line_id ON stripe_line (invoice, id);

CREATE TABLE IF NOT EXISTS sf_record (
    object TEXT NOT NULL, id TEXT NOT NULL, seq INTEGER NOT NULL, body TEXT NOT NULL,
    PRIMARY KEY (object, id));
CREATE INDEX IF NOT EXISTS sf_record_seq ON sf_record (object, seq);
CREATE TABLE IF NOT EXISTS sf_token (token TEXT PRIMARY KEY, expires_at REAL NOT NULL);
CREATE TABLE IF NOT EXISTS sf_usage (hour INTEGER PRIMARY KEY, n INTEGER NOT NULL);

CREATE TABLE IF NOT EXISTS ns_master (
    type TEXT NOT NULL, id TEXT NOT NULL, body TEXT NOT NULL, PRIMARY KEY (type, id));
CREATE TABLE IF NOT EXISTS ns_customer (
    id INTEGER PRIMARY KEY, externalid TEXT UNIQUE, entityid TEXT, companyname TEXT,
    subsidiary TEXT, currency TEXT, parent TEXT, lastmodifieddate TEXT, datecreated TEXT,
    body TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS ns_customer_modified ON ns_customer (lastmodifieddate);
CREATE TABLE IF NOT EXISTS ns_transaction (
    id INTEGER PRIMARY KEY, externalid TEXT, type TEXT NOT NULL, tranid TEXT, entity TEXT,
    trandate TEXT, currency TEXT, subsidiary TEXT, foreigntotal TEXT, status TEXT, memo TEXT,
    otherrefnum TEXT, lastmodifieddate TEXT, datecreated TEXT, body TEXT NOT NULL,
    UNIQUE (type, externalid));
CREATE INDEX IF NOT EXISTS ns_transaction_modified ON ns_transaction (lastmodifieddate);
CREATE INDEX IF NOT EXISTS ns_transaction_entity ON ns_transaction (entity);
CREATE INDEX IF NOT EXISTS ns_transaction_trandate ON ns_transaction (trandate);
CREATE TABLE IF NOT EXISTS ns_nonce (nonce TEXT PRIMARY KEY, ts INTEGER NOT NULL);
CREATE INDEX IF NOT EXISTS ns_nonce_ts ON ns_nonce (ts);
"""


class Store:
    """Thread-safe access to the sandbox SQLite file.

    Args:
        path: The database file; created with the schema when absent.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.lock = threading.RLock()
        self._conn = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None)
        self._conn.row_factory = sqlite3.Row
        self._conn.execute("PRAGMA journal_mode=WAL")
        # NetSuite postings must survive a crash of the sandbox process like a real ERP commit:
        # in WAL mode a commit is in the log before it returns, which a killed process cannot
        # lose (only the machine losing power can, and no test does that). FULL's fsync per
        # commit would make the simulator the bottleneck of every posting benchmark.
        self._conn.execute("PRAGMA synchronous=NORMAL")
        self._conn.execute("PRAGMA busy_timeout=10000")
        self._conn.executescript(SCHEMA)

    def close(self) -> None:
        """Close the connection."""
        with self.lock:
            self._conn.close()

    @contextmanager
    def tx(self) -> Iterator[sqlite3.Connection]:
        """A write transaction (BEGIN IMMEDIATE ... COMMIT, rolled back on error)."""
        with self.lock:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                yield self._conn
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
            self._conn.execute("COMMIT")

    def all(self, sql: str, params: Sequence[Any] = ()) -> list[sqlite3.Row]:
        """Rows of a read query."""
        with self.lock:
            return self._conn.execute(sql, params).fetchall()

    def one(self, sql: str, params: Sequence[Any] = ()) -> sqlite3.Row | None:
        """The first row of a read query, or None."""
        with self.lock:
            row: sqlite3.Row | None = self._conn.execute(sql, params).fetchone()
            return row

    def meta_get(self, key: str) -> str | None:
        """A stored setting, or None."""
        row = self.one("SELECT value FROM meta WHERE key = ?", (key,))
        return None if row is None else str(row["value"])

    def meta_set(self, key: str, value: str) -> None:
        """Store a setting."""
        with self.tx() as conn:
            conn.execute(
                "INSERT INTO meta (key, value) VALUES (?, ?) "
                "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                (key, value),
            )
