"""Excel workbooks (.xlsx): one sheet written out as a UTF-8 CSV the normal engine reads.

ERPs export orders as .xlsx as often as CSV.  Rather than a second reading path, the
sheet becomes a CSV in the work folder, so validation, the report and the rejects are
exactly those of a CSV export.  What matters is that every cell becomes the text a
person sees in Excel, never a float's text: Excel stores every number as a double, so a
gtin ``3000000000123`` must not come out as ``3000000000123.0`` or ``3.00000000012e+12``,
and a postal code typed ``01000`` (text, or a number shown through a ``00000`` format)
must keep its zero.

The sheet is read with openpyxl itself (the engine pandas uses for .xlsx), cell by cell
in read-only mode: ``pandas.read_excel`` would load the whole sheet, drop blank rows (so
row numbers would be lost) and turn cells into floats before a converter sees them,
losing the number format that says how Excel shows them.

Row numbers: the report speaks of the sheet's rows.  The CSV gets one line per sheet
row (blank rows are blank lines, skipped and counted like a CSV's), so CSV line n is
sheet row n unless a cell holds a line break or the header is not on row 1; then
`SheetCsv.rows` maps the CSV lines back to sheet rows.
"""

from __future__ import annotations

import csv
import datetime as dt
import re
import zipfile
from bisect import bisect_right
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any, BinaryIO

from csvbridge.errors import InputError
from csvbridge.files import open_private

XLSX = "an Excel workbook (xlsx)"
INSTALL_HINT = "install csvbridge[pandas] (pandas + openpyxl) to read it"
EXCEL_DIGITS = 15  # Excel keeps (and shows) 15 significant digits of a number
_ZERO_PADDED = re.compile(r"^(0+)$")  # "00000": a postal code stored as a number
_TIME_CODES = re.compile(r"[hs]|AM/PM", re.I)


def available() -> bool:
    """True when openpyxl (the ``pandas`` extra) is installed."""
    try:
        import openpyxl  # noqa: F401
    except ImportError:
        return False
    return True


# --------------------------------------------------------------------------- cells


def number_text(value: float | int, number_format: str = "General") -> str:
    """A number as Excel shows it in a General cell, without exponent: integers without
    ``.0``, at most 15 significant digits (what Excel keeps), zero-padded when the
    format is a run of zeros (``00000``)."""
    if isinstance(value, bool):
        return "TRUE" if value else "FALSE"
    if isinstance(value, int):
        text = str(value)
    elif value != value or value in (float("inf"), float("-inf")):
        return str(value)  # not produced by Excel; shown rather than hidden
    else:
        d = Decimal(f"{value:.{EXCEL_DIGITS}g}")
        text = format(d.quantize(Decimal(1)) if d == d.to_integral_value() else d, "f")
        if "." in text:
            text = text.rstrip("0").rstrip(".")
        if text == "-0":
            text = "0"
    m = _ZERO_PADDED.match(number_format or "")
    if m and text.lstrip("-").isdigit():
        width = len(m.group(1))
        sign = "-" if text.startswith("-") else ""
        text = sign + text.lstrip("-").zfill(width)
    return text


def temporal_text(value: dt.datetime | dt.date | dt.time | dt.timedelta, fmt: str) -> str:
    """A date, date-time or time as ISO 8601 (a date-only format gives a date)."""
    if isinstance(value, dt.datetime):
        if value.time() == dt.time(0) and not _TIME_CODES.search(fmt or ""):
            return value.date().isoformat()
        return value.isoformat()
    if isinstance(value, (dt.date, dt.time)):
        return value.isoformat()
    seconds = int(value.total_seconds())  # a duration ([h]:mm:ss)
    sign, seconds = ("-", -seconds) if seconds < 0 else ("", seconds)
    return f"{sign}{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


def cell_text(value: Any, number_format: str = "General") -> str:
    """The text of one cell's value, as Excel shows it (see the module docstring)."""
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    if isinstance(value, (bool, int, float)):
        return number_text(value, number_format)
    if isinstance(value, (dt.datetime, dt.date, dt.time, dt.timedelta)):
        return temporal_text(value, number_format)
    return str(value)


# --------------------------------------------------------------------------- sheets


