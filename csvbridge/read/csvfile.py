"""Read CSV exports whatever their dialect, as text, with exact source line numbers.

What the reader decides once per file (`sniff`): compression (gzip by magic bytes),
encoding (UTF-8 with or without BOM, else cp1252, else latin-1; or forced), delimiter
(``,`` ``;`` tab ``|``: the one the header line uses most, outside quotes), and the
header.  Then it cuts the byte stream into chunks that end on a record boundary, so that
several processes can parse in parallel (`chunks`), and parses a chunk into rows
(`parse_chunk`).

Record boundaries: with RFC 4180 quoting every ``"`` toggles the quoted state (an
escaped quote is two toggles), so a newline is a record end iff the number of quotes
before it is even.  Where a file breaks that rule (a stray quote inside an unquoted
field), the chunk's parser notices it — a sentinel line appended to each chunk must come
back as its own row — and the caller falls back to reading the file in one piece.

Values are never converted here: a gtin, a postal code ``01000`` or an id stays text.
Ragged rows (more or fewer cells than the header) are returned as such, with their line
number, for the caller to reject — never padded or dropped.
"""

from __future__ import annotations

import codecs
import csv
import gzip
import io
import sys
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from csvbridge.errors import InputError

csv.field_size_limit(sys.maxsize)

DELIMITERS = (",", ";", "\t", "|")
SAMPLE_BYTES = 1 << 20
CHUNK_BYTES = 1 << 21  # 2 MiB: enough rows to amortise IPC, small enough for flat memory
SENTINEL = "\ufdd0csvbridge-end-of-chunk"
GZIP_MAGIC = b"\x1f\x8b"
_EXOTIC_BREAKS = "\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029"  # str.splitlines breaks there


@dataclass(frozen=True, slots=True)
class Dialect:
    """How one file is written, as detected (or forced) — reported back to the user."""

    encoding: str
    delimiter: str
    bom: bool = False
    gzip: bool = False
    quotechar: str = '"'

    def as_dict(self) -> dict[str, object]:
        return {
            "encoding": self.encoding,
            "delimiter": self.delimiter,
            "bom": self.bom,
            "gzip": self.gzip,
        }


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


def open_binary(source: str | Path | BinaryIO) -> tuple[BinaryIO, bool]:
    """Open a path, ``-`` (stdin) or a stream; gunzip transparently. Returns (stream, gz)."""
    if isinstance(source, (str, Path)):
        if str(source) == "-":
            raw: BinaryIO = sys.stdin.buffer
        else:
            try:
                raw = open(source, "rb")  # noqa: SIM115 - handed to the caller
            except OSError as exc:
                raise InputError(f"cannot open input: {exc.strerror}", file=str(source)) from None
    else:
        raw = source
    buffered = raw if isinstance(raw, io.BufferedReader) else io.BufferedReader(raw)  # type: ignore[arg-type]
    if buffered.peek(2)[:2] == GZIP_MAGIC:
        return gzip.GzipFile(fileobj=buffered, mode="rb"), True  # type: ignore[return-value]
    return buffered, False


def detect_encoding(
    sample: bytes, forced: str | None = None, *, whole: bool = False
) -> tuple[str, bool]:
    """(encoding, had_bom).  UTF-8 first (the sample may end mid-character unless it is
    the `whole` file), then cp1252."""
    if sample.startswith(codecs.BOM_UTF8):
        return "utf-8", True
    if sample.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        raise InputError("the file is UTF-16; re-export it as UTF-8 (or cp1252)")
    if forced:
        try:
            codecs.lookup(forced)
        except LookupError:
            raise InputError(f"unknown encoding {forced!r}") from None
        if '\n\r,;\t|"'.encode(forced, errors="replace") != b'\n\r,;\t|"':
            # delimiters, quotes and line ends are found as ASCII bytes
            raise InputError(
                f"encoding {forced!r} is not ASCII-compatible; re-export the file as UTF-8"
            )
        return forced, False
    if b"\x00" in sample[:4096]:
        raise InputError("the file is binary (it contains NUL bytes), not a CSV export")
    try:
        codecs.getincrementaldecoder("utf-8")().decode(sample, final=whole)
        return "utf-8", False
    except UnicodeDecodeError:
        pass
    try:
        sample.decode("cp1252")
        return "cp1252", False
    except UnicodeDecodeError:
        return "latin-1", False


