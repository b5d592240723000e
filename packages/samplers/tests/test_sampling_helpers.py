"""ddkit.sampling: spacings, per-sample noise, the Gaussian log density and the base class contract."""

from __future__ import annotations

import math
from collections.abc import Iterator

import numpy as np
import pytest
import torch
from sampler_toys import cosine_betas, linear_betas, make_denoiser
from torch import Tensor

from ddkit import SamplerState
from ddkit.denoiser import Denoiser
from ddkit.diffusion.respace import space_timesteps
from ddkit.sampling import (
    Plan,
    Run,
    SamplerBase,
    check_spacing,
    continuous_schedule,
    discrete_timesteps,
    gaussian_log_prob,
    karras_sigmas,
    randn,
    sigma_to_t,
    sigmas_of,
    t_to_sigma,
)

AC = np.cumprod(1.0 - linear_betas(1000))


def test_discrete_spacings_follow_guided_diffusion_and_diffusers() -> None:
    assert discrete_timesteps("ddim", 10, AC) == list(range(0, 1000, 100))
    assert discrete_timesteps("sections", 7, AC) == space_timesteps(1000, "7")
    assert discrete_timesteps("ddim25", None, AC) == space_timesteps(1000, "ddim25")
    assert discrete_timesteps("10,5", None, AC) == space_timesteps(1000, "10,5")
    # diffusers' DDIMScheduler grids for 10 of 1000 steps
    assert discrete_timesteps("linspace", 10, AC) == [0, 111, 222, 333, 444, 555, 666, 777, 888, 999]
    assert discrete_timesteps("leading", 10, AC) == list(range(0, 1000, 100))
    assert discrete_timesteps("trailing", 10, AC) == [99, 199, 299, 399, 499, 599, 699, 799, 899, 999]
    assert discrete_timesteps("sections", None, AC) == list(range(1000))
    assert discrete_timesteps([5, 900, 17], None, AC) == [5, 17, 900]
    karras = discrete_timesteps("karras", 10, AC)
    assert karras[0] == 0
    assert karras[-1] == 999
    assert len(karras) <= 10
    logsnr = discrete_timesteps("logsnr", 10, AC)
    assert logsnr[0] == 0
    assert logsnr[-1] == 999


def test_continuous_schedules_follow_diffusers() -> None:
    sig_all = sigmas_of(AC)
    sig, t = continuous_schedule("linspace", 7, AC)
    assert np.allclose(t, np.linspace(0, 999, 7)[::-1])
    assert np.allclose(sig, np.interp(t, np.arange(1000), sig_all))
    # DPM-Solver's grids: steps + 1 points with the t = 0 end dropped
    _, t = continuous_schedule("linspace", 10, AC, drop_last=True)
    assert t.tolist() == np.linspace(0, 999, 11).round()[::-1][:-1].tolist()
    _, t = continuous_schedule("leading", 10, AC, drop_last=True)
    assert t.tolist() == [900, 810, 720, 630, 540, 450, 360, 270, 180, 90]
    _, t = continuous_schedule("trailing", 4, AC, drop_last=True)
    assert t.tolist() == [999, 749, 499, 249]
    sig, t = continuous_schedule("karras", 8, AC)
    assert sig[0] == pytest.approx(sig_all[-1])
    assert sig[-1] == pytest.approx(sig_all[0])
    ramp = sig ** (1 / 7)
    assert np.allclose(np.diff(ramp), np.diff(ramp)[0])  # uniform in σ^(1/ρ)
    assert np.allclose(t_to_sigma(t, AC), sig, rtol=1e-2)  # t maps back to (about) the same σ
    sig, _ = continuous_schedule("logsnr", 6, AC)
    assert np.allclose(np.diff(np.log(sig)), np.diff(np.log(sig))[0])
    # capped at a last timestep (lambda_min_clipped)
    _, t = continuous_schedule("linspace", 5, AC, drop_last=True, last_timestep=500)
    assert t[0] == 499


def test_sigma_t_round_trip_and_zero_terminal_snr() -> None:
    ts = np.array([0.0, 10.5, 250.0, 999.0])
    assert np.allclose(sigma_to_t(np.exp(np.interp(ts, np.arange(1000), np.log(sigmas_of(AC)))), AC), ts)
    ac = AC.copy()
    ac[-1] = 0.0
    assert np.isfinite(sigmas_of(ac)).all()
    assert karras_sigmas(0.1, 10.0, 3)[1] == pytest.approx((0.5 * (10 ** (1 / 7) + 0.1 ** (1 / 7))) ** 7)


