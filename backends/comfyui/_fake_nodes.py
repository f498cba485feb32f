"""The fake ComfyUI's node classes: what ``GET /object_info`` lists, and what validation checks.

Each class names its required inputs (widgets with their limits, combo lists, or the type of
a linked output) and its outputs; only the classes the fake can run are here.
:mod:`._fake_validation` checks submitted prompts against them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import attrs

SAMPLERS = (
    "euler",
    "euler_cfg_pp",
    "euler_ancestral",
    "euler_ancestral_cfg_pp",
    "heun",
    "heunpp2",
    "dpm_2",
    "dpm_2_ancestral",
    "lms",
    "dpm_fast",
    "dpm_adaptive",
    "dpmpp_2s_ancestral",
    "dpmpp_sde",
    "dpmpp_sde_gpu",
    "dpmpp_2m",
    "dpmpp_2m_sde",
    "dpmpp_2m_sde_gpu",
    "dpmpp_3m_sde",
    "dpmpp_3m_sde_gpu",
    "ddpm",
    "lcm",
    "ipndm",
    "deis",
    "ddim",
    "uni_pc",
    "uni_pc_bh2",
)
SCHEDULERS = (
    "simple",
    "sgm_uniform",
    "karras",
    "exponential",
    "ddim_uniform",
    "beta",
    "normal",
    "linear_quadratic",
    "kl_optimal",
)
_WIDGETS = frozenset({"INT", "FLOAT", "STRING", "BOOLEAN"})


@attrs.frozen(kw_only=True)
class InputSpec:
    """One input of a node class.

    Attributes:
        type: ``INT``, ``FLOAT``, ``STRING``, ``BOOLEAN``, a tuple of choices (a combo), or
            the type of a linked output (``MODEL``, ``CLIP``, ``LATENT``, ``IMAGE``, ...).
        options: the widget's ``default``, ``min``, ``max``, ``step``, ``tooltip``...
    """

    type: str | tuple[str, ...]
    options: Mapping[str, Any] = attrs.field(factory=dict)

    def config(self) -> list[Any]:
        """The ``/object_info`` form: ``[type_or_choices, options]``."""
        kind: Any = list(self.type) if isinstance(self.type, tuple) else self.type
        return [kind, dict(self.options)] if self.options else [kind]

    @property
    def is_link(self) -> bool:
        """Whether the input takes another node's output, not a literal value."""
        return isinstance(self.type, str) and self.type not in _WIDGETS


@attrs.frozen(kw_only=True)
class NodeClass:
    """A node class the fake can validate and run."""

    name: str
    display_name: str
    category: str
    required: Mapping[str, InputSpec]
    outputs: tuple[str, ...] = ()
    output_names: tuple[str, ...] | None = None
    output_node: bool = False
    description: str = ""

    def object_info(self) -> dict[str, Any]:
        """This class as ``GET /object_info`` describes it."""
        return {
            "input": {"required": {k: v.config() for k, v in self.required.items()}},
            "input_order": {"required": list(self.required)},
            "output": list(self.outputs),
            "output_is_list": [False] * len(self.outputs),
            "output_name": list(self.output_names or self.outputs),
            "name": self.name,
            "display_name": self.display_name,
            "description": self.description,
            "python_module": "nodes",
            "category": self.category,
            "output_node": self.output_node,
        }


def _int(default: int, minimum: int, maximum: int, step: int = 1) -> InputSpec:
    return InputSpec(
        type="INT", options={"default": default, "min": minimum, "max": maximum, "step": step}
    )


def catalogue(checkpoints: Sequence[str]) -> dict[str, NodeClass]:
    """The node classes, with ``checkpoints`` as the installed checkpoint files."""
    classes = [
        NodeClass(
            name="CheckpointLoaderSimple",
            display_name="Load Checkpoint",
            category="loaders",
            required={"ckpt_name": InputSpec(type=tuple(checkpoints))},
            outputs=("MODEL", "CLIP", "VAE"),
            description="Loads a diffusion model checkpoint.",
        ),
        NodeClass(
            name="CLIPTextEncode",
            display_name="CLIP Text Encode (Prompt)",
            category="conditioning",
            required={
                "text": InputSpec(type="STRING", options={"multiline": True}),
                "clip": InputSpec(type="CLIP"),
            },
            outputs=("CONDITIONING",),
        ),
        NodeClass(
            name="EmptyLatentImage",
            display_name="Empty Latent Image",
            category="latent",
            required={
                "width": _int(512, 16, 16384, 8),
                "height": _int(512, 16, 16384, 8),
                "batch_size": _int(1, 1, 4096),
            },
            outputs=("LATENT",),
        ),
        NodeClass(
            name="KSampler",
            display_name="KSampler",
            category="sampling",
            required={
                "model": InputSpec(type="MODEL"),
                "seed": _int(0, 0, 0xFFFFFFFFFFFFFFFF),
                "steps": _int(20, 1, 10000),
                "cfg": InputSpec(
                    type="FLOAT",
                    options={"default": 8.0, "min": 0.0, "max": 100.0, "step": 0.1},
                ),
                "sampler_name": InputSpec(type=SAMPLERS),
                "scheduler": InputSpec(type=SCHEDULERS),
                "positive": InputSpec(type="CONDITIONING"),
                "negative": InputSpec(type="CONDITIONING"),
                "latent_image": InputSpec(type="LATENT"),
                "denoise": InputSpec(
                    type="FLOAT",
                    options={"default": 1.0, "min": 0.0, "max": 1.0, "step": 0.01},
                ),
            },
            outputs=("LATENT",),
        ),
        NodeClass(
            name="VAEDecode",
            display_name="VAE Decode",
            category="latent",
            required={"samples": InputSpec(type="LATENT"), "vae": InputSpec(type="VAE")},
            outputs=("IMAGE",),
        ),
        NodeClass(
            name="EmptyImage",
            display_name="EmptyImage",
            category="image",
            required={
                "width": _int(512, 1, 16384),
                "height": _int(512, 1, 16384),
                "batch_size": _int(1, 1, 4096),
                "color": _int(0, 0, 0xFFFFFF),
            },
            outputs=("IMAGE",),
        ),
        NodeClass(
            name="SaveImage",
            display_name="Save Image",
            category="image",
            required={
                "images": InputSpec(type="IMAGE"),
                "filename_prefix": InputSpec(type="STRING", options={"default": "ComfyUI"}),
            },
            output_node=True,
            description="Saves the input images to your ComfyUI output directory.",
        ),
        NodeClass(
            name="PreviewImage",
            display_name="Preview Image",
            category="image",
            required={"images": InputSpec(type="IMAGE")},
            output_node=True,
            description="Saves the input images to your ComfyUI temp directory.",
        ),
    ]
    return {c.name: c for c in classes}
