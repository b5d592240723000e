"""Classifier-free guidance's unconditional values for any keyword: aliases, TOML forms, sampling time."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from guidance_helpers import C, make_x
from safetensors.torch import save_file
from torch import Tensor, nn

from ddkit import CompositionError, ConfigError, ModelSpec
from ddkit.denoiser import Denoiser
from ddkit.protocols import UNCOND_KEYWORDS, model_spec
from ddkit_guidance import ClassifierFreeGuidance

B, E = 4, 5


class ContextNet(nn.Module):
    """A 1×1-conv model conditioned on ``context`` [B, E]; records what it is called with."""

    def __init__(self, spec: ModelSpec | None = None) -> None:
        super().__init__()
        self.conv = nn.Conv2d(C, C, 1)
        self.proj = nn.Linear(E, C)
        if spec is not None:
            self.spec = spec
        self.calls: list[dict[str, Any]] = []

    def forward(self, x: Tensor, t: Tensor, context: Tensor) -> Tensor:
        self.calls.append({"batch": x.shape[0], "context": context.clone()})
        return torch.tanh(self.conv(x) + self.proj(context)[:, :, None, None])


CONTEXT = torch.randn(B, E, generator=torch.Generator().manual_seed(0))


def seen_null(guidance: ClassifierFreeGuidance, process: Any, param: Any, **conditioning: Any) -> Tensor:
    """The unconditional half of the context the model is called with."""
    model = ContextNet()
    d = Denoiser(
        model, param, process, guidances=[guidance], conditioning={"context": CONTEXT, **conditioning}
    )
    d.model_output(make_x(), 5)
    (call,) = model.calls
    assert call["batch"] == 2 * B  # one batched forward
    assert torch.equal(call["context"][:B], CONTEXT)
    return call["context"][B:]


def test_uncond_negative_and_null_cond_are_one_parameter(process, param) -> None:
    null = torch.full((E,), 3.0)
    for name in ("uncond", "negative", "null_cond"):
        g = ClassifierFreeGuidance(2.0, **{name: {"context": null}})
        assert g.uncond == {"context": null}
        assert torch.equal(seen_null(g, process, param), null.expand(B, E))
    with pytest.raises(ConfigError, match="uncond and negative are aliases"):
        ClassifierFreeGuidance(2.0, uncond={"context": null}, negative={"context": null})
    assert ClassifierFreeGuidance.consumes == UNCOND_KEYWORDS


def test_values_a_toml_file_can_write(process, param, tmp_path: Path) -> None:
    # A number fills the keyword's shape; nested lists are a tensor.
    g = ClassifierFreeGuidance(2.0, uncond={"context": -1.5})
    assert torch.equal(seen_null(g, process, param), torch.full((B, E), -1.5))
    g = ClassifierFreeGuidance(2.0, uncond={"context": [[0.5] * E]})
    assert torch.equal(seen_null(g, process, param), torch.full((B, E), 0.5))
    # A .safetensors path: one tensor, or the one stored under the keyword's name.
    one = tmp_path / "one.safetensors"
    save_file({"anything": torch.full((E,), 7.0)}, str(one))
    g = ClassifierFreeGuidance(2.0, uncond={"context": str(one)})
    assert torch.equal(seen_null(g, process, param), torch.full((B, E), 7.0))
    many = tmp_path / "many.safetensors"
    save_file({"context": torch.full((E,), 8.0), "pooled": torch.zeros(2)}, str(many))
    g = ClassifierFreeGuidance(2.0, uncond={"context": str(many)})
    assert torch.equal(seen_null(g, process, param), torch.full((B, E), 8.0))
    save_file({"a": torch.zeros(1), "b": torch.zeros(1)}, str(many))
    with pytest.raises(ConfigError, match=r"holds 2 tensors \(a, b\) and none named 'context'"):
        ClassifierFreeGuidance(2.0, uncond={"context": str(many)})
    with pytest.raises(ConfigError, match="does not exist"):
        ClassifierFreeGuidance(2.0, uncond={"context": str(tmp_path / "nope.safetensors")})
    with pytest.raises(ConfigError, match="must map conditioning keywords"):
        ClassifierFreeGuidance(2.0, uncond={1: 0.0})  # type: ignore[dict-item]
    with pytest.raises(ConfigError, match="not a model keyword"):
        ClassifierFreeGuidance(2.0, uncond={"negative": 0.0})


def test_sampling_time_values_win_and_never_reach_the_model(process, param) -> None:
    g = ClassifierFreeGuidance(2.0, uncond={"context": torch.zeros(E)})
    at_call = torch.full((B, E), 4.0)
    assert torch.equal(seen_null(g, process, param, uncond={"context": at_call}), at_call)
    assert torch.equal(seen_null(g, process, param, negative={"context": at_call[0]}), at_call)
    # Without a parameter, the value at sampling time is enough (checked when the denoiser is built).
    bare = ClassifierFreeGuidance(2.0)
    assert torch.equal(seen_null(bare, process, param, uncond={"context": at_call}), at_call)
    with pytest.raises(CompositionError, match="needs a condition to drop"):
        Denoiser(ContextNet(), param, process, guidances=[bare], conditioning={"context": CONTEXT})


def test_a_model_known_to_take_no_other_conditioning_still_needs_a_null_class(process, param) -> None:
    y = torch.arange(B)
    plain = ModelSpec(C, C, (C, 4, 4), conditioning=())
    with pytest.raises(CompositionError, match="neither null_class nor num_classes"):
        Denoiser(
            ContextNet(plain), param, process, guidances=[ClassifierFreeGuidance(2.0)], conditioning={"y": y}
        )
    # One that takes 'context' may get its unconditional value later: no error yet.
    Denoiser(ContextNet(), param, process, guidances=[ClassifierFreeGuidance(2.0)], conditioning={"y": y})


def test_model_spec_reads_the_conditioning_keywords_from_the_signature() -> None:
    assert model_spec(ContextNet()).conditioning == ("context",)
    assert model_spec(ContextNet(ModelSpec(C, C))).conditioning == ("context",)  # filled in

    def fn(x: Tensor, t: Tensor, y: Tensor | None = None) -> Tensor:
        return x

    def anything(x: Tensor, t: Tensor, **kw: Any) -> Tensor:
        return x

    assert model_spec(fn).conditioning == ()
    assert model_spec(anything).conditioning is None
