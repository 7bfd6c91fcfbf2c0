"""The command line's grammar: every command, option and help text (argparse).

Built apart from `csvbridge.cli` (which binds each command to its handler, runs it and
maps errors to exit codes) so the grammar reads on its own; this module reads no stdin,
writes no stdout and decides no exit status.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Mapping
from functools import partial
from pathlib import Path

import shtab

from csvbridge import __version__

Handler = Callable[[argparse.Namespace], int]

CONFIG_HELP = "csvbridge config file (YAML) (default: $CSVBRIDGE_CONFIG, else none)"
EXAMPLES = """examples:
  csvbridge convert orders.csv -o orders.ndjson
  csvbridge send orders.csv --config /etc/csvbridge/csvbridge.yaml --dry-run
  CSVBRIDGE_CONFIG=/etc/csvbridge/csvbridge.yaml csvbridge run
  csvbridge watch --metrics-port 9100
  csvbridge config show --json
  csvbridge completion bash > /etc/bash_completion.d/csvbridge
  CSVBRIDGE_API__TIMEOUT_SECONDS=30 CSVBRIDGE_TOKEN=... csvbridge send orders.csv

settings: defaults < config file < secret files ($CSVBRIDGE_SECRETS_DIR,
$CREDENTIALS_DIRECTORY) < environment (CSVBRIDGE_<SECTION>__<KEY>) < command line.
"""


class HelpFormatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """Epilogs as written, and every option's default in its help.  An option whose
    default is None says in its own words what happens ("default: detect")."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        if "default" in text or action.default in (None, argparse.SUPPRESS):
            return text
        if action.default is False and action.nargs == 0:  # a store_true flag
            return text + " (default: off)"
        return super()._get_help_string(action)


