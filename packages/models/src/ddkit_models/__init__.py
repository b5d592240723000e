"""ddkit-models: networks for ddkit.

The ADM U-Net, its upsampler and its noisy-image classifier (guided-diffusion checkpoint
compatible, state dicts load with ``strict=True``), a small MLP denoiser for vector data,
and loaders for guided-diffusion checkpoints. Build them by name through ddkit::

    model = ddkit.create("model", "adm-unet", image_size=64, num_channels=192, class_cond=True)

Submodules are imported on first use, so that listing plugins stays cheap. (The
``mlp`` factory lives in :mod:`ddkit_models.factories`; ``ddkit_models.mlp`` is the module.)
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ddkit_models.attention import AttentionBlock, xformers_available
    from ddkit_models.checkpoint import (
        CheckpointMismatchError,
        convert_to_safetensors,
        from_guided_diffusion,
        load_checkpoint,
        read_state_dict,
    )
    from ddkit_models.classifier import ADMClassifier
    from ddkit_models.factories import adm_classifier, adm_superres, adm_unet
    from ddkit_models.flags import parse_flags
    from ddkit_models.mlp import MLPDenoiser
    from ddkit_models.unet import ADMSuperRes, ADMUNet

__version__ = "0.1.0"

_LAZY: dict[str, str] = {
    "ADMUNet": "ddkit_models.unet",
    "ADMSuperRes": "ddkit_models.unet",
    "ADMClassifier": "ddkit_models.classifier",
    "MLPDenoiser": "ddkit_models.mlp",
    "AttentionBlock": "ddkit_models.attention",
    "xformers_available": "ddkit_models.attention",
    "CheckpointMismatchError": "ddkit_models.checkpoint",
    "convert_to_safetensors": "ddkit_models.checkpoint",
    "from_guided_diffusion": "ddkit_models.checkpoint",
    "load_checkpoint": "ddkit_models.checkpoint",
    "read_state_dict": "ddkit_models.checkpoint",
    "adm_unet": "ddkit_models.factories",
    "adm_superres": "ddkit_models.factories",
    "adm_classifier": "ddkit_models.factories",
    "parse_flags": "ddkit_models.flags",
}

__all__ = [
    "ADMClassifier",
    "ADMSuperRes",
    "ADMUNet",
    "AttentionBlock",
    "CheckpointMismatchError",
    "MLPDenoiser",
    "adm_classifier",
    "adm_superres",
    "adm_unet",
    "convert_to_safetensors",
    "from_guided_diffusion",
    "load_checkpoint",
    "parse_flags",
    "read_state_dict",
    "xformers_available",
]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'ddkit_models' has no attribute {name!r}")
