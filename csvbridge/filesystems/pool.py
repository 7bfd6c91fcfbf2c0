"""Filesystems kept open across polls: one SSH or FTP session per source, not per poll.

A daemon polling an SFTP drop every 30 s used to open (and log) a new SSH connection
each time.  `Connections.lease(settings)` hands out the same instance for the same
settings while it is healthy; a dropped session is reopened by the instance itself
(reconnect-once in `RemoteFileSystem`), and any error escaping the lease closes the
session so the next poll starts clean.  Changed settings (a reloaded config) get a new
instance.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager

from csvbridge.config import FeedSettings, SourceSettings
from csvbridge.filesystems.base import FileSystem
from csvbridge.filesystems.registry import filesystem_for

log = logging.getLogger("csvbridge.filesystems")

Settings = SourceSettings | FeedSettings


class Connections:
    """Open filesystems by source (or feed) settings; `close()` when the daemon stops."""

    def __init__(self) -> None:
        self._open: dict[str, tuple[Settings, FileSystem]] = {}
        self._lock = threading.Lock()

    @staticmethod
    def _key(settings: Settings) -> str:
        if isinstance(settings, SourceSettings):
            return f"source:{settings.name}"
        return f"feed:{settings.target}"

    @contextmanager
    def lease(self, settings: Settings) -> Iterator[FileSystem]:
        """The filesystem for `settings`, kept open after the block unless it failed."""
        key = self._key(settings)
        with self._lock:
            kept = self._open.get(key)
            if kept is not None and kept[0] != settings:
                self._open.pop(key)
                kept[1].close()
                kept = None
            if kept is None:
                kept = (settings.model_copy(deep=True), filesystem_for(settings))
                self._open[key] = kept
            else:
                log.debug("reusing the open connection to %s", kept[1].url)
        fs = kept[1]
        try:
            yield fs
        except BaseException:
            with self._lock:
                if self._open.get(key) is kept:
                    self._open.pop(key)
            fs.close()
            raise

    def close(self) -> None:
        """Close every kept filesystem (log out politely)."""
        with self._lock:
            kept, self._open = list(self._open.values()), {}
        for _, fs in kept:
            fs.close()

    def __len__(self) -> int:
        return len(self._open)
