"""Runs -> built objects: one run, a conversion gathered from several runs, and a
conversion too large to build (`Overflow`).

A conversion cannot have more than `MAX_ITEMS` items, so once one has more rows than
that its rows are no longer kept, only counted (with their lines, as ranges): one id
repeated on every row of a huge file then costs a few numbers, not the file in memory.
Such a conversion is rejected whole with ``TOO_MANY_ITEMS`` giving its row count.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from csvbridge.fold.assemble import Built, Plan
from csvbridge.fold.lane import Line, Run, Shared
from csvbridge.read.csvfile import Row
from csvbridge.report import Problem
from csvbridge.schema.models import MAX_ITEMS

ITEMS = "conversion_items"


@dataclass(slots=True)
class Overflow:
    """A conversion past `MAX_ITEMS` rows: counted, its lines kept as ranges."""

    id: str
    rows: int = 0
    first: list[int] = field(default_factory=list)  # lines of its first rows (the report)
    spans: list[list[int]] = field(default_factory=list)  # [first, last] line ranges

    @classmethod
    def of(cls, part: Run | Shared) -> Overflow:
        over = cls(part.id)  # type: ignore[arg-type]
        over.absorb(part)
        return over

    def add_line(self, line: int) -> None:
        self.rows += 1
        if len(self.first) <= MAX_ITEMS:
            self.first.append(line)
        spans = self.spans
        if spans:
            last = spans[-1]
            if line == last[1] + 1:
                last[1] = line
                return
            if last[0] <= line <= last[1]:
                return  # records split by a bare CR share a line number
        spans.append([line, line])

    def absorb(self, part: Run | Shared | Overflow | Line | Row) -> None:
        """Count the rows of another piece of the same conversion (file order)."""
        if isinstance(part, Overflow):
            self.rows += part.rows
            self.first.extend(part.first[: MAX_ITEMS + 1 - len(self.first)])
            for a, b in part.spans:
                last = self.spans[-1] if self.spans else None
                if last is not None and a <= last[1] + 1:
                    last[1] = max(last[1], b)
                else:
                    self.spans.append([a, b])
            return
        if isinstance(part, Run):
            for r in part.rows:
                self.add_line(r.line)
        elif isinstance(part, Shared):
            for n, _ in part.items:
                self.add_line(n)
        elif part.__class__ is tuple:
            self.add_line(part[0])  # type: ignore[index]
        else:
            self.add_line(part.line)  # type: ignore[union-attr]

    def lines_text(self) -> str:
        """The lines as the rejected-rows file holds them: ``a-b`` ranges, comma-joined."""
        return ",".join(str(a) if a == b else f"{a}-{b}" for a, b in self.spans)

    def problem(self) -> Problem:
        return Problem(
            "TOO_MANY_ITEMS",
            f"{self.rows} rows (conversion items) for one conversion; the API accepts at "
            f"most {MAX_ITEMS} per conversion (rows past {MAX_ITEMS + 1} were counted, "
            "not read)",
            ITEMS,
            tuple(self.first),
            self.id,
        )


def size_of(part: Run | Shared | Overflow | Line | Row) -> int:
    """How many rows a piece of a conversion holds."""
    if isinstance(part, Run):
        return len(part.rows)
    if isinstance(part, Shared):
        return len(part.items)
    if isinstance(part, Overflow):
        return part.rows
    return 1


def bounded(run: Run | Shared) -> Run | Shared | Overflow:
    """`run`, or its count when it already holds more rows than a conversion may."""
    if run.id is not None and size_of(run) > MAX_ITEMS:
        return Overflow.of(run)
    return run


def build_run(run: Run, plan: Plan) -> Built:
    """Build one run of parsed rows (its problems found while reading come first)."""
    if run.id is None:
        line = run.rows[0].line
        problems = run.pre + [
            Problem(
                code="MISSING_REQUIRED_PROPERTY",
                detail="should have required property 'id'",
                property="id",
                lines=(line,),
                column=plan.sources[plan.id_col],
            )
        ]
        lines = tuple(r.line for r in run.rows)
        return Built(record=None, problems=problems, rows=len(run.rows), lines=lines)
    built = plan.build(run.rows)
    if run.pre:
        # a value the mapping refused leaves its field empty: it is not also "missing"
        refused = {(p.property, p.lines) for p in run.pre if not p.warning}
        built.problems[:] = run.pre + [
            p
            for p in built.problems
            if p.code != "MISSING_REQUIRED_PROPERTY" or (p.property, p.lines) not in refused
        ]
        if built.record is not None and refused:
            built.record = None
    return built


def build_group(group: list[Run | Shared], plan: Plan, delimiter: str) -> Built:
    """Build one conversion from its runs, gathered from all over the file."""
    first = group[0]
    if len(group) > 1:
        heads = [r.head if isinstance(r, Shared) else None for r in group]
        if heads[0] is not None and all(h == heads[0] for h in heads):
            items = [it for r in group for it in r.items]  # type: ignore[union-attr]
            first = Shared(first.id, heads[0], items)  # type: ignore[arg-type]
        else:
            plain = [r.as_run(delimiter) if isinstance(r, Shared) else r for r in group]
            first = Run(first.id, [row for r in plain for row in r.rows])
            first.pre = [p for r in plain for p in r.pre]
    if isinstance(first, Shared):
        return plan.build_shared(first.head, first.id, first.items, delimiter)
    return build_run(first, plan)


__all__ = ["Overflow", "bounded", "build_group", "build_run", "size_of"]
