"""The protocol registry: each backend declares its schemes and parses its own URL."""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

import pytest

from csvbridge.config import FeedSettings, SourceSettings
from csvbridge.errors import ConfigError
from csvbridge.filesystems import (
    ConnectOptions,
    FileSystem,
    Listing,
    LocalFileSystem,
    filesystem_for,
    implementation,
    open_filesystem,
    options_for,
    protocol_of,
    register,
)
from csvbridge.filesystems.ftp import FTPFileSystem
from csvbridge.filesystems.registry import KNOWN
from csvbridge.filesystems.sftp import SFTPFileSystem


def test_every_builtin_backend_declares_the_schemes_it_is_registered_for() -> None:
    for scheme in KNOWN:
        cls = implementation(scheme)
        assert scheme in cls.protocols
    assert implementation("FTPS") is FTPFileSystem
    assert implementation("sftp") is SFTPFileSystem
    assert implementation("file") is LocalFileSystem


def test_protocol_of() -> None:
    assert protocol_of("/srv/drop") == "file"
    assert protocol_of("drop") == "file"
    assert protocol_of("file:///srv/drop") == "file"
    assert protocol_of("FTPS+Implicit://h/x") == "ftps+implicit"


def test_unknown_scheme_names_the_known_ones() -> None:
    with pytest.raises(ConfigError, match="unsupported URL scheme 'gopher'.*sftp"):
        open_filesystem("gopher://example.com/x")


def test_a_new_backend_plugs_in_by_declaring_its_protocol(tmp_path: Path) -> None:
    class Memory(LocalFileSystem):
        """A test backend: a folder named by the URL's path, behind a new scheme."""

        protocols: ClassVar[tuple[str, ...]] = ("mem",)

        @classmethod
        def from_url(cls, url: str, options: ConnectOptions) -> FileSystem:
            return cls(tmp_path / url.split("://", 1)[1])

    register(Memory)
    (tmp_path / "box").mkdir()
    (tmp_path / "box" / "a.csv").write_bytes(b"a")
    fs = open_filesystem("mem://box")
    assert isinstance(fs, Memory)
    assert isinstance(fs.scan(), Listing)
    assert [f.name for f in fs.list()] == ["a.csv"]
    with pytest.raises(ValueError, match="declares no protocols"):
        register(type("Nothing", (LocalFileSystem,), {"protocols": ()}))


def test_options_come_from_the_settings_sections(tmp_path: Path) -> None:
    ca = tmp_path / "ca.pem"
    ca.write_text("x")
    src = SourceSettings(
        name="s",
        url="ftps://u@h/x",
        ca_file=ca,
        implicit_tls=True,
        server_timezone="Europe/Paris",
        timeout_seconds=7,
    )
    opts = options_for(src)
    assert (opts.ca_file, opts.implicit_tls, opts.timeout) == (ca, True, 7.0)
    assert opts.server_timezone == "Europe/Paris" and opts.create_missing is False
    fs = filesystem_for(src)
    assert isinstance(fs, FTPFileSystem)
    assert fs.location.port == 990  # implicit_tls without a port: the implicit port
    assert fs.url == "ftps://u@h:990/x"

    feed = FeedSettings(target="ftp://u@h/out", upload_temp_name="{name}.{token}.tmp")
    fs = filesystem_for(feed)
    assert fs.temp_naming is not None and fs.temp_naming.template == "{name}.{token}.tmp"
    with pytest.raises(ConfigError, match="token"):
        filesystem_for(FeedSettings(target="ftp://u@h/out", upload_temp_name="{name}.part"))
    with pytest.raises(ConfigError, match="server_timezone"):
        filesystem_for(src.model_copy(update={"server_timezone": "Mars/Olympus"}))


def test_nothing_else_parses_source_urls() -> None:
    """The registry is the only reader of drop URLs in csvbridge (the HTTP emulator in
    testing/ reads request targets, which are not drop URLs; the embedded FTP drop parses
    its own listen address, ftpserver://HOST:PORT/, which is a server to start, not a drop
    to read)."""
    root = Path(__file__).resolve().parent.parent / "csvbridge"
    offenders = []
    for path in root.rglob("*.py"):
        if path.parent.name in ("filesystems", "testing"):
            continue
        if path.relative_to(root).as_posix() == "drops/ftpserver_settings.py":
            continue
        text = path.read_text()
        if "urlsplit" in text or "urlparse" in text or '.split("://"' in text:
            offenders.append(str(path.relative_to(root)))
    assert offenders == []
