"""The hello_world demo model server: a fake LLM that writes words at a set rate.

``python -m backends.hello_world.server --port P --log PATH [knobs]`` (``--help`` lists the
knobs). Routes:

* ``POST /generate`` with ``{"prompt": str, "max_response_tokens": int | null}`` answers
  ``{"response": text, "prompt_tokens": p, "generated_tokens": n}`` after generating
  ``n = max_response_tokens`` (default 256) tokens, or fewer with ``--eos-after`` (the model
  "stops early", as an LLM does at its end-of-sequence token);
* ``POST /generate_stream`` takes the same body and sends one server-sent event per token,
  ``data: {"token": " word"}``, then ``data: {"done": true, "prompt_tokens": p,
  "generated_tokens": n}``;
* ``GET /healthcheck`` answers ``{"status": "ok"}``;
* ``POST /session_closed`` takes any JSON object: the demo's hook for a session's
  ``on_close_route`` (a real server would free what it kept for the session); logged and kept;
* ``GET /stats`` (fake-only) answers the request counters of :class:`Stats`;
* ``GET /sessions_closed`` (fake-only) answers the bodies ``/session_closed`` received.

With ``--log-requests`` it logs each generation request as servers with a request logger do
(vLLM's, SGLang's), the prompt quoted inside the line:
``2026-11-25T16:00:00.123Z INFO request received: prompt: '…', max_response_tokens: 32``.

A request costs ``estimate_tokens(prompt) + n`` units of the capacity model, the same
workload the hello_world backend computes (``n`` the tokens it does generate): the prompt's
units are served first (prefill), then one unit per generated token, so streams emit tokens as
they are generated.
"""

from __future__ import annotations

import json
import sys
import zlib
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Sequence
from contextlib import aclosing
from functools import partial

import attrs

from backends._fakekit import (
    TABLE_SIZE,
    CapacityModel,
    Faults,
    Knobs,
    LogWriter,
    Request,
    Response,
    Stats,
    StreamResponse,
    at_least_one,
    knob_parser,
    run_fake,
    word_table,
)
from pyworker import estimate_tokens

DEFAULT_PORT = 5001
DEFAULT_MAX_RESPONSE_TOKENS = 256
MAX_RESPONSE_TOKENS = 1_000_000


_SSE_HEADERS = ((b"cache-control", b"no-cache"),)
_HEALTHY = Response.json({"status": "ok"})


