"""Gaussian paths: closed forms, their chain, velocity and edm parameterizations, continuous resamplers."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import ddkit
from ddkit.diffusion.parameterization import GaussianParameterization, edm, velocity
from ddkit.diffusion.paths import EDM, PathSchedule, RectifiedFlow, VPContinuous, process_of
from ddkit.diffusion.resample import LogitNormalResampler, LogNormalResampler, to_chain_steps
from ddkit.errors import ConfigError


class Trig(PathSchedule):
    """α = cos(πt/2), σ = sin(πt/2): a third path written with only ``alpha_sigma``."""

    def __init__(self, timesteps: int = 1000) -> None:
        super().__init__(timesteps, name="trig")

    def alpha_sigma(self, t: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        t = np.asarray(t, dtype=np.float64)
        return np.cos(np.pi * t / 2), np.sin(np.pi * t / 2)


PATHS = [RectifiedFlow(), RectifiedFlow(shift=3.0), EDM(), VPContinuous(), Trig()]


@pytest.mark.parametrize("path", PATHS, ids=lambda p: f"{p.name}{p.params}")
def test_lambda_inverse_and_derivatives(path: PathSchedule) -> None:
    t = np.linspace(0.01, 0.99, 17) * path.t_max
    lam = path.half_log_snr(t)
    assert np.all(np.diff(lam) < 0), "λ must fall with t"
    np.testing.assert_allclose(path.time_of_lambda(lam), t, rtol=1e-7, atol=1e-9)
    da, ds = path.derivatives(t)
    h = 1e-6 * path.t_max
    a_hi, s_hi = path.alpha_sigma(t + h)
    a_lo, s_lo = path.alpha_sigma(t - h)
    np.testing.assert_allclose(da, (a_hi - a_lo) / (2 * h), rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(ds, (s_hi - s_lo) / (2 * h), rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("path", PATHS, ids=lambda p: p.name)
def test_chain_interpolates_the_closed_form_exactly(path: PathSchedule) -> None:
    process = process_of(path)
    assert process.path is path
    assert process.num_timesteps == path.timesteps
    np.testing.assert_allclose(process.alphas_cumprod, path.alphas_cumprod, rtol=1e-12, atol=1e-15)
    u = np.array([0.25, 10.5, 499.3, 998.9])
    times = np.asarray(process.time_of_index(u))
    a, s = path.alpha_sigma(times)
    want = a * a / (a * a + s * s)
    got = [process.alpha_bar(float(v)) for v in u]
    np.testing.assert_allclose(got, want, rtol=1e-12)
    # σ → index → σ round trip, exact on a path (diffusers interpolates log σ instead).
    sig = process.sigma_of_index(u)
    np.testing.assert_allclose(process.index_of_sigma(sig), u, rtol=1e-8, atol=1e-8)


def test_rectified_flow_grid_is_diffusers_shifted_sigmas() -> None:
    path = RectifiedFlow(1000, shift=3.0)
    s = np.arange(1, 1001) / 1000
    np.testing.assert_allclose(path.grid(), 3 * s / (1 + 2 * s), rtol=1e-14)
    assert path.alphas_cumprod[-1] == 0.0
    assert path.betas[-1] == 1.0
    assert float(path.model_time(torch.tensor([0.5], dtype=torch.float64))) == 500.0


def test_edm_model_time_is_sigma_and_grid_spans_range() -> None:
    path = EDM(sigma_min=0.002, sigma_max=80.0)
    g = path.grid()
    assert g[0] == 0.002
    assert g[-1] == 80.0
    assert np.all(np.diff(g) > 0)
    assert float(path.model_time(torch.tensor([3.0]))) == 3.0


@pytest.mark.parametrize(
    ("factory", "kwargs", "fragment"),
    [
        (RectifiedFlow, {"shift": 0.0}, "'shift' must be > 0"),
        (RectifiedFlow, {"shift": float("nan")}, "'shift' must be a positive finite number"),
        (EDM, {"sigma_min": 5.0, "sigma_max": 1.0}, "must be below 'sigma_max'"),
        (VPContinuous, {"beta_min": 30.0}, "must be below 'beta_max'"),
        (VPContinuous, {"timesteps": 1}, "'timesteps' must lie in"),
    ],
)
def test_bad_path_parameters_are_refused(factory: type, kwargs: dict[str, object], fragment: str) -> None:
    with pytest.raises(ConfigError, match=fragment):
        factory(**kwargs)


def _x0_eps(
    param: GaussianParameterization,
    process: ddkit.GaussianProcess,
    step: float,
    x: torch.Tensor,
    out: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    pred = param.predict(process, out, x, step, posterior=False)
    return pred.x0, pred.eps


@pytest.mark.parametrize("path", PATHS[:4], ids=lambda p: p.name)
def test_velocity_reads_its_own_target_back(path: PathSchedule) -> None:
    """Feeding the network's ideal output (its training target) gives back x_0 and ε exactly."""
    process = process_of(path)
    param = velocity()
    g = torch.Generator().manual_seed(0)
    x0 = torch.randn(8, 3, generator=g, dtype=torch.float64)
    eps = torch.randn(8, 3, generator=g, dtype=torch.float64)
    for step in (3, 400.5, 999 if path.name != "rectified-flow" else 998.7):
        x_t = process.q_sample(x0, step if isinstance(step, int) else float(step), eps)
        target = param.target(process, x0, x_t, step, eps)
        got_x0, got_eps = _x0_eps(param, process, step, x_t, target)
        torch.testing.assert_close(got_x0, x0, rtol=1e-9, atol=1e-9)
        torch.testing.assert_close(got_eps, eps, rtol=1e-9, atol=1e-9)


