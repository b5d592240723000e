"""Gaussian paths against their references, in float64 on the same grids and noise.

- ``rectified-flow`` + ``euler`` against diffusers' FlowMatchEulerDiscreteScheduler (shift 1 and
  3; 10 and 28 steps), the network fed t·1000 as SD3/Flux networks are;
- ``edm`` + ``heun`` against EDM's Algorithm 1 (Karras et al. 2022), written here from the
  paper, on Karras σ's, with the ``edm`` preconditioning around the same network.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import Tensor, nn

import ddkit

diffusers = pytest.importorskip("diffusers")


class ToyNet(nn.Module):
    """A small smooth float64 network of (x, t): enough nonlinearity that a wrong step shows."""

    def __init__(self, channels: int = 3) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(7)
        self.w1 = nn.Parameter(torch.randn(channels + 1, 32, generator=g, dtype=torch.float64) * 0.5)
        self.w2 = nn.Parameter(torch.randn(32, channels, generator=g, dtype=torch.float64) * 0.3)
        self.sample_shape = (channels,)

    def forward(self, x: Tensor, t: Tensor) -> Tensor:
        tt = t.to(torch.float64).reshape(-1, 1) / 1000.0
        h = torch.tanh(torch.cat([x, tt.expand(x.shape[0], 1)], dim=1) @ self.w1)
        return h @ self.w2


def _pipeline(
    schedule: dict[str, object], parameterization: str, model: nn.Module, sampler: dict[str, object]
) -> ddkit.Pipeline:
    return ddkit.Pipeline.from_config(
        {
            "schedule": schedule,
            "parameterization": {"name": parameterization, "clip_denoised": False},
            "sampler": sampler,
        },
        model=model,
    )


@pytest.mark.parametrize("shift", [1.0, 3.0])
@pytest.mark.parametrize("steps", [10, 28])
def test_rectified_flow_euler_matches_flow_match_euler(shift: float, steps: int) -> None:
    from diffusers import FlowMatchEulerDiscreteScheduler

    model = ToyNet()
    sched = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=shift)
    sched.set_timesteps(steps)
    sigmas = sched.sigmas.double()  # shifted, from 1 down, then a final 0
    x_T = torch.randn(16, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)

    x = x_T.clone()
    for i in range(steps):
        t = sched.timesteps[i].double().expand(x.shape[0])
        v = model(x, t)
        x = x + (sigmas[i + 1] - sigmas[i]) * v
    expected = x

    levels = [float(s) for s in sigmas[:-1]]
    pipe = _pipeline(
        {"name": "rectified-flow", "shift": shift}, "velocity", model, {"name": "euler", "spacing": levels}
    )
    got = pipe.sample(x_T=x_T)
    assert (got - expected).abs().max().item() < 1e-5


def _karras_sigmas(
    n: int, sigma_min: float = 0.002, sigma_max: float = 80.0, rho: float = 7.0
) -> list[float]:
    ramp = np.linspace(0.0, 1.0, n)
    lo, hi = sigma_min ** (1 / rho), sigma_max ** (1 / rho)
    return [float(s) for s in (hi + ramp * (lo - hi)) ** rho]


@pytest.mark.parametrize("steps", [8, 18])
def test_edm_heun_matches_edm_algorithm_1(steps: int) -> None:
    model = ToyNet()
    sd = 0.5

    def denoise(x: Tensor, sigma: float) -> Tensor:
        # Karras et al. 2022, Table 1: D(x; σ) = c_skip·x + c_out·F(c_in·x; c_noise).
        c_skip = sd**2 / (sigma**2 + sd**2)
        c_out = sigma * sd / math.sqrt(sigma**2 + sd**2)
        c_in = 1 / math.sqrt(sigma**2 + sd**2)
        c_noise = torch.full((x.shape[0],), math.log(sigma) / 4, dtype=torch.float64)
        return c_skip * x + c_out * model(c_in * x, c_noise)

    sigmas = [*_karras_sigmas(steps), 0.0]
    eps = torch.randn(16, 3, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    x = sigmas[0] * eps
    for i in range(steps):  # Algorithm 1, deterministic (Heun, last step Euler)
        s, s_next = sigmas[i], sigmas[i + 1]
        d = (x - denoise(x, s)) / s
        x_next = x + (s_next - s) * d
        if s_next != 0:
            d2 = (x_next - denoise(x_next, s_next)) / s_next
            x_next = x + (s_next - s) * (0.5 * d + 0.5 * d2)
        x = x_next
    expected = x

    heun = {"name": "heun", "form": "sigma", "spacing": sigmas[:-1]}  # Alg. 2's trapezoid in σ
    pipe = _pipeline({"name": "edm"}, "edm", model, heun)
    got = pipe.sample(x_T=sigmas[0] * eps)
    assert (got - expected).abs().max().item() < 1e-5
