"""The ADM U-Net and upsampler: shapes, spec, state-dict layout, conditioning and errors."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from _models_util import assert_close, randomize, tiny_unet_flags

import ddkit
from ddkit.errors import CompositionError
from ddkit_models.flags import model_config
from ddkit_models.unet import ADMSuperRes, ADMUNet


def make(**overrides: object) -> ADMUNet:
    model = ddkit.create("model", "adm-unet", **tiny_unet_flags(**overrides))
    assert isinstance(model, ADMUNet)
    return model


@pytest.mark.parametrize("learn_sigma", [False, True])
def test_output_shape_and_spec(learn_sigma: bool) -> None:
    model = make(learn_sigma=learn_sigma)
    x = torch.randn(2, 3, 16, 16)
    out = model(x, torch.tensor([0, 999]))
    channels = 6 if learn_sigma else 3
    assert out.shape == (2, channels, 16, 16)
    spec = model.spec
    assert (spec.in_channels, spec.out_channels, spec.sample_shape) == (3, channels, (3, 16, 16))
    assert (spec.num_classes, spec.null_class) == (None, None)
    assert spec.conditioning in (None, ())  # no keyword conditioning besides y
    # model_spec reads the keywords the U-Net takes from its signature (none besides y).
    assert ddkit.model_spec(model) == dataclasses.replace(spec, conditioning=())


def test_fractional_and_scalar_timesteps() -> None:
    model = randomize(make()).eval()
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        a = model(x, torch.tensor([10.25, 10.25]))
        b = model(x, 10.25)
        c = model(x, torch.tensor([10.0, 10.0]))
    assert_close(a, b)
    assert not torch.allclose(a, c)  # the fraction reaches the embedding


def test_timestep_shape_is_checked() -> None:
    with pytest.raises(ValueError, match=r"timesteps must have shape \[2\]"):
        make()(torch.randn(2, 3, 16, 16), torch.zeros(3))


def test_state_dict_names_and_shapes_follow_guided_diffusion() -> None:
    model = make(class_cond=True, learn_sigma=True, resblock_updown=False)
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert shapes["input_blocks.0.0.weight"] == (32, 3, 3, 3)
    assert shapes["time_embed.0.weight"] == (128, 32)
    assert shapes["time_embed.2.weight"] == (128, 128)
    assert shapes["label_emb.weight"] == (1000, 128)
    assert shapes["input_blocks.1.0.in_layers.0.weight"] == (32,)
    assert shapes["input_blocks.1.0.emb_layers.1.weight"] == (64, 128)  # scale and shift
    assert shapes["input_blocks.2.0.op.weight"] == (32, 32, 3, 3)  # strided-conv Downsample
    assert shapes["input_blocks.3.0.skip_connection.weight"] == (64, 32, 1, 1)
    assert shapes["input_blocks.3.1.qkv.weight"] == (192, 64, 1)  # attention at 8 px
    assert shapes["middle_block.1.proj_out.weight"] == (64, 64, 1)
    assert shapes["output_blocks.1.2.conv.weight"] == (64, 64, 3, 3)  # Upsample conv
    assert shapes["out.0.weight"] == (32,)
    assert shapes["out.2.weight"] == (6, 32, 3, 3)
    assert len(shapes) == 129  # as guided-diffusion for these flags


def test_resblock_updown_replaces_resampling_convs() -> None:
    keys = make(resblock_updown=True).state_dict().keys()
    assert "input_blocks.2.0.in_layers.2.weight" in keys
    assert not any(k.endswith(".op.weight") for k in keys)
    assert "output_blocks.1.2.out_layers.3.weight" in keys


def test_parameter_count_of_the_benchmark_configuration() -> None:
    # 32 px, 64 channels, mult 1,2,2, attention at 16 and 8: guided-diffusion's UNetModel
    # has 7,280,707 parameters in this configuration.
    model = ddkit.create(
        "model",
        "adm-unet",
        image_size=32,
        num_channels=64,
        channel_mult="1,2,2",
        attention_resolutions="16,8",
    )
    assert sum(p.numel() for p in model.parameters()) == 7_280_707


def test_channel_mult_string_tuple_and_size_default_agree() -> None:
    assert make(channel_mult="1,2").channel_mult == (1, 2)
    assert make(channel_mult=(1, 2)).channel_mult == (1, 2)
    m64 = ddkit.create("model", "adm-unet", image_size=64, num_channels=32, num_res_blocks=1)
    assert m64.channel_mult == (1, 2, 3, 4)
    m32 = ddkit.create("model", "adm-unet", image_size=32, num_channels=32, num_res_blocks=1)
    assert m32.channel_mult == (1, 2, 2, 2)


def test_attention_resolutions_become_downsample_factors() -> None:
    model = ddkit.create(
        "model", "adm-unet", image_size=32, num_channels=32, num_res_blocks=1, attention_resolutions="16,8"
    )
    assert model.attention_resolutions == (2, 4)
    attn = [k for k in model.state_dict() if k.endswith("qkv.weight")]
    # at 16 and 8 px: one down block and two up blocks each; plus the middle block
    assert len(attn) == 2 * 1 + 2 * 2 + 1


def test_class_conditioning_uses_labels() -> None:
    model = randomize(make(class_cond=True)).eval()
    x = torch.randn(2, 3, 16, 16)
    t = torch.tensor([5, 5])
    with torch.no_grad():
        a = model(x, t, y=torch.tensor([1, 1]))
        b = model(x, t, y=torch.tensor([2, 2]))
    assert not torch.allclose(a, b)
    with pytest.raises(ValueError, match="class-conditional"):
        model(x, t)
    with pytest.raises(ValueError, match=r"y must have shape \[2\]"):
        model(x, t, y=torch.tensor([1]))


def test_null_class_adds_one_row_and_serves_unconditional_calls() -> None:
    model = randomize(make(class_cond=True, null_class=True)).eval()
    assert model.label_emb.weight.shape[0] == 1001
    assert model.spec.num_classes == 1000
    assert model.spec.null_class == 1000
    x = torch.randn(2, 3, 16, 16)
    t = torch.tensor([5, 5])
    with torch.no_grad():
        assert_close(model(x, t), model(x, t, y=torch.tensor([1000, 1000])))


def test_num_classes_keyword_implies_class_conditioning() -> None:
    model = make(num_classes=10, null_class=True)
    assert model.label_emb.weight.shape == (11, 128)
    assert model.spec.null_class == 10
    with pytest.raises(ValueError, match="class_cond=False"):
        model_config({"num_classes": 10, "class_cond": "False"})


def test_unconditional_model_refuses_labels() -> None:
    model = randomize(make()).eval()
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        model(x, torch.tensor([3, 3]))  # without labels it runs
        with pytest.raises(CompositionError, match=r"unconditional \(num_classes=None\).*class_cond=True"):
            model(x, torch.tensor([3, 3]), y=torch.tensor([0, 1]))
    with pytest.raises(CompositionError, match="y="):  # the training path too
        model(x, torch.tensor([3, 3]), torch.tensor([0, 1]))


@pytest.mark.parametrize("dims", [1, 3])
def test_one_and_three_dimensional_signals(dims: int) -> None:
    model = ADMUNet(
        image_size=8,
        in_channels=2,
        model_channels=32,
        out_channels=2,
        num_res_blocks=1,
        attention_resolutions=(2,),
        channel_mult=(1, 2),
        dims=dims,
        num_heads=2,
        resblock_updown=dims == 1,
    )
    shape = (2, 2, 8) if dims == 1 else (2, 2, 3, 8, 8)
    out = randomize(model)(torch.randn(*shape), torch.tensor([1, 2]))
    assert out.shape == shape
    assert model.spec.sample_shape == ((2, 8) if dims == 1 else None)


def test_dropout_is_active_in_training_only() -> None:
    model = randomize(make(dropout=0.5))
    x, t = torch.randn(2, 3, 16, 16), torch.tensor([4, 4])
    model.train()
    assert not torch.allclose(model(x, t), model(x, t))
    model.eval()
    with torch.no_grad():
        assert_close(model(x, t), model(x, t))


def test_superres_concatenates_the_upsampled_low_res_image() -> None:
    model = ddkit.create(
        "model",
        "adm-superres",
        large_size=16,
        small_size=8,
        num_channels=32,
        num_res_blocks=1,
        channel_mult="1,2",
        attention_resolutions="8",
        learn_sigma=True,
    )
    assert isinstance(model, ADMSuperRes)
    assert model.state_dict()["input_blocks.0.0.weight"].shape == (32, 6, 3, 3)
    assert model.spec.in_channels == 3
    assert model.spec.out_channels == 6
    assert model.spec.sample_shape == (3, 16, 16)
    randomize(model).eval()
    x, t = torch.randn(2, 3, 16, 16), torch.tensor([1, 2])
    with torch.no_grad():
        a = model(x, t, low_res=torch.randn(2, 3, 8, 8))
        b = model(x, t, low_res=torch.randn(2, 3, 8, 8))
    assert a.shape == (2, 6, 16, 16)
    assert not torch.allclose(a, b)
    with pytest.raises(ValueError, match="low_res="):
        model(x, t)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"num_channels": 24}, "multiple of 32"),
        ({"num_head_channels": 24}, "num_head_channels"),
        ({"num_head_channels": -1, "num_heads": 5}, "num_heads"),
        ({"dropout": 1.5}, "dropout"),
        ({"image_size": 48, "channel_mult": ""}, "no default 'channel_mult' for image_size=48"),
        ({"attention_resolutions": "6"}, "attention_resolutions"),
        ({"null_class": True}, "null_class"),
        ({"attention_backend": "flash"}, "attention_backend"),
    ],
)
def test_wrong_configurations_name_the_parameter(overrides: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        make(**overrides)


def test_fp16_torso_converts_convolutions_only() -> None:
    model = make(use_fp16=True)
    assert model.input_blocks[0][0].weight.dtype == torch.float16
    assert model.middle_block[1].qkv.weight.dtype == torch.float16
    assert model.middle_block[0].in_layers[0].weight.dtype == torch.float32  # norms stay float32
    assert model.time_embed[0].weight.dtype == torch.float32
    assert model.out[2].weight.dtype == torch.float32
    model.convert_to_fp32()
    assert model.input_blocks[0][0].weight.dtype == torch.float32
