"""How the comfyui backend's ``run`` reaches ComfyUI and follows a prompt there.

:class:`RunSettings` holds what the environment may change (:meth:`RunSettings.from_env`, given
it by the backend's ``make_backend``); :data:`CALL_TIMEOUT` bounds each of ``run``'s small
control calls, and :func:`api_url` names a route of ComfyUI's HTTP API.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import attrs
import httpx

log = logging.getLogger("backends.comfyui")

DEFAULT_TIMEOUT = 600.0
DEFAULT_MAX_OUTPUT_BYTES = 32 * 1024 * 1024
CALL_TIMEOUT = httpx.Timeout(10.0)
"""Each small control call (queue, history, interrupt); image downloads use the client's own."""


def api_url(base: str, path: str) -> str:
    """The URL of ``path`` on the ComfyUI at ``base`` (the model server URL)."""
    return base.rstrip("/") + path


@attrs.frozen(kw_only=True)
class RunSettings:
    """How ``run`` follows a prompt.

    Attributes:
        timeout: seconds from submission to the answer before giving up (504) and withdrawing
            the prompt.
        poll_interval: the first interval between history polls.
        max_poll_interval: the interval grows (x1.25 per poll) up to this.
        max_output_bytes: the most image bytes one answer may carry (before base64).
        cleanup_timeout: seconds the withdrawal of an abandoned prompt may take.
        use_websocket: follow ``/ws`` events to learn of the end without waiting for a poll.
    """

    timeout: float = DEFAULT_TIMEOUT
    poll_interval: float = 0.1
    max_poll_interval: float = 0.25
    max_output_bytes: int = DEFAULT_MAX_OUTPUT_BYTES
    cleanup_timeout: float = 5.0
    use_websocket: bool = True

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> RunSettings:
        """Settings from ``COMFY_PROMPT_TIMEOUT``, ``COMFY_MAX_OUTPUT_BYTES``,
        ``COMFY_USE_WEBSOCKET``; a malformed value keeps the default (and is logged)."""
        settings = cls()
        changes: dict[str, Any] = {}
        for variable, field, convert in (
            ("COMFY_PROMPT_TIMEOUT", "timeout", float),
            ("COMFY_MAX_OUTPUT_BYTES", "max_output_bytes", int),
        ):
            text = env.get(variable)
            if not text:
                continue
            try:
                value = convert(text)
            except ValueError:
                value = 0
            if value > 0:
                changes[field] = value
            else:
                log.warning("ignoring %s=%r: not a positive number", variable, text)
        if env.get("COMFY_USE_WEBSOCKET", "").strip().lower() in {"0", "false", "no"}:
            changes["use_websocket"] = False
        return attrs.evolve(settings, **changes)
