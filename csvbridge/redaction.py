"""Secret redaction: one registry of secret values, and `redact` to scrub them from text.

Why a module of its own: errors, config, logs and the HTTP layers all scrub text, and the
error classes sit below everything else, so the registry must import nothing of csvbridge.

What is safe to mask (leaking is worse than garbling, but garbling hides real messages):

* a secret of `MIN_ANYWHERE` characters or more is masked wherever it appears, also
  inside a longer word (``token%3Dsecret...``, ``Bearersecret...``): such a string does
  not occur by chance in ordinary text;
* a shorter secret (a weak password, a test token such as ``wrong``) would garble
  ordinary words if masked everywhere ("refused the token: wrong or unknown API token"),
  so it is masked only where text *presents* a secret: as a whole quoted value
  (``'wrong'``, ``"wrong"``: reprs, JSON), after ``Bearer``/``Basic``, as a URL's
  password (``ftp://user:wrong@host``), after ``key=`` (query strings, kwargs), or as the
  value of a ``token:``/``password:`` YAML line;
* every secret is also matched in its escaped spellings (repr, JSON, URL-encoded), as
  libraries quote header values and URLs in their messages.

Values are stripped of surrounding whitespace before they are registered: the secret
actually sent is the stripped one (config strips it, see `csvbridge.config`).
"""

from __future__ import annotations

import json
import re
import threading
from urllib.parse import quote

MASK = "**********"
MIN_ANYWHERE = 8  # secrets at least this long are masked everywhere, inside words too
MIN_REGISTERED = 3  # shorter values (empty, "a", "ab") are too common to mask at all

_LOCK = threading.Lock()
_LONG: set[str] = set()  # spellings of long secrets: masked as substrings
_SHORT: set[str] = set()  # spellings of short secrets: masked in secret contexts only
_short_pattern: re.Pattern[str] | None = None


def _spellings(value: str) -> set[str]:
    """The secret as it may appear in messages: plain, repr-escaped, JSON, URL-encoded."""
    return {
        value,
        value.encode("unicode_escape").decode("ascii"),
        json.dumps(value)[1:-1],
        quote(value, safe=""),
    }


def register_secret(value: str | None) -> None:
    """Remember a secret so that `redact` (and so every log line and error) masks it."""
    global _short_pattern
    value = (value or "").strip()
    if len(value) < MIN_REGISTERED:
        return
    with _LOCK:
        if len(value) >= MIN_ANYWHERE:
            _LONG.update(s for s in _spellings(value) if len(s) >= MIN_ANYWHERE)
        else:
            _SHORT.update(_spellings(value))
            _short_pattern = _build_short_pattern(_SHORT)


def _build_short_pattern(values: set[str]) -> re.Pattern[str]:
    # longest first, so that a secret containing another is masked whole
    alts = "|".join(re.escape(v) for v in sorted(values, key=len, reverse=True))
    end = r"(?=$|[\s&;,)\]}'\"@/])"
    contexts = [
        rf"(?<=['\"])(?:{alts})(?=['\"])",  # a whole quoted value
        rf"(?i:(?<=bearer )|(?<=basic ))(?:{alts}){end}",  # an Authorization header
        rf"(?<=:)(?:{alts})(?=@)",  # a URL's password: scheme://user:SECRET@host
        rf"(?<==)(?:{alts}){end}",  # key=SECRET (query strings, kwargs)
        rf"(?im:^([ \t-]*[\w.-]*(?:token|password|passphrase|secret|key)[\w.-]*[ \t]*:[ \t]*)"
        rf"['\"]?(?:{alts})['\"]?[ \t]*$)",  # a YAML line holding it
    ]
    return re.compile("|".join(f"(?:{c})" for c in contexts))


def _mask_short(match: re.Match[str]) -> str:
    key = match.group(1)  # the YAML alternative keeps its key
    return f"{key}{MASK}" if key is not None else MASK


def redact(text: str) -> str:
    """`text` with every registered secret masked (see the module docstring for where)."""
    if not _LONG and _short_pattern is None:
        return text
    with _LOCK:
        longs = sorted(_LONG, key=len, reverse=True)
        short = _short_pattern
    for secret in longs:
        if secret in text:
            text = text.replace(secret, MASK)
    if short is not None:
        text = short.sub(_mask_short, text)
    return text


def forget_secrets() -> None:
    """Empty the registry (tests that check what happens with no secret registered)."""
    global _short_pattern
    with _LOCK:
        _LONG.clear()
        _SHORT.clear()
        _short_pattern = None
