"""The daemon's HTTP port, bounded in threads, sockets and time: ``/metrics`` (Prometheus),
``/healthz`` and, when given a `StatusPage`, the status page (``/``, ``/status.json``,
``/reports/<n>``).

Why not `ThreadingHTTPServer`: it starts a thread per connection and waits forever for a
request, so a few hundred idle connections (a port scanner, a stuck load balancer) used
up the process's file descriptors and the daemon died listing its drop.  Here:

* one thread accepts and waits for the first bytes of every connection (a selector):
  an idle connection costs a socket, never a thread;
* at most `MAX_WAITING` connections wait for their request; when one more arrives the
  oldest waiting one is closed, and a waiting connection is closed after `IDLE_SECONDS`;
  so a flood of idle sockets never keeps ``/healthz`` from answering;
* a connection that has sent something (or hung up) is served by one of `WORKERS`
  threads, with a socket timeout (`REQUEST_SECONDS`), a deadline for the whole exchange
  (`REQUEST_DEADLINE`: one byte every few seconds does not hold a worker) and one request
  per connection; at most `MAX_WAITING` more queue for a worker, beyond that it is closed.

Open sockets are thus bounded by ``2 * MAX_WAITING + WORKERS + 3`` whatever the clients do.
"""

from __future__ import annotations

import collections
import contextlib
import json
import logging
import selectors
import socket
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler
from typing import TYPE_CHECKING, Any

from csvbridge.errors import ConfigError
from csvbridge.redaction import redact

if TYPE_CHECKING:
    from csvbridge.metrics import Metrics
    from csvbridge.statuspage import StatusPage

HealthCheck = Callable[[], tuple[bool, dict[str, Any]]]
_log = logging.getLogger("csvbridge.observe")

WORKERS = 4
MAX_WAITING = 64  # connections accepted but with no request yet
IDLE_SECONDS = 10.0  # how long such a connection may stay silent
REQUEST_SECONDS = 5.0  # socket timeout while a worker reads a request and writes the answer
REQUEST_DEADLINE = 10.0  # and the whole exchange: a client trickling bytes is cut off


class _Handler(BaseHTTPRequestHandler):
    """One request per connection (HTTP/1.0): a worker is never held by keep-alive."""

    server: Any  # the `MetricsServer` (it provides .metrics, .health and .status)
    server_version = "csvbridge"
    timeout = REQUEST_SECONDS

    def do_GET(self) -> None:  # noqa: N802 - the stdlib's naming
        path = self.path.split("?", 1)[0]
        page = self.server.status.answer(path) if self.server.status is not None else None
        if page is not None:
            self._send(page.status, page.body, page.content_type)
        elif path == "/metrics":
            from csvbridge.metrics import CONTENT_TYPE

            ok, _ = self._health()
            self.server.metrics.set("up", 1 if ok else 0)
            body = self.server.metrics.render().encode()
            self._send(200, body, CONTENT_TYPE)
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
        self.send_header("X-Content-Type-Options", "nosniff")
        # the status page's own script and styles only; nothing from elsewhere
        self.send_header(
            "Content-Security-Policy",
            "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; "
            "connect-src 'self'; img-src 'self'",
        )
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        _log.debug("metrics endpoint: " + format, *args)


def _always_healthy() -> tuple[bool, dict[str, Any]]:
    return True, {}


def _has_data(conn: socket.socket) -> bool:
    """Whether bytes (or a hang-up) wait on `conn`, without taking them."""
    try:
        conn.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT)  # b"": a hang-up, also news
    except (BlockingIOError, InterruptedError):
        return False
    except OSError:
        return True  # reset: let a worker find out and close it
    return True


def _close(conn: socket.socket) -> None:
    with contextlib.suppress(OSError):
        conn.close()


