"""OpenAI-compatible servers' log lines: which mean ready, which are fatal, which are progress.

The rules for each server of :data:`~backends.openai.SERVERS` come from
:func:`log_rules`; the patterns are built from fragments of each server's own log prefix.
"""

from __future__ import annotations

from pyworker import LogAction, LogRule

# Every rule is anchored to the start of a line as the server itself writes it: these servers
# can log requests, and then a client's prompt is in the log, on a line that begins with the
# server's own prefix and an INFO level. Fragments of those prefixes, composed into each rule
# (in the manner of h11's ABNF fragments):
#
# vLLM's logger (stdout), "%(levelname)s %(asctime)s [%(filename)s:%(lineno)d] %(message)s",
# date "%m-%d %H:%M:%S" (older builds: no "[" before the file), its multi-line messages (a
# logged traceback) repeated under the same prefix on every line:
#     INFO 05-01 10:00:00 [api_server.py:1043] vLLM API server version 0.11.0
#     ERROR 05-01 10:00:07 [core.py:708] EngineCore failed to start.
# since ~0.10 each process's lines are also prefixed with its name and pid:
#     (APIServer pid=123) INFO 05-01 10:00:00 [api_server.py:1043] …
#     (EngineCore_DP0 pid=140) ERROR 05-01 10:00:07 [core.py:708] …
_VLLM_PROCESS = r"(?:\(\w+ pid=\d+\) )?"
_VLLM_STAMP = r"\d\d-\d\d \d\d:\d\d:\d\d(?:\.\d+)? \[?[\w.-]+:\d+\] "
# SGLang's logging.basicConfig format (stderr), no level: "[%(asctime)s{rank}] %(message)s",
#     [2026-03-11 13:53:23] The server is fired up and ready to roll!
#     [2026-03-11 13:53:23 TP0] Load weight begin. avail mem=78.50 GB
#     [2026-03-11 13:53:23 DP0 TP0] Scheduler hit an exception: Traceback (most recent …
_SGLANG = r"\[\d{4}-\d\d-\d\d \d\d:\d\d:\d\d(?: [A-Z]+\d+)*\] "
# llama.cpp's common log (stderr): with --log-prefix / --log-timestamps a "0.00.123.456 " time
# and an "I "/"W "/"E "/"D " level come first; server lines are "srv  " + the function right-
# aligned in 12 columns, 2025 builds log some from "main: ":
#     srv  llama_server: server is listening on http://127.0.0.1:8080
#     main: server is listening on http://127.0.0.1:8080 - starting the main loop
_LLAMACPP = r"(?:\d+\.\d\d\.\d{3}\.\d{3} )?(?:[IWED] )?(?:srv +[\w()]+|main): "
# Where a Python exception's last line starts: at the start of the line (an uncaught
# traceback on stderr, Python's own format), or after vLLM's prefix at ERROR or CRITICAL
# (a traceback vLLM logged), or after SGLang's prefix:
#     torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB. …
#     (EngineCore_DP0 pid=140) ERROR 05-01 10:00:07 [core.py:708] ValueError: No available …
_RAISED = _VLLM_PROCESS + rf"(?:(?:ERROR|CRITICAL) {_VLLM_STAMP}|{_SGLANG})?"
# uvicorn's default formatter (vLLM, SGLang and llama-cpp-python's HTTP servers): the level
# and a colon, padded to 9 columns, "INFO:     Application startup complete."; SGLang puts its
# own prefix before it, vLLM >= 0.10 its process prefix.
_UVICORN = rf"(?:{_VLLM_PROCESS}|{_SGLANG})"


def _rule(action: LogAction, substring: str, pattern: str) -> LogRule:
    return LogRule(action=action, substring=substring, pattern=pattern)


