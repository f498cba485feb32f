"""The fake ComfyUI, run as a real subprocess, running prompts: history and /view (PNGs checked
chunk by chunk), batches, subfolders and the cache, the websocket's events in order, previews,
the queue (FIFO, front, delete, clear) and interrupts, a client leaving, a node failing. Its
start-up, info routes and refusals are in ``test_fake_comfyui.py``."""

from __future__ import annotations

import json
import struct
import uuid
import zlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import trio
from fakes import (
    FakeServer,
    comfyui_history,
    empty_image_workflow,
    fake_client,
    get_stats,
    start_fake_comfyui,
    txt2img_workflow,
)

from backends.comfyui import text_to_image_workflow
from backends.comfyui._fake_png import PNG_SIGNATURE, png_size
from backends.comfyui._ws import WebSocket, connect_websocket


# Every wait is bounded (httpx timeouts, fail_after around polling loops), so a misbehaving
# fake fails its test instead of hanging the run.
@asynccontextmanager
async def _websocket(fake: FakeServer, client_id: str) -> AsyncIterator[WebSocket]:
    async with connect_websocket(f"ws://127.0.0.1:{fake.port}/ws?clientId={client_id}") as ws:
        yield ws


async def _submit(client: httpx.AsyncClient, prompt: object, **extra: Any) -> str:
    response = await client.post("/prompt", json={"prompt": prompt, **extra})
    assert response.status_code == 200, response.text
    prompt_id: str = response.json()["prompt_id"]
    return prompt_id


async def _wait_running(client: httpx.AsyncClient, prompt_id: str) -> None:
    with trio.fail_after(10):
        while True:
            if (await get_stats(client))["running"] == prompt_id:
                return
            await trio.sleep(0.01)


async def _events_until_idle(ws: WebSocket, prompt_id: str) -> list[dict[str, Any]]:
    """The JSON events up to and including ``executing {"node": null}`` of ``prompt_id``."""
    events = []
    with trio.fail_after(10):
        while True:
            message = await ws.receive()
            if isinstance(message, bytes):
                continue
            event = json.loads(message)
            events.append(event)
            data = event["data"]
            if event["type"] == "executing" and data["node"] is None:
                assert data["prompt_id"] == prompt_id
                return events


def _check_png(data: bytes) -> tuple[int, int, bytes]:
    """Walk the chunks, checking each CRC; returns width, height and the pixel bytes."""
    assert data[:8] == PNG_SIGNATURE
    offset, idat, kinds = 8, b"", []
    while offset < len(data):
        (length,) = struct.unpack(">I", data[offset : offset + 4])
        kind = data[offset + 4 : offset + 8]
        body = data[offset + 8 : offset + 8 + length]
        (crc,) = struct.unpack(">I", data[offset + 8 + length : offset + 12 + length])
        assert zlib.crc32(kind + body) & 0xFFFFFFFF == crc
        kinds.append(kind)
        if kind == b"IDAT":
            idat += body
        offset += 12 + length
    assert kinds[0] == b"IHDR"
    assert kinds[-1] == b"IEND"
    width, height = png_size(data)
    pixels = zlib.decompress(idat)
    assert len(pixels) == height * (1 + 3 * width)
    return width, height, pixels


