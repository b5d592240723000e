"""A base class that gives every sampler, ddkit's own and third parties', the same powers.

A subclass says which chain it walks and which noise levels it visits (:meth:`SamplerBase._plan`)
and writes its loop (:meth:`SamplerBase._run`), a generator yielding one
:class:`~ddkit.SamplerState` per step that continues from ``state.x`` after each yield. The
base class does the rest, identically for all: parameter validation, the x_0 options
(``clip_denoised``, ``dynamic_threshold``, ``denoised_fn``), generators, image-to-image
starts (``init`` + ``strength``), inpainting (``mask`` + ``known``), callbacks, the
progress bar, gradient-free stepping and NFE counting.

A stochastic sampler whose step k draws x_{k+1} = mean_k + std_k·z may instead describe that
step by :meth:`SamplerBase.transition` and leave ``_run`` to the base class: the same method
then serves its loop, ``return_log_prob`` and the reinforcement-learning API
(:meth:`ddkit.Pipeline.rollout`, :meth:`ddkit.Pipeline.transition_log_prob`), so the density
of a stored step can never drift from the step that was taken.

Inpainting follows latent-diffusion: ``mask`` is 1 where the pixel is *known* (kept from
``known``) and 0 where it is generated. Before the first step and after every step the known
region is replaced by ``known`` noised to the level of the new x:
``x ← mask·q_sample(known, ᾱ_next) + (1 − mask)·x``; after the last step (ᾱ = 1) that is
``known`` itself, so the known region of the result equals ``known`` exactly.

.. versionadded:: 0.1.0
"""

from __future__ import annotations

import contextlib
import math
import warnings
import weakref
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, ClassVar, Literal, cast

import torch
from torch import Tensor

from ddkit.denoiser import Denoiser
from ddkit.denoiser import dynamic_threshold as dynamic_threshold_fn
from ddkit.diffusion.process import GaussianProcess
from ddkit.errors import CompositionError, DdkitError, InputError, InputTypeError, NonFiniteError
from ddkit.prediction import Prediction
from ddkit.protocols import Generator, SamplerState, model_spec
from ddkit.sampling.inputs import check_final, check_start, check_steps
from ddkit.sampling.noise import randn
from ddkit.sampling.spacing import (
    Spacing,
    check_spacing,
    continuous_schedule,
    discrete_timesteps,
    last_timestep_above,
    path_levels,
)

__all__ = [
    "AUTO_START_SIGNAL",
    "DEFAULT_LAMBDA_MIN",
    "FEW_STEPS",
    "Plan",
    "Run",
    "SamplerBase",
    "SamplingWarning",
    "Transition",
    "auto_lambda_min",
    "check_reduction",
    "gaussian_log_density",
    "gaussian_log_prob",
    "positive_int",
    "real",
]

_LOG_2PI = math.log(2.0 * math.pi)

#: The earliest start of ``lambda_min="auto"`` (the default): the last training step whose half
#: log-SNR λ = ½·log(ᾱ/(1 − ᾱ)) is at least this (diffusers' ``lambda_min_clipped`` for cosine
#: schedules). It keeps every step of DDPM's linear schedule (λ_T = −5.06) and drops the
#: near-pure-noise tail of cosine (λ_T = −9.9) and zero-terminal-SNR schedules (λ_T = −∞),
#: where an ε-model's x̂_0 = (x − sqrt(1 − ᾱ)·ε̂)/sqrt(ᾱ) is mostly the network's error.
DEFAULT_LAMBDA_MIN = -5.1
#: Runs of fewer steps than this take a sampler's ``few_steps_spacing`` by default: at 3–7 steps a
#: time-uniform grid beats the log-SNR and Karras grids that are best at 10–20 (bench/quality_vs_nfe.py).
FEW_STEPS = 8
#: The signal ``lambda_min="auto"`` may leave out of the start x_T ~ N(0, I): ᾱ·d at the start,
#: for d elements per sample of roughly unit variance (2·e⁻⁵: λ = −2.5 for 2-D data).
AUTO_START_SIGNAL = 2.0 * math.exp(-5.0)


def auto_lambda_min(numel: int | None) -> float:
    """Where ``lambda_min="auto"`` starts for samples of ``numel`` elements (None: unknown).

    The start x_T ~ N(0, I) leaves out the signal ᾱ·E‖x_0‖² ≈ ᾱ·d that the true x_T still
    holds. Low-dimensional data can start late, where ᾱ·d = :data:`AUTO_START_SIGNAL`, and spend
    every step where samples are decided (on 2-D data λ = −2.5 halves the error of the best
    solvers at 10–20 evaluations); images (d ≳ 200) start at :data:`DEFAULT_LAMBDA_MIN`.
    """
    if not numel:
        return DEFAULT_LAMBDA_MIN
    alpha_bar = min(AUTO_START_SIGNAL / numel, 0.5)
    return max(DEFAULT_LAMBDA_MIN, 0.5 * math.log(alpha_bar / (1.0 - alpha_bar)))


#: Below this start λ an ε-model's x̂_0 error is over e^6 ≈ 400 times its ε error.
_WARN_LAMBDA = -6.0


class SamplingWarning(UserWarning):
    """A sampler setting known to give poor samples (the message says which and the fix).

    .. versionadded:: 0.2.0
    """


def _lambda_of(alpha_bar: float) -> float:
    """Half log-SNR ½·log(ᾱ/(1 − ᾱ)) (−∞ at ᾱ = 0, +∞ at ᾱ = 1)."""
    if alpha_bar <= 0.0:
        return -math.inf
    if alpha_bar >= 1.0:
        return math.inf
    return 0.5 * (math.log(alpha_bar) - math.log1p(-alpha_bar))


