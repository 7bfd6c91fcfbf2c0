"""The convert engine: one CSV export -> NDJSON of valid objects, an index, and a report.

Work is split into record-aligned chunks (`reader.CsvFile.chunks`) that worker processes
parse, fold and validate in parallel; the main process stitches the conversion that
straddles two chunks, writes the output in file order, and keeps the report.  Memory
stays flat: a few chunks are in flight at any time, whatever the file size.

Grouped files (the documented rule: rows of a conversion are consecutive) stream
straight through.  While streaming, every conversion id is checked against the ids
already closed (an on-disk SQLite set); if one comes back, the file is not grouped and
it is converted again through an on-disk bucket sort by id (`_Engine._regroup`) that
gives the same output as the grouped file would: conversions in order of their first
row, items in file order.  The output is only moved into place once the file is done,
so a fallback never leaves half an answer behind.

Files in the documented layout take the fast lane of `csvbridge.convert.lane` (rows that repeat
their conversion-level text are not split again); others, and any chunk the fast lane
hands back, are parsed by the csv module.  Both give the same bytes.
"""

from __future__ import annotations

import heapq
import logging
import os
import pickle
import shutil
import sqlite3
import sys
import tempfile
import threading
import time
import zlib
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from contextlib import contextmanager
from dataclasses import dataclass, field
from multiprocessing import get_context
from pathlib import Path
from typing import Any, BinaryIO

from csvbridge.config import ConvertSettings
from csvbridge.convert.fold import Built, Plan, Record, normalize_header
from csvbridge.convert.lane import (
    Layout,
    Line,
    Records,
    Run,
    Shared,
    cut_lane,
    cut_runs,
    record_id,
    records,
)
from csvbridge.errors import ConfigError, InputError
from csvbridge.read.csvfile import CHUNK_BYTES, CsvFile, Dialect, Row, parse_chunk
from csvbridge.read.mapping import Mapping, RowTransform, compile_mapping, load_mapping
from csvbridge.report import Problem, ProblemLog, Report
from csvbridge.schema.codecs import CodecOptions

log = logging.getLogger(__name__)
BUCKET_BYTES = 8 << 20  # source bytes per bucket of an ungrouped file: memory per worker
MAX_BUCKETS = 512
RESULT_BATCH_BYTES = 64 << 10  # per bucket, in memory during the final merge
ITEM_PRODUCT = "conversion_items.product."


# --------------------------------------------------------------------------- the spec


@dataclass(frozen=True)
class Spec:
    """Everything a worker needs to compile the same plan as the main process."""

    header: list[str]
    dialect: Dialect
    kind: str = "conversions"
    options: CodecOptions = CodecOptions()
    conflict: str = "reject"
    mapping: Mapping | None = None
    products_from_conversions: bool = False

    def compile(self) -> tuple[Plan, RowTransform | None]:
        transform = None
        if self.mapping is not None:
            transform = compile_mapping(self.mapping, self.header, self.options)
            paths, sources = list(transform.paths), transform.sources
        else:
            paths, sources = [normalize_header(h) for h in self.header], list(self.header)
        if self.products_from_conversions:
            paths = [p[len(ITEM_PRODUCT) :] if p.startswith(ITEM_PRODUCT) else "" for p in paths]
        plan = Plan(paths, sources, kind=self.kind, options=self.options, conflict=self.conflict)
        return plan, transform


# --------------------------------------------------------------------------- chunk work


@dataclass(slots=True)
class Output:
    """What a batch of built objects contributes to the files and the report."""

    ndjson: list[bytes] = field(default_factory=list)
    index: list[tuple[str, tuple[int, ...]]] = field(default_factory=list)
    rejected: list[tuple[tuple[int, ...], str]] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)
    rows_ok: int = 0
    rows_bad: int = 0
    rows_dup: int = 0
    ok: int = 0
    bad: int = 0
    packed: tuple[bytes, str] | None = None  # (ndjson, index) text, joined by the worker

    def pack(self) -> Output:
        """Join the lines in the worker, so the main process only writes two blobs."""
        if self.ndjson:
            self.packed = (b"\n".join(self.ndjson) + b"\n", _index_text(self.index))
            self.ndjson, self.index = [], []
        return self

    def add(self, built: Built, seen_products: set[str] | None = None) -> None:
        if built.problems:
            self.problems.extend(built.problems)
        rec = built.record
        if rec is None:
            self.bad += 1
            self.rows_bad += built.rows
            reason = next((p for p in built.problems if not p.warning), None)
            self.rejected.append(
                (built.lines, f"{reason.code}: {reason.detail}" if reason else "rejected")
            )
            return
        if seen_products is not None:
            if rec.id in seen_products:
                self.rows_dup += built.rows
                return
            seen_products.add(rec.id)
        self.ok += 1
        self.rows_ok += built.rows
        self.ndjson.append(rec.json)
        self.index.append((rec.id, rec.lines))


