"""The documented schema of the bulk API, as pydantic v2 models.

These models are the contract (see ``shared/reference/commandersact-conversions-products-
bulk-api-v2.md``): every length, enumeration, format and requirement lives here once.
Each constrained type also carries a small `FieldRule` in its ``Annotated`` metadata; pydantic
ignores it, and `csvbridge.schema.codecs` compiles it into the per-column validators of the fast
CSV path.  A differential test keeps the two in agreement, so a rule changed here changes
both paths.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, Literal, get_args, get_origin

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictInt,
    StrictStr,
    StringConstraints,
    model_validator,
)

# --------------------------------------------------------------------------- rules


@dataclass(frozen=True, slots=True)
class FieldRule:
    """What one scalar field accepts, in a form both pydantic and the fast path can use."""

    kind: Literal["text", "number", "bool", "date", "list", "object"]
    min_len: int | None = None
    max_len: int | None = None
    pattern: str | None = None
    choices: tuple[str, ...] | None = None
    what: str = ""  # human name of the format, for messages ("ISO-4217 currency code")
    ge: float | None = None  # numeric bounds (kind "number")
    le: float | None = None


@dataclass(frozen=True, slots=True)
class UniqueBy:
    """Metadata on a list of objects: no two of them may share this member's value.

    Checked by the models (`_Strict`) and by the CSV fold (`csvbridge.schema.structure`).
    """

    member: str


@dataclass(frozen=True, slots=True)
class FillFrom:
    """Metadata on a required field: a CSV may leave its column out, and the value is then
    taken from the sibling dot path `path` (the reference: "you can use the product id")."""

    path: str


def text_field(
    min_len: int | None = 1,
    max_len: int | None = None,
    pattern: str | None = None,
    what: str = "",
) -> Any:
    """A text type: pydantic's constraints and the fast path's rule from one call."""
    rule = FieldRule("text", min_len, max_len, pattern, None, what)
    return Annotated[
        StrictStr,
        StringConstraints(min_length=min_len, max_length=max_len, pattern=pattern),
        rule,
    ]


def number_field(ge: float | None = None, le: float | None = None) -> Any:
    """A finite number type, optionally bounded, for pydantic and the fast path at once."""
    return Annotated[
        float,
        Field(strict=True, allow_inf_nan=False, ge=ge, le=le),
        FieldRule("number", ge=ge, le=le),
    ]


def enum_field(*values: str) -> Any:
    """An enumeration of texts, for pydantic and the fast path at once."""
    return Annotated[Literal[values], FieldRule("text", choices=values)]  # type: ignore[valid-type]


# The four accepted ISO-8601 forms ("Date formats" section of the reference).
DATE_RE = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(?:\.\d{3})?(?:Z|[+-]\d{2}:\d{2})$")


class DateProblem(ValueError):
    """A date that is not (and cannot be made) one of the documented forms."""


def normalize_date(value: str) -> str:
    """Return `value` in a documented ISO-8601 form, unchanged when it already is one.

    Other ISO-8601 spellings that carry an offset (a space instead of ``T``, micro-
    seconds, ``+0200``) are rewritten to ``YYYY-MM-DDTHH:MM:SS.mmm±HH:MM``.  A date
    without an offset is refused: guessing a time zone would silently shift revenue
    between days.  (A mapping may set a default time zone; see `csvbridge.read.mapping`.)
    """
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise DateProblem(
            f"{value!r} is not an ISO-8601 date; expected e.g. 2019-04-29T13:47:47.315+02:00"
        ) from None
    if parsed.tzinfo is None:
        raise DateProblem(
            f"{value!r} has no UTC offset; expected e.g. 2019-04-29T13:47:47+02:00 "
            "(a mapping can set a default time zone)"
        )
    if DATE_RE.match(value):
        return value
    return format_date(parsed)


def format_date(parsed: datetime) -> str:
    """An aware datetime in the long documented form, with milliseconds."""
    offset = parsed.utcoffset()
    if offset is not None and offset % timedelta(minutes=1):
        # "+02:00:30" (or a zone's old local mean time) has no documented form: use UTC
        parsed = parsed.astimezone(UTC)
    text = parsed.isoformat(timespec="milliseconds")
    return text[:-6] + "Z" if text.endswith("+00:00") else text


def _check_date(value: str) -> str:
    try:
        return normalize_date(value)
    except DateProblem as exc:
        raise ValueError(str(exc)) from None


Text250 = text_field(1, 250)
Id50 = text_field(1, 50)
Currency = text_field(
    pattern=r"^[A-Z]{3}$", what="ISO-4217 currency code (three upper-case letters)"
)
CountryCode = text_field(pattern=r"^[A-Z]{2}$", what="ISO-3166 alpha-2 country code")
Url = text_field(1, 2048, pattern=r"^https?://\S+$", what="http(s) URL")
IsoDate = Annotated[StrictStr, AfterValidator(_check_date), FieldRule("date", what="ISO-8601 date")]
Number = number_field()
Bool = Annotated[StrictBool, FieldRule("bool")]
TextList = Annotated[list[StrictStr], FieldRule("list")]
Custom = Annotated[dict[str, Any], FieldRule("object")]

ConversionStatus = enum_field(
    "canceled",
    "delivered",
    "in_progress",
    "partially_delivered",
    "partially_returned",
    "partially_shipped",
    "pending_shipment",
    "returned",
    "shipped",
    "pending",
)
PaymentMethod = enum_field(
    "by_bank_transfer_in_advance",
    "by_invoice",
    "card",
    "check_in_advance",
    "cod",
    "coupon",
    "direct_debit",
    "online_payment_system",
    "other",
)
Condition = enum_field("new", "refurbished", "used")
Availability = enum_field("in_stock", "available", "pre_order", "out_of_stock")
Gender = enum_field("male", "female", "unisex")

MAX_ITEMS = 150

# Conversion-level quantities are computed by the platform ("read-only" in the
# reference): csvbridge never sends them.
READ_ONLY_CONVERSION_FIELDS = (
    "original_quantity",
    "cancelled_quantity",
    "returned_quantity",
    "exchanged_quantity",
    "final_quantity",
)


class _Checked(BaseModel):
    """Enforces the structural metadata declared on fields: `UniqueBy` on lists of
    objects, ``minProperties`` (JSON Schema) on an open object's config."""

    @model_validator(mode="after")
    def _structure(self) -> Any:
        least = (self.model_config.get("json_schema_extra") or {}).get("minProperties")  # type: ignore[union-attr]
        if least and len(self.model_dump(exclude_none=True)) < least:
            first = next(iter(type(self).model_fields), "")
            name = type(self).__name__.lower()
            raise ValueError(f"{name} needs at least one property (e.g. {first}) to match on")
        for fname, info in type(self).model_fields.items():
            unique = next((m for m in info.metadata if isinstance(m, UniqueBy)), None)
            if unique is None:
                continue
            seen: set[Any] = set()
            for obj in getattr(self, fname) or ():
                key = getattr(obj, unique.member)
                if key in seen:
                    what = f"{fname.replace('_', ' ').rstrip('s')} {unique.member}"
                    raise ValueError(f"{what} {key!r} appears twice")
                seen.add(key)
        return self


