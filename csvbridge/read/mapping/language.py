"""The expression language of mappings: Jinja2 expressions in an immutable sandbox.

A rule ``{expr: "dec(c['Total']) - dec(c['Refunded Amount'])"}`` computes a value from
several cells.  The text is compiled once per mapping by
`jinja2.sandbox.ImmutableSandboxedEnvironment.compile_expression` (never ``eval``): the
sandbox refuses attribute access to internals (``__class__``, ``mro``...) and any
call that would mutate an object, so a mapping file cannot run code.

Why Jinja2 and not CEL: both cost about 7 µs per expression per call here (measured on
50k rows, see issue 10's notes), but CEL numbers are doubles, and money must stay exact;
Jinja2 expressions work on Python `Decimal`s handed in by `dec()`.

What an expression sees:

* ``c['Column name']`` — a cell of the row (text; column names ignore case and spaces,
  and a name that is not in the header is an error when the mapping is compiled, with
  a suggestion);
* ``dec(x[, locale])`` — a cell as a `Decimal` (``""`` is 0), read as the shop writes
  numbers (`csvbridge.read.numbers`); ``round2(x)`` rounds half-up to cents;
* text functions ``trim``, ``lower``, ``upper``, ``split(x, sep, n)`` (the n-th part,
  0-based, ``""`` past the end), ``extract(x, regex[, group])`` (``""`` when it does
  not match), ``truncate(x, n)`` (cut to n characters with a warning naming the row),
  ``concat(sep, a, b, ...)`` (joins the non-empty parts only, so no separator is left
  behind), ``coalesce(a, b, ...)`` (the first non-empty);
* Jinja's own operators: ``+ - * / // %``, ``== != < <= > >=``, ``and or not``,
  ``in``, ``~`` (text concatenation) and ``a if cond else b``; filters such as
  ``c['X'] | trim | lower``.

Per-row cost (``python -m csvbridge.read.mapping.language``: 100k calls, CPU time, on
this shared 2-core machine): ``dec(c['Total']) - dec(c['Refunded Amount'])`` costs
about 2.8 µs to evaluate (10.2 µs through `TemplateExpression.__call__`, which builds
a render context per call; `Compiled` reuses one, and calls to the helpers below skip
the sandbox's per-call inspection), 4.7-5.5 µs on distinct rows with the memo's
bookkeeping, 0.1-0.3 µs when the cells repeat (the memo answers); a column copy
0.02-0.06 µs.
That is why results are memoised per tuple of the cells read, and order-level rules
are evaluated once per order (on the row that carries the order's fields), not on
every item row.
"""

from __future__ import annotations

import difflib
import operator
import re
from collections.abc import Callable
from decimal import ROUND_HALF_UP, Decimal
from functools import lru_cache
from typing import Any

from jinja2 import Undefined, nodes
from jinja2.exceptions import SecurityError, TemplateError, TemplateSyntaxError
from jinja2.sandbox import ImmutableSandboxedEnvironment

from csvbridge.read.numbers import NumberError, format_decimal, parse_amount
from csvbridge.schema.codecs import CellError

TRUNCATE_DEFAULT = 250  # the documented length of most text fields (Text250)


class ExpressionError(ValueError):
    """An expression that cannot be compiled, or names a column the file lacks."""


class Cells:
    """The row an expression reads, by column name: ``c['Total']``."""

    __slots__ = ("cells", "index")

    def __init__(self, index: dict[str, int]) -> None:
        self.index = index
        self.cells: list[str] = []

    def __getitem__(self, name: str) -> str:
        i = self.index.get(name)
        if i is None:
            i = self.index.get(name.strip().lower())
            if i is None:
                raise KeyError(name)
        return self.cells[i]


class Context:
    """What the helpers need during one call: the locale, and where warnings go."""

    def __init__(self, locale: str) -> None:
        self.locale = locale
        self.notes: list[tuple[str, str, str]] = []  # (code, detail, value)


