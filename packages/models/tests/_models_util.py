"""Helpers for ddkit-models' tests: tiny configurations and randomized weights."""

from __future__ import annotations

from typing import Any

import torch


def tiny_unet_flags(**overrides: Any) -> dict[str, Any]:
    """guided-diffusion flags of a 16-pixel U-Net that runs in milliseconds."""
    flags: dict[str, Any] = {
        "image_size": 16,
        "num_channels": 32,
        "num_res_blocks": 1,
        "channel_mult": "1,2",
        "attention_resolutions": "8",
        "num_head_channels": 16,
    }
    flags.update(overrides)
    return flags


def tiny_classifier_flags(**overrides: Any) -> dict[str, Any]:
    """guided-diffusion classifier flags of a 16-pixel classifier with 5 classes."""
    flags: dict[str, Any] = {
        "image_size": 16,
        "classifier_width": 32,
        "classifier_depth": 1,
        "classifier_attention_resolutions": "8",
        "num_classes": 5,
        "channel_mult": "1,2",
        "num_head_channels": 16,
    }
    flags.update(overrides)
    return flags


def randomize(module: torch.nn.Module, scale: float = 0.2) -> torch.nn.Module:
    """Overwrite every float parameter with noise: zero-initialized layers would hide bugs."""
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn_like(p) * scale)
    return module


def assert_close(
    actual: torch.Tensor, expected: torch.Tensor, *, atol: float = 1e-5, rtol: float = 1e-5
) -> None:
    """Like ``torch.testing.assert_close`` without importing ``torch.testing`` (slow to import)."""
    assert actual.shape == expected.shape, f"shapes differ: {tuple(actual.shape)} vs {tuple(expected.shape)}"
    assert actual.dtype == expected.dtype, f"dtypes differ: {actual.dtype} vs {expected.dtype}"
    a, e = actual.detach().double(), expected.detach().double()
    diff = (a - e).abs()
    bound = atol + rtol * e.abs()
    assert bool((diff <= bound).all()), f"max abs diff {diff.max().item():.3g} (atol {atol}, rtol {rtol})"
