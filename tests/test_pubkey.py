"""Tests for pyworker._pubkey: the router's public key, fetched (in memory, virtual time: the
back-off, the URLs in turn, a hanging one), configured (text or file; never replaced), and
fetched again when the router rotates it. Verifying signatures is in ``test_auth.py``."""

from __future__ import annotations

import itertools
from collections.abc import Callable, Coroutine
from functools import partial
from pathlib import Path

import httpx
import pytest
import trio
import trio.testing
from harness import accept, make_auth, refusal, signed

from pyworker._pubkey import (
    configured_key,
    fetch_public_key,
    keep_key,
    pubkey_urls,
    watch_key_rotation,
)
from pyworker.devtools import RouterSigner

# --- fetching the key (in memory, virtual time) ----------------------------------------------


Handler = Callable[[httpx.Request], Coroutine[None, None, httpx.Response]]


async def no_requests(request: httpx.Request) -> httpx.Response:
    raise AssertionError(f"unexpected request to {request.url}")


def mock_client(handler: Handler) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.MockTransport(handler))


def test_pubkey_urls() -> None:
    assert pubkey_urls(["http://a:1/", "http://b:2", " "]) == [
        "http://a:1/pubkey/",
        "http://b:2/pubkey/",
    ]


async def test_fetch_backs_off_1_2_4_until_the_key_comes(
    signer: RouterSigner, autojump_clock: trio.testing.MockClock
) -> None:
    times: list[float] = []

    async def handler(request: httpx.Request) -> httpx.Response:
        times.append(trio.current_time())
        if len(times) <= 3:
            return httpx.Response(500)
        return httpx.Response(200, content=signer.public_pem())

    async with mock_client(handler) as http:
        pem = await fetch_public_key(["http://router/pubkey/"], http=http)
    assert pem == signer.public_pem()
    assert times == [0.0, 1.0, 3.0, 7.0]


async def test_fetch_backoff_stays_at_16_seconds(
    signer: RouterSigner, autojump_clock: trio.testing.MockClock
) -> None:
    times: list[float] = []

    async def handler(request: httpx.Request) -> httpx.Response:
        times.append(trio.current_time())
        if len(times) <= 7:
            raise httpx.ConnectError("refused", request=request)
        return httpx.Response(200, content=signer.public_pem())

    async with mock_client(handler) as http:
        await fetch_public_key(["http://router/pubkey/"], http=http)
    assert [b - a for a, b in itertools.pairwise(times)] == [1, 2, 4, 8, 16, 16, 16]


async def test_fetch_tries_each_url_in_order_and_skips_bad_keys(
    signer: RouterSigner, autojump_clock: trio.testing.MockClock
) -> None:
    asked: list[str] = []

    async def handler(request: httpx.Request) -> httpx.Response:
        asked.append(request.url.host)
        if request.url.host == "a":
            return httpx.Response(503)
        if request.url.host == "b":
            return httpx.Response(200, content=b"not a key")
        return httpx.Response(200, content=signer.public_pem())

    urls = pubkey_urls(["http://a", "http://b", "http://c"])
    async with mock_client(handler) as http:
        assert await fetch_public_key(urls, http=http) == signer.public_pem()
    assert asked == ["a", "b", "c"]
    assert trio.current_time() == 0.0  # the third URL answered in the first round


async def test_fetch_gives_up_on_a_hanging_url_after_attempt_timeout(
    signer: RouterSigner, autojump_clock: trio.testing.MockClock
) -> None:
    async def handler(request: httpx.Request) -> httpx.Response:
        if request.url.host == "slow":
            await trio.sleep_forever()
        return httpx.Response(200, content=signer.public_pem())

    urls = pubkey_urls(["http://slow", "http://fast"])
    async with mock_client(handler) as http:
        await fetch_public_key(urls, http=http, attempt_timeout=3)
    assert trio.current_time() == 3.0


