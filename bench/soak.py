"""Scenario 6 (``soak``, run only when asked): a fault soak.

``python -m bench --only soak`` (10 minutes; ``--quick``: 2). A mixed load runs through the
worker the whole time (``bench/soakload.py``: JSON, streams, client aborts, bad payloads, bad
signatures, and clients opening a connection per request), every answer checked against what
the hello_world fake must say, while faults are injected from outside the processes, at
proportional times:

1. **model killed and restarted**: SIGKILL to the fake; after a pause, as Vast's start script
   does, its log is moved to ``MODEL_LOG.old`` and a new fake starts on the same port, writing
   a fresh log;
2. **model hung, then resumed**: SIGSTOP to the fake, SIGCONT later (nothing in its log);
3. **autoscaler down**: the stand-in autoscaler (load reports, finished-request records) is
   stopped, then started again on the same port; the worker reads the router's key from a
   file, so serving must not depend on it;
4. **model log replaced**: the log is moved to ``MODEL_LOG.old`` and an empty one created (as
   log rotation does) while the model keeps running.

Meanwhile ``GET /status`` is polled every 100 ms (each state change printed as it happens),
the worker's log is followed, and its resident memory, open descriptors and sockets in
CLOSE-WAIT are read from ``/proc``; a ``GET /ping`` every 100 ms on its own connection gives
the event-loop lag, as in scenario 3.

A fault's **window** runs from its injection until the worker is ready and serving again: its
``/status`` admits requests and a canary request gets exactly the right answer. A fault is
**detected** at the first sign of it, in ``/status`` (a state other than ``ready``, or an error)
or in the answers (a 5xx, a broken answer), or, for the autoscaler, the worker's log. A fault
not recovered within a bound is repaired by restarting the model (the table says so).

**Lost** and **corrupted** (see :func:`bench.soaktally.tally`): a request that should have
succeeded is one sent while the worker's ``/status`` said ready and whose whole life (sent to
answered) lies outside every model fault's window; the autoscaler's outage is no excuse (serving
must not depend on it). It must get its expected answer (a 200 exactly right, the 422 or 401
due) or a refusal the client can act on (429/503, counted apart); anything else (another status,
a broken or missing answer, a timeout) is **lost**. A 200 (or the 422 due) with wrong content is
**corrupted**, whenever it happened.

Here: :func:`run`, the scenario's entry point. Its parts: the settings and the fault schedule
(``bench/soakplan.py``), the running soak with its observers and faults (``bench/soakrunner.py``),
the readings from ``/proc`` (``bench/soakprocfs.py``), the verdicts (``bench/soaktally.py``) and
the section of the results (``bench/soakreport.py``).
"""

from __future__ import annotations

import json
import os
import signal
import time

import trio

from bench.procs import DRIVER_CPU, Procs
from bench.report import Section
from bench.soakplan import (
    ABORT_TOKENS,
    CLIENTS,
    IDLE_PROBE,
    PROBE_INTERVAL,
    SEED,
    THINK,
    TOKENS,
    Schedule,
)
from bench.soakreport import analyse, fake_stats
from bench.soakrunner import Soak, say
from bench.stack import finish_load, run_load, start_load
from pyworker.devtools import RouterSigner


def run(procs: Procs, quick: bool, schedule: Schedule | None = None) -> Section:
    """Run the soak (``schedule`` overrides the 2- or 10-minute one, e.g. in tests)."""
    s = schedule or Schedule.for_run(quick)
    soak = Soak(procs, s)
    soak.start_stack()
    probe_base = {
        "mode": "closed",
        "port": soak.worker.port,
        "path": "/ping",
        "method": "GET",
        "connections": 0,
        "warmup": 0.0,
        "probe_port": soak.worker.port,
        "probe_path": "/ping",
        "probe_interval": PROBE_INTERVAL,
    }
    idle = run_load(procs, "probe-idle", {**probe_base, "duration": IDLE_PROBE})
    procs.background.clear()  # the idle probe's figure says nothing of the soak
    soak.idle = soak.sample_now()
    bad_signer = RouterSigner.generate()
    soak.t0 = time.monotonic() + 2.0  # time for the load process to start
    records_path = procs.directory / "soak-records.jsonl"
    load_spec = {
        "port": soak.worker.port,
        "seed": SEED,
        "auth": soak.auth,
        "bad_auth": bad_signer.sign_2025(soak.worker.url, reqnum=0),
        "start_at": soak.t0,
        "stop_at": soak.t0 + s.duration,
        "timeout": s.timeout,
        "clients": CLIENTS,
        "think": THINK,
        "tokens": list(TOKENS),
        "abort_tokens": list(ABORT_TOKENS),
        "records": str(records_path),
    }
    load = procs.python("soak-load", "-m", "bench.soakload", json.dumps(load_spec), cpu=DRIVER_CPU)
    probe_spec = {**probe_base, "duration": s.duration + 1.0}
    probe_proc = start_load(procs, "probe-soak", probe_spec)
    say(
        f"{s.duration:g} s of load with faults at {s.kill_at:g}, {s.hang_at:g}, "
        f"{s.scaler_at:g}, {s.log_at:g} s (logs in {procs.directory})"
    )
    try:
        trio.run(soak.run)
    finally:
        # Whatever happened, a stopped model must not stay stopped.
        if soak.fake.proc.popen.poll() is None:
            os.kill(soak.fake.pid, signal.SIGCONT)
    if soak.interrupted == signal.SIGINT:
        raise KeyboardInterrupt
    if soak.interrupted:
        raise SystemExit(f"stopped by signal {soak.interrupted}")
    probe = finish_load(procs, probe_proc, probe_spec, count_background=False)
    try:
        load.popen.wait(s.timeout + 20.0)
    finally:
        procs.stop(load)
    lines = load.log_path.read_text(errors="replace").strip().splitlines()
    load_summary = lines[-1] if lines else "no summary"
    try:
        records = [json.loads(line) for line in records_path.read_text().splitlines()]
    except FileNotFoundError:
        raise RuntimeError(f"the soak's load wrote no records:\n{load.log_tail()}") from None
    try:
        summary = json.loads(load_summary)
        load_summary = f"{summary['requests']} requests"
    except (ValueError, KeyError, TypeError):
        pass
    return analyse(soak, records, probe, idle, fake_stats(soak.fake.port), load_summary)
