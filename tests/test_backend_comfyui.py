"""The comfyui backend: payloads and workload, ``run`` against the fake, and end-to-end stacks."""

from __future__ import annotations

import base64
import functools
import json
import os
import random
import shlex
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import attrs
import httpx
import pytest
import trio
from fakes import REPO_ROOT, FakeServer, start_fake
from harness import Stack, eventually, start_stack

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
from backends.comfyui._fake_png import PNG_SIGNATURE, png_size
from backends.comfyui._progress import Progress
from backends.comfyui._workflow import actual_workload
from pyworker import Job, LogAction, PayloadError, RunContext, State

BACKEND = make_backend({})
"""The backend with every setting at its default."""

FAKE = "backends.comfyui.fake"
# Fast fakes: no start-up delay, and a benchmark of three small prompts.
FAST = ("--load-delay", "0.1")
STACK_CONFIG: dict[str, Any] = {"benchmark_runs": 2}


def _empty_image_workflow(batch: int = 2, color: int = 0x3366FF) -> dict[str, Any]:
    return {
        "1": {
            "class_type": "EmptyImage",
            "inputs": {"width": 48, "height": 40, "batch_size": batch, "color": color},
        },
        "2": {"class_type": "SaveImage", "inputs": {"filename_prefix": "t", "images": ["1", 0]}},
    }


def _png(image: dict[str, Any]) -> tuple[int, int]:
    data = base64.b64decode(image["data"])
    assert data.startswith(PNG_SIGNATURE)
    assert image["content_type"] == "image/png"
    return png_size(data)


async def _fake_stats(client: httpx.AsyncClient, fake_url: str) -> dict[str, Any]:
    stats: dict[str, Any] = (await client.get(f"{fake_url}/stats")).json()
    return stats


async def _until_stats(
    client: httpx.AsyncClient, fake_url: str, key: str, value: object
) -> dict[str, Any]:
    """Poll the fake's ``/stats`` until ``stats[key] == value`` (at most 10 s)."""
    with trio.fail_after(10):
        while True:
            stats = await _fake_stats(client, fake_url)
            if stats[key] == value:
                return stats
            await trio.sleep(0.01)


async def _until_idle(stack: Stack) -> None:
    """Wait (at most 10 s) until the worker has no request in flight: a cancelled request
    is in flight until its prompt is withdrawn."""
    with trio.fail_after(10):
        while True:
            if stack.worker.tracker.in_flight == 0:
                return
            await trio.sleep(0.01)


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
    assert workflow_workload(_empty_image_workflow(batch=3)) == pytest.approx(
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
            {"workflow": _empty_image_workflow(), "steps": 3},
            {"steps": "not allowed with workflow (set it inside the workflow)"},
        ),
    ],
)
def test_parse_errors(payload: object, errors: dict[str, Any]) -> None:
    with pytest.raises(PayloadError) as caught:
        parse_generate(payload)
    assert caught.value.errors == errors


def test_parse_workflow_passes_it_through() -> None:
    workflow = _empty_image_workflow()
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
    events = (("executing", {"node": "3"}), ("execution_success", {}))
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


# -- run, against the fake directly ---------------------------------------------------------
@asynccontextmanager
async def _context(fake: FakeServer | str) -> AsyncIterator[RunContext]:
    url = fake if isinstance(fake, str) else fake.url
    async with httpx.AsyncClient(timeout=10.0, trust_env=False) as http:
        yield RunContext(model_server_url=url, http=http)


async def _start(nursery: trio.Nursery, tmp_path: Path, *args: str) -> FakeServer:
    return await start_fake(nursery, FAKE, "--load-delay", "0", *args, log_path=tmp_path / "c.log")


def _job(payload: dict[str, Any]) -> Job:
    return parse_generate(payload)


