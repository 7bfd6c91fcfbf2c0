"""Many shops, many sites: a destination per source, sources in parallel, one budget per
account, a narrow in-flight window.

Real parts throughout: the emulator serving several sites and tokens (each token an
account with its own limits) on loopback, local drops, the SQLite ledger, real passes
(`run_once`), the daemon (`watch`) in a thread, and `csvbridge run` processes killed
with SIGKILL.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import SecretStr

from csvbridge.config import ApiSettings, RateLimits, Settings, SourceSettings, load_settings
from csvbridge.drops.daemon import watch
from csvbridge.drops.runner import run_once
from csvbridge.redaction import redact
from csvbridge.report import FileState
from csvbridge.testing.emulator import Emulator
from csvbridge.testing.emulator_accounts import SiteSpec
from tests.helpers import kill9, wait_until
from tests.test_runner import (
    cli,
    ledger_accepted,
    listing,
    local_source,
    make_settings,
    write_export,
)

DOCUMENTED = RateLimits()


def client_limits(emu: Emulator, limits: RateLimits = DOCUMENTED) -> RateLimits:
    """The client's view of an account's limits at the emulator's speed."""
    return RateLimits(
        requests_per_second=limits.requests_per_second * emu.speed,
        concurrent_connections=int(limits.concurrent_connections * emu.speed),
        objects_per_second=limits.objects_per_second * emu.speed,
    )


def site_source(
    drop: Path, name: str, emu: Emulator, site: str, limits: RateLimits = DOCUMENTED
) -> SourceSettings:
    """A local drop shipping to `site` with its account's token and limits (its own
    ``api:`` section, merged over the top-level one)."""
    drop.mkdir(exist_ok=True)
    api = ApiSettings.model_validate(
        {"site_id": site, "token": emu.token_of(site), "limits": client_limits(emu, limits)}
    )
    return local_source(drop, name=name, api=api)


def settings_with(tmp_path: Path, emu: Emulator, *sources: SourceSettings) -> Settings:
    """Settings whose top-level api is the emulator's (its first site); the sources'
    own sections are merged over it, as `load_settings` does."""
    base = make_settings(tmp_path, emu, max_attempts=30)
    return Settings.model_validate(
        {**dict(base), "sources": [dict(s) for s in sources]}
    )


def interval(emu: Emulator, site: str) -> tuple[float, float]:
    stats = emu.stats.sites[site]
    assert stats.first_accepted_at is not None and stats.last_accepted_at is not None
    return stats.first_accepted_at, stats.last_accepted_at


def total_429(emu: Emulator) -> int:
    return emu.stats.status_counts[429]


@pytest.fixture
def sites_emulator(emulator: Callable[..., Emulator]) -> Callable[..., Emulator]:
    return lambda *sites, **kw: emulator(sites=list(sites), **kw)


# --------------------------------------------------------------------------- config


def test_per_source_api_sections_merge_over_the_top_level_with_secrets_from_env(
    tmp_path: Path,
) -> None:
    config = tmp_path / "csvbridge.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "api": {
                    "site_id": 1234,
                    "max_attempts": 5,
                    "limits": {"objects_per_second": 30, "requests_per_second": 30},
                },
                "feed": {"target": "file://./feeds", "gzip": True},
                "sources": [
                    {"name": "a", "url": "a"},
                    {
                        "name": "b",
                        "url": "b",
                        "api": {
                            "site_id": 5678,
                            "token": "${BRAND_B_TOKEN}",
                            "limits": {"objects_per_second": 60},
                        },
                        "feed": {"target": "file://./feeds-b"},
                    },
                ],
            }
        )
    )
    env = {"CSVBRIDGE_TOKEN": "top-level-token-1", "BRAND_B_TOKEN": "brand-b-token-42\n"}
    settings = load_settings(config, env=env)
    a, b = settings.sources
    assert a.api is None and settings.api_for(a) is settings.api
    assert settings.api_for(a).token.get_secret_value() == "top-level-token-1"  # env override
    own = settings.api_for(b)
    assert own.site_id == "5678" and own.token.get_secret_value() == "brand-b-token-42"
    assert own.max_attempts == 5  # left out: the top-level value
    assert own.limits == RateLimits(objects_per_second=60, requests_per_second=30)
    assert own.base_url == settings.api.base_url
    feed_b = settings.feed_for(b)
    assert feed_b.gzip is True  # merged too
    assert feed_b.target == (tmp_path / "feeds-b").as_uri()  # relative to the config file
    assert settings.feed_for(a).target == (tmp_path / "feeds").as_uri()
    # what the runner hands to a file of source b: its destination and feed
    seen = settings.for_source(b)
    assert seen.api.site_id == "5678" and seen.feed.target == feed_b.target
    # the per-source token is a secret from the moment it is loaded
    assert "brand-b-token-42" not in redact("sending with brand-b-token-42")
    assert "brand-b-token-42" not in repr(settings) + str(own)


