"""What runs in a worker process: a chunk of the source -> built objects, or runs parked
in buckets; a bucket of parked runs -> built objects.

A worker is started with one `Spec` (everything needed to compile the same plan as the
main process) and keeps what it compiled in a `WorkerState`.  Each call takes one typed
task (`ChunkTask`, `BucketTask`) and returns a typed result (`ChunkResult`).  The main
process runs the same functions itself when it has no pool.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass, field

from csvbridge.errors import InputError
from csvbridge.fold import regroup
from csvbridge.fold.assemble import Plan, normalize_header
from csvbridge.fold.build import Overflow, bounded, build_run
from csvbridge.fold.lane import Layout, Records, Run, Shared, cut_lane, cut_runs, records
from csvbridge.fold.rejects import ERROR_COLUMN, restore_rows
from csvbridge.fold.workdir import Output
from csvbridge.read.csvfile import CsvFile, Dialect, Row, parse_chunk
from csvbridge.read.limits import DEFAULT_LIMITS, ReadLimits
from csvbridge.read.mapping import Mapping, RowTransform, compile_mapping
from csvbridge.read.mapping.compile import check_items
from csvbridge.report import Problem
from csvbridge.schema.codecs import CodecOptions
from csvbridge.schema.models import MAX_ITEMS

ITEM_PRODUCT = "conversion_items.product."
FAST_LANE = True  # tests turn it off to check both lanes give the same bytes


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
    limits: ReadLimits = DEFAULT_LIMITS  # the same caps in every process

    @property
    def fixed_rejects(self) -> bool:
        """A rejects file dropped again: its error column is ignored, its cells restored."""
        return ERROR_COLUMN in self.header

    def compile(self) -> tuple[Plan, RowTransform | None]:
        transform = None
        if self.mapping is not None:
            transform = compile_mapping(self.mapping, self.header, self.options)
            if self.kind == "conversions" and not self.products_from_conversions:
                check_items(self.mapping)
            paths, sources = list(transform.paths), transform.sources
        else:
            paths, sources = [normalize_header(h) for h in self.header], list(self.header)
            if self.fixed_rejects:  # not a column of the export: not even "ignored"
                paths[self.header.index(ERROR_COLUMN)] = ""
        if self.products_from_conversions:
            paths = [p[len(ITEM_PRODUCT) :] if p.startswith(ITEM_PRODUCT) else "" for p in paths]
        plan = Plan(paths, sources, kind=self.kind, options=self.options, conflict=self.conflict)
        if transform is not None and self.kind == "conversions":
            plan.use_roles(transform.role_col, transform.line_index, transform.defaults)
        return plan, transform


@dataclass(frozen=True)
class WorkerState:
    """What one process compiled from its `Spec`."""

    spec: Spec
    plan: Plan
    transform: RowTransform | None
    layout: Layout | None  # the fast lane's cut, None when the csv module reads all


_STATE: WorkerState | None = None  # this process's state, set by `init_worker`


def init_worker(spec: Spec) -> WorkerState:
    """Compile the plan once per process (the pool's initializer)."""
    global _STATE
    plan, transform = spec.compile()
    layout = None
    if (
        FAST_LANE
        and transform is None
        and plan.kind == "conversions"
        and not spec.products_from_conversions
        and not spec.fixed_rejects  # its cells are restored row by row
    ):
        layout = Layout.of(
            plan.paths,
            plan.id_col,
            spec.dialect.delimiter,
            spec.dialect.quotechar,
            spec.limits.max_cell_chars,
        )
    _STATE = WorkerState(spec=spec, plan=plan, transform=transform, layout=layout)
    return _STATE


def state() -> WorkerState:
    assert _STATE is not None, "init_worker() was not called in this process"
    return _STATE


_FILES: dict[str, int] = {}  # per worker process: files it reads chunks from


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


@dataclass(frozen=True, slots=True)
class ChunkTask:
    """Build a chunk's inner conversions; with ``buckets``, only park its runs in that
    many buckets by id (pass 1 of a regroup)."""

    data: bytes | Span
    first_line: int
    buckets: int = 0


@dataclass(frozen=True, slots=True)
class BucketTask:
    """Build every conversion parked in one bucket file (pass 2 of a regroup)."""

    runs: str
    built: str


Edge = Run | Overflow  # a chunk's first or last conversion, handed back unbuilt


@dataclass(slots=True)
class ChunkResult:
    out: Output
    rows: int
    blank: int
    boundary_ok: bool  # False: a stray quote defeated chunking, read the file whole
    head: Edge | None = None  # first run, not built (it may continue the previous chunk)
    tail: Edge | None = None  # last run, not built (it may continue in the next chunk)
    run_ids: list[str] = field(default_factory=list)  # ids of this chunk's runs, in order
    dup_inside: bool = False  # an id came back within this chunk
    buckets: dict[int, bytes] | None = None  # pass 1 of a regroup: pickled runs per bucket


def cut(rows: list[Row], st: WorkerState, skipped: list[Problem] | None = None) -> list[Run]:
    """Parsed rows -> runs (a fixed rejects file's cells restored first); rows the
    mapping skips go to `skipped`."""
    if st.spec.fixed_rejects:
        restore_rows(rows)
    plan = st.plan
    return cut_runs(
        rows, plan.id_col, st.transform, len(st.spec.header), plan.kind == "products", skipped
    )


def _records(data: bytes, first_line: int, st: WorkerState) -> Records | None:
    """The fast lane's records of a chunk, or None when the csv module must read it."""
    try:
        text = data.decode(st.spec.dialect.encoding)
    except UnicodeDecodeError:
        return None  # the ordinary path reports the lines with bad bytes
    return records(text, first_line, st.layout)  # type: ignore[arg-type]


def _parse(
    data: bytes, first_line: int, st: WorkerState, skipped: list[Problem]
) -> tuple[list[Run], int, int, bool]:
    """Runs of a chunk parsed by the csv module: (runs, rows, blank, boundary_ok)."""
    spec = st.spec
    parsed = parse_chunk(data, first_line, spec.dialect, max_cell=spec.limits.max_cell_chars)
    if st.transform is not None:
        st.transform.reset()  # the row above this chunk is in another chunk
    runs = cut(parsed.rows, st, skipped)
    if parsed.bad_encoding:
        bad = set(parsed.bad_encoding)
        for run in runs:
            for r in run.rows:
                if r.line in bad:
                    run.pre.append(
                        Problem(
                            code="ENCODING_ERROR",
                            detail=f"bytes that are not valid {spec.dialect.encoding}; "
                            "re-export the file as UTF-8",
                            lines=(r.line,),
                            id=run.id,
                        )
                    )
    return runs, len(parsed.rows), parsed.blank, parsed.boundary_ok


def chunk_task(task: ChunkTask) -> ChunkResult:
    st = state()
    data = task.data.read() if isinstance(task.data, Span) else task.data
    plan, spec, layout = st.plan, st.spec, st.layout
    d = spec.dialect.delimiter
    recs = _records(data, task.first_line, st) if layout is not None else None
    skipped: list[Problem] = []
    if recs is not None:
        if task.buckets:
            parts = regroup.split(recs.items, task.buckets, plan.kind, layout)
            return ChunkResult(
                out=Output(), rows=recs.rows, blank=recs.blank, boundary_ok=True, buckets=parts
            )
        runs: list[Run | Shared] = cut_lane(recs.items, layout)  # type: ignore[arg-type]
        nrows, blank, boundary_ok = recs.rows, recs.blank, True
    else:
        parsed, nrows, blank, boundary_ok = _parse(data, task.first_line, st, skipped)
        runs = list(parsed)
    seen: set[str] = set()
    dup = False
    run_ids = []
    for run in runs:
        if run.id is not None:
            if run.id in seen and plan.kind != "products":
                dup = True
            seen.add(run.id)
            run_ids.append(run.id)
    if task.buckets:
        parts = regroup.split(map(bounded, runs), task.buckets, plan.kind, layout)
        return ChunkResult(
            out=_with_skipped(skipped),
            rows=nrows,
            blank=blank,
            boundary_ok=boundary_ok,
            dup_inside=dup,
            buckets=parts,
        )
    head = tail = None
    inner = runs
    if plan.kind != "products" and runs:
        first, inner = runs[0], runs[1:]
        head = _edge(first, d)
        if inner:
            last, inner = inner[-1], inner[:-1]
            tail = _edge(last, d)
    out = _with_skipped(skipped)
    for run in inner:
        if isinstance(run, Shared):
            if len(run.items) > MAX_ITEMS:  # counted, not built: see build.Overflow
                out.add_overflow(Overflow.of(run))
            else:
                out.add(plan.build_shared(run.head, run.id, run.items, d))
        elif run.id is not None and len(run.rows) > MAX_ITEMS:
            out.add_overflow(Overflow.of(run))
        else:
            out.add(build_run(run, plan))
    if plan.kind != "products":
        out.pack()  # products are checked for repeated ids object by object
    return ChunkResult(
        out=out,
        rows=nrows,
        blank=blank,
        boundary_ok=boundary_ok,
        head=head,
        tail=tail,
        run_ids=run_ids,
        dup_inside=dup,
    )


def _with_skipped(skipped: list[Problem]) -> Output:
    """An output that reports the rows the mapping skipped, one problem each: the
    report counts them as skipped, aggregated by reason."""
    out = Output()
    out.problems.extend(skipped)
    out.rows_dup = len(skipped)
    return out


def _edge(run: Run | Shared, delimiter: str) -> Edge:
    """A chunk's first or last run, as the main process stitches it."""
    part = bounded(run)  # a long one travels back to the main process as its count
    return part.as_run(delimiter) if isinstance(part, Shared) else part


def park_stream(csvf: CsvFile, buckets: int, rows_per_batch: int = 5000) -> Iterator[ChunkResult]:
    """Pass 1 of a regroup for a file read as one stream (stray quotes defeat chunking):
    rows read by one csv reader in this process, cut into runs and parked in batches."""
    st = state()
    rows: list[Row] = []
    blank = 0
    for row in csvf.rows():
        if row is None:
            blank += 1
            continue
        rows.append(row)
        if len(rows) >= rows_per_batch:
            yield _parked(rows, blank, buckets, st)
            rows, blank = [], 0
    yield _parked(rows, blank, buckets, st)


def _parked(rows: list[Row], blank: int, buckets: int, st: WorkerState) -> ChunkResult:
    skipped: list[Problem] = []
    parts = regroup.split(map(bounded, cut(rows, st, skipped)), buckets, st.plan.kind, None)
    return ChunkResult(
        out=_with_skipped(skipped), rows=len(rows), blank=blank, boundary_ok=True, buckets=parts
    )


def bucket_task(task: BucketTask) -> None:
    st = state()
    regroup.build_bucket(task.runs, task.built, st.plan, st.layout, st.spec.dialect.delimiter)


__all__ = [
    "FAST_LANE",
    "BucketTask",
    "ChunkResult",
    "ChunkTask",
    "Span",
    "Spec",
    "WorkerState",
    "bucket_task",
    "chunk_task",
    "cut",
    "init_worker",
    "park_stream",
    "state",
]
