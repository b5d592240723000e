"""Parameterizations: v against Salimans & Ho's formulas by hand, variance modes, clear errors."""

from __future__ import annotations

import math

import pytest
import torch
from torch import Tensor

from ddkit.diffusion import GaussianParameterization, p_mean_variance, parameterization, schedules

torch.set_num_threads(1)


def close(actual: Tensor, expected: Tensor, tol: float = 1e-6) -> None:
    assert actual.shape == expected.shape, f"shape {tuple(actual.shape)} != {tuple(expected.shape)}"
    diff = (actual.double() - expected.double()).abs().max().item()
    assert diff <= tol * (1 + expected.double().abs().max().item()), f"max abs diff {diff:.3g}"


PROCESS = schedules.cosine(100).process()


def test_v_parameterization_by_hand() -> None:
    # Salimans & Ho 2022, §4: with α = sqrt(ᾱ), σ = sqrt(1 − ᾱ) and z_t = α·x + σ·ε,
    # v = α·ε − σ·x, x̂ = α·z_t − σ·v̂ and ε̂ = σ·z_t + α·v̂.
    step = 37
    ab = 1.0
    for beta in PROCESS.betas[: step + 1]:
        ab *= 1.0 - float(beta)
    alpha, sigma = math.sqrt(ab), math.sqrt(1.0 - ab)
    x = torch.tensor([[0.3, -0.7], [0.9, 0.1]], dtype=torch.float64)
    eps = torch.tensor([[1.2, 0.4], [-0.5, 2.0]], dtype=torch.float64)
    z = alpha * x + sigma * eps
    v = alpha * eps - sigma * x
    param = parameterization.v(clip_denoised=False)
    close(PROCESS.q_sample(x, step, eps), z, 1e-12)
    close(param.target(PROCESS, x, z, torch.full((2,), step), eps), v, 1e-12)
    # A perfect v-model recovers x and ε exactly.
    pred = param.predict(PROCESS, v, z, step, posterior=False)
    close(pred.x0, x, 1e-12)
    close(pred.eps, eps, 1e-12)
    # Any output v̂: x̂ and ε̂ by the formulas above.
    v_hat = torch.tensor([[0.1, 0.2], [-0.3, 0.4]], dtype=torch.float64)
    pred = param.predict(PROCESS, v_hat, z, step, posterior=True)
    close(pred.x0, alpha * z - sigma * v_hat, 1e-12)
    close(pred.eps, sigma * z + alpha * v_hat, 1e-12)
    assert pred.mean is not None
    close(pred.mean, PROCESS.q_posterior_mean(alpha * z - sigma * v_hat, z, step), 1e-12)
    # At a continuous noise level (alpha_bar given) the same formulas hold.
    pred = param.predict(PROCESS, v_hat, z, 12.5, alpha_bar=ab, posterior=False)
    close(pred.x0, alpha * z - sigma * v_hat, 1e-12)


def test_each_prediction_reads_its_target() -> None:
    gen = torch.Generator().manual_seed(0)
    x0 = torch.rand(3, 2, 4, 4, generator=gen, dtype=torch.float64) * 2 - 1
    eps = torch.randn(3, 2, 4, 4, generator=gen, dtype=torch.float64)
    t = torch.tensor([0, 40, 99])
    x_t = PROCESS.q_sample(x0, t, eps)
    for name in ("epsilon", "x0", "previous-x", "v"):
        param = GaussianParameterization(name, "fixed-small", clip_denoised=False)
        pred = param.predict(PROCESS, param.target(PROCESS, x0, x_t, t, eps), x_t, t)
        close(pred.x0, x0, 1e-7)
        assert pred.mean is not None
        close(pred.mean, PROCESS.q_posterior_mean(x0, x_t, t), 1e-9)


