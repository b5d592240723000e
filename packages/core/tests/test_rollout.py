"""Rollouts and transition log-probabilities with core alone: a tiny MLP and samplers written here.

The two samplers below are what a third party writes: a ``_plan`` and a ``transition``; the
loop, ``return_log_prob``, :meth:`Pipeline.rollout` and :meth:`Pipeline.transition_log_prob`
come from :class:`~ddkit.sampling.SamplerBase`.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

import pytest
import torch
from torch import Tensor, nn

import ddkit
from ddkit import CompositionError, ModelSpec, Trajectory
from ddkit.errors import InputError
from ddkit.registry import Registry
from ddkit.sampling import Plan, SamplerBase, Transition, gaussian_log_density
from ddkit.testing import fresh_registry

torch.set_num_threads(1)


class TinyNet(nn.Module):
    """A time-conditional MLP on vectors of ``dim`` features."""

    def __init__(self, dim: int = 3) -> None:
        super().__init__()
        self.dim = dim
        self.inp = nn.Linear(dim + 1, 16)
        self.out = nn.Linear(16, dim)

    @property
    def spec(self) -> ModelSpec:
        return ModelSpec(self.dim, self.dim, (self.dim,), None, None)

    def forward(self, x: Tensor, t: Tensor) -> Tensor:
        h = torch.tanh(self.inp(torch.cat([x, t.to(x.dtype)[:, None] / 100], dim=1)))
        out: Tensor = self.out(h)
        return out


class Ancestral(SamplerBase):
    """DDPM's step with the fixed-small variance, written as a transition."""

    name = "toy-ancestral"
    stochastic = True

    def _plan(self, denoiser: Any) -> Plan:
        return self._chain_plan(denoiser)

    def transition(self, plan: Plan, k: int, x: Tensor, history: Any = None) -> Transition:
        chain = plan.denoiser.process
        i = chain.num_timesteps - 1 - k
        pred = plan.denoiser(x, i)
        mean = pred.blend_x0(float(chain.posterior_mean_coef2[i]), x, float(chain.posterior_mean_coef1[i]))
        std = math.sqrt(float(chain.posterior_variance[i])) if i > 0 else 0.0
        return Transition(mean, std, pred)


class TwoStep(Ancestral):
    """A multistep toy: the mean also moves along the last two x̂_0's difference (its history)."""

    name = "toy-two-step"

    def transition(self, plan: Plan, k: int, x: Tensor, history: Any = None) -> Transition:
        step = super().transition(plan, k, x, history)
        assert step.prediction is not None
        x0 = step.prediction.x0
        mean = step.mean if history is None else step.mean + 0.3 * (x0 - history)
        return Transition(mean, step.std, step.prediction, carry=x0)


@pytest.fixture(autouse=True)
def registry() -> Iterator[Registry]:
    with fresh_registry() as reg:
        yield reg


def make_pipe(
    sampler: SamplerBase | None = None, dtype: torch.dtype = torch.float64, seed: int = 0
) -> ddkit.Pipeline:
    torch.manual_seed(seed)
    return ddkit.Pipeline.from_config(
        {
            "schedule": {"name": "linear", "timesteps": 40},
            "parameterization": {"name": "epsilon", "clip_denoised": False},
            "model": TinyNet().to(dtype),
            "sampler": sampler if sampler is not None else Ancestral(steps=8),
        }
    )


def assert_close(
    actual: Tensor, expected: Tensor, *, rtol: float = 0.0, atol: float = 1e-10, equal_nan: bool = False
) -> None:
    """|actual − expected| ≤ atol + rtol·|expected| everywhere (torch.testing's first call costs seconds)."""
    assert actual.shape == expected.shape
    assert actual.dtype == expected.dtype
    nan = torch.isnan(expected)
    assert torch.equal(torch.isnan(actual), nan) if equal_nan else not nan.any()
    ok = (actual - expected).abs() <= atol + rtol * expected.abs()
    assert bool(ok[~nan].all()), f"max difference {(actual - expected)[~nan].abs().max().item():.3g}"


def net(pipe: ddkit.Pipeline) -> TinyNet:
    assert isinstance(pipe.model, TinyNet)
    return pipe.model


def sampler_of(pipe: ddkit.Pipeline) -> SamplerBase:
    assert isinstance(pipe.sampler, SamplerBase)
    return pipe.sampler


def backward(value: Tensor) -> None:
    torch.autograd.backward(value)


def gens(seeds: list[int]) -> list[torch.Generator]:
    return [torch.Generator().manual_seed(s) for s in seeds]


