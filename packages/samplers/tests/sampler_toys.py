"""Toy models and denoisers shared by the sampler tests (they need only ddkit-core and ddkit-samplers)."""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

from ddkit.denoiser import Denoiser
from ddkit.diffusion import GaussianParameterization, GaussianProcess

torch.set_num_threads(1)

T = 40


def linear_betas(steps: int = T) -> np.ndarray:
    """guided-diffusion's linear schedule for ``steps`` steps."""
    scale = 1000 / steps
    return np.linspace(scale * 1e-4, scale * 0.02, steps, dtype=np.float64)


def cosine_betas(steps: int = T) -> np.ndarray:
    """guided-diffusion's cosine schedule for ``steps`` steps."""

    def f(u: float) -> float:
        return math.cos((u + 0.008) / 1.008 * math.pi / 2) ** 2

    return np.array([min(1 - f((i + 1) / steps) / f(i / steps), 0.999) for i in range(steps)])


class Elementwise:
    """A batch-independent 'network': an elementwise function of x and t (doubled channels if learned)."""

    def __init__(self, learned: bool = False, total: int = T) -> None:
        self.learned = learned
        self.total = total
        self.calls: list[tuple[Tensor, Tensor]] = []

    def __call__(self, x: Tensor, t: Tensor) -> Tensor:
        self.calls.append((x.clone(), t.clone()))
        tt = (t.to(x.dtype) / self.total).reshape(-1, *([1] * (x.ndim - 1)))
        mean = torch.tanh(0.8 * x + 0.3 * tt) * 0.9 + 0.05 * tt
        if self.learned:
            return torch.cat([mean, 0.5 * torch.tanh(x - tt)], dim=1)
        return mean


class GaussianEps:
    """The exact ε-predictor for data ~ N(0, s²·I): ε = sqrt(1 − ᾱ)·x / (ᾱ·s² + 1 − ᾱ)."""

    def __init__(self, process: GaussianProcess, scale: float = 0.5) -> None:
        self.ac = torch.from_numpy(process.alphas_cumprod)
        self.s2 = scale * scale

    def __call__(self, x: Tensor, t: Tensor) -> Tensor:
        ab = self.ac[t.long()].to(x.dtype).reshape(-1, *([1] * (x.ndim - 1)))
        return (1 - ab).sqrt() * x / (ab * self.s2 + 1 - ab)


def make_denoiser(
    prediction: str = "epsilon",
    variance: str = "fixed-small",
    *,
    clip: bool = False,
    betas: np.ndarray | None = None,
    model: object | None = None,
) -> Denoiser:
    """A denoiser of an :class:`Elementwise` model on a T-step chain."""
    param = GaussianParameterization(prediction, variance, clip)
    process = GaussianProcess(linear_betas() if betas is None else betas)
    if model is None:
        model = Elementwise(learned=param.learned_variance, total=process.num_timesteps)
    return Denoiser(model, param, process)  # type: ignore[arg-type]
