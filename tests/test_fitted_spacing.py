"""ddkit.fit_spacing: a time grid fitted to the model (Align Your Steps / LD3 style).

On the 8-Gaussian ring's exact denoiser (bench/_toy.py) the fitted grid must be a valid spacing,
reproducible, and closer to the teacher than the default grid on noise it was not fitted on.
Here (tests/) because its samplers and default teacher come from ddkit-samplers.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from _modules import load_module

import ddkit
from ddkit.diffusion import GaussianProcess

ROOT = Path(__file__).resolve().parent.parent
toy = load_module("bench_toy_fitted", ROOT / "bench" / "_toy.py")
T = 1000


def exact_pipe(schedule: str = "cosine") -> ddkit.Pipeline:
    """A pipeline whose model is the ring's closed-form ε (no training, no training error)."""
    model = toy.ExactRing(GaussianProcess(toy.betas_for(schedule, T)).alphas_cumprod)
    return ddkit.Pipeline.from_config(
        {
            "schedule": {"name": schedule, "timesteps": T},
            "parameterization": {"name": "epsilon", "variance": "fixed-small", "clip_denoised": False},
            "sampler": {"name": "dpm-solver++", "steps": 5},
        },
        model=model,
    )


def held_out_mse(pipe: ddkit.Pipeline, name: str, params: dict[str, Any], seed: int = 1) -> float:
    """Paired mean squared distance to a 200-step DPM-Solver++(3M) solve from the same fresh x_T."""
    x = pipe.noise(512, generator=torch.Generator().manual_seed(seed))
    out = pipe.with_sampler(name, **params).sample(x_T=x)
    default = pipe.with_sampler(
        name, steps=len(params["spacing"]) if "spacing" in params else params["steps"]
    )
    start = default.sampler._checked_plan(default.denoiser()).alpha_bars[0]
    lam = 0.5 * torch.log(torch.tensor(start / (1.0 - start))).item()
    ref = pipe.with_sampler("dpm-solver++", steps=200, order=3, spacing="logsnr", lambda_min=lam - 1e-9)
    return float((out - ref.sample(x_T=x)).square().mean())


@pytest.mark.parametrize(
    ("schedule", "name"), [("cosine", "dpm-solver++"), ("linear", "ddim"), ("cosine", "deis")]
)
def test_fitted_grid_is_valid_and_beats_the_default_on_held_out_noise(schedule: str, name: str) -> None:
    pipe = exact_pipe(schedule)
    levels = ddkit.fit_spacing(pipe, 5, sampler=name, samples=128, budget=40, seed=0)
    assert len(levels) == 5
    assert all(isinstance(v, int) for v in levels)
    assert levels == sorted(set(levels), reverse=True)  # distinct, in the order visited
    assert levels[-1] >= 0
    assert levels[0] < T
    default_plan = pipe.with_sampler(name, steps=5)
    top = default_plan.sampler._checked_plan(default_plan.denoiser()).timesteps[0]
    assert levels[0] == round(top)  # the start stays the sampler's own
    fitted = held_out_mse(pipe, name, {"spacing": levels})
    default = held_out_mse(pipe, name, {"steps": 5})
    assert fitted < 0.8 * default, (levels, fitted, default)


def test_fit_is_reproducible_for_a_seed() -> None:
    pipe = exact_pipe()
    a = ddkit.fit_spacing(pipe, 4, samples=64, budget=20, seed=3)
    b = ddkit.fit_spacing(pipe, 4, samples=64, budget=20, seed=3)
    assert a == b
    assert ddkit.sampling.fit_spacing is ddkit.fit_spacing


