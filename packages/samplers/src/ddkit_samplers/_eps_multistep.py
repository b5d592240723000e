"""The loop iPNDM and DEIS share: an explicit multistep method on the noise prediction in ρ = σ/α.

In the variance-exploding scaling x̃ = x/α the probability-flow ODE is dx̃/dρ = ε(x̃, ρ), so a
multistep method is x̃_{k+1} = x̃_k + Σ_j c_j·ε_{k−j}: the methods differ only in the weights c_j
(Adams–Bashforth for iPNDM, the exact integral of an extrapolating polynomial for DEIS). In the
chain's scaling this is x_{k+1} = (α_{k+1}/α_k)·x_k + α_{k+1}·Σ_j c_j·ε_{k−j}. A first-order step
is DDIM, written with x̂_0 so that it stays finite at ᾱ = 0 (a v or x_0 model may start there).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from typing import Any, Literal

import torch
from torch import Tensor

from ddkit.denoiser import Denoiser
from ddkit.protocols import SamplerState
from ddkit.sampling import Plan, Run, SamplerBase, Spacing
from ddkit_samplers.dpm_solver import sigma_plan

__all__ = ["EpsMultistep"]


class EpsMultistep(SamplerBase):
    """A multistep solver of dx̃/dρ = ε; subclasses give :meth:`_weights` and ``max_order``."""

    guidance_forms = ("model", "score")
    default_steps = 20
    default_spacing = "leading"
    continuous = True
    max_order = 3
    #: :meth:`_coefficients` per grid, chain and settings, made on first use.
    _coefficient_cache: dict[tuple[Any, ...], list[tuple[float, tuple[float, ...]]]] | None = None

    def __init__(
        self,
        *,
        steps: int | None = None,
        spacing: Spacing | None = None,
        order: int = 3,
        lower_order_final: bool = True,
        lambda_min: float | Literal["auto"] | None = "auto",
        final_sigma: Literal["zero", "min"] = "zero",
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
        if isinstance(order, bool) or not isinstance(order, int) or not 1 <= order <= self.max_order:
            raise ValueError(f"'order' must be an int from 1 to {self.max_order} (got {order!r})")
        self.order = order
        if not isinstance(lower_order_final, bool):
            raise TypeError(f"'lower_order_final' must be a bool (got {lower_order_final!r})")
        self.lower_order_final = lower_order_final
        if final_sigma not in ("zero", "min"):
            raise ValueError(f"'final_sigma' must be 'zero' or 'min' (got {final_sigma!r})")
        self.final_sigma = final_sigma

    def _plan(self, denoiser: Denoiser) -> Plan:
        return sigma_plan(self, denoiser, self.final_sigma)

    def _weights(self, rho: list[float], k: int, order: int, plan: Plan) -> list[float]:
        """c_j (newest first, ``order`` of them) of the step from ρ_k to ρ_{k+1}."""
        raise NotImplementedError

    def _landing_order(self) -> int:
        """The highest order of a step that lands on σ = 0 (ρ = 0)."""
        return self.order

    def _orders(self, sig: list[float], start: int) -> list[int]:
        """Each step's order: warm up from 1, then ``order``; lower at the end of short runs."""
        n = len(sig) - 1
        few = self.lower_order_final and n < 15
        out = []
        for k in range(start, n):
            order = min(self.order, k - start + 1)
            if few:
                order = min(order, n - k)
            if sig[k + 1] == 0.0:
                order = min(order, self._landing_order())
            out.append(order)
        return out

    def _coefficients(self, plan: Plan, start: int) -> list[tuple[float, tuple[float, ...]]]:
        """Per step: the weight of x and of the ε history (newest first); order 1: of x and x̂_0."""
        sig: list[float] = plan.extra
        n = len(sig) - 1
        alpha = [1.0 / math.sqrt(1.0 + s * s) for s in sig]
        out: list[tuple[float, tuple[float, ...]]] = []
        for k, order in zip(range(start, n), self._orders(sig, start)):
            if order == 1:
                # DDIM: x' = α'·x̂_0 + s'·(x − α·x̂_0)/s with s = σ·α; as weights of x and x̂_0.
                c_x = (sig[k + 1] * alpha[k + 1]) / (sig[k] * alpha[k])
                out.append((c_x, (alpha[k + 1] - c_x * alpha[k],)))
                continue
            c = self._weights(sig, k, order, plan)
            out.append((alpha[k + 1] / alpha[k], tuple(alpha[k + 1] * w for w in c)))
        return out

    def _plan_coefficients(self, plan: Plan, start: int) -> list[tuple[float, tuple[float, ...]]]:
        """:meth:`_coefficients`, remembered per grid and chain (DEIS integrates polynomials for each)."""
        key = (tuple(plan.extra), start, plan.denoiser.process, *self._coefficient_key())
        cache = self._coefficient_cache
        if cache is None or len(cache) > 64:
            cache = self._coefficient_cache = {}
        hit = cache.get(key)
        if hit is None:
            hit = cache[key] = self._coefficients(plan, start)
        return hit

    def _coefficient_key(self) -> tuple[Any, ...]:
        """The settings :meth:`_coefficients` depends on besides the grid and the chain."""
        return (self.order, self.lower_order_final)

    def _run(self, plan: Plan, x: Tensor, start: int, run: Run) -> Iterator[SamplerState]:
        d = plan.denoiser
        sig = plan.extra
        coefs = self._plan_coefficients(plan, start)
        history: list[Tensor] = []  # past ε predictions, newest first
        keep = self.order - 1
        for k in range(start, plan.steps):
            s = sig[k]
            t = plan.timesteps[k]
            pred = d(x, int(t) if t.is_integer() else t, alpha_bar=1.0 / (1.0 + s * s))
            c_x, weights = coefs[k - start]
            if len(weights) == 1:
                x_new = pred.blend_x0(c_x, x, weights[0])
            else:
                x_new = torch.mul(x, c_x)
                for w, e in zip(weights, (pred.eps, *history)):
                    x_new.add_(e, alpha=w)
            if keep:
                history.insert(0, pred.eps)
                del history[keep:]
            if run.quiet and k + 1 < plan.steps:
                x = x_new  # no one sees the states between steps: only the last is yielded
                continue
            state = SamplerState(step=k - start, t=t, x=x_new, x0=pred, nfe=d.nfe)
            yield state
            x = state.x
