"""The filesystem backends against real servers on loopback.

The contract tests run unchanged over local, FTP, FTPS and SFTP: whatever the watcher and
the feed sink rely on must hold for every drop.  The backend tests then make servers fail
the ways real ones do (cut downloads, restarts, wrong keys) through the fixtures in
tests/plugins/servers.py; ftplib and paramiko are never patched.
"""

from __future__ import annotations

import logging
import os
import threading
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path

import asyncssh
import paramiko
import pytest
from pydantic import SecretStr

from csvbridge.config import FeedSettings, SourceSettings
from csvbridge.errors import ConfigError, HostKeyError, SourceUnavailable, TerminalError
from csvbridge.filesystems import (
    FileInfo,
    FileSystem,
    IncompleteTransfer,
    UploadRefused,
    filesystem_for,
    open_filesystem,
    put_atomic,
)
from csvbridge.filesystems.base import EntryKind, Listing
from csvbridge.filesystems.ftp_listing import parse_list_line
from tests.plugins.servers import PASSWORD, FTPTestServer, SFTPTestServer

pytestmark = pytest.mark.timeout(60)

MTIME = 1_600_000_000  # 2020-09-13, whole seconds: what FTP can represent
WRONG_PASSWORD = "Wr0ng-Pa55word-zz"


@dataclass
class Drop:
    """One backend under test: its served directory and a way to open clients on it."""

    name: str
    root: Path
    connect: Callable[..., FileSystem]
    server: FTPTestServer | SFTPTestServer | None = None
    opened: list[FileSystem] = field(default_factory=list)

    def open(self, **kwargs: object) -> FileSystem:
        fs = self.connect(**kwargs)
        self.opened.append(fs)
        return fs


@pytest.fixture(params=["local", "ftp", "ftps", "ftps_implicit", "sftp"])
def drop(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Drop]:
    name = request.param
    if name == "local":
        root = tmp_path / "drop"
        root.mkdir()
        d = Drop(name, root, lambda **kw: open_filesystem(root.as_uri(), **kw))
    elif name in ("ftp", "ftps", "ftps_implicit"):
        server = request.getfixturevalue(f"{name}_server")
        d = Drop(
            name,
            server.root,
            lambda **kw: open_filesystem(
                kw.pop("url", server.url),
                password=server.password,
                ca_file=server.ca_file,
                timeout=10,
                **kw,
            ),
            server,
        )
    else:
        server = request.getfixturevalue("sftp_server")
        d = Drop(
            name,
            server.root,
            lambda **kw: open_filesystem(
                kw.pop("url", server.url),
                password=server.password,
                known_hosts=server.known_hosts,
                timeout=10,
                **kw,
            ),
            server,
        )
    yield d
    for fs in d.opened:
        fs.close()


def leftovers(root: Path) -> list[str]:
    """Temporary upload files anywhere under `root`."""
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.name.endswith(".part"))


def assert_no_secret(exc: BaseException, *texts: str, secrets: tuple[str, ...] = ()) -> None:
    """Neither the exception (message, repr, chained causes) nor `texts` show a secret."""
    rendered = list(texts)
    seen: BaseException | None = exc
    while seen is not None:
        rendered += [str(seen), repr(seen), *traceback.format_exception_only(seen)]
        seen = seen.__cause__ or seen.__context__
    for secret in (PASSWORD, WRONG_PASSWORD, *secrets):
        assert not any(secret in text for text in rendered)


# --- contract: every backend ------------------------------------------------------------


def test_list_shows_files_and_dirs_with_size_and_mtime(drop: Drop) -> None:
    (drop.root / "orders.csv").write_bytes(b"a;b\n1;2\n")
    os.utime(drop.root / "orders.csv", (MTIME, MTIME))
    (drop.root / "archive").mkdir()
    (drop.root / "archive" / "old.csv").write_bytes(b"x" * 1234)
    os.utime(drop.root / "archive" / "old.csv", (MTIME + 60, MTIME + 60))
    fs = drop.open()

    top = {e.name: e for e in fs.list()}
    assert set(top) == {"orders.csv", "archive"}
    assert top["orders.csv"] == FileInfo("orders.csv", "orders.csv", 8, MTIME, False)
    assert top["archive"].is_dir and top["archive"].path == "archive"

    (entry,) = fs.list("archive")
    assert entry == FileInfo("old.csv", "archive/old.csv", 1234, MTIME + 60, False)
    assert fs.info("archive/old.csv") == entry


