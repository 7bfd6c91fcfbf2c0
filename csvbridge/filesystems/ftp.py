"""FTP and explicit FTPS (AUTH TLS, PROT P) drops, on top of `ftplib`.

FTP servers differ a lot, so every step has a fallback: MLSD for listings, else LIST
parsed (Unix and DOS styles) completed by SIZE and MDTM; RNTO that refuses to replace is
emulated by deleting the target first.  All commands use absolute paths computed once
after login (the login directory plus the URL path), so the session's current directory
never matters and a reconnect lands in the same place.
"""

from __future__ import annotations

import calendar
import contextlib
import errno
import ftplib
import logging
import posixpath
import re
import secrets
import socket
import ssl
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from pydantic import SecretStr

from csvbridge.errors import ConfigError, SourceUnavailable, TerminalError
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
from csvbridge.observe import redact

log = logging.getLogger("csvbridge.filesystems.ftp")

_BLOCK = 64 * 1024
_UNSUPPORTED = ("500", "502", "504")  # "command not understood / implemented"


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


@dataclass
class _Session:
    ftp: ftplib.FTP
    root: str  # absolute server path of the URL's directory
    mlsd: bool = True


class FTPFileSystem(RemoteFileSystem[_Session]):
    """An FTP or FTPS directory.  `ftp://user@host:21/exports` is relative to the login
    directory, `ftp://host/%2Fsrv/exports` is absolute (RFC 1738, as curl does)."""

    def __init__(
        self,
        location: Location,
        *,
        password: SecretStr | None = None,
        passive: bool = True,
        timeout: float = 30.0,
        ca_file: Path | None = None,
    ) -> None:
        super().__init__(location, timeout=timeout)
        self._password = password
        self._passive = passive
        self._tls = location.scheme == "ftps"
        self._ca_file = ca_file
        if ca_file is not None and not Path(ca_file).is_file():
            raise ConfigError("CA file not found", file=str(ca_file))

    # --- connection -----------------------------------------------------------------
    def _connect(self) -> _Session:
        loc = self.location
        ftp: ftplib.FTP
        if self._tls:
            context = ssl.create_default_context(
                cafile=str(self._ca_file) if self._ca_file else None
            )
            ftp = _FTP_TLS(context=context, timeout=self.timeout)
        else:
            ftp = ftplib.FTP(timeout=self.timeout)
        try:
            ftp.connect(loc.host, loc.port)
            if isinstance(ftp, ftplib.FTP_TLS):
                try:
                    ftp.auth()
                except ftplib.error_perm as exc:
                    raise TerminalError(
                        f"server refused TLS (AUTH TLS) for {self.url}: {describe(exc)}"
                    ) from None
            self._login(ftp)
            if isinstance(ftp, ftplib.FTP_TLS):
                ftp.prot_p()
            ftp.set_pasv(self._passive)
            ftp.voidcmd("TYPE I")
            home = ftp.pwd()
        except ssl.SSLCertVerificationError as exc:
            _quietly_close(ftp)
            raise TerminalError(
                f"TLS certificate of {self.url} is not trusted: {exc.verify_message}"
            ) from None
        except (OSError, EOFError, ftplib.Error) as exc:
            _quietly_close(ftp)
            raise SourceUnavailable(f"cannot connect to {self.url}: {describe(exc)}") from exc
        except BaseException:
            _quietly_close(ftp)
            raise
        log.debug("connected to %s (home %s)", self.url, home)
        return _Session(ftp, _root_path(home, loc.path))

    def _login(self, ftp: ftplib.FTP) -> None:
        user = self.location.username or "anonymous"
        password = self._password.get_secret_value() if self._password else ""
        try:
            ftp.login(user, password)
        except ftplib.error_perm as exc:
            _quietly_close(ftp)
            # The server's text could in theory echo what it got: redact before use.
            raise TerminalError(
                f"authentication failed for {self.url}: {_scrub(exc, password)}"
            ) from None

    def _disconnect(self, conn: _Session, *, polite: bool) -> None:
        if polite:
            try:
                conn.ftp.quit()
                return
            except Exception:
                pass
        _quietly_close(conn.ftp)

    def _lost(self, conn: _Session, exc: BaseException) -> bool:
        if isinstance(exc, ssl.SSLCertVerificationError):
            return False
        if isinstance(exc, (ssl.SSLError, ftplib.error_reply, ftplib.error_proto)):
            return True  # the session is out of step with the server: start over
        if isinstance(exc, ftplib.error_temp):
            # 421 "service not available, closing"; 425/426: the data connection could
            # not be opened or broke mid-transfer (a network failure, not an answer
            # about the file): start over on a fresh session
            return str(exc).startswith(("421", "425", "426"))
        return is_network_error(exc)

    # --- helpers --------------------------------------------------------------------
    def _abs(self, s: _Session, rel: str) -> str:
        return posixpath.join(s.root, rel) if rel else s.root

    def _is_dir(self, s: _Session, absolute: str) -> bool:
        try:
            s.ftp.cwd(absolute)
            return True
        except ftplib.error_perm:
            return False

    def _size(self, s: _Session, absolute: str) -> int | None:
        """SIZE of a file, None if the server cannot tell (a directory, no SIZE...)."""
        try:
            # ftplib switches to ASCII for every listing (retrlines sends TYPE A), and
            # servers refuse SIZE in ASCII mode (550), or count converted line endings
            s.ftp.voidcmd("TYPE I")
            size = s.ftp.size(absolute)
        except ftplib.error_perm:
            return None
        return int(size) if size is not None else None

    def _mdtm(self, s: _Session, absolute: str) -> float | None:
        try:
            resp = s.ftp.sendcmd("MDTM " + absolute)
        except ftplib.error_perm:
            return None
        return _parse_timestamp(resp[4:].strip()) if resp.startswith("213") else None

    def _exists(self, s: _Session, rel: str) -> bool:
        absolute = self._abs(s, rel)
        if self._size(s, absolute) is not None or self._is_dir(s, absolute):
            return True
        if not rel:
            return False
        parent, name = posixpath.split(rel)
        try:
            return any(e.name == name for e in self._list(s, parent))
        except FileNotFoundError:
            return False

    def _missing_or_denied(self, s: _Session, rel: str, exc: ftplib.Error) -> OSError:
        """Turn a 5xx reply about `rel` into FileNotFoundError or PermissionError."""
        if self._exists(s, rel):
            return PermissionError(errno.EACCES, _scrub(exc), f"{self.url} {rel}")
        return FileNotFoundError(errno.ENOENT, "no such file or directory", f"{self.url} {rel}")

    # --- listing --------------------------------------------------------------------
    def _list(self, s: _Session, rel: str) -> list[FileInfo]:
        absolute = self._abs(s, rel)
        if s.mlsd:
            try:
                return self._list_mlsd(s, rel, absolute)
            except ftplib.error_perm as exc:
                if not str(exc).startswith(_UNSUPPORTED):
                    raise self._missing_or_denied(s, rel, exc) from None
                s.mlsd = False
                log.debug("%s has no usable MLSD (%s); using LIST", self.url, describe(exc))
        return self._list_plain(s, rel, absolute)

    def _list_mlsd(self, s: _Session, rel: str, absolute: str) -> list[FileInfo]:
        out = []
        for raw_name, facts in s.ftp.mlsd(absolute):
            kind = facts.get("type", "file").lower()
            name = posixpath.basename(raw_name.rstrip("/"))
            if kind in ("cdir", "pdir") or name in ("", ".", ".."):
                continue
            is_dir = kind == "dir"
            size = int(facts["size"]) if facts.get("size", "").isdigit() else 0
            mtime = _parse_timestamp(facts["modify"]) if "modify" in facts else None
            out.append(FileInfo(name, child(rel, name), size, mtime, is_dir))
        return out

    def _list_plain(self, s: _Session, rel: str, absolute: str) -> list[FileInfo]:
        """LIST (parsed), then exact SIZE/MDTM per file: LIST dates are minutes at best."""
        try:
            s.ftp.cwd(absolute)
        except ftplib.error_perm as exc:
            raise self._missing_or_denied(s, rel, exc) from None
        lines: list[str] = []
        s.ftp.retrlines("LIST", lines.append)
        out = []
        for line in lines:
            parsed = _parse_list_line(line)
            if parsed is None:
                continue
            name, is_dir, size, mtime = parsed
            if not is_dir:
                target = posixpath.join(absolute, name)
                exact = self._size(s, target)
                size = exact if exact is not None else size
                mtime = self._mdtm(s, target) or mtime
            out.append(FileInfo(name, child(rel, name), size, mtime, is_dir))
        return out

    # --- the interface --------------------------------------------------------------
    def list(self, path: str = "") -> list[FileInfo]:
        rel = normalize(path)
        return self._run("list", lambda s: self._list(s, rel))

    def info(self, path: str) -> FileInfo:
        rel = normalize(path)

        def op(s: _Session) -> FileInfo | None:
            absolute = self._abs(s, rel)
            size = self._size(s, absolute)
            if size is None:
                return None
            return FileInfo(posixpath.basename(rel), rel, size, self._mdtm(s, absolute), False)

        found = self._run("stat", op)
        return found if found is not None else super().info(rel)

    def _retrieve(self, s: _Session, rel: str, out: IO[bytes]) -> None:
        """RETR into `out`, checked against SIZE so a cut transfer is never "complete"."""
        absolute = self._abs(s, rel)
        expected = self._size(s, absolute)
        rewind(out)
        try:
            s.ftp.retrbinary("RETR " + absolute, out.write, blocksize=_BLOCK)
        except ftplib.error_perm as exc:
            raise self._missing_or_denied(s, rel, exc) from None
        got = out.tell()
        if expected is not None and got != expected:
            raise IncompleteTransfer(f"received {got} of {expected} bytes", url=self.url, path=rel)

    def _store(self, s: _Session, rel: str, src: IO[bytes]) -> None:
        src.seek(0)
        try:
            s.ftp.storbinary("STOR " + self._abs(s, rel), src, blocksize=_BLOCK)
        except ftplib.error_perm as exc:
            parent = posixpath.dirname(rel)
            if parent and not self._exists(s, parent):
                raise FileNotFoundError(
                    errno.ENOENT, "no such directory", f"{self.url} {parent}"
                ) from None
            raise PermissionError(errno.EACCES, _scrub(exc), f"{self.url} {rel}") from None

    def rename(self, src: str, dst: str) -> None:
        src_rel, dst_rel = normalize(src), normalize(dst)

        def op(s: _Session) -> None:
            a, b = self._abs(s, src_rel), self._abs(s, dst_rel)
            try:
                s.ftp.rename(a, b)
                return
            except ftplib.error_perm as exc:
                if not self._exists(s, src_rel) or not self._exists(s, dst_rel):
                    raise self._missing_or_denied(s, src_rel, exc) from None
            self._replace(s, a, b)

        self._run("rename", op)

    def _replace(self, s: _Session, a: str, b: str) -> None:
        """Rename over an existing file on servers whose RNTO refuses to.

        The old target is first moved aside (not deleted) so that a failing second rename
        can put it back: never atomic, but never loses the target either.
        """
        parent, name = posixpath.split(b)
        aside = posixpath.join(parent, f".{name}.{secrets.token_hex(6)}.old")
        s.ftp.rename(b, aside)
        try:
            s.ftp.rename(a, b)
        except BaseException:
            try:
                s.ftp.rename(aside, b)
            except Exception as exc:
                log.error("could not restore %s on %s: %s", b, self.url, describe(exc))
            raise
        try:
            s.ftp.delete(aside)
        except ftplib.Error as exc:
            log.warning("could not delete %s on %s: %s", aside, self.url, describe(exc))

    def remove(self, path: str) -> None:
        rel = normalize(path)

        def op(s: _Session) -> None:
            try:
                s.ftp.delete(self._abs(s, rel))
            except ftplib.error_perm as exc:
                raise self._missing_or_denied(s, rel, exc) from None

        self._run("remove", op)

    def mkdir(self, path: str) -> None:
        rel = normalize(path)
        self._run("mkdir", lambda s: self._makedirs(s, self._abs(s, rel)))

    def _makedirs(self, s: _Session, absolute: str) -> None:
        """MKD, creating missing parents on the way back (one round trip when they exist)."""
        if self._is_dir(s, absolute):
            return
        try:
            s.ftp.mkd(absolute)
            return
        except ftplib.error_perm as exc:
            parent = posixpath.dirname(absolute.rstrip("/"))
            if parent in ("", "/", absolute) or self._is_dir(s, parent):
                if self._is_dir(s, absolute):  # created concurrently
                    return
                raise PermissionError(errno.EACCES, _scrub(exc), f"{self.url} {absolute}") from None
        self._makedirs(s, parent)
        try:
            s.ftp.mkd(absolute)
        except ftplib.error_perm:
            if not self._is_dir(s, absolute):
                raise

    def exists(self, path: str) -> bool:
        rel = normalize(path)
        return self._run("exists", lambda s: self._exists(s, rel))


