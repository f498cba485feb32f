"""The fake OpenAI-compatible servers' log lines, worded and placed as each flavor's are.

* vLLM: its logger's ``INFO 05-01 10:00:00 [api_server.py:1043] …`` lines on stdout, uvicorn's
  lifecycle lines (``INFO:     Application startup complete.``) on stderr and its access lines
  on stdout;
* SGLang: ``[2026-03-11 13:53:23 TP0] …`` lines on stderr, uvicorn's lines with the same
  prefix, access lines on stdout;
* llama.cpp: ``srv  <function>: …`` and ``slot <function>: id  0 | task 5 | …`` lines, and
  the loader's bare lines, all on stderr.

With ``--log`` both streams are the log file (as ``server >log 2>&1``), in the order written.
"""

from __future__ import annotations

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
