"""The exception tree.

One root (`CsvBridgeError`) so the CLI can turn any library failure into a message and an
exit code.  Two families decide what happens next: `TransientError` is worth retrying
(timeouts, 429, 5xx, a drop server that went away), `TerminalError` is not (bad config, a
file that cannot be read, 400/401/403 from the API).  Errors carry their context (file,
line, batch) as attributes *and* in their message, and never carry a secret: every
registered secret (`csvbridge.redaction`) is masked in the message when it is built.

`StopsRun` marks the errors after which a pass must not take another file (the API
refuses the token, the configuration is unusable): `except StopsRun` instead of a tuple.
An error raised after part of the work was done carries that part as ``result`` (for
`csvbridge.sinks.ship`: the `ShipResult`, so the caller can account for every record).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from csvbridge.redaction import redact

if TYPE_CHECKING:
    from csvbridge.sinks.results import ShipResult


class CsvBridgeError(Exception):
    """Root of every error csvbridge raises on purpose."""

    exit_code = 2
    result: ShipResult | None = None  # what was done before the failure, if anything

    def __init__(self, message: str, **context: object) -> None:
        message = redact(message)
        self.context = {
            k: redact(v) if isinstance(v, str) else v for k, v in context.items() if v is not None
        }
        where = ", ".join(f"{k}={v}" for k, v in self.context.items())
        super().__init__(f"{message} ({where})" if where else message)
        self.message = message


class TerminalError(CsvBridgeError):
    """Retrying will not help: a person has to change something."""


class StopsRun(CsvBridgeError):
    """Marker base: this error stops the whole run (every source), because the fix is in
    the configuration shared by all of them (API token, site id, API URL, mapping), not
    in one file or one drop.  Mixed into the errors that do; catch it as one class."""


class TransientError(CsvBridgeError):
    """May succeed if tried again later."""

    exit_code = 3


class ConfigError(TerminalError, StopsRun):
    """The configuration (file, environment or command line) is unusable."""


class InputError(TerminalError):
    """A source file cannot be used at all (undecodable, no header, missing column...)."""


class ApiError(CsvBridgeError):
    """An HTTP answer from the bulk API that is not a success."""

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        code: str | None = None,
        body: object = None,
        **context: object,
    ) -> None:
        super().__init__(message, status=status, code=code, **context)
        self.status = status
        self.code = code
        self.body = body


class ApiTransientError(ApiError, TransientError):
    """429, 5xx, connection reset, timeout: retried with backoff."""

    def __init__(self, message: str, *, retry_after: float | None = None, **kwargs: object) -> None:
        super().__init__(message, **kwargs)  # type: ignore[arg-type]
        self.retry_after = retry_after


class ApiTerminalError(ApiError, TerminalError, StopsRun):
    """400 that is not a partial acceptance, 404, 405, a redirect...: not retried."""


class ApiRedirectError(ApiTerminalError):
    """A 3xx to a POST: never followed (the orders would go to another host unchecked)."""

    def __init__(self, message: str, *, location: str | None = None, **kwargs: object) -> None:
        super().__init__(message, location=location, **kwargs)  # type: ignore[arg-type]
        self.location = location


class AuthError(ApiTerminalError):
    """401/403: wrong token or wrong site.  Stops the whole run (a configuration fix)."""

    exit_code = 2


class SourceUnavailable(TransientError):
    """A drop (FTP, SFTP, folder) cannot be reached right now."""


class SourceAuthError(TerminalError):
    """An upstream shop API (Commerce HQ) refused the key/password (401/403): stops that
    source until a person fixes its credentials; the other sources go on."""


class HostKeyError(TerminalError):
    """An SFTP server's host key is unknown or does not match the pinned one."""


class LockedError(TransientError):
    """Another csvbridge pass holds the lock: the next pass will take its turn."""


class EventTooLarge(TerminalError):
    """One tracking event is over the API's per-event size (32 KB): it is never sent, the
    other events go on.  Splitting an order is undocumented, so a person must decide."""

    code = "EVENT_TOO_LARGE"


class DropError(TerminalError):
    """The embedded FTP drop cannot start (port taken, certificate unreadable, bad users)."""
