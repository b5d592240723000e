"""Every Gaussian path end to end: trained by the Trainer, sampled by every sampler, saved and loaded.

A third party's path, registered by a fake plugin, gets every sampler and guidance too.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

import ddkit
from ddkit import CompositionError, Record
from ddkit.data.toys import sample_toy, sliced_wasserstein
from ddkit.diffusion.paths import PathSchedule
from ddkit.testing import fake_plugin, fresh_registry

#: path -> (schedule, parameterization, resampler)
CASES: dict[str, tuple[dict[str, Any], dict[str, Any], dict[str, Any]]] = {
    "rectified-flow": (
        {"name": "rectified-flow", "shift": 2.0},
        {"name": "velocity"},
        {"name": "logit-normal"},
    ),
    "edm": ({"name": "edm"}, {"name": "edm"}, {"name": "log-normal"}),
    "vp-continuous": ({"name": "vp-continuous"}, {"name": "v", "clip_denoised": False}, {"name": "uniform"}),
}
STEPS = {"heun": 6, "plms": 9}  # about 10 model evaluations each


@pytest.fixture(scope="module")
def trained() -> dict[str, ddkit.Pipeline]:
    pipes = {}
    for name, (schedule, param, resampler) in CASES.items():
        torch.manual_seed(0)
        pipe = ddkit.Pipeline.from_config(
            {
                "schedule": schedule,
                "parameterization": param,
                "model": {"name": "mlp", "dim": 2},
                "sampler": {"name": "ddim", "steps": 10},
                "resampler": resampler,
            }
        )
        ddkit.Trainer(pipe, "gaussians", batch_size=256, lr=2e-3, seed=0, ema_rates=()).train(600)
        pipes[name] = pipe
    return pipes


@pytest.mark.parametrize("path", list(CASES))
def test_each_path_trains_and_every_sampler_lands_near_the_data(
    trained: dict[str, ddkit.Pipeline], path: str
) -> None:
    pipe = trained[path]
    data, _ = sample_toy("gaussians", 2000, seed=1)
    noise_floor = sliced_wasserstein(data, torch.randn(2000, 2) * float(data.std()))
    x_T = pipe.noise(2000, generator=torch.Generator().manual_seed(3))
    distances = {}
    for sampler in ddkit.names("sampler"):
        out = pipe.with_sampler(sampler, steps=STEPS.get(sampler, 10)).sample(
            x_T=x_T, generator=torch.Generator().manual_seed(4)
        )
        assert torch.isfinite(out).all(), f"{sampler} on {path} gave non-finite samples"
        distances[sampler] = sliced_wasserstein(out, data)
    # A short training (600 steps): no sampler blows up (each beats Gaussian noise of the data's
    # scale), and the model has learned the data (the best sampler lands well inside that).
    worst = max(distances, key=distances.__getitem__)
    assert distances[worst] < noise_floor, f"{worst} on {path}: {distances} vs noise {noise_floor:.3f}"
    assert min(distances.values()) < 0.5 * noise_floor, f"{path} did not learn: {distances}"


@pytest.mark.parametrize("path", list(CASES))
def test_each_path_saves_and_loads(trained: dict[str, ddkit.Pipeline], path: str, tmp_path: Path) -> None:
    pipe = trained[path]
    pipe.save(tmp_path / "p")
    again = ddkit.Pipeline.load(tmp_path / "p")
    assert type(again.schedule) is type(pipe.schedule)
    assert again.schedule.params == pipe.schedule.params
    x_T = pipe.noise(16, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(again.sample(x_T=x_T), pipe.sample(x_T=x_T))


class Trig(PathSchedule):
    """α = cos(πt/2), σ = sin(πt/2), written as a plugin author would (docs/plugins.md)."""

    def __init__(self, timesteps: int = 1000) -> None:
        super().__init__(timesteps, name="trig")

    def alpha_sigma(self, t: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return np.cos(np.pi * t / 2), np.sin(np.pi * t / 2)


def test_third_party_path_runs_every_sampler_and_guidance() -> None:
    with fresh_registry(discover=True) as registry:
        registry.register(
            fake_plugin(schedule=[Record("trig", Trig, "Trigonometric path.")]), distribution="trig-paths"
        )
        torch.manual_seed(0)
        pipe = ddkit.Pipeline.from_config(
            {
                "schedule": {"name": "trig", "timesteps": 200},
                "parameterization": {"name": "velocity"},
                "model": {"name": "mlp", "dim": 2, "num_classes": 8},
                "sampler": {"name": "ddim", "steps": 8},
                "guidance": [{"name": "classifier-free", "scale": 2.0}],
            }
        )
        ddkit.Trainer(
            pipe, "gaussians", batch_size=128, lr=2e-3, seed=0, ema_rates=(), cond_dropout=0.1
        ).train(100)
        y = torch.arange(8).repeat(4)
        for sampler in ddkit.names("sampler"):
            out = pipe.with_sampler(sampler, steps=STEPS.get(sampler, 6)).sample(
                32, y=y, generator=torch.Generator().manual_seed(0)
            )
            assert out.shape == (32, 2), sampler
            assert torch.isfinite(out).all(), sampler


@pytest.mark.parametrize("config", ["flow-2d.toml", "edm-2d.toml"])
def test_cli_trains_and_samples_a_path_config(config: str, tmp_path: Path) -> None:
    from ddkit.cli import main

    root = Path(__file__).resolve().parents[1]
    out = tmp_path / "run"
    assert (
        main(["train", str(root / "examples" / "configs" / config), "--out", str(out), "--steps", "30"]) == 0
    )
    assert main(["sample", str(out / "pipeline"), "--n", "64", "--npz", str(tmp_path / "s.npz")]) == 0
    samples = np.load(tmp_path / "s.npz")["arr_0"]
    assert samples.shape == (64, 2)
    assert np.isfinite(samples).all()


def test_velocity_on_a_discrete_chain_is_refused_before_work() -> None:
    with pytest.raises(CompositionError, match="needs a continuous path"):
        ddkit.Pipeline.from_config(
            {
                "schedule": {"name": "cosine"},
                "parameterization": {"name": "velocity"},
                "model": {"name": "mlp", "dim": 2},
            }
        )


def test_noise_and_x_T_are_the_paths_start() -> None:
    pipe = ddkit.Pipeline.from_config(
        {"schedule": {"name": "edm"}, "parameterization": {"name": "edm"}, "model": {"name": "mlp", "dim": 2}}
    )
    x_T = pipe.noise(4096, generator=torch.Generator().manual_seed(0))
    assert 75.0 < float(x_T.std()) < 85.0  # σ_max·ε, up to sqrt(1 + σ_max²) / σ_max


def test_a_none_parameter_survives_save_and_load(tmp_path: object) -> None:
    """TOML has no null: lambda_min=None (whole chain; default "auto") is written "none" and read back."""
    from pathlib import Path

    pipe = ddkit.Pipeline.from_config(
        {
            "schedule": {"name": "cosine", "timesteps": 100},
            "parameterization": {"name": "v", "clip_denoised": False},
            "model": {"name": "mlp", "dim": 2},
            "sampler": {"name": "ddim", "steps": 5, "lambda_min": None},
        }
    )
    assert 'lambda_min = "none"' in pipe.to_toml()
    out = Path(str(tmp_path)) / "p"
    pipe.save(out)
    again = ddkit.Pipeline.load(out)
    assert again.sampler.lambda_min is None
    x_T = pipe.noise(4, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(again.sample(x_T=x_T), pipe.sample(x_T=x_T))
