"""The fake ComfyUI, run as a real subprocess: its start-up (and failing to start), its info
routes and command line, and what it refuses: invalid prompts (ComfyUI's validation errors),
partially valid ones, injected errors. Running prompts is in ``test_fake_comfyui_prompts.py``."""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Any

import pytest
import trio
from fakes import (
    COMFYUI_FAKE,
    comfyui_history,
    empty_image_workflow,
    fake_client,
    get_stats,
    spawn_fake,
    start_fake_comfyui,
    txt2img_workflow,
)

from backends.comfyui.fake import parse

READY = "To see the GUI go to:"


# -- start-up -------------------------------------------------------------------------------
async def test_start_up_is_comfyuis_bare_lines(nursery: trio.Nursery, tmp_path: Path) -> None:
    fake = await start_fake_comfyui(nursery, tmp_path)
    log = fake.log_text()
    assert f"To see the GUI go to: {fake.url}\n" in log
    assert (
        log.index("Import times for custom nodes:")
        < log.index("Starting server")
        < log.index(READY)
    )
    # ComfyUI's bare %(message)s lines: no timestamp or level.
    assert log.startswith("Total VRAM ")


@pytest.mark.parametrize(
    ("reason", "line"),
    [
        ("cuda", "AssertionError: Torch not compiled with CUDA enabled"),
        ("port", "is already in use on address 127.0.0.1. Please close the other application"),
    ],
)
async def test_fail_load_exits_1_with_the_fatal_line(
    nursery: trio.Nursery, tmp_path: Path, reason: str, line: str
) -> None:
    fake = await spawn_fake(
        nursery,
        COMFYUI_FAKE,
        "--load-delay",
        "0",
        "--fail-load",
        reason,
        log_path=tmp_path / "c.log",
    )
    with trio.fail_after(10):
        assert await fake.wait() == 1
    assert line in fake.log_text()
    assert READY not in fake.log_text()


