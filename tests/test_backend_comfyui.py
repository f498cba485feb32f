"""The comfyui backend: payloads and workload, and the actual workload from what the websocket saw
run (``run`` against the fake, and end-to-end stacks: ``test_backend_comfyui_e2e.py``)."""

from __future__ import annotations

import functools
import random
from typing import Any

import pytest
from fakes import empty_image_workflow

from backends.comfyui import (
    DEFAULT_CHECKPOINT,
    STANDARD_WORKLOAD,
    PromptJob,
    RunSettings,
    image_workload,
    make_backend,
    parse_generate,
    run_prompt,
    text_to_image_workflow,
    workflow_workload,
)
from backends.comfyui._progress import Progress
from backends.comfyui._workflow import actual_workload
from pyworker import LogAction, PayloadError

BACKEND = make_backend({})
"""The backend with every setting at its default."""


# -- payloads and workload ------------------------------------------------------------------
def test_workload_formula() -> None:
    assert image_workload(1024, 1024, 28) == pytest.approx(200.0)
    # (175 + 85) x (0.61 x 20 + 6.57) / 18565.25 x 200
    assert image_workload(512, 512, 20) == pytest.approx(260 * 18.77 / 18565.25 * 200)
    assert image_workload(512, 512, 20, 2) > image_workload(512, 512, 20)
    assert image_workload(512, 512, 40) > image_workload(512, 512, 20)


def test_workflow_workload() -> None:
    graph = text_to_image_workflow(prompt="x", width=768, height=512, steps=30, batch_size=2)
    assert workflow_workload(graph) == pytest.approx(image_workload(768, 512, 30, 2))
    # Model-free: a size and no sampler.
    assert workflow_workload(empty_image_workflow(batch=3)) == pytest.approx(
        image_workload(48, 40, 0, 3)
    )
    # Nothing to go by: one standard image.
    assert workflow_workload({"1": {"class_type": "LoadImage", "inputs": {}}}) == 200.0
    # Steps without a literal size (linked width): over 1024 x 1024.
    linked = text_to_image_workflow(prompt="x", steps=28)
    linked["5"]["inputs"]["width"] = ["10", 0]
    assert workflow_workload(linked) == pytest.approx(200.0)
    # Two sampler passes (hires fix) add their steps; the largest latent counts.
    hires = text_to_image_workflow(prompt="x", width=512, height=512, steps=20)
    hires["10"] = {"class_type": "EmptySD3LatentImage", "inputs": {"width": 1024, "height": 1024}}
    hires["11"] = {"class_type": "KSampler", "inputs": {"steps": 10}}
    assert workflow_workload(hires) == pytest.approx(image_workload(1024, 1024, 30))


def test_parse_text_to_image() -> None:
    job = parse_generate({"prompt": "a fox"})
    assert job.upstream_path == "/prompt"
    assert job.workload == pytest.approx(image_workload(512, 512, 20))
    detail = job.detail
    assert isinstance(detail, PromptJob)
    assert detail.seed is not None
    graph = detail.workflow
    assert graph["4"]["inputs"]["ckpt_name"] == DEFAULT_CHECKPOINT
    assert graph["6"]["inputs"]["text"] == "a fox"
    assert graph["3"]["inputs"]["seed"] == detail.seed
    assert graph["5"]["inputs"] == {"width": 512, "height": 512, "batch_size": 1}
    parse_sdxl = make_backend({"COMFY_MODEL": "sd_xl_base_1.0.safetensors"}).endpoints[0].parse
    payload = {
        "prompt": "a fox",
        "negative_prompt": "blur",
        "width": 1024,
        "height": 768,
        "steps": 28,
        "seed": 2**63,
        "cfg": 5,
        "sampler_name": "dpmpp_2m",
        "scheduler": "karras",
        "batch_size": 2,
    }
    job = parse_sdxl(payload)
    graph = job.detail.workflow
    assert graph["4"]["inputs"]["ckpt_name"] == "sd_xl_base_1.0.safetensors"
    assert graph["7"]["inputs"]["text"] == "blur"
    assert graph["3"]["inputs"]["seed"] == 2**63
    assert graph["3"]["inputs"]["cfg"] == 5.0
    assert graph["3"]["inputs"]["sampler_name"] == "dpmpp_2m"
    assert job.workload == pytest.approx(image_workload(1024, 768, 28, 2))
    assert make_backend({"COMFY_MODEL": "m.safetensors"}).model_id == "m.safetensors"


