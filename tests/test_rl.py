"""RL fine-tuning across packages: every stochastic sampler's rollouts and transition log-probabilities.

For each sampler of ddkit-samplers that draws noise, :meth:`Pipeline.transition_log_prob` of a
stored step must equal the rollout's value under the same weights (float32 and float64, with
per-sample generators, with classifier-free guidance), and ``flow-sde`` must keep the flow
ODE's marginals and Flow-GRPO's step.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest
import torch
from _modules import load_module
from torch import Tensor, nn

import ddkit
from ddkit import ModelSpec

torch.set_num_threads(1)

#: Every stochastic sampler with Gaussian transitions (a new one joins this list).
STOCHASTIC: list[tuple[str, dict[str, Any], dict[str, Any]]] = [
    ("ddpm", {"steps": 8}, {}),
    ("ddpm", {"steps": 8}, {"variance": "learned-range"}),
    ("ddim", {"steps": 8, "eta": 1.0}, {}),
    ("ddim", {"steps": 8, "eta": 0.5}, {"name": "v"}),
    ("euler-ancestral", {"steps": 8}, {}),
    ("flow-sde", {"steps": 8}, {"name": "velocity"}),
    ("dpm-solver++", {"steps": 8, "sde": True}, {}),
    ("dpm-solver++", {"steps": 8, "sde": True, "order": 3}, {}),
]


class Net(nn.Module):
    """A small class-conditional MLP; ``learn_sigma`` doubles its output for learned variances."""

    def __init__(self, dim: int = 2, num_classes: int = 3, learn_sigma: bool = False) -> None:
        super().__init__()
        self.dim, self.num_classes = dim, num_classes
        self.out_dim = dim * (2 if learn_sigma else 1)
        self.inp = nn.Linear(dim + 1, 24)
        self.emb = nn.Embedding(num_classes + 1, 24)
        self.out = nn.Linear(24, self.out_dim)

    @property
    def spec(self) -> ModelSpec:
        return ModelSpec(self.dim, self.out_dim, (self.dim,), self.num_classes, self.num_classes)

    def forward(self, x: Tensor, t: Tensor, y: Tensor | None = None) -> Tensor:
        h = self.inp(torch.cat([x, t.to(x.dtype)[:, None] / 1000], dim=1))
        if y is None:
            y = torch.full((x.shape[0],), self.num_classes, dtype=torch.long, device=x.device)
        out: Tensor = self.out(torch.tanh(h + self.emb(y).to(x.dtype)))
        return out


def pipeline(
    sampler: str, params: dict[str, Any], param: dict[str, Any], dtype: torch.dtype, guided: bool = False
) -> ddkit.Pipeline:
    torch.manual_seed(0)
    flow = sampler == "flow-sde"
    cfg: dict[str, Any] = {
        "schedule": {"name": "rectified-flow"} if flow else {"name": "linear", "timesteps": 200},
        "parameterization": {"name": "epsilon", "clip_denoised": False, **param},
        "sampler": {"name": sampler, **params},
        "model": Net(learn_sigma="variance" in param).to(dtype),
    }
    if guided:
        cfg["guidance"] = [{"name": "classifier-free", "scale": 2.5}]
    return ddkit.Pipeline.from_config(cfg)


def net(pipe: ddkit.Pipeline) -> Net:
    assert isinstance(pipe.model, Net)
    return pipe.model


def gens(seeds: range | list[int]) -> list[torch.Generator]:
    return [torch.Generator().manual_seed(s) for s in seeds]


def start(n: int, dtype: torch.dtype) -> Tensor:
    return torch.stack([torch.randn(2, generator=g, dtype=dtype) for g in gens(range(100, 100 + n))])


def max_diff(a: Tensor, b: Tensor) -> float:
    return float((a - b).abs().max())


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["float32", "float64"])
@pytest.mark.parametrize(("sampler", "params", "param"), STOCHASTIC, ids=lambda v: str(v))
def test_transition_log_prob_equals_the_rollout(
    sampler: str, params: dict[str, Any], param: dict[str, Any], dtype: torch.dtype
) -> None:
    pipe = pipeline(sampler, params, param, dtype)
    y = torch.tensor([0, 1, 2, 0])
    traj = pipe.rollout(4, x_T=start(4, dtype), generator=gens(range(4)), y=y)
    assert traj.log_probs.dtype == dtype
    assert traj.stochastic_steps
    tol = 1e-5 if dtype == torch.float32 else 1e-10
    for k in traj.stochastic_steps:
        value = pipe.transition_log_prob(traj, k)
        assert value.dtype == dtype
        assert max_diff(value.detach(), traj.log_probs[k]) < tol
    # Differentiable with respect to the weights, and moved by them.
    value = pipe.transition_log_prob(traj, traj.stochastic_steps[0])
    torch.autograd.backward(value.sum())
    grad = net(pipe).inp.weight.grad
    assert grad is not None
    assert float(grad.abs().max()) > 0.0
    with torch.no_grad():
        net(pipe).out.bias.add_(0.1)
    moved = pipe.transition_log_prob(traj, traj.stochastic_steps[0]).detach()
    assert max_diff(moved, value.detach()) > 1e-4


@pytest.mark.parametrize(("sampler", "params", "param"), [STOCHASTIC[i] for i in (0, 2, 4, 5)], ids=str)
def test_guided_rollouts_score_the_guided_transition(
    sampler: str, params: dict[str, Any], param: dict[str, Any]
) -> None:
    guided = pipeline(sampler, params, param, torch.float64, guided=True)
    plain = pipeline(sampler, params, param, torch.float64)
    y = torch.tensor([1, 2, 0])
    traj = guided.rollout(3, x_T=start(3, torch.float64), generator=gens(range(3)), y=y)
    k = traj.stochastic_steps[1]
    value = guided.transition_log_prob(traj, k).detach()
    assert max_diff(value, traj.log_probs[k]) < 1e-10
    # The same weights without guidance give the unguided transition another density.
    assert max_diff(plain.transition_log_prob(traj, k).detach(), value) > 1e-4


@pytest.mark.parametrize(("sampler", "params", "param"), [STOCHASTIC[i] for i in (2, 4, 5)], ids=str)
def test_per_sample_generators_make_rollouts_batch_invariant(
    sampler: str, params: dict[str, Any], param: dict[str, Any]
) -> None:
    pipe = pipeline(sampler, params, param, torch.float64)
    x_T = start(3, torch.float64)
    y = torch.tensor([2, 0, 1])
    batch = pipe.rollout(3, x_T=x_T, generator=gens([7, 8, 9]), y=y)
    alone = pipe.rollout(1, x_T=x_T[2:], generator=gens([9]), y=y[2:])
    assert max_diff(batch.x[:, 2:], alone.x) < 1e-12
    steps = batch.stochastic_steps
    assert max_diff(batch.log_probs[steps, 2:], alone.log_probs[steps]) < 1e-12


def test_deterministic_samplers_are_refused_with_the_stochastic_ones_named() -> None:
    pipe = pipeline("ddim", {"steps": 8, "eta": 0.0}, {}, torch.float32)
    with pytest.raises(
        ddkit.CompositionError, match=r"draws no noise.*dpm-solver\+\+ with sde=True or flow-sde"
    ):
        pipe.rollout(2, y=0)
    with pytest.raises(ddkit.CompositionError, match=r"'heun' does not describe its steps"):
        pipe.with_sampler("heun").rollout(2, y=0)


# -- flow-sde --------------------------------------------------------------------------------

MU = torch.tensor([1.5, -0.5], dtype=torch.float64)
STD = torch.tensor([0.5, 1.2], dtype=torch.float64)


class GaussianVelocity(nn.Module):
    """The exact rectified-flow velocity E[ε − x_0 | x_t] of data N(MU, diag(STD²))."""

    spec = ModelSpec(2, 2, (2,), None, None)

    def forward(self, x: Tensor, t: Tensor) -> Tensor:
        t = (t.to(x.dtype) / 1000)[:, None]
        var = STD.to(x) ** 2
        x0 = MU.to(x) + (1 - t) * var / ((1 - t) ** 2 * var + t**2) * (x - (1 - t) * MU.to(x))
        return (x - x0) / t


def flow_pipe(**params: Any) -> ddkit.Pipeline:
    return ddkit.Pipeline.from_config(
        {
            "schedule": {"name": "rectified-flow"},
            "parameterization": {"name": "velocity"},
            "sampler": {"name": "flow-sde", "lambda_min": None, **params},  # Flow-GRPO's grid from t = 1
            "model": GaussianVelocity(),
        }
    )


def test_flow_sde_keeps_the_marginals_of_the_flow() -> None:
    pipe = flow_pipe(steps=40, noise_level=0.7)
    g = torch.Generator().manual_seed(0)
    n = 20000
    x = pipe.sample(n, x_T=torch.randn(n, 2, generator=g, dtype=torch.float64), generator=g)
    # Monte-Carlo error of the mean ≈ STD/sqrt(n) ≈ 0.008; of the std ≈ STD/sqrt(2n).
    assert max_diff(x.mean(0), MU) < 0.04
    assert max_diff(x.std(0), STD) < 0.04
    # The noise is real: far more spread between two draws from the same start than the ODE's.
    x_T = torch.zeros(2000, 2, dtype=torch.float64)
    spread = pipe.sample(x_T=x_T, generator=torch.Generator().manual_seed(1)).std(0)
    assert float(spread.min()) > 0.2
    assert float(flow_pipe(steps=40, noise_level=0.0).sample(x_T=x_T).std(0).max()) < 1e-9


def test_flow_sde_step_is_flow_grpos() -> None:
    """Flow-GRPO's sde_step_with_logprob written out in the path's x_t = (1 − t)x_0 + tε."""
    steps, a = 6, 0.7
    pipe = flow_pipe(steps=steps, noise_level=a)
    traj = pipe.rollout(5, x_T=start(5, torch.float64), generator=gens(range(5)))
    times = [(float(i) + 1.0) / 1000 for i in traj.timesteps] + [0.0]  # training step i is at t = (i + 1)/T
    assert abs(times[0] - 1.0) < 1e-12
    for k in range(steps):
        t, t_prev = times[k], times[k + 1]
        c_t, c_prev = math.hypot(1 - t, t), math.hypot(1 - t_prev, t_prev)
        x, x_next = traj.x[k] * c_t, traj.x[k + 1] * c_prev  # chain scaling -> the path's x_t
        with torch.no_grad():
            v = GaussianVelocity()(x, torch.full((5,), t * 1000, dtype=torch.float64))
        dt = t_prev - t
        std_dev_t = math.sqrt(t / (1 - (times[1] if t == 1 else t))) * a
        mean = x * (1 + std_dev_t**2 / (2 * t) * dt) + v * (1 + std_dev_t**2 * (1 - t) / (2 * t)) * dt
        std = std_dev_t * math.sqrt(-dt)
        log_prob = (
            -((x_next - mean) ** 2) / (2 * std**2) - math.log(std) - 0.5 * math.log(2 * math.pi)
        ).mean(1)
        # Densities of the chain's x differ from the path's by the Jacobian log c_{t'} per element.
        assert max_diff(traj.log_probs[k], log_prob + math.log(c_prev)) < 1e-9
        assert max_diff(pipe.transition_log_prob(traj, k).detach(), traj.log_probs[k]) < 1e-10


def test_flow_sde_runs_on_a_discrete_chain_with_log_probabilities() -> None:
    """On any chain flow-sde walks the rectified flow of τ = σ/(α + σ); its log-densities still match."""
    pipe = ddkit.Pipeline.from_config({"sampler": {"name": "flow-sde", "steps": 6}, "model": Net()})
    traj = pipe.rollout(4, generator=gens([1, 2, 3, 4]), y=torch.tensor([0, 1, 2, 0]))
    assert torch.isfinite(traj.x).all()
    for step in traj.stochastic_steps:
        got = pipe.transition_log_prob(traj, step)
        assert max_diff(got, traj.log_probs[step]) < 1e-4


# -- the examples ----------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize(("example", "train"), [("ddpo_toy", "ddpo"), ("grpo_flow", "grpo")])
def test_the_examples_run_and_update_the_model(example: str, train: str) -> None:
    module = load_module(f"rl_{example}", Path(__file__).parent.parent / "examples" / "rl" / f"{example}.py")
    pipe = module.pretrained(steps=20)
    before = [p.detach().clone() for p in pipe.model.parameters()]
    options = {"groups": 4, "group": 4} if train == "grpo" else {"batch": 16}
    rewards = getattr(module, train)(pipe, iterations=2, epochs=1, **options)
    assert len(rewards) == 2
    assert all(math.isfinite(r) for r in rewards)
    assert any(not torch.equal(a, b) for a, b in zip(before, pipe.model.parameters()))
    assert math.isfinite(module.mean_reward(pipe, n=64))