def test_binary_round_trip_of_two_megabytes(drop: Drop, tmp_path: Path) -> None:
    data = os.urandom(2 * 1024 * 1024 + 17)
    src, back = tmp_path / "src.bin", tmp_path / "back.bin"
    src.write_bytes(data)
    fs = drop.open()

    fs.put(src, "upload.bin")
    assert (drop.root / "upload.bin").read_bytes() == data
    fs.get("upload.bin", back)
    assert back.read_bytes() == data
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".part")] == []


def test_read_and_write_bytes(drop: Drop) -> None:
    fs = drop.open()
    fs.write_bytes("note.txt", b"\x00\xffbinary\r\n")
    assert (drop.root / "note.txt").read_bytes() == b"\x00\xffbinary\r\n"
    assert fs.read_bytes("note.txt") == b"\x00\xffbinary\r\n"
    fs.write_bytes("note.txt", b"")  # overwrite, empty
    assert fs.read_bytes("note.txt") == b""


def test_rename_moves_and_replaces(drop: Drop) -> None:
    (drop.root / "a.csv").write_bytes(b"A")
    (drop.root / "b.csv").write_bytes(b"B")
    (drop.root / "done").mkdir()
    fs = drop.open()

    fs.rename("a.csv", "done/a.csv")
    assert (drop.root / "done" / "a.csv").read_bytes() == b"A"
    assert not (drop.root / "a.csv").exists()

    fs.rename("b.csv", "done/a.csv")  # replaces
    assert (drop.root / "done" / "a.csv").read_bytes() == b"B"
    assert sorted(p.name for p in (drop.root / "done").iterdir()) == ["a.csv"]


def test_remove(drop: Drop) -> None:
    (drop.root / "gone.csv").write_bytes(b"x")
    fs = drop.open()
    fs.remove("gone.csv")
    assert not (drop.root / "gone.csv").exists()
    with pytest.raises(FileNotFoundError):
        fs.remove("gone.csv")


def test_mkdir_creates_parents_and_is_idempotent(drop: Drop) -> None:
    fs = drop.open()
    fs.mkdir("a/b/c")
    fs.mkdir("a/b/c")
    fs.mkdir("a")
    assert (drop.root / "a" / "b" / "c").is_dir()
    fs.write_bytes("a/b/c/f.txt", b"ok")
    assert (drop.root / "a" / "b" / "c" / "f.txt").read_bytes() == b"ok"


def test_exists(drop: Drop) -> None:
    (drop.root / "f.csv").write_bytes(b"x")
    (drop.root / "d").mkdir()
    fs = drop.open()
    assert fs.exists("f.csv")
    assert fs.exists("d")
    assert fs.exists("")
    assert not fs.exists("missing.csv")
    assert not fs.exists("d/missing.csv")


def test_missing_files_raise_file_not_found(drop: Drop, tmp_path: Path) -> None:
    fs = drop.open()
    dest = tmp_path / "dest.csv"
    with pytest.raises(FileNotFoundError):
        fs.get("missing.csv", dest)
    assert not dest.exists()
    assert list(tmp_path.glob(".dest.csv*")) == []
    with pytest.raises(FileNotFoundError):
        fs.read_bytes("missing.csv")
    with pytest.raises(FileNotFoundError):
        fs.rename("missing.csv", "other.csv")
    with pytest.raises(FileNotFoundError):
        fs.list("no-such-dir")
    with pytest.raises(FileNotFoundError):
        fs.info("missing.csv")
    with pytest.raises(FileNotFoundError):
        fs.put(tmp_path / "no-local-file", "x.csv")


def test_paths_are_relative_to_the_url_directory(drop: Drop) -> None:
    (drop.root / "in").mkdir()
    (drop.root / "in" / "x.csv").write_bytes(b"x")
    (drop.root / "outside.csv").write_bytes(b"o")
    url = (drop.root / "in").as_uri() if drop.name == "local" else drop.server.url + "in"
    fs = drop.open(url=url) if drop.name != "local" else open_filesystem(url)
    assert [e.path for e in fs.list()] == ["x.csv"]
    assert fs.read_bytes("/x.csv") == b"x"  # a leading slash still means the URL's dir
    with pytest.raises(ValueError):
        fs.read_bytes("../outside.csv")
    with pytest.raises(ValueError):
        fs.remove("evil\r\nDELE outside.csv")
    fs.close()


