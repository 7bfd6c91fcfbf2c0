"""Typed configuration: YAML file, then environment overrides.

Everything a run needs is one `Settings` object.  Secrets are `SecretStr` so that they
print as ``**********`` in logs, reprs and reports.  Values in the YAML may reference the
environment as ``${NAME}`` (``password: ${FTP_PASSWORD}``), and three variables override
the API settings directly: ``CSVBRIDGE_API_URL``, ``CSVBRIDGE_SITE_ID``,
``CSVBRIDGE_TOKEN``.  See ``config.example.yaml`` for every key, documented.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator

from csvbridge.errors import ConfigError
from csvbridge.read.limits import DEFAULT_LIMITS as _LIMITS

Kind = Literal["conversions", "products"]
SinkName = Literal["api", "feed"]


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class RateLimits(_Section):
    """The documented limits of the bulk API (all three hold at once)."""

    requests_per_second: float = 30
    concurrent_connections: int = 30
    objects_per_second: float = 30


class ApiSettings(_Section):
    base_url: str = "https://api.commander1.com"
    site_id: str = ""
    token: SecretStr = SecretStr("")
    overwrite: bool = False
    max_objects_per_request: int = Field(90, ge=1, le=10_000)
    max_in_flight: int = Field(4, ge=1, le=30)
    timeout_seconds: float = Field(60, gt=0)
    max_attempts: int = Field(8, ge=1)
    backoff_base_seconds: float = Field(0.5, gt=0)
    backoff_max_seconds: float = Field(60, gt=0)
    limits: RateLimits = RateLimits()

    @field_validator("base_url")
    @classmethod
    def _strip_slash(cls, v: str) -> str:
        return v.rstrip("/")


class ConvertSettings(_Section):
    """How CSV rows become conversions."""

    mapping: Path | None = None
    strict: bool = False
    conflict: Literal["reject", "first", "last"] = "reject"
    encoding: str | None = None  # None: detect (UTF-8 with/without BOM, then cp1252)
    delimiter: str | None = None  # None: detect among , ; tab |
    decimal_comma: bool | None = None  # None: assume it in ;-delimited files only
    workers: int | None = Field(None, ge=1)  # None: one per CPU
    # reader caps (csvbridge.read.limits.ReadLimits; null switches one off): a file
    # past one is refused with an error naming where
    max_cell_chars: int | None = Field(_LIMITS.max_cell_chars, ge=1)
    max_record_bytes: int | None = Field(_LIMITS.max_record_bytes, ge=1)
    max_header_bytes: int | None = Field(_LIMITS.max_header_bytes, ge=1)
    max_columns: int | None = Field(_LIMITS.max_columns, ge=1)
    max_expanded_bytes: int | None = Field(_LIMITS.max_expanded_bytes, ge=1)
    max_gzip_ratio: float | None = Field(_LIMITS.max_gzip_ratio, gt=1)
    gzip_ratio_after_bytes: int = Field(_LIMITS.gzip_ratio_after_bytes, ge=0)


class FeedSettings(_Section):
    """Where and how CSV feeds are written (sink `feed`)."""

    target: str = "file://./feeds"
    filename_template: str = "{kind}_{timestamp}.csv"
    gzip: bool = False
    upload_empty: bool = False
    username: str | None = None
    password: SecretStr | None = None
    private_key: Path | None = None
    private_key_passphrase: SecretStr | None = None
    known_hosts: Path | None = None
    host_key_fingerprint: str | None = None
    allow_unknown_host: bool = False


class SourceSettings(_Section):
    """One drop to watch: a local folder, an FTP/FTPS or an SFTP directory."""

    name: str
    url: str  # file:///srv/drop, ftp://user@host:21/dir, ftps://..., sftp://user@host:22/dir
    kind: Kind = "conversions"
    sinks: list[SinkName] = ["api"]
    username: str | None = None
    password: SecretStr | None = None
    private_key: Path | None = None
    private_key_passphrase: SecretStr | None = None
    known_hosts: Path | None = None
    host_key_fingerprint: str | None = None  # "SHA256:..." as printed by ssh-keygen -l
    allow_unknown_host: bool = False
    passive: bool = True
    timeout_seconds: float = 30
    include: list[str] = ["*.csv", "*.csv.gz"]
    exclude: list[str] = []
    min_age_seconds: float = 10
    stable_polls: int = Field(1, ge=0)  # polls with unchanged size+mtime before taking
    done_marker: bool = False  # require orders.csv.done or orders.done beside the file
    poll_interval_seconds: float = 30
    on_success: Literal["move", "delete"] = "move"
    convert: ConvertSettings = ConvertSettings()


class StateSettings(_Section):
    ledger: Path = Path("csvbridge-state/ledger.sqlite")
    work_dir: Path = Path("csvbridge-state/work")
    lock_file: Path = Path("csvbridge-state/csvbridge.lock")


class LogSettings(_Section):
    format: Literal["text", "json"] = "text"
    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"


class MetricsSettings(_Section):
    port: int | None = None  # serve /healthz and /metrics when set
    host: str = "127.0.0.1"


class Settings(_Section):
    sinks: list[SinkName] = ["api"]  # for `csvbridge send`; each source has its own
    api: ApiSettings = ApiSettings()
    convert: ConvertSettings = ConvertSettings()
    feed: FeedSettings = FeedSettings()
    sources: list[SourceSettings] = []
    state: StateSettings = StateSettings()
    logging: LogSettings = LogSettings()
    metrics: MetricsSettings = MetricsSettings()


_ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")
ENV_OVERRIDES = {
    "CSVBRIDGE_API_URL": ("api", "base_url"),
    "CSVBRIDGE_SITE_ID": ("api", "site_id"),
    "CSVBRIDGE_TOKEN": ("api", "token"),
}


def _expand(value: Any, env: dict[str, str]) -> Any:
    if isinstance(value, str):

        def sub(m: re.Match[str]) -> str:
            if m.group(1) not in env:
                raise ConfigError(f"environment variable {m.group(1)} is referenced but not set")
            return env[m.group(1)]

        return _ENV_REF.sub(sub, value)
    if isinstance(value, dict):
        return {k: _expand(v, env) for k, v in value.items()}
    if isinstance(value, list):
        return [_expand(v, env) for v in value]
    return value


def load_settings(path: str | Path | None = None, env: dict[str, str] | None = None) -> Settings:
    """Read YAML (optional), expand ``${VAR}``, apply env overrides, validate.

    Relative paths inside the file (mapping, ledger, keys) are taken relative to the
    file's folder, so a config works the same from cron's working directory.
    """
    env = dict(os.environ if env is None else env)
    raw: dict[str, Any] = {}
    base = Path.cwd()
    if path is not None:
        p = Path(path)
        try:
            text = p.read_text(encoding="utf-8")
        except OSError as exc:
            raise ConfigError(f"cannot read config file: {exc.strerror}", file=str(p)) from None
        try:
            raw = yaml.safe_load(text) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"config file is not valid YAML: {exc}", file=str(p)) from None
        if not isinstance(raw, dict):
            raise ConfigError("config file must be a YAML mapping", file=str(p))
        base = p.resolve().parent
    raw = _expand(raw, env)
    for var, (section, key) in ENV_OVERRIDES.items():
        if env.get(var):
            raw.setdefault(section, {})[key] = env[var]
    try:
        settings = Settings.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(_describe(exc), file=str(path) if path else None) from None
    return _resolve_paths(settings, base)


def _describe(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors():
        where = ".".join(str(x) for x in err["loc"])
        parts.append(f"{where}: {err['msg']}")
    return "invalid configuration: " + "; ".join(parts)


def _resolve_paths(settings: Settings, base: Path) -> Settings:
    def fix(p: Path | None) -> Path | None:
        return p if p is None or p.is_absolute() else base / p

    settings.convert.mapping = fix(settings.convert.mapping)
    settings.state.ledger = fix(settings.state.ledger)  # type: ignore[assignment]
    settings.state.work_dir = fix(settings.state.work_dir)  # type: ignore[assignment]
    settings.state.lock_file = fix(settings.state.lock_file)  # type: ignore[assignment]
    for src in settings.sources:
        src.convert.mapping = fix(src.convert.mapping)
        src.private_key = fix(src.private_key)
        src.known_hosts = fix(src.known_hosts)
    settings.feed.private_key = fix(settings.feed.private_key)
    settings.feed.known_hosts = fix(settings.feed.known_hosts)
    return settings
