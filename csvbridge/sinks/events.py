"""Send conversions as ``purchase`` events to the Commanders Act HTTP tracking API.

How a send works (read `send_events` first):

* each `Record` (the bulk shipper's input) becomes one event (`csvbridge.sinks.purchase`);
  an event over ``max_event_bytes`` is rejected by name (`EventTooLarge`) and the others
  go on;
* events are packed into ``POST /events/batch`` bodies (``{"batch": [...]}``) of at most
  ``max_batch_bytes`` and ``max_events_per_batch``, or sent one by one to ``POST /events``
  when ``batch`` is off;
* requests go out one at a time, paced to ``requests_per_second`` (the API asks to be
  warned above 500/s, so the setting must stay below that);
* the API answers 200 to nearly everything (a 200 proves nothing: we validate before).
  400 (too large, invalid JSON) is terminal for the events of that request; 5xx, 408,
  429 and network failures are retried with exponential backoff and full jitter; any
  other answer (401, 403, 404...) is a configuration problem and stops the send;
* ``on_batch`` is called after each answered request, so the caller can record the sent
  and rejected ids in its ledger before the next request: after a kill -9, only the
  request in flight is sent again (with the same ``context.event_id``).

The source key travels in the ``token`` query parameter as documented, so every URL that
can reach a log or an exception is written with the key masked (`TrackingClient`).

Where the parts live: `csvbridge.sinks.events_pack` (records to events, request bodies
within the limits), `csvbridge.sinks.events_client` (`TrackingClient`: HTTP, typed errors,
the key masked), `csvbridge.sinks.events_results` (`EventBatch`, `EventsResult`); here
the send itself: pacing, retries, and accounting for every record.  Their public names
are importable from here.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable, Iterable, Iterator

from csvbridge.config import MAX_BATCH_BYTES, MAX_EVENT_BYTES, EventsSettings
from csvbridge.errors import ApiTransientError, AuthError, ConfigError, CsvBridgeError
from csvbridge.fold.assemble import Record
from csvbridge.report import Problem
from csvbridge.sinks.events_client import CONNECT_TIMEOUT, MASK, TrackingClient
from csvbridge.sinks.events_pack import body_of, encode, pack
from csvbridge.sinks.events_results import EventBatch, EventsResult, _problem

log = logging.getLogger("csvbridge.events")

# The limits (32 KB per event, 500 KB per batch) and `EventsSettings` live in
# csvbridge.config with the other settings (the sinks package imports the config).
__all__ = [
    "CONNECT_TIMEOUT",
    "MASK",
    "MAX_BATCH_BYTES",
    "MAX_EVENT_BYTES",
    "EventBatch",
    "EventsResult",
    "EventsSettings",
    "TrackingClient",
    "body_of",
    "encode",
    "pack",
    "send_events",
]


class _Pacer:
    """Request starts at most `rate` per second (a steady interval, no bursts)."""

    def __init__(self, rate: float) -> None:
        self.interval = 1.0 / rate
        self.next_at = 0.0

    def wait(self, stop: threading.Event) -> bool:
        delay = self.next_at - time.monotonic()
        if delay > 0 and stop.wait(delay):
            return False
        self.next_at = max(self.next_at, time.monotonic() - self.interval) + self.interval
        return not stop.is_set()


def send_events(
    records: Iterable[Record],
    settings: EventsSettings,
    *,
    skip_ids: set[str] | frozenset[str] = frozenset(),
    on_batch: Callable[[EventBatch], None] | None = None,
    stop: threading.Event | None = None,
    client: TrackingClient | None = None,
) -> EventsResult:
    """Send one ``purchase`` event per record; mirrors `csvbridge.sinks.ship`.

    Ids in ``skip_ids`` (sent by an earlier run) are counted, not sent.  ``on_batch`` runs
    in this thread after each answered request (and for events refused before sending).
    When ``stop`` is set or a request is still unanswered after ``max_attempts``, the rest
    is read into ``not_sent``; a 401/403/other terminal answer does the same and raises
    with the `EventsResult` attached as ``.result``.
    """
    stop = stop or threading.Event()
    result = EventsResult()

    def fresh() -> Iterator[Record]:
        for record in records:
            if record.id in skip_ids:
                result.skipped += 1
            else:
                yield record

    unusable: CsvBridgeError | None = None
    if not settings.site_id:
        unusable = ConfigError("no site id configured for the events sink (events.site_id)")
    elif not settings.token.get_secret_value():
        unusable = AuthError("no source key configured for the events sink (events.token)")
    if unusable is not None:
        result.not_sent.extend(fresh())
        result.aborted = unusable.message
        unusable.result = result  # type: ignore[attr-defined]
        raise unusable
    own = client is None
    client = client or TrackingClient(settings)
    pacer, rng = _Pacer(settings.requests_per_second), random.Random()
    refused: list[tuple[Record, Problem]] = []
    started = time.monotonic()
    batch_no = 0
    stream = fresh()
    packer = pack(stream, settings, refused)
    fatal: CsvBridgeError | None = None
    log.info("sending purchase events to %s", client.public_url(settings.batch))

    def emit(outcome: EventBatch) -> None:
        outcome.rejected.extend((r, [p]) for r, p in refused)
        refused.clear()
        result.add(outcome)
        if on_batch is not None and (outcome.sent or outcome.rejected):
            on_batch(outcome)

    try:
        for events in packer:
            batch_no += 1
            body = body_of(events, settings.batch)
            outcome = EventBatch(batch_no, event_ids={e.record.id: e.event_id for e in events})
            records_in = [e.record for e in events]
            for attempt in range(1, settings.max_attempts + 1):
                if not pacer.wait(stop):
                    outcome.not_sent, outcome.error = records_in, "stop requested"
                    break
                result.retries += int(attempt > 1)
                result.requests += 1
                try:
                    status = client.post(body, batch=settings.batch)
                except ApiTransientError as exc:
                    result.status_counts[exc.status or exc.code or "ERROR"] += 1
                    if attempt == settings.max_attempts:
                        outcome.not_sent = records_in
                        outcome.error = f"not answered after {attempt} attempts: {exc}"
                        break
                    ceiling = min(
                        settings.backoff_max_seconds,
                        settings.backoff_base_seconds * 2 ** (attempt - 1),
                    )
                    delay = rng.uniform(0, ceiling)
                    log.info("batch %d: %s; retry %d in %.2f s", batch_no, exc, attempt, delay)
                    if stop.wait(delay):
                        outcome.not_sent, outcome.error = records_in, "stop requested"
                        break
                    continue
                result.status_counts[status] += 1
                result.bytes_sent += len(body)
                outcome.status = status
                if status == 400:  # too large or invalid JSON: sending again cannot help
                    what = "batch" if settings.batch else "event"
                    detail = f"the tracking API answered 400 to this {what} (too large or not JSON)"
                    outcome.rejected = [(r, [_problem(r, "HTTP_400", detail)]) for r in records_in]
                else:
                    outcome.sent = records_in
                break
            emit(outcome)
            if not outcome.answered:
                result.aborted = outcome.error
                break
    except CsvBridgeError as exc:  # 401/403/404: configuration; count the batch unsent
        fatal = exc
        result.aborted = exc.message
        result.not_sent.extend(e.record for e in events)
    finally:
        if refused and not (result.aborted or stop.is_set()):
            emit(EventBatch(batch_no + 1))
        if result.aborted or stop.is_set():  # accounted for, never sent
            for rest in packer:
                result.not_sent.extend(e.record for e in rest)
            result.rejected.extend((r, [p]) for r, p in refused)
            result.aborted = result.aborted or "stop requested"
        result.seconds = time.monotonic() - started
        if own:
            client.close()
    log.info("events: %s", result.summary())
    if fatal is not None:
        fatal.result = result  # type: ignore[attr-defined]
        raise fatal
    return result
