"""A kit for fake model servers: HTTP serving, a capacity model, knobs, faults, logs, process life.

Fakes imitate a model server's HTTP API, log lines and performance closely enough to test and
benchmark the worker without a GPU. Each fake is a module runnable with ``python -m``, built
from these parts:

* :class:`HTTPServer` with a :data:`Handler` returning :class:`Response` or
  :class:`StreamResponse` (trio + h11, keep-alive, chunked streams, client-disconnect
  cancellation); :func:`serve_asgi` for a server with websockets (hypercorn);
* :class:`CapacityModel`, whose throughput truth is ``min(capacity, max_parallel *
  token_rate)``; :class:`Stats`, the counters of a fake's ``GET /stats``; :func:`word_table`,
  the seeded words of generated text;
* :func:`knob_parser` and :class:`Knobs` for the command-line knobs every fake shares, and
  argparse types (:func:`positive`, :func:`non_negative`, :func:`fraction`, :func:`count`,
  :func:`at_least_one`) for a fake's own;
* :class:`Faults`: whether a request fails (``--error-rate``), hangs (``--hang-after``) or
  kills the process (``--crash-after``), and the health route's delay (``--slow-health``);
* :class:`LogWriter` for the log, in a server's own line format (:func:`stamped`,
  :func:`bare`, or the fake's);
* :func:`run_process` / :func:`serve_fake` for a :class:`Fake`'s life: start-up
  (:class:`Launch`, :exc:`StartupFailed`), listening, the ready line, signals;
  :func:`run_fake` for the simplest fakes (:class:`PlainFake`, worded by :class:`Startup`).
"""

from ._asgi import ASGIApp as ASGIApp
from ._asgi import Message as Message
from ._asgi import Receive as Receive
from ._asgi import Scope as Scope
from ._asgi import Send as Send
from ._asgi import serve_asgi as serve_asgi
from ._capacity import CapacityModel as CapacityModel
from ._capacity import Job as Job
from ._faults import FaultLines as FaultLines
from ._faults import Faults as Faults
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
from ._logfile import LineFormat as LineFormat
from ._logfile import LogWriter as LogWriter
from ._logfile import bare as bare
from ._logfile import stamped as stamped
from ._logfile import utc_timestamp as utc_timestamp
from ._process import BindError as BindError
from ._process import Fake as Fake
from ._process import Launch as Launch
from ._process import PlainFake as PlainFake
from ._process import Startup as Startup
from ._process import StartupFailed as StartupFailed
from ._process import run_fake as run_fake
from ._process import run_process as run_process
from ._process import serve_fake as serve_fake
from ._process import write_port_file as write_port_file
from ._stats import Stats as Stats
from ._text import TABLE_SIZE as TABLE_SIZE
from ._text import VOCABULARY as VOCABULARY
from ._text import word_table as word_table
