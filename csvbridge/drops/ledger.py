"""Durable state: the ledger (which files were handled, how far a file got), the stage
folder naming rules, and the pass lock.

Why a ledger: a file must never be processed twice, and a ``kill -9`` in the middle of a
file must resume without re-sending the batches the API already accepted and without
losing any.  Every write is one short SQLite transaction with ``synchronous=FULL``, so a
write that returned is on disk, and a write that did not return left nothing behind.

The ledger is a plain SQLite file (WAL mode, safe to open from several processes).  Open
it with ``sqlite3 csvbridge-state/ledger.sqlite`` to look inside:

``schema_version(version, applied_at)``
    One row per applied migration; the highest version is the current schema.

``files`` - one row per distinct file *content* ever taken from a drop
    ``id``            integer key, referenced by the progress tables
    ``source``        name of the configured source it was (last) seen in
    ``name``          file name it was (last) seen under
    ``size``          bytes
    ``mtime``         modification time on the drop (unix seconds)
    ``sha256``        hex SHA-256 of the content
    ``fingerprint``   ``<sha256>:<size>``, unique: the same content renamed or uploaded again
                      is recognised as the same file
    ``status``        ``processing`` (in progress, or interrupted: resumed on next pass),
                      ``done`` or ``failed``
    ``started_at``    start of the latest attempt (unix seconds)
    ``finished_at``   end of the latest attempt, NULL while processing
    ``rows``, ``shipped``, ``rejected``, ``not_shipped``   counts set when finished
    ``report_path``   where the JSON report of the latest attempt was written
    ``attempts``      how many times processing was started (2+ means it was resumed)

``batches`` - one row per batch the API answered, per attempt
    ``file_id``, ``attempt``, ``batch_no``, ``accepted``, ``rejected`` (id counts),
    ``recorded_at``

``conversions`` - the outcome of each conversion id of a file
    ``file_id``, ``conversion_id``, ``outcome`` (``accepted`` | ``rejected``),
    ``batch_no``, ``attempt``.  An id accepted once stays accepted: the API has it.

Example: ``SELECT id, name, status, attempts, datetime(started_at, 'unixepoch') FROM files
ORDER BY started_at DESC LIMIT 10;``
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import os
import posixpath
import re
import socket
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import Any, Literal

from csvbridge.errors import LockedError, TerminalError, TransientError

Status = Literal["processing", "done", "failed"]
STATUSES: tuple[str, ...] = ("processing", "done", "failed")
SCHEMA_VERSION = 1
BUSY_TIMEOUT_SECONDS = 30.0
HASH_BLOCK = 1024 * 1024

# Each migration is a list of single statements (executescript would commit on its own,
# breaking the one-transaction migration).
MIGRATIONS: dict[int, list[str]] = {
    1: [
        """CREATE TABLE files (
            id           INTEGER PRIMARY KEY AUTOINCREMENT,
            source       TEXT    NOT NULL,
            name         TEXT    NOT NULL,
            size         INTEGER NOT NULL,
            mtime        REAL    NOT NULL,
            sha256       TEXT    NOT NULL,
            fingerprint  TEXT    NOT NULL UNIQUE,
            status       TEXT    NOT NULL CHECK (status IN ('processing', 'done', 'failed')),
            started_at   REAL    NOT NULL,
            finished_at  REAL,
            rows         INTEGER,
            shipped      INTEGER,
            rejected     INTEGER,
            not_shipped  INTEGER,
            report_path  TEXT,
            attempts     INTEGER NOT NULL DEFAULT 1
        )""",
        "CREATE INDEX files_status_started ON files (status, started_at)",
        "CREATE INDEX files_started ON files (started_at)",
        """CREATE TABLE batches (
            file_id      INTEGER NOT NULL REFERENCES files (id) ON DELETE CASCADE,
            attempt      INTEGER NOT NULL,
            batch_no     INTEGER NOT NULL,
            accepted     INTEGER NOT NULL,
            rejected     INTEGER NOT NULL,
            recorded_at  REAL    NOT NULL,
            PRIMARY KEY (file_id, attempt, batch_no)
        )""",
        """CREATE TABLE conversions (
            file_id        INTEGER NOT NULL REFERENCES files (id) ON DELETE CASCADE,
            conversion_id  TEXT    NOT NULL,
            outcome        TEXT    NOT NULL CHECK (outcome IN ('accepted', 'rejected')),
            batch_no       INTEGER NOT NULL,
            attempt        INTEGER NOT NULL,
            PRIMARY KEY (file_id, conversion_id)
        ) WITHOUT ROWID""",
    ],
}


def sha256_file(path: str | Path) -> str:
    """Hex SHA-256 of a file, read in 1 MiB blocks so big exports do not fill memory."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(HASH_BLOCK):
            h.update(block)
    return h.hexdigest()


