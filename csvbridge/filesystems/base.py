"""The one interface every drop backend (local folder, FTP/FTPS, SFTP) implements.

Deliberately small (the fsspec lesson): the watcher and the feed sink need to list a
directory, move whole files in both directions, rename and delete; nothing else.  Paths
are POSIX strings relative to the directory in the URL ("" is that directory), so callers
never build protocol-specific paths and can never wander above the configured root.

`RemoteFileSystem` holds what FTP and SFTP share: a lazily opened connection, a lock so
one instance may be shared between threads, and *one* transparent reconnect per operation
when the server dropped the connection (idle timeout, restart, 421) before the failure is
reported as `SourceUnavailable`.  `put_atomic` builds the upload that a concurrent poller
can never observe half-written.
"""

from __future__ import annotations

import contextlib
import errno
import io
import logging
import os
import posixpath
import secrets
import tempfile
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Generic, TypeVar
from urllib.parse import quote, unquote, urlsplit

from csvbridge.errors import ConfigError, CsvBridgeError, SourceUnavailable, TransientError
from csvbridge.observe import redact

log = logging.getLogger("csvbridge.filesystems")

T = TypeVar("T")
C = TypeVar("C")

DEFAULT_PORTS = {"ftp": 21, "ftps": 21, "sftp": 22}

# errno values that mean "the network or the peer went away", as opposed to local I/O
# errors (ENOSPC, EACCES...) that must surface unchanged.
NETWORK_ERRNOS = frozenset(
    {
        errno.ECONNRESET,
        errno.ECONNABORTED,
        errno.ECONNREFUSED,
        errno.EPIPE,
        errno.ENOTCONN,
        errno.ETIMEDOUT,
        errno.ENETDOWN,
        errno.ENETUNREACH,
        errno.ENETRESET,
        errno.EHOSTDOWN,
        errno.EHOSTUNREACH,
        errno.EBADF,
    }
)


@dataclass(frozen=True)
class FileInfo:
    """One directory entry.  `mtime` is epoch seconds (UTC), None if the server hides it."""

    name: str
    path: str
    size: int
    mtime: float | None
    is_dir: bool


class IncompleteTransfer(TransientError):
    """A transfer ended with fewer (or more) bytes than the file has: try again."""


class FileSystem(ABC):
    """A directory on some server or disk, addressed with relative POSIX paths.

    Instances are cheap: nothing connects until the first operation.  They are safe to
    share between threads, but operations on one instance are serialized; give each
    thread its own instance for parallel transfers.
    """

    url: str  # the location, never with a password

    @abstractmethod
    def list(self, path: str = "") -> list[FileInfo]:
        """Entries of a directory (files and directories, not recursive)."""

    @abstractmethod
    def get(self, path: str, local: Path) -> None:
        """Download to `local`, which only appears once the download is complete."""

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
        """Create a directory and its parents; fine if it already exists."""

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
        for entry in self.list(parent):
            if entry.name == name:
                return entry
        raise FileNotFoundError(errno.ENOENT, "no such file", f"{self.url} {rel}")

    def __enter__(self) -> FileSystem:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.url}>"


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


# --- URLs ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Location:
    """A parsed remote URL: everything but secrets."""

    scheme: str
    host: str
    port: int
    username: str | None
    path: str  # decoded, as written after the host ("" or "/..." )

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        user = f"{quote(self.username, safe='')}@" if self.username else ""
        port = "" if self.port == DEFAULT_PORTS.get(self.scheme) else f":{self.port}"
        return f"{self.scheme}://{user}{host}{port}{quote(self.path or '/')}"


def parse_remote_url(url: str, username: str | None = None) -> Location:
    """Split an ftp/ftps/sftp URL; a password in it is a ConfigError that never echoes it.

    Error messages name the scheme only: a malformed URL may hide a password anywhere.
    """
    scheme = url.split(":", 1)[0].lower()
    try:
        parts = urlsplit(url)
        has_password = parts.password is not None
        host = parts.hostname
        port = parts.port or DEFAULT_PORTS[scheme]
    except ValueError:
        malformed = True  # raised below, outside this block: the ValueError quotes the URL
    else:
        malformed = False
    if malformed:
        raise ConfigError(f"malformed {scheme} URL (not shown: it may contain a secret)")
    if has_password:
        where = f"{scheme}://{parts.hostname or '?'}"
        raise ConfigError(
            f"a password in the URL is not allowed ({where}); "
            "set it in the configuration or an environment variable"
        )
    if not host:
        raise ConfigError(f"{scheme} URL without a host")
    if parts.query or parts.fragment:
        raise ConfigError(
            f"{scheme} URL with a query or fragment is not supported ({scheme}://{host})"
        )
    url_user = unquote(parts.username) if parts.username else None
    if username and url_user and username != url_user:
        raise ConfigError(
            f"username given twice and differently ({url_user!r} in the URL, {username!r} in settings)"
        )
    return Location(scheme, host, port, username or url_user, unquote(parts.path))


# --- shared remote machinery ------------------------------------------------------------


