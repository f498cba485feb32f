"""Fixtures shared by the test modules (plain helpers live in ``harness.py``, ``fakes.py`` and the
``*_harness.py`` modules)."""

from __future__ import annotations

import importlib.metadata
import re
import sysconfig
from collections.abc import AsyncIterator, Iterator
from functools import partial
from pathlib import Path

import httpx
import pytest
import trio
from harness import Running
from start_server_harness import Instance

from pyworker.devtools import RouterSigner, StandIn, serve_standin


@pytest.fixture(scope="session")
def signer() -> RouterSigner:
    """The test router's signing key (one per session: generating one takes ~100 ms)."""
    return RouterSigner.generate()


@pytest.fixture(scope="session")
def other_signer() -> RouterSigner:
    """A second router key, for signatures that must not verify."""
    return RouterSigner.generate()


@pytest.fixture
async def router(signer: RouterSigner) -> AsyncIterator[Running]:
    """A stand-in autoscaler serving in the test's nursery, its report lines kept."""
    lines: list[str] = []
    standin = StandIn(signer=signer, on_report=lines.append)
    shutdown = trio.Event()
    async with trio.open_nursery() as nursery:
        url = await nursery.start(partial(serve_standin, standin, shutdown=shutdown))
        yield Running(standin, url, lines)
        shutdown.set()


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    """An HTTP client (tests that need other settings define their own ``http``)."""
    async with httpx.AsyncClient(timeout=10) as http:
        yield http


# -- start_server.sh on a pretend instance (start_server_harness.py) --------------------------


def _is_ours(name: str) -> bool:
    """Whether a site-packages entry is this project's (its packages, metadata, editable hook)."""
    stem = re.split(r"[-.]", name, maxsplit=1)[0]
    return stem in {"pyworker", "backends"} or name.startswith("__editable__")


@pytest.fixture(scope="module")
def dependencies(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """This interpreter's installed packages without pyworker, as symlinks in one directory: what
    start_server.sh's offline install finds on the ``PYTHONPATH`` (see start_server_harness.py).

    Without pip too: the venv's own pip must do the install. Without ``.pth`` files, which a
    ``PYTHONPATH`` entry does not run anyway.
    """
    try:
        version = importlib.metadata.version("setuptools")
    except importlib.metadata.PackageNotFoundError:
        version = "0"
    if tuple(int(part) for part in re.findall(r"\d+", version)[:2]) < (70, 1):
        pytest.skip(f"an offline install needs setuptools >= 70.1 here (found {version})")
    farm = tmp_path_factory.mktemp("dependencies")
    paths = sysconfig.get_paths()
    for directory in dict.fromkeys((paths["purelib"], paths["platlib"])):
        for entry in sorted(Path(directory).iterdir()):
            name = entry.name
            if (
                _is_ours(name)
                or name == "__pycache__"
                or name.endswith(".pth")
                or re.split(r"[-.]", name, maxsplit=1)[0] == "pip"
            ):
                continue
            link = farm / name
            if not link.exists():
                link.symlink_to(entry)
    return farm


@pytest.fixture
def instances() -> Iterator[list[Instance]]:
    """Instances made by the test; their workers are stopped when it ends, however it ends."""
    made: list[Instance] = []
    yield made
    for instance in made:
        instance.stop_all()
