"""Classifier-free guidance on an embedding-conditioned latent model, against a hand-written loop.

The pipeline: ``pixel-shuffle`` latents, ddkit-samplers' ``ddim`` (η = 0, 10 steps), and
ddkit-guidance's ``classifier-free`` at scale 4 with an explicit unconditional embedding for
``encoder_hidden_states``. The reference loop below is written from the formulas alone:
ε = ε_u + s·(ε_c − ε_u), x̂_0 = (x − sqrt(1 − ᾱ)·ε)/sqrt(ᾱ), x ← sqrt(ᾱ_prev)·x̂_0 + sqrt(1 − ᾱ_prev)·ε,
then the decoded image (z / scaling_factor, pixel shuffle).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from torch import Tensor, nn

import ddkit
from ddkit.conditioning import attach_null_embeddings

torch.set_num_threads(1)

T, STEPS, SCALE = 100, 10, 4.0
LATENT = (12, 4, 4)  # pixel-shuffle by 2 of 3 × 8 × 8 images
L, E = 2, 5  # tokens × width of the embedding
TIMESTEPS = list(range(90, -1, -10))  # guided-diffusion's "ddim10" stride on 100 steps


class EmbNet(nn.Module):
    """An eps model on latents conditioned on ``encoder_hidden_states`` [B, L, E]; records batch sizes."""

    def __init__(self) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.conv = nn.Conv2d(12, 12, 3, padding=1)
        self.proj = nn.Linear(E, 12)
        self.time = nn.Linear(1, 12)
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(0.3 * torch.randn(p.shape, generator=g))
        self.spec = ddkit.ModelSpec(12, 12, LATENT)
        self.batches: list[int] = []

    def forward(self, x: Tensor, t: Tensor, encoder_hidden_states: Tensor) -> Tensor:
        self.batches.append(x.shape[0])
        ctx = self.proj(encoder_hidden_states.mean(dim=1))[:, :, None, None]
        return torch.tanh(self.conv(x) + ctx * self.time(t.float()[:, None] / T)[:, :, None, None])


def embeddings(n: int, seed: int) -> Tensor:
    return torch.randn(n, L, E, generator=torch.Generator().manual_seed(seed))


COND = embeddings(3, 1)
NEG = embeddings(1, 2)[0]  # one sample's unconditional embedding [L, E]
NOISE = torch.randn(3, *LATENT, generator=torch.Generator().manual_seed(3))


def config(**guidance: Any) -> dict[str, Any]:
    return {
        "schedule": {"name": "scaled-linear", "timesteps": T},
        "sampler": {"name": "ddim", "steps": STEPS},
        "guidance": [{"name": "classifier-free", "scale": SCALE, **guidance}],
        "autoencoder": {"name": "pixel-shuffle", "factor": 2, "scaling_factor": 0.5},
    }


@torch.no_grad()
def hand_loop(model: EmbNet, alphas_cumprod: Tensor, cond: Tensor, neg: Tensor) -> Tensor:
    """DDIM (η = 0) with classifier-free guidance, written out; returns the decoded images."""
    x = NOISE.clone()
    uncond = neg.expand_as(cond)
    for i, t in enumerate(TIMESTEPS):
        ab = float(alphas_cumprod[t])
        ab_prev = float(alphas_cumprod[TIMESTEPS[i + 1]]) if i + 1 < len(TIMESTEPS) else 1.0
        tt = torch.full((x.shape[0],), t)
        eps_c = model(x, tt, encoder_hidden_states=cond)
        eps_u = model(x, tt, encoder_hidden_states=uncond)
        eps = eps_u + SCALE * (eps_c - eps_u)
        x0 = (x - math.sqrt(1 - ab) * eps) / math.sqrt(ab)
        x = math.sqrt(ab_prev) * x0 + math.sqrt(1 - ab_prev) * eps
    return F.pixel_shuffle(x / 0.5, 2)


@pytest.fixture
def reference() -> tuple[EmbNet, Tensor]:
    model = EmbNet()
    pipe = ddkit.Pipeline.from_config(config(uncond={"encoder_hidden_states": NEG}), model=model)
    expected = hand_loop(model, torch.as_tensor(pipe.process.alphas_cumprod), COND, NEG)
    model.batches.clear()
    return model, expected


def test_guidance_with_an_explicit_uncond_equals_the_hand_loop(reference: tuple[EmbNet, Tensor]) -> None:
    model, expected = reference
    pipe = ddkit.Pipeline.from_config(config(uncond={"encoder_hidden_states": NEG}), model=model)
    assert pipe.parameterization.clip_denoised is False  # a latent pipeline does not clip x̂_0
    states = list(pipe.samples_iter(x_T=NOISE, encoder_hidden_states=COND))
    assert [int(s.t) for s in states] == TIMESTEPS
    assert model.batches == [6] * STEPS  # one batched forward of 2B per step
    model.batches.clear()
    out = pipe.sample(x_T=NOISE, encoder_hidden_states=COND)
    assert out.shape == (3, 3, 8, 8)
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(pipe.decode(states[-1].x), expected, rtol=1e-5, atol=1e-5)
    assert model.batches == [6] * STEPS
    # The alias 'negative' is the same parameter.
    same = ddkit.Pipeline.from_config(config(negative={"encoder_hidden_states": NEG}), model=model)
    torch.testing.assert_close(same.sample(x_T=NOISE, encoder_hidden_states=COND), out, rtol=0, atol=0)


def test_uncond_at_sampling_time_overrides_the_parameter(reference: tuple[EmbNet, Tensor]) -> None:
    model, expected = reference
    wrong = torch.zeros(L, E)
    pipe = ddkit.Pipeline.from_config(config(uncond={"encoder_hidden_states": wrong}), model=model)
    for keyword in ("uncond", "negative"):
        out = pipe.sample(x_T=NOISE, encoder_hidden_states=COND, **{keyword: {"encoder_hidden_states": NEG}})
        torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)
    # A guidance with no parameter takes the value at sampling time alone, per sample too.
    bare = ddkit.Pipeline.from_config(config(), model=model)
    out = bare.sample(
        x_T=NOISE, encoder_hidden_states=COND, uncond={"encoder_hidden_states": NEG.expand(3, L, E)}
    )
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)
    with pytest.raises(ddkit.CompositionError, match="needs a condition to drop"):
        bare.sample(x_T=NOISE, encoder_hidden_states=COND)
    with pytest.raises(ddkit.CompositionError, match="aliases"):
        bare.sample(
            x_T=NOISE,
            encoder_hidden_states=COND,
            uncond={"encoder_hidden_states": NEG},
            negative={"encoder_hidden_states": NEG},
        )


def test_a_toml_config_reads_the_uncond_embedding_from_a_file(
    reference: tuple[EmbNet, Tensor], tmp_path: Path
) -> None:
    model, expected = reference
    save_file({"encoder_hidden_states": NEG.contiguous()}, str(tmp_path / "negative.safetensors"))
    (tmp_path / "pipe.toml").write_text(
        f"""
