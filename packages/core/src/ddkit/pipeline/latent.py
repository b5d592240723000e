"""Latent pipelines: the pipeline side of an :class:`~ddkit.Autoencoder`.

A latent pipeline's model, sampler and noise live in latent space; data enters through
:func:`encode_to_latents` and leaves through :func:`decode_latents`, both without gradients
and with the autoencoder frozen. Inpainting masks are given in data space and brought to
latent resolution by :func:`latent_mask`: a latent element counts as known only if every
data element of its patch is known (a min-pool), so the sampler never pins a latent that
partly covers pixels to generate.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ddkit.errors import CompositionError, ConfigError

__all__ = ["check_autoencoder", "decode_latents", "encode_to_latents", "freeze", "latent_mask"]


def check_autoencoder(obj: Any, title: str = "the autoencoder") -> None:
    """Raise :class:`~ddkit.ConfigError` unless ``obj`` has ``encode``, ``decode`` and usable factors."""
    missing = [name for name in ("encode", "decode") if not callable(getattr(obj, name, None))]
    if missing:
        raise ConfigError(
            f"{title} has no {' and no '.join(missing)} method; an autoencoder needs encode(x) -> z and "
            "decode(z) -> x (see ddkit.Autoencoder)"
        )
    for name in ("scaling_factor", "shift_factor"):
        value = getattr(obj, name, None)
        ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
        if not ok:
            raise ConfigError(
                f"{title} must have a finite float '{name}' (got {value!r}); use 1.0 for scaling_factor "
                "and 0.0 for shift_factor when it has none"
            )
    if float(obj.scaling_factor) == 0.0:
        raise ConfigError(
            f"{title} has scaling_factor 0.0; latents are divided by it, so it must be non-zero"
        )


def freeze(autoencoder: Any) -> Any:
    """Put an ``nn.Module`` autoencoder in eval mode with gradients off (in place); return it."""
    if isinstance(autoencoder, nn.Module):
        autoencoder.eval()
        autoencoder.requires_grad_(False)
    return autoencoder


def encode_to_latents(autoencoder: Any, x: Tensor) -> Tensor:
    """``(encode(x) - shift_factor) * scaling_factor``, without gradients."""
    with torch.no_grad():
        z: Tensor = autoencoder.encode(x)
        shift = float(autoencoder.shift_factor)
        if shift != 0.0:
            z = z - shift
        return z * float(autoencoder.scaling_factor)


def decode_latents(autoencoder: Any, z: Tensor) -> Tensor:
    """``decode(z / scaling_factor + shift_factor)``, without gradients."""
    with torch.no_grad():
        z = z / float(autoencoder.scaling_factor)
        shift = float(autoencoder.shift_factor)
        if shift != 0.0:
            z = z + shift
        x: Tensor = autoencoder.decode(z)
        return x


def latent_mask(mask: Tensor, latent: Tensor) -> Tensor:
    """A data-space inpainting ``mask`` (1 = known) at the resolution of ``latent`` ``[B, c, *S]``.

    ``mask`` broadcasts to the data batch (``[H, W]``, ``[1|C, H, W]`` or ``[B|1, 1|C, H, W]``);
    each spatial size must be a whole multiple of the latent's. A latent element gets the
    smallest mask value over its patch and over the data channels (min-pool), so it is known
    only where all its pixels are. The result has shape ``[B|1, 1, *S]`` and broadcasts over
    the latent channels.
    """
    spatial = latent.ndim - 2
    if spatial not in (1, 2, 3):
        raise CompositionError(
            "latent inpainting needs latents with 1 to 3 spatial dimensions "
            f"(got shape {tuple(latent.shape)})"
        )
    m = mask.to(device=latent.device, dtype=torch.float32)
    while m.ndim < spatial + 2:
        m = m.unsqueeze(0)
    if m.ndim != spatial + 2:
        raise CompositionError(
            f"'mask' of shape {tuple(mask.shape)} has more dimensions than the data batch "
            f"({spatial + 2}) of this latent pipeline"
        )
    m = m.amin(dim=1, keepdim=True)
    sizes, target = m.shape[2:], latent.shape[2:]
    if any(s % t for s, t in zip(sizes, target)):
        raise CompositionError(
            f"'mask' has spatial size {list(sizes)}, not a whole multiple of the latents' {list(target)}; "
            "give the mask at the resolution of the data"
        )
    kernel = tuple(s // t for s, t in zip(sizes, target))
    pool = (F.max_pool1d, F.max_pool2d, F.max_pool3d)[spatial - 1]
    out: Tensor = 1.0 - pool(1.0 - m, kernel_size=kernel)
    return out.to(latent.dtype)
