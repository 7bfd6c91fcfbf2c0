"""Stage 2, convert: rows folded into nested conversions, validated, written as NDJSON.

``fold`` compiles the plan (generated row code), ``lane`` is the fast lane for the
documented layout, ``engine`` runs chunks through worker processes and regroups files
whose rows are not grouped by id.
"""

from csvbridge.convert.engine import Converted, convert, read_records

__all__ = ["Converted", "convert", "read_records"]
