"""The stand-in autoscaler with the benchmark run's router key.

``python -m bench.standin --port P --key KEY.pem``: the same stand-in as ``python -m
pyworker.autoscaler`` (:class:`pyworker.devtools.StandIn`: load reports, finished-request
records, ``/pubkey/``), signing with the private key in ``KEY.pem`` instead of a new key per
process. A worker fetches the router's key from ``REPORT_ADDR/pubkey/`` again when signatures
fail (a rotated key), so the key served there must be the one the benchmark's requests are
signed with, and stay the same when the stand-in is stopped and started again (the soak's
"autoscaler down" fault). Stops cleanly on SIGTERM or Ctrl-C.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
from collections.abc import Sequence
from functools import partial
from pathlib import Path

import trio
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.serialization import load_pem_private_key

from pyworker.devtools import RouterSigner, StandIn, serve_standin


async def _stop_on_signals(shutdown: trio.Event) -> None:
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async for _ in signals:
            shutdown.set()
            return


async def _serve(signer: RouterSigner, port: int) -> None:
    standin = StandIn(signer=signer)
    shutdown = trio.Event()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_stop_on_signals, shutdown)
        async with trio.open_nursery() as server:
            url = await server.start(
                partial(serve_standin, standin, host="127.0.0.1", port=port, shutdown=shutdown)
            )
            print(f"stand-in autoscaler listening on {url}", flush=True)
        nursery.cancel_scope.cancel()


def main(argv: Sequence[str] | None = None) -> int:
    """Serve until SIGTERM or Ctrl-C; returns the exit status."""
    parser = argparse.ArgumentParser(prog="python -m bench.standin", description=__doc__)
    parser.add_argument("--port", type=int, required=True, help="port to listen on")
    parser.add_argument("--key", type=Path, required=True, help="the router's private key (PEM)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    key = load_pem_private_key(args.key.read_bytes(), password=None)
    if not isinstance(key, rsa.RSAPrivateKey):
        parser.error(f"{args.key}: not an RSA private key")
    trio.run(_serve, RouterSigner(key), args.port)
    return 0


if __name__ == "__main__":
    sys.exit(main())
