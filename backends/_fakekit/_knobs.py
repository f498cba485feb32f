"""The command-line knobs every fake model server shares."""

from __future__ import annotations

import argparse
from collections.abc import Sequence

import attrs

from ._capacity import CapacityModel


def positive(text: str) -> float:
    """A number > 0 (an argparse type)."""
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be > 0, not {text}")
    return value


def non_negative(text: str) -> float:
    """A number >= 0 (an argparse type)."""
    value = float(text)
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, not {text}")
    return value


def fraction(text: str) -> float:
    """A number within [0, 1] (an argparse type)."""
    value = float(text)
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError(f"must be within [0, 1], not {text}")
    return value


def count(text: str) -> int:
    """An integer >= 0 (an argparse type)."""
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, not {text}")
    return value


def at_least_one(text: str) -> int:
    """An integer >= 1 (an argparse type)."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, not {text}")
    return value


@attrs.frozen(kw_only=True)
class Knobs:
    """How a fake model server behaves (see :func:`knob_parser` for each flag's meaning)."""

    host: str = "127.0.0.1"
    port: int = 0
    port_file: str | None = None
    log: str | None = None
    load_delay: float = 2.0
    fail_load: str | None = None
    token_rate: float = 100.0
    capacity: float | None = None
    max_parallel: int | None = None
    hang_after: int | None = None
    crash_after: int | None = None
    error_rate: float = 0.0
    slow_health: float = 0.0
    seed: int = 0

    @classmethod
    def parse(cls, parser: argparse.ArgumentParser, argv: Sequence[str] | None = None) -> Knobs:
        """Parse ``argv`` (default: ``sys.argv[1:]``) with a parser from :func:`knob_parser`.

        Raises:
            SystemExit: bad arguments (argparse prints why), or ``--help``.
        """
        namespace = parser.parse_args(argv)
        fields = {field.name for field in attrs.fields(cls)}
        return cls(**{k: v for k, v in vars(namespace).items() if k in fields})

    def capacity_model(self) -> CapacityModel:
        """The capacity model these knobs describe."""
        return CapacityModel(
            token_rate=self.token_rate, capacity=self.capacity, max_parallel=self.max_parallel
        )


def knob_parser(
    description: str,
    *,
    port: int,
    load_delay: float = 2.0,
    token_rate: float = 100.0,
) -> argparse.ArgumentParser:
    """An argument parser with the shared knobs; a fake may add its own before parsing.

    Args:
        description: what the fake imitates, for ``--help``.
        port: the default ``--port`` (the real server's usual port).
        load_delay: the default ``--load-delay``.
        token_rate: the default ``--token-rate``.
    """
    parser = argparse.ArgumentParser(description=description)
    add = parser.add_argument
    add("--host", default="127.0.0.1", help="address to bind (default: %(default)s)")
    add("--port", type=int, default=port, help="port to bind, 0 for any (default: %(default)s)")
    add("--port-file", help="once listening, write the bound port to this file (atomically)")
    add("--log", help="append log lines to this file, with stdout and stderr (default: stdout)")
    add(
        "--load-delay",
        type=non_negative,
        default=load_delay,
        metavar="S",
        help="seconds spent 'loading the model' before listening (default: %(default)s)",
    )
    add("--fail-load", metavar="REASON", help="fail to load the model with this reason; exit 1")
    add(
        "--token-rate",
        type=positive,
        default=token_rate,
        metavar="R",
        help="units per second one request is served at (default: %(default)s)",
    )
    add(
        "--capacity",
        type=positive,
        metavar="C",
        help="units per second shared by all requests (default: unbounded)",
    )
    add(
        "--max-parallel",
        type=at_least_one,
        metavar="N",
        help="requests served at once, the rest wait FIFO (default: unbounded)",
    )
    add(
        "--hang-after",
        type=count,
        metavar="N",
        help="stop answering a request after N tokens, keeping its connection open",
    )
    add(
        "--crash-after",
        type=count,
        metavar="N",
        help="kill the process (exit 1) once a request has produced N tokens",
    )
    add(
        "--error-rate",
        type=fraction,
        default=0.0,
        metavar="F",
        help="fraction of requests answered 500 (deterministic per --seed)",
    )
    add(
        "--slow-health",
        type=non_negative,
        default=0.0,
        metavar="S",
        help="seconds the health route takes to answer",
    )
    add("--seed", type=int, default=0, help="seed of the generated text and injected errors")
    return parser
