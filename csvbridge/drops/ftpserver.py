"""csvbridge as the FTP drop: an FTPS server (pyftpdlib) that hands over each upload the
moment it is complete.

Why: many ERPs and shops can only *push* a file to an FTP server.  Hosting the drop
ourselves also tells us exactly when a file is whole -- no polling, no stability wait.

How an upload goes:

* ``STOR orders.csv`` writes into a hidden ``.orders.csv.<random>.upload`` beside the final
  name, private (0600), so a poller (or the runner's own scan) never sees a partial file;
* beyond ``max_file_bytes`` the write fails: the client gets ``426 File too large``, the
  partial file is dropped;
* when the data connection ends, pyftpdlib reports it complete or incomplete.  In stream
  mode a clean end of the data connection *is* the end-of-file marker, so we also refuse a
  file when the data connection was reset, when a TLS data stream ended without its
  ``close_notify`` (a truncation), or when the client's control connection closes without
  a further command within ``confirm_seconds`` (0.5 s) of the data's end: a client that
  dies mid-transfer closes both connections at once (the kernel may send the data FIN
  first).  A live client confirms at once by its next command (QUIT, STOR...), or by
  keeping its session open for that long.  A client that deliberately closes the data
  connection early and keeps its session looks complete to any FTP server: undetectable;
* a complete upload is renamed to its final name in the user's home (never replacing a
  file there: ``orders.1.csv`` if ``orders.csv`` is still waiting) and ``on_file`` is
  called with a `DroppedFile`; an incomplete one is deleted, or moved to
  ``quarantine_dir``, and logged, never handed over.

Passwords are stored as PBKDF2-SHA256 hashes (`hash_password` makes one).  TLS is required
on control and data connections unless ``allow_plain_ftp`` is set.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import logging
import os
import secrets
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator
from pyftpdlib.authorizers import AuthenticationFailed, DummyAuthorizer
from pyftpdlib.exceptions import _RetryError
from pyftpdlib.filesystems import AbstractedFS, FilesystemError
from pyftpdlib.handlers import DTPHandler, FTPHandler
from pyftpdlib.ioloop import _ERRNOS_DISCONNECTED, _ERRNOS_RETRY, IOLoop
from pyftpdlib.log import logger
from pyftpdlib.servers import ThreadedFTPServer

from csvbridge.errors import ConfigError, DropError

log = logging.getLogger("csvbridge.drops.ftpserver")

HASH_SCHEME = "pbkdf2_sha256"
DEFAULT_ITERATIONS = 600_000  # OWASP 2023 for PBKDF2-HMAC-SHA256
UPLOAD_SUFFIX = ".upload"


# -- passwords -------------------------------------------------------------------------


def hash_password(password: str, *, iterations: int = DEFAULT_ITERATIONS) -> str:
    """``pbkdf2_sha256$<iterations>$<salt>$<hash>`` (base64), for ``users[].password_hash``."""
    salt = secrets.token_bytes(16)
    digest = hashlib.pbkdf2_hmac("sha256", password.encode(), salt, iterations)
    b64 = base64.b64encode
    return f"{HASH_SCHEME}${iterations}${b64(salt).decode()}${b64(digest).decode()}"


def check_password(password: str, encoded: str) -> bool:
    """True when `password` matches `encoded` (constant-time comparison)."""
    try:
        scheme, iterations, salt, digest = encoded.split("$")
        if scheme != HASH_SCHEME:
            return False
        actual = hashlib.pbkdf2_hmac(
            "sha256", password.encode(), base64.b64decode(salt), int(iterations)
        )
        return hmac.compare_digest(actual, base64.b64decode(digest))
    except (ValueError, TypeError):
        return False


# -- settings ---------------------------------------------------------------------------


class FtpUser(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.@-]{0,63}$")
    password_hash: SecretStr  # from hash_password()
    home: Path | None = None  # relative to the drop's root; default: root/<name>

    @field_validator("password_hash")
    @classmethod
    def _looks_hashed(cls, v: SecretStr) -> SecretStr:
        if not v.get_secret_value().startswith(HASH_SCHEME + "$"):
            raise ValueError(f"must be a {HASH_SCHEME} hash (csvbridge makes one), not a password")
        return v


class FtpDropSettings(BaseModel):
    """The embedded drop (source ``url: ftpserver://0.0.0.0:2121/``)."""

    model_config = ConfigDict(extra="forbid")

    host: str = "0.0.0.0"
    port: int = Field(2121, ge=0, le=65535)
    root: Path  # user homes live under it
    users: list[FtpUser] = Field(min_length=1)
    tls_cert: Path | None = None  # PEM certificate (chain) for explicit FTPS (AUTH TLS)
    tls_key: Path | None = None
    allow_plain_ftp: bool = False  # accept sessions without TLS (trusted networks only)
    passive_ports: tuple[int, int] | None = None  # inclusive range to open in a firewall
    masquerade_address: str | None = None  # public address to announce behind NAT
    max_file_bytes: int = Field(1 << 30, ge=1)
    max_connections: int = Field(64, ge=1)
    max_connections_per_ip: int = Field(16, ge=1)
    idle_timeout_seconds: int = Field(300, ge=1)
    quarantine_dir: Path | None = None  # keep interrupted uploads here instead of deleting
    # after an upload's data connection ends, the client's control connection must stay up
    # this long (or the client send a command) before the file is taken: a client that
    # dies mid-upload closes both at once.  0 takes files at once (trusting a clean end).
    confirm_seconds: float = Field(0.5, ge=0, le=30)

    @classmethod
    def from_url(cls, url: str, **values: Any) -> FtpDropSettings:
        """``ftpserver://HOST:PORT/`` plus the other settings."""
        parts = urlsplit(url)
        if parts.scheme != "ftpserver":
            raise ConfigError(f"not an ftpserver:// URL: {url}")
        port = 2121 if parts.port is None else parts.port  # 0: any free port (tests)
        return cls(host=parts.hostname or "0.0.0.0", port=port, **values)


@dataclass(frozen=True)
class DroppedFile:
    """One complete upload, in its final place."""

    user: str
    path: Path
    size: int
    remote: str  # client address


@dataclass(frozen=True)
class RefusedUpload:
    """An upload that was not handed over, and why (for logs, metrics and tests)."""

    user: str | None
    name: str
    reason: str
    received_bytes: int


# -- pyftpdlib pieces --------------------------------------------------------------------


class _Authorizer(DummyAuthorizer):
    """Users from the settings; passwords checked against their hashes."""

    def __init__(self, users: dict[str, str]) -> None:
        super().__init__()
        self.hashes = users

    def validate_authentication(self, username: str, password: str, handler: Any) -> None:
        encoded = self.hashes.get(username)
        if encoded is None or not check_password(password, encoded):
            log.warning("ftp drop: failed login for %r from %s", username, handler.remote_ip)
            raise AuthenticationFailed("Authentication failed.")


class _Upload:
    """The file object pyftpdlib writes an upload into: counts bytes against the quota."""

    def __init__(self, temp: str, final: str, limit: int) -> None:
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        self._file = os.fdopen(fd, "wb")
        self.name, self.final, self.limit, self.size = temp, final, limit, 0

    def write(self, data: bytes) -> int:
        self.size += len(data)
        if self.size > self.limit:
            raise OSError(27, f"File too large (limit {self.limit} bytes)")  # EFBIG
        return self._file.write(data)

    @property
    def closed(self) -> bool:
        return self._file.closed

    def close(self) -> None:
        self._file.close()


class _DropFS(AbstractedFS):
    """Uploads go to a hidden temporary name; everything else is the usual file system."""

    limit = 1 << 30

    def __init__(self, root: str, cmd_channel: Any) -> None:
        super().__init__(root, cmd_channel)
        self.uploads: dict[str, _Upload] = {}

    def open(self, filename: str, mode: str) -> Any:
        if "w" not in mode:
            return super().open(filename, mode)
        folder, name = os.path.split(filename)
        if name.startswith("."):
            raise FilesystemError("names starting with a dot are reserved")
        temp = os.path.join(folder, f".{name}.{secrets.token_hex(4)}{UPLOAD_SUFFIX}")
        upload = _Upload(temp, filename, self.limit)
        self.uploads[temp] = upload
        return upload


class _CutAwareDTP:
    """A data connection that tells a finished upload from a cut one.

    pyftpdlib takes any end of an upload's data connection as its end of file.  Before
    that verdict is final (``close``), this checks the three signs of a cut: a reset
    connection, a TLS stream without ``close_notify``, a client whose control connection
    is gone too.  A cut upload is answered 426 and reported as incomplete.
    """

    reset = False
    cut: str | None = None

    def recv(self, buffer_size: int) -> bytes:
        sock: Any = self.socket  # type: ignore[attr-defined]
        if not isinstance(sock, socket.socket):  # TLS: judged by its close_notify instead
            return super().recv(buffer_size)  # type: ignore[misc, no-any-return]
        # the plain path of pyftpdlib's own recv, remembering a reset
        try:
            data: bytes = sock.recv(buffer_size)
        except OSError as err:
            if err.errno in _ERRNOS_DISCONNECTED:
                self.reset = True
                self.handle_close()  # type: ignore[attr-defined]
                return b""
            if err.errno in _ERRNOS_RETRY:
                raise _RetryError from err
            raise
        if not data:
            self.handle_close()  # type: ignore[attr-defined]
        return data

    def _why_cut(self) -> str | None:
        if self.reset:
            return "the data connection was reset"
        sock: Any = self.socket  # type: ignore[attr-defined]
        if not isinstance(sock, socket.socket):
            from OpenSSL import SSL

            if isinstance(sock, SSL.Connection) and not (
                sock.get_shutdown() & SSL.RECEIVED_SHUTDOWN
            ):
                return "the TLS data stream ended without close_notify (truncated)"
        if _peer_gone(self.cmd_channel.socket):  # type: ignore[attr-defined]
            return "the client's control connection closed with it"
        return None

    def close(self) -> None:
        me: Any = self
        if me.receive and me.transfer_finished and not me._closed and self.cut is None:
            self.cut = self._why_cut() or ""
            if self.cut:
                me.transfer_finished = False
                me._resp = (f"426 Upload not accepted: {self.cut}.", logger.warning)
        super().close()  # type: ignore[misc]


def _peer_gone(sock: Any) -> bool:
    """True when the other end closed or reset `sock` (peeked, nothing consumed)."""
    try:
        with socket.socket(fileno=os.dup(sock.fileno())) as peek:
            return peek.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) == b""
    except BlockingIOError:
        return False
    except OSError:
        return True


