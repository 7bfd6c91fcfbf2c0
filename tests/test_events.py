"""The events sink: conversion -> purchase mapping, packing, retries, and kill -9 safety,
over real HTTP to the tracking stand-in on loopback."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest

from csvbridge.errors import AuthError
from csvbridge.fold.assemble import Record
from csvbridge.sinks.events import EventsSettings, pack, send_events
from csvbridge.sinks.purchase import to_purchase
from csvbridge.testing.sample_objects import sample_records
from csvbridge.testing.tracking import TrackingStandIn
from tests.helpers import kill9, wait_until

TOKEN = "tr4cking-Source-Key!"  # distinctive, so leaks can be grepped for
SITE = "29"

# The two-item conversion of commandersact-purchase-event.md §7, as the bulk API has it.
ORD_1001 = {
    "id": "ORD-1001",
    "type": "online",
    "status": "in_progress",
    "payment_method": "card",
    "currency": "EUR",
    "created": "2024-05-14T10:32:05+02:00",
    "shipping_amount": 4.9,
    "tax_amount": 8.0,
    "final_amount": 52.9,
    "user": {"id": "C-778", "email": "jane@example.com", "consent_categories": ["1", "3"]},
    "billing_address": {"locality": "Paris"},
    "conversion_items": [
        {
            "id": "ORD-1001-1",
            "original_quantity": 2.0,
            "price": 12.0,
            "product": {
                "id": "P-100",
                "name": "Stoneware mug",
                "category_1": "Home",
                "brand": "Acme",
                "colors": ["white"],
                "price": 12.0,
                "description": "not a standard event field",
            },
        },
        {
            "id": "ORD-1001-2",
            "original_quantity": 1.0,
            "price": 24.0,
            "product": {
                "id": "P-200",
                "name": "Teapot",
                "category_1": "Kitchen",
                "brand": "Acme",
                "price": 24.0,
            },
        },
    ],
}


def record(conversion: dict, lines: tuple[int, ...] = (2,)) -> Record:
    return Record(conversion["id"], orjson.dumps(conversion), lines)


def settings_for(stand_in: TrackingStandIn, **overrides: object) -> EventsSettings:
    values: dict[str, object] = {
        "base_url": stand_in.url,
        "site_id": SITE,
        "token": TOKEN,
        "requests_per_second": 400,
        "backoff_base_seconds": 0.01,
        "backoff_max_seconds": 0.05,
    }
    values.update(overrides)
    return EventsSettings.model_validate(values)


@pytest.fixture
def stand_in() -> Iterator[TrackingStandIn]:
    with TrackingStandIn(token=TOKEN, site_id=SITE) as server:
        yield server


# -- mapping ------------------------------------------------------------------------------


def test_purchase_matches_the_hand_computed_example() -> None:
    event = to_purchase(ORD_1001, SITE)
    context = event.pop("context")
    assert event == {
        "event_name": "purchase",
        "id": "ORD-1001",
        "type": "online",
        "status": "in_progress",
        "payment_method": "card",
        "currency": "EUR",
        "value": 52.9,  # final_amount
        "revenue": 40.0,  # 52.90 - 4.90 shipping - 8.00 tax, exactly
        "shipping_amount": 4.9,
        "tax_amount": 8.0,
        "user": {"id": "C-778", "email": "jane@example.com", "consent_categories": ["1", "3"]},
        "items": [
            {
                "id": "ORD-1001-1",
                "quantity": 2.0,
                "price": 12.0,
                "product": {
                    "id": "P-100",
                    "name": "Stoneware mug",
                    "price": 12.0,
                    "category_1": "Home",
                    "brand": "Acme",
                    "colors": ["white"],
                },
            },
            {
                "id": "ORD-1001-2",
                "quantity": 1.0,
                "price": 24.0,
                "product": {
                    "id": "P-200",
                    "name": "Teapot",
                    "price": 24.0,
                    "category_1": "Kitchen",
                    "brand": "Acme",
                },
            },
        ],
    }
    assert context["event_timestamp"] == 1715675525000  # 08:32:05Z in ms, an int
    assert uuid.UUID(context["event_id"]).version == 5


def test_event_id_is_stable_per_conversion_and_changes_with_it() -> None:
    first = to_purchase(ORD_1001, SITE)["context"]["event_id"]
    assert to_purchase(dict(ORD_1001), SITE)["context"]["event_id"] == first  # a re-send
    assert to_purchase(ORD_1001, "30")["context"]["event_id"] != first  # another site
    shipped = {**ORD_1001, "status": "shipped", "updated": "2024-05-15T09:00:00Z"}
    event = to_purchase(shipped, SITE)
    assert event["context"]["event_id"] != first  # an update is a new event
    assert event["context"]["event_timestamp"] == 1715763600000  # updated wins over created


def test_user_and_item_interpretations() -> None:
    conversion = {
        **ORD_1001,
        "final_amount": None,
        "original_amount": 60.0,
        "discount_amount": 3.5,
        "custom": {"coupon": "SPRING"},
        "user": {"user_email": "a@b.example", "consent_categories": "1|3"},
        "conversion_items": [
            {
                "id": "L1",
                "original_quantity": 3.0,
                "final_quantity": 2.0,
                "final_amount": 20.0,
                "returned_quantity": 1.0,
                "product": {"id": "P"},
            }
        ],
    }
    event = to_purchase(conversion, SITE)
    assert event["user"] == {"email": "a@b.example", "consent_categories": ["1", "3"]}
    assert event["value"] == 60.0 and event["revenue"] == 47.1  # 60 - 4.9 - 8
    assert event["discount_value"] == 3.5 and event["coupon"] == "SPRING"
    assert event["items"] == [
        {
            "id": "L1",
            "quantity": 2.0,
            "value": 20.0,
            "returned_quantity": 1.0,
            "product": {"id": "P"},
        }
    ]
    no_consent = to_purchase({**ORD_1001, "user": {"email": "x@y.example"}}, SITE)
    assert no_consent["user"]["consent_categories"] == []  # sent in every event, even empty


# -- sending --------------------------------------------------------------------------------


def test_events_arrive_as_mapped(stand_in: TrackingStandIn) -> None:
    records = [record(ORD_1001), *sample_records(20)]
    batches = []
    result = send_events(records, settings_for(stand_in), on_batch=batches.append)
    assert result.sent == 21 and not result.rejected and not result.not_sent
    received = {e["id"]: e for e in stand_in.events()}
    assert received["ORD-1001"] == to_purchase(ORD_1001, SITE)
    assert stand_in.stats.requests == 1  # one batch request
    assert [i for b in batches for i in b.sent_ids] == [r.id for r in records]


def test_single_endpoint_and_pacing(stand_in: TrackingStandIn) -> None:
    settings = settings_for(stand_in, batch=False, requests_per_second=40)
    result = send_events(sample_records(21), settings)
    assert result.sent == 21 and result.requests == 21
    assert stand_in.stats.requests == 21 and stand_in.stats.events == 21
    assert result.seconds >= 20 / 40 * 0.95  # 21 starts at 40/s: at least 0.5 s


def test_oversize_event_is_rejected_by_name_and_the_rest_goes(stand_in: TrackingStandIn) -> None:
    huge = {**ORD_1001, "id": "HUGE"}
    huge["conversion_items"] = [
        {**item, "id": f"L{k}", "product": {**item["product"], "name": "x" * 400}}
        for k, item in enumerate(ORD_1001["conversion_items"] * 75)  # 150 long lines
    ]
    records = [*sample_records(3), record(huge, (5, 6)), *sample_records(3, first=3)]
    batches = []
    result = send_events(records, settings_for(stand_in), on_batch=batches.append)
    assert result.sent == 6
    [(rec, problems)] = result.rejected
    assert rec.id == "HUGE" and problems[0].code == "EVENT_TOO_LARGE"
    assert problems[0].lines == (5, 6) and "bytes" in problems[0].detail
    assert "HUGE" not in {e["id"] for e in stand_in.events()}
    assert len(stand_in.events()) == 6
    assert [i for b in batches for i in b.rejected_ids] == ["HUGE"]  # the ledger hears of it


def test_batches_are_packed_by_size(stand_in: TrackingStandIn) -> None:
    def padded(n: int) -> Record:
        conversion = {**ORD_1001, "id": f"ORD-{n}", "custom": {}}
        conversion["user"] = {"email": f"{n}@x.example", "note": "p" * (1000 + 37 * (n % 50))}
        return record(conversion)

    records = [padded(n) for n in range(1500)]
    settings = settings_for(stand_in)
    packed = list(pack(records, settings, []))
    sizes = [len(b'{"batch":[]}') + sum(len(e.data) for e in b) + len(b) - 1 for b in packed]
    assert max(sizes) <= 500_000
    for batch, following in zip(packed, packed[1:], strict=False):  # greedy: full batches
        assert sum(len(e.data) + 1 for e in batch) + len(following[0].data) + 12 > 500_000
    result = send_events(records, settings)
    assert result.sent == 1500 and result.requests == len(packed) >= 4
    assert stand_in.stats.largest_body == max(sizes)
    assert len(stand_in.stats.transaction_ids) == 1500


def test_5xx_storm_and_dropped_connections_are_retried(stand_in: TrackingStandIn) -> None:
    stand_in.storm(6, status=503)
    settings = settings_for(stand_in, max_events_per_batch=10)
    result = send_events(sample_records(50), settings)
    assert result.sent == 50 and result.status_counts[503] == 6 and result.retries >= 6
    stand_in.drop(3)
    result = send_events(sample_records(50, first=50), settings)
    assert result.sent == 50 and result.status_counts["CONNECTION_ERROR"] == 3
    assert stand_in.stats.events == 100 and not stand_in.stats.resent


def test_storm_longer_than_the_attempts_leaves_the_rest_unsent(stand_in: TrackingStandIn) -> None:
    stand_in.storm(1000, status=502)
    settings = settings_for(stand_in, max_attempts=3, max_events_per_batch=5)
    result = send_events(sample_records(20), settings)
    assert result.sent == 0 and len(result.not_sent) == 20 and result.requests == 3
    assert result.aborted and "3 attempts" in result.aborted


def test_400_is_terminal_for_that_batch_only() -> None:
    # a stand-in with a smaller batch limit: some batches get a 400, not a retry
    with TrackingStandIn(token=TOKEN, site_id=SITE, max_batch_bytes=10_100) as server:
        records = list(sample_records(30))
        settings = settings_for(server, max_events_per_batch=10)
        sizes = [
            len(b'{"batch":[]}') + sum(len(e.data) + 1 for e in b)
            for b in pack(records, settings, [])
        ]
        assert any(s > 10_100 for s in sizes) and any(s <= 10_100 for s in sizes)
        result = send_events(records, settings)
        assert result.requests == 3 and result.retries == 0  # never retried
        assert result.status_counts[400] == sum(s > 10_100 for s in sizes)
        assert len(result.rejected) + result.sent == 30
        assert {p[0].code for _, p in result.rejected} == {"HTTP_400"}
        assert server.stats.events == result.sent > 0


def test_wrong_key_stops_with_auth_error_and_accounts_for_all() -> None:
    with TrackingStandIn(token="the-real-key", site_id=SITE, strict_auth=True) as server:
        with pytest.raises(AuthError) as caught:
            send_events(sample_records(40), settings_for(server, max_events_per_batch=10))
        result = caught.value.result  # type: ignore[attr-defined]
        assert result.sent == 0 and len(result.not_sent) == 40
        assert TOKEN not in str(caught.value) and "token=***" in str(caught.value)


def test_the_source_key_never_reaches_logs_or_errors(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    import socket

    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    settings = EventsSettings(
        base_url=f"http://127.0.0.1:{port}",
        site_id=SITE,
        token=TOKEN,
        max_attempts=2,
        backoff_base_seconds=0.01,
    )
    result = send_events(sample_records(3), settings)
    assert len(result.not_sent) == 3 and result.aborted
    assert "connection failed" in result.aborted
    for text in (caplog.text, result.aborted, repr(result), repr(settings)):
        assert TOKEN not in text and "tr4cking" not in text


def test_stop_leaves_everything_accounted(stand_in: TrackingStandIn) -> None:
    stop = threading.Event()
    seen: list[str] = []

    def on_batch(batch: object) -> None:
        seen.extend(batch.sent_ids)  # type: ignore[attr-defined]
        if len(seen) >= 20:
            stop.set()

    settings = settings_for(stand_in, max_events_per_batch=10)
    result = send_events(sample_records(100), settings, on_batch=on_batch, stop=stop)
    assert result.sent == 20 and len(result.not_sent) == 80 and result.aborted


# -- kill -9 --------------------------------------------------------------------------------

SENDER = """
import os, sys
from pathlib import Path
from csvbridge.sinks.events import EventsSettings, send_events
from csvbridge.testing.sample_objects import sample_records

