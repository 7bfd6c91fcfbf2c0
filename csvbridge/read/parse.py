"""Parse record-aligned text into rows with exact source line numbers.

Used by the chunk workers (`parse_chunk`), by the fast lane for its quoted records
(`parse_lines`) and by the reader itself; values stay text.
"""

from __future__ import annotations

import csv
import io
import sys
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from csvbridge.read.limits import DEFAULT_LIMITS, cell_error
from csvbridge.read.sniff import SENTINEL

if TYPE_CHECKING:
    from csvbridge.read.csvfile import Dialect

csv.field_size_limit(sys.maxsize)

_EXOTIC_BREAKS = "\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029"  # str.splitlines breaks there


@dataclass(slots=True)
class Row:
    line: int  # source line where the record starts (the header is line 1)
    cells: list[str]


@dataclass(slots=True)
class ParsedChunk:
    rows: list[Row] = field(default_factory=list)
    blank: int = 0  # blank lines skipped
    bad_encoding: list[int] = field(default_factory=list)  # lines with undecodable bytes
    boundary_ok: bool = True


def parse_lines(
    lines: list[str],
    first_line: int,
    delimiter: str,
    quotechar: str = '"',
    *,
    max_cell: int | None = DEFAULT_LIMITS.max_cell_chars,
) -> tuple[list[Row], int, bool]:
    """Rows of complete lines (line ends kept) that start on a record boundary:
    (rows, blank lines skipped, whether they also end on one).

    A sentinel record is parsed after the lines: if a quote is still open at their
    end, the sentinel is swallowed into the last field and the answer is False.
    A record spanning several lines is checked against `max_cell` (single lines are
    checked by the chunker, which sees every byte).
    """
    cap = max_cell or sys.maxsize
    n = len(lines)
    reader = csv.reader([*lines, SENTINEL + "\n"], delimiter=delimiter, quotechar=quotechar)
    base = first_line - 1
    prev_end = 0
    rows: list[Row] = []
    append = rows.append
    blank = 0
    for cells in reader:
        start = base + prev_end + 1
        end = reader.line_num
        # (a record that swallowed the sentinel is an open quote, not a long cell)
        if end - prev_end > 1 and end <= n and max(map(len, cells)) > cap:
            j = max(range(len(cells)), key=lambda k: len(cells[k]))
            raise cell_error(start, j + 1, len(cells[j]), cap)
        prev_end = end
        if not cells or (not cells[0] and not any(cells)):
            blank += 1  # a blank line, or a spreadsheet's trailing ",,,," row
            continue
        append(Row(start, cells))
    if rows and rows[-1].cells == [SENTINEL]:
        rows.pop()
        return rows, blank, True
    return rows, blank, False


def parse_chunk(
    data: bytes,
    first_line: int,
    dialect: Dialect,
    *,
    max_cell: int | None = DEFAULT_LIMITS.max_cell_chars,
) -> ParsedChunk:
    """Parse one record-aligned chunk into rows with their starting line numbers."""
    out = ParsedChunk()
    try:
        text = data.decode(dialect.encoding)
        bad = False
    except UnicodeDecodeError:
        text = data.decode(dialect.encoding, errors="replace")
        bad = True
    if any(ch in text for ch in _EXOTIC_BREAKS):
        # str.splitlines also breaks on form feeds, U+2028...; csv must not
        lines = list(io.StringIO(text, newline=""))
    else:
        lines = text.splitlines(keepends=True)
    if lines and not lines[-1].endswith(("\n", "\r")):
        lines[-1] += "\n"
    rows, out.blank, out.boundary_ok = parse_lines(
        lines, first_line, dialect.delimiter, dialect.quotechar, max_cell=max_cell
    )
    out.rows = rows
    base = first_line - 1
    if "\r" in text and text.count("\r") != text.count("\r\n"):
        # a bare CR (old Mac line end, or inside a quoted field) ended a line for the
        # parser; line numbers count LF, as the chunker and editors do
        nl = [0]
        for piece in lines:
            nl.append(nl[-1] + piece.endswith("\n"))
        for r in rows:
            r.line = base + nl[r.line - base - 1] + 1
    if bad:
        for r in rows:
            if any("\ufffd" in c for c in r.cells):
                out.bad_encoding.append(r.line)
    return out
