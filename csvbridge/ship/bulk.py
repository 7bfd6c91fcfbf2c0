"""Ship records to the Commanders Act bulk API: client, pacing, retries, progress, plan.

How a shipment works (read `ship` first):

* records are cut into batches of `choose_batch_size` objects and handed to a few worker
  threads; only a few batches are ever in memory;
* before each attempt a worker asks the `Pacer`, which enforces the three documented
  limits at once (request starts per second, requests in flight, objects per second) and
  slows everything down after a 429;
* `ApiClient.post` sends one batch and reads the answer into accepted and rejected
  records, or raises `ApiTransientError` (429, 5xx, network: retried with backoff),
  `AuthError` (401/403: the whole shipment stops) or `ApiTerminalError` (other 4xx);
* the calling thread collects the answers and calls ``on_batch`` for each one as it
  arrives, so the caller can write accepted ids to its ledger before anything else.

Every record read ends up in exactly one of ``accepted``, ``rejected`` and
``not_shipped`` -- or is ``skipped`` when its id is in ``skip_ids``.  A record the API
accepted is never sent again.  (A request that timed out may have been accepted without
us knowing; it is retried, which the API treats as an upsert of the same object.)
"""

from __future__ import annotations

import contextlib
import logging
import math
import random
import sys
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Iterator, Sequence, Sized
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any, TextIO
from urllib.parse import quote

import orjson
import requests
from requests.adapters import HTTPAdapter

from csvbridge import __version__
from csvbridge.config import ApiSettings, Kind, RateLimits
from csvbridge.convert.fold import Record
from csvbridge.errors import (
    ApiTerminalError,
    ApiTransientError,
    AuthError,
    ConfigError,
    CsvBridgeError,
)
from csvbridge.observe import redact, register_secret
from csvbridge.report import Problem

log = logging.getLogger("csvbridge.api")

CONNECT_TIMEOUT = 10.0  # seconds; the read timeout is settings.timeout_seconds
REQUEST_HEADROOM = 0.97  # pace request starts 3% under the limit: clocks and networks jitter
SLOW_DOWN = 0.5  # after a 429, every rate is multiplied by this...
MIN_FACTOR = 0.05
SLOW_DOWN_COOLDOWN = 1.0  # ...at most once per second (429s come in bursts)...
RECOVERY_STEP = 0.05  # ...and recovers by this much per answered request after that
RETRY_AFTER_CAP = 300.0  # a Retry-After beyond this is not taken literally
POLL_SECONDS = 0.1  # how often the calling thread looks at the stop event
PROGRESS_LOG_SECONDS = 10.0

AUTH_REASONS = {
    "MISSING_AUTHORIZATION_HEADER": "no API token was sent (set api.token or CSVBRIDGE_TOKEN)",
    "UNKNOWN_TOKEN_TYPE": "the Authorization header has no token type (expected 'Bearer')",
    "INVALID_TOKEN_TYPE": "the token type is not 'Bearer'",
    "UNKNOWN_TOKEN": "wrong or unknown API token",
}


# -- results --------------------------------------------------------------------------


@dataclass
class BatchOutcome:
    """What became of one batch; ``on_batch`` receives it as soon as the API answered."""

    batch_no: int
    accepted: list[Record] = field(default_factory=list)
    rejected: list[tuple[Record, list[Problem]]] = field(default_factory=list)
    not_shipped: list[Record] = field(default_factory=list)  # the API never answered
    error: str | None = None  # why not shipped

    @property
    def answered(self) -> bool:
        return not self.not_shipped


@dataclass(repr=False)
class ShipResult:
    """A whole shipment: every record read is in exactly one list (or counted skipped)."""

    accepted_ids: list[str] = field(default_factory=list)
    rejected: list[tuple[Record, list[Problem]]] = field(default_factory=list)
    not_shipped: list[Record] = field(default_factory=list)
    skipped: int = 0  # ids in skip_ids: accepted by an earlier run, not sent again
    requests: int = 0
    retries: int = 0
    status_counts: Counter[int | str] = field(default_factory=Counter)  # 202, 429, "TIMEOUT"
    seconds: float = 0.0
    aborted: str | None = None  # why the shipment stopped early, if it did

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


