"""Durable state: the ledger (which files were handled, how far a file got, who holds
a file in ``processing/``).

Why a ledger: a file must never be processed twice, and a ``kill -9`` in the middle of a
file must resume without re-sending the batches the API already accepted and without
losing any.  Every write is one short SQLite transaction with ``synchronous=FULL``, so a
write that returned is on disk, and a write that did not return left nothing behind.
The tables are described in `csvbridge.drops.ledger_rows`.
"""

from __future__ import annotations

import os
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from types import TracebackType
from typing import Any

from csvbridge.drops.ledger_rows import (
    MIGRATIONS,
    SCHEMA_VERSION,
    STATUSES,
    BatchEntry,
    FileEntry,
    make_fingerprint,
    sha256_file,
)
from csvbridge.drops.lock import Owner, me
from csvbridge.errors import TerminalError, TransientError
from csvbridge.files import PRIVATE
from csvbridge.report import FileState

__all__ = [
    "AlreadyProcessed",
    "BatchEntry",
    "FileEntry",
    "Ledger",
    "LedgerError",
    "make_fingerprint",
    "sha256_file",
]

BUSY_TIMEOUT_SECONDS = 30.0


class AlreadyProcessed(TerminalError):
    """`Ledger.begin` was asked to start a file whose content is already ``done``."""

    def __init__(self, entry: FileEntry) -> None:
        super().__init__(
            "file content was already processed",
            file=entry.name,
            source=entry.source,
            file_id=entry.id,
        )
        self.entry = entry


class LedgerError(TransientError):
    """The ledger cannot be read or written (disk full, I/O error, read-only, busy).

    A failure of the environment, not of any file: the file being handled stays where it
    is for a retry, and the pass stops (every file needs the ledger)."""


