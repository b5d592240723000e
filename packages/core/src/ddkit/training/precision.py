"""Mixed precision, gradient checkpointing and memory format: the knobs that trade speed and memory."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn

from ddkit.errors import ConfigError

__all__ = ["autocast", "enable_gradient_checkpointing", "make_grad_scaler"]


def check_precision(precision: str, device: torch.device) -> None:
    """Refuse a precision the device cannot train in."""
    if precision == "fp16" and device.type != "cuda":
        raise ConfigError(
            f"precision 'fp16' needs a CUDA GPU (its gradient scaler guards fp16 gradients there), but the "
            f"device is {device}; use precision 'bf16' on the CPU, or 'fp32'"
        )


@contextlib.contextmanager
def autocast(precision: str, device: torch.device) -> Iterator[None]:
    """Autocast the forward pass to bf16 or fp16; plain fp32 otherwise."""
    if precision == "fp32":
        yield
        return
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    with torch.autocast(device_type=device.type, dtype=dtype):
        yield


def make_grad_scaler(precision: str, device: torch.device) -> torch.amp.GradScaler | None:
    """A GradScaler for fp16 on CUDA (bf16 has fp32's range and needs none)."""
    if precision != "fp16":
        return None
    return torch.amp.GradScaler(device.type)


def enable_gradient_checkpointing(model: nn.Module) -> int:
    """Turn on activation checkpointing in ``model``; return how many modules took it.

    A model opts in with a ``set_gradient_checkpointing(enabled)`` method, or (guided-diffusion's
    convention, used by ddkit-models' ADM U-Net) with ``use_checkpoint`` attributes on its blocks.
    """
    setter = getattr(model, "set_gradient_checkpointing", None)
    if callable(setter):
        setter(True)
        return 1
    count = 0
    for module in model.modules():
        if isinstance(getattr(module, "use_checkpoint", None), bool):
            setattr(module, "use_checkpoint", True)  # noqa: B010 (nn.Module's __setattr__ types reject bool)
            count += 1
    if count == 0:
        raise ConfigError(
            f"gradient_checkpointing=True, but the model ({type(model).__name__}) does not support it: it "
            "has no set_gradient_checkpointing() method and no 'use_checkpoint' blocks; set "
            "gradient_checkpointing to false, or use a model that supports it (e.g. adm-unet)"
        )
    return count