# -- prompts, history, view -----------------------------------------------------------------
async def test_prompt_history_and_view(nursery: trio.Nursery, tmp_path: Path) -> None:
    fake = await start_fake_comfyui(nursery, tmp_path)
    async with fake_client(fake) as client:
        chosen = str(uuid.uuid4())
        response = await client.post(
            "/prompt",
            json={"prompt": txt2img_workflow(seed=1), "prompt_id": chosen, "client_id": "c1"},
        )
        assert response.status_code == 200
        answer = response.json()
        assert answer == {"prompt_id": chosen, "number": answer["number"], "node_errors": {}}
        assert isinstance(answer["number"], int)
        entry = await comfyui_history(client, chosen)
        assert set(entry) == {"prompt", "outputs", "status", "meta"}
        number, prompt_id, prompt, extra, outputs = entry["prompt"]
        assert (number, prompt_id, outputs) == (answer["number"], chosen, ["9"])
        assert prompt["3"]["class_type"] == "KSampler"
        assert extra["client_id"] == "c1"
        assert isinstance(extra["create_time"], int)
        status = entry["status"]
        assert status["status_str"] == "success"
        assert status["completed"] is True
        kinds = [m[0] for m in status["messages"]]
        assert kinds == ["execution_start", "execution_cached", "execution_success"]
        assert all(m[1]["prompt_id"] == chosen for m in status["messages"])
        assert entry["meta"]["9"]["node_id"] == "9"
        images = entry["outputs"]["9"]["images"]
        assert images == [{"filename": "pyworker_00001_.png", "subfolder": "", "type": "output"}]
        # Without a prompt_id the server mints a UUID4; another seed, another colour.
        other = await _submit(client, txt2img_workflow(seed=2))
        assert uuid.UUID(other).version == 4
        other_image = (await comfyui_history(client, other))["outputs"]["9"]["images"][0]
        assert other_image["filename"] == "pyworker_00002_.png"

        view = await client.get("/view", params=images[0])
        assert view.status_code == 200
        assert view.headers["content-type"] == "image/png"
        assert view.headers["content-disposition"] == 'filename="pyworker_00001_.png"'
        width, height, pixels = _check_png(view.content)
        assert (width, height) == (64, 64)
        other_view = await client.get("/api/view", params=other_image)
        assert _check_png(other_view.content)[2] != pixels
        # ComfyUI keeps the prompt in the PNG.
        assert b"tEXtprompt\x00" in view.content

        for params, code in [
            ({"filename": "missing.png", "type": "output"}, 404),
            ({"type": "output"}, 404),
            ({"filename": "../secret.png"}, 400),
            ({"filename": "pyworker_00001_.png", "type": "bogus"}, 400),
            ({"filename": "pyworker_00001_.png", "subfolder": "../x"}, 403),
        ]:
            assert (await client.get("/view", params=params)).status_code == code, params
        assert (await get_stats(client))["completed"] == 2


async def test_empty_image_batch_subfolder_and_cache(nursery: trio.Nursery, tmp_path: Path) -> None:
    fake = await start_fake_comfyui(nursery, tmp_path)
    async with fake_client(fake) as client, _websocket(fake, "cache") as ws:
        workflow = empty_image_workflow(2, 0x00FF00, width=40, height=24)
        workflow["2"]["inputs"]["filename_prefix"] = "runs/day1/img"
        first = await _submit(client, workflow, client_id="cache")
        await _events_until_idle(ws, first)
        images = (await comfyui_history(client, first))["outputs"]["2"]["images"]
        assert [i["filename"] for i in images] == ["img_00001_.png", "img_00002_.png"]
        assert {i["subfolder"] for i in images} == {"runs/day1"}
        for image in images:
            data = (await client.get("/view", params=image)).content
            width, height, pixels = _check_png(data)
            assert (width, height) == (40, 24)
            assert pixels[1:4] == bytes([0, 255, 0])  # the top row has the exact colour
        # The same graph again: every node is cached, no new file, the same outputs.
        second = await _submit(client, workflow, client_id="cache")
        events = await _events_until_idle(ws, second)
        cached = next(e for e in events if e["type"] == "execution_cached")
        assert sorted(cached["data"]["nodes"]) == ["1", "2"]
        assert not [e for e in events if e["type"] == "executing" and e["data"]["node"]]
        executed = next(e for e in events if e["type"] == "executed")
        assert executed["data"]["output"]["images"] == images
        assert (await comfyui_history(client, second))["outputs"]["2"]["images"] == images


