"""Procedural class-conditional images: one coloured shape per image, no download needed.

Class ``k`` is a shape with its own base colour (circle red, square green, triangle
blue, ...), placed at a random position and scale, its colour jittered, on a dark
jittered background. Images are RGB in [-1, 1], drawn at twice the resolution and
averaged down for soft edges, and deterministic from the seed.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from ddkit.data.arrays import ArrayDataset
from ddkit.errors import ConfigError

__all__ = ["SHAPES", "load_shapes", "render_shapes"]

Mask = Callable[[Tensor, Tensor], Tensor]


def _triangle(u: Tensor, v: Tensor) -> Tensor:
    # Apex up at v = -0.9, base at v = 0.75 (image rows grow downwards).
    return (v <= 0.75) & (u.abs() <= (v + 0.9) / 1.65 * 0.95)


def _stripes(u: Tensor, v: Tensor) -> Tensor:
    inside = torch.maximum(u.abs(), v.abs()) <= 0.9
    return inside & (torch.floor((v + 0.9) / 0.36).long() % 2 == 0)


#: (name, mask over coordinates in units of the shape's radius, base colour in [0, 1]).
_CLASSES: tuple[tuple[str, Mask, tuple[float, float, float]], ...] = (
    ("circle", lambda u, v: u * u + v * v <= 1.0, (0.9, 0.2, 0.2)),
    ("square", lambda u, v: torch.maximum(u.abs(), v.abs()) <= 0.8, (0.2, 0.8, 0.3)),
    ("triangle", _triangle, (0.25, 0.35, 0.95)),
    (
        "cross",
        lambda u, v: ((u.abs() <= 0.3) & (v.abs() <= 0.9)) | ((v.abs() <= 0.3) & (u.abs() <= 0.9)),
        (0.95, 0.85, 0.2),
    ),
    ("ring", lambda u, v: ((u * u + v * v) <= 1.0) & ((u * u + v * v) >= 0.3), (0.85, 0.25, 0.85)),
    ("stripes", _stripes, (0.2, 0.85, 0.9)),
    ("diamond", lambda u, v: u.abs() + v.abs() <= 1.0, (1.0, 0.55, 0.1)),
    (
        "x",
        lambda u, v: (
            (((u - v).abs() <= 0.4) | ((u + v).abs() <= 0.4)) & (torch.maximum(u.abs(), v.abs()) <= 0.8)
        ),
        (0.92, 0.92, 0.92),
    ),
    ("half-disc", lambda u, v: (u * u + v * v <= 1.0) & (v >= 0.0), (0.65, 0.45, 0.25)),
    (
        "frame",
        lambda u, v: (torch.maximum(u.abs(), v.abs()) <= 0.9) & (torch.maximum(u.abs(), v.abs()) >= 0.55),
        (1.0, 0.6, 0.7),
    ),
)

#: The shape of each class index, in order.
SHAPES: tuple[str, ...] = tuple(name for name, _, _ in _CLASSES)


def _check(image_size: int, n: int, num_classes: int) -> None:
    for name, value in (("image_size", image_size), ("n", n), ("num_classes", num_classes)):
        if not isinstance(value, int) or isinstance(value, bool):
            raise ConfigError(f"'{name}' must be an int (got {value!r})")
    if not 8 <= image_size <= 256:
        raise ConfigError(
            f"'image_size' must lie in [8, 256] pixels (got {image_size}); 16 to 32 suit quick runs"
        )
    if n < 1:
        raise ConfigError(f"'n' must be a positive number of images (got {n})")
    if not 1 <= num_classes <= len(_CLASSES):
        raise ConfigError(
            f"'num_classes' must lie in [1, {len(_CLASSES)}] (got {num_classes}); "
            f"shapes are: {', '.join(SHAPES)}"
        )


def render_shapes(labels: Tensor, image_size: int = 32, *, generator: torch.Generator) -> Tensor:
    """Images ``[N, 3, S, S]`` in [-1, 1] of shapes ``labels`` (class indices), jittered by ``generator``."""
    n = labels.shape[0]
    ss = 2 * image_size
    scale = (0.22 + 0.14 * torch.rand(n, generator=generator)) * ss
    margin = scale * 0.95
    cx = margin + torch.rand(n, generator=generator) * (ss - 2 * margin)
    cy = margin + torch.rand(n, generator=generator) * (ss - 2 * margin)
    base = torch.tensor([c for _, _, c in _CLASSES])[labels]
    color = (base + 0.08 * torch.randn((n, 3), generator=generator)).clamp(0, 1)
    background = (0.1 + 0.05 * torch.randn((n, 3), generator=generator)).clamp(0, 1)
    grid = torch.arange(ss, dtype=torch.float32) + 0.5
    mask = torch.zeros((n, ss, ss))
    for k, (_, fn, _) in enumerate(_CLASSES):
        idx = (labels == k).nonzero().flatten()
        if idx.numel() == 0:
            continue
        s = scale[idx, None, None]
        u = (grid[None, None, :] - cx[idx, None, None]) / s
        v = (grid[None, :, None] - cy[idx, None, None]) / s
        mask[idx] = fn(u, v).float()
    # Average 2x2 blocks: anti-aliased edges at the target resolution.
    mask = F.avg_pool2d(mask[:, None], 2)
    img = background[:, :, None, None] + mask * (color - background)[:, :, None, None]
    return img * 2 - 1


def load_shapes(
    *, image_size: int = 32, n: int = 10_000, num_classes: int = 6, seed: int = 0
) -> ArrayDataset:
    """``n`` images of ``num_classes`` shapes (classes drawn uniformly), deterministic from ``seed``."""
    _check(image_size, n, num_classes)
    gen = torch.Generator().manual_seed(int(seed))
    labels = torch.randint(0, num_classes, (n,), generator=gen)
    images = torch.empty((n, 3, image_size, image_size))
    chunk = 2048
    for start in range(0, n, chunk):
        images[start : start + chunk] = render_shapes(
            labels[start : start + chunk], image_size, generator=gen
        )
    return ArrayDataset(images, labels, num_classes=num_classes)
