"""Map an export's own columns onto the documented fields (see docs/mapping.md).

Files that already use the documented header format need no mapping.  Other exports
come with a YAML mapping (`rules`), or a shipped preset (`presets`); it is compiled
against a file's header into a row function (`compile`), with Jinja2 sandboxed
expressions (`language`) for computed values.  `check` is the workbench.
"""

from csvbridge.read.mapping.compile import (
    ROLE_PATH,
    TEMPLATE_FIELD,
    RowTransform,
    compile_mapping,
    convert_date,
)
from csvbridge.read.mapping.presets import load_preset, preset_names, preset_path, preset_text
from csvbridge.read.mapping.rules import (
    Mapping,
    MappingOptions,
    Role,
    Rows,
    Rule,
    load_mapping,
    parse_mapping,
)

__all__ = [
    "ROLE_PATH",
    "TEMPLATE_FIELD",
    "Mapping",
    "MappingOptions",
    "Role",
    "RowTransform",
    "Rows",
    "Rule",
    "compile_mapping",
    "convert_date",
    "load_mapping",
    "load_preset",
    "parse_mapping",
    "preset_names",
    "preset_path",
    "preset_text",
]
