"""Noise schedules: the T betas of a discrete chain, and ᾱ(t) for continuous t in [0, 1].

Each factory returns a :class:`NoiseSchedule`; ``zero_terminal_snr=True`` rescales any of
them so that the last step carries no signal (Lin et al. 2023). ᾱ(t) follows the
convention of :class:`ddkit.protocols.Schedule`: ᾱ(0) = 1 and ᾱ((i + 1) / T) is training
step i's ᾱ, exactly; between grid points a monotone cubic interpolates.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any, overload

import numpy as np
import torch
from torch import Tensor

from ddkit.diffusion.interpolation import MonotoneCubic
from ddkit.diffusion.process import GaussianProcess, validate_betas
from ddkit.errors import ConfigError

__all__ = [
    "NoiseSchedule",
    "betas_for_alpha_bar",
    "cosine",
    "explicit",
    "linear",
    "rescale_zero_terminal_snr",
    "scaled_linear",
    "sigmoid",
]


class NoiseSchedule:
    """T betas (float64) and the continuous ᾱ(t) and log-SNR λ(t) they define.

    Implements :class:`ddkit.protocols.Schedule`. ``name`` and ``params`` record how it was made.

    .. versionadded:: 0.1.0
    """

    __slots__ = ("_alpha_bar_fn", "_betas", "name", "params")

    def __init__(
        self, betas: Sequence[float] | np.ndarray | Tensor, *, name: str = "explicit", **params: Any
    ):
        b = validate_betas(betas)
        b.flags.writeable = False
        self._betas = b
        self.name = name
        self.params = params
        knots = np.append(1.0, np.cumprod(1.0 - b))
        self._alpha_bar_fn = MonotoneCubic(knots)

    @property
    def timesteps(self) -> int:
        """The number T of training steps."""
        return int(self._betas.shape[0])

    @property
    def betas(self) -> np.ndarray:
        """The betas of the T training steps (float64, read-only)."""
        return self._betas

    @property
    def alphas_cumprod(self) -> np.ndarray:
        """ᾱ of the T training steps (float64)."""
        return self._alpha_bar_fn.values[1:]

    @overload
    def alpha_bar(self, t: float) -> float: ...
    @overload
    def alpha_bar(self, t: Tensor) -> Tensor: ...
    def alpha_bar(self, t: float | Tensor) -> float | Tensor:
        """ᾱ at continuous time ``t`` in [0, 1] (clamped): 1 at t = 0, step i's ᾱ at (i + 1) / T.

        A tensor comes back in ``t``'s floating dtype (float64 for integer ``t``), a float as a float.
        """
        if not isinstance(t, Tensor):
            return float(self._alpha_bar_fn(torch.tensor(float(t), dtype=torch.float64)))
        out = self._alpha_bar_fn(t)
        return out.to(t.dtype) if t.is_floating_point() else out

    @overload
    def log_snr(self, t: float) -> float: ...
    @overload
    def log_snr(self, t: Tensor) -> Tensor: ...
    def log_snr(self, t: float | Tensor) -> float | Tensor:
        """λ(t) = log(ᾱ / (1 − ᾱ)): +inf at t = 0, −inf at t = 1 for a zero-terminal-SNR schedule."""
        if not isinstance(t, Tensor):
            return float(self.log_snr(torch.tensor(float(t), dtype=torch.float64)))
        ab = self._alpha_bar_fn(t)
        out = torch.log(ab) - torch.log1p(-ab)
        return out.to(t.dtype) if t.is_floating_point() else out

    def process(self, rescale_timesteps: bool = False) -> GaussianProcess:
        """The discrete chain over these betas."""
        return GaussianProcess(self._betas, rescale_timesteps=rescale_timesteps)

    def __repr__(self) -> str:
        extra = "".join(f", {k}={v!r}" for k, v in self.params.items() if k != "timesteps")
        return f"NoiseSchedule({self.name!r}, timesteps={self.timesteps}{extra})"


# -- building blocks --------------------------------------------------------------------


#: The most training steps a schedule may have: far above the 1000–4000 diffusion models use, and
#: low enough that building one (and its float64 tables) takes well under a second.
MAX_TIMESTEPS = 100_000


def _check_timesteps(timesteps: object, minimum: int = 1) -> int:
    if isinstance(timesteps, bool) or not isinstance(timesteps, int | np.integer) or timesteps < minimum:
        raise ConfigError(f"'timesteps' must be an int >= {minimum} (got {timesteps!r})")
    if timesteps > MAX_TIMESTEPS:
        raise ConfigError(
            f"'timesteps' must be at most {MAX_TIMESTEPS} (got {timesteps!r}); diffusion models use "
            "1000 to 4000 training steps, and samplers take fewer with 'steps'"
        )
    return int(timesteps)


def _check_finite(**values: object) -> None:
    """Refuse a NaN, an infinity or a non-number among a schedule's float parameters (by name)."""
    for key, value in values.items():
        if isinstance(value, bool) or not isinstance(value, int | float | np.integer | np.floating):
            raise ConfigError(f"'{key}' must be a number (got {value!r})")
        if not math.isfinite(float(value)):
            raise ConfigError(f"'{key}' must be a finite number (got {value!r})")


