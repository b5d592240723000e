"""Condition dropout for training a model that classifier-free guidance can use (Ho & Salimans 2022)."""

from __future__ import annotations

import torch
from torch import Tensor

from ddkit_guidance._checks import check_unit_interval

__all__ = ["drop_labels"]


def drop_labels(y: Tensor, p: float, null_class: int, *, generator: torch.Generator | None = None) -> Tensor:
    """``y`` with each label replaced by ``null_class`` with probability ``p`` (a new tensor).

    A model trained on these labels learns the unconditional prediction under ``null_class``,
    which is what :class:`~ddkit_guidance.ClassifierFreeGuidance` feeds the unconditional half.
    Pure: ``y`` is left unchanged; the draw uses ``generator`` (on the device of ``y``).

    .. versionadded:: 0.1.0
    """
    p = check_unit_interval("p", p)
    if p == 0.0:
        return y.clone()
    drop = torch.rand(y.shape, generator=generator, device=y.device) < p
    return torch.where(drop, torch.full_like(y, null_class), y)