def noise(n: int, dtype: torch.dtype, seed: int = 1) -> Tensor:
    return torch.randn(n, 3, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def test_rollout_shapes_dtype_and_deterministic_last_step() -> None:
    pipe = make_pipe()
    traj = pipe.rollout(4, x_T=noise(4, torch.float64), generator=gens([0, 1, 2, 3]))
    assert isinstance(traj, Trajectory)
    assert traj.x.shape == (9, 4, 3)
    assert traj.log_probs.shape == (8, 4)
    assert traj.x.dtype == traj.log_probs.dtype == torch.float64
    assert traj.timesteps.tolist() == sorted(traj.timesteps.tolist(), reverse=True)
    # DDPM adds no noise into x_0: the last step is deterministic and its log-probability NaN.
    assert traj.stochastic_steps == list(range(7))
    assert torch.isnan(traj.log_probs[7]).all()
    assert torch.isfinite(traj.log_probs[:7]).all()
    assert torch.equal(traj.x[0], noise(4, torch.float64))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("sampler", [Ancestral, TwoStep])
def test_transition_log_prob_equals_the_rollouts_value(
    sampler: type[SamplerBase], dtype: torch.dtype
) -> None:
    pipe = make_pipe(sampler(steps=8), dtype)
    traj = pipe.rollout(5, x_T=noise(5, dtype), generator=gens(list(range(5))))
    for k in traj.stochastic_steps:
        value = pipe.transition_log_prob(traj, k)
        assert value.shape == (5,)
        assert value.dtype == dtype
        assert_close(
            value.detach(), traj.log_probs[k], rtol=0, atol=1e-5 if dtype == torch.float32 else 1e-12
        )
    if sampler is TwoStep:
        assert traj.history[0] is None
        assert all(isinstance(h, Tensor) for h in traj.history[1:])


def test_equals_a_gaussian_density_written_out_by_hand() -> None:
    pipe = make_pipe()
    traj = pipe.rollout(3, x_T=noise(3, torch.float64), generator=gens([5, 6, 7]))
    process = sampler_of(pipe)._checked_plan(pipe.denoiser()).denoiser.process  # the respaced chain
    n = process.num_timesteps
    for k in (0, 3, 6):
        i = n - 1 - k
        x, x_next = traj.x[k], traj.x[k + 1]
        t = torch.full((3,), int(process.timestep_map[i]), dtype=torch.long)
        with torch.no_grad():
            eps = net(pipe)(x, t)
        ab = float(process.alphas_cumprod[i])
        ab_prev = float(process.alphas_cumprod_prev[i])
        beta = 1.0 - ab / ab_prev
        x0 = (x - math.sqrt(1.0 - ab) * eps) / math.sqrt(ab)
        mean = (
            math.sqrt(ab_prev) * beta / (1.0 - ab) * x0
            + math.sqrt(ab / ab_prev) * (1.0 - ab_prev) / (1.0 - ab) * x
        )
        var = beta * (1.0 - ab_prev) / (1.0 - ab)
        elementwise = -0.5 * (x_next - mean) ** 2 / var - 0.5 * math.log(2.0 * math.pi * var)
        assert_close(pipe.transition_log_prob(traj, k).detach(), elementwise.mean(dim=1))
        assert_close(pipe.transition_log_prob(traj, k, reduction="sum").detach(), elementwise.sum(dim=1))


def test_gradient_is_nonzero_and_matches_finite_differences() -> None:
    pipe = make_pipe()
    traj = pipe.rollout(4, x_T=noise(4, torch.float64), generator=gens([1, 2, 3, 4]))
    weight = net(pipe).inp.weight
    backward(pipe.transition_log_prob(traj, 2).sum())
    assert weight.grad is not None
    assert weight.grad.abs().max() > 1e-6
    h = 1e-6
    for idx in [(0, 0), (3, 1), (7, 3)]:
        with torch.no_grad():
            weight[idx] += h
            up = pipe.transition_log_prob(traj, 2).sum().item()
            weight[idx] -= 2 * h
            down = pipe.transition_log_prob(traj, 2).sum().item()
            weight[idx] += h
        assert abs((up - down) / (2 * h) - weight.grad[idx].item()) < 1e-6


def test_changing_the_weights_changes_it_but_not_the_stored_values() -> None:
    pipe = make_pipe()
    traj = pipe.rollout(3, x_T=noise(3, torch.float64), generator=gens([0, 1, 2]))
    stored = traj.log_probs.clone()
    before = pipe.transition_log_prob(traj, 1).detach()
    with torch.no_grad():
        net(pipe).out.bias.add_(0.05)
    after = pipe.transition_log_prob(traj, 1).detach()
    assert (after - before).abs().min() > 1e-6
    assert_close(traj.log_probs, stored, rtol=0, atol=0, equal_nan=True)


def test_per_sample_generators_make_trajectories_batch_invariant() -> None:
    pipe = make_pipe(TwoStep(steps=8))
    x_T = torch.stack([torch.randn(3, generator=g, dtype=torch.float64) for g in gens([20, 21, 22])])
    both = pipe.rollout(3, x_T=x_T, generator=gens([10, 11, 12]))
    alone = pipe.rollout(1, x_T=x_T[1:2], generator=gens([11]))
    assert_close(both.x[:, 1:2], alone.x, rtol=0, atol=1e-12)
    assert_close(both.log_probs[:, 1:2], alone.log_probs, rtol=0, atol=1e-12, equal_nan=True)
    minibatch = both.select([1])
    for k in both.stochastic_steps:
        assert_close(pipe.transition_log_prob(minibatch, k).detach(), alone.log_probs[k], rtol=0, atol=1e-12)


def test_inpainting_counts_only_generated_elements() -> None:
    pipe = make_pipe()
    known = torch.zeros(2, 3, dtype=torch.float64)
    mask = torch.tensor([1.0, 0.0, 0.0], dtype=torch.float64)  # feature 0 known, 1 and 2 generated
    traj = pipe.rollout(2, x_T=noise(2, torch.float64), generator=gens([3, 4]), mask=mask, known=known)
    assert torch.equal(traj.x[-1][:, 0], known[:, 0])
    plan = sampler_of(pipe)._checked_plan(pipe.denoiser())
    for k in traj.stochastic_steps:
        with torch.no_grad():
            step = sampler_of(pipe).transition(plan, k, traj.x[k])
        x_next = traj.x[k + 1]
        generated = gaussian_log_density(x_next[:, 1:], step.mean[:, 1:], step.std, reduction="mean")
        assert_close(traj.log_probs[k], generated)
        assert_close(pipe.transition_log_prob(traj, k).detach(), generated)
        # The known element (re-noised from `known`, not drawn from the transition) does not count.
        everything = gaussian_log_density(x_next, step.mean, step.std, reduction="mean")
        assert (everything - generated).abs().max() > 1e-6


def test_return_log_prob_goes_through_the_same_density() -> None:
    pipe = make_pipe()
    x_T = noise(3, torch.float64)
    traj = pipe.rollout(3, x_T=x_T, generator=gens([0, 1, 2]), reduction="sum")
    states = list(
        sampler_of(pipe).iterate(pipe.denoiser(), x_T, generator=gens([0, 1, 2]), return_log_prob=True)
    )
    for k, state in enumerate(states):
        if k in traj.stochastic_steps:
            assert state.log_prob is not None
            assert state.log_prob.dtype == torch.float64
            assert_close(state.log_prob, traj.log_probs[k], rtol=0, atol=1e-12)
        else:
            assert state.log_prob is None


def test_clear_errors() -> None:
    pipe = make_pipe()
    traj = pipe.rollout(2, x_T=noise(2, torch.float64))
    with pytest.raises(InputError, match=r"step 7 of the trajectory draws no noise.*traj.stochastic_steps"):
        pipe.transition_log_prob(traj, 7)
    with pytest.raises(InputError, match=r"'step' must lie in \[0, 8\).*\(got 8\)"):
        pipe.transition_log_prob(traj, 8)
    with pytest.raises(InputError, match=r"'reduction' must be 'mean'.*or 'sum' \(got 'max'\)"):
        pipe.rollout(2, reduction="max")
    with pytest.raises(CompositionError, match=r"draws no noise.*use a stochastic setting or sampler"):
        make_pipe(Ancestral(steps=8)).with_sampler(_Deterministic(steps=8)).rollout(2)
    with pytest.raises(CompositionError, match=r"drawn on other timesteps"):
        make_pipe(Ancestral(steps=4)).transition_log_prob(traj, 0)


class _Deterministic(Ancestral):
    stochastic = False


def test_image_to_image_rollouts_store_only_the_steps_taken() -> None:
    pipe = make_pipe(TwoStep(steps=8))
    init = torch.full((2, 3), 0.5, dtype=torch.float64)
    traj = pipe.rollout(2, x_T=noise(2, torch.float64), generator=gens([1, 2]), init=init, strength=0.5)
    assert traj.steps == 4
    assert traj.start == 4
    full = pipe.rollout(2, x_T=noise(2, torch.float64))
    assert torch.equal(traj.timesteps, full.timesteps[4:])
    for k in traj.stochastic_steps:
        assert_close(pipe.transition_log_prob(traj, k).detach(), traj.log_probs[k], atol=1e-12)


def test_one_model_forward_per_call() -> None:
    pipe = make_pipe(TwoStep(steps=8))
    traj = pipe.rollout(3, x_T=noise(3, torch.float64), generator=gens([0, 1, 2]))
    calls: list[int] = []
    handle = net(pipe).register_forward_hook(lambda *_: calls.append(1))
    try:
        for k in traj.stochastic_steps:
            pipe.transition_log_prob(traj, k)
    finally:
        handle.remove()
    assert len(calls) == len(traj.stochastic_steps)
