"""DEIS multistep (Zhang & Chen 2022, arXiv:2204.13902, §4, DEIS-ρAB/tAB; diffusers' DEISMultistepScheduler).

The exponential integrator of the probability-flow ODE, dx̃/dρ = ε in ρ = σ/α, with ε
extrapolated by the Lagrange polynomial through the last ``order`` predictions and the
polynomial integrated exactly: x̃_{k+1} = x̃_k + Σ_j ε_{k−j}·∫_{ρ_k}^{ρ_{k+1}} ℓ_j dρ. The
polynomial runs in log ρ (``basis="logrho"``, diffusers' only variant, closed form) or in the
training time t (``basis="t"``, the paper's tAB; the integral by Gauss–Legendre quadrature).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, Literal

import numpy as np
from numpy.polynomial.polynomial import polymul, polyval
from torch import Tensor

from ddkit.sampling import Plan, Spacing, sigmas_of
from ddkit_samplers._eps_multistep import EpsMultistep

__all__ = ["DEIS"]

#: Gauss–Legendre nodes and weights on [-1, 1] for the tAB integrals.
_GL_NODES, _GL_WEIGHTS = np.polynomial.legendre.leggauss(48)


def _lagrange(nodes: list[float], j: int) -> np.ndarray:
    """Coefficients (lowest power first) of the Lagrange basis polynomial ℓ_j on ``nodes``."""
    poly = np.array([1.0])
    for i, u in enumerate(nodes):
        if i != j:
            poly = polymul(poly, np.array([-u, 1.0]) / (nodes[j] - u))
    return poly


def _exp_moment(m: int, u: float) -> float:
    """∫_0^u e^v·v^m dv (u may be −∞)."""

    # Antiderivative e^v·Q_m(v) with Q_m = Σ_i (−1)^i m!/(m−i)!·v^(m−i).
    def q(v: float) -> float:
        return float(sum((-1) ** i * math.perm(m, i) * v ** (m - i) for i in range(m + 1)))

    tail = 0.0 if u == -math.inf else math.exp(u) * q(u)
    return tail - q(0.0)


class DEIS(EpsMultistep):
    """DEIS: ε extrapolated by a polynomial and integrated exactly (Zhang & Chen 2022, §4, ρAB/tAB).

    ``order`` 1–3 (1 is DDIM); ``basis`` "logrho" (diffusers) or "t"; ``lower_order_final``
    lowers the last steps' order in runs of fewer than 15 steps. Spacings, ``lambda_min`` and
    ``final_sigma`` as :class:`DPMSolverPP`. Default: 20 steps on Karras σ's (``"karras"``) from
    ``lambda_min="auto"``, the last landing on σ = 0: the best of the named grids for DEIS at 10 and
    20 evaluations on linear and cosine chains (bench/quality_vs_nfe.py --exact).
    ``spacing="linspace", final_sigma="min", lambda_min=None`` is diffusers' default grid. NFE = steps.

    .. versionadded:: 0.2.0
    """

    name = "deis"
    max_order = 3
    default_spacing = "karras"

    def __init__(
        self,
        *,
        steps: int | None = None,
        spacing: Spacing | None = None,
        order: int = 3,
        basis: Literal["logrho", "t"] = "logrho",
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
            order=order,
            lower_order_final=lower_order_final,
            lambda_min=lambda_min,
            final_sigma=final_sigma,
            clip_denoised=clip_denoised,
            dynamic_threshold=dynamic_threshold,
            denoised_fn=denoised_fn,
        )
        if basis not in ("logrho", "t"):
            raise ValueError(f"'basis' must be 'logrho' or 't' (got {basis!r})")
        self.basis = basis

    def _coefficient_key(self) -> tuple[Any, ...]:
        return (*super()._coefficient_key(), self.basis)

    def _landing_order(self) -> int:
        # A polynomial in log ρ extrapolated down to ρ = 0 (log ρ = −∞) is wild: land by DDIM.
        return 1 if self.basis == "logrho" else self.order

    def _weights(self, rho: list[float], k: int, order: int, plan: Plan) -> list[float]:
        if self.basis == "logrho":
            # u = log(ρ/ρ_k): ∫ ℓ_j dρ = ρ_k·∫_0^{u'} e^u·ℓ_j(u) du, exact per monomial.
            nodes = [math.log(rho[k - i] / rho[k]) for i in range(order)]
            end = -math.inf if rho[k + 1] == 0.0 else math.log(rho[k + 1] / rho[k])
            out = []
            for j in range(order):
                poly = _lagrange(nodes, j)
                out.append(rho[k] * sum(float(a) * _exp_moment(m, end) for m, a in enumerate(poly)))
            return out
        return self._t_weights(rho, k, order, plan)

    def _t_weights(self, rho: list[float], k: int, order: int, plan: Plan) -> list[float]:
        """∫ ℓ_j(t(ρ)) dρ with ℓ_j in training time, by quadrature in log ρ down to the chain's σ_min."""
        ac = plan.denoiser.process.alphas_cumprod
        index_of_sigma = plan.denoiser.process.index_of_sigma  # exact on a continuous path
        times = [float(v) for v in index_of_sigma(np.array([rho[k - i] for i in range(order)]))]
        polys = [_lagrange(times, j) for j in range(order)]
        sigma_min = float(sigmas_of(ac)[0])
        lo = max(rho[k + 1], sigma_min)
        out = [0.0] * order
        if lo < rho[k]:
            a, b = math.log(lo), math.log(rho[k])
            logs = 0.5 * (b - a) * _GL_NODES + 0.5 * (b + a)
            r = np.exp(logs)
            t = index_of_sigma(r)
            for j, poly in enumerate(polys):
                # dρ = ρ·d(log ρ); the step runs from ρ_k down, so the integral is negative.
                out[j] -= float(0.5 * (b - a) * np.sum(_GL_WEIGHTS * r * polyval(t, poly)))
        if rho[k + 1] < sigma_min:
            # Below σ_min the chain has no time left: ε held at its t = 0 value.
            for j, poly in enumerate(polys):
                out[j] -= (min(sigma_min, rho[k]) - rho[k + 1]) * float(polyval(0.0, poly))
        return out
