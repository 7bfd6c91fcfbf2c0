"""Run reports: every source row accounted for, problems in the bulk API's error shape.

A problem is recorded once per occurrence (`Problem`) and aggregated the way the bulk
API aggregates its own errors: one entry per (code, property, column) with ``detail``,
``meta.property``, ``meta.line_numbers`` (source CSV lines), ``meta.error_count`` and
``meta.ids``.  Problems found by csvbridge and errors returned by the API land in the
same report, so a user reads one format.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, TextIO

import orjson

MAX_LINES_LISTED = 1000  # per aggregated problem; error_count stays exact
MAX_IDS_LISTED = 100
MAX_VALUES_LISTED = 10
MAX_VALUE_CHARS = 200  # a value quoted in a report or a log line (cells can be huge)
MAX_DETAIL_CHARS = 500  # details quote values too ("'…' is not a number")


def clip(text: str, limit: int = MAX_VALUE_CHARS) -> str:
    """`text`, cut in the middle past `limit` characters, saying how much was cut:
    a report must stay readable (and small) when a cell holds megabytes."""
    if len(text) <= limit:
        return text
    keep = max(limit // 2 - 10, 1)
    return f"{text[:keep]}…[{len(text) - 2 * keep:,} characters cut]…{text[-keep:]}"


class FileState(StrEnum):
    """The one vocabulary for where a file stands, shared by the pipeline, the ledger,
    the drop runner and its summaries (the values are what the ledger stores)."""

    PROCESSING = "processing"  # claimed, not finished (not all shipped yet): resumed later
    DONE = "done"  # every valid object delivered; filed in done/ (or deleted)
    FAILED = "failed"  # rows rejected, or the file unusable: filed in failed/ with reasons
    DUPLICATE = "duplicate"  # same content already done: filed in done/, not sent again
    SKIPPED = "skipped"  # not taken (claimed elsewhere, unsafe name): left where it is

    @property
    def finished(self) -> bool:
        """True when the file left processing/ for good."""
        return self in (FileState.DONE, FileState.FAILED, FileState.DUPLICATE)


@dataclass(slots=True)
class Problem:
    """One occurrence of one problem, with everything needed to find and fix it."""

    code: str
    detail: str
    property: str | None = None
    lines: tuple[int, ...] = ()
    id: str | None = None
    column: str | None = None
    value: str | None = None
    warning: bool = False

    def reason(self) -> str:
        """One line for a rejects file's ``csvbridge_error`` cell: the code, the field it
        is about (the source column, else the documented property), the detail."""
        field = self.column or self.property
        return f"{self.code} ({field}): {self.detail}" if field else f"{self.code}: {self.detail}"

    def as_text(self, file: str | None = None) -> str:
        where = []
        if file:
            where.append(file)
        if self.lines:
            where.append("line " + ",".join(map(str, self.lines[:5])))
        if self.column:
            where.append(f"column {self.column!r}")
        if self.value is not None:
            where.append(f"value {self.value[:60]!r}")
        kind = "warning" if self.warning else "error"
        return f"{kind} {self.code}: {self.detail}" + (f" [{'; '.join(where)}]" if where else "")


@dataclass(slots=True)
class _Aggregate:
    code: str
    detail: str
    property: str | None
    column: str | None
    count: int = 0
    lines: list[int] = field(default_factory=list)
    ids: list[str] = field(default_factory=list)
    values: list[str] = field(default_factory=list)

    def add(self, p: Problem) -> None:
        self.count += 1
        room = MAX_LINES_LISTED - len(self.lines)
        if room > 0:
            self.lines.extend(p.lines[:room])
        if p.id is not None and len(self.ids) < MAX_IDS_LISTED and p.id not in self.ids:
            self.ids.append(p.id)
        if (
            p.value is not None
            and len(self.values) < MAX_VALUES_LISTED
            and p.value not in self.values
        ):
            self.values.append(p.value)

    def as_dict(self) -> dict[str, Any]:
        meta: dict[str, Any] = {}
        if self.property:
            meta["property"] = self.property
        if self.column:
            meta["column"] = self.column
        meta["line_numbers"] = sorted(set(self.lines))
        meta["error_count"] = self.count
        meta["ids"] = self.ids
        if self.values:
            meta["values"] = self.values
        return {"code": self.code, "detail": self.detail, "meta": meta}


class ProblemLog:
    """Aggregates problems; keeps memory bounded whatever the number of occurrences."""

    def __init__(self) -> None:
        self._errors: dict[tuple[Any, ...], _Aggregate] = {}
        self._warnings: dict[tuple[Any, ...], _Aggregate] = {}
        self.raw: list[Problem] = []  # the first few occurrences, as recorded

    def add(self, p: Problem) -> None:
        if p.value is not None and len(p.value) > MAX_VALUE_CHARS:
            p.value = clip(p.value)
        if len(p.detail) > MAX_DETAIL_CHARS:
            p.detail = clip(p.detail, MAX_DETAIL_CHARS)
        if len(self.raw) < 1000:
            self.raw.append(p)
        table = self._warnings if p.warning else self._errors
        key = (p.code, p.property, p.column, p.detail if p.property is None else None)
        agg = table.get(key)
        if agg is None:
            agg = table[key] = _Aggregate(p.code, p.detail, p.property, p.column)
        agg.add(p)

    def extend(self, problems: list[Problem]) -> None:
        for p in problems:
            self.add(p)

    @property
    def errors(self) -> list[dict[str, Any]]:
        return [a.as_dict() for a in self._errors.values()]

    @property
    def warnings(self) -> list[dict[str, Any]]:
        return [a.as_dict() for a in self._warnings.values()]

    @property
    def error_count(self) -> int:
        return sum(a.count for a in self._errors.values())

    @property
    def warning_count(self) -> int:
        return sum(a.count for a in self._warnings.values())


@dataclass
class EventCounts:
    """The ``events`` sink's part of a file (purchase events to the tracking API): each
    valid object is sent, rejected (EVENT_TOO_LARGE, HTTP 400) or not sent yet."""

    sent: int = 0  # over every attempt
    sent_by_earlier_attempts: int = 0
    rejected: int = 0
    not_sent: int = 0
    requests: int = 0

    def as_dict(self) -> dict[str, int]:
        return {
            "sent": self.sent,
            "sent_by_earlier_attempts": self.sent_by_earlier_attempts,
            "rejected": self.rejected,
            "not_sent": self.not_sent,
            "requests": self.requests,
        }


@dataclass
class Report:
    """What happened to one source file (or stdin)."""

    file: str
    kind: str = "conversions"
    rows_read: int = 0
    rows_skipped: int = 0  # blank lines: deliberately not turned into anything
    rows_converted: int = 0  # rows inside valid objects
    rows_rejected: int = 0  # rows inside rejected objects, or unreadable rows
    objects_valid: int = 0
    objects_rejected: int = 0
    # filled by a sink
    objects_shipped: int = 0
    objects_rejected_by_api: int = 0
    objects_not_shipped: int = 0
    rows_shipped: int = 0
    rows_rejected_by_api: int = 0
    rows_not_shipped: int = 0
    # objects of objects_shipped that an earlier, interrupted attempt already delivered
    shipped_by_earlier_attempts: int = 0
    duplicate_of: str | None = None  # same content already processed: "source/name (#id)"
    events: EventCounts | None = None  # set when the events sink ran
    duration_seconds: float = 0.0
    dialect: dict[str, Any] = field(default_factory=dict)
    outputs: dict[str, str] = field(default_factory=dict)
    problems: ProblemLog = field(default_factory=ProblemLog)
    fatal: str | None = None  # set when the file could not be used at all
    # names of source lines in the report (a sheet's row numbers, a DataFrame's labels):
    # lines stay CSV line numbers inside; they are named when the report is written
    line_labels: Callable[[int], Any] | None = field(default=None, repr=False, compare=False)

    def label(self, line: int) -> Any:
        """What the report calls source line `line`."""
        return line if self.line_labels is None else self.line_labels(line)

    def _labelled(self, problems: list[dict[str, Any]]) -> list[dict[str, Any]]:
        if self.line_labels is not None:
            for p in problems:
                meta = p["meta"]
                meta["line_numbers"] = [self.line_labels(n) for n in meta["line_numbers"]]
        return problems

    @property
    def accounted(self) -> bool:
        """True when every row read is converted, rejected or skipped."""
        return self.rows_read == self.rows_converted + self.rows_rejected + self.rows_skipped

    def as_dict(self) -> dict[str, Any]:
        return {
            "file": self.file,
            "kind": self.kind,
            "fatal": self.fatal,
            "rows": {
                "read": self.rows_read,
                "converted": self.rows_converted,
                "rejected": self.rows_rejected,
                "skipped": self.rows_skipped,
                "shipped": self.rows_shipped,
                "rejected_by_api": self.rows_rejected_by_api,
                "not_shipped": self.rows_not_shipped,
            },
            self.kind: {
                "valid": self.objects_valid,
                "rejected": self.objects_rejected,
                "shipped": self.objects_shipped,
                "rejected_by_api": self.objects_rejected_by_api,
                "not_shipped": self.objects_not_shipped,
            },
            # of the shipped objects, those an earlier interrupted attempt delivered
            "shipped_by_earlier_attempts": self.shipped_by_earlier_attempts,
            "duplicate_of": self.duplicate_of,
            **({"events": self.events.as_dict()} if self.events is not None else {}),
            "accounted": self.accounted,
            "dialect": self.dialect,
            "outputs": self.outputs,
            "duration_seconds": round(self.duration_seconds, 3),
            "errors": self._labelled(self.problems.errors),
            "warnings": self._labelled(self.problems.warnings),
        }

    def to_json(self) -> bytes:
        return orjson.dumps(self.as_dict(), option=orjson.OPT_INDENT_2)

    def summary(self) -> str:
        """A few human lines for stderr."""
        lines = [
            f"{self.file}: {self.rows_read} rows read -> {self.objects_valid} {self.kind} valid, "
            f"{self.objects_rejected} rejected ({self.rows_rejected} rows), "
            f"{self.rows_skipped} rows skipped"
        ]
        if self.fatal:
            lines.append(f"  file not usable: {self.fatal}")
        if self.objects_shipped or self.objects_rejected_by_api or self.objects_not_shipped:
            lines.append(
                f"  shipped {self.objects_shipped}, rejected by the API "
                f"{self.objects_rejected_by_api}, not shipped {self.objects_not_shipped}"
            )
        if self.events is not None:
            e = self.events
            lines.append(f"  events: sent {e.sent}, rejected {e.rejected}, not sent {e.not_sent}")
        for e in self._labelled(self.problems.errors[:10]):
            lines.append(_short("error", e))
        for w in self._labelled(self.problems.warnings[:5]):
            lines.append(_short("warning", w))
        return "\n".join(lines)

    def print_summary(self, stream: TextIO = sys.stderr) -> None:
        print(self.summary(), file=stream)


def _short(kind: str, agg: dict[str, Any]) -> str:
    meta = agg["meta"]
    lines = meta.get("line_numbers") or []
    shown = ",".join(map(str, lines[:8])) + ("..." if len(lines) > 8 else "")
    col = f" column {meta['column']!r}" if meta.get("column") else ""
    where = f" (lines {shown}{col})" if shown or col else ""
    return f"  {kind} {agg['code']} x{meta['error_count']}: {agg['detail']}{where}"
