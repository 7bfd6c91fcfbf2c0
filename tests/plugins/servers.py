"""pytest fixtures (servers): real FTP, FTPS and SFTP servers on loopback.

Each server listens on an ephemeral port, serves a directory under `tmp_path`, runs in its
own thread, and is known to be ready when the fixture yields (a client read its banner).
They can also misbehave on purpose, which is what the reconnection tests need:

- ``disconnect_clients()`` drops every connected session, like an idle timeout;
- ``stop()`` / ``start()`` / ``restart()`` take the server away and bring it back on the
  same port, like a redeploy;
- FTP only: ``drop_downloads(after_bytes, times)`` cuts control and data connections in
  the middle of a RETR, ``mlsd = False`` makes MLSD "not understood" (LIST fallback),
  ``rename_replaces = False`` makes RNTO refuse an existing target (Windows servers),
  ``prohibit_dot_files = True`` answers ``553 Prohibited file name`` to a STOR of a
  hidden name (pure-ftpd ProhibitDotFilesWrite), ``use_localtime = True`` reports MDTM,
  MLSD and LIST times in local time (vsftpd use_localtime=YES), ``extra_mlsd`` /
  ``extra_list`` add raw lines to every listing (hostile servers), and MLSD reports links
  as pure-ftpd does (``type=OS.unix=slink:<target>``; pyftpdlib alone follows them).
  ``read_only = True`` refuses every STOR (550), as a read-only account.
  ``implicit=True`` (with TLS) serves implicit FTPS: TLS from the first byte.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import ipaddress
import logging
import os
import queue
import socket
import ssl
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import asyncssh
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from pyftpdlib.authorizers import DummyAuthorizer
from pyftpdlib.filesystems import AbstractedFS
from pyftpdlib.handlers import DTPHandler, FTPHandler
from pyftpdlib.ioloop import IOLoop
from pyftpdlib.servers import FTPServer

HOST = "127.0.0.1"
USERNAME = "csvbridge"
PASSWORD = "s3cret-Pa55word!"  # distinctive, so tests can grep for leaks

logging.getLogger("pyftpdlib").setLevel(logging.WARNING)
logging.getLogger("asyncssh").setLevel(logging.WARNING)


def _wait_for_banner(port: int, prefix: bytes, timeout: float = 10.0, tls: bool = False) -> None:
    """Readiness: connect and read the greeting instead of sleeping."""
    with socket.create_connection((HOST, port), timeout=timeout) as raw:
        sock = raw
        if tls:  # implicit FTPS: the greeting comes after the handshake
            context = ssl.create_default_context()
            context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
            sock = context.wrap_socket(raw, server_hostname=HOST)
        greeting = sock.makefile("rb").readline()
    if not greeting.startswith(prefix):
        raise RuntimeError(f"unexpected greeting on port {port}: {greeting!r}")


# --- FTP / FTPS ---------------------------------------------------------------------------


def make_tls_files(directory: Path) -> tuple[Path, Path, Path]:
    """A throwaway CA and a server certificate for 127.0.0.1/localhost signed by it.

    Returns (ca_cert, server_cert, server_key).  EC keys: generated in milliseconds.
    """
    now = dt.datetime.now(dt.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "csvbridge test CA")])
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), False)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address(HOST))]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False
        )
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), False
        )
        .sign(ca_key, hashes.SHA256())
    )
    directory.mkdir(parents=True, exist_ok=True)
    ca_path, cert_path, key_path = (
        directory / "ca.pem",
        directory / "server.pem",
        directory / "server.key",
    )
    ca_path.write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return ca_path, cert_path, key_path


class FTPTestServer:
    """pyftpdlib in a thread, with switches for the failures real servers produce."""

    def __init__(
        self,
        root: Path,
        *,
        tls_files: tuple[Path, Path, Path] | None = None,
        implicit: bool = False,
    ) -> None:
        self.root = root
        self.implicit = implicit
        self.username = USERNAME
        self.password = PASSWORD
        self.tls = tls_files is not None
        self.ca_file = tls_files[0] if tls_files else None
        self.port = 0
        self.mlsd = True
        self.rename_replaces = True
        self.prohibit_dot_files = False
        self.read_only = False  # every STOR answered "550 Permission denied."
        self.use_localtime = False
        self.extra_mlsd: list[str] = []
        self.extra_list: list[str] = []
        self.sessions = 0  # logins so far: lets tests see that a reconnect happened
        self._drop_after = 0
        self._drops_left = 0
        self._handler = self._make_handler(tls_files)
        self._server: FTPServer | None = None
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()
        self._calls: queue.Queue[tuple[Callable[[], None], threading.Event]] = queue.Queue()

    @property
    def url(self) -> str:
        scheme = "ftps+implicit" if self.implicit else "ftps" if self.tls else "ftp"
        return f"{scheme}://{self.username}@{HOST}:{self.port}/"

    def _make_handler(self, tls_files: tuple[Path, Path, Path] | None) -> type[FTPHandler]:
        ctl = self
        authorizer = DummyAuthorizer()
        authorizer.add_user(self.username, self.password, str(self.root), perm="elradfmwMT")
        if tls_files:
            from pyftpdlib.handlers import TLS_DTPHandler, TLS_FTPHandler

            base_handler: type[FTPHandler] = TLS_FTPHandler
            base_dtp: type[DTPHandler] = TLS_DTPHandler
        else:
            base_handler, base_dtp = FTPHandler, DTPHandler

        class DTP(base_dtp):  # type: ignore[valid-type,misc]
            def send(self, data: bytes) -> int:
                sent = super().send(data)
                if (
                    ctl._drops_left
                    and self.file_obj is not None
                    and not self.receive
                    and self.tot_bytes_sent >= ctl._drop_after
                ):
                    ctl._drops_left -= 1
                    self.cmd_channel.close()  # control and data at once, like a crash
                return sent

        class FS(AbstractedFS):
            def format_mlsx(self, basedir: str, listing: Any, *args: Any, **kw: Any) -> Any:
                for line in super().format_mlsx(basedir, listing, *args, **kw):
                    facts, _, name = line.decode().rstrip("\r\n").partition(" ")
                    path = os.path.join(basedir, name)
                    if os.path.islink(path):  # as pure-ftpd: say it is a link
                        kept = [f for f in facts.split(";") if f and not f.startswith("type=")]
                        facts = f"type=OS.unix=slink:{os.readlink(path)};" + ";".join(kept) + ";"
                    yield f"{facts} {name}\r\n".encode()
                for extra in ctl.extra_mlsd:
                    yield (extra + "\r\n").encode()

            def format_list(self, basedir: str, listing: Any, *args: Any, **kw: Any) -> Any:
                yield from super().format_list(basedir, listing, *args, **kw)
                for extra in ctl.extra_list:
                    yield (extra + "\r\n").encode()

        class Handler(base_handler):  # type: ignore[valid-type,misc]
            dtp_handler = DTP
            abstracted_fs = FS

            @property  # type: ignore[misc]
            def use_gmt_times(self) -> bool:  # vsftpd use_localtime=YES when False
                return not ctl.use_localtime

            def handle(self) -> None:
                if ctl.implicit:  # TLS before the greeting
                    self.secure_connection(self.ssl_context)
                super().handle()

            def ftp_STOR(self, file: str, mode: str = "w") -> Any:
                if ctl.read_only:
                    self.respond("550 Permission denied.")
                    return None
                if ctl.prohibit_dot_files and os.path.basename(file).startswith("."):
                    self.respond("553 Prohibited file name: " + os.path.basename(file))
                    return None
                return super().ftp_STOR(file, mode)

            use_sendfile = False  # so DTP.send sees the bytes
            auth_failed_timeout = 0
            banner = "csvbridge test server ready."

            def on_login(self, username: str) -> None:
                ctl.sessions += 1

            def ftp_MLSD(self, path: str) -> Any:
                if not ctl.mlsd:
                    self.respond("500 Command not understood.")
                    return None
                return super().ftp_MLSD(path)

            def ftp_RNTO(self, path: str) -> Any:
                if not ctl.rename_replaces and self._rnfr and self.fs.lexists(path):
                    self._rnfr = None
                    self.respond("550 Cannot rename: destination exists.")
                    return None
                return super().ftp_RNTO(path)

        Handler.authorizer = authorizer
        if tls_files:
            Handler.certfile = str(tls_files[1])
            Handler.keyfile = str(tls_files[2])
            Handler.tls_control_required = True  # proves the client really uses TLS
            Handler.tls_data_required = True
        return Handler

    # --- lifecycle ----------------------------------------------------------------
    def start(self) -> None:
        self._stopping.clear()
        self._server = FTPServer((HOST, self.port), self._handler, ioloop=IOLoop())
        self.port = self._server.address[1]
        self._thread = threading.Thread(target=self._serve, name="ftp-test-server", daemon=True)
        self._thread.start()
        _wait_for_banner(self.port, b"220", tls=self.implicit)

    def _serve(self) -> None:
        assert self._server is not None
        while not self._stopping.is_set():
            self._server.serve_forever(timeout=0.02, blocking=False, handle_exit=False)
            while not self._calls.empty():
                fn, done = self._calls.get()
                try:
                    fn()
                finally:
                    done.set()

    def stop(self) -> None:
        """Close the listening socket and every session; the port stays reserved for us."""
        if self._thread is None:
            return
        self._stopping.set()
        self._thread.join(timeout=10)
        self._thread = None
        assert self._server is not None
        self._server.close_all()
        self._server = None

    def restart(self) -> None:
        self.stop()
        self.start()

    def _in_loop(self, fn: Callable[[], None]) -> None:
        """Run `fn` in the server thread (pyftpdlib is not thread-safe)."""
        done = threading.Event()
        self._calls.put((fn, done))
        if not done.wait(timeout=10):
            raise RuntimeError("FTP test server did not run the call")

    def disconnect_clients(self) -> None:
        """Drop every session, as an idle timeout would."""

        def close_all() -> None:
            assert self._server is not None
            for handler in list(self._server.ioloop.socket_map.values()):
                if isinstance(handler, FTPHandler):
                    handler.close()

        self._in_loop(close_all)

    def drop_downloads(self, after_bytes: int, times: int = 1) -> None:
        """Cut the next `times` downloads after `after_bytes` bytes."""

        def arm() -> None:
            self._drop_after, self._drops_left = after_bytes, times

        self._in_loop(arm)


@pytest.fixture
def ftp_server(tmp_path: Path) -> Iterator[FTPTestServer]:
    root = tmp_path / "ftp-home"
    root.mkdir()
    server = FTPTestServer(root)
    server.start()
    yield server
    server.stop()


@pytest.fixture
def ftps_server(tmp_path: Path) -> Iterator[FTPTestServer]:
    root = tmp_path / "ftps-home"
    root.mkdir()
    server = FTPTestServer(root, tls_files=make_tls_files(tmp_path / "tls"))
    server.start()
    yield server
    server.stop()


@pytest.fixture
def ftps_implicit_server(tmp_path: Path) -> Iterator[FTPTestServer]:
    root = tmp_path / "ftpsi-home"
    root.mkdir()
    server = FTPTestServer(root, tls_files=make_tls_files(tmp_path / "tls-i"), implicit=True)
    server.start()
    yield server
    server.stop()


# --- SFTP -------------------------------------------------------------------------------


class SFTPTestServer:
    """asyncssh's SFTP server chrooted to `root`, on its own event loop thread."""

    def __init__(self, root: Path, workdir: Path) -> None:
        self.root = root
        self.workdir = workdir
        self.username = USERNAME
        self.password = PASSWORD
        self.port = 0
        self.host_key = asyncssh.generate_private_key("ssh-ed25519")
        self.fingerprint: str = self.host_key.get_fingerprint("sha256")
        self.fingerprint_md5: str = self.host_key.get_fingerprint("md5")
        self.sessions = 0
        self._authorized: set[bytes] = set()
        self._connections: set[asyncssh.SSHServerConnection] = set()
        self._acceptor: asyncssh.SSHAcceptor | None = None
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="sftp-test-server", daemon=True
        )
        self._thread.start()
        workdir.mkdir(parents=True, exist_ok=True)
        self.client_key = self.add_client_key("ssh-ed25519")
        self.known_hosts = workdir / "known_hosts"

    @property
    def url(self) -> str:
        return f"sftp://{self.username}@{HOST}:{self.port}/"

    @property
    def host_key_line(self) -> str:
        """The server's public key as an OpenSSH known_hosts line for its address."""
        public = self.host_key.export_public_key("openssh").decode().split()[:2]
        return f"[{HOST}]:{self.port} {' '.join(public)}\n"

    def add_client_key(
        self, algorithm: str, passphrase: str | None = None, fmt: str = "openssh"
    ) -> Path:
        """Generate a client key the server accepts; returns its private key file.

        `fmt` is asyncssh's format name: "openssh", "pkcs1-pem" or "pkcs8-pem".
        """
        options = {"key_size": 2048} if algorithm == "ssh-rsa" else {}
        key = asyncssh.generate_private_key(algorithm, **options)
        path = self.workdir / f"id_{algorithm}_{fmt}{'_enc' if passphrase else ''}"
        extra = {"rounds": 1, "ignore_few_rounds": True} if passphrase and fmt == "openssh" else {}
        key.write_private_key(str(path), fmt, passphrase=passphrase, **extra)  # fast bcrypt KDF
        path.chmod(0o600)
        self._authorized.add(key.public_data)
        return path

    def _call(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout=20)

    async def _listen(self) -> None:
        ctl = self

        class Server(asyncssh.SSHServer):
            def connection_made(self, conn: asyncssh.SSHServerConnection) -> None:
                self.conn = conn
                ctl._connections.add(conn)

            def connection_lost(self, exc: Exception | None) -> None:
                ctl._connections.discard(self.conn)

            def begin_auth(self, username: str) -> bool:
                return True

            def password_auth_supported(self) -> bool:
                return True

            def validate_password(self, username: str, password: str) -> bool:
                ok = username == ctl.username and password == ctl.password
                ctl.sessions += ok
                return ok

            def public_key_auth_supported(self) -> bool:
                return True

            def validate_public_key(self, username: str, key: asyncssh.SSHKey) -> bool:
                ok = username == ctl.username and key.public_data in ctl._authorized
                ctl.sessions += ok
                return ok

        root = str(self.root)
        self._acceptor = await asyncssh.listen(
            HOST,
            self.port,
            server_factory=Server,
            server_host_keys=[self.host_key],
            sftp_factory=lambda chan: asyncssh.SFTPServer(chan, chroot=root),
            allow_scp=False,
            reuse_address=True,
        )
        self.port = self._acceptor.get_port()

    def start(self) -> None:
        self._call(self._listen())
        self.known_hosts.write_text(self.host_key_line)
        _wait_for_banner(self.port, b"SSH-2.0-")

    async def _close(self, listener: bool) -> None:
        if listener and self._acceptor is not None:
            self._acceptor.close()
            await self._acceptor.wait_closed()
            self._acceptor = None
        for conn in list(self._connections):
            conn.abort()
        self._connections.clear()

    def stop(self) -> None:
        self._call(self._close(listener=True))

    def restart(self) -> None:
        self.stop()
        self.start()

    def disconnect_clients(self) -> None:
        self._call(self._close(listener=False))

    def shutdown(self) -> None:
        self.stop()
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
        self._loop.close()


@pytest.fixture
def sftp_server(tmp_path: Path) -> Iterator[SFTPTestServer]:
    root = tmp_path / "sftp-home"
    root.mkdir()
    server = SFTPTestServer(root, tmp_path / "ssh")
    server.start()
    yield server
    server.shutdown()