class Ledger:
    """The SQLite ledger.  Thread-safe; several processes may open the same file."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
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

    def _read(self, sql: str, params: tuple[Any, ...] = ()) -> list[sqlite3.Row]:
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

    @property
    def schema_version(self) -> int:
        return self._read("SELECT MAX(version) FROM schema_version")[0][0]

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    def __enter__(self) -> Ledger:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- files ----------------------------------------------------------------------

    def lookup(self, fingerprint: str) -> FileEntry | None:
        """The entry for this content, whatever its name or source, or None if never seen."""
        rows = self._read("SELECT * FROM files WHERE fingerprint = ?", (fingerprint,))
        return FileEntry._from_row(rows[0]) if rows else None

    def get(self, file_id: int) -> FileEntry:
        rows = self._read("SELECT * FROM files WHERE id = ?", (file_id,))
        if not rows:
            raise KeyError(f"no file with id {file_id} in the ledger")
        return FileEntry._from_row(rows[0])

    def begin(self, source: str, name: str, size: int, mtime: float, sha256: str) -> FileEntry:
        """Start (or resume) processing a file and return its entry.

        New content gets a new entry with ``attempts=1``.  Content already ``processing``
        (a pass was interrupted) or ``failed`` (retried on purpose) keeps its id and its
        recorded progress, with ``attempts`` incremented, so the accepted ids are not sent
        again.  Content already ``done`` raises `AlreadyProcessed`: a file is never
        processed twice.  Name, source and mtime are updated to where it is seen now.
        """
        fp = make_fingerprint(sha256, size)
        now = time.time()
        with self._write() as c:
            row = c.execute("SELECT * FROM files WHERE fingerprint = ?", (fp,)).fetchone()
            if row is None:
                cur = c.execute(
                    "INSERT INTO files (source, name, size, mtime, sha256, fingerprint, "
                    "status, started_at, attempts) VALUES (?, ?, ?, ?, ?, ?, 'processing', ?, 1)",
                    (source, name, size, mtime, sha256.lower(), fp, now),
                )
                file_id = cur.lastrowid
            else:
                entry = FileEntry._from_row(row)
                if entry.status is FileState.DONE:
                    raise AlreadyProcessed(entry)
                file_id = entry.id
                c.execute(
                    "UPDATE files SET source = ?, name = ?, mtime = ?, status = 'processing', "
                    "started_at = ?, finished_at = NULL, rows = NULL, shipped = NULL, "
                    "rejected = NULL, not_shipped = NULL, report_path = NULL, "
                    "attempts = attempts + 1 WHERE id = ?",
                    (source, name, mtime, now, file_id),
                )
            return FileEntry._from_row(
                c.execute("SELECT * FROM files WHERE id = ?", (file_id,)).fetchone()
            )

    def finish(
        self,
        file_id: int,
        status: FileState,
        *,
        rows: int = 0,
        shipped: int = 0,
        rejected: int = 0,
        not_shipped: int = 0,
        report_path: str | Path | None = None,
    ) -> FileEntry:
        """Close the current attempt of a ``processing`` file as ``done`` or ``failed``."""
        if status not in (FileState.DONE, FileState.FAILED):
            raise ValueError(f"finish status must be done or failed, not {status!r}")
        with self._write() as c:
            row = c.execute("SELECT status FROM files WHERE id = ?", (file_id,)).fetchone()
            if row is None:
                raise KeyError(f"no file with id {file_id} in the ledger")
            if row["status"] != "processing":
                raise ValueError(f"file {file_id} is {row['status']}, not processing")
            c.execute(
                "UPDATE files SET status = ?, finished_at = ?, rows = ?, shipped = ?, "
                "rejected = ?, not_shipped = ?, report_path = ? WHERE id = ?",
                (
                    FileState(status).value,
                    time.time(),
                    rows,
                    shipped,
                    rejected,
                    not_shipped,
                    None if report_path is None else str(report_path),
                    file_id,
                ),
            )
            return FileEntry._from_row(
                c.execute("SELECT * FROM files WHERE id = ?", (file_id,)).fetchone()
            )

    # -- progress -------------------------------------------------------------------

    def record_batch(
        self,
        file_id: int,
        batch_no: int,
        accepted_ids: list[str],
        rejected_ids: list[str],
    ) -> None:
        """Record the API's answer to one batch, all of it or nothing (one transaction).

        Call it once the API answered, before sending anything that depends on it.  Ids
        accumulate across batches and attempts; an id once accepted stays accepted (a
        later "duplicate" rejection of the same id does not undo that the API has it).
        Recording the same batch number again in the same attempt replaces its summary row.
        """
        with self._write() as c:
            row = c.execute("SELECT attempts FROM files WHERE id = ?", (file_id,)).fetchone()
            if row is None:
                raise KeyError(f"no file with id {file_id} in the ledger")
            attempt = row["attempts"]
            accepted = list(dict.fromkeys(accepted_ids))
            accepted_set = set(accepted)
            rejected = [i for i in dict.fromkeys(rejected_ids) if i not in accepted_set]
            c.executemany(
                "INSERT INTO conversions (file_id, conversion_id, outcome, batch_no, attempt) "
                "VALUES (?, ?, 'accepted', ?, ?) ON CONFLICT (file_id, conversion_id) DO UPDATE "
                "SET outcome = 'accepted', batch_no = excluded.batch_no, "
                "attempt = excluded.attempt WHERE outcome <> 'accepted'",
                ((file_id, i, batch_no, attempt) for i in accepted),
            )
            c.executemany(
                "INSERT INTO conversions (file_id, conversion_id, outcome, batch_no, attempt) "
                "VALUES (?, ?, 'rejected', ?, ?) ON CONFLICT (file_id, conversion_id) "
                "DO UPDATE SET batch_no = excluded.batch_no, attempt = excluded.attempt "
                "WHERE outcome = 'rejected'",
                ((file_id, i, batch_no, attempt) for i in rejected),
            )
            c.execute(
                "INSERT OR REPLACE INTO batches "
                "(file_id, attempt, batch_no, accepted, rejected, recorded_at) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                (file_id, attempt, batch_no, len(accepted), len(rejected), time.time()),
            )

    def record_events(
        self, file_id: int, batch_no: int, sent_ids: list[str], rejected_ids: list[str]
    ) -> None:
        """Record the tracking API's answer to one request of the ``events`` sink (one
        transaction), before the next request: after a kill -9 only the request in flight
        is sent again.  An id once sent stays sent."""
        with self._write() as c:
            row = c.execute("SELECT attempts FROM files WHERE id = ?", (file_id,)).fetchone()
            if row is None:
                raise KeyError(f"no file with id {file_id} in the ledger")
            attempt = row["attempts"]
            sent = list(dict.fromkeys(sent_ids))
            rejected = [i for i in dict.fromkeys(rejected_ids) if i not in set(sent)]
            c.executemany(
                "INSERT INTO events (file_id, conversion_id, outcome, batch_no, attempt) "
                "VALUES (?, ?, 'sent', ?, ?) ON CONFLICT (file_id, conversion_id) DO UPDATE "
                "SET outcome = 'sent', batch_no = excluded.batch_no, "
                "attempt = excluded.attempt WHERE outcome <> 'sent'",
                ((file_id, i, batch_no, attempt) for i in sent),
            )
            c.executemany(
                "INSERT INTO events (file_id, conversion_id, outcome, batch_no, attempt) "
                "VALUES (?, ?, 'rejected', ?, ?) ON CONFLICT (file_id, conversion_id) "
                "DO UPDATE SET batch_no = excluded.batch_no, attempt = excluded.attempt "
                "WHERE outcome = 'rejected'",
                ((file_id, i, batch_no, attempt) for i in rejected),
            )

    def sent_event_ids(self, file_id: int) -> set[str]:
        """Ids of this file the events sink delivered, over all attempts."""
        rows = self._read(
            "SELECT conversion_id FROM events WHERE file_id = ? AND outcome = 'sent'",
            (file_id,),
        )
        return {r[0] for r in rows}

    # -- API sources ----------------------------------------------------------------

    def get_cursor(self, source: str) -> str | None:
        """The cursor an API source stored last (its own JSON), None before its first."""
        rows = self._read("SELECT cursor FROM cursors WHERE source = ?", (source,))
        return rows[0][0] if rows else None

    def set_cursor(self, source: str, cursor: str) -> None:
        """Store an API source's cursor (durable once this returns)."""
        with self._write() as c:
            c.execute(
                "INSERT INTO cursors (source, cursor, updated_at) VALUES (?, ?, ?) "
                "ON CONFLICT (source) DO UPDATE SET cursor = excluded.cursor, "
                "updated_at = excluded.updated_at",
                (source, cursor, time.time()),
            )

    def accepted_ids(self, file_id: int) -> set[str]:
        """Every id of this file the API accepted, over all attempts: never send these again."""
        return self._ids(file_id, "accepted")

    def rejected_ids(self, file_id: int) -> set[str]:
        """Ids the API rejected and never accepted afterwards."""
        return self._ids(file_id, "rejected")

    def _ids(self, file_id: int, outcome: str) -> set[str]:
        rows = self._read(
            "SELECT conversion_id FROM conversions WHERE file_id = ? AND outcome = ?",
            (file_id, outcome),
        )
        return {r[0] for r in rows}

    def batches(self, file_id: int) -> list[BatchEntry]:
        """Recorded batches of a file, in order (attempt, batch number)."""
        rows = self._read(
            "SELECT attempt, batch_no, accepted, rejected, recorded_at FROM batches "
            "WHERE file_id = ? ORDER BY attempt, batch_no",
            (file_id,),
        )
        return [BatchEntry(*r) for r in rows]

    # -- inspection -----------------------------------------------------------------

    def files(self, status: FileState | None = None, limit: int = 100) -> list[FileEntry]:
        """Entries, most recently started first, optionally of one status."""
        if status is not None and status not in STATUSES:
            raise ValueError(f"unknown status {status!r}; expected one of {STATUSES}")
        where, params = ("WHERE status = ?", (FileState(status).value,)) if status else ("", ())
        rows = self._read(
            f"SELECT * FROM files {where} ORDER BY started_at DESC, id DESC LIMIT ?",
            (*params, int(limit)),
        )
        return [FileEntry._from_row(r) for r in rows]

    def stats(self) -> dict[str, Any]:
        """Totals for ``csvbridge status`` and for a human glancing at the ledger."""
        by_status = {s.value: 0 for s in STATUSES}
        for status, n in self._read("SELECT status, COUNT(*) FROM files GROUP BY status"):
            by_status[status] = n
        totals = self._read(
            "SELECT COALESCE(SUM(rows), 0), COALESCE(SUM(shipped), 0), "
            "COALESCE(SUM(rejected), 0), COALESCE(SUM(not_shipped), 0), "
            "MAX(CASE WHEN status = 'done' THEN finished_at END), "
            "COALESCE(SUM(CASE WHEN attempts > 1 THEN 1 ELSE 0 END), 0) FROM files"
        )[0]
        progress = self._read("SELECT COUNT(*) FROM batches")[0][0]
        return {
            "files": by_status,
            "files_total": sum(by_status.values()),
            "files_resumed": totals[5],
            "rows": totals[0],
            "shipped": totals[1],
            "rejected": totals[2],
            "not_shipped": totals[3],
            "last_done_at": totals[4],
            "batches_recorded": progress,
            "schema_version": self.schema_version,
            "path": str(self.path),
        }

    # -- claims ---------------------------------------------------------------------

    def claim(self, source: str, path: str, owner: Owner | None = None) -> Owner | None:
        """Claim `path` of `source` for `owner` (this process by default).

        Returns None when the claim is ours (new, already ours, or taken over from an
        owner that is gone), else the live owner holding it: leave that file alone.
        """
        owner = owner or me()
        with self._write() as c:
            row = c.execute(
                "SELECT owner FROM claims WHERE source = ? AND path = ?", (source, path)
            ).fetchone()
            if row is not None and row[0] != owner.token:
                holder = Owner.parse(row[0])
                if holder is not None and holder.alive():
                    return holder
            c.execute(
                "INSERT INTO claims (source, path, owner, claimed_at) VALUES (?, ?, ?, ?) "
                "ON CONFLICT (source, path) DO UPDATE SET owner = excluded.owner, "
                "claimed_at = excluded.claimed_at",
                (source, path, owner.token, time.time()),
            )
        return None

    def release(self, source: str, path: str) -> None:
        """Forget the claim on `path` (filed away, or never moved into processing/)."""
        with self._write() as c:
            c.execute("DELETE FROM claims WHERE source = ? AND path = ?", (source, path))


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
