"""The fake OpenAI-compatible servers' routes: generation (JSON and streams), health, models.

All flavors serve ``POST /v1/completions`` and ``POST /v1/chat/completions`` (``stream`` →
``data: {…}`` events, ending ``data: [DONE]``; with ``stream_options.include_usage`` a last
event with ``"choices": []`` and ``usage``), ``GET /v1/models`` and ``GET /health``, plus each
flavor's own routes; ``GET /stats`` (fake-only) serves the counters of :class:`Stats`.

A request costs its prompt tokens plus its generated tokens in the capacity model (prompt
first, then one unit per token), so streams emit tokens as generated. A client that goes away
aborts its request, which the flavor logs as it does.
"""

from __future__ import annotations

import http
import json
import time
import zlib
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from contextlib import aclosing
from functools import partial
from typing import Any

import attrs

from backends._fakekit import (
    TABLE_SIZE,
    CapacityModel,
    Faults,
    Knobs,
    Request,
    Response,
    StreamResponse,
    word_table,
)
from backends._fakekit import Stats as BaseStats

from ._fake_answer import DONE, Answer
from ._fake_api import LOADING, ApiError, Options, error_body, parse_generation
from ._fake_log import OpenAILog

VLLM_VERSION = "0.11.0"

_REASONS = {status.value: status.phrase for status in http.HTTPStatus}


@attrs.define(kw_only=True)
class Stats(BaseStats):
    """The kit's counters, plus the prompt tokens of the generation requests admitted."""

    prompt_tokens: int = 0


Route = Callable[[Request], Awaitable[Response | StreamResponse]]