def betas_for_alpha_bar(
    timesteps: int, alpha_bar: Callable[[float], float], max_beta: float = 0.999
) -> np.ndarray:
    """Betas discretising a continuous ᾱ(t) on [0, 1]: β_i = min(1 − ᾱ((i+1)/T) / ᾱ(i/T), max_beta)."""
    betas = [
        min(1 - alpha_bar((i + 1) / timesteps) / alpha_bar(i / timesteps), max_beta) for i in range(timesteps)
    ]
    return np.array(betas, dtype=np.float64)


def rescale_zero_terminal_snr(betas: np.ndarray) -> np.ndarray:
    """Shift and scale sqrt(ᾱ) so the last step has ᾱ = 0 and the first is unchanged (Lin et al. 2023)."""
    b = validate_betas(betas)
    if b.size < 2:
        raise ConfigError("zero_terminal_snr needs at least 2 timesteps (it pins the first and last ᾱ)")
    a = np.sqrt(np.cumprod(1.0 - b))
    first, last = a[0], a[-1]
    a = (a - last) * (first / (first - last))
    ab = a * a
    alphas = np.append(ab[0], ab[1:] / ab[:-1])
    return 1.0 - alphas


def _finish(betas: np.ndarray, name: str, zero_terminal_snr: bool, **params: Any) -> NoiseSchedule:
    if not isinstance(zero_terminal_snr, bool):
        raise ConfigError(f"'zero_terminal_snr' must be a bool (got {zero_terminal_snr!r})")
    if zero_terminal_snr:
        betas = rescale_zero_terminal_snr(betas)
        params["zero_terminal_snr"] = True
    return NoiseSchedule(betas, name=name, **params)


def _check_range(name: str, betas: np.ndarray, hint: str) -> np.ndarray:
    if betas.min() <= 0 or betas.max() > 1:
        raise ConfigError(
            f"the {name} schedule gives betas in [{betas.min():.6g}, {betas.max():.6g}], "
            f"outside (0, 1]; {hint}"
        )
    return betas


# -- the schedules ----------------------------------------------------------------------


def linear(
    timesteps: int = 1000,
    *,
    beta_start: float = 0.0001,
    beta_end: float = 0.02,
    zero_terminal_snr: bool = False,
) -> NoiseSchedule:
    """Ho et al. 2020's linear betas, scaled by 1000 / T so any T matches T = 1000 (guided-diffusion)."""
    t = _check_timesteps(timesteps)
    _check_finite(beta_start=beta_start, beta_end=beta_end)
    scale = 1000 / t
    betas = np.linspace(scale * beta_start, scale * beta_end, t, dtype=np.float64)
    hint = (
        f"'beta_start' and 'beta_end' are scaled by 1000/T = {scale:g} (T = timesteps): use T >= "
        f"{max(1, math.ceil(1000 * max(beta_start, beta_end)))} or smaller beta_start and beta_end"
    )
    _check_range("linear", betas, hint)
    return _finish(betas, "linear", zero_terminal_snr, timesteps=t, beta_start=beta_start, beta_end=beta_end)


def cosine(
    timesteps: int = 1000, *, s: float = 0.008, max_beta: float = 0.999, zero_terminal_snr: bool = False
) -> NoiseSchedule:
    """Nichol & Dhariwal 2021: ᾱ(t) = cos²((t + s) / (1 + s) · π/2), betas capped at ``max_beta``."""
    t = _check_timesteps(timesteps)
    _check_finite(s=s, max_beta=max_beta)
    if not 0 < max_beta <= 1:
        raise ConfigError(f"'max_beta' must lie in (0, 1] (got {max_beta!r})")
    if not 0 <= s < 1:
        raise ConfigError(f"'s' must lie in [0, 1) (got {s!r}); Nichol & Dhariwal use s = 0.008")

    def alpha_bar(u: float) -> float:
        return math.cos((u + s) / (1 + s) * math.pi / 2) ** 2

    betas = _check_range(
        "cosine", betas_for_alpha_bar(t, alpha_bar, max_beta), "choose s > 0 and a small offset"
    )
    return _finish(betas, "cosine", zero_terminal_snr, timesteps=t, s=s, max_beta=max_beta)


