"""`csvbridge config show`: the effective settings, secrets masked, each with its origin.

Why here and not in the CLI: the masking is the point (the output is pasted into tickets),
and it must be testable without parsing what a terminal shows.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel, SecretStr

from csvbridge.config import LoadedSettings, load_settings_with_origins
from csvbridge.redaction import MASK, redact


@dataclass(frozen=True)
class ShownSetting:
    key: str  # dotted: api.timeout_seconds, sources.0.url
    value: Any  # JSON-able; secrets are MASK
    origin: str  # default / file c.yaml:12 / env VAR / secret file PATH / command line


@dataclass(frozen=True)
class ShownSettings:
    config_file: str | None
    default_state_dir: str
    settings: list[ShownSetting]
    unknown: list[str]  # variables or secret files that name no setting

    def as_json(self) -> dict[str, Any]:
        return asdict(self)

    def as_text(self) -> str:
        width = max((len(s.key) for s in self.settings), default=0)
        lines = [f"# config file: {self.config_file or '(none)'}"]
        lines.append(f"# default state folder: {self.default_state_dir}")
        lines += [f"# ignored: {u}" for u in self.unknown]
        for s in self.settings:
            lines.append(f"{s.key:<{width}} = {_text(s.value)}  # {s.origin}")
        return "\n".join(lines) + "\n"


def show_settings(
    path: str | Path | None = None, env: dict[str, str] | None = None
) -> ShownSettings:
    """Load as `run` would, then list every value with secrets masked."""
    loaded = load_settings_with_origins(path, env)
    return describe(loaded)


def describe(loaded: LoadedSettings) -> ShownSettings:
    rows = [
        ShownSetting(key, value, loaded.origin(key)) for key, value in _walk(loaded.settings, "")
    ]
    state = loaded.state_dir
    return ShownSettings(
        str(loaded.config_file) if loaded.config_file else None,
        f"{state.path} ({state.why})",
        rows,
        list(loaded.unknown),
    )


def _walk(model: BaseModel, prefix: str) -> list[tuple[str, Any]]:
    out: list[tuple[str, Any]] = []
    for name in type(model).model_fields:
        value = getattr(model, name)
        key = prefix + name
        if isinstance(value, BaseModel):
            out += _walk(value, key + ".")
        elif isinstance(value, list) and value and all(isinstance(v, BaseModel) for v in value):
            for i, item in enumerate(value):
                out += _walk(item, f"{key}.{i}.")
        else:
            out.append((key, _masked(value)))
    return out


def _masked(value: Any) -> Any:
    """A JSON-able value with nothing secret: SecretStr fields, registered secrets inside
    other text, and a password written into a URL."""
    if isinstance(value, SecretStr):
        return MASK if value.get_secret_value() else None
    if isinstance(value, Path):
        value = str(value)
    if isinstance(value, str):
        return redact(_url_without_password(value))
    if isinstance(value, (list, tuple)):
        return [_masked(v) for v in value]
    return value


def _url_without_password(text: str) -> str:
    """``scheme://user:SECRET@host`` -> ``scheme://user:**********@host``.  Not a URL
    parser (the filesystem registry is the one, and refuses such a URL when it opens
    it): a mask for what `config show` prints before that."""
    return _URL_PASSWORD.sub(lambda m: f"{m.group(1)}{MASK}@", text)


_URL_PASSWORD = re.compile(r"(://[^/@:\s]*:)[^@/\s]*@")


def _text(value: Any) -> str:
    """Plain where plain reads well, JSON where it must (null, true, "", lists)."""
    if isinstance(value, str) and value and value.strip() == value:
        return value
    return json.dumps(value, ensure_ascii=False)
