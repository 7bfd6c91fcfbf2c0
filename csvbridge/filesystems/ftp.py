"""FTP, explicit FTPS (AUTH TLS, PROT P) and implicit FTPS (TLS from the first byte,
port 990) drops, on top of `ftplib`.

FTP servers differ a lot, so every step has a fallback: MLSD for listings, else LIST
parsed (Unix and DOS styles) completed by SIZE and MDTM; RNTO that refuses to replace is
emulated by moving the target aside first.  All commands use absolute paths computed
once after login (the login directory plus the URL path), so the session's current
directory never matters and a reconnect lands in the same place.

The server follows links when it serves a file, so the client trusts only the listing:
a file is downloaded only if its folder lists it as a plain file, and a stage folder
must be listed as a real folder before anything is moved into it.
"""

from __future__ import annotations

import errno
import ftplib
import logging
import posixpath
import secrets
import ssl
from dataclasses import replace
from pathlib import Path
from typing import IO, ClassVar
from urllib.parse import urlsplit

from pydantic import SecretStr

from csvbridge.errors import ConfigError
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
from csvbridge.filesystems.ftp_listing import (
    ServerClock,
    mlsd_kind,
    parse_list_line,
    sort_entry,
)
from csvbridge.filesystems.ftp_session import (
    Session,
    measure_clock,
    open_session,
    quietly_close,
    scrub,
)
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

log = logging.getLogger("csvbridge.filesystems.ftp")

_BLOCK = 64 * 1024
_UNSUPPORTED = ("500", "502", "504")  # "command not understood / implemented"


