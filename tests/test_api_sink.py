"""The API sink against the emulator: real HTTP on loopback, nothing mocked.

The invariant checked throughout: every record ends up in exactly one of accepted,
rejected, not shipped (or skipped), the emulator accepted exactly the ids reported
accepted, and no accepted id was ever sent twice.
"""

from __future__ import annotations

import http.server
import logging
import socket
import threading
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from typing import Any

import orjson
import pytest
import requests

from csvbridge.config import ApiSettings, RateLimits
from csvbridge.errors import ApiRedirectError, AuthError, StopsRun, TerminalError
from csvbridge.fold.assemble import Record
from csvbridge.sinks import (
    ApiClient,
    BatchOutcome,
    ShipResult,
    choose_batch_size,
    parse_retry_after,
    plan,
    ship,
)
from csvbridge.testing.emulator import Emulator
from csvbridge.testing.sample_objects import sample_conversion, sample_records
from tests.plugins.api import settings_for


def records_with(*changes: tuple[int, dict[str, Any] | str], n: int = 10) -> list[Record]:
    """`n` sample records; ``(i, {...})`` updates record i, ``(i, "field")`` deletes a field."""
    edits = dict(changes)
    out = []
    for i in range(n):
        conversion = sample_conversion(i)
        change = edits.get(i)
        if isinstance(change, dict):
            conversion.update(change)
        elif isinstance(change, str):
            del conversion[change]
        out.append(Record(conversion["id"], orjson.dumps(conversion), (2 * i + 2, 2 * i + 3)))
    return out


def assert_accounted(result: ShipResult, records: list[Record], emu: Emulator) -> None:
    ids = {r.id for r in records}
    shipped = result.accepted_ids + [r.id for r, _ in result.rejected]
    shipped += [r.id for r in result.not_shipped]
    assert len(shipped) == len(set(shipped)) and set(shipped) <= ids  # each in one list
    assert len(shipped) + result.skipped == len(records)  # and none missing
    stats = emu.stats
    assert stats.resent == set()
    assert set(stats.received_ids) == set(result.accepted_ids)


def test_ships_everything_within_the_limits(emulator: Any) -> None:
    emu = emulator()
    records = list(sample_records(300))
    outcomes: list[BatchOutcome] = []
    result = ship(records, settings_for(emu, max_in_flight=3), on_batch=outcomes.append)
    assert result.accepted == 300 and not result.rejected and not result.not_shipped
    assert_accounted(result, records, emu)
    # batches of at most 90, cut shorter by the pacer's measured lead (pacer.batch_size)
    assert result.status_counts == {202: result.requests} and result.retries == 0
    assert 4 <= result.requests <= 300 // 45 + 1
    assert sorted(o.batch_no for o in outcomes) == list(range(1, result.requests + 1))
    assert all(len(o.accepted) <= 90 for o in outcomes)
    assert sum(len(o.accepted) for o in outcomes) == 300
    assert emu.stats.max_concurrent <= 3
    assert emu.store["conversions"]["ORD-0000007"] == orjson.loads(records[7].json)
    assert result.objects_per_second > 0.6 * 300  # the benchmark measures it precisely


def test_request_limit_paces_small_batches(emulator: Any) -> None:
    emu = emulator(limits=RateLimits(requests_per_second=3))  # 30 requests/s
    records = list(sample_records(60))
    settings = settings_for(
        emu,
        limits=RateLimits(requests_per_second=30, objects_per_second=300),
        max_objects_per_request=2,
    )
    result = ship(records, settings)
    assert result.status_counts == {202: 30}  # no 429
    assert result.seconds >= 0.9  # 30 starts at 30 per second
    assert_accounted(result, records, emu)


def test_connection_limit_caps_requests_in_flight(emulator: Any) -> None:
    limits = RateLimits(requests_per_second=300, concurrent_connections=2, objects_per_second=300)
    emu = emulator(speed=1, limits=limits)
    records = list(sample_records(200))
    settings = settings_for(emu, limits=limits, max_in_flight=8, max_objects_per_request=10)
    result = ship(records, settings)
    assert result.accepted == 200 and 429 not in result.status_counts
    assert emu.stats.max_concurrent <= 2