def test_check_spacing_rejects_what_can_never_work() -> None:
    check_spacing("karras", 10)
    check_spacing([999, 500, 0], None)
    with pytest.raises(ValueError, match="did you mean 'karras'"):
        check_spacing("karas", 10)
    with pytest.raises(ValueError, match="respacing string"):
        check_spacing("250", 10)
    with pytest.raises(ValueError, match=">= 0"):
        check_spacing([5, -1], None)
    with pytest.raises(ValueError, match="differs from the number of explicit timesteps"):
        check_spacing([5, 1], 3)


def test_randn_global_single_and_per_sample() -> None:
    torch.manual_seed(3)
    a = randn((4, 2, 3), None, torch.device("cpu"), torch.float32)
    torch.manual_seed(3)
    assert torch.equal(a, torch.randn(4, 2, 3))
    b = randn((4, 2), torch.Generator().manual_seed(1), torch.device("cpu"), torch.float64)
    assert torch.equal(b, torch.randn(4, 2, generator=torch.Generator().manual_seed(1), dtype=torch.float64))
    gens = [torch.Generator().manual_seed(s) for s in (5, 6, 7)]
    c = randn((3, 2, 3), gens, torch.device("cpu"), torch.float32)
    for row, seed in zip(c, (5, 6, 7)):
        assert torch.equal(row, torch.randn(2, 3, generator=torch.Generator().manual_seed(seed)))


def test_gaussian_log_prob_matches_torch_distributions() -> None:
    noise = torch.randn(3, 2, 4)
    mean = torch.randn(3, 2, 4)
    std = 0.3
    x = mean + std * noise
    expected = torch.distributions.Normal(mean, std).log_prob(x).sum(dim=(1, 2))
    assert torch.allclose(gaussian_log_prob(noise, math.log(std)), expected, atol=1e-4)
    log_std = torch.rand(3, 2, 1) - 1.0
    x = mean + log_std.exp() * noise
    expected = torch.distributions.Normal(mean, log_std.exp().expand_as(mean)).log_prob(x).sum(dim=(1, 2))
    assert torch.allclose(gaussian_log_prob(noise, log_std), expected, atol=1e-4)


class HalfStep(SamplerBase):
    """A third-party sampler in a dozen lines: x ← x̂_0 mixed with x, on any chain the base class plans."""

    name = "half-step"
    default_steps = 4
    default_spacing = "linspace"

    def _plan(self, denoiser: Denoiser) -> Plan:
        return self._chain_plan(denoiser)

    def _run(self, plan: Plan, x: Tensor, start: int, run: Run) -> Iterator[SamplerState]:
        d = plan.denoiser
        n = d.process.num_timesteps
        for k in range(start, n):
            pred = d(x, n - 1 - k)
            state = SamplerState(
                step=k - start, t=plan.timesteps[k], x=0.5 * (x + pred.x0), x0=pred.x0, nfe=d.nfe
            )
            yield state
            x = state.x


def test_a_third_party_sampler_gets_the_shared_powers() -> None:
    d = make_denoiser(betas=cosine_betas(100))
    sampler = HalfStep(clip_denoised=True)
    seen: list[SamplerState] = []
    known = torch.zeros(2, 3)
    mask = torch.tensor([[1.0, 0.0, 0.0]]).expand(2, 3)
    out = sampler.sample(d, torch.randn(2, 3), callback=seen.append, mask=mask, known=known)
    assert len(seen) == 4
    assert sampler.last_nfe == 4
    assert torch.equal(out[:, 0], known[:, 0])
    # lambda_min (default −5.1) applies: the cosine chain's last step (λ = −7.7) is not visited.
    assert [s.t for s in seen] == [98.0, 65.0, 33.0, 0.0]
    assert HalfStep(lambda_min=None)._plan(d).timesteps == [99.0, 66.0, 33.0, 0.0]
    states = list(sampler.iterate(d, torch.randn(2, 3), init=torch.ones(2, 3), strength=0.5))
    assert len(states) == 2
    with pytest.raises(ValueError, match="'steps' must be a positive int \\(got -1\\)"):
        HalfStep(steps=-1)
