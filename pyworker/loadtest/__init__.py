"""``python -m pyworker.loadtest``: load-test an endpoint group, or the whole stack locally.

Against Vast (``-k ACCOUNT_KEY -e GROUP``) or a router of your own (``--router URL -e GROUP``),
or against a stack it starts on this machine (``-l``: the backend's demo model server, a
stand-in router and autoscaler, a worker). Requests are the backend's own benchmark payloads,
arriving at ``--rps`` whatever the answers do (open loop), each routed and sent as Vast's client
does (:mod:`pyworker.devtools`'s routing: polls while the router says wait, re-routes from full,
failing or unreachable workers). Progress shows live; at the end a summary (``--json``, and
``--plot`` for a PNG), and the exit status says whether the error rate stayed within
``--max-error-rate``.

The parts, one concept each: :mod:`._requests` (payloads and their workload), :mod:`._driver`
(arrivals, the concurrency cap, each request's phases), :mod:`._tally` (outcomes and running
counts), :mod:`._display` (live progress), :mod:`._summary` (the final figures), :mod:`._plot`,
:mod:`._local` (the local stack) and :mod:`._cli`. The worker never imports this package.
"""

from __future__ import annotations

from ._cli import main as main

__all__ = ["main"]
