"""The daemon's and the cron pass's metrics, on prometheus_client.

Why prometheus_client and not hand-written text: its exposition is what every scraper
and node_exporter's textfile collector parse, with escaping, histograms and process
metrics done right.  Each `Metrics` has its own registry (a library user or a test can
hold several); nothing is registered in prometheus_client's global registry.

The families (namespace ``csvbridge_``, base units, ``_total`` for counters):

* files_processed_total{source,status}: files finished (done or failed);
* objects_total{source,kind,outcome}: objects of finished files: shipped, rejected
  (by csvbridge or the API) and not_shipped (left for a retry);
* errors_total{source,kind}: errors of a source, by kind;
* api_requests_total{endpoint,code}, api_retries_total{endpoint},
  api_rate_limited_total{endpoint} (429s), api_request_duration_seconds{endpoint};
* file_objects_remaining{source}, file_eta_seconds{source}: the file being shipped;
* files{source,stage}: files waiting in the drop and in processing/ at the last poll;
* last_success_timestamp_seconds{source}, last_pass_timestamp_seconds,
  last_pass_duration_seconds, up, build_info;
* process_* (CPU, memory, open fds, start time) and python_*: the daemon's own; left
  out of the textfile, where they would describe a process that has ended.
"""

from __future__ import annotations

import os
from pathlib import Path

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    Info,
    PlatformCollector,
    ProcessCollector,
    disable_created_metrics,
    generate_latest,
)

from csvbridge import __version__
from csvbridge.files import write_into_place

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"  # what generate_latest writes
# request latency buckets (seconds): a bulk request of a few thousand objects takes
# seconds at the documented rate; timeouts are tens of seconds
LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)
# no ``*_created`` series beside every counter: in the 0.0.4 text format they are
# separate gauges that double what a scrape carries and say nothing a dashboard uses
disable_created_metrics()


