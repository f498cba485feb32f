"""The lifecycle table drawn as diagrams, Mermaid and Graphviz DOT, for :mod:`._statecharts`.

One arrow per (source, destination) pair, labelled with the triggers (and guards) of the table's
rows between them; the initial and final states marked (Mermaid's ``[*]``; in DOT, UML's dot
and bullseye).

A small formatter over the table is used rather than ``transitions.extensions.GraphMachine``: the
output is plain text with no "current state" styling, needs neither Graphviz nor the ``graphviz``
package, and is byte-identical across runs and Python hash seeds.
"""

from __future__ import annotations

from collections.abc import Sequence

from ._lifecycle import INITIAL, STATES, TRANSITIONS, Guard, State, Transition

TITLE = "pyworker lifecycle"
"""The title of both diagrams."""

_TRIGGER_SEPARATOR = ", "
"""Joins the triggers of transitions that share a source and a destination (one arrow)."""


_GUARD_NAMES = {Guard.KEY_KNOWN: "key known"}
"""How a guard reads on an arrow."""


def row_label(row: Transition) -> str:
    """The trigger, with its guard in brackets; a fallback row says so when a guarded row
    for the same trigger and source comes before it."""
    if row.guard is not None:
        return f"{row.trigger.value} [{_GUARD_NAMES[row.guard]}]"
    guarded_sibling = any(
        other.guard is not None
        and other.trigger is row.trigger
        and set(other.sources) & set(row.sources)
        for other in TRANSITIONS
    )
    return f"{row.trigger.value} [otherwise]" if guarded_sibling else row.trigger.value


def _edges() -> list[tuple[State, State, tuple[str, ...]]]:
    """One arrow per (source, destination) pair, in declaration order.

    Sources follow the order of :data:`STATES`; for each source, arrows follow the order of the
    rows of :data:`TRANSITIONS`, and the labels sharing an arrow keep their row order.
    """
    arrows: dict[tuple[State, State], list[str]] = {}
    for info in STATES:
        for row in TRANSITIONS:
            if info.state in row.sources:
                arrows.setdefault((info.state, row.dest), []).append(row_label(row))
    return [(source, dest, tuple(labels)) for (source, dest), labels in arrows.items()]


def final_states() -> list[State]:
    """The states that no transition leaves."""
    sources = {source for row in TRANSITIONS for source in row.sources}
    return [info.state for info in STATES if info.state not in sources]


def _label(labels: Sequence[str]) -> str:
    return _TRIGGER_SEPARATOR.join(labels)


def mermaid_text() -> str:
    """The lifecycle as a Mermaid state diagram.

    ``[*] --> loading`` marks the initial state and ``stopped --> [*]`` the final one; each arrow
    is labelled with the trigger names that cause it.

    Returns:
        The text of ``statecharts/lifecycle.mmd``, ending in a newline.
    """
    lines = [
        "---",
        f"title: {TITLE}",
        "---",
        "stateDiagram-v2",
        "  direction LR",
        f"  [*] --> {INITIAL.value}",
    ]
    lines += [
        f"  {source.value} --> {dest.value}: {_label(labels)}" for source, dest, labels in _edges()
    ]
    lines += [f"  {state.value} --> [*]" for state in final_states()]
    return "\n".join(lines) + "\n"


def _dot_id(name: str) -> str:
    escaped = name.replace("\\", "\\\\").replace('"', '\\"')
    return f'"{escaped}"'


def dot_text() -> str:
    """The lifecycle as a Graphviz DOT digraph (text only; nothing is rendered).

    A filled dot points at the initial state and the final state points at a bullseye, as in UML;
    each arrow is labelled with the trigger names that cause it.

    Returns:
        The text of ``statecharts/lifecycle.dot``, ending in a newline.
    """
    start, end = _dot_id("__initial__"), _dot_id("__final__")
    lines = [
        f"digraph {_dot_id(TITLE)} {{",
        f"\tgraph [label={_dot_id(TITLE)} labelloc=t rankdir=LR]",
        '\tnode [shape=box style=rounded fontname="Helvetica"]',
        '\tedge [fontname="Helvetica" fontsize=10]',
        f'\t{start} [label="" shape=point width=0.15]',
        f'\t{end} [label="" shape=doublecircle style=filled fillcolor=black width=0.1]',
    ]
    lines += [f"\t{_dot_id(info.state.value)}" for info in STATES]
    lines.append(f"\t{start} -> {_dot_id(INITIAL.value)}")
    lines += [
        f"\t{_dot_id(source.value)} -> {_dot_id(dest.value)} [label={_dot_id(_label(labels))}]"
        for source, dest, labels in _edges()
    ]
    lines += [f"\t{_dot_id(state.value)} -> {end}" for state in final_states()]
    lines.append("}")
    return "\n".join(lines) + "\n"