@attrs.define(eq=False)
class OpenAIFake:
    """The fake's request handling (:meth:`handle`), state and counters.

    Attributes:
        knobs: rates, limits and failure injection.
        options: flavor and model.
        log: where log lines go.
        state: ``loading``, ``warming`` (SGLang's warm-up) or ``ready``.
        stats: the counters served by ``GET /stats``.
    """

    knobs: Knobs
    options: Options
    log: OpenAILog
    state: str = "loading"
    stats: Stats = attrs.field(init=False, factory=Stats)
    _capacity: CapacityModel = attrs.field(init=False)
    _faults: Faults = attrs.field(init=False)
    _words: tuple[str, ...] = attrs.field(init=False)
    _encoded: tuple[bytes, ...] = attrs.field(init=False)
    _tasks: int = attrs.field(init=False, default=0)
    _free_slots: list[int] = attrs.field(init=False, factory=list)
    _routes: dict[str, tuple[str, Route]] = attrs.field(init=False)

    def __attrs_post_init__(self) -> None:
        self._capacity = self.knobs.capacity_model()
        self._faults = self.knobs.faults()
        self._words = word_table(self.knobs.seed)
        self._encoded = tuple(json.dumps(word).encode() for word in self._words)
        slots = self.knobs.max_parallel or 4
        self._free_slots = list(range(slots - 1, -1, -1))
        routes: dict[str, tuple[str, Route]] = {
            "/health": ("GET", self._health),
            "/v1/models": ("GET", self._models),
            "/v1/completions": ("POST", self._completions),
            "/v1/chat/completions": ("POST", self._chat_completions),
            "/stats": ("GET", self._stats),
        }
        flavor = self.options.flavor
        if flavor == "vllm":
            routes["/version"] = ("GET", self._version)
            routes["/ping"] = ("GET", self._health)
        elif flavor == "sglang":
            routes["/ping"] = ("GET", self._ping)
            routes["/health_generate"] = ("GET", self._health)
        else:
            routes["/v1/health"] = ("GET", self._health)
            routes["/models"] = ("GET", self._models)
            routes["/chat/completions"] = ("POST", self._chat_completions)
        self._routes = routes

    @property
    def routes(self) -> list[tuple[str, str]]:
        """(path, method) of the routes the real server has (``/stats`` left out)."""
        return [(path, method) for path, (method, _) in self._routes.items() if path != "/stats"]

    # -- dispatch ------------------------------------------------------------------------------
    async def handle(self, request: Request) -> Response | StreamResponse:
        """Answer one request (the kit's :data:`~backends._fakekit.Handler`)."""
        flavor = self.options.flavor
        if flavor == "llamacpp" and self.state != "ready" and request.path != "/stats":
            # llama-server's pre-routing middleware answers everything this way while loading.
            response: Response | StreamResponse = self._error(LOADING)
        else:
            route = self._routes.get(request.path)
            if route is None:
                response = self._not_found()
            elif request.method != route[0]:
                response = Response(
                    status=405,
                    body=b'{"detail":"Method Not Allowed"}',
                    headers=((b"allow", route[0].encode()),),
                )
            else:
                response = await route[1](request)
        if response.status >= 400:
            self.stats.errors += 1
        if request.path != "/stats":
            reason = _REASONS.get(response.status, "")
            self.log.access(request.method, request.path, response.status, reason)
            if self.options.log_requests and flavor == "llamacpp":
                answered = response.body if isinstance(response, Response) else b""
                self.log.request_bodies(request.body, answered)
        return response

    def _error(self, error: ApiError) -> Response:
        return Response.json(error_body(self.options.flavor, error), status=error.status)

    def _not_found(self) -> Response:
        if self.options.flavor == "llamacpp":
            return self._error(ApiError(404, "File Not Found", "not_found"))
        return Response.json({"detail": "Not Found"}, status=404)

    # -- small routes ----------------------------------------------------------------------------
    async def _health(self, request: Request) -> Response:
        await self._faults.health_delay()
        flavor = self.options.flavor
        if flavor == "llamacpp":
            return Response.json({"status": "ok"})
        if self.state != "ready":
            return Response(status=503, content_type=b"text/plain")
        return Response(status=200, content_type=b"text/plain")

    async def _ping(self, request: Request) -> Response:
        return Response(status=200, content_type=b"text/plain")

    async def _version(self, request: Request) -> Response:
        return Response.json({"version": VLLM_VERSION})

    async def _stats(self, request: Request) -> Response:
        return Response.json(attrs.asdict(self.stats))

    async def _models(self, request: Request) -> Response:
        options = self.options
        model: dict[str, Any] = {
            "id": options.model,
            "object": "model",
            "created": int(time.time()),
            "owned_by": {"vllm": "vllm", "sglang": "sglang", "llamacpp": "llamacpp"}[
                options.flavor
            ],
        }
        if options.flavor == "llamacpp":
            model["meta"] = {"n_ctx_train": options.max_model_len, "n_vocab": 128256}
        else:
            model.update(root=options.model, parent=None, max_model_len=options.max_model_len)
            if options.flavor == "vllm":
                model["permission"] = []
        return Response.json({"object": "list", "data": [model]})

    # -- generation ------------------------------------------------------------------------------
    async def _completions(self, request: Request) -> Response | StreamResponse:
        return await self._generate(request, chat=False)

    async def _chat_completions(self, request: Request) -> Response | StreamResponse:
        return await self._generate(request, chat=True)

    async def _generate(self, request: Request, *, chat: bool) -> Response | StreamResponse:
        try:
            gen = parse_generation(request.body, chat=chat, options=self.options)
        except ApiError as error:
            return self._error(error)
        if self._faults.fail_request():
            self.log.warning("injected failure (--error-rate)")
            return self._error(ApiError(500, "injected failure", "internal"))
        answer = Answer.start(self.options.flavor, gen)
        if self.options.log_requests:
            self.log.request_received(answer.id, request.body, chat=chat)
        offset = zlib.crc32(gen.seed_text.encode("utf-8", "surrogatepass")) % TABLE_SIZE
        if gen.stream:
            headers: tuple[tuple[bytes, bytes], ...] = ((b"cache-control", b"no-cache"),)
            if self.options.flavor == "llamacpp":
                headers += ((b"x-accel-buffering", b"no"),)
            return StreamResponse(chunks=self._stream(request, answer, offset), headers=headers)
        texts: list[list[str]] = [[] for _ in range(gen.choices)]
        words = self._words
        async with aclosing(self._run(request, answer)) as tokens:
            async for choice, produced in tokens:
                texts[choice].append(words[(offset + choice * 7 + produced) % TABLE_SIZE])
        return Response(status=200, body=answer.whole(["".join(t) for t in texts]))

    async def _stream(self, request: Request, answer: Answer, offset: int) -> AsyncIterator[bytes]:
        gen = answer.gen
        templates = [answer.token_template(i) for i in range(gen.choices)]
        encoded = self._encoded
        words = self._words
        total = 0
        started = False
        # Closed explicitly: when the client leaves, this generator is closed at a yield, and
        # the capacity job inside _run must be released now, not at garbage collection.
        async with aclosing(self._run(request, answer)) as tokens:
            async for choice, produced in tokens:
                if not started:
                    started = True
                    if gen.chat:
                        for index in range(gen.choices):
                            yield answer.role_event(index)
                total += 1
                position = (offset + choice * 7 + produced) % TABLE_SIZE
                if gen.continuous_usage:
                    yield answer.token_event_with_usage(choice, words[position], total)
                else:
                    head, tail = templates[choice]
                    yield head + encoded[position] + tail
        for index in range(gen.choices):
            yield answer.finish_event(index, total)
        if gen.include_usage:
            yield answer.usage_event()
        yield DONE

    async def _run(self, request: Request, answer: Answer) -> AsyncGenerator[tuple[int, int], None]:
        """Serve the request in the capacity model; yields (choice, its token number)."""
        gen = answer.gen
        stats = self.stats
        stats.started()
        stats.prompt_tokens += gen.total_prompt
        self._tasks += 1
        task = self._tasks
        slot = self._free_slots.pop() if self._free_slots else 0
        self.log.request_started(slot, task)
        finished = False
        wanted = gen.total_completion
        choices = gen.choices
        try:
            async with self._capacity.job(gen.total_prompt + wanted) as job:
                await job.serve(gen.total_prompt)
                produced = 0
                while count := await self._faults.produce(
                    job,
                    produced,
                    wanted,
                    on_crash=partial(self.log.crashing, answer.id),
                    on_hang=partial(self.log.hanging, answer.id),
                ):
                    for _ in range(count):
                        # Choices advance together, one token each in turn, as in a batch.
                        yield produced % choices, produced // choices
                        produced += 1
                        stats.tokens_generated += 1
            finished = True
        finally:
            self._free_slots.append(slot)
            aborted = stats.ended(finished=finished, client_gone=request.client_gone)
            self.log.request_ended(
                answer.id,
                slot=slot,
                task=task,
                tokens=gen.total_prompt + wanted,
                aborted=aborted,
                idle=not stats.in_flight,
            )
