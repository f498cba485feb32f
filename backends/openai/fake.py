"""A fake OpenAI-compatible model server imitating vLLM, SGLang or llama.cpp's ``llama-server``.

``python -m backends.openai.fake --port P --log PATH --flavor vllm|sglang|llamacpp [knobs]``
(``--help`` lists the knobs). It imitates its flavor's start-up and log lines (on the stream
the real server uses), health route, response and stream shapes, error bodies and reaction to
a client going away, as catalogued in the model-server reference (§2-4, §6):

* **vllm**: ``INFO MM-DD hh:mm:ss [file.py:N]`` lines on stdout; nothing listens until the
  model has loaded, then uvicorn's ``INFO:     Application startup complete.`` on stderr;
  ``GET /health`` 200 with an empty body; ids ``cmpl-``/``chatcmpl-``; nested errors
  ``{"error": {"message", "type", "param", "code"}}`` (validation: 400 ``BadRequestError``;
  an unknown ``model``: 404).
* **sglang**: ``[date time]`` lines on stderr; listens after loading, prints uvicorn's lines,
  then warms up (``--warmup``) with ``GET /health`` answering 503 until
  ``The server is fired up and ready to roll!``; flat errors ``{"object": "error", …}``.
* **llamacpp**: ``srv  <function>: …`` lines on stderr; listens *before* loading and answers
  every route 503 ``{"error": {"code": 503, "message": "Loading model", "type":
  "unavailable_error"}}`` until ``srv  llama_server: server is listening on http://…``; then
  ``GET /health`` is 200 ``{"status": "ok"}``; answers carry a ``timings`` object.

The parts: :mod:`._fake_api` (reading requests, error bodies), :mod:`._fake_answer` (answer and
event shapes), :mod:`._fake_server` (the routes), :mod:`._fake_log` (log lines) and
:mod:`._fake_launcher` (start-up and shutdown), run by :mod:`backends._fakekit`.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from backends._fakekit import Knobs, LogWriter, at_least_one, knob_parser, non_negative, run_process

from ._fake_api import DEFAULT_MAX_MODEL_LEN, DEFAULT_MODEL, FLAVORS, Options
from ._fake_launcher import Launcher
from ._fake_log import OpenAILog
from ._fake_server import OpenAIFake

DEFAULT_PORTS = {"vllm": 8000, "sglang": 30000, "llamacpp": 8080}


def parser(flavor: str) -> argparse.ArgumentParser:
    """The command line of ``flavor``'s fake: the kit's knobs and the fake's own."""
    p = knob_parser(
        f"fake {flavor} OpenAI-compatible server",
        port=DEFAULT_PORTS[flavor],
        load_delay=1.0,
        token_rate=500.0,
    )
    add = p.add_argument
    add("--flavor", choices=FLAVORS, default="vllm", help="the server to imitate (default: vllm)")
    add("--model", default=DEFAULT_MODEL, help="the served model name (default: %(default)s)")
    add(
        "--max-model-len",
        type=at_least_one,
        default=DEFAULT_MAX_MODEL_LEN,
        metavar="N",
        help="context window in tokens (default: %(default)s)",
    )
    add(
        "--warmup",
        type=non_negative,
        default=0.5,
        metavar="S",
        help="sglang: seconds of warm-up after listening, /health 503 meanwhile",
    )
    add("--fail-warmup", metavar="REASON", help="sglang: fail the warm-up; exit 1")
    add(
        "--eos-after",
        type=at_least_one,
        metavar="N",
        help="every choice stops after N tokens (its end-of-sequence token, finish_reason "
        "'stop') unless the request sets ignore_eos (default: never early)",
    )
    add(
        "--log-requests",
        action="store_true",
        help="log each request with the client's text, as vLLM's --enable-log-requests, "
        "SGLang's --log-requests and llama.cpp's --verbose do",
    )
    return p


def parse(argv: Sequence[str] | None = None) -> tuple[Knobs, Options]:
    """Parse the command line (its defaults depend on ``--flavor``).

    Raises:
        SystemExit: bad arguments (argparse prints why), or ``--help``.
    """
    probe = argparse.ArgumentParser(add_help=False)
    probe.add_argument("--flavor", choices=FLAVORS, default="vllm")
    known, _ = probe.parse_known_args(argv)
    namespace = parser(known.flavor).parse_args(argv)
    options = Options(
        flavor=namespace.flavor,
        model=namespace.model,
        max_model_len=namespace.max_model_len,
        warmup=namespace.warmup,
        fail_warmup=namespace.fail_warmup,
        log_requests=namespace.log_requests,
        eos_after=namespace.eos_after,
    )
    return Knobs.from_namespace(namespace), options


def main(argv: Sequence[str] | None = None) -> int:
    """Run the fake until SIGTERM or SIGINT (0) or a failed start (1); returns the status."""
    knobs, options = parse(argv)

    def make(log: LogWriter) -> Launcher:
        server = OpenAIFake(knobs=knobs, options=options, log=OpenAILog(log, options.flavor))
        return Launcher(server)

    return run_process(make, knobs, open_log=LogWriter.open)


if __name__ == "__main__":
    sys.exit(main())
