"""hello_world: the worked example backend, in front of the demo LLM server.

The demo model server (:mod:`backends.hello_world.server`) serves ``POST /generate`` (JSON),
``POST /generate_stream`` (server-sent events, one token per event) and ``GET /healthcheck``.
Both generation routes take ``{"prompt": str, "max_response_tokens": int | null}``.

Both answers end with the server's own counts, ``"prompt_tokens"`` and ``"generated_tokens"``
(the JSON answer's fields; the stream's final ``done`` event): their sum is the request's actual
workload, which replaces the estimate when the model stops before ``max_response_tokens``.
"""

from __future__ import annotations

import random
import sys
from collections.abc import Mapping

import attrs

from pyworker import (
    Backend,
    DemoServer,
    Endpoint,
    Fields,
    Job,
    LogAction,
    LogRule,
    UsageObserver,
    estimate_tokens,
    json_body,
)

DEFAULT_MAX_RESPONSE_TOKENS = 256
MAX_RESPONSE_TOKENS_LIMIT = 4096
MAX_PROMPT_CHARS = 200_000

_WORDS = [
    "the",
    "model",
    "server",
    "answers",
    "each",
    "prompt",
    "with",
    "tokens",
    "streamed",
    "one",
    "at",
    "a",
    "time",
    "while",
    "the",
    "worker",
    "counts",
    "workload",
    "reports",
    "load",
    "and",
    "keeps",
    "every",
    "request",
    "safe",
    "from",
    "loss",
    "or",
    "corruption",
]


def parse_generate(payload: object) -> Job:
    """Validate a hello_world payload and weigh it.

    Workload is the estimated prompt tokens plus the tokens asked for: an LLM's cost grows
    with both, and the demo server spends exactly that (the original counted the prompt only,
    which makes a 1-token and a 4,000-token answer look the same to the autoscaler).
    """
    fields = Fields(payload)
    prompt = fields.string("prompt", max_length=MAX_PROMPT_CHARS)
    max_tokens = fields.integer(
        "max_response_tokens",
        default=DEFAULT_MAX_RESPONSE_TOKENS,
        minimum=1,
        maximum=MAX_RESPONSE_TOKENS_LIMIT,
    )
    fields.check()
    workload = estimate_tokens(prompt) + max_tokens
    body = json_body({"prompt": prompt, "max_response_tokens": max_tokens})
    return Job(workload=workload, body=body, upstream_path="")


def _generate(payload: object) -> Job:
    job = parse_generate(payload)
    return Job(workload=job.workload, body=job.body, upstream_path="/generate")


def _generate_stream(payload: object) -> Job:
    job = parse_generate(payload)
    return Job(workload=job.workload, body=job.body, upstream_path="/generate_stream")


def observe_counts() -> UsageObserver:
    """A fresh observer of one answer's counts: ``prompt_tokens + generated_tokens``.

    Generated text is JSON-escaped (a token's ``"`` arrives as ``\\"``), so only the server's
    own fields match, in the JSON answer and in the stream's final event alike.
    """
    return UsageObserver(b'"prompt_tokens"', ("prompt_tokens", "generated_tokens"))


def benchmark_payload(rng: random.Random) -> dict[str, object]:
    """A typical request: a 100-word prompt and a 64-token answer."""
    return {"prompt": " ".join(rng.choices(_WORDS, k=100)), "max_response_tokens": 64}


def _demo_argv(port: int, log_path: str) -> list[str]:
    return [
        sys.executable,
        "-u",
        "-m",
        "backends.hello_world.server",
        "--port",
        str(port),
        "--log",
        log_path,
    ]


def make_backend(env: Mapping[str, str]) -> Backend:
    """The backend; ``MODEL_NAME`` names the model for the benchmark cache."""
    return attrs.evolve(BACKEND, model_id=env.get("MODEL_NAME", BACKEND.model_id))


# The demo server writes "<UTC time> <LEVEL> <message>" lines (the fake kit's format), and
# Python prints an exception's last traceback line at the start of a line:
#     2026-11-25T16:00:00.123Z INFO infer server has started on http://127.0.0.1:5001
#     2026-11-25T16:00:00.123Z ERROR Error: model failed to load: no weights
#     Exception: corrupted model file shard 3
# With --log-requests it logs each request, the prompt quoted (repr) inside the line:
#     2026-11-25T16:00:00.123Z INFO request received: prompt: 'Error: model failed …', …
# The rules are anchored to those starts, so no prompt can pass for the server's own line.
_STAMP = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d+Z "

LOG_RULES: tuple[LogRule, ...] = (
    LogRule(
        action=LogAction.IGNORE,
        substring=" received: ",
        pattern=_STAMP + r"INFO request received: ",
    ),
    LogRule(
        action=LogAction.MODEL_LOADED,
        substring="infer server has started",
        pattern=f"(?:{_STAMP}INFO )?infer server has started",
    ),
    LogRule(
        action=LogAction.MODEL_ERROR,
        substring="corrupted model file",
        pattern=f"(?:{_STAMP}ERROR )?Exception: corrupted model file",
    ),
    LogRule(
        action=LogAction.MODEL_ERROR,
        substring="model failed to load",
        pattern=f"(?:{_STAMP}ERROR )?Error: model failed to load",
    ),
    LogRule(
        action=LogAction.INFO,
        substring="loading model",
        pattern=f"(?:{_STAMP}INFO )?loading model",
    ),
)
"""What the demo server's log lines mean."""


BACKEND = Backend(
    name="hello_world",
    model_server_url="http://127.0.0.1:5001",
    endpoints=(
        Endpoint(
            route="/generate",
            parse=_generate,
            benchmark_payload=benchmark_payload,
            observe=observe_counts,
        ),
        Endpoint(
            route="/generate_stream",
            parse=_generate_stream,
            benchmark_payload=benchmark_payload,
            observe=observe_counts,
        ),
    ),
    benchmark_route="/generate",
    log_rules=LOG_RULES,
    allow_parallel_requests=True,
    health_path="/healthcheck",
    model_id="hello_world-demo",
    demo=DemoServer(
        argv=_demo_argv,
        examples=(
            ("/generate", {"prompt": "Hello", "max_response_tokens": 32}),
            ("/generate_stream", {"prompt": "Hello", "max_response_tokens": 32}),
        ),
    ),
)
"""The backend with its default settings (the worker uses :func:`make_backend`)."""
