"""The embedded FTP(S) drop, driven by real clients (ftplib, curl) over loopback."""

from __future__ import annotations

import datetime as dt
import ftplib
import ipaddress
import logging
import os
import queue
import shutil
import socket
import ssl
import struct
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from pydantic import ValidationError

from csvbridge.drops.ftpserver import (
    DroppedFile,
    FtpDrop,
    FtpDropSettings,
    check_password,
    hash_password,
)
from csvbridge.errors import DropError
from tests.helpers import kill9, wait_until

HOST = "127.0.0.1"
PASSWORDS = {"alice": "Alice-s3cret-pw!", "bob": "B0b-other-secret"}
CSV = b"id,user.email\n" + b"".join(b"ORD-%05d,c%d@example.com\n" % (i, i) for i in range(4000))


def self_signed(directory: Path) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1/localhost and its key (EC: milliseconds)."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
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
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "drop.pem", directory / "drop.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


class Drop:
    """A running drop and what it handed over."""

    def __init__(self, tmp: Path, *, tls: bool = True, **overrides: object) -> None:
        self.root = tmp / "drop"
        self.cert, self.key = self_signed(tmp) if tls else (None, None)
        values: dict[str, object] = {
            "host": HOST,
            "port": 0,
            "root": self.root,
            "users": [
                # few iterations: tests log in often; production hashes use 600 000
                {"name": n, "password_hash": hash_password(p, iterations=1000)}
                for n, p in PASSWORDS.items()
            ],
            "tls_cert": self.cert,
            "tls_key": self.key,
            "allow_plain_ftp": not tls,
        }
        values.update(overrides)
        self.settings = FtpDropSettings.model_validate(values)
        self.files: queue.Queue[DroppedFile] = queue.Queue()
        self.drop = FtpDrop(self.settings, on_file=self.files.put)

    @property
    def port(self) -> int:
        return self.drop.address[1]

    def client(self, user: str = "alice", password: str | None = None) -> ftplib.FTP:
        if self.cert is None:
            ftp = ftplib.FTP()
        else:
            context = ssl.create_default_context(cafile=str(self.cert))
            ftp = ftplib.FTP_TLS(context=context)
        ftp.connect(HOST, self.port, timeout=10)
        ftp.login(user, PASSWORDS.get(user, "") if password is None else password)
        if isinstance(ftp, ftplib.FTP_TLS):
            ftp.prot_p()
        return ftp

    def taken(self) -> list[DroppedFile]:
        out = []
        while not self.files.empty():
            out.append(self.files.get_nowait())
        return out


@pytest.fixture
def ftps(tmp_path: Path) -> Iterator[Drop]:
    drop = Drop(tmp_path)
    drop.drop.start()
    yield drop
    drop.drop.stop()


@pytest.fixture
def plain(tmp_path: Path) -> Iterator[Drop]:
    drop = Drop(tmp_path, tls=False)
    drop.drop.start()
    yield drop
    drop.drop.stop()


def upload(ftp: ftplib.FTP, name: str, data: bytes) -> None:
    import io

    ftp.storbinary(f"STOR {name}", io.BytesIO(data), blocksize=8192)


def leftovers(home: Path) -> list[str]:
    return sorted(p.name for p in home.iterdir()) if home.exists() else []


# -- passwords and settings -------------------------------------------------------------


def test_password_hashes() -> None:
    encoded = hash_password("correct horse", iterations=1000)
    assert encoded.startswith("pbkdf2_sha256$1000$") and "correct" not in encoded
    assert check_password("correct horse", encoded)
    assert not check_password("correct horsE", encoded)
    assert not check_password("x", "garbage") and not check_password("x", "md5$1$a$b")
    assert hash_password("same", iterations=1000) != hash_password("same", iterations=1000)


def test_settings_refuse_a_plain_password_and_parse_the_url(tmp_path: Path) -> None:
    with pytest.raises(ValidationError, match="must be a pbkdf2_sha256 hash"):
        FtpDropSettings(root=tmp_path, users=[{"name": "a", "password_hash": "hunter22"}])
    s = FtpDropSettings.from_url(
        "ftpserver://0.0.0.0:2121/",
        root=tmp_path,
        users=[{"name": "a", "password_hash": hash_password("p", iterations=1000)}],
    )
    assert (s.host, s.port) == ("0.0.0.0", 2121)
    assert "pbkdf2" not in repr(s)  # even the hash stays out of reprs


def test_no_certificate_and_no_plain_ftp_refuses_to_start(tmp_path: Path) -> None:
    drop = Drop(tmp_path, tls=False, allow_plain_ftp=False)
    with pytest.raises(DropError, match="tls_cert"):
        drop.drop.start()


