"""Reading what FTP servers say about files: LIST lines, MLSD facts, timestamps, clocks.

Servers differ: MLSD ``type`` facts are ``file``/``dir`` or, for links, proftpd's
``OS.unix=symlink`` and pure-ftpd's ``OS.unix=slink:<target>``; LIST lines are `ls -l`
(type letter first) or DOS style.  Everything that is not plainly a file or a folder is
reported as such, so the listing can skip it.

Timestamps (MLSD ``modify``, MDTM) are UTC by RFC 3659, but vsftpd with
``use_localtime=YES`` answers in local time: `ServerClock` turns server timestamps into
epoch seconds using a configured zone, or an offset measured against a probe file.
"""

from __future__ import annotations

import calendar
import re
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from csvbridge.errors import ConfigError
from csvbridge.filesystems.base import EntryKind, FileInfo, Listing, Skipped, child
from csvbridge.filesystems.names import name_problem

_LIST_KINDS = {
    "-": EntryKind.FILE,
    "d": EntryKind.DIR,
    "l": EntryKind.LINK,
    "p": EntryKind.FIFO,
    "s": EntryKind.SOCKET,
    "b": EntryKind.DEVICE,
    "c": EntryKind.DEVICE,
}


def mlsd_kind(facts: dict[str, str]) -> EntryKind | None:
    """The kind an MLSD entry's facts announce; None for cdir/pdir (skip silently)."""
    kind = facts.get("type", "file").lower()
    if kind in ("cdir", "pdir"):
        return None
    if kind == "file":
        return EntryKind.FILE
    if kind == "dir":
        return EntryKind.DIR
    if kind.startswith(("os.unix=symlink", "os.unix=slink")):
        return EntryKind.LINK
    return EntryKind.OTHER


@dataclass
class ServerClock:
    """How to read the server's timestamps.

    `zone`: None for UTC (the standard), or an IANA zone the server reports in.
    `offset`: seconds the server's clock reads ahead of ours, measured by a probe
    ("auto"); None until measured.
    """

    zone: ZoneInfo | None = None
    auto: bool = False
    offset: float | None = None

    @classmethod
    def parse(cls, setting: str | None) -> ServerClock:
        if setting is None or setting.upper() in ("UTC", "Z", ""):
            return cls()
        if setting.lower() == "auto":
            return cls(auto=True)
        try:
            return cls(zone=ZoneInfo(setting))
        except (ZoneInfoNotFoundError, ValueError):
            raise ConfigError(
                f"server_timezone {setting!r} is not a time zone (use auto, UTC or e.g. Europe/Paris)"
            ) from None

    def epoch(self, value: str) -> float | None:
        """A server timestamp (``YYYYMMDDHHMMSS[.fff]``) as epoch seconds."""
        naive = parse_timestamp(value)
        return None if naive is None else self.adjust(naive)

    def adjust(self, naive: float) -> float:
        """Epoch seconds from a server time read as if it were UTC."""
        if self.zone is not None:
            wall = datetime.fromtimestamp(naive, UTC).replace(tzinfo=self.zone)
            return wall.timestamp()
        return naive - (self.offset or 0.0)


def parse_timestamp(value: str) -> float | None:
    """MLSD/MDTM time ``YYYYMMDDHHMMSS[.fff]`` (UTC) to epoch seconds."""
    m = re.fullmatch(r"(\d{14})(?:\.(\d+))?", value.strip())
    if not m:
        return None
    try:
        t = time.strptime(m.group(1), "%Y%m%d%H%M%S")
    except ValueError:
        return None
    return calendar.timegm(t) + (float("0." + m.group(2)) if m.group(2) else 0.0)


_UNIX_LIST = re.compile(
    r"^(?P<type>[-dlbcps])[rwxsStT-]{9}\S*\s+\d+\s+\S+\s+(?:\S+\s+)?(?P<size>\d+)\s+"
    r"(?P<month>[A-Za-z]{3})\s+(?P<day>\d{1,2})\s+(?P<time>\d{1,2}:\d{2}|\d{4})\s(?P<name>.+)$"
)
_DOS_LIST = re.compile(
    r"^(?P<date>\d{2}-\d{2}-\d{2,4})\s+(?P<time>\d{1,2}:\d{2}[AP]M)\s+"
    r"(?P<size><DIR>|\d+)\s+(?P<name>.+)$",
    re.IGNORECASE,
)
_MONTHS = {m: i for i, m in enumerate(calendar.month_abbr) if m}


def parse_list_line(line: str) -> tuple[str, EntryKind, int, float | None] | None:
    """(name, kind, size, mtime) from one LIST line, Unix or DOS style; None if alien."""
    m = _UNIX_LIST.match(line)
    if m:
        name = m["name"]
        if m["type"] == "l":
            name = name.split(" -> ", 1)[0]
        if name in (".", ".."):
            return None
        return name, _LIST_KINDS[m["type"]], int(m["size"]), _unix_list_time(m)
    m = _DOS_LIST.match(line)
    if m:
        is_dir = m["size"].upper() == "<DIR>"
        try:
            fmt = "%m-%d-%y %I:%M%p" if len(m["date"]) == 8 else "%m-%d-%Y %I:%M%p"
            mtime = float(calendar.timegm(time.strptime(f"{m['date']} {m['time']}", fmt)))
        except ValueError:
            mtime = None
        kind = EntryKind.DIR if is_dir else EntryKind.FILE
        return m["name"], kind, 0 if is_dir else int(m["size"]), mtime
    return None


def _unix_list_time(m: re.Match[str]) -> float | None:
    """`ls -l` dates have a year or a time (then: within the last six months)."""
    month = _MONTHS.get(m["month"].title())
    if month is None:
        return None
    now = time.gmtime()
    day = int(m["day"])
    if ":" in m["time"]:
        hour, minute = (int(x) for x in m["time"].split(":"))
        year = now.tm_year
        stamp = calendar.timegm((year, month, day, hour, minute, 0))
        if stamp > time.time() + 86400:  # "Dec 31 23:00" seen in January
            stamp = calendar.timegm((year - 1, month, day, hour, minute, 0))
        return float(stamp)
    return float(calendar.timegm((int(m["time"]), month, day, 0, 0, 0)))


_SKIP_REASON = {
    EntryKind.LINK: "the server lists it as a link: links are never followed in a drop",
    EntryKind.OTHER: "the server does not list it as a plain file or folder",
}


def sort_entry(
    listing: Listing, rel: str, name: str, kind: EntryKind, size: int, mtime: float | None
) -> None:
    """File an entry of a listing under files, dirs or skipped (with the reason)."""
    problem = name_problem(name)
    if problem is not None:
        listing.skipped.append(Skipped(name, kind, problem))
    elif kind is EntryKind.FILE:
        listing.files.append(FileInfo(name, child(rel, name), size, mtime, False))
    elif kind is EntryKind.DIR:
        listing.dirs.append(FileInfo(name, child(rel, name), 0, mtime, True))
    else:
        reason = _SKIP_REASON.get(kind, f"a {kind} is not a file")
        listing.skipped.append(Skipped(name, kind, reason))