@dataclass(slots=True)
class ChunkResult:
    out: Output
    rows: int
    blank: int
    head: Run | None  # first run, not built (it may continue the previous chunk)
    tail: Run | None  # last run, not built (it may continue in the next chunk)
    run_ids: list[str]  # ids of this chunk's runs, in order
    dup_inside: bool  # an id came back within this chunk
    boundary_ok: bool
    buckets: dict[int, bytes] | None = None  # split mode: pickled runs per bucket


_WORKER: tuple[Plan, RowTransform | None, Spec, Layout | None] | None = None
FAST_LANE = True  # tests turn it off to check both lanes give the same bytes


def _init_worker(spec: Spec) -> None:
    global _WORKER
    plan, transform = spec.compile()
    layout = None
    if (
        FAST_LANE
        and transform is None
        and plan.kind == "conversions"
        and not spec.products_from_conversions
    ):
        layout = Layout.of(plan.paths, plan.id_col, spec.dialect.delimiter, spec.dialect.quotechar)
    _WORKER = (plan, transform, spec, layout)


def _runs(rows: list[Row], plan: Plan, transform: RowTransform | None, ncols: int) -> list[Run]:
    return cut_runs(rows, plan.id_col, transform, ncols, plan.kind == "products")


def _build_run(run: Run, plan: Plan) -> Built:
    if run.id is None:
        line = run.rows[0].line
        problems = run.pre + [
            Problem(
                "MISSING_REQUIRED_PROPERTY",
                "should have required property 'id'",
                "id",
                (line,),
                None,
                plan.sources[plan.id_col],
            )
        ]
        return Built(None, problems, len(run.rows), tuple(r.line for r in run.rows))
    built = plan.build(run.rows)
    if run.pre:
        # a value the mapping refused leaves its field empty: it is not also "missing"
        refused = {(p.property, p.lines) for p in run.pre if not p.warning}
        built.problems[:] = run.pre + [
            p
            for p in built.problems
            if p.code != "MISSING_REQUIRED_PROPERTY" or (p.property, p.lines) not in refused
        ]
        if built.record is not None and refused:
            built.record = None
    return built


@dataclass(frozen=True, slots=True)
class Span:
    """A chunk by its place in a plain file: a worker reads it there (one copy) rather
    than receive its bytes through a pipe (four)."""

    path: str
    offset: int
    size: int

    def read(self) -> bytes:
        fd = _FILES.get(self.path)
        if fd is None:
            fd = _FILES[self.path] = os.open(self.path, os.O_RDONLY)
        data = os.pread(fd, self.size, self.offset)
        if len(data) != self.size:
            raise InputError("the file changed while it was being converted", file=self.path)
        return data


_FILES: dict[str, int] = {}  # per worker process: files it reads chunks from


def _records(data: bytes, first_line: int, layout: Layout) -> Records | None:
    """The fast lane's records of a chunk, or None when the csv module must read it."""
    try:
        text = data.decode(_WORKER[2].dialect.encoding)  # type: ignore[index]
    except UnicodeDecodeError:
        return None  # the ordinary path reports the lines with bad bytes
    return records(text, first_line, layout)


def _parse(data: bytes, first_line: int) -> tuple[list[Run], int, int, bool]:
    """Runs of a chunk parsed by the csv module: (runs, rows, blank, boundary_ok)."""
    assert _WORKER is not None
    plan, transform, spec, _ = _WORKER
    parsed = parse_chunk(data, first_line, spec.dialect)
    runs = _runs(parsed.rows, plan, transform, len(spec.header))
    if parsed.bad_encoding:
        bad = set(parsed.bad_encoding)
        for run in runs:
            for r in run.rows:
                if r.line in bad:
                    run.pre.append(
                        Problem(
                            "ENCODING_ERROR",
                            f"bytes that are not valid {spec.dialect.encoding}; "
                            "re-export the file as UTF-8",
                            None,
                            (r.line,),
                            run.id,
                        )
                    )
    return runs, len(parsed.rows), parsed.blank, parsed.boundary_ok


