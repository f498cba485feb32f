"""The smallest end-to-end check: a signed request through worker to the demo model server."""

from __future__ import annotations

from pathlib import Path

import trio
from harness import start_stack

from pyworker import State


async def test_signed_request_round_trip(nursery: trio.Nursery, tmp_path: Path) -> None:
    stack = await start_stack(
        nursery, tmp_path, "hello_world", "--load-delay", "0.2", benchmark_runs=2
    )
    assert stack.worker.lifecycle.current in {State.LOADING, State.BENCHMARKING, State.READY}
    await stack.wait_state(State.READY)
    response = await stack.post("/generate", {"prompt": "hello there", "max_response_tokens": 4})
    assert response.status_code == 200, response.text
    assert response.json()["generated_tokens"] == 4
