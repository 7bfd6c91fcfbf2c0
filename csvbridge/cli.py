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

from csvbridge import __version__
from csvbridge.config import ConvertSettings, load_settings
from csvbridge.errors import CsvBridgeError
from csvbridge.report import Report


class ExitCode(IntEnum):
    """The one table of exit statuses (cron and systemd act on these)."""

    OK = 0  # everything valid and shipped
    REJECTED = 1  # some rows/objects rejected; the valid ones were written/shipped
    USAGE = 2  # usage, configuration, an unusable file, a refused API token
    UNREACHABLE = 3  # a source or the API unreachable, or another pass holds the lock
    INTERRUPTED = 130  # Ctrl-C / SIGTERM before the work was finished


EXIT_OK, EXIT_REJECTED, EXIT_USAGE, EXIT_UNREACHABLE = (
    ExitCode.OK,
    ExitCode.REJECTED,
    ExitCode.USAGE,
    ExitCode.UNREACHABLE,
)
EXIT_HELP = """exit status:
  0    everything valid and shipped
  1    some rows rejected (the valid ones were still written or shipped)
  2    usage, configuration or an unusable file (also a refused API token)
  3    a source or the API unreachable, or another pass holds the lock
  130  interrupted (Ctrl-C, SIGTERM)
"""


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


def _convert_settings(
    args: argparse.Namespace, base: ConvertSettings | None = None
) -> ConvertSettings:
    if base is None:
        base = load_settings(args.config).convert if args.config else ConvertSettings()
    updates = {
        k: v
        for k, v in {
            "strict": args.strict or None,
            "conflict": args.conflict,
            "encoding": args.encoding,
            "delimiter": args.delimiter,
            "workers": args.workers,
            "decimal_comma": args.decimal_comma,
            "mapping": args.mapping,
        }.items()
        if v is not None
    }
    # validate: model_copy(update=...) would skip the field constraints (workers >= 1)
    return ConvertSettings.model_validate({**base.model_dump(), **updates})


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
        settings=_convert_settings(args),  # --mapping included: one route to the engine
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
        print(
            "csvbridge: stopping after the batches in flight (again to abort)", file=sys.stderr
        )

    old = {sig: signal.signal(sig, handler) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield stop
    finally:
        for sig, h in old.items():
            signal.signal(sig, h)


def cmd_send(args: argparse.Namespace) -> int:
    from csvbridge.pipeline import send_file

    settings = load_settings(args.config)
    settings.convert = _convert_settings(args, settings.convert)
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
    summary = run_once(settings)
    print(summary.describe(), file=sys.stderr)
    if summary.fatal:
        print(f"csvbridge: {summary.fatal}", file=sys.stderr)
    return summary.exit_code


def cmd_watch(args: argparse.Namespace) -> int:
    from csvbridge.drops.daemon import watch

    settings = load_settings(args.config)
    if args.metrics_port is not None:
        settings.metrics.port = args.metrics_port
    _setup_logging(settings)
    return watch(settings)


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


def _add_convert_options(p: argparse.ArgumentParser) -> None:
    """Options shared by `convert` and `send`: the input, its reading, the report."""
    p.add_argument("input", help="CSV file (.csv or .csv.gz), or - for stdin")
    p.add_argument("--report", type=Path, help="write the JSON report here")
    p.add_argument("--rejects", type=Path, help="write rejected rows here (source dialect)")
    p.add_argument("-q", "--quiet", action="store_true", help="no summary on stderr")
    p.add_argument("--mapping", type=Path, help="YAML mapping for exports with their own headers")
    p.add_argument("--strict", action="store_true", help="reject spreadsheet-damaged values")
    p.add_argument("--conflict", choices=("reject", "first", "last"))
    p.add_argument("--encoding", help="force the file encoding (default: detect)")
    p.add_argument("--delimiter", help="force the delimiter (default: detect)")
    p.add_argument("--decimal-comma", action=argparse.BooleanOptionalAction, default=None)
    p.add_argument("--kind", choices=("conversions", "products"), default="conversions")
    p.add_argument(
        "--products-from-conversions",
        action="store_true",
        help="extract the distinct products of a conversions export",
    )
    p.add_argument("--workers", type=_positive_int, help="worker processes (default: one per CPU)")
    p.add_argument("--config", type=Path, help="csvbridge config file (YAML)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="csvbridge",
        description="Move e-commerce order exports (CSV) into Commanders Act conversions.",
        epilog=EXIT_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"csvbridge {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("convert", help="convert one CSV file to NDJSON (or a CSV feed)")
    p.add_argument("-o", "--output", help="output file (default: stdout)")
    p.add_argument("--to", choices=("ndjson", "feed"), default="ndjson")
    _add_convert_options(p)
    p.set_defaults(func=cmd_convert)

    p = sub.add_parser("send", help="convert one CSV file and ship it (API and/or feed)")
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

    p = sub.add_parser("run", help="one pass over every configured drop, then exit (cron)")
    p.add_argument("--config", type=Path, required=True, help="csvbridge config file (YAML)")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("watch", help="the daemon: watch the configured drops until stopped")
    p.add_argument("--config", type=Path, required=True, help="csvbridge config file (YAML)")
    p.add_argument("--metrics-port", type=_port, help="serve /healthz and /metrics here")
    p.set_defaults(func=cmd_watch)

    p = sub.add_parser(
        "demo", help="the whole job on shipped fixtures: local drop + built-in API emulator"
    )
    p.add_argument("--dir", help="where to put the demo drop (default: a temporary folder)")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser(
        "emulator", help="run the bulk API emulator and the tracking and Commerce HQ stand-ins"
    )
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=_port, default=8080)
    p.add_argument("--token", default="emulator-token")
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

    p = sub.add_parser("debug", help="look inside a conversion")
    debug = p.add_subparsers(dest="what", required=True, metavar="WHAT")
    p = debug.add_parser("codegen", help="print the Python code compiled for a file's header")
    p.add_argument("input", type=Path, help="CSV file (its header and dialect are read)")
    p.add_argument("--mapping", type=Path, help="YAML mapping for exports with their own headers")
    p.add_argument("--kind", choices=("conversions", "products"), default="conversions")
    p.set_defaults(func=cmd_debug_codegen)

    p = sub.add_parser(
        "hash-password", help="hash a password for the embedded FTP drop (users[].password_hash)"
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
