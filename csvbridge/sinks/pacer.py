"""Pacing: the three documented limits of the bulk API held at once, and batch sizing.

The limits (requests per second, requests in flight, objects per second) belong to the
*account* (the token), not to one shipment: every shipment to the same base URL with the
same token shares one `Pacer` (`shared_pacer`), so several sources shipping at once stay
within the account's limits together, and the pacer hands out starts first come, first
served, so their batches interleave (a small file is not stuck behind a big one).

The in-flight window is kept narrow on purpose: the API has no idempotency key, and what
is in flight at a ``kill -9`` is sent again.  The API holds each answer until its objects
are processed, so the next batch only has to arrive as the current one finishes: it is
started a *lead* before that, the lead being measured from the answers (the round trip
plus our own latency), not one whole batch ahead.
"""

from __future__ import annotations

import hashlib
import itertools
import logging
import math
import threading
import time
import weakref
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass

from csvbridge.config import ApiSettings, RateLimits

log = logging.getLogger("csvbridge.api")

REQUEST_HEADROOM = 0.97  # pace request starts 3% under the limit: clocks and networks jitter
SLOW_DOWN = 0.5  # after a 429, every rate is multiplied by this...
MIN_FACTOR = 0.05
SLOW_DOWN_COOLDOWN = 1.0  # ...at most once per second (429s come in bursts)...
RECOVERY_STEP = 0.05  # ...and recovers by this much per answered request after that
RETRY_AFTER_CAP = 300.0  # a Retry-After beyond this is not taken literally
# The lead: how long before the server finishes the booked objects the next request
# starts.  It is LEAD_MARGIN x the smoothed lateness of the answers (round trip, thread
# wake-ups), never under MIN_LEAD nor over MAX_LEAD; FIRST_LEAD until measured.
FIRST_LEAD = 0.05
MIN_LEAD = 0.004
MAX_LEAD = 1.0
LEAD_MARGIN = 1.5
LEAD_SMOOTHING = 0.2  # weight of a new sample in the moving average
EXPOSURE_MARGIN = 2  # batches are cut this many exposures under the largest (batch_size)
SMALL_BATCH = 30  # batches configured smaller are never cut: they re-send little anyway


@dataclass(slots=True, eq=False)
class _Ticket:
    lane: object  # the shipment asking (its cancel event)
    seq: int


@dataclass(slots=True)
class Grant:
    """One request allowed to start: when the server should be done with its objects
    (the pacer's schedule), so the answer's lateness can be measured."""

    objects: int
    expected_done: float


