"""The command line: parse arguments, make one library call, map errors to exit codes.

This is the only module that reads stdin, writes stdout or decides an exit status.
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from enum import IntEnum
from pathlib import Path

import shtab

from csvbridge import __version__
from csvbridge.config import load_settings
from csvbridge.errors import CsvBridgeError
from csvbridge.report import Report


class ExitCode(IntEnum):
    """The one table of exit statuses (cron and systemd act on these); `--help` lists it."""

    meaning: str

    def __new__(cls, value: int, meaning: str) -> ExitCode:
        member = int.__new__(cls, value)
        member._value_ = value
        member.meaning = meaning
        return member

    OK = 0, "everything valid and shipped"
    REJECTED = 1, "some rows rejected (the valid ones were still written or shipped)"
    USAGE = 2, "usage, configuration or an unusable file (also a refused API token)"
    UNREACHABLE = 3, "a source or the API unreachable, or another pass holds the lock"
    INTERRUPTED = 130, "interrupted (Ctrl-C, SIGTERM) before the work was finished"


EXIT_OK, EXIT_REJECTED, EXIT_USAGE, EXIT_UNREACHABLE = (
    ExitCode.OK,
    ExitCode.REJECTED,
    ExitCode.USAGE,
    ExitCode.UNREACHABLE,
)
EXIT_HELP = "exit status:\n" + "".join(f"  {c.value:<4} {c.meaning}\n" for c in ExitCode)
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


def _convert_overrides(args: argparse.Namespace) -> dict[str, object]:
    """The reading options given on the command line: the top layer of the settings."""
    given = {
        "strict": args.strict or None,
        "conflict": args.conflict,
        "encoding": args.encoding,
        "delimiter": args.delimiter,
        "workers": args.workers,
        "decimal_comma": args.decimal_comma,
        "mapping": args.mapping,
        "sheet": args.sheet,
        "preset": args.preset,
    }
    return {f"convert.{k}": v for k, v in given.items() if v is not None}


def _exit_for(report: Report) -> int:
    if report.fatal:
        return EXIT_USAGE
    bad = report.objects_rejected + report.objects_rejected_by_api
    return EXIT_REJECTED if bad else EXIT_OK


def cmd_convert(args: argparse.Namespace) -> int:
    from csvbridge.fold.engine import convert_file

    # stdin and stdout are the command line's: the library takes binary streams
    source = sys.stdin.buffer if args.input == "-" else args.input
    output = sys.stdout.buffer if args.output in (None, "-") else args.output
    report = convert_file(
        source,
        output,
        to=args.to,
        kind=args.kind,
        # --mapping included: one route to the engine
        settings=load_settings(args.config, overrides=_convert_overrides(args)).convert,
        report_path=args.report,
        rejects_path=args.rejects,
        products_from_conversions=args.products_from_conversions,
        name="-" if args.input == "-" else None,
    )
    if not args.quiet:
        report.print_summary()
    return _exit_for(report)


@contextmanager
def _graceful_stop() -> Iterator[threading.Event]:
    """SIGTERM or Ctrl-C once: finish the batches in flight, write the report, clean up.
    Twice: abort at once (KeyboardInterrupt; temporary folders are still removed)."""
    stop = threading.Event()

    def handler(signum: int, frame: object) -> None:
        if stop.is_set():
            raise KeyboardInterrupt
        stop.set()
        print("csvbridge: stopping after the batches in flight (again to abort)", file=sys.stderr)

    old = {sig: signal.signal(sig, handler) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield stop
    finally:
        for sig, h in old.items():
            signal.signal(sig, h)


def cmd_send(args: argparse.Namespace) -> int:
    from csvbridge.pipeline import send_file

    settings = load_settings(args.config, overrides=_convert_overrides(args))
    _setup_logging(settings)  # progress lines off a terminal, retries, the summary
    stdin = str(args.input) == "-"
    sink = {"api": ["api"], "feed": ["feed"], "both": ["api", "feed"]}.get(args.sink or "")
    with _graceful_stop() as stop:
        outcome = send_file(
            sys.stdin.buffer if stdin else args.input,
            settings,
            name="-" if stdin else None,
            kind=args.kind,
            sinks=sink,
            products_from_conversions=args.products_from_conversions,
            dry_run=args.dry_run,
            report_path=args.report,
            rejects_path=args.rejects,
            stop=stop,
        )
    if not args.quiet:
        outcome.report.print_summary()
        for key in ("plan", "feed", "shipment_stopped", "interrupted"):
            if key in outcome.report.outputs:
                print(f"  {key}: {outcome.report.outputs[key]}", file=sys.stderr)
    return ExitCode.INTERRUPTED if stop.is_set() else outcome.exit_code


def _setup_logging(settings: object) -> None:
    from csvbridge.observe import setup_logging

    setup_logging(settings.logging.format, settings.logging.level)  # type: ignore[attr-defined]


def cmd_run(args: argparse.Namespace) -> int:
    from csvbridge.drops.runner import run_once

    settings = load_settings(args.config)
    _setup_logging(settings)
    summary = run_once(settings, progress=None)  # bars on a terminal, else log lines
    print(summary.describe(), file=sys.stderr)
    if summary.fatal:
        print(f"csvbridge: {summary.fatal}", file=sys.stderr)
    return summary.exit_code


def cmd_watch(args: argparse.Namespace) -> int:
    from csvbridge.drops.daemon import watch

    port = {} if args.metrics_port is None else {"metrics.port": args.metrics_port}
    settings = load_settings(args.config, overrides=port)
    _setup_logging(settings)
    return watch(settings, progress=None)  # bars on a terminal, else log lines


def cmd_status(args: argparse.Namespace) -> int:
    import json

    from csvbridge.status import ledger_status

    status = ledger_status(load_settings(args.config))
    print(json.dumps(status.as_dict(), indent=2) if args.json else status.describe())
    return EXIT_OK


def cmd_demo(args: argparse.Namespace) -> int:
    from csvbridge.demo import run_demo

    return run_demo(Path(args.dir) if args.dir else None, out=sys.stdout)


def cmd_emulator(args: argparse.Namespace) -> int:
    from csvbridge.testing.commercehq import CommerceHQStandIn
    from csvbridge.testing.emulator import run_emulator
    from csvbridge.testing.tracking import TrackingStandIn

    # the other two APIs csvbridge talks to, on free ports beside the bulk API emulator
    sites = args.site or ["1234"]  # SITE or SITE:TOKEN[:LIMITS], one per --site
    tracking = TrackingStandIn(args.host, 0, site_id=sites[0].split(":")[0]).start()
    shop = CommerceHQStandIn(args.host, 0, orders=args.orders).start()
    print(
        f"tracking API stand-in on {tracking.url} (events: CSVBRIDGE_EVENTS_URL={tracking.url} "
        f"CSVBRIDGE_EVENTS_SITE_ID={tracking.site_id} CSVBRIDGE_EVENTS_TOKEN={tracking.token})"
    )
    print(
        f"Commerce HQ stand-in on {shop.url} (source url: "
        f"commercehq+http://{shop.host}:{shop.port}, "
        f"api_key: {shop.api_key}, api_password: {shop.api_password})",
        flush=True,
    )
    try:
        run_emulator(  # serves until SIGTERM/Ctrl-C
            host=args.host,
            port=args.port,
            token=args.token,
            site_id=sites[0].split(":")[0],
            sites=sites if any(":" in x for x in sites) or len(sites) > 1 else None,
            speed=args.speed,
            fail_rate=args.fail_rate,
            drop_rate=args.drop_rate,
            slow_rate=args.slow_rate,
            out=sys.stdout,
        )
    except KeyboardInterrupt:  # stopped before the emulator had set up its own handler
        pass
    finally:
        shop.stop()
        tracking.stop()
    return EXIT_OK


def cmd_hash_password(args: argparse.Namespace) -> int:
    """A password hash for the embedded FTP drop's ``users[].password_hash``."""
    import getpass

    from csvbridge.drops.ftpserver import hash_password

    password = getpass.getpass("password for the FTP drop user: ")
    if not password or password != getpass.getpass("again: "):
        print("csvbridge: the passwords are empty or differ", file=sys.stderr)
        return EXIT_USAGE
    print(hash_password(password))
    return EXIT_OK


