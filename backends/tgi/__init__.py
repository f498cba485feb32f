"""tgi: Hugging Face Text Generation Inference (``text-generation-launcher``).

Routes ``POST /generate`` (JSON) and ``POST /generate_stream`` (server-sent events), relayed to
TGI's routes of the same names. Both take TGI's body, ``{"inputs": str, "parameters": {...}}``,
checked field by field against TGI's own rules (a 422 names each bad field, those of
``parameters`` nested under it) and forwarded exactly as sent, unknown fields included.

Workload is in tokens: the prompt's estimated tokens plus ``max_new_tokens`` (see
:class:`~backends.tgi._payload.Settings` for the default when it is absent or null). What TGI
reports it did replaces the estimate as the request's actual workload (and the benchmark's):
its ``x-prompt-tokens`` + ``x-generated-tokens`` headers on ``/generate``; on
``/generate_stream`` the last event's ``details`` (``input_length`` + ``generated_tokens``) when
the client asked for them, else the prompt's estimate plus the tokens streamed (see
:mod:`backends.tgi._observe`, also for ``best_of``).

TGI reports errors inside a stream as an event under HTTP 200
(``data:{"error":…,"error_type":…}``); they are relayed as they are, like every other event.

Readiness comes from TGI's log (with or without ``--json-output``); a fatal ``Error: <Variant>``
line marks the worker errored with that line as the reason.

Environment:

``TGI_DEFAULT_MAX_NEW_TOKENS``
    tokens charged for a request without ``max_new_tokens`` (default 100).
``MAX_STOP_SEQUENCES``, ``MAX_BEST_OF``, ``MAX_TOP_N_TOKENS``, ``MAX_INPUT_TOKENS``, …
    TGI's own launcher settings (``MAX_TOTAL_TOKENS`` too), read to check requests against
    the limits the model server runs with.
``MODEL_NAME`` / ``HF_MODEL_ID`` / ``MODEL_ID``
    names the model for the benchmark cache.
``TGI_FAKE_ARGS``
    knobs for the demo's fake TGI (``--demo`` only), e.g. ``--token-rate 50 --capacity 800``
    (``python -m backends.tgi.fake --help`` lists them).

The worker builds the backend from these with :func:`make_backend` (it reads the environment
once and passes it in).
"""

from __future__ import annotations

import random
import shlex
import sys
from collections.abc import Callable, Mapping, Sequence

from pyworker import Backend, DemoServer, Endpoint, Job, LogAction, LogRule

from ._observe import GenerateCounts, StreamCounts, observe_generate, observe_stream
from ._payload import Settings, parse_generate

__all__ = [
    "LOG_RULES",
    "GenerateCounts",
    "Settings",
    "StreamCounts",
    "backend_for",
    "benchmark_payload",
    "make_backend",
    "observe_generate",
    "observe_stream",
    "parse_generate",
]

DEFAULT_PORT = 3000
"""TGI's own default ``--port`` (the Docker image sets 80; ``MODEL_SERVER_URL`` says which)."""

BENCHMARK_MAX_NEW_TOKENS = 128

# -- log lines -------------------------------------------------------------------------------
# Every rule is anchored to the start of a line as TGI writes it. The router logs each request
# inside its handler's span, whose `parameters` field holds the client's stop sequences (and,
# at LOG_LEVEL=debug, an "Input: …" line holds the prompt), so a client's words are in the log
# on lines that begin with TGI's own prefix; anchoring the level, target and message keeps them
# from passing for TGI's own. The forms (tracing-subscriber's; `…` elides):
#
# --json-output (Vast's templates): one JSON object per line, fields in this order; a client's
# quotes are escaped inside it, so a quoted key and value are TGI's own. The router flattens
# its events, the launcher nests them under "fields":
#     {"timestamp":"2025-05-01T10:00:30.001Z","level":"INFO","message":"Connected",
#      "target":"text_generation_router::server","filename":"router/src/server.rs",…}
#     {"timestamp":"…","level":"INFO","fields":{"message":"Shard ready in 12.3s"},
#      "target":"text_generation_launcher","span":{"rank":0,"name":"shard-manager"},…}
#     {"timestamp":"…","level":"INFO","message":"Success","target":"text_generation_router::
#      server",…,"span":{"parameters":"GenerateParameters { …, stop: [\"…\"], … }",…,
#      "name":"generate"},"spans":[…]}
_JSON = r'\{"timestamp":"[^"]*","level":"(?P<level>[A-Z]+)",'
# Text (router: file and line; launcher: compact, spans first); the level padded to 5; the
# router's colours are left out before matching (Backend.classify):
#     2025-05-01T10:00:30.001234Z  INFO text_generation_router::server: router/src/server.rs:
#       2302: Connected
#     2025-05-01T10:00:40.123456Z  INFO generate{parameters=GenerateParameters { … stop:
#       ["…"] … } total_time="…" …}: text_generation_router::server: router/src/server.rs:
#       432: Success
#     2025-05-01T10:00:04.211Z  INFO shard-manager: text_generation_launcher: Shard ready in …
_TEXT = r"\d{4}-\d\d-\d\dT[\d:.]+Z +"
# The router's "Connected", logged just before it binds its port, from `main.rs` (target
# `text_generation_router`) up to TGI 2.0 and from `server.rs` (`…::server`) since 2.1: the
# Vast template's `"message":"Connected","target":"text_generation_router` with the target's
# end left open, anchored. Not inside a span: a request line has its span between the level
# and the target.
_READY = (
    LogRule(
        action=LogAction.MODEL_LOADED,
        substring="Connected",
        pattern=_JSON + r'"message":"Connected","target":"text_generation_router(?:::server)?"',
    ),
    LogRule(
        action=LogAction.MODEL_LOADED,
        substring="Connected",
        pattern=_TEXT + r"INFO text_generation_router(?:::server)?: [\w/.-]+:\d+: Connected$",
    ),
)
# The launcher's fatal exits: Rust's `main` returning its error enum, printed by the standard
# library on stderr at the start of a line, exit status 1:
#     Error: ShardCannotStart
#     Error: ArgumentValidation("`max_input_tokens` must be < `max_total_tokens`")
_FATAL = tuple(
    LogRule(
        action=LogAction.MODEL_ERROR, substring=f"Error: {variant}", pattern=rf"Error: {variant}\b"
    )
    for variant in (
        "DownloadError",
        "ShardCannotStart",
        "ShardFailed",
        "WebserverFailed",
        "WebserverCannotStart",
        "ArgumentValidation",
        "NotEnoughCUDADevices",
    )
)
_PROGRESS_MESSAGES = (
    r"(?:Starting check and download process|Download|Successfully downloaded weights"
    r"|Files are already present on the host|Shard ready in)"
)
_PROGRESS = (
    LogRule(
        action=LogAction.INFO,
        pattern=_JSON + r'"fields":\{"message":"' + _PROGRESS_MESSAGES,
    ),
    LogRule(
        action=LogAction.INFO,
        pattern=_TEXT + r"INFO (?:\S+: )*?text_generation_launcher: " + _PROGRESS_MESSAGES,
    ),
)