class _DropHandlerMixin:
    """What the drop adds to pyftpdlib's handler: take or refuse each finished upload."""

    drop: FtpDrop

    def ftp_APPE(self, file: str) -> None:  # noqa: N802 - pyftpdlib's naming
        self.respond("550 Appending is not allowed: upload the whole file with STOR.")  # type: ignore[attr-defined]

    def ftp_STOU(self, line: str) -> None:  # noqa: N802
        self.respond("502 STOU is not supported: use STOR with a name.")  # type: ignore[attr-defined]

    def ftp_REST(self, line: str) -> None:  # noqa: N802
        self.respond("502 Resuming is not supported: upload the whole file again.")  # type: ignore[attr-defined]

    _awaiting: list[_Upload] | None = None  # complete uploads waiting for the verdict
    _timer: Any = None

    def on_file_received(self, file: str) -> None:
        """The data connection ended cleanly.  A client that died mid-upload closes its
        control connection a moment later: hand over once the client shows it is alive
        (its next command) or after ``confirm_seconds`` with the session still open."""
        upload = self.fs.uploads.pop(file, None)  # type: ignore[attr-defined]
        if upload is None:
            return
        grace = self.drop.settings.confirm_seconds
        if grace <= 0:
            self.drop._hand_over(upload, self.username, self.remote_ip)  # type: ignore[attr-defined]
            return
        self._awaiting = [*(self._awaiting or []), upload]
        if self._timer is None:
            self._timer = self.ioloop.call_later(grace, self._confirm)  # type: ignore[attr-defined]

    def _confirm(self) -> None:
        awaiting, self._awaiting = self._awaiting or [], None
        if self._timer is not None:
            if not self._timer.cancelled:
                self._timer.cancel()
            self._timer = None
        for upload in awaiting:
            self.drop._hand_over(upload, self.username, self.remote_ip)  # type: ignore[attr-defined]

    def found_terminator(self) -> None:
        if self._awaiting:  # a command: the client is alive after its upload
            self._confirm()
        super().found_terminator()  # type: ignore[misc]

    def close(self) -> None:
        """Session over: an upload it opened and never finished is not taken, nor one
        whose client vanished before confirming it (unless the drop itself is stopping)."""
        fs: Any = self.fs  # type: ignore[attr-defined]
        pending = list(fs.uploads.values()) if fs is not None else []
        user = getattr(self, "username", None)
        if self._awaiting:
            if self.drop._stop.is_set():
                self._confirm()
            else:
                awaiting, self._awaiting = self._awaiting, None
                for upload in awaiting:
                    why = "the client's control connection closed right after the data"
                    self.drop._discard(upload, user, why)
        if self._timer is not None and not self._timer.cancelled:
            self._timer.cancel()
        try:
            super().close()  # type: ignore[misc]
        finally:  # even when pyftpdlib's own close failed half-way
            for upload in pending:
                if upload.name in fs.uploads:
                    del fs.uploads[upload.name]
                    upload.close()
                    self.drop._discard(upload, user, "the session ended before the upload did")

    def on_incomplete_file_received(self, file: str) -> None:
        upload = self.fs.uploads.pop(file, None)  # type: ignore[attr-defined]
        if upload is not None:
            cut = getattr(self.data_channel, "cut", None)  # type: ignore[attr-defined]
            why = "over the size limit" if upload.size > upload.limit else cut or "interrupted"
            self.drop._discard(upload, self.username, why)  # type: ignore[attr-defined]


