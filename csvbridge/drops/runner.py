"""Drops, unattended: one pass for cron (`run_once`) or a long-lived daemon (`watch`).

For each configured source, a pass
1. resumes files left in ``processing/`` by a pass that died (oldest first);
2. lists the drop and takes the files that are complete: name matches ``include`` and
   not ``exclude``, old enough (``min_age_seconds``), size and mtime unchanged across
   ``stable_polls`` polls, and — if ``done_marker`` — announced by ``<name>.done`` or
   ``<stem>.done``;
3. claims each by renaming it into ``processing/`` (on the drop itself, so a crash leaves
   it visibly there), downloads it, and looks its content hash up in the ledger: a file
   already processed is filed away without being sent again;
4. converts and ships it (`pipeline.process_file`), recording every batch the API
   answered in the ledger;
5. files it away: ``done/`` (or deleted, if ``on_success: delete``), or ``failed/`` with
   ``<name>.report.json`` and the rejected rows ``<name>.rejects.csv`` beside it.  A file
   whose objects could not all be shipped yet (API down, stop requested) stays in
   ``processing/`` and is resumed first next time.

A bad file never stops the pass: it goes to ``failed/`` with its report, and the files
behind it are processed.  Files go oldest first, so an export that updates a conversion
never overtakes the export that created it.
"""

from __future__ import annotations

import fnmatch
import logging
import shutil
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from csvbridge.config import Settings, SourceSettings
from csvbridge.drops.ledger import Ledger, PassLock, Stages, make_fingerprint, sha256_file
from csvbridge.errors import (
    ApiTerminalError,
    ConfigError,
    CsvBridgeError,
    TerminalError,
    TransientError,
)
from csvbridge.filesystems import FileInfo, FileSystem, filesystem_for
from csvbridge.observe import Metrics, MetricsServer
from csvbridge.pipeline import Outcome, process_file
from csvbridge.report import Report

log = logging.getLogger(__name__)

MARKER_SUFFIX = ".done"
SETTLE_SECONDS = 2.0  # one-shot passes: wait this long between the two stability polls
STOP_CHECK_SECONDS = 0.2  # the idle daemon looks at its stop event this often


@dataclass
class SourceResult:
    name: str
    files: list[dict[str, Any]] = field(default_factory=list)
    error: str | None = None  # the source could not be reached / used


