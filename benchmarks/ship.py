"""Benchmark: how close does `ship` get to the documented object rate, without a 429?

Starts an emulator (default speed 10: 300 objects/s), ships 3,000 valid conversions of 1-4
items each with client limits matching the emulator's, and prints the achieved rate as a
share of the limit (target >= 0.95), the 429s, and the lost and re-sent counts.  Exits
non-zero when a target is missed.

    python benchmarks/ship.py [--speed 10] [--objects 3000]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a plain checkout

from csvbridge.config import ApiSettings, RateLimits  # noqa: E402
from csvbridge.sinks import plan, ship  # noqa: E402
from csvbridge.testing.emulator import Emulator  # noqa: E402
from csvbridge.testing.sample_objects import sample_records  # noqa: E402

TARGET_SHARE = 0.95


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--speed", type=float, default=10.0, help="emulator speed (default 10)")
    parser.add_argument("--objects", type=int, default=3000, help="conversions to ship")
    args = parser.parse_args(argv)

    documented = RateLimits()
    limits = RateLimits(
        requests_per_second=documented.requests_per_second * args.speed,
        concurrent_connections=int(documented.concurrent_connections * args.speed),
        objects_per_second=documented.objects_per_second * args.speed,
    )
    with Emulator(speed=args.speed) as emu:
        settings = ApiSettings(
            base_url=emu.url, site_id=emu.site_id, token=emu.token, limits=limits
        )
        print(f"plan: {plan(args.objects, settings).describe()}")
        result = ship(sample_records(args.objects), settings, progress=False, total=args.objects)
        stats = emu.stats

    limit = limits.objects_per_second
    share = result.objects_per_second / limit
    lost = args.objects - result.accepted - len(result.rejected)
    resent = len(stats.resent)
    print(f"shipped:     {result.accepted}/{args.objects} conversions in {result.seconds:.2f} s")
    print(f"rate:        {result.objects_per_second:.1f} objects/s of {limit:g} allowed")
    print(f"share:       {share:.3f} (target >= {TARGET_SHARE})")
    print(
        f"requests:    {result.requests} ({dict(result.status_counts)}), retries {result.retries}"
    )
    print(f"429s:        {stats.status_counts[429]}")
    print(f"lost:        {lost}")
    print(f"re-sent:     {resent}")
    print(f"max in flight at the server: {stats.max_concurrent}")
    ok = share >= TARGET_SHARE and stats.status_counts[429] == 0 and lost == 0 and resent == 0
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
