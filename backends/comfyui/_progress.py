"""What a prompt really ran, as ComfyUI's websocket tells it: nodes executed, sampler steps.

The workload of an image is its pixels times its sampler steps (:mod:`._workflow`); the steps
asked for are not always the steps run. A node ComfyUI finds in its cache (the same inputs as
before: a prompt sent twice, a changed save prefix) runs nothing, and a sampler reports each
step it runs (``progress``: ``value`` of ``max``, per node). So the actual workload is the cost
formula over the workflow's pixels and the steps the ``progress`` events counted, and nothing at
all when every node came from the cache.

Only a websocket that was open before the prompt was submitted, and that saw it end, has seen
every event: anything less (no websocket, or one that closed early) leaves the estimate
standing.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import attrs

from ._workflow import actual_workload


@attrs.define(eq=False)
class Progress:
    """The events of one prompt, counted (feed them with :meth:`event`).

    Attributes:
        watching: the websocket was open before the prompt was submitted.
        lost: the websocket closed (or failed) before the prompt ended.
        ended: the prompt's end was seen (``execution_success``, or ``executing`` with no
            node, which builds before 2025 sent instead).
        executed: nodes ComfyUI ran (``executing``), cached ones left out.
        cached: nodes ComfyUI took from its cache (``execution_cached``).
        steps: each node's sampler steps run: the highest ``progress`` value it reported.
    """

    watching: bool = False
    lost: bool = False
    ended: bool = False
    executed: set[str] = attrs.field(factory=set)
    cached: set[str] = attrs.field(factory=set)
    steps: dict[str | None, int] = attrs.field(factory=dict)

    def event(self, kind: object, data: Mapping[str, Any], prompt_id: str) -> bool:
        """Count one event of the websocket; returns whether it ends the prompt.

        Events of other prompts are left out. Builds before 2024 sent ``progress`` without a
        ``prompt_id``: taken as ours, since ComfyUI runs one prompt at a time and this
        websocket's client id is this prompt's alone.
        """
        ours = data.get("prompt_id")
        if ours != prompt_id and not (ours is None and kind == "progress"):
            return False
        if kind == "progress":
            node, value = data.get("node"), data.get("value")
            counted = (node is None or isinstance(node, str)) and node not in self.cached
            if counted and isinstance(value, int) and not isinstance(value, bool) and value > 0:
                self.steps[node] = max(self.steps.get(node, 0), value)
        elif kind == "executing":
            node = data.get("node")
            if node is None:
                self.ended = True
            elif isinstance(node, str):
                self.executed.add(node)
        elif kind == "execution_cached":
            nodes = data.get("nodes")
            if isinstance(nodes, list):
                self.cached.update(n for n in nodes if isinstance(n, str))
        elif kind == "execution_success":
            self.ended = True
        return self.ended or kind in {"execution_error", "execution_interrupted"}

    @property
    def complete(self) -> bool:
        """Whether every event of the prompt was seen."""
        return self.watching and self.ended and not self.lost

    def actual(self, workflow: Mapping[str, Any]) -> float | None:
        """The workload the prompt ran, or None when not every event was seen."""
        if not self.complete:
            return None
        if not self.executed:
            return 0.0  # all of it came from the cache
        return actual_workload(workflow, sum(self.steps.values()))
