"""The comfyui backend's ``run``: submit a prompt, follow it to the end, fetch its images.

ComfyUI is not request/response: ``POST /prompt`` only queues a graph. This module

1. opens ``/ws?clientId=<fresh id>`` (best effort) so the end of the prompt wakes it at once;
2. submits ``{"prompt", "client_id", "prompt_id"}`` with a fresh UUID4 ``prompt_id`` (older
   builds mint their own, which the answer carries);
3. polls ``GET /history/{prompt_id}`` — the reliable completion signal (an entry appears only
   once the prompt has finished) — every 100 ms, backing off to 250 ms, and at once when the
   websocket says the prompt ended; bounded by an overall timeout;
4. fetches every output image with ``GET /view`` and answers
   ``{"prompt_id", "images": [{"filename", "subfolder", "type", "content_type", "data"}],
   "timings": {"queued_s", "run_s", "total_s"}}`` (``data`` is base64; ``seed`` is added for
   the default workflow), refusing to return more than a bounded total of image bytes;
5. counts, from the websocket's events, the sampler steps ComfyUI ran (none for nodes it took
   from its cache) and says in :attr:`~pyworker.Reply.actual` what the prompt cost by them
   (:mod:`._progress`); without the websocket's every event, the estimate stands.

A client that disconnects (or the timeout) leaves a prompt ComfyUI would otherwise run to the
end, since closing an HTTP connection to ComfyUI cancels nothing. So every exit that did not see
the prompt finish withdraws it, shielded and within a few seconds: ``POST /queue {"delete"}``
while it is pending, ``POST /interrupt {"prompt_id"}`` while it runs (``GET /queue`` tells which),
until ComfyUI no longer holds it (:mod:`._withdraw`). Cancellation itself is always re-raised.

Settings come from the environment (:meth:`RunSettings.from_env`, given it by the backend's
``make_backend``): ``COMFY_PROMPT_TIMEOUT`` (seconds, default 600), ``COMFY_MAX_OUTPUT_BYTES``
(default 32 MiB of image bytes, before base64), ``COMFY_USE_WEBSOCKET`` (``false`` to poll
only).
"""

from __future__ import annotations

import base64
import json
import logging
import time
import uuid
from collections.abc import AsyncGenerator
from contextlib import aclosing
from typing import Any, cast

import attrs
import httpx
import trio

from pyworker import Job, Reply, RunContext

from . import _answers
from ._progress import Progress
from ._settings import CALL_TIMEOUT, RunSettings, api_url
from ._withdraw import withdraw
from ._workflow import PromptJob
from ._ws import WebSocketError, connect_websocket

log = logging.getLogger("backends.comfyui")

_POLL_FAILURES = 3
"""Consecutive failed history polls tolerated before giving up on ComfyUI."""
_WS_CONNECT_TIMEOUT = 1.0
"""Seconds for the websocket's TCP connection and opening handshake together."""
_WS_RETRY_AFTER = 60.0
"""After the websocket failed to open, poll only for this long before trying it again."""
_ws_unavailable_until: dict[str, float] = {}
_WS_SETTLE = 0.5
"""Seconds to wait, once the history says the prompt ended, for the websocket to say so too
(its last events may still be on their way); past that, the estimate stands."""
_MAX_ACTUAL = 1e12
"""The largest workload a reply may carry (pyworker's bound on any workload)."""


class _Failure(Exception):
    """Ends a run with an error reply."""

    def __init__(self, status: int, body: dict[str, Any]) -> None:
        super().__init__(status, body)
        self.reply = Reply.json(body, status=status)


_DEFAULT_SETTINGS = RunSettings()