def _first_record(text: str) -> str:
    """The header record's text (it may itself contain quoted newlines)."""
    in_quotes = False
    for i, ch in enumerate(text):
        if ch == '"':
            in_quotes = not in_quotes
        elif ch == "\n" and not in_quotes:
            return text[:i]
    return text


def detect_delimiter(header_text: str) -> str:
    """The candidate used most in the header line, outside quotes."""
    counts = dict.fromkeys(DELIMITERS, 0)
    in_quotes = False
    for ch in header_text:
        if ch == '"':
            in_quotes = not in_quotes
        elif not in_quotes and ch in counts:
            counts[ch] += 1
    best = max(DELIMITERS, key=lambda d: counts[d])
    return best if counts[best] else ","


class CsvFile:
    """One open CSV source: its dialect, header, and a stream of record-aligned chunks."""

    def __init__(
        self,
        source: str | Path | BinaryIO,
        *,
        name: str | None = None,
        encoding: str | None = None,
        delimiter: str | None = None,
    ) -> None:
        self.name = name or (str(source) if isinstance(source, (str, Path)) else "<stream>")
        self._stream, gz = open_binary(source)
        try:
            sample = self._stream.read(SAMPLE_BYTES)
        except (OSError, EOFError, zlib.error) as exc:
            raise InputError(f"cannot read input: {exc}", file=self.name) from None
        # a plain file on disk: worker processes can read a chunk themselves at its
        # offset (`chunk_offset`) instead of receiving its bytes through a pipe
        plain = isinstance(source, (str, Path)) and str(source) != "-" and not gz
        self.path: str | None = str(source) if plain else None
        consumed = len(sample)
        enc, bom = detect_encoding(sample, encoding, whole=len(sample) < SAMPLE_BYTES)
        if bom:
            sample = sample[len(codecs.BOM_UTF8) :]
        if not sample.strip():
            raise InputError("the file is empty (no header row)", file=self.name)
        # surrogateescape: undecodable bytes (a forced encoding) map back to themselves,
        # so the header's length in bytes is exact
        head_bytes = _first_record(sample.decode(enc, errors="surrogateescape")).encode(
            enc, errors="surrogateescape"
        )
        header_text = head_bytes.decode(enc, errors="replace")
        if delimiter is not None and len(delimiter) != 1:
            raise InputError(f"delimiter must be one character, got {delimiter!r}")
        delim = delimiter or detect_delimiter(header_text)
        self.dialect = Dialect(enc, delim, bom, gz)
        if "\r" in header_text and b"\n" not in sample:
            raise InputError(
                "lines end with a bare CR (classic Mac OS): re-export the file with LF or "
                "CRLF line ends",
                file=self.name,
            )
        try:
            header_rows = list(csv.reader(io.StringIO(header_text), delimiter=delim))
        except csv.Error as exc:
            raise InputError(f"cannot read the header row: {exc}", file=self.name) from None
        if not header_rows or not any(c.strip() for c in header_rows[0]):
            raise InputError("the first row is empty: a header row is required", file=self.name)
        self.header = header_rows[0]
        self.header_lines = header_text.count("\n") + 1
        # bytes after the header record (its own line break excluded)
        rest = sample[len(head_bytes) :]
        if rest.startswith(b"\r"):
            rest = rest[1:]
        if rest.startswith(b"\n"):
            rest = rest[1:]
        self._pending = rest
        self.chunk_offset = consumed - len(rest)  # file offset of the last chunk yielded

    def close(self) -> None:
        if self._stream is not sys.stdin.buffer:
            self._stream.close()

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
                    try:
                        more = self._stream.read(min(size - have, CHUNK_BYTES))
                    except (OSError, EOFError, zlib.error) as exc:
                        raise InputError(f"cannot read input: {exc}", file=self.name) from None
                    if not more:
                        eof = True
                        break
                    parts.append(more)
                    have += len(more)
                buf = b"".join(parts)
            if eof:
                cut = len(buf)
            else:
                cut = self._boundary(buf, quotes_odd, size)
                if cut < 0:  # one record larger than the chunk: read more
                    size *= 2
                    continue
            piece, buf = buf[:cut], buf[cut:]
            if piece:
                # a cut is always made outside quotes, so the next piece starts outside
                quotes_odd = False
                self.chunk_offset = pos
                yield piece, line
                pos += len(piece)
                line += piece.count(b"\n")

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

        def lines() -> Iterator[str]:
            for piece in text:
                handed[1] = piece
                yield piece
                handed[0] += piece.endswith("\n")

        reader = csv.reader(lines(), delimiter=d.delimiter, quotechar=d.quotechar)
        base = self.header_lines
        prev = 0
        for cells in reader:
            start = base + prev + 1
            prev = handed[0] + handed[1].endswith("\n")
            yield Row(start, cells) if cells and (cells[0] or any(cells)) else None

    @staticmethod
    def _boundary(buf: bytes, quotes_odd: bool, end: int) -> int:
        """Index just after the last newline of ``buf[:end]`` outside quotes, or -1."""
        end = min(end, len(buf))
        total_odd = quotes_odd ^ (_quotes(buf, 0, end) % 2 == 1)
        pos = end
        while True:
            nl = buf.rfind(b"\n", 0, pos)
            if nl < 0:
                return -1
            # parity before `nl` = parity at `end` minus quotes between them
            after_odd = buf.count(b'"', nl, end) % 2 == 1
            if not (total_odd ^ after_odd):
                return nl + 1
            pos = nl


