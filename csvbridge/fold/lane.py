"""Runs: consecutive rows of one conversion id, cut from parsed rows or from raw text.

`cut_runs` takes rows the csv module parsed.  `records` + `cut_lane` are the fast lane
for files laid out like the documented header (conversion-level columns first, item
columns last, no mapping): a chunk's text is read line by line, and a row whose
conversion-level text repeats the previous row's exactly is not split at all, since it
can neither conflict nor change the conversion.  Such runs (`Shared`) are built by
`Plan.build_shared`; anything irregular (a quoted field, a ragged row, rows of one id
that differ) becomes an ordinary `Run` of parsed rows, built by `Plan.build`, so both
lanes give the same output.  Lines with a quote character go through the csv module.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from csvbridge.errors import InputError
from csvbridge.read.csvfile import Row, parse_lines
from csvbridge.read.limits import DEFAULT_LIMITS
from csvbridge.read.mapping import RowTransform
from csvbridge.report import Problem

ITEMS_PREFIX = "conversion_items."


@dataclass(slots=True)
class Run:
    """Consecutive rows with one id, and the problems already known for them."""

    id: str | None  # None: the row had no id and stands alone
    rows: list[Row]
    pre: list[Problem] = field(default_factory=list)
    continued: bool = False  # rows before a chunk's first order key (fill-down)


@dataclass(slots=True)
class Shared:
    """Rows of one id whose conversion-level text is identical (fast lane)."""

    id: str
    head: list[str]  # the conversion-level cells
    items: list[tuple[int, str]]  # (line, raw text of the item columns) per row

    def as_run(self, delimiter: str) -> Run:
        return Run(self.id, [Row(n, self.head + t.split(delimiter)) for n, t in self.items])


def prepare_row(
    row: Row, ncols: int, transform: RowTransform | None
) -> tuple[Row | None, list[Problem]]:
    """Pad a ragged row (and flag it), and apply the mapping; collect the problems.

    The row is None when the mapping's roles skip it: the first problem then says why
    (a ``ROW_SKIPPED`` warning, counted by reason in the report).
    """
    pre: list[Problem] = []
    cells = row.cells
    if len(cells) != ncols:
        pre.append(
            Problem(
                "ROW_LENGTH_MISMATCH",
                f"row has {len(cells)} cells but the header has {ncols}; "
                "check the delimiter and quoting of this line",
                None,
                (row.line,),
            )
        )
        cells = (cells + [""] * ncols)[:ncols]
    if transform is not None:
        original = cells
        mapped = transform.fn(cells)
        if mapped is None:
            skipped = Problem(
                "ROW_SKIPPED", f"row skipped: {transform.skip}", None, (row.line,), warning=True
            )
            transform.errors.clear()
            transform.notes.clear()
            return None, [skipped]
        cells = mapped
        for i, err in transform.errors:
            col = transform.source_cols[i]
            pre.append(
                Problem(
                    err.code,
                    err.detail,
                    transform.paths[i] or None,
                    (row.line,),
                    None,
                    transform.sources[i],
                    err.value
                    if err.value is not None
                    else (original[col] if col is not None else None),
                )
            )
        transform.errors.clear()
        for i, code, detail, value in transform.notes:
            pre.append(
                Problem(
                    code,
                    detail,
                    transform.paths[i] or None,
                    (row.line,),
                    None,
                    transform.sources[i],
                    value,
                    warning=True,
                )
            )
        transform.notes.clear()
    return Row(row.line, cells), pre


def cut_runs(
    rows: list[Row],
    id_col: int,
    transform: RowTransform | None,
    ncols: int,
    per_row: bool,
    skipped: list[Problem] | None = None,
) -> list[Run]:
    """Cut parsed rows into runs of one id, flagging ragged rows with their line.

    With a mapping: rows its roles skip go to `skipped` (one ``ROW_SKIPPED`` problem
    each); rows before the first order key of a chunk that fills keys down start a run
    marked `continued` (the engine joins it to the previous chunk's last conversion);
    a row without an order key when the mapping does not fill down is a mistake in
    the file's shape, and stops the file (`InputError`) with one message, since its
    items would otherwise be lost from an order shipped without them.
    """
    runs: list[Run] = []
    current: Run | None = None
    current_id: str | None = None
    for row in rows:
        pre: list[Problem] | None = None
        if len(row.cells) != ncols or transform is not None:
            prepared, pre = prepare_row(row, ncols, transform)
            if prepared is None:
                if skipped is not None:
                    skipped.extend(pre)
                continue
            row = prepared
        cid = row.cells[id_col] or None
        if cid is None and transform is not None and not per_row:  # conversions
            if transform.continued and not runs:
                current = Run(None, [row], pre or [], continued=True)
                runs.append(current)
                continue
            if transform.continued and current is not None and current.continued:
                current.rows.append(row)
                current.pre.extend(pre or [])
                continue
            if not transform.fill_down:
                raise InputError(
                    f"line {row.line}: the row has no order key ({transform.key_source}); "
                    "the export leaves it blank on an order's later rows (continuation "
                    "rows): set rows.fill_down: true in the mapping to take it from the "
                    "row above, or skip such rows with a role"
                )
        if pre:
            for p in pre:
                p.id = cid
        if cid is not None and cid == current_id and not per_row:
            current.rows.append(row)  # type: ignore[union-attr]
            if pre:
                current.pre.extend(pre)  # type: ignore[union-attr]
        else:
            current = Run(cid, [row], pre or [])
            current_id = cid
            runs.append(current)
    return runs


@dataclass(frozen=True, slots=True)
class Layout:
    """Where the fast lane may cut a line: `n_head` leading conversion-level columns,
    then `n_item` item columns."""

    n_head: int
    n_item: int
    id_col: int
    delimiter: str
    max_cell: int | None = DEFAULT_LIMITS.max_cell_chars  # for quoted multi-line records

    @classmethod
    def of(
        cls,
        paths: list[str],
        id_col: int,
        delimiter: str,
        quotechar: str,
        max_cell: int | None = DEFAULT_LIMITS.max_cell_chars,
    ) -> Layout | None:
        """The layout of a header, or None when the fast lane does not apply."""
        n_item = sum(p.startswith(ITEMS_PREFIX) for p in paths)
        n_head = len(paths) - n_item
        if (
            not n_item
            or not n_head
            or id_col >= n_head
            or quotechar != '"'
            or len(delimiter) != 1
            or delimiter in '"\r\n'
            or not all(p.startswith(ITEMS_PREFIX) for p in paths[n_head:])
        ):
            return None
        return cls(n_head, n_item, id_col, delimiter, max_cell)


Line = tuple[int, str]  # an unquoted record: its line number and its text


@dataclass(slots=True)
class Records:
    """A chunk's records in order: plain lines as (line, text), quoted ones parsed."""

    items: list[Line | Row]
    rows: int
    blank: int


def records(text: str, first_line: int, layout: Layout) -> Records | None:
    """The records of a decoded, record-aligned chunk; None to let the csv module read
    it (a bare CR, or a quoted field that does not close inside the chunk)."""
    crlf = "\r" in text
    if crlf and text.count("\r") != text.count("\r\n"):
        return None
    raw = text.split("\n")
    if raw and raw[-1] == "":
        raw.pop()
    lines = [s[:-1] if s[-1:] == "\r" else s for s in raw] if crlf else raw
    d = layout.delimiter
    out: list[Line | Row] = []
    append = out.append
    rows = blank = 0
    i, n = 0, len(lines)
    while i < n:
        line = lines[i]
        if '"' not in line:
            if line.strip(d):
                append((first_line + i, line))
                rows += 1
            else:
                blank += 1
            i += 1
            continue
        # a quoted record (perhaps over several lines): the csv module reads it
        j = i
        quotes = line.count('"')
        while quotes & 1:
            j += 1
            if j >= n:
                return None
            quotes += lines[j].count('"')
        segment = [s + "\n" for s in raw[i : j + 1]]
        parsed, skipped, closed = parse_lines(
            segment, first_line + i, d, max_cell=layout.max_cell
        )
        if not closed:
            return None
        blank += skipped
        out.extend(parsed)
        rows += len(parsed)
        i = j + 1
    return Records(out, rows, blank)


def record_id(record: Line | Row, layout: Layout) -> str:
    """The conversion id of a record ("" when it has none)."""
    k = layout.id_col
    if record.__class__ is tuple:
        parts = record[1].split(layout.delimiter, k + 1)  # type: ignore[index]
        return parts[k] if len(parts) > k else ""
    cells = record.cells  # type: ignore[union-attr]
    return cells[k] if len(cells) > k else ""


def cut_lane(recs: list[Line | Row], layout: Layout) -> list[Run | Shared]:
    """Cut records into runs of one id: `Shared` while the conversion-level text
    repeats exactly, an ordinary `Run` as soon as anything is irregular."""
    d = layout.delimiter
    n_head, n_item, id_col = layout.n_head, layout.n_item, layout.id_col
    ncols = n_head + n_item
    item_seps = n_item - 1
    runs: list[Run | Shared] = []
    cur: Run | Shared | None = None
    sep: str | None = None  # the current conversion-level text and its delimiter
    nsep = 0
    head: list[str] = []

    def add_parsed(row: Row) -> None:
        """A row parsed in full (quoted or ragged): the ordinary path of `cut_runs`."""
        nonlocal cur
        pre: list[Problem] = []
        if len(row.cells) != ncols:
            row, pre = prepare_row(row, ncols, None)
        cid = row.cells[id_col] or None
        for p in pre:
            p.id = cid
        if cid is not None and cur is not None and cid == cur.id:
            if isinstance(cur, Shared):
                cur = runs[-1] = cur.as_run(d)
            cur.rows.append(row)
            cur.pre.extend(pre)
        else:
            cur = Run(cid, [row], pre)
            runs.append(cur)

    for rec in recs:
        if rec.__class__ is not tuple:
            add_parsed(rec)  # type: ignore[arg-type]
            sep = None
            continue
        lineno, line = rec  # type: ignore[misc]
        if sep is not None and line.startswith(sep):
            text_items = line[nsep:]
            if text_items.count(d) == item_seps:
                if isinstance(cur, Shared):
                    cur.items.append((lineno, text_items))
                else:  # same id as a row that was not regular
                    cur.rows.append(Row(lineno, head + text_items.split(d)))  # type: ignore[union-attr]
                continue
        parts = line.rsplit(d, n_item)
        if len(parts) == n_item + 1:
            head_text = parts[0]
            cells = head_text.split(d)
            if len(cells) == n_head:
                cid = cells[id_col]
                if not cid:
                    sep = None
                    add_parsed(Row(lineno, cells + parts[1:]))
                    continue
                sep = head_text + d
                nsep = len(sep)
                head = cells
                if cur is not None and cid == cur.id:  # same id, other values: check them
                    add_parsed(Row(lineno, cells + parts[1:]))
                else:
                    cur = Shared(cid, cells, [(lineno, line[nsep:])])
                    runs.append(cur)
                continue
        sep = None
        add_parsed(Row(lineno, line.split(d)))
    return runs


@dataclass(slots=True)
class Scanned:
    runs: list[Run | Shared]
    rows: int
    blank: int


def scan_chunk(text: str, first_line: int, layout: Layout) -> Scanned | None:
    """A chunk's runs through the fast lane, or None when the csv module must read it."""
    recs = records(text, first_line, layout)
    if recs is None:
        return None
    return Scanned(cut_lane(recs.items, layout), recs.rows, recs.blank)


__all__ = [
    "Layout",
    "Line",
    "Records",
    "Run",
    "Scanned",
    "Shared",
    "cut_lane",
    "cut_runs",
    "prepare_row",
    "record_id",
    "records",
    "scan_chunk",
]
