"""A latent, embedding-conditioned diffusers pipeline sampled by ddkit with classifier-free guidance.

UNet2DConditionModel + AutoencoderKL + DDIMScheduler, saved here as a pipeline folder. ddkit
samples it through ``from_diffusers`` with ``classifier-free`` guidance (scale 4, a given
negative embedding) and decodes with ``diffusers-vae``; the reference is the loop diffusers'
StableDiffusionPipeline runs, written out: one UNet call on [negative; prompt] per step,
uncond + 4·(cond − uncond), ``scheduler.step``, then ``vae.decode(z / scaling + shift)``.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel

from ddkit_diffusers import from_diffusers
from ddkit_diffusers.testing import save_pipeline_folder, seeded, tiny_autoencoder_kl, tiny_conditional_unet

pytestmark = pytest.mark.parity
torch.set_num_threads(1)

STEPS = 5
SCALE = 4.0


def _folder(tmp_path: Path) -> Path:
    scheduler = DDIMScheduler(
        beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, clip_sample=False
    )
    return save_pipeline_folder(
        tmp_path / "latent",
        seeded(0, tiny_conditional_unet),
        scheduler,
        vae=seeded(1, tiny_autoencoder_kl, scaling_factor=0.5, shift_factor=0.1),
    )


def diffusers_loop(
    root: Path, z_T: torch.Tensor, prompt: torch.Tensor, negative: torch.Tensor
) -> torch.Tensor:
    unet = UNet2DConditionModel.from_pretrained(root / "unet", torch_dtype=torch.float64).eval()
    vae = AutoencoderKL.from_pretrained(root / "vae", torch_dtype=torch.float64).eval()
    scheduler = DDIMScheduler.from_pretrained(root / "scheduler")
    scheduler.set_timesteps(STEPS)
    z = z_T.clone()
    context = torch.cat([negative, prompt])
    with torch.no_grad():
        for t in scheduler.timesteps:
            uncond, cond = unet(torch.cat([z, z]), t, encoder_hidden_states=context).sample.chunk(2)
            z = scheduler.step(uncond + SCALE * (cond - uncond), t, z).prev_sample
        z = z / vae.config.scaling_factor + vae.config.shift_factor
        return vae.decode(z).sample


def test_latent_cfg_with_a_negative_embedding_matches_diffusers(tmp_path: Path) -> None:
    root = _folder(tmp_path)
    g = torch.Generator().manual_seed(0)
    z_T = torch.randn(2, 4, 8, 8, generator=g, dtype=torch.float64)
    prompt = torch.randn(2, 3, 16, generator=g, dtype=torch.float64)
    negative = torch.randn(2, 3, 16, generator=g, dtype=torch.float64)
    cfg = {"name": "classifier-free", "scale": SCALE, "negative": {"encoder_hidden_states": negative}}
    pipe = from_diffusers(
        root,
        sampler={"steps": STEPS},
        model={"dtype": "float64"},
        autoencoder={"dtype": "float64"},
        guidance=[cfg],
    )
    assert pipe.sample_shape == (4, 8, 8)

    want = diffusers_loop(root, z_T, prompt, negative)
    got = pipe.sample(x_T=z_T, encoder_hidden_states=prompt)

    assert got.shape == (2, 3, 16, 16)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-4)
    latents = pipe.sample(x_T=z_T, encoder_hidden_states=prompt, decode=False)
    assert latents.shape == (2, 4, 8, 8)
    # A negative given when sampling wins over the guidance's own, and it matters.
    other = pipe.sample(x_T=z_T, encoder_hidden_states=prompt, uncond={"encoder_hidden_states": -negative})
    torch.testing.assert_close(other, diffusers_loop(root, z_T, prompt, -negative), rtol=0, atol=1e-4)
    assert (other - want).abs().max() > 1e-3
    # Guidance given no negative of its own takes it from the sampling call alone.
    plain = pipe.with_guidance([{"name": "classifier-free", "scale": SCALE}])
    alone = plain.sample(x_T=z_T, encoder_hidden_states=prompt, uncond={"encoder_hidden_states": negative})
    torch.testing.assert_close(alone, want, rtol=0, atol=1e-4)
