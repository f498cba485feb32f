"""``python -m bench``: run the benchmark scenarios and print each figure beside its baseline.

Options: ``--quick`` (shorter windows), ``--only NAME`` (repeatable), ``--write`` (put the
results into ``bench/RESULTS.md``), ``--profile`` (py-spy profiles of the worker under the
scenario 1 and 2 loads instead of the scenarios), ``--keep`` (keep the run directory).

The fault soak (``--only soak``, 10 minutes; 2 with ``--quick``) runs only when named; its
results go to their own block of ``bench/RESULTS.md``.
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

from bench import capacity, latency, overload, profile, soak, streams
from bench.procs import Procs, pinning_note
from bench.report import Section, render_all, write_results

SCENARIOS: dict[str, Callable[[Procs, bool], Section]] = {
    "latency": latency.run,
    "streams": streams.run_streams,
    "slow-streams": streams.run_slow_streams,
    "capacity": capacity.run,
    "overload": overload.run,
    "soak": soak.run,
}
OPT_IN = frozenset({"soak"})
"""Scenarios run only when named with ``--only`` (the soak takes 10 minutes)."""
RESULTS = Path(__file__).with_name("RESULTS.md")
OUT = Path(__file__).with_name("out")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="shorter measurement windows")
    parser.add_argument(
        "--only",
        action="append",
        choices=[*SCENARIOS, "1", "2", "3", "4", "5", "6"],
        help="run only this scenario (name or number; repeatable); the soak (6) runs only "
        "when named",
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
        return [n for n in names if n not in OPT_IN]
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
    # The soak has its own block in RESULTS.md: running it alone keeps the others' results.
    blocks = {
        "results": [s for s in sections if s.key not in OPT_IN],
        "soak": [s for s in sections if s.key in OPT_IN],
    }
    for block, chosen in blocks.items():
        if not chosen:
            continue
        text = render_all(chosen, preamble)
        print(text)
        if args.write:
            write_results(RESULTS, text, block)
            print(f"{block} written to {RESULTS}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