def _chunk_task(data: bytes | Span, first_line: int, buckets: int = 0) -> ChunkResult:
    """Build a chunk's inner conversions; with ``buckets``, only split its runs into
    that many buckets by id, for `_Engine._regroup`."""
    assert _WORKER is not None
    if isinstance(data, Span):
        data = data.read()
    plan, _, spec, layout = _WORKER
    d = spec.dialect.delimiter
    recs = _records(data, first_line, layout) if layout is not None else None
    if recs is not None:
        if buckets:
            return ChunkResult(
                Output(),
                recs.rows,
                recs.blank,
                None,
                None,
                [],
                False,
                True,
                _split(recs.items, buckets, plan.kind, layout),
            )
        runs = cut_lane(recs.items, layout)  # type: ignore[arg-type]
        nrows, blank, boundary_ok = recs.rows, recs.blank, True
    else:
        parsed, nrows, blank, boundary_ok = _parse(data, first_line)
        runs = list(parsed)
    out = Output()
    seen: set[str] = set()
    dup = False
    run_ids = []
    for run in runs:
        if run.id is not None:
            if run.id in seen and plan.kind != "products":
                dup = True
            seen.add(run.id)
            run_ids.append(run.id)
    if buckets:
        parts = _split(runs, buckets, plan.kind, layout)
        return ChunkResult(out, nrows, blank, None, None, [], dup, boundary_ok, parts)
    head = tail = None
    inner = runs
    if plan.kind != "products" and runs:
        first, inner = runs[0], runs[1:]
        head = first.as_run(d) if isinstance(first, Shared) else first
        if inner:
            last, inner = inner[-1], inner[:-1]
            tail = last.as_run(d) if isinstance(last, Shared) else last
    for run in inner:
        if isinstance(run, Shared):
            out.add(plan.build_shared(run.head, run.id, run.items, d))
        else:
            out.add(_build_run(run, plan))
    if not spec.products_from_conversions:
        out.pack()
    return ChunkResult(out, nrows, blank, head, tail, run_ids, dup, boundary_ok)


Parked = Run | Shared | Line | Row  # what pass 1 of a regroup parks in a bucket


def _key(item: Parked, layout: Layout | None, kind: str) -> Any:
    """The id a parked item groups on; a tuple (its line) when it stands alone."""
    is_run = isinstance(item, (Run, Shared))
    cid = item.id if is_run else record_id(item, layout) or None  # type: ignore[union-attr,arg-type]
    if cid is None or kind == "products":
        return (_first_line(item),)
    return cid


def _split(items: list[Any], buckets: int, kind: str, layout: Layout | None) -> dict[int, bytes]:
    """Pickled items per bucket; all items of one id land in one bucket, in every
    process (a CRC, not hash())."""
    parts: dict[int, list[Parked]] = {}
    for item in items:
        key = _key(item, layout, kind)
        if key.__class__ is tuple:
            k = key[0] % buckets
        else:
            k = zlib.crc32(key.encode("utf-8", "surrogatepass")) % buckets
        part = parts.get(k)
        if part is None:
            parts[k] = [item]
        else:
            part.append(item)
    return {k: pickle.dumps(v, 5) for k, v in parts.items()}


def _first_line(item: Parked) -> int:
    if isinstance(item, Shared):
        return item.items[0][0]
    if isinstance(item, Run):
        return item.rows[0].line
    return item[0] if item.__class__ is tuple else item.line  # type: ignore[index,union-attr]


def _runs_of(group: list[Parked], layout: Layout | None) -> list[Run | Shared]:
    """A group's runs in file order: parked records are cut by the fast lane."""
    if layout is None:
        return group  # type: ignore[return-value]
    runs: list[Run | Shared] = []
    pending: list[Line | Row] = []
    for item in group:
        if isinstance(item, (Run, Shared)):
            if pending:
                runs.extend(cut_lane(pending, layout))
                pending = []
            runs.append(item)
        else:
            pending.append(item)
    if pending:
        runs.extend(cut_lane(pending, layout))
    return runs


def _build_group(group: list[Run | Shared], plan: Plan, delimiter: str) -> Built:
    """Build one conversion from its runs, gathered from all over the file."""
    first = group[0]
    if len(group) > 1:
        heads = [r.head if isinstance(r, Shared) else None for r in group]
        if heads[0] is not None and all(h == heads[0] for h in heads):
            items = [it for r in group for it in r.items]  # type: ignore[union-attr]
            first = Shared(first.id, heads[0], items)  # type: ignore[arg-type]
        else:
            plain = [r.as_run(delimiter) if isinstance(r, Shared) else r for r in group]
            first = Run(first.id, [row for r in plain for row in r.rows])
            first.pre = [p for r in plain for p in r.pre]
    if isinstance(first, Shared):
        return plan.build_shared(first.head, first.id, first.items, delimiter)
    return _build_run(first, plan)


