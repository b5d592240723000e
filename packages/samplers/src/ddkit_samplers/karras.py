"""Euler, Heun (Karras et al. 2022, Alg. 2) and Euler-ancestral, on the σ formulation.

The solvers integrate the probability-flow ODE of x/sqrt(ᾱ) in σ = sqrt((1 − ᾱ)/ᾱ); the
state they yield is x itself (the chain's scaling), so each step is one linear combination
of x and the denoised x_0 with per-step float coefficients. The network is called on the
full training chain at the (fractional) training timestep of each σ, with ᾱ = 1/(1 + σ²).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from typing import Any, ClassVar, Literal

import numpy as np
import torch
from torch import Tensor

from ddkit.denoiser import Denoiser
from ddkit.protocols import SamplerState
from ddkit.sampling import (
    Plan,
    Run,
    SamplerBase,
    Spacing,
    Transition,
    real,
)

__all__ = ["Euler", "EulerAncestral", "Heun"]

#: One step's timestep, ᾱ, Euler weights of x and x̂_0, next timestep and ᾱ, correction weight.
_StepCoefs = tuple[int | float, float, float, float, int | float, float, float]


def _vp(sigma: float) -> tuple[float, float]:
    """(sqrt(ᾱ), sqrt(1 − ᾱ)) of the noise level σ = sqrt((1 − ᾱ)/ᾱ); (0, 1) at σ = ∞ (pure noise)."""
    if math.isinf(sigma):
        return 0.0, 1.0
    a = 1.0 / math.sqrt(1.0 + sigma * sigma)
    return a, sigma * a


def _step_t(t: float) -> int | float:
    """A timestep as the denoiser takes it: an int on the training grid, else a float."""
    return int(t) if float(t).is_integer() else t


class _Karras(SamplerBase):
    guidance_forms = ("model", "score")
    default_steps = 50
    default_spacing = "karras"
    continuous = True

    def __init__(
        self,
        *,
        steps: int | None,
        spacing: Spacing | None,
        clip_denoised: bool | None,
        dynamic_threshold: float | None,
        denoised_fn: Callable[[Tensor], Tensor] | None,
        lambda_min: float | Literal["auto"] | None,
        return_log_prob: bool = False,
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
        return self._sigma_plan(denoiser)

    def _churn_init(self, s_churn: object, s_tmin: object, s_tmax: object, s_noise: object) -> None:
        self.s_churn = real("s_churn", s_churn, low=0.0)
        self.s_tmin = real("s_tmin", s_tmin, low=0.0)
        self.s_tmax = real("s_tmax", s_tmax, low=0.0, allow_inf=True)
        self.s_noise = real("s_noise", s_noise, low=0.0)
        if self.s_tmin > self.s_tmax:
            raise ValueError(f"'s_tmin' ({self.s_tmin}) must not exceed 's_tmax' ({self.s_tmax})")
        self.stochastic = self.s_churn > 0.0

    def _gammas(self, sigmas: list[float], n: int) -> list[float]:
        """Karras's γ_i = min(S_churn/N, √2 − 1) where S_tmin ≤ σ_i ≤ S_tmax, else 0."""
        g = min(self.s_churn / n, math.sqrt(2.0) - 1.0)
        return [g if self.s_churn > 0 and self.s_tmin <= s <= self.s_tmax else 0.0 for s in sigmas[:n]]

    def _churn(
        self, plan: Plan, x: Tensor, k: int, gamma: float, run: Run
    ) -> tuple[Tensor, float, int | float]:
        """Raise the noise from σ_k to σ̂ = (1 + γ)σ_k (Alg. 2 lines 5–6); x̂, σ̂ and its timestep."""
        sigma = plan.extra[k]
        if gamma == 0.0:
            return x, sigma, _step_t(plan.timesteps[k])
        s_hat = sigma * (1.0 + gamma)
        a, a_hat = 1.0 / math.sqrt(1.0 + sigma * sigma), 1.0 / math.sqrt(1.0 + s_hat * s_hat)
        add = a_hat * self.s_noise * math.sqrt(s_hat * s_hat - sigma * sigma)
        x_hat = torch.mul(x, a_hat / a).add_(run.noise(x), alpha=add)
        return x_hat, s_hat, float(plan.denoiser.process.index_of_sigma(np.array([s_hat]))[0])


