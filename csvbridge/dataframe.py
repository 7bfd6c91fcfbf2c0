"""The DataFrame face: orders already in pandas go through the same engine as a CSV.

The frame is streamed, a chunk of rows at a time, to a UTF-8 CSV in a work folder, and
that file is converted (and shipped) exactly as an export would be: same validation,
same report, same rejects.  Cells are written as text the way `read.xlsx` renders
Excel's: ``3000000000123.0`` in a float column (a column with gaps becomes float in
pandas) is written ``3000000000123``, NaN/None/NaT as empty, timestamps as ISO 8601.

The report names rows by the frame's row labels instead of line numbers (the line of
each row in the CSV is known while it is written, so a cell holding a line break does
not shift the labels), and the rejected rows come back as a DataFrame indexed by those
labels, with the reason in a ``csvbridge_error`` column.

Needs the ``pandas`` extra: ``pip install csvbridge[pandas]``.
"""

from __future__ import annotations

import csv
import datetime as dt
import re
import tempfile
from bisect import bisect_right
from collections.abc import Hashable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson

from csvbridge.config import ConvertSettings, Settings
from csvbridge.errors import ConfigError
from csvbridge.files import open_private
from csvbridge.fold.assemble import Record
from csvbridge.fold.engine import convert
from csvbridge.fold.rejects import ERROR_COLUMN, restore
from csvbridge.fold.workdir import Converted
from csvbridge.read.mapping import Mapping
from csvbridge.read.xlsx import number_text
from csvbridge.report import FileState, Report

if TYPE_CHECKING:
    import pandas as pd

CHUNK_ROWS = 20_000  # rows rendered at a time: memory is a chunk, not a copy of the frame
HEADER = "header"  # what the report calls the header line (1) of a frame
_LINE = re.compile(r"line ([^:]*): ")


def _pandas() -> Any:
    try:
        import pandas
    except ImportError:
        raise ConfigError("DataFrames need pandas: pip install csvbridge[pandas]") from None
    return pandas


# --------------------------------------------------------------------------- frame -> CSV


def value_text(value: Any) -> str:
    """One frame cell as the text an export would hold (never a float's ``.0``)."""
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return "" if value != value else number_text(value)  # NaN: a missing value
    if isinstance(value, (dt.datetime, dt.date, dt.time)):
        text = value.isoformat()
        return "" if text == "NaT" else text
    pd = _pandas()
    if value is pd.NaT or value is pd.NA:
        return ""
    if hasattr(value, "item"):  # numpy scalars: their Python value
        return value_text(value.item())
    return str(value)


def _column_texts(series: pd.Series) -> list[str]:
    """A column of a chunk as texts; plain integer columns the fast way."""
    pd = _pandas()
    if pd.api.types.is_integer_dtype(series.dtype) and not series.hasnans:
        return series.astype(str).tolist()
    return [value_text(v) for v in series.tolist()]


@dataclass
class FrameCsv:
    """A frame written as CSV, and the CSV line where each of its rows starts."""

    path: Path
    labels: Sequence[Hashable]
    starts: list[int] = field(default_factory=list)

    def label(self, line: int) -> Any:
        """The row label of a CSV line (JSON-friendly: an int stays an int)."""
        if line <= 1:
            return HEADER
        at = bisect_right(self.starts, line) - 1
        if at < 0:
            return line
        lab = self.labels[at]
        if isinstance(lab, bool) or not isinstance(lab, (int, str)):
            lab = value_text(lab) if not isinstance(lab, tuple) else str(lab)
        return lab


def frame_to_csv(df: pd.DataFrame, dest: Path, chunk_rows: int = CHUNK_ROWS) -> FrameCsv:
    """Stream `df` to a UTF-8 CSV at `dest`, a chunk of rows at a time."""
    out = FrameCsv(dest, df.index.tolist())
    line = 2  # the header is line 1
    with open_private(dest, "w", encoding="utf-8", newline="") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(
            [
                value_text(c) if not isinstance(c, tuple) else ".".join(map(str, c))
                for c in df.columns
            ]
        )
        for a in range(0, len(df), chunk_rows):
            part = df.iloc[a : a + chunk_rows]
            cols = [_column_texts(part.iloc[:, k]) for k in range(part.shape[1])]
            multi = [c for c in cols if any("\n" in t for t in c)]
            for i, row in enumerate(zip(*cols, strict=True)):
                out.starts.append(line)
                line += 1 + sum(c[i].count("\n") for c in multi)
                w.writerow(row)
            if not cols:  # a frame without columns: rows are empty lines
                for _ in range(len(part)):
                    out.starts.append(line)
                    line += 1
                    w.writerow([])
    return out


