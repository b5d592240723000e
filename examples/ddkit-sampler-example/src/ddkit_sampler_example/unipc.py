"""UniPC (Zhao et al. 2023, arXiv:2302.04867): multistep predictor-corrector, data-prediction form.

With α = 1/sqrt(1 + σ²), s = σ·α (the chain's signal and noise scales), λ = log(α/s) = −log σ
and m_0, m_1, ... the data predictions x̂_0 (newest first), one step from λ_k to λ_{k+1},
h = λ_{k+1} − λ_k, is

    UniP-p:  x_{k+1} = (s_{k+1}/s_k)·x_k + α_{k+1}(1 − e^{−h})·m_0 − α_{k+1}·B(h)·Σ_i ρ_i·D_i
    UniC-p:  the same step redone with weights ρ^c, plus −α_{k+1}·B(h)·ρ^c_p·(m_new − m_0)

with D_i = (m_i − m_0)/r_i, r_i = (λ_{k−i} − λ_k)/h, m_new the x̂_0 at the predicted x_{k+1},
B(h) = e^{−h} − 1 (``bh2``) or −h (``bh1``), and the ρ's solving the order conditions of the
paper's Algorithm 2 (UniP-2 takes ρ = ½). The corrector reuses the model evaluation the next
predictor needs anyway, so it raises the order by one at no extra NFE. The last step lands on
x̂_0 when it reaches σ = 0 and is not corrected. The coefficients are computed per step in
float64 from the σ grid; each step is one linear combination of x and the x̂_0 history.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Iterator, Sequence
from typing import Literal

import numpy as np
import torch
from ddkit.denoiser import Denoiser
from ddkit.protocols import SamplerState
from ddkit.sampling import DEFAULT_LAMBDA_MIN, Plan, Run, SamplerBase, Spacing, sigmas_of
from torch import Tensor

__all__ = ["UniPC", "unipc_weights"]

#: Spacings laid as a grid of steps + 1 points whose t = 0 end is replaced by σ = 0 (as diffusers does).
_GRID = ("linspace", "leading", "logsnr")


def _b_terms(h: float, order: int, variant: str) -> tuple[float, float, list[float]]:
    """e^{−h} − 1, B(h) and the right-hand side b_1..b_order of the UniPC order conditions."""
    hh = -h
    h_phi_1 = math.expm1(hh)
    h_phi_k = h_phi_1 / hh - 1.0
    b_h = hh if variant == "bh1" else h_phi_1
    factorial = 1
    rhs = []
    for i in range(1, order + 1):
        rhs.append(h_phi_k * factorial / b_h)
        factorial *= i + 1
        h_phi_k = h_phi_k / hh - 1.0 / factorial
    return h_phi_1, b_h, rhs


def unipc_weights(
    lambdas: Sequence[float], alpha: float, ratio: float, order: int, variant: str, *, corrector: bool
) -> list[float]:
    """The weights of the x̂_0's in one UniP-``order`` (``corrector=False``) or UniC-``order`` update.

    ``lambdas``: λ of the level the step lands on, then λ of the ``order`` newest x̂_0's of the
    history, newest first (the step starts at the newest); ``alpha``: α at the landing level;
    ``ratio``: s_landing / s_start. Returns the weights of the history's x̂_0's, newest first; for
    UniC preceded by the weight of the new x̂_0, predicted at the landing level.
    """
    lam_t, lam_0 = lambdas[0], lambdas[1]
    h = lam_t - lam_0
    h_phi_1, b_h, rhs = _b_terms(h, order, variant)
    rks = [(lam_i - lam_0) / h for lam_i in lambdas[2 : 2 + order - 1]]
    base = -alpha * h_phi_1  # weight of m_0 in the first-order (DDIM) update
    scale = alpha * b_h
    if not corrector:
        if order == 1:
            return [base]
        if order == 2:
            rhos = [0.5]
        else:
            r = np.array([[rk ** (i - 1) for rk in rks] for i in range(1, order)])
            rhos = [float(v) for v in np.linalg.solve(r, np.array(rhs[:-1]))]
        history = [-scale * rho / rk for rho, rk in zip(rhos, rks)]
        return [base - sum(history), *history]
    if order == 1:
        rhos_c = [0.5]
    else:
        nodes = [*rks, 1.0]
        r = np.array([[rk ** (i - 1) for rk in nodes] for i in range(1, order + 1)])
        rhos_c = [float(v) for v in np.linalg.solve(r, np.array(rhs))]
    history = [-scale * rho / rk for rho, rk in zip(rhos_c[:-1], rks)]
    new = -scale * rhos_c[-1]
    return [new, base - sum(history) - new, *history]


class UniPC(SamplerBase):
    """UniPC-p multistep: UniP-p predictor + UniC-p corrector on the data-prediction ODE (order p + 1).

    ``order`` 1, 2 or 3 (the paper's UniPC-p; 2 is its recommendation for guided sampling,
    3 for unconditional); the first steps use lower orders until enough history exists, and
    with ``lower_order_final`` the last ``order − 1`` steps do too. ``variant`` chooses
    B(h): ``"bh2"`` (e^{−h} − 1, the paper's choice for few steps) or ``"bh1"`` (−h).
    ``corrector=False`` runs the predictor alone (order 1 is then exactly DDIM);
    ``disable_corrector`` lists steps whose result is left uncorrected (diffusers' option of
    that name; ``[0]`` helps under strong guidance). Each state's ``x`` is the predictor's
    result; the next step corrects it before use. The last step lands on σ = 0
    (``final_sigma="zero"``) or on the chain's smallest σ (``"min"``).

    The default spacing ``"logsnr"`` lays steps + 1 points uniform in λ and replaces the
    last by σ = 0; ``spacing="linspace"`` reproduces diffusers' ``UniPCMultistepScheduler``
    (``predict_x0=True``). NFE = steps.

    .. versionadded:: 0.1.0
    """

    name = "unipc"
    guidance_forms = ("model", "score")
    default_steps = 10
    default_spacing = "logsnr"
    continuous = True

    def __init__(
        self,
        *,
        steps: int | None = None,
        spacing: Spacing | None = None,
        order: Literal[1, 2, 3] = 2,
        variant: Literal["bh1", "bh2"] = "bh2",
        corrector: bool = True,
        disable_corrector: Sequence[int] = (),
        lower_order_final: bool = True,
        final_sigma: Literal["zero", "min"] = "zero",
        lambda_min: float | None = DEFAULT_LAMBDA_MIN,
        clip_denoised: bool | None = None,
        dynamic_threshold: float | None = None,
        denoised_fn: Callable[[Tensor], Tensor] | None = None,
    ) -> None:
        super().__init__(
            steps=steps,
            spacing=spacing,
            lambda_min=lambda_min,
            clip_denoised=clip_denoised,
            dynamic_threshold=dynamic_threshold,
            denoised_fn=denoised_fn,
        )
        if isinstance(order, bool) or order not in (1, 2, 3):
            raise ValueError(f"'order' must be 1, 2 or 3 (got {order!r})")
        self.order = int(order)
        if variant not in ("bh1", "bh2"):
            raise ValueError(f"'variant' must be 'bh1' or 'bh2' (got {variant!r})")
        self.variant = variant
        for key, flag in (("corrector", corrector), ("lower_order_final", lower_order_final)):
            if not isinstance(flag, bool):
                raise TypeError(f"{key!r} must be a bool (got {flag!r})")
        self.corrector = corrector
        self.lower_order_final = lower_order_final
        if isinstance(disable_corrector, (str, bytes)) or not all(
            isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in disable_corrector
        ):
            raise TypeError(
                f"'disable_corrector' must be a list of step indices >= 0 (got {disable_corrector!r})"
            )
        self.disable_corrector = frozenset(disable_corrector)
        if final_sigma not in ("zero", "min"):
            raise ValueError(f"'final_sigma' must be 'zero' or 'min' (got {final_sigma!r})")
        self.final_sigma = final_sigma

    def _plan(self, denoiser: Denoiser) -> Plan:
        ac = denoiser.process.alphas_cumprod
        spacing = self._resolved_spacing()
        final = 0.0 if self.final_sigma == "zero" else float(sigmas_of(ac)[0])
        drop = isinstance(spacing, str) and spacing in _GRID
        plan = self._sigma_plan(denoiser, drop_last=drop, final=final)
        sig: list[float] = plan.extra
        for k, (high, low) in enumerate(itertools.pairwise(sig)):
            if not low < high * (1.0 - 1e-9):  # h = 0: the order conditions divide by it
                chain = f"{plan.steps} steps on a {denoiser.process.num_timesteps}-step chain"
                raise ValueError(
                    f"unipc: spacing {spacing!r} with final_sigma={self.final_sigma!r} and {chain} visits "
                    f"σ = {high:.6g} twice (steps {k} and {k + 1}); each step must lower σ: ask for fewer "
                    "steps, another spacing or final_sigma='zero'"
                )
        return plan

    def _orders(self, n: int, start: int) -> list[int]:
        """The predictor order of each step from ``start``: warm-up, then ``order``, then lower at the end."""
        orders = []
        for k in range(start, n):
            order = min(self.order, k - start + 1)
            if self.lower_order_final:
                order = min(order, n - k)
            orders.append(order)
        return orders

    def _run(self, plan: Plan, x: Tensor, start: int, run: Run) -> Iterator[SamplerState]:
        d = plan.denoiser
        sig: list[float] = plan.extra
        alpha = [1.0 / math.sqrt(1.0 + s * s) for s in sig]
        lam = [-math.log(s) if s > 0 else math.inf for s in sig]
        orders = self._orders(plan.steps, start)
        history: list[Tensor] = []  # x̂_0's, newest first
        x_prev: Tensor | None = None  # the input of the last predictor step
        for k in range(start, plan.steps):
            s, t = sig[k], plan.timesteps[k]
            pred = d(x, int(t) if t.is_integer() else t, alpha_bar=1.0 / (1.0 + s * s))
            if x_prev is not None and self.corrector and (k - 1 - start) not in self.disable_corrector:
                # UniC: redo the last step with the new x̂_0 as one more node; the model is not called again.
                p = orders[k - 1 - start]
                ratio = (sig[k] * alpha[k]) / (sig[k - 1] * alpha[k - 1])
                lambdas = [lam[k], *(lam[k - 1 - i] for i in range(p))]
                weights = unipc_weights(lambdas, alpha[k], ratio, p, self.variant, corrector=True)
                x = _combine(x_prev, ratio, weights, [pred.x0, *history])
            history.insert(0, pred.x0)
            del history[self.order :]
            x_prev = x
            if sig[k + 1] == 0.0:
                x_new = pred.x0.clone()  # λ = ∞: every order lands on x̂_0 itself
            else:
                p = orders[k - start]
                ratio = (sig[k + 1] * alpha[k + 1]) / (s * alpha[k])
                lambdas = [lam[k + 1], *(lam[k - i] for i in range(p))]
                weights = unipc_weights(lambdas, alpha[k + 1], ratio, p, self.variant, corrector=False)
                x_new = _combine(x, ratio, weights, history)
            state = SamplerState(step=k - start, t=t, x=x_new, x0=pred.x0, nfe=d.nfe)
            yield state
            x = state.x


def _combine(x: Tensor, ratio: float, weights: Sequence[float], terms: Sequence[Tensor]) -> Tensor:
    """ratio·x + Σ weights[i]·terms[i], in x's dtype, with one new tensor."""
    out = torch.mul(x, ratio)
    for w, term in zip(weights, terms):
        out.add_(term, alpha=w)
    return out