class _ChurnSolver(_Karras):
    """Euler or Heun on the σ ODE with Karras's optional churn; ``second_order`` picks Heun."""

    second_order: ClassVar[bool] = False
    #: How Heun combines its two slopes (see :class:`Heun`); Euler has one.
    form: str = "sigma"
    #: :meth:`_step_coefficients` per grid and settings, made on first use.
    _coefficient_cache: dict[tuple[Any, ...], list[_StepCoefs]] | None = None

    def __init__(
        self,
        *,
        steps: int | None = None,
        spacing: Spacing | None = None,
        s_churn: float = 0.0,
        s_tmin: float = 0.0,
        s_tmax: float = float("inf"),
        s_noise: float = 1.0,
        lambda_min: float | Literal["auto"] | None = "auto",
        clip_denoised: bool | None = None,
        dynamic_threshold: float | None = None,
        denoised_fn: Callable[[Tensor], Tensor] | None = None,
    ) -> None:
        super().__init__(
            steps=steps,
            spacing=spacing,
            clip_denoised=clip_denoised,
            dynamic_threshold=dynamic_threshold,
            denoised_fn=denoised_fn,
            lambda_min=lambda_min,
        )
        self._churn_init(s_churn, s_tmin, s_tmax, s_noise)
        #: Per path and grid: the scale k of each step's timestep and the next (Euler on a path).
        self._scales: dict[tuple[Any, ...], list[tuple[float, float]]] = {}

    def _step_coefficients(self, plan: Plan) -> list[_StepCoefs]:
        """Per step without churn: (t, ᾱ, Euler weights of x and x̂_0, t', ᾱ', correction weight).

        Worked out once per grid and settings; the correction weight is 0 where the step stays Euler.
        """
        sig: list[float] = plan.extra
        key = (tuple(sig), tuple(plan.timesteps), self.second_order, self.form)
        cache = self._coefficient_cache
        if cache is None or len(cache) > 64:
            cache = self._coefficient_cache = {}
        hit = cache.get(key)
        if hit is not None:
            return hit
        out = []
        times = plan.timesteps
        for k in range(plan.steps):
            s, s_next = sig[k], sig[k + 1]
            (a, v), (a_next, v_next) = _vp(s), _vp(s_next)
            corr = 0.0
            if self.second_order and s_next > 0.0 and math.isfinite(s):
                if self.form == "sigma":
                    corr = (s_next - s) / (2.0 * s_next)
                else:
                    h = math.log(s / s_next)
                    corr = a_next * (1.0 + math.expm1(-h) / h)
            t_next = _step_t(times[k + 1]) if k + 1 < len(times) else 0
            out.append(
                (_step_t(times[k]), a * a, v_next / v, a_next - a * v_next / v, t_next, a_next * a_next, corr)
            )
        cache[key] = out
        return out

    def _run(self, plan: Plan, x: Tensor, start: int, run: Run) -> Iterator[SamplerState]:
        d = plan.denoiser
        sig = plan.extra
        n = plan.steps
        gammas = self._gammas(sig, n)
        if not any(gammas) and (not self.second_order or self.form != "sigma"):
            if not self.second_order and d.path_input:
                yield from self._run_path(plan, x, start, run)
            else:
                yield from self._run_plain(plan, x, start)
            return
        for k in range(start, n):
            x_hat, s_hat, t_hat = self._churn(plan, x, k, gammas[k], run)
            s_next = sig[k + 1]
            (a_hat, v_hat), (a_next, v_next) = _vp(s_hat), _vp(s_next)
            pred = d(x_hat, t_hat, alpha_bar=a_hat * a_hat)
            # The Euler step x̃' = x̃ + (σ' − σ)(x̃ − D)/σ in x's scaling, finite at σ = ∞ (ᾱ = 0).
            x_new = pred.blend_x0(v_next / v_hat, x_hat, a_next - a_hat * v_next / v_hat)
            if self.second_order and s_next > 0.0 and math.isfinite(s_hat):
                pred2 = d(x_new, _step_t(plan.timesteps[k + 1]), alpha_bar=a_next * a_next)
                if self.form == "sigma":
                    # x̃' = ½x̃ + (½ + dt/2σ')·x̃₂ − dt/2σ'·D₂, the trapezoid of the two slopes, in x's scaling.
                    half = (s_next - s_hat) / (2.0 * s_next)
                    x_new = pred2.blend_x0(0.5 + half, x_new, -a_next * half).add_(
                        x_hat, alpha=0.5 * a_next / a_hat
                    )
                else:
                    # D linear in λ = −log σ between its two values, integrated exactly (h = log σ/σ'):
                    # x̃' = (σ'/σ)x̃ + (1 − σ'/σ)D₁ + (1 − (1 − σ'/σ)/h)(D₂ − D₁), the Euler step plus a
                    # bounded correction (the σ form's weight dt/2σ' grows without bound as σ' → 0).
                    h = math.log(s_hat / s_next)
                    c = a_next * (1.0 + math.expm1(-h) / h)
                    x_new.add_(pred2.x0, alpha=c).sub_(pred.x0, alpha=c)
            state = SamplerState(step=k - start, t=plan.timesteps[k], x=x_new, x0=pred, nfe=d.nfe)
            yield state
            x = state.x

    def _run_path(self, plan: Plan, x: Tensor, start: int, run: Run) -> Iterator[SamplerState]:
        """Euler on a path, carrying the network's input x_t = k·x (k = ``process.scale``) between steps.

        With x̂_0 = a·x + b·y the step x' = c_x·x + c_x0·x̂_0 is x_t' = w·x_t + k'·c_x0·b·y in the path's
        scaling (w = k'·(c_x + c_x0·a)/k, 1 on rectified flow up to rounding): one pass gives the next
        input and one more the state x' = x_t'/k', where scaling x' again would take a third. When no
        one sees the states between steps (``run.quiet``) and x enters the prediction only linearly,
        the intermediate x' are not formed: one pass per step, and only the last state is yielded.
        """
        d = plan.denoiser
        process = d.process
        times = plan.timesteps
        coefs = self._step_coefficients(plan)
        key = ("scales", tuple(times), process)
        scales = self._scales.get(key)
        if scales is None:
            if len(self._scales) > 64:
                self._scales.clear()
            # k = sqrt(α² + σ²) at each step's timestep and the next (floats at scalar steps).
            scales = self._scales[key] = [
                (float(process.scale(t, x)), float(process.scale(t_next, x)))
                for t, _, _, _, t_next, _, _ in coefs
            ]
        quiet = run.quiet and d.reads_x_linearly
        x_in: Tensor | None = None
        chain_x: Tensor | None = x  # the chain's x, None while only the network's input is carried
        for k in range(start, plan.steps):
            t, ab, c_x, c_x0, _, _, _ = coefs[k]
            k_t, k_next = scales[k]
            if x_in is None:
                assert chain_x is not None
                x_in = chain_x if k_t == 1.0 else chain_x * k_t
            final = k + 1 >= len(times)
            if chain_x is None and final:
                chain_x = x_in if k_t == 1.0 else x_in / k_t
            # Unformed, the chain's x is passed as the input itself: x̂_0's weight a is x's all the same.
            x_arg = chain_x if chain_x is not None else x_in
            pred = d(x_arg, t, alpha_bar=ab, x_in=x_in)
            terms = pred.x0_terms()
            x_in_new: Tensor | None = None
            if final or terms is None or terms[1] is not x_arg:
                # The last step (σ' = 0), or x̂_0 not linear in x (an x_0 model's x̂_0 does not read x).
                if chain_x is None:
                    chain_x = x_in if k_t == 1.0 else x_in / k_t
                x_new = pred.blend_x0(c_x, chain_x, c_x0)
            else:
                a, _, b, y = terms
                w, beta = k_next * (c_x + c_x0 * a) / k_t, k_next * c_x0 * b
                if abs(w - 1.0) < 1e-12:
                    x_in_new = torch.add(x_in, y, alpha=beta)
                else:
                    x_in_new = torch.mul(x_in, w).add_(y, alpha=beta)
                if quiet:
                    x_in, chain_x = x_in_new, None
                    continue
                x_new = x_in_new if k_next == 1.0 else x_in_new / k_next
            state = SamplerState(step=k - start, t=times[k], x=x_new, x0=pred, nfe=d.nfe)
            yield state
            x_in = x_in_new if state.x is x_new else None  # inpainting replaced x: scale it anew
            chain_x = state.x

    def _run_plain(self, plan: Plan, x: Tensor, start: int) -> Iterator[SamplerState]:
        """The loop without churn: per-grid float weights, Heun's exponential correction in one pass."""
        d = plan.denoiser
        times = plan.timesteps
        coefs = self._step_coefficients(plan)
        for k in range(start, plan.steps):
            t, ab, c_x, c_x0, t_next, ab_next, c = coefs[k]
            pred = d(x, t, alpha_bar=ab)
            terms = pred.x0_terms()
            if c == 0.0 or terms is None or terms[1] is not x:
                x_new = pred.blend_x0(c_x, x, c_x0)
                if c != 0.0:
                    # The exponential form's bounded correction c·(D₂ − D₁) (see _run).
                    pred2 = d(x_new, t_next, alpha_bar=ab_next)
                    x_new.add_(pred2.x0, alpha=c).sub_(pred.x0, alpha=c)
            else:
                a1, _, b1, y1 = terms
                # x' = c_x·x + c_x0·(a1·x + b1·y1), never forming x̂_0.
                w_x, w_y = c_x + c_x0 * a1, c_x0 * b1
                x_new = torch.mul(x, w_x).add_(y1, alpha=w_y)
                pred2 = d(x_new, t_next, alpha_bar=ab_next)
                terms2 = pred2.x0_terms()
                if terms2 is None or terms2[1] is not x_new:
                    x_new.add_(pred2.x0, alpha=c).sub_(pred.x0, alpha=c)
                else:
                    # x' + c·(a2·x' + b2·y2) − c·(a1·x + b1·y1) with x' = w_x·x + w_y·y1: three passes
                    # over x, y1 and y2 into a fresh tensor (the model may hold on to x' or return it).
                    a2, _, b2, y2 = terms2
                    g = 1.0 + c * a2
                    x_new = (
                        torch.mul(x, g * w_x - c * a1).add_(y1, alpha=g * w_y - c * b1).add_(y2, alpha=c * b2)
                    )
            state = SamplerState(step=k - start, t=times[k], x=x_new, x0=pred, nfe=d.nfe)
            yield state
            x = state.x