def test_variance_modes() -> None:
    x_t = torch.zeros(2, 3, 2, 2)
    t = torch.tensor([0, 50])
    mean_part = torch.zeros(2, 3, 2, 2)
    lo, hi = PROCESS.posterior_log_variance_clipped, PROCESS.log_betas
    for frac_out, expect in ((-1.0, lo), (1.0, hi), (0.0, (lo + hi) / 2)):
        out = torch.cat([mean_part, torch.full_like(mean_part, frac_out)], dim=1)
        pred = parameterization.epsilon("learned-range").predict(PROCESS, out, x_t, t)
        assert pred.log_variance is not None
        close(pred.log_variance[:, 0, 0, 0], torch.tensor([expect[0], expect[50]], dtype=torch.float32))
    pred = parameterization.x0("learned").predict(
        PROCESS, torch.cat([mean_part, mean_part - 2.0], dim=1), x_t, t
    )
    assert pred.variance is not None
    close(pred.variance, torch.full_like(x_t, math.exp(-2.0)))
    large = parameterization.x0("fixed-large").predict(PROCESS, mean_part, x_t, t)
    assert large.variance is not None
    assert large.variance[0, 0, 0, 0].item() == pytest.approx(PROCESS.posterior_variance[1], rel=1e-6)
    assert large.variance[1, 0, 0, 0].item() == pytest.approx(PROCESS.betas[50], rel=1e-6)


def test_clip_and_denoised_fn() -> None:
    x_t = torch.full((1, 1, 2, 2), 3.0)
    out = torch.full((1, 1, 2, 2), 5.0)
    clipped = parameterization.x0().predict(PROCESS, out, x_t, 10)
    assert clipped.x0.max().item() == 1.0
    raw = parameterization.x0(clip_denoised=False).predict(PROCESS, out, x_t, 10)
    assert raw.x0.max().item() == 5.0
    # denoised_fn runs before clipping
    halved = parameterization.x0().predict(PROCESS, out, x_t, 10, denoised_fn=lambda x: x / 10)
    assert halved.x0.max().item() == 0.5


def test_previous_x_mean_is_the_output() -> None:
    x_t = torch.randn(2, 3)
    out = torch.randn(2, 3)
    pred = parameterization.previous_x(clip_denoised=False).predict(PROCESS, out, x_t, 5)
    assert pred.mean is out
    with pytest.raises(ValueError, match="continuous noise level"):
        parameterization.previous_x().predict(PROCESS, out, x_t, 5.5, alpha_bar=0.5)


def test_factories_and_p_mean_variance() -> None:
    for factory, name in [
        (parameterization.epsilon, "epsilon"),
        (parameterization.x0, "x0"),
        (parameterization.previous_x, "previous-x"),
        (parameterization.v, "v"),
    ]:
        param = factory()
        assert (param.prediction, param.variance, param.clip_denoised, param.name) == (
            name,
            "fixed-small",
            True,
            name,
        )
        assert factory("learned", False).output_channels(3) == 6

    seen: list[Tensor] = []

    def model(x: Tensor, t: Tensor, scale: float = 1.0) -> Tensor:
        seen.append(t)
        return x * scale

    spaced = PROCESS.respaced("10")
    param = parameterization.epsilon(clip_denoised=False)
    pred = p_mean_variance(spaced, param, model, torch.ones(2, 3), 3, model_kwargs={"scale": 0.0})
    assert seen[-1].tolist() == [33, 33]  # the model sees training timesteps
    assert pred.mean is not None
    assert pred.variance is not None
    close(pred.eps, torch.zeros(2, 3))


# -- bad input --------------------------------------------------------------------------


def test_unknown_modes_are_named() -> None:
    with pytest.raises(
        ValueError, match=r"'variance' must be one of .* \(got 'fixed_small'\); did you mean 'fixed-small'"
    ):
        parameterization.epsilon("fixed_small")
    with pytest.raises(ValueError, match=r"'prediction' must be one of .* did you mean 'epsilon'"):
        GaussianParameterization("epsilo")
    with pytest.raises(TypeError, match="'clip_denoised' must be"):
        GaussianParameterization("epsilon", "fixed-small", "yes")  # type: ignore[arg-type]


def test_wrong_output_channels_say_why() -> None:
    x_t = torch.zeros(2, 3, 4, 4)
    with pytest.raises(
        ValueError, match=r"outputs 6 channels but 3 were expected: variance='fixed-small' is fixed"
    ):
        parameterization.epsilon().predict(PROCESS, torch.zeros(2, 6, 4, 4), x_t, 5)
    with pytest.raises(
        ValueError,
        match=r"outputs 3 channels but 6 were expected: variance='learned-range' learns the variance.*3 \+ 3",
    ):
        parameterization.v("learned-range").predict(PROCESS, torch.zeros(2, 3, 4, 4), x_t, 5)
    with pytest.raises(ValueError, match="does not match x_t"):
        parameterization.epsilon().predict(PROCESS, torch.zeros(2, 3, 4, 5), x_t, 5)
