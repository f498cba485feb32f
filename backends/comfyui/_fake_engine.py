"""The fake ComfyUI's prompt machinery: queue, one executor, history, output files, events.

Like ComfyUI: a submitted prompt is validated and queued; one worker task runs prompts one at a
time in queue order (``number``, ``front`` first); running a prompt walks its nodes (sampler
steps take time, scaled by the image size), reuses cached node outputs from the previous prompt,
reports progress on the websocket of the prompt's ``client_id``, writes its history entry when
done, and only then sends ``executing {"node": null}``. Closing an HTTP connection cancels
nothing; only ``POST /interrupt`` (checked between steps and nodes) and queue deletes do.
"""

from __future__ import annotations

import copy
import itertools
import json
import posixpath
import random
import struct
import time
import uuid
from collections.abc import Callable, Mapping
from typing import Any

import attrs
import trio

from backends._fakekit import Faults

from ._fake_nodes import NodeClass, catalogue
from ._fake_png import color_from_int, color_from_seed, encode_png
from ._fake_validation import execution_order, validate_prompt

MAXIMUM_HISTORY_SIZE = 10000
_WS_BUFFER = 10_000
"""Events buffered per websocket; a client that reads none of them loses the excess."""
_OVERHEAD_STEPS = 6.57 / 0.61
"""The fixed cost of a prompt (decoding, saving) in sampler-step equivalents: the workload
formula's ``0.61 · steps + 6.57``, so the fake's speed is proportional to the workload."""


def now_ms() -> int:
    """ComfyUI's timestamps: wall-clock milliseconds."""
    return int(time.time() * 1000)


@attrs.frozen(kw_only=True)
class EngineSettings:
    """How the fake runs prompts.

    Attributes:
        checkpoints: the installed checkpoint files.
        step_time: seconds per sampler step for one 512 x 512 image (larger images and
            batches take proportionally longer, per the workload formula).
        node_failure_rate: fraction of prompts whose sampler raises (``execution_error``).
        fail_on_text: prompts with a ``CLIPTextEncode`` text containing this raise too
            (a deterministic trigger for tests).
        previews: send binary preview frames after each sampler step.
        seed: seeds the failure draws.
    """

    checkpoints: tuple[str, ...]
    step_time: float = 0.005
    node_failure_rate: float = 0.0
    fail_on_text: str | None = None
    previews: bool = False
    seed: int = 0


@attrs.define(kw_only=True)
class Stats:
    """Counters served by the fake-only ``GET /stats``.

    Attributes:
        submitted: prompts accepted into the queue.
        rejected: prompts refused by validation (400).
        completed: prompts that ran to success.
        failed: prompts that ended with ``execution_error``.
        interrupted: prompts stopped by ``POST /interrupt``.
        deleted: pending prompts removed by ``POST /queue``.
        interrupt_requests: ``POST /interrupt`` calls.
        errors: requests answered 500 (a body that is not JSON, ``--error-rate``).
        steps: sampler steps run.
        max_queue_remaining: the most prompts held at once (running + pending).
    """

    submitted: int = 0
    rejected: int = 0
    completed: int = 0
    failed: int = 0
    interrupted: int = 0
    deleted: int = 0
    interrupt_requests: int = 0
    errors: int = 0
    steps: int = 0
    max_queue_remaining: int = 0


@attrs.frozen(kw_only=True)
class QueueItem:
    """A queued prompt: ``[number, prompt_id, prompt, extra_data, outputs_to_execute]``."""

    number: float
    prompt_id: str
    prompt: dict[str, Any]
    extra_data: dict[str, Any]
    outputs: tuple[str, ...]
    sequence: int

    def wire(self) -> list[Any]:
        """The five-element list ``/queue`` and ``/history`` show."""
        return [self.number, self.prompt_id, self.prompt, self.extra_data, list(self.outputs)]

    @property
    def client_id(self) -> str | None:
        client = self.extra_data.get("client_id")
        return client if isinstance(client, str) else None