# -- the client -----------------------------------------------------------------------


@dataclass(slots=True)
class Answer:
    """The API's answer to one batch (errors are raised instead)."""

    status: int
    accepted: list[Record]
    rejected: list[tuple[Record, list[Problem]]]


class ApiClient:
    """Talks HTTP to the bulk API: URL, headers, pooled connections, reading answers.

    The token is registered with `observe.register_secret` and kept out of reprs,
    exception messages and logs (it only travels in the Authorization header).
    """

    def __init__(self, settings: ApiSettings, session: requests.Session | None = None) -> None:
        self.settings = settings
        token = settings.token.get_secret_value()
        register_secret(token)
        self._authorization = f"Bearer {token}"
        self._owns_session = session is None
        self.session = session or _pooled_session(settings.max_in_flight)
        self._timeout = (min(CONNECT_TIMEOUT, settings.timeout_seconds), settings.timeout_seconds)

    def __repr__(self) -> str:
        return f"ApiClient(base_url={self.settings.base_url!r}, site_id={self.settings.site_id!r})"

    def url(self, kind: Kind) -> str:
        site = quote(self.settings.site_id, safe="")
        return f"{self.settings.base_url}/v2/{site}/{kind}/bulk"

    def post(self, kind: Kind, batch: Sequence[Record]) -> Answer:
        """Send one batch as NDJSON; raise for anything but an accept or a 400."""
        try:
            response = self.session.post(
                self.url(kind),
                params={"overwrite": "true" if self.settings.overwrite else "false"},
                data=b"\n".join(r.json for r in batch),
                headers={
                    "Content-Type": "application/x-ndjson",
                    "Accept": "application/json",
                    "Authorization": self._authorization,
                    "User-Agent": f"csvbridge/{__version__}",
                },
                timeout=self._timeout,
            )
        except requests.Timeout as exc:
            raise ApiTransientError(f"no answer: {_reason(exc)}", code="TIMEOUT") from exc
        except requests.ConnectionError as exc:
            raise ApiTransientError(
                f"connection failed: {_reason(exc)}", code="CONNECTION_ERROR"
            ) from exc
        except requests.RequestException as exc:  # bad URL and the like: a config problem
            raise ApiTerminalError(f"cannot send to {self.url(kind)}: {_reason(exc)}") from exc
        return self.read_answer(response.status_code, response.headers, response.content, batch)

    def read_answer(
        self, status: int, headers: Any, content: bytes, batch: Sequence[Record]
    ) -> Answer:
        """Turn an HTTP answer into accepted/rejected records, or the right exception."""
        if 200 <= status < 300:
            return Answer(status, list(batch), [])
        body = _json(content)
        code, detail = _first_error(body)
        if status == 400:
            return Answer(status, *split_partial(body, batch))
        if status == 401:
            reason = AUTH_REASONS.get(code or "", detail or "authentication failed")
            raise AuthError(f"the API refused the token: {reason}", status=status, code=code)
        if status == 403:
            reason = (
                f"this token cannot access site {self.settings.site_id}"
                if code == "SITE_ACCESS_FORBIDDEN" or code is None
                else detail or "forbidden"
            )
            raise AuthError(f"access forbidden: {reason}", status=status, code=code)
        if status in (408, 429) or status >= 500:
            raise ApiTransientError(
                f"HTTP {status}: {detail or 'no details'}",
                status=status,
                code=code,
                body=body,
                retry_after=parse_retry_after(headers.get("Retry-After")),
            )
        raise ApiTerminalError(
            f"unexpected HTTP {status} from the API: {detail or 'no details'}",
            status=status,
            code=code,
            body=body,
        )

    def close(self) -> None:
        if self._owns_session:
            self.session.close()

    def __enter__(self) -> ApiClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _pooled_session(size: int) -> requests.Session:
    session = requests.Session()
    # max_retries=0: every retry is ours, so it is paced, counted and logged
    adapter = HTTPAdapter(pool_connections=2, pool_maxsize=size, max_retries=0)
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    return session


