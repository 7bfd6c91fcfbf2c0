"""Before and while shipping: the dry-run plan and the progress line.

Both only describe; nothing here sends anything.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

from csvbridge.config import ApiSettings, Kind
from csvbridge.sinks.client import endpoint, resolve_kind
from csvbridge.sinks.pacer import choose_batch_size
from csvbridge.sinks.results import Endpoint

log = logging.getLogger("csvbridge.api")



@dataclass(frozen=True)
class ShipPlan:
    """How a shipment of `objects` would go at the documented rates, without sending."""

    objects: int
    batches: int
    batch_size: int
    requests: int
    seconds_estimate: float
    objects_per_second: float
    endpoint: Endpoint

    def describe(self) -> str:
        """What ``--dry-run`` prints: where it would go, and how long it would take."""
        where = f"would {self.endpoint.describe()}"
        if not self.objects:
            return f"nothing to ship ({where})"
        return (
            f"{where}: {self.objects} objects in {self.requests} requests of up to "
            f"{self.batch_size}; at {self.objects_per_second:g} objects/s this takes about "
            f"{format_duration(self.seconds_estimate)}"
        )


def plan(
    n_objects: int,
    settings: ApiSettings,
    kind: Kind = "conversions",
    *,
    products_from_conversions: bool = False,
) -> ShipPlan:
    """The dry-run figures for shipping `n_objects` of `kind` with `settings`."""
    size = choose_batch_size(settings)
    batches = math.ceil(n_objects / size) if n_objects > 0 else 0
    limits = settings.limits
    seconds = max(n_objects / limits.objects_per_second, batches / limits.requests_per_second)
    target = endpoint(
        settings, resolve_kind(kind, products_from_conversions=products_from_conversions)
    )
    return ShipPlan(
        objects=n_objects,
        batches=batches,
        batch_size=size,
        requests=batches,
        seconds_estimate=seconds,
        objects_per_second=limits.objects_per_second,
        endpoint=target,
    )


def format_duration(seconds: float) -> str:
    """``42 s``, ``3 min 20 s``, ``2 h 05 min``."""
    s = round(seconds)
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min {s % 60:02d} s"
    return f"{s // 3600} h {s % 3600 // 60:02d} min"
