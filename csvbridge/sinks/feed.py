"""The CSV feed sink: conversion (or product) objects -> the file Commanders Act's FTP importer reads.

The feed rules (``shared/reference/commandersact-conversions-csv-feed-and-api.txt``): the
header in the first row, lower case, no spaces, exactly the names of the official template;
one line per conversion item, the conversion's own values repeated on each; the file
grouped and sorted by conversion id.  Objects arrive in any order and may not fit in
memory, so they are spooled to a temporary SQLite database (which sorts on disk with
bounded memory) while the set of extra columns is collected, because the header has to be
complete before the first line is written.

Delivery goes through the shared filesystem layer (`csvbridge.filesystems`): the feed is
uploaded under a temporary name and renamed into place, so the importer never picks up a
half-written file.
"""

from __future__ import annotations

import csv
import gzip as gzip_module
import io
import math
import os
import sqlite3
import tempfile
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import orjson

from csvbridge.config import FeedSettings, Kind
from csvbridge.errors import ConfigError, TerminalError
from csvbridge.schema.models import (
    HEADER_ALIASES,
    PRODUCT_HEADER,
    TEMPLATE_HEADER,
    Conversion,
    Product,
    field_rules,
    format_date,
)

LIST_SEPARATOR = "|"  # how the template joins tags, colors and consent categories

# Object path -> column name, where the template spells it differently.
_COLUMN_FOR_PATH = {path: column for column, path in HEADER_ALIASES.items()}

_ITEMS = "conversion_items"
_ITEM_PREFIX = _ITEMS + "."


class FeedError(TerminalError):
    """An object cannot be written to the CSV feed (a bug upstream, not a transient fault)."""


@dataclass(frozen=True, slots=True)
class FeedStats:
    """What `write_feed` wrote: data lines, objects, the header, and the file."""

    rows: int
    objects: int
    columns: tuple[str, ...]
    path: Path


# --------------------------------------------------------------------------- columns


def _documented_extras(model: type[Any], base: tuple[str, ...]) -> tuple[str, ...]:
    """Documented leaf paths the official header lacks, in documented order.

    ``custom`` objects are left out: their keys become ``custom.<key>`` columns.
    """
    known = set(base) | {HEADER_ALIASES.get(c, c) for c in base}
    return tuple(
        path
        for path in field_rules(model)
        if path not in known and path.rsplit(".", 1)[-1] != "custom"
    )


_CONVERSION_EXTRAS = _documented_extras(Conversion, TEMPLATE_HEADER)
_PRODUCT_EXTRAS = _documented_extras(Product, PRODUCT_HEADER)

# Dynamic column families, in the order they follow the documented columns.  Each family's
# keys are sorted, so the header does not depend on the order objects arrive in.
_CONVERSION_FAMILIES = (
    "user.",
    "custom.",
    "conversion_items.custom.",
    "conversion_items.product.custom.",
)
_PRODUCT_FAMILIES = ("custom.",)


@dataclass(frozen=True, slots=True)
class _FeedColumns:
    base: tuple[str, ...]  # always written
    extras: tuple[str, ...]  # documented, written when some object has a value
    families: tuple[str, ...]  # prefixes of open-ended columns (custom keys, user properties)

    def columns(self, seen: set[str]) -> tuple[str, ...]:
        """The header: base, then present documented extras, then each family sorted."""
        placed = set(self.base) | set(self.extras)
        header = list(self.base) + [c for c in self.extras if c in seen]
        rest = sorted(seen - placed)
        for family in self.families:
            header += [c for c in rest if _family(c, self) == family]
        return tuple(header)


def _family(column: str, layout: _FeedColumns) -> str | None:
    """The longest family prefix of `column` (``conversion_items.custom.x`` is not ``custom.``)."""
    matches = [f for f in layout.families if column.startswith(f)]
    return max(matches, key=len) if matches else None


_LAYOUTS: dict[str, _FeedColumns] = {
    "conversions": _FeedColumns(TEMPLATE_HEADER, _CONVERSION_EXTRAS, _CONVERSION_FAMILIES),
    "products": _FeedColumns(PRODUCT_HEADER, _PRODUCT_EXTRAS, _PRODUCT_FAMILIES),
}


def _check_placeable(columns: Iterable[str], layout: _FeedColumns, what: str) -> None:
    """Refuse a property the feed has no column for, rather than drop it silently."""
    for column in columns:
        if column in layout.base or column in layout.extras:
            continue
        if _family(column, layout) is not None:
            continue
        raise FeedError(
            f"{column!r} is not a documented property; it has no CSV feed column", id=what
        )


# --------------------------------------------------------------------------- values


