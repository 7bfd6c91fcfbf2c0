"""The rejects file: the rejected rows in the source's own dialect and header, plus an
error column, ready to be fixed in a spreadsheet and dropped again.

A spreadsheet runs a cell starting with ``=``, ``+``, ``-``, ``@``, tab or CR as a
formula (CSV injection), so such cells are written with a leading ``'`` (OWASP's advice);
a plain number (``-3.70379``, ``+12``) is left as it is: a spreadsheet reads it as a
number, never as a formula.  To keep that reversible, a cell that already starts with quotes before one of those
characters gets one more.  A file whose header has the ``csvbridge_error`` column is a
rejects file dropped again: that column is ignored, and one leading ``'`` is removed
from every cell of the form ``'...'X`` (X one of the characters above), which gives
back exactly the values of the original export.
"""

from __future__ import annotations

import csv
import re
from pathlib import Path
from typing import TYPE_CHECKING

from csvbridge.files import write_into_place
from csvbridge.read.csvfile import CsvFile, Row, parse_chunk

if TYPE_CHECKING:
    from csvbridge.fold.workdir import Converted

ERROR_COLUMN = "csvbridge_error"
_NEEDS_QUOTE = re.compile("'*[=+\\-@\t\r]")
_QUOTED = re.compile("'+[=+\\-@\t\r]")
_NUMBER = re.compile(r"[+-]?(\d+([.,]\d*)?|[.,]\d+)([eE][+-]?\d+)?")


def neutralise(cell: str) -> str:
    """A cell a spreadsheet will show as text, never run as a formula."""
    if _NEEDS_QUOTE.match(cell) and not _NUMBER.fullmatch(cell):
        return "'" + cell
    return cell


def restore(cell: str) -> str:
    """The inverse of `neutralise`."""
    return cell[1:] if _QUOTED.match(cell) else cell


def restore_rows(rows: list[Row]) -> None:
    """Restore the cells of a fixed rejects file's rows, in place."""
    for row in rows:
        cells = row.cells
        for i, c in enumerate(cells):
            if c[:1] == "'" and _QUOTED.match(c):
                cells[i] = c[1:]


def write_rejects(converted: Converted, source: Path, dest: Path) -> int:
    """Write the rejected rows, in the source's own dialect and header, plus an error column.

    `source` is read only when the conversion does not know its own (a stream spooled
    by the conversion is read from its spool).  Returns the number of rows written.
    """
    work = converted.work
    spans = work.rejected_spans()
    if not spans:
        return 0
    used = converted.report.dialect  # read it the way it was converted (forced options)
    if work.source is not None:
        csvf = work.open_source()
    else:
        csvf = CsvFile(source, encoding=used.get("encoding"), delimiter=used.get("delimiter"))
    written = 0
    at = 0  # the spans before `at` end before the current row
    d = csvf.dialect
    with (
        csvf,
        write_into_place(dest, "w", encoding=d.encoding, errors="replace", newline="") as out,
    ):
        w = csv.writer(out, delimiter=d.delimiter, lineterminator="\r\n")
        header = list(csvf.header)
        # a fixed rejects file rejected again: its cells restored, one error column
        drop = header.index(ERROR_COLUMN) if ERROR_COLUMN in header else -1
        if drop >= 0:
            header = [restore(h) for i, h in enumerate(header) if i != drop]
        w.writerow([*map(neutralise, header), ERROR_COLUMN])
        for data, first in csvf.chunks():
            for row in parse_chunk(data, first, d).rows:
                n = row.line
                while at < len(spans) and spans[at].last < n:
                    at += 1
                if at == len(spans):
                    return written  # every rejected row written
                span = spans[at]
                if span.first <= n:
                    cells = row.cells
                    if drop >= 0:
                        cells = [restore(c) for i, c in enumerate(cells) if i != drop]
                    w.writerow([*map(neutralise, cells), f"line {converted.report.label(n)}: {span.reason}"])
                    written += 1
    return written


__all__ = ["ERROR_COLUMN", "neutralise", "restore", "restore_rows", "write_rejects"]
