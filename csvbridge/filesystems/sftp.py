"""SFTP drops over paramiko, with host keys verified by default.

We drive `paramiko.Transport` ourselves instead of `SSHClient` so that the host-key
decision is ours and explicit: a pinned fingerprint, else an OpenSSH known_hosts file,
else refusal with the fingerprint the server presented (so an operator can check it and
pin it) — unless `allow_unknown_host` says to trust on first sight, which is logged.
A key that *mismatches* a pin or a known_hosts entry is always refused: that is the
man-in-the-middle case, and no setting should wave it through.

URL paths are absolute (`sftp://host/srv/exports`); `sftp://host/~/exports` is relative
to the login directory, as with curl.
"""

from __future__ import annotations

import binascii
import contextlib
import errno
import io
import logging
import posixpath
import re
import secrets
import shutil
import socket
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import paramiko
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from pydantic import SecretStr

from csvbridge.errors import ConfigError, HostKeyError, SourceUnavailable, TerminalError
from csvbridge.filesystems.base import (
    FileInfo,
    IncompleteTransfer,
    Location,
    RemoteFileSystem,
    child,
    describe,
    is_network_error,
    normalize,
    rewind,
)

log = logging.getLogger("csvbridge.filesystems.sftp")

_BLOCK = 32 * 1024  # paramiko's SFTP packet size: larger reads are split anyway
_SHA256 = re.compile(r"SHA256:([A-Za-z0-9+/]{43})=?")
_MD5 = re.compile(r"(?:MD5:)?((?:[0-9a-fA-F]{2}:){15}[0-9a-fA-F]{2})")


@dataclass
class _Session:
    transport: paramiko.Transport
    sftp: paramiko.SFTPClient
    root: str


@dataclass(frozen=True)
class _Pin:
    """A pinned host key fingerprint, SHA256 (base64) or MD5 (hex)."""

    algorithm: str
    value: str

    @classmethod
    def parse(cls, text: str) -> _Pin:
        """Accept what `ssh-keygen -lf` prints (the whole line or just the fingerprint)."""
        m = _SHA256.search(text)
        if m:
            return cls("SHA256", m.group(1))
        m = _MD5.search(text)
        if m:
            return cls("MD5", m.group(1).lower())
        raise ConfigError(
            "host_key_fingerprint must look like SHA256:<base64> (ssh-keygen -lf) or MD5:aa:bb:...",
        )

    def matches(self, key: paramiko.PKey) -> bool:
        if self.algorithm == "SHA256":
            return key.fingerprint == f"SHA256:{self.value}"
        return _md5(key) == self.value

    def __str__(self) -> str:
        return f"{self.algorithm}:{self.value}"


def _md5(key: paramiko.PKey) -> str:
    return ":".join(f"{b:02x}" for b in key.get_fingerprint())


def _describe_key(key: paramiko.PKey) -> str:
    return f"{key.get_name()} {key.fingerprint} (MD5:{_md5(key)})"


class SFTPFileSystem(RemoteFileSystem[_Session]):
    """A directory on an SFTP server."""

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
        self._pkey = _load_key(private_key, private_key_passphrase) if private_key else None
        self._pin = _Pin.parse(host_key_fingerprint) if host_key_fingerprint else None
        self._known_hosts = _load_known_hosts(known_hosts) if known_hosts else None
        self._allow_unknown = allow_unknown_host

    # --- connection -----------------------------------------------------------------
    @property
    def _host_entry(self) -> str:
        """The name known_hosts uses: `host`, or `[host]:port` off port 22."""
        loc = self.location
        return loc.host if loc.port == 22 else f"[{loc.host}]:{loc.port}"

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
            self._prefer_known_key_types(transport)
            transport.start_client(timeout=self.timeout)
            self._check_host_key(transport.get_remote_server_key())
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

    def _prefer_known_key_types(self, transport: paramiko.Transport) -> None:
        """Ask first for the key types known_hosts has, so a server with several host keys
        presents the one we can check (what OpenSSH does too)."""
        if self._known_hosts is None:
            return
        known = self._known_hosts.lookup(self._host_entry)
        if not known:
            return
        options = transport.get_security_options()
        types = list(options.key_types)
        first = [t for t in types if _base_key_type(t) in known]
        options.key_types = first + [t for t in types if t not in first]

    def _check_host_key(self, key: paramiko.PKey) -> None:
        presented = _describe_key(key)
        if self._pin is not None:
            if self._pin.matches(key):
                return
            raise HostKeyError(
                f"host key of {self.url} does not match the pinned fingerprint {self._pin}: "
                f"server presented {presented}"
            )
        if self._known_hosts is not None:
            known = self._known_hosts.lookup(self._host_entry)
            if known:
                if known.get(key.get_name()) == key:
                    return
                raise HostKeyError(
                    f"host key of {self.url} does not match known_hosts "
                    f"(possible man-in-the-middle): server presented {presented}"
                )
        if self._allow_unknown:
            log.warning(
                "accepting unknown host key for %s: %s (allow_unknown_host is set; "
                "pin it with host_key_fingerprint)",
                self.url,
                presented,
            )
            return
        raise HostKeyError(
            f"unknown host key for {self.url}: server presented {presented}; "
            "add it to known_hosts or set host_key_fingerprint"
        )

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
        try:
            return s.sftp.stat(self._abs(s, rel))
        except FileNotFoundError:
            raise FileNotFoundError(
                errno.ENOENT, "no such file or directory", f"{self.url} {rel}"
            ) from None

    def _exists(self, s: _Session, rel: str) -> bool:
        try:
            s.sftp.stat(self._abs(s, rel))
            return True
        except FileNotFoundError:
            return False

    # --- the interface --------------------------------------------------------------
    def list(self, path: str = "") -> list[FileInfo]:
        rel = normalize(path)

        def op(s: _Session) -> list[FileInfo]:
            try:
                entries = s.sftp.listdir_attr(self._abs(s, rel))
            except FileNotFoundError:
                raise FileNotFoundError(
                    errno.ENOENT, "no such directory", f"{self.url} {rel}"
                ) from None
            return [_info(rel, e.filename, e) for e in entries if e.filename not in (".", "..")]

        return self._run("list", op)

    def info(self, path: str) -> FileInfo:
        rel = normalize(path)
        attrs = self._run("stat", lambda s: self._stat(s, rel))
        return _info(posixpath.dirname(rel), posixpath.basename(rel), attrs)

    def _retrieve(self, s: _Session, rel: str, out: IO[bytes]) -> None:
        """Prefetched download, checked against the size stat() announced."""
        attrs = self._stat(s, rel)
        if stat.S_ISDIR(attrs.st_mode or 0):
            raise IsADirectoryError(errno.EISDIR, "is a directory", f"{self.url} {rel}")
        expected = attrs.st_size or 0
        rewind(out)
        with s.sftp.open(self._abs(s, rel), "rb") as remote:
            remote.prefetch(expected)
            shutil.copyfileobj(remote, out, _BLOCK)
        if out.tell() != expected:
            raise IncompleteTransfer(
                f"received {out.tell()} of {expected} bytes", url=self.url, path=rel
            )

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
        try:
            attrs = s.sftp.stat(absolute)
        except FileNotFoundError:
            pass
        else:
            if stat.S_ISDIR(attrs.st_mode or 0):
                return
            raise FileExistsError(errno.EEXIST, "exists and is not a directory", absolute)
        parent = posixpath.dirname(absolute)
        if parent not in ("", absolute):
            self._makedirs(s, parent)
        try:
            s.sftp.mkdir(absolute)
        except OSError:
            attrs = s.sftp.stat(absolute)  # created concurrently?
            if not stat.S_ISDIR(attrs.st_mode or 0):
                raise

    def exists(self, path: str) -> bool:
        rel = normalize(path)
        return self._run("exists", lambda s: self._exists(s, rel))


