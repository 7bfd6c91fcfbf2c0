"""The rejects file: the rejected rows in the source's own dialect and header, plus an
error column, ready to be fixed and dropped again."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import TYPE_CHECKING

from csvbridge.files import write_into_place
from csvbridge.read.csvfile import CsvFile, parse_chunk

if TYPE_CHECKING:
    from csvbridge.convert.workdir import Converted

ERROR_COLUMN = "csvbridge_error"


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
        w.writerow([*csvf.header, ERROR_COLUMN])
        for data, first in csvf.chunks():
            for row in parse_chunk(data, first, d).rows:
                n = row.line
                while at < len(spans) and spans[at].last < n:
                    at += 1
                if at == len(spans):
                    return written  # every rejected row written
                span = spans[at]
                if span.first <= n:
                    w.writerow([*row.cells, f"line {n}: {span.reason}"])
                    written += 1
    return written


__all__ = ["ERROR_COLUMN", "write_rejects"]
