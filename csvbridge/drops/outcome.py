"""What a pass did, as typed results: per file, per source, per pass.

Kept apart from the runner so that callers (the CLI, the demo, tests, a library user)
read one small module to know what `run_once` returns.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from csvbridge.errors import TransientError
from csvbridge.report import FileState

if TYPE_CHECKING:
    from csvbridge.drops.inboxes import PullCounts


@dataclass
class FileOutcome:
    """One file of one pass: where it stands now, its counts and, unless it is done, why."""

    file: str
    source: str
    state: FileState
    rows: int = 0
    shipped: int = 0  # objects delivered, over every attempt
    shipped_now: int = 0  # of which by this attempt
    rejected: int = 0  # by csvbridge or by the API
    not_shipped: int = 0
    moved_to: str | None = None  # path in the drop; None if deleted or still in place
    report: str | None = None  # path of its report in the drop
    reason: str | None = None  # why it failed, was skipped or is left for a retry

    def describe(self) -> str:
        """The pass log's line for this file."""
        text = f"{self.source}/{self.file}: {self.state.value}"
        if self.state in (FileState.DONE, FileState.FAILED, FileState.DUPLICATE):
            text += f" ({self.rows} rows, {self.shipped_now} shipped, {self.rejected} rejected)"
        return text + (f": {self.reason}" if self.reason else "")


class LeftForRetry(TransientError):
    """A failure of the environment while handling a file (disk full, permission denied,
    the drop or the ledger gone): the file stays where it is, in ``processing/`` or in
    the drop, and is retried by a later pass.  Carries the file's outcome."""

    def __init__(self, outcome: FileOutcome) -> None:
        super().__init__(f"{outcome.file}: {outcome.reason}", source=outcome.source)
        self.outcome = outcome


@dataclass
class SourceResult:
    """One source of one pass."""

    name: str
    files: list[FileOutcome] = field(default_factory=list)
    error: str | None = None  # the source, or a file's environment, failed: exit 3
    pulled: PullCounts | None = None  # an API source (Commerce HQ): what this pass pulled

    @property
    def unfinished(self) -> bool:
        """True when a file was left in processing/: newer files must wait for it."""
        return any(f.state is FileState.PROCESSING for f in self.files)


@dataclass
class PassSummary:
    """One pass over every source: what happened, and the exit code cron should see."""

    sources: list[SourceResult] = field(default_factory=list)
    seconds: float = 0.0
    fatal: str | None = None  # the run stopped: a configuration fix is needed

    @property
    def files(self) -> list[FileOutcome]:
        return [f for s in self.sources for f in s.files]

    @property
    def exit_code(self) -> int:
        if self.fatal:
            return 2
        if any(s.error for s in self.sources) or any(
            f.state is FileState.PROCESSING for f in self.files
        ):
            return 3
        if any(f.state is FileState.FAILED for f in self.files):
            return 1
        return 0

    def totals(self) -> dict[str, int]:
        """Counts over the files taken (skipped files are counted apart)."""
        taken = [f for f in self.files if f.state is not FileState.SKIPPED]
        return {
            "files": len(taken),
            "rows": sum(f.rows for f in taken),
            "shipped": sum(f.shipped for f in taken),
            "rejected": sum(f.rejected for f in taken),
            "failed_files": sum(1 for f in taken if f.state is FileState.FAILED),
            "skipped_files": len(self.files) - len(taken),
        }

    def describe(self) -> str:
        t = self.totals()
        text = (
            f"pass: {t['files']} files, {t['rows']} rows, {t['shipped']} shipped, "
            f"{t['rejected']} rejected in {self.seconds:.1f} s"
        )
        if t["skipped_files"]:
            text += f", {t['skipped_files']} skipped"
        for s in self.sources:
            if s.pulled is not None:
                text += f"; source {s.name} {s.pulled.describe()}"
            if s.error:
                text += f"; source {s.name}: {s.error}"
        return text
