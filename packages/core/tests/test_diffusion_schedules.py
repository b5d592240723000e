"""Noise schedules: betas against their papers' formulas, continuous ᾱ(t), zero terminal SNR, bad input."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from ddkit.diffusion import GaussianProcess, schedules
from ddkit.errors import ConfigError
from ddkit.protocols import Schedule

torch.set_num_threads(1)

FACTORIES = {
    "linear": schedules.linear,
    "cosine": schedules.cosine,
    "scaled-linear": schedules.scaled_linear,
    "sigmoid": schedules.sigmoid,
}
settings.register_profile("ddkit-diffusion", max_examples=40, deadline=None)
settings.load_profile("ddkit-diffusion")


def build(name: str, timesteps: int, zero_terminal_snr: bool = False) -> schedules.NoiseSchedule:
    return FACTORIES[name](timesteps, zero_terminal_snr=zero_terminal_snr)


# -- properties of every schedule -------------------------------------------------------


@given(name=st.sampled_from(sorted(FACTORIES)), timesteps=st.integers(21, 2000), zts=st.booleans())
def test_alpha_bar_strictly_decreasing_in_unit_interval(name: str, timesteps: int, zts: bool) -> None:
    sched = build(name, timesteps, zts)
    ab = sched.alphas_cumprod
    assert sched.timesteps == timesteps
    assert sched.betas.dtype == np.float64
    assert np.all(np.diff(ab) < 0)
    assert np.all((sched.betas > 0) & (sched.betas <= 1))
    if zts:
        assert ab[-1] == 0.0
        assert np.all((ab[:-1] > 0) & (ab[:-1] < 1))
    else:
        assert np.all((ab > 0) & (ab < 1))


@given(name=st.sampled_from(sorted(FACTORIES)), timesteps=st.integers(20, 1200), zts=st.booleans())
def test_continuous_alpha_bar_exact_at_grid_and_monotone(name: str, timesteps: int, zts: bool) -> None:
    sched = build(name, timesteps, zts)
    grid = torch.arange(timesteps + 1, dtype=torch.float64) / timesteps
    at_grid = sched.alpha_bar(grid)
    assert at_grid[0].item() == 1.0
    assert torch.equal(at_grid[1:], torch.from_numpy(sched.alphas_cumprod))  # exact, not close
    mid = sched.alpha_bar((torch.arange(timesteps, dtype=torch.float64) + 0.5) / timesteps)
    assert torch.all(mid < at_grid[:-1])
    assert torch.all(mid > at_grid[1:])
    dense = sched.alpha_bar(torch.linspace(0, 1, 20 * timesteps + 1, dtype=torch.float64))
    assert torch.all(dense[1:] <= dense[:-1])
    lam = sched.log_snr(grid[1:])
    assert torch.all(lam[1:] < lam[:-1])


def test_continuous_alpha_bar_is_smooth_between_grid_points() -> None:
    sched = schedules.linear(50)
    # C1: one-sided difference quotients agree at an interior knot.
    k, h = torch.tensor(20 / 50, dtype=torch.float64), 1e-7
    left = (sched.alpha_bar(k) - sched.alpha_bar(k - h)) / h
    right = (sched.alpha_bar(k + h) - sched.alpha_bar(k)) / h
    assert math.isclose(float(left), float(right), rel_tol=1e-4)


def test_alpha_bar_types_and_log_snr() -> None:
    sched = schedules.cosine(100)
    assert isinstance(sched, Schedule)
    assert sched.alpha_bar(0.0) == 1.0
    assert isinstance(sched.alpha_bar(0.5), float)
    assert sched.alpha_bar(torch.tensor([0.5], dtype=torch.float32)).dtype == torch.float32
    assert sched.alpha_bar(torch.tensor([0.5], dtype=torch.float64)).dtype == torch.float64
    t = torch.tensor([0.1, 0.5, 0.9], dtype=torch.float64)
    ab = sched.alpha_bar(t)
    np.testing.assert_allclose(sched.log_snr(t).numpy(), torch.log(ab / (1 - ab)).numpy(), rtol=1e-12)
    assert sched.log_snr(0.0) == math.inf
    assert sched.alpha_bar(-0.5) == 1.0
    assert sched.alpha_bar(1.5) == sched.alphas_cumprod[-1]


# -- each schedule against its formula --------------------------------------------------


def test_linear_is_scaled_ddpm() -> None:
    for timesteps in (20, 250, 1000, 4000):
        scale = 1000 / timesteps
        expected = np.linspace(1e-4 * scale, 0.02 * scale, timesteps)
        np.testing.assert_allclose(schedules.linear(timesteps).betas, expected, rtol=1e-15)


def test_cosine_follows_nichol_dhariwal() -> None:
    timesteps = 200

    def f(t: float) -> float:
        return math.cos((t + 0.008) / 1.008 * math.pi / 2) ** 2

    sched = schedules.cosine(timesteps)
    capped = sched.betas >= 0.999
    assert capped[-1]
    assert capped.sum() == 1
    expected = np.array([f((i + 1) / timesteps) / f(0) for i in range(timesteps - 1)])
    np.testing.assert_allclose(sched.alphas_cumprod[:-1], expected, rtol=1e-10)


def test_scaled_linear_is_linear_in_sqrt_space() -> None:
    sched = schedules.scaled_linear(1000)
    root = np.sqrt(sched.betas)
    assert math.isclose(sched.betas[0], 0.00085, rel_tol=1e-12)
    assert math.isclose(sched.betas[-1], 0.012, rel_tol=1e-12)
    np.testing.assert_allclose(np.diff(root), (math.sqrt(0.012) - math.sqrt(0.00085)) / 999, rtol=1e-9)


@pytest.mark.parametrize(("start", "end", "tau"), [(-3.0, 3.0, 1.0), (0.0, 3.0, 1.1), (-2.0, 2.0, 0.7)])
def test_sigmoid_follows_chen(start: float, end: float, tau: float) -> None:
    timesteps = 300

    def sig(x: float) -> float:
        return 1 / (1 + math.exp(-x))

    def gamma(t: float) -> float:
        return (sig(end / tau) - sig((t * (end - start) + start) / tau)) / (sig(end / tau) - sig(start / tau))

    sched = schedules.sigmoid(timesteps, start=start, end=end, tau=tau)
    expected = np.array([gamma((i + 1) / timesteps) for i in range(timesteps - 1)])
    np.testing.assert_allclose(sched.alphas_cumprod[:-1], expected, rtol=1e-9)
    assert sched.params == {
        "timesteps": timesteps,
        "start": start,
        "end": end,
        "tau": tau,
        "clip_min": 1e-9,
        "max_beta": 0.999,
    }


@pytest.mark.parametrize("name", sorted(FACTORIES))
def test_zero_terminal_snr_follows_lin_et_al(name: str) -> None:
    base, zts = build(name, 100), build(name, 100, zero_terminal_snr=True)
    a = np.sqrt(base.alphas_cumprod)
    expected = (a - a[-1]) * a[0] / (a[0] - a[-1])  # Lin et al. 2023, Algorithm 1
    np.testing.assert_allclose(np.sqrt(zts.alphas_cumprod), expected, rtol=1e-10, atol=1e-15)
    assert zts.alphas_cumprod[-1] == 0.0
    assert zts.betas[-1] == 1.0
    assert math.isclose(zts.alphas_cumprod[0], base.alphas_cumprod[0], rel_tol=1e-12)
    assert zts.log_snr(1.0) == -math.inf
    assert zts.alpha_bar(1.0) == 0.0
    assert zts.params["zero_terminal_snr"] is True


def test_explicit_and_process() -> None:
    betas = [0.1, 0.2, 0.5]
    sched = schedules.explicit(betas)
    np.testing.assert_array_equal(sched.betas, betas)
    assert sched.timesteps == 3
    assert not sched.betas.flags.writeable
    process = sched.process(rescale_timesteps=True)
    assert isinstance(process, GaussianProcess)
    assert process.rescale_timesteps
    np.testing.assert_array_equal(process.alphas_cumprod, sched.alphas_cumprod)
    assert schedules.explicit(torch.tensor(betas), timesteps=3).timesteps == 3
    assert repr(sched) == "NoiseSchedule('explicit', timesteps=3)"


# -- bad input --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("betas", "match"),
    [
        ([0.1, 0.0, 0.2], r"betas\[1\] = 0\.0"),
        ([0.1, 1.5], r"betas\[1\] = 1\.5"),
        ([-0.1], r"betas\[0\] = -0\.1"),
        ([0.1, float("nan")], r"betas\[1\] = nan"),
        ([[0.1, 0.2]], "1-D"),
        ([], "non-empty"),
    ],
)
def test_bad_betas(betas: list[float], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        schedules.explicit(betas)
    with pytest.raises(ValueError, match=match):
        GaussianProcess(betas)


def test_bad_parameters() -> None:
    with pytest.raises(ConfigError, match=r"T >= 20"):
        schedules.linear(10)
    with pytest.raises(ConfigError, match="'timesteps' must be an int >= 1"):
        schedules.cosine(0)
    with pytest.raises(ConfigError, match="'timesteps' must be an int"):
        schedules.cosine(True)
    with pytest.raises(ConfigError, match="'timesteps' is 4 but 2 betas"):
        schedules.explicit([0.1, 0.2], timesteps=4)
    with pytest.raises(ConfigError, match="at least 2 timesteps"):
        schedules.explicit([0.1], zero_terminal_snr=True)
    with pytest.raises(ConfigError, match="'zero_terminal_snr' must be a bool"):
        schedules.cosine(10, zero_terminal_snr="yes")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="'end' must exceed 'start'"):
        schedules.sigmoid(10, start=3, end=-3)
    with pytest.raises(ConfigError, match="'tau' must be > 0"):
        schedules.sigmoid(10, tau=0)
    with pytest.raises(ConfigError, match="'max_beta'"):
        schedules.cosine(10, max_beta=1.5)
