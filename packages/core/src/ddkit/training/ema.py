"""Exponential moving averages of the weights, with a warm-up so that short runs move.

guided-diffusion averages with a fixed rate (0.9999): after a few thousand steps its EMA
is still close to the initial weights. k-diffusion and diffusers warm the decay up instead;
ddkit does the same, and ``warmup="none"`` gives guided-diffusion's fixed rate back.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from ddkit.errors import ConfigError

__all__ = ["EMA_WARMUPS", "EmaPairs", "ema_decay", "make_ema_copy", "rate_key", "update_ema"]

#: ``fraction``: min(rate, (1 + n) / (10 + n)); ``inverse-gamma``: min(rate, 1 − (1 + n / γ)^−p);
#: ``none``: the fixed rate. n counts the averages done before this one.
EMA_WARMUPS: tuple[str, ...] = ("fraction", "inverse-gamma", "none")


def ema_decay(
    rate: float, step: int, warmup: str = "fraction", *, power: float = 2 / 3, inv_gamma: float = 1.0
) -> float:
    """The decay of the ``step``-th EMA update (0 for the first), capped at ``rate``.

    ``inverse-gamma`` is k-diffusion's EMAWarmup: power 2/3 suits runs of up to ~1M steps,
    3/4 longer ones.
    """
    if warmup == "none":
        return rate
    if step < 0:
        raise ValueError(f"'step' must be >= 0 (got {step})")
    if warmup == "fraction":
        value = (1 + step) / (10 + step)
    elif warmup == "inverse-gamma":
        value = 1.0 - (1.0 + step / inv_gamma) ** -power
    else:
        raise ConfigError(f"'ema_warmup' must be one of {', '.join(EMA_WARMUPS)} (got {warmup!r})")
    return max(0.0, min(rate, value))


def rate_key(rate: float) -> str:
    """The key of an EMA rate in ``pipeline.ema`` and in checkpoint file names, e.g. ``"0.9999"``."""
    return repr(float(rate))


def make_ema_copy(model: nn.Module) -> nn.Module:
    """A frozen copy of ``model`` to average into (same device and dtype, no gradients)."""
    ema = copy.deepcopy(model)
    ema.requires_grad_(False)
    ema.eval()
    return ema


class EmaPairs:
    """The tensors of an EMA copy matched by name to the model's, found once and reused every step.

    Walking the module tree per step costs more than the update itself for small models.
    """

    __slots__ = ("_copy_dst", "_copy_src", "_lerp_dst", "_lerp_src")

    def __init__(self, ema: nn.Module, model: nn.Module) -> None:
        ema_params, ema_buffers = dict(ema.named_parameters()), dict(ema.named_buffers())
        pairs: list[tuple[torch.Tensor, torch.Tensor]] = [
            (ema_params[n], p.detach()) for n, p in model.named_parameters()
        ]
        floating = [(d, s) for d, s in pairs if d.is_floating_point()]
        copied = [(d, s) for d, s in pairs if not d.is_floating_point()]
        copied += [(ema_buffers[n], b) for n, b in model.named_buffers()]
        self._lerp_dst: list[torch.Tensor]
        self._lerp_src: list[torch.Tensor]
        self._lerp_dst = [d for d, _ in floating]
        self._lerp_src = [s for _, s in floating]
        self._copy_dst = [d for d, _ in copied]
        self._copy_src = [s for _, s in copied]

    @torch.no_grad()
    def update(self, decay: float) -> None:
        """ema ← decay·ema + (1 − decay)·model for floating parameters; everything else is copied."""
        if self._lerp_dst:
            torch._foreach_lerp_(self._lerp_dst, self._lerp_src, 1.0 - decay)
        for d, s in zip(self._copy_dst, self._copy_src):
            d.copy_(s)


def update_ema(ema: nn.Module, model: nn.Module, decay: float) -> None:
    """ema ← decay·ema + (1 − decay)·model for parameters; buffers are copied.

    Parameters are matched by name, so the two modules must have the same structure.
    """
    EmaPairs(ema, model).update(decay)
