"""model_spec reads what a model declares, however it declares it, and stays right across calls."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from ddkit.protocols import ModelSpec, conditioning_keywords, model_spec


class _Plain(nn.Module):
    def forward(self, x: Tensor, t: Tensor) -> Tensor:
        return x


class _Text(nn.Module):
    def forward(self, x: Tensor, t: Tensor, y: Tensor | None = None, context: Tensor | None = None) -> Tensor:
        return x


class _Declared(_Plain):
    in_channels = 3  # a class attribute

    def __init__(self) -> None:
        super().__init__()
        self.sample_shape = (3, 8, 8)  # an instance attribute
        self.register_buffer("num_classes", torch.tensor(10))  # a buffer, as nn.Module stores it

    @property
    def out_channels(self) -> int:
        return 6


class _ConfigLookup(_Plain):
    """Answers missing names from a config, as diffusers' ModelMixin does."""

    def __getattr__(self, name: str) -> Any:
        if name == "in_channels":
            return 4
        return super().__getattr__(name)


def test_attributes_are_read_wherever_a_module_holds_them() -> None:
    spec = model_spec(_Declared())
    assert spec.in_channels == 3
    assert spec.sample_shape == (3, 8, 8)
    assert int(spec.num_classes) == 10  # type: ignore[arg-type]
    assert spec.out_channels == 6
    assert spec.null_class is None


def test_a_module_with_its_own_getattr_is_asked() -> None:
    assert model_spec(_ConfigLookup()).in_channels == 4
    assert model_spec(_Plain()).in_channels is None


def test_a_declared_spec_wins_and_gets_the_forward_keywords() -> None:
    model = _Text()
    model.spec = ModelSpec(in_channels=2)  # type: ignore[assignment]
    spec = model_spec(model)
    assert spec.in_channels == 2
    assert spec.conditioning == ("context",)


def test_keywords_stay_right_across_calls_and_for_bound_and_plain_functions() -> None:
    def fn(x: Tensor, t: Tensor, mask: Tensor) -> Tensor:
        return x

    for _ in range(2):  # the second answer comes from the memo
        assert conditioning_keywords(_Text()) == ("context",)
        assert conditioning_keywords(_Plain()) == ()
        assert conditioning_keywords(fn) == ("mask",)

    class Holder:
        method = fn  # bound: its first parameter is self, so x is "t" and t is "mask"

    assert conditioning_keywords(Holder().method) == ()
    assert conditioning_keywords(fn) == ("mask",)


def test_a_model_taking_any_keyword_has_unknown_keywords() -> None:
    def open_ended(x: Tensor, t: Tensor, **conditioning: Any) -> Tensor:
        return x

    assert conditioning_keywords(open_ended) is None
    assert conditioning_keywords(open_ended) is None
