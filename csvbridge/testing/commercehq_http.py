"""The stand-in's HTTP plumbing: a threaded server that can cut its open connections
short on stop, and a handler that writes each `_Answer` as JSON with a ``Date`` header
on the stand-in's clock.

Why apart from the stand-in: what the orders API answers (`CommerceHQStandIn.answer_get`)
is decided without any socket; this module only carries it over HTTP/1.1.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import threading
from dataclasses import dataclass, field
from email.utils import formatdate
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any

import orjson

if TYPE_CHECKING:
    from csvbridge.testing.commercehq import CommerceHQStandIn

log = logging.getLogger("csvbridge.testing.commercehq")


@dataclass(slots=True)
class _Answer:
    """What the stand-in answers to one request, before it becomes HTTP."""

    status: int
    body: Any
    headers: dict[str, str] = field(default_factory=dict)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    standin: CommerceHQStandIn

    def __init__(self, address: tuple[str, int], handler: type[BaseHTTPRequestHandler]) -> None:
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        self.connections: set[socket.socket] = set()
        self.connections_lock = threading.Lock()
        super().__init__(address, handler)

    def close_connections(self) -> None:
        with self.connections_lock:
            for conn in list(self.connections):
                with contextlib.suppress(OSError):
                    conn.shutdown(socket.SHUT_RDWR)

    def handle_error(self, request: Any, client_address: Any) -> None:
        log.debug("stand-in: connection from %s ended with an error", client_address, exc_info=True)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "csvbridge-commercehq-standin"
    timeout = 60
    server: _Server

    def setup(self) -> None:
        super().setup()
        with self.server.connections_lock:
            self.server.connections.add(self.connection)

    def finish(self) -> None:
        with self.server.connections_lock:
            self.server.connections.discard(self.connection)
        super().finish()

    def date_time_string(self, timestamp: float | None = None) -> str:
        """The ``Date`` header on the stand-in's clock (clients take it as server time)."""
        return formatdate(
            self.server.standin.now() if timestamp is None else timestamp, usegmt=True
        )

    def do_GET(self) -> None:  # noqa: N802 - the stdlib's naming
        answer = self.server.standin.answer_get(self.path, self.headers.get("Authorization"))
        data = orjson.dumps(answer.body)
        self.server.standin._count_status(answer.status)
        with contextlib.suppress(OSError):  # the client gave up (timeout): nothing to do
            self.send_response(answer.status)
            self.send_header("Content-Type", "application/json; charset=UTF-8")
            self.send_header("Content-Length", str(len(data)))
            for name, value in answer.headers.items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(data)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        log.debug("stand-in: " + format, *args)
