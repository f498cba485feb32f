"""Where the router's public key comes from: the configuration, or the autoscaler's ``/pubkey/``.

A PEM given in the configuration (text or file) is loaded at start-up, so a bad one fails at
once. Otherwise the worker fetches ``{REPORT_ADDR}/pubkey/`` in the background with back-off
(:func:`fetch_public_key`): start-up never waits for the router, and the lifecycle waits in
``awaiting_key`` until the key arrives.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

import httpx
import trio

from ._auth import Authenticator, load_public_key

logger = logging.getLogger("pyworker.auth")

DEFAULT_BACKOFF: tuple[float, ...] = (1.0, 2.0, 4.0, 8.0, 16.0)
"""Seconds between rounds of key fetching; the last value repeats (as Vast's 2025 worker does)."""


def pubkey_urls(report_addrs: Sequence[str]) -> list[str]:
    """The ``{addr}/pubkey/`` URLs of the autoscaler addresses in ``REPORT_ADDR``."""
    return [f"{addr.rstrip('/')}/pubkey/" for addr in report_addrs if addr.strip()]


async def fetch_public_key(
    urls: Sequence[str],
    *,
    http: httpx.AsyncClient,
    backoff: Sequence[float] = DEFAULT_BACKOFF,
    attempt_timeout: float = 10.0,
) -> bytes:
    """Fetch the router's PEM key, trying each URL in order, in rounds, until one works.

    Between rounds it waits ``backoff[0]``, ``backoff[1]``, ... seconds, then keeps the last one.
    Wrap the call in ``trio.move_on_after`` / ``fail_after`` to bound the total wait.

    Args:
        urls: full key URLs (see :func:`pubkey_urls`), tried in order.
        http: the client to use.
        backoff: seconds to wait after each failed round.
        attempt_timeout: the longest one request may take.

    Returns:
        The PEM of an RSA public key, from the first URL that answered 200 with one.

    Raises:
        ValueError: ``urls`` is empty or holds a URL that is not http(s), or ``backoff`` is empty.
    """
    check_urls(urls)
    if not backoff:
        raise ValueError("backoff must not be empty")
    failures = 0
    while True:
        for url in urls:
            problem = "timed out"
            with trio.move_on_after(attempt_timeout):
                try:
                    response = await http.get(url)
                    if response.status_code != 200:
                        problem = f"answered {response.status_code}"
                    else:
                        load_public_key(response.content)
                        logger.info("fetched the router's public key from %s", url)
                        return response.content
                except httpx.HTTPError as exc:  # Cancelled is not an HTTPError: it propagates
                    problem = f"{type(exc).__name__}: {exc}"
                except ValueError as exc:
                    problem = f"sent no valid key ({exc})"
            logger.warning("cannot fetch the router's public key from %s: %s", url, problem)
        delay = backoff[min(failures, len(backoff) - 1)]
        failures += 1
        logger.info("retrying the router's public key in %g s", delay)
        await trio.sleep(delay)


async def configured_key(*, pem_text: str = "", pem_file: str = "") -> bytes | None:
    """The PEM the configuration gives, text first, then file; None when it gives none.

    Raises:
        ValueError: the PEM holds no RSA public key.
        OSError: the file cannot be read.
    """
    if pem_text:
        pem = pem_text.encode()
        logger.info("using the router's public key given in the configuration")
    elif pem_file:
        pem = await trio.Path(pem_file).read_bytes()
        logger.info("using the router's public key from %s", pem_file)
    else:
        return None
    load_public_key(pem)
    return pem


def check_urls(urls: Sequence[str]) -> None:
    """Refuse URLs that could never work, rather than retrying them forever.

    Raises:
        ValueError: ``urls`` is empty, or holds a URL that is not http(s)://host.
    """
    if not urls:
        raise ValueError("no URL to fetch the router's public key from")
    for url in urls:
        try:
            parsed = httpx.URL(url)
        except httpx.InvalidURL as exc:
            raise ValueError(f"invalid public key URL {url!r}: {exc}") from None
        if parsed.scheme not in ("http", "https") or not parsed.host:
            raise ValueError(f"invalid public key URL {url!r}: needs http(s)://host")


ROTATION_CHECK = 15.0
"""Seconds between looks at the signatures that failed (the rate limit of re-fetching)."""
ROTATION_FAILURES = 3
"""Failed signatures within one look that make the key suspect."""


async def watch_key_rotation(
    authenticator: Authenticator,
    *,
    urls: Sequence[str],
    http: httpx.AsyncClient,
    every: float = ROTATION_CHECK,
    failures: int = ROTATION_FAILURES,
    attempt_timeout: float = 10.0,
) -> None:
    """Pick up a rotated router key without a restart; runs until cancelled.

    A burst of signatures that fail to verify is what a rotated key looks like from here (or
    forgeries): the key is fetched again, at most once per ``every`` seconds, and adopted if it
    changed. A failed fetch keeps the current key.

    Args:
        authenticator: whose key to keep current (its ``bad_signatures`` is watched).
        urls: the key's URLs, tried in order.
        http: the client to fetch with.
        every: seconds between looks.
        failures: failed signatures within one look that trigger a fetch.
        attempt_timeout: the longest one request may take.
    """
    seen = authenticator.bad_signatures
    while True:
        await trio.sleep(every)
        if authenticator.bad_signatures - seen < failures:
            seen = authenticator.bad_signatures
            continue
        seen = authenticator.bad_signatures
        with trio.move_on_after(attempt_timeout * len(urls) + 1):
            pem = await fetch_public_key(
                urls, http=http, backoff=(every,), attempt_timeout=attempt_timeout
            )
            if authenticator.public_pem != pem:
                authenticator.set_public_key(pem)
                logger.warning("the router's public key changed: using the new one")


async def keep_key(
    authenticator: Authenticator,
    *,
    urls: Sequence[str],
    http: httpx.AsyncClient,
    on_loaded: Callable[[], object],
) -> None:
    """The ``key_fetch`` service: fetch the router's key until one is had (then call
    ``on_loaded``), then watch for its rotation (see :func:`watch_key_rotation`). A key given
    in the configuration is never fetched nor replaced.

    Returns at once for an unsecured worker; with no URL to fetch from, says so (once).
    """
    if authenticator.unsecured:
        return
    if not urls:
        if not authenticator.has_key:
            logger.error("no source for the router's public key: signed requests will get 503")
        return
    if authenticator.has_key:
        # Configured (--pubkey-file, PYWORKER_PUBKEY): the operator's key stays the one, and a
        # key served elsewhere never replaces it, however many signatures fail.
        return
    authenticator.set_public_key(await fetch_public_key(urls, http=http))
    on_loaded()
    await watch_key_rotation(authenticator, urls=urls, http=http)
