"""Client payloads of the comfyui backend: validation, the default workflow, and workload.

Two forms are accepted on the backend's route:

* **text to image**: ``{"prompt": str, "width": int, "height": int, "steps": int, "seed": int,
  ...}`` fills :func:`text_to_image_workflow`, the classic ComfyUI checkpoint → CLIP encode →
  KSampler → VAE decode → SaveImage graph;
* **custom workflow**: ``{"workflow": {node_id: {"class_type": str, "inputs": {...}}}}``, a graph
  in ComfyUI's API format ("Save (API)" in the UI), passed through as it is.

Both become a :class:`PromptJob` carried in :attr:`pyworker.Job.detail` for the backend's
``run``. Fields the worker can check cheaply are checked here (a 422 names each); everything that
depends on the installed nodes and models (sampler names, checkpoint files, links) is left to
ComfyUI's own validation, whose errors ``run`` relays as a 422 too.
"""

from __future__ import annotations

import random
from collections.abc import Mapping
from typing import Any

import attrs

from pyworker import Fields, Job, json_body

DEFAULT_CHECKPOINT = "v1-5-pruned-emaonly.safetensors"
"""The checkpoint of the default workflow when ``COMFY_MODEL`` is not set."""
DEFAULT_NEGATIVE_PROMPT = "blurry, low quality, watermark, text"
DEFAULT_SIZE = 512
DEFAULT_STEPS = 20
DEFAULT_CFG = 7.0
DEFAULT_SAMPLER = "euler"
DEFAULT_SCHEDULER = "normal"
FILENAME_PREFIX = "pyworker"

MIN_SIZE, MAX_SIZE, SIZE_STEP = 16, 16384, 8
"""ComfyUI's own bounds for ``EmptyLatentImage`` width and height."""
MAX_STEPS = 1000
"""Far above any useful txt2img run (ComfyUI itself allows 10,000)."""
MAX_BATCH = 64
MAX_SEED = 2**64 - 1
MAX_PROMPT_CHARS = 20_000
MAX_NAME_CHARS = 128

TEXT_TO_IMAGE_FIELDS = frozenset(
    {
        "prompt",
        "negative_prompt",
        "width",
        "height",
        "steps",
        "seed",
        "cfg",
        "sampler_name",
        "scheduler",
        "batch_size",
    }
)

# -- workload -------------------------------------------------------------------------------
STANDARD_WORKLOAD = 200.0
"""Workload units of the standard image: 1024 x 1024 pixels, 28 sampler steps."""
_TILE_PIXELS = 512 * 512


def _raw_cost(pixels: float, steps: float) -> float:
    tiles = pixels / _TILE_PIXELS
    return (175.0 * tiles + 85.0) * (0.61 * steps + 6.57)


_STANDARD_RAW = _raw_cost(1024 * 1024, 28)


def image_workload(width: int, height: int, steps: int, batch_size: int = 1) -> float:
    """The workload of generating ``batch_size`` images of ``width`` x ``height`` in ``steps``.

    The formula is the original Vast PyWorker's ComfyUI cost model, a fit of SD-class timings:
    a fixed cost plus one proportional to the number of 512 x 512 tiles, times a fixed cost
    plus one proportional to the sampler steps::

        raw = (175 · tiles + 85) · (0.61 · steps + 6.57),   tiles = width · height · batch / 512²

    normalised so that the standard image (1024², 28 steps, ``raw`` = 18,565.25) weighs
    :data:`STANDARD_WORKLOAD` = 200 units. A 512², 20-step image weighs about 52.6 units.
    Tiles are fractional here (the cost grows smoothly with the pixel count).
    """
    return STANDARD_WORKLOAD * _raw_cost(width * height * batch_size, steps) / _STANDARD_RAW


def _int_input(inputs: Mapping[str, Any], name: str) -> int | None:
    value = inputs.get(name)
    # A list is a link to another node's output: its value is unknown until it runs.
    if isinstance(value, bool) or not isinstance(value, int):
        return None
    return value


