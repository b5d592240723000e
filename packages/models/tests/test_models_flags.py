"""guided-diffusion flag parsing and translation to constructor arguments."""

from __future__ import annotations

import pytest

import ddkit
from ddkit_models.flags import (
    MODEL_DEFAULTS,
    classifier_config,
    default_channel_mult,
    model_config,
    parse_flags,
    superres_config,
)

RELEASED_64 = (
    "--attention_resolutions 32,16,8 --class_cond True --diffusion_steps 1000 --dropout 0.1 "
    "--image_size 64 --learn_sigma True --noise_schedule cosine --num_channels 192 "
    "--num_head_channels 64 --num_res_blocks 3 --resblock_updown True --use_new_attention_order True "
    "--use_fp16 True --use_scale_shift_norm True"
)


def test_parse_string_argv_and_equals_forms_agree() -> None:
    expected = {"class_cond": "True", "num_channels": "256", "channel_mult": "1,2,2"}
    assert parse_flags("--class_cond True --num_channels 256 --channel_mult 1,2,2") == expected
    assert parse_flags(["--class_cond", "True", "--num_channels=256", "--channel-mult", "1,2,2"]) == expected
    assert parse_flags(None) == {}
    assert parse_flags({"a": 1}) == {"a": 1}


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        ("class_cond True", "expected a flag like"),
        ("--class_cond", "has no value"),
        ("--class_cond True --class_cond False", "given twice"),
    ],
)
def test_parse_errors(flags: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_flags(flags)


def test_released_64px_flags_translate_to_unet_arguments() -> None:
    cfg = model_config(parse_flags(RELEASED_64), ignore={"diffusion_steps", "noise_schedule"})
    assert cfg["model_channels"] == 192
    assert cfg["out_channels"] == 6
    assert cfg["num_classes"] == 1000
    assert cfg["channel_mult"] == (1, 2, 3, 4)
    assert cfg["attention_resolutions"] == (2, 4, 8)
    assert cfg["num_res_blocks"] == 3
    assert cfg["dropout"] == pytest.approx(0.1)
    assert cfg["num_head_channels"] == 64
    assert cfg["num_heads"] == 4  # the scripts' default
    assert cfg["use_new_attention_order"] is True
    assert cfg["use_fp16"] is True


def test_defaults_are_the_scripts_defaults() -> None:
    cfg = model_config({})
    assert cfg["image_size"] == MODEL_DEFAULTS["image_size"] == 64
    assert cfg["use_scale_shift_norm"] is True
    assert cfg["attention_resolutions"] == (4, 8)  # "16,8" at 64 px
    assert cfg["num_classes"] is None


@pytest.mark.parametrize(
    ("size", "mult"),
    [
        (512, (0.5, 1, 1, 2, 2, 4, 4)),
        (256, (1, 1, 2, 2, 4, 4)),
        (128, (1, 1, 2, 3, 4)),
        (64, (1, 2, 3, 4)),
        (32, (1, 2, 2, 2)),
    ],
)
def test_default_channel_mult_per_size(size: int, mult: tuple[float, ...]) -> None:
    assert default_channel_mult(size) == mult


def test_booleans_accept_the_scripts_spellings() -> None:
    for text, value in [("True", True), ("false", False), ("yes", True), ("0", False), ("T", True)]:
        assert model_config({"class_cond": text})["num_classes"] == (1000 if value else None)
    with pytest.raises(ValueError, match="'class_cond' must be a boolean"):
        model_config({"class_cond": "maybe"})


def test_unknown_flag_suggests_the_close_name() -> None:
    with pytest.raises(ValueError, match=r"unknown model flag 'num_chanels'; did you mean 'num_channels'"):
        model_config({"num_chanels": 64})


def test_diffusion_flags_are_pointed_elsewhere() -> None:
    with pytest.raises(ValueError, match="'noise_schedule' is a diffusion flag"):
        model_config({"noise_schedule": "cosine"})


def test_aliases_and_conflicts() -> None:
    assert model_config({"model_channels": 64})["model_channels"] == 64
    with pytest.raises(ValueError, match="another name for 'num_channels'"):
        model_config({"model_channels": 64, "num_channels": 64})
    with pytest.raises(ValueError, match="contradicts learn_sigma"):
        model_config({"out_channels": 3, "learn_sigma": True})
    assert model_config({"out_channels": 4})["out_channels"] == 4


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        ({"channel_mult": "1,x"}, "'channel_mult' must be channel multipliers"),
        ({"channel_mult": "1,-2"}, "all positive"),
        ({"attention_resolutions": "16,7"}, "divide image_size=64"),
        ({"image_size": 0}, "'image_size' must be positive"),
        ({"num_res_blocks": "two"}, "'num_res_blocks' must be an integer"),
        ({"dropout": "lots"}, "'dropout' must be a number"),
        ({"attention_backend": "fast"}, "'attention_backend' must be one of"),
    ],
)
def test_bad_values_name_the_flag(flags: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        model_config(flags)


def test_empty_attention_resolutions_means_middle_block_only() -> None:
    assert model_config({"attention_resolutions": ""})["attention_resolutions"] == ()


def test_superres_flags() -> None:
    cfg = superres_config(
        parse_flags("--large_size 256 --small_size 64 --num_channels 192 --learn_sigma True")
    )
    assert cfg["image_size"] == 256
    assert cfg["small_size"] == 64
    assert cfg["channel_mult"] == (1, 1, 2, 2, 4, 4)
    assert cfg["attention_resolutions"] == (16, 32)
    with pytest.raises(ValueError, match="at least 'small_size'"):
        superres_config({"large_size": 32, "small_size": 64})


def test_classifier_flags_and_aliases() -> None:
    cfg = classifier_config(parse_flags("--image_size 128 --classifier_depth 2 --classifier_pool spatial"))
    assert cfg["channel_mult"] == (1, 1, 2, 3, 4)
    assert cfg["pool"] == "spatial"
    assert cfg["num_head_channels"] == 64
    assert cfg["attention_resolutions"] == (4, 8, 16)
    assert classifier_config({"width": 64})["model_channels"] == 64
    with pytest.raises(ValueError, match="unknown classifier flag 'width'"):
        classifier_config({"width": 64}, aliases=False)


def test_registry_rejects_wrong_types_with_the_parameter_name() -> None:
    with pytest.raises((TypeError, ValueError), match="num_channels"):
        ddkit.create("model", "adm-unet", num_channels="many")
    with pytest.raises(ValueError, match="unknown model flag 'num_channel'"):
        ddkit.create("model", "adm-unet", num_channel=64)