def positive_int(name: str, value: object, *, allow_none: bool = False) -> int | None:
    """``value`` if it is a positive int (or None when allowed), else an ``InputTypeError``/``InputError``."""
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise InputTypeError(f"'{name}' must be a positive int (got {value!r})")
    if value < 1:
        raise InputError(f"'{name}' must be a positive int (got {value!r})")
    return value


def real(
    name: str,
    value: object,
    *,
    low: float | None = None,
    high: float | None = None,
    allow_inf: bool = False,
) -> float:
    """``value`` as a float if it is a finite real number within [low, high], else a ddkit error.

    NaN is always refused, infinity unless ``allow_inf`` (a bound such as ``s_tmax`` may be
    infinite; a noise scale may not), and so is a finite value beyond float32's range (samples
    are float32 tensors), so no sampler parameter can turn samples into NaN.
    """
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise InputTypeError(f"'{name}' must be a number (got {value!r})")
    v = float(value)
    if math.isnan(v) or (math.isinf(v) and not allow_inf):
        raise NonFiniteError(f"'{name}' must be a finite number (got {value!r})")
    if math.isfinite(v) and abs(v) > 3.4e38:
        raise InputError(f"'{name}' must lie within float32's range, ±3.4e38 (got {value!r})")
    if (low is not None and v < low) or (high is not None and v > high):
        lo = "-inf" if low is None else f"{low:g}"
        hi = "inf" if high is None else f"{high:g}"
        raise InputError(f"'{name}' must lie in [{lo}, {hi}] (got {value!r})")
    return v


def gaussian_log_prob(noise: Tensor, log_std: float | Tensor) -> Tensor:
    """Per-sample log N(x; mean, std²) summed over non-batch dims, for x = mean + std·noise.

    ``log_std`` is a float (one std for the whole step) or a tensor broadcastable to ``noise``.
    """
    flat = noise.reshape(noise.shape[0], -1).float()
    d = flat.shape[1]
    quad = flat.square().sum(dim=1)
    if isinstance(log_std, Tensor):
        log_det = log_std.float().expand_as(noise).reshape(noise.shape[0], -1).sum(dim=1)
    else:
        log_det = torch.full_like(quad, d * log_std)
    return -0.5 * quad - log_det - 0.5 * d * _LOG_2PI


#: How a per-element log-density becomes one value per sample.
REDUCTIONS: tuple[str, ...] = ("mean", "sum")


def check_reduction(reduction: object) -> str:
    """``reduction`` if it is ``"mean"`` or ``"sum"``, else an :class:`~ddkit.errors.InputError`."""
    if reduction not in REDUCTIONS:
        raise InputError(
            f"'reduction' must be 'mean' (over the non-batch dimensions, as DDPO and Flow-GRPO) or 'sum' "
            f"(got {reduction!r})"
        )
    return str(reduction)


def gaussian_log_density(
    x: Tensor,
    mean: Tensor,
    std: float | Tensor,
    *,
    reduction: str = "sum",
    weight: Tensor | None = None,
) -> Tensor:
    """Per-sample log N(x; mean, std²) in ``x``'s dtype, differentiable in ``mean`` and ``std``.

    ``reduction`` ``"sum"`` adds the elements' log-densities, ``"mean"`` averages them over the
    non-batch dimensions. ``weight`` (shaped like ``x``, 1 where an element counts, 0 where it
    does not: inpainting's known region) restricts both to the elements that count.

    .. versionadded:: 0.2.0
    """
    z = (x - mean) / std
    if weight is None and not isinstance(std, Tensor):
        # One std for the step: the constant terms are per-sample scalars (fewer passes, and
        # fewer autograd nodes where it is differentiated).
        quad = z.square().reshape(x.shape[0], -1)
        const = math.log(std) + 0.5 * _LOG_2PI
        if reduction == "mean":
            return quad.mean(dim=1).mul(-0.5).sub(const)
        return quad.sum(dim=1).mul(-0.5).sub(const * quad.shape[1])
    log_std = torch.log(std) if isinstance(std, Tensor) else math.log(std)
    lp = (-0.5 * z.square() - log_std).reshape(x.shape[0], -1) - 0.5 * _LOG_2PI
    if weight is None:
        return lp.mean(dim=1) if reduction == "mean" else lp.sum(dim=1)
    w = weight.to(lp.dtype).expand_as(x).reshape(x.shape[0], -1)
    total = (lp * w).sum(dim=1)
    return total / w.sum(dim=1).clamp(min=1.0) if reduction == "mean" else total


@dataclass(slots=True)
class Plan:
    """What one sampling call walks: the bound denoiser and the noise level before each step.

    ``alpha_bars[k]`` is ᾱ of x before step k (``alpha_bars[0]``: of x_T) and
    ``alpha_bars[-1]`` that of the result (1 for a sample of clean data); ``timesteps[k]``
    the training timestep step k is predicted from.
    """

    denoiser: Denoiser
    timesteps: list[float]
    alpha_bars: list[float]
    extra: Any = None

    @property
    def steps(self) -> int:
        """The number of steps."""
        return len(self.timesteps)


@dataclass(slots=True)
class Transition:
    """Step k of a sampler as a Gaussian: x_{k+1} ~ N(``mean``, ``std``²) (``std`` 0: deterministic).

    ``std`` is a float or a tensor broadcastable to ``mean`` (a learned variance);
    ``prediction`` the denoiser's output the step used; ``carry`` what the next step's
    :meth:`SamplerBase.transition` gets as ``history`` (a multistep sampler's earlier x̂_0's;
    None for one-step samplers).

    .. versionadded:: 0.2.0
    """

    mean: Tensor
    std: float | Tensor
    prediction: Prediction | None = None
    carry: Any = None

    @property
    def stochastic(self) -> bool:
        """Whether the step draws noise."""
        return isinstance(self.std, Tensor) or self.std > 0.0

    def log_prob(self, x_next: Tensor, *, reduction: str = "sum", weight: Tensor | None = None) -> Tensor:
        """Per-sample log-density of ``x_next`` under this step (see :func:`gaussian_log_density`)."""
        return gaussian_log_density(x_next, self.mean, self.std, reduction=reduction, weight=weight)


