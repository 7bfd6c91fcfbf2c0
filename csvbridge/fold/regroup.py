"""The on-disk regroup of a file whose rows are not grouped by conversion id.

Pass 1 cuts the file into runs and appends each to one of N bucket files by a CRC of
its id (`split`, `park`), so every conversion lies whole in one bucket, in file order.
Pass 2 builds the buckets in parallel (`build_bucket`; N grows with the file, so one
bucket fits in memory) and writes each one's conversions in order of their first line;
merging the buckets on that line (`merge`) gives the grouped file's output, byte for
byte, with problems and rejects in the same order.  A conversion that grows past
`MAX_ITEMS` rows while its bucket is gathered is only counted (`Overflow`).
"""

from __future__ import annotations

import heapq
import os
import pickle
import zlib
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

from csvbridge.files import open_private
from csvbridge.fold.assemble import Built, Plan
from csvbridge.fold.build import Overflow, build_group, size_of
from csvbridge.fold.lane import Layout, Line, Run, Shared, cut_lane, record_id
from csvbridge.fold.workdir import Buckets, IndexEntry, Writer, index_text
from csvbridge.read.csvfile import Row
from csvbridge.report import Report
from csvbridge.schema.models import MAX_ITEMS

if TYPE_CHECKING:
    from csvbridge.fold.worker import ChunkResult

BUCKET_BYTES = 8 << 20  # source bytes per bucket of an ungrouped file: memory per worker
MAX_BUCKETS = 512
RESULT_BATCH_BYTES = 64 << 10  # per bucket, in memory during the final merge

Parked = Run | Shared | Overflow | Line | Row  # what pass 1 parks in a bucket


class Alone(NamedTuple):
    """The key of a parked item that groups with nothing (no id; or a product)."""

    line: int


class BucketEntry(NamedTuple):
    """One built object of a bucket, as pass 2 writes it and the merge reads it.

    A clean record comes ready to write (`ndjson`, `index`, `rows`); anything else
    (problems, a reject, a product to deduplicate) comes as its `built` outcome."""

    first_line: int
    ndjson: bytes | None
    index: str | None
    rows: int
    built: Built | Overflow | None = None


class Boundary(Exception):
    """A chunk did not end on a record boundary (stray quote): read in one piece."""


