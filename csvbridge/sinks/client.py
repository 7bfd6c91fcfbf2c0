"""The bulk API over HTTP: URL, headers, pooled connections, and answers mapped to types.

`ApiClient.post` sends one batch and turns the answer into accepted and rejected records
(`Answer`), or raises: `ApiTransientError` (timeouts, connection errors, 408, 429, 5xx:
the shipper retries them), `AuthError` (401/403: the whole shipment stops),
`ApiRedirectError` (any 3xx: a POST is never followed, since requests would re-send the
orders to whatever host the answer names) or `ApiTerminalError` (any other answer).

`endpoint(settings, kind)` is the one place that turns a kind into a URL; `ship` and the
dry run both use it.
"""

from __future__ import annotations

import logging
import math
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any
from urllib.parse import quote

import orjson
import requests
from requests.adapters import HTTPAdapter

from csvbridge import __version__
from csvbridge.config import ApiSettings, Kind
from csvbridge.errors import ApiRedirectError, ApiTerminalError, ApiTransientError, AuthError
from csvbridge.fold.assemble import Record
from csvbridge.observe import redact, register_secret
from csvbridge.report import Problem
from csvbridge.sinks.results import Endpoint, Rejection

log = logging.getLogger("csvbridge.api")

CONNECT_TIMEOUT = 10.0  # seconds; the read timeout is settings.timeout_seconds

AUTH_REASONS = {
    "MISSING_AUTHORIZATION_HEADER": "no API token was sent (set api.token or CSVBRIDGE_TOKEN)",
    "UNKNOWN_TOKEN_TYPE": "the Authorization header has no token type (expected 'Bearer')",
    "INVALID_TOKEN_TYPE": "the token type is not 'Bearer'",
    "UNKNOWN_TOKEN": "wrong or unknown API token",
}


@dataclass(slots=True)
class Answer:
    """The API's answer to one batch (errors are raised instead)."""

    status: int
    accepted: list[Record]
    rejected: list[Rejection]


class ApiClient:
    """Talks HTTP to the bulk API: URL, headers, pooled connections, reading answers.

    The token is registered with `observe.register_secret` and kept out of reprs,
    exception messages and logs (it only travels in the Authorization header).
    """

    def __init__(self, settings: ApiSettings, session: requests.Session | None = None) -> None:
        self.settings = settings
        token = settings.token.get_secret_value().strip()  # config strips it too
        register_secret(token)
        self._authorization = f"Bearer {token}"
        self._owns_session = session is None
        self.session = session or _pooled_session(settings.max_in_flight)
        self._timeout = (min(CONNECT_TIMEOUT, settings.timeout_seconds), settings.timeout_seconds)

    def __repr__(self) -> str:
        return f"ApiClient(base_url={self.settings.base_url!r}, site_id={self.settings.site_id!r})"

    def url(self, kind: Kind) -> str:
        return endpoint(self.settings, kind).url

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
                allow_redirects=False,  # a 3xx is an error, never a re-post elsewhere
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
        if 300 <= status < 400:
            location = headers.get("Location")
            raise ApiRedirectError(
                f"the API answered HTTP {status} redirecting to {location or '(no Location)'}; "
                "a POST is never followed and nothing of this batch counts as shipped: "
                "check api.base_url",
                status=status,
                location=location,
            )
        body = _json(content)
        code, detail = _first_error(body)
        if status == 400:
            accepted, rejected = split_partial(body, batch)
            return Answer(status, accepted, rejected)
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


def endpoint(settings: ApiSettings, kind: Kind) -> Endpoint:
    """The URL records of `kind` are posted to: ``{base_url}/v2/{site}/{kind}/bulk``."""
    site = quote(settings.site_id, safe="")
    return Endpoint(kind, f"{settings.base_url}/v2/{site}/{kind}/bulk", settings.site_id)


def resolve_kind(kind: Kind, *, products_from_conversions: bool = False) -> Kind:
    """The kind of the objects sent: products extracted from conversions are products."""
    return "products" if products_from_conversions else kind


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
) -> tuple[list[Record], list[Rejection]]:
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
        return [], [Rejection(r, [_problem(e, r) for e in errors]) for r in batch]
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
    return accepted, [Rejection(batch[i], refused[i]) for i in sorted(refused)]


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