@pytest.mark.parametrize(
    ("payload", "errors"),
    [
        ({}, {"prompt": "missing parameter"}),
        ([1], {"": "must be a JSON object, not array"}),
        ({"prompt": 3}, {"prompt": "must be a string, not integer"}),
        ({"prompt": "x", "width": 500}, {"width": "must be a multiple of 8"}),
        ({"prompt": "x", "height": 8}, {"height": "must be at least 16"}),
        ({"prompt": "x", "width": 16392}, {"width": "must be at most 16384"}),
        ({"prompt": "x", "width": "512"}, {"width": "must be an integer, not string"}),
        ({"prompt": "x", "steps": 0}, {"steps": "must be at least 1"}),
        ({"prompt": "x", "steps": 5000}, {"steps": "must be at most 1000"}),
        ({"prompt": "x", "seed": -1}, {"seed": "must be at least 0"}),
        ({"prompt": "x", "seed": 1.5}, {"seed": "must be an integer, not number"}),
        ({"prompt": "x", "cfg": 101}, {"cfg": "must be at most 100.0"}),
        ({"prompt": "x", "batch_size": 0}, {"batch_size": "must be at least 1"}),
        (
            {"width": 10, "steps": True},
            {
                "prompt": "missing parameter",
                "width": "must be at least 16",
                "steps": "must be an integer, not boolean",
            },
        ),
        ({"workflow": []}, {"workflow": "must be a JSON object, not array"}),
        ({"workflow": {}}, {"workflow": "must have at least one node"}),
        (
            {"workflow": {"1": {"inputs": {}}, "2": 5, "3": {"class_type": "X", "inputs": []}}},
            {
                "workflow": {
                    "1": {"class_type": "missing parameter"},
                    "2": "must be a node object with class_type and inputs",
                    "3": {"inputs": "must be a JSON object"},
                }
            },
        ),
        (
            {"workflow": empty_image_workflow(), "steps": 3},
            {"steps": "not allowed with workflow (set it inside the workflow)"},
        ),
    ],
)
def test_parse_errors(payload: object, errors: dict[str, Any]) -> None:
    with pytest.raises(PayloadError) as caught:
        parse_generate(payload)
    assert caught.value.errors == errors


def test_parse_workflow_passes_it_through() -> None:
    workflow = empty_image_workflow()
    workflow["1"]["_meta"] = {"title": "kept"}
    job = parse_generate({"workflow": workflow})
    assert job.detail == PromptJob(workflow=workflow)


def test_backend_declaration() -> None:
    assert BACKEND.name == "comfyui"
    assert not BACKEND.allow_parallel_requests
    assert BACKEND.health_path == "/system_stats"
    run = BACKEND.endpoint("/generate").run
    assert isinstance(run, functools.partial)
    assert run.func is run_prompt
    rule = BACKEND.classify("To see the GUI go to: http://0.0.0.0:8188")
    assert rule is not None
    assert rule.action is LogAction.MODEL_LOADED
    for fatal in (
        "Port 8188 is already in use on address 0.0.0.0. Please close the other application "
        "or use a different port with --port.",
        "AssertionError: Torch not compiled with CUDA enabled",
        "OSError: [Errno 98] error while attempting to bind on address ('0.0.0.0', 8188)",
    ):
        rule = BACKEND.classify(fatal)
        assert rule is not None
        assert rule.action is LogAction.MODEL_ERROR
    # A failed prompt is that prompt's problem, not the server's.
    rule = BACKEND.classify("!!! Exception during processing !!! CUDA out of memory")
    assert rule is None or rule.action is not LogAction.MODEL_ERROR
    make_payload = BACKEND.endpoint("/generate").benchmark_payload
    assert make_payload is not None
    job = parse_generate(make_payload(random.Random(1)))
    assert job.workload == pytest.approx(image_workload(512, 512, 20))