def test_a_bad_certificate_stops_the_start(tmp_path: Path) -> None:
    drop = Drop(tmp_path)
    drop.settings.tls_key.write_text("not a key")  # type: ignore[union-attr]
    with pytest.raises(DropError, match="TLS certificate or key"):
        drop.drop.start()


def test_passive_connections_use_the_configured_ports(tmp_path: Path) -> None:
    with socket.socket() as probe:  # a free port for a range of one
        probe.bind((HOST, 0))
        free = probe.getsockname()[1]
    drop = Drop(tmp_path, passive_ports=(free, free))
    with drop.drop, drop.client() as ftp:
        assert ftp.makepasv()[1] == free
        upload(ftp, "orders.csv", b"id\n1\n")
    assert drop.files.get(timeout=10).size == 5


# -- uploads ----------------------------------------------------------------------------


def test_ftps_upload_is_handed_over_from_the_users_home(ftps: Drop) -> None:
    with ftps.client() as ftp:
        upload(ftp, "orders.csv", CSV)
        [dropped] = [ftps.files.get(timeout=10)]
        assert ftps.taken() == []
    home = ftps.root / "alice"
    assert dropped == DroppedFile("alice", home / "orders.csv", len(CSV), HOST)
    assert dropped.path.read_bytes() == CSV
    assert leftovers(home) == ["orders.csv"]  # no temporary name left
    assert oct(dropped.path.stat().st_mode & 0o777) == "0o600"


def test_users_have_their_own_homes_and_names_never_clash(ftps: Drop) -> None:
    with ftps.client("bob") as ftp:
        upload(ftp, "orders.csv", b"first")
        upload(ftp, "orders.csv", b"second")  # the first still waits: both are kept
        with pytest.raises(ftplib.error_perm):
            ftp.cwd("../alice")
        with pytest.raises(ftplib.error_perm):
            upload(ftp, ".hidden.csv", b"x")  # dot names are the drop's own
        with pytest.raises(ftplib.error_perm):
            ftp.storbinary("APPE orders.csv", __import__("io").BytesIO(b"more"))
    got = [ftps.files.get(timeout=10) for _ in range(2)]
    bob = ftps.root / "bob"
    assert [(d.user, d.path, d.path.read_bytes()) for d in got] == [
        ("bob", bob / "orders.csv", b"first"),
        ("bob", bob / "orders.1.csv", b"second"),
    ]
    assert leftovers(ftps.root / "alice") == []