class FTPFileSystem(RemoteFileSystem[Session]):
    """An FTP or FTPS directory.  `ftp://user@host:21/exports` is relative to the login
    directory, `ftp://host/%2Fsrv/exports` is absolute (RFC 1738, as curl does)."""

    protocols: ClassVar[tuple[str, ...]] = ("ftp", "ftps", "ftps+implicit")

    def __init__(
        self,
        location: Location,
        *,
        password: SecretStr | None = None,
        passive: bool = True,
        timeout: float = 30.0,
        ca_file: Path | None = None,
        implicit_tls: bool = False,
        server_timezone: str | None = None,
    ) -> None:
        super().__init__(location, timeout=timeout)
        self._password = password
        self._passive = passive
        self._implicit = implicit_tls or location.scheme == "ftps+implicit"
        self._tls = self._implicit or location.scheme == "ftps"
        if implicit_tls and location.scheme == "ftp":
            raise ConfigError(f"implicit_tls needs an ftps:// URL ({self.url})")
        self._ca_file = ca_file
        if ca_file is not None and not Path(ca_file).is_file():
            raise ConfigError("CA file not found", file=str(ca_file))
        self.clock = ServerClock.parse(server_timezone)

    @classmethod
    def from_url(cls, url: str, options: ConnectOptions) -> FTPFileSystem:
        location = parse_remote_url(url, options.username)
        if options.implicit_tls and location.scheme == "ftps" and _no_port(url):
            location = replace(location, port=990)  # the implicit FTPS port, not 21
        fs = cls(
            location,
            password=options.password,
            passive=options.passive,
            timeout=options.timeout,
            ca_file=options.ca_file,
            implicit_tls=options.implicit_tls,
            server_timezone=options.server_timezone,
        )
        fs.temp_naming = options.temp_naming
        return fs

    # --- connection -----------------------------------------------------------------
    def _connect(self) -> Session:
        return open_session(
            self.location,
            self.url,
            password=self._password,
            passive=self._passive,
            timeout=self.timeout,
            ca_file=self._ca_file,
            tls=self._tls,
            implicit=self._implicit,
        )

    def _disconnect(self, conn: Session, *, polite: bool) -> None:
        if polite:
            try:
                conn.ftp.quit()
                return
            except Exception:
                pass
        quietly_close(conn.ftp)

    def _lost(self, conn: Session, exc: BaseException) -> bool:
        if isinstance(exc, ssl.SSLCertVerificationError):
            return False
        if isinstance(exc, (ssl.SSLError, ftplib.error_reply, ftplib.error_proto)):
            return True  # the session is out of step with the server: start over
        if isinstance(exc, ftplib.error_temp):
            # 421 "service not available, closing"; 425/426: the data connection could
            # not be opened or broke mid-transfer: start over on a fresh session
            return str(exc).startswith(("421", "425", "426"))
        return is_network_error(exc)

    # --- helpers --------------------------------------------------------------------
    def _abs(self, s: Session, rel: str) -> str:
        return posixpath.join(s.root, rel) if rel else s.root

    def _is_dir(self, s: Session, absolute: str) -> bool:
        try:
            s.ftp.cwd(absolute)
            return True
        except ftplib.error_perm:
            return False

    def _size(self, s: Session, absolute: str) -> int | None:
        """SIZE of a file, None if the server cannot tell (a directory, no SIZE...)."""
        try:
            # ftplib switches to ASCII for every listing (retrlines sends TYPE A), and
            # servers refuse SIZE in ASCII mode (550), or count converted line endings
            s.ftp.voidcmd("TYPE I")
            size = s.ftp.size(absolute)
        except ftplib.error_perm:
            return None
        return int(size) if size is not None else None

    def _mdtm_raw(self, s: Session, absolute: str) -> str | None:
        try:
            resp = s.ftp.sendcmd("MDTM " + absolute)
        except ftplib.error_perm:
            return None
        return resp[4:].strip() if resp.startswith("213") else None

    def _mdtm(self, s: Session, absolute: str) -> float | None:
        raw = self._mdtm_raw(s, absolute)
        return self.clock.epoch(raw) if raw else None

    def _exists(self, s: Session, rel: str) -> bool:
        absolute = self._abs(s, rel)
        if self._size(s, absolute) is not None or self._is_dir(s, absolute):
            return True
        if not rel:
            return False
        parent, name = posixpath.split(rel)
        try:
            listing = self._list(s, parent)
        except FileNotFoundError:
            return False
        return any(e.name == name for e in listing.entries + listing.skipped)  # type: ignore[operator]

    def _missing_or_denied(self, s: Session, rel: str, exc: ftplib.Error) -> OSError:
        """Turn a 5xx reply about `rel` into FileNotFoundError or PermissionError."""
        if self._exists(s, rel):
            return PermissionError(errno.EACCES, scrub(exc), f"{self.url} {rel}")
        return FileNotFoundError(errno.ENOENT, "no such file or directory", f"{self.url} {rel}")

    def _clock_ready(self, s: Session) -> None:
        if self.clock.auto and self.clock.offset is None:
            measure_clock(s, self.clock, self.url)

    # --- listing --------------------------------------------------------------------
    def _list(self, s: Session, rel: str) -> Listing:
        self._clock_ready(s)
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

    def _list_mlsd(self, s: Session, rel: str, absolute: str) -> Listing:
        listing = Listing()
        for name, facts in s.ftp.mlsd(absolute):
            kind = mlsd_kind(facts)
            if kind is None or name in (".", ".."):
                continue
            size = int(facts["size"]) if facts.get("size", "").isdigit() else 0
            mtime = self.clock.epoch(facts["modify"]) if "modify" in facts else None
            sort_entry(listing, rel, name, kind, size, mtime)
        return listing

    def _list_plain(self, s: Session, rel: str, absolute: str) -> Listing:
        """LIST (parsed), then exact SIZE/MDTM per file: LIST dates are minutes at best."""
        try:
            s.ftp.cwd(absolute)
        except ftplib.error_perm as exc:
            raise self._missing_or_denied(s, rel, exc) from None
        lines: list[str] = []
        s.ftp.retrlines("LIST", lines.append)
        listing = Listing()
        for line in lines:
            parsed = parse_list_line(line)
            if parsed is None:
                continue
            name, kind, size, mtime = parsed
            mtime = self.clock.adjust(mtime) if mtime is not None else None
            if kind is EntryKind.FILE and name_problem(name) is None:
                target = posixpath.join(absolute, name)
                exact = self._size(s, target)
                size = exact if exact is not None else size
                mtime = self._mdtm(s, target) or mtime
            sort_entry(listing, rel, name, kind, size, mtime)
        return listing

    def _regular(self, s: Session, rel: str) -> None:
        """Refuse to download what the folder does not list as a plain file."""
        parent, name = posixpath.split(rel)
        try:
            listing = self._list(s, parent)
        except FileNotFoundError:
            raise FileNotFoundError(errno.ENOENT, "no such file", f"{self.url} {rel}") from None
        if any(f.name == name for f in listing.files):
            return
        for entry in listing.skipped:
            if entry.name == name:
                raise NotRegularFile(f"{rel!r} is a {entry.kind}: {entry.reason}", url=self.url)
        if any(d.name == name for d in listing.dirs):
            raise IsADirectoryError(errno.EISDIR, "is a directory", f"{self.url} {rel}")
        raise FileNotFoundError(errno.ENOENT, "no such file", f"{self.url} {rel}")

    # --- the interface --------------------------------------------------------------
    def scan(self, path: str = "") -> Listing:
        rel = normalize(path)
        return self._run("list", lambda s: self._list(s, rel))

    def info(self, path: str) -> FileInfo:
        rel = normalize(path)

        def op(s: Session) -> FileInfo | None:
            self._clock_ready(s)
            absolute = self._abs(s, rel)
            size = self._size(s, absolute)
            if size is None:
                return None
            return FileInfo(posixpath.basename(rel), rel, size, self._mdtm(s, absolute), False)

        found = self._run("stat", op)
        return found if found is not None else super().info(rel)

    def _retrieve(self, s: Session, rel: str, out: IO[bytes]) -> None:
        """RETR into `out`, checked against SIZE so a cut transfer is never "complete"."""
        self._regular(s, rel)
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

    def _store(self, s: Session, rel: str, src: IO[bytes]) -> None:
        src.seek(0)
        try:
            s.ftp.storbinary("STOR " + self._abs(s, rel), src, blocksize=_BLOCK)
        except ftplib.error_perm as exc:
            parent = posixpath.dirname(rel)
            if parent and not self._exists(s, parent):
                raise FileNotFoundError(
                    errno.ENOENT, "no such directory", f"{self.url} {parent}"
                ) from None
            raise PermissionError(errno.EACCES, scrub(exc), f"{self.url} {rel}") from None

    def rename(self, src: str, dst: str) -> None:
        src_rel, dst_rel = normalize(src), normalize(dst)

        def op(s: Session) -> None:
            a, b = self._abs(s, src_rel), self._abs(s, dst_rel)
            try:
                s.ftp.rename(a, b)
                return
            except ftplib.error_perm as exc:
                if not self._exists(s, src_rel) or not self._exists(s, dst_rel):
                    raise self._missing_or_denied(s, src_rel, exc) from None
            self._replace(s, a, b)

        self._run("rename", op)

    def _replace(self, s: Session, a: str, b: str) -> None:
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

        def op(s: Session) -> None:
            try:
                s.ftp.delete(self._abs(s, rel))
            except ftplib.error_perm as exc:
                raise self._missing_or_denied(s, rel, exc) from None

        self._run("remove", op)

    def mkdir(self, path: str) -> None:
        rel = normalize(path)

        def op(s: Session) -> None:
            self._makedirs(s, s.root)  # the URL's folder itself (a feed target may be new)
            walked = ""
            for seg in rel.split("/") if rel else []:
                self._make_real_dir(s, walked, seg)
                walked = child(walked, seg)

        self._run("mkdir", op)

    def _make_real_dir(self, s: Session, parent: str, name: str) -> None:
        """`parent/name` as a real folder: made if missing, refused if a link or a file."""
        listing = self._list(s, parent)
        if any(d.name == name for d in listing.dirs):
            return
        for entry in [*listing.files, *listing.skipped]:
            if entry.name == name:
                kind = entry.kind if isinstance(entry, Skipped) else EntryKind.FILE
                raise UnsafePath(
                    f"{child(parent, name)!r} is a {kind}, not a folder of the drop", url=self.url
                )
        absolute = self._abs(s, child(parent, name))
        try:
            s.ftp.mkd(absolute)
        except ftplib.error_perm as exc:
            if not self._is_dir(s, absolute):  # not created concurrently either
                raise PermissionError(errno.EACCES, scrub(exc), f"{self.url} {absolute}") from None

    def _makedirs(self, s: Session, absolute: str) -> None:
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
                raise PermissionError(errno.EACCES, scrub(exc), f"{self.url} {absolute}") from None
        self._makedirs(s, parent)
        try:
            s.ftp.mkd(absolute)
        except ftplib.error_perm:
            if not self._is_dir(s, absolute):
                raise

    def exists(self, path: str) -> bool:
        rel = normalize(path)
        return self._run("exists", lambda s: self._exists(s, rel))


def _no_port(url: str) -> bool:
    try:
        return urlsplit(url).port is None
    except ValueError:
        return False