def test_a_per_source_section_with_an_unknown_key_is_refused(tmp_path: Path) -> None:
    from csvbridge.errors import ConfigError

    config = tmp_path / "csvbridge.yaml"
    config.write_text(
        yaml.safe_dump({"sources": [{"name": "a", "url": "a", "api": {"site": 5678}}]})
    )
    with pytest.raises(ConfigError, match=r"sources\.0\.api\.site"):
        load_settings(config, env={})


# --------------------------------------------------------------------------- parallel


def test_three_sources_three_tokens_ship_in_parallel_each_at_its_own_limit(
    tmp_path: Path, sites_emulator: Callable[..., Emulator]
) -> None:
    # three accounts: 30, 30 and 60 objects/s documented, x5 here
    fast = RateLimits(objects_per_second=60, requests_per_second=30)
    emu = sites_emulator(
        SiteSpec("101", "token-a"), SiteSpec("202", "token-b"), SiteSpec("303", "token-c", fast),
        speed=5,
    )  # fmt: skip
    n = {"101": 600, "202": 600, "303": 1200}  # 4 s each at its own limit
    sources, ids = [], {}
    for k, (site, count) in enumerate(n.items()):
        drop = tmp_path / f"shop{k}"
        limits = fast if site == "303" else DOCUMENTED
        sources.append(site_source(drop, f"shop{k}", emu, site, limits))
        ids[site], _ = write_export(drop / "orders.csv", count, first=k * 10_000)
    settings = settings_with(tmp_path, emu, *sources)

    started = time.monotonic()
    summary = run_once(settings)
    elapsed = time.monotonic() - started

    assert summary.exit_code == 0, summary.describe()
    assert [f.state for f in summary.files] == [FileState.DONE] * 3
    for site in n:  # every conversion at its own site, once
        assert set(emu.stores[site]["conversions"]) == ids[site]
        assert emu.stats.sites[site].resent == set()
    assert total_429(emu) == 0
    # each account at its own limit, at the same time
    for site in n:
        first, last = interval(emu, site)
        limit = client_limits(emu, fast if site == "303" else DOCUMENTED).objects_per_second
        rate = (n[site] - 90) / (last - first)  # the first batch is accepted at `first`
        assert rate >= 0.8 * limit, (site, rate, limit)
        assert rate <= 1.05 * limit, (site, rate, limit)
    starts = [interval(emu, s)[0] for s in n]
    ends = [interval(emu, s)[1] for s in n]
    assert max(starts) < min(ends)  # all three shipping at once
    # one after the other would take 12 s of shipping; together about 4 s
    assert elapsed < 9, elapsed
    aggregate = sum(n.values()) / (max(ends) - min(starts))
    assert aggregate >= 0.8 * (150 + 150 + 300), aggregate


@pytest.mark.parametrize("same_token", [True, False], ids=["same-token", "other-token"])
def test_a_small_file_on_another_source_ships_within_seconds_while_a_big_one_ships(
    tmp_path: Path, sites_emulator: Callable[..., Emulator], same_token: bool
) -> None:
    token_b = "token-a" if same_token else "token-b"
    emu = sites_emulator(SiteSpec("101", "token-a"), SiteSpec("202", token_b), speed=2)
    a = site_source(tmp_path / "a", "a", emu, "101", DOCUMENTED)
    b = site_source(tmp_path / "b", "b", emu, "202", DOCUMENTED)
    big, _ = write_export(tmp_path / "a" / "big.csv", 2400)  # 40 s at 60 objects/s
    settings = settings_with(tmp_path, emu, a, b)
    stop = threading.Event()
    codes: list[int] = []
    daemon = threading.Thread(
        target=lambda: codes.append(watch(settings, stop=stop, install_signals=False))
    )
    daemon.start()
    try:
        wait_until(lambda: emu.stats.sites["101"].accepted >= 90, what="the big file shipping")
        dropped = time.monotonic()
        small, _ = write_export(tmp_path / "b" / "small.csv", 5, first=90_000)
        wait_until(
            lambda: set(emu.stores["202"]["conversions"]) >= small,
            timeout=30,
            what="the small file shipped",
        )
        latency = time.monotonic() - dropped
        shipped_big = emu.stats.sites["101"].accepted
        wait_until(lambda: "small.csv" in listing(tmp_path / "b")["done"], what="small filed")
    finally:
        stop.set()
        daemon.join(timeout=60)
    assert codes == [0]
    assert shipped_big < len(big)  # the big one was still shipping
    assert latency < 6, latency  # seconds, not the 40 s the big file takes
    assert emu.stats.status_counts[429] == 0
    assert listing(tmp_path / "a")["processing"] == ["big.csv"]  # stopped: resumed later


