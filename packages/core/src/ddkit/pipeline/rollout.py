"""Rollouts and differentiable transition log-probabilities: the two calls RL fine-tuning needs.

Both go through the sampler's :meth:`~ddkit.sampling.SamplerBase.transition`: the rollout
draws each step from it, :func:`transition_log_prob` evaluates a stored step with it under
the current weights (one model forward, gradients on). The log-density of a rollout and of
a later evaluation under the same weights are therefore the same function of the same
numbers.

.. versionadded:: 0.2.0
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from ddkit.errors import CompositionError, InputError, InputTypeError
from ddkit.protocols import Generator
from ddkit.sampling.base import Plan, Run, SamplerBase, check_reduction
from ddkit.trajectory import Trajectory

if TYPE_CHECKING:
    from ddkit.pipeline.pipeline import Pipeline

__all__ = ["rollout", "transition_log_prob"]

#: What the error for a sampler without transitions suggests.
_STOCHASTIC = "ddpm, ddim with eta > 0, euler-ancestral, dpm-solver++ with sde=True or flow-sde"


@contextlib.contextmanager
def _eval_mode(model: nn.Module) -> Iterator[None]:
    """The model in eval mode (no dropout) for the block; free when it is already (a walk per switch)."""
    if not model.training:
        yield
        return
    model.eval()
    try:
        yield
    finally:
        model.train()


def _rl_sampler(pipe: Pipeline) -> SamplerBase:
    """The pipeline's sampler if it can roll out with log-probabilities, else a clear error."""
    sampler = pipe.sampler
    name = getattr(sampler, "name", type(sampler).__name__)
    if not isinstance(sampler, SamplerBase) or not sampler.has_transition:
        raise CompositionError(
            f"sampler {name!r} does not describe its steps as Gaussian transitions "
            "(SamplerBase.transition), so its trajectories have no log-probabilities; use a stochastic "
            f"sampler: {_STOCHASTIC} (pipe.with_sampler('ddpm'))"
        )
    if not sampler.stochastic:
        raise CompositionError(
            f"sampler {name!r} as configured draws no noise (e.g. ddim with eta=0), so every log-probability "
            f"would be NaN; use a stochastic setting or sampler: {_STOCHASTIC}"
        )
    return sampler


def rollout(
    pipe: Pipeline,
    n: int | None,
    *,
    generator: Generator = None,
    x_T: Tensor | None = None,
    reduction: str = "mean",
    init: Tensor | None = None,
    strength: float | None = None,
    mask: Tensor | None = None,
    known: Tensor | None = None,
    **conditioning: Any,
) -> Trajectory:
    """Sample like :meth:`ddkit.Pipeline.sample` and keep every state and step log-density."""
    sampler = _rl_sampler(pipe)
    reduction = check_reduction(reduction)
    n, x_T = pipe._start(n, x_T, generator)
    denoiser = pipe._denoiser(n, conditioning)
    init, mask, known = pipe._inputs(x_T, init, mask, known)
    run = Run(generator=generator, log_prob=True, reduction=reduction, trace=[])
    model = pipe.sampling_model
    with _eval_mode(model), torch.no_grad():
        walk = sampler._walk_from(
            sampler._checked_plan(denoiser),
            denoiser,
            x_T,
            run,
            init=init,
            strength=strength,
            mask=mask,
            known=known,
        )
        plan = walk.plan
        xs = [walk.x]
        log_probs: list[Tensor | None] = []
        for state in sampler._drive(walk.inner, plan, denoiser, walk.start, run, None, False, walk.blend):
            xs.append(state.x)
            log_probs.append(state.log_prob)
    like = xs[0]
    nan = torch.full((like.shape[0],), float("nan"), dtype=like.dtype, device=like.device)
    stochastic = [i for i, lp in enumerate(log_probs) if lp is not None]
    traj = Trajectory(
        x=torch.stack(xs),
        timesteps=torch.tensor(plan.timesteps[walk.start :], dtype=torch.float64),
        log_probs=torch.stack([lp.to(like.dtype) if lp is not None else nan for lp in log_probs]),
        conditioning=dict(denoiser.conditioning),
        reduction=reduction,
        history=_detached(run.trace or []),
        weight=run.weight,
        start=walk.start,
        sampler=sampler.name,
    )
    traj.cache.update(stochastic_steps=stochastic, plan=plan, pipeline=pipe, model=model)
    return traj


def _detached(history: list[Any]) -> list[Any]:
    """The per-step histories without autograd links (they enter transition_log_prob as constants)."""

    def detach(value: Any) -> Any:
        if isinstance(value, Tensor):
            return value.detach()
        if isinstance(value, (list, tuple)):
            return type(value)(detach(v) for v in value)
        if isinstance(value, dict):
            return {k: detach(v) for k, v in value.items()}
        return value

    return [detach(h) for h in history]


def _plan_for(pipe: Pipeline, traj: Trajectory, sampler: SamplerBase) -> Plan:
    """The plan that drew ``traj``, on this pipeline's model (reused while neither changes)."""
    model = pipe.sampling_model
    cache = traj.cache
    plan = cache.get("plan")
    if plan is not None and cache.get("pipeline") is pipe and cache.get("model") is model:
        assert isinstance(plan, Plan)
        return plan
    plan = sampler._checked_plan(pipe._make_denoiser(traj.conditioning))
    stored = traj.timesteps.tolist()
    if plan.timesteps[traj.start : traj.start + traj.steps] != stored:
        raise CompositionError(
            f"this trajectory was drawn on other timesteps ({traj.steps} steps of sampler {traj.sampler!r}) "
            f"than the pipeline's sampler {sampler.name!r} now walks; evaluate it with the pipeline (and "
            "sampler settings) that drew it"
        )
    cache.update(plan=plan, pipeline=pipe, model=model)
    return plan


def transition_log_prob(pipe: Pipeline, traj: Trajectory, step: int, *, reduction: str = "mean") -> Tensor:
    """log p_θ(x_{k+1} | x_k) of step ``step`` of ``traj`` under the current weights, ``[n]``.

    One model forward with gradients on (the model in eval mode, as in the rollout); a
    multistep sampler's stored history enters as a constant.
    """
    if not isinstance(traj, Trajectory):
        raise InputTypeError(
            f"'traj' must be a ddkit.Trajectory from pipe.rollout() (got {type(traj).__name__})"
        )
    if isinstance(step, bool) or not isinstance(step, int):
        raise InputTypeError(f"'step' must be an int in [0, {traj.steps}) (got {step!r})")
    if not -traj.steps <= step < traj.steps:
        raise InputError(f"'step' must lie in [0, {traj.steps}), the trajectory's steps (got {step})")
    step %= traj.steps
    reduction = check_reduction(reduction)
    sampler = _rl_sampler(pipe)
    if step not in traj.stochastic_steps:
        raise InputError(
            f"step {step} of the trajectory draws no noise (its log_probs entry is NaN), so it has no "
            f"log-probability; use the steps in traj.stochastic_steps ({traj.stochastic_steps})"
        )
    plan = _plan_for(pipe, traj, sampler)
    model = pipe.sampling_model
    with _eval_mode(model):
        transition = sampler.transition(plan, traj.start + step, traj.x[step], traj.history[step])
    return transition.log_prob(traj.x[step + 1], reduction=reduction, weight=traj.weight)