@attrs.frozen(kw_only=True)
class OutputFile:
    """An image a prompt saved (made on demand by ``/view``)."""

    width: int
    height: int
    rgb: tuple[int, int, int]
    prompt_json: str

    def png(self) -> bytes:
        """The file's bytes."""
        return encode_png(self.width, self.height, self.rgb, {"prompt": self.prompt_json})


@attrs.frozen(kw_only=True)
class _Images:
    """The fake's image tensors: a size, a batch, and where the colours come from."""

    width: int
    height: int
    batch: int
    seed: int | None = None
    color: int | None = None

    def rgb(self, index: int) -> tuple[int, int, int]:
        if self.color is not None:
            return color_from_int(self.color)
        return color_from_seed(self.seed or 0, index)


class _Interrupted(Exception):
    pass


class _NodeFailure(Exception):
    pass


@attrs.define(eq=False)
class Hub:
    """The websockets, by client id; events go to one client or to all."""

    _sockets: dict[int, tuple[str, trio.MemorySendChannel[str | bytes]]] = attrs.field(factory=dict)
    _tokens: itertools.count[int] = attrs.field(factory=itertools.count)

    def connect(self, sid: str) -> tuple[int, trio.MemoryReceiveChannel[str | bytes]]:
        """Register a websocket of client ``sid``; returns its token and message channel."""
        send, receive = trio.open_memory_channel[str | bytes](_WS_BUFFER)
        token = next(self._tokens)
        self._sockets[token] = (sid, send)
        return token, receive

    def disconnect(self, token: int) -> None:
        """Forget a websocket."""
        entry = self._sockets.pop(token, None)
        if entry is not None:
            entry[1].close()

    def send(self, event: str, data: Mapping[str, Any], sid: str | None = None) -> None:
        """Send a JSON event to client ``sid``'s sockets, or to every socket when None."""
        self._put(json.dumps({"type": event, "data": data}), sid)

    def send_to(self, token: int, event: str, data: Mapping[str, Any]) -> None:
        """Send a JSON event to one socket."""
        entry = self._sockets.get(token)
        if entry is not None:
            self._offer(entry[1], json.dumps({"type": event, "data": data}))

    def send_bytes(self, data: bytes, sid: str | None) -> None:
        """Send a binary frame (a preview)."""
        self._put(data, sid)

    def _put(self, message: str | bytes, sid: str | None) -> None:
        for socket_sid, channel in list(self._sockets.values()):
            if sid is None or socket_sid == sid:
                self._offer(channel, message)

    @staticmethod
    def _offer(channel: trio.MemorySendChannel[str | bytes], message: str | bytes) -> None:
        try:
            channel.send_nowait(message)
        except (trio.WouldBlock, trio.ClosedResourceError, trio.BrokenResourceError):
            pass  # a client that does not read loses events, as with a full socket buffer