class _Strict(_Checked):
    model_config = ConfigDict(extra="forbid", frozen=True)


# --------------------------------------------------------------------------- models


class Coordinates(_Strict):
    latitude: Number | None = None
    longitude: Number | None = None


class Address(_Strict):
    country: Text250 | None = None
    iso_country_code: CountryCode | None = None
    country_code: Annotated[StrictStr, FieldRule("text")] | None = None
    region: Text250 | None = None
    locality: Text250 | None = None
    postal_code: Text250 | None = None
    recipient: Text250 | None = None
    street_address: Text250 | None = None
    full_address: Text250 | None = None
    label: Text250 | None = None
    coordinates: Coordinates | None = None


class User(_Checked):
    """Properties used to match the user; any extra property is allowed."""

    model_config = ConfigDict(extra="allow", frozen=True, json_schema_extra={"minProperties": 1})

    email: Text250 | None = None
    consent_categories: Annotated[list[StrictStr | StrictInt], FieldRule("list")] | None = None


class Product(_Strict):
    id: Id50
    name: text_field(1, 500) | None = None
    description: text_field(None, 5000) | None = None
    category_1: Text250 | None = None
    category_2: Text250 | None = None
    category_3: Text250 | None = None
    category_4: Text250 | None = None
    category_5: Text250 | None = None
    tags: TextList | None = None
    condition: Condition | None = None
    availability: Availability | None = None
    availability_date: IsoDate | None = None
    expiration_date: IsoDate | None = None
    price: Number | None = None
    sale_price: Number | None = None
    currency: Currency | None = None
    image_link: Url | None = None
    link: Url | None = None
    brand: Text250 | None = None
    width: Number | None = None
    length: Number | None = None
    height: Number | None = None
    weight: Number | None = None
    size: Text250 | None = None
    colors: TextList | None = None
    gender: Gender | None = None
    gtin: Text250 | None = None
    mpn: Text250 | None = None
    custom: Custom | None = None


class ConversionItem(_Strict):
    id: Annotated[text_field(1, None), FillFrom("product.id")]
    original_quantity: Number
    cancelled_quantity: Number | None = None
    returned_quantity: Number | None = None
    exchanged_quantity: Number | None = None
    final_quantity: Number | None = None
    original_amount: Number | None = None
    cancelled_amount: Number | None = None
    returned_amount: Number | None = None
    exchanged_amount: Number | None = None
    final_amount: Number | None = None
    price: Number | None = None
    original_item: Bool | None = None
    custom: Custom | None = None
    product: Product


