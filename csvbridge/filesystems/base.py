"""The one interface every drop backend (local folder, FTP/FTPS, SFTP) implements.

Deliberately small (the fsspec lesson): the watcher and the feed sink need to list a
directory, move whole files in both directions, rename and delete; nothing else.  Paths
are POSIX strings relative to the directory in the URL ("" is that directory), so callers
never build protocol-specific paths and can never wander above the configured root.

A drop is written to by other people, so a listing is a typed `Listing`: regular files
and real folders that can be used, and every other entry (links, FIFOs, devices, sockets,
names that could reach outside the drop) as a `Skipped` with its reason.  `list()` gives
the usable entries only and warns once about each skipped one.
"""

from __future__ import annotations

import errno
import logging
import posixpath
import threading
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar

from csvbridge.errors import TerminalError, TransientError

if TYPE_CHECKING:
    from csvbridge.filesystems.registry import ConnectOptions
    from csvbridge.filesystems.upload import TempNaming

log = logging.getLogger("csvbridge.filesystems")


class EntryKind(StrEnum):
    """What a directory entry is, as far as the protocol can tell."""

    FILE = "file"
    DIR = "dir"
    LINK = "symlink"
    FIFO = "fifo"
    SOCKET = "socket"
    DEVICE = "device"
    OTHER = "other"


@dataclass(frozen=True)
class FileInfo:
    """One usable entry: a regular file or a real folder.  `mtime` is epoch seconds (UTC),
    None if the server hides it."""

    name: str
    path: str
    size: int
    mtime: float | None
    is_dir: bool


@dataclass(frozen=True)
class Skipped:
    """An entry a listing will not hand out, and why.  `name` is as the server or the OS
    gave it: quote it with ``repr`` (it may hold a newline)."""

    name: str
    kind: EntryKind
    reason: str


@dataclass(frozen=True)
class Listing:
    """A directory, sorted into what may be used and what is skipped."""

    files: list[FileInfo] = field(default_factory=list)
    dirs: list[FileInfo] = field(default_factory=list)
    skipped: list[Skipped] = field(default_factory=list)

    @property
    def entries(self) -> list[FileInfo]:
        return self.files + self.dirs


class IncompleteTransfer(TransientError):
    """A transfer ended with fewer (or more) bytes than the file has: try again."""


class UnsafePath(TerminalError):
    """A path of the drop is not what it must be (a link, a FIFO, a file where a folder is
    needed): the tool refuses to follow it out of the drop or block on it."""


class NotRegularFile(UnsafePath):
    """An entry that was a regular file when listed is now something else (swapped for a
    link, a FIFO or a device between listing and opening)."""


class FileSystem(ABC):
    """A directory on some server or disk, addressed with relative POSIX paths.

    Instances are cheap: nothing connects until the first operation.  They are safe to
    share between threads, but operations on one instance are serialized; give each
    thread its own instance for parallel transfers.

    Each implementation declares the URL schemes it serves in `protocols` and parses its
    own URL in `from_url` (the registry only dispatches on the scheme).
    """

    protocols: ClassVar[tuple[str, ...]] = ()
    url: str  # the location, never with a password
    temp_naming: TempNaming | None = None  # how put_atomic names its temporaries

    @classmethod
    @abstractmethod
    def from_url(cls, url: str, options: ConnectOptions) -> FileSystem:
        """Parse `url` (one of `protocols`) and build an instance; nothing connects."""

    @abstractmethod
    def scan(self, path: str = "") -> Listing:
        """A directory's entries (not recursive), sorted into usable and skipped."""

    def list(self, path: str = "") -> list[FileInfo]:
        """Regular files and real folders of a directory; anything else is skipped with
        one warning per entry naming it (then DEBUG, so a daemon does not flood)."""
        listing = self.scan(path)
        for entry in listing.skipped:
            warn_skipped(self, normalize(path), entry)
        return listing.entries

    @abstractmethod
    def get(self, path: str, local: Path) -> None:
        """Download a regular file to `local`, which only appears once it is complete."""

    @abstractmethod
    def put(self, local: Path, path: str) -> None:
        """Upload a local file (not atomic: use `put_atomic` for that)."""

    @abstractmethod
    def read_bytes(self, path: str) -> bytes: ...

    @abstractmethod
    def write_bytes(self, path: str, data: bytes) -> None: ...

    @abstractmethod
    def rename(self, src: str, dst: str) -> None:
        """Rename, replacing `dst` if it exists (emulated where the protocol refuses)."""

    @abstractmethod
    def remove(self, path: str) -> None:
        """Delete a file; FileNotFoundError if it is not there."""

    @abstractmethod
    def mkdir(self, path: str) -> None:
        """Create a folder and its parents; fine if it already is a real folder.

        `UnsafePath` if a link, a file or anything else is in the way: this is how stage
        folders (processing/, done/, failed/) are checked before anything is moved.
        """

    @abstractmethod
    def exists(self, path: str) -> bool: ...

    @abstractmethod
    def close(self) -> None: ...

    def info(self, path: str) -> FileInfo:
        """One entry's size and mtime (FileNotFoundError if missing).

        The default lists the parent; backends with a cheap stat override it.
        """
        rel = normalize(path)
        if not rel:
            raise ValueError("info() needs a path below the root")
        parent, name = posixpath.split(rel)
        listing = self.scan(parent)
        for entry in listing.entries:
            if entry.name == name:
                return entry
        for skipped in listing.skipped:
            if skipped.name == name:
                raise NotRegularFile(
                    f"{name!r} is a {skipped.kind}: {skipped.reason}", url=self.url
                )
        raise FileNotFoundError(errno.ENOENT, "no such file", f"{self.url} {rel}")

    def __enter__(self) -> FileSystem:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.url}>"


def warn_skipped(fs: FileSystem, parent: str, entry: Skipped) -> None:
    """WARNING the first time an instance skips an entry, DEBUG after that."""
    key = (parent, entry.name, str(entry.kind))
    with _warned_lock:
        seen: set[tuple[str, str, str]] = fs.__dict__.setdefault("_skip_warned", set())
        first = key not in seen
        seen.add(key)
    where = f"{fs.url} {parent + '/' if parent else ''}"
    log.log(
        logging.WARNING if first else logging.DEBUG,
        "skipping %s%r (%s): %s",
        where,
        entry.name,
        entry.kind,
        entry.reason,
    )


_warned_lock = threading.Lock()


def normalize(path: str) -> str:
    """`path` as a clean relative POSIX path ("" for the root).

    A leading "/" means the root; ".." may not climb above it, and control characters
    are refused because FTP would read a CR/LF in a name as a second command.
    """
    if any(ch in path for ch in "\r\n\0"):
        raise ValueError("path contains a control character")
    parts: list[str] = []
    for seg in path.split("/"):
        if seg in ("", "."):
            continue
        if seg == "..":
            if not parts:
                raise ValueError(f"path escapes the filesystem root: {path!r}")
            parts.pop()
        else:
            parts.append(seg)
    return "/".join(parts)


def child(parent: str, name: str) -> str:
    """Relative path of `name` inside the relative directory `parent`."""
    return f"{parent}/{name}" if parent else name
