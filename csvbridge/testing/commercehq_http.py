"""The stand-in's HTTP plumbing: the shared stand-in server and handler
(`csvbridge.testing.http_standin`), writing each `_Answer` as JSON with a ``Date`` header
on the stand-in's clock.

Why apart from the stand-in: what the orders API answers (`CommerceHQStandIn.answer_get`)
is decided without any socket; this module only carries it over HTTP/1.1.
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass, field
from email.utils import formatdate
from typing import TYPE_CHECKING, Any

import orjson

from csvbridge.testing.http_standin import StandInHandler, StandInServer

if TYPE_CHECKING:
    from csvbridge.testing.commercehq import CommerceHQStandIn

log = logging.getLogger("csvbridge.testing.commercehq")


@dataclass(slots=True)
class _Answer:
    """What the stand-in answers to one request, before it becomes HTTP."""

    status: int
    body: Any
    headers: dict[str, str] = field(default_factory=dict)


class _Server(StandInServer):
    log = log
    error_message = "stand-in: connection from %s ended with an error"
    stand_in: CommerceHQStandIn


class _Handler(StandInHandler):
    server_version = "csvbridge-commercehq-standin"
    log_prefix = "stand-in: "
    server: _Server

    def date_time_string(self, timestamp: float | None = None) -> str:
        """The ``Date`` header on the stand-in's clock (clients take it as server time)."""
        return formatdate(
            self.server.stand_in.now() if timestamp is None else timestamp, usegmt=True
        )

    def do_GET(self) -> None:  # noqa: N802 - the stdlib's naming
        answer = self.server.stand_in.answer_get(self.path, self.headers.get("Authorization"))
        data = orjson.dumps(answer.body)
        self.server.stand_in._count_status(answer.status)
        with contextlib.suppress(OSError):  # the client gave up (timeout): nothing to do
            self.send_json(
                answer.status, data, answer.headers, content_type="application/json; charset=UTF-8"
            )
