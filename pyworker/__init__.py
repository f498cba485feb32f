"""pyworker: the worker in front of a model server on a GPU instance.

The public API for writing backends and embedding the worker. Everything else lives in private
modules and may change.
"""

from ._backend import Backend as Backend
from ._backend import DemoServer as DemoServer
from ._backend import Endpoint as Endpoint
from ._backend import Job as Job
from ._backend import LogAction as LogAction
from ._backend import LogRule as LogRule
from ._backend import Reply as Reply
from ._backend import RunContext as RunContext
from ._backend import UnknownBackendError as UnknownBackendError
from ._backend import json_body as json_body
from ._backend import load_backend as load_backend
from ._config import ConfigError as ConfigError
from ._config import WorkerConfig as WorkerConfig
from ._lifecycle import Lifecycle as Lifecycle
from ._lifecycle import State as State
from ._lifecycle import Trigger as Trigger
from ._payload import Fields as Fields
from ._payload import PayloadError as PayloadError
from ._payload import json_type_name as json_type_name
from ._tokens import estimate_tokens as estimate_tokens
from ._worker import Worker as Worker
from ._worker import WorkerInfo as WorkerInfo

__version__ = "0.1.0"
