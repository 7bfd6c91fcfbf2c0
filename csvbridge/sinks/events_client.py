"""HTTP to the Commanders Act tracking API (``POST /events`` and ``/events/batch``).

Why apart from the send: the source key travels in the ``token`` query parameter as
documented, so this one class builds every URL and turns every answer or failure into a
typed error -- with the key masked in anything that can reach a log or an exception.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

import requests
from requests.adapters import HTTPAdapter

from csvbridge import __version__
from csvbridge.config import EventsSettings
from csvbridge.errors import ApiTerminalError, ApiTransientError, AuthError
from csvbridge.observe import redact, register_secret

CONNECT_TIMEOUT = 10.0
MASK = "***"


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