def bucket_count(size: int) -> int:
    return max(8, min(MAX_BUCKETS, size // BUCKET_BYTES + 1))


def first_line(item: Parked) -> int:
    if isinstance(item, Shared):
        line, _ = item.items[0]
        return line
    if isinstance(item, Run):
        return item.rows[0].line
    if isinstance(item, Overflow):
        return item.first[0]
    if item.__class__ is tuple:
        line, _ = item  # type: ignore[misc]
        return line
    return item.line  # type: ignore[union-attr]


def key_of(item: Parked, layout: Layout | None, kind: str) -> str | Alone:
    """The id a parked item groups on; `Alone` when it stands alone."""
    is_run = isinstance(item, (Run, Shared, Overflow))
    cid = item.id if is_run else record_id(item, layout) or None  # type: ignore[union-attr,arg-type]
    if cid is None or kind == "products":
        return Alone(first_line(item))
    return cid


def split(
    items: Iterable[Parked], buckets: int, kind: str, layout: Layout | None
) -> dict[int, bytes]:
    """Pickled items per bucket; all items of one id land in one bucket, in every
    process (a CRC, not hash())."""
    parts: dict[int, list[Parked]] = {}
    for item in items:
        key = key_of(item, layout, kind)
        if key.__class__ is Alone:
            k = key.line % buckets  # type: ignore[union-attr]
        else:
            k = zlib.crc32(key.encode("utf-8", "surrogatepass")) % buckets  # type: ignore[union-attr]
        part = parts.get(k)
        if part is None:
            parts[k] = [item]
        else:
            part.append(item)
    return {k: pickle.dumps(v, 5) for k, v in parts.items()}


def park(parts: Iterable[ChunkResult], buckets: Buckets, report: Report) -> None:
    """Pass 1: append every chunk's parked runs to their bucket files."""
    files = [open_private(p, "wb") for p in buckets.runs]
    try:
        for res in parts:
            if not res.boundary_ok:
                raise Boundary
            report.rows_read += res.rows + res.blank
            report.rows_skipped += res.blank + res.out.rows_dup  # blank, or skipped by roles
            report.problems.extend(res.out.problems)
            for k, blob in (res.buckets or {}).items():
                files[k].write(blob)
    finally:
        for f in files:
            f.close()


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
            pending.append(item)  # type: ignore[arg-type]
    if pending:
        runs.extend(cut_lane(pending, layout))
    return runs


def _gather(source: str, layout: Layout | None, kind: str) -> dict[object, list[Parked] | Overflow]:
    """A bucket's items by conversion, in order of first appearance; a conversion past
    `MAX_ITEMS` rows becomes its count."""
    groups: dict[object, list[Parked] | Overflow] = {}
    sizes: dict[object, int] = {}
    with open(source, "rb") as f:
        while True:
            try:
                batch: list[Parked] = pickle.load(f)
            except EOFError:
                break
            for item in batch:
                key = key_of(item, layout, kind)
                group = groups.get(key)
                if group is None:
                    groups[key] = item if isinstance(item, Overflow) else [item]
                    sizes[key] = size_of(item)
                    continue
                if group.__class__ is Overflow:
                    group.absorb(item)  # type: ignore[union-attr]
                    continue
                group.append(item)  # type: ignore[union-attr]
                n = sizes[key] = sizes[key] + size_of(item)
                if n > MAX_ITEMS and key.__class__ is str:
                    over = Overflow(key)  # type: ignore[arg-type]
                    for part in group:  # type: ignore[union-attr]
                        over.absorb(part)
                    groups[key] = over
    return groups


def build_bucket(source: str, dest: str, plan: Plan, layout: Layout | None, delimiter: str) -> None:
    """Build every conversion of one bucket; write them in order of their first line.

    A bucket holds whole conversions (all runs of an id share a bucket) in file order,
    so gathering them in a dict keeps first appearances in order.
    """
    groups = _gather(source, layout, plan.kind)
    os.unlink(source)
    plain = plan.kind != "products"  # products are checked for repeated ids in order
    with open_private(dest, "wb") as out:
        entries: list[BucketEntry] = []
        size = 0
        for group in groups.values():
            if isinstance(group, Overflow):
                entries.append(
                    BucketEntry(
                        first_line=group.first[0], ndjson=None, index=None, rows=0, built=group
                    )
                )
                size += 256
                continue
            b = build_group(_runs_of(group, layout), plan, delimiter)
            rec = b.record
            if rec is not None and plain and not b.problems:
                line = rec.json + b"\n"
                index = index_text([IndexEntry(rec.id, rec.lines)])
                entries.append(
                    BucketEntry(first_line=rec.lines[0], ndjson=line, index=index, rows=b.rows)
                )
                size += len(line)
            else:
                entries.append(
                    BucketEntry(
                        first_line=first_line(group[0]), ndjson=None, index=None, rows=0, built=b
                    )
                )
                size += 256 + (len(rec.json) if rec is not None else 0)
            if size >= RESULT_BATCH_BYTES:
                # small batches: the merge holds one batch of every bucket at a time
                pickle.dump(entries, out, 5)
                entries, size = [], 0
        if entries:
            pickle.dump(entries, out, 5)


def _entries(path: Path) -> Iterator[BucketEntry]:
    """Read back what `build_bucket` wrote, in order."""
    with open(path, "rb") as f:
        while True:
            try:
                yield from pickle.load(f)
            except EOFError:
                return


def _first_line_of(entry: BucketEntry) -> int:
    return entry.first_line


def merge(buckets: Buckets, writer: Writer) -> None:
    """Pass 2's end: every bucket's objects written in order of their first line."""
    nd: list[bytes] = []
    ix: list[str] = []
    rows = 0
    # merged on the first line alone: records split by a bare CR share an LF line
    # number, and entries must never be compared past it (ties keep bucket order, the
    # same in every lane and chunk size)
    for entry in heapq.merge(*map(_entries, buckets.built), key=_first_line_of):
        if entry.built is None:
            nd.append(entry.ndjson)  # type: ignore[arg-type]
            ix.append(entry.index)  # type: ignore[arg-type]
            rows += entry.rows
            if len(nd) >= 1000:
                writer.write_lines(nd, ix, rows)
                nd, ix, rows = [], [], 0
            continue
        writer.write_lines(nd, ix, rows)  # keep the order of the files
        nd, ix, rows = [], [], 0
        writer.add_built(entry.built)
    writer.write_lines(nd, ix, rows)


__all__ = [
    "BUCKET_BYTES",
    "Boundary",
    "BucketEntry",
    "bucket_count",
    "build_bucket",
    "merge",
    "park",
    "split",
]
