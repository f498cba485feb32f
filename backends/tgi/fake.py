"""A fake Text Generation Inference server (``text-generation-launcher --json-output``).

``python -m backends.tgi.fake --port P --log PATH [knobs]`` (``--help`` lists them). It starts
like TGI: the launcher's JSON lines (arguments, weight download, shard start) spread over
``--load-delay``, the router's warm-up lines, then the router's ``Connected`` line, written just
before the port is bound; until then connections are refused. ``--fail-load VARIANT`` ends the
start with the launcher's lines for that failure and ``Error: VARIANT``, exit status 1
(``DownloadError``, ``ShardCannotStart``, ``ShardFailed``, ``WebserverFailed``,
``WebserverCannotStart``, ``ArgumentValidation``, ``NotEnoughCUDADevices``; any other text is a
shard that cannot start, with that text as its last traceback line).

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
import signal
import sys
from collections.abc import AsyncIterator, Sequence

import attrs
import trio

from backends._fakekit import (
    HTTPServer,
    Knobs,
    at_least_one,
    fraction,
    knob_parser,
    non_negative,
    write_port_file,
)

from ._fake_api import Limits
from ._fake_log import ROUTER_V3, TGILog
from ._fake_server import TGIFakeServer

DEFAULT_PORT = 3000
DEFAULT_MODEL_ID = "bigscience/bloom-560m"  # TGI's own default --model-id

VARIANTS = (
    "ArgumentValidation",
    "NotEnoughCUDADevices",
    "DownloadError",
    "ShardCannotStart",
    "ShardFailed",
    "WebserverCannotStart",
    "WebserverFailed",
)
"""The launcher's fatal errors ``--fail-load`` imitates, in the order of TGI's start."""

# Shares of --load-delay spent downloading, starting the shard and warming up.
_DOWNLOAD, _SHARD, _WARMUP = 0.4, 0.4, 0.2
_WEIGHT_FILES = 2
_WAIT_LOG_SECONDS = 10.0  # the launcher's "Waiting for shard to be ready..." period


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
    p = parser()
    namespace = p.parse_args(argv)
    values = vars(namespace)
    knob_fields = {field.name for field in attrs.fields(Knobs)}
    knobs = Knobs(**{k: v for k, v in values.items() if k in knob_fields})
    total = values["max_total_tokens"]
    limits = Limits(
        max_concurrent_requests=values["max_concurrent_requests"],
        max_best_of=values["max_best_of"],
        max_stop_sequences=values["max_stop_sequences"],
        max_top_n_tokens=values["max_top_n_tokens"],
        max_input_tokens=values["max_input_tokens"] or max(total - 1, 1),
        max_total_tokens=total,
        payload_limit=values["payload_limit"],
    )
    options = Options(
        limits=limits,
        model_id=values["model_id"],
        eos_after=values["eos_after"],
        unhealthy_after=values["unhealthy_after"],
    )
    return knobs, options


# -- the start, as TGI's launcher and router log it -------------------------------------------
def _args_dump(knobs: Knobs, options: Options) -> str:
    limits = options.limits
    fields = {
        "model_id": f'"{options.model_id}"',
        "revision": "None",
        "validation_workers": "2",
        "sharded": "None",
        "num_shard": "None",
        "max_concurrent_requests": str(limits.max_concurrent_requests),
        "max_best_of": str(limits.max_best_of),
        "max_stop_sequences": str(limits.max_stop_sequences),
        "max_top_n_tokens": str(limits.max_top_n_tokens),
        "max_input_tokens": f"Some({limits.max_input_tokens})",
        "max_total_tokens": f"Some({limits.max_total_tokens})",
        "hostname": f'"{knobs.host}"',
        "port": str(knobs.port),
        "json_output": "true",
        "payload_limit": str(limits.payload_limit),
    }
    body = "".join(f"    {k}: {v},\n" for k, v in fields.items())
    return "Args {\n" + body + "}"


def _fail(log: TGILog, variant: str, reason: str) -> int:
    """Log the lines that precede ``variant``'s exit, then ``Error: …``; returns 1."""
    if variant == "ArgumentValidation":
        log.fatal('ArgumentValidation("`max_input_tokens` must be < `max_total_tokens`")')
        return 1
    if variant == "NotEnoughCUDADevices":
        log.fatal('NotEnoughCUDADevices("`num_shard` is 2 but only 1 CUDA device is visible")')
        return 1
    if variant == "DownloadError":
        log.error(
            "Download encountered an error: \nTraceback (most recent call last):\n"
            "huggingface_hub.errors.RepositoryNotFoundError: 401 Client Error. "
            "Repository Not Found"
        )
    elif variant == "ShardCannotStart":
        log.launcher(
            "ERROR",
            "Shard complete standard error output:\n\nTraceback (most recent call last):\n"
            f'  File "/opt/conda/bin/text-generation-server", line 8, in <module>\n{reason}',
            rank=0,
        )
        log.launcher("ERROR", "Shard 0 failed to start", rank=0)
    elif variant == "ShardFailed":
        log.error("Shard 0 crashed")
    elif variant == "WebserverCannotStart":
        log.error("Failed to start webserver: No such file or directory (os error 2)")
        log.error("text-generation-router not found in PATH")
    elif variant == "WebserverFailed":
        log.router("ERROR", reason, source=ROUTER_V3, line=131)
        log.error("Webserver Crashed")
    if variant != "DownloadError":
        log.info("Shutting down shards")
    log.fatal(variant)
    return 1


