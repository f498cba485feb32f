"""How the fake OpenAI-compatible servers start and stop, as each flavor logs it.

* vLLM loads the model (``--load-delay``) with nothing listening, then binds, lists its routes
  and logs uvicorn's ``Application startup complete.``;
* SGLang loads, binds, logs uvicorn's lines, then warms up (``--warmup``, ``GET /health``
  503 meanwhile) until ``The server is fired up and ready to roll!``;
* llama.cpp's ``llama-server`` binds *before* it loads, answering 503 until
  ``srv  llama_server: server is listening on http://…``.

``--fail-load REASON`` ends the load with the flavor's fatal lines (REASON in the last one);
SGLang's ``--fail-warmup`` fails its warm-up after listening. Either way the exit status is 1.
"""

from __future__ import annotations

import signal
from collections.abc import Awaitable, Callable

import attrs
import trio

from backends._fakekit import Launch, StartupFailed

from ._fake_server import VLLM_VERSION, OpenAIFake

_GGUF = "/models/{model}.gguf"


@attrs.define(eq=False)
class Launcher:
    """A flavor's start-up and shutdown (the kit's :class:`~backends._fakekit.Fake`).

    Attributes:
        server: the request handling; its ``state`` follows the start.
    """

    server: OpenAIFake

    async def start(self, launch: Launch) -> None:
        """Start as the flavor does (see the module docstring)."""
        await _STARTS[self.server.options.flavor](self.server, launch)

    def stopping(self, signum: signal.Signals) -> None:
        """A graceful shutdown's lines, once the server was ready."""
        if self.server.state == "ready":
            self.server.log.shutdown()


async def _listen(server: OpenAIFake, launch: Launch) -> str:
    """Start serving; returns the URL (or fails the start with the flavor's lines)."""
    log, knobs = server.log, launch.knobs

    def cannot_bind(exc: OSError) -> None:
        if log.flavor == "vllm":
            log.raw("Traceback (most recent call last):")
            log.raw(
                '  File "/usr/lib/python3.12/site-packages/vllm/entrypoints/openai/api_server.py", '
                "line 1920, in create_server_socket"
            )
            log.raw("    sock.bind(addr)")
            log.raw(f"OSError: [Errno {exc.errno}] Address already in use")
        elif log.flavor == "sglang":
            log.uvicorn(
                f"[Errno {exc.errno}] error while attempting to bind on address "
                f"('{knobs.host}', {knobs.port}): address already in use",
                "ERROR",
            )
        else:
            log.srv(
                "start",
                f"couldn't bind HTTP server socket, hostname: {knobs.host}, port: {knobs.port}",
            )
            log.srv("llama_server", "exiting due to HTTP server error")

    return await launch.listen(server.handle, on_bind_error=cannot_bind)


async def _start_vllm(server: OpenAIFake, launch: Launch) -> None:
    log, options, knobs = server.log, server.options, launch.knobs
    model, delay = options.model, knobs.load_delay
    log.vllm("api_server.py:1837", f"vLLM API server version {VLLM_VERSION}")
    log.vllm(
        "utils.py:326",
        f"non-default args: {{'model': '{model}', 'port': {knobs.port}, "
        f"'max_model_len': {options.max_model_len}}}",
    )
    log.vllm(
        "core.py:75",
        f"Initializing a V1 LLM engine (v{VLLM_VERSION}) with config: model='{model}', "
        f"max_seq_len={options.max_model_len}",
    )
    log.vllm("gpu_model_runner.py:2007", f"Starting to load model {model}...")
    await launch.load(1 / 2)
    if knobs.fail_load is not None:
        log.vllm("core.py:708", "EngineCore failed to start.", "ERROR")
        log.raw("Traceback (most recent call last):")
        log.raw(
            '  File "/usr/lib/python3.12/site-packages/vllm/v1/engine/core.py", line 699, '
            "in run_engine_core"
        )
        log.raw("    engine_core = EngineCoreProc(*args, **kwargs)")
        log.raw(
            "torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB. "
            f"{knobs.fail_load}"
        )
        log.raw(
            "RuntimeError: Engine core initialization failed. See root cause above. "
            "Failed core proc(s): {'EngineCore_DP0': 1}"
        )
        raise StartupFailed(knobs.fail_load)
    log.vllm("default_loader.py:262", f"Loading weights took {delay / 4:.2f} seconds")
    log.vllm(
        "gpu_model_runner.py:2029", f"Model loading took 14.99 GiB and {delay / 2:.6f} seconds"
    )
    await launch.load(1 / 4)
    log.vllm("kv_cache_utils.py:829", "GPU KV cache size: 123,456 tokens")
    log.vllm(
        "kv_cache_utils.py:833",
        f"Maximum concurrency for {options.max_model_len:,} tokens per request: 30.14x",
    )
    await launch.load(1 / 4)
    log.vllm(
        "core.py:214",
        f"init engine (profile, create kv cache, warmup model) took {delay:.2f} seconds",
    )
    url = await _listen(server, launch)
    log.vllm("api_server.py:1880", f"Starting vLLM API server 0 on {url}")
    log.vllm("launcher.py:36", "Available routes are:")
    for path, method in server.routes:
        log.vllm("launcher.py:44", f"Route: {path}, Methods: {method}")
    # uvicorn logs these just before its socket accepts; written after, so a reader of the
    # log never finds the server ready and then refusing connections.
    server.state = "ready"
    log.uvicorn_started(url)


