"""Secrets: stripped when loaded, masked in every log format (tracebacks too), never echoed
by a YAML error, and masked without garbling ordinary words.  Real emulator, real files."""

from __future__ import annotations

import io
import json
import logging
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from csvbridge.config import load_settings
from csvbridge.errors import AuthError, ConfigError
from csvbridge.observe import setup_logging
from csvbridge.redaction import MASK, forget_secrets, redact, register_secret
from csvbridge.sinks import ship
from csvbridge.testing.sample_objects import sample_records
from tests.plugins.api import settings_for


@pytest.fixture(autouse=True)
def clean_registry() -> Iterator[None]:
    forget_secrets()
    yield
    forget_secrets()


@pytest.fixture
def log_stream() -> Iterator[Any]:
    """The root handler csvbridge installs, writing into a buffer we can read."""

    def start(fmt: str) -> io.StringIO:
        setup_logging(fmt, "DEBUG")
        handler = next(h for h in logging.getLogger().handlers if getattr(h, "_csvbridge", 0))
        buffer = io.StringIO()
        handler.setStream(buffer)  # type: ignore[attr-defined]
        return buffer

    yield start
    root = logging.getLogger()
    for h in list(root.handlers):
        if getattr(h, "_csvbridge", False):
            root.removeHandler(h)