def test_two_sources_sharing_a_token_hold_its_budget_together(
    tmp_path: Path, sites_emulator: Callable[..., Emulator]
) -> None:
    # one account, two sites; each source alone would ship at the full limit
    emu = sites_emulator(SiteSpec("101", "shared"), SiteSpec("202", "shared"), speed=5)
    a = site_source(tmp_path / "a", "a", emu, "101")
    b = site_source(tmp_path / "b", "b", emu, "202")
    ids_a, _ = write_export(tmp_path / "a" / "orders.csv", 450)
    ids_b, _ = write_export(tmp_path / "b" / "orders.csv", 450, first=10_000)
    settings = settings_with(tmp_path, emu, a, b)

    summary = run_once(settings)

    assert summary.exit_code == 0, summary.describe()
    assert set(emu.stores["101"]["conversions"]) == ids_a
    assert set(emu.stores["202"]["conversions"]) == ids_b
    stats = emu.stats
    assert stats.status_counts[429] == 0, stats.status_counts  # no 429 storm
    assert stats.resent == set()
    # the account's 150 objects/s, shared: both shipping at once, together at the limit
    (a0, a1), (b0, b1) = interval(emu, "101"), interval(emu, "202")
    assert max(a0, b0) < min(a1, b1)  # interleaved, not one after the other
    together = (900 - 90) / (max(a1, b1) - min(a0, b0))
    assert 0.8 * 150 <= together <= 1.05 * 150, together


def test_a_refused_token_of_one_source_stops_only_that_source(
    tmp_path: Path, sites_emulator: Callable[..., Emulator]
) -> None:
    emu = sites_emulator(SiteSpec("101", "token-a"), SiteSpec("202", "token-b"), speed=10)
    a = site_source(tmp_path / "a", "a", emu, "101")
    b = site_source(tmp_path / "b", "b", emu, "202")
    assert b.api is not None
    b.api.token = SecretStr("revoked-token")
    ids_a, _ = write_export(tmp_path / "a" / "orders.csv", 20)
    write_export(tmp_path / "b" / "orders.csv", 20, first=500)
    summary = run_once(settings_with(tmp_path, emu, a, b))
    result_a, result_b = summary.sources
    assert result_a.error is None and set(emu.stores["101"]["conversions"]) == ids_a
    assert result_b.error is not None and "token" in result_b.error.lower()
    assert summary.exit_code == 3  # the worst status wins
    assert listing(tmp_path / "b")["processing"] == ["orders.csv"]  # kept for a retry
    assert "revoked-token" not in summary.describe()


# --------------------------------------------------------------------------- kill -9


def test_kill_9_mid_file_resends_at_most_one_batch_on_average(
    tmp_path: Path, emulator: Callable[..., Emulator]
) -> None:
    """SIGKILL at random moments of a shipment, a few times: what was in flight is sent
    again (the API has no idempotency key), and nothing else; nothing is lost."""
    rng = random.Random(11)
    resent_per_kill = []
    for run in range(4):
        emu = emulator(speed=6)  # 180 objects/s: a batch of 90 takes 0.5 s
        drop = tmp_path / f"run{run}" / "drop"
        drop.mkdir(parents=True)
        ids, _ = write_export(drop / "big.csv", 540, first=run * 10_000)
        settings = make_settings(tmp_path / f"run{run}", emu, local_source(drop))
        config = tmp_path / f"run{run}" / "csvbridge.yaml"
        data = settings.model_dump(mode="json", exclude_none=True)
        data["api"]["token"] = settings.api.token.get_secret_value()
        config.write_text(yaml.safe_dump(data))
        proc = cli("run", "--config", str(config))
        try:
            wait_until(
                lambda s=settings: len(ledger_accepted(s.state.ledger)) >= 90,
                what="a batch recorded",
            )
            time.sleep(rng.uniform(0, 0.6))  # a random moment of the shipment (the point)
        finally:
            kill9(proc)
        assert listing(drop)["processing"] == ["big.csv"]
        done = cli("run", "--config", str(config))
        _, err = done.communicate(timeout=60)
        assert done.returncode == 0, err.decode()
        assert set(emu.stats.received_ids) == ids  # nothing lost
        resent_per_kill.append(len(emu.stats.resent))
        emu.stop()
    # A kill re-sends one batch, or two when it falls in the moment the next one is
    # already on its way (or the last answer not yet recorded): never more.  The mean of
    # four kills is noisy (one "two" among four moves it by a quarter of a batch), so
    # it is held to 1.25 batches here; benchmarks/multisite.py measures it over more
    # kills against the target of one.  (The window before this issue, four requests
    # with a whole batch booked ahead, re-sent about two batches per kill.)
    assert max(resent_per_kill) <= 2 * 90, resent_per_kill
    assert sum(resent_per_kill) / len(resent_per_kill) <= 1.25 * 90, resent_per_kill


