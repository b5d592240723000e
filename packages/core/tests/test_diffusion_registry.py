"""Every schedule, parameterization and resampler core registers builds by name and trains end to end."""

from __future__ import annotations

import importlib
import itertools

import pytest
import torch
from torch import Tensor, nn

import ddkit
from ddkit import _builtins
from ddkit.diffusion import VARIANCES, losses, p_mean_variance
from ddkit.protocols import Parameterization, Schedule, TimestepResampler

torch.set_num_threads(1)

HOOKS = {
    "schedule": _builtins.ddkit_schedules,
    "parameterization": _builtins.ddkit_parameterizations,
    "resampler": _builtins.ddkit_resamplers,
}


@pytest.mark.parametrize("kind", sorted(HOOKS))
def test_records_are_lazy_documented_and_resolve(kind: str) -> None:
    records = HOOKS[kind]()
    assert records
    assert set(ddkit.names(kind)) >= {r.name for r in records}
    for record in records:
        assert isinstance(record.factory, str)
        assert record.summary.endswith(".")
        assert record.paper or record.name == "explicit"
        module, attr = record.factory.split(":")
        assert callable(getattr(importlib.import_module(module), attr))


class Net(nn.Module):
    def __init__(self, out_channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2, out_channels, 3, padding=1)

    def forward(self, x: Tensor, t: Tensor) -> Tensor:
        return self.conv(x) * torch.cos(t.float() / 50).view(-1, 1, 1, 1)


def schedule_params(name: str) -> dict[str, object]:
    return {"betas": [0.01 * (i + 1) for i in range(30)]} if name == "explicit" else {"timesteps": 30}


@pytest.mark.parametrize("schedule", ["linear", "cosine", "scaled-linear", "sigmoid", "explicit"])
@pytest.mark.parametrize("zts", [False, True])
def test_every_schedule_trains_and_samples(schedule: str, zts: bool) -> None:
    sched = ddkit.create("schedule", schedule, zero_terminal_snr=zts, **schedule_params(schedule))
    assert isinstance(sched, Schedule)
    assert sched.timesteps == 30
    _train_and_sample(sched.process(), "v", "fixed-small", "loss-second-moment", "mse")


@pytest.mark.parametrize(
    ("prediction", "variance"), list(itertools.product(["epsilon", "x0", "previous-x", "v"], VARIANCES))
)
def test_every_parameterization_trains_and_samples(prediction: str, variance: str) -> None:
    process = ddkit.create("schedule", "cosine", timesteps=30).process()
    loss = "hybrid" if variance.startswith("learned") else "mse"
    _train_and_sample(process, prediction, variance, "uniform", loss)


@pytest.mark.parametrize("resampler", ["uniform", "loss-second-moment"])
@pytest.mark.parametrize("loss", ["rescaled-mse", "kl", "rescaled-kl"])
def test_every_resampler_and_loss(resampler: str, loss: str) -> None:
    process = ddkit.create("schedule", "linear", timesteps=30).process().respaced("10")
    _train_and_sample(process, "epsilon", "learned-range", resampler, loss)


def _train_and_sample(
    process: object, prediction: str, variance: str, resampler_name: str, loss: str
) -> None:
    from ddkit.diffusion import GaussianProcess

    assert isinstance(process, GaussianProcess)
    torch.manual_seed(0)
    param = ddkit.create("parameterization", prediction, variance=variance)
    assert isinstance(param, Parameterization)
    resampler = ddkit.create("resampler", resampler_name, timesteps=process.num_timesteps)
    assert isinstance(resampler, TimestepResampler)
    net = Net(param.output_channels(2))
    gen = torch.Generator().manual_seed(0)
    x0 = torch.rand(6, 2, 4, 4, generator=gen) * 2 - 1
    for _ in range(2):
        t, weights = resampler.sample(6, generator=gen)
        terms = losses.training_losses(process, param, net, x0, t, loss=loss)
        resampler.update(t, terms["loss"].detach())
        objective = losses.weighted_mean(terms["loss"], weights)
        net.zero_grad()
        objective.backward()
        with torch.no_grad():  # plain SGD (building a torch.optim optimizer imports torch._dynamo: slow)
            for p in net.parameters():
                assert p.grad is not None
                p -= 1e-3 * p.grad
        assert torch.isfinite(objective)
    # A few ancestral steps from the top of the chain.
    x = torch.randn(3, 2, 4, 4, generator=gen)
    with torch.no_grad():
        for step in reversed(range(process.num_timesteps - 3, process.num_timesteps)):
            pred = p_mean_variance(process, param, net, x, step)
            assert pred.mean is not None
            assert pred.log_variance is not None
            x = pred.mean + (0.5 * pred.log_variance).exp() * torch.randn(x.shape, generator=gen)
    assert torch.isfinite(x).all()
