"""Read CSV exports whatever their dialect, as text, with exact source line numbers.

What the reader decides once per file (`csvbridge.read.sniff`): compression (gzip by
magic bytes), whether it is a CSV at all (a workbook, JSON, an HTML page... are named),
encoding (UTF-8 with or without BOM, else a detected code page, flagged when it is a
guess; or forced), delimiter (``,`` ``;`` tab ``|``: the one that splits the header
record into most cells) and the header, read by the csv module like the body.
Everything is read within `ReadLimits` (cell, record, header, columns, gzip
expansion), so memory stays bounded whatever the input.  Then it cuts the byte stream into chunks that end on a record boundary, so that
several processes can parse in parallel (`chunks`), and parses a chunk into rows
(`parse_chunk`).

Record boundaries: a newline is a record end iff the number of quotes before it is
even (`csvbridge.read.boundary`, which also says what happens when a file breaks that
rule).  Opening and gunzipping, and replaying the sampled head: `csvbridge.read.streams`.
Both are importable from here too.

Values are never converted here: a gtin, a postal code ``01000`` or an id stays text.
Ragged rows (more or fewer cells than the header) are returned as such, with their line
number, for the caller to reject — never padded or dropped.
"""

from __future__ import annotations

import codecs
import csv
import io
import sys
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from csvbridge.errors import InputError
from csvbridge.read.boundary import record_end
from csvbridge.read.limits import (
    DEFAULT_LIMITS,
    ReadLimits,
    RecordTooLong,
    cell_error,
    size_text,
)
from csvbridge.read.parse import ParsedChunk, Row, parse_chunk, parse_lines
from csvbridge.read.sniff import (  # noqa: F401 - detect_* re-exported
    DELIMITERS,
    SENTINEL,
    detect_delimiter,
    detect_encoding,
    find_header,
    identify,
    not_csv_error,
    sniff_encoding,
)
from csvbridge.read.streams import GZIP_MAGIC, _Joined, open_binary

csv.field_size_limit(sys.maxsize)

__all__ = [
    "CHUNK_BYTES",
    "GZIP_MAGIC",
    "CsvFile",
    "Dialect",
    "ParsedChunk",
    "ReadLimits",
    "Row",
    "detect_delimiter",
    "detect_encoding",
    "open_binary",
    "parse_chunk",
    "parse_lines",
    "record_end",
]

SAMPLE_BYTES = 1 << 20
CHUNK_BYTES = 1 << 21  # 2 MiB: enough rows to amortise IPC, small enough for flat memory


@dataclass(frozen=True, slots=True)
class Dialect:
    """How one file is written, as detected (or forced) — reported back to the user."""

    encoding: str
    delimiter: str
    bom: bool = False
    gzip: bool = False
    quotechar: str = '"'
    # False when the encoding is a guess between code pages the sample cannot tell
    # apart; `encoding_note` says so in words, for the report
    encoding_confident: bool = True
    encoding_note: str | None = None

    def as_dict(self) -> dict[str, object]:
        out: dict[str, object] = {
            "encoding": self.encoding,
            "delimiter": self.delimiter,
            "bom": self.bom,
            "gzip": self.gzip,
        }
        if not self.encoding_confident or self.encoding_note:
            out["encoding_confident"] = self.encoding_confident
            out["encoding_note"] = self.encoding_note
        return out