def _pixels_and_steps(workflow: Mapping[str, Any]) -> tuple[int | None, int | None]:
    """The largest literal image size and the sum of the literal steps (see below)."""
    pixels: int | None = None
    steps: int | None = None
    for node in workflow.values():
        if not isinstance(node, Mapping):
            continue
        inputs = node.get("inputs")
        class_type = node.get("class_type")
        if not isinstance(inputs, Mapping) or not isinstance(class_type, str):
            continue
        node_steps = _int_input(inputs, "steps")
        if node_steps is not None and node_steps > 0:
            steps = (steps or 0) + node_steps
        if class_type.startswith("Empty"):
            width, height = _int_input(inputs, "width"), _int_input(inputs, "height")
            if width is not None and height is not None and width > 0 and height > 0:
                batch = _int_input(inputs, "batch_size") or 1
                pixels = max(pixels or 0, width * height * max(batch, 1))
    return pixels, steps


def workflow_workload(workflow: Mapping[str, Any]) -> float:
    """Estimate a custom workflow's workload from its image size and sampler steps.

    * pixels: the largest ``width x height x batch_size`` of its ``Empty*`` nodes
      (``EmptyLatentImage``, ``EmptySD3LatentImage``, ``EmptyImage``, ...) with literal sizes;
    * steps: the sum of the literal ``steps`` inputs of all its nodes (``KSampler``,
      ``KSamplerAdvanced``, ``BasicScheduler``, ...): each sampler pass costs its steps over
      roughly that image (hires-fix style graphs run two).

    When neither is known the workflow counts as one standard image
    (:data:`STANDARD_WORKLOAD`); a size without steps costs the size's fixed part only
    (a model-free graph such as ``EmptyImage → SaveImage``); steps without a size are taken
    over a 1024 x 1024 image.
    """
    pixels, steps = _pixels_and_steps(workflow)
    if pixels is None and steps is None:
        return STANDARD_WORKLOAD
    return (
        STANDARD_WORKLOAD
        * _raw_cost(pixels if pixels is not None else 1024 * 1024, steps or 0)
        / _STANDARD_RAW
    )


def actual_workload(workflow: Mapping[str, Any], steps_run: int) -> float:
    """The workload of ``workflow`` once its samplers have run ``steps_run`` steps in all.

    The same formula as the estimate's (:func:`workflow_workload`), over the same pixels
    (a 1024 x 1024 image when the workflow's size is not literal), with the steps ComfyUI
    reported running in place of the steps asked for: fewer when it took a sampler's output
    from its cache, or a node ran a part of them (a ``denoise`` below 1).
    """
    pixels, _ = _pixels_and_steps(workflow)
    size = pixels if pixels is not None else 1024 * 1024
    return STANDARD_WORKLOAD * _raw_cost(size, steps_run) / _STANDARD_RAW


