"""The exception tree.

One root (`CsvBridgeError`) so the CLI can turn any library failure into a message and an
exit code.  Two families decide what happens next: `TransientError` is worth retrying
(timeouts, 429, 5xx, a drop server that went away), `TerminalError` is not (bad config, a
file that cannot be read, 400/401/403 from the API).  Errors carry their context (file,
line, batch) as attributes *and* in their message, and never carry a secret.
"""

from __future__ import annotations


class CsvBridgeError(Exception):
    """Root of every error csvbridge raises on purpose."""

    exit_code = 2

    def __init__(self, message: str, **context: object) -> None:
        self.context = {k: v for k, v in context.items() if v is not None}
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


class ConfigError(StopsRun, TerminalError):
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


class ApiTerminalError(StopsRun, ApiError, TerminalError):
    """400 that is not a partial acceptance, 404, 405...: not retried; the API itself is
    unusable as configured, so the run stops.

    ``result`` is what the shipment had done when it stopped (a ``ShipResult``), when the
    error ends a shipment: the caller counts what was not shipped from it."""

    result: object | None = None


class AuthError(ApiTerminalError):
    """401/403: wrong token or wrong site.  Stops the whole run (a configuration fix)."""

    exit_code = 2


class SourceUnavailable(TransientError):
    """A drop (FTP, SFTP, folder) cannot be reached right now."""


class HostKeyError(TerminalError):
    """An SFTP server's host key is unknown or does not match the pinned one."""


class LockedError(TransientError):
    """Another csvbridge pass holds the lock: the next cron pass will find it free."""