def _reason(exc: Exception) -> str:
    """The innermost useful message of a requests exception, without any secret."""
    inner: Any = exc.args[0] if exc.args else exc
    inner = getattr(inner, "reason", inner)  # urllib3's MaxRetryError wraps the cause
    return redact(str(inner))[:300]


def _json(content: bytes) -> dict[str, Any]:
    try:
        body = orjson.loads(content) if content else {}
    except orjson.JSONDecodeError:
        return {"text": redact(content[:300].decode("utf-8", "replace"))}
    return body if isinstance(body, dict) else {"body": body}


def _first_error(body: dict[str, Any]) -> tuple[str | None, str | None]:
    errors = body.get("errors")
    if isinstance(errors, list) and errors and isinstance(errors[0], dict):
        first = errors[0]
        return first.get("code"), redact(str(first.get("detail") or "")).strip() or None
    text = body.get("text")
    return None, text if isinstance(text, str) else None


def _problem(error: dict[str, Any], record: Record) -> Problem:
    meta = error.get("meta") if isinstance(error.get("meta"), dict) else {}
    return Problem(
        code=str(error.get("code") or "API_ERROR"),
        detail=str(error.get("detail") or "refused by the API").strip(),
        property=meta.get("property"),
        lines=record.lines,
        id=record.id,
    )


def split_partial(
    body: dict[str, Any], batch: Sequence[Record]
) -> tuple[list[Record], list[tuple[Record, list[Problem]]]]:
    """Map a 400 answer onto the batch: which records were refused, and why.

    With ``data.accepted_object_count`` it is a partial acceptance: each error names its
    objects by ``meta.line_numbers`` (1-based lines of our request body) and ``meta.ids``;
    those are rejected, the others were accepted.  Without it (PARSE_ERROR) nothing was
    accepted.  The API lists only "some examples" per error, so fewer records may be
    named than ``rejected_object_count``: we can only warn.
    """
    errors = [e for e in body.get("errors") or [] if isinstance(e, dict)]
    data = body.get("data") if isinstance(body.get("data"), dict) else {}
    if "accepted_object_count" not in data:
        errors = errors or [{"code": "BAD_REQUEST", "detail": "the API refused the request"}]
        return [], [(r, [_problem(e, r) for e in errors]) for r in batch]
    by_id: dict[str, list[int]] = defaultdict(list)
    for index, record in enumerate(batch):
        by_id[record.id].append(index)
    refused: dict[int, list[Problem]] = {}
    for error in errors:
        meta = error.get("meta") if isinstance(error.get("meta"), dict) else {}
        named = {
            n - 1
            for n in meta.get("line_numbers") or []
            if isinstance(n, int) and 0 < n <= len(batch)
        }
        named.update(i for oid in meta.get("ids") or [] for i in by_id.get(str(oid), ()))
        for index in named:
            refused.setdefault(index, []).append(_problem(error, batch[index]))
    expected = data.get("rejected_object_count")
    if isinstance(expected, int) and len(refused) < expected:
        log.warning(
            "the API rejected %d objects of a batch but named only %d of them; "
            "the %d others are counted as accepted",
            expected,
            len(refused),
            expected - len(refused),
        )
    accepted = [r for i, r in enumerate(batch) if i not in refused]
    return accepted, [(batch[i], refused[i]) for i in sorted(refused)]


def parse_retry_after(value: str | None) -> float | None:
    """Seconds to wait from a Retry-After header (seconds, decimals or an HTTP date)."""
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        seconds = (when - datetime.now(UTC)).total_seconds()
    return max(0.0, seconds) if math.isfinite(seconds) else None


