"""comfyui: image generation through ComfyUI's own HTTP API.

One proxied route, ``POST /generate``, takes either payload form (see :mod:`._workflow`):

* text to image: ``{"prompt": str, "width": 512, "height": 512, "steps": 20, "seed": int,
  "negative_prompt": str, "cfg": 7.0, "sampler_name": "euler", "scheduler": "normal",
  "batch_size": 1}`` (only ``prompt`` is required; width and height 16-16384 in steps of 8,
  steps 1-1000, seed 0..2^64-1, random when absent), run with the checkpoint named by
  ``COMFY_MODEL``;
* a custom workflow: ``{"workflow": {node_id: {"class_type": str, "inputs": {...}}}}`` in
  ComfyUI's API format.

and answers ``{"prompt_id", "images": [{"filename", "subfolder", "type", "content_type",
"data"}], "timings": {"queued_s", "run_s", "total_s"}}`` with each image base64-encoded
(see :mod:`._run` for the errors, the timeout and what happens when the client leaves early).

Workload: pixels and sampler steps, normalised so that a 1024 x 1024, 28-step image weighs 200
units (:func:`image_workload`). Once the prompt has run, the same formula over the steps ComfyUI
reported running on its websocket (none for nodes it took from its cache) is the request's
actual workload, and the benchmark's (:mod:`._progress`); without the websocket the estimate
stands. ComfyUI runs one prompt at a time, so the worker sends it one request at a time. Its
readiness is the ``To see the GUI go to:`` log line; its health route is ``GET /system_stats``
(ComfyUI has no ``/health``). The demo model server is the fake in :mod:`backends.comfyui.fake`.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from functools import partial

from pyworker import Backend, DemoServer, Endpoint, LogAction, LogRule

from ._run import run_prompt
from ._settings import RunSettings
from ._workflow import (
    DEFAULT_CHECKPOINT,
    STANDARD_WORKLOAD,
    PromptJob,
    actual_workload,
    benchmark_payload,
    checkpoint,
    image_workload,
    parse_generate,
    text_to_image_workflow,
    workflow_workload,
)

__all__ = [
    "DEFAULT_CHECKPOINT",
    "LOG_RULES",
    "STANDARD_WORKLOAD",
    "PromptJob",
    "RunSettings",
    "actual_workload",
    "backend_for",
    "benchmark_payload",
    "image_workload",
    "make_backend",
    "parse_generate",
    "run_prompt",
    "text_to_image_workflow",
    "workflow_workload",
]

DEFAULT_PORT = 8188

# ComfyUI logs through the root logger with a bare "%(message)s" format (stderr), so its own
# lines and the tracebacks it prints start at the start of the line; the rules are anchored
# there. A client's text reaches the log only inside its lines, when a workflow fails
# validation (the value quoted, then the error dict's repr):
#     Failed to validate prompt for output 9:
#     * CheckpointLoaderSimple 4:
#       - Value not in list: ckpt_name: 'CUDA out of memory' not in ['sd15.safetensors']
#     invalid prompt: {'type': 'prompt_outputs_failed_validation', 'message': …}
LOG_RULES: tuple[LogRule, ...] = (
    # A rejected workflow's lines: nothing about the server, whatever they quote.
    LogRule(action=LogAction.IGNORE, substring="invalid prompt: ", pattern=r"invalid prompt: "),
    LogRule(action=LogAction.IGNORE, substring=" - ", pattern=r" +- "),
    # "To see the GUI go to: http://0.0.0.0:8188" (one per --listen address, https with TLS).
    LogRule(
        action=LogAction.MODEL_LOADED,
        substring="To see the GUI go to:",
        pattern=r"To see the GUI go to: https?://",
    ),
    # Fatal at start-up: the port is taken (current wording, then the older traceback's),
    # or torch has no usable GPU (a traceback's last line):
    #     Port 8188 is already in use on address 0.0.0.0. Please close the other application …
    #     OSError: [Errno 98] error while attempting to bind on address ('0.0.0.0', 8188): …
    #     AssertionError: Torch not compiled with CUDA enabled
    #     RuntimeError: Found no NVIDIA driver on your system. Please check that you have …
    LogRule(
        action=LogAction.MODEL_ERROR,
        substring="is already in use on address",
        pattern=r"Port \d+ is already in use on address ",
    ),
    LogRule(
        action=LogAction.MODEL_ERROR,
        substring="OSError: [Errno 98]",
        pattern=r"OSError: \[Errno 98\]",
    ),
    LogRule(
        action=LogAction.MODEL_ERROR,
        substring="AssertionError: Torch not compiled with CUDA enabled",
        pattern=r"AssertionError: Torch not compiled with CUDA enabled",
    ),
    LogRule(
        action=LogAction.MODEL_ERROR,
        substring="Found no NVIDIA driver on your system",
        pattern=r"(?:RuntimeError: )?Found no NVIDIA driver on your system",
    ),
    # Per prompt, not fatal: the prompt's own answer carries the error; the server goes on.
    #     !!! Exception during processing !!! CUDA out of memory. Tried to allocate …
    #        0.1 seconds (IMPORT FAILED): /ComfyUI/custom_nodes/broken-pack
    LogRule(
        action=LogAction.INFO,
        substring="!!! Exception during processing !!!",
        pattern=r"!!! Exception during processing !!!",
    ),
    LogRule(
        action=LogAction.INFO,
        substring="(IMPORT FAILED)",
        pattern=r" *[\d.]+ seconds \(IMPORT FAILED\): ",
    ),
)
"""What ComfyUI's log lines mean."""


def _demo_argv(port: int, log_path: str) -> list[str]:
    return [
        sys.executable,
        "-u",
        "-m",
        "backends.comfyui.fake",
        "--port",
        str(port),
        "--log",
        log_path,
    ]


def backend_for(
    ckpt_name: str = DEFAULT_CHECKPOINT, run_settings: RunSettings | None = None
) -> Backend:
    """The backend whose default workflow loads ``ckpt_name``, following prompts as
    ``run_settings`` say (default: :class:`RunSettings`'s defaults)."""
    return Backend(
        name="comfyui",
        model_server_url=f"http://127.0.0.1:{DEFAULT_PORT}",
        endpoints=(
            Endpoint(
                route="/generate",
                parse=partial(parse_generate, ckpt_name=ckpt_name),
                benchmark_payload=benchmark_payload,
                run=partial(run_prompt, settings=run_settings or RunSettings()),
            ),
        ),
        benchmark_route="/generate",
        log_rules=LOG_RULES,
        allow_parallel_requests=False,
        health_path="/system_stats",
        model_id=ckpt_name,
        demo=DemoServer(
            argv=_demo_argv,
            examples=(("/generate", {"prompt": "a cat", "width": 512, "height": 512, "steps": 8}),),
        ),
    )


def make_backend(env: Mapping[str, str]) -> Backend:
    """The backend as the environment configures it: ``COMFY_MODEL``, ``COMFY_PROMPT_TIMEOUT``,
    ``COMFY_MAX_OUTPUT_BYTES``, ``COMFY_USE_WEBSOCKET``."""
    return backend_for(checkpoint(env), RunSettings.from_env(env))
