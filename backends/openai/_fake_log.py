"""The fake OpenAI-compatible servers' log lines, worded and placed as each flavor's are.

* vLLM: its logger's ``INFO 05-01 10:00:00 [api_server.py:1043] …`` lines on stdout, uvicorn's
  lifecycle lines (``INFO:     Application startup complete.``) on stderr and its access lines
  on stdout;
* SGLang: ``[2026-03-11 13:53:23 TP0] …`` lines on stderr, uvicorn's lines with the same
  prefix, access lines on stdout;
* llama.cpp: ``srv  <function>: …`` and ``slot <function>: id  0 | task 5 | …`` lines, and
  the loader's bare lines, all on stderr.

With ``--log-requests`` each flavor also logs requests as its request logger does, the
client's text inside the line (:meth:`OpenAILog.request_received`,
:meth:`OpenAILog.request_bodies`): what the worker's log rules must never take for the
server's own news.

With ``--log`` both streams are the log file (as ``server >log 2>&1``), in the order written.
"""

from __future__ import annotations

import json
import os
import time

import attrs

from backends._fakekit import LogWriter


@attrs.define(eq=False)
class OpenAILog:
    """Writes a flavor's log lines through the kit's writer.

    Attributes:
        writer: the log (its stdout and stderr).
        flavor: the server imitated.
    """

    writer: LogWriter
    flavor: str

    # -- each logger's lines -----------------------------------------------------------------
    def vllm(self, where: str, message: str, level: str = "INFO") -> None:
        """A vLLM logger line (stdout): ``INFO 05-01 10:00:00 [api_server.py:1043] …``."""
        stamp = time.strftime("%m-%d %H:%M:%S")
        self.writer.line(f"{level} {stamp} [{where}] {message}")

    def sglang(self, message: str, *, rank: str = "") -> None:
        """An SGLang logger line (stderr): ``[2026-03-11 13:53:23 TP0] …``."""
        stamp = time.strftime("%Y-%m-%d %H:%M:%S")
        self.writer.line(f"[{stamp}{' ' + rank if rank else ''}] {message}", stderr=True)

    def uvicorn(self, message: str, level: str = "INFO") -> None:
        """A uvicorn lifecycle line (stderr), ``[date]``-prefixed under SGLang."""
        line = f"{level + ':':<10}{message}"
        if self.flavor == "sglang":
            self.sglang(line)
        else:
            self.writer.line(line, stderr=True)

    def access(self, method: str, path: str, status: int, reason: str) -> None:
        """A uvicorn access line (stdout), or llama.cpp's request line (stderr)."""
        if self.flavor == "llamacpp":
            self.srv("log_server_r", f"request: {method} {path} 127.0.0.1 {status}")
            return
        line = f'{"INFO:":<10}127.0.0.1:0 - "{method} {path} HTTP/1.1" {status} {reason}'
        if self.flavor == "sglang":
            line = f"[{time.strftime('%Y-%m-%d %H:%M:%S')}] {line}"
        self.writer.line(line)

    def srv(self, function: str, message: str) -> None:
        """A llama.cpp server line (stderr): ``srv  llama_server: …``."""
        self.writer.line(f"srv  {function:>12}: {message}", stderr=True)

    def slot(self, function: str, slot: int, task: int, message: str) -> None:
        """A llama.cpp slot line (stderr): ``slot launch_slot_: id  0 | task 5 | …``."""
        self.writer.line(
            f"slot {function:>12}: id {slot:2d} | task {task} | {message}", stderr=True
        )

    def raw(self, text: str) -> None:
        """Lines as they are (tracebacks, C-level messages) on stderr."""
        self.writer.line(text, stderr=True)

    # -- request logs ------------------------------------------------------------------------
    def request_received(self, request_id: str, body: bytes, *, chat: bool) -> None:
        """Log a generation request as vLLM's or SGLang's request logger does (llama.cpp logs
        bodies instead, :meth:`request_bodies`).

        vLLM (``vllm/entrypoints/logger.py``, the prompt by ``%r``, once per prompt, then the
        engine's ``Added request``)::

            INFO 05-01 10:00:41 [logger.py:43] Received request cmpl-5c1e…-0: prompt: '…',
              params: SamplingParams(n=1, …, stop=[], …), prompt_token_ids: None,
              prompt_embeds shape: None, lora_request: None.
            INFO 05-01 10:00:41 [async_llm.py:270] Added request cmpl-5c1e…-0.

        SGLang (its tokenizer manager, the request dataclass with strings by repr)::

            [2026-03-11 13:54:02] Receive: obj=GenerateReqInput(text='…', …)

        Args:
            request_id: the answer's id.
            body: the request's JSON body (already validated).
            chat: a chat completion (its messages go through the chat template first).
        """
        data = json.loads(body)
        prompts = [_chat_prompt(data["messages"])] if chat else _prompts(data["prompt"])
        stop = data.get("stop") or []
        stop = [stop] if isinstance(stop, str) else stop
        max_tokens = data.get("max_completion_tokens") or data.get("max_tokens") or 16
        if self.flavor == "vllm":
            params = (
                f"SamplingParams(n={data.get('n') or 1}, presence_penalty=0.0, "
                f"frequency_penalty=0.0, repetition_penalty=1.0, "
                f"temperature={float(data.get('temperature', 1.0))}, "
                f"top_p={float(data.get('top_p', 1.0))}, top_k=0, min_p=0.0, "
                f"seed={data.get('seed')!r}, stop={stop!r}, stop_token_ids=[], bad_words=[], "
                f"include_stop_str_in_output=False, ignore_eos={bool(data.get('ignore_eos'))}, "
                f"max_tokens={max_tokens}, min_tokens=0, logprobs=None, prompt_logprobs=None, "
                "skip_special_tokens=True, spaces_between_special_tokens=True, "
                "truncate_prompt_tokens=None, structured_outputs=None, extra_args=None)"
            )
            for index, (text, token_ids) in enumerate(prompts):
                rid = f"{request_id}-{index}"
                self.vllm(
                    "logger.py:43",
                    f"Received request {rid}: prompt: {text!r}, params: {params}, "
                    f"prompt_token_ids: {token_ids!r}, prompt_embeds shape: None, "
                    "lora_request: None.",
                )
                self.vllm("async_llm.py:270", f"Added request {rid}.")
        elif self.flavor == "sglang":
            texts: object = prompts[0][0] if len(prompts) == 1 else [p for p, _ in prompts]
            ids = prompts[0][1] if len(prompts) == 1 else None
            sampling = {"max_new_tokens": max_tokens, "stop": stop}
            self.sglang(
                f"Receive: obj=GenerateReqInput(text={texts!r}, input_ids={ids!r}, "
                f"sampling_params={sampling!r}, rid={request_id!r}, return_logprob=False, "
                f"stream={bool(data.get('stream'))}, log_metrics=True)"
            )

    def request_bodies(self, request: bytes, response: bytes) -> None:
        """Log a request's body and its answer's as llama.cpp does with ``--verbose``, after
        its ``request: POST /path … 200`` line (``log_server_request``, debug level)::

            srv  log_server_r: request:  {"messages":[{"role":"user","content":"…"}],…}
            srv  log_server_r: response: {"choices":[…],…}
        """
        self.srv("log_server_r", "request:  " + request.decode("utf-8", "replace"))
        self.srv("log_server_r", "response: " + response.decode("utf-8", "replace"))

    # -- events, as the flavor logs them ---------------------------------------------------------
    def warning(self, message: str) -> None:
        """A line of the fake's own (an injected failure), in the flavor's logger's shape."""
        if self.flavor == "vllm":
            self.vllm("fake.py:1", message, "WARNING")
        elif self.flavor == "sglang":
            self.sglang(message)
        else:
            self.srv("fake", message)

    def uvicorn_started(self, url: str) -> None:
        """uvicorn's start lines (vLLM and SGLang); SGLang's says where it runs."""
        self.uvicorn(f"Started server process [{os.getpid()}]")
        self.uvicorn("Waiting for application startup.")
        self.uvicorn("Application startup complete.")
        if self.flavor == "sglang":
            self.uvicorn(f"Uvicorn running on {url} (Press CTRL+C to quit)")

    def shutdown(self) -> None:
        """The lines of a graceful shutdown (a signal, once the server is ready)."""
        if self.flavor == "llamacpp":
            self.srv("operator()", "operator(): cleaning up before exit...")
            return
        self.uvicorn("Shutting down")
        self.uvicorn("Waiting for application shutdown.")
        self.uvicorn("Application shutdown complete.")
        self.uvicorn(f"Finished server process [{os.getpid()}]")

    def request_started(self, slot: int, task: int) -> None:
        """A generation request starts (llama.cpp logs its slot)."""
        if self.flavor == "llamacpp":
            self.slot("launch_slot_", slot, task, "processing task")

    def request_ended(
        self, request_id: str, *, slot: int, task: int, tokens: int, aborted: bool, idle: bool
    ) -> None:
        """A generation request ends, finished or ``aborted`` by its client going away.

        Args:
            request_id: the answer's id.
            slot: llama.cpp's slot it ran in.
            task: llama.cpp's task number.
            tokens: its prompt and generated tokens.
            aborted: the client went away first.
            idle: no other request is running.
        """
        if self.flavor == "llamacpp":
            if aborted:
                self.srv("cancel_tasks", f"cancel task, id_task = {task}")
            self.slot("release", slot, task, f"stop processing: n_tokens = {tokens}, truncated = 0")
            if idle:
                self.srv("update_slots", "all slots are idle")
        elif aborted:
            if self.flavor == "vllm":
                self.vllm("async_llm.py:420", f"Aborted request {request_id}.")
            else:
                self.sglang(f"Abort request {request_id}")

    def crashing(self, request_id: str, done: int) -> None:
        """The last lines before ``--crash-after`` kills the process."""
        self.warning(f"request {request_id}: crashing after {done} tokens")
        if self.flavor == "vllm":
            self.vllm("core.py:634", "EngineCore encountered a fatal error.", "ERROR")
            self.raw("vllm.v1.engine.exceptions.EngineDeadError: EngineCore encountered an issue.")

    def hanging(self, request_id: str, done: int) -> None:
        """The line logged when ``--hang-after`` stalls a request."""
        self.warning(f"request {request_id}: hanging after {done} tokens")


def _prompts(prompt: object) -> list[tuple[str | None, list[int] | None]]:
    """A completion's prompts as vLLM logs them: (text, None) or (None, token ids) each."""
    if isinstance(prompt, str):
        return [(prompt, None)]
    assert isinstance(prompt, list)
    if all(isinstance(p, str) for p in prompt):
        return [(p, None) for p in prompt]
    if all(isinstance(t, int) for t in prompt):
        return [(None, prompt)]
    return [(None, p) for p in prompt]


def _chat_prompt(messages: list[dict[str, object]]) -> tuple[str, None]:
    """The prompt a Llama 3 chat template makes of ``messages``, as the servers log it."""
    parts = ["<|begin_of_text|>"]
    for message in messages:
        content = message.get("content")
        if isinstance(content, list):
            content = "".join(
                str(part.get("text", "")) for part in content if isinstance(part, dict)
            )
        parts.append(
            f"<|start_header_id|>{message['role']}<|end_header_id|>\n\n{content or ''}<|eot_id|>"
        )
    parts.append("<|start_header_id|>assistant<|end_header_id|>\n\n")
    return "".join(parts), None
