"""Which OpenAI-compatible server runs behind the worker, and what else the environment sets.

``OPENAI_SERVER`` picks the server (:data:`SERVERS`); it decides the port the server listens on
by default and which flavour of the fake stands in for it in the demo. The two default token
budgets are what a request that sets no limit is charged. The backend's module docstring
describes each variable.
"""

from __future__ import annotations

from collections.abc import Mapping

import attrs

from pyworker import env_int

SERVERS = ("auto", "vllm", "sglang", "llamacpp", "llama-cpp-python")
"""The values of ``OPENAI_SERVER``."""

DEFAULT_PORTS = {
    "auto": 8000,
    "vllm": 8000,
    "sglang": 30000,
    "llamacpp": 8080,
    "llama-cpp-python": 8000,
}
FAKE_FLAVORS = {"auto": "vllm", "vllm": "vllm", "sglang": "sglang", "llamacpp": "llamacpp"}


@attrs.frozen(kw_only=True)
class Settings:
    """What the environment configures (see :mod:`backends.openai`).

    Attributes:
        server: which model server runs behind the worker, one of :data:`SERVERS`.
        default_max_tokens: tokens assumed for a completion without ``max_tokens``.
        default_chat_max_tokens: tokens assumed for a chat completion without a limit.
    """

    server: str = attrs.field(default="auto", validator=attrs.validators.in_(SERVERS))
    default_max_tokens: int = attrs.field(default=16, validator=attrs.validators.ge(1))
    default_chat_max_tokens: int = attrs.field(default=256, validator=attrs.validators.ge(1))

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> Settings:
        """Read the settings from ``env``.

        Raises:
            ValueError: a variable has an impossible value (the message names it).
        """
        server = env.get("OPENAI_SERVER", "").strip().lower() or "auto"
        if server not in SERVERS:
            raise ValueError(f"OPENAI_SERVER must be one of {', '.join(SERVERS)}, not {server!r}")
        return cls(
            server=server,
            default_max_tokens=env_int(env, "OPENAI_DEFAULT_MAX_TOKENS", 16),
            default_chat_max_tokens=env_int(env, "OPENAI_DEFAULT_CHAT_MAX_TOKENS", 256),
        )


DEFAULT_SETTINGS = Settings()
