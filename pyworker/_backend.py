"""The backend API: what a model server integration declares.

A backend is a package under ``backends/`` whose ``__init__`` defines ``BACKEND``, a
:class:`Backend`. It says where its model server listens, which log lines mean what, which routes
the worker serves, how each route's payload is validated and weighed (its *workload*), what a
benchmark request looks like, and how to start a local demo model server.
"""

from __future__ import annotations

import enum
import json
import random
import re
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any, Protocol

import attrs

if TYPE_CHECKING:
    import httpx


class LogAction(enum.Enum):
    """What a matching line in the model server's log means."""

    MODEL_LOADED = "model_loaded"
    """The model server is ready to serve."""
    MODEL_ERROR = "model_error"
    """The model server failed; the line is the reason."""
    INFO = "info"
    """Progress worth showing the operator (downloads, shard start)."""
    IGNORE = "ignore"
    """Not the model server's own news: a request log line, which quotes the client's text
    (vLLM's ``Received request … prompt: '…'``). Matching stops there, so no later rule sees
    the words a client chose, and :meth:`Backend.classify` answers None."""


def _compiled(pattern: str | re.Pattern[str] | None) -> re.Pattern[str] | None:
    return re.compile(pattern) if isinstance(pattern, str) else pattern


def _no_line_ending(rule: LogRule, attribute: attrs.Attribute[str], value: str) -> None:
    if "\n" in value or "\r" in value:
        raise ValueError(f"{attribute.name} {value!r}: lines reach the rules without line endings")


def _matches_some_lines(
    rule: LogRule, attribute: attrs.Attribute[re.Pattern[str] | None], value: object
) -> None:
    if value is None:
        return
    if not isinstance(value, re.Pattern) or not isinstance(value.pattern, str):
        raise TypeError(f"pattern must be a str or a compiled str pattern, not {value!r}")
    if value.match("") is not None:
        raise ValueError(f"pattern {value.pattern!r} matches the empty line, so every line")


@attrs.frozen(kw_only=True)
class LogRule:
    r"""A kind of line in the model server's log, and what it means.

    A line matches when it contains :attr:`substring` and :attr:`pattern` matches at its start
    (each only when given). The substring alone is what the README's example uses; the pattern
    anchors a rule to the server's own log format (its prefix, level and logger), which a
    client's words quoted *inside* a line cannot forge. A model server that logs requests puts
    the prompt in its log: ``CUDA out of memory`` inside vLLM's ``INFO … Received request …
    prompt: '…'`` line must not mean that the model failed. Give both where the server logs
    client text: the substring is a cheap first test (most lines fail it), and the pattern
    runs only on the few lines that contain it::

        LogRule(
            action=LogAction.MODEL_ERROR,
            substring="CUDA out of memory",
            # a traceback's last line, at the start of a line, as Python prints it
            pattern=r"torch\.(?:cuda\.)?OutOfMemoryError: CUDA out of memory",
        )

    The substring of an error rule also names the failure where the worker shows it
    (``error_msg`` in ``/status``, 503 bodies and reports): the line itself, which may quote a
    client's words, goes only to the worker's own log. Make it say what went wrong.

    Attributes:
        action: what a matching line means.
        substring: text that a matching line contains anywhere ("" for none).
        pattern: a regular expression (a string is compiled) that must match at the start of
            the line (:meth:`re.Pattern.match`; end it with ``$`` to match the whole line).
            It may not match the empty line: it would match every line.
    """

    action: LogAction = attrs.field(validator=attrs.validators.instance_of(LogAction))
    substring: str = attrs.field(
        default="", validator=[attrs.validators.instance_of(str), _no_line_ending]
    )
    pattern: re.Pattern[str] | None = attrs.field(
        default=None, converter=_compiled, validator=_matches_some_lines
    )

    def __attrs_post_init__(self) -> None:
        if not self.substring and self.pattern is None:
            raise ValueError("a log rule needs a substring or a pattern (or both)")

    def matches(self, line: str) -> bool:
        """Whether ``line`` (without its line ending) is of this rule's kind."""
        if self.substring not in line:
            return False
        return self.pattern is None or self.pattern.match(line) is not None