def _port(text: str) -> int:
    """A TCP port number, refused by argparse (exit 2) when out of range."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a port number: {text!r}") from None
    if not 0 < value < 65536:
        raise argparse.ArgumentTypeError(f"port out of range (1-65535): {value}")
    return value


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1: {value}")
    return value


def _path(action: argparse.Action) -> argparse.Action:
    """Complete a file name for this argument in the shell (shtab)."""
    action.complete = shtab.FILE  # type: ignore[attr-defined]
    return action


def _config_option(p: argparse.ArgumentParser) -> None:
    _path(p.add_argument("--config", type=Path, help=CONFIG_HELP))


def _add_convert_options(p: argparse.ArgumentParser) -> None:
    """Options shared by `convert` and `send`: the input, its reading, the report."""
    _path(p.add_argument("input", help="CSV file (.csv or .csv.gz), Excel .xlsx, or - for stdin"))
    _path(p.add_argument("--report", type=Path, help="write the JSON report here (default: none)"))
    _path(
        p.add_argument(
            "--rejects", type=Path, help="write rejected rows here, source dialect (default: none)"
        )
    )
    p.add_argument("-q", "--quiet", action="store_true", help="no summary on stderr")
    _path(
        p.add_argument(
            "--mapping",
            type=Path,
            help="YAML mapping for exports with their own headers (default: convert.mapping "
            "in the config, else the documented headers)",
        )
    )
    p.add_argument(
        "--preset",
        help="a shipped mapping: shopify, woocommerce, magento, prestashop, commercehq "
        "(default: convert.preset in the config)",
    )
    p.add_argument("--strict", action="store_true", help="reject spreadsheet-damaged values")
    p.add_argument(
        "--conflict",
        choices=("reject", "first", "last"),
        help="rows of one conversion disagree on an order field (default: convert.conflict "
        "in the config, else reject)",
    )
    p.add_argument("--encoding", help="force the file encoding (default: detect)")
    p.add_argument("--delimiter", help="force the delimiter (default: detect among , ; tab |)")
    p.add_argument(
        "--decimal-comma",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="amounts use a decimal comma (default: only in ;-delimited files)",
    )
    p.add_argument("--sheet", help="an Excel workbook's sheet to read (default: the first)")
    p.add_argument(
        "--kind", choices=("conversions", "products"), default="conversions", help="what rows are"
    )
    p.add_argument(
        "--products-from-conversions",
        action="store_true",
        help="extract the distinct products of a conversions export",
    )
    p.add_argument("--workers", type=_positive_int, help="worker processes (default: one per CPU)")
    _config_option(p)


def _sub_command(
    sub: argparse._SubParsersAction, name: str, help: str, *, epilog: str, **kw: object
) -> argparse.ArgumentParser:  # noqa: A002
    """A subcommand with the same formatter and the exit codes in its --help."""
    return sub.add_parser(  # type: ignore[no-any-return]
        name, help=help, description=help, formatter_class=HelpFormatter, epilog=epilog, **kw
    )


def make_parser(handlers: Mapping[str, Handler], exit_help: str) -> argparse.ArgumentParser:
    """The whole command line; each command's `func` is ``handlers[its name]`` ("convert",
    "config show"...) and every --help ends with `exit_help` (the exit-status table)."""
    _sub = partial(_sub_command, epilog=exit_help)
    parser = argparse.ArgumentParser(
        prog="csvbridge",
        description="Move e-commerce order exports (CSV) into Commanders Act conversions.",
        epilog=EXAMPLES + "\n" + exit_help,
        formatter_class=HelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"csvbridge {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = _sub(sub, "convert", "convert one CSV file to NDJSON (or a CSV feed)")
    _path(p.add_argument("-o", "--output", help="output file (default: stdout)"))
    p.add_argument("--to", choices=("ndjson", "feed"), default="ndjson", help="output format")
    _add_convert_options(p)
    p.set_defaults(func=handlers["convert"])

    p = _sub(sub, "send", "convert one CSV file and ship it (API and/or feed)")
    p.add_argument(
        "--dry-run", action="store_true", help="validate and print the batch plan; send nothing"
    )
    p.add_argument(
        "--sink",
        choices=("api", "feed", "both"),
        help="where to deliver (default: `sinks` in the config, else api)",
    )
    _add_convert_options(p)
    p.set_defaults(func=handlers["send"])

    p = _sub(sub, "run", "one pass over every configured drop, then exit (cron)")
    _config_option(p)
    p.set_defaults(func=handlers["run"])

    p = _sub(sub, "watch", "the daemon: watch the configured drops until stopped")
    _config_option(p)
    p.add_argument(
        "--metrics-port",
        type=_port,
        help="serve /healthz and /metrics here (default: metrics.port in the config)",
    )
    p.set_defaults(func=handlers["watch"])

    p = _sub(sub, "status", "what the ledger says: files, progress, errors, replicas, leases")
    _config_option(p)
    p.add_argument("--json", action="store_true", help="print JSON for scripts")
    p.set_defaults(func=handlers["status"])

    p = _sub(sub, "config", "look at the settings")
    config = p.add_subparsers(dest="what", required=True, metavar="WHAT")
    p = _sub(config, "show", "the effective settings, secrets masked, and where each came from")
    _config_option(p)
    p.add_argument("--json", action="store_true", help="print JSON instead of text")
    p.set_defaults(func=handlers["config show"])

    p = _sub(sub, "completion", "print a shell completion script")
    p.add_argument("shell", choices=("bash", "zsh", "tcsh"), help="the shell")
    p.set_defaults(func=handlers["completion"])

    p = _sub(sub, "demo", "the whole job on shipped fixtures: local drop + built-in API emulator")
    _path(p.add_argument("--dir", help="where to put the demo drop (default: a temporary folder)"))
    p.set_defaults(func=handlers["demo"])

    p = _sub(
        sub, "emulator", "run the bulk API emulator and the tracking and Commerce HQ stand-ins"
    )
    p.add_argument("--host", default="127.0.0.1", help="address to listen on")
    p.add_argument("--port", type=_port, default=8080, help="bulk API port")
    p.add_argument("--token", default="emulator-token", help="the Bearer token it accepts")
    p.add_argument(
        "--site",
        action="append",
        metavar="SITE[:TOKEN[:OBJ/S[:REQ/S[:CONN]]]]",
        help="a site (default 1234) and its token (default --token) and limits; "
        "repeat for several sites and tokens",
    )
    p.add_argument("--speed", type=float, default=1.0, help="multiply the rate limits")
    p.add_argument("--fail-rate", type=float, default=0.0, help="share of 500 answers")
    p.add_argument("--drop-rate", type=float, default=0.0, help="share of dropped connections")
    p.add_argument("--slow-rate", type=float, default=0.0, help="share of slow answers")
    p.add_argument(
        "--orders", type=int, default=120, help="orders in the Commerce HQ stand-in's shop"
    )
    p.set_defaults(func=handlers["emulator"])

    p = _sub(sub, "debug", "look inside a conversion")
    debug = p.add_subparsers(dest="what", required=True, metavar="WHAT")
    p = _sub(debug, "codegen", "print the Python code compiled for a file's header")
    _path(p.add_argument("input", type=Path, help="CSV file (its header and dialect are read)"))
    _path(
        p.add_argument(
            "--mapping",
            type=Path,
            help="YAML mapping for exports with their own headers (default: documented headers)",
        )
    )
    p.add_argument(
        "--kind", choices=("conversions", "products"), default="conversions", help="what rows are"
    )
    p.set_defaults(func=handlers["debug codegen"])

    p = _sub(sub, "mapping", "presets and the mapping workbench")
    mapping = p.add_subparsers(dest="what", required=True, metavar="WHAT")
    p = _sub(mapping, "show", "print a shipped preset (a mapping to edit)")
    p.add_argument("name", help="shopify, woocommerce, magento, prestashop, commercehq")
    p.set_defaults(func=handlers["mapping show"])
    p = _sub(mapping, "check", "how a mapping fills the first orders of a file; ships nothing")
    p.add_argument("--orders", type=int, default=3, help="orders to show")
    _add_convert_options(p)
    p.set_defaults(
        func=handlers["mapping check"], kind="conversions", products_from_conversions=False
    )
    p = _sub(
        sub, "hash-password", "hash a password for the embedded FTP drop (users[].password_hash)"
    )
    p.set_defaults(func=handlers["hash-password"])
    return parser
