"""pyworker: the worker in front of a model server on a GPU instance.

The public API, in two weights:

- the backend API (``Backend``, ``Endpoint``, ``Job``, ``Fields``, ...), light to import: a
  backend or a fake model server that imports it pays for attrs and little else;
- the worker itself (``Worker``, ``Lifecycle``, ``State``, ...), loaded on first use, with
  its server stack (Trio, Hypercorn, Quart, httpx).

Everything else lives in private modules and may change; development tools (a stand-in router,
a client, the demo) are in :mod:`pyworker.devtools`.
"""

from __future__ import annotations

import importlib as _importlib
import typing as _typing

from ._backend import Backend as Backend
from ._backend import DemoServer as DemoServer
from ._backend import Endpoint as Endpoint
from ._backend import Job as Job
from ._backend import LogAction as LogAction
from ._backend import LogRule as LogRule
from ._backend import Observer as Observer
from ._backend import Reply as Reply
from ._backend import RunContext as RunContext
from ._backend import json_body as json_body
from ._config import ConfigError as ConfigError
from ._config import WorkerConfig as WorkerConfig
from ._config import env_int as env_int
from ._observe import UsageObserver as UsageObserver
from ._payload import Fields as Fields
from ._payload import PayloadError as PayloadError
from ._payload import json_type_name as json_type_name
from ._registry import UnknownBackendError as UnknownBackendError
from ._registry import available_backends as available_backends
from ._registry import load_backend as load_backend
from ._tokens import estimate_tokens as estimate_tokens
from ._version import __version__ as __version__

if _typing.TYPE_CHECKING:
    from ._lifecycle import State as State
    from ._lifecycle import Trigger as Trigger
    from ._machine import Lifecycle as Lifecycle
    from ._machine import StateChange as StateChange
    from ._worker import Worker as Worker
    from ._worker import WorkerInfo as WorkerInfo

_LAZY = {
    "Lifecycle": "._machine",
    "State": "._lifecycle",
    "StateChange": "._machine",
    "Trigger": "._lifecycle",
    "Worker": "._worker",
    "WorkerInfo": "._worker",
}
"""Names loaded on first use, and the modules they come from."""

__all__ = [
    "Backend",
    "ConfigError",
    "DemoServer",
    "Endpoint",
    "Fields",
    "Job",
    "Lifecycle",
    "LogAction",
    "LogRule",
    "Observer",
    "PayloadError",
    "Reply",
    "RunContext",
    "State",
    "StateChange",
    "Trigger",
    "UnknownBackendError",
    "UsageObserver",
    "Worker",
    "WorkerConfig",
    "WorkerInfo",
    "available_backends",
    "env_int",
    "estimate_tokens",
    "json_body",
    "json_type_name",
    "load_backend",
]


def __getattr__(name: str) -> object:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(_importlib.import_module(module, __name__), name)
    value.__module__ = __name__
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})


# Re-exported names belong to this package, as trio's do (see tests/test_exports.py).
for _name in __all__:
    if _name not in _LAZY:
        globals()[_name].__module__ = __name__
del _name
