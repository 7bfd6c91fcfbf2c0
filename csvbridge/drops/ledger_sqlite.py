"""The SQLite backend of the ledger: one file, WAL, ``synchronous=FULL``.

Why SQLite is the default: nothing to run, and every write is one short transaction
with ``synchronous=FULL``, so a write that returned is on disk and a write that did not
return left nothing behind (a ``kill -9`` resumes from exactly what was recorded).
Several processes on one machine may share the file; replicas on several machines need
the PostgreSQL backend (`csvbridge.drops.ledger_pg`).
"""

from __future__ import annotations

import os
import sqlite3
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

from csvbridge.drops.ledger_base import LedgerError, SqlLedger
from csvbridge.drops.ledger_rows import MIGRATIONS, SCHEMA_VERSION
from csvbridge.errors import TerminalError
from csvbridge.files import PRIVATE

BUSY_TIMEOUT_SECONDS = 30.0


class SqliteLedger(SqlLedger):
    """The SQLite ledger, the embedded default.  Thread-safe; several processes on one
    machine may open the same file."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.location = str(self.path)
        self._lock = threading.RLock()
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            _create_private(self.path)
        except OSError as exc:
            raise LedgerError(
                f"cannot create the ledger: {exc.strerror}", ledger=str(self.path)
            ) from None
        try:
            self._conn = sqlite3.connect(
                str(self.path),
                timeout=BUSY_TIMEOUT_SECONDS,
                isolation_level=None,  # we issue BEGIN/COMMIT ourselves
                check_same_thread=False,  # guarded by self._lock
            )
        except sqlite3.Error as exc:
            raise LedgerError(f"cannot open ledger: {exc}", ledger=str(self.path)) from None
        self._conn.row_factory = sqlite3.Row
        try:
            self._use_wal()
            # FULL: a committed transaction survives a crash of the process *and* of the OS.
            self._conn.execute("PRAGMA synchronous=FULL")
            self._conn.execute("PRAGMA foreign_keys=ON")
            self._migrate()
        except BaseException:
            self._conn.close()
            raise

    # -- plumbing -------------------------------------------------------------------

    def _use_wal(self) -> None:
        """Switch to WAL (persistent in the file); retry while another opener holds it."""
        deadline = time.monotonic() + BUSY_TIMEOUT_SECONDS
        while True:
            try:
                mode = self._conn.execute("PRAGMA journal_mode").fetchone()[0]
                if str(mode).lower() != "wal":
                    self._conn.execute("PRAGMA journal_mode=WAL")
                return
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) or time.monotonic() > deadline:
                    raise self._translate(exc) from None
                time.sleep(0.05)
            except sqlite3.DatabaseError as exc:
                raise self._translate(exc) from None

    def _translate(self, exc: sqlite3.Error) -> Exception:
        """Disk full, I/O error, read-only, busy: transient (`LedgerError`); a file that
        is not a ledger or is corrupt: terminal, a person must look at it."""
        if isinstance(exc, sqlite3.OperationalError) and "locked" in str(exc):
            return LedgerError(f"ledger is busy: {exc}", ledger=str(self.path))
        if isinstance(exc, sqlite3.OperationalError):
            return LedgerError(f"ledger error: {exc}", ledger=str(self.path))
        return TerminalError(f"ledger error: {exc}", ledger=str(self.path))

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """One short write transaction; the write lock is taken up front (no upgrade
        deadlock between processes)."""
        with self._lock:
            conn = self._conn
            try:
                conn.execute("BEGIN IMMEDIATE")
            except sqlite3.Error as exc:
                raise self._translate(exc) from None
            try:
                yield conn
                conn.execute("COMMIT")
            except BaseException as exc:
                if conn.in_transaction:
                    with suppress(sqlite3.Error):  # disk full may also fail the rollback
                        conn.execute("ROLLBACK")
                if isinstance(exc, sqlite3.Error):
                    raise self._translate(exc) from exc
                raise

    def _read(self, sql: str, params: Sequence[Any] = ()) -> list[sqlite3.Row]:
        with self._lock:
            try:
                return self._conn.execute(sql, params).fetchall()
            except sqlite3.Error as exc:
                raise self._translate(exc) from None

    def _migrate(self) -> None:
        with self._write() as c:
            c.execute(
                "CREATE TABLE IF NOT EXISTS schema_version "
                "(version INTEGER PRIMARY KEY, applied_at REAL NOT NULL)"
            )
            current = c.execute("SELECT MAX(version) FROM schema_version").fetchone()[0] or 0
            if current > SCHEMA_VERSION:
                raise TerminalError(
                    f"ledger schema version {current} is newer than this csvbridge "
                    f"supports ({SCHEMA_VERSION}); upgrade csvbridge",
                    ledger=str(self.path),
                )
            for version in range(current + 1, SCHEMA_VERSION + 1):
                for statement in MIGRATIONS[version]:
                    c.execute(statement)
                c.execute("INSERT INTO schema_version VALUES (?, ?)", (version, time.time()))

    def close(self) -> None:
        with self._lock:
            self._conn.close()


def _create_private(path: Path) -> None:
    """Create the ledger file 0600 before SQLite opens it (SQLite gives its -wal and -shm
    files the database file's mode), and never through a link."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, PRIVATE)
    except FileExistsError:
        if path.is_symlink():
            raise OSError(40, "the ledger path is a symbolic link") from None
        return
    os.close(fd)
