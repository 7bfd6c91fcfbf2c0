"""Records as ``purchase`` events, packed into request bodies within the API's limits.

Why apart from the send: the byte and count limits (``max_event_bytes``,
``max_batch_bytes``, ``max_events_per_batch``) are decided here, before any request; an
event that can never be sent (over the limit, not a readable conversion) is refused by
name here and the others go on.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import orjson

from csvbridge.config import EventsSettings
from csvbridge.errors import EventTooLarge
from csvbridge.fold.assemble import Record
from csvbridge.report import Problem
from csvbridge.sinks.events_results import _problem
from csvbridge.sinks.purchase import to_purchase

log = logging.getLogger("csvbridge.events")

_BATCH_OPEN, _BATCH_CLOSE = b'{"batch":[', b"]}"


@dataclass(slots=True)
class _Event:
    record: Record
    event_id: str
    data: bytes


def encode(record: Record, site_id: str) -> _Event:
    """One record as its serialised event; raises `EventTooLarge` is left to the caller."""
    event = to_purchase(orjson.loads(record.json), site_id)
    return _Event(record, event["context"]["event_id"], orjson.dumps(event))


def pack(
    records: Iterable[Record], settings: EventsSettings, refused: list[tuple[Record, Problem]]
) -> Iterator[list[_Event]]:
    """Requests' worth of events, greedily filled up to the byte and count limits.

    Events that cannot be sent at all go to `refused` (read by the caller between yields).
    """
    limit = settings.max_batch_bytes - len(_BATCH_OPEN) - len(_BATCH_CLOSE)
    per_request = settings.max_events_per_batch if settings.batch else 1
    current: list[_Event] = []
    size = 0
    for record in records:
        try:
            event = encode(record, settings.site_id)
        except (ValueError, KeyError, TypeError) as exc:  # not a conversion we can read
            refused.append((record, _problem(record, "NOT_AN_EVENT", f"cannot map: {exc}")))
            continue
        if len(event.data) > settings.max_event_bytes:
            error = EventTooLarge(
                f"the purchase event is {len(event.data)} bytes, over the "
                f"{settings.max_event_bytes}-byte limit of one event; not sent",
                id=record.id,
            )
            log.warning("%s", error)
            refused.append((record, _problem(record, EventTooLarge.code, error.message)))
            continue
        added = len(event.data) + (1 if current else 0)  # the comma
        if current and (size + added > limit or len(current) >= per_request):
            yield current
            current, size = [], 0
            added = len(event.data)
        current.append(event)
        size += added
    if current:
        yield current


def body_of(events: list[_Event], batch: bool) -> bytes:
    if not batch:
        return events[0].data
    return _BATCH_OPEN + b",".join(e.data for e in events) + _BATCH_CLOSE