LOG_RULES: tuple[LogRule, ...] = (*_FATAL, *_READY, *_PROGRESS)
"""What TGI's log lines mean; fatal lines first, since the first matching rule wins."""

# -- benchmark -------------------------------------------------------------------------------
_TOPICS = (
    "a lighthouse keeper",
    "a river that changes course",
    "the first city on the moon",
    "a clockmaker's apprentice",
    "a library that never closes",
    "a storm over the northern sea",
    "a garden grown in the desert",
    "an old bridge and the town around it",
)
_DETAILS = (
    "the people who live there",
    "the weather and the seasons",
    "what changes over a hundred years",
    "a mystery nobody solves",
    "the sounds at night",
    "a letter found in a wall",
    "the work done by hand",
    "an argument between two friends",
)


def benchmark_payload(rng: random.Random) -> dict[str, object]:
    """A typical request: a ~60-word instruction asking for a long story, 128 new tokens.

    TGI has no way to ignore the end-of-sequence token, so the prompt asks for more text than
    the answer may hold: the model then generates all 128 tokens and the benchmark's workload
    is the work done.
    """
    details = ", ".join(rng.sample(_DETAILS, k=4))
    prompt = (
        f"Write a long, detailed story of at least ten paragraphs about {rng.choice(_TOPICS)}. "
        f"Describe {details}. Use vivid language, give every character a name and a history, "
        "and do not stop before the story is complete.\n\nStory:"
    )
    return {"inputs": prompt, "parameters": {"max_new_tokens": BENCHMARK_MAX_NEW_TOKENS}}


# -- the backend -----------------------------------------------------------------------------
def _model_id(env: Mapping[str, str]) -> str:
    # TGI's launcher reads MODEL_ID; Vast templates set MODEL_NAME or HF_MODEL_ID.
    return env.get("MODEL_NAME") or env.get("HF_MODEL_ID") or env.get("MODEL_ID") or "tgi-demo"


def _demo_argv(fake_args: Sequence[str]) -> Callable[[int, str], list[str]]:
    def argv(port: int, log_path: str) -> list[str]:
        return [
            sys.executable,
            "-u",
            "-m",
            "backends.tgi.fake",
            "--port",
            str(port),
            "--log",
            log_path,
            *fake_args,
        ]

    return argv


def _parser(settings: Settings, *, stream: bool) -> Callable[[object], Job]:
    def parse(payload: object) -> Job:
        return parse_generate(payload, settings, stream=stream)

    return parse


def backend_for(
    settings: Settings, *, model_id: str = "tgi-demo", fake_args: Sequence[str] = ()
) -> Backend:
    """The backend for ``settings``.

    Args:
        settings: TGI's limits and the default token budget.
        model_id: names the model for the benchmark cache.
        fake_args: knobs for the demo's fake TGI.
    """
    return Backend(
        name="tgi",
        model_server_url=f"http://127.0.0.1:{DEFAULT_PORT}",
        endpoints=(
            # Each job brings its own observer (it knows best_of and the prompt's estimate);
            # these are what the answers alone tell.
            Endpoint(
                route="/generate",
                parse=_parser(settings, stream=False),
                benchmark_payload=benchmark_payload,
                observe=observe_generate,
            ),
            Endpoint(
                route="/generate_stream",
                parse=_parser(settings, stream=True),
                benchmark_payload=benchmark_payload,
                observe=observe_stream,
            ),
        ),
        benchmark_route="/generate",
        log_rules=LOG_RULES,
        allow_parallel_requests=True,  # TGI batches continuously
        health_path="/health",
        model_id=model_id,
        demo=DemoServer(
            argv=_demo_argv(fake_args),
            examples=(
                ("/generate", {"inputs": "What is a GPU?", "parameters": {"max_new_tokens": 32}}),
                (
                    "/generate_stream",
                    {"inputs": "What is a GPU?", "parameters": {"max_new_tokens": 32}},
                ),
            ),
        ),
    )


def make_backend(env: Mapping[str, str]) -> Backend:
    """The backend as the environment configures it (see the module docstring).

    Raises:
        ValueError: a variable has an impossible value (the message names it).
    """
    return backend_for(
        Settings.from_env(env),
        model_id=_model_id(env),
        fake_args=shlex.split(env.get("TGI_FAKE_ARGS", "")),
    )
