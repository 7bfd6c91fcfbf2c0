"""Where settings come from: the layers under `csvbridge.config.load_settings`.

Precedence, lowest first: defaults < the YAML file < secret files < the environment < the
command line.  Each layer is a nested dict read on its own and merged here, so that every
value keeps where it came from (`csvbridge config show` prints it).

Why not `pydantic_settings.BaseSettings` whole: its merge replaces a YAML list of
sources by the environment's ``{"0": {...}}`` and forgets origins.  Its sources still do
the parsing: `_EnvLayer` is pydantic-settings' `EnvSettingsSource` (prefix, ``__``
nesting, case, JSON for lists), taught list indexes (``CSVBRIDGE_SOURCES__0__URL``).

The environment scheme: ``CSVBRIDGE_<KEY>`` with ``__`` between nested keys and list
indexes (``CSVBRIDGE_API__TIMEOUT_SECONDS=30``, ``CSVBRIDGE_SOURCES__0__URL=...``,
``CSVBRIDGE_SINKS='["api","feed"]'``, ``null`` for none).  A secret file is named like
the variable and holds its value (``$CREDENTIALS_DIRECTORY/CSVBRIDGE_API__TOKEN``).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, get_args, get_origin

import yaml
from pydantic.fields import FieldInfo
from pydantic_settings import EnvSettingsSource, SettingsError

from csvbridge.errors import ConfigError

log = logging.getLogger(__name__)

PREFIX = "CSVBRIDGE_"
DELIMITER = "__"
CONFIG_VAR = "CSVBRIDGE_CONFIG"  # names the YAML file when --config is not given
SECRETS_DIR_VAR = "CSVBRIDGE_SECRETS_DIR"  # a folder of secret files (e.g. /run/secrets)
CREDENTIALS_VAR = "CREDENTIALS_DIRECTORY"  # systemd's LoadCredential= folder
MAX_SECRET_FILE_BYTES = 64 * 1024

Key = tuple[str | int, ...]
_MISSING: Any = object()


def dotted(key: Key) -> str:
    return ".".join(str(k) for k in key)


def env_name(key: Key) -> str:
    """The variable that sets `key`: ``("api", "timeout_seconds")`` ->
    ``CSVBRIDGE_API__TIMEOUT_SECONDS``."""
    return PREFIX + DELIMITER.join(str(k).upper() for k in key)


@dataclass
class Layered:
    """A merged raw tree and where each leaf came from (dotted key tuples)."""

    data: dict[str, Any] = field(default_factory=dict)
    origins: dict[Key, str] = field(default_factory=dict)
    unknown: list[str] = field(default_factory=list)  # CSVBRIDGE_* names naming no key

    def merge(self, over: Mapping[str, Any], origin: str | Mapping[Key, str]) -> None:
        """Lay `over` on top; `origin` labels its leaves (one label, or one per leaf)."""
        self.data = _merge(self.data, dict(over), (), self.origins, origin)


def _is_index_map(value: Any) -> bool:
    return isinstance(value, dict) and bool(value) and all(str(k).isdigit() for k in value)


def _label(origin: str | Mapping[Key, str], key: Key) -> str:
    if isinstance(origin, str):
        return origin
    for n in range(len(key), -1, -1):  # the closest labelled ancestor
        if key[:n] in origin:
            return origin[key[:n]]
    return "?"


def _merge(
    base: Any, over: Any, key: Key, origins: dict[Key, str], origin: str | Mapping[Key, str]
) -> Any:
    if isinstance(over, dict) and not _is_index_map(over) and over:
        out = dict(base) if isinstance(base, dict) else {}
        if not isinstance(base, dict) and base is not _MISSING:
            _forget(origins, key)
        for k, v in over.items():
            out[k] = _merge(out.get(k, _MISSING), v, (*key, k), origins, origin)
        return out
    if _is_index_map(over) and (isinstance(base, list) or base is _MISSING or base is None):
        items = list(base) if isinstance(base, list) else []
        for k in sorted(over, key=int):
            i = int(k)
            if i > len(items):
                raise ConfigError(
                    f"{dotted((*key, i))} ({_label(origin, (*key, k))}): index {i} leaves a gap; "
                    f"{dotted(key) or 'the list'} has {len(items)} item(s), number them from 0"
                )
            old = items[i] if i < len(items) else _MISSING
            items[i : i + 1] = [_merge(old, over[k], (*key, i), origins, origin)]
        return items
    _forget(origins, key)
    for leaf in _leaves(over, key):
        origins[leaf] = _label(origin, leaf)
    return over


def _forget(origins: dict[Key, str], key: Key) -> None:
    for k in [k for k in origins if k[: len(key)] == key]:
        del origins[k]


def _leaves(value: Any, key: Key) -> Iterator[Key]:
    if isinstance(value, dict) and value:
        for k, v in value.items():
            yield from _leaves(v, (*key, k))
    elif isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
        for i, v in enumerate(value):
            yield from _leaves(v, (*key, i))
    else:
        yield key


# -- the YAML file -------------------------------------------------------------------

_ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


def read_yaml(path: Path, lookup: Mapping[str, str]) -> tuple[dict[str, Any], dict[Key, str]]:
    """The file as a dict with ``${VAR}`` expanded from `lookup`, and each value's
    ``file:line`` (and the variable it came through)."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read config file: {exc.strerror}", file=str(path)) from None
    except UnicodeDecodeError:
        raise ConfigError("config file is not UTF-8 text", file=str(path)) from None
    try:
        loader = yaml.SafeLoader(text)
        try:
            node = loader.get_single_node()
            raw = loader.construct_document(node) if node is not None else {}
        finally:
            loader.dispose()
    except yaml.YAMLError as exc:
        raise ConfigError(
            f"config file is not valid YAML: {_yaml_problem(exc)}", file=str(path)
        ) from None
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError("config file must be a YAML mapping", file=str(path))
    lines: dict[Key, int] = {}
    if node is not None:
        _node_lines(node, (), lines)
    origins: dict[Key, str] = {}
    expanded = _expand(raw, (), lookup, origins, path)
    for leaf in _leaves(expanded, ()):
        where = next((lines[leaf[:n]] for n in range(len(leaf), 0, -1) if leaf[:n] in lines), None)
        label = f"file {path}:{where}" if where else f"file {path}"
        origins[leaf] = label + origins.get(leaf, "")
    return expanded, origins


