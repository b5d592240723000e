"""UniPC's numbers: convergence orders, the corrector's gain, its options and what it inherits from ddkit.

The reference is ddkit's analytic Gaussian model, whose probability-flow ODE is solved in closed
form (``AnalyticGaussian.ode_solution``), so the error of every step count is known exactly.
"""

from __future__ import annotations

import itertools
import math
from typing import Any

import ddkit
import numpy as np
import pytest
import torch
from ddkit.diffusion import GaussianProcess
from ddkit.testing import AnalyticGaussian
from ddkit.testing.sampler_conformance import linear_betas
from torch import Tensor

from ddkit_sampler_example import UniPC
from ddkit_sampler_example.unipc import unipc_weights

MEAN, STD = (0.5, -0.3), (1.0, 0.5)


@pytest.fixture(scope="module")
def process() -> GaussianProcess:
    return GaussianProcess(linear_betas(1000))


@pytest.fixture(scope="module")
def x_T() -> Tensor:
    return torch.randn(64, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)


def ode_error(process: GaussianProcess, x_T: Tensor, steps: int, **params: Any) -> float:
    """Largest error against the exact ODE solution, ending at the chain's smallest σ (final_sigma="min")."""
    model = AnalyticGaussian(process.alphas_cumprod, mean=MEAN, std=STD)
    ac = process.alphas_cumprod
    exact = model.ode_solution(x_T, float(ac[-1]), float(ac[0]))
    sampler = UniPC(steps=steps, final_sigma="min", lower_order_final=False, **params)
    return float((sampler.sample(model.denoiser(process), x_T) - exact).abs().max())


@pytest.mark.parametrize(
    ("params", "expected"),
    [
        ({"order": 1, "corrector": False}, 1.0),  # DDIM
        ({"order": 1}, 2.0),  # UniC adds one order...
        ({"order": 2, "corrector": False}, 2.0),
        ({"order": 2}, 3.0),  # ... at no extra model call
        ({"order": 2, "variant": "bh1"}, 3.0),
    ],
    ids=["p1", "p1-corrected", "p2", "p2-corrected", "p2-corrected-bh1"],
)
def test_the_error_falls_at_the_order_of_the_method(
    process: GaussianProcess, x_T: Tensor, params: dict[str, Any], expected: float
) -> None:
    coarse, fine = ode_error(process, x_T, 32, **params), ode_error(process, x_T, 64, **params)
    assert math.log2(coarse / fine) == pytest.approx(expected, abs=0.3)


def test_order_3_converges_at_least_at_third_order(process: GaussianProcess, x_T: Tensor) -> None:
    errors = [ode_error(process, x_T, n, order=3) for n in (8, 16, 32)]
    assert all(math.log2(a / b) > 2.7 for a, b in itertools.pairwise(errors)), errors


def test_unipc_at_10_nfe_beats_ddim_at_10_nfe(process: GaussianProcess, x_T: Tensor) -> None:
    """UniPC-2 vs its own order-1 predictor without corrector, which is exactly DDIM (eta = 0)."""
    model = AnalyticGaussian(process.alphas_cumprod, mean=MEAN, std=STD)
    exact = model.ode_solution(x_T, float(process.alphas_cumprod[-1]))
    errors = {}
    samplers = {"ddim": UniPC(steps=10, order=1, corrector=False), "unipc": UniPC(steps=10)}
    for name, sampler in samplers.items():
        denoiser = model.denoiser(process)
        out = sampler.sample(denoiser, x_T)
        assert denoiser.nfe == 10
        errors[name] = float((out - exact).abs().max())
    assert errors["unipc"] < 0.25 * errors["ddim"], errors