def test_wrong_password_and_unknown_user_are_refused(
    ftps: Drop, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    for user, password in (("alice", "Bob-s-password"), ("mallory", "anything")):
        with pytest.raises(ftplib.error_perm, match="530"):
            ftps.client(user, password)
    assert "Bob-s-password" not in caplog.text and "failed login" in caplog.text
    assert ftps.taken() == []


def test_plain_ftp_is_refused_when_tls_is_required(ftps: Drop) -> None:
    ftp = ftplib.FTP()
    ftp.connect(HOST, ftps.port, timeout=10)
    with pytest.raises(ftplib.error_perm, match="SSL/TLS required"):
        ftp.login("alice", PASSWORDS["alice"])
    ftp.close()


def test_plain_ftp_when_allowed(plain: Drop) -> None:
    with plain.client() as ftp:
        upload(ftp, "orders.csv", CSV)
    assert plain.files.get(timeout=10).path.read_bytes() == CSV


def test_quota_aborts_the_upload_and_nothing_is_taken(tmp_path: Path) -> None:
    drop = Drop(tmp_path, max_file_bytes=20_000)
    with drop.drop:
        with drop.client() as ftp, pytest.raises((ftplib.Error, OSError)):
            upload(ftp, "big.csv", CSV)  # ~100 KB
        wait_until(lambda: drop.drop.refused, what="the refused upload")
        [refused] = drop.drop.refused
        assert refused.name == "big.csv" and refused.reason == "over the size limit"
        with drop.client() as ftp:  # a file within the quota still goes
            upload(ftp, "small.csv", CSV[:10_000])
        assert drop.files.get(timeout=10).path.name == "small.csv"
    assert drop.taken() == [] and leftovers(drop.root / "alice") == ["small.csv"]


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")
@pytest.mark.parametrize("tls", [True, False], ids=["ftps", "ftp"])
def test_curl_uploads(tmp_path: Path, tls: bool) -> None:
    drop = Drop(tmp_path, tls=tls)
    source = tmp_path / "orders-curl.csv"
    source.write_bytes(CSV)
    with drop.drop:
        cmd = ["curl", "--silent", "--show-error", "--max-time", "30", "-T", str(source)]
        cmd += ["--user", f"bob:{PASSWORDS['bob']}", f"ftp://{HOST}:{drop.port}/"]
        if tls:
            cmd += ["--ssl-reqd", "--cacert", str(drop.cert)]
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr
        dropped = drop.files.get(timeout=10)
        bad = subprocess.run(
            [*cmd[:-3], "--user", "bob:wrong", *cmd[-2:]],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert bad.returncode != 0 and drop.taken() == []
    assert (dropped.user, dropped.path.name, dropped.size) == ("bob", "orders-curl.csv", len(CSV))
    assert dropped.path.read_bytes() == CSV


# -- interrupted uploads ----------------------------------------------------------------


def test_upload_cut_by_a_reset_data_connection_is_never_taken(plain: Drop) -> None:
    with plain.client() as ftp:
        ftp.voidcmd("TYPE I")
        conn = ftp.transfercmd("STOR cut.csv")
        conn.sendall(CSV[:30_000])
        home = plain.root / "alice"
        wait_until(
            lambda: any(p.stat().st_size >= 30_000 for p in home.glob(".cut.csv.*")),
            what="the server has the first 30 KB",
        )
        # RST instead of FIN: what a dropped network path or a killed router produces
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        conn.close()
        wait_until(lambda: plain.drop.refused, what="the cut upload refused")
        with pytest.raises(ftplib.Error):
            ftp.voidresp()
        upload(ftp, "after.csv", b"the session still works")
    assert plain.files.get(timeout=10).path.name == "after.csv"
    [refused] = plain.drop.refused
    assert refused.name == "cut.csv" and "reset" in refused.reason
    assert plain.taken() == [] and leftovers(plain.root / "alice") == ["after.csv"]


UPLOADER = """
import ftplib, ssl, sys, time
port, cert, password = int(sys.argv[1]), sys.argv[2], sys.argv[3]
if cert:
    ftp = ftplib.FTP_TLS(context=ssl.create_default_context(cafile=cert))
else:
    ftp = ftplib.FTP()
ftp.connect("127.0.0.1", port, timeout=10)
ftp.login("alice", password)
if cert:
    ftp.prot_p()
ftp.voidcmd("TYPE I")
conn = ftp.transfercmd("STOR crash.csv")  # TLS-wrapped by ftplib after PROT P
sent = 0
while True:  # slow, endless upload: the test kills us in the middle
    conn.sendall(b"x" * 4096)
    sent += 4096
    print(sent, flush=True)
    time.sleep(0.005)
"""


@pytest.mark.parametrize("tls", [True, False], ids=["ftps", "ftp"])
def test_upload_cut_by_a_client_crash_is_never_taken(tmp_path: Path, tls: bool) -> None:
    drop = Drop(tmp_path, tls=tls)
    with drop.drop:
        cmd = [
            sys.executable,
            "-c",
            UPLOADER,
            str(drop.port),
            str(drop.cert or ""),
            PASSWORDS["alice"],
        ]
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        assert proc.stdout is not None
        wait_until(lambda: int(proc.stdout.readline() or 0) >= 40_000, what="40 KB sent")
        kill9(proc)  # the kernel closes both connections cleanly (FIN), as in a crash
        wait_until(lambda: drop.drop.refused or not drop.files.empty(), what="a verdict")
        assert drop.taken() == []
        [refused] = drop.drop.refused
        assert refused.name == "crash.csv" and refused.received_bytes >= 40_000
        with drop.client() as ftp:  # the drop still serves
            upload(ftp, "next.csv", b"ok")
        assert drop.files.get(timeout=10).path.name == "next.csv"
    assert drop.taken() == [] and leftovers(drop.root / "alice") == ["next.csv"]


def test_partial_uploads_left_by_a_crash_are_swept_at_start(tmp_path: Path) -> None:
    home = tmp_path / "drop" / "alice"
    home.mkdir(parents=True)
    (home / ".orders.csv.1a2b3c4d.upload").write_bytes(b"half a fi")
    (home / "waiting.csv").write_bytes(b"complete, not yet claimed")
    drop = Drop(tmp_path, quarantine_dir=tmp_path / "quarantine")
    with drop.drop:
        assert leftovers(home) == ["waiting.csv"]
    assert [p.name.split("-", 1)[1] for p in (tmp_path / "quarantine").iterdir()] == [
        "orders.csv.1a2b3c4d.upload"
    ]
    assert os.path.exists(home / "waiting.csv")
