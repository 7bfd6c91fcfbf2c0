"""The container files, checked without Docker: the image's HEALTHCHECK command answers
for a real daemon configured from the environment the way the image configures it, the
compose rehearsal's settings load, and the emulator shows what it received."""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import requests
import yaml

from csvbridge.config import load_settings
from csvbridge.sinks import ship
from csvbridge.testing.sample_objects import sample_records
from csvbridge.testing.samples import generate
from tests.helpers import kill9, wait_until
from tests.plugins.api import settings_for

ROOT = Path(__file__).resolve().parent.parent


def dockerfile() -> list[tuple[str, str]]:
    """(instruction, arguments) of the final stage, continuation lines joined."""
    text = re.sub(r"\\\n\s*", " ", (ROOT / "Dockerfile").read_text())
    lines = [x.strip() for x in text.splitlines() if x.strip() and not x.startswith("#")]
    parsed = [tuple(x.split(None, 1)) for x in lines]
    last_from = max(i for i, (op, _) in enumerate(parsed) if op == "FROM")
    return [(op.upper(), rest) for op, rest in parsed[last_from:]]  # type: ignore[misc]


def image_env() -> dict[str, str]:
    env: dict[str, str] = {}
    for op, rest in dockerfile():
        if op == "ENV":
            for item in shlex.split(rest):
                key, _, value = item.partition("=")
                env[key] = value
    return env


def healthcheck_command() -> list[str]:
    (rest,) = [rest for op, rest in dockerfile() if op == "HEALTHCHECK"]
    return json.loads(rest[rest.index("CMD") + 3 :].strip())


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_the_image_is_slim_non_root_with_a_state_volume_and_watch_by_default() -> None:
    ops = dockerfile()
    assert ops[0] == ("FROM", "python:3.11-slim")
    user = [rest for op, rest in ops if op == "USER"]
    assert user == ["csvbridge"]
    assert ("VOLUME", '["/var/lib/csvbridge"]') in ops
    assert ("ENTRYPOINT", '["csvbridge"]') in ops and ("CMD", '["watch"]') in ops
    env = image_env()
    assert env["CSVBRIDGE_STATE__DIR"] == "/var/lib/csvbridge"
    assert healthcheck_command()[0] == "python"  # no curl in slim images


def test_the_healthcheck_command_asks_a_running_daemon(tmp_path: Path, emulator: Any) -> None:
    """The image's own HEALTHCHECK line, run beside `csvbridge watch` configured only
    from the environment and a secrets folder, as the image configures it."""
    emu = emulator()
    drop = tmp_path / "drop"
    drop.mkdir()
    generate(drop / "orders.csv", 20)
    secrets = tmp_path / "run-secrets"
    secrets.mkdir()
    (secrets / "CSVBRIDGE_TOKEN").write_text(emu.token + "\n")
    port = free_port()
    env = {
        **image_env(),
        "PATH": os.environ["PATH"],
        "PYTHONPATH": str(ROOT),
        "HOME": str(tmp_path),
        "CSVBRIDGE_STATE__DIR": str(tmp_path / "state"),  # the volume
        "CSVBRIDGE_SECRETS_DIR": str(secrets),  # /run/secrets
        "CSVBRIDGE_METRICS__HOST": "127.0.0.1",
        "CSVBRIDGE_METRICS__PORT": str(port),
        "CSVBRIDGE_API_URL": emu.url,
        "CSVBRIDGE_SITE_ID": emu.site_id,
        "CSVBRIDGE_SOURCES__0__NAME": "drop",
        "CSVBRIDGE_SOURCES__0__URL": drop.as_uri(),
        "CSVBRIDGE_SOURCES__0__MIN_AGE_SECONDS": "0",
        "CSVBRIDGE_SOURCES__0__STABLE_POLLS": "0",
    }
    check = healthcheck_command()
    before = subprocess.run(check, env=env, capture_output=True, timeout=30)
    assert before.returncode != 0  # nothing listening: unhealthy
    daemon = subprocess.Popen(
        [sys.executable, "-m", "csvbridge", "watch"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        wait_until(
            lambda: subprocess.run(check, env=env, capture_output=True, timeout=30).returncode == 0,
            timeout=60,
            what="the HEALTHCHECK command to pass",
        )
        wait_until(lambda: (drop / "done" / "orders.csv").exists(), 60, "the file shipped")
        assert (tmp_path / "state" / "ledger.sqlite").exists()
        daemon.send_signal(signal.SIGTERM)
        _, err = daemon.communicate(timeout=60)
    finally:
        if daemon.poll() is None:
            kill9(daemon)
    assert daemon.returncode == 0, err.decode()
    assert emu.token not in err.decode()
    after = subprocess.run(check, env=env, capture_output=True, timeout=30)
    assert after.returncode != 0


def test_the_compose_rehearsal_loads_as_csvbridge_would_read_it(tmp_path: Path) -> None:
    compose = yaml.safe_load((ROOT / "compose.yaml").read_text())
    services = compose["services"]
    assert services["emulator"]["command"][:3] == ["emulator", "--host", "0.0.0.0"]
    app = services["csvbridge"]
    assert "state:/var/lib/csvbridge" in app["volumes"]
    # its secrets land in /run/secrets/<name>: a folder of files named like variables
    secrets = tmp_path / "run-secrets"
    secrets.mkdir()
    for name in app["secrets"]:
        source = ROOT / compose["secrets"][name]["file"]
        (secrets / name).write_bytes(source.read_bytes())
    env = {**image_env(), **app["environment"], "CSVBRIDGE_SECRETS_DIR": str(secrets)}
    settings = load_settings(None, env=env)
    assert settings.api.base_url == "http://emulator:8080"
    assert settings.api.token.get_secret_value() == "emulator-token"
    assert settings.sources[0].url == "file:///srv/drop"
    assert settings.state.ledger == Path("/var/lib/csvbridge/ledger.sqlite")
    assert settings.metrics.port == 9100 and settings.metrics.host == "0.0.0.0"


def test_the_emulator_shows_what_it_received(emulator: Any) -> None:
    emu = emulator()
    records = list(sample_records(3))
    ship(records, settings_for(emu))
    objects = requests.get(f"{emu.url}/_emulator/objects", timeout=5).json()
    ids = sorted(o["id"] for o in objects["conversions"])
    assert len(ids) == len(records) == 3 and ids == sorted(emu.store["conversions"])
    only = requests.get(f"{emu.url}/_emulator/objects?kind=products", timeout=5).json()
    assert only == {"products": []}
    log = requests.get(f"{emu.url}/_emulator/requests", timeout=5).json()["requests"]
    posts = [r for r in log if r["method"] == "POST"]
    assert posts and posts[-1]["status"] == 202 and sum(p["accepted"] for p in posts) == 3
    assert posts[-1]["path"].startswith(f"/v2/{emu.site_id}/conversions/bulk")
    assert emu.token not in json.dumps(log)
