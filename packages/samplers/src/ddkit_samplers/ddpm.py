"""Ancestral sampling (Ho et al. 2020, Alg. 2), guided-diffusion's ``p_sample_loop``."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator

import torch
from torch import Tensor

from ddkit.denoiser import Denoiser
from ddkit.protocols import SamplerState
from ddkit.sampling import DEFAULT_LAMBDA_MIN, Plan, Run, SamplerBase, Spacing, gaussian_log_prob

__all__ = ["DDPM"]


class DDPM(SamplerBase):
    """x_{t-1} ~ N(μ_θ(x_t), Σ_θ(x_t)) over the full chain or a respaced one; no noise at the last step.

    ``steps=N`` keeps guided-diffusion's section spacing ``"N"`` (``None``: all T steps).
    Takes guidance in the model, mean and score forms (mean preferred). NFE = steps.

    .. versionadded:: 0.1.0
    """

    name = "ddpm"
    guidance_forms = ("model", "mean", "score")
    stochastic = True
    default_spacing = "sections"

    def __init__(
        self,
        *,
        steps: int | None = None,
        spacing: Spacing | None = None,
        clip_denoised: bool | None = None,
        dynamic_threshold: float | None = None,
        denoised_fn: Callable[[Tensor], Tensor] | None = None,
        return_log_prob: bool = False,
        lambda_min: float | None = DEFAULT_LAMBDA_MIN,
    ) -> None:
        super().__init__(
            steps=steps,
            spacing=spacing,
            clip_denoised=clip_denoised,
            dynamic_threshold=dynamic_threshold,
            denoised_fn=denoised_fn,
            return_log_prob=return_log_prob,
            lambda_min=lambda_min,
        )

    def _plan(self, denoiser: Denoiser) -> Plan:
        return self._chain_plan(denoiser)

    def _run(self, plan: Plan, x: Tensor, start: int, run: Run) -> Iterator[SamplerState]:
        d = plan.denoiser
        chain = d.process
        n = chain.num_timesteps
        param = d.parameterization
        # With a fixed variance and no mean-form guidance the transition mean is the posterior
        # mean of x_0, computed here from per-step floats; otherwise ask the denoiser for it.
        fast = param.prediction != "previous-x" and not param.learned_variance and "mean" not in d.forms
        log_var = (
            chain.fixed_large_log_variance
            if param.variance == "fixed-large"
            else (chain.posterior_log_variance_clipped)
        )
        c1 = chain.posterior_mean_coef1.tolist()
        c2 = chain.posterior_mean_coef2.tolist()
        half_log_var = [0.5 * float(v) for v in log_var]
        std = [math.exp(h) for h in half_log_var]
        for k in range(start, n):
            i = n - 1 - k
            log_prob = None
            if fast:
                pred = d(x, i)
                x_new = pred.blend_x0(c2[i], x, c1[i])
                if i > 0:
                    noise = run.noise(x)
                    x_new.add_(noise, alpha=std[i])
                    if run.log_prob:
                        log_prob = gaussian_log_prob(noise, half_log_var[i])
            else:
                pred = d(x, i, posterior=True)
                assert pred.mean is not None
                assert pred.log_variance is not None
                x_new = pred.mean
                if i > 0:
                    noise = run.noise(x)
                    half = 0.5 * pred.log_variance
                    x_new = x_new + torch.exp(half) * noise
                    if run.log_prob:
                        log_prob = gaussian_log_prob(noise, half)
            state = SamplerState(
                step=k - start, t=plan.timesteps[k], x=x_new, x0=pred, nfe=d.nfe, log_prob=log_prob
            )
            yield state
            x = state.x
