"""DDPO (Black et al. 2023) on a 2-D toy: steer a pretrained eight-mode model toward one mode.

A small diffusion model is first trained on eight Gaussians on a circle; DDPO then
fine-tunes it with PPO-clip so that its samples move close to mode ``TARGET``. The PPO
ratio comes from ``pipe.transition_log_prob`` (one model forward per stored step, with
gradients) against the log-probabilities the rollout recorded::

    python examples/rl/ddpo_toy.py            # about 20 s on one CPU thread
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
    """A small ε-model of ring8, trained from scratch (a few seconds); DDIM η = 1 samples it."""
    torch.manual_seed(seed)
    pipe = ddkit.Pipeline.from_config(
        {
            "model": {"name": "mlp", "dim": 2, "hidden": 64, "depth": 2},
            "schedule": {"name": "linear", "timesteps": 1000},
            "parameterization": {"name": "epsilon", "clip_denoised": False},
            "sampler": {"name": "ddim", "steps": 20, "eta": 1.0},
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


def ddpo(
    pipe: ddkit.Pipeline,
    *,
    iterations: int = 30,
    batch: int = 256,
    epochs: int = 2,
    clip: float = 1e-1,
    lr: float = 3e-4,
    seed: int = 0,
) -> list[float]:
    """PPO-clip on whole trajectories (DDPO-IS); returns the mean reward of each iteration's rollout."""
    pipe.model.eval()  # no dropout, so the ratio is exactly 1 before the first update
    opt = torch.optim.Adam(pipe.model.parameters(), lr=lr)
    g = torch.Generator().manual_seed(seed)
    history = []
    for _ in range(iterations):
        traj = pipe.rollout(batch, generator=g)  # states and log p of each step, no gradients
        r = reward(traj.samples)
        history.append(r.mean().item())
        advantage = (r - r.mean()) / (r.std() + 1e-8)
        for _ in range(epochs):
            opt.zero_grad()
            for k in traj.stochastic_steps:  # the last DDIM step adds no noise
                ratio = torch.exp(pipe.transition_log_prob(traj, k) - traj.log_probs[k])
                clipped = ratio.clamp(1 - clip, 1 + clip)
                loss = torch.max(-advantage * ratio, -advantage * clipped).mean()
                torch.autograd.backward(loss / len(traj.stochastic_steps))
            opt.step()
    return history


def mean_reward(pipe: ddkit.Pipeline, n: int = 2000, seed: int = 123) -> float:
    """The mean reward of n fresh samples."""
    return reward(pipe.sample(n, generator=torch.Generator().manual_seed(seed))).mean().item()


if __name__ == "__main__":
    torch.set_num_threads(1)
    pipe = pretrained()
    print(f"mean reward before: {mean_reward(pipe):.3f}")
    ddpo(pipe)
    print(f"mean reward after:  {mean_reward(pipe):.3f}")