def test_partial_acceptance_maps_errors_to_records_and_lines(emulator: Any) -> None:
    emu = emulator()
    records = records_with((2, {"currency": "euro"}), (6, "created"), (7, {"final_amount": "12"}))
    outcomes: list[BatchOutcome] = []
    result = ship(records, settings_for(emu, max_objects_per_request=5), on_batch=outcomes.append)
    rejected = {r.id: (r, problems) for r, problems in result.rejected}
    assert set(rejected) == {records[i].id for i in (2, 6, 7)}
    expected = {
        2: ("INVALID_PROPERTY_FORMAT", "currency"),
        6: ("MISSING_REQUIRED_PROPERTY", None),
        7: ("INVALID_PROPERTY_TYPE", "final_amount"),
    }
    for i, (code, prop) in expected.items():
        record, problems = rejected[records[i].id]
        assert record is records[i]
        (problem,) = problems
        assert (problem.code, problem.property) == (code, prop)
        assert problem.lines == records[i].lines and problem.id == records[i].id
    assert "created" in rejected[records[6].id][1][0].detail
    assert sorted(result.accepted_ids) == sorted(records[i].id for i in (0, 1, 3, 4, 5, 8, 9))
    assert set(emu.store["conversions"]) == set(result.accepted_ids)
    assert result.status_counts == {400: 2} and result.retries == 0
    assert sum(len(o.rejected) for o in outcomes) == 3
    assert_accounted(result, records, emu)


def test_rejections_the_api_does_not_name_are_counted_accepted_with_a_warning(
    emulator: Any, caplog: pytest.LogCaptureFixture
) -> None:
    emu = emulator()
    emu.max_examples = 1  # the API lists only "some examples" per error
    records = records_with((1, {"currency": "euro"}), (3, {"currency": "usd"}), n=5)
    with caplog.at_level(logging.WARNING, logger="csvbridge.api"):
        result = ship(records, settings_for(emu))
    assert [r.id for r, _ in result.rejected] == [records[1].id]
    assert result.accepted == 4
    assert "named only 1" in caplog.text


def test_parse_error_rejects_the_whole_batch_without_retry(emulator: Any) -> None:
    emu = emulator()
    records = records_with(n=3)
    records[1] = Record(records[1].id, b"{broken", records[1].lines)
    result = ship(records, settings_for(emu))
    assert result.accepted == 0 and len(result.rejected) == 3
    assert {p.code for _, problems in result.rejected for p in problems} == {"PARSE_ERROR"}
    assert result.requests == 1 and result.status_counts == {400: 1}
    assert_accounted(result, records, emu)


