"""A time grid fitted to the model: explicit spacing levels that a few extra evaluations choose.

In the spirit of Align Your Steps (Sabour et al. 2024, arXiv:2404.14507) and LD3 (Tong et al.
2024, arXiv:2405.15506): a deterministic sampler's output with a candidate grid is compared
with a fine teacher's output *from the same x_T* (paired, so the objective has little variance),
and the grid that makes them closest is kept. The grid is searched gradient-free in half
log-SNR λ between the sampler's default start and the clean end of the chain, starting from
the sampler's default grid, so the result is never worse than the default on the fitting batch.

.. versionadded:: 0.2.0
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import Tensor

from ddkit.errors import CompositionError, InputError, InputTypeError
from ddkit.sampling.base import SamplerBase, SamplingWarning, positive_int
from ddkit.sampling.spacing import distinct_steps, sigma_to_t, sigmas_of

if TYPE_CHECKING:
    from ddkit.pipeline import Pipeline

__all__ = ["fit_spacing"]

#: Parameters that :func:`fit_spacing` sets itself (the grid), so ``options`` may not.
_GRID_PARAMS = ("steps", "spacing", "lambda_min")


def _half_log_snr(alpha_bar: float) -> float:
    """λ = ½·log(ᾱ/(1 − ᾱ)), ±inf at the ends."""
    if alpha_bar <= 0.0:
        return -math.inf
    if alpha_bar >= 1.0:
        return math.inf
    return 0.5 * math.log(alpha_bar / (1.0 - alpha_bar))


def _sampler_choice(
    pipe: Pipeline, sampler: str | None, options: Mapping[str, Any] | None
) -> tuple[str, dict[str, Any]]:
    """The sampler's name and its non-grid parameters: given, or the pipeline's own."""
    if options is not None and not isinstance(options, Mapping):
        raise InputTypeError(f"'options' must be a mapping of sampler parameters (got {options!r})")
    if sampler is None:
        table = dict(pipe.config.get("sampler") or {})
        name = table.pop("name", None) or getattr(pipe.sampler, "name", None)
        params = {k: v for k, v in table.items() if k not in _GRID_PARAMS}
        params.update(options or {})
    elif isinstance(sampler, str):
        name, params = sampler, dict(options or {})
    else:
        raise InputTypeError(f"'sampler' must be a registered sampler name or None (got {sampler!r})")
    if not isinstance(name, str):
        raise InputError("the pipeline's sampler has no registered name; pass sampler='<name>'")
    clash = sorted(set(params) & set(_GRID_PARAMS))
    if clash:
        raise InputError(
            f"'options' must not set {', '.join(clash)}: fit_spacing chooses the grid itself "
            "(pass steps as its second argument)"
        )
    return name, params


def fit_spacing(
    pipe: Pipeline,
    steps: int,
    *,
    sampler: str | None = None,
    options: Mapping[str, Any] | None = None,
    samples: int = 256,
    teacher: SamplerBase | None = None,
    teacher_steps: int = 200,
    budget: int | None = None,
    seed: int = 0,
) -> list[int] | list[float]:
    """Levels for ``pipe.with_sampler(sampler, spacing=levels)`` fitted to ``pipe``'s model.

    From ``samples`` seeded x_T (``seed``), the deterministic ``sampler`` (a registered name with
    ``options``; None: the pipeline's own sampler and parameters) runs with a candidate grid of
    ``steps`` levels; the objective is the mean squared distance of its outputs to ``teacher``'s
    from the same x_T (default: ``dpm-solver++`` order 3 over ``teacher_steps`` log-SNR steps
    from the sampler's start). The grid's top level (where sampling starts) is the sampler's
    default one; the others move as half log-SNR positions between it and the chain's clean end,
    by a coordinate search from the sampler's default grid, kept only where they lower the
    objective; it stops after ``budget`` new grids, or once its moves shrink below 0.1% of a gap.

    Cost: ``teacher_steps`` evaluations plus about ``budget × steps`` (``budget`` defaults to
    ``10 × steps`` candidate grids, so about 10 × steps² model evaluations) of a batch of
    ``samples``, once; sampling with the result costs what the default grid costs.

    Returns the levels in the order visited (noise to data): distinct int training timesteps
    on a discrete chain, path times (σ on ``edm``) on a continuous path. Save them with the
    pipeline (``pipe.with_sampler(name, spacing=levels).save(...)``). Stochastic samplers are
    refused: their output from one x_T is random, so a paired objective does not apply.

    .. versionadded:: 0.2.0
    """
    import ddkit

    if not (hasattr(pipe, "with_sampler") and hasattr(pipe, "noise") and hasattr(pipe, "process")):
        raise InputTypeError(f"'pipe' must be a ddkit.Pipeline (got {type(pipe).__name__})")
    positive_int("steps", steps)
    if steps < 2:
        raise InputError(f"'steps' must be at least 2: the top level is the sampler's start (got {steps})")
    positive_int("samples", samples)
    positive_int("teacher_steps", teacher_steps)
    budget = 10 * steps if budget is None else positive_int("budget", budget)
    assert budget is not None
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise InputTypeError(f"'seed' must be an int (got {seed!r})")
    name, params = _sampler_choice(pipe, sampler, options)
    student = ddkit.create("sampler", name, steps=steps, **params)
    if getattr(student, "stochastic", False):
        raise CompositionError(
            f"sampler {name!r} with {params or 'its defaults'} draws noise while sampling, so its output "
            "from one x_T is random and a fitted grid has nothing fixed to match; fit a deterministic "
            "sampler (ddim with eta=0, dpm-solver++ with sde=False, ipndm, deis, euler, heun) instead"
        )
    if teacher is not None and (
        not isinstance(teacher, SamplerBase) or getattr(teacher, "stochastic", False)
    ):
        raise InputTypeError(
            f"'teacher' must be a deterministic ddkit sampler object or None (got {teacher!r})"
        )

    if teacher is None and "dpm-solver++" not in ddkit.names("sampler"):
        raise CompositionError(
            "the default teacher is the 'dpm-solver++' sampler, which is not installed; install "
            "ddkit-samplers or pass teacher=<a deterministic sampler object with many steps>"
        )

    process = pipe.process
    denoiser = pipe.denoiser()
    plan = student._checked_plan(denoiser)  # the default grid (and the checks sampling makes)
    if plan.steps != steps:
        raise CompositionError(
            f"sampler {name!r} lays {plan.steps} levels for steps={steps}; fit_spacing needs one level "
            "per step (a sampler whose steps are its grid, such as ddim, dpm-solver++, ipndm, deis, euler)"
        )
    lams = np.array([_half_log_snr(a) for a in plan.alpha_bars[:steps]])
    ac = np.asarray(process.alphas_cumprod, dtype=np.float64)
    sig = sigmas_of(ac)
    lam_end = float(-np.log(sig[0]))  # the clean end of the chain (step 0)
    lam_floor = float(-np.log(sig[-1]))  # the noisiest finite level (a start at ᾱ = 0 has λ = −inf)
    path = process.path
    if path is None:
        top = round(plan.timesteps[0])

        def levels_of(lam: np.ndarray) -> list[int] | list[float]:
            inner = sigma_to_t(np.exp(-lam[1:]), ac)
            return [top, *reversed(distinct_steps(inner, top))]
    else:
        top_time = float(process.time_of_index(plan.timesteps[0]))

        def levels_of(lam: np.ndarray) -> list[int] | list[float]:
            times = np.asarray(path.time_of_lambda(lam[1:]), dtype=np.float64)
            inner = sorted({round(float(t), 9) for t in times if 0.0 < t < top_time}, reverse=True)
            return [top_time, *inner]

    # The fitting batch and its teacher, from the sampler's start.
    device = pipe.device
    x_T = pipe.noise(samples, generator=torch.Generator(device=device).manual_seed(seed))
    if teacher is None:
        start = _half_log_snr(plan.alpha_bars[0])
        teacher = ddkit.create(
            "sampler",
            "dpm-solver++",
            steps=teacher_steps,
            order=3,
            spacing="logsnr",
            lambda_min=None
            if not math.isfinite(start) or plan.alpha_bars[0] <= float(ac[-1])
            else start - 1e-9,
        )
    model = pipe.sampling_model
    run = _runner(model, denoiser, x_T)
    target = run(teacher)

    cache: dict[tuple[float, ...], float] = {}

    def objective(lam: np.ndarray) -> tuple[float, list[int] | list[float]]:
        levels = levels_of(lam)
        key = tuple(float(v) for v in levels)
        if key not in cache:
            if len(levels) != steps:
                cache[key] = math.inf
            else:
                out = run(ddkit.create("sampler", name, spacing=list(levels), **params))
                err = (out - target).double().flatten(1).square().mean(1).mean()
                cache[key] = float(err) if torch.isfinite(err) else math.inf
        return cache[key], levels

    best_lam = lams.copy()
    best, best_levels = objective(best_lam)
    delta = 0.5
    evaluations = 1
    while evaluations < budget and delta > 1e-3:
        improved = False
        for k in range(1, steps):
            for direction in (1.0, -1.0):
                if evaluations >= budget:
                    break
                lower = max(best_lam[k - 1], min(lam_floor, best_lam[k] - 1.0))
                upper = best_lam[k + 1] if k + 1 < steps else lam_end
                room = (upper - best_lam[k]) if direction > 0 else (best_lam[k] - lower)
                if not math.isfinite(room) or room <= 0.0:
                    continue
                trial = best_lam.copy()
                trial[k] = best_lam[k] + direction * delta * room
                seen = tuple(float(v) for v in levels_of(trial)) in cache
                value, levels = objective(trial)
                evaluations += 0 if seen else 1
                if value < best:
                    best, best_lam, best_levels, improved = value, trial, levels, True
                    break
        if not improved:
            delta /= 2.0
    return best_levels


def _runner(model: torch.nn.Module, denoiser: Any, x_T: Tensor) -> Callable[[SamplerBase], Tensor]:
    """Run a sampler from ``x_T`` in eval mode without gradients (warnings about the start silenced)."""

    def run(sampler: SamplerBase) -> Tensor:
        training = model.training
        model.eval()
        try:
            with torch.no_grad(), warnings.catch_warnings():
                warnings.simplefilter("ignore", SamplingWarning)
                return sampler.sample(denoiser, x_T.clone())
        finally:
            model.train(training)

    return run