def _bucket_task(source: str, dest: str) -> None:
    """Build every conversion of one bucket; write them in order of their first line.

    A bucket holds whole conversions (all runs of an id share a bucket) in file order,
    so gathering them in a dict keeps first appearances in order.
    """
    assert _WORKER is not None
    plan, _, spec, layout = _WORKER
    groups: dict[Any, list[Parked]] = {}
    with open(source, "rb") as f:
        while True:
            try:
                batch: list[Parked] = pickle.load(f)
            except EOFError:
                break
            for item in batch:
                key = _key(item, layout, plan.kind)
                group = groups.get(key)
                if group is None:
                    groups[key] = [item]
                else:
                    group.append(item)
    os.unlink(source)
    d = spec.dialect.delimiter
    with open(dest, "wb") as out:
        entries: list[tuple[Any, ...]] = []
        size = 0
        plain = not spec.products_from_conversions  # products are deduplicated in order
        for group in groups.values():
            b = _build_group(_runs_of(group, layout), plan, d)
            rec = b.record
            if rec is not None and plain and not b.problems:
                # the usual case, ready to write: (first line, NDJSON line, index line)
                line = rec.json + b"\n"
                entries.append((rec.lines[0], line, _index_text([(rec.id, rec.lines)]), b.rows))
                size += len(line)
            else:
                entries.append((_first_line(group[0]), None, None, 0, b))
                size += 256 + (len(rec.json) if rec is not None else 0)
            if size >= RESULT_BATCH_BYTES:
                # small batches: the merge holds one batch of every bucket at a time
                pickle.dump(entries, out, 5)
                entries, size = [], 0
        if entries:
            pickle.dump(entries, out, 5)


def _first_of(entry: tuple[Any, ...]) -> int:
    return entry[0]


def _built_entries(path: Path) -> Iterator[tuple[Any, ...]]:
    """Read back what `_bucket_task` wrote, in order: (first line, NDJSON line, index
    line, rows) for a clean record, (first line, None, None, 0, Built) for the others."""
    with open(path, "rb") as f:
        while True:
            try:
                yield from pickle.load(f)
            except EOFError:
                return


class _Boundary(Exception):
    """A chunk did not end on a record boundary (stray quote): read in one piece."""


class _Ungrouped(Exception):
    """A conversion id came back after its rows ended: the file is not grouped."""


# --------------------------------------------------------------------------- engine


@dataclass
class Converted:
    """Paths of a finished conversion's files, and its report."""

    report: Report
    ndjson: Path
    index: Path
    rejected: Path


class _Writer:
    """Writes the three output files in the work folder and keeps the report's counts."""

    def __init__(self, folder: Path, report: Report, dedupe: bool) -> None:
        self.folder = folder
        self.report = report
        self.nd = open(folder / "objects.ndjson", "wb")  # noqa: SIM115
        self.ix = open(folder / "objects.index", "w", encoding="utf-8")  # noqa: SIM115
        self.rj = open(folder / "rejected.tsv", "w", encoding="utf-8")  # noqa: SIM115
        self.seen_products: set[str] | None = set() if dedupe else None

    def write(self, out: Output) -> None:
        r = self.report
        if out.packed is not None:
            self.nd.write(out.packed[0])
            self.ix.write(out.packed[1])
        if out.ndjson:
            self.nd.write(b"\n".join(out.ndjson) + b"\n")
            self.ix.write(_index_text(out.index))
        for lines, reason in out.rejected:
            self.rj.write(f"{','.join(map(str, lines))}\t{reason}\n")
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

    def add_built(self, built: Built) -> None:
        out = Output()
        out.add(built, self.seen_products)
        self.write(out)

    def close(self) -> None:
        for f in (self.nd, self.ix, self.rj):
            f.close()


def _index_text(index: list[tuple[str, tuple[int, ...]]]) -> str:
    """Index lines: ``id<TAB>line,line,...`` for each NDJSON line, in the same order."""
    return "".join(f"{_clean_id(i)}\t{','.join(map(str, lines))}\n" for i, lines in index)


def _clean_id(text: str) -> str:
    """An id as the index file can hold it: one line, no tab."""
    if "\t" in text or "\n" in text or "\r" in text:
        return text.replace("\t", " ").replace("\n", " ").replace("\r", " ")
    return text


