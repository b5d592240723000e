"""GRPO on a rectified-flow toy (Flow-GRPO, Liu et al. 2025): group-relative advantages, flow-sde rollouts.

A small flow model (velocity prediction on the rectified-flow path) is first trained on
eight Gaussians on a circle. Its ODE has no log-probabilities, so rollouts use ``flow-sde``,
Flow-GRPO's SDE with the same marginals; each group of ``group`` samples shares its starting
noise (as DanceGRPO does), and a sample's advantage is its reward standardized within its
group. PPO-clip then fine-tunes toward mode ``TARGET``::

    python examples/rl/grpo_flow.py           # about 20 s on one CPU thread
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

import ddkit

TARGET = 0  # the mode the reward prefers, of eight on a circle of radius 2


def ring8(n: int, g: torch.Generator) -> Tensor:
    """n points from eight Gaussians (std 0.1) evenly placed on a circle of radius 2."""
    angle = torch.randint(0, 8, (n,), generator=g) * (2 * math.pi / 8)
    return 2 * torch.stack([angle.cos(), angle.sin()], 1) + 0.1 * torch.randn(n, 2, generator=g)


def reward(x: Tensor) -> Tensor:
    """Minus the distance to mode TARGET: higher is closer."""
    angle = TARGET * 2 * math.pi / 8
    center = 2 * torch.tensor([math.cos(angle), math.sin(angle)])
    return -(x - center).square().sum(dim=1).sqrt()


def pretrained(seed: int = 0, steps: int = 800) -> ddkit.Pipeline:
    """A small rectified-flow model of ring8, trained from scratch; flow-sde (10 steps) samples it."""
    torch.manual_seed(seed)
    pipe = ddkit.Pipeline.from_config(
        {
            "model": {"name": "mlp", "dim": 2, "hidden": 64, "depth": 2},
            "schedule": {"name": "rectified-flow", "timesteps": 1000},
            "parameterization": {"name": "velocity"},
            "sampler": {"name": "flow-sde", "steps": 10, "noise_level": 0.7, "lambda_min": None},
        }
    )
    opt = torch.optim.Adam(pipe.model.parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        loss = pipe.loss(ring8(256, g), generator=g)["loss"].mean()
        opt.zero_grad()
        torch.autograd.backward(loss)
        opt.step()
    return pipe


def grpo(
    pipe: ddkit.Pipeline,
    *,
    iterations: int = 30,
    groups: int = 32,
    group: int = 8,
    epochs: int = 2,
    clip: float = 1e-1,
    lr: float = 3e-4,
    seed: int = 0,
) -> list[float]:
    """PPO-clip with group-relative advantages; returns the mean reward of each iteration's rollout."""
    pipe.model.eval()  # no dropout, so the ratio is exactly 1 before the first update
    opt = torch.optim.Adam(pipe.model.parameters(), lr=lr)
    g = torch.Generator().manual_seed(seed)
    history = []
    for _ in range(iterations):
        x_T = torch.randn(groups, 1, 2, generator=g).expand(groups, group, 2).reshape(-1, 2)
        traj = pipe.rollout(x_T=x_T, generator=g)
        r = reward(traj.samples).reshape(groups, group)
        history.append(r.mean().item())
        advantage = ((r - r.mean(1, keepdim=True)) / (r.std(1, keepdim=True) + 1e-4)).flatten()
        for _ in range(epochs):
            opt.zero_grad()
            for k in traj.stochastic_steps:
                ratio = torch.exp(pipe.transition_log_prob(traj, k) - traj.log_probs[k])
                clipped = ratio.clamp(1 - clip, 1 + clip)
                loss = torch.max(-advantage * ratio, -advantage * clipped).mean()
                torch.autograd.backward(loss / len(traj.stochastic_steps))
            opt.step()
    return history


def mean_reward(pipe: ddkit.Pipeline, n: int = 2000, seed: int = 123) -> float:
    """The mean reward of n fresh samples (drawn with flow-sde)."""
    return reward(pipe.sample(n, generator=torch.Generator().manual_seed(seed))).mean().item()


if __name__ == "__main__":
    torch.set_num_threads(1)
    pipe = pretrained()
    print(f"mean reward before: {mean_reward(pipe):.3f}")
    grpo(pipe)
    print(f"mean reward after:  {mean_reward(pipe):.3f}")