def test_velocity_on_rectified_flow_is_eps_minus_x0() -> None:
    process = process_of(RectifiedFlow())
    x0 = torch.randn(4, 2, dtype=torch.float64)
    eps = torch.randn(4, 2, dtype=torch.float64)
    target = velocity().target(process, x0, process.q_sample(x0, 500, eps), 500, eps)
    torch.testing.assert_close(target, eps - x0)


def test_edm_preconditioning_matches_the_paper() -> None:
    """c_skip, c_out, c_in and c_noise of Karras et al. 2022, Table 1, read in the chain's scaling."""
    path = EDM()
    process = process_of(path)
    param = edm(sigma_data=0.5)
    step = 700
    sigma = float(path.grid()[step])
    x_path = torch.randn(5, 3, dtype=torch.float64) * sigma
    x = x_path / math.sqrt(1 + sigma**2)  # the chain's (variance-preserving) scaling
    x_in, t_in = param.model_input(process, x, step)
    c_in = 1 / math.sqrt(sigma**2 + 0.25)
    torch.testing.assert_close(x_in, c_in * x_path)
    torch.testing.assert_close(t_in, torch.full((5,), math.log(sigma) / 4, dtype=torch.float64))
    f = torch.randn(5, 3, dtype=torch.float64)
    pred = param.predict(process, f, x, step, posterior=False)
    c_skip, c_out = 0.25 / (sigma**2 + 0.25), sigma * 0.5 / math.sqrt(sigma**2 + 0.25)
    torch.testing.assert_close(pred.x0, c_skip * x_path + c_out * f)
    torch.testing.assert_close(pred.eps, (x_path - pred.x0) / sigma)
    # The loss target is the F that makes D exact.
    x0 = torch.randn(5, 3, dtype=torch.float64)
    target = param.target(process, x0, x, step, torch.zeros_like(x0))
    torch.testing.assert_close(param.predict(process, target, x, step, posterior=False).x0, x0)


def test_explicit_path_times_walk_exactly() -> None:
    process = process_of(RectifiedFlow())
    chain = process.at_times([1.0, 0.5, 0.123])
    np.testing.assert_allclose(chain.times, [0.123, 0.5, 1.0])
    assert chain.alphas_cumprod[-1] == 0.0
    np.testing.assert_allclose(chain.alphas_cumprod[0], 0.877**2 / (0.877**2 + 0.123**2))
    t = chain.model_timesteps(1, 2, "cpu")
    torch.testing.assert_close(t, torch.full((2,), 500.0, dtype=torch.float64))
    with pytest.raises(ValueError, match="time range"):
        process.at_times([1.5, 0.5])


