"""What FTP and SFTP share: URL parsing, a lazily opened connection, reconnect-once.

`RemoteFileSystem` holds a lazily opened connection, a lock so one instance may be
shared between threads, and *one* transparent reconnect per operation when the server
dropped the connection (idle timeout, restart, 421) before the failure is reported as
`SourceUnavailable`.  The connection stays open between operations until `close()`, so a
daemon that keeps the instance (see `Connections`) keeps one session across polls.
"""

from __future__ import annotations

import contextlib
import errno
import io
import logging
import os
import tempfile
import threading
from abc import abstractmethod
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Generic, TypeVar
from urllib.parse import quote, unquote, urlsplit

from csvbridge.errors import ConfigError, CsvBridgeError, SourceUnavailable
from csvbridge.filesystems.base import FileSystem, normalize
from csvbridge.observe import redact

log = logging.getLogger("csvbridge.filesystems")

T = TypeVar("T")
C = TypeVar("C")

DEFAULT_PORTS = {"ftp": 21, "ftps": 21, "ftps+implicit": 990, "sftp": 22}

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