[schedule]
name = "scaled-linear"
timesteps = {T}

[sampler]
name = "ddim"
steps = {STEPS}

[[guidance]]
name = "classifier-free"
scale = {SCALE}
uncond = {{ encoder_hidden_states = "{(tmp_path / "negative.safetensors").as_posix()}" }}

[autoencoder]
name = "pixel-shuffle"
factor = 2
scaling_factor = 0.5
""",
        encoding="utf-8",
    )
    pipe = ddkit.Pipeline.from_toml(tmp_path / "pipe.toml", model=model)
    torch.testing.assert_close(
        pipe.sample(x_T=NOISE, encoder_hidden_states=COND), expected, rtol=1e-5, atol=1e-5
    )
    assert isinstance(pipe.config["guidance"][0]["uncond"]["encoder_hidden_states"], str)  # saved as the path
    # A number is an unconditional value too (here the zero embedding), filling the keyword's shape.
    zero = ddkit.Pipeline.from_config(config(uncond={"encoder_hidden_states": 0.0}), model=model)
    by_tensor = ddkit.Pipeline.from_config(
        config(uncond={"encoder_hidden_states": torch.zeros(L, E)}), model=model
    )
    torch.testing.assert_close(
        zero.sample(x_T=NOISE, encoder_hidden_states=COND),
        by_tensor.sample(x_T=NOISE, encoder_hidden_states=COND),
        rtol=0,
        atol=0,
    )
    with pytest.raises(ddkit.ConfigError, match="does not exist"):
        ddkit.Pipeline.from_config(
            config(uncond={"encoder_hidden_states": "missing.safetensors"}), model=model
        )


def test_a_learned_null_embedding_is_the_default_uncond(reference: tuple[EmbNet, Tensor]) -> None:
    model, expected = reference
    with torch.no_grad():
        attach_null_embeddings(model, {"encoder_hidden_states": (L, E)})["encoder_hidden_states"].copy_(NEG)
    pipe = ddkit.Pipeline.from_config(config(), model=model)
    out = pipe.sample(x_T=NOISE, encoder_hidden_states=COND)
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)
    # The guidance's own parameter wins over the learned value.
    given = ddkit.Pipeline.from_config(
        config(uncond={"encoder_hidden_states": torch.zeros(L, E)}), model=model
    )
    assert not torch.allclose(given.sample(x_T=NOISE, encoder_hidden_states=COND), expected, atol=1e-3)


def test_a_saved_pipeline_asks_for_its_uncond_tensor_again(
    reference: tuple[EmbNet, Tensor], tmp_path: Path
) -> None:
    model, expected = reference
    pipe = ddkit.Pipeline.from_config(config(uncond={"encoder_hidden_states": NEG}), model=model)
    pipe.save(tmp_path / "p")
    with pytest.raises(
        ddkit.ConfigError, match=r"'uncond' was an object .* pass it again as the keyword uncond="
    ):
        ddkit.Pipeline.load(tmp_path / "p", model=EmbNet())
    loaded = ddkit.Pipeline.load(tmp_path / "p", model=EmbNet(), uncond={"encoder_hidden_states": NEG})
    assert loaded.config["autoencoder"]["name"] == "pixel-shuffle"
    torch.testing.assert_close(
        loaded.sample(x_T=NOISE, encoder_hidden_states=COND), expected, rtol=1e-5, atol=1e-5
    )
