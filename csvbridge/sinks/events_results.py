"""What became of the purchase events of one request (`EventBatch`) and of a whole send
(`EventsResult`).

Why apart from the send: the caller's ledger and the run report read these, not the
send loop; every record read ends in exactly one of their lists (or counted skipped).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from csvbridge.fold.assemble import Record
from csvbridge.report import Problem


@dataclass
class EventBatch:
    """What became of one request (and of events refused before it); for ``on_batch``."""

    batch_no: int
    sent: list[Record] = field(default_factory=list)  # the API answered 200
    rejected: list[tuple[Record, list[Problem]]] = field(default_factory=list)
    not_sent: list[Record] = field(default_factory=list)  # never answered: retry later
    event_ids: dict[str, str] = field(default_factory=dict)  # record id -> context.event_id
    status: int | None = None
    error: str | None = None

    @property
    def answered(self) -> bool:
        return not self.not_sent

    @property
    def sent_ids(self) -> list[str]:
        return [r.id for r in self.sent]

    @property
    def rejected_ids(self) -> list[str]:
        return [r.id for r, _ in self.rejected]


@dataclass(repr=False)
class EventsResult:
    """A whole send: every record read is in exactly one list (or counted skipped)."""

    sent_ids: list[str] = field(default_factory=list)
    rejected: list[tuple[Record, list[Problem]]] = field(default_factory=list)
    not_sent: list[Record] = field(default_factory=list)
    skipped: int = 0
    requests: int = 0
    retries: int = 0
    bytes_sent: int = 0
    status_counts: Counter[int | str] = field(default_factory=Counter)
    seconds: float = 0.0
    aborted: str | None = None

    @property
    def sent(self) -> int:
        return len(self.sent_ids)

    @property
    def events_per_second(self) -> float:
        return self.sent / self.seconds if self.seconds > 0 else 0.0

    def add(self, outcome: EventBatch) -> None:
        self.sent_ids.extend(outcome.sent_ids)
        self.rejected.extend(outcome.rejected)
        self.not_sent.extend(outcome.not_sent)

    def summary(self) -> str:
        text = (
            f"sent {self.sent}, rejected {len(self.rejected)}, not sent {len(self.not_sent)}, "
            f"skipped {self.skipped} in {self.seconds:.1f} s ({self.events_per_second:.0f} "
            f"events/s, {self.requests} requests, {self.retries} retries)"
        )
        return text + (f"; stopped early: {self.aborted}" if self.aborted else "")

    def __repr__(self) -> str:
        return f"EventsResult({self.summary()})"


def _problem(record: Record, code: str, detail: str) -> Problem:
    return Problem(code=code, detail=detail, lines=record.lines, id=record.id)
