"""One file through the whole pipeline: convert, then ship (API) and/or write a feed.

`process_file` is the unit of work shared by ``csvbridge send`` and by the drop runner.
It converts into a work folder, then streams the valid objects to the sinks.  With a
ledger, every batch the API answered is recorded before the next one is taken, and
objects already accepted by an earlier attempt are not sent again — that is how a
``kill -9`` in the middle of a file resumes without loss and without re-sending.

The report accounts for every row: converted rows end up shipped, rejected by the API,
or not shipped (yet); rejected rows carry their reason; blank rows are skipped.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import BinaryIO

from csvbridge.config import ConvertSettings, Settings
from csvbridge.errors import (
    ApiTerminalError,
    CsvBridgeError,
    InputError,
    StopsRun,
    TransientError,
)
from csvbridge.files import move_into_place, open_private, write_bytes
from csvbridge.fold.assemble import Record
from csvbridge.fold.engine import Converted, convert, read_records, write_rejects
from csvbridge.fold.slots import convert_slot
from csvbridge.progress import showing
from csvbridge.report import EventCounts, FileState, Problem, Report

log = logging.getLogger(__name__)


class FeedUnavailable(TransientError):
    """The feed could not be uploaded (server refused the write, went away, disk full).

    The environment's fault, not the file's: the file is kept for a retry."""


@dataclass
class Outcome:
    """What happened to one file, and where its artefacts are (local paths).

    ``state`` is DONE, FAILED (rows rejected or file unusable) or PROCESSING (not every
    valid object shipped yet: to be resumed)."""

    report: Report
    state: FileState
    rejects: Path | None = None

    @property
    def exit_code(self) -> int:
        if self.report.fatal:
            return 2
        if self.state is FileState.PROCESSING:
            return 3
        return 1 if self.state is FileState.FAILED else 0

    @property
    def reason(self) -> str | None:
        """Why the file failed, in one line: the fatal error or the first error's code
        and detail (what an operator reads in the pass log)."""
        if self.report.fatal:
            return self.report.fatal
        errors = self.report.problems.errors
        if errors:
            first = errors[0]
            column = first["meta"].get("column") or first["meta"].get("property")
            where = f" ({column})" if column else ""
            more = f" (+{len(errors) - 1} more kinds)" if len(errors) > 1 else ""
            return f"{first['code']}{where}: {first['detail']}{more}"
        return None


class _Tally:
    """Counts rows and objects of what the sinks did; records API rejections."""

    def __init__(self, report: Report, rejected_out: Path) -> None:
        self.report = report
        self.rejected_out = rejected_out
        self.lock = threading.Lock()

    def accepted(self, records: list[Record]) -> None:
        self.report.objects_shipped += len(records)
        self.report.rows_shipped += sum(len(r.lines) for r in records)

    def rejected(self, pairs: list[tuple[Record, list[Problem]]]) -> None:
        r = self.report
        with open_private(self.rejected_out, "a", encoding="utf-8") as f:
            for record, problems in pairs:
                r.objects_rejected_by_api += 1
                r.rows_rejected_by_api += len(record.lines)
                for p in problems:
                    p.lines = p.lines or record.lines
                    p.id = p.id or record.id
                    r.problems.add(p)
                first = problems[0] if problems else None
                reason = f"API {first.code}: {first.detail}" if first else "rejected by the API"
                f.write(f"{','.join(map(str, record.lines))}\t{reason}\n")


def process_file(
    path: Path,
    work: Path,
    settings: Settings,
    *,
    name: str | None = None,
    kind: str = "conversions",
    sinks: list[str] | None = None,
    convert_settings: ConvertSettings | None = None,
    products_from_conversions: bool = False,
    dry_run: bool = False,
    progress: bool | None = None,
    stop: threading.Event | None = None,
    accepted_before: set[str] | None = None,
    on_accepted: Callable[[int, list[str], list[str]], None] | None = None,
    events_before: set[str] | None = None,
    on_events: Callable[[int, list[str], list[str]], None] | None = None,
) -> Outcome:
    """Convert `path` and deliver it; returns the outcome with a complete report.

    ``accepted_before`` holds ids an earlier attempt already delivered (from the ledger);
    ``on_accepted(batch_no, accepted_ids, rejected_ids)`` is called as soon as the API
    answered a batch, so the caller can make it durable before anything else happens.
    ``events_before`` / ``on_events`` do the same for the ``events`` sink, apart: an id
    the bulk API has may still be owed to the tracking API, and the other way round.
    """
    sinks = sinks or ["api"]
    try:
        # sources in parallel: conversions share the machine's cores (fold/slots.py)
        with convert_slot(path, convert_settings or settings.convert):
            done = convert(
                path,
                work,
                kind=kind,
                settings=convert_settings or settings.convert,
                name=name or path.name,
                products_from_conversions=products_from_conversions,
            )
    except InputError as exc:
        report = Report(file=name or path.name, kind=kind, fatal=exc.message)
        return Outcome(report, FileState.FAILED)
    report = done.report
    kind = report.kind  # products when they were extracted from conversions
    if dry_run:
        _plan(report, settings, sinks)
        return Outcome(report, FileState.FAILED if report.objects_rejected else FileState.DONE)
    if "feed" in sinks:
        _feed(done, settings, report)
    incomplete = False
    if "api" in sinks:
        incomplete = _ship(
            done, settings, report, kind, progress, stop, accepted_before or set(), on_accepted
        )
    if "events" in sinks:
        events_incomplete = _send_events(
            done, settings, report, stop, events_before or set(), on_events,
            counts_as_shipped="api" not in sinks,
        )  # fmt: skip
        incomplete = incomplete or events_incomplete
    elif "feed" in sinks and "api" not in sinks:
        report.objects_shipped = report.objects_valid
        report.rows_shipped = report.rows_converted
    rejects = None
    events_rejected = report.events.rejected if report.events is not None else 0
    if report.objects_rejected or report.objects_rejected_by_api or events_rejected:
        rejects = work / "rejects.csv"
        write_rejects(done, path, rejects)
    if incomplete:
        state = FileState.PROCESSING
    elif report.objects_rejected or report.objects_rejected_by_api or events_rejected:
        state = FileState.FAILED
    else:
        state = FileState.DONE
    return Outcome(report, state, rejects)


def _plan(report: Report, settings: Settings, sinks: list[str]) -> None:
    from csvbridge.sinks import plan

    if "api" in sinks:
        p = plan(report.objects_valid, settings.api, report.kind)  # type: ignore[arg-type]
        report.outputs["plan"] = p.describe()
    if "feed" in sinks:
        report.outputs["feed"] = f"would write a feed to {settings.feed.target}"


def _feed(done: Converted, settings: Settings, report: Report) -> None:
    import orjson

    from csvbridge.sinks.feed import deliver_feed, feed_filename, write_feed

    fs = settings.feed
    local = done.ndjson.parent / feed_filename(fs.filename_template, report.kind, gzip=fs.gzip)

    def objects() -> Iterator[dict[str, object]]:
        with open(done.ndjson, "rb") as nd:
            for line in nd:
                yield orjson.loads(line)

    stats = write_feed(objects(), local, report.kind, gzip=fs.gzip)  # type: ignore[arg-type]
    try:
        remote = deliver_feed(local, fs, rows=stats.rows)
    except (TransientError, StopsRun):
        raise
    except (CsvBridgeError, OSError) as exc:  # 553 refused, 550 permission, disk full...
        raise FeedUnavailable(f"feed upload failed: {exc}", target=fs.target) from None
    report.outputs["feed"] = (
        f"{fs.target.rstrip('/')}/{remote}" if remote else "(empty: not uploaded)"
    )


def _ship(
    done: Converted,
    settings: Settings,
    report: Report,
    kind: str,
    progress: bool | None,
    stop: threading.Event | None,
    accepted_before: set[str],
    on_accepted: Callable[[int, list[str], list[str]], None] | None,
) -> bool:
    """Ship the valid objects; True when some were not shipped (retry later)."""
    from csvbridge.sinks import BatchOutcome, ShipResult, ship

    rejected_tsv = done.rejected
    tally = _Tally(report, rejected_tsv)

    def records() -> Iterator[Record]:
        for rec in read_records(done.ndjson, done.index):
            if rec.id in accepted_before:
                tally.accepted([rec])  # shipped by an earlier attempt of this file
                continue
            yield rec

    def on_batch(outcome: BatchOutcome) -> None:
        if on_accepted is not None and (outcome.accepted or outcome.rejected):
            on_accepted(
                outcome.batch_no,
                [r.id for r in outcome.accepted],
                [r.id for r, _ in outcome.rejected],
            )
        tally.accepted(outcome.accepted)
        if outcome.rejected:
            tally.rejected(outcome.rejected)

    try:
        result = ship(
            records(),
            settings.api,
            kind,  # type: ignore[arg-type]
            on_batch=on_batch,
            progress=progress,
            stop=stop,
            total=report.objects_valid - len(accepted_before),
        )
    except ApiTerminalError as exc:  # 401/403/404...: count what was not shipped, re-raise
        stopped = exc.result if isinstance(exc.result, ShipResult) else None
        _not_shipped(report, stopped.not_shipped if stopped else [])
        raise
    _not_shipped(report, result.not_shipped)
    report.outputs["shipment"] = result.summary()
    if result.aborted:
        report.outputs["shipment_stopped"] = result.aborted
    return bool(result.not_shipped)


def _send_events(
    done: Converted,
    settings: Settings,
    report: Report,
    stop: threading.Event | None,
    sent_before: set[str],
    on_events: Callable[[int, list[str], list[str]], None] | None,
    *,
    counts_as_shipped: bool,
) -> bool:
    """One ``purchase`` event per valid object to the tracking API; True when some were
    not sent (retry later).  With ``events`` as the only delivering sink its counts are
    also the file's shipped / rejected / not shipped counts, so the report adds up."""
    from csvbridge.sinks.events import EventBatch, send_events

    counts = report.events = EventCounts()

    def on_batch(batch: EventBatch) -> None:  # durable before the next request
        if on_events is not None:
            on_events(batch.batch_no, batch.sent_ids, batch.rejected_ids)

    try:
        result = send_events(
            read_records(done.ndjson, done.index),
            settings.events,
            skip_ids=sent_before,
            on_batch=on_batch,
            stop=stop,
        )
    except CsvBridgeError as exc:  # 401/403, no site id: count what was not sent, re-raise
        partial = getattr(exc, "result", None)
        counts.not_sent = len(partial.not_sent) if partial is not None else 0
        raise
    counts.sent = result.sent + result.skipped
    counts.sent_by_earlier_attempts = result.skipped
    counts.rejected = len(result.rejected)
    counts.not_sent = len(result.not_sent)
    counts.requests = result.requests
    with open_private(done.rejected, "a", encoding="utf-8") as f:
        for record, problems in result.rejected:  # EVENT_TOO_LARGE, HTTP_400...
            for p in problems:
                p.lines = p.lines or record.lines
                report.problems.add(p)
            first = problems[0] if problems else None
            reason = f"events {first.code}: {first.detail}" if first else "event rejected"
            f.write(f"{','.join(map(str, record.lines))}\t{reason}\n")
    report.outputs["events"] = result.summary()
    if result.aborted:
        report.outputs["events_stopped"] = result.aborted
    if counts_as_shipped:
        rejected_rows = sum(len(r.lines) for r, _ in result.rejected)
        not_sent_rows = sum(len(r.lines) for r in result.not_sent)
        report.objects_shipped = counts.sent
        report.objects_rejected_by_api = counts.rejected
        report.objects_not_shipped = counts.not_sent
        report.shipped_by_earlier_attempts = counts.sent_by_earlier_attempts
        report.rows_rejected_by_api = rejected_rows
        report.rows_not_shipped = not_sent_rows
        report.rows_shipped = report.rows_converted - rejected_rows - not_sent_rows
    return bool(result.not_sent)