# --------------------------------------------------------------------------- results


@dataclass
class FrameConverted:
    """A DataFrame converted: the report (rows named by their labels), the objects
    (NDJSON in the work folder) and the rejected rows as a DataFrame."""

    report: Report
    converted: Converted
    rejects: pd.DataFrame
    _tmp: tempfile.TemporaryDirectory[str] | None = field(default=None, repr=False)

    @property
    def ndjson(self) -> Path:
        return self.converted.ndjson

    def objects(self) -> Iterator[dict[str, Any]]:
        """The valid objects, in order."""
        with open(self.ndjson, "rb") as f:
            for line in f:
                yield orjson.loads(line)

    def to_dataframe(self) -> pd.DataFrame:
        return to_dataframe(self)

    def close(self) -> None:
        """Remove the temporary work folder (when convert_dataframe made one)."""
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

    def __enter__(self) -> FrameConverted:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@dataclass
class FrameOutcome:
    """A DataFrame shipped: the report, the file state, the rejected rows."""

    report: Report
    state: FileState
    rejects: pd.DataFrame

    @property
    def exit_code(self) -> int:
        if self.report.fatal:
            return 2
        if self.state is FileState.PROCESSING:
            return 3
        return 1 if self.state is FileState.FAILED else 0


def _rejects_frame(rejects_csv: Path | None, columns: list[Any], frame: FrameCsv) -> pd.DataFrame:
    """The rejects file (CSV rows + error column) back as a frame indexed by row labels."""
    pd = _pandas()
    names = [*map(str, columns), ERROR_COLUMN]
    if rejects_csv is None or not rejects_csv.exists():
        return pd.DataFrame(columns=names, dtype=object)
    rows: list[list[str]] = []
    labels: list[Any] = []
    with open(rejects_csv, encoding="utf-8", newline="") as f:
        reader = csv.reader(f)
        names = [restore(h) for h in next(reader, names)]
        for cells in reader:
            cells = [restore(c) for c in cells]
            m = _LINE.match(cells[-1])
            if m and m.group(1).isdigit():  # written before the labels were known
                line = int(m.group(1))
                cells[-1] = cells[-1][m.end() :]
                labels.append(frame.label(line))
            else:
                labels.append(m.group(1) if m else None)
                cells[-1] = cells[-1][m.end() :] if m else cells[-1]
            rows.append(cells)
    return pd.DataFrame(rows, columns=names, index=labels, dtype=object)


def _frame_rejects(done: Converted, frame: FrameCsv, columns: list[Any]) -> pd.DataFrame:
    from csvbridge.fold.rejects import write_rejects

    path = done.work.folder / "rejects.csv"
    saved, done.report.line_labels = done.report.line_labels, None  # keep the lines
    try:
        if not write_rejects(done, frame.path, path):
            return _rejects_frame(None, columns, frame)
    finally:
        done.report.line_labels = saved
    return _rejects_frame(path, columns, frame)


# --------------------------------------------------------------------------- the face


def _mapping(mapping: Mapping | dict[str, Any] | str | Path | None) -> Mapping | str | Path | None:
    """A mapping given as a dict (as a notebook writes it) is validated like a file."""
    if isinstance(mapping, dict):
        from pydantic import ValidationError

        try:
            return Mapping.model_validate(mapping)
        except ValidationError as exc:
            raise ConfigError(f"invalid mapping: {exc}") from None
    return mapping


def convert_dataframe(
    df: pd.DataFrame,
    work_dir: str | Path | None = None,
    *,
    mapping: Mapping | dict[str, Any] | str | Path | None = None,
    kind: str = "conversions",
    settings: ConvertSettings | None = None,
    name: str = "<dataframe>",
    products_from_conversions: bool = False,
) -> FrameConverted:
    """Convert a DataFrame (one row per CSV row of an export) like a CSV file.

    Without `work_dir`, the objects live in a temporary folder removed by ``close()``
    (or a ``with`` block).  The report names rows by their labels (``df.index``).
    """
    mapping = _mapping(mapping)
    tmp = None
    if work_dir is None:
        tmp = tempfile.TemporaryDirectory(prefix="csvbridge-frame-")
        work_dir = tmp.name
    work = Path(work_dir)
    work.mkdir(parents=True, exist_ok=True)
    try:
        frame = frame_to_csv(df, work / "frame.csv")
        done = convert(
            frame.path,
            work / "work",
            kind=kind,
            settings=settings,
            mapping=mapping,
            name=name,
            products_from_conversions=products_from_conversions,
            line_labels=frame.label,
        )
        done.report.dialect = {"source": "DataFrame", "columns": len(df.columns)}
        rejects = _frame_rejects(done, frame, list(df.columns))
    except BaseException:
        if tmp is not None:
            tmp.cleanup()
        raise
    return FrameConverted(done.report, done, rejects, tmp)