async def _start_sglang(server: OpenAIFake, launch: Launch) -> None:
    log, options, knobs = server.log, server.options, launch.knobs
    model = options.model
    log.sglang(
        f"server_args=ServerArgs(model_path='{model}', tokenizer_path='{model}', "
        f"host='{knobs.host}', port={knobs.port}, context_length={options.max_model_len})"
    )
    log.sglang("Init torch distributed begin.", rank="TP0")
    log.sglang("Load weight begin. avail mem=78.50 GB", rank="TP0")
    await launch.load(1 / 2)
    if knobs.fail_load is not None:
        log.sglang("Scheduler hit an exception: Traceback (most recent call last):", rank="TP0")
        log.raw(
            '  File "/sgl-workspace/sglang/python/sglang/srt/managers/scheduler.py", '
            "line 2900, in run_scheduler_process"
        )
        log.raw(
            "RuntimeError: Not enough memory. Please try to increase --mem-fraction-static. "
            f"{knobs.fail_load}"
        )
        log.sglang("Received sigquit from a child process. It usually means the child failed.")
        raise StartupFailed(knobs.fail_load)
    log.sglang(
        "Load weight end. type=LlamaForCausalLM, dtype=torch.bfloat16, avail mem=63.20 GB, "
        "mem usage=15.30 GB.",
        rank="TP0",
    )
    log.sglang(
        "KV Cache is allocated. #tokens: 383872, K size: 23.43 GB, V size: 23.43 GB", rank="TP0"
    )
    await launch.load(1 / 2)
    log.sglang(
        "Capture cuda graph end. Time elapsed: 8.04 s. mem usage=0.52 GB. avail mem=15.05 GB.",
        rank="TP0",
    )
    url = await _listen(server, launch)
    server.state = "warming"
    log.uvicorn_started(url)
    # The warm-up: a model-info call, then one short generation, as access-log lines.
    await trio.sleep(options.warmup / 2)
    log.access("GET", "/get_model_info", 200, "OK")
    await trio.sleep(options.warmup / 2)
    if options.fail_warmup is not None:
        log.sglang("Initialization failed. warmup error: Traceback (most recent call last):")
        log.raw(f"RuntimeError: {options.fail_warmup}")
        raise StartupFailed(options.fail_warmup)
    log.access("POST", "/generate", 200, "OK")
    server.state = "ready"
    log.sglang("The server is fired up and ready to roll!")


async def _start_llamacpp(server: OpenAIFake, launch: Launch) -> None:
    log, options, knobs = server.log, server.options, launch.knobs
    gguf = _GGUF.format(model=options.model.rsplit("/", 1)[-1])
    log.raw("build: 6500 (1d0125bc) with cc (GCC) 13.3.0 for x86_64-linux-gnu")
    log.raw("system info: n_threads = 2, n_threads_batch = 2, total_threads = 2")
    log.srv("start", "binding port with default address family")
    # llama-server listens before it loads, answering 503 meanwhile.
    url = await _listen(server, launch)
    log.srv("init", "using 1 threads for HTTP server")
    log.srv("llama_server", "loading model")
    log.srv("load_model", f"loading model '{gguf}'")
    log.raw(
        "llama_model_loader: loaded meta data with 29 key-value pairs and 291 tensors from "
        f"{gguf} (version GGUF V3 (latest))"
    )
    await launch.load(1 / 2)
    if knobs.fail_load is not None:
        log.raw(f"llama_model_load: error loading model: {knobs.fail_load}")
        log.raw("llama_model_load_from_file_impl: failed to load model")
        log.srv("load_model", f"failed to load model, '{gguf}'")
        log.srv("llama_server", "exiting due to model loading error")
        raise StartupFailed(knobs.fail_load)
    log.raw("load_tensors: loading model tensors, this can take a while... (mmap = true)")
    await launch.load(1 / 2)
    log.raw(f"llama_context: n_ctx         = {options.max_model_len}")
    server.state = "ready"
    log.srv("llama_server", "model loaded")
    log.srv("llama_server", "chat template, chat_template: llama3")
    log.srv("llama_server", f"server is listening on {url}")
    log.srv("update_slots", "all slots are idle")


_STARTS: dict[str, Callable[[OpenAIFake, Launch], Awaitable[None]]] = {
    "vllm": _start_vllm,
    "sglang": _start_sglang,
    "llamacpp": _start_llamacpp,
}