def test_continuous_resamplers_draw_their_densities() -> None:
    g = torch.Generator().manual_seed(0)
    t, w = LogitNormalResampler().sample(20000, generator=g)
    assert t.dtype == torch.float64
    assert bool(((t > 0) & (t < 1)).all())
    assert bool((w == 1).all())
    logit = torch.log(t) - torch.log1p(-t)
    assert abs(float(logit.mean())) < 0.03
    assert abs(float(logit.std()) - 1.0) < 0.03
    sigma, _ = LogNormalResampler().sample(20000, generator=g)
    assert abs(float(sigma.log().mean()) + 1.2) < 0.04
    assert abs(float(sigma.log().std()) - 1.2) < 0.04
    with pytest.raises(ConfigError, match="'std' must be > 0"):
        LogNormalResampler(std=0.0)


def test_resampler_draws_become_chain_steps() -> None:
    flow = process_of(RectifiedFlow())
    steps = to_chain_steps(flow, LogitNormalResampler(), torch.tensor([0.5, 0.001], dtype=torch.float64))
    np.testing.assert_allclose(flow.time_of_index(steps.numpy()), [0.5, 0.001], rtol=1e-12)
    vp = process_of(EDM())
    steps = to_chain_steps(vp, LogNormalResampler(), torch.tensor([1.0, 10.0], dtype=torch.float64))
    np.testing.assert_allclose(vp.sigma_of_index(steps.numpy()), [1.0, 10.0], rtol=1e-10)
    chain = ddkit.create("schedule", "linear").process()
    steps = to_chain_steps(chain, LogitNormalResampler(), torch.tensor([0.5], dtype=torch.float64))
    assert float(steps[0]) == pytest.approx(499.0)
    long = torch.tensor([3, 4])
    assert to_chain_steps(chain, object(), long) is long


@pytest.mark.parametrize("name", ["rectified-flow", "edm", "vp-continuous"])
def test_paths_are_registered_schedules(name: str) -> None:
    schedule = ddkit.create("schedule", name, timesteps=100)
    assert isinstance(schedule, ddkit.protocols.Schedule)
    assert schedule.timesteps == 100
    assert schedule.betas.shape == (100,)


class _LinearClassifierGuidance:
    """Score-form guidance whose log p(y | x_path) is w·x_path: it records what it was called with."""

    forms = ("score",)
    name = "linear-classifier"

    def __init__(self, w: torch.Tensor) -> None:
        self.w = w
        self.seen: list[tuple[torch.Tensor, torch.Tensor]] = []

    def check(self, spec: object, conditioning: object) -> None:
        pass

    def wrap_model(self, model: object, *, mean_channels: int) -> object:
        raise AssertionError("score form only")

    def gradient(self, x: torch.Tensor, t: torch.Tensor, **conditioning: object) -> torch.Tensor:
        self.seen.append((x.clone(), t.clone()))
        return self.w.expand_as(x)


def test_score_guidance_on_a_path_sees_the_paths_x_and_time() -> None:
    """The classifier sees x_path = k·x and the path's model time; ε shifts by −sqrt(1 − ᾱ)·k·∇ log p."""
    from ddkit.denoiser import Denoiser

    process = process_of(RectifiedFlow())
    w = torch.tensor([[0.3, -0.7]], dtype=torch.float64)
    guide = _LinearClassifierGuidance(w)
    model = lambda x, t: x * 0.1 + t.reshape(-1, 1) / 1000  # noqa: E731 (a tiny velocity net)
    plain = Denoiser(model, velocity(), process)
    guided = Denoiser(model, velocity(), process, guidances=[guide], forms=("score",))
    x = torch.randn(4, 2, dtype=torch.float64)
    step = 600
    k = process.scale(step, x)
    ab = process.alpha_bar(step)
    shift = guided(x, step).eps - plain(x, step).eps
    torch.testing.assert_close(shift, -math.sqrt(1 - ab) * k * w.expand_as(x))
    seen_x, seen_t = guide.seen[0]
    torch.testing.assert_close(seen_x, k * x)
    torch.testing.assert_close(
        seen_t, torch.full((4,), 1000 * float(process.time_of_index(step)), dtype=torch.float64)
    )