def _node_lines(node: yaml.Node, key: Key, lines: dict[Key, int]) -> None:
    if isinstance(node, yaml.MappingNode):
        for k, v in node.value:
            if isinstance(k, yaml.ScalarNode):
                lines[(*key, k.value)] = v.start_mark.line + 1
                _node_lines(v, (*key, k.value), lines)
    elif isinstance(node, yaml.SequenceNode):
        for i, v in enumerate(node.value):
            lines[(*key, i)] = v.start_mark.line + 1
            _node_lines(v, (*key, i), lines)


def _expand(
    value: Any, key: Key, lookup: Mapping[str, str], via: dict[Key, str], path: Path
) -> Any:
    if isinstance(value, str):
        names: list[str] = []

        def sub(m: re.Match[str]) -> str:
            name = m.group(1)
            if name not in lookup:
                raise ConfigError(
                    f"environment variable {name} is referenced but not set "
                    f"(at {dotted(key)}; a variable or a secret file of that name)",
                    file=str(path),
                )
            names.append(name)
            return lookup[name]

        out = _ENV_REF.sub(sub, value)
        if names:
            via[key] = " via " + ", ".join(f"${{{n}}}" for n in names)
        return out
    if isinstance(value, dict):
        return {k: _expand(v, (*key, k), lookup, via, path) for k, v in value.items()}
    if isinstance(value, list):
        return [_expand(v, (*key, i), lookup, via, path) for i, v in enumerate(value)]
    return value


def _yaml_problem(exc: yaml.YAMLError) -> str:
    """What is wrong and where, *without* the offending line: PyYAML's own message quotes
    the line, which may be the one holding a password or token."""
    if not isinstance(exc, yaml.MarkedYAMLError):
        return type(exc).__name__
    mark = exc.problem_mark or exc.context_mark
    where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else "unknown place"
    what = "; ".join(x for x in (exc.context, exc.problem) if x) or "syntax error"
    return f"{what} at {where}"


# -- variables: the environment, and secret files named like variables ----------------


class _EnvLayer(EnvSettingsSource):
    """pydantic-settings' environment parser over a given mapping, with list indexes."""

    def __init__(self, model: type, variables: Mapping[str, str]) -> None:
        self._variables = {k.lower(): v for k, v in variables.items()}
        super().__init__(
            model,  # type: ignore[arg-type]  # only its fields and config are read
            case_sensitive=False,
            env_prefix=PREFIX,
            env_nested_delimiter=DELIMITER,
            env_ignore_empty=True,  # `X=` (compose's ${X:-}) is unset, not ""
        )

    def _load_env_vars(self) -> Mapping[str, str | None]:
        return self._variables

    def next_field(self, field: Any, key: str, case_sensitive: bool | None = None) -> Any:
        annotation = field.annotation if isinstance(field, FieldInfo) else field
        if key.isdigit() and get_origin(annotation) is list:
            return get_args(annotation)[0]  # SOURCES__0__...: the item's model
        return super().next_field(field, key, case_sensitive)


def variables_layer(
    model: type,
    variables: Mapping[str, str],
    label: Mapping[str, str],
    aliases: Mapping[str, tuple[str, str]],
    into: Layered,
) -> None:
    """Lay every ``CSVBRIDGE_*`` variable of `variables` onto `into`, one at a time so
    each value is labelled with its own name (``label[name]``).  `aliases` are the short
    historical names (``CSVBRIDGE_TOKEN``); the nested spelling wins over them."""
    ours = {k: v for k, v in variables.items() if k.upper().startswith(PREFIX) and v != ""}
    for name, value in sorted(ours.items()):
        if name.upper() in aliases:
            section, key = aliases[name.upper()]
            into.merge({section: {key: value}}, label[name])
    for name, value in sorted(ours.items()):
        upper = name.upper()
        if upper in aliases or upper in (CONFIG_VAR, SECRETS_DIR_VAR):
            continue
        try:
            tree = _EnvLayer(model, {name: value})()
        except SettingsError:
            raise ConfigError(
                f"{label[name]}: not valid JSON (a list is written "
                f'\'["a", "b"]\', a section \'{{"key": "value"}}\')'
            ) from None
        if not tree:
            into.unknown.append(f"{label[name]}: names no setting")
            log.warning("%s names no setting (ignored)", label[name])
            continue
        into.merge(_nulls(tree), label[name])


