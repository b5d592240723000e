"""Two-dimensional toy distributions, drawn exactly from their true densities.

Every toy lies in about [-1, 1]² and is a function of a ``torch.Generator``, so a dataset
is deterministic from its seed and fresh draws from the true density (for quality metrics
such as :func:`sliced_wasserstein`) come from :func:`sampler`. Labels are given where a
toy has natural classes: the ring, the spiral arm, the mixture component, the moon.

================  ==========================================  =======
name              what                                        classes
================  ==========================================  =======
``rings``         three concentric noisy circles              3
``spirals``       two interleaved spiral arms                 2
``gaussians``     a mixture of 8 Gaussians on a circle        8
``moons``         scikit-learn's two half-moons, rescaled     2
``checkerboard``  uniform on the dark squares of a 4×4 board  none
================  ==========================================  =======
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

from ddkit.data.arrays import ArrayDataset
from ddkit.errors import ConfigError

__all__ = ["TOYS", "load_toy", "sample_toy", "sampler", "sliced_wasserstein"]

#: A toy draw: ``(n, generator) -> (x [n, 2], labels [n] or None)``.
ToySampler = Callable[[int, torch.Generator], tuple[Tensor, Tensor | None]]


def _rand(n: int, gen: torch.Generator) -> Tensor:
    return torch.rand(n, generator=gen, dtype=torch.float64)


def _randn(shape: tuple[int, ...], gen: torch.Generator) -> Tensor:
    return torch.randn(shape, generator=gen, dtype=torch.float64)


def _rings(n: int, gen: torch.Generator, noise: float = 0.02) -> tuple[Tensor, Tensor]:
    radii = torch.tensor([0.3, 0.6, 0.9], dtype=torch.float64)
    # Points per ring in proportion to its circumference, so the density along each ring is equal.
    labels = torch.multinomial(radii / radii.sum(), n, replacement=True, generator=gen)
    theta = 2 * math.pi * _rand(n, gen)
    r = radii[labels]
    x = torch.stack([r * torch.cos(theta), r * torch.sin(theta)], dim=1)
    return x + noise * _randn((n, 2), gen), labels


def _spirals(n: int, gen: torch.Generator, noise: float = 0.02) -> tuple[Tensor, Tensor]:
    labels = (_rand(n, gen) < 0.5).long()
    # sqrt makes the density along the arm roughly uniform in arc length.
    r = 0.05 + 0.9 * _rand(n, gen).sqrt()
    theta = 3 * math.pi * r + math.pi * labels
    x = torch.stack([r * torch.cos(theta), r * torch.sin(theta)], dim=1)
    return x + noise * _randn((n, 2), gen), labels


def _gaussians(
    n: int, gen: torch.Generator, radius: float = 0.75, std: float = 0.06
) -> tuple[Tensor, Tensor]:
    labels = torch.randint(0, 8, (n,), generator=gen)
    angle = labels.double() * (2 * math.pi / 8)
    centers = radius * torch.stack([torch.cos(angle), torch.sin(angle)], dim=1)
    return centers + std * _randn((n, 2), gen), labels


def _moons(n: int, gen: torch.Generator, noise: float = 0.05) -> tuple[Tensor, Tensor]:
    labels = (_rand(n, gen) < 0.5).long()
    theta = math.pi * _rand(n, gen)
    upper = torch.stack([torch.cos(theta), torch.sin(theta)], dim=1)
    lower = torch.stack([1 - torch.cos(theta), 0.5 - torch.sin(theta)], dim=1)
    x = torch.where(labels[:, None] == 0, upper, lower) + noise * _randn((n, 2), gen)
    # scikit-learn's moons span [-1, 2] x [-0.5, 1]; centre and scale them into [-1, 1]².
    return (x - torch.tensor([0.5, 0.25], dtype=torch.float64)) * 0.6, labels


def _checkerboard(n: int, gen: torch.Generator, squares: int = 4) -> tuple[Tensor, None]:
    side = 2.0 / squares
    # Pick a cell uniformly among the dark ones, then a point uniformly inside it.
    col = torch.randint(0, squares, (n,), generator=gen)
    row = torch.randint(0, squares // 2, (n,), generator=gen) * 2 + (col % 2)
    offset = torch.stack([col, row], dim=1).double() * side - 1.0
    return offset + side * torch.rand((n, 2), generator=gen, dtype=torch.float64), None


_TOYS: dict[str, tuple[Callable[..., tuple[Tensor, Tensor | None]], int | None, str]] = {
    "rings": (_rings, 3, "three concentric noisy circles (label: ring)"),
    "spirals": (_spirals, 2, "two interleaved spiral arms (label: arm)"),
    "gaussians": (_gaussians, 8, "a mixture of 8 Gaussians on a circle (label: component)"),
    "moons": (_moons, 2, "two interleaved half-moons (label: moon)"),
    "checkerboard": (_checkerboard, None, "uniform on the dark squares of a 4x4 board (no labels)"),
}

#: The toy names, with a one-line description each.
TOYS: dict[str, str] = {name: entry[2] for name, entry in _TOYS.items()}


def _entry(name: str) -> tuple[Callable[..., tuple[Tensor, Tensor | None]], int | None, str]:
    if name not in _TOYS:
        raise ConfigError(f"no 2-D toy named {name!r}; toys are: {', '.join(_TOYS)}")
    return _TOYS[name]


def sampler(name: str, **params: float) -> ToySampler:
    """The exact sampler of toy ``name``'s true density: ``(n, generator) -> (x, labels)``."""
    fn = _entry(name)[0]

    def draw(n: int, generator: torch.Generator) -> tuple[Tensor, Tensor | None]:
        try:
            x, labels = fn(n, generator, **params)
        except TypeError as exc:
            raise ConfigError(f"toy {name!r} does not take these parameters: {params} ({exc})") from None
        return x.float(), labels

    return draw


