"""Settings: the documented example config loads, documents every key with its default,
and the library face exposes what the README says."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, SecretStr

import csvbridge
from csvbridge.config import Settings, SourceSettings, load_settings

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "config.example.yaml"
ENV = {"CSVBRIDGE_SITE_ID": "1234", "CSVBRIDGE_TOKEN": "t0ken-from-env-1234"}


def test_the_example_config_loads() -> None:
    settings = load_settings(EXAMPLE, env=ENV)
    assert settings.api.site_id == "1234"
    assert settings.api.token.get_secret_value() == ENV["CSVBRIDGE_TOKEN"]
    assert settings.sources and settings.sources[0].name


def _keys(model: type[BaseModel], prefix: str = "") -> set[str]:
    out = set()
    for name, field in model.model_fields.items():
        out.add(prefix + name)
        ann = field.annotation
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            out |= _keys(ann, f"{prefix}{name}.")
    return out


def _yaml_keys(value: Any, prefix: str = "") -> set[str]:
    out: set[str] = set()
    if isinstance(value, dict):
        for k, v in value.items():
            out.add(prefix + k)
            out |= _yaml_keys(v, f"{prefix}{k}.")
    elif isinstance(value, list) and value and isinstance(value[0], dict):
        out |= _yaml_keys(value[0], prefix)
    return out


def test_the_example_documents_every_key() -> None:
    raw = yaml.safe_load(EXAMPLE.read_text())
    documented = _yaml_keys(raw)
    expected = _keys(Settings) | {f"sources.{k}" for k in _keys(SourceSettings)}
    # a source's convert section is documented as "same keys as the top-level one"
    expected = {k for k in expected if not k.startswith("sources.convert.")}
    assert expected - documented == set(), "keys missing from config.example.yaml"


def _plain(v: Any) -> Any:
    if isinstance(v, SecretStr):
        return v.get_secret_value() or None
    if isinstance(v, Path):
        return str(v)
    return v


def test_the_example_shows_the_defaults() -> None:
    """"every key, with its default": a value that differs from the model is a lie in the
    documentation (placeholders for secrets and site id aside)."""
    raw = yaml.safe_load(EXAMPLE.read_text())
    defaults = Settings()
    for section in ("api", "convert", "feed", "events", "logging", "metrics"):
        model = getattr(defaults, section)
        for key, value in (raw.get(section) or {}).items():
            if isinstance(value, (dict, list)) or (isinstance(value, str) and "${" in value):
                continue
            default = _plain(getattr(model, key))
            if isinstance(default, str) and isinstance(value, str):
                assert value == default, f"{section}.{key}"
            else:
                assert value == default, f"{section}.{key}: {value!r} != {default!r}"
    # state paths are computed (the system's state folder): documented as null = default
    paths = {k: raw["state"].pop(k) for k in ("dir", "ledger", "work_dir", "lock_file")}
    assert paths == {"dir": None, "ledger": None, "work_dir": None, "lock_file": None}
    for key, value in raw["state"].items():
        default = _plain(getattr(defaults.state, key))
        assert value == default, f"state.{key}: {value!r} != {default!r}"


def test_unquoted_numeric_site_id_is_accepted(tmp_path: Path) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text("api:\n  site_id: 1234\n")
    assert load_settings(cfg, env={}).api.site_id == "1234"


def test_the_library_face_lists_what_it_exports() -> None:
    for name in csvbridge.__all__:
        assert getattr(csvbridge, name) is not None, name
    assert callable(csvbridge.convert_file) and callable(csvbridge.run_once)
    assert issubclass(csvbridge.InputError, csvbridge.CsvBridgeError)
    assert (Path(csvbridge.__file__).parent / "py.typed").exists()
