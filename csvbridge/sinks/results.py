"""What a shipment produced: one outcome per batch, one result per `ship` call.

Separate from the shipper so the pipeline, the ledger and the reports can hold results
without pulling in the HTTP machinery.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field

from csvbridge.config import Kind
from csvbridge.fold.assemble import Record
from csvbridge.report import Problem


@dataclass(frozen=True, slots=True)
class Endpoint:
    """Where a shipment goes: what ``--dry-run`` names and every request is sent to."""

    kind: Kind
    url: str
    site_id: str

    def describe(self) -> str:
        return f"POST {self.kind} to {self.url} (site {self.site_id})"


@dataclass(frozen=True, slots=True)
class Rejection:
    """One record the API refused, with its reasons."""

    record: Record
    problems: list[Problem]

    def __iter__(self) -> Iterator[Record | list[Problem]]:
        """``record, problems = rejection`` reads as the (record, problems) pair it was."""
        return iter((self.record, self.problems))


@dataclass
class BatchOutcome:
    """What became of one batch; ``on_batch`` receives it as soon as the API answered."""

    batch_no: int
    accepted: list[Record] = field(default_factory=list)
    rejected: list[Rejection] = field(default_factory=list)
    not_shipped: list[Record] = field(default_factory=list)  # the API never answered
    error: str | None = None  # why not shipped

    @property
    def answered(self) -> bool:
        return not self.not_shipped


@dataclass(repr=False)
class ShipResult:
    """A whole shipment: every record read is in exactly one list (or counted skipped)."""

    accepted_ids: list[str] = field(default_factory=list)
    rejected: list[Rejection] = field(default_factory=list)
    not_shipped: list[Record] = field(default_factory=list)
    skipped: int = 0  # ids in skip_ids: accepted by an earlier run, not sent again
    requests: int = 0
    retries: int = 0
    status_counts: Counter[int | str] = field(default_factory=Counter)  # 202, 429, "TIMEOUT"
    seconds: float = 0.0
    aborted: str | None = None  # why the shipment stopped early, if it did
    endpoint: Endpoint | None = None  # where it went (None: nothing could be sent)

    @property
    def accepted(self) -> int:
        return len(self.accepted_ids)

    @property
    def objects_per_second(self) -> float:
        """Objects the API took (accepted or rejected) per second of shipment."""
        answered = self.accepted + len(self.rejected)
        return answered / self.seconds if self.seconds > 0 else 0.0

    def add(self, outcome: BatchOutcome) -> None:
        self.accepted_ids.extend(r.id for r in outcome.accepted)
        self.rejected.extend(outcome.rejected)
        self.not_shipped.extend(outcome.not_shipped)

    def summary(self) -> str:
        text = (
            f"accepted {self.accepted}, rejected {len(self.rejected)}, not shipped "
            f"{len(self.not_shipped)}, skipped {self.skipped} in {self.seconds:.1f} s "
            f"({self.objects_per_second:.1f} obj/s, {self.requests} requests, "
            f"{self.retries} retries)"
        )
        return text + (f"; stopped early: {self.aborted}" if self.aborted else "")

    def __repr__(self) -> str:  # counts only: the lists can hold millions of records
        return f"ShipResult({self.summary()})"
