"""A local (or mounted) folder behind the same interface as the remote drops.

Other people write to drops, and the tool often runs as root, so nothing below the root
folder is followed: every path is walked one component at a time from a descriptor of
the root, each opened with O_NOFOLLOW, and files are opened with O_NOFOLLOW|O_NONBLOCK and
checked with fstat *after* opening.  A link, FIFO or device swapped in between the listing
and the open is caught (`NotRegularFile`) instead of read, followed out of the drop, or
blocked on forever.  The configured root itself may be a link (the operator chose it).

A missing root folder is `SourceUnavailable` (an unmounted share comes back) unless the
filesystem was opened with ``create_missing`` (feed targets); a missing file inside it is
a plain FileNotFoundError like everywhere else.
"""

from __future__ import annotations

import contextlib
import errno
import os
import posixpath
import shutil
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import IO, ClassVar
from urllib.parse import unquote, urlsplit

from csvbridge.errors import ConfigError, SourceUnavailable
from csvbridge.filesystems.base import (
    EntryKind,
    FileInfo,
    FileSystem,
    Listing,
    NotRegularFile,
    Skipped,
    UnsafePath,
    child,
    normalize,
)
from csvbridge.filesystems.names import name_problem
from csvbridge.filesystems.registry import ConnectOptions
from csvbridge.filesystems.remote import local_target

_CHUNK = 1024 * 1024
_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_FILE_READ = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
_FILE_WRITE = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
PRIVATE = 0o600


def kind_of(mode: int) -> EntryKind:
    if stat.S_ISREG(mode):
        return EntryKind.FILE
    if stat.S_ISDIR(mode):
        return EntryKind.DIR
    if stat.S_ISLNK(mode):
        return EntryKind.LINK
    if stat.S_ISFIFO(mode):
        return EntryKind.FIFO
    if stat.S_ISSOCK(mode):
        return EntryKind.SOCKET
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return EntryKind.DEVICE
    return EntryKind.OTHER


