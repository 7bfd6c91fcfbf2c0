"""Talking to one Commerce HQ store: its settings and ``GET /orders`` with retries.

Why apart from paging: what counts as transient (timeouts, 429, 5xx: retried with
backoff, ``Retry-After`` honoured), as a wrong key (401/403: `SourceAuthError`) or as an
answer we cannot use (`TerminalError`) is the same whichever page is asked for.  The
server's ``Date`` comes back with each page, so the cursor never mixes our clock with
the store's ``updated_at``.
"""

from __future__ import annotations

import logging
import math
import random
import threading
import time
from email.utils import parsedate_to_datetime
from typing import Any, Self

import orjson
import requests
from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator

from csvbridge.errors import SourceAuthError, SourceUnavailable, TerminalError

log = logging.getLogger("csvbridge.sources.commercehq")

RETRY_AFTER_CAP = 300.0


class CommerceHQSettings(BaseModel):
    """One Commerce HQ store.  Key and password are `SecretStr`: never printed."""

    model_config = ConfigDict(extra="forbid")

    base_url: str  # https://STORE.commercehq.com/api/v1 (see `api_base_url`)
    api_key: SecretStr
    api_password: SecretStr
    currency: str = "USD"  # the store's currency: orders do not carry one
    page_size: int = Field(50, ge=1, le=250)
    overlap_seconds: int = Field(300, ge=0)
    start: int = Field(0, ge=0)  # first pass: orders created/updated since (0: all)
    connect_timeout_seconds: float = Field(10, gt=0)
    timeout_seconds: float = Field(60, gt=0)
    max_attempts: int = Field(8, ge=1)
    backoff_base_seconds: float = Field(0.5, gt=0)
    backoff_max_seconds: float = Field(60, gt=0)

    @field_validator("base_url")
    @classmethod
    def _strip_slash(cls, v: str) -> str:
        return v.rstrip("/")


def api_base_url(url: str) -> str:
    """``commercehq://STORE_HOST[:port]`` -> ``https://STORE_HOST/api/v1``;
    ``commercehq+http://127.0.0.1:8080`` (the stand-in) -> plain HTTP."""
    scheme, sep, rest = url.partition("://")
    if not sep or scheme not in ("commercehq", "commercehq+https", "commercehq+http"):
        raise TerminalError("a Commerce HQ source url is commercehq://STORE_HOST", url=url)
    host = rest.split("/", 1)[0]
    if "@" in host:
        raise TerminalError("put the API key and password in the config, not in the url")
    return f"{'http' if scheme == 'commercehq+http' else 'https'}://{host}/api/v1"


class CommerceHQConnection:
    """The HTTP side of `CommerceHQClient`: one session with the store's key, counting
    requests and retries; ``stop`` cuts a retry wait short."""

    def __init__(
        self,
        settings: CommerceHQSettings,
        *,
        session: requests.Session | None = None,
        stop: threading.Event | None = None,
    ) -> None:
        self.settings = settings
        self.session = session or requests.Session()
        self.session.auth = (
            settings.api_key.get_secret_value(),
            settings.api_password.get_secret_value(),
        )
        self.stop = stop or threading.Event()
        self.requests = 0
        self.retries = 0

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.settings.base_url!r})"

    def close(self) -> None:
        self.session.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def get_orders(self, params: dict[str, Any]) -> tuple[dict[str, Any], int]:
        """One list page (retried while transient) and the server's time (``Date``)."""
        s = self.settings
        url = f"{s.base_url}/orders"
        for attempt in range(1, s.max_attempts + 1):
            retry_after: float | None = None
            self.requests += 1
            try:
                resp = self.session.get(
                    url, params=params, timeout=(s.connect_timeout_seconds, s.timeout_seconds)
                )
            except (requests.Timeout, requests.ConnectionError) as exc:
                reason = f"{type(exc).__name__}"
            else:
                if resp.status_code == 200:
                    try:
                        body = orjson.loads(resp.content)
                    except orjson.JSONDecodeError:
                        reason = "an answer that is not JSON"
                    else:
                        return _checked(body, params), _server_time(resp.headers.get("Date"))
                elif resp.status_code in (401, 403):
                    raise SourceAuthError(
                        f"Commerce HQ refused the API key and password (HTTP "
                        f"{resp.status_code}): check api_key/api_password of this store and "
                        "that its private app may read orders",
                        url=url,
                        status=resp.status_code,
                    )
                elif resp.status_code == 429 or resp.status_code >= 500:
                    reason = f"HTTP {resp.status_code}"
                    retry_after = _retry_after(resp.headers.get("Retry-After"))
                else:
                    raise TerminalError(
                        f"Commerce HQ answered HTTP {resp.status_code}: {_message(resp.content)}",
                        url=url,
                        page=params.get("page"),
                    )
            if attempt == s.max_attempts or self.stop.is_set():
                raise SourceUnavailable(
                    f"Commerce HQ orders unavailable after {attempt} attempts: {reason}",
                    url=url,
                    page=params.get("page"),
                )
            self.retries += 1
            delay = retry_after if retry_after is not None else self._backoff(attempt)
            log.warning(
                "commercehq: %s on page %s, retry in %.2f s", reason, params.get("page"), delay
            )
            self.stop.wait(delay)
        raise AssertionError("unreachable")

    def _backoff(self, attempt: int) -> float:
        """Exponential backoff with full jitter."""
        s = self.settings
        return random.uniform(
            0, min(s.backoff_max_seconds, s.backoff_base_seconds * 2 ** (attempt - 1))
        )


def _checked(body: Any, params: dict[str, Any]) -> dict[str, Any]:
    """The list wrapper, with expanded line items (or a terminal error naming what lacks)."""
    if not isinstance(body, dict) or not isinstance(body.get("items"), list):
        raise TerminalError("Commerce HQ answered without an `items` list", page=params["page"])
    if not isinstance(body.get("_meta"), dict):
        raise TerminalError("Commerce HQ answered without `_meta` (paging)", page=params["page"])
    for order in body["items"]:
        if not isinstance(order, dict) or "items" not in order:
            raise TerminalError(
                "Commerce HQ sent orders without line items: `expand=items` not honoured",
                page=params["page"],
            )
    return body


def _server_time(date: str | None) -> int:
    """The server's clock from ``Date`` (ours if absent): the cursor never mixes clocks
    with ``updated_at``."""
    if date:
        try:
            return int(parsedate_to_datetime(date).timestamp())
        except (TypeError, ValueError):
            pass
    return int(time.time())


def _retry_after(value: str | None) -> float | None:
    """``Retry-After`` in seconds (a number or an HTTP date), capped."""
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        try:
            seconds = parsedate_to_datetime(value).timestamp() - time.time()
        except (TypeError, ValueError):
            return None
    return min(max(0.0, seconds), RETRY_AFTER_CAP) if math.isfinite(seconds) else None


def _message(content: bytes) -> str:
    try:
        body = orjson.loads(content)
    except orjson.JSONDecodeError:
        return content[:200].decode("utf-8", "replace")
    return str(body.get("message", body))[:200] if isinstance(body, dict) else str(body)[:200]
