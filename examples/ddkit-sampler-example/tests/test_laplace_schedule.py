"""The Laplace schedule: the protocol, the closed form it discretises, and its validation."""

from __future__ import annotations

import math

import ddkit
import numpy as np
import pytest
import torch
from ddkit import ConfigError, Schedule

from ddkit_sampler_example import LaplaceSchedule, laplace_log_snr


def sigmoid(x: np.ndarray) -> np.ndarray:
    return np.asarray(1.0 / (1.0 + np.exp(-x)))


def test_it_meets_the_schedule_protocol() -> None:
    schedule = LaplaceSchedule(100)
    assert isinstance(schedule, Schedule)
    assert schedule.timesteps == 100
    betas = schedule.betas
    assert betas.dtype == np.float64
    assert betas.shape == (100,)
    assert bool(((betas > 0) & (betas <= 0.999)).all())
    with pytest.raises(ValueError, match="read-only"):
        betas[0] = 0.5


@pytest.mark.parametrize(("mu", "b"), [(0.0, 0.5), (1.0, 1.0), (-2.0, 0.3)])
def test_the_steps_follow_the_closed_form_log_snr(mu: float, b: float) -> None:
    schedule = LaplaceSchedule(1000, mu=mu, b=b)
    t = np.arange(1, 1000) / 1000  # every step but the last, whose beta is capped
    np.testing.assert_allclose(schedule.alphas_cumprod[:-1], sigmoid(laplace_log_snr(t, mu, b)), rtol=1e-9)
    # ᾱ crosses 1/2 where λ = mu, at t = 1/2, and the last step keeps ᾱ > 0 through the cap.
    assert schedule.alphas_cumprod[499] == pytest.approx(sigmoid(np.array(mu)), rel=1e-9)
    assert 0 < schedule.alphas_cumprod[-1] < 1e-3 * schedule.alphas_cumprod[-2] * 1.001


def test_the_log_snr_is_laplace_shaped() -> None:
    d = np.array([0.05, 0.2, 0.4])
    upper, lower = laplace_log_snr(0.5 - d, 1.5, 0.7), laplace_log_snr(0.5 + d, 1.5, 0.7)
    np.testing.assert_allclose(upper - 1.5, -(lower - 1.5))  # symmetric about mu
    np.testing.assert_allclose(upper - 1.5, -0.7 * np.log(1 - 2 * d))
    assert laplace_log_snr(0.0) == math.inf
    assert laplace_log_snr(1.0) == -math.inf


def test_alpha_bar_is_exact_on_the_grid_and_monotone_between() -> None:
    schedule = LaplaceSchedule(50)
    grid = torch.arange(51, dtype=torch.float64) / 50
    on_grid = schedule.alpha_bar(grid)
    assert on_grid[0].item() == 1.0
    assert on_grid[1:].numpy().tolist() == schedule.alphas_cumprod.tolist()
    dense = schedule.alpha_bar(torch.linspace(0, 1, 2001, dtype=torch.float64))
    assert bool((dense[1:] < dense[:-1]).all())
    assert schedule.alpha_bar(0.5) == pytest.approx(float(schedule.alphas_cumprod[24]))
    assert schedule.alpha_bar(torch.tensor([0.3], dtype=torch.float32)).dtype == torch.float32
    assert schedule.log_snr(0.5) == pytest.approx(0.0, abs=1e-9)


def test_the_process_runs_on_these_betas() -> None:
    schedule = LaplaceSchedule(200, b=1.0)
    process = schedule.process()
    assert process.num_timesteps == 200
    np.testing.assert_array_equal(process.betas, schedule.betas)


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"timesteps": 0}, "'timesteps' must be an int >= 1"),
        ({"timesteps": True}, "'timesteps' must be an int >= 1"),
        ({"b": 0.0}, "'b' .* must be > 0"),
        ({"mu": math.nan}, "'mu' must be a finite number"),
        ({"max_beta": 1.0}, r"'max_beta' must lie in \(0, 1\)"),
        ({"mu": 60.0}, r"betas\[0\] = .* is lost next to 1 in float64; .* bring mu closer to 0"),
    ],
    ids=["zero-steps", "bool-steps", "zero-spread", "nan-centre", "beta-1", "saturated"],
)
def test_bad_parameters_are_refused_with_the_fix(params: dict[str, float], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        LaplaceSchedule(**params)  # type: ignore[arg-type]


def test_the_registry_builds_it_by_name_and_checks_parameter_types() -> None:
    schedule = ddkit.create("schedule", "laplace", timesteps=100, b=1.0)
    assert isinstance(schedule, LaplaceSchedule)
    assert repr(schedule) == "LaplaceSchedule(timesteps=100, mu=0, b=1, max_beta=0.999)"
    with pytest.raises(TypeError, match="schedule 'laplace': parameter 'b' must be float"):
        ddkit.create("schedule", "laplace", b="wide")