async def run_prompt(
    job: Job, context: RunContext, settings: RunSettings = _DEFAULT_SETTINGS
) -> Reply:
    """Run ``job`` (its ``detail`` is a :class:`~backends.comfyui._workflow.PromptJob`) on
    ComfyUI and answer with its images.

    Returns:
        200 with the images; 422 with ComfyUI's ``node_errors`` when it rejects the workflow;
        500 when the prompt failed or was interrupted in ComfyUI (with its exception message);
        502 when ComfyUI is unreachable, answers something unexpected, or the images exceed
        the size bound; 504 after the overall timeout.
    """
    detail = job.detail
    assert isinstance(detail, PromptJob), "the comfyui route's parse makes a PromptJob"
    follower = _Prompt(
        context=context,
        prompt=detail,
        settings=settings,
    )
    return await follower.run()


def _ws_url(base: str, client_id: str) -> str | None:
    if not base.startswith("http://"):
        return None  # ws:// only (see ._ws); polling alone still works
    return "ws://" + base.removeprefix("http://").rstrip("/") + f"/ws?clientId={client_id}"


@attrs.define(eq=False)
class _Prompt:
    """One prompt's journey through ComfyUI."""

    context: RunContext
    prompt: PromptJob
    settings: RunSettings
    prompt_id: str = attrs.field(factory=lambda: str(uuid.uuid4()))
    client_id: str = attrs.field(factory=lambda: uuid.uuid4().hex)
    submitted: bool = False
    """ComfyUI may hold the prompt (the submission was at least sent)."""
    acknowledged: bool = False
    """ComfyUI answered the submission with 200: the prompt is queued."""
    settled: bool = False
    """Nothing to withdraw: the prompt finished, or was never queued."""
    _hint: trio.Event = attrs.field(factory=trio.Event)
    """Set when the websocket says the prompt ended (a poll then confirms)."""
    progress: Progress = attrs.field(factory=Progress)
    """What the websocket saw the prompt run."""
    _ws_done: trio.Event = attrs.field(factory=trio.Event)
    """Set once the websocket saw the prompt end, or can no longer see anything."""

    @property
    def base(self) -> str:
        return self.context.model_server_url

    async def run(self) -> Reply:
        started = trio.current_time()
        try:
            with trio.move_on_after(self.settings.timeout) as timer:
                async with trio.open_nursery() as nursery:
                    if self.settings.use_websocket:
                        await nursery.start(self._watch_events)
                    try:
                        reply = await self._submit_and_follow(started)
                    except _Failure as failure:
                        reply = failure.reply
                    nursery.cancel_scope.cancel()
            if timer.cancelled_caught:
                reply = Reply.json(
                    {
                        "error": f"ComfyUI did not finish the prompt within "
                        f"{self.settings.timeout:g} s",
                        "prompt_id": self.prompt_id,
                    },
                    status=504,
                )
            return reply
        finally:
            # Runs on cancellation (client gone) and timeouts alike, then lets them propagate.
            if self.submitted and not self.settled:
                await withdraw(
                    self.context.http,
                    self.base,
                    self.prompt_id,
                    acknowledged=self.acknowledged,
                    cleanup_timeout=self.settings.cleanup_timeout,
                )

    # -- submit and follow ------------------------------------------------------------------
    async def _submit_and_follow(self, started: float) -> Reply:
        submitted_at = time.time()
        body = {
            "prompt": self.prompt.workflow,
            "client_id": self.client_id,
            "prompt_id": self.prompt_id,
        }
        self.submitted = True
        try:
            response = await self.context.http.post(api_url(self.base, "/prompt"), json=body)
        except httpx.ConnectError as exc:
            self.submitted = False  # never reached ComfyUI
            raise _Failure(502, {"error": f"cannot reach ComfyUI: {exc}"}) from None
        except httpx.HTTPError as exc:
            raise _Failure(
                502, {"error": f"submitting the prompt to ComfyUI failed: {exc}"}
            ) from None
        accepted = self._accepted(response)
        entry = await self._wait_for_history()
        self.settled = True
        status = entry.get("status")
        status = status if isinstance(status, dict) else {}
        messages = _answers.messages(status)
        if status.get("status_str") == "error":
            return self._execution_failure(messages)
        images = await self._fetch_images(entry.get("outputs"))
        answer: dict[str, Any] = {
            "prompt_id": self.prompt_id,
            "images": images,
            "timings": _answers.timings(messages, submitted_at, trio.current_time() - started),
        }
        if self.prompt.seed is not None:
            answer["seed"] = self.prompt.seed
        node_errors = accepted.get("node_errors")
        if node_errors:
            # Outputs ComfyUI dropped while running the valid rest of the graph.
            answer["node_errors"] = node_errors
        return Reply.json(answer, actual=await self._actual())

    async def _actual(self) -> float | None:
        """What the prompt ran (see :mod:`._progress`), or None: the estimate stands."""
        if self.progress.watching:
            # The history can be read a moment before the websocket's last events are.
            with trio.move_on_after(_WS_SETTLE):
                await self._ws_done.wait()
        actual = self.progress.actual(self.prompt.workflow)
        if actual is not None and not 0.0 <= actual <= _MAX_ACTUAL:
            log.warning("prompt %s: ignoring an absurd step count", self.prompt_id)
            return None
        return actual

    def _accepted(self, response: httpx.Response) -> dict[str, Any]:
        """The answer to ``POST /prompt``, or a :class:`_Failure`."""
        try:
            data = response.json()
        except ValueError:
            data = None
        if response.status_code == 400:
            self.submitted = False  # rejected by validation: nothing was queued
            raise _Failure(422, _answers.rejection(data, response))
        if response.status_code != 200 or not isinstance(data, dict):
            raise _Failure(
                502,
                {
                    "error": f"ComfyUI answered POST /prompt with HTTP {response.status_code}",
                    "detail": _answers.snippet(response),
                },
            )
        self.acknowledged = True
        # Builds without client-chosen ids mint their own; theirs is the one to follow.
        their_id = data.get("prompt_id")
        if isinstance(their_id, str) and their_id:
            self.prompt_id = their_id
        return data

    async def _wait_for_history(self) -> dict[str, Any]:
        interval = self.settings.poll_interval
        failures = 0
        path = f"/history/{self.prompt_id}"
        while True:
            try:
                response = await self.context.http.get(
                    api_url(self.base, path), timeout=CALL_TIMEOUT
                )
                history = response.json() if response.status_code == 200 else None
            except (httpx.HTTPError, ValueError) as exc:
                history = None
                reason = str(exc) or type(exc).__name__
            else:
                reason = f"HTTP {response.status_code}"
            if isinstance(history, dict):
                failures = 0
                entry = history.get(self.prompt_id)
                if isinstance(entry, dict):
                    return entry
            else:
                failures += 1
                if failures >= _POLL_FAILURES:
                    raise _Failure(
                        502,
                        {
                            "error": f"lost track of the prompt: GET {path} failed: {reason}",
                            "prompt_id": self.prompt_id,
                        },
                    )
            with trio.move_on_after(interval):
                await self._hint.wait()
            if self._hint.is_set():
                # The websocket saw the end; the history entry may lag a moment behind it.
                self._hint = trio.Event()
                interval = self.settings.poll_interval / 4
            else:
                interval = min(interval * 1.25, self.settings.max_poll_interval)

    def _execution_failure(self, messages: list[tuple[str, dict[str, Any]]]) -> Reply:
        body: dict[str, Any] = {"prompt_id": self.prompt_id}
        for event, data in reversed(messages):
            if event == "execution_error":
                body["error"] = (
                    f"ComfyUI failed running node {data.get('node_id')} "
                    f"({data.get('node_type')}): {str(data.get('exception_message', '')).strip()}"
                )
                for key in ("node_id", "node_type", "exception_type", "exception_message"):
                    if key in data:
                        body[key] = data[key]
                break
            if event == "execution_interrupted":
                body["error"] = (
                    f"the prompt was interrupted in ComfyUI at node {data.get('node_id')} "
                    f"({data.get('node_type')})"
                )
                body["interrupted"] = True
                break
        else:
            body["error"] = "ComfyUI reports the prompt failed"
        return Reply.json(body, status=500)

    # -- images ---------------------------------------------------------------------------
    async def _fetch_images(self, outputs: object) -> list[dict[str, Any]]:
        found = _answers.output_images(outputs)
        images: list[dict[str, Any]] = []
        budget = self.settings.max_output_bytes
        for image in found:
            data, content_type = await self._fetch_image(image, budget, found)
            budget -= len(data)
            images.append(
                {
                    **image,
                    "content_type": content_type,
                    "data": base64.b64encode(data).decode("ascii"),
                }
            )
        return images

    async def _fetch_image(
        self, image: dict[str, str], budget: int, found: list[dict[str, str]]
    ) -> tuple[bytes, str]:
        def too_big() -> _Failure:
            return _Failure(
                502,
                {
                    "error": f"the output images exceed {self.settings.max_output_bytes} bytes",
                    "prompt_id": self.prompt_id,
                    "images": found,
                },
            )

        try:
            async with self.context.http.stream(
                "GET", api_url(self.base, "/view"), params=image
            ) as response:
                if response.status_code != 200:
                    raise _Failure(
                        502,
                        {
                            "error": f"ComfyUI could not serve output image "
                            f"{image['filename']!r}: HTTP {response.status_code}",
                            "prompt_id": self.prompt_id,
                        },
                    )
                declared = response.headers.get("content-length", "")
                if declared.isdigit() and int(declared) > budget:
                    raise too_big()
                parts: list[bytes] = []
                size = 0
                # Closed at once when we stop early, not left to the garbage collector.
                stream = cast("AsyncGenerator[bytes, None]", response.aiter_bytes())
                async with aclosing(stream) as chunks:
                    async for chunk in chunks:
                        size += len(chunk)
                        if size > budget:
                            raise too_big()
                        parts.append(chunk)
                content_type = response.headers.get("content-type", "application/octet-stream")
        except httpx.HTTPError as exc:
            raise _Failure(
                502,
                {
                    "error": f"fetching output image {image['filename']!r} failed: {exc}",
                    "prompt_id": self.prompt_id,
                },
            ) from None
        return b"".join(parts), content_type.split(";")[0].strip()

    # -- websocket hints --------------------------------------------------------------------
    async def _watch_events(self, *, task_status: trio.TaskStatus[None]) -> None:
        """Set the hint when ComfyUI says our prompt ended; any failure just means polling.

        Started before the submission (``task_status`` once connected, or once given up) so
        no event of the prompt can be missed.
        """
        url = _ws_url(self.base, self.client_id)
        if url is None or time.monotonic() < _ws_unavailable_until.get(self.base, 0.0):
            task_status.started()
            return
        started = False
        try:
            async with connect_websocket(url, connect_timeout=_WS_CONNECT_TIMEOUT) as websocket:
                self.progress.watching = True  # before the prompt is submitted
                task_status.started()
                started = True
                while True:
                    message = await websocket.receive()
                    # Binary messages are previews: of no use here (and bounded by the cap).
                    if isinstance(message, str) and self._ends_prompt(message):
                        self._hint.set()
                        if self.progress.ended:
                            self._ws_done.set()
        except (OSError, WebSocketError) as exc:
            # Including a message over the size cap: the websocket is gone, polling goes on.
            log.debug("ComfyUI websocket: %s; following the prompt by polling", exc)
            if not self.progress.ended:
                self.progress.lost = True  # some events may be missing: not counted
            self._ws_done.set()
        if not started:
            # It could not open (or not in time): do not pay for that on every request.
            _ws_unavailable_until[self.base] = time.monotonic() + _WS_RETRY_AFTER
            task_status.started()

    def _ends_prompt(self, message: str) -> bool:
        """Count the event (see :class:`~._progress.Progress`); whether it ends the prompt."""
        try:
            event = json.loads(message)
        except ValueError:
            return False
        if not isinstance(event, dict) or not isinstance(event.get("data"), dict):
            return False
        return self.progress.event(event.get("type"), event["data"], self.prompt_id)
