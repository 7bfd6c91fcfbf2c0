"""``csvbridge status``: what the ledger says, for a person or a script.

Why from the ledger only: it is the one place every replica writes to, so one command
on any machine shows the whole installation (files by source and status, the files in
progress with what is shipped and what remains, the last errors of each source, the
replicas alive and the leases they hold), without touching a drop or the API.

The remaining count and ETA of a file in progress are estimates: the ledger knows the
ids accepted so far, not how many a file holds until it is finished; the total is
estimated from the file's size and the conversions per byte of the files of the same
source done before (``estimated_total`` is None without such history).
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import Any

from csvbridge.config import Settings
from csvbridge.drops.ledger import LedgerStore, open_ledger
from csvbridge.drops.ledger_rows import LeaseEntry, ProgressEntry, ReplicaEntry, SourceError
from csvbridge.drops.lock import Owner
from csvbridge.report import FileState


@dataclass
class FileProgress:
    """A file in progress."""

    source: str
    name: str
    file_id: int
    attempts: int
    started_at: float
    shipped: int
    rejected: int
    estimated_total: int | None
    remaining: int | None
    rate_per_second: float | None  # ids accepted per second by the current attempt
    eta_seconds: float | None
    owner: str | None  # the claim's owner token, None when nobody holds it
    last_batch_at: float | None


@dataclass
class SourceStatus:
    source: str
    files: dict[str, int]  # status -> count


@dataclass
class LedgerStatus:
    """Everything ``csvbridge status`` shows."""

    ledger: str
    schema_version: int
    sources: list[SourceStatus]
    in_progress: list[FileProgress]
    errors: list[SourceError]
    replicas: list[ReplicaEntry]
    leases: list[LeaseEntry]
    totals: dict[str, Any] = field(default_factory=dict)
    at: float = field(default_factory=time.time)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def describe(self) -> str:
        """A plain-text page for a terminal."""
        lines = [f"ledger {self.ledger} (schema {self.schema_version})", "", "files by source:"]
        for s in self.sources:
            counts = ", ".join(f"{n} {status}" for status, n in s.files.items())
            lines.append(f"  {s.source}: {counts}")
        lines += ["", f"in progress ({len(self.in_progress)}):"]
        for f in self.in_progress:
            remaining = "?" if f.remaining is None else f"~{f.remaining}"
            eta = "?" if f.eta_seconds is None else _duration(f.eta_seconds)
            rate = "" if f.rate_per_second is None else f", {f.rate_per_second:.1f}/s"
            holder = _who(f.owner) if f.owner else "nobody (resumed on the next pass)"
            lines.append(
                f"  {f.source}/{f.name} #{f.file_id} attempt {f.attempts}: {f.shipped} shipped, "
                f"{remaining} remaining{rate}, ETA {eta}; held by {holder}"
            )
        lines += ["", "last errors:"]
        lines += [f"  {e.source} {_when(e.at)}: {e.message}" for e in self.errors] or ["  none"]
        lines += ["", f"replicas ({sum(r.alive for r in self.replicas)} alive):"]
        for r in self.replicas:
            state = "alive" if r.alive else f"expired {_duration(self.at - r.expires_at)} ago"
            lines.append(
                f"  {_who(r.owner)}: up since {_when(r.started_at)}, heartbeat "
                f"{_duration(self.at - r.heartbeat_at)} ago, {state}"
            )
        lines += ["", "leases:"]
        for lease in self.leases:
            state = "held" if lease.alive else "expired"
            lines.append(f"  {lease.name}: {state} by {_who(lease.owner)}")
        if not self.leases:
            lines.append("  none")
        return "\n".join(lines)


def _who(token: str) -> str:
    owner = Owner.parse(token)
    return f"pid {owner.pid} on {owner.host}" if owner else token


def _when(ts: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts))


def _duration(seconds: float) -> str:
    seconds = max(0.0, seconds)
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def _ids_per_byte(ledger: LedgerStore) -> dict[str, float]:
    """Conversions (shipped + rejected + not shipped) per byte of done files, by source."""
    totals: dict[str, list[int]] = {}
    for e in ledger.files(FileState.DONE, limit=200):
        ids = (e.shipped or 0) + (e.rejected or 0) + (e.not_shipped or 0)
        if e.size > 0 and ids > 0:
            t = totals.setdefault(e.source, [0, 0])
            t[0], t[1] = t[0] + ids, t[1] + e.size
    return {s: ids / size for s, (ids, size) in totals.items()}


def _progress(
    p: ProgressEntry, per_byte: dict[str, float], owners: dict[tuple[str, str], str]
) -> FileProgress:
    f = p.file
    total = round(f.size * per_byte[f.source]) if f.source in per_byte else None
    remaining = None if total is None else max(0, total - p.accepted - p.rejected)
    rate = None
    if p.batches >= 2 and p.first_batch_at is not None and p.last_batch_at is not None:
        span = p.last_batch_at - p.first_batch_at
        rate = p.batch_accepted / span if span > 0 else None
    eta = remaining / rate if remaining is not None and rate else None
    return FileProgress(
        f.source,
        f.name,
        f.id,
        f.attempts,
        f.started_at,
        p.accepted,
        p.rejected,
        total,
        remaining,
        rate,
        eta,
        owners.get((f.source, f.name)),
        p.last_batch_at,
    )


def ledger_status(settings: Settings, ledger: LedgerStore | None = None) -> LedgerStatus:
    """Read the status from `ledger` (or the one `settings` names, opened and closed)."""
    if ledger is None:
        password = settings.state.ledger_password
        store = open_ledger(
            settings.state.ledger, password=password.get_secret_value() if password else None
        )
        try:
            return ledger_status(settings, store)
        finally:
            store.close()
    counts = ledger.counts_by_source()
    empty = {s.value: 0 for s in (FileState.PROCESSING, FileState.DONE, FileState.FAILED)}
    names = [s.name for s in settings.sources] + sorted(
        set(counts) - {s.name for s in settings.sources}
    )
    owners = {(c.source, c.path.rsplit("/", 1)[-1]): c.owner for c in ledger.claims()}
    per_byte = _ids_per_byte(ledger)
    stats = ledger.stats()
    return LedgerStatus(
        ledger=ledger.location,
        schema_version=ledger.schema_version,
        sources=[SourceStatus(n, counts.get(n, dict(empty))) for n in names],
        in_progress=[_progress(p, per_byte, owners) for p in ledger.in_progress()],
        errors=ledger.last_errors(),
        replicas=ledger.replicas(),
        leases=ledger.leases(),
        totals={
            k: stats[k]
            for k in (
                "files_total",
                "files_resumed",
                "rows",
                "shipped",
                "rejected",
                "not_shipped",
                "last_done_at",
            )
        },
    )
