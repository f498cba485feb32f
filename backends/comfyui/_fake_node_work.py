"""What the fake ComfyUI's nodes do when its executor runs them.

A checkpoint loads (logged the first time), text encodes, latents and images are made at their
size, the sampler takes time for each step (scaled by the image size, per the workload formula),
reports its progress and may fail, hang or crash as told, the decoder takes the prompt's fixed
cost, and the output nodes save images that ``/view`` later draws. An interrupt stops the work
between steps.
"""

from __future__ import annotations

import json
import posixpath
import random
import struct
from collections.abc import Callable, Mapping
from typing import Any

import attrs
import trio

from backends._fakekit import Faults

from ._fake_hub import Hub
from ._fake_png import color_from_int, color_from_seed, encode_png
from ._fake_records import EngineSettings, OutputFile, QueueItem, Stats

_OVERHEAD_STEPS = 6.57 / 0.61
"""The fixed cost of a prompt (decoding, saving) in sampler-step equivalents: the workload
formula's ``0.61 · steps + 6.57``, so the fake's speed is proportional to the workload."""


@attrs.frozen(kw_only=True)
class _Images:
    """The fake's image tensors: a size, a batch, and where the colours come from."""

    width: int
    height: int
    batch: int
    seed: int | None = None
    color: int | None = None

    def rgb(self, index: int) -> tuple[int, int, int]:
        if self.color is not None:
            return color_from_int(self.color)
        return color_from_seed(self.seed or 0, index)


class Interrupted(Exception):
    pass


class NodeFailure(Exception):
    pass


class NodeWork:
    """What each node does when run: a base class of
    :class:`~backends.comfyui._fake_engine.Engine`, whose state (declared below) it works on."""

    __slots__ = ()

    settings: EngineSettings
    log: Callable[[str], None]
    faults: Faults
    hub: Hub
    stats: Stats
    files: dict[tuple[str, str, str], OutputFile]
    _counters: dict[tuple[str, str], int]
    _loaded: set[str]
    _interrupt: trio.Event

    async def _run_node(
        self,
        item: QueueItem,
        node_id: str,
        node: dict[str, Any],
        inputs: dict[str, Any],
        fail: bool,
    ) -> tuple[Any, dict[str, Any] | None]:
        """Run one node: its outputs (a tuple, indexed by links) and its UI output."""
        kind = node["class_type"]
        if fail and kind != "KSampler":
            raise NodeFailure("fake node failure (--node-failure-rate)")
        if kind == "CheckpointLoaderSimple":
            name = inputs["ckpt_name"]
            if name not in self._loaded:
                self._loaded.add(name)
                self.log("model weight dtype torch.float16, manual cast: None")
                self.log("model_type EPS")
            return (f"model:{name}", f"clip:{name}", f"vae:{name}"), None
        if kind == "CLIPTextEncode":
            return (f"cond:{inputs['text']}",), None
        if kind == "EmptyLatentImage":
            return (_Images(**_size(inputs)),), None
        if kind == "EmptyImage":
            return (_Images(**_size(inputs), color=inputs["color"]),), None
        if kind == "KSampler":
            latent: _Images = inputs["latent_image"]
            await self._sample(item, node_id, latent, int(inputs["steps"]), fail)
            return (attrs.evolve(latent, seed=int(inputs["seed"])),), None
        if kind == "VAEDecode":
            images: _Images = inputs["samples"]
            await self._work(self._step_seconds(images) * _OVERHEAD_STEPS)
            return (images,), None
        if kind in {"SaveImage", "PreviewImage"}:
            return (), {"images": self._save(item, kind, inputs)}
        raise NodeFailure(f"node {kind} cannot run in the fake")

    def _step_seconds(self, images: _Images) -> float:
        tiles = images.width * images.height * images.batch / (512 * 512)
        return self.settings.step_time * (175 * tiles + 85) / 260

    async def _work(self, seconds: float) -> None:
        """Spend ``seconds``, stopping early for an interrupt."""
        with trio.move_on_after(seconds):
            await self._interrupt.wait()
        if self._interrupt.is_set():
            raise Interrupted

    async def _sample(
        self, item: QueueItem, node_id: str, latent: _Images, steps: int, fail: bool
    ) -> None:
        settings = self.settings
        per_step = self._step_seconds(latent)
        client = item.client_id
        started = trio.current_time()
        for step in range(steps):
            if fail and step == steps // 2:
                raise NodeFailure("fake node failure (--node-failure-rate)")
            await self.faults.fail_point(
                step,
                on_crash=self._crashing,
                on_hang=self._hanging,
                hang_until=self._interrupt.wait,
            )
            await self._work(per_step)
            self.stats.steps += 1
            self.hub.send(
                "progress",
                {"value": step + 1, "max": steps, "prompt_id": item.prompt_id, "node": node_id},
                client,
            )
            if settings.previews and client is not None:
                preview = encode_png(8, 8, color_from_seed(step))
                self.hub.send_bytes(struct.pack(">II", 1, 2) + preview, client)
        elapsed = max(trio.current_time() - started, 1e-6)
        self.log(
            f"100%|{'█' * 10}| {steps}/{steps} [00:{int(elapsed):02d}<00:00, "
            f"{steps / elapsed:6.2f}it/s]"
        )

    def _crashing(self, step: int) -> None:
        self.log(f"fake crash after {step} sampler steps (--crash-after)")

    def _hanging(self, step: int) -> None:
        self.log(f"sampler stuck after {step} steps (--hang-after)")

    def _save(self, item: QueueItem, kind: str, inputs: dict[str, Any]) -> list[dict[str, str]]:
        images: _Images = inputs["images"]
        if kind == "SaveImage":
            kind_dir = "output"
            prefix = str(inputs.get("filename_prefix") or "ComfyUI")
        else:
            kind_dir = "temp"
            prefix = "ComfyUI_temp_" + "".join(
                random.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(5)
            )
        subfolder, base = posixpath.split(prefix)
        if subfolder.startswith("/") or ".." in subfolder.split("/"):
            raise NodeFailure(f"Saving image outside the output folder is not allowed: {prefix}")
        prompt_json = json.dumps(item.prompt)
        saved = []
        for index in range(images.batch):
            counter = self._counters.get((subfolder, base), 0) + 1
            self._counters[(subfolder, base)] = counter
            filename = f"{base}_{counter:05}_.png"
            self.files[(kind_dir, subfolder, filename)] = OutputFile(
                width=images.width,
                height=images.height,
                rgb=images.rgb(index),
                prompt_json=prompt_json,
            )
            saved.append({"filename": filename, "subfolder": subfolder, "type": kind_dir})
        return saved


def _size(inputs: Mapping[str, Any]) -> dict[str, int]:
    return {
        "width": int(inputs["width"]),
        "height": int(inputs["height"]),
        "batch": int(inputs["batch_size"]),
    }