@dataclass(slots=True)
class Run:
    """Per-call options a sampler loop needs: where its noise comes from, what it reports.

    ``reduction`` and ``weight`` say how :meth:`draw` reduces a step's log-density (``weight``:
    1 on generated elements, 0 on inpainting's known ones); ``trace``, when a list, receives
    the ``history`` each step was drawn with (what :meth:`ddkit.Pipeline.rollout` stores).
    """

    generator: Generator
    log_prob: bool
    reduction: str = "sum"
    weight: Tensor | None = None
    trace: list[Any] | None = None
    #: No one sees the states between steps (:meth:`SamplerBase.sample` without a callback, a
    #: progress bar or inpainting): a loop may skip forming them and yield only the last.
    quiet: bool = False

    def noise(self, like: Tensor) -> Tensor:
        """Standard normal noise shaped like ``like`` (see :func:`ddkit.sampling.randn`)."""
        return randn(like.shape, self.generator, like.device, like.dtype)

    def draw_blend(self, pred: Any, x: Tensor, c_x: float, c_x0: float, std: float) -> Tensor:
        """std·z + c_x·x + c_x0·x̂_0 in one pass over fresh noise (no density: the fused loops' step).

        Where x̂_0 is still the linear form a·x + b·y (``pred.x0_terms()``) it is folded into the
        weights of x and y, so x̂_0 itself is never formed.
        """
        if std == 0.0:
            return cast(Tensor, pred.blend_x0(c_x, x, c_x0))
        terms = pred.x0_terms()
        if terms is not None and terms[1] is x:
            a, _, b, y = terms
            return self.noise(x).mul_(std).add_(x, alpha=c_x + c_x0 * a).add_(y, alpha=c_x0 * b)
        return self.noise(x).mul_(std).add_(x, alpha=c_x).add_(pred.x0, alpha=c_x0)

    def draw(self, step: Transition, history: Any = None) -> tuple[Tensor, Tensor | None]:
        """x_{k+1} = mean + std·z for a step, and its log-density when asked for (else None).

        ``history`` is what the step was computed from besides x (recorded for the trajectory).
        """
        if self.trace is not None:
            self.trace.append(history)
        if not step.stochastic:
            return step.mean, None
        noise = self.noise(step.mean)
        std = step.std
        x_new = torch.add(step.mean, noise, alpha=std) if isinstance(std, float) else step.mean + std * noise
        if not self.log_prob:
            return x_new, None
        return x_new, step.log_prob(x_new, reduction=self.reduction, weight=self.weight)