def _info(parent: str, name: str, attrs: paramiko.SFTPAttributes) -> FileInfo:
    return FileInfo(
        name,
        child(parent, name),
        attrs.st_size or 0,
        float(attrs.st_mtime) if attrs.st_mtime is not None else None,
        stat.S_ISDIR(attrs.st_mode or 0),
    )


def _base_key_type(algorithm: str) -> str:
    """The known_hosts key type for a host key algorithm (rsa-sha2-* are ssh-rsa keys)."""
    return "ssh-rsa" if algorithm.startswith("rsa-sha2-") else algorithm


def _load_key(path: Path, passphrase: SecretStr | None) -> paramiko.PKey:
    """Load an rsa/ecdsa/ed25519 private key; errors never include the passphrase.

    `cryptography` reads every common format (OpenSSH, PKCS#1/SEC1 PEM, PKCS#8, encrypted
    or not); paramiko alone cannot decrypt PKCS#8 ("BEGIN ENCRYPTED PRIVATE KEY").  The
    key is then handed to paramiko re-serialized in memory, unencrypted.
    """
    try:
        data = Path(path).expanduser().read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read private key: {exc.strerror}", file=str(path)) from None
    secret = passphrase.get_secret_value().encode() if passphrase else None
    load = (
        serialization.load_ssh_private_key
        if b"BEGIN OPENSSH PRIVATE KEY" in data
        else serialization.load_pem_private_key
    )
    try:
        try:
            loaded = load(data, secret)
        except TypeError:
            if secret is None:
                raise ConfigError(
                    "private key is encrypted: set private_key_passphrase", file=str(path)
                ) from None
            loaded = load(data, None)  # a passphrase for a key that has none: fine
    except (ValueError, UnsupportedAlgorithm) as exc:
        hint = " (wrong passphrase?)" if secret else ""
        raise ConfigError(
            f"cannot load private key{hint}: {type(exc).__name__}", file=str(path)
        ) from None
    key_class: type[paramiko.PKey]
    if isinstance(loaded, rsa.RSAPrivateKey):
        key_class = paramiko.RSAKey
    elif isinstance(loaded, ec.EllipticCurvePrivateKey):
        key_class = paramiko.ECDSAKey
    elif isinstance(loaded, ed25519.Ed25519PrivateKey):
        key_class = paramiko.Ed25519Key
    else:
        raise ConfigError(
            f"unsupported private key type {type(loaded).__name__} (use rsa, ecdsa or ed25519)",
            file=str(path),
        )
    plain = loaded.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.OpenSSH,
        serialization.NoEncryption(),
    )
    return key_class.from_private_key(io.StringIO(plain.decode()))


def _load_known_hosts(path: Path) -> paramiko.HostKeys:
    hostkeys = paramiko.HostKeys()
    try:
        hostkeys.load(str(path))
    except OSError as exc:
        raise ConfigError(f"cannot read known_hosts: {exc.strerror}", file=str(path)) from None
    except (paramiko.SSHException, ValueError, binascii.Error) as exc:
        raise ConfigError(f"invalid known_hosts: {exc}", file=str(path)) from None
    return hostkeys