MAX_WORKLOAD = 1e12
"""The largest workload a job may have: far beyond any real request (a trillion tokens), so
a larger figure is a client's absurd field that slipped through a backend's checks; refused
like any bad field (422), before it can swell the load reports."""


@attrs.frozen(kw_only=True)
class Job:
    """A validated request, ready to send to the model server.

    Attributes:
        workload: the estimated cost in the backend's workload units (tokens, pixel-steps),
            finite and at most :data:`MAX_WORKLOAD`.
        body: the exact bytes to send upstream (usually JSON).
        upstream_path: the model server's path to send it to.
        detail: backend data for a custom ``run`` (e.g. the parsed workflow).
        observe: makes the :class:`Observer` of this request's answer, in place of the
            endpoint's ``observe``: for what only the payload tells, such as the estimated
            prompt to add to the generated tokens a stream reports, or a request whose
            answer never reports its whole cost (an observer that reports nothing leaves the
            estimate standing).
    """

    workload: float = attrs.field(
        validator=attrs.validators.and_(attrs.validators.ge(0.0), attrs.validators.le(MAX_WORKLOAD))
    )
    body: bytes
    upstream_path: str
    detail: Any = None
    observe: Callable[[], Observer] | None = None


def _actual_workload(reply: Reply, attribute: attrs.Attribute[float | None], value: object) -> None:
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"actual must be a number or None, not {value!r}")
    if not 0.0 <= value <= MAX_WORKLOAD:
        raise ValueError(f"actual must be within [0, {MAX_WORKLOAD:g}], not {value!r}")


@attrs.frozen(kw_only=True)
class Reply:
    """A complete answer made by a backend's custom ``run`` (not relayed byte for byte).

    Attributes:
        status: the HTTP status (400 and above: a failure, which counts as no work done).
        body: the whole body.
        content_type: its ``Content-Type``.
        actual: the workload the model server actually did for the request, in the same units
            as :attr:`Job.workload`, when the ``run`` could tell (ComfyUI's sampler steps, as
            its progress events count them); None leaves the estimate standing. The worker
            counts it as the work done, and the benchmark measures capacity with it.
    """

    status: int
    body: bytes
    content_type: str = "application/json"
    actual: float | None = attrs.field(default=None, validator=_actual_workload)

    @classmethod
    def json(cls, obj: object, status: int = 200, *, actual: float | None = None) -> Reply:
        """A JSON reply (``actual``: see the class)."""
        return cls(status=status, body=json.dumps(obj).encode(), actual=actual)


@attrs.frozen(kw_only=True)
class RunContext:
    """What a custom ``run`` gets to talk to its model server."""

    model_server_url: str
    http: httpx.AsyncClient


def json_body(obj: object) -> bytes:
    """Serialise ``obj`` as compact JSON bytes for an upstream request."""
    return json.dumps(obj, separators=(",", ":")).encode()


class Observer(Protocol):
    """Watches one relayed answer for the actual workload the model server reports.

    An endpoint's ``observe`` (or a job's own) makes a fresh one per request, so it may keep
    state across chunks (a ``usage`` object split between two reads is still seen). Only
    successful answers (status below 400) are observed: a refused request did no work.

    An observer may also define ``head(headers)``, for model servers that report counts in
    their response headers (TGI's ``x-prompt-tokens`` and ``x-generated-tokens``): it is
    called once, before the first chunk, with the answer's headers as ``(name, value)`` byte
    pairs, names lower-cased. The same observers read the benchmark's answers, so capacity is
    measured in actual workload too.

    And it may define an ``error`` attribute: a short reason (str) once the answer, whose
    status said success, reported an error inside it (an error event in a stream: TGI's
    ``{"error": ...}``, an OpenAI server's ``{"error": {...}}``), else None. Such a request did
    no work that counts (``cur_perf``, the benchmark); its record still says ``Success``, as
    Vast's worker has it for any answer relayed.
    """

    def feed(self, chunk: bytes) -> None:
        """Look at the next chunk of a successful answer. Keep it cheap: it runs per chunk."""

    @property
    def actual(self) -> float | None:
        """The actual workload seen so far, or None (the estimate stands)."""