# --- parsing helpers --------------------------------------------------------------------


def _root_path(home: str, url_path: str) -> str:
    """Absolute server path for the URL's path (RFC 1738: relative to the login dir)."""
    if url_path.startswith("//"):  # ftp://host/%2Fsrv -> "//srv" after unquoting
        return posixpath.normpath(url_path[1:])
    rel = url_path.lstrip("/")
    return posixpath.normpath(posixpath.join(home or "/", rel)) if rel else (home or "/")


def _parse_timestamp(value: str) -> float | None:
    """MLSD/MDTM time ``YYYYMMDDHHMMSS[.fff]`` (UTC) to epoch seconds."""
    m = re.fullmatch(r"(\d{14})(?:\.(\d+))?", value.strip())
    if not m:
        return None
    try:
        t = time.strptime(m.group(1), "%Y%m%d%H%M%S")
    except ValueError:
        return None
    return calendar.timegm(t) + (float("0." + m.group(2)) if m.group(2) else 0.0)


_UNIX_LIST = re.compile(
    r"^(?P<type>[-dlbcps])[rwxsStT-]{9}\S*\s+\d+\s+\S+\s+(?:\S+\s+)?(?P<size>\d+)\s+"
    r"(?P<month>[A-Za-z]{3})\s+(?P<day>\d{1,2})\s+(?P<time>\d{1,2}:\d{2}|\d{4})\s(?P<name>.+)$"
)
_DOS_LIST = re.compile(
    r"^(?P<date>\d{2}-\d{2}-\d{2,4})\s+(?P<time>\d{1,2}:\d{2}[AP]M)\s+"
    r"(?P<size><DIR>|\d+)\s+(?P<name>.+)$",
    re.IGNORECASE,
)
_MONTHS = {m: i for i, m in enumerate(calendar.month_abbr) if m}


