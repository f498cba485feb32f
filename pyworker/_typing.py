"""ASGI protocol types, declared once (as hypercorn's ``typing`` module does).

Loosely typed on purpose: Quart and Hypercorn each declare their own precise, mutually
incompatible versions, and the worker only needs the shapes below.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[..., Awaitable[None]]
Headers = list[tuple[bytes, bytes]]