def test_put_atomic_replaces_and_leaves_no_part_file(drop: Drop, tmp_path: Path) -> None:
    (drop.root / "out").mkdir()
    (drop.root / "out" / "feed.csv").write_bytes(b"old")
    src = tmp_path / "feed.csv"
    src.write_bytes(b"new content\n" * 1000)
    fs = drop.open()
    put_atomic(fs, src, "out/feed.csv")
    assert (drop.root / "out" / "feed.csv").read_bytes() == src.read_bytes()
    assert leftovers(drop.root) == []
    assert sorted(p.name for p in (drop.root / "out").iterdir()) == ["feed.csv"]


def test_concurrent_poller_never_sees_a_partial_file(drop: Drop, tmp_path: Path) -> None:
    contents = [os.urandom(2 * 1024 * 1024), os.urandom(1024 * 1024 + 3)]
    sources = []
    for i, data in enumerate(contents):
        sources.append(tmp_path / f"v{i}.bin")
        sources[-1].write_bytes(data)
    (drop.root / "feed.bin").write_bytes(b"old")
    complete = {3, *(len(c) for c in contents)}
    seen: list[int] = []
    errors: list[BaseException] = []
    polling, stop = threading.Event(), threading.Event()

    def poll() -> None:
        try:
            watcher = drop.open()
            while not stop.is_set():
                seen.extend(e.size for e in watcher.list() if e.name == "feed.bin")
                polling.set()
        except BaseException as exc:  # surfaced below
            errors.append(exc)
            polling.set()

    thread = threading.Thread(target=poll)
    thread.start()
    try:
        assert polling.wait(10)
        fs = drop.open()
        for i in range(4):
            put_atomic(fs, sources[i % 2], "feed.bin")
    finally:
        stop.set()
        thread.join(10)
    assert errors == []
    assert seen and set(seen) <= complete, "the poller saw a half-written feed.bin"
    assert (drop.root / "feed.bin").read_bytes() == contents[1]
    assert leftovers(drop.root) == []


class Faulty(FileSystem):
    """A real backend whose rename fails or whose size check lies, on demand."""

    def __init__(self, inner: FileSystem, *, rename_fails: list[Exception], size_off: int = 0):
        self.inner, self.url = inner, inner.url
        self.rename_fails, self.size_off = rename_fails, size_off

    def rename(self, src: str, dst: str) -> None:
        if self.rename_fails:
            raise self.rename_fails.pop(0)
        self.inner.rename(src, dst)

    def info(self, path: str) -> FileInfo:
        real = self.inner.info(path)
        return replace(real, size=real.size + self.size_off)

    @classmethod
    def from_url(cls, url: str, options: object) -> FileSystem:
        raise NotImplementedError("wraps an open filesystem")

    def scan(self, path: str = "") -> Listing:
        return self.inner.scan(path)

    def get(self, path: str, local: Path) -> None:
        self.inner.get(path, local)

    def put(self, local: Path, path: str) -> None:
        self.inner.put(local, path)

    def read_bytes(self, path: str) -> bytes:
        return self.inner.read_bytes(path)

    def write_bytes(self, path: str, data: bytes) -> None:
        self.inner.write_bytes(path, data)

    def remove(self, path: str) -> None:
        self.inner.remove(path)

    def mkdir(self, path: str) -> None:
        self.inner.mkdir(path)

    def exists(self, path: str) -> bool:
        return self.inner.exists(path)

    def close(self) -> None:
        self.inner.close()


@pytest.mark.parametrize(
    ("rename_fails", "size_off", "expected"),
    [
        ([SourceUnavailable("gone"), SourceUnavailable("gone")], 0, SourceUnavailable),
        ([PermissionError("denied")], 0, UploadRefused),
        ([], 1, IncompleteTransfer),
    ],
    ids=["rename-transient", "rename-terminal", "size-mismatch"],
)
def test_put_atomic_failure_leaves_no_part_file(
    drop: Drop,
    tmp_path: Path,
    rename_fails: list[Exception],
    size_off: int,
    expected: type[Exception],
) -> None:
    (drop.root / "feed.csv").write_bytes(b"previous")
    src = tmp_path / "feed.csv"
    src.write_bytes(b"x" * 50_000)
    fs = Faulty(drop.open(), rename_fails=list(rename_fails), size_off=size_off)
    with pytest.raises(expected):
        put_atomic(fs, src, "feed.csv", attempts=2, backoff=0)
    assert leftovers(drop.root) == []
    assert (drop.root / "feed.csv").read_bytes() == b"previous"


