"""The fake TGI's routes: generation (JSON and server-sent events), health, info, metrics.

Generation follows TGI's order: axum reads the body (plain-text 4xx), the handler counts the
request, a stream refuses ``best_of`` and ``decoder_input_details``, a request beyond
``max_concurrent_requests`` is refused as overloaded, TGI validates, and only then does the
model generate. A stream answers HTTP 200 whatever happens: its errors are one event.

A request costs ``best_of * (input_length + max_new_tokens)`` units of the capacity model, the
workload the tgi backend computes: the prompt's units are served first (prefill), then one unit
per token and sequence; a request that stops early (end-of-sequence, stop sequence) gives its
remaining units back.
"""

from __future__ import annotations

import contextlib
import random
import zlib
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping

import attrs
import trio

from backends._fakekit import (
    TABLE_SIZE,
    CapacityModel,
    Faults,
    Knobs,
    Request,
    Response,
    Stats,
    StreamResponse,
)

from ._fake_answer import Answers, sse_event
from ._fake_api import (
    PLAIN,
    Generation,
    Limits,
    Parsed,
    PlainError,
    TGIError,
    check_best_of,
    check_stream,
    decode,
    deserialize,
    overloaded,
    validate,
)
from ._fake_log import TGILog, request_span
from ._fake_run import Run, Token, dumps, token_table

VERSION = "3.3.4"
COMPUTE_TYPE = "1-fake-gpu"

_Route = Callable[[Request], Awaitable[Response | StreamResponse]]
_FAILURE_KINDS = ("overloaded", "validation", "generation", "incomplete", "dropped")
_SSE_HEADERS = (
    (b"cache-control", b"no-cache"),
    (b"x-accel-buffering", b"no"),
    (b"x-compute-type", COMPUTE_TYPE.encode()),
)


