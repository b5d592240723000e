"""Core's built-in autoencoder: a parameter-free, exactly invertible space-to-depth map.

It exists so that latent pipelines (``[autoencoder]`` in a config) are trained, sampled,
saved and tested with ddkit-core alone; real latent models bring their own autoencoder
(``diffusers-vae`` from ddkit-diffusers, or any object meeting :class:`ddkit.Autoencoder`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch.nn.functional as F
from torch import Tensor, nn

from ddkit.errors import ConfigError

__all__ = ["PixelShuffleAutoencoder", "pixel_shuffle"]


def _finite(name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ConfigError(f"'{name}' must be a finite number (got {value!r})")
    return float(value)


class PixelShuffleAutoencoder(nn.Module):
    """Space-to-depth: each ``factor`` × ``factor`` patch of an image becomes ``factor²`` channels.

    ``encode`` is ``pixel_unshuffle`` and ``decode`` is ``pixel_shuffle``, so
    ``decode(encode(x)) == x`` exactly and a known pixel stays known through a latent
    pipeline. It has no weights (its ``state_dict`` is empty).

    .. versionadded:: 0.1.0
    """

    def __init__(self, factor: int = 2, scaling_factor: float = 1.0, shift_factor: float = 0.0) -> None:
        super().__init__()
        if isinstance(factor, bool) or not isinstance(factor, int) or factor < 1:
            raise ConfigError(f"'factor' must be a positive int (got {factor!r})")
        scale = _finite("scaling_factor", scaling_factor)
        if scale == 0.0:
            raise ConfigError("'scaling_factor' must be non-zero (got 0.0); latents are divided by it")
        self.factor = factor
        self.scaling_factor = scale
        self.shift_factor = _finite("shift_factor", shift_factor)

    def extra_repr(self) -> str:
        return f"factor={self.factor}, scaling_factor={self.scaling_factor}, shift_factor={self.shift_factor}"

    def latent_shape(self, sample_shape: Sequence[int]) -> tuple[int, ...]:
        """``(C, H, W)`` of one image to ``(C·f², H/f, W/f)`` of its latent."""
        shape = tuple(int(d) for d in sample_shape)
        f = self.factor
        if len(shape) != 3 or shape[1] % f or shape[2] % f:
            raise ConfigError(
                f"autoencoder 'pixel-shuffle' (factor={f}) takes images (C, H, W) with H and W divisible "
                f"by {f} (got shape {list(shape)})"
            )
        return (shape[0] * f * f, shape[1] // f, shape[2] // f)

    def encode(self, x: Tensor) -> Tensor:
        """``[B, C, H, W]`` → ``[B, C·f², H/f, W/f]``."""
        if x.ndim != 4:
            raise ValueError(
                f"'pixel-shuffle' encodes image batches [B, C, H, W] (got shape {tuple(x.shape)})"
            )
        self.latent_shape(x.shape[1:])
        return F.pixel_unshuffle(x, self.factor)

    def decode(self, z: Tensor) -> Tensor:
        """``[B, C·f², h, w]`` → ``[B, C, h·f, w·f]``."""
        f2 = self.factor * self.factor
        if z.ndim != 4 or z.shape[1] % f2:
            raise ValueError(
                f"'pixel-shuffle' (factor={self.factor}) decodes latents [B, C·{f2}, h, w] "
                f"(got shape {tuple(z.shape)})"
            )
        return F.pixel_shuffle(z, self.factor)


def pixel_shuffle(
    factor: int = 2, scaling_factor: float = 1.0, shift_factor: float = 0.0
) -> PixelShuffleAutoencoder:
    """A :class:`PixelShuffleAutoencoder`: exact, parameter-free space-to-depth by ``factor``."""
    return PixelShuffleAutoencoder(factor, scaling_factor, shift_factor)
