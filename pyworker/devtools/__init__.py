"""Development tools: a stand-in for Vast's router, autoscaler and console, a client, the demo.

None of this runs on a Vast instance; it is for trying the worker locally, for tests and for
benchmarks. The worker itself never imports it.
"""

from ._signer import RouterSigner as RouterSigner
from ._standin import EndpointGroup as EndpointGroup
from ._standin import RouteCall as RouteCall
from ._standin import StandIn as StandIn
from ._standin import describe_deletions as describe_deletions
from ._standin import describe_report as describe_report
from ._standin import in_order as in_order
from ._standin import round_robin as round_robin
from ._standin import serve_standin as serve_standin
from ._tls import IssuedCertificate as IssuedCertificate
from ._tls import LocalCA as LocalCA
from .client import Answer as Answer
from .client import RouteError as RouteError
from .client import ask_router as ask_router
from .client import send as send

__all__ = [
    "Answer",
    "EndpointGroup",
    "IssuedCertificate",
    "LocalCA",
    "RouteCall",
    "RouteError",
    "RouterSigner",
    "StandIn",
    "ask_router",
    "describe_deletions",
    "describe_report",
    "in_order",
    "round_robin",
    "send",
    "serve_standin",
]

# Re-exported names belong to this package, as trio's do (see tests/test_exports.py).
for _name in __all__:
    globals()[_name].__module__ = __name__
del _name
