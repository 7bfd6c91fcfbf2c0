"""Ship records to the Commanders Act bulk API: batching, the in-flight window, retries.

How a shipment works (read `ship` first):

* records are cut into batches of `choose_batch_size` objects and handed to a few worker
  threads; only a few batches are ever in memory;
* before each attempt a worker asks the `Pacer` (ship/pacer.py), which enforces the three
  documented limits at once and slows everything down after a 429;
* `ApiClient.post` (ship/client.py) sends one batch and reads the answer into accepted
  and rejected records, or raises a transient error (retried with backoff) or a terminal
  one (the whole shipment stops);
* the calling thread collects the answers and calls ``on_batch`` for each one as it
  arrives, so the caller can write accepted ids to its ledger before anything else.

Every record read ends up in exactly one of ``accepted``, ``rejected`` and
``not_shipped`` -- or is ``skipped`` when its id is in ``skip_ids``.  A record the API
accepted is never sent again.  (A request that timed out may have been accepted without
us knowing; it is retried, which the API treats as an upsert of the same object.)
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import random
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sized
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait

import orjson
from pydantic import BaseModel, ValidationError

from csvbridge import progress as telemetry
from csvbridge.config import ApiSettings, Kind
from csvbridge.errors import ApiTransientError, AuthError, ConfigError, CsvBridgeError
from csvbridge.fold.assemble import Record
from csvbridge.schema.models import Conversion, Product
from csvbridge.sinks.client import ApiClient, endpoint, resolve_kind
from csvbridge.sinks.pacer import Grant, Pacer, choose_batch_size, shared_pacer, workers_for
from csvbridge.sinks.results import BatchOutcome, ShipResult

log = logging.getLogger("csvbridge.api")

POLL_SECONDS = 0.1  # how often the calling thread looks at the stop event


class _Shipment:
    """State shared by the worker threads of one `ship` call."""

    def __init__(self, client: ApiClient, settings: ApiSettings, kind: Kind, pacer: Pacer) -> None:
        self.client, self.settings, self.kind, self.pacer = client, settings, kind, pacer
        self.halted = threading.Event()
        self.reason: str | None = None
        self.requests = self.retries = 0
        self.status_counts: Counter[int | str] = Counter()
        self._lock = threading.Lock()
        self._random = random.Random()
        self.answered_at: dict[int, float] = {}  # batch -> when its answer came

    def halt(self, reason: str) -> None:
        """Send nothing new: requests in flight finish, waiting batches come back unsent."""
        with self._lock:
            if self.reason is None:
                self.reason = reason
        self.halted.set()
        self.pacer.wake()  # the pacer is the account's: only this shipment's workers stop

    def _count(self, key: int | str | None) -> None:
        with self._lock:
            self.requests += 1
            self.status_counts[key if key is not None else "ERROR"] += 1

    def backoff(self, attempt: int) -> float:
        """Exponential backoff with full jitter: spreads retries of many clients apart."""
        s = self.settings
        ceiling = min(s.backoff_max_seconds, s.backoff_base_seconds * 2 ** (attempt - 1))
        return self._random.uniform(0, ceiling)

    def send(self, batch_no: int, batch: list[Record]) -> BatchOutcome:
        """Worker: send one batch until the API answers it, retrying transient failures."""
        attempts = self.settings.max_attempts
        for attempt in range(1, attempts + 1):
            grant: Grant | None = self.pacer.acquire(len(batch), self.halted)
            if grant is None:
                break
            if attempt > 1:
                with self._lock:
                    self.retries += 1
            started = time.monotonic()
            tel, where = telemetry.current(), f"{self.kind}/bulk"
            try:
                answer = self.client.post(self.kind, batch)
            except ApiTransientError as exc:
                self.pacer.release(answered=False)
                self._count(exc.status or exc.code)
                code = exc.status or exc.code or "ERROR"
                tel.request(where, code, time.monotonic() - started, retry=attempt > 1)
                if exc.status == 429 or exc.retry_after is not None:
                    self.pacer.throttle(exc.retry_after, slow_down=exc.status == 429)
                if attempt == attempts:
                    error = f"not accepted after {attempts} attempts: {exc}"
                    log.warning("batch %d: %s", batch_no, error)
                    return BatchOutcome(batch_no, not_shipped=batch, error=error)
                # with a Retry-After the pacer holds the next start; else back off
                delay = 0.0 if exc.retry_after is not None else self.backoff(attempt)
                log.info(
                    "batch %d: %s; retry %d/%d in %.2f s",
                    batch_no,
                    exc,
                    attempt,
                    attempts - 1,
                    delay,
                    extra={"batch": batch_no, "status": code, "attempt": attempt},
                )
                if self.halted.wait(delay):
                    break
                continue
            except BaseException as exc:
                self.pacer.release(answered=False)
                status = getattr(exc, "status", None)
                if status is not None:  # else nothing went out (a bad URL, a bug)
                    self._count(status)
                    tel.request(where, status, time.monotonic() - started, retry=attempt > 1)
                raise
            self.pacer.release(answered=True, grant=grant)
            self.answered_at[batch_no] = time.monotonic()
            self._count(answer.status)
            tel.request(where, answer.status, time.monotonic() - started, retry=attempt > 1)
            log.debug(
                "batch %d: HTTP %d, %d accepted, %d rejected in %.2f s",
                batch_no,
                answer.status,
                len(answer.accepted),
                len(answer.rejected),
                time.monotonic() - started,
                extra={
                    "batch": batch_no,
                    "status": answer.status,
                    "accepted": len(answer.accepted),
                    "rejected": len(answer.rejected),
                },
            )
            return BatchOutcome(batch_no, answer.accepted, answer.rejected)
        return BatchOutcome(batch_no, not_shipped=batch, error=self.reason or "stopped")


_MODELS: dict[Kind, type[BaseModel]] = {"conversions": Conversion, "products": Product}


def records_kind(first: Record, asked: Kind) -> Kind:
    """The kind of the records, judged on the first one: `asked` unless it is the other.

    Why: ``send --products-from-conversions`` without ``--kind products`` posted products
    to ``/conversions/bulk``, where every one was refused.  A record that is valid as the
    other model and not as `asked` cannot be meant for `asked` (a product has neither
    ``user`` nor ``conversion_items``, a conversion must have both), so it goes where it
    belongs, with a warning.  A record valid as neither is sent as asked, and the API
    says what is wrong with it.
    """
    other: Kind = "products" if asked == "conversions" else "conversions"
    try:
        obj = orjson.loads(first.json)
        _MODELS[other].model_validate(obj)
    except (orjson.JSONDecodeError, ValidationError):
        return asked
    try:
        _MODELS[asked].model_validate(obj)
    except ValidationError:
        log.warning(
            "these records are %s, not %s: sending them to the %s endpoint", other, asked, other
        )
        return other
    return asked


def _fresh(
    records: Iterable[Record], skip_ids: set[str] | frozenset[str], result: ShipResult
) -> Iterator[Record]:
    for record in records:
        if record.id in skip_ids:
            result.skipped += 1
        else:
            yield record


def _chunks(records: Iterator[Record], size: Callable[[], int]) -> Iterator[list[Record]]:
    """Batches of ``size()`` records, asked again for each batch (the pacer's measure)."""
    batch: list[Record] = []
    want = size()
    for record in records:
        batch.append(record)
        if len(batch) >= want:
            yield batch
            batch, want = [], size()
    if batch:
        yield batch


def ship(
    records: Iterable[Record],
    settings: ApiSettings,
    kind: Kind = "conversions",
    *,
    products_from_conversions: bool = False,
    skip_ids: set[str] | frozenset[str] = frozenset(),
    on_batch: Callable[[BatchOutcome], None] | None = None,
    progress: bool | None = None,
    stop: threading.Event | None = None,
    total: int | None = None,
    client: ApiClient | None = None,
    pacer: Pacer | None = None,
) -> ShipResult:
    """Send `records` to the bulk API as fast as the documented limits allow.

    Streams: at most ``workers + 2`` batches are in memory.  ``on_batch`` is called from
    this thread, one batch at a time, as soon as the API answered it.  When ``stop`` is
    set, or a batch is still not accepted after ``max_attempts``, requests in flight
    finish and the rest of `records` is read into ``not_shipped``.  A 401/403 (or another
    terminal answer) does the same, then raises the `AuthError` with the `ShipResult`
    attached as ``.result``.  ``total`` (default: ``len(records)`` if known) feeds the
    progress ETA; ``progress`` defaults to "stderr is a terminal".

    The endpoint follows what is sent: products (``products_from_conversions``, or records
    that are products whatever `kind` says) always go to ``/products/bulk``; see
    `records_kind`.  ``result.endpoint`` says where the records went.

    ``pacer`` (default: the account's, `shared_pacer`) is shared by every shipment to
    the same base URL with the same token running at the same time in this process.
    """
    kind = resolve_kind(kind, products_from_conversions=products_from_conversions)
    unusable: CsvBridgeError | None = None
    if not settings.site_id:
        unusable = ConfigError("no site id configured: set api.site_id or CSVBRIDGE_SITE_ID")
    elif not settings.token.get_secret_value():
        unusable = AuthError("no API token configured: set api.token or CSVBRIDGE_TOKEN")
    if unusable is not None:  # nothing can be sent: account for every record, then say why
        result = ShipResult(aborted=unusable.message)
        result.not_shipped.extend(_fresh(records, skip_ids, result))
        unusable.result = result
        raise unusable
    result = ShipResult()
    fresh = _fresh(records, skip_ids, result)
    first = next(fresh, None)
    if first is not None:
        kind = records_kind(first, kind)
        fresh = itertools.chain([first], fresh)
    result.endpoint = endpoint(settings, kind)
    own_client = client is None
    client = client or ApiClient(settings)
    size, workers = choose_batch_size(settings), workers_for(settings)
    # the account's pacer (shared with its other shipments running) unless one is given
    account = contextlib.ExitStack()
    pacer = pacer or account.enter_context(shared_pacer(settings))
    shipment = _Shipment(client, settings, kind, pacer)
    if total is None and isinstance(records, Sized):
        total = len(records)
    session = telemetry.showing(tty=progress)  # bars or log lines, unless already shown
    meter = session.__enter__()
    meter.shipping(total)
    fatal: BaseException | None = None
    pending: dict[Future[BatchOutcome], list[Record]] = {}
    log.info(
        "shipping %s to %s (site %s): batches of %d, %d in flight, %g objects/s",
        kind,
        result.endpoint.url,
        settings.site_id,
        size,
        workers,
        settings.limits.objects_per_second,
    )

    def settle(block: bool) -> None:
        """Take in finished batches; runs in this thread only, so on_batch is serialized."""
        nonlocal fatal
        if stop is not None and stop.is_set():
            shipment.halt("stop requested")
        done, _ = wait(pending, timeout=POLL_SECONDS if block else 0, return_when=FIRST_COMPLETED)
        for future in done:
            batch = pending.pop(future)
            try:
                outcome = future.result()
            except BaseException as exc:  # AuthError, another terminal error, or a bug
                fatal = fatal or exc
                shipment.halt(str(exc))
                result.not_shipped.extend(batch)
                continue
            result.add(outcome)
            if outcome.answered:
                if on_batch is not None:
                    on_batch(outcome)
                answered = shipment.answered_at.pop(outcome.batch_no, None)
                if answered is not None:  # how long a kill would still re-send it
                    pacer.recorded(time.monotonic() - answered)
            elif not shipment.halted.is_set():  # gave up: the API is not taking anything
                shipment.halt(f"batch {outcome.batch_no} {outcome.error}")
        # every poll, answers or not: ETA gauges stay fresh, the daemon's watchdog is fed
        meter.shipped(result.accepted + len(result.rejected) + result.skipped)

    started = time.monotonic()
    try:
        with ThreadPoolExecutor(workers, thread_name_prefix="csvbridge-ship") as pool:
            try:
                batches = _chunks(fresh, lambda: pacer.batch_size(size))
                for batch_no, batch in enumerate(batches, start=1):
                    settle(block=False)
                    while len(pending) > workers:
                        settle(block=True)
                    if shipment.halted.is_set():
                        result.not_shipped.extend(batch)
                        break
                    pending[pool.submit(shipment.send, batch_no, batch)] = batch
                while pending:
                    settle(block=True)
            except BaseException:
                shipment.halt("interrupted")
                with contextlib.suppress(Exception):  # still record what was answered
                    while pending:
                        settle(block=True)
                raise
        if shipment.halted.is_set():
            result.not_shipped.extend(fresh)  # accounted for, never sent
    finally:
        session.__exit__(None, None, None)
        account.close()
        if own_client:
            client.close()
    result.requests, result.retries = shipment.requests, shipment.retries
    result.status_counts = shipment.status_counts
    result.seconds = time.monotonic() - started
    result.aborted = shipment.reason
    log.info("%s: %s", kind, result.summary())
    if fatal is not None:
        if isinstance(fatal, CsvBridgeError):
            fatal.result = result
        raise fatal
    return result
