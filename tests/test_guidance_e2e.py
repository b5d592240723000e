"""End to end on a class-conditional 2-D toy: guidance makes samples land in the requested class.

Four overlapping Gaussian blobs (centres (±0.5, ±0.5), σ = 0.4): even the Bayes classifier is
right only ~80% of the time on real data, so conditional samples are far from 90% "correct";
guidance tilts each class towards the region where it dominates. A denoiser ``mlp`` trained with
condition dropout, a clean-data classifier as the judge, and a noisy-data classifier for
classifier guidance are all trained here, in a few seconds on CPU.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import pytest
import torch
from torch import Tensor, nn

import ddkit
from ddkit.denoiser import Denoiser
from ddkit.diffusion import GaussianParameterization, GaussianProcess
from ddkit.diffusion.losses import training_losses
from ddkit_guidance import ClassifierFreeGuidance, ClassifierGuidance, drop_labels

pytestmark = pytest.mark.slow

K = 4  # classes; the null class of the model is K
CENTRES = torch.tensor([[0.5, 0.5], [-0.5, 0.5], [-0.5, -0.5], [0.5, -0.5]])
SIGMA = 0.4
T = 1000
STEPS = 50  # sampling steps
N = 800  # samples per evaluation, K classes in turn


def blobs(n: int, gen: torch.Generator) -> tuple[Tensor, Tensor]:
    y = torch.randint(0, K, (n,), generator=gen)
    return CENTRES[y] + SIGMA * torch.randn(n, 2, generator=gen), y


def train(model: nn.Module, loss_fn: Any, steps: int, lr: float) -> nn.Module:
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    for _ in range(steps):
        opt.zero_grad(set_to_none=True)
        loss_fn().backward()
        opt.step()
        sched.step()
    return model.eval().requires_grad_(False)


@pytest.fixture(scope="module")
def toy() -> dict[str, Any]:
    torch.manual_seed(0)
    torch.set_num_threads(1)
    start = time.monotonic()
    gen = torch.Generator().manual_seed(0)
    process = GaussianProcess(np.linspace(1e-4, 0.02, T))
    param = GaussianParameterization(clip_denoised=False)

    model = ddkit.create("model", "mlp", dim=2, hidden=64, depth=2, num_classes=K)

    def denoising_loss() -> Tensor:
        x0, y = blobs(256, gen)
        t = torch.randint(0, T, (256,), generator=gen)
        y = drop_labels(y, 0.2, K, generator=gen)  # condition dropout: the null class K
        return training_losses(process, param, model, x0, t, model_kwargs={"y": y})["loss"].mean()

    train(model, denoising_loss, 1000, 3e-3)

    judge = nn.Sequential(nn.Linear(2, 32), nn.SiLU(), nn.Linear(32, K))

    def clean_loss() -> Tensor:
        x0, y = blobs(256, gen)
        return nn.functional.cross_entropy(judge(x0), y)

    train(judge, clean_loss, 400, 1e-2)

    noisy = ddkit.create("model", "mlp", dim=2, hidden=32, depth=1, out_dim=K)  # (x_t, t) -> logits

    def noisy_loss() -> Tensor:
        x0, y = blobs(256, gen)
        t = torch.randint(0, T, (256,), generator=gen)
        x_t = process.q_sample(x0, t, torch.randn(x0.shape, generator=gen))
        return nn.functional.cross_entropy(noisy(x_t, t), y)

    train(noisy, noisy_loss, 600, 3e-3)
    print(f"trained in {time.monotonic() - start:.1f} s")
    return {"process": process, "param": param, "model": model, "judge": judge, "noisy": noisy}


def sample(
    toy: dict[str, Any], sampler_name: str, guidances: list[Any], y: Tensor, model: Any = None
) -> Tensor:
    """``ddpm`` (guidance in the mean form) or ``ddim`` with η = 0 (score form), 50 steps."""
    sampler = ddkit.create("sampler", sampler_name, steps=STEPS)
    denoiser = Denoiser(
        model or toy["model"],
        toy["param"],
        toy["process"],
        guidances=guidances,
        sampler_forms=sampler.guidance_forms,
        conditioning={"y": y},
    )
    gen = torch.Generator().manual_seed(1)
    x_T = torch.randn(len(y), 2, generator=gen)
    with torch.no_grad():
        return sampler.sample(denoiser, x_T, generator=gen)


def accuracy(toy: dict[str, Any], x: Tensor, y: Tensor) -> float:
    with torch.no_grad():
        return float((toy["judge"](x).argmax(-1) == y).float().mean())


def test_the_toy_is_hard(toy: dict[str, Any]) -> None:
    x, y = blobs(4000, torch.Generator().manual_seed(5))
    assert 0.72 < accuracy(toy, x, y) < 0.88  # real data: the classes overlap


def test_classifier_free_guidance_lands_in_the_requested_class(toy: dict[str, Any]) -> None:
    y = torch.arange(N) % K
    acc = {}
    for w in (0.0, 1.0, 3.0):
        acc[w] = accuracy(toy, sample(toy, "ddpm", [ClassifierFreeGuidance(w)], y), y)
    print("classifier-free accuracy by scale:", acc)
    assert acc[3.0] >= 0.90
    assert acc[1.0] < 0.90  # conditional sampling alone is not enough on this toy
    assert acc[3.0] >= acc[1.0] + 0.07
    assert acc[0.0] < 0.40  # unconditional: about 1 in K


def test_classifier_guidance_with_a_noisy_classifier(toy: dict[str, Any]) -> None:
    y = torch.arange(N) % K
    model = toy["model"]

    def unconditional(x: Tensor, t: Tensor, y: Tensor) -> Tensor:
        return model(x, t, y=torch.full_like(y, K))  # the classifier sees y, the model does not

    acc = {"unguided": accuracy(toy, sample(toy, "ddpm", [], y, unconditional), y)}
    for sampler in ("ddpm", "ddim"):  # the mean form, the score form
        guidance = ClassifierGuidance(toy["noisy"], scale=3.0)
        acc[sampler] = accuracy(toy, sample(toy, sampler, [guidance], y, unconditional), y)
    print("classifier guidance accuracy:", acc)
    assert acc["unguided"] < 0.40
    assert acc["ddpm"] >= 0.90
    assert acc["ddim"] >= 0.90
