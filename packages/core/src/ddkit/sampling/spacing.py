"""Which timesteps a sampler visits: the spacings, as guided-diffusion and diffusers name them.

A *spacing* chooses ``steps`` of the T training steps (or, for continuous-time samplers,
noise levels σ between them). ``σ = sqrt((1 − ᾱ) / ᾱ)`` is the noise level in the
variance-exploding scaling x/sqrt(ᾱ) (Karras et al. 2022); ᾱ = 1 / (1 + σ²).

Names:

``"ddim"``      guided-diffusion's ``"ddimN"``: every k-th step from step 0, for the integer
                stride k giving exactly N steps (the DDIM paper's striding).
``"sections"``  guided-diffusion's section string ``"N"``: N steps evenly spread, rounded.
``"linspace"``, ``"leading"``, ``"trailing"``  diffusers' ``timestep_spacing`` options
                (Lin et al. 2023, Table 2), with diffusers' exact formulas.
``"karras"``    Karras et al. (2022) σ_i = (σ_max^(1/ρ) + i/(N−1)·(σ_min^(1/ρ) − σ_max^(1/ρ)))^ρ, ρ = 7.
``"logsnr"``    uniform in log-SNR (equivalently in log σ) between the chain's two ends.

A guided-diffusion respacing string (``"ddim50"``, ``"250"``, ``"10,15,20"``) and an explicit
list of training timesteps are accepted too. Discrete samplers (DDPM, DDIM, PLMS) get
integer steps (:func:`discrete_timesteps`); continuous ones (Euler, Heun, DPM-Solver++)
get σ's and the matching fractional training timesteps (:func:`continuous_schedule`).

.. versionadded:: 0.1.0
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from ddkit.diffusion.respace import space_timesteps

if TYPE_CHECKING:
    from ddkit.diffusion.process import GaussianProcess

__all__ = [
    "SPACINGS",
    "Spacing",
    "check_spacing",
    "continuous_schedule",
    "discrete_timesteps",
    "distinct_steps",
    "karras_sigmas",
    "last_timestep_above",
    "path_levels",
    "sigma_to_t",
    "sigmas_of",
    "t_to_sigma",
]

#: The named spacings (a respacing string or an explicit list of timesteps is also a spacing).
SPACINGS: tuple[str, ...] = ("ddim", "sections", "linspace", "leading", "trailing", "karras", "logsnr")

#: A spacing: a name from :data:`SPACINGS`, a guided-diffusion respacing string, or explicit levels
#: (training timesteps on a discrete chain; path times, t or σ on `edm`, on a continuous path).
Spacing = str | Sequence[int | float]

_SECTION_STRING = re.compile(r"^(ddim\d+|\d+(,\d+)*)$")
#: The ᾱ a continuous sampler uses for a step with ᾱ = 0 (zero terminal SNR, σ = ∞ there), as
#: diffusers does (or half the smallest positive ᾱ, when that is smaller).
MIN_ALPHA_BAR = 2.0**-24


def check_spacing(spacing: object, steps: int | None) -> None:
    """Raise ``ValueError``/``TypeError`` now for a spacing that can never work (called at construction)."""
    if spacing is None:
        return
    if isinstance(spacing, str):
        if spacing in SPACINGS:
            return
        if _SECTION_STRING.match(spacing.replace(" ", "")):
            if steps is not None:
                raise ValueError(
                    f"spacing {spacing!r} is a respacing string that fixes the step count itself; "
                    f"leave 'steps' unset (got steps={steps})"
                )
            return
        import difflib

        close = difflib.get_close_matches(spacing, SPACINGS, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise ValueError(
            f"'spacing' must be one of {', '.join(SPACINGS)}, a respacing string such as 'ddim50' or "
            f"'10,15,20', or a list of timesteps (got {spacing!r}){hint}"
        )
    if isinstance(spacing, Sequence) and not isinstance(spacing, bytes):
        values = list(spacing)
        if not values or not all(
            isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool) for v in values
        ):
            raise TypeError(
                "an explicit 'spacing' must be a non-empty list of levels: int training timesteps on a "
                f"discrete chain, path times (t, or σ on 'edm') on a continuous path (got {spacing!r})"
            )
        if not all(np.isfinite(float(v)) for v in values):
            raise ValueError(f"explicit levels must be finite (got {values})")
        if min(values) < 0:
            raise ValueError(f"explicit timesteps must be >= 0 (got {min(values)})")
        if len(set(values)) != len(values):
            raise ValueError(f"explicit timesteps must not repeat (got {values})")
        if steps is not None and steps != len(values):
            raise ValueError(
                f"'steps' ({steps}) differs from the number of explicit timesteps ({len(values)}); "
                "leave 'steps' unset"
            )
        return
    raise TypeError(f"'spacing' must be a str or a list of int timesteps (got {type(spacing).__name__})")


def sigmas_of(alphas_cumprod: np.ndarray) -> np.ndarray:
    """σ of each training step, sqrt((1 − ᾱ) / ᾱ); a step with ᾱ = 0 (zero terminal SNR) gets ᾱ = 2^-24."""
    ac = np.asarray(alphas_cumprod, dtype=np.float64)
    if (ac <= 0).any():
        positive = ac[ac > 0]
        floor = min(MIN_ALPHA_BAR, float(positive.min()) / 2) if positive.size else MIN_ALPHA_BAR
        ac = np.where(ac > 0, ac, floor)
    return np.sqrt((1.0 - ac) / ac)


def t_to_sigma(t: np.ndarray, alphas_cumprod: np.ndarray) -> np.ndarray:
    """σ at fractional training timesteps, interpolating σ linearly between steps (as diffusers does)."""
    sig = sigmas_of(alphas_cumprod)
    return np.asarray(np.interp(np.asarray(t, dtype=np.float64), np.arange(sig.shape[0]), sig))


def sigma_to_t(sigmas: np.ndarray, alphas_cumprod: np.ndarray) -> np.ndarray:
    """Fractional training timesteps of noise levels ``sigmas``, interpolating log σ (as diffusers does)."""
    log_sig = np.log(sigmas_of(alphas_cumprod))
    s = np.log(np.maximum(np.asarray(sigmas, dtype=np.float64), 1e-10))
    # log σ increases with t: find the segment [lo, lo + 1] holding each log σ, clipped to the table.
    lo = np.clip(np.searchsorted(log_sig, s, side="right") - 1, 0, log_sig.shape[0] - 2)
    w = np.clip((s - log_sig[lo]) / (log_sig[lo + 1] - log_sig[lo]), 0.0, 1.0)
    return np.asarray(lo + w, dtype=np.float64)


def last_timestep_above(alphas_cumprod: np.ndarray, lambda_min: float) -> int:
    """How many training steps have half log-SNR λ = ½·log(ᾱ/(1 − ᾱ)) ≥ ``lambda_min``.

    Used as ``last_timestep`` it starts a schedule at the last step that is not "pure noise"
    by that threshold (diffusers' ``lambda_min_clipped``; e.g. −5.1 for cosine schedules).
    """
    lam = -np.log(sigmas_of(alphas_cumprod))
    count = int(np.count_nonzero(lam >= lambda_min))
    if count < 1:
        raise ValueError(
            f"'lambda_min'={lambda_min} excludes every timestep (λ at t = 0 is {lam[0]:.3g}); lower it"
        )
    return count


def karras_sigmas(sigma_min: float, sigma_max: float, n: int, rho: float = 7.0) -> np.ndarray:
    """Karras et al. (2022) eq. 5: ``n`` noise levels from σ_max down to σ_min, denser near σ_min."""
    ramp = np.linspace(0.0, 1.0, n)
    lo, hi = sigma_min ** (1.0 / rho), sigma_max ** (1.0 / rho)
    return np.asarray((hi + ramp * (lo - hi)) ** rho, dtype=np.float64)


def _check_count(spacing: str, steps: int, num_timesteps: int) -> None:
    if steps > num_timesteps:
        raise ValueError(
            f"cannot take {steps} steps from a chain of {num_timesteps} with spacing {spacing!r}; "
            f"ask for at most {num_timesteps}"
        )


def _grid(spacing: str, steps: int, num_timesteps: int, last: int | None = None) -> np.ndarray:
    """diffusers' integer-valued grids, descending (``last``: the largest usable step + 1)."""
    top = num_timesteps if last is None else last
    if spacing == "linspace":
        return np.linspace(0, top - 1, steps).round()[::-1].copy()
    if spacing == "leading":
        return (np.arange(0, steps) * (top // steps)).round()[::-1].astype(np.float64)
    # trailing
    return np.arange(top, 0, -num_timesteps / steps).round() - 1


def _integer_levels(spacing: Sequence[int | float]) -> list[int]:
    """An explicit list of training timesteps (a discrete chain's levels), refusing fractional ones."""
    values = [float(v) for v in spacing]
    bad = [v for v in values if not v.is_integer()]
    if bad:
        raise ValueError(
            f"explicit levels on a discrete chain are training timesteps, ints (got {bad[0]!r}); fractional "
            "levels are path times and need a continuous path such as 'rectified-flow' or 'edm'"
        )
    return [int(v) for v in values]


def path_levels(spacing: Sequence[int | float]) -> np.ndarray:
    """Explicit path times, descending, without a trailing t = 0 (the end every sampler reaches)."""
    times = np.array(sorted((float(v) for v in spacing), reverse=True), dtype=np.float64)
    while times.size > 1 and times[-1] == 0.0:
        times = times[:-1]
    if times.size == 0 or times[-1] <= 0.0:
        raise ValueError(
            f"explicit path times must include at least one level above t = 0 (got {list(spacing)})"
        )
    if np.unique(times).size != times.size:
        raise ValueError(f"explicit path times must not repeat (got {list(spacing)})")
    return times


def discrete_timesteps(
    spacing: Spacing, steps: int | None, alphas_cumprod: np.ndarray, *, default: str = "sections"
) -> list[int]:
    """The sorted training steps a discrete sampler (DDPM, DDIM, PLMS) visits.

    ``steps=None`` keeps all T steps; ``spacing=None`` uses ``default``. ``"karras"`` and
    ``"logsnr"`` round their continuous timesteps to integers and move repeats to the nearest
    free steps, so they give ``steps`` distinct steps.
    """
    num_timesteps = int(np.asarray(alphas_cumprod).shape[0])
    if not isinstance(spacing, str):
        values = sorted(_integer_levels(spacing))
        if values[-1] >= num_timesteps:
            raise ValueError(f"explicit timesteps must be < T = {num_timesteps} (got {values[-1]})")
        return values
    if _SECTION_STRING.match(spacing.replace(" ", "")):
        return space_timesteps(num_timesteps, spacing.replace(" ", ""))
    if steps is None:
        return list(range(num_timesteps))
    _check_count(spacing, steps, num_timesteps)
    if spacing == "ddim":
        return space_timesteps(num_timesteps, f"ddim{steps}")
    if spacing == "sections":
        return space_timesteps(num_timesteps, str(steps))
    if spacing in ("linspace", "leading", "trailing"):
        return sorted({int(v) for v in _grid(spacing, steps, num_timesteps)})
    _, t = continuous_schedule(spacing, steps, alphas_cumprod)
    return distinct_steps(t, num_timesteps)


def distinct_steps(levels: np.ndarray, num_timesteps: int) -> list[int]:
    """Levels rounded to distinct training steps (ascending), each moved to the nearest free one in order.

    Dense grids (log-SNR or Karras near t = 0) round several levels onto one step; moving the
    repeats up (then, past the top, down) keeps the grid's shape and the number of steps asked for.
    """
    steps = sorted(int(v) for v in np.clip(np.round(levels), 0, num_timesteps - 1))
    for i in range(1, len(steps)):
        steps[i] = max(steps[i], steps[i - 1] + 1)
    steps[-1] = min(steps[-1], num_timesteps - 1)
    for i in range(len(steps) - 2, -1, -1):
        steps[i] = min(steps[i], steps[i + 1] - 1)
    return steps


def continuous_schedule(
    spacing: Spacing,
    steps: int,
    alphas_cumprod: np.ndarray,
    *,
    drop_last: bool = False,
    last_timestep: int | None = None,
    process: GaussianProcess | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Noise levels and training timesteps (both descending, ``steps`` each) a continuous sampler visits.

    The sampler appends its final level (σ = 0) itself. ``drop_last=True`` lays a grid of
    ``steps + 1`` points and drops the one at t = 0, for solvers whose last step lands
    directly on σ = 0 without evaluating there (diffusers' DPM-Solver grids);
    ``last_timestep`` caps the grid's top (diffusers' ``lambda_min_clipped``).

    With a ``process`` on a continuous path, σ and the fractional steps of every spacing come
    from the path's closed form, and an explicit list holds path times (t; σ on ``edm``).
    """
    if process is not None and process.path is not None:
        return _path_schedule(spacing, steps, process, drop_last=drop_last, last_timestep=last_timestep)
    ac = np.asarray(alphas_cumprod, dtype=np.float64)
    num_timesteps = int(ac.shape[0])
    top = num_timesteps if last_timestep is None else int(last_timestep)
    if not isinstance(spacing, str):
        t = np.array(sorted(_integer_levels(spacing), reverse=True), dtype=np.float64)
        if t[0] >= num_timesteps:
            raise ValueError(f"explicit timesteps must be < T = {num_timesteps} (got {int(t[0])})")
        return sigmas_of(ac)[t.astype(np.int64)], t
    if _SECTION_STRING.match(spacing.replace(" ", "")):
        t = np.array(space_timesteps(num_timesteps, spacing.replace(" ", ""))[::-1], dtype=np.float64)
        return sigmas_of(ac)[t.astype(np.int64)], t
    n = steps + 1 if drop_last else steps
    if spacing in ("linspace", "leading", "trailing"):
        _check_count(spacing, steps, top)
        if spacing == "trailing":
            t = _grid("trailing", steps, num_timesteps, top)
        elif drop_last:
            t = _grid(spacing, n, num_timesteps, top)[:-1]
        elif spacing == "linspace":
            t = np.linspace(0, top - 1, steps)[::-1].copy()  # fractional, as diffusers' Euler has it
        else:
            t = _grid(spacing, steps, num_timesteps, top)
        return t_to_sigma(t, ac), t
    if spacing in ("ddim", "sections"):
        _check_count(spacing, steps, top)
        kept = space_timesteps(top, f"ddim{steps}" if spacing == "ddim" else str(steps))
        t = np.array(kept[::-1], dtype=np.float64)
        return sigmas_of(ac)[t.astype(np.int64)], t
    sig_all = sigmas_of(ac)
    sigma_min, sigma_max = float(sig_all[0]), float(sig_all[top - 1])
    if spacing == "karras":
        sig = karras_sigmas(sigma_min, sigma_max, n)
    else:  # logsnr: uniform in log σ = −½ log-SNR
        sig = np.exp(np.linspace(np.log(sigma_max), np.log(sigma_min), n))
    if drop_last:
        sig = sig[:-1]
    return sig, sigma_to_t(sig, ac)


def _path_schedule(
    spacing: Spacing, steps: int, process: GaussianProcess, *, drop_last: bool, last_timestep: int | None
) -> tuple[np.ndarray, np.ndarray]:
    """:func:`continuous_schedule` on a path: exact σ at every step, explicit lists in path time."""
    if not isinstance(spacing, str):
        times = path_levels(spacing)
        steps_of = process.index_of_time(times)
        a, s = process.path.alpha_sigma(times)  # type: ignore[union-attr]
        with np.errstate(divide="ignore"):
            return np.asarray(s / a, dtype=np.float64), np.asarray(steps_of, dtype=np.float64)
    sig, t = continuous_schedule(
        spacing, steps, process.alphas_cumprod, drop_last=drop_last, last_timestep=last_timestep
    )
    if spacing in ("karras", "logsnr"):
        return sig, process.index_of_sigma(sig)
    return process.sigma_of_index(t), t
