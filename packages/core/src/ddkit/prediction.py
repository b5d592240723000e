"""What a denoiser returns: the network's output read through a parameterization.

x_0 and ε are linear in (x_t, network output) until something nonlinear (clipping,
thresholding, ``denoised_fn``) touches them. While they are, a :class:`Prediction` keeps
them as :class:`Linear` forms and computes a tensor only when asked, so a sampler step that
needs ``c·x_t + d·x̂_0`` does it in one fused pass (:meth:`Prediction.blend_x0`) and a loop
that never reads ``x0`` never computes it.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

__all__ = ["Linear", "Prediction", "combine"]


def combine(a: float | Tensor, x: Tensor, b: float | Tensor, y: Tensor) -> Tensor:
    """a·x + b·y; two passes over memory when a and b are floats and x, y alike (a fresh tensor)."""
    if type(a) is float and type(b) is float and x.dtype == y.dtype and x.shape == y.shape:
        return torch.add(x, y, alpha=b) if a == 1.0 else torch.mul(x, a).add_(y, alpha=b)
    return a * x + b * y


class Linear:
    """The tensor (a·x + b·y)·s, not yet computed (``a``, ``b``, ``s``: floats or broadcastable tensors).

    ``s`` lets a difference of nearly equal terms be formed before it is scaled up (ε from x_0
    at small noise), which keeps float32 rounding where guided-diffusion's formulas have it.

    .. versionadded:: 0.1.0
    """

    __slots__ = ("a", "b", "s", "x", "y")

    def __init__(
        self, a: float | Tensor, x: Tensor, b: float | Tensor, y: Tensor, s: float | Tensor = 1.0
    ) -> None:
        self.a, self.x, self.b, self.y, self.s = a, x, b, y, s

    def value(self) -> Tensor:
        """The tensor itself."""
        if type(self.s) is float and self.s == 1.0:
            return combine(self.a, self.x, self.b, self.y)
        return combine(self.a, self.x, self.b, self.y).mul_(self.s)


class Prediction:
    """The prediction for ``x_t`` at one step.

    ``x0`` and ``eps`` are always available (``x0`` after clipping / thresholding /
    ``denoised_fn``); each may be given as a tensor or as a :class:`Linear` form that is
    computed on first access. ``mean``, ``variance`` and ``log_variance`` describe the
    reverse transition p(x_{t-1} | x_t) of the chain the denoiser is bound to; they are
    filled when asked for with ``posterior=True`` (ancestral samplers, losses) and left
    ``None`` otherwise, so deterministic samplers do not pay for them.

    .. versionadded:: 0.1.0
    """

    __slots__ = ("_eps", "_x0", "log_variance", "mean", "model_output", "variance")

    def __init__(
        self,
        x0: Tensor | Linear,
        eps: Tensor | Linear,
        model_output: Tensor,
        mean: Tensor | None = None,
        variance: Tensor | None = None,
        log_variance: Tensor | None = None,
    ) -> None:
        self._x0 = x0
        self._eps = eps
        self.model_output = model_output
        self.mean = mean
        self.variance = variance
        self.log_variance = log_variance

    @property
    def x0(self) -> Tensor:
        """The predicted clean sample."""
        x0 = self._x0
        if type(x0) is Linear:
            x0 = self._x0 = x0.value()
        return x0  # type: ignore[return-value]

    @x0.setter
    def x0(self, value: Tensor) -> None:
        self._x0 = value

    @property
    def eps(self) -> Tensor:
        """The predicted noise."""
        eps = self._eps
        if type(eps) is Linear:
            eps = self._eps = eps.value()
        return eps  # type: ignore[return-value]

    @eps.setter
    def eps(self, value: Tensor) -> None:
        self._eps = value

    def blend_x0(self, c_x: float, x: Tensor, c_x0: float) -> Tensor:
        """c_x·x + c_x0·x̂_0 as a fresh tensor: the update of DDIM, DDPM's mean and the Euler steps.

        Where x̂_0 is still a linear form in this ``x``, the result is one combination of ``x``
        and the network output, and x̂_0 itself is never computed.
        """
        x0 = self._x0
        if type(x0) is Linear and x0.x is x and type(x0.a) is float and type(x0.b) is float and x0.s == 1.0:
            return combine(c_x + c_x0 * x0.a, x, c_x0 * x0.b, x0.y)
        return combine(c_x, x, c_x0, self.x0)

    def x0_terms(self) -> tuple[float, Tensor, float, Tensor] | None:
        """(a, x, b, y) with x̂_0 = a·x + b·y while x̂_0 is such a form with float weights, else None.

        Lets a sampler fold x̂_0 into its own update (e.g. Heun's correction in one pass) instead of
        computing it first.

        .. versionadded:: 0.2.0
        """
        x0 = self._x0
        if type(x0) is not Linear or type(x0.a) is not float or type(x0.b) is not float:
            return None
        return (x0.a, x0.x, x0.b, x0.y) if type(x0.s) is float and x0.s == 1.0 else None

    def replace(self, **changes: Any) -> Prediction:
        """A copy with some fields changed (guidance uses this)."""
        out = Prediction(self._x0, self._eps, self.model_output, self.mean, self.variance, self.log_variance)
        for name, value in changes.items():
            if name not in ("x0", "eps", "model_output", "mean", "variance", "log_variance"):
                raise TypeError(f"Prediction has no field {name!r}")
            setattr(out, name, value)
        return out

    def __repr__(self) -> str:
        def show(v: object) -> str:
            if isinstance(v, Tensor):
                return f"Tensor{tuple(v.shape)}"
            return "<lazy>" if isinstance(v, Linear) else repr(v)

        fields = ("x0", "eps", "model_output", "mean", "variance", "log_variance")
        values = (self._x0, self._eps, self.model_output, self.mean, self.variance, self.log_variance)
        return "Prediction(" + ", ".join(f"{n}={show(v)}" for n, v in zip(fields, values)) + ")"
