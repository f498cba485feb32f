"""The openai backend in front of a real llama.cpp server (llama-cpp-python's OpenAI server).

Needs ``llama_cpp`` (with its ``[server]`` extra) and ``gguf`` importable by the interpreter
named in ``LLAMACPP_PYTHON`` (default: this one). ``tox -e llamacpp`` (part of ``tox``, and so
of CI) builds them into its own env, where a missing server fails the test; elsewhere it is
skipped (the README gives the commands for a venv of your own).

The model is a ~0.5 MB llama with random weights that the test writes with ``gguf``: 2 layers,
a byte-level SentencePiece vocabulary of ~300 tokens and a chat template. It generates noise,
quickly, which is all the worker needs: real HTTP, real streaming, real ``usage``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from functools import partial
from pathlib import Path
from typing import Any

import harness
import pytest
import trio
from fakes import REPO_ROOT, FakeServer
from harness import Stack, start_stack

from backends.openai import make_backend, parse_chat
from pyworker import State

pytestmark = pytest.mark.llamacpp

PYTHON = os.environ.get("LLAMACPP_PYTHON") or sys.executable
N_CTX = 8192
EOS = 2
# Random weights emit the EOS token now and then; a bias keeps generations at full length.
NO_EOS = {"logit_bias": {str(EOS): -100}}

WRITE_MODEL = r"""
import sys
import numpy as np
import gguf

rng = np.random.default_rng(0)
n_embd, n_head, n_ff, n_layer = 64, 4, 128, 2
pieces = ["\u2581" + w for w in "the a model server token stream answer hello world".split()]
pieces += list("abcdefghijklmnopqrstuvwxyz") + ["\u2581"]
# ASCII byte tokens only: random bytes above 0x7f would make invalid UTF-8, which
# llama-cpp-python holds back from a stream until it decodes, so a stream would stall.
tokens = ["<unk>", "<s>", "</s>"] + [f"<0x{b:02X}>" for b in range(128)] + pieces
types = [gguf.TokenType.UNKNOWN, gguf.TokenType.CONTROL, gguf.TokenType.CONTROL]
types += [gguf.TokenType.BYTE] * 128 + [gguf.TokenType.NORMAL] * len(pieces)
scores = [0.0] * 131 + [-float(i) for i in range(len(pieces))]