def _quotes(buf: bytes, start: int, end: int) -> int:
    """Quote characters in ``buf[start:end]``.

    Most exports quote a few fields: jumping from quote to quote with find() (memchr)
    beats bytes.count, which looks at every byte, several times over.  Past a few
    hundred quotes, count() is the faster one.
    """
    n = 0
    find = buf.find
    i = find(b'"', start, end)
    while i >= 0:
        n += 1
        if n == 256:
            return n + buf.count(b'"', i + 1, end)
        i = find(b'"', i + 1, end)
    return n


class _Joined(io.RawIOBase):
    """A raw stream that first returns `head`, then reads from `rest`."""

    def __init__(self, head: bytes, rest: BinaryIO) -> None:
        self._head = memoryview(head)
        self._rest = rest

    def readable(self) -> bool:
        return True

    def readinto(self, b: bytearray) -> int:  # type: ignore[override]
        if self._head:
            n = min(len(b), len(self._head))
            b[:n] = self._head[:n]
            self._head = self._head[n:]
            return n
        data = self._rest.read(len(b))
        b[: len(data)] = data
        return len(data)


def parse_lines(
    lines: list[str], first_line: int, delimiter: str, quotechar: str = '"'
) -> tuple[list[Row], int, bool]:
    """Rows of complete lines (line ends kept) that start on a record boundary:
    (rows, blank lines skipped, whether they also end on one).

    A sentinel record is parsed after the lines: if a quote is still open at their
    end, the sentinel is swallowed into the last field and the answer is False.
    """
    reader = csv.reader([*lines, SENTINEL + "\n"], delimiter=delimiter, quotechar=quotechar)
    base = first_line - 1
    prev_end = 0
    rows: list[Row] = []
    append = rows.append
    blank = 0
    for cells in reader:
        start = base + prev_end + 1
        prev_end = reader.line_num
        if not cells or (not cells[0] and not any(cells)):
            blank += 1  # a blank line, or a spreadsheet's trailing ",,,," row
            continue
        append(Row(start, cells))
    if rows and rows[-1].cells == [SENTINEL]:
        rows.pop()
        return rows, blank, True
    return rows, blank, False


def parse_chunk(data: bytes, first_line: int, dialect: Dialect) -> ParsedChunk:
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
        lines, first_line, dialect.delimiter, dialect.quotechar
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
