"""The daemon's banner: what `csvbridge watch` is about to do, logged once at start.

Logged (not printed): under systemd or in a container the log is where an operator
looks first.  Every line goes through the redactor.
"""

from __future__ import annotations

import logging
from pathlib import Path

from csvbridge import __version__
from csvbridge.config import Settings
from csvbridge.drops.inboxes import kind_of
from csvbridge.redaction import redact

log = logging.getLogger("csvbridge.drops")


def safe_url(url: str) -> str:
    """`url` as it may be logged.  A drop URL never holds a password (the filesystem
    registry refuses one, without echoing it); secrets anywhere else are masked."""
    return redact(url)


def destinations(settings: Settings) -> list[str]:
    """Where the configured sinks deliver, one line each."""
    sinks = {s for src in settings.sources for s in src.sinks}
    out = []
    if "api" in sinks:
        out.append(f"api: {safe_url(settings.api.base_url)} (site {settings.api.site_id})")
    if "feed" in sinks:
        out.append(f"feed: {safe_url(settings.feed.target)}")
    if "events" in sinks:
        out.append(f"events: {safe_url(settings.events.base_url)} (site {settings.events.site_id})")
    return out


def log_banner(settings: Settings, url: str | None, watched: dict[str, Path]) -> None:
    """Log what the daemon watches and where it delivers (one record per line, each
    with structured fields for JSON logs)."""
    log.info(
        "csvbridge %s watching %d sources",
        __version__,
        len(settings.sources),
        extra={"version": __version__, "sources": len(settings.sources)},
    )
    for src in settings.sources:
        how = "watched live" if src.name in watched else f"polled every {src.poll_interval_seconds:g} s"
        log.info(
            "source %s: %s %s (%s), sinks %s, %s",
            src.name,
            kind_of(src),
            safe_url(src.url),
            src.kind,
            ",".join(src.sinks),
            how,
            extra={"source": src.name, "url": safe_url(src.url), "sinks": list(src.sinks)},
        )
    for line in destinations(settings):
        log.info("destination %s", line)
    if url is not None:
        log.info(
            "status page on %s/, metrics on %s/metrics, health on %s/healthz",
            url, url, url, extra={"url": url},
        )  # fmt: skip
    else:
        log.info("no metrics or status page (set metrics.port to serve them)")
