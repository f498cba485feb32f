"""openai: OpenAI-compatible model servers (vLLM, SGLang, llama.cpp, llama-cpp-python).

Routes ``POST /v1/completions`` and ``POST /v1/chat/completions``, JSON or streamed (server-sent
events ending in ``data: [DONE]``, relayed as they arrive). The client's OpenAI body is checked
field by field (a 422 names each bad field) and then forwarded as it is: fields this backend does
not know (``top_k``, ``ignore_eos``, ``chat_template_kwargs``, …) pass through untouched, and
nothing is added.

Workload is in tokens: the prompt's estimated tokens plus the tokens the request may generate
(``max_tokens``, or ``max_completion_tokens`` for chat) for each of its ``n`` choices. When the
model server reports ``usage`` (always in a JSON answer; in a stream only if the client asked for
it with ``stream_options.include_usage``), the worker records that actual figure, ``prompt_tokens
+ completion_tokens``, as the finished request's workload instead, and so does the benchmark;
llama.cpp's streams report their ``timings`` even unasked, which count the same tokens. The
backend never asks for usage on the client's behalf (:mod:`backends.openai._observe` says why):
a vLLM or SGLang stream without it keeps its estimate.

Environment:

``OPENAI_SERVER``
    ``auto`` (default), ``vllm``, ``sglang``, ``llamacpp`` or ``llama-cpp-python``: which log
    lines mean ready, the health route, and whether requests may run in parallel. ``auto``
    knows vLLM's and llama.cpp's ready lines exactly; for SGLang it takes uvicorn's
    ``Application startup complete.``, which SGLang prints *before* its warm-up request ends
    (SGLang already serves requests then, but the benchmark may pay for the warm-up); set
    ``sglang`` to wait for ``The server is fired up and ready to roll!``. ``llama-cpp-python``
    has no ``/health`` (``GET /v1/models`` is polled instead) and serves one request at a time.
``OPENAI_DEFAULT_MAX_TOKENS``
    tokens assumed for a completion without ``max_tokens`` (default 16, vLLM's and OpenAI's
    default).
``OPENAI_DEFAULT_CHAT_MAX_TOKENS``
    tokens assumed for a chat completion without a limit (default 256). The servers' own default
    is "the rest of the context window", which is no estimate at all; the actual usage replaces
    this guess once the answer reports it.
``MODEL_NAME`` / ``MODEL_ID``
    names the model for the benchmark cache.
"""

from __future__ import annotations

import random
import sys
from collections.abc import Callable, Mapping

from pyworker import Backend, DemoServer, Endpoint

from ._log_rules import log_rules
from ._observe import Usage, UsageOrTimings, observe_usage, observe_usage_or_timings
from ._payload import CHAT_COMPLETIONS, COMPLETIONS, parse_chat, parse_completion
from ._settings import DEFAULT_PORTS, DEFAULT_SETTINGS, FAKE_FLAVORS, SERVERS, Settings

__all__ = [
    "DEFAULT_SETTINGS",
    "SERVERS",
    "Settings",
    "Usage",
    "UsageOrTimings",
    "backend_for",
    "log_rules",
    "make_backend",
    "observe_usage",
    "observe_usage_or_timings",
    "parse_chat",
    "parse_completion",
]


# -- benchmark -------------------------------------------------------------------------------
_WORDS_TEXT = (
    "the quick model reads a long question about rivers mountains and cities then answers "
    "with care while the worker counts tokens reports load and keeps every request safe from "
    "loss so that clients see steady latency even when many arrive at once"
)
_WORDS = tuple(_WORDS_TEXT.split())


def benchmark_payload(rng: random.Random) -> dict[str, object]:
    """A typical chat request: a system line, a ~100-word question, a 128-token answer.

    ``ignore_eos`` (honoured by vLLM, SGLang and llama.cpp, ignored by llama-cpp-python) makes
    the server generate every token asked for, so the benchmark's workload is the work done.
    """
    question = " ".join(rng.choices(_WORDS, k=100))
    return {
        "messages": [
            {"role": "system", "content": "You are a helpful assistant."},
            {"role": "user", "content": question},
        ],
        "max_tokens": 128,
        "ignore_eos": True,
    }


_HELLO = [{"role": "user", "content": "What is a GPU?"}]
_DEMO_EXAMPLES: tuple[tuple[str, object], ...] = (
    ("/v1/chat/completions", {"messages": _HELLO, "max_tokens": 32}),
    ("/v1/chat/completions", {"messages": _HELLO, "max_tokens": 32, "stream": True}),
)
"""What the demo suggests: a chat answer, then the same streamed."""


def completion_benchmark_payload(rng: random.Random) -> dict[str, object]:
    """A typical completion request: a ~100-word prompt, a 128-token answer."""
    return {"prompt": " ".join(rng.choices(_WORDS, k=100)), "max_tokens": 128, "ignore_eos": True}


# -- the backend -----------------------------------------------------------------------------
def _demo_argv(flavor: str) -> Callable[[int, str], list[str]]:
    def argv(port: int, log_path: str) -> list[str]:
        return [
            sys.executable,
            "-u",
            "-m",
            "backends.openai.fake",
            "--port",
            str(port),
            "--log",
            log_path,
            "--flavor",
            flavor,
        ]

    return argv


def _model_id(env: Mapping[str, str], server: str) -> str:
    name = env.get("MODEL_NAME") or env.get("MODEL_ID") or "openai-demo"
    # The same model serves at a different speed on another server.
    return f"{name} ({server})"


def backend_for(settings: Settings, *, model_id: str = "") -> Backend:
    """The backend for ``settings``.

    Args:
        settings: which server, and the default token budgets.
        model_id: names the model for the benchmark cache (default: the demo's).
    """
    server = settings.server
    one_at_a_time = server == "llama-cpp-python"
    flavor = FAKE_FLAVORS.get(server)
    # Only llama.cpp's streams carry timings; elsewhere a search for them is wasted per chunk.
    observe = observe_usage_or_timings if server in {"auto", "llamacpp"} else observe_usage
    return Backend(
        name="openai",
        model_server_url=f"http://127.0.0.1:{DEFAULT_PORTS[server]}",
        endpoints=(
            Endpoint(
                route=COMPLETIONS,
                parse=lambda payload: parse_completion(payload, settings),
                benchmark_payload=completion_benchmark_payload,
                observe=observe,
            ),
            Endpoint(
                route=CHAT_COMPLETIONS,
                parse=lambda payload: parse_chat(payload, settings),
                benchmark_payload=benchmark_payload,
                observe=observe,
            ),
        ),
        benchmark_route=CHAT_COMPLETIONS,
        log_rules=log_rules(server),
        allow_parallel_requests=not one_at_a_time,
        # llama-cpp-python has no /health; listing the models is its cheapest answer.
        health_path="/v1/models" if one_at_a_time else "/health",
        model_id=model_id or _model_id({}, server),
        # No fake imitates llama-cpp-python: its demo is the real server (see the tests).
        demo=(
            DemoServer(argv=_demo_argv(flavor), examples=_DEMO_EXAMPLES)
            if flavor is not None
            else None
        ),
    )


def make_backend(env: Mapping[str, str]) -> Backend:
    """The backend as the environment configures it (see the module docstring).

    Raises:
        ValueError: a variable has an impossible value (the message names it).
    """
    settings = Settings.from_env(env)
    return backend_for(settings, model_id=_model_id(env, settings.server))
