"""One file of a drop, from claim to filed away: claim -> fetch -> deliver -> file away.

The rule every step keeps: a file ends in ``done/`` (or deleted on success), in
``failed/`` with a report saying why, or stays where it is (in ``processing/`` once
claimed) for a retry when the *environment* failed - disk full in the work folder or
the ledger, the drop refusing a write, a feed upload refused.  Such a failure is never
blamed on the file, and the ledger is never left contradicting the drop: the ledger row
is closed before the file is moved, and a file found in ``processing/`` whose row is
already closed is simply filed where its report already is.
"""

from __future__ import annotations

import logging
import os
import posixpath
import shutil
import threading
from dataclasses import dataclass
from pathlib import Path

from csvbridge.config import Settings, SourceSettings
from csvbridge.drops.ledger import FileEntry, LedgerStore, make_fingerprint, sha256_file
from csvbridge.drops.outcome import FileOutcome, LeftForRetry
from csvbridge.drops.replicas import Replica, describe_owner, token_lease
from csvbridge.drops.stages import REPORT_SUFFIX, Stages
from csvbridge.errors import CsvBridgeError, StopsRun, TransientError
from csvbridge.files import open_private
from csvbridge.filesystems import (
    FileInfo,
    FileSystem,
    LocalFileSystem,
    NotRegularFile,
    normalize,
    work_name,
)
from csvbridge.filesystems.remote import describe
from csvbridge.pipeline import Outcome, process_file
from csvbridge.report import FileState, Report

log = logging.getLogger("csvbridge.drops")

MARKER_SUFFIX = ".done"


def marker_for(name: str, names: set[str]) -> str | None:
    """The ``<name>.done`` or ``<stem>.done`` marker announcing `name`, if present."""
    stem = name.split(".", 1)[0]
    for candidate in (name + MARKER_SUFFIX, stem + MARKER_SUFFIX):
        if candidate in names:
            return candidate
    return None


def reason_of(exc: BaseException) -> str:
    """One secret-free line saying why: an OSError's errno text and path, or the error."""
    if isinstance(exc, OSError) and exc.strerror:
        where = f" ({exc.filename})" if exc.filename else ""
        return f"{exc.strerror}{where}"
    if isinstance(exc, CsvBridgeError):
        return str(exc)
    return describe(exc)


