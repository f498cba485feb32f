"""The operator's guide to the lifecycle (``statecharts/README.md``), written from the table.

Every state is described from its ``StateInfo``, in the words an operator needs (what it does to
requests and sessions, when reports go out, how it shows, what to do about it), with the
Mermaid diagram embedded and every transition listed; for :mod:`pyworker._statecharts`.
"""

from __future__ import annotations

from collections.abc import Sequence

from ._lifecycle import (
    INITIAL,
    STATES,
    TRANSITIONS,
    Effect,
    ReportPolicy,
    Service,
    StateInfo,
    Transition,
)
from ._statechart_diagrams import final_states, mermaid_text, row_label

COMMAND = "python -m pyworker._statecharts"
"""The command that regenerates the files (quoted in the files and in ``--check`` messages)."""


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
    finals = final_states()
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
            f"`{row_label(row)}` from {_code_list([s.value for s in row.sources])}"
            for row in TRANSITIONS
            if row.dest is info.state
        ]
        left = [
            f"`{row_label(row)}` → `{row.dest.value}`"
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
