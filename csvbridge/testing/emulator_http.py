"""The emulator's HTTP routes: health, what it received (``/_emulator/``), the bulk POSTs.

Plain stdlib `http.server` via `csvbridge.testing.http_standin`; the API behaviour lives
in `Emulator.answer_post` / `Emulator.answer_get`.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

import orjson

from csvbridge.testing.api_answers import Reply, error_body
from csvbridge.testing.http_standin import StandInHandler, StandInServer

if TYPE_CHECKING:
    from csvbridge.testing.emulator import Emulator

log = logging.getLogger("csvbridge.testing.emulator")


class EmulatorServer(StandInServer):
    log = log
    error_message = "emulator: connection from %s ended with an error"
    stand_in: Emulator

    @property
    def emulator(self) -> Emulator:
        return self.stand_in


class EmulatorHandler(StandInHandler):
    server_version = "csvbridge-emulator"
    log_prefix = "emulator: "
    server: EmulatorServer

    def do_GET(self) -> None:  # noqa: N802 - the stdlib's naming
        path = urlsplit(self.path).path
        if path == "/healthz":
            self._send(Reply(200, {"status": "ok"}))
        elif path.startswith("/_emulator/"):  # what it received: objects, request log
            self._send(self.server.emulator.answer_get(self.path))
        else:
            self._send(Reply(404, error_body("NOT_FOUND", f"No route for GET {self.path}")))

    def do_POST(self) -> None:  # noqa: N802
        body = self.read_body()
        answer = self.server.emulator.answer_post(self.path, self.headers, body)
        if answer is None:  # fault injection: hang up before accepting anything
            self.hang_up()
            return
        self._send(answer)

    def _send(self, answer: Reply) -> None:
        data = orjson.dumps(answer.body)
        self.server.emulator._count_status(answer.status)
        self.server.emulator._log_request(self.command, self.path, answer)
        self.send_json(answer.status, data, answer.headers)
