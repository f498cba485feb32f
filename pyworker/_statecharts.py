"""Diagrams and the operator's guide, generated from the lifecycle table.

The lifecycle table in :mod:`pyworker._lifecycle` is the single source of truth; this module turns
it into ``statecharts/lifecycle.mmd`` (Mermaid), ``statecharts/lifecycle.dot`` (Graphviz DOT) and
``statecharts/README.md`` (the operator's guide). Run ``python -m pyworker._statecharts`` after
changing the table; ``--check`` (run by the tests and CI) fails when the committed files are stale.

A small formatter over the table is used rather than ``transitions.extensions.GraphMachine``: the
output is plain text with no "current state" styling, needs neither Graphviz nor the ``graphviz``
package, and is byte-identical across runs and Python hash seeds.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from ._lifecycle import (
    INITIAL,
    STATES,
    TRANSITIONS,
    Effect,
    Guard,
    ReportPolicy,
    Service,
    State,
    StateInfo,
    Transition,
)

TITLE = "pyworker lifecycle"
"""The title of both diagrams."""

COMMAND = "python -m pyworker._statecharts"
"""The command that regenerates the files (quoted in the files and in ``--check`` messages)."""


def _default_out() -> Path:
    root = Path(__file__).resolve().parent.parent
    if (root / "pyproject.toml").is_file():  # a checkout: statecharts/ sits next to the package
        return root / "statecharts"
    return Path.cwd() / "statecharts"  # an installed copy: assume we run at the repository root


DEFAULT_OUT = _default_out()
"""Where the generated files live in the repository."""

_TRIGGER_SEPARATOR = ", "
"""Joins the triggers of transitions that share a source and a destination (one arrow)."""


_GUARD_NAMES = {Guard.KEY_KNOWN: "key known"}
"""How a guard reads on an arrow."""


def _row_label(row: Transition) -> str:
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
                arrows.setdefault((info.state, row.dest), []).append(_row_label(row))
    return [(source, dest, tuple(labels)) for (source, dest), labels in arrows.items()]


def _final_states() -> list[State]:
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
    lines += [f"  {state.value} --> [*]" for state in _final_states()]
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
    lines += [f"\t{_dot_id(state.value)} -> {end}" for state in _final_states()]
    lines.append("}")
    return "\n".join(lines) + "\n"


def _code_list(names: Sequence[str]) -> str:
    return ", ".join(f"`{name}`" for name in names)


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def _reports(policy: ReportPolicy) -> str:
    """What a state's report policy means, in words."""
    if policy.final:
        return "one final report, sent to every address within a deadline; then none"
    parts = ["on the first tick after the state is entered"]
    if policy.on_load_change:
        parts.append("on the next 1 s tick after a request arrives, ends or is refused")
    if policy.on_in_flight_drop:
        parts.append("on the next 1 s tick after the number of requests in flight falls")
    if policy.max_silence is not None:
        parts.append(f"at least every {policy.max_silence:g} s")
    return "; ".join(parts)


def _requests(info: StateInfo) -> str:
    if info.admits_requests:
        return "admitted and forwarded to the model server."
    if Effect.SET_ERROR in info.on_enter or Effect.NOTE_STALL in info.on_enter:
        new = (
            f"new ones refused with 503, reason `{info.refusal}: <error_msg>` (what went "
            "wrong, in the worker's words: never a log line or a payload)"
        )
    else:
        new = f"new ones refused with 503, reason `{info.refusal}`"
    if info.serves_admitted:
        return f"{new}; those already admitted are still served, queued ones included."
    return f"{new}, and so are queued ones when their turn comes (they never reach the model)."


def _services(info: StateInfo) -> str:
    names = [service for service in Service if service in info.services]
    if not names:
        return "none."
    return "; ".join(f"`{s.name.lower()}` ({s.value})" for s in names) + "."


def _sessions(info: StateInfo) -> str:
    """What sessions do in a state, from the facts the table gives (admission, services)."""
    running = Service.SESSIONS in info.services
    if info.admits_requests and running:
        return (
            "created and served; each request in one extends it by its lifetime; they end on "
            "request or when they expire, their on_close called."
        )
    if running:
        return (
            "no new ones, and no requests in them (503); the open ones end once the requests "
            "in flight are done, their on_close called."
        )
    return (
        "none open: the sessions open when the worker left `ready` were ended then (their "
        "on_close called, their requests answered 410 from then on); creating one is refused "
        "with 503."
    )


