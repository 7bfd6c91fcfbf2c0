"""Pacing: the three documented limits of the bulk API held at once, and batch sizing.

The limits (requests per second, requests in flight, objects per second) are enforced
before each request starts, so a well-behaved shipment never sees a 429; the pacer slows
down when one comes anyway.
"""

from __future__ import annotations

import logging
import math
import threading
import time

from csvbridge.config import ApiSettings, RateLimits

log = logging.getLogger("csvbridge.api")

REQUEST_HEADROOM = 0.97  # pace request starts 3% under the limit: clocks and networks jitter
SLOW_DOWN = 0.5  # after a 429, every rate is multiplied by this...
MIN_FACTOR = 0.05
SLOW_DOWN_COOLDOWN = 1.0  # ...at most once per second (429s come in bursts)...
RECOVERY_STEP = 0.05  # ...and recovers by this much per answered request after that
RETRY_AFTER_CAP = 300.0  # a Retry-After beyond this is not taken literally


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
