"""The work folder of one conversion: the only code that names, writes and reads its files.

    objects.ndjson   valid objects, one NDJSON line each, in order of first appearance
    objects.index    ``id<TAB>line,line,...`` per NDJSON line (the rows behind it)
    rejected.tsv     ``lines<TAB>reason`` per rejected object (``a-b`` for a line range)
    input.spool      a stream's bytes, kept because the fallbacks read the source again
    ids.sqlite       the ids already closed while streaming (bounded memory)
    products.sqlite  the product ids already written (a products file), same reason
    buckets/         the regroup's bucket files

Every file is created private (0600): they hold customer data.  The folder also
remembers the source (path and dialect) the objects were read from, so the rejected
rows can be read again exactly as they were converted.
"""

from __future__ import annotations

import shutil
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, NamedTuple

from csvbridge.files import open_private
from csvbridge.fold.assemble import Built, Record
from csvbridge.fold.build import Overflow
from csvbridge.read.csvfile import CsvFile, Dialect
from csvbridge.read.limits import DEFAULT_LIMITS, ReadLimits
from csvbridge.report import Problem, Report


class IndexEntry(NamedTuple):
    id: str
    lines: tuple[int, ...]


class Rejected(NamedTuple):
    lines: str  # as rejected.tsv holds them: "2,3,7" or "2-9000"
    reason: str


class Packed(NamedTuple):
    """A batch's NDJSON and index text, joined in the worker: two blobs to write."""

    ndjson: bytes
    index: str


def lines_text(lines: tuple[int, ...]) -> str:
    return ",".join(map(str, lines))


@dataclass(slots=True)
class Output:
    """What a batch of built objects contributes to the files and the report."""

    ndjson: list[bytes] = field(default_factory=list)
    index: list[IndexEntry] = field(default_factory=list)
    rejected: list[Rejected] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)
    rows_ok: int = 0
    rows_bad: int = 0
    rows_dup: int = 0
    ok: int = 0
    bad: int = 0
    packed: Packed | None = None

    def pack(self) -> Output:
        """Join the lines in the worker, so the main process only writes two blobs."""
        if self.ndjson:
            self.packed = Packed(b"\n".join(self.ndjson) + b"\n", index_text(self.index))
            self.ndjson, self.index = [], []
        return self

    def add(self, built: Built) -> None:
        if built.problems:
            self.problems.extend(built.problems)
        rec = built.record
        if rec is None:
            reason = next((p for p in built.problems if not p.warning), None)
            self.reject(
                lines_text(built.lines),
                built.rows,
                reason.reason() if reason else "rejected",
            )
            return
        self.ok += 1
        self.rows_ok += built.rows
        self.ndjson.append(rec.json)
        self.index.append(IndexEntry(rec.id, rec.lines))

    def add_overflow(self, over: Overflow) -> None:
        problem = over.problem()
        self.problems.append(problem)
        self.reject(over.lines_text(), over.rows, f"{problem.code}: {problem.detail}")

    def reject(self, lines: str, rows: int, reason: str) -> None:
        self.bad += 1
        self.rows_bad += rows
        self.rejected.append(Rejected(lines, reason))


class ProductIds:
    """Product ids already written, with the lines of their first occurrence; on disk
    (SQLite), so a catalog of millions of products keeps memory flat.

    A products export must not repeat an id (`reject`: later ones are rejected, naming
    the first); products taken from conversions repeat by nature (later ones skipped).
    """

    def __init__(self, path: Path, *, reject: bool) -> None:
        self.reject = reject
        self.skipped = 0
        path.unlink(missing_ok=True)
        open_private(path).close()  # sqlite would create it with the umask's mode
        self.path = path
        self.db = sqlite3.connect(path)
        self.db.executescript(
            "PRAGMA journal_mode=OFF; PRAGMA synchronous=OFF; PRAGMA cache_size=-16000;"
            "CREATE TABLE ids(id TEXT PRIMARY KEY, lines TEXT) WITHOUT ROWID;"
        )

    def _first(self, pid: str, lines: str) -> str | None:
        """None for a new id (now recorded); else the lines of its first occurrence."""
        if self.db.execute("INSERT OR IGNORE INTO ids VALUES (?, ?)", (pid, lines)).rowcount:
            return None
        return self.db.execute("SELECT lines FROM ids WHERE id = ?", (pid,)).fetchone()[0]

    def close(self) -> None:
        self.db.close()
        self.path.unlink(missing_ok=True)

    def keep(self, out: Output) -> Output:
        kept = Output(
            rejected=out.rejected,
            problems=out.problems,
            rows_bad=out.rows_bad,
            bad=out.bad,
            rows_dup=out.rows_dup,
        )
        for line, entry in zip(out.ndjson, out.index, strict=True):
            where = self._first(entry.id, lines_text(entry.lines))
            if where is None:
                kept.ndjson.append(line)
                kept.index.append(entry)
                kept.ok += 1
                kept.rows_ok += len(entry.lines)
            elif self.reject:
                p = Problem(
                    code="DUPLICATE_PRODUCT_ID",
                    detail=f"product id already given on line {where}; a catalog lists each "
                    "product once",
                    property="id",
                    lines=entry.lines,
                    id=entry.id,
                )
                kept.problems.append(p)
                kept.reject(lines_text(entry.lines), len(entry.lines), f"{p.code}: {p.detail}")
            else:
                kept.rows_dup += len(entry.lines)
                self.skipped += len(entry.lines)
        return kept


