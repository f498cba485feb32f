"""``python -m pyworker.autoscaler``: run the local stand-in for Vast's autoscaler and router.

Point the worker's ``REPORT_ADDR`` at the printed URL, and ``python -m pyworker.client`` at it
too. Stops cleanly on Ctrl-C or SIGTERM.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
from functools import partial

import trio

from ._signer import RouterSigner
from ._standin import StandIn
from ._standin_app import serve_standin


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m pyworker.autoscaler",
        description="A local stand-in for Vast's autoscaler/router (for demos and tests).",
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on")
    parser.add_argument("--port", type=int, default=0, help="port to listen on (0: any free)")
    parser.add_argument(
        "--worker-url",
        default=None,
        help="the worker to route clients to (default: learnt from its first report)",
    )
    parser.add_argument(
        "--sign-2025",
        action="store_true",
        help="sign the 2025 message (the URL only) instead of the 2024 one",
    )
    return parser


async def _stop_on_signals(shutdown: trio.Event) -> None:
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async for signum in signals:
            print(f"{signal.Signals(signum).name}: stopping", flush=True)
            shutdown.set()
            return


async def _main(args: argparse.Namespace) -> None:
    standin = StandIn(
        signer=await RouterSigner.create(), worker_url=args.worker_url, sign_2025=args.sign_2025
    )
    shutdown = trio.Event()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_stop_on_signals, shutdown)
        async with trio.open_nursery() as server:
            url = await server.start(
                partial(serve_standin, standin, host=args.host, port=args.port, shutdown=shutdown)
            )
            print(f"stand-in autoscaler listening on {url}", flush=True)
            if standin.worker_url is not None:
                print(f"routing clients to {standin.worker_url}", flush=True)
        # The server has drained; the signal watcher is the only task left.
        nursery.cancel_scope.cancel()


def main(argv: list[str] | None = None) -> int:
    """Run the stand-in until interrupted; returns the exit status."""
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    status = 0
    try:
        trio.run(_main, args)
    except* OSError as group:  # e.g. the port is taken (nurseries wrap it in a group)
        print(f"cannot run the stand-in autoscaler: {group.exceptions[0]}", file=sys.stderr)
        status = 1
    except* KeyboardInterrupt:  # Ctrl-C before the signal watcher was installed
        status = 130
    return status


if __name__ == "__main__":
    sys.exit(main())
