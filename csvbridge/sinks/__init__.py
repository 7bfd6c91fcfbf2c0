"""Stage 3, the sinks: the bulk API (client, pacer, shipper, progress), the CSV feed and
the tracking API's purchase events.

The library face of the API sink is re-exported here: `ship`, `plan`, their results, and
the client for callers that bring their own session.
"""

from csvbridge.sinks.client import (
    Answer,
    ApiClient,
    endpoint,
    parse_retry_after,
    resolve_kind,
    split_partial,
)
from csvbridge.sinks.pacer import Pacer, choose_batch_size, workers_for
from csvbridge.sinks.progress import ShipPlan, format_duration, plan
from csvbridge.sinks.results import BatchOutcome, Endpoint, Rejection, ShipResult
from csvbridge.sinks.shipper import records_kind, ship

__all__ = [
    "Answer",
    "ApiClient",
    "BatchOutcome",
    "Endpoint",
    "Pacer",
    "ShipPlan",
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
