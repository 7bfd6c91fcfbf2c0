"""Typed configuration: YAML file, then environment overrides.

Everything a run needs is one `Settings` object.  Secrets are `SecretStr` so that they
print as ``**********`` in logs, reprs and reports.  Values in the YAML may reference the
environment as ``${NAME}`` (``password: ${FTP_PASSWORD}``), and variables override the
API settings directly: ``CSVBRIDGE_API_URL``, ``CSVBRIDGE_SITE_ID``, ``CSVBRIDGE_TOKEN``
(and the events sink's: ``CSVBRIDGE_EVENTS_URL``, ``_EVENTS_SITE_ID``, ``_EVENTS_TOKEN``).  See ``config.example.yaml`` for every key, documented.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)

from csvbridge.drops.ftpserver import FtpDropSettings
from csvbridge.errors import ConfigError
from csvbridge.read.limits import DEFAULT_LIMITS as _LIMITS
from csvbridge.redaction import register_secret

Kind = Literal["conversions", "products"]


def _strip_secret(value: Any) -> Any:
    """Secrets lose surrounding whitespace: a token pasted from a file or ``echo`` ends in a
    newline, which made requests refuse the header and print the whole token."""
    if isinstance(value, SecretStr):
        value = value.get_secret_value()
    return value.strip() if isinstance(value, str) else value


SinkName = Literal["api", "feed", "events"]


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

    @field_validator("site_id", mode="before")
    @classmethod
    def _site_id_as_text(cls, v: object) -> object:
        """`site_id: 1234` unquoted in YAML is a number: it is still the site's id."""
        return str(v) if isinstance(v, int) and not isinstance(v, bool) else v

    _strip_token = field_validator("token", mode="before")(_strip_secret)


# The tracking API's documented limits: 32 KB per event, 500 KB per batch request.  "KB"
# is not defined: we pack to the smaller reading (1000 bytes) so either reading holds.
MAX_EVENT_BYTES = 32_000
MAX_BATCH_BYTES = 500_000


class EventsSettings(_Section):
    """The ``events`` sink: ``purchase`` events to the HTTP tracking API
    (`csvbridge.sinks.events`)."""

    base_url: str = "https://collect.commander1.com"
    site_id: str = ""
    token: SecretStr = SecretStr("")  # the source key
    batch: bool = True  # POST /events/batch; False: one POST /events per event
    max_event_bytes: int = Field(MAX_EVENT_BYTES, ge=256, le=32 * 1024)
    max_batch_bytes: int = Field(MAX_BATCH_BYTES, ge=1024, le=500 * 1024)
    max_events_per_batch: int = Field(500, ge=1)  # undocumented maximum: stay modest
    requests_per_second: float = Field(100, gt=0, lt=500)  # documented guideline: < 500
    timeout_seconds: float = Field(30, gt=0)
    max_attempts: int = Field(8, ge=1)
    backoff_base_seconds: float = Field(0.5, gt=0)
    backoff_max_seconds: float = Field(60, gt=0)

    @field_validator("base_url")
    @classmethod
    def _strip_slash(cls, v: str) -> str:
        return v.rstrip("/")

    @field_validator("site_id", mode="before")
    @classmethod
    def _site_id_as_text(cls, v: object) -> object:
        return str(v) if isinstance(v, int) and not isinstance(v, bool) else v

    @field_validator("token", mode="before")
    @classmethod
    def _token(cls, v: object) -> object:
        """Stripped like every secret; ``null`` (the sink unused) is no key."""
        return "" if v is None else _strip_secret(v)


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


class Credentials(_Section):
    """How to log in to a drop or a feed target: one section shape for both, so a key
    means the same in each (and the filesystem registry reads them alike)."""

    username: str | None = None
    password: SecretStr | None = None
    private_key: Path | None = None  # SFTP key file (rsa, ecdsa, ed25519)
    private_key_passphrase: SecretStr | None = None
    known_hosts: Path | None = None  # SFTP: OpenSSH known_hosts to check the host key
    host_key_fingerprint: str | None = None  # "SHA256:..." as printed by ssh-keygen -l
    allow_unknown_host: bool = False  # SFTP: never true in production
    ca_file: Path | None = None  # FTPS: a CA (or self-signed certificate) to trust
    implicit_tls: bool = False  # FTPS: TLS from the first byte (port 990)

    _strip_secrets = field_validator("password", "private_key_passphrase", mode="before")(
        _strip_secret
    )