async def test_run_returns_images_and_timings(nursery: trio.Nursery, tmp_path: Path) -> None:
    fake = await _start(nursery, tmp_path)
    async with _context(fake) as context:
        reply = await run_prompt(_job({"prompt": "fox", "width": 64, "height": 48}), context)
        assert reply.status == 200, reply.body
        answer = json.loads(reply.body)
        assert set(answer) == {"prompt_id", "images", "timings", "seed"}
        (image,) = answer["images"]
        assert image["filename"] == "pyworker_00001_.png"
        assert (image["subfolder"], image["type"]) == ("", "output")
        assert _png(image) == (64, 48)
        timings = answer["timings"]
        assert 0 <= timings["queued_s"] <= timings["total_s"]
        assert 0 < timings["run_s"] <= timings["total_s"]
        history = (await context.http.get(f"{fake.url}/history/{answer['prompt_id']}")).json()
        assert history[answer["prompt_id"]]["prompt"][3]["client_id"]


async def test_run_limits_polls_and_timeouts(nursery: trio.Nursery, tmp_path: Path) -> None:
    fake = await _start(nursery, tmp_path, "--hang-after", "3")
    async with _context(fake) as context:
        # Model-free prompts never reach the stalling sampler.
        polling = RunSettings(use_websocket=False)
        job = _job({"workflow": _empty_image_workflow(color=1)})
        reply = await run_prompt(job, context, polling)
        assert reply.status == 200
        assert len(json.loads(reply.body)["images"]) == 2
        small = attrs.evolve(polling, max_output_bytes=100)
        reply = await run_prompt(_job({"workflow": _empty_image_workflow(color=2)}), context, small)
        assert reply.status == 502
        too_big = json.loads(reply.body)
        assert "exceed 100 bytes" in too_big["error"]
        assert [i["filename"] for i in too_big["images"]] == ["t_00003_.png", "t_00004_.png"]
        # A stuck sampler: the timeout answers 504 and interrupts the prompt.
        started = trio.current_time()
        short = attrs.evolve(small, timeout=0.5)
        reply = await run_prompt(_job({"prompt": "stuck", "steps": 10}), context, short)
        assert reply.status == 504
        assert trio.current_time() - started < 3
        stats = await _until_stats(context.http, fake.url, "interrupted", 1)
        assert stats["running"] is None


async def test_run_reports_the_steps_comfyui_ran(nursery: trio.Nursery, tmp_path: Path) -> None:
    """The same prompt twice: the second comes whole from ComfyUI's cache and ran nothing; a
    changed save prefix runs the save alone (the formula's fixed part, no steps). Without the
    websocket, the estimate stands."""
    fake = await _start(nursery, tmp_path)
    payload = {"prompt": "fox", "width": 64, "height": 48, "steps": 5, "seed": 7}
    job = _job(payload)
    async with _context(fake) as context:
        first = await run_prompt(job, context)
        assert first.status == 200, first.body
        assert first.actual == job.workload  # every step asked for ran
        again = await run_prompt(job, context)
        assert again.status == 200
        assert again.actual == 0.0
        workflow = text_to_image_workflow(prompt="fox", width=64, height=48, steps=5, seed=7)
        workflow["9"]["inputs"]["filename_prefix"] = "other"
        saved = await run_prompt(_job({"workflow": workflow}), context)
        assert saved.actual == actual_workload(workflow, 0)
        polling = await run_prompt(job, context, RunSettings(use_websocket=False))
        assert polling.status == 200
        assert polling.actual is None
        stats = await _fake_stats(context.http, fake.url)
    assert stats["steps"] == 5  # the sampler ran once


async def test_run_unreachable(tmp_path: Path) -> None:
    async with _context("http://127.0.0.1:9") as context:
        reply = await run_prompt(_job({"prompt": "x"}), context)
    assert reply.status == 502
    assert "cannot reach ComfyUI" in reply.body.decode()


# -- end to end -----------------------------------------------------------------------------
async def _stack(nursery: trio.Nursery, tmp_path: Path, *fake_args: str) -> Stack:
    return await start_stack(
        nursery, tmp_path, "comfyui", *FAST, *fake_args, wait_ready=True, **STACK_CONFIG
    )