def convert(
    source: str | Path | BinaryIO,
    work_dir: str | Path,
    *,
    kind: str = "conversions",
    settings: ConvertSettings | None = None,
    mapping: Mapping | str | Path | None = None,
    name: str | None = None,
    products_from_conversions: bool = False,
    chunk_bytes: int = CHUNK_BYTES,
) -> Converted:
    """Convert one CSV export into ``work_dir``/objects.ndjson (+ .index, rejected.tsv).

    Raises `InputError` for a file that cannot be used at all; every other problem is a
    rejected object or a warning in the returned report.
    """
    settings = settings or ConvertSettings()
    started = time.monotonic()
    work = Path(work_dir)
    work.mkdir(parents=True, exist_ok=True)
    if mapping is None and settings.mapping is not None:
        mapping = settings.mapping
    if isinstance(mapping, (str, Path)):
        mapping = load_mapping(mapping)
    if products_from_conversions:
        kind = "products"
    label = name or (str(source) if isinstance(source, (str, Path)) else "<stream>")
    if isinstance(source, (str, Path)) and str(source) == "-":
        source = sys.stdin.buffer
    if not isinstance(source, (str, Path)):
        # a stream can be read once; the fallbacks need to read again
        spooled = work / "input.spool"
        with open(spooled, "wb") as f:
            shutil.copyfileobj(source, f, 1 << 20)
        source = spooled
    opts = mapping.options if mapping is not None else None
    encoding = settings.encoding or (opts.encoding if opts else None)
    delimiter = settings.delimiter or (opts.delimiter if opts else None)
    with CsvFile(source, name=label, encoding=encoding, delimiter=delimiter) as csvf:
        dialect, header = csvf.dialect, csvf.header
    decimal_comma = settings.decimal_comma
    if decimal_comma is None and opts is not None:
        decimal_comma = opts.decimal_comma
    if decimal_comma is None:
        decimal_comma = dialect.delimiter == ";"
    options = CodecOptions(
        decimal_comma=decimal_comma,
        timezone=opts.timezone if opts else None,
        date_formats=tuple(opts.date_formats) if opts else (),
        strict=settings.strict,
    )
    spec = Spec(
        header, dialect, kind, options, settings.conflict, mapping, products_from_conversions
    )
    plan, _ = spec.compile()  # fails early (missing columns) before any worker starts
    report = Report(file=label, kind=kind)
    report.dialect = {**dialect.as_dict(), "decimal_comma": decimal_comma, "columns": len(header)}
    if not products_from_conversions:
        for col, reason in plan.ignored:
            report.problems.add(
                Problem(
                    "IGNORED_COLUMN",
                    f"column ignored: {reason}",
                    plan.paths[col] or None,
                    (1,),
                    None,
                    plan.sources[col],
                    warning=True,
                )
            )
    workers = settings.workers or os.cpu_count() or 1
    engine = _Engine(
        spec, plan, Path(source), work, report, workers, chunk_bytes, products_from_conversions
    )
    engine.run()
    report.duration_seconds = time.monotonic() - started
    report.outputs = {"ndjson": str(work / "objects.ndjson")}
    return Converted(report, work / "objects.ndjson", work / "objects.index", work / "rejected.tsv")


def _note(code: str, detail: str) -> Problem:
    return Problem(code, detail, None, (), None, warning=True)


def _context() -> Any:
    """fork when this process is single-threaded (cheapest); otherwise forkserver.

    Forking a process whose other threads (the daemon's watchdog, metrics server,
    shipping pool) may hold a lock at that instant can deadlock the child; forkserver
    forks workers from a clean single-threaded server instead.
    """
    if threading.active_count() == 1:
        return get_context("fork")
    ctx = get_context("forkserver")
    ctx.set_forkserver_preload(["csvbridge.convert.engine"])
    return ctx


