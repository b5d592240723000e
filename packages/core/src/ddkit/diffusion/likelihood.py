"""The variational bound: Gaussian KLs, the discretised decoder likelihood, and bits per dimension.

Numbers match guided-diffusion's ``losses.py`` and ``_vb_terms_bpd`` / ``calc_bpd_loop``
(Ho et al. 2020, Nichol & Dhariwal 2021). Every term is reported in bits per dimension.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from ddkit.diffusion.parameterization import GaussianParameterization, p_mean_variance
from ddkit.diffusion.process import GaussianProcess
from ddkit.prediction import Prediction

__all__ = [
    "approx_standard_normal_cdf",
    "calc_bpd_loop",
    "discretized_gaussian_log_likelihood",
    "mean_flat",
    "normal_kl",
    "prior_bpd",
    "vb_terms_bpd",
]

_LOG2 = math.log(2.0)


def mean_flat(x: Tensor) -> Tensor:
    """Mean over every dimension but the batch dimension."""
    return x.mean(dim=list(range(1, x.ndim)))


def normal_kl(
    mean1: Tensor | float, logvar1: Tensor | float, mean2: Tensor | float, logvar2: Tensor | float
) -> Tensor:
    """KL(N(mean1, e^logvar1) || N(mean2, e^logvar2)) elementwise, in nats; arguments broadcast."""
    ref = next((a for a in (mean1, logvar1, mean2, logvar2) if isinstance(a, Tensor)), None)
    if ref is None:
        raise TypeError("normal_kl needs at least one Tensor argument")
    lv1 = logvar1 if isinstance(logvar1, Tensor) else torch.tensor(logvar1).to(ref)
    lv2 = logvar2 if isinstance(logvar2, Tensor) else torch.tensor(logvar2).to(ref)
    return 0.5 * (-1.0 + lv2 - lv1 + torch.exp(lv1 - lv2) + ((mean1 - mean2) ** 2) * torch.exp(-lv2))


def approx_standard_normal_cdf(x: Tensor) -> Tensor:
    """The tanh approximation of the standard normal CDF used by Ho et al.'s decoder."""
    return 0.5 * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * torch.pow(x, 3))))


def discretized_gaussian_log_likelihood(x: Tensor, *, means: Tensor, log_scales: Tensor) -> Tensor:
    """Log-probability (nats) of 8-bit data ``x`` scaled to [-1, 1] under a Gaussian binned to 1/127.5.

    The two edge bins extend to ±infinity.
    """
    if not x.shape == means.shape == log_scales.shape:
        raise ValueError(
            f"x, means and log_scales must share a shape (got {tuple(x.shape)}, {tuple(means.shape)}, "
            f"{tuple(log_scales.shape)})"
        )
    centered = x - means
    inv_std = torch.exp(-log_scales)
    cdf_plus = approx_standard_normal_cdf(inv_std * (centered + 1.0 / 255.0))
    cdf_min = approx_standard_normal_cdf(inv_std * (centered - 1.0 / 255.0))
    log_cdf_plus = torch.log(cdf_plus.clamp(min=1e-12))
    log_one_minus_cdf_min = torch.log((1.0 - cdf_min).clamp(min=1e-12))
    log_delta = torch.log((cdf_plus - cdf_min).clamp(min=1e-12))
    return torch.where(x < -0.999, log_cdf_plus, torch.where(x > 0.999, log_one_minus_cdf_min, log_delta))


def vb_term_from_prediction(
    process: GaussianProcess, pred: Prediction, x0: Tensor, x_t: Tensor, t: Tensor
) -> Tensor:
    """One term of the bound per sample, in bits/dim: the decoder NLL at t = 0, else the KL of the step."""
    if pred.mean is None or pred.log_variance is None:
        raise ValueError("the prediction has no reverse transition; predict it with posterior=True")
    true_mean, _, true_log_var = process.q_posterior_mean_variance(x0, x_t, t)
    kl = mean_flat(normal_kl(true_mean, true_log_var, pred.mean, pred.log_variance)) / _LOG2
    nll = -discretized_gaussian_log_likelihood(x0, means=pred.mean, log_scales=0.5 * pred.log_variance)
    return torch.where(t == 0, mean_flat(nll) / _LOG2, kl)


def vb_terms_bpd(
    process: GaussianProcess,
    parameterization: GaussianParameterization,
    model_fn: Callable[..., Tensor],
    x0: Tensor,
    x_t: Tensor,
    t: Tensor,
    *,
    clip_denoised: bool = True,
    model_kwargs: dict[str, Any] | None = None,
) -> dict[str, Tensor]:
    """The bound's term at steps ``t`` (guided-diffusion's ``_vb_terms_bpd``).

    Returns ``output`` (shape [N], bits/dim) and ``x0`` (the model's clean-sample prediction).
    """
    pred = p_mean_variance(
        process, parameterization, model_fn, x_t, t, clip_denoised=clip_denoised, model_kwargs=model_kwargs
    )
    return {"output": vb_term_from_prediction(process, pred, x0, x_t, t), "x0": pred.x0}


def prior_bpd(process: GaussianProcess, x0: Tensor) -> Tensor:
    """KL(q(x_T | x_0) || N(0, I)) per sample in bits/dim: the bound's term no model can change."""
    t = torch.full((x0.shape[0],), process.num_timesteps - 1, device=x0.device, dtype=torch.long)
    mean, _, log_var = process.q_mean_variance(x0, t)
    return mean_flat(normal_kl(mean, log_var, 0.0, 0.0)) / _LOG2


def calc_bpd_loop(
    process: GaussianProcess,
    parameterization: GaussianParameterization,
    model_fn: Callable[..., Tensor],
    x0: Tensor,
    *,
    clip_denoised: bool = True,
    model_kwargs: dict[str, Any] | None = None,
    generator: torch.Generator | None = None,
) -> dict[str, Tensor]:
    """The whole variational bound in bits/dim, one model call per step (guided-diffusion's loop).

    Returns ``total_bpd`` and ``prior_bpd`` (shape [N]) and, shape [N, T] with columns from the
    last step down to step 0 (guided-diffusion's order), ``vb`` (the terms), ``xstart_mse``
    and ``mse`` (of the noise re-derived from the predicted x_0). Noise comes from ``generator``,
    or from the global RNG in guided-diffusion's order when it is ``None``.
    """
    batch = x0.shape[0]
    vb, xstart_mse, mse = [], [], []
    for step in reversed(range(process.num_timesteps)):
        t = torch.full((batch,), step, device=x0.device, dtype=torch.long)
        if generator is None:
            noise = torch.randn_like(x0)
        else:
            noise = torch.randn(x0.shape, generator=generator, device=generator.device, dtype=x0.dtype).to(x0)
        x_t = process.q_sample(x0, t, noise)
        with torch.no_grad():
            pred = p_mean_variance(
                process,
                parameterization,
                model_fn,
                x_t,
                t,
                clip_denoised=clip_denoised,
                model_kwargs=model_kwargs,
            )
            vb.append(vb_term_from_prediction(process, pred, x0, x_t, t))
        xstart_mse.append(mean_flat((pred.x0 - x0) ** 2))
        eps = process.eps_from_x0(x_t, t, pred.x0)
        mse.append(mean_flat((eps - noise) ** 2))
    prior = prior_bpd(process, x0)
    terms = torch.stack(vb, dim=1)
    return {
        "total_bpd": terms.sum(dim=1) + prior,
        "prior_bpd": prior,
        "vb": terms,
        "xstart_mse": torch.stack(xstart_mse, dim=1),
        "mse": torch.stack(mse, dim=1),
    }
