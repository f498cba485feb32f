"""The knobs every fake shares behave the same in all four, each in its server's words.

``--load-delay``, ``--fail-load``, ``--error-rate``, ``--hang-after``, ``--crash-after`` and
``--slow-health`` are the kit's (:mod:`backends._fakekit`); each fake only words them as its
server would. Every fake runs as a real subprocess.
"""

from __future__ import annotations

import contextlib
import signal
from pathlib import Path
from typing import Any

import attrs
import httpx
import pytest
import trio
from fakes import FakeServer, accepts, fake_client, free_port, poll_stats, spawn_fake, start_fake

from backends.comfyui import text_to_image_workflow


@attrs.frozen(kw_only=True)
class Case:
    """A fake, and how its server words what the shared knobs do.

    Attributes:
        module: the fake's module.
        args: its own arguments (a flavor).
        health: its health route.
        path: its generation route.
        body: a generation request of 10 units (tokens, sampler steps).
        error_status: the status of a request failed by ``--error-rate``.
        loading: a line logged early in the start, before the port is open.
        ready: the line logged once the port accepts connections (None: TGI logs its
            ``Connected`` just before binding).
        fatal: a line of ``--fail-load``'s fatal lines.
        crash: a line logged before ``--crash-after 2`` kills the process.
        hang: the line logged when ``--hang-after 2`` stalls a request.
        stopping: a line logged for a signal, whenever it comes (None: none is).
    """

    module: str
    args: tuple[str, ...] = ()
    health: str
    path: str
    body: dict[str, Any]
    error_status: int
    loading: str
    ready: str | None
    fatal: str
    crash: str
    hang: str
    stopping: str | None


CASES = {
    "hello_world": Case(
        module="backends.hello_world.server",
        health="/healthcheck",
        path="/generate",
        body={"prompt": "x", "max_response_tokens": 10},
        error_status=500,
        loading="INFO loading model: 0%",
        ready="INFO infer server has started on http://127.0.0.1:",
        fatal="ERROR Error: model failed to load: out of luck",
        crash="ERROR request 1: model server crashed after 2 tokens",
        hang="WARNING request 1: hanging after 2 tokens",
        stopping="INFO received {signal}, shutting down",
    ),
    "tgi": Case(
        module="backends.tgi.fake",
        health="/health",
        path="/generate",
        body={"inputs": "x", "parameters": {"max_new_tokens": 10}},
        error_status=424,
        loading="Starting check and download process",
        ready=None,
        fatal="Error: ShardCannotStart",
        crash="Error: ShardFailed",
        hang="hanging after 2 tokens (--hang-after)",
        stopping="Shutting down shards",
    ),
    "vllm": Case(
        module="backends.openai.fake",
        args=("--flavor", "vllm"),
        health="/health",
        path="/v1/completions",
        body={"prompt": "x", "max_tokens": 10},
        error_status=500,
        loading="Starting to load model",
        ready="INFO:     Application startup complete.",
        fatal="RuntimeError: Engine core initialization failed.",
        crash="EngineDeadError: EngineCore encountered an issue.",
        hang="hanging after 2 tokens",
        stopping=None,
    ),
    "comfyui": Case(
        module="backends.comfyui.fake",
        health="/system_stats",
        path="/prompt",
        body={"prompt": text_to_image_workflow(prompt="x", width=64, height=64, steps=10)},
        error_status=500,
        loading="Total VRAM",
        ready="To see the GUI go to: http://127.0.0.1:",
        fatal="Traceback (most recent call last):",
        crash="fake crash after 2 sampler steps (--crash-after)",
        hang="sampler stuck after 2 steps (--hang-after)",
        stopping=None,
    ),
}
WAIT = 10.0
"""How long a test waits for a fake to do what it awaits (log a line, exit)."""

every_fake = pytest.mark.parametrize("case", list(CASES.values()), ids=list(CASES))
announcing = {name: case for name, case in CASES.items() if case.ready is not None}


async def _spawn(nursery: trio.Nursery, tmp_path: Path, case: Case, *args: str) -> FakeServer:
    return await spawn_fake(nursery, case.module, *case.args, *args, log_path=tmp_path / "f.log")


async def _start(nursery: trio.Nursery, tmp_path: Path, case: Case, *args: str) -> FakeServer:
    return await start_fake(
        nursery, case.module, *case.args, "--load-delay", "0", *args, log_path=tmp_path / "f.log"
    )


