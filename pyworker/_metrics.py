"""Prometheus metrics: what the worker counts, and ``GET /metrics``.

The hot path only adds to plain integers and floats (:class:`RequestMetrics`: a dict lookup and
a bisect per request); :class:`WorkerCollector` turns them, and the state the worker already
keeps (lifecycle, load totals, the autoscaler's counters), into metric families when Prometheus
scrapes. ``prometheus-client`` formats the exposition; nothing here registers in its global
registry, so several workers can share a process (the tests do).

Metrics, all prefixed ``pyworker_``:

==========================================  =========  ==========================================
name                                        type       what
==========================================  =========  ==========================================
``state{state}``                            gauge      1 for the current lifecycle state, else 0
``requests_total{route,status}``            counter    proxied requests by the status they got
                                                       (499: the client left first)
``requests_in_flight``                      gauge      admitted requests and open sessions
``workload_pending``                        gauge      their workload
``workload_total{kind}``                    counter    work done: ``estimated`` (the backend's
                                                       estimate) and ``actual`` (what the model
                                                       server reported, else the estimate)
``max_perf``                                gauge      the measured capacity (workload/s)
``request_duration_seconds{route}``         histogram  requests that reached the model server,
                                                       from arrival to the end of the answer
``time_to_first_byte_seconds{route}``       histogram  from arrival to the answer's first byte
``reports_total{address,outcome}``          counter    load report POSTs: ``accepted``,
                                                       ``refused`` (4xx) or ``failed``
``records_pending``                         gauge      finished-request records not yet
                                                       accepted by the autoscaler
``autoscaler_failing_seconds{delivery}``    gauge      how long ``reports`` or ``records`` POSTs
                                                       have failed (0 while accepted)
``event_loop_lag_seconds``                  histogram  how late a 0.25 s sleep wakes up
``model_load_seconds``                      gauge      how long the current load took (0 until
                                                       loaded)
==========================================  =========  ==========================================
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Iterator, Mapping, Sized

import attrs
import trio
from prometheus_client import make_asgi_app
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector, CollectorRegistry

from ._autoscaler import Autoscaler
from ._lifecycle import State
from ._load import LoadTracker
from ._machine import Lifecycle
from ._relay import send_json
from ._typing import ASGIApp, Receive, Scope, Send

DURATION_BUCKETS = (
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
    300.0,
)
"""Seconds: from a cached answer to a long generation."""
LAG_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0)
"""Seconds: a healthy loop is late by well under a millisecond."""
LAG_INTERVAL = 0.25
"""Seconds between two lag samples."""
CLIENT_LEFT = 499
"""The status counted for a request whose client left before its answer was complete (as
nginx logs it)."""


@attrs.define(eq=False)
class Histogram:
    """Counts of observations per bucket (sans-IO; cumulated only when exposed)."""

    bounds: tuple[float, ...]
    counts: list[int] = attrs.field(init=False)
    total: float = 0.0
    count: int = 0

    def __attrs_post_init__(self) -> None:
        self.counts = [0] * (len(self.bounds) + 1)  # the last: above every bound (+Inf)

    def observe(self, value: float) -> None:
        """Count one observation."""
        self.counts[bisect.bisect_left(self.bounds, value)] += 1
        self.total += value
        self.count += 1

    def buckets(self) -> list[tuple[str, float]]:
        """Prometheus' cumulative ``(le, count)`` pairs, ``+Inf`` last."""
        running = 0
        out = []
        for bound, count in zip((*self.bounds, math.inf), self.counts, strict=True):
            running += count
            out.append(("+Inf" if bound == math.inf else repr(bound), float(running)))
        return out


@attrs.define(eq=False)
class RequestMetrics:
    """What the proxy counts per request (plain numbers: cheap on the hot path)."""

    requests: dict[tuple[str, int], int] = attrs.field(factory=dict)
    """Requests by (route, status)."""
    durations: dict[str, Histogram] = attrs.field(factory=dict)
    first_bytes: dict[str, Histogram] = attrs.field(factory=dict)
    lag: Histogram = attrs.field(factory=lambda: Histogram(LAG_BUCKETS))

    def answered(self, route: str, status: int) -> None:
        """Count a request by the status it got."""
        key = (route, status)
        self.requests[key] = self.requests.get(key, 0) + 1

    def timed(self, route: str, duration: float, first_byte: float | None) -> None:
        """Time a request that reached the model server (``first_byte`` None: no byte sent)."""
        histogram = self.durations.get(route)
        if histogram is None:
            histogram = self.durations[route] = Histogram(DURATION_BUCKETS)
            self.first_bytes[route] = Histogram(DURATION_BUCKETS)
        histogram.observe(duration)
        if first_byte is not None:
            self.first_bytes[route].observe(first_byte)

    async def probe_lag(self) -> None:
        """Sample the event loop's lag forever (the ``lag_probe`` service)."""
        while True:
            asked = trio.current_time() + LAG_INTERVAL
            await trio.sleep_until(asked)
            self.lag.observe(max(trio.current_time() - asked, 0.0))


