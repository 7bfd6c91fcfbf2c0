"""What csvbridge is doing right now, for people and for tools: progress and telemetry.

The stages report into one `Telemetry` (`current()`): the engine its bytes and rows as
chunks are read, the shipper the objects answered and every request, the drop runner
the file it takes and how it ended.  Readers take a consistent `snapshot()`:

* a *display* started by `showing()`: rich progress bars on a terminal (convert: bytes,
  rows, rate; shipping: objects, rate, ETA), else one log line every N seconds with the
  same figures -- driven by a clock, not by answers, so 29 s of retries are not silent;
* the metrics (objects remaining and ETA of the file in progress, API requests...);
* the daemon's status page (`csvbridge.statuspage`).

Why a process-wide current telemetry rather than a parameter: the hooks sit deep in
the hot paths (one call per chunk, per batch, per request) of functions with public
signatures; with no session open they update a throwaway object and cost nothing more.
"""

from __future__ import annotations

import collections
import logging
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from csvbridge.metrics import Metrics
    from csvbridge.progress_display import Display

log = logging.getLogger("csvbridge.progress")

PROGRESS_LOG_SECONDS = 10.0
HISTORY = 20  # finished files kept for the status page
REPORT_CAP = 1 << 20  # bytes of a report kept for the status page's link
MINUTES = 60  # throughput kept, one bucket a minute


def format_duration(seconds: float) -> str:
    """``42 s``, ``3 min 20 s``, ``2 h 05 min``."""
    s = round(seconds)
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min {s % 60:02d} s"
    return f"{s // 3600} h {s % 3600 // 60:02d} min"


