"""Names from a drop, judged before anything uses them.

Drops are written by other people and listed by servers we do not control, so a name
may hold a newline (a forged log line, an FTP command), a "/" or ".." (a path outside
the drop), bytes that are not UTF-8, or be so long that adding ``.report.json`` to it
overflows the 255-byte NAME_MAX of every common filesystem.  `name_problem` says what is
wrong with a listed name; `fit_name` derives names that always fit.
"""

from __future__ import annotations

import hashlib

NAME_MAX = 255  # bytes: ext4, xfs, btrfs, tmpfs, and what FTP/SFTP servers inherit


def name_problem(name: str) -> str | None:
    """Why a listed entry name cannot be used as a file of the drop, None if it can."""
    if name in ("", ".", ".."):
        return "not a file name"
    if "/" in name or "\\" in name:
        return "name contains a path separator (could point outside the drop)"
    if any(ord(ch) < 0x20 or ord(ch) == 0x7F for ch in name):
        return "name contains a control character (newline, tab, NUL...)"
    try:
        encoded = name.encode("utf-8")
    except UnicodeEncodeError:
        return "name is not valid UTF-8"
    if len(encoded) > NAME_MAX:
        return f"name is longer than {NAME_MAX} bytes"
    return None


def fit_name(name: str, suffix: str = "", *, max_bytes: int = NAME_MAX) -> str:
    """``name + suffix``, shortened when it would exceed `max_bytes` (UTF-8).

    The shortened form keeps the start of the name and its extensions (``.csv.gz``) and
    puts an 8-hex digest of the whole name in between, so two long names sharing a prefix
    still give different results, and the same name always gives the same result.
    Characters are never cut in half.
    """
    whole = name + suffix
    if len(whole.encode("utf-8")) <= max_bytes:
        return whole
    stem, dot, ext = name.partition(".")
    ext = dot + ext
    if len(ext.encode("utf-8")) > 32:  # an "extension" that is really part of the name
        stem, ext = name, ""
    tag = "~" + hashlib.sha256(name.encode("utf-8", "surrogateescape")).hexdigest()[:8]
    room = max_bytes - len((tag + ext + suffix).encode("utf-8"))
    if room < 1:
        raise ValueError(f"suffix {suffix!r} leaves no room for a name")
    kept = stem.encode("utf-8", "surrogateescape")[:room].decode("utf-8", "ignore")
    return kept + tag + ext + suffix


def work_name(name: str, *, max_bytes: int = NAME_MAX) -> str:
    """A name for local work files about `name`: only ``[A-Za-z0-9._-]``, never hidden or
    ``..``, within `max_bytes`, and distinct for distinct names (a digest is added
    whenever characters had to be replaced, so ``a b.csv`` and ``a_b.csv`` differ)."""
    safe = "".join(c if (c.isascii() and c.isalnum()) or c in "-_." else "_" for c in name)
    safe = safe.lstrip(".") or "_"
    if safe != name:
        digest = hashlib.sha256(name.encode("utf-8", "surrogateescape")).hexdigest()[:8]
        stem, dot, ext = safe.partition(".")
        safe = f"{stem}~{digest}{dot}{ext}"
    return fit_name(safe, max_bytes=max_bytes)
