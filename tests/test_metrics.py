"""``GET /metrics``: scraped from a worker in front of a real model server process, parsed with
Prometheus' own parser; and what ``GET /status`` tells beside it (the work done, the
autoscaler's outages)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import trio
from harness import Stack, eventually, ready_stack
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from pyworker._metrics import Histogram

GUARD = 30


def prompt(tokens: int) -> dict[str, object]:
    return {"prompt": "hi", "max_response_tokens": tokens}


async def scrape(stack: Stack, url: str | None = None) -> dict[str, list[Sample]]:
    """Every sample of the worker's ``/metrics``, by metric family name."""
    response = await stack.http.get(url or stack.info.metrics_url)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    return {family.name: family.samples for family in text_string_to_metric_families(response.text)}


def value(samples: list[Sample], name: str, **labels: str) -> float:
    found = [s.value for s in samples if s.name == name and s.labels == labels]
    assert len(found) == 1, (name, labels, samples)
    return found[0]


def test_histogram_buckets_are_cumulative() -> None:
    histogram = Histogram((0.1, 1.0))
    for seconds in (0.05, 0.1, 0.5, 7.0):
        histogram.observe(seconds)
    assert histogram.buckets() == [("0.1", 2.0), ("1.0", 3.0), ("+Inf", 4.0)]
    assert (histogram.count, histogram.total) == (4, 7.65)


async def test_metrics_describe_the_worker(nursery: trio.Nursery, tmp_path: Path) -> None:
    with trio.fail_after(GUARD):
        stack = await ready_stack(nursery, tmp_path, max_perf=123.0)
        assert stack.info.metrics_url == stack.url + "/metrics"
        for _ in range(2):
            assert (await stack.post("/generate", prompt(4))).status_code == 200
        async with stack.http.stream(
            "POST", stack.url + "/generate_stream", json=stack.envelope(prompt(4))
        ) as streamed:
            assert streamed.status_code == 200
            await streamed.aread()
        bad = await stack.post("/generate", {"prompt": 5})
        assert bad.status_code == 422
        unsigned = await stack.http.post(stack.url + "/generate", json={"payload": prompt(1)})
        assert unsigned.status_code == 422  # no auth_data at all
        # A report reaches the stand-in, and the lag probe has sampled a few times.
        await eventually(lambda: stack.standin.reports, what="a report")
        await trio.sleep(0.6)

        metrics = await scrape(stack)  # no signature needed
        state = metrics["pyworker_state"]
        assert value(state, "pyworker_state", state="ready") == 1
        assert sum(s.value for s in state) == 1
        requests = metrics["pyworker_requests"]
        assert value(requests, "pyworker_requests_total", route="/generate", status="200") == 2
        assert value(requests, "pyworker_requests_total", route="/generate", status="422") == 2
        assert (
            value(requests, "pyworker_requests_total", route="/generate_stream", status="200") == 1
        )
        assert value(metrics["pyworker_requests_in_flight"], "pyworker_requests_in_flight") == 0
        assert value(metrics["pyworker_workload_pending"], "pyworker_workload_pending") == 0
        workload = metrics["pyworker_workload"]
        estimated = value(workload, "pyworker_workload_total", kind="estimated")
        assert estimated > 0
        assert value(workload, "pyworker_workload_total", kind="actual") > 0
        assert value(metrics["pyworker_max_perf"], "pyworker_max_perf") == 123.0
        assert value(metrics["pyworker_model_load_seconds"], "pyworker_model_load_seconds") > 0
        durations = metrics["pyworker_request_duration_seconds"]
        count = "pyworker_request_duration_seconds_count"
        assert value(durations, count, route="/generate") == 2
        assert value(durations, count, route="/generate_stream") == 1
        first = metrics["pyworker_time_to_first_byte_seconds"]
        assert value(first, "pyworker_time_to_first_byte_seconds_count", route="/generate") == 2
        reports = metrics["pyworker_reports"]
        accepted = value(
            reports, "pyworker_reports_total", address=stack.standin_url, outcome="accepted"
        )
        assert accepted >= 1
        lag = metrics["pyworker_event_loop_lag_seconds"]
        assert value(lag, "pyworker_event_loop_lag_seconds_count") >= 2

        # /status says the same of the work done.
        status = await stack.status()
        assert status["workload_done"]["estimated"] == estimated


