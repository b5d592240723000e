"""from_diffusers and the scheduler mapping: what each config becomes, and what is refused by name."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from diffusers import (
    DDIMScheduler,
    DDPMScheduler,
    DPMSolverMultistepScheduler,
    EulerDiscreteScheduler,
    PNDMScheduler,
)

import ddkit
from ddkit import ConfigError
from ddkit_diffusers import from_diffusers, pipeline_config, scheduler_tables
from ddkit_diffusers.testing import save_pipeline_folder, seeded, tiny_unet


def _config(scheduler: Any) -> dict[str, Any]:
    return {**dict(scheduler.config), "_class_name": type(scheduler).__name__}


@pytest.mark.parametrize(
    "kwargs",
    [
        {"beta_schedule": "linear"},
        {"beta_schedule": "linear", "num_train_timesteps": 500, "beta_end": 0.03},
        {"beta_schedule": "scaled_linear", "beta_start": 0.00085, "beta_end": 0.012},
        {"beta_schedule": "squaredcos_cap_v2"},
        {"beta_schedule": "scaled_linear", "rescale_betas_zero_snr": True, "beta_end": 0.012},
        {"trained_betas": np.linspace(1e-4, 0.05, 200).tolist(), "num_train_timesteps": 200},
    ],
)
def test_each_beta_schedule_gives_diffusers_alphas_cumprod(kwargs: dict[str, Any]) -> None:
    scheduler = DDPMScheduler(**kwargs)
    table = scheduler_tables(_config(scheduler))["schedule"]
    schedule = ddkit.create("schedule", table.pop("name"), **table)
    want = scheduler.alphas_cumprod.double().numpy()
    # diffusers keeps its tables in float32; ddkit computes in float64.
    np.testing.assert_allclose(schedule.alphas_cumprod, want, rtol=2e-6, atol=1e-7)


@pytest.mark.parametrize(
    ("prediction", "variance", "want"),
    [
        ("epsilon", "fixed_small", ("epsilon", "fixed-small")),
        ("v_prediction", "fixed_large", ("v", "fixed-large")),
        ("sample", "learned_range", ("x0", "learned-range")),
    ],
)
def test_prediction_and_variance_types(prediction: str, variance: str, want: tuple[str, str]) -> None:
    scheduler = DDPMScheduler(prediction_type=prediction, variance_type=variance, clip_sample=True)
    param = scheduler_tables(_config(scheduler))["parameterization"]
    assert (param["name"], param["variance"], param["clip_denoised"]) == (*want, True)


def _sampler(scheduler: Any, steps: int | None = None) -> dict[str, Any]:
    table = scheduler_tables(_config(scheduler), steps=steps)["sampler"]
    # diffusers walks the whole chain: where ddkit samplers take lambda_min, it is written as None.
    if table["name"] != "dpm-solver++":
        assert table.pop("lambda_min", None) is None
    return table


def test_samplers_and_spacings_follow_the_scheduler() -> None:
    assert _sampler(DDPMScheduler()) == {"name": "ddpm", "steps": None, "spacing": "leading"}
    ddim = _sampler(DDIMScheduler(timestep_spacing="trailing"), steps=10)
    assert ddim == {"name": "ddim", "steps": 10, "spacing": "trailing", "eta": 0.0}
    # diffusers adds steps_offset to the leading grid; ddkit gets that grid as explicit steps.
    offset = DDIMScheduler(steps_offset=1)
    offset.set_timesteps(10)
    assert _sampler(offset, steps=10)["spacing"] == sorted(offset.timesteps.tolist())
    assert _sampler(PNDMScheduler())["name"] == "plms"
    euler = _sampler(EulerDiscreteScheduler(use_karras_sigmas=True))
    assert (euler["name"], euler["spacing"], euler["steps"]) == ("euler", "karras", 50)
    offset_karras = EulerDiscreteScheduler(use_karras_sigmas=True, timestep_spacing="leading", steps_offset=1)
    karras = _sampler(offset_karras)
    assert (karras["spacing"], karras["steps"]) == ("karras", 50)  # Karras σ's ignore the offset grid
    dpm = _sampler(DPMSolverMultistepScheduler(solver_order=3, lambda_min_clipped=-5.1))
    assert dpm == {
        "name": "dpm-solver++",
        "steps": 20,
        "spacing": "linspace",
        "order": 3,
        "lower_order_final": True,
        "lambda_min": -5.1,
        "final_sigma": "zero",
    }
    assert _sampler(DPMSolverMultistepScheduler()).get("lambda_min") is None


@pytest.mark.parametrize(
    ("scheduler", "change", "message"),
    [
        (DDIMScheduler, {"thresholding": True}, "'thresholding' = True changes the numbers"),
        (DDPMScheduler, {"beta_schedule": "sigmoid"}, "'beta_schedule' 'sigmoid' has no ddkit schedule"),
        (DDPMScheduler, {"prediction_type": "flow"}, "'prediction_type' 'flow' is not one of"),
        (DDPMScheduler, {"clip_sample_range": 2.0}, "'clip_sample_range' 2.0"),
        (DDPMScheduler, {"brand_new_knob": 3}, "key 'brand_new_knob' .* is not understood"),
        (DPMSolverMultistepScheduler, {"algorithm_type": "sde-dpmsolver++"}, "'algorithm_type'"),
        (DPMSolverMultistepScheduler, {"use_dynamic_shifting": True}, "'use_dynamic_shifting' = True"),
        (EulerDiscreteScheduler, {"final_sigmas_type": "sigma_min"}, "'final_sigmas_type' 'sigma_min'"),
        (DDIMScheduler, {"_class_name": "LCMScheduler"}, "scheduler class 'LCMScheduler' is not mapped"),
    ],
)
def test_unmappable_scheduler_configs_are_refused_by_name(
    scheduler: Any, change: dict[str, Any], message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        scheduler_tables({**_config(scheduler()), **change})


def test_every_problem_is_listed_at_once() -> None:
    config = {**_config(DDIMScheduler()), "thresholding": True, "prediction_type": "flow"}
    with pytest.raises(ConfigError, match=r"\(2 problems\)") as caught:
        scheduler_tables(config)
    assert "'thresholding'" in str(caught.value)
    assert "'prediction_type'" in str(caught.value)


def _folder(tmp_path: Path, **components: Any) -> Path:
    return save_pipeline_folder(
        tmp_path / "pipe", seeded(0, tiny_unet), DDIMScheduler(clip_sample=False), extra_components=components
    )


def test_from_diffusers_builds_a_pipeline_and_overrides_update_it(tmp_path: Path) -> None:
    root = _folder(tmp_path, tokenizer=["transformers", "CLIPTokenizer"], requires_safety_checker=True)
    pipe = from_diffusers(root, sampler={"steps": 4}, model={"dtype": "float64"})
    assert {k: v for k, v in pipe.config["sampler"].items() if k != "lambda_min"} == {
        "name": "ddim",
        "steps": 4,
        "spacing": "leading",
        "eta": 0.0,
    }
    assert pipe.config["model"]["subfolder"] == "unet"
    assert pipe.sample_shape == (3, 8, 8)
    x_T = torch.randn(2, 3, 8, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    out = pipe.sample(x_T=x_T)
    assert out.shape == (2, 3, 8, 8)
    assert out.dtype == torch.float64
    assert torch.isfinite(out).all()
    replaced = from_diffusers(root, sampler={"name": "dpm-solver++", "steps": 3})
    assert replaced.config["sampler"]["name"] == "dpm-solver++"
    assert "spacing" not in replaced.config["sampler"]


def test_from_diffusers_refuses_before_loading(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="never downloads"):
        from_diffusers(tmp_path / "nowhere")
    with pytest.raises(ConfigError, match=r"has no model_index\.json"):
        from_diffusers(tmp_path)
    root = _folder(tmp_path, movq=["diffusers", "VQModel"], vae=["diffusers", "VQModel"])
    with pytest.raises(ConfigError) as caught:
        pipeline_config(root)
    assert "component 'movq'" in str(caught.value)
    assert "component 'vae' is a VQModel" in str(caught.value)
    index = json.loads((root / "model_index.json").read_text())
    index.pop("movq"), index.pop("vae")
    config = json.loads((root / "scheduler" / "scheduler_config.json").read_text())
    (root / "scheduler" / "scheduler_config.json").write_text(json.dumps({**config, "thresholding": True}))
    (root / "model_index.json").write_text(json.dumps(index))
    # The weights are never read: an unmappable scheduler stops it first.
    (root / "unet" / "diffusion_pytorch_model.safetensors").write_bytes(b"not weights")
    with pytest.raises(ConfigError, match="'thresholding' = True"):
        from_diffusers(root)