# Request log lines quote the client's text: they mean nothing, whatever they say. Each server
# writes them only when asked (vLLM <= 0.10 by default, unless --disable-log-requests; vLLM
# >= 0.10.2 with --enable-log-requests; SGLang with --log-requests; llama.cpp's bodies with
# --verbose). vllm/entrypoints/logger.py (repr of the prompt, then the sampling parameters,
# whose stop strings are the client's too), vllm/v1/engine/async_llm.py:
#     INFO 05-01 10:00:41 [logger.py:43] Received request cmpl-5c1e…-0: prompt: 'CUDA out
#       of memory', params: SamplingParams(n=1, …, stop=[], …), prompt_token_ids: None, …
#     INFO 05-01 10:00:41 [async_llm.py:270] Added request cmpl-5c1e…-0.
#     INFO 05-01 10:00:42 [logger.py:71] Generated response cmpl-5c1e…-0: output: '…', …
# SGLang's tokenizer manager (the request dataclass, strings by repr):
#     [2026-03-11 13:54:02] Receive: obj=GenerateReqInput(text='…', …)
#     [2026-03-11 13:54:03] Finish: obj=GenerateReqInput(text='…', …), out={'text': '…', …}
# llama.cpp's log_server_request (the bodies at debug level, as they came):
#     srv  log_server_r: request:  {"messages":[{"role":"user","content":"…"}],…}
#     srv  log_server_r: response: {"choices":[…],…}
_REQUESTS = (
    _rule(
        LogAction.IGNORE,
        " request ",
        _VLLM_PROCESS + rf"[A-Z]+ {_VLLM_STAMP}(?:Received|Added) request ",
    ),
    _rule(
        LogAction.IGNORE, " response ", _VLLM_PROCESS + rf"[A-Z]+ {_VLLM_STAMP}Generated response "
    ),
    _rule(LogAction.IGNORE, ": obj=", _SGLANG + r"(?:Receive|Finish): obj="),
    _rule(LogAction.IGNORE, "log_server_r: ", _LLAMACPP + r"(?:request|response): "),
)

