"""Pipelines composed from every installed plugin: each registered name reachable from a config,
dict and TOML giving the same samples, save/load bit for bit, and the example configs building.
"""

from __future__ import annotations

import copy
import tempfile
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import Tensor, nn

import ddkit
from ddkit import KINDS
from ddkit.cli.demo import DEMO

torch.set_num_threads(2)

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = sorted((ROOT / "examples" / "configs").glob("*.toml"))

#: A small ADM U-Net on 8x8 images.
SMALL_UNET: dict[str, Any] = {
    "name": "adm-unet",
    "image_size": 8,
    "num_channels": 32,
    "channel_mult": "1,2",
    "num_res_blocks": 1,
    "attention_resolutions": "4",
}
#: A noisy-image classifier of 4 classes for SMALL_UNET's images.
SMALL_CLASSIFIER: dict[str, Any] = {
    "name": "adm-classifier",
    "image_size": 8,
    "classifier_width": 32,
    "classifier_depth": 1,
    "classifier_attention_resolutions": "4",
    "channel_mult": "1,2",
    "num_classes": 4,
}
MLP: dict[str, Any] = {"name": "mlp", "dim": 2, "hidden": 32, "depth": 1, "num_classes": 3}


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


class TinyClassifier(nn.Module):
    """A noisy-vector classifier ``(x, t) -> logits`` for classifier guidance."""

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Linear(3, 3)

    def forward(self, x: Tensor, t: Tensor) -> Tensor:
        return self.net(torch.cat([x, t.float()[:, None] / 1000], dim=1))


def config_for(kind: str, name: str) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    """(config, keyword objects, sampling conditioning) of a small pipeline that uses ``name``."""
    cfg: dict[str, Any] = {
        "schedule": {"name": "cosine", "timesteps": 50},
        "model": dict(MLP),
        "sampler": {"name": "ddim", "steps": 3},
    }
    objects: dict[str, Any] = {}
    cond: dict[str, Any] = {"y": 1}
    if kind == "schedule":
        cfg["schedule"] = (
            {"name": name, "betas": [0.02] * 50} if name == "explicit" else {"name": name, "timesteps": 50}
        )
    elif kind == "parameterization":
        cfg["parameterization"] = {"name": name}
        cfg["sampler"] = {"name": "ddpm"}  # previous-x predicts one training step back: the full chain
        if name == "velocity":  # a path's velocity: it needs a continuous path
            cfg["schedule"] = {"name": "rectified-flow", "timesteps": 50}
    elif kind == "model":
        if name == "adm-unet":
            cfg["model"] = dict(SMALL_UNET)
            cond = {}
        elif name == "adm-superres":
            cfg["model"] = {**SMALL_UNET, "name": name, "large_size": 8, "small_size": 4}
            del cfg["model"]["image_size"]
            cond = {"low_res": torch.zeros(2, 3, 4, 4)}
        elif name == "diffusers":  # a folder saved by diffusers' save_pretrained (a tiny UNet2DModel)
            from ddkit_diffusers.testing import tiny_unet

            folder = tempfile.mkdtemp(prefix="ddkit-compose-")
            tiny_unet(channels=3, sample_size=8).save_pretrained(folder)
            cfg["model"] = {"name": name, "path": folder}
            cond = {}
        elif name == "adm-classifier":  # a classifier, not a denoiser: classifier guidance builds it
            cfg["model"] = {**SMALL_UNET, "class_cond": True, "num_classes": 4}
            cfg["guidance"] = [{"name": "classifier", "scale": 1.0, "classifier": dict(SMALL_CLASSIFIER)}]
        else:
            cfg["model"] = {"name": name}
            cond = {}
    elif kind == "sampler":
        cfg["sampler"] = {"name": name, "steps": 3}
        if name == "flow-sde":  # Flow-GRPO's SDE is written for flow models
            cfg["schedule"] = {"name": "rectified-flow", "timesteps": 50}
            cfg["parameterization"] = {"name": "velocity"}
    elif kind == "guidance":
        cfg["guidance"] = [{"name": name, "scale": 2.0}]
        if name == "classifier":
            objects["classifier"] = TinyClassifier()
    elif kind == "resampler":
        cfg["resampler"] = {"name": name}
    elif kind == "autoencoder" and name == "diffusers-vae":
        from ddkit_diffusers.testing import tiny_autoencoder_kl

        folder = tempfile.mkdtemp(prefix="ddkit-compose-")
        tiny_autoencoder_kl(latent_channels=4).save_pretrained(folder)
        # The U-Net works on the 4 × 4 × 4 latents of 3 × 8 × 8 images.
        cfg["model"] = {**SMALL_UNET, "image_size": 4, "in_channels": 4, "channel_mult": "1,2"}
        cfg["autoencoder"] = {"name": name, "path": folder}
        cond = {}
    elif kind == "autoencoder" and name == "pixel-shuffle":
        # A latent pipeline: the U-Net works on the 12 × 4 × 4 latents of 3 × 8 × 8 images.
        cfg["model"] = {**SMALL_UNET, "image_size": 4, "in_channels": 12, "channel_mult": "1,2"}
        cfg["autoencoder"] = {"name": name, "factor": 2}
        cond = {}
    return cfg, objects, cond


CASES = [(kind, name) for kind in KINDS for name in ddkit.names(kind)]


