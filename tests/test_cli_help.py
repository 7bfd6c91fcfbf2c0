"""The command line as a new user meets it: every option says its default, `--help` has
examples and the exit codes (from the one ExitCode table), shell completion scripts that
the shell accepts, one version."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from pathlib import Path

import pytest

import csvbridge
from csvbridge.cli import ExitCode, HelpFormatter, build_parser

ROOT = Path(__file__).resolve().parent.parent


def cli(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run(
        [sys.executable, "-m", "csvbridge", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def parsers(
    parser: argparse.ArgumentParser, path: tuple[str, ...] = ()
) -> Iterator[tuple[tuple[str, ...], argparse.ArgumentParser]]:
    yield path, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from parsers(sub, (*path, name))


def test_every_option_of_every_command_shows_its_default() -> None:
    checked = 0
    for path, parser in parsers(build_parser()):
        assert parser.formatter_class is HelpFormatter, path
        for action in parser._actions:
            if not action.option_strings or action.default is argparse.SUPPRESS:
                continue  # positionals, --help, --version
            shown = HelpFormatter("x")._get_help_string(action) or ""
            assert "default" in shown, f"{' '.join(path)} {action.option_strings}: {shown!r}"
            checked += 1
    assert checked > 30


@pytest.mark.parametrize("command", [[], ["send"], ["run"], ["watch"], ["config", "show"]])
def test_help_lists_the_exit_codes_from_the_one_table(command: list[str]) -> None:
    done = cli(*command, "--help")
    assert done.returncode == 0, done.stderr
    for code in ExitCode:
        assert f"  {code.value:<4} {code.meaning}" in done.stdout
    if not command:
        assert "examples:" in done.stdout and "csvbridge config show" in done.stdout


def test_help_shows_defaults_in_the_text() -> None:
    out = cli("emulator", "--help").stdout
    assert "(default: 8080)" in out and "(default: 127.0.0.1)" in out
    out = cli("run", "--help").stdout
    assert "$CSVBRIDGE_CONFIG" in out


@pytest.mark.parametrize("shell", ["bash", "zsh", "tcsh"])
def test_completion_scripts(shell: str, tmp_path: Path) -> None:
    done = cli("completion", shell)
    assert done.returncode == 0, done.stderr
    for command in ("convert", "send", "run", "watch", "config", "completion"):
        assert command in done.stdout
    if shell != "tcsh":  # shtab's tcsh script completes commands, not their options
        assert "--metrics-port" in done.stdout
    if shell == "bash":  # the shell itself accepts the script
        script = tmp_path / "csvbridge.bash"
        script.write_text(done.stdout)
        check = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True)
        assert check.returncode == 0, check.stderr
        # and completes the subcommands when sourced
        probe = (
            f"source {script}; COMP_WORDS=(csvbridge con); COMP_CWORD=1; "
            "_shtab_csvbridge; printf '%s\\n' \"${COMPREPLY[@]}\""
        )
        out = subprocess.run(["bash", "-c", probe], capture_output=True, text=True, timeout=30)
        assert set(out.stdout.split()) == {"convert", "config"}, out.stderr


def test_one_version_source() -> None:
    assert cli("--version").stdout.strip() == f"csvbridge {csvbridge.__version__}"
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert "version" not in project and "version" in project["dynamic"]
    deps = " ".join(project["dependencies"])
    assert "pydantic-settings" in deps and "shtab" in deps
    assert (ROOT / "LICENSE").exists() and (ROOT / "CHANGELOG.md").exists()
