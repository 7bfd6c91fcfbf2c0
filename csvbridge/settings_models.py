"""The settings models: every section of a run's configuration, validated by pydantic.

Kept apart from the loading (`csvbridge.config`, which re-exports every name here) so
the shape of the settings reads on its own.  Secrets are `SecretStr` so that they print
as ``**********`` in logs, reprs and reports.  See ``config.example.yaml`` for every key.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationInfo,
    field_validator,
    model_validator,
)

from csvbridge.drops.ftpserver_settings import FtpDropSettings  # not the server: no pyftpdlib
from csvbridge.read.limits import DEFAULT_LIMITS as _LIMITS
from csvbridge.state_dir import default_state_dir

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


class _Endpoint(_Section):
    """What the bulk API and the tracking API settings share: a base URL and a site."""

    @field_validator("base_url", check_fields=False)
    @classmethod
    def _strip_slash(cls, v: str) -> str:
        return v.rstrip("/")

    @field_validator("site_id", mode="before", check_fields=False)
    @classmethod
    def _site_id_as_text(cls, v: object) -> object:
        """`site_id: 1234` unquoted in YAML is a number: it is still the site's id."""
        return str(v) if isinstance(v, int) and not isinstance(v, bool) else v


class ApiSettings(_Endpoint):
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

    _strip_token = field_validator("token", mode="before")(_strip_secret)


# The tracking API's documented limits: 32 KB per event, 500 KB per batch request.  "KB"
# is not defined: we pack to the smaller reading (1000 bytes) so either reading holds.
MAX_EVENT_BYTES = 32_000
MAX_BATCH_BYTES = 500_000


class EventsSettings(_Endpoint):
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

    @field_validator("token", mode="before")
    @classmethod
    def _token(cls, v: object) -> object:
        """Stripped like every secret; ``null`` (the sink unused) is no key."""
        return "" if v is None else _strip_secret(v)


class ConvertSettings(_Section):
    """How CSV rows become conversions."""

    mapping: Path | None = None
    preset: str | None = None  # a shipped mapping (csvbridge mapping show NAME)
    strict: bool = False
    conflict: Literal["reject", "first", "last"] = "reject"
    encoding: str | None = None  # None: detect (UTF-8 with/without BOM, then cp1252)
    delimiter: str | None = None  # None: detect among , ; tab |
    decimal_comma: bool | None = None  # None: assume it in ;-delimited files only
    sheet: str | None = None  # an Excel workbook's sheet to read (None: the first)
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
    include: list[str] = ["*.csv", "*.csv.gz", "*.xlsx"]
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
        from csvbridge.filesystems.registry import protocol_of  # it imports csvbridge.config

        scheme = protocol_of(self.url)
        if scheme.startswith("commercehq") and not (self.api_key and self.api_password):
            raise ValueError("a Commerce HQ source needs api_key and api_password")
        if scheme == "ftpserver" and self.ftpserver is None:
            raise ValueError("an ftpserver:// source needs an `ftpserver:` section (users...)")
        return self


class StateSettings(_Section):
    """What csvbridge remembers (ledger, work files, pass lock).  An unset path lives in
    `dir`; an unset `dir` is the system's state folder (`csvbridge.state_dir`:
    ``$STATE_DIRECTORY``, ``/var/lib/csvbridge`` for root, else the XDG state folder),
    never beside a config that may sit in read-only ``/etc``."""

    dir: Path | None = None
    # unset: <dir>/ledger.sqlite; or postgresql://user@host:port/db shared by replicas
    ledger: Path | str
    work_dir: Path  # unset: <dir>/work
    lock_file: Path  # unset: <dir>/csvbridge.lock
    ledger_password: SecretStr | None = None  # or CSVBRIDGE_LEDGER_PASSWORD, PGPASSWORD
    retention_days: float | None = Field(default=None, gt=0)  # prune finished files' ids
    lease_seconds: float = Field(default=30.0, ge=1, le=3600)  # replica heartbeat lease

    _strip_ledger_password = field_validator("ledger_password", mode="before")(_strip_secret)

    @field_validator("ledger", mode="before")
    @classmethod
    def _ledger_target(cls, v: Any) -> Any:
        """A ``postgresql://`` URL stays a string (a Path would fold its ``//``)."""
        if isinstance(v, str) and v.lower().startswith(("postgresql://", "postgres://")):
            return v
        return Path(v) if isinstance(v, str) else v

    @model_validator(mode="before")
    @classmethod
    def _in_state_dir(cls, data: Any, info: ValidationInfo) -> Any:
        """Fill unset paths; the loader passes its environment (and euid) as context."""
        if not isinstance(data, dict):
            return data
        data = dict(data)
        missing = [k for k in STATE_FILES if data.get(k) is None]
        if missing:
            folder = data.get("dir")
            if folder is None:
                ctx = info.context or {}
                folder = default_state_dir(ctx.get("env"), ctx.get("euid")).path
            for k in missing:
                data[k] = Path(folder) / STATE_FILES[k]
        return data


STATE_FILES = {"ledger": "ledger.sqlite", "work_dir": "work", "lock_file": "csvbridge.lock"}


class LogSettings(_Section):
    format: Literal["text", "json"] = "text"
    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    # off a terminal, a progress line (file, rows, objects, rate, ETA) this often
    progress_seconds: float = Field(10.0, gt=0)


class MetricsSettings(_Section):
    port: int | None = None  # serve /healthz and /metrics when set
    host: str = "127.0.0.1"
    # `csvbridge run` writes its metrics here for node_exporter's textfile collector
    # (e.g. /var/lib/node_exporter/textfile_collector/csvbridge.prom)
    textfile: Path | None = None


class Settings(_Section):
    sinks: list[SinkName] = ["api"]  # for `csvbridge send`; each source has its own
    # sources handled at once (each keeps its own files in order, oldest first)
    parallel_sources: int = Field(4, ge=1, le=64)
    api: ApiSettings = ApiSettings()
    convert: ConvertSettings = ConvertSettings()
    feed: FeedSettings = FeedSettings()
    events: EventsSettings = EventsSettings()
    sources: list[SourceSettings] = []
    state: StateSettings = Field(default_factory=StateSettings)  # computed per load
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