def cmd_debug_codegen(args: argparse.Namespace) -> int:
    from csvbridge.fold.codegen import generated_source_of_file

    print(generated_source_of_file(args.input, args.mapping, kind=args.kind), end="")
    return EXIT_OK


def cmd_config_show(args: argparse.Namespace) -> int:
    import json

    from csvbridge.config_show import show_settings

    shown = show_settings(args.config)
    if args.json:
        print(json.dumps(shown.as_json(), indent=2))
    else:
        print(shown.as_text(), end="")
    return EXIT_OK


def cmd_completion(args: argparse.Namespace) -> int:
    print(shtab.complete(build_parser(), shell=args.shell), end="")
    return EXIT_OK


def _path(action: argparse.Action) -> argparse.Action:
    """Complete a file name for this argument in the shell (shtab)."""
    action.complete = shtab.FILE  # type: ignore[attr-defined]
    return action


def _config_option(p: argparse.ArgumentParser) -> None:
    _path(p.add_argument("--config", type=Path, help=CONFIG_HELP))


def cmd_mapping_show(args: argparse.Namespace) -> int:
    from csvbridge.read.mapping import preset_text

    print(preset_text(args.name), end="")
    return EXIT_OK


def cmd_mapping_check(args: argparse.Namespace) -> int:
    from csvbridge.read.mapping.check import check_file

    bench = check_file(
        args.input,
        mapping=args.mapping,
        preset=args.preset,
        orders=args.orders,
        settings=load_settings(args.config, overrides=_convert_overrides(args)).convert,
    )
    print(bench.as_text(), end="")
    return EXIT_OK if bench.ok else EXIT_REJECTED


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


