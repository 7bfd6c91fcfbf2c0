"""Logging (text or JSON) with secret redaction, and the daemon's health/metrics endpoint.

Secrets are masked twice: config holds them as `SecretStr`, and every value handed to
`register_secret` (`csvbridge.redaction`) is scrubbed from every log record -- message,
traceback, JSON fields -- by a filter and the formatters of the root handler, so a token
cannot leak even through a third-party library's debug output.

Metrics (`csvbridge.metrics.Metrics`, on prometheus_client) are served with
``/healthz`` and the status page by `MetricsServer` (`csvbridge.metrics_http`: bounded
threads and sockets).
"""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Any

from csvbridge.metrics import Metrics
from csvbridge.metrics_http import HealthCheck, MetricsServer
from csvbridge.redaction import MASK, redact, register_secret

__all__ = [
    "MASK",
    "fields_of",
    "HealthCheck",
    "JsonFormatter",
    "Metrics",
    "MetricsServer",
    "RedactingFilter",
    "TextFormatter",
    "redact",
    "register_secret",
    "setup_logging",
]


class RedactingFilter(logging.Filter):
    """Masks secrets in the message *and* the traceback before any formatter sees them.

    The traceback is formatted here (and cached as ``exc_text``, which formatters reuse)
    because a filter runs before formatting: masking only the message left tracebacks,
    which quote header values and URLs, in the clear.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        clean = redact(message)
        if clean != message or record.args:
            record.msg, record.args = clean, None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact(record.exc_text)
        if record.stack_info:
            record.stack_info = redact(record.stack_info)
        for key, value in fields_of(record).items():  # extra= fields, for any handler
            if key != "fields" and hasattr(record, key):
                setattr(record, key, _redact_values(value))
        if isinstance(getattr(record, "fields", None), dict):
            record.fields = _redact_values(record.fields)  # type: ignore[attr-defined]
        return True


class TextFormatter(logging.Formatter):
    """The text format; the finished line is masked again (fields added by formatters)."""

    def format(self, record: logging.LogRecord) -> str:
        return redact(super().format(record))


def _redact_values(value: Any) -> Any:
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, dict):
        return {k: _redact_values(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_redact_values(v) for v in value]
    return redact(str(value)) if not isinstance(value, int | float | bool | None) else value


# what every LogRecord has: anything else on a record came from ``extra=`` (a field)
_RECORD_ATTRS = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {
    "message",
    "asctime",
    "fields",
    "taskName",
}
_RESERVED = ("ts", "level", "logger", "message", "exception", "stack")


def fields_of(record: logging.LogRecord) -> dict[str, Any]:
    """The structured fields of a record: what was passed as ``extra={...}`` (source,
    file, batch, status, counts...), and the older ``extra={"fields": {...}}`` form."""
    out = {k: v for k, v in vars(record).items() if k not in _RECORD_ATTRS and k[:1] != "_"}
    nested = getattr(record, "fields", None)
    if isinstance(nested, dict):
        out.update(nested)
    return out


class JsonFormatter(logging.Formatter):
    """One JSON object per line; ``extra`` fields are top-level keys (a field named like
    a base key -- ts, level, message... -- is kept under ``field_<name>``)."""

    def format(self, record: logging.LogRecord) -> str:
        out = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in fields_of(record).items():
            out[f"field_{key}" if key in _RESERVED else key] = value
        if record.exc_text or record.exc_info:
            out["exception"] = record.exc_text or self.formatException(record.exc_info)
        if record.stack_info:
            out["stack"] = record.stack_info
        # every value masked before encoding (JSON escapes would hide a secret from a
        # search in the encoded line), the line once more after
        return redact(json.dumps(_redact_values(out), default=str))


def setup_logging(fmt: str = "text", level: str = "INFO") -> None:
    """Configure the root logger once: stderr, text or JSON, secrets redacted."""
    root = logging.getLogger()
    for h in list(root.handlers):
        if getattr(h, "_csvbridge", False):
            root.removeHandler(h)
    handler = logging.StreamHandler(sys.stderr)
    handler._csvbridge = True  # type: ignore[attr-defined]
    handler.addFilter(RedactingFilter())
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(TextFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root.addHandler(handler)
    root.setLevel(level)