class CsvFile:
    """One open CSV source: its dialect, header, and a stream of record-aligned chunks."""

    def __init__(
        self,
        source: str | Path | BinaryIO,
        *,
        name: str | None = None,
        encoding: str | None = None,
        delimiter: str | None = None,
        limits: ReadLimits | None = None,
    ) -> None:
        self.name = name or (str(source) if isinstance(source, (str, Path)) else "<stream>")
        self.limits = limits = limits or DEFAULT_LIMITS
        self._owns_stream = isinstance(source, (str, Path))  # a caller's stream stays open
        self._stream, gz = open_binary(source, limits, self.name)
        try:
            sample = self._read(SAMPLE_BYTES)
            self._sniff(source, sample, gz, encoding, delimiter)
        except BaseException:
            self.close()
            raise

    def _read(self, n: int) -> bytes:
        try:
            return self._stream.read(n)
        except (OSError, EOFError, zlib.error) as exc:
            raise InputError(f"cannot read input: {exc}", file=self.name) from None

    def _sniff(
        self,
        source: str | Path | BinaryIO,
        sample: bytes,
        gz: bool,
        encoding: str | None,
        delimiter: str | None,
    ) -> None:
        """Dialect and header from the first bytes (more when the header is longer)."""
        # a plain file on disk: worker processes can read a chunk themselves at its
        # offset (`chunk_offset`) instead of receiving its bytes through a pipe
        plain = isinstance(source, (str, Path)) and str(source) != "-" and not gz
        self.path: str | None = str(source) if plain else None
        what = identify(sample)
        if what is not None:
            raise not_csv_error(what, self.name)
        consumed = len(sample)
        eof = len(sample) < SAMPLE_BYTES
        guess = sniff_encoding(sample, encoding, whole=eof)
        enc = guess.encoding
        if guess.bom:
            sample = sample[len(codecs.BOM_UTF8) :]
        if not sample.strip():
            raise InputError("the file is empty (no header row)", file=self.name)
        if delimiter is not None and len(delimiter) != 1:
            raise InputError(f"delimiter must be one character, got {delimiter!r}")
        cap = self.limits.max_header_bytes
        while True:
            if b"\r" in sample and b"\n" not in sample and (eof or len(sample) > 65536):
                raise InputError(
                    "lines end with a bare CR (classic Mac OS): re-export the file with LF "
                    "or CRLF line ends",
                    file=self.name,
                )
            # surrogateescape: undecodable bytes (a forced encoding) map back to
            # themselves, so the header's length in bytes is exact
            text = sample.decode(enc, errors="surrogateescape")
            head = find_header(text, eof=eof, delimiter=delimiter)
            if head is not None and (cap is None or len(head.text) <= cap):
                break
            if cap is not None and len(sample) > cap:
                raise RecordTooLong(
                    f"the header row is longer than {size_text(cap)} (max_header_bytes); "
                    "check the line breaks of the export or raise the limit",
                    file=self.name,
                    line=1,
                )
            more = self._read(max(len(sample), CHUNK_BYTES))
            eof = not more
            consumed += len(more)
            sample += more
        head_bytes = head.text.encode(enc, errors="surrogateescape")
        self.dialect = Dialect(
            enc,
            head.delimiter,
            guess.bom,
            gz,
            encoding_confident=guess.confident,
            encoding_note=guess.note,
        )
        cells = [c.encode(enc, "surrogateescape").decode(enc, "replace") for c in head.cells]
        if not cells or not any(c.strip() for c in cells):
            raise InputError("the first row is empty: a header row is required", file=self.name)
        self._check_header(cells)
        self.header = cells
        self.header_lines = head.text.count("\n") + 1
        # bytes after the header record (its own line break excluded)
        rest = sample[len(head_bytes) :]
        if rest.startswith(b"\r"):
            rest = rest[1:]
        if rest.startswith(b"\n"):
            rest = rest[1:]
        self._pending = rest
        self.chunk_offset = consumed - len(rest)  # file offset of the last chunk yielded

    def _check_header(self, cells: list[str]) -> None:
        lim = self.limits
        if lim.max_columns is not None and len(cells) > lim.max_columns:
            raise InputError(
                f"the header has {len(cells):,} columns, more than {lim.max_columns:,} "
                "(max_columns); check the delimiter or raise the limit",
                file=self.name,
                line=1,
            )
        cap = lim.max_cell_chars
        if cap is not None:
            for j, c in enumerate(cells):
                if len(c) > cap:
                    raise cell_error(1, j + 1, len(c), cap, None, self.name)

    def close(self) -> None:
        stream = getattr(self, "_stream", None)
        if stream is not None and getattr(self, "_owns_stream", True):
            stream.close()

    def __enter__(self) -> CsvFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def chunks(self, size: int = CHUNK_BYTES) -> Iterator[tuple[bytes, int]]:
        """Yield ``(data, first_line)`` pieces that each end on a record boundary."""
        line = self.header_lines + 1
        buf = self._pending
        self._pending = b""
        pos = self.chunk_offset  # file offset of buf[0]
        quotes_odd = False  # quote parity at the start of `buf`
        eof = False
        while not eof:
            if len(buf) < size:
                # read in bounded pieces: `size` may be huge ("the whole file in one
                # piece"), and read(n) allocates n bytes up front
                parts, have = [buf], len(buf)
                while have < size:
                    more = self._read(min(size - have, CHUNK_BYTES))
                    if not more:
                        eof = True
                        break
                    parts.append(more)
                    have += len(more)
                buf = b"".join(parts)
            if eof:
                cut = len(buf)
            else:
                cut = record_end(buf, quotes_odd, size)
                if cut < 0:  # one record larger than the chunk: read more, up to the cap
                    cap = self.limits.max_record_bytes
                    if cap is None or size < cap:
                        size = size * 2 if cap is None else min(size * 2, max(cap, size))
                        continue
                    # no record end by quote parity within the cap: cut at the last line
                    # break and let the csv module judge (a stray quote inside an unquoted
                    # field fools parity, not the parser; a real open quote sends the
                    # engine to `rows`, which stops at the cap)
                    cut = buf.rfind(b"\n", 0, size) + 1
                    if not cut:
                        if not self._too_many_cells(buf[:size], line):
                            self._check_cells(buf[:size], line, partial=True)
                        raise self._too_long(line)
            piece, buf = buf[:cut], buf[cut:]
            if piece:
                if len(piece) > CHUNK_BYTES and self._too_many_cells(piece, line):
                    raise self._too_long(line)
                self._check_cells(piece, line)
                # a cut is always made outside quotes, so the next piece starts outside
                quotes_odd = False
                self.chunk_offset = pos
                yield piece, line
                pos += len(piece)
                line += piece.count(b"\n")

    def _too_long(self, line: int) -> RecordTooLong:
        cap = self.limits.max_record_bytes or 0
        return RecordTooLong(
            f"the record starting at line {line} is longer than {size_text(cap)} "
            "(max_record_bytes): a line break or a closing quote is missing, or a cell is "
            "far too long; fix the export or raise the limit",
            file=self.name,
            line=line,
        )

    def _too_many_cells(self, piece: bytes, line: int) -> bool:
        """A big piece (a record past the chunk size) holding more delimiters than
        `max_columns` per line: parsing it would make millions of tiny strings."""
        cols = self.limits.max_columns
        if cols is None:
            return False
        delims = piece.count(self.dialect.delimiter.encode(self.dialect.encoding))
        return delims > (piece.count(b"\n") + 1) * cols

    def _check_cells(self, piece: bytes, line: int, *, partial: bool = False) -> None:
        """Refuse a cell longer than `max_cell_chars` in a single-line record.

        Cheap on the hot path: such a line holds a whole window of ``cap / 2`` bytes
        without a line break, so a few find() calls per chunk clear it; only a chunk
        with such a window is parsed here.  Cells spanning several lines (quoted
        line breaks) are checked by `parse_lines`.
        """
        cap = self.limits.max_cell_chars
        if cap is None or len(piece) <= cap:
            return
        w = max(cap // 2, 1)
        find = piece.find
        if all(find(b"\n", i, i + w) >= 0 for i in range(0, len(piece) - w + 1, w)):
            return
        for row in parse_chunk(piece, line, self.dialect, max_cell=cap).rows:
            for j, c in enumerate(row.cells):
                if len(c) > cap:
                    name = self.header[j] if j < len(self.header) else None
                    raise cell_error(
                        row.line, j + 1, len(c), cap, name, self.name, at_least=partial
                    )

    def rows(self) -> Iterator[Row | None]:
        """Every record after the header, read sequentially (None for a blank line).

        The slow, always-right path: one csv reader over the whole stream, for files
        whose stray quotes defeat record-aligned chunking.
        """
        d = self.dialect
        head = self._pending
        self._pending = b""
        stream = io.BufferedReader(_Joined(head, self._stream))  # type: ignore[arg-type]
        text = io.TextIOWrapper(stream, encoding=d.encoding, errors="replace", newline="")
        # the text stream also ends a line at a bare CR; line numbers count LF (as the
        # chunked path does), so count the LF-ended lines handed to the parser
        handed = [0, ""]  # LF-ended lines before the last one handed out; the last one
        base = self.header_lines
        record_cap = self.limits.max_record_bytes or sys.maxsize
        cell_cap = self.limits.max_cell_chars or sys.maxsize
        size = [0]  # characters of the record being read so far

        def lines() -> Iterator[str]:
            # readline(n): a line without a break never grows past the cap in memory
            while piece := text.readline(record_cap + 1):
                size[0] += len(piece)
                if size[0] > record_cap:
                    raise self._too_long(base + prev + 1)
                handed[1] = piece
                yield piece
                handed[0] += piece.endswith("\n")

        reader = csv.reader(lines(), delimiter=d.delimiter, quotechar=d.quotechar)
        prev = 0
        for cells in reader:
            start = base + prev + 1
            prev = handed[0] + handed[1].endswith("\n")
            size[0] = 0
            if cells and max(map(len, cells)) > cell_cap:
                j = max(range(len(cells)), key=lambda k: len(cells[k]))
                name = self.header[j] if j < len(self.header) else None
                raise cell_error(start, j + 1, len(cells[j]), cell_cap, name, self.name)
            yield Row(start, cells) if cells and (cells[0] or any(cells)) else None
