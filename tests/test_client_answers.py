"""Reading answers for a person: stream events split whatever the chunking, each backend's
token, images saved to files; and the client command against a real hello_world stack."""

from __future__ import annotations

import base64
import itertools
import json
from pathlib import Path

import pytest
import trio
from harness import ready_stack, start_stack
from hypothesis import given
from hypothesis import strategies as st

from pyworker import estimate_tokens
from pyworker.devtools import client
from pyworker.devtools._answers import EventReader, event_error, save_images, token_text

STREAM = (
    b": a comment\r\n"
    b'data: {"token": " h\xc3\xa9llo"}\r\n\r\n'
    b'event: message\nid: 2\ndata:{"a": 1}\n\n'
    b"data: line one\ndata: line two\n\n"
    b'{"json": "lines"}\n'
    b"data: [DONE]\n\n"
    b"data: no blank line at the end"
)
EVENTS = [
    '{"token": " héllo"}',
    '{"a": 1}',
    "line one\nline two",
    '{"json": "lines"}',
    "[DONE]",
    "no blank line at the end",
]


def _read(chunks: list[bytes]) -> list[str]:
    reader = EventReader()
    events = [data for chunk in chunks for data in reader.feed(chunk)]
    return events + reader.close()


@given(st.lists(st.integers(min_value=0, max_value=len(STREAM)), max_size=12))
def test_events_are_the_same_however_the_stream_is_cut(cuts: list[int]) -> None:
    edges = [0, *sorted(cuts), len(STREAM)]
    chunks = [STREAM[a:b] for a, b in itertools.pairwise(edges)]
    assert _read(chunks) == EVENTS


def test_each_backends_token() -> None:
    hello = {"token": " hi"}
    tgi = {"token": {"id": 1, "text": " hi", "logprob": -0.1, "special": False}}
    tgi_special = {"token": {"id": 2, "text": "</s>", "special": True}, "generated_text": "x"}
    completion = {"choices": [{"index": 0, "text": " hi", "finish_reason": None}]}
    chat = {"choices": [{"index": 0, "delta": {"content": " hi"}}]}
    chat_role = {"choices": [{"index": 0, "delta": {"role": "assistant"}}]}
    assert token_text(hello, "hello_world") == " hi"
    assert token_text(tgi, "tgi") == " hi"
    assert token_text(tgi_special, "tgi") is None
    assert token_text(completion, "openai") == token_text(chat, "openai") == " hi"
    assert token_text(chat_role, "openai") is None
    assert token_text(tgi, "hello_world") is None  # read the backend's way only
    for event in (hello, tgi, completion, chat):  # unknown or no backend: any reader
        assert token_text(event, None) == token_text(event, "comfyui") == " hi"
    assert token_text({"done": True, "generated_tokens": 3}) is None
    assert token_text([1, 2]) is None


def test_in_stream_errors() -> None:
    assert event_error({"error": "Input validation error", "error_type": "validation"}) == (
        "Input validation error"
    )
    assert event_error({"error": {"message": "overloaded", "code": 503}}) == "overloaded"
    assert event_error({"token": "x"}) is None
    assert event_error("text") is None


def test_images_are_saved_and_replaced_by_a_note(tmp_path: Path) -> None:
    png, jpeg = b"\x89PNG\r\n\x1a\nfirst", b"\xff\xd8second"
    png_data, jpeg_data = base64.b64encode(png).decode(), base64.b64encode(jpeg).decode()
    images = [
        {"filename": "a.png", "content_type": "image/png", "data": png_data},
        {"filename": "b.jpg", "content_type": "image/jpeg", "data": jpeg_data},
    ]
    shown, saved = save_images({"prompt_id": "p", "images": images}, tmp_path / "out")
    assert saved == [tmp_path / "out-1.png", tmp_path / "out-2.jpg"]
    assert [p.read_bytes() for p in saved] == [png, jpeg]
    assert isinstance(shown, dict)
    assert shown["images"][0]["data"] == f"<13 bytes: saved to {tmp_path / 'out-1.png'}>"
    assert shown["images"][1]["filename"] == "b.jpg"

    one = {"images": [images[0]]}
    assert save_images(one, tmp_path / "cat.webp")[1] == [tmp_path / "cat.webp"]
    unsaved, none = save_images(one, None)
    assert none == []
    assert isinstance(unsaved, dict)
    assert unsaved["images"][0]["data"] == "<13 bytes: not saved, use --output FILE>"
    assert save_images({"generated_text": "x"}, tmp_path / "x") == ({"generated_text": "x"}, [])


