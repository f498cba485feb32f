"""The fake ComfyUI's prompt machinery: queue, one executor, history, output files, events.

Like ComfyUI: a submitted prompt is validated and queued; one worker task runs prompts one at a
time in queue order (``number``, ``front`` first); running a prompt walks its nodes (sampler
steps take time, scaled by the image size), reuses cached node outputs from the previous prompt,
reports progress on the websocket of the prompt's ``client_id``, writes its history entry when
done, and only then sends ``executing {"node": null}``. Closing an HTTP connection cancels
nothing; only ``POST /interrupt`` (checked between steps and nodes) and queue deletes do.

What each node does when it runs is in :mod:`._fake_node_work`; the websockets are
:mod:`._fake_hub`'s.
"""

from __future__ import annotations

import copy
import itertools
import json
import random
import time
import uuid
from collections.abc import Callable, Mapping
from typing import Any

import attrs
import trio

from backends._fakekit import Faults

from ._fake_hub import Hub
from ._fake_node_work import Interrupted, NodeFailure, NodeWork
from ._fake_nodes import NodeClass, catalogue
from ._fake_records import EngineSettings, OutputFile, QueueItem, Stats
from ._fake_validation import execution_order, validate_prompt

MAXIMUM_HISTORY_SIZE = 10000


def now_ms() -> int:
    """ComfyUI's timestamps: wall-clock milliseconds."""
    return int(time.time() * 1000)


