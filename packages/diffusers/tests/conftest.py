"""Tiny diffusers folders saved into the test's tmp_path (built in well under a second each)."""

from __future__ import annotations

from pathlib import Path

import pytest

from ddkit_diffusers.testing import seeded, tiny_autoencoder_kl, tiny_conditional_unet, tiny_dit, tiny_unet


@pytest.fixture
def unet_folder(tmp_path: Path) -> Path:
    """A UNet2DModel (3 channels, 8×8) saved alone."""
    folder = tmp_path / "unet"
    seeded(0, tiny_unet).save_pretrained(folder, safe_serialization=True)
    return folder


@pytest.fixture
def cond_unet_folder(tmp_path: Path) -> Path:
    """A UNet2DConditionModel (4 latent channels, 8×8, cross-attention dim 16) saved alone."""
    folder = tmp_path / "cond-unet"
    seeded(1, tiny_conditional_unet).save_pretrained(folder, safe_serialization=True)
    return folder


@pytest.fixture
def dit_folder(tmp_path: Path) -> Path:
    """A class-conditional DiTTransformer2DModel (4 classes + null) saved alone."""
    folder = tmp_path / "dit"
    seeded(2, tiny_dit).save_pretrained(folder, safe_serialization=True)
    return folder


@pytest.fixture
def vae_folder(tmp_path: Path) -> Path:
    """An AutoencoderKL (scaling 0.5, shift 0.1) saved alone."""
    folder = tmp_path / "vae"
    seeded(3, tiny_autoencoder_kl).save_pretrained(folder, safe_serialization=True)
    return folder
