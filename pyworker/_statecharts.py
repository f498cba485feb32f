"""Diagrams and the operator's guide, generated from the lifecycle table.

The lifecycle table in :mod:`pyworker._lifecycle` is the single source of truth; this module turns
it into ``statecharts/lifecycle.mmd`` (Mermaid), ``statecharts/lifecycle.dot`` (Graphviz DOT) and
``statecharts/README.md`` (the operator's guide). Run ``python -m pyworker._statecharts`` after
changing the table; ``--check`` (run by the tests and CI) fails when the committed files are stale.

The diagrams are drawn by :mod:`pyworker._statechart_diagrams`, the guide is written by
:mod:`pyworker._statechart_guide`; this module puts them in their files and checks them.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from ._statechart_diagrams import dot_text, mermaid_text
from ._statechart_guide import COMMAND, readme_text

__all__ = [
    "COMMAND",
    "DEFAULT_OUT",
    "dot_text",
    "generated_files",
    "main",
    "mermaid_text",
    "readme_text",
    "stale_files",
    "write_files",
]


def _default_out() -> Path:
    root = Path(__file__).resolve().parent.parent
    if (root / "pyproject.toml").is_file():  # a checkout: statecharts/ sits next to the package
        return root / "statecharts"
    return Path.cwd() / "statecharts"  # an installed copy: assume we run at the repository root


DEFAULT_OUT = _default_out()
"""Where the generated files live in the repository."""


def generated_files() -> dict[str, str]:
    """Every generated file, by name inside the ``statecharts`` directory.

    Returns:
        A mapping of file name to its full text, in a fixed order.
    """
    return {
        "lifecycle.mmd": mermaid_text(),
        "lifecycle.dot": dot_text(),
        "README.md": readme_text(),
    }


def stale_files(out: Path) -> list[Path]:
    """The generated files under ``out`` that are missing or differ from the table.

    Args:
        out: the directory holding the committed files.

    Returns:
        The paths of the stale files (empty when all are fresh).
    """
    stale = []
    for name, text in generated_files().items():
        path = out / name
        if not path.is_file() or path.read_bytes() != text.encode("utf-8"):
            stale.append(path)
    return stale


def write_files(out: Path) -> list[Path]:
    """Write the generated files under ``out``, leaving files that are already fresh untouched.

    Args:
        out: the directory to write to (created if missing).

    Returns:
        The paths that were written.
    """
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for name, text in generated_files().items():
        path = out / name
        data = text.encode("utf-8")
        if not path.is_file() or path.read_bytes() != data:
            path.write_bytes(data)
            written.append(path)
    return written


def _shown(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


def main(argv: Sequence[str] | None = None) -> int:
    """Regenerate (or, with ``--check``, verify) the statechart files.

    Args:
        argv: the command-line arguments (default: ``sys.argv[1:]``).

    Returns:
        The exit status: 0 on success, 1 when ``--check`` found stale files.
    """
    parser = argparse.ArgumentParser(
        prog=COMMAND,
        description="Generate the lifecycle diagrams and README from pyworker/_lifecycle.py.",
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        metavar="DIR",
        help=f"directory of the generated files (default: {DEFAULT_OUT})",
    )
    parser.add_argument(
        "--check",
        action="store_true",
        help="write nothing; exit 1 if any generated file is missing or stale",
    )
    args = parser.parse_args(argv)
    out: Path = DEFAULT_OUT if args.out is None else args.out
    fix = COMMAND if args.out is None else f"{COMMAND} --out {args.out}"
    if args.check:
        stale = stale_files(out)
        for path in stale:
            print(
                f"{_shown(path)} is stale: it does not match the lifecycle table in "
                f"pyworker/_lifecycle.py. Regenerate it with: {fix}",
                file=sys.stderr,
            )
        return 1 if stale else 0
    for path in write_files(out):
        print(f"wrote {_shown(path)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
