"""The ``diffusers-vae`` autoencoder: ddkit's unscaled, deterministic contract over AutoencoderKL/Tiny."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from diffusers import AutoencoderKL, AutoencoderTiny

import ddkit
from ddkit import ConfigError
from ddkit_diffusers import DiffusersVAE
from ddkit_diffusers.testing import seeded, tiny_autoencoder_kl


def test_autoencoder_kl_encodes_to_the_posterior_mean_and_decodes(vae_folder: Path) -> None:
    vae = ddkit.create("autoencoder", "diffusers-vae", path=str(vae_folder))
    assert isinstance(vae, DiffusersVAE)
    assert isinstance(vae, ddkit.Autoencoder)
    assert (vae.scaling_factor, vae.shift_factor) == (0.5, 0.1)
    assert vae.latent_shape((3, 16, 16)) == (4, 8, 8)
    reference = AutoencoderKL.from_pretrained(vae_folder).eval()
    x = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(0)) * 2 - 1
    with torch.no_grad():
        z = vae.encode(x)
        assert torch.equal(z, reference.encode(x).latent_dist.mean)
        assert torch.equal(vae.encode(x), z)  # deterministic: no sampling from the posterior
        assert torch.equal(vae.decode(z), reference.decode(z).sample)
    assert z.shape == (2, 4, 8, 8)


def test_autoencoder_tiny_and_a_missing_shift_factor(tmp_path: Path) -> None:
    folder = tmp_path / "taesd"
    tiny = seeded(
        0,
        AutoencoderTiny,
        encoder_block_out_channels=(8, 8),
        decoder_block_out_channels=(8, 8),
        num_encoder_blocks=(1, 1),
        num_decoder_blocks=(1, 1),
        latent_channels=4,
    )
    tiny.save_pretrained(folder, safe_serialization=True)
    vae = ddkit.create("autoencoder", "diffusers-vae", path=str(folder))
    assert (vae.scaling_factor, vae.shift_factor) == (1.0, 0.0)
    x = torch.rand(1, 3, 16, 16, generator=torch.Generator().manual_seed(0)) * 2 - 1
    with torch.no_grad():
        z = vae.encode(x)
        assert torch.equal(z, tiny.eval().encode(x).latents)
        assert z.shape[1:] == vae.latent_shape((3, 16, 16))
        assert torch.equal(vae.decode(z), tiny.decode(z).sample)


def test_a_weights_variant_loads_by_name(tmp_path: Path) -> None:
    folder = tmp_path / "variant"
    vae = seeded(0, tiny_autoencoder_kl)
    vae.save_pretrained(folder, safe_serialization=True, variant="fp16")
    assert (folder / "diffusion_pytorch_model.fp16.safetensors").is_file()
    loaded = ddkit.create("autoencoder", "diffusers-vae", path=str(folder), variant="fp16")
    assert all(torch.equal(a, b) for a, b in zip(loaded.net.state_dict().values(), vae.state_dict().values()))
    with pytest.raises(ConfigError, match="'variant' must be a non-empty str"):
        ddkit.create("autoencoder", "diffusers-vae", path=str(folder), variant="")


def test_refuses_per_channel_latent_statistics_and_other_classes(tmp_path: Path, unet_folder: Path) -> None:
    folder = tmp_path / "stats"
    vae = seeded(0, tiny_autoencoder_kl)
    vae.register_to_config(latents_mean=[0.0] * 4, latents_std=[1.0] * 4)
    vae.save_pretrained(folder, safe_serialization=True)
    with pytest.raises(ConfigError, match="sets 'latents_mean', a per-channel latent normalisation"):
        ddkit.create("autoencoder", "diffusers-vae", path=str(folder))
    with pytest.raises(ConfigError, match="holds a 'UNet2DModel', which 'diffusers-vae' does not load"):
        ddkit.create("autoencoder", "diffusers-vae", path=str(unet_folder))
