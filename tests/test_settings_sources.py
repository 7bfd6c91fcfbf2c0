"""Settings from every place operators put them: the YAML file, `CSVBRIDGE_*` variables,
a secrets folder, systemd's credentials, the command line; the precedence between them,
where each value came from, and `config show` never printing a secret.  Real files, real
processes (the CLI as cron or systemd would start it)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from csvbridge.config import load_settings, load_settings_with_origins
from csvbridge.config_show import show_settings
from csvbridge.errors import ConfigError
from csvbridge.redaction import MASK, forget_secrets, redact
from csvbridge.state_dir import SYSTEM_STATE_DIR, default_state_dir
from csvbridge.testing.samples import generate

ROOT = Path(__file__).resolve().parent.parent
CLEAN = {"HOME": "/home/nobody"}  # a load's environment: nothing inherited from the runner


@pytest.fixture(autouse=True)
def clean_registry() -> Iterator[None]:
    forget_secrets()
    yield
    forget_secrets()


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def cli(*args: str, env: dict[str, str], cwd: Path | None = None) -> subprocess.CompletedProcess:
    """The installed entry point in a process of its own, with exactly `env` (plus what
    Python needs to import this worktree)."""
    full = {**env, "PYTHONPATH": str(ROOT), "PATH": os.environ.get("PATH", "/usr/bin")}
    return subprocess.run(
        [sys.executable, "-m", "csvbridge", *args],
        env=full,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
    )


# -- the environment ---------------------------------------------------------------------


def test_every_key_from_the_environment_by_the_documented_scheme(tmp_path: Path) -> None:
    env = {
        **CLEAN,
        "CSVBRIDGE_API__TIMEOUT_SECONDS": "12.5",
        "CSVBRIDGE_API__LIMITS__REQUESTS_PER_SECOND": "7",
        "CSVBRIDGE_SINKS": '["api", "feed"]',
        "CSVBRIDGE_CONVERT__DECIMAL_COMMA": "true",
        "CSVBRIDGE_SOURCES__0__NAME": "erp",
        "CSVBRIDGE_SOURCES__0__URL": "sftp://erp@files.example/out",
        "CSVBRIDGE_SOURCES__0__INCLUDE": '["*.txt"]',
        "CSVBRIDGE_SOURCES__0__CONVERT__CONFLICT": "last",
        "CSVBRIDGE_LOGGING__FORMAT": "json",
    }
    settings = load_settings(None, env=env)  # no file at all: a container's way
    assert settings.api.timeout_seconds == 12.5
    assert settings.api.limits.requests_per_second == 7
    assert settings.sinks == ["api", "feed"]
    assert settings.convert.decimal_comma is True
    (source,) = settings.sources
    assert (source.name, source.url, source.include) == (
        "erp",
        "sftp://erp@files.example/out",
        ["*.txt"],
    )
    assert source.convert.conflict == "last"
    assert settings.logging.format == "json"


def test_indexed_variables_change_one_key_of_a_yaml_source_and_can_add_one(
    tmp_path: Path,
) -> None:
    config = write(
        tmp_path / "c.yaml",
        "sources:\n"
        "  - name: shop\n    url: ftp://shop@ftp.example/out\n    password: from-yaml\n"
        "    min_age_seconds: 5\n",
    )
    env = {
        **CLEAN,
        "CSVBRIDGE_SOURCES__0__PASSWORD": "from-env-pw-1234",
        "CSVBRIDGE_SOURCES__1__NAME": "second",
        "CSVBRIDGE_SOURCES__1__URL": "drop",
        "CSVBRIDGE_METRICS__PORT": "null",
    }
    loaded = load_settings_with_origins(config, env=env)
    first, second = loaded.settings.sources
    assert first.url == "ftp://shop@ftp.example/out" and first.min_age_seconds == 5
    assert first.password is not None
    assert first.password.get_secret_value() == "from-env-pw-1234"
    assert loaded.origin("sources.0.password") == "env CSVBRIDGE_SOURCES__0__PASSWORD"
    assert loaded.origin("sources.0.url") == f"file {config}:3"
    # a relative path keeps the meaning of where it was written: the environment's is
    # relative to the working directory, the file's to the file's folder
    assert second.url == str(Path.cwd() / "drop")
    assert loaded.settings.metrics.port is None


def test_a_gap_in_the_indexes_is_an_error_naming_the_variable() -> None:
    env = {**CLEAN, "CSVBRIDGE_SOURCES__1__URL": "drop", "CSVBRIDGE_SOURCES__1__NAME": "x"}
    with pytest.raises(ConfigError, match=r"sources\.1 \(env CSVBRIDGE_SOURCES__1__NAME\)"):
        load_settings(None, env=env)


def test_errors_name_the_key_and_its_origin_never_the_value(tmp_path: Path) -> None:
    secret = "pw-that-must-not-show-9876"
    env = {
        **CLEAN,
        "CSVBRIDGE_API__MAX_IN_FLIGHT": "lots",
        "CSVBRIDGE_SOURCES__0__NAME": "s",
        "CSVBRIDGE_SOURCES__0__PASSWORD": secret,  # a source without its url
        "CSVBRIDGE_API__TOKEN": '{"not": "a string"}',
    }
    with pytest.raises(ConfigError) as caught:
        load_settings(None, env=env)
    text = str(caught.value)
    assert "api.max_in_flight (env CSVBRIDGE_API__MAX_IN_FLIGHT)" in text
    assert "sources.0.url" in text
    assert "lots" not in text and secret not in text and "not" not in text.split(":")[-1]
    with pytest.raises(ConfigError, match="CSVBRIDGE_SINKS: not valid JSON"):
        load_settings(None, env={**CLEAN, "CSVBRIDGE_SINKS": "api,feed"})


def test_an_unknown_variable_is_reported_not_silently_taken(tmp_path: Path) -> None:
    loaded = load_settings_with_origins(None, env={**CLEAN, "CSVBRIDGE_TOKNE": "x"})
    assert loaded.unknown == ["env CSVBRIDGE_TOKNE: names no setting"]
    with pytest.raises(ConfigError, match=r"api\.timout_seconds \(env CSVBRIDGE_API__TIMOUT"):
        load_settings(None, env={**CLEAN, "CSVBRIDGE_API__TIMOUT_SECONDS": "3"})


def test_csvbridge_config_names_the_file_and_an_explicit_path_wins(tmp_path: Path) -> None:
    a = write(tmp_path / "a.yaml", "api:\n  site_id: '111'\n")
    b = write(tmp_path / "b.yaml", "api:\n  site_id: '222'\n")
    env = {**CLEAN, "CSVBRIDGE_CONFIG": str(a)}
    assert load_settings(None, env=env).api.site_id == "111"
    assert load_settings(b, env=env).api.site_id == "222"
    with pytest.raises(ConfigError, match="cannot read config file"):
        load_settings(None, env={**CLEAN, "CSVBRIDGE_CONFIG": str(tmp_path / "missing.yaml")})


# -- secret files ------------------------------------------------------------------------


def test_a_secrets_folder_sets_keys_and_feeds_yaml_references(tmp_path: Path) -> None:
    secrets = tmp_path / "run-secrets"
    write(secrets / "CSVBRIDGE_API__TOKEN", "tok-from-a-secret-file-42\n")
    write(secrets / "FTP_PASSWORD", "  ftp-secret-pw-77 \r\n")
    write(secrets / ".hidden", "ignored")  # Kubernetes' ..data and friends
    (secrets / "..data").mkdir()
    config = write(
        tmp_path / "c.yaml",
        "feed:\n  target: ftp://feeds@ftp.example/in\n  password: ${FTP_PASSWORD}\n",
    )
    loaded = load_settings_with_origins(
        config, env={**CLEAN, "CSVBRIDGE_SECRETS_DIR": str(secrets)}
    )
    s = loaded.settings
    assert s.api.token.get_secret_value() == "tok-from-a-secret-file-42"
    assert s.feed.password is not None
    assert s.feed.password.get_secret_value() == "ftp-secret-pw-77"
    assert loaded.origin("api.token") == f"secret file {secrets / 'CSVBRIDGE_API__TOKEN'}"
    assert loaded.origin("feed.password") == f"file {config}:3 via ${{FTP_PASSWORD}}"
    # registered for redaction as soon as read
    assert redact("x tok-from-a-secret-file-42 ftp-secret-pw-77") == f"x {MASK} {MASK}"


def test_systemd_credentials_directory(tmp_path: Path) -> None:
    """LoadCredential=NAME:/path puts a file NAME in $CREDENTIALS_DIRECTORY; the short
    historical names work as file names too."""
    creds = tmp_path / "credentials" / "csvbridge.service"
    write(creds / "CSVBRIDGE_TOKEN", "tok-from-systemd-credential\n")
    write(creds / "CSVBRIDGE_SOURCES__0__PASSWORD", "sftp-pw-from-credential")
    secrets = tmp_path / "secrets"
    write(secrets / "CSVBRIDGE_SOURCES__0__PASSWORD", "loses-to-the-credential")
    config = write(tmp_path / "c.yaml", "sources:\n  - name: s\n    url: sftp://u@h/d\n")
    env = {**CLEAN, "CREDENTIALS_DIRECTORY": str(creds), "CSVBRIDGE_SECRETS_DIR": str(secrets)}
    loaded = load_settings_with_origins(config, env=env)
    assert loaded.settings.api.token.get_secret_value() == "tok-from-systemd-credential"
    password = loaded.settings.sources[0].password
    assert password is not None and password.get_secret_value() == "sftp-pw-from-credential"
    assert loaded.origin("sources.0.password").startswith(f"secret file {creds}")


def test_a_missing_secrets_folder_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="CREDENTIALS_DIRECTORY is not a folder"):
        load_settings(None, env={**CLEAN, "CREDENTIALS_DIRECTORY": str(tmp_path / "nope")})


# -- precedence --------------------------------------------------------------------------

LAYERS = ["default", "file", "secret", "env", "cli"]


@pytest.mark.parametrize("top", LAYERS)
def test_precedence_defaults_file_secrets_env_command_line(tmp_path: Path, top: str) -> None:
    """The same key set in every layer up to `top`: the highest one wins, and is named."""
    present = LAYERS[: LAYERS.index(top) + 1]
    env = dict(CLEAN)
    config = None
    if "file" in present:
        config = write(tmp_path / "c.yaml", "metrics:\n  port: 9001\n")
    if "secret" in present:
        write(tmp_path / "s" / "CSVBRIDGE_METRICS__PORT", "9002\n")
        env["CSVBRIDGE_SECRETS_DIR"] = str(tmp_path / "s")
    if "env" in present:
        env["CSVBRIDGE_METRICS__PORT"] = "9003"
    overrides = {"metrics.port": 9004} if "cli" in present else None
    loaded = load_settings_with_origins(config, env=env, overrides=overrides)
    expected = {"default": None, "file": 9001, "secret": 9002, "env": 9003, "cli": 9004}
    origin = {
        "default": "default",
        "file": f"file {config}:2",
        "secret": f"secret file {tmp_path / 's' / 'CSVBRIDGE_METRICS__PORT'}",
        "env": "env CSVBRIDGE_METRICS__PORT",
        "cli": "command line",
    }
    assert loaded.settings.metrics.port == expected[top]
    assert loaded.origin("metrics.port") == origin[top]
    assert loaded.origin("metrics.host") == "default"


def test_the_nested_variable_wins_over_the_short_historical_name() -> None:
    env = {**CLEAN, "CSVBRIDGE_SITE_ID": "1", "CSVBRIDGE_API__SITE_ID": "2"}
    loaded = load_settings_with_origins(None, env=env)
    assert loaded.settings.api.site_id == "2"
    assert load_settings(None, env={**CLEAN, "CSVBRIDGE_SITE_ID": "1"}).api.site_id == "1"


# -- the state folder --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("env", "euid", "expected"),
    [
        ({"STATE_DIRECTORY": "/var/lib/csvbridge:/var/lib/other"}, 1000, "/var/lib/csvbridge"),
        ({"STATE_DIRECTORY": "/var/lib/x", "XDG_STATE_HOME": "/xdg"}, 0, "/var/lib/x"),
        ({"XDG_STATE_HOME": "/xdg", "HOME": "/root"}, 0, str(SYSTEM_STATE_DIR)),
        ({"XDG_STATE_HOME": "/xdg", "HOME": "/home/ann"}, 1000, "/xdg/csvbridge"),
        ({"XDG_STATE_HOME": "rel", "HOME": "/home/ann"}, 1000, "/home/ann/.local/state/csvbridge"),
        ({"HOME": "/home/ann"}, 1000, "/home/ann/.local/state/csvbridge"),
    ],
)
def test_default_state_folder(env: dict[str, str], euid: int, expected: str) -> None:
    assert default_state_dir(env, euid).path == Path(expected)


def test_state_never_lands_beside_a_config_in_etc(tmp_path: Path) -> None:
    etc = tmp_path / "etc" / "csvbridge"
    config = write(etc / "csvbridge.yaml", "api:\n  site_id: '1'\n")
    home = tmp_path / "home"
    loaded = load_settings_with_origins(config, env={"HOME": str(home)}, euid=1000)
    state = loaded.settings.state
    folder = home / ".local" / "state" / "csvbridge"
    assert (state.ledger, state.work_dir, state.lock_file) == (
        folder / "ledger.sqlite",
        folder / "work",
        folder / "csvbridge.lock",
    )
    assert loaded.origin("state.ledger") == "default: XDG default (~/.local/state)"
    here = load_settings(config, env={"HOME": str(home)})  # this process's euid
    assert etc not in here.state.ledger.parents
    systemd = load_settings(config, env={"STATE_DIRECTORY": str(tmp_path / "sd")})
    assert systemd.state.ledger == tmp_path / "sd" / "ledger.sqlite"


def test_an_existing_state_beside_the_config_is_kept(tmp_path: Path) -> None:
    """An installation from before the move keeps its ledger (what was shipped)."""
    config = write(tmp_path / "conf" / "c.yaml", "api:\n  site_id: '1'\n")
    old = tmp_path / "conf" / "csvbridge-state"
    env = {"STATE_DIRECTORY": str(tmp_path / "sd")}
    assert load_settings(config, env=env).state.ledger == tmp_path / "sd" / "ledger.sqlite"
    write(old / "ledger.sqlite", "")
    loaded = load_settings_with_origins(config, env=env)
    assert loaded.settings.state.ledger == old / "ledger.sqlite"
    assert loaded.settings.state.lock_file == old / "csvbridge.lock"
    assert "older default" in loaded.origin("state.ledger")
    explicit = write(tmp_path / "conf" / "d.yaml", "state:\n  dir: /srv/state\n")
    assert load_settings(explicit, env=env).state.ledger == Path("/srv/state/ledger.sqlite")


def test_explicit_state_paths_win_and_stay_relative_to_the_config(tmp_path: Path) -> None:
    config = write(
        tmp_path / "conf" / "c.yaml",
        "state:\n  dir: kept\n  lock_file: /run/lock/csvbridge.lock\n",
    )
    env = {"STATE_DIRECTORY": str(tmp_path / "sd"), "HOME": "/nonexistent"}
    loaded = load_settings_with_origins(config, env=env)
    state = loaded.settings.state
    assert state.dir == tmp_path / "conf" / "kept"
    assert state.ledger == tmp_path / "conf" / "kept" / "ledger.sqlite"
    assert state.work_dir == tmp_path / "conf" / "kept" / "work"
    assert state.lock_file == Path("/run/lock/csvbridge.lock")
    assert loaded.origin("state.ledger") == f"file {config}:2 (state.dir)"
    ledger_only = write(tmp_path / "conf" / "d.yaml", "state:\n  ledger: db/l.sqlite\n")
    state = load_settings(ledger_only, env=env).state
    assert state.ledger == tmp_path / "conf" / "db" / "l.sqlite"
    assert state.work_dir == tmp_path / "sd" / "work"


# -- config show -------------------------------------------------------------------------


def _secret_setup(tmp_path: Path) -> tuple[Path, dict[str, str], list[str]]:
    secrets = ["tok-env-abcdef-123", "sftp-file-pw-456", "yaml-inline-pw-789", "url-pw-000x"]
    write(tmp_path / "creds" / "CSVBRIDGE_SOURCES__0__PASSWORD", secrets[1] + "\n")
    config = write(
        tmp_path / "c.yaml",
        "api:\n  site_id: '1234'\n"
        f"feed:\n  target: ftp://feeder:{secrets[3]}@ftp.example/in\n  password: {secrets[2]}\n"
        "sources:\n  - name: s\n    url: sftp://u@h/d\n",
    )
    env = {
        **CLEAN,
        "CSVBRIDGE_TOKEN": secrets[0],
        "CREDENTIALS_DIRECTORY": str(tmp_path / "creds"),
        "CSVBRIDGE_CONFIG": str(config),
    }
    return config, env, secrets


def test_config_show_masks_every_secret_and_names_origins(tmp_path: Path) -> None:
    config, env, secrets = _secret_setup(tmp_path)
    text = cli("config", "show", env=env)
    as_json = cli("config", "show", "--json", env=env)
    for done in (text, as_json):
        assert done.returncode == 0, done.stderr
        for secret in secrets:
            assert secret not in done.stdout and secret not in done.stderr
    rows = {r["key"]: r for r in json.loads(as_json.stdout)["settings"]}
    assert rows["api.token"] == {"key": "api.token", "value": MASK, "origin": "env CSVBRIDGE_TOKEN"}
    assert rows["sources.0.password"]["value"] == MASK
    assert rows["sources.0.password"]["origin"].startswith("secret file ")
    assert rows["feed.password"] == {
        "key": "feed.password",
        "value": MASK,
        "origin": f"file {config}:5",
    }
    assert rows["feed.target"]["value"] == f"ftp://feeder:{MASK}@ftp.example/in"
    assert rows["api.site_id"]["origin"] == f"file {config}:2"
    assert rows["api.timeout_seconds"] == {
        "key": "api.timeout_seconds",
        "value": 60.0,
        "origin": "default",
    }
    assert rows["events.token"]["value"] is None  # unset: shown as unset, not as a mask
    line = next(x for x in text.stdout.splitlines() if x.startswith("api.token "))
    assert line.split("=", 1)[1].strip() == f"{MASK}  # env CSVBRIDGE_TOKEN"


def test_config_show_as_a_library_call(tmp_path: Path) -> None:
    _config, env, secrets = _secret_setup(tmp_path)
    shown = show_settings(None, env=env)
    dumped = json.dumps(shown.as_json()) + shown.as_text()
    assert all(secret not in dumped for secret in secrets)
    assert shown.config_file == env["CSVBRIDGE_CONFIG"]


def test_run_takes_its_config_from_csvbridge_config(tmp_path: Path, emulator: Any) -> None:
    """`csvbridge run` without --config, as a systemd unit with Environment= runs it: the
    file from $CSVBRIDGE_CONFIG, the token from a credential, the state in
    $STATE_DIRECTORY."""
    emu = emulator()
    drop = tmp_path / "drop"
    drop.mkdir()
    generate(drop / "orders.csv", 40)
    config = write(
        tmp_path / "etc" / "csvbridge.yaml",
        f"api:\n  base_url: {emu.url}\n  site_id: '{emu.site_id}'\n"
        f"sources:\n  - name: shop\n    url: {drop}\n    min_age_seconds: 0\n"
        "    stable_polls: 0\n",
    )
    write(tmp_path / "creds" / "CSVBRIDGE_TOKEN", emu.token + "\n")
    env = {
        **CLEAN,
        "CSVBRIDGE_CONFIG": str(config),
        "CREDENTIALS_DIRECTORY": str(tmp_path / "creds"),
        "STATE_DIRECTORY": str(tmp_path / "state"),
    }
    done = cli("run", env=env, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert (drop / "done" / "orders.csv").exists()
    assert (tmp_path / "state" / "ledger.sqlite").exists()
    assert not (tmp_path / "etc" / "csvbridge-state").exists()
    assert emu.token not in done.stderr