class SamplerBase:
    """Common parameters, validation and loop services of a sampler (see the module docstring).

    ``steps``: the number of steps (None: the sampler's default); ``spacing``: how they are
    chosen (see :mod:`ddkit.sampling.spacing`; None: the sampler's default);
    ``clip_denoised``: clamp x_0 to [-1, 1] (None: the parameterization's setting);
    ``dynamic_threshold``: Imagen's percentile thresholding of x_0 (e.g. 0.995);
    ``denoised_fn``: a function applied to x_0 before clipping; ``return_log_prob``:
    report each stochastic transition's per-sample log density in ``SamplerState.log_prob``
    (log N(x_{k+1}; mean, std²) summed over the non-batch dimensions, in the samples' dtype,
    over the generated elements only when inpainting);
    ``lambda_min``: start at the last training step whose half log-SNR is at least this
    (None: the whole chain, as guided-diffusion does; ``"auto"``, the default:
    :func:`auto_lambda_min` of the model's declared sample size, −5.1 where it declares none).
    ``lambda_min`` applies to the named spacings; a respacing string or an explicit list of
    timesteps is walked as given.

    A stochastic sampler writes its step k as a Gaussian transition in :meth:`transition`
    (one denoiser call; ``history`` for multistep samplers) and inherits ``_run``; a sampler
    with its own loop calls ``self.transition`` and ``run.draw`` per step so that
    ``return_log_prob``, :meth:`ddkit.Pipeline.rollout` and
    :meth:`ddkit.Pipeline.transition_log_prob` all see the step it takes.

    .. versionchanged:: 0.2.0
       ``lambda_min`` (default ``"auto"``) on every sampler;
       :meth:`transition` and the default ``_run`` built on it.

    .. versionadded:: 0.1.0
    """

    #: The registered name, used in messages.
    name: ClassVar[str] = "sampler"
    #: Guidance forms this sampler can apply, preferred first.
    guidance_forms: tuple[str, ...] = ("model", "score")
    #: Whether it draws noise while sampling.
    stochastic: bool = False
    #: ``steps`` when left unset (None: all T steps of the chain).
    default_steps: ClassVar[int | None] = None
    #: ``spacing`` when left unset.
    default_spacing: ClassVar[str] = "sections"
    #: ``spacing`` when left unset for a run of fewer than :data:`FEW_STEPS` steps (None: the default).
    few_steps_spacing: ClassVar[str | None] = None
    #: Whether it reads the denoiser at noise levels between training steps (an ODE/SDE solver).
    continuous: ClassVar[bool] = False
    #: Whether its update is written in ε (so it cannot start where ᾱ = 0, whatever the model predicts).
    epsilon_form: ClassVar[bool] = False

    def __init__(
        self,
        *,
        steps: int | None = None,
        spacing: Spacing | None = None,
        clip_denoised: bool | None = None,
        dynamic_threshold: float | None = None,
        denoised_fn: Callable[[Tensor], Tensor] | None = None,
        return_log_prob: bool = False,
        lambda_min: float | Literal["auto"] | None = "auto",
    ) -> None:
        self.steps = check_steps(steps)  # a positive int (at most MAX_STEPS) or None
        if isinstance(lambda_min, str) and lambda_min != "auto":
            raise InputError(f"'lambda_min' must be a float, 'auto' or None (got {lambda_min!r})")
        self.lambda_min = lambda_min if lambda_min in (None, "auto") else real("lambda_min", lambda_min)
        check_spacing(spacing, self.steps)
        self.spacing = spacing
        if clip_denoised is not None and not isinstance(clip_denoised, bool):
            raise TypeError(f"'clip_denoised' must be True, False or None (got {clip_denoised!r})")
        self.clip_denoised = clip_denoised
        self._threshold: Callable[[Tensor], Tensor] | None = None
        if dynamic_threshold is not None:
            real("dynamic_threshold", dynamic_threshold)
            self._threshold = dynamic_threshold_fn(float(dynamic_threshold))
        self.dynamic_threshold = dynamic_threshold
        if denoised_fn is not None and not callable(denoised_fn):
            raise TypeError(f"'denoised_fn' must be callable (got {denoised_fn!r})")
        self.denoised_fn = denoised_fn
        if not isinstance(return_log_prob, bool):
            raise TypeError(f"'return_log_prob' must be a bool (got {return_log_prob!r})")
        self.return_log_prob = return_log_prob
        #: Model evaluations of the last sampling call.
        self.last_nfe = 0
        #: Per training chain: respaced chains and named-spacing plans, reused by later calls.
        self._chains: weakref.WeakKeyDictionary[GaussianProcess, dict[tuple[Any, ...], Any]] = (
            weakref.WeakKeyDictionary()
        )

    # -- what a subclass provides ----------------------------------------------------------

    def _plan(self, denoiser: Denoiser) -> Plan:
        """The chain, timesteps and noise levels of one call (``denoiser``: the full training chain)."""
        raise NotImplementedError

    def _run(self, plan: Plan, x: Tensor, start: int, run: Run) -> Iterator[SamplerState]:
        """Steps ``start`` .. ``plan.steps - 1`` from ``x``; continue from ``state.x`` after each yield.

        The default walks :meth:`transition` step by step (a subclass gives one or the other),
        or runs :meth:`_fused` where the call asks for no densities and no trace.
        """
        if not self.has_transition:
            raise NotImplementedError(f"{type(self).__name__} must implement _run or transition")
        if run.trace is None and not run.log_prob:
            fused = self._fused(plan, x, start, run)
            if fused is not None:
                return fused
        return self._walk(plan, x, start, run)

    def _fused(self, plan: Plan, x: Tensor, start: int, run: Run) -> Iterator[SamplerState] | None:
        """The steps of :meth:`transition` with each draw fused into the step (no densities), or None.

        A stochastic sampler gives this loop (see :meth:`Run.draw_blend`) where its steps allow it;
        None: :meth:`_run` walks the transitions.
        """
        return None

    def transition(self, plan: Plan, k: int, x: Tensor, history: Any = None) -> Transition:
        """Step ``k`` of ``plan`` from ``x`` as the Gaussian x_{k+1} ~ N(mean, std²), one denoiser call.

        ``history`` is the previous step's ``Transition.carry`` (None at the first step walked):
        what a multistep sampler keeps from earlier steps, e.g. the last x̂_0. The sampler's
        loop and :meth:`ddkit.Pipeline.transition_log_prob` both call this, the latter with
        gradients on and a stored x and history, so it must use only these arguments and
        ``plan`` (no state on ``self`` that a loop sets). ``std`` 0 marks a deterministic step.

        .. versionadded:: 0.2.0
        """
        raise NotImplementedError(
            f"sampler {self.name!r} does not describe its steps as Gaussian transitions "
            "(SamplerBase.transition)"
        )

    @property
    def has_transition(self) -> bool:
        """Whether this sampler implements :meth:`transition` (what the RL API needs)."""
        return type(self).transition is not SamplerBase.transition

    def _walk(self, plan: Plan, x: Tensor, start: int, run: Run) -> Iterator[SamplerState]:
        """The loop of a sampler given by :meth:`transition`: draw each step, carry its history on."""
        d = plan.denoiser
        history: Any = None
        plain = run.trace is None  # then a deterministic step needs no draw
        for k in range(start, plan.steps):
            step = self.transition(plan, k, x, history)
            if plain and type(step.std) is float and step.std == 0.0:
                x_new, log_prob = step.mean, None
            else:
                x_new, log_prob = run.draw(step, history)
            x0: Tensor | Prediction = step.prediction if step.prediction is not None else step.mean
            state = SamplerState(
                step=k - start, t=plan.timesteps[k], x=x_new, x0=x0, nfe=d.nfe, log_prob=log_prob
            )
            yield state
            x = state.x
            history = step.carry

    # -- helpers for subclasses ------------------------------------------------------------

    def _resolved_steps(self) -> int | None:
        """``steps``, else the sampler's default (None: every step of the chain)."""
        return self.steps if self.steps is not None else self.default_steps

    def _resolved_spacing(self) -> Spacing:
        """``spacing``, else the sampler's default (for its step count)."""
        if self.spacing is not None:
            return self.spacing
        if self.few_steps_spacing is not None and (self._resolved_steps() or FEW_STEPS) < FEW_STEPS:
            return self.few_steps_spacing
        return self.default_spacing

    def start_lambda(self, denoiser: Denoiser | None = None) -> float | None:
        """``lambda_min`` resolved for ``denoiser``'s model ("auto" reads its declared sample size)."""
        if self.lambda_min != "auto":
            return self.lambda_min
        spec = None
        if denoiser is not None:  # a Denoiser has read its model's spec already
            spec = denoiser.spec if isinstance(denoiser, Denoiser) else model_spec(denoiser.model)
        shape = spec.sample_shape if spec is not None else None
        return auto_lambda_min(math.prod(shape) if shape else None)

    def _usable_steps(self, alphas_cumprod: Any, spacing: Spacing, denoiser: Denoiser | None = None) -> int:
        """How many training steps (from t = 0) a named spacing may use under ``lambda_min``."""
        total = len(alphas_cumprod)
        lam = self.start_lambda(denoiser)
        if lam is None or not isinstance(spacing, str) or spacing[:1].isdigit():
            return total
        if spacing.startswith("ddim") and spacing[4:].isdigit():
            return total
        return last_timestep_above(alphas_cumprod, lam)

    def _bind(self, denoiser: Denoiser, process: GaussianProcess) -> Denoiser:
        """``denoiser`` on ``process`` with this sampler's x_0 options, and a fresh NFE count."""
        changes: dict[str, Any] = {}
        if self.clip_denoised is not None:
            changes["clip_denoised"] = self.clip_denoised
        fn = self.denoised_fn if self.denoised_fn is not None else denoiser.denoised_fn
        if self._threshold is not None:
            threshold = self._threshold
            fn = threshold if fn is None else _compose(fn, threshold)
        if fn is not denoiser.denoised_fn:
            changes["denoised_fn"] = fn
        return denoiser.with_process(process, **changes)

    def _chain_plan(self, denoiser: Denoiser) -> Plan:
        """The plan of a discrete sampler: ``denoiser`` respaced to the steps the spacing keeps.

        Step k of the plan is step ``N − 1 − k`` of the respaced chain (``plan.denoiser.process``),
        which feeds the network the original training timestep (guided-diffusion's SpacedDiffusion).
        A spacing that keeps every step leaves the chain as it is.
        """
        process = denoiser.process
        total = process.num_timesteps
        steps = self._resolved_steps()
        spacing = self._resolved_spacing()
        if process.path is not None and not isinstance(spacing, str):
            # A published grid of path times, walked exactly (not rounded to the training grid).
            return self._chain_plan_of(denoiser, self._at_times(process, spacing))
        if not isinstance(spacing, str):
            return self._chain_plan_of(denoiser, self._chain_of(denoiser, total, steps, spacing))
        # A named spacing: the chain and its levels depend only on these, so later calls reuse them.
        key = ("plan", steps, spacing, self.spacing is None, self.start_lambda(denoiser))
        chains = self._chains.get(process)
        if chains is None:
            chains = self._chains[process] = {}
        hit = chains.get(key)
        if hit is None:
            plan = self._chain_plan_of(denoiser, self._chain_of(denoiser, total, steps, spacing))
            chains[key] = (plan.denoiser.process, tuple(plan.timesteps), tuple(plan.alpha_bars))
            return plan
        chain, timesteps, alpha_bars = hit
        return Plan(self._bind(denoiser, chain), list(timesteps), list(alpha_bars))

    def _chain_of(
        self, denoiser: Denoiser, total: int, steps: int | None, spacing: Spacing
    ) -> GaussianProcess:
        """The chain that :meth:`_chain_plan` walks: the denoiser's process respaced to the steps kept."""
        process = denoiser.process
        usable = self._usable_steps(process.alphas_cumprod, spacing, denoiser)
        if steps is not None and usable < steps <= total:
            lam = self.start_lambda(denoiser)
            raise ValueError(
                f"sampler {self.name!r}: lambda_min={self.lambda_min!r} leaves {usable} of the {total} "
                f"training steps (those with half log-SNR λ ≥ {lam:.3g}), fewer than steps={steps}; "
                "ask for at most that many, or set lambda_min=None to walk the whole chain"
            )
        # (more steps than the chain has: the spacing's own message, naming the chain's length)
        too_many = steps is not None and steps > total
        ac = process.alphas_cumprod if too_many else process.alphas_cumprod[:usable]
        if self.spacing is None and spacing == "ddim" and steps is not None:
            # guided-diffusion's "ddimN" exists only for some N; the default then keeps the same
            # family, N steps at stride ⌊T/N⌋ from step 0 (diffusers' "leading").
            try:
                use = discrete_timesteps("ddim", steps, ac)
            except ValueError:
                use = discrete_timesteps("leading", steps, ac)
        else:
            use = discrete_timesteps(spacing, steps, ac)
        return process if len(use) == total else self._respaced(process, use)

    def _chain_plan_of(self, denoiser: Denoiser, chain: GaussianProcess) -> Plan:
        """The plan walking every step of ``chain``, from its last step down to its first."""
        n = chain.num_timesteps
        timesteps = [float(chain.timestep_map[i]) for i in range(n - 1, -1, -1)]
        alpha_bars = [float(chain.alphas_cumprod[i]) for i in range(n - 1, -1, -1)]
        alpha_bars.append(float(chain.alphas_cumprod_prev[0]))
        return Plan(self._bind(denoiser, chain), timesteps, alpha_bars)

    def _at_times(self, process: GaussianProcess, spacing: Spacing) -> GaussianProcess:
        """``process.at_times(levels)``, remembered per process like :meth:`_respaced`."""
        times = path_levels(spacing)  # type: ignore[arg-type]
        chains = self._chains.get(process)
        if chains is None:
            chains = self._chains[process] = {}
        key = ("times", *times.tolist())
        chain = chains.get(key)
        if chain is None:
            chain = chains[key] = process.at_times(times)
        return chain

    def _respaced(self, process: GaussianProcess, use: list[int]) -> GaussianProcess:
        """``process.respace(use)``, remembered per process (sampling loops reuse the chain)."""
        chains = self._chains.get(process)
        if chains is None:
            chains = self._chains[process] = {}
        key = tuple(use)
        chain = chains.get(key)
        if chain is None:
            chain = chains[key] = process.respace(use)
        return chain

    def _sigma_plan(
        self,
        denoiser: Denoiser,
        *,
        drop_last: bool = False,
        last_timestep: int | None = None,
        final: float = 0.0,
    ) -> Plan:
        """The plan of a continuous sampler: noise levels σ_0 > ... > σ_{N-1}, then ``final`` (σ = 0).

        ``plan.extra`` holds the N + 1 σ's; the denoiser stays on the full training chain and is
        called at ``plan.timesteps[k]`` (fractional where the spacing falls between steps) with
        ``alpha_bar = 1 / (1 + σ_k²)``. ``last_timestep`` (None: from ``lambda_min``) caps the grid.
        """
        process = denoiser.process
        steps = self._resolved_steps()
        spacing = self._resolved_spacing()
        name: Any = spacing
        if not isinstance(spacing, str):
            if not isinstance(spacing, list | tuple):
                return self._new_sigma_plan(denoiser, steps, spacing, drop_last, last_timestep, final)
            # Explicit levels (a diffusers scheduler's times): the values with their types (1 == 1.0).
            name = (tuple(spacing), tuple(map(type, spacing)))
        # Its levels depend only on these, so later calls reuse them.
        key = ("sigmas", steps, name, drop_last, last_timestep, final, self.start_lambda(denoiser))
        chains = self._chains.get(process)
        if chains is None:
            chains = self._chains[process] = {}
        hit = chains.get(key)
        if hit is None:
            plan = self._new_sigma_plan(denoiser, steps, spacing, drop_last, last_timestep, final)
            chains[key] = (tuple(plan.timesteps), tuple(plan.alpha_bars), tuple(plan.extra))
            return plan
        timesteps, alpha_bars, sigmas = hit
        return Plan(self._bind(denoiser, process), list(timesteps), list(alpha_bars), extra=list(sigmas))

    def _new_sigma_plan(
        self,
        denoiser: Denoiser,
        steps: int | None,
        spacing: Spacing,
        drop_last: bool,
        last_timestep: int | None,
        final: float,
    ) -> Plan:
        """:meth:`_sigma_plan` computed afresh."""
        process = denoiser.process
        total = process.num_timesteps
        if last_timestep is None:
            usable = self._usable_steps(process.alphas_cumprod, spacing, denoiser)
            last_timestep = None if usable == total else usable
        if steps is None:
            steps = total if last_timestep is None else last_timestep
        sig, t = continuous_schedule(
            spacing,
            steps,
            process.alphas_cumprod,
            drop_last=drop_last,
            last_timestep=last_timestep,
            process=process,
        )
        sigmas = [float(s) for s in sig] + [float(final)]
        alpha_bars = [1.0 / (1.0 + s * s) for s in sigmas]
        return Plan(self._bind(denoiser, process), [float(v) for v in t], alpha_bars, extra=sigmas)

    # -- the protocol ----------------------------------------------------------------------

    def check(self, denoiser: Denoiser) -> None:
        """Raise :class:`ddkit.CompositionError` for a denoiser this sampler cannot run.

        A plan that cannot be made on this chain (more steps than the schedule has) is one too.
        """
        try:
            self._checked_plan(denoiser)
        except ValueError as exc:
            if isinstance(exc, DdkitError):
                raise
            steps = denoiser.process.num_timesteps
            raise CompositionError(
                f"{_named(f'sampler {self.name!r}', exc)} (the schedule has {steps} timesteps)"
            ) from exc

    def _checked_plan(self, denoiser: Denoiser) -> Plan:
        """:meth:`_plan` after the checks every sampler shares (one plan per sampling call)."""
        prediction = denoiser.parameterization.prediction
        if prediction == "previous-x" and self.continuous:
            raise CompositionError(
                f"sampler {self.name!r} cannot run a 'previous-x' model: such a model predicts the mean "
                "of x_{t-1} one training step back, which says nothing about x_0 at the noise levels an "
                "ODE solver visits; use 'ddpm' (or 'ddim' over the full chain), or a model predicting "
                "epsilon, x0 or v"
            )
        plan = self._plan(denoiser)
        if plan.alpha_bars[0] <= 0.0 and (prediction in ("epsilon", "edm") or self.epsilon_form):
            who = f"sampler {self.name!r} (which steps on ε)" if self.epsilon_form else "an epsilon model"
            raise CompositionError(
                f"sampler {self.name!r} starts at a step with ᾱ = 0 (a zero-terminal-SNR schedule), where "
                f"x_0 = (x − sqrt(1 − ᾱ)·ε)/sqrt(ᾱ) is undefined for {who}; use a spacing that starts below "
                "the last step" + ("" if self.epsilon_form else ", or a model predicting v or x0")
            )
        if prediction == "epsilon" and not denoiser._score_guidances:
            self._warn_noisy_start(plan)
        chain = plan.denoiser.process
        if prediction == "previous-x" and (
            chain is not denoiser.process
            and list(chain.timestep_map[: chain.num_timesteps]) != list(range(chain.num_timesteps))
        ):
            raise CompositionError(
                f"sampler {self.name!r} with {plan.steps} of {denoiser.process.num_timesteps} steps cannot "
                "run a 'previous-x' model: its output is the mean one *training* step back, not one step "
                "of the shorter chain; sample over the full chain (steps=None) or use a model predicting "
                "epsilon, x0 or v"
            )
        return plan

    def _warn_noisy_start(self, plan: Plan) -> None:
        """Warn when an ε-model starts where x̂_0 is mostly the network's error (λ < −6).

        Measured on the README's cosine example before its MLP had a linear skip (start
        λ = −9.9): DDIM-200 4.6, Euler-50 on Karras σ's 540 and DDPM over all 1000 steps
        hundreds, against 0.05 from λ = −5.1.
        """
        lam0 = _lambda_of(plan.alpha_bars[0])
        if lam0 >= _WARN_LAMBDA or plan.alpha_bars[0] <= 0.0:
            return
        warnings.warn(
            f"sampler {self.name!r} starts an epsilon model at ᾱ = {plan.alpha_bars[0]:.3g} (half log-SNR "
            f"λ = {lam0:.3g}), where x̂_0 = (x − sqrt(1 − ᾱ)·ε̂)/sqrt(ᾱ) is about {math.exp(-lam0):.3g} times "
            "the network's ε error, which a trained model's samples seldom survive; start lower: leave "
            f"lambda_min at its default ('auto', never below λ = {DEFAULT_LAMBDA_MIN}), set "
            f"lambda_min={DEFAULT_LAMBDA_MIN}, or use a named spacing instead of a respacing string or "
            "list that includes the last step",
            SamplingWarning,
            stacklevel=4,
        )

    def sample(self, denoiser: Denoiser, x_T: Tensor, **options: Any) -> Tensor:
        """Run :meth:`iterate` to the end and return the final sample.

        Without a callback, a progress bar or inpainting no one sees the states between steps, so
        the sampler's loop runs directly under one ``no_grad`` (what :meth:`iterate` switches per
        step), with the same checks: the per-step driver is most of a cheap step's Python time.
        """
        if options.get("callback") is not None or options.get("progress") or options.get("mask") is not None:
            state = None
            for state in self.iterate(denoiser, x_T, **options):  # noqa: B007 (the last one is kept)
                pass
            assert state is not None
            return state.x
        options.pop("callback", None)  # None and off here: nothing to call or show
        options.pop("progress", None)
        walk, run = self._prepare(self._checked_plan(denoiser), denoiser, x_T, **options)
        run.quiet = True  # (read when the loop starts, at its first step)
        d = walk.plan.denoiser
        state = None
        try:
            with torch.no_grad() if torch.is_grad_enabled() else contextlib.nullcontext():
                for state in walk.inner:  # noqa: B007 (the last one is kept)
                    pass
        finally:
            self.last_nfe = d.nfe
            denoiser.nfe += d.nfe
        assert state is not None
        _check_final(self.name, state, walk.plan.steps - walk.start)
        return state.x

    def iterate(
        self,
        denoiser: Denoiser,
        x_T: Tensor,
        *,
        generator: Generator = None,
        callback: Callable[[SamplerState], None] | None = None,
        progress: bool = False,
        init: Tensor | None = None,
        strength: float | None = None,
        mask: Tensor | None = None,
        known: Tensor | None = None,
        return_log_prob: bool | None = None,
    ) -> Iterator[SamplerState]:
        """Yield a :class:`~ddkit.SamplerState` per step from ``x_T`` (or ``init`` noised by ``strength``).

        ``x_T`` is standard normal noise shaped like the samples (any shape [B, C, ...]);
        ``generator`` one ``torch.Generator`` or one per sample; ``callback`` is called with
        each state; ``progress`` shows a tqdm bar; ``init`` + ``strength`` in (0, 1] start
        from ``init`` noised to the level ``strength`` of the way up the schedule and run
        that fraction of the steps (at least one); ``mask`` (1 = known) + ``known`` inpaint;
        ``return_log_prob`` overrides the sampler's setting for this call.
        """
        walk, run = self._prepare(
            self._checked_plan(denoiser),
            denoiser,
            x_T,
            generator=generator,
            init=init,
            strength=strength,
            mask=mask,
            known=known,
            return_log_prob=return_log_prob,
        )
        return self._drive(walk.inner, walk.plan, denoiser, walk.start, run, callback, progress, walk.blend)

    def _prepare(
        self,
        plan: Plan,
        denoiser: Denoiser,
        x_T: Tensor,
        *,
        generator: Generator = None,
        init: Tensor | None = None,
        strength: float | None = None,
        mask: Tensor | None = None,
        known: Tensor | None = None,
        return_log_prob: bool | None = None,
    ) -> tuple[_Walk, Run]:
        """The first x and loop of one call on ``plan`` (the options of :meth:`iterate`)."""
        log_prob = self.return_log_prob if return_log_prob is None else return_log_prob
        if not isinstance(log_prob, bool):
            raise TypeError(f"'return_log_prob' must be a bool (got {log_prob!r})")
        run = Run(generator=generator, log_prob=log_prob)
        walk = self._walk_from(plan, denoiser, x_T, run, init, strength, mask, known)
        return walk, run

    def _walk_from(
        self,
        plan: Plan,
        denoiser: Denoiser,
        x_T: Tensor,
        run: Run,
        init: Tensor | None = None,
        strength: float | None = None,
        mask: Tensor | None = None,
        known: Tensor | None = None,
    ) -> _Walk:
        """First step and first x of one call on ``plan``, and its loop not yet driven (iterate, rollouts)."""
        x_T = _from_path_start(denoiser.process, x_T)
        x, start = self._start(plan, x_T, run.generator, init, strength)
        blend = self._blender(x, mask, known)
        if blend is not None:
            assert mask is not None
            # Only generated elements count in a transition's density; known ones are replaced.
            run.weight = (mask.to(device=x.device, dtype=x.dtype) == 0).to(x.dtype).expand_as(x)
            with torch.no_grad():
                x = blend(x, plan.alpha_bars[start], run)
        return _Walk(plan, start, x, blend, self._run(plan, x, start, run))

    # -- the shared loop services ----------------------------------------------------------

    def _start(
        self, plan: Plan, x_T: Tensor, generator: Generator, init: Tensor | None, strength: float | None
    ) -> tuple[Tensor, int]:
        x_T = check_start(plan.denoiser, x_T, generator)  # before any work: see ddkit.sampling.inputs
        if init is None:
            if strength is not None:
                raise ValueError("'strength' needs 'init', the image to start from")
            return x_T, 0
        if strength is None:
            raise ValueError("'init' needs 'strength' in (0, 1], the fraction of the schedule to run")
        s = real("strength", strength, low=0.0, high=1.0)
        if s == 0.0:
            raise ValueError("'strength' must lie in (0, 1] (got 0); strength 0 would run no step")
        if not isinstance(init, Tensor) or init.shape != x_T.shape:
            got = tuple(init.shape) if isinstance(init, Tensor) else type(init).__name__
            raise ValueError(f"'init' must be a tensor shaped like x_T {tuple(x_T.shape)} (got {got})")
        n = plan.steps
        run_steps = min(n, max(1, int(s * n + 1e-9)))
        start = n - run_steps
        ab = plan.alpha_bars[start]
        init = init.to(device=x_T.device, dtype=x_T.dtype)
        # x_T serves as the noise of q(x_t | init), as guided-diffusion's skip_timesteps does.
        return init * math.sqrt(ab) + x_T * math.sqrt(1.0 - ab), start

    def _blender(
        self, x: Tensor, mask: Tensor | None, known: Tensor | None
    ) -> Callable[[Tensor, float, Run], Tensor] | None:
        if mask is None and known is None:
            return None
        if mask is None or known is None:
            raise ValueError("inpainting needs both 'mask' (1 = known pixel) and 'known' (the known x_0)")
        if known.shape != x.shape:
            raise ValueError(f"'known' must be shaped like x_T {tuple(x.shape)} (got {tuple(known.shape)})")
        fits = mask.ndim <= x.ndim and all(
            m in (1, n) for m, n in zip(reversed(mask.shape), reversed(x.shape))
        )
        if not fits:
            raise ValueError(
                f"'mask' of shape {tuple(mask.shape)} does not broadcast to x_T {tuple(x.shape)}"
            )
        m = mask.to(device=x.device, dtype=x.dtype)
        if bool(((m < 0) | (m > 1)).any()):
            raise ValueError("'mask' values must lie in [0, 1] (1 = known, 0 = generated)")
        k = known.to(device=x.device, dtype=x.dtype)
        m = m.expand_as(x)

        def blend(x: Tensor, alpha_bar: float, run: Run) -> Tensor:
            if alpha_bar >= 1.0:
                target = k
            else:
                target = run.noise(k).mul_(math.sqrt(1.0 - alpha_bar)).add_(k, alpha=math.sqrt(alpha_bar))
            return torch.lerp(x, target, m)

        return blend

    def _drive(
        self,
        inner: Iterator[SamplerState],
        plan: Plan,
        outer: Denoiser,
        start: int,
        run: Run,
        callback: Callable[[SamplerState], None] | None,
        progress: bool,
        blend: Callable[[Tensor, float, Run], Tensor] | None,
    ) -> Iterator[SamplerState]:
        bar = None
        if progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=plan.steps - start, desc=self.name)
        d = plan.denoiser
        try:
            while True:
                # Gradients stay off inside a step (a guidance turns them on for itself), but not
                # for the caller's code between two states; skip the switch when already off.
                with torch.no_grad() if torch.is_grad_enabled() else contextlib.nullcontext():
                    state = next(inner, None)
                    if state is None:
                        return
                    if blend is not None:
                        state.x = blend(state.x, plan.alpha_bars[start + state.step + 1], run)
                _check_final(self.name, state, plan.steps - start)  # after the last step only
                self.last_nfe = d.nfe
                if callback is not None:
                    callback(state)
                if bar is not None:
                    bar.update(1)
                yield state
        finally:
            self.last_nfe = d.nfe
            outer.nfe += d.nfe
            if bar is not None:
                bar.close()

    def __repr__(self) -> str:
        return f"{type(self).__name__}(steps={self.steps!r}, spacing={self.spacing!r})"


