"""SSH keys: host key pins and known_hosts (verification is on by default), client keys.

A pinned fingerprint is SHA256 (base64, as ``ssh-keygen -lf`` prints it) or MD5 (hex).
Client keys are read with `cryptography`, which reads every common format (OpenSSH,
PKCS#1/SEC1 PEM, PKCS#8, encrypted or not), then handed to paramiko.
"""

from __future__ import annotations

import binascii
import io
import logging
import re
from dataclasses import dataclass
from pathlib import Path

import paramiko
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from pydantic import SecretStr

from csvbridge.errors import ConfigError, HostKeyError

log = logging.getLogger("csvbridge.filesystems.sftp")

_SHA256 = re.compile(r"SHA256:([A-Za-z0-9+/]{43})=?")
_MD5 = re.compile(r"(?:MD5:)?((?:[0-9a-fA-F]{2}:){15}[0-9a-fA-F]{2})")


@dataclass(frozen=True)
class Pin:
    """A pinned host key fingerprint, SHA256 (base64) or MD5 (hex)."""

    algorithm: str
    value: str

    @classmethod
    def parse(cls, text: str) -> Pin:
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
        return md5(key) == self.value

    def __str__(self) -> str:
        return f"{self.algorithm}:{self.value}"


@dataclass(frozen=True)
class HostKeyPolicy:
    """Whom to trust: a pinned fingerprint, else known_hosts, else refuse (unless
    `allow_unknown`, logged).  A key that mismatches a pin or a known_hosts entry is
    always refused: that is the man-in-the-middle case."""

    url: str
    host_entry: str  # `host`, or `[host]:port` off port 22, as known_hosts writes it
    pin: Pin | None
    known_hosts: paramiko.HostKeys | None
    allow_unknown: bool

    def prefer_known_types(self, transport: paramiko.Transport) -> None:
        """Ask first for the key types known_hosts has, so a server with several host keys
        presents the one we can check (what OpenSSH does too)."""
        if self.known_hosts is None:
            return
        known = self.known_hosts.lookup(self.host_entry)
        if not known:
            return
        options = transport.get_security_options()
        types = list(options.key_types)
        first = [t for t in types if base_key_type(t) in known]
        options.key_types = first + [t for t in types if t not in first]

    def check(self, key: paramiko.PKey) -> None:
        presented = describe_key(key)
        if self.pin is not None:
            if self.pin.matches(key):
                return
            raise HostKeyError(
                f"host key of {self.url} does not match the pinned fingerprint {self.pin}: "
                f"server presented {presented}"
            )
        if self.known_hosts is not None:
            known = self.known_hosts.lookup(self.host_entry)
            if known:
                if known.get(key.get_name()) == key:
                    return
                raise HostKeyError(
                    f"host key of {self.url} does not match known_hosts "
                    f"(possible man-in-the-middle): server presented {presented}"
                )
        if self.allow_unknown:
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


def md5(key: paramiko.PKey) -> str:
    return ":".join(f"{b:02x}" for b in key.get_fingerprint())


def describe_key(key: paramiko.PKey) -> str:
    return f"{key.get_name()} {key.fingerprint} (MD5:{md5(key)})"


def base_key_type(algorithm: str) -> str:
    """The known_hosts key type for a host key algorithm (rsa-sha2-* are ssh-rsa keys)."""
    return "ssh-rsa" if algorithm.startswith("rsa-sha2-") else algorithm


def load_key(path: Path, passphrase: SecretStr | None) -> paramiko.PKey:
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


def load_known_hosts(path: Path) -> paramiko.HostKeys:
    hostkeys = paramiko.HostKeys()
    try:
        hostkeys.load(str(path))
    except OSError as exc:
        raise ConfigError(f"cannot read known_hosts: {exc.strerror}", file=str(path)) from None
    except (paramiko.SSHException, ValueError, binascii.Error) as exc:
        raise ConfigError(f"invalid known_hosts: {exc}", file=str(path)) from None
    return hostkeys