@attrs.define(eq=False)
class Engine(NodeWork):
    """The fake's state and its one executor (:meth:`run`).

    Attributes:
        settings: speed, failures, checkpoints.
        log: writes one line of the server's log.
        faults: the samplers' hangs (``--hang-after``) and crashes (``--crash-after``), in
            sampler steps; an interrupt ends a hang.
    """

    settings: EngineSettings
    log: Callable[[str], None]
    faults: Faults = attrs.field(factory=Faults)
    hub: Hub = attrs.field(factory=Hub)
    stats: Stats = attrs.field(factory=Stats)
    classes: dict[str, NodeClass] = attrs.field(init=False)
    history: dict[str, dict[str, Any]] = attrs.field(factory=dict)
    files: dict[tuple[str, str, str], OutputFile] = attrs.field(factory=dict)
    running: QueueItem | None = None
    current_node: str | None = None
    _pending: list[QueueItem] = attrs.field(factory=list)
    _number: int = 0
    _sequence: itertools.count[int] = attrs.field(factory=itertools.count)
    _counters: dict[tuple[str, str], int] = attrs.field(factory=dict)
    _cache: dict[str, tuple[Any, dict[str, Any] | None]] = attrs.field(factory=dict)
    _loaded: set[str] = attrs.field(factory=set)
    _wakeup: trio.Event = attrs.field(factory=trio.Event)
    _interrupt: trio.Event = attrs.field(factory=trio.Event)
    _failures: random.Random = attrs.field(init=False)

    def __attrs_post_init__(self) -> None:
        self.classes = catalogue(self.settings.checkpoints)
        self._failures = random.Random(f"failures:{self.settings.seed}")

    # -- queue --------------------------------------------------------------------------
    @property
    def queue_remaining(self) -> int:
        """Prompts running or pending."""
        return len(self._pending) + (self.running is not None)

    def submit(self, body: object) -> tuple[int, dict[str, Any]]:
        """``POST /prompt``: validate and queue; returns the status and JSON answer."""
        self.log("got prompt")
        if not isinstance(body, dict):
            body = {}
        if "number" in body:
            try:
                number: float = float(body["number"])
            except (TypeError, ValueError):
                number = self._number
        else:
            number = self._number
            if body.get("front"):
                number = -number
            self._number += 1
        if "prompt" not in body:
            self.stats.rejected += 1
            error = {
                "type": "no_prompt",
                "message": "No prompt provided",
                "details": "No prompt provided",
                "extra_info": {},
            }
            return 400, {"error": error, "node_errors": {}}
        prompt_id = body.get("prompt_id")
        if prompt_id is None:
            prompt_id = str(uuid.uuid4())
        elif not _canonical_uuid(prompt_id):
            self.stats.rejected += 1
            error = {
                "type": "invalid_prompt_id",
                "message": "Invalid prompt_id format",
                "details": f"prompt_id must be a valid UUID, got {prompt_id!r}",
                "extra_info": {},
            }
            return 400, {"error": error, "node_errors": {}}
        prompt = copy.deepcopy(body["prompt"])
        verdict = validate_prompt(prompt, self.classes)
        for line in verdict.log_lines:
            self.log(line)
        if verdict.error is not None:
            self.stats.rejected += 1
            self.log(f"invalid prompt: {verdict.error}")
            return 400, {"error": verdict.error, "node_errors": verdict.node_errors}
        extra = body.get("extra_data")
        extra_data: dict[str, Any] = dict(extra) if isinstance(extra, dict) else {}
        if "client_id" in body:
            extra_data["client_id"] = body["client_id"]
        extra_data["create_time"] = now_ms()
        item = QueueItem(
            number=number,
            prompt_id=prompt_id,
            prompt=prompt,
            extra_data=extra_data,
            outputs=verdict.outputs,
            sequence=next(self._sequence),
        )
        self._pending.append(item)
        self.stats.submitted += 1
        self._queue_changed()
        self._wakeup.set()
        return 200, {"prompt_id": prompt_id, "number": number, "node_errors": verdict.node_errors}

    def queue(self) -> dict[str, Any]:
        """``GET /queue``."""
        running = [self.running.wire()] if self.running is not None else []
        pending = [item.wire() for item in sorted(self._pending, key=_queue_order)]
        return {"queue_running": running, "queue_pending": pending}

    def change_queue(self, body: object) -> None:
        """``POST /queue``: ``{"delete": [ids]}`` removes pending prompts, ``{"clear": true}``
        all of them."""
        if not isinstance(body, dict):
            return
        removed = 0
        if body.get("clear"):
            removed += len(self._pending)
            self._pending.clear()
        delete = body.get("delete")
        if isinstance(delete, list):
            doomed = {d for d in delete if isinstance(d, str)}
            kept = [item for item in self._pending if item.prompt_id not in doomed]
            removed += len(self._pending) - len(kept)
            self._pending = kept
        if removed:
            self.stats.deleted += removed
            self._queue_changed()

    def interrupt(self, body: object) -> None:
        """``POST /interrupt``: stop the running prompt (only if it is ``prompt_id``, if given)
        at its next check."""
        self.stats.interrupt_requests += 1
        prompt_id = body.get("prompt_id") if isinstance(body, dict) else None
        if prompt_id:
            if self.running is not None and self.running.prompt_id == prompt_id:
                self.log(f"Interrupting prompt {prompt_id}")
                self._interrupt.set()
            else:
                self.log(f"Prompt {prompt_id} is not currently running, skipping interrupt")
            return
        self.log("Global interrupt (no prompt_id specified)")
        if self.running is not None:
            self._interrupt.set()

    def get_history(self, max_items: int | None = None, offset: int = -1) -> dict[str, Any]:
        """``GET /history``: the oldest-first window ComfyUI returns."""
        if offset < 0 and max_items is not None:
            offset = len(self.history) - max_items
        offset = max(offset, 0)
        keys = list(self.history)[offset:]
        if max_items is not None:
            keys = keys[:max_items]
        return {k: self.history[k] for k in keys}

    def change_history(self, body: object) -> None:
        """``POST /history``: ``{"delete": [ids]}`` or ``{"clear": true}``."""
        if not isinstance(body, dict):
            return
        if body.get("clear"):
            self.history.clear()
        delete = body.get("delete")
        if isinstance(delete, list):
            for prompt_id in delete:
                if isinstance(prompt_id, str):
                    self.history.pop(prompt_id, None)

    def status_data(self, sid: str | None = None) -> dict[str, Any]:
        """The ``status`` event's data."""
        data: dict[str, Any] = {"status": {"exec_info": {"queue_remaining": self.queue_remaining}}}
        if sid is not None:
            data["sid"] = sid
        return data

    def _queue_changed(self) -> None:
        self.stats.max_queue_remaining = max(self.stats.max_queue_remaining, self.queue_remaining)
        self.hub.send("status", self.status_data())

    # -- the executor -------------------------------------------------------------------
    async def run(self) -> None:
        """Run queued prompts one at a time, forever."""
        while True:
            while not self._pending:
                await self._wakeup.wait()
                self._wakeup = trio.Event()
            item = min(self._pending, key=_queue_order)
            self._pending.remove(item)
            self.running = item
            self._queue_changed()
            try:
                await self._execute(item)
            finally:
                self.running = None
                self.current_node = None
            self._queue_changed()

    async def _execute(self, item: QueueItem) -> None:
        started = trio.current_time()
        prompt_id, client = item.prompt_id, item.client_id
        messages: list[list[Any]] = []
        self._interrupt = trio.Event()  # ComfyUI clears the flag as each prompt starts

        def add_message(event: str, data: dict[str, Any], *, broadcast: bool) -> None:
            data = {**data, "timestamp": now_ms()}
            messages.append([event, data])
            if client is not None or broadcast:
                self.hub.send(event, data, client)

        add_message("execution_start", {"prompt_id": prompt_id}, broadcast=False)
        order = execution_order(item.prompt, item.outputs)
        signatures = _signatures(item.prompt, order)
        cached = [n for n in order if signatures[n] in self._cache]
        add_message("execution_cached", {"nodes": cached, "prompt_id": prompt_id}, broadcast=False)
        fail_node = self._failing_node(item.prompt, order, cached)
        results: dict[str, Any] = {}
        ui_outputs: dict[str, dict[str, Any]] = {}
        executed: list[str] = []
        status = "success"
        for node_id in order:
            node = item.prompt[node_id]
            if node_id in cached:
                results[node_id], ui = self._cache[signatures[node_id]]
                if ui is not None:
                    ui_outputs[node_id] = ui
                    self._send_executed(node_id, ui, prompt_id, client)
                continue
            self.current_node = node_id
            self.hub.send(
                "executing",
                {"node": node_id, "display_node": node_id, "prompt_id": prompt_id},
                client,
            )
            inputs = _resolve(node["inputs"], results)
            try:
                if self._interrupt.is_set():
                    raise Interrupted
                output, ui = await self._run_node(
                    item, node_id, node, inputs, fail=node_id == fail_node
                )
            except Interrupted:
                self.log("Processing interrupted")
                self.stats.interrupted += 1
                add_message(
                    "execution_interrupted",
                    {
                        "prompt_id": prompt_id,
                        "node_id": node_id,
                        "node_type": node["class_type"],
                        "executed": list(executed),
                    },
                    broadcast=True,
                )
                status = "error"
                break
            except NodeFailure as exc:
                self._log_failure(node["class_type"], str(exc))
                self.stats.failed += 1
                add_message(
                    "execution_error",
                    {
                        "prompt_id": prompt_id,
                        "node_id": node_id,
                        "node_type": node["class_type"],
                        "executed": list(executed),
                        "exception_message": str(exc),
                        "exception_type": "RuntimeError",
                        "traceback": ['  File "execution.py", line 1, in execute\n'],
                        "current_inputs": {},
                        "current_outputs": list(executed),
                    },
                    broadcast=False,
                )
                status = "error"
                break
            results[node_id] = output
            self._cache[signatures[node_id]] = (output, ui)
            executed.append(node_id)
            if ui is not None:
                ui_outputs[node_id] = ui
                self._send_executed(node_id, ui, prompt_id, client)
        # Like ComfyUI's cache: outputs of nodes this prompt did not have are dropped.
        wanted = {signatures[n] for n in order}
        self._cache = {k: v for k, v in self._cache.items() if k in wanted}
        if status == "success":
            self.stats.completed += 1
            add_message("execution_success", {"prompt_id": prompt_id}, broadcast=False)
        self._record(item, ui_outputs, status, messages)
        if client is not None:
            self.hub.send("executing", {"node": None, "prompt_id": prompt_id}, client)
        self.log(f"Prompt executed in {trio.current_time() - started:.2f} seconds")

    def _failing_node(
        self, prompt: Mapping[str, Any], order: list[str], cached: list[str]
    ) -> str | None:
        """The node where an injected failure strikes this prompt (None: no failure): its
        first sampler that runs (half way through), else its first output node that runs."""
        rate, trigger = self.settings.node_failure_rate, self.settings.fail_on_text
        triggered = trigger is not None and any(
            prompt[n]["class_type"] == "CLIPTextEncode"
            and trigger in str(prompt[n]["inputs"].get("text", ""))
            for n in order
        )
        if not triggered and (not rate or self._failures.random() >= rate):
            return None
        running = [n for n in order if n not in cached]
        for candidates in ({"KSampler"}, {"SaveImage", "PreviewImage"}):
            for node_id in running:
                if prompt[node_id]["class_type"] in candidates:
                    return node_id
        return None

    def _record(
        self,
        item: QueueItem,
        ui_outputs: dict[str, dict[str, Any]],
        status: str,
        messages: list[list[Any]],
    ) -> None:
        while len(self.history) >= MAXIMUM_HISTORY_SIZE:
            self.history.pop(next(iter(self.history)))
        self.history[item.prompt_id] = {
            "prompt": item.wire(),
            "outputs": ui_outputs,
            "status": {
                "status_str": status,
                "completed": status == "success",
                "messages": messages,
            },
            "meta": {
                node_id: {
                    "node_id": node_id,
                    "display_node": node_id,
                    "parent_node": None,
                    "real_node_id": node_id,
                }
                for node_id in ui_outputs
            },
        }

    def _send_executed(
        self, node_id: str, ui: dict[str, Any], prompt_id: str, client: str | None
    ) -> None:
        self.hub.send(
            "executed",
            {"node": node_id, "display_node": node_id, "output": ui, "prompt_id": prompt_id},
            client,
        )

    def _log_failure(self, class_type: str, message: str) -> None:
        self.log(f"!!! Exception during processing !!! {message}")
        self.log("Traceback (most recent call last):")
        self.log('  File "/ComfyUI/execution.py", line 496, in execute')
        self.log(f"    output_data = get_output_data({class_type}, input_data_all)")
        self.log(f"RuntimeError: {message}")


