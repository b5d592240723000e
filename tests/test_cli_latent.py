"""``ddkit sample`` on a latent pipeline writes images of the data's shape, not the latents'."""

from __future__ import annotations

from pathlib import Path

from PIL import Image

import ddkit
from ddkit.cli import main


def test_ddkit_sample_draws_a_latent_pipelines_decoded_images(tmp_path: Path) -> None:
    pipe = ddkit.Pipeline.from_config(
        {
            "schedule": {"name": "cosine", "timesteps": 50},
            "parameterization": {"name": "epsilon"},
            # The U-Net works on the 12 × 4 × 4 latents of 3 × 8 × 8 images.
            "model": {
                "name": "adm-unet",
                "image_size": 4,
                "in_channels": 12,
                "num_channels": 32,
                "num_res_blocks": 1,
                "channel_mult": "1,2",
                "attention_resolutions": "2",
            },
            "autoencoder": {"name": "pixel-shuffle", "factor": 2},
            "sampler": {"name": "ddim", "steps": 3},
        }
    )
    assert pipe.sample_shape == (12, 4, 4)
    assert pipe.data_shape == (3, 8, 8)
    pipe.save(tmp_path / "p")
    out = tmp_path / "grid.png"
    assert main(["sample", str(tmp_path / "p"), "--n", "4", "--out", str(out)]) == 0
    with Image.open(out) as image:
        # A grid of 8 × 8 images (with padding), never of 4 × 4 latents.
        assert min(image.size) >= 8
        assert image.mode in ("RGB", "L")
