"""Development tools: a stand-in for Vast's router, autoscaler and console, a client (and the
routing it shares with the load tester, :mod:`pyworker.loadtest`), the demo.

None of this runs on a Vast instance; it is for trying the worker locally, for tests and for
benchmarks. The worker itself never imports it.
"""

from ._console import ConsoleError as ConsoleError
from ._console import endpoint_key as endpoint_key
from ._console import vast_tls_context as vast_tls_context
from ._describe import describe_deletions as describe_deletions
from ._describe import describe_report as describe_report
from ._route_records import Answer as Answer
from ._route_records import CallWatcher as CallWatcher
from ._route_records import Patience as Patience
from ._route_records import Retry as Retry
from ._route_records import RouteError as RouteError
from ._route_records import Target as Target
from ._route_records import WorkerError as WorkerError
from ._routing import ask_router as ask_router
from ._routing import call_endpoint as call_endpoint
from ._routing import find_worker as find_worker
from ._signer import RouterSigner as RouterSigner
from ._standin import EndpointGroup as EndpointGroup
from ._standin import RouteCall as RouteCall
from ._standin import StandIn as StandIn
from ._standin import in_order as in_order
from ._standin import round_robin as round_robin
from ._standin_app import serve_standin as serve_standin
from ._tls import IssuedCertificate as IssuedCertificate
from ._tls import LocalCA as LocalCA
from .client import send as send

__all__ = [
    "Answer",
    "CallWatcher",
    "ConsoleError",
    "EndpointGroup",
    "IssuedCertificate",
    "LocalCA",
    "Patience",
    "Retry",
    "RouteCall",
    "RouteError",
    "RouterSigner",
    "StandIn",
    "Target",
    "WorkerError",
    "ask_router",
    "call_endpoint",
    "describe_deletions",
    "describe_report",
    "endpoint_key",
    "find_worker",
    "in_order",
    "round_robin",
    "send",
    "serve_standin",
    "vast_tls_context",
]

# Re-exported names belong to this package, as trio's do (see tests/test_exports.py).
for _name in __all__:
    globals()[_name].__module__ = __name__
del _name
