"""``python -m bench --profile``: where the worker's CPU goes under the scenario 1 and 2 loads.

py-spy samples the worker process from outside (250 times a second; each sample pauses it
briefly: ``--nonblocking`` was tried and truncated nearly half the stacks) while the load
generator drives it exactly as in the scenarios. The raw stacks
go to ``bench/out/profile-NAME.txt`` (collapsed format: feed them to any flame-graph tool);
this module prints, per load, the share of samples and the CPU microseconds per request (or
relayed event) of each layer and of the costliest functions, inclusive and self.
"""

from __future__ import annotations

import collections
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

from bench import latency, streams
from bench.procs import Procs, wait_status
from bench.stack import run_load, signed_body, start_upstream, start_worker
from bench.stats import table

_FRAME = re.compile(r"^(?P<func>.*) \((?P<file>[^)]*)\)$")
# Layers by file path, first match wins; the leaf frame's layer gets the sample's self time.
_LAYERS = (
    ("pyworker pipeline", "pyworker/_pipeline"),
    ("pyworker upstream pool", "pyworker/_upstream"),
    ("pyworker auth (RSA, replay)", "pyworker/_auth"),
    ("pyworker other", "pyworker/"),
    ("backend parse/validate", "backends/"),
    ("hypercorn", "hypercorn/"),
    ("h11", "h11/"),
    ("trio", "trio/"),
    ("quart/werkzeug", "quart"),
    ("json", "json/"),
    ("attrs", "attr"),
)
_TOP = 14
# Stacks of threads other than the event loop's: trio's idle worker threads, parked on a lock,
# which py-spy's blocking mode does not recognise as idle.
_OTHER_THREADS = "Thread._bootstrap (threading.py)"


def _py_spy() -> str:
    found = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    if not Path(found).exists():
        raise SystemExit(
            "py-spy is not installed: .venv/bin/pip install -e '.[bench]' (or pip install py-spy)"
        )
    return found


def _layer(file: str) -> str:
    return next((name for name, part in _LAYERS if part in file), "other (stdlib, C)")


def summarise(raw: Path, per_unit_us: float, unit: str) -> str:
    """Layers and top functions from a raw py-spy file, in % of samples and us per unit."""
    self_by_layer: collections.Counter[str] = collections.Counter()
    self_by_func: collections.Counter[str] = collections.Counter()
    incl_by_func: collections.Counter[str] = collections.Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit() or stack.startswith(_OTHER_THREADS):
            continue
        count = int(count_text)
        total += count
        frames = []
        for frame in stack.split(";"):
            match = _FRAME.match(frame)
            frames.append((match["func"], match["file"]) if match else (frame, ""))
        func, file = frames[-1]
        self_by_layer[_layer(file)] += count
        self_by_func[f"{func} ({file})"] += count
        for name in {f"{f} ({p})" for f, p in frames}:
            incl_by_func[name] += count
    if not total:
        return "(no samples)"

    def rows(counter: collections.Counter[str], limit: int) -> list[list[str]]:
        return [
            [name, f"{100 * n / total:.1f}%", f"{per_unit_us * n / total:.1f}"]
            for name, n in counter.most_common(limit)
        ]

    header = ["", "samples", f"us per {unit}"]
    inclusive = collections.Counter(
        {k: v for k, v in incl_by_func.items() if not k.startswith(("<module>", "run ("))}
    )
    return "\n\n".join(
        [
            f"{total} samples of the event loop's thread; worker CPU {per_unit_us:.1f} us per "
            f"{unit}, shared out below by share of samples",
            "Self time by layer:\n\n" + table(["layer", *header[1:]], rows(self_by_layer, 20)),
            "Top functions, self:\n\n" + table(["function", *header[1:]], rows(self_by_func, _TOP)),
            "Top functions, inclusive:\n\n"
            + table(["function", *header[1:]], rows(inclusive, _TOP + 10)),
        ]
    )


def _profiled(
    procs: Procs, name: str, pid: int, spec: dict[str, Any], out: Path
) -> tuple[dict[str, Any], Path]:
    raw = out / f"profile-{name}.txt"
    seconds = spec["duration"]
    spy = procs.start(
        f"py-spy-{name}",
        [
            _py_spy(),
            "record",
            "--pid",
            str(pid),
            "--format",
            "raw",
            "--nolineno",
            "--rate",
            "250",
            "--duration",
            f"{seconds:g}",
            "--output",
            str(raw),
        ],
    )
    # The profile covers the load's measured window: its warm-up covers py-spy's start.
    spec = {**spec, "warmup": max(spec.get("warmup", 0.0), 1.0)}
    result = run_load(procs, f"load-{name}", spec)
    try:
        spy.popen.wait(30)
    except subprocess.TimeoutExpired:
        procs.stop(spy)
    return result, raw


def run(procs: Procs, out: Path, quick: bool) -> str:
    """Profile the worker under the scenario 1 (c=32) and scenario 2 loads."""
    duration = 5.0 if quick else 12.0
    upstream = start_upstream(procs, streams.EVENT_INTERVAL)
    worker = start_worker(procs, upstream)
    wait_status(worker.port, "ready", 60)
    pids = {"worker": worker.pid, "upstream": upstream.pid}
    parts = []

    spec = {
        "mode": "closed",
        "port": worker.port,
        "path": "/generate",
        "connections": 32,
        "duration": duration,
        "signed": signed_body(worker.url, latency.PAYLOAD),
        "pids": pids,
    }
    result, raw = _profiled(procs, "json-c32", worker.pid, spec, out)
    per_request = result["cpu_s"]["worker"] / max(result["completed"], 1) * 1e6
    parts.append(
        f"## Small JSON, c=32 ({result['throughput']:,.0f} req/s; raw stacks: {raw})\n\n"
        + summarise(raw, per_request, "request")
    )

    payload = {"prompt": "hi", "max_response_tokens": streams.EVENTS_PER_STREAM}
    spec = {
        "mode": "stream",
        "port": worker.port,
        "path": "/generate_stream",
        "connections": streams.STREAMS,
        "ramp": 1.0,
        "duration": duration,
        "signed": signed_body(worker.url, payload),
        "pids": pids,
    }
    result, raw = _profiled(procs, "streams", worker.pid, spec, out)
    per_event = result["cpu_s"]["worker"] / max(result["events"], 1) * 1e6
    parts.append(
        f"## Streams, {streams.STREAMS} at 100 events/s ({result['events_per_s']:,.0f} "
        f"events/s; raw stacks: {raw})\n\n" + summarise(raw, per_event, "event")
    )
    return "\n\n".join(parts)
