"""The Laplace noise schedule (Hang et al. 2024, "Improved Noise Schedule for Diffusion Training").

The log-SNR follows the quantile function of a Laplace distribution centred on ``mu``::

    λ(t) = mu − b·sgn(0.5 − t)·log(1 − 2|t − 0.5|),      ᾱ(t) = sigmoid(λ(t))

so training time is spent where λ is near ``mu`` (the noise levels that matter most) and
λ runs from +∞ at t = 0 to −∞ at t = 1. The T training steps discretise ᾱ(t) as
β_i = 1 − ᾱ((i + 1)/T) / ᾱ(i/T), capped at ``max_beta`` so that the last step keeps a
tiny ᾱ > 0 instead of ᾱ = 0 (where ε-prediction cannot recover x_0).

This is a complete :class:`ddkit.Schedule` written from scratch, not a subclass of ddkit's own.
"""

from __future__ import annotations

import math
from typing import overload

import numpy as np
import torch
from ddkit.diffusion.process import GaussianProcess, validate_betas
from ddkit.errors import ConfigError
from torch import Tensor

__all__ = ["LaplaceSchedule", "laplace_log_snr"]


def laplace_log_snr(t: np.ndarray | float, mu: float = 0.0, b: float = 0.5) -> np.ndarray:
    """λ(t) = mu − b·sgn(0.5 − t)·log(1 − 2|t − 0.5|) for t in [0, 1] (±inf at the ends)."""
    u = np.asarray(t, dtype=np.float64)
    with np.errstate(divide="ignore"):
        return mu - b * np.sign(0.5 - u) * np.log1p(-2.0 * np.abs(u - 0.5))


def _real(name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ConfigError(f"laplace schedule: {name!r} must be a finite number (got {value!r})")
    return float(value)


class LaplaceSchedule:
    """T betas from the Laplace log-SNR schedule, and the continuous ᾱ(t) they define.

    ``mu`` centres the schedule in log-SNR (0: equal signal and noise), ``b`` spreads it
    (the paper's default 0.5); ``max_beta`` caps the betas (the last one is 1 otherwise).
    Between the training steps' grid points ᾱ(t) interpolates log ᾱ linearly, so that
    ᾱ((i + 1)/T) is step i's ᾱ exactly, as :class:`ddkit.Schedule` asks.

    .. versionadded:: 0.1.0
    """

    __slots__ = ("_betas", "_knots", "_table", "b", "max_beta", "mu", "name")

    def __init__(
        self, timesteps: int = 1000, *, mu: float = 0.0, b: float = 0.5, max_beta: float = 0.999
    ) -> None:
        if isinstance(timesteps, bool) or not isinstance(timesteps, int) or timesteps < 1:
            raise ConfigError(f"laplace schedule: 'timesteps' must be an int >= 1 (got {timesteps!r})")
        self.mu = _real("mu", mu)
        self.b = _real("b", b)
        self.max_beta = _real("max_beta", max_beta)
        if self.b <= 0:
            raise ConfigError(f"laplace schedule: 'b' (the spread in log-SNR) must be > 0 (got {b!r})")
        if not 0 < self.max_beta < 1:
            raise ConfigError(
                f"laplace schedule: 'max_beta' must lie in (0, 1) (got {max_beta!r}); 1 would end the chain "
                "at ᾱ = 0, where an ε-predicting model cannot recover x_0"
            )
        self.name = "laplace"
        grid = np.arange(timesteps + 1, dtype=np.float64) / timesteps
        # log ᾱ = −softplus(−λ), exact at both ends (λ = ±inf) and precise where ᾱ ≈ 1.
        log_ab = -np.logaddexp(0.0, -laplace_log_snr(grid, self.mu, self.b))
        betas = np.minimum(-np.expm1(np.diff(log_ab)), self.max_beta)
        try:
            betas = validate_betas(betas)
            if not bool((1.0 - betas < 1.0).all()):  # ᾱ would not move: 0/0 in the posterior
                i = int(np.argmax(1.0 - betas == 1.0))
                raise ValueError(f"betas[{i}] = {betas[i]:.3g} is lost next to 1 in float64")
        except ValueError as exc:
            raise ConfigError(
                f"laplace schedule with mu={self.mu:g}, b={self.b:g}, timesteps={timesteps}: {exc}; "
                "a large |mu| saturates ᾱ at 1 or 0 in float64, so bring mu closer to 0"
            ) from None
        betas.flags.writeable = False
        self._betas = betas
        knots = np.append(1.0, np.cumprod(1.0 - betas))
        knots.flags.writeable = False
        self._knots = knots
        # ᾱ and log ᾱ at the T + 1 grid points i/T, for alpha_bar.
        self._table = torch.from_numpy(np.stack([knots, np.log(knots)]))

    @property
    def timesteps(self) -> int:
        """The number T of training steps."""
        return int(self._betas.shape[0])

    @property
    def betas(self) -> np.ndarray:
        """The betas of the T training steps (float64, read-only, each in (0, max_beta])."""
        return self._betas

    @property
    def alphas_cumprod(self) -> np.ndarray:
        """ᾱ of the T training steps (float64, read-only)."""
        return self._knots[1:]

    @overload
    def alpha_bar(self, t: float) -> float: ...
    @overload
    def alpha_bar(self, t: Tensor) -> Tensor: ...
    def alpha_bar(self, t: float | Tensor) -> float | Tensor:
        """ᾱ at time ``t`` in [0, 1] (clamped); a tensor comes back in ``t``'s float dtype, else float64."""
        if not isinstance(t, Tensor):
            return float(self.alpha_bar(torch.tensor(float(t), dtype=torch.float64)))
        n = self.timesteps
        u = t.double().clamp(0.0, 1.0) * n
        lo = u.floor().long().clamp(max=n - 1)
        w = u - lo
        knots, log_knots = self._table.to(t.device)
        between = torch.exp(torch.lerp(log_knots[lo], log_knots[lo + 1], w))
        on_grid = u == u.round()
        out = torch.where(on_grid, knots[u.round().long()], between)
        return out.to(t.dtype) if t.is_floating_point() else out

    @overload
    def log_snr(self, t: float) -> float: ...
    @overload
    def log_snr(self, t: Tensor) -> Tensor: ...
    def log_snr(self, t: float | Tensor) -> float | Tensor:
        """log(ᾱ/(1 − ᾱ)) of this discretised schedule at ``t`` (the closed form: :func:`laplace_log_snr`)."""
        if not isinstance(t, Tensor):
            value = self.alpha_bar(float(t))
            return math.inf if value >= 1.0 else math.log(value) - math.log1p(-value)
        ab = self.alpha_bar(t.double())
        out = torch.log(ab) - torch.log1p(-ab)
        return out.to(t.dtype) if t.is_floating_point() else out

    def process(self, rescale_timesteps: bool = False) -> GaussianProcess:
        """The discrete chain over these betas."""
        return GaussianProcess(self._betas, rescale_timesteps=rescale_timesteps)

    def __repr__(self) -> str:
        params = f"mu={self.mu:g}, b={self.b:g}, max_beta={self.max_beta:g}"
        return f"LaplaceSchedule(timesteps={self.timesteps}, {params})"