class Writer:
    """Writes the three output files and keeps the report's counts."""

    def __init__(self, work: WorkDir, report: Report, products: ProductIds | None) -> None:
        self.report = report
        self.products = products
        self.nd = open_private(work.ndjson, "wb")
        self.ix = open_private(work.index, "w", encoding="utf-8")
        self.rj = open_private(work.rejected, "w", encoding="utf-8")

    def write(self, out: Output) -> None:
        if self.products is not None and out.ndjson:
            out = self.products.keep(out)
        r = self.report
        if out.packed is not None:
            self.nd.write(out.packed.ndjson)
            self.ix.write(out.packed.index)
        if out.ndjson:
            self.nd.write(b"\n".join(out.ndjson) + b"\n")
            self.ix.write(index_text(out.index))
        for rej in out.rejected:
            self.rj.write(f"{rej.lines}\t{rej.reason}\n")
        r.problems.extend(out.problems)
        r.rows_converted += out.rows_ok
        r.rows_rejected += out.rows_bad
        r.rows_skipped += out.rows_dup
        r.objects_valid += out.ok
        r.objects_rejected += out.bad

    def write_lines(self, nd: list[bytes], ix: list[str], rows: int) -> None:
        """Valid objects' NDJSON and index lines, already formatted."""
        if nd:
            self.nd.write(b"".join(nd))
            self.ix.write("".join(ix))
            self.report.objects_valid += len(nd)
            self.report.rows_converted += rows

    def add_built(self, built: Built | Overflow) -> None:
        out = Output()
        if isinstance(built, Overflow):
            out.add_overflow(built)
        else:
            out.add(built)
        self.write(out)

    def close(self) -> None:
        for f in (self.nd, self.ix, self.rj):
            f.close()
        if self.products is not None:
            self.products.close()


def index_text(index: list[IndexEntry]) -> str:
    """Index lines: ``id<TAB>line,line,...`` for each NDJSON line, in the same order."""
    return "".join(f"{_clean_id(i)}\t{','.join(map(str, lines))}\n" for i, lines in index)


def _clean_id(text: str) -> str:
    """An id as the index file can hold it: one line, no tab."""
    if "\t" in text or "\n" in text or "\r" in text:
        return text.replace("\t", " ").replace("\n", " ").replace("\r", " ")
    return text


class IdSet:
    """Conversion ids already closed, on disk so memory stays flat."""

    def __init__(self, path: Path) -> None:
        path.unlink(missing_ok=True)
        open_private(path).close()  # sqlite would create it with the umask's mode
        self.path = path
        self.db = sqlite3.connect(path)
        self.db.executescript(
            "PRAGMA journal_mode=OFF; PRAGMA synchronous=OFF; PRAGMA cache_size=-16000;"
            "CREATE TABLE ids(id TEXT PRIMARY KEY) WITHOUT ROWID;"
        )

    def add_new(self, ids: list[str]) -> bool:
        """Insert `ids`; False if any was there already (or repeats within `ids`)."""
        if not ids:
            return True
        before = self.db.total_changes
        self.db.executemany("INSERT OR IGNORE INTO ids VALUES (?)", ((i,) for i in ids))
        return self.db.total_changes - before == len(ids)

    def close(self) -> None:
        self.db.close()
        self.path.unlink(missing_ok=True)


@dataclass(frozen=True)
class Buckets:
    """The regroup's bucket files: runs parked by id (pass 1), built objects (pass 2)."""

    runs: list[Path]
    built: list[Path]


class LineSpan(NamedTuple):
    first: int
    last: int
    reason: str


