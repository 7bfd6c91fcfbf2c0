"""What the HTTP stand-ins (bulk API emulator, tracking API, Commerce HQ orders) share:
a threaded HTTP/1.1 server that can cut its kept-alive connections on stop, a handler
with the JSON reply / body reading / hang-up helpers, and the life cycle around them
(``start()`` / ``stop()`` / ``url`` / context manager, on an ephemeral loopback port).

Why one module: the three stand-ins differ only in what they answer; the plumbing that
carries those answers over real sockets was written three times and drifted apart in
small ways.  Each stand-in keeps its own logger name, server banner and log wording
(subclass attributes here), so its behaviour is unchanged.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import threading
from collections.abc import Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, ClassVar, Self

log = logging.getLogger("csvbridge.testing")


class StandInServer(ThreadingHTTPServer):
    """A threaded server (IPv4 or IPv6 by the host's shape) tracking open connections."""

    daemon_threads = True
    log: ClassVar[logging.Logger] = log
    error_message: ClassVar[str] = "stand-in: connection from %s ended with an error"
    stand_in: Any  # the `HTTPStandIn` answering; set by `HTTPStandIn._bind`

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
        self.log.debug(self.error_message, client_address, exc_info=True)


class StandInHandler(BaseHTTPRequestHandler):
    """Keep-alive handler that registers its connection with the server."""

    protocol_version = "HTTP/1.1"  # keep-alive, as clients pool connections
    timeout = 60  # an idle kept-alive connection is closed after this
    log_prefix: ClassVar[str] = "stand-in: "
    server: StandInServer

    def setup(self) -> None:
        super().setup()
        with self.server.connections_lock:
            self.server.connections.add(self.connection)

    def finish(self) -> None:
        with self.server.connections_lock:
            self.server.connections.discard(self.connection)
        super().finish()

    def read_body(self, *, chunked: bool = True) -> bytes:
        """The request body: by ``Content-Length``, or chunked when `chunked` allows it."""
        if chunked and "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            chunks = []
            while size := int(self.rfile.readline().split(b";")[0].strip() or b"0", 16):
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
            while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                pass  # trailers
            return b"".join(chunks)
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def send_json(
        self,
        status: int,
        data: bytes,
        headers: Mapping[str, str] | None = None,
        content_type: str = "application/json",
    ) -> None:
        """Answer `status` with the JSON bytes `data` (and any extra `headers`)."""
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(data)

    def hang_up(self, *, cut: bool = False) -> None:
        """Close the connection without answering; `cut` also shuts the socket down now."""
        self.close_connection = True
        if cut:
            with contextlib.suppress(OSError):
                self.connection.shutdown(socket.SHUT_RDWR)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        self.server.log.debug(self.log_prefix + format, *args)


class HTTPStandIn:
    """Life cycle of a stand-in served by `server_class` / `handler_class`.

    ``start()`` serves from a daemon thread named ``<thread_name>-<port>`` (the socket
    accepts once it returns; port 0 picks a free one, then ``port`` is the real one);
    ``stop()`` stops serving, cuts open connections short and releases the port.
    Answers that wait (slow answers, rate limits) wait on ``_stopping`` so stop is prompt.
    """

    server_class: ClassVar[type[StandInServer]] = StandInServer
    handler_class: ClassVar[type[StandInHandler]] = StandInHandler
    thread_name: ClassVar[str] = "stand-in"
    url_path: ClassVar[str] = ""  # appended to ``http://host:port`` in `url`

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self._stopping = threading.Event()
        self._server: StandInServer | None = None
        self._thread: threading.Thread | None = None

    def _bind(self) -> StandInServer:
        """Listen (once); raises OSError/OverflowError when it cannot."""
        if self._server is None:
            self._server = self.server_class((self.host, self.port), self.handler_class)
            self._server.stand_in = self
            self.port = self._server.server_address[1]
        return self._server

    def start(self) -> Self:
        """Listen and serve from a daemon thread; the socket accepts once this returns."""
        server = self._bind()
        self._thread = threading.Thread(
            target=server.serve_forever,
            kwargs={"poll_interval": 0.1},
            daemon=True,
            name=f"{self.thread_name}-{self.port}",
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving, cut open connections short, release the port."""
        self._stopping.set()
        server, self._server = self._server, None
        if server is None:
            return
        if self._thread is not None:
            server.shutdown()
            self._thread.join(timeout=5)
        server.close_connections()
        server.server_close()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def url(self) -> str:
        """Base URL of the stand-in, e.g. ``http://127.0.0.1:43123`` (+ `url_path`)."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}{self.url_path}"