@attrs.define(eq=False)
class _Life:
    """How far the fake got, for the shutdown lines."""

    failure: str | None
    reason: str
    listening: bool = False
    signalled: bool = False


def _failure(fail_load: str | None) -> tuple[str | None, str]:
    if fail_load is None:
        return None, ""
    if fail_load in VARIANTS:
        default_reason = {
            "ShardCannotStart": "torch.OutOfMemoryError: CUDA out of memory. Tried to allocate "
            "2.00 GiB. GPU 0 has a total capacity of 23.55 GiB of which 1.02 GiB is free.",
            "WebserverFailed": "Not enough memory to handle 4096 prefill tokens. You need to "
            "decrease `--max-batch-prefill-tokens`",
        }
        return fail_load, default_reason.get(fail_load, "")
    return "ShardCannotStart", fail_load


async def _load(knobs: Knobs, options: Options, log: TGILog, life: _Life) -> bool:
    """Log TGI's start over ``--load-delay``; False if ``--fail-load`` stopped it."""
    delay, model, failure = knobs.load_delay, options.model_id, life.failure
    log.info(_args_dump(knobs, options))
    if failure in ("ArgumentValidation", "NotEnoughCUDADevices"):
        return False
    log.info(f"Starting check and download process for {model}")
    if failure == "DownloadError":
        return False
    for n in range(1, _WEIGHT_FILES + 1):
        name = f"model-{n:05d}-of-{_WEIGHT_FILES:05d}.safetensors"
        log.info(f"Download file: {name}")
        await trio.sleep(delay * _DOWNLOAD / _WEIGHT_FILES)
        log.info(f"Downloaded /data/{model}/{name} in 0:00:0{n}.")
    log.info(f"Successfully downloaded weights for {model}")
    log.launcher("INFO", "Starting shard", rank=0)
    if failure == "ShardCannotStart":
        await trio.sleep(delay * _SHARD)
        return False
    shard_time = delay * _SHARD
    waited = 0.0
    while shard_time - waited > _WAIT_LOG_SECONDS:
        await trio.sleep(_WAIT_LOG_SECONDS)
        waited += _WAIT_LOG_SECONDS
        log.launcher("INFO", "Waiting for shard to be ready...", rank=0)
    await trio.sleep(shard_time - waited)
    log.launcher("INFO", "Server started at unix:///tmp/text-generation-server-0", rank=0)
    log.launcher("INFO", f"Shard ready in {shard_time:.9f}s", rank=0)
    if failure == "ShardFailed":
        return False
    log.info("Starting Webserver")
    if failure == "WebserverCannotStart":
        return False
    log.router("INFO", "Warming up model", source=ROUTER_V3, line=125)
    await trio.sleep(delay * _WARMUP)
    if failure == "WebserverFailed":
        return False
    batch_tokens = max(options.limits.max_total_tokens * 16, 16384)
    log.router("INFO", f"Setting max batch total tokens to {batch_tokens}", source=ROUTER_V3)
    log.router("INFO", "Using backend V3", source=("text_generation_router", "router/src/main.rs"))
    return True


