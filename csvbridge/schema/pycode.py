"""Compile generated Python source so that tracebacks show it.

Code compiled from a string has no file: a traceback through it shows only
``File "<csvbridge …>", line 7`` with no text.  Registering the source in `linecache`
under that name makes tracebacks (and debuggers) show the generated line itself; the
entry is dropped again when the function is garbage-collected, so a daemon converting
file after file does not accumulate sources.
"""

from __future__ import annotations

import itertools
import linecache
import weakref
from collections.abc import Callable
from typing import Any

_serial = itertools.count(1)


def compile_function(name: str, source: str, env: dict[str, Any], label: str) -> Callable[..., Any]:
    """Define function `name` from `source` in namespace `env`; return it.

    `label` says what the code is for (e.g. ``plan _head``); the pseudo file name made
    from it is unique, so two plans never show each other's lines.
    """
    filename = f"<csvbridge {label} #{next(_serial)}>"
    code = compile(source, filename, "exec")
    lines = [line + "\n" for line in source.splitlines()]
    # mtime None: linecache.checkcache() keeps entries it cannot stat
    linecache.cache[filename] = (len(source), None, lines, filename)
    exec(code, env)  # noqa: S102 - our own generated source
    fn = env[name]
    weakref.finalize(fn, linecache.cache.pop, filename, None)
    return fn  # type: ignore[no-any-return]
