"""Drops and feed targets behind one small interface: local folders, FTP/FTPS, SFTP.

`open_filesystem(url, ...)` asks the protocol registry for the backend serving the URL's
scheme (each backend parses its own URL); `filesystem_for(settings)` does the same from
a source or feed section of the configuration, and `Connections` keeps one open per
source across polls.  Secrets (passwords, key passphrases) only ever arrive as
arguments, never in URLs, and are registered with the log redactor the moment they are
seen.
"""

from __future__ import annotations

from csvbridge.filesystems.base import (
    EntryKind,
    FileInfo,
    FileSystem,
    IncompleteTransfer,
    Listing,
    NotRegularFile,
    Skipped,
    UnsafePath,
    normalize,
)
from csvbridge.filesystems.local import LocalFileSystem
from csvbridge.filesystems.names import NAME_MAX, fit_name, name_problem, work_name
from csvbridge.filesystems.pool import Connections
from csvbridge.filesystems.registry import (
    ConnectOptions,
    filesystem_for,
    implementation,
    open_filesystem,
    options_for,
    protocol_of,
    register,
)
from csvbridge.filesystems.upload import TempNaming, UploadRefused, put_atomic

__all__ = [
    "NAME_MAX",
    "ConnectOptions",
    "Connections",
    "EntryKind",
    "FileInfo",
    "FileSystem",
    "IncompleteTransfer",
    "Listing",
    "LocalFileSystem",
    "NotRegularFile",
    "Skipped",
    "TempNaming",
    "UnsafePath",
    "UploadRefused",
    "filesystem_for",
    "fit_name",
    "implementation",
    "name_problem",
    "normalize",
    "open_filesystem",
    "options_for",
    "protocol_of",
    "put_atomic",
    "register",
    "work_name",
]
