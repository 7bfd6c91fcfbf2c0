"""Sources handled at once: a bounded pool, each source keeping its own files in order.

Why: one source shipping a 250,000-conversion export takes hours at the API's rate;
the other sources (other shops, other sites and tokens) must not wait behind it.  Each
source runs in its own thread from a pool of ``parallel_sources``; within a source the
files still go one at a time, oldest first (an export that updates a conversion never
overtakes the one creating it).  Sources that share a token share its budget through
the account's pacer (`csvbridge.sinks.pacer.shared_pacer`); conversions share the cores
(`csvbridge.fold.slots`).

`run_sources` is one pass (cron); `SourcePool` keeps sources running for the daemon,
starting each one again when it is due and not still running.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor

from csvbridge.config import SourceSettings
from csvbridge.drops.outcome import SourceResult
from csvbridge.errors import StopsRun

log = logging.getLogger("csvbridge.drops")

RunSource = Callable[[SourceSettings], SourceResult]


def run_sources(
    sources: list[SourceSettings], run: RunSource, limit: int, stop: threading.Event
) -> list[SourceResult]:
    """Run every source once, at most `limit` at a time; results in config order.

    A `StopsRun` error (the configuration needs a fix) is raised once every source
    started has finished; sources not started yet are not started."""
    if len(sources) <= 1 or limit <= 1:
        out = []
        for source in sources:
            if stop.is_set():
                break
            out.append(run(source))
        return out
    halted = threading.Event()

    def one(source: SourceSettings) -> SourceResult | None:
        if stop.is_set() or halted.is_set():
            return None
        try:
            return run(source)
        except StopsRun:
            halted.set()
            raise

    with ThreadPoolExecutor(min(limit, len(sources)), thread_name_prefix="csvbridge-src") as pool:
        futures = [pool.submit(one, s) for s in sources]
        results = [f.exception() or f.result() for f in futures]
    for r in results:
        if isinstance(r, BaseException):
            raise r
    return [r for r in results if isinstance(r, SourceResult)]


class SourcePool:
    """The daemon's sources, each run in the pool when due and not already running.

    `start` submits a source; `finished` hands back the results (or the error) of the
    runs that ended since the last call.  ``on_done`` is called from the worker thread
    when a run ends (the daemon uses it to wake its loop)."""

    def __init__(self, run: RunSource, limit: int, on_done: Callable[[], None]) -> None:
        self._run, self._on_done = run, on_done
        self._pool = ThreadPoolExecutor(max(1, limit), thread_name_prefix="csvbridge-src")
        self._limit = max(1, limit)
        self._running: dict[str, Future[SourceResult]] = {}

    def running(self, name: str) -> bool:
        return name in self._running

    @property
    def full(self) -> bool:
        """Every slot busy: a due source waits for one (it is started on the next wake)."""
        return len(self._running) >= self._limit

    @property
    def busy(self) -> bool:
        return bool(self._running)

    def start(self, source: SourceSettings) -> None:
        future = self._pool.submit(self._run, source)
        self._running[source.name] = future
        future.add_done_callback(lambda _f: self._on_done())

    def finished(self) -> list[tuple[str, SourceResult | BaseException]]:
        """Runs that ended: (source name, its result or the exception it raised)."""
        out: list[tuple[str, SourceResult | BaseException]] = []
        for name, future in list(self._running.items()):
            if future.done():
                del self._running[name]
                out.append((name, future.exception() or future.result()))
        return out

    def close(self) -> None:
        """Wait for the runs in progress (the stop event makes them finish their batch)."""
        self._pool.shutdown(wait=True)
