"""One pass over the drops, for cron (`run_once`); the daemon repeats it (`daemon.watch`).

For each configured source, a pass
1. checks the drop exists and its stage folders are real folders (a missing drop is an
   error of that source unless it says ``create_missing: true``);
2. resumes files left in ``processing/`` by a pass that is gone (oldest first; a file
   claimed by a process still alive is left to it);
3. lists the drop and takes the files that are complete: name matches ``include`` and
   not ``exclude``, old enough (``min_age_seconds``), size and mtime unchanged across
   ``stable_polls`` polls, and - if ``done_marker`` - announced by ``<name>.done`` or
   ``<stem>.done``; a name that cannot be handled safely (control characters, too long)
   is left in place with a warning naming it;
4. handles each (`filing.FileWork`): claim into ``processing/``, convert, ship, file
   away into ``done/`` or ``failed/`` with its report.

Sources are handled at once, ``parallel_sources`` at a time (`csvbridge.drops.parallel`),
each with its own destination when it has an ``api:`` section; sources sharing a token
share its budget.  A refused token of a source's own destination is an error of that
source; of the top-level destination, it stops the run (every source uses it).

Sources that are not folders become local drops first (`csvbridge.drops.inboxes`): a
Commerce HQ source pulls what changed since its cursor (kept in the ledger) into an
inbox, the embedded FTP drop's user homes are handled one by one; their files are
complete when they appear, so they are taken at once.  Remote drops keep one session
across polls (`Connections`).

A bad file never stops the pass: it goes to ``failed/`` with its report.  An error of a
source (unreachable, unwritable, a listing refused) is logged with its reason, counted
and shown by ``/healthz``, and the pass goes on with the other sources.  A failure of
the environment (disk full, a refused upload) leaves the file for a retry, exit 3.
Files go oldest first, and a file left unfinished holds back the newer ones of its
source, so an export that updates a conversion never overtakes the one creating it.
"""

from __future__ import annotations

import contextlib
import fnmatch
import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path

from csvbridge import progress as telemetry
from csvbridge.config import Settings, SourceSettings
from csvbridge.drops.filing import MARKER_SUFFIX, FileWork, marker_for, reason_of
from csvbridge.drops.inboxes import commercehq_inbox, ftp_homes, kind_of, pull_commercehq
from csvbridge.drops.ledger import open_ledger
from csvbridge.drops.lock import PassLock
from csvbridge.drops.outcome import FileOutcome, LeftForRetry, PassSummary, SourceResult
from csvbridge.drops.parallel import run_sources
from csvbridge.drops.replicas import Replica
from csvbridge.drops.stages import Stages, name_problem
from csvbridge.errors import ApiTerminalError, StopsRun
from csvbridge.filesystems import Connections, FileInfo, FileSystem, Skipped
from csvbridge.observe import Metrics
from csvbridge.progress import Telemetry
from csvbridge.report import FileState

log = logging.getLogger("csvbridge.drops")

SETTLE_SECONDS = 2.0  # one-shot passes: wait this long between the two stability polls


def _matches(name: str, patterns: list[str]) -> bool:
    return any(fnmatch.fnmatch(name, p) or fnmatch.fnmatch(name.lower(), p) for p in patterns)


