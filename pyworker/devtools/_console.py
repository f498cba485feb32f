"""The client's side of Vast's console: the endpoint group's key, and the TLS root.

A user holds an *account* key; routing needs the endpoint group's own key, which the console
lists (:func:`endpoint_key`). Workers that serve TLS (``USE_SSL=true``) present certificates
that chain to Vast's own root, which Vast's client downloads from the console and trusts beside
the usual ones (:func:`vast_tls_context`).
"""

from __future__ import annotations

import ssl

import httpx
import trio

from ._route_records import USER_AGENT, describe_error

__all__ = ["CONSOLE_URL", "ConsoleError", "endpoint_key", "vast_tls_context"]

CONSOLE_URL = "https://console.vast.ai"
"""Vast's console."""
CONSOLE_TIMEOUT = 30.0
"""Seconds for one call to the console (Vast's client's)."""
ROOT_CERTIFICATE_PATH = "/static/jvastai_root.cer"
"""The console's path of the root certificate that workers' TLS certificates chain to."""


class ConsoleError(Exception):
    """The console did not give what was asked (the message says why)."""


async def endpoint_key(
    http: httpx.AsyncClient,
    *,
    account_key: str,
    endpoint: str,
    console: str = CONSOLE_URL,
    attempts: int = 3,
    pause: float = 1.0,
) -> str:
    """The endpoint group's own key, from the console's list of the account's groups.

    ``GET {console}/api/v0/endptjobs/`` with the account key (as ``Authorization: Bearer`` and
    ``?api_key=``, as Vast's client sends it) answers ``{"results": [{"endpoint_name",
    "api_key", ...}, ...]}``. A console that cannot be reached, or answers 429 or 5xx, is
    asked again, up to ``attempts`` times in all, ``pause`` seconds apart (doubling).

    Raises:
        ConsoleError: the console cannot be reached, refused the key, or lists no such group.
    """
    url = f"{console.rstrip('/')}/api/v0/endptjobs/"
    headers = {"Authorization": f"Bearer {account_key}", "User-Agent": USER_AGENT}
    if attempts < 1:
        raise ValueError(f"attempts must be at least 1, not {attempts}")
    failure = ""
    for attempt in range(attempts):
        if attempt:
            await trio.sleep(pause * 2 ** (attempt - 1))
        try:
            response = await http.get(
                url,
                params={"client_id": "me", "api_key": account_key},
                headers=headers,
                timeout=CONSOLE_TIMEOUT,
            )
        except httpx.RequestError as exc:
            failure = f"cannot reach the console at {console}: {describe_error(exc)}"
            continue
        if response.status_code != 429 and response.status_code < 500:
            break
        failure = f"the console answered {response.status_code}: {response.text[:300].strip()}"
    else:
        raise ConsoleError(f"{failure} ({attempts} attempts)")
    if response.status_code in (401, 403):
        raise ConsoleError(f"the console refused the account key ({response.status_code})")
    if not response.is_success:
        raise ConsoleError(
            f"the console answered {response.status_code}: {response.text[:300].strip()}"
        )
    try:
        results = response.json()["results"]
        groups = {
            entry["endpoint_name"]: entry["api_key"] for entry in results if isinstance(entry, dict)
        }
    except (ValueError, KeyError, TypeError):
        raise ConsoleError(
            f"the console's answer is not a list of groups: {response.text[:300].strip()}"
        ) from None
    key = groups.get(endpoint)
    if not isinstance(key, str):
        known = ", ".join(sorted(str(name) for name in groups)) or "none"
        raise ConsoleError(f"the account has no endpoint group {endpoint!r} (it has: {known})")
    return key


def _tls_context(root: bytes) -> ssl.SSLContext:
    import certifi

    context = ssl.create_default_context(cafile=certifi.where())
    if root.lstrip().startswith(b"-----BEGIN"):
        context.load_verify_locations(cadata=root.decode("ascii"))
    else:
        context.load_verify_locations(cadata=root)  # DER
    # As Vast's client: its root carries a path length without keyCertSign, which OpenSSL 3's
    # strict mode refuses.
    context.verify_flags &= ~ssl.VERIFY_X509_STRICT
    return context


async def vast_tls_context(http: httpx.AsyncClient, console: str = CONSOLE_URL) -> ssl.SSLContext:
    """A TLS context that trusts the usual roots and Vast's, downloaded from the console, as
    Vast's client trusts workers that serve TLS (``USE_SSL=true``).

    Raises:
        ConsoleError: the root cannot be downloaded, or is not a certificate.
    """
    url = f"{console.rstrip('/')}{ROOT_CERTIFICATE_PATH}"
    try:
        response = await http.get(url, headers={"User-Agent": USER_AGENT}, timeout=CONSOLE_TIMEOUT)
    except httpx.RequestError as exc:
        raise ConsoleError(f"cannot download Vast's TLS root: {describe_error(exc)}") from exc
    if not response.is_success:
        raise ConsoleError(
            f"cannot download Vast's TLS root: {url} answered {response.status_code}"
        )
    try:
        # Loading the default roots reads files: not on the event loop.
        return await trio.to_thread.run_sync(_tls_context, response.content)
    except (ssl.SSLError, ValueError) as exc:
        raise ConsoleError(f"{url} is not a certificate: {exc}") from exc
