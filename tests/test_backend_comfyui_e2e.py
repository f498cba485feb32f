"""The comfyui backend against the fake ComfyUI: ``run`` directly, then end-to-end stacks."""

from __future__ import annotations

import base64
import json
import os
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
from fakes import REPO_ROOT, FakeServer, empty_image_workflow, start_fake_comfyui
from harness import Stack, eventually, start_stack

from backends.comfyui import (
    RunSettings,
    image_workload,
    parse_generate,
    run_prompt,
    text_to_image_workflow,
)
from backends.comfyui._fake_png import PNG_SIGNATURE, png_size
from backends.comfyui._workflow import actual_workload
from pyworker import Job, RunContext, State

# Fast fakes: no start-up delay, and a benchmark of three small prompts.
FAST = ("--load-delay", "0.1")
STACK_CONFIG: dict[str, Any] = {"benchmark_runs": 2}


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


# -- run, against the fake directly ---------------------------------------------------------
@asynccontextmanager
async def _context(fake: FakeServer | str) -> AsyncIterator[RunContext]:
    url = fake if isinstance(fake, str) else fake.url
    async with httpx.AsyncClient(timeout=10.0, trust_env=False) as http:
        yield RunContext(model_server_url=url, http=http)


def _job(payload: dict[str, Any]) -> Job:
    return parse_generate(payload)


async def test_run_returns_images_and_timings(nursery: trio.Nursery, tmp_path: Path) -> None:
    fake = await start_fake_comfyui(nursery, tmp_path)
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
    fake = await start_fake_comfyui(nursery, tmp_path, "--hang-after", "3")
    async with _context(fake) as context:
        # Model-free prompts never reach the stalling sampler.
        polling = RunSettings(use_websocket=False)
        job = _job({"workflow": empty_image_workflow(color=1)})
        reply = await run_prompt(job, context, polling)
        assert reply.status == 200
        assert len(json.loads(reply.body)["images"]) == 2
        small = attrs.evolve(polling, max_output_bytes=100)
        reply = await run_prompt(_job({"workflow": empty_image_workflow(color=2)}), context, small)
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
    fake = await start_fake_comfyui(nursery, tmp_path)
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

    response = await stack.post("/generate", {"workflow": empty_image_workflow()})
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