class FeedSettings(Credentials):
    """Where and how CSV feeds are written (sink `feed`)."""

    target: str = "file://./feeds"
    filename_template: str = "{kind}_{timestamp}.csv"
    gzip: bool = False
    upload_empty: bool = False
    # temporary upload name, {name} and {token}; unset: ".{name}.{token}.part", else
    # "{name}.{token}.part" when the server refuses hidden names (pure-ftpd)
    upload_temp_name: str | None = None
    upload_temp_folder: str | None = None  # upload into this folder, then move into place


class SourceSettings(Credentials):
    """One drop to watch: a local folder, an FTP/FTPS or an SFTP directory (or a shop
    API, or csvbridge's own FTP drop)."""

    name: str
    url: str  # file:///srv/drop, ftp://user@host:21/dir, ftps://..., sftp://user@host:22/dir
    kind: Kind = "conversions"
    sinks: list[SinkName] = ["api"]
    passive: bool = True
    timeout_seconds: float = 30
    # FTP: the zone of the server's file times: "auto" measures it with a probe file,
    # "UTC" (the standard), or an IANA name ("Europe/Paris") for vsftpd use_localtime
    server_timezone: str = "auto"
    # a missing local drop folder is an error of the source (a misspelt path must not
    # become an empty folder every pass reports as "0 files") unless this says create it
    create_missing: bool = False
    include: list[str] = ["*.csv", "*.csv.gz"]
    exclude: list[str] = []
    min_age_seconds: float = 10
    stable_polls: int = Field(1, ge=0)  # polls with unchanged size+mtime before taking
    done_marker: bool = False  # require orders.csv.done or orders.done beside the file
    poll_interval_seconds: float = 30
    on_success: Literal["move", "delete"] = "move"
    convert: ConvertSettings = ConvertSettings()
    # Commerce HQ (url: commercehq://STORE_HOST): the API key and password (Basic auth),
    # the store's currency (orders carry none), list page size, and how far each pass
    # re-reads before the previous one (orders stamped before they became visible)
    api_key: SecretStr | None = None
    api_password: SecretStr | None = None
    currency: str = "USD"
    page_size: int = Field(50, ge=1, le=250)
    overlap_seconds: int = Field(300, ge=0)
    # the embedded FTP drop (url: ftpserver://0.0.0.0:2121/): users, TLS, homes...
    ftpserver: FtpDropSettings | None = None
    # this source's own destination (another site or token) and feed target: any key
    # left out is the top-level one's (merged when the settings are validated)
    api: ApiSettings | None = None
    feed: FeedSettings | None = None

    _strip_api_secrets = field_validator("api_key", "api_password", mode="before")(_strip_secret)

    @model_validator(mode="after")
    def _needs_its_section(self) -> SourceSettings:
        """An API source without its credentials, or an FTP drop without its users, is a
        configuration error at load time, not at the first pass."""
        from csvbridge.filesystems.registry import protocol_of  # it imports this module

        scheme = protocol_of(self.url)
        if scheme.startswith("commercehq") and not (self.api_key and self.api_password):
            raise ValueError("a Commerce HQ source needs api_key and api_password")
        if scheme == "ftpserver" and self.ftpserver is None:
            raise ValueError("an ftpserver:// source needs an `ftpserver:` section (users...)")
        return self


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
    # sources handled at once (each keeps its own files in order, oldest first)
    parallel_sources: int = Field(4, ge=1, le=64)
    api: ApiSettings = ApiSettings()
    convert: ConvertSettings = ConvertSettings()
    feed: FeedSettings = FeedSettings()
    events: EventsSettings = EventsSettings()
    sources: list[SourceSettings] = []
    state: StateSettings = StateSettings()
    logging: LogSettings = LogSettings()
    metrics: MetricsSettings = MetricsSettings()

    @model_validator(mode="after")
    def _merge_destinations(self) -> Settings:
        """A source's ``api:`` / ``feed:`` section holds only what differs: every key it
        leaves out is taken from the top-level section (limits key by key)."""
        for src in self.sources:
            if src.api is not None:
                src.api = ApiSettings.model_validate(_merged(self.api, src.api))
            if src.feed is not None:
                src.feed = FeedSettings.model_validate(_merged(self.feed, src.feed))
        return self

    def api_for(self, source: SourceSettings) -> ApiSettings:
        """Where `source` ships: its own ``api:`` section (merged), else the top-level one."""
        return source.api or self.api

    def feed_for(self, source: SourceSettings) -> FeedSettings:
        return source.feed or self.feed

    def for_source(self, source: SourceSettings) -> Settings:
        """These settings as seen by `source`: its destination, feed target and convert."""
        return self.model_copy(
            update={
                "api": self.api_for(source),
                "feed": self.feed_for(source),
                "convert": source.convert,
            }
        )


