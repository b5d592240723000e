"""Flow-GRPO's SDE (Liu et al. 2025, arXiv:2505.05470): a flow ODE made stochastic, same marginals."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from typing import Any, Literal

import numpy as np
from torch import Tensor

from ddkit.denoiser import Denoiser
from ddkit.protocols import SamplerState
from ddkit.sampling import Plan, Run, SamplerBase, Spacing, Transition, real

__all__ = ["FlowSDE"]


class FlowSDE(SamplerBase):
    """Euler–Maruyama on dx = [u + ½g²·ε̂/σ]·dt + g·dw̄ (dt < 0), whose marginals are the flow ODE's.

    u = α'·x̂_0 + σ'·ε̂ is the path's velocity and −ε̂/σ its score; g(t) = a·sqrt(σ/α) with
    ``noise_level`` a (0.7 in Flow-GRPO; on rectified flow g = a·sqrt(t/(1 − t)), and where
    α = 0 the next step's α stands in, as Flow-GRPO does at t = 1). Any other path is walked as
    the rectified flow it is in the time τ = σ/(α + σ), so its noise per step is the flow's.
    ``noise_level=0`` is the Euler ODE step. Each step is the Gaussian N(mean, g²·|dt|) in the
    path's x_t; the sampler walks the variance-preserving x_t / sqrt(α² + σ²), whose
    log-densities differ from the path's by a constant per step (ratios and gradients agree).

    Runs on every path and chain. Default: 10 steps (Flow-GRPO's training rollouts) of the grid's
    sections, from ``lambda_min="auto"`` as every sampler (an ε model started at ᾱ ≈ 0 blows up:
    sliced Wasserstein 438 on a cosine 2-D toy); ``lambda_min=None`` walks Flow-GRPO's grid from
    t = t_max down to 0. NFE = steps.

    .. versionadded:: 0.2.0
    """

    name = "flow-sde"
    guidance_forms = ("model", "score")
    stochastic = True
    default_steps = 10
    default_spacing = "sections"

    def __init__(
        self,
        *,
        noise_level: float = 0.7,
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
        self.noise_level = real("noise_level", noise_level, low=0.0)
        self.stochastic = self.noise_level > 0.0

    def _plan(self, denoiser: Denoiser) -> Plan:
        plan = self._chain_plan(denoiser)
        # Every Gaussian path (a discrete chain too) is rectified flow in the time τ = σ/(α + σ), with
        # the same x up to scale: the SDE runs in τ, so g and dt mean on every path what Flow-GRPO's
        # mean on rectified flow (where τ = t). ᾱ gives τ: α ∝ sqrt(ᾱ), σ ∝ sqrt(1 − ᾱ).
        ab = np.asarray(plan.alpha_bars, dtype=np.float64)
        a, s = np.sqrt(ab), np.sqrt(1.0 - ab)
        tau = s / (a + s)
        ones = np.ones_like(tau)
        plan.extra = (tau.tolist(), (1.0 - tau).tolist(), tau.tolist(), (-ones).tolist(), ones.tolist())
        return plan

    def transition(self, plan: Plan, k: int, x: Tensor, history: Any = None) -> Transition:
        """Step k from t_k to t_{k+1} in x's (variance-preserving) scaling; one denoiser call."""
        c_x, c_x0, std = self._step(plan, k)
        pred = plan.denoiser(x, plan.denoiser.process.num_timesteps - 1 - k)
        return Transition(pred.blend_x0(c_x, x, c_x0), std, pred)

    def _fused(self, plan: Plan, x: Tensor, start: int, run: Run) -> Iterator[SamplerState]:
        """:meth:`transition` and its draw in one pass: the noise scaled in place, mean added to it."""
        d = plan.denoiser
        last = d.process.num_timesteps - 1
        for k in range(start, plan.steps):
            c_x, c_x0, std = self._step(plan, k)
            pred = d(x, last - k)
            x_new = run.draw_blend(pred, x, c_x, c_x0, std)
            state = SamplerState(step=k - start, t=plan.timesteps[k], x=x_new, x0=pred, nfe=d.nfe)
            yield state
            x = state.x

    def _step(self, plan: Plan, k: int) -> tuple[float, float, float]:
        """The weights of x and x̂_0 in step k's mean, and the std of its noise."""
        times, alpha, sigma, d_alpha, d_sigma = plan.extra
        t, t_next = times[k], times[k + 1]
        a, s, a_next, s_next = alpha[k], sigma[k], alpha[k + 1], sigma[k + 1]
        c, c_next = math.hypot(a, s), math.hypot(a_next, s_next)
        dt = t_next - t
        g2 = self.noise_level**2 * s / (a if a > 0.0 else a_next)
        # Path space: mean = c·x + (α'·x̂_0 + (σ' + ½g²/σ)·ε̂)·dt with ε̂ = (c·x − α·x̂_0)/σ, scaled by 1/c'.
        b = (d_sigma[k] + 0.5 * g2 / s) * dt / s
        c_x = c * (1.0 + b) / c_next
        c_x0 = (d_alpha[k] * dt - b * a) / c_next
        return c_x, c_x0, math.sqrt(g2 * -dt) / c_next

    def __repr__(self) -> str:
        return f"FlowSDE(noise_level={self.noise_level!r}, steps={self.steps!r}, spacing={self.spacing!r})"
