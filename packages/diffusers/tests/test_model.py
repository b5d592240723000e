"""The ``diffusers`` model: loading, its ModelSpec, the model contract and its refusals."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from diffusers import DiTTransformer2DModel, UNet2DConditionModel, UNet2DModel

import ddkit
from ddkit import CompositionError, ConfigError, ModelSpec
from ddkit_diffusers import DiffusersModel
from ddkit_diffusers.testing import seeded, tiny_unet


def _x(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def test_unet2d_is_called_through_the_model_contract(unet_folder: Path) -> None:
    model = ddkit.create("model", "diffusers", path=str(unet_folder))
    assert isinstance(model, DiffusersModel)
    assert model.spec == ModelSpec(
        in_channels=3, out_channels=3, sample_shape=(3, 8, 8), conditioning=model.spec.conditioning
    )
    assert model.spec.conditioning == ()  # UNet2DModel takes nothing but class labels (y)
    assert not model.training  # loaded for inference, as diffusers loads it: wrapper and network alike
    assert not any(m.training for m in model.modules())
    reference = UNet2DModel.from_pretrained(unet_folder).eval()
    x, t = _x(2, 3, 8, 8), torch.tensor([10, 900])
    with torch.no_grad():
        assert torch.equal(model(x, t), reference(x, t).sample)


def test_conditioning_reaches_the_network_and_a_missing_one_is_named(cond_unet_folder: Path) -> None:
    model = ddkit.create("model", "diffusers", path=str(cond_unet_folder))
    assert model.spec.conditioning is not None
    assert {"encoder_hidden_states", "added_cond_kwargs"} <= set(model.spec.conditioning)
    reference = UNet2DConditionModel.from_pretrained(cond_unet_folder).eval()
    x, t, emb = _x(2, 4, 8, 8), torch.tensor([3, 500]), _x(2, 5, 16, seed=1)
    with torch.no_grad():
        out = model(x, t, encoder_hidden_states=emb)
        assert torch.equal(out, reference(x, t, encoder_hidden_states=emb).sample)
        assert not torch.equal(out, model(x, t, encoder_hidden_states=emb.flip(0)))
    with pytest.raises(CompositionError, match="UNet2DConditionModel needs encoder_hidden_states"):
        model(x, t)
    with pytest.raises(CompositionError, match="takes no conditioning 'prompt'"):
        model(x, t, encoder_hidden_states=emb, prompt="a cat")


def test_class_labels_y_become_class_labels(tmp_path: Path) -> None:
    folder = tmp_path / "labels"
    seeded(0, tiny_unet, num_class_embeds=3).save_pretrained(folder, safe_serialization=True)
    model = ddkit.create("model", "diffusers", path=str(folder))
    assert model.spec.num_classes == 3
    assert model.spec.null_class is None
    reference = UNet2DModel.from_pretrained(folder).eval()
    x, t, y = _x(2, 3, 8, 8), torch.tensor([100, 100]), torch.tensor([0, 2])
    with torch.no_grad():
        assert torch.equal(model(x, t, y=y), reference(x, t, class_labels=y).sample)
        assert not torch.equal(model(x, t, y=y), model(x, t, y=y.flip(0)))


def test_a_dit_transformer_declares_its_null_class(dit_folder: Path) -> None:
    model = ddkit.create("model", "diffusers", path=str(dit_folder))
    assert model.spec == ModelSpec(
        in_channels=4,
        out_channels=4,
        sample_shape=(4, 8, 8),
        num_classes=4,
        null_class=4,
        conditioning=("cross_attention_kwargs",),
    )
    reference = DiTTransformer2DModel.from_pretrained(dit_folder).eval()
    x, t, y = _x(2, 4, 8, 8), torch.tensor([1, 999]), torch.tensor([4, 1])
    with torch.no_grad():
        assert torch.equal(model(x, t, y=y), reference(x, t, class_labels=y).sample)


def test_a_pipeline_folder_finds_its_unet_and_dtype_casts(tmp_path: Path, unet_folder: Path) -> None:
    root = tmp_path / "pipe"
    UNet2DModel.from_pretrained(unet_folder).save_pretrained(root / "unet", safe_serialization=True)
    model = ddkit.create("model", "diffusers", path=str(root), dtype="float64")
    assert next(model.parameters()).dtype == torch.float64
    assert model(_x(1, 3, 8, 8).double(), torch.tensor([5])).dtype == torch.float64
    other = UNet2DModel.from_pretrained(unet_folder)
    with torch.no_grad():
        other.conv_out.bias.fill_(0.5)  # weights that differ from the plain file's
    other.save_pretrained(root / "unet", safe_serialization=True, variant="ema")
    variant = ddkit.create("model", "diffusers", path=str(root), variant="ema")
    assert torch.equal(variant.net.conv_out.bias, torch.full_like(variant.net.conv_out.bias, 0.5))
    assert not torch.equal(model.net.conv_out.bias.float(), variant.net.conv_out.bias)


def test_refuses_a_missing_folder_pickle_weights_and_other_classes(tmp_path: Path, vae_folder: Path) -> None:
    with pytest.raises(ConfigError, match="never downloads"):
        ddkit.create("model", "diffusers", path=str(tmp_path / "nowhere"))
    pickled = tmp_path / "pickled"
    seeded(0, tiny_unet).save_pretrained(pickled, safe_serialization=False)
    with pytest.raises(ConfigError, match=r"no \.safetensors weights"):
        ddkit.create("model", "diffusers", path=str(pickled))
    with pytest.raises(ConfigError, match="'AutoencoderKL', which the 'diffusers' model does not load"):
        ddkit.create("model", "diffusers", path=str(vae_folder))
    with pytest.raises(ConfigError, match=r"no config\.json and no unet or transformer folder"):
        ddkit.create("model", "diffusers", path=str(tmp_path))
    with pytest.raises(ConfigError, match="'dtype' must be one of float32"):
        ddkit.create("model", "diffusers", path=str(vae_folder), dtype="half")


def test_an_sd3_transformer_takes_its_two_conditionings(tmp_path: Path) -> None:
    from diffusers import SD3Transformer2DModel

    folder = tmp_path / "sd3"
    options = {
        "sample_size": 8,
        "patch_size": 2,
        "in_channels": 4,
        "out_channels": 4,
        "num_layers": 1,
        "attention_head_dim": 8,
        "num_attention_heads": 2,
        "joint_attention_dim": 16,
        "caption_projection_dim": 16,
        "pooled_projection_dim": 8,
        "pos_embed_max_size": 8,
    }
    seeded(0, SD3Transformer2DModel, **options).save_pretrained(folder, safe_serialization=True)
    model = ddkit.create("model", "diffusers", path=str(folder))
    assert model.spec.sample_shape == (4, 8, 8)
    reference = SD3Transformer2DModel.from_pretrained(folder).eval()
    x, t = _x(2, 4, 8, 8), torch.tensor([250.0, 750.0])  # flow models get fractional t·T
    cond = {"encoder_hidden_states": _x(2, 5, 16, seed=1), "pooled_projections": _x(2, 8, seed=2)}
    with torch.no_grad():
        want = reference(hidden_states=x, timestep=t, **cond).sample
        assert torch.equal(model(x, t, **cond), want)
    with pytest.raises(CompositionError, match="SD3Transformer2DModel needs pooled_projections"):
        model(x, t, encoder_hidden_states=cond["encoder_hidden_states"])


def test_a_pixart_transformer_declares_its_learned_variance_channels(tmp_path: Path) -> None:
    from diffusers import PixArtTransformer2DModel

    folder = tmp_path / "pixart"
    options = {
        "num_attention_heads": 2,
        "attention_head_dim": 8,
        "in_channels": 4,
        "out_channels": 8,
        "num_layers": 1,
        "cross_attention_dim": 16,
        "caption_channels": 16,
        "sample_size": 8,
        "norm_num_groups": 1,
    }
    seeded(0, PixArtTransformer2DModel, **options).save_pretrained(folder, safe_serialization=True)
    model = ddkit.create("model", "diffusers", path=str(folder))
    assert (model.spec.in_channels, model.spec.out_channels, model.spec.num_classes) == (4, 8, None)
    reference = PixArtTransformer2DModel.from_pretrained(folder).eval()
    x, t, emb = _x(2, 4, 8, 8), torch.tensor([10, 900]), _x(2, 5, 16, seed=1)
    with torch.no_grad():
        want = reference(x, encoder_hidden_states=emb, timestep=t).sample
        assert torch.equal(model(x, t, encoder_hidden_states=emb), want)


def test_a_continuous_class_embedding_takes_class_labels_by_name(tmp_path: Path) -> None:
    folder = tmp_path / "noise-level"
    seeded(0, tiny_unet, class_embed_type="timestep").save_pretrained(folder, safe_serialization=True)
    model = ddkit.create("model", "diffusers", path=str(folder))
    assert model.spec.num_classes is None
    assert model.spec.conditioning == ("class_labels",)
    reference = UNet2DModel.from_pretrained(folder).eval()
    x, t, level = _x(2, 3, 8, 8), torch.tensor([20, 20]), torch.tensor([10.0, 300.0])
    with torch.no_grad():
        assert torch.equal(model(x, t, class_labels=level), reference(x, t, class_labels=level).sample)
