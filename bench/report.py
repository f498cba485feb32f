"""Result rows (each figure beside its same-run baseline and the ratio) and their rendering."""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from pathlib import Path

import attrs

from bench.stats import fmt, ratio, table

_MET = {True: "yes", False: "NO", None: ""}


def _value(value: float | None) -> str:
    """A row's figure: a count (an int) as one ("0 requests", not "0.00 requests")."""
    return f"{value:,}" if isinstance(value, int) else fmt(value)


@attrs.frozen(kw_only=True)
class Row:
    """One figure of a scenario.

    Attributes:
        metric: what is measured, with its condition (e.g. "p50 latency, c=1").
        value: the figure through the worker.
        unit: its unit.
        baseline: the same figure for the reference measured in the same run.
        baseline_label: what the reference is ("direct", "bare hypercorn", ...).
        target: the goal, as text (e.g. "<= 0.5").
        met: whether the target is met (None: no target).
    """

    metric: str
    value: float | None
    unit: str = ""
    baseline: float | None = None
    baseline_label: str = ""
    target: str = ""
    met: bool | None = None


def check(
    value: float | None, *, at_most: float | None = None, at_least: float | None = None
) -> bool | None:
    """Whether ``value`` is within the bounds (None when it is missing)."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    if at_most is not None and value > at_most:
        return False
    return not (at_least is not None and value < at_least)


@attrs.frozen(kw_only=True)
class Table:
    """A table of a scenario's own shape, shown after its rows (e.g. the soak's outcomes).

    Attributes:
        caption: one line above it.
        header: the column names.
        rows: the cells, as text.
    """

    caption: str
    header: tuple[str, ...]
    rows: tuple[tuple[str, ...], ...]

    def render(self) -> str:
        """The caption in bold, then the table."""
        return f"**{self.caption}**\n\n" + table(self.header, self.rows)


@attrs.frozen(kw_only=True)
class Section:
    """A scenario's rows, its own tables and notes (how it was measured, what else was seen)."""

    key: str
    title: str
    rows: tuple[Row, ...]
    notes: tuple[str, ...] = ()
    tables: tuple[Table, ...] = ()

    def with_note(self, note: str) -> Section:
        """The same section with one more note."""
        return attrs.evolve(self, notes=(*self.notes, note))

    def render(self) -> str:
        """The section as Markdown: a heading, the table, then the notes."""
        header = ["metric", "worker", "baseline", "ratio", "unit", "target", "met"]
        cells = []
        for row in self.rows:
            base = ""
            if row.baseline is not None:
                base = f"{_value(row.baseline)} ({row.baseline_label})"
            share = ratio(row.value, row.baseline)
            shown = "" if share is None else f"{share:.3f}x" if share < 10 else f"{share:.1f}x"
            met = _MET[row.met]
            cells.append(
                [
                    row.metric,
                    _value(row.value),
                    base,
                    shown,
                    row.unit,
                    row.target,
                    met,
                ]
            )
        parts = [f"### {self.title}", "", table(header, cells)]
        for extra in self.tables:
            parts += ["", extra.render()]
        if self.notes:
            parts += ["", *(f"- {note}" for note in self.notes)]
        return "\n".join(parts)


def targets(sections: Sequence[Section]) -> str:
    """One table of every figure that has a target, and whether it was met."""
    rows = [
        [s.title.split(".", 1)[0], r.metric, f"{_value(r.value)} {r.unit}", r.target, _MET[r.met]]
        for s in sections
        for r in s.rows
        if r.target
    ]
    met = sum(1 for s in sections for r in s.rows if r.met)
    judged = sum(1 for s in sections for r in s.rows if r.met is not None)
    header = ["#", "target", "worker", "goal", "met"]
    return f"### Targets: {met} of {judged} met\n\n" + table(header, rows)


def render_all(sections: Sequence[Section], preamble: Sequence[str]) -> str:
    """A few lines on how the run was made, the targets, then every section."""
    lines = "\n".join(f"- {line}" for line in preamble)
    parts = [lines, targets(sections), *(s.render() for s in sections)]
    return "\n\n".join(parts) + "\n"


def write_results(path: Path, text: str, block_name: str = "results") -> None:
    """Replace a generated block of ``path`` (between its markers) with ``text``.

    Args:
        path: the results file.
        text: the new block's text.
        block_name: which block: ``results`` (the scenarios run by default), ``soak`` (the
            fault soak, run apart); a block missing from the file is appended.
    """
    begin, end = f"<!-- bench:{block_name}:begin -->", f"<!-- bench:{block_name}:end -->"
    block = f"{begin}\n{text}{end}"
    old = path.read_text() if path.exists() else f"{begin}\n{end}\n"
    if begin not in old:
        old += f"\n{begin}\n{end}\n"
    pattern = re.compile(re.escape(begin) + ".*?" + re.escape(end), re.DOTALL)
    path.write_text(pattern.sub(lambda _: block, old, count=1))