def format_number(value: float | int) -> str:
    """A number as JSON.stringify writes it: ``10``, ``6.4``, ``0.0001``; never ``10.0``.

    pydantic hands amounts back as floats (``10.0``); the template writes ``10``.  Like
    JavaScript, exponents are used only outside 1e-7 <= |x| < 1e21.
    """
    if isinstance(value, int):
        return str(value)
    if not math.isfinite(value):
        raise FeedError(f"{value!r} is not a finite number")
    if value == 0:
        return "0"
    if value.is_integer() and abs(value) < 1e21:
        return str(int(value))
    text = repr(value)  # the shortest text that reads back as the same float
    if "e" not in text:
        return text
    exact = Decimal(text)
    exponent = exact.adjusted()
    if -7 <= exponent < 21:
        return format(exact, "f")
    sign, digits, _ = exact.as_tuple()
    mantissa = str(digits[0]) + ("." + "".join(map(str, digits[1:])) if len(digits) > 1 else "")
    return f"{'-' if sign else ''}{mantissa}e{'+' if exponent > 0 else '-'}{abs(exponent)}"


def format_cell(value: Any, where: str = "") -> str:
    """One property value as CSV cell text (``None`` -> empty)."""
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return format_number(value)
    if isinstance(value, Decimal):
        return format_number(float(value))
    if isinstance(value, datetime):
        if value.tzinfo is None:
            raise FeedError(f"{where}: date {value.isoformat()} has no UTC offset")
        return format_date(value)
    if isinstance(value, list | tuple):
        parts = []
        for element in value:
            if isinstance(element, Mapping | list | tuple):
                raise FeedError(f"{where}: a list of objects cannot be written in one CSV cell")
            parts.append(format_cell(element, where))
        return LIST_SEPARATOR.join(parts)
    raise FeedError(f"{where}: cannot write a {type(value).__name__} in the CSV feed")


def _flatten(obj: Mapping[str, Any], prefix: str, out: dict[str, str]) -> None:
    """Nested objects -> ``{"dot.path": cell}``; empty values are left out."""
    for key, value in obj.items():
        path = prefix + str(key)
        if isinstance(value, Mapping):
            _flatten(value, path + ".", out)
            continue
        cell = format_cell(value, path)
        if cell == "":
            continue
        column = _COLUMN_FOR_PATH.get(path, path)
        if column in out:
            raise FeedError(f"{path!r} is given twice (as a nested object and a dotted key)")
        out[column] = cell


def _object_id(obj: Mapping[str, Any], kind: str) -> str:
    value = obj.get("id")
    if value is None or value == "" or isinstance(value, Mapping | list | bool):
        raise FeedError(f"a {kind[:-1]} without an id cannot be placed in the feed")
    return format_cell(value, "id")


def _conversion_lines(obj: Mapping[str, Any]) -> tuple[str, dict[str, str], list[dict[str, str]]]:
    """Split a conversion into its id, its own cells, and one dict of cells per item."""
    object_id = _object_id(obj, "conversions")
    items = obj.get(_ITEMS)
    if not isinstance(items, list) or not items:
        raise FeedError("a conversion needs at least one conversion item", id=object_id)
    head: dict[str, str] = {}
    _flatten({k: v for k, v in obj.items() if k != _ITEMS}, "", head)
    lines = []
    for item in items:
        if not isinstance(item, Mapping):
            raise FeedError("conversion_items must be a list of objects", id=object_id)
        cells: dict[str, str] = {}
        _flatten(item, _ITEM_PREFIX, cells)
        lines.append(cells)
    return object_id, head, lines


def _product_lines(obj: Mapping[str, Any]) -> tuple[str, dict[str, str], list[dict[str, str]]]:
    head: dict[str, str] = {}
    _flatten(obj, "", head)
    return _object_id(obj, "products"), head, [{}]


# --------------------------------------------------------------------------- spool


class _Spool:
    """A temporary SQLite table of (id, arrival, cells): sorted on disk, not in memory."""

    def __init__(self, directory: Path | None) -> None:
        self._dir = tempfile.TemporaryDirectory(prefix="csvbridge-feed-", dir=directory)
        self._db = sqlite3.connect(Path(self._dir.name) / "spool.sqlite", isolation_level=None)
        for pragma in ("journal_mode = OFF", "synchronous = OFF", "temp_store = FILE"):
            self._db.execute(f"PRAGMA {pragma}")
        self._db.execute("CREATE TABLE spool (seq INTEGER PRIMARY KEY, id TEXT, cells BLOB)")
        self._db.execute("BEGIN")

    def add(self, object_id: str, head: dict[str, str], lines: list[dict[str, str]]) -> None:
        self._db.execute(
            "INSERT INTO spool (id, cells) VALUES (?, ?)",
            (object_id, orjson.dumps([head, lines])),
        )

    def sorted(self) -> Iterator[tuple[dict[str, str], list[dict[str, str]]]]:
        """Objects by id (binary order of the UTF-8 text), arrival order within one id."""
        self._db.execute("COMMIT")
        for (blob,) in self._db.execute("SELECT cells FROM spool ORDER BY id, seq"):
            head, lines = orjson.loads(blob)
            yield head, lines

    def close(self) -> None:
        self._db.close()
        self._dir.cleanup()


