"""Where files go inside a drop: the stage folders and their naming rules.

``processing/`` holds a file while it is worked on, ``done/`` and ``failed/`` receive it
with its report (and rejects) afterwards.  This module also decides which names a drop
may hand us at all (a name with a newline or of 250 bytes cannot be filed away safely)
and which local names the work folder uses (derived, never the drop's raw name).
"""

from __future__ import annotations

import hashlib
import os
import posixpath
import re
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime

from csvbridge.errors import SourceUnavailable, TerminalError
from csvbridge.filesystems import FileSystem, LocalFileSystem

STAGES: tuple[str, ...] = ("processing", "done", "failed")
_COMPRESSED = (".gz", ".bz2", ".xz", ".zst", ".zip")
REPORT_SUFFIX = ".report.json"
REJECTS_SUFFIX = ".rejects.csv"
# A staged name may gain ".20261122T074512Z-99" and ".report.json" and must still fit the
# 255-byte limit of every common file system (and of FTP/SFTP servers on them).
_STAMP_ROOM = len(".20261122T074512Z-999")
MAX_NAME_BYTES = 255 - _STAMP_ROOM - len(REPORT_SUFFIX)
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


class StageFolderError(TerminalError):
    """A stage folder (or the drop itself) is not a usable folder: a person must fix it."""


def report_name(name: str) -> str:
    """The JSON report that sits next to a staged file."""
    return f"{name}{REPORT_SUFFIX}"


def rejects_name(name: str) -> str:
    """The CSV of rejected rows that sits next to a staged file."""
    return f"{name}{REJECTS_SUFFIX}"


def split_ext(name: str) -> tuple[str, str]:
    """``orders.csv.gz`` -> (``orders``, ``.csv.gz``); ``orders`` -> (``orders``, ``"")``."""
    stem, ext = posixpath.splitext(name)
    if ext.lower() in _COMPRESSED:
        stem2, ext2 = posixpath.splitext(stem)
        if ext2:
            return stem2, ext2 + ext
    return stem, ext


def name_problem(name: str) -> str | None:
    """Why a file of this name cannot be taken from a drop, or None if it can.

    Control characters (a newline would break FTP commands, logs and the rejects file)
    and names too long to carry a timestamp and ``.report.json`` are left where they are.
    """
    if _CONTROL.search(name):
        return "its name holds a control character (newline, tab...): rename it"
    if name in ("", ".", "..") or "/" in name:
        return "not a plain file name"
    if len(os.fsencode(name)) > MAX_NAME_BYTES:
        return (
            f"its name is {len(os.fsencode(name))} bytes, over the {MAX_NAME_BYTES} "
            "that leave room for a timestamp and its report: rename it"
        )
    return None


def work_name(name: str) -> str:
    """A safe local name for a drop file's copy in the work folder: short, plain ASCII,
    keeping the extension (``.csv.gz`` tells the reader to decompress), unique per name."""
    stem, ext = split_ext(name)
    digest = hashlib.sha256(os.fsencode(name)).hexdigest()[:12]
    safe_stem = _UNSAFE.sub("_", stem)[:40].strip("._") or "file"
    safe_ext = _UNSAFE.sub("_", ext)[:16]
    return f"{safe_stem}-{digest}{safe_ext}"