def _merged(base: BaseModel, override: BaseModel) -> dict[str, Any]:
    """`base`'s values with those `override` was given explicitly on top (nested
    sections key by key), for validating as one section again."""
    out = dict(base)
    for name in override.model_fields_set:
        mine, theirs = getattr(override, name), getattr(base, name)
        if isinstance(mine, BaseModel) and isinstance(theirs, BaseModel):
            out[name] = type(theirs).model_validate(_merged(theirs, mine))
        else:
            out[name] = mine
    return out


_ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")
ENV_OVERRIDES = {
    "CSVBRIDGE_API_URL": ("api", "base_url"),
    "CSVBRIDGE_SITE_ID": ("api", "site_id"),
    "CSVBRIDGE_TOKEN": ("api", "token"),
    "CSVBRIDGE_EVENTS_URL": ("events", "base_url"),
    "CSVBRIDGE_EVENTS_SITE_ID": ("events", "site_id"),
    "CSVBRIDGE_EVENTS_TOKEN": ("events", "token"),
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
            raise ConfigError(
                f"config file is not valid YAML: {_yaml_problem(exc)}", file=str(p)
            ) from None
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
    register_secrets(settings)
    return _resolve_paths(settings, base)


def _yaml_problem(exc: yaml.YAMLError) -> str:
    """What is wrong and where, *without* the offending line: PyYAML's own message quotes
    the line, which may be the one holding a password or token."""
    if not isinstance(exc, yaml.MarkedYAMLError):
        return type(exc).__name__
    mark = exc.problem_mark or exc.context_mark
    where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else "unknown place"
    what = "; ".join(x for x in (exc.context, exc.problem) if x) or "syntax error"
    return f"{what} at {where}"


def register_secrets(settings: Settings) -> None:
    """Hand every secret of `settings` to the log redactor as soon as it is known, so even
    an error raised before a client is built cannot print one."""
    values = [settings.api.token, settings.feed.password, settings.feed.private_key_passphrase]
    values.append(settings.events.token)
    for src in settings.sources:
        values += [src.password, src.private_key_passphrase, src.api_key, src.api_password]
        if src.api is not None:
            values.append(src.api.token)
        if src.feed is not None:
            values += [src.feed.password, src.feed.private_key_passphrase]
    for value in values:
        if value is not None:
            register_secret(value.get_secret_value())


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
        src.url = _local_url(src.url, base)
        src.convert.mapping = fix(src.convert.mapping)
        src.private_key = fix(src.private_key)
        src.known_hosts = fix(src.known_hosts)
        src.ca_file = fix(src.ca_file)
        if src.feed is not None:
            src.feed.target = _local_url(src.feed.target, base)
            src.feed.private_key = fix(src.feed.private_key)
            src.feed.known_hosts = fix(src.feed.known_hosts)
            src.feed.ca_file = fix(src.feed.ca_file)
        if src.ftpserver is not None:
            drop = src.ftpserver
            drop.root = fix(drop.root)  # type: ignore[assignment]
            drop.tls_cert, drop.tls_key = fix(drop.tls_cert), fix(drop.tls_key)
            drop.quarantine_dir = fix(drop.quarantine_dir)
    settings.feed.target = _local_url(settings.feed.target, base)
    settings.feed.private_key = fix(settings.feed.private_key)
    settings.feed.known_hosts = fix(settings.feed.known_hosts)
    settings.feed.ca_file = fix(settings.feed.ca_file)
    return settings


def _local_url(url: str, base: Path) -> str:
    """A relative local location (``drop``, ``./feeds``, ``file://./feeds``) made absolute
    against `base`, the config file's folder, so cron's working directory does not
    matter; absolute paths and other schemes are returned unchanged.  The URL is read by
    the filesystem registry and the local backend's own parser (one parser for URLs)."""
    # imported here: the registry imports this module for its settings types
    from csvbridge.filesystems.local import local_path
    from csvbridge.filesystems.registry import protocol_of

    if protocol_of(url) != "file":
        return url
    is_uri = "://" in url
    path = Path(local_path(url) if is_uri else url).expanduser()
    if path.is_absolute():
        return url if is_uri else str(path)
    resolved = base / path
    return resolved.as_uri() if is_uri else str(resolved)