class Pacer:
    """Decides when the next request may start, so that all three limits hold at once.

    * objects per second: a token bucket in its "virtual time" form: each request books
      ``len(batch) / rate`` seconds of the server's time; a request may start `lead`
      seconds before the booked time runs out, so the server never idles yet holds at
      most the batch it processes plus what covers the round trip;
    * requests per second: starts at least ``1 / rate`` apart (3% headroom);
    * in flight: at most `window` requests open at once: ``ceil(lead / batch time) + 1``,
      capped by ``max_in_flight``.

    Waiting requests are served in arrival order (a ticket queue), so shipments sharing
    the pacer interleave their batches.  After a 429 every rate is scaled by `factor`
    (halved at most once a second), which recovers step by step with each answered
    request; a Retry-After holds every start until then.  Thread-safe.
    """

    def __init__(
        self, limits: RateLimits, max_in_flight: int, batch_objects: int | None = None
    ) -> None:
        self.limits = limits
        self._objects_per_second = limits.objects_per_second
        self._request_interval = 1.0 / (limits.requests_per_second * REQUEST_HEADROOM)
        self._max_in_flight = max(1, max_in_flight)
        self._batch_objects = batch_objects or 1
        now = time.monotonic()
        self._objects_due = self._requests_due = self._paused_until = now
        self._in_flight = 0
        self._last_cut = -math.inf
        self._closed = False
        self._cond = threading.Condition()
        self._waiting: list[_Ticket] = []  # requests waiting for their start
        self._served: weakref.WeakKeyDictionary[object, int] = weakref.WeakKeyDictionary()
        self._seq = itertools.count()
        self._lateness: float | None = None  # smoothed seconds an answer came after due
        self._recording = 0.0  # smoothed seconds from an answer to it being recorded
        self.factor = 1.0

    # -- the window -------------------------------------------------------------------

    @property
    def lead(self) -> float:
        """Seconds before the server runs out of booked objects that the next starts."""
        if self._lateness is None:
            return FIRST_LEAD
        return min(MAX_LEAD, max(MIN_LEAD, LEAD_MARGIN * self._lateness))

    @property
    def window(self) -> int:
        """Requests allowed in flight: the batch being processed plus the round trip."""
        batch_seconds = self._batch_objects / (self._objects_per_second * self.factor)
        return max(1, min(self.max_in_flight, math.ceil(self.lead / batch_seconds) + 1))

    def batch_size(self, largest: int) -> int:
        """Objects to put in the next batch: `largest` less (twice) what the server
        processes during the lead and while an answer is being recorded, so that on
        average the objects not yet recorded (the batch being processed, plus the next
        one during those moments) stay under one `largest` batch: what a ``kill -9``
        re-sends.  Never under half of `largest` (the request rate must not be what
        limits).  Batches under SMALL_BATCH are kept whole: they re-send little anyway."""
        exposed = self.lead + self._recording  # answered but not yet recorded counts too
        lead_objects = math.ceil(exposed * self._objects_per_second * self.factor)
        # twice: the average then stays one exposure's worth under `largest`, a margin
        # for how much one kill differs from another (one batch or two)
        cut = max(largest // 2, largest - EXPOSURE_MARGIN * lead_objects)
        return largest if largest < SMALL_BATCH else cut

    def recorded(self, seconds: float) -> None:
        """An answer took `seconds` to be recorded by the caller (its ledger): until then
        a kill re-sends it as if it were still in flight."""
        with self._cond:
            self._recording += LEAD_SMOOTHING * (max(0.0, seconds) - self._recording)

    @property
    def max_in_flight(self) -> int:
        return max(1, int(self._max_in_flight * self.factor))

    # -- starts -----------------------------------------------------------------------

    def acquire(self, n_objects: int, cancel: threading.Event | None = None) -> Grant | None:
        """Block until a request of `n_objects` may start (its turn, and every limit
        allows it); None once the pacer is closed or `cancel` is set.

        `cancel` also names the caller's shipment (its lane): the next start goes to the
        lane served longest ago, oldest request first, so two shipments alternate batch
        by batch whatever their number of workers."""
        ticket = _Ticket(cancel if cancel is not None else threading.Event(), next(self._seq))
        with self._cond:
            self._waiting.append(ticket)
            try:
                while not (self._closed or (cancel is not None and cancel.is_set())):
                    now = time.monotonic()
                    start_at = max(
                        self._objects_due - self.lead, self._requests_due, self._paused_until
                    )
                    first = self._next_ticket() is ticket
                    if first and start_at <= now and self._in_flight < self.window:
                        self._served[ticket.lane] = next(self._seq)
                        return self._book(n_objects, now)
                    timeout = start_at - now if first and start_at > now else None
                    # a cancel is only seen on a wake-up: look again at least every 0.2 s
                    self._cond.wait(min(timeout, 0.2) if timeout is not None else 0.2)
                return None
            finally:
                self._waiting.remove(ticket)
                self._cond.notify_all()  # another ticket may be next now

    def _next_ticket(self) -> _Ticket:
        """The lane served longest ago (never served first), its oldest request."""
        return min(self._waiting, key=lambda t: (self._served.get(t.lane, -1), t.seq))

    def _book(self, n_objects: int, now: float) -> Grant:
        rate = self._objects_per_second * self.factor
        self._objects_due = max(self._objects_due, now) + n_objects / rate
        self._requests_due = max(self._requests_due, now) + self._request_interval / self.factor
        self._in_flight += 1
        self._batch_objects = max(self._batch_objects, n_objects)
        return Grant(n_objects, self._objects_due)

    def release(self, answered: bool, grant: Grant | None = None) -> None:
        """A request ended; `answered` means the API took it (no 429, 5xx or network
        error).  An answered `grant` measures how late the answer came (the lead)."""
        with self._cond:
            now = time.monotonic()
            self._in_flight -= 1
            if answered and now - self._last_cut >= SLOW_DOWN_COOLDOWN:
                self.factor = min(1.0, self.factor + RECOVERY_STEP)
            if answered and grant is not None:
                late = max(0.0, now - grant.expected_done)
                old = self._lateness
                self._lateness = (
                    late if old is None else old + LEAD_SMOOTHING * (late - old)
                )
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

    def wake(self) -> None:
        """Let waiting requests look at their cancel event now."""
        with self._cond:
            self._cond.notify_all()

    def close(self) -> None:
        """Wake every waiting worker and refuse new starts."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()


# -- one pacer per account ----------------------------------------------------------------


class Accounts:
    """The pacers of the accounts being shipped to, shared while in use.

    Why: the API's limits are per token.  Two sources (or two library calls) shipping
    with one token at once must share one budget, or together they exceed it and meet a
    storm of 429s.  A pacer lives while a shipment uses it; the first user's limits and
    window settings are the account's (give sources of one token the same `limits`)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._pacers: dict[tuple[str, str], tuple[Pacer, int]] = {}

    @staticmethod
    def key(settings: ApiSettings) -> tuple[str, str]:
        """(base URL, a digest of the token): the token itself is never kept as a key."""
        token = settings.token.get_secret_value().encode()
        return settings.base_url, hashlib.sha256(token).hexdigest()

    @contextmanager
    def pacer(self, settings: ApiSettings) -> Iterator[Pacer]:
        """The account's pacer for the duration of one shipment."""
        key = self.key(settings)
        with self._lock:
            pacer, users = self._pacers.get(key) or (
                Pacer(settings.limits, workers_for(settings), choose_batch_size(settings)),
                0,
            )
            if users and pacer.limits != settings.limits:
                log.warning(
                    "site %s shares its token with a shipment already running: the "
                    "account's limits are that shipment's",
                    settings.site_id,
                )
            self._pacers[key] = (pacer, users + 1)
        try:
            yield pacer
        finally:
            with self._lock:
                pacer, users = self._pacers[key]
                if users <= 1:
                    del self._pacers[key]
                else:
                    self._pacers[key] = (pacer, users - 1)

    def in_use(self) -> int:
        """Accounts with a shipment running (for tests and metrics)."""
        with self._lock:
            return len(self._pacers)


ACCOUNTS = Accounts()  # one per process: the limits are the account's, wherever it ships


def shared_pacer(settings: ApiSettings) -> AbstractContextManager[Pacer]:
    """The process-wide pacer of `settings`' account, for one shipment (a context)."""
    return ACCOUNTS.pacer(settings)


def workers_for(settings: ApiSettings) -> int:
    """Requests kept in flight at most: our own cap, never above the connection limit
    (the pacer's window is usually narrower: see `Pacer.window`)."""
    return max(1, min(settings.max_in_flight, settings.limits.concurrent_connections))


def choose_batch_size(settings: ApiSettings) -> int:
    """Objects per request: the most allowed, within what answers well before the timeout.

    The API answers a request only once its objects are processed, at objects_per_second,
    and a few batches may be queued there: a batch must take at most a quarter of the
    timeout.  It must also hold at least objects_per_second / requests_per_second
    objects, or the request limit, not the object limit, sets the pace.
    """
    limits = settings.limits
    within_timeout = int(settings.timeout_seconds * limits.objects_per_second / 4)
    rate_floor = math.ceil(
        limits.objects_per_second / (limits.requests_per_second * REQUEST_HEADROOM)
    )
    return max(1, min(settings.max_objects_per_request, max(within_timeout, rate_floor)))