def sample_toy(name: str, n: int, *, seed: int = 0, **params: float) -> tuple[Tensor, Tensor | None]:
    """``n`` float32 points ``[n, 2]`` of toy ``name`` and their labels (``None`` for checkerboard)."""
    if not isinstance(n, int) or isinstance(n, bool) or n < 1:
        raise ConfigError(f"'n' must be a positive int (got {n!r})")
    gen = torch.Generator().manual_seed(int(seed))
    return sampler(name, **params)(n, gen)


def load_toy(name: str, *, n: int = 10_000, seed: int = 0, **params: float) -> ArrayDataset:
    """Toy ``name`` as a dataset of ``n`` points, deterministic from ``seed``."""
    x, labels = sample_toy(name, n, seed=seed, **params)
    return ArrayDataset(x, labels, num_classes=_entry(name)[1] if labels is not None else None)


def sliced_wasserstein(a: Tensor, b: Tensor, *, projections: int = 256, seed: int = 0) -> float:
    """The sliced 2-Wasserstein distance between point sets ``a`` [N, D] and ``b`` [M, D].

    Each of ``projections`` random unit directions gives a 1-D W2 (compared at common
    quantiles); the result is the root mean square over directions.
    """
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1]:
        raise ValueError(f"expected point sets [N, D] and [M, D] (got {tuple(a.shape)} and {tuple(b.shape)})")
    gen = torch.Generator().manual_seed(seed)
    dirs = torch.randn((a.shape[1], projections), generator=gen, dtype=torch.float64)
    dirs = dirs / dirs.norm(dim=0, keepdim=True)
    pa = (a.detach().cpu().double() @ dirs).sort(dim=0).values
    pb = (b.detach().cpu().double() @ dirs).sort(dim=0).values
    m = min(pa.shape[0], pb.shape[0])
    q = (torch.arange(m, dtype=torch.float64) + 0.5) / m
    qa = torch.quantile(pa, q, dim=0) if pa.shape[0] != m else pa
    qb = torch.quantile(pb, q, dim=0) if pb.shape[0] != m else pb
    return float(((qa - qb) ** 2).mean().sqrt())
