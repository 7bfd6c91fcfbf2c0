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
can reach a log or an exception is written with the key masked.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

import orjson
import requests
from requests.adapters import HTTPAdapter

from csvbridge import __version__
from csvbridge.config import MAX_BATCH_BYTES, MAX_EVENT_BYTES, EventsSettings
from csvbridge.errors import (
    ApiTerminalError,
    ApiTransientError,
    AuthError,
    ConfigError,
    CsvBridgeError,
    EventTooLarge,
)
from csvbridge.fold.assemble import Record
from csvbridge.observe import redact, register_secret
from csvbridge.report import Problem
from csvbridge.sinks.purchase import to_purchase

log = logging.getLogger("csvbridge.events")

# The limits (32 KB per event, 500 KB per batch) and `EventsSettings` live in
# csvbridge.config with the other settings (the sinks package imports the config).
__all__ = ["MAX_BATCH_BYTES", "MAX_EVENT_BYTES", "EventsSettings", "send_events"]
_BATCH_OPEN, _BATCH_CLOSE = b'{"batch":[', b"]}"
CONNECT_TIMEOUT = 10.0
MASK = "***"


# -- results --------------------------------------------------------------------------


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


# -- the client -----------------------------------------------------------------------


class TrackingClient:
    """HTTP to the tracking API; raises typed errors, never shows the source key."""

    def __init__(self, settings: EventsSettings, session: requests.Session | None = None) -> None:
        self.settings = settings
        self._token = settings.token.get_secret_value()
        register_secret(self._token)
        self._owns_session = session is None
        if session is None:
            session = requests.Session()
            adapter = HTTPAdapter(pool_connections=1, pool_maxsize=2, max_retries=0)
            session.mount("http://", adapter)
            session.mount("https://", adapter)
        self.session = session
        self._timeout = (min(CONNECT_TIMEOUT, settings.timeout_seconds), settings.timeout_seconds)

    def __repr__(self) -> str:
        return f"TrackingClient({self.public_url(self.settings.batch)!r})"

    def _url(self, batch: bool, token: str) -> str:
        path = "/events/batch" if batch else "/events"
        site = quote(self.settings.site_id, safe="")
        return f"{self.settings.base_url}{path}?tc_s={site}&token={token}"

    def public_url(self, batch: bool) -> str:
        """The endpoint as it may be shown: the source key masked."""
        return self._url(batch, MASK)

    def _clean(self, text: str) -> str:
        """`text` without the key, raw or URL-quoted (requests puts URLs in messages)."""
        for form in {self._token, quote(self._token, safe="")}:
            if form:
                text = text.replace(form, MASK)
        return redact(text)

    def post(self, body: bytes, *, batch: bool) -> int:
        """Send one body; return the status of a 200 or 400, raise for anything else."""
        try:
            response = self.session.post(
                self._url(batch, quote(self._token, safe="")),
                data=body,
                headers={
                    "Content-Type": "application/json",
                    "User-Agent": f"csvbridge/{__version__}",
                },
                timeout=self._timeout,
            )
        except requests.Timeout as exc:
            raise ApiTransientError(f"no answer: {self._reason(exc)}", code="TIMEOUT") from None
        except requests.ConnectionError as exc:
            raise ApiTransientError(
                f"connection failed: {self._reason(exc)}", code="CONNECTION_ERROR"
            ) from None
        except requests.RequestException as exc:  # bad URL and the like: configuration
            raise ApiTerminalError(
                f"cannot send to {self.public_url(batch)}: {self._reason(exc)}"
            ) from None
        status = response.status_code
        if status in (200, 400) or 200 <= status < 300:
            return status
        text = self._clean(response.content[:200].decode("utf-8", "replace")).strip()
        where = self.public_url(batch)
        if status in (408, 429) or status >= 500:
            raise ApiTransientError(
                f"HTTP {status} from {where}: {text or 'no details'}", status=status
            )
        if status in (401, 403):
            raise AuthError(
                f"the tracking API refused the source key or site ({where})", status=status
            )
        raise ApiTerminalError(f"unexpected HTTP {status} from {where}", status=status)

    def _reason(self, exc: Exception) -> str:
        inner: Any = exc.args[0] if exc.args else exc
        inner = getattr(inner, "reason", inner)
        return self._clean(str(inner))[:300]

    def close(self) -> None:
        if self._owns_session:
            self.session.close()


# -- packing --------------------------------------------------------------------------


@dataclass(slots=True)
class _Event:
    record: Record
    event_id: str
    data: bytes


def encode(record: Record, site_id: str) -> _Event:
    """One record as its serialised event; raises `EventTooLarge` is left to the caller."""
    event = to_purchase(orjson.loads(record.json), site_id)
    return _Event(record, event["context"]["event_id"], orjson.dumps(event))


def _problem(record: Record, code: str, detail: str) -> Problem:
    return Problem(code=code, detail=detail, lines=record.lines, id=record.id)


def pack(
    records: Iterable[Record], settings: EventsSettings, refused: list[tuple[Record, Problem]]
) -> Iterator[list[_Event]]:
    """Requests' worth of events, greedily filled up to the byte and count limits.

    Events that cannot be sent at all go to `refused` (read by the caller between yields).
    """
    limit = settings.max_batch_bytes - len(_BATCH_OPEN) - len(_BATCH_CLOSE)
    per_request = settings.max_events_per_batch if settings.batch else 1
    current: list[_Event] = []
    size = 0
    for record in records:
        try:
            event = encode(record, settings.site_id)
        except (ValueError, KeyError, TypeError) as exc:  # not a conversion we can read
            refused.append((record, _problem(record, "NOT_AN_EVENT", f"cannot map: {exc}")))
            continue
        if len(event.data) > settings.max_event_bytes:
            error = EventTooLarge(
                f"the purchase event is {len(event.data)} bytes, over the "
                f"{settings.max_event_bytes}-byte limit of one event; not sent",
                id=record.id,
            )
            log.warning("%s", error)
            refused.append((record, _problem(record, EventTooLarge.code, error.message)))
            continue
        added = len(event.data) + (1 if current else 0)  # the comma
        if current and (size + added > limit or len(current) >= per_request):
            yield current
            current, size = [], 0
            added = len(event.data)
        current.append(event)
        size += added
    if current:
        yield current


def body_of(events: list[_Event], batch: bool) -> bytes:
    if not batch:
        return events[0].data
    return _BATCH_OPEN + b",".join(e.data for e in events) + _BATCH_CLOSE


# -- the send -------------------------------------------------------------------------


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