async def test_port_in_use_exits_1(nursery: trio.Nursery, tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        fake = await spawn_fake(
            nursery,
            COMFYUI_FAKE,
            "--load-delay",
            "0",
            "--port",
            str(port),
            log_path=tmp_path / "c.log",
        )
        with trio.fail_after(10):
            assert await fake.wait() == 1
    assert f"Port {port} is already in use on address 127.0.0.1." in fake.log_text()


# -- info routes ----------------------------------------------------------------------------
async def test_info_routes_and_api_prefix(nursery: trio.Nursery, tmp_path: Path) -> None:
    fake = await start_fake_comfyui(nursery, tmp_path, "--checkpoints", "a.safetensors,b.ckpt")
    async with fake_client(fake) as client:
        for prefix in ("", "/api"):
            stats = (await client.get(f"{prefix}/system_stats")).json()
            assert {"os", "comfyui_version", "python_version", "pytorch_version"} <= set(
                stats["system"]
            )
            assert stats["devices"][0]["type"] == "cuda"
            info = (await client.get(f"{prefix}/object_info")).json()
            assert {
                "CheckpointLoaderSimple",
                "CLIPTextEncode",
                "EmptyLatentImage",
                "KSampler",
                "VAEDecode",
                "EmptyImage",
                "SaveImage",
            } <= set(info)
            loader = info["CheckpointLoaderSimple"]
            assert loader["input"]["required"]["ckpt_name"][0] == ["a.safetensors", "b.ckpt"]
            assert loader["output"] == ["MODEL", "CLIP", "VAE"]
            assert info["SaveImage"]["output_node"] is True
            assert info["EmptyImage"]["input"]["required"]["color"][1]["max"] == 0xFFFFFF
            one = (await client.get(f"{prefix}/object_info/KSampler")).json()
            assert list(one) == ["KSampler"]
            assert (await client.get(f"{prefix}/object_info/Nope")).json() == {}
            assert (await client.get(f"{prefix}/models/checkpoints")).json() == [
                "a.safetensors",
                "b.ckpt",
            ]
            assert (await client.get(f"{prefix}/prompt")).json() == {
                "exec_info": {"queue_remaining": 0}
            }
        assert (await client.get("/nowhere")).status_code == 404
        assert (await client.get("/interrupt")).status_code == 405
        assert (await client.post("/system_stats")).status_code == 405


async def test_error_rate_is_aiohttps_500_and_queues_nothing(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    fake = await start_fake_comfyui(nursery, tmp_path, "--error-rate", "1")
    async with fake_client(fake) as client:
        failed = await client.post("/prompt", json={"prompt": empty_image_workflow(batch=1)})
        assert failed.status_code == 500
        assert failed.text.startswith("500 Internal Server Error")
        assert (await client.get("/queue")).json()["queue_pending"] == []
        stats = await get_stats(client)
    assert (stats["errors"], stats["submitted"]) == (1, 0)
    log = fake.log_text()
    assert "Error handling request from 127.0.0.1" in log
    assert "RuntimeError: injected failure (--error-rate)" in log


def test_listen_is_comfyuis_name_for_host() -> None:
    knobs, settings = parse(["--listen", "0.0.0.0", "--checkpoints", "a.safetensors"])
    assert knobs.host == "0.0.0.0"
    assert settings.checkpoints == ("a.safetensors",)
    assert parse([])[0].host == "127.0.0.1"


def _bad_link_workflow() -> dict[str, Any]:
    workflow = txt2img_workflow()
    workflow["8"]["inputs"]["vae"] = ["4", 0]  # MODEL where a VAE belongs
    return workflow


def _missing_ckpt_workflow() -> dict[str, Any]:
    workflow = txt2img_workflow()
    workflow["4"]["inputs"]["ckpt_name"] = "missing.safetensors"
    return workflow


def _too_many_steps() -> dict[str, Any]:
    workflow = txt2img_workflow()
    workflow["3"]["inputs"]["steps"] = 20000
    del workflow["3"]["inputs"]["cfg"]
    return workflow


_INVALID: list[tuple[dict[str, Any], str, dict[str, list[str]]]] = [
    ({"client_id": "x"}, "no_prompt", {}),
    ({"prompt": {"1": {"inputs": {}}}}, "invalid_prompt", {}),
    ({"prompt": {"1": {"class_type": "Nope", "inputs": {}}}}, "invalid_prompt", {}),
    ({"prompt": empty_image_workflow(batch=1), "prompt_id": "not-a-uuid"}, "invalid_prompt_id", {}),
    ({"prompt": {"1": {"class_type": "EmptyImage", "inputs": {}}}}, "prompt_no_outputs", {}),
    (
        {"prompt": _missing_ckpt_workflow()},
        "prompt_outputs_failed_validation",
        {"4": ["value_not_in_list"]},
    ),
    (
        {"prompt": _bad_link_workflow()},
        "prompt_outputs_failed_validation",
        {"8": ["return_type_mismatch"]},
    ),
    (
        {"prompt": _too_many_steps()},
        "prompt_outputs_failed_validation",
        {"3": ["required_input_missing", "value_bigger_than_max"]},
    ),
]


async def test_validation_errors(nursery: trio.Nursery, tmp_path: Path) -> None:
    fake = await start_fake_comfyui(nursery, tmp_path)
    async with fake_client(fake) as client:
        for body, error_type, node_error_types in _INVALID:
            response = await client.post("/prompt", json=body)
            assert response.status_code == 400, body
            answer = response.json()
            assert set(answer) == {"error", "node_errors"}
            assert answer["error"]["type"] == error_type
            assert {"message", "details", "extra_info"} <= set(answer["error"])
            found = {
                node_id: sorted(e["type"] for e in node["errors"])
                for node_id, node in answer["node_errors"].items()
            }
            assert found == node_error_types
            for node in answer["node_errors"].values():
                assert node["dependent_outputs"] == ["9"]
                assert node["class_type"] == body["prompt"][next(iter(found))]["class_type"]
        missing = (await client.post("/prompt", json={"prompt": _missing_ckpt_workflow()})).json()
        error = missing["node_errors"]["4"]["errors"][0]
        assert error["details"].startswith("ckpt_name: 'missing.safetensors' not in [")
        assert error["extra_info"]["received_value"] == "missing.safetensors"
        unknown = (await client.post("/prompt", json=_INVALID[2][0])).json()
        assert unknown["error"]["message"] == "Cannot execute because node Nope does not exist."
        assert unknown["error"]["details"] == "Node ID '#1'"
        stats = await get_stats(client)
        assert stats["rejected"] == len(_INVALID) + 2
        assert stats["submitted"] == 0
    log = fake.log_text()
    assert "got prompt" in log
    assert "* CheckpointLoaderSimple 4:" in log
    assert "  - Value not in list: ckpt_name: 'missing.safetensors' not in" in log
    assert "invalid prompt: {'type': 'prompt_outputs_failed_validation'" in log


async def test_partially_valid_prompt_runs_the_valid_outputs(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    fake = await start_fake_comfyui(nursery, tmp_path)
    async with fake_client(fake) as client:
        workflow = empty_image_workflow(batch=1)
        workflow["3"] = {"class_type": "PreviewImage", "inputs": {"images": ["1", 5]}}
        response = await client.post("/prompt", json={"prompt": workflow})
        assert response.status_code == 200
        answer = response.json()
        assert list(answer["node_errors"]) == ["3"]
        assert answer["node_errors"]["3"]["dependent_outputs"] == ["3"]
        entry = await comfyui_history(client, answer["prompt_id"])
        assert list(entry["outputs"]) == ["2"]
        # A body that is not JSON makes aiohttp's handler raise: a plain-text 500.
        broken = await client.post("/prompt", content=b"{nope")
        assert broken.status_code == 500
        assert broken.text.startswith("500 Internal Server Error")
    log = fake.log_text()
    assert "Failed to validate prompt for output 3:" in log
    assert "Output will be ignored" in log
