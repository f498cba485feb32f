"""``python -m bench``: run the benchmark scenarios and print each figure beside its baseline.

Options: ``--quick`` (shorter windows), ``--only NAME`` (repeatable), ``--write`` (put the
results into ``bench/RESULTS.md``), ``--profile`` (py-spy profiles of the worker under the
scenario 1 and 2 loads instead of the scenarios), ``--keep`` (keep the run directory).
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from types import FrameType

from bench import capacity, latency, overload, profile, streams
from bench.procs import Procs, pinning_note
from bench.report import Section, render_all, write_results

SCENARIOS: dict[str, Callable[[Procs, bool], Section]] = {
    "latency": latency.run,
    "streams": streams.run_streams,
    "slow-streams": streams.run_slow_streams,
    "capacity": capacity.run,
    "overload": overload.run,
}
RESULTS = Path(__file__).with_name("RESULTS.md")
OUT = Path(__file__).with_name("out")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="shorter measurement windows")
    parser.add_argument(
        "--only",
        action="append",
        choices=[*SCENARIOS, "1", "2", "3", "4", "5"],
        help="run only this scenario (name or number; repeatable)",
    )
    parser.add_argument("--write", action="store_true", help=f"write the results into {RESULTS}")
    parser.add_argument(
        "--profile", action="store_true", help="profile the worker with py-spy instead"
    )
    parser.add_argument("--keep", action="store_true", help="keep the run directory (logs)")
    return parser


def _selected(only: Sequence[str] | None) -> list[str]:
    names = list(SCENARIOS)
    if not only:
        return names
    picked = {names[int(o) - 1] if o.isdigit() else o for o in only}
    return [n for n in names if n in picked]


def _raise_on_sigterm(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(f"stopped by signal {signum}")


def main(argv: Sequence[str] | None = None) -> int:
    """Run the selected scenarios; returns the exit status."""
    args = _parser().parse_args(argv)
    signal.signal(signal.SIGTERM, _raise_on_sigterm)
    run_dir = Path(tempfile.mkdtemp(prefix="pyworker-bench-"))
    started = time.monotonic()
    sections: list[Section] = []
    try:
        if args.profile:
            OUT.mkdir(exist_ok=True)
            with Procs(run_dir / "profile") as procs:
                print(profile.run(procs, OUT, args.quick), flush=True)
            return 0
        for name in _selected(args.only):
            print(f"== {name} (after {time.monotonic() - started:.0f} s)", file=sys.stderr)
            with Procs(run_dir / name) as procs:
                section = SCENARIOS[name](procs, args.quick)
            if procs.background:
                section = section.with_note(
                    f"Other processes on the machine used up to {max(procs.background):.2f} "
                    "cores during the measured windows (0 = a quiet machine)."
                )
            sections.append(section)
            print(section.render() + "\n", file=sys.stderr, flush=True)
    finally:
        if args.keep:
            print(f"logs kept in {run_dir}", file=sys.stderr)
        else:
            shutil.rmtree(run_dir, ignore_errors=True)
    elapsed = time.monotonic() - started
    preamble = [
        f"Command: `.venv/bin/python -m bench{' --quick' if args.quick else ''}"
        + "".join(f" --only {o}" for o in args.only or [])
        + f"`; took {elapsed:.0f} s on {time.strftime('%Y-%m-%d')}.",
        f"Machine: {os.cpu_count()} cores, {platform.python_implementation()} "
        f"{platform.python_version()}; {pinning_note()}; loopback only.",
    ]
    text = render_all(sections, preamble)
    print(text)
    if args.write:
        write_results(RESULTS, text)
        print(f"written to {RESULTS}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
