"""A fake Text Generation Inference server (``text-generation-launcher --json-output``).

``python -m backends.tgi.fake --port P --log PATH [knobs]`` (``--help`` lists them). It starts
like TGI (see :mod:`backends.tgi._fake_launcher`): the launcher's JSON lines (arguments, weight
download, shard start) spread over ``--load-delay``, the router's warm-up lines, then the
router's ``Connected`` line, written just before the port is bound; until then connections are
refused. ``--fail-load VARIANT`` ends the start with the launcher's lines for that failure and
``Error: VARIANT``, exit status 1 (``DownloadError``, ``ShardCannotStart``, ``ShardFailed``,
``WebserverFailed``, ``WebserverCannotStart``, ``ArgumentValidation``, ``NotEnoughCUDADevices``;
any other text is a shard that cannot start, with that text as its last traceback line).

Routes (see :mod:`backends.tgi._fake_server`): ``POST /generate``, ``POST /generate_stream``,
``POST /`` (``"stream"`` picks one), ``GET /health`` (and ``/``, ``/ping``), ``GET /info``,
``GET /v1/models``, ``GET /metrics``, and the fake-only ``GET /stats``.

Besides the kit's knobs: TGI's router limits under their launcher flag names
(``--max-concurrent-requests``, ``--max-best-of``, ``--max-stop-sequences``,
``--max-top-n-tokens``, ``--max-input-tokens``, ``--max-total-tokens``, ``--payload-limit``),
``--model-id``, ``--fail-request-rate`` (the kit's ``--error-rate``: such requests fail during
generation, 424 or an error event), ``--eos-after N`` (every generation ends with the
end-of-sequence token at its N-th token) and ``--unhealthy-after S`` (``/health`` answers 503
from S seconds after the port opens). ``--crash-after`` logs the launcher's ``Shard 0 crashed``
and ``Error: ShardFailed`` before the process dies.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

import attrs

from backends._fakekit import (
    Knobs,
    at_least_one,
    fraction,
    knob_parser,
    non_negative,
    run_process,
)

from ._fake_api import Limits
from ._fake_launcher import Launcher
from ._fake_log import TGILog
from ._fake_server import TGIFakeServer

DEFAULT_PORT = 3000
DEFAULT_MODEL_ID = "bigscience/bloom-560m"  # TGI's own default --model-id


@attrs.frozen(kw_only=True)
class Options:
    """The TGI-specific knobs (see the module docstring)."""

    limits: Limits = attrs.field(factory=Limits)
    model_id: str = DEFAULT_MODEL_ID
    eos_after: int | None = None
    unhealthy_after: float | None = None


def parser() -> argparse.ArgumentParser:
    """The command line: the kit's knobs and TGI's."""
    p = knob_parser("a fake Text Generation Inference server (TGI)", port=DEFAULT_PORT)
    add = p.add_argument
    add("--model-id", default=DEFAULT_MODEL_ID, help="the model it pretends to serve")
    add("--max-concurrent-requests", type=at_least_one, default=128, metavar="N")
    add("--max-best-of", type=at_least_one, default=2, metavar="N")
    add("--max-stop-sequences", type=int, default=4, metavar="N")
    add("--max-top-n-tokens", type=int, default=5, metavar="N")
    add("--max-input-tokens", type=at_least_one, metavar="N", help="default: total - 1")
    add("--max-total-tokens", type=at_least_one, default=4096, metavar="N")
    add("--payload-limit", type=at_least_one, default=2_000_000, metavar="BYTES")
    add(
        "--fail-request-rate",
        dest="error_rate",
        type=fraction,
        metavar="F",
        help="fraction of requests that fail during generation (the same as --error-rate)",
    )
    add("--eos-after", type=at_least_one, metavar="N", help="end every answer at token N")
    add(
        "--unhealthy-after",
        type=non_negative,
        metavar="S",
        help="/health answers 503 from S seconds after the port opens",
    )
    return p


def parse(argv: Sequence[str] | None = None) -> tuple[Knobs, Options]:
    """Parse the command line.

    Raises:
        SystemExit: bad arguments (argparse prints why), or ``--help``.
    """
    namespace = parser().parse_args(argv)
    total = namespace.max_total_tokens
    limits = Limits(
        max_concurrent_requests=namespace.max_concurrent_requests,
        max_best_of=namespace.max_best_of,
        max_stop_sequences=namespace.max_stop_sequences,
        max_top_n_tokens=namespace.max_top_n_tokens,
        max_input_tokens=namespace.max_input_tokens or max(total - 1, 1),
        max_total_tokens=total,
        payload_limit=namespace.payload_limit,
    )
    options = Options(
        limits=limits,
        model_id=namespace.model_id,
        eos_after=namespace.eos_after,
        unhealthy_after=namespace.unhealthy_after,
    )
    return Knobs.from_namespace(namespace), options


def launcher(knobs: Knobs, options: Options, log: TGILog) -> Launcher:
    """The fake TGI, ready to be run by the kit (:func:`~backends._fakekit.serve_fake`)."""
    server = TGIFakeServer(
        knobs=knobs,
        limits=options.limits,
        log=log,
        model_id=options.model_id,
        eos_after=options.eos_after,
        unhealthy_after=options.unhealthy_after,
    )
    return Launcher(server)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the fake until SIGTERM or SIGINT (0) or a failed start (1); returns the status."""
    knobs, options = parse(argv)
    return run_process(lambda log: launcher(knobs, options, log), knobs, open_log=TGILog.open)


if __name__ == "__main__":
    sys.exit(main())