@attrs.define(eq=False)
class Engine:
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
                    raise _Interrupted
                output, ui = await self._run_node(
                    item, node_id, node, inputs, fail=node_id == fail_node
                )
            except _Interrupted:
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
            except _NodeFailure as exc:
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

    # -- nodes --------------------------------------------------------------------------
    async def _run_node(
        self,
        item: QueueItem,
        node_id: str,
        node: dict[str, Any],
        inputs: dict[str, Any],
        fail: bool,
    ) -> tuple[Any, dict[str, Any] | None]:
        """Run one node: its outputs (a tuple, indexed by links) and its UI output."""
        kind = node["class_type"]
        if fail and kind != "KSampler":
            raise _NodeFailure("fake node failure (--node-failure-rate)")
        if kind == "CheckpointLoaderSimple":
            name = inputs["ckpt_name"]
            if name not in self._loaded:
                self._loaded.add(name)
                self.log("model weight dtype torch.float16, manual cast: None")
                self.log("model_type EPS")
            return (f"model:{name}", f"clip:{name}", f"vae:{name}"), None
        if kind == "CLIPTextEncode":
            return (f"cond:{inputs['text']}",), None
        if kind == "EmptyLatentImage":
            return (_Images(**_size(inputs)),), None
        if kind == "EmptyImage":
            return (_Images(**_size(inputs), color=inputs["color"]),), None
        if kind == "KSampler":
            latent: _Images = inputs["latent_image"]
            await self._sample(item, node_id, latent, int(inputs["steps"]), fail)
            return (attrs.evolve(latent, seed=int(inputs["seed"])),), None
        if kind == "VAEDecode":
            images: _Images = inputs["samples"]
            await self._work(self._step_seconds(images) * _OVERHEAD_STEPS)
            return (images,), None
        if kind in {"SaveImage", "PreviewImage"}:
            return (), {"images": self._save(item, kind, inputs)}
        raise _NodeFailure(f"node {kind} cannot run in the fake")

    def _step_seconds(self, images: _Images) -> float:
        tiles = images.width * images.height * images.batch / (512 * 512)
        return self.settings.step_time * (175 * tiles + 85) / 260

    async def _work(self, seconds: float) -> None:
        """Spend ``seconds``, stopping early for an interrupt."""
        with trio.move_on_after(seconds):
            await self._interrupt.wait()
        if self._interrupt.is_set():
            raise _Interrupted

    async def _sample(
        self, item: QueueItem, node_id: str, latent: _Images, steps: int, fail: bool
    ) -> None:
        settings = self.settings
        per_step = self._step_seconds(latent)
        client = item.client_id
        started = trio.current_time()
        for step in range(steps):
            if fail and step == steps // 2:
                raise _NodeFailure("fake node failure (--node-failure-rate)")
            await self.faults.fail_point(
                step,
                on_crash=self._crashing,
                on_hang=self._hanging,
                hang_until=self._interrupt.wait,
            )
            await self._work(per_step)
            self.stats.steps += 1
            self.hub.send(
                "progress",
                {"value": step + 1, "max": steps, "prompt_id": item.prompt_id, "node": node_id},
                client,
            )
            if settings.previews and client is not None:
                preview = encode_png(8, 8, color_from_seed(step))
                self.hub.send_bytes(struct.pack(">II", 1, 2) + preview, client)
        elapsed = max(trio.current_time() - started, 1e-6)
        self.log(
            f"100%|{'█' * 10}| {steps}/{steps} [00:{int(elapsed):02d}<00:00, "
            f"{steps / elapsed:6.2f}it/s]"
        )

    def _crashing(self, step: int) -> None:
        self.log(f"fake crash after {step} sampler steps (--crash-after)")

    def _hanging(self, step: int) -> None:
        self.log(f"sampler stuck after {step} steps (--hang-after)")

    def _save(self, item: QueueItem, kind: str, inputs: dict[str, Any]) -> list[dict[str, str]]:
        images: _Images = inputs["images"]
        if kind == "SaveImage":
            kind_dir = "output"
            prefix = str(inputs.get("filename_prefix") or "ComfyUI")
        else:
            kind_dir = "temp"
            prefix = "ComfyUI_temp_" + "".join(
                random.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(5)
            )
        subfolder, base = posixpath.split(prefix)
        if subfolder.startswith("/") or ".." in subfolder.split("/"):
            raise _NodeFailure(f"Saving image outside the output folder is not allowed: {prefix}")
        prompt_json = json.dumps(item.prompt)
        saved = []
        for index in range(images.batch):
            counter = self._counters.get((subfolder, base), 0) + 1
            self._counters[(subfolder, base)] = counter
            filename = f"{base}_{counter:05}_.png"
            self.files[(kind_dir, subfolder, filename)] = OutputFile(
                width=images.width,
                height=images.height,
                rgb=images.rgb(index),
                prompt_json=prompt_json,
            )
            saved.append({"filename": filename, "subfolder": subfolder, "type": kind_dir})
        return saved


def _queue_order(item: QueueItem) -> tuple[float, int]:
    return (item.number, item.sequence)


def _canonical_uuid(value: object) -> bool:
    if not isinstance(value, str):
        return False
    try:
        return str(uuid.UUID(value)) == value
    except ValueError:
        return False


def _size(inputs: Mapping[str, Any]) -> dict[str, int]:
    return {
        "width": int(inputs["width"]),
        "height": int(inputs["height"]),
        "batch": int(inputs["batch_size"]),
    }


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
