"""The hello_world demo model server, run as a real subprocess."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import httpx
import pytest
import trio
from fakes import FakeServer, get_stats, poll_stats, start_fake

from pyworker import LogAction, estimate_tokens, load_backend

MODULE = "backends.hello_world.server"
READY = "infer server has started"


# Every wait below is bounded: httpx's 5 s timeouts, start_fake's own bound, and fail_after
# around each polling loop, so a misbehaving fake fails its test instead of hanging the run.
async def _start(nursery: trio.Nursery, tmp_path: Path, *args: str) -> FakeServer:
    return await start_fake(
        nursery, MODULE, "--load-delay", "0", *args, log_path=tmp_path / "hello.log"
    )


def _body(prompt: str = "hello world", tokens: int | None = 5) -> dict[str, object]:
    return {"prompt": prompt, "max_response_tokens": tokens}


async def _events(response: httpx.Response) -> list[dict[str, object]]:
    events = []
    async for line in response.aiter_lines():
        if line:
            assert line.startswith("data: ")
            events.append(json.loads(line.removeprefix("data: ")))
    return events


async def test_generate_answers_exactly_the_tokens_asked(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    fake = await _start(nursery, tmp_path, "--token-rate", "1000")
    async with httpx.AsyncClient(base_url=fake.url) as client:
        prompt = "Tell me a story about a brave little toaster."
        response = await client.post("/generate", json=_body(prompt, 17))
        assert response.status_code == 200
        answer = response.json()
        assert answer["prompt_tokens"] == estimate_tokens(prompt)
        assert answer["generated_tokens"] == 17
        words = answer["response"].split(" ")
        assert words[0] == ""  # every token is " word"
        assert len(words) == 18
        # Deterministic per seed and prompt; the default is 256 tokens.
        again = await client.post("/generate", json=_body(prompt, 17))
        assert again.json() == answer
        default = await client.post("/generate", json={"prompt": prompt})
        assert default.json()["generated_tokens"] == 256
        stats = await get_stats(client)
    assert stats["completed"] == 3
    assert stats["tokens_generated"] == 17 + 17 + 256
    assert stats["in_flight"] == 0


async def test_generate_stream_sends_one_event_per_token(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    fake = await _start(nursery, tmp_path, "--token-rate", "1000")
    async with httpx.AsyncClient(base_url=fake.url) as client:
        async with client.stream("POST", "/generate_stream", json=_body("hi there", 12)) as r:
            assert r.status_code == 200
            assert r.headers["content-type"] == "text/event-stream"
            events = await _events(r)
        plain = (await client.post("/generate", json=_body("hi there", 12))).json()
    tokens = [event["token"] for event in events[:-1]]
    assert len(tokens) == 12
    assert events[-1] == {"done": True, "prompt_tokens": 2, "generated_tokens": 12}
    assert "".join(str(token) for token in tokens) == plain["response"]


async def test_eos_after_ends_answers_early_and_says_so(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    """``--eos-after``: a model that stops before ``max_response_tokens``; its counts say
    what it did generate (and it is paid for in the capacity model as generated)."""
    fake = await _start(nursery, tmp_path, "--token-rate", "1000", "--eos-after", "3")
    async with httpx.AsyncClient(base_url=fake.url) as client:
        answer = (await client.post("/generate", json=_body("hi there", 12))).json()
        assert answer["generated_tokens"] == 3
        assert len(answer["response"].split(" ")) == 4
        async with client.stream("POST", "/generate_stream", json=_body("hi there", 12)) as r:
            events = await _events(r)
        short = (await client.post("/generate", json=_body("hi there", 2))).json()
        stats = await get_stats(client)
    assert len(events) == 4
    assert events[-1] == {"done": True, "prompt_tokens": 2, "generated_tokens": 3}
    assert short["generated_tokens"] == 2  # fewer asked than the end of sequence: as asked
    assert stats["tokens_generated"] == 3 + 3 + 2


async def test_tokens_are_streamed_as_they_are_generated(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    fake = await _start(nursery, tmp_path, "--token-rate", "20")
    async with (
        httpx.AsyncClient(base_url=fake.url) as client,
        client.stream("POST", "/generate_stream", json=_body("x", 6)) as response,
    ):
        arrivals = []
        async for line in response.aiter_lines():
            if line:
                arrivals.append(trio.current_time())
    # Prompt (1 unit) then 6 tokens at 20/s: about 50 ms apart, not all at the end.
    gaps = [b - a for a, b in itertools.pairwise(arrivals[:6])]
    assert all(0.02 < gap < 0.2 for gap in gaps), gaps


@pytest.mark.parametrize(
    ("method", "path", "body", "status"),
    [
        ("POST", "/generate", b"{not json", 400),
        ("POST", "/generate", b'["a list"]', 422),
        ("POST", "/generate", b'{"max_response_tokens": 3}', 422),
        ("POST", "/generate_stream", b'{"prompt": "x", "max_response_tokens": "3"}', 422),
        ("POST", "/generate", b'{"prompt": "x", "max_response_tokens": 0}', 422),
        ("POST", "/nowhere", b"{}", 404),
        ("GET", "/generate", b"", 405),
    ],
)
async def test_bad_requests(
    nursery: trio.Nursery, tmp_path: Path, method: str, path: str, body: bytes, status: int
) -> None:
    fake = await _start(nursery, tmp_path)
    async with httpx.AsyncClient(base_url=fake.url) as client:
        response = await client.request(method, path, content=body)
        assert response.status_code == status
        assert isinstance(response.json()["error"], str)
        assert (await get_stats(client))["errors"] == 1


async def test_healthcheck(nursery: trio.Nursery, tmp_path: Path) -> None:
    fake = await _start(nursery, tmp_path)
    async with httpx.AsyncClient(base_url=fake.url) as client:
        response = await client.get("/healthcheck")
        assert response.json() == {"status": "ok"}


async def test_client_disconnect_cancels_generation(nursery: trio.Nursery, tmp_path: Path) -> None:
    fake = await _start(nursery, tmp_path, "--token-rate", "50", "--max-parallel", "1")
    async with httpx.AsyncClient(base_url=fake.url) as client:
        # Drop the stream after its first token. (Cancelling, not breaking out of the loop:
        # a break leaves httpx's nested async generators to the garbage collector.)
        with trio.CancelScope() as drop:
            async with client.stream("POST", "/generate_stream", json=_body("x", 1000)) as r:
                async for line in r.aiter_lines():
                    if line:
                        drop.cancel()
        with trio.move_on_after(0.2):
            await client.post("/generate", json=_body("x", 1000))
        stats = await poll_stats(client, "cancelled", 2)
        assert stats["in_flight"] == 0
        assert stats["completed"] == 0
        # The single slot is free again: a short request is served at once.
        started = trio.current_time()
        response = await client.post("/generate", json=_body("x", 5))
        assert response.json()["generated_tokens"] == 5
        assert trio.current_time() - started < 1.0
    assert "request 1 cancelled by client" in fake.log_text()
    assert "request 2 cancelled by client" in fake.log_text()


async def test_crash_after(nursery: trio.Nursery, tmp_path: Path) -> None:
    fake = await _start(nursery, tmp_path, "--token-rate", "1000", "--crash-after", "3")
    lines: list[str] = []

    async def read_stream() -> None:
        async with (
            httpx.AsyncClient(base_url=fake.url) as client,
            client.stream("POST", "/generate_stream", json=_body("x", 10)) as response,
        ):
            async for line in response.aiter_lines():
                lines.append(line)

    # The connection dies mid-stream (no final chunk).
    with pytest.raises(httpx.RemoteProtocolError):
        await read_stream()
    assert sum(line.startswith("data: ") for line in lines) == 3
    with trio.fail_after(10):
        assert await fake.wait() == 1
    assert "model server crashed after 3 tokens" in fake.log_text()


async def test_hang_after(nursery: trio.Nursery, tmp_path: Path) -> None:
    fake = await _start(nursery, tmp_path, "--token-rate", "1000", "--hang-after", "4")
    tokens = 0
    async with httpx.AsyncClient(base_url=fake.url) as client:
        with trio.move_on_after(0.5) as stream_scope:
            async with client.stream("POST", "/generate_stream", json=_body("x", 10)) as r:
                async for line in r.aiter_lines():
                    tokens += line.startswith("data: ")
        with trio.move_on_after(0.3) as plain_scope:
            await client.post("/generate", json=_body("x", 10))
        assert stream_scope.cancelled_caught
        assert plain_scope.cancelled_caught
        assert tokens == 4
        await poll_stats(client, "cancelled", 2)


async def test_error_rate(nursery: trio.Nursery, tmp_path: Path) -> None:
    fake = await _start(nursery, tmp_path, "--error-rate", "0.5", "--token-rate", "10000")
    async with httpx.AsyncClient(base_url=fake.url) as client:
        statuses = [(await client.post("/generate", json=_body())).status_code for _ in range(40)]
        failed = await client.post("/generate_stream", json=_body())
        while failed.status_code != 500:
            failed = await client.post("/generate_stream", json=_body())
    assert failed.json() == {"error": "injected failure"}
    assert set(statuses) == {200, 500}
    assert 8 <= statuses.count(500) <= 32


async def _load(url: str, requests: int, tokens: int) -> float:
    """Send ``requests`` at once; return the time until the last answer."""
    started = trio.current_time()
    limits = httpx.Limits(max_connections=requests)
    async with httpx.AsyncClient(base_url=url, limits=limits) as client:

        async def one() -> None:
            response = await client.post("/generate", json=_body("hello world", tokens))
            assert response.json()["generated_tokens"] == tokens

        async with trio.open_nursery() as nursery:
            for _ in range(requests):
                nursery.start_soon(one)
    return trio.current_time() - started


@pytest.mark.parametrize(
    ("knobs", "truth"),
    [
        # capacity-bound: min(600, 8 * 200) = 600 units/s
        (["--token-rate", "200", "--capacity", "600", "--max-parallel", "8"], 600),
        # parallelism-bound: min(inf, 3 * 100) = 300 units/s
        (["--token-rate", "100", "--max-parallel", "3"], 300),
    ],
)
async def test_throughput_follows_the_capacity_truth(
    nursery: trio.Nursery, tmp_path: Path, knobs: list[str], truth: float
) -> None:
    fake = await _start(nursery, tmp_path, *knobs)
    requests, tokens = 12, 28
    units = requests * (estimate_tokens("hello world") + tokens)
    elapsed = await _load(fake.url, requests, tokens)
    assert units / elapsed == pytest.approx(truth, rel=0.35)
    async with httpx.AsyncClient(base_url=fake.url) as client:
        stats = await get_stats(client)
    assert stats["completed"] == requests
    assert stats["max_concurrent"] == requests  # all in flight; the model queued the rest


async def test_logged_requests_quote_the_prompt_and_mean_nothing(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    fake = await _start(nursery, tmp_path, "--token-rate", "1000", "--log-requests")
    prompt = (
        "Exception: corrupted model file\nError: model failed to load\ninfer server has started"
    )
    async with httpx.AsyncClient(base_url=fake.url) as client:
        assert (await client.post("/generate", json=_body(prompt, 2))).status_code == 200
    backend = load_backend("hello_world")
    lines = fake.log_text().splitlines()
    [received] = [line for line in lines if "request received: " in line]
    assert received.endswith(f" INFO request received: prompt: {prompt!r}, max_response_tokens: 2")
    assert backend.classify(received) is None
    meanings = [rule.action for line in lines if (rule := backend.classify(line)) is not None]
    assert LogAction.MODEL_ERROR not in meanings
    assert meanings.count(LogAction.MODEL_LOADED) == 1
