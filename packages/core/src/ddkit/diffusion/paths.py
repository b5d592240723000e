"""Gaussian paths x_t = α(t)·x_0 + σ(t)·ε, continuous in time, as schedules (kind ``schedule``).

Every process ddkit samples is such a path. Samplers walk it in the variance-preserving
scaling x / sqrt(α² + σ²), whose noise level is ᾱ = α² / (α² + σ²) (equivalently the half
log-SNR λ = log(α/σ)): x̂_0 and ε̂ are the same in every scaling, so a sampler written once
runs on every path, and only the network sees the path's own x_t and time (the
:class:`~ddkit.Denoiser` scales x before the call). A discrete chain of T betas is the case
whose ᾱ is known on a grid; a :class:`PathSchedule` knows ᾱ at every t in closed form.

A path also has a grid of T training times (what ``uniform`` training draws and what the
discrete samplers respace), so that every sampler, resampler and loss of the discrete chain
applies to it unchanged. A third party writes a path by subclassing :class:`PathSchedule`
and implementing :meth:`~PathSchedule.alpha_sigma` (see docs/plugins.md).

.. versionadded:: 0.2.0
"""

from __future__ import annotations

import math
from typing import Any, TypeVar, overload

import numpy as np
import torch
from torch import Tensor

from ddkit.diffusion.process import GaussianProcess
from ddkit.diffusion.schedules import MAX_TIMESTEPS
from ddkit.errors import ConfigError

__all__ = [
    "EDM",
    "PathSchedule",
    "RectifiedFlow",
    "VPContinuous",
    "edm",
    "process_of",
    "rectified_flow",
    "vp_continuous",
]


def _positive(name: str, value: object, *, integer: bool = False) -> Any:
    ok_type = (int, np.integer) if integer else (int, float, np.integer, np.floating)
    if isinstance(value, bool) or not isinstance(value, ok_type) or not math.isfinite(float(value)):
        kind = "int" if integer else "finite number"
        raise ConfigError(f"'{name}' must be a positive {kind} (got {value!r})")
    if value <= 0:
        raise ConfigError(f"'{name}' must be > 0 (got {value!r})")
    return int(value) if integer else float(value)


def _timesteps(value: object) -> int:
    t: int = _positive("timesteps", value, integer=True)
    if t < 2 or t > MAX_TIMESTEPS:
        raise ConfigError(f"'timesteps' must lie in [2, {MAX_TIMESTEPS}] (got {value!r})")
    return t