def scaled_linear(
    timesteps: int = 1000,
    *,
    beta_start: float = 0.00085,
    beta_end: float = 0.012,
    zero_terminal_snr: bool = False,
) -> NoiseSchedule:
    """Latent diffusion's schedule (Rombach et al. 2022): betas linear in sqrt space, not rescaled by T."""
    t = _check_timesteps(timesteps)
    _check_finite(beta_start=beta_start, beta_end=beta_end)
    if beta_start < 0 or beta_end < 0:
        raise ConfigError(f"'beta_start' and 'beta_end' must be >= 0 (got {beta_start!r}, {beta_end!r})")
    betas = np.linspace(math.sqrt(beta_start), math.sqrt(beta_end), t, dtype=np.float64) ** 2
    _check_range("scaled-linear", betas, "choose beta_start and beta_end in (0, 1]")
    return _finish(
        betas, "scaled-linear", zero_terminal_snr, timesteps=t, beta_start=beta_start, beta_end=beta_end
    )


def sigmoid(
    timesteps: int = 1000,
    *,
    start: float = -3.0,
    end: float = 3.0,
    tau: float = 1.0,
    clip_min: float = 1e-9,
    max_beta: float = 0.999,
    zero_terminal_snr: bool = False,
) -> NoiseSchedule:
    """Chen 2023 / Jabri et al. 2023's sigmoid schedule (ᾱ from a shifted, scaled logistic).

    ᾱ(t) = (σ(end/τ) − σ((start + t·(end − start))/τ)) / (σ(end/τ) − σ(start/τ)), clipped below
    at ``clip_min``; the betas are capped at ``max_beta``.
    """
    t = _check_timesteps(timesteps)
    _check_finite(start=start, end=end, tau=tau, clip_min=clip_min, max_beta=max_beta)
    if not 0 < max_beta <= 1:
        raise ConfigError(f"'max_beta' must lie in (0, 1] (got {max_beta!r})")
    if not end > start:
        raise ConfigError(f"'end' must exceed 'start' (got start={start!r}, end={end!r})")
    if not tau > 0:
        raise ConfigError(f"'tau' must be > 0 (got {tau!r})")
    if not 0 < clip_min < 1:
        raise ConfigError(f"'clip_min' must lie in (0, 1) (got {clip_min!r})")
    if max(abs(start), abs(end)) / tau > 700:
        raise ConfigError(
            f"'start' and 'end' divided by 'tau' must lie within ±700, where exp() overflows (got "
            f"start={start!r}, end={end!r}, tau={tau!r}); the defaults are -3, 3 and 1"
        )

    def sig(x: float) -> float:
        return 1.0 / (1.0 + math.exp(-x))

    v_start, v_end = sig(start / tau), sig(end / tau)

    def alpha_bar(u: float) -> float:
        value = (v_end - sig((u * (end - start) + start) / tau)) / (v_end - v_start)
        return min(max(value, clip_min), 1.0)

    betas = _check_range(
        "sigmoid", betas_for_alpha_bar(t, alpha_bar, max_beta), "check start, end, tau and clip_min"
    )
    params = {
        "timesteps": t,
        "start": start,
        "end": end,
        "tau": tau,
        "clip_min": clip_min,
        "max_beta": max_beta,
    }
    return _finish(betas, "sigmoid", zero_terminal_snr, **params)


def explicit(
    betas: Sequence[float] | np.ndarray | Tensor,
    *,
    timesteps: int | None = None,
    zero_terminal_snr: bool = False,
) -> NoiseSchedule:
    """A schedule given by its betas (each in (0, 1]); ``timesteps``, if given, must equal their number."""
    b = validate_betas(betas)
    if timesteps is not None and _check_timesteps(timesteps) != b.size:
        raise ConfigError(
            f"'timesteps' is {timesteps} but {b.size} betas were given; drop one or fix the other"
        )
    return _finish(b, "explicit", zero_terminal_snr, timesteps=int(b.size))
