"""``python -m pyworker.loadtest`` over real sockets and processes: the whole local stack
(``-l``), a router that refuses every route, one that says "wait" before naming a worker (found
through the console with an account key), re-routes counted, the PNG it draws; and its parts."""

from __future__ import annotations

import json
import math
import os
import random
import struct
import subprocess
import sys
from functools import partial
from pathlib import Path
from typing import Any

import attrs
import pytest
import trio
from fakes import REPO_ROOT, free_port
from harness import Stack, ready_stack, refusing_worker, seed_benchmark

from pyworker import DemoServer, load_backend
from pyworker.devtools import EndpointGroup, Retry, in_order
from pyworker.loadtest import main
from pyworker.loadtest._display import progress_line
from pyworker.loadtest._local import serve_local_stack
from pyworker.loadtest._plot import PLOT_HINT
from pyworker.loadtest._requests import RequestMaker
from pyworker.loadtest._summary import render_plain, summarize
from pyworker.loadtest._tally import Outcome, Phase, Result, Tally

GUARD = 60
"""Seconds: the hang guard of each test."""
KEYS = {"requests", "ok", "route_errors", "errors", "status_counts", "latency_ms", "ttfb_ms"}
KEYS |= {"throughput_rps", "workload_per_s", "workers"}
PERCENTILES = {"p50", "p90", "p99", "max"}
GROUP = EndpointGroup(id=5, name="load-group", api_key="load-endpoint-key")
ACCOUNT = "load-account-key"


