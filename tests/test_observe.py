"""Metrics registry, Prometheus text format, and the /metrics + /healthz server over HTTP."""

from __future__ import annotations

import json
import os
import re
import socket
import threading
import time
import urllib.error
import urllib.request
from typing import Any

import pytest

from csvbridge.errors import ConfigError
from csvbridge.metrics_http import MAX_WAITING, REQUEST_SECONDS, WORKERS
from csvbridge.observe import Metrics, MetricsServer

NAME = r"[a-zA-Z_:][a-zA-Z0-9_:]*"
LABEL_VALUE = r'"(?:[^"\\\n]|\\[\\"n])*"'
LABELS = rf"\{{[a-zA-Z_]\w*={LABEL_VALUE}(?:,[a-zA-Z_]\w*={LABEL_VALUE})*\}}"
SAMPLE = re.compile(rf"^({NAME})(?:{LABELS})? (NaN|[+-]Inf|-?\d+(?:\.\d+)?(?:e[+-]?\d+)?)$")
HELP = re.compile(rf"^# HELP ({NAME}) .+$")
TYPE = re.compile(rf"^# TYPE ({NAME}) (counter|gauge)$")


def parse_exposition(text: str) -> dict[str, str]:
    """Check every line of the text format; return {metric name: type}."""
    assert text.endswith("\n")
    types: dict[str, str] = {}
    helps: set[str] = set()
    for line in text.splitlines():
        if m := HELP.match(line):
            assert m.group(1) not in helps, f"HELP twice: {line}"
            helps.add(m.group(1))
        elif m := TYPE.match(line):
            assert m.group(1) not in types, f"TYPE twice: {line}"
            types[m.group(1)] = m.group(2)
        else:
            m = SAMPLE.match(line)
            assert m, f"not a valid exposition line: {line!r}"
            assert m.group(1) in types, f"sample before its TYPE: {line}"
    assert helps == set(types)
    return types


def sample(text: str, line_start: str) -> float:
    for line in text.splitlines():
        if line.startswith(line_start + " "):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"no sample {line_start!r} in:\n{text}")


# -- registry ----------------------------------------------------------------------


def test_render_is_valid_exposition_with_every_family() -> None:
    m = Metrics()
    m.inc("files_processed_total", source="ftp", status="done")
    m.inc("conversions_shipped_total", 90, source="ftp")
    m.set("last_success_timestamp_seconds", 1795334065.25, source="ftp")
    m.set("last_pass_duration_seconds", 1.5)
    types = parse_exposition(m.render())
    assert types == {
        "csvbridge_files_processed_total": "counter",
        "csvbridge_conversions_shipped_total": "counter",
        "csvbridge_conversions_rejected_total": "counter",
        "csvbridge_errors_total": "counter",
        "csvbridge_last_success_timestamp_seconds": "gauge",
        "csvbridge_last_pass_duration_seconds": "gauge",
        "csvbridge_up": "gauge",
    }
    text = m.render()
    assert 'csvbridge_last_success_timestamp_seconds{source="ftp"} 1795334065.25\n' in text
    assert "csvbridge_last_pass_duration_seconds 1.5\n" in text
    assert "csvbridge_up 0\n" in text  # label-less gauges always present


def test_counters_increment_per_label_set() -> None:
    m = Metrics()
    m.inc("files_processed_total", source="ftp", status="done")
    m.inc("files_processed_total", source="ftp", status="done")
    m.inc("files_processed_total", source="ftp", status="failed")
    m.inc("conversions_rejected_total", 3, source="sftp")
    m.inc("errors_total", source="sftp", kind="transient")
    text = m.render()
    assert sample(text, 'csvbridge_files_processed_total{source="ftp",status="done"}') == 2
    assert sample(text, 'csvbridge_files_processed_total{source="ftp",status="failed"}') == 1
    assert sample(text, 'csvbridge_conversions_rejected_total{source="sftp"}') == 3
    assert m.get("errors_total", source="sftp", kind="transient") == 1
    assert m.get("errors_total", source="sftp", kind="auth") == 0


def test_label_values_are_escaped() -> None:
    m = Metrics()
    m.inc("conversions_shipped_total", source='we"ird\\drop\nname')
    text = m.render()
    parse_exposition(text)
    assert 'csvbridge_conversions_shipped_total{source="we\\"ird\\\\drop\\nname"} 1\n' in text


def test_misuse_is_refused() -> None:
    m = Metrics()
    with pytest.raises(KeyError):
        m.inc("nope_total")
    with pytest.raises(ValueError, match="labels"):
        m.inc("conversions_shipped_total")
    with pytest.raises(ValueError, match="labels"):
        m.inc("conversions_shipped_total", source="a", extra="b")
    with pytest.raises(ValueError, match="decrease"):
        m.inc("conversions_shipped_total", -1, source="a")
    with pytest.raises(ValueError, match="counter"):
        m.set("conversions_shipped_total", 3, source="a")


def test_namespace_and_special_values() -> None:
    m = Metrics(namespace="")
    m.set("last_pass_duration_seconds", float("inf"))
    m.set("up", 1)
    text = m.render()
    parse_exposition(text)
    assert "last_pass_duration_seconds +Inf\n" in text and "\nup 1\n" in text


