"""The noisy-image classifier: pools, spec, parameter layout and errors."""

from __future__ import annotations

import pytest
import torch
from _models_util import randomize, tiny_classifier_flags

import ddkit
from ddkit_models.classifier import ADMClassifier


@pytest.mark.parametrize("pool", ["adaptive", "attention", "spatial", "spatial_v2"])
def test_each_pool_gives_logits(pool: str) -> None:
    clf = ddkit.create("model", "adm-classifier", **tiny_classifier_flags(classifier_pool=pool))
    assert isinstance(clf, ADMClassifier)
    randomize(clf).eval()
    x = torch.randn(3, 3, 16, 16)
    with torch.no_grad():
        a = clf(x, torch.tensor([1, 2, 3]))
        b = clf(x, torch.tensor([900, 900, 900]))
    assert a.shape == (3, 5)
    assert not torch.allclose(a, b)  # the timestep matters


def test_spec_reports_logits() -> None:
    clf = ddkit.create("model", "adm-classifier", **tiny_classifier_flags())
    assert clf.spec == ddkit.ModelSpec(3, 5, (3, 16, 16), 5, None)


def test_released_64px_layout() -> None:
    # guided-diffusion's 64x64 classifier flags (depth 4): its EncoderUNetModel has 65,438,568
    # parameters in 307 tensors; attention pooling at 8 px.
    clf = ddkit.create("model", "adm-classifier", image_size=64, classifier_depth=4)
    state = clf.state_dict()
    assert len(state) == 307
    assert sum(v.numel() for v in state.values()) == 65_438_568
    assert state["out.2.positional_embedding"].shape == (512, 65)
    assert state["out.2.c_proj.weight"].shape == (1000, 512, 1)


def test_spatial_pool_widths_follow_the_feature_size() -> None:
    clf = ddkit.create("model", "adm-classifier", **tiny_classifier_flags(pool="spatial_v2"))
    # input blocks 32 + 32 + 32 (down) + 64, middle 64
    assert clf.out[0].weight.shape == (2048, 32 + 32 + 32 + 64 + 64)
    assert clf.out[1].weight.shape == (2048,)  # GroupNorm over the hidden features


def test_short_names_are_accepted() -> None:
    clf = ddkit.create(
        "model",
        "adm-classifier",
        image_size=16,
        width=32,
        depth=1,
        pool="adaptive",
        channel_mult="1,2",
        classifier_attention_resolutions="8",
        num_classes=7,
    )
    assert clf.out_channels == 7
    assert clf.model_channels == 32


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (
            {"classifier_pool": "max"},
            "'classifier_pool' must be one of 'adaptive', 'attention', 'spatial', 'spatial_v2'",
        ),
        ({"classifier_widht": 32}, "did you mean 'classifier_width'"),
        ({"classifier_depth": "two"}, "'classifier_depth' must be int"),
    ],
)
def test_wrong_flags_are_named(overrides: dict[str, object], message: str) -> None:
    with pytest.raises((TypeError, ValueError), match=message):
        ddkit.create("model", "adm-classifier", **tiny_classifier_flags(**overrides))


def test_attention_pool_needs_head_channels() -> None:
    with pytest.raises(ValueError, match="num_head_channels"):
        ADMClassifier(16, 3, 32, 5, 1, (), channel_mult=(1, 2), pool="attention", num_head_channels=-1)