class _BadRequest(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.response = Response.json({"error": message}, status=status)


def _parse(body: bytes) -> tuple[str, int]:
    """The prompt and token count of a generation request.

    Raises:
        _BadRequest: 400 for malformed JSON, 422 for missing or ill-typed fields.
    """
    try:
        payload = json.loads(body)
    except ValueError as exc:  # JSONDecodeError and UnicodeDecodeError alike
        raise _BadRequest(400, f"malformed JSON: {exc}") from None
    if not isinstance(payload, dict):
        raise _BadRequest(422, "the body must be a JSON object")
    prompt = payload.get("prompt")
    if not isinstance(prompt, str):
        raise _BadRequest(422, "prompt: required, must be a string")
    wanted = payload.get("max_response_tokens")
    if wanted is None:
        return prompt, DEFAULT_MAX_RESPONSE_TOKENS
    if not isinstance(wanted, int) or isinstance(wanted, bool):
        raise _BadRequest(422, "max_response_tokens: must be an integer or null")
    if not 1 <= wanted <= MAX_RESPONSE_TOKENS:
        raise _BadRequest(422, f"max_response_tokens: must be within [1, {MAX_RESPONSE_TOKENS}]")
    return prompt, wanted


@attrs.define(eq=False)
class HelloWorldServer:
    """The demo server's request handling (:meth:`handle`), state and counters.

    Attributes:
        knobs: rates, limits and failure injection.
        log: where cancellations, injected failures and crashes are logged.
        log_requests: log each generation request, its prompt quoted.
        eos_after: every answer ends after this many tokens at most (None: it generates all
            it was asked for).
        stats: the counters served by ``GET /stats``.
    """

    knobs: Knobs
    log: LogWriter
    log_requests: bool = False
    eos_after: int | None = None
    stats: Stats = attrs.field(init=False, factory=Stats)
    sessions_closed: list[object] = attrs.field(init=False, factory=list)
    _capacity: CapacityModel = attrs.field(init=False)
    _faults: Faults = attrs.field(init=False)
    _words: tuple[str, ...] = attrs.field(init=False)
    _events: tuple[bytes, ...] = attrs.field(init=False)
    _last_request: int = attrs.field(init=False, default=0)
    _routes: dict[str, tuple[str, Callable[[Request], Awaitable[Response | StreamResponse]]]] = (
        attrs.field(init=False)
    )

    def __attrs_post_init__(self) -> None:
        self._capacity = self.knobs.capacity_model()
        self._faults = self.knobs.faults()
        self._words = word_table(self.knobs.seed)
        # Pre-encoded SSE events: a streamed token costs no serialisation.
        self._events = tuple(
            b"data: " + json.dumps({"token": word}).encode() + b"\n\n" for word in self._words
        )
        self._routes = {
            "/generate": ("POST", self._generate),
            "/generate_stream": ("POST", self._generate_stream),
            "/healthcheck": ("GET", self._healthcheck),
            "/stats": ("GET", self._stats),
            "/session_closed": ("POST", self._session_closed),
            "/sessions_closed": ("GET", self._sessions_closed),
        }

    async def handle(self, request: Request) -> Response | StreamResponse:
        """Answer one request (the kit's :data:`~backends._fakekit.Handler`)."""
        route = self._routes.get(request.path)
        if route is None:
            response: Response | StreamResponse = Response.json(
                {"error": f"no route {request.path}"}, status=404
            )
        elif request.method != route[0]:
            response = Response(
                status=405,
                body=json.dumps({"error": f"method {request.method} not allowed"}).encode(),
                headers=((b"allow", route[0].encode()),),
            )
        else:
            response = await route[1](request)
        if response.status >= 400:
            self.stats.errors += 1
        return response

    async def _healthcheck(self, request: Request) -> Response:
        await self._faults.health_delay()
        return _HEALTHY

    async def _stats(self, request: Request) -> Response:
        return Response.json(attrs.asdict(self.stats))

    async def _session_closed(self, request: Request) -> Response:
        try:
            body = json.loads(request.body)
        except ValueError:
            return Response.json({"error": "body is not JSON"}, status=400)
        self.sessions_closed.append(body)
        self.log.info(f"session closed: {json.dumps(body)[:200]}")
        return Response.json({"ok": True})

    async def _sessions_closed(self, request: Request) -> Response:
        return Response.json(self.sessions_closed)

    def _admit(self, request: Request) -> tuple[str, int, int] | Response:
        """Validate a generation request and roll for an injected failure."""
        try:
            prompt, wanted = _parse(request.body)
        except _BadRequest as exc:
            return exc.response
        if self.log_requests:
            self.log.info(f"request received: prompt: {prompt!r}, max_response_tokens: {wanted}")
        if self._faults.fail_request():
            self.log.warning("injected failure (--error-rate)")
            return Response.json({"error": "injected failure"}, status=500)
        offset = zlib.crc32(prompt.encode("utf-8", "surrogatepass")) % TABLE_SIZE
        if self.eos_after is not None:
            wanted = min(wanted, self.eos_after)  # the model stops early
        return prompt, wanted, offset

    async def _generate(self, request: Request) -> Response:
        admitted = self._admit(request)
        if isinstance(admitted, Response):
            return admitted
        prompt, wanted, offset = admitted
        prompt_tokens = estimate_tokens(prompt)
        async with aclosing(self._run(request, prompt_tokens, wanted)) as batches:
            async for _ in batches:
                pass
        words = self._words
        text = "".join([words[(offset + i) % TABLE_SIZE] for i in range(wanted)])
        return Response.json(
            {"response": text, "prompt_tokens": prompt_tokens, "generated_tokens": wanted}
        )

    async def _generate_stream(self, request: Request) -> Response | StreamResponse:
        admitted = self._admit(request)
        if isinstance(admitted, Response):
            return admitted
        prompt, wanted, offset = admitted
        return StreamResponse(
            chunks=self._stream(request, prompt, wanted, offset), headers=_SSE_HEADERS
        )

    async def _stream(
        self, request: Request, prompt: str, wanted: int, offset: int
    ) -> AsyncIterator[bytes]:
        prompt_tokens = estimate_tokens(prompt)
        events = self._events
        produced = 0
        # Closed explicitly: when the client leaves, this generator is closed at a yield, and
        # the capacity job inside _run must be released now, not at garbage collection.
        async with aclosing(self._run(request, prompt_tokens, wanted)) as batches:
            async for count in batches:
                for _ in range(count):
                    yield events[(offset + produced) % TABLE_SIZE]
                    produced += 1
        done = {"done": True, "prompt_tokens": prompt_tokens, "generated_tokens": wanted}
        yield b"data: " + json.dumps(done).encode() + b"\n\n"

    async def _run(
        self, request: Request, prompt_tokens: int, wanted: int
    ) -> AsyncGenerator[int, None]:
        """Serve a request in the capacity model, prompt first; yields each batch's tokens."""
        stats = self.stats
        stats.started()
        self._last_request += 1
        number = self._last_request
        finished = False
        try:
            async with self._capacity.job(prompt_tokens + wanted) as job:
                await job.serve(prompt_tokens)
                produced = 0
                while count := await self._faults.produce(
                    job,
                    produced,
                    wanted,
                    on_crash=partial(self._crashing, number),
                    on_hang=partial(self._hanging, number),
                ):
                    produced += count
                    stats.tokens_generated += count
                    yield count
            finished = True
        finally:
            if stats.ended(finished=finished, client_gone=request.client_gone):
                self.log.info(f"request {number} cancelled by client")

    def _crashing(self, number: int, done: int) -> None:
        self.log.error(f"request {number}: model server crashed after {done} tokens")

    def _hanging(self, number: int, done: int) -> None:
        self.log.warning(f"request {number}: hanging after {done} tokens")


def main(argv: Sequence[str] | None = None) -> int:
    """Run the demo server; returns the exit status."""
    parser = knob_parser("hello_world demo LLM server (a fake model server)", port=DEFAULT_PORT)
    parser.add_argument(
        "--log-requests",
        action="store_true",
        help="log each generation request, its prompt quoted (as vLLM's request logger does)",
    )
    parser.add_argument(
        "--eos-after",
        type=at_least_one,
        metavar="N",
        help="end every answer after N tokens at most, as a model that reaches its "
        "end-of-sequence token early (default: all the tokens asked for)",
    )
    namespace = parser.parse_args(argv)
    knobs = Knobs.from_namespace(namespace)
    return run_fake(
        lambda log: (
            HelloWorldServer(
                knobs=knobs,
                log=log,
                log_requests=namespace.log_requests,
                eos_after=namespace.eos_after,
            ).handle
        ),
        knobs,
    )


if __name__ == "__main__":
    sys.exit(main())