async def test_websocket_event_order(nursery: trio.Nursery, tmp_path: Path) -> None:
    fake = await start_fake_comfyui(nursery, tmp_path)
    async with fake_client(fake) as client, _websocket(fake, "me") as ws:
        hello = json.loads(await ws.receive())
        assert hello == {
            "type": "status",
            "data": {"status": {"exec_info": {"queue_remaining": 0}}, "sid": "me"},
        }
        await ws.send_text(json.dumps({"type": "feature_flags", "data": {}}))
        flags = json.loads(await ws.receive())
        assert flags["type"] == "feature_flags"
        prompt_id = await _submit(client, txt2img_workflow(steps=3), client_id="me")
        events = await _events_until_idle(ws, prompt_id)
        # The history is written before executing {"node": null} is sent.
        assert (await client.get(f"/history/{prompt_id}")).json()[prompt_id]
    statuses = [
        e["data"]["status"]["exec_info"]["queue_remaining"]
        for e in events[:-1]
        if e["type"] == "status"
    ]
    assert statuses
    assert statuses[0] == 1
    assert "sid" not in events[0]["data"]
    trace = []
    for event in events:
        kind, data = event["type"], event["data"]
        if kind == "status":
            continue
        assert data["prompt_id"] == prompt_id
        if kind == "executing":
            trace.append(f"executing:{data['node']}")
        elif kind == "progress":
            assert data["max"] == 3
            assert data["node"] == "3"
            trace.append(f"progress:{data['value']}")
        elif kind == "executed":
            assert data["output"]["images"][0]["type"] == "output"
            trace.append(f"executed:{data['node']}")
        else:
            assert isinstance(data["timestamp"], int)
            trace.append(kind)
    assert trace[:2] == ["execution_start", "execution_cached"]
    assert trace[-4:] == ["executing:9", "executed:9", "execution_success", "executing:None"]
    sampler = trace.index("executing:3")
    assert trace[sampler + 1 : sampler + 4] == ["progress:1", "progress:2", "progress:3"]
    for before, after in [("4", "6"), ("4", "7"), ("5", "3"), ("6", "3"), ("3", "8"), ("8", "9")]:
        assert trace.index(f"executing:{before}") < trace.index(f"executing:{after}")


async def test_events_without_client_id_and_previews(nursery: trio.Nursery, tmp_path: Path) -> None:
    fake = await start_fake_comfyui(nursery, tmp_path, "--previews")
    async with fake_client(fake) as client, _websocket(fake, "watcher") as ws:
        await ws.receive()  # status
        # No client_id: no execution_* events, but executing/progress/executed broadcast.
        anonymous = await _submit(client, txt2img_workflow(steps=2, seed=3))
        await comfyui_history(client, anonymous)
        mine = await _submit(client, txt2img_workflow(steps=2, seed=4), client_id="watcher")
        kinds, previews = [], 0
        with trio.fail_after(10):
            while True:
                message = await ws.receive()
                if isinstance(message, bytes):
                    assert struct.unpack(">II", message[:8]) == (1, 2)
                    assert message[8:16] == PNG_SIGNATURE
                    previews += 1
                    continue
                event = json.loads(message)
                if event["type"] == "status":
                    continue
                kinds.append((event["data"]["prompt_id"] == anonymous, event["type"]))
                if event["type"] == "execution_success":
                    break
    anonymous_kinds = {kind for is_anonymous, kind in kinds if is_anonymous}
    assert anonymous_kinds == {"executing", "progress", "executed"}
    assert (False, "execution_start") in kinds
    assert mine != anonymous
    assert previews == 2  # only to the prompt's own client: one per step


