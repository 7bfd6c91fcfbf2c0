"""How progress is shown: rich bars on a terminal, a log line every N seconds off one.

Both read the `csvbridge.progress.Telemetry` they are given; `csvbridge.progress.showing`
picks one and opens the session.
"""

from __future__ import annotations

import logging
import sys
import threading
import time
from dataclasses import asdict
from typing import Any

from csvbridge.progress import FileProgress, Telemetry, _size, format_duration

log = logging.getLogger("csvbridge.progress")


class Display:
    """Shows the telemetry at most every `interval` seconds, from the hooks themselves.

    Why no thread of its own: the convert engine forks its workers only while the process
    is single-threaded (else it pays for a forkserver), and every phase already calls in
    on a clock -- each chunk converted, each 0.1 s poll of a shipment, answered or not."""

    interval = 0.2

    def __init__(self, telemetry: Telemetry) -> None:
        self.telemetry = telemetry
        self._last = 0.0
        self._busy = threading.Lock()

    def start(self) -> None:
        pass

    def stop(self) -> None:
        with self._busy:
            self.final()

    def final(self) -> None:
        """Show the final figures (bars); a log display leaves that to the work's summary."""
        self.show()

    def tick(self) -> None:
        now = time.monotonic()
        if now - self._last < self.interval or not self._busy.acquire(blocking=False):
            return
        try:
            self._last = now
            self.show()
        except Exception as exc:  # a display must never stop the work
            log.debug("progress display failed: %s", exc)
        finally:
            self._busy.release()

    def show(self) -> None:
        raise NotImplementedError


class LogDisplay(Display):
    """Off a terminal: a log line every `interval` seconds while a file is in progress."""

    def __init__(self, telemetry: Telemetry, interval: float) -> None:
        super().__init__(telemetry)
        self.interval = interval
        self._last = time.monotonic()  # the first line after `interval`, not at once

    def final(self) -> None:
        pass

    def show(self) -> None:
        line = self.telemetry.line()
        if line:
            log.info("%s", line, extra=_progress_fields(self.telemetry))


def _progress_fields(telemetry: Telemetry) -> dict[str, Any]:
    f = telemetry.file
    if f is None:
        return {}
    return {
        "source": f.source or None,
        "file": f.file,
        "phase": f.phase,
        "rows": f.rows,
        "bytes_done": f.bytes_done,
        "objects_done": f.objects_done,
        "objects_total": f.objects_total,
    }


class RichDisplay(Display):
    """On a terminal: a bar for the convert phase (bytes) and one for shipping (objects)."""

    def __init__(self, telemetry: Telemetry) -> None:
        super().__init__(telemetry)
        from rich.console import Console
        from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn

        self._progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            TaskProgressColumn(),
            TextColumn("{task.fields[detail]}"),
            console=Console(stderr=True),
            redirect_stdout=False,
            redirect_stderr=True,
            auto_refresh=False,  # refreshed from `show` (no refresh thread)
        )
        self._tasks: dict[str, Any] = {}
        self._file: tuple[str, str, float] | None = None
        self._moved: list[tuple[logging.StreamHandler[Any], Any]] = []

    def start(self) -> None:
        original = sys.stderr
        self._progress.start()  # sys.stderr is now rich's proxy: lines go above the bars
        for handler in logging.getLogger().handlers:
            if isinstance(handler, logging.StreamHandler) and handler.stream is original:
                self._moved.append((handler, handler.setStream(sys.stderr)))

    def stop(self) -> None:
        super().stop()
        for handler, stream in self._moved:
            handler.setStream(stream)
        self._progress.stop()

    def show(self) -> None:
        t = self.telemetry
        with t._lock:
            f = t.file
            if f is None:
                return
            state = FileProgress(**asdict(f))
        now = time.monotonic()
        key = (state.source, state.file, state.started)
        if key != self._file:  # a new file: its own bars
            for task in self._tasks.values():
                self._progress.remove_task(task)
            self._tasks.clear()
            self._file = key
        name = state.file.rsplit("/", 1)[-1]
        name = name if len(name) < 30 else "…" + name[-29:]
        if "convert" not in self._tasks:
            self._tasks["convert"] = self._progress.add_task(f"convert {name}", detail="")
        bps, rps = state.convert_rate(now)
        total = state.bytes_total or None
        self._progress.update(
            self._tasks["convert"],
            completed=state.bytes_done if state.phase == "converting" else (total or 1),
            total=total or (1 if state.phase != "converting" else None),
            detail=f"{_size(state.bytes_done)}, {state.rows:,} rows, {rps:,.0f} rows/s, "
            f"{_size(bps)}/s" if state.phase == "converting" else f"{state.rows:,} rows",
        )
        if state.phase == "shipping":
            if "ship" not in self._tasks:
                self._tasks["ship"] = self._progress.add_task(f"ship    {name}", detail="")
            eta = state.eta(now)
            detail = f"{state.objects_done:,}"
            detail += f"/{state.objects_total:,}" if state.objects_total is not None else ""
            detail += f" objects, {state.ship_rate(now):,.0f} obj/s"
            if eta is not None:
                detail += f", ETA {format_duration(eta)}"
            if state.retries:
                detail += f", {state.retries} retries (last: {state.last_status})"
            self._progress.update(
                self._tasks["ship"],
                completed=state.objects_done,
                total=state.objects_total,
                detail=detail,
            )
        self._progress.refresh()