async def test_fetch_is_cancellable(autojump_clock: trio.testing.MockClock) -> None:
    async def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(500)

    async with mock_client(handler) as http:
        with trio.move_on_after(100) as scope:
            await fetch_public_key(["http://router/pubkey/"], http=http)
    assert scope.cancelled_caught


@pytest.mark.parametrize(
    ("urls", "match"),
    [([], "no URL"), (["ftp://router/pubkey/"], "needs http"), (["http://[::1"], "invalid")],
)
async def test_fetch_refuses_urls_that_cannot_work(urls: list[str], match: str) -> None:
    async with mock_client(no_requests) as http:
        with pytest.raises(ValueError, match=match):
            await fetch_public_key(urls, http=http)


# --- a configured key, a rotated key ---------------------------------------------------------


async def test_configured_key_from_text_or_file(signer: RouterSigner, tmp_path: Path) -> None:
    pem_path = tmp_path / "router.pem"
    pem_path.write_bytes(signer.public_pem())
    assert await configured_key() is None
    assert await configured_key(pem_text=signer.public_pem().decode()) == signer.public_pem()
    assert await configured_key(pem_file=str(pem_path)) == signer.public_pem()
    # The text wins over the file.
    assert await configured_key(pem_text=signer.public_pem().decode(), pem_file="/nope") == (
        signer.public_pem()
    )


async def test_configured_key_refuses_a_bad_pem_or_a_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="not a PEM"):
        await configured_key(pem_text="junk")
    with pytest.raises(FileNotFoundError):
        await configured_key(pem_file=str(tmp_path / "missing.pem"))


async def test_a_rotated_router_key_is_picked_up_after_a_burst_of_bad_signatures(
    signer: RouterSigner, other_signer: RouterSigner, autojump_clock: trio.testing.MockClock
) -> None:
    served = [signer.public_pem()]
    fetches: list[float] = []

    async def router(request: httpx.Request) -> httpx.Response:
        fetches.append(trio.current_time())
        return httpx.Response(200, content=served[0])

    authenticator = make_auth(signer)
    async with mock_client(router) as http, trio.open_nursery() as nursery:
        nursery.start_soon(
            partial(watch_key_rotation, authenticator, urls=["http://router/pubkey/"], http=http)
        )
        # A forgery or two is no reason to fetch the key again.
        for reqnum in range(2):
            refusal(authenticator, signed(other_signer, reqnum=reqnum))
        await trio.sleep(20)
        assert fetches == []
        # The router rotates its key: requests signed with the new one fail, in a burst...
        served[0] = other_signer.public_pem()
        for reqnum in range(2, 6):
            refusal(authenticator, signed(other_signer, reqnum=reqnum))
        await trio.sleep(16)
        # ... so the key is fetched again (once per look at most), and the new one is used.
        assert len(fetches) == 1
        accept(authenticator, signed(other_signer, reqnum=10))
        assert "invalid signature" in refusal(authenticator, signed(signer, reqnum=11)).reason
        nursery.cancel_scope.cancel()


async def test_a_configured_key_is_never_replaced_by_a_fetched_one(
    signer: RouterSigner, other_signer: RouterSigner, autojump_clock: trio.testing.MockClock
) -> None:
    fetches: list[float] = []

    async def router(request: httpx.Request) -> httpx.Response:
        fetches.append(trio.current_time())
        return httpx.Response(200, content=other_signer.public_pem())

    authenticator = make_auth(signer)  # the key the operator gave
    loaded: list[bool] = []
    async with mock_client(router) as http:
        # Returns at once: nothing to fetch, nothing to watch.
        with trio.fail_after(1):
            await keep_key(
                authenticator,
                urls=["http://router/pubkey/"],
                http=http,
                on_loaded=lambda: loaded.append(True),
            )
    for reqnum in range(10):  # a burst of bad signatures changes nothing
        refusal(authenticator, signed(other_signer, reqnum=reqnum))
    assert (fetches, loaded) == ([], [])
    accept(authenticator, signed(signer, reqnum=20))