class Runner:
    """Holds the ledger, metrics and per-source poll memory across passes."""

    def __init__(
        self,
        settings: Settings,
        *,
        stop: threading.Event | None = None,
        metrics: Metrics | None = None,
        progress: bool | None = False,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.settings = settings
        self.stop = stop or threading.Event()
        self.metrics = metrics or Metrics()
        self.progress = progress
        self.clock = clock
        password = settings.state.ledger_password
        self.ledger = open_ledger(
            settings.state.ledger, password=password.get_secret_value() if password else None
        )
        try:
            self.replica = Replica(self.ledger, settings.state, stop=self.stop).start()
        except BaseException:
            self.ledger.close()
            raise
        # source -> path -> (size, mtime, polls seen unchanged, when that count last moved)
        self.seen: dict[str, dict[str, tuple[int, float | None, int, float]]] = {}
        self.warned: set[tuple[str, str]] = set()  # (source, name) skipped with a warning
        self.last_error: str | None = None
        # source -> monotonic time a file seen but not taken yet could be ready (the
        # daemon polls again then, not a whole poll interval later)
        self.recheck: dict[str, float] = {}
        # one session per source across polls (SFTP/FTP keep their login while healthy)
        self.connections = Connections()

    def close(self) -> None:
        self.connections.close()
        self.replica.close()
        self.ledger.close()

    # ------------------------------------------------------------------ a pass

    def run_pass(self, *, settle: bool = True) -> PassSummary:
        """One pass over every source.  `settle`: poll twice (cron) instead of relying
        on the memory of earlier polls (daemon)."""
        started = time.monotonic()
        summary = PassSummary()
        if not self.settings.sources:
            summary.fatal = "no sources configured (add `sources:` to the config)"
        # sources at once, each its own files in order (drops/parallel.py)
        summary.sources.extend(
            run_sources(
                self.settings.sources,
                lambda source: self.run_source(source, settle=settle),
                self.settings.parallel_sources,
                self.stop,
            )
        )
        summary.seconds = time.monotonic() - started
        self.metrics.set("last_pass_duration_seconds", summary.seconds)
        self.metrics.set("last_pass_timestamp_seconds", self.clock())
        fields = {**summary.totals(), "seconds": round(summary.seconds, 3)}
        log.info(summary.describe(), extra={**fields, "exit_code": summary.exit_code})
        return summary

    def run_source(self, source: SourceSettings, *, settle: bool = True) -> SourceResult:
        """Everything a pass does for one source.  Any error of the source ends up in
        ``result.error`` with its reason (never a traceback); `StopsRun` errors go up."""
        result = SourceResult(source.name)
        self.recheck.pop(source.name, None)
        telemetry.current().source(source.name, "polling", kind=kind_of(source))
        try:
            for drop in self._drops_of(source, result):
                if self.stop.is_set() or result.unfinished:
                    break
                self._run_drop(drop, result, settle=settle)
        except StopsRun as exc:
            if not _own_destination(source, exc):
                raise  # a configuration fix, shared by every source: the run stops
            self._source_failed(source, result, exc, reason_of(exc))
        except LeftForRetry as exc:
            result.files.append(exc.outcome)
            self._log_file(exc.outcome)
            self._source_failed(source, result, exc, exc.outcome.describe())
        except Exception as exc:
            self._source_failed(source, result, exc, reason_of(exc))
        else:
            if not (result.unfinished or result.error):
                self.metrics.set("last_success_timestamp_seconds", self.clock(), source=source.name)
        state = "failing" if result.error else "idle"
        telemetry.current().source(source.name, state, result.error)
        return result

    def _drops_of(self, source: SourceSettings, result: SourceResult) -> list[SourceSettings]:
        """The local or remote folders to handle for `source`: itself for a drop; for a
        Commerce HQ source its inbox, after pulling into it (a failed pull is an error of
        the source, and what was pulled before it is still processed); for the embedded
        FTP drop each user's home."""
        kind = kind_of(source)
        if kind == "ftpserver":
            return ftp_homes(source)
        if kind != "commercehq":
            return [source]
        try:
            result.pulled = pull_commercehq(self.settings, source, self.ledger, self.stop)
            log.info("source %s: %s", source.name, result.pulled.describe())
        except StopsRun:
            raise
        except Exception as exc:  # 401/403 (SourceAuthError), retries used up...
            self._source_failed(source, result, exc, reason_of(exc))
        return [commercehq_inbox(self.settings, source)]

    def _run_drop(self, source: SourceSettings, result: SourceResult, *, settle: bool) -> None:
        """One folder: resume what is in processing/, then take the ready files."""
        with self.connections.lease(source) as fs:
            stages = Stages()
            stages.prepare(fs, create=source.create_missing)
            work = FileWork(
                self.settings.for_source(source),  # its own destination, if it has one
                self.ledger,
                fs,
                source,
                stages,
                self.stop,
                self.progress,
                replica=self.replica,
            )
            resumable = self._resumable(fs, source, stages, result)
            self.metrics.set("files", len(resumable), source=source.name, stage="processing")
            for info in resumable:
                if self.stop.is_set() or result.unfinished:
                    break
                self._handle(work, result, info, claimed=True)
            # a file not completely shipped is resumed first next time; newer files
            # wait for it, or their updates would be overwritten by its older data
            if not result.unfinished:
                ready = self._ready(fs, source, result, settle)
                self.metrics.set("files", len(ready), source=source.name, stage="ready")
                for info in ready:
                    if self.stop.is_set() or result.unfinished:
                        break
                    self._handle(work, result, info, claimed=False)

    def _source_failed(
        self, source: SourceSettings, result: SourceResult, exc: BaseException, reason: str
    ) -> None:
        # count first: whoever sees the unhealthy state must also see it counted
        self.metrics.inc("errors_total", source=source.name, kind=type(exc).__name__)
        result.error = reason
        self.last_error = f"{source.name}: {reason}"
        log.error(
            "source %s: %s", source.name, reason, extra={"source": source.name, "error": reason}
        )
        with contextlib.suppress(Exception):  # for `csvbridge status`; best effort
            self.ledger.note_error(source.name, reason)
        log.debug("source %s failed", source.name, exc_info=exc)

    def _handle(
        self, work: FileWork, result: SourceResult, info: FileInfo, *, claimed: bool
    ) -> None:
        tel = telemetry.current()
        tel.file_started(work.source.name, info.name, info.size)
        outcome = work.run(info, claimed=claimed)
        result.files.append(outcome)
        report = None
        if tel.keep_reports and outcome.report:  # for the status page's link
            try:
                report = work.fs.read_bytes(outcome.report)
            except Exception as exc:  # only a link lost: the file is filed
                log.debug("could not read back %s: %s", outcome.report, reason_of(exc))
        self._log_file(outcome, work.source.kind, report)

    def _log_file(self, f: FileOutcome, kind: str = "", report: bytes | None = None) -> None:
        kind = kind or self._kind_of(f.source)
        if f.state is not FileState.SKIPPED:
            status = "done" if f.state is FileState.DUPLICATE else f.state.value
            self.metrics.inc("files_processed_total", source=f.source, status=status)
            for outcome, n in (
                ("shipped", f.shipped_now),
                ("rejected", f.rejected),
                ("not_shipped", f.not_shipped),
            ):
                self.metrics.inc("objects_total", n, source=f.source, kind=kind, outcome=outcome)
            telemetry.current().file_finished(
                source=f.source, file=f.file, state=f.state.value, rows=f.rows,
                shipped=f.shipped, rejected=f.rejected, reason=f.reason, report=report,
            )  # fmt: skip
        level = logging.WARNING if f.state is FileState.PROCESSING else logging.INFO
        fields = {
            "source": f.source,
            "file": f.file,
            "status": f.state.value,
            "rows": f.rows,
            "shipped": f.shipped_now,
            "rejected": f.rejected,
            "not_shipped": f.not_shipped,
        }
        log.log(level, "%s", f.describe(), extra=fields)

    def _kind_of(self, name: str) -> str:
        kinds = {s.name: s.kind for s in self.settings.sources}
        return kinds.get(name, kinds.get(name.split("/", 1)[0], "conversions"))

    # ------------------------------------------------------------------ listing

    def _usable(self, source: SourceSettings, f: FileInfo, result: SourceResult) -> bool:
        """False (with a warning naming it, once) for a name that cannot be handled."""
        problem = name_problem(f.name)
        if problem is None:
            return True
        self._skip(source, result, f.name, problem, kind="UnsafeFileName")
        return False

    def _skip(
        self, source: SourceSettings, result: SourceResult, name: str, reason: str, *, kind: str
    ) -> None:
        """Account for an entry left where it is: a SKIPPED outcome every pass, a warning
        naming it the first time (then DEBUG, so a daemon does not flood its log)."""
        key = (source.name, name)
        first = key not in self.warned
        if first:
            self.warned.add(key)
            self.metrics.inc("errors_total", source=source.name, kind=kind)
        log.log(
            logging.WARNING if first else logging.DEBUG,
            "%s: %r left where it is: %s",
            source.name,
            name,
            reason,
        )
        result.files.append(FileOutcome(name, source.name, FileState.SKIPPED, reason=reason))

    def _listed(
        self, fs: FileSystem, folder: str, source: SourceSettings, result: SourceResult | None
    ) -> list[FileInfo]:
        """The regular files of `folder`; every entry the filesystem would not hand out
        (link, FIFO, device, socket, a name that could reach outside the drop) is
        accounted for in `result` with its kind and reason."""
        listing = fs.scan(folder)
        if result is not None:
            for entry in listing.skipped:
                self._skip_entry(source, result, entry)
        return listing.files

    def _skip_entry(self, source: SourceSettings, result: SourceResult, entry: Skipped) -> None:
        if entry.name.startswith("."):
            return  # hidden entries are never candidates, whatever they are
        kind = "NotRegularFile" if entry.kind != "file" else "UnsafeFileName"
        reason = entry.reason if entry.kind == "file" else f"{entry.kind}: {entry.reason}"
        self._skip(source, result, entry.name, reason, kind=kind)

    def _resumable(
        self, fs: FileSystem, source: SourceSettings, stages: Stages, result: SourceResult
    ) -> list[FileInfo]:
        files = self._listed(fs, stages.folder("processing"), source, result)
        files = [f for f in files if not f.name.startswith(".")]
        files = [f for f in files if self._usable(source, f, result)]
        return sorted(files, key=lambda f: (f.mtime or 0, f.name))

    def _ready(
        self, fs: FileSystem, source: SourceSettings, result: SourceResult, settle: bool
    ) -> list[FileInfo]:
        """Files of the drop that are complete, oldest first."""
        listing = self._listed(fs, "", source, result)
        names = {f.name for f in listing}
        memory = self.seen.setdefault(source.name, {})
        if settle and source.stable_polls > 0:
            first = {f.name: (f.size, f.mtime) for f in listing}
            self.stop.wait(min(SETTLE_SECONDS, source.poll_interval_seconds))
            listing = self._listed(fs, "", source, None)
            stable = {f.name for f in listing if first.get(f.name) == (f.size, f.mtime)}
        else:
            # A poll only counts as a stability poll when it comes at least as long after
            # the previous counted one as a cron pass waits between its two polls: the
            # daemon also polls on every watchdog wake-up (an append raises open, modify
            # and close events), and polls milliseconds apart prove nothing.
            spacing = min(SETTLE_SECONDS, source.poll_interval_seconds)
            polled = time.monotonic()
            stable = set()
            for f in listing:
                prev = memory.get(f.name)
                if prev and prev[:2] == (f.size, f.mtime):
                    count, since = prev[2], prev[3]
                    if polled - since >= spacing:
                        count, since = count + 1, polled
                else:
                    count, since = 0, polled
                memory[f.name] = (f.size, f.mtime, count, since)
                if count >= source.stable_polls:
                    stable.add(f.name)
            for gone in set(memory) - names:
                memory.pop(gone, None)
        now = self.clock()
        ready = []
        for f in listing:
            if f.name.startswith(".") or f.name.endswith((".part", ".tmp", MARKER_SUFFIX)):
                continue
            if not _matches(f.name, source.include) or _matches(f.name, source.exclude):
                continue
            if not self._usable(source, f, result):
                continue
            why = self._not_yet(f, source, stable, names, memory, now)
            if why:
                log.debug("%s: %r not taken yet: %s", source.name, f.name, why)
                if not settle:
                    self._recheck_at(source, f, memory.get(f.name), now)
                continue
            ready.append(f)
        return sorted(ready, key=lambda f: (f.mtime or 0, f.name))

    def _recheck_at(
        self,
        source: SourceSettings,
        f: FileInfo,
        seen: tuple[int, float | None, int, float] | None,
        now: float,
    ) -> None:
        """Note when `f` could be taken: its next stability poll is due and it is old
        enough (a file waiting for its done marker is woken by the marker's event)."""
        mono = at = time.monotonic()
        if seen is not None and seen[2] < source.stable_polls:
            at = max(at, seen[3] + min(SETTLE_SECONDS, source.poll_interval_seconds))
        if f.mtime is not None:
            at = max(at, mono + source.min_age_seconds - (now - f.mtime))
        if at > mono:  # else it waits for something no clock brings (its marker)
            self.recheck[source.name] = min(self.recheck.get(source.name, at), at)

    @staticmethod
    def _not_yet(
        f: FileInfo,
        source: SourceSettings,
        stable: set[str],
        names: set[str],
        memory: dict[str, tuple[int, float | None, int, float]],
        now: float,
    ) -> str | None:
        """Why a complete-looking file is not taken on this poll (None: take it); logged
        at DEBUG, so "why is my file not picked up?" has an answer (clock skew, a writer
        still appending, a marker never sent)."""
        if f.name not in stable:
            polls = memory[f.name][2] if f.name in memory else 0
            return f"size or mtime still changing ({polls} of {source.stable_polls} stable polls)"
        if f.mtime is not None and now - f.mtime < source.min_age_seconds:
            return f"{now - f.mtime:.0f} s old, min_age_seconds is {source.min_age_seconds:g}"
        if source.done_marker and marker_for(f.name, names) is None:
            return f"waiting for its done marker ({f.name}{MARKER_SUFFIX} or <stem>{MARKER_SUFFIX})"
        return None


def _own_destination(source: SourceSettings, exc: StopsRun) -> bool:
    """True when `exc` is the API refusing a source's *own* destination (its ``api:``
    section: another site or token): an error of that source, not of the run."""
    return source.api is not None and isinstance(exc, ApiTerminalError)


# ---------------------------------------------------------------------- entry point


def run_once(settings: Settings, *, progress: bool | None = False) -> PassSummary:
    """``csvbridge run``: one locked pass over every source (for cron).  Progress is shown
    as it goes (`progress`: bars, else log lines); with ``metrics.textfile`` the pass's
    metrics are written there for node_exporter at the end."""
    with PassLock(settings.state.lock_file):
        metrics = Metrics(process=False)
        every = settings.logging.progress_seconds
        with telemetry.showing(tty=progress, every=every, telemetry=Telemetry(metrics)):
            runner = Runner(settings, progress=progress, metrics=metrics)
            try:
                return runner.run_pass(settle=True)
            except StopsRun as exc:  # 401/403, a wrong URL or mapping: a configuration fix
                return PassSummary(fatal=str(exc))
            finally:
                runner.close()
                if settings.metrics.textfile is not None:
                    _write_textfile(metrics, settings.metrics.textfile)


def _write_textfile(metrics: Metrics, path: Path) -> None:
    """The pass is done whether or not its metrics can be written: a failure is logged."""
    try:
        metrics.write_textfile(path)
    except OSError as exc:
        log.warning("cannot write the metrics textfile %s: %s", path, reason_of(exc))
