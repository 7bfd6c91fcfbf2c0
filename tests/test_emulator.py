"""The emulator's contract: every documented answer, over real HTTP on loopback."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from typing import Any

import orjson
import pytest
import requests

from csvbridge.config import RateLimits
from csvbridge.errors import ConfigError
from csvbridge.schema.models import Conversion
from csvbridge.testing.api_answers import SERVER_ERROR_DETAIL, UNKNOWN_TOKEN_DETAIL
from csvbridge.testing.emulator import Emulator, run_emulator
from csvbridge.testing.sample_objects import sample_conversion, sample_records
from tests.helpers import wait_until

AUTH = {"Authorization": "Bearer emulator-token", "Content-Type": "application/x-ndjson"}


def post(
    emu: Emulator,
    body: bytes,
    headers: dict[str, str] = AUTH,
    kind: str = "conversions",
    site: str | None = None,
    **params: str,
) -> requests.Response:
    url = f"{emu.url}/v2/{site or emu.site_id}/{kind}/bulk"
    return requests.post(url, data=body, headers=headers, params=params, timeout=10)


def ndjson(*objects: Any) -> bytes:
    return b"\n".join(orjson.dumps(o) for o in objects)


def test_sample_conversions_are_valid() -> None:
    for n in range(50):
        conversion = sample_conversion(n)
        Conversion.model_validate(conversion)
        assert 1 <= len(conversion["conversion_items"]) <= 4


def test_all_accepted_is_202_with_counts(emulator: Any) -> None:
    emu = emulator()
    records = list(sample_records(4))
    r = post(emu, b"\n".join(x.json for x in records))
    assert r.status_code == 202
    assert r.json() == {"data": {"accepted_object_count": 4, "rejected_object_count": 0}}
    assert set(emu.store["conversions"]) == {x.id for x in records}
    stats = emu.stats
    assert stats.accepted["conversions"] == 4 and stats.status_counts[202] == 1


def test_parse_error_accepts_nothing(emulator: Any) -> None:
    emu = emulator()
    r = post(emu, ndjson(sample_conversion(1)) + b"\n{not json")
    assert r.status_code == 400
    assert r.json() == {
        "errors": [{"code": "PARSE_ERROR", "detail": "Cannot parse nd-json"}],
        "data": {},
    }
    assert emu.store["conversions"] == {}


def test_partial_acceptance_in_the_documented_shape(emulator: Any) -> None:
    emu = emulator()
    ok1, ok2 = sample_conversion(1), sample_conversion(2)
    no_created = sample_conversion(3)
    del no_created["created"]
    bad_amount_a, bad_amount_b = sample_conversion(4), sample_conversion(5)
    bad_amount_a["original_amount"] = bad_amount_b["original_amount"] = "30"
    r = post(emu, ndjson(ok1, no_created, bad_amount_a, ok2, bad_amount_b))
    assert r.status_code == 400
    body = r.json()
    assert body["data"] == {"accepted_object_count": 2, "rejected_object_count": 3}
    assert body["errors"] == [
        {
            "code": "MISSING_REQUIRED_PROPERTY",
            "detail": "should have required property 'created'\n",
            "meta": {"line_numbers": [2], "error_count": 1, "ids": [no_created["id"]]},
        },
        {
            "code": "INVALID_PROPERTY_TYPE",
            "detail": '"original_amount" property is not a number',
            "meta": {
                "property": "original_amount",
                "line_numbers": [3, 5],
                "error_count": 2,
                "ids": [bad_amount_a["id"], bad_amount_b["id"]],
            },
        },
    ]
    assert list(body["errors"][1]["meta"]) == ["property", "line_numbers", "error_count", "ids"]
    assert set(emu.store["conversions"]) == {ok1["id"], ok2["id"]}


def test_products_are_validated_as_products(emulator: Any) -> None:
    emu = emulator()
    good = {"id": "SKU-1", "name": "Mug", "price": 10.0}
    bad = {"id": "SKU-2", "condition": "broken"}
    r = post(emu, ndjson(good, bad), kind="products")
    assert r.status_code == 400
    (error,) = r.json()["errors"]
    assert error["code"] == "INVALID_PROPERTY_FORMAT"
    assert error["meta"]["property"] == "condition"
    assert error["meta"]["line_numbers"] == [2] and error["meta"]["ids"] == ["SKU-2"]
    assert set(emu.store["products"]) == {"SKU-1"}


@pytest.mark.parametrize(
    ("authorization", "code", "detail"),
    [
        (None, "MISSING_AUTHORIZATION_HEADER", 'The "Authorization" header is required'),
        ("emulator-token", "UNKNOWN_TOKEN_TYPE", "The token type is missing"),
        (
            "Bear x",
            "INVALID_TOKEN_TYPE",
            'The token type "Bear" is invalid. Expecting "Bearer" instead',
        ),
        ("Bearer wrong", "UNKNOWN_TOKEN", UNKNOWN_TOKEN_DETAIL),
    ],
)
def test_401_bodies(emulator: Any, authorization: str | None, code: str, detail: str) -> None:
    emu = emulator()
    headers = {"Content-Type": "application/x-ndjson"}
    if authorization is not None:
        headers["Authorization"] = authorization
    r = post(emu, ndjson(sample_conversion(1)), headers=headers)
    assert r.status_code == 401
    assert r.json() == {"errors": [{"code": code, "detail": detail}]}
    assert emu.store["conversions"] == {}


def test_wrong_site_is_403(emulator: Any) -> None:
    emu = emulator()
    r = post(emu, ndjson(sample_conversion(1)), site="9999")
    assert r.status_code == 403
    assert r.json() == {
        "errors": [{"code": "SITE_ACCESS_FORBIDDEN", "detail": "You cannot access this site"}]
    }


def test_request_limit_rejects_the_excess_with_retry_after(emulator: Any) -> None:
    # "40 requests in the same second: 30 processed, 10 rejected", at 4 per second
    emu = emulator(limits=RateLimits(requests_per_second=0.4))
    answers = [post(emu, ndjson(sample_conversion(i))) for i in range(5)]
    assert [a.status_code for a in answers] == [202, 202, 202, 202, 429]
    assert answers[-1].json() == {
        "description": "You have reached the request limit",
        "errors": [
            {
                "code": "REQUEST_LIMIT_REACHED",
                "detail": "Your account is limited to 4 requests per second",
            }
        ],
    }
    assert 0 < float(answers[-1].headers["Retry-After"]) <= 1.0
    assert len(emu.store["conversions"]) == 4


def test_connection_limit(emulator: Any) -> None:
    emu = emulator(
        speed=1, limits=RateLimits(concurrent_connections=1), slow_rate=1.0, slow_seconds=0.5
    )
    first: list[requests.Response] = []
    holder = threading.Thread(target=lambda: first.append(post(emu, ndjson(sample_conversion(1)))))
    holder.start()
    wait_until(lambda: emu.stats.max_concurrent >= 1)
    r = post(emu, ndjson(sample_conversion(2)))
    holder.join()
    assert r.status_code == 429
    assert r.json() == {
        "description": "You have too many open connections",
        "errors": [
            {
                "code": "CONNECTION_LIMIT_REACHED",
                "detail": "Your account is limited to 1 simultaneous connections",
            }
        ],
    }
    assert r.headers["Retry-After"] == "1"
    assert first[0].status_code == 202


def test_server_errors_and_drops_accept_nothing(emulator: Any) -> None:
    failing = emulator(fail_rate=1.0)
    r = post(failing, ndjson(sample_conversion(1)))
    assert r.status_code == 500
    assert r.json() == {"errors": [{"code": "SERVER_ERROR", "detail": SERVER_ERROR_DETAIL}]}
    dropping = emulator(drop_rate=1.0)
    with pytest.raises(requests.ConnectionError):
        post(dropping, ndjson(sample_conversion(1)))
    assert dropping.stats.dropped == 1
    assert failing.store["conversions"] == dropping.store["conversions"] == {}


def test_slow_answers(emulator: Any) -> None:
    emu = emulator(slow_rate=1.0, slow_seconds=3.0)  # 0.3 s at speed 10
    started = time.monotonic()
    assert post(emu, ndjson(sample_conversion(1))).status_code == 202
    assert time.monotonic() - started >= 0.29


def test_object_rate_slows_uploads_instead_of_rejecting(emulator: Any) -> None:
    # "3 requests of 100 conversions complete in 10 s" -> 1 s at speed 10
    emu = emulator()
    records = list(sample_records(300))
    bodies = [b"\n".join(r.json for r in records[i : i + 100]) for i in (0, 100, 200)]
    finished: list[float] = []
    statuses: list[int] = []
    started = time.monotonic()

    def send(body: bytes) -> None:
        statuses.append(post(emu, body).status_code)
        finished.append(time.monotonic() - started)

    threads = [threading.Thread(target=send, args=(b,)) for b in bodies]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert statuses == [202, 202, 202]
    assert min(finished) >= 0.3  # a third of the objects before the first answer
    assert 0.95 <= max(finished) < 2.5


def test_overwrite_merges_or_replaces(emulator: Any) -> None:
    emu = emulator()
    original = sample_conversion(1) | {"comment": "gift wrap"}
    assert post(emu, ndjson(original)).status_code == 202
    update = sample_conversion(1) | {"status": "delivered"}  # no comment
    assert post(emu, ndjson(update), overwrite="false").status_code == 202
    stored = emu.store["conversions"][original["id"]]
    assert stored["status"] == "delivered" and stored["comment"] == "gift wrap"
    assert post(emu, ndjson(update), overwrite="true").status_code == 202
    assert "comment" not in emu.store["conversions"][original["id"]]
    assert emu.stats.resent == {original["id"]}
    assert emu.stats.received_ids[original["id"]] == 3


def test_healthz_and_unknown_routes(emulator: Any) -> None:
    emu = emulator()
    assert requests.get(f"{emu.url}/healthz", timeout=5).json() == {"status": "ok"}
    assert requests.get(f"{emu.url}/nope", timeout=5).status_code == 404
    assert requests.post(f"{emu.url}/v1/x", data=b"", timeout=5).status_code == 404


def test_context_manager_releases_the_port() -> None:
    with Emulator(speed=10) as emu:
        assert requests.get(f"{emu.url}/healthz", timeout=5).status_code == 200
        url = emu.url
    with pytest.raises(requests.ConnectionError):
        requests.get(f"{url}/healthz", timeout=5)


def test_run_emulator_serves_until_sigterm() -> None:
    code = "import sys; from csvbridge.testing.emulator import run_emulator; run_emulator(speed=10, out=sys.stdout)"
    env = {**os.environ, "PYTHONPATH": os.getcwd()}
    proc = subprocess.Popen(
        [sys.executable, "-c", code], stdout=subprocess.PIPE, text=True, env=env
    )
    try:
        assert proc.stdout is not None
        first = proc.stdout.readline()  # printed once listening
        url = first.split(" on ", 1)[1].split()[0]
        assert requests.get(f"{url}/healthz", timeout=5).json() == {"status": "ok"}
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0
    assert "emulator stopped" in out


def test_a_port_in_use_is_a_config_error_not_a_traceback() -> None:
    with Emulator(speed=10) as taken:
        with pytest.raises(ConfigError, match=f"cannot listen on 127.0.0.1:{taken.port}") as caught:
            run_emulator(port=taken.port)
        assert "in use" in str(caught.value) and "--port" in str(caught.value)
        assert requests.get(f"{taken.url}/healthz", timeout=5).status_code == 200
    with pytest.raises(ConfigError, match="cannot listen"):
        Emulator(port=70000).start()


def test_cli_emulator_on_a_taken_port_exits_2_with_one_line() -> None:
    with Emulator(speed=10) as taken:
        env = {**os.environ, "PYTHONPATH": os.getcwd()}
        done = subprocess.run(
            [sys.executable, "-m", "csvbridge", "emulator", "--port", str(taken.port)],
            capture_output=True,
            text=True,
            env=env,
            timeout=60,
        )
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr
    assert done.stderr.startswith("csvbridge: the emulator cannot listen on 127.0.0.1:")
