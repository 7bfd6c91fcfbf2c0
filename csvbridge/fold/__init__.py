"""Stage 2, fold: rows folded into nested conversions, validated, written as NDJSON.

``plan`` works out columns and codecs and compiles the row code (``codegen``),
``assemble`` turns rows into objects, ``lane`` is the fast lane for the
documented layout, ``build`` turns runs into objects, ``worker`` is what runs in a worker
process (a chunk, a bucket), ``regroup`` the on-disk bucket sort of files whose rows are
not grouped by id, ``workdir`` the work folder and its files, ``engine`` the
orchestration (`convert`), ``output`` the one-shot `convert_file`, ``rejects`` the
rejects file.
"""

from csvbridge.fold.engine import convert
from csvbridge.fold.output import convert_file
from csvbridge.fold.rejects import write_rejects
from csvbridge.fold.workdir import Converted, read_records

__all__ = ["Converted", "convert", "convert_file", "read_records", "write_rejects"]
