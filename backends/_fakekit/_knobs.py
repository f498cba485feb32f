"""The command-line knobs every fake model server shares."""

from __future__ import annotations

import argparse
from collections.abc import Sequence

import attrs

from ._capacity import CapacityModel
from ._faults import Faults


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
        return cls.from_namespace(parser.parse_args(argv))

    @classmethod
    def from_namespace(cls, namespace: argparse.Namespace) -> Knobs:
        """The knobs in ``namespace``, parsed by a :func:`knob_parser` parser; the fake's own
        flags in it are left for the fake to read."""
        fields = {field.name for field in attrs.fields(cls)}
        return cls(**{k: v for k, v in vars(namespace).items() if k in fields})

    def capacity_model(self) -> CapacityModel:
        """The capacity model these knobs describe."""
        return CapacityModel(
            token_rate=self.token_rate, capacity=self.capacity, max_parallel=self.max_parallel
        )

    def faults(self) -> Faults:
        """The injected failures these knobs describe."""
        return Faults(
            hang_after=self.hang_after,
            crash_after=self.crash_after,
            error_rate=self.error_rate,
            slow_health=self.slow_health,
            seed=self.seed,
        )


def knob_parser(
    description: str,
    *,
    port: int,
    load_delay: float = 2.0,
    token_rate: float = 100.0,
    capacity: bool = True,
    unit: str = "tokens",
) -> argparse.ArgumentParser:
    """An argument parser with the shared knobs; a fake may add its own before parsing.

    Args:
        description: what the fake imitates, for ``--help``.
        port: the default ``--port`` (the real server's usual port).
        load_delay: the default ``--load-delay``.
        token_rate: the default ``--token-rate``.
        capacity: offer the capacity model's knobs (``--token-rate``, ``--capacity``,
            ``--max-parallel``); a fake that does not serve through it leaves them out.
        unit: what a request produces, in the help of ``--hang-after`` and ``--crash-after``.
    """
    parser = argparse.ArgumentParser(description=description)
    add = parser.add_argument
    add("--host", default="127.0.0.1", help="address to bind (default: %(default)s)")
    add("--port", type=int, default=port, help="port to bind, 0 for any (default: %(default)s)")
    add("--port-file", help="once listening, write the bound port to this file (atomically)")
    add(
        "--log",
        help="append log lines to this file, with stdout and stderr (default: the streams the "
        "real server writes to)",
    )
    add(
        "--load-delay",
        type=non_negative,
        default=load_delay,
        metavar="S",
        help="seconds spent 'loading the model' (default: %(default)s)",
    )
    add(
        "--fail-load",
        metavar="REASON",
        help="fail to start, logging the real server's fatal lines for REASON; exit 1",
    )
    if capacity:
        _add_capacity_knobs(parser, token_rate)
    add(
        "--hang-after",
        type=count,
        metavar="N",
        help=f"a request stalls after N {unit}, nothing closed (default: never)",
    )
    add(
        "--crash-after",
        type=count,
        metavar="N",
        help=f"the process dies (exit 1) once a request has produced N {unit} (default: never)",
    )
    add(
        "--error-rate",
        type=fraction,
        default=0.0,
        metavar="F",
        help="fraction of requests that fail with the server's error (deterministic per --seed)",
    )
    add(
        "--slow-health",
        type=non_negative,
        default=0.0,
        metavar="S",
        help="seconds the health route takes to answer (default: %(default)s)",
    )
    add("--seed", type=int, default=0, help="seed of the generated output and injected failures")
    return parser


def _add_capacity_knobs(parser: argparse.ArgumentParser, token_rate: float) -> None:
    add = parser.add_argument
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