def _symptoms(info: StateInfo) -> str:
    """How a state shows, in every place an operator looks."""
    state = info.state.value
    into = sorted({row.trigger.value for row in TRANSITIONS if row.dest is info.state})
    shows = [
        f'reports and `/status`: `"state": "{state}"`',
        f'`/metrics`: `pyworker_state{{state="{state}"}} 1`',
    ]
    if into:
        shows.append(f"log: `state … -> {state} ({' | '.join(into)})`")
    if info.admits_requests:
        shows.append("clients: answers (or 429 when the queue is full)")
    elif Effect.SET_ERROR in info.on_enter or Effect.NOTE_STALL in info.on_enter:
        shows.append(f"clients: 503 `{info.refusal}: …`; `error_msg` set")
    else:
        shows.append(f"clients: 503 `{info.refusal}`")
    return "; ".join(shows)


def _troubleshooting() -> list[str]:
    """The troubleshooting table: symptom, state, likely cause, what to do."""
    out = [
        "",
        "## Troubleshooting",
        "",
        "Find the symptom; the state it means, the likely cause and what to do follow.",
        "",
        "| symptom | state | likely cause | what to do |",
        "|---|---|---|---|",
    ]
    out += [
        f"| {_cell(_symptoms(info))} | `{info.state.value}` | {_cell(info.cause)} "
        f"| {_cell(info.remedy)} |"
        for info in STATES
    ]
    return out


def _row_extras(row: Transition) -> str:
    extras = []
    if row.guard is not None:
        extras.append(f"only if {row.guard.value}")
    extras += [effect.value for effect in row.effects]
    return "; ".join(extras) or "-"


def readme_text() -> str:
    """The operator's guide to the lifecycle, in Markdown.

    It embeds :func:`mermaid_text`, describes every state from its ``StateInfo`` (meaning,
    admission or the 503 reason, when reports go out, what entering it changes, which services
    run in it, the usual cause, the ways in and out) and lists every transition with its guard,
    effects and reason.

    Returns:
        The text of ``statecharts/README.md``, ending in a newline.
    """
    finals = _final_states()
    out = [
        "# The worker lifecycle",
        "",
        f"<!-- Generated by `{COMMAND}` from pyworker/_lifecycle.py: do not edit by hand. -->",
        "",
        "This guide, `lifecycle.mmd` (Mermaid) and `lifecycle.dot` (Graphviz) are generated from "
        "the lifecycle table in `pyworker/_lifecycle.py`, the same table the running worker "
        "uses: it decides the transitions, what each state does to requests, when reports go "
        f"out and which services run. Do not edit them by hand: change the table, then run "
        f"`{COMMAND}`. CI runs `{COMMAND} --check`, which fails when these files are stale.",
        "",
        "## How to read the diagram",
        "",
        "- A box is a state of the worker; an arrow is a transition, labelled with the trigger "
        "(the event) that causes it. Several triggers on one arrow are separated by commas.",
        "- `[key known]` is a guard: that arrow is taken only when it holds; `[otherwise]` "
        "marks the arrow taken when it does not.",
        f"- `[*] --> {INITIAL.value}` marks the state a worker starts in; "
        + ", ".join(f"`{state.value} --> [*]`" for state in finals)
        + " marks where it ends.",
        "- A trigger with no arrow out of the current state is ignored: it changes nothing. For "
        "example, a model log line that arrives during shutdown has no effect.",
        "- Only states that admit requests forward them to the model server; the others answer "
        "503 with the reason given below (`/status` shows the state too).",
        "",
        "```mermaid",
        mermaid_text().rstrip("\n"),
        "```",
        "",
        "## States",
    ]
    for info in STATES:
        marks = []
        if info.state is INITIAL:
            marks.append("initial")
        if info.state in finals:
            marks.append("final")
        heading = f"### `{info.state.value}`" + (f" ({', '.join(marks)})" if marks else "")
        entered = ["start-up"] if info.state is INITIAL else []
        entered += [
            f"`{_row_label(row)}` from {_code_list([s.value for s in row.sources])}"
            for row in TRANSITIONS
            if row.dest is info.state
        ]
        left = [
            f"`{_row_label(row)}` → `{row.dest.value}`"
            for row in TRANSITIONS
            if info.state in row.sources
        ]
        effects = "; ".join(effect.value for effect in info.on_enter) or "nothing else"
        out += [
            "",
            heading,
            "",
            info.meaning,
            "",
            f"- **Requests:** {_requests(info)}",
            f"- **Sessions:** {_sessions(info)}",
            f"- **Reports:** {_reports(info.reports)}.",
            f"- **On entering:** {effects}.",
            f"- **Services running:** {_services(info)}",
            f"- **Usually because:** {info.cause}.",
            f"- **Entered on:** {'; '.join(entered) or 'never: no transition leads here'}.",
            f"- **Left on:** {'; '.join(left) if left else 'nothing: this state is final'}.",
        ]
    out += _troubleshooting()
    out += [
        "",
        "## Transitions",
        "",
        "Rows for the same trigger and state are tried in this order; the first whose guard "
        "holds is taken. A transition applies the destination's entry effects, then its own.",
        "",
        "| trigger | from | to | guard and effects | why |",
        "|---|---|---|---|---|",
    ]
    out += [
        f"| `{row.trigger.value}` | {_code_list([s.value for s in row.sources])} "
        f"| `{row.dest.value}` | {_cell(_row_extras(row))} | {_cell(row.why)} |"
        for row in TRANSITIONS
    ]
    return "\n".join(out) + "\n"


