"""Drops and feed targets behind one small interface: local folders, FTP/FTPS, SFTP.

`open_filesystem(url, ...)` picks the backend from the URL; `filesystem_for(settings)`
does the same from a source or feed section of the configuration.  Secrets (passwords,
key passphrases) only ever arrive as arguments, never in URLs, and are registered with
the log redactor the moment they are seen.
"""

from __future__ import annotations

from pathlib import Path
from urllib.parse import unquote, urlsplit

from pydantic import SecretStr

from csvbridge.config import FeedSettings, SourceSettings
from csvbridge.errors import ConfigError
from csvbridge.filesystems.base import (
    FileInfo,
    FileSystem,
    IncompleteTransfer,
    normalize,
    parse_remote_url,
    put_atomic,
)
from csvbridge.filesystems.local import LocalFileSystem
from csvbridge.observe import register_secret

__all__ = [
    "FileInfo",
    "FileSystem",
    "IncompleteTransfer",
    "LocalFileSystem",
    "filesystem_for",
    "normalize",
    "open_filesystem",
    "put_atomic",
]


def _secret(value: SecretStr | str | None) -> SecretStr | None:
    if value is None:
        return None
    secret = value if isinstance(value, SecretStr) else SecretStr(value)
    register_secret(secret.get_secret_value())
    return secret if secret.get_secret_value() else None


def open_filesystem(
    url: str,
    *,
    username: str | None = None,
    password: SecretStr | str | None = None,
    private_key: Path | None = None,
    private_key_passphrase: SecretStr | str | None = None,
    known_hosts: Path | None = None,
    host_key_fingerprint: str | None = None,
    allow_unknown_host: bool = False,
    passive: bool = True,
    timeout: float = 30.0,
    ca_file: Path | None = None,
) -> FileSystem:
    """The filesystem at `url`: ``file:///dir`` or a plain path, ``ftp://``, ``ftps://``
    (explicit TLS; `ca_file` adds a CA to trust), ``sftp://``.  Nothing connects yet."""
    password = _secret(password)
    private_key_passphrase = _secret(private_key_passphrase)
    scheme = url.split("://", 1)[0].lower() if "://" in url else ""
    if scheme in ("", "file"):
        return LocalFileSystem(_local_path(url) if scheme else url)
    if scheme in ("ftp", "ftps"):
        from csvbridge.filesystems.ftp import FTPFileSystem

        return FTPFileSystem(
            parse_remote_url(url, username),
            password=password,
            passive=passive,
            timeout=timeout,
            ca_file=ca_file,
        )
    if scheme == "sftp":
        from csvbridge.filesystems.sftp import SFTPFileSystem

        return SFTPFileSystem(
            parse_remote_url(url, username),
            password=password,
            private_key=private_key,
            private_key_passphrase=private_key_passphrase,
            known_hosts=known_hosts,
            host_key_fingerprint=host_key_fingerprint,
            allow_unknown_host=allow_unknown_host,
            timeout=timeout,
        )
    raise ConfigError(f"unsupported URL scheme {scheme!r} (use file, ftp, ftps or sftp)")


def _local_path(url: str) -> str:
    """``file:///srv/drop`` -> /srv/drop; ``file://./feeds`` -> ./feeds (relative)."""
    parts = urlsplit(url)
    host = parts.netloc
    if host in ("", "localhost"):
        return unquote(parts.path)
    if host in (".", ".."):
        return host + unquote(parts.path)
    raise ConfigError(f"file URLs cannot name a remote host ({host!r}); mount it instead")


def filesystem_for(settings: SourceSettings | FeedSettings) -> FileSystem:
    """The filesystem a source watches or a feed writes to, from its config section."""
    url = settings.url if isinstance(settings, SourceSettings) else settings.target
    return open_filesystem(
        url,
        username=settings.username,
        password=settings.password,
        private_key=settings.private_key,
        private_key_passphrase=settings.private_key_passphrase,
        known_hosts=settings.known_hosts,
        host_key_fingerprint=settings.host_key_fingerprint,
        allow_unknown_host=settings.allow_unknown_host,
        passive=getattr(settings, "passive", True),
        timeout=float(getattr(settings, "timeout_seconds", 30.0)),
        ca_file=getattr(settings, "ca_file", None),
    )