@attrs.frozen(kw_only=True)
class Endpoint:
    """One proxied route.

    Attributes:
        route: the worker's path (clients POST the envelope here).
        parse: validates a client payload and returns a :class:`Job`; raises
            :class:`~pyworker.PayloadError` naming each bad field.
        benchmark_payload: makes a client payload for benchmarking (given a seeded RNG).
        run: a custom procedure for model servers that are not a single request/response
            (ComfyUI); ``None`` relays the upstream response as it arrives, streams included.
        observe: makes an :class:`Observer` for each relayed request, to learn the actual
            usage (tokens) the model server reports (a job's own ``observe`` takes its place).
            A custom ``run`` reports it in :attr:`Reply.actual` instead.
    """

    route: str
    parse: Callable[[object], Job]
    benchmark_payload: Callable[[random.Random], object] | None = None
    run: Callable[[Job, RunContext], Awaitable[Reply]] | None = None
    observe: Callable[[], Observer] | None = None


@attrs.frozen(kw_only=True)
class DemoServer:
    """How to start a local demo or fake model server for ``--demo`` runs and tests.

    Attributes:
        argv: builds the command line from (port, log path); stdout and stderr go to the log.
        examples: short requests the demo suggests once ready, as ``(route, payload)``
            (none: the benchmark request).
    """

    argv: Callable[[int, str], Sequence[str]]
    examples: tuple[tuple[str, object], ...] = ()


@attrs.frozen(kw_only=True)
class Backend:
    """A model server integration.

    Attributes:
        name: the backend's name (``--backend NAME``).
        model_server_url: the model server's default base URL (``MODEL_SERVER_URL`` overrides).
        endpoints: the proxied routes.
        benchmark_route: the route whose ``benchmark_payload`` measures capacity.
        log_rules: kinds of log lines and their meaning; the first rule that matches a line
            decides (see :meth:`classify`).
        allow_parallel_requests: False makes the worker send one request at a time, in
            arrival order (for model servers that cannot batch).
        health_path: the model server's health route, polled once loaded (None: no polling).
        model_id: names the model, for the benchmark cache key.
        demo: how to start a local model server for demos and tests.
        benchmark_runs: benchmark requests after the warm-up.
        benchmark_concurrency: how many benchmark requests run at once when parallel requests
            are allowed.
    """

    name: str
    model_server_url: str
    endpoints: tuple[Endpoint, ...]
    benchmark_route: str
    log_rules: tuple[LogRule, ...]
    allow_parallel_requests: bool = True
    health_path: str | None = None
    model_id: str = ""
    demo: DemoServer | None = None
    benchmark_runs: int = attrs.field(default=8, validator=attrs.validators.ge(1))
    benchmark_concurrency: int = attrs.field(default=8, validator=attrs.validators.ge(1))

    def __attrs_post_init__(self) -> None:
        routes = [e.route for e in self.endpoints]
        if len(set(routes)) != len(routes):
            raise ValueError(f"backend {self.name}: duplicate routes in {routes}")
        if self.benchmark_route not in routes:
            raise ValueError(
                f"backend {self.name}: benchmark route {self.benchmark_route!r} "
                f"is not one of {routes}"
            )
        if self.endpoint(self.benchmark_route).benchmark_payload is None:
            raise ValueError(
                f"backend {self.name}: {self.benchmark_route} has no benchmark_payload"
            )

    def endpoint(self, route: str) -> Endpoint:
        """The endpoint serving ``route``."""
        for endpoint in self.endpoints:
            if endpoint.route == route:
                return endpoint
        raise KeyError(route)

    def classify(self, line: str) -> LogRule | None:
        """What ``line`` of the model server's log means: the first rule that matches it.

        Colour codes are left out first (TGI colours its text lines by default), so rules
        are written against the text as it reads. Called on every line the log tailer
        reads: a rule costs a substring test, and a pattern match only when that passes.

        Returns:
            The first matching rule, or None when no rule matches or the first that does is
            an :attr:`LogAction.IGNORE` rule (a request log line).
        """
        if "\x1b" in line:
            line = _ANSI_ESCAPE.sub("", line)
        for rule in self.log_rules:
            if rule.substring in line and (rule.pattern is None or rule.pattern.match(line)):
                return None if rule.action is LogAction.IGNORE else rule
        return None


# CSI sequences (colours, cursor moves): ESC [ parameters final-byte.
_ANSI_ESCAPE = re.compile(r"\x1b\[[0-9;?]*[ -/]*[@-~]")