@dataclass
class PassSummary:
    """One pass over every source: what happened, and the exit code cron should see."""

    sources: list[SourceResult] = field(default_factory=list)
    seconds: float = 0.0
    fatal: str | None = None

    def _files(self) -> list[dict[str, Any]]:
        return [f for s in self.sources for f in s.files]

    @property
    def exit_code(self) -> int:
        if self.fatal:
            return 2
        if any(s.error for s in self.sources) or any(
            f["status"] == "incomplete" for f in self._files()
        ):
            return 3
        if any(f["status"] == "failed" for f in self._files()):
            return 1
        return 0

    def totals(self) -> dict[str, int]:
        files = self._files()
        return {
            "files": len(files),
            "rows": sum(f.get("rows", 0) for f in files),
            "shipped": sum(f.get("shipped", 0) for f in files),
            "rejected": sum(f.get("rejected", 0) for f in files),
            "failed_files": sum(1 for f in files if f["status"] == "failed"),
        }

    def describe(self) -> str:
        t = self.totals()
        text = (
            f"pass: {t['files']} files, {t['rows']} rows, {t['shipped']} shipped, "
            f"{t['rejected']} rejected in {self.seconds:.1f} s"
        )
        for s in self.sources:
            if s.error:
                text += f"; source {s.name}: {s.error}"
        return text


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
        self.ledger = Ledger(settings.state.ledger)
        # source -> path -> (size, mtime, polls seen unchanged, when that count last moved)
        self.seen: dict[str, dict[str, tuple[int, float | None, int, float]]] = {}
        self.last_error: str | None = None

    def close(self) -> None:
        self.ledger.close()

    # ------------------------------------------------------------------ a pass

    def run_pass(self, *, settle: bool = True) -> PassSummary:
        """One pass over every source.  `settle`: poll twice (cron) instead of relying
        on the memory of earlier polls (daemon)."""
        started = time.monotonic()
        summary = PassSummary()
        if not self.settings.sources:
            summary.fatal = "no sources configured (add `sources:` to the config)"
        for source in self.settings.sources:
            if self.stop.is_set():
                break
            summary.sources.append(self.run_source(source, settle=settle))
        summary.seconds = time.monotonic() - started
        self.metrics.set("last_pass_duration_seconds", summary.seconds)
        log.info(summary.describe())
        return summary

    def run_source(self, source: SourceSettings, *, settle: bool = True) -> SourceResult:
        result = SourceResult(source.name)
        try:
            with filesystem_for(source) as fs:
                stages = Stages()
                for folder in stages.folders:
                    fs.mkdir(folder)
                for info in self._resumable(fs, stages):
                    if self.stop.is_set() or self._unfinished(result):
                        break
                    result.files.append(self._process(fs, source, stages, info, claimed=True))
                # a file not completely shipped is resumed first next time; newer files
                # wait for it, or their updates would be overwritten by its older data
                ready = [] if self._unfinished(result) else self._ready(fs, source, stages, settle)
                for info in ready:
                    if self.stop.is_set() or self._unfinished(result):
                        break
                    result.files.append(self._process(fs, source, stages, info, claimed=False))
            if not self._unfinished(result):
                self.metrics.set("last_success_timestamp_seconds", self.clock(), source=source.name)
        except (ApiTerminalError, ConfigError):
            raise  # stops the pass: a configuration fix, not this source's problem
        except (TransientError, TerminalError) as exc:
            # count first: whoever sees the unhealthy state must also see it counted
            self.metrics.inc("errors_total", source=source.name, kind=type(exc).__name__)
            result.error = str(exc)
            self.last_error = f"{source.name}: {exc}"
            log.error("source %s: %s", source.name, exc)
        return result

    @staticmethod
    def _unfinished(result: SourceResult) -> bool:
        return any(f["status"] == "incomplete" for f in result.files)

    # ------------------------------------------------------------------ listing

    def _resumable(self, fs: FileSystem, stages: Stages) -> list[FileInfo]:
        files = [f for f in fs.list(stages.folder("processing")) if not f.is_dir]
        files = [f for f in files if not f.name.startswith(".")]
        return sorted(files, key=lambda f: (f.mtime or 0, f.name))

    def _ready(
        self, fs: FileSystem, source: SourceSettings, stages: Stages, settle: bool
    ) -> list[FileInfo]:
        """Files of the drop that are complete, oldest first."""
        listing = [f for f in fs.list("") if not f.is_dir]
        names = {f.name for f in listing}
        memory = self.seen.setdefault(source.name, {})
        if settle and source.stable_polls > 0:
            first = {f.name: (f.size, f.mtime) for f in listing}
            self.stop.wait(min(SETTLE_SECONDS, source.poll_interval_seconds))
            listing = [f for f in fs.list("") if not f.is_dir]
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
            if f.name not in stable:
                continue
            if f.mtime is not None and now - f.mtime < source.min_age_seconds:
                continue
            if source.done_marker and self._marker(f.name, names) is None:
                continue
            ready.append(f)
        return sorted(ready, key=lambda f: (f.mtime or 0, f.name))

    @staticmethod
    def _marker(name: str, names: set[str]) -> str | None:
        stem = name.split(".", 1)[0]
        for candidate in (name + MARKER_SUFFIX, stem + MARKER_SUFFIX):
            if candidate in names:
                return candidate
        return None

    # ------------------------------------------------------------------ one file

    def _process(
        self,
        fs: FileSystem,
        source: SourceSettings,
        stages: Stages,
        info: FileInfo,
        *,
        claimed: bool,
    ) -> dict[str, Any]:
        name = info.name
        entry: dict[str, Any] = {"file": name, "source": source.name}
        if claimed:
            path = info.path
        else:
            taken = {f.name for f in fs.list(stages.folder("processing"))}
            path = stages.stage_path("processing", name, taken)
            try:
                fs.rename(info.path, path)
            except FileNotFoundError:
                entry["status"] = "skipped"  # another process claimed it first
                return entry
            if source.done_marker:
                marker = self._marker(name, {f.name for f in fs.list("")})
                if marker:
                    fs.remove(marker)
        work = Path(self.settings.state.work_dir) / _safe(source.name) / _safe(path)
        shutil.rmtree(work, ignore_errors=True)
        work.mkdir(parents=True, exist_ok=True)
        try:
            local = work / "source" / name
            local.parent.mkdir(parents=True, exist_ok=True)
            fs.get(path, local)
            outcome, file_id = self._deliver(local, name, source, work)
            entry.update(self._file_away(fs, source, stages, path, name, outcome))
            if file_id is not None:
                self._finish_ledger(file_id, outcome, entry)
        except (TransientError, ApiTerminalError, ConfigError):
            # source gone, transfer cut short, ledger busy, API token or site id wrong...:
            # not the file's fault; leave it in processing/, resumed next pass
            raise
        except CsvBridgeError as exc:
            entry.update(self._fail(fs, stages, path, name, str(exc)))
        except Exception as exc:  # a bug must not block the files behind this one
            log.exception("unexpected error on %s", name)
            entry.update(self._fail(fs, stages, path, name, f"internal error: {exc!r}"))
        finally:
            shutil.rmtree(work, ignore_errors=True)
        status = entry.get("status", "failed")
        self.metrics.inc("files_processed_total", source=source.name, status=status)
        self.metrics.inc(
            "conversions_shipped_total", entry.get("shipped_now", 0), source=source.name
        )
        self.metrics.inc("conversions_rejected_total", entry.get("rejected", 0), source=source.name)
        log.info("%s/%s: %s", source.name, name, status)
        return entry

    def _deliver(
        self, local: Path, name: str, source: SourceSettings, work: Path
    ) -> tuple[Outcome, int | None]:
        sha = sha256_file(local)
        size = local.stat().st_size
        known = self.ledger.lookup(make_fingerprint(sha, size))
        if known is not None and known.status == "done":
            report = Report(file=name, kind=source.kind)
            report.outputs["duplicate_of"] = f"{known.source}/{known.name} (ledger #{known.id})"
            log.warning(
                "%s has the same content as %s, processed already: not sent again", name, known.name
            )
            return Outcome(report, "duplicate"), None
        entry = self.ledger.begin(source.name, name, size, local.stat().st_mtime, sha)
        before = self.ledger.accepted_ids(entry.id)
        shipped_before = len(before)

        def on_accepted(batch_no: int, accepted: list[str], rejected: list[str]) -> None:
            self.ledger.record_batch(entry.id, batch_no, accepted, rejected)

        settings = self.settings.model_copy(update={"convert": source.convert})
        outcome = process_file(
            local,
            work / "convert",
            settings,
            name=name,
            kind=source.kind,
            sinks=list(source.sinks),
            stop=self.stop,
            progress=self.progress,
            accepted_before=before,
            on_accepted=on_accepted,
        )
        outcome.report.outputs["shipped_by_earlier_attempts"] = str(shipped_before)
        return outcome, entry.id

    def _file_away(
        self,
        fs: FileSystem,
        source: SourceSettings,
        stages: Stages,
        path: str,
        name: str,
        outcome: Outcome,
    ) -> dict[str, Any]:
        r = outcome.report
        info: dict[str, Any] = {
            "status": "done" if outcome.status == "duplicate" else outcome.status,
            "rows": r.rows_read,
            "shipped": r.objects_shipped,
            "shipped_now": r.objects_shipped
            - int(r.outputs.get("shipped_by_earlier_attempts", "0")),
            "rejected": r.objects_rejected + r.objects_rejected_by_api,
            "not_shipped": r.objects_not_shipped,
        }
        if outcome.status == "incomplete":
            return info  # stays in processing/ until everything is shipped
        stage = "done" if info["status"] == "done" else "failed"
        taken = {f.name for f in fs.list(stages.folder(stage))}
        dest, report_path, rejects_path = stages.stage_paths(stage, name, taken)
        if stage == "done" and source.on_success == "delete":
            fs.remove(path)
            info["moved_to"] = None
            return info
        fs.write_bytes(report_path, r.to_json())
        if outcome.rejects is not None and outcome.rejects.exists():
            fs.put(outcome.rejects, rejects_path)
        fs.rename(path, dest)
        info["moved_to"] = dest
        info["report"] = report_path
        return info

    def _finish_ledger(self, file_id: int, outcome: Outcome, entry: dict[str, Any]) -> None:
        if outcome.status == "incomplete":
            return
        self.ledger.finish(
            file_id,
            "done" if outcome.status == "done" else "failed",
            rows=outcome.report.rows_read,
            shipped=entry.get("shipped", 0),
            rejected=entry.get("rejected", 0),
            not_shipped=entry.get("not_shipped", 0),
            report_path=entry.get("report"),
        )

    def _fail(
        self, fs: FileSystem, stages: Stages, path: str, name: str, reason: str
    ) -> dict[str, Any]:
        """Move a file that could not be processed to failed/ with a report; never delete."""
        report = Report(file=name, fatal=reason)
        try:
            taken = {f.name for f in fs.list(stages.folder("failed"))}
            dest, report_path, _ = stages.stage_paths("failed", name, taken)
            fs.write_bytes(report_path, report.to_json())
            fs.rename(path, dest)
            return {"status": "failed", "error": reason, "moved_to": dest, "report": report_path}
        except CsvBridgeError as exc:
            return {"status": "failed", "error": f"{reason}; and could not move it: {exc}"}