class _Engine:
    def __init__(
        self,
        spec: Spec,
        plan: Plan,
        path: Path,
        work: Path,
        report: Report,
        workers: int,
        chunk_bytes: int,
        dedupe: bool,
    ) -> None:
        self.spec, self.plan, self.path, self.work = spec, plan, path, work
        self.report, self.workers, self.chunk_bytes, self.dedupe = (
            report,
            workers,
            chunk_bytes,
            dedupe,
        )
        self.pool: ProcessPoolExecutor | None = None

    def run(self) -> None:
        _init_worker(self.spec)  # the main process builds straddling conversions itself
        size = self.path.stat().st_size
        if self.workers > 1 and size > 2 * self.chunk_bytes:
            self.pool = ProcessPoolExecutor(
                self.workers,
                mp_context=_context(),
                initializer=_init_worker,
                initargs=(self.spec,),
            )
        notes: list[Problem] = []
        try:
            self._attempts(notes)
        except BrokenProcessPool:
            # a worker died (killed, or a main module that cannot be re-imported):
            # do the whole file again in this process rather than fail it
            log.warning("convert workers failed; converting %s in one process", self.path)
            self.pool.shutdown(cancel_futures=True)  # type: ignore[union-attr]
            self.pool = None
            self._attempts(notes)
        finally:
            if self.pool is not None:
                self.pool.shutdown(cancel_futures=True)

    def _attempts(self, notes: list[Problem]) -> None:
        """Grouped streaming first; regroup on disk if an id comes back; read the file as
        one sequential stream if a stray quote defeats chunking."""
        mode = "grouped"
        while True:
            writer = _Writer(self.work, self._reset(notes), self.dedupe)
            try:
                if mode == "grouped":
                    self._grouped(writer)
                else:
                    self._regroup(writer, self.chunk_bytes if mode == "regroup" else 0)
                return
            except _Ungrouped:
                notes.append(
                    _note(
                        "UNGROUPED_FILE",
                        "rows of some conversions are not "
                        "consecutive; the file was regrouped by conversion id "
                        "(on disk, bounded memory)",
                    )
                )
                mode = "regroup"
            except _Boundary:
                notes.append(
                    _note(
                        "UNBALANCED_QUOTES",
                        "a quote character inside an "
                        "unquoted field; the file was read as one stream",
                    )
                )
                mode = "single"
            finally:
                writer.close()

    def _reset(self, notes: list[Problem]) -> Report:
        """The report, emptied of a previous attempt's counts (file-level notes kept)."""
        rep = self.report
        if not hasattr(self, "_base"):
            self._base = _snapshot(rep)
        rep.rows_read = rep.rows_skipped = rep.rows_converted = rep.rows_rejected = 0
        rep.objects_valid = rep.objects_rejected = 0
        rep.problems = ProblemLog()
        for p in self._base + notes:
            rep.problems.add(p)
        return rep

    # -------------------------------------------------------------- chunk streams

    def _open(self) -> CsvFile:
        """The source again, read with the dialect found when the conversion started."""
        d = self.spec.dialect
        return CsvFile(self.path, name=self.report.file, encoding=d.encoding, delimiter=d.delimiter)

    def _chunks(self, chunk_bytes: int) -> Iterator[tuple[bytes | Span, int]]:
        with self._open() as csvf:
            by_place = self.pool is not None and csvf.path is not None
            for data, line in csvf.chunks(chunk_bytes):
                if by_place:
                    yield Span(csvf.path, csvf.chunk_offset, len(data)), line  # type: ignore[arg-type]
                else:
                    yield data, line

    def _map(self, fn: Any, items: Iterable[tuple[Any, ...]]) -> Iterator[Any]:
        """Ordered results of fn(*item), a bounded number in flight."""
        if self.pool is None:
            for item in items:
                yield fn(*item)
            return
        window: list[Future[Any]] = []
        limit = self.workers * 2 + 1
        for item in items:
            window.append(self.pool.submit(fn, *item))
            if len(window) >= limit:
                yield window.pop(0).result()
        for fut in window:
            yield fut.result()

    # -------------------------------------------------------------- grouped path

    def _grouped(self, writer: _Writer) -> None:
        plan = self.plan
        rep = writer.report
        ids = _IdSet(self.work / "ids.sqlite")
        carry: Run | None = None
        try:
            for res in self._map(
                _chunk_task, ((d, line) for d, line in self._chunks(self.chunk_bytes))
            ):
                if not res.boundary_ok:
                    raise _Boundary
                rep.rows_read += res.rows + res.blank
                rep.rows_skipped += res.blank
                if plan.kind == "products":
                    writer.write(res.out) if not self.dedupe else self._dedupe_write(
                        writer, res.out
                    )
                    continue
                fresh = res.run_ids
                if (
                    carry is not None
                    and carry.id is not None
                    and res.head is not None
                    and res.head.id == carry.id
                ):
                    fresh = fresh[1:]  # the carried conversion goes on: not a new id
                if res.dup_inside or not ids.add_new(fresh):
                    raise _Ungrouped
                if res.head is None:
                    continue
                runs = [res.head] + ([res.tail] if res.tail is not None else [])
                # stitch the run that straddles the previous boundary
                head = res.head
                if carry is not None and head.id is not None and head.id == carry.id:
                    carry.rows.extend(head.rows)
                    carry.pre.extend(head.pre)
                    head = carry
                    carry = None
                if carry is not None:
                    writer.add_built(_build_run(carry, plan))
                    carry = None
                if res.tail is None:
                    carry = head
                    writer.write(res.out)
                else:
                    writer.add_built(_build_run(head, plan))
                    writer.write(res.out)
                    carry = res.tail
                del runs
            if carry is not None:
                writer.add_built(_build_run(carry, plan))
        finally:
            ids.close()

    def _sequential_runs(self, buckets: int, rows_per_batch: int = 5000) -> Iterator[ChunkResult]:
        """Rows read by one csv reader over the whole stream, cut into runs here."""
        assert _WORKER is not None
        plan, transform, spec, _ = _WORKER
        with self._open() as csvf:
            rows: list[Row] = []
            blank = 0
            for row in csvf.rows():
                if row is None:
                    blank += 1
                    continue
                rows.append(row)
                if len(rows) >= rows_per_batch:
                    yield self._as_result(rows, blank, plan, transform, spec, buckets)
                    rows, blank = [], 0
            yield self._as_result(rows, blank, plan, transform, spec, buckets)

    @staticmethod
    def _as_result(
        rows: list[Row],
        blank: int,
        plan: Plan,
        transform: RowTransform | None,
        spec: Spec,
        buckets: int,
    ) -> ChunkResult:
        runs = _runs(rows, plan, transform, len(spec.header))
        parts = _split(runs, buckets, plan.kind, None)
        return ChunkResult(Output(), len(rows), blank, None, None, [], False, True, parts)

    def _dedupe_write(self, writer: _Writer, out: Output) -> None:
        """Products from conversions: keep the first occurrence of each product id."""
        seen = writer.seen_products
        assert seen is not None
        keep = Output(
            rejected=out.rejected, problems=out.problems, rows_bad=out.rows_bad, bad=out.bad
        )
        for line, (pid, lines) in zip(out.ndjson, out.index, strict=True):
            if pid in seen:
                keep.rows_dup += len(lines)
                continue
            seen.add(pid)
            keep.ndjson.append(line)
            keep.index.append((pid, lines))
            keep.ok += 1
            keep.rows_ok += len(lines)
        writer.write(keep)

    # -------------------------------------------------------------- regroup path

    def _regroup(self, writer: _Writer, chunk_bytes: int) -> None:
        """Ungrouped files: an on-disk bucket sort by conversion id, in two passes.

        Pass 1 cuts the file into runs and appends each to one of N bucket files by a
        hash of its id, so every conversion lies whole in one bucket, in file order.
        Pass 2 builds the buckets in parallel (N grows with the file, so one bucket
        fits in memory) and writes each one's conversions in order of their first
        line; merging the buckets on that line gives the grouped file's output, byte
        for byte, with problems and rejects in the same order.

        ``chunk_bytes`` of 0 reads the file as one sequential stream of rows in this
        process (for files whose stray quotes defeat chunking); memory stays bounded.
        """
        rep = writer.report
        folder = self.work / "buckets"
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir()
        n = max(8, min(MAX_BUCKETS, self.path.stat().st_size // BUCKET_BYTES + 1))
        sources = [folder / f"{k:04d}.runs" for k in range(n)]
        results = [folder / f"{k:04d}.built" for k in range(n)]
        try:
            files = [open(p, "wb") for p in sources]  # noqa: SIM115
            try:
                if chunk_bytes:
                    parts = self._map(
                        _chunk_task, ((d, line, n) for d, line in self._chunks(chunk_bytes))
                    )
                else:
                    parts = self._sequential_runs(n)
                for res in parts:
                    if not res.boundary_ok:
                        raise _Boundary
                    rep.rows_read += res.rows + res.blank
                    rep.rows_skipped += res.blank
                    for k, blob in (res.buckets or {}).items():
                        files[k].write(blob)
            finally:
                for f in files:
                    f.close()
            for _ in self._map(
                _bucket_task, zip(map(str, sources), map(str, results), strict=True)
            ):
                pass
            nd: list[bytes] = []
            ix: list[str] = []
            rows = 0
            # merged on the first line alone: records split by a bare CR share an LF line
            # number, and their tuples must never be compared past it (ties keep bucket
            # order, the same in every lane and chunk size)
            for entry in heapq.merge(*map(_built_entries, results), key=_first_of):
                if entry[1] is not None:
                    nd.append(entry[1])
                    ix.append(entry[2])
                    rows += entry[3]
                    if len(nd) >= 1000:
                        writer.write_lines(nd, ix, rows)
                        nd, ix, rows = [], [], 0
                    continue
                writer.write_lines(nd, ix, rows)  # keep the order of the files
                nd, ix, rows = [], [], 0
                out = Output()
                out.add(entry[4], writer.seen_products)
                writer.write(out)
            writer.write_lines(nd, ix, rows)
        finally:
            shutil.rmtree(folder, ignore_errors=True)


class _IdSet:
    """Conversion ids already closed, on disk so memory stays flat."""

    def __init__(self, path: Path) -> None:
        path.unlink(missing_ok=True)
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


def _snapshot(report: Report) -> list[Problem]:
    """The file-level warnings recorded before conversion started (ignored columns)."""
    return list(report.problems.raw)


def read_records(ndjson: Path, index: Path) -> Iterator[Record]:
    """Stream back the records of a finished conversion (NDJSON + index, in lockstep)."""
    with open(ndjson, "rb") as nd, open(index, encoding="utf-8") as ix:
        for line, meta in zip(nd, ix, strict=True):
            rid, _, lines = meta.rstrip("\n").partition("\t")
            yield Record(
                rid, line.rstrip(b"\n"), tuple(int(x) for x in lines.split(",")) if lines else ()
            )


__all__ = ["Converted", "Spec", "convert", "read_records"]


# --------------------------------------------------------------------------- one-shot API


def write_rejects(converted: Converted, source: Path, dest: Path) -> int:
    """Write the rejected rows, in the source's own dialect and header, plus an error column.

    The file is ready to be fixed and dropped again.  Returns the number of rows written.
    """
    import csv

    reasons: dict[int, str] = {}
    with open(converted.rejected, encoding="utf-8") as f:
        for entry in f:
            lines, _, reason = entry.rstrip("\n").partition("\t")
            for n in lines.split(","):
                reasons[int(n)] = reason
    if not reasons:
        return 0
    written = 0
    used = converted.report.dialect  # read it the way it was converted (forced options)
    with CsvFile(source, encoding=used.get("encoding"), delimiter=used.get("delimiter")) as csvf:
        d = csvf.dialect
        tmp = dest.with_name(dest.name + ".part")
        with open(tmp, "w", encoding=d.encoding, errors="replace", newline="") as out:
            w = csv.writer(out, delimiter=d.delimiter, lineterminator="\r\n")
            w.writerow([*csvf.header, "csvbridge_error"])
            for data, first in csvf.chunks():
                for row in parse_chunk(data, first, d).rows:
                    reason = reasons.get(row.line)
                    if reason is not None:
                        w.writerow([*row.cells, f"line {row.line}: {reason}"])
                        written += 1
        tmp.replace(dest)
    return written


def convert_file(
    source: str | Path,
    output: str | Path | None = None,
    *,
    to: str = "ndjson",
    kind: str = "conversions",
    settings: ConvertSettings | None = None,
    mapping: str | Path | None = None,
    report_path: str | Path | None = None,
    rejects_path: str | Path | None = None,
    products_from_conversions: bool = False,
) -> Report:
    """`csvbridge convert`: a CSV export -> NDJSON (or a CSV feed) + report + rejects.

    The output is written under a temporary name and renamed into place, so a reader
    never sees half of it; ``output=None`` writes to stdout.
    """
    # work beside the output when there is one: the result is then moved, not copied
    near = None
    if output is not None and str(output) != "-":
        parent = Path(output).parent
        if parent.is_dir() and os.access(parent, os.W_OK):
            near = parent
    with tempfile.TemporaryDirectory(prefix=".csvbridge-", dir=near) as tmp:
        work = Path(tmp)
        done = convert(
            source,
            work,
            kind=kind,
            settings=settings,
            mapping=mapping,
            products_from_conversions=products_from_conversions,
        )
        report = done.report
        if to == "feed":
            from csvbridge.sinks.feed import write_feed

            feed = work / ("feed.csv")
            import orjson

            with open(done.ndjson, "rb") as nd:
                write_feed((orjson.loads(line) for line in nd), feed, report.kind)
            produced = feed
        else:
            produced = done.ndjson
        if output is None or str(output) == "-":
            with open(produced, "rb") as f:
                shutil.copyfileobj(f, sys.stdout.buffer, 1 << 20)
            sys.stdout.buffer.flush()
            report.outputs = {to: "-"}  # not the temporary file, gone on return
        else:
            dest = Path(output)
            part = dest.with_name(dest.name + ".part")
            with _writing("output", dest):
                if near is not None:
                    produced.replace(dest)  # same file system: an atomic rename
                else:
                    shutil.copyfile(produced, part)
                    part.replace(dest)
            report.outputs = {to: str(dest)}
        if rejects_path is not None and report.objects_rejected:
            src = done.ndjson.parent / "input.spool"
            with _writing("rejects", rejects_path):
                n = write_rejects(done, src if src.exists() else Path(source), Path(rejects_path))
            report.outputs["rejects"] = str(rejects_path)
            report.outputs["rejected_rows"] = str(n)
    if report_path is not None:
        with _writing("report", report_path):
            Path(report_path).write_bytes(report.to_json())
    return report


@contextmanager
def _writing(what: str, path: str | Path) -> Iterator[None]:
    """An output that cannot be written is a usage error (exit 2), not a traceback."""
    try:
        yield
    except OSError as exc:
        raise ConfigError(f"cannot write the {what}: {exc.strerror}", file=str(path)) from None