async def test_ready_from_the_log_line_then_images(nursery: trio.Nursery, tmp_path: Path) -> None:
    stack = await start_stack(nursery, tmp_path, "comfyui", "--load-delay", "0.5", **STACK_CONFIG)
    assert stack.worker.lifecycle.current is State.LOADING
    await stack.wait_state(State.READY)
    assert "To see the GUI go to: http://127.0.0.1:" in stack.fake.log_text()
    assert stack.worker.lifecycle.max_perf > 0

    response = await stack.post("/generate", {"prompt": "a fox", "width": 64, "height": 32})
    assert response.status_code == 200, response.text
    answer = response.json()
    assert [_png(image) for image in answer["images"]] == [(64, 32)]
    assert isinstance(answer["seed"], int)

    response = await stack.post("/generate", {"workflow": _empty_image_workflow()})
    assert response.status_code == 200, response.text
    images = response.json()["images"]
    assert [_png(image) for image in images] == [(48, 40), (48, 40)]
    stats = await _fake_stats(stack.http, stack.fake.url)
    # Warm-up + 2 benchmark runs + 2 requests.
    assert stats["completed"] == 5


async def test_errors_are_reported(nursery: trio.Nursery, tmp_path: Path) -> None:
    stack = await _stack(nursery, tmp_path, "--fail-on-text", "explode")
    response = await stack.post("/generate", {"prompt": "x", "width": 500, "steps": 0})
    assert response.status_code == 422
    assert response.json() == {
        "payload": {"width": "must be a multiple of 8", "steps": "must be at least 1"}
    }
    # ComfyUI's own validation, relayed with its node errors.
    workflow = text_to_image_workflow(prompt="x", ckpt_name="missing.safetensors")
    workflow["3"]["inputs"]["sampler_name"] = "warp_drive"
    response = await stack.post("/generate", {"workflow": workflow})
    assert response.status_code == 422
    answer = response.json()
    assert answer["type"] == "prompt_outputs_failed_validation"
    assert answer["error"] == "ComfyUI rejected the workflow: Prompt outputs failed validation"
    assert answer["node_errors"]["4"]["errors"][0]["type"] == "value_not_in_list"
    assert answer["node_errors"]["3"]["errors"][0]["extra_info"]["received_value"] == "warp_drive"
    response = await stack.post(
        "/generate", {"workflow": {"1": {"class_type": "Nope", "inputs": {}}}}
    )
    assert response.status_code == 422
    assert response.json()["type"] == "invalid_prompt"
    # An exception while running: ComfyUI's message, and the server goes on.
    response = await stack.post("/generate", {"prompt": "explode", "width": 64, "height": 64})
    assert response.status_code == 500
    failure = response.json()
    assert failure["node_type"] == "KSampler"
    assert "fake node failure" in failure["exception_message"]
    assert "fake node failure" in failure["error"]
    assert stack.worker.lifecycle.current is State.READY
    response = await stack.post("/generate", {"prompt": "fine", "width": 64, "height": 64})
    assert response.status_code == 200


@pytest.mark.parametrize(
    ("reason", "message"),
    [("cuda", "Torch not compiled with CUDA enabled"), ("port", "is already in use on address")],
)
async def test_fatal_line_errors_the_worker(
    nursery: trio.Nursery, tmp_path: Path, reason: str, message: str
) -> None:
    stack = await start_stack(
        nursery, tmp_path, "comfyui", "--load-delay", "0", "--fail-load", reason
    )
    await stack.wait_state(State.ERRORED)
    assert message in stack.worker.lifecycle.error_msg


async def test_serial_execution_and_workload(nursery: trio.Nursery, tmp_path: Path) -> None:
    stack = await _stack(nursery, tmp_path)
    payload = {"prompt": "x", "width": 512, "height": 512, "steps": 60}
    expected = image_workload(512, 512, 60)
    tracker = stack.worker.tracker
    statuses: list[int] = []

    async def one() -> None:
        statuses.append((await stack.post("/generate", payload)).status_code)

    async with trio.open_nursery() as requests:
        for _ in range(3):
            requests.start_soon(one)
        with trio.fail_after(10):
            while True:
                if tracker.in_flight == 3:
                    break
                await trio.sleep(0.005)
        # Each request counts its pixels and steps, as specified.
        assert tracker.pending_workload == pytest.approx(3 * expected)
    assert statuses == [200, 200, 200]
    stats = await _fake_stats(stack.http, stack.fake.url)
    # The worker never handed ComfyUI a second prompt while one was queued or running.
    assert stats["max_queue_remaining"] == 1
    assert stats["completed"] == 3 + 3


