"""Benchmark: purchase events per second sent to the tracking stand-in.

Starts the stand-in on loopback, sends N sample conversions (1-4 items each) as purchase
events, batched (POST /events/batch, packed to 500 KB) and one by one (POST /events, paced
at --rate requests/s), and prints events/s, requests, bytes, and lost/re-sent counts
(both must be 0).  Exits non-zero when an event is lost or sent twice.

    python benchmarks/events.py [--events 20000] [--single 2000] [--rate 450]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a plain checkout

from csvbridge.sinks.events import EventsSettings, send_events  # noqa: E402
from csvbridge.testing.sample_objects import sample_records  # noqa: E402
from csvbridge.testing.tracking import TrackingStandIn  # noqa: E402


def run(n: int, *, batch: bool, rate: float) -> bool:
    with TrackingStandIn(token="bench-key", site_id="1") as stand_in:
        settings = EventsSettings(
            base_url=stand_in.url,
            site_id="1",
            token="bench-key",
            batch=batch,
            requests_per_second=rate,
        )
        result = send_events(sample_records(n), settings)
        stats = stand_in.stats
    lost = n - len(stats.transaction_ids)
    resent = len(stats.resent)
    mode = "batch " if batch else "single"
    print(
        f"{mode}: {result.sent}/{n} events in {result.seconds:.2f} s = "
        f"{result.events_per_second:,.0f} events/s ({result.requests} requests, "
        f"{result.bytes_sent / 1e6:.1f} MB, largest body {stats.largest_body:,} B); "
        f"lost {lost}, re-sent {resent}"
    )
    return lost == 0 and resent == 0 and result.sent == n


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=20_000, help="events sent in batches")
    parser.add_argument("--single", type=int, default=2_000, help="events sent one by one")
    parser.add_argument("--rate", type=float, default=450, help="requests/s (must be < 500)")
    args = parser.parse_args(argv)
    ok = run(args.events, batch=True, rate=args.rate)
    ok = run(args.single, batch=False, rate=args.rate) and ok
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