def make_fingerprint(sha256: str, size: int) -> str:
    """The identity of a file's content, independent of its name and location."""
    return f"{sha256.lower()}:{int(size)}"


@dataclass(frozen=True, slots=True)
class FileEntry:
    """One row of ``files``."""

    id: int
    source: str
    name: str
    size: int
    mtime: float
    sha256: str
    fingerprint: str
    status: Status
    started_at: float
    finished_at: float | None
    rows: int | None
    shipped: int | None
    rejected: int | None
    not_shipped: int | None
    report_path: str | None
    attempts: int

    @classmethod
    def _from_row(cls, row: sqlite3.Row) -> FileEntry:
        values = dict(zip(row.keys(), row, strict=True))
        return cls(**{f: values[f] for f in cls.__slots__})  # type: ignore[attr-defined]

    def as_dict(self) -> dict[str, Any]:
        return {f: getattr(self, f) for f in self.__slots__}  # type: ignore[attr-defined]


@dataclass(frozen=True, slots=True)
class BatchEntry:
    """One row of ``batches``: a batch whose answer from the API was recorded."""

    attempt: int
    batch_no: int
    accepted: int
    rejected: int
    recorded_at: float


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


class Ledger:
    """The SQLite ledger.  Thread-safe; several processes may open the same file."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.RLock()
        try:
            self._conn = sqlite3.connect(
                str(self.path),
                timeout=BUSY_TIMEOUT_SECONDS,
                isolation_level=None,  # we issue BEGIN/COMMIT ourselves
                check_same_thread=False,  # guarded by self._lock
            )
        except sqlite3.Error as exc:
            raise TerminalError(f"cannot open ledger: {exc}", ledger=str(self.path)) from None
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
        if isinstance(exc, sqlite3.OperationalError) and "locked" in str(exc):
            return TransientError(f"ledger is busy: {exc}", ledger=str(self.path))
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
                if entry.status == "done":
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
        status: Literal["done", "failed"],
        *,
        rows: int = 0,
        shipped: int = 0,
        rejected: int = 0,
        not_shipped: int = 0,
        report_path: str | Path | None = None,
    ) -> FileEntry:
        """Close the current attempt of a ``processing`` file as ``done`` or ``failed``."""
        if status not in ("done", "failed"):
            raise ValueError(f"finish status must be 'done' or 'failed', not {status!r}")
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
                    status,
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

    def files(self, status: Status | None = None, limit: int = 100) -> list[FileEntry]:
        """Entries, most recently started first, optionally of one status."""
        if status is not None and status not in STATUSES:
            raise ValueError(f"unknown status {status!r}; expected one of {STATUSES}")
        where, params = ("WHERE status = ?", (status,)) if status else ("", ())
        rows = self._read(
            f"SELECT * FROM files {where} ORDER BY started_at DESC, id DESC LIMIT ?",
            (*params, int(limit)),
        )
        return [FileEntry._from_row(r) for r in rows]

    def stats(self) -> dict[str, Any]:
        """Totals for ``csvbridge status`` and for a human glancing at the ledger."""
        by_status = dict.fromkeys(STATUSES, 0)
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


# -- stages ------------------------------------------------------------------------

STAGES: tuple[str, ...] = ("processing", "done", "failed")
_COMPRESSED = (".gz", ".bz2", ".xz", ".zst", ".zip")


def report_name(name: str) -> str:
    """The JSON report that sits next to a staged file."""
    return f"{name}.report.json"


def rejects_name(name: str) -> str:
    """The CSV of rejected rows that sits next to a staged file."""
    return f"{name}.rejects.csv"


def _split_ext(name: str) -> tuple[str, str]:
    """``orders.csv.gz`` -> (``orders``, ``.csv.gz``); ``orders`` -> (``orders``, ``"")``."""
    stem, ext = posixpath.splitext(name)
    if ext.lower() in _COMPRESSED:
        stem2, ext2 = posixpath.splitext(stem)
        if ext2:
            return stem2, ext2 + ext
    return stem, ext


@dataclass(frozen=True)
class Stages:
    """Where files go inside a drop, as relative POSIX paths; no I/O happens here.

    ``processing/`` holds a file while it is worked on, ``done/`` and ``failed/`` receive
    it with its report (and rejects) afterwards.  Names are never reused: when
    ``done/orders.csv`` exists the next one becomes ``done/orders.20261122T074512Z.csv``.
    """

    root: str = ""

    def folder(self, stage: str) -> str:
        if stage not in STAGES:
            raise ValueError(f"unknown stage {stage!r}; expected one of {STAGES}")
        return posixpath.join(self.root.strip("/"), stage) if self.root.strip("/") else stage

    @property
    def folders(self) -> list[str]:
        return [self.folder(s) for s in STAGES]

    def is_staged(self, path: str) -> bool:
        """True for paths inside a stage folder: a drop listing must skip them."""
        return any(path == f or path.startswith(f + "/") for f in self.folders)

    def stage_path(
        self, stage: str, name: str, existing: set[str], now: datetime | None = None
    ) -> str:
        """Path for ``name`` in ``stage`` that does not collide with ``existing``.

        ``existing`` holds what is already in that stage folder (bare names or full
        relative paths, both are understood).  On a clash a UTC timestamp goes before the
        extension, then ``-1``, ``-2``... if even that is taken.
        """
        return posixpath.join(self.folder(stage), self._free(stage, [name], existing, now)[0])

    def stage_paths(
        self, stage: str, name: str, existing: set[str], now: datetime | None = None
    ) -> tuple[str, str, str]:
        """(file, report, rejects) paths in ``stage`` sharing one free base name."""
        names = [name, report_name(name), rejects_name(name)]
        free = self._free(stage, names, existing, now)
        folder = self.folder(stage)
        return (
            posixpath.join(folder, free[0]),
            posixpath.join(folder, free[1]),
            posixpath.join(folder, free[2]),
        )

    def _free(
        self, stage: str, names: list[str], existing: set[str], now: datetime | None
    ) -> list[str]:
        base = names[0]
        if not base or "/" in base or base in (".", ".."):
            raise ValueError(f"not a plain file name: {base!r}")
        folder = self.folder(stage)
        taken = {posixpath.basename(e) for e in existing if e.startswith(folder + "/")}
        taken |= {e for e in existing if "/" not in e}
        suffixes = [n[len(base) :] for n in names]  # "", ".report.json", ".rejects.csv"

        def candidates() -> Iterator[str]:
            yield base
            stamp = (now or datetime.now(UTC)).astimezone(UTC).strftime("%Y%m%dT%H%M%SZ")
            stem, ext = _split_ext(base)
            yield f"{stem}.{stamp}{ext}"
            n = 1
            while True:
                yield f"{stem}.{stamp}-{n}{ext}"
                n += 1

        for candidate in candidates():
            if not any(candidate + s in taken for s in suffixes):
                return [candidate + s for s in suffixes]
        raise AssertionError("unreachable")  # pragma: no cover


# -- pass lock ---------------------------------------------------------------------

_PID = re.compile(r"pid=(\d+)")


class PassLock:
    """Only one pass at a time: an exclusive ``flock`` on a lock file.

    The kernel releases the lock when the holder dies, even by ``kill -9``, so there is no
    stale lock to clean up.  The file itself is never deleted (deleting it would let two
    processes lock two different files of the same name); it holds the holder's pid and
    start time for humans.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self) -> PassLock:
        if self._fd is not None:
            raise RuntimeError(f"{self.path} is already held by this PassLock")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            holder = self._read_holder(fd)
            os.close(fd)
            if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise
            pid = holder.get("pid")
            raise LockedError(
                f"another csvbridge pass is running (pid {pid or 'unknown'})",
                pid=pid,
                since=holder.get("started"),
                lock_file=str(self.path),
            ) from None
        info = (
            f"pid={os.getpid()} started={datetime.now(UTC).strftime('%Y-%m-%dT%H:%M:%SZ')} "
            f"host={socket.gethostname()}\n"
        )
        os.ftruncate(fd, 0)
        os.pwrite(fd, info.encode(), 0)
        self._fd = fd
        return self

    @staticmethod
    def _read_holder(fd: int) -> dict[str, Any]:
        try:
            text = os.pread(fd, 4096, 0).decode("utf-8", "replace")
        except OSError:
            return {}
        out: dict[str, Any] = {}
        if m := _PID.search(text):
            out["pid"] = int(m.group(1))
        if m := re.search(r"started=(\S+)", text):
            out["started"] = m.group(1)
        return out

    def release(self) -> None:
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        try:
            os.ftruncate(fd, 0)  # while still locked: nobody else is writing
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)

    def __enter__(self) -> PassLock:
        return self.acquire()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.release()
