"""A kit for fake model servers: HTTP serving, a capacity model, knobs, logs, process life.

Fakes imitate a model server's HTTP API, log lines and performance closely enough to test and
benchmark the worker without a GPU. Each fake is a module runnable with ``python -m``, built
from these parts:

* :class:`HTTPServer` with a :data:`Handler` returning :class:`Response` or
  :class:`StreamResponse` (trio + h11, keep-alive, chunked streams, client-disconnect
  cancellation);
* :class:`CapacityModel`, whose throughput truth is ``min(capacity, max_parallel *
  token_rate)``;
* :func:`knob_parser` and :class:`Knobs` for the shared command-line knobs, and argparse
  types (:func:`positive`, :func:`non_negative`, :func:`fraction`, :func:`count`,
  :func:`at_least_one`) for a fake's own;
* :class:`LogWriter` for ``2026-11-25T16:00:00.123Z INFO message`` log lines;
* :func:`run_fake` / :func:`serve_fake` for loading, listening, the ready line and signals.
"""

from ._capacity import CapacityModel as CapacityModel
from ._capacity import Job as Job
from ._http import DEFAULT_MAX_BODY_SIZE as DEFAULT_MAX_BODY_SIZE
from ._http import Handler as Handler
from ._http import HTTPServer as HTTPServer
from ._http import Request as Request
from ._http import Response as Response
from ._http import StreamResponse as StreamResponse
from ._knobs import Knobs as Knobs
from ._knobs import at_least_one as at_least_one
from ._knobs import count as count
from ._knobs import fraction as fraction
from ._knobs import knob_parser as knob_parser
from ._knobs import non_negative as non_negative
from ._knobs import positive as positive
from ._logfile import LogWriter as LogWriter
from ._process import Startup as Startup
from ._process import run_fake as run_fake
from ._process import serve_fake as serve_fake
from ._process import write_port_file as write_port_file
from ._stats import Stats as Stats
