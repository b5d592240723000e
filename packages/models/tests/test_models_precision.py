"""Precision and layout: autocast, the fp16 torso, channels_last, gradient checkpointing, compile."""

from __future__ import annotations

import pytest
import torch
from _models_util import assert_close, randomize, tiny_unet_flags

import ddkit
from ddkit_models.unet import ADMUNet


def tiny(**overrides: object) -> ADMUNet:
    model = ddkit.create("model", "adm-unet", **tiny_unet_flags(class_cond=True, **overrides))
    assert isinstance(model, ADMUNet)
    return randomize(model, 0.1)


INPUTS = (torch.randn(2, 3, 16, 16), torch.tensor([10.0, 900.0]), torch.tensor([1, 2]))


def relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.float() - b.float()).norm() / b.float().norm())


@pytest.mark.parametrize(("dtype", "tolerance"), [(torch.bfloat16, 0.05), (torch.float16, 0.01)])
def test_autocast_runs_on_cpu_and_stays_close(dtype: torch.dtype, tolerance: float) -> None:
    model = tiny().eval()
    x, t, y = INPUTS
    with torch.no_grad():
        full = model(x, t, y=y)
        with torch.autocast("cpu", dtype=dtype):
            half = model(x, t, y=y)
    assert half.dtype == dtype
    assert torch.isfinite(half).all()
    assert relative_error(half, full) < tolerance


def test_autocast_bfloat16_training_step_has_finite_gradients() -> None:
    model = tiny().train()
    x, t, y = INPUTS
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = model(x, t, y=y).float().square().mean()
    loss.backward()
    grads = [p.grad for p in model.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)


def test_fp16_torso_runs_on_cpu_and_returns_float32() -> None:
    model = tiny().eval()
    x, t, y = INPUTS
    with torch.no_grad():
        full = model(x, t, y=y)
        model.convert_to_fp16()
        half = model(x, t, y=y)
    assert half.dtype == torch.float32  # the head runs in the input's dtype, as the reference
    assert relative_error(half, full) < 0.01


def test_channels_last_gives_the_same_output() -> None:
    model = tiny().eval()
    x, t, y = INPUTS
    with torch.no_grad():
        expected = model(x, t, y=y)
        model.to(memory_format=torch.channels_last)
        got = model(x.contiguous(memory_format=torch.channels_last), t, y=y)
    assert_close(got, expected, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("resblock_updown", [False, True])
def test_gradient_checkpointing_gives_the_same_gradients(resblock_updown: bool) -> None:
    plain = tiny(resblock_updown=resblock_updown)
    ckpt = tiny(resblock_updown=resblock_updown, use_checkpoint=True)
    ckpt.load_state_dict(plain.state_dict())
    x, t, y = INPUTS
    x1, x2 = x.clone().requires_grad_(), x.clone().requires_grad_()
    plain(x1, t, y=y).square().sum().backward()
    ckpt(x2, t, y=y).square().sum().backward()
    assert x1.grad is not None
    assert x2.grad is not None
    assert_close(x2.grad, x1.grad, atol=1e-5, rtol=1e-4)
    for (name, p), q in zip(plain.named_parameters(), ckpt.parameters()):
        assert p.grad is not None, name
        assert q.grad is not None, name
        assert_close(q.grad, p.grad, atol=1e-5, rtol=1e-4)


def test_gradient_checkpointing_recomputes_in_backward() -> None:
    # The checkpointed forward must not keep the block's activations: counting the block
    # calls shows the recomputation during backward.
    model = tiny(use_checkpoint=True)
    calls = 0
    block = model.middle_block[0]
    original = block._forward

    def counted(*args: torch.Tensor) -> torch.Tensor:
        nonlocal calls
        calls += 1
        return original(*args)

    block._forward = counted  # type: ignore[method-assign]
    x, t, y = INPUTS
    model(x, t, y=y).sum().backward()
    assert calls == 2
    with torch.no_grad():
        model(x, t, y=y)  # no gradient: no checkpoint, a single call
    assert calls == 3


def test_torch_compile_captures_one_graph_that_matches() -> None:
    # fullgraph=True fails on any graph break; the "eager" backend runs the captured graph
    # without inductor's C++ build, which CI machines may lack.
    model = tiny(resblock_updown=False).eval()
    x, t, y = INPUTS
    compiled = torch.compile(model, backend="eager", fullgraph=True)
    with torch.no_grad():
        assert_close(compiled(x, t, y=y), model(x, t, y=y), atol=1e-5, rtol=1e-4)


def test_auto_memory_format_gives_back_the_input_layout() -> None:
    model = tiny().eval()
    x, t, y = INPUTS
    with torch.no_grad():
        model.memory_format = "preserve"
        expected = model(x, t, y=y)
        model.memory_format = "auto"  # channels-last inside, for CPU inference
        out = model(x, t, y=y)
        out_cl = model(x.contiguous(memory_format=torch.channels_last), t, y=y)
    assert out.is_contiguous()
    assert out_cl.is_contiguous(memory_format=torch.channels_last)
    assert_close(out, expected, atol=5e-5, rtol=1e-4)
    assert_close(out_cl, expected, atol=5e-5, rtol=1e-4)


def test_unknown_memory_format_is_named() -> None:
    with pytest.raises(
        ValueError, match="'memory_format' must be one of 'auto', 'channels_last', 'preserve'"
    ):
        tiny(memory_format="nhwc")