def _helpers(ctx: Context) -> dict[str, Callable[..., Any]]:
    def dec(x: Any, locale: str | None = None) -> Decimal:
        if isinstance(x, Decimal):
            return x
        if isinstance(x, (int, float)) and not isinstance(x, bool):
            return Decimal(str(x))
        text = str(x or "").strip()
        if not text:
            return Decimal(0)
        try:
            return parse_amount(text, locale or ctx.locale)
        except NumberError as exc:
            raise CellError("INVALID_NUMBER", str(exc), text) from None

    def round2(x: Any) -> Decimal:
        return dec(x).quantize(Decimal("0.01"), rounding=ROUND_HALF_UP)

    def trim(x: Any) -> str:
        return str(x or "").strip()

    def lower(x: Any) -> str:
        return str(x or "").lower()

    def upper(x: Any) -> str:
        return str(x or "").upper()

    def split(x: Any, sep: str, n: int = 0) -> str:
        parts = str(x or "").split(sep)
        return parts[n].strip() if -len(parts) <= n < len(parts) else ""

    def extract(x: Any, pattern: str, group: int = 1) -> str:
        m = _regex(pattern).search(str(x or ""))
        if m is None:
            return ""
        return (m.group(group) if m.re.groups >= group else m.group(0)) or ""

    def truncate(x: Any, n: int = TRUNCATE_DEFAULT) -> str:
        text = str(x or "")
        if len(text) <= n:
            return text
        ctx.notes.append(
            ("VALUE_TRUNCATED", f"cut to {n} characters (it had {len(text)})", text[:80])
        )
        return text[:n]

    def concat(sep: str, *parts: Any) -> str:
        return sep.join(t for t in (str(p).strip() for p in parts if p is not None) if t)

    def coalesce(*parts: Any) -> Any:
        return next((p for p in parts if p not in (None, "")), "")

    return {
        "dec": dec,
        "round2": round2,
        "trim": trim,
        "lower": lower,
        "upper": upper,
        "split": split,
        "extract": extract,
        "truncate": truncate,
        "concat": concat,
        "coalesce": coalesce,
    }


@lru_cache(maxsize=256)
def _regex(pattern: str) -> re.Pattern[str]:
    try:
        return re.compile(pattern)
    except re.error as exc:
        raise CellError("INVALID_EXPRESSION", f"bad regular expression {pattern!r}: {exc}") from None


HELPERS = tuple(_helpers(Context("en_US")))


def column_names(source: str) -> list[str]:
    """The column names an expression reads (``c['...']`` with a constant name)."""
    env = ImmutableSandboxedEnvironment()
    try:
        tree = env.parse("{{ (" + source + ") }}")
    except TemplateSyntaxError as exc:
        raise ExpressionError(f"expression {source!r} does not parse: {exc.message}") from None
    names = []
    for node in tree.find_all(nodes.Getitem):
        if isinstance(node.node, nodes.Name) and node.node.name == "c":
            if not isinstance(node.arg, nodes.Const) or not isinstance(node.arg.value, str):
                raise ExpressionError(
                    f"expression {source!r}: a column is named by a constant text, c['Name']"
                )
            names.append(node.arg.value)
    for node in tree.find_all(nodes.Name):
        if node.ctx == "load" and node.name not in ("c", *HELPERS, "true", "false", "none"):
            raise ExpressionError(
                f"expression {source!r} uses {node.name!r}, which is not defined"
                + suggest(node.name, ["c", *HELPERS])
            )
    return names


def suggest(name: str, choices: list[str]) -> str:
    """`` — did you mean X?`` for the closest choice, or nothing."""
    close = difflib.get_close_matches(name, choices, n=1, cutoff=0.6)
    if not close:
        lowered = {c.lower(): c for c in choices}
        close = [lowered[m] for m in difflib.get_close_matches(name.lower(), list(lowered), 1)]
    return f" — did you mean {close[0]}?" if close else ""


MEMO_SIZE = 32768  # results remembered per expression; cleared when full
_MISSING = object()


class _Outcome:
    """A remembered outcome that is more than a value: an error, or warnings."""

    __slots__ = ("error", "notes", "value")

    def __init__(self, error: CellError | None, notes: list[Any], value: Any = None) -> None:
        self.error, self.notes, self.value = error, notes, value


class Compiled:
    """One compiled expression, bound to a row view and a context.

    It runs the template function Jinja generated for the expression in one render
    context made once (`compile_expression` makes a new context per call, which is
    three quarters of its cost); the sandbox's ``call`` and ``getitem`` still guard
    every operation, since they are part of the generated code.

    An expression is a pure function of the cells it names (the sandbox allows no
    state, the helpers keep none), so its outcome — value, error or warnings — is
    remembered per tuple of those cells: exports repeat prices, quantities, product
    names and statuses on many rows, and a repeat then costs one dict lookup.
    """

    __slots__ = ("ctx", "key", "memo", "notes", "render", "source", "text", "vars", "view")

    def __init__(
        self,
        expr: Any,
        source: str,
        view: Cells,
        reads: list[int],
        notes: list[Any],
        text: bool = False,
    ) -> None:
        self.text = text  # give the result as cell text (`to_text`)
        template = expr._template
        self.ctx = template.new_context({})
        self.vars = self.ctx.vars
        self.render = template.root_render_func
        self.source, self.view, self.notes = source, view, notes
        self.key: Callable[[list[str]], Any] | None = (
            operator.itemgetter(*reads) if reads else None
        )
        self.memo: dict[Any, Any] = {}  # cells -> value, or an _Outcome

    def __call__(self, row: list[str]) -> Any:
        if self.key is None:
            return to_text(self._run(row)) if self.text else self._run(row)
        key = self.key(row)
        memo = self.memo
        hit = memo.get(key, _MISSING)
        if hit is _MISSING:
            before = len(self.notes)
            try:
                value = self._run(row)
                hit = to_text(value) if self.text else value
            except CellError as exc:
                hit = _Outcome(exc, [])
            if len(self.notes) > before:  # warnings are replayed on every hit
                if hit.__class__ is _Outcome:
                    hit.notes = self.notes[before:]
                else:
                    hit = _Outcome(None, self.notes[before:], hit)
            if len(memo) >= MEMO_SIZE:
                memo.clear()
            memo[key] = hit
            if hit.__class__ is not _Outcome:
                return hit
        elif hit.__class__ is not _Outcome:
            return hit  # the usual case: a plain remembered value
        else:
            self.notes.extend(hit.notes)
        if hit.error is not None:
            raise hit.error
        return hit.value

    def _run(self, row: list[str]) -> Any:
        self.view.cells = row
        try:
            for _ in self.render(self.ctx):
                pass
            result = self.vars.get("result")
            return None if isinstance(result, Undefined) else result
        except CellError:
            raise
        except SecurityError as exc:
            raise CellError("INVALID_EXPRESSION", f"{self.source!r}: {exc}") from None
        except (TemplateError, ArithmeticError, TypeError, ValueError, KeyError) as exc:
            raise CellError(
                "INVALID_EXPRESSION",
                f"expression {self.source!r} failed: {type(exc).__name__}: {exc}",
            ) from None


