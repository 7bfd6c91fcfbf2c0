"""Where files go inside a drop: the stage folders and their naming rules.

``processing/`` holds a file while it is worked on, ``done/`` and ``failed/`` receive it
with its report (and rejects) afterwards.  This module also decides which names a drop
may hand us at all (a name with a newline or of 250 bytes cannot be filed away safely);
derived names (reports, work folders) come from `csvbridge.filesystems.names`.
"""

from __future__ import annotations

import os
import posixpath
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime

from csvbridge.errors import SourceUnavailable, TerminalError
from csvbridge.filesystems import FileSystem, LocalFileSystem, UnsafePath, fit_name
from csvbridge.filesystems import name_problem as fs_name_problem

STAGES: tuple[str, ...] = ("processing", "done", "failed")
_COMPRESSED = (".gz", ".bz2", ".xz", ".zst", ".zip")
REPORT_SUFFIX = ".report.json"
REJECTS_SUFFIX = ".rejects.csv"
# A staged name may gain ".20261122T074512Z-99" and ".report.json" and must still fit the
# 255-byte limit of every common file system (and of FTP/SFTP servers on them).
_STAMP_ROOM = len(".20261122T074512Z-999")
MAX_NAME_BYTES = 255 - _STAMP_ROOM - len(REPORT_SUFFIX)


class StageFolderError(TerminalError):
    """A stage folder (or the drop itself) is not a usable folder: a person must fix it."""


def report_name(name: str) -> str:
    """The JSON report that sits next to a staged file (shortened if it would not fit)."""
    return fit_name(name, REPORT_SUFFIX)


def rejects_name(name: str) -> str:
    """The CSV of rejected rows that sits next to a staged file (shortened likewise)."""
    return fit_name(name, REJECTS_SUFFIX)


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

    The filesystem layer's rules first (control characters, separators, not UTF-8);
    then a name too long to carry a timestamp and ``.report.json`` beside it in
    ``done/`` is left where it is: the file keeps its own name when filed away, so a
    person finds it by that name.
    """
    problem = fs_name_problem(name)
    if problem is not None:
        return f"{problem}: rename it"
    size = len(name.encode("utf-8"))
    if size > MAX_NAME_BYTES:
        return (
            f"its name is {size} bytes, over the {MAX_NAME_BYTES} "
            "that leave room for a timestamp and its report: rename it"
        )
    return None


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
            free = [candidate, report_name(candidate), rejects_name(candidate)][: len(names)]
            if not any(n in taken for n in free):
                return free
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
        listing = fs.scan(self.root)
        kinds: dict[str, str] = {f.name: "regular file" for f in listing.files}
        kinds.update({d.name: "folder" for d in listing.dirs})
        kinds.update({e.name: str(e.kind) for e in listing.skipped})
        for stage in STAGES:
            folder = self.folder(stage)
            kind = kinds.get(posixpath.basename(folder))
            if kind not in (None, "folder"):
                raise StageFolderError(
                    f"stage folder {folder!r} is a {kind}: move it away so csvbridge can "
                    "create the folder",
                    url=fs.url,
                )
            if kind == "folder":
                continue
            try:
                fs.mkdir(folder)
            except UnsafePath as exc:  # something appeared there since the listing
                raise StageFolderError(f"stage folder {exc.message}", url=fs.url) from None
            except OSError as exc:  # read-only disk, root-owned chroot, 550...
                why = exc.strerror or str(exc)
                raise StageFolderError(
                    f"cannot create the stage folder {folder!r}: {why}", url=fs.url
                ) from None
