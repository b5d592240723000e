"""Tiny, randomly initialised diffusers folders for tests, docs and benchmarks (seconds to build).

Each builder creates the diffusers objects with a fixed seed, saves them with
``save_pretrained`` (safetensors) under ``folder`` and returns the folder, so that a test can
load the same folder through ddkit and through diffusers.

.. versionadded:: 0.1.0
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

__all__ = [
    "save_pipeline_folder",
    "seeded",
    "tiny_autoencoder_kl",
    "tiny_conditional_unet",
    "tiny_dit",
    "tiny_unet",
]


def tiny_unet(
    *,
    channels: int = 3,
    sample_size: int = 8,
    num_class_embeds: int | None = None,
    class_embed_type: str | None = None,
) -> Any:
    """A UNet2DModel of two resolutions (8 and 16 channels), no attention."""
    from diffusers import UNet2DModel

    build: Any = UNet2DModel  # diffusers' constructors are untyped
    return build(
        sample_size=sample_size,
        in_channels=channels,
        out_channels=channels,
        layers_per_block=1,
        block_out_channels=(8, 16),
        down_block_types=("DownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "UpBlock2D"),
        norm_num_groups=4,
        num_class_embeds=num_class_embeds,
        class_embed_type=class_embed_type,
    )


def tiny_conditional_unet(*, channels: int = 4, sample_size: int = 8, cross_attention_dim: int = 16) -> Any:
    """A UNet2DConditionModel with one cross-attention resolution, taking ``[B, L, cross_attention_dim]``."""
    from diffusers import UNet2DConditionModel

    build: Any = UNet2DConditionModel  # diffusers' constructors are untyped
    return build(
        sample_size=sample_size,
        in_channels=channels,
        out_channels=channels,
        layers_per_block=1,
        block_out_channels=(8, 16),
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=cross_attention_dim,
        attention_head_dim=2,
        norm_num_groups=4,
    )


def tiny_dit(*, channels: int = 4, sample_size: int = 8, num_classes: int = 4) -> Any:
    """A class-conditional DiTTransformer2DModel (one block, patch 2), null class ``num_classes``."""
    from diffusers import DiTTransformer2DModel

    build: Any = DiTTransformer2DModel  # diffusers' constructors are untyped
    return build(
        num_attention_heads=2,
        attention_head_dim=8,
        in_channels=channels,
        out_channels=channels,
        num_layers=1,
        sample_size=sample_size,
        patch_size=2,
        num_embeds_ada_norm=num_classes,
    )


def tiny_autoencoder_kl(
    *, latent_channels: int = 4, scaling_factor: float = 0.5, shift_factor: float | None = 0.1
) -> Any:
    """An AutoencoderKL halving the resolution (3-channel images, ``latent_channels`` latents)."""
    from diffusers import AutoencoderKL

    build: Any = AutoencoderKL  # diffusers' constructors are untyped
    return build(
        in_channels=3,
        out_channels=3,
        latent_channels=latent_channels,
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
        block_out_channels=(8, 16),
        layers_per_block=1,
        norm_num_groups=4,
        sample_size=16,
        scaling_factor=scaling_factor,
        shift_factor=shift_factor,
    )


def save_pipeline_folder(
    folder: str | Path,
    network: Any,
    scheduler: Any,
    *,
    vae: Any = None,
    extra_components: Mapping[str, Any] | None = None,
) -> Path:
    """Save ``network`` (``unet`` or ``transformer``), ``scheduler`` and ``vae`` as a pipeline folder.

    Writes what diffusers' ``DiffusionPipeline.save_pretrained`` writes for these components
    (each in its folder, and ``model_index.json`` naming their classes); ``extra_components``
    adds raw ``model_index.json`` entries (e.g. to test refusals).
    """
    root = Path(folder)
    root.mkdir(parents=True, exist_ok=True)
    slot = "transformer" if "Transformer" in type(network).__name__ else "unet"
    network.save_pretrained(root / slot, safe_serialization=True)
    scheduler.save_pretrained(root / "scheduler")
    index: dict[str, Any] = {
        "_class_name": "DiffusionPipeline",
        "_diffusers_version": _diffusers_version(),
        slot: ["diffusers", type(network).__name__],
        "scheduler": ["diffusers", type(scheduler).__name__],
    }
    if vae is not None:
        vae.save_pretrained(root / "vae", safe_serialization=True)
        index["vae"] = ["diffusers", type(vae).__name__]
    index.update(extra_components or {})
    (root / "model_index.json").write_text(json.dumps(index, indent=2), encoding="utf-8")
    return root


def _diffusers_version() -> str:
    import diffusers

    return str(diffusers.__version__)


def seeded(seed: int, build: Any, **kwargs: Any) -> Any:
    """``build(**kwargs)`` with torch's global generator seeded, so random weights repeat."""
    state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        return build(**kwargs)
    finally:
        torch.random.set_rng_state(state)
