"""A 2-D toy for the sampler benchmarks: 8-Gaussian ring data, a small ε-MLP, and sliced Wasserstein.

Training is cached by configuration under a cache folder, so each benchmark trains once.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from ddkit.denoiser import Denoiser
from ddkit.diffusion import GaussianParameterization, GaussianProcess

__all__ = ["ToyMLP", "betas_for", "make_denoiser", "ring8", "sliced_wasserstein", "train_toy"]


def ring8(n: int, generator: torch.Generator, radius: float = 2.0, std: float = 0.15) -> Tensor:
    """n points from 8 Gaussians (std ``std``) evenly placed on a circle of ``radius``."""
    k = torch.randint(0, 8, (n,), generator=generator)
    angle = k.double() * (2 * math.pi / 8)
    centers = torch.stack([angle.cos(), angle.sin()], dim=1) * radius
    return (centers + std * torch.randn(n, 2, generator=generator, dtype=torch.float64)).float()


def betas_for(schedule: str, T: int = 1000) -> np.ndarray:
    """guided-diffusion's named schedules (linear / cosine), written out so the bench needs no reference."""
    if schedule == "linear":
        scale = 1000 / T
        return np.linspace(scale * 1e-4, scale * 0.02, T, dtype=np.float64)
    if schedule == "cosine":

        def f(u: float) -> float:
            return math.cos((u + 0.008) / 1.008 * math.pi / 2) ** 2

        return np.array([min(1 - f((i + 1) / T) / f(i / T), 0.999) for i in range(T)])
    raise ValueError(f"unknown schedule {schedule!r}")


class ToyMLP(nn.Module):
    """ε(x, t) for 2-D points: x and a sinusoidal embedding of t through a SiLU MLP."""

    def __init__(self, hidden: int = 128, depth: int = 3, T: int = 1000) -> None:
        super().__init__()
        self.T = T
        layers: list[nn.Module] = [nn.Linear(2 + 32, hidden), nn.SiLU()]
        for _ in range(depth - 1):
            layers += [nn.Linear(hidden, hidden), nn.SiLU()]
        layers.append(nn.Linear(hidden, 2))
        self.net = nn.Sequential(*layers)
        self.register_buffer("freqs", torch.exp(torch.linspace(0.0, math.log(1000.0), 16)))

    def forward(self, x: Tensor, t: Tensor) -> Tensor:
        u = (t.float() / self.T)[:, None] * self.freqs[None] * (math.pi / 2)
        return self.net(torch.cat([x, u.sin(), u.cos()], dim=1))


def train_toy(
    schedule: str = "cosine",
    *,
    T: int = 1000,
    iters: int = 4000,
    batch: int = 512,
    hidden: int = 128,
    seed: int = 0,
    cache_dir: Path | None = None,
    verbose: bool = False,
) -> ToyMLP:
    """An ε-MLP trained on ``ring8`` under ``schedule``; loaded from ``cache_dir`` when trained before."""
    config = {
        "schedule": schedule,
        "T": T,
        "iters": iters,
        "batch": batch,
        "hidden": hidden,
        "seed": seed,
        "v": 1,
    }
    key = hashlib.sha1(json.dumps(config, sort_keys=True).encode()).hexdigest()[:12]
    model = ToyMLP(hidden=hidden, T=T)
    path = None if cache_dir is None else Path(cache_dir) / f"toy-{key}.pt"
    if path is not None and path.exists():
        model.load_state_dict(torch.load(path))
        return model.eval()
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    process = GaussianProcess(betas_for(schedule, T))
    sqrt_ab = torch.from_numpy(process.sqrt_alphas_cumprod).float()
    sqrt_1m = torch.from_numpy(process.sqrt_one_minus_alphas_cumprod).float()
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, iters)
    start = time.perf_counter()
    for it in range(iters):
        x0 = ring8(batch, g)
        t = torch.randint(0, T, (batch,), generator=g)
        eps = torch.randn(batch, 2, generator=g)
        x_t = sqrt_ab[t, None] * x0 + sqrt_1m[t, None] * eps
        loss = (model(x_t, t) - eps).square().mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if verbose and it % 1000 == 0:
            print(f"  train {schedule} it {it} loss {loss.item():.4f} ({time.perf_counter() - start:.1f}s)")
    model.eval()
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save(model.state_dict(), path)
    return model


def make_denoiser(model: nn.Module, schedule: str, T: int = 1000) -> Denoiser:
    """The ddkit denoiser of a toy ε-model (no clipping: the ring reaches beyond [-1, 1])."""
    return Denoiser(
        model,
        GaussianParameterization("epsilon", "fixed-small", False),
        GaussianProcess(betas_for(schedule, T)),
    )


def sliced_wasserstein(a: Tensor, b: Tensor, n_proj: int = 256, seed: int = 0) -> float:
    """Sliced 2-Wasserstein distance between two equal-sized point clouds (mean over random directions)."""
    if a.shape != b.shape:
        raise ValueError(f"point clouds must have equal shapes (got {tuple(a.shape)} and {tuple(b.shape)})")
    g = torch.Generator().manual_seed(seed)
    dirs = torch.randn(a.shape[1], n_proj, generator=g, dtype=torch.float64)
    dirs /= dirs.norm(dim=0, keepdim=True)
    pa = torch.sort(a.double() @ dirs, dim=0).values
    pb = torch.sort(b.double() @ dirs, dim=0).values
    if not torch.isfinite(pa).all():
        return float("inf")
    return float((pa - pb).square().mean(dim=0).sqrt().mean())