def write_config(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def test_secrets_from_env_and_file_lose_surrounding_whitespace(tmp_path: Path) -> None:
    config = write_config(
        tmp_path / "c.yaml",
        "api:\n  site_id: '1234'\n"
        "feed:\n  password: ${FEED_PASSWORD}\n"
        'sources:\n  - name: s\n    url: ftp://u@h/d\n    password: "  pw-from-yaml-1234\\n"\n',
    )
    env = {"CSVBRIDGE_TOKEN": "tok-from-a-file-0123456\n", "FEED_PASSWORD": "feed-pw-5678\r\n"}
    settings = load_settings(config, env=env)
    assert settings.api.token.get_secret_value() == "tok-from-a-file-0123456"
    assert settings.feed.password is not None
    assert settings.feed.password.get_secret_value() == "feed-pw-5678"
    assert settings.sources[0].password is not None
    assert settings.sources[0].password.get_secret_value() == "pw-from-yaml-1234"
    # registered as soon as loaded: an error raised before any client exists is masked
    assert redact("token=tok-from-a-file-0123456 pw=feed-pw-5678") == f"token={MASK} pw={MASK}"


@pytest.mark.parametrize("fmt", ["text", "json"])
def test_a_token_with_a_newline_ships_and_never_shows(
    emulator: Any, log_stream: Any, tmp_path: Path, fmt: str
) -> None:
    """The reported case: a token read from a file keeps its newline; requests refused the
    header and the whole token was printed in the log and the final error."""
    emu = emulator(token="tok-right-9f8e7d6c5b")
    stream = log_stream(fmt)
    config = write_config(tmp_path / "c.yaml", f"api:\n  base_url: {emu.url}\n  site_id: '1234'\n")
    wrong = load_settings(config, env={"CSVBRIDGE_TOKEN": "tok-wrong-1a2b3c4d5e\n"})
    with pytest.raises(AuthError) as caught:
        ship(list(sample_records(3)), settings_for(emu, token=wrong.api.token))
    right = load_settings(config, env={"CSVBRIDGE_TOKEN": "tok-right-9f8e7d6c5b\n"})
    result = ship(list(sample_records(3)), settings_for(emu, token=right.api.token))
    assert result.accepted == 3  # the stripped token is the one the API knows
    logging.getLogger("csvbridge.test").error("failed: %s", caught.value, exc_info=caught.value)
    seen = stream.getvalue() + str(caught.value) + repr(caught.value)
    assert "wrong or unknown API token" in str(caught.value)
    assert "tok-wrong-1a2b3c4d5e" not in seen and "tok-right-9f8e7d6c5b" not in seen
    if fmt == "json":
        lines = [json.loads(line) for line in stream.getvalue().splitlines()]
        assert any("exception" in line for line in lines)


_LOGGING_SCRIPT = """
import logging, sys
from csvbridge.observe import register_secret, setup_logging
secret = sys.argv[2]
register_secret(secret)
setup_logging(sys.argv[1], "DEBUG")
log = logging.getLogger("csvbridge.test")
try:
    raise ValueError(f"Invalid header value b'Bearer {secret}\\n'")
except ValueError:
    log.exception("request failed")
log.info("no args", extra={"fields": {"url": f"sftp://bob:{secret}@host/", "n": 3}})
log.warning("stack", stack_info=True, extra={"fields": {"why": [secret]}})
"""


@pytest.mark.parametrize("fmt", ["text", "json"])
def test_tracebacks_and_fields_are_masked_in_every_format(fmt: str) -> None:
    """In a process of its own: pytest's log capture formats tracebacks before our handler
    would, which hid the leak this test is about."""
    secret = "s3cr3t-Pa55word-xyz"
    done = subprocess.run(
        [sys.executable, "-c", _LOGGING_SCRIPT, fmt, secret],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    text = done.stderr
    assert "Traceback" in text and "ValueError" in text and "stack" in text
    assert secret not in text
    assert text.count(MASK) >= (3 if fmt == "json" else 1)
    if fmt == "json":
        lines = [json.loads(line) for line in text.splitlines()]
        assert lines[1]["url"] == f"sftp://bob:{MASK}@host/" and lines[1]["n"] == 3


def test_a_yaml_error_does_not_echo_the_line_with_the_secret(tmp_path: Path) -> None:
    secret = "hunter2-very-secret"
    for text, where in (
        (f"api:\n  site_id: '1'\n  token: \"{secret}\n", "line 4"),  # unterminated quote
        (f"api:\n  token: {secret}: oops\n", "line 2, column"),  # a colon in a plain value
        (f"api:\n\ttoken: {secret}\n", "line 2, column 1"),  # a tab
    ):
        config = write_config(tmp_path / "c.yaml", text)
        with pytest.raises(ConfigError) as caught:
            load_settings(config, env={})
        message = str(caught.value)
        assert "not valid YAML" in message and where in message, message
        assert secret not in message and "hunter2" not in message


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        # the reported garbling: a short token must not eat our own words
        (
            "the API refused the token: wrong or unknown API token",
            "the API refused the token: wrong or unknown API token",
        ),
        ("wrongly, wrong-headed", "wrongly, wrong-headed"),
        # but where text presents a secret, it is masked
        ("Authorization: Bearer wrong", f"Authorization: Bearer {MASK}"),
        ("header value b'Bearer wrong'", f"header value b'Bearer {MASK}'"),
        ("ftp://bob:wrong@ftp.example/", f"ftp://bob:{MASK}@ftp.example/"),
        ("GET /x?token=wrong&a=1", f"GET /x?token={MASK}&a=1"),
        ("{'password': 'wrong'}", f"{{'password': '{MASK}'}}"),
        ("  token: wrong", f"  token: {MASK}"),
    ],
)
def test_short_secrets_are_masked_only_where_text_presents_a_secret(
    text: str, expected: str
) -> None:
    register_secret("wrong")
    assert redact(text) == expected


def test_long_secrets_are_masked_everywhere_in_every_spelling() -> None:
    secret = 'tok/with "quotes"+9z'
    register_secret(secret + "\n")  # registered stripped
    assert redact(f"x{secret}y") == f"x{MASK}y"
    assert redact(json.dumps({"t": secret})) == json.dumps({"t": MASK})
    assert redact(repr(secret)) == f"'{MASK}'"
    assert redact("token=tok%2Fwith%20%22quotes%22%2B9z") == f"token={MASK}"
    register_secret("ab")  # too short to mask anywhere without garbling
    assert redact("ab about") == "ab about"


def test_short_token_error_message_reads_whole(emulator: Any) -> None:
    emu = emulator()
    with pytest.raises(AuthError) as caught:
        ship(list(sample_records(2)), settings_for(emu, token="wrong"))
    assert "the API refused the token: wrong or unknown API token" in str(caught.value)
