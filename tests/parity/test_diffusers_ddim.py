"""ddkit's ``ddim`` (eta 0) on a diffusers UNet2DModel + DDIMScheduler folder equals diffusers' own loop.

The folder is built and saved here (a tiny random UNet2DModel); ddkit loads it through
``from_diffusers`` and diffusers through ``from_pretrained``, both in float64, and both start
from the same x_T. Timestep mapping: diffusers' ``timestep_spacing="leading"`` is ddkit's
``leading`` spacing (with ``steps_offset`` > 0, the same grid as explicit steps), and
``"trailing"`` is ddkit's ``trailing`` where T is a multiple of the step count (diffusers' DDIM
steps to t − T/N, which is then the next visited step). ``set_alpha_to_one=True`` is ddkit's
last step, which lands on ᾱ = 1. diffusers keeps ᾱ in float32, hence 1e-5 rather than 1e-12.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from diffusers import DDIMScheduler, UNet2DModel

from ddkit_diffusers import from_diffusers
from ddkit_diffusers.testing import save_pipeline_folder, seeded, tiny_unet

pytestmark = pytest.mark.parity
torch.set_num_threads(1)

STEPS = 10

CASES: list[dict[str, Any]] = [
    {"prediction_type": "epsilon"},
    {"prediction_type": "v_prediction"},
    {"prediction_type": "epsilon", "steps_offset": 1, "beta_schedule": "scaled_linear", "beta_end": 0.012},
    {
        "prediction_type": "v_prediction",
        "timestep_spacing": "trailing",
        "rescale_betas_zero_snr": True,
        "beta_schedule": "squaredcos_cap_v2",
    },
]


def diffusers_ddim(net: Any, scheduler: DDIMScheduler, x_T: torch.Tensor) -> torch.Tensor:
    """diffusers' DDIMPipeline loop: set_timesteps, then one scheduler.step per timestep (eta 0)."""
    scheduler.set_timesteps(STEPS)
    x = x_T.clone()
    with torch.no_grad():
        for t in scheduler.timesteps:
            x = scheduler.step(net(x, t).sample, t, x, eta=0.0).prev_sample
    return x


@pytest.mark.parametrize("options", CASES, ids=lambda c: "-".join(f"{k}={v}" for k, v in c.items()))
def test_ddim_matches_diffusers_ddim_loop(tmp_path: Path, options: dict[str, Any]) -> None:
    scheduler = DDIMScheduler(clip_sample=False, set_alpha_to_one=True, **options)
    root = save_pipeline_folder(tmp_path / "ddim", seeded(0, tiny_unet), scheduler)
    pipe = from_diffusers(root, sampler={"steps": STEPS}, model={"dtype": "float64"})
    assert pipe.config["sampler"]["name"] == "ddim"
    net = UNet2DModel.from_pretrained(root / "unet", torch_dtype=torch.float64).eval()
    x_T = torch.randn(3, 3, 8, 8, generator=torch.Generator().manual_seed(1), dtype=torch.float64)

    want = diffusers_ddim(net, DDIMScheduler.from_pretrained(root / "scheduler"), x_T)
    got = pipe.sample(x_T=x_T)

    assert got.dtype == torch.float64
    assert want.abs().max() > 0.1  # a real sample, not a collapsed one
    torch.testing.assert_close(got, want, rtol=0, atol=1e-5)
