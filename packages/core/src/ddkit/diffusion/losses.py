"""Training losses: guided-diffusion's ``training_losses``, plus min-SNR-γ weighting.

``mse`` regresses the parameterization's target (noise, x_0, v or the previous mean);
``kl`` trains on the variational bound. With a learned variance, the MSE losses add the
bound's term computed with the mean frozen, so that it trains only the variance: that is
Nichol & Dhariwal's hybrid objective, ×T/1000 for ``rescaled-mse`` (= λ·L_vlb with
λ = 0.001, as L_vlb sums T terms). ``hybrid`` names ``rescaled-mse`` with a learned variance.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from ddkit.diffusion.likelihood import (
    approx_standard_normal_cdf,
    calc_bpd_loop,
    discretized_gaussian_log_likelihood,
    mean_flat,
    normal_kl,
    prior_bpd,
    vb_term_from_prediction,
    vb_terms_bpd,
)
from ddkit.diffusion.parameterization import GaussianParameterization
from ddkit.diffusion.process import GaussianProcess
from ddkit.errors import ConfigError

__all__ = [
    "LOSSES",
    "approx_standard_normal_cdf",
    "calc_bpd_loop",
    "check_loss",
    "discretized_gaussian_log_likelihood",
    "mean_flat",
    "min_snr_weight",
    "normal_kl",
    "prior_bpd",
    "training_losses",
    "vb_terms_bpd",
    "weighted_mean",
]

#: The values the ``loss`` config key accepts.
LOSSES: tuple[str, ...] = ("mse", "rescaled-mse", "kl", "rescaled-kl", "hybrid")


def check_loss(loss: str) -> str:
    """Return ``loss`` if it names a loss, else raise :class:`ddkit.ConfigError` with the closest name."""
    if loss in LOSSES:
        return loss
    close = difflib.get_close_matches(str(loss), LOSSES, n=1)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    raise ConfigError(f"'loss' must be one of {', '.join(LOSSES)} (got {loss!r}){hint}")


def min_snr_weight(process: GaussianProcess, prediction: str, t: Tensor, gamma: float) -> Tensor:
    """Min-SNR-γ loss weights at steps ``t`` (Hang et al. 2023), float64, shape [N].

    With SNR = ᾱ / (1 − ᾱ), the weight turns each prediction's MSE into γ-clipped x_0 MSE:
    min(SNR, γ)/SNR for ``epsilon``, min(SNR, γ) for ``x0``, min(SNR, γ)/(SNR + 1) for ``v``.
    """
    if isinstance(gamma, bool) or not isinstance(gamma, int | float) or not gamma > 0:
        raise ConfigError(f"'min_snr_gamma' must be a positive number, e.g. 5.0 (got {gamma!r})")
    if t.is_floating_point():
        ab = process.alpha_bar(t.double()).reshape(-1).to(torch.float64)  # type: ignore[union-attr]
    else:
        ab = process.table("alphas_cumprod", t.device, torch.float64)[t]
    snr = ab / (1.0 - ab)
    if prediction == "epsilon":
        # min(SNR, γ)/SNR = min(1, γ/SNR): also right (1) where SNR = 0 (zero-terminal-SNR schedules).
        return (gamma / snr).clamp(max=1.0)
    if prediction == "x0":
        return snr.clamp(max=gamma)
    if prediction == "v":
        return snr.clamp(max=gamma) / (snr + 1.0)
    raise ConfigError(
        f"min-SNR weighting is defined for epsilon, x0 and v predictions, not {prediction!r}; "
        "set min_snr_gamma=None or change the parameterization"
    )


def training_losses(
    process: GaussianProcess,
    parameterization: GaussianParameterization,
    model_fn: Callable[..., Tensor],
    x0: Tensor,
    t: Tensor,
    *,
    noise: Tensor | None = None,
    loss: str = "mse",
    model_kwargs: dict[str, Any] | None = None,
    min_snr_gamma: float | None = None,
) -> dict[str, Tensor]:
    """Per-sample training losses for ``x0`` noised to steps ``t`` (guided-diffusion's ``training_losses``).

    ``model_fn(*parameterization.model_input(process, x_t, t), **model_kwargs)`` is called once
    (on a path: its own x_t and model time). ``t`` may be fractional steps (continuous-time
    resamplers) on a path. Returns
    ``loss`` (shape [N]) and, where they apply, ``mse`` (unweighted) and ``vb`` (the frozen-mean
    bound term); with ``min_snr_gamma`` also ``snr_weight``, and ``loss`` = weight·mse (+ vb).
    Importance weights of a resampler multiply ``loss`` afterwards (:func:`weighted_mean`).

    .. versionadded:: 0.1.0
    """
    name = check_loss(loss)
    if name == "hybrid" and not parameterization.learned_variance:
        raise ConfigError(
            f"loss 'hybrid' trains a learned variance, but the variance is {parameterization.variance!r}; "
            "use loss 'mse', or variance 'learned-range'"
        )
    vb_loss = name in ("kl", "rescaled-kl")
    if min_snr_gamma is not None and vb_loss:
        raise ConfigError(f"min_snr_gamma weights the MSE term, and loss {name!r} has none; set it to None")
    kwargs = model_kwargs or {}
    if noise is None:
        noise = torch.randn_like(x0)
    x_t = process.q_sample(x0, t, noise)
    terms: dict[str, Tensor] = {}
    if vb_loss:
        out = vb_terms_bpd(
            process, parameterization, model_fn, x0, x_t, t, clip_denoised=False, model_kwargs=kwargs
        )
        terms["loss"] = out["output"] * process.num_timesteps if name == "rescaled-kl" else out["output"]
        return terms

    x_in, model_t = parameterization.model_input(process, x_t, t)
    output = model_fn(x_in, model_t, **kwargs)
    mean_part, var_part = parameterization.split(output, x_t)
    if var_part is not None:
        # The bound trains the variance only: the mean part is detached.
        frozen = torch.cat([mean_part.detach(), var_part], dim=1)
        pred = parameterization.predict(process, frozen, x_t, t, clip_denoised=False, posterior=True)
        vb = vb_term_from_prediction(process, pred, x0, x_t, t)
        terms["vb"] = vb * (process.num_timesteps / 1000.0) if name in ("rescaled-mse", "hybrid") else vb
    target = parameterization.target(process, x0, x_t, t, noise)
    terms["mse"] = mean_flat((target - mean_part) ** 2)
    mse_term = terms["mse"]
    if min_snr_gamma is not None:
        weight = min_snr_weight(process, parameterization.prediction, t, min_snr_gamma).to(mse_term.dtype)
        terms["snr_weight"] = weight
        mse_term = mse_term * weight
    terms["loss"] = mse_term + terms["vb"] if "vb" in terms else mse_term
    return terms


def weighted_mean(losses: Tensor, weights: Tensor | None = None) -> Tensor:
    """The batch objective: the mean of ``losses`` times a resampler's importance ``weights``.

    Report the unweighted per-sample ``losses`` to the resampler's ``update``, as guided-diffusion does.
    """
    return (losses * weights).mean() if weights is not None else losses.mean()