# -- the default workflow -------------------------------------------------------------------
def text_to_image_workflow(
    *,
    prompt: str,
    negative_prompt: str = DEFAULT_NEGATIVE_PROMPT,
    width: int = DEFAULT_SIZE,
    height: int = DEFAULT_SIZE,
    steps: int = DEFAULT_STEPS,
    seed: int = 0,
    cfg: float = DEFAULT_CFG,
    sampler_name: str = DEFAULT_SAMPLER,
    scheduler: str = DEFAULT_SCHEDULER,
    batch_size: int = 1,
    ckpt_name: str = DEFAULT_CHECKPOINT,
) -> dict[str, Any]:
    """ComfyUI's classic text-to-image graph, in API format.

    Node ids follow ComfyUI's default workflow (``3`` KSampler, ``4`` checkpoint, ``5`` latent,
    ``6``/``7`` prompts, ``8`` decode, ``9`` save), so logs and errors read familiarly.
    """
    return {
        "4": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": ckpt_name}},
        "6": {"class_type": "CLIPTextEncode", "inputs": {"text": prompt, "clip": ["4", 1]}},
        "7": {
            "class_type": "CLIPTextEncode",
            "inputs": {"text": negative_prompt, "clip": ["4", 1]},
        },
        "5": {
            "class_type": "EmptyLatentImage",
            "inputs": {"width": width, "height": height, "batch_size": batch_size},
        },
        "3": {
            "class_type": "KSampler",
            "inputs": {
                "seed": seed,
                "steps": steps,
                "cfg": cfg,
                "sampler_name": sampler_name,
                "scheduler": scheduler,
                "denoise": 1.0,
                "model": ["4", 0],
                "positive": ["6", 0],
                "negative": ["7", 0],
                "latent_image": ["5", 0],
            },
        },
        "8": {"class_type": "VAEDecode", "inputs": {"samples": ["3", 0], "vae": ["4", 2]}},
        "9": {
            "class_type": "SaveImage",
            "inputs": {"filename_prefix": FILENAME_PREFIX, "images": ["8", 0]},
        },
    }


@attrs.frozen(kw_only=True)
class PromptJob:
    """What ``run`` submits: the API-format graph, and the seed when the worker chose it.

    Attributes:
        workflow: ``{node_id: {"class_type": ..., "inputs": {...}}}``.
        seed: the default workflow's seed (echoed in the answer); None for custom workflows.
    """

    workflow: dict[str, Any]
    seed: int | None = None


def checkpoint(env: Mapping[str, str]) -> str:
    """The default workflow's checkpoint: ``COMFY_MODEL``, else :data:`DEFAULT_CHECKPOINT`."""
    return env.get("COMFY_MODEL") or DEFAULT_CHECKPOINT


def _size(fields: Fields, name: str) -> Any:
    value = fields.integer(name, default=DEFAULT_SIZE, minimum=MIN_SIZE, maximum=MAX_SIZE)
    if name not in fields.errors and value % SIZE_STEP:
        fields.errors[name] = f"must be a multiple of {SIZE_STEP}"
    return value


def _parse_text_to_image(payload: object, ckpt_name: str) -> Job:
    fields = Fields(payload)
    prompt = fields.string("prompt", max_length=MAX_PROMPT_CHARS)
    negative = fields.string(
        "negative_prompt", default=DEFAULT_NEGATIVE_PROMPT, max_length=MAX_PROMPT_CHARS
    )
    width = _size(fields, "width")
    height = _size(fields, "height")
    steps = fields.integer("steps", default=DEFAULT_STEPS, minimum=1, maximum=MAX_STEPS)
    # Like ComfyUI's "randomize" seed widget; the answer says which seed was used.
    seed = fields.integer("seed", default=None, minimum=0, maximum=MAX_SEED)
    cfg = fields.number("cfg", default=DEFAULT_CFG, minimum=0.0, maximum=100.0)
    # Names only: which samplers and schedulers exist depends on the ComfyUI version, and
    # ComfyUI's own validation names the bad one (relayed as a 422).
    sampler = fields.string("sampler_name", default=DEFAULT_SAMPLER, max_length=MAX_NAME_CHARS)
    scheduler = fields.string("scheduler", default=DEFAULT_SCHEDULER, max_length=MAX_NAME_CHARS)
    batch_size = fields.integer("batch_size", default=1, minimum=1, maximum=MAX_BATCH)
    fields.check()
    if seed is None:
        seed = random.SystemRandom().randrange(2**32)
    workflow = text_to_image_workflow(
        prompt=prompt,
        negative_prompt=negative,
        width=width,
        height=height,
        steps=steps,
        seed=seed,
        cfg=float(cfg),
        sampler_name=sampler,
        scheduler=scheduler,
        batch_size=batch_size,
        ckpt_name=ckpt_name,
    )
    return Job(
        workload=image_workload(width, height, steps, batch_size),
        body=json_body(workflow),
        upstream_path="/prompt",
        detail=PromptJob(workflow=workflow, seed=seed),
    )


