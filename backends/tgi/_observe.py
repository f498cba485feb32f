"""What a TGI answer says it cost: the tokens TGI counted, where it tells them.

* ``/generate`` (JSON): TGI counts in its response headers, ``x-prompt-tokens`` (the prompt's
  real tokens, after ``truncate``) and ``x-generated-tokens``, whether or not the client asked
  for ``details`` (whose JSON counts the generated tokens only). With ``best_of`` > 1 those
  count the best sequence alone, while TGI generated ``best_of`` of them: the estimate stands.
* ``/generate_stream``: the last event's ``details`` (``input_length`` + ``generated_tokens``)
  when the client asked for them. Otherwise the last token event's ``index`` (TGI numbers its
  token events from 1, one per generated token) is the generated count, and the prompt's is
  the estimate's: the generated tokens are the big unknown (a model that stops at its
  end-of-sequence token), the prompt's estimate is close. A stream that is one error event
  (TGI refuses a request that way, under HTTP 200) generated nothing and did no work.

The worker asks TGI for nothing the client did not: the body goes upstream as sent, so a client
that did not ask for ``details`` never gets them (nor its stream's last event rewritten).
"""

from __future__ import annotations

from collections.abc import Sequence

from pyworker import UsageObserver


class GenerateCounts:
    """An :class:`~pyworker.Observer` of a ``/generate`` answer: TGI's token headers.

    Args:
        sequences: ``best_of`` (or 1). Over 1, the headers count only the best sequence: the
            observer reports nothing, and the estimate stands.
    """

    __slots__ = ("_sequences", "actual")

    def __init__(self, sequences: int = 1) -> None:
        self._sequences = sequences
        self.actual: float | None = None

    def head(self, headers: Sequence[tuple[bytes, bytes]]) -> None:
        """Read ``x-prompt-tokens`` and ``x-generated-tokens`` (both, or nothing counts)."""
        if self._sequences > 1:
            return
        prompt = generated = None
        for name, value in headers:
            if name == b"x-prompt-tokens":
                prompt = value
            elif name == b"x-generated-tokens":
                generated = value
        if prompt and generated and prompt.isdigit() and generated.isdigit():
            self.actual = float(int(prompt) + int(generated))

    def feed(self, chunk: bytes) -> None:
        """The body says nothing the headers did not."""


class StreamCounts:
    """An :class:`~pyworker.Observer` of a ``/generate_stream`` answer (see the module).

    Args:
        prompt_tokens: the prompt's estimated tokens, added to the generated tokens of a
            stream without ``details``; None: such a stream leaves the estimate standing.
    """

    __slots__ = ("_details", "_errors", "_index", "_prompt_tokens")

    def __init__(self, prompt_tokens: float | None = None) -> None:
        # The last event's details; the other events say "details":null, which the marker
        # (the object's opening brace) skips.
        self._details = UsageObserver(b'"details":{', ("generated_tokens", "input_length"))
        # Every event is an object whose first key is its index (serde keeps field order);
        # an error event has no index. Generated text is JSON-escaped and never matches.
        self._index = UsageObserver(b'{"index":', ("index",))
        # Counts no field: its actual is 0 once an error event is seen, else None.
        self._errors = UsageObserver(b'{"error":', ())
        self._prompt_tokens = prompt_tokens

    def feed(self, chunk: bytes) -> None:
        """Look at the next chunk of events."""
        self._details.feed(chunk)
        self._errors.feed(chunk)
        if self._prompt_tokens is not None:
            self._index.feed(chunk)

    @property
    def error(self) -> str | None:
        """ "an error event" once the stream carried one (TGI's ``{"error", "error_type"}``:
        refused, overloaded, or a generation cut short), else None."""
        return None if self._errors.actual is None else "an error event"

    @property
    def actual(self) -> float | None:
        """TGI's counts, the estimated prompt and the generated count, 0 for a refusal, or
        None (the estimate stands)."""
        details = self._details.actual
        if details is not None or self._prompt_tokens is None:
            return details
        generated = self._index.actual
        if generated is not None:
            return self._prompt_tokens + generated
        return 0.0 if self._errors.actual is not None else None


def observe_generate() -> GenerateCounts:
    """A fresh observer of one ``/generate`` answer of a single sequence."""
    return GenerateCounts()


def observe_stream() -> StreamCounts:
    """A fresh observer of one stream that knows nothing of its prompt: only a stream with
    ``details`` reports (the parsed job's own observer knows the prompt's estimate)."""
    return StreamCounts()
