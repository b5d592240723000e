"""Attention: the two head orders, the three backends and the backend errors."""

from __future__ import annotations

import math

import pytest
import torch
from _models_util import assert_close, randomize, tiny_unet_flags

import ddkit
from ddkit_models import attention as attn_mod
from ddkit_models.attention import AttentionBlock, QKVAttention, attention, check_backend, resolve_backend


def reference_qkv_attention(qkv: torch.Tensor, heads: int, legacy: bool) -> torch.Tensor:
    """The published formulas of guided-diffusion's QKVAttentionLegacy / QKVAttention, spelled out."""
    b, width, length = qkv.shape
    ch = width // (3 * heads)
    if legacy:  # heads first, then q/k/v inside each head
        q, k, v = qkv.reshape(b * heads, ch * 3, length).split(ch, dim=1)
    else:  # q/k/v thirds first, then heads inside each
        q, k, v = (part.reshape(b * heads, ch, length) for part in qkv.chunk(3, dim=1))
    scale = 1 / math.sqrt(math.sqrt(ch))
    weight = torch.einsum("bct,bcs->bts", q * scale, k * scale).softmax(dim=-1)
    return torch.einsum("bts,bcs->bct", weight, v).reshape(b, -1, length)


@pytest.mark.parametrize("order", ["legacy", "new"])
@pytest.mark.parametrize("backend", ["sdpa", "math"])
def test_qkv_attention_matches_the_reference_formula(order: str, backend: str) -> None:
    qkv = torch.randn(2, 3 * 4 * 8, 10)
    out = QKVAttention(4, order, backend)(qkv)  # type: ignore[arg-type]
    assert_close(out, reference_qkv_attention(qkv, 4, legacy=order == "legacy"))


def test_head_orders_differ() -> None:
    qkv = torch.randn(1, 3 * 2 * 4, 6)
    assert not torch.allclose(QKVAttention(2, "legacy")(qkv), QKVAttention(2, "new")(qkv))


@pytest.mark.parametrize("new_order", [False, True])
def test_attention_block_matches_reference_formula(new_order: bool) -> None:
    block = randomize(AttentionBlock(64, num_head_channels=16, use_new_attention_order=new_order))
    x = torch.randn(2, 64, 4, 4)
    qkv = block.qkv(block.norm(x).reshape(2, 64, -1))
    h = block.proj_out(reference_qkv_attention(qkv, 4, legacy=not new_order))
    assert_close(block(x), x + h.reshape(2, 64, 4, 4))


@pytest.mark.parametrize("new_order", [False, True])
def test_sdpa_and_math_backends_agree_in_a_unet(new_order: bool) -> None:
    model = randomize(
        ddkit.create(
            "model", "adm-unet", **tiny_unet_flags(use_new_attention_order=new_order, class_cond=True)
        )
    ).eval()
    x, t, y = torch.randn(2, 3, 16, 16), torch.tensor([1.0, 500.0]), torch.tensor([3, 4])
    with torch.no_grad():
        model.set_attention_backend("sdpa")
        sdpa = model(x, t, y=y)
        model.set_attention_backend("math")
        math_out = model(x, t, y=y)
    assert_close(sdpa, math_out, atol=1e-5, rtol=1e-4)


def test_auto_resolves_to_sdpa_on_cpu() -> None:
    assert resolve_backend("auto", torch.device("cpu")) == "sdpa"
    assert resolve_backend("math", torch.device("cpu")) == "math"


def test_functional_attention_backends_agree_with_scale() -> None:
    q, k, v = (torch.randn(2, 3, 7, 16) for _ in range(3))
    expected = torch.softmax(q @ k.transpose(-1, -2) / 4.0, dim=-1) @ v
    assert_close(attention(q, k, v, "sdpa"), expected)
    assert_close(attention(q, k, v, "math"), expected)


def test_asking_for_missing_xformers_says_how_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(attn_mod, "xformers_available", lambda: False)
    with pytest.raises(ImportError, match=r"pip install 'ddkit-models\[xformers\]'"):
        check_backend("xformers")
    with pytest.raises(ImportError, match="xformers"):
        ddkit.create("model", "adm-unet", **tiny_unet_flags(attention_backend="xformers"))
    model = ddkit.create("model", "adm-unet", **tiny_unet_flags())
    with pytest.raises(ImportError, match="xformers"):
        model.set_attention_backend("xformers")


def test_xformers_on_cpu_is_refused_when_installed(monkeypatch: pytest.MonkeyPatch) -> None:
    # Pretend xformers is importable: on a CPU tensor the backend must refuse clearly.
    monkeypatch.setattr(attn_mod, "xformers_available", lambda: True)
    q = torch.randn(1, 1, 4, 8)
    with pytest.raises(RuntimeError, match="needs a CUDA device"):
        attention(q, q, q, "xformers")
    assert resolve_backend("auto", torch.device("cpu")) == "sdpa"


def test_unknown_backend_is_named() -> None:
    with pytest.raises(
        ValueError, match="'attention_backend' must be one of 'auto', 'xformers', 'sdpa', 'math'"
    ):
        check_backend("flash")


def test_channels_last_input_gives_the_same_attention() -> None:
    block = randomize(AttentionBlock(64, num_heads=2))
    x = torch.randn(2, 64, 4, 4)
    out = block(x.contiguous(memory_format=torch.channels_last))
    assert_close(out, block(x))


def test_auto_skips_an_xformers_whose_kernel_refuses_to_run(monkeypatch: pytest.MonkeyPatch) -> None:
    # An xformers built for another torch/CUDA imports fine but its kernel raises: auto must not pick it.
    import sys
    import types

    def refuse(*args: object, **kwargs: object) -> None:
        raise NotImplementedError("xFormers wasn't built with CUDA support")

    fake = types.ModuleType("xformers")
    ops = types.ModuleType("xformers.ops")
    ops.memory_efficient_attention = refuse  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "xformers", fake)
    monkeypatch.setitem(sys.modules, "xformers.ops", ops)
    monkeypatch.setattr(attn_mod, "xformers_available", lambda: True)
    attn_mod.xformers_runs.cache_clear()
    try:
        assert attn_mod.resolve_backend("auto", torch.device("cuda")) == "sdpa"
        assert attn_mod.resolve_backend("auto", torch.device("cpu")) == "sdpa"
    finally:
        attn_mod.xformers_runs.cache_clear()
