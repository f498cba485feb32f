"""Answers to the client over ASGI: the model server's, relayed as it arrives, or the worker's
own refusals."""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager

import attrs
import trio

from ._backend import Observer
from ._load import Outcome
from ._model import Answer, WholeAnswer, actual_workload, reported_error
from ._sessions import Session
from ._typing import Headers, Receive, Send
from ._upstream import UpstreamError

log = logging.getLogger("pyworker.relay")

# Response headers that describe the upstream hop, not the answer (RFC 9110 §7.6.1), plus the
# ones our server sets itself. Content-Length goes through: the body is relayed byte for byte
# (and the reader has dropped a length that Transfer-Encoding overrides, RFC 9112 §6.3).
_HOP_HEADERS = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"proxy-authenticate",
        b"proxy-authorization",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
        b"date",
        b"server",
    }
)
# Never dropped for being named in Connection: the body is relayed as it came, content coding
# included, so the field saying how it is coded must go with it (else gzip passes for plain).
# RFC 9110 §7.6.1 forbids a sender to name such a field; a server that does is not obeyed.
_END_TO_END = frozenset({b"content-encoding"})


def _relayed_headers(headers: Headers) -> Headers:
    """``headers`` without the hop-by-hop ones: those above and any the Connection header names
    (RFC 9110 §7.6.1)."""
    dropped = _HOP_HEADERS
    for name, value in headers:
        if name == b"connection":
            options = {option.strip().lower() for option in value.split(b",")}
            dropped = dropped | (options - _END_TO_END)
    return [(k, v) for k, v in headers if k not in dropped]


JSON_TYPE: Headers = [(b"content-type", b"application/json")]


@attrs.define(eq=False)
class ClientWatch:
    """Watches a client whose request is being served (see :func:`watch_client`)."""

    _request: trio.CancelScope
    _watcher: trio.CancelScope = attrs.Factory(trio.CancelScope)

    @property
    def left(self) -> bool:
        """Whether the request was cancelled because the client left or its session ended."""
        return self._request.cancelled_caught

    def stop(self) -> None:
        """Stop watching: the answer is complete (see :func:`relay`'s ``before_last``)."""
        self._watcher.cancel()

    async def watch(self, receive: Receive) -> None:
        # The body has been read, so the next message can only be the disconnect.
        with self._watcher:
            while (await receive())["type"] != "http.disconnect":
                pass
            self._request.cancel()


@asynccontextmanager
async def watch_client(receive: Receive, session: Session | None) -> AsyncIterator[ClientWatch]:
    """Run the block as long as the client waits for its answer (and its session lasts).

    The block is cancelled when the client disconnects, or when the request's session ends;
    the cancellation is absorbed here, and :attr:`ClientWatch.left` says it happened.
    """
    async with trio.open_nursery() as nursery:
        client = ClientWatch(nursery.cancel_scope)
        detach = session.attach(nursery.cancel_scope) if session is not None else None
        nursery.start_soon(client.watch, receive)
        try:
            yield client
        finally:
            client.stop()
            if detach is not None:
                detach()


async def relay(
    answer: Answer,
    send: Send,
    *,
    observer: Observer | None = None,
    before_last: Callable[[], None] | None = None,
) -> Outcome:
    """Relay ``answer`` to the client chunk by chunk as it arrives, and say how it ended.

    Args:
        answer: the model server's answer (closed by the caller).
        send: the ASGI send of the client's request.
        observer: fed every chunk of a successful answer, to learn its actual workload
            (see :func:`~pyworker._model.observe`).
        before_last: called just before the final body message goes out. The server may
            deliver the client's disconnect from inside that very send (the response is then
            complete), so this is where to stop treating a disconnect as the client leaving.

    Returns:
        Completed or failed by the answer's status (and the worker's own error), a completed
        one with its actual workload where the answer says it (see
        :func:`~pyworker._model.actual_workload`); or failed when the model server broke off
        mid-answer: the headers are gone by then, so the final body message is withheld and
        the server closes the connection, and the client sees a broken response rather than a
        silently truncated success.
    """
    status = answer.status
    headers = _relayed_headers(answer.headers)
    if isinstance(answer, WholeAnswer):
        headers.append((b"content-length", str(len(answer.body)).encode()))
        await send({"type": "http.response.start", "status": status, "headers": headers})
        return await _last(send, answer.body, answer, None, before_last)
    await send({"type": "http.response.start", "status": status, "headers": headers})
    feed = observer.feed if observer is not None and status < 400 else None
    try:
        while chunk := await answer.receive():
            if feed is not None:
                feed(chunk)
            if answer.complete:
                # The usual JSON answer: one chunk, sent with the end of the response.
                return await _last(send, chunk, answer, observer, before_last)
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
    except UpstreamError as exc:
        log.warning("model server failed mid-response: %s", exc)
        return Outcome.failed(status, f"model server failed mid-response: {exc}")
    return await _last(send, b"", answer, observer, before_last)


async def _last(
    send: Send,
    chunk: bytes,
    answer: Answer,
    observer: Observer | None,
    before_last: Callable[[], None] | None,
) -> Outcome:
    if before_last is not None:
        before_last()
    await send({"type": "http.response.body", "body": chunk, "more_body": False})
    if answer.error:
        return Outcome.failed(answer.status, answer.error)
    # An error event inside a 2xx answer: relayed like any answer (a Success record, as Vast's
    # worker has it), but no work done.
    failed = reported_error(observer) is not None
    return Outcome.answered(answer.status, actual_workload(answer, observer), failed=failed)


async def send_json(
    send: Send, status: int, body: object, headers: Sequence[tuple[bytes, bytes]] = ()
) -> None:
    """Send a whole JSON answer."""
    data = json.dumps(body).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [*JSON_TYPE, (b"content-length", str(len(data)).encode()), *headers],
        }
    )
    await send({"type": "http.response.body", "body": data, "more_body": False})
