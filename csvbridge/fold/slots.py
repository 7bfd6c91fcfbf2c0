"""Cores handed out to conversions running at once (sources handled in parallel).

Why: a conversion of a big file uses one worker process per core.  Two sources
converting at the same moment would run two such pools on the same cores, each slower
and both holding their memory; instead a conversion takes the cores it will use and the
next one waits for them.  A file small enough to be converted in one process takes one
core, so a small file on another source is not held up by a big one.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from csvbridge.config import ConvertSettings
from csvbridge.read.csvfile import CHUNK_BYTES


class Cores:
    """A counting semaphore of cores, where one conversion may take several."""

    def __init__(self, total: int | None = None) -> None:
        self.total = max(1, total or os.cpu_count() or 1)
        self._free = self.total
        self._cond = threading.Condition()

    def needed(self, path: Path, settings: ConvertSettings) -> int:
        """The cores `path` will keep busy: the engine converts in one process unless
        the file is bigger than two chunks (it cannot be split usefully below that)."""
        try:
            size = path.stat().st_size
        except OSError:
            return 1
        workers = settings.workers or self.total
        return 1 if size <= 2 * CHUNK_BYTES else max(1, min(workers, self.total))

    @contextmanager
    def take(self, n: int) -> Iterator[None]:
        """Hold `n` cores (at most all of them) for the block."""
        n = min(max(1, n), self.total)
        with self._cond:
            while self._free < n:
                self._cond.wait()
            self._free -= n
        try:
            yield
        finally:
            with self._cond:
                self._free += n
                self._cond.notify_all()


CORES = Cores()  # the machine's: every conversion in this process takes from it


@contextmanager
def convert_slot(path: Path, settings: ConvertSettings) -> Iterator[None]:
    """Wait for the cores converting `path` needs, and hold them while converting."""
    with CORES.take(CORES.needed(path, settings)):
        yield