# What ComfyUI itself accepts for the literal inputs the workload is computed from
# (``nodes.MAX_RESOLUTION``, the samplers' and latent nodes' input limits): beyond them ComfyUI
# refuses the graph anyway, and the workload arithmetic would overflow.
_INPUT_LIMITS = {"width": MAX_SIZE, "height": MAX_SIZE, "steps": 10_000, "batch_size": 4096}


def check_workflow(workflow: Mapping[str, Any]) -> dict[str, Any]:
    """The structural errors of an API-format graph, by node id (empty when well formed).

    Checks only what ComfyUI needs before its own validation can even run, and what the
    workload is computed from: each node is an object with a non-empty string ``class_type``
    and an object ``inputs``, and its literal ``width``, ``height``, ``steps`` and
    ``batch_size`` are within ComfyUI's own limits.
    """
    errors: dict[str, Any] = {}
    for node_id, node in workflow.items():
        if not isinstance(node, dict):
            errors[node_id] = "must be a node object with class_type and inputs"
            continue
        node_errors: dict[str, str] = {}
        class_type = node.get("class_type")
        if class_type is None:
            node_errors["class_type"] = "missing parameter"
        elif not isinstance(class_type, str) or not class_type:
            node_errors["class_type"] = "must be a non-empty string"
        inputs = node.get("inputs")
        if inputs is None:
            node_errors["inputs"] = "missing parameter"
        elif not isinstance(inputs, dict):
            node_errors["inputs"] = "must be a JSON object"
        else:
            for name, limit in _INPUT_LIMITS.items():
                value = _int_input(inputs, name)
                if value is not None and not 0 <= value <= limit:
                    node_errors[name] = f"must be within 0 and {limit}"
        if node_errors:
            errors[node_id] = node_errors
    return errors


def _parse_workflow(payload: dict[str, Any]) -> Job:
    fields = Fields(payload)
    workflow = fields.obj("workflow")
    for name in sorted(TEXT_TO_IMAGE_FIELDS & payload.keys()):
        fields.errors[name] = "not allowed with workflow (set it inside the workflow)"
    if isinstance(workflow, dict):
        if not workflow:
            fields.errors["workflow"] = "must have at least one node"
        else:
            fields.nested("workflow", check_workflow(workflow))
    fields.check()
    return Job(
        workload=workflow_workload(workflow),
        body=json_body(workflow),
        upstream_path="/prompt",
        detail=PromptJob(workflow=workflow),
    )


def parse_generate(payload: object, ckpt_name: str = DEFAULT_CHECKPOINT) -> Job:
    """Validate a payload of either form and weigh it.

    Args:
        payload: the client's payload.
        ckpt_name: the checkpoint the default (text to image) workflow loads.

    Raises:
        PayloadError: names each bad field (answered 422).
    """
    if not isinstance(payload, dict):
        Fields(payload).check()  # the whole payload is wrong: say only that
        raise AssertionError("unreachable")
    if "workflow" in payload:
        return _parse_workflow(payload)
    return _parse_text_to_image(payload, ckpt_name)


def benchmark_payload(rng: random.Random) -> dict[str, object]:
    """A modest text-to-image request: 512 x 512, 20 steps (about 52.6 workload units)."""
    subjects = ["a red fox", "a lighthouse", "an old bicycle", "a mountain lake", "a teapot"]
    styles = ["in snow", "at dusk", "watercolor", "studio photo", "oil painting"]
    return {
        "prompt": f"{rng.choice(subjects)}, {rng.choice(styles)}",
        "width": 512,
        "height": 512,
        "steps": 20,
        "seed": rng.randrange(2**32),
    }