def test_fitted_levels_round_trip_through_save_and_load(tmp_path: Path) -> None:
    pytest.importorskip("ddkit_models")
    pipe = ddkit.Pipeline.from_config(
        {
            "schedule": {"name": "cosine", "timesteps": 200},
            "parameterization": {"name": "epsilon", "variance": "fixed-small", "clip_denoised": False},
            "model": {"name": "mlp", "dim": 2},
            "sampler": {"name": "ipndm", "steps": 4},
        }
    )
    levels = ddkit.fit_spacing(pipe, 4, samples=32, budget=12, teacher_steps=40)
    fitted = pipe.with_sampler("ipndm", spacing=levels)
    fitted.save(tmp_path / "run")
    back = ddkit.Pipeline.load(tmp_path / "run")
    assert list(back.config["sampler"]["spacing"]) == levels
    x = pipe.noise(8, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(back.sample(x_T=x), fitted.sample(x_T=x))


def test_fits_path_times_on_rectified_flow() -> None:
    pytest.importorskip("ddkit_models")
    pipe = ddkit.Pipeline.from_config(
        {
            "schedule": {"name": "rectified-flow", "timesteps": 200},
            "parameterization": {"name": "velocity"},
            "model": {"name": "mlp", "dim": 2},
            "sampler": {"name": "euler", "steps": 4},
        }
    )
    levels = ddkit.fit_spacing(pipe, 4, samples=32, budget=12, teacher_steps=40)
    assert len(levels) == 4
    assert all(isinstance(v, float) and 0.0 < v <= 1.0 for v in levels)
    assert levels == sorted(set(levels), reverse=True)
    out = pipe.with_sampler("euler", spacing=levels).sample(8)
    assert out.shape == (8, 2)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize(
    ("sampler", "options"),
    [
        ("ddpm", None),
        ("euler-ancestral", None),
        ("dpm-solver++", {"sde": True}),
        ("ddim", {"eta": 1.0}),
    ],
)
def test_refuses_stochastic_samplers_before_any_work(sampler: str, options: dict[str, Any] | None) -> None:
    pipe = exact_pipe()
    with pytest.raises(ddkit.CompositionError, match="draws noise while sampling"):
        ddkit.fit_spacing(pipe, 5, sampler=sampler, options=options)
    assert pipe.model.calls == 0


def test_refuses_flow_sde() -> None:
    pytest.importorskip("ddkit_models")
    pipe = ddkit.Pipeline.from_config(
        {
            "schedule": {"name": "rectified-flow"},
            "parameterization": {"name": "velocity"},
            "model": {"name": "mlp", "dim": 2},
        }
    )
    with pytest.raises(ddkit.CompositionError, match="deterministic sampler"):
        ddkit.fit_spacing(pipe, 5, sampler="flow-sde")


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"steps": 1}, ddkit.InputError, "'steps' must be at least 2"),
        ({"steps": 0}, ddkit.InputError, r"'steps' must be a positive int \(got 0\)"),
        ({"steps": 2.5}, ddkit.InputTypeError, "'steps' must be a positive int"),
        ({"samples": 0}, ddkit.InputError, "'samples' must be a positive int"),
        ({"budget": -1}, ddkit.InputError, "'budget' must be a positive int"),
        ({"seed": "0"}, ddkit.InputTypeError, "'seed' must be an int"),
        ({"options": {"spacing": "karras"}}, ddkit.InputError, "must not set spacing"),
        ({"sampler": 3}, ddkit.InputTypeError, "'sampler' must be a registered sampler name"),
        ({"sampler": "no-such-sampler"}, ddkit.UnknownPluginError, "no-such-sampler"),
    ],
)
def test_refuses_bad_input_before_any_work(
    kwargs: dict[str, Any], error: type[Exception], match: str
) -> None:
    pipe = exact_pipe()
    args = {"steps": 5, **kwargs}
    steps = args.pop("steps")
    with pytest.raises(error, match=match):
        ddkit.fit_spacing(pipe, steps, **args)
    assert pipe.model.calls == 0
    with pytest.raises(ddkit.InputTypeError, match=r"'pipe' must be a ddkit\.Pipeline"):
        ddkit.fit_spacing(object(), 5)  # type: ignore[arg-type]
