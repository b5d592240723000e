"""``Pipeline.loss`` equals guided-diffusion's ``training_losses`` for the same t and noise.

The pipeline is built from a config (schedule, parameterization, loss by name) and the
reference from ``create_gaussian_diffusion`` with the matching flags; both call the same network.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch

import ddkit

script_util = pytest.importorskip("guided_diffusion.script_util")

pytestmark = pytest.mark.parity
torch.set_num_threads(1)

T = 100
NET: dict[str, Any] = {
    "name": "adm-unet",
    "image_size": 8,
    "num_channels": 32,
    "channel_mult": "1,2",
    "num_res_blocks": 1,
    "attention_resolutions": "4",
    "class_cond": True,
    "num_classes": 3,
}

#: (ddkit parameterization, variance, loss) -> guided-diffusion's create_gaussian_diffusion flags.
CASES: list[tuple[str, str, str, dict[str, Any]]] = [
    ("epsilon", "fixed-large", "mse", {}),
    ("epsilon", "fixed-small", "mse", {"sigma_small": True}),
    ("epsilon", "learned-range", "rescaled-mse", {"learn_sigma": True, "rescale_learned_sigmas": True}),
    ("epsilon", "learned-range", "mse", {"learn_sigma": True}),
    ("x0", "fixed-small", "rescaled-kl", {"sigma_small": True, "use_kl": True, "predict_xstart": True}),
]


@pytest.mark.parametrize(("prediction", "variance", "loss", "flags"), CASES)
@pytest.mark.parametrize("schedule", ["linear", "cosine"])
def test_pipeline_loss_matches_guided_diffusion(
    schedule: str, prediction: str, variance: str, loss: str, flags: dict[str, Any]
) -> None:
    torch.manual_seed(0)
    learn = variance.startswith("learned")
    pipe = ddkit.Pipeline.from_config(
        {
            "schedule": {"name": schedule, "timesteps": T},
            "parameterization": {"name": prediction, "variance": variance},
            "model": {**NET, "learn_sigma": learn},
            "sampler": "ddpm",
            "loss": loss,
        }
    )
    with torch.no_grad():  # a network that is not the zero predictor ADM starts as
        for p in pipe.model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    reference = script_util.create_gaussian_diffusion(steps=T, noise_schedule=schedule, **flags)
    g = torch.Generator().manual_seed(1)
    x0 = torch.rand(6, 3, 8, 8, generator=g) * 2 - 1
    t = torch.tensor([0, 1, 17, 50, 98, 99])
    noise = torch.randn(x0.shape, generator=g)
    y = torch.tensor([0, 1, 2, 0, 1, 2])
    got = pipe.loss(x0, t=t, noise=noise, y=y)
    want = reference.training_losses(pipe.model, x0, t, model_kwargs={"y": y}, noise=noise)
    assert set(got) == set(want)
    for key, value in want.items():
        torch.testing.assert_close(got[key], value.float(), rtol=1e-5, atol=1e-6, msg=f"{key} differs")
