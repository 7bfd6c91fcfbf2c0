"""Presets: mappings shipped with csvbridge for the common platforms' standard exports.

Each preset is a YAML file in ``csvbridge/data/presets/`` whose header comment names
the published column layout it follows.  Use one as ``--preset NAME`` or
``convert.preset: NAME``, build on one with ``base: NAME`` in your own mapping, or
write one out to edit with ``csvbridge mapping show NAME``.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from csvbridge.errors import ConfigError
from csvbridge.read.mapping.language import suggest
from csvbridge.read.mapping.rules import Mapping, parse_mapping


def _folder() -> Path:
    return Path(str(resources.files("csvbridge") / "data" / "presets"))


def preset_names() -> list[str]:
    """The shipped presets, by name."""
    return sorted(p.stem for p in _folder().glob("*.yaml"))


def preset_path(name: str) -> Path:
    """The file of preset `name`; an unknown name is a `ConfigError` with a suggestion."""
    key = name.strip().lower().replace(" ", "").replace("-", "").replace("_", "")
    aliases = {"adobecommerce": "magento", "magento2": "magento", "woo": "woocommerce"}
    key = aliases.get(key, key)
    path = _folder() / f"{key}.yaml"
    if not path.is_file():
        names = preset_names()
        raise ConfigError(
            f"no preset named {name!r}" + suggest(name, names) + f" (presets: {', '.join(names)})"
        )
    return path


def preset_text(name: str) -> str:
    """The preset as written, comments included (what `mapping show` prints)."""
    return preset_path(name).read_text(encoding="utf-8")


def preset_data(name: str) -> dict[str, Any]:
    path = preset_path(name)
    data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    if data.get("base"):
        raise ConfigError("a preset cannot itself have a base", file=str(path))
    return data


def load_preset(name: str) -> Mapping:
    """The preset as a checked `Mapping`."""
    return parse_mapping({"base": name}, f"preset {name}")


__all__ = ["load_preset", "preset_data", "preset_names", "preset_path", "preset_text"]
