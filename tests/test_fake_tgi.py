"""The fake TGI server's wire fidelity, run as a real subprocess (see spec §1 and §6): its life.
Starting (TGI's JSON log lines; nothing listens until the router is connected), failing to start
(each fatal variant, impossible limits), the health, info, models and metrics routes, stopping on
SIGTERM and crashing mid-stream. Generating (JSON and streams, errors and overload, the request
log, a client leaving) is in ``test_fake_tgi_generate.py``."""

from __future__ import annotations

import io
import json
from pathlib import Path

import httpx
import pytest
import trio
from fakes import (
    TGI_BACKEND,
    TGI_FAKE,
    fake_client,
    free_port,
    spawn_fake,
    start_fake_tgi,
    tgi_body,
)

from backends._fakekit import serve_fake
from backends.tgi._fake_launcher import VARIANTS
from backends.tgi._fake_log import TGILog
from backends.tgi.fake import launcher, parse
from pyworker import LogAction

# Every wait is bounded: httpx's timeouts, start_fake's own bound, fail_after around polls.


# -- start and stop ----------------------------------------------------------------------------
async def test_start_logs_tgi_json_and_refuses_connections_until_connected(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    port = free_port()
    log_path = tmp_path / "tgi.log"
    fake = await spawn_fake(
        nursery, TGI_FAKE, "--load-delay", "0.6", "--port", str(port), log_path=log_path
    )
    with trio.fail_after(10):
        await fake.wait_for_log("Starting check and download process")
    # Loading: nothing listens, as with TGI (no "loading" 503).
    with pytest.raises(OSError, match="connect"):
        await trio.open_tcp_stream("127.0.0.1", port)
    with trio.fail_after(10):
        connected = await fake.wait_for_log('"message":"Connected"')
        await fake.wait_listening()
    rule = TGI_BACKEND.classify(connected)
    assert rule is not None
    assert rule.action is LogAction.MODEL_LOADED
    record = json.loads(connected)
    assert record["target"] == "text_generation_router::server"
    assert record["filename"] == "router/src/server.rs"
    assert record["level"] == "INFO"
    lines = [json.loads(line) for line in fake.log_text().splitlines()]
    messages = [r["fields"]["message"] if "fields" in r else r["message"] for r in lines]
    assert messages[0].startswith("Args {\n    model_id: ")
    order = [
        "Starting check and download process for bigscience/bloom-560m",
        "Successfully downloaded weights for bigscience/bloom-560m",
        "Starting shard",
        "Starting Webserver",
        "Warming up model",
        "Connected",
    ]
    assert [m for m in messages if m in order] == order
    launcher = [r for r in lines if r["target"] == "text_generation_launcher"]
    assert all(set(r) >= {"timestamp", "level", "fields"} for r in launcher)
    shard = next(r for r in lines if r.get("fields", {}).get("message") == "Starting shard")
    assert shard["span"] == {"rank": 0, "name": "shard-manager"}
    download = [line for line in fake.log_text().splitlines() if "Download" in line]
    assert all(TGI_BACKEND.classify(line) is not None for line in download)
    # SIGTERM: the router's and launcher's shutdown lines, exit status 0.
    await fake.aclose()
    assert fake.process.returncode == 0
    assert "Shutting down shards" in fake.log_text().splitlines()[-1]


async def test_fail_load_prints_the_launcher_error_and_exits_1(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    reasons = ("DownloadError", "torch.OutOfMemoryError: CUDA out of memory.")
    fakes = [
        await spawn_fake(
            nursery,
            TGI_FAKE,
            "--load-delay",
            "0",
            "--fail-load",
            reason,
            log_path=tmp_path / f"fake{n}.log",
        )
        for n, reason in enumerate(reasons)
    ]
    with trio.fail_after(20):
        codes = [await fake.wait() for fake in fakes]
    assert codes == [1, 1]
    download, shard = (fake.log_text().splitlines() for fake in fakes)
    assert download[-1] == "Error: DownloadError"
    assert "Download encountered an error" in download[-2]
    assert shard[-1] == "Error: ShardCannotStart"
    assert "torch.OutOfMemoryError: CUDA out of memory." in "".join(shard)


@pytest.mark.parametrize("variant", VARIANTS)
async def test_each_fatal_variant_logs_tgi_lines_then_its_error(variant: str) -> None:
    knobs, options = parse(["--load-delay", "0", "--fail-load", variant])
    out = io.StringIO()
    with trio.fail_after(5):
        code = await serve_fake(launcher(knobs, options, TGILog(out)), knobs)
    assert code == 1
    lines = out.getvalue().splitlines()
    assert lines[-1].startswith(f"Error: {variant}")
    assert not any('"Connected"' in line for line in lines)
    rule = TGI_BACKEND.classify(lines[-1])
    assert rule is not None
    assert rule.action is LogAction.MODEL_ERROR
    for line in lines[:-1]:
        json.loads(line)  # everything before it is TGI's JSON


async def test_impossible_limits_are_an_argument_validation_error(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    fake = await spawn_fake(
        nursery,
        TGI_FAKE,
        "--max-input-tokens",
        "4096",
        "--max-total-tokens",
        "4096",
        log_path=tmp_path / "tgi.log",
    )
    with trio.fail_after(10):
        assert await fake.wait() == 1
    assert fake.log_text().splitlines()[-1].startswith("Error: ArgumentValidation(")


# -- health, info, metrics, crashes ------------------------------------------------------------
async def test_health_info_models_and_metrics(nursery: trio.Nursery, tmp_path: Path) -> None:
    fake = await start_fake_tgi(nursery, tmp_path, "--model-id", "org/model-7b")
    async with fake_client(fake, http_timeout=10.0) as client:
        for path in ("/health", "/", "/ping"):
            health = await client.get(path)
            assert health.status_code == 200
            assert health.content == b""
        info = (await client.get("/info")).json()
        assert info["model_id"] == "org/model-7b"
        assert info["max_concurrent_requests"] == 128
        assert info["max_total_tokens"] == 4096
        assert info["router"] == "text-generation-router"
        models = (await client.get("/v1/models")).json()
        assert models == {
            "object": "list",
            "data": [
                {"id": "org/model-7b", "object": "model", "created": 0, "owned_by": "org/model-7b"}
            ],
        }
        await client.post("/generate", json=tgi_body(1))
        metrics = (await client.get("/metrics")).text
    for name in ("tgi_queue_size 0", "tgi_batch_current_size 0", "tgi_request_count 1"):
        assert name in metrics
    assert "tgi_request_success 1" in metrics


async def test_unhealthy_health_is_503_json(nursery: trio.Nursery, tmp_path: Path) -> None:
    fake = await start_fake_tgi(nursery, tmp_path, "--unhealthy-after", "0")
    async with fake_client(fake, http_timeout=10.0) as client:
        health = await client.get("/health")
    assert health.status_code == 503
    assert health.json() == {"error": "unhealthy", "error_type": "healthcheck"}


async def test_crash_mid_stream_logs_shard_failed(nursery: trio.Nursery, tmp_path: Path) -> None:
    fake = await start_fake_tgi(nursery, tmp_path, "--crash-after", "2")
    async with fake_client(fake, http_timeout=10.0) as client:
        with pytest.raises(httpx.HTTPError):
            await client.post("/generate_stream", json=tgi_body(10))
    with trio.fail_after(10):
        assert await fake.wait() == 1
    lines = fake.log_text().splitlines()
    assert lines[-1] == "Error: ShardFailed"
    assert any('"Shard 0 crashed"' in line for line in lines)
