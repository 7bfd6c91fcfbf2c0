"""The structural rules of an object, read off its pydantic model, for the CSV fold.

The models in `csvbridge.schema.models` say which fields are required, which open object
must not be empty (``minProperties``), which list holds the items and how many it may
hold (``min_length``/``max_length``), which member of an item is unique (`UniqueBy`) and
which required column may be left out (`FillFrom`).  The fold does not restate any of
this: it compiles a `Structure` from the model, so changing a requirement or a bound on
the model changes what the CSV path checks too.  `classify` says which documented field
(and which `FieldRule`) a column's dot path fills.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, get_args, get_origin

from annotated_types import MaxLen, MinLen
from pydantic import BaseModel

from csvbridge.schema.models import (
    READ_ONLY_CONVERSION_FIELDS,
    Conversion,
    FieldRule,
    FillFrom,
    Product,
    UniqueBy,
    _unwrap,
    field_rules,
)
from csvbridge.schema.template import HEADER_ALIASES

CUSTOM_RULE = FieldRule("object")
USER_EXTRA_RULE = FieldRule("text", min_len=1)
# dot paths deeper than this are refused: nothing documented is deeper than 5, and the
# generated row code nests one block per level (Python allows 20)
MAX_PATH_DEPTH = 12


@dataclass(frozen=True, slots=True)
class NonEmpty:
    """An object that must have at least one property (``user``); `example` names one."""

    path: str
    example: str


@dataclass(frozen=True)
class Structure:
    """What one object needs besides valid cells, derived from its model."""

    kind: str  # "conversions" or "products"
    rules: dict[str, FieldRule]  # every documented scalar leaf
    required: tuple[str, ...]  # required scalar leaves, in declaration order
    non_empty: tuple[NonEmpty, ...] = ()
    items: str | None = None  # the path of the list of item objects
    min_items: int = 0
    max_items: int | None = None
    item_key: str | None = None  # member unique within the list ("id")
    fill_from: dict[str, str] = field(default_factory=dict)  # path -> path it may copy
    read_only: tuple[str, ...] = ()
    custom_prefixes: tuple[str, ...] = ()  # paths under which any key is a custom value
    open_prefixes: tuple[str, ...] = ()  # open objects (user.*): any non-empty key

    @property
    def item_prefix(self) -> str:
        return self.items + "." if self.items else ""

    def classify(self, path: str) -> tuple[FieldRule | None, str | None]:
        """(rule, reason-if-ignored) for a dot path."""
        rule = self.rules.get(path)
        if rule is not None and rule.kind == "object":
            # a whole custom object in one cell would be sent as a string
            return None, f"an object: give each key its own column ({path}.<key>)"
        if path in self.read_only:
            return None, "read-only at conversion level: the platform computes it"
        if rule is not None:
            return rule, None
        for prefix in self.custom_prefixes:
            if path.startswith(prefix) and len(path) > len(prefix):
                return CUSTOM_RULE, None
        for prefix in self.open_prefixes:
            if path.startswith(prefix) and len(path) > len(prefix):
                return USER_EXTRA_RULE, None
        what = "Product" if self.kind == "products" else "conversion"
        return None, f"not a documented {what} property"


def structure_of(model: type[BaseModel], kind: str) -> Structure:
    """Walk `model` and collect its structural rules (see the module docstring)."""
    required: list[str] = []
    non_empty: list[NonEmpty] = []
    fill: dict[str, str] = {}
    custom: list[str] = []
    opened: list[str] = []
    items: dict[str, Any] = {}

    def walk(m: type[BaseModel], prefix: str, needed: bool) -> None:
        for name, info in m.model_fields.items():
            path = prefix + name
            bare, rule = _unwrap(info.annotation)
            rule = next((x for x in info.metadata if isinstance(x, FieldRule)), rule)
            req = needed and info.is_required()
            meta = list(info.metadata) + _annotated_metadata(info.annotation)
            if rule is not None and rule.kind == "object":
                custom.append(path + ".")
            filled = next((x for x in meta if isinstance(x, FillFrom)), None)
            if filled is not None:
                fill[path] = prefix + filled.path
            if get_origin(bare) is list:
                inner, _ = _unwrap(get_args(bare)[0])
                if isinstance(inner, type) and issubclass(inner, BaseModel):
                    if items:
                        raise TypeError(f"{path}: one list of item objects is supported")
                    unique = next((x for x in meta if isinstance(x, UniqueBy)), None)
                    items.update(
                        path=path,
                        min=max((x.min_length for x in meta if isinstance(x, MinLen)), default=0),
                        max=min(
                            (x.max_length for x in meta if isinstance(x, MaxLen)), default=None
                        ),
                        key=unique.member if unique else None,
                    )
                    walk(inner, path + ".", req)
                    continue
            if isinstance(bare, type) and issubclass(bare, BaseModel):
                extra = bare.model_config.get("json_schema_extra") or {}
                if bare.model_config.get("extra") == "allow":
                    opened.append(path + ".")
                if req and isinstance(extra, dict) and extra.get("minProperties"):
                    if prefix:
                        raise TypeError(f"{path}: minProperties is supported at top level only")
                    non_empty.append(NonEmpty(path, next(iter(bare.model_fields), "")))
                walk(bare, path + ".", req)
                continue
            if req:
                required.append(path)

    walk(model, "", True)
    return Structure(
        kind=kind,
        rules=field_rules(model),
        required=tuple(required),
        non_empty=tuple(non_empty),
        items=items.get("path"),
        min_items=items.get("min", 0),
        max_items=items.get("max"),
        item_key=items.get("key"),
        fill_from=fill,
        read_only=READ_ONLY_CONVERSION_FIELDS if kind == "conversions" else (),
        custom_prefixes=tuple(custom),
        open_prefixes=tuple(opened),
    )


def _annotated_metadata(annotation: Any) -> list[Any]:
    """Metadata of every Annotated layer inside Optional[...] (pydantic keeps only the
    outermost layer's on the FieldInfo)."""
    out: list[Any] = []
    while True:
        origin = get_origin(annotation)
        if origin is None:
            return out
        args = get_args(annotation)
        if hasattr(annotation, "__metadata__"):
            out.extend(annotation.__metadata__)
            annotation = args[0]
        elif type(None) in args:
            annotation = next(a for a in args if a is not type(None))
        else:
            return out


CONVERSION_STRUCTURE = structure_of(Conversion, "conversions")
PRODUCT_STRUCTURE = structure_of(Product, "products")
STRUCTURES = {"conversions": CONVERSION_STRUCTURE, "products": PRODUCT_STRUCTURE}


def normalize_header(name: str) -> str:
    """The dot path a documented header cell names (case-insensitive, with aliases)."""
    key = name.strip().lower()
    return HEADER_ALIASES.get(key, key)


def classify(path: str, kind: str) -> tuple[str, FieldRule | None, str | None]:
    """(path, rule, reason-if-ignored) for a documented dot path of `kind` objects."""
    rule, reason = STRUCTURES[kind].classify(path)
    return path, rule, reason
