"""Checkpoint loading: .pt and .safetensors, flags, kind detection, safety and mismatch errors."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from _models_util import assert_close, randomize, tiny_classifier_flags, tiny_unet_flags

import ddkit
from ddkit_models import (
    CheckpointMismatchError,
    convert_to_safetensors,
    from_guided_diffusion,
    load_checkpoint,
)
from ddkit_models.checkpoint import read_state_dict
from ddkit_models.classifier import ADMClassifier
from ddkit_models.unet import ADMSuperRes, ADMUNet

FLAGS = (
    "--image_size 16 --num_channels 32 --num_res_blocks 1 --channel_mult 1,2 --attention_resolutions 8 "
    "--num_head_channels 16 --class_cond True --learn_sigma True --use_fp16 False "
    "--diffusion_steps 1000 --noise_schedule cosine --batch_size 4"
)


@pytest.fixture
def saved_model(tmp_path: Path) -> tuple[ADMUNet, Path]:
    model = randomize(ddkit.create("model", "adm-unet", **tiny_unet_flags(class_cond=True, learn_sigma=True)))
    path = tmp_path / "model.pt"
    torch.save(model.state_dict(), path)
    return model, path


def outputs(model: torch.nn.Module) -> torch.Tensor:
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(2, 3, 16, 16, generator=gen)
    with torch.no_grad():
        return model.eval()(x, torch.tensor([5, 600]), y=torch.tensor([1, 2]))


def test_pt_roundtrip_with_flag_string(saved_model: tuple[ADMUNet, Path]) -> None:
    model, path = saved_model
    loaded = load_checkpoint(path, FLAGS)
    assert type(loaded) is ADMUNet
    assert not loaded.training
    assert_close(outputs(loaded), outputs(model), atol=0, rtol=0)


def test_flags_as_argv_and_as_keywords(saved_model: tuple[ADMUNet, Path]) -> None:
    model, path = saved_model
    argv = load_checkpoint(path, FLAGS.split())
    keywords = from_guided_diffusion(path, **tiny_unet_flags(class_cond=True, learn_sigma=True))
    assert_close(outputs(argv), outputs(model), atol=0, rtol=0)
    assert_close(outputs(keywords), outputs(model), atol=0, rtol=0)


def test_keywords_override_the_flag_string(saved_model: tuple[ADMUNet, Path]) -> None:
    _, path = saved_model
    loaded = load_checkpoint(path, FLAGS, attention_backend="math")
    assert loaded.middle_block[1].attention.backend == "math"


def test_safetensors_roundtrip_keeps_the_flags(saved_model: tuple[ADMUNet, Path], tmp_path: Path) -> None:
    model, path = saved_model
    out = convert_to_safetensors(path, tmp_path / "model.safetensors", flags=FLAGS)
    state, metadata = read_state_dict(out)
    assert state.keys() == model.state_dict().keys()
    assert "--class_cond True" in metadata["ddkit_flags"]
    loaded = load_checkpoint(out)  # the flags come from the file
    assert_close(outputs(loaded), outputs(model), atol=0, rtol=0)


def test_wrapped_and_ddp_prefixed_state_dicts(saved_model: tuple[ADMUNet, Path], tmp_path: Path) -> None:
    model, _ = saved_model
    path = tmp_path / "wrapped.pt"
    torch.save({"state_dict": {f"module.{k}": v for k, v in model.state_dict().items()}, "step": 3}, path)
    assert_close(outputs(load_checkpoint(path, FLAGS)), outputs(model), atol=0, rtol=0)


class Payload:
    """Stands for arbitrary pickled code."""


def test_pickled_objects_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "evil.pt"
    torch.save({"weight": torch.zeros(1), "payload": Payload()}, path)
    with pytest.raises(ddkit.IntegrityError, match="weights_only=True"):
        load_checkpoint(path, FLAGS)


def test_not_a_state_dict_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "list.pt"
    torch.save([torch.zeros(1)], path)
    with pytest.raises(ddkit.IntegrityError, match="not a state dict"):
        read_state_dict(path)
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        read_state_dict(tmp_path / "missing.pt")


@pytest.mark.parametrize(
    ("wrong", "hint"),
    [
        ("--class_cond False", "--class_cond True"),
        ("--learn_sigma False", "--learn_sigma True"),
        ("--use_scale_shift_norm False", "--use_scale_shift_norm True"),
        ("--attention_resolutions 16,8", "attention_resolutions"),
        ("--resblock_updown True", "--resblock_updown False"),
        ("--num_channels 64", "--num_channels 32"),
    ],
)
def test_mismatch_names_keys_and_hints_the_flag(
    saved_model: tuple[ADMUNet, Path], wrong: str, hint: str
) -> None:
    _, path = saved_model
    with pytest.raises(CheckpointMismatchError) as info:
        load_checkpoint(path, _replace(FLAGS, wrong))
    message = str(info.value)
    assert "does not fit" in message
    assert hint in message
    assert info.value.missing or info.value.unexpected or info.value.mismatched


def _replace(flags: str, new: str) -> str:
    """Set the flags in ``new`` in the ``flags`` string (replacing earlier values)."""
    parts: dict[str, str] = {}
    tokens = (flags + " " + new).split()
    for name, value in zip(tokens[::2], tokens[1::2]):
        parts[name] = value
    return " ".join(f"{k} {v}" for k, v in parts.items())


def test_non_strict_loading_warns_and_loads_what_fits(saved_model: tuple[ADMUNet, Path]) -> None:
    model, path = saved_model
    with pytest.warns(UserWarning, match="learn_sigma"):
        loaded = load_checkpoint(path, _replace(FLAGS, "--learn_sigma False"), strict=False)
    assert_close(loaded.input_blocks[0][0].weight, model.input_blocks[0][0].weight, atol=0, rtol=0)


def test_unknown_flag_is_an_error(saved_model: tuple[ADMUNet, Path]) -> None:
    _, path = saved_model
    with pytest.raises(ValueError, match="did you mean 'num_channels'"):
        load_checkpoint(path, FLAGS + " --num_chanels 32")


def test_classifier_is_detected_and_model_flags_ignored(tmp_path: Path) -> None:
    clf = randomize(
        ddkit.create("model", "adm-classifier", **tiny_classifier_flags(classifier_pool="attention"))
    )
    path = tmp_path / "clf.pt"
    torch.save(clf.state_dict(), path)
    flags = (
        "--image_size 16 --classifier_width 32 --classifier_depth 1 --classifier_attention_resolutions 8 "
        "--classifier_pool attention --num_channels 256 --class_cond True --classifier_scale 1.0"
    )
    loaded = load_checkpoint(
        path, flags, classifier_num_classes=5, classifier_channel_mult="1,2", classifier_num_head_channels=16
    )
    assert type(loaded) is ADMClassifier
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        assert_close(loaded(x, torch.tensor([1, 2])), clf.eval()(x, torch.tensor([1, 2])), atol=0, rtol=0)


def test_classifier_pool_mismatch_is_hinted(tmp_path: Path) -> None:
    clf = ddkit.create("model", "adm-classifier", **tiny_classifier_flags(classifier_pool="spatial_v2"))
    path = tmp_path / "clf.pt"
    torch.save(clf.state_dict(), path)
    with pytest.raises(CheckpointMismatchError, match="--classifier_pool spatial_v2"):
        load_checkpoint(
            path,
            "--image_size 16 --classifier_width 32 --classifier_depth 1 --classifier_attention_resolutions 8",
            classifier_num_classes=5,
            classifier_channel_mult="1,2",
            classifier_num_head_channels=16,
        )


def test_superres_is_detected_from_its_flags_or_its_first_convolution(tmp_path: Path) -> None:
    sr = randomize(
        ddkit.create(
            "model",
            "adm-superres",
            large_size=16,
            small_size=8,
            num_channels=32,
            num_res_blocks=1,
            channel_mult="1,2",
            attention_resolutions="8",
        )
    )
    path = tmp_path / "sr.pt"
    torch.save(sr.state_dict(), path)
    flags = "--large_size 16 --small_size 8 --num_channels 32 --num_res_blocks 1 --attention_resolutions 8"
    by_flags = load_checkpoint(path, flags, channel_mult="1,2")
    by_shape = load_checkpoint(
        path,
        "--image_size 16 --num_channels 32 --num_res_blocks 1 --attention_resolutions 8",
        channel_mult="1,2",
    )
    assert type(by_flags) is ADMSuperRes
    assert type(by_shape) is ADMSuperRes
    x, low = torch.randn(1, 3, 16, 16), torch.randn(1, 3, 8, 8)
    with torch.no_grad():
        assert_close(
            by_flags(x, torch.tensor([3]), low_res=low), sr.eval()(x, torch.tensor([3]), low_res=low)
        )


def test_wrong_kind_is_refused(saved_model: tuple[ADMUNet, Path]) -> None:
    _, path = saved_model
    with pytest.raises(ValueError, match="'kind' must be"):
        load_checkpoint(path, FLAGS, kind="vae")  # type: ignore[arg-type]
