"""``csvbridge watch``: the daemon, repeating passes per source until stopped.

Local folders are watched with watchdog (a new file wakes the loop at once; polling
remains the fallback); FTP/SFTP drops and API sources (Commerce HQ) are polled every
``poll_interval_seconds``; sources run at once, ``parallel_sources`` at a time, each
started again when due once its previous run ended; the embedded FTP drop (``ftpserver://``) is started here and
wakes the loop the moment an upload completes.  A
source that fails is retried with exponential backoff (up to 5 minutes) and reported by
``/healthz`` until it recovers, while the other sources go on.  SIGTERM/SIGINT finish
the batch in flight and exit cleanly.

Under systemd (``Type=notify``) it says READY=1 once set up, STATUS=… with what it is
doing, pings WATCHDOG=1 from its main loop and from the work in progress (a file that
takes an hour is not a hung daemon), and STOPPING=1 on shutdown.  It starts with a
banner in the log (sources, sinks, destinations, metrics and status page URLs).
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from pathlib import Path
from typing import Any

from csvbridge import progress as telemetry
from csvbridge.config import Settings
from csvbridge.drops.banner import log_banner
from csvbridge.drops.ftpserver import DroppedFile, FtpDrop
from csvbridge.drops.inboxes import ftp_drop_settings, kind_of
from csvbridge.drops.lock import PassLock
from csvbridge.drops.parallel import SourcePool
from csvbridge.drops.runner import Runner
from csvbridge.errors import CsvBridgeError, StopsRun
from csvbridge.filesystems import LocalFileSystem, filesystem_for
from csvbridge.observe import Metrics, MetricsServer
from csvbridge.statuspage import StatusPage
from csvbridge.systemd import Notifier

log = logging.getLogger("csvbridge.drops")

STOP_CHECK_SECONDS = 0.2  # the idle daemon looks at its stop event this often
MAX_BACKOFF_SECONDS = 300.0


def watch(
    settings: Settings,
    *,
    stop: threading.Event | None = None,
    max_passes: int | None = None,
    install_signals: bool = True,
    progress: bool | None = False,
    notifier: Notifier | None = None,
) -> int:
    """Run until `stop` is set (or a signal arrives); returns an exit code.  `progress`:
    bars (True), log lines every ``logging.progress_seconds`` (False), or auto (None)."""
    notifier = notifier or Notifier()
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
        serving = settings.metrics.port is not None
        tel = telemetry.Telemetry(metrics, keep_reports=serving)
        tel.on_activity = notifier.watchdog  # the work in progress pings too
        tel.on_file = lambda where: notifier.status(f"processing {where}")
        every = settings.logging.progress_seconds
        with telemetry.showing(tty=progress, every=every, telemetry=tel):
            runner = Runner(settings, stop=stop, metrics=metrics)
            server = None
            if serving:
                server = MetricsServer(
                    metrics,
                    settings.metrics.host,
                    settings.metrics.port,  # type: ignore[arg-type]
                    health=lambda: (runner.last_error is None, {"last_error": runner.last_error}),
                    status=StatusPage(tel),
                )
                log.info("metrics on %s/metrics, health on %s/healthz", server.url, server.url)
            local = _local_folders(settings)
            observer = _watch_local(local, wake)
            woken: set[str] = set()  # sources whose FTP drop received a file since the wake
            drops: list[FtpDrop] = []
            try:
                drops = _start_ftp_drops(settings, wake, woken)
                log_banner(settings, server.url if server is not None else None, local)
                notifier.ready(f"watching {len(settings.sources)} sources")
                return _loop(settings, runner, local, stop, wake, max_passes, woken, notifier)
            finally:
                notifier.stopping("stopping: finishing the batch in flight")
                for drop in drops:
                    drop.stop()
                if observer is not None:
                    observer.stop()
                if server is not None:
                    server.stop()
                runner.close()
                notifier.close()


def _loop(
    settings: Settings,
    runner: Runner,
    local: dict[str, Path],
    stop: threading.Event,
    wake: threading.Event,
    max_passes: int | None,
    woken: set[str] | None = None,
    notifier: Notifier | None = None,
) -> int:
    """Start each source when it is due and not still running, ``parallel_sources`` at a
    time (`SourcePool`): a source shipping a multi-hour file keeps its slot, the others
    go on polling and shipping beside it.  `max_passes`: rounds that start sources,
    then the runs in progress are waited for."""
    notifier = notifier or Notifier({})
    next_due = {s.name: 0.0 for s in settings.sources}
    backoff = {s.name: 0.0 for s in settings.sources}
    failing: dict[str, str] = {}  # source -> its error, while it fails
    ended = threading.Event()  # a run finished (apart from `wake`: files arrived)
    pool = SourcePool(
        lambda source: runner.run_source(source, settle=False),
        settings.parallel_sources,
        ended.set,
    )
    rewoken: set[str] = set()  # sources woken while running: due again when they end
    passes = 0
    try:
        while not stop.is_set():
            now = time.monotonic()
            notifier.watchdog()
            for name, outcome in pool.finished():
                if isinstance(outcome, StopsRun):
                    log.error("%s: stopping", outcome)
                    stop.set()  # the other sources finish their batch in flight
                    return 2
                if isinstance(outcome, BaseException):
                    raise outcome
                if outcome.error:
                    failing[name] = f"{name}: {outcome.error}"
                    runner.last_error = failing[name]
                    backoff[name] = min(MAX_BACKOFF_SECONDS, max(1.0, backoff[name] * 2))
                    next_due[name] = now + backoff[name]
                else:
                    # healthy again only when no other source is still failing
                    failing.pop(name, None)
                    runner.last_error = next(iter(failing.values()), None)
                    backoff[name] = 0.0
                    next_due[name] = now + _interval(settings, name)
                    # a file seen but not complete yet: look again when it could be
                    recheck = runner.recheck.get(name)
                    if recheck is not None:
                        next_due[name] = min(next_due[name], recheck)
                if name in rewoken:  # files arrived while it ran: look again at once
                    rewoken.discard(name)
                    next_due[name] = 0.0
            rounds_left = max_passes is None or passes < max_passes
            if not rounds_left and not pool.busy:
                break
            started = False
            for source in settings.sources:
                if stop.is_set() or not rounds_left or pool.full:
                    break
                if pool.running(source.name) or now < next_due[source.name]:
                    continue
                notifier.status(f"polling {source.name}")
                pool.start(source)
                started = True
            passes += started
            idle_until = [next_due[n] for n in next_due if not pool.running(n)]
            delay = max(0.05, min(idle_until, default=now + 1) - time.monotonic())
            if not pool.busy:
                notifier.status(_idle_status(settings, failing))
            _idle(wake, stop, delay, ended, notifier=notifier)
            ended.clear()
            if wake.is_set():
                wake.clear()
                uploaded = set(woken or ())
                if woken:
                    woken.difference_update(uploaded)
                for name in [*local, *uploaded]:
                    next_due[name] = 0.0
                    if pool.running(name):
                        rewoken.add(name)
    finally:
        pool.close()  # runs in progress end (a stop finishes their batch in flight)
    return 0


def _interval(settings: Settings, name: str) -> float:
    return next(s.poll_interval_seconds for s in settings.sources if s.name == name)


def _idle_status(settings: Settings, failing: dict[str, str]) -> str:
    """systemd's STATUS= line between passes."""
    text = f"idle: {len(settings.sources)} sources"
    if failing:
        text += f", {len(failing)} failing ({', '.join(sorted(failing))})"
    return text