@dataclass
class FileWork:
    """What handling a file of one source needs; `run` handles one file."""

    settings: Settings
    ledger: LedgerStore
    fs: FileSystem
    source: SourceSettings
    stages: Stages
    stop: threading.Event
    progress: bool | None = False
    replica: Replica | None = None  # shipping needs its token's lease among replicas

    def run(self, info: FileInfo, *, claimed: bool) -> FileOutcome:
        """Handle one file; raises `LeftForRetry` when the environment failed (the file
        stays), and `StopsRun` errors unchanged.  With replicas, a file shipped to the
        API is only taken while this replica holds the lease of its token."""
        api = getattr(self.source, "api", None) or self.settings.api
        lease = token_lease(api) if self.replica and "api" in self.source.sinks else None
        if lease is None or self.replica is None:
            return self._run(info, claimed=claimed)
        try:
            holder = self.replica.hold(lease)
        except Exception as exc:
            raise self._retry(info.name, reason_of(exc)) from None
        if holder is not None:
            return FileOutcome(
                info.name,
                self.source.name,
                FileState.SKIPPED,
                reason=f"another replica ships with this API token ({describe_owner(holder)})",
            )
        try:
            return self._run(info, claimed=claimed)
        finally:
            self.replica.give_back(lease)

    def _run(self, info: FileInfo, *, claimed: bool) -> FileOutcome:
        name, source = info.name, self.source.name
        path = info.path if claimed else self._claim(info)
        if path is None:
            return FileOutcome(name, source, FileState.SKIPPED, reason="claimed by another pass")
        holder = self.ledger.claim(source, path) if claimed else None
        if holder is not None:
            log.info(
                "%s/%s: being processed by pid %d on %s", source, name, holder.pid, holder.host
            )
            return FileOutcome(
                name,
                source,
                FileState.SKIPPED,
                reason=f"being processed by pid {holder.pid} on {holder.host}",
            )
        base = Path(self.settings.state.work_dir)
        work = base / work_name(source) / work_name(path)
        try:
            base.mkdir(parents=True, exist_ok=True, mode=0o700)
            shutil.rmtree(work, ignore_errors=True)
            work.mkdir(parents=True, mode=0o700)
            local = work / "source" / work_name(name)
            local.parent.mkdir(mode=0o700)
            self.fs.get(path, local)
        except NotRegularFile as exc:  # a link or FIFO swapped in after the listing
            shutil.rmtree(work, ignore_errors=True)
            return self._not_a_file(info, path, claimed, exc)
        except Exception as exc:
            shutil.rmtree(work, ignore_errors=True)
            raise self._retry(name, f"cannot fetch it: {reason_of(exc)}") from None
        try:
            return self._deliver(path, name, local, work, resumed=claimed)
        finally:
            shutil.rmtree(work, ignore_errors=True)

    # -- steps ----------------------------------------------------------------------

    def _not_a_file(
        self, info: FileInfo, path: str, claimed: bool, exc: NotRegularFile
    ) -> FileOutcome:
        """A skip, not a failure: what was listed as a file is now a link, a FIFO or a
        device (swapped in after the listing).  Nothing is read through it; an entry this
        pass moved into processing/ goes back where it was found, when that name is free."""
        if not claimed and not self.fs.exists(info.path):
            try:
                self.fs.rename(path, info.path)
            except Exception as back:  # best effort: it is skipped wherever it is
                log.debug("could not move %r back: %s", info.name, reason_of(back))
        self.ledger.release(self.source.name, path)
        reason = f"not a regular file any more: {reason_of(exc)}"
        log.warning("%s: %r skipped: %s", self.source.name, info.name, reason)
        return FileOutcome(info.name, self.source.name, FileState.SKIPPED, reason=reason)

    def _claim(self, info: FileInfo) -> str | None:
        """Move a ready file into processing/, claimed in the ledger first so no other
        process resumes it; None if another process took it first."""
        taken = self._names(self.stages.folder("processing"))
        path = self.stages.stage_path("processing", info.name, taken)
        if self.ledger.claim(self.source.name, path) is not None:
            return None
        try:
            self.fs.rename(info.path, path)
        except FileNotFoundError:
            self.ledger.release(self.source.name, path)
            return None
        except BaseException:
            self.ledger.release(self.source.name, path)
            raise
        if self.source.done_marker:
            marker = marker_for(info.name, {f.name for f in self.fs.list("")})
            if marker:
                self.fs.remove(marker)
        return path

    def _deliver(
        self, path: str, name: str, local: Path, work: Path, *, resumed: bool
    ) -> FileOutcome:
        try:
            sha, size = sha256_file(local), local.stat().st_size
            known = self.ledger.lookup(make_fingerprint(sha, size))
            if known is not None and resumed and self._filed_but_not_moved(path, name, known):
                return self._complete(path, name, known)
            if known is not None and known.status is FileState.DONE:
                return self._duplicate(path, name, known)
            entry = self.ledger.begin(self.source.name, name, size, local.stat().st_mtime, sha)
            before = self.ledger.accepted_ids(entry.id)
            events_before = self.ledger.sent_event_ids(entry.id)
        except (StopsRun, LeftForRetry):
            raise
        except Exception as exc:  # the ledger or the drop failed, not the file
            raise self._retry(name, reason_of(exc)) from None
        try:
            outcome = self._convert_and_ship(local, name, work, entry.id, before, events_before)
        except (StopsRun, LeftForRetry):
            raise
        except (TransientError, OSError) as exc:  # disk full, ledger gone, feed refused...
            raise self._retry(name, reason_of(exc)) from None
        except Exception as exc:  # a bad file (or a bug): never blocks the files behind it
            reason = reason_of(exc)
            if not isinstance(exc, CsvBridgeError):
                log.debug("unexpected error on %s", name, exc_info=True)
                reason = f"internal error: {reason}"
            outcome = Outcome(
                Report(file=name, kind=self.source.kind, fatal=reason), FileState.FAILED
            )
        return self._file_away(path, name, outcome, entry)

    def _convert_and_ship(
        self,
        local: Path,
        name: str,
        work: Path,
        file_id: int,
        before: set[str],
        events_before: set[str],
    ) -> Outcome:
        def on_accepted(batch_no: int, accepted: list[str], rejected: list[str]) -> None:
            self.ledger.record_batch(file_id, batch_no, accepted, rejected)

        def on_events(batch_no: int, sent: list[str], rejected: list[str]) -> None:
            self.ledger.record_events(file_id, batch_no, sent, rejected)

        outcome = process_file(
            local,
            work / "convert",
            self.settings.model_copy(update={"convert": self.source.convert}),
            name=name,
            kind=self.source.kind,
            sinks=list(self.source.sinks),
            stop=self.stop,
            progress=self.progress,
            accepted_before=before,
            on_accepted=on_accepted,
            events_before=events_before,
            on_events=on_events,
        )
        if "api" in self.source.sinks:
            outcome.report.shipped_by_earlier_attempts = len(before)
        return outcome

    def _filed_but_not_moved(self, path: str, name: str, known: FileEntry) -> bool:
        """True for a file resumed from processing/ whose ledger row was closed and its
        report written, but which a failure kept from being moved (or deleted)."""
        if known.status not in (FileState.DONE, FileState.FAILED) or known.finished_at is None:
            return False
        if (known.source, known.name) != (self.source.name, name):
            return False
        if known.report_path is None:  # on_success: delete was interrupted
            return known.status is FileState.DONE and self.source.on_success == "delete"
        dest = known.report_path[: -len(REPORT_SUFFIX)]
        return self.fs.exists(known.report_path) and not self.fs.exists(dest)

    def _complete(self, path: str, name: str, known: FileEntry) -> FileOutcome:
        """Finish filing a file exactly as its ledger row and report already say."""
        moved_to = None
        if known.report_path is None:
            self.fs.remove(path)
        else:
            moved_to = known.report_path[: -len(REPORT_SUFFIX)]
            self.fs.rename(path, moved_to)
        self.ledger.release(self.source.name, path)
        log.info("%s: filed away as the ledger recorded it (%s)", name, known.status.value)
        return FileOutcome(
            name,
            self.source.name,
            known.status,
            rows=known.rows or 0,
            shipped=known.shipped or 0,
            rejected=known.rejected or 0,
            moved_to=moved_to,
            report=known.report_path,
        )

    def _duplicate(self, path: str, name: str, known: FileEntry) -> FileOutcome:
        """Content already done under this or another name: filed away, not sent again."""
        report = Report(file=name, kind=self.source.kind)
        report.duplicate_of = f"{known.source}/{known.name} (ledger #{known.id})"
        log.warning(
            "%s has the same content as %s, processed already: not sent again", name, known.name
        )
        out = self._file_away(path, name, Outcome(report, FileState.DUPLICATE), None)
        out.reason = f"same content as {report.duplicate_of}"
        return out

    def _file_away(
        self, path: str, name: str, outcome: Outcome, entry: FileEntry | None
    ) -> FileOutcome:
        """Report (and rejects) into done/ or failed/, close the ledger row, move the file.

        Each step that fails leaves the file in processing/ for a retry, and nothing
        behind that contradicts it: the report is removed again if the ledger cannot be
        written; once the row is closed, the next pass only completes the move."""
        r = outcome.report
        before = r.shipped_by_earlier_attempts
        out = FileOutcome(
            name,
            self.source.name,
            outcome.state,
            rows=r.rows_read,
            shipped=r.objects_shipped,
            shipped_now=r.objects_shipped - before,
            rejected=r.objects_rejected + r.objects_rejected_by_api,
            not_shipped=r.objects_not_shipped,
            reason=outcome.reason if outcome.state is FileState.FAILED else None,
        )
        if outcome.state is FileState.PROCESSING:
            out.reason = (
                r.outputs.get("shipment_stopped")
                or r.outputs.get("events_stopped")
                or "not everything was shipped yet"
            )
            return out  # stays in processing/ until everything is shipped
        stage = "failed" if outcome.state is FileState.FAILED else "done"
        delete = stage == "done" and self.source.on_success == "delete"
        try:
            taken = self._names(self.stages.folder(stage))
            dest, report_path, rejects_path = self.stages.stage_paths(stage, name, taken)
            written: list[str] = []
            if not delete:
                self._write(report_path, r.to_json())
                written.append(report_path)
                if outcome.rejects is not None and outcome.rejects.exists():
                    self._write(rejects_path, outcome.rejects)
                    written.append(rejects_path)
        except Exception as exc:
            raise self._retry(name, f"cannot write its report: {reason_of(exc)}") from None
        if entry is not None:
            try:
                self.ledger.finish(
                    entry.id,
                    FileState.FAILED if stage == "failed" else FileState.DONE,
                    rows=r.rows_read,
                    shipped=out.shipped,
                    rejected=out.rejected,
                    not_shipped=out.not_shipped,
                    report_path=None if delete else report_path,
                )
            except Exception as exc:
                for p in written:
                    self._forget(p)
                raise self._retry(name, reason_of(exc)) from None
        try:
            if delete:
                self.fs.remove(path)
            else:
                self.fs.rename(path, dest)
        except Exception as exc:
            raise self._retry(name, f"cannot move it to {stage}/: {reason_of(exc)}") from None
        self.ledger.release(self.source.name, path)
        out.moved_to = None if delete else dest
        out.report = None if delete else report_path
        return out

    # -- helpers --------------------------------------------------------------------

    def _names(self, folder: str) -> set[str]:
        """Every name taken in `folder`, links and FIFOs included: a new name must never
        land on (and replace) anything already there."""
        listing = self.fs.scan(folder)
        return {e.name for e in listing.entries} | {e.name for e in listing.skipped}

    def _retry(self, name: str, reason: str) -> LeftForRetry:
        return LeftForRetry(
            FileOutcome(name, self.source.name, FileState.PROCESSING, reason=reason)
        )

    def _write(self, rel: str, data: bytes | Path) -> None:
        """Put a report or rejects file into the drop.  On a local drop: created 0600
        (they hold customer data) under a temporary name opened without following links,
        then renamed into place, so nothing planted at that name is ever written through."""
        if not isinstance(self.fs, LocalFileSystem):
            if isinstance(data, Path):
                self.fs.put(data, rel)
            else:
                self.fs.write_bytes(rel, data)
            return
        dest = self.fs.root / normalize(rel)
        part = dest.with_name(f".{dest.name}.{os.getpid()}.part")
        try:
            with open_private(part) as out:
                if isinstance(data, Path):
                    with open(data, "rb") as src:
                        shutil.copyfileobj(src, out, 1 << 20)
                else:
                    out.write(data)
            os.replace(part, dest)
        finally:
            part.unlink(missing_ok=True)

    def _forget(self, rel: str) -> None:
        try:
            self.fs.remove(rel)
        except Exception as exc:  # best effort: the pass already reports the real failure
            log.warning("could not remove %s again: %s", posixpath.basename(rel), reason_of(exc))
