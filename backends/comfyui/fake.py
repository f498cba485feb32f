"""A fake ComfyUI: its HTTP API, websocket, queue and log lines, with no model and no GPU.

``python -m backends.comfyui.fake --port P --log PATH [knobs]`` (``--help`` lists the knobs).
Nothing listens while it "imports custom nodes" (``--load-delay``); once the port accepts, it
logs ComfyUI's ready line ``To see the GUI go to: http://HOST:PORT`` (see
:mod:`backends.comfyui._fake_launcher`). Its routes and websocket are those of ComfyUI's
server (see :mod:`backends.comfyui._fake_app`), served through hypercorn by the kit, since the
kit's own HTTP server has no websockets; prompts run in :mod:`backends.comfyui._fake_engine`.

Nodes: ``CheckpointLoaderSimple``, ``CLIPTextEncode``, ``EmptyLatentImage``, ``KSampler``,
``VAEDecode``, ``EmptyImage``, ``SaveImage``, ``PreviewImage``.

Besides the kit's knobs (in sampler steps for ``--hang-after`` and ``--crash-after``; a
``POST /prompt`` answered 500 for ``--error-rate``; ``GET /system_stats`` for
``--slow-health``): ``--listen`` (ComfyUI's name for ``--host``), ``--step-time``,
``--node-failure-rate``, ``--fail-on-text``, ``--previews`` and ``--checkpoints``.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from functools import partial

from backends._fakekit import (
    Knobs,
    LogWriter,
    bare,
    fraction,
    knob_parser,
    non_negative,
    run_process,
)

from ._fake_engine import Engine
from ._fake_launcher import Launcher
from ._fake_records import EngineSettings

DEFAULT_PORT = 8188
DEFAULT_CHECKPOINTS = ("v1-5-pruned-emaonly.safetensors", "sd_xl_base_1.0.safetensors")


def _default_checkpoints() -> str:
    # The model a Vast template asks for is "installed" too.
    model = os.environ.get("COMFY_MODEL")
    names = [*DEFAULT_CHECKPOINTS, *([model] if model and model not in DEFAULT_CHECKPOINTS else [])]
    return ",".join(names)


def parser() -> argparse.ArgumentParser:
    """The fake's command line: the kit's knobs and ComfyUI's."""
    p = knob_parser(
        "a fake ComfyUI server (no model, no GPU)",
        port=DEFAULT_PORT,
        capacity=False,
        unit="sampler steps",
    )
    add = p.add_argument
    add("--listen", dest="host", default=argparse.SUPPRESS, help="ComfyUI's name for --host")
    add(
        "--step-time",
        type=non_negative,
        default=0.005,
        metavar="S",
        help="seconds per sampler step of a 512x512 image; larger images take longer (%(default)s)",
    )
    add(
        "--node-failure-rate",
        type=fraction,
        default=0.0,
        metavar="F",
        help="fraction of prompts whose sampler raises (execution_error), per --seed",
    )
    add(
        "--fail-on-text",
        metavar="TEXT",
        help="prompts whose CLIPTextEncode text contains TEXT fail in the sampler",
    )
    add("--previews", action="store_true", help="send binary preview frames on the websocket")
    add(
        "--checkpoints",
        default=_default_checkpoints(),
        help="comma-separated installed checkpoints (%(default)s)",
    )
    return p


def parse(argv: Sequence[str] | None = None) -> tuple[Knobs, EngineSettings]:
    """Parse the command line (``sys.argv[1:]`` by default).

    Raises:
        SystemExit: bad arguments (argparse prints why), or ``--help``.
    """
    namespace = parser().parse_args(argv)
    settings = EngineSettings(
        checkpoints=tuple(c for c in namespace.checkpoints.split(",") if c),
        step_time=namespace.step_time,
        node_failure_rate=namespace.node_failure_rate,
        fail_on_text=namespace.fail_on_text,
        previews=namespace.previews,
        seed=namespace.seed,
    )
    return Knobs.from_namespace(namespace), settings


def main(argv: Sequence[str] | None = None) -> int:
    """Run the fake until SIGTERM or SIGINT (0) or a failed start (1); returns the status."""
    knobs, settings = parse(argv)

    def make(log: LogWriter) -> Launcher:
        engine = Engine(settings=settings, log=log.info, faults=knobs.faults())
        return Launcher(engine=engine, log=log)

    return run_process(
        make, knobs, open_log=partial(LogWriter.open, line_format=bare, levels_on_stderr=True)
    )


if __name__ == "__main__":
    sys.exit(main())