class LocalFileSystem(FileSystem):
    """A directory on this machine; `file:///srv/drop` or a plain path."""

    protocols: ClassVar[tuple[str, ...]] = ("file",)

    def __init__(self, root: str | os.PathLike[str], *, create_missing: bool = True) -> None:
        self.root = Path(root).expanduser().absolute()
        self.url = self.root.as_uri()
        self.create_missing = create_missing

    @classmethod
    def from_url(cls, url: str, options: ConnectOptions) -> LocalFileSystem:
        fs = cls(local_path(url) if "://" in url else url, create_missing=options.create_missing)
        fs.temp_naming = options.temp_naming
        return fs

    # --- walking without following ----------------------------------------------------
    def _root_fd(self, create: bool = False) -> int:
        try:
            return os.open(self.root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except FileNotFoundError:
            if not (create and self.create_missing):
                raise SourceUnavailable(
                    f"folder {self.root} does not exist", url=self.url
                ) from None
        except NotADirectoryError:
            raise SourceUnavailable(f"{self.root} is not a folder", url=self.url) from None
        except OSError as exc:
            raise SourceUnavailable(
                f"folder {self.root} is not available: {exc.strerror}", url=self.url
            ) from None
        self.root.mkdir(parents=True, exist_ok=True)
        return self._root_fd()

    @contextlib.contextmanager
    def _dir(self, rel: str, *, create: bool = False) -> Iterator[int]:
        """A descriptor of the folder `rel`, reached without following any link."""
        fd = self._root_fd(create)
        try:
            walked = ""
            for seg in rel.split("/") if rel else []:
                walked = child(walked, seg)
                try:
                    nfd = os.open(seg, _DIR, dir_fd=fd)
                except FileNotFoundError:
                    if not create:
                        raise FileNotFoundError(
                            errno.ENOENT, "no such directory", f"{self.url} {walked}"
                        ) from None
                    with contextlib.suppress(FileExistsError):
                        os.mkdir(seg, dir_fd=fd)
                    nfd = self._open_dir(seg, fd, walked)
                except OSError as exc:
                    raise self._unsafe(exc, walked, fd, seg) from None
                os.close(fd)
                fd = nfd
            yield fd
        finally:
            os.close(fd)

    def _open_dir(self, seg: str, fd: int, walked: str) -> int:
        try:
            return os.open(seg, _DIR, dir_fd=fd)
        except OSError as exc:
            raise self._unsafe(exc, walked, fd, seg) from None

    def _unsafe(self, exc: OSError, walked: str, fd: int, seg: str) -> OSError | UnsafePath:
        if exc.errno not in (errno.ELOOP, errno.ENOTDIR):
            return exc
        try:
            kind = kind_of(os.stat(seg, dir_fd=fd, follow_symlinks=False).st_mode)
        except OSError:
            kind = EntryKind.OTHER
        return UnsafePath(f"{walked!r} is a {kind}, not a folder of the drop", url=self.url)

    @contextlib.contextmanager
    def _parent(self, path: str, *, create: bool = False) -> Iterator[tuple[int, str]]:
        rel = normalize(path)
        if not rel:
            raise IsADirectoryError(errno.EISDIR, "the root is a folder", self.url)
        parent, name = posixpath.split(rel)
        with self._dir(parent, create=create) as fd:
            yield fd, name

    @contextlib.contextmanager
    def _open_file(self, path: str) -> Iterator[IO[bytes]]:
        """A regular file of the drop, opened for reading without following a link."""
        rel = normalize(path)
        with self._parent(rel) as (dfd, name):
            try:
                fd = os.open(name, _FILE_READ, dir_fd=dfd)
            except OSError as exc:
                if exc.errno == errno.ELOOP:
                    raise NotRegularFile(f"{rel!r} is a symlink", url=self.url) from None
                if exc.errno == errno.ENOENT:
                    raise FileNotFoundError(
                        errno.ENOENT, "no such file", f"{self.url} {rel}"
                    ) from None
                raise
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            os.close(fd)
            raise NotRegularFile(f"{rel!r} is a {kind_of(mode)}, not a regular file", url=self.url)
        os.set_blocking(fd, True)
        with os.fdopen(fd, "rb") as src:
            yield src

    # --- the interface ----------------------------------------------------------------
    def scan(self, path: str = "") -> Listing:
        rel = normalize(path)
        listing = Listing()
        with self._dir(rel) as fd, os.scandir(fd) as entries:
            for entry in entries:
                try:
                    st = entry.stat(follow_symlinks=False)
                except FileNotFoundError:  # vanished between readdir and stat
                    continue
                kind = kind_of(st.st_mode)
                problem = name_problem(entry.name)
                if problem is not None:
                    listing.skipped.append(Skipped(entry.name, kind, problem))
                elif kind is EntryKind.FILE or kind is EntryKind.DIR:
                    is_dir = kind is EntryKind.DIR
                    info = FileInfo(
                        entry.name, child(rel, entry.name), st.st_size, st.st_mtime, is_dir
                    )
                    (listing.dirs if is_dir else listing.files).append(info)
                else:
                    listing.skipped.append(Skipped(entry.name, kind, _WHY[kind]))
        return listing

    def info(self, path: str) -> FileInfo:
        rel = normalize(path)
        if not rel:
            st = os.stat(self.root)
            return FileInfo(self.root.name, "", st.st_size, st.st_mtime, True)
        with self._parent(rel) as (fd, name):
            try:
                st = os.stat(name, dir_fd=fd, follow_symlinks=False)
            except FileNotFoundError:
                raise FileNotFoundError(errno.ENOENT, "no such file", f"{self.url} {rel}") from None
        kind = kind_of(st.st_mode)
        if kind not in (EntryKind.FILE, EntryKind.DIR):
            raise NotRegularFile(f"{rel!r} is a {kind}", url=self.url)
        return FileInfo(name, rel, st.st_size, st.st_mtime, kind is EntryKind.DIR)

    def get(self, path: str, local: Path) -> None:
        with self._open_file(path) as src, local_target(local) as out:
            shutil.copyfileobj(src, out, _CHUNK)

    def read_bytes(self, path: str) -> bytes:
        with self._open_file(path) as src:
            return src.read()

    def _write(self, path: str, write: object) -> None:
        rel = normalize(path)
        with self._parent(rel) as (dfd, name):
            with contextlib.suppress(FileNotFoundError):  # never open (or truncate) a device
                kind = kind_of(os.stat(name, dir_fd=dfd, follow_symlinks=False).st_mode)
                if kind is not EntryKind.FILE:
                    raise NotRegularFile(f"{rel!r} is a {kind}, not a regular file", url=self.url)
            try:
                fd = os.open(name, _FILE_WRITE, PRIVATE, dir_fd=dfd)
            except OSError as exc:
                if exc.errno in (errno.ELOOP, errno.ENXIO):
                    raise NotRegularFile(f"{rel!r} is not a regular file", url=self.url) from None
                raise
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            os.close(fd)
            raise NotRegularFile(f"{rel!r} is a {kind_of(mode)}, not a regular file", url=self.url)
        os.set_blocking(fd, True)
        with os.fdopen(fd, "wb") as out:
            write(out)  # type: ignore[operator]

    def put(self, local: Path, path: str) -> None:
        with Path(local).open("rb") as src:
            self._write(path, lambda out: shutil.copyfileobj(src, out, _CHUNK))

    def write_bytes(self, path: str, data: bytes) -> None:
        self._write(path, lambda out: out.write(data))

    def rename(self, src: str, dst: str) -> None:
        with self._parent(src) as (sfd, sname), self._parent(dst) as (dfd, dname):
            try:
                os.replace(sname, dname, src_dir_fd=sfd, dst_dir_fd=dfd)
            except FileNotFoundError:
                raise FileNotFoundError(
                    errno.ENOENT, "no such file", f"{self.url} {src} -> {dst}"
                ) from None

    def remove(self, path: str) -> None:
        with self._parent(path) as (fd, name):
            try:
                os.unlink(name, dir_fd=fd)
            except FileNotFoundError:
                raise FileNotFoundError(
                    errno.ENOENT, "no such file", f"{self.url} {path}"
                ) from None

    def mkdir(self, path: str) -> None:
        with self._dir(normalize(path), create=True):
            pass

    def exists(self, path: str) -> bool:
        rel = normalize(path)
        if not rel:
            return self.root.is_dir()
        try:
            with self._parent(rel) as (fd, name):
                os.stat(name, dir_fd=fd, follow_symlinks=False)
        except (FileNotFoundError, NotADirectoryError, SourceUnavailable, UnsafePath):
            return False
        return True

    def close(self) -> None:
        """Nothing to release."""


_WHY = {
    EntryKind.LINK: "symbolic links are never followed in a drop",
    EntryKind.FIFO: "a FIFO is not a file (reading it would block the pass)",
    EntryKind.SOCKET: "a socket is not a file",
    EntryKind.DEVICE: "a device is not a file",
    EntryKind.OTHER: "not a regular file",
}


def local_path(url: str) -> str:
    """``file:///srv/drop`` -> /srv/drop; ``file://./feeds`` -> ./feeds (relative).

    Public so the configuration resolves relative drops with this parser, not a second one."""
    parts = urlsplit(url)
    host = parts.netloc
    if host in ("", "localhost"):
        return unquote(parts.path)
    if host in (".", ".."):
        return host + unquote(parts.path)
    raise ConfigError(f"file URLs cannot name a remote host ({host!r}); mount it instead")