def _not_shipped(report: Report, records: list[Record]) -> None:
    report.objects_not_shipped = len(records)
    report.rows_not_shipped = sum(len(r.lines) for r in records)


def send_file(
    source: str | Path | BinaryIO,
    settings: Settings,
    *,
    name: str | None = None,
    kind: str = "conversions",
    sinks: list[str] | None = None,
    products_from_conversions: bool = False,
    dry_run: bool = False,
    report_path: Path | None = None,
    rejects_path: Path | None = None,
    work_dir: Path | None = None,
    stop: threading.Event | None = None,
) -> Outcome:
    """``csvbridge send``: convert one file (a path or a binary stream) and deliver it to
    the configured sinks.

    Setting `stop` (the CLI does on SIGTERM/Ctrl-C) finishes the batches in flight and
    returns what was done: the report is still written, the work folder still removed,
    and the objects not sent are counted as not shipped.
    """
    import shutil
    import tempfile

    if isinstance(source, (str, Path)) and not Path(source).exists():
        raise InputError(f"no such file: {source}")
    label = name or (str(source) if isinstance(source, (str, Path)) else "<stream>")
    with tempfile.TemporaryDirectory(prefix="csvbridge-send-", dir=work_dir) as tmp:
        work = Path(tmp)
        if isinstance(source, (str, Path)):
            src = Path(source)
        else:  # a stream is read once: spool it, the engine reads its source twice
            src = work / "input.csv"
            with open(src, "wb") as f:
                shutil.copyfileobj(source, f, 1 << 20)
        # progress for both phases: bars on a terminal, else a log line every N seconds
        with showing(every=settings.logging.progress_seconds):
            outcome = process_file(
                src,
                work / "work",
                settings,
                name=label,
                kind=kind,
                sinks=sinks or settings.sinks,
                products_from_conversions=products_from_conversions,
                dry_run=dry_run,
                stop=stop,
            )
        if stop is not None and stop.is_set():
            outcome.report.outputs["interrupted"] = "stopped on request; the rest was not sent"
        if rejects_path is not None and outcome.rejects is not None:
            move_into_place(outcome.rejects, rejects_path)  # private; never replaces a device
            outcome.report.outputs["rejects"] = str(rejects_path)
    outcome.report.outputs["finished_at"] = datetime.now(UTC).isoformat(timespec="seconds")
    if report_path is not None:
        write_bytes(report_path, outcome.report.to_json())
    return outcome
