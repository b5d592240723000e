"""Parity of iPNDM, DEIS and SDE-DPM-Solver++ with diffusers' schedulers, in float64, on the same grid.

Each diffusers scheduler is driven step by step with the same ε-model, evaluated at ddkit's
plan's timesteps, and given ddkit's noise levels (``sigmas``, or IPNDM's α and σ tables), so
the comparison is of the update rules alone; where diffusers' own grid exists it is checked to
equal ddkit's first. The SDE is fed the noise ddkit draws: the same generator, seeded alike,
drawn in the same order (one draw per step whose noise weight is not 0).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest
import torch
from torch import Tensor, nn

import ddkit
from ddkit.denoiser import Denoiser
from ddkit.diffusion import GaussianParameterization, GaussianProcess

diffusers = pytest.importorskip("diffusers")

pytestmark = pytest.mark.parity
torch.set_num_threads(1)

T = 1000
TOL = 1e-5


class ToyEps(nn.Module):
    """A seeded, t-dependent ε-network on [B, C, H, W] in float64."""

    def __init__(self) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.conv = nn.Conv2d(3, 3, 3, padding=1).double()
        with torch.no_grad():
            self.conv.weight.copy_(
                torch.randn(self.conv.weight.shape, generator=g, dtype=torch.float64) * 0.2
            )
            self.conv.bias.copy_(torch.randn(self.conv.bias.shape, generator=g, dtype=torch.float64) * 0.1)

    def forward(self, x: Tensor, t: Tensor) -> Tensor:
        phase = torch.sin(t.double() / 97.0).reshape(-1, 1, 1, 1)
        return torch.tanh(self.conv(x) * (1.0 + 0.5 * phase)) + 0.3 * x


def betas(schedule: str) -> np.ndarray:
    if schedule == "linear":
        return np.linspace(1e-4, 0.02, T, dtype=np.float64)

    def f(u: float) -> float:
        return math.cos((u + 0.008) / 1.008 * math.pi / 2) ** 2

    return np.array([min(1 - f((i + 1) / T) / f(i / T), 0.999) for i in range(T)])


def denoiser(model: nn.Module, schedule: str) -> Denoiser:
    param = GaussianParameterization("epsilon", "fixed-small", False)
    return Denoiser(model, param, GaussianProcess(betas(schedule)), clip_denoised=False)


def assert_close(actual: Tensor, expected: Tensor, what: str) -> None:
    err = (actual - expected).abs().max().item()
    scale = 1.0 + expected.abs().max().item()
    assert err <= TOL * scale, f"{what}: max |diff| {err:.3g} > {TOL:g}·{scale:.3g}"


def x_T(seed: int) -> Tensor:
    return torch.randn(2, 3, 6, 6, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def eps_at(model: nn.Module, x: Tensor, t: float) -> Tensor:
    return model(x, torch.full((x.shape[0],), float(t), dtype=torch.float64))


def run_ddkit(sampler: Any, d: Denoiser, x: Tensor, seed: int | None = None) -> list[Tensor]:
    gen = None if seed is None else torch.Generator().manual_seed(seed)
    return [s.x for s in sampler.iterate(d, x, generator=gen)]


@pytest.mark.parametrize(
    ("schedule", "steps", "order"), [("linear", 10, 4), ("cosine", 12, 4), ("linear", 20, 2)]
)
def test_ipndm_matches_diffusers_ipndm(schedule: str, steps: int, order: int) -> None:
    model = ToyEps()
    d = denoiser(model, schedule)
    sampler = ddkit.create("sampler", "ipndm", steps=steps, order=order, spacing="logsnr")
    plan = sampler._plan(d)
    sched = diffusers.IPNDMScheduler(num_train_timesteps=T)
    sched.set_timesteps(steps)
    # diffusers' IPNDM walks its own sin/cos path; give it ddkit's grid as its (α, σ) tables.
    sig = torch.tensor(plan.extra, dtype=torch.float64)
    sched.alphas = 1.0 / torch.sqrt(1.0 + sig**2)
    sched.betas = sig * sched.alphas
    x = x_T(1)
    ref = []
    lat = x.clone()
    for k in range(steps):
        a, s = sched.alphas[k], sched.betas[k]
        eps = eps_at(model, lat, plan.timesteps[k])
        v = (eps - s * lat) / a  # diffusers' IPNDM takes v and turns it back into ε = σ·x + α·v
        lat = sched.step(v, sched.timesteps[k], lat).prev_sample
        ref.append(lat)
    got = run_ddkit(sampler, d, x)
    assert len(got) == len(ref) == steps
    if order == 4:
        for k, (g, r) in enumerate(zip(got, ref)):
            assert_close(g, r, f"x at step {k}")
    else:
        # diffusers always climbs to 4th order; the two agree while the warm-up orders coincide.
        for k in range(order):
            assert_close(got[k], ref[k], f"x at step {k}")
        assert (got[-1] - ref[-1]).abs().max().item() > 1e-8, "order had no effect"


@pytest.mark.parametrize(
    ("schedule", "steps", "order"), [("linear", 10, 3), ("linear", 20, 3), ("cosine", 8, 2), ("linear", 6, 1)]
)
def test_deis_matches_diffusers_deis_multistep(schedule: str, steps: int, order: int) -> None:
    model = ToyEps()
    d = denoiser(model, schedule)
    sampler = ddkit.create(
        "sampler", "deis", steps=steps, order=order, spacing="linspace", final_sigma="min", lambda_min=None
    )
    plan = sampler._plan(d)
    sched = diffusers.DEISMultistepScheduler(
        num_train_timesteps=T, trained_betas=betas(schedule), solver_order=order, timestep_spacing="linspace"
    )
    sched.set_timesteps(steps)
    assert [float(t) for t in sched.timesteps] == plan.timesteps
    # The same grid, up to diffusers' float32 cumulative product ᾱ; then ddkit's float64 σ's for both.
    np.testing.assert_allclose(sched.sigmas.double().numpy(), plan.extra, rtol=1e-3)
    sched.sigmas = torch.tensor(plan.extra, dtype=torch.float64)
    x = x_T(2)
    ref, lat = [], x.clone()
    for k, t in enumerate(sched.timesteps):
        lat = sched.step(eps_at(model, lat, plan.timesteps[k]), t, lat).prev_sample
        ref.append(lat)
    got = run_ddkit(sampler, d, x)
    assert len(got) == len(ref) == steps
    for k, (g, r) in enumerate(zip(got, ref)):
        assert_close(g, r, f"x at step {k}")


@pytest.mark.parametrize(
    ("schedule", "steps", "order"),
    [("linear", 10, 2), ("linear", 20, 2), ("linear", 12, 3), ("cosine", 20, 3)],
)
def test_sde_dpm_solver_pp_matches_diffusers(schedule: str, steps: int, order: int) -> None:
    model = ToyEps()
    d = denoiser(model, schedule)
    sampler = ddkit.create(
        "sampler", "dpm-solver++", steps=steps, order=order, sde=True, spacing="linspace", lambda_min=None
    )
    plan = sampler._plan(d)
    sched = diffusers.DPMSolverMultistepScheduler(
        num_train_timesteps=T,
        trained_betas=betas(schedule),
        algorithm_type="sde-dpmsolver++",
        solver_order=order,
        timestep_spacing="linspace",
    )
    sched.set_timesteps(steps)
    assert [float(t) for t in sched.timesteps] == plan.timesteps
    np.testing.assert_allclose(sched.sigmas.double().numpy(), plan.extra, rtol=1e-3)
    sched.sigmas = torch.tensor(plan.extra, dtype=torch.float64)
    x = x_T(3)
    draws = torch.Generator().manual_seed(11)
    ref, lat = [], x.clone()
    for k, t in enumerate(sched.timesteps):
        # ddkit draws no noise for the last step, whose noise weight σ' = 0.
        last = plan.extra[k + 1] == 0.0
        noise = torch.zeros_like(x) if last else torch.randn(x.shape, generator=draws, dtype=torch.float64)
        lat = sched.step(eps_at(model, lat, plan.timesteps[k]), t, lat, variance_noise=noise).prev_sample
        ref.append(lat.double())
    got = run_ddkit(sampler, d, x, seed=11)
    assert len(got) == len(ref) == steps
    for k, (g, r) in enumerate(zip(got, ref)):
        assert_close(g, r, f"x at step {k}")


def test_sde_dpm_solver_pp_reports_its_transition_log_density() -> None:
    model = ToyEps()
    d = denoiser(model, "linear")
    sampler = ddkit.create("sampler", "dpm-solver++", steps=6, sde=True, return_log_prob=True)
    x = x_T(4)
    states = list(sampler.iterate(d, x, generator=torch.Generator().manual_seed(5)))
    # Re-derive each transition's density from the same noise: N(z; 0, std²) per sample.
    sig = sampler._plan(d).extra
    draws = torch.Generator().manual_seed(5)
    for k, state in enumerate(states):
        if sig[k + 1] == 0.0:
            assert state.log_prob is None
            continue
        z = torch.randn(x.shape, generator=draws, dtype=torch.float64)
        lam, lam_next = -math.log(sig[k]), -math.log(sig[k + 1])
        std = sig[k + 1] / math.sqrt(1 + sig[k + 1] ** 2) * math.sqrt(-math.expm1(-2 * (lam_next - lam)))
        dim = z[0].numel()
        expected = (
            -0.5 * z.reshape(2, -1).square().sum(1) - dim * math.log(std) - 0.5 * dim * math.log(2 * math.pi)
        )
        assert state.log_prob is not None
        torch.testing.assert_close(state.log_prob.double(), expected, rtol=1e-5, atol=1e-4)
