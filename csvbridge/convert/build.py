"""Runs -> built objects: one run, or a conversion gathered from several runs."""

from __future__ import annotations

from csvbridge.convert.fold import Built, Plan
from csvbridge.convert.lane import Run, Shared
from csvbridge.report import Problem


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


__all__ = ["build_group", "build_run"]