@attrs.define(eq=False, kw_only=True)
class WorkerCollector(Collector):
    """Builds every metric family at scrape time from the worker's own state.

    Args:
        metrics: the proxy's counters.
        lifecycle: state, capacity, load time.
        tracker: requests in flight and the load totals.
        deliveries: the autoscaler's clients by what they deliver (``reports``, ``records``).
        records_pending: finished-request records waiting for the autoscaler.
    """

    metrics: RequestMetrics
    lifecycle: Lifecycle
    tracker: LoadTracker
    deliveries: Mapping[str, Autoscaler]
    records_pending: Sized

    def collect(self) -> Iterator[Metric]:
        lifecycle, tracker = self.lifecycle, self.tracker
        state = GaugeMetricFamily(
            "pyworker_state", "1 for the worker's current lifecycle state", labels=["state"]
        )
        for each in State:
            state.add_metric([each.value], 1.0 if each is lifecycle.current else 0.0)
        yield state

        requests = CounterMetricFamily(
            "pyworker_requests",
            "Proxied requests by route and the status they got (499: the client left)",
            labels=["route", "status"],
        )
        for (route, status), count in sorted(self.metrics.requests.items()):
            requests.add_metric([route, str(status)], count)
        yield requests

        yield GaugeMetricFamily(
            "pyworker_requests_in_flight",
            "Admitted requests not yet answered, and open sessions",
            value=tracker.in_flight,
        )
        yield GaugeMetricFamily(
            "pyworker_workload_pending",
            "Workload of the requests in flight",
            value=tracker.pending_workload,
        )
        totals = tracker.totals(trio.current_time())
        workload = CounterMetricFamily(
            "pyworker_workload",
            "Work done: the backend's estimate, and what the model server reported (else the "
            "estimate)",
            labels=["kind"],
        )
        workload.add_metric(["estimated"], totals.completed_estimated)
        workload.add_metric(["actual"], totals.completed)
        yield workload
        yield GaugeMetricFamily(
            "pyworker_max_perf",
            "The measured capacity, workload per second",
            value=lifecycle.max_perf,
        )
        yield GaugeMetricFamily(
            "pyworker_model_load_seconds",
            "Seconds the current model load took (0 until loaded)",
            value=lifecycle.loadtime,
        )
        yield _histograms(
            "pyworker_request_duration_seconds",
            "Requests that reached the model server, from arrival to the end of the answer",
            self.metrics.durations,
        )
        yield _histograms(
            "pyworker_time_to_first_byte_seconds",
            "From a request's arrival to the first byte of its answer",
            self.metrics.first_bytes,
        )
        reports = CounterMetricFamily(
            "pyworker_reports",
            "Load report POSTs to the autoscaler by address and outcome",
            labels=["address", "outcome"],
        )
        for (address, outcome), count in sorted(self.deliveries["reports"].attempts.items()):
            reports.add_metric([address, outcome], count)
        yield reports
        yield GaugeMetricFamily(
            "pyworker_records_pending",
            "Finished-request records not yet accepted by the autoscaler",
            value=len(self.records_pending),
        )
        failing = GaugeMetricFamily(
            "pyworker_autoscaler_failing_seconds",
            "How long POSTs to the autoscaler have failed, by what they deliver (0: accepted)",
            labels=["delivery"],
        )
        for name, delivery in sorted(self.deliveries.items()):
            failing.add_metric([name], delivery.health().failing_for or 0.0)
        yield failing
        lag = self.metrics.lag
        family = HistogramMetricFamily(
            "pyworker_event_loop_lag_seconds",
            f"How late a {LAG_INTERVAL:g} s sleep wakes up: the event loop's responsiveness",
        )
        family.add_metric([], lag.buckets(), sum_value=lag.total)
        yield family


def _histograms(name: str, documentation: str, by_route: Mapping[str, Histogram]) -> Metric:
    family = HistogramMetricFamily(name, documentation, labels=["route"])
    for route, histogram in sorted(by_route.items()):
        family.add_metric([route], histogram.buckets(), sum_value=histogram.total)
    return family


def registry_for(collector: WorkerCollector) -> CollectorRegistry:
    """A registry of its own holding ``collector`` (never the process-wide default)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(collector)
    return registry


@attrs.define(eq=False)
class MetricsRoute:
    """An ASGI app serving ``GET /metrics`` from ``registry`` (Prometheus' text format, or
    OpenMetrics when asked for, compressed when accepted), and everything else by ``fallback``
    (None: 404, and the lifespan protocol acknowledged)."""

    registry: CollectorRegistry
    fallback: ASGIApp | None = None
    _exposition: ASGIApp = attrs.field(init=False)

    def __attrs_post_init__(self) -> None:
        self._exposition = make_asgi_app(self.registry)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"] == "/metrics":
            if scope["method"] not in ("GET", "HEAD"):
                await send_json(send, 405, {"error": "method not allowed"}, [(b"allow", b"GET")])
                return
            await self._exposition(scope, receive, send)
        elif self.fallback is not None:
            await self.fallback(scope, receive, send)
        elif scope["type"] == "lifespan":
            while (await receive())["type"] != "lifespan.shutdown":
                await send({"type": "lifespan.startup.complete"})
            await send({"type": "lifespan.shutdown.complete"})
        elif scope["type"] == "http":
            await send_json(send, 404, {"error": "no such route", "routes": ["/metrics"]})