def test_thread_safe_increments() -> None:
    m = Metrics()

    def work() -> None:
        for _ in range(2000):
            m.inc("conversions_shipped_total", source="s")

    threads = [threading.Thread(target=work) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert m.get("conversions_shipped_total", source="s") == 16000


# -- HTTP server -------------------------------------------------------------------


def get(url: str) -> tuple[int, str, str]:
    try:
        with urllib.request.urlopen(url, timeout=10) as r:
            return r.status, r.headers["Content-Type"], r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.headers["Content-Type"], e.read().decode()


def test_metrics_and_healthz_over_http() -> None:
    m = Metrics()
    state: dict[str, Any] = {"ok": True}

    def health() -> tuple[bool, dict[str, Any]]:
        if state["ok"]:
            return True, {"sources": 2, "last_pass": "2026-11-22T07:45:12Z"}
        return False, {"reason": "no successful pass for 3600 s"}

    with MetricsServer(m, "127.0.0.1", 0, health) as server:
        assert server.port > 0 and server.url == f"http://127.0.0.1:{server.port}"
        m.inc("files_processed_total", source="ftp", status="done")

        status, ctype, body = get(server.url + "/metrics")
        assert status == 200 and ctype.startswith("text/plain; version=0.0.4")
        parse_exposition(body)
        assert sample(body, 'csvbridge_files_processed_total{source="ftp",status="done"}') == 1
        assert sample(body, "csvbridge_up") == 1

        status, ctype, body = get(server.url + "/healthz")
        assert status == 200 and ctype == "application/json"
        assert json.loads(body) == {
            "status": "ok",
            "sources": 2,
            "last_pass": "2026-11-22T07:45:12Z",
        }

        state["ok"] = False
        status, _, body = get(server.url + "/healthz")
        assert status == 503
        assert json.loads(body) == {
            "status": "unhealthy",
            "reason": "no successful pass for 3600 s",
        }
        assert sample(get(server.url + "/metrics")[2], "csvbridge_up") == 0

        assert get(server.url + "/nope")[0] == 404
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", server.port), timeout=2)


def test_health_check_that_raises_is_503() -> None:
    def broken() -> tuple[bool, dict[str, Any]]:
        raise RuntimeError("ledger unreadable")

    with MetricsServer(Metrics(), "127.0.0.1", 0, broken) as server:
        status, _, body = get(server.url + "/healthz?verbose=1")
        assert status == 503
        assert "ledger unreadable" in json.loads(body)["reason"]


def test_port_in_use_is_a_config_error() -> None:
    with MetricsServer(Metrics()) as server, pytest.raises(ConfigError, match="metrics"):
        MetricsServer(Metrics(), "127.0.0.1", server.port)


# -- bounded under idle connections ---------------------------------------------------


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="needs /proc to count fds")
def test_hundreds_of_idle_connections_neither_exhaust_fds_nor_block_healthz() -> None:
    """Today's failure: ~250 idle connections each held a thread and a descriptor until
    the daemon died.  The clients live in this process too, so the count allows for them:
    what must stay bounded is the server's share."""
    idle = 400
    with MetricsServer(Metrics(), "127.0.0.1", 0) as server:
        before = open_fds()
        clients = [socket.create_connection(("127.0.0.1", server.port)) for _ in range(idle)]
        try:
            # all were accepted (the listener's queue is drained), and healthz still answers
            status, _, body = get(server.url + "/healthz")
            assert status == 200 and json.loads(body) == {"status": "ok"}
            assert threading.active_count() < 30
            server_share = open_fds() - before - idle
            assert server_share <= 2 * MAX_WAITING + WORKERS + 4, server_share
            # the oldest idle connections were closed by the server, not left to pile up
            clients[0].settimeout(5)
            assert clients[0].recv(1) == b""
        finally:
            for c in clients:
                c.close()
        assert get(server.url + "/metrics")[0] == 200


def test_silent_and_slow_connections_time_out() -> None:
    with MetricsServer(Metrics(), "127.0.0.1", 0, idle_seconds=0.3) as server:
        silent = socket.create_connection(("127.0.0.1", server.port))
        silent.settimeout(10)
        assert silent.recv(1) == b""  # closed after idle_seconds, without a byte from us
        silent.close()
        slow = socket.create_connection(("127.0.0.1", server.port))
        slow.sendall(b"GET /healthz HTTP/1.1\r\n")  # and never the rest
        slow.settimeout(REQUEST_SECONDS + 10)
        started = time.monotonic()
        data = slow.recv(1024)  # the worker gives up after REQUEST_SECONDS
        assert time.monotonic() - started <= REQUEST_SECONDS + 5
        assert data == b"" or data.startswith(b"HTTP/1.")
        slow.close()
        assert get(server.url + "/healthz")[0] == 200


def test_a_client_trickling_bytes_is_cut_off_at_the_deadline() -> None:
    """One byte every 0.2 s never trips the socket timeout; the deadline still applies."""
    with MetricsServer(Metrics(), "127.0.0.1", 0, request_deadline=1.0) as server:
        slow = socket.create_connection(("127.0.0.1", server.port))
        started = time.monotonic()
        cut = False
        try:
            for byte in b"GET /healthz HTTP/1.1\r\nX-Slow: " + b"a" * 100:
                slow.sendall(bytes([byte]))
                if time.monotonic() - started > 8:
                    break
                time.sleep(0.2)  # the client's pace is what this test is about
        except OSError:  # reset or broken pipe: the server hung up
            cut = True
        assert cut and time.monotonic() - started < 5
        slow.close()
        assert get(server.url + "/healthz")[0] == 200


@pytest.mark.parametrize("port", [70000, -1])
def test_a_port_out_of_range_is_a_config_error(port: int) -> None:
    with pytest.raises(ConfigError, match="0-65535"):
        MetricsServer(Metrics(), "127.0.0.1", port)
