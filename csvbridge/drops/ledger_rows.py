"""The ledger's tables, as SQL migrations and as the dataclasses their rows become.

The embedded ledger is a plain SQLite file (WAL mode, safe to open from several
processes); replicas on several machines share a PostgreSQL database with the same
tables (``PG_MIGRATIONS``).  Open it with ``sqlite3 csvbridge-state/ledger.sqlite`` (or
``psql``) to look inside:

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
                      ``done`` or ``failed`` (`csvbridge.report.FileState` values)
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

``events`` - the outcome of each conversion id of a file at the ``events`` sink (the
    tracking API), kept apart from ``conversions`` (the bulk API): an id one sink has is
    never skipped by the other.  ``file_id``, ``conversion_id``, ``outcome`` (``sent`` |
    ``rejected``), ``batch_no``, ``attempt``.

``cursors`` - where an API source (Commerce HQ) stands: ``source``, ``cursor`` (the
    source's own JSON), ``updated_at``.  Written after each page's file is in the inbox.

``claims`` - who is working on a file in a drop's ``processing/`` folder
    ``source``, ``path`` (relative to the drop), ``owner`` (host/boot/pid/start time of
    the process), ``claimed_at``.  A claimed file is resumed by another process only
    once its owner is gone: two daemons sharing a ledger never ship the same file twice.

``replicas`` - the processes working on this ledger (schema 4)
    ``owner`` (as in ``claims``), ``host``, ``pid``, ``started_at``, ``heartbeat_at``,
    ``expires_at``.  Renewed by a heartbeat; a replica whose row expired is gone (killed,
    machine lost): its claims and leases may be taken over.

``leases`` - named, expiring locks held by one replica (schema 4)
    ``name`` (``token:<hash>``: the right to ship with one API token), ``owner``,
    ``acquired_at``, ``expires_at``.  Only a hash of a token is ever stored.

``source_errors`` - the last errors of each source, for ``csvbridge status`` (schema 4)
    ``source``, ``at``, ``message`` (secret-free, as logged).

Example: ``SELECT id, name, status, attempts, datetime(started_at, 'unixepoch') FROM files
ORDER BY started_at DESC LIMIT 10;``
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from csvbridge.report import FileState

STATUSES: tuple[FileState, ...] = (FileState.PROCESSING, FileState.DONE, FileState.FAILED)
SCHEMA_VERSION = 4
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
    2: [
        """CREATE TABLE claims (
            source      TEXT NOT NULL,
            path        TEXT NOT NULL,
            owner       TEXT NOT NULL,
            claimed_at  REAL NOT NULL,
            PRIMARY KEY (source, path)
        )""",
    ],
    3: [
        """CREATE TABLE events (
            file_id        INTEGER NOT NULL REFERENCES files (id) ON DELETE CASCADE,
            conversion_id  TEXT    NOT NULL,
            outcome        TEXT    NOT NULL CHECK (outcome IN ('sent', 'rejected')),
            batch_no       INTEGER NOT NULL,
            attempt        INTEGER NOT NULL,
            PRIMARY KEY (file_id, conversion_id)
        ) WITHOUT ROWID""",
        """CREATE TABLE cursors (
            source      TEXT PRIMARY KEY,
            cursor      TEXT NOT NULL,
            updated_at  REAL NOT NULL
        )""",
    ],
    4: [
        """CREATE TABLE replicas (
            owner         TEXT PRIMARY KEY,
            host          TEXT NOT NULL,
            pid           INTEGER NOT NULL,
            started_at    REAL NOT NULL,
            heartbeat_at  REAL NOT NULL,
            expires_at    REAL NOT NULL
        )""",
        """CREATE TABLE leases (
            name         TEXT PRIMARY KEY,
            owner        TEXT NOT NULL,
            acquired_at  REAL NOT NULL,
            expires_at   REAL NOT NULL
        )""",
        """CREATE TABLE source_errors (
            source   TEXT NOT NULL,
            at       REAL NOT NULL,
            message  TEXT NOT NULL
        )""",
        "CREATE INDEX source_errors_source_at ON source_errors (source, at)",
        "CREATE INDEX files_status_finished ON files (status, finished_at)",
    ],
}

# PostgreSQL: the same tables at the current schema, created by one migration (there is
# no older PostgreSQL ledger to upgrade); later versions add their own entries.
PG_MIGRATIONS: dict[int, list[str]] = {
    1: [
        """CREATE TABLE files (
            id           BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
            source       TEXT    NOT NULL,
            name         TEXT    NOT NULL,
            size         BIGINT  NOT NULL,
            mtime        DOUBLE PRECISION NOT NULL,
            sha256       TEXT    NOT NULL,
            fingerprint  TEXT    NOT NULL UNIQUE,
            status       TEXT    NOT NULL CHECK (status IN ('processing', 'done', 'failed')),
            started_at   DOUBLE PRECISION NOT NULL,
            finished_at  DOUBLE PRECISION,
            rows         INTEGER,
            shipped      INTEGER,
            rejected     INTEGER,
            not_shipped  INTEGER,
            report_path  TEXT,
            attempts     INTEGER NOT NULL DEFAULT 1
        )""",
        "CREATE INDEX files_status_started ON files (status, started_at)",
        "CREATE INDEX files_started ON files (started_at)",
        "CREATE INDEX files_status_finished ON files (status, finished_at)",
        """CREATE TABLE batches (
            file_id      BIGINT  NOT NULL REFERENCES files (id) ON DELETE CASCADE,
            attempt      INTEGER NOT NULL,
            batch_no     INTEGER NOT NULL,
            accepted     INTEGER NOT NULL,
            rejected     INTEGER NOT NULL,
            recorded_at  DOUBLE PRECISION NOT NULL,
            PRIMARY KEY (file_id, attempt, batch_no)
        )""",
        """CREATE TABLE conversions (
            file_id        BIGINT  NOT NULL REFERENCES files (id) ON DELETE CASCADE,
            conversion_id  TEXT    NOT NULL,
            outcome        TEXT    NOT NULL CHECK (outcome IN ('accepted', 'rejected')),
            batch_no       INTEGER NOT NULL,
            attempt        INTEGER NOT NULL,
            PRIMARY KEY (file_id, conversion_id)
        )""",
        """CREATE TABLE claims (
            source      TEXT NOT NULL,
            path        TEXT NOT NULL,
            owner       TEXT NOT NULL,
            claimed_at  DOUBLE PRECISION NOT NULL,
            PRIMARY KEY (source, path)
        )""",
        """CREATE TABLE events (
            file_id        BIGINT  NOT NULL REFERENCES files (id) ON DELETE CASCADE,
            conversion_id  TEXT    NOT NULL,
            outcome        TEXT    NOT NULL CHECK (outcome IN ('sent', 'rejected')),
            batch_no       INTEGER NOT NULL,
            attempt        INTEGER NOT NULL,
            PRIMARY KEY (file_id, conversion_id)
        )""",
        """CREATE TABLE cursors (
            source      TEXT PRIMARY KEY,
            cursor      TEXT NOT NULL,
            updated_at  DOUBLE PRECISION NOT NULL
        )""",
        """CREATE TABLE replicas (
            owner         TEXT PRIMARY KEY,
            host          TEXT NOT NULL,
            pid           INTEGER NOT NULL,
            started_at    DOUBLE PRECISION NOT NULL,
            heartbeat_at  DOUBLE PRECISION NOT NULL,
            expires_at    DOUBLE PRECISION NOT NULL
        )""",
        """CREATE TABLE leases (
            name         TEXT PRIMARY KEY,
            owner        TEXT NOT NULL,
            acquired_at  DOUBLE PRECISION NOT NULL,
            expires_at   DOUBLE PRECISION NOT NULL
        )""",
        """CREATE TABLE source_errors (
            source   TEXT NOT NULL,
            at       DOUBLE PRECISION NOT NULL,
            message  TEXT NOT NULL
        )""",
        "CREATE INDEX source_errors_source_at ON source_errors (source, at)",
    ],
    2: [],
    3: [],
    4: [],
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
    status: FileState
    started_at: float
    finished_at: float | None
    rows: int | None
    shipped: int | None
    rejected: int | None
    not_shipped: int | None
    report_path: str | None
    attempts: int

    @classmethod
    def _from_row(cls, row: Mapping[str, Any]) -> FileEntry:
        values = {k: row[k] for k in row.keys()}  # noqa: SIM118 (sqlite3.Row has no items)
        values["status"] = FileState(values["status"])
        return cls(**{f.name: values[f.name] for f in fields(cls)})

    def as_dict(self) -> dict[str, Any]:
        out = {f.name: getattr(self, f.name) for f in fields(self)}
        out["status"] = self.status.value
        return out


@dataclass(frozen=True, slots=True)
class BatchEntry:
    """One row of ``batches``: a batch whose answer from the API was recorded."""

    attempt: int
    batch_no: int
    accepted: int
    rejected: int
    recorded_at: float


@dataclass(frozen=True, slots=True)
class ReplicaEntry:
    """One row of ``replicas``: a process working on this ledger, and whether it is
    still renewing its heartbeat (``alive``: its row has not expired)."""

    owner: str
    host: str
    pid: int
    started_at: float
    heartbeat_at: float
    expires_at: float
    alive: bool


@dataclass(frozen=True, slots=True)
class LeaseEntry:
    """One row of ``leases``."""

    name: str
    owner: str
    acquired_at: float
    expires_at: float
    alive: bool


@dataclass(frozen=True, slots=True)
class ClaimEntry:
    """One row of ``claims``: who works on which file in ``processing/``."""

    source: str
    path: str
    owner: str
    claimed_at: float


@dataclass(frozen=True, slots=True)
class ProgressEntry:
    """A file in progress: ids accepted so far over all attempts, and when the latest
    batch of the current attempt was recorded (``None`` before the first)."""

    file: FileEntry
    accepted: int
    rejected: int
    batches: int
    first_batch_at: float | None
    last_batch_at: float | None
    batch_accepted: int  # ids accepted by the batches of the current attempt


@dataclass(frozen=True, slots=True)
class SourceError:
    """One row of ``source_errors``."""

    source: str
    at: float
    message: str
