"""SFTP drops over paramiko, with host keys verified by default.

We drive `paramiko.Transport` ourselves instead of `SSHClient` so that the host-key
decision is ours and explicit: a pinned fingerprint, else an OpenSSH known_hosts file,
else refusal with the fingerprint the server presented (so an operator can check it and
pin it) — unless `allow_unknown_host` says to trust on first sight, which is logged.
A key that *mismatches* a pin or a known_hosts entry is always refused: that is the
man-in-the-middle case, and no setting should wave it through.

Entries are judged by their own attributes (READDIR and LSTAT do not follow links), and
a download checks the opened handle (FSTAT) too, so a link or FIFO swapped in after the
listing is refused.  paramiko's per-connection INFO chatter is shown at DEBUG only.

URL paths are absolute (`sftp://host/srv/exports`); `sftp://host/~/exports` is relative
to the login directory, as with curl.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import posixpath
import secrets
import shutil
import socket
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import IO, ClassVar

import paramiko
from pydantic import SecretStr

from csvbridge.errors import ConfigError, HostKeyError, SourceUnavailable, TerminalError
from csvbridge.filesystems.base import (
    EntryKind,
    FileInfo,
    IncompleteTransfer,
    Listing,
    NotRegularFile,
    Skipped,
    UnsafePath,
    child,
    normalize,
)
from csvbridge.filesystems.local import kind_of
from csvbridge.filesystems.names import name_problem
from csvbridge.filesystems.registry import ConnectOptions
from csvbridge.filesystems.remote import (
    Location,
    RemoteFileSystem,
    describe,
    is_network_error,
    parse_remote_url,
    rewind,
)
from csvbridge.filesystems.ssh_keys import HostKeyPolicy, Pin, load_key, load_known_hosts

log = logging.getLogger("csvbridge.filesystems.sftp")

_BLOCK = 32 * 1024  # paramiko's SFTP packet size: larger reads are split anyway


class _QuietParamiko(logging.Filter):
    """paramiko logs ~4 INFO lines per connection ("Connected (version ...)", "Auth
    banner", "Authentication (password) successful!", "Opened sftp connection"): pass
    them on as DEBUG, and only when csvbridge itself logs at DEBUG.  Warnings and errors
    pass unchanged, except the dropped-socket error the reconnect handles."""

    def filter(self, record: logging.LogRecord) -> bool:
        # "Socket exception: Connection reset" from the transport thread is the server
        # ending an idle session: the next operation reconnects and says so itself
        lost = str(record.msg).startswith("Socket exception")
        if record.levelno >= logging.WARNING and not lost:
            return True
        if not logging.getLogger("csvbridge").isEnabledFor(logging.DEBUG):
            return False
        record.levelno, record.levelname = logging.DEBUG, "DEBUG"
        return True


# logger filters do not apply to records propagated from children: filter each channel
for _name in ("paramiko", "paramiko.transport", "paramiko.transport.sftp"):
    _channel = logging.getLogger(_name)
    if not any(isinstance(f, _QuietParamiko) for f in _channel.filters):
        _channel.addFilter(_QuietParamiko())


@dataclass
class _Session:
    transport: paramiko.Transport
    sftp: paramiko.SFTPClient
    root: str


class SFTPFileSystem(RemoteFileSystem[_Session]):
    """A directory on an SFTP server."""

    protocols: ClassVar[tuple[str, ...]] = ("sftp",)

    def __init__(
        self,
        location: Location,
        *,
        password: SecretStr | None = None,
        private_key: Path | None = None,
        private_key_passphrase: SecretStr | None = None,
        known_hosts: Path | None = None,
        host_key_fingerprint: str | None = None,
        allow_unknown_host: bool = False,
        timeout: float = 30.0,
    ) -> None:
        super().__init__(location, timeout=timeout)
        if not location.username:
            raise ConfigError(f"no username for {self.url} (put it in the URL or settings)")
        if password is None and private_key is None:
            raise ConfigError(f"no password or private key configured for {self.url}")
        self._password = password
        self._pkey = load_key(private_key, private_key_passphrase) if private_key else None
        self._host_keys = HostKeyPolicy(
            self.url,
            _host_entry(location),
            Pin.parse(host_key_fingerprint) if host_key_fingerprint else None,
            load_known_hosts(known_hosts) if known_hosts else None,
            allow_unknown_host,
        )

    @classmethod
    def from_url(cls, url: str, options: ConnectOptions) -> SFTPFileSystem:
        fs = cls(
            parse_remote_url(url, options.username),
            password=options.password,
            private_key=options.private_key,
            private_key_passphrase=options.private_key_passphrase,
            known_hosts=options.known_hosts,
            host_key_fingerprint=options.host_key_fingerprint,
            allow_unknown_host=options.allow_unknown_host,
            timeout=options.timeout,
        )
        fs.temp_naming = options.temp_naming
        return fs

    # --- connection -----------------------------------------------------------------
    def _connect(self) -> _Session:
        loc = self.location
        try:
            sock = socket.create_connection((loc.host, loc.port), timeout=self.timeout)
        except OSError as exc:
            raise SourceUnavailable(f"cannot connect to {self.url}: {describe(exc)}") from exc
        transport = paramiko.Transport(sock)
        try:
            transport.banner_timeout = self.timeout
            transport.auth_timeout = self.timeout
            self._host_keys.prefer_known_types(transport)
            transport.start_client(timeout=self.timeout)
            self._host_keys.check(transport.get_remote_server_key())
            self._authenticate(transport)
            sftp = paramiko.SFTPClient.from_transport(transport)
            if sftp is None:
                raise SourceUnavailable(f"{self.url} refused the SFTP subsystem")
            channel = sftp.get_channel()
            if channel is not None:
                channel.settimeout(self.timeout)
            root = self._root(sftp)
        except (HostKeyError, TerminalError, SourceUnavailable):
            transport.close()
            raise
        except (paramiko.SSHException, OSError, EOFError) as exc:
            transport.close()
            raise SourceUnavailable(f"cannot connect to {self.url}: {describe(exc)}") from exc
        except BaseException:
            transport.close()
            raise
        log.debug("connected to %s", self.url)
        return _Session(transport, sftp, root)

    def _root(self, sftp: paramiko.SFTPClient) -> str:
        path = self.location.path or "/"
        if path == "/~" or path.startswith("/~/"):
            home = sftp.normalize(".")
            return posixpath.normpath(posixpath.join(home, path[3:])) if path[3:] else home
        return posixpath.normpath(path)

    def _authenticate(self, transport: paramiko.Transport) -> None:
        user = self.location.username
        assert user is not None
        try:
            if self._pkey is not None:
                try:
                    transport.auth_publickey(user, self._pkey)
                    return
                except paramiko.AuthenticationException:
                    if self._password is None:
                        raise
            if self._password is not None:
                transport.auth_password(user, self._password.get_secret_value())
        except paramiko.AuthenticationException:
            raise TerminalError(f"authentication failed for {self.url}") from None

    def _disconnect(self, conn: _Session, *, polite: bool) -> None:
        with contextlib.suppress(Exception):
            conn.sftp.close()
        with contextlib.suppress(Exception):
            conn.transport.close()

    def _lost(self, conn: _Session, exc: BaseException) -> bool:
        if not conn.transport.is_active():
            return True
        if isinstance(exc, paramiko.SSHException):
            return True
        return is_network_error(exc) and not isinstance(exc, EOFError)

    # --- helpers --------------------------------------------------------------------
    def _abs(self, s: _Session, rel: str) -> str:
        return posixpath.join(s.root, rel) if rel else s.root

    def _stat(self, s: _Session, rel: str) -> paramiko.SFTPAttributes:
        """The entry's own attributes (a link is not followed)."""
        try:
            return s.sftp.lstat(self._abs(s, rel))
        except FileNotFoundError:
            raise FileNotFoundError(
                errno.ENOENT, "no such file or directory", f"{self.url} {rel}"
            ) from None

    def _exists(self, s: _Session, rel: str) -> bool:
        try:
            s.sftp.lstat(self._abs(s, rel))
            return True
        except FileNotFoundError:
            return False

    # --- the interface --------------------------------------------------------------
    def scan(self, path: str = "") -> Listing:
        rel = normalize(path)

        def op(s: _Session) -> Listing:
            try:
                entries = s.sftp.listdir_attr(self._abs(s, rel))
            except FileNotFoundError:
                raise FileNotFoundError(
                    errno.ENOENT, "no such directory", f"{self.url} {rel}"
                ) from None
            listing = Listing()
            for e in entries:
                if e.filename in (".", ".."):
                    continue
                kind = kind_of(e.st_mode or 0)
                problem = name_problem(e.filename)
                if problem is None and kind not in (EntryKind.FILE, EntryKind.DIR):
                    problem = f"a {kind} is not a file (never followed or read in a drop)"
                if problem is not None:
                    listing.skipped.append(Skipped(e.filename, kind, problem))
                else:
                    info = _info(rel, e.filename, e)
                    (listing.dirs if info.is_dir else listing.files).append(info)
            return listing

        return self._run("list", op)

    def info(self, path: str) -> FileInfo:
        rel = normalize(path)
        attrs = self._run("stat", lambda s: self._stat(s, rel))
        kind = kind_of(attrs.st_mode or 0)
        if kind not in (EntryKind.FILE, EntryKind.DIR):
            raise NotRegularFile(f"{rel!r} is a {kind}", url=self.url)
        return _info(posixpath.dirname(rel), posixpath.basename(rel), attrs)

    def _retrieve(self, s: _Session, rel: str, out: IO[bytes]) -> None:
        """Prefetched download, checked against the size stat() announced."""
        attrs = self._stat(s, rel)
        if stat.S_ISDIR(attrs.st_mode or 0):
            raise IsADirectoryError(errno.EISDIR, "is a directory", f"{self.url} {rel}")
        self._check_regular(rel, attrs)
        rewind(out)
        with s.sftp.open(self._abs(s, rel), "rb") as remote:
            opened = remote.stat()  # FSTAT: what was opened, if swapped since the LSTAT
            self._check_regular(rel, opened)
            expected = opened.st_size or 0
            remote.prefetch(expected)
            shutil.copyfileobj(remote, out, _BLOCK)
        if out.tell() != expected:
            raise IncompleteTransfer(
                f"received {out.tell()} of {expected} bytes", url=self.url, path=rel
            )

    def _check_regular(self, rel: str, attrs: paramiko.SFTPAttributes) -> None:
        kind = kind_of(attrs.st_mode or 0) if attrs.st_mode is not None else EntryKind.FILE
        if kind is not EntryKind.FILE:
            raise NotRegularFile(f"{rel!r} is a {kind}, not a regular file", url=self.url)

    def _store(self, s: _Session, rel: str, src: IO[bytes]) -> None:
        src.seek(0)
        with s.sftp.open(self._abs(s, rel), "wb") as remote:
            remote.set_pipelined(True)
            shutil.copyfileobj(src, remote, _BLOCK)

    def rename(self, src: str, dst: str) -> None:
        src_rel, dst_rel = normalize(src), normalize(dst)

        def op(s: _Session) -> None:
            a, b = self._abs(s, src_rel), self._abs(s, dst_rel)
            try:
                s.sftp.posix_rename(a, b)  # OpenSSH extension: replaces atomically
                return
            except FileNotFoundError:
                raise FileNotFoundError(
                    errno.ENOENT, "no such file or directory", f"{self.url} {src_rel} -> {dst_rel}"
                ) from None
            except OSError as exc:
                if exc.errno is not None:  # a real refusal, not "unsupported"
                    raise
            # Plain SFTPv3 rename refuses to replace: move the old target aside first.
            if not self._exists(s, dst_rel):
                s.sftp.rename(a, b)
                return
            parent, name = posixpath.split(b)
            aside = posixpath.join(parent, f".{name}.{secrets.token_hex(6)}.old")
            s.sftp.rename(b, aside)
            try:
                s.sftp.rename(a, b)
            except BaseException:
                with contextlib.suppress(Exception):
                    s.sftp.rename(aside, b)
                raise
            with contextlib.suppress(OSError):
                s.sftp.remove(aside)

        self._run("rename", op)

    def remove(self, path: str) -> None:
        rel = normalize(path)

        def op(s: _Session) -> None:
            try:
                s.sftp.remove(self._abs(s, rel))
            except FileNotFoundError:
                raise FileNotFoundError(errno.ENOENT, "no such file", f"{self.url} {rel}") from None

        self._run("remove", op)

    def mkdir(self, path: str) -> None:
        rel = normalize(path)
        self._run("mkdir", lambda s: self._makedirs(s, self._abs(s, rel)))

    def _makedirs(self, s: _Session, absolute: str) -> None:
        """Create `absolute` and its parents; a link or a file in the way is refused."""
        try:
            attrs = s.sftp.lstat(absolute)
        except FileNotFoundError:
            pass
        else:
            if stat.S_ISDIR(attrs.st_mode or 0):
                return
            if absolute == s.root and stat.S_ISLNK(attrs.st_mode or 0):
                return  # the configured folder itself may be a link (the operator chose it)
            kind = kind_of(attrs.st_mode or 0)
            where = posixpath.relpath(absolute, s.root) if absolute != s.root else absolute
            raise UnsafePath(f"{where!r} is a {kind}, not a folder of the drop", url=self.url)
        parent = posixpath.dirname(absolute)
        if parent not in ("", absolute):
            self._makedirs(s, parent)
        try:
            s.sftp.mkdir(absolute)
        except OSError:
            attrs = s.sftp.lstat(absolute)  # created concurrently?
            if not stat.S_ISDIR(attrs.st_mode or 0):
                raise

    def exists(self, path: str) -> bool:
        rel = normalize(path)
        return self._run("exists", lambda s: self._exists(s, rel))


def _host_entry(loc: Location) -> str:
    """The name known_hosts uses: `host`, or `[host]:port` off port 22."""
    return loc.host if loc.port == 22 else f"[{loc.host}]:{loc.port}"


def _info(parent: str, name: str, attrs: paramiko.SFTPAttributes) -> FileInfo:
    return FileInfo(
        name,
        child(parent, name),
        attrs.st_size or 0,
        float(attrs.st_mtime) if attrs.st_mtime is not None else None,
        stat.S_ISDIR(attrs.st_mode or 0),
    )
