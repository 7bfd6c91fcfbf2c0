"""Stage 3, ship: the bulk API (client, pacer, shipper, progress) and the CSV feed.

The library face of the API sink is re-exported here: `ship`, `plan`, their results, and
the client for callers that bring their own session.
"""

from csvbridge.ship.client import Answer, ApiClient, parse_retry_after, split_partial
from csvbridge.ship.pacer import Pacer, choose_batch_size, workers_for
from csvbridge.ship.progress import Plan, Progress, format_duration, plan
from csvbridge.ship.results import BatchOutcome, ShipResult
from csvbridge.ship.shipper import ship

__all__ = [
    "Answer",
    "ApiClient",
    "BatchOutcome",
    "Pacer",
    "Plan",
    "Progress",
    "ShipResult",
    "choose_batch_size",
    "format_duration",
    "parse_retry_after",
    "plan",
    "ship",
    "split_partial",
    "workers_for",
]