class Conversion(_Strict):
    id: Id50
    user: User
    type: Text250
    status: ConversionStatus
    created: IsoDate
    updated: IsoDate | None = None
    acknowledged: Bool | None = None
    currency: Currency
    comment: Text250 | None = None
    billing_address: Address | None = None
    contact_address: Address | None = None
    shipping_address: Address | None = None
    shipping_provider: Text250 | None = None
    shipping_tracking_code: Text250 | None = None
    payment_method: PaymentMethod | None = None
    payment_provider: Annotated[StrictStr, FieldRule("text", min_len=1)] | None = None
    original_amount: Number | None = None
    cancelled_amount: Number | None = None
    returned_amount: Number | None = None
    exchanged_amount: Number | None = None
    shipping_amount: Number | None = None
    discount_amount: Number | None = None
    tax_amount: Number | None = None
    final_amount: Number | None = None
    custom: Custom | None = None
    conversion_items: Annotated[
        list[ConversionItem], Field(min_length=1, max_length=MAX_ITEMS), UniqueBy("id")
    ]

    @model_validator(mode="before")
    @classmethod
    def _no_read_only(cls, data: Any) -> Any:
        if isinstance(data, dict):
            sent = [f for f in READ_ONLY_CONVERSION_FIELDS if f in data]
            if sent:
                raise ValueError(
                    f"{', '.join(sent)} are read-only at conversion level (computed by the "
                    "platform); send quantities on conversion_items instead"
                )
        return data


# --------------------------------------------------------------------------- catalogue


def _unwrap(annotation: Any) -> tuple[Any, FieldRule | None]:
    """Strip Optional[...] and Annotated[...]; return the bare type and its FieldRule."""
    rule = None
    while True:
        origin = get_origin(annotation)
        if origin is Annotated:
            args = get_args(annotation)
            rule = next((m for m in args[1:] if isinstance(m, FieldRule)), rule)
            annotation = args[0]
        elif origin is not None and type(None) in get_args(annotation):
            annotation = next(a for a in get_args(annotation) if a is not type(None))
        else:
            return annotation, rule


def field_rules(model: type[BaseModel], prefix: str = "") -> dict[str, FieldRule]:
    """Every scalar leaf of `model` as ``{"dot.path": FieldRule}``, in declaration order.

    Nested models are walked (``billing_address.coordinates.latitude``); lists of models
    (``conversion_items``) are walked with the list's own name as prefix, which is how the
    documented CSV header names item columns.
    """
    rules: dict[str, FieldRule] = {}
    for name, info in model.model_fields.items():
        bare, rule = _unwrap(info.annotation)
        # pydantic moves a top-level Annotated's metadata onto the FieldInfo
        rule = next((m for m in info.metadata if isinstance(m, FieldRule)), rule)
        if get_origin(bare) is list:
            (inner,) = get_args(bare)
            inner, _ = _unwrap(inner)
            if isinstance(inner, type) and issubclass(inner, BaseModel):
                rules.update(field_rules(inner, f"{prefix}{name}."))
                continue
        if isinstance(bare, type) and issubclass(bare, BaseModel):
            rules.update(field_rules(bare, f"{prefix}{name}."))
            continue
        if rule is None:
            raise TypeError(f"{prefix}{name} has no FieldRule")  # a model bug, caught by tests
        rules[prefix + name] = rule
    return rules


def required_paths(model: type[BaseModel], prefix: str = "") -> list[str]:
    """Dot paths of the required fields (objects included) of `model`, recursively."""
    out: list[str] = []
    for name, info in model.model_fields.items():
        if info.is_required():
            out.append(prefix + name)
        bare, _ = _unwrap(info.annotation)
        if get_origin(bare) is list:
            bare, _ = _unwrap(get_args(bare)[0])
        if isinstance(bare, type) and issubclass(bare, BaseModel) and info.is_required():
            out.extend(required_paths(bare, f"{prefix}{name}."))
    return out


# --------------------------------------------------------------------------- error codes

_TYPE_ERRORS = {
    "string_type",
    "float_type",
    "int_type",
    "bool_type",
    "list_type",
    "dict_type",
    "model_type",
    "model_attributes_type",
    "finite_number",
}


def api_error_code(pydantic_error_type: str) -> str:
    """The bulk API's error code for a pydantic error type.

    ``missing`` -> MISSING_REQUIRED_PROPERTY; wrong JSON type -> INVALID_PROPERTY_TYPE;
    everything else (length, pattern, enumeration, date, extra property) ->
    INVALID_PROPERTY_FORMAT, as in the reference's examples.
    """
    if pydantic_error_type == "missing":
        return "MISSING_REQUIRED_PROPERTY"
    if pydantic_error_type in _TYPE_ERRORS:
        return "INVALID_PROPERTY_TYPE"
    return "INVALID_PROPERTY_FORMAT"


def error_property(loc: tuple[int | str, ...]) -> str:
    """A pydantic error location as a dot path without list indexes."""
    return ".".join(str(p) for p in loc if not isinstance(p, int)) or "(object)"


# --------------------------------------------------------------------------- the template


def __getattr__(name: str) -> Any:
    """The template's header names live in `csvbridge.schema.template` (which reads the
    Product model); kept importable from here, lazily, without an import cycle."""
    if name in ("TEMPLATE_HEADER", "PRODUCT_HEADER", "HEADER_ALIASES"):
        from csvbridge.schema import template

        return getattr(template, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
