"""Stage 3, ship: the bulk API (client, pacer, shipper, progress) and the CSV feed.

The library face of the API sink is re-exported here: `ship`, `plan`, their results, and
the client for callers that bring their own session.
"""

from csvbridge.ship.client import (
    Answer,
    ApiClient,
    endpoint,
    parse_retry_after,
    resolve_kind,
    split_partial,
)
from csvbridge.ship.pacer import Pacer, choose_batch_size, workers_for
from csvbridge.ship.progress import Plan, Progress, format_duration, plan
from csvbridge.ship.results import BatchOutcome, Endpoint, Rejection, ShipResult
from csvbridge.ship.shipper import records_kind, ship

__all__ = [
    "Answer",
    "ApiClient",
    "BatchOutcome",
    "Endpoint",
    "Pacer",
    "Plan",
    "Progress",
    "Rejection",
    "ShipResult",
    "choose_batch_size",
    "endpoint",
    "format_duration",
    "parse_retry_after",
    "plan",
    "records_kind",
    "resolve_kind",
    "ship",
    "split_partial",
    "workers_for",
]