w = gguf.GGUFWriter(sys.argv[1], "llama")
w.add_name("tiny-random-llama")
w.add_context_length(int(sys.argv[2]))
w.add_embedding_length(n_embd)
w.add_block_count(n_layer)
w.add_feed_forward_length(n_ff)
w.add_head_count(n_head)
w.add_head_count_kv(n_head)
w.add_rope_dimension_count(n_embd // n_head)
w.add_layer_norm_rms_eps(1e-5)
w.add_file_type(gguf.LlamaFileType.ALL_F32)
w.add_tokenizer_model("llama")
w.add_token_list(tokens)
w.add_token_scores(scores)
w.add_token_types(types)
w.add_bos_token_id(1)
w.add_eos_token_id(2)
w.add_unk_token_id(0)
w.add_chat_template(
    "{{ bos_token }}{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}"
    "{{ eos_token }}\n{% endfor %}{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)

def weights(*shape):
    return (rng.standard_normal(shape) * 0.02).astype(np.float32)

ones = np.ones(n_embd, dtype=np.float32)
w.add_tensor("token_embd.weight", weights(len(tokens), n_embd))
w.add_tensor("output_norm.weight", ones)
w.add_tensor("output.weight", weights(len(tokens), n_embd))
for i in range(n_layer):
    w.add_tensor(f"blk.{i}.attn_norm.weight", ones)
    for name in ("attn_q", "attn_k", "attn_v", "attn_output"):
        w.add_tensor(f"blk.{i}.{name}.weight", weights(n_embd, n_embd))
    w.add_tensor(f"blk.{i}.ffn_norm.weight", ones)
    w.add_tensor(f"blk.{i}.ffn_gate.weight", weights(n_ff, n_embd))
    w.add_tensor(f"blk.{i}.ffn_up.weight", weights(n_ff, n_embd))
    w.add_tensor(f"blk.{i}.ffn_down.weight", weights(n_embd, n_ff))
w.write_header_to_file()
w.write_kv_data_to_file()
w.write_tensors_to_file()
w.close()
"""


@pytest.fixture(scope="module")
def model_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random llama GGUF, written with the llama interpreter's ``gguf``."""
    probe = subprocess.run(
        [PYTHON, "-c", "import llama_cpp.server, gguf"], capture_output=True, check=False
    )
    if probe.returncode != 0:
        why = f"llama_cpp[server] and gguf are not importable by {PYTHON}"
        if os.environ.get("PYWORKER_REQUIRE_LLAMACPP"):
            pytest.fail(f"{why}: {probe.stderr.decode(errors='replace')[-500:]}")
        pytest.skip(why)
    path = tmp_path_factory.mktemp("llamacpp") / "tiny.gguf"
    subprocess.run([PYTHON, "-c", WRITE_MODEL, str(path), str(N_CTX)], check=True)
    return path


async def _spawn_server(
    nursery: trio.Nursery, module: str, *args: str, log_path: Path | str
) -> FakeServer:
    """Start ``python -m MODULE ARGS`` with its output in the log (the harness's spawn_fake
    adds fake-only flags, which the real server would refuse)."""
    log_path = Path(log_path)
    log = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        process: trio.Process = await nursery.start(
            partial(
                trio.run_process,
                [PYTHON, "-m", module, *args],
                check=False,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=REPO_ROOT,
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
            )
        )
    finally:
        os.close(log)  # the child has its own copy
    return FakeServer(process=process, log_path=log_path, port_file=log_path.with_suffix(".port"))


async def _start(
    nursery: trio.Nursery, tmp_path: Path, model: Path, monkeypatch: pytest.MonkeyPatch
) -> Stack:
    monkeypatch.setattr(harness, "spawn_fake", _spawn_server)
    return await start_stack(
        nursery,
        tmp_path,
        "openai",
        "--model",
        str(model),
        "--host",
        "127.0.0.1",
        "--n_ctx",
        str(N_CTX),
        # Requests wait their turn instead of cutting short the one being streamed.
        "--interrupt_requests",
        "False",
        fake_module="llama_cpp.server",
        backend=make_backend({"OPENAI_SERVER": "llama-cpp-python"}),
        read_timeout=60.0,
    )


async def _idle(stack: Stack) -> None:
    with trio.fail_after(10):
        while True:
            if not stack.worker.tracker.in_flight:
                return
            await trio.sleep(0.01)


async def _stream(stack: Stack, payload: object, *, stop_after: int | None = None) -> list[bytes]:
    """Stream through the worker; the SSE events (``stop_after``: drop the stream then)."""
    events: list[bytes] = []
    buffer = b""
    with trio.CancelScope() as scope:
        envelope = stack.envelope(payload)
        async with stack.http.stream(
            "POST", stack.url + "/v1/chat/completions", json=envelope
        ) as response:
            assert response.status_code == 200
            async for chunk in response.aiter_raw():
                buffer += chunk.replace(b"\r\n", b"\n")
                *complete, buffer = buffer.split(b"\n\n")
                events.extend(event for event in complete if event.startswith(b"data:"))
                if stop_after is not None and len(events) >= stop_after:
                    scope.cancel()
    return events


async def test_openai_backend_in_front_of_llama_cpp(
    nursery: trio.Nursery, tmp_path: Path, model_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    stack = await _start(nursery, tmp_path, model_path, monkeypatch)
    with trio.fail_after(120):
        assert await stack.worker.watch.wait_state(State.READY, State.ERRORED) is State.READY
    assert "Uvicorn running on" in stack.fake.log_text()
    # No /health on this server: the worker's health check polls /v1/models.
    assert (await stack.http.get(stack.url + "/healthcheck")).status_code == 200

    # JSON: the server's usage is the finished workload.
    chat: dict[str, Any] = {
        "messages": [{"role": "user", "content": "hello world"}],
        "max_tokens": 16,
        **NO_EOS,
    }
    response = await stack.post("/v1/chat/completions", chat)
    assert response.status_code == 200, response.text
    answer = response.json()
    assert answer["object"] == "chat.completion"
    usage = answer["usage"]
    await _idle(stack)
    assert (
        stack.worker.tracker._completions[-1][1]
        == usage["prompt_tokens"] + usage["completion_tokens"]
    )
    completion = await stack.post("/v1/completions", {"prompt": "hello", "max_tokens": 4})
    assert completion.json()["object"] == "text_completion"

    # Stream: relayed to [DONE]; llama-cpp-python reports no usage in streams, so the
    # estimate stands.
    streamed = {**chat, "stream": True}
    events = await _stream(stack, streamed)
    assert events[-1] == b"data: [DONE]"
    first = json.loads(events[0].removeprefix(b"data:"))
    assert first["choices"][0]["delta"]["role"] == "assistant"
    assert sum(b'"content"' in event for event in events) >= 16
    await _idle(stack)
    assert stack.worker.tracker._completions[-1][1] == parse_chat(streamed).workload

    # Cancellation: dropping a long stream stops the generation in the server, which then
    # serves the next request (it serves one at a time).
    long = {**chat, "max_tokens": 3000, "stream": True}
    dropped = await _stream(stack, long, stop_after=3)
    assert len(dropped) == 3
    with trio.fail_after(10):
        while True:
            if "Disconnected from client" in stack.fake.log_text():
                break
            await trio.sleep(0.02)
    await _idle(stack)
    with trio.fail_after(10):
        after = await stack.post("/v1/chat/completions", chat)
    assert after.status_code == 200
