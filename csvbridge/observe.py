"""Logging (text or JSON) with secret redaction, and the daemon's health/metrics endpoint.

Secrets are masked twice: config holds them as `SecretStr`, and every value handed to
`register_secret` (`csvbridge.redaction`) is scrubbed from every log record -- message,
traceback, JSON fields -- by a filter and the formatters of the root handler, so a token
cannot leak even through a third-party library's debug output.

Metrics are a small thread-safe registry (`Metrics`) rendered by hand in the Prometheus
text format, served with ``/healthz`` by `MetricsServer` (`csvbridge.metrics_http`:
bounded threads and sockets, stdlib only).
"""

from __future__ import annotations

import json
import logging
import math
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Literal

from csvbridge.metrics_http import HealthCheck, MetricsServer
from csvbridge.redaction import MASK, redact, register_secret

__all__ = [
    "MASK",
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


# -- metrics -----------------------------------------------------------------------

MetricType = Literal["counter", "gauge"]
LabelKey = tuple[str, ...]

# name -> (type, help, label names).  Names are given without the namespace prefix.
METRICS: dict[str, tuple[MetricType, str, tuple[str, ...]]] = {
    "files_processed_total": (
        "counter",
        "Source files finished, by source and final status (done or failed).",
        ("source", "status"),
    ),
    "conversions_shipped_total": (
        "counter",
        "Conversions accepted by the API.",
        ("source",),
    ),
    "conversions_rejected_total": (
        "counter",
        "Conversions rejected, by csvbridge or by the API.",
        ("source",),
    ),
    "errors_total": (
        "counter",
        "Errors by source and kind (transient, terminal, auth, input...).",
        ("source", "kind"),
    ),
    "last_success_timestamp_seconds": (
        "gauge",
        "Unix time of the last file of this source processed successfully.",
        ("source",),
    ),
    "last_pass_duration_seconds": (
        "gauge",
        "Duration of the last complete pass over all sources.",
        (),
    ),
    "up": (
        "gauge",
        "1 while csvbridge is healthy, 0 otherwise (updated from the health check on scrape).",
        (),
    ),
}


@dataclass
class _Family:
    name: str
    type: MetricType
    help: str
    labels: tuple[str, ...]
    samples: dict[LabelKey, float] = field(default_factory=dict)


class Metrics:
    """Counters and gauges, safe to update from any thread, rendered for Prometheus.

    Metric names are prefixed with ``namespace`` when rendered (``csvbridge_up``): the
    bare ``up`` would be confused with the series Prometheus itself writes per target.
    """

    def __init__(self, namespace: str = "csvbridge") -> None:
        self.namespace = namespace
        self._lock = threading.Lock()
        self._families = {
            name: _Family(name, kind, text, labels)
            for name, (kind, text, labels) in METRICS.items()
        }
        for family in self._families.values():
            if not family.labels:  # always present, so dashboards do not see gaps
                family.samples[()] = 0.0

    def _key(self, family: _Family, labels: dict[str, str]) -> LabelKey:
        if set(labels) != set(family.labels):
            raise ValueError(
                f"metric {family.name} takes labels {list(family.labels)}, got {sorted(labels)}"
            )
        return tuple(str(labels[n]) for n in family.labels)

    def _family(self, name: str) -> _Family:
        try:
            return self._families[name]
        except KeyError:
            raise KeyError(f"unknown metric {name!r}") from None

    def inc(self, name: str, amount: float = 1.0, **labels: str) -> None:
        """Add to a counter (or a gauge)."""
        family = self._family(name)
        if family.type == "counter" and amount < 0:
            raise ValueError(f"counter {name} cannot decrease")
        key = self._key(family, labels)
        with self._lock:
            family.samples[key] = family.samples.get(key, 0.0) + amount

    def set(self, name: str, value: float, **labels: str) -> None:
        """Set a gauge."""
        family = self._family(name)
        if family.type != "gauge":
            raise ValueError(f"{name} is a counter; use inc()")
        key = self._key(family, labels)
        with self._lock:
            family.samples[key] = float(value)

    def get(self, name: str, **labels: str) -> float:
        """Current value (0 for a label set never touched)."""
        family = self._family(name)
        key = self._key(family, labels)
        with self._lock:
            return family.samples.get(key, 0.0)

    def render(self) -> str:
        """The Prometheus text exposition format (version 0.0.4)."""
        out: list[str] = []
        with self._lock:
            for family in self._families.values():
                full = f"{self.namespace}_{family.name}" if self.namespace else family.name
                out.append(f"# HELP {full} {_escape_help(family.help)}")
                out.append(f"# TYPE {full} {family.type}")
                for key, value in sorted(family.samples.items()):
                    if family.labels:
                        pairs = ",".join(
                            f'{n}="{_escape_label(v)}"'
                            for n, v in zip(family.labels, key, strict=True)
                        )
                        out.append(f"{full}{{{pairs}}} {_format_value(value)}")
                    else:
                        out.append(f"{full} {_format_value(value)}")
        return "\n".join(out) + "\n"


def _escape_help(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n")


def _escape_label(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _format_value(value: float) -> str:
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if value.is_integer() and abs(value) < 1e15:
        return str(int(value))
    return repr(value)