# --------------------------------------------------------------------------- writer


def write_feed(
    objects: Iterable[Mapping[str, Any]],
    dest: Path,
    kind: Kind = "conversions",
    *,
    gzip: bool = False,
    spool_dir: Path | None = None,
) -> FeedStats:
    """Write `objects` as a CSV feed at `dest` (UTF-8, no BOM, ``\\r\\n``, RFC 4180 quoting).

    Conversions give one line per item under the official template header (then any extra
    columns); products one line per product.  Lines are sorted by object id.  The file is
    written beside `dest` and renamed into place, so `dest` is never seen half-written.
    `spool_dir` holds the temporary sort database (default: the system temp folder).
    """
    if kind not in _LAYOUTS:
        raise ValueError(f"kind must be 'conversions' or 'products', not {kind!r}")
    layout = _LAYOUTS[kind]
    split = _conversion_lines if kind == "conversions" else _product_lines
    dest = Path(dest)
    spool = _Spool(spool_dir)
    try:
        seen: set[str] = set()
        count = 0
        for obj in objects:
            object_id, head, lines = split(obj)
            new = (set(head) | {c for line in lines for c in line}) - seen
            if new:
                _check_placeable(new, layout, object_id)
                seen |= new
            spool.add(object_id, head, lines)
            count += 1
        header = layout.columns(seen)
        rows = _write_sorted(spool.sorted(), header, dest, gzip)
    finally:
        spool.close()
    return FeedStats(rows=rows, objects=count, columns=header, path=dest)


def _write_sorted(
    spooled: Iterable[tuple[dict[str, str], list[dict[str, str]]]],
    header: tuple[str, ...],
    dest: Path,
    gzip: bool,
) -> int:
    partial = dest.with_name(f".{dest.name}.part")
    rows = 0
    try:
        with open(partial, "wb") as raw:
            binary: io.BufferedIOBase | gzip_module.GzipFile = raw
            if gzip:
                # mtime=0: the same objects give the same bytes (easier to compare, dedupe).
                binary = gzip_module.GzipFile(
                    filename=dest.name.removesuffix(".gz"), mode="wb", fileobj=raw, mtime=0
                )
            with io.TextIOWrapper(binary, encoding="utf-8", newline="") as text:
                writer = csv.writer(text, lineterminator="\r\n", quoting=csv.QUOTE_MINIMAL)
                writer.writerow(header)
                for head, lines in spooled:
                    for line in lines:
                        writer.writerow([line.get(c) or head.get(c, "") for c in header])
                        rows += 1
        os.replace(partial, dest)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    return rows


# --------------------------------------------------------------------------- naming & delivery


def feed_filename(template: str, kind: str, now: datetime | None = None, gzip: bool = False) -> str:
    """The remote file name for a feed, from ``FeedSettings.filename_template``.

    Placeholders: ``{kind}``, ``{timestamp}`` (``20240131T235959Z``, UTC) and ``{date}``
    (``20240131``, UTC).  ``.gz`` is appended for a gzip feed.  A naive `now` is local time.
    """
    moment = (now or datetime.now(UTC)).astimezone(UTC)
    fields = {
        "kind": kind,
        "timestamp": moment.strftime("%Y%m%dT%H%M%SZ"),
        "date": moment.strftime("%Y%m%d"),
    }
    try:
        name = template.format_map(fields)
    except (KeyError, IndexError, ValueError, AttributeError) as exc:
        raise ConfigError(
            f"feed filename_template {template!r} is invalid ({exc}); "
            "use {kind}, {timestamp} and {date}"
        ) from None
    if not name or "/" in name or "\\" in name or name in (".", ".."):
        raise ConfigError(f"feed filename_template {template!r} must give a plain file name")
    if gzip and not name.endswith(".gz"):
        name += ".gz"
    return name


def deliver_feed(local: Path, settings: FeedSettings, *, rows: int) -> str | None:
    """Upload `local` atomically to ``settings.target`` under its own name.

    Returns the remote name, or None when nothing was uploaded: an empty feed (no data
    line) is skipped unless ``settings.upload_empty`` asks for it, so the importer is not
    fed header-only files.
    """
    if rows == 0 and not settings.upload_empty:
        return None
    # Imported here: the filesystem layer pulls in FTP/SFTP clients the writer never needs.
    from csvbridge.filesystems import UploadRefused, filesystem_for, put_atomic

    fs = filesystem_for(settings)
    try:
        try:
            fs.mkdir("")  # the target folder may not exist yet (e.g. the default ./feeds)
        except PermissionError as exc:
            # a refused target is the environment, not the file: typed and transient, so
            # the source file stays for a retry instead of landing in failed/
            raise UploadRefused(
                f"cannot create the feed folder: {exc.strerror or exc}", url=fs.url
            ) from None
        put_atomic(fs, local, local.name)
    finally:
        close = getattr(fs, "close", None)
        if callable(close):
            close()
    return local.name