def _nulls(value: Any) -> Any:
    """``null`` in a variable is None (``CSVBRIDGE_METRICS__PORT=null``)."""
    if isinstance(value, dict):
        return {k: _nulls(v) for k, v in value.items()}
    return None if value == "null" else value


def secret_files(env: Mapping[str, str]) -> tuple[dict[str, str], dict[str, str]]:
    """Values from files named like variables, and each one's label.  Folders:
    ``$CSVBRIDGE_SECRETS_DIR`` (Docker/Kubernetes secrets), then ``$CREDENTIALS_DIRECTORY``
    (systemd ``LoadCredential=``), which wins.  Values are stripped: ``echo tok > file``
    leaves a newline."""
    values: dict[str, str] = {}
    labels: dict[str, str] = {}
    for var in (SECRETS_DIR_VAR, CREDENTIALS_VAR):
        folder = env.get(var)
        if not folder:
            continue
        root = Path(folder)
        if not root.is_dir():
            raise ConfigError(f"${var} is not a folder: {folder}")
        for entry in sorted(root.iterdir()):
            if entry.name.startswith(".") or not entry.is_file():  # k8s ..data, folders
                continue
            try:
                if entry.stat().st_size > MAX_SECRET_FILE_BYTES:
                    raise ConfigError(f"secret file is too large (over 64 KiB): {entry}")
                text = entry.read_text(encoding="utf-8")
            except OSError as exc:
                raise ConfigError(f"cannot read secret file {entry}: {exc.strerror}") from None
            except UnicodeDecodeError:
                raise ConfigError(f"secret file is not UTF-8 text: {entry}") from None
            values[entry.name] = text.strip()
            labels[entry.name] = f"secret file {entry}"
    return values, labels


# -- paths ----------------------------------------------------------------------------


def resolve_paths(settings: Any, base_of: Callable[[str], Path]) -> Any:
    """Relative paths and local URLs of `settings` made absolute against `base_of(key)`:
    the config file's folder for values the file set, else the working directory."""

    def fix(p: Path | None, key: str) -> Path | None:
        if p is None:
            return None
        p = p.expanduser()
        return p if p.is_absolute() else base_of(key) / p

    settings.convert.mapping = fix(settings.convert.mapping, "convert.mapping")
    settings.metrics.textfile = fix(settings.metrics.textfile, "metrics.textfile")
    state = settings.state
    state.dir = fix(state.dir, "state.dir")
    if isinstance(state.ledger, Path):  # a postgresql:// URL is not a path
        state.ledger = fix(state.ledger, "state.ledger")  # type: ignore[assignment]
    state.work_dir = fix(state.work_dir, "state.work_dir")  # type: ignore[assignment]
    state.lock_file = fix(state.lock_file, "state.lock_file")  # type: ignore[assignment]
    for i, src in enumerate(settings.sources):
        at = f"sources.{i}."
        src.url = _local_url(src.url, base_of(at + "url"))
        src.convert.mapping = fix(src.convert.mapping, at + "convert.mapping")
        src.private_key = fix(src.private_key, at + "private_key")
        src.known_hosts = fix(src.known_hosts, at + "known_hosts")
        src.ca_file = fix(src.ca_file, at + "ca_file")
        if src.feed is not None:  # the source's own feed target (multi-site)
            src.feed.target = _local_url(src.feed.target, base_of(at + "feed.target"))
            src.feed.private_key = fix(src.feed.private_key, at + "feed.private_key")
            src.feed.known_hosts = fix(src.feed.known_hosts, at + "feed.known_hosts")
            src.feed.ca_file = fix(src.feed.ca_file, at + "feed.ca_file")
        if src.ftpserver is not None:
            drop, at = src.ftpserver, at + "ftpserver."
            drop.root = fix(drop.root, at + "root")  # type: ignore[assignment]
            drop.tls_cert = fix(drop.tls_cert, at + "tls_cert")
            drop.tls_key = fix(drop.tls_key, at + "tls_key")
            drop.quarantine_dir = fix(drop.quarantine_dir, at + "quarantine_dir")
    feed = settings.feed
    feed.target = _local_url(feed.target, base_of("feed.target"))
    feed.private_key = fix(feed.private_key, "feed.private_key")
    feed.known_hosts = fix(feed.known_hosts, "feed.known_hosts")
    feed.ca_file = fix(feed.ca_file, "feed.ca_file")
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