async def _loadtest(
    *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[bytes]:
    """Run ``python -m pyworker.loadtest ARGS`` as a process of its own."""
    with trio.fail_after(GUARD):
        return await trio.run_process(
            [sys.executable, "-m", "pyworker.loadtest", *args],
            capture_stdout=True,
            capture_stderr=True,
            check=False,
            cwd=REPO_ROOT,
            env=env,
        )


async def _in_thread(*args: str) -> int:
    """Run the load tester's ``main`` in a thread of this process (quicker than a process)."""
    with trio.fail_after(GUARD):
        return await trio.to_thread.run_sync(main, list(args))


def _png_size(path: Path) -> tuple[int, int]:
    """A PNG's width and height, from its signature and IHDR chunk."""
    head = path.read_bytes()[:24]
    assert head[:8] == b"\x89PNG\r\n\x1a\n", head
    assert head[12:16] == b"IHDR"
    width, height = struct.unpack(">II", head[16:24])
    return width, height


async def test_local_stack_streams_and_draws_a_real_png(tmp_path: Path) -> None:
    state = tmp_path / "state"
    # A cached benchmark: the worker is ready once the model has loaded (2 s), not 10 s later.
    seed_benchmark(state, load_backend("hello_world"), max_perf=5000.0)
    result = await _loadtest(
        "-l",
        "--backend",
        "hello_world",
        "--route",
        "/generate_stream",
        "-n",
        "12",
        "-rps",  # the original test_load's spelling
        "40",
        "--state-dir",
        str(state),
        "--json",
        str(tmp_path / "out.json"),
        "--plot",
        str(tmp_path / "out.png"),
    )
    out = result.stdout.decode()
    assert result.returncode == 0, (out, result.stderr.decode())
    assert "local worker: benchmarking -> ready" in out
    assert "sent 12/12" in out  # the plain progress lines (stdout is not a terminal)
    assert "Load test: hello_world /generate_stream via a local stack" in out
    assert "time to first byte" in out
    summary = json.loads((tmp_path / "out.json").read_text())
    assert set(summary) >= KEYS
    assert (summary["requests"], summary["ok"], summary["errors"]) == (12, 12, 0)
    assert (summary["route_errors"], summary["status_counts"]) == (0, {"200": 12})
    assert summary["workers"] == 1
    for key in ("latency_ms", "ttfb_ms", "chunk_gap_ms", "routing_ms"):
        assert set(summary[key]) == PERCENTILES
        assert 0 < summary[key]["p50"] <= summary[key]["p99"] <= summary[key]["max"]
    assert summary["ttfb_ms"]["p50"] < summary["latency_ms"]["p50"]
    assert summary["throughput_rps"] > 0
    assert summary["workload_per_s"] > summary["throughput_rps"]  # ~164 units a request
    assert _png_size(tmp_path / "out.png") == (1000, 700)
    from matplotlib.image import imread

    pixels = imread(tmp_path / "out.png")
    assert pixels.shape == (700, 1000, 4)
    assert pixels.std() > 0.05  # drawn on, not a blank canvas


async def test_a_router_that_refuses_every_route(tmp_path: Path, nursery: trio.Nursery) -> None:
    stack = await ready_stack(nursery, tmp_path)
    stack.standin.route_failures = 10**6
    stack.standin.route_failure_status = 503
    args = ["--router", stack.standin_url, "-e", "group", "-n", "6", "--rps", "200"]
    result = await _loadtest(*args, "--json", str(tmp_path / "refused.json"))
    assert result.returncode == 1, result.stderr.decode()
    summary = json.loads((tmp_path / "refused.json").read_text())
    assert (summary["requests"], summary["ok"], summary["route_errors"]) == (6, 0, 6)
    assert (summary["errors"], summary["error_rate"]) == (6, 1.0)
    assert summary["status_counts"] == summary["inference_errors"] == {}
    assert summary["latency_ms"] is None
    assert summary["workers"] == 0
    assert stack.standin.routes_received == 6  # a refused route is not retried
    # Within the allowed error rate, the same run passes.
    assert await _in_thread(*args, "--max-error-rate", "1") == 0


async def test_a_router_that_says_wait_before_naming_a_worker(
    tmp_path: Path, nursery: trio.Nursery
) -> None:
    stack = await ready_stack(nursery, tmp_path)
    standin = stack.standin
    standin.endpoints = [GROUP]
    standin.account_key = ACCOUNT
    standin.require_endpoint_key = True
    standin.route_waits = 6
    status = await _in_thread(
        "-k",
        ACCOUNT,
        "-e",
        GROUP.name,
        "--console",
        stack.standin_url,
        "--router",
        stack.standin_url,
        "-n",
        "3",
        "--rps",
        "100",
        "--max-poll-interval",
        "0.05",
        "--json",
        str(tmp_path / "waited.json"),
    )
    assert status == 0
    summary = json.loads((tmp_path / "waited.json").read_text())
    assert (summary["ok"], summary["errors"], summary["workers"]) == (3, 0, 1)
    calls = list(standin.route_calls)
    assert len(calls) == 3 + 6  # a first call each, and the six polls
    assert {call.api_key for call in calls} == {GROUP.api_key}  # the key the console gave
    waits = [call for call in calls if call.url is None]
    assert len(waits) == 6
    for call in calls:
        if call.sent_request_idx:  # every poll names the index its request was given
            assert call.sent_request_idx == call.request_idx
    assert len({call.request_idx for call in calls}) == 3


async def _reroute_stack(nursery: trio.Nursery, tmp_path: Path, second: str) -> Stack:
    stack = await ready_stack(nursery, tmp_path)
    stack.standin.worker_urls = [second, stack.info.url]
    stack.standin.route_policy = in_order
    return stack


async def test_reroutes_are_counted_and_failures_by_worker_and_status(
    tmp_path: Path, nursery: trio.Nursery
) -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    stack = await _reroute_stack(nursery, tmp_path, dead)
    base = ["--router", stack.standin_url, "-n", "4", "--rps", "100", "--max-poll-interval", "0.05"]
    assert await _in_thread(*base, "--json", str(tmp_path / "a.json")) == 0
    summary = json.loads((tmp_path / "a.json").read_text())
    assert (summary["ok"], summary["errors"], summary["retries"]) == (4, 0, {"connection": 4})
    assert summary["workers"] == 2  # routed to both, answered by one
    assert summary["worker_counts"] == {stack.info.url: 4}

    stack.standin.worker_urls = [dead]  # nowhere to go: connection errors, by worker
    one_try = [*base, "--max-attempts", "1", "--json", str(tmp_path / "b.json")]
    assert await _in_thread(*one_try) == 1
    summary = json.loads((tmp_path / "b.json").read_text())
    assert (summary["errors"], summary["connection_errors"]) == (4, {dead: 4})

    stack.standin.worker_urls = [await refusing_worker(nursery, 503)]
    assert await _in_thread(*base, "--max-attempts", "2", "--json", str(tmp_path / "c.json")) == 1
    summary = json.loads((tmp_path / "c.json").read_text())
    assert (summary["inference_errors"], summary["status_counts"]) == ({"503": 4}, {"503": 4})
    assert summary["retries"] == {"503": 4}


async def test_latency_counts_from_the_schedule_not_from_the_send(
    tmp_path: Path, nursery: trio.Nursery
) -> None:
    """One slot, four arrivals 10 ms apart, answers of at least 0.2 s each (20 tokens at 100
    per second): the later requests wait for the slot, and that wait is latency the client
    saw, not hidden by timing from the send."""
    stack = await ready_stack(nursery, tmp_path, "--token-rate", "100")
    payload = json.dumps({"prompt": "hi", "max_response_tokens": 20})
    args = ["--router", stack.standin_url, "-e", "group", "-n", "4", "--rps", "100"]
    args += ["--concurrency", "1", "--payload", payload, "--json", str(tmp_path / "s.json")]
    assert await _in_thread(*args) == 0
    summary = json.loads((tmp_path / "s.json").read_text())
    assert summary["ok"] == 4
    queued, latency = summary["queued_ms"], summary["latency_ms"]
    # The last arrival waited for three answers (0.6 s, less the 30 ms it arrived after the
    # first), then took its own 0.2 s.
    assert queued["max"] >= 500
    assert latency["max"] >= queued["max"] + 180
    assert queued["p50"] >= 150


async def test_plot_without_matplotlib_is_a_one_line_hint(tmp_path: Path) -> None:
    code = (
        "import sys; sys.modules['matplotlib'] = None; from pyworker.loadtest import main; "
        "sys.exit(main(sys.argv[1:]))"
    )
    with trio.fail_after(GUARD):
        result = await trio.run_process(
            [sys.executable, "-c", code, "--router", "http://127.0.0.1:9", "--plot", "x.png"],
            capture_stdout=True,
            capture_stderr=True,
            check=False,
            cwd=tmp_path,
        )
    assert (result.returncode, result.stdout) == (2, b"")
    assert result.stderr.decode() == PLOT_HINT + "\n"


def test_bad_usage_says_what_is_wrong(capsys: pytest.CaptureFixture[str]) -> None:
    cases = {
        ("-n", "3"): "say where to send the load: -l (a local stack)",
        ("-k", "key"): "-k needs the endpoint group's name",
        ("-l", "--router", "http://127.0.0.1:9"): "-l runs its own stack",
        ("-l", "--route", "/nope"): "has no route /nope (it has /generate, /generate_stream)",
        ("-l", "--payload", '{"prompt": 1}'): "refuses the payload",
        ("-l", "--backend", "nope"): "unknown backend 'nope'",
        ("-l", "--rps", "-1"): "--rps must not be negative",
    }
    for argv, message in cases.items():
        with pytest.raises(SystemExit) as exited:
            main(list(argv))
        assert exited.value.code == 2
        assert message in capsys.readouterr().err, argv


def test_requests_are_the_backends_benchmark_payloads_weighed_its_way() -> None:
    backend = load_backend("hello_world")
    maker = RequestMaker.for_backend(backend)
    assert maker.route == "/generate"
    payload, workload = maker.make(random.Random(1))
    benchmark_payload = backend.endpoint("/generate").benchmark_payload
    assert benchmark_payload is not None
    assert payload == benchmark_payload(random.Random(1))
    assert workload == backend.endpoint("/generate").parse(payload).workload
    fixed = RequestMaker.for_backend(backend, "/generate_stream", {"prompt": "hi"})
    assert fixed.make(random.Random(2))[0] == {"prompt": "hi"}
    chat = RequestMaker.for_backend(load_backend("openai"), "/v1/completions")
    completion, _ = chat.make(random.Random(0))
    assert isinstance(completion, dict)
    assert "prompt" in completion


def _result(index: int, outcome: Outcome, latency: float, **fields: Any) -> Result:
    return Result(
        index=index, arrived_at=index * 0.1, latency=latency, outcome=outcome, workload=10, **fields
    )


def test_the_summary_counts_each_outcome_once() -> None:
    tally = Tally(planned=8, started=0.0)
    ends = [
        (_result(0, Outcome.OK, 0.1, status=200, worker="w1", routing=0.01), Phase.FETCHING),
        (
            _result(1, Outcome.OK, 0.3, status=200, worker="w2", ttfb=0.05, gaps=(0.01, 0.02)),
            Phase.FETCHING,
        ),
        (_result(2, Outcome.HTTP_ERROR, 0.2, status=503, worker="w1"), Phase.FETCHING),
        (_result(3, Outcome.ROUTE_ERROR, 0.01), Phase.ROUTING),
        (_result(4, Outcome.CONNECTION_ERROR, 0.02, worker="w3"), Phase.FETCHING),
        (_result(5, Outcome.TIMEOUT, 1.0, worker="w1"), Phase.FETCHING),
        (_result(6, Outcome.CANCELLED, 0.5), Phase.ROUTING),
    ]
    for result, phase in ends:
        tally.arrive()
        tally.send()
        if phase is Phase.FETCHING:
            tally.move(Phase.ROUTING, Phase.FETCHING)
            tally.route_to(result.worker)
        tally.end(result, phase, now=1.0)
    tally.retry(Retry(url="w3", status=0, error="ConnectError"))
    tally.retry(Retry(url="w1", status=429))
    snap = tally.snapshot(now=2.0)
    assert (snap.in_flight, snap.ok, snap.errors, snap.workers) == (0, 2, 4, 3)
    line = progress_line(snap)
    assert "ok 2 route_err 1 http_err 1 conn_err 1 timeouts 1" in line
    assert "[http 503:1] [conn w3:1]" in line

    summary = summarize(tally, elapsed=2.0, target="t", backend="b", route="/r")
    assert (summary["requests"], summary["ok"], summary["errors"], summary["cancelled"]) == (
        7,
        2,
        4,
        1,
    )
    assert summary["error_rate"] == 4 / 6  # the cancelled request is neither
    assert summary["status_counts"] == {"200": 2, "503": 1}
    assert summary["inference_errors"] == {"503": 1}
    assert summary["connection_errors"] == {"w3": 1}
    assert summary["retries"] == {"connection": 1, "429": 1}
    assert summary["latency_ms"] == {"p50": 100.0, "p90": 300.0, "p99": 300.0, "max": 300.0}
    assert summary["ttfb_ms"] == {"p50": 50.0, "p90": 50.0, "p99": 50.0, "max": 50.0}
    assert summary["chunk_gap_ms"]["max"] == 20.0
    assert summary["routing_ms"]["p50"] == 10.0
    assert (summary["throughput_rps"], summary["workload_per_s"]) == (1.0, 10.0)
    assert math.isclose(summary["elapsed_s"], 2.0)
    text = render_plain(summary)
    assert "errors        4 (66.67%)" in text
    assert "time to first byte" in text


def test_the_worker_never_imports_the_load_tester() -> None:
    code = (
        "import sys, pyworker, pyworker._cli, pyworker._worker; pyworker.Worker; "
        "print(sorted(m for m in sys.modules if m.startswith('pyworker.loadtest')))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert result.stdout.strip() == "[]"


async def test_a_local_model_server_that_exits_is_noticed(tmp_path: Path) -> None:
    backend = attrs.evolve(
        load_backend("hello_world"),
        demo=DemoServer(argv=lambda port, log: [sys.executable, "-c", "raise SystemExit(3)"]),
    )
    shutdown = trio.Event()
    with trio.fail_after(GUARD):
        async with trio.open_nursery() as nursery:
            stack = await nursery.start(
                partial(
                    serve_local_stack,
                    backend,
                    state_dir=tmp_path,
                    shutdown=shutdown,
                    env=dict(os.environ),
                )
            )
            assert await stack.wait_ready() is None  # not waiting for a load that cannot come
            shutdown.set()