async def test_the_worker_counts_the_steps_comfyui_ran(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    """A prompt sent twice: the worker counts its workload once, the second having come
    whole from ComfyUI's cache (without the websocket, it would count the estimate twice:
    see test_run_reports_the_steps_comfyui_ran)."""
    payload = {"prompt": "fox", "width": 64, "height": 48, "steps": 5, "seed": 11}
    stack = await _stack(nursery, tmp_path)
    for _ in range(2):
        assert (await stack.post("/generate", payload)).status_code == 200
    tracker = stack.worker.tracker
    with trio.fail_after(5):
        await eventually(lambda: not tracker.in_flight, what="nothing in flight")
    assert tracker.totals(trio.current_time()).completed == _job(payload).workload


async def test_client_gone_while_running_interrupts_it(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    stack = await _stack(nursery, tmp_path)
    fake_url, http = stack.fake.url, stack.http
    async with trio.open_nursery() as client:
        client.start_soon(stack.post, "/generate", {"prompt": "slow", "steps": 1000})
        with trio.fail_after(10):
            while True:
                running = (await _fake_stats(http, fake_url))["running"]
                if running is not None:
                    break
                await trio.sleep(0.01)
        client.cancel_scope.cancel()
    stats = await _until_stats(http, fake_url, "interrupted", 1)
    assert stats["running"] is None
    assert stats["pending"] == 0
    entry = (await http.get(f"{fake_url}/history/{running}")).json()[running]
    assert entry["status"]["messages"][-1][0] == "execution_interrupted"
    await _until_idle(stack)
    assert f"Interrupting prompt {running}" in stack.fake.log_text()


async def test_client_gone_while_pending_deletes_it(nursery: trio.Nursery, tmp_path: Path) -> None:
    stack = await _stack(nursery, tmp_path)
    fake_url, http = stack.fake.url, stack.http
    # Someone else's long prompt, straight to ComfyUI, keeps ours pending.
    blocker = text_to_image_workflow(prompt="blocker", width=64, height=64, steps=5000)
    blocker_id = (await http.post(f"{fake_url}/prompt", json={"prompt": blocker})).json()[
        "prompt_id"
    ]
    async with trio.open_nursery() as client:
        client.start_soon(stack.post, "/generate", {"prompt": "waiting", "width": 64, "height": 64})
        with trio.fail_after(10):
            while True:
                if (await http.get(f"{fake_url}/queue")).json()["queue_pending"]:
                    break
                await trio.sleep(0.01)
        client.cancel_scope.cancel()
    stats = await _until_stats(http, fake_url, "deleted", 1)
    assert stats["running"] == blocker_id
    assert stats["interrupted"] == 0
    assert (await http.get(f"{fake_url}/queue")).json()["queue_pending"] == []
    await _until_idle(stack)
    await http.post(f"{fake_url}/interrupt", json={"prompt_id": blocker_id})
    await _until_stats(http, fake_url, "interrupted", 1)


async def test_demo_command(tmp_path: Path) -> None:
    env = {**os.environ, "PYWORKER_STATE_DIR": str(tmp_path / "state"), "PYTHONUNBUFFERED": "1"}
    env.pop("MODEL_LOG", None)
    demo = await trio.lowlevel.open_process(
        [sys.executable, "-m", "pyworker", "--backend", "comfyui", "--demo", "--port", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        cwd=REPO_ROOT,
        env=env,
    )
    assert demo.stdout is not None
    output = b""
    try:
        with trio.fail_after(30):
            while b"(Ctrl-C stops everything.)" not in output:
                chunk = await demo.stdout.receive_some(65536)
                assert chunk, output.decode()
                output += chunk
        command = next(
            line.strip()
            for line in output.decode().splitlines()
            if "-m pyworker.client --autoscaler" in line
        )
        argv = shlex.split(command)
        argv[0] = sys.executable
        with trio.fail_after(30):
            result = await trio.run_process(
                argv, capture_stdout=True, capture_stderr=True, cwd=REPO_ROOT, env=env
            )
        assert b'"images"' in result.stdout, result.stderr.decode()
    finally:
        demo.send_signal(signal.SIGTERM)
        with trio.move_on_after(15):
            await demo.wait()
        if demo.returncode is None:
            demo.kill()
            await demo.wait()
    assert demo.returncode == 0
