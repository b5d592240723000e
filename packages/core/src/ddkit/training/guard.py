"""The trainer's guard against NaN and infinity: one fused check per step, one per checkpoint.

A single non-finite loss or gradient poisons every weight through the optimizer and then every
EMA, checkpoint and sample; the good checkpoints are pruned a few intervals later. So each step
checks ``loss + grad_norm`` (one fused ``isfinite`` and one host read of one bool, before the
optimizer touches the weights) and a checkpoint is refused for weights that are not finite.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import Tensor

from ddkit.errors import NonFiniteError

__all__ = ["NonFiniteTrainingError", "all_finite", "describe_nonfinite"]


class NonFiniteTrainingError(NonFiniteError):
    """Training met a NaN or infinite loss, gradient or weight; nothing non-finite was checkpointed.

    ``step`` is the 1-based number of the step that failed (the run had completed ``step - 1``).

    .. versionadded:: 0.2.0
    """

    def __init__(self, message: str, step: int) -> None:
        super().__init__(message)
        self.step = step


def all_finite(tensors: Iterable[Tensor]) -> bool:
    """Whether every element of every tensor is finite (one fused reduction, one host read)."""
    flags = [torch.isfinite(t).all() for t in tensors if t.is_floating_point() or t.is_complex()]
    return bool(torch.stack(flags).all()) if flags else True


def describe_nonfinite(loss: Tensor, grad_norm: Tensor | None) -> str:
    """Which of the loss and the gradient norm is not finite, with its value, for an error message."""
    parts = []
    if not bool(torch.isfinite(loss)):
        parts.append(f"the loss is {float(loss)}")
    if grad_norm is not None and not bool(torch.isfinite(grad_norm)):
        parts.append(f"the gradient norm is {float(grad_norm)}")
    return " and ".join(parts) or "a value is not finite"
