"""The convert engine: one CSV export -> NDJSON of valid objects, an index, and a report.

Work is split into record-aligned chunks (`reader.CsvFile.chunks`) that worker processes
(`worker`) parse, fold and validate in parallel; the main process stitches the
conversion that straddles two chunks, writes the output in file order (through
`workdir.Writer`), and keeps the report.  Memory stays flat: a few chunks are in flight
at any time, whatever the file size, and a conversion with more rows than a conversion
may have items is counted rather than kept (`build.Overflow`).

Grouped files (the documented rule: rows of a conversion are consecutive) stream
straight through.  While streaming, every conversion id is checked against the ids
already closed (an on-disk SQLite set); if one comes back, the file is not grouped and
it is converted again through an on-disk bucket sort by id (`regroup`) that gives the
same output as the grouped file would: conversions in order of their first row, items
in file order.  The output is only moved into place once the file is done, so a
fallback never leaves half an answer behind.

Files in the documented layout take the fast lane of `csvbridge.fold.lane` (rows that
repeat their conversion-level text are not split again); others, and any chunk the fast
lane hands back, are parsed by the csv module.  Both give the same bytes.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from multiprocessing import get_context
from pathlib import Path
from typing import Any, BinaryIO, TypeVar

from csvbridge import progress
from csvbridge.config import ConvertSettings
from csvbridge.errors import CsvBridgeError, InputError
from csvbridge.fold import regroup
from csvbridge.fold.assemble import Built, Plan
from csvbridge.fold.build import Overflow, build_run
from csvbridge.fold.regroup import Boundary
from csvbridge.fold.rejects import ERROR_COLUMN, restore, write_rejects
from csvbridge.fold.workdir import Converted, ProductIds, WorkDir, Writer, read_records
from csvbridge.fold.worker import (
    BucketTask,
    ChunkResult,
    ChunkTask,
    Edge,
    Span,
    Spec,
    bucket_task,
    chunk_task,
    init_worker,
    park_stream,
)
from csvbridge.read.csvfile import CHUNK_BYTES, CsvFile
from csvbridge.read.limits import ReadLimits
from csvbridge.read.mapping import Mapping, load_mapping, load_preset
from csvbridge.report import Problem, ProblemLog, Report
from csvbridge.schema.codecs import CodecOptions
from csvbridge.schema.models import MAX_ITEMS

log = logging.getLogger(__name__)
T = TypeVar("T")
R = TypeVar("R")


class Ungrouped(Exception):
    """A conversion id came back after its rows ended: the file is not grouped."""


def _note(code: str, detail: str) -> Problem:
    return Problem(code=code, detail=detail, warning=True)


def _context() -> Any:
    """fork when this process is single-threaded (cheapest); otherwise forkserver.

    Forking a process whose other threads (the daemon's watchdog, metrics server,
    shipping pool) may hold a lock at that instant can deadlock the child; forkserver
    forks workers from a clean single-threaded server instead.
    """
    if threading.active_count() == 1:
        return get_context("fork")
    ctx = get_context("forkserver")
    ctx.set_forkserver_preload(["csvbridge.fold.worker"])
    return ctx


def _stitch(carry: Edge, head: Edge) -> Edge:
    """The conversion that straddles a chunk boundary, its two halves joined (only
    counted once it is longer than a conversion may be)."""
    if isinstance(carry, Overflow) or isinstance(head, Overflow):
        over = carry if isinstance(carry, Overflow) else Overflow.of(carry)
        over.absorb(head)
        return over
    carry.rows.extend(head.rows)
    carry.pre.extend(head.pre)
    return Overflow.of(carry) if len(carry.rows) > MAX_ITEMS else carry


class Engine:
    """Runs one conversion: the attempts (grouped, regrouped, one stream) and the pool."""

    def __init__(
        self,
        *,
        spec: Spec,
        plan: Plan,
        work: WorkDir,
        report: Report,
        workers: int,
        chunk_bytes: int,
    ) -> None:
        self.spec, self.plan, self.work, self.report = spec, plan, work, report
        self.workers, self.chunk_bytes = workers, chunk_bytes
        self.pool: ProcessPoolExecutor | None = None
        self.products: ProductIds | None = None
        self._base = list(report.problems.raw)  # file-level notes (ignored columns)

    @property
    def path(self) -> Path:
        assert self.work.source is not None
        return self.work.source

    def run(self) -> None:
        init_worker(self.spec)  # the main process builds straddling conversions itself
        size = self.path.stat().st_size
        if self.workers > 1 and size > 2 * self.chunk_bytes:
            self.pool = ProcessPoolExecutor(
                self.workers,
                mp_context=_context(),
                initializer=init_worker,
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
            if self.plan.kind == "products":
                pfc = self.spec.products_from_conversions
                self.products = self.work.product_ids(reject=not pfc)
            writer = self.work.writer(self._reset(notes), self.products)
            try:
                if mode == "grouped":
                    self._grouped(writer)
                else:
                    self._regroup(writer, self.chunk_bytes if mode == "regroup" else 0)
                return
            except Ungrouped:
                notes.append(
                    _note(
                        "UNGROUPED_FILE",
                        "rows of some conversions are not "
                        "consecutive; the file was regrouped by conversion id "
                        "(on disk, bounded memory)",
                    )
                )
                mode = "regroup"
            except Boundary:
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
        rep.rows_read = rep.rows_skipped = rep.rows_converted = rep.rows_rejected = 0
        rep.objects_valid = rep.objects_rejected = 0
        rep.problems = ProblemLog()
        for p in self._base + notes:
            rep.problems.add(p)
        return rep

    # -------------------------------------------------------------- chunk streams

    def _open(self) -> CsvFile:
        return self.work.open_source(self.report.file)

    def _chunks(self, chunk_bytes: int, buckets: int = 0) -> Iterator[ChunkTask]:
        tel, rep, size = progress.current(), self.report, self.path.stat().st_size
        with self._open() as csvf:
            by_place = self.pool is not None and csvf.path is not None
            for data, line in csvf.chunks(chunk_bytes):
                # once per chunk (megabytes): the progress display reads this
                tel.converting(rep.file, csvf.chunk_offset + len(data), size, rep.rows_read)
                if by_place:
                    span = Span(csvf.path, csvf.chunk_offset, len(data))  # type: ignore[arg-type]
                    yield ChunkTask(span, line, buckets)
                else:
                    yield ChunkTask(data, line, buckets)

    def _map(self, fn: Callable[[T], R], tasks: Iterable[T]) -> Iterator[R]:
        """Ordered results of fn(task), a bounded number in flight."""
        if self.pool is None:
            for task in tasks:
                yield fn(task)
            return
        window: list[Future[R]] = []
        limit = self.workers * 2 + 1
        for task in tasks:
            window.append(self.pool.submit(fn, task))
            if len(window) >= limit:
                yield window.pop(0).result()
        for fut in window:
            yield fut.result()

    def _build(self, edge: Edge) -> Built | Overflow:
        return edge if isinstance(edge, Overflow) else build_run(edge, self.plan)

    # -------------------------------------------------------------- grouped path

    def _grouped(self, writer: Writer) -> None:
        rep = writer.report
        ids = self.work.id_set()
        carry: Edge | None = None
        try:
            for res in self._map(chunk_task, self._chunks(self.chunk_bytes)):
                if not res.boundary_ok:
                    raise Boundary
                rep.rows_read += res.rows + res.blank
                rep.rows_skipped += res.blank
                if self.plan.kind == "products":
                    writer.write(res.out)
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
                    raise Ungrouped
                if res.head is None:
                    writer.write(res.out)  # rows the mapping skipped, if any
                    continue
                # stitch the run that straddles the previous boundary
                head = res.head
                if carry is not None and getattr(head, "continued", False):
                    head.id = carry.id  # rows filled down from the previous chunk
                if carry is not None and head.id is not None and head.id == carry.id:
                    head = _stitch(carry, head)
                    carry = None
                if carry is not None:
                    writer.add_built(self._build(carry))
                    carry = None
                if res.tail is None:
                    carry = head
                    writer.write(res.out)
                else:
                    writer.add_built(self._build(head))
                    writer.write(res.out)
                    carry = res.tail
            if carry is not None:
                writer.add_built(self._build(carry))
        finally:
            ids.close()

    # -------------------------------------------------------------- regroup path

    def _regroup(self, writer: Writer, chunk_bytes: int) -> None:
        """Ungrouped files: the on-disk bucket sort of `regroup`, in two passes.

        ``chunk_bytes`` of 0 reads the file as one sequential stream of rows in this
        process (for files whose stray quotes defeat chunking); memory stays bounded.
        """
        n = regroup.bucket_count(self.path.stat().st_size)
        with self.work.buckets(n) as buckets:
            if chunk_bytes:
                parts = self._map(chunk_task, self._chunks(chunk_bytes, n))
            else:
                parts = self._sequential(n)
            regroup.park(parts, buckets, writer.report)
            tasks = (
                BucketTask(str(a), str(b)) for a, b in zip(buckets.runs, buckets.built, strict=True)
            )
            for _ in self._map(bucket_task, tasks):
                pass
            regroup.merge(buckets, writer)

    def _sequential(self, buckets: int) -> Iterator[ChunkResult]:
        with self._open() as csvf:
            yield from park_stream(csvf, buckets)


# --------------------------------------------------------------------------- the API


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
    line_labels: Callable[[int], Any] | None = None,
) -> Converted:
    """Convert one CSV export (a path, or a binary stream) into ``work_dir``.

    Raises `InputError` for a file that cannot be used at all; every other problem is a
    rejected object or a warning in the returned report.  A path is always a file
    (``-`` too): the command line hands stdin over as a stream.  An Excel workbook
    (.xlsx) is read too: its sheet becomes a CSV in ``work_dir`` first (`read.xlsx`).
    ``line_labels`` names the rows in the report in place of line numbers (a DataFrame's
    row labels).
    """
    settings = settings or ConvertSettings()
    started = time.monotonic()
    work = WorkDir(work_dir)
    if mapping is None and settings.mapping is not None:
        mapping = settings.mapping
    if mapping is None and settings.preset:
        mapping = load_preset(settings.preset)
    if isinstance(mapping, (str, Path)):
        mapping = load_mapping(mapping)
    if products_from_conversions:
        kind = "products"
    label = name or (str(source) if isinstance(source, (str, Path)) else "<stream>")
    # "-" too is a path (stdin is the CLI's); a stream is spooled: the fallbacks read again
    path = Path(os.path.abspath(source)) if isinstance(source, (str, Path)) else work.spool(source)
    opts = mapping.options if mapping is not None else None
    encoding = settings.encoding or (opts.encoding if opts else None)
    delimiter = settings.delimiter or (opts.delimiter if opts else None)
    limits = ReadLimits.from_settings(settings)
    sheet = _sheet_as_csv(path, work, settings, label)  # an .xlsx: its sheet, as a CSV
    if sheet is not None:
        path, encoding, delimiter = sheet.path, "utf-8", ","
    with CsvFile(path, name=label, encoding=encoding, delimiter=delimiter, limits=limits) as csvf:
        dialect, header = csvf.dialect, csvf.header
    work.use_source(path, dialect, limits)
    if ERROR_COLUMN in header:  # a fixed rejects file: its header's cells restored too
        header = [restore(h) for h in header]
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
        header=header,
        dialect=dialect,
        kind=kind,
        options=options,
        conflict=settings.conflict,
        mapping=mapping,
        products_from_conversions=products_from_conversions,
        limits=limits,
    )
    try:
        plan, _ = spec.compile()  # fails early (missing columns) before any worker starts
    except CsvBridgeError as exc:
        if sheet is None or not sheet.hint():
            raise
        raise type(exc)(exc.message + sheet.hint(), **exc.context) from None
    report = Report(file=label, kind=kind)
    report.dialect = {**dialect.as_dict(), "decimal_comma": decimal_comma, "columns": len(header)}
    if dialect.encoding_note:  # a guess, or a UTF-8 file with some bad bytes: say so
        report.problems.add(
            Problem(
                code="ENCODING_GUESSED" if not dialect.encoding_confident else "ENCODING_NOTE",
                detail=f"{dialect.encoding}: {dialect.encoding_note}",
                lines=(),
                warning=True,
            )
        )
    if sheet is not None:
        report.dialect["sheet"] = sheet.sheet
        if not sheet.identity:  # a cell with a line break: CSV lines are not sheet rows
            report.line_labels = sheet.row_of
    if line_labels is not None:
        report.line_labels = line_labels
    if not products_from_conversions:
        for col, reason in plan.ignored:
            report.problems.add(
                Problem(
                    code="IGNORED_COLUMN",
                    detail=f"column ignored: {reason}",
                    property=plan.paths[col] or None,
                    lines=(1,),
                    column=plan.sources[col],
                    warning=True,
                )
            )
    engine = Engine(
        spec=spec,
        plan=plan,
        work=work,
        report=report,
        workers=settings.workers or os.cpu_count() or 1,
        chunk_bytes=chunk_bytes,
    )
    with progress.showing():  # bars on a terminal, log lines else (or the open session's)
        engine.run()
        progress.current().converting(label, path.stat().st_size, None, report.rows_read)
    skipped = engine.products.skipped if engine.products is not None else 0
    if skipped:
        report.problems.add(
            _note(
                "REPEATED_PRODUCT_SKIPPED",
                f"{skipped} rows repeat a product already taken from an earlier row; "
                "the first occurrence is kept",
            )
        )
    if report.rows_converted + report.rows_rejected + skipped == 0:
        lost = work.lost_rows(report.file)
        if lost:
            raise InputError(lost, file=report.file)
        report.problems.add(_note("EMPTY_EXPORT", "the file has a header and no rows"))
    report.duration_seconds = time.monotonic() - started
    report.outputs = {"ndjson": str(work.ndjson)}
    return Converted(report=report, work=work)


def _sheet_as_csv(path: Path, work: WorkDir, settings: ConvertSettings, label: str) -> Any:
    """The sheet of an Excel workbook written as a CSV in the work folder (None: the
    source is not a workbook).  Same engine afterwards: same validation, report and
    rejects (a workbook's rejects are a CSV)."""
    from csvbridge.read.sniff import identify
    from csvbridge.read.xlsx import XLSX, sheet_to_csv

    try:
        with open(path, "rb") as f:
            head = f.read(65536)
    except OSError:
        return None  # CsvFile says what is wrong with the path
    if identify(head) != XLSX:
        return None
    return sheet_to_csv(path, work.folder / "sheet.csv", sheet=settings.sheet, file=label)


def __getattr__(name: str) -> Any:
    """`convert_file` lives in `csvbridge.fold.output`; still found here."""
    if name == "convert_file":
        from csvbridge.fold.output import convert_file

        return convert_file
    raise AttributeError(name)


__all__ = ["Converted", "Engine", "Spec", "convert", "read_records", "write_rejects"]
