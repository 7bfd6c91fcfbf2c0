"""csvbridge as the FTP drop: an FTPS server (pyftpdlib) that hands over each upload the
moment it is complete.

Why: many ERPs and shops can only *push* a file to an FTP server.  Hosting the drop
ourselves also tells us exactly when a file is whole -- no polling, no stability wait.

How an upload goes:

* ``STOR orders.csv`` writes into a hidden ``.orders.csv.<random>.upload`` beside the final
  name, private (0600), so a poller (or the runner's own scan) never sees a partial file;
* beyond ``max_file_bytes`` the write fails: the client gets ``426 File too large``, the
  partial file is dropped;
* when the data connection ends, pyftpdlib reports it complete or incomplete.  In stream
  mode a clean end of the data connection *is* the end-of-file marker, so we also refuse a
  file when the data connection was reset, when a TLS data stream ended without its
  ``close_notify`` (a truncation), or when the client's control connection closes without
  a further command within ``confirm_seconds`` (0.5 s) of the data's end: a client that
  dies mid-transfer closes both connections at once (the kernel may send the data FIN
  first).  A live client confirms at once by its next command (QUIT, STOR...), or by
  keeping its session open for that long.  A client that deliberately closes the data
  connection early and keeps its session looks complete to any FTP server: undetectable;
* a complete upload is renamed to its final name in the user's home (never replacing a
  file there: ``orders.1.csv`` if ``orders.csv`` is still waiting) and ``on_file`` is
  called with a `DroppedFile`; an incomplete one is deleted, or moved to
  ``quarantine_dir``, and logged, never handed over.


Passwords are stored as PBKDF2-SHA256 hashes (`hash_password` makes one).  TLS is required
on control and data connections unless ``allow_plain_ftp`` is set.

Where the parts live: `csvbridge.drops.ftpserver_settings` (settings, password hashes,
`DroppedFile`/`RefusedUpload`), `csvbridge.drops.ftpserver_handler` (the pyftpdlib handler,
data channel and file system that carry out the rules above), and here the drop itself:
start, stop, and taking or discarding each finished upload.  The public names of all
three are importable from here.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pyftpdlib.handlers import DTPHandler, FTPHandler
from pyftpdlib.ioloop import IOLoop
from pyftpdlib.log import logger
from pyftpdlib.servers import ThreadedFTPServer

from csvbridge.drops.ftpserver_handler import (
    UPLOAD_SUFFIX,
    _Authorizer,
    _CutAwareDTP,
    _DropFS,
    _DropHandlerMixin,
    _Upload,
)
from csvbridge.drops.ftpserver_settings import (
    DEFAULT_ITERATIONS,
    HASH_SCHEME,
    DroppedFile,
    FtpDropSettings,
    FtpUser,
    RefusedUpload,
    check_password,
    hash_password,
)
from csvbridge.errors import DropError

__all__ = [
    "DEFAULT_ITERATIONS",
    "HASH_SCHEME",
    "UPLOAD_SUFFIX",
    "DroppedFile",
    "FtpDrop",
    "FtpDropSettings",
    "FtpUser",
    "RefusedUpload",
    "check_password",
    "hash_password",
]

log = logging.getLogger("csvbridge.drops.ftpserver")

# -- the drop ------------------------------------------------------------------------------


class FtpDrop:
    """The embedded FTP(S) drop.  ``start()`` returns once it accepts connections."""

    def __init__(self, settings: FtpDropSettings, on_file: Callable[[DroppedFile], None]) -> None:
        self.settings, self.on_file = settings, on_file
        self._server: ThreadedFTPServer | None = None
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._lock = threading.RLock()
        self.refused: list[RefusedUpload] = []  # since start, newest last

    @property
    def address(self) -> tuple[str, int]:
        if self._server is None:
            raise DropError("the FTP drop is not running")
        host, port = self._server.address[:2]
        return host, port

    def home_of(self, user: FtpUser) -> Path:
        root = self.settings.root.resolve()
        return (root / (user.home or Path(user.name))).resolve()

    def _handler(self) -> type[FTPHandler]:
        s = self.settings
        tls = s.tls_cert is not None and s.tls_key is not None
        if (s.tls_cert is None) != (s.tls_key is None):
            raise DropError("the FTP drop needs both tls_cert and tls_key, or neither")
        if not tls and not s.allow_plain_ftp:
            raise DropError(
                "the FTP drop needs tls_cert and tls_key (FTPS); set allow_plain_ftp: true "
                "to accept plain FTP on a trusted network"
            )
        authorizer = _Authorizer({u.name: u.password_hash.get_secret_value() for u in s.users})
        for user in s.users:
            home = self.home_of(user)
            root = s.root.resolve()
            if home != root and root not in home.parents:
                raise DropError(f"the home of {user.name} is outside the drop's root")
            home.mkdir(mode=0o700, parents=True, exist_ok=True)
            self._sweep(home)
            authorizer.add_user(user.name, "", str(home), perm="elw")
        if tls:
            from pyftpdlib.handlers import TLS_DTPHandler, TLS_FTPHandler

            base, base_dtp = TLS_FTPHandler, TLS_DTPHandler
        else:
            base, base_dtp = FTPHandler, DTPHandler
        dtp = type("DropDTP", (_CutAwareDTP, base_dtp), {})
        fs = type("DropFS", (_DropFS,), {"limit": s.max_file_bytes})
        attrs: dict[str, Any] = {
            "drop": self,
            "authorizer": authorizer,
            "dtp_handler": dtp,
            "abstracted_fs": fs,
            "banner": "csvbridge drop ready.",
            "timeout": s.idle_timeout_seconds,
            "use_sendfile": False,
            "permit_foreign_addresses": False,
            "masquerade_address": s.masquerade_address,
        }
        if s.passive_ports:
            attrs["passive_ports"] = list(range(s.passive_ports[0], s.passive_ports[1] + 1))
        if tls:
            for path in (s.tls_cert, s.tls_key):
                if not os.access(str(path), os.R_OK):
                    raise DropError(f"cannot read the TLS file {path}")
            attrs.update(
                certfile=str(s.tls_cert),
                keyfile=str(s.tls_key),
                tls_control_required=not s.allow_plain_ftp,
                tls_data_required=not s.allow_plain_ftp,
            )
        handler = type("DropHandler", (_DropHandlerMixin, base), attrs)
        if tls:  # load the certificate now: a bad one must stop the start, not each login
            try:
                handler.get_ssl_context()  # type: ignore[attr-defined]
            except Exception as exc:
                raise DropError(f"cannot use the TLS certificate or key: {exc}") from None
        return handler

    def _sweep(self, home: Path) -> None:
        """Partial uploads left by a previous run (crash, stop mid-transfer) are never
        handed over."""
        for stale in home.glob(f".*{UPLOAD_SUFFIX}"):
            self._dispose(stale, "left over from an earlier run")

    def start(self) -> FtpDrop:
        # pyftpdlib installs its own stderr handler when it finds none: give it one that
        # does nothing, so its lines go through csvbridge's logging setup (text or JSON,
        # its level) instead of being printed beside it
        if not logger.handlers:
            logger.addHandler(logging.NullHandler())
        handler = self._handler()
        s = self.settings
        try:
            server = ThreadedFTPServer((s.host, s.port), handler, ioloop=IOLoop())
        except OSError as exc:
            raise DropError(f"cannot listen on {s.host}:{s.port}: {exc.strerror}") from None
        server.max_cons, server.max_cons_per_ip = s.max_connections, s.max_connections_per_ip
        self._server = server
        self._stop.clear()
        self._thread = threading.Thread(target=self._serve, name="ftp-drop", daemon=True)
        self._thread.start()
        log.info(
            "ftp drop listening on %s:%d (%s)", *self.address, "FTPS" if s.tls_cert else "plain FTP"
        )
        return self

    def _serve(self) -> None:
        server = self._server
        assert server is not None
        try:
            while not self._stop.is_set():
                server.serve_forever(timeout=0.1, blocking=False, handle_exit=False)
        finally:
            server.close_all()

    def stop(self) -> None:
        """Stop listening and end every session (uploads in progress are discarded)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=15)
            self._thread = None
        self._server = None

    def __enter__(self) -> FtpDrop:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- hand-over ---------------------------------------------------------------------

    def _hand_over(self, upload: _Upload, user: str, remote: str) -> None:
        final = Path(upload.final)
        with self._lock:  # two sessions finishing the same name: both kept
            target = final
            for n in range(1, 10_000):
                try:
                    os.link(upload.name, target)
                    break
                except FileExistsError:
                    target = final.with_name(f"{final.stem}.{n}{final.suffix}")
            else:
                self._discard(upload, user, "no free name")
                return
            os.unlink(upload.name)
        dropped = DroppedFile(user, target, upload.size, remote)
        log.info("ftp drop: %s uploaded %s (%d bytes)", user, target.name, upload.size)
        try:
            self.on_file(dropped)
        except Exception:  # the file stays in the home: a later scan takes it
            log.exception("ftp drop: handing over %s failed; it stays in place", target)

    def _discard(self, upload: _Upload, user: str | None, why: str) -> None:
        with self._lock:
            self.refused.append(
                RefusedUpload(user, os.path.basename(upload.final), why, upload.size)
            )
        log.warning(
            "ftp drop: upload of %s by %s not taken (%s, %d bytes received)",
            os.path.basename(upload.final),
            user,
            why,
            upload.size,
        )
        self._dispose(Path(upload.name), why)

    def _dispose(self, path: Path, why: str) -> None:
        quarantine = self.settings.quarantine_dir
        try:
            if quarantine is None:
                path.unlink(missing_ok=True)
                return
            quarantine.mkdir(mode=0o700, parents=True, exist_ok=True)
            stamp = time.strftime("%Y%m%dT%H%M%S")
            os.replace(path, quarantine / f"{stamp}-{path.name.lstrip('.')}")
        except OSError as exc:
            log.error("ftp drop: cannot dispose of %s (%s): %s", path, why, exc)
