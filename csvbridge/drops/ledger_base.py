"""The ledger interface (`LedgerStore`) and the SQL both backends share (`SqlLedger`).

Why one class for two databases: every rule of the ledger (a file never processed twice,
an accepted id never downgraded, a claim taken over only from an owner that is gone) is
written once, in SQL both SQLite and PostgreSQL understand; a backend only says how to
open a transaction, what time it is and how to lock a row.  One contract test suite runs
on both (tests/test_ledger_contract.py).
"""

from __future__ import annotations

import time
from typing import Any, Protocol, runtime_checkable

from csvbridge.drops.ledger_leases import LeaseRules
from csvbridge.drops.ledger_rows import (
    STATUSES,
    BatchEntry,
    ClaimEntry,
    FileEntry,
    LeaseEntry,
    ProgressEntry,
    ReplicaEntry,
    SourceError,
    make_fingerprint,
)
from csvbridge.drops.lock import Owner
from csvbridge.errors import TerminalError, TransientError
from csvbridge.report import FileState

ERRORS_KEPT = 20  # per source, in source_errors


class AlreadyProcessed(TerminalError):
    """`begin` was asked to start a file whose content is already ``done``."""

    def __init__(self, entry: FileEntry) -> None:
        super().__init__(
            "file content was already processed",
            file=entry.name,
            source=entry.source,
            file_id=entry.id,
        )
        self.entry = entry


class LedgerError(TransientError):
    """The ledger cannot be read or written (disk full, I/O error, read-only, busy, the
    database server unreachable).

    A failure of the environment, not of any file: the file being handled stays where it
    is for a retry, and the pass stops (every file needs the ledger)."""


@runtime_checkable
class LedgerStore(Protocol):
    """What the runner, the filing, the replicas and ``csvbridge status`` need from a
    ledger.  `SqliteLedger` and `PostgresLedger` implement it."""

    location: str  # for humans: a path, or a URL without its password

    def close(self) -> None: ...
    @property
    def schema_version(self) -> int: ...

    # files and progress
    def lookup(self, fingerprint: str) -> FileEntry | None: ...
    def get(self, file_id: int) -> FileEntry: ...
    def begin(self, source: str, name: str, size: int, mtime: float, sha256: str) -> FileEntry: ...
    def finish(self, file_id: int, status: FileState, **counts: Any) -> FileEntry: ...
    def record_batch(
        self, file_id: int, batch_no: int, accepted_ids: list[str], rejected_ids: list[str]
    ) -> None: ...
    def record_events(
        self, file_id: int, batch_no: int, sent_ids: list[str], rejected_ids: list[str]
    ) -> None: ...
    def accepted_ids(self, file_id: int) -> set[str]: ...
    def rejected_ids(self, file_id: int) -> set[str]: ...
    def sent_event_ids(self, file_id: int) -> set[str]: ...
    def batches(self, file_id: int) -> list[BatchEntry]: ...
    def get_cursor(self, source: str) -> str | None: ...
    def set_cursor(self, source: str, cursor: str) -> None: ...

    # claims, replicas, leases
    def claim(self, source: str, path: str, owner: Owner | None = None) -> Owner | None: ...
    def release(self, source: str, path: str) -> None: ...
    def register_replica(self, owner: Owner, ttl: float) -> None: ...
    def heartbeat(self, owner: Owner, ttl: float) -> tuple[bool, set[str]]: ...
    def unregister_replica(self, owner: Owner) -> None: ...
    def acquire_lease(self, name: str, owner: Owner, ttl: float) -> str | None: ...
    def release_lease(self, name: str, owner: Owner) -> None: ...

    # inspection and upkeep
    def files(self, status: FileState | None = None, limit: int = 100) -> list[FileEntry]: ...
    def stats(self) -> dict[str, Any]: ...
    def counts_by_source(self) -> dict[str, dict[str, int]]: ...
    def in_progress(self) -> list[ProgressEntry]: ...
    def claims(self) -> list[ClaimEntry]: ...
    def replicas(self) -> list[ReplicaEntry]: ...
    def leases(self) -> list[LeaseEntry]: ...
    def note_error(self, source: str, message: str) -> None: ...
    def last_errors(self, per_source: int = 3) -> list[SourceError]: ...
    def prune(self, finished_before: float) -> int: ...