url, ledger, n = sys.argv[1], Path(sys.argv[2]), int(sys.argv[3])
done = set(ledger.read_text().split()) if ledger.exists() else set()
settings = EventsSettings(base_url=url, site_id="29", token="tr4cking-Source-Key!",
                          max_events_per_batch=10, requests_per_second=400)

def on_batch(batch):
    with open(ledger, "a") as f:  # the ledger: written before the next request
        f.write("".join(i + "\\n" for i in batch.sent_ids + batch.rejected_ids))
        f.flush()
        os.fsync(f.fileno())

result = send_events(sample_records(n), settings, skip_ids=done, on_batch=on_batch)
print(result.sent, result.skipped, len(result.not_sent))
"""


def test_kill9_mid_send_then_resume_loses_nothing(tmp_path: Path) -> None:
    n = 1500
    ledger = tmp_path / "ledger.txt"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    with TrackingStandIn(token=TOKEN, site_id=SITE, delay_seconds=0.01) as server:
        cmd = [sys.executable, "-c", SENDER, server.url, str(ledger), str(n)]
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)

        def sent_so_far() -> int:
            return len(ledger.read_text().split()) if ledger.exists() else 0

        wait_until(lambda: sent_so_far() >= 300, timeout=60, what="300 events sent")
        kill9(proc)
        before = set(ledger.read_text().split())
        assert 300 <= len(before) < n  # killed mid-send
        done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr
        sent, skipped, not_sent = map(int, done.stdout.split())
        assert skipped == len(before) and sent == n - len(before) and not_sent == 0
        stats = server.stats
    expected = {f"ORD-{i:07d}" for i in range(n)}
    assert set(stats.transaction_ids) == expected  # 0 lost
    assert set(ledger.read_text().split()) == expected
    assert len(stats.resent) <= 10  # at most the one request in flight, sent again
    # a re-sent event carries the same event id: recognisable downstream
    assert len(stats.event_ids) == n
