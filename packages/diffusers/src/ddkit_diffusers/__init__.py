"""ddkit-diffusers: models, autoencoders and whole pipelines saved by diffusers, run by ddkit.

- model ``diffusers``: a UNet2DModel, UNet2DConditionModel or transformer folder
  (:func:`~ddkit_diffusers.model.diffusers_model`);
- autoencoder ``diffusers-vae``: an AutoencoderKL or AutoencoderTiny folder;
- :func:`from_diffusers`: a pipeline folder (``model_index.json``, ``scheduler/``, ``unet/``, ``vae/``)
  as a :class:`ddkit.Pipeline`.

Paths are local folders; nothing is downloaded and weights load through safetensors only.
Submodules are imported on first use, so that listing plugins stays cheap.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ddkit_diffusers.convert import from_diffusers, pipeline_config, scheduler_tables
    from ddkit_diffusers.model import DiffusersModel, diffusers_model
    from ddkit_diffusers.vae import DiffusersVAE, diffusers_vae

__all__ = [
    "DiffusersModel",
    "DiffusersVAE",
    "diffusers_model",
    "diffusers_vae",
    "from_diffusers",
    "pipeline_config",
    "scheduler_tables",
]
__version__ = "0.1.0"

_WHERE = {
    "DiffusersModel": "model",
    "diffusers_model": "model",
    "DiffusersVAE": "vae",
    "diffusers_vae": "vae",
    "from_diffusers": "convert",
    "pipeline_config": "convert",
    "scheduler_tables": "convert",
}


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        return getattr(importlib.import_module(f"ddkit_diffusers.{_WHERE[name]}"), name)
    raise AttributeError(f"module 'ddkit_diffusers' has no attribute {name!r}")