def test_every_kind_has_names() -> None:
    assert {kind for kind, _ in CASES} == set(KINDS)


@pytest.mark.parametrize(("kind", "name"), CASES, ids=[f"{k}:{n}" for k, n in CASES])
def test_every_registered_name_is_reachable_from_a_config(kind: str, name: str) -> None:
    cfg, objects, cond = config_for(kind, name)
    pipe = ddkit.Pipeline.from_config(cfg, **objects)
    section = "guidance" if kind == "guidance" else kind
    if kind == "model" and name == "adm-classifier":
        assert pipe.config["guidance"][0]["classifier"]["name"] == name
    elif section == "guidance":
        assert pipe.config["guidance"][0]["name"] == name
    else:
        assert pipe.config[section]["name"] == name
    x = pipe.sample(2, generator=gen(), **cond)
    if kind == "autoencoder":
        x = pipe.encode(x)  # a latent pipeline returns decoded samples
    assert x.shape == (2, *pipe.sample_shape)  # type: ignore[misc]
    assert torch.isfinite(x).all()
    if kind == "resampler":
        t, weights = pipe.resampler.sample(4)
        assert int(t.max()) < 50
        assert weights.shape == (4,)


def small_cfg() -> dict[str, Any]:
    return {
        "schedule": {"name": "cosine", "timesteps": 100},
        "parameterization": {"name": "epsilon", "variance": "learned-range"},
        "model": {
            **SMALL_UNET,
            "learn_sigma": True,
            "class_cond": True,
            "num_classes": 3,
            "null_class": True,
        },
        "sampler": {"name": "ddim", "steps": 5, "eta": 0.5},
        "guidance": [{"name": "classifier-free", "scale": 3.0}],
        "loss": {"name": "rescaled-mse"},
        "resampler": {"name": "loss-second-moment"},
        "train": {"batch_size": 4, "lr": 1e-4},
        "data": {"name": "shapes", "image_size": 8, "num_classes": 3},
    }


def test_dict_and_toml_give_identical_samples(tmp_path: Path) -> None:
    torch.manual_seed(0)
    from_dict = ddkit.Pipeline.from_config(small_cfg())
    path = tmp_path / "pipe.toml"
    path.write_text(from_dict.to_toml())
    torch.manual_seed(0)
    from_toml = ddkit.Pipeline.from_toml(path)
    assert from_toml.config == from_dict.config
    assert from_toml.config["train"] == {"batch_size": 4, "lr": 1e-4}
    a = from_dict.sample(3, generator=gen(1), y=[0, 1, 2])
    b = from_toml.sample(3, generator=gen(1), y=[0, 1, 2])
    assert torch.equal(a, b)


def test_save_load_sample_is_bit_identical(tmp_path: Path) -> None:
    pipe = ddkit.Pipeline.from_config(small_cfg())
    with torch.no_grad():
        for p in pipe.model.parameters():
            p.add_(0.01 * torch.randn(p.shape, generator=gen(2)))
    pipe.ema["0.999"] = copy.deepcopy(pipe.model)
    pipe.save(tmp_path / "p")
    loaded = ddkit.Pipeline.load(tmp_path / "p")
    assert loaded.config == pipe.config
    for swapped in (lambda q: q, lambda q: q.with_sampler("dpm-solver++", steps=4)):
        want = swapped(pipe).sample(3, generator=gen(3), y=2)
        got = swapped(loaded).sample(3, generator=gen(3), y=2)
        assert torch.equal(got, want)


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.name for p in EXAMPLES])
def test_example_configs_build(path: Path) -> None:
    pipe = ddkit.Pipeline.from_toml(path)
    assert pipe.config["model"]["name"]
    assert "train" in pipe.config


def test_the_demo_config_is_an_example() -> None:
    example = ddkit.Pipeline.from_toml(ROOT / "examples" / "configs" / "shapes-demo.toml")
    assert example.config == ddkit.Pipeline.from_config(DEMO).config


def test_classifier_guidance_steers_an_unconditional_unet() -> None:
    """guided-diffusion's 256×256 unconditional model + classifier: the labels reach the classifier only."""
    classifier = dict(SMALL_CLASSIFIER)
    cfg: dict[str, Any] = {
        "schedule": {"name": "linear", "timesteps": 50},
        "model": dict(SMALL_UNET),  # unconditional: it refuses y= when called directly
        "sampler": {"name": "ddpm", "steps": 3},
        "guidance": [{"name": "classifier", "scale": 5.0, "classifier": classifier}],
    }
    pipe = ddkit.Pipeline.from_config(cfg)
    with pytest.raises(ddkit.CompositionError, match="unconditional"):
        pipe.model(torch.zeros(1, 3, 8, 8), torch.zeros(1), y=torch.zeros(1, dtype=torch.long))
    steered = [pipe.sample(2, generator=gen(3), y=label) for label in (0, 3)]
    unguided = ddkit.Pipeline.from_config({k: v for k, v in cfg.items() if k != "guidance"})
    unguided.model.load_state_dict(pipe.model.state_dict())
    plain = unguided.sample(2, generator=gen(3))
    assert all(torch.isfinite(x).all() for x in steered)
    assert not torch.allclose(steered[0], steered[1]), "the labels must steer the samples"
    assert not torch.allclose(steered[0], plain)
