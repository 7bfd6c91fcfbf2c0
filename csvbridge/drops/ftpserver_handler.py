"""The pyftpdlib side of the FTP drop: logins, where an upload is written, and the
verdict on each finished upload -- complete (handed to the drop) or cut (discarded).

Why apart from the drop's lifecycle: this is the part that leans on pyftpdlib's
internals (its handler, data channel and file system hooks); `csvbridge.drops.ftpserver`
explains the rules these pieces carry out and assembles them into a server.
"""

from __future__ import annotations

import logging
import os
import secrets
import socket
from typing import TYPE_CHECKING, Any

from pyftpdlib.authorizers import AuthenticationFailed, DummyAuthorizer
from pyftpdlib.exceptions import _RetryError
from pyftpdlib.filesystems import AbstractedFS, FilesystemError
from pyftpdlib.ioloop import _ERRNOS_DISCONNECTED, _ERRNOS_RETRY
from pyftpdlib.log import logger

from csvbridge.drops.ftpserver_settings import check_password

if TYPE_CHECKING:
    from csvbridge.drops.ftpserver import FtpDrop

log = logging.getLogger("csvbridge.drops.ftpserver")

UPLOAD_SUFFIX = ".upload"


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
