"""Fixtures shared by the test modules (plain helpers live in ``harness.py`` and ``fakes.py``)."""

from __future__ import annotations

import pytest

from pyworker.devtools import RouterSigner


@pytest.fixture(scope="session")
def signer() -> RouterSigner:
    """The test router's signing key (one per session: generating one takes ~100 ms)."""
    return RouterSigner.generate()


@pytest.fixture(scope="session")
def other_signer() -> RouterSigner:
    """A second router key, for signatures that must not verify."""
    return RouterSigner.generate()