class WorkDir:
    """The work folder of one conversion (see the module docstring for its files)."""

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.source: Path | None = None
        self.dialect: Dialect | None = None
        self.limits: ReadLimits = DEFAULT_LIMITS

    @property
    def ndjson(self) -> Path:
        return self.folder / "objects.ndjson"

    @property
    def index(self) -> Path:
        return self.folder / "objects.index"

    @property
    def rejected(self) -> Path:
        return self.folder / "rejected.tsv"

    def spool(self, stream: BinaryIO) -> Path:
        """Keep a stream's bytes: a stream can be read once, the fallbacks read again."""
        path = self.folder / "input.spool"
        with open_private(path) as f:
            shutil.copyfileobj(stream, f, 1 << 20)
        return path

    def use_source(
        self, path: Path, dialect: Dialect, limits: ReadLimits = DEFAULT_LIMITS
    ) -> None:
        """Remember what the objects are read from, and how (dialect and caps)."""
        self.source, self.dialect, self.limits = path, dialect, limits

    def open_source(self, name: str | None = None) -> CsvFile:
        """The source again, read with the dialect found when the conversion started."""
        assert self.source is not None and self.dialect is not None
        d = self.dialect
        return CsvFile(
            self.source, name=name, encoding=d.encoding, delimiter=d.delimiter, limits=self.limits
        )

    def writer(self, report: Report, products: ProductIds | None) -> Writer:
        return Writer(self, report, products)

    def id_set(self) -> IdSet:
        return IdSet(self.folder / "ids.sqlite")

    def product_ids(self, *, reject: bool) -> ProductIds:
        return ProductIds(self.folder / "products.sqlite", reject=reject)

    @contextmanager
    def buckets(self, n: int) -> Iterator[Buckets]:
        """`n` empty bucket files, removed with their folder when the block ends."""
        folder = self.folder / "buckets"
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(mode=0o700)
        try:
            yield Buckets(
                [folder / f"{k:04d}.runs" for k in range(n)],
                [folder / f"{k:04d}.built" for k in range(n)],
            )
        finally:
            shutil.rmtree(folder, ignore_errors=True)

    def lost_rows(self, name: str | None = None) -> str | None:
        """For a source that gave no rows: why that is not an empty export, or None
        when nothing but blank lines follows its header."""
        with self.open_source(name) as csvf:
            if csvf.header_lines > 1:
                return (
                    f"the header row runs over {csvf.header_lines} lines and no rows could "
                    'be read: a quote character in a column name? (double it, as "", or '
                    "remove it)"
                )
            blank = b" \t\r\n" + csvf.dialect.delimiter.encode(csvf.dialect.encoding)
            if any(data.strip(blank) for data, _ in csvf.chunks()):
                return "the file has bytes after its header but no rows could be read from them"
        return None

    def records(self) -> Iterator[Record]:
        return read_records(self.ndjson, self.index)

    def rejected_spans(self) -> list[LineSpan]:
        """The rejected lines as sorted spans, each with its reason (memory follows the
        number of rejects, and one huge conversion is one span)."""
        spans: list[LineSpan] = []
        if not self.rejected.exists():
            return spans
        with open(self.rejected, encoding="utf-8") as f:
            for entry in f:
                lines, _, reason = entry.rstrip("\n").partition("\t")
                for part in lines.split(","):
                    if part:
                        a, _, b = part.partition("-")
                        spans.append(LineSpan(int(a), int(b or a), reason))
        spans.sort()
        return spans


@dataclass
class Converted:
    """A finished conversion: its report and its work folder (objects, index, rejects)."""

    report: Report
    work: WorkDir

    @property
    def ndjson(self) -> Path:
        return self.work.ndjson

    @property
    def index(self) -> Path:
        return self.work.index

    @property
    def rejected(self) -> Path:
        return self.work.rejected


def read_records(ndjson: Path, index: Path) -> Iterator[Record]:
    """Stream back the records of a finished conversion (NDJSON + index, in lockstep)."""
    with open(ndjson, "rb") as nd, open(index, encoding="utf-8") as ix:
        for line, meta in zip(nd, ix, strict=True):
            rid, _, lines = meta.rstrip("\n").partition("\t")
            yield Record(
                rid, line.rstrip(b"\n"), tuple(int(x) for x in lines.split(",")) if lines else ()
            )


__all__ = [
    "Buckets",
    "Converted",
    "IdSet",
    "IndexEntry",
    "Output",
    "Packed",
    "ProductIds",
    "Rejected",
    "WorkDir",
    "Writer",
    "index_text",
    "read_records",
]
