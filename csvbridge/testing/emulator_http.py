"""The emulator's HTTP plumbing: a threaded server that can cut its kept-alive connections.

Plain stdlib `http.server`; the API behaviour lives in `Emulator.answer_post`.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import orjson

from csvbridge.testing.api_answers import Reply, error_body

if TYPE_CHECKING:
    from csvbridge.testing.emulator import Emulator

log = logging.getLogger("csvbridge.testing.emulator")


class EmulatorServer(ThreadingHTTPServer):
    daemon_threads = True
    emulator: Emulator

    def __init__(self, address: tuple[str, int], handler: type[BaseHTTPRequestHandler]) -> None:
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        self.connections: set[socket.socket] = set()
        self.connections_lock = threading.Lock()
        super().__init__(address, handler)

    def close_connections(self) -> None:
        """Cut kept-alive connections so their threads end with the server."""
        with self.connections_lock:
            for conn in list(self.connections):
                with contextlib.suppress(OSError):
                    conn.shutdown(socket.SHUT_RDWR)

    def handle_error(self, request: Any, client_address: Any) -> None:
        log.debug("emulator: connection from %s ended with an error", client_address, exc_info=True)


class EmulatorHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as clients pool connections
    server_version = "csvbridge-emulator"
    timeout = 60  # an idle kept-alive connection is closed after this
    server: EmulatorServer

    def setup(self) -> None:
        super().setup()
        with self.server.connections_lock:
            self.server.connections.add(self.connection)

    def finish(self) -> None:
        with self.server.connections_lock:
            self.server.connections.discard(self.connection)
        super().finish()

    def do_GET(self) -> None:  # noqa: N802 - the stdlib's naming
        path = urlsplit(self.path).path
        if path == "/healthz":
            self._send(Reply(200, {"status": "ok"}))
        elif path.startswith("/_emulator/"):  # what it received: objects, request log
            self._send(self.server.emulator.answer_get(self.path))
        else:
            self._send(Reply(404, error_body("NOT_FOUND", f"No route for GET {self.path}")))

    def do_POST(self) -> None:  # noqa: N802
        body = self._read_body()
        answer = self.server.emulator.answer_post(self.path, self.headers, body)
        if answer is None:  # fault injection: hang up before accepting anything
            self.close_connection = True
            return
        self._send(answer)

    def _read_body(self) -> bytes:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            chunks = []
            while size := int(self.rfile.readline().split(b";")[0].strip() or b"0", 16):
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
            while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                pass  # trailers
            return b"".join(chunks)
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _send(self, answer: Reply) -> None:
        data = orjson.dumps(answer.body)
        self.server.emulator._count_status(answer.status)
        self.server.emulator._log_request(self.command, self.path, answer)
        self.send_response(answer.status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for name, value in answer.headers.items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        log.debug("emulator: " + format, *args)