# Fatal lines first: the first matching rule wins.
_ERRORS = (
    # vLLM (and anything on PyTorch): torch >= 2.5 raises torch.OutOfMemoryError, older
    # torch.cuda.OutOfMemoryError, torch 1.x a RuntimeError, each "CUDA out of memory. …".
    _rule(
        LogAction.MODEL_ERROR,
        "CUDA out of memory",
        _RAISED + r"(?:torch\.(?:cuda\.)?OutOfMemoryError|RuntimeError): CUDA out of memory",
    ),
    # "RuntimeError: Engine core initialization failed. See root cause above. Failed core …"
    _rule(
        LogAction.MODEL_ERROR,
        "Engine core initialization failed",
        _RAISED + r"RuntimeError: Engine core initialization failed",
    ),
    # "vllm.v1.engine.exceptions.EngineDeadError: EngineCore encountered an issue. …"
    _rule(LogAction.MODEL_ERROR, "EngineDeadError", _RAISED + r"(?:[\w.]+\.)?EngineDeadError\b"),
    _rule(
        LogAction.MODEL_ERROR,
        "No available memory for the cache blocks",
        _RAISED + r"ValueError: No available memory for the cache blocks",
    ),
    # "ValueError: The model's max seq len (32768) is larger than the maximum number of tokens
    # that can be stored in KV cache (12000). Try increasing `gpu_memory_utilization` …"
    _rule(
        LogAction.MODEL_ERROR,
        "larger than the maximum number of tokens that can be stored in KV cache",
        _RAISED + r"ValueError: The model's max seq len \(\d+\) is larger than the maximum "
        r"number of tokens that can be stored in KV cache",
    ),
    # transformers / huggingface_hub: "OSError: org/name is not a local folder and is not a
    # valid model identifier listed on 'https://huggingface.co/models'", "OSError: You are
    # trying to access a gated repo."
    _rule(
        LogAction.MODEL_ERROR,
        "is not a local folder and is not a valid model identifier",
        _RAISED + r"OSError: \S+ is not a local folder and is not a valid model identifier",
    ),
    _rule(
        LogAction.MODEL_ERROR,
        "You are trying to access a gated repo",
        _RAISED + r"(?:OSError|(?:[\w.]+\.)?GatedRepoError): You are trying to access a gated",
    ),
    # SGLang: "[…] Initialization failed. warmup error: Traceback (most recent call last):",
    # "[… TP0] Scheduler hit an exception: Traceback …", and the memory check's traceback
    # "RuntimeError: Not enough memory. Please try to increase --mem-fraction-static."
    _rule(
        LogAction.MODEL_ERROR,
        "Initialization failed. warmup error",
        _SGLANG + r"Initialization failed\. warmup error",
    ),
    _rule(
        LogAction.MODEL_ERROR, "Scheduler hit an exception", _SGLANG + r"Scheduler hit an exception"
    ),
    _rule(
        LogAction.MODEL_ERROR,
        "Not enough memory. Please try to increase --mem-fraction-static",
        _RAISED + r"RuntimeError: Not enough memory\. Please try to increase "
        r"--mem-fraction-static",
    ),
    # llama.cpp: "srv  llama_server: exiting due to model loading error" (2025: "main: …"),
    # and "… exiting due to HTTP server error" after "couldn't bind HTTP server socket, …"
    _rule(
        LogAction.MODEL_ERROR,
        "exiting due to model loading error",
        _LLAMACPP + r"exiting due to model loading error",
    ),
    _rule(
        LogAction.MODEL_ERROR,
        "exiting due to HTTP server error",
        _LLAMACPP + r"exiting due to HTTP server error",
    ),
    # llama-cpp-python: "ValueError: Failed to load model from file: /models/x.gguf"
    _rule(
        LogAction.MODEL_ERROR,
        "Failed to load model from file",
        _RAISED + r"ValueError: Failed to load model from file",
    ),
    # The port: vLLM binds it itself and raises "OSError: [Errno 98] Address already in use";
    # uvicorn (SGLang, llama-cpp-python) logs "ERROR:    [Errno 98] error while attempting to
    # bind on address ('127.0.0.1', 30000): address already in use".
    _rule(
        LogAction.MODEL_ERROR,
        "Address already in use",
        _RAISED + r"OSError: \[Errno \d+\] Address already in use",
    ),
    _rule(
        LogAction.MODEL_ERROR,
        "error while attempting to bind on address",
        _UVICORN + r"ERROR: +\[Errno \d+\] error while attempting to bind on address",
    ),
)
# uvicorn's "INFO:     Application startup complete." (vLLM >= 0.6: the server is up; under
# SGLang, see "auto" below) and "INFO:     Uvicorn running on http://…" (older vLLM, and
# llama-cpp-python).
_VLLM_READY = (
    _rule(
        LogAction.MODEL_LOADED,
        "Application startup complete.",
        _UVICORN + r"INFO: +Application startup complete\.$",
    ),
    _rule(LogAction.MODEL_LOADED, "Uvicorn running on", _UVICORN + r"INFO: +Uvicorn running on "),
)
_SGLANG_READY = (
    _rule(
        LogAction.MODEL_LOADED,
        "The server is fired up and ready to roll!",
        _SGLANG + r"The server is fired up and ready to roll!",
    ),
)
# 2024 llama.cpp builds logged JSON, and their "HTTP server listening" came *before* the model
# loaded; only "model loaded" meant ready there. In JSON a client's quotes are escaped, so the
# key and value, quoted, are the server's own:
#     {"tid":"1","timestamp":1715000000,"level":"INFO","function":"main","line":3000,
#      "msg":"model loaded"}
_LLAMACPP_READY = (
    _rule(LogAction.MODEL_LOADED, "server is listening on", _LLAMACPP + r"server is listening on "),
    _rule(LogAction.MODEL_LOADED, '"msg":"model loaded"', r'\{"tid":.*"msg":"model loaded"'),
)
_PROGRESS = (
    _rule(
        LogAction.INFO,
        " took ",
        _VLLM_PROCESS + rf"INFO {_VLLM_STAMP}(?:Loading weights|Model loading) took ",
    ),
    _rule(
        LogAction.INFO, "GPU KV cache size", _VLLM_PROCESS + rf"INFO {_VLLM_STAMP}GPU KV cache size"
    ),
    _rule(
        LogAction.INFO,
        "",
        _SGLANG + r"(?:Load weight end|KV Cache is allocated|Capture cuda graph end)\b",
    ),
    _rule(LogAction.INFO, "load_model: loading model", _LLAMACPP + r"loading model "),
    _rule(
        LogAction.INFO, '"msg":"HTTP server listening"', r'\{"tid":.*"msg":"HTTP server listening"'
    ),
)

_READY_RULES = {
    # SGLang's uvicorn lines come before its warm-up ends; "auto" takes them (see above).
    "auto": _VLLM_READY + _LLAMACPP_READY + _SGLANG_READY,
    "vllm": _VLLM_READY,
    "sglang": _SGLANG_READY,
    "llamacpp": _LLAMACPP_READY,
    "llama-cpp-python": (_VLLM_READY[1],),
}


def log_rules(server: str) -> tuple[LogRule, ...]:
    """The log rules for ``server`` (one of :data:`~backends.openai.SERVERS`): request log
    lines first (they mean nothing, whatever they quote), then fatal lines, ready lines and
    progress."""
    return _REQUESTS + _ERRORS + _READY_RULES[server] + _PROGRESS