@pytest.mark.parametrize("case", list(announcing.values()), ids=list(announcing))
async def test_refuses_connections_while_loading_then_announces(
    nursery: trio.Nursery, tmp_path: Path, case: Case
) -> None:
    assert case.ready is not None
    port = free_port()
    fake = await _spawn(nursery, tmp_path, case, "--load-delay", "0.6", "--port", str(port))
    refused = 0
    with trio.fail_after(WAIT):
        while True:
            # Read the log first: a ready line seen now must mean the port accepts now.
            announced = case.ready in fake.log_text()
            accepting = await accepts(port)
            if announced:
                assert accepting
                break
            refused += not accepting
            await trio.sleep(0.02)
    assert refused > 5
    log = fake.log_text()
    assert log.index(case.loading) < log.index(case.ready)


@every_fake
async def test_fail_load_exits_1_without_listening(
    nursery: trio.Nursery, tmp_path: Path, case: Case
) -> None:
    fake = await _spawn(nursery, tmp_path, case, "--load-delay", "0", "--fail-load", "out of luck")
    with trio.fail_after(WAIT):
        assert await fake.wait() == 1
    log = fake.log_text()
    assert case.fatal in log
    assert "out of luck" in log
    assert case.ready is None or case.ready not in log
    assert not fake.port_file.exists()


@every_fake
async def test_sigterm_while_serving_exits_0(
    nursery: trio.Nursery, tmp_path: Path, case: Case
) -> None:
    fake = await _start(nursery, tmp_path, case)
    fake.process.send_signal(signal.SIGTERM)
    with trio.fail_after(WAIT):
        assert await fake.wait() == 0
    if case.stopping is not None:
        assert case.stopping.format(signal="SIGTERM") in fake.log_text()


@every_fake
async def test_sigint_while_loading_exits_0(
    nursery: trio.Nursery, tmp_path: Path, case: Case
) -> None:
    fake = await _spawn(nursery, tmp_path, case, "--load-delay", "30")
    with trio.fail_after(WAIT):
        await fake.wait_for_log(case.loading)
        fake.process.send_signal(signal.SIGINT)
        assert await fake.wait() == 0
    if case.stopping is not None:
        assert case.stopping.format(signal="SIGINT") in fake.log_text()
    assert not fake.port_file.exists()


@every_fake
async def test_error_rate_fails_requests_with_the_servers_error(
    nursery: trio.Nursery, tmp_path: Path, case: Case
) -> None:
    fake = await _start(nursery, tmp_path, case, "--error-rate", "1")
    async with fake_client(fake, http_timeout=WAIT) as client:
        for _ in range(2):
            failed = await client.post(case.path, json=case.body)
            assert failed.status_code == case.error_status
        stats = (await client.get("/stats")).json()
    assert stats["errors"] == 2


@every_fake
async def test_slow_health_delays_the_health_route(
    nursery: trio.Nursery, tmp_path: Path, case: Case
) -> None:
    fake = await _start(nursery, tmp_path, case, "--slow-health", "0.3")
    async with fake_client(fake, http_timeout=WAIT) as client:
        started = trio.current_time()
        assert (await client.get(case.health)).status_code == 200
        assert trio.current_time() - started >= 0.3


async def _send_forever(fake: FakeServer, case: Case) -> None:
    """Send the generation request and wait for its answer however long it takes."""
    async with httpx.AsyncClient(base_url=fake.url, timeout=None, trust_env=False) as client:
        await client.post(case.path, json=case.body)


@every_fake
async def test_hang_after_stalls_a_request_and_nothing_else(
    nursery: trio.Nursery, tmp_path: Path, case: Case
) -> None:
    fake = await _start(nursery, tmp_path, case, "--hang-after", "2")
    nursery.start_soon(_send_forever, fake, case)
    with trio.fail_after(WAIT):
        await fake.wait_for_log(case.hang)
    async with fake_client(fake, http_timeout=WAIT) as client:
        assert (await client.get(case.health)).status_code == 200
        stats = (await client.get("/stats")).json()
    assert stats["completed"] == 0
    assert fake.process.poll() is None


@every_fake
async def test_crash_after_kills_the_process(
    nursery: trio.Nursery, tmp_path: Path, case: Case
) -> None:
    fake = await _start(nursery, tmp_path, case, "--crash-after", "2")
    async with fake_client(fake, http_timeout=WAIT) as client:
        # An LLM server dies under the request; ComfyUI queued it and answered first.
        with contextlib.suppress(httpx.TransportError):
            await client.post(case.path, json=case.body)
    with trio.fail_after(WAIT):
        assert await fake.wait() == 1
    assert case.crash in fake.log_text()


@every_fake
async def test_a_request_runs_to_completion_without_knobs(
    nursery: trio.Nursery, tmp_path: Path, case: Case
) -> None:
    fake = await _start(nursery, tmp_path, case)
    async with fake_client(fake, http_timeout=WAIT) as client:
        answer = await client.post(case.path, json=case.body)
        assert answer.status_code == 200
        stats = await poll_stats(client, "completed", 1)
    assert stats["errors"] == 0