def _idle(
    wake: threading.Event,
    stop: threading.Event,
    seconds: float,
    *also: threading.Event,
    notifier: Notifier | None = None,
) -> None:
    """Sleep until `wake`, `stop` (or one of `also`) is set, or `seconds` passed (an
    Event waits for one); the watchdog is pinged meanwhile (at most every half of its
    interval)."""
    deadline = time.monotonic() + seconds
    while not (wake.is_set() or stop.is_set() or any(e.is_set() for e in also)):
        if notifier is not None:
            notifier.watchdog()
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return
        wake.wait(min(remaining, STOP_CHECK_SECONDS))


def _start_ftp_drops(settings: Settings, wake: threading.Event, woken: set[str]) -> list[FtpDrop]:
    """Start the embedded FTP drop of each ``ftpserver://`` source.  A finished upload
    wakes the loop at once for its source: the file is taken the moment it is complete
    (the server knows; no polling, no stability wait).  A drop that cannot start (port
    taken, unreadable certificate) stops the daemon with its reason: nothing could
    arrive there."""
    started: list[FtpDrop] = []
    for source in settings.sources:
        if kind_of(source) != "ftpserver":
            continue

        def on_file(dropped: DroppedFile, name: str = source.name) -> None:
            log.debug("ftp drop %s: %s complete, waking the loop", name, dropped.path.name)
            woken.add(name)
            wake.set()

        try:
            started.append(FtpDrop(ftp_drop_settings(source), on_file).start())
        except BaseException:
            for drop in started:
                drop.stop()
            raise
    return started


def _local_folders(settings: Settings) -> dict[str, Path]:
    """Source name -> folder, for the sources that are local folders (as the filesystem
    registry resolves their URL; a bad URL is left for the pass to report)."""
    out: dict[str, Path] = {}
    for source in settings.sources:
        try:
            fs = filesystem_for(source)
        except CsvBridgeError:
            continue
        if isinstance(fs, LocalFileSystem):
            out[source.name] = fs.root
        fs.close()
    return out


def _watch_local(folders: dict[str, Path], wake: threading.Event) -> Any:
    """A watchdog observer over the local folders that exist; None if there are none (or
    no inotify).  A missing folder is never created here: the pass reports it."""
    from watchdog.events import FileSystemEventHandler
    from watchdog.observers import Observer

    existing = [f for f in folders.values() if f.is_dir()]
    if not existing:
        return None

    class Handler(FileSystemEventHandler):
        def on_any_event(self, event: Any) -> None:
            if not event.is_directory:
                wake.set()

    observer = Observer()
    try:
        for folder in existing:
            observer.schedule(Handler(), str(folder), recursive=False)
        observer.start()
    except OSError as exc:  # no inotify: polling alone still works
        log.warning("file watching unavailable (%s); polling only", exc)
        return None
    return observer
