"""What the fake ComfyUI's engine is given and keeps: its settings, its counters, a queued
prompt and a saved image."""

from __future__ import annotations

from typing import Any

import attrs

from ._fake_png import encode_png


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