class SqlLedger(LeaseRules):
    """The ledger's rules in SQL (``?`` placeholders; a backend adapts them).

    A backend provides the hooks of `Backend` (``csvbridge.drops.ledger_leases``); the
    claims, replicas and leases rules come from `LeaseRules`."""

    @property
    def schema_version(self) -> int:
        return int(self._read("SELECT MAX(version) FROM schema_version")[0][0])

    # -- files ------------------------------------------------------------------------

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
            row = c.execute(
                f"SELECT * FROM files WHERE fingerprint = ?{self._for_update}", (fp,)
            ).fetchone()
            if row is None:
                row = c.execute(
                    "INSERT INTO files (source, name, size, mtime, sha256, fingerprint, "
                    "status, started_at, attempts) VALUES (?, ?, ?, ?, ?, ?, 'processing', ?, 1) "
                    "ON CONFLICT (fingerprint) DO NOTHING RETURNING id",
                    (source, name, size, mtime, sha256.lower(), fp, now),
                ).fetchone()
                if row is None:  # another replica inserted it since: a busy retry
                    raise LedgerError("the file was begun by another replica", file=name)
                file_id = row[0]
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
        report_path: Any = None,
    ) -> FileEntry:
        """Close the current attempt of a ``processing`` file as ``done`` or ``failed``."""
        if status not in (FileState.DONE, FileState.FAILED):
            raise ValueError(f"finish status must be done or failed, not {status!r}")
        with self._write() as c:
            row = c.execute(
                f"SELECT status FROM files WHERE id = ?{self._for_update}", (file_id,)
            ).fetchone()
            if row is None:
                raise KeyError(f"no file with id {file_id} in the ledger")
            if row[0] != "processing":
                raise ValueError(f"file {file_id} is {row[0]}, not processing")
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

    # -- progress ---------------------------------------------------------------------

    def _attempt(self, c: Any, file_id: int) -> int:
        row = c.execute("SELECT attempts FROM files WHERE id = ?", (file_id,)).fetchone()
        if row is None:
            raise KeyError(f"no file with id {file_id} in the ledger")
        return int(row[0])

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
            attempt = self._attempt(c, file_id)
            accepted = list(dict.fromkeys(accepted_ids))
            accepted_set = set(accepted)
            rejected = [i for i in dict.fromkeys(rejected_ids) if i not in accepted_set]
            self._outcomes(c, "conversions", "accepted", file_id, batch_no, attempt, accepted)
            self._outcomes(c, "conversions", "rejected", file_id, batch_no, attempt, rejected)
            c.execute(
                "INSERT INTO batches "
                "(file_id, attempt, batch_no, accepted, rejected, recorded_at) "
                "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (file_id, attempt, batch_no) DO UPDATE "
                "SET accepted = excluded.accepted, rejected = excluded.rejected, "
                "recorded_at = excluded.recorded_at",
                (file_id, attempt, batch_no, len(accepted), len(rejected), time.time()),
            )

    @staticmethod
    def _outcomes(
        c: Any, table: str, outcome: str, file_id: int, batch_no: int, attempt: int, ids: list[str]
    ) -> None:
        """Upsert ids with `outcome`; the good outcome (accepted/sent) is never downgraded,
        a rejection is only refreshed while the id is still rejected."""
        if not ids:
            return
        good = outcome != "rejected"
        keep = f"<> '{outcome}'" if good else "= 'rejected'"
        c.executemany(
            f"INSERT INTO {table} (file_id, conversion_id, outcome, batch_no, attempt) "
            f"VALUES (?, ?, '{outcome}', ?, ?) ON CONFLICT (file_id, conversion_id) DO UPDATE "
            f"SET outcome = excluded.outcome, batch_no = excluded.batch_no, "
            f"attempt = excluded.attempt WHERE {table}.outcome {keep}",
            [(file_id, i, batch_no, attempt) for i in ids],
        )

    def record_events(
        self, file_id: int, batch_no: int, sent_ids: list[str], rejected_ids: list[str]
    ) -> None:
        """Record the tracking API's answer to one request of the ``events`` sink (one
        transaction), before the next request: after a kill -9 only the request in flight
        is sent again.  An id once sent stays sent."""
        with self._write() as c:
            attempt = self._attempt(c, file_id)
            sent = list(dict.fromkeys(sent_ids))
            sent_set = set(sent)
            rejected = [i for i in dict.fromkeys(rejected_ids) if i not in sent_set]
            self._outcomes(c, "events", "sent", file_id, batch_no, attempt, sent)
            self._outcomes(c, "events", "rejected", file_id, batch_no, attempt, rejected)

    def sent_event_ids(self, file_id: int) -> set[str]:
        """Ids of this file the events sink delivered, over all attempts."""
        rows = self._read(
            "SELECT conversion_id FROM events WHERE file_id = ? AND outcome = 'sent'",
            (file_id,),
        )
        return {r[0] for r in rows}

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

    # -- API sources ------------------------------------------------------------------

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

    # -- inspection -------------------------------------------------------------------

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

    def counts_by_source(self) -> dict[str, dict[str, int]]:
        """Files per source and status."""
        out: dict[str, dict[str, int]] = {}
        for source, status, n in self._read(
            "SELECT source, status, COUNT(*) FROM files GROUP BY source, status"
        ):
            out.setdefault(source, {s.value: 0 for s in STATUSES})[status] = int(n)
        return out

    def in_progress(self) -> list[ProgressEntry]:
        """Every file still ``processing``, with its recorded progress."""
        out = []
        for entry in self.files(FileState.PROCESSING, limit=1000):
            counts = dict(
                (o, int(n))
                for o, n in self._read(
                    "SELECT outcome, COUNT(*) FROM conversions WHERE file_id = ? GROUP BY outcome",
                    (entry.id,),
                )
            )
            b = self._read(
                "SELECT COUNT(*), MIN(recorded_at), MAX(recorded_at), COALESCE(SUM(accepted), 0) "
                "FROM batches WHERE file_id = ? AND attempt = ?",
                (entry.id, entry.attempts),
            )[0]
            out.append(
                ProgressEntry(
                    entry,
                    counts.get("accepted", 0),
                    counts.get("rejected", 0),
                    int(b[0]),
                    None if b[1] is None else float(b[1]),
                    None if b[2] is None else float(b[2]),
                    int(b[3]),
                )
            )
        return out

    def stats(self) -> dict[str, Any]:
        """Totals for ``csvbridge status`` and for a human glancing at the ledger."""
        by_status = {s.value: 0 for s in STATUSES}
        for status, n in self._read("SELECT status, COUNT(*) FROM files GROUP BY status"):
            by_status[status] = int(n)
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
            "files_resumed": int(totals[5]),
            "rows": int(totals[0]),
            "shipped": int(totals[1]),
            "rejected": int(totals[2]),
            "not_shipped": int(totals[3]),
            "last_done_at": None if totals[4] is None else float(totals[4]),
            "batches_recorded": int(progress),
            "schema_version": self.schema_version,
            "path": self.location,
        }

    def note_error(self, source: str, message: str) -> None:
        """Remember an error of `source` (already secret-free) for ``csvbridge status``;
        only the latest `ERRORS_KEPT` per source are kept."""
        with self._write() as c:
            c.execute(
                "INSERT INTO source_errors (source, at, message) VALUES (?, ?, ?)",
                (source, time.time(), message[:2000]),
            )
            c.execute(
                "DELETE FROM source_errors WHERE source = ? AND at < (SELECT at FROM "
                "source_errors WHERE source = ? ORDER BY at DESC LIMIT 1 OFFSET ?)",
                (source, source, ERRORS_KEPT - 1),
            )

    def last_errors(self, per_source: int = 3) -> list[SourceError]:
        """The latest errors of each source, newest first."""
        rows = self._read("SELECT source, at, message FROM source_errors ORDER BY at DESC")
        seen: dict[str, int] = {}
        out = []
        for source, at, message in rows:
            seen[source] = seen.get(source, 0) + 1
            if seen[source] <= per_source:
                out.append(SourceError(source, float(at), message))
        return out

    def prune(self, finished_before: float) -> int:
        """Retention: drop the per-conversion (and per-event, per-batch) rows of files
        ``done`` before `finished_before`; returns the conversion rows removed.

        The ``files`` row stays, so the same content is still recognised as processed.
        Failed and processing files keep their progress: they may be resumed."""
        old = "SELECT id FROM files WHERE status = 'done' AND finished_at < ?"
        with self._write() as c:
            gone = c.execute(
                f"DELETE FROM conversions WHERE file_id IN ({old}) RETURNING file_id",
                (finished_before,),
            ).fetchall()
            c.execute(f"DELETE FROM events WHERE file_id IN ({old})", (finished_before,))
            c.execute(f"DELETE FROM batches WHERE file_id IN ({old})", (finished_before,))
        return len(gone)
