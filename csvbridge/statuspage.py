"""The daemon's status page: ``GET /`` (one self-contained HTML page), ``/status.json``
(what the page fetches every few seconds) and ``/reports/<n>`` (a finished file's report).

Why the page holds everything inline (CSS, script, an SVG chart drawn by the script):
it must work on an operator's laptop with no internet, behind the same port as
``/metrics``.  Why reports are served by number, not by path: the daemon serves only
the reports it wrote itself, kept in memory when it filed the file (`Telemetry`), so no
part of a URL ever reaches the file system -- there is nothing to traverse.  Everything
is passed through the log redactor before it leaves, like ``/healthz``.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from importlib.resources import files

from csvbridge.progress import Telemetry
from csvbridge.redaction import redact

_REPORT = re.compile(r"^/reports/([0-9]{1,9})$")


@dataclass(frozen=True)
class Page:
    """An answer: status, content type and body."""

    status: int
    content_type: str
    body: bytes


class StatusPage:
    """Answers the status page's requests from a `Telemetry` (thread-safe reads)."""

    def __init__(self, telemetry: Telemetry) -> None:
        self.telemetry = telemetry
        self._html = (files("csvbridge") / "data" / "status" / "index.html").read_bytes()

    def answer(self, path: str) -> Page | None:
        """The answer for `path` (query string removed), or None when it is not ours."""
        if path in ("/", "/index.html"):
            return Page(200, "text/html; charset=utf-8", self._html)
        if path == "/status.json":
            body = redact(json.dumps(self.telemetry.snapshot(), default=str))
            return Page(200, "application/json", body.encode())
        m = _REPORT.match(path)
        if m is None:
            return None
        report = self.telemetry.report(int(m.group(1)))
        if report is None:
            return Page(404, "application/json", b'{"status":"no such report"}')
        text = redact(report.decode("utf-8", "replace"))
        return Page(200, "application/json; charset=utf-8", text.encode())
