"""A 2-D toy for the sampler benchmarks: 8-Gaussian ring data, a small ε-MLP, and sliced Wasserstein.

Training is cached by configuration under a cache folder, so each benchmark trains once.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

import ddkit
from ddkit.denoiser import Denoiser
from ddkit.diffusion import GaussianParameterization, GaussianProcess

__all__ = [
    "ExactRing",
    "ToyMLP",
    "betas_for",
    "load_k_diffusion_sampling",
    "make_denoiser",
    "ring8",
    "ring_centers",
    "ring_posterior",
    "sliced_wasserstein",
    "train_toy",
]


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
    """ε(x, t) for 2-D points: x and a sinusoidal embedding of t through a SiLU MLP.

    It declares its samples' size, as ddkit's models do (the other frameworks ignore it).
    """

    spec = ddkit.ModelSpec(2, 2, (2,), None, None)

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


# -- the exact denoiser of ring8 data (no training) ----------------------------------------------


def ring_centers(radius: float = 2.0) -> Tensor:
    """The 8 mixture means of :func:`ring8`, float64 [8, 2]."""
    angle = torch.arange(8, dtype=torch.float64) * (2 * math.pi / 8)
    return torch.stack([angle.cos(), angle.sin()], dim=1) * radius


def ring_posterior(
    x: Tensor, alpha_bar: Tensor, radius: float = 2.0, std: float = 0.15
) -> tuple[Tensor, Tensor]:
    """E[x_0 | x_t] and E[ε | x_t] of :func:`ring8` data, x_t = sqrt(ᾱ)·x_0 + sqrt(1 − ᾱ)·ε, in float64.

    Per component k: x_t ~ N(sqrt(ᾱ)·μ_k, v·I), v = ᾱ·std² + 1 − ᾱ; the posterior mixes the
    components' means by their responsibilities. ``alpha_bar`` is one value per row ([B] or scalar).
    """
    xd = x.double()
    ab = torch.as_tensor(alpha_bar, dtype=torch.float64).reshape(-1, 1, 1)
    mu = ring_centers(radius)[None]  # [1, 8, 2]
    v = ab * std**2 + (1.0 - ab)
    diff = xd[:, None, :] - ab.sqrt() * mu  # [B, 8, 2]
    w = torch.softmax(-diff.square().sum(-1, keepdim=True) / (2.0 * v), dim=1)
    centred = (w * diff).sum(1)  # E[x_t − sqrt(ᾱ)μ_k]
    eps = (1.0 - ab[:, 0]).sqrt() * centred / v[:, 0]
    x0 = (w * (mu + std**2 * ab.sqrt() * diff / v)).sum(1)
    return x0, eps


class ExactRing(nn.Module):
    """The exact ε-network of :func:`ring8` data on a chain with ``alphas_cumprod`` (no training).

    A fractional timestep t interpolates log σ between training steps (the inverse of
    :func:`ddkit.sampling.sigma_to_t`, and how diffusers maps σ to t), so every framework's
    sampler sees the same network. ``calls`` counts the evaluations. It declares its samples'
    size (2-D points), as ddkit's models do, so ddkit's samplers pick their start from it.
    """

    spec = ddkit.ModelSpec(2, 2, (2,), None, None)

    def __init__(self, alphas_cumprod: np.ndarray) -> None:
        super().__init__()
        ac = torch.as_tensor(np.asarray(alphas_cumprod, dtype=np.float64))
        self.log_sigmas = 0.5 * (torch.log1p(-ac) - torch.log(ac.clamp_min(1e-300)))
        self.ac = ac
        self.calls = 0

    def alpha_bar(self, t: Tensor) -> Tensor:
        """ᾱ at (fractional) training timesteps ``t``."""
        n = self.ac.shape[0]
        t = t.double().clamp(0.0, n - 1.0)
        lo = t.floor().long().clamp(max=n - 2)
        w = t - lo
        log_sigma = (1.0 - w) * self.log_sigmas[lo] + w * self.log_sigmas[lo + 1]
        exact = w == 0
        out = 1.0 / (1.0 + torch.exp(2.0 * log_sigma))
        return torch.where(exact, self.ac[lo], out)

    def forward(self, x: Tensor, t: Tensor) -> Tensor:
        self.calls += 1
        t = t.reshape(-1).expand(x.shape[0]) if t.numel() == 1 else t.reshape(-1)
        return ring_posterior(x, self.alpha_bar(t))[1].to(x.dtype)


def load_k_diffusion_sampling() -> Any:
    """k-diffusion's ``sampling.py`` alone (its package imports image libraries), or None if absent.

    ``torchsde``/``torchdiffeq`` are stubbed when missing: only the Brownian-tree noise sampler
    and the adaptive/likelihood solvers use them, and the bench passes its own noise sampler.
    """
    import importlib.util
    import sys
    import types

    spec = importlib.util.find_spec("k_diffusion")
    if spec is None or spec.submodule_search_locations is None:
        return None
    path = Path(next(iter(spec.submodule_search_locations))) / "sampling.py"
    stubbed = []
    for name in ("torchsde", "torchdiffeq"):
        if name not in sys.modules and importlib.util.find_spec(name) is None:
            stub = types.ModuleType(name)
            stub.odeint = None  # type: ignore[attr-defined]
            sys.modules[name] = stub
            stubbed.append(name)
    pkg = types.ModuleType("_kdiff")
    pkg.__path__ = []  # type: ignore[attr-defined]
    utils = types.ModuleType("_kdiff.utils")

    def append_dims(x: Tensor, target_dims: int) -> Tensor:
        return x[(...,) + (None,) * (target_dims - x.ndim)]

    utils.append_dims = append_dims  # type: ignore[attr-defined]
    pkg.utils = utils  # type: ignore[attr-defined]
    sys.modules.setdefault("_kdiff", pkg)
    sys.modules.setdefault("_kdiff.utils", utils)
    module_spec = importlib.util.spec_from_file_location("_kdiff.sampling", path)
    assert module_spec is not None
    assert module_spec.loader is not None
    module = importlib.util.module_from_spec(module_spec)
    try:
        module_spec.loader.exec_module(module)
    finally:
        for name in stubbed:  # other libraries (diffusers) probe for the real ones
            del sys.modules[name]
    return module