def generated_files() -> dict[str, str]:
    """Every generated file, by name inside the ``statecharts`` directory.

    Returns:
        A mapping of file name to its full text, in a fixed order.
    """
    return {
        "lifecycle.mmd": mermaid_text(),
        "lifecycle.dot": dot_text(),
        "README.md": readme_text(),
    }


def stale_files(out: Path) -> list[Path]:
    """The generated files under ``out`` that are missing or differ from the table.

    Args:
        out: the directory holding the committed files.

    Returns:
        The paths of the stale files (empty when all are fresh).
    """
    stale = []
    for name, text in generated_files().items():
        path = out / name
        if not path.is_file() or path.read_bytes() != text.encode("utf-8"):
            stale.append(path)
    return stale


def write_files(out: Path) -> list[Path]:
    """Write the generated files under ``out``, leaving files that are already fresh untouched.

    Args:
        out: the directory to write to (created if missing).

    Returns:
        The paths that were written.
    """
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for name, text in generated_files().items():
        path = out / name
        data = text.encode("utf-8")
        if not path.is_file() or path.read_bytes() != data:
            path.write_bytes(data)
            written.append(path)
    return written


def _shown(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


def main(argv: Sequence[str] | None = None) -> int:
    """Regenerate (or, with ``--check``, verify) the statechart files.

    Args:
        argv: the command-line arguments (default: ``sys.argv[1:]``).

    Returns:
        The exit status: 0 on success, 1 when ``--check`` found stale files.
    """
    parser = argparse.ArgumentParser(
        prog=COMMAND,
        description="Generate the lifecycle diagrams and README from pyworker/_lifecycle.py.",
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        metavar="DIR",
        help=f"directory of the generated files (default: {DEFAULT_OUT})",
    )
    parser.add_argument(
        "--check",
        action="store_true",
        help="write nothing; exit 1 if any generated file is missing or stale",
    )
    args = parser.parse_args(argv)
    out: Path = DEFAULT_OUT if args.out is None else args.out
    fix = COMMAND if args.out is None else f"{COMMAND} --out {args.out}"
    if args.check:
        stale = stale_files(out)
        for path in stale:
            print(
                f"{_shown(path)} is stale: it does not match the lifecycle table in "
                f"pyworker/_lifecycle.py. Regenerate it with: {fix}",
                file=sys.stderr,
            )
        return 1 if stale else 0
    for path in write_files(out):
        print(f"wrote {_shown(path)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
