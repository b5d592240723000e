"""Multistep DPM-Solver++ (Lu et al. 2022, arXiv:2211.01095, Alg. 2) and its SDE variant (data prediction).

With α = 1/sqrt(1 + σ²), s = σ·α (the chain's signal and noise scales) and λ = log(α/s),
one ODE step from λ_i to λ_{i+1} (h = λ_{i+1} − λ_i) is

    x_{i+1} = (s_{i+1}/s_i)·x_i + α_{i+1}(1 − e^{−h})·(D_0 + ½·D_1)         (order 2, midpoint)

with D_0 = x̂_0 now and D_1 = (x̂_0 now − x̂_0 before)/r, r = h_prev/h: diffusers'
``DPMSolverMultistepScheduler(algorithm_type="dpmsolver++", solver_type="midpoint")``.
The SDE variant (Lu et al. 2022 §5; Gonzalez et al. 2023, SEEDS) integrates the reverse SDE
exactly in its linear part: x_{i+1} = (s_{i+1}/s_i)e^{−h}·x_i + α_{i+1}(1 − e^{−2h})·(D_0 + ½·D_1)
+ s_{i+1}·sqrt(1 − e^{−2h})·z, diffusers' ``algorithm_type="sde-dpmsolver++"`` (2M and 3M).
Every coefficient is finite at ᾱ = 0 (s_i = 1, α_i = 0), so a v or x_0 model may start there.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Iterator
from typing import Any, Literal

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
    sigmas_of,
)

__all__ = ["DPMSolverPP"]


#: Spacings laid as a grid of steps + 1 points whose t = 0 end is replaced by the final σ (diffusers' way).
GRID_SPACINGS = ("linspace", "leading", "logsnr", "karras")


def sigma_plan(sampler: SamplerBase, denoiser: Denoiser, final_sigma: str) -> Plan:
    """The σ plan of a multistep solver whose last step lands on ``final_sigma`` ("zero" or "min").

    Shared by DPM-Solver++, DEIS and iPNDM: named grids get steps + 1 points with the t = 0 end
    replaced by the final σ, so NFE = steps; every step must lower σ.
    """
    ac = denoiser.process.alphas_cumprod
    spacing = sampler._resolved_spacing()
    final = 0.0 if final_sigma == "zero" else float(sigmas_of(ac)[0])
    drop = isinstance(spacing, str) and spacing in GRID_SPACINGS
    total = sampler._usable_steps(ac, spacing, denoiser)
    steps = sampler._resolved_steps()
    if drop and spacing in ("linspace", "leading") and steps is not None and steps + 1 > total:
        raise ValueError(
            f"{sampler.name} with spacing {spacing!r} lays steps + 1 grid points on the {total} usable "
            f"timesteps (its last step lands on σ = {final:g}), so it takes at most {total - 1} steps "
            f"(got {steps})"
        )
    plan = sampler._sigma_plan(denoiser, drop_last=drop, final=final)
    sig = plan.extra
    if any(b >= a for a, b in itertools.pairwise(sig)):
        raise ValueError(
            f"spacing {spacing!r} gives repeated noise levels for {plan.steps} steps of a "
            f"{denoiser.process.num_timesteps}-step chain (each step must lower σ); ask for fewer steps, "
            "another spacing or final_sigma='zero'"
        )
    return plan


class DPMSolverPP(SamplerBase):
    """DPM-Solver++(2M)/(3M), with ``sde=True`` SDE-DPM-Solver++(2M)/(3M): multistep exponential integrators.

    ``order`` 2 or 3; the first steps use lower orders until enough history exists, and with
    ``lower_order_final`` (and fewer than 15 steps) the last steps do too, which keeps small
    step counts stable. The last step lands on σ = 0 (``final_sigma="zero"``) or on the
    chain's smallest σ (``"min"``). ``sde=True`` adds fresh noise each step (the reverse SDE
    solved with the same data-prediction extrapolation; ``return_log_prob`` reports each
    step's Gaussian log density). NFE = steps.

    Defaults: 20 steps uniform in log-SNR (``"logsnr"``, steps + 1 points ending at σ = 0) from
    ``lambda_min="auto"`` (λ ≥ −5.1: on a schedule ending near ᾱ = 0, such as guided-diffusion's
    cosine with λ_T ≈ −9.9, an ε-model's data prediction there amplifies any ε error by
    1/sqrt(ᾱ) ≈ 2·10⁴). Log-SNR steps are the solver's own variable and its best named grid at 10
    and 20 evaluations; under 8 steps, and with ``sde=True``, the default is the time-uniform
    ``"leading"`` grid, which does better there (bench/quality_vs_nfe.py --exact).
    ``spacing="linspace", lambda_min=None`` is diffusers' default grid exactly.

    .. versionadded:: 0.1.0
    .. versionchanged:: 0.2.0 ``sde``; ``lambda_min`` (default "auto"); log-SNR steps by default.
    """

    name = "dpm-solver++"
    guidance_forms = ("model", "score")
    #: The grid of the walk in progress and its steps' coefficients (see :meth:`transition`).
    _memo: tuple[list[float], dict[tuple[int, int], tuple[float, tuple[float, ...], float]]] | None = None
    default_steps = 20
    default_spacing = "logsnr"
    few_steps_spacing = "leading"
    continuous = True

    def __init__(
        self,
        *,
        steps: int | None = None,
        spacing: Spacing | None = None,
        order: Literal[2, 3] = 2,
        sde: bool = False,
        lower_order_final: bool = True,
        lambda_min: float | Literal["auto"] | None = "auto",
        final_sigma: Literal["zero", "min"] = "zero",
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
            return_log_prob=return_log_prob,
            lambda_min=lambda_min,
        )
        if isinstance(order, bool) or order not in (2, 3):
            raise ValueError(f"'order' must be 2 or 3 (got {order!r})")
        self.order = int(order)
        for key, flag in (("sde", sde), ("lower_order_final", lower_order_final)):
            if not isinstance(flag, bool):
                raise TypeError(f"{key!r} must be a bool (got {flag!r})")
        self.sde = sde
        self.stochastic = sde
        self.lower_order_final = lower_order_final
        if final_sigma not in ("zero", "min"):
            raise ValueError(f"'final_sigma' must be 'zero' or 'min' (got {final_sigma!r})")
        self.final_sigma = final_sigma
        self._cache: dict[tuple[Any, ...], tuple[float, tuple[float, ...], float]] = {}

    def _resolved_spacing(self) -> Spacing:
        """The SDE takes time-uniform steps by default: its noise favours them (bench/quality_vs_nfe.py)."""
        return "leading" if self.spacing is None and self.sde else super()._resolved_spacing()

    def _plan(self, denoiser: Denoiser) -> Plan:
        return sigma_plan(self, denoiser, self.final_sigma)

    def _coefficients(self, sig: list[float], start: int) -> list[tuple[float, tuple[float, ...], float]]:
        """Per step from ``start``: the weight of x, of the x̂_0 history (newest first) and of the noise."""
        return [self._coefficient(sig, k, k - start) for k in range(start, len(sig) - 1)]

    def _coefficient(self, sig: list[float], k: int, known: int) -> tuple[float, tuple[float, ...], float]:
        """Step ``k``'s weights after ``known`` earlier x̂_0's of this walk (all Python floats)."""
        n = len(sig) - 1
        if sig[k + 1] == 0.0:
            return (0.0, (1.0,), 0.0)  # λ = ∞: the step lands on x̂_0 itself
        few = self.lower_order_final and n < 15
        order = self.order
        if known < 1 or (k == n - 1 and few):
            order = 1
        elif known < 2 or (k == n - 2 and few):
            order = min(order, 2)
        alpha = [1.0 / math.sqrt(1.0 + v * v) for v in sig[max(k - 2, 0) : k + 2]]
        a_k, a_next = alpha[-2], alpha[-1]
        lam = {j: -math.log(sig[j]) for j in range(max(k - 2, 0), k + 2)}
        h = lam[k + 1] - lam[k]
        ratio = (sig[k + 1] * a_next) / (sig[k] * a_k)  # s_{i+1}/s_i
        noise = 0.0
        if self.sde:
            # x' = ratio·e^{−h}·x + α'(1 − e^{−2h})·(D0 + ...) + s'·sqrt(1 − e^{−2h})·z
            ratio *= math.exp(-h)
            one_m = -math.expm1(-2.0 * h)
            a = a_next * one_m
            b = a_next * (one_m / (-2.0 * h) + 1.0)
            c = a_next * ((one_m - 2.0 * h) / (4.0 * h * h) - 0.5)
            noise = sig[k + 1] * a_next * math.sqrt(one_m)
        else:
            a = a_next * -math.expm1(-h)  # α_{i+1}(1 − e^{−h})
            b = a_next * (math.expm1(-h) / h + 1.0)
            c = -a_next * ((math.expm1(-h) + h) / (h * h) - 0.5)
        if order == 1:
            return (ratio, (a,), noise)
        r0 = (lam[k] - lam[k - 1]) / h
        if order == 2:
            return (ratio, (a + 0.5 * a / r0, -0.5 * a / r0), noise)
        r1 = (lam[k - 1] - lam[k - 2]) / h
        # D1_0 = (m0 − m1)/r0, D1_1 = (m1 − m2)/r1, D1 = D1_0 + r0/(r0+r1)·(D1_0 − D1_1),
        # D2 = (D1_0 − D1_1)/(r0+r1); x' = ratio·x + a·m0 + b·D1 + c·D2, collected per m.
        d10 = np.array([1.0, -1.0, 0.0]) / r0
        d11 = np.array([0.0, 1.0, -1.0]) / r1
        d1 = d10 + r0 / (r0 + r1) * (d10 - d11)
        d2 = (d10 - d11) / (r0 + r1)
        w = a * np.array([1.0, 0.0, 0.0]) + b * d1 + c * d2
        return (ratio, tuple(float(v) for v in w), noise)

    def transition(self, plan: Plan, k: int, x: Tensor, history: Any = None) -> Transition:
        """Step ``k`` as N(mean, std²); ``history``: the earlier x̂_0's of this walk, newest first."""
        past: tuple[Tensor, ...] = () if history is None else history
        sig = plan.extra
        pred = plan.denoiser(x, _step_t(plan.timesteps[k]), alpha_bar=1.0 / (1.0 + sig[k] * sig[k]))
        memo = self._memo
        if memo is None or memo[0] is not sig:
            # One walk asks with the same grid list at every step: key on it by identity.
            memo = self._memo = (sig, {})
        hit = memo[1].get((k, len(past)))
        if hit is None:
            hit = memo[1][(k, len(past))] = self._step_coefficients(sig, k, len(past))
        ratio, weights, std = hit
        if ratio == 0.0 and weights == (1.0,):
            mean = pred.x0.clone()
        elif len(weights) == 1:
            mean = pred.blend_x0(ratio, x, weights[0])
        else:
            mean = torch.mul(x, ratio)
            for w, m in zip(weights, (pred.x0, *past)):
                mean.add_(m, alpha=w)
        carry = (pred.x0, *past)[: self.order - 1] if self.order > 1 else ()
        return Transition(mean, std, pred, carry)

    def _step_coefficients(
        self, sig: list[float], k: int, known: int, grid: tuple[float, ...] | None = None
    ) -> tuple[float, tuple[float, ...], float]:
        """:meth:`_coefficient`, remembered per grid (``grid``: ``tuple(sig)`` if the caller has it)."""
        key = (tuple(sig) if grid is None else grid, k, known)
        hit = self._cache.get(key)
        if hit is None:
            if len(self._cache) > 4096:
                self._cache.clear()
            hit = self._cache[key] = self._coefficient(sig, k, known)
        return hit

    def _run(self, plan: Plan, x: Tensor, start: int, run: Run) -> Iterator[SamplerState]:
        if self.sde and (run.trace is not None or run.log_prob):
            return self._walk(plan, x, start, run)  # each step as a Transition (densities, rollouts)
        return self._ode(plan, x, start, run if self.sde else None)

    def _ode(self, plan: Plan, x: Tensor, start: int, run: Run | None = None) -> Iterator[SamplerState]:
        """The multistep loop; with ``run`` (the SDE) :meth:`transition`'s draw folded into its step."""
        d = plan.denoiser
        sig = plan.extra
        grid = tuple(sig)
        coefs = [self._step_coefficients(sig, k, k - start, grid) for k in range(start, len(sig) - 1)]
        history: list[Tensor] = []  # x̂_0 predictions, newest first
        for k in range(start, plan.steps):
            s = sig[k]
            t = plan.timesteps[k]
            pred = d(x, _step_t(t), alpha_bar=1.0 / (1.0 + s * s))
            ratio, weights, std = coefs[k - start]
            if ratio == 0.0 and weights == (1.0,):
                x_new = pred.x0.clone()
            elif run is not None and std != 0.0:
                # std·z + ratio·x + Σ w·x̂_0, accumulated in place on the fresh noise.
                x_new = run.noise(x).mul_(std).add_(x, alpha=ratio)
                for w, m in zip(weights, (pred.x0, *history)):
                    x_new.add_(m, alpha=w)
            elif len(weights) == 1:
                x_new = pred.blend_x0(ratio, x, weights[0])
            else:
                x_new = torch.mul(x, ratio)
                for w, m in zip(weights, (pred.x0, *history)):
                    x_new.add_(m, alpha=w)
            if self.order > 1:
                history.insert(0, pred.x0)
                del history[self.order - 1 :]
            state = SamplerState(step=k - start, t=t, x=x_new, x0=pred, nfe=d.nfe)
            yield state
            x = state.x


def _step_t(t: float) -> int | float:
    """A timestep as the denoiser takes it: an int on the training grid, else a float."""
    return int(t) if float(t).is_integer() else t
