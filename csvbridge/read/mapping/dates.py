"""Dates in mappings: a cell read with a declared format, local times in the shop's zone.

A local time that does not exist in the zone (clocks jumped forward) or occurs twice
(clocks went back) cannot be read without a choice: the offset in force before the
change is taken, and a warning (``DST_GAP``, ``DST_AMBIGUOUS``) names the line, the
offset taken and the other one, so nobody finds out from a report months later.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from typing import Any

from csvbridge.schema.codecs import CellError
from csvbridge.schema.models import format_date

# strptime formats whose exact text fromisoformat also reads (and 10x faster)
_ISO_LIKE = {
    "%Y-%m-%d %H:%M:%S %z": re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d [+-]\d{4}"),
    "%Y-%m-%d %H:%M:%S": re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d"),
}


def convert_date(raw: str, how: str, tz: Any, notes: list[tuple[str, str, str]] | None = None) -> str:
    """A mapped date cell -> documented ISO-8601 (naive values take the default zone).

    A local time that does not exist (clocks jumped forward) or occurs twice (clocks
    went back) in the zone is read with the offset in force before the change, and a
    warning saying so goes to ``notes``.
    """
    text = raw.strip()
    try:
        if how in ("unix", "unix_ms"):
            seconds = float(text) / (1000 if how == "unix_ms" else 1)
            parsed = datetime(1970, 1, 1, tzinfo=UTC) + timedelta(seconds=seconds)
        elif how == "iso":
            parsed = datetime.fromisoformat(text)
        elif how in _ISO_LIKE and _ISO_LIKE[how].fullmatch(text):
            # what strptime would read, faster ("2025-10-07 09:50:26 +0200")
            parsed = datetime.fromisoformat(text.replace(" +", "+").replace(" -", "-"))
        else:
            parsed = datetime.strptime(text, how)
    except (ValueError, OverflowError):
        raise CellError(
            "INVALID_PROPERTY_FORMAT", f"{raw!r} does not match the date format {how!r}", raw
        ) from None
    if parsed.tzinfo is None:
        if tz is None:
            raise CellError(
                "INVALID_PROPERTY_FORMAT",
                f"{raw!r} has no UTC offset; set options.timezone in the mapping",
                raw,
            )
        parsed = parsed.replace(tzinfo=tz)
        if notes is not None:
            _flag_dst(parsed, raw, tz, notes)
    return format_date(parsed)


def _flag_dst(local: datetime, raw: str, tz: Any, notes: list[tuple[str, str, str]]) -> None:
    early, late = local.replace(fold=0).utcoffset(), local.replace(fold=1).utcoffset()
    if early == late:
        return
    chosen = _offset(early)
    round_trip = local.astimezone(UTC).astimezone(tz).replace(tzinfo=None)
    if round_trip != local.replace(tzinfo=None):
        notes.append(
            (
                "DST_GAP",
                f"{local:%Y-%m-%d %H:%M} does not exist in {tz} (clocks jumped forward); "
                f"read with the offset before the change, {chosen} "
                f"(= {round_trip:%H:%M} after the change)",
                raw,
            )
        )
    else:
        notes.append(
            (
                "DST_AMBIGUOUS",
                f"{local:%Y-%m-%d %H:%M} occurs twice in {tz} (clocks went back); "
                f"took the first, {chosen}, not {_offset(late)}",
                raw,
            )
        )


def _offset(delta: timedelta | None) -> str:
    minutes = int((delta or timedelta()).total_seconds() // 60)
    sign = "+" if minutes >= 0 else "-"
    return f"{sign}{abs(minutes) // 60:02d}:{abs(minutes) % 60:02d}"



__all__ = ["convert_date"]