@dataclass(slots=True)
class _Walk:
    """One sampling call before it runs: its plan, first step, first x (after inpainting) and loop."""

    plan: Plan
    start: int
    x: Tensor
    blend: Callable[[Tensor, float, Run], Tensor] | None
    inner: Iterator[SamplerState]


def _check_final(sampler: str, state: SamplerState, total: int) -> None:
    """:func:`~ddkit.sampling.inputs.check_final`, skipped when the sum of the sample is finite.

    A NaN or infinite element makes the sum NaN or infinite, so a finite sum proves the sample
    finite in one cheap reduction (about 8× faster than ``isfinite(x).all()`` on CPU); a sum
    that overflows falls back to the exact check.
    """
    if state.step + 1 == total and not bool(torch.isfinite(state.x.sum())):
        check_final(sampler, state, total)


def _from_path_start(process: GaussianProcess, x_T: Any) -> Any:
    """x_T, the state at the start of the path (σ_max·ε on ``edm``), in the chain's scaling."""
    if process.path is None or not isinstance(x_T, Tensor):
        return x_T
    k = process.scale(process.num_timesteps - 1, x_T)
    return x_T if k == 1.0 else x_T / k


def _named(label: str, exc: Exception) -> str:
    message = str(exc)
    return message if message.startswith(label) else f"{label}: {message}"


def _compose(
    first: Callable[[Tensor], Tensor], then: Callable[[Tensor], Tensor]
) -> Callable[[Tensor], Tensor]:
    def composed(x0: Tensor) -> Tensor:
        return then(first(x0))

    return composed