def test_put_atomic_retries_a_transient_failure(drop: Drop, tmp_path: Path) -> None:
    src = tmp_path / "feed.csv"
    src.write_bytes(b"y" * 10_000)
    fs = Faulty(drop.open(), rename_fails=[SourceUnavailable("blip")])
    put_atomic(fs, src, "feed.csv", attempts=2, backoff=0)
    assert (drop.root / "feed.csv").read_bytes() == src.read_bytes()
    assert leftovers(drop.root) == []


def test_repr_and_url_carry_no_password(drop: Drop) -> None:
    fs = drop.open()
    assert PASSWORD not in repr(fs) and PASSWORD not in fs.url
    assert PASSWORD not in repr(vars(fs))


# --- FTP / FTPS -------------------------------------------------------------------------


def ftp_open(server: FTPTestServer, **kw: object) -> FileSystem:
    kw.setdefault("password", server.password)
    return open_filesystem(server.url, ca_file=server.ca_file, timeout=10, **kw)  # type: ignore[arg-type]


@pytest.mark.parametrize("kind", ["ftp", "ftps"])
def test_ftp_download_cut_once_is_retried_transparently(
    kind: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    ftp_server: FTPTestServer = request.getfixturevalue(f"{kind}_server")
    data = os.urandom(2 * 1024 * 1024)
    (ftp_server.root / "big.bin").write_bytes(data)
    with ftp_open(ftp_server) as fs:
        ftp_server.drop_downloads(after_bytes=300_000, times=1)
        fs.get("big.bin", tmp_path / "big.bin")
        assert (tmp_path / "big.bin").read_bytes() == data
        assert ftp_server.sessions == 2  # it did reconnect
        ftp_server.drop_downloads(after_bytes=300_000, times=1)
        assert fs.read_bytes("big.bin") == data


@pytest.mark.parametrize("kind", ["ftp", "ftps"])
def test_ftp_download_cut_twice_fails_without_a_partial_file(
    kind: str, request: pytest.FixtureRequest, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    ftp_server: FTPTestServer = request.getfixturevalue(f"{kind}_server")
    (ftp_server.root / "big.bin").write_bytes(os.urandom(2 * 1024 * 1024))
    dest = tmp_path / "dl" / "big.bin"
    dest.parent.mkdir()
    with ftp_open(ftp_server) as fs:
        ftp_server.drop_downloads(after_bytes=300_000, times=2)
        with pytest.raises(SourceUnavailable) as info:
            fs.get("big.bin", dest)
    assert list(dest.parent.iterdir()) == []  # neither big.bin nor a temporary file
    assert f"{kind}://csvbridge@127.0.0.1" in str(info.value)
    assert_no_secret(info.value, caplog.text)


def test_ftp_reconnects_after_idle_disconnect_and_restart(ftp_server: FTPTestServer) -> None:
    (ftp_server.root / "a.csv").write_bytes(b"a")
    with ftp_open(ftp_server) as fs:
        assert [e.name for e in fs.list()] == ["a.csv"]
        ftp_server.disconnect_clients()
        assert [e.name for e in fs.list()] == ["a.csv"]
        ftp_server.restart()
        assert fs.read_bytes("a.csv") == b"a"
    assert ftp_server.sessions == 3


@pytest.mark.parametrize("kind", ["ftp", "ftps"])
def test_ftp_server_down_is_source_unavailable_without_password(
    kind: str, request: pytest.FixtureRequest, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    server: FTPTestServer = request.getfixturevalue(f"{kind}_server")
    fs = ftp_open(server)
    fs.list()
    server.stop()
    with pytest.raises(SourceUnavailable) as info:
        fs.list()
    assert f"{kind}://csvbridge@127.0.0.1:{server.port}/" in str(info.value)
    assert_no_secret(info.value, caplog.text)
    server.start()  # same port: the next call simply works again
    assert fs.list() == []
    fs.close()


@pytest.mark.parametrize("kind", ["ftp", "ftps"])
def test_ftp_wrong_password_is_terminal_without_password(
    kind: str, request: pytest.FixtureRequest, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    server: FTPTestServer = request.getfixturevalue(f"{kind}_server")
    with pytest.raises(TerminalError) as info:
        ftp_open(server, password=WRONG_PASSWORD).list()
    assert not isinstance(info.value, SourceUnavailable)
    assert str(info.value).startswith(f"authentication failed for {kind}://csvbridge@127.0.0.1")
    assert_no_secret(info.value, caplog.text)


def test_ftps_certificate_is_verified(ftps_server: FTPTestServer) -> None:
    fs = open_filesystem(ftps_server.url, password=ftps_server.password, timeout=10)
    with pytest.raises(TerminalError, match="certificate"):
        fs.list()


def test_ftp_list_falls_back_to_list_size_mdtm(ftp_server: FTPTestServer) -> None:
    (ftp_server.root / "orders.csv").write_bytes(b"x" * 777)
    os.utime(ftp_server.root / "orders.csv", (MTIME, MTIME))
    (ftp_server.root / "sub dir").mkdir()
    (ftp_server.root / "name with spaces.csv").write_bytes(b"y")
    with ftp_open(ftp_server) as fs:
        mlsd = sorted(fs.list(), key=lambda e: e.name)
        ftp_server.mlsd = False
        with ftp_open(ftp_server) as plain:
            listed = sorted(plain.list(), key=lambda e: e.name)
    assert [e.name for e in listed] == ["name with spaces.csv", "orders.csv", "sub dir"]
    assert listed[1] == FileInfo("orders.csv", "orders.csv", 777, MTIME, False)
    assert [(e.name, e.size, e.is_dir) for e in listed if not e.is_dir] == [
        (e.name, e.size, e.is_dir) for e in mlsd if not e.is_dir
    ]
    assert listed[2].is_dir


def test_ftp_rename_over_existing_is_emulated(ftp_server: FTPTestServer) -> None:
    ftp_server.rename_replaces = False
    (ftp_server.root / "new.csv").write_bytes(b"new")
    (ftp_server.root / "feed.csv").write_bytes(b"old")
    with ftp_open(ftp_server) as fs:
        fs.rename("new.csv", "feed.csv")
    assert sorted(p.name for p in ftp_server.root.iterdir()) == ["feed.csv"]
    assert (ftp_server.root / "feed.csv").read_bytes() == b"new"


def test_ftp_active_mode(ftp_server: FTPTestServer) -> None:
    (ftp_server.root / "a.csv").write_bytes(b"active")
    with ftp_open(ftp_server, passive=False) as fs:
        assert fs.read_bytes("a.csv") == b"active"
        assert [e.name for e in fs.list()] == ["a.csv"]


def test_list_line_parsing() -> None:
    unix = "-rw-r--r--   1 owner    group     12345 Sep 13  2020 orders 2020.csv"
    assert parse_list_line(unix) == ("orders 2020.csv", EntryKind.FILE, 12345, 1599955200.0)
    assert parse_list_line("drwxr-xr-x 2 0 0 4096 Jan  5 10:30 archive")[:3] == (
        "archive",
        EntryKind.DIR,
        4096,
    )
    assert parse_list_line("lrwxrwxrwx 1 u g 7 Jan 5 2021 latest.csv -> a.csv")[:2] == (
        "latest.csv",
        EntryKind.LINK,
    )
    assert parse_list_line("prw-r--r-- 1 u g 0 Jan 5 2021 x.csv")[:2] == ("x.csv", EntryKind.FIFO)
    assert parse_list_line("09-13-20  02:30PM       <DIR>          archive") == (
        "archive",
        EntryKind.DIR,
        0,
        1600007400.0,
    )
    assert parse_list_line("09-13-2020  02:30AM  42 a b.csv")[:3] == (
        "a b.csv",
        EntryKind.FILE,
        42,
    )
    assert parse_list_line("total 12") is None


# --- SFTP -------------------------------------------------------------------------------


def sftp_open(server: SFTPTestServer, **kw: object) -> FileSystem:
    if "private_key" not in kw:
        kw.setdefault("password", server.password)
    return open_filesystem(server.url, timeout=10, **kw)  # type: ignore[arg-type]


def test_sftp_unknown_host_key_is_refused(sftp_server: SFTPTestServer) -> None:
    with pytest.raises(HostKeyError) as info:
        sftp_open(sftp_server).list()
    assert "unknown host key" in str(info.value)
    assert sftp_server.fingerprint in str(info.value)  # so an operator can verify and pin it


def test_sftp_wrong_pinned_fingerprint_is_refused(sftp_server: SFTPTestServer) -> None:
    other = asyncssh.generate_private_key("ssh-ed25519").get_fingerprint("sha256")
    for allow in (False, True):  # allow_unknown_host never waves a mismatch through
        with pytest.raises(HostKeyError) as info:
            sftp_open(sftp_server, host_key_fingerprint=other, allow_unknown_host=allow).list()
        assert sftp_server.fingerprint in str(info.value) and other in str(info.value)


@pytest.mark.parametrize("form", ["sha256", "sha256-padded", "md5", "ssh-keygen-line"])
def test_sftp_correct_pinned_fingerprint_is_accepted(
    sftp_server: SFTPTestServer, form: str
) -> None:
    pin = {
        "sha256": sftp_server.fingerprint,
        "sha256-padded": sftp_server.fingerprint + "=",
        "md5": sftp_server.fingerprint_md5,
        "ssh-keygen-line": f"256 {sftp_server.fingerprint} root@drop (ED25519)",
    }[form]
    (sftp_server.root / "a.csv").write_bytes(b"a")
    with sftp_open(sftp_server, host_key_fingerprint=pin) as fs:
        assert [e.name for e in fs.list()] == ["a.csv"]


def test_sftp_known_hosts(sftp_server: SFTPTestServer, tmp_path: Path) -> None:
    with sftp_open(sftp_server, known_hosts=sftp_server.known_hosts) as fs:
        assert fs.list() == []

    hashed = tmp_path / "known_hosts_hashed"
    host, keytype, key = sftp_server.host_key_line.split()
    hashed.write_text(f"{paramiko.HostKeys.hash_host(host)} {keytype} {key}\n")
    with sftp_open(sftp_server, known_hosts=hashed) as fs:
        assert fs.list() == []

    impostor = asyncssh.generate_private_key("ssh-ed25519").export_public_key().decode()
    wrong = tmp_path / "known_hosts_wrong"
    wrong.write_text(f"{host} {' '.join(impostor.split()[:2])}\n")
    with pytest.raises(HostKeyError, match="does not match known_hosts"):
        sftp_open(sftp_server, known_hosts=wrong, allow_unknown_host=True).list()

    elsewhere = tmp_path / "known_hosts_other_host"
    elsewhere.write_text(sftp_server.host_key_line.replace("127.0.0.1", "10.9.9.9"))
    with pytest.raises(HostKeyError, match="unknown host key"):
        sftp_open(sftp_server, known_hosts=elsewhere).list()


def test_sftp_allow_unknown_host_warns(
    sftp_server: SFTPTestServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="csvbridge")
    with sftp_open(sftp_server, allow_unknown_host=True) as fs:
        assert fs.list() == []
    assert any(sftp_server.fingerprint in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize(
    ("algorithm", "fmt", "passphrase"),
    [
        ("ssh-ed25519", "openssh", "key-Passphrase-1"),
        ("ssh-ed25519", "openssh", None),
        ("ecdsa-sha2-nistp256", "openssh", None),
        ("ecdsa-sha2-nistp256", "pkcs1-pem", "key-Passphrase-1"),  # BEGIN EC PRIVATE KEY
        ("ssh-rsa", "openssh", None),
        ("ssh-rsa", "pkcs8-pem", "key-Passphrase-1"),  # BEGIN ENCRYPTED PRIVATE KEY
    ],
)
def test_sftp_key_authentication(
    sftp_server: SFTPTestServer, algorithm: str, fmt: str, passphrase: str | None
) -> None:
    key = sftp_server.add_client_key(algorithm, passphrase, fmt)
    (sftp_server.root / "k.csv").write_bytes(b"k")
    with sftp_open(
        sftp_server,
        private_key=key,
        private_key_passphrase=passphrase,
        known_hosts=sftp_server.known_hosts,
    ) as fs:
        assert fs.read_bytes("k.csv") == b"k"


def test_sftp_key_problems_never_show_the_passphrase(
    sftp_server: SFTPTestServer, tmp_path: Path
) -> None:
    passphrase = "key-Passphrase-2"
    key = sftp_server.add_client_key("ssh-ed25519", passphrase)
    with pytest.raises(ConfigError, match="set private_key_passphrase"):
        sftp_open(sftp_server, private_key=key)
    with pytest.raises(ConfigError, match="wrong passphrase") as info:
        sftp_open(sftp_server, private_key=key, private_key_passphrase="Not-the-Phrase-9")
    assert_no_secret(info.value, secrets=(passphrase, "Not-the-Phrase-9"))

    stranger = asyncssh.generate_private_key("ssh-ed25519")
    stranger.write_private_key(str(tmp_path / "stranger"), "openssh")
    with pytest.raises(TerminalError, match="authentication failed"):
        sftp_open(
            sftp_server, private_key=tmp_path / "stranger", known_hosts=sftp_server.known_hosts
        ).list()


def test_sftp_wrong_password_is_terminal_without_password(
    sftp_server: SFTPTestServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    fs = sftp_open(sftp_server, password=WRONG_PASSWORD, known_hosts=sftp_server.known_hosts)
    with pytest.raises(TerminalError) as info:
        fs.list()
    assert not isinstance(info.value, HostKeyError)
    assert str(info.value) == f"authentication failed for {sftp_server.url}"
    assert_no_secret(info.value, caplog.text, repr(fs))


def test_sftp_reconnects_and_reports_a_dead_server(
    sftp_server: SFTPTestServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    (sftp_server.root / "a.csv").write_bytes(b"a")
    fs = sftp_open(sftp_server, known_hosts=sftp_server.known_hosts)
    assert fs.read_bytes("a.csv") == b"a"
    sftp_server.disconnect_clients()
    assert fs.read_bytes("a.csv") == b"a"
    sftp_server.restart()
    assert [e.name for e in fs.list()] == ["a.csv"]
    assert sftp_server.sessions == 3
    sftp_server.stop()
    with pytest.raises(SourceUnavailable) as info:
        fs.list()
    assert sftp_server.url in str(info.value)
    assert_no_secret(info.value, caplog.text)
    fs.close()


def test_sftp_home_relative_url(sftp_server: SFTPTestServer) -> None:
    (sftp_server.root / "exports").mkdir()
    (sftp_server.root / "exports" / "e.csv").write_bytes(b"e")
    url = sftp_server.url + "~/exports"
    with open_filesystem(
        url, password=sftp_server.password, known_hosts=sftp_server.known_hosts
    ) as fs:
        assert [e.path for e in fs.list()] == ["e.csv"]


# --- opening ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "url",
    [
        "ftp://user:Hunter2-secret@example.com/x",
        "sftp://user:Hunter2-secret@example.com:2222/x",
        "ftps://user:Hunter2-secret/@example.com/x",
        "ftp://user:Hunter2-secret#x@example.com/",
    ],
)
def test_password_in_url_is_refused_without_echo(url: str) -> None:
    with pytest.raises(ConfigError) as info:
        open_filesystem(url)
    assert_no_secret(info.value, secrets=("Hunter2-secret", "Hunter2"))


def test_url_and_settings_checks(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="unsupported URL scheme"):
        open_filesystem("http://example.com/x")
    with pytest.raises(ConfigError, match="username given twice"):
        open_filesystem("ftp://alice@example.com/", username="bob")
    with pytest.raises(ConfigError, match="no password or private key"):
        open_filesystem("sftp://alice@example.com/")
    with pytest.raises(ConfigError, match="host_key_fingerprint"):
        open_filesystem("sftp://a@example.com/", password="x", host_key_fingerprint="nope")
    fs = open_filesystem("ftp://example.com:2121/in%20box", username="bob")
    assert fs.url == "ftp://bob@example.com:2121/in%20box"
    assert open_filesystem(str(tmp_path)).url == tmp_path.as_uri()


def test_relative_file_url(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "feeds").mkdir()
    fs = filesystem_for(FeedSettings())  # default target: file://./feeds
    fs.write_bytes("x.csv", b"x")
    assert (tmp_path / "feeds" / "x.csv").read_bytes() == b"x"


def test_filesystem_for_source_settings(sftp_server: SFTPTestServer) -> None:
    settings = SourceSettings(
        name="shop",
        url=sftp_server.url,
        password=SecretStr(sftp_server.password),
        known_hosts=sftp_server.known_hosts,
        timeout_seconds=5,
    )
    (sftp_server.root / "o.csv").write_bytes(b"o")
    with filesystem_for(settings) as fs:
        assert [e.name for e in fs.list()] == ["o.csv"]


def test_local_missing_root_is_unavailable(tmp_path: Path) -> None:
    fs = open_filesystem((tmp_path / "unmounted").as_uri())
    with pytest.raises(SourceUnavailable):
        fs.list()