async def test_a_client_that_leaves_is_counted_as_499(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    with trio.fail_after(GUARD):
        stack = await ready_stack(nursery, tmp_path, "--token-rate", "10")
        with trio.move_on_after(0.3):
            await stack.post("/generate", prompt(50))  # 5 s of work: the client gives up
        metrics = await eventually(lambda: _with_499(stack), what="the abandoned request counted")
        assert value(metrics, "pyworker_requests_total", route="/generate", status="499") == 1


async def _with_499(stack: Stack) -> list[Sample] | None:
    requests = (await scrape(stack))["pyworker_requests"]
    return requests if any(s.labels.get("status") == "499" for s in requests) else None


async def test_metrics_on_a_port_of_their_own(nursery: trio.Nursery, tmp_path: Path) -> None:
    with trio.fail_after(GUARD):
        stack = await ready_stack(nursery, tmp_path, metrics_port=0)
        assert not stack.info.metrics_url.startswith(stack.url)
        metrics = await scrape(stack)
        assert value(metrics["pyworker_state"], "pyworker_state", state="ready") == 1
        # Not on the public port then, and nothing else on the metrics port.
        assert (await stack.http.get(stack.url + "/metrics")).status_code == 404
        other = stack.info.metrics_url.removesuffix("/metrics") + "/status"
        assert (await stack.http.get(other)).status_code == 404
        posted = await stack.http.post(stack.info.metrics_url)
        assert posted.status_code == 405
        # OpenMetrics when asked for.
        response = await stack.http.get(
            stack.info.metrics_url, headers={"accept": "application/openmetrics-text"}
        )
        assert response.headers["content-type"].startswith("application/openmetrics-text")
        assert response.text.rstrip().endswith("# EOF")


async def test_status_tells_an_autoscaler_outage_and_what_waits_for_it(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    with trio.fail_after(GUARD):
        stack = await ready_stack(nursery, tmp_path)
        status = await stack.status()
        assert status["autoscaler"]["reports"]["addresses"] == 1
        stack.standin.report_status = stack.standin.delete_status = 503
        assert (await stack.post("/generate", prompt(2))).status_code == 200

        async def outage() -> dict[str, Any] | None:
            status = await stack.status()
            both = status["autoscaler"].values()
            return status if not any(each["ok"] for each in both) else None

        status = await eventually(outage, what="both deliveries failing in /status")
        assert status["records_pending"] >= 1  # the request's record waits for the autoscaler
        for each in status["autoscaler"].values():
            assert each["failing_for"] >= 0
            assert "HTTP 503" in each["last_error"]
        metrics = await scrape(stack)
        assert value(metrics["pyworker_records_pending"], "pyworker_records_pending") >= 1
        failing = metrics["pyworker_autoscaler_failing_seconds"]
        for delivery in ("reports", "records"):
            name = "pyworker_autoscaler_failing_seconds"
            assert value(failing, name, delivery=delivery) > 0

        stack.standin.report_status = stack.standin.delete_status = 200
        # New figures: a report is due at the next tick, not at the 10 s heartbeat.
        assert (await stack.post("/generate", prompt(2))).status_code == 200

        async def recovered() -> dict[str, Any] | None:
            status = await stack.status()
            both = status["autoscaler"].values()
            done = all(each["ok"] for each in both) and status["records_pending"] == 0
            return status if done else None

        status = await eventually(recovered, what="deliveries accepted again")
        assert status["autoscaler"]["records"]["failing_for"] is None
        assert status["autoscaler"]["records"]["accepted"] >= 1
