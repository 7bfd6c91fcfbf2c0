"""Sources that are not folders to list, turned into local drops the runner already handles.

One path for every file, whatever brought it: claim -> convert -> ship -> done/failed,
the same ledger, reports and accounting.  So an API source or the embedded FTP server
only has to put complete files into a local folder:

* ``commercehq://STORE_HOST`` (``commercehq+http://`` for the stand-in): each pass pulls
  the orders created or updated since the cursor into an *inbox* under the state's work
  folder, one CSV file per API page, storing the cursor in the ledger after each page's
  file is written (a kill -9 re-reads at most one page, which the ledger then knows by
  its content).  The inbox is a local drop taken at once (no age or stability wait: the
  files appear complete), read with the packaged Commerce HQ mapping unless the source
  names its own.
* ``ftpserver://HOST:PORT/``: each user's home of the embedded FTP drop is a local drop
  of its own (``<source>/<user>``).  Uploads land there complete (a partial upload is a
  hidden ``.name.<random>.upload`` until it ends), so files are taken at once too.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from csvbridge.config import Settings, SourceSettings
from csvbridge.drops.ftpserver import FtpDrop, FtpDropSettings
from csvbridge.drops.ledger import Ledger
from csvbridge.filesystems import protocol_of, work_name

INBOXES = ".inbox"  # under state.work_dir; a leading dot: no source's work folder


def kind_of(source: SourceSettings) -> str:
    """``commercehq``, ``ftpserver`` or ``drop`` (a folder the filesystem layer lists)."""
    protocol = protocol_of(source.url)
    if protocol in ("commercehq", "commercehq+http", "commercehq+https"):
        return "commercehq"
    return "ftpserver" if protocol == "ftpserver" else "drop"


def packaged_mapping() -> Path:
    """The shipped mapping of the Commerce HQ export layout the puller writes."""
    return Path(str(resources.files("csvbridge") / "data" / "commercehq" / "mapping.yaml"))


def as_local(source: SourceSettings, folder: Path, *, name: str | None = None) -> SourceSettings:
    """`source` as a local drop at `folder` whose files are complete when they appear."""
    return source.model_copy(
        update={
            "name": name or source.name,
            "url": folder.as_uri(),
            "min_age_seconds": 0,
            "stable_polls": 0,
            "done_marker": False,
            "create_missing": True,
            "include": ["*.csv", "*.csv.gz", "*.xlsx"],
            "exclude": [],
            "ftpserver": None,
            "api_key": None,
            "api_password": None,
        }
    )


# ------------------------------------------------------------------------- Commerce HQ


@dataclass
class PullCounts:
    """One pass of an API source: every order received is written, a duplicate (taken
    before), older (before the previous pass) or without line items (not convertible)."""

    received: int = 0
    written: int = 0
    duplicates: int = 0
    older: int = 0
    no_items: int = 0
    pages: int = 0
    files: int = 0
    complete: bool = False  # both lists read to the end (else resumed next pass)

    def describe(self) -> str:
        return (
            f"pulled {self.received} orders in {self.pages} pages: {self.written} written, "
            f"{self.duplicates} duplicates, {self.older} older, {self.no_items} without items"
        )


def inbox_of(settings: Settings, source: SourceSettings) -> Path:
    return Path(settings.state.work_dir) / INBOXES / work_name(source.name)


def commercehq_inbox(settings: Settings, source: SourceSettings) -> SourceSettings:
    """The local drop a Commerce HQ source pulls into."""
    local = as_local(source, inbox_of(settings, source))
    if local.convert.mapping is None:
        local.convert = local.convert.model_copy(update={"mapping": packaged_mapping()})
    return local


def pull_commercehq(
    settings: Settings, source: SourceSettings, ledger: Ledger, stop: threading.Event
) -> PullCounts:
    """Pull what changed since the stored cursor into the inbox; the cursor is stored in
    the ledger after each page's file is written.  Raises `SourceAuthError` (401/403),
    `SourceUnavailable` (retries used up) or `TerminalError` (an answer we cannot read)."""
    # imported here: requests and the client are only needed by Commerce HQ sources
    from csvbridge.sources.commercehq import (
        CommerceHQClient,
        CommerceHQSettings,
        Cursor,
        api_base_url,
    )

    assert source.api_key is not None and source.api_password is not None  # config checks
    chq = CommerceHQSettings(
        base_url=api_base_url(source.url),
        api_key=source.api_key,
        api_password=source.api_password,
        currency=source.currency,
        page_size=source.page_size,
        overlap_seconds=source.overlap_seconds,
        timeout_seconds=source.timeout_seconds,
    )
    inbox = inbox_of(settings, source)
    Path(settings.state.work_dir).mkdir(parents=True, exist_ok=True, mode=0o700)
    inbox.mkdir(parents=True, exist_ok=True, mode=0o700)
    cursor = Cursor.from_json(ledger.get_cursor(source.name))

    def commit(after: Cursor) -> None:
        ledger.set_cursor(source.name, after.to_json())

    with CommerceHQClient(chq, stop=stop) as client:
        pulled = client.pull(inbox, cursor, commit)
    return PullCounts(
        received=pulled.received,
        written=pulled.written,
        duplicates=pulled.duplicates,
        older=pulled.older,
        no_items=len(pulled.no_items),
        pages=pulled.pages,
        files=len(pulled.files),
        complete=pulled.complete,
    )


# ------------------------------------------------------------------------- FTP server


def ftp_drop_settings(source: SourceSettings) -> FtpDropSettings:
    """The embedded drop's settings: its ``ftpserver:`` section, listening where the
    source's URL says (the URL wins over ``host``/``port`` in the section)."""
    assert source.ftpserver is not None  # config checks
    values = source.ftpserver.model_dump(exclude={"host", "port"})
    return FtpDropSettings.from_url(source.url, **values)


def ftp_homes(source: SourceSettings) -> list[SourceSettings]:
    """One local drop per user's home, named ``<source>/<user>``."""
    drop = FtpDrop(ftp_drop_settings(source), on_file=lambda _: None)  # not started
    return [
        as_local(source, drop.home_of(user), name=f"{source.name}/{user.name}")
        for user in drop.settings.users
    ]
