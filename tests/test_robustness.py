"""Holes an attacker or a busy day finds, over real sockets and processes: absurd numbers,
non-JSON constants, backends failing on a payload. Each is refused with a 4xx, reaches no model
server, and leaves no request behind in the worker's accounting."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import attrs
import pytest
import trio
from harness import Stack, eventually, ready_stack, start_stack

from pyworker import Endpoint, Job, load_backend

GUARD = 30


async def _nothing_left(stack: Stack) -> None:
    await eventually(lambda: stack.worker.tracker.in_flight == 0, what="nothing in flight")
    reports = stack.standin.reports
    await eventually(lambda: reports and reports[-1]["num_requests_working"] == 0, what="report")
    assert stack.worker.tracker.pending_workload == 0.0


@pytest.mark.parametrize(
    "payload",
    [
        {"messages": [{"role": "user", "content": "hi"}], "n": 10**309},
        {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 10**300},
        {"messages": [{"role": "user", "content": "hi"}], "max_completion_tokens": 2**64},
    ],
)
async def test_absurd_numbers_are_422_and_leave_nothing_behind(
    nursery: trio.Nursery, tmp_path: Path, payload: dict[str, Any]
) -> None:
    with trio.fail_after(GUARD):
        stack = await start_stack(
            nursery,
            tmp_path,
            "openai",
            "--load-delay",
            "0",
            "--token-rate",
            "5000",
            wait_ready=True,
        )
        before = await stack.stats()
        response = await stack.post("/v1/chat/completions", payload)
        assert response.status_code == 422, response.text
        assert "payload" in response.json()
        await _nothing_left(stack)
        assert (await stack.stats())["completed"] == before["completed"]  # nothing reached it


async def test_comfyui_workflow_sizes_are_bounded(nursery: trio.Nursery, tmp_path: Path) -> None:
    with trio.fail_after(GUARD):
        stack = await start_stack(
            nursery, tmp_path, "comfyui", "--load-delay", "0", wait_ready=True
        )
        workflow = {
            "1": {"class_type": "EmptyImage", "inputs": {"width": 10**200, "height": 8}},
            "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0]}},
        }
        response = await stack.post("/generate", {"workflow": workflow})
        assert response.status_code == 422, response.text
        assert "width" in response.json()["payload"]["workflow"]["1"]
        await _nothing_left(stack)


@pytest.mark.parametrize("constant", [b"NaN", b"Infinity", b"-Infinity"])
async def test_non_json_constants_are_refused_before_any_backend(
    nursery: trio.Nursery, tmp_path: Path, constant: bytes
) -> None:
    with trio.fail_after(GUARD):
        stack = await ready_stack(nursery, tmp_path)
        before = await stack.stats()
        envelope = json.dumps(stack.envelope({"prompt": "hi", "max_response_tokens": 2}))
        # A field the backend passes through untouched would carry it to the model server.
        body = envelope.replace('"prompt": "hi"', '"prompt": "hi", "extra": ' + constant.decode())
        response = await stack.http.post(
            stack.url + "/generate", content=body, headers={"content-type": "application/json"}
        )
        assert response.status_code == 400
        assert constant.decode().lstrip("-") in response.json()["error"]
        assert (await stack.stats())["completed"] == before["completed"]


async def test_a_backend_failing_on_a_payload_is_422_not_500(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    hello = load_backend("hello_world")
    original = hello.endpoint("/generate").parse

    def parse(payload: object) -> Job:
        if isinstance(payload, dict) and payload.get("prompt") == "overflow":
            return Job(workload=float(10**300), body=b"{}", upstream_path="/generate")
        if isinstance(payload, dict) and payload.get("prompt") == "bug":
            raise KeyError("a backend bug")
        return original(payload)

    endpoints = tuple(
        attrs.evolve(e, parse=parse) if e.route == "/generate" else e for e in hello.endpoints
    )
    backend = attrs.evolve(hello, endpoints=endpoints)
    assert isinstance(backend.endpoint("/generate"), Endpoint)
    with trio.fail_after(GUARD):
        stack = await ready_stack(nursery, tmp_path, backend=backend)
        for prompt in ("overflow", "bug"):
            response = await stack.post("/generate", {"prompt": prompt})
            assert response.status_code == 422, response.text
            assert response.json()["payload"].startswith("cannot be served")
        await _nothing_left(stack)
        assert (
            await stack.post("/generate", {"prompt": "fine", "max_response_tokens": 2})
        ).status_code == 200