def ship_dataframe(
    df: pd.DataFrame,
    settings: Settings,
    *,
    mapping: Mapping | dict[str, Any] | str | Path | None = None,
    kind: str = "conversions",
    sinks: list[str] | None = None,
    name: str = "<dataframe>",
    dry_run: bool = False,
    work_dir: str | Path | None = None,
) -> FrameOutcome:
    """Convert a DataFrame and deliver it to the configured sinks, as ``send`` does a
    file.  Same report (rows named by their labels); rejected rows as a DataFrame."""
    from csvbridge.pipeline import process_file

    mapping = _mapping(mapping)
    conv = settings.convert
    if isinstance(mapping, (str, Path)):
        conv = conv.model_copy(update={"mapping": Path(mapping)})
    with tempfile.TemporaryDirectory(prefix="csvbridge-frame-", dir=work_dir) as tmp:
        work = Path(tmp)
        frame = frame_to_csv(df, work / "frame.csv")
        if isinstance(mapping, Mapping):  # an object: handed over as a file
            import yaml

            mfile = work / "mapping.yaml"
            mfile.write_text(yaml.safe_dump(mapping.model_dump(mode="json", exclude_none=True)))
            conv = conv.model_copy(update={"mapping": mfile})
        outcome = process_file(
            frame.path,
            work / "work",
            settings,
            name=name,
            kind=kind,
            sinks=sinks or settings.sinks,
            convert_settings=conv,
            dry_run=dry_run,
        )
        outcome.report.line_labels = frame.label
        if not outcome.report.fatal:
            outcome.report.dialect = {"source": "DataFrame", "columns": len(df.columns)}
        rejects = _rejects_frame(outcome.rejects, list(df.columns), frame)
    return FrameOutcome(outcome.report, outcome.state, rejects)


# --------------------------------------------------------------------------- -> DataFrame


def _records(x: Any) -> Iterator[dict[str, Any]]:
    if isinstance(x, FrameConverted):
        yield from x.objects()
    elif isinstance(x, (Converted, str, Path)):
        path = x.ndjson if isinstance(x, Converted) else Path(x)
        with open(path, "rb") as f:
            for line in f:
                if line.strip():
                    yield orjson.loads(line)
    else:
        for item in x:
            if isinstance(item, Record):
                yield orjson.loads(item.json)
            elif isinstance(item, (bytes, str)):
                yield orjson.loads(item)
            else:
                yield item


def to_dataframe(x: Any, *, items: bool = False) -> pd.DataFrame:
    """A DataFrame of conversions (or products): an NDJSON path, a conversion's result,
    or records (dicts, NDJSON lines, `Record`s); or of rejects: a `FrameConverted`'s or
    `FrameOutcome`'s rejected rows, or a rejects CSV file (``*.csv``).

    Nested objects become dot-path columns (``billing_address.postal_code``); lists
    (``conversion_items``) stay lists, or with ``items=True`` give one row per item
    (``conversion_items.product.id``...) beside the conversion's own columns.
    """
    pd = _pandas()
    if isinstance(x, FrameOutcome):
        return x.rejects
    if isinstance(x, (str, Path)) and str(x).lower().endswith((".csv", ".csv.gz")):
        return _read_rejects(Path(x))
    records: Iterable[dict[str, Any]] = _records(x)
    if items:
        records = _explode(records)
    return pd.json_normalize(list(records), sep=".")


def _explode(records: Iterable[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    for rec in records:
        lists = {
            k: v for k, v in rec.items() if isinstance(v, list) and v and isinstance(v[0], dict)
        }
        if not lists:
            yield rec
            continue
        key, its = next(iter(lists.items()))
        base = {k: v for k, v in rec.items() if k != key}
        for item in its:
            yield {**base, key: item}


def _read_rejects(path: Path) -> pd.DataFrame:
    """A rejects file (any dialect csvbridge reads) as text columns, cells restored."""
    pd = _pandas()
    from csvbridge.read.csvfile import CsvFile, parse_chunk

    with CsvFile(path) as csvf:
        header = [restore(h) for h in csvf.header]
        rows = [
            [restore(c) for c in row.cells]
            for data, first in csvf.chunks()
            for row in parse_chunk(data, first, csvf.dialect).rows
        ]
    return pd.DataFrame(rows, columns=header, dtype=object)


__all__ = [
    "FrameConverted",
    "FrameOutcome",
    "convert_dataframe",
    "frame_to_csv",
    "ship_dataframe",
    "to_dataframe",
    "value_text",
]