# -- the drop ------------------------------------------------------------------------------


class FtpDrop:
    """The embedded FTP(S) drop.  ``start()`` returns once it accepts connections."""

    def __init__(self, settings: FtpDropSettings, on_file: Callable[[DroppedFile], None]) -> None:
        self.settings, self.on_file = settings, on_file
        self._server: ThreadedFTPServer | None = None
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._lock = threading.RLock()
        self.refused: list[RefusedUpload] = []  # since start, newest last

    @property
    def address(self) -> tuple[str, int]:
        if self._server is None:
            raise DropError("the FTP drop is not running")
        host, port = self._server.address[:2]
        return host, port

    def home_of(self, user: FtpUser) -> Path:
        root = self.settings.root.resolve()
        return (root / (user.home or Path(user.name))).resolve()

    def _handler(self) -> type[FTPHandler]:
        s = self.settings
        tls = s.tls_cert is not None and s.tls_key is not None
        if (s.tls_cert is None) != (s.tls_key is None):
            raise DropError("the FTP drop needs both tls_cert and tls_key, or neither")
        if not tls and not s.allow_plain_ftp:
            raise DropError(
                "the FTP drop needs tls_cert and tls_key (FTPS); set allow_plain_ftp: true "
                "to accept plain FTP on a trusted network"
            )
        authorizer = _Authorizer({u.name: u.password_hash.get_secret_value() for u in s.users})
        for user in s.users:
            home = self.home_of(user)
            root = s.root.resolve()
            if home != root and root not in home.parents:
                raise DropError(f"the home of {user.name} is outside the drop's root")
            home.mkdir(mode=0o700, parents=True, exist_ok=True)
            self._sweep(home)
            authorizer.add_user(user.name, "", str(home), perm="elw")
        if tls:
            from pyftpdlib.handlers import TLS_DTPHandler, TLS_FTPHandler

            base, base_dtp = TLS_FTPHandler, TLS_DTPHandler
        else:
            base, base_dtp = FTPHandler, DTPHandler
        dtp = type("DropDTP", (_CutAwareDTP, base_dtp), {})
        fs = type("DropFS", (_DropFS,), {"limit": s.max_file_bytes})
        attrs: dict[str, Any] = {
            "drop": self,
            "authorizer": authorizer,
            "dtp_handler": dtp,
            "abstracted_fs": fs,
            "banner": "csvbridge drop ready.",
            "timeout": s.idle_timeout_seconds,
            "use_sendfile": False,
            "permit_foreign_addresses": False,
            "masquerade_address": s.masquerade_address,
        }
        if s.passive_ports:
            attrs["passive_ports"] = list(range(s.passive_ports[0], s.passive_ports[1] + 1))
        if tls:
            for path in (s.tls_cert, s.tls_key):
                if not os.access(str(path), os.R_OK):
                    raise DropError(f"cannot read the TLS file {path}")
            attrs.update(
                certfile=str(s.tls_cert),
                keyfile=str(s.tls_key),
                tls_control_required=not s.allow_plain_ftp,
                tls_data_required=not s.allow_plain_ftp,
            )
        handler = type("DropHandler", (_DropHandlerMixin, base), attrs)
        if tls:  # load the certificate now: a bad one must stop the start, not each login
            try:
                handler.get_ssl_context()  # type: ignore[attr-defined]
            except Exception as exc:
                raise DropError(f"cannot use the TLS certificate or key: {exc}") from None
        return handler

    def _sweep(self, home: Path) -> None:
        """Partial uploads left by a previous run (crash, stop mid-transfer) are never
        handed over."""
        for stale in home.glob(f".*{UPLOAD_SUFFIX}"):
            self._dispose(stale, "left over from an earlier run")

    def start(self) -> FtpDrop:
        # pyftpdlib installs its own stderr handler when it finds none: give it one that
        # does nothing, so its lines go through csvbridge's logging setup (text or JSON,
        # its level) instead of being printed beside it
        if not logger.handlers:
            logger.addHandler(logging.NullHandler())
        handler = self._handler()
        s = self.settings
        try:
            server = ThreadedFTPServer((s.host, s.port), handler, ioloop=IOLoop())
        except OSError as exc:
            raise DropError(f"cannot listen on {s.host}:{s.port}: {exc.strerror}") from None
        server.max_cons, server.max_cons_per_ip = s.max_connections, s.max_connections_per_ip
        self._server = server
        self._stop.clear()
        self._thread = threading.Thread(target=self._serve, name="ftp-drop", daemon=True)
        self._thread.start()
        log.info(
            "ftp drop listening on %s:%d (%s)", *self.address, "FTPS" if s.tls_cert else "plain FTP"
        )
        return self

    def _serve(self) -> None:
        server = self._server
        assert server is not None
        try:
            while not self._stop.is_set():
                server.serve_forever(timeout=0.1, blocking=False, handle_exit=False)
        finally:
            server.close_all()

    def stop(self) -> None:
        """Stop listening and end every session (uploads in progress are discarded)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=15)
            self._thread = None
        self._server = None

    def __enter__(self) -> FtpDrop:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- hand-over ---------------------------------------------------------------------

    def _hand_over(self, upload: _Upload, user: str, remote: str) -> None:
        final = Path(upload.final)
        with self._lock:  # two sessions finishing the same name: both kept
            target = final
            for n in range(1, 10_000):
                try:
                    os.link(upload.name, target)
                    break
                except FileExistsError:
                    target = final.with_name(f"{final.stem}.{n}{final.suffix}")
            else:
                self._discard(upload, user, "no free name")
                return
            os.unlink(upload.name)
        dropped = DroppedFile(user, target, upload.size, remote)
        log.info("ftp drop: %s uploaded %s (%d bytes)", user, target.name, upload.size)
        try:
            self.on_file(dropped)
        except Exception:  # the file stays in the home: a later scan takes it
            log.exception("ftp drop: handing over %s failed; it stays in place", target)

    def _discard(self, upload: _Upload, user: str | None, why: str) -> None:
        with self._lock:
            self.refused.append(
                RefusedUpload(user, os.path.basename(upload.final), why, upload.size)
            )
        log.warning(
            "ftp drop: upload of %s by %s not taken (%s, %d bytes received)",
            os.path.basename(upload.final),
            user,
            why,
            upload.size,
        )
        self._dispose(Path(upload.name), why)

    def _dispose(self, path: Path, why: str) -> None:
        quarantine = self.settings.quarantine_dir
        try:
            if quarantine is None:
                path.unlink(missing_ok=True)
                return
            quarantine.mkdir(mode=0o700, parents=True, exist_ok=True)
            stamp = time.strftime("%Y%m%dT%H%M%S")
            os.replace(path, quarantine / f"{stamp}-{path.name.lstrip('.')}")
        except OSError as exc:
            log.error("ftp drop: cannot dispose of %s (%s): %s", path, why, exc)