def _parse_list_line(line: str) -> tuple[str, bool, int, float | None] | None:
    """(name, is_dir, size, mtime) from one LIST line, Unix or DOS style; None if alien."""
    m = _UNIX_LIST.match(line)
    if m:
        name = m["name"]
        if m["type"] == "l":
            name = name.split(" -> ", 1)[0]
        if name in (".", ".."):
            return None
        return name, m["type"] == "d", int(m["size"]), _unix_list_time(m)
    m = _DOS_LIST.match(line)
    if m:
        is_dir = m["size"].upper() == "<DIR>"
        try:
            fmt = "%m-%d-%y %I:%M%p" if len(m["date"]) == 8 else "%m-%d-%Y %I:%M%p"
            mtime = float(calendar.timegm(time.strptime(f"{m['date']} {m['time']}", fmt)))
        except ValueError:
            mtime = None
        return m["name"], is_dir, 0 if is_dir else int(m["size"]), mtime
    return None


def _unix_list_time(m: re.Match[str]) -> float | None:
    """`ls -l` dates have a year or a time (then: within the last six months)."""
    month = _MONTHS.get(m["month"].title())
    if month is None:
        return None
    now = time.gmtime()
    day = int(m["day"])
    if ":" in m["time"]:
        hour, minute = (int(x) for x in m["time"].split(":"))
        year = now.tm_year
        stamp = calendar.timegm((year, month, day, hour, minute, 0))
        if stamp > time.time() + 86400:  # "Dec 31 23:00" seen in January
            stamp = calendar.timegm((year - 1, month, day, hour, minute, 0))
        return float(stamp)
    return float(calendar.timegm((int(m["time"]), month, day, 0, 0, 0)))


def _scrub(exc: BaseException, password: str = "") -> str:
    """A server reply fit for an error message: registered secrets and `password` masked."""
    text = redact(str(exc))
    return text.replace(password, "**********") if password else text


def _quietly_close(ftp: ftplib.FTP) -> None:
    with contextlib.suppress(Exception):
        ftp.close()