def test_run_settings_from_env() -> None:
    assert RunSettings.from_env({}) == RunSettings()
    settings = RunSettings.from_env(
        {
            "COMFY_PROMPT_TIMEOUT": "2.5",
            "COMFY_MAX_OUTPUT_BYTES": "1000",
            "COMFY_USE_WEBSOCKET": "false",
        }
    )
    assert settings.timeout == 2.5
    assert settings.max_output_bytes == 1000
    assert not settings.use_websocket
    assert RunSettings.from_env({"COMFY_PROMPT_TIMEOUT": "soon"}).timeout == RunSettings().timeout


# -- actual workload: what the websocket saw run -----------------------------------------------
def _watched(*events: tuple[Any, ...]) -> Progress:
    """A progress that saw ``(kind, data[, prompt_id])`` events of prompt ``p`` (by default)."""
    progress = Progress(watching=True)
    for kind, data, *prompt_id in events:
        progress.event(kind, {"prompt_id": prompt_id[0] if prompt_id else "p", **data}, "p")
    return progress


def test_actual_workload_counts_the_steps_run() -> None:
    workflow = text_to_image_workflow(prompt="x", width=512, height=512, steps=20)
    assert actual_workload(workflow, 20) == workflow_workload(workflow)
    assert actual_workload(workflow, 0) < actual_workload(workflow, 5) < workflow_workload(workflow)
    # Steps without a literal size: over a 1024 x 1024 image, as the estimate takes them.
    linked = {"3": {"class_type": "KSampler", "inputs": {"steps": 28, "latent_image": ["5", 0]}}}
    assert actual_workload(linked, 28) == pytest.approx(STANDARD_WORKLOAD)


def test_progress_counts_each_nodes_steps_and_nothing_cached() -> None:
    workflow = text_to_image_workflow(prompt="x", width=512, height=512, steps=20)
    progress = [("progress", {"value": v, "max": 20, "node": "3"}) for v in range(1, 9)]
    ran = _watched(
        ("execution_start", {}),
        ("execution_cached", {"nodes": ["4"]}),
        ("executing", {"node": "3"}),
        *progress,
        ("progress", {"value": 2, "max": 2, "node": "4"}),  # a cached node: never counted
        ("progress", {"value": 9, "max": 9, "node": "3"}, "other-prompt"),  # not ours
        ("executing", {"node": "9"}),
        ("execution_success", {}),
    )
    assert ran.complete
    assert ran.steps == {"3": 8}
    assert ran.actual(workflow) == actual_workload(workflow, 8)
    # Builds before 2024 sent progress without a prompt_id; executing null ended a prompt.
    older = Progress(watching=True)
    older.event("executing", {"node": "3", "prompt_id": "p"}, "p")
    older.event("progress", {"value": 3, "max": 3}, "p")
    assert older.event("executing", {"node": None, "prompt_id": "p"}, "p")
    assert older.actual(workflow) == actual_workload(workflow, 3)
    # Everything from the cache: nothing ran.
    cached = _watched(("execution_cached", {"nodes": ["4", "3", "9"]}), ("execution_success", {}))
    assert cached.actual(workflow) == 0.0


def test_progress_needs_every_event() -> None:
    workflow = text_to_image_workflow(prompt="x")
    events: tuple[tuple[str, dict[str, str]], ...] = (
        ("executing", {"node": "3"}),
        ("execution_success", {}),
    )
    unwatched = Progress()  # the websocket opened after the submission, or never
    for kind, data in events:
        unwatched.event(kind, {"prompt_id": "p", **data}, "p")
    assert unwatched.actual(workflow) is None
    lost = _watched(*events)
    lost.lost = True
    assert lost.actual(workflow) is None
    unfinished = _watched(("executing", {"node": "3"}))
    assert unfinished.actual(workflow) is None
    failed = _watched(("executing", {"node": "3"}))
    assert failed.event("execution_error", {"prompt_id": "p"}, "p")  # the end, but no success
    assert failed.actual(workflow) is None
