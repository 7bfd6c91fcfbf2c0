"""Sources that are APIs, not file drops: they pull orders from a shop's API and write
them as CSV exports into a local folder, so everything after that (mapping, validation,
ledger, sinks, reports) is the same, unchanged path a dropped CSV file takes.

``commercehq``: the Commerce HQ orders API (``GET /api/v1/orders``), with a restart-safe
cursor the caller keeps in the ledger.
"""
