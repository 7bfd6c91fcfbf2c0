"""The bulk API's answers as the reference documents them: envelopes, wording, grouping.

Kept apart from the emulator's behaviour (limits, faults) so the documented text can be
checked against the reference in one place.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

# Documented details, word for word.
UNKNOWN_TOKEN_DETAIL = (
    "The provided token is unknown. Please contact our support team support@commandersact.com"
)
SERVER_ERROR_DETAIL = (
    "An internal error occurred. Please contact our support team support@commandersact.com"
)
TYPE_WORDS = {
    "float_type": "a number",
    "finite_number": "a finite number",
    "int_type": "an integer",
    "string_type": "a string",
    "bool_type": "a boolean",
    "list_type": "an array",
    "dict_type": "an object",
    "model_type": "an object",
    "model_attributes_type": "an object",
}


def error_body(code: str, detail: str, **top: Any) -> dict[str, Any]:
    """The API's error envelope: extra top-level keys (``description``) come first."""
    return {**top, "errors": [{"code": code, "detail": detail}]}


@dataclass(slots=True)
class Reply:
    status: int
    body: dict[str, Any]
    headers: dict[str, str] = field(default_factory=dict)


@dataclass(slots=True)
class ErrorGroup:
    """One aggregated bulk error: one per (code, property), as the API aggregates them."""

    code: str
    detail: str
    property: str | None
    count: int = 0
    lines: list[int] = field(default_factory=list)
    ids: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        meta: dict[str, Any] = {}
        if self.property is not None:
            meta["property"] = self.property
        meta.update(line_numbers=self.lines, error_count=self.count, ids=self.ids)
        return {"code": self.code, "detail": self.detail, "meta": meta}


def new_group(code: str, prop: str, err: Any) -> ErrorGroup:
    """An error group with the documented wording for its code."""
    if code == "MISSING_REQUIRED_PROPERTY":  # documented without meta.property
        return ErrorGroup(code, f"should have required property '{prop}'\n", None)
    if prop == "(object)":
        return ErrorGroup(code, err["msg"], prop)
    if code == "INVALID_PROPERTY_TYPE":
        words = TYPE_WORDS.get(err["type"], "of the expected type")
        return ErrorGroup(code, f'"{prop}" property is not {words}', prop)
    return ErrorGroup(code, f'"{prop}" property has an invalid format: {err["msg"]}', prop)
