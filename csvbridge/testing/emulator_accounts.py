"""The emulator's accounts: one per token, each with its own sites and rate limits.

Why: the API's three limits are the account's (the token's), whatever site it ships
to; an agency has several accounts, each with its limits.  Each `Account` here keeps
its own request window, connection count and object processor, so several tokens are
served at once, each at its own pace, and sources sharing a token are held to one
budget together (the 429s come back when they are not).
"""

from __future__ import annotations

import math
import threading
import time
from collections import deque
from dataclasses import dataclass, field

from csvbridge.config import RateLimits
from csvbridge.errors import ConfigError
from csvbridge.testing.api_answers import Reply, error_body


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else f"{value:g}"


@dataclass(frozen=True)
class SiteSpec:
    """A site the emulator serves, the token that may ship to it, and that token's
    documented limits (before ``speed``); several sites may share a token."""

    site_id: str
    token: str
    limits: RateLimits = field(default_factory=RateLimits)

    @classmethod
    def parse(cls, text: str, token: str = "emulator-token") -> SiteSpec:
        """``SITE[:TOKEN[:OBJECTS/S[:REQUESTS/S[:CONNECTIONS]]]]`` (the CLI's ``--site``);
        left out: `token` and the documented limits."""
        parts = text.strip().split(":")
        site, rest = parts[0], parts[1:]
        if not site or len(rest) > 4 or (rest and not rest[0]):
            raise ConfigError(
                f"--site {text!r}: expected SITE[:TOKEN[:OBJECTS/S[:REQUESTS/S[:CONNECTIONS]]]]"
            )
        try:
            numbers = [float(x) for x in rest[1:]]
        except ValueError:
            raise ConfigError(f"--site {text!r}: the limits must be numbers") from None
        documented = RateLimits()
        limits = RateLimits(
            objects_per_second=numbers[0] if numbers else documented.objects_per_second,
            requests_per_second=numbers[1] if len(numbers) > 1 else documented.requests_per_second,
            concurrent_connections=(
                int(numbers[2]) if len(numbers) > 2 else documented.concurrent_connections
            ),
        )
        return cls(site, rest[0] if rest else token, limits)


class Account:
    """One token: its sites, its limits times ``speed``, and their state."""

    def __init__(self, token: str, limits: RateLimits, speed: float) -> None:
        self.token, self.speed = token, speed
        self.limits = limits
        self.sites: list[str] = []
        self.requests_per_second = limits.requests_per_second * speed
        self.max_connections = max(1, round(limits.concurrent_connections * speed))
        self.objects_per_second = limits.objects_per_second * speed
        self.in_flight = 0
        self._admitted: deque[float] = deque()  # admission times within the last second
        self._busy_until = 0.0  # when the object processor is free again
        self._lock = threading.Lock()

    def admit(self) -> Reply | None:
        """Apply the connection and request limits; an admitted request is counted.  The
        caller has counted the request in `in_flight` already."""
        now = time.monotonic()
        with self._lock:
            if self.in_flight > self.max_connections:
                return Reply(
                    429,
                    error_body(
                        "CONNECTION_LIMIT_REACHED",
                        f"Your account is limited to {self.max_connections} simultaneous "
                        "connections",
                        description="You have too many open connections",
                    ),
                    {"Retry-After": self.retry_after(1.0 / self.speed)},
                )
            while self._admitted and self._admitted[0] <= now - 1.0:
                self._admitted.popleft()
            if len(self._admitted) >= self.requests_per_second:
                wait = self._admitted[0] + 1.0 - now
                return Reply(
                    429,
                    error_body(
                        "REQUEST_LIMIT_REACHED",
                        f"Your account is limited to {_number(self.requests_per_second)} "
                        "requests per second",
                        description="You have reached the request limit",
                    ),
                    {"Retry-After": self.retry_after(wait)},
                )
            self._admitted.append(now)
        return None

    def retry_after(self, seconds: float) -> str:
        """Whole seconds as HTTP says; with speed > 1, decimals, or tests would crawl."""
        if self.speed <= 1:
            return str(max(1, math.ceil(seconds)))
        return f"{max(seconds, 0.001):.3f}"

    def process(self, n_objects: int, stopping: threading.Event) -> None:
        """Hold the answer until the objects are processed at the object rate (FIFO)."""
        with self._lock:
            start = max(time.monotonic(), self._busy_until)
            self._busy_until = done = start + n_objects / self.objects_per_second
        delay = done - time.monotonic()
        if delay > 0:
            stopping.wait(delay)


def accounts_for(sites: list[SiteSpec], speed: float) -> dict[str, Account]:
    """Token -> its account; a token named twice keeps the limits it was first given."""
    accounts: dict[str, Account] = {}
    seen: set[str] = set()
    for spec in sites:
        if spec.site_id in seen:
            raise ConfigError(f"site {spec.site_id} is given twice")
        seen.add(spec.site_id)
        account = accounts.setdefault(spec.token, Account(spec.token, spec.limits, speed))
        account.sites.append(spec.site_id)
    return accounts
