"""The fake TGI server's wire fidelity, run as a real subprocess (see spec §1 and §6):
generating. JSON answers (details only when asked, EOS and stop sequences), TGI's SSE streams,
errors in TGI's shapes (in a stream: one event under a 200), overload, failed generations, the
request log quoting a client's stop sequences, and a client leaving. Starting, failing to start,
the info routes and crashes are in ``test_fake_tgi.py``."""

from __future__ import annotations

import json
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import trio
from fakes import (
    TGI_BACKEND,
    TGI_PROMPT,
    fake_client,
    get_stats,
    poll_stats,
    start_fake_tgi,
    tgi_body,
)

from pyworker import LogAction, estimate_tokens

# Every wait is bounded: httpx's timeouts, start_fake's own bound, fail_after around polls.


def _events(raw: bytes) -> list[dict[str, Any]]:
    """Split an SSE body, checking TGI's framing: ``data:`` without a space, blank lines."""
    assert raw.endswith(b"\n\n")
    events = []
    for block in raw[:-2].split(b"\n\n"):
        assert block.startswith(b"data:{"), block
        assert b"\n" not in block
        events.append(json.loads(block.removeprefix(b"data:")))
    return events


# -- JSON generation -------------------------------------------------------------------------
async def test_generate_answers_generated_text_with_details_only_when_asked(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    fake = await start_fake_tgi(
        nursery, tmp_path, "--token-rate", "5000", "--max-total-tokens", "300"
    )
    async with fake_client(fake, http_timeout=10.0) as client:
        plain = await client.post("/generate", json=tgi_body(7))
        assert plain.status_code == 200
        assert plain.headers["content-type"] == "application/json"
        assert list(plain.json()) == ["generated_text"]
        assert plain.headers["x-generated-tokens"] == "7"
        assert plain.headers["x-prompt-tokens"] == str(estimate_tokens(TGI_PROMPT))
        assert plain.headers["x-compute-characters"] == str(len(TGI_PROMPT))
        for header in ("x-compute-type", "x-compute-time", "x-total-time", "x-queue-time"):
            assert header in plain.headers
        detailed = (await client.post("/generate", json=tgi_body(7, details=True))).json()
        assert detailed["generated_text"] == plain.json()["generated_text"]  # deterministic
        details = detailed["details"]
        assert details["finish_reason"] == "length"
        assert details["generated_tokens"] == 7
        assert details["seed"] is None
        assert details["prefill"] == []
        assert len(details["tokens"]) == 7
        assert set(details["tokens"][0]) == {"id", "text", "logprob", "special"}
        assert "".join(t["text"] for t in details["tokens"]) == detailed["generated_text"]
        full = (await client.post("/generate", json=tgi_body(3, return_full_text=True))).json()
        assert full["generated_text"].startswith(TGI_PROMPT)
        prefill = await client.post(
            "/generate",
            json=tgi_body(
                2, details=True, decoder_input_details=True, top_n_tokens=2, seed=5, do_sample=True
            ),
        )
        details = prefill.json()["details"]
        assert details["seed"] == 5
        assert len(details["prefill"]) == estimate_tokens(TGI_PROMPT)
        assert details["prefill"][0]["logprob"] is None
        assert [len(top) for top in details["top_tokens"]] == [2, 2]
        # No max_new_tokens: recent TGI generates up to the rest of the context window.
        window = await client.post(
            "/generate",
            json={"inputs": TGI_PROMPT, "parameters": {"details": True}},
        )
        assert window.json()["details"]["generated_tokens"] == 300 - estimate_tokens(TGI_PROMPT)


async def test_eos_and_stop_sequences_end_generation_early(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    fake = await start_fake_tgi(nursery, tmp_path, "--token-rate", "2000", "--eos-after", "4")
    async with fake_client(fake, http_timeout=10.0) as client:
        eos = (await client.post("/generate", json=tgi_body(50, details=True))).json()
        assert eos["details"]["finish_reason"] == "eos_token"
        assert eos["details"]["generated_tokens"] == 4
        assert eos["details"]["tokens"][-1] == {
            "id": 2,
            "text": "</s>",
            "logprob": -0.01,
            "special": True,
        }
        assert "</s>" not in eos["generated_text"]
        second_word = eos["details"]["tokens"][1]["text"]
        stop = await client.post("/generate", json=tgi_body(50, details=True, stop=[second_word]))
        details = stop.json()["details"]
        assert details["finish_reason"] == "stop_sequence"
        assert details["generated_tokens"] == 2
        stats = await get_stats(client)
    assert stats["tokens_generated"] == 6


# -- streaming -------------------------------------------------------------------------------
async def test_stream_is_tgi_sse_without_done(nursery: trio.Nursery, tmp_path: Path) -> None:
    fake = await start_fake_tgi(nursery, tmp_path, "--token-rate", "2000")
    async with fake_client(fake, http_timeout=10.0) as client:
        response = await client.post("/generate_stream", json=tgi_body(4))
        assert response.status_code == 200
        assert response.headers["content-type"] == "text/event-stream"
        assert response.headers["x-accel-buffering"] == "no"
        assert b"[DONE]" not in response.content
        events = _events(response.content)
        assert [e["index"] for e in events] == [1, 2, 3, 4]
        assert all(list(e) == ["index", "token", "generated_text", "details"] for e in events)
        assert all(e["generated_text"] is None and e["details"] is None for e in events[:-1])
        assert set(events[0]["token"]) == {"id", "text", "logprob", "special"}
        last = events[-1]
        assert last["generated_text"] == "".join(e["token"]["text"] for e in events)
        assert last["details"] is None
        detailed = _events(
            (await client.post("/generate_stream", json=tgi_body(3, details=True))).content
        )
        assert detailed[-1]["details"] == {
            "finish_reason": "length",
            "generated_tokens": 3,
            "seed": None,
            "input_length": estimate_tokens(TGI_PROMPT),
        }
        top = _events(
            (await client.post("/generate_stream", json=tgi_body(2, top_n_tokens=3))).content
        )
        assert [len(e["top_tokens"]) for e in top] == [3, 3]
        # The compat route: "stream" picks the answer's kind.
        compat = await client.post("/", json={**tgi_body(2), "stream": True})
        assert len(_events(compat.content)) == 2
        compat_json = await client.post("/", json=tgi_body(2))
        assert "generated_text" in compat_json.json()


async def test_stream_errors_are_one_event_under_200(nursery: trio.Nursery, tmp_path: Path) -> None:
    fake = await start_fake_tgi(nursery, tmp_path, "--token-rate", "2000")
    async with fake_client(fake, http_timeout=10.0) as client:
        cases = {
            "validation": tgi_body(5, temperature=0),
            "best_of": tgi_body(5, best_of=2, do_sample=True),
            "too long": tgi_body(5000),
        }
        for name, body in cases.items():
            response = await client.post("/generate_stream", json=body)
            assert response.status_code == 200, name
            events = _events(response.content)
            assert len(events) == 1, name
            assert set(events[0]) == {"error", "error_type"}
            assert events[0]["error_type"] == "validation"
            assert events[0]["error"].startswith("Input validation error: ")
        assert (
            "best_of"
            in _events((await client.post("/generate_stream", json=cases["best_of"])).content)[0][
                "error"
            ]
        )
        assert (await get_stats(client))["errors"] == 4


async def test_errors_have_tgi_shapes(nursery: trio.Nursery, tmp_path: Path) -> None:
    fake = await start_fake_tgi(nursery, tmp_path, "--token-rate", "2000")
    async with fake_client(fake, http_timeout=10.0) as client:
        invalid = await client.post("/generate", json=tgi_body(5, top_p=1.0))
        assert invalid.status_code == 422
        assert invalid.json() == {
            "error": "Input validation error: `top_p` must be > 0.0 and < 1.0",
            "error_type": "validation",
        }
        stops = await client.post("/generate", json=tgi_body(5, stop=["a", "b", "c", "d", "e"]))
        assert stops.json()["error"].endswith("`stop` supports up to 4 stop sequences. Given: 5")
        empty = await client.post("/generate", json={"inputs": ""})
        assert empty.json()["error"] == "Input validation error: `inputs` cannot be empty"
        # axum rejects bodies before TGI sees them, in plain text.
        malformed = await client.post(
            "/generate", content=b'{"inputs": ', headers={"content-type": "application/json"}
        )
        assert malformed.status_code == 400
        assert malformed.headers["content-type"].startswith("text/plain")
        assert malformed.text.startswith("Failed to parse the request body as JSON: ")
        missing = await client.post("/generate", json={"prompt": "hi"})
        assert missing.status_code == 422
        assert missing.text == (
            "Failed to deserialize the JSON body into the target type: missing field `inputs`"
        )
        # A string for max_new_tokens: the wrong type is the test.
        mistyped = await client.post("/generate", json=tgi_body("many"))  # type: ignore[arg-type]
        assert mistyped.status_code == 422
        assert mistyped.text.endswith(
            'parameters.max_new_tokens: invalid type: string "many", expected u32'
        )
        wrong_type = await client.post("/generate", content=b"{}", headers={})
        assert wrong_type.status_code == 415
        assert (await client.get("/nowhere")).status_code == 404
        assert (await client.get("/generate")).status_code == 405


async def _hold_stream(
    client: httpx.AsyncClient,
    body: dict[str, Any],
    *,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Keep a stream open, reading, until cancelled; started once its first chunk arrived.

    Cancelling it while it waits inside httpx's iterators unwinds them cleanly (abandoning
    them half-way would leave them to the garbage collector).
    """
    async with client.stream("POST", "/generate_stream", json=body) as response:
        started = False
        async for _ in response.aiter_raw():
            if not started:
                started = True
                task_status.started()


async def test_overload_is_429_json_or_an_event(nursery: trio.Nursery, tmp_path: Path) -> None:
    fake = await start_fake_tgi(
        nursery, tmp_path, "--max-concurrent-requests", "1", "--hang-after", "1"
    )
    async with fake_client(fake, http_timeout=10.0) as client, trio.open_nursery() as holders:
        # The first token: the request is in flight, then hangs.
        await holders.start(partial(_hold_stream, client, tgi_body(5)))
        refused = await client.post("/generate", json=tgi_body(5))
        assert refused.status_code == 429
        assert refused.json() == {"error": "Model is overloaded", "error_type": "overloaded"}
        streamed = await client.post("/generate_stream", json=tgi_body(5))
        assert streamed.status_code == 200
        assert _events(streamed.content) == [
            {"error": "Model is overloaded", "error_type": "overloaded"}
        ]
        metrics = (await client.get("/metrics")).text
        holders.cancel_scope.cancel()
    assert 'tgi_request_failure{err="overloaded"} 2' in metrics


async def test_generation_failures_are_424_or_an_event(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    fake = await start_fake_tgi(nursery, tmp_path, "--fail-request-rate", "1")
    async with fake_client(fake, http_timeout=10.0) as client:
        failed = await client.post("/generate", json=tgi_body(5))
        assert failed.status_code == 424
        assert failed.json()["error_type"] == "generation"
        assert failed.json()["error"].startswith("Request failed during generation: ")
        streamed = await client.post("/generate_stream", json=tgi_body(5))
        assert streamed.status_code == 200
        [event] = _events(streamed.content)
        assert event["error_type"] == "generation"
    # TGI logs a request's failure at ERROR, in its span; the server goes on: not fatal.
    failures = [line for line in fake.log_text().splitlines() if "CUDA out of memory" in line]
    assert [json.loads(line)["span"]["name"] for line in failures] == [
        "generate",
        "generate_stream",
    ]
    assert all(json.loads(line)["level"] == "ERROR" for line in failures)
    assert [TGI_BACKEND.classify(line) for line in failures] == [None, None]


async def test_request_lines_quote_the_stop_sequences_and_mean_nothing(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    fake = await start_fake_tgi(nursery, tmp_path, "--token-rate", "2000")
    stop = ["Error: ShardFailed", '"message":"Connected","target":"text_generation_router"']
    async with fake_client(fake, http_timeout=10.0) as client:
        answered = await client.post("/generate", json=tgi_body(3, stop=stop))
        assert answered.status_code == 200
        streamed = await client.post("/generate_stream", json=tgi_body(3, stop=stop))
        assert streamed.status_code == 200
    lines = fake.log_text().splitlines()
    successes = [json.loads(line) for line in lines if '"message":"Success"' in line]
    assert [record["span"]["name"] for record in successes] == ["generate", "generate_stream"]
    for record in successes:
        assert record["spans"] == [record["span"]]
        parameters = record["span"]["parameters"]
        assert parameters.startswith("GenerateParameters { best_of: None, ")
        assert 'stop: ["Error: ShardFailed", "\\"message\\":\\"Connected' in parameters
    meanings = [TGI_BACKEND.classify(line) for line in lines]
    assert [rule.action for rule in meanings if rule is not None].count(
        LogAction.MODEL_LOADED
    ) == 1  # the router's own "Connected", not the quoted one
    assert not any(rule is not None and rule.action is LogAction.MODEL_ERROR for rule in meanings)


# -- a client leaving ------------------------------------------------------------------------
async def test_client_disconnect_stops_generation(nursery: trio.Nursery, tmp_path: Path) -> None:
    fake = await start_fake_tgi(nursery, tmp_path, "--token-rate", "20")
    async with fake_client(fake, http_timeout=10.0) as client:
        with trio.CancelScope() as drop:
            async with client.stream("POST", "/generate_stream", json=tgi_body(1000)) as response:
                async for _ in response.aiter_raw():
                    drop.cancel()  # after the first token
        stats = await poll_stats(client, "cancelled", 1)
        assert stats["in_flight"] == 0
        assert stats["tokens_generated"] < 1000
        metrics = (await client.get("/metrics")).text
    assert 'tgi_request_failure{err="dropped"} 1' in metrics
