"""Loading the configuration: `load_settings` fills the models from every layer.

Everything a run needs is one `Settings` object; its models live in
`csvbridge.settings_models` and are re-exported here (``from csvbridge.config import
Settings`` keeps working).  Values come from, lowest first:
defaults < the YAML file (``--config`` or ``$CSVBRIDGE_CONFIG``; ``${NAME}`` references
the environment) < secret files (``$CSVBRIDGE_SECRETS_DIR``, systemd's
``$CREDENTIALS_DIRECTORY``) < the environment (``CSVBRIDGE_API__TIMEOUT_SECONDS``,
``CSVBRIDGE_SOURCES__0__URL``, and the short ``CSVBRIDGE_API_URL``, ``_SITE_ID``,
``_TOKEN``, ``_EVENTS_URL``, ``_EVENTS_SITE_ID``, ``_EVENTS_TOKEN``) < the command line.
The layers are read in `csvbridge.config_layers`.  See ``config.example.yaml`` for every
key, documented.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from csvbridge.config_layers import (
    CONFIG_VAR,
    Key,
    Layered,
    dotted,
    read_yaml,
    resolve_paths,
    secret_files,
    variables_layer,
)
from csvbridge.errors import ConfigError
from csvbridge.redaction import register_secret
from csvbridge.settings_models import (
    MAX_BATCH_BYTES,
    MAX_EVENT_BYTES,
    STATE_FILES,
    ApiSettings,
    ConvertSettings,
    Credentials,
    EventsSettings,
    FeedSettings,
    Kind,
    LogSettings,
    MetricsSettings,
    RateLimits,
    Settings,
    SinkName,
    SourceSettings,
    StateSettings,
)
from csvbridge.state_dir import StateDir, default_state_dir

log = logging.getLogger(__name__)

# the models are re-exported: `from csvbridge.config import Settings` keeps working
__all__ = [
    "DEFAULT",
    "ENV_OVERRIDES",
    "LEGACY_STATE",
    "MAX_BATCH_BYTES",
    "MAX_EVENT_BYTES",
    "STATE_FILES",
    "ApiSettings",
    "ConvertSettings",
    "Credentials",
    "EventsSettings",
    "FeedSettings",
    "Kind",
    "LogSettings",
    "MetricsSettings",
    "RateLimits",
    "Settings",
    "SinkName",
    "SourceSettings",
    "StateSettings",
    "LoadedSettings",
    "load_settings",
    "load_settings_with_origins",
    "register_secrets",
]


ENV_OVERRIDES = {  # the short historical names; CSVBRIDGE_API__TOKEN etc. also work
    "CSVBRIDGE_API_URL": ("api", "base_url"),
    "CSVBRIDGE_SITE_ID": ("api", "site_id"),
    "CSVBRIDGE_TOKEN": ("api", "token"),
    "CSVBRIDGE_EVENTS_URL": ("events", "base_url"),
    "CSVBRIDGE_EVENTS_SITE_ID": ("events", "site_id"),
    "CSVBRIDGE_EVENTS_TOKEN": ("events", "token"),
    "CSVBRIDGE_LEDGER_PASSWORD": ("state", "ledger_password"),
}
DEFAULT = "default"


@dataclass
class LoadedSettings:
    """The effective settings and where each value came from (``config show``)."""

    settings: Settings
    origins: dict[str, str]  # dotted key -> "file c.yaml:12", "env VAR", ...; absent: default
    config_file: Path | None
    state_dir: StateDir  # the default state folder and why (used where state.dir is unset)
    unknown: list[str]  # CSVBRIDGE_* variables / secret files that name no setting

    def origin(self, key: str) -> str:
        """Where `key` (dotted) came from: its own origin, else its closest ancestor's."""
        parts = key.split(".")
        for n in range(len(parts), 0, -1):
            if ".".join(parts[:n]) in self.origins:
                return self.origins[".".join(parts[:n])]
        return DEFAULT