async def test_client_estimates_the_cost_and_prints_tokens(
    nursery: trio.Nursery, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    stack = await ready_stack(nursery, tmp_path)
    text = "count the tokens of this prompt"
    prompt = {"prompt": text, "max_response_tokens": 5}
    base = ["--router", stack.standin_url, "-e", "group", "--backend", "hello_world"]
    argv = [*base, "/generate_stream", json.dumps(prompt)]
    assert await trio.to_thread.run_sync(client.main, argv) == 0
    out, err = capsys.readouterr()
    assert err == ""
    assert out.endswith("\n")
    assert len(out.split()) == 5
    assert "data:" not in out
    assert "{" not in out
    call = stack.standin.route_calls[-1]
    assert call.cost == estimate_tokens(text) + 5
    assert call.endpoint == "group"

    refused = [*base, "/generate", json.dumps({"prompt": 3})]
    with pytest.raises(SystemExit) as usage:
        await trio.to_thread.run_sync(client.main, refused)
    assert usage.value.code == 2
    assert "refuses the payload" in capsys.readouterr().err
    assert stack.standin.routes_received == 1  # the refused payload was not sent


@pytest.mark.parametrize(
    ("backend", "fake_args", "route", "payload"),
    [
        (
            "tgi",
            ("--load-delay", "0", "--token-rate", "5000"),
            "/generate_stream",
            {"inputs": "Tell me a story.", "parameters": {"max_new_tokens": 6}},
        ),
        (
            "openai",
            ("--load-delay", "0.1", "--token-rate", "5000"),
            "/v1/chat/completions",
            {"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 6, "stream": True},
        ),
        (
            "openai",
            ("--load-delay", "0.1", "--token-rate", "5000"),
            "/v1/completions",
            {"prompt": "Once", "max_tokens": 6, "stream": True},
        ),
    ],
)
async def test_client_prints_each_backends_stream_as_text(
    nursery: trio.Nursery,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    backend: str,
    fake_args: tuple[str, ...],
    route: str,
    payload: dict[str, object],
) -> None:
    stack = await start_stack(
        nursery, tmp_path, backend, *fake_args, wait_ready=True, benchmark_runs=2
    )
    argv = ["--router", stack.standin_url, "--backend", backend, route, json.dumps(payload)]
    assert await trio.to_thread.run_sync(client.main, argv) == 0
    out, err = capsys.readouterr()
    assert err == ""
    assert out.strip()
    for raw in ("data:", "{", "[DONE]"):
        assert raw not in out


async def test_client_saves_comfyui_images(
    nursery: trio.Nursery, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    stack = await start_stack(
        nursery, tmp_path, "comfyui", "--load-delay", "0.1", wait_ready=True, benchmark_runs=2
    )
    payload = {"prompt": "a cat", "width": 64, "height": 64, "steps": 2, "seed": 1}
    output = tmp_path / "cat.png"
    argv = ["--router", stack.standin_url, "--backend", "comfyui", "-o", str(output)]
    assert (
        await trio.to_thread.run_sync(client.main, [*argv, "/generate", json.dumps(payload)]) == 0
    )
    out, err = capsys.readouterr()
    assert output.read_bytes().startswith(b"\x89PNG\r\n\x1a\n")
    assert err == f"saved {output}\n"
    shown = json.loads(out)
    assert shown["images"][0]["data"].endswith(f"saved to {output}>")