async def test_queue_fifo_front_delete_clear_and_interrupt(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    fake = await start_fake_comfyui(nursery, tmp_path, "--step-time", "0.01")
    async with fake_client(fake) as client:
        long_id = await _submit(client, txt2img_workflow(steps=5000, seed=1))
        await _wait_running(client, long_id)
        b = await _submit(client, empty_image_workflow(batch=1, color=1))
        c = await _submit(client, empty_image_workflow(batch=1, color=2))
        front = await _submit(client, empty_image_workflow(batch=1, color=3), front=True)
        queue = (await client.get("/queue")).json()
        assert [item[1] for item in queue["queue_running"]] == [long_id]
        assert [item[1] for item in queue["queue_pending"]] == [front, b, c]
        item = queue["queue_pending"][1]
        assert len(item) == 5
        assert item[2]["1"]["class_type"] == "EmptyImage"
        assert item[3]["create_time"] > 0
        assert item[4] == ["2"]
        assert (await client.get("/prompt")).json()["exec_info"]["queue_remaining"] == 4

        assert (await client.post("/queue", json={"delete": [b]})).status_code == 200
        pending = (await client.get("/queue")).json()["queue_pending"]
        assert [item[1] for item in pending] == [front, c]
        await client.post("/api/queue", json={"clear": True})
        assert (await client.get("/queue")).json()["queue_pending"] == []

        # An interrupt aimed at another prompt leaves the running one alone.
        await client.post("/interrupt", json={"prompt_id": b})
        assert (await get_stats(client))["running"] == long_id
        await client.post("/interrupt", json={"prompt_id": long_id})
        entry = await comfyui_history(client, long_id)
        assert entry["status"]["status_str"] == "error"
        assert entry["status"]["completed"] is False
        last = entry["status"]["messages"][-1]
        assert last[0] == "execution_interrupted"
        assert last[1]["node_id"] == "3"
        stats = await get_stats(client)
        assert stats["interrupted"] == 1
        assert stats["deleted"] == 3
        assert 0 < stats["steps"] < 5000
        assert stats["max_queue_remaining"] == 4
        assert (await client.get(f"/history/{b}")).json() == {}
        # A global interrupt with nothing running is harmless; the next prompt runs.
        assert (await client.post("/interrupt")).status_code == 200
        after = await _submit(client, empty_image_workflow(batch=1, color=4))
        assert (await comfyui_history(client, after))["status"]["status_str"] == "success"
    log = fake.log_text()
    assert f"Interrupting prompt {long_id}" in log
    assert f"Prompt {b} is not currently running, skipping interrupt" in log
    assert "Processing interrupted" in log
    assert "Global interrupt (no prompt_id specified)" in log


async def test_history_listing_and_delete(nursery: trio.Nursery, tmp_path: Path) -> None:
    fake = await start_fake_comfyui(nursery, tmp_path)
    async with fake_client(fake) as client:
        ids = [await _submit(client, empty_image_workflow(batch=1, color=i)) for i in range(3)]
        await comfyui_history(client, ids[-1])
        assert list((await client.get("/history")).json()) == ids
        assert list((await client.get("/history", params={"max_items": 2})).json()) == ids[1:]
        await client.post("/history", json={"delete": [ids[0]]})
        assert list((await client.get("/history")).json()) == ids[1:]
        await client.post("/history", json={"clear": True})
        assert (await client.get("/history")).json() == {}


async def test_client_disconnect_does_not_cancel(nursery: trio.Nursery, tmp_path: Path) -> None:
    fake = await start_fake_comfyui(nursery, tmp_path)
    async with fake_client(fake) as client, _websocket(fake, "gone") as ws:
        prompt_id = await _submit(client, txt2img_workflow(steps=40), client_id="gone")
        await ws.receive()
    # Both the websocket and the HTTP connection are gone; the prompt runs on.
    async with fake_client(fake) as client:
        entry = await comfyui_history(client, prompt_id)
        assert entry["status"]["status_str"] == "success"
        assert (await get_stats(client))["steps"] == 40


async def test_node_failure_is_recorded_and_not_fatal(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    fake = await start_fake_comfyui(nursery, tmp_path, "--fail-on-text", "explode")
    async with fake_client(fake) as client, _websocket(fake, "f") as ws:
        workflow = text_to_image_workflow(prompt="explode", width=64, height=64, steps=4)
        prompt_id = await _submit(client, workflow, client_id="f")
        events = await _events_until_idle(ws, prompt_id)
        entry = await comfyui_history(client, prompt_id)
        fine = await _submit(client, txt2img_workflow(steps=2))
        assert (await comfyui_history(client, fine))["status"]["status_str"] == "success"
    error = next(e["data"] for e in events if e["type"] == "execution_error")
    assert error["node_id"] == "3"
    assert error["node_type"] == "KSampler"
    assert "fake node failure" in error["exception_message"]
    assert {"exception_type", "traceback", "executed", "current_inputs"} <= set(error)
    assert entry["status"]["status_str"] == "error"
    assert entry["status"]["messages"][-1][0] == "execution_error"
    assert entry["outputs"] == {}
    assert "!!! Exception during processing !!! fake node failure" in fake.log_text()
