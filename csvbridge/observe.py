"""Logging (text or JSON) with secret redaction, and the daemon's health/metrics endpoint.

Secrets are masked twice: config holds them as `SecretStr`, and every value handed to
`register_secret` is scrubbed from every log record by a filter on the root handler, so a
token cannot leak even through a third-party library's debug output.

Metrics are a small thread-safe registry (`Metrics`) rendered by hand in the Prometheus
text format, served with ``/healthz`` by `MetricsServer` (stdlib HTTP server, no new
dependency).
"""

from __future__ import annotations

import json
import logging
import math
import socket
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Literal

from csvbridge.errors import ConfigError

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


# -- health and metrics endpoint --------------------------------------------------

HealthCheck = Callable[[], tuple[bool, dict[str, Any]]]
_log = logging.getLogger("csvbridge.observe")


class _Server(ThreadingHTTPServer):
    daemon_threads = True  # a slow scraper never keeps the process alive
    metrics: Metrics
    health: HealthCheck


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    server_version = "csvbridge"

    def do_GET(self) -> None:  # noqa: N802 - the stdlib's naming
        path = self.path.split("?", 1)[0]
        if path == "/metrics":
            ok, _ = self._health()
            self.server.metrics.set("up", 1 if ok else 0)
            body = self.server.metrics.render().encode()
            self._send(200, body, "text/plain; version=0.0.4; charset=utf-8")
        elif path == "/healthz":
            ok, details = self._health()
            payload = {"status": "ok" if ok else "unhealthy", **details}
            body = redact(json.dumps(payload, default=str)).encode()
            self._send(200 if ok else 503, body, "application/json")
        else:
            self._send(404, b'{"status":"not found"}', "application/json")

    def _health(self) -> tuple[bool, dict[str, Any]]:
        try:
            ok, details = self.server.health()
            return bool(ok), dict(details)
        except Exception as exc:  # a broken check is an unhealthy service, not a 500
            _log.warning("health check failed: %s", exc)
            return False, {"reason": f"health check failed: {type(exc).__name__}: {exc}"}

    def _send(self, status: int, body: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        _log.debug("metrics endpoint: " + format, *args)


def _always_healthy() -> tuple[bool, dict[str, Any]]:
    return True, {}


class MetricsServer:
    """Serves ``GET /metrics`` and ``GET /healthz`` from a daemon thread; starts at once.

    ``health()`` returns ``(ok, details)``: ``/healthz`` answers 200
    ``{"status": "ok", **details}`` or 503 ``{"status": "unhealthy", **details}`` (put the
    reason in ``details["reason"]``).  ``port=0`` picks a free port; see `url`.
    """

    def __init__(
        self,
        metrics: Metrics,
        host: str = "127.0.0.1",
        port: int = 0,
        health: HealthCheck | None = None,
    ) -> None:
        server_cls = _Server
        if ":" in host:  # IPv6 literal
            server_cls = type("_Server6", (_Server,), {"address_family": socket.AF_INET6})
        try:
            self._server = server_cls((host, port), _Handler)
        except OSError as exc:
            raise ConfigError(
                f"cannot serve metrics: {exc.strerror or exc}", host=host, port=port
            ) from None
        self._server.metrics = metrics
        self._server.health = health or _always_healthy
        self.host = host
        self.port: int = self._server.server_address[1]
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="csvbridge-metrics", daemon=True
        )
        self._thread.start()

    @property
    def url(self) -> str:
        """Base URL, e.g. ``http://127.0.0.1:43123``."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    def __enter__(self) -> MetricsServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
