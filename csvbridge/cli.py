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

from csvbridge.cli_parser import CONFIG_HELP, EXAMPLES, Handler, HelpFormatter, make_parser
from csvbridge.config import load_settings
from csvbridge.errors import CsvBridgeError
from csvbridge.report import Report

# the grammar lives in csvbridge.cli_parser; its public names stay importable from here
__all__ = [
    "CONFIG_HELP",
    "EXAMPLES",
    "EXIT_HELP",
    "EXIT_OK",
    "EXIT_REJECTED",
    "EXIT_UNREACHABLE",
    "EXIT_USAGE",
    "HANDLERS",
    "ExitCode",
    "HelpFormatter",
    "build_parser",
    "main",
]


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


HANDLERS: dict[str, Handler] = {  # the dispatch: each command's name -> its handler
    "convert": cmd_convert,
    "send": cmd_send,
    "run": cmd_run,
    "watch": cmd_watch,
    "status": cmd_status,
    "config show": cmd_config_show,
    "completion": cmd_completion,
    "demo": cmd_demo,
    "emulator": cmd_emulator,
    "debug codegen": cmd_debug_codegen,
    "mapping show": cmd_mapping_show,
    "mapping check": cmd_mapping_check,
    "hash-password": cmd_hash_password,
}


def build_parser() -> argparse.ArgumentParser:
    """The command line (`csvbridge.cli_parser`) with each command bound to its handler."""
    return make_parser(HANDLERS, EXIT_HELP)


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