# --------------------------------------------------------------------------- emulator


def _post(emu: Emulator, site: str, token: str, n: int = 1, first: int = 0) -> Any:
    import orjson
    import requests

    from csvbridge.testing.sample_objects import sample_conversion

    body = b"\n".join(orjson.dumps(sample_conversion(first + i)) for i in range(n))
    return requests.post(
        f"{emu.url}/v2/{site}/conversions/bulk",
        data=body,
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/x-ndjson"},
        timeout=10,
    )


def test_the_emulator_serves_several_sites_each_token_with_its_own_limits(
    sites_emulator: Callable[..., Emulator],
) -> None:
    # token-a: 2 requests/s for its two sites together; token-b: 3 requests/s
    emu = sites_emulator(
        "101:token-a:30:0.2", "102:token-a", "202:token-b:30:0.3", speed=10
    )
    assert [s.site_id for s in emu.sites] == ["101", "102", "202"]
    assert emu.token_of("102") == "token-a"  # a token named again keeps its limits
    assert _post(emu, "202", "token-a").status_code == 403  # not token-a's site
    assert _post(emu, "101", "token-c").status_code == 401  # no such account
    a = [_post(emu, site, "token-a", first=k).status_code for k, site in
         enumerate(["101", "102", "101"])]  # fmt: skip
    b = [_post(emu, "202", "token-b", first=100 + k).status_code for k in range(4)]
    assert a == [202, 202, 429]  # the account's 2 per second, over both its sites
    assert b == [202, 202, 202, 429]  # another account: its own window
    stats = emu.stats  # counted per site, whatever refused the request
    assert stats.sites["101"].status_counts == {401: 1, 202: 1, 429: 1}
    assert stats.sites["202"].status_counts == {403: 1, 202: 3, 429: 1}
    assert len(emu.stores["102"]["conversions"]) == 1  # each site its own store
    assert len(emu.stores["202"]["conversions"]) == 3


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("1234", SiteSpec("1234", "emulator-token")),
        ("1234:tok", SiteSpec("1234", "tok")),
        (
            "5678:tok-b:60:20:5",
            SiteSpec(
                "5678",
                "tok-b",
                RateLimits(objects_per_second=60, requests_per_second=20, concurrent_connections=5),
            ),
        ),
    ],
)
def test_site_option_parses(text: str, expected: SiteSpec) -> None:
    assert SiteSpec.parse(text) == expected


@pytest.mark.parametrize("text", ["", ":tok", "1234::", "1234:tok:fast", "1:2:3:4:5:6"])
def test_a_bad_site_option_is_a_config_error(text: str) -> None:
    from csvbridge.errors import ConfigError

    with pytest.raises(ConfigError, match="--site"):
        SiteSpec.parse(text)


def test_cli_emulator_with_several_sites_never_echoes_their_tokens() -> None:
    import os
    import signal
    import socket
    import subprocess
    import sys

    import requests

    with socket.socket() as probe:  # a free port (the CLI refuses 0)
        probe.bind(("127.0.0.1", 0))
        port = str(probe.getsockname()[1])
    env = {**os.environ, "PYTHONPATH": os.getcwd()}
    args = ["--port", port, "--speed", "10", "--site", "1234:secret-a-77", "--site",
            "5678:secret-b-88:60"]  # fmt: skip
    proc = subprocess.Popen(
        [sys.executable, "-m", "csvbridge", "emulator", *args],
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        assert proc.stdout is not None
        lines = []  # every line it prints when ready (communicate() skips what was buffered)
        while not lines or "account 2" not in lines[-1]:
            lines.append(proc.stdout.readline())
            assert lines[-1] and len(lines) < 10, lines
        listening = next(x for x in lines if "emulator listening on" in x)
        url = listening.split(" on ", 1)[1].split()[0]
        ok = requests.post(
            f"{url}/v2/5678/conversions/bulk",
            data=b"",
            headers={"Authorization": "Bearer secret-b-88"},
            timeout=10,
        )
        assert ok.status_code == 202
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
    text = "".join(lines) + out
    assert "account 2: sites 5678, 60 objects/s" in text
    assert "secret-a-77" not in text and "secret-b-88" not in text
