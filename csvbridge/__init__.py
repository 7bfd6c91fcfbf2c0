"""csvbridge: e-commerce order exports (CSV) into the Commanders Act conversions API.

The library face.  Everything the command line does is one call here::

    import csvbridge

    report = csvbridge.convert_file("orders.csv", "conversions.ndjson")
    settings = csvbridge.load_settings("csvbridge.yaml")
    outcome = csvbridge.send_file("orders.csv", settings)       # convert + ship
    summary = csvbridge.run_once(settings)                       # one pass (cron)
    done = csvbridge.convert_dataframe(df, mapping="mapping.yaml")  # pandas extra

Names are imported on first use, so ``import csvbridge`` stays cheap for the CLI.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# public name -> module that defines it
_FACE = {
    # convert: one export -> NDJSON (+ report, rejects)
    "convert": "csvbridge.fold.engine",
    "convert_file": "csvbridge.fold.engine",
    "Converted": "csvbridge.fold.engine",
    "read_records": "csvbridge.fold.engine",
    # DataFrames (the pandas extra): same engine, rows named by their labels
    "convert_dataframe": "csvbridge.dataframe",
    "ship_dataframe": "csvbridge.dataframe",
    "to_dataframe": "csvbridge.dataframe",
    "FrameConverted": "csvbridge.dataframe",
    "FrameOutcome": "csvbridge.dataframe",
    # ship: convert + deliver one file; the bulk API client alone
    "send_file": "csvbridge.pipeline",
    "process_file": "csvbridge.pipeline",
    "Outcome": "csvbridge.pipeline",
    "ship": "csvbridge.sinks.shipper",
    "ShipResult": "csvbridge.sinks.results",
    # drops: one pass (cron), the daemon
    "run_once": "csvbridge.drops.runner",
    "watch": "csvbridge.drops.daemon",
    "PassSummary": "csvbridge.drops.outcome",
    # settings, reports, errors
    "load_settings": "csvbridge.config",
    "Settings": "csvbridge.config",
    "ConvertSettings": "csvbridge.config",
    "Report": "csvbridge.report",
    "Problem": "csvbridge.report",
    "CsvBridgeError": "csvbridge.errors",
    "TransientError": "csvbridge.errors",
    "TerminalError": "csvbridge.errors",
    "ConfigError": "csvbridge.errors",
    "InputError": "csvbridge.errors",
    "ApiError": "csvbridge.errors",
    "AuthError": "csvbridge.errors",
    "SourceUnavailable": "csvbridge.errors",
    "LockedError": "csvbridge.errors",
}

__all__ = [
    "__version__",
    "convert",
    "convert_file",
    "Converted",
    "read_records",
    "convert_dataframe",
    "ship_dataframe",
    "to_dataframe",
    "FrameConverted",
    "FrameOutcome",
    "send_file",
    "process_file",
    "Outcome",
    "ship",
    "ShipResult",
    "run_once",
    "watch",
    "PassSummary",
    "load_settings",
    "Settings",
    "ConvertSettings",
    "Report",
    "Problem",
    "CsvBridgeError",
    "TransientError",
    "TerminalError",
    "ConfigError",
    "InputError",
    "ApiError",
    "AuthError",
    "SourceUnavailable",
    "LockedError",
]


def __getattr__(name: str) -> Any:
    module = _FACE.get(name)
    if module is None:
        raise AttributeError(f"module 'csvbridge' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # next time, a plain attribute
    return value


def __dir__() -> list[str]:
    return sorted(__all__)


if TYPE_CHECKING:  # what type checkers and IDEs see
    from csvbridge.config import ConvertSettings, Settings, load_settings
    from csvbridge.dataframe import (
        FrameConverted,
        FrameOutcome,
        convert_dataframe,
        ship_dataframe,
        to_dataframe,
    )
    from csvbridge.drops.daemon import watch
    from csvbridge.drops.outcome import PassSummary
    from csvbridge.drops.runner import run_once
    from csvbridge.errors import (
        ApiError,
        AuthError,
        ConfigError,
        CsvBridgeError,
        InputError,
        LockedError,
        SourceUnavailable,
        TerminalError,
        TransientError,
    )
    from csvbridge.fold.engine import Converted, convert, convert_file, read_records
    from csvbridge.pipeline import Outcome, process_file, send_file
    from csvbridge.report import Problem, Report
    from csvbridge.sinks.results import ShipResult
    from csvbridge.sinks.shipper import ship