@dataclass
class SheetCsv:
    """A sheet written as CSV: where, which sheet, and the sheet row of each CSV line."""

    path: Path
    sheet: str
    rows_written: int = 0
    # parallel, increasing: CSV line where a sheet row starts, and that sheet row
    starts: list[int] = field(default_factory=list)
    rows: list[int] = field(default_factory=list)
    identity: bool = True  # CSV line n is sheet row n for every row
    others: list[str] = field(default_factory=list)  # the workbook's other sheets

    def hint(self) -> str:
        """Said when the sheet's header does not fit: maybe another sheet was meant."""
        if not self.others:
            return ""
        names = ", ".join(map(repr, self.others))
        return (
            f" (read sheet {self.sheet!r}; the workbook also has {names}: choose one with "
            "--sheet or convert.sheet)"
        )

    def row_of(self, line: int) -> int:
        """The sheet row of a CSV line (a line inside a multi-line cell: its row's)."""
        if self.identity:
            return line
        at = bisect_right(self.starts, line) - 1
        return self.rows[at] if at >= 0 else line


def _open(f: BinaryIO, file: str | None) -> Any:
    if not available():
        raise InputError(
            f"this is {XLSX}: {INSTALL_HINT}, or save the sheet as 'CSV UTF-8'", file=file
        )
    import openpyxl
    from openpyxl.utils.exceptions import InvalidFileException

    try:
        return openpyxl.load_workbook(f, read_only=True, data_only=True)
    except (zipfile.BadZipFile, InvalidFileException, KeyError, ValueError, OSError) as exc:
        raise InputError(
            f"the Excel workbook cannot be read ({type(exc).__name__}: {exc}); "
            "open it in Excel and save it again, or save the sheet as 'CSV UTF-8'",
            file=file,
        ) from None


def sheet_to_csv(
    path: str | Path, dest: Path, *, sheet: str | None = None, file: str | None = None
) -> SheetCsv:
    """Write one sheet of the workbook at `path` (the first, or the one named `sheet`)
    as a UTF-8 CSV at `dest`, streaming (read-only mode: memory stays flat)."""
    # a file object: openpyxl judges a path by its extension, and people rename
    # workbooks to .csv; the content (a zip with xl/) already said what it is
    with open(path, "rb") as f:
        return _sheet(_open(f, file), dest, sheet, file)


def _sheet(wb: Any, dest: Path, sheet: str | None, file: str | None) -> SheetCsv:
    try:
        if sheet is not None:
            if sheet not in wb.sheetnames:
                raise InputError(
                    f"the workbook has no sheet {sheet!r} (it has {', '.join(map(repr, wb.sheetnames))})",
                    file=file,
                )
            ws = wb[sheet]
        else:
            ws = wb.worksheets[0]
        if not hasattr(ws, "iter_rows"):
            raise InputError(f"sheet {ws.title!r} is a chart, not a table of rows", file=file)
        out = SheetCsv(dest, ws.title, others=[n for n in wb.sheetnames if n != ws.title])
        with open_private(dest, "w", encoding="utf-8", newline="") as f:
            _write_rows(ws, csv.writer(f, lineterminator="\n"), f, out)
        return out
    finally:
        wb.close()


def _write_rows(ws: Any, w: Any, f: Any, out: SheetCsv) -> None:
    line = 1  # the CSV line the next row starts on
    pending_blank = 0  # blank rows waiting for a row after them (trailing ones are dropped)
    width = 0  # the header's cells: trailing empty cells of other rows are not written
    seen_header = False
    # read-only sheets trust the file's declared dimension, which some writers get
    # wrong (a sheet "A1:A1" with thousands of rows): read what is there instead
    ws.reset_dimensions()
    for row_no, cells in enumerate(ws.iter_rows(min_row=1), start=1):
        texts = [cell_text(c.value, getattr(c, "number_format", "General")) for c in cells]
        while texts and texts[-1] == "":
            texts.pop()
        if not texts:
            if seen_header:
                pending_blank += 1
            continue
        if not seen_header:
            seen_header, width = True, len(texts)
        if pending_blank:
            f.write("\n" * pending_blank)
            line += pending_blank
            pending_blank = 0
        if len(texts) < width:
            texts.extend([""] * (width - len(texts)))
        w.writerow(texts)
        out.rows_written += 1
        out.starts.append(line)
        out.rows.append(row_no)
        if out.identity and line != row_no:
            out.identity = False
        line += 1 + sum(t.count("\n") for t in texts)
    # the blank rows between data rows have their lines: map them through the rows list
    if out.identity:
        out.starts, out.rows = [], []


__all__ = [
    "INSTALL_HINT",
    "XLSX",
    "SheetCsv",
    "available",
    "cell_text",
    "number_text",
    "sheet_to_csv",
]