class RemoteFileSystem(FileSystem, Generic[C]):
    """Lazily connected, reconnect-once plumbing shared by FTP and SFTP."""

    def __init__(self, location: Location, *, timeout: float) -> None:
        self.location = location
        self.url = location.url
        self.timeout = timeout
        self._conn: C | None = None
        self._lock = threading.RLock()

    # subclasses ------------------------------------------------------------------------
    @abstractmethod
    def _connect(self) -> C:
        """Open and authenticate; raise SourceUnavailable / TerminalError / HostKeyError."""

    @abstractmethod
    def _disconnect(self, conn: C, *, polite: bool) -> None:
        """Close `conn` without raising."""

    @abstractmethod
    def _lost(self, conn: C, exc: BaseException) -> bool:
        """True if `exc` means the connection is gone (worth one reconnect)."""

    # plumbing --------------------------------------------------------------------------
    def _run(self, what: str, op: Callable[[C], T]) -> T:
        """Run `op` on a live connection, reconnecting once if the server dropped it."""
        with self._lock:
            for attempt in (1, 2):
                conn = self._conn if self._conn is not None else self._open()
                try:
                    return op(conn)
                except CsvBridgeError:
                    raise
                except Exception as exc:
                    if not self._lost(conn, exc):
                        raise
                    self._drop()
                    if attempt == 2:
                        raise SourceUnavailable(
                            f"connection to {self.url} lost during {what}: {describe(exc)}"
                        ) from exc
                    log.info(
                        "connection to %s lost during %s (%s); reconnecting",
                        self.url,
                        what,
                        describe(exc),
                    )
                except BaseException:
                    self._drop()  # interrupted mid-protocol: the session state is unknown
                    raise
            raise AssertionError("unreachable")

    def _open(self) -> C:
        self._conn = self._connect()
        return self._conn

    def _drop(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            self._disconnect(conn, polite=False)

    @abstractmethod
    def _retrieve(self, conn: C, rel: str, out: IO[bytes]) -> None:
        """Download `rel` into `out`, streamed; IncompleteTransfer on a short read."""

    def get(self, path: str, local: Path) -> None:
        rel = normalize(path)
        with local_target(local) as out:
            self._run("download", lambda s: self._retrieve(s, rel, out))

    def read_bytes(self, path: str) -> bytes:
        rel = normalize(path)
        buf = io.BytesIO()
        self._run("download", lambda s: self._retrieve(s, rel, buf))
        return buf.getvalue()

    @abstractmethod
    def _store(self, conn: C, rel: str, src: IO[bytes]) -> None:
        """Upload `src` to `rel` over `conn`, streamed."""

    def put(self, local: Path, path: str) -> None:
        rel = normalize(path)
        with Path(local).open("rb") as src:
            self._run("upload", lambda s: self._store(s, rel, src))

    def write_bytes(self, path: str, data: bytes) -> None:
        rel = normalize(path)
        src = io.BytesIO(data)
        self._run("upload", lambda s: self._store(s, rel, src))

    def close(self) -> None:
        """Log out politely and forget the connection (the next call reconnects)."""
        with self._lock:
            conn, self._conn = self._conn, None
            if conn is not None:
                self._disconnect(conn, polite=True)


def describe(exc: BaseException) -> str:
    """A short, secret-free description of a low-level exception."""
    text = redact(str(exc)).strip()
    name = type(exc).__name__
    return f"{name}: {text}" if text else name


def is_network_error(exc: BaseException) -> bool:
    """Socket-level failures, as opposed to local I/O errors."""
    if isinstance(exc, (ConnectionError, TimeoutError, EOFError)):
        return True
    return isinstance(exc, OSError) and exc.errno in NETWORK_ERRNOS


@contextlib.contextmanager
def local_target(local: Path) -> Iterator[IO[bytes]]:
    """A temporary file beside `local` that replaces it only if the block succeeds.

    So a failed or interrupted download never leaves something that looks complete.
    """
    local = Path(local)
    fd, tmp = tempfile.mkstemp(prefix=f".{local.name}.", suffix=".part", dir=local.parent)
    try:
        with os.fdopen(fd, "w+b") as out:
            yield out
        os.replace(tmp, local)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def rewind(out: IO[bytes]) -> IO[bytes]:
    """Empty `out` so a retried download starts from scratch."""
    out.seek(0)
    out.truncate()
    return out


# --- atomic upload ----------------------------------------------------------------------


def put_atomic(
    fs: FileSystem, local: Path, path: str, *, attempts: int = 3, backoff: float = 0.5
) -> None:
    """Upload so that `path` only ever shows the complete file.

    Uploads to ``.<name>.<random>.part`` in the same directory, checks the remote size,
    then renames over `path`.  Transient failures are retried `attempts` times with
    exponential backoff; the temporary file is removed after any failure.
    """
    local = Path(local)
    rel = normalize(path)
    if not rel:
        raise ValueError("put_atomic needs a file path")
    size = local.stat().st_size
    parent, name = posixpath.split(rel)
    for attempt in range(1, attempts + 1):
        tmp = child(parent, f".{name}.{secrets.token_hex(6)}.part")
        done = False
        try:
            fs.put(local, tmp)
            remote = fs.info(tmp).size
            if remote != size:
                raise IncompleteTransfer(f"uploaded {remote} of {size} bytes", url=fs.url, path=rel)
            fs.rename(tmp, rel)
            done = True
            return
        except TransientError as exc:
            if attempt >= attempts:
                raise
            delay = backoff * 2 ** (attempt - 1)
            log.warning(
                "upload of %s to %s failed (%s); retry %d/%d in %.1fs",
                rel,
                fs.url,
                exc,
                attempt,
                attempts - 1,
                delay,
            )
            time.sleep(delay)
        finally:
            if not done:
                _discard(fs, tmp)
    raise AssertionError("unreachable")


def _discard(fs: FileSystem, tmp: str) -> None:
    """Best-effort removal of a temporary upload; never masks the original error."""
    try:
        fs.remove(tmp)
    except FileNotFoundError:
        pass
    except Exception as exc:
        log.warning("could not remove temporary file %s on %s: %s", tmp, fs.url, describe(exc))
