"""What real servers do that the first tests never saw, reproduced on loopback servers.

- pure-ftpd ``ProhibitDotFilesWrite``: ``553 Prohibited file name`` for ``.x.part``;
- FTPS with a private CA (``ca_file``) and implicit FTPS (port 990 style);
- vsftpd ``use_localtime=YES``: MDTM/LIST times in the server's local time;
- SFTP polled by a daemon: one SSH session across polls, paramiko quiet at INFO;
- verification is on by default: unknown SSH host keys and untrusted certificates refused.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydantic import SecretStr

from csvbridge.config import FeedSettings, SourceSettings
from csvbridge.errors import HostKeyError, TerminalError, TransientError
from csvbridge.filesystems import (
    Connections,
    TempNaming,
    UploadRefused,
    filesystem_for,
    open_filesystem,
    put_atomic,
)
from csvbridge.sinks.feed import deliver_feed
from tests.plugins.servers import FTPTestServer, SFTPTestServer

pytestmark = pytest.mark.timeout(60)


def leftovers(root: Path) -> list[str]:
    return sorted(p.name for p in root.rglob("*") if p.name.endswith(".part"))


# --- (a) temporary upload names ---------------------------------------------------------


def feed_settings(server: FTPTestServer, **kw: object) -> FeedSettings:
    return FeedSettings(
        target=server.url,
        password=SecretStr(server.password),
        **kw,  # type: ignore[arg-type]
    )


def test_default_temp_name_falls_back_when_hidden_names_are_prohibited(
    ftp_server: FTPTestServer, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    ftp_server.prohibit_dot_files = True
    local = tmp_path / "conversions_1.csv"
    local.write_bytes(b"a,b\n1,2\n")
    assert deliver_feed(local, feed_settings(ftp_server), rows=1) == "conversions_1.csv"
    assert (ftp_server.root / "conversions_1.csv").read_bytes() == local.read_bytes()
    assert leftovers(ftp_server.root) == []
    assert "553" in caplog.text and "upload_temp_name" in caplog.text


def test_a_refused_upload_is_a_typed_transient_error(
    ftp_server: FTPTestServer, tmp_path: Path
) -> None:
    ftp_server.prohibit_dot_files = True
    local = tmp_path / "feed.csv"
    local.write_bytes(b"x")
    settings = feed_settings(ftp_server, upload_temp_name=".{name}.{token}.part")
    with pytest.raises(UploadRefused) as info:
        deliver_feed(local, settings, rows=1)
    assert isinstance(info.value, TransientError)  # the source file stays for a retry
    assert "553 Prohibited file name" in str(info.value)
    assert ftp_server.password not in str(info.value)
    assert list(ftp_server.root.iterdir()) == []


@pytest.mark.parametrize(
    ("template", "folder", "pattern"),
    [("{name}.{token}.upload", None, ".upload"), ("tmp-{token}-{name}", None, "tmp-")],
)
def test_configured_temp_names_are_used(
    ftp_server: FTPTestServer, tmp_path: Path, template: str, folder: str | None, pattern: str
) -> None:
    ftp_server.prohibit_dot_files = True
    seen: list[str] = []
    local = tmp_path / "feed.csv"
    local.write_bytes(b"y" * 100_000)
    fs = filesystem_for(feed_settings(ftp_server, upload_temp_name=template))
    real_put = fs.put

    def spy(src: Path, path: str) -> None:  # records the name; the upload is real
        seen.append(path)
        real_put(src, path)

    fs.put = spy  # type: ignore[method-assign]
    put_atomic(fs, local, "feed.csv")
    fs.close()
    assert len(seen) == 1 and pattern in seen[0]
    assert sorted(p.name for p in ftp_server.root.iterdir()) == ["feed.csv"]


def test_temp_folder(sftp_server: SFTPTestServer, tmp_path: Path) -> None:
    local = tmp_path / "feed.csv"
    local.write_bytes(b"z" * 1000)
    settings = FeedSettings(
        target=sftp_server.url + "out",
        password=SecretStr(sftp_server.password),
        known_hosts=sftp_server.known_hosts,
        upload_temp_folder="incoming-tmp",
    )
    deliver_feed(local, settings, rows=1)
    assert (sftp_server.root / "out" / "feed.csv").read_bytes() == local.read_bytes()
    assert list((sftp_server.root / "out" / "incoming-tmp").iterdir()) == []
    with pytest.raises(Exception, match="token"):
        TempNaming("{name}.part")


# --- (b) ca_file and implicit FTPS; 5: verification by default ------------------------


@pytest.mark.parametrize("kind", ["ftps", "ftps_implicit"])
def test_ftps_ca_file_from_the_source_settings(kind: str, request: pytest.FixtureRequest) -> None:
    server: FTPTestServer = request.getfixturevalue(f"{kind}_server")
    (server.root / "o.csv").write_bytes(b"o")
    url = server.url
    extra: dict[str, object] = {}
    if kind == "ftps_implicit":  # the other spelling: ftps:// with implicit_tls
        url, extra = url.replace("ftps+implicit://", "ftps://"), {"implicit_tls": True}
    base = SourceSettings(name="s", url=url, password=SecretStr(server.password), **extra)  # type: ignore[arg-type]
    with pytest.raises(TerminalError, match="not trusted.*ca_file"):
        filesystem_for(base).list()  # verified by default: a private CA is refused
    with filesystem_for(base.model_copy(update={"ca_file": server.ca_file})) as fs:
        assert [f.name for f in fs.list()] == ["o.csv"]


def test_implicit_port_without_implicit_tls_says_so(ftps_implicit_server: FTPTestServer) -> None:
    url = ftps_implicit_server.url.replace("ftps+implicit://", "ftps://")
    fs = open_filesystem(
        url, password=ftps_implicit_server.password, ca_file=ftps_implicit_server.ca_file, timeout=2
    )
    with pytest.raises(TransientError, match="cannot connect"):
        fs.list()


def test_sftp_host_key_verified_by_default(sftp_server: SFTPTestServer) -> None:
    settings = SourceSettings(
        name="s", url=sftp_server.url, password=SecretStr(sftp_server.password)
    )
    with pytest.raises(HostKeyError, match="unknown host key"):
        filesystem_for(settings).list()
    wrong = sftp_server.workdir / "other_known_hosts"
    wrong.write_text(sftp_server.host_key_line.replace("AAAA", "BBBB", 1))
    with pytest.raises(Exception):  # noqa: B017 - an unreadable or mismatched key: refused
        filesystem_for(settings.model_copy(update={"known_hosts": wrong})).list()
    ok = settings.model_copy(update={"known_hosts": sftp_server.known_hosts})
    with filesystem_for(ok) as fs:
        assert fs.list() == []


# --- (c) server clocks in local time ----------------------------------------------------


@pytest.fixture
def tokyo() -> Iterator[None]:
    """This process (and so the in-process FTP server) in UTC+9, as a vsftpd host."""
    before = os.environ.get("TZ")
    os.environ["TZ"] = "Asia/Tokyo"
    time.tzset()
    yield
    if before is None:
        os.environ.pop("TZ")
    else:
        os.environ["TZ"] = before
    time.tzset()


@pytest.mark.parametrize("mlsd", [True, False], ids=["MLSD", "LIST+MDTM"])
def test_localtime_server_clock_is_measured(
    ftp_server: FTPTestServer,
    tokyo: None,
    mlsd: bool,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="csvbridge")
    ftp_server.use_localtime, ftp_server.mlsd = True, mlsd
    path = ftp_server.root / "orders.csv"
    path.write_bytes(b"x")
    five_minutes_ago = time.time() - 300
    os.utime(path, (five_minutes_ago, five_minutes_ago))

    def mtime(zone: str | None) -> float:
        with open_filesystem(
            ftp_server.url, password=ftp_server.password, server_timezone=zone
        ) as fs:
            (entry,) = fs.list()
            assert fs.info("orders.csv").mtime == entry.mtime
            assert entry.mtime is not None
            return entry.mtime

    assert abs(mtime(None) - five_minutes_ago - 9 * 3600) < 2  # the bug: 9 h in the future
    assert abs(mtime("auto") - five_minutes_ago) < 2
    assert "+32400 s" in caplog.text
    assert abs(mtime("Asia/Tokyo") - five_minutes_ago) < 2
    assert sorted(p.name for p in ftp_server.root.iterdir()) == ["orders.csv"]  # probe gone


def test_clock_probe_refused_is_a_warning_not_a_failure(
    ftp_server: FTPTestServer, caplog: pytest.LogCaptureFixture
) -> None:
    ftp_server.read_only = True
    (ftp_server.root / "a.csv").write_bytes(b"a")
    with open_filesystem(
        ftp_server.url, password=ftp_server.password, server_timezone="auto"
    ) as fs:
        assert [f.name for f in fs.list()] == ["a.csv"]
        assert "cannot measure the clock" in caplog.text and "550" in caplog.text


# --- (d) one SSH session across polls ---------------------------------------------------


def test_sftp_session_kept_across_polls_and_paramiko_quiet(
    sftp_server: SFTPTestServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    source = SourceSettings(
        name="shop",
        url=sftp_server.url,
        password=SecretStr(sftp_server.password),
        known_hosts=sftp_server.known_hosts,
    )
    (sftp_server.root / "a.csv").write_bytes(b"a")
    pool = Connections()
    for _ in range(5):  # five daemon polls
        with pool.lease(source) as fs:
            assert [f.name for f in fs.list()] == ["a.csv"]
    assert sftp_server.sessions == 1
    sftp_server.disconnect_clients()  # idle timeout on the server side
    with pool.lease(source) as fs:
        assert [f.name for f in fs.list()] == ["a.csv"]  # reconnected transparently
    assert sftp_server.sessions == 2
    with pytest.raises(RuntimeError), pool.lease(source):
        raise RuntimeError("a failing poll")
    assert len(pool) == 0  # dropped after a failure: the next poll starts clean
    changed = source.model_copy(update={"timeout_seconds": 5})
    with pool.lease(changed) as fs:
        fs.list()
    pool.close()
    assert sftp_server.sessions == 3
    assert [r for r in caplog.records if r.name.startswith("paramiko")] == []

    caplog.clear()
    caplog.set_level(logging.DEBUG)
    with filesystem_for(source) as fs:
        fs.list()
    chatter = [r for r in caplog.records if r.name.startswith("paramiko")]
    assert chatter and {r.levelno for r in chatter} == {logging.DEBUG}