def test_the_first_order_weights_are_ddims() -> None:
    """UniP-1 from σ_s to σ_t: x_t = (s_t/s_s)·x_s + α_t·(1 − s_t·α_s/(s_s·α_t))·x̂_0, DDIM's update."""
    sig_s, sig_t = 3.0, 0.5
    alpha_s, alpha_t = 1 / math.sqrt(1 + sig_s**2), 1 / math.sqrt(1 + sig_t**2)
    lam = [-math.log(sig_t), -math.log(sig_s)]
    (weight,) = unipc_weights(lam, alpha_t, sig_t * alpha_t / (sig_s * alpha_s), 1, "bh2", corrector=False)
    # DDIM: x_t = sqrt(ᾱ_t)·x̂_0 + sqrt(1 − ᾱ_t)·ε̂, ε̂ = (x_s − sqrt(ᾱ_s)·x̂_0)/sqrt(1 − ᾱ_s).
    ddim = alpha_t - (sig_t * alpha_t) * alpha_s / (sig_s * alpha_s)
    assert weight == pytest.approx(ddim, rel=1e-12)


@pytest.mark.parametrize("order", [1, 2, 3])
@pytest.mark.parametrize("corrector", [False, True])
def test_the_weights_reproduce_constant_and_linear_histories(order: int, corrector: bool) -> None:
    """A constant x̂_0 history moves x exactly as one DDIM step; the weights of the history sum to its."""
    lam = [1.3, 0.4, -0.2, -0.9]  # target, then newest to oldest
    alpha_t, ratio = 0.8, 0.35
    weights = unipc_weights(
        lam[: order + 1] if not corrector else [lam[0], *lam[1 : order + 1]],
        alpha_t,
        ratio,
        order,
        "bh2",
        corrector=corrector,
    )
    (ddim,) = unipc_weights(lam[:2], alpha_t, ratio, 1, "bh2", corrector=False)
    assert sum(weights) == pytest.approx(ddim, rel=1e-12)
    assert len(weights) == order + (1 if corrector else 0)


def test_disabling_every_correction_is_the_predictor_alone(process: GaussianProcess, x_T: Tensor) -> None:
    model = AnalyticGaussian(process.alphas_cumprod, mean=MEAN, std=STD)
    plain = UniPC(steps=8, corrector=False).sample(model.denoiser(process), x_T)
    disabled = UniPC(steps=8, disable_corrector=list(range(8))).sample(model.denoiser(process), x_T)
    first_kept = UniPC(steps=8, disable_corrector=[0]).sample(model.denoiser(process), x_T)
    assert torch.equal(plain, disabled)
    assert not torch.equal(plain, first_kept)


def test_the_last_step_lands_on_the_denoised_prediction(process: GaussianProcess, x_T: Tensor) -> None:
    model = AnalyticGaussian(process.alphas_cumprod, mean=MEAN, std=STD)
    states = list(UniPC(steps=6).iterate(model.denoiser(process), x_T))
    assert len(states) == 6
    assert torch.equal(states[-1].x, states[-1].x0)  # σ = 0: the data prediction itself
    at_min = list(UniPC(steps=6, final_sigma="min").iterate(model.denoiser(process), x_T))
    assert not torch.equal(at_min[-1].x, at_min[-1].x0)  # the chain's smallest σ, still noisy


def test_linspace_spacing_visits_diffusers_timesteps(process: GaussianProcess, x_T: Tensor) -> None:
    model = AnalyticGaussian(process.alphas_cumprod, mean=MEAN, std=STD)
    states = list(UniPC(steps=10, spacing="linspace").iterate(model.denoiser(process), x_T))
    expected = np.linspace(0, 999, 11).round()[::-1][:-1]
    assert [s.t for s in states] == expected.tolist()


def test_options_are_checked_when_the_sampler_is_built() -> None:
    with pytest.raises(ValueError, match="'order' must be 1, 2 or 3"):
        UniPC(order=4)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="'variant' must be 'bh1' or 'bh2'"):
        UniPC(variant="bh3")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="'disable_corrector' must be a list of step indices"):
        UniPC(disable_corrector=[-1])
    with pytest.raises(ValueError, match="'final_sigma' must be 'zero' or 'min'"):
        UniPC(final_sigma="max")  # type: ignore[arg-type]
    # Through the registry, parameters are checked against the signature before the sampler is built.
    with pytest.raises(ValueError, match=r"sampler 'unipc': parameter 'order' must be one of 1, 2, 3"):
        ddkit.create("sampler", "unipc", order=5)
    with pytest.raises(TypeError, match="sampler 'unipc': unknown parameter 'oder'; did you mean 'order'"):
        ddkit.create("sampler", "unipc", oder=2)


