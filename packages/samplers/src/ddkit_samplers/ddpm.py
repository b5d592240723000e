"""Ancestral sampling (Ho et al. 2020, Alg. 2), guided-diffusion's ``p_sample_loop``."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from typing import Any, Literal

import torch
from torch import Tensor

from ddkit.denoiser import Denoiser
from ddkit.protocols import SamplerState
from ddkit.sampling import Plan, Run, SamplerBase, Spacing, Transition

__all__ = ["DDPM"]

#: The chain table of each fixed variance's log.
_LOG_VARIANCE = {"fixed_large": "fixed_large_log_variance", "posterior": "posterior_log_variance_clipped"}


class DDPM(SamplerBase):
    """x_{t-1} ~ N(μ_θ(x_t), Σ_θ(x_t)) over the full chain or a respaced one; no noise at the last step.

    ``steps=N`` takes N steps at stride ⌊T'/N⌋ from t = 0 (diffusers' ``"leading"``) over the T'
    training steps with half log-SNR λ ≥ ``lambda_min`` (default −5.1; ``None``: all T steps). That
    start is what keeps few-step DDPM sane with a trained ε-model: on the README's cosine example
    guided-diffusion's sections (``spacing="sections", lambda_min=None``, its ``"N"`` respacing)
    score sliced Wasserstein 3.5 at 10 steps, the default 0.06 (all 995 steps from λ = −5.1: 0.05;
    all 1000, from ᾱ = 2e-9: hundreds).
    Takes guidance in the model, mean and score forms (mean preferred). NFE = steps.

    .. versionadded:: 0.1.0
    """

    name = "ddpm"
    guidance_forms = ("model", "mean", "score")
    stochastic = True
    default_spacing = "leading"

    def __init__(
        self,
        *,
        steps: int | None = None,
        spacing: Spacing | None = None,
        clip_denoised: bool | None = None,
        dynamic_threshold: float | None = None,
        denoised_fn: Callable[[Tensor], Tensor] | None = None,
        return_log_prob: bool = False,
        lambda_min: float | Literal["auto"] | None = "auto",
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

    def _fused(self, plan: Plan, x: Tensor, start: int, run: Run) -> Iterator[SamplerState] | None:
        d = plan.denoiser
        param = d.parameterization
        fixed = param.prediction != "previous-x" and not param.learned_variance and "mean" not in d.forms
        return self._fused_fixed(plan, x, start, run) if fixed else None  # else: the posterior, walked

    def _fused_fixed(self, plan: Plan, x: Tensor, start: int, run: Run) -> Iterator[SamplerState]:
        """:meth:`transition`'s fixed-variance step and its draw in one pass over the noise."""
        d = plan.denoiser
        chain = d.process
        n = chain.num_timesteps
        table = _LOG_VARIANCE["fixed_large" if d.parameterization.variance == "fixed-large" else "posterior"]
        for k in range(start, plan.steps):
            i = n - 1 - k
            pred = d(x, i)
            c1 = float(chain.coef("posterior_mean_coef1", i, x))
            c2 = float(chain.coef("posterior_mean_coef2", i, x))
            std = 0.0 if i == 0 else math.exp(0.5 * float(chain.coef(table, i, x)))
            x_new = run.draw_blend(pred, x, c2, c1, std)  # the posterior mean of x̂_0, plus noise
            state = SamplerState(step=k - start, t=plan.timesteps[k], x=x_new, x0=pred, nfe=d.nfe)
            yield state
            x = state.x

    def transition(self, plan: Plan, k: int, x: Tensor, history: Any = None) -> Transition:
        """N(μ_θ(x_t), Σ_θ(x_t)) at chain step t = N − 1 − k; deterministic at t = 0."""
        d = plan.denoiser
        chain = d.process
        i = chain.num_timesteps - 1 - k
        param = d.parameterization
        if param.prediction != "previous-x" and not param.learned_variance and "mean" not in d.forms:
            # A fixed variance and no mean-form guidance: the transition mean is the posterior
            # mean of x̂_0, one fused combination of x and the network output.
            pred = d(x, i)
            c1, c2 = chain.coef("posterior_mean_coef1", i, x), chain.coef("posterior_mean_coef2", i, x)
            mean = pred.blend_x0(float(c2), x, float(c1))
            table = "fixed_large" if param.variance == "fixed-large" else "posterior"
            log_var = chain.coef(_LOG_VARIANCE[table], i, x)
            std = math.exp(0.5 * float(log_var)) if i > 0 else 0.0
            return Transition(mean, std, pred)
        pred = d(x, i, posterior=True)
        assert pred.mean is not None
        assert pred.log_variance is not None
        return Transition(pred.mean, torch.exp(0.5 * pred.log_variance) if i > 0 else 0.0, pred)