class _Sandbox(ImmutableSandboxedEnvironment):
    """The immutable sandbox, with one shortcut: a call to one of our own helpers
    (plain functions defined above, which touch nothing but their arguments) skips
    the per-call inspection; every other call is checked by the sandbox as usual."""

    trusted: frozenset[int] = frozenset()

    def call(__self, __context: Any, __obj: Any, *args: Any, **kwargs: Any) -> Any:  # noqa: N805
        if id(__obj) in __self.trusted:
            return __obj(*args, **kwargs)
        return super().call(__context, __obj, *args, **kwargs)


class Language:
    """Compiles a mapping's expressions once, against one header."""

    def __init__(self, header: list[str], locale: str) -> None:
        self.index: dict[str, int] = {}
        for i, h in enumerate(header):
            self.index.setdefault(h, i)
            self.index.setdefault(h.strip().lower(), i)
        self.header = header
        self.view = Cells(self.index)
        self.context = Context(locale)
        self.env = _Sandbox(autoescape=False)
        helpers = _helpers(self.context)
        self.env.globals.update(helpers)
        self.env.trusted = frozenset(id(f) for f in helpers.values())
        self._helpers = helpers  # keeps the trusted functions (and their ids) alive
        self.env.globals["c"] = self.view

    def compile(self, source: str, where: str, text: bool = False) -> Compiled:
        reads = []
        for name in column_names(source):
            i = self.index.get(name, self.index.get(name.strip().lower()))
            if i is None:
                raise ExpressionError(
                    f"{where}: column {name!r} is not in the file's header"
                    + suggest(name, self.header)
                )
            reads.append(i)
        try:
            expr = self.env.compile_expression(source, undefined_to_none=True)
        except TemplateSyntaxError as exc:
            raise ExpressionError(f"{where}: expression {source!r}: {exc.message}") from None
        return Compiled(
            expr, source, self.view, sorted(set(reads)), self.context.notes, text
        )


def to_text(value: Any) -> str:
    """An expression's result as cell text: Decimals exact, booleans as true/false."""
    if value is None:
        return ""
    if value is True:
        return "true"
    if value is False:
        return "false"
    if isinstance(value, Decimal):
        return format_decimal(value)
    if isinstance(value, float):
        return format_decimal(Decimal(repr(value)))
    return str(value)


def _measure() -> None:  # pragma: no cover - the figures in the docstring
    import time

    lang = Language(["Total", "Refunded Amount", "Name"], "en_US")
    n = 100_000
    rows = [[f"{i + 1000}.50", f"{i % 97}.00", f"#{i}"] for i in range(n)]  # all distinct
    same = rows[:1] * n  # one row repeated: the memo answers
    for name, source in {
        "dec(Total) - dec(Refunded)": "dec(c['Total']) - dec(c['Refunded Amount'])",
        "concat": "concat(' ', c['Name'], c['Total'])",
    }.items():
        for label, data in (("uncached", rows), ("repeated", same)):
            fn = lang.compile(source, "bench")
            t = time.process_time()  # CPU time: the machine is shared
            for row in data:
                fn(row)
            print(f"{name} ({label}): {(time.process_time() - t) / n * 1e6:.2f} µs CPU")
    t = time.perf_counter()
    for row in rows:
        row[0]  # noqa: B018
    print(f"column copy: {(time.perf_counter() - t) / n * 1e6:.2f} µs")


if __name__ == "__main__":  # pragma: no cover
    _measure()
