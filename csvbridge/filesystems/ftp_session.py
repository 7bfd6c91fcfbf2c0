"""Opening an FTP session (plain, explicit or implicit TLS) and reading the server's clock.

Separate from the filesystem so that the protocol plumbing (TLS session reuse on data
connections, implicit TLS before the greeting, login errors without secrets) reads on its
own.
"""

from __future__ import annotations

import contextlib
import ftplib
import io
import logging
import posixpath
import secrets
import socket
import ssl
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import SecretStr

from csvbridge.errors import SourceUnavailable, TerminalError
from csvbridge.filesystems.ftp_listing import ServerClock, parse_timestamp
from csvbridge.filesystems.remote import Location, describe
from csvbridge.observe import redact

log = logging.getLogger("csvbridge.filesystems.ftp")


class _FTP_TLS(ftplib.FTP_TLS):
    """FTP_TLS that resumes the control connection's TLS session on data connections.

    Many servers (vsftpd's require_ssl_reuse, FileZilla Server) refuse data connections
    that do not, to make sure the data socket belongs to the authenticated client.
    """

    def ntransfercmd(self, cmd: str, rest: int | str | None = None) -> tuple[socket.socket, Any]:
        conn, size = ftplib.FTP.ntransfercmd(self, cmd, rest)
        if self._prot_p:  # type: ignore[attr-defined]
            session = self.sock.session if isinstance(self.sock, ssl.SSLSocket) else None
            conn = self.context.wrap_socket(conn, server_hostname=self.host, session=session)
        return conn, size


class _ImplicitFTP_TLS(_FTP_TLS):
    """Implicit FTPS: the TLS handshake comes before the server's greeting."""

    def connect(
        self, host: str = "", port: int = 0, timeout: float = -999, source_address: Any = None
    ) -> str:
        self.host, self.port = host, port
        if timeout != -999:
            self.timeout = timeout
        raw = socket.create_connection((host, port), self.timeout, source_address=source_address)
        self.af = raw.family
        self.sock = self.context.wrap_socket(raw, server_hostname=host)
        self.file = self.sock.makefile("r", encoding=self.encoding)
        self.welcome = self.getresp()
        return self.welcome


@dataclass
class Session:
    ftp: ftplib.FTP
    root: str  # absolute server path of the URL's directory
    mlsd: bool = True


def open_session(
    loc: Location,
    url: str,
    *,
    password: SecretStr | None,
    passive: bool,
    timeout: float,
    ca_file: Path | None,
    tls: bool,
    implicit: bool,
) -> Session:
    """Connect, secure, log in, go binary; typed errors that never show the password."""
    ftp: ftplib.FTP
    if tls:
        context = ssl.create_default_context(cafile=str(ca_file) if ca_file else None)
        tls_class = _ImplicitFTP_TLS if implicit else _FTP_TLS
        ftp = tls_class(context=context, timeout=timeout)
    else:
        ftp = ftplib.FTP(timeout=timeout)
    try:
        ftp.connect(loc.host, loc.port)
        if isinstance(ftp, ftplib.FTP_TLS) and not implicit:
            try:
                ftp.auth()
            except ftplib.error_perm as exc:
                raise TerminalError(
                    f"server refused TLS (AUTH TLS) for {url}: {describe(exc)}"
                ) from None
        _login(ftp, loc, url, password)
        if isinstance(ftp, ftplib.FTP_TLS):
            ftp.prot_p()
        ftp.set_pasv(passive)
        ftp.voidcmd("TYPE I")
        home = ftp.pwd()
    except ssl.SSLCertVerificationError as exc:
        quietly_close(ftp)
        raise TerminalError(
            f"TLS certificate of {url} is not trusted: {exc.verify_message} "
            "(set ca_file to the CA that signed it)"
        ) from None
    except (OSError, EOFError, ftplib.Error) as exc:
        quietly_close(ftp)
        hint = ""
        if isinstance(exc, (TimeoutError, EOFError, ssl.SSLError)) and loc.port == 990:
            hint = " (port 990 is implicit FTPS: use ftps+implicit:// or implicit_tls)"
        raise SourceUnavailable(f"cannot connect to {url}: {describe(exc)}{hint}") from exc
    except BaseException:
        quietly_close(ftp)
        raise
    log.debug("connected to %s (home %s)", url, home)
    return Session(ftp, root_path(home, loc.path))


def _login(ftp: ftplib.FTP, loc: Location, url: str, password: SecretStr | None) -> None:
    user = loc.username or "anonymous"
    secret = password.get_secret_value() if password else ""
    try:
        ftp.login(user, secret)
    except ftplib.error_perm as exc:
        quietly_close(ftp)
        # The server's text could in theory echo what it got: redact before use.
        raise TerminalError(f"authentication failed for {url}: {scrub(exc, secret)}") from None


def measure_clock(s: Session, clock: ServerClock, url: str) -> None:
    """Store and stat an empty probe file: how far the server's timestamps are from ours
    (vsftpd ``use_localtime=YES`` reports local time as if it were UTC).  Measured on what
    listings use (MLSD, else MDTM); a refused probe is a warning, times are then UTC."""
    clock.offset = 0.0
    name = f"csvbridge-clock.{secrets.token_hex(6)}.part"
    absolute = posixpath.join(s.root, name)
    before = time.time()
    try:
        s.ftp.storbinary("STOR " + absolute, io.BytesIO(b""))
    except ftplib.error_perm as exc:
        log.warning(
            "cannot measure the clock of %s (probe refused: %s); reading its times as "
            "UTC (set server_timezone if they are not)",
            url,
            scrub(exc),
        )
        return
    after = time.time()
    raw: str | None = None
    try:
        if s.mlsd:
            with contextlib.suppress(ftplib.error_perm):
                raw = next((f.get("modify") for n, f in s.ftp.mlsd(s.root) if n == name), None)
        if raw is None:
            resp = s.ftp.sendcmd("MDTM " + absolute)
            raw = resp[4:].strip() if resp.startswith("213") else None
    except ftplib.error_perm:
        raw = None
    finally:
        with contextlib.suppress(ftplib.Error):
            s.ftp.delete(absolute)
    naive = parse_timestamp(raw) if raw else None
    if naive is None:
        log.warning("%s gives no time for a new file; reading its times as UTC", url)
        return
    offset = round(naive - (before + after) / 2)
    zone = round(offset / 900) * 900  # time zones are whole quarter hours
    if abs(offset - zone) <= 2:  # whole seconds only: +32399 is UTC+9
        offset = zone
    if abs(offset) >= 2:
        clock.offset = float(offset)
        log.info(
            "%s reports file times %+d s from ours (a server clock in local time, "
            "e.g. vsftpd use_localtime=YES); correcting",
            url,
            offset,
        )
    else:
        log.debug("%s reports file times in UTC (probe: %+d s)", url, offset)


def root_path(home: str, url_path: str) -> str:
    """Absolute server path for the URL's path (RFC 1738: relative to the login dir)."""
    if url_path.startswith("//"):  # ftp://host/%2Fsrv -> "//srv" after unquoting
        return posixpath.normpath(url_path[1:])
    rel = url_path.lstrip("/")
    return posixpath.normpath(posixpath.join(home or "/", rel)) if rel else (home or "/")


def scrub(exc: BaseException, password: str = "") -> str:
    """A server reply fit for an error message: registered secrets and `password` masked."""
    text = redact(str(exc))
    return text.replace(password, "**********") if password else text


def quietly_close(ftp: ftplib.FTP) -> None:
    with contextlib.suppress(Exception):
        ftp.close()
