"""Fixtures shared by the test modules (plain helpers live in ``harness.py`` and ``fakes.py``)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from functools import partial

import httpx
import pytest
import trio
from harness import Running

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