def _safe(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in text)


# ---------------------------------------------------------------------- entry points


def run_once(settings: Settings, *, progress: bool | None = False) -> PassSummary:
    """``csvbridge run``: one locked pass over every source (for cron)."""
    with PassLock(settings.state.lock_file):
        runner = Runner(settings, progress=progress)
        try:
            return runner.run_pass(settle=True)
        except (ApiTerminalError, ConfigError) as exc:  # 401/403, a wrong URL: config
            return PassSummary(fatal=str(exc))
        finally:
            runner.close()


def watch(
    settings: Settings,
    *,
    stop: threading.Event | None = None,
    max_passes: int | None = None,
    install_signals: bool = True,
) -> int:
    """``csvbridge watch``: the daemon.  Returns an exit code when stopped.

    Local folders are watched with watchdog (a new file wakes the loop at once; polling
    remains the fallback); FTP/SFTP drops are polled every ``poll_interval_seconds``.
    A source that fails is retried with exponential backoff (up to 5 minutes).
    SIGTERM/SIGINT finish the batch in flight and exit cleanly.
    """
    stop = stop or threading.Event()
    wake = threading.Event()
    if install_signals:

        def on_signal(signum: int, _frame: object) -> None:
            log.info("signal %d: finishing the batch in flight, then stopping", signum)
            stop.set()
            wake.set()

        signal.signal(signal.SIGTERM, on_signal)
        signal.signal(signal.SIGINT, on_signal)
    with PassLock(settings.state.lock_file):
        metrics = Metrics()
        runner = Runner(settings, stop=stop, metrics=metrics)
        server = None
        if settings.metrics.port is not None:
            server = MetricsServer(
                metrics,
                settings.metrics.host,
                settings.metrics.port,
                health=lambda: (runner.last_error is None, {"last_error": runner.last_error}),
            )
            log.info("metrics on %s/metrics, health on %s/healthz", server.url, server.url)
        observer = _watch_local(settings, wake)
        next_due = {s.name: 0.0 for s in settings.sources}
        backoff = {s.name: 0.0 for s in settings.sources}
        failing: dict[str, str] = {}  # source -> its error, while it fails
        passes = 0
        try:
            while not stop.is_set():
                now = time.monotonic()
                for source in settings.sources:
                    if stop.is_set() or now < next_due[source.name]:
                        continue
                    try:
                        result = runner.run_source(source, settle=False)
                    except (ApiTerminalError, ConfigError) as exc:
                        log.error("%s: stopping", exc)
                        return 2
                    if result.error:
                        failing[source.name] = f"{source.name}: {result.error}"
                        backoff[source.name] = min(300.0, max(1.0, backoff[source.name] * 2))
                        next_due[source.name] = now + backoff[source.name]
                    else:
                        # healthy again only when no other source is still failing
                        failing.pop(source.name, None)
                        runner.last_error = next(iter(failing.values()), None)
                        backoff[source.name] = 0.0
                        next_due[source.name] = now + source.poll_interval_seconds
                passes += 1
                if max_passes is not None and passes >= max_passes:
                    break
                delay = max(0.05, min(next_due.values()) - time.monotonic())
                _idle(wake, stop, delay)
                if wake.is_set():
                    wake.clear()
                    for s in settings.sources:
                        if s.url.startswith(("file:", "/")) or "://" not in s.url:
                            next_due[s.name] = 0.0
        finally:
            if observer is not None:
                observer.stop()
            if server is not None:
                server.stop()
            runner.close()
    return 0


