"""The command-line options that say where requests go, shared by the client and the load tester.

``-k ACCOUNT_KEY -e GROUP`` routes through Vast's router (``--router``, default
https://run.vast.ai) with the group's key from Vast's console (``--console``); ``--router URL``
alone routes through a local stand-in, which needs no key.
"""

from __future__ import annotations

import argparse
import ssl
from urllib.parse import urlsplit

import httpx

from ._console import CONSOLE_URL, endpoint_key, vast_tls_context
from ._route_records import ROUTER_URL, Patience, Target

__all__ = ["add_target_options", "check_target_options", "patience_from", "resolve_target"]

DEFAULT_ENDPOINT = "default"
"""The group name sent to a router that was given without ``-e`` (a stand-in takes any)."""


def add_target_options(parser: argparse.ArgumentParser) -> None:
    """Add ``-k``, ``-e``, ``--endpoint-key``, ``--router`` (alias ``--autoscaler``),
    ``--console``, ``--max-poll-interval`` and ``--max-attempts`` to ``parser``."""
    group = parser.add_argument_group("routing")
    group.add_argument(
        "-k",
        "--api-key",
        metavar="ACCOUNT_KEY",
        help="your Vast account's API key: the endpoint group's own key is looked up at the "
        "console with it",
    )
    group.add_argument(
        "-e",
        "--endpoint",
        metavar="GROUP",
        help="the endpoint group's name (with -k, or any name for a local stand-in)",
    )
    group.add_argument(
        "--endpoint-key",
        metavar="KEY",
        help="the endpoint group's own key, instead of looking it up with -k",
    )
    group.add_argument(
        "--router",
        "--autoscaler",
        dest="router",
        default=ROUTER_URL,
        metavar="URL",
        help=f"the router's base URL (default {ROUTER_URL}; a local stand-in's URL, e.g. the "
        "demo's, needs no key)",
    )
    group.add_argument(
        "--console",
        default=CONSOLE_URL,
        metavar="URL",
        help=f"Vast's console, for -k and the workers' TLS root (default {CONSOLE_URL})",
    )
    group.add_argument(
        "--max-poll-interval",
        type=float,
        default=5.0,
        metavar="SECONDS",
        help="the longest pause between polls of a router that says wait, or before a re-route "
        "(default 5, as Vast's client)",
    )
    group.add_argument(
        "--max-attempts",
        type=int,
        default=5,
        metavar="N",
        help="workers tried at most per request: 408, 429, 5xx and unreachable workers "
        "re-route (default 5)",
    )


def _is_vast(router: str) -> bool:
    return router.rstrip("/") == ROUTER_URL


def check_target_options(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Exit through ``parser.error`` when the routing options cannot work together."""
    if args.api_key is not None and not args.endpoint:
        parser.error("-k needs the endpoint group's name (-e GROUP)")
    if args.api_key is not None and args.endpoint_key is not None:
        parser.error("give either -k (looked up at the console) or --endpoint-key, not both")
    if _is_vast(args.router) and args.api_key is None and args.endpoint_key is None:
        parser.error(
            f"routing through {ROUTER_URL} needs your account key and the group's name "
            "(-k ACCOUNT_KEY -e GROUP); for a local stand-in pass --router URL"
        )
    if not urlsplit(args.router).scheme.startswith("http"):
        parser.error(f"--router {args.router!r} is not an http(s) URL")
    if args.max_poll_interval <= 0:
        parser.error("--max-poll-interval must be positive")
    if args.max_attempts < 1:
        parser.error("--max-attempts must be at least 1")


def patience_from(args: argparse.Namespace) -> Patience:
    """The pauses and bounds the options ask for."""
    return Patience(max_poll_interval=args.max_poll_interval, max_attempts=args.max_attempts)


async def resolve_target(
    args: argparse.Namespace, http: httpx.AsyncClient
) -> tuple[Target, ssl.SSLContext | None]:
    """The target the options name, asking the console for what it must.

    Args:
        args: options checked by :func:`check_target_options`.
        http: a client for the console.

    Returns:
        The target, and the TLS context that trusts Vast's root besides the usual ones when
        the router is reached over https (Vast's workers serve TLS with certificates from that
        root); None for a plain-http router (a local stand-in and its workers).

    Raises:
        ConsoleError: the console did not give the group's key or the TLS root.
    """
    key = args.endpoint_key
    if args.api_key is not None:
        key = await endpoint_key(
            http, account_key=args.api_key, endpoint=args.endpoint, console=args.console
        )
    target = Target(endpoint=args.endpoint or DEFAULT_ENDPOINT, router=args.router, api_key=key)
    tls = None
    if urlsplit(args.router).scheme == "https":
        tls = await vast_tls_context(http, args.console)
    return target, tls