def load_settings(
    path: str | Path | None = None,
    env: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> Settings:
    """The effective settings: defaults < YAML < secret files < environment < `overrides`
    (the command line's, dotted keys).  See `load_settings_with_origins`."""
    return load_settings_with_origins(path, env, overrides).settings


def load_settings_with_origins(
    path: str | Path | None = None,
    env: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
    *,
    euid: int | None = None,
) -> LoadedSettings:
    """Read every layer, validate once, and remember where each value came from.

    * the file: `path`, else ``$CSVBRIDGE_CONFIG``, else none; ``${VAR}`` in it is
      taken from the environment, else a secret file of that name;
    * secret files: ``$CSVBRIDGE_SECRETS_DIR``, then systemd's ``$CREDENTIALS_DIRECTORY``
      (a file named like the variable, e.g. ``CSVBRIDGE_API__TOKEN``, holds its value);
    * the environment: ``CSVBRIDGE_API__TIMEOUT_SECONDS``, ``CSVBRIDGE_SOURCES__0__URL``
      (``__`` between keys and list indexes), and the short ``ENV_OVERRIDES`` names.

    Relative paths are taken relative to the config file's folder when the file set them
    (so a config works the same from cron's working directory), else to the working
    directory.  Errors name the key and where it came from, never the value.
    """
    env = dict(os.environ if env is None else env)
    config = Path(path) if path is not None else _config_from(env)
    secrets, secret_labels = secret_files(env)
    for value in secrets.values():
        register_secret(value)  # a file in a secrets folder is a secret, whatever it sets
    layers = Layered()
    if config is not None:
        data, lines = read_yaml(config, {**secrets, **env})
        layers.merge(data, lines)
    variables_layer(Settings, secrets, secret_labels, ENV_OVERRIDES, layers)
    variables_layer(Settings, env, {k: f"env {k}" for k in env}, ENV_OVERRIDES, layers)
    for key, value in (overrides or {}).items():
        layers.merge(_nest(key.split("."), value), "command line")
    _keep_legacy_state(config, layers)
    raw = layers.data
    raw["state"] = raw.get("state") or {}  # validated with this load's env, not os.environ's
    file = str(config) if config else None
    try:
        settings = Settings.model_validate(raw, context={"env": env, "euid": euid})
    except ValidationError as exc:
        raise ConfigError(_describe(exc, layers.origins), file=file) from None
    register_secrets(settings)
    origins = {dotted(k): v for k, v in layers.origins.items()}
    state_dir = default_state_dir(env, euid)
    for key in STATE_FILES:  # unset (or null): in state.dir, else the system's folder
        if raw["state"].get(key) is None:
            dir_set = raw["state"].get("dir") is not None
            origins[f"state.{key}"] = (
                f"{origins['state.dir']} (state.dir)" if dir_set else f"{DEFAULT}: {state_dir.why}"
            )
    cwd = Path.cwd()
    base = config.resolve().parent if config else cwd

    def base_of(key: str) -> Path:
        found = next((origins[k] for k in _ancestors(key) if k in origins), DEFAULT)
        return base if found.startswith("file ") else cwd

    unknown = layers.unknown
    return LoadedSettings(resolve_paths(settings, base_of), origins, config, state_dir, unknown)


LEGACY_STATE = "csvbridge-state"  # the old default: beside the config file


def _keep_legacy_state(config: Path | None, layers: Layered) -> None:
    """An installation from before the state folder moved keeps its ledger (what was
    shipped: losing it would re-send a re-dropped file) until `state.dir` says otherwise."""
    state = layers.data.get("state") or {}
    if config is None or any(state.get(k) is not None for k in ("dir", *STATE_FILES)):
        return
    old = config.resolve().parent / LEGACY_STATE
    if (old / STATE_FILES["ledger"]).exists():
        log.warning("using the state beside the config, %s: set state.dir to keep it", old)
        layers.merge({"state": {"dir": str(old)}}, f"existing {old} (older default)")


def _config_from(env: Mapping[str, str]) -> Path | None:
    value = env.get(CONFIG_VAR, "").strip()
    return Path(value).expanduser() if value else None


def _nest(keys: list[str], value: Any) -> dict[str, Any]:
    return {keys[0]: _nest(keys[1:], value) if len(keys) > 1 else value}


def _ancestors(key: str) -> list[str]:
    parts = key.split(".")
    return [".".join(parts[:n]) for n in range(len(parts), 0, -1)]


def register_secrets(settings: Settings) -> None:
    """Hand every secret of `settings` to the log redactor as soon as it is known, so even
    an error raised before a client is built cannot print one."""
    values = [settings.api.token, settings.feed.password, settings.feed.private_key_passphrase]
    values.append(settings.events.token)
    values.append(settings.state.ledger_password)
    for src in settings.sources:
        values += [src.password, src.private_key_passphrase, src.api_key, src.api_password]
        if src.api is not None:
            values.append(src.api.token)
        if src.feed is not None:
            values += [src.feed.password, src.feed.private_key_passphrase]
    for value in values:
        if value is not None:
            register_secret(value.get_secret_value())


def _describe(exc: ValidationError, origins: Mapping[Key, str]) -> str:
    """Each problem with its key and where the value came from; never the value (it may
    be a secret)."""
    parts = []
    for err in exc.errors():
        loc = tuple(err["loc"])
        origin = next(
            (origins[loc[:n]] for n in range(len(loc), 0, -1) if loc[:n] in origins), DEFAULT
        )
        parts.append(f"{dotted(loc)} ({origin}): {err['msg']}")
    return "invalid configuration: " + "; ".join(parts)
