"""The protocol registry (the fsspec lesson): URL scheme -> implementation.

Each implementation declares its schemes in `protocols` and parses its own URL in
`from_url`; this module only reads the scheme and dispatches, and nothing else in
csvbridge parses a source or feed URL.  Built-in backends are imported on first use
(FTP and SFTP pull in ftplib/paramiko), third-party ones call `register`.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from pydantic import SecretStr

from csvbridge.config import FeedSettings, SourceSettings
from csvbridge.errors import ConfigError
from csvbridge.filesystems.base import FileSystem
from csvbridge.filesystems.upload import TempNaming
from csvbridge.observe import register_secret

# scheme -> "module:Class", imported when a URL first needs it
KNOWN: dict[str, str] = {
    "file": "csvbridge.filesystems.local:LocalFileSystem",
    "ftp": "csvbridge.filesystems.ftp:FTPFileSystem",
    "ftps": "csvbridge.filesystems.ftp:FTPFileSystem",
    "ftps+implicit": "csvbridge.filesystems.ftp:FTPFileSystem",
    "sftp": "csvbridge.filesystems.sftp:SFTPFileSystem",
}
_registry: dict[str, type[FileSystem]] = {}


@dataclass(frozen=True)
class ConnectOptions:
    """Everything but the URL that a backend may need; each uses what applies to it.

    Secrets only ever arrive here (never in URLs) and are registered with the log
    redactor when the options are made.
    """

    username: str | None = None
    password: SecretStr | None = None
    private_key: Path | None = None
    private_key_passphrase: SecretStr | None = None
    known_hosts: Path | None = None
    host_key_fingerprint: str | None = None
    allow_unknown_host: bool = False
    passive: bool = True
    timeout: float = 30.0
    ca_file: Path | None = None
    implicit_tls: bool = False
    server_timezone: str | None = None  # FTP: None/"UTC", "auto" (probe) or an IANA name
    create_missing: bool = True  # local: create the root folder if it is not there
    temp_naming: TempNaming = field(default_factory=TempNaming)

    def __post_init__(self) -> None:
        for name in ("password", "private_key_passphrase"):
            object.__setattr__(self, name, _secret(getattr(self, name)))


def _secret(value: SecretStr | str | None) -> SecretStr | None:
    if value is None:
        return None
    secret = value if isinstance(value, SecretStr) else SecretStr(value)
    register_secret(secret.get_secret_value())
    return secret if secret.get_secret_value() else None


def register(cls: type[FileSystem]) -> type[FileSystem]:
    """Make `cls` serve its declared `protocols` (usable as a class decorator)."""
    if not cls.protocols:
        raise ValueError(f"{cls.__name__} declares no protocols")
    for protocol in cls.protocols:
        _registry[protocol.lower()] = cls
    return cls


def protocol_of(url: str) -> str:
    """The scheme of `url`; a plain path is ``file``."""
    return url.split("://", 1)[0].lower() if "://" in url else "file"


def implementation(protocol: str) -> type[FileSystem]:
    """The class serving `protocol`, importing a built-in backend on first use."""
    protocol = protocol.lower()
    if protocol not in _registry and protocol in KNOWN:
        module, _, name = KNOWN[protocol].partition(":")
        register(getattr(importlib.import_module(module), name))
    try:
        return _registry[protocol]
    except KeyError:
        known = ", ".join(sorted(set(KNOWN) | set(_registry)))
        raise ConfigError(f"unsupported URL scheme {protocol!r} (use {known})") from None


def open_filesystem(url: str, options: ConnectOptions | None = None, **kwargs: Any) -> FileSystem:
    """The filesystem at `url`: ``file:///dir`` or a plain path, ``ftp://``, ``ftps://``
    (explicit TLS), ``ftps+implicit://`` (TLS from the first byte, port 990), ``sftp://``.

    Options come as a `ConnectOptions` or as its fields by keyword.  Nothing connects yet.
    """
    if options is None:
        options = ConnectOptions(**kwargs)
    elif kwargs:
        raise TypeError("give either options or keyword arguments, not both")
    return implementation(protocol_of(url)).from_url(url, options)


def options_for(settings: SourceSettings | FeedSettings) -> ConnectOptions:
    """The connection options of a source or feed section of the configuration."""
    names = {f.name for f in fields(ConnectOptions)}
    values = {k: v for k, v in settings if k in names}
    values["timeout"] = float(getattr(settings, "timeout_seconds", 30.0))
    if isinstance(settings, SourceSettings):
        values["create_missing"] = bool(getattr(settings, "create_missing", False))
    else:
        values["temp_naming"] = TempNaming(
            getattr(settings, "upload_temp_name", None),
            getattr(settings, "upload_temp_folder", None) or "",
        )
    return ConnectOptions(**values)


def filesystem_for(settings: SourceSettings | FeedSettings) -> FileSystem:
    """The filesystem a source watches or a feed writes to, from its config section."""
    url = settings.url if isinstance(settings, SourceSettings) else settings.target
    return open_filesystem(url, options_for(settings))
