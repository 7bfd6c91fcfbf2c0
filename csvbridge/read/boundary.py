"""Where a record ends: the cut points that let several processes parse one file.

Record boundaries: with RFC 4180 quoting every ``"`` toggles the quoted state (an
escaped quote is two toggles), so a newline is a record end iff the number of quotes
before it is even.  Where a file breaks that rule (a stray quote inside an unquoted
field), the chunk's parser notices it — a sentinel line appended to each chunk must come
back as its own row — and the caller falls back to reading the file in one piece.

Why apart from the reader: this runs once per chunk on the hot path, and it is the one
rule the parallel parse rests on; it is kept small enough to check by reading.
"""

from __future__ import annotations


def record_end(buf: bytes, quotes_odd: bool, end: int) -> int:
    """Index just after the last newline of ``buf[:end]`` outside quotes, or -1."""
    end = min(end, len(buf))
    total_odd = quotes_odd ^ (_quotes(buf, 0, end) % 2 == 1)
    pos = end
    after_odd = False  # parity of the quotes between `pos` and `end`
    while True:
        nl = buf.rfind(b"\n", 0, pos)
        if nl < 0:
            return -1
        # parity before `nl` = parity at `end` minus quotes between them (counted
        # a stretch at a time: a stray quote must not make this quadratic)
        after_odd ^= buf.count(b'"', nl, pos) % 2 == 1
        if not (total_odd ^ after_odd):
            return nl + 1
        pos = nl


def _quotes(buf: bytes, start: int, end: int) -> int:
    """Quote characters in ``buf[start:end]``.

    Most exports quote a few fields: jumping from quote to quote with find() (memchr)
    beats bytes.count, which looks at every byte, several times over.  Past a few
    hundred quotes, count() is the faster one.
    """
    n = 0
    find = buf.find
    i = find(b'"', start, end)
    while i >= 0:
        n += 1
        if n == 256:
            return n + buf.count(b'"', i + 1, end)
        i = find(b'"', i + 1, end)
    return n