@attrs.define(eq=False)
class TGIFakeServer:
    """The fake TGI's request handling (:meth:`handle`), state and counters.

    Attributes:
        knobs: rates, limits and failure injection shared by every fake.
        limits: TGI's router limits.
        log: where the router's and launcher's lines go.
        model_id: the model it pretends to serve.
        eos_after: end every generation with the end-of-sequence token after this many tokens.
        unhealthy_after: seconds after :meth:`listening` from which ``/health`` fails.
        stats: the counters served by ``GET /stats``.
    """

    knobs: Knobs
    limits: Limits
    log: TGILog
    model_id: str = "bigscience/bloom-560m"
    eos_after: int | None = None
    unhealthy_after: float | None = None
    stats: Stats = attrs.field(init=False, factory=Stats)
    _failures: dict[str, int] = attrs.field(init=False)
    _requests: int = attrs.field(init=False, default=0)
    _successes: int = attrs.field(init=False, default=0)
    _ready_at: float | None = attrs.field(init=False, default=None)
    _capacity: CapacityModel = attrs.field(init=False)
    _faults: Faults = attrs.field(init=False)
    _table: tuple[Token, ...] = attrs.field(init=False)
    _answers: Answers = attrs.field(init=False)
    _last_request: int = attrs.field(init=False, default=0)
    _routes: dict[str, dict[str, _Route]] = attrs.field(init=False)

    def __attrs_post_init__(self) -> None:
        self._failures = dict.fromkeys(_FAILURE_KINDS, 0)
        self._capacity = self.knobs.capacity_model()
        self._faults = self.knobs.faults()
        self._table = token_table(self.knobs.seed)
        self._answers = Answers(self._table, random.Random(f"seeds:{self.knobs.seed}"))
        health: dict[str, _Route] = {"GET": self._health}
        self._routes = {
            "/": {"GET": self._health, "POST": self._compat},  # POST: "stream" decides
            "/health": health,
            "/ping": health,
            "/info": {"GET": self._info},
            "/v1/models": {"GET": self._models},
            "/metrics": {"GET": self._metrics},
            "/generate": {"POST": self._generate},
            "/generate_stream": {"POST": self._generate_stream},
            "/stats": {"GET": self._stats},
        }

    def listening(self) -> None:
        """Note that the port accepts connections (the clock of ``unhealthy_after``)."""
        self._ready_at = trio.current_time()

    async def handle(self, request: Request) -> Response | StreamResponse:
        """Answer one request (the kit's :data:`~backends._fakekit.Handler`)."""
        methods = self._routes.get(request.path)
        if methods is None:
            response: Response | StreamResponse = Response(status=404, content_type=PLAIN)
        elif request.method not in methods:
            allow = ",".join(methods).encode()
            response = Response(status=405, content_type=PLAIN, headers=((b"allow", allow),))
        else:
            response = await methods[request.method](request)
        if response.status >= 400:
            self.stats.errors += 1
        return response

    # -- small routes ------------------------------------------------------------------------
    def _unhealthy(self) -> bool:
        after, ready_at = self.unhealthy_after, self._ready_at
        return (
            after is not None and ready_at is not None and trio.current_time() >= ready_at + after
        )

    async def _health(self, request: Request) -> Response:
        await self._faults.health_delay()
        if self._unhealthy():
            body = {"error": "unhealthy", "error_type": "healthcheck"}
            return Response(status=503, body=dumps(body))
        return Response(status=200, content_type=PLAIN)

    async def _info(self, request: Request) -> Response:
        limits = self.limits
        info = {
            "model_id": self.model_id,
            "model_sha": None,
            "model_pipeline_tag": "text-generation",
            "max_concurrent_requests": limits.max_concurrent_requests,
            "max_best_of": limits.max_best_of,
            "max_stop_sequences": limits.max_stop_sequences,
            "max_input_tokens": limits.max_input_tokens,
            "max_total_tokens": limits.max_total_tokens,
            "validation_workers": 2,
            "max_client_batch_size": 4,
            "router": "text-generation-router",
            "version": VERSION,
            "sha": None,
            "docker_label": None,
        }
        return Response(body=dumps(info))

    async def _models(self, request: Request) -> Response:
        model = {"id": self.model_id, "object": "model", "created": 0, "owned_by": self.model_id}
        return Response(body=dumps({"object": "list", "data": [model]}))

    async def _metrics(self, request: Request) -> Response:
        capacity = self._capacity
        lines = [
            "# TYPE tgi_queue_size gauge",
            f"tgi_queue_size {capacity.queued}",
            "# TYPE tgi_batch_current_size gauge",
            f"tgi_batch_current_size {capacity.active}",
            "# TYPE tgi_request_count counter",
            f"tgi_request_count {self._requests}",
            "# TYPE tgi_request_success counter",
            f"tgi_request_success {self._successes}",
            "# TYPE tgi_request_failure counter",
            *(f'tgi_request_failure{{err="{k}"}} {n}' for k, n in self._failures.items()),
        ]
        body = "\n".join(lines).encode() + b"\n"
        return Response(body=body, content_type=b"text/plain; version=0.0.4")

    async def _stats(self, request: Request) -> Response:
        return Response(body=dumps(attrs.asdict(self.stats)))

    # -- generation routes -------------------------------------------------------------------
    async def _generate(self, request: Request) -> Response:
        try:
            parsed = deserialize(decode(request, self.limits))
        except PlainError as exc:
            return Response(status=exc.status, body=exc.message.encode(), content_type=PLAIN)
        return await self._answer(request, parsed)

    async def _generate_stream(self, request: Request) -> Response | StreamResponse:
        try:
            parsed = deserialize(decode(request, self.limits))
        except PlainError as exc:
            return Response(status=exc.status, body=exc.message.encode(), content_type=PLAIN)
        return self._stream(request, parsed)

    async def _compat(self, request: Request) -> Response | StreamResponse:
        try:
            parsed = deserialize(decode(request, self.limits), compat=True)
        except PlainError as exc:
            return Response(status=exc.status, body=exc.message.encode(), content_type=PLAIN)
        if parsed.stream:
            return self._stream(request, parsed)
        return await self._answer(request, parsed)

    def _admit(self, parsed: Parsed, *, stream: bool) -> Generation:
        """TGI's checks before generating, in its order.

        Raises:
            TGIError: what TGI answers instead.
        """
        self._requests += 1
        if stream:
            check_stream(parsed)
        else:
            check_best_of(parsed, self.limits)
        if self.stats.in_flight >= self.limits.max_concurrent_requests:
            raise overloaded()
        gen = validate(parsed, self.limits)
        if self._faults.fail_request():
            raise TGIError(
                424,
                "Request failed during generation: Server error: CUDA out of memory "
                "(injected by --fail-request-rate)",
                "generation",
            )
        return gen

    def _refused(self, exc: TGIError, span: Mapping[str, str]) -> None:
        self._failures[exc.error_type] += 1
        self.log.router("ERROR", exc.message, line=1508, span=span)

    async def _answer(self, request: Request, parsed: Parsed) -> Response:
        started = trio.current_time()
        try:
            gen = self._admit(parsed, stream=False)
        except TGIError as exc:
            self._refused(exc, request_span("generate", parsed.parameters))
            return Response(status=exc.status, body=dumps(exc.body()))
        validated = trio.current_time()
        async with self._running(request, gen) as run:
            while not run.done:
                await self._advance(run)
        done = trio.current_time()
        body: dict[str, object] = {"generated_text": run.text()}
        if gen.details:
            body["details"] = self._answers.details(run)
        total, queue = done - started, run.admitted_at - validated
        inference = done - run.admitted_at
        self._succeeded(
            request_span(
                "generate",
                parsed.parameters,
                total_time=f"{total * 1000:.6f}ms",
                validation_time=f"{(validated - started) * 1000:.6f}ms",
                queue_time=f"{queue * 1000:.6f}ms",
                inference_time=f"{inference * 1000:.6f}ms",
                time_per_token=f"{inference * 1000 / max(run.produced, 1):.6f}ms",
                seed=f"Some({gen.seed})" if gen.seed is not None else "None",
            )
        )
        headers = {
            "x-compute-type": COMPUTE_TYPE,
            "x-compute-time": f"{total:.6f}",
            "x-compute-characters": str(len(gen.inputs)),
            "x-total-time": str(int(total * 1000)),
            "x-validation-time": str(int((validated - started) * 1000)),
            "x-queue-time": str(int(queue * 1000)),
            "x-inference-time": str(int(inference * 1000)),
            "x-time-per-token": str(int(inference * 1000 / max(run.produced, 1))),
            "x-prompt-tokens": str(gen.input_length),
            "x-generated-tokens": str(run.produced),
        }
        return Response(
            body=dumps(body),
            headers=tuple((k.encode(), v.encode()) for k, v in headers.items()),
        )

    def _stream(self, request: Request, parsed: Parsed) -> StreamResponse:
        span = request_span("generate_stream", parsed.parameters)
        try:
            gen = self._admit(parsed, stream=True)
        except TGIError as exc:
            self._refused(exc, span)
            self.stats.errors += 1
            return StreamResponse(chunks=_once(sse_event(exc.body())), headers=_SSE_HEADERS)
        return StreamResponse(chunks=self._events(request, gen, span), headers=_SSE_HEADERS)

    async def _events(
        self, request: Request, gen: Generation, span: Mapping[str, str]
    ) -> AsyncIterator[bytes]:
        head = b'data:{"index":%d,"token":'
        middle = b',"top_tokens":%s' if gen.top_n_tokens else b""
        tail = b',"generated_text":null,"details":null}\n\n'
        async with self._running(request, gen) as run:
            done = run.done
            while not done:
                tokens = await self._advance(run)
                done = run.done
                last = run.produced if done else 0  # the last event carries the answer
                for index, token in enumerate(tokens, run.produced - len(tokens) + 1):
                    if index == last:
                        break
                    top = (
                        middle % dumps(self._answers.top_tokens(run, index - 1)) if middle else b""
                    )
                    yield head % index + token.json + top + tail
            yield self._answers.last_event(run)
        self._succeeded(span)

    def _succeeded(self, span: Mapping[str, str]) -> None:
        self._successes += 1
        self.log.router("INFO", "Success", line=432, span=span)

    # -- the generation loop -----------------------------------------------------------------
    @contextlib.asynccontextmanager
    async def _running(self, request: Request, gen: Generation) -> AsyncIterator[Run]:
        """Count the request in flight, wait for a batch slot, serve its prefill."""
        self.stats.started()
        self._last_request += 1
        number = self._last_request
        offset = zlib.crc32(gen.inputs.encode("utf-8", "surrogatepass")) % TABLE_SIZE
        run = Run(gen, self._table, offset, self.eos_after)
        units = (gen.input_length + gen.max_new_tokens) * gen.best_of
        try:
            async with self._capacity.job(units) as job:
                run.job = job
                run.admitted_at = trio.current_time()
                await job.serve(gen.input_length * gen.best_of)
                yield run
        finally:
            if self.stats.ended(finished=run.finish is not None, client_gone=request.client_gone):
                self._failures["dropped"] += 1
                self.log.router("INFO", f"request {number} dropped: the client went away")
            run.job = None

    async def _advance(self, run: Run) -> list[Token]:
        """Wait for the next tokens of ``run`` and return them (at least one)."""
        job = run.job
        assert job is not None
        gen = run.gen
        await self._fail_point(run.produced)
        if gen.best_of > 1:
            # Several sequences in lockstep: no streaming (TGI refuses it), so in one go.
            await job.serve(job.total)
            count = gen.max_new_tokens - run.produced
        else:
            count = await job.serve_some(self._faults.until_fault(run.produced, gen.max_new_tokens))
        tokens = []
        for _ in range(count):
            tokens.append(run.step())
            if run.finish is not None:
                break
        self.stats.tokens_generated += len(tokens)
        if run.finish is not None:
            await self._fail_point(run.produced)
        return tokens

    async def _fail_point(self, produced: int) -> None:
        """Crash or hang here if the knobs say so (after ``produced`` tokens)."""
        await self._faults.fail_point(produced, on_crash=self._crashing, on_hang=self._hanging)

    def _crashing(self, produced: int) -> None:
        # The shard dies; the launcher notices, stops the webserver and exits.
        log = self.log
        log.error("Shard 0 crashed")
        log.info("Terminating webserver")
        log.info("Waiting for webserver to gracefully shutdown")
        log.info("webserver terminated")
        log.info("Shutting down shards")
        log.fatal("ShardFailed")

    def _hanging(self, produced: int) -> None:
        self.log.warning(f"hanging after {produced} tokens (--hang-after)")


async def _once(chunk: bytes) -> AsyncIterator[bytes]:
    yield chunk