class Euler(_ChurnSolver):
    """Euler's method on dx̃/dσ = (x̃ − D(x̃; σ))/σ (Karras et al. 2022, Alg. 2 without the correction).

    ``s_churn`` > 0 adds noise before each step where S_tmin ≤ σ ≤ S_tmax (Alg. 2); the
    defaults are deterministic. Default: 50 steps at stride ⌊T'/N⌋ from t = 0 (diffusers'
    ``"leading"``) over the T' training steps with half log-SNR λ ≥ ``lambda_min`` ("auto": see
    :func:`ddkit.sampling.auto_lambda_min`): the best of the named grids for a first-order step at 5–20
    evaluations on linear and cosine chains (sliced Wasserstein to the exact solution on a 2-D
    toy, cosine NFE 10: 0.039 against 0.105 on Karras σ's, bench/quality_vs_nfe.py --exact).
    ``spacing="karras", lambda_min=None`` is diffusers' ``use_karras_sigmas``. NFE = steps.

    .. versionadded:: 0.1.0
    """

    name = "euler"
    default_spacing = "leading"


class Heun(_ChurnSolver):
    """Heun's 2nd-order method (Karras et al. 2022, Alg. 2): an Euler step corrected by the slope at its end.

    The step into σ = 0 stays an Euler step, so NFE = 2·steps − 1. Churn parameters as
    :class:`Euler`; default: 25 steps uniform in log-SNR (``"logsnr"``; ``"leading"`` under 8
    steps) from ``lambda_min="auto"``, within 1.3× of its best named grid at 10 and 20 evaluations
    on linear and cosine chains, where time-uniform steps reach 2.5× on linear
    (bench/quality_vs_nfe.py --exact). ``form="sigma"``
    is Alg. 2's trapezoid in σ, as diffusers' and k-diffusion's Heun; it diverges when a step
    shrinks σ many-fold (its correction weighs (σ − σ')/2σ' times the slope at σ'; few-step runs on
    any schedule: sliced Wasserstein 4.5 at NFE 5 on a 2-D toy). The default ``"exponential"``
    takes the same two slopes as x̂_0's linear in λ = −log σ and integrates exactly (a 2nd-order
    exponential integrator, Lu et al. 2022), whose correction weight stays below 1.

    .. versionadded:: 0.1.0
    """

    name = "heun"
    default_steps = 25
    default_spacing = "logsnr"
    few_steps_spacing = "leading"
    second_order = True

    def __init__(
        self,
        *,
        steps: int | None = None,
        spacing: Spacing | None = None,
        form: Literal["exponential", "sigma"] = "exponential",
        s_churn: float = 0.0,
        s_tmin: float = 0.0,
        s_tmax: float = float("inf"),
        s_noise: float = 1.0,
        lambda_min: float | Literal["auto"] | None = "auto",
        clip_denoised: bool | None = None,
        dynamic_threshold: float | None = None,
        denoised_fn: Callable[[Tensor], Tensor] | None = None,
    ) -> None:
        super().__init__(
            steps=steps,
            spacing=spacing,
            s_churn=s_churn,
            s_tmin=s_tmin,
            s_tmax=s_tmax,
            s_noise=s_noise,
            lambda_min=lambda_min,
            clip_denoised=clip_denoised,
            dynamic_threshold=dynamic_threshold,
            denoised_fn=denoised_fn,
        )
        if form not in ("exponential", "sigma"):
            raise ValueError(f"'form' must be 'exponential' or 'sigma' (got {form!r})")
        self.form = form


