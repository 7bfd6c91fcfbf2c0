"""Metrics registry, Prometheus text format, and the /metrics + /healthz server over HTTP."""

from __future__ import annotations

import json
import os
import socket
import stat
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families

from csvbridge.errors import ConfigError
from csvbridge.metrics_http import MAX_WAITING, REQUEST_SECONDS, WORKERS
from csvbridge.observe import Metrics, MetricsServer


def families(text: str) -> dict[str, Metric]:
    """Parse the exposition with prometheus_client's own parser: {family name: family}."""
    return {f.name: f for f in text_string_to_metric_families(text)}


def value(text: str, name: str, **labels: str) -> float | None:
    """The sample `name` with exactly `labels` (None when absent)."""
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == name and s.labels == labels:
                return s.value
    return None


# -- registry ----------------------------------------------------------------------


def test_every_family_parses_with_its_type_and_conventional_name() -> None:
    m = Metrics()
    m.inc("files_processed_total", source="ftp", status="done")
    m.inc("objects_total", 90, source="ftp", kind="conversions", outcome="shipped")
    m.set("last_success_timestamp_seconds", 1795334065.25, source="ftp")
    m.set("last_pass_duration_seconds", 1.5)
    m.request("conversions/bulk", 429, 0.3)
    m.request("conversions/bulk", 200, 1.2)
    fams = families(m.render())
    types = {name: f.type for name, f in fams.items() if name.startswith("csvbridge_")}
    assert types == {
        "csvbridge_files_processed": "counter",
        "csvbridge_objects": "counter",
        "csvbridge_errors": "counter",
        "csvbridge_api_requests": "counter",
        "csvbridge_api_retries": "counter",
        "csvbridge_api_rate_limited": "counter",
        "csvbridge_api_request_duration_seconds": "histogram",
        "csvbridge_file_objects_remaining": "gauge",
        "csvbridge_file_eta_seconds": "gauge",
        "csvbridge_files": "gauge",
        "csvbridge_last_success_timestamp_seconds": "gauge",
        "csvbridge_last_pass_timestamp_seconds": "gauge",
        "csvbridge_last_pass_duration_seconds": "gauge",
        "csvbridge_up": "gauge",
        "csvbridge_build_info": "gauge",  # an info metric, in the 0.0.4 text format
    }
    # counters end in _total, durations and times are in seconds (base units)
    for f in fams.values():
        for s in f.samples:
            if f.type == "counter":
                assert s.name.endswith("_total"), s.name
    text = m.render()
    assert value(text, "csvbridge_last_success_timestamp_seconds", source="ftp") == 1795334065.25
    assert value(text, "csvbridge_last_pass_duration_seconds") == 1.5
    assert value(text, "csvbridge_up") == 0  # label-less gauges always present
    assert value(text, "csvbridge_api_requests_total", endpoint="conversions/bulk", code="429") == 1
    assert value(text, "csvbridge_api_rate_limited_total", endpoint="conversions/bulk") == 1
    assert value(text, "csvbridge_api_request_duration_seconds_count", endpoint="conversions/bulk") == 2
    assert value(
        text, "csvbridge_api_request_duration_seconds_bucket", endpoint="conversions/bulk", le="0.5"
    ) == 1
    # process metrics: the daemon's own
    assert fams["process_resident_memory_bytes"].samples[0].value > 0
    assert fams["process_open_fds"].samples[0].value > 0


def test_counters_increment_per_label_set() -> None:
    m = Metrics()
    m.inc("files_processed_total", source="ftp", status="done")
    m.inc("files_processed_total", source="ftp", status="done")
    m.inc("files_processed_total", source="ftp", status="failed")
    m.inc("objects_total", 3, source="sftp", kind="products", outcome="rejected")
    m.inc("errors_total", source="sftp", kind="transient")
    text = m.render()
    assert value(text, "csvbridge_files_processed_total", source="ftp", status="done") == 2
    assert value(text, "csvbridge_files_processed_total", source="ftp", status="failed") == 1
    assert (
        value(text, "csvbridge_objects_total", source="sftp", kind="products", outcome="rejected")
        == 3
    )
    assert m.get("errors_total", source="sftp", kind="transient") == 1
    assert m.get("errors_total", source="sftp", kind="auth") == 0


def test_label_values_are_escaped() -> None:
    m = Metrics()
    odd = 'we"ird\\drop\nname'
    m.inc("errors_total", source=odd, kind="x")
    assert value(m.render(), "csvbridge_errors_total", source=odd, kind="x") == 1


def test_misuse_is_refused() -> None:
    m = Metrics()
    with pytest.raises(KeyError):
        m.inc("nope_total")
    with pytest.raises(ValueError):
        m.inc("errors_total")  # labels missing
    with pytest.raises(ValueError):
        m.inc("errors_total", source="a", kind="b", extra="c")
    with pytest.raises(ValueError):
        m.inc("errors_total", -1, source="a", kind="b")
    with pytest.raises(ValueError, match="counter"):
        m.set("errors_total", 3, source="a", kind="b")


def test_thread_safe_increments() -> None:
    m = Metrics()

    def work() -> None:
        for _ in range(2000):
            m.inc("errors_total", source="s", kind="k")

    threads = [threading.Thread(target=work) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert m.get("errors_total", source="s", kind="k") == 16000


def test_textfile_for_node_exporter_is_atomic_readable_and_without_process_metrics(
    tmp_path: Path,
) -> None:
    m = Metrics()
    m.inc("files_processed_total", source="ftp", status="done")
    target = tmp_path / "csvbridge.prom"
    target.write_text("old")
    m.write_textfile(target)
    text = target.read_text()
    assert value(text, "csvbridge_files_processed_total", source="ftp", status="done") == 1
    assert not any(f.name.startswith(("process_", "python_")) for f in families(text).values())
    assert stat.S_IMODE(target.stat().st_mode) == 0o644  # node_exporter runs as another user
    assert [p.name for p in tmp_path.iterdir()] == ["csvbridge.prom"]  # no temporary left


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
        assert value(body, "csvbridge_files_processed_total", source="ftp", status="done") == 1
        assert value(body, "csvbridge_up") == 1

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
        assert value(get(server.url + "/metrics")[2], "csvbridge_up") == 0

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
