"""Development tools: a stand-in for Vast's router and autoscaler, a client, the local demo.

None of this runs on a Vast instance; it is for trying the worker locally, for tests and for
benchmarks. The worker itself never imports it.
"""

from ._signer import RouterSigner as RouterSigner
from ._standin import StandIn as StandIn
from ._standin import describe_report as describe_report
from ._standin import serve_standin as serve_standin
from .client import Answer as Answer
from .client import RouteError as RouteError
from .client import ask_router as ask_router
from .client import send as send

__all__ = [
    "Answer",
    "RouteError",
    "RouterSigner",
    "StandIn",
    "ask_router",
    "describe_report",
    "send",
    "serve_standin",
]

# Re-exported names belong to this package, as trio's do (see tests/test_exports.py).
for _name in __all__:
    globals()[_name].__module__ = __name__
del _name