# -- pacing ---------------------------------------------------------------------------


class Pacer:
    """Decides when the next request may start, so that all three limits hold at once.

    * objects per second: a token bucket (in its "virtual time" form): each request books
      ``len(batch) / rate`` seconds of budget, and one batch may be booked ahead, so the
      server already holds the next batch when it finishes one -- it never idles;
    * requests per second: starts at least ``1 / rate`` apart (3% headroom);
    * in flight: at most ``max_in_flight`` requests open at once.

    After a 429 every rate is scaled by `factor` (halved at most once a second), which
    then recovers step by step with each answered request; a Retry-After holds every
    start until then.  Thread-safe.
    """

    def __init__(self, limits: RateLimits, max_in_flight: int, ahead_objects: int) -> None:
        self._objects_per_second = limits.objects_per_second
        self._request_interval = 1.0 / (limits.requests_per_second * REQUEST_HEADROOM)
        self._max_in_flight = max(1, max_in_flight)
        self._ahead = ahead_objects / limits.objects_per_second  # seconds of budget
        now = time.monotonic()
        self._objects_due = self._requests_due = self._paused_until = now
        self._in_flight = 0
        self._last_cut = -math.inf
        self._closed = False
        self._cond = threading.Condition()
        self.factor = 1.0

    @property
    def max_in_flight(self) -> int:
        return max(1, int(self._max_in_flight * self.factor))

    def acquire(self, n_objects: int) -> bool:
        """Block until a request of `n_objects` may start; False once closed."""
        with self._cond:
            while not self._closed:
                now = time.monotonic()
                start_at = max(
                    self._objects_due - self._ahead, self._requests_due, self._paused_until
                )
                if start_at <= now and self._in_flight < self.max_in_flight:
                    rate = self._objects_per_second * self.factor
                    self._objects_due = max(self._objects_due, now) + n_objects / rate
                    self._requests_due = (
                        max(self._requests_due, now) + self._request_interval / self.factor
                    )
                    self._in_flight += 1
                    return True
                self._cond.wait(start_at - now if start_at > now else None)
            return False

    def release(self, answered: bool) -> None:
        """A request ended; `answered` means the API took it (no 429, 5xx or network error)."""
        with self._cond:
            self._in_flight -= 1
            if answered and time.monotonic() - self._last_cut >= SLOW_DOWN_COOLDOWN:
                self.factor = min(1.0, self.factor + RECOVERY_STEP)
            self._cond.notify_all()

    def throttle(self, retry_after: float | None, *, slow_down: bool) -> None:
        """The API pushed back: hold every start for `retry_after`, maybe slow down."""
        with self._cond:
            now = time.monotonic()
            if slow_down and now - self._last_cut >= SLOW_DOWN_COOLDOWN:
                self.factor = max(MIN_FACTOR, self.factor * SLOW_DOWN)
                self._last_cut = now
                log.info("rate limited: now pacing at %.0f%% of the limits", self.factor * 100)
            if retry_after:
                pause = now + min(retry_after, RETRY_AFTER_CAP)
                self._paused_until = max(self._paused_until, pause)

    def close(self) -> None:
        """Wake every waiting worker and refuse new starts."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()


def workers_for(settings: ApiSettings) -> int:
    """Requests kept in flight: our own cap, never above the documented connection limit."""
    return max(1, min(settings.max_in_flight, settings.limits.concurrent_connections))


def choose_batch_size(settings: ApiSettings) -> int:
    """Objects per request: the most allowed, within what answers well before the timeout.

    The API answers a request only once its objects are processed, at objects_per_second,
    and the pacer keeps up to two batches queued there: a batch must take at most a
    quarter of the timeout.  It must also hold at least objects_per_second /
    requests_per_second objects, or the request limit, not the object limit, sets the pace.
    """
    limits = settings.limits
    within_timeout = int(settings.timeout_seconds * limits.objects_per_second / 4)
    rate_floor = math.ceil(
        limits.objects_per_second / (limits.requests_per_second * REQUEST_HEADROOM)
    )
    return max(1, min(settings.max_objects_per_request, max(within_timeout, rate_floor)))


# -- plan (dry run) -------------------------------------------------------------------


@dataclass(frozen=True)
class Plan:
    """How a shipment of `objects` would go at the documented rates, without sending."""

    objects: int
    batches: int
    batch_size: int
    requests: int
    seconds_estimate: float
    objects_per_second: float

    def describe(self) -> str:
        if not self.objects:
            return "nothing to ship"
        return (
            f"{self.objects} objects in {self.requests} requests of up to {self.batch_size}; "
            f"at {self.objects_per_second:g} objects/s this takes about "
            f"{format_duration(self.seconds_estimate)}"
        )


def plan(n_objects: int, settings: ApiSettings) -> Plan:
    """The dry-run figures for shipping `n_objects` with `settings`."""
    size = choose_batch_size(settings)
    batches = math.ceil(n_objects / size) if n_objects > 0 else 0
    limits = settings.limits
    seconds = max(n_objects / limits.objects_per_second, batches / limits.requests_per_second)
    return Plan(n_objects, batches, size, batches, seconds, limits.objects_per_second)


def format_duration(seconds: float) -> str:
    """``42 s``, ``3 min 20 s``, ``2 h 05 min``."""
    s = round(seconds)
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min {s % 60:02d} s"
    return f"{s // 3600} h {s % 3600 // 60:02d} min"


# -- progress -------------------------------------------------------------------------


class Progress:
    """``shipped X/Y objects, N obj/s, ETA ...``: in place on a terminal, else a log line
    every ~10 s.  Without a known total there is no ETA."""

    def __init__(self, total: int | None, *, tty: bool, stream: TextIO | None = None) -> None:
        self.total, self.tty = total, tty
        self.stream = stream or sys.stderr
        self.started = self._last = time.monotonic()
        self._drawn = False

    def line(self, done: int) -> str:
        elapsed = time.monotonic() - self.started
        rate = done / elapsed if elapsed > 0 else 0.0
        text = f"shipped {done}" + (f"/{self.total}" if self.total is not None else "")
        text += f" objects, {rate:.0f} obj/s"
        if self.total is not None and rate > 0 and done < self.total:
            text += f", ETA {format_duration((self.total - done) / rate)}"
        return text

    def update(self, done: int) -> None:
        now = time.monotonic()
        if self.tty and (now - self._last >= 0.2 or done == self.total):
            self.stream.write("\r" + self.line(done) + "\x1b[K")
            self.stream.flush()
            self._last, self._drawn = now, True
        elif not self.tty and now - self._last >= PROGRESS_LOG_SECONDS:
            log.info("%s", self.line(done))
            self._last = now

    def close(self) -> None:
        if self._drawn:
            self.stream.write("\n")
            self.stream.flush()


# -- the shipment ---------------------------------------------------------------------


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

    def halt(self, reason: str) -> None:
        """Send nothing new: requests in flight finish, waiting batches come back unsent."""
        with self._lock:
            if self.reason is None:
                self.reason = reason
        self.halted.set()
        self.pacer.close()

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
            if not self.pacer.acquire(len(batch)):
                break
            if attempt > 1:
                with self._lock:
                    self.retries += 1
            started = time.monotonic()
            try:
                answer = self.client.post(self.kind, batch)
            except ApiTransientError as exc:
                self.pacer.release(answered=False)
                self._count(exc.status or exc.code)
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
                )
                if self.halted.wait(delay):
                    break
                continue
            except BaseException as exc:
                self.pacer.release(answered=False)
                status = getattr(exc, "status", None)
                if status is not None:  # else nothing went out (a bad URL, a bug)
                    self._count(status)
                raise
            self.pacer.release(answered=True)
            self._count(answer.status)
            log.debug(
                "batch %d: HTTP %d, %d accepted, %d rejected in %.2f s",
                batch_no,
                answer.status,
                len(answer.accepted),
                len(answer.rejected),
                time.monotonic() - started,
            )
            return BatchOutcome(batch_no, answer.accepted, answer.rejected)
        return BatchOutcome(batch_no, not_shipped=batch, error=self.reason or "stopped")


def _fresh(
    records: Iterable[Record], skip_ids: set[str] | frozenset[str], result: ShipResult
) -> Iterator[Record]:
    for record in records:
        if record.id in skip_ids:
            result.skipped += 1
        else:
            yield record


def _chunks(records: Iterator[Record], size: int) -> Iterator[list[Record]]:
    batch: list[Record] = []
    for record in records:
        batch.append(record)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def ship(
    records: Iterable[Record],
    settings: ApiSettings,
    kind: Kind = "conversions",
    *,
    skip_ids: set[str] | frozenset[str] = frozenset(),
    on_batch: Callable[[BatchOutcome], None] | None = None,
    progress: bool | None = None,
    stop: threading.Event | None = None,
    total: int | None = None,
    client: ApiClient | None = None,
) -> ShipResult:
    """Send `records` to the bulk API as fast as the documented limits allow.

    Streams: at most ``workers + 2`` batches are in memory.  ``on_batch`` is called from
    this thread, one batch at a time, as soon as the API answered it.  When ``stop`` is
    set, or a batch is still not accepted after ``max_attempts``, requests in flight
    finish and the rest of `records` is read into ``not_shipped``.  A 401/403 (or another
    terminal answer) does the same, then raises the `AuthError` with the `ShipResult`
    attached as ``.result``.  ``total`` (default: ``len(records)`` if known) feeds the
    progress ETA; ``progress`` defaults to "stderr is a terminal".
    """
    unusable: CsvBridgeError | None = None
    if not settings.site_id:
        unusable = ConfigError("no site id configured: set api.site_id or CSVBRIDGE_SITE_ID")
    elif not settings.token.get_secret_value():
        unusable = AuthError("no API token configured: set api.token or CSVBRIDGE_TOKEN")
    if unusable is not None:  # nothing can be sent: account for every record, then say why
        result = ShipResult(aborted=unusable.message)
        result.not_shipped.extend(_fresh(records, skip_ids, result))
        unusable.result = result  # type: ignore[attr-defined]
        raise unusable
    own_client = client is None
    client = client or ApiClient(settings)
    size, workers = choose_batch_size(settings), workers_for(settings)
    shipment = _Shipment(client, settings, kind, Pacer(settings.limits, workers, size))
    if total is None and isinstance(records, Sized):
        total = len(records)
    meter = Progress(total, tty=sys.stderr.isatty() if progress is None else progress)
    result = ShipResult()
    fatal: BaseException | None = None
    pending: dict[Future[BatchOutcome], list[Record]] = {}
    log.info(
        "shipping %s to %s (site %s): batches of %d, %d in flight, %g objects/s",
        kind,
        settings.base_url,
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
            elif not shipment.halted.is_set():  # gave up: the API is not taking anything
                shipment.halt(f"batch {outcome.batch_no} {outcome.error}")
            meter.update(result.accepted + len(result.rejected) + result.skipped)

    started = time.monotonic()
    fresh = _fresh(records, skip_ids, result)
    try:
        with ThreadPoolExecutor(workers, thread_name_prefix="csvbridge-ship") as pool:
            try:
                for batch_no, batch in enumerate(_chunks(fresh, size), start=1):
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
        meter.close()
        if own_client:
            client.close()
    result.requests, result.retries = shipment.requests, shipment.retries
    result.status_counts = shipment.status_counts
    result.seconds = time.monotonic() - started
    result.aborted = shipment.reason
    log.info("%s: %s", kind, result.summary())
    if fatal is not None:
        if isinstance(fatal, CsvBridgeError):
            fatal.result = result  # type: ignore[attr-defined]
        raise fatal
    return result