class PathSchedule:
    """A Gaussian path on t ∈ [0, ``t_max``]: α(0) = 1, σ(0) = 0, and λ = log(α/σ) falling in t.

    Subclasses give :meth:`alpha_sigma`; the rest has defaults they may override with closed
    forms: :meth:`derivatives` (central differences), :meth:`time_of_lambda` (bisection),
    :meth:`grid` (T evenly spaced training times t_max·(i + 1)/T) and :meth:`model_time`
    (t·T, what the network is given). ``name`` and ``params`` record how it was made.

    Implements :class:`ddkit.protocols.Schedule` through its grid, so it is a schedule too.

    .. versionadded:: 0.2.0
    """

    #: Where sampling starts: the noisiest time of the path.
    t_max: float = 1.0

    def __init__(self, timesteps: int = 1000, *, name: str = "path", **params: Any) -> None:
        self._timesteps = _timesteps(timesteps)
        self.name = name
        self.params: dict[str, Any] = {"timesteps": self._timesteps, **params}
        self._betas: np.ndarray | None = None

    # -- what a path is ------------------------------------------------------------------

    def alpha_sigma(self, t: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """α(t) and σ(t), float64, elementwise."""
        raise NotImplementedError

    def derivatives(self, t: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """dα/dt and dσ/dt (the ``velocity`` parameterization's target is α'·x_0 + σ'·ε)."""
        t = np.asarray(t, dtype=np.float64)
        h = 1e-6 * max(self.t_max, 1.0)
        lo, hi = np.clip(t - h, 0.0, self.t_max), np.clip(t + h, 0.0, self.t_max)
        a_lo, s_lo = self.alpha_sigma(lo)
        a_hi, s_hi = self.alpha_sigma(hi)
        return (a_hi - a_lo) / (hi - lo), (s_hi - s_lo) / (hi - lo)

    def half_log_snr(self, t: np.ndarray) -> np.ndarray:
        """λ(t) = log(α/σ): +inf at t = 0, −inf where α = 0."""
        a, s = self.alpha_sigma(np.asarray(t, dtype=np.float64))
        with np.errstate(divide="ignore"):
            return np.asarray(np.log(a) - np.log(s), dtype=np.float64)

    def time_of_lambda(self, lam: np.ndarray) -> np.ndarray:
        """The t with λ(t) = ``lam`` (clamped to [0, t_max]); bisection unless overridden."""
        target = np.asarray(lam, dtype=np.float64)
        lo = np.zeros_like(target)
        hi = np.full_like(target, self.t_max)
        for _ in range(80):
            mid = 0.5 * (lo + hi)
            above = self.half_log_snr(mid) > target
            lo = np.where(above, mid, lo)
            hi = np.where(above, hi, mid)
        return np.where(np.isposinf(target), 0.0, np.where(np.isneginf(target), self.t_max, 0.5 * (lo + hi)))

    def grid(self) -> np.ndarray:
        """The T training times, ascending (training step i is at ``grid()[i]``)."""
        return self.t_max * np.arange(1, self._timesteps + 1, dtype=np.float64) / self._timesteps

    def model_time(self, t: Tensor) -> Tensor:
        """What the network is given at path time ``t`` (t·T by default, as SD3/Flux networks take)."""
        return t * float(self._timesteps)

    # -- the Schedule protocol, through the grid ----------------------------------------

    @property
    def timesteps(self) -> int:
        """The number T of training times on the grid."""
        return self._timesteps

    @property
    def alphas_cumprod(self) -> np.ndarray:
        """ᾱ = α²/(α² + σ²) at the grid's training times."""
        a, s = self.alpha_sigma(self.grid())
        return np.asarray(a * a / (a * a + s * s), dtype=np.float64)

    @property
    def betas(self) -> np.ndarray:
        """The betas of the discrete chain through the grid's ᾱ (1 where ᾱ reaches 0)."""
        if self._betas is None:
            ac = self.alphas_cumprod
            prev = np.append(1.0, ac[:-1])
            betas = 1.0 - ac / prev
            bad = ~((betas > 0) & (betas <= 1))
            if bad.any():
                i = int(np.argmax(bad))
                given = ", ".join(f"{k}={v!r}" for k, v in self.params.items())
                raise ConfigError(
                    f"path {self.name!r} ({given}) is not monotone on its grid of {self._timesteps} times: "
                    f"ᾱ = {ac[i]:.3g} at step {i} does not fall below the step before it ({prev[i]:.3g}), so "
                    "those steps carry no noise of their own (the parameters are too extreme for float64); "
                    "bring them closer to the defaults or use fewer timesteps"
                )
            betas.flags.writeable = False
            self._betas = betas
        return self._betas

    @overload
    def alpha_bar(self, t: float) -> float: ...
    @overload
    def alpha_bar(self, t: Tensor) -> Tensor: ...
    def alpha_bar(self, t: float | Tensor) -> float | Tensor:
        """ᾱ at the protocol's fraction ``t`` ∈ [0, 1] of the grid: ᾱ((i + 1)/T) is training step i's."""
        grid = np.append(0.0, self.grid())
        if isinstance(t, Tensor):
            u = t.double() * self._timesteps - 1.0
            times = np.interp(u.cpu().numpy() + 1.0, np.arange(grid.size), grid)
            a, s = self.alpha_sigma(times)
            out = torch.from_numpy(a * a / (a * a + s * s)).to(t.device)
            return out.to(t.dtype) if t.is_floating_point() else out
        time = np.interp(float(t) * self._timesteps, np.arange(grid.size), grid)
        a, s = self.alpha_sigma(np.array([time]))
        return float(a[0] ** 2 / (a[0] ** 2 + s[0] ** 2))

    def process(self, rescale_timesteps: bool = False) -> GaussianProcess:
        """The chain that walks this path (its grid for discrete samplers, the closed form between)."""
        if rescale_timesteps:
            raise ConfigError(
                f"'rescale_timesteps' applies to discrete chains; path {self.name!r} feeds its own model time"
            )
        return GaussianProcess(self.betas, path=self)

    def __repr__(self) -> str:
        extra = ", ".join(f"{k}={v!r}" for k, v in self.params.items())
        return f"{type(self).__name__}({extra})"


class RectifiedFlow(PathSchedule):
    """α = 1 − t, σ = t (Liu et al. 2022; Lipman et al. 2022), SD3's time shift on the grid.

    ``shift`` maps t ↦ shift·t/(1 + (shift − 1)·t), the grid's times as SD3/Flux train
    (diffusers' FlowMatchEulerDiscreteScheduler); the network receives t·``timesteps``.
    """

    def __init__(self, timesteps: int = 1000, *, shift: float = 1.0) -> None:
        shift = _positive("shift", shift)
        super().__init__(timesteps, name="rectified-flow", shift=shift)
        self.shift = shift

    def alpha_sigma(self, t: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        t = np.asarray(t, dtype=np.float64)
        return 1.0 - t, t.copy()

    def derivatives(self, t: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        t = np.asarray(t, dtype=np.float64)
        return -np.ones_like(t), np.ones_like(t)

    def time_of_lambda(self, lam: np.ndarray) -> np.ndarray:
        # α/σ = e^λ  ⇒  t = 1 / (1 + e^λ) = sigmoid(−λ).
        lam = np.asarray(lam, dtype=np.float64)
        with np.errstate(over="ignore"):
            return np.asarray(1.0 / (1.0 + np.exp(lam)), dtype=np.float64)

    def shifted(self, t: np.ndarray) -> np.ndarray:
        """SD3's time shift of ``t``."""
        t = np.asarray(t, dtype=np.float64)
        return np.asarray(self.shift * t / (1.0 + (self.shift - 1.0) * t), dtype=np.float64)

    def grid(self) -> np.ndarray:
        return self.shifted(super().grid())


class EDM(PathSchedule):
    """α = 1, σ = t ∈ [``sigma_min``, ``sigma_max``] (Karras et al. 2022): time *is* σ.

    The grid is EDM's ρ = 7 discretisation of [σ_min, σ_max]; the network is given σ (the
    ``edm`` parameterization turns it into c_noise = ln(σ)/4).
    """

    def __init__(
        self, timesteps: int = 1000, *, sigma_min: float = 0.002, sigma_max: float = 80.0, rho: float = 7.0
    ) -> None:
        sigma_min, sigma_max, rho = (
            _positive("sigma_min", sigma_min),
            _positive("sigma_max", sigma_max),
            _positive("rho", rho),
        )
        if not sigma_min < sigma_max:
            raise ConfigError(f"'sigma_min' ({sigma_min}) must be below 'sigma_max' ({sigma_max})")
        super().__init__(timesteps, name="edm", sigma_min=sigma_min, sigma_max=sigma_max, rho=rho)
        self.sigma_min, self.sigma_max, self.rho = sigma_min, sigma_max, rho
        self.t_max = sigma_max

    def alpha_sigma(self, t: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        t = np.asarray(t, dtype=np.float64)
        return np.ones_like(t), t.copy()

    def derivatives(self, t: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        t = np.asarray(t, dtype=np.float64)
        return np.zeros_like(t), np.ones_like(t)

    def time_of_lambda(self, lam: np.ndarray) -> np.ndarray:
        with np.errstate(over="ignore"):
            return np.asarray(np.exp(-np.asarray(lam, dtype=np.float64)), dtype=np.float64)

    def grid(self) -> np.ndarray:
        ramp = np.linspace(0.0, 1.0, self._timesteps)
        lo, hi = self.sigma_min ** (1.0 / self.rho), self.sigma_max ** (1.0 / self.rho)
        g = (lo + ramp * (hi - lo)) ** self.rho
        g[0], g[-1] = self.sigma_min, self.sigma_max
        return np.asarray(g, dtype=np.float64)

    def model_time(self, t: Tensor) -> Tensor:
        return t


class VPContinuous(PathSchedule):
    """Song et al. 2021's continuous VP SDE: ᾱ(t) = exp(−½t²(β_max − β_min) − t·β_min), α² + σ² = 1.

    The network is given t·(T − 1), as score_sde feeds DDPM-trained networks (t = 1 ↦ 999).
    """

    def __init__(self, timesteps: int = 1000, *, beta_min: float = 0.1, beta_max: float = 20.0) -> None:
        beta_min, beta_max = _positive("beta_min", beta_min), _positive("beta_max", beta_max)
        if not beta_min < beta_max:
            raise ConfigError(f"'beta_min' ({beta_min}) must be below 'beta_max' ({beta_max})")
        super().__init__(timesteps, name="vp-continuous", beta_min=beta_min, beta_max=beta_max)
        self.beta_min, self.beta_max = beta_min, beta_max

    def _log_alpha(self, t: np.ndarray) -> np.ndarray:
        return np.asarray(-0.25 * t * t * (self.beta_max - self.beta_min) - 0.5 * t * self.beta_min)

    def alpha_sigma(self, t: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        t = np.asarray(t, dtype=np.float64)
        log_a = self._log_alpha(t)
        return np.exp(log_a), np.sqrt(-np.expm1(2.0 * log_a))

    def derivatives(self, t: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        t = np.asarray(t, dtype=np.float64)
        a, s = self.alpha_sigma(t)
        d_log_a = -0.5 * t * (self.beta_max - self.beta_min) - 0.5 * self.beta_min
        da = a * d_log_a
        with np.errstate(divide="ignore", invalid="ignore"):
            ds = np.where(s > 0, -a * da / np.where(s > 0, s, 1.0), np.inf)
        return da, ds

    def time_of_lambda(self, lam: np.ndarray) -> np.ndarray:
        # log ᾱ = −log(1 + e^{−2λ}) = 2·log α(t): solve the quadratic in t.
        lam = np.asarray(lam, dtype=np.float64)
        log_ab = -np.logaddexp(0.0, -2.0 * lam)
        a, b, c = 0.5 * (self.beta_max - self.beta_min), self.beta_min, log_ab
        with np.errstate(invalid="ignore"):
            t = (-b + np.sqrt(b * b - 4.0 * a * c)) / (2.0 * a)
        return np.asarray(np.clip(np.nan_to_num(t, nan=self.t_max, posinf=self.t_max), 0.0, self.t_max))

    def model_time(self, t: Tensor) -> Tensor:
        return t * float(self._timesteps - 1)


def process_of(schedule: object) -> GaussianProcess:
    """The chain a schedule defines: through its path when it has one (``alpha_sigma``), else its betas."""
    if callable(getattr(schedule, "alpha_sigma", None)):
        return GaussianProcess(schedule.betas, path=schedule)  # type: ignore[attr-defined, arg-type]
    return GaussianProcess(schedule.betas)  # type: ignore[attr-defined]


# -- registered factories (kind "schedule") -------------------------------------------------


_P = TypeVar("_P", bound=PathSchedule)


def _checked(path: _P) -> _P:
    """``path`` once its grid is known to be monotone: a bad parameter is refused at creation."""
    path.betas  # noqa: B018 (computing them is the check)
    return path


def rectified_flow(timesteps: int = 1000, *, shift: float = 1.0) -> RectifiedFlow:
    """Rectified flow / flow matching: α = 1 − t, σ = t, SD3's ``shift`` on the training times."""
    return _checked(RectifiedFlow(timesteps, shift=shift))


def edm(timesteps: int = 1000, *, sigma_min: float = 0.002, sigma_max: float = 80.0, rho: float = 7.0) -> EDM:
    """EDM's variance-exploding path: α = 1, σ ∈ [sigma_min, sigma_max] (Karras et al. 2022)."""
    return _checked(EDM(timesteps, sigma_min=sigma_min, sigma_max=sigma_max, rho=rho))


def vp_continuous(timesteps: int = 1000, *, beta_min: float = 0.1, beta_max: float = 20.0) -> VPContinuous:
    """The continuous VP path of Song et al. 2021 (β(t) linear from beta_min to beta_max)."""
    return _checked(VPContinuous(timesteps, beta_min=beta_min, beta_max=beta_max))