class EulerAncestral(_Karras):
    """Euler steps down to σ_down plus fresh noise of std σ_up (k-diffusion's ``sample_euler_ancestral``).

    σ_up = min(σ', η·sqrt(σ'²(σ² − σ'²)/σ²)), σ_down = sqrt(σ'² − σ_up²); ``eta=1`` is
    diffusers' ``EulerAncestralDiscreteScheduler``. ``return_log_prob`` reports each step's
    Gaussian log density in the yielded (chain-scaled) x. Default: 50 Karras steps. NFE = steps.

    .. versionadded:: 0.1.0
    """

    name = "euler-ancestral"
    default_spacing = "leading"
    stochastic = True

    def __init__(
        self,
        *,
        steps: int | None = None,
        spacing: Spacing | None = None,
        eta: float = 1.0,
        s_noise: float = 1.0,
        lambda_min: float | Literal["auto"] | None = "auto",
        clip_denoised: bool | None = None,
        dynamic_threshold: float | None = None,
        denoised_fn: Callable[[Tensor], Tensor] | None = None,
        return_log_prob: bool = False,
    ) -> None:
        super().__init__(
            steps=steps,
            spacing=spacing,
            clip_denoised=clip_denoised,
            dynamic_threshold=dynamic_threshold,
            denoised_fn=denoised_fn,
            lambda_min=lambda_min,
            return_log_prob=return_log_prob,
        )
        self.eta = real("eta", eta, low=0.0)
        self.s_noise = real("s_noise", s_noise, low=0.0)
        self.stochastic = self.eta > 0.0 and self.s_noise > 0.0

    def _step(self, sig: list[float], k: int) -> tuple[float, float, float, float]:
        """ᾱ_k, the Euler weights of x and x̂_0 down to σ_down, and the std of the added noise."""
        s, s_next = sig[k], sig[k + 1]
        # sqrt(ᾱ) and sqrt(1 − ᾱ) of σ, finite at σ = ∞ (a path's pure-noise start: ᾱ = 0).
        a = 0.0 if math.isinf(s) else 1.0 / math.sqrt(1.0 + s * s)
        v = 1.0 if math.isinf(s) else s * a
        a_next = 1.0 / math.sqrt(1.0 + s_next * s_next)
        q = s_next / s  # 0 at σ = ∞
        s_up = min(s_next, self.eta * s_next * math.sqrt(max(1.0 - q * q, 0.0)))
        s_down = math.sqrt(max(s_next**2 - s_up**2, 0.0))
        # x̃' = x̃ + (σ_down − σ)(x̃ − D)/σ in x's scaling: weights a'·σ_down/sqrt(1 − ᾱ) and a'(1 − σ_down/σ).
        return a * a, a_next * s_down / v, a_next * (1.0 - s_down / s), a_next * s_up * self.s_noise

    def transition(self, plan: Plan, k: int, x: Tensor, history: Any = None) -> Transition:
        """An Euler step from σ_k down to σ_down, then N(·, (a'·σ_up·s_noise)²) in x's scaling."""
        ab, c_x, c_x0, std = self._step(plan.extra, k)
        pred = plan.denoiser(x, _step_t(plan.timesteps[k]), alpha_bar=ab)
        return Transition(pred.blend_x0(c_x, x, c_x0), std, pred)

    def _fused(self, plan: Plan, x: Tensor, start: int, run: Run) -> Iterator[SamplerState]:
        """:meth:`transition` and its draw in one pass: the noise scaled in place, mean added to it."""
        d = plan.denoiser
        sig, times = plan.extra, plan.timesteps
        for k in range(start, plan.steps):
            ab, c_x, c_x0, std = self._step(sig, k)
            pred = d(x, _step_t(times[k]), alpha_bar=ab)
            x_new = run.draw_blend(pred, x, c_x, c_x0, std)
            state = SamplerState(step=k - start, t=times[k], x=x_new, x0=pred, nfe=d.nfe)
            yield state
            x = state.x