def _queue_order(item: QueueItem) -> tuple[float, int]:
    return (item.number, item.sequence)


def _canonical_uuid(value: object) -> bool:
    if not isinstance(value, str):
        return False
    try:
        return str(uuid.UUID(value)) == value
    except ValueError:
        return False


def _resolve(inputs: Mapping[str, Any], results: Mapping[str, Any]) -> dict[str, Any]:
    """Inputs with each link replaced by the linked node's output."""
    resolved = {}
    for name, value in inputs.items():
        if isinstance(value, list) and len(value) == 2:
            resolved[name] = results[str(value[0])][value[1]]
        else:
            resolved[name] = value
    return resolved


def _signatures(prompt: Mapping[str, Any], order: list[str]) -> dict[str, str]:
    """Each node's cache key: its class and inputs, with links replaced by the linked node's
    key (so a change anywhere upstream changes it). ``order`` lists dependencies first."""
    keys: dict[str, str] = {}
    for node_id in order:
        node = prompt[node_id]
        inputs = {
            name: (
                ["link", keys[str(value[0])], value[1]]
                if isinstance(value, list) and len(value) == 2
                else value
            )
            for name, value in sorted(node["inputs"].items())
        }
        keys[node_id] = json.dumps([node["class_type"], inputs], sort_keys=True, default=str)
    return keys