def _size(n: float) -> str:
    for unit in ("B", "kB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} GB"


@dataclass
class FileProgress:
    """The file in progress: where it is, how fast it goes."""

    source: str
    file: str
    phase: str = "converting"  # converting, shipping
    started: float = field(default_factory=time.monotonic)
    started_at: float = field(default_factory=time.time)
    bytes_total: int | None = None
    bytes_done: int = 0
    rows: int = 0
    objects_total: int | None = None
    objects_done: int = 0
    ship_started: float | None = None
    requests: int = 0
    retries: int = 0
    last_status: str | None = None

    def convert_rate(self, now: float) -> tuple[float, float]:
        """Bytes and rows per second of the convert phase."""
        elapsed = max(now - self.started, 1e-6)
        return self.bytes_done / elapsed, self.rows / elapsed

    def ship_rate(self, now: float) -> float:
        if self.ship_started is None:
            return 0.0
        return self.objects_done / max(now - self.ship_started, 1e-6)

    def eta(self, now: float) -> float | None:
        """Seconds until every object is answered, at the rate so far; None if unknown."""
        rate = self.ship_rate(now)
        if self.objects_total is None or rate <= 0:
            return None
        return max(0, self.objects_total - self.objects_done) / rate

    def line(self, now: float) -> str:
        """The progress figures in one line (the log line, and the bars' text)."""
        where = f"{self.source}/{self.file}" if self.source else self.file
        if self.phase == "converting":
            bps, rps = self.convert_rate(now)
            total = f"/{_size(self.bytes_total)}" if self.bytes_total else ""
            return (
                f"{where}: converting {_size(self.bytes_done)}{total}, {self.rows:,} rows, "
                f"{_size(bps)}/s, {rps:,.0f} rows/s"
            )
        total = f"/{self.objects_total:,}" if self.objects_total is not None else ""
        text = (
            f"{where}: shipped {self.objects_done:,}{total} objects, "
            f"{self.ship_rate(now):,.0f} obj/s"
        )
        eta = self.eta(now)
        if eta is not None and self.objects_done < (self.objects_total or 0):
            text += f", ETA {format_duration(eta)}"
        if self.retries:
            text += f", {self.retries} retries (last: {self.last_status})"
        elif self.objects_done == 0 and self.requests == 0:
            text += ", waiting for the first answer"
        return text


@dataclass
class FinishedFile:
    """A file that ended (or was left for a retry), for the status page."""

    id: int
    source: str
    file: str
    state: str
    finished_at: float
    rows: int = 0
    shipped: int = 0
    rejected: int = 0
    reason: str | None = None
    has_report: bool = False


@dataclass
class SourceState:
    name: str
    kind: str = ""
    state: str = "idle"  # idle, polling, failing
    last_error: str | None = None
    last_success_at: float | None = None


class Telemetry:
    """Thread-safe record of the work in progress; feeds `metrics` when given."""

    def __init__(self, metrics: Metrics | None = None, *, keep_reports: bool = False) -> None:
        self.metrics = metrics
        self.keep_reports = keep_reports  # the status page links them: read them back
        # called as work advances (the daemon pings systemd's watchdog: a long file is
        # not a hung daemon), and with "source/file" when a file is taken
        self.on_activity: Callable[[], object] | None = None
        self.on_file: Callable[[str], object] | None = None
        self.display: Display | None = None  # set by `showing`
        self._lock = threading.Lock()
        self.file: FileProgress | None = None
        self.sources: dict[str, SourceState] = {}
        self.finished: collections.deque[FinishedFile] = collections.deque(maxlen=HISTORY)
        self._reports: dict[int, bytes] = {}
        self._ids = 0
        self._minutes: collections.OrderedDict[int, int] = collections.OrderedDict()
        self.started_at = time.time()

    # -- hooks: the drop runner --------------------------------------------------------

    def source(self, name: str, state: str, error: str | None = None, kind: str = "") -> None:
        with self._lock:
            s = self.sources.setdefault(name, SourceState(name))
            s.state, s.kind = state, kind or s.kind
            if state == "failing":
                s.last_error = error
            elif state == "idle" and error is None:
                s.last_success_at = time.time()

    def _alive(self, *, show: bool = True) -> None:
        """Work advanced: feed the watchdog; `show` (only from the thread doing the work,
        not the shipper's workers) lets the display draw if its interval has passed."""
        if self.on_activity is not None:
            self.on_activity()
        if show and self.display is not None:
            self.display.tick()

    def file_started(self, source: str, file: str, size: int | None = None) -> None:
        with self._lock:
            self.file = FileProgress(source, file, bytes_total=size)
        if self.on_file is not None:
            self.on_file(f"{source}/{file}")
        self._alive()

    def file_finished(
        self,
        *,
        source: str,
        file: str,
        state: str,
        rows: int = 0,
        shipped: int = 0,
        rejected: int = 0,
        reason: str | None = None,
        report: bytes | None = None,
    ) -> None:
        with self._lock:
            self._ids += 1
            keep = report is not None and len(report) <= REPORT_CAP
            entry = FinishedFile(
                self._ids, source, file, state, time.time(), rows, shipped, rejected, reason, keep
            )
            if len(self.finished) == self.finished.maxlen:
                self._reports.pop(self.finished[0].id, None)
            self.finished.append(entry)
            if keep:
                self._reports[entry.id] = report  # type: ignore[assignment]
            if self.file is not None and (self.file.source, self.file.file) == (source, file):
                self.file = None
        if self.metrics is not None:
            self.metrics.remaining.labels(source).set(0)
            self.metrics.eta.labels(source).set(0)

    def report(self, file_id: int) -> bytes | None:
        """The report of a finished file this process filed (None: unknown or too big)."""
        with self._lock:
            return self._reports.get(file_id)

    # -- hooks: the engine and the shipper ---------------------------------------------

    def _current(self, name: str | None) -> FileProgress:
        f = self.file
        if f is None or (name is not None and name != f.file and not f.source):
            f = self.file = FileProgress("", name or "")
        return f

    def converting(self, name: str | None, done: int, total: int | None, rows: int) -> None:
        """Convert progress: `done` bytes of `total` read, `rows` rows so far."""
        with self._lock:
            f = self._current(name)
            f.phase, f.bytes_done, f.rows = "converting", done, rows
            if total:
                f.bytes_total = total
        self._alive()

    def shipping(self, total: int | None) -> None:
        """The shipping phase starts, `total` objects to answer (None: unknown)."""
        with self._lock:
            f = self._current(None)
            f.phase, f.objects_total, f.objects_done = "shipping", total, 0
            f.ship_started = time.monotonic()
            source = f.source
        if self.metrics is not None and total is not None:
            self.metrics.remaining.labels(source).set(total)

    def shipped(self, done: int) -> None:
        """`done` objects of the shipment answered so far."""
        now = time.monotonic()
        with self._lock:
            f = self._current(None)
            delta, f.objects_done = done - f.objects_done, done
            minute = int(time.time() // 60)
            self._minutes[minute] = self._minutes.get(minute, 0) + max(0, delta)
            while len(self._minutes) > MINUTES + 1:
                self._minutes.popitem(last=False)
            source, eta = f.source, f.eta(now)
            remaining = None if f.objects_total is None else max(0, f.objects_total - done)
        if self.metrics is not None:
            if remaining is not None:
                self.metrics.remaining.labels(source).set(remaining)
            self.metrics.eta.labels(source).set(eta or 0)
        self._alive()

    def request(self, endpoint: str, code: int | str, seconds: float, *, retry: bool) -> None:
        """One API request ended with `code` (HTTP status, or TIMEOUT...)."""
        with self._lock:
            f = self.file
            if f is not None:
                f.requests += 1
                f.retries += retry
                f.last_status = f"HTTP {code}" if isinstance(code, int) else str(code)
        if self.metrics is not None:
            self.metrics.request(endpoint, code, seconds)
            if retry:
                self.metrics.api_retries.labels(endpoint).inc()
        self._alive(show=False)

    # -- readers -----------------------------------------------------------------------

    def line(self) -> str | None:
        """The progress log line of the file in progress (None when idle)."""
        with self._lock:
            return self.file.line(time.monotonic()) if self.file is not None else None

    def throughput(self) -> list[int]:
        """Objects answered per minute over the last hour, oldest first."""
        now = int(time.time() // 60)
        with self._lock:
            return [self._minutes.get(m, 0) for m in range(now - MINUTES + 1, now + 1)]

    def snapshot(self) -> dict[str, Any]:
        """Everything a reader shows, as plain data (the status page's JSON)."""
        now = time.monotonic()
        with self._lock:
            f = self.file
            current = None
            if f is not None:
                current = asdict(f)
                current.update(
                    line=f.line(now),
                    eta_seconds=f.eta(now),
                    objects_per_second=f.ship_rate(now),
                    rows_per_second=f.convert_rate(now)[1],
                )
            sources = [asdict(s) for s in self.sources.values()]
            finished = [asdict(x) for x in reversed(self.finished)]
        return {
            "now": time.time(),
            "started_at": self.started_at,
            "sources": sources,
            "current": current,
            "finished": finished,
            "throughput_per_minute": self.throughput(),
        }


# ---------------------------------------------------------------------- sessions

_active: Telemetry | None = None
_idle = Telemetry()  # takes the hooks when no session is open


def current() -> Telemetry:
    """The telemetry of the open session, or a throwaway one."""
    return _active or _idle


@contextmanager
def showing(
    *,
    tty: bool | None = None,
    every: float = PROGRESS_LOG_SECONDS,
    telemetry: Telemetry | None = None,
) -> Iterator[Telemetry]:
    """Open a session: hooks report into `telemetry`, shown as bars on a terminal (`tty`
    True, or None and stderr is one) or as a log line every `every` seconds.  Inside an
    open session this yields that session and shows nothing more."""
    global _active
    if _active is not None:
        yield _active
        return
    tel = telemetry or Telemetry()
    on_tty = sys.stderr.isatty() if tty is None else tty
    from csvbridge.progress_display import LogDisplay, RichDisplay

    display: Display = RichDisplay(tel) if on_tty else LogDisplay(tel, every)
    _active, tel.display = tel, display
    display.start()
    try:
        yield tel
    finally:
        _active, tel.display = None, None
        display.stop()
