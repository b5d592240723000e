"""A FlowMatchEulerDiscreteScheduler folder maps to ``rectified-flow`` + ``velocity``, and ddkit's
``euler`` on it equals diffusers' FlowMatchEuler loop.

diffusers steps x ← x + (σ_{i+1} − σ_i)·v with the network's velocity v = ε − x_0 at timestep
σ_i·T; ddkit's Euler in the variance-preserving scaling is the same update on any Gaussian path
(both reduce to x' = (σ'/σ)·x + (1 − σ'/σ)·x̂_0 on α = 1 − σ). ``from_diffusers`` writes the
scheduler's own times (shifted twice, as ``set_timesteps`` does) as the sampler's explicit spacing.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from diffusers import FlowMatchEulerDiscreteScheduler, UNet2DModel

from ddkit_diffusers import from_diffusers
from ddkit_diffusers.convert import flow_times
from ddkit_diffusers.testing import save_pipeline_folder, seeded, tiny_unet

pytestmark = pytest.mark.parity
torch.set_num_threads(1)

STEPS = 6


def diffusers_flow(root: Path, x_T: torch.Tensor) -> torch.Tensor:
    net = UNet2DModel.from_pretrained(root / "unet", torch_dtype=torch.float64).eval()
    scheduler = FlowMatchEulerDiscreteScheduler.from_pretrained(root / "scheduler")
    scheduler.set_timesteps(STEPS)
    x = x_T.clone()
    with torch.no_grad():
        for t in scheduler.timesteps:
            x = scheduler.step(net(x, t).sample, t, x).prev_sample
    return x


@pytest.mark.parametrize("shift", [1.0, 3.0])
def test_flow_matching_folder_maps_to_rectified_flow_and_euler_matches(tmp_path: Path, shift: float) -> None:
    scheduler = FlowMatchEulerDiscreteScheduler(shift=shift)
    root = save_pipeline_folder(tmp_path / "flow", seeded(0, tiny_unet), scheduler)
    pipe = from_diffusers(root, sampler={"steps": STEPS}, model={"dtype": "float64"})
    assert pipe.config["schedule"] == {"name": "rectified-flow", "shift": shift, "timesteps": 1000}
    assert pipe.config["parameterization"]["name"] == "velocity"
    assert pipe.config["sampler"]["name"] == "euler"
    scheduler.set_timesteps(STEPS)
    torch.testing.assert_close(
        torch.from_numpy(flow_times(dict(scheduler.config), STEPS)), scheduler.sigmas[:-1].double()
    )

    x_T = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    want = diffusers_flow(root, x_T)
    got = pipe.sample(x_T=x_T)

    assert (want - x_T).abs().max() > 0.1  # the network moved the sample
    torch.testing.assert_close(got, want, rtol=0, atol=1e-5)