async def _serve(
    knobs: Knobs, options: Options, log: TGILog, life: _Life, handler: TGIFakeServer
) -> int:
    """Start as TGI does, then serve until cancelled; returns the exit status."""
    if not await _load(knobs, options, log, life):
        assert life.failure is not None
        return _fail(log, life.failure, life.reason)
    server = HTTPServer(
        handler.handle,
        host=knobs.host,
        port=knobs.port,
        # Bodies just over the payload limit reach the handler, which answers as axum does.
        max_body_size=options.limits.payload_limit + 1024 * 1024,
    )
    async with trio.open_nursery() as nursery:
        # TGI's router logs "Connected" just before it binds: a client that acts on the line
        # can still be refused for a moment, as with the real server.
        log.router("INFO", "Connected")
        try:
            port = await nursery.start(server.serve)
        except OSError as exc:
            where = f"{knobs.host}:{knobs.port}"
            log.router("ERROR", f"Failed to bind to {where}: {exc.strerror} (os error {exc.errno})")
            log.error("Webserver Crashed")
            log.info("Shutting down shards")
            log.fatal("WebserverFailed")
            return 1
        life.listening = True
        handler.listening()
        if knobs.port_file is not None:
            write_port_file(knobs.port_file, port)
    return 0


def _log_shutdown(log: TGILog, life: _Life) -> None:
    if life.listening:
        log.router("INFO", "signal received, starting graceful shutdown", line=2330)
        log.info("Terminating webserver")
        log.info("Waiting for webserver to gracefully shutdown")
        log.info("webserver terminated")
    log.info("Shutting down shards")


async def _stop_on_signal(
    signals: AsyncIterator[int], life: _Life, scope: trio.CancelScope
) -> None:
    async for _ in signals:
        life.signalled = True
        scope.cancel()
        return


async def run(knobs: Knobs, options: Options, log: TGILog) -> int:
    """Run the fake in this Trio run until SIGTERM or SIGINT (0) or a failed start (1).

    Returns:
        The exit status.
    """
    failure, reason = _failure(knobs.fail_load)
    if options.limits.max_input_tokens >= options.limits.max_total_tokens:
        failure = "ArgumentValidation"  # what TGI's launcher says to such flags
    life = _Life(failure=failure, reason=reason)
    handler = TGIFakeServer(
        knobs=knobs,
        limits=options.limits,
        log=log,
        model_id=options.model_id,
        eos_after=options.eos_after,
        unhealthy_after=options.unhealthy_after,
    )
    code = 0
    # The receiver is installed before loading starts, so a SIGTERM at any point is clean.
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_stop_on_signal, signals, life, nursery.cancel_scope)
            code = await _serve(knobs, options, log, life, handler)
            nursery.cancel_scope.cancel()
    if life.signalled:
        _log_shutdown(log, life)
        return 0
    return code


def main(argv: Sequence[str] | None = None) -> int:
    """Run the fake; returns the exit status."""
    knobs, options = parse(argv)
    log = TGILog.open_file(knobs.log)
    try:
        log.redirect_std_streams()
        return trio.run(run, knobs, options, log)
    finally:
        log.close()


if __name__ == "__main__":
    sys.exit(main())
