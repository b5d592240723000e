"""Latent pipelines with core alone: the built-in ``pixel-shuffle`` autoencoder end to end.

A tiny conv network and a deterministic DDIM sampler (written on core's SamplerBase, so
image-to-image and inpainting are core's own) are registered in-process on a fresh registry.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import tomllib
import torch
from torch import Tensor, nn

import ddkit
from ddkit import CompositionError, ConfigError, ModelSpec, Record, SamplerState
from ddkit.autoencoders import PixelShuffleAutoencoder
from ddkit.denoiser import Denoiser
from ddkit.pipeline.latent import decode_latents, encode_to_latents, latent_mask
from ddkit.registry import Registry
from ddkit.sampling import Plan, Run, SamplerBase
from ddkit.testing import fake_plugin, fresh_registry

torch.set_num_threads(1)

C, H = 3, 8  # data: 3 × 8 × 8 images
F = 2  # pixel-shuffle factor: latents 12 × 4 × 4
LATENT = (C * F * F, H // F, H // F)


class LatentNet(nn.Module):
    """A 3×3-conv eps model on latents; records the shape of every input it is trained or sampled on."""

    def __init__(self, channels: int = LATENT[0], size: int = LATENT[1]) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)
        self.time = nn.Linear(1, channels)
        self.spec = ModelSpec(channels, channels, (channels, size, size))
        self.shapes: list[tuple[int, ...]] = []

    def forward(self, x: Tensor, t: Tensor) -> Tensor:
        self.shapes.append(tuple(x.shape))
        return self.conv(x) + self.time(t.float()[:, None] / 1000)[:, :, None, None]


class TinyDDIM(SamplerBase):
    """Deterministic DDIM (η = 0) over the full chain: x_{t-1} = sqrt(ᾱ_{t-1})·x̂_0 + sqrt(1 − ᾱ_{t-1})·ε̂."""

    name = "tiny-ddim"
    guidance_forms = ("model",)

    def _plan(self, denoiser: Denoiser) -> Plan:
        return self._chain_plan(denoiser)

    def _run(self, plan: Plan, x: Tensor, start: int, run: Run) -> Iterator[SamplerState]:
        d = plan.denoiser
        n = d.process.num_timesteps
        for k in range(start, n):
            i = n - 1 - k
            pred = d(x, i)
            ab_prev = float(d.process.alphas_cumprod_prev[i])
            x_new = math.sqrt(ab_prev) * pred.x0 + math.sqrt(1.0 - ab_prev) * pred.eps
            state = SamplerState(step=k - start, t=plan.timesteps[k], x=x_new, x0=pred.x0, nfe=d.nfe)
            yield state
            x = state.x


TOYS = fake_plugin(
    "latent_toys",
    model=[Record("latent-net", LatentNet, "A conv net on 12 × 4 × 4 latents.")],
    sampler=[Record("tiny-ddim", TinyDDIM, "Deterministic DDIM.")],
)


@pytest.fixture
def registry() -> Iterator[Registry]:
    with fresh_registry() as reg:
        reg.register(TOYS, distribution="ddkit-latent-toys", version="0.0.1")
        yield reg


def config(**changes: Any) -> dict[str, Any]:
    cfg: dict[str, Any] = {
        "schedule": {"name": "linear", "timesteps": 50},
        "model": "latent-net",
        "sampler": "tiny-ddim",
        "autoencoder": {"name": "pixel-shuffle", "factor": F, "scaling_factor": 0.5},
    }
    cfg.update(changes)
    return cfg


def images(n: int, seed: int = 0) -> Tensor:
    """Images with structure: each a random colour plus a little noise."""
    g = torch.Generator().manual_seed(seed)
    colour = torch.rand(n, C, 1, 1, generator=g) * 2 - 1
    return colour + 0.05 * torch.randn(n, C, H, H, generator=g)


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# -- the autoencoder and the helpers -----------------------------------------------------------


def test_pixel_shuffle_is_registered_exact_and_checked() -> None:
    with fresh_registry():
        assert "pixel-shuffle" in ddkit.names("autoencoder")
        ae = ddkit.create("autoencoder", "pixel-shuffle", factor=2)
    assert isinstance(ae, ddkit.Autoencoder)
    x = images(2)
    z = ae.encode(x)
    assert z.shape == (2, *LATENT) == (2, *ae.latent_shape((C, H, H)))
    assert torch.equal(ae.decode(z), x)
    assert not list(ae.parameters())
    # Scaled latents: z = (encode(x) - shift) * scale; decoding undoes both.
    ae2 = PixelShuffleAutoencoder(2, scaling_factor=0.5, shift_factor=0.25)
    z2 = encode_to_latents(ae2, x)
    torch.testing.assert_close(z2, (z - 0.25) * 0.5)
    torch.testing.assert_close(decode_latents(ae2, z2), x)
    with pytest.raises(ConfigError, match=r"'factor' must be a positive int \(got 0\)"):
        PixelShuffleAutoencoder(0)
    with pytest.raises(ConfigError, match="'scaling_factor' must be non-zero"):
        PixelShuffleAutoencoder(2, scaling_factor=0.0)
    with pytest.raises(ConfigError, match=r"divisible by 2 \(got shape \[3, 7, 8\]\)"):
        ae.encode(torch.zeros(1, 3, 7, 8))


def test_latent_mask_knows_a_latent_only_where_all_its_pixels_are_known() -> None:
    z = torch.zeros(2, *LATENT)
    mask = torch.zeros(H, H)
    mask[:, :4] = 1.0  # columns 0-3 known: whole 2×2 patches
    mask[0, 4] = 1.0  # one pixel of the patch at (0, 2): that latent stays unknown
    m = latent_mask(mask, z)
    assert m.shape == (1, 1, 4, 4)
    assert torch.equal(m[0, 0, :, :2], torch.ones(4, 2))
    assert torch.equal(m[0, 0, :, 2:], torch.zeros(4, 2))
    # A channel that is unknown makes the latent unknown; per-sample masks keep their batch.
    per_sample = torch.ones(2, C, H, H)
    per_sample[1, 2, 0, 0] = 0.0
    m2 = latent_mask(per_sample, z)
    assert m2.shape == (2, 1, 4, 4)
    assert float(m2[1, 0, 0, 0]) == 0.0
    assert float(m2.sum()) == 31.0
    with pytest.raises(CompositionError, match="not a whole multiple"):
        latent_mask(torch.ones(7, 7), z)


# -- a latent pipeline end to end --------------------------------------------------------------


def test_latent_pipeline_trains_samples_saves_and_loads(registry: Registry, tmp_path: Path) -> None:
    torch.manual_seed(0)
    pipe = ddkit.Pipeline.from_config(config())
    assert isinstance(pipe.autoencoder, PixelShuffleAutoencoder)
    assert pipe.sample_shape == LATENT  # the model's space
    assert pipe.data_shape == (C, H, H)  # what sample() returns
    assert pipe.config["autoencoder"] == {"name": "pixel-shuffle", "factor": F, "scaling_factor": 0.5}
    assert "pixel-shuffle" in repr(pipe)

    data = images(64)
    trainer = ddkit.Trainer(pipe, data, batch_size=16, lr=3e-2, seed=0, log_every=10, ema_rates=[])
    model = pipe.model
    assert isinstance(model, LatentNet)
    trainer.train(80)
    # The network only ever saw latents, and it learned: the loss fell.
    assert set(model.shapes) == {(16, *LATENT)}
    losses = [r["loss"] for r in trainer.history]
    assert losses[-1] < 0.6 * losses[0], losses

    x = pipe.sample(3, generator=gen(1))
    z = pipe.sample(3, generator=gen(1), decode=False)
    assert x.shape == (3, C, H, H)
    assert z.shape == (3, *LATENT)
    torch.testing.assert_close(pipe.decode(z), x, rtol=0, atol=0)
    torch.testing.assert_close(pipe.encode(x), z, rtol=0, atol=0)  # exact: pixel-shuffle and a 0.5 scale

    pipe.save(tmp_path / "saved")
    doc = tomllib.loads((tmp_path / "saved" / "pipeline.toml").read_text())
    assert doc["autoencoder"]["name"] == "pixel-shuffle"
    assert doc["provenance"]["autoencoder"]["distribution"] == "ddkit-core"
    assert "autoencoder.safetensors" not in doc["weights"]  # pixel-shuffle has no weights
    loaded = ddkit.Pipeline.load(tmp_path / "saved")
    assert isinstance(loaded.autoencoder, PixelShuffleAutoencoder)
    assert loaded.autoencoder.scaling_factor == 0.5
    torch.testing.assert_close(loaded.sample(3, generator=gen(1)), x, rtol=0, atol=0)


class AffineAE(nn.Module):
    """An autoencoder with weights (a per-channel affine map), to check they are saved and verified."""

    scaling_factor = 2.0
    shift_factor = 0.1

    def __init__(self) -> None:
        super().__init__()
        self.gain = nn.Parameter(torch.full((LATENT[0], 1, 1), 1.5))
        self.shuffle = PixelShuffleAutoencoder(F)

    def encode(self, x: Tensor) -> Tensor:
        return self.shuffle.encode(x) * self.gain

    def decode(self, z: Tensor) -> Tensor:
        return self.shuffle.decode(z / self.gain)


def test_an_autoencoder_object_is_frozen_and_its_weights_are_saved(
    registry: Registry, tmp_path: Path
) -> None:
    ae = AffineAE()
    pipe = ddkit.Pipeline.from_config(config(autoencoder=None), autoencoder=ae)
    assert pipe.autoencoder is ae
    assert not ae.training
    assert not any(p.requires_grad for p in ae.parameters())
    assert pipe.config["autoencoder"] == {"object": f"{__name__}.AffineAE"}
    x = images(2)
    z = pipe.encode(x)
    torch.testing.assert_close(z, (ae.shuffle.encode(x) * 1.5 - 0.1) * 2.0)
    torch.testing.assert_close(pipe.decode(z), x)

    pipe.save(tmp_path / "p")
    doc = tomllib.loads((tmp_path / "p" / "pipeline.toml").read_text())
    assert "sha256" in doc["weights"]["autoencoder.safetensors"]
    fresh = AffineAE()
    with torch.no_grad():
        fresh.gain.fill_(9.0)
    loaded = ddkit.Pipeline.load(tmp_path / "p", autoencoder=fresh)
    assert loaded.autoencoder is fresh
    assert torch.equal(fresh.gain, ae.gain)  # the saved weights, not the ones passed in
    # A damaged autoencoder file is caught by its hash.
    path = tmp_path / "p" / "autoencoder.safetensors"
    path.write_bytes(path.read_bytes()[:-4] + b"\0\0\0\0")
    with pytest.raises(ddkit.IntegrityError, match=r"autoencoder\.safetensors"):
        ddkit.Pipeline.load(tmp_path / "p", autoencoder=AffineAE())


def test_bad_autoencoders_are_refused_before_anything_runs(registry: Registry) -> None:
    pipe = ddkit.Pipeline.from_config(config())
    with pytest.raises(ConfigError, match=r"latents of shape \[12, 8, 8\], but the model takes \[12, 4, 4\]"):
        ddkit.Trainer(pipe, images(4).repeat(1, 1, 2, 2), batch_size=2)
    with pytest.raises(ConfigError, match="no decode method"):
        ddkit.Pipeline.from_config(config(autoencoder=None), autoencoder=type("Half", (), {"encode": len})())
    with pytest.raises(ConfigError, match=r"\[autoencoder\].*'pixel-shufle'.*pixel-shuffle"):
        ddkit.Pipeline.from_config(config(autoencoder={"name": "pixel-shufle"}))
    with pytest.raises(ConfigError, match=r"\[autoencoder\].*'fctor'"):
        ddkit.Pipeline.from_config(config(autoencoder={"name": "pixel-shuffle", "fctor": 2}))


# -- image-to-image and inpainting through the autoencoder -------------------------------------


def test_inpainting_keeps_the_known_pixels_exactly(registry: Registry) -> None:
    torch.manual_seed(0)
    pipe = ddkit.Pipeline.from_config(config())
    known = images(2, seed=3)
    mask = torch.zeros(1, 1, H, H)
    mask[..., :, :4] = 1.0  # the left half, whole 2×2 patches
    out = pipe.sample(2, generator=gen(2), mask=mask, known=known)
    assert out.shape == known.shape
    assert torch.equal(out[..., :4], known[..., :4])
    assert not torch.allclose(out[..., 4:], known[..., 4:], atol=1e-2)  # the rest is generated


def test_image_to_image_starts_from_the_encoded_image(registry: Registry) -> None:
    torch.manual_seed(0)
    pipe = ddkit.Pipeline.from_config(config())
    init = images(2, seed=4)
    noise = torch.randn(2, *LATENT, generator=gen(5))
    near = pipe.sample(x_T=noise, init=init, strength=0.1)
    far = pipe.sample(x_T=noise)
    assert near.shape == init.shape
    assert (near - init).norm() < 0.5 * (far - init).norm()
    # The same as running the sampler on the latents by hand.
    denoiser = pipe.denoiser()
    by_hand = pipe.sampler.sample(denoiser, noise, init=pipe.encode(init), strength=0.1)
    torch.testing.assert_close(pipe.decode(by_hand), near)
    latents = pipe.sample(x_T=noise, init=init, strength=0.1, decode=False)
    torch.testing.assert_close(latents, by_hand)


def test_uncond_without_a_guidance_to_take_it_is_refused(registry: Registry) -> None:
    pipe = ddkit.Pipeline.from_config(config())
    with pytest.raises(CompositionError, match=r"uncond=\.\.\. .* no guidance of this pipeline takes it"):
        pipe.sample(1, uncond={"context": torch.zeros(3)})