def _idle(wake: threading.Event, stop: threading.Event, seconds: float) -> None:
    """Sleep until `wake` or `stop` is set, or `seconds` passed (an Event waits for one)."""
    deadline = time.monotonic() + seconds
    while not (wake.is_set() or stop.is_set()):
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return
        wake.wait(min(remaining, STOP_CHECK_SECONDS))


def _watch_local(settings: Settings, wake: threading.Event) -> Any:
    """A watchdog observer over the local sources; None if there are none (or no inotify)."""
    from watchdog.events import FileSystemEventHandler
    from watchdog.observers import Observer

    folders = []
    for s in settings.sources:
        if s.url.startswith("file://"):
            folders.append(s.url[len("file://") :])
        elif "://" not in s.url:
            folders.append(s.url)
    if not folders:
        return None

    class Handler(FileSystemEventHandler):
        def on_any_event(self, event: Any) -> None:
            if not event.is_directory:
                wake.set()

    observer = Observer()
    try:
        for folder in folders:
            Path(folder).mkdir(parents=True, exist_ok=True)
            observer.schedule(Handler(), folder, recursive=False)
        observer.start()
    except OSError as exc:  # no inotify: polling alone still works
        log.warning("file watching unavailable (%s); polling only", exc)
        return None
    return observer
