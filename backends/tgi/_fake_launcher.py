"""How the fake TGI starts and stops, as TGI's launcher and router log it.

The launcher logs its arguments, downloads the weights, starts the shard and then the router
(the webserver), which warms the model up and logs ``Connected`` just before it binds the port;
until then connections are refused. ``--fail-load VARIANT`` ends the start with the launcher's
lines for that failure and ``Error: VARIANT`` (:data:`VARIANTS`; any other text is a shard that
cannot start, with that text as the last line of its traceback).
"""

from __future__ import annotations

import signal

import attrs
import trio

from backends._fakekit import Launch, StartupFailed

from ._fake_log import ROUTER_V3
from ._fake_server import TGIFakeServer

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

_DEFAULT_REASONS = {
    "ShardCannotStart": "torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB. "
    "GPU 0 has a total capacity of 23.55 GiB of which 1.02 GiB is free.",
    "WebserverFailed": "Not enough memory to handle 4096 prefill tokens. You need to decrease "
    "`--max-batch-prefill-tokens`",
}
# Shares of --load-delay spent downloading, starting the shard and warming up.
_DOWNLOAD, _SHARD, _WARMUP = 0.4, 0.4, 0.2
_WEIGHT_FILES = 2
_WAIT_LOG_SECONDS = 10.0  # the launcher's "Waiting for shard to be ready..." period


def _failure(fail_load: str | None) -> tuple[str | None, str]:
    """The variant ``--fail-load`` asks for, and the reason its lines give."""
    if fail_load is None:
        return None, ""
    if fail_load in VARIANTS:
        return fail_load, _DEFAULT_REASONS.get(fail_load, "")
    return "ShardCannotStart", fail_load


@attrs.define(eq=False)
class Launcher:
    """The fake TGI's start-up and shutdown (the kit's :class:`~backends._fakekit.Fake`).

    Attributes:
        server: the router's request handling, served once the router binds.
        failure: the variant the start ends with (None: it succeeds).
        reason: what that failure's lines say went wrong.
        listening: whether the router's port is open (what the shutdown lines depend on).
    """

    server: TGIFakeServer
    failure: str | None = attrs.field(init=False)
    reason: str = attrs.field(init=False)
    listening: bool = attrs.field(init=False, default=False)

    def __attrs_post_init__(self) -> None:
        self.failure, self.reason = _failure(self.server.knobs.fail_load)
        limits = self.server.limits
        if limits.max_input_tokens >= limits.max_total_tokens:
            self.failure = "ArgumentValidation"  # what TGI's launcher says to such flags

    async def start(self, launch: Launch) -> None:
        """Start as TGI does: the launcher's lines over the load delay, then the router."""
        if not await self._load(launch):
            self._fail()
            raise StartupFailed(self.failure)
        server = self.server
        # TGI's router logs "Connected" just before it binds: a client that acts on the line
        # can still be refused for a moment, as with the real server.
        server.log.router("INFO", "Connected")
        await launch.listen(
            server.handle,
            on_bind_error=self._cannot_bind,
            # Bodies just over the payload limit reach the handler, which answers as axum does.
            max_body_size=server.limits.payload_limit + 1024 * 1024,
        )
        self.listening = True
        server.listening()

    def stopping(self, signum: signal.Signals) -> None:
        """The router's graceful shutdown (once listening), then the launcher's."""
        log = self.server.log
        if self.listening:
            log.router("INFO", "signal received, starting graceful shutdown", line=2330)
            log.info("Terminating webserver")
            log.info("Waiting for webserver to gracefully shutdown")
            log.info("webserver terminated")
        log.info("Shutting down shards")

    def _args_dump(self) -> str:
        server = self.server
        knobs, limits = server.knobs, server.limits
        fields = {
            "model_id": f'"{server.model_id}"',
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

    async def _load(self, launch: Launch) -> bool:
        """Log TGI's start over the load delay; False where ``--fail-load`` stops it."""
        log, model, failure = self.server.log, self.server.model_id, self.failure
        log.info(self._args_dump())
        if failure in ("ArgumentValidation", "NotEnoughCUDADevices"):
            return False
        log.info(f"Starting check and download process for {model}")
        if failure == "DownloadError":
            return False
        for n in range(1, _WEIGHT_FILES + 1):
            name = f"model-{n:05d}-of-{_WEIGHT_FILES:05d}.safetensors"
            log.info(f"Download file: {name}")
            await launch.load(_DOWNLOAD / _WEIGHT_FILES)
            log.info(f"Downloaded /data/{model}/{name} in 0:00:0{n}.")
        log.info(f"Successfully downloaded weights for {model}")
        log.launcher("INFO", "Starting shard", rank=0)
        if failure == "ShardCannotStart":
            await launch.load(_SHARD)
            return False
        shard_time = launch.knobs.load_delay * _SHARD
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
        await launch.load(_WARMUP)
        if failure == "WebserverFailed":
            return False
        batch_tokens = max(self.server.limits.max_total_tokens * 16, 16384)
        log.router("INFO", f"Setting max batch total tokens to {batch_tokens}", source=ROUTER_V3)
        log.router(
            "INFO", "Using backend V3", source=("text_generation_router", "router/src/main.rs")
        )
        return True

    def _fail(self) -> None:
        """Log the lines that precede the failure's exit, then ``Error: <variant>``."""
        log, variant, reason = self.server.log, self.failure, self.reason
        assert variant is not None
        if variant == "ArgumentValidation":
            log.fatal('ArgumentValidation("`max_input_tokens` must be < `max_total_tokens`")')
            return
        if variant == "NotEnoughCUDADevices":
            log.fatal('NotEnoughCUDADevices("`num_shard` is 2 but only 1 CUDA device is visible")')
            return
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

    def _cannot_bind(self, exc: OSError) -> None:
        log, knobs = self.server.log, self.server.knobs
        where = f"{knobs.host}:{knobs.port}"
        log.router("ERROR", f"Failed to bind to {where}: {exc.strerror} (os error {exc.errno})")
        log.error("Webserver Crashed")
        log.info("Shutting down shards")
        log.fatal("WebserverFailed")
