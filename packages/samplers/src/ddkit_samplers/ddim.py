"""DDIM (Song et al. 2021, eq. 12) and its inversion, guided-diffusion's ``ddim_sample_loop``."""

from __future__ import annotations

import math
import weakref
from collections.abc import Callable, Iterator
from typing import Any, Literal

from torch import Tensor

from ddkit.denoiser import Denoiser
from ddkit.diffusion import GaussianProcess
from ddkit.errors import CompositionError
from ddkit.protocols import SamplerState
from ddkit.sampling import Plan, Run, SamplerBase, Spacing, Transition, real

__all__ = ["DDIM"]

#: Per plan step: the chain step, the weights of x and x̂_0, and σ.
_StepWeights = list[tuple[int, float, float, float]]


def _weights(ab: float, ab_to: float, c_eps: float) -> tuple[float, float]:
    """sqrt(ᾱ_to)·x̂_0 + c_eps·ε̂ as weights of x and x̂_0, with ε̂ = (x − sqrt(ᾱ)·x̂_0)/sqrt(1 − ᾱ).

    ε̂ re-derived from x̂_0 is what guided-diffusion's DDIM uses (so clipping and score guidance
    carry over), and this form stays finite where ᾱ = 0 (zero terminal SNR).
    """
    k = c_eps / math.sqrt(1.0 - ab)
    return k, math.sqrt(ab_to) - k * math.sqrt(ab)


class DDIM(SamplerBase):
    """x_{t-1} = sqrt(ᾱ_{t-1})·x̂_0 + sqrt(1 − ᾱ_{t-1} − σ²)·ε̂ + σ·z (Song et al. eq. 12).

    σ = η·sqrt((1 − ᾱ_{t-1})/(1 − ᾱ_t)·(1 − ᾱ_t/ᾱ_{t-1})).

    ``eta=0`` is the deterministic probability-flow discretisation (invertible, see
    :meth:`invert`); ``eta=1`` matches DDPM's fixed-small variance. ``steps=N`` keeps
    guided-diffusion's ``"ddimN"`` stride (where no stride gives exactly N, N steps at stride ⌊T/N⌋).
    NFE = steps.

    .. versionadded:: 0.1.0
    """

    name = "ddim"
    guidance_forms = ("model", "score")
    default_spacing = "ddim"
    #: Per chain and η: each step's weights (see :meth:`_step_weights`), made on first use.
    _weights_cache: weakref.WeakKeyDictionary[GaussianProcess, dict[float, _StepWeights]] | None = None

    def __init__(
        self,
        *,
        eta: float = 0.0,
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
        self.eta = real("eta", eta, low=0.0)
        self.stochastic = self.eta > 0.0

    def _plan(self, denoiser: Denoiser) -> Plan:
        plan = self._chain_plan(denoiser)
        plan.extra = self._step_weights(plan.denoiser.process)
        return plan

    def transition(self, plan: Plan, k: int, x: Tensor, history: Any = None) -> Transition:
        """Eq. 12 at chain step t = N − 1 − k: mean sqrt(ᾱ_{t-1})·x̂_0 + sqrt(1 − ᾱ_{t-1} − σ²)·ε̂, std σ."""
        d = plan.denoiser
        weights = plan.extra if plan.extra is not None else self._step_weights(d.process)
        i, c_x, c_x0, sigma = weights[k]
        pred = d(x, i)
        return Transition(pred.blend_x0(c_x, x, c_x0), sigma, pred)

    def _step_weights(self, chain: GaussianProcess) -> _StepWeights:
        """Per plan step k: chain step i, the weights of x and x̂_0, and σ; once per chain and η.

        Python floats worked out before the loop, so a step is a list lookup (the same values
        as computing them in the step).
        """
        if self._weights_cache is None:
            self._weights_cache = weakref.WeakKeyDictionary()
        per_eta = self._weights_cache.setdefault(chain, {})
        hit = per_eta.get(self.eta)
        if hit is not None:
            return hit
        n = chain.num_timesteps
        out: _StepWeights = []
        for k in range(n):
            i = n - 1 - k
            ab, ab_prev = float(chain.alphas_cumprod[i]), float(chain.alphas_cumprod_prev[i])
            sigma = (
                self.eta * math.sqrt((1.0 - ab_prev) / (1.0 - ab) * (1.0 - ab / ab_prev)) if self.eta else 0.0
            )
            c_x, c_x0 = _weights(ab, ab_prev, math.sqrt(max(1.0 - ab_prev - sigma * sigma, 0.0)))
            out.append((i, c_x, c_x0, sigma))
        per_eta[self.eta] = out
        return out

    # -- inversion -------------------------------------------------------------------------

    def invert_iterate(
        self,
        denoiser: Denoiser,
        x0: Tensor,
        *,
        callback: Callable[[SamplerState], None] | None = None,
        progress: bool = False,
    ) -> Iterator[SamplerState]:
        """Walk data ``x0`` up the deterministic DDIM path to x_T, a state per step.

        guided-diffusion's ``ddim_reverse_sample`` applied at steps 0, 1, ..., N − 1 of the
        chain: x_{t+1} = sqrt(ᾱ_{t+1})·x̂_0(x_t) + sqrt(1 − ᾱ_{t+1})·ε̂(x_t), with ᾱ_N = 0, so
        the last state is the noise that :meth:`sample` maps back to (about) ``x0``.
        """
        if self.eta != 0.0:
            raise CompositionError(
                "DDIM inversion follows the deterministic reverse ODE, so it needs eta=0 "
                f"(got eta={self.eta}); "
                "create the sampler with eta=0 to invert"
            )
        plan = self._checked_plan(denoiser)
        x, _ = self._start(plan, x0, None, None, None)
        return self._drive(
            self._invert(plan, x), plan, denoiser, 0, Run(None, False), callback, progress, None
        )

    def invert(self, denoiser: Denoiser, x0: Tensor, **options: Any) -> Tensor:
        """x_T for data ``x0`` along the DDIM ODE (see :meth:`invert_iterate`)."""
        state = None
        for state in self.invert_iterate(denoiser, x0, **options):  # noqa: B007 (the last one is kept)
            pass
        assert state is not None
        return state.x

    def _invert(self, plan: Plan, x: Tensor) -> Iterator[SamplerState]:
        d = plan.denoiser
        chain = d.process
        for i in range(chain.num_timesteps):
            ab, ab_next = float(chain.alphas_cumprod[i]), float(chain.alphas_cumprod_next[i])
            c_x, c_x0 = _weights(ab, ab_next, math.sqrt(1.0 - ab_next))
            pred = d(x, i)
            x_new = pred.blend_x0(c_x, x, c_x0)
            state = SamplerState(step=i, t=plan.timesteps[-1 - i], x=x_new, x0=pred, nfe=d.nfe)
            yield state
            x = state.x