class Metrics:
    """Counters, gauges and a histogram on a private registry; thread-safe.

    ``inc``/``set``/``get`` address a family by its name without the ``csvbridge_``
    prefix (and without ``_total`` for counters, which prometheus_client adds), so
    callers need not hold the objects: ``metrics.inc("errors_total", source=…, kind=…)``.
    """

    def __init__(self, namespace: str = "csvbridge", *, process: bool = True) -> None:
        self.namespace = namespace
        self.registry = CollectorRegistry(auto_describe=True)
        # process/python metrics on their own registry: served, never written to a textfile
        self.process_registry = CollectorRegistry(auto_describe=True)
        if process:
            ProcessCollector(namespace="", registry=self.process_registry)
            PlatformCollector(registry=self.process_registry)
        r, ns = self.registry, namespace
        self.files_processed = Counter(
            "files_processed", "Source files finished, by source and final status (done or failed).",
            ["source", "status"], namespace=ns, registry=r,
        )  # fmt: skip
        self.objects = Counter(
            "objects", "Objects of finished files by kind and outcome (shipped, rejected, "
            "not_shipped).", ["source", "kind", "outcome"], namespace=ns, registry=r,
        )  # fmt: skip
        self.errors = Counter(
            "errors", "Errors by source and kind (transient, terminal, auth, input...).",
            ["source", "kind"], namespace=ns, registry=r,
        )  # fmt: skip
        self.api_requests = Counter(
            "api_requests", "Requests to the API by endpoint and HTTP status code "
            "(or TIMEOUT / CONNECTION_ERROR when no answer came).",
            ["endpoint", "code"], namespace=ns, registry=r,
        )  # fmt: skip
        self.api_retries = Counter(
            "api_retries", "Requests sent again after a transient failure.",
            ["endpoint"], namespace=ns, registry=r,
        )  # fmt: skip
        self.api_rate_limited = Counter(
            "api_rate_limited", "HTTP 429 answers (the pacer slows down after each).",
            ["endpoint"], namespace=ns, registry=r,
        )  # fmt: skip
        self.api_latency = Histogram(
            "api_request_duration_seconds", "Time from sending a request to its answer.",
            ["endpoint"], namespace=ns, registry=r, buckets=LATENCY_BUCKETS,
        )  # fmt: skip
        self.remaining = Gauge(
            "file_objects_remaining", "Objects of the file being shipped not answered yet.",
            ["source"], namespace=ns, registry=r,
        )  # fmt: skip
        self.eta = Gauge(
            "file_eta_seconds", "Estimated seconds until the file being shipped is done "
            "(0 when idle or unknown).", ["source"], namespace=ns, registry=r,
        )  # fmt: skip
        self.files = Gauge(
            "files", "Files by stage at the last poll of the source (waiting in the drop, "
            "in processing/).", ["source", "stage"], namespace=ns, registry=r,
        )  # fmt: skip
        self.last_success = Gauge(
            "last_success_timestamp_seconds",
            "Unix time of the last pass of this source that left nothing unfinished.",
            ["source"], namespace=ns, registry=r,
        )  # fmt: skip
        self.last_pass = Gauge(
            "last_pass_timestamp_seconds", "Unix time the last complete pass ended.",
            namespace=ns, registry=r,
        )  # fmt: skip
        self.last_pass_duration = Gauge(
            "last_pass_duration_seconds", "Duration of the last complete pass over all sources.",
            namespace=ns, registry=r,
        )  # fmt: skip
        self.up = Gauge(
            "up", "1 while csvbridge is healthy, 0 otherwise (from the health check on scrape).",
            namespace=ns, registry=r,
        )  # fmt: skip
        Info("build", "The running csvbridge.", namespace=ns, registry=r).info(
            {"version": __version__}
        )
        self._by_name = {
            "files_processed_total": self.files_processed,
            "objects_total": self.objects,
            "errors_total": self.errors,
            "api_requests_total": self.api_requests,
            "api_retries_total": self.api_retries,
            "api_rate_limited_total": self.api_rate_limited,
            "file_objects_remaining": self.remaining,
            "file_eta_seconds": self.eta,
            "files": self.files,
            "last_success_timestamp_seconds": self.last_success,
            "last_pass_timestamp_seconds": self.last_pass,
            "last_pass_duration_seconds": self.last_pass_duration,
            "up": self.up,
        }

    def _family(self, name: str, labels: dict[str, str]) -> Counter | Gauge:
        try:
            family = self._by_name[name]
        except KeyError:
            raise KeyError(f"unknown metric {name!r}") from None
        return family.labels(**{k: str(v) for k, v in labels.items()}) if labels else family

    def inc(self, name: str, amount: float = 1.0, **labels: str) -> None:
        """Add to a counter (or a gauge); a counter refuses a negative amount."""
        self._family(name, labels).inc(amount)

    def set(self, name: str, value: float, **labels: str) -> None:
        """Set a gauge."""
        family = self._family(name, labels)
        if not isinstance(family, Gauge):
            raise ValueError(f"{name} is a counter; use inc()")
        family.set(value)

    def get(self, name: str, **labels: str) -> float:
        """Current value (0 for a label set never touched)."""
        full = f"{self.namespace}_{name}"
        value = self.registry.get_sample_value(full, labels or None)
        return 0.0 if value is None else value

    def request(self, endpoint: str, code: int | str, seconds: float) -> None:
        """One API request answered (or failed without an answer) after `seconds`."""
        self.api_requests.labels(endpoint, str(code)).inc()
        self.api_latency.labels(endpoint).observe(seconds)
        if code == 429:
            self.api_rate_limited.labels(endpoint).inc()

    def render(self, *, process: bool = True) -> str:
        """The Prometheus text exposition format (0.0.4), process metrics included."""
        text = generate_latest(self.registry).decode()
        if process:
            text += generate_latest(self.process_registry).decode()
        return text

    def write_textfile(self, path: str | Path) -> None:
        """Write the metrics for node_exporter's textfile collector, atomically (it must
        never read half a file).  Readable by all (0644, unlike the tool's other files):
        node_exporter runs as another user, and metrics hold no customer data."""
        with write_into_place(path) as f:
            os.fchmod(f.fileno(), 0o644)
            f.write(generate_latest(self.registry))