def test_a_grid_that_repeats_a_noise_level_is_refused(process: GaussianProcess) -> None:
    model = AnalyticGaussian(process.alphas_cumprod)
    # Karras σ's already end at the chain's smallest σ; "min" would step from it to itself.
    with pytest.raises(ValueError, match=r"spacing 'karras' with final_sigma='min' .* visits σ = .* twice"):
        UniPC(steps=5, spacing="karras", final_sigma="min").check(model.denoiser(process))
    short = GaussianProcess(np.linspace(1e-3, 0.2, 10))  # 10 steps + 1 grid points on 10 timesteps
    with pytest.raises(ValueError, match=r"visits σ = .* twice .* each step must lower σ"):
        UniPC(steps=10, spacing="linspace").check(AnalyticGaussian(short.alphas_cumprod).denoiser(short))
    assert model.calls == 0


def test_previous_x_models_are_refused_before_any_model_call(process: GaussianProcess, x_T: Tensor) -> None:
    model = AnalyticGaussian(process.alphas_cumprod, prediction="previous-x")
    with pytest.raises(ddkit.CompositionError, match="cannot run a 'previous-x' model"):
        UniPC().check(model.denoiser(process))
    assert model.calls == 0


def test_image_to_image_and_inpainting_come_from_the_base_class(process: GaussianProcess) -> None:
    model = AnalyticGaussian(process.alphas_cumprod, mean=0.2, std=0.5)
    gen = torch.Generator().manual_seed(3)
    x_T = torch.randn(2, 3, 4, 4, generator=gen)
    init = torch.randn(2, 3, 4, 4, generator=gen).clamp(-1, 1)
    states = list(UniPC(steps=10).iterate(model.denoiser(process), x_T, init=init, strength=0.5))
    assert len(states) == 5
    mask = torch.zeros(1, 1, 4, 4)
    mask[..., :2] = 1.0  # the left half is known
    out = UniPC(steps=10).sample(model.denoiser(process), x_T, mask=mask, known=init, generator=gen)
    assert torch.equal(out[..., :2], init[..., :2])
    assert not torch.equal(out[..., 2:], init[..., 2:])


def test_a_pipeline_composes_unipc_with_the_laplace_schedule() -> None:
    """Core's Pipeline builds both by name; the model is any nn.Module (here the exact Gaussian one).

    b = 1 widens the schedule so that its first step is nearly clean (σ ≈ 0.045); the paper's
    b = 0.5 starts at σ ≈ 0.21, which no sampler ending on that chain can undo.
    """

    class Exact(torch.nn.Module):
        sample_shape = (2,)

        def __init__(self) -> None:
            super().__init__()
            from ddkit_sampler_example import LaplaceSchedule

            self.model = AnalyticGaussian(LaplaceSchedule(b=1.0).alphas_cumprod, mean=MEAN, std=STD)

        def forward(self, x: Tensor, t: Tensor) -> Tensor:
            return self.model(x, t)

    config = {
        "schedule": {"name": "laplace", "b": 1.0},
        "parameterization": {"name": "epsilon", "clip_denoised": False},
        "sampler": {"name": "unipc", "steps": 20, "lambda_min": None},  # start at the chain's pure noise
    }
    # From pure noise an ε model's x_0 is mostly its error, which core warns about (when the pipeline
    # is built and at each call); this exact model has none, so here the start is right.
    with pytest.warns(ddkit.SamplingWarning, match="lambda_min"):
        pipeline = ddkit.Pipeline.from_config(config, model=Exact())
    assert isinstance(pipeline.sampler, UniPC)
    assert pipeline.config["schedule"] == {"name": "laplace", "b": 1.0, "timesteps": 1000}
    z = torch.randn(4000, 2, generator=torch.Generator().manual_seed(0))
    with pytest.warns(ddkit.SamplingWarning, match="lambda_min"):
        out = pipeline.sample(x_T=(z - z.mean(0)) / z.std(0))
    assert out.shape == (4000, 2)
    assert out.mean(0).tolist() == pytest.approx(MEAN, abs=0.02)
    assert out.std(0).tolist() == pytest.approx(STD, rel=0.05)
