"""What an OpenAI-compatible answer says it cost: ``usage``, or llama.cpp's ``timings``.

Every JSON answer carries ``usage`` (``prompt_tokens + completion_tokens`` is the actual
workload). A stream carries it only when the client asked (``stream_options.include_usage``:
one last event with ``"choices": []``; vLLM's ``continuous_usage_stats``: the running figure on
every event). llama.cpp's ``llama-server`` also puts its ``timings`` on a stream's last event,
asked or not: ``prompt_n`` (the prompt tokens it evaluated), ``cache_n`` (those it found in its
prompt cache, in builds since 2025; ``prompt_n + cache_n`` is ``usage.prompt_tokens``) and
``predicted_n`` (``completion_tokens``). So a llama.cpp stream reports its actual workload
either way; a vLLM or SGLang stream only when its client asked for usage.

The worker does not add ``include_usage`` for a client that did not ask for it. The extra event
would have to be cut out of the stream again (clients that read ``choices[0]`` of every event,
as the OpenAI quick-start examples do, fail on an empty ``choices``), which means parsing and
rewriting every relayed stream instead of passing its bytes through; and llama.cpp moves its
``timings`` from the finish event to the usage event when asked, so cutting that event out
would take the timings from clients that read them. Such a stream keeps its estimate.
"""

from __future__ import annotations

from pyworker import UsageObserver

_ERROR_EVENT = b'{"error":'
"""How every OpenAI-compatible server's error event starts, in a stream it already answered
200 (vLLM and SGLang ``data: {"error": {...}}``, llama.cpp and TGI ``data:{"error":{...}}``);
an error inside generated text is JSON-escaped and never matches."""


class Usage:
    """An :class:`~pyworker.Observer` of one answer's ``usage`` (``prompt_tokens +
    completion_tokens``) and of an error event in it.

    With ``continuous_usage_stats`` every event carries the running total; the last one seen
    counts. ``"usage": null`` (the stream's other events) leaves the estimate standing.
    """

    __slots__ = ("_errors", "_usage")

    def __init__(self) -> None:
        self._usage = UsageObserver(b'"usage"', ("prompt_tokens", "completion_tokens"))
        # Counts no field: its actual is 0 once an error event is seen, else None.
        self._errors = UsageObserver(_ERROR_EVENT, ())

    def feed(self, chunk: bytes) -> None:
        """Look at the next chunk."""
        self._usage.feed(chunk)
        self._errors.feed(chunk)

    @property
    def actual(self) -> float | None:
        """``usage``'s figure, or None (the estimate stands)."""
        return self._usage.actual

    @property
    def error(self) -> str | None:
        """ "an error event" once the answer carried one, else None."""
        return None if self._errors.actual is None else "an error event"


def observe_usage() -> Usage:
    """A fresh observer of one answer's ``usage`` (see :class:`Usage`)."""
    return Usage()


class UsageOrTimings:
    """An :class:`~pyworker.Observer` of ``usage``, or of llama.cpp's ``timings`` where an
    answer has no ``usage`` (a stream whose client did not ask for it).

    Timings without ``cache_n`` (builds before 2025) count the evaluated prompt tokens only:
    a prompt found in llama.cpp's cache then counts less than its ``usage`` would.
    """

    __slots__ = ("_timings", "_uncached", "_usage")

    def __init__(self) -> None:
        self._usage = observe_usage()
        self._timings = UsageObserver(b'"timings"', ("cache_n", "prompt_n", "predicted_n"))
        self._uncached = UsageObserver(b'"timings"', ("prompt_n", "predicted_n"))

    def feed(self, chunk: bytes) -> None:
        """Look at the next chunk."""
        self._usage.feed(chunk)
        self._timings.feed(chunk)
        self._uncached.feed(chunk)

    @property
    def actual(self) -> float | None:
        """``usage``'s figure, else the timings', else None (the estimate stands)."""
        for observer in (self._usage, self._timings, self._uncached):
            if observer.actual is not None:
                return observer.actual
        return None

    @property
    def error(self) -> str | None:
        """As :attr:`Usage.error`."""
        return self._usage.error


def observe_usage_or_timings() -> UsageOrTimings:
    """A fresh observer of one answer of a server that may be llama.cpp (see
    :class:`UsageOrTimings`)."""
    return UsageOrTimings()