class MetricsServer:
    """Serves ``GET /metrics``, ``GET /healthz`` (and the status page, when `status` is
    given) from a daemon thread; starts at once.

    ``health()`` returns ``(ok, details)``: ``/healthz`` answers 200
    ``{"status": "ok", **details}`` or 503 ``{"status": "unhealthy", **details}`` (put the
    reason in ``details["reason"]``).  ``port=0`` picks a free port; see `url`.  Raises
    `ConfigError` when it cannot listen (port taken, out of range, unknown host).
    """

    def __init__(
        self,
        metrics: Metrics,
        host: str = "127.0.0.1",
        port: int = 0,
        health: HealthCheck | None = None,
        *,
        status: StatusPage | None = None,
        workers: int = WORKERS,
        max_waiting: int = MAX_WAITING,
        idle_seconds: float = IDLE_SECONDS,
        request_deadline: float = REQUEST_DEADLINE,
    ) -> None:
        if not isinstance(port, int) or not 0 <= port <= 65535:
            raise ConfigError(f"cannot serve metrics: port must be 0-65535, not {port!r}")
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        try:
            self._listener = socket.create_server((host, port), family=family, backlog=1024)
        except (OSError, OverflowError) as exc:
            reason = getattr(exc, "strerror", None) or str(exc)
            raise ConfigError(f"cannot serve metrics: {reason}", host=host, port=port) from None
        self.metrics, self.health = metrics, health or _always_healthy
        self.status = status
        self.host, self.port = host, int(self._listener.getsockname()[1])
        self._workers, self._max_waiting, self._idle = workers, max_waiting, idle_seconds
        self._deadline = request_deadline
        self._pool = ThreadPoolExecutor(workers, thread_name_prefix="csvbridge-metrics")
        self._busy = 0  # connections handed to the pool and not finished
        self._serving: dict[socket.socket, float] = {}  # connection -> deadline, in a worker
        self._busy_lock = threading.Lock()
        self._waiting: collections.OrderedDict[socket.socket, float] = collections.OrderedDict()
        self._selector = selectors.DefaultSelector()
        self._wake_r, self._wake_w = socket.socketpair()
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._serve, name="csvbridge-metrics", daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        """Base URL, e.g. ``http://127.0.0.1:43123``."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    # -- the accepting thread ------------------------------------------------------------

    def _serve(self) -> None:
        sel = self._selector
        sel.register(self._listener, selectors.EVENT_READ, "listen")
        sel.register(self._wake_r, selectors.EVENT_READ, "wake")
        while not self._stopping.is_set():
            for key, _ in sel.select(timeout=min(1.0, self._idle, self._deadline)):
                if key.data == "listen":
                    self._accept()
                elif key.data == "wake":
                    continue
                else:
                    self._ready(key.fileobj)  # type: ignore[arg-type]
            self._expire(time.monotonic())
        for conn in list(self._waiting):
            self._drop(conn)

    def _accept(self) -> None:
        try:
            conn, _ = self._listener.accept()
        except OSError as exc:  # EMFILE and the like: the others are still served
            _log.debug("metrics endpoint: accept failed: %s", exc)
            return
        self._waiting[conn] = time.monotonic() + self._idle
        self._selector.register(conn, selectors.EVENT_READ, "conn")
        if len(self._waiting) <= self._max_waiting:
            return
        # full: the oldest *silent* connection gives way; one whose request has already
        # arrived (the selector may not have reported it yet) is served instead
        for old in list(self._waiting):
            if not _has_data(old):
                self._drop(old)
                return
            self._ready(old)
            if len(self._waiting) <= self._max_waiting:
                return

    def _ready(self, conn: socket.socket) -> None:
        self._selector.unregister(conn)
        del self._waiting[conn]
        with self._busy_lock:
            overloaded = self._busy >= self._workers + self._max_waiting
            if not overloaded:
                self._busy += 1
        if overloaded:
            _close(conn)
            return
        self._pool.submit(self._handle, conn)

    def _expire(self, now: float) -> None:
        while self._waiting:
            conn, deadline = next(iter(self._waiting.items()))
            if deadline > now:
                break
            self._drop(conn)
        with self._busy_lock:
            overdue = [c for c, deadline in self._serving.items() if deadline <= now]
        for conn in overdue:  # unblocks the worker's read or write at once
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)

    def _drop(self, conn: socket.socket) -> None:
        with contextlib.suppress(KeyError, ValueError):
            self._selector.unregister(conn)
        self._waiting.pop(conn, None)
        _close(conn)

    # -- a worker ------------------------------------------------------------------------

    def _handle(self, conn: socket.socket) -> None:
        with self._busy_lock:
            self._serving[conn] = time.monotonic() + self._deadline
        try:
            conn.settimeout(REQUEST_SECONDS)
            _Handler(conn, conn.getpeername(), self)
        except Exception as exc:  # a client that hung up or timed out: not our failure
            _log.debug("metrics endpoint: connection ended: %s", exc)
        finally:
            with self._busy_lock:
                self._busy -= 1
                del self._serving[conn]
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
            _close(conn)

    # -- life cycle ----------------------------------------------------------------------

    def stop(self) -> None:
        """Stop accepting, close waiting connections, let requests being served finish."""
        self._stopping.set()
        with contextlib.suppress(OSError):
            self._wake_w.send(b"x")
        self._thread.join(timeout=5)
        self._pool.shutdown(wait=True)
        for sock in (self._listener, self._wake_r, self._wake_w):
            _close(sock)
        self._selector.close()

    def __enter__(self) -> MetricsServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
