"""The fake OpenAI-compatible servers (vLLM, SGLang, llama.cpp flavors), run as subprocesses,
starting: vLLM listens only once loaded, SGLang's health is 503 until it has warmed up, llama.cpp
listens at once and answers 503 while loading; and each flavor failing to start (exit status 1,
its own lines). What they answer once started is in ``test_fake_openai.py``."""

from __future__ import annotations

import json
import re
from pathlib import Path

import httpx
import pytest
import trio
from fakes import (
    OPENAI_CHAT,
    OPENAI_FAKE,
    OPENAI_MODEL,
    OPENAI_READY,
    free_port,
    openai_events,
    openai_fast,
    spawn_fake,
    start_fake,
)

from backends.openai import Settings, backend_for
from pyworker import LogAction


# -- vLLM --------------------------------------------------------------------------------------
async def test_vllm_refuses_until_ready_then_logs_startup_complete(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    port = free_port()
    fake = await spawn_fake(
        nursery,
        OPENAI_FAKE,
        "--port",
        str(port),
        "--flavor",
        "vllm",
        "--load-delay",
        "1.0",
        log_path=tmp_path / "vllm.log",
    )
    with trio.fail_after(10):
        await fake.wait_for_log("Starting to load model")
    with pytest.raises(OSError, match="connect"):
        await trio.open_tcp_stream("127.0.0.1", port)  # loading: refused
    with trio.fail_after(10):
        await fake.wait_for_log("Application startup complete.")
    async with httpx.AsyncClient(trust_env=False) as client:
        health = await client.get(f"http://127.0.0.1:{port}/health")
        assert health.status_code == 200
        assert health.content == b""
        models = (await client.get(f"http://127.0.0.1:{port}/v1/models")).json()
        version = (await client.get(f"http://127.0.0.1:{port}/version")).json()
    assert models["object"] == "list"
    assert models["data"][0]["id"] == OPENAI_MODEL
    assert models["data"][0]["owned_by"] == "vllm"
    assert version == {"version": "0.11.0"}
    lines = fake.log_text().splitlines()
    assert re.match(r"^INFO \d\d-\d\d \d\d:\d\d:\d\d \[[\w.]+:\d+\] vLLM API server", lines[0])
    assert "INFO:     Application startup complete." in lines
    # uvicorn's lifecycle lines come after vLLM's own, once the routes are listed.
    assert lines.index("INFO:     Application startup complete.") > max(
        i for i, line in enumerate(lines) if "Route: " in line
    )


# -- SGLang ------------------------------------------------------------------------------------
async def test_sglang_health_503_until_warm(nursery: trio.Nursery, tmp_path: Path) -> None:
    fake = await start_fake(
        nursery,
        OPENAI_FAKE,
        "--flavor",
        "sglang",
        "--load-delay",
        "0",
        "--warmup",
        "1.0",
        log_path=tmp_path / "sglang.log",
    )
    async with httpx.AsyncClient(base_url=fake.url, timeout=5.0, trust_env=False) as client:
        # Listening, uvicorn's lines written, warm-up under way.
        with trio.fail_after(5):
            await fake.wait_for_log("Application startup complete.")
        assert (await client.get("/health")).status_code == 503
        assert (await client.get("/ping")).status_code == 200
        with trio.fail_after(10):
            await fake.wait_for_log("The server is fired up and ready to roll!")
        assert (await client.get("/health")).status_code == 200
        bad = await client.post("/v1/completions", json={"prompt": "x", "max_tokens": -1})
        models = (await client.get("/v1/models")).json()
        chat = (await client.post("/v1/chat/completions", json=OPENAI_CHAT)).json()
    assert bad.status_code == 400
    assert bad.json() == {
        "object": "error",
        "message": "max_tokens must be at least 1, got -1.",
        "type": "Bad Request",
        "param": None,
        "code": 400,
    }
    assert models["data"][0]["owned_by"] == "sglang"
    assert chat["object"] == "chat.completion"
    assert chat["usage"]["completion_tokens"] == 4
    lines = fake.log_text().splitlines()
    stamp = r"^\[\d{4}-\d\d-\d\d \d\d:\d\d:\d\d( TP0)?\] "
    assert all(re.match(stamp, line) for line in lines if "ServerArgs" in line or "TP0" in line)
    startup = next(i for i, line in enumerate(lines) if "Application startup complete." in line)
    ready = next(i for i, line in enumerate(lines) if "fired up" in line)
    assert startup < ready


# -- llama.cpp ---------------------------------------------------------------------------------
async def test_llamacpp_listens_early_and_answers_503_while_loading(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    fake = await start_fake(
        nursery,
        OPENAI_FAKE,
        "--flavor",
        "llamacpp",
        "--load-delay",
        "1.0",
        log_path=tmp_path / "llamacpp.log",
    )
    loading = {"error": {"code": 503, "message": "Loading model", "type": "unavailable_error"}}
    async with httpx.AsyncClient(base_url=fake.url, timeout=5.0, trust_env=False) as client:
        for response in (
            await client.get("/health"),
            await client.get("/v1/models"),
            await client.post("/v1/chat/completions", json=OPENAI_CHAT),
        ):
            assert response.status_code == 503
            assert response.json() == loading
        with trio.fail_after(10):
            line = await fake.wait_for_log("server is listening on")
        assert line == f"srv  llama_server: server is listening on {fake.url}"
        health = await client.get("/health")
        assert (health.status_code, health.json()) == (200, {"status": "ok"})
        answer = (await client.post("/v1/chat/completions", json=OPENAI_CHAT)).json()
        stream = await client.post(
            "/v1/completions", json={"prompt": "x", "stream": True, "max_tokens": 2}
        )
        bad = await client.post("/v1/completions", json={"max_tokens": 2})
    assert answer["id"].startswith("chatcmpl-")
    assert answer["system_fingerprint"]
    assert answer["timings"]["predicted_n"] == 4
    assert answer["usage"]["completion_tokens"] == 4
    assert stream.headers["x-accel-buffering"] == "no"
    chunks = openai_events(stream.content)
    assert chunks[-1] == b"[DONE]"
    assert "timings" in json.loads(chunks[-2])
    assert bad.status_code == 400
    assert bad.json()["error"]["type"] == "invalid_request_error"
    assert "srv  llama_server: model loaded" in fake.log_text()


# -- failing to start --------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("flavor", "knob", "expected"),
    [
        (
            "sglang",
            "--fail-load",
            "Not enough memory. Please try to increase --mem-fraction-static",
        ),
        ("sglang", "--fail-warmup", "Initialization failed. warmup error"),
        ("llamacpp", "--fail-load", "llama_model_load: error loading model: out of luck"),
        ("llamacpp", "--fail-load", "srv  llama_server: exiting due to model loading error"),
    ],
)
async def test_failed_starts_exit_1_with_the_flavors_lines(
    nursery: trio.Nursery, tmp_path: Path, flavor: str, knob: str, expected: str
) -> None:
    # (vLLM's failed load is among every fake's, in test_fake_knobs.)
    fake = await spawn_fake(
        nursery, OPENAI_FAKE, *openai_fast(flavor), knob, "out of luck", log_path=tmp_path / "f.log"
    )
    with trio.fail_after(10):
        assert await fake.wait() == 1
    assert expected in fake.log_text()
    assert OPENAI_READY[flavor] not in fake.log_text()
    backend = backend_for(Settings(server=flavor))
    meanings = [backend.classify(line) for line in fake.log_text().splitlines()]
    assert any(rule is not None and rule.action is LogAction.MODEL_ERROR for rule in meanings)