@dataclass(frozen=True)
class Stages:
    """Where files go inside a drop, as relative POSIX paths; no I/O happens here.

    Names are never reused: when ``done/orders.csv`` exists the next one becomes
    ``done/orders.20261122T074512Z.csv``.
    """

    root: str = ""

    def folder(self, stage: str) -> str:
        if stage not in STAGES:
            raise ValueError(f"unknown stage {stage!r}; expected one of {STAGES}")
        return posixpath.join(self.root.strip("/"), stage) if self.root.strip("/") else stage

    @property
    def folders(self) -> list[str]:
        return [self.folder(s) for s in STAGES]

    def is_staged(self, path: str) -> bool:
        """True for paths inside a stage folder: a drop listing must skip them."""
        return any(path == f or path.startswith(f + "/") for f in self.folders)

    def stage_path(
        self, stage: str, name: str, existing: set[str], now: datetime | None = None
    ) -> str:
        """Path for ``name`` in ``stage`` that does not collide with ``existing``.

        ``existing`` holds what is already in that stage folder (bare names or full
        relative paths, both are understood).  On a clash a UTC timestamp goes before the
        extension, then ``-1``, ``-2``... if even that is taken.
        """
        return posixpath.join(self.folder(stage), self._free(stage, [name], existing, now)[0])

    def stage_paths(
        self, stage: str, name: str, existing: set[str], now: datetime | None = None
    ) -> tuple[str, str, str]:
        """(file, report, rejects) paths in ``stage`` sharing one free base name."""
        names = [name, report_name(name), rejects_name(name)]
        free = self._free(stage, names, existing, now)
        folder = self.folder(stage)
        return (
            posixpath.join(folder, free[0]),
            posixpath.join(folder, free[1]),
            posixpath.join(folder, free[2]),
        )

    def _free(
        self, stage: str, names: list[str], existing: set[str], now: datetime | None
    ) -> list[str]:
        base = names[0]
        if not base or "/" in base or base in (".", ".."):
            raise ValueError(f"not a plain file name: {base!r}")
        folder = self.folder(stage)
        taken = {posixpath.basename(e) for e in existing if e.startswith(folder + "/")}
        taken |= {e for e in existing if "/" not in e}
        suffixes = [n[len(base) :] for n in names]  # "", ".report.json", ".rejects.csv"

        def candidates() -> Iterator[str]:
            yield base
            stamp = (now or datetime.now(UTC)).astimezone(UTC).strftime("%Y%m%dT%H%M%SZ")
            stem, ext = split_ext(base)
            yield f"{stem}.{stamp}{ext}"
            n = 1
            while True:
                yield f"{stem}.{stamp}-{n}{ext}"
                n += 1

        for candidate in candidates():
            if not any(candidate + s in taken for s in suffixes):
                return [candidate + s for s in suffixes]
        raise AssertionError("unreachable")  # pragma: no cover

    # -- checks on a real drop -------------------------------------------------------

    def prepare(self, fs: FileSystem, *, create: bool = False) -> None:
        """Make sure the drop exists and its stage folders are real folders of it.

        A missing local drop is an error unless `create` (a misspelt path must not turn
        into an empty folder that every pass reports as "0 files").  A stage name taken by
        a regular file or a symbolic link is an error naming it: files are never moved
        through a link out of the drop.
        """
        if isinstance(fs, LocalFileSystem) and not os.path.isdir(fs.root):
            if not create:
                raise SourceUnavailable(
                    f"drop folder {fs.root} does not exist "
                    "(create it, or set `create_missing: true` on the source)",
                    url=fs.url,
                )
            fs.root.mkdir(parents=True, exist_ok=True)
        entries = {e.name: e for e in fs.list(self.root)}
        for stage in STAGES:
            folder = self.folder(stage)
            entry = entries.get(posixpath.basename(folder))
            kind = _local_kind(fs, folder)
            if entry is None and kind in (None, "missing"):
                try:
                    fs.mkdir(folder)
                except OSError as exc:  # read-only disk, root-owned chroot, 550...
                    why = exc.strerror or str(exc)
                    raise StageFolderError(
                        f"cannot create the stage folder {folder!r}: {why}", url=fs.url
                    ) from None
                continue
            if entry is None or not entry.is_dir or kind not in (None, "folder"):
                what = kind or "not a folder"
                raise StageFolderError(
                    f"stage folder {folder!r} is {what}: move it away so csvbridge can "
                    f"create the folder",
                    url=fs.url,
                )


def _local_kind(fs: FileSystem, rel: str) -> str | None:
    """What `rel` is on a local drop, without following a link; None for remote drops."""
    if not isinstance(fs, LocalFileSystem):
        return None
    try:
        mode = os.lstat(fs.root / rel).st_mode
    except FileNotFoundError:
        return "missing"
    if stat.S_ISLNK(mode):
        return "a symbolic link"
    if stat.S_ISDIR(mode):
        return "folder"
    if stat.S_ISREG(mode):
        return "a regular file"
    return "a special file"
