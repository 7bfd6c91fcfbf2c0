"""pytest fixtures (api): a real emulator on an ephemeral loopback port, and settings for it."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest

from csvbridge.config import ApiSettings, RateLimits
from csvbridge.testing.emulator import Emulator

DEFAULT_SPEED = 10.0  # 300 requests/s, 300 connections, 300 objects/s: tests take seconds


@pytest.fixture
def emulator() -> Iterator[Callable[..., Emulator]]:
    """Factory: ``emulator(**Emulator kwargs)`` starts one (listening when it returns);
    all are stopped at teardown."""
    started: list[Emulator] = []

    def start(**kwargs: Any) -> Emulator:
        kwargs.setdefault("speed", DEFAULT_SPEED)
        emu = Emulator(**kwargs).start()
        started.append(emu)
        return emu

    yield start
    for emu in started:
        emu.stop()


def settings_for(emu: Emulator, **overrides: Any) -> ApiSettings:
    """Client settings matching `emu`: its URL, site, token and documented limits x speed,
    with short timeouts and backoff so failures are retried quickly."""
    values: dict[str, Any] = {
        "base_url": emu.url,
        "site_id": emu.site_id,
        "token": emu.token,
        "limits": RateLimits(
            requests_per_second=30 * emu.speed,
            concurrent_connections=int(30 * emu.speed),
            objects_per_second=30 * emu.speed,
        ),
        "timeout_seconds": 10,
        "backoff_base_seconds": 0.02,
        "backoff_max_seconds": 0.5,
        "max_attempts": 12,
    }
    values.update(overrides)
    return ApiSettings.model_validate(values)