def _sub(
    sub: argparse._SubParsersAction, name: str, help: str, **kw: object
) -> argparse.ArgumentParser:  # noqa: A002
    """A subcommand with the same formatter and the exit codes in its --help."""
    return sub.add_parser(  # type: ignore[no-any-return]
        name, help=help, description=help, formatter_class=HelpFormatter, epilog=EXIT_HELP, **kw
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="csvbridge",
        description="Move e-commerce order exports (CSV) into Commanders Act conversions.",
        epilog=EXAMPLES + "\n" + EXIT_HELP,
        formatter_class=HelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"csvbridge {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = _sub(sub, "convert", "convert one CSV file to NDJSON (or a CSV feed)")
    _path(p.add_argument("-o", "--output", help="output file (default: stdout)"))
    p.add_argument("--to", choices=("ndjson", "feed"), default="ndjson", help="output format")
    _add_convert_options(p)
    p.set_defaults(func=cmd_convert)

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
    p.set_defaults(func=cmd_send)

    p = _sub(sub, "run", "one pass over every configured drop, then exit (cron)")
    _config_option(p)
    p.set_defaults(func=cmd_run)

    p = _sub(sub, "watch", "the daemon: watch the configured drops until stopped")
    _config_option(p)
    p.add_argument(
        "--metrics-port",
        type=_port,
        help="serve /healthz and /metrics here (default: metrics.port in the config)",
    )
    p.set_defaults(func=cmd_watch)

    p = _sub(sub, "status", "what the ledger says: files, progress, errors, replicas, leases")
    _config_option(p)
    p.add_argument("--json", action="store_true", help="print JSON for scripts")
    p.set_defaults(func=cmd_status)

    p = _sub(sub, "config", "look at the settings")
    config = p.add_subparsers(dest="what", required=True, metavar="WHAT")
    p = _sub(config, "show", "the effective settings, secrets masked, and where each came from")
    _config_option(p)
    p.add_argument("--json", action="store_true", help="print JSON instead of text")
    p.set_defaults(func=cmd_config_show)

    p = _sub(sub, "completion", "print a shell completion script")
    p.add_argument("shell", choices=("bash", "zsh", "tcsh"), help="the shell")
    p.set_defaults(func=cmd_completion)

    p = _sub(sub, "demo", "the whole job on shipped fixtures: local drop + built-in API emulator")
    _path(p.add_argument("--dir", help="where to put the demo drop (default: a temporary folder)"))
    p.set_defaults(func=cmd_demo)

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
    p.set_defaults(func=cmd_emulator)

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
    p.set_defaults(func=cmd_debug_codegen)

    p = _sub(sub, "mapping", "presets and the mapping workbench")
    mapping = p.add_subparsers(dest="what", required=True, metavar="WHAT")
    p = _sub(mapping, "show", "print a shipped preset (a mapping to edit)")
    p.add_argument("name", help="shopify, woocommerce, magento, prestashop, commercehq")
    p.set_defaults(func=cmd_mapping_show)
    p = _sub(mapping, "check", "how a mapping fills the first orders of a file; ships nothing")
    p.add_argument("--orders", type=int, default=3, help="orders to show")
    _add_convert_options(p)
    p.set_defaults(func=cmd_mapping_check, kind="conversions", products_from_conversions=False)
    p = _sub(
        sub, "hash-password", "hash a password for the embedded FTP drop (users[].password_hash)"
    )
    p.set_defaults(func=cmd_hash_password)
    return parser


def _interrupt(signum: int, frame: object) -> None:
    """SIGTERM as Ctrl-C: unwinds, so temporary folders are removed and nothing is half
    written in place (outputs are renamed into place only when complete)."""
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command not in ("watch", "send"):  # those two stop gracefully on their own
        signal.signal(signal.SIGTERM, _interrupt)  # the emulator's own handler replaces it
    try:
        return int(args.func(args))
    except CsvBridgeError as exc:
        print(f"csvbridge: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("csvbridge: interrupted", file=sys.stderr)
        return ExitCode.INTERRUPTED
    except BrokenPipeError:
        return EXIT_OK


if __name__ == "__main__":
    raise SystemExit(main())