def test_429_storm_from_many_clients_loses_and_resends_nothing(emulator: Any) -> None:
    # the server allows 20 requests/s and 10 connections; three clients believe in 300/s
    emu = emulator(limits=RateLimits(requests_per_second=2, concurrent_connections=1))
    settings = settings_for(emu, max_in_flight=8, max_objects_per_request=5, max_attempts=30)
    results: list[ShipResult] = []
    batches = [list(sample_records(100, first=k * 100)) for k in range(3)]
    threads = [
        threading.Thread(target=lambda b=b: results.append(ship(b, settings))) for b in batches
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    stats = emu.stats
    assert stats.status_counts[429] > 0
    assert sum(r.accepted for r in results) == 300
    assert all(not r.not_shipped and not r.rejected for r in results)
    assert stats.resent == set() and len(stats.received_ids) == 300
    assert sum(r.status_counts[429] for r in results) == stats.status_counts[429]


def test_server_errors_and_dropped_connections_lose_and_resend_nothing(emulator: Any) -> None:
    emu = emulator(fail_rate=0.2, drop_rate=0.2, seed=7)
    records = list(sample_records(600))
    result = ship(records, settings_for(emu, max_objects_per_request=30))
    assert result.accepted == 600 and not result.not_shipped
    assert result.retries > 0
    assert result.status_counts[500] > 0 and result.status_counts["CONNECTION_ERROR"] > 0
    assert_accounted(result, records, emu)
    assert set(emu.stats.received_ids) == {r.id for r in records}


def test_retry_after_is_honoured(emulator: Any) -> None:
    emu = emulator(limits=RateLimits(requests_per_second=0.1))  # 1 request per second
    settings = settings_for(
        emu,
        max_objects_per_request=1,
        max_in_flight=1,
        max_attempts=2,  # an immediate retry would meet a second 429 and give up
        backoff_base_seconds=0.001,
        backoff_max_seconds=0.002,
    )
    result = ship(list(sample_records(2)), settings)
    assert result.accepted == 2
    assert result.status_counts == {202: 2, 429: 1} and result.retries == 1
    assert result.seconds >= 0.9


@pytest.mark.parametrize(
    ("authorization", "reason"),
    [
        (None, "no API token was sent"),
        ("emulator-token", "no token type"),
        ("Bear emulator-token", "token type is not 'Bearer'"),
        ("Bearer not-the-token", "wrong or unknown API token"),
    ],
)
def test_401_stops_the_run_with_a_clear_message(
    emulator: Any, authorization: str | None, reason: str
) -> None:
    emu = emulator()

    def rewrite(request: requests.PreparedRequest) -> requests.PreparedRequest:
        request.headers.pop("Authorization", None)
        if authorization is not None:
            request.headers["Authorization"] = authorization
        return request

    session = requests.Session()
    session.auth = rewrite  # changes what goes on the wire; the HTTP is real
    settings = settings_for(emu)
    records = list(sample_records(20))
    with pytest.raises(AuthError) as caught:
        ship(records, settings, client=ApiClient(settings, session))
    assert reason in str(caught.value)
    assert "emulator-token" not in str(caught.value)
    result: ShipResult = caught.value.result  # type: ignore[attr-defined]
    assert result.accepted == 0 and len(result.not_shipped) == 20
    assert result.requests <= 2  # stopped at once, not retried
    assert emu.stats.accepted["conversions"] == 0


def test_403_names_the_site(emulator: Any) -> None:
    emu = emulator()
    with pytest.raises(AuthError, match="this token cannot access site 9999") as caught:
        ship(list(sample_records(5)), settings_for(emu, site_id="9999"))
    assert caught.value.result is not None and len(caught.value.result.not_shipped) == 5


def test_missing_token_or_site_fails_before_sending(emulator: Any) -> None:
    emu = emulator()
    with pytest.raises(AuthError, match="no API token configured") as caught:
        ship(sample_records(5), settings_for(emu, token=""))
    assert caught.value.result is not None and len(caught.value.result.not_shipped) == 5
    with pytest.raises(Exception, match="no site id configured"):
        ship(sample_records(5), settings_for(emu, site_id=""))
    assert emu.stats.requests == 0


def test_token_never_appears_in_logs_errors_or_reprs(
    emulator: Any, caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture[str]
) -> None:
    secret = "tok-5ecret-9f8e7d6c"
    emu = emulator(token=secret, fail_rate=0.3, seed=3)
    caplog.set_level(logging.DEBUG)  # root, urllib3 and requests included
    logging.getLogger("urllib3").setLevel(logging.DEBUG)
    records = records_with((1, {"currency": "euro"}))
    settings = settings_for(emu)
    client = ApiClient(settings)
    result = ship(records, settings, client=client, progress=True)
    wrong = "tok-wrong-1a2b3c4d"
    with pytest.raises(AuthError) as caught:
        ship(records, settings_for(emu, token=wrong))
    problems = [p.as_text() for _, ps in result.rejected for p in ps]
    captured = capsys.readouterr()
    seen = "\n".join(
        [
            caplog.text,
            str(caught.value),
            repr(caught.value),
            repr(client),
            repr(result),
            repr(settings),
            *problems,
            captured.out,
            captured.err,
        ]
    )
    assert result.accepted == 9 and result.retries > 0  # the interesting paths ran
    assert "HTTP/1.1" in caplog.text  # urllib3 debug output was captured
    assert secret not in seen and wrong not in seen


def test_skip_ids_are_not_sent(emulator: Any) -> None:
    emu = emulator()
    records = list(sample_records(20))
    skip = {r.id for r in records[:5]}
    result = ship(records, settings_for(emu), skip_ids=skip)
    assert result.skipped == 5 and result.accepted == 15
    assert not skip & set(emu.stats.received_ids)
    assert_accounted(result, records, emu)


def test_stop_event_finishes_batches_in_flight_and_returns(emulator: Any) -> None:
    emu = emulator()
    records = list(sample_records(900))  # 3 s of budget at 300 objects/s
    stop = threading.Event()
    result = ship(records, settings_for(emu), stop=stop, on_batch=lambda _: stop.set())
    assert result.aborted == "stop requested"
    assert result.seconds < 2
    assert result.accepted >= 90 and result.not_shipped
    assert result.accepted + len(result.not_shipped) == 900
    assert_accounted(result, records, emu)


def test_stop_set_before_the_start_sends_nothing(emulator: Any) -> None:
    emu = emulator()
    stop = threading.Event()
    stop.set()
    result = ship(list(sample_records(50)), settings_for(emu), stop=stop)
    assert len(result.not_shipped) == 50 and result.requests == 0
    assert emu.stats.requests == 0


def test_gives_up_when_the_api_keeps_failing(emulator: Any) -> None:
    emu = emulator(fail_rate=1.0)
    records = list(sample_records(400))
    result = ship(records, settings_for(emu, max_attempts=3, max_in_flight=2))
    assert result.accepted == 0 and len(result.not_shipped) == 400
    assert "not accepted after 3 attempts" in (result.aborted or "")
    assert result.requests <= 3 * 3  # the batch that gave up, plus the others under way


def test_unreachable_api_is_not_shipped(emulator: Any) -> None:
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    settings = ApiSettings(
        base_url=f"http://127.0.0.1:{port}",
        site_id="1",
        token="t0ken-x",
        max_attempts=2,
        backoff_base_seconds=0.01,
    )
    result = ship(list(sample_records(5)), settings)
    assert len(result.not_shipped) == 5
    assert result.status_counts == {"CONNECTION_ERROR": 2}
    assert "connection failed" in (result.aborted or "")


def test_plan_figures() -> None:
    documented = ApiSettings(site_id="1234")
    p = plan(1000, documented)
    assert (p.batch_size, p.batches, p.requests) == (90, 12, 12)
    assert p.seconds_estimate == pytest.approx(1000 / 30)
    assert p.describe() == (
        "would POST conversions to https://api.commander1.com/v2/1234/conversions/bulk "
        "(site 1234): 1000 objects in 12 requests of up to 90; at 30 objects/s this takes "
        "about 33 s"
    )
    assert plan(0, documented).describe().startswith("nothing to ship (would POST")
    request_bound = ApiSettings(max_objects_per_request=5, limits=RateLimits(requests_per_second=1))
    assert plan(100, request_bound).seconds_estimate == pytest.approx(20)
    assert "5 min 00 s" in plan(9000, documented).describe()


def test_batch_size_fits_the_timeout_and_the_request_limit() -> None:
    assert choose_batch_size(ApiSettings()) == 90
    assert choose_batch_size(ApiSettings(timeout_seconds=4)) == 30  # 30 objects = 1 s
    tiny_rate = ApiSettings(limits=RateLimits(requests_per_second=1), timeout_seconds=1)
    assert choose_batch_size(tiny_rate) == 31  # below that, the request limit sets the pace


def test_parse_retry_after() -> None:
    assert parse_retry_after(None) is None
    assert parse_retry_after("3") == 3.0
    assert parse_retry_after("0.25") == 0.25
    assert parse_retry_after("-4") == 0.0
    assert parse_retry_after("soon") is None
    later = format_datetime(datetime.now(UTC) + timedelta(seconds=30), usegmt=True)
    assert 25 < (parse_retry_after(later) or 0) <= 30


# -- redirects: a 3xx to a POST is never followed ----------------------------------------


class _Redirector(http.server.BaseHTTPRequestHandler):
    """Answers every POST with ``status`` and a Location on the real emulator."""

    status = 301
    location = ""
    posts = 0

    def do_POST(self) -> None:  # noqa: N802
        type(self).posts += 1
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self.send_response(self.status)
        self.send_header("Location", self.location + self.path)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


@pytest.mark.parametrize("status", [301, 302, 303, 307, 308])
def test_a_redirect_is_a_terminal_error_naming_the_location(emulator: Any, status: int) -> None:
    emu = emulator()
    handler = type("Redirect", (_Redirector,), {"status": status, "location": emu.url})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        records = list(sample_records(200))
        settings = settings_for(emu, base_url=f"http://127.0.0.1:{server.server_address[1]}")
        with pytest.raises(ApiRedirectError) as caught:
            ship(records, settings)
    finally:
        server.shutdown()
        server.server_close()
    error = caught.value
    assert isinstance(error, TerminalError) and isinstance(error, StopsRun)
    assert error.status == status and error.location is not None
    assert error.location.startswith(emu.url + "/v2/1234/conversions/bulk")
    assert f"HTTP {status}" in str(error) and emu.url in str(error)
    result = error.result
    assert result is not None and result.accepted == 0 and not result.rejected
    assert len(result.not_shipped) == len(records)  # every record accounted, none shipped
    assert handler.posts >= 1 and result.retries == 0  # terminal: never retried
    assert emu.stats.requests == 0 and not emu.store["conversions"]  # nothing re-posted


# -- the endpoint follows what is sent ---------------------------------------------------


def product_records(n: int) -> list[Record]:
    """Products as `--products-from-conversions` extracts them: the items' products."""
    seen: dict[str, bytes] = {}
    for i in range(n):
        for item in sample_conversion(i)["conversion_items"]:
            seen.setdefault(item["product"]["id"], orjson.dumps(item["product"]))
    return [Record(pid, data, (2,)) for pid, data in seen.items()]


@pytest.mark.parametrize(
    ("kind", "flag"), [("conversions", True), ("conversions", False), ("products", False)]
)
def test_products_always_go_to_the_products_endpoint(
    emulator: Any, kind: str, flag: bool, caplog: pytest.LogCaptureFixture
) -> None:
    emu = emulator()
    records = product_records(20)
    result = ship(records, settings_for(emu), kind, products_from_conversions=flag)  # type: ignore[arg-type]
    assert result.accepted == len(records) and not result.rejected
    assert set(emu.store["products"]) == {r.id for r in records}
    assert not emu.store["conversions"]
    assert result.endpoint is not None
    assert result.endpoint.kind == "products"
    assert result.endpoint.url == f"{emu.url}/v2/1234/products/bulk"
    warned = "these records are products, not conversions" in caplog.text
    assert warned == (kind == "conversions" and not flag)


def test_conversions_are_not_rerouted_even_when_invalid(emulator: Any) -> None:
    emu = emulator()
    records = records_with((3, "user"), (5, "conversion_items"), n=8)
    result = ship(records, settings_for(emu), "conversions")
    assert result.endpoint is not None and result.endpoint.kind == "conversions"
    assert result.accepted == 6 and len(result.rejected) == 2
    assert not emu.store["products"]


def test_dry_run_plan_names_endpoint_and_site() -> None:
    settings = ApiSettings(base_url="https://api.example.test/", site_id="4321")
    text = plan(180, settings, "conversions", products_from_conversions=True).describe()
    assert text.startswith(
        "would POST products to https://api.example.test/v2/4321/products/bulk (site 4321): "
        "180 objects in 2 requests"
    )
    assert "/conversions/bulk" in plan(1, settings).describe()


# -- typed errors: transient retried, terminal not ----------------------------------------


def test_error_families_have_one_root() -> None:
    from csvbridge import errors as e

    transient = (e.ApiTransientError, e.SourceUnavailable, e.LockedError)
    terminal = (e.ApiTerminalError, e.ApiRedirectError, e.AuthError, e.ConfigError, e.InputError)
    for cls in transient:
        assert issubclass(cls, e.TransientError) and not issubclass(cls, e.TerminalError)
    for cls in terminal:
        assert issubclass(cls, e.TerminalError) and not issubclass(cls, e.TransientError)
    for cls in (*transient, *terminal, e.HostKeyError):
        assert issubclass(cls, e.CsvBridgeError)
    assert issubclass(e.AuthError, e.StopsRun) and issubclass(e.ConfigError, e.StopsRun)
    assert not issubclass(e.InputError, e.StopsRun)  # a bad file never stops the others


def test_timeouts_are_retried_until_answered(emulator: Any) -> None:
    emu = emulator(slow_rate=0.5, slow_seconds=20, seed=5)  # 2 s at speed 10
    records = list(sample_records(300))
    result = ship(records, settings_for(emu, timeout_seconds=0.5))
    assert result.accepted == 300 and not result.not_shipped
    assert result.status_counts["TIMEOUT"] > 0 and result.retries >= result.status_counts["TIMEOUT"]


@pytest.mark.parametrize(
    ("overrides", "status"),
    [({"site_id": "9999"}, 403), ({"token": "tok-not-known-123"}, 401), ({"path": "/nope"}, 404)],
)
def test_terminal_answers_are_never_retried(
    emulator: Any, overrides: dict[str, str], status: int
) -> None:
    emu = emulator()
    path = overrides.pop("path", "")
    settings = settings_for(emu, base_url=emu.url + path, **overrides)
    with pytest.raises(TerminalError) as caught:
        ship(list(sample_records(30)), settings)
    assert getattr(caught.value, "status", None) == status
    result = caught.value.result
    assert result is not None and result.requests == 1 and result.retries == 0
    assert len(result.not_shipped) == 30 and result.accepted == 0
