"""What the embedded FTP drop is told and what it tells back: its settings, the users'
password hashes, and the records of uploads taken (`DroppedFile`) or refused.

Why apart from the server: the settings are read with the rest of the configuration
(and ``csvbridge hash-password`` makes a hash) without starting pyftpdlib; passwords are
only ever stored as PBKDF2-SHA256 hashes (`hash_password` makes one).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator

from csvbridge.errors import ConfigError

HASH_SCHEME = "pbkdf2_sha256"
DEFAULT_ITERATIONS = 600_000  # OWASP 2023 for PBKDF2-HMAC-SHA256


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
